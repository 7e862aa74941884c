"""``nanomq-bench gate``: fail a CI job on a real regression, and on nothing else.

A gate run measures the target with the gate's profile (:data:`nanomq.bench.measure.GATE`, repeated
rounds), then makes three kinds of checks:

* **regressions** of the gated metrics (:data:`GATED`) against a stored baseline run: the shift
  (current headline / baseline headline, oriented so that > 1 is worse) with a bootstrap confidence
  interval over the rounds of both runs (:func:`nanomq.bench.stats.shift_ci`). A metric is
  *suspect* when the shift is worse than its tolerance **and** the interval excludes "no change";
* **budgets** of spec/budgets.toml (:mod:`nanomq.bench.budgets`, ratios to the calibrations of the
  same run where the budget is a ratio): *suspect* when the interval lies wholly on the wrong side
  of the limit, unless the baseline missed that budget too (a known shortfall, reported, failing only
  with ``strict_budgets``);
* every other figure of the profile is **reported** with its shift and interval, never failed on.

A suspect is not a failure yet: the gate measures again (a fresh pass, the target restarted) and
fails only on a check that is still suspect on the rounds of both passes together. On a shared
machine a neighbour's burst can move one pass; it rarely moves two the same way.

Why this gated metric: on the 2-vCPU shared machine the project is built on, open-loop latency
percentiles and throughputs move 15-25 % between runs minutes apart with the neighbours' load, the
broker's CPU per record about 10 %, and the ratios to the raw calibrations up to 2x (the
calibration moves on its own). The low quantile (p10) of back-to-back 1 KiB publish round trips
moved 5-10 %: it is what a code change on the request path changes more than a neighbour does,
so it is the figure the gate holds to a 25 % slowdown, compared raw with a baseline recorded on
the same kind of machine. docs/gate.md has the measurements and the gate's own error rates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nanomq.bench import budgets as _budgets
from nanomq.bench.budgets import BudgetResult, rounds_of
from nanomq.bench.measure import REFERENCE_PREFIX
from nanomq.bench.results import Run
from nanomq.bench.stats import Interval, finite, headline, mann_whitney, shift_ci

__all__ = ["GATED", "Check", "GateOptions", "GateResult", "Metric", "compare_runs", "decide", "evaluate", "pool", "run_gate"]


@dataclass(frozen=True, slots=True)
class Metric:
    """A quantity of a run compared with the same quantity of another run."""

    id: str
    label: str
    figure: str
    stat: str = "value"
    """"value" (the figure's per-round values), a percentile of each round ("p10"), "extra:NAME\""""
    higher_is_better: bool = False
    unit: str = ""
    calibration: str | None = None
    """with ``normalize``: compared as a ratio to this calibration of the same run"""
    cal_stat: str = "value"
    tolerance: float = 0.12
    """a shift worse than 1 + tolerance (with an interval that excludes 1) is suspect"""

    def samples(self, run: Run, normalize: bool) -> tuple[list[float], list[float] | None]:
        """The per-round values, and the calibration's when normalised. A run with a reference
        target (its figures under ``ref/``) gives each round's figure / the reference's same
        figure of that round instead (paired, no calibration)."""
        num = rounds_of(run, self.figure, self.stat)
        ref = rounds_of(run, REFERENCE_PREFIX + self.figure, self.stat)
        if ref:
            return [a / b if b else float("nan") for a, b in zip(num, ref, strict=False)], None
        if normalize and self.calibration:
            return num, rounds_of(run, self.calibration, self.cal_stat)
        return num, None


GATED = (
    Metric("publish_rtt_1k_p10", "publish round trip p10, 1 KiB acked one by one (back to back), ack=written",
           "acked1024/written/call", "p10", False, "us", calibration="calib/rtt_b2b", cal_stat="p50", tolerance=0.12),
)
"""The metrics a regression fails the gate on (see the module docstring for why this one)."""

CANDIDATES = (
    *GATED,
    Metric("broker_cpu_1k", "broker CPU per record, 1 KiB acked one by one, ack=written",
           "acked1024/written/server_cpu", "value", False, "us/record", calibration="calib/loop_rtt", cal_stat="p10",
           tolerance=0.12),
)
"""Metrics measured for the gate and shown in its history plot; only :data:`GATED` ones fail it."""


def reported_metrics(run: Run) -> list[Metric]:
    """A metric for every figure and calibration of ``run`` (its headline statistic), for the
    report and for ``compare``."""
    out: list[Metric] = []
    for f in [*run.calibrations.values(), *run.figures.values()]:
        stat = "value" if f.stat == "value" or not f.round_percentiles else f.stat
        out.append(Metric(f.id, f.label, f.id, stat, f.higher_is_better, f.unit))
    return out


@dataclass(slots=True)
class Check:
    """One check of a gate pass (or of a comparison)."""

    kind: str
    """"regression", "budget" or "reported\""""
    id: str
    label: str
    status: str
    """regression / reported: "ok", "suspect", "improved", "changed", "not measured";
    budget: "meets", "unclear", "suspect" (misses), "known-short" (missed by the baseline too),
    "not measured\""""
    current: float = float("nan")
    baseline: float = float("nan")
    shift: Interval | None = None
    """current / baseline (worse > 1 once oriented: see ``worse_shift``)"""
    p_value: float = float("nan")
    """one-sided Mann–Whitney p that the current rounds are worse (per-round values)"""
    tolerance: float = 0.0
    unit: str = ""
    higher_is_better: bool = False
    budget: BudgetResult | None = None
    note: str = ""
    final: str = ""
    """after the rerun: "pass", "fail", "unconfirmed" (suspect, not in the rerun), "info\""""

    @property
    def worse_shift(self) -> float:
        """The shift oriented so that > 1 is worse (a throughput that halves gives 2)."""
        if self.shift is None or not math.isfinite(self.shift.estimate) or self.shift.estimate <= 0:
            return float("nan")
        return 1 / self.shift.estimate if self.higher_is_better else self.shift.estimate

    def as_dict(self) -> dict[str, Any]:
        """For JSON."""
        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {"kind": self.kind, "id": self.id, "label": self.label, "status": self.status, "final": self.final,
                "current": num(self.current), "baseline": num(self.baseline),
                "shift": self.shift.as_dict() if self.shift is not None else None,
                "worse_shift": num(self.worse_shift), "p_value": num(self.p_value), "tolerance": self.tolerance,
                "unit": self.unit, "higher_is_better": self.higher_is_better,
                "budget": self.budget.as_dict() if self.budget is not None else None, "note": self.note}


@dataclass(frozen=True, slots=True)
class GateOptions:
    """How the gate decides."""

    confidence: float = 0.95
    tolerance: float | None = None
    """overrides every gated metric's own tolerance"""
    normalize: bool = False
    """compare the gated metrics as ratios to their calibrations of the same run (for a baseline
    recorded on another machine; on one machine the raw figures move less, see docs/gate.md)"""
    confirm: bool = True
    """rerun once to confirm a suspect before failing"""
    strict_budgets: bool = False
    """a budget the baseline missed too fails as well"""
    check_budgets: bool = True
    metrics: tuple[Metric, ...] = GATED


def _compare(m: Metric, cur: Run, base: Run, opts: GateOptions, kind: str) -> Check:
    num_c, den_c = m.samples(cur, opts.normalize)
    num_b, den_b = m.samples(base, opts.normalize)
    tol = opts.tolerance if opts.tolerance is not None and kind == "regression" else m.tolerance
    paired = cur.get(REFERENCE_PREFIX + m.figure) is not None
    label = m.label + (f" / {m.calibration} {m.cal_stat}" if den_c is not None else "") + (
        " / the reference target's, same round" if paired else "")
    c = Check(kind, m.id, label, "not measured", tolerance=tol,
              unit="x" if den_c is not None or paired else m.unit, higher_is_better=m.higher_is_better)
    if paired != (base.get(REFERENCE_PREFIX + m.figure) is not None):
        c.note = ("the current run has a reference target and the baseline has none" if paired else
                  "the baseline was measured against a reference target and this run was not")
        return c
    if not finite(num_c) or not finite(num_b) or (den_c is not None and (not finite(den_c) or not finite(den_b or []))):
        c.note = "missing in " + ("the current run" if not finite(num_c) else "the baseline")
        return c
    c.current, c.baseline = headline(num_c, den_c), headline(num_b, den_b)
    c.shift = shift_ci(num_c, num_b, current_cal=den_c, baseline_cal=den_b, confidence=opts.confidence)
    # Mann–Whitney on the per-round values (for a ratio: each round's figure / its calibration).
    per_c = num_c if den_c is None else [a / b if b else float("nan") for a, b in zip(num_c, den_c, strict=False)]
    per_b = num_b if den_b is None else [a / b if b else float("nan") for a, b in zip(num_b, den_b, strict=False)]
    c.p_value = mann_whitney(per_c, per_b, worse="less" if m.higher_is_better else "greater")
    if not c.shift.known:
        c.note = "no interval (a zero or missing value)"
        return c
    # Oriented interval: worse > 1.
    lo, hi = ((1 / c.shift.high, 1 / c.shift.low) if m.higher_is_better else (c.shift.low, c.shift.high))
    worse = c.worse_shift
    if worse > 1 + tol and lo > 1:
        c.status = "suspect" if kind == "regression" else "changed"
    elif worse < 1 / (1 + tol) and hi < 1:
        c.status = "improved"
    elif kind == "reported" and (lo > 1 or hi < 1) and abs(worse - 1) > tol:
        c.status = "changed"
    else:
        c.status = "ok"
    return c


def evaluate(cur: Run, base: Run | None, budget_table: dict[str, Any] | None, opts: GateOptions) -> list[Check]:
    """Every check of one pass: regressions of the gated metrics (with a baseline), budgets, and
    every other figure reported (with a baseline)."""
    checks: list[Check] = []
    if base is not None:
        for m in opts.metrics:
            checks.append(_compare(m, cur, base, opts, "regression"))
    if budget_table is not None and opts.check_budgets:
        known = {b.key: b.verdict for b in _budgets.evaluate(base, budget_table, confidence=opts.confidence)} \
            if base is not None else {}
        for b in _budgets.evaluate(cur, budget_table, confidence=opts.confidence):
            status = {"meets": "meets", "unclear": "unclear", "not measured": "not measured"}.get(b.verdict, "suspect")
            note = ""
            if status == "suspect" and known.get(b.key) == "misses" and not opts.strict_budgets:
                status, note = "known-short", "the baseline missed it too"
            checks.append(Check("budget", b.key, b.how, status, b.value, float("nan"), b.interval, unit=b.unit,
                                higher_is_better=b.higher_is_better, budget=b, note=note))
    if base is not None:
        gated = {m.figure for m in opts.metrics}
        for m in reported_metrics(cur):
            if m.figure in gated and m.stat == "value" or m.figure.startswith(REFERENCE_PREFIX):
                continue
            checks.append(_compare(m, cur, base, opts, "reported"))
    return checks


def decide(first: list[Check], rerun: list[Check] | None) -> list[Check]:
    """Final verdicts: a regression or budget suspect in the first pass fails only when it is
    suspect in the rerun's checks too (:func:`run_gate` makes those on the rounds of both passes;
    without a rerun: when it is suspect)."""
    again = {(c.kind, c.id): c for c in rerun or []}
    for c in first:
        if c.kind == "reported":
            c.final = "info"
        elif c.status == "suspect":
            if rerun is None:
                c.final = "fail"
            else:
                r = again.get((c.kind, c.id))
                c.final = "fail" if r is not None and r.status == "suspect" else "unconfirmed"
                if r is not None:
                    c.note = (c.note + "; " if c.note else "") + f"rerun: {r.status}" + (
                        f" (shift {r.worse_shift:.3f})" if math.isfinite(r.worse_shift) else "")
        elif c.status == "not measured" and c.kind == "regression":
            c.final = "fail"
            c.note = c.note or "a gated figure was not measured"
        else:
            c.final = "pass"
    return first


@dataclass(slots=True)
class GateResult:
    """What a gate run decided, and the passes it measured."""

    checks: list[Check]
    passes: list[Run]
    baseline: Run | None
    options: GateOptions
    meta: dict[str, Any] = field(default_factory=dict)
    rerun_checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        """The checks that fail the gate."""
        return [c for c in self.checks if c.final == "fail"]

    @property
    def passed(self) -> bool:
        """Whether the gate passes."""
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        """The gate's JSON document (the passes' own results are written beside it)."""
        o = self.options
        return {"schema": "nanomq-gate/1", "passed": self.passed, "meta": self.meta,
                "options": {"confidence": o.confidence, "tolerance": o.tolerance, "normalize": o.normalize,
                            "confirm": o.confirm, "strict_budgets": o.strict_budgets,
                            "gated": [m.id for m in o.metrics]},
                "checks": [c.as_dict() for c in self.checks],
                "rerun_checks": [c.as_dict() for c in self.rerun_checks],
                "passes": [{"load1": p.meta.get("load1"), "seconds": p.meta.get("seconds"),
                            "date_utc": p.meta.get("date_utc")} for p in self.passes]}


def run_gate(measure_pass: Callable[[int], Run], baseline: Run | None, budget_table: dict[str, Any] | None,
             opts: GateOptions, log: Callable[[str], None] = lambda s: None) -> GateResult:
    """Measure a pass (``measure_pass(1)``), check it, and when something is suspect and
    ``opts.confirm``, measure a second pass (``measure_pass(2)``) and decide on both."""
    first_run = measure_pass(1)
    first = evaluate(first_run, baseline, budget_table, opts)
    passes = [first_run]
    suspects = [c for c in first if c.status == "suspect"]
    rerun: list[Check] | None = None
    if suspects and opts.confirm:
        log("suspect: " + ", ".join(f"{c.id} ({c.worse_shift:.3f})" if math.isfinite(c.worse_shift) else c.id
                                    for c in suspects) + "; measuring again to confirm")
        second = measure_pass(2)
        passes.append(second)
        # The rerun's rounds with the first pass's: twice the rounds, from two different minutes.
        rerun = evaluate(pool([first_run, second]), baseline, budget_table, opts)
    checks = decide(first, rerun)
    return GateResult(checks, passes, baseline, opts, rerun_checks=rerun or [])


def compare_runs(a: Run, b: Run, confidence: float = 0.95, normalize: bool = False) -> list[Check]:
    """Every figure both runs have: b's headline against a's, with the shift's interval."""
    opts = GateOptions(confidence=confidence, normalize=normalize)
    ids = {m.id for m in reported_metrics(a)}
    out = []
    for m in reported_metrics(b):
        if m.id in ids:
            c = _compare(m, b, a, opts, "reported")
            c.final = "info"
            out.append(c)
    return out


def pool(runs: list[Run]) -> Run:
    """One run with every round of ``runs`` (baselines recorded at different times, so the
    baseline's medians do not hang on one minute of the neighbours' load). A figure missing in a
    run contributes no rounds from it."""
    import copy

    from nanomq.bench.hist import Histogram

    if not runs:
        raise ValueError("nothing to pool")
    if len(runs) == 1:
        return runs[0]
    out = copy.deepcopy(runs[0])
    out.meta = dict(out.meta)
    out.meta["pooled_from"] = [r.meta.get("date_utc") for r in runs]
    out.meta["rounds"] = sum(int(r.meta.get("rounds") or 0) for r in runs)
    loads = [x for r in runs for x in r.meta.get("load1", {}).get("samples", [])]
    if loads:
        from nanomq.bench.results import median

        out.meta["load1"] = {"samples": loads, "min": min(loads), "max": max(loads), "median": median(loads)}
    for table in ("calibrations", "figures"):
        mine = getattr(out, table)
        for r in runs[1:]:
            for fid, f in getattr(r, table).items():
                g = mine.get(fid)
                if g is None:
                    mine[fid] = copy.deepcopy(f)
                    continue
                g.rounds = list(g.rounds) + list(f.rounds)
                g.round_percentiles = (g.round_percentiles or []) + (f.round_percentiles or []) \
                    if g.round_percentiles is not None or f.round_percentiles is not None else None
                g.load = list(g.load) + list(f.load)
                for k, v in f.extra.items():
                    if isinstance(v, list) and isinstance(g.extra.get(k), list):
                        g.extra[k] = g.extra[k] + v
                if g.hist and f.hist:
                    h = Histogram.decode(g.hist)
                    h.merge(Histogram.decode(f.hist))
                    g.hist = h.encode()
    from nanomq.bench.results import median as _median

    for f in [*out.calibrations.values(), *out.figures.values()]:
        f.value = _median(f.rounds)
    return out
