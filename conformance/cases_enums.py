"""Layer (b), every value of every enum: start kinds (SUBSCRIBE and SEEK), ack modes, record flag
bits and reserved bytes, frame flags, opcodes, and every error code the spec assigns to a request.
"""

from __future__ import annotations

import struct
import time

from conformance.helpers import (
    HELLO_V1,
    alive,
    closed,
    collect_all,
    expect_error,
    fatal,
    is_error,
    publish,
    quiet,
    raw_commit,
    raw_frame,
    raw_metadata,
    raw_publish,
    raw_seek,
    raw_subscribe,
    responses,
    subscribe,
    topic_info,
)
from conformance.registry import Context, case, check
from conformance.rules import load_rules
from nanomq._c.crc import crc32c
from nanomq.protocol import (
    Capability,
    Commit,
    Credit,
    Error,
    ErrorCode,
    Metadata,
    MetadataOk,
    Ping,
    Pong,
    PublishAck,
    RecordBatch,
    SeekOk,
    Start,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)

REQUEST_OPCODES = frozenset(range(0x01, 0x0A))


def _restamp(rec: bytearray) -> bytes:
    """Recompute a record's CRC after editing its header (so only the edited field is wrong)."""
    size = struct.unpack_from("<I", rec, 20)[0]
    struct.pack_into("<I", rec, 24, 0)
    struct.pack_into("<I", rec, 24, crc32c(bytes(rec[: 64 + size])))
    return bytes(rec)


# ---------------------------------------------------------------- start kinds

def _start_expectations(ctx: Context, w, t: str) -> tuple[list[tuple[str, int, int, int]], int]:  # type: ignore[no-untyped-def]
    """(label, start kind, value, expected next id) for every valid start kind on topic ``t``
    holding ids 1..6 (three records, a pause, three more), and the topic's next id."""
    publish(w, t, [b"a", b"b", b"c"])
    time.sleep(0.02)
    publish(w, t, [b"d", b"e", b"f"])
    probe = subscribe(w, t)
    recs = collect_all(w, probe.sub_id, 6)
    check(len(recs) == 6, "six records published, not all delivered", "NMQ-SEM-4-2")
    w.send(Unsubscribe(w.next_id(), probe.sub_id))
    check(isinstance(w.recv_response(), Unsubscribed), "UNSUBSCRIBE", "NMQ-4.5-2")
    ts4 = recs[3].timestamp_ns
    exp = [("earliest", Start.EARLIEST, 0, 1), ("latest", Start.LATEST, 0, 7), ("id 4", Start.ID, 4, 4)]
    if ctx.has(Capability.SEEK_TIME):
        first_at = next(r.id for r in recs if r.timestamp_ns >= ts4)
        exp += [("timestamp of id 4", Start.TIMESTAMP, ts4, first_at),
                ("timestamp 0", Start.TIMESTAMP, 0, 1),
                ("timestamp after the last", Start.TIMESTAMP, recs[5].timestamp_ns + 1, 7),
                ("timestamp 2^64-1", Start.TIMESTAMP, (1 << 64) - 1, 7)]
    return exp, 7


@case("enums.subscribe-starts", "every start kind of SUBSCRIBE: earliest, latest, id, timestamp (SEEK_TIME) "
      "start where semantics §4 says; committed without a group is INVALID_ARGUMENT; kinds 5 and 255 are "
      "INVALID_ARGUMENT; SUBSCRIBED comes before any DELIVER", layer="wire",
      rules=("NMQ-4.4-2", "NMQ-4.4-3", "NMQ-4.4-5", "NMQ-4.8-3", "NMQ-SEM-4-1", "NMQ-7-5"))
def subscribe_starts(ctx: Context) -> None:
    t = ctx.topic("starts")
    with ctx.client() as w:
        exp, nxt = _start_expectations(ctx, w, t)
        for label, kind, value, first in exp:
            with ctx.step("NMQ-4.4-2", "NMQ-4.4-5", "NMQ-4.8-3") if kind == Start.TIMESTAMP else \
                    ctx.step("NMQ-4.4-2", "NMQ-4.4-5"):
                rid = w.next_id()
                w.send_raw(raw_subscribe(rid, t.encode(), int(kind), value))
                f = w.recv(5.0)  # the very next frame: no DELIVER may overtake SUBSCRIBED
                check(isinstance(f, Subscribed) and f.request_id == rid,
                      f"start {label}: the first frame after SUBSCRIBE is {f!r}")
                assert isinstance(f, Subscribed)
                check((f.next_id, f.end_id) == (first, nxt),
                      f"start {label}: SUBSCRIBED next_id {f.next_id}, end_id {f.end_id}; expected {first}, {nxt}")
            with ctx.step("NMQ-SEM-4-1"):
                got = [r.id for r in collect_all(w, f.sub_id, nxt - first, idle=0.5)]
                check(got == list(range(first, nxt)), f"start {label} delivered ids {got}")
        with ctx.step("NMQ-4.4-3"):
            rid = w.next_id()
            w.send_raw(raw_subscribe(rid, t.encode(), int(Start.COMMITTED)))
            expect_error(w.recv_response(), ErrorCode.INVALID_ARGUMENT, request_id=rid)
        with ctx.step("NMQ-4.4-2"):
            for kind in (5, 255):
                rid = w.next_id()
                w.send_raw(raw_subscribe(rid, t.encode(), kind))
                expect_error(w.recv_response(), ErrorCode.INVALID_ARGUMENT, request_id=rid)
            alive(w)
        if not ctx.has(Capability.SEEK_TIME):
            with ctx.step("NMQ-4.4-3", "NMQ-7-1"):
                rid = w.next_id()
                w.send_raw(raw_subscribe(rid, t.encode(), int(Start.TIMESTAMP), 1))
                expect_error(w.recv_response(), ErrorCode.NOT_SUPPORTED, request_id=rid)


@case("enums.seek-starts", "every start kind of SEEK: earliest, latest, id, timestamp (SEEK_TIME) move the "
      "subscription where semantics §4 says; committed without a group and kinds 5, 255 are INVALID_ARGUMENT; "
      "an unknown sub_id is UNKNOWN_SUBSCRIPTION", layer="wire",
      rules=("NMQ-4.8-1", "NMQ-4.8-2", "NMQ-4.8-3", "NMQ-4.8-4", "NMQ-4.4-3", "NMQ-7-5"))
def seek_starts(ctx: Context) -> None:
    t = ctx.topic("seeks")
    with ctx.client() as w:
        exp, nxt = _start_expectations(ctx, w, t)
        sub = subscribe(w, t, Start.ID, 3, credit=0)
        for label, kind, value, first in exp:
            with ctx.step("NMQ-4.8-1", "NMQ-4.8-3") if kind == Start.TIMESTAMP else ctx.step("NMQ-4.8-1"):
                rid = w.next_id()
                w.send_raw(raw_seek(rid, sub.sub_id, int(kind), value))
                f = w.recv_response()
                check(isinstance(f, SeekOk) and f.request_id == rid and f.next_id == first,
                      f"SEEK {label} answered {f!r}, expected next_id {first}")
            with ctx.step("NMQ-4.8-4"):
                # Grant exactly what the new position holds (credit left over from a step before
                # cannot matter: no records are published meanwhile).
                w.send(Credit(0, sub.sub_id, max(1, nxt - first)))
                got = [r.id for r in collect_all(w, sub.sub_id, nxt - first, idle=0.5)]
                check(got == list(range(first, nxt)), f"after SEEK {label} delivered ids {got}")
                if first == nxt:
                    quiet(w, 0.2, f"after SEEK {label} (to the next id) something was delivered")
        with ctx.step("NMQ-4.4-3", "NMQ-4.8-1"):
            rid = w.next_id()
            w.send_raw(raw_seek(rid, sub.sub_id, int(Start.COMMITTED)))
            expect_error(w.recv_response(), ErrorCode.INVALID_ARGUMENT, request_id=rid)
        with ctx.step("NMQ-4.8-2"):
            for kind in (5, 255):
                rid = w.next_id()
                w.send_raw(raw_seek(rid, sub.sub_id, kind))
                expect_error(w.recv_response(), ErrorCode.INVALID_ARGUMENT, request_id=rid)
            rid = w.next_id()
            w.send_raw(raw_seek(rid, sub.sub_id + 1000, int(Start.EARLIEST)))
            expect_error(w.recv_response(), ErrorCode.UNKNOWN_SUBSCRIPTION, request_id=rid)
            alive(w)
        if not ctx.has(Capability.SEEK_TIME):
            with ctx.step("NMQ-4.4-3", "NMQ-7-1"):
                rid = w.next_id()
                w.send_raw(raw_seek(rid, sub.sub_id, int(Start.TIMESTAMP), 1))
                expect_error(w.recv_response(), ErrorCode.NOT_SUPPORTED, request_id=rid)


# ---------------------------------------------------------------- ack modes

@case("enums.ack-modes", "ack none gets no answer, written and durable get PUBLISH_ACK, all three append; ack "
      "modes 3 and 255 are INVALID_ARGUMENT and append nothing; a failing ack-none PUBLISH still gets ERROR",
      layer="wire", rules=("NMQ-4.2-2", "NMQ-4.2-3", "NMQ-4.2-5", "NMQ-3.2-3", "NMQ-SEM-3-4"))
def ack_modes(ctx: Context) -> None:
    t = ctx.topic("acks")
    one = RecordBatch.from_payloads([b"x"]).data
    with ctx.client() as w:
        with ctx.step("NMQ-4.2-3", "NMQ-3.2-3"):
            w.send_raw(raw_publish(1, t.encode(), one, 1, ack=0))
            w.send(Ping(2, 2))
            f = w.recv_response()
            check(f == Pong(2, 2), f"ack none: expected only the PONG, got {f!r}")
        with ctx.step("NMQ-4.2-5"):
            for rid, ack in ((3, 1), (4, 2)):
                w.send_raw(raw_publish(rid, t.encode(), one, 1, ack=ack))
                f = w.recv_response()
                check(isinstance(f, PublishAck) and f.request_id == rid and f.first_id == rid - 1 and f.count == 1,
                      f"ack mode {ack} answered {f!r} (expected first_id {rid - 1})")
        with ctx.step("NMQ-4.2-2"):
            for rid, ack in ((5, 3), (6, 255)):
                w.send_raw(raw_publish(rid, t.encode(), one, 1, ack=ack))
                expect_error(w.recv_response(), ErrorCode.INVALID_ARGUMENT, request_id=rid)
        with ctx.step("NMQ-4.2-3"):
            bad = bytearray(one)
            bad[-1] = 1  # non-zero padding
            w.send_raw(raw_publish(7, t.encode(), bytes(bad), 1, ack=0))
            f = w.recv_response()
            check(isinstance(f, Error) and f.request_id == 7,
                  f"a failing ack-none PUBLISH must still be answered with ERROR, got {f!r}")
        with ctx.step("NMQ-SEM-3-4"):
            info = topic_info(w, t)
            check(info.next_id == 4, f"next_id {info.next_id}: expected 3 records (none, written, durable)")


# ---------------------------------------------------------------- record flags and reserved bytes

@case("enums.record-fields", "every unknown record flag bit (1..31), every reserved header byte (52..63), a "
      "raw_size without the LZ4 flag and every padding byte is RESERVED_NONZERO, non-fatal, and appends nothing",
      layer="wire", rules=("NMQ-5.1-2", "NMQ-5.1-3", "NMQ-3.1-4", "NMQ-SEM-3-4", "NMQ-9-1"))
def record_fields(ctx: Context) -> None:
    t = ctx.topic("rfields")
    base = bytearray(RecordBatch.from_payloads([b"p"]).data)  # 1-byte payload: 7 padding bytes
    frames: list[tuple[str, bytes, str]] = []
    for bit in range(1, 32):
        rec = bytearray(base)
        struct.pack_into("<I", rec, 28, 1 << bit)
        frames.append((f"flag bit {bit}", _restamp(rec), "NMQ-5.1-3"))
    for pos in range(52, 64):
        rec = bytearray(base)
        rec[pos] = 0x01
        frames.append((f"reserved byte {pos}", _restamp(rec), "NMQ-5.1-3"))
    rec = bytearray(base)
    struct.pack_into("<I", rec, 48, 1)
    frames.append(("raw_size without LZ4", _restamp(rec), "NMQ-5.1-3"))
    for pos in range(65, 72):
        rec = bytearray(base)
        rec[pos] = 0x80
        frames.append((f"padding byte {pos - 64}", bytes(rec), "NMQ-5.1-2"))
    good = RecordBatch.from_payloads([b"ok"]).data
    with ctx.client() as w:
        raw = b""
        for k, (_, rec, _) in enumerate(frames):
            rid = 1000 + k
            raw += raw_publish(rid, t.encode(), good + rec, 2)  # the bad record second: nothing may stay
        w.send_raw(raw)
        got = responses(w, len(frames))
        for k, ((label, _, rule), f) in enumerate(zip(frames, got, strict=True)):
            with ctx.step(rule, "NMQ-9-1"):
                check(is_error(f, ErrorCode.RESERVED_NONZERO) and f.request_id == 1000 + k,
                      f"a record with {label} answered {f!r}, expected ERROR RESERVED_NONZERO for request {1000 + k}")
        with ctx.step("NMQ-SEM-3-4"):
            w.send(Metadata(1, t))
            md = w.recv_response()
            check(is_error(md, ErrorCode.UNKNOWN_TOPIC) or
                  (isinstance(md, MetadataOk) and md.topics[0].next_id == 1),
                  f"a refused batch was appended: {md!r}")
        alive(w)


@case("enums.frame-flags", "each frame flag bit and each reserved header bit is RESERVED_NONZERO and fatal; "
      "reserved fields in request bodies are RESERVED_NONZERO and non-fatal", layer="wire",
      rules=("NMQ-3.1-4", "NMQ-3.1-6", "NMQ-8-2", "NMQ-9-1"))
def frame_flags(ctx: Context) -> None:
    ping = struct.pack("<Q", 5)
    # the reserved bits again with a request id whose low byte is zero: the C data plane reads the
    # header itself, and a check of bytes 7..8 (the reserved u16's high byte and the request id's
    # low byte) instead of 6..7 passes request id 1 and takes these
    for label, hdr in ([(f"flag bit {b}", struct.pack("<IBBHQ", 24, 0x09, 1 << b, 0, 1)) for b in range(8)]
                       + [(f"reserved bit {b}", struct.pack("<IBBHQ", 24, 0x09, 0, 1 << b, 1)) for b in (0, 7, 15)]
                       + [(f"reserved bit {b}, request id 256", struct.pack("<IBBHQ", 24, 0x09, 0, 1 << b, 0x100))
                          for b in (0, 7)]):
        with ctx.step("NMQ-3.1-4", "NMQ-3.1-6", "NMQ-9-1"), ctx.client() as w:
            w.send_raw(hdr + ping)
            frames = closed(w, "NMQ-3.1-6", "NMQ-8-2")
            check(any(isinstance(f, Error) and f.code == ErrorCode.RESERVED_NONZERO for f in frames),
                  f"frame header {label}: answered {frames!r}")
            check(not any(isinstance(f, Pong) for f in frames), f"frame header {label}: the PING was answered")
    t = ctx.topic("resv")
    one = RecordBatch.from_payloads([b"r"]).data
    with ctx.client() as w:
        publish(w, t, [b"r"])
        sub = subscribe(w, t, credit=0)
        bodies = [
            ("PUBLISH reserved @1", raw_publish(11, t.encode(), one, 1, res1=1)),
            ("PUBLISH reserved @6", raw_publish(12, t.encode(), one, 1, res2=1)),
            # the u16's high byte alone: a PUBLISH to a topic that exists is the C data plane's, which
            # reads the field itself (a check of the wrong two bytes passes @6 and takes this one)
            ("PUBLISH reserved @7", raw_publish(22, t.encode(), one, 1, res2=0x100)),
            ("SUBSCRIBE reserved @13", raw_subscribe(13, t.encode(), res1=1)),
            ("SUBSCRIBE reserved @18", raw_subscribe(14, t.encode(), res2=1)),
            ("UNSUBSCRIBE reserved", raw_frame(0x04, 15, struct.pack("<II", sub.sub_id, 1))),
            ("COMMIT reserved", raw_frame(0x06, 16, struct.pack("<IHHQ", sub.sub_id, 1, 1, 1))),
            ("SEEK reserved @5", raw_frame(0x07, 17, struct.pack("<IBBHQ", sub.sub_id, 0, 1, 0, 0))),
            ("SEEK reserved @6", raw_frame(0x07, 18, struct.pack("<IBBHQ", sub.sub_id, 0, 0, 1, 0))),
            ("METADATA reserved @2", raw_frame(0x08, 19, struct.pack("<HHI", 0, 1, 0))),
            ("METADATA reserved @4", raw_frame(0x08, 20, struct.pack("<HHI", 0, 0, 1))),
        ]
        w.send_raw(b"".join(b for _, b in bodies))
        got = responses(w, len(bodies))
        for (label, raw), f in zip(bodies, got, strict=True):
            with ctx.step("NMQ-3.1-4", "NMQ-9-1"):
                rid = struct.unpack_from("<Q", raw, 8)[0]
                check(is_error(f, ErrorCode.RESERVED_NONZERO) and f.request_id == rid,
                      f"{label}: answered {f!r}, expected ERROR RESERVED_NONZERO for request {rid}")
        with ctx.step("NMQ-3.1-6", "NMQ-8-2"):
            alive(w)
            info = topic_info(w, t)
            check(info.next_id == 2, f"a PUBLISH with a non-zero reserved field was appended (next_id {info.next_id})")
            w.send(Commit(21, sub.sub_id, (1,)))
            f = w.recv_response()
            check(is_error(f, ErrorCode.INVALID_ARGUMENT), f"the subscription was changed by a refused request: {f!r}")


@case("enums.opcodes", "every opcode that is not a request (0x00, 0x0A–0x80, the responses 0x81–0x89, "
      "0x8A–0xFF) is UNKNOWN_OPCODE and non-fatal; a second HELLO is BAD_STATE and fatal", layer="wire",
      rules=("NMQ-3.2-2", "NMQ-3.1-6", "NMQ-8-1", "NMQ-4.1-1", "NMQ-9-1"))
def opcodes(ctx: Context) -> None:
    ops = [op for op in range(256) if op not in REQUEST_OPCODES]
    with ctx.client() as w:
        w.send_raw(b"".join(raw_frame(op, 5000 + op, b"\x00" * (op % 9)) for op in ops))
        got = responses(w, len(ops))
        for op, f in zip(ops, got, strict=True):
            with ctx.step("NMQ-3.2-2", "NMQ-8-1", "NMQ-9-1"):
                expect_error(f, ErrorCode.UNKNOWN_OPCODE, request_id=5000 + op)
        with ctx.step("NMQ-3.1-6", "NMQ-3.2-2"):
            alive(w)
        with ctx.step("NMQ-4.1-1"):
            fatal(w, raw_frame(0x01, 9, struct.pack("<HHHH", 1, 0, 0, 0)), ErrorCode.BAD_STATE)


@case("enums.first-frame", "every request type sent before HELLO is BAD_STATE and closes the connection",
      layer="wire", rules=("NMQ-4.1-1", "NMQ-8-2"))
def first_frame(ctx: Context) -> None:
    t = ctx.topic("first").encode()
    firsts = {
        "PUBLISH": raw_publish(1, t, RecordBatch.from_payloads([b"f"]).data, 1),
        "SUBSCRIBE": raw_subscribe(1, t),
        "UNSUBSCRIBE": raw_frame(0x04, 1, struct.pack("<II", 1, 0)),
        "CREDIT": raw_frame(0x05, 1, struct.pack("<II", 1, 1)),
        "COMMIT": raw_commit(1, 1, [1]),
        "SEEK": raw_seek(1, 1, 0),
        "METADATA": raw_metadata(1, b""),
        "PING": raw_frame(0x09, 1, struct.pack("<Q", 1)),
    }
    for name, raw in firsts.items():
        with ctx.step("NMQ-4.1-1", "NMQ-8-2"), ctx.target.raw_client() as w:
            fatal(w, raw, ErrorCode.BAD_STATE, follow=HELLO_V1, what=f"{name} before HELLO")
    with ctx.client() as w, ctx.step("NMQ-4.1-1"):
        w.send(Metadata(2, t.decode()))
        f = w.recv_response()
        check(is_error(f, ErrorCode.UNKNOWN_TOPIC), f"a PUBLISH or SUBSCRIBE sent before HELLO created the topic: {f!r}")


# ---------------------------------------------------------------- every error code of every request

@case("enums.error-table", "one pipeline holding every non-fatal error each request type can get (MALFORMED, "
      "RESERVED_NONZERO, BAD_CRC, BATCH_TOO_LARGE, PAYLOAD_TOO_LARGE, NOT_SUPPORTED, UNKNOWN_TOPIC, "
      "UNKNOWN_SUBSCRIPTION, INVALID_ARGUMENT, OUT_OF_RANGE) between good requests: each answered in order with "
      "its code and request id, the good ones served, nothing of a failed one applied", layer="wire",
      rules=("NMQ-8-1", "NMQ-8-2", "NMQ-3.3-2", "NMQ-3.2-3", "NMQ-3.1-2", "NMQ-3.1-6", "NMQ-SEM-3-4",
             "NMQ-4.2-6", "NMQ-5.3-1", "NMQ-7-1", "NMQ-8-5", "NMQ-8-6"))
def error_table(ctx: Context) -> None:
    t = ctx.topic("errtab")
    tb = t.encode()
    m = ctx.max_payload
    one = RecordBatch.from_payloads([b"1"]).data
    bad_crc = bytearray(one)
    bad_crc[64] ^= 1
    with ctx.client() as w:
        a = publish(w, t, [b"0"])  # id 1
        sub = subscribe(w, t, credit=0)
        sid = sub.sub_id
        cases: list[tuple[str, bytes, ErrorCode | None, str]] = [
            ("PUBLISH topic length overruns", raw_frame(0x02, 0, struct.pack("<BBHHH", 1, 0, 300, 1, 0) + tb),
             ErrorCode.MALFORMED, "NMQ-3.1-2"),
            ("PUBLISH bad CRC", raw_publish(0, tb, bytes(bad_crc), 1), ErrorCode.BAD_CRC, "NMQ-5.2-1"),
            ("PUBLISH too many records", raw_publish(0, tb, one * (ctx.max_batch + 1), ctx.max_batch + 1),
             ErrorCode.BATCH_TOO_LARGE, "NMQ-6.1-1"),
            ("PUBLISH payload too large", raw_publish(0, tb, RecordBatch.from_payloads([bytes(m + 1)], max_payload=m + 1).data, 1),
             ErrorCode.PAYLOAD_TOO_LARGE, "NMQ-6.1-2"),
            ("PUBLISH bad ack mode", raw_publish(0, tb, one, 1, ack=9), ErrorCode.INVALID_ARGUMENT, "NMQ-4.2-2"),
            ("PUBLISH bad topic", raw_publish(0, b"a/b", one, 1), ErrorCode.INVALID_ARGUMENT, "NMQ-4.3-1"),
            ("PUBLISH ok", raw_publish(0, tb, one, 1), None, "NMQ-4.2-1"),
            ("SUBSCRIBE body too short", raw_frame(0x03, 0, b"\x00" * 10), ErrorCode.MALFORMED, "NMQ-3.1-2"),
            ("SUBSCRIBE reserved", raw_subscribe(0, tb, res1=2), ErrorCode.RESERVED_NONZERO, "NMQ-3.1-4"),
            ("SUBSCRIBE bad start", raw_subscribe(0, tb, start=7), ErrorCode.INVALID_ARGUMENT, "NMQ-4.4-2"),
            ("SUBSCRIBE start beyond", raw_subscribe(0, tb, start=3, value=99), ErrorCode.OUT_OF_RANGE, "NMQ-4.4-4"),
            ("SUBSCRIBE bad topic", raw_subscribe(0, b".."), ErrorCode.INVALID_ARGUMENT, "NMQ-4.3-1"),
            ("UNSUBSCRIBE short", raw_frame(0x04, 0, b"\x00" * 4), ErrorCode.MALFORMED, "NMQ-3.1-2"),
            ("UNSUBSCRIBE unknown", raw_frame(0x04, 0, struct.pack("<II", sid + 500, 0)),
             ErrorCode.UNKNOWN_SUBSCRIPTION, "NMQ-4.5-1"),
            ("CREDIT short", raw_frame(0x05, 0, b"\x00" * 3), ErrorCode.MALFORMED, "NMQ-3.1-2"),
            ("CREDIT unknown", raw_frame(0x05, 0, struct.pack("<II", sid + 500, 1)),
             ErrorCode.UNKNOWN_SUBSCRIPTION, "NMQ-4.6-1"),
            ("COMMIT count disagrees", raw_commit(0, sid, [1, 1], count=3), ErrorCode.MALFORMED, "NMQ-3.1-2"),
            ("COMMIT id 0", raw_commit(0, sid, [0]), ErrorCode.INVALID_ARGUMENT, "NMQ-4.7-2"),
            ("COMMIT undelivered", raw_commit(0, sid, [1]), ErrorCode.INVALID_ARGUMENT, "NMQ-4.7-1"),
            ("COMMIT unknown", raw_commit(0, sid + 500, [1]), ErrorCode.UNKNOWN_SUBSCRIPTION, "NMQ-4.5-1"),
            ("COMMIT too many", raw_commit(0, sid, [1] * (ctx.max_batch + 1)), ErrorCode.BATCH_TOO_LARGE, "NMQ-6.1-1"),
            ("SEEK short", raw_frame(0x07, 0, b"\x00" * 15), ErrorCode.MALFORMED, "NMQ-3.1-2"),
            ("SEEK bad start", raw_seek(0, sid, 6), ErrorCode.INVALID_ARGUMENT, "NMQ-4.8-2"),
            ("SEEK beyond", raw_seek(0, sid, 3, 1000), ErrorCode.OUT_OF_RANGE, "NMQ-4.8-1"),
            ("SEEK unknown", raw_seek(0, sid + 500, 0), ErrorCode.UNKNOWN_SUBSCRIPTION, "NMQ-4.8-2"),
            ("METADATA length overruns", raw_frame(0x08, 0, struct.pack("<HHI", 50, 0, 0) + b"abc"),
             ErrorCode.MALFORMED, "NMQ-3.1-2"),
            ("METADATA unknown", raw_metadata(0, (t + "-absent").encode()), ErrorCode.UNKNOWN_TOPIC, "NMQ-4.9-1"),
            ("PING short", raw_frame(0x09, 0, b"\x00" * 7), ErrorCode.MALFORMED, "NMQ-3.1-2"),
            ("PING ok", raw_frame(0x09, 0, struct.pack("<Q", 77)), None, "NMQ-4.10-1"),
        ]
        if not ctx.has(Capability.IDEMPOTENT):
            cases.append(("PUBLISH producer id", raw_publish(0, tb, RecordBatch.from_payloads(
                [b"i"], producer_id=3, first_sequence=1).data, 1), ErrorCode.NOT_SUPPORTED, "NMQ-4.2-6"))
        if not ctx.has(Capability.COMPRESSION_LZ4):
            cases.append(("PUBLISH lz4", raw_publish(0, tb, RecordBatch.from_payloads(
                [b"\x10a"], flags=[1], raw_sizes=[1]).data, 1), ErrorCode.NOT_SUPPORTED, "NMQ-5.3-1"))
        if not ctx.has(Capability.CONSUMER_GROUPS):
            cases.append(("SUBSCRIBE group", raw_subscribe(0, tb, group=b"g"), ErrorCode.NOT_SUPPORTED, "NMQ-4.4-3"))
        cases.append(("PUBLISH ok again", raw_publish(0, tb, one, 1), None, "NMQ-4.2-1"))
        stream = b""
        rids = []
        for k, (_, raw, _, _) in enumerate(cases):
            rid = 7000 + k
            rids.append(rid)
            stream += raw[:8] + struct.pack("<Q", rid) + raw[16:]
        w.send_raw(stream)
        got = responses(w, len(cases))
        for (label, _, code, rule), rid, f in zip(cases, rids, got, strict=True):
            with ctx.step(rule, "NMQ-8-1", "NMQ-3.3-2"):
                check(f.request_id == rid, f"{label}: the answer {f!r} is not for request {rid}: out of order")
                if code is None:
                    check(not isinstance(f, Error), f"{label}: a good request inside the pipeline failed: {f!r}")
                else:
                    expect_error(f, code, rule, request_id=rid)
        with ctx.step("NMQ-SEM-3-4", "NMQ-4.2-6", "NMQ-5.3-1", "NMQ-7-1"):
            acks = [f for f in got if isinstance(f, PublishAck)]
            check([x.first_id for x in acks] == [a.first_id + 1, a.first_id + 2],
                  f"the good PUBLISHes got ids {[x.first_id for x in acks]}: a refused one consumed an id")
            check(topic_info(w, t).next_id == 4, "a refused PUBLISH was appended")
        with ctx.step("NMQ-3.1-6", "NMQ-8-2"):
            w.send(Credit(0, sid, 10))
            ids = [r.id for r in collect_all(w, sid, 3)]
            check(ids == [1, 2, 3], f"the subscription delivered {ids} after the errors (expected 1, 2, 3)")
            alive(w)
        with ctx.step("NMQ-4.4-3", "NMQ-7-1"):
            if not ctx.has(Capability.CONSUMER_GROUPS):
                # "does not act on it": the refused group SUBSCRIBE did not create a subscription
                w.send(Commit(1, sid + 1, (1,)))
                f = w.recv_response()
                check(is_error(f, ErrorCode.UNKNOWN_SUBSCRIPTION),
                      f"a SUBSCRIBE refused with NOT_SUPPORTED left a subscription behind: {f!r}")
                quiet(w, 0.2, "a refused SUBSCRIBE delivered")
        with ctx.step("NMQ-8-5"):  # last: a SHOULD, checked once every MUST of the case has been
            known = set(load_rules())
            bogus = [(label, f.rule) for (label, _, code, _), f in zip(cases, got, strict=True)
                     if isinstance(f, Error) and f.rule and f.rule not in known]
            check(not bogus, f"ERROR rule fields that name no rule of the specifications: {bogus[:4]}")
