"""``nanomq-bench``: measure any NanoMQ-protocol broker, gate a CI job on it, compare two runs.

    nanomq-bench run     [target] [--profile run|gate|budgets] [--rounds N] [--quick] [outputs]
    nanomq-bench gate    [target] --baseline base.json [--rounds N] [--confidence C] [--tolerance T]
                         [--normalize] [--no-confirm] [--strict-budgets] [--no-budgets] [--history H.json ...]
                         [--save-run run.json] [outputs]
    nanomq-bench compare a.json b.json [--confidence C] [--normalize] [outputs]

target: ``--target t.toml`` (the conformance kit's file format), ``--address host:port`` (a running
broker; ``--pid`` and ``--data-dir`` say what of it is on this machine) or ``--launch CMD``
(placeholders ``{port}``, ``{data_dir}``, ``{python}``); none: the reference broker is launched.
A reference target (``--reference-target``, ``--reference-address``, ``--reference-launch``) is
measured in the same rounds as the target, on the gated metrics' workloads, and the gated metrics
become target / reference, round by round (record the baseline the same way).
outputs: ``--json``, ``--markdown``, ``--junit`` (gate), ``--html`` (each a path; ``-`` for stdout,
Markdown and JUnit only); the terminal table always goes to stdout, progress to stderr.

Exit status: 0 measured (run, compare) or passed (gate); 1 the gate failed, or a measurement did;
2 a usage error (a bad flag, an unreadable file, a target that cannot be used).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _fail_import(e: ImportError) -> int:
    print(f"nanomq-bench: {e} (install the bench extra: pip install 'nanomq[bench]')", file=sys.stderr)
    return 2


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {v}")
    return v


def _fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {v}")
    return v


def _non_negative(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {s}")
    return v


def _target_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("target (as in the conformance kit; default: launch the reference broker)")
    g.add_argument("--target", type=Path, help="target.toml with a [target] table (the kit's format)")
    g.add_argument("--address", default="", help="host:port of a running broker")
    g.add_argument("--launch", default="", help="command that starts the broker: {port} {data_dir} {python}")
    g.add_argument("--pid", type=_positive_int, default=None,
                   help="with --address: the broker's PID on this machine (its CPU and RSS are measured)")
    g.add_argument("--data-dir", default="",
                   help="with --address: the broker's data directory on this machine (raw fdatasync is calibrated there)")
    g.add_argument("--ready-timeout", type=_non_negative, default=None, help="seconds to wait for start-up (default 20)")
    r = ap.add_argument_group("reference target (optional): measured in the same rounds, each workload of the gated "
                              "metrics right next to the target's, and divided by, round by round")
    r.add_argument("--reference-target", type=Path, help="target.toml of the reference broker")
    r.add_argument("--reference-address", default="", help="host:port of a running reference broker")
    r.add_argument("--reference-launch", default="", help="command that starts the reference broker")


def _output_args(ap: argparse.ArgumentParser, junit: bool) -> None:
    g = ap.add_argument_group("outputs (the terminal table always goes to stdout)")
    g.add_argument("--json", type=Path, help="the JSON document")
    g.add_argument("--markdown", type=Path, help="Markdown (a CI job summary, e.g. $GITHUB_STEP_SUMMARY; - for stdout)")
    if junit:
        g.add_argument("--junit", type=Path, help="JUnit XML (- for stdout)")
    g.add_argument("--html", type=Path, help="one static HTML page with the plots embedded")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    ap = argparse.ArgumentParser(prog="nanomq-bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="measure a broker: every figure of a profile, in repeated rounds")
    _target_args(r)
    r.add_argument("--profile", choices=["run", "gate", "budgets"], default="run",
                   help="run: every workload (default); gate: the gate's (to record a baseline); budgets: the "
                        "kit's budget layer's")
    r.add_argument("--rounds", type=_positive_int, default=None, help="interleaved rounds (default: the profile's)")
    r.add_argument("--quick", action="store_true", help="every part about 4x shorter, one round (a smoke run)")
    r.add_argument("--awake-cpus", action=argparse.BooleanOptionalAction, default=None,
                   help="keep every CPU from going idle during the rounds (a spinner per CPU at SCHED_IDLE; "
                        "default: on for the gate profile, off otherwise; docs/gate.md)")
    _output_args(r, junit=False)

    g = sub.add_parser("gate", help="fail on a regression against a baseline or a missed budget")
    _target_args(g)
    g.add_argument("--baseline", type=Path, action="append", default=[],
                   help="a stored run (nanomq-bench run --profile gate --json ...); repeatable: the rounds of "
                        "every baseline given are pooled")
    g.add_argument("--budgets", type=Path, default=None, help="budgets file (default spec/budgets.toml)")
    g.add_argument("--no-budgets", action="store_true", help="check regressions against the baseline only")
    g.add_argument("--rounds", type=_positive_int, default=None, help="rounds per pass (default: the gate profile's 8)")
    g.add_argument("--confidence", type=_fraction, default=0.95, help="confidence of the intervals (default 0.95)")
    g.add_argument("--tolerance", type=_non_negative, default=None,
                   help="a gated metric fails when worse than 1 + this (default: each metric's own, 0.10)")
    g.add_argument("--normalize", action="store_true",
                   help="compare the gated metrics as ratios to their calibrations of the same run (for a baseline "
                        "recorded on another kind of machine; noisier, see docs/gate.md)")
    g.add_argument("--no-confirm", action="store_true", help="fail on a suspect without measuring again")
    g.add_argument("--strict-budgets", action="store_true", help="also fail on budgets the baseline missed too")
    g.add_argument("--history", type=Path, action="append", default=[],
                   help="an earlier run or baseline for the HTML history plot (repeatable, oldest first)")
    g.add_argument("--save-run", type=Path, help="write the measured pass(es) as run JSON (the next baseline)")
    _output_args(g, junit=True)

    c = sub.add_parser("compare", help="each figure's change between two runs, with its confidence interval")
    c.add_argument("a", type=Path, help="the earlier run (results JSON)")
    c.add_argument("b", type=Path, help="the later run")
    c.add_argument("--confidence", type=_fraction, default=0.95)
    c.add_argument("--normalize", action="store_true", help="figures with a calibration as ratios to it")
    _output_args(c, junit=False)
    return ap


def _log(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def _emit(path: Path | None, text: str) -> None:
    if path is None:
        return
    if str(path) == "-":
        sys.stdout.write(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if str(path) == os.environ.get("GITHUB_STEP_SUMMARY"):
        with path.open("a") as f:  # a job summary collects every step's
            f.write(text)
    else:
        path.write_text(text)
    _log(f"wrote {path}")


def _spec(args: argparse.Namespace, ap: argparse.ArgumentParser) -> Any:
    from nanomq.bench.target import TargetProblem, describe

    if (args.pid is not None or args.data_dir) and not (args.address or args.target):
        ap.error("--pid and --data-dir describe an --address broker (a launched one is found by the run)")
    try:
        spec = describe(args.target, args.address, args.launch, args.ready_timeout)
    except TargetProblem as e:
        ap.error(str(e))
    if spec.launch and (args.pid is not None or args.data_dir):
        ap.error("--pid and --data-dir are for a broker the run does not launch (the target has a launch command)")
    if args.data_dir and not os.path.isdir(args.data_dir):
        ap.error(f"--data-dir {args.data_dir}: no such directory")
    return spec


def _load_run(path: Path, what: str, ap: argparse.ArgumentParser) -> Any:
    from nanomq.bench.results import Run

    try:
        return Run.load(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        ap.error(f"{what} {path}: {e}")


def _command(argv: list[str] | None) -> str:
    return "nanomq-bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))


def _reference(args: argparse.Namespace, ap: argparse.ArgumentParser) -> Any:
    """The reference target's TargetSpec, or None."""
    from nanomq.bench.target import TargetProblem, describe

    if not (args.reference_target or args.reference_address or args.reference_launch):
        return None
    try:
        return describe(args.reference_target, args.reference_address, args.reference_launch, args.ready_timeout)
    except TargetProblem as e:
        ap.error(f"reference target: {e}")


def _measure(spec: Any, args: argparse.Namespace, profile: Any, command: str, reference: Any = None,
             reference_works: tuple[str, ...] = ()) -> Callable[[int], Any]:
    from nanomq.bench.measure import run_profile

    def one(n: int) -> Any:
        _log(f"== pass {n}")
        return run_profile(spec, profile, pid=args.pid, data_dir=args.data_dir, command=command, log=_log,
                           reference=reference, reference_works=reference_works)

    return one


def _gated_works() -> tuple[str, ...]:
    from nanomq.bench.gate import GATED

    return tuple(dict.fromkeys(m.figure.rsplit("/", 1)[0] for m in GATED))


def _cmd_run(args: argparse.Namespace, ap: argparse.ArgumentParser, command: str) -> int:
    from nanomq.bench import budgets, measure, outputs

    spec = _spec(args, ap)
    profile = {"run": measure.RUN, "gate": measure.GATE, "budgets": budgets.PROFILE}[args.profile]
    if args.quick:
        profile = measure.quick(profile)
    if args.rounds:
        profile = replace(profile, rounds=args.rounds)
    if args.awake_cpus is not None:
        profile = replace(profile, awake_cpus=args.awake_cpus)
    ref = _reference(args, ap)
    works = _gated_works() if args.profile == "gate" else tuple(w.id for w in profile.works)
    try:
        run = _measure(spec, args, profile, command, ref, works)(1)
    except Exception as e:  # the target would not start, or died
        print(f"nanomq-bench: the run failed: {e}", file=sys.stderr)
        return 1
    run.meta["profile_name"] = args.profile
    print(outputs.run_table(run))
    results = budgets.evaluate(run, budgets.load_budgets())
    if results:
        print("\nspec/budgets.toml (informational here; `nanomq-bench gate` decides):")
        for b in results:
            print("  " + b.text())
    if args.json:
        run.save(args.json)
        _log(f"wrote {args.json}")
    _emit(args.markdown, outputs.run_markdown(run))
    if args.html:
        _emit(args.html, outputs.run_html(run, args.profile))
    return 1 if run.meta.get("failures") else 0


def _cmd_gate(args: argparse.Namespace, ap: argparse.ArgumentParser, command: str) -> int:
    from nanomq.bench import budgets, gate, measure, outputs

    spec = _spec(args, ap)
    if not args.baseline and args.no_budgets:
        ap.error("nothing to check: no --baseline and --no-budgets")
    bases = [_load_run(p, "--baseline", ap) for p in args.baseline]
    if len({bool(b.meta.get("profile", {}).get("awake_cpus", False)) for b in bases}) > 1:
        ap.error("--baseline: some baselines were measured with the CPUs kept awake and some not; pool only "
                 "baselines measured alike")
    base = gate.pool(bases) if bases else None
    history = [(p.stem, _load_run(p, "--history", ap)) for p in args.history]
    table = None
    if not args.no_budgets:
        try:
            table = budgets.load_budgets(args.budgets)
        except (OSError, ValueError) as e:
            ap.error(f"--budgets: {e}")
    profile = measure.GATE
    if args.rounds:
        profile = replace(profile, rounds=args.rounds)
    if base is not None:
        bp = base.meta.get("profile", {})
        if bp and [w.get("kind") for w in bp.get("works", [])] != [w.kind for w in profile.works]:
            _log("note: the baseline was measured with another profile; figures are compared by id")
        # Measured as the baseline was: with the CPUs kept awake or not (the gated round trip
        # depends on it, docs/gate.md), whatever the gate profile's default.
        awake = bool(bp.get("awake_cpus", False))
        if awake != profile.awake_cpus:
            _log(f"note: the baseline was measured with the CPUs {'kept awake' if awake else 'free to idle'}; so is "
                 "this run (re-record the baseline with the gate profile's default)")
            profile = replace(profile, awake_cpus=awake)
    opts = gate.GateOptions(confidence=args.confidence, tolerance=args.tolerance, normalize=args.normalize,
                            confirm=not args.no_confirm, strict_budgets=args.strict_budgets,
                            check_budgets=not args.no_budgets)
    ref = _reference(args, ap)
    try:
        res = gate.run_gate(_measure(spec, args, profile, command, ref, _gated_works()), base, table, opts, log=_log)
    except Exception as e:
        print(f"nanomq-bench gate: FAILED: the measurement failed: {e}", file=sys.stderr)
        return 1
    res.meta = {"command": command, "baseline": [str(p) for p in args.baseline],
                "load1": [p.meta.get("load1") for p in res.passes], "seconds": sum(p.meta.get("seconds", 0)
                                                                                   for p in res.passes)}
    print(outputs.checks_table(res.checks, ("regression", "budget")))
    print(f"\nother figures (reported, not gated): {sum(1 for c in res.checks if c.kind == 'reported')}; "
          f"changed: {', '.join(c.id for c in res.checks if c.kind == 'reported' and c.status == 'changed') or 'none'}")
    for i, p in enumerate(res.passes, 1):
        print(f"pass {i}: {p.meta.get('rounds')} rounds, {p.meta.get('seconds')} s, 1-min load average "
              f"{p.meta.get('load1', {}).get('min')}–{p.meta.get('load1', {}).get('max')}")
    verdict = "PASSED" if res.passed else "FAILED: " + ", ".join(f"{c.kind} {c.id}" for c in res.failed)
    print(f"nanomq-bench gate: {verdict}")
    if args.save_run:
        res.passes[-1].save(args.save_run)
        if len(res.passes) > 1:
            res.passes[0].save(args.save_run.with_name(args.save_run.stem + ".pass1.json"))
        _log(f"wrote {args.save_run}")
    if args.json:
        doc = res.as_dict()
        doc["pass_runs"] = [p.to_dict() for p in res.passes]
        outputs.write_json(doc, args.json)
        _log(f"wrote {args.json}")
    _emit(args.markdown, outputs.gate_markdown(res))
    if getattr(args, "junit", None):
        _emit(args.junit, outputs.gate_junit(res))
    if args.html:
        _emit(args.html, outputs.gate_html(res, history))
    return 0 if res.passed else 1


def _cmd_compare(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    from nanomq.bench import gate, outputs

    a = _load_run(args.a, "run", ap)
    b = _load_run(args.b, "run", ap)
    checks = gate.compare_runs(a, b, args.confidence, args.normalize)
    if not checks:
        ap.error("the two runs have no figure in common")
    print(f"{args.b} vs {args.a} (shift = b / a with its {args.confidence:.0%} bootstrap interval over rounds)")
    print(outputs.checks_table(checks, ("reported",)))
    if args.json:
        outputs.write_json({"schema": "nanomq-compare/1", "a": str(args.a), "b": str(args.b),
                            "checks": [c.as_dict() for c in checks]}, args.json)
        _log(f"wrote {args.json}")
    _emit(args.markdown, outputs.compare_markdown(checks, a, b))
    if args.html:
        _emit(args.html, outputs.compare_html(checks, a, b, (args.a.stem, args.b.stem)))
    return 0


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nanomq-bench``."""
    ap = build_parser()
    args = ap.parse_args(argv)
    # SIGTERM (a CI job cancelled) unwinds like an exception, so a launched broker is stopped.
    signal.signal(signal.SIGTERM, _terminated)
    for flag in ("json", "html"):
        if str(getattr(args, flag, None)) == "-":
            ap.error(f"--{flag} needs a file path")
    try:
        if args.command == "compare":
            return _cmd_compare(args, ap)
        command = _command(argv)
        if args.command == "run":
            return _cmd_run(args, ap, command)
        return _cmd_gate(args, ap, command)
    except ImportError as e:
        return _fail_import(e)


if __name__ == "__main__":
    sys.exit(main())
