"""A subscription: a position in one topic, credit, what was delivered and committed, and its state."""

from __future__ import annotations

from array import array
from bisect import bisect_right

from nanomq.broker.state import SUBSCRIPTION_TRANSITIONS, SubscriptionEvent, SubscriptionState, next_state
from nanomq.broker.topics import Topic

__all__ = ["Subscription"]


class Subscription:
    """Delivery state of one SUBSCRIBE on one connection.

    Invariants: ``start_id <= committed <= next_id``; every id in ``[start_id, next_id)`` was
    delivered (delivery is contiguous from the start position, [NMQ-SEM-4-1]); the ids committed
    above ``committed`` are kept as runs ``[_lo[i], _hi[i])``, sorted, apart from each other and
    from ``committed`` (so ``committed`` is the lowest uncommitted delivered id). Memory goes with
    the number of runs (:attr:`gaps`), not of ids: committing 2..1,000,000 without 1 is one run
    (it was a set of a million ints, 60 MB). The connection bounds the runs ([NMQ-4.7-5]).
    ``state`` is READY only when none of the SUBSCRIBED / SEEK_OK it is owed is left unwritten
    (:mod:`nanomq.broker.state`): only then may it deliver.
    """

    __slots__ = ("sub_id", "topic", "next_id", "start_id", "credit", "committed", "_lo", "_hi", "state", "_unannounced")

    def __init__(self, sub_id: int, topic: Topic, start_id: int, credit: int) -> None:
        self.sub_id = sub_id
        self.topic = topic
        self.credit = credit
        self.state = SubscriptionState.ANNOUNCING
        self._unannounced = 1
        """SUBSCRIBED / SEEK_OK frames of this subscription not written yet (its SUBSCRIBED first)."""
        self.start_id = self.next_id = self.committed = start_id
        self._lo = array("Q")
        self._hi = array("Q")

    @property
    def gaps(self) -> int:
        """Runs of ids committed above the committed position (each follows a gap)."""
        return len(self._lo)

    def seek(self, start_id: int) -> None:
        """SEEK: move to ``start_id`` and forget delivery and commit state of the old position. The
        subscription delivers again once this SEEK_OK (and any earlier one still queued) is written."""
        self.start_id = self.next_id = self.committed = start_id
        del self._lo[:], self._hi[:]
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

    def commit(self, ids: tuple[int, ...], max_gaps: int | None = None) -> int | None:
        """Mark delivered ids processed; returns the committed position. Ids must pass can_commit.

        With ``max_gaps``: when the ids would leave more than that many runs above the committed
        position, nothing changes and None is returned."""
        if max_gaps is not None and len(self._lo) + len(ids) > max_gaps:
            saved = (self.committed, array("Q", self._lo), array("Q", self._hi))
            self._add(ids)
            if len(self._lo) > max_gaps:
                self.committed, self._lo, self._hi = saved
                return None
            return self.committed
        self._add(ids)
        return self.committed

    def _add(self, ids: tuple[int, ...]) -> None:
        lo, hi = self._lo, self._hi
        for i in ids:
            if i < self.committed:
                continue
            if i == self.committed:
                self.committed = i + 1
                if lo and lo[0] == i + 1:  # the first run joins the committed prefix
                    self.committed = hi[0]
                    del lo[0], hi[0]
                continue
            k = bisect_right(lo, i) - 1  # the run starting at or below i, if any
            if k >= 0 and i < hi[k]:
                continue  # committed already
            joins_left = k >= 0 and hi[k] == i
            joins_right = k + 1 < len(lo) and lo[k + 1] == i + 1
            if joins_left and joins_right:
                hi[k] = hi[k + 1]
                del lo[k + 1], hi[k + 1]
            elif joins_left:
                hi[k] = i + 1
            elif joins_right:
                lo[k + 1] = i
            else:
                lo.insert(k + 1, i)
                hi.insert(k + 1, i + 1)
