"""Smoke test of benchmarks/bench_broker.py: a tiny in-process run must produce every table row.

Keeps the harness from rotting (API drift, a renamed budget key, a peer that hangs); the figures
themselves are not checked, a loaded CI box may miss every budget.
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from pathlib import Path

import pytest

from benchmarks import bench_broker as bb

TINY = bb.Sizes(lat_seconds=0.3, calib_b2b=300, tput_seconds=0.1, rounds=1, single_seconds=0.05,
                backlog=3_000, idle_seconds=0.3, peer_n=2_000)

EXPECTED_ROWS = [
    "raw socket RTT, paced", "raw socket RTT, back-to-back",
    "e2e ack=written 64 B", "e2e ack=durable 64 B", "publish() call (written)", "publisher lateness (durable)",
    "publish 64 B batch 1 ack=none", "publish 64 B batch 1 ack=written", "publish 1024 B batch 1 ack=written",
    "publish 64 B batch 256 ack=written", "publish 1024 B batch 256 ack=written",
    "publish 1024 B batch 1 ack=durable", "publish 1024 B batch 256 ack=durable", "deliver 64 B backlog",
    "disk baseline: raw pwrite 64+64 B records", "disk baseline: raw pwrite 1024+64 B records + fdatasync",
    "CPU time per record in the latency runs", "ack=written", "ack=durable",
    "fresh, idle", "idle after the runs", "idle CPU after the runs",
    "multiprocessing.Queue 64 B put/get", "Redis streams", "NATS core", "JetStream acked one by one",
    "e2e p50 written / raw RTT p50 (paced)", "publish 64 B batch256 written", "publish 1 KiB batch256 written",
    "publish 1 KiB batch256 durable", "broker VmRSS idle, fresh", "broker RssAnon idle after runs", "broker VmRSS idle after runs",
    "broker idle CPU",
]


def test_tiny_run_has_every_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The run's temp data dir goes under tmp_path, so a concurrent benchmark cannot confuse the check.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    t0 = time.monotonic()
    res = bb.run(TINY, rate=2000.0, durable_rate=1000.0, log=lambda s: None)
    text, _ok = bb.report(res, 2000.0, 1000.0)
    assert time.monotonic() - t0 < 15
    for row in EXPECTED_ROWS:
        assert row in text, f"missing row {row!r} in:\n{text}"
    assert "records never arrived" not in text
    assert res["e2e_written"].latency.count > 0 and res["e2e_durable"].latency.count > 0
    assert res["deliver"][1] == TINY.backlog
    assert all(min(rs) > 0 for *_, rs in res["tput"])
    # every temp data dir is removed again
    assert glob.glob(os.path.join(str(tmp_path), "nanomq-bench-*")) == []


def test_budget_section_has_every_key() -> None:
    from benchmarks.budgets import load

    b = load("broker")
    for key in ("e2e_p50_written_ratio_vs_raw_rtt", "publish_batch256_64b_records_per_s",
                "publish_batch256_1k_records_per_s", "publish_batch256_1k_durable_records_per_s",
                "idle_rss_mb", "idle_cpu_pct", "ref_redis_streams_single_per_s",
                "ref_redis_streams_pipelined_per_s", "ref_nats_core_per_s", "ref_jetstream_acked_per_s",
                "peer_ratio_aim"):
        assert key in b
