"""Shared helpers of the storage tests: build batches, walk and check records read back."""

from __future__ import annotations

import struct

from nanomq._c.log import encode_records, record_offsets

HDR = struct.Struct("<QQIIII")  # id, timestamp_ns, topic_id, size, crc, flags


def batch(payloads: list[bytes]) -> bytes:
    """Publisher-style records (ids 0) packed back to back."""
    return encode_records(payloads)


def payload(i: int, size: int = 24) -> bytes:
    """A deterministic payload that names its sequence number (for history checks)."""
    head = f"p{i:012d}|".encode()
    return (head * (size // len(head) + 1))[:size] if size >= len(head) else head[:size]


def records(view: memoryview | bytes, count: int) -> list[tuple[int, int, int, bytes]]:
    """(id, timestamp, topic_id, payload) of each record, after verifying framing and CRCs."""
    data = bytes(view)
    out = []
    for off in record_offsets(data, count):
        rid, ts, topic, size, _crc, _flags = HDR.unpack_from(data, off)
        out.append((rid, ts, topic, data[off + 64 : off + 64 + size]))
    return out


def read_all(log, from_id: int = 1) -> list[tuple[int, int, int, bytes]]:  # type: ignore[no-untyped-def]
    """Every record from ``from_id`` to the end, CRC-checked."""
    out: list[tuple[int, int, int, bytes]] = []
    nxt = from_id
    while True:
        r = log.read(nxt, 1000, 1 << 22)
        if r.count == 0:
            return out
        out.extend(records(r.data, r.count))
        nxt = r.first_id + r.count
