"""Layer (b), boundary values: every numeric field and limit at 0, 1, max−1, max and max+1.

Protocol versions, client names, topic names, payload sizes, batch sizes (PUBLISH and COMMIT),
frame sizes, credit (including saturation at 2^32−1), start ids around both ends of a topic (for
SUBSCRIBE and SEEK), PING tokens and request ids.
"""

from __future__ import annotations

import struct

from conformance.helpers import (
    HELLO_V1,
    alive,
    closed,
    collect_all,
    expect_error,
    fatal,
    publish,
    quiet,
    raw_commit,
    raw_frame,
    raw_metadata,
    raw_publish,
    raw_subscribe,
    responses,
    subscribe,
    topic_info,
)
from conformance.registry import Context, Skipped, case, check
from nanomq.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Capability,
    Commit,
    Committed,
    Credit,
    Error,
    ErrorCode,
    Hello,
    HelloOk,
    Ping,
    Pong,
    Publish,
    RecordBatch,
    Seek,
    SeekOk,
    Start,
    Subscribed,
    encode,
)

U32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF


@case("limits.versions", "HELLO version 1 is accepted; 0, 2 and 65535 are UNSUPPORTED_VERSION and close",
      layer="wire", rules=("NMQ-4.1-5", "NMQ-8-2"))
def versions(ctx: Context) -> None:
    with ctx.step("NMQ-4.1-5"), ctx.target.raw_client() as w:
        w.send(Hello(1, PROTOCOL_VERSION, "v1", b""))
        f = w.recv_response()
        check(isinstance(f, HelloOk) and f.version == PROTOCOL_VERSION, f"version 1 answered {f!r}")
    for v in (0, 2, 0xFFFF):
        with ctx.step("NMQ-4.1-5"), ctx.target.raw_client() as w:
            frames = fatal(w, encode(Hello(1, v, f"v{v}", b"")), ErrorCode.UNSUPPORTED_VERSION, follow=HELLO_V1)
            check(not any(isinstance(f, HelloOk) for f in frames), f"version {v} got HELLO_OK")


@case("limits.client-name", "client names of 0, 1, 254 and 255 bytes (UTF-8) are accepted; 256 bytes is "
      "INVALID_ARGUMENT; invalid UTF-8 is MALFORMED; any auth token is ignored without AUTH", layer="wire",
      rules=("NMQ-4.1-2", "NMQ-3.1-5", "NMQ-4.1-3"))
def client_name(ctx: Context) -> None:
    for name in ("", "a", "é" * 127, "n" * 255):
        with ctx.step("NMQ-4.1-2"), ctx.target.raw_client() as w:
            w.send(Hello(1, PROTOCOL_VERSION, name, b""))
            f = w.recv_response()
            check(isinstance(f, HelloOk), f"a client name of {len(name.encode())} bytes answered {f!r}")
    with ctx.step("NMQ-4.1-2"), ctx.target.raw_client() as w:
        name = b"n" * 256
        w.send_raw(raw_frame(0x01, 3, struct.pack("<HHHH", 1, len(name), 0, 0) + name))
        expect_error(w.recv_response(), ErrorCode.INVALID_ARGUMENT)
    with ctx.step("NMQ-3.1-5"), ctx.target.raw_client() as w:
        name = b"bad\xff\xfename"
        w.send_raw(raw_frame(0x01, 4, struct.pack("<HHHH", 1, len(name), 0, 0) + name))
        expect_error(w.recv_response(), ErrorCode.MALFORMED)
    if ctx.has(Capability.AUTH):
        return  # tokens are checked: the AUTH cases cover them
    for token in (b"\x00", bytes(ctx.rng.getrandbits(8) for _ in range(1000))):
        with ctx.step("NMQ-4.1-3"), ctx.target.raw_client() as w:
            w.send(Hello(1, PROTOCOL_VERSION, "token", token))
            f = w.recv_response()
            check(isinstance(f, HelloOk), f"without AUTH a token of {len(token)} bytes answered {f!r}")


_ALLOWED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
_INVALID_NAMES = (b".", b"..", b"a/b", b"a b", b"a\x00b", "é".encode(), b"a+b", b"a*b", b"a#b", b"a:b",
                  b"a\\b", b"\xff\xfe", b"x" * 256)


@case("limits.topic-names", "topic names of 1 and 255 bytes and of every allowed character are accepted by "
      "PUBLISH, SUBSCRIBE and METADATA; empty, 256 bytes, '.', '..' and every other character are "
      "INVALID_ARGUMENT", layer="wire", rules=("NMQ-4.3-1", "NMQ-4.9-1", "NMQ-SEM-1-2"))
def topic_names(ctx: Context) -> None:
    base = ctx.topic("nm")
    valid = [ctx.rng.choice(_ALLOWED[:62]), (base + "-" * 255)[:255], base + "." + _ALLOWED, "...",
             "." + base, "-" + base, "_" + base, (base + "x" * 254)[:254]]
    with ctx.client() as w:
        for name in valid:
            with ctx.step("NMQ-4.3-1"):
                publish(w, name, [name.encode()[:100]])
                s = w.subscribe(name, Start.EARLIEST)
                check(isinstance(s, Subscribed), f"SUBSCRIBE to the valid name {name!r} answered {s!r}")
            with ctx.step("NMQ-4.9-1", "NMQ-SEM-1-2"):
                info = topic_info(w, name)
                check(info.name == name and info.next_id >= 2, f"METADATA of {name!r}: {info!r}")
        frames = []
        rid = 100
        for bad in (b"", *_INVALID_NAMES):
            rid += 1
            frames.append(raw_publish(rid, bad, RecordBatch.from_payloads([b"n"]).data, 1))
            rid += 1
            frames.append(raw_subscribe(rid, bad))
            if bad:
                rid += 1
                frames.append(raw_metadata(rid, bad))
        w.send_raw(b"".join(frames))
        with ctx.step("NMQ-4.3-1"):
            for k, f in enumerate(responses(w, len(frames))):
                expect_error(f, ErrorCode.INVALID_ARGUMENT, request_id=101 + k)
            alive(w, "NMQ-4.3-1")


@case("limits.payload-sizes", "payloads of 0, 1, 7, 8, 9, 63, 64, 65, 4096, max_payload−1 and max_payload "
      "bytes are stored and delivered byte-exact; max_payload+1 is PAYLOAD_TOO_LARGE and appends nothing",
      layer="wire", rules=("NMQ-6.1-2", "NMQ-4.1-4", "NMQ-SEM-3-3", "NMQ-SEM-3-4", "NMQ-5.1-1"))
def payload_sizes(ctx: Context) -> None:
    t = ctx.topic("psize")
    m = ctx.max_payload
    sizes = sorted({s for s in (0, 1, 7, 8, 9, 63, 64, 65, 4096, m - 1, m) if 0 <= s <= m})
    payloads = [ctx.rng.randbytes(s) for s in sizes]
    with ctx.client() as w:
        with ctx.step("NMQ-6.1-2", "NMQ-4.1-4"):
            for p in payloads:  # one batch per record: a target's max_frame may hold only one
                publish(w, t, [p], max_payload=m)
            w.send(Publish(90, t, Ack.WRITTEN, RecordBatch.from_payloads([bytes(m + 1)], max_payload=m + 1)))
            expect_error(w.recv_response(), ErrorCode.PAYLOAD_TOO_LARGE, request_id=90)
        with ctx.step("NMQ-SEM-3-4"):
            info = topic_info(w, t)
            check(info.next_id == 1 + len(sizes), f"after the refused batch next_id is {info.next_id}, "
                  f"expected {1 + len(sizes)}")
        with ctx.step("NMQ-SEM-3-3", "NMQ-5.1-1"):
            sub = subscribe(w, t)
            recs = collect_all(w, sub.sub_id, len(sizes))
            check(len(recs) == len(sizes), f"{len(recs)} of {len(sizes)} records delivered")
            for r, p in zip(recs, payloads, strict=True):
                check(r.size == len(p) and r.payload == p,
                      f"record {r.id}: {r.size} bytes delivered, {len(p)} published (content differs)")
            quiet(w, 0.2, "a record nobody published", "NMQ-SEM-3-3")


@case("limits.batch-sizes", "PUBLISH of 1, 2, max_batch−1 and max_batch records is accepted with contiguous ids; "
      "0 and max_batch+1 records are BATCH_TOO_LARGE; a count that disagrees with the records is MALFORMED; "
      "nothing of a refused batch is appended", layer="wire",
      rules=("NMQ-6.1-1", "NMQ-4.2-5", "NMQ-5.1-4", "NMQ-5.1-5", "NMQ-SEM-3-4", "NMQ-4.2-1"))
def batch_sizes(ctx: Context) -> None:
    t = ctx.topic("bsize")
    n = ctx.max_batch
    counts = [c for c in (1, 2, n - 1, n) if c >= 1]
    with ctx.client() as w:
        expect = 1
        with ctx.step("NMQ-6.1-1", "NMQ-4.2-5"):
            for c in counts:
                a = publish(w, t, [f"{c}:{i}".encode() for i in range(c)])
                check(a.first_id == expect, f"a batch of {c} got first_id {a.first_id}, expected {expect}")
                expect += c
        one = RecordBatch.from_payloads([b"r"]).data
        with ctx.step("NMQ-6.1-1"):
            w.send_raw(raw_publish(50, t.encode(), b"", 0))
            expect_error(w.recv_response(), ErrorCode.BATCH_TOO_LARGE, request_id=50)
            w.send_raw(raw_publish(51, t.encode(), one * (n + 1), n + 1))
            expect_error(w.recv_response(), ErrorCode.BATCH_TOO_LARGE, request_id=51)
        with ctx.step("NMQ-5.1-4"):
            w.send_raw(raw_publish(52, t.encode(), one * 2, 3))
            expect_error(w.recv_response(), ErrorCode.MALFORMED, request_id=52)
        with ctx.step("NMQ-5.1-5"):
            w.send_raw(raw_publish(53, t.encode(), one * 2, 1))
            expect_error(w.recv_response(), ErrorCode.MALFORMED, request_id=53)
        with ctx.step("NMQ-SEM-3-4"):
            info = topic_info(w, t)
            check(info.next_id == expect, f"next_id {info.next_id} after refused batches, expected {expect}")
        with ctx.step("NMQ-4.2-1"):
            sub = subscribe(w, t)
            recs = collect_all(w, sub.sub_id, expect - 1)
            want = [f"{c}:{i}".encode() for c in counts for i in range(c)]
            check([r.payload for r in recs] == want, "the accepted batches were not stored whole and in order")


@case("limits.full-batch", "a batch of max_batch records of max_payload bytes each (the largest PUBLISH the "
      "limits allow) is accepted, stored and delivered", layer="wire",
      rules=("NMQ-4.1-4", "NMQ-6.1-1", "NMQ-6.1-2", "NMQ-6.1-3", "NMQ-SEM-3-3"))
def full_batch(ctx: Context) -> None:
    n, m = ctx.max_batch, ctx.max_payload
    frame = 16 + 8 + 255 + n * ((64 + m + 7) & ~7)
    if ctx.max_frame and frame > ctx.max_frame:
        n = max(1, (ctx.max_frame - 16 - 8 - 255) // ((64 + m + 7) & ~7))
        ctx.note(f"max_frame {ctx.max_frame} holds {n} records of max_payload bytes")
    if n * m > 64 << 20:
        raise Skipped(f"a full batch would be {n * m >> 20} MiB; the kit tests up to 64 MiB")
    t = ctx.topic("full")
    payloads = [ctx.rng.randbytes(m) for _ in range(n)]
    with ctx.client() as w:
        with ctx.step("NMQ-4.1-4", "NMQ-6.1-1", "NMQ-6.1-2", "NMQ-6.1-3"):
            a = publish(w, t, payloads, max_payload=m)
            check(a.first_id == 1, f"first_id {a.first_id}")
        with ctx.step("NMQ-SEM-3-3"):
            sub = subscribe(w, t)
            recs = collect_all(w, sub.sub_id, n, timeout=30)
            check(len(recs) == n, f"{len(recs)} of {n} records delivered")
            check(all(r.payload == p for r, p in zip(recs, payloads, strict=True)), "payloads differ")


@case("limits.frame-size", "a frame of size 15 is MALFORMED and fatal; a frame of exactly max_frame bytes is "
      "read whole (an unknown opcode: UNKNOWN_OPCODE, non-fatal); max_frame+1 is FRAME_TOO_LARGE and fatal",
      layer="wire", rules=("NMQ-3.1-2", "NMQ-6.1-3", "NMQ-3.1-6", "NMQ-3.2-2"))
def frame_size(ctx: Context) -> None:
    with ctx.step("NMQ-3.1-2", "NMQ-3.1-6"), ctx.client() as w:
        w.send_raw(struct.pack("<IBBHQ", 15, 0x09, 0, 0, 1))
        frames = closed(w)
        check(any(isinstance(f, Error) and f.code == ErrorCode.MALFORMED for f in frames),
              f"a frame of size 15 answered {frames!r}")
    mf = ctx.max_frame
    if not mf or mf > 64 << 20:
        raise Skipped(f"max_frame {mf}: the kit sends frames of at most 64 MiB")
    with ctx.step("NMQ-6.1-3", "NMQ-3.2-2"), ctx.client() as w:
        w.send_raw(raw_frame(0x7E, 7, bytes(mf - 16)))
        expect_error(w.recv_response(30), ErrorCode.UNKNOWN_OPCODE, request_id=7)
        alive(w, "NMQ-6.1-3")
    with ctx.step("NMQ-6.1-3", "NMQ-3.1-6"), ctx.client() as w:
        w.send_raw(struct.pack("<IBBHQ", mf + 1, 0x7E, 0, 0, 8))
        frames = closed(w)
        check(any(isinstance(f, Error) and f.code == ErrorCode.FRAME_TOO_LARGE for f in frames),
              f"a frame of max_frame+1 bytes answered {frames!r}")


@case("limits.commit-counts", "COMMIT of max_batch ids is accepted; 0 and max_batch+1 ids are BATCH_TOO_LARGE",
      layer="wire", rules=("NMQ-6.1-1", "NMQ-4.7-4"))
def commit_counts(ctx: Context) -> None:
    t = ctx.topic("ccount")
    n = ctx.max_batch
    with ctx.client() as w:
        publish(w, t, [b"c"] * n)
        sub = subscribe(w, t)
        check(len(collect_all(w, sub.sub_id, n)) == n, "records not delivered", "NMQ-4.4-1")
        with ctx.step("NMQ-6.1-1"):
            w.send_raw(raw_commit(20, sub.sub_id, []))
            expect_error(w.recv_response(), ErrorCode.BATCH_TOO_LARGE, request_id=20)
            w.send_raw(raw_commit(21, sub.sub_id, [*range(1, n + 1), 1]))
            expect_error(w.recv_response(), ErrorCode.BATCH_TOO_LARGE, request_id=21)
        with ctx.step("NMQ-6.1-1", "NMQ-4.7-4"):
            w.send(Commit(22, sub.sub_id, tuple(range(1, n + 1))))
            f = w.recv_response()
            check(isinstance(f, Committed) and f.position == n + 1, f"COMMIT of {n} ids answered {f!r}")


@case("limits.credit", "initial credit 0 delivers nothing until CREDIT; credit 1 is one record; CREDIT 0 is "
      "accepted silently; credit saturates at 2^32−1 instead of wrapping", layer="wire",
      rules=("NMQ-4.6-1", "NMQ-4.6-2", "NMQ-SEM-5-1", "NMQ-3.2-3"))
def credit_limits(ctx: Context) -> None:
    t = ctx.topic("climit")
    with ctx.client() as w:
        publish(w, t, [str(i).encode() for i in range(1, 21)])
        with ctx.step("NMQ-4.6-1", "NMQ-4.6-2"):
            s0 = subscribe(w, t, credit=0)
            quiet(w, 0.3, "delivered with initial credit 0")
            w.send(Credit(0, s0.sub_id, 1))
            check([r.id for r in collect_all(w, s0.sub_id, 1)] == [1], "CREDIT 1 did not deliver record 1")
            quiet(w, 0.3, "delivered beyond a credit of 1")
        with ctx.step("NMQ-3.2-3", "NMQ-4.6-1"):
            w.send(Credit(0, s0.sub_id, 0))
            quiet(w, 0.2, "CREDIT 0 was answered or delivered")
            w.send(Credit(0, s0.sub_id, 3))
            check([r.id for r in collect_all(w, s0.sub_id, 3)] == [2, 3, 4], "CREDIT 3 after CREDIT 0")
            quiet(w, 0.2, "delivered beyond the credit")
        with ctx.step("NMQ-4.6-1"):
            s1 = subscribe(w, t, credit=U32)
            check(len(collect_all(w, s1.sub_id, 20)) == 20, "credit 2^32-1 did not deliver all 20 records")
            # 20 records used: 2^32-21 left. Adding 32 must saturate at 2^32-1; a wrap leaves 11.
            w.send(Credit(0, s1.sub_id, 32))
            publish(w, t, [b"more"] * 30)
            got = collect_all(w, s1.sub_id, 30, idle=0.5)
            check(len(got) == 30, f"after CREDIT 32 on a nearly full credit only {len(got)} of 30 records came: "
                  "the credit wrapped instead of saturating at 2^32-1")


@case("limits.start-ids", "SUBSCRIBE and SEEK with start id 0, 1, next−1 and next start there (0 clamps to the "
      "first id); next+1 and 2^64−1 are OUT_OF_RANGE; also on an empty topic, and at records of an empty payload "
      "that end the topic", layer="wire",
      rules=("NMQ-4.4-4", "NMQ-4.4-5", "NMQ-4.8-1", "NMQ-4.8-4", "NMQ-SEM-4-1"))
def start_ids(ctx: Context) -> None:
    t = ctx.topic("sids")
    with ctx.client() as w:
        publish(w, t, [str(i).encode() for i in range(1, 6)])  # ids 1..5, next 6
        for v, first in ((0, 1), (1, 1), (5, 5), (6, 6)):
            with ctx.step("NMQ-4.4-4", "NMQ-4.4-5"):
                s = w.subscribe(t, Start.ID, v)
                check(isinstance(s, Subscribed) and (s.next_id, s.end_id) == (first, 6),
                      f"SUBSCRIBE start id {v} answered {s!r}, expected next_id {first}, end_id 6")
                assert isinstance(s, Subscribed)
            with ctx.step("NMQ-SEM-4-1"):
                if first < 6:
                    ids = [r.id for r in collect_all(w, s.sub_id, 6 - first)]
                    check(ids == list(range(first, 6)), f"start id {v} delivered {ids}")
                else:
                    quiet(w, 0.2, "a subscription at the next id delivered")
        for v in (7, U64):
            with ctx.step("NMQ-4.4-4"):
                expect_error(w.subscribe(t, Start.ID, v), ErrorCode.OUT_OF_RANGE)
        # the smallest records at the end: start ids naming records of an empty payload (the last one
        # ends exactly where the written bytes end)
        tail = ctx.topic("sids-tail")
        publish(w, tail, [b"x", b"", b""])  # ids 1..3, the last two empty
        for v in (2, 3):
            with ctx.step("NMQ-4.4-4", "NMQ-4.4-5", "NMQ-SEM-4-1"):
                s = w.subscribe(tail, Start.ID, v)
                check(isinstance(s, Subscribed) and (s.next_id, s.end_id) == (v, 4),
                      f"SUBSCRIBE start id {v} (a record with an empty payload, the last is id 3) answered {s!r}")
                assert isinstance(s, Subscribed)
                got = collect_all(w, s.sub_id, 4 - v)
                check([(r.id, bytes(r.payload)) for r in got] == [(i, b"") for i in range(v, 4)],
                      f"start id {v} delivered {[(r.id, bytes(r.payload)) for r in got]}, expected the empty "
                      f"records {list(range(v, 4))}")
        empty = ctx.topic("sids-empty")
        for v, ok in ((0, True), (1, True), (2, False)):
            with ctx.step("NMQ-4.4-4"):
                s = w.subscribe(empty, Start.ID, v)
                if ok:
                    check(isinstance(s, Subscribed) and (s.next_id, s.end_id) == (1, 1),
                          f"empty topic, start id {v}: {s!r}")
                else:
                    expect_error(s, ErrorCode.OUT_OF_RANGE)
        sub = subscribe(w, t, Start.LATEST, credit=0)
        for v, first in ((0, 1), (1, 1), (5, 5), (6, 6)):
            with ctx.step("NMQ-4.8-1", "NMQ-4.4-4"):
                rid = w.next_id()
                w.send(Seek(rid, sub.sub_id, Start.ID, v))
                f = w.recv_response()
                check(isinstance(f, SeekOk) and f.next_id == first, f"SEEK to id {v} answered {f!r}")
            with ctx.step("NMQ-4.8-4"):
                w.send(Credit(0, sub.sub_id, 1))
                if first < 6:
                    ids = [r.id for r in collect_all(w, sub.sub_id, 1)]
                    check(ids == [first], f"after SEEK to id {v} delivered {ids}")
                else:
                    quiet(w, 0.2, "a subscription sought to the next id delivered")
        for v in (7, U64):
            with ctx.step("NMQ-4.8-1", "NMQ-4.4-4"):
                rid = w.next_id()
                w.send(Seek(rid, sub.sub_id, Start.ID, v))
                expect_error(w.recv_response(), ErrorCode.OUT_OF_RANGE, request_id=rid)


@case("limits.tokens", "PING tokens and request ids 0, 1 and 2^64−1 are echoed unchanged", layer="wire",
      rules=("NMQ-4.10-1", "NMQ-3.2-3"))
def tokens(ctx: Context) -> None:
    with ctx.client() as w:
        pairs = [(1, 0), (2, 1), (3, U64), (U64, 7), (0, 9)]
        w.send(*(Ping(r, t) for r, t in pairs))
        with ctx.step("NMQ-4.10-1", "NMQ-3.2-3"):
            got = responses(w, len(pairs))
            check(got == [Pong(r, t) for r, t in pairs], f"PONGs {got!r}")
