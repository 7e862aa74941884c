"""History checking: what publishers had acknowledged vs what subscribers saw (Jepsen-style).

Publishers record every acknowledged record as ``id -> payload``; each subscriber records the
sequence of ``(id, payload)`` it was delivered from some start id. The checker reports:

* ``lost``: an acknowledged record a subscriber should have seen and did not;
* ``duplicated``: the same id delivered twice to one subscriber;
* ``reordered``: an id lower than one delivered before it;
* ``skipped``: a gap in the ids (delivery must be contiguous, [NMQ-SEM-4-1]);
* ``corrupted``: an acknowledged id delivered with other bytes than were published;
* ``commit-regressed``: a committed position lower than an earlier one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Anomaly", "check_deliveries", "check_commits"]


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One thing that should not have happened."""

    kind: str
    subscriber: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.subscriber}): {self.detail}"


def check_deliveries(acked: Mapping[int, bytes], seen: Mapping[str, Sequence[tuple[int, bytes]]],
                     start_id: int = 1, limit: int = 20) -> list[Anomaly]:
    """Anomalies of every subscriber's delivery sequence against the acknowledged records.

    Each subscriber is expected to have read from ``start_id`` at least up to the highest
    acknowledged id.
    """
    out: list[Anomaly] = []
    top = max(acked, default=0)
    for name, records in seen.items():
        ids = [i for i, _ in records]
        got = dict(records)
        seen_ids: set[int] = set()
        prev = start_id - 1
        for i in ids:
            if i in seen_ids:
                out.append(Anomaly("duplicated", name, f"id {i} delivered again"))
            elif i < prev:
                out.append(Anomaly("reordered", name, f"id {i} after id {prev}"))
            elif i > prev + 1:
                out.append(Anomaly("skipped", name, f"ids {prev + 1}..{i - 1} missing before id {i}"))
            seen_ids.add(i)
            prev = max(prev, i)
        for i in sorted(acked):
            if i < start_id:
                continue
            if i not in seen_ids:
                if i <= top:
                    out.append(Anomaly("lost", name, f"acknowledged id {i} never delivered"))
            elif got[i] != acked[i]:
                out.append(Anomaly("corrupted", name, f"id {i} delivered as {got[i][:40]!r}, published {acked[i][:40]!r}"))
        if len(out) > limit:
            break
    return out[:limit]


def check_commits(positions: Iterable[int], subscriber: str = "committer") -> list[Anomaly]:
    """Committed positions reported by COMMITTED must never decrease ([NMQ-4.7-4])."""
    out = []
    best = 0
    for p in positions:
        if p < best:
            out.append(Anomaly("commit-regressed", subscriber, f"position {p} after {best}"))
        best = max(best, p)
    return out
