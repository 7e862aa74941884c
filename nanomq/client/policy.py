"""The clients' decisions that take no I/O: when to retry, when to send a batch, how to cut one.

Each is a small object or function over numbers (and the clock readings it is given), so the
blocking and the asyncio client make exactly the same decisions, and tests check them without
a socket.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from nanomq.protocol import FRAME_HEADER_SIZE, RECORD_HEADER_SIZE

__all__ = ["Backoff", "Batcher", "PublishRun", "plan_batches", "PUBLISH_OVERHEAD"]

PUBLISH_OVERHEAD = FRAME_HEADER_SIZE + 8
"""Bytes of a PUBLISH frame besides its topic and records: the frame header and the body prefix."""


class Backoff:
    """Exponential backoff between connection attempts, within a budget of seconds.

    The first retry waits ``first`` seconds, each later one twice as long, at most ``cap``.
    :meth:`next_delay` says how long to wait before the next attempt, or None when waiting that
    long would pass the budget's end (then give up).
    """

    def __init__(self, now: float, budget: float, *, first: float = 0.05, cap: float = 1.0) -> None:
        self.deadline = now + budget
        self._delay = first
        self._cap = cap
        self.attempts = 1
        """Attempts made so far (the first is counted when the schedule is made)."""

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before the next attempt, or None: give up."""
        delay = self._delay
        if now + delay > self.deadline:
            return None
        self._delay = min(delay * 2, self._cap)
        self.attempts += 1
        return delay


@dataclass(slots=True)
class Batcher:
    """What ``set_batching_enabled(True)`` holds back, and when it goes out.

    A batch leaves once ``max_bytes`` are pending, once one topic holds ``max_records``, or once the
    oldest pending record is ``max_delay`` seconds old (the flusher checks every ``tick``).
    """

    max_bytes: int = 1024
    max_records: int = 256
    max_delay: float = 0.010
    tick: float = 0.002
    enabled: bool = False
    pending: dict[str, list[bytes]] = field(default_factory=dict)
    pending_bytes: int = 0
    since: float = 0.0
    failure: BaseException | None = None
    """An error of a background flush, raised by the application's next call."""

    def add(self, topic: str, data: bytes, now: float) -> bool:
        """Hold ``data`` for ``topic``; True when the pending records should be sent now."""
        if not self.pending:
            self.since = now
        items = self.pending.setdefault(topic, [])
        items.append(data)
        self.pending_bytes += len(data)
        return self.pending_bytes >= self.max_bytes or len(items) >= self.max_records

    def due(self, now: float) -> bool:
        """True when the oldest pending record has waited ``max_delay``."""
        return bool(self.pending) and now - self.since >= self.max_delay

    def take(self) -> dict[str, list[bytes]]:
        """Everything pending, per topic in the order published; the batcher is empty after."""
        out, self.pending, self.pending_bytes = self.pending, {}, 0
        return out

    def raise_failure(self) -> None:
        """Raise (once) the error a background flush met."""
        if self.failure is not None:
            e, self.failure = self.failure, None
            raise e


def plan_batches(spans: Sequence[int], overhead: int, max_batch: int, max_frame: int) -> list[range]:
    """Cut records into wire batches: consecutive runs of at most ``max_batch`` records whose
    frame (``overhead`` + the records' ``spans`` in bytes) is at most ``max_frame``.

    A record too large for a frame of its own still gets one (the broker refuses it, loudly);
    the caller checks payloads against max_payload first.
    """
    n = len(spans)
    if n and overhead + max(spans) * max_batch <= max_frame:  # any max_batch records fit: by count alone
        return [range(i, min(i + max_batch, n)) for i in range(0, n, max_batch)]
    out: list[range] = []
    start, size = 0, overhead
    for i, span in enumerate(spans):
        if i > start and (i - start >= max_batch or size + span > max_frame):
            out.append(range(start, i))
            start, size = i, overhead
        size += span
    if spans:
        out.append(range(start, len(spans)))
    return out


def frame_spans(sizes: Sequence[int]) -> list[int]:
    """The bytes each record of a payload size takes in a frame: align8(64 + size), as
    :func:`nanomq.protocol.record_span` (inlined here: it runs once per record published)."""
    return [(RECORD_HEADER_SIZE + 7 + n) & ~7 for n in sizes]


@dataclass(slots=True)
class PublishRun:
    """The wire batches of one publish call: what was sent, what was acked, what is unknown."""

    sent: list[tuple[int, int]] = field(default_factory=list)
    """(request id, records) per batch sent, in order."""
    ids: list[int] = field(default_factory=list)
    """The ids acked so far, in order."""
    acked_batches: int = 0

    def acked(self, first_id: int, count: int) -> None:
        """The next batch's PUBLISH_ACK: ids first_id .. first_id + count - 1."""
        self.ids.extend(range(first_id, first_id + count))
        self.acked_batches += 1

    def unacked(self, answered: set[int]) -> int:
        """Records sent whose outcome is unknown: batches without an ack read and without an
        answer that arrived before the connection ended (``answered``: their request ids)."""
        return sum(n for rid, n in self.sent[self.acked_batches:] if rid not in answered)
