"""History checking: what publishers had acknowledged vs what subscribers saw (Jepsen-style).

Publishers record every acknowledged batch (:class:`Batch`: who sent it, its place in that
connection's sending order, the ids it got and its payloads); each subscriber records what it was
delivered (:class:`Delivered`: id, payload, timestamp, topic id, header bytes, and the DELIVER
frame it came in). The checkers report one :class:`Anomaly` per broken invariant of
spec/semantics.md, each kind tied to the rules it breaks (:data:`RULES_OF`):

* ``lost``: an acknowledged record a subscriber should have seen and did not;
* ``duplicated`` / ``reordered`` / ``skipped``: the subscription's ids are not its start id and every
  following id, once each, in order ([NMQ-SEM-4-1]);
* ``corrupted``: an acknowledged id delivered with other bytes than were published;
* ``interleaved``: a batch's records are not at consecutive ids in batch order, or two batches'
  id ranges overlap ([NMQ-SEM-2-3], [NMQ-4.2-1]);
* ``connection-order``: batches sent on one connection were appended out of the sending order;
* ``timestamp-regressed``: a record's timestamp is below the previous record's ([NMQ-SEM-2-2]);
* ``topic-id``: a record carries another topic id than its topic's ([NMQ-SEM-1-2]);
* ``header-changed``: one id delivered with different header bytes to two subscribers (records are
  sent as stored, [NMQ-4.6-3]);
* ``frame``: a DELIVER holding more than max_batch records or not consecutive ids ([NMQ-4.6-3]);
* ``over-credit``: more records delivered than the subscriber granted ([NMQ-4.6-2]);
* ``commit-regressed``: a committed position lower than an earlier one ([NMQ-4.7-4]).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Anomaly", "Batch", "Delivered", "RULES_OF", "check_deliveries", "check_batches", "check_commits",
           "check_frames"]

RULES_OF: dict[str, tuple[str, ...]] = {
    "lost": ("NMQ-SEM-3-3", "NMQ-SEM-4-1"),
    "skipped": ("NMQ-SEM-4-1",),
    "duplicated": ("NMQ-SEM-4-1",),
    "reordered": ("NMQ-SEM-4-1", "NMQ-SEM-1-1"),
    "corrupted": ("NMQ-SEM-3-3",),
    "interleaved": ("NMQ-SEM-2-3", "NMQ-4.2-1"),
    "connection-order": ("NMQ-SEM-2-3",),
    "timestamp-regressed": ("NMQ-SEM-2-2",),
    "topic-id": ("NMQ-SEM-1-2",),
    "header-changed": ("NMQ-4.6-3",),
    "frame": ("NMQ-4.6-3",),
    "over-credit": ("NMQ-4.6-2",),
    "commit-regressed": ("NMQ-4.7-4",),
}
"""The rules each anomaly kind breaks."""


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One thing that should not have happened."""

    kind: str
    subscriber: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.subscriber}): {self.detail}"


@dataclass(frozen=True, slots=True)
class Batch:
    """One acknowledged PUBLISH: ``seq`` is its place in ``publisher``'s sending order."""

    publisher: str
    seq: int
    first_id: int
    payloads: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Delivered:
    """One delivered record as a subscriber saw it; ``frame`` numbers the DELIVER it came in."""

    id: int
    payload: bytes
    timestamp_ns: int = 0
    topic_id: int = 0
    header: bytes = b""
    frame: int = 0


def acked_records(batches: Iterable[Batch]) -> dict[int, bytes]:
    """id -> payload of every acknowledged record."""
    out: dict[int, bytes] = {}
    for b in batches:
        for i, p in enumerate(b.payloads):
            out[b.first_id + i] = p
    return out


def check_batches(batches: Sequence[Batch], limit: int = 20) -> list[Anomaly]:
    """Batches own disjoint id ranges, and one connection's batches are appended in sending order."""
    out: list[Anomaly] = []
    owner: dict[int, Batch] = {}
    for b in batches:
        for i in range(len(b.payloads)):
            other = owner.get(b.first_id + i)
            if other is not None:
                out.append(Anomaly("interleaved", b.publisher, f"id {b.first_id + i} acknowledged to batch "
                                   f"{b.publisher}#{b.seq} and to {other.publisher}#{other.seq}"))
                break
            owner[b.first_id + i] = b
    by_pub: dict[str, list[Batch]] = {}
    for b in batches:
        by_pub.setdefault(b.publisher, []).append(b)
    for pub, bs in by_pub.items():
        bs.sort(key=lambda b: b.seq)
        for x, y in zip(bs, bs[1:], strict=False):
            if y.first_id < x.first_id:
                out.append(Anomaly("connection-order", pub, f"batch #{y.seq} got id {y.first_id}, below batch "
                                   f"#{x.seq} sent before it ({x.first_id})"))
                break
    return out[:limit]


def check_deliveries(acked: Mapping[int, bytes], seen: Mapping[str, Sequence[Delivered | tuple[int, bytes]]],
                     start_id: int = 1, limit: int = 20, topic_id: int | None = None,
                     batches: Sequence[Batch] = ()) -> list[Anomaly]:
    """Anomalies of every subscriber's delivery sequence against the acknowledged records.

    Each subscriber is expected to have read from ``start_id`` at least up to the highest
    acknowledged id. ``topic_id`` (when known) is what every record must carry; ``batches`` lets a
    wrong payload be told apart as ``interleaved`` (it belongs to another batch) from ``corrupted``.
    """
    out: list[Anomaly] = []
    top = max(acked, default=0)
    where = {p: (b, i) for b in batches for i, p in enumerate(b.payloads)}
    headers: dict[int, tuple[str, bytes]] = {}
    for name, raw in seen.items():
        records = [r if isinstance(r, Delivered) else Delivered(r[0], r[1]) for r in raw]
        got = {r.id: r for r in records}
        seen_ids: set[int] = set()
        prev = start_id - 1
        prev_ts = 0
        for r in records:
            i = r.id
            if i in seen_ids:
                out.append(Anomaly("duplicated", name, f"id {i} delivered again"))
            elif i < prev:
                out.append(Anomaly("reordered", name, f"id {i} after id {prev}"))
            elif i > prev + 1:
                out.append(Anomaly("skipped", name, f"ids {prev + 1}..{i - 1} missing before id {i}"))
            if r.timestamp_ns and r.timestamp_ns < prev_ts:
                out.append(Anomaly("timestamp-regressed", name, f"id {i} has timestamp {r.timestamp_ns}, below "
                                   f"{prev_ts} of the record before it"))
            if topic_id is not None and r.topic_id != topic_id:
                out.append(Anomaly("topic-id", name, f"id {i} carries topic_id {r.topic_id}, not {topic_id}"))
            if r.header:
                first = headers.setdefault(i, (name, r.header))
                if first[1] != r.header:
                    out.append(Anomaly("header-changed", name, f"id {i} delivered with other header bytes than to "
                                       f"{first[0]}"))
            seen_ids.add(i)
            prev = max(prev, i)
            prev_ts = max(prev_ts, r.timestamp_ns)
        for i in sorted(acked):
            if i < start_id:
                continue
            if i not in seen_ids:
                if i <= top:
                    out.append(Anomaly("lost", name, f"acknowledged id {i} never delivered"))
            elif got[i].payload != acked[i]:
                home = where.get(got[i].payload)
                if home is not None:
                    b, k = home
                    out.append(Anomaly("interleaved", name, f"id {i} holds record {k} of batch {b.publisher}#{b.seq}, "
                                       f"which was acknowledged at ids {b.first_id}..{b.first_id + len(b.payloads) - 1}"))
                else:
                    out.append(Anomaly("corrupted", name, f"id {i} delivered as {got[i].payload[:40]!r}, "
                                       f"published {acked[i][:40]!r}"))
        if len(out) > limit:
            break
    return out[:limit]


def check_frames(name: str, frames: Sequence[Sequence[int]], max_batch: int, granted: int) -> list[Anomaly]:
    """Each DELIVER (its ids) holds 1..max_batch consecutive ids; no more records than ``granted``."""
    out = []
    for k, ids in enumerate(frames):
        if not 1 <= len(ids) <= max_batch or list(ids) != list(range(ids[0], ids[0] + len(ids))):
            out.append(Anomaly("frame", name, f"DELIVER #{k} holds ids {list(ids)[:8]}… ({len(ids)} records, "
                               f"max_batch {max_batch})"))
            break
    total = sum(len(ids) for ids in frames)
    if total > granted:
        out.append(Anomaly("over-credit", name, f"{total} records delivered, {granted} credit granted"))
    return out


def check_commits(positions: Iterable[int], subscriber: str = "committer") -> list[Anomaly]:
    """Committed positions reported by COMMITTED must never decrease ([NMQ-4.7-4])."""
    out = []
    best = 0
    for p in positions:
        if p < best:
            out.append(Anomaly("commit-regressed", subscriber, f"position {p} after {best}"))
        best = max(best, p)
    return out
