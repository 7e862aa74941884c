"""spec/budgets.toml's [broker] budgets, measured and judged one way for every tool that checks them.

The CI gate (``nanomq-bench gate``) and the conformance kit's budget layer
(``conformance/cases_budgets.py``) both measure with :func:`nanomq.bench.measure.measure` and judge
with :func:`evaluate`, so the two cannot disagree about what a budget means or how it is computed;
they can only see different machines.

Each :class:`Budget` names the figure of a run it is read from, the statistic of each round, and for
a ratio budget the calibration of the same run it is divided by. A budget's value is the median of
the rounds (for a ratio: the median of the figure's rounds over the median of the calibration's
rounds) with a bootstrap confidence interval over the rounds (:mod:`nanomq.bench.stats`), and its
verdict is ``meets`` (the whole interval on the good side of the limit), ``misses`` (the whole
interval on the bad side) or ``unclear``. A budget whose figure the run lacks is ``not measured``.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanomq.bench.measure import Profile, Work
from nanomq.bench.results import Run
from nanomq.bench.stats import Interval, finite, headline

__all__ = ["BROKER", "PROFILE", "Budget", "BudgetResult", "evaluate", "load_budgets", "rounds_of"]


def rounds_of(run: Run, fid: str, stat: str) -> list[float]:
    """The per-round values of figure ``fid``: its ``rounds`` ("value"), a percentile of each round
    ("p50", "p10" ...), or a per-round list kept in its extra ("extra:publish_rate"); [] when the run
    lacks the figure. NaN for a round that failed."""
    f = run.get(fid)
    if f is None:
        return []
    if stat == "value":
        return [float("nan") if v is None else float(v) for v in f.rounds]
    if stat.startswith("extra:"):
        vals = f.extra.get(stat[6:], [])
        return [float("nan") if v is None else float(v) for v in vals]
    return [float("nan") if (v := rp.get(stat)) is None else float(v) for rp in f.round_percentiles or []]


@dataclass(frozen=True, slots=True)
class Budget:
    """How one key of spec/budgets.toml is read from a run."""

    key: str
    section: str
    figure: str
    stat: str
    higher_is_better: bool
    unit: str
    how: str
    """what is measured, in words (printed with the verdict)"""
    calibration: str | None = None
    cal_stat: str = "value"

    def samples(self, run: Run) -> tuple[list[float], list[float] | None]:
        """The figure's rounds and (for a ratio budget) the calibration's rounds."""
        num = rounds_of(run, self.figure, self.stat)
        den = rounds_of(run, self.calibration, self.cal_stat) if self.calibration else None
        return num, den


BROKER = (
    Budget("e2e_p50_written_ratio_vs_raw_rtt", "broker", "e2e1000/written/latency", "p50", False, "x",
           "e2e one-way p50, 64 B, ack=written, open loop at 1,000/s / raw socket RTT p50 paced at 1,000/s",
           calibration="calib/rtt_paced", cal_stat="p50"),
    Budget("publish_batch256_64b_records_per_s", "broker", "batch64/written/rate", "extra:publish_rate", True,
           "records/s", "publish_batch of 256 x 64 B, ack=written, one batch in flight, a subscriber running"),
    Budget("publish_batch256_1k_records_per_s", "broker", "batch1024/written/rate", "extra:publish_rate", True,
           "records/s", "publish_batch of 256 x 1 KiB, ack=written, one batch in flight, a subscriber running"),
    Budget("publish_batch256_1k_durable_records_per_s", "broker", "batch1024/durable/rate", "extra:publish_rate",
           True, "records/s", "publish_batch of 256 x 1 KiB, ack=durable, one batch in flight, a subscriber running"),
    Budget("idle_rss_mb", "broker", "broker/rss", "value", False, "MB", "the broker's VmRSS after the rounds"),
    Budget("idle_cpu_pct", "broker", "broker/idle_cpu", "value", False, "%", "the broker's CPU at idle after the rounds"),
)
"""Every [broker] budget a run of the bench can measure (the ``ref_*`` peer figures and
``peer_ratio_aim`` are not budgets of ours)."""

PROFILE = Profile(works=(
    Work("e2e", 64, "written", rate=1000, seconds=2.0),
    Work("batch", 64, "written", seconds=0.5), Work("batch", 1024, "written", seconds=0.5),
    Work("batch", 1024, "durable", seconds=0.5),
), rounds=3, rtt_seconds=1.0, rtt_back_to_back=2_000, fsync_seconds=0.2, idle_seconds=3.0)
"""What the conformance kit's budget layer measures: the workloads behind :data:`BROKER`."""


@dataclass(slots=True)
class BudgetResult:
    """A budget judged on one run."""

    key: str
    section: str
    limit: float
    higher_is_better: bool
    unit: str
    how: str
    value: float
    interval: Interval | None
    verdict: str
    """"meets", "misses", "unclear" or "not measured\""""
    rounds: int

    def text(self) -> str:
        """One line for a report."""
        op = ">=" if self.higher_is_better else "<="
        if self.verdict == "not measured":
            return f"{self.key}: not measured (budget {op} {self.limit:,g} {self.unit})"
        ci = ""
        if self.interval is not None and self.interval.known and self.interval.low != self.interval.high:
            ci = f" [{self.interval.low:,.3g}, {self.interval.high:,.3g}] ({self.interval.confidence:.0%} CI)"
        return (f"{self.key} = {self.value:,.3g}{ci} {self.unit}, budget {op} {self.limit:,g}: {self.verdict} "
                f"({self.how}; median of {self.rounds} round(s))")

    def as_dict(self) -> dict[str, Any]:
        """For JSON."""
        return {"key": self.key, "section": self.section, "limit": self.limit,
                "higher_is_better": self.higher_is_better, "unit": self.unit, "how": self.how,
                "value": self.value if math.isfinite(self.value) else None,
                "interval": self.interval.as_dict() if self.interval is not None else None,
                "verdict": self.verdict, "rounds": self.rounds}


def load_budgets(path: str | Path | None = None) -> dict[str, Any]:
    """spec/budgets.toml as a dict (the repository's, or the copy the kit ships when installed)."""
    if path is None:
        repo = Path(__file__).resolve().parents[2] / "spec" / "budgets.toml"
        if not repo.exists():  # an installed package: the copy the kit ships
            import importlib

            with importlib.import_module("conformance.rules").spec_file("budgets.toml").open("rb") as f:
                return dict(tomllib.load(f))
        path = repo
    with open(path, "rb") as f:
        return tomllib.load(f)


def _one_sample_ci(num: list[float], den: list[float] | None, confidence: float) -> Interval:
    """The headline with a bootstrap interval over the rounds (one sample, or figure / calibration)."""
    from nanomq.bench.stats import shift_ci

    # shift_ci divides two headlines; against a constant 1 it is the headline's own interval.
    if den is None:
        return shift_ci(num, [1.0], confidence=confidence)
    return shift_ci(num, [1.0], current_cal=den, baseline_cal=[1.0], confidence=confidence)


def evaluate(run: Run, budgets: dict[str, Any], *, which: tuple[Budget, ...] = BROKER,
             confidence: float = 0.95) -> list[BudgetResult]:
    """Judge every budget of ``which`` that ``budgets`` (spec/budgets.toml) sets, on ``run``."""
    out: list[BudgetResult] = []
    for b in which:
        limit = budgets.get(b.section, {}).get(b.key)
        if limit is None:
            continue
        num, den = b.samples(run)
        n = len(finite(num))
        if not n or (den is not None and not finite(den)):
            out.append(BudgetResult(b.key, b.section, float(limit), b.higher_is_better, b.unit, b.how,
                                    float("nan"), None, "not measured", n))
            continue
        value = headline(num, den)
        ci = _one_sample_ci(num, den, confidence)
        if not ci.known:
            verdict = "not measured"
        elif b.higher_is_better:
            verdict = "meets" if ci.low >= limit else ("misses" if ci.high < limit else "unclear")
        else:
            verdict = "meets" if ci.high <= limit else ("misses" if ci.low > limit else "unclear")
        out.append(BudgetResult(b.key, b.section, float(limit), b.higher_is_better, b.unit, b.how, value, ci,
                                verdict, n))
    return out
