"""The codec's single exception type."""

from __future__ import annotations

from nanomq.errors import NanoMQError
from nanomq.protocol.constants import ErrorCode


class ProtocolError(NanoMQError):
    """A frame or record that violates spec/protocol.md.

    ``code`` is the ERROR-frame code a server answers with, ``rule`` the spec rule ID that was
    broken. ``fatal`` is True when the byte stream can no longer be trusted (the frame header is
    bad, so frame boundaries are lost): the connection must be closed. When False, the offending
    frame was consumed whole and decoding can go on with the next one; ``request_id`` then names
    the request to answer.
    """

    def __init__(
        self, code: ErrorCode, rule: str, message: str, *, fatal: bool = False, request_id: int = 0
    ) -> None:
        super().__init__(f"{code.name} [{rule}]: {message}")
        self.code = code
        self.rule = rule
        self.message = message
        self.fatal = fatal
        self.request_id = request_id

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self.code, self.rule, self.message, self.fatal, self.request_id))


def _rebuild(code: ErrorCode, rule: str, message: str, fatal: bool, request_id: int) -> ProtocolError:
    return ProtocolError(code, rule, message, fatal=fatal, request_id=request_id)
