"""Layer (b), error paths the other cases leave untried: body-length errors of HELLO on an active
connection, and ERROR frames that must carry their request's id.

Each case is built to fail when its rule alone is broken. They came out of mutation testing
(docs/mutation.md): broken brokers the rest of the kit passed.
"""

from __future__ import annotations

import struct

from conformance.helpers import (
    alive,
    expect_error,
    is_error,
    publish,
    raw_frame,
    raw_publish,
    responses,
    topic_info,
)
from conformance.registry import Context, case, check
from nanomq.protocol import Ack, Error, ErrorCode, Metadata, MetadataOk, ProtocolError, RecordBatch, Start

_HELLO_OP = 0x01


def _hello_body(version: int, name: bytes, token: bytes, *, nlen: int | None = None, tlen: int | None = None) -> bytes:
    """A HELLO body whose length fields may disagree with what follows them."""
    return struct.pack("<HHHH", version, len(name) if nlen is None else nlen,
                       len(token) if tlen is None else tlen, 0) + name + token


@case("errors.hello-body-length", "on an active connection, HELLOs whose name or token length overruns or "
      "underruns the body are MALFORMED, answered with their own request_id, and the connection goes on",
      layer="wire", rules=("NMQ-3.1-2", "NMQ-3.1-6", "NMQ-8-1", "NMQ-8-2"))
def hello_body_length(ctx: Context) -> None:
    bad = [
        ("name length overruns the body", _hello_body(1, b"abc", b"", nlen=9)),
        ("token length overruns the body", _hello_body(1, b"abc", b"tk", tlen=7)),
        ("body longer than its fields say", _hello_body(1, b"abc", b"") + b"\x00\x00"),
        ("body shorter than its fixed part", struct.pack("<HHH", 1, 0, 0)),
    ]
    with ctx.client() as w:
        rids = [0x4E11_0000 + k for k in range(len(bad))]
        w.send_raw(b"".join(raw_frame(_HELLO_OP, rid, body) for rid, (_, body) in zip(rids, bad, strict=True)))
        with ctx.step("NMQ-3.1-6", "NMQ-8-1"):  # non-fatal: every one answered, the connection open
            got = responses(w, len(bad))
        for (label, _), rid, f in zip(bad, rids, got, strict=True):
            with ctx.step("NMQ-3.1-2", "NMQ-3.1-6", "NMQ-8-1"):
                check(is_error(f, ErrorCode.MALFORMED), f"HELLO with its {label}: expected ERROR MALFORMED, got {f!r}")
                expect_error(f, ErrorCode.MALFORMED, request_id=rid)
        with ctx.step("NMQ-3.1-6", "NMQ-8-2"):
            alive(w)


_FIXED = {"HELLO": (0x01, 8), "PUBLISH": (0x02, 8), "SUBSCRIBE": (0x03, 20), "UNSUBSCRIBE": (0x04, 8),
          "CREDIT": (0x05, 8), "COMMIT": (0x06, 8), "SEEK": (0x07, 16), "METADATA": (0x08, 8), "PING": (0x09, 8)}
"""Every request: its opcode and the size of its body's fixed part (spec/protocol.md §4)."""


@case("errors.short-bodies", "every request type with an empty body and with a body one byte shorter than its fixed "
      "part is MALFORMED, answered with its own request_id, in order, and the connection goes on",
      layer="wire", rules=("NMQ-3.1-2", "NMQ-3.1-6", "NMQ-3.3-2", "NMQ-8-1", "NMQ-8-2"))
def short_bodies(ctx: Context) -> None:
    bad = [(f"{name} body of {n} bytes", op, bytes(n)) for name, (op, fixed) in _FIXED.items() for n in (0, fixed - 1)]
    with ctx.client() as w:
        rids = [0x5B0D_0000 + k for k in range(len(bad))]
        w.send_raw(b"".join(raw_frame(op, rid, body) for rid, (_, op, body) in zip(rids, bad, strict=True)))
        with ctx.step("NMQ-3.1-6", "NMQ-8-1"):  # non-fatal: every one answered, the connection open
            got = responses(w, len(bad))
        for (label, _, _), rid, f in zip(bad, rids, got, strict=True):
            with ctx.step("NMQ-3.1-2", "NMQ-3.1-6", "NMQ-8-1", "NMQ-3.3-2"):
                check(is_error(f, ErrorCode.MALFORMED), f"{label}: expected ERROR MALFORMED, got {f!r}")
                expect_error(f, ErrorCode.MALFORMED, request_id=rid)
        with ctx.step("NMQ-3.1-6", "NMQ-8-2"):
            alive(w)


def _reserved_bodies(topic: bytes) -> list[tuple[str, int, bytes]]:
    """Every reserved field of every request that has one, set (each alone) to a non-zero value."""
    one = RecordBatch.from_payloads([b"r"]).data
    out: list[tuple[str, int, bytes]] = [
        ("HELLO reserved", 0x01, struct.pack("<HHHH", 1, 1, 0, 1) + b"x"),
        ("PUBLISH reserved byte", 0x02, struct.pack("<BBHHH", int(Ack.WRITTEN), 1, len(topic), 1, 0) + topic + one),
        ("PUBLISH reserved u16", 0x02, struct.pack("<BBHHH", int(Ack.WRITTEN), 0, len(topic), 1, 0x8000) + topic + one),
        ("SUBSCRIBE reserved byte", 0x03, struct.pack("<QIBBHHH", 0, 1, int(Start.EARLIEST), 0x80, len(topic), 0, 0)
         + topic),
        ("SUBSCRIBE reserved u16", 0x03, struct.pack("<QIBBHHH", 0, 1, int(Start.EARLIEST), 0, len(topic), 0, 1)
         + topic),
        ("UNSUBSCRIBE reserved", 0x04, struct.pack("<II", 1, 1)),
        ("COMMIT reserved", 0x06, struct.pack("<IHH", 1, 1, 1) + struct.pack("<Q", 1)),
        ("SEEK reserved byte", 0x07, struct.pack("<IBBHQ", 1, int(Start.EARLIEST), 1, 0, 0)),
        ("SEEK reserved u16", 0x07, struct.pack("<IBBHQ", 1, int(Start.EARLIEST), 0, 1, 0)),
        ("METADATA reserved u16", 0x08, struct.pack("<HHI", len(topic), 1, 0) + topic),
        ("METADATA reserved u32", 0x08, struct.pack("<HHI", len(topic), 0, 1 << 31) + topic),
    ]
    return out


@case("errors.reserved-fields", "each reserved field of every request (HELLO, PUBLISH, SUBSCRIBE, UNSUBSCRIBE, "
      "COMMIT, SEEK, METADATA), set alone, is RESERVED_NONZERO with the request's own request_id, in order; nothing of "
      "such a request is applied and the connection goes on",
      layer="wire", rules=("NMQ-3.1-4", "NMQ-3.1-6", "NMQ-3.3-2", "NMQ-8-1", "NMQ-8-2"))
def reserved_fields(ctx: Context) -> None:
    t = ctx.topic("resv")
    tb = t.encode()
    bad = _reserved_bodies(tb)
    with ctx.client() as w:
        rids = [0x7E5E_0000 + k for k in range(len(bad))]
        w.send_raw(b"".join(raw_frame(op, rid, body) for rid, (_, op, body) in zip(rids, bad, strict=True)))
        with ctx.step("NMQ-3.1-6", "NMQ-8-1"):  # non-fatal: every one answered, the connection open
            got = responses(w, len(bad))
        for (label, _, _), rid, f in zip(bad, rids, got, strict=True):
            with ctx.step("NMQ-3.1-4", "NMQ-8-1", "NMQ-3.3-2"):
                check(is_error(f, ErrorCode.RESERVED_NONZERO), f"{label}: expected ERROR RESERVED_NONZERO, got {f!r}")
                expect_error(f, ErrorCode.RESERVED_NONZERO, request_id=rid)
        with ctx.step("NMQ-3.1-4", "NMQ-3.1-6", "NMQ-8-2"):
            w.send(Metadata(w.next_id(), t))
            f = w.recv_response()
            check(is_error(f, ErrorCode.UNKNOWN_TOPIC) or (isinstance(f, MetadataOk) and all(
                x.next_id == 1 for x in f.topics)), f"a PUBLISH refused for a reserved field was applied: {f!r}",
                "NMQ-3.1-4")
            alive(w)


def _length_bodies() -> list[tuple[str, int, bytes, bool]]:
    """Requests whose variable fields run past the body (MALFORMED, [NMQ-3.1-2]) and requests exactly
    as long as their fields imply with every length zero (well formed: any answer but MALFORMED).
    The bytes a short field does hold are not a valid name, so a server that reads the field anyway,
    instead of checking the length first, answers INVALID_ARGUMENT, not MALFORMED. (label, opcode,
    body, malformed)"""
    junk = b"\x00 /\xff\x00"  # 5 bytes, none of them allowed in a name
    rec = RecordBatch.from_payloads([b"r"]).data
    return [
        ("PUBLISH whose topic length (20) runs past the body", 0x02,
         struct.pack("<BBHHH", int(Ack.WRITTEN), 0, 20, 1, 0) + junk, True),
        ("PUBLISH whose topic length (20) runs past the body, an invalid ack mode before it", 0x02,
         struct.pack("<BBHHH", 9, 0, 20, 1, 0) + junk, True),
        ("PUBLISH whose topic length runs 1 byte past a body holding a record", 0x02,
         struct.pack("<BBHHH", int(Ack.WRITTEN), 0, 5 + len(rec) + 1, 1, 0) + b"abcde" + rec, True),
        ("SUBSCRIBE whose topic length (20) runs past the body", 0x03,
         struct.pack("<QIBBHHH", 0, 1, int(Start.EARLIEST), 0, 20, 0, 0) + junk, True),
        ("SUBSCRIBE whose group length (20) runs past the body, an invalid start kind before it", 0x03,
         struct.pack("<QIBBHHH", 0, 1, 0x7F, 0, 3, 20, 0) + b"abc" + junk, True),
        ("METADATA whose topic length (20) runs past the body", 0x08, struct.pack("<HHI", 20, 0, 0) + junk, True),
        ("PUBLISH of exactly its fixed 8 bytes (topic length 0, record count 0)", 0x02,
         struct.pack("<BBHHH", int(Ack.WRITTEN), 0, 0, 0, 0), False),
        ("SUBSCRIBE of exactly its fixed 20 bytes (topic and group length 0)", 0x03,
         struct.pack("<QIBBHHH", 0, 1, int(Start.EARLIEST), 0, 0, 0, 0), False),
    ]


@case("errors.length-fields", "a request whose topic or group length runs past its body is MALFORMED, even when the "
      "bytes there or a field before them are invalid too; a request exactly as long as its fields say, with every "
      "length zero, is not MALFORMED (it is refused for its empty topic or batch); each is answered with its own "
      "request_id, in order, and the connection goes on",
      layer="wire", rules=("NMQ-3.1-2", "NMQ-8-1", "NMQ-3.3-2", "NMQ-8-2"))
def length_fields(ctx: Context) -> None:
    bad = _length_bodies()
    with ctx.client() as w:
        rids = [0x1E67_0000 + k for k in range(len(bad))]
        w.send_raw(b"".join(raw_frame(op, rid, body) for rid, (_, op, body, _m) in zip(rids, bad, strict=True)))
        with ctx.step("NMQ-8-1", "NMQ-8-2"):  # non-fatal: every one answered, the connection open
            got = responses(w, len(bad))
        for (label, _, _, malformed), rid, f in zip(bad, rids, got, strict=True):
            with ctx.step("NMQ-3.1-2", "NMQ-8-1", "NMQ-3.3-2"):
                if malformed:
                    check(is_error(f, ErrorCode.MALFORMED), f"{label}: expected ERROR MALFORMED, got {f!r}")
                    expect_error(f, ErrorCode.MALFORMED, request_id=rid)
                else:
                    check(isinstance(f, Error) and f.code != ErrorCode.MALFORMED and f.request_id == rid,
                          f"{label}: a well-formed request (its body is as long as its fields say) answered {f!r}, "
                          f"not an ERROR other than MALFORMED with request_id {rid}")
        with ctx.step("NMQ-8-2"):
            alive(w)
        with ctx.step("NMQ-3.1-2"):  # and a METADATA of exactly its fixed part asks for every topic
            w.send_raw(raw_frame(0x08, 0x1E67_1000, struct.pack("<HHI", 0, 0, 0)))
            f = w.recv_response()
            check(isinstance(f, MetadataOk) and f.request_id == 0x1E67_1000,
                  f"METADATA of exactly its fixed 8 bytes (topic length 0: every topic) answered {f!r}")


@case("errors.records-start", "a PUBLISH's records start right after its topic name: a batch that is valid only when "
      "read from one byte earlier (its first byte taken from the name's last) is refused with an ERROR and appends "
      "nothing, on a topic that exists", layer="wire", rules=("NMQ-5.1-4", "NMQ-5.2-1", "NMQ-4.2-1", "NMQ-8-1"))
def records_start(ctx: Context) -> None:
    # A topic that exists: its PUBLISHes are the C data plane's, which finds the records itself (a
    # slip by one there reads a batch starting inside the name). The shifted batch is a valid record
    # whose id's low byte is the name's last character (a client's id is ignored, NMQ-4.2-4), so
    # only its place tells the two readings apart.
    t = ctx.topic("recstart")
    name = t.encode()
    shifted = RecordBatch.from_payloads([b"shifted record"], first_id=name[-1]).data
    assert shifted[0] == name[-1]
    records = shifted[1:] + b"\0"
    try:  # the case's premise (not the target's doing): the batch as sent is not valid
        RecordBatch.parse(records, 1, max_payload=ctx.max_payload)
    except ProtocolError:
        pass
    else:
        raise AssertionError("errors.records-start: the batch as sent is valid; choose another payload")
    with ctx.client() as w:
        publish(w, t, [b"first"])
        w.send_raw(raw_publish(0x5EC0, name, records, 1))
        with ctx.step("NMQ-5.1-4", "NMQ-5.2-1", "NMQ-8-1"):
            f = w.recv_response()
            check(isinstance(f, Error) and f.request_id == 0x5EC0,
                  f"a PUBLISH whose records are valid only from one byte before them answered {f!r}, not an ERROR")
        with ctx.step("NMQ-4.2-1"):
            info = topic_info(w, t)
            check(info.next_id == 2, f"the refused batch was appended (next_id {info.next_id}, want 2)")
            alive(w)
