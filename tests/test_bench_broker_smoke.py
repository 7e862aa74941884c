"""Smoke test of the benchmark harness (nanomq.bench + benchmarks/bench_broker.py): a tiny run of
the whole suite must produce every figure, ratio and output, and leave nothing behind.

The figures themselves are not checked (a loaded CI box may miss every target); what is checked
is that each workload really ran (records measured and received, none lost by NanoMQ), that every
ratio is computed from figures of this run, that peers which are not installed are skipped with
the reason, and that the JSON and the plots are written. Redis and NATS run when installed.
"""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("hdrh", reason="the bench extra (hdrhistogram) is not installed")

from nanomq.bench import peers, report, suite  # noqa: E402
from nanomq.bench.results import Run  # noqa: E402

TINY = replace(suite.QUICK, rounds=2, oneway_seconds=0.25, cpu_seconds=0.4, durable_seconds=0.4, acked_seconds=0.15,
               batch_seconds=0.15, backlog=5_000, rtt_seconds=0.2, rtt_back_to_back=300, relay_seconds=0.3,
               fsync_seconds=0.1, scale_seconds=0.15, scale_topics=(1, 3), scale_connections=(1, 2),
               idle_seconds=0.2)

NANOMQ_FIGURES = [
    "acked1k/nanomq-written/rate", "acked1k/nanomq-durable/rate", "batch1k/nanomq-written/rate",
    "batch1k/nanomq-durable/rate", "batch64/nanomq-written/rate", "oneway64/nanomq-written/latency",
    "oneway64/nanomq-written/publish_rtt", "cpu1000/nanomq-written/server_cpu", "cpu1000/nanomq-written/latency",
    "durable1000/nanomq-durable/latency", "durable1000/nanomq-durable/ack", "drain64/nanomq-written/rate",
    "batch1k/nanomq-written/server_cpu", "broker/rss_fresh", "broker/idle_cpu",
]
CALIBRATIONS = ["calib/rtt_paced", "calib/rtt_b2b", "calib/relay_one_way", "calib/relay_one_way_fast",
                "calib/kernel_floor", "calib/relay_cpu", "calib/fdatasync", "calib/memcpy"]
TARGETS = ["target/cpu_written", "target/cpu_batch", "target/durable_p99", "target/durable_stall",
           "target/durable_rate", "target/batch_1m", "target/drain_2m", "budget/e2e_p50_vs_rtt",
           "scale/1x2", "scale/3x2"]


def _children(pid: int) -> list[int]:
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.split("/")[2]))
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    tmp = tmp_path_factory.mktemp("bench")
    old = tempfile.tempdir
    tempfile.tempdir = str(tmp)  # every temp dir of the run (brokers, servers) goes under tmp
    try:
        before = set(_children(os.getpid()))
        run = suite.run_suite(suite.Options(sizes=TINY, rate=2000.0, cpu_rate=1000.0, command="smoke"))
        left = set(_children(os.getpid())) - before
    finally:
        tempfile.tempdir = old
    assert not left, f"processes left running: {left}"
    assert glob.glob(str(tmp / "nanomq-bench-*")) == [], "temp dirs left behind"
    return run, tmp


def test_every_nanomq_figure_measured(tiny_run: tuple[Run, Path]) -> None:
    run, _ = tiny_run
    assert run.meta["failures"] == [], run.meta["failures"]
    for fid in NANOMQ_FIGURES:
        f = run.get(fid)
        assert f is not None, f"missing {fid}"
        assert len(f.rounds) == (1 if fid.startswith("broker/") else TINY.rounds)
        if fid != "broker/idle_cpu":
            assert all(math.isfinite(v) and v > 0 for v in f.rounds), (fid, f.rounds)
        assert f.load, f"{fid} has no load average"
    for fid in ("acked1k/nanomq-written/rate", "batch1k/nanomq-durable/rate", "drain64/nanomq-written/rate",
                "oneway64/nanomq-written/latency"):
        f = run.figures[fid]
        assert f.extra["lost"] == [0] * TINY.rounds, (fid, f.extra["lost"])  # NanoMQ loses nothing
    lat = run.figures["oneway64/nanomq-written/latency"]
    assert lat.unit == "us" and lat.percentiles is not None and lat.wait == "blocking subscriber"
    h = lat.histogram()
    assert h is not None and h.count == lat.percentiles["count"] > 0
    assert lat.calibration == "calib/relay_one_way_fast" and lat.ratio is not None and lat.ratio > 0
    assert run.figures["acked1k/nanomq-written/rate"].calibration == "calib/rtt_b2b"
    for t in TINY.scale_topics:
        for c in TINY.scale_connections:
            assert run.figures[f"scale/{t}x{c}/rate"].value > 0
            assert run.figures[f"scale/{t}x{c}/call"].percentiles is not None


def test_calibrations_and_targets(tiny_run: tuple[Run, Path]) -> None:
    run, _ = tiny_run
    for cid in CALIBRATIONS:
        f = run.calibrations[cid]
        assert len(f.rounds) == TINY.rounds and all(v > 0 for v in f.rounds), (cid, f.rounds)
    floor = run.calibrations["calib/kernel_floor"]
    for part in ("recv_us", "send_ack_us", "send_deliver_us"):
        assert all(v > 0 for v in floor.extra[part])
    ids = {c.id: c for c in run.comparisons}
    for tid in TARGETS:
        assert tid in ids, f"missing target row {tid}"
        c = ids[tid]
        assert math.isfinite(c.value) and c.value > 0 and c.meets is not None, c
    # every ratio is made of this run's figures, round by round
    for c in run.comparisons:
        assert run.get(c.numerator) is not None
        assert c.denominator is None or run.get(c.denominator) is not None
        assert len(c.rounds) >= 1


def test_peers_measured_or_skipped_with_reason(tiny_run: tuple[Run, Path]) -> None:
    run, _ = tiny_run
    skipped = {s["system"]: s["reason"] for s in run.skipped}
    for system, key, workloads in (("Redis streams", "redis", ("acked1k", "batch1k", "oneway64", "drain64")),
                                   ("NATS core", "nats", ("batch1k", "oneway64")),
                                   ("JetStream", "jetstream", ("acked1k", "batch1k"))):
        why = peers.unavailable("redis" if key == "redis" else "nats")
        if why is not None:
            assert skipped[system] == why
            assert not any(f.system == system for f in run.figures.values())
            assert not any(key in (c.denominator or "") for c in run.comparisons)
        else:
            assert system not in skipped
            for wl in workloads:
                fid = f"{wl}/{key}/" + ("latency" if wl == "oneway64" else "rate")
                assert run.figures[fid].value > 0, fid
            assert any(c.denominator and f"/{key}/" in c.denominator for c in run.comparisons)
    # brokerless peers always run
    assert run.figures["oneway64/mpqueue/latency"].value > 0
    assert run.figures["batch1k/mpqueue/rate"].value > 0


def test_json_report_and_plots(tiny_run: tuple[Run, Path]) -> None:
    from benchmarks import bench_broker

    run, tmp = tiny_run
    paths = bench_broker.write(run, tmp / "out", plots=True)
    doc = json.loads((tmp / "out" / "results.json").read_text())
    assert doc["schema"] == "nanomq-bench/1" and doc["meta"]["load1"]["samples"]
    back = Run.load(tmp / "out" / "results.json")
    assert back.figures.keys() == run.figures.keys() and back.calibrations.keys() == run.calibrations.keys()
    f = back.figures["oneway64/nanomq-written/latency"]
    assert f.rounds == run.figures[f.id].rounds and f.histogram().count == run.figures[f.id].histogram().count  # type: ignore[union-attr]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert paths == [tmp / "out" / "results.json"]
    else:
        names = sorted(p.name for p in paths)
        assert names == ["durable.png", "latency.png", "results.json", "scaling.png", "throughput.png"]
        for p in paths:
            assert p.stat().st_size > 1000
    text = report.render(run)
    for row in ("1 KiB acked one by one, subscriber running (msgs/s)", "1 KiB batched/pipelined 256",
                "64 B one-way, paced 2,000/s, p50 / p99 / p99.9 (us)", "64 B publish round trip, p50 (us)",
                "broker CPU per record, ack=written, 1,000/s / kernel floor", "durable e2e p99 at 1,000/s",
                "delivery drain 64 B / 2 M records/s", "kernel floor per call", "scaling:", "wait strategy",
                "1-min load average over the run"):
        assert row in text, f"missing {row!r} in the report"


def test_missing_server_binary_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name.endswith("-server") else real(name, *a, **k))
    assert peers.unavailable("redis") == "no redis-server binary on PATH (apt-get install redis-server)"
    assert peers.unavailable("nats") == "no nats-server binary on PATH (apt-get install nats-server)"
    run = Run()
    srv = suite._Servers()
    try:
        suite._start_servers(srv, suite.Options(sizes=TINY, peers=("redis", "nats", "jetstream")), run, lambda s: None)
        assert srv.redis is None and srv.nats is None and srv.nano is not None
        plan = suite._plan(srv, suite.Options(sizes=TINY, peers=("redis", "nats", "jetstream")), run)
    finally:
        srv.stop()
    assert {s["system"] for s in run.skipped} == {"Redis streams", "NATS core", "JetStream"}
    assert all("binary on PATH" in s["reason"] for s in run.skipped)
    assert {p.key for _, systems, _ in plan for p in systems} == {"nanomq-written", "nanomq-durable"}


def test_core_does_not_import_matplotlib() -> None:
    code = ("import sys, nanomq.bench.suite, nanomq.bench.report, nanomq.bench.results, nanomq.bench.calibrate;"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_harness_quick_cli(tmp_path: Path) -> None:
    """The command line itself, peers and scaling off (the suite is covered above)."""
    out = tmp_path / "out"
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "benchmarks/bench_broker.py", "--quick", "--peers", "", "--no-scaling",
                           "--no-plots", "--rounds", "1", "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    text = proc.stdout.decode()
    assert "issue 12's table" in text and "wrote" in text
    assert (out / "results.json").exists()
    assert glob.glob(str(tmp_path / "nanomq-bench-*")) == []
