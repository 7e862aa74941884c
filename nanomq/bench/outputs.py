"""What ``nanomq-bench`` writes: a terminal table, JSON, Markdown (a CI job summary), JUnit XML,
and one static HTML page with its plots embedded (matplotlib PNGs as data: URIs).

Every writer takes what :mod:`nanomq.bench.gate` and :mod:`nanomq.bench.measure` produced; none
measures anything.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nanomq.bench.gate import Check, GateResult
from nanomq.bench.results import Run, format_table

__all__ = ["checks_table", "compare_html", "compare_markdown", "gate_html", "gate_junit", "gate_markdown",
           "run_html", "run_markdown", "run_table", "write_json"]


def _n(v: float | None, digits: int = 3) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _spread(vals: Sequence[float | None]) -> str:
    vs = [v for v in vals if v is not None and math.isfinite(v)]
    if not vs:
        return "—"
    return f"{_n(min(vs))}–{_n(max(vs))}" if len(vs) > 1 else "(1 round)"


def _load(run: Run) -> str:
    ld = run.meta.get("load1", {})
    return f"{ld.get('min')}–{ld.get('max')} (median {ld.get('median')})"


def _shift(c: Check) -> str:
    if c.shift is None or not c.shift.known:
        return "—"
    return f"{c.shift.estimate:.3f} [{c.shift.low:.3f}, {c.shift.high:.3f}]"


def _verdict(c: Check) -> str:
    if c.kind == "reported":
        return c.status
    return f"{c.final.upper()} ({c.status})" if c.final else c.status


# ---------------------------------------------------------------- terminal


def run_table(run: Run) -> str:
    """Every figure of a run: headline, unit, range over rounds, ratio to its calibration, load."""
    rows: list[dict[str, object]] = []
    for f in [*run.calibrations.values(), *run.figures.values()]:
        rows.append({"figure": f.id, "stat": f.stat, "median": _n(f.value), "unit": f.unit,
                     "rounds": _spread(f.rounds),
                     "ratio": f"{_n(f.ratio)} x {f.calibration.split('/')[-1]}" if f.ratio is not None
                     and f.calibration and math.isfinite(f.ratio) else ""})
    head = (f"{run.meta.get('tool', 'run')}: {run.meta.get('rounds')} round(s) against "
            f"{run.meta.get('target', {}).get('address', '?')}, {run.meta.get('seconds', 0):.0f} s, "
            f"1-min load average {_load(run)}")
    lines = [head, format_table(rows)]
    for s in run.skipped:
        lines.append(f"not measured: {s['system']}: {s['reason']}")
    for fl in run.meta.get("failures", []):
        lines.append(f"FAILED {fl['workload']} round {fl['round']}: {fl['error'][:200]}")
    return "\n".join(lines)


def checks_table(checks: Sequence[Check], kinds: Sequence[str] = ("regression", "budget", "reported")) -> str:
    """The checks as an aligned table (current, baseline, shift with its interval, verdict)."""
    rows: list[dict[str, object]] = []
    for c in checks:
        if c.kind not in kinds:
            continue
        if c.kind == "budget":
            b = c.budget
            rows.append({"check": f"budget {c.id}", "current": _n(c.current), "baseline": "",
                         "shift [CI]": "" if b is None or c.shift is None or not c.shift.known else
                         f"[{_n(c.shift.low)}, {_n(c.shift.high)}]",
                         "limit": f"{'>=' if c.higher_is_better else '<='} {b.limit:,g}" if b else "",
                         "verdict": _verdict(c), "note": c.note})
        else:
            rows.append({"check": c.id, "current": _n(c.current), "baseline": _n(c.baseline), "shift [CI]": _shift(c),
                         "limit": f"{1 + c.tolerance:.2f}" if c.kind == "regression" else "",
                         "verdict": _verdict(c), "note": c.note})
    return format_table(rows)


# ---------------------------------------------------------------- JSON


def write_json(doc: dict[str, Any], path: str | Path) -> Path:
    """Write a JSON document (NaN as null)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(_clean(doc), indent=1) + "\n")
    return p


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


# ---------------------------------------------------------------- Markdown


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(s.replace("|", "\\|") for s in r) + " |")
    return "\n".join(out)


def _md_checks(checks: Sequence[Check], kind: str) -> str:
    rows = []
    for c in checks:
        if c.kind != kind:
            continue
        if kind == "budget":
            b = c.budget
            rows.append([f"`{c.id}`", _n(c.current) + (f" {c.unit}" if c.unit else ""),
                         f"{'≥' if c.higher_is_better else '≤'} {b.limit:,g}" if b else "", _verdict(c), c.note or c.label])
        else:
            rows.append([f"`{c.id}`", _n(c.current), _n(c.baseline), _shift(c),
                         f"{1 + c.tolerance:.2f}" if kind == "regression" else "", _verdict(c), c.note])
    if not rows:
        return "(none)"
    if kind == "budget":
        return _md_table(["budget", "measured", "limit", "verdict", "what"], rows)
    return _md_table(["metric", "current", "baseline", "shift [95 % CI]", "limit", "verdict", "note"], rows)


def gate_markdown(res: GateResult) -> str:
    """A CI job summary of a gate run."""
    icon = "✅ passed" if res.passed else "❌ FAILED"
    p0 = res.passes[0]
    lines = [f"## NanoMQ latency gate: {icon}", "",
             f"{len(res.passes)} pass(es) of {p0.meta.get('rounds')} rounds against "
             f"`{p0.meta.get('target', {}).get('address', '?')}`; 1-min load average "
             + "; ".join(_load(p) for p in res.passes)
             + (f"; baseline from {res.baseline.meta.get('date_utc')} (load {_load(res.baseline)})"
                if res.baseline else "; no baseline"), ""]
    if res.failed:
        lines += ["**Failed:** " + ", ".join(f"`{c.id}`" for c in res.failed), ""]
    lines += ["### Regressions (gated metrics vs the baseline)", "", _md_checks(res.checks, "regression"), "",
              "### Budgets (spec/budgets.toml)", "", _md_checks(res.checks, "budget"), "",
              "<details><summary>Every other figure (reported, not gated)</summary>", "",
              _md_checks(res.checks, "reported"), "", "</details>", "",
              "shift = current / baseline with a bootstrap confidence interval over the rounds; a gated metric "
              "fails only when it is worse than its limit with an interval that excludes 1, in the first pass "
              "and in the rerun."]
    return "\n".join(lines) + "\n"


def compare_markdown(checks: Sequence[Check], a: Run, b: Run) -> str:
    """``compare``'s table as Markdown."""
    lines = [f"## NanoMQ bench: {b.meta.get('date_utc')} vs {a.meta.get('date_utc')}", "",
             f"load: {_load(b)} vs {_load(a)}", "", _md_checks(checks, "reported"), ""]
    return "\n".join(lines)


def run_markdown(run: Run) -> str:
    """A run's figures as Markdown."""
    rows = [[f"`{f.id}`", f.stat, _n(f.value), f.unit, _spread(f.rounds),
             f"{_n(f.ratio)} × {f.calibration}" if f.ratio is not None and f.calibration and math.isfinite(f.ratio)
             else ""] for f in [*run.calibrations.values(), *run.figures.values()]]
    return (f"## NanoMQ bench run, {run.meta.get('date_utc')}\n\n{run.meta.get('rounds')} rounds against "
            f"`{run.meta.get('target', {}).get('address')}`; 1-min load average {_load(run)}\n\n"
            + _md_table(["figure", "stat", "median", "unit", "rounds", "ratio"], rows) + "\n")


# ---------------------------------------------------------------- JUnit


def gate_junit(res: GateResult) -> str:
    """JUnit XML: one test case per regression and budget check."""
    suite = ET.Element("testsuite", name="nanomq-gate")
    n = fails = skips = 0
    props = ET.SubElement(suite, "properties")
    for i, p in enumerate(res.passes, 1):
        ET.SubElement(props, "property", name=f"pass{i}.load1", value=json.dumps(p.meta.get("load1")))
    for c in res.checks:
        if c.kind == "reported":
            continue
        n += 1
        tc = ET.SubElement(suite, "testcase", classname=f"nanomq-gate.{c.kind}", name=c.id)
        text = (f"current {_n(c.current)} baseline {_n(c.baseline)} shift {_shift(c)} status {c.status}"
                f"{'; ' + c.note if c.note else ''}")
        if c.final == "fail":
            fails += 1
            ET.SubElement(tc, "failure", message=f"{c.id}: {c.status}").text = text
        elif c.status == "not measured":
            skips += 1
            ET.SubElement(tc, "skipped", message="not measured").text = text
        else:
            ET.SubElement(tc, "system-out").text = text
    suite.set("tests", str(n))
    suite.set("failures", str(fails))
    suite.set("skipped", str(skips))
    suite.set("errors", "0")
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


# ---------------------------------------------------------------- HTML


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(runs: list[tuple[str, Run]], seq: list[tuple[str, Run]], metrics: Sequence[Any]) -> list[tuple[str, str]]:
    """(title, data URI) of: latency percentile spectra and throughput bars of ``runs``, and the
    metrics' history over ``seq`` (oldest first)."""
    from nanomq.bench.hist import spectrum_points
    from nanomq.bench.plots import _nines, _plt

    plt = _plt()
    out: list[tuple[str, str]] = []
    lat_ids = [fid for fid, f in runs[0][1].figures.items() if f.unit == "us" and f.hist
               and (fid.endswith("/latency") or fid.endswith("/call"))]
    if lat_ids:
        cols = min(2, len(lat_ids))
        rows = math.ceil(len(lat_ids) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
        for ax, fid in zip([a for r in axes for a in r], lat_ids, strict=False):
            for name, run in runs:
                f = run.get(fid)
                h = f.histogram() if f is not None else None
                if h is None or not h.count:
                    continue
                xs, ys = spectrum_points(h)
                ax.plot(xs, [y / 1000 for y in ys], label=name)
            _nines(ax)
            ax.set_ylabel("µs")
            ax.set_title(fid, fontsize=8)
            ax.legend(fontsize=7)
        for ax in [a for r in axes for a in r][len(lat_ids):]:
            ax.set_visible(False)
        fig.tight_layout()
        out.append(("Latency percentile spectra (all rounds merged)", _png(fig)))
    rate_ids = [fid for fid, f in runs[0][1].figures.items() if f.unit == "records/s"]
    if rate_ids:
        fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rate_ids) * len(runs)), 4.2))
        width = 0.8 / len(runs)
        for j, (name, run) in enumerate(runs):
            vals, lo, hi = [], [], []
            for fid in rate_ids:
                f = run.get(fid)
                v = f.value if f is not None and math.isfinite(f.value) else 0.0
                rs = [r for r in (f.rounds if f else []) if r is not None and math.isfinite(r)]
                vals.append(v)
                lo.append(v - min(rs, default=v))
                hi.append(max(rs, default=v) - v)
            ax.bar([i + j * width for i in range(len(rate_ids))], vals, width, yerr=[lo, hi], capsize=3, label=name)
        ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(rate_ids))])
        ax.set_xticklabels(rate_ids, rotation=20, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("records/s (median, min–max of rounds)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out.append(("Throughput", _png(fig)))
    if len(seq) >= 2 and metrics:
        fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.6 * len(metrics)), squeeze=False)
        for ax, m in zip([r[0] for r in axes], metrics, strict=True):
            from nanomq.bench.stats import headline

            xs, ys, labels = [], [], []
            for i, (name, run) in enumerate(seq):
                num, den = m.samples(run, False)
                v = headline(num, den)
                if math.isfinite(v):
                    xs.append(i)
                    ys.append(v)
                    labels.append(name)
            ax.plot(xs, ys, marker="o")
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=15, ha="right", fontsize=7)
            ax.set_title(m.label, fontsize=8)
            ax.set_ylabel(m.unit)
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        out.append(("History of the gated metrics (the baselines passed in, then this run)", _png(fig)))
    return out


def _page(title: str, intro: str, sections: list[str], plots: list[tuple[str, str]]) -> str:
    imgs = "".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='{uri}'>" for t, uri in plots)
    body = "".join(sections)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:left}"
            ".fail{background:#fdd}.suspect{background:#ffe}.pass{background:#efe}img{max-width:100%}"
            "</style></head><body><h1>" + html.escape(title) + "</h1><p>" + html.escape(intro) + "</p>"
            + body + imgs + "</body></html>\n")


def _html_checks(checks: Sequence[Check], kind: str) -> str:
    rows = []
    for c in checks:
        if c.kind != kind:
            continue
        cls = "fail" if c.final == "fail" else ("suspect" if c.status in ("suspect", "unconfirmed") else "pass")
        cells = [c.id, _n(c.current), _n(c.baseline), _shift(c), _verdict(c), c.note]
        rows.append(f"<tr class='{cls}'>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells) + "</tr>")
    if not rows:
        return "<p>(none)</p>"
    return ("<table><tr><th>check</th><th>current</th><th>baseline</th><th>shift [CI]</th><th>verdict</th>"
            "<th>note</th></tr>" + "".join(rows) + "</table>")


def gate_html(res: GateResult, history: list[tuple[str, Run]]) -> str:
    """The gate's static page: verdicts, then the plots (current vs baseline, history)."""
    runs = [(f"pass {i}", p) for i, p in enumerate(res.passes, 1)]
    if res.baseline is not None:
        runs.append(("baseline", res.baseline))
    from nanomq.bench.gate import CANDIDATES

    seq = [*history, *([("baseline", res.baseline)] if res.baseline is not None else []),
           *[(f"pass {i}", p) for i, p in enumerate(res.passes, 1)]]
    plots = _plots(runs, seq, CANDIDATES)
    intro = (f"{'PASSED' if res.passed else 'FAILED'}; load " + "; ".join(_load(p) for p in res.passes)
             + (f"; baseline {res.baseline.meta.get('date_utc')}" if res.baseline else ""))
    secs = ["<h2>Regressions</h2>" + _html_checks(res.checks, "regression"),
            "<h2>Budgets</h2>" + _html_checks(res.checks, "budget"),
            "<h2>Reported figures</h2>" + _html_checks(res.checks, "reported")]
    return _page("NanoMQ latency gate", intro, secs, plots)


def compare_html(checks: Sequence[Check], a: Run, b: Run, names: tuple[str, str]) -> str:
    """``compare``'s page."""
    from nanomq.bench.gate import CANDIDATES

    plots = _plots([(names[1], b), (names[0], a)], [(names[0], a), (names[1], b)], CANDIDATES)
    return _page("NanoMQ bench comparison", f"{names[1]} vs {names[0]}", [_html_checks(checks, "reported")], plots)


def run_html(run: Run, name: str) -> str:
    """A run's page: its figures and plots."""
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in (f.id, f.stat, _n(f.value), f.unit,
                                                                             _spread(f.rounds))) + "</tr>"
                   for f in [*run.calibrations.values(), *run.figures.values()])
    table = ("<table><tr><th>figure</th><th>stat</th><th>median</th><th>unit</th><th>rounds</th></tr>" + rows
             + "</table>")
    return _page("NanoMQ bench run", f"{run.meta.get('date_utc')}, load {_load(run)}", [table],
                 _plots([(name, run)], [], []))

