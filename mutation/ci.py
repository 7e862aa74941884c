"""The CI sample (``python -m mutation ci``; tests/test_mutation.py runs it in ``make test``).

A few minutes of the campaign's machinery end to end, on mutants a full run killed
(mutation/ci_sample.toml names each by its file, function and changed line, so renumbering
does not break it, and the kit cases to run). It fails when:

* a sample mutant cannot be found any more, or a sample case is not in the kit;
* the reference broker, started exactly as the mutants are (the trampolined tree with no mutant
  switched on; the snapshot's own C build), does not pass the sample's cases;
* the trampolined tree is not what the kit runs (MUTANT_UNDER_TEST=fail makes every mutated
  function raise: that broker must not pass);
* a sample mutant is not killed.

It works in build/mutation-ci, apart from a campaign that may be running in build/mutation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from mutation import config
from mutation.common import Mutant

CI_BUILD = config.ROOT / "build" / "mutation-ci"


def _matches(m: Mutant, spec: dict[str, Any]) -> bool:
    if m.kind != spec["kind"] or m.function != spec["function"] or m.file != spec.get("file", m.file):
        return False
    if spec.get("operator") and m.operator != spec["operator"]:
        return False
    minus = [ln[1:].strip() for ln in m.diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    plus = [ln[1:].strip() for ln in m.diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    return spec["minus"] in minus and ("plus" not in spec or spec["plus"] in plus)


def find(mutants: list[Mutant], spec: dict[str, Any]) -> Mutant:
    hits = [m for m in mutants if _matches(m, spec)]
    if len(hits) != 1:
        raise LookupError(f"CI sample entry {spec} matches {len(hits)} mutants (want exactly one): "
                          "update mutation/ci_sample.toml")
    return hits[0]


def run(sample_file: Path = config.CI_SAMPLE_FILE) -> dict[str, Any]:
    from mutation import cmutants, pymutants, runner, snapshot
    from mutation.coverage_map import list_cases

    t0 = time.monotonic()
    spec = tomllib.loads(sample_file.read_text())
    entries = spec["mutant"]
    checks: list[dict[str, Any]] = []
    snap = snapshot.take(log=lambda s: None)
    # server.py too: with MUTANT_UNDER_TEST=fail its Broker.__init__ raises, so that check is instant
    py_files = sorted({e["file"] for e in entries if e["kind"] == "python"} | {"nanomq/broker/server.py"})
    mutants: list[Mutant] = []
    if py_files:
        mutants += pymutants.load(pymutants.generate(snap["source_hash"], only=py_files, log=lambda s: None))
    c_all = cmutants.load() if any(e["kind"] == "c" for e in entries) else []
    c_src = {m.id: src for m, src in c_all}
    c_mutants = [m for m, _ in c_all]
    known = {c["id"] for c in list_cases()}
    chosen = []
    for e in entries:
        missing = [c for c in e["cases"] if c not in known]
        if missing:
            raise LookupError(f"CI sample cases not in the kit: {missing}")
        chosen.append((find(mutants if e["kind"] == "python" else c_mutants, e), list(e["cases"])))
    py_cases = sorted({c for m, cs in chosen if m.kind == "python" for c in cs})
    c_cases = sorted({c for m, cs in chosen if m.kind == "c" for c in cs})
    timeout = 240.0
    jobs: list[tuple[str, str, runner.Job]] = []
    ref = Mutant("reference (trampolined tree, no mutant)", "python", "", "", [], "")
    if py_cases:
        jobs.append(("survived", "the reference broker from the trampolined tree passes the Python sample's cases",
                     runner.Job(ref, py_cases, timeout, launch=pymutants.launch("none"))))
        fail = Mutant("fail", "python", "", "", [], "")
        jobs.append(("killed", "MUTANT_UNDER_TEST=fail (every mutated function raises) does not pass: the kit "
                     "really runs the trampolined tree", runner.Job(fail, py_cases[:1], timeout,
                                                                    launch=pymutants.launch("fail"))))
    if c_cases:
        cref = Mutant("reference (snapshot C build)", "c", "", "", [], "")
        jobs.append(("survived", "the reference broker from the snapshot's own C build passes the C sample's cases",
                     runner.Job(cref, c_cases, timeout, launch=cmutants.launch(snapshot.SNAPSHOT))))
    for m, cases in chosen:
        job = runner.Job(m, cases, timeout)
        if m.kind == "python":
            job.launch = pymutants.launch(m.id)
        else:
            src = c_src[m.id]

            def prep(build_dir: Path, src: str = src, path: str = m.file) -> tuple[str, str]:
                ok, out = cmutants.build(src, build_dir, path)
                return cmutants.launch(build_dir), "" if ok else out

            job.prepare = prep
        jobs.append(("killed", f"{m.kind} mutant {m.id} ({m.description}) is killed", job))
    lock = threading.Lock()
    todo = iter(enumerate(jobs))
    scratch = config.scratch_root()

    def worker(n: int) -> None:
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            i, (want, what, job) = item
            rec = runner.run_one(job, scratch / f"ci{n}")
            ok = rec["verdict"] == want
            with lock:
                checks.append({"n": i, "check": what, "want": want, "got": rec["verdict"], "ok": ok,
                               "detail": rec.get("detail", ""), "killed_by": rec.get("killed_by", ""),
                               "duration_s": rec.get("duration_s")})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(config.WORKERS)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    checks.sort(key=lambda c: c["n"])
    return {"ok": all(c["ok"] for c in checks) and len(checks) == len(jobs), "checks": checks,
            "duration_s": round(time.monotonic() - t0, 1), "source_hash": snap["source_hash"]}


def snapshot_lock():  # type: ignore[no-untyped-def]
    from mutation.snapshot import locked

    return locked()


def main(args: argparse.Namespace) -> int:
    if os.environ.get("NMQ_MUTATION_BUILD") != str(CI_BUILD):
        env = dict(os.environ, NMQ_MUTATION_BUILD=str(CI_BUILD))
        argv = [sys.executable, "-m", "mutation", "ci"] + (["--json", str(args.json)] if args.json else [])
        return subprocess.call(argv, cwd=config.ROOT, env=env)
    try:
        with snapshot_lock():
            res = run()
    except LookupError as e:
        res = {"ok": False, "checks": [], "error": str(e)}
    for c in res["checks"]:
        print(f"[{'ok' if c['ok'] else 'FAIL':4s}] {c['check']}: {c['got']} ({c['duration_s']} s)"
              + (f" by {c['killed_by']}" if c["killed_by"] else "") + ("" if c["ok"] else f"\n       {c['detail']}"))
    if "error" in res:
        print(f"[FAIL] {res['error']}")
    print(f"CI sample: {'passed' if res['ok'] else 'FAILED'} in {res.get('duration_s', 0)} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0 if res["ok"] else 1
