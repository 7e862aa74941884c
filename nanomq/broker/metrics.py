"""The broker's metrics, exported in the Prometheus text format (spec/admin.md, "Metrics").

Two kinds of figures, so that the data plane pays almost nothing for them:

- **Read at scrape time** from state the broker keeps anyway: records and bytes per topic (the
  log's ids and sizes), segments, connections by state, subscription lag, uptime. Nothing is
  counted per message for these.
- **Counted as they happen**, with plain integer additions on the event loop (the only thread that
  touches them, so no lock): bytes published and records/bytes delivered per topic, errors by
  code, and three latency histograms (:class:`LatencyHistogram`): the PUBLISH-to-ack time per ack
  mode, the sync (group commit) time, and the event loop's lag.

Why not ``prometheus_client.Histogram`` and ``Counter`` for the second kind: each of their updates
takes a ``threading.Lock`` and a label lookup (about a microsecond), on every PUBLISH; here an
update is a bisect and two additions, and ``prometheus_client`` still does the exposition
(:class:`BrokerCollector` yields its metric families, ``generate_latest`` writes the text).
"""

from __future__ import annotations

import shutil
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from nanomq.storage import TopicLog, TopicRetention

__all__ = ["CONTENT_TYPE", "BrokerCollector", "BrokerStats", "BrokerView", "LatencyHistogram", "TopicView",
           "exposition"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What /metrics is ([NMQ-ADM-1-2]): the classic text format. Every name here is a legacy Prometheus
name, so what ``generate_latest`` writes is that format whatever newer one the library defaults to."""

LATENCY_BOUNDS_S: tuple[float, ...] = (
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram bucket upper bounds, in seconds: 25 µs to 10 s (a written ack is tens of µs, a sync a
few hundred µs to tens of ms, a stall seconds)."""


class LatencyHistogram:
    """A fixed-bucket histogram of durations in seconds, updated on one thread."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        """Observations per bucket (not cumulative); the last one is above every bound (+Inf)."""
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float, n: int = 1) -> None:
        """Count ``n`` observations of ``seconds`` (n > 1: several requests answered together)."""
        self.counts[bisect_left(self.bounds, seconds)] += n
        self.sum += seconds * n
        self.count += n

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative buckets as Prometheus wants them, ``+Inf`` last."""
        out, acc = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            acc += n
            out.append((_le(bound), acc))
        out.append(("+Inf", self.count))
        return out


def _le(bound: float) -> str:
    return repr(bound)


class BrokerStats:
    """What the broker counts as it happens (event-loop thread only)."""

    __slots__ = ("errors", "ack_latency", "sync_latency", "loop_lag", "recovery_seconds", "recovered_topics")

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        """ERROR frames sent, by error code name (fatal ones included)."""
        self.ack_latency = {"written": LatencyHistogram(), "durable": LatencyHistogram()}
        """From the moment the broker began handling a PUBLISH to its PUBLISH_ACK being written."""
        self.sync_latency = LatencyHistogram()
        """From a sync being asked for (group commit) to its end: queueing plus fdatasync."""
        self.loop_lag = LatencyHistogram()
        """How late the event loop ran a timer that was due (sampled by the broker's lag probe)."""
        self.recovery_seconds = 0.0
        self.recovered_topics = 0

    def error(self, code_name: str) -> None:
        """One ERROR frame with this code was sent."""
        self.errors[code_name] += 1


class TopicView(Protocol):
    """What the metrics read of a topic (nanomq.broker.topics.Topic)."""

    name: str
    topic_id: int
    log: TopicLog
    bytes_in: int
    delivered_records: int
    delivered_bytes: int
    own_retention: TopicRetention


class BrokerView(Protocol):
    """What the metrics read of the broker (nanomq.broker.server.Broker; a protocol here, so this
    module does not import the server that imports it)."""

    stats: BrokerStats
    ready: bool
    stopping: bool

    @property
    def topic_views(self) -> Iterable[TopicView]:
        """Every open topic."""

    @property
    def data_dir(self) -> Path:
        """The data directory (its file system's space is exported)."""

    def uptime_s(self) -> float:
        """Seconds since the broker began listening."""

    def connection_states(self) -> dict[str, int]:
        """Client connections by state."""

    def subscription_positions(self) -> dict[str, list[int]]:
        """Topic name -> next ids of its live subscriptions."""


def _histogram(name: str, doc: str, labels: list[str], series: Iterable[tuple[list[str], LatencyHistogram]]
               ) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for values, h in series:
        fam.add_metric(values, h.buckets(), h.sum)
    return fam


class BrokerCollector(Collector):
    """Yields every metric family of one broker, reading its state at scrape time."""

    def __init__(self, broker: BrokerView) -> None:
        self._broker = broker

    def collect(self) -> Iterator[Metric]:
        b = self._broker
        s = b.stats
        yield GaugeMetricFamily("nanomq_up", "1 while the broker serves (recovery done).", value=1 if b.ready else 0)
        yield GaugeMetricFamily("nanomq_uptime_seconds", "Seconds since the broker began listening.",
                                value=b.uptime_s())
        yield GaugeMetricFamily("nanomq_recovery_seconds", "Seconds the start-up recovery of every topic took.",
                                value=s.recovery_seconds)
        try:
            usage = shutil.disk_usage(b.data_dir)
        except OSError:
            pass
        else:
            yield GaugeMetricFamily("nanomq_disk_total_bytes", "Size of the file system holding the data directory.",
                                    value=usage.total)
            yield GaugeMetricFamily("nanomq_disk_free_bytes", "Free bytes on the file system holding the data "
                                    "directory.", value=usage.free)
        if not b.ready:  # recovering (the registry is being filled in a worker thread) or stopping
            return
        rec = CounterMetricFamily("nanomq_topic_published_records", "Records appended to the topic, ever (ids "
                                  "start at 1 and are never reused: its next id minus one).",
                                  labels=["topic"])
        pub_bytes = CounterMetricFamily("nanomq_topic_published_bytes", "Bytes of records appended to the topic "
                                        "since the broker started (record headers included).", labels=["topic"])
        dlv = CounterMetricFamily("nanomq_topic_delivered_records", "Records delivered to subscribers of the "
                                  "topic since the broker started (each delivery to each subscription).",
                                  labels=["topic"])
        dlv_bytes = CounterMetricFamily("nanomq_topic_delivered_bytes", "Bytes of records delivered to subscribers "
                                        "of the topic since the broker started.", labels=["topic"])
        retained = GaugeMetricFamily("nanomq_topic_retained_records", "Records the topic holds now.",
                                     labels=["topic"])
        disk = GaugeMetricFamily("nanomq_topic_disk_bytes", "Bytes of records the topic's segments hold.",
                                 labels=["topic"])
        segs = GaugeMetricFamily("nanomq_topic_segments", "Segment files of the topic.", labels=["topic"])
        unsynced = GaugeMetricFamily("nanomq_topic_unsynced_records", "Records appended but not yet fsynced.",
                                     labels=["topic"])
        subs = GaugeMetricFamily("nanomq_topic_subscriptions", "Live subscriptions of the topic.", labels=["topic"])
        lag = GaugeMetricFamily("nanomq_topic_subscription_lag_records", "Records the topic holds beyond the "
                                "next record of its most lagging subscription (0 with no subscription).",
                                labels=["topic"])
        syncs = CounterMetricFamily("nanomq_topic_fdatasyncs", "fdatasync calls of the topic's active segment "
                                    "since it was opened.", labels=["topic"])
        per_topic = b.subscription_positions()
        for t in b.topic_views:
            st = t.log.stats()
            name = [t.name]
            rec.add_metric(name, max(0, st.next_id - 1))
            pub_bytes.add_metric(name, t.bytes_in)
            dlv.add_metric(name, t.delivered_records)
            dlv_bytes.add_metric(name, t.delivered_bytes)
            retained.add_metric(name, st.next_id - st.first_id)
            disk.add_metric(name, st.total_bytes)
            segs.add_metric(name, st.segments)
            unsynced.add_metric(name, max(0, st.next_id - 1 - st.durable_id))
            positions = per_topic.get(t.name, [])
            subs.add_metric(name, len(positions))
            lag.add_metric(name, max((max(0, st.next_id - p) for p in positions), default=0))
            syncs.add_metric(name, st.fdatasyncs)
        yield from (rec, pub_bytes, dlv, dlv_bytes, retained, disk, segs, unsynced, subs, lag, syncs)
        conns = GaugeMetricFamily("nanomq_connections", "Client connections by state.", labels=["state"])
        for state, n in sorted(b.connection_states().items()):
            conns.add_metric([state], n)
        yield conns
        errs = CounterMetricFamily("nanomq_errors", "ERROR frames sent to clients, by error code.", labels=["code"])
        for code, n in sorted(s.errors.items()):
            errs.add_metric([code], n)
        yield errs
        yield _histogram("nanomq_publish_ack_seconds", "From the broker taking up a PUBLISH to its ack being "
                         "written, by ack mode (durable: the sync included).", ["ack"],
                         [([mode], h) for mode, h in sorted(s.ack_latency.items())])
        yield _histogram("nanomq_sync_seconds", "From a group commit being asked for to its end (waiting for a "
                         "sync thread, then fdatasync).", [], [([], s.sync_latency)])
        yield _histogram("nanomq_event_loop_lag_seconds", "How late the event loop ran a timer that was due "
                         "(sampled every 0.25 s).", [], [([], s.loop_lag)])


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format of every metric in ``registry``."""
    return generate_latest(registry)
