"""Results: every figure with its unit, percentiles, rounds, wait strategy, calibration and load.

A :class:`Run` is what one benchmark run measured; it is saved as JSON (:meth:`Run.save`) and read
back (:meth:`Run.load`) by later tools, e.g. one that compares two runs. Layout::

    {"schema": "nanomq-bench/1",
     "meta": {...},                       # date, command, machine, versions, load over the run
     "calibrations": {id: Figure},        # raw socket RTT, relay floor, fdatasync, memcpy
     "figures": {id: Figure},             # every workload × system
     "comparisons": [Comparison],         # NanoMQ / peer ratios and the issue-12 target rows
     "skipped": [{"system", "reason"}]}   # peers that could not run, and why

A :class:`Figure` keeps the value of every round (``rounds``), its headline (the median of the
rounds), for a latency the percentiles of every round and of all rounds merged (the merged
HdrHistogram itself, encoded, in ``hist``), the wait strategy that produced it, the calibration
it is a ratio to with that ratio (the median of the per-round ratios), and the load average and
machine-wide CPU use during each round. Latencies are stored in µs, rates in records/s.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nanomq.bench.hist import Histogram

__all__ = ["SCHEMA", "Comparison", "Figure", "Run", "format_table", "median", "ratio_rounds"]

SCHEMA = "nanomq-bench/1"


def median(values: list[float]) -> float:
    """The median of the finite values (nan when there are none)."""
    vs = [v for v in values if v is not None and math.isfinite(v)]
    return float(statistics.median(vs)) if vs else float("nan")


@dataclass(slots=True)
class Figure:
    """One measured quantity of one system (or one calibration)."""

    id: str
    label: str
    """what the tables print"""
    system: str
    workload: str
    unit: str
    """"us", "records/s", "us/record", "GB/s", "MB", "%", "x"."""
    value: float
    """the headline: median over rounds of the round values"""
    rounds: list[float]
    stat: str = "value"
    """what a round's value is: "value", "p50", "rate" …"""
    higher_is_better: bool = True
    percentiles: dict[str, float] | None = None
    """of all rounds merged, in ``unit`` (p50 p90 p99 p99.9 p99.99 max mean min count)"""
    round_percentiles: list[dict[str, float]] | None = None
    hist: str | None = None
    """the merged HdrHistogram, encoded (ns)"""
    wait: str | None = None
    """the wait strategy that produced a latency (or a rate that depends on one)"""
    calibration: str | None = None
    """id of the calibration this figure is a ratio to"""
    ratio: float | None = None
    """median over rounds of value / calibration value"""
    load: list[dict[str, float]] = field(default_factory=list)
    """per round: 1-min load average before/after and machine-wide CPU busy %"""
    extra: dict[str, Any] = field(default_factory=dict)

    def histogram(self) -> Histogram | None:
        """The merged histogram (ns), if this figure has one."""
        return Histogram.decode(self.hist) if self.hist else None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Figure:
        """Inverse of ``asdict``."""
        return cls(**d)


@dataclass(slots=True)
class Comparison:
    """A ratio of two figures of the same run: NanoMQ / a peer, or a figure / a calibration, or
    a figure / an absolute target of issue 12 (then ``denominator`` is None)."""

    id: str
    label: str
    numerator: str
    denominator: str | None
    value: float
    """median over rounds of the per-round ratios"""
    rounds: list[float]
    stat: str = "value"
    """which statistic of both figures is compared: "value" (their headline) or a percentile"""
    target: str = ""
    """the issue's target for this ratio, e.g. ">= 1.25"; "" when there is none"""
    meets: bool | None = None
    note: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        """Inverse of ``asdict``."""
        return cls(**d)


def ratio_rounds(num: list[float], den: list[float]) -> list[float]:
    """Per-round ratios (rounds paired by index; a zero or missing denominator gives nan)."""
    out: list[float] = []
    for a, b in zip(num, den, strict=False):
        out.append(a / b if b else float("nan"))
    return out


def check(value: float, target: str) -> bool | None:
    """Whether ``value`` meets ``target`` ("<= 0.8", ">= 10"); None without a target or a value."""
    if not target or not math.isfinite(value):
        return None
    op, _, num = target.partition(" ")
    limit = float(num)
    return value <= limit if op == "<=" else value >= limit


@dataclass(slots=True)
class Run:
    """Everything one run measured."""

    meta: dict[str, Any] = field(default_factory=dict)
    calibrations: dict[str, Figure] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def add(self, fig: Figure, calibration: bool = False) -> Figure:
        """Add a figure (or a calibration)."""
        (self.calibrations if calibration else self.figures)[fig.id] = fig
        return fig

    def get(self, fid: str) -> Figure | None:
        """A figure or calibration by id."""
        return self.figures.get(fid) or self.calibrations.get(fid)

    def compare(self, cid: str, label: str, num: str, den: str | None, *, stat: str = "value",
                target: str = "", absolute: float | None = None, note: str = "") -> Comparison | None:
        """Add the ratio ``num`` / ``den`` (per round, then the median), or ``num`` / ``absolute``
        when ``den`` is None; nothing (None) when a figure is missing (a skipped peer)."""
        a = self.get(num)
        if a is None:
            return None
        na = _stat_rounds(a, stat)
        if den is None:
            if absolute is None:
                raise ValueError("an absolute target needs a value")
            rs = [x / absolute for x in na]
        else:
            b = self.get(den)
            if b is None:
                return None
            rs = ratio_rounds(na, _stat_rounds(b, stat))
        c = Comparison(cid, label, num, den, median(rs), rs, stat, target, None, note)
        c.meets = check(c.value, target)
        self.comparisons.append(c)
        return c

    # ---------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        """The JSON document."""
        return {"schema": SCHEMA, "meta": self.meta,
                "calibrations": {k: asdict(v) for k, v in self.calibrations.items()},
                "figures": {k: asdict(v) for k, v in self.figures.items()},
                "comparisons": [asdict(c) for c in self.comparisons], "skipped": self.skipped}

    def save(self, path: str | Path) -> Path:
        """Write the JSON document (NaN written as null)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(_nan_to_none(self.to_dict()), indent=1, sort_keys=False) + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path) -> Run:
        """Read a document :meth:`save` wrote."""
        d = json.loads(Path(path).read_text())
        if d.get("schema") != SCHEMA:
            raise ValueError(f"{path}: not a {SCHEMA} document (schema {d.get('schema')!r})")
        return cls(d["meta"], {k: Figure.from_dict(v) for k, v in d["calibrations"].items()},
                   {k: Figure.from_dict(v) for k, v in d["figures"].items()},
                   [Comparison.from_dict(c) for c in d["comparisons"]], d["skipped"])


def _stat_rounds(f: Figure, stat: str) -> list[float]:
    if stat == "value":
        return list(f.rounds)
    if not f.round_percentiles:
        raise ValueError(f"{f.id} has no percentiles")
    return [rp.get(stat, float("nan")) for rp in f.round_percentiles]


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


# ---------------------------------------------------------------- text tables


def format_table(rows: list[dict[str, object]]) -> str:
    """Render a list of dicts (the first row's keys are the columns) as an aligned text table."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0].keys())
    cells = [[str(k) for k in keys]] + [[_fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keys))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "—"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
