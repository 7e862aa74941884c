"""Records and record batches: the 64-byte header + payload, identical on the wire and on disk.

Validation and encoding of a batch is one C call (``nanomq._c._core``): a cffi call costs ~65 ns
and moving bytes ~250 ns, so per-record calls would cap a Python loop at 1–3 M records/s. Python
then only slices headers and payloads out of the validated buffer.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from nanomq._c import realize_all
from nanomq._c._core import ffi, lib
from nanomq.protocol.constants import (
    DEFAULT_MAX_PAYLOAD,
    KNOWN_RECORD_FLAGS,
    MAX_BATCH,
    RECORD_HEADER_SIZE,
    ErrorCode,
)
from nanomq.protocol.errors import ProtocolError

__all__ = ["Record", "RecordBatch", "record_into", "record_span"]

_U32_ARRAY, _U32_PTR = realize_all(ffi, lib, "uint32_t[]", "uint32_t *")

# Keep freed heap memory mapped so each new batch buffer does not pay a page fault per 4 KiB
# (measured: 256 x 1 KiB encode 212 us -> 45 us). NANOMQ_MALLOC_TOP_PAD=0 turns this off.
lib.nmq_malloc_top_pad(int(os.environ.get("NANOMQ_MALLOC_TOP_PAD", 16 << 20)))

_HEADER = struct.Struct("<QQIIIIQQI")  # the 52 defined bytes; 12 reserved bytes follow
_unpack_header = _HEADER.unpack_from

# C scan result -> (error code, rule ID, what happened)
_SCAN_ERRORS = {
    -1: (ErrorCode.MALFORMED, "NMQ-5.1-4", "record runs past the end of the frame"),
    -2: (ErrorCode.PAYLOAD_TOO_LARGE, "NMQ-6.1-2", "record payload larger than max_payload"),
    -3: (ErrorCode.BAD_CRC, "NMQ-5.2-1", "record CRC-32C mismatch"),
    -4: (ErrorCode.RESERVED_NONZERO, "NMQ-5.1-3", "record reserved bytes, raw_size or unknown flags set"),
    -5: (ErrorCode.MALFORMED, "NMQ-5.1-5", "bytes left after the last record of the batch"),
    -6: (ErrorCode.RESERVED_NONZERO, "NMQ-5.1-2", "record padding is not zero"),
    -8: (ErrorCode.PAYLOAD_TOO_LARGE, "NMQ-5.3-2", "record raw_size (uncompressed) larger than max_payload"),
}


def record_span(size: int) -> int:
    """Bytes one record with a ``size``-byte payload occupies: align8(64 + size)."""
    return (RECORD_HEADER_SIZE + size + 7) & ~7


def record_into(out: bytearray, offset: int, payload: bytes) -> None:
    """Encode ``payload`` as one record, as a publisher sends it (id, timestamp and topic id 0,
    no flags), at ``out[offset : offset + record_span(len(payload))]``, which must be zeros: the
    bytes :meth:`RecordBatch.from_payloads` gives for ``[payload]``, without its arrays and copies
    (a publisher's one-record path, :func:`nanomq.protocol.codec.encode_publish`)."""
    span = record_span(len(payload))
    if offset < 0 or len(out) - offset < span:
        raise ValueError(f"no room for a record of {span} bytes at offset {offset} of {len(out)}")
    lengths = ffi.new(_U32_ARRAY, [len(payload)])
    lib.nmq_records_encode(ffi.from_buffer("uint8_t[]", out, require_writable=True) + offset, span, payload,
                           lengths, ffi.NULL, ffi.NULL, 1, 0, 0, 0, 0, 0, ffi.NULL)


class Record(NamedTuple):
    """One decoded record: its header fields and payload (``size == len(payload)``)."""

    id: int
    timestamp_ns: int
    topic_id: int
    size: int
    crc: int
    flags: int
    producer_id: int
    sequence: int
    raw_size: int
    payload: bytes


class RecordBatch:
    """``count`` validated records packed back to back in ``data`` (the exact wire/disk bytes).

    Immutable. Build one with :meth:`from_payloads` (publisher side) or :meth:`parse` (validating
    received bytes); index or iterate it for :class:`Record` tuples.
    """

    __slots__ = ("data", "count", "_offsets")

    def __init__(self, data: bytes, count: int, offsets: Sequence[int]) -> None:
        self.data = data
        self.count = count
        self._offsets = offsets

    @classmethod
    def parse(
        cls,
        data: bytes,
        count: int,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        check_crc: bool = True,
        request_id: int = 0,
    ) -> RecordBatch:
        """Validate ``count`` records filling ``data`` exactly; raise :class:`ProtocolError`."""
        offsets = ffi.new(_U32_ARRAY, max(count, 1))
        err_index = ffi.new(_U32_PTR)
        rc = lib.nmq_records_scan(data, len(data), count, max_payload, int(check_crc), offsets, err_index)
        if rc:
            code, rule, what = _SCAN_ERRORS[rc]
            raise ProtocolError(code, rule, f"{what} (record {err_index[0]})", request_id=request_id)
        return cls(data, count, ffi.unpack(offsets, count))

    @classmethod
    def from_payloads(
        cls,
        payloads: Sequence[bytes],
        *,
        flags: Sequence[int] | None = None,
        raw_sizes: Sequence[int] | None = None,
        first_id: int = 0,
        timestamp_ns: int = 0,
        topic_id: int = 0,
        producer_id: int = 0,
        first_sequence: int = 0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> RecordBatch:
        """Encode payloads as records (ids first_id, first_id+1…; 0 stays 0, as publishers send).

        Raises ValueError for an empty or oversized batch, a payload over ``max_payload`` or an
        unknown flag bit: the encoder never produces a frame the decoder would reject.
        """
        n = len(payloads)
        if not 0 < n <= MAX_BATCH:
            raise ValueError(f"a batch holds 1..{MAX_BATCH} records, not {n}")
        lengths = [len(p) for p in payloads]
        if max(lengths) > max_payload:
            raise ValueError(f"payload of {max(lengths)} bytes exceeds max_payload {max_payload}")
        c_lengths = ffi.new(_U32_ARRAY, lengths)
        c_flags = ffi.NULL
        if flags is not None:
            if len(flags) != n or any(f & ~KNOWN_RECORD_FLAGS for f in flags):
                raise ValueError("flags must give one known flag set per payload")
            c_flags = ffi.new(_U32_ARRAY, list(flags))
        c_raw = ffi.NULL
        if raw_sizes is not None:
            if len(raw_sizes) != n or max(raw_sizes) > max_payload:
                raise ValueError("raw_sizes must give one value <= max_payload per payload")
            c_raw = ffi.new(_U32_ARRAY, list(raw_sizes))
        total = int(lib.nmq_records_size(c_lengths, n))
        out = bytearray(total)
        joined = b"".join(payloads)
        c_offsets = ffi.new(_U32_ARRAY, n)
        written = lib.nmq_records_encode(
            ffi.from_buffer(out), total, joined, c_lengths, c_flags, c_raw, n,
            first_id, timestamp_ns, topic_id, producer_id, first_sequence, c_offsets,
        )
        assert written == total
        return cls(bytes(out), n, ffi.unpack(c_offsets, n))

    def __len__(self) -> int:
        return self.count

    def summary(self) -> tuple[int, bool]:
        """(OR of every record's flags, whether any record has a producer_id), in one C call.

        A server uses it to refuse features it did not announce (LZ4, idempotence) per batch.
        """
        s = int(lib.nmq_records_summary(self.data, len(self.data), self.count))
        return s & KNOWN_RECORD_FLAGS, bool(s & 0x80000000)

    def _record_at(self, off: int) -> Record:
        h = _unpack_header(self.data, off)
        start = off + RECORD_HEADER_SIZE
        return Record._make((*h, self.data[start : start + h[3]]))

    def __getitem__(self, i: int) -> Record:
        return self._record_at(self._offsets[i])

    def __iter__(self) -> Iterator[Record]:
        data = self.data
        for off in self._offsets:
            h = _unpack_header(data, off)
            start = off + RECORD_HEADER_SIZE
            yield Record._make((*h, data[start : start + h[3]]))

    def records(self) -> list[Record]:
        """All records as a list."""
        return list(self)

    def payloads(self) -> list[bytes]:
        """Just the payloads, in order."""
        data = self.data
        sizes = [_unpack_header(data, off)[3] for off in self._offsets]
        return [data[o + RECORD_HEADER_SIZE : o + RECORD_HEADER_SIZE + s] for o, s in zip(self._offsets, sizes, strict=False)]

    @property
    def offsets(self) -> tuple[int, ...]:
        """Byte offset of each record in :attr:`data`."""
        return tuple(self._offsets)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecordBatch) and self.count == other.count and self.data == other.data

    def __hash__(self) -> int:
        return hash((self.count, self.data))

    def __repr__(self) -> str:
        return f"RecordBatch(count={self.count}, bytes={len(self.data)})"
