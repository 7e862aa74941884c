"""``nanomq-conformance`` / ``python -m conformance``: run the kit against a broker."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import threading
import tomllib
from pathlib import Path

from conformance.registry import LAYERS, Context
from conformance.report import write_reports
from conformance.rules import load_rules, spec_file
from conformance.runner import CaseResult, all_cases, run_cases
from conformance.target import (
    REFERENCE_AUTH,
    REFERENCE_DECLARES,
    REFERENCE_LAUNCH,
    AuthSpec,
    Target,
    TargetError,
    TargetSpec,
)
from conformance.verdicts import coverage_lines
from conformance.wire import WireClient


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the kit."""
    ap = argparse.ArgumentParser(
        prog="nanomq-conformance",
        description="Test a NanoMQ broker against spec/protocol.md and spec/semantics.md, over the wire. "
        "Without a target the reference broker is launched. Exit status is non-zero only when a MUST "
        "rule fails (--strict: a SHOULD too).")
    ap.add_argument("--target", type=Path, help="target.toml describing the broker ([target] table)")
    ap.add_argument("--address", default=os.environ.get("NANOMQ_TARGET_ADDRESS", ""),
                    help="host:port of a running broker (no crash cases without --launch)")
    ap.add_argument("--launch", default=os.environ.get("NANOMQ_TARGET_LAUNCH", ""),
                    help="command that starts the broker; placeholders {port} {admin_port} {data_dir} {python}")
    ap.add_argument("--kill", default=os.environ.get("NANOMQ_TARGET_KILL", ""),
                    help="command that crashes it ({pid}); default SIGKILL to the launched process group")
    ap.add_argument("--tls-ca", default=os.environ.get("NANOMQ_TARGET_TLS_CA", ""),
                    help="speak TLS to the target, trusting this PEM certificate")
    ap.add_argument("--ready-timeout", type=float, default=None, help="seconds to wait for start-up (default 20)")
    ap.add_argument("--layers", default=",".join(LAYERS), help=f"comma-separated subset of {','.join(LAYERS)}")
    ap.add_argument("--only", action="append", default=[], help="run cases whose id contains this (repeatable)")
    ap.add_argument("--case", action="append", default=[], metavar="ID",
                    help="run the case with exactly this id (repeatable; unlike --only, no substring match)")
    ap.add_argument("--strict", action="store_true", help="SHOULD failures also make the exit status non-zero")
    ap.add_argument("--seed", type=int, default=None, help="seed of every randomised case (printed; default random)")
    ap.add_argument("--enforce-budgets", action="store_true", help="budget figures worse than spec/budgets.toml FAIL")
    ap.add_argument("--crash-iterations", type=int, default=3, help="kill/restart cycles per crash case (default 3)")
    ap.add_argument("--report-dir", type=Path, default=Path("reports/conformance"),
                    help="where index.json, junit.xml and index.html go (default reports/conformance)")
    ap.add_argument("--keep-data", action="store_true",
                    help="keep the launched target's working directory (data, log, strace output) afterwards")
    ap.add_argument("--rules", action="append", default=[],
                    help="run only cases that check this rule ID (repeatable, or comma-separated)")
    ap.add_argument("--quick", action="store_true",
                    help="the fast mode: one crash cycle per crash case, smaller histories, no budgets layer")
    ap.add_argument("--one-target", action="store_true",
                    help="run the cases that restart the target (crash and storage layers, resources.topic-rate) on "
                    "it, after the others; by default, when the kit launches the target (launch command with "
                    "{port} and {data_dir}, kill command with {pid} if any) and --jobs > 1, they run on two more "
                    "instances launched alongside (one for the storage layer, one for the rest)")
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first FAILED case")
    ap.add_argument("--jobs", type=int, default=4,
                    help="cases of the vectors, wire and history layers run this many at a time (default 4; "
                    "crash, storage and budget cases always run alone)")
    ap.add_argument("--list", action="store_true", help="list the cases and the rules they check, then exit")
    ap.add_argument("--list-json", action="store_true",
                    help="print the cases (id, layer, rules, title, capability) and the rules as JSON, then exit")
    ap.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point; 0 when every MUST case passed (and with --strict every SHOULD)."""
    ap = build_parser()
    args = ap.parse_args(argv)
    layers = [x.strip() for x in args.layers.split(",") if x.strip()]
    bad = [x for x in layers if x not in LAYERS]
    if bad:
        ap.error(f"unknown layer(s) {bad}; known: {', '.join(LAYERS)}")
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    if args.crash_iterations < 1:
        ap.error("--crash-iterations must be >= 1")
    if args.quick and "--layers" not in (argv if argv is not None else sys.argv[1:]):
        layers = [x for x in layers if x != "budgets"]
    wanted_rules = {r.strip() for x in args.rules for r in x.split(",") if r.strip()}
    cases = [c for c in all_cases() if c.layer in layers and (not args.only or any(o in c.id for o in args.only))
             and (not args.case or c.id in args.case) and (not wanted_rules or wanted_rules & set(c.rules))]
    rules = load_rules()
    if args.list_json:
        print(json.dumps({
            "cases": [{"id": c.id, "layer": c.layer, "rules": list(c.rules), "title": c.title,
                       "needs": c.needs.name if c.needs is not None else None} for c in cases],
            "rules": {rid: {"level": r.level, "source": r.source, "text": r.text} for rid, r in rules.items()},
        }, indent=1))
        return 0
    if args.list:
        for c in cases:
            print(f"{c.id:48s} {c.layer:8s} {' '.join(c.rules)}")
        print("\n".join(coverage_lines(all_cases(), rules)))
        return 0
    if not cases:
        ap.error("no case selected")

    try:
        spec = TargetSpec.from_toml(args.target) if args.target else TargetSpec()
    except (OSError, tomllib.TOMLDecodeError, TargetError) as e:
        ap.error(f"bad target file: {e}")
    spec.address = args.address or spec.address
    spec.launch = args.launch or spec.launch
    spec.kill = args.kill or spec.kill
    spec.tls_ca = args.tls_ca or spec.tls_ca
    if args.ready_timeout is not None:
        spec.ready_timeout = args.ready_timeout
    if not spec.address and not spec.launch:
        spec.launch = REFERENCE_LAUNCH
        for key, value in REFERENCE_DECLARES.items():
            if not getattr(spec, key) or key == "retention_check_s":
                setattr(spec, key, value)
        if spec.auth is None:
            spec.auth = AuthSpec(**REFERENCE_AUTH)  # type: ignore[arg-type]
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)

    try:
        target = Target(spec, log_dir=args.report_dir)
        target.start()
    except TargetError as e:
        print(f"nanomq-conformance: {e}", file=sys.stderr)
        if "target" in locals():
            target.cleanup()
        return 2
    try:
        with WireClient(target.host, target.port, ssl_context=target.ssl) as w:
            hello = w.hello(token=spec.token.encode())
        missing = spec.missing(hello.capabilities)
        if missing:
            print(f"nanomq-conformance: the target does not announce {', '.join(missing)}, which its target "
                  f"description requires (capabilities 0x{hello.capabilities:x})", file=sys.stderr)
            return 2
        caps = spec.narrow(hello.capabilities)
        with spec_file("budgets.toml").open("rb") as f:
            budgets = tomllib.load(f)
        ctx = Context(target, caps, seed, budgets, args.enforce_budgets,
                      1 if args.quick and args.crash_iterations == 3 else args.crash_iterations,
                      hello.max_batch, hello.max_payload, quick=args.quick, max_frame=hello.max_frame)
        print(f"target {target.host}:{target.port} ({hello.server_name!r}, capabilities 0x{caps:x}); "
              f"{len(cases)} cases; seed {seed}", flush=True)
        auth_target = None
        if spec.auth is not None and any(c.id.startswith("security.") or c.id == "admin.auth" for c in cases):
            try:
                auth_target = _auth_instance(target, spec, args.report_dir)
            except TargetError as e:
                print(f"nanomq-conformance: the authenticating instance of [target.auth] did not start: {e}",
                      file=sys.stderr)
                return 2
            ctx.auth, ctx.auth_target = spec.auth, auth_target
            print(f"security cases on {auth_target.host}:{auth_target.port}", flush=True)

        def progress(r: CaseResult) -> None:
            if args.quiet and r.verdict in ("OK", "INFORMATIONAL", "UNIMPLEMENTED"):
                return
            line = f"[{r.verdict:13s}] {r.case.id} ({r.duration_s:.2f}s)"
            if r.verdict not in ("OK",) and r.message:
                line += f": {r.message.splitlines()[0]}"
            for n in r.notes:
                line += f"\n    {n}"
            print(line, flush=True)

        twins: list[Target] = []
        twins_lock = threading.Lock()

        def other_instance(lane: str) -> Context | None:
            """A further instance of the target for ``lane``, started, and a context on it; None
            (with a warning) when it does not start: that lane then runs on the first."""
            twin = target.twin(f"target-{lane}.log")
            with twins_lock:
                twins.append(twin)
            try:
                twin.start()
            except TargetError as e:
                twin.cleanup()
                target.warn(f"another instance of the target, for the {lane} cases, did not start ({e}); they "
                            "run on the first, after the others")
                return None
            return dataclasses.replace(ctx, target=twin)

        use_twin = (not args.one_target and args.jobs > 1 and target.can_twin
                    and any(c.restarts for c in cases) and any(not c.restarts and c.layer != "budgets" for c in cases))
        try:
            run = run_cases(cases, ctx, rules, progress, fail_fast=args.fail_fast, jobs=args.jobs,
                            before_layer=lambda layer: target.fresh_start() if layer == "crash" else None,
                            side=other_instance if use_twin else None)
        finally:
            twin_meta = [{"address": f"{t.host}:{t.port}", **t.report_meta()[0]} for t in twins if t.proc is not None]
            if auth_target is not None and auth_target is not target:
                twins.append(auth_target)  # stopped (or kept) with the other instances
            for twin in twins:
                if args.keep_data:
                    twin.stop()
                    print(twin.keep_note())
                else:
                    twin.cleanup()
        meta = {
            "target": {"address": f"{target.host}:{target.port}", "launch": spec.launch, "kill": spec.kill},
            "server": {"name": hello.server_name, "capabilities": caps, "max_frame": hello.max_frame,
                       "max_payload": hello.max_payload, "max_batch": hello.max_batch},
            "layers": layers,
        }
        target_meta, target_lines = target.report_meta()
        meta["target"].update(target_meta)
        if twin_meta:
            meta["target"]["other_instances"] = twin_meta
        index = write_reports(run, rules, args.report_dir, meta)
    finally:
        if args.keep_data:
            target.stop()
            print(target.keep_note())
        else:
            target.cleanup()
    print(index["summary_line"])
    for line in target_lines:
        print(line)
    failed = [r for r in run.results if r.verdict == "FAILED"]
    soft = [r for r in run.results if r.verdict == "NON-STRICT"]
    if failed or soft:
        print(f"failed: {', '.join(r.case.id for r in failed + soft)} (reproduce with --seed {seed})")
    print(f"reports: {args.report_dir}/index.html, index.json, junit.xml ({run.duration_s:.1f} s)")
    return 1 if failed or (args.strict and soft) else 0


def _auth_instance(target: Target, spec: TargetSpec, report_dir: Path) -> Target:
    """The instance the security cases run on, started: the one ``[target.auth]`` launches or
    names, or the main target itself when it names neither."""
    auth = spec.auth
    assert auth is not None
    if not auth.launch and not auth.address:
        return target
    other = dataclasses.replace(spec, launch=auth.launch, address=auth.address, token=auth.token, auth=None,
                                trace_syncs=False)
    t = Target(other, log_dir=report_dir, log_name="target-auth.log")
    try:
        t.start()
    except TargetError:
        t.cleanup()
        raise
    return t


if __name__ == "__main__":
    sys.exit(main())
