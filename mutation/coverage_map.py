"""The per-case coverage map of the reference broker: which lines each kit case runs.

Every case of the kit (``--list-json``; the budgets layer is left out with --quick) is run alone
(``--case <id>``) against the snapshot's broker started by mutation/covlaunch.py: Python under
coverage.py, and the C files in scope (config.C_FILES: log.c, plane.c, syncer.c) from a gcov build
of the same ``_log`` module (``-O0 --coverage`` through the builder's NANOMQ_CFLAGS hook, plus a flush entry point for the SIGKILL of crash cases, see
covkill.py). The result is cached in build/mutation/coverage-map.json, keyed by the hashes of the
broker's sources, of the kit and spec, and of these tools; new kit cases change the key, so the map
is rebuilt when they appear. C lines are kept per file: ``"c": {path: [executed lines]}`` for each
case, and ``"c_instrumented": {path: [lines gcov instruments]}`` for the map.

The same runs are the baseline: a case that does not pass against the reference broker is never
selected (it could not tell a mutant from the reference) and the report lists it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mutation import config
from mutation.runner import run_kit
from mutation.snapshot import KIT, SNAPSHOT, build_c_module, copy_tree, kit_hash

COV = config.BUILD / "cov"
TREE = COV / "tree"
MAP_FILE = config.BUILD / "coverage-map.json"

GCOV_FLUSH = """
/* mutation testing, coverage build only (mutation/coverage_map.py): write the gcov counters now,
 * before the kit SIGKILLs the broker in a crash case */
extern void __gcov_dump(void);
extern void __gcov_reset(void);
__attribute__((visibility("default"))) void nmq_mutation_gcov_flush(void) { __gcov_dump(); __gcov_reset(); }
"""


def tools_hash() -> str:
    h = hashlib.sha256()
    for name in ("coverage_map.py", "covlaunch.py", "covkill.py", "config.py", "runner.py"):
        h.update((config.ROOT / "mutation" / name).read_bytes())
    return h.hexdigest()[:12]


def list_cases() -> list[dict[str, Any]]:
    """The kit's cases as ``--list-json`` gives them (with --quick: without the budgets layer)."""
    argv = [sys.executable, "-m", "conformance", "--list-json"] + (["--quick"] if config.QUICK else [])
    p = subprocess.run(argv, cwd=KIT, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"the kit cannot list its cases:\n{p.stderr[-3000:]}")
    cases = list(json.loads(p.stdout)["cases"])
    if config.QUICK:
        cases = [c for c in cases if c.get("layer") != "budgets"]
    return cases


def map_file(variant: str = "") -> Path:
    """The map of the default launch, or of a second-chance variant (config.VARIANTS)."""
    return MAP_FILE if not variant else config.BUILD / f"coverage-map-{variant}.json"


def map_key(source_hash: str, cases: list[dict[str, Any]], variant: str = "") -> str:
    ids = ",".join(sorted(c["id"] for c in cases))
    raw = (f"{source_hash}|{kit_hash(KIT)}|{tools_hash()}|{config.SEED}|{config.QUICK}|{config.broker_args(variant)}|"
           f"{sorted(config.target_declares(variant).items())}|{ids}")
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def build_tree(log=print) -> None:  # type: ignore[no-untyped-def]
    """The coverage tree: the snapshot with a gcov build of its _log module."""
    log("coverage: building the gcov-instrumented _log module")
    copy_tree(TREE)
    crc = TREE / "nanomq/_c/src/crc32c.c"
    crc.write_text(crc.read_text() + GCOV_FLUSH)
    ok, out = build_c_module(TREE, "build_log.py", cflags="-O0 --coverage", ldflags="--coverage")
    missing = [p for p in config.C_FILES if not _gcno(p).exists()]
    if not ok or missing:
        raise RuntimeError(f"coverage: the gcov build of _log failed (no notes for {missing}):\n{out[-3000:]}")


def _gcno(path: str) -> Path:
    """The gcov notes file the coverage build writes beside the object of ``path``."""
    return TREE / Path(path).with_suffix(".gcno")


def _python_lines(cov_dir: Path) -> dict[str, list[int]]:
    from coverage import CoverageData

    out: dict[str, set[int]] = {}
    prefix = str(TREE) + "/"
    for f in cov_dir.glob(".coverage*"):
        d = CoverageData(basename=str(f))
        d.read()
        for fn in d.measured_files():
            if fn.startswith(prefix):
                out.setdefault(fn[len(prefix):], set()).update(d.lines(fn) or ())
    return {k: sorted(v) for k, v in sorted(out.items())}


def _gcov(gcov_dir: Path) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """({file: executed lines}, {file: instrumented lines}) of each of config.C_FILES from the
    .gcda files under ``gcov_dir`` (GCOV_PREFIX_STRIP leaves their bare names there: log.gcda,
    plane.gcda ...). A file whose counters were never written has no entry."""
    gcdas = []
    for path in config.C_FILES:
        stem = Path(path).stem
        if (gcov_dir / f"{stem}.gcda").exists():
            shutil.copy(_gcno(path), gcov_dir / f"{stem}.gcno")
            gcdas.append(str(gcov_dir / f"{stem}.gcda"))
    if not gcdas:
        return {}, {}
    p = subprocess.run(["gcov", "--json-format", "--stdout", "-o", str(gcov_dir), *gcdas],
                       cwd=TREE, capture_output=True, text=True, timeout=120)
    executed: dict[str, set[int]] = {}
    instrumented: dict[str, set[int]] = {}
    for doc in p.stdout.splitlines():
        if not doc.strip().startswith("{"):
            continue
        for f in json.loads(doc).get("files", []):
            # a header's inline functions are reported under the header: only our files count
            path = next((c for c in config.C_FILES if f["file"].endswith(c.removeprefix("nanomq/_c/"))), None)
            if path is None:
                continue
            for ln in f["lines"]:
                instrumented.setdefault(path, set()).add(ln["line_number"])
                if ln["count"] > 0:
                    executed.setdefault(path, set()).add(ln["line_number"])
    return ({k: sorted(v) for k, v in sorted(executed.items())},
            {k: sorted(v) for k, v in sorted(instrumented.items())})


def _case_dir(case_id: str) -> Path:
    return COV / "cases" / re.sub(r"[^A-Za-z0-9._-]", "_", case_id)


def measure_case(case_id: str, variant: str = "") -> dict[str, Any]:
    """Run one case against the coverage tree; its verdict, duration and the lines it ran."""
    d = _case_dir(case_id)
    shutil.rmtree(d, ignore_errors=True)
    (d / "py").mkdir(parents=True)
    (d / "gcov").mkdir()
    root = config.ROOT
    launch = (f"env -C {TREE} PYTHONPATH={TREE} {{python}} {root}/mutation/covlaunch.py "
              + config.broker_args(variant))
    kill = f"{{python}} {root}/mutation/covkill.py {{pid}}"
    env = {"NMQ_MUTATION_COV_DIR": str(d / "py"), "GCOV_PREFIX": str(d / "gcov"), "GCOV_PREFIX_STRIP": "64"}
    run = run_kit(launch, [case_id], d / "kit", timeout=900, env_extra=env, kill=kill, fail_fast=False, jobs=1,
                  variant=variant)
    res = next((c for c in run.cases if c.get("id") == case_id), None)
    executed, instrumented = _gcov(d / "gcov")
    out = {
        "verdict": res.get("verdict") if res else ("TIMEOUT" if run.stopped else "ERROR"),
        "message": ((res or {}).get("message") or run.stopped or run.stderr[-1500:])[:1500],
        "duration_s": float((res or {}).get("duration_s") or run.duration_s),
        "kit_s": round(run.duration_s, 2),
        "py": _python_lines(d / "py"),
        "c": executed,
        "c_instrumented": instrumented,
    }
    shutil.rmtree(d, ignore_errors=True)
    return out


def build(source_hash: str, workers: int = config.WORKERS, force: bool = False, log=print,  # type: ignore[no-untyped-def]
          variant: str = "") -> dict[str, Any]:
    """Build (or load the cached) coverage map for the current kit and snapshot (and variant)."""
    cases = list_cases()
    only = config.VARIANTS[variant].get("cases") if variant else None
    if only:  # a variant whose flags only suit some cases (config.VARIANTS): the others are not used
        cases = [c for c in cases if c["id"] in only]
    key = map_key(source_hash, cases, variant)
    out_file = map_file(variant)
    if not force and out_file.exists():
        m = json.loads(out_file.read_text())
        if m.get("key") == key:
            return dict(m)
    if not (SNAPSHOT / "nanomq").is_dir():
        raise RuntimeError("no snapshot: take one first (mutation.snapshot.take)")
    build_tree(log)
    log(f"coverage: measuring {len(cases)} kit cases one at a time against the reference broker"
        + (f" launched with {config.VARIANTS[variant]['args']} (variant {variant})" if variant else ""))
    t0 = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    todo = iter(cases)

    def worker() -> None:
        while True:
            with lock:
                c = next(todo, None)
            if c is None:
                return
            r = measure_case(c["id"], variant)
            r.update(layer=c.get("layer"), rules=c.get("rules", []), title=c.get("title", ""))
            with lock:
                results[c["id"]] = r
                log(f"  [{len(results):3d}/{len(cases)}] {r['verdict']:13s} {c['id']} ({r['duration_s']:.2f} s)")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    instrumented: dict[str, list[int]] = {}
    for r in results.values():
        for path, lines in r.pop("c_instrumented").items():
            instrumented[path] = sorted(set(instrumented.get(path, [])) | set(lines))
    m = {"key": key, "source_hash": source_hash, "kit_hash": kit_hash(KIT), "seed": config.SEED, "quick": config.QUICK,
         "variant": variant,
         "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_s": round(time.monotonic() - t0, 1),
         "cases": {c["id"]: results[c["id"]] for c in cases}, "c_instrumented": instrumented}
    out_file.write_text(json.dumps(m))
    shutil.rmtree(COV / "cases", ignore_errors=True)
    return m
