"""Reports of a kit run: index.json, junit.xml and one static index.html (no server, no external
assets: the filter is inline JavaScript)."""

from __future__ import annotations

import html
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from conformance.registry import Case
from conformance.rules import Rule
from conformance.runner import CaseResult, RunResult
from conformance.verdicts import RULE_VERDICTS, case_ran, rule_verdicts

__all__ = ["summarize", "write_reports", "summary_line"]

_BUCKETS = (("failed", ("FAILED", "NON-STRICT")), ("unimplemented", ("UNIMPLEMENTED",)),
            ("informational", ("INFORMATIONAL",)), ("not_run", ("NOT-RUN",)), ("untestable", ("UNTESTABLE",)),
            ("untested", ("UNTESTED",)))
"""Every rule verdict but OK falls in exactly one bucket, so ok + the buckets = total."""


def summarize(run: RunResult, rules: dict[str, Rule], table: dict[str, dict[str, Any]] | None = None,
              cases: list[Case] | None = None) -> dict[str, Any]:
    """The numbers every report shows: case verdict counts, and per rule level (MUST, SHOULD, and
    MAY when the spec has any) how many rules are OK out of all of them and which are in each other
    verdict. ``budgets_failed`` lists the spec/budgets.toml figures a budget case failed."""
    table = rule_verdicts(run, rules, cases) if table is None else table
    out: dict[str, Any] = {"verdicts": dict(Counter(r.verdict for r in run.results))}
    for level in ("MUST", "SHOULD", "MAY"):
        mine = {k: v for k, v in table.items() if v["level"] == level}
        if level == "MAY" and not mine:
            continue
        entry: dict[str, Any] = {"ok": sum(1 for v in mine.values() if v["verdict"] == "OK"), "total": len(mine)}
        for name, verdicts in _BUCKETS:
            entry[name] = sorted(k for k, v in mine.items() if v["verdict"] in verdicts)
        out[level] = entry
    unknown = sorted(k for k, v in table.items() if v["level"] == "?")
    if unknown:
        out["undefined_rules"] = unknown
    out["budgets_failed"] = sorted({rid.removeprefix("BUDGET:") for r in run.results if r.verdict == "FAILED"
                                    for rid in r.failed_rules if rid.startswith("BUDGET:")})
    return out


def summary_line(s: dict[str, Any]) -> str:
    """``MUST ok/total (failed n, unimplemented n, not run n, untestable n, untested n), SHOULD …``
    plus the verdict counts of the cases."""
    parts = []
    for level in ("MUST", "SHOULD", "MAY"):
        if level not in s:
            continue
        e = s[level]
        rest = [f"failed {len(e['failed'])}", f"unimplemented {len(e['unimplemented'])}"]
        if e["informational"]:
            rest.append(f"informational {len(e['informational'])}")
        rest += [f"not run {len(e['not_run'])}", f"untestable {len(e['untestable'])}", f"untested {len(e['untested'])}"]
        parts.append(f"{level} {e['ok']}/{e['total']} ({', '.join(rest)})")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(s["verdicts"].items()))
    line = f"{', '.join(parts)}; cases: {counts or 'none'}"
    if s.get("budgets_failed"):
        line += f"; over budget: {', '.join(s['budgets_failed'])}"
    return line


def write_reports(run: RunResult, rules: dict[str, Rule], out_dir: Path, meta: dict[str, Any],
                  cases: list[Case] | None = None) -> dict[str, Any]:
    """Write the three reports into ``out_dir``; returns the index as a dict. ``cases`` is every
    case that exists (default: every registered one), so deselected rules are NOT-RUN."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = rule_verdicts(run, rules, cases)
    summary = summarize(run, rules, table)
    index = {
        "kit": "nanomq-conformance",
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": run.seed,
        "duration_s": round(run.duration_s, 3),
        **meta,
        "summary": summary,
        "summary_line": summary_line(summary),
        "cases": [
            {"id": r.case.id, "title": r.case.title, "layer": r.case.layer, "rules": list(r.case.rules),
             "verdict": r.verdict, "message": r.message, "failed_rules": list(r.failed_rules), "notes": r.notes,
             "verified_rules": list(r.verified_rules), "duration_s": round(r.duration_s, 3),
             "randomized": r.case.randomized}
            for r in run.results
        ],
        "rules": table,
    }
    (out_dir / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    _junit(run, out_dir / "junit.xml")
    (out_dir / "index.html").write_text(_html(index))
    return index


def _junit_kind(r: CaseResult) -> str:
    """failure, skipped or pass: what a JUnit consumer should see for this result."""
    if r.verdict == "FAILED":
        return "failure"
    if r.verdict == "UNIMPLEMENTED" or not case_ran(r):
        return "skipped"
    return "pass"  # OK, NON-STRICT (a SHOULD, reported in system-out), a budget measurement


def _junit(run: RunResult, path: Path) -> None:
    """One testsuite per layer. Each suite's tests/failures/skipped/errors attributes are counted
    from the elements written, so they always agree with them."""
    suites = ET.Element("testsuites", name="nanomq-conformance")
    by_layer: dict[str, list[CaseResult]] = {}
    for r in run.results:
        by_layer.setdefault(r.case.layer, []).append(r)
    totals = Counter[str]()
    for layer, results in by_layer.items():
        s = ET.SubElement(suites, "testsuite", name=layer)
        for r in results:
            tc = ET.SubElement(s, "testcase", classname=f"conformance.{layer}", name=r.case.id,
                               time=f"{r.duration_s:.3f}")
            kind = _junit_kind(r)
            out = []
            if kind == "failure":
                ET.SubElement(tc, "failure", message=r.message.splitlines()[0] if r.message else "failed").text = (
                    f"rules: {', '.join(r.failed_rules)}\nseed: {run.seed}\n{r.message}")
            elif kind == "skipped":
                ET.SubElement(tc, "skipped", message=f"{r.verdict}: {r.message}")
            elif r.verdict == "NON-STRICT":
                out.append(f"NON-STRICT (SHOULD/MAY rules {', '.join(r.failed_rules)}): {r.message}")
            out += r.notes
            if out:
                ET.SubElement(tc, "system-out").text = "\n".join(out)
        counts = {"tests": len(s.findall("testcase")), "failures": len(s.findall("testcase/failure")),
                  "errors": len(s.findall("testcase/error")), "skipped": len(s.findall("testcase/skipped"))}
        for k, v in counts.items():
            s.set(k, str(v))
            totals[k] += v
        s.set("time", f"{sum(r.duration_s for r in results):.3f}")
    for k in ("tests", "failures", "errors", "skipped"):
        suites.set(k, str(totals[k]))
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


_COLORS = {"OK": "#2e7d32", "FAILED": "#c62828", "NON-STRICT": "#ef6c00", "UNIMPLEMENTED": "#6a1b9a",
           "INFORMATIONAL": "#1565c0", "NOT-RUN": "#8d6e63", "UNTESTABLE": "#455a64", "UNTESTED": "#9e9e9e"}
_SEVERITY = {"FAILED": 0, "NON-STRICT": 1}


def _badge(v: str) -> str:
    return f'<span class="b" style="background:{_COLORS.get(v, "#555")}">{html.escape(v)}</span>'


def _case_level(rule_ids: list[str], rules: dict[str, Any]) -> str:
    levels = {rules[r]["level"] for r in rule_ids if r in rules}
    for level in ("MUST", "SHOULD", "MAY"):
        if level in levels:
            return level
    return "-"


_SCRIPT = """
(function () {
  var f = {verdict: document.getElementById('fv'), level: document.getElementById('fl'),
           layer: document.getElementById('fy'), text: document.getElementById('ft')};
  function apply() {
    var v = f.verdict.value, l = f.level.value, y = f.layer.value, t = f.text.value.toLowerCase();
    var rows = document.querySelectorAll('tr[data-verdict]');
    var shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      var ok = (!v || r.dataset.verdict === v) && (!l || r.dataset.level === l)
        && (!y || (' ' + r.dataset.layer + ' ').indexOf(' ' + y + ' ') >= 0)
        && (!t || r.textContent.toLowerCase().indexOf(t) >= 0);
      r.style.display = ok ? '' : 'none';
      if (ok) shown++;
    }
    document.getElementById('fn').textContent = shown + ' of ' + rows.length + ' rows';
  }
  for (var k in f) { f[k].addEventListener('input', apply); f[k].addEventListener('change', apply); }
  apply();
})();
"""


def _n(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _options(values: list[str], label: str) -> str:
    return f'<option value="">{label}: all</option>' + "".join(
        f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values)


def _html(index: dict[str, Any]) -> str:
    e = html.escape
    rules: dict[str, Any] = index["rules"]
    cases: list[dict[str, Any]] = index["cases"]

    def rule_row(rid: str, r: dict[str, Any]) -> str:
        links = " ".join(f'<a href="#case-{e(c)}">{e(c)}</a>&nbsp;{_badge(str(v))}'
                         for c, v in r["case_verdicts"].items()) or "—"
        # the cases column already says what verified an OK rule
        why = "" if r["verdict"] == "OK" else f"<div class='why'>{e(str(r['reason']))}</div>"
        return (f"<tr data-verdict='{e(str(r['verdict']))}' data-level='{e(str(r['level']))}' "
                f"data-layer='{e(' '.join(r['layers']))}'><td id='rule-{e(rid)}'>{e(rid)}</td>"
                f"<td>{e(str(r['level']))}</td><td>{_badge(str(r['verdict']))}</td><td>{e(str(r['text']))}"
                f"{why}</td><td class='c'>{links}</td></tr>")

    def case_row(c: dict[str, Any], anchor: bool) -> str:
        detail = e(c["message"]) + ("<br>" + "<br>".join(e(n) for n in c["notes"]) if c["notes"] else "")
        named = list(dict.fromkeys([*c["rules"], *c["failed_rules"]]))
        rule_links = ", ".join(
            (f"<a href='#rule-{e(r)}'>{'<b>' + e(r) + '</b>' if r in c['failed_rules'] else e(r)}</a>"
             if r in rules else f"<b>{e(r)}</b>") for r in named)
        ident = f" id='case-{e(c['id'])}'" if anchor else ""
        return (f"<tr{ident} data-verdict='{e(c['verdict'])}' data-level='{_case_level(c['rules'], rules)}' "
                f"data-layer='{e(c['layer'])}'><td>{e(c['id'])}</td><td>{e(c['layer'])}</td>"
                f"<td>{_badge(c['verdict'])}</td><td>{e(c['title'])}</td><td>{rule_links}</td>"
                f"<td>{c['duration_s']:.2f}s</td><td><pre>{detail}</pre></td></tr>")

    failed_rules = sorted(((rid, r) for rid, r in rules.items() if r["verdict"] in _SEVERITY),
                          key=lambda x: _SEVERITY[str(x[1]["verdict"])])
    failed_cases = sorted((c for c in cases if c["verdict"] in _SEVERITY), key=lambda c: _SEVERITY[c["verdict"]])
    rule_head = "<tr><th>rule</th><th>level</th><th>verdict</th><th>text (and why)</th><th>cases</th></tr>"
    case_head = ("<tr><th>case</th><th>layer</th><th>verdict</th><th>checks</th><th>rules (failed in bold)</th>"
                 "<th>time</th><th>details</th></tr>")
    if failed_rules or failed_cases:
        top = (f"<h2 class='bad'>Failed: {_n(len(failed_rules), 'rule')}, {_n(len(failed_cases), 'case')}</h2>"
               + (f"<table>{rule_head}{''.join(rule_row(rid, r) for rid, r in failed_rules)}</table>"
                  if failed_rules else "")
               + (f"<table>{case_head}{''.join(case_row(c, False) for c in failed_cases)}</table>"
                  if failed_cases else ""))
    else:
        top = "<h2 class='good'>No rule and no case failed.</h2>"
    verdicts = list(RULE_VERDICTS)  # the case verdicts are among them
    levels = sorted({str(r["level"]) for r in rules.values()}, key=lambda x: ("MUST", "SHOULD", "MAY").index(x)
                    if x in ("MUST", "SHOULD", "MAY") else 9)
    layers = list(dict.fromkeys([*(c["layer"] for c in cases), *(y for r in rules.values() for y in r["layers"])]))
    server = index.get("server", {})
    target = index.get("target", {})
    log = f"<br>Target log: {e(str(target['log']))}" if target.get("log") else ""
    left = ""
    if target.get("created_topics"):
        left = (f"<p>{len(target['created_topics'])} topics the kit created remain on the target (protocol v1 "
                "cannot delete a topic): " + e(", ".join(target["created_topics"])) + "</p>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>NanoMQ conformance report</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;width:100%;margin:1em 0}}
td,th{{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}}th{{background:#f4f4f4}}
.b{{color:#fff;border-radius:3px;padding:1px 6px;font-size:12px;white-space:nowrap}}pre{{margin:0;white-space:pre-wrap;
font-size:12px}}.c{{font-size:12px}}.why{{color:#555;font-size:12px;margin-top:2px}}.bad{{color:#c62828}}
.good{{color:#2e7d32}}#filter{{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #ddd}}
#filter select,#filter input{{margin-right:6px}}</style></head><body>
<h1>NanoMQ conformance report</h1>
<p><b>{e(index['summary_line'])}</b></p>
{top}
<p>Target: {e(json.dumps({k: v for k, v in target.items() if k != 'created_topics'}))}<br>Server: {e(json.dumps(server))}
<br>Seed {index['seed']} · {index['duration_s']} s · generated {e(index['generated'])}{log}</p>{left}
<div id="filter">Filter: <select id="fv">{_options(verdicts, 'verdict')}</select>
<select id="fl">{_options(levels, 'level')}</select><select id="fy">{_options(layers, 'layer')}</select>
<input id="ft" type="search" placeholder="text (rule, case, message)" size="32"> <span id="fn"></span></div>
<h2>Rules × verdicts</h2><table>{rule_head}
{''.join(rule_row(rid, r) for rid, r in rules.items())}</table>
<h2>Cases</h2><table>{case_head}{''.join(case_row(c, True) for c in cases)}</table>
<script>{_SCRIPT}</script></body></html>
"""
