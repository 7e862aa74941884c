"""Latency histograms and percentiles, backed by the ``hdrhistogram`` package (``hdrh``).

Values are integers (nanoseconds unless a caller says otherwise), kept with 3 significant
digits (≤ 0.1 % relative error) from 1 ns up to one hour, so percentiles come from the whole
distribution, never from a mean or a sample.

``hdrh`` records in pure Python (≈ 2 µs per ``record_value`` here), which would perturb a
measurement loop. :meth:`Histogram.record` therefore only appends to a list (≈ 0.1 µs); the
values go into the HdrHistogram when a figure is read, merged or encoded, or every 65,536
values. Hot loops that need even less should collect ints themselves and call
:meth:`Histogram.record_many` once the measurement is over.

A histogram travels (between processes, into the results JSON) as the standard compressed
HdrHistogram encoding (:meth:`Histogram.encode` / :meth:`Histogram.decode`), so another tool can
merge or re-read the full distribution later.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

try:
    from hdrh.histogram import HdrHistogram
except ImportError as e:  # pragma: no cover - exercised only without the bench extra
    raise ImportError("nanomq.bench needs the hdrhistogram package: pip install 'nanomq[bench]'") from e

__all__ = ["HIGHEST", "PERCENTILES", "Histogram", "Summary", "spectrum_points"]

HIGHEST = 3_600_000_000_000
"""Largest value kept exactly (1 h in ns); larger ones are clamped to it."""
SIGNIFICANT = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)
"""The percentiles every summary reports (plus max and mean)."""
_FLUSH_AT = 65_536


@dataclass(frozen=True, slots=True)
class Summary:
    """Percentiles of one histogram, in the histogram's unit (ns for latencies)."""

    count: int
    p50: float
    p90: float
    p99: float
    p999: float
    p9999: float
    max: float
    mean: float
    min: float
    p10: float = 0.0
    p25: float = 0.0
    p1: float = 0.0
    p5: float = 0.0

    def as_us(self) -> dict[str, float]:
        """The same figures in microseconds, rounded for printing."""
        return {k: round(getattr(self, k) / 1000, 2) for k in ("p50", "p90", "p99", "p999", "max", "mean")}

    def as_dict(self, scale: float = 1.0) -> dict[str, float]:
        """``{"p1": …, "p5": …, "p10": …, "p25": …, "p50": …, "p90": …, "p99": …, "p99.9": …, "p99.99": …, "max": …, "mean": …,
        "min": …}`` divided by ``scale`` (1000 turns ns into µs), plus ``count``."""
        out = {"count": float(self.count)}
        for key, name in (("p1", "p1"), ("p5", "p5"), ("p10", "p10"), ("p25", "p25"), ("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9"),
                          ("p9999", "p99.99"), ("max", "max"), ("mean", "mean"), ("min", "min")):
            out[name] = getattr(self, key) / scale
        return out


class Histogram:
    """Counts of non-negative integer values with ≤ 0.1 % relative error (HdrHistogram)."""

    __slots__ = ("_h", "_pending")

    def __init__(self) -> None:
        self._h = HdrHistogram(1, HIGHEST, SIGNIFICANT)
        self._pending: list[int] = []

    # ---------------------------------------------------------------- recording

    def record(self, value: int, count: int = 1) -> None:
        """Add ``count`` samples of ``value`` (negative values count as 0, huge ones as HIGHEST)."""
        if count == 1:
            self._pending.append(value)
            if len(self._pending) >= _FLUSH_AT:
                self._flush()
        else:
            self._flush()
            self._h.record_value(_clamp(value), count)

    def record_many(self, values: Iterable[int]) -> None:
        """Add every value of ``values``."""
        self._pending.extend(values)
        self._flush()

    def merge(self, other: Histogram) -> None:
        """Add all samples of ``other`` into this histogram."""
        other._flush()
        self._flush()
        self._h.add(other._h)

    def _flush(self) -> None:
        if self._pending:
            rec = self._h.record_value
            for v in self._pending:
                rec(_clamp(v))
            self._pending.clear()

    # ---------------------------------------------------------------- reading

    @property
    def count(self) -> int:
        """How many samples."""
        self._flush()
        return int(self._h.get_total_count())

    @property
    def max(self) -> int:
        """The largest sample (to the histogram's precision); 0 when empty."""
        self._flush()
        return int(self._h.get_max_value()) if self._h.get_total_count() else 0

    @property
    def min(self) -> int:
        """The smallest sample (to the histogram's precision); 0 when empty."""
        self._flush()
        return int(self._h.get_min_value()) if self._h.get_total_count() else 0

    @property
    def mean(self) -> float:
        """The mean of the samples (from the buckets); 0.0 when empty."""
        self._flush()
        return float(self._h.get_mean_value()) if self._h.get_total_count() else 0.0

    def percentile(self, p: float) -> float:
        """The value at percentile ``p`` (0–100): the highest value of its bucket, so a
        percentile never under-reports; 0.0 for an empty histogram."""
        self._flush()
        if not self._h.get_total_count():
            return 0.0
        return float(self._h.get_value_at_percentile(p))

    def summary(self) -> Summary:
        """p50/p90/p99/p99.9/p99.99/max/mean/min (and p1, p5, p10, p25) of everything recorded."""
        return Summary(self.count, self.percentile(50), self.percentile(90), self.percentile(99),
                       self.percentile(99.9), self.percentile(99.99), float(self.max), self.mean,
                       float(self.min), self.percentile(10), self.percentile(25), self.percentile(1),
                       self.percentile(5))

    def spectrum(self) -> list[tuple[float, float]]:
        """(percentile, value) points for a percentile-spectrum plot: every percentile at which
        the value changes, from the HdrHistogram's percentile iterator (5 ticks per half)."""
        self._flush()
        if not self._h.get_total_count():
            return []
        return [(float(it.percentile_level_iterated_to), float(it.value_iterated_to))
                for it in self._h.get_percentile_iterator(5)]

    # ---------------------------------------------------------------- transport

    def encode(self) -> str:
        """The compressed, base64 HdrHistogram encoding (other HdrHistogram tools read it)."""
        self._flush()
        return str(self._h.encode().decode("ascii"))

    @classmethod
    def decode(cls, text: str | bytes) -> Histogram:
        """A histogram from :meth:`encode`'s output."""
        h = cls()
        h._h.decode_and_add(text if isinstance(text, bytes) else text.encode("ascii"))
        return h

    def __getstate__(self) -> str:
        return self.encode()

    def __setstate__(self, state: str) -> None:
        self._h = HdrHistogram(1, HIGHEST, SIGNIFICANT)
        self._pending = []
        self._h.decode_and_add(state.encode("ascii"))

    def __repr__(self) -> str:
        n = self.count
        if not n:
            return "Histogram(empty)"
        return f"Histogram(count={n}, p50={self.percentile(50):.0f}, p99={self.percentile(99):.0f}, max={self.max})"


def _clamp(v: int) -> int:
    v = int(v)
    if v < 0:
        return 0
    return HIGHEST if v > HIGHEST else v


def spectrum_points(h: Histogram) -> tuple[list[float], list[float]]:
    """x = 1 / (1 - percentile/100) (the "nines" axis of a latency spectrum, 100 % excluded) and
    y = the value there, ready for a log-log plot."""
    xs: list[float] = []
    ys: list[float] = []
    for p, v in h.spectrum():
        if p >= 100.0:
            continue
        xs.append(1.0 / (1.0 - p / 100.0))
        ys.append(v)
    return xs, ys
