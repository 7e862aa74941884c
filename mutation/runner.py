"""Run each mutant as a real broker under the conformance kit and decide its verdict.

One kit process per mutant (``python -m conformance --launch <mutant broker> --case <id>...
--fail-fast --quick --strict --seed <SEED>``), from the repository root so the kit imports the
unmutated nanomq.protocol; the mutant is switched on only in the broker's environment. Each run
gets a scratch directory of its own as the kit's TMPDIR (its target directories, data and logs
land there) and a token in the environment of every process it starts, so a hung run is
stopped process by process (the broker runs in a session of its own) and leaves nothing behind.

Verdicts: ``killed`` (a case FAILED or NON-STRICT, or the broker did not start), ``survived``
(every selected case passed), ``timeout`` (the run exceeded its time or disk budget and was
stopped: a hang; it counts as killed in the score and is listed separately), ``no-coverage`` (no
case runs the mutated code: counts as survived), ``build-error`` (a C mutant that does not
compile: not a mutant, left out of the score), and ``error`` (the harness or the kit itself
broke; never expected, always listed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mutation import config
from mutation.common import Mutant, dir_bytes, kill_token
from mutation.snapshot import KIT


@dataclass
class KitRun:
    """What one kit invocation gave."""

    rc: int | None
    cases: list[dict[str, Any]]
    stdout: str
    stderr: str
    duration_s: float
    stopped: str = ""
    """Why the run was stopped (timeout, disk limit), empty if it ended by itself."""
    leftovers: list[int] = field(default_factory=list)
    """PIDs still alive after the kit exited (killed by us)."""
    cut_after_report: bool = False
    """The kit had written its report and was stopped during its target's shutdown."""


_KIT_FLAGS: set[str] | None = None
_ACTIVE: set[str] = set()
"""Tokens of the kit runs in flight (stopped when the campaign is interrupted)."""
_STOP = threading.Event()


def kit_flags() -> set[str]:
    """The options the kit in this checkout accepts (it is being extended while we work)."""
    global _KIT_FLAGS
    if _KIT_FLAGS is None:
        p = subprocess.run([sys.executable, "-m", "conformance", "--help"], cwd=KIT, capture_output=True,
                           text=True, timeout=60)
        _KIT_FLAGS = {w.strip(",[]") for w in p.stdout.split() if w.startswith("--")}
        if "--case" not in _KIT_FLAGS:
            raise RuntimeError("the kit has no --case option (exact case ids): conformance/cli.py lost it")
    return _KIT_FLAGS


def target_toml(keys: dict[str, Any]) -> str:
    """A [target] table (sub-tables for dict values, e.g. capabilities)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v, ensure_ascii=False)

    out = ["[target]"] + [f"{k} = {value(v)}" for k, v in keys.items() if not isinstance(v, dict) and v not in ("", None)]
    for k, v in keys.items():
        if isinstance(v, dict):
            out += ["", f"[target.{k}]"] + [f"{kk} = {value(vv)}" for kk, vv in v.items()]
    return "\n".join(out) + "\n"


def run_kit(launch: str, cases: list[str], workdir: Path, *, timeout: float, env_extra: dict[str, str] | None = None,
            kill: str = "", fail_fast: bool = True, quick: bool = config.QUICK, strict: bool = True,
            seed: int = config.SEED, jobs: int | None = None, stop_after_report: bool = False,
            variant: str = "") -> KitRun:
    """Run the kit's ``cases`` against ``launch`` with ``workdir`` as scratch (emptied first,
    its ``tmp`` removed after). ``stop_after_report``: once the kit has written its report, give
    it 2 s to finish and then stop it and its broker (a mutant broker that does not shut down
    would otherwise cost the kit's 20 s stop timeout; the scratch directory is removed anyway)."""
    shutil.rmtree(workdir, ignore_errors=True)
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True)
    token = uuid.uuid4().hex
    env = dict(os.environ)
    for k in ("MUTANT_UNDER_TEST", "PYTHONPATH", "COVERAGE_PROCESS_START"):
        env.pop(k, None)
    env.update(TMPDIR=str(tmp), NMQ_MUTATION_TOKEN=token, **(env_extra or {}))
    flags = kit_flags()
    # a target file rather than --launch: it declares what the kit's default target declares
    # (on-disk format, connection limit, retention ...), so every case the reference broker runs
    # also runs against the mutant (the storage layer, the connection limit, retention ...)
    target = workdir / "target.toml"
    keys = {"launch": launch, "kill": kill, **config.target_declares(variant),
            "ready_timeout": config.READY_TIMEOUT_S}
    target.write_text(target_toml(keys))
    argv = [sys.executable, "-m", "conformance", "--target", str(target), "--report-dir", str(workdir / "report"),
            "--seed", str(seed), "--quiet"]
    if quick:
        argv.append("--quick")
    if fail_fast:
        argv.append("--fail-fast")
    if strict:
        argv.append("--strict")
    jobs = config.KIT_JOBS if jobs is None else jobs
    if "--jobs" in flags:
        argv += ["--jobs", str(jobs)]
    for c in cases:
        argv += ["--case", c]
    out_path, err_path = workdir / "kit.out", workdir / "kit.err"
    t0 = time.monotonic()
    stopped = ""
    if _STOP.is_set():
        raise KeyboardInterrupt("the campaign is stopping")
    _ACTIVE.add(token)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = subprocess.Popen(argv, cwd=KIT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        next_disk = t0 + 2
        reported_at = 0.0
        index = workdir / "report" / "index.json"
        while p.poll() is None:
            time.sleep(0.1)
            now = time.monotonic()
            if stop_after_report and not reported_at and index.exists():
                reported_at = now
            if reported_at and now - reported_at > 2.0:
                break  # the verdict is written: what is left is the target's shutdown
            if _STOP.is_set():
                stopped = "the campaign was interrupted"
            elif now - t0 > timeout:
                stopped = f"timeout after {timeout:.0f} s"
            elif now >= next_disk:
                next_disk = now + 2
                if dir_bytes(tmp) > config.DISK_LIMIT_BYTES:
                    stopped = f"disk limit: its working directory grew beyond {config.DISK_LIMIT_BYTES >> 30} GiB"
            if stopped:
                # SIGINT first: the kit's finally stops its target and deletes its directory
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(30)
                break
    leftovers = kill_token(token, grace_s=2.0)
    with contextlib.suppress(ProcessLookupError):
        p.kill()
    p.wait()
    _ACTIVE.discard(token)
    dur = time.monotonic() - t0
    results: list[dict[str, Any]] = []
    if index.exists():
        try:
            results = list(json.loads(index.read_text()).get("cases", []))
        except (OSError, ValueError):
            results = []
    run = KitRun(None if stopped else p.returncode, results, out_path.read_text(errors="replace"),
                 err_path.read_text(errors="replace"), dur, stopped, leftovers,
                 cut_after_report=bool(reported_at) and not stopped and p.returncode != 0)
    shutil.rmtree(tmp, ignore_errors=True)
    return run


def classify(run: KitRun) -> tuple[str, str, str]:
    """(verdict, killing case or "", detail) of a mutant's kit run."""
    if run.stopped:
        return "timeout", "", run.stopped
    bad = [c for c in run.cases if c.get("verdict") in ("FAILED", "NON-STRICT")]
    if bad:
        c = bad[0]
        msg = (c.get("message") or "").strip().splitlines()
        return "killed", str(c.get("id")), f"{c.get('verdict')}: {msg[0][:300] if msg else ''}"
    err = run.stderr.strip().splitlines()
    if run.rc == 2 and any(ln.startswith("nanomq-conformance: target") for ln in err):
        return "killed", "", "the broker did not start: " + next(ln for ln in err if ln.startswith("nanomq-conformance"))
    if run.cases and (run.rc == 0 or run.cut_after_report):
        return "survived", "", f"{len(run.cases)} case(s) passed"
    tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-15:])
    return "error", "", f"kit exit status {run.rc} without a failed case:\n{tail}"


# ------------------------------------------------------------------------------------------------
# the campaign loop


@dataclass
class Job:
    mutant: Mutant
    cases: list[str]
    timeout: float
    prepare: Callable[[Path], tuple[str, str]] | None = None
    """For C mutants: build into the given directory; returns (launch, error)."""
    launch: str = ""
    variant: str = ""
    """The second-chance launch (config.VARIANTS) the mutant runs under; empty: the default."""


def run_one(job: Job, workdir: Path) -> dict[str, Any]:
    """Run one mutant; returns its result record."""
    m = job.mutant
    t0 = time.monotonic()
    rec: dict[str, Any] = {"id": m.id, "kind": m.kind, "diff_key": m.diff_key, "cases": job.cases}
    if job.variant:
        rec["variant"] = job.variant
    if not job.cases:
        rec.update(verdict="no-coverage", detail="no kit case runs the mutated line(s)", duration_s=0.0)
        return rec
    launch = job.launch
    build_dir = workdir / "build"
    if job.prepare is not None:
        launch, error = job.prepare(build_dir)
        if error:
            rec.update(verdict="build-error", detail=error[-2000:], duration_s=round(time.monotonic() - t0, 2))
            shutil.rmtree(build_dir, ignore_errors=True)
            return rec
    run = run_kit(launch, job.cases, workdir / "kit", timeout=job.timeout, stop_after_report=True,
                  variant=job.variant)
    verdict, case, detail = classify(run)
    rec.update(verdict=verdict, killed_by=case, detail=detail, duration_s=round(time.monotonic() - t0, 2),
               kit_s=round(run.duration_s, 2), cases_run=len(run.cases))
    if run.leftovers:
        rec["leftover_pids_killed"] = run.leftovers
    shutil.rmtree(workdir, ignore_errors=True)
    return rec


def run_all(jobs: list[Job], journal: Path, key: str, workers: int = config.WORKERS,
            progress: Callable[[dict[str, Any], int, int], None] | None = None,
            stamp: dict[str, Any] | None = None, again: bool = False) -> dict[str, dict[str, Any]]:
    """Run every job on ``workers`` threads; results go to ``journal`` (JSON lines) as they come,
    so an interrupted campaign resumes where it stopped (records of another ``key`` — other
    sources, kit or settings — are ignored). ``stamp`` is added to every record (the source and
    kit hashes, so a later campaign can tell which kit a verdict was reached with). ``again``: run
    every job, also those with a verdict under ``key`` (the new record is the later one, so it is
    the one :func:`load_journal` reads)."""
    done = load_journal(journal, key)
    todo = [j for j in jobs if again or f"{j.mutant.id}|{j.mutant.diff_key}" not in done]
    results = {k: v for k, v in done.items()}
    lock = threading.Lock()
    it = iter(todo)
    total = len(jobs)
    scratch = config.scratch_root()

    def worker(n: int) -> None:
        while not _STOP.is_set():
            with lock:
                job = next(it, None)
            if job is None:
                return
            try:
                rec = run_one(job, scratch / f"w{n}")
            except KeyboardInterrupt:
                return
            except Exception as e:  # the harness broke on this mutant: record it, keep going
                rec = {"id": job.mutant.id, "kind": job.mutant.kind, "diff_key": job.mutant.diff_key,
                       "cases": job.cases, "verdict": "error", "detail": f"{type(e).__name__}: {e}",
                       "duration_s": 0.0}
            if _STOP.is_set():  # stopped half-way: not a verdict
                return
            rec["key"] = key
            rec.update(stamp or {})
            with lock:
                results[f"{rec['id']}|{rec['diff_key']}"] = rec
                with open(journal, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                if progress is not None:
                    progress(rec, len(results), total)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(workers)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except KeyboardInterrupt:
        _STOP.set()
        for tok in list(_ACTIVE):
            kill_token(tok)
        for t in threads:
            t.join(60)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if _STOP.is_set():
        raise KeyboardInterrupt("stopped")
    return results


def load_journal(journal: Path, key: str) -> dict[str, dict[str, Any]]:
    """The results recorded for ``key`` (harness errors are run again)."""
    done: dict[str, dict[str, Any]] = {}
    if journal.exists():
        for ln in journal.read_text().splitlines():
            try:
                r = json.loads(ln)
            except ValueError:
                continue
            if r.get("key") == key and r.get("verdict") != "error":
                done[f"{r['id']}|{r['diff_key']}"] = r
    return done
