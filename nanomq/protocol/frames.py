"""Frame types of wire protocol v1: one frozen, slotted dataclass per opcode.

Each class knows its opcode and how to turn its body into bytes and back; the table-driven
:mod:`nanomq.protocol.codec` does the framing. Field rules (reserved zero, name lengths, batch
limits) are checked here so that broker, clients and the conformance kit share one parser.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import ClassVar

from nanomq.protocol.constants import (
    DEFAULT_MAX_PAYLOAD,
    MAX_BATCH,
    MAX_NAME,
    PROTOCOL_VERSION,
    Ack,
    ErrorCode,
    Opcode,
    Start,
)
from nanomq.protocol.errors import ProtocolError
from nanomq.protocol.records import RecordBatch

__all__ = [
    "Frame", "Hello", "HelloOk", "Publish", "PublishAck", "Subscribe", "Subscribed", "Unsubscribe",
    "Unsubscribed", "Credit", "Deliver", "Commit", "Committed", "Seek", "SeekOk", "Metadata",
    "MetadataOk", "TopicInfo", "Ping", "Pong", "Error", "Limits", "valid_topic",
]

_TOPIC_RE = re.compile(rb"[A-Za-z0-9._\-]{1,255}")


def valid_topic(name: str) -> bool:
    """True if ``name`` is a legal topic or group name [NMQ-4.3-1]: 1–255 of ``A-Z a-z 0-9 . _ -``."""
    return bool(_TOPIC_RE.fullmatch(name.encode("utf-8", "replace"))) and name not in (".", "..")


@dataclass(frozen=True, slots=True)
class Limits:
    """What a decoder accepts: the server's announced limits (HELLO_OK) or the defaults."""

    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_batch: int = MAX_BATCH


def _fail(code: ErrorCode, rule: str, msg: str, rid: int) -> ProtocolError:
    return ProtocolError(code, rule, msg, request_id=rid)


def _need(body: bytes, n: int, rid: int, what: str) -> None:
    if len(body) != n:
        raise _fail(ErrorCode.MALFORMED, "NMQ-3.1-2", f"{what} body is {len(body)} bytes, expected {n}", rid)


def _reserved(value: int, rid: int, what: str) -> None:
    if value:
        raise _fail(ErrorCode.RESERVED_NONZERO, "NMQ-3.1-4", f"reserved field of {what} is not zero", rid)


def _name(raw: bytes, rid: int, what: str, *, allow_empty: bool = False) -> str:
    if not raw and allow_empty:
        return ""
    if not _TOPIC_RE.fullmatch(raw) or raw in (b".", b".."):
        raise _fail(ErrorCode.INVALID_ARGUMENT, "NMQ-4.3-1", f"invalid {what} {raw[:300]!r}", rid)
    return raw.decode("ascii")


def _enc_name(s: str, what: str, *, allow_empty: bool = False) -> bytes:
    if (allow_empty and s == "") or valid_topic(s):
        return s.encode()
    raise ValueError(f"invalid {what} {s!r}: 1-255 characters of A-Z a-z 0-9 . _ -")


def _text(raw: bytes, rid: int, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(ErrorCode.MALFORMED, "NMQ-3.1-5", f"{what} is not valid UTF-8", rid) from None


def _enum(cls: type, value: int, rid: int, what: str, rule: str) -> object:
    try:
        return cls(value)
    except ValueError:
        raise _fail(ErrorCode.INVALID_ARGUMENT, rule, f"unknown {what} {value}", rid) from None


@dataclass(frozen=True, slots=True)
class Frame:
    """Base of every frame: ``request_id`` pairs a response with its request (0 for pushes)."""

    OPCODE: ClassVar[Opcode]
    request_id: int

    def body(self) -> bytes:
        """The frame body (everything after the 16-byte frame header)."""
        raise NotImplementedError  # every concrete frame overrides this

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Frame:
        """Decode a body of this frame type; raise ProtocolError."""
        raise NotImplementedError  # every concrete frame overrides this


# ---------------------------------------------------------------- HELLO / HELLO_OK

_HELLO = struct.Struct("<HHHH")


@dataclass(frozen=True, slots=True)
class Hello(Frame):
    """Client → server, first frame of every connection [NMQ-4.1-1]."""

    OPCODE: ClassVar[Opcode] = Opcode.HELLO
    version: int = PROTOCOL_VERSION
    client_name: str = ""
    auth_token: bytes = b""

    def body(self) -> bytes:
        name = self.client_name.encode()
        if len(name) > MAX_NAME or len(self.auth_token) > 0xFFFF:
            raise ValueError("client name or token too long")
        return _HELLO.pack(self.version, len(name), len(self.auth_token), 0) + name + self.auth_token

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Hello:
        if len(body) < _HELLO.size:
            raise _fail(ErrorCode.MALFORMED, "NMQ-3.1-2", "HELLO body too short", request_id)
        version, nlen, tlen, res = _HELLO.unpack_from(body)
        _reserved(res, request_id, "HELLO")
        _need(body, _HELLO.size + nlen + tlen, request_id, "HELLO")
        if nlen > MAX_NAME:
            raise _fail(ErrorCode.INVALID_ARGUMENT, "NMQ-4.1-2", "client name longer than 255 bytes", request_id)
        name = _text(body[8 : 8 + nlen], request_id, "client name")
        return cls(request_id, version, name, body[8 + nlen :])


_HELLO_OK = struct.Struct("<HHIIII")


@dataclass(frozen=True, slots=True)
class HelloOk(Frame):
    """Server → client: the protocol version spoken, capabilities and limits [NMQ-4.1-4]."""

    OPCODE: ClassVar[Opcode] = Opcode.HELLO_OK
    version: int = PROTOCOL_VERSION
    capabilities: int = 0
    max_frame: int = 0
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_batch: int = MAX_BATCH
    server_name: str = ""

    def body(self) -> bytes:
        name = self.server_name.encode()
        if len(name) > MAX_NAME:
            raise ValueError("server name too long")
        return _HELLO_OK.pack(self.version, len(name), self.capabilities, self.max_frame,
                              self.max_payload, self.max_batch) + name

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> HelloOk:
        if len(body) < _HELLO_OK.size:
            raise _fail(ErrorCode.MALFORMED, "NMQ-3.1-2", "HELLO_OK body too short", request_id)
        version, nlen, caps, max_frame, max_payload, max_batch = _HELLO_OK.unpack_from(body)
        _need(body, _HELLO_OK.size + nlen, request_id, "HELLO_OK")
        name = _text(body[_HELLO_OK.size :], request_id, "server name")
        return cls(request_id, version, caps, max_frame, max_payload, max_batch, name)


# ---------------------------------------------------------------- PUBLISH / PUBLISH_ACK

_PUBLISH = struct.Struct("<BBHHH")


@dataclass(frozen=True, slots=True)
class Publish(Frame):
    """Client → server: append a batch of 1..max_batch records to ``topic`` [NMQ-4.2-1]."""

    OPCODE: ClassVar[Opcode] = Opcode.PUBLISH
    topic: str = ""
    ack: Ack = Ack.DURABLE
    records: RecordBatch = field(default_factory=lambda: RecordBatch(b"", 0, ()))

    def body(self) -> bytes:
        return self.prefix() + self.records.data

    def prefix(self) -> bytes:
        """The body without the record bytes (so a sender can write the records unjoined)."""
        t = _enc_name(self.topic, "topic")
        if not 0 < self.records.count <= MAX_BATCH:
            raise ValueError(f"a batch holds 1..{MAX_BATCH} records")
        return _PUBLISH.pack(int(self.ack), 0, len(t), self.records.count, 0) + t

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Publish:
        if len(body) < _PUBLISH.size:
            raise _fail(ErrorCode.MALFORMED, "NMQ-3.1-2", "PUBLISH body too short", request_id)
        ack, res1, tlen, count, res2 = _PUBLISH.unpack_from(body)
        _reserved(res1 | res2, request_id, "PUBLISH")
        if len(body) < _PUBLISH.size + tlen:
            raise _fail(ErrorCode.MALFORMED, "NMQ-3.1-2", "PUBLISH topic runs past the frame", request_id)
        ack_mode = _enum(Ack, ack, request_id, "ack mode", "NMQ-4.2-2")
        topic = _name(body[8 : 8 + tlen], request_id, "topic")
        if count == 0 or count > limits.max_batch:
            raise _fail(ErrorCode.BATCH_TOO_LARGE, "NMQ-6.1-1",
                        f"batch of {count} records (allowed 1..{limits.max_batch})", request_id)
        batch = RecordBatch.parse(body[8 + tlen :], count, max_payload=limits.max_payload, request_id=request_id)
        return cls(request_id, topic, ack_mode, batch)  # type: ignore[arg-type]


_PUBLISH_ACK = struct.Struct("<QII")


@dataclass(frozen=True, slots=True)
class PublishAck(Frame):
    """Server → client: the batch got ids first_id .. first_id + count - 1 [NMQ-4.2-5]."""

    OPCODE: ClassVar[Opcode] = Opcode.PUBLISH_ACK
    first_id: int = 0
    count: int = 0

    @property
    def last_id(self) -> int:
        """Id of the batch's last record."""
        return self.first_id + self.count - 1

    def body(self) -> bytes:
        return _PUBLISH_ACK.pack(self.first_id, self.count, 0)

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> PublishAck:
        _need(body, _PUBLISH_ACK.size, request_id, "PUBLISH_ACK")
        first, count, res = _PUBLISH_ACK.unpack(body)
        _reserved(res, request_id, "PUBLISH_ACK")
        return cls(request_id, first, count)


# ---------------------------------------------------------------- SUBSCRIBE / SUBSCRIBED

_SUBSCRIBE = struct.Struct("<QIBBHHH")


@dataclass(frozen=True, slots=True)
class Subscribe(Frame):
    """Client → server: start a pushed subscription to ``topic`` [NMQ-4.4-1]."""

    OPCODE: ClassVar[Opcode] = Opcode.SUBSCRIBE
    topic: str = ""
    start: Start = Start.EARLIEST
    start_value: int = 0
    credit: int = 0
    group: str = ""

    def body(self) -> bytes:
        t = _enc_name(self.topic, "topic")
        g = _enc_name(self.group, "group", allow_empty=True)
        return _SUBSCRIBE.pack(self.start_value, self.credit, int(self.start), 0, len(t), len(g), 0) + t + g

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Subscribe:
        if len(body) < _SUBSCRIBE.size:
            raise _fail(ErrorCode.MALFORMED, "NMQ-3.1-2", "SUBSCRIBE body too short", request_id)
        value, credit, start, res1, tlen, glen, res2 = _SUBSCRIBE.unpack_from(body)
        _reserved(res1 | res2, request_id, "SUBSCRIBE")
        _need(body, _SUBSCRIBE.size + tlen + glen, request_id, "SUBSCRIBE")
        kind = _enum(Start, start, request_id, "start position", "NMQ-4.4-2")
        o = _SUBSCRIBE.size
        topic = _name(body[o : o + tlen], request_id, "topic")
        group = _name(body[o + tlen :], request_id, "group", allow_empty=True)
        return cls(request_id, topic, kind, value, credit, group)  # type: ignore[arg-type]


_SUBSCRIBED = struct.Struct("<IIQQ")


@dataclass(frozen=True, slots=True)
class Subscribed(Frame):
    """Server → client: subscription ``sub_id`` will deliver from ``next_id`` [NMQ-4.4-5]."""

    OPCODE: ClassVar[Opcode] = Opcode.SUBSCRIBED
    sub_id: int = 0
    topic_id: int = 0
    next_id: int = 0
    end_id: int = 0

    def body(self) -> bytes:
        return _SUBSCRIBED.pack(self.sub_id, self.topic_id, self.next_id, self.end_id)

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Subscribed:
        _need(body, _SUBSCRIBED.size, request_id, "SUBSCRIBED")
        return cls(request_id, *_SUBSCRIBED.unpack(body))


_SUB_ID = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class Unsubscribe(Frame):
    """Client → server: end subscription ``sub_id`` [NMQ-4.5-1]."""

    OPCODE: ClassVar[Opcode] = Opcode.UNSUBSCRIBE
    sub_id: int = 0

    def body(self) -> bytes:
        return _SUB_ID.pack(self.sub_id, 0)

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Unsubscribe:
        _need(body, _SUB_ID.size, request_id, "UNSUBSCRIBE")
        sub_id, res = _SUB_ID.unpack(body)
        _reserved(res, request_id, "UNSUBSCRIBE")
        return cls(request_id, sub_id)


@dataclass(frozen=True, slots=True)
class Unsubscribed(Frame):
    """Server → client: the subscription is gone; no DELIVER for it follows [NMQ-4.5-2]."""

    OPCODE: ClassVar[Opcode] = Opcode.UNSUBSCRIBED

    def body(self) -> bytes:
        return b""

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Unsubscribed:
        _need(body, 0, request_id, "UNSUBSCRIBED")
        return cls(request_id)


# ---------------------------------------------------------------- CREDIT / DELIVER


@dataclass(frozen=True, slots=True)
class Credit(Frame):
    """Client → server: allow ``credit`` more records on ``sub_id`` [NMQ-4.6-1]. No response."""

    OPCODE: ClassVar[Opcode] = Opcode.CREDIT
    sub_id: int = 0
    credit: int = 0

    def body(self) -> bytes:
        return _SUB_ID.pack(self.sub_id, self.credit)

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Credit:
        _need(body, _SUB_ID.size, request_id, "CREDIT")
        return cls(request_id, *_SUB_ID.unpack(body))


_DELIVER = struct.Struct("<IHH")


@dataclass(frozen=True, slots=True)
class Deliver(Frame):
    """Server → client push: records for ``sub_id``, stored bytes as they are [NMQ-4.6-3]."""

    OPCODE: ClassVar[Opcode] = Opcode.DELIVER
    sub_id: int = 0
    records: RecordBatch = field(default_factory=lambda: RecordBatch(b"", 0, ()))

    def body(self) -> bytes:
        return self.prefix(self.sub_id, self.records.count) + self.records.data

    @staticmethod
    def prefix(sub_id: int, count: int) -> bytes:
        """The body without the record bytes, for a server sending straight from its log."""
        if not 0 < count <= MAX_BATCH:
            raise ValueError(f"a batch holds 1..{MAX_BATCH} records")
        return _DELIVER.pack(sub_id, count, 0)

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Deliver:
        if len(body) < _DELIVER.size:
            raise _fail(ErrorCode.MALFORMED, "NMQ-3.1-2", "DELIVER body too short", request_id)
        sub_id, count, res = _DELIVER.unpack_from(body)
        _reserved(res, request_id, "DELIVER")
        if count == 0 or count > limits.max_batch:
            raise _fail(ErrorCode.BATCH_TOO_LARGE, "NMQ-6.1-1", f"DELIVER of {count} records", request_id)
        batch = RecordBatch.parse(body[_DELIVER.size :], count, max_payload=limits.max_payload,
                                  request_id=request_id)
        return cls(request_id, sub_id, batch)


# ---------------------------------------------------------------- COMMIT / COMMITTED

_COMMIT = struct.Struct("<IHH")


@dataclass(frozen=True, slots=True)
class Commit(Frame):
    """Client → server: mark delivered record ids of ``sub_id`` as processed [NMQ-4.7-1]."""

    OPCODE: ClassVar[Opcode] = Opcode.COMMIT
    sub_id: int = 0
    ids: tuple[int, ...] = ()

    def body(self) -> bytes:
        if not 0 < len(self.ids) <= MAX_BATCH:
            raise ValueError(f"a commit holds 1..{MAX_BATCH} ids")
        return _COMMIT.pack(self.sub_id, len(self.ids), 0) + struct.pack(f"<{len(self.ids)}Q", *self.ids)

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Commit:
        if len(body) < _COMMIT.size:
            raise _fail(ErrorCode.MALFORMED, "NMQ-3.1-2", "COMMIT body too short", request_id)
        sub_id, count, res = _COMMIT.unpack_from(body)
        _reserved(res, request_id, "COMMIT")
        if count == 0 or count > limits.max_batch:
            raise _fail(ErrorCode.BATCH_TOO_LARGE, "NMQ-6.1-1", f"COMMIT of {count} ids", request_id)
        _need(body, _COMMIT.size + 8 * count, request_id, "COMMIT")
        ids = struct.unpack_from(f"<{count}Q", body, _COMMIT.size)
        if 0 in ids:
            raise _fail(ErrorCode.INVALID_ARGUMENT, "NMQ-4.7-2", "record id 0 means no record", request_id)
        return cls(request_id, sub_id, ids)


_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class Committed(Frame):
    """Server → client: every id below ``position`` is committed for the subscription [NMQ-4.7-4]."""

    OPCODE: ClassVar[Opcode] = Opcode.COMMITTED
    position: int = 0

    def body(self) -> bytes:
        return _U64.pack(self.position)

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Committed:
        _need(body, 8, request_id, "COMMITTED")
        return cls(request_id, _U64.unpack(body)[0])


# ---------------------------------------------------------------- SEEK / SEEK_OK

_SEEK = struct.Struct("<IBBHQ")


@dataclass(frozen=True, slots=True)
class Seek(Frame):
    """Client → server: move subscription ``sub_id`` to a new position [NMQ-4.8-1]."""

    OPCODE: ClassVar[Opcode] = Opcode.SEEK
    sub_id: int = 0
    start: Start = Start.ID
    value: int = 0

    def body(self) -> bytes:
        return _SEEK.pack(self.sub_id, int(self.start), 0, 0, self.value)

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Seek:
        _need(body, _SEEK.size, request_id, "SEEK")
        sub_id, start, res1, res2, value = _SEEK.unpack(body)
        _reserved(res1 | res2, request_id, "SEEK")
        kind = _enum(Start, start, request_id, "seek position", "NMQ-4.8-2")
        return cls(request_id, sub_id, kind, value)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class SeekOk(Frame):
    """Server → client: DELIVERs after this frame start at ``next_id`` [NMQ-4.8-4]."""

    OPCODE: ClassVar[Opcode] = Opcode.SEEK_OK
    next_id: int = 0

    def body(self) -> bytes:
        return _U64.pack(self.next_id)

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> SeekOk:
        _need(body, 8, request_id, "SEEK_OK")
        return cls(request_id, _U64.unpack(body)[0])


# ---------------------------------------------------------------- METADATA / METADATA_OK

_METADATA = struct.Struct("<HHI")


@dataclass(frozen=True, slots=True)
class Metadata(Frame):
    """Client → server: describe ``topic``, or every topic when empty [NMQ-4.9-1]."""

    OPCODE: ClassVar[Opcode] = Opcode.METADATA
    topic: str = ""

    def body(self) -> bytes:
        t = _enc_name(self.topic, "topic", allow_empty=True)
        return _METADATA.pack(len(t), 0, 0) + t

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Metadata:
        if len(body) < _METADATA.size:
            raise _fail(ErrorCode.MALFORMED, "NMQ-3.1-2", "METADATA body too short", request_id)
        tlen, res1, res2 = _METADATA.unpack_from(body)
        _reserved(res1 | res2, request_id, "METADATA")
        _need(body, _METADATA.size + tlen, request_id, "METADATA")
        return cls(request_id, _name(body[_METADATA.size :], request_id, "topic", allow_empty=True))


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """One topic in METADATA_OK: retained records are ids ``first_id`` .. ``next_id - 1``."""

    topic_id: int
    name: str
    first_id: int
    next_id: int


_TOPIC_INFO = struct.Struct("<IHHQQ")
_METADATA_OK = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class MetadataOk(Frame):
    """Server → client: the topics asked about [NMQ-4.9-2]."""

    OPCODE: ClassVar[Opcode] = Opcode.METADATA_OK
    topics: tuple[TopicInfo, ...] = ()

    def body(self) -> bytes:
        parts = [_METADATA_OK.pack(len(self.topics), 0)]
        for t in self.topics:
            name = _enc_name(t.name, "topic")
            parts.append(_TOPIC_INFO.pack(t.topic_id, len(name), 0, t.first_id, t.next_id) + name)
        return b"".join(parts)

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> MetadataOk:
        if len(body) < _METADATA_OK.size:
            raise _fail(ErrorCode.MALFORMED, "NMQ-3.1-2", "METADATA_OK body too short", request_id)
        count, res = _METADATA_OK.unpack_from(body)
        _reserved(res, request_id, "METADATA_OK")
        off, topics = _METADATA_OK.size, []
        for _ in range(count):
            if len(body) < off + _TOPIC_INFO.size:
                raise _fail(ErrorCode.MALFORMED, "NMQ-3.1-2", "METADATA_OK entry truncated", request_id)
            tid, nlen, r, first, nxt = _TOPIC_INFO.unpack_from(body, off)
            _reserved(r, request_id, "METADATA_OK entry")
            off += _TOPIC_INFO.size
            if len(body) < off + nlen:
                raise _fail(ErrorCode.MALFORMED, "NMQ-3.1-2", "METADATA_OK name truncated", request_id)
            topics.append(TopicInfo(tid, _name(body[off : off + nlen], request_id, "topic"), first, nxt))
            off += nlen
        _need(body, off, request_id, "METADATA_OK")
        return cls(request_id, tuple(topics))


# ---------------------------------------------------------------- PING / PONG / ERROR


@dataclass(frozen=True, slots=True)
class Ping(Frame):
    """Client → server liveness check; answered by PONG with the same token [NMQ-4.10-1]."""

    OPCODE: ClassVar[Opcode] = Opcode.PING
    token: int = 0

    def body(self) -> bytes:
        return _U64.pack(self.token)

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Ping:
        _need(body, 8, request_id, "PING")
        return cls(request_id, _U64.unpack(body)[0])


@dataclass(frozen=True, slots=True)
class Pong(Frame):
    """Server → client answer to PING."""

    OPCODE: ClassVar[Opcode] = Opcode.PONG
    token: int = 0

    def body(self) -> bytes:
        return _U64.pack(self.token)

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Pong:
        _need(body, 8, request_id, "PONG")
        return cls(request_id, _U64.unpack(body)[0])


_ERROR = struct.Struct("<HHHH")


@dataclass(frozen=True, slots=True)
class Error(Frame):
    """Server → client: request ``request_id`` failed (0: the connection itself) [NMQ-8-1]."""

    OPCODE: ClassVar[Opcode] = Opcode.ERROR
    code: int = ErrorCode.INTERNAL
    message: str = ""
    rule: str = ""

    def body(self) -> bytes:
        m = self.message.encode()[:4096]
        r = self.rule.encode()[:64]
        return _ERROR.pack(int(self.code), len(m), len(r), 0) + m + r

    @classmethod
    def parse(cls, body: bytes, request_id: int, limits: Limits) -> Error:
        if len(body) < _ERROR.size:
            raise _fail(ErrorCode.MALFORMED, "NMQ-3.1-2", "ERROR body too short", request_id)
        code, mlen, rlen, res = _ERROR.unpack_from(body)
        _reserved(res, request_id, "ERROR")
        _need(body, _ERROR.size + mlen + rlen, request_id, "ERROR")
        msg = _text(body[8 : 8 + mlen], request_id, "error message")
        rule = _text(body[8 + mlen :], request_id, "error rule")
        return cls(request_id, code, msg, rule)

    @property
    def error_code(self) -> ErrorCode | int:
        """The code as an :class:`ErrorCode` when known (codes from newer servers stay ints)."""
        try:
            return ErrorCode(self.code)
        except ValueError:
            return self.code
