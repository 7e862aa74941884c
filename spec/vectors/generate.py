"""Regenerate frames.json and invalid.json from the reference codec (python spec/vectors/generate.py).

The files are golden: they are committed, reviewed by hand when they change, and the tests check
that the codec still decodes and re-encodes every one of them byte for byte. Invalid vectors are
valid frames with one deliberate defect, each naming the rule it breaks and the error it must give.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from nanomq.protocol import (
    Ack,
    Commit,
    Committed,
    Credit,
    Deliver,
    Error,
    ErrorCode,
    Frame,
    Hello,
    HelloOk,
    Metadata,
    MetadataOk,
    Ping,
    Pong,
    Publish,
    PublishAck,
    RecordBatch,
    RecordFlag,
    Seek,
    SeekOk,
    Start,
    Subscribe,
    Subscribed,
    TopicInfo,
    Unsubscribe,
    Unsubscribed,
    encode,
)
from nanomq.protocol.jsonform import to_dict

HERE = Path(__file__).resolve().parent
C2S, S2C = "client_to_server", "server_to_client"

TS = 1_764_000_000_123_456_789
one = RecordBatch.from_payloads([b"Hello, NanoMQ!"])
two = RecordBatch.from_payloads([b"", b"\x00\x01\x02"], flags=[0, 0])
stored = RecordBatch.from_payloads([b'{"symbol":"AAPL","qty":100}', b"x" * 13], first_id=41,
                                   timestamp_ns=TS, topic_id=3)
lz4 = RecordBatch.from_payloads([bytes.fromhex("5f6161616161610100505061616161")],
                                flags=[int(RecordFlag.LZ4)], raw_sizes=[22])
idem = RecordBatch.from_payloads([b"a", b"b"], producer_id=0xABCDEF, first_sequence=7)

VALID: list[tuple[str, str, Frame, list[str]]] = [
    ("hello", C2S, Hello(1, 1, "example-client", b""), ["NMQ-3.1-1", "NMQ-4.1-1"]),
    ("hello-token", C2S, Hello(2, 1, "c", b"s3cret"), ["NMQ-4.1-1", "NMQ-4.1-3"]),
    ("hello-ok", S2C, HelloOk(1, 1, 0b111, 16842752, 65536, 256, "nanomq/0.1.0"), ["NMQ-4.1-4"]),
    ("publish-one", C2S, Publish(3, "orders", Ack.DURABLE, one), ["NMQ-4.2-1", "NMQ-5.1-1", "NMQ-5.2-1"]),
    ("publish-two-written", C2S, Publish(4, "a.b_c-d", Ack.WRITTEN, two), ["NMQ-4.2-1", "NMQ-5.1-2"]),
    ("publish-ack-none", C2S, Publish(5, "t", Ack.NONE, one), ["NMQ-4.2-3"]),
    ("publish-lz4", C2S, Publish(6, "t", Ack.DURABLE, lz4), ["NMQ-5.3-1"]),
    ("publish-idempotent", C2S, Publish(7, "t", Ack.DURABLE, idem), ["NMQ-5.1-6"]),
    ("publish-ack", S2C, PublishAck(3, 41, 2), ["NMQ-4.2-5"]),
    ("subscribe-earliest", C2S, Subscribe(8, "orders", Start.EARLIEST, 0, 256, ""), ["NMQ-4.4-1", "NMQ-4.4-2"]),
    ("subscribe-id", C2S, Subscribe(9, "orders", Start.ID, 41, 64, ""), ["NMQ-4.4-2"]),
    ("subscribe-time-group", C2S, Subscribe(10, "orders", Start.TIMESTAMP, TS, 1, "billing"), ["NMQ-4.4-2"]),
    ("subscribed", S2C, Subscribed(8, 1, 3, 41, 43), ["NMQ-4.4-5"]),
    ("unsubscribe", C2S, Unsubscribe(11, 1), ["NMQ-4.5-1"]),
    ("unsubscribed", S2C, Unsubscribed(11), ["NMQ-4.5-2"]),
    ("credit", C2S, Credit(0, 1, 1000), ["NMQ-4.6-1"]),
    ("deliver", S2C, Deliver(0, 1, stored), ["NMQ-4.6-3", "NMQ-5.1-1"]),
    ("commit", C2S, Commit(12, 1, (41,)), ["NMQ-4.7-1"]),
    ("commit-batch", C2S, Commit(13, 1, (41, 42, 43)), ["NMQ-4.7-1"]),
    ("committed", S2C, Committed(12, 42), ["NMQ-4.7-4"]),
    ("seek-id", C2S, Seek(14, 1, Start.ID, 41), ["NMQ-4.8-1"]),
    ("seek-time", C2S, Seek(15, 1, Start.TIMESTAMP, TS), ["NMQ-4.8-1"]),
    ("seek-ok", S2C, SeekOk(14, 41), ["NMQ-4.8-4"]),
    ("metadata-all", C2S, Metadata(16, ""), ["NMQ-4.9-1"]),
    ("metadata-one", C2S, Metadata(17, "orders"), ["NMQ-4.9-1"]),
    ("metadata-ok", S2C, MetadataOk(16, (TopicInfo(3, "orders", 41, 43), TopicInfo(4, "empty", 1, 1))), ["NMQ-4.9-2"]),
    ("ping", C2S, Ping(18, 0x0123456789ABCDEF), ["NMQ-4.10-1"]),
    ("pong", S2C, Pong(18, 0x0123456789ABCDEF), ["NMQ-4.10-1"]),
    ("error", S2C, Error(3, int(ErrorCode.BAD_CRC), "record CRC-32C mismatch (record 0)", "NMQ-5.2-1"), ["NMQ-8-1"]),
]


def _patch(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def _with_crc(raw: bytes, rec: int, field: int, value: int) -> bytes:
    """Set a u32 header field of the record at ``rec`` and fix its CRC (a well-formed lie)."""
    from nanomq._c.crc import crc32c

    b = bytearray(raw)
    struct.pack_into("<I", b, rec + field, value)
    size = struct.unpack_from("<I", b, rec + 20)[0]
    hdr = bytearray(b[rec : rec + 64])
    hdr[24:28] = bytes(4)
    struct.pack_into("<I", b, rec + 24, crc32c(bytes(b[rec + 64 : rec + 64 + size]), crc32c(bytes(hdr))))
    return bytes(b)


def _long_name_hello() -> bytes:
    body = struct.pack("<HHHH", 1, 256, 0, 0) + b"n" * 256
    return struct.pack("<IBBHQ", 16 + len(body), 0x01, 0, 0, 1) + body


def _invalid() -> list[dict[str, Any]]:
    pub = encode(Publish(3, "orders", Ack.DURABLE, one))
    rec = 16 + 8 + len("orders")  # offset of the first record in that frame
    cases: list[tuple[str, str, bytes, ErrorCode, bool, str]] = [
        ("size-below-header", C2S, _patch(encode(Ping(1, 0)), 0, "<I", 15), ErrorCode.MALFORMED, True, "NMQ-3.1-2"),
        ("size-over-max-frame", C2S, _patch(encode(Ping(1, 0)), 0, "<I", 16842752 + 1), ErrorCode.FRAME_TOO_LARGE, True, "NMQ-6.1-3"),
        ("frame-flags-set", C2S, _patch(encode(Ping(1, 0)), 5, "<B", 1), ErrorCode.RESERVED_NONZERO, True, "NMQ-3.1-4"),
        ("frame-reserved-set", C2S, _patch(encode(Ping(1, 0)), 6, "<H", 1), ErrorCode.RESERVED_NONZERO, True, "NMQ-3.1-4"),
        ("unknown-opcode", C2S, _patch(encode(Ping(1, 0)), 4, "<B", 0x3F), ErrorCode.UNKNOWN_OPCODE, False, "NMQ-3.2-2"),
        ("response-opcode-to-server", C2S, encode(Pong(1, 0)), ErrorCode.UNKNOWN_OPCODE, False, "NMQ-3.2-2"),
        ("request-opcode-to-client", S2C, encode(Ping(1, 0)), ErrorCode.UNKNOWN_OPCODE, False, "NMQ-3.2-2"),
        ("ping-body-short", C2S, _patch(encode(Ping(1, 0)), 0, "<I", 23)[:23], ErrorCode.MALFORMED, False, "NMQ-3.1-2"),
        ("hello-name-not-utf8", C2S, encode(Hello(1, 1, "ab", b""))[:-2] + b"\xff\xfe", ErrorCode.MALFORMED, False, "NMQ-3.1-5"),
        ("hello-name-too-long", C2S, _long_name_hello(), ErrorCode.INVALID_ARGUMENT, False, "NMQ-4.1-2"),
        ("hello-reserved", C2S, _patch(encode(Hello(1, 1, "ab", b"")), 22, "<H", 9), ErrorCode.RESERVED_NONZERO, False, "NMQ-3.1-4"),
        ("publish-bad-ack-mode", C2S, _patch(pub, 16, "<B", 7), ErrorCode.INVALID_ARGUMENT, False, "NMQ-4.2-2"),
        ("publish-bad-topic", C2S, pub[: 16 + 8] + b"ord/rs" + pub[16 + 8 + 6 :], ErrorCode.INVALID_ARGUMENT, False, "NMQ-4.3-1"),
        ("publish-zero-records", C2S, _patch(pub, 20, "<H", 0), ErrorCode.BATCH_TOO_LARGE, False, "NMQ-6.1-1"),
        ("publish-257-records", C2S, _patch(pub, 20, "<H", 257), ErrorCode.BATCH_TOO_LARGE, False, "NMQ-6.1-1"),
        ("publish-count-exceeds-bytes", C2S, _patch(pub, 20, "<H", 2), ErrorCode.MALFORMED, False, "NMQ-5.1-4"),
        ("publish-bad-crc", C2S, _patch(pub, rec + 24, "<I", 0xDEADBEEF), ErrorCode.BAD_CRC, False, "NMQ-5.2-1"),
        ("publish-payload-flipped", C2S, _patch(pub, rec + 64, "<B", ord("h")), ErrorCode.BAD_CRC, False, "NMQ-5.2-1"),
        ("publish-record-reserved", C2S, _patch(pub, rec + 60, "<I", 1), ErrorCode.RESERVED_NONZERO, False, "NMQ-5.1-3"),
        ("publish-unknown-record-flag", C2S, _patch(pub, rec + 28, "<I", 0x80), ErrorCode.RESERVED_NONZERO, False, "NMQ-5.1-3"),
        ("publish-raw-size-without-lz4", C2S, _patch(pub, rec + 48, "<I", 5), ErrorCode.RESERVED_NONZERO, False, "NMQ-5.1-3"),
        ("publish-padding-nonzero", C2S, _patch(pub, len(pub) - 1, "<B", 1), ErrorCode.RESERVED_NONZERO, False, "NMQ-5.1-2"),
        ("publish-trailing-bytes", C2S, _patch(pub + bytes(8), 0, "<I", len(pub) + 8), ErrorCode.MALFORMED, False, "NMQ-5.1-5"),
        ("publish-payload-over-max", C2S, _patch(pub, rec + 20, "<I", 65537), ErrorCode.PAYLOAD_TOO_LARGE, False, "NMQ-6.1-2"),
        ("publish-raw-size-over-max", C2S, _with_crc(encode(Publish(6, "t", Ack.DURABLE, RecordBatch.from_payloads([b"x"], flags=[int(RecordFlag.LZ4)], raw_sizes=[9]))), 16 + 8 + 1, 48, 65537), ErrorCode.PAYLOAD_TOO_LARGE, False, "NMQ-5.3-2"),
        ("subscribe-bad-start", C2S, _patch(encode(Subscribe(1, "t", Start.EARLIEST, 0, 1, "")), 28, "<B", 9), ErrorCode.INVALID_ARGUMENT, False, "NMQ-4.4-2"),
        ("commit-id-zero", C2S, _patch(encode(Commit(1, 1, (5,))), 24, "<Q", 0), ErrorCode.INVALID_ARGUMENT, False, "NMQ-4.7-2"),
        ("commit-too-many", C2S, _patch(encode(Commit(1, 1, (5,))), 20, "<H", 300), ErrorCode.BATCH_TOO_LARGE, False, "NMQ-6.1-1"),
        ("seek-bad-kind", C2S, _patch(encode(Seek(1, 1, Start.ID, 5)), 20, "<B", 200), ErrorCode.INVALID_ARGUMENT, False, "NMQ-4.8-2"),
        ("deliver-bad-crc", S2C, _patch(encode(Deliver(0, 1, stored)), 16 + 8 + 24, "<I", 1), ErrorCode.BAD_CRC, False, "NMQ-5.2-1"),
    ]
    return [
        {"name": n, "direction": d, "hex": raw.hex(), "error": {"code": code.name, "fatal": fatal}, "rules": [rule]}
        for n, d, raw, code, fatal, rule in cases
    ]


def main() -> None:
    valid = [
        {"name": n, "direction": d, "hex": encode(f).hex(), "frame": to_dict(f), "rules": rules}
        for n, d, f, rules in VALID
    ]
    (HERE / "frames.json").write_text(json.dumps({"version": 1, "vectors": valid}, indent=1) + "\n")
    (HERE / "invalid.json").write_text(json.dumps({"version": 1, "vectors": _invalid()}, indent=1) + "\n")
    print(f"{len(valid)} valid, {len(_invalid())} invalid vectors written")


if __name__ == "__main__":
    main()
