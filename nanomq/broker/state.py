"""The broker's states: a connection's and a subscription's, each an enum and the table of its moves.

Everything that moves a connection or a subscription from one state to another is here. Each
change goes through :func:`next_state`, one dict lookup, so an object is never in a state its
table does not name, and a move the table does not allow is a bug that shows at once
(:class:`BrokerStateError`) instead of a flag silently out of step with another. Nothing here
runs per record: the delivery pump only compares states with ``is``.

A connection::

    NEW --made--> AWAITING_HELLO --hello--> ACTIVE
    AWAITING_HELLO, ACTIVE --fatal--> CLOSING        ERROR (request_id 0) sent, transport closing
    AWAITING_HELLO, ACTIVE, CLOSING --lost--> CLOSED

and, independently, its writing side (asyncio's flow control of the transport)::

    FLOWING --pause--> PAUSED --resume--> FLOWING

A subscription, which may deliver only in READY, so that no DELIVER overtakes its SUBSCRIBED or
a SEEK_OK ([NMQ-4.4-5], [NMQ-4.8-4])::

    ANNOUNCING --announced (the last unwritten SUBSCRIBED / SEEK_OK was written)--> READY
    ANNOUNCING, READY --seek--> ANNOUNCING
    ANNOUNCING, READY --end (UNSUBSCRIBE, connection lost)--> ENDED
    ENDED --announced--> ENDED                       a SUBSCRIBED written after its UNSUBSCRIBE
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

__all__ = [
    "ConnectionState",
    "ConnectionEvent",
    "CONNECTION_TRANSITIONS",
    "WriteState",
    "WriteEvent",
    "WRITE_TRANSITIONS",
    "SubscriptionState",
    "SubscriptionEvent",
    "SUBSCRIPTION_TRANSITIONS",
    "BrokerStateError",
    "next_state",
]


class ConnectionState(Enum):
    """Where a client connection is in its session."""

    NEW = "new"
    """The protocol object exists; asyncio has not handed it a transport yet."""
    AWAITING_HELLO = "awaiting-hello"
    """Connected; the first frame must be HELLO ([NMQ-4.1-1]); the watchdog times it."""
    ACTIVE = "active"
    """HELLO_OK sent: requests are handled and subscriptions deliver."""
    CLOSING = "closing"
    """A fatal ERROR was sent and the transport is closing: nothing more is read or written."""
    CLOSED = "closed"
    """The transport is gone (terminal)."""


class ConnectionEvent(Enum):
    """What moves a connection."""

    MADE = "made"
    """asyncio handed over the transport (``connection_made``)."""
    HELLO = "hello"
    """A valid HELLO was received."""
    FATAL = "fatal"
    """The stream or the session cannot go on (framing error, limit, shutdown, timeout)."""
    LOST = "lost"
    """The transport closed (``connection_lost``)."""


class WriteState(Enum):
    """Whether the transport takes more output now."""

    FLOWING = "flowing"
    PAUSED = "paused"
    """Its buffer passed ``write_buffer_bytes``: no delivery, and the client's requests are not read."""


class WriteEvent(Enum):
    """asyncio's flow-control callbacks."""

    PAUSE = "pause"
    RESUME = "resume"


class SubscriptionState(Enum):
    """Whether a subscription may deliver."""

    ANNOUNCING = "announcing"
    """Its SUBSCRIBED or a SEEK_OK is not written yet: it must not deliver."""
    READY = "ready"
    """Delivers within its credit."""
    ENDED = "ended"
    """Unsubscribed, or its connection is gone (terminal)."""


class SubscriptionEvent(Enum):
    """What moves a subscription."""

    ANNOUNCED = "announced"
    """Every SUBSCRIBED / SEEK_OK it is owed has been written."""
    SEEK = "seek"
    """SEEK repositioned it: it announces again."""
    END = "end"
    """UNSUBSCRIBE, or the connection was lost."""


_C, _E = ConnectionState, ConnectionEvent
CONNECTION_TRANSITIONS: dict[ConnectionState, dict[ConnectionEvent, ConnectionState]] = {
    _C.NEW: {_E.MADE: _C.AWAITING_HELLO},
    _C.AWAITING_HELLO: {_E.HELLO: _C.ACTIVE, _E.FATAL: _C.CLOSING, _E.LOST: _C.CLOSED},
    _C.ACTIVE: {_E.FATAL: _C.CLOSING, _E.LOST: _C.CLOSED},
    _C.CLOSING: {_E.LOST: _C.CLOSED},
    _C.CLOSED: {},
}
"""state -> event -> next state. A pair not listed is not a transition."""

WRITE_TRANSITIONS: dict[WriteState, dict[WriteEvent, WriteState]] = {
    WriteState.FLOWING: {WriteEvent.PAUSE: WriteState.PAUSED},
    WriteState.PAUSED: {WriteEvent.RESUME: WriteState.FLOWING},
}
"""state -> event -> next state (asyncio alternates pause and resume)."""

_S, _V = SubscriptionState, SubscriptionEvent
SUBSCRIPTION_TRANSITIONS: dict[SubscriptionState, dict[SubscriptionEvent, SubscriptionState]] = {
    _S.ANNOUNCING: {_V.ANNOUNCED: _S.READY, _V.SEEK: _S.ANNOUNCING, _V.END: _S.ENDED},
    _S.READY: {_V.SEEK: _S.ANNOUNCING, _V.END: _S.ENDED},
    _S.ENDED: {_V.ANNOUNCED: _S.ENDED},
}
"""state -> event -> next state. ANNOUNCED is sent only once no SUBSCRIBED / SEEK_OK is left unwritten."""


class BrokerStateError(RuntimeError):
    """A transition its table does not allow: a bug in the broker, never a client's doing."""


_State = TypeVar("_State", ConnectionState, WriteState, SubscriptionState)
_Event = TypeVar("_Event", ConnectionEvent, WriteEvent, SubscriptionEvent)


def next_state(table: dict[_State, dict[_Event, _State]], state: _State, event: _Event) -> _State:
    """The state after ``event`` in ``state`` by ``table``; BrokerStateError if it has no such move."""
    try:
        return table[state][event]
    except KeyError:
        raise BrokerStateError(f"{type(state).__name__}: no move on {event.value!r} from {state.value!r}") from None
