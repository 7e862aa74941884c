"""Run every benchmark: the pytest-benchmark micro benchmarks, then each end-to-end harness.

End-to-end harnesses are the modules ``benchmarks/bench_*.py``; each has ``main(argv) -> int`` and
prints its own table (percentiles from full histograms, ratios to a baseline measured in the same
run). ``--only NAME`` runs the harnesses whose name contains NAME; ``--quick`` asks each harness
for a short run (used by CI smoke tests); ``--broker-args "..."`` passes options to
``bench_broker.py`` only (e.g. ``--broker-args "--spin-us 200"``; ``make benchmark
BENCH_ARGS='--broker-args "--spin-us 200"'``).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import subprocess
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default="", help="run only harnesses whose name contains this")
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    ap.add_argument("--no-micro", action="store_true", help="skip the pytest-benchmark micro benchmarks")
    ap.add_argument("--broker-args", default="", help="options for bench_broker.py only (one quoted string)")
    args = ap.parse_args(argv)
    rc = 0
    if not args.no_micro and not args.only:
        rc |= subprocess.call(
            [sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider",
             "--benchmark-columns=min,median,ops", "--benchmark-sort=name"],
        )
    sys.path.insert(0, str(HERE.parent))
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem
        if args.only and args.only not in name:
            continue
        print(f"\n=== {name} ===", flush=True)
        extra = shlex.split(args.broker_args) if name == "bench_broker" else []
        try:  # one harness failing must not cost the others' figures
            mod = importlib.import_module(f"benchmarks.{name}")
            rc |= int(mod.main((["--quick"] if args.quick else []) + extra) or 0)
        except Exception:
            traceback.print_exc()
            print(f"=== {name} FAILED ===", flush=True)
            rc |= 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
