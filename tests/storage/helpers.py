"""Shared helpers of the storage tests: build batches, walk and check records read back."""

from __future__ import annotations

from nanomq.protocol import MAX_BATCH, RecordBatch

_ANY_SIZE = 1 << 30
"""The codec's payload bound for test batches: the log under test applies its own max_payload."""


def batch(payloads: list[bytes]) -> bytes:
    """Publisher-style records (ids 0) packed back to back, any number of them (a record's bytes
    do not depend on its neighbours, so batches of the codec's size are simply concatenated)."""
    return b"".join(RecordBatch.from_payloads(payloads[i : i + MAX_BATCH], max_payload=_ANY_SIZE).data
                    for i in range(0, len(payloads), MAX_BATCH))


def payload(i: int, size: int = 24) -> bytes:
    """A deterministic payload that names its sequence number (for history checks)."""
    head = f"p{i:012d}|".encode()
    return (head * (size // len(head) + 1))[:size] if size >= len(head) else head[:size]


def records(view: memoryview | bytes, count: int) -> list[tuple[int, int, int, bytes]]:
    """(id, timestamp, topic_id, payload) of each record, after verifying framing and CRCs."""
    return [(r.id, r.timestamp_ns, r.topic_id, r.payload)
            for r in RecordBatch.parse(bytes(view), count, max_payload=_ANY_SIZE)]


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
