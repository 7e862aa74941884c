"""A subscription: a position in one topic, credit, what was delivered and committed, and its state."""

from __future__ import annotations

from nanomq.broker.state import SUBSCRIPTION_TRANSITIONS, SubscriptionEvent, SubscriptionState, next_state
from nanomq.broker.topics import Topic

__all__ = ["Subscription"]


class Subscription:
    """Delivery state of one SUBSCRIBE on one connection.

    Invariants: ``start_id <= committed <= next_id``; every id in ``[start_id, next_id)`` was
    delivered (delivery is contiguous from the start position, [NMQ-SEM-4-1]); ``_acked`` holds
    committed ids above ``committed``, so ``committed`` is the lowest uncommitted delivered id.
    ``state`` is READY only when none of the SUBSCRIBED / SEEK_OK it is owed is left unwritten
    (:mod:`nanomq.broker.state`): only then may it deliver.
    """

    __slots__ = ("sub_id", "topic", "next_id", "start_id", "credit", "committed", "_acked", "state", "_unannounced")

    def __init__(self, sub_id: int, topic: Topic, start_id: int, credit: int) -> None:
        self.sub_id = sub_id
        self.topic = topic
        self.credit = credit
        self.state = SubscriptionState.ANNOUNCING
        self._unannounced = 1
        """SUBSCRIBED / SEEK_OK frames of this subscription not written yet (its SUBSCRIBED first)."""
        self.start_id = self.next_id = self.committed = start_id
        self._acked: set[int] = set()

    def seek(self, start_id: int) -> None:
        """SEEK: move to ``start_id`` and forget delivery and commit state of the old position. The
        subscription delivers again once this SEEK_OK (and any earlier one still queued) is written."""
        self.start_id = self.next_id = self.committed = start_id
        self._acked.clear()
        self.state = next_state(SUBSCRIPTION_TRANSITIONS, self.state, SubscriptionEvent.SEEK)
        self._unannounced += 1

    def announced(self) -> bool:
        """One of its SUBSCRIBED / SEEK_OK frames was written; True when it may deliver now."""
        self._unannounced -= 1
        if self._unannounced == 0:
            self.state = next_state(SUBSCRIPTION_TRANSITIONS, self.state, SubscriptionEvent.ANNOUNCED)
        return self.state is SubscriptionState.READY

    def end(self) -> None:
        """UNSUBSCRIBE or a lost connection: it never delivers again."""
        self.state = next_state(SUBSCRIPTION_TRANSITIONS, self.state, SubscriptionEvent.END)

    def add_credit(self, n: int) -> None:
        """CREDIT: saturating at 2^32 - 1 [NMQ-4.6-1]."""
        self.credit = min(self.credit + n, 0xFFFFFFFF)

    def can_commit(self, record_id: int) -> bool:
        """Whether ``record_id`` was delivered on this subscription since its last SEEK."""
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
