"""The benchmarks' histograms: :mod:`nanomq.bench.hist` (HdrHistogram, ``hdrhistogram`` package).

Kept as a module so the harnesses' ``from benchmarks.hist import Histogram, format_table`` works.
"""

from __future__ import annotations

from nanomq.bench.hist import Histogram, Summary
from nanomq.bench.results import format_table

__all__ = ["Histogram", "Summary", "format_table"]
