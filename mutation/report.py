"""The campaign's report: reports/mutation/mutation.json, mutation.md (every survivor with its
diff) and summary.md (the scores and tables, committed as docs/mutation-report.md).

Score = (killed + timeout) / (mutants run - equivalent), per kind and overall. A timeout is a
hang the run had to be stopped for, counted as killed and listed separately; no-coverage counts
as survived; build errors (C mutants that do not compile) and out-of-scope mutants are not
mutants of the broker under test and are left out, with their counts.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from mutation import config
from mutation.common import Mutant
from mutation.equivalent import Entry

ORDER = ("killed", "timeout", "survived", "no-coverage", "equivalent", "build-error", "error")


def verdict_of(m: Mutant, rec: dict[str, Any] | None, eq: Entry | None) -> str:
    if rec is None:
        return "not-run"
    v = str(rec["verdict"])
    if eq is not None and v in ("survived", "no-coverage"):
        return "equivalent"
    return v


def score(counts: Counter[str]) -> float | None:
    denom = sum(counts[v] for v in ("killed", "timeout", "survived", "no-coverage"))
    return None if denom == 0 else (counts["killed"] + counts["timeout"]) / denom


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The Wilson score interval (95 % by default) of a proportion k/n."""
    if n == 0:
        return None
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / d
    return max(0.0, c - h), min(1.0, c + h)


def _ci(x: list[float] | None) -> str:
    return "–" if not x else f"{100 * x[0]:.1f}–{100 * x[1]:.1f} %"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _change(m: Mutant) -> tuple[str, str]:
    minus = next((ln[1:].strip() for ln in m.diff.splitlines() if ln.startswith("-") and not ln.startswith("---")), "")
    plus = next((ln[1:].strip() for ln in m.diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")), "")
    return minus, plus


def build(meta: dict[str, Any], mutants: list[Mutant], results: dict[str, dict[str, Any]],
          applied: dict[str, Entry], stale: list[tuple[Entry, str]], cmap: dict[str, Any] | None) -> dict[str, Any]:
    """The report as one JSON-able dict."""
    rows = []
    excluded: Counter[str] = Counter()
    for m in mutants:
        if m.excluded:
            if m.file in config.PY_EXCLUDED_FILES:
                excluded[f"{m.file}: {m.excluded}"] += 1
            elif (m.file, m.function) in config.PY_EXCLUDED_FUNCTIONS:
                excluded[f"{m.file} `{m.function}`: {m.excluded}"] += 1
            else:
                excluded[m.excluded] += 1
            continue
        rec = results.get(f"{m.id}|{m.diff_key}")
        eq = applied.get(m.id)
        v = verdict_of(m, rec, eq)
        row: dict[str, Any] = {"id": m.id, "kind": m.kind, "file": m.file, "function": m.function, "lines": m.lines,
               "operator": m.operator, "description": m.description, "verdict": v, "diff_key": m.diff_key}
        if rec is not None:
            row.update({k: rec[k] for k in ("cases", "killed_by", "detail", "duration_s", "first_pass", "variant",
                                            "variants_survived", "carried_from") if k in rec})
        if eq is not None:
            row["equivalence"] = {"kind": eq.kind, "reason": eq.reason}
            if v in ("killed", "timeout"):
                row["equivalence"]["contradicted"] = True
        if v not in ("killed", "timeout"):
            row["diff"] = m.diff
        rows.append(row)
    counts = {k: Counter(r["verdict"] for r in rows if r["kind"] == k) for k in ("python", "c")}
    total = counts["python"] + counts["c"]
    # the default launch alone: a mutant a second-chance variant killed counts as its first verdict
    def first_verdict(r: dict[str, Any]) -> str:
        v = str(r.get("first_pass", r["verdict"]))
        return "equivalent" if v in ("survived", "no-coverage") and "equivalence" in r else v

    first = {k: Counter(first_verdict(r) for r in rows if r["kind"] == k) for k in ("python", "c")}
    first_total = first["python"] + first["c"]
    by_func: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for r in rows:
        by_func[(r["file"], r["function"])][r["verdict"]] += 1
    baseline = {}
    if cmap is not None:
        baseline = {cid: {"verdict": c["verdict"], "message": c.get("message", "")[:500]}
                    for cid, c in cmap["cases"].items() if c["verdict"] not in ("OK", "UNIMPLEMENTED", "INFORMATIONAL")}
    skipped = {}
    if cmap is not None:
        skipped = {cid: c.get("message", "")[:300] for cid, c in cmap["cases"].items()
                   if c["verdict"] == "INFORMATIONAL" and c.get("message", "").startswith("skipped")}
    sample = None
    sel = meta.get("selection") or {}
    is_sample = bool(sel.get("sample") or sel.get("sample_c"))
    pop = meta.get("population", {})
    if is_sample:
        sample = {}
        for k, c in (("python", counts["python"]), ("c", counts["c"]), ("total", total)):
            sample[k] = _sample_row(c, pop.get(k) if k != "total" else sum(pop.values()) if pop else None)
    # the C files one by one (config.C_FILES, those with mutants here): each is a stratum of the
    # sample (strata are file and function), so its kill ratio estimates the file's score too
    c_files: dict[str, dict[str, Any]] = {}
    pop_files = meta.get("population_files", {})
    for path in config.C_FILES:
        frows = [r for r in rows if r["kind"] == "c" and r["file"] == path]
        if not frows:
            continue
        fc = Counter(r["verdict"] for r in frows)
        ff = Counter(first_verdict(r) for r in frows)
        untestable = sum(1 for r in frows if r["verdict"] == "equivalent" and r["equivalence"]["kind"] == "untestable")
        c_files[config.c_name(path)] = {
            "file": path, "counts": dict(fc), "score": score(fc), "score_default_launch": score(ff),
            "score_untestable_as_survived": score(fc + Counter({"survived": untestable})),
            "equivalence_kinds": dict(Counter(r["equivalence"]["kind"] for r in frows if r["verdict"] == "equivalent")),
            "sample": _sample_row(fc, pop_files.get(path)) if is_sample else None,
        }
    return {
        "meta": meta,
        "skipped_at_baseline": skipped,
        "sample": sample,
        "scores": {"python": score(counts["python"]), "c": score(counts["c"]), "total": score(total)},
        "scores_untestable_as_survived": {
            k: score(c + Counter({"survived": sum(1 for r in rows if (k == "total" or r["kind"] == k)
                                                  and r["verdict"] == "equivalent"
                                                  and r["equivalence"]["kind"] == "untestable")}))
            for k, c in (("python", counts["python"]), ("c", counts["c"]), ("total", total))},
        "equivalence_kinds": {k: dict(Counter(r["equivalence"]["kind"] for r in rows
                                              if r["kind"] == k and r["verdict"] == "equivalent"))
                              for k in ("python", "c")},
        "scores_default_launch": {"python": score(first["python"]), "c": score(first["c"]),
                                  "total": score(first_total)},
        "variant_kills": {k: sum(1 for r in rows if r["kind"] == k and r.get("variant")) for k in ("python", "c")},
        "counts": {k: dict(v) for k, v in (("python", counts["python"]), ("c", counts["c"]), ("total", total))},
        "c_files": c_files,
        "excluded": dict(excluded),
        "baseline_failures": baseline,
        "stale_equivalents": [{"id": e.id, "diff_key": e.diff_key, "kind": e.kind, "reason": e.reason, "why": why}
                              for e, why in stale],
        "functions": [{"file": f, "function": fn, **dict(c), "score": score(c)} for (f, fn), c in sorted(by_func.items())],
        "mutants": rows,
    }


def _sample_row(c: Counter[str], population: int | None) -> dict[str, Any]:
    """A sample's figures for one kind or file: mutants run, scored, killed, the population it was
    drawn from and the 95 % Wilson interval of the kill ratio."""
    n = sum(c[v] for v in ("killed", "timeout", "survived", "no-coverage"))
    kk = c["killed"] + c["timeout"]
    ci = wilson(kk, n)
    return {"run": sum(c.values()), "scored": n, "killed": kk, "population": population,
            "ci95": list(ci) if ci else None}


def c_label(rep: dict[str, Any]) -> str:
    """``C (log.c, plane.c, syncer.c)``: the C files the report has mutants of (all in scope if none)."""
    names = list(rep.get("c_files") or {}) or [config.c_name(p) for p in config.C_FILES]
    return f"C ({', '.join(names)})"


def _kinds(rep: dict[str, Any]) -> list[tuple[str, str, Counter[str], Any, dict[str, Any] | None]]:
    """(key, label, counts, score, sample row) of each row of the tables: Python, C, then each C
    file (when the report has more than one), then the total."""
    smp = rep.get("sample") or {}
    out = [(k, label, Counter(rep["counts"][k]), rep["scores"][k], smp.get(k))
           for k, label in (("python", "Python"), ("c", c_label(rep)))]
    files = rep.get("c_files") or {}
    if len(files) > 1:
        out += [(f"c:{name}", f"… C: {name}", Counter(f["counts"]), f["score"], f.get("sample"))
                for name, f in files.items()]
    out.append(("total", "total", Counter(rep["counts"]["total"]), rep["scores"]["total"], smp.get("total")))
    return out


def _table(rep: dict[str, Any]) -> list[str]:
    out = ["| | mutants | killed | timeout | survived | no coverage | equivalent | build error | error | score |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for _, label, c, sc, _ in _kinds(rep):
        out.append(f"| {label} | {sum(c.values())} | {c['killed']} | {c['timeout']} | {c['survived']} | "
                   f"{c['no-coverage']} | {c['equivalent']} | {c['build-error']} | {c['error']} | "
                   f"**{_pct(sc)}** |")
    return out


def markdown(rep: dict[str, Any], full: bool) -> str:
    meta = rep["meta"]
    L = ["# Mutation testing report", ""]
    L += [f"Generated by `make mutation` (mutation/, docs/mutation.md) on {meta.get('finished', '?')}: "
          f"{meta.get('duration_s', 0) / 60:.1f} min on {meta.get('cpus', '?')} CPU(s), {meta.get('workers')} workers. "
          f"Sources {meta.get('source_hash')}, kit {meta.get('kit_hash')} ({meta.get('cases_usable')} usable kit "
          f"cases), kit seed {meta.get('seed')}, `--quick`: {meta.get('quick')}, mutmut {meta.get('mutmut')}.", ""]
    if meta.get("campaign_kit_hash"):
        L += [f"The campaign ran with kit {meta['campaign_kit_hash']}; kit cases were added against its survivors, "
              f"and under each later kit (last {meta.get('kit_hash')}) every earlier kill whose killing case the kit "
              "still has (or whose broker did not start) was carried over and the unrecorded survivors were run "
              "again (`--rerun-survivors`).", ""]
    if meta.get("passes"):
        L += ["| pass | kit | variant | mutants run | killed | run time (sum over mutants) |",
              "| ---: | --- | --- | ---: | ---: | ---: |"]
        L += [f"| {n} | {p.get('kit_hash')} | {p.get('variant') or 'default launch'} | {p['mutants']} | "
              f"{p['killed']} | {p['run_s'] / 60:.1f} min |" for n, p in enumerate(meta["passes"], 1)]
        L.append("")
    if meta.get("kit_changed"):
        L += [f"The campaign ran its copy of the kit as of its start ({meta.get('kit_hash')}); the checkout's "
              f"kit has changed since ({meta.get('kit_hash_end')}): the next campaign takes the new cases.", ""]
    if meta.get("partial"):
        L += [f"**Partial run**: {meta['partial']}", ""]
    L += ["Score = (killed + timeout) / (mutants − equivalent). No coverage counts as survived; build errors are "
          "left out (they are not mutants of a broker).", ""]
    smp = rep.get("sample")
    if smp:
        sel = meta.get("selection") or {}
        L += [f"**This is a sample, not the full campaign**: a seeded random sample (seed "
              f"{sel.get('sample_seed')}) stratified by kind and, within each, by file and function with "
              "proportional allocation, so each kind's kill ratio estimates its score; the intervals are 95 % "
              "Wilson intervals of that ratio (they ignore the gain from stratifying and the finite "
              "population: conservative). The whole campaign is `make mutation` (no `--sample`).", ""]
        if meta.get("drawn"):
            L += [f"Of the {meta['drawn']} mutants drawn, {meta['run_of_drawn']} were run before the campaign was "
                  "stopped. Jobs run in a seeded random order, so those are a simple random subsample of the "
                  "stratified sample; the counts and intervals below are of them.", ""]
        L += [
              "| | population (in scope) | sampled | scored (− equivalent, build errors) | killed | score | 95 % CI |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for _, label, _, sc, x in _kinds(rep):
            if x is None:
                continue
            L.append(f"| {label} | {x['population'] if x['population'] is not None else '?'} | {x['run']} | "
                     f"{x['scored']} | {x['killed']} | **{_pct(sc)}** | {_ci(x['ci95'])} |")
        L += ["", "The `total` row mixes two strata of different sampling fractions; read the two kinds apart. "
              "Each C file is a stratum of its own (strata are file and function), so its row estimates "
              "that file's score.", ""]
    L += _table(rep) + [""]
    ek = rep.get("equivalence_kinds") or {}
    if any(ek.values()):
        u = rep["scores_untestable_as_survived"]
        L += ["Recorded survivors (mutation/equivalent.toml), left out of the score: "
              + "; ".join(f"{label}: " + (", ".join(f"{n} {kind}" for kind, n in sorted(ek.get(k, {}).items())) or "none")
                          for k, label in (("python", "Python"), ("c", "C")))
              + f". Counting the `untestable` ones (a rule applies, but the kit cannot test it over the wire) as "
              f"survived: Python {_pct(u['python'])}, C {_pct(u['c'])}, total {_pct(u['total'])}.", ""]
    files = rep.get("c_files") or {}
    if len(files) > 1:
        L += ["By C file: " + "; ".join(
            f"{name}: {_pct(f['score'])} ("
            + (", ".join(f"{n} {kind}" for kind, n in sorted(f["equivalence_kinds"].items())) or "none") + " recorded"
            + f"; untestable as survived {_pct(f['score_untestable_as_survived'])}; default launch alone "
            f"{_pct(f['score_default_launch'])})" for name, f in files.items()) + ".", ""]
    vk = rep.get("variant_kills") or {}
    if any(vk.values()) or meta.get("variants"):
        d = rep["scores_default_launch"]
        L += ["Second chance: survivors of the default launch were run again with the broker launched with "
              "the flags of a documented configuration the default target does not use (mutation/config.py "
              "`VARIANTS`), each under a coverage map of its own; a kill there counts above. "
              f"Killed only so: {vk.get('python', 0)} Python, {vk.get('c', 0)} C. Scores of the default launch "
              f"alone: Python {_pct(d['python'])}, C {_pct(d['c'])}, total {_pct(d['total'])}.", ""]
        for v, x in sorted((meta.get("variants") or {}).items()):
            L.append(f"- `{v}` (`{x.get('args')}`): {x.get('mutants')} survivor(s) run"
                     + (f" (those matching `{x['survivors_matching']}`)" if x.get("survivors_matching") else "")
                     + f", {x.get('run_s', 0) / 60:.1f} min (+ {x.get('coverage_map_s') or 0:.0f} s coverage map)"
                     + (f"; {x['partial']}" if x.get("partial") else ""))
        L.append("")
    if meta.get("carried"):
        L += [f"{meta['carried']} kill(s) carried over from an earlier kit on the same sources (the killing case "
              "is still in the kit; `--no-carry` runs them again).", ""]
    if rep["excluded"]:
        L += ["## Out of scope (not run, not in the score)", "", "| mutants | reason |", "| ---: | --- |"]
        L += [f"| {n} | {why} |" for why, n in sorted(rep["excluded"].items(), key=lambda x: -x[1])]
        L += ["", "Also never generated: calls to the loggers (log text is not on the wire); in log.c the "
              "fault-injection hooks and the arguments of message-formatting calls, in syncer.c the test-only "
              "`nmq_syncer_busy` (mutation/config.py `C_EXCLUDED_FUNCTIONS`).", ""]
    if rep["baseline_failures"]:
        L += ["## Kit cases not used (they fail against the reference broker)", ""]
        L += [f"- `{cid}`: {b['verdict']}: {b['message'].splitlines()[0] if b['message'] else ''}"
              for cid, b in sorted(rep["baseline_failures"].items())]
        L += [""]
    if rep.get("skipped_at_baseline"):
        L += ["## Kit cases that skip against the reference broker (they can kill nothing here)", ""]
        L += [f"- `{cid}`: {msg}" for cid, msg in sorted(rep["skipped_at_baseline"].items())] + [""]
    L += ["## By file and function", "", "| file | function | mutants | killed+timeout | survived | no coverage | "
          "equivalent | score |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for f in rep["functions"]:
        n = sum(f.get(v, 0) for v in ORDER)
        L.append(f"| {f['file']} | `{f['function']}` | {n} | {f.get('killed', 0) + f.get('timeout', 0)} | "
                 f"{f.get('survived', 0)} | {f.get('no-coverage', 0)} | {f.get('equivalent', 0)} | {_pct(f['score'])} |")
    L.append("")
    surv = [r for r in rep["mutants"] if r["verdict"] in ("survived", "no-coverage")]
    L += [f"## Survivors ({len(surv)})", ""]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in surv:
        groups[(r["file"], r["function"])].append(r)
    for (f, fn), rs in sorted(groups.items()):
        L += [f"### {f} `{fn}` ({len(rs)})", ""]
        for r in rs:
            cases = r.get("cases") or []
            where = f"line {r['lines'][0]}" if r["lines"] else ""
            also = f"; also survived {', '.join(r['variants_survived'])}" if r.get("variants_survived") else ""
            L.append(f"- `{r['id']}` {r['verdict']}, {where}, {r.get('description') or ''} "
                     f"({len(cases)} case(s) run{': ' + ', '.join(cases[:4]) + (' …' if len(cases) > 4 else '') if cases else ''}"
                     f"{also})")
            if full:
                L += ["", "  ```diff", *["  " + ln for ln in r.get("diff", "").splitlines()], "  ```", ""]
        L.append("")
    to = [r for r in rep["mutants"] if r["verdict"] == "timeout"]
    if to:
        L += [f"## Timeouts ({len(to)}: counted as killed)", ""]
        L += [f"- `{r['id']}` ({r['function']}): {r.get('detail', '')}" for r in to] + [""]
    eqs = [r for r in rep["mutants"] if "equivalence" in r]
    if eqs:
        L += [f"## Recorded in mutation/equivalent.toml ({len(eqs)})", ""]
        for r in eqs:
            e = r["equivalence"]
            flag = " — **killed now: the entry is wrong, remove it**" if e.get("contradicted") else ""
            L.append(f"- `{r['id']}` ({e['kind']}){flag}: {e['reason']}")
        L.append("")
    if rep["stale_equivalents"]:
        L += [f"## Stale entries of mutation/equivalent.toml ({len(rep['stale_equivalents'])})", ""]
        L += [f"- `{e['id']}` ({e['why']}): {e['reason']}" for e in rep["stale_equivalents"]] + [""]
    bad = [r for r in rep["mutants"] if r["verdict"] in ("build-error", "error", "not-run")]
    if bad:
        L += [f"## Build errors, harness errors, not run ({len(bad)})", ""]
        L += [f"- `{r['id']}` {r['verdict']}: {(r.get('detail') or '').splitlines()[0][:200] if r.get('detail') else ''}"
              for r in bad] + [""]
    return "\n".join(L) + "\n"


def write(rep: dict[str, Any], out_dir: Path = config.REPORT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "mutation.json", out_dir / "mutation.md", out_dir / "summary.md"]
    paths[0].write_text(json.dumps(rep, indent=1, ensure_ascii=False))
    paths[1].write_text(markdown(rep, full=True))
    paths[2].write_text(markdown(rep, full=False))
    return paths
