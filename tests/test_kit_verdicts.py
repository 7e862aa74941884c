"""The kit's verdicts point at the right rule, and a case that cannot measure cannot pass.

Unit tests of the runner (synthetic cases, no broker), and kit runs against deliberately broken
brokers (tests/broken_broker.py) for the defects that only show against a target.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conformance.registry import Case, Context, Failed, check
from conformance.rules import Rule
from conformance.runner import run_cases, run_one

ROOT = Path(__file__).resolve().parents[1]
RULES = {r: Rule(r, "MUST", "text", "protocol.md") for r in ("R-1", "R-2", "R-3")}


def _ctx() -> Context:
    return Context(SimpleNamespace(can_crash=True, created_topics=[]), 0, 7)  # type: ignore[arg-type]


def _case(fn, rules=("R-1", "R-2", "R-3"), layer="wire", exclusive=False) -> Case:  # type: ignore[no-untyped-def]
    return Case(f"t.{fn.__name__}", "synthetic", layer, tuple(rules), fn, None, False, exclusive)


def test_an_unexpected_exception_fails_only_the_rules_of_the_running_step() -> None:
    def case(ctx: Context) -> None:
        with ctx.step("R-1"):
            check(True, "fine")
        with ctx.step("R-2"):
            raise TimeoutError("no frame from the broker in time")

    r = run_one(_case(case), _ctx(), RULES)
    assert r.verdict == "FAILED" and r.failed_rules == ("R-2",)
    assert "TimeoutError" in r.message


def test_check_without_rules_takes_those_of_the_step() -> None:
    def case(ctx: Context) -> None:
        with ctx.step("R-3"):
            check(False, "wrong")

    r = run_one(_case(case), _ctx(), RULES)
    assert r.failed_rules == ("R-3",)


def test_explicit_rules_win_over_the_step() -> None:
    def case(ctx: Context) -> None:
        with ctx.step("R-3"):
            raise Failed("setup publish failed", ("R-1",))

    assert run_one(_case(case), _ctx(), RULES).failed_rules == ("R-1",)


def test_outside_every_step_all_rules_of_the_case_fail_and_the_message_says_so() -> None:
    def case(ctx: Context) -> None:
        raise ConnectionResetError("reset")

    r = run_one(_case(case), _ctx(), RULES)
    assert r.failed_rules == ("R-1", "R-2", "R-3") and "outside any step" in r.message


def test_concurrent_cases_keep_their_order_and_own_rngs() -> None:
    seen: list[str] = []

    def slow(ctx: Context) -> None:
        time.sleep(0.3)
        seen.append(f"slow:{ctx.rng.random()}")

    def fast(ctx: Context) -> None:
        seen.append(f"fast:{ctx.rng.random()}")

    cases = [_case(slow), _case(fast)]
    run = run_cases(cases, _ctx(), RULES, jobs=2)
    assert [r.case.id for r in run.results] == ["t.slow", "t.fast"]
    assert seen[0].startswith("fast")  # ran concurrently
    again: list[str] = []
    seen_before = list(seen)
    seen.clear()
    run_cases(cases, _ctx(), RULES, jobs=1)
    again = sorted(seen)
    assert again == sorted(seen_before)  # each case's RNG depends on the seed and its id only


def test_fail_fast_stops_after_the_first_failure() -> None:
    def bad(ctx: Context) -> None:
        raise Failed("no", ("R-1",))

    def good(ctx: Context) -> None:
        pass

    run = run_cases([_case(bad, exclusive=True), _case(good, exclusive=True)], _ctx(), RULES, fail_fast=True)
    assert [r.case.id for r in run.results] == ["t.bad"]


def test_crash_cases_are_skipped_without_a_launch_command_even_if_they_need_a_capability() -> None:
    from nanomq.protocol import Capability

    c = Case("t.crash", "x", "crash", ("R-1",), lambda ctx: None, Capability.CONSUMER_GROUPS)
    ctx = Context(SimpleNamespace(can_crash=False, created_topics=[]), 0, 1)  # type: ignore[arg-type]
    r = run_one(c, ctx, RULES)
    assert r.verdict == "INFORMATIONAL" and "no launch command" in r.message


def _kit(tmp_path: Path, fault: str, *args: str) -> tuple[int, dict, str, float]:
    out = tmp_path / "report"
    launch = f"{{python}} -m tests.broken_broker --fault {fault} --port {{port}} --data-dir {{data_dir}} --log-level error"
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "conformance", "--launch", launch, "--report-dir", str(out),
                        "--seed", "3", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    index = json.loads((out / "index.json").read_text()) if (out / "index.json").exists() else {}
    return p.returncode, index, p.stdout + p.stderr, time.monotonic() - t0


def test_a_budget_measured_on_no_samples_fails(tmp_path: Path) -> None:
    code, index, log, _ = _kit(tmp_path, "no-deliver", "--case", "budgets.e2e-latency")
    assert code == 1, log
    (c,) = index["cases"]
    assert c["verdict"] == "FAILED" and "no latency figure" in c["message"], log


@pytest.mark.slow
def test_a_crash_case_that_finds_lost_records_fails_at_once_naming_them(tmp_path: Path) -> None:
    code, index, log, took = _kit(tmp_path, "drop", "--case", "crash.written", "--crash-iterations", "1")
    assert code == 1, log
    (c,) = index["cases"]
    assert c["verdict"] == "FAILED" and "lost after the restart: ids" in c["message"], log
    assert "NMQ-SEM-3-2" in c["failed_rules"]
    assert c["duration_s"] < 20, f"took {c['duration_s']} s: the case waited for a timeout ({took:.0f} s in all)"


def test_a_bogus_rule_in_errors_is_a_should_failure_that_does_not_stop_the_case(tmp_path: Path) -> None:
    code, index, log, _ = _kit(tmp_path, "bad-rule", "--case", "wire.subscribe.id", "--strict")
    assert code == 1, log
    (c,) = index["cases"]
    assert c["verdict"] == "NON-STRICT" and c["failed_rules"] == ["NMQ-8-5"], log
    assert index["rules"]["NMQ-4.4-4"]["verdict"] == "OK"  # the MUST checks of the case all ran


def test_a_capability_the_target_declares_must_be_announced(tmp_path: Path) -> None:
    t = tmp_path / "t.toml"
    t.write_text('[target]\nlaunch = "{python} -m nanomq.cli.broker --port {port} --data-dir {data_dir} '
                 '--compression none --log-segment-size 1MB"\n[target.capabilities]\nCOMPRESSION_LZ4 = true\n')
    p = subprocess.run([sys.executable, "-m", "conformance", "--target", str(t), "--case", "wire.ping",
                        "--report-dir", str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "does not announce COMPRESSION_LZ4" in p.stderr, p.stdout + p.stderr


def _restarting(fn, layer="crash"):  # type: ignore[no-untyped-def]
    return Case(f"t.{fn.__name__}", "synthetic", layer, ("R-1",), fn, None, False, True, True)


def test_cases_that_restart_run_on_other_instances_alongside_and_budgets_run_last() -> None:
    """With ``side``, restarting cases run on the instance of their lane, at the same time as the
    others on the first; the budgets layer waits for every lane; results keep the case order."""
    ran: list[tuple[str, object, float, float]] = []

    def record(name: str, sleep: float = 0.0):  # type: ignore[no-untyped-def]
        def fn(ctx: Context) -> None:
            t0 = time.monotonic()
            time.sleep(sleep)
            ran.append((name, ctx.target, t0, time.monotonic()))
        fn.__name__ = name
        return fn

    main, crash_t, storage_t = (SimpleNamespace(can_crash=True, created_topics=[], n=n) for n in range(3))
    ctx = Context(main, 0, 7)  # type: ignore[arg-type]
    cases = [_case(record("w1", 0.3)), _restarting(record("rate"), layer="wire"), _case(record("w2", 0.3)),
             _restarting(record("c1", 0.3)), _restarting(record("s1", 0.3), layer="storage"),
             _case(record("b1"), layer="budgets", exclusive=True)]
    lanes: list[str] = []

    def side(lane: str) -> Context:
        lanes.append(lane)
        return Context({"crash": crash_t, "storage": storage_t}[lane], 0, 7)  # type: ignore[arg-type]

    t0 = time.monotonic()
    run = run_cases(cases, ctx, RULES, jobs=2, side=side)
    took = time.monotonic() - t0
    assert [r.case.id for r in run.results] == [f"t.{n}" for n in ("w1", "rate", "w2", "c1", "s1", "b1")]
    where = {name: target.n for name, target, _, _ in ran}  # type: ignore[attr-defined]
    assert where == {"w1": 0, "w2": 0, "rate": 1, "c1": 1, "s1": 2, "b1": 0}
    assert sorted(lanes) == ["crash", "storage"]
    assert took < 0.8  # the three 0.3 s lanes ran at the same time, not one after the other (0.9 s+)
    times = {name: (a, b) for name, _, a, b in ran}
    assert times["b1"][0] >= max(b for _, (a, b) in times.items() if _ != "b1")  # budgets after every lane
    assert [n for n, _, _, _ in ran if where[n] == 1] == ["rate", "c1"]  # a lane keeps the case order


def test_a_lane_without_an_instance_runs_on_the_first_after_the_others() -> None:
    order: list[str] = []

    def w(ctx: Context) -> None:
        time.sleep(0.1)
        order.append("w")

    def c(ctx: Context) -> None:
        order.append("c")

    run = run_cases([_case(w), _restarting(c)], _ctx(), RULES, jobs=2, side=lambda lane: None)
    assert [r.verdict for r in run.results] == ["OK", "OK"] and order == ["w", "c"]


def test_a_lane_whose_instance_raises_still_runs_its_cases() -> None:
    def c(ctx: Context) -> None:
        pass

    def broken(lane: str) -> Context:
        raise RuntimeError("bug")

    run = run_cases([_restarting(c)], _ctx(), RULES, jobs=2, side=broken)
    assert [r.verdict for r in run.results] == ["OK"]


def test_a_budget_on_records_larger_than_announced_does_not_apply() -> None:
    from conformance.cases_budgets import _fits

    small = Context(SimpleNamespace(can_crash=True, created_topics=[]), 0, 7, max_payload=1000,  # type: ignore[arg-type]
                    max_batch=256)
    assert _fits("publish_batch256_64b_records_per_s", small)
    assert not _fits("publish_batch256_1k_records_per_s", small)
    few = Context(SimpleNamespace(can_crash=True, created_topics=[]), 0, 7, max_batch=64)  # type: ignore[arg-type]
    assert not _fits("publish_batch256_64b_records_per_s", few) and _fits("e2e_p50_written_ratio_vs_raw_rtt", few)
