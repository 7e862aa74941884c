"""Numbers of wire protocol v1 (spec/protocol.md): opcodes, error codes, limits, capabilities."""

from __future__ import annotations

from enum import IntEnum, IntFlag

PROTOCOL_VERSION = 1
FRAME_HEADER_SIZE = 16
RECORD_HEADER_SIZE = 64

MAX_BATCH = 256
"""Most records in one PUBLISH or DELIVER frame and most ids in one COMMIT [NMQ-6.1-1]."""
DEFAULT_MAX_PAYLOAD = 64 * 1024
"""Default largest record payload, in bytes [NMQ-6.1-2]."""
DEFAULT_MAX_FRAME = 16 * 1024 * 1024 + 64 * 1024
"""Default largest frame: a full batch of maximum records fits with room for the headers."""
MAX_NAME = 255
"""Longest topic, group or client name, in bytes."""


class Opcode(IntEnum):
    """Frame opcodes; a response's opcode is its request's | 0x80, ERROR is 0xFF."""

    HELLO = 0x01
    PUBLISH = 0x02
    SUBSCRIBE = 0x03
    UNSUBSCRIBE = 0x04
    CREDIT = 0x05
    COMMIT = 0x06
    SEEK = 0x07
    METADATA = 0x08
    PING = 0x09
    HELLO_OK = 0x81
    PUBLISH_ACK = 0x82
    SUBSCRIBED = 0x83
    UNSUBSCRIBED = 0x84
    DELIVER = 0x85
    COMMITTED = 0x86
    SEEK_OK = 0x87
    METADATA_OK = 0x88
    PONG = 0x89
    ERROR = 0xFF


class ErrorCode(IntEnum):
    """The ERROR frame's code field (spec/protocol.md §8). Fatal ones close the connection."""

    MALFORMED = 1
    UNKNOWN_OPCODE = 2
    FRAME_TOO_LARGE = 3
    RESERVED_NONZERO = 4
    BAD_CRC = 5
    BATCH_TOO_LARGE = 6
    PAYLOAD_TOO_LARGE = 7
    NOT_SUPPORTED = 8
    UNSUPPORTED_VERSION = 9
    AUTH_FAILED = 10
    BAD_STATE = 11
    UNKNOWN_TOPIC = 12
    UNKNOWN_SUBSCRIPTION = 13
    INVALID_ARGUMENT = 14
    OUT_OF_RANGE = 15
    STORAGE_ERROR = 16
    TOO_MANY_CONNECTIONS = 17
    RESOURCE_LIMIT = 18
    SHUTTING_DOWN = 19
    INTERNAL = 20
    PERMISSION_DENIED = 21


class Capability(IntFlag):
    """Bits of HELLO_OK's capabilities field: optional features a server implements."""

    COMPRESSION_LZ4 = 1 << 0
    CONSUMER_GROUPS = 1 << 1
    SEEK_TIME = 1 << 2
    IDEMPOTENT = 1 << 3
    TLS = 1 << 4
    AUTH = 1 << 5


class Ack(IntEnum):
    """PUBLISH acknowledgement modes (spec/semantics.md §3)."""

    NONE = 0
    WRITTEN = 1
    DURABLE = 2


class Start(IntEnum):
    """Where a SUBSCRIBE or SEEK starts."""

    EARLIEST = 0
    LATEST = 1
    COMMITTED = 2
    ID = 3
    TIMESTAMP = 4


class RecordFlag(IntFlag):
    """Bits of a record header's flags field."""

    LZ4 = 1 << 0


KNOWN_RECORD_FLAGS = int(RecordFlag.LZ4)
