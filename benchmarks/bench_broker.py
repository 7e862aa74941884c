"""NanoMQ's data plane against Redis streams, NATS core, JetStream, pyzmq and multiprocessing.Queue.

Measures whatever NanoMQ broker is installed (``python -m nanomq.cli.broker``), with the
measurement code of :mod:`nanomq.bench`: every system through its own Python client, publisher,
server and subscriber in separate processes, the same workload code for all, medians of
interleaved rounds, every figure a ratio to a peer or a calibration measured in the same run.
``redis-server`` and ``nats-server`` (JetStream on, in a temporary directory) are started by the
run when installed (``apt-get update && apt-get install redis-server nats-server``, plus the
``bench`` extra for their Python clients); a missing one is reported and skipped.

Writes ``results.json`` and PNG plots (latency spectrum, durable latency, throughput bars,
scaling) into ``--out`` (default ``reports/bench/``). Progress goes to stderr, the report to
stdout; the exit status is 0 whether or not a target is met (1 if the harness itself failed).

    python benchmarks/bench_broker.py                 # full run (~6 min)
    python benchmarks/bench_broker.py --quick         # smoke run (< 60 s)
    python benchmarks/bench_broker.py --spin-us 200   # also NanoMQ with a busy-polling subscriber
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanomq.bench import report, suite
from nanomq.bench.results import Run

OUT = Path(__file__).resolve().parents[1] / "reports" / "bench"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run (< 60 s; 1 round)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick: 1)")
    ap.add_argument("--rate", type=float, default=4000.0, help="one-way latency workload rate, msg/s (default 4000)")
    ap.add_argument("--cpu-rate", type=float, default=1000.0,
                    help="rate of the broker-CPU and durable workloads and the paced calibrations (default 1000)")
    ap.add_argument("--spin-us", type=int, default=0,
                    help="also run NanoMQ with the subscriber busy-polling this many us (and the broker with "
                         "--busy-poll when it has that option)")
    ap.add_argument("--no-busy-poll-broker", action="store_true",
                    help="with --spin-us: the spinning subscriber talks to the blocking broker (default: a second "
                         "broker with --busy-poll, when the installed broker has that option)")
    ap.add_argument("--peers", default=",".join(suite.ALL_PEERS),
                    help=f"comma-separated peers to run (default {','.join(suite.ALL_PEERS)}; '' for none)")
    ap.add_argument("--broker-arg", action="append", default=[], metavar="ARG",
                    help="extra nanomq-broker argument (repeatable), e.g. --broker-arg=--fsync=interval")
    ap.add_argument("--no-scaling", action="store_true", help="skip the topics x connections table")
    ap.add_argument("--no-plots", action="store_true", help="write no PNGs")
    ap.add_argument("--out", type=Path, default=OUT, help=f"results directory (default {OUT})")
    return ap.parse_args(argv)


def options(args: argparse.Namespace, command: str, log: object = None) -> suite.Options:
    sizes = suite.QUICK if args.quick else suite.FULL
    if args.rounds:
        sizes = replace(sizes, rounds=args.rounds)
    want = tuple(p for p in (s.strip() for s in args.peers.split(",")) if p)
    bad = set(want) - set(suite.ALL_PEERS)
    if bad:
        raise SystemExit(f"unknown peers: {', '.join(sorted(bad))} (known: {', '.join(suite.ALL_PEERS)})")
    return suite.Options(sizes=sizes, rate=args.rate, cpu_rate=args.cpu_rate, spin_us=args.spin_us,
                         busy_poll_broker=not args.no_busy_poll_broker, peers=want,
                         broker_args=tuple(args.broker_arg), scaling=not args.no_scaling, command=command,
                         log=log or (lambda s: print(s, file=sys.stderr, flush=True)))  # type: ignore[arg-type]


def write(run: Run, out: Path, plots: bool) -> list[Path]:
    """results.json and the plots into ``out``; their paths."""
    paths = [run.save(out / "results.json")]
    if plots:
        try:
            from nanomq.bench.plots import write_plots
        except ImportError as e:  # matplotlib missing: the figures are in the JSON anyway
            print(f"no plots: {e}", file=sys.stderr)
        else:
            paths += write_plots(run, out)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    command = "python benchmarks/bench_broker.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                         else sys.argv[1:]))
    t0 = time.monotonic()
    run = suite.run_suite(options(args, command.strip()))
    print(report.render(run))
    paths = write(run, args.out, not args.no_plots)
    print(f"\nwrote {', '.join(str(p) for p in paths)} ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
