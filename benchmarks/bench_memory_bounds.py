"""What misbehaving clients cost the broker in memory and disk (issue 10 item 8): each scenario of
the issue, against a fresh broker (``python -m nanomq.cli.broker``, whatever ``nanomq`` the working
directory imports), its VmRSS read from ``/proc/<pid>/status`` before and after.

- ``gaps``: five subscriptions of one connection, on a topic of 1,000,000 records, commit
  2..1,000,000 but never 1 (the issue: +330 MB);
- ``gaps-alternate``: the worst case for runs: every other id (2, 4, 6, ...), 100,000 commits a
  subscription — each makes a run, up to ``--max-commit-gaps`` (then RESOURCE_LIMIT);
- ``partial``: 60 connections each send all but one byte of a 16 MiB frame, hold it, then close
  (the issue: 1 GB while held, 330 MB kept after);
- ``topics``: one connection SUBSCRIBEs to 200 new topics as fast as it can (the issue: 1.6 GB
  preallocated in 3.4 s with 8 MB segments); run it with ``--broker-args`` to try limits.

    .venv/bin/python benchmarks/bench_memory_bounds.py                 # every scenario
    .venv/bin/python benchmarks/bench_memory_bounds.py topics --broker-args "--topic-create-rate 5 --topic-create-burst 20"
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanomq.broker_process import BrokerProcess
from nanomq.protocol import (
    Ack,
    Commit,
    Decoder,
    Error,
    Frame,
    Hello,
    HelloOk,
    Limits,
    Ping,
    Pong,
    Publish,
    RecordBatch,
    Start,
    Subscribe,
    encode,
)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        lines = f.read().splitlines()
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmRSS")


class Wire:
    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port))
        self.d = Decoder("client", limits=Limits(1 << 24, 256))
        self.rid = 1
        self.send(Hello(1))
        assert isinstance(self.recv(), HelloOk)

    def next(self) -> int:
        self.rid += 1
        return self.rid

    def send(self, *fs: Frame) -> None:
        self.s.sendall(b"".join(encode(f) for f in fs))

    def recv(self) -> Frame:
        while (f := self.d.next_frame()) is None:
            b = self.s.recv(1 << 20)
            if not b:
                raise EOFError("closed")
            self.d.feed(b)
        return f


def _fill(port: int, topic: str, n: int) -> None:
    w = Wire(port)
    batch = RecordBatch.from_payloads([b"x"] * 256)
    for _ in range(0, n, 256 * 64):
        w.send(*(Publish(w.next(), topic, Ack.NONE, batch) for _ in range(64)))
    w.send(Ping(w.next(), 1))
    while not isinstance(w.recv(), Pong):
        pass
    w.s.close()


def commit_gaps(b: BrokerProcess, alternate: bool, n: int = 1_000_000, subs: int = 5) -> str:
    _fill(b.port, "gaps", n)
    before = rss_mib(b.pid)
    w = Wire(b.port)
    for _ in range(subs):
        w.send(Subscribe(w.next(), "gaps", Start.EARLIEST, 0, 0xFFFF_FFFF, ""))
    got, refused, stop = [0], [0], threading.Event()

    def drain() -> None:  # deliveries and answers, counted roughly, never parsed
        w.s.settimeout(0.5)
        while not stop.is_set():
            try:
                data = w.s.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                return
            got[0] += len(data)
            refused[0] += data.count(b"NMQ-4.7-5")

    th = threading.Thread(target=drain, daemon=True)
    th.start()
    deadline = time.monotonic() + 120
    while got[0] < subs * n * 72 * 0.99 and time.monotonic() < deadline:
        time.sleep(0.2)
    delivered = rss_mib(b.pid)
    ids = list(range(2, n + 1, 2)) if alternate else list(range(2, n + 1))
    if alternate:
        ids = ids[:100_000]
    for sid in range(1, subs + 1):
        for i in range(0, len(ids), 256):
            w.s.sendall(encode(Commit(w.next(), sid, tuple(ids[i : i + 256]))))
    time.sleep(3.0)
    after = rss_mib(b.pid)
    stop.set()
    what = "every other id, 100,000 commits" if alternate else f"2..{n:,}"
    return (f"{subs} subscriptions committing {what}: RSS {before:.0f} MiB -> {delivered:.0f} MiB delivering -> "
            f"{after:.0f} MiB committing ({after - delivered:+.0f} MiB); about {refused[0]} COMMITs refused (NMQ-4.7-5)")


def partial(b: BrokerProcess, n: int = 60, size: int = 16 << 20) -> str:
    time.sleep(0.3)
    before = rss_mib(b.pid)
    frame = bytearray(size)
    head = encode(Publish(9, "partial", Ack.WRITTEN, RecordBatch.from_payloads([b"p"])))
    frame[4:16] = head[4:16]
    struct.pack_into("<I", frame, 0, size)
    held = [Wire(b.port) for _ in range(n)]
    sent = [0] * n
    for w in held:
        w.s.setblocking(False)
    deadline = time.monotonic() + 5.0  # all at once, round robin (within the frame timeout)
    while time.monotonic() < deadline and any(x < size - 1 for x in sent):
        moved = False
        for i, w in enumerate(held):
            if sent[i] < size - 1:
                try:
                    sent[i] += w.s.send(memoryview(frame)[sent[i] : size - 1])
                    moved = True
                except BlockingIOError:
                    pass
        if not moved:
            time.sleep(0.002)
    sent_total = sum(sent)
    time.sleep(1.0)
    peak = rss_mib(b.pid)
    for w in held:
        w.s.close()
    time.sleep(2.0)
    after = rss_mib(b.pid)
    return (f"{n} connections holding all but a byte of a {size >> 20} MiB frame ({sent_total >> 20} MiB sent, the "
            f"rest blocked): RSS {before:.0f} MiB -> {peak:.0f} MiB held ({peak - before:+.0f}) -> {after:.0f} MiB "
            f"after they closed ({after - before:+.0f})")


def topics(b: BrokerProcess, n: int = 200) -> str:
    w = Wire(b.port)
    t0 = time.monotonic()
    refused = 0
    for k in range(n):
        w.send(Subscribe(w.next(), f"made-up-{k}", Start.EARLIEST, 0, 1, ""))
        refused += isinstance(w.recv(), Error)
    dt = time.monotonic() - t0
    used = int(subprocess.check_output(["du", "-sk", str(b.data_dir)]).split()[0]) / 1024
    return f"{n} SUBSCRIBEs to new topics in {dt:.1f} s: {n - refused} created, {refused} refused, {used:.0f} MiB on disk"


SCENARIOS = {"gaps": lambda b: commit_gaps(b, False), "gaps-alternate": lambda b: commit_gaps(b, True),
             "partial": partial, "topics": topics}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: every one)")
    ap.add_argument("--broker-args", default="", help="more broker flags, one string")
    args = ap.parse_args(argv)
    for name in args.scenario:
        if name not in SCENARIOS:
            ap.error(f"unknown scenario {name!r}")
    for name in args.scenario or list(SCENARIOS):
        with tempfile.TemporaryDirectory(prefix="nanomq-memory-") as d, \
                BrokerProcess(d + "/data", args.broker_args.split()) as b:
            print(f"{name}: {SCENARIOS[name](b)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
