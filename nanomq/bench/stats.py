"""The gate's statistics: bootstrap confidence intervals of a change, and Mann–Whitney U.

A figure of a run is a set of per-round values (one per interleaved round). Two runs are compared
through a **shift**: the headline of the current run over the headline of the baseline, where a
headline is the median of the rounds, or for a figure taken relative to a calibration the median of
the figure's rounds over the median of the calibration's rounds (both measured in the same run).
:func:`shift_ci` gives the shift with a percentile bootstrap confidence interval that resamples the
rounds of every sample independently (``scipy.stats.bootstrap``), and :func:`mann_whitney` the
one-sided Mann–Whitney U test of the rounds themselves (``scipy.stats.mannwhitneyu``), reported
next to it.

Everything is seeded, so the same runs always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

try:
    import numpy as np
    from scipy import stats as _st
except ImportError as e:  # pragma: no cover - exercised only without the bench extra
    raise ImportError("nanomq.bench.stats needs numpy and scipy: pip install 'nanomq[bench]'") from e

__all__ = ["Interval", "finite", "headline", "mann_whitney", "shift_ci"]

RESAMPLES = 4000
SEED = 20261201


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate with its confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float

    @property
    def known(self) -> bool:
        """Whether every bound is a finite number."""
        return all(math.isfinite(x) for x in (self.estimate, self.low, self.high))

    def as_dict(self) -> dict[str, float]:
        """For JSON."""
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "confidence": self.confidence}


def finite(values: Sequence[float | None]) -> list[float]:
    """The finite values (a round that failed is NaN or None)."""
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def headline(num: Sequence[float], den: Sequence[float] | None = None) -> float:
    """median(num), or median(num) / median(den); NaN without values."""
    a = finite(num)
    if not a:
        return float("nan")
    m = float(np.median(a))
    if den is None:
        return m
    b = finite(den)
    if not b:
        return float("nan")
    d = float(np.median(b))
    return m / d if d else float("nan")


def _stat(*xs: Any, axis: int = -1, ratio: bool) -> Any:
    """Vectorised shift: (headline of the current) / (headline of the baseline)."""
    meds = [np.median(x, axis=axis) for x in xs]
    with np.errstate(divide="ignore", invalid="ignore"):
        return _quotient(meds, ratio)


def _quotient(meds: list[Any], ratio: bool) -> Any:
    if ratio:  # current num, current den, baseline num, baseline den
        return (meds[0] / meds[1]) / (meds[2] / meds[3])
    return meds[0] / meds[1]


def shift_ci(current: Sequence[float], baseline: Sequence[float], *, current_cal: Sequence[float] | None = None,
             baseline_cal: Sequence[float] | None = None, confidence: float = 0.95, resamples: int = RESAMPLES,
             seed: int = SEED) -> Interval:
    """The shift headline(current) / headline(baseline) with a percentile bootstrap interval.

    With ``current_cal`` and ``baseline_cal`` (a calibration's rounds in each run) the headlines are
    ratios of medians, and the four samples are resampled independently. A sample with one round
    still gives the point estimate, and an interval from the others' spread alone; with no rounds
    the interval is NaN."""
    ratio = current_cal is not None and baseline_cal is not None
    samples = [finite(current), finite(current_cal or []) if ratio else None,
               finite(baseline), finite(baseline_cal or []) if ratio else None]
    used = [s for s in samples if s is not None]
    if any(not s for s in used):
        nan = float("nan")
        return Interval(nan, nan, nan, confidence)
    if ratio:
        est = float(_stat(*(np.asarray(s) for s in used), ratio=True))
    else:
        est = float(_stat(np.asarray(used[0]), np.asarray(used[1]), ratio=False))
    if not math.isfinite(est):
        nan = float("nan")
        return Interval(est, nan, nan, confidence)
    if all(len(s) == 1 for s in used):
        return Interval(est, est, est, confidence)
    # A one-round sample cannot be resampled into anything but itself: hold it fixed.
    arrays = [np.asarray(s if len(s) > 1 else s * 2) for s in used]
    res = _st.bootstrap(tuple(arrays), lambda *xs, axis=-1: _stat(*xs, axis=axis, ratio=ratio),
                        n_resamples=resamples, confidence_level=confidence, method="percentile",
                        vectorized=True, paired=False, rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Interval(est, min(lo, est), max(hi, est), confidence)


def mann_whitney(current: Sequence[float], baseline: Sequence[float], *, worse: str) -> float:
    """One-sided p-value that the current rounds are ``worse`` ("greater" or "less") than the
    baseline's (Mann–Whitney U, exact for small samples without ties); NaN without rounds."""
    a, b = finite(current), finite(baseline)
    if not a or not b:
        return float("nan")
    if worse not in ("greater", "less"):
        raise ValueError(f"worse must be 'greater' or 'less', not {worse!r}")
    return float(_st.mannwhitneyu(a, b, alternative=worse).pvalue)
