"""A log-linear latency histogram (HdrHistogram-style) for benchmark percentiles.

Values (nanoseconds) are bucketed with a relative error below 1/``sub_buckets`` (default 1/128 ≈
0.8 %), so percentiles come from the full distribution, never from a mean or a sample. Recording is
O(1) and memory is bounded (64 * sub_buckets counters), so hours of samples cost the same as one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Summary:
    """Percentiles of one histogram, in nanoseconds."""

    count: int
    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    mean: float

    def as_us(self) -> dict[str, float]:
        """The same figures in microseconds, rounded for printing."""
        return {k: round(getattr(self, k) / 1000, 2) for k in ("p50", "p90", "p99", "p999", "max", "mean")}


class Histogram:
    """Counts of non-negative integer values with bounded relative error."""

    def __init__(self, sub_bucket_bits: int = 7) -> None:
        self._bits = sub_bucket_bits
        self._sub = 1 << sub_bucket_bits
        self._counts = [0] * (64 * self._sub)
        self.count = 0
        self.total = 0
        self.max = 0

    def _index(self, v: int) -> int:
        if v < self._sub:
            return v
        shift = v.bit_length() - self._bits - 1
        return (shift + 1) * self._sub + ((v >> shift) - self._sub)

    def _value(self, i: int) -> int:
        """The highest value that maps to bucket ``i`` (so percentiles never under-report)."""
        if i < self._sub:
            return i
        shift = i // self._sub - 1
        base = (i % self._sub + self._sub) << shift
        return base + (1 << shift) - 1

    def record(self, value_ns: int, count: int = 1) -> None:
        """Add ``count`` samples of ``value_ns`` (negative values are clamped to 0)."""
        v = max(0, int(value_ns))
        self._counts[self._index(v)] += count
        self.count += count
        self.total += v * count
        if v > self.max:
            self.max = v

    def record_many(self, values: Iterable[int]) -> None:
        """Add every value of ``values``."""
        for v in values:
            self.record(v)

    def merge(self, other: Histogram) -> None:
        """Add all samples of ``other`` (same sub-bucket resolution) into this histogram."""
        if other._bits != self._bits:
            raise ValueError("histograms of different resolution")
        for i, c in enumerate(other._counts):
            if c:
                self._counts[i] += c
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, p: float) -> float:
        """The value at percentile ``p`` (0–100); 0.0 for an empty histogram."""
        if self.count == 0:
            return 0.0
        rank = max(1, int(round(p / 100.0 * self.count + 0.4999999)))
        seen = 0
        for i, c in enumerate(self._counts):
            seen += c
            if seen >= rank:
                return float(min(self._value(i), self.max))
        return float(self.max)

    def summary(self) -> Summary:
        """p50/p90/p99/p99.9/max/mean of everything recorded."""
        mean = self.total / self.count if self.count else 0.0
        return Summary(
            self.count,
            self.percentile(50),
            self.percentile(90),
            self.percentile(99),
            self.percentile(99.9),
            float(self.max),
            mean,
        )


def format_table(rows: list[dict[str, object]]) -> str:
    """Render a list of dicts (same keys) as an aligned plain-text table."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0].keys())
    cells = [[str(k) for k in keys]] + [[_fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keys))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths, strict=False))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if v >= 100:
            return f"{v:,.0f}"
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
