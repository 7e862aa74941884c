"""Exceptions raised by the NanoMQ clients: every one of them is a :class:`NanoMQError`.

Some are also a built-in exception, so code that knows nothing of NanoMQ catches them as usual:

============================  =========================================================
:class:`InvalidArgumentError`  ``ValueError``: an argument the client refuses before sending
:class:`ArgumentTypeError`     ``TypeError``: an argument of the wrong type
:class:`ConnectionLostError`   ``ConnectionError``: the connection broke (or never came up)
:class:`ProtocolError`         also a ``ConnectionLostError``, and ``nanomq.protocol.ProtocolError``
:class:`RequestTimeoutError`   ``TimeoutError``: no answer within the client's timeout
============================  =========================================================
"""

from __future__ import annotations

from typing import Self

from nanomq.errors import NanoMQError
from nanomq.protocol import ErrorCode, Frame
from nanomq.protocol import ProtocolError as _CodecError

__all__ = [
    "ArgumentTypeError", "ConnectionLostError", "InvalidArgumentError", "NanoMQError", "NotSupportedError",
    "ProtocolError", "RequestTimeoutError", "ServerError",
]


class InvalidArgumentError(NanoMQError, ValueError):
    """The client refused an argument before sending anything (a bad topic, ack mode, window,
    timeout, a payload over the broker's max_payload...)."""


class ArgumentTypeError(NanoMQError, TypeError):
    """An argument of the wrong type (``str`` where bytes are due, a float ``timeout_us``...)."""


class ServerError(NanoMQError):
    """The broker answered a request with an ERROR frame: ``code`` (protocol.md §8), ``message``
    and ``rule``, the spec rule ID it cites."""

    def __init__(self, code: int, message: str, rule: str = "") -> None:
        try:
            name = ErrorCode(code).name
        except ValueError:  # an unknown code is a non-fatal failure of that request [NMQ-8-3]
            name = f"error {code}"
        super().__init__(f"{name}: {message}" + (f" [{rule}]" if rule else ""))
        self.code = code
        self.message = message
        self.rule = rule


class NotSupportedError(ServerError):
    """The broker does not implement what was asked (its HELLO_OK did not announce it)."""

    def __init__(self, message: str, rule: str = "") -> None:
        super().__init__(int(ErrorCode.NOT_SUPPORTED), message, rule)


class ConnectionLostError(NanoMQError, ConnectionError):
    """The connection broke, or could not be made; the next call reconnects.

    ``reason`` says why. ``closed_by`` is the broker's closing ERROR when it sent one (SHUTTING_DOWN,
    say). For a Publisher, ``unacked`` counts the records sent but not acknowledged: each may or
    may not be stored (semantics.md [NMQ-SEM-3-5]).
    """

    def __init__(self, reason: str, unacked: int = 0, *, closed_by: ServerError | None = None) -> None:
        self.closed_by = closed_by
        self.reason = reason + (f": {closed_by}" if closed_by is not None else "")
        """Why, with the broker's closing ERROR if any, without the unacked note."""
        self.unacked = 0
        # Not super(): in a client ProtocolError the next class in the MRO is the codec's
        # ProtocolError, whose constructor takes (code, rule, message); ProtocolError sets those.
        ConnectionError.__init__(self, self.reason)
        self.with_unacked(unacked)

    def with_unacked(self, unacked: int) -> Self:
        """Set ``unacked`` (and the message that states it); returns this same error."""
        self.unacked = unacked
        note = f" ({unacked} record(s) sent without an ack: outcome unknown)" if unacked else ""
        self.args = (self.reason + note,)
        return self

    def __str__(self) -> str:
        return str(self.args[0])


class ProtocolError(ConnectionLostError, _CodecError):
    """The broker broke the wire protocol (undecodable bytes, a bad CRC, a response of the wrong
    type): the client dropped the connection, so this is a :class:`ConnectionLostError`. It is
    also the codec's ``nanomq.protocol.ProtocolError``, with its ``code`` and ``rule``."""

    def __init__(self, reason: str, code: ErrorCode, rule: str, unacked: int = 0) -> None:
        ConnectionLostError.__init__(self, reason, unacked)
        self.code = code
        self.rule = rule
        self.message = reason
        self.fatal = True
        self.request_id = 0

    @classmethod
    def from_codec(cls, error: _CodecError) -> ProtocolError:
        """The client-side form of an error the decoder raised on the broker's bytes."""
        return cls(f"invalid data from broker: {error}", error.code, error.rule)

    @classmethod
    def wrong_response(cls, got: Frame, expected: type[Frame]) -> ProtocolError:
        """The broker answered a request with the wrong frame type [NMQ-3.2-1]."""
        return cls(f"broker answered {type(got).__name__} where {expected.__name__} was due",
                   ErrorCode.MALFORMED, "NMQ-3.2-1")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_protocol_error, (self.message, self.code, self.rule, self.unacked))


def _rebuild_protocol_error(reason: str, code: ErrorCode, rule: str, unacked: int) -> ProtocolError:
    return ProtocolError(reason, code, rule, unacked)


class RequestTimeoutError(NanoMQError, TimeoutError):
    """A request got no answer within the client's timeout (its outcome is unknown)."""
