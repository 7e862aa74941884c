"""Pure-Python record validation: the reference the C scanner (record.c) is fuzzed against.

Slow (a Python loop per record) and never on a hot path; it exists so the framing rules are
written twice, independently, and a differential fuzzer can check the two agree on every input.
"""

from __future__ import annotations

from nanomq._c.crc import crc32c_sw
from nanomq.protocol.constants import KNOWN_RECORD_FLAGS, RECORD_HEADER_SIZE, RecordFlag

__all__ = ["scan"]




def scan(data: bytes, count: int, max_payload: int) -> tuple[int, int, list[int]]:
    """Validate like ``nmq_records_scan`` with CRC checks: (C return code, failing index, offsets)."""
    off, offsets = 0, list[int]()
    for i in range(count):
        if len(data) - off < RECORD_HEADER_SIZE:
            return -1, i, offsets
        size = int.from_bytes(data[off + 20 : off + 24], "little")
        if size > max_payload:
            return -2, i, offsets
        span = (RECORD_HEADER_SIZE + size + 7) & ~7
        if len(data) - off < span:
            return -1, i, offsets
        flags = int.from_bytes(data[off + 28 : off + 32], "little")
        raw_size = int.from_bytes(data[off + 48 : off + 52], "little")
        if flags & ~KNOWN_RECORD_FLAGS or any(data[off + 52 : off + 64]):
            return -4, i, offsets
        if not flags & RecordFlag.LZ4 and raw_size:
            return -4, i, offsets
        if raw_size > max_payload:
            return -8, i, offsets
        if any(data[off + RECORD_HEADER_SIZE + size : off + span]):
            return -6, i, offsets
        hdr = bytearray(data[off : off + RECORD_HEADER_SIZE])
        stored = int.from_bytes(hdr[24:28], "little")
        hdr[24:28] = bytes(4)
        if crc32c_sw(data[off + RECORD_HEADER_SIZE : off + RECORD_HEADER_SIZE + size], crc32c_sw(hdr)) != stored:
            return -3, i, offsets
        offsets.append(off)
        off += span
    return (0 if off == len(data) else -5), count, offsets
