"""The client's connection state: one enum and the table of the transitions it may make.

Every change of state goes through :func:`next_state`, so a client is never in a state the
table does not name, and a transition the table does not allow is a bug that shows at once
(:class:`ClientStateError`) instead of a flag silently out of step with another.

::

    DISCONNECTED --connect--> CONNECTING --ready--> READY
         ^                        |                   |
         +---------lose-----------+-------lose--------+
    any state --close--> CLOSED (terminal)
"""

from __future__ import annotations

from enum import Enum

__all__ = ["ClientState", "Event", "TRANSITIONS", "ClientStateError", "next_state"]


class ClientState(Enum):
    """Where a client's connection is."""

    DISCONNECTED = "disconnected"
    """No connection: never made, or lost. The next call connects (and resumes subscriptions)."""
    CONNECTING = "connecting"
    """Opening the transport, saying HELLO, resuming subscriptions."""
    READY = "ready"
    """Connected and handshaken: requests go out."""
    CLOSED = "closed"
    """``close()`` was called; every later call raises ConnectionLostError."""


class Event(Enum):
    """What moves a client from one state to another."""

    CONNECT = "connect"
    """A connection attempt begins."""
    READY = "ready"
    """HELLO_OK arrived and every subscription to resume was resumed."""
    LOSE = "lose"
    """The connection ended, or the attempt to make it failed."""
    CLOSE = "close"
    """The application closed the client."""


_D, _C, _R, _X = ClientState.DISCONNECTED, ClientState.CONNECTING, ClientState.READY, ClientState.CLOSED

TRANSITIONS: dict[ClientState, dict[Event, ClientState]] = {
    _D: {Event.CONNECT: _C, Event.LOSE: _D, Event.CLOSE: _X},
    _C: {Event.READY: _R, Event.LOSE: _D, Event.CLOSE: _X},
    _R: {Event.LOSE: _D, Event.CLOSE: _X},
    _X: {Event.LOSE: _X, Event.CLOSE: _X},
}
"""state -> event -> next state. A pair not listed is not a transition."""


class ClientStateError(RuntimeError):
    """A transition the table does not allow: a bug in the client, never the application's doing."""


def next_state(state: ClientState, event: Event) -> ClientState:
    """The state after ``event`` in ``state``; ClientStateError if the table has no such move."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise ClientStateError(f"client cannot {event.value} while {state.value}") from None
