"""Measure the CI gate's own error rates on this machine (docs/gate.md, "The gate's error rates").

Runs ``nanomq-bench gate`` N times against an unchanged target (every failure is a false alarm)
and N times against a deliberately slowed one (every pass is a missed detection), the two kinds
alternating so that both meet the same neighbours, and writes one JSON line per gate run (verdict,
shifts, the load average, the time it took) plus a summary::

    python benchmarks/gate_error_rates.py --runs 30 --out reports/gate-error-rates \\
        --clean-baseline benchmarks/baselines/reference-1.json \\
        --slow-baseline reports/gate-error-rates/slow0.json --slowdown 0.25

The unchanged target is the reference broker (the default target, as in .ci/run), or with
``--clean-delay-us 0`` the slow broker without its delay; the slowed one is
``tests/slow_broker.py --delay-us D`` (the Python data plane with D µs of busy work before every
request), or with ``--slowdown F`` the same wrapper with a delay of F times each connection's own
request cycle (F = 0.25: a 25 % slowdown at every load), compared with a baseline of the same
wrapper at ``--delay-us 0``. Each gate run is a
separate process, exactly as CI runs it. ``--reference-delay-us 0`` adds a same-run reference
target (``--reference-launch``) to every gate run, compared with baselines recorded the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLOW = ("{python} -m tests.slow_broker %s --port {port} --data-dir {data_dir} --log-level warning "
        "--log-segment-size 8MB")


def one(kind: str, i: int, args: argparse.Namespace) -> dict[str, object]:
    out = args.out / f"{kind}-{i:02d}.json"
    cmd = [sys.executable, "-m", "nanomq.cli.bench", "gate", "--json", str(out)]
    if args.reference_delay_us is not None:
        cmd += ["--reference-launch", SLOW % f"--delay-us {args.reference_delay_us}"]
    if kind == "clean":
        if args.clean_delay_us is not None:
            cmd += ["--launch", SLOW % f"--delay-us {args.clean_delay_us}"]
        cmd += [a for b in args.clean_baseline for a in ("--baseline", str(b))]
    else:
        slowed = f"--slowdown {args.slowdown}" if args.slowdown is not None else f"--delay-us {args.delay_us}"
        cmd += ["--launch", SLOW % slowed] + [a for b in args.slow_baseline for a in ("--baseline", str(b))]
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    took = time.monotonic() - t0
    rec: dict[str, object] = {"kind": kind, "i": i, "exit": p.returncode, "seconds": round(took, 1),
                              "load1_start": round(load0, 2), "load1_end": round(os.getloadavg()[0], 2)}
    if out.exists():
        doc = json.loads(out.read_text())
        rec["passed"] = doc["passed"]
        rec["passes"] = len(doc["passes"])
        rec["pass_load1"] = [p.get("load1") for p in doc["passes"]]
        rec["checks"] = {c["id"]: {"status": c["status"], "final": c["final"], "worse_shift": c["worse_shift"]}
                         for c in doc["checks"] if c["kind"] in ("regression", "budget")}
        rec["rerun"] = {c["id"]: {"status": c["status"], "worse_shift": c["worse_shift"]}
                        for c in doc["rerun_checks"] if c["kind"] == "regression"}
    else:
        rec["stderr"] = p.stderr[-2000:]
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30, help="gate runs of each kind (default 30)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "gate-error-rates")
    ap.add_argument("--clean-baseline", type=Path, action="append", required=True)
    ap.add_argument("--slow-baseline", type=Path, action="append", required=True)
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--delay-us", type=float, help="the slowed target's fixed busy work per request, µs")
    how.add_argument("--slowdown", type=float,
                     help="the slowed target's self-calibrating delay: this fraction of each connection's "
                          "request cycle (0.25: 25 %%, tests/slow_broker.py)")
    ap.add_argument("--kinds", default="clean,slow", help="which kinds to run (default clean,slow)")
    ap.add_argument("--clean-delay-us", type=float, default=None,
                    help="the unchanged target is tests/slow_broker.py with this delay (default: the reference broker)")
    ap.add_argument("--reference-delay-us", type=float, default=None,
                    help="also measure a reference target, tests/slow_broker.py with this delay, in the same rounds")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in args.kinds.split(",") if k]
    log = args.out / "runs.jsonl"
    with log.open("a") as f:
        for i in range(1, args.runs + 1):
            for kind in kinds:
                rec = one(kind, i, args)
                f.write(json.dumps(rec) + "\n")
                f.flush()
                print(json.dumps({k: rec.get(k) for k in ("kind", "i", "exit", "passed", "passes", "seconds",
                                                         "load1_start", "load1_end")}), flush=True)
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    summary = {}
    for kind in kinds:
        rs = [r for r in recs if r["kind"] == kind]
        failed = sum(1 for r in rs if r.get("passed") is False)
        broken = sum(1 for r in rs if "passed" not in r)
        loads = [x for r in rs for x in (r["load1_start"], r["load1_end"])]
        summary[kind] = {"runs": len(rs), "failed": failed, "no_result": broken,
                         "load1_min": min(loads, default=None), "load1_max": max(loads, default=None),
                         "seconds_max": max((r["seconds"] for r in rs), default=None)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
