"""What counting the metrics costs the broker per PUBLISH and per DELIVER (docs/operations.md).

    python benchmarks/bench_metrics_cost.py

Times, with ``timeit``, exactly the work the broker adds for the metrics: per PUBLISH two clock
reads and one :meth:`LatencyHistogram.observe` (nanomq/broker/connection.py), per DELIVER two
counter additions on the topic. Compare with the broker's CPU per record (bench_broker.py).
"""

from __future__ import annotations

import time
import timeit

from nanomq.broker.metrics import BrokerStats


class _Topic:
    delivered_records = 0
    delivered_bytes = 0


def main(n: int = 1_000_000) -> None:
    """Print the cost of each, in ns, with the empty call's cost subtracted."""
    stats, topic = BrokerStats(), _Topic()

    def publish() -> None:
        started = time.perf_counter()
        stats.ack_latency["written"].observe(time.perf_counter() - started, 1)

    def deliver() -> None:
        topic.delivered_records += 1
        topic.delivered_bytes += 1024

    def empty() -> None:
        pass

    base = min(timeit.repeat(empty, number=n, repeat=3)) / n * 1e9
    for name, fn in (("per PUBLISH (clock twice, one histogram observation)", publish),
                     ("per DELIVER (two counters)", deliver)):
        cost = min(timeit.repeat(fn, number=n, repeat=3)) / n * 1e9 - base
        print(f"{name}: {cost:.0f} ns")


if __name__ == "__main__":
    main()
