"""Layer (e): latency and throughput against spec/budgets.toml.

Reported as INFORMATIONAL unless the kit runs with ``--enforce-budgets``; then a figure worse
than its budget is FAILED. Latency is measured open-loop (each record carries its scheduled send
time, so a stall shows as latency instead of slowing the sender down), percentiles from the full
sample set.
"""

from __future__ import annotations

import struct
import threading
import time

from conformance.registry import Context, Failed, case
from nanomq.protocol import Ack, Deliver, Publish, PublishAck, RecordBatch, Start, Subscribed


def _pct(values: list[int], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return float(s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))])


def _budget(ctx: Context, key: str, value: float, higher_is_better: bool) -> str:
    limit = ctx.budgets.get("broker", {}).get(key)
    if limit is None:
        return f"{key}={value:,.1f} (no budget)"
    ok = value >= limit if higher_is_better else value <= limit
    text = f"{key}={value:,.1f} (budget {limit:,})"
    if not ok and ctx.enforce_budgets:
        raise Failed(f"{text}: over budget", (f"BUDGET:{key}",))
    return text + ("" if ok else " OVER BUDGET")


@case("budgets.e2e-latency", "end-to-end latency, ack written, 64 B, 1000 records/s open loop", layer="budgets",
      rules=())
def e2e_latency(ctx: Context) -> None:
    topic = ctx.topic("lat")
    rate, seconds = 1000, 2.0
    n = int(rate * seconds)
    lat: list[int] = []
    with ctx.client() as pub, ctx.client() as sub:
        s = sub.subscribe(topic, Start.LATEST, 0, 1 << 30)
        assert isinstance(s, Subscribed)
        done = threading.Event()

        def receive() -> None:
            while len(lat) < n:
                try:
                    f = sub.recv(5.0)
                except TimeoutError:
                    break
                if isinstance(f, Deliver):
                    now = time.monotonic_ns()
                    lat.extend(now - struct.unpack_from("<q", r.payload)[0] for r in f.records)
            done.set()

        th = threading.Thread(target=receive)
        th.start()
        start = time.monotonic_ns()
        for i in range(n):
            due = start + i * 1_000_000_000 // rate
            while time.monotonic_ns() < due:
                time.sleep(max(0.0, (due - time.monotonic_ns()) / 1e9 - 0.0002))
            payload = struct.pack("<q", due) + bytes(56)
            pub.send(Publish(i + 1, topic, Ack.WRITTEN, RecordBatch.from_payloads([payload])))
            f = pub.recv_response()
            assert isinstance(f, PublishAck)
        done.wait(10)
        th.join(10)
    p50, p99, p999 = (_pct(lat, p) / 1000 for p in (50, 99, 99.9))
    ctx.note(f"{len(lat)} samples: p50 {p50:.1f} µs, p99 {p99:.1f} µs, p99.9 {p999:.1f} µs "
             "(blocking sockets, publisher and subscriber in the kit's process)")
    ctx.note(_budget(ctx, "kit_e2e_p50_us", p50, False))


@case("budgets.publish-throughput", "publish throughput, ack written, batches of max_batch, 64 B and 1 KiB",
      layer="budgets", rules=())
def publish_throughput(ctx: Context) -> None:
    for size, key in ((64, "kit_publish_64b_per_s"), (1024, "kit_publish_1k_per_s")):
        topic = ctx.topic(f"thr{size}")
        with ctx.client() as w:
            assert w.server is not None
            nb = w.server.max_batch
            batch = RecordBatch.from_payloads([bytes(size)] * nb)
            rounds, inflight = 60, 8
            t0 = time.perf_counter()
            rid = 0
            for _ in range(rounds):
                w.send(*[Publish(rid + k + 1, topic, Ack.WRITTEN, batch) for k in range(inflight)])
                rid += inflight
                for _ in range(inflight):
                    f = w.recv_response()
                    assert isinstance(f, PublishAck)
            rate = rounds * inflight * nb / (time.perf_counter() - t0)
        ctx.note(_budget(ctx, key, rate, True) + " records/s")
