"""Flame graph of the broker under a per-message load, with py-spy (docs/benchmarks.md, "Profiles").

    python benchmarks/profile_broker.py --out docs/flame/after.svg
    python benchmarks/profile_broker.py --out before.svg --broker-path /path/to/an/older/checkout

It starts a broker (``--broker-path`` runs the ``nanomq`` package of another checkout, built in
place, so an older commit can be profiled under the same load), then in separate processes one
subscriber and one publisher of 1 KiB records acked ``written`` one by one, as fast as the round
trip allows (``--ack durable`` for durable acks, ``--batch N`` to publish batches), and records
the broker process with ``py-spy record`` for ``--seconds``. The load uses this checkout's client:
the wire protocol is the same, so only the broker differs between two profiles. It prints the
records per second the publisher achieved while profiled and the broker's CPU per record, from
/proc, sampled over the same window (py-spy's sampling slows the broker a little; compare
profiles with each other, not with benchmark figures).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nanomq.broker_process import BrokerProcess


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (and its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _publisher(address: str, ack: str, batch: int, size: int, stop: Any, count: Any) -> None:
    from nanomq.client import Publisher

    payload = b"x" * size
    with Publisher(address, ack=ack) as p:
        n = 0
        while not stop.is_set():
            if batch > 1:
                p.publish_batch("profile", [payload] * batch)
                n += batch
            else:
                p.publish("profile", payload)
                n += 1
            if n % 256 < batch or batch > 1:
                count.value = n


def _subscriber(address: str, stop: Any, ready: Any) -> None:
    from nanomq.client import Subscriber

    with Subscriber(address) as s:
        s.subscribe("profile", start="latest")
        ready.set()
        while not stop.is_set():
            s.poll_batch(256, timeout=0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=lambda v: Path(v).resolve(), required=True, help="the SVG flame graph to write")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long to record (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="load before recording starts (default 2)")
    ap.add_argument("--ack", choices=("none", "written", "durable"), default="written")
    ap.add_argument("--batch", type=int, default=1, help="records per publish (default 1: one by one)")
    ap.add_argument("--size", type=int, default=1024, help="payload bytes (default 1024)")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    ap.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    ap.add_argument("--broker-path", type=lambda v: Path(v).resolve(),
                    help="a checkout whose nanomq package (C extensions built in place) runs the broker")
    ap.add_argument("--broker-arg", action="append", default=[], metavar="ARG",
                    help="an extra broker flag (repeatable), e.g. --broker-arg=--data-plane=python")
    args = ap.parse_args(argv)
    if not 1 <= args.batch <= 256:
        ap.error("--batch must be between 1 and 256")
    if args.seconds <= 0 or args.warmup < 0:
        ap.error("--seconds must be positive and --warmup not negative")
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        ap.error("py-spy is not installed (pip install py-spy; it is in the bench extra)")
    if args.broker_path is not None and not (args.broker_path / "nanomq" / "__init__.py").exists():
        ap.error(f"--broker-path {args.broker_path}: no nanomq package there")

    env_pp = os.environ.get("PYTHONPATH")
    if args.broker_path is not None:
        os.environ["PYTHONPATH"] = str(args.broker_path.resolve()) + (os.pathsep + env_pp if env_pp else "")
    data = tempfile.mkdtemp(prefix="nanomq-profile-")
    # `python -m` puts the working directory first on sys.path: start the broker from a directory
    # without a nanomq package, so --broker-path (PYTHONPATH) decides which one runs.
    os.chdir(data)
    broker = BrokerProcess(data, ["--port", str(_free_port()), "--log-segment-size", "64MB", *args.broker_arg])
    try:
        broker.start()
    finally:
        if env_pp is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env_pp
    ctx = mp.get_context("spawn")
    stop, ready, count = ctx.Event(), ctx.Event(), ctx.Value("q", 0)
    procs = [ctx.Process(target=_subscriber, args=(broker.address, stop, ready))]
    try:
        procs[0].start()
        if not ready.wait(20):
            raise SystemExit("the subscriber did not start")
        procs.append(ctx.Process(target=_publisher,
                                 args=(broker.address, args.ack, args.batch, args.size, stop, count)))
        procs[1].start()
        time.sleep(args.warmup)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [spy, "record", "--pid", str(broker.pid), "--duration", str(int(args.seconds)), "--rate",
               str(args.rate), "--format", "flamegraph", "--output", str(args.out)]
        # --native unwinds C frames too, which py-spy can only do with the process paused per sample
        cmd.append("--native" if args.native else "--nonblocking")
        c0, n0, t0 = _cpu_s(broker.pid), count.value, time.monotonic()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        c1, n1, t1 = _cpu_s(broker.pid), count.value, time.monotonic()
        n = max(n1 - n0, 1)
        print(f"{args.out}: {n / (t1 - t0):,.0f} records/s published while recording, broker CPU "
              f"{(c1 - c0) / n * 1e6:.1f} µs per record ({args.ack}, batch {args.batch}, {args.size} B)")
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        broker.stop()
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
