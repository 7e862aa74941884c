"""Layer (e): latency and throughput against spec/budgets.toml.

Reported as INFORMATIONAL unless the kit runs with ``--enforce-budgets``; then a figure whose whole
confidence interval is worse than its budget is FAILED. The figures are measured and judged by the
same code as ``nanomq-bench`` and its CI gate (:mod:`nanomq.bench.measure`,
:mod:`nanomq.bench.budgets`), so the kit and the gate cannot disagree about a budget: open-loop
latency with the schedule in each record (a stall shows as latency instead of slowing the sender
down), HdrHistogram percentiles, ratios to a raw socket round trip measured in the same run, the
median of repeated rounds with a bootstrap interval. That code needs the ``bench`` extra
(``pip install 'nanomq[bench]'``); without it these cases are skipped and say so.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from conformance.registry import Context, Failed, Skipped, case


def _measure(ctx: Context, kinds: tuple[str, ...], keys: tuple[str, ...]) -> list[Any]:
    try:
        from nanomq.bench import budgets, measure
        from nanomq.bench.target import BenchTarget
    except ImportError as e:
        raise Skipped(f"the budget layer measures with nanomq.bench, which needs the bench extra "
                      f"(pip install 'nanomq[bench]'): {e}") from None
    # A budget defined on records or batches larger than the target announces cannot apply to it:
    # said so, and not measured (which would be a failure: zero samples is never a pass)
    inapplicable = [k for k in keys if not _fits(k, ctx)]
    for k in inapplicable:
        ctx.note(f"not applicable: {k} is defined on records or batches larger than the target announces "
                 f"(max_payload {ctx.max_payload}, max_batch {ctx.max_batch})")
    keys = tuple(k for k in keys if k not in inapplicable)
    profile = budgets.PROFILE
    profile = replace(profile, works=tuple(w for w in profile.works if w.kind in kinds
                                           and w.size <= ctx.max_payload
                                           and (w.kind != "batch" or w.batch <= ctx.max_batch)),
                      idle_seconds=profile.idle_seconds if "idle_rss_mb" in keys else 0.0)
    run = measure.measure(BenchTarget.wrap(ctx.target), profile)
    which = tuple(b for b in budgets.BROKER if b.key in keys)
    results = budgets.evaluate(run, ctx.budgets, which=which)
    for f in run.meta.get("failures", []):
        ctx.note(f"round {f['round']} of {f['workload']} failed: {f['error'][:300]}")
    for s in run.skipped:
        ctx.note(f"not measured: {s['system']}: {s['reason']}")
    load = run.meta.get("load1", {})
    ctx.note(f"{profile.rounds} rounds, 1-min load average {load.get('min')}-{load.get('max')} "
             "(nanomq.bench: separate publisher and subscriber processes, nanomq clients)")
    return results


def _fits(key: str, ctx: Context) -> bool:
    """Whether the workload a budget key is defined on fits the target's announced limits (the
    keys name their record size, ``64b`` or ``1k``, and their batch, ``batch256``)."""
    size = 1024 if "_1k" in key else 64 if "_64b" in key else 0
    batch = 256 if "batch256" in key else 0
    return size <= ctx.max_payload and batch <= ctx.max_batch


def _judge(ctx: Context, results: list[Any], what: str) -> None:
    for r in results:
        ctx.note(r.text())
    unmeasured = [r for r in results if r.verdict == "not measured"]
    if unmeasured:
        # Too few samples is no measurement: never a pass (zero samples would give p50 = 0).
        raise Failed(f"{what}: no {', '.join(r.key for r in unmeasured)} figure could be given (a workload "
                     "measured nothing)", tuple(f"BUDGET:{r.key}" for r in unmeasured))
    missed = [r for r in results if r.verdict == "misses"]
    if missed and ctx.enforce_budgets:
        raise Failed("over budget: " + "; ".join(r.text() for r in missed), tuple(f"BUDGET:{r.key}" for r in missed))


@case("budgets.e2e-latency", "end-to-end latency, ack written, 64 B, 1000 records/s open loop, / raw socket RTT",
      layer="budgets", rules=())
def e2e_latency(ctx: Context) -> None:
    results = _measure(ctx, ("e2e",), ("e2e_p50_written_ratio_vs_raw_rtt",))
    if results and results[0].verdict == "not measured":
        raise Failed("no latency figure: the subscriber received none of the records published at 1000/s",
                     ("BUDGET:e2e_p50_written_ratio_vs_raw_rtt",))
    _judge(ctx, results, "e2e latency")


@case("budgets.publish-throughput", "publish throughput, batches of 256: 64 B and 1 KiB ack written, 1 KiB ack "
      "durable; idle RSS and CPU", layer="budgets", rules=())
def publish_throughput(ctx: Context) -> None:
    results = _measure(ctx, ("batch",), ("publish_batch256_64b_records_per_s", "publish_batch256_1k_records_per_s",
                                         "publish_batch256_1k_durable_records_per_s", "idle_rss_mb", "idle_cpu_pct"))
    if ctx.target.broker_pid() is None:
        results = [r for r in results if r.key not in ("idle_rss_mb", "idle_cpu_pct")]
    _judge(ctx, results, "publish throughput")
