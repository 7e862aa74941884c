"""Reports of a kit run: index.json, junit.xml and one static index.html (no server needed)."""

from __future__ import annotations

import html
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from conformance.rules import Rule
from conformance.runner import RunResult, rule_verdicts

__all__ = ["summarize", "write_reports", "summary_line"]


def summarize(run: RunResult, rules: dict[str, Rule]) -> dict[str, Any]:
    """The numbers every report shows."""
    table = rule_verdicts(run, rules)
    out: dict[str, Any] = {"verdicts": dict(Counter(r.verdict for r in run.results))}
    for level in ("MUST", "SHOULD"):
        mine = {k: v for k, v in table.items() if v["level"] == level}
        out[level] = {
            "ok": sum(1 for v in mine.values() if v["verdict"] == "OK"),
            "total": len(mine),
            "failed": sorted(k for k, v in mine.items() if v["verdict"] in ("FAILED", "NON-STRICT")),
            "unimplemented": sorted(k for k, v in mine.items() if v["verdict"] == "UNIMPLEMENTED"),
            "untested": sorted(k for k, v in mine.items() if v["verdict"] in ("UNTESTED", "INFORMATIONAL")),
        }
    return out


def summary_line(s: dict[str, Any]) -> str:
    """``MUST x/y, SHOULD x/y`` plus the verdict counts."""
    counts = ", ".join(f"{k} {v}" for k, v in sorted(s["verdicts"].items()))
    return (f"MUST {s['MUST']['ok']}/{s['MUST']['total']}, SHOULD {s['SHOULD']['ok']}/{s['SHOULD']['total']} "
            f"(cases: {counts})")


def write_reports(run: RunResult, rules: dict[str, Rule], out_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write the three reports into ``out_dir``; returns the index as a dict."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = rule_verdicts(run, rules)
    summary = summarize(run, rules)
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
             "duration_s": round(r.duration_s, 3), "randomized": r.case.randomized}
            for r in run.results
        ],
        "rules": table,
    }
    (out_dir / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    _junit(run, out_dir / "junit.xml")
    (out_dir / "index.html").write_text(_html(index))
    return index


def _junit(run: RunResult, path: Path) -> None:
    suites = ET.Element("testsuites", name="nanomq-conformance")
    by_layer: dict[str, list[Any]] = {}
    for r in run.results:
        by_layer.setdefault(r.case.layer, []).append(r)
    for layer, results in by_layer.items():
        s = ET.SubElement(suites, "testsuite", name=layer, tests=str(len(results)),
                          failures=str(sum(r.verdict == "FAILED" for r in results)),
                          skipped=str(sum(r.verdict in ("UNIMPLEMENTED", "INFORMATIONAL") for r in results)))
        for r in results:
            tc = ET.SubElement(s, "testcase", classname=f"conformance.{layer}", name=r.case.id,
                               time=f"{r.duration_s:.3f}")
            if r.verdict == "FAILED":
                ET.SubElement(tc, "failure", message=r.message.splitlines()[0] if r.message else "failed").text = (
                    f"rules: {', '.join(r.failed_rules)}\nseed: {run.seed}\n{r.message}")
            elif r.verdict == "NON-STRICT":
                ET.SubElement(tc, "system-out").text = f"NON-STRICT (SHOULD): {r.message}"
            elif r.verdict in ("UNIMPLEMENTED", "INFORMATIONAL") and r.case.layer != "budgets":
                ET.SubElement(tc, "skipped", message=f"{r.verdict}: {r.message}")
            if r.notes:
                ET.SubElement(tc, "system-out").text = "\n".join(r.notes)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


_COLORS = {"OK": "#2e7d32", "FAILED": "#c62828", "NON-STRICT": "#ef6c00", "UNIMPLEMENTED": "#6a1b9a",
           "INFORMATIONAL": "#1565c0", "UNTESTED": "#757575"}


def _badge(v: str) -> str:
    return f'<span class="b" style="background:{_COLORS.get(v, "#555")}">{html.escape(v)}</span>'


def _html(index: dict[str, Any]) -> str:
    e = html.escape
    rows = []
    for rid, r in index["rules"].items():
        cases = " ".join(f'<a href="#{e(c)}">{e(c)}</a>' for c in r["cases"]) or "—"
        rows.append(f"<tr><td>{e(rid)}</td><td>{e(str(r['level']))}</td><td>{_badge(str(r['verdict']))}</td>"
                    f"<td>{e(str(r['text']))}</td><td class='c'>{cases}</td></tr>")
    crow = []
    for c in index["cases"]:
        detail = e(c["message"]) + ("<br>" + "<br>".join(e(n) for n in c["notes"]) if c["notes"] else "")
        crow.append(f"<tr id='{e(c['id'])}'><td>{e(c['id'])}</td><td>{e(c['layer'])}</td><td>{_badge(c['verdict'])}</td>"
                    f"<td>{e(c['title'])}</td><td>{e(', '.join(c['rules']))}</td><td>{c['duration_s']:.2f}s</td>"
                    f"<td><pre>{detail}</pre></td></tr>")
    server = index.get("server", {})
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>NanoMQ conformance report</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;width:100%;margin:1em 0}}
td,th{{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}}th{{background:#f4f4f4}}
.b{{color:#fff;border-radius:3px;padding:1px 6px;font-size:12px;white-space:nowrap}}pre{{margin:0;white-space:pre-wrap;
font-size:12px}}.c{{font-size:12px}}</style></head><body>
<h1>NanoMQ conformance report</h1>
<p><b>{e(index['summary_line'])}</b></p>
<p>Target: {e(json.dumps(index.get('target', {})))}<br>Server: {e(json.dumps(server))}<br>
Seed {index['seed']} · {index['duration_s']} s · generated {e(index['generated'])}</p>
<h2>Rules × verdicts</h2><table><tr><th>rule</th><th>level</th><th>verdict</th><th>text</th><th>cases</th></tr>
{''.join(rows)}</table>
<h2>Cases</h2><table><tr><th>case</th><th>layer</th><th>verdict</th><th>checks</th><th>rules</th><th>time</th>
<th>details</th></tr>{''.join(crow)}</table></body></html>
"""
