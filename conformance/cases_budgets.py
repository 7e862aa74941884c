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
        raise ValueError("a percentile of no samples")
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
    if len(lat) < n // 2:
        # Too few samples is no measurement: never a pass (and zero samples would give p50 = 0).
        raise Failed(f"only {len(lat)} of {n} records published at {rate}/s came back to the subscriber; no latency "
                     "figure can be given", ("BUDGET:e2e_p50_written_ratio_vs_raw_rtt",))
    p50, p99, p999 = (_pct(lat, p) / 1000 for p in (50, 99, 99.9))
    rtt = _raw_rtt_us(rate, 1000)
    if rtt <= 0:
        raise Failed("the raw socket calibration gave no round trip", ("BUDGET:e2e_p50_written_ratio_vs_raw_rtt",))
    ctx.note(f"{len(lat)} samples: p50 {p50:.1f} µs, p99 {p99:.1f} µs, p99.9 {p999:.1f} µs "
             "(blocking sockets, publisher and subscriber threads in the kit's process)")
    ctx.note(f"calibration: raw Python socket round trip between two processes, paced at the same rate: "
             f"p50 {rtt:.1f} µs")
    ctx.note(_budget(ctx, "e2e_p50_written_ratio_vs_raw_rtt", p50 / rtt, False))


_ECHO = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    d = c.recv(64)
    if not d:
        break
    c.sendall(d)
"""


def _raw_rtt_us(rate: int, n: int) -> float:
    """p50 of a paced raw TCP ping-pong (64 B) with an echo process: the same wake-ups per hop
    as the latency test, without any broker."""
    import socket
    import subprocess
    import sys

    echo = subprocess.Popen([sys.executable, "-c", _ECHO], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None
        port = int(echo.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rtts = []
            for _ in range(n):
                t = time.perf_counter_ns()
                c.sendall(bytes(64))
                got = 0
                while got < 64:
                    got += len(c.recv(64 - got))
                rtts.append(time.perf_counter_ns() - t)
                time.sleep(1 / rate)
        return _pct(rtts, 50) / 1000
    finally:
        echo.kill()
        echo.wait()


@case("budgets.publish-throughput", "publish throughput, batches of max_batch pipelined 8 deep: 64 B and 1 KiB "
      "ack written, 1 KiB ack durable", layer="budgets", rules=())
def publish_throughput(ctx: Context) -> None:
    for size, ack, key in ((64, Ack.WRITTEN, "publish_batch256_64b_records_per_s"),
                           (1024, Ack.WRITTEN, "publish_batch256_1k_records_per_s"),
                           (1024, Ack.DURABLE, "publish_batch256_1k_durable_records_per_s")):
        topic = ctx.topic(f"thr{size}")
        with ctx.client() as w:
            assert w.server is not None
            nb = w.server.max_batch
            batch = RecordBatch.from_payloads([bytes(size)] * nb)
            rounds, inflight = (60, 8) if ack == Ack.WRITTEN else (15, 8)
            t0 = time.perf_counter()
            rid = 0
            for _ in range(rounds):
                w.send(*[Publish(rid + k + 1, topic, ack, batch) for k in range(inflight)])
                rid += inflight
                for _ in range(inflight):
                    f = w.recv_response()
                    if not isinstance(f, PublishAck) or f.count != nb:
                        raise Failed(f"a measured PUBLISH answered {f!r}: no throughput figure", (f"BUDGET:{key}",))
            rate = rounds * inflight * nb / (time.perf_counter() - t0)
        ctx.note(_budget(ctx, key, rate, True) + " records/s")
