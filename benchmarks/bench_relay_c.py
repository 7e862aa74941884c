"""What an event loop in C would cost per record: a C epoll relay beside the Python relay.

    python benchmarks/bench_relay_c.py [--rate 1000] [--seconds 5] [--rounds 3]

The same publisher and subscriber as the kernel-floor calibration (nanomq.bench.calibrate:
64-byte messages at ``--rate``/s, the schedule in the payload, each acked by the relay and
delivered to the subscriber), relayed in turn, interleaved over ``--rounds``, by:

- ``python``: the calibration's relay, blocking sockets in Python (no event loop);
- ``c-epoll``: benchmarks/c/relay_epoll.c, an epoll loop in C, as a broker's loop in C would be;
- ``c-epoll+append``: the same, each message also pwritten to a preallocated file as the log does.

It prints each relay's CPU per record (the process's user + system time over the records after
the warm-up), its median over rounds, and the kernel floor of the same run (one recv plus two
sends, from the calibration). Compare with the broker's CPU per record at the same rate
(``bench_broker.py``, "broker CPU per record, ack=written"): the difference is what the broker
spends beyond a C event loop.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from nanomq.bench import calibrate
from nanomq.bench.system import start_child

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "benchmarks" / "c" / "relay_epoll.c"


def build(out_dir: Path) -> Path:
    """Compile relay_epoll.c (gcc -O2) into ``out_dir``."""
    exe = out_dir / "relay_epoll"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(exe), str(SOURCE)], check=True)
    return exe


def c_relay(exe: Path, rate: float, seconds: float, append_dir: Path | None) -> float:
    """CPU ns per record of the C relay (with ``append_dir``: also appending to a file there)."""
    n = max(1, int(rate * seconds))
    warm = max(50, n // 20)
    total = n + warm
    lpub = socket.create_server(("127.0.0.1", 0))
    lsub = socket.create_server(("127.0.0.1", 0))
    sub = start_child(calibrate._relay_sub, lsub.getsockname()[1], total, warm, name="relay subscriber")
    pub = start_child(calibrate._relay_pub, lpub.getsockname()[1], total, warm, rate, name="relay publisher")
    try:
        cpub, _ = lpub.accept()
        csub, _ = lsub.accept()
        for s in (cpub, csub):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cmd = [str(exe), str(cpub.fileno()), str(csub.fileno()), str(total), str(warm)]
        if append_dir is not None:
            cmd.append(str(append_dir / "relay-append.bin"))
        proc = subprocess.run(cmd, pass_fds=(cpub.fileno(), csub.fileno()), capture_output=True, text=True,
                              timeout=seconds * 3 + 60, check=True)
        cpub.close()
        csub.close()
        pub.result(seconds * 3 + 30)
        sub.result(seconds * 3 + 30)
    finally:
        lpub.close()
        lsub.close()
        for c in (pub, sub):
            c.reap()
    r = json.loads(proc.stdout)
    return float(r["cpu_ns"]) / max(1, int(r["records"]))


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print it."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if shutil.which("gcc") is None:
        print("bench_relay_c: gcc is needed to build benchmarks/c/relay_epoll.c", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="nanomq-relay-"))
    try:
        exe = build(work)
        figures: dict[str, list[float]] = {"python": [], "c-epoll": [], "c-epoll+append": [], "kernel floor": []}
        for r in range(args.rounds):
            floor = calibrate.relay_floor(args.rate, args.seconds)
            figures["python"].append(floor.relay_cpu_per_record_ns)
            figures["kernel floor"].append(floor.floor_ns)
            figures["c-epoll"].append(c_relay(exe, args.rate, args.seconds, None))
            figures["c-epoll+append"].append(c_relay(exe, args.rate, args.seconds, work))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1] / 1e3:.1f} µs" for k, v in figures.items()),
                  file=sys.stderr, flush=True)
        print(f"64 B at {args.rate:g}/s, {args.seconds:g} s per relay, {args.rounds} interleaved rounds; CPU per record "
              "(median [range] over rounds):")
        base = statistics.median(figures["kernel floor"])
        for k, v in figures.items():
            med = statistics.median(v)
            print(f"  {k:16s} {med / 1e3:7.1f} µs  [{min(v) / 1e3:.1f} .. {max(v) / 1e3:.1f}]  {med / base:5.2f}x the floor")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
