"""Unit tests of the CI gate's logic (nanomq.bench.stats, budgets, gate, outputs, the nanomq-bench CLI):
statistics, the decision, confirmation by a rerun, and every output. No broker and no timing: the
runs are built from numbers."""

from __future__ import annotations

import json
import math
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("hdrh", reason="the bench extra (hdrhistogram) is not installed")
pytest.importorskip("scipy", reason="the bench extra (scipy) is not installed")

from nanomq.bench import budgets, gate, measure, outputs, stats  # noqa: E402
from nanomq.bench.hist import Histogram  # noqa: E402
from nanomq.bench.results import Figure, Run  # noqa: E402
from nanomq.cli import bench as cli  # noqa: E402

PCTS = ("p1", "p5", "p10", "p25", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean", "min")


def _lat(fid: str, p10s: list[float], unit: str = "us", calibration: bool = False) -> Figure:
    h = Histogram()
    h.record_many(int(v * 1000) for v in p10s)
    rps = [{k: v * (1.0 if k in ("p1", "p5", "p10") else 1.5) for k in PCTS} | {"count": 100.0} for v in p10s]
    return Figure(fid, fid, "NanoMQ written", fid.split("/")[0], unit, sorted(p10s)[len(p10s) // 2] * 1.5,
                  [r["p50"] for r in rps], "p50", False, rps[0], rps, h.encode())


def _val(fid: str, vals: list[float], higher: bool = False, unit: str = "us/record", **extra: list[float]) -> Figure:
    return Figure(fid, fid, "NanoMQ written", fid.split("/")[0], unit, sorted(vals)[len(vals) // 2], list(vals),
                  "value", higher, extra=dict(extra))


def _run(call: float = 100.0, cpu: float = 50.0, *, spread: float = 0.02, seed: int = 1, rounds: int = 6,
         e2e_ratio: float = 10.0, batch_rate: float = 100_000.0, rss: float = 30.0) -> Run:
    """A gate-profile run whose figures scatter by ``spread`` around the given centres."""
    rng = random.Random(seed)

    def around(x: float) -> list[float]:
        return [x * (1 + rng.gauss(0, spread)) for _ in range(rounds)]

    run = Run(meta={"date_utc": f"2026-12-0{seed % 9 + 1}T00:00:00Z", "rounds": rounds,
                    "load1": {"samples": [1.0, 2.0], "min": 1.0, "max": 2.0, "median": 1.5},
                    "target": {"address": "127.0.0.1:1"}, "seconds": 1.0})
    run.add(_lat("calib/rtt_paced", around(20.0)), calibration=True)
    run.add(_lat("calib/rtt_b2b", around(10.0)), calibration=True)
    run.add(_lat("calib/loop_rtt", around(10.0)), calibration=True)
    run.add(_lat("acked1024/written/call", around(call)))
    run.add(_val("acked1024/written/server_cpu", around(cpu)))
    e2e = _lat("e2e1000/written/latency", around(e2e_ratio * 20.0))  # p50 = 1.5 x: / rtt_paced p50 (30)
    run.add(e2e)
    for fid in ("batch64/written/rate", "batch1024/written/rate", "batch1024/durable/rate"):
        rates = around(batch_rate)
        run.add(_val(fid, rates, True, "records/s", publish_rate=rates))
    run.add(_val("broker/rss", [rss], unit="MB"))
    run.add(_val("broker/idle_cpu", [0.0], unit="%"))
    return run


BUDGETS = {"broker": {"e2e_p50_written_ratio_vs_raw_rtt": 2.0, "publish_batch256_64b_records_per_s": 1_000_000,
                      "publish_batch256_1k_records_per_s": 500_000, "publish_batch256_1k_durable_records_per_s": 300_000,
                      "idle_rss_mb": 100, "idle_cpu_pct": 1.0}}


# ---------------------------------------------------------------- statistics


def test_shift_is_the_ratio_of_medians_with_an_interval_around_it() -> None:
    base = [100.0, 101.0, 99.0, 102.0, 98.0, 100.5]
    cur = [x * 1.25 for x in base]
    ci = stats.shift_ci(cur, base)
    assert ci.estimate == pytest.approx(1.25)
    assert ci.low <= 1.25 <= ci.high and ci.low > 1.15 and ci.high < 1.35
    assert stats.shift_ci(cur, base) == ci  # seeded: the same runs give the same interval
    same = stats.shift_ci(base, base)
    assert same.estimate == pytest.approx(1.0) and same.low < 1.0 < same.high


def test_shift_of_ratios_to_calibrations() -> None:
    # The figure doubles but so does its calibration: no shift.
    ci = stats.shift_ci([200.0, 210, 190], [100.0, 105, 95], current_cal=[20.0, 20, 20], baseline_cal=[10.0, 10, 10])
    assert ci.estimate == pytest.approx(1.0)
    assert stats.headline([4.0, 6.0, 5.0], [2.0, 2.0]) == pytest.approx(2.5)


def test_shift_without_rounds_is_unknown_and_nan_rounds_are_ignored() -> None:
    assert not stats.shift_ci([], [1.0]).known
    assert not stats.shift_ci([1.0], [float("nan")]).known
    ci = stats.shift_ci([2.0, float("nan"), 2.0], [1.0, None, 1.0])  # type: ignore[list-item]
    assert ci.estimate == pytest.approx(2.0)
    one = stats.shift_ci([3.0], [1.5])
    assert one.known and one.low == one.high == pytest.approx(2.0)


def test_mann_whitney_one_sided() -> None:
    base = [100.0, 101, 99, 102, 98, 100.5]
    assert stats.mann_whitney([x + 20 for x in base], base, worse="greater") < 0.01
    assert stats.mann_whitney([x + 20 for x in base], base, worse="less") > 0.9
    assert math.isnan(stats.mann_whitney([], base, worse="greater"))
    with pytest.raises(ValueError):
        stats.mann_whitney(base, base, worse="bigger")


# ---------------------------------------------------------------- budgets


def test_budget_verdicts_meets_misses_unclear_not_measured() -> None:
    run = _run(e2e_ratio=10.0, batch_rate=2_000_000.0)
    by = {r.key: r for r in budgets.evaluate(run, BUDGETS)}
    assert by["e2e_p50_written_ratio_vs_raw_rtt"].verdict == "misses"
    assert by["e2e_p50_written_ratio_vs_raw_rtt"].value == pytest.approx(10.0, rel=0.1)
    assert by["publish_batch256_64b_records_per_s"].verdict == "meets"
    assert by["idle_rss_mb"].verdict == "meets" and by["idle_cpu_pct"].verdict == "meets"
    near = _run()
    rates = [0.8e6, 1.2e6, 0.9e6, 1.1e6, 1.0e6, 1.05e6]
    near.add(_val("batch64/written/rate", rates, True, "records/s", publish_rate=rates))
    close = {r.key: r for r in budgets.evaluate(near, BUDGETS)}
    assert close["publish_batch256_64b_records_per_s"].verdict == "unclear"
    del run.figures["batch1024/durable/rate"]
    gone = {r.key: r for r in budgets.evaluate(run, BUDGETS)}
    assert gone["publish_batch256_1k_durable_records_per_s"].verdict == "not measured"
    assert "not measured" in gone["publish_batch256_1k_durable_records_per_s"].text()
    assert "budget <=" in by["e2e_p50_written_ratio_vs_raw_rtt"].text()


def test_only_budgets_the_table_sets_are_judged() -> None:
    assert [r.key for r in budgets.evaluate(_run(), {"broker": {"idle_rss_mb": 100}})] == ["idle_rss_mb"]
    assert "broker" in budgets.load_budgets()  # the repository's spec/budgets.toml


# ---------------------------------------------------------------- the decision


def _opts(**kw: object) -> gate.GateOptions:
    return gate.GateOptions(**kw)  # type: ignore[arg-type]


def test_unchanged_figures_pass_and_a_25_percent_slowdown_is_suspect() -> None:
    base = _run(seed=1)
    same = gate.evaluate(_run(seed=2), base, None, _opts())
    assert {c.id: c.status for c in same if c.kind == "regression"} == {"publish_rtt_1k_p10": "ok"}
    slow = gate.evaluate(_run(call=125.0, cpu=62.5, seed=3), base, None, _opts(metrics=gate.CANDIDATES))
    reg = {c.id: c for c in slow if c.kind == "regression"}
    assert reg["publish_rtt_1k_p10"].status == "suspect" and reg["broker_cpu_1k"].status == "suspect"
    assert reg["publish_rtt_1k_p10"].worse_shift == pytest.approx(1.25, rel=0.05)
    assert reg["publish_rtt_1k_p10"].p_value < 0.01
    fast = gate.evaluate(_run(call=70.0, seed=4), base, None, _opts())
    assert {c.id: c.status for c in fast if c.kind == "regression"}["publish_rtt_1k_p10"] == "improved"


def test_a_small_shift_within_the_tolerance_is_not_suspect_even_if_significant() -> None:
    base = _run(seed=1, spread=0.001)
    cur = _run(call=105.0, seed=2, spread=0.001)
    reg = {c.id: c for c in gate.evaluate(cur, base, None, _opts()) if c.kind == "regression"}
    assert reg["publish_rtt_1k_p10"].shift is not None and reg["publish_rtt_1k_p10"].shift.low > 1.0
    assert reg["publish_rtt_1k_p10"].status == "ok"
    tight = {c.id: c for c in gate.evaluate(cur, base, None, _opts(tolerance=0.02)) if c.kind == "regression"}
    assert tight["publish_rtt_1k_p10"].status == "suspect"


def test_a_large_but_insignificant_shift_is_not_suspect() -> None:
    base = _run(seed=1, spread=0.6)
    cur = _run(call=120.0, seed=2, spread=0.6)
    reg = {c.id: c for c in gate.evaluate(cur, base, None, _opts()) if c.kind == "regression"}
    assert reg["publish_rtt_1k_p10"].status in ("ok", "improved")


def test_throughput_orientation_higher_is_better() -> None:
    m = gate.Metric("rate", "rate", "batch1024/written/rate", "value", True, "records/s", tolerance=0.1)
    base = _run(seed=1)
    slow = gate.evaluate(_run(batch_rate=75_000.0, seed=2), base, None, _opts(metrics=(m,)))
    (c,) = [c for c in slow if c.kind == "regression"]
    assert c.status == "suspect" and c.worse_shift == pytest.approx(1 / 0.75, rel=0.05)


def test_normalize_compares_ratios_to_the_calibration() -> None:
    base = _run(seed=1)
    cur = _run(call=125.0, seed=2)
    for fid in ("calib/rtt_b2b",):  # the machine got 25 % slower on everything
        f = cur.calibrations[fid]
        f.round_percentiles = [{k: v * 1.25 if k != "count" else v for k, v in rp.items()}
                               for rp in f.round_percentiles or []]
    absolute = {c.id: c.status for c in gate.evaluate(cur, base, None, _opts()) if c.kind == "regression"}
    ratio = {c.id: c.status for c in gate.evaluate(cur, base, None, _opts(normalize=True)) if c.kind == "regression"}
    assert absolute["publish_rtt_1k_p10"] == "suspect" and ratio["publish_rtt_1k_p10"] == "ok"


def test_confirmation_by_rerun() -> None:
    base = _run(seed=1)
    first = gate.evaluate(_run(call=130.0, seed=2), base, None, _opts())
    again_slow = gate.evaluate(_run(call=130.0, seed=3), base, None, _opts())
    again_fine = gate.evaluate(_run(seed=4), base, None, _opts())
    failed = {c.id: c.final for c in gate.decide(list(first), again_slow) if c.kind == "regression"}
    assert failed == {"publish_rtt_1k_p10": "fail"}
    first = gate.evaluate(_run(call=130.0, seed=2), base, None, _opts())
    flaky = {c.id: c for c in gate.decide(first, again_fine) if c.kind == "regression"}
    assert flaky["publish_rtt_1k_p10"].final == "unconfirmed" and "rerun: ok" in flaky["publish_rtt_1k_p10"].note
    first = gate.evaluate(_run(call=130.0, seed=2), base, None, _opts())
    assert {c.id: c.final for c in gate.decide(first, None)}["publish_rtt_1k_p10"] == "fail"


def test_run_gate_measures_again_only_for_a_suspect() -> None:
    base = _run(seed=1)
    calls: list[int] = []

    def passes(*runs: Run):  # type: ignore[no-untyped-def]
        def measure(n: int) -> Run:
            calls.append(n)
            return runs[n - 1]
        return measure

    ok = gate.run_gate(passes(_run(seed=2)), base, BUDGETS, _opts())
    assert ok.passed and calls == [1] and len(ok.passes) == 1
    calls.clear()
    flaky = gate.run_gate(passes(_run(call=140.0, seed=2), _run(seed=3)), base, BUDGETS, _opts())
    assert flaky.passed and calls == [1, 2] and flaky.rerun_checks
    calls.clear()
    bad = gate.run_gate(passes(_run(call=140.0, seed=2), _run(call=140.0, seed=3)), base, BUDGETS, _opts())
    assert not bad.passed and [c.id for c in bad.failed] == ["publish_rtt_1k_p10"]
    calls.clear()
    hasty = gate.run_gate(passes(_run(call=140.0, seed=2)), base, BUDGETS, _opts(confirm=False))
    assert not hasty.passed and calls == [1]


def test_a_gated_figure_that_was_not_measured_fails() -> None:
    cur = _run(seed=2)
    del cur.figures["acked1024/written/call"]
    res = gate.decide(gate.evaluate(cur, _run(seed=1), None, _opts()), None)
    assert {c.id: c.final for c in res if c.kind == "regression"}["publish_rtt_1k_p10"] == "fail"


def test_budgets_known_short_new_misses_and_strict() -> None:
    base = _run(seed=1, rss=30.0)  # misses the e2e and throughput budgets, meets RSS
    cur = _run(seed=2, rss=300.0)  # ... and now RSS too
    checks = {c.id: c for c in gate.evaluate(cur, base, BUDGETS, _opts()) if c.kind == "budget"}
    assert checks["e2e_p50_written_ratio_vs_raw_rtt"].status == "known-short"
    assert checks["idle_rss_mb"].status == "suspect"
    final = {c.id: c.final for c in gate.decide(list(checks.values()), None)}
    assert final["idle_rss_mb"] == "fail" and final["e2e_p50_written_ratio_vs_raw_rtt"] == "pass"
    strict = {c.id: c.status for c in gate.evaluate(cur, base, BUDGETS, _opts(strict_budgets=True)) if c.kind == "budget"}
    assert strict["e2e_p50_written_ratio_vs_raw_rtt"] == "suspect"
    none = [c for c in gate.evaluate(cur, base, BUDGETS, _opts(check_budgets=False)) if c.kind == "budget"]
    assert none == []


def test_reported_figures_never_fail() -> None:
    base = _run(seed=1)
    cur = _run(seed=2, batch_rate=10_000.0)
    checks = gate.decide(gate.evaluate(cur, base, None, _opts()), None)
    rep = {c.id: c for c in checks if c.kind == "reported"}
    assert rep["batch1024/written/rate"].status == "changed" and rep["batch1024/written/rate"].final == "info"
    assert all(c.final != "fail" for c in rep.values())


def test_pool_concatenates_rounds() -> None:
    a, b = _run(seed=1, rounds=3), _run(seed=2, rounds=4)
    p = gate.pool([a, b])
    f = p.get("acked1024/written/call")
    assert f is not None and len(f.rounds) == 7 and len(f.round_percentiles or []) == 7
    assert p.meta["rounds"] == 7 and len(p.meta["pooled_from"]) == 2
    h = f.histogram()
    assert h is not None and h.count == 7
    assert gate.pool([a]) is a
    with pytest.raises(ValueError):
        gate.pool([])


def test_compare_runs_every_common_figure() -> None:
    a, b = _run(seed=1), _run(call=200.0, seed=2)
    checks = gate.compare_runs(a, b)
    by = {c.id: c for c in checks}
    assert by["acked1024/written/call"].worse_shift > 1.3 and by["acked1024/written/call"].status == "changed"
    assert all(c.final == "info" for c in checks)


# ---------------------------------------------------------------- outputs


def _result(slow: bool) -> gate.GateResult:
    base = _run(seed=1)
    cur = _run(call=140.0, seed=2) if slow else _run(seed=2)
    return gate.run_gate(lambda n: cur, base, BUDGETS, _opts())


def test_markdown_junit_json_and_table() -> None:
    bad, good = _result(True), _result(False)
    md = outputs.gate_markdown(bad)
    assert "FAILED" in md and "`publish_rtt_1k_p10`" in md and "| metric |" in md
    assert "passed" in outputs.gate_markdown(good)
    suite = ET.fromstring(outputs.gate_junit(bad).split("?>", 1)[1])
    assert suite.get("failures") == "1" and int(suite.get("tests") or 0) >= 7
    assert [tc.get("name") for tc in suite.iter("testcase") if tc.find("failure") is not None] == ["publish_rtt_1k_p10"]
    doc = bad.as_dict()
    assert doc["passed"] is False and json.loads(json.dumps(doc))["checks"]
    table = outputs.checks_table(bad.checks, ("regression", "budget"))
    assert "FAIL (suspect)" in table and "budget idle_rss_mb" in table
    assert "acked1024/written/call" in outputs.run_table(_run())
    assert "| figure |" in outputs.run_markdown(_run())


def test_html_embeds_the_plots() -> None:
    page = outputs.gate_html(_result(True), [("old", _run(seed=5))])
    assert page.startswith("<!doctype html>") and page.count("src='data:image/png;base64,") == 3
    assert "Regressions" in page and "History" in page
    cmp = outputs.compare_html(gate.compare_runs(_run(seed=1), _run(seed=2)), _run(seed=1), _run(seed=2), ("a", "b"))
    assert "data:image/png;base64," in cmp


# ---------------------------------------------------------------- the CLI


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["run", "--rounds", "0"], ["gate", "--confidence", "1.5"], ["gate", "--tolerance", "-1"],
                 ["run", "--pid", "5"], ["gate", "--no-budgets"], ["compare", str(tmp_path / "a.json"), "b.json"],
                 ["run", "--address", "127.0.0.1:1", "--data-dir", str(tmp_path / "none")],
                 ["run", "--json", "-"], ["frobnicate"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2, argv
    bad = tmp_path / "t.toml"
    bad.write_text('[target]\naddress = "127.0.0.1:1"\ntls_ca = "ca.pem"\n')
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--target", str(bad)])
    assert e.value.code == 2 and "TLS" in capsys.readouterr().err


def test_cli_compare_writes_every_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _run(seed=1).save(a)
    _run(call=150.0, seed=2).save(b)
    code = cli.main(["compare", str(a), str(b), "--json", str(tmp_path / "c.json"), "--markdown",
                     str(tmp_path / "c.md"), "--html", str(tmp_path / "c.html")])
    assert code == 0
    out = capsys.readouterr().out
    assert "acked1024/written/call" in out and "changed" in out
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["schema"] == "nanomq-compare/1" and doc["checks"]
    assert (tmp_path / "c.md").read_text().startswith("## NanoMQ bench")
    assert "data:image/png" in (tmp_path / "c.html").read_text()


# ---------------------------------------------------------------- targets and the slowed broker


def test_targets_are_read_as_the_kit_reads_them(tmp_path: Path) -> None:
    from nanomq.bench.target import REFERENCE_LAUNCH, TargetProblem, describe

    assert describe(None, "", "").launch == REFERENCE_LAUNCH
    t = tmp_path / "t.toml"
    t.write_text('[target]\nlaunch = "mybroker --port {port}"\nready_timeout = 7\n')
    spec = describe(t, "", "")
    assert spec.launch == "mybroker --port {port}" and spec.ready_timeout == 7
    assert describe(t, "127.0.0.1:5", "").address == "127.0.0.1:5"
    assert describe(t, "", "other {port}", 3.0).launch == "other {port}"
    t.write_text('[target]\nlaunchh = "x"\n')
    with pytest.raises(TargetProblem, match="unknown keys"):
        describe(t, "", "")


def test_slow_broker_arguments() -> None:
    from tests import slow_broker

    assert slow_broker.main([]) == 2
    assert slow_broker.main(["--delay-us", "abc"]) == 2
    assert slow_broker.main(["--delay-us", "-1"]) == 2
    from nanomq.broker import connection

    assert slow_broker.main(["--slowdown", "-0.1"]) == 2
    assert slow_broker.main(["--slowdown", "nan"]) == 2
    assert slow_broker.main(["--slowdown", "11"]) == 2
    assert slow_broker.main(["--slow", "0.25"]) == 2
    before = connection.Connection._dispatch
    slow_broker._patch(0)
    slow_broker._patch(0, 0)
    assert connection.Connection._dispatch is before  # delay 0: the broker as it is


def test_the_self_calibrating_slowdown_is_a_share_of_the_connections_own_cycle_at_every_load() -> None:
    from tests.slow_broker import IDLE_NS, MIN_SAMPLES, Slowdown

    def drive(s: Slowdown, own_ns: int, n: int, t: int) -> tuple[int, list[int]]:
        """n back-to-back requests whose own cycle (client and broker, without the delay) is own_ns."""
        cycles = []
        for _ in range(n):
            deadline = s.arrive(t)
            s.done(deadline)  # the spin ends at the deadline
            nxt = deadline + own_ns  # the delay, then the request's own time
            cycles.append(nxt - t)
            t = nxt
        return t, cycles

    s = Slowdown(0.25, [0])
    t, cycles = drive(s, 100_000, MIN_SAMPLES - 1, 0)
    assert s.delay_ns == 0 and cycles == [100_000] * (MIN_SAMPLES - 1)  # nothing before the window holds enough
    t, cycles = drive(s, 100_000, 200, t)
    assert s.delay_ns == 25_000 and cycles[-1] == 125_000  # 25 % of the own cycle, not of the slowed one
    t, cycles = drive(s, 200_000, 200, t)  # a loaded minute: the request takes twice as long
    assert s.delay_ns == 50_000 and cycles[-1] == 250_000  # still 25 %: a fixed delay would be 12.5 % here
    before = s.delay_ns
    t = s.arrive(t + 10 * IDLE_NS)  # an idle gap is not a cycle of a client waiting on the broker
    s.done(t + before)
    assert len(s.cycles) == 128 and max(s.cycles) == 200_000
    spread = [80_000, 120_000] * 100  # noisy cycles: the delay follows their p10, the statistic gated
    for own in spread:
        t, _ = drive(s, own, 1, t)
    assert s.delay_ns == 20_000

    # Another connection's delay inside this one's cycle is not this connection's own time either:
    # two connections slowed at once do not feed on each other.
    added = [0]
    a, b = Slowdown(0.25, added), Slowdown(0.25, added)
    t = 0
    for _ in range(300):
        da = a.arrive(t)
        a.done(da)
        db = b.arrive(da)
        b.done(db)
        t = db + 100_000  # a cycle of a: its delay, b's delay, then 100 µs of its own
    assert a.delay_ns == 25_000


def test_a_reference_target_in_the_same_rounds_is_divided_by_round_by_round() -> None:
    def ab(cand: float, ref: float, seed: int, drift: list[float]) -> Run:
        run = _run(call=cand, seed=seed, spread=0.0, rounds=len(drift))
        f = _lat("ref/acked1024/written/call", [ref * d for d in drift])
        run.add(f)
        g = run.figures["acked1024/written/call"]
        g.round_percentiles = [{k: v * d for k, v in rp.items()} for rp, d in zip(g.round_percentiles or [], drift,
                                                                                   strict=True)]
        return run

    noisy = [1.0, 1.4, 0.8, 1.2, 0.9, 1.3]  # the machine moves both targets together
    base = ab(100.0, 100.0, 1, noisy)
    (m,) = gate.GATED
    num, den = m.samples(base, False)
    assert den is None and num == pytest.approx([1.0] * 6)
    same = {c.id: c for c in gate.evaluate(ab(100.0, 100.0, 2, noisy[::-1]), base, None, _opts())}
    assert same["publish_rtt_1k_p10"].status == "ok" and "reference target" in same["publish_rtt_1k_p10"].label
    slow = {c.id: c for c in gate.evaluate(ab(125.0, 100.0, 3, noisy[::-1]), base, None, _opts())}
    assert slow["publish_rtt_1k_p10"].status == "suspect"
    assert slow["publish_rtt_1k_p10"].worse_shift == pytest.approx(1.25)
    plain = {c.id: c for c in gate.evaluate(_run(seed=4), base, None, _opts())}
    assert plain["publish_rtt_1k_p10"].status == "not measured" and "reference" in plain["publish_rtt_1k_p10"].note


def test_awake_cpus_runs_a_lowest_class_spinner_per_cpu_and_stops_them() -> None:
    import os
    import time

    from nanomq.bench import system

    with system.awake_cpus(2) as pids:
        assert len(pids) == 2
        time.sleep(0.2)
        for pid in pids:
            policy = os.sched_getscheduler(pid)
            assert policy == os.SCHED_IDLE or os.getpriority(os.PRIO_PROCESS, pid) == 19
        w = system.Window.open()
        time.sleep(0.5)
        w.close()
        # the machine's busy share leaves the spinners out (they alone would make it 100 %)
        assert w.busy_pct < 95.0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")  # killed and reaped
    assert system._awake == []


def test_the_gate_measures_as_its_baseline_was_and_refuses_to_pool_unlike_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _run(seed=1), _run(seed=2)
    a.meta["profile"] = {"works": [], "awake_cpus": True}
    b.meta["profile"] = {"works": [], "awake_cpus": False}
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    with pytest.raises(SystemExit) as e:
        cli.main(["gate", "--address", "127.0.0.1:1", "--baseline", str(tmp_path / "a.json"),
                  "--baseline", str(tmp_path / "b.json")])
    assert e.value.code == 2 and "kept awake" in capsys.readouterr().err
    seen: list[bool] = []

    def fake_measure(spec: object, args: object, profile: measure.Profile, *rest: object) -> object:
        seen.append(profile.awake_cpus)
        raise RuntimeError("not measured here")

    import nanomq.cli.bench as clib

    orig = clib._measure
    clib._measure = fake_measure  # type: ignore[assignment]
    try:
        assert cli.main(["gate", "--address", "127.0.0.1:1", "--no-budgets", "--baseline",
                         str(tmp_path / "b.json")]) == 1
    finally:
        clib._measure = orig
    assert seen == [False]  # the baseline's setting, not the gate profile's default (on)
    assert measure.GATE.awake_cpus


def test_awake_cpus_spinners_stop_on_their_own_when_their_parent_is_killed(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    code = ("import time; from nanomq.bench import system\n"
            "with system.awake_cpus(1) as pids:\n"
            "    print(pids[0], flush=True); time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    spinner = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)  # no finally runs
    parent.wait()
    for _ in range(100):
        try:
            state = Path(f"/proc/{spinner}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            break  # gone (reaped by init)
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        os.kill(spinner, signal.SIGKILL)
        raise AssertionError("the spinner outlived its parent")
