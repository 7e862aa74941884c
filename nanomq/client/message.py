"""What a subscriber hands to the application."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Message", "RecordHeader"]


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


@dataclass(frozen=True, slots=True)
class Message:
    """One record of a topic: ``data`` is the payload, decompressed if it was sent compressed."""

    id: int
    timestamp: int
    """Append time in nanoseconds since the Unix epoch."""
    topic: str
    data: bytes
    header: RecordHeader
