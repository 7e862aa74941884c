"""nanomq.ipc against multiprocessing.Queue, multiprocessing.Pipe and pyzmq ipc://, in one run.

Measured (Python on both ends; producer pinned to one core, consumer to the other when the machine
has two; GC off while measuring; percentiles from full histograms):

* in-process push+pop latency of the ring (per pair, timer overhead shown separately);
* cross-process one-way latency, 64 B: the producer sends on an open-loop schedule (one record every
  ``--interval-us``), stamping each record with its *intended* send time, so a stalled sender shows
  up as latency instead of being hidden (no coordinated omission); the consumer busy-polls
  (nanomq "spin") or blocks (nanomq "block", the peers' own blocking receive);
* throughput, 64 B and 1 KiB, one record per call and (nanomq) 256 per call;
* CPU used by a consumer blocked on an idle channel.

Every figure is printed next to its ratio to multiprocessing.Queue measured in the same run, since
absolute numbers on a shared 2-vCPU VM drift by several times.

    python benchmarks/bench_ipc.py            # full run (~1 min)
    python benchmarks/bench_ipc.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import resource
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import contextlib

from benchmarks import budgets
from nanomq import ipc
from nanomq._c import ring as R
from nanomq.bench.hist import Histogram
from nanomq.bench.results import format_table

try:
    import zmq
except ImportError:  # optional benchmark extra
    zmq = None

FORK = mp.get_context("fork")
CORES = sorted(os.sched_getaffinity(0))  # taken once: children inherit the parent's pinned mask
NCPU = len(CORES)
PIN = True


def pin(core: int) -> None:
    """Pin the calling process to ``core`` (an index into CORES) when there is more than one."""
    if PIN and NCPU >= 2:
        os.sched_setaffinity(0, {CORES[core % NCPU]})


# ---- transports: each gives a sender in the parent and a receiver in the forked child -----------


class Transport:
    """A way to move bytes from the parent (producer) to a forked child (consumer)."""

    name = ""
    batch = False
    feeder_thread = False

    def setup(self) -> None: ...
    def child_open(self) -> None: ...
    def parent_open(self) -> None: ...
    def send(self, data: bytes) -> None: ...
    def send_batch(self, recs: list[bytes]) -> None: ...
    def recv(self) -> bytes: ...
    def recv_count(self) -> int:
        """Receive one call's worth (one record or one batch); returns the number of records."""
        self.recv()
        return 1

    def idle_wait(self, seconds: float) -> None: ...
    def close(self) -> None: ...


class RingTransport(Transport):
    def __init__(self, wait: str, batch: bool = False, raw: bool = False) -> None:
        self.wait = wait
        self.batch = batch
        self.raw = raw
        suffix = "batch256" + ("-raw" if raw else "") if batch else "single"
        self.name = f"nanomq.ipc {wait} {suffix}"
        self.chan_name = f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.ch: ipc.Channel | None = None

    def setup(self) -> None:
        self.owner = ipc.Channel.create(self.chan_name, 1 << 22, wait=self.wait)  # type: ignore[arg-type]

    def child_open(self) -> None:
        self.ch = ipc.Channel.open(self.chan_name, wait=self.wait)  # type: ignore[arg-type]
        self.ch.recv(0)  # take the consumer role before the producer starts
        self._recv = self.ch.recv

    def parent_open(self) -> None:
        self.ch = self.owner
        self._send = self.ch.send

    def send(self, data: bytes) -> None:
        self._send(data)

    def send_batch(self, recs: list[bytes]) -> None:
        assert self.ch is not None
        self.ch.send_batch(recs)

    def recv(self) -> bytes:
        m = self._recv()
        assert m is not None
        return m

    def recv_count(self) -> int:
        assert self.ch is not None
        if not self.batch:
            self._recv()
            return 1
        if self.raw:
            return len(self.ch.recv_batch_raw(256)[1])
        return len(self.ch.recv_batch(256))

    def idle_wait(self, seconds: float) -> None:
        assert self.ch is not None
        self.ch.recv(timeout_us=seconds * 1e6)

    def close(self) -> None:
        if self.ch is not None and self.ch is not getattr(self, "owner", None):
            self.ch.close()
        if getattr(self, "owner", None) is not None:
            self.owner.close()


class QueueTransport(Transport):
    name = "multiprocessing.Queue"
    feeder_thread = True  # put() hands off to a thread: the pacing loop must let it run

    def setup(self) -> None:
        self.q: Any = FORK.Queue()

    def send(self, data: bytes) -> None:
        self.q.put(data)

    def recv(self) -> bytes:
        return self.q.get()  # type: ignore[no-any-return]

    def idle_wait(self, seconds: float) -> None:
        with contextlib.suppress(Exception):
            self.q.get(timeout=seconds)


class PipeTransport(Transport):
    name = "multiprocessing.Pipe"

    def setup(self) -> None:
        self.rx, self.tx = FORK.Pipe(duplex=False)

    def send(self, data: bytes) -> None:
        self.tx.send_bytes(data)

    def recv(self) -> bytes:
        return self.rx.recv_bytes()  # type: ignore[no-any-return]

    def idle_wait(self, seconds: float) -> None:
        self.rx.poll(seconds)


class ZmqTransport(Transport):
    name = "pyzmq PUSH/PULL ipc://"

    def setup(self) -> None:
        self.addr = f"ipc:///tmp/nanomq-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def child_open(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.bind(self.addr)

    def parent_open(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.connect(self.addr)
        time.sleep(0.05)  # let the connection come up

    def send(self, data: bytes) -> None:
        self.sock.send(data, copy=not len(data) > 4096)

    def recv(self) -> bytes:
        return self.sock.recv()  # type: ignore[no-any-return]

    def idle_wait(self, seconds: float) -> None:
        self.sock.poll(int(seconds * 1000))

    def close(self) -> None:
        if hasattr(self, "sock"):
            self.sock.close(linger=0)
            self.ctx.term()
        path = self.addr[len("ipc://") :]
        if os.path.exists(path) and os.getpid() == getattr(self, "_owner_pid", os.getpid()):
            with contextlib.suppress(OSError):
                os.unlink(path)


# ---- the three measurements (consumer in a forked child, producer in the parent) ---------------


def _run(t: Transport, child: Callable[[Transport], Any], parent: Callable[[Transport], None]) -> Any:
    t.setup()
    rx, tx = FORK.Pipe(duplex=False)
    ready = FORK.Event()

    def child_main() -> None:
        pin(1)
        t.child_open()
        gc.disable()
        ready.set()
        result = child(t)
        gc.enable()
        tx.send(result)
        t.close()

    p = FORK.Process(target=child_main)
    p.start()
    try:
        if not ready.wait(20):
            raise RuntimeError(f"{t.name}: consumer did not start")
        pin(0)
        t.parent_open()
        gc.disable()
        try:
            parent(t)
        finally:
            gc.enable()
        if not rx.poll(120):
            raise RuntimeError(f"{t.name}: no result from the consumer")
        return rx.recv()
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()
        t.close()


def latency(t: Transport, n: int, interval_ns: int, size: int = 64) -> Histogram:
    """One-way latency of ``n`` records of ``size`` bytes sent every ``interval_ns``."""
    pad = b"\0" * (size - 8)

    def child(t: Transport) -> list[int]:
        out = []
        now = time.perf_counter_ns
        recv = t.recv
        for _ in range(n):
            m = recv()
            out.append(now() - int.from_bytes(m[:8], "little"))
        return out

    def parent(t: Transport) -> None:
        now = time.perf_counter_ns
        send = t.send
        start = now() + 1_000_000
        nap = time.sleep
        for i in range(n):
            due = start + i * interval_ns
            if t.feeder_thread:
                while now() < due:
                    nap(0)  # releases the GIL so Queue's feeder thread can flush
            else:
                while now() < due:
                    pass
            send(due.to_bytes(8, "little") + pad)

    h = Histogram()
    h.record_many(_run(t, child, parent)[n // 20 :])  # drop the first 5 % (warm-up)
    return h


def throughput(t: Transport, n: int, size: int) -> float:
    """Records/s of ``n`` records of ``size`` bytes, timed at the consumer from first to last."""
    msg = b"x" * size

    def child(t: Transport) -> float:
        got = t.recv_count()
        t0 = time.perf_counter_ns()
        first = got
        while got < n:
            got += t.recv_count()
        return (got - first) / ((time.perf_counter_ns() - t0) / 1e9)

    def parent(t: Transport) -> None:
        if t.batch:
            batch = [msg] * 256
            for _ in range(n // 256):
                t.send_batch(batch)
            if n % 256:
                t.send_batch(batch[: n % 256])
        else:
            send = t.send
            for _ in range(n):
                send(msg)

    return float(_run(t, child, parent))


def idle_cpu(t: Transport, seconds: float) -> float:
    """CPU seconds per wall second of a consumer blocked on an idle channel."""

    def child(t: Transport) -> float:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        w0 = time.monotonic()
        t.idle_wait(seconds)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return cpu / (time.monotonic() - w0)

    return float(_run(t, child, lambda t: None))


def c_ring_latency(n: int, interval_ns: int) -> tuple[int, int, int, int] | None:
    """The same ring between two C processes (benchmarks/c/ring_latency.c): the hardware floor and a
    noise gauge for this run. None when there is no C compiler."""
    import shutil
    import subprocess
    import tempfile

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "ring_latency")
        build = subprocess.run(
            [cc, "-O2", "-std=gnu11", f"-I{root}/nanomq/_c/src", f"{root}/benchmarks/c/ring_latency.c",
             f"{root}/nanomq/_c/src/ring.c", "-o", exe],
            capture_output=True,
        )  # fmt: skip
        if build.returncode:
            return None
        out = subprocess.run(
            [exe, str(n), str(interval_ns), "1" if PIN else "0"], capture_output=True, text=True
        )
        p50, p99, p999, mx = (int(x) for x in out.stdout.split())
        return p50, p99, p999, mx


def inproc_latency(n: int) -> tuple[Histogram, Histogram, Histogram]:
    """Ring push+pop in one process: via the C calls, via Channel.send/recv, and the timer alone."""
    ring = R.Ring.heap(1 << 16)
    h, lib, ffi = ring.handle, R.lib, R.ffi
    out = ffi.new("uint8_t[]", 4096)
    ln = ffi.new("uint32_t *")
    msg = b"x" * 64
    now = time.perf_counter_ns
    raw, api, timer = Histogram(), Histogram(), Histogram()
    gc.disable()
    try:
        for _ in range(n):
            t0 = now()
            t1 = now()
            timer.record(t1 - t0)
        for _ in range(n):
            t0 = now()
            lib.nmq_ring_push(h, msg, 64)
            lib.nmq_ring_pop(h, out, 4096, ln)
            t1 = now()
            raw.record(t1 - t0)
        name = f"bench-inproc-{os.getpid()}"
        with ipc.Channel.create(name, 1 << 16, replace=True) as ch:
            send, recv = ch.send, ch.recv
            for _ in range(n):
                t0 = now()
                send(msg)
                recv(0)
                t1 = now()
                api.record(t1 - t0)
    finally:
        gc.enable()
    return raw, api, timer


# ---- report ------------------------------------------------------------------------------------


def _us(ns: float) -> float:
    return round(ns / 1000, 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (smoke test)")
    ap.add_argument("--interval-us", type=float, default=100.0, help="latency test send interval")
    ap.add_argument("--no-peers", action="store_true", help="only nanomq.ipc")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per measurement (best shown, with range)")
    ap.add_argument("--no-pin", action="store_true", help="let the scheduler place the processes")
    ap.add_argument("--only", choices=["latency", "throughput", "idle"], help="run one section")
    args = ap.parse_args(argv)
    global PIN
    PIN = not args.no_pin
    q = args.quick
    n_lat = 2_000 if q else 30_000
    n_thr = 50_000 if q else 1_000_000
    n_thr_peer = 20_000 if q else 200_000
    idle_s = 0.3 if q else 1.0

    print(f"bench_ipc: {NCPU} CPU(s) available; "
          f"{'producer pinned to core 0, consumer to core 1' if PIN and NCPU >= 2 else 'processes NOT pinned'}; Python {sys.version.split()[0]}; "
          f"load average at start {os.getloadavg()[0]:.2f} (other processes on these cores inflate tails)")  # fmt: skip

    raw, api, timer = inproc_latency(20_000 if q else 200_000)
    print("\nIn-process push+pop of 64 B (one thread, heap ring), ns per pair incl. timer:")
    print(format_table([
        {"path": "timer alone (perf_counter_ns x2)", "p50_ns": timer.percentile(50), "p99_ns": timer.percentile(99), "p99.9_ns": timer.percentile(99.9)},
        {"path": "lib.nmq_ring_push + pop (cffi)", "p50_ns": raw.percentile(50), "p99_ns": raw.percentile(99), "p99.9_ns": raw.percentile(99.9)},
        {"path": "Channel.send + recv", "p50_ns": api.percentile(50), "p99_ns": api.percentile(99), "p99.9_ns": api.percentile(99.9)},
    ]))  # fmt: skip

    peers: list[Callable[[], Transport]] = []
    if not args.no_peers:
        peers = [QueueTransport, PipeTransport]
        if zmq is not None:
            peers.append(ZmqTransport)
        else:
            print("(pyzmq not installed: pip install '.[bench]' to include it)")

    try:
        return _cross_process(args, peers, n_lat, n_thr, n_thr_peer, idle_s)
    finally:
        os.sched_setaffinity(0, set(CORES))


def _cross_process(
    args: argparse.Namespace,
    peers: list[Callable[[], Transport]],
    n_lat: int,
    n_thr: int,
    n_thr_peer: int,
    idle_s: float,
) -> int:
    interval = int(args.interval_us * 1000)
    only = args.only
    lat: dict[str, Histogram] = {}
    results: dict[tuple[str, int], float] = {}
    idle_rows: list[dict[str, object]] = []

    rounds = max(1, args.repeat)
    if only in (None, "latency"):
        # Rounds interleave the transports, so a burst of foreign load hits each of them in turn;
        # per transport the round with the lowest p99 is shown, with the p99 range over rounds.
        per_round = max(200, n_lat // rounds)
        pct: dict[str, list[tuple[float, float, float, float]]] = {}
        makers_l: list[Callable[[], Transport]] = [
            lambda: RingTransport("spin"),
            lambda: RingTransport("block"),
            *peers,
        ]
        calib_name = "raw C ring, C on both ends (calibration)"
        for _ in range(rounds):
            calib = c_ring_latency(per_round, interval)
            if calib is not None:
                pct.setdefault(calib_name, []).append(tuple(float(x) for x in calib))  # type: ignore[arg-type]
            for mk in makers_l:
                t = mk()
                h = latency(t, per_round, interval)
                lat[t.name] = (
                    h if t.name not in lat or h.percentile(99) < lat[t.name].percentile(99) else lat[t.name]
                )
                pct.setdefault(t.name, []).append(
                    (h.percentile(50), h.percentile(99), h.percentile(99.9), float(h.max))
                )
        best = {name: min(v, key=lambda x: x[1]) for name, v in pct.items()}
        base_p50 = best["multiprocessing.Queue"][0] if "multiprocessing.Queue" in best else None
        lat_rows = []
        for name, v in pct.items():
            p50, p99, p999, mx = best[name]
            row: dict[str, object] = {
                "transport (64 B, one-way)": name,
                "n/round": per_round - per_round // 20,
            }
            row.update({"p50_us": _us(p50), "p99_us": _us(p99), "p99.9_us": _us(p999), "max_us": _us(mx)})
            row["p99 range over rounds (us)"] = f"{_us(min(x[1] for x in v))}-{_us(max(x[1] for x in v))}"
            if base_p50 is not None:
                row["Queue_p50/this_p50"] = round(base_p50 / max(1.0, p50), 1)
            lat_rows.append(row)
        print(f"\nCross-process one-way latency, open loop, one record every {args.interval_us:g} µs, best of "
              f"{rounds} round(s) by p99 (nanomq 'spin' = busy-polling consumer; 'block' = futex wake-up):")  # fmt: skip
        print(format_table(lat_rows))

    if only in (None, "throughput"):
        thr_rows = []
        rates: dict[tuple[str, int], list[float]] = {}
        for _ in range(rounds):
            for size in (64, 1024):
                makers: list[Callable[[], Transport]] = [
                    lambda: RingTransport("spin"),
                    lambda: RingTransport("spin", batch=True),
                    lambda: RingTransport("spin", batch=True, raw=True),
                    *peers,
                ]
                for mk in makers:
                    t = mk()
                    n = n_thr if t.name.startswith("nanomq") else n_thr_peer
                    if size == 1024:
                        n //= 2
                    rates.setdefault((t.name, size), []).append(throughput(t, n, size))
        for key, v in rates.items():
            results[key] = max(v)
        for (name, size), v in rates.items():
            rate = max(v)
            base_rate = results.get(("multiprocessing.Queue", size))
            thr_rows.append({
                "transport": name, "size_B": size, "best_msgs_per_s": round(rate), "best_MB_per_s": round(rate * size / 1e6, 1),
                "range over rounds (msgs/s)": f"{min(v) / 1e6:.2f}M-{rate / 1e6:.2f}M",
                "this/Queue": round(rate / base_rate, 1) if base_rate else "",
            })  # fmt: skip
        print(f"\nCross-process throughput, best of {rounds} round(s) (consumer timed first to last record; "
              "batch = 256 per call):")  # fmt: skip
        print(format_table(thr_rows))

    if only in (None, "idle"):
        for mk in [lambda: RingTransport("block"), lambda: RingTransport("yield"), lambda: RingTransport("spin"), *peers]:  # fmt: skip
            t = mk()
            idle_rows.append(
                {"transport": t.name, "idle_consumer_cpu_pct": round(100 * idle_cpu(t, idle_s), 2)}
            )
        print(f"\nCPU of a consumer blocked {idle_s:g} s on an idle channel:")
        print(format_table(idle_rows))

    # Budgets ([ipc] in spec/budgets.toml): measured against target, this run only.
    b = budgets.load("ipc")
    checks: list[tuple[str, float, float, bool]] = []  # name, measured, budget, higher_is_better
    spin = lat.get("nanomq.ipc spin single")
    if spin is not None:
        checks += [
            ("one_way_64b_p50_us", _us(spin.percentile(50)), b.get("one_way_64b_p50_us", 0), False),
            ("one_way_64b_p99_us", _us(spin.percentile(99)), b.get("one_way_64b_p99_us", 0), False),
            ("one_way_64b_p999_us", _us(spin.percentile(99.9)), b.get("one_way_64b_p999_us", 0), False),
        ]
    if results:
        checks += [
            ("single_64b_records_per_s", results[("nanomq.ipc spin single", 64)], b.get("single_64b_records_per_s", 0), True),
            ("batch256_64b_records_per_s", results[("nanomq.ipc spin batch256", 64)], b.get("batch256_64b_records_per_s", 0), True),
            ("batch256_1k_mb_s", results[("nanomq.ipc spin batch256", 1024)] * 1024 / 1e6, b.get("batch256_1k_mb_s", 0), True),
        ]  # fmt: skip
    if idle_rows:
        idle = float(idle_rows[0]["idle_consumer_cpu_pct"])  # type: ignore[arg-type]
        checks.append(
            ("idle_blocked_consumer_cpu_pct", idle, b.get("idle_blocked_consumer_cpu_pct", 0), False)
        )
    rows = []
    for key, got, want, higher in checks:
        if not want:
            continue
        ok = got >= want if higher else got <= want
        rows.append(
            {"budget": key, "measured": round(got, 2), "target": want, "verdict": "met" if ok else "MISSED"}
        )
    if rows:
        print(
            "\nBudgets ([ipc] in spec/budgets.toml), on the best round; 'batch256' = recv_batch -> list[bytes]:"
        )
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
