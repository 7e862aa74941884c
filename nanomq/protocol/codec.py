"""Framing: frames to bytes, and an incremental decoder from bytes (in any chunking) to frames.

Theory of operation
-------------------
Every frame starts with a 16-byte header ``size u32 | opcode u8 | flags u8 | reserved u16 |
request_id u64`` (little-endian), ``size`` counting the whole frame. The decoder keeps one
bytearray of unparsed input and a read offset; :meth:`Decoder.next_frame` looks at the header,
and once ``size`` bytes are buffered, slices the body out and hands it to the frame class that
the opcode table names for this decoder's role (a server decodes requests, a client responses).

Errors come in two kinds, told apart by ``ProtocolError.fatal``:

* header errors (size below 16 or above max_frame, flags or reserved bits set) make frame
  boundaries untrustworthy: the decoder is poisoned and re-raises the same error forever;
* body errors (bad CRC, batch over the limit, unknown opcode …) are raised *after* the frame has
  been consumed, so the caller can answer ERROR for that request id and keep going.

The buffer is compacted only when the consumed prefix exceeds half of it, so feeding N bytes
costs O(N) amortised regardless of chunking.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from nanomq.protocol.constants import (
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_PAYLOAD,
    FRAME_HEADER_SIZE,
    Ack,
    ErrorCode,
    Opcode,
)
from nanomq.protocol.errors import ProtocolError
from nanomq.protocol.frames import (
    _PUBLISH,
    Commit,
    Committed,
    Credit,
    Deliver,
    Error,
    Frame,
    Hello,
    HelloOk,
    Limits,
    Metadata,
    MetadataOk,
    Ping,
    Pong,
    Publish,
    PublishAck,
    Seek,
    SeekOk,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    valid_topic,
)
from nanomq.protocol.records import record_into, record_span

__all__ = ["encode", "encode_publish", "frame_header", "Decoder", "REQUESTS", "RESPONSES"]

_HEADER = struct.Struct("<IBBHQ")

_COMPACT_AT = 1 << 20
"""Decoded bytes at the head of a :class:`Decoder`'s buffer beyond which it is let go at once."""

REQUESTS: dict[int, type[Frame]] = {
    cls.OPCODE: cls for cls in (Hello, Publish, Subscribe, Unsubscribe, Credit, Commit, Seek, Metadata, Ping)
}
"""Opcodes a server accepts, client → server."""
RESPONSES: dict[int, type[Frame]] = {
    cls.OPCODE: cls
    for cls in (HelloOk, PublishAck, Subscribed, Unsubscribed, Deliver, Committed, SeekOk, MetadataOk, Pong, Error)
}
"""Opcodes a client accepts, server → client."""


def frame_header(opcode: int, request_id: int, body_len: int) -> bytes:
    """The 16-byte header of a frame whose body is ``body_len`` bytes [NMQ-3.1-1]."""
    return _HEADER.pack(FRAME_HEADER_SIZE + body_len, opcode, 0, 0, request_id)


def encode(frame: Frame) -> bytes:
    """The complete bytes of ``frame`` (header + body). Raises ValueError for an invalid frame."""
    if not 0 <= frame.request_id < 1 << 64:
        raise ValueError("request_id must fit in 64 bits")
    body = frame.body()
    return frame_header(frame.OPCODE, frame.request_id, len(body)) + body


def encode_publish(request_id: int, topic: str, ack: Ack, payload: bytes,
                   max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """The bytes of ``encode(Publish(request_id, topic, ack, RecordBatch.from_payloads([payload])))``
    built in one buffer with one C call: a publisher's one-record path (about 4x cheaper than the
    general one; tests/test_codec.py checks that the two agree). Raises ValueError as they do."""
    if not 0 <= request_id < 1 << 64:
        raise ValueError("request_id must fit in 64 bits")
    if len(payload) > max_payload:
        raise ValueError(f"payload of {len(payload)} bytes exceeds max_payload {max_payload}")
    if not valid_topic(topic):
        raise ValueError(f"invalid topic {topic!r}: 1-255 characters of A-Z a-z 0-9 . _ -")
    name = topic.encode()
    head = FRAME_HEADER_SIZE + _PUBLISH.size + len(name)
    size = head + record_span(len(payload))
    out = bytearray(size)
    _HEADER.pack_into(out, 0, size, Opcode.PUBLISH, 0, 0, request_id)
    _PUBLISH.pack_into(out, FRAME_HEADER_SIZE, Ack(ack), 0, len(name), 1, 0)
    out[FRAME_HEADER_SIZE + _PUBLISH.size : head] = name
    record_into(out, head, payload)
    return bytes(out)


class Decoder:
    """Incremental frame decoder for one direction of one connection.

    ``role="server"`` decodes what clients send, ``role="client"`` what servers send. Limits
    default to the spec's; a client should call :meth:`set_limits` with what HELLO_OK announced.
    """

    __slots__ = ("_buf", "_pos", "_table", "_max_frame", "_limits", "_dead")

    def __init__(
        self,
        role: str = "server",
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        limits: Limits | None = None,
    ) -> None:
        if role not in ("server", "client"):
            raise ValueError("role must be 'server' or 'client'")
        self._table = REQUESTS if role == "server" else RESPONSES
        self._buf = bytearray()
        self._pos = 0
        self._max_frame = max_frame
        self._limits = limits or Limits()
        self._dead: ProtocolError | None = None

    def set_limits(self, *, max_frame: int | None = None, limits: Limits | None = None) -> None:
        """Change the accepted frame size and record limits (e.g. after HELLO_OK)."""
        if max_frame is not None:
            self._max_frame = max_frame
        if limits is not None:
            self._limits = limits

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded into a frame."""
        return len(self._buf) - self._pos

    @property
    def pending_frame_size(self) -> int:
        """Size of the frame being assembled (0 if its header is not complete yet)."""
        if self.buffered < 4:
            return 0
        return int.from_bytes(self._buf[self._pos : self._pos + 4], "little")

    def pending(self) -> memoryview:
        """The bytes received and not yet decoded, as a view (no copy), for a fast path that takes
        whole frames off the head (then :meth:`skip`). Release the view before the next
        :meth:`feed`: the buffer cannot move while a view of it exists."""
        return memoryview(self._buf)[self._pos :]

    def skip(self, n: int) -> None:
        """Drop ``n`` bytes from the head of what is buffered: whole frames a fast path handled."""
        if not 0 <= n <= len(self._buf) - self._pos:
            raise ValueError(f"cannot skip {n} of {len(self._buf) - self._pos} buffered bytes")
        self._pos += n
        self._let_go()

    def _let_go(self) -> None:
        """After a frame was taken: once ``_COMPACT_AT`` bytes or more of the buffer are decoded, keep
        only the rest, in a new buffer, so a large frame's memory goes with its handling and not with
        the next :meth:`feed`, which an idle connection never calls ([NMQ-6.2-6]). A new object, not
        ``del``: a view a fast path still holds keeps the old buffer alive instead of failing."""
        if self._pos >= _COMPACT_AT:
            self._buf = self._buf[self._pos :]
            self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes. Never raises: errors surface from :meth:`next_frame`."""
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None if more bytes are needed. Raises ProtocolError."""
        if self._dead is not None:
            raise self._dead
        buf, pos = self._buf, self._pos
        if len(buf) - pos < FRAME_HEADER_SIZE:
            # A size field already known to be too large is fatal without waiting for the rest.
            if len(buf) - pos >= 4:
                self._check_size(int.from_bytes(buf[pos : pos + 4], "little"))
            return None
        size, opcode, flags, reserved, request_id = _HEADER.unpack_from(buf, pos)
        self._check_size(size)
        if flags or reserved:
            self._poison(ErrorCode.RESERVED_NONZERO, "NMQ-3.1-4",
                         f"frame flags 0x{flags:02x} / reserved 0x{reserved:04x} must be zero")
        if len(buf) - pos < size:
            return None
        body = bytes(buf[pos + FRAME_HEADER_SIZE : pos + size])
        self._pos = pos + size
        self._let_go()
        cls = self._table.get(opcode)
        if cls is None:
            known = opcode in REQUESTS or opcode in RESPONSES
            raise ProtocolError(
                ErrorCode.UNKNOWN_OPCODE, "NMQ-3.2-2",
                f"opcode 0x{opcode:02x} ({Opcode(opcode).name if known else 'unknown'}) "
                "is not valid in this direction" if known else f"unknown opcode 0x{opcode:02x}",
                request_id=request_id,
            )
        return cls.parse(body, request_id, self._limits)

    def __iter__(self) -> Iterator[Frame]:
        """Every complete frame buffered now (stops at the first ProtocolError, which propagates)."""
        while (frame := self.next_frame()) is not None:
            yield frame

    def _check_size(self, size: int) -> None:
        if size < FRAME_HEADER_SIZE:
            self._poison(ErrorCode.MALFORMED, "NMQ-3.1-2", f"frame size {size} is below the 16-byte header")
        if size > self._max_frame:
            self._poison(ErrorCode.FRAME_TOO_LARGE, "NMQ-6.1-3",
                         f"frame of {size} bytes exceeds max_frame {self._max_frame}")

    def _poison(self, code: ErrorCode, rule: str, message: str) -> None:
        self._dead = ProtocolError(code, rule, message, fatal=True)
        raise self._dead
