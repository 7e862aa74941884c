"""Exceptions raised by the NanoMQ clients."""

from __future__ import annotations

from nanomq.protocol import ErrorCode

__all__ = ["NanoMQError", "ServerError", "NotSupportedError", "ConnectionLostError", "RequestTimeoutError"]


class NanoMQError(Exception):
    """Base class of every client error."""


class ServerError(NanoMQError):
    """The broker answered a request with an ERROR frame."""

    def __init__(self, code: int, message: str, rule: str = "") -> None:
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = f"error {code}"
        super().__init__(f"{name}: {message}" + (f" [{rule}]" if rule else ""))
        self.code = code
        self.message = message
        self.rule = rule


class NotSupportedError(ServerError):
    """The broker does not implement what was asked (its HELLO did not announce it)."""

    def __init__(self, message: str, rule: str = "") -> None:
        super().__init__(int(ErrorCode.NOT_SUPPORTED), message, rule)


class ConnectionLostError(NanoMQError):
    """The connection broke. ``unacked`` requests may or may not have taken effect.

    For a Publisher, ``unacked`` counts the records sent but not acknowledged: each may or may not
    be stored (semantics.md [NMQ-SEM-3-5]). The next call reconnects.
    """

    def __init__(self, message: str, unacked: int = 0) -> None:
        super().__init__(message + (f" ({unacked} record(s) sent without an ack: outcome unknown)" if unacked else ""))
        self.reason = message
        """The message without the unacked note."""
        self.unacked = unacked


class RequestTimeoutError(NanoMQError, TimeoutError):
    """A request got no answer within the client's timeout (its outcome is unknown)."""
