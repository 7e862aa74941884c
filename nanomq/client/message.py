"""What a subscriber hands to the application.

A :class:`Message` is a view of one record in the bytes of the DELIVER it came in: making one costs
an object and three references, and its fields are read from those bytes when the application
asks for them (the payload is sliced out once, on first access). So a subscriber draining a backlog
builds no per-record tuples, headers or payload copies it does not hand out (issue 12: no
per-record Python objects until the user touches them).
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

__all__ = ["Message", "RecordHeader"]

_HEADER = struct.Struct("<QQIIIIQQI")  # the 52 defined bytes of a record header
_ID_TS = struct.Struct("<QQ")
_unpack_header = _HEADER.unpack_from
_unpack_id_ts = _ID_TS.unpack_from
_SIZE = struct.Struct("<I").unpack_from


class RecordHeader(NamedTuple):
    """The 64-byte record header's fields (spec/protocol.md §5.1), as stored by the broker."""

    id: int
    timestamp_ns: int
    topic_id: int
    size: int
    crc: int
    flags: int
    producer_id: int
    sequence: int
    raw_size: int


class Message:
    """One record of a topic: ``data`` is the payload, decompressed if it was sent compressed.

    ``Message(id, timestamp, topic, data, header)`` builds one from its values; a subscriber makes
    them from the delivered bytes, reading each field when it is first asked for. Two messages are
    equal when all their fields are.
    """

    __slots__ = ("_buf", "_off", "topic", "_data", "_header")

    def __init__(self, id: int, timestamp: int, topic: str, data: bytes, header: RecordHeader) -> None:
        self._buf: Any = None
        self._off = 0
        self.topic = topic
        """The topic it was published to."""
        self._data: bytes | None = data
        self._header: RecordHeader | None = header._replace(id=id, timestamp_ns=timestamp)

    @classmethod
    def _view(cls, buf: bytes, off: int, topic: str, data: bytes | None = None) -> Message:
        """The record at ``buf[off:]`` (validated by the codec); ``data``: its payload when it had to
        be decompressed."""
        m = cls.__new__(cls)
        m._buf = buf
        m._off = off
        m.topic = topic
        m._data = data
        m._header = None
        return m

    @property
    def id(self) -> int:
        """Its position in the topic."""
        if self._header is not None:
            return self._header.id
        return int(_unpack_id_ts(self._buf, self._off)[0])

    @property
    def timestamp(self) -> int:
        """Append time in nanoseconds since the Unix epoch."""
        if self._header is not None:
            return self._header.timestamp_ns
        return int(_unpack_id_ts(self._buf, self._off)[1])

    @property
    def data(self) -> bytes:
        """The payload (decompressed)."""
        d = self._data
        if d is None:
            start = self._off + 64
            d = self._data = self._buf[start : start + _SIZE(self._buf, self._off + 20)[0]]
        return d

    @property
    def header(self) -> RecordHeader:
        """Every field of the stored record header."""
        h = self._header
        if h is None:
            h = self._header = RecordHeader._make(_unpack_header(self._buf, self._off))
        return h

    def _key(self) -> tuple[object, ...]:
        return (self.id, self.timestamp, self.topic, self.data, self.header)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        data = self.data
        shown = repr(data[:40]) + ("…" if len(data) > 40 else "")
        return f"Message(id={self.id}, timestamp={self.timestamp}, topic={self.topic!r}, data={shown})"

    def __reduce__(self) -> tuple[object, ...]:
        return (Message, (self.id, self.timestamp, self.topic, self.data, self.header))
