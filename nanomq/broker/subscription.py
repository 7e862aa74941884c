"""A subscription: a position in one topic, credit, and what was delivered and committed."""

from __future__ import annotations

from nanomq.broker.topics import Topic

__all__ = ["Subscription"]


class Subscription:
    """Delivery state of one SUBSCRIBE on one connection.

    Invariants: ``start_id <= committed <= next_id``; every id in ``[start_id, next_id)`` was
    delivered (delivery is contiguous from the start position, [NMQ-SEM-4-1]); ``_acked`` holds
    committed ids above ``committed``, so ``committed`` is the lowest uncommitted delivered id.
    """

    __slots__ = ("sub_id", "topic", "next_id", "start_id", "credit", "committed", "_acked", "ready")

    def __init__(self, sub_id: int, topic: Topic, start_id: int, credit: int) -> None:
        self.sub_id = sub_id
        self.topic = topic
        self.credit = credit
        self.ready = False
        """False until SUBSCRIBED / SEEK_OK has been written: no DELIVER may overtake it."""
        self.start_id = self.next_id = self.committed = start_id
        self._acked: set[int] = set()

    def reposition(self, start_id: int) -> None:
        """Move to ``start_id`` (SEEK): forget delivery and commit state of the old position."""
        self.start_id = self.next_id = self.committed = start_id
        self._acked.clear()

    def add_credit(self, n: int) -> None:
        """CREDIT: saturating at 2^32 - 1 [NMQ-4.6-1]."""
        self.credit = min(self.credit + n, 0xFFFFFFFF)

    def can_commit(self, record_id: int) -> bool:
        """Whether ``record_id`` was delivered on this subscription since its last reposition."""
        return self.start_id <= record_id < self.next_id

    def commit(self, ids: tuple[int, ...]) -> int:
        """Mark delivered ids processed; returns the committed position. Ids must pass can_commit."""
        for i in ids:
            if i >= self.committed:
                self._acked.add(i)
        while self.committed in self._acked:
            self._acked.discard(self.committed)
            self.committed += 1
        return self.committed
