"""Unit tests of nanomq.bench's parts that need no processes: histograms, payloads, the driver of
the workload coroutines, ratios and the results JSON."""

from __future__ import annotations

import asyncio
import math
import pickle
import random
from pathlib import Path

import pytest

pytest.importorskip("hdrh", reason="the bench extra (hdrhistogram) is not installed")

from nanomq.bench import peers, workloads  # noqa: E402
from nanomq.bench.hist import HIGHEST, Histogram, spectrum_points  # noqa: E402
from nanomq.bench.results import Figure, Run, check, median, ratio_rounds  # noqa: E402


def _exact(values: list[int], p: float) -> int:
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def test_percentiles_within_a_tenth_of_a_percent() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(11, 1.5)) for _ in range(50_000)]  # ~60 µs median, long tail
    h = Histogram()
    for v in values[:1000]:
        h.record(v)
    h.record_many(values[1000:])
    assert h.count == len(values)
    for p in (50, 90, 99, 99.9, 99.99):
        exact = _exact(values, p)
        assert abs(h.percentile(p) - exact) <= exact * 0.001 + 1, p
    assert abs(h.max - max(values)) <= max(values) * 0.001
    assert abs(h.mean - sum(values) / len(values)) <= 0.002 * sum(values) / len(values)
    s = h.summary().as_dict(1000.0)
    assert s["count"] == len(values) and s["p50"] == pytest.approx(h.percentile(50) / 1000)


def test_clamping_empty_merge_and_transport() -> None:
    h = Histogram()
    assert h.count == 0 and h.percentile(50) == 0.0 and h.max == 0 and h.spectrum() == []
    h.record(-5)
    h.record(HIGHEST * 10)
    h.record(1234, count=3)
    assert h.count == 5 and h.min == 0 and h.max >= HIGHEST * 0.999
    g = Histogram.decode(h.encode())
    assert g.count == 5 and g.percentile(50) == h.percentile(50)
    k = pickle.loads(pickle.dumps(h))
    k.merge(g)
    assert k.count == 10 and k.percentile(50) == h.percentile(50)
    xs, ys = spectrum_points(k)
    assert xs and all(x >= 1 for x in xs) and ys == sorted(ys)


def test_payload_layout() -> None:
    p = workloads.payload(64, 123456789, 42, workloads.LAST)
    assert len(p) == 64 and int.from_bytes(p[:8], "little") == 123456789
    assert int.from_bytes(p[8:16], "little") == 42 and p[16] == workloads.LAST
    assert len(workloads.payload(1024, 0, 0, workloads.MEASURED)) == 1024


def test_drive_runs_sync_and_async_bodies() -> None:
    async def sync_body() -> int:
        return 7

    async def async_body() -> int:
        await asyncio.sleep(0)
        return 8

    assert peers.drive(sync_body(), is_async=False) == 7
    assert peers.drive(async_body(), is_async=True) == 8
    with pytest.raises(RuntimeError, match="suspended"):
        peers.drive(async_body(), is_async=False)


def test_ratios_checks_and_json(tmp_path: Path) -> None:
    assert median([3.0, float("nan"), 1.0, 2.0]) == 2.0 and math.isnan(median([]))
    assert ratio_rounds([2.0, 4.0, 1.0], [1.0, 2.0, 0.0])[:2] == [2.0, 2.0]
    assert math.isnan(ratio_rounds([1.0], [0.0])[0])
    assert check(0.5, "<= 0.8") is True and check(0.9, "<= 0.8") is False and check(11, ">= 10") is True
    assert check(1.0, "") is None and check(float("nan"), ">= 1") is None
    run = Run(meta={"x": 1})
    run.add(Figure("a/nano/rate", "a", "NanoMQ", "a", "records/s", 200.0, [100.0, 200.0, float("nan")]))
    run.add(Figure("a/peer/rate", "a", "peer", "a", "records/s", 100.0, [50.0, 100.0, 100.0]))
    c = run.compare("a/nano/peer", "nano / peer", "a/nano/rate", "a/peer/rate", target=">= 1.25")
    assert c is not None and c.rounds[:2] == [2.0, 2.0] and math.isnan(c.rounds[2]) and c.value == 2.0 and c.meets
    assert run.compare("a/nano/missing", "x", "a/nano/rate", "a/missing/rate") is None  # a skipped peer: no row
    t = run.compare("a/nano/abs", "nano / 1000", "a/nano/rate", None, absolute=1000.0, target=">= 1")
    assert t is not None and t.value == pytest.approx(0.15) and t.meets is False
    back = Run.load(run.save(tmp_path / "r.json"))
    assert back.figures["a/nano/rate"].rounds[2] is None  # NaN is written as null
    assert [x.id for x in back.comparisons] == ["a/nano/peer", "a/nano/abs"]
    (tmp_path / "bad.json").write_text('{"schema": "other"}')
    with pytest.raises(ValueError, match="not a nanomq-bench/1"):
        Run.load(tmp_path / "bad.json")


def test_broker_option_reads_the_installed_help() -> None:
    assert peers.broker_option("--log-segment-size") == "SIZE"
    assert peers.broker_option("--verify-on-start") == ""
    assert peers.broker_option("--no-such-option") is None
