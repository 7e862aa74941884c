"""``python -m mutation``: the mutation campaign (``make mutation``), its CI sample and helpers.

    python -m mutation run [--workers 2] [--only-python|--only-c] [--filter REGEX] [--sample N [--sample-c M]]
                           [--sources head|worktree|snapshot] [--no-carry] [--again] [--fresh]
    python -m mutation report [--sample N]    # the report again from the journal (nothing is run)
    python -m mutation coverage [--force]     # (re)build the per-case coverage map only
    python -m mutation list [--filter REGEX]  # mutants, scope and the cases selected for each
    python -m mutation show ID                # a mutant's diff
    python -m mutation equivalent ID --kind equivalent|not-a-rule --reason TEXT
    python -m mutation ci                     # the CI sample (tests/test_mutation.py)
    python -m mutation clean                  # remove build/mutation and leftovers in the temp dir
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mutation import cmutants, config, coverage_map, equivalent, pymutants, report, runner, snapshot
from mutation.common import Mutant
from mutation.selection import Selector, usable_cases


def log(msg: str) -> None:
    print(msg, flush=True)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def prepare(args: argparse.Namespace, take: bool = True) -> tuple[dict[str, str], list[Mutant], dict[int, str], str]:
    """Snapshot (``take``: a fresh one if the sources changed; else the existing one), Python and
    C mutants. Returns (snapshot manifest, mutants, {index: C source}, mutmut version)."""
    snap = snapshot.take(log=log) if take else snapshot.current()
    mutants: list[Mutant] = []
    c_src: dict[int, str] = {}
    mutmut_version = ""
    if not getattr(args, "only_c", False):
        gen = pymutants.generate(snap["source_hash"], log=log, cached_only=not take)
        mutmut_version = gen.get("mutmut", "")
        mutants += pymutants.load(gen)
    if not getattr(args, "only_python", False):
        for m, src in cmutants.load():
            c_src[len(mutants)] = src
            mutants.append(m)
    return snap, mutants, c_src, mutmut_version


def _filtered(mutants: list[Mutant], args: argparse.Namespace | None) -> list[int]:
    """Indexes of the in-scope mutants that ``--filter`` (if given) keeps."""
    idx = [i for i, m in enumerate(mutants) if not m.excluded]
    if getattr(args, "filter", None):
        rx = re.compile(args.filter)
        idx = [i for i in idx if rx.search(mutants[i].id) or rx.search(mutants[i].file)]
    return idx


def _selected(mutants: list[Mutant], args: argparse.Namespace) -> list[int]:
    idx = _filtered(mutants, args)
    if getattr(args, "sample", None) or getattr(args, "sample_c", None):
        idx = stratified_sample(mutants, idx, args.sample, args.sample_c, args.sample_seed)
    return idx


def _allocate(sizes: dict[Any, int], n: int) -> dict[Any, int]:
    """``n`` split over strata proportionally to ``sizes`` (largest remainders, ties by name)."""
    total = sum(sizes.values())
    n = min(n, total)
    if n <= 0 or total == 0:
        return dict.fromkeys(sizes, 0)
    exact = {k: n * v / total for k, v in sizes.items()}
    out = {k: int(x) for k, x in exact.items()}
    rest = sorted(sizes, key=lambda k: (-(exact[k] - out[k]), str(k)))
    for k in rest[: n - sum(out.values())]:
        out[k] += 1
    return out


def stratified_sample(mutants: list[Mutant], idx: list[int], n: int | None, n_c: int | None, seed: int) -> list[int]:
    """A seeded random sample of ``idx``, stratified: first by kind (``n`` split between Python
    and C in proportion to their counts, unless ``n_c`` gives the C share, ``n`` then being the
    Python share), then within each kind by file and function, proportionally (largest
    remainders), a simple random sample in each stratum (a prefix of the stratum in a seeded random
    order, so samples of one seed nest). Proportional allocation makes the
    sample self-weighting within a kind: its kill ratio estimates the kind's score."""
    by_kind: dict[str, list[int]] = {}
    for i in idx:
        by_kind.setdefault(mutants[i].kind, []).append(i)
    if n_c is not None:
        want = {"python": n or 0, "c": n_c}
    else:
        want = _allocate({k: len(v) for k, v in by_kind.items()}, n or 0)
    chosen: list[int] = []
    for kind, members in sorted(by_kind.items()):
        strata: dict[tuple[str, str], list[int]] = {}
        for i in members:
            strata.setdefault((mutants[i].file, mutants[i].function), []).append(i)
        alloc = _allocate({k: len(v) for k, v in strata.items()}, want.get(kind, 0))
        for k in sorted(strata):
            # each stratum in an order of its own seed: a larger sample (same seed) holds a smaller one
            # (but for the odd unit moved by rounding), so a sample can be extended by resuming
            order = sorted(strata[k], key=lambda i: mutants[i].id)
            random.Random(f"{seed}:{kind}:{k[0]}:{k[1]}").shuffle(order)
            chosen += order[: alloc[k]]
    return sorted(chosen)


def population(mutants: list[Mutant], args: argparse.Namespace | None = None) -> dict[str, int]:
    """In-scope mutants of each kind that ``args.filter`` (if any) keeps: what a sample is drawn from."""
    out = {"python": 0, "c": 0}
    for i in _filtered(mutants, args):
        out[mutants[i].kind] += 1
    return out


def population_files(mutants: list[Mutant], args: argparse.Namespace | None = None) -> dict[str, int]:
    """The same, file by file (each file is a stratum of a sample: its row in the report estimates
    that file's score)."""
    out: dict[str, int] = {}
    for i in _filtered(mutants, args):
        out[mutants[i].file] = out.get(mutants[i].file, 0) + 1
    return out


def latest_earlier(journal: Path, source_hash: str, variant: str, key: str) -> dict[str, dict[str, Any]]:
    """{mutant|diff key: its latest record} of earlier runs on these sources (other keys than
    ``key``; harness errors are no verdict). The journal is in time order, so a later verdict
    replaces an earlier one: a kill that a later run did not repeat is not the latest."""
    out: dict[str, dict[str, Any]] = {}
    if journal.exists():
        for ln in journal.read_text().splitlines():
            try:
                r = json.loads(ln)
            except ValueError:
                continue
            if (r.get("key") != key and r.get("source_hash") == source_hash and r.get("variant", "") == variant
                    and r.get("verdict") != "error"):
                out[f"{r.get('id')}|{r.get('diff_key')}"] = r
    return out


def earlier_verdicts(journal: Path, source_hash: str, variant: str, key: str) -> dict[str, str]:
    """{mutant|diff key: the latest verdict} of earlier runs on these sources (other keys)."""
    return {k: str(r.get("verdict")) for k, r in latest_earlier(journal, source_hash, variant, key).items()}


RERUN_VERDICTS = ("survived", "no-coverage", "timeout")
"""Earlier verdicts --rerun-survivors runs again under a new kit. A timeout is one: it is counted
as killed but never carried over (a hang under one kit may be the machine's), so leaving it out
would drop the mutant from the new kit's results."""


def split_for_rerun(jobs: list[runner.Job], earlier: dict[str, str], done_now: dict[str, Any],
                    recorded: set[str]) -> tuple[list[runner.Job], list[runner.Job]]:
    """--rerun-survivors: (the jobs to run again, those recorded in equivalent.toml that keep their
    earlier verdict). Mutants this kit already has a verdict for, or that an earlier kit killed (their
    kills are carried) or never ran, are in neither."""
    rerun: list[runner.Job] = []
    kept: list[runner.Job] = []
    for j in jobs:
        k = f"{j.mutant.id}|{j.mutant.diff_key}"
        if k in done_now or earlier.get(k) not in RERUN_VERDICTS:
            continue
        (kept if j.mutant.id in recorded else rerun).append(j)
    return rerun, kept


def passes(journal: Path, source_hash: str) -> list[dict[str, Any]]:
    """Every run on these sources, in journal order: its kit, variant, the mutants it ran (not
    carried) and the sum of their run times."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for ln in journal.read_text().splitlines() if journal.exists() else []:
        try:
            r = json.loads(ln)
        except ValueError:
            continue
        if r.get("source_hash") != source_hash or r.get("carried_from") is not None:
            continue
        k = (str(r.get("key")), str(r.get("variant", "")))
        p = out.setdefault(k, {"kit_hash": r.get("kit_hash"), "variant": k[1], "mutants": 0, "run_s": 0.0,
                               "killed": 0})
        p["mutants"] += 1
        p["run_s"] = round(p["run_s"] + float(r.get("duration_s") or 0), 1)
        p["killed"] += r.get("verdict") in ("killed", "timeout")
    return list(out.values())


def carry_verdicts(journal: Path, key: str, jobs: list[runner.Job], source_hash: str, variant: str) -> None:
    """Journal under ``key`` the latest earlier verdict of each of ``jobs`` (same sources)."""
    want = {f"{j.mutant.id}|{j.mutant.diff_key}" for j in jobs}
    last = {k: r for k, r in latest_earlier(journal, source_hash, variant, key).items() if k in want}
    with open(journal, "a") as f:
        for r in last.values():
            f.write(json.dumps(dict(r, key=key, carried_from=r.get("kit_hash"))) + "\n")


def carry_kills(journal: Path, key: str, jobs: list[runner.Job], source_hash: str, cases: set[str],
                variant: str = "") -> int:
    """Journal, under ``key``, the kills of an earlier campaign on the same sources (same mutant,
    same diff) whose killing case is still a usable case of the kit, or whose broker did not start:
    the kit only gains cases, and a case that failed against a mutant fails against it again
    (every run uses the same seed).
    Timeouts are not carried (they are run again). Returns how many were carried."""
    if not journal.exists():
        return 0
    done = runner.load_journal(journal, key)
    want = {f"{j.mutant.id}|{j.mutant.diff_key}" for j in jobs} - set(done)
    # a kill by a case the kit still has, or a broker that did not even start (no case needed);
    # only the latest verdict counts: a kill that a later run did not repeat (a suspect kill run
    # again, --again) is not carried
    old = {k: r for k, r in latest_earlier(journal, source_hash, variant, key).items()
           if k in want and r.get("verdict") == "killed"
           and (r.get("killed_by") in cases
                or (not r.get("killed_by") and str(r.get("detail", "")).startswith("the broker did not start")))}
    with open(journal, "a") as f:
        for r in old.values():
            f.write(json.dumps(dict(r, key=key, carried_from=r.get("kit_hash"))) + "\n")
    return len(old)


def journal_key(journal: Path, snap: dict[str, str], variant: str = "", prefer: str = "") -> str:
    """The key of this snapshot's and kit's results for ``variant`` in the journal: ``prefer``
    (the key the tools give now) if it has records, else that of the latest such record (the
    tools may have changed since the campaign ran). Empty: none."""
    if not journal.exists():
        return ""
    found = ""
    for ln in journal.read_text().splitlines():
        try:
            r = json.loads(ln)
        except ValueError:
            continue
        if r.get("source_hash") != snap["source_hash"] or r.get("variant", "") != variant:
            continue
        # the key the tools give now, whatever kit a record was reached with: a rerun under a new
        # kit that ran nothing again holds only records carried over, which keep their old kit hash
        if prefer and r.get("key") == prefer:
            return prefer
        if r.get("kit_hash") == snap["kit_hash"]:
            found = str(r.get("key", ""))
    return found


def variant_results(journal: Path, snap: dict[str, str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{variant: results} of the second-chance runs on this snapshot and kit."""
    out = {}
    for v in config.VARIANTS:
        vf = coverage_map.map_file(v)
        prefer = ""
        if vf.exists():
            prefer = f"{json.loads(vf.read_text()).get('key')}|{coverage_map.tools_hash()}"
        k = journal_key(journal, snap, v, prefer)
        if k:
            out[v] = runner.load_journal(journal, k)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    t0 = time.time()
    snap, mutants, c_src, mutmut_version = prepare(args)
    kit_start = snap["kit_hash"]
    variant = args.variant or ""
    journal = config.BUILD / "results.jsonl"
    first_pass: dict[str, dict[str, Any]] = {}
    if variant:
        prefer = ""
        if coverage_map.MAP_FILE.exists():
            prefer = f"{json.loads(coverage_map.MAP_FILE.read_text()).get('key')}|{coverage_map.tools_hash()}"
        first_pass = runner.load_journal(journal, journal_key(journal, snap, "", prefer))
        if not first_pass:
            raise SystemExit("--variant: no results of the default launch for this snapshot and kit: run without "
                             "--variant first")
    cmap = coverage_map.build(snap["source_hash"], workers=args.workers, log=log, variant=variant)
    sel = Selector(cmap)
    failing = [cid for cid, c in cmap["cases"].items() if cid not in sel.cases]
    if failing:
        log(f"warning: {len(failing)} kit case(s) fail against the reference broker and are not used: "
            + ", ".join(failing))
    entries = equivalent.load()
    applied, stale = equivalent.match(mutants, entries)
    chosen = _selected(mutants, args)
    if variant:
        # the second chance: only survivors of the default launch (of the same selection)
        rx = re.compile(args.survivors_matching) if args.survivors_matching else None
        chosen = [i for i in chosen
                  if first_pass.get(f"{mutants[i].id}|{mutants[i].diff_key}", {}).get("verdict") in ("survived", "no-coverage")
                  and mutants[i].id not in applied
                  and (rx is None or rx.search(mutants[i].id) or rx.search(mutants[i].file))]
        log(f"variant {variant} ({config.VARIANTS[variant]['args']}): {len(chosen)} survivor(s) of the default launch "
            "not recorded in mutation/equivalent.toml")
    jobs = []
    for i in chosen:
        m = mutants[i]
        cases = sel.cases_for(m)
        job = runner.Job(m, cases, sel.timeout_for(cases), variant=variant)
        if m.kind == "python":
            job.launch = pymutants.launch(m.id, variant=variant)
        else:
            src = c_src[i]

            def prep(build_dir: Path, src: str = src, path: str = m.file) -> tuple[str, str]:
                ok, out = cmutants.build(src, build_dir, path)
                return (cmutants.launch(build_dir, variant), "" if ok else out)

            job.prepare = prep
        jobs.append(job)
    n_py = sum(1 for j in jobs if j.mutant.kind == "python")
    log(f"running {len(jobs)} mutants ({n_py} Python, {len(jobs) - n_py} C) on {args.workers} workers; "
        f"{sum(1 for j in jobs if not j.cases)} have no covering case")
    key = f"{cmap['key']}|{coverage_map.tools_hash()}"
    if args.fresh and journal.exists():
        journal.unlink()
    if not (args.no_carry or args.again):
        carried = carry_kills(journal, key, jobs, snap["source_hash"], set(sel.cases), variant)
        if carried:
            log(f"{carried} mutant(s) killed under an earlier kit of the same sources by a case the kit still has: "
                "carried over, not run again (--no-carry to run them)")
    if args.rerun_survivors:
        earlier = earlier_verdicts(journal, snap["source_hash"], variant, key)
        done_now = runner.load_journal(journal, key)
        rerun, kept = split_for_rerun(jobs, earlier, done_now, set(applied))
        carry_verdicts(journal, key, kept, snap["source_hash"], variant)
        jobs = rerun
        log(f"--rerun-survivors: {len(jobs)} survivor(s) of an earlier kit run again; {len(kept)} recorded in "
            "mutation/equivalent.toml keep their earlier verdict; mutants never run are left out")
    rng = random.Random(args.sample_seed)
    rng.shuffle(jobs)  # an interrupted run leaves a random part of the selection done, not one file's
    t_run = time.time()

    def progress(rec: dict[str, Any], n: int, total: int) -> None:
        el = time.time() - t_run
        by = f" by {rec['killed_by']}" if rec.get("killed_by") else ""
        log(f"[{n:5d}/{total}] {rec['verdict']:11s} {rec.get('duration_s', 0):6.1f}s {rec['id']}{by}"
            f"  (elapsed {el / 60:.1f} min)")

    partial = ""
    try:
        results = runner.run_all(jobs, journal, key, workers=args.workers, progress=progress,
                                 stamp={"source_hash": snap["source_hash"], "kit_hash": kit_start,
                                        **({"variant": variant} if variant else {})}, again=args.again)
    except KeyboardInterrupt:
        partial = "interrupted; run `make mutation` again to resume from build/mutation/results.jsonl"
        results = runner.load_journal(journal, key)
    if args.rerun_survivors and not variant:
        rmeta = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_s": round(time.time() - t_run, 1),
                 "duration_s": round(time.time() - t0, 1), "coverage_map_s": cmap.get("build_s"),
                 "mutants": len(jobs), "kit_hash": kit_start, "partial": partial}
        _report_from_journal(args, snap, mutants, mutmut_version, {}, {"rerun": rmeta})
        return 0 if not partial else 130
    if variant:
        vmeta = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_s": round(time.time() - t_run, 1),
                 "duration_s": round(time.time() - t0, 1), "coverage_map_s": cmap.get("build_s"),
                 "mutants": len(jobs), "args": config.VARIANTS[variant]["args"], "partial": partial,
                 "survivors_matching": args.survivors_matching or ""}
        _report_from_journal(args, snap, mutants, mutmut_version, {variant: vmeta})
        return 0 if not partial else 130
    kit_end = snapshot.kit_hash()  # the checkout's kit now (the campaign ran its copy, kit_start)
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t0)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.time() - t0, 1), "run_s": round(time.time() - t_run, 1),
        "coverage_map_s": cmap.get("build_s"), "cpus": os.cpu_count(), "workers": args.workers,
        "source_hash": snap["source_hash"], "kit_hash": kit_start, "kit_hash_end": kit_end,
        "kit_changed": kit_start != kit_end, "seed": config.SEED, "quick": config.QUICK, "mutmut": mutmut_version,
        "cases_usable": len(sel.cases), "cases_total": len(cmap["cases"]), "partial": partial,
        "sources": snap.get("sources", ""), "population": population(mutants, args),
        "population_files": population_files(mutants, args),
        "selection": {"filter": args.filter, "sample": args.sample, "sample_c": args.sample_c,
                      "sample_seed": args.sample_seed, "stratified": "kind, then file and function",
                      "only_python": args.only_python, "only_c": args.only_c},
    }
    _write_report(args, meta, mutants, chosen, results, applied, stale, cmap)
    return 0 if not partial else 130


def _write_report(args: argparse.Namespace, meta: dict[str, Any], mutants: list[Mutant], chosen: list[int],
                  results: dict[str, dict[str, Any]], applied: dict[str, equivalent.Entry],
                  stale: list[tuple[equivalent.Entry, str]], cmap: dict[str, Any]) -> None:
    sample = bool(args.sample or args.sample_c)
    done = [i for i in chosen if f"{mutants[i].id}|{mutants[i].diff_key}" in results]
    if sample and len(done) < len(chosen):
        # jobs run in a seeded random order: the part of a sample that was run is a simple random
        # subsample of it, reported as such (the others are not listed as not-run)
        meta = dict(meta, drawn=len(chosen), run_of_drawn=len(done), partial="")
        chosen = done
    in_run = {mutants[i].id for i in chosen}
    snap = {"source_hash": meta["source_hash"], "kit_hash": meta["kit_hash"]}
    merged, first = merge_variants(results, variant_results(config.BUILD / "results.jsonl", snap))
    meta = dict(meta, first_pass=first)
    rep = report.build(meta, [m for m in mutants if m.excluded or m.id in in_run], merged, applied, stale, cmap)
    paths = report.write(rep)
    c = rep["scores"]
    log(f"score: Python {report._pct(c['python'])}, C {report._pct(c['c'])}, total {report._pct(c['total'])}; "
        f"{meta.get('duration_s', 0) / 60:.1f} min; reports: {', '.join(str(p) for p in paths)}")
    # the whole campaign, or a sample of all of it (its summary says it is one): docs/mutation-report.md
    if getattr(args, "leave_docs", False):
        log(f"a campaign is running in {config.BUILD}: {config.DOCS_REPORT} left as it is")
    elif not args.filter and not meta.get("partial") and not args.only_c and not args.only_python:
        shutil.copy(paths[2], config.DOCS_REPORT)
        log(f"summary copied to {config.DOCS_REPORT}")


def merge_variants(results: dict[str, dict[str, Any]], variants: dict[str, dict[str, dict[str, Any]]]
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """The default launch's results with each survivor that a second-chance variant killed
    marked killed (``variant``, ``first_pass``, ``killed_by`` "<variant>: <case>"); survivors a
    variant ran and did not kill note it (``variants_survived``). Also returns how many of the
    merged results were killed by the default launch alone and by a variant."""
    out = dict(results)
    n = {"first_pass_killed": 0, "variant_killed": 0}
    for k, r in results.items():
        if r.get("verdict") in ("killed", "timeout"):
            n["first_pass_killed"] += 1
            continue
        if r.get("verdict") not in ("survived", "no-coverage"):
            continue
        tried = []
        for v, vr in sorted(variants.items()):
            x = vr.get(k)
            if x is None:
                continue
            if x.get("verdict") in ("killed", "timeout"):
                out[k] = dict(x, first_pass=r["verdict"], variant=v,
                              killed_by=f"{v}: {x.get('killed_by') or x.get('verdict')}")
                n["variant_killed"] += 1
                break
            tried.append(f"{v}: {x.get('verdict')}")
        else:
            if tried:
                out[k] = dict(r, variants_survived=tried)
    return out, n


def cmd_report(args: argparse.Namespace) -> int:
    """The report again from the journal (the selection given as to `run`), without running
    anything: after recording equivalents, or after a run under new kit cases. The timings are
    those of the campaign that produced the journal's latest report (reports/mutation/mutation.json)."""
    snap, mutants, _, mutmut_version = prepare(args, take=False)
    # a report of a campaign still running is of a part of it: docs/mutation-report.md keeps the
    # last finished one
    args.leave_docs = snapshot.running()
    _report_from_journal(args, snap, mutants, mutmut_version, {})
    return 0


def _report_from_journal(args: argparse.Namespace, snap: dict[str, str], mutants: list[Mutant], mutmut_version: str,
                         variant_meta: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    cmap = json.loads(coverage_map.MAP_FILE.read_text())
    if cmap.get("source_hash") != snap["source_hash"]:
        raise SystemExit("the coverage map is not of this snapshot: run `python -m mutation run` first")
    sel = Selector(cmap)
    journal = config.BUILD / "results.jsonl"
    key = journal_key(journal, snap, "", f"{cmap['key']}|{coverage_map.tools_hash()}")
    results = runner.load_journal(journal, key)
    applied, stale = equivalent.match(mutants, equivalent.load())
    chosen = _selected(mutants, args)
    old: dict[str, Any] = {}
    prev = config.REPORT_DIR / "mutation.json"
    if prev.exists():
        m = json.loads(prev.read_text()).get("meta", {})
        if m.get("source_hash") == snap["source_hash"]:
            old = m
    missing = sum(1 for i in chosen if f"{mutants[i].id}|{mutants[i].diff_key}" not in results)
    meta = dict(old)
    meta.update({
        "source_hash": snap["source_hash"], "kit_hash": snap["kit_hash"], "kit_hash_end": snapshot.kit_hash(),
        "seed": config.SEED, "quick": config.QUICK, "mutmut": mutmut_version or old.get("mutmut", ""),
        "cases_usable": len(sel.cases), "cases_total": len(cmap["cases"]), "sources": snap.get("sources", ""),
        "population": population(mutants, args),
        "population_files": population_files(mutants, args), "reported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "carried": sum(1 for i in chosen if results.get(f"{mutants[i].id}|{mutants[i].diff_key}", {}).get("carried_from")),
        "passes": passes(journal, snap["source_hash"]),
        "partial": f"{missing} selected mutant(s) have no result under this kit" if missing else "",
        "selection": {"filter": args.filter, "sample": args.sample, "sample_c": args.sample_c,
                      "sample_seed": args.sample_seed, "stratified": "kind, then file and function",
                      "only_python": args.only_python, "only_c": args.only_c},
    })
    meta["kit_changed"] = meta["kit_hash"] != meta["kit_hash_end"]
    meta["variants"] = dict(old.get("variants", {}), **variant_meta)
    if old.get("kit_hash") and old.get("kit_hash") != snap["kit_hash"]:
        meta.setdefault("campaign_kit_hash", old.get("campaign_kit_hash") or old["kit_hash"])
    meta.update(extra or {})
    _write_report(args, meta, mutants, chosen, results, applied, stale, cmap)


def cmd_coverage(args: argparse.Namespace) -> int:
    snap = snapshot.take(log=log)
    cmap = coverage_map.build(snap["source_hash"], workers=args.workers, force=args.force, log=log)
    usable = usable_cases(cmap)
    log(f"coverage map {coverage_map.MAP_FILE}: {len(cmap['cases'])} cases, {len(usable)} pass against the "
        f"reference broker (built in {cmap.get('build_s')} s)")
    for cid, c in cmap["cases"].items():
        if cid not in usable:
            log(f"  not usable: {cid}: {c['verdict']}: {c.get('message', '').splitlines()[0] if c.get('message') else ''}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    snap, mutants, _, _ = prepare(args, take=False)
    sel = None
    if coverage_map.MAP_FILE.exists():
        cmap = json.loads(coverage_map.MAP_FILE.read_text())
        if cmap.get("source_hash") == snap["source_hash"]:
            sel = Selector(cmap)
    rx = re.compile(args.filter) if args.filter else None
    for m in mutants:
        if rx and not (rx.search(m.id) or rx.search(m.file)):
            continue
        if m.excluded:
            print(f"{m.id}\tEXCLUDED\t{m.excluded[:80]}")
            continue
        cases = sel.cases_for(m) if sel else None
        print(f"{m.id}\t{m.file}:{m.lines[0] if m.lines else '?'}\t{m.description}\t"
              f"{'?' if cases is None else len(cases)} case(s)")
    return 0


def _find(mutant_id: str, args: argparse.Namespace) -> Mutant:
    _, mutants, _, _ = prepare(args, take=False)
    m = next((m for m in mutants if m.id == mutant_id), None)
    if m is None:
        raise SystemExit(f"no mutant {mutant_id!r}")
    return m


def cmd_show(args: argparse.Namespace) -> int:
    m = _find(args.id, args)
    print(f"# {m.id} ({m.kind}, {m.file}, {m.function}, lines {m.lines}, diff key {m.diff_key})")
    if m.excluded:
        print(f"# out of scope: {m.excluded}")
    print(m.diff)
    return 0


def cmd_equivalent(args: argparse.Namespace) -> int:
    m = _find(args.id, args)
    equivalent.add(m, args.kind, args.reason)
    log(f"recorded {m.id} ({m.diff_key}) as {args.kind} in {config.EQUIVALENT_FILE}")
    return 0


def cmd_ci(args: argparse.Namespace) -> int:
    from mutation import ci

    return ci.main(args)


def cmd_clean(args: argparse.Namespace) -> int:
    shutil.rmtree(config.BUILD, ignore_errors=True)
    tmp = Path(tempfile.gettempdir())
    for d in tmp.glob("nanomq-mutation-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)
            log(f"removed {d}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mutation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "report", "coverage", "list", "show", "equivalent", "ci", "clean"):
        p = sub.add_parser(name)
        p.add_argument("--workers", type=int, default=config.WORKERS)
        if name in ("run", "report", "list", "show", "equivalent"):
            p.add_argument("--only-python", action="store_true")
            p.add_argument("--only-c", action="store_true")
        if name in ("run", "report", "list"):
            p.add_argument("--filter", help="only mutants whose id or file matches this regex")
        if name in ("run", "report"):
            p.add_argument("--sample", type=int, help="run a seeded random sample of this many mutants, stratified "
                           "by kind (Python/C) and by file and function (proportional allocation)")
            p.add_argument("--sample-c", type=int, help="with --sample: this many C mutants (--sample is then the "
                           "Python share)")
            p.add_argument("--sample-seed", type=int, default=1)
        if name == "run":
            p.add_argument("--variant", choices=sorted(config.VARIANTS),
                           help="the second chance: run the survivors of the default launch (of the same "
                           "selection) again, the broker launched with this variant's flags (config.VARIANTS)")
            p.add_argument("--survivors-matching", metavar="REGEX",
                           help="with --variant: only survivors whose id or file matches")
            p.add_argument("--fresh", action="store_true", help="forget the results journal (no resume)")
            p.add_argument("--no-carry", action="store_true", help="run again mutants an earlier kit killed")
            p.add_argument("--again", action="store_true",
                           help="run the selected mutants (narrow them with --filter) again even where this "
                                "campaign has a verdict for them, e.g. a kill suspected to be the load's; the "
                                "new verdict replaces the old (implies --no-carry)")
            p.add_argument("--rerun-survivors", action="store_true",
                           help="after new kit cases (same sources, e.g. --sources snapshot): carry the earlier "
                           "kills and run only the mutants that survived an earlier kit; mutants never run "
                           "stay not run")
        if name == "coverage":
            p.add_argument("--force", action="store_true")
        if name in ("run", "coverage"):
            p.add_argument("--kit", choices=("head", "keep"), default="head",
                           help="the kit of the snapshot's origin (head: HEAD's, worktree: the checkout's), or "
                           "keep the kit copy there is")
            p.add_argument("--sources", choices=("head", "worktree", "snapshot"), default="head",
                           help="snapshot the committed tree (HEAD, the default: others' uncommitted work is "
                           "never tested) or the working tree as it is, or keep the broker snapshot there is "
                           "(and take HEAD's kit: the same mutants under new kit cases)")
        if name in ("show", "equivalent"):
            p.add_argument("id")
        if name == "equivalent":
            p.add_argument("--kind", choices=equivalent.KINDS, required=True)
            p.add_argument("--reason", required=True)
        if name == "ci":
            p.add_argument("--json", type=Path, help="write the result here as JSON")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if getattr(args, "sources", None):
        snapshot.SOURCES = args.sources
    if getattr(args, "kit", None) == "keep":
        snapshot.KEEP_KIT = True
    handler = {"run": cmd_run, "report": cmd_report, "coverage": cmd_coverage, "list": cmd_list, "show": cmd_show,
               "equivalent": cmd_equivalent, "ci": cmd_ci, "clean": cmd_clean}[args.cmd]
    if args.cmd in ("run", "coverage", "clean"):
        with snapshot.locked():
            return handler(args)
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
