"""Layer (b): conversations on a raw socket — handshake, every opcode, error codes, limits,
pipelining, batches at and over the limit, ordering."""

from __future__ import annotations

import socket
import struct
import time

from conformance.helpers import HELLO_V1, check_error_text, expect_error, fatal
from conformance.registry import Context, Failed, Unimplemented, case, check, soft_check
from conformance.wire import Closed, WireClient
from nanomq.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Capability,
    Commit,
    Committed,
    Credit,
    Deliver,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Metadata,
    MetadataOk,
    Ping,
    Pong,
    ProtocolError,
    Publish,
    PublishAck,
    RecordBatch,
    RecordFlag,
    Seek,
    SeekOk,
    Start,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    encode,
    frame_header,
)


def _err(f: Frame, code: ErrorCode, *rules: str) -> None:
    expect_error(f, code, *rules)


def _closed(w: WireClient, *rules: str) -> list[Frame]:
    try:
        return w.expect_closed(5.0)
    except TimeoutError:
        raise Failed("the connection was not closed", rules) from None


def _publish(ctx: Context, w: WireClient, topic: str, payloads: list[bytes], ack: Ack = Ack.WRITTEN) -> PublishAck:
    f = w.publish(topic, payloads, ack)
    check(isinstance(f, PublishAck), f"PUBLISH failed: {f!r}", "NMQ-4.2-1")
    assert isinstance(f, PublishAck)
    return f


def _sub(w: WireClient, topic: str, start: Start = Start.EARLIEST, value: int = 0, credit: int = 1 << 20) -> Subscribed:
    f = w.subscribe(topic, start, value, credit)
    check(isinstance(f, Subscribed), f"SUBSCRIBE failed: {f!r}", "NMQ-4.4-1")
    assert isinstance(f, Subscribed)
    return f


# ---------------------------------------------------------------- handshake

@case("wire.hello.ok", "HELLO is answered HELLO_OK with version 1 and sane limits", layer="wire",
      rules=("NMQ-4.1-4", "NMQ-4.1-5", "NMQ-3.2-1"))
def hello_ok(ctx: Context) -> None:
    with ctx.target.raw_client() as w:
        h = w.hello()
        check(h.version == PROTOCOL_VERSION, f"version {h.version}", "NMQ-4.1-5")
        check(1 <= h.max_batch <= 256, f"max_batch {h.max_batch} outside 1..256", "NMQ-4.1-4")
        check(h.max_payload >= 1 and h.max_frame >= 16 + 64 + h.max_payload, "max_frame cannot hold one record", "NMQ-4.1-4")
        ctx.note(f"server {h.server_name!r}, capabilities 0x{h.capabilities:x}, max_frame {h.max_frame}, "
                 f"max_payload {h.max_payload}, max_batch {h.max_batch}")


@case("wire.hello.first", "a first frame other than HELLO is BAD_STATE and closes", layer="wire", rules=("NMQ-4.1-1",))
def hello_first(ctx: Context) -> None:
    with ctx.target.raw_client() as w:
        fatal(w, encode(Ping(1, 1)), ErrorCode.BAD_STATE, "NMQ-4.1-1", follow=HELLO_V1)


@case("wire.hello.twice", "a second HELLO is BAD_STATE and closes", layer="wire", rules=("NMQ-4.1-1",))
def hello_twice(ctx: Context) -> None:
    with ctx.client() as w:
        fatal(w, encode(Hello(9, PROTOCOL_VERSION, "again", b"")), ErrorCode.BAD_STATE, "NMQ-4.1-1")


@case("wire.hello.version", "an unknown protocol version is UNSUPPORTED_VERSION and closes", layer="wire",
      rules=("NMQ-4.1-5",))
def hello_version(ctx: Context) -> None:
    with ctx.target.raw_client() as w:
        fatal(w, encode(Hello(1, 99, "future", b"")), ErrorCode.UNSUPPORTED_VERSION, "NMQ-4.1-5", follow=HELLO_V1)


@case("wire.hello.timeout", "a connection that never says HELLO is closed (within 15 s), an ERROR sent first citing "
      "NMQ-2-3; to a TLS target, also a TCP connection that never starts the TLS handshake and one that stops inside it",
      layer="wire", rules=("NMQ-2-3", "NMQ-8-6"))
def hello_timeout(ctx: Context) -> None:
    t0 = time.monotonic()
    # Over TLS a client can fall silent before HELLO three ways: before the TLS handshake (a TCP
    # connection that says nothing; the server's TLS layer holds it), inside it (a handshake
    # record's first bytes, then nothing), and after it. All are open at once.
    held: list[tuple[socket.socket, str]] = []
    try:
        if ctx.target.ssl:
            for first, what in ((b"", "never started the TLS handshake"),
                                (b"\x16\x03\x01", "stopped inside the TLS handshake")):
                held.append((socket.create_connection((ctx.target.host, ctx.target.port), timeout=20), what))
                if first:
                    held[-1][0].sendall(first)
        with ctx.target.raw_client(timeout=20) as w:
            try:
                got = w.expect_closed(15.0)
            except TimeoutError:
                raise Failed("silent connection still open after 15 s", ("NMQ-2-3",)) from None
        for f in got:
            if isinstance(f, Error):
                _cites_timeout_rule(f, "a connection that never said HELLO")
        for sock, what in held:
            sock.settimeout(max(0.1, 15.0 - (time.monotonic() - t0)))
            try:
                while sock.recv(4096):  # b"" once closed; a reset is closed too
                    pass
            except TimeoutError:
                raise Failed(f"a TCP connection to the TLS target that {what} was still open after 15 s",
                             ("NMQ-2-3",)) from None
            except OSError:
                pass
    finally:
        for sock, _ in held:
            sock.close()


def _cites_timeout_rule(f: Error, what: str) -> None:
    """The ERROR closing ``what`` for a timeout has a message and cites the rule broken, NMQ-2-3."""
    check_error_text(f)
    soft_check(f.rule == "NMQ-2-3", f"the ERROR closing {what} cites rule {f.rule!r}, not the one it broke, NMQ-2-3",
               "NMQ-8-6")


@case("wire.frame.timeout", "a client that dribbles a frame (one byte now and then, never completing it) is closed "
      "(within 35 s), though bytes keep arriving; an ERROR sent first cites NMQ-2-3", layer="wire",
      rules=("NMQ-2-3", "NMQ-8-6"))
def frame_timeout(ctx: Context) -> None:
    with ctx.client() as w:
        # one PUBLISH of ~2.4 KB at one byte per 0.25 s: ten minutes to complete
        raw = encode(Publish(1, ctx.topic("dribble"), Ack.WRITTEN, RecordBatch.from_payloads([bytes(2300)])))
        deadline = time.monotonic() + 35
        for b in raw:
            if time.monotonic() > deadline:
                raise Failed("a connection dribbling one frame was still open after 35 s", ("NMQ-2-3",))
            try:
                w.send_raw(bytes([b]))
                f = w.recv(0.25)
            except TimeoutError:
                continue
            except (Closed, OSError):
                return
            if isinstance(f, Error):
                _cites_timeout_rule(f, "a connection for a slow frame")
                w.expect_closed(5.0)
                return


# ---------------------------------------------------------------- publish

@case("wire.publish.ids", "ids start at 1, are contiguous, batch order kept; acks give first id and count",
      layer="wire", rules=("NMQ-SEM-2-1", "NMQ-SEM-2-3", "NMQ-4.2-5", "NMQ-4.2-1"))
def publish_ids(ctx: Context) -> None:
    t = ctx.topic("ids")
    with ctx.client() as w:
        a = _publish(ctx, w, t, [b"a", b"b", b"c"])
        b = _publish(ctx, w, t, [b"d"], Ack.DURABLE)
        c = _publish(ctx, w, t, [b"e", b"f"])
        check((a.first_id, a.count, b.first_id, c.first_id, c.count) == (1, 3, 4, 5, 2),
              f"acks {a!r} {b!r} {c!r}", "NMQ-SEM-2-1", "NMQ-4.2-5")
        sub = _sub(w, t)
        recs = w.collect(sub.sub_id, 6)
        check([r.id for r in recs] == [1, 2, 3, 4, 5, 6], f"ids {[r.id for r in recs]}", "NMQ-SEM-2-1")
        check([r.payload for r in recs] == [b"a", b"b", b"c", b"d", b"e", b"f"], "payload order", "NMQ-SEM-2-3")


@case("wire.publish.batch-limit", "a batch of max_batch records is accepted, one more is BATCH_TOO_LARGE "
      "(non-fatal)", layer="wire", rules=("NMQ-6.1-1", "NMQ-3.1-6"))
def publish_batch_limit(ctx: Context) -> None:
    t = ctx.topic("batch")
    with ctx.client() as w:
        assert w.server is not None
        n = w.server.max_batch
        a = _publish(ctx, w, t, [b"x"] * n)
        check(a.count == n, f"ack count {a.count}", "NMQ-6.1-1")
        one = RecordBatch.from_payloads([b"y"])
        body = struct.pack("<BBHHH", 1, 0, len(t), n + 1, 0) + t.encode() + one.data * (n + 1)
        w.send_raw(frame_header(0x02, 77, len(body)) + body)
        f = w.recv_response()
        _err(f, ErrorCode.BATCH_TOO_LARGE, "NMQ-6.1-1")
        check(f.request_id == 77, "ERROR must carry the request id", "NMQ-8-1")
        w.send(Ping(78, 1))
        check(w.recv_response() == Pong(78, 1), "connection unusable after a non-fatal error", "NMQ-3.1-6")


@case("wire.publish.payload-limit", "a payload of max_payload bytes is accepted, one more byte is PAYLOAD_TOO_LARGE",
      layer="wire", rules=("NMQ-6.1-2",))
def publish_payload_limit(ctx: Context) -> None:
    t = ctx.topic("payload")
    with ctx.client() as w:
        assert w.server is not None
        m = w.server.max_payload
        _publish(ctx, w, t, [b"p" * m])
        w.send(Publish(5, t, Ack.WRITTEN, RecordBatch.from_payloads([b"p" * (m + 1)], max_payload=m + 1)))
        _err(w.recv_response(), ErrorCode.PAYLOAD_TOO_LARGE, "NMQ-6.1-2")


@case("wire.publish.atomic", "a batch with one bad record is rejected whole: BAD_CRC, nothing appended",
      layer="wire", rules=("NMQ-4.2-1", "NMQ-5.2-1", "NMQ-SEM-3-4"))
def publish_atomic(ctx: Context) -> None:
    t = ctx.topic("atomic")
    with ctx.client() as w:
        _publish(ctx, w, t, [b"first"])
        raw = bytearray(encode(Publish(9, t, Ack.DURABLE, RecordBatch.from_payloads([b"ok", b"ok", b"bad!"]))))
        raw[-6] ^= 0x01  # a payload byte of the last record ("bad!", then 4 padding bytes)
        w.send_raw(bytes(raw))
        _err(w.recv_response(), ErrorCode.BAD_CRC, "NMQ-5.2-1")
        w.send(Metadata(10, t))
        md = w.recv_response()
        check(isinstance(md, MetadataOk) and md.topics[0].next_id == 2,
              f"the rejected batch changed the topic: {md!r}", "NMQ-4.2-1", "NMQ-SEM-3-4")


@case("wire.publish.ack-none", "ack none gets no answer; the next request's answer comes next", layer="wire",
      rules=("NMQ-4.2-3", "NMQ-3.2-3"))
def publish_ack_none(ctx: Context) -> None:
    t = ctx.topic("none")
    with ctx.client() as w:
        w.send(Publish(3, t, Ack.NONE, RecordBatch.from_payloads([b"q"])), Ping(4, 4))
        f = w.recv_response()
        check(f == Pong(4, 4), f"expected only the PONG, got {f!r}", "NMQ-4.2-3")


@case("wire.publish.stamps", "the server assigns id, timestamp and topic_id, recomputing the CRC", layer="wire",
      rules=("NMQ-4.2-4", "NMQ-5.2-1", "NMQ-SEM-2-2", "NMQ-4.6-3", "NMQ-5.1-6"))
def publish_stamps(ctx: Context) -> None:
    t = ctx.topic("stamps")
    with ctx.client() as w:
        before = time.time_ns()
        lying = RecordBatch.from_payloads([b"one", b"two"], first_id=999, timestamp_ns=5, topic_id=77)
        w.send(Publish(1, t, Ack.WRITTEN, lying))
        f = w.recv_response()
        check(isinstance(f, PublishAck) and f.first_id == 1, f"got {f!r}", "NMQ-4.2-4")
        sub = _sub(w, t)
        recs = w.collect(sub.sub_id, 2)  # the decoder verifies each CRC: a stale one would raise
        check([r.id for r in recs] == [1, 2], f"ids {[r.id for r in recs]}", "NMQ-4.2-4")
        check(all(r.topic_id == sub.topic_id for r in recs), "topic_id not the server's", "NMQ-4.2-4")
        check(all(before - 60_000_000_000 < r.timestamp_ns < time.time_ns() + 60_000_000_000 for r in recs),
              f"timestamps {[r.timestamp_ns for r in recs]} are not the append time", "NMQ-SEM-2-2")
        check(recs[0].timestamp_ns <= recs[1].timestamp_ns, "timestamps decrease", "NMQ-SEM-2-2")


@case("wire.publish.producer-id", "a record with producer_id needs IDEMPOTENT, else NOT_SUPPORTED", layer="wire",
      rules=("NMQ-4.2-6", "NMQ-7-1", "NMQ-5.1-6"))
def publish_producer(ctx: Context) -> None:
    t = ctx.topic("idem")
    with ctx.client() as w:
        w.send(Publish(1, t, Ack.WRITTEN, RecordBatch.from_payloads([b"i"], producer_id=42, first_sequence=1)))
        f = w.recv_response()
        if not ctx.has(Capability.IDEMPOTENT):
            _err(f, ErrorCode.NOT_SUPPORTED, "NMQ-4.2-6", "NMQ-7-1")
            raise Unimplemented("IDEMPOTENT not announced (NOT_SUPPORTED answered correctly)",
                                ("NMQ-4.2-6", "NMQ-7-1"))
        check(isinstance(f, PublishAck), f"got {f!r}", "NMQ-4.2-6")
        sub = _sub(w, t)
        r = w.collect(sub.sub_id, 1)[0]
        check((r.producer_id, r.sequence) == (42, 1), "producer_id/sequence not kept", "NMQ-5.1-6")


@case("wire.publish.lz4", "LZ4 records are stored and delivered as sent (flag, raw_size, bytes)", layer="wire",
      rules=("NMQ-5.3-1",))
def publish_lz4(ctx: Context) -> None:
    t = ctx.topic("lz4")
    block = bytes.fromhex("5f6161616161610100505061616161")
    batch = RecordBatch.from_payloads([block], flags=[int(RecordFlag.LZ4)], raw_sizes=[22])
    with ctx.client() as w:
        w.send(Publish(1, t, Ack.WRITTEN, batch))
        f = w.recv_response()
        if not ctx.has(Capability.COMPRESSION_LZ4):
            _err(f, ErrorCode.NOT_SUPPORTED, "NMQ-5.3-1", "NMQ-7-1")
            raise Unimplemented("COMPRESSION_LZ4 not announced (NOT_SUPPORTED answered correctly)", ("NMQ-7-1",))
        check(isinstance(f, PublishAck), f"got {f!r}", "NMQ-5.3-1")
        sub = _sub(w, t)
        r = w.collect(sub.sub_id, 1)[0]
        check((r.flags, r.raw_size, r.payload) == (int(RecordFlag.LZ4), 22, block), f"got {r!r}", "NMQ-5.3-1")


@case("wire.topic.names", "invalid topic names are INVALID_ARGUMENT", layer="wire", rules=("NMQ-4.3-1",))
def topic_names(ctx: Context) -> None:
    with ctx.client() as w:
        for bad in (b"a/b", b"..", b"sp ace", b"x" * 256):
            body = struct.pack("<BBHHH", 1, 0, len(bad), 1, 0) + bad + RecordBatch.from_payloads([b"n"]).data
            w.send_raw(frame_header(0x02, 3, len(body)) + body)
            f = w.recv_response()
            _err(f, ErrorCode.INVALID_ARGUMENT, "NMQ-4.3-1")


# ---------------------------------------------------------------- subscribe / deliver / credit

@case("wire.subscribe.earliest", "publish, then subscribe (earliest) delivers what was published, in order",
      layer="wire", rules=("NMQ-SEM-4-2", "NMQ-4.4-5", "NMQ-4.6-3", "NMQ-4.4-1", "NMQ-SEM-1-2"))
def subscribe_earliest(ctx: Context) -> None:
    t = ctx.topic("earliest")
    with ctx.client() as w:
        _publish(ctx, w, t, [str(i).encode() for i in range(10)])
        sub = _sub(w, t)
        check((sub.next_id, sub.end_id) == (1, 11), f"SUBSCRIBED {sub!r}", "NMQ-4.4-5")
        recs = w.collect(sub.sub_id, 10)
        check([r.id for r in recs] == list(range(1, 11)), "ids", "NMQ-SEM-4-2")


@case("wire.subscribe.latest", "start latest delivers only records appended afterwards", layer="wire",
      rules=("NMQ-4.4-2", "NMQ-SEM-4-1"))
def subscribe_latest(ctx: Context) -> None:
    t = ctx.topic("latest")
    with ctx.client() as w:
        _publish(ctx, w, t, [b"old"] * 3)
        sub = _sub(w, t, Start.LATEST)
        check(sub.next_id == 4, f"next_id {sub.next_id}", "NMQ-4.4-2")
        _publish(ctx, w, t, [b"new"])
        recs = w.collect(sub.sub_id, 1)
        check((recs[0].id, recs[0].payload) == (4, b"new"), f"got {recs[0]!r}", "NMQ-SEM-4-1")


@case("wire.subscribe.id", "start id delivers from that id; beyond the end is OUT_OF_RANGE", layer="wire",
      rules=("NMQ-4.4-2", "NMQ-4.4-4"))
def subscribe_id(ctx: Context) -> None:
    t = ctx.topic("fromid")
    with ctx.client() as w:
        _publish(ctx, w, t, [b"r"] * 8)
        sub = _sub(w, t, Start.ID, 6)
        check([r.id for r in w.collect(sub.sub_id, 3)] == [6, 7, 8], "ids from 6", "NMQ-4.4-2")
        _err(w.subscribe(t, Start.ID, 100), ErrorCode.OUT_OF_RANGE, "NMQ-4.4-4")
        edge = w.subscribe(t, Start.ID, 9)  # == next id: valid, delivers nothing yet
        check(isinstance(edge, Subscribed) and edge.next_id == 9, f"start at next id: {edge!r}", "NMQ-4.4-4")


@case("wire.subscribe.timestamp", "start timestamp delivers from the first record at or after it", layer="wire",
      rules=("NMQ-4.8-3", "NMQ-4.4-2"), needs=Capability.SEEK_TIME)
def subscribe_timestamp(ctx: Context) -> None:
    t = ctx.topic("ts")
    with ctx.client() as w:
        _publish(ctx, w, t, [b"a", b"b"])
        time.sleep(0.01)
        _publish(ctx, w, t, [b"c"])
        probe = _sub(w, t)
        recs = w.collect(probe.sub_id, 3)
        sub = _sub(w, t, Start.TIMESTAMP, recs[2].timestamp_ns)
        check(sub.next_id == 3 or recs[1].timestamp_ns == recs[2].timestamp_ns,
              f"next_id {sub.next_id} for the timestamp of id 3", "NMQ-4.8-3")
        future = _sub(w, t, Start.TIMESTAMP, time.time_ns() + 3600 * 10**9)
        check(future.next_id == 4, "a future timestamp starts at the next id", "NMQ-4.8-3")


@case("wire.subscribe.committed-needs-group", "start committed without a group is INVALID_ARGUMENT", layer="wire",
      rules=("NMQ-4.4-3",))
def subscribe_committed(ctx: Context) -> None:
    with ctx.client() as w:
        _err(w.subscribe(ctx.topic("c"), Start.COMMITTED), ErrorCode.INVALID_ARGUMENT, "NMQ-4.4-3")


@case("wire.subscribe.group", "a group subscription needs CONSUMER_GROUPS, else NOT_SUPPORTED", layer="wire",
      rules=("NMQ-4.4-3", "NMQ-7-1"))
def subscribe_group(ctx: Context) -> None:
    with ctx.client() as w:
        f = w.subscribe(ctx.topic("g"), Start.EARLIEST, group="cf-group")
        if not ctx.has(Capability.CONSUMER_GROUPS):
            _err(f, ErrorCode.NOT_SUPPORTED, "NMQ-4.4-3", "NMQ-7-1")
            raise Unimplemented("CONSUMER_GROUPS not announced (NOT_SUPPORTED answered correctly)",
                                ("NMQ-4.4-3", "NMQ-7-1"))
        check(isinstance(f, Subscribed), f"got {f!r}", "NMQ-4.4-3")


@case("wire.credit", "delivery never exceeds credit; CREDIT adds to it", layer="wire",
      rules=("NMQ-4.6-1", "NMQ-4.6-2", "NMQ-SEM-5-1"))
def credit_bounds(ctx: Context) -> None:
    t = ctx.topic("credit")
    with ctx.client() as w:
        _publish(ctx, w, t, [b"c"] * 30)
        sub = _sub(w, t, credit=4)
        check(len(w.collect(sub.sub_id, 4)) == 4, "4 records", "NMQ-4.6-2")
        try:
            extra = w.recv(0.5)
            raise Failed(f"delivered beyond credit: {extra!r}", ("NMQ-4.6-2",))
        except TimeoutError:
            pass
        w.send(Credit(0, sub.sub_id, 5))
        check([r.id for r in w.collect(sub.sub_id, 5)] == [5, 6, 7, 8, 9], "next 5", "NMQ-4.6-1")
        try:
            extra = w.recv(0.5)
            raise Failed(f"delivered beyond credit: {extra!r}", ("NMQ-4.6-2",))
        except TimeoutError:
            pass
        w.send(Credit(31, 999_999, 1))
        _err(w.recv_response(), ErrorCode.UNKNOWN_SUBSCRIPTION, "NMQ-4.6-1")


@case("wire.deliver.batches", "DELIVER frames hold 1..max_batch consecutive records of one subscription",
      layer="wire", rules=("NMQ-4.6-3", "NMQ-6.1-1"))
def deliver_batches(ctx: Context) -> None:
    t = ctx.topic("deliver")
    with ctx.client() as w:
        assert w.server is not None
        for _ in range(3):
            _publish(ctx, w, t, [b"d" * 10] * w.server.max_batch)
        sub = _sub(w, t)
        total, last = 0, 0
        while total < 3 * w.server.max_batch:
            f = w.recv()
            check(isinstance(f, Deliver), f"unexpected {f!r}", "NMQ-4.6-3")
            assert isinstance(f, Deliver)
            check(f.sub_id == sub.sub_id and 1 <= f.records.count <= w.server.max_batch, "DELIVER shape", "NMQ-4.6-3")
            ids = [r.id for r in f.records]
            check(ids == list(range(last + 1, last + 1 + len(ids))), f"ids {ids[:3]}... after {last}", "NMQ-4.6-3")
            last = ids[-1]
            total += len(ids)


@case("wire.unsubscribe", "no DELIVER follows UNSUBSCRIBED; an unknown sub_id is UNKNOWN_SUBSCRIPTION",
      layer="wire", rules=("NMQ-4.5-1", "NMQ-4.5-2"))
def unsubscribe(ctx: Context) -> None:
    t = ctx.topic("unsub")
    with ctx.client() as w:
        sub = _sub(w, t)
        w.send(Unsubscribe(2, sub.sub_id))
        check(isinstance(w.recv_response(), Unsubscribed), "UNSUBSCRIBED", "NMQ-4.5-2")
        _publish(ctx, w, t, [b"after"])
        try:
            f = w.recv(0.4)
            raise Failed(f"frame after UNSUBSCRIBED: {f!r}", ("NMQ-4.5-2",))
        except TimeoutError:
            pass
        w.send(Unsubscribe(3, sub.sub_id))
        _err(w.recv_response(), ErrorCode.UNKNOWN_SUBSCRIPTION, "NMQ-4.5-1")


# ---------------------------------------------------------------- seek / commit

@case("wire.seek.id", "after SEEK_OK, deliveries start at the sought id", layer="wire",
      rules=("NMQ-4.8-1", "NMQ-4.8-4"))
def seek_id(ctx: Context) -> None:
    t = ctx.topic("seek")
    with ctx.client() as w:
        _publish(ctx, w, t, [str(i).encode() for i in range(1, 21)])
        sub = _sub(w, t, credit=5)
        w.collect(sub.sub_id, 5)
        w.send(Seek(7, sub.sub_id, Start.ID, 3))
        while True:  # DELIVERs before SEEK_OK belong to the old position
            f = w.recv()
            if isinstance(f, SeekOk):
                break
            check(isinstance(f, Deliver), f"unexpected {f!r}", "NMQ-4.8-4")
        check(f.next_id == 3, f"SEEK_OK next_id {f.next_id}", "NMQ-4.8-1")
        w.send(Credit(0, sub.sub_id, 4))
        ids = [r.id for r in w.collect(sub.sub_id, 4)]
        check(ids == [3, 4, 5, 6], f"after SEEK to 3 got ids {ids}", "NMQ-4.8-1", "NMQ-4.8-4")
        w.send(Seek(8, sub.sub_id, Start.ID, 10_000))
        _err(w.recv_response(), ErrorCode.OUT_OF_RANGE, "NMQ-4.8-1")
        w.send(Seek(9, 424242, Start.ID, 1))
        _err(w.recv_response(), ErrorCode.UNKNOWN_SUBSCRIPTION, "NMQ-4.8-2")


@case("wire.seek.timestamp", "SEEK to a timestamp positions at the first record at or after it", layer="wire",
      rules=("NMQ-4.8-3",), needs=Capability.SEEK_TIME)
def seek_timestamp(ctx: Context) -> None:
    t = ctx.topic("seekts")
    with ctx.client() as w:
        _publish(ctx, w, t, [b"a"])
        time.sleep(0.01)
        _publish(ctx, w, t, [b"b", b"c"])
        sub = _sub(w, t)
        recs = w.collect(sub.sub_id, 3)
        w.send(Seek(5, sub.sub_id, Start.TIMESTAMP, recs[1].timestamp_ns))
        f = w.recv_response()
        check(isinstance(f, SeekOk) and f.next_id == 2, f"got {f!r}", "NMQ-4.8-3")
        ids = [r.id for r in w.collect(sub.sub_id, 2)]
        check(ids == [2, 3], f"ids {ids}", "NMQ-4.8-3")


@case("wire.commit", "COMMIT of delivered ids gives a non-decreasing position; undelivered ids are refused",
      layer="wire", rules=("NMQ-4.7-1", "NMQ-4.7-2", "NMQ-4.7-4", "NMQ-SEM-5-3"))
def commit(ctx: Context) -> None:
    t = ctx.topic("commit")
    with ctx.client() as w:
        _publish(ctx, w, t, [b"k"] * 5)
        sub = _sub(w, t)
        w.collect(sub.sub_id, 5)
        positions = []
        for ids in ((2,), (1,), (4, 3), (5,)):
            w.send(Commit(11, sub.sub_id, ids))
            f = w.recv_response()
            check(isinstance(f, Committed), f"COMMIT {ids}: {f!r}", "NMQ-4.7-1")
            positions.append(f.position)  # type: ignore[union-attr]
        check(positions == [1, 3, 5, 6], f"positions {positions} (expected 1, 3, 5, 6)", "NMQ-4.7-4")
        w.send(Commit(12, sub.sub_id, (99,)))
        _err(w.recv_response(), ErrorCode.INVALID_ARGUMENT, "NMQ-4.7-1")


# ---------------------------------------------------------------- metadata / ping / pipelining / framing

@case("wire.metadata", "METADATA lists topics with their id ranges; an unknown topic is UNKNOWN_TOPIC",
      layer="wire", rules=("NMQ-4.9-1", "NMQ-4.9-2", "NMQ-SEM-1-2"))
def metadata(ctx: Context) -> None:
    t = ctx.topic("meta")
    with ctx.client() as w:
        _publish(ctx, w, t, [b"m"] * 4)
        w.send(Metadata(1, ""))
        f = w.recv_response()
        check(isinstance(f, MetadataOk), f"got {f!r}", "NMQ-4.9-1")
        mine = [x for x in f.topics if x.name == t]  # type: ignore[union-attr]
        check(len(mine) == 1 and (mine[0].first_id, mine[0].next_id) == (1, 5), f"entry {mine}", "NMQ-4.9-2")
        w.send(Metadata(2, t))
        one = w.recv_response()
        check(isinstance(one, MetadataOk) and [x.name for x in one.topics] == [t], f"got {one!r}", "NMQ-4.9-1")
        w.send(Metadata(3, ctx.topic("absent")))
        _err(w.recv_response(), ErrorCode.UNKNOWN_TOPIC, "NMQ-4.9-1")


@case("wire.ping", "PING is answered PONG with the same token and request id", layer="wire",
      rules=("NMQ-4.10-1", "NMQ-3.2-1"))
def ping(ctx: Context) -> None:
    with ctx.client() as w:
        w.send(Ping(0xFFFF_FFFF_FFFF, 0x0123_4567_89AB_CDEF))
        check(w.recv_response() == Pong(0xFFFF_FFFF_FFFF, 0x0123_4567_89AB_CDEF), "PONG", "NMQ-4.10-1")


@case("wire.pipelining", "pipelined requests are answered in order, durable publishes included", layer="wire",
      rules=("NMQ-3.3-1", "NMQ-3.3-2", "NMQ-3.2-3"))
def pipelining(ctx: Context) -> None:
    t = ctx.topic("pipe")
    one = RecordBatch.from_payloads([b"p"])
    frames: list[Frame] = []
    rid = 100
    for i in range(30):
        rid += 1
        kind = i % 3
        frames.append(Ping(rid, i) if kind == 0 else Publish(rid, t, Ack.DURABLE if kind == 1 else Ack.WRITTEN, one))
    with ctx.client() as w:
        w.send(*frames)
        got = [w.recv_response() for _ in frames]
        check([f.request_id for f in got] == [f.request_id for f in frames],
              f"response order {[f.request_id for f in got]}", "NMQ-3.3-2")
        acks = [f.first_id for f in got if isinstance(f, PublishAck)]
        check(acks == list(range(1, 21)), f"publish ids {acks}", "NMQ-3.3-2")


@case("wire.framing.chunks", "frames split into single bytes, and many frames in one write, are both handled",
      layer="wire", rules=("NMQ-2-1",))
def framing_chunks(ctx: Context) -> None:
    with ctx.client() as w:
        raw = encode(Ping(1, 11))
        for b in raw:
            w.send_raw(bytes([b]))
            time.sleep(0.002)
        check(w.recv_response() == Pong(1, 11), "split frame", "NMQ-2-1")
        w.send_raw(b"".join(encode(Ping(i, i)) for i in range(2, 50)))
        check([w.recv_response().request_id for _ in range(2, 50)] == list(range(2, 50)), "coalesced frames", "NMQ-2-1")


@case("wire.framing.oversize", "a frame over max_frame is FRAME_TOO_LARGE and closes, on the size field alone",
      layer="wire", rules=("NMQ-6.1-3", "NMQ-3.1-6"))
def framing_oversize(ctx: Context) -> None:
    with ctx.client() as w:
        assert w.server is not None
        w.send_raw(struct.pack("<I", w.server.max_frame + 1) + bytes([0x09, 0, 0, 0]) + bytes(8))
        frames = _closed(w, "NMQ-6.1-3")
        check(any(isinstance(f, Error) and f.code == ErrorCode.FRAME_TOO_LARGE for f in frames),
              f"expected FRAME_TOO_LARGE, got {frames!r}", "NMQ-6.1-3")


@case("wire.isolation", "a client sending garbage or hanging mid-frame does not disturb another client",
      layer="wire", rules=("NMQ-8-4", "NMQ-6.2-2"))
def isolation(ctx: Context) -> None:
    t = ctx.topic("iso")
    with ctx.client() as good, ctx.client() as stuck, ctx.target.raw_client() as bad:
        stuck.send_raw(encode(Ping(1, 1))[:7])  # half a frame, then silence
        bad.send_raw(b"\x00\x10\x00\x00" + b"\xee" * 60)
        with ctx.client() as flood:  # a subscriber that never reads its socket
            assert flood.server is not None
            _publish(ctx, good, t, [b"f" * 1000] * good.server.max_batch)
            flood.send(Subscribe(1, t, Start.EARLIEST, 0, 1 << 30, ""))
            t0 = time.monotonic()
            for i in range(20):
                good.send(Ping(i, i))
                check(good.recv_response() == Pong(i, i), "PONG", "NMQ-8-4")
            check(time.monotonic() - t0 < 2.0, "other clients slowed the good one down", "NMQ-8-4")


@case("wire.answers-interleaved", "PUBLISH_ACKs and PONGs answered together, in several orders, are whole: each "
      "PONG echoes its token and each PUBLISH_ACK's reserved field is zero whatever an earlier answer left at "
      "its place", layer="wire", rules=("NMQ-3.1-4", "NMQ-4.10-1", "NMQ-4.2-5"))
def answers_interleaved(ctx: Context) -> None:
    # The C data plane writes the answers of one read of the target into one buffer, each field in
    # place: an answer written one byte off leaves a byte of an earlier answer in it. After an ack
    # and a PONG whose token is all ones (its last byte at offset 55), a PUBLISH_ACK ending there
    # (PONG, ack) or a third PONG's header reaching it (PONG, PONG, PONG) shows such a byte.
    t = ctx.topic("interleave")
    batch = RecordBatch.from_payloads([b"i"])
    token = 0xFFFF_FFFF_FFFF_FFFF
    with ctx.client() as w:
        w.send(Publish(w.next_id(), t, Ack.WRITTEN, batch))  # the topic exists: the rest is the fast path's
        check(isinstance(w.recv_response(), PublishAck), "the first PUBLISH was not acknowledged", "NMQ-4.2-5")
        for rnd in range(3):
            for order in ("publish-ping", "ping-publish", "publish-ping", "ping-ping-ping"):
                frames: tuple[Publish | Ping, ...] = tuple(
                    Publish(w.next_id(), t, Ack.WRITTEN, batch) if kind == "publish" else Ping(w.next_id(), token)
                    for kind in order.split("-"))
                w.send_raw(b"".join(encode(f) for f in frames))
                for sent in frames:
                    with ctx.step("NMQ-3.1-4", "NMQ-4.10-1", "NMQ-4.2-5"):
                        try:
                            f = w.recv_response()
                        except ProtocolError as e:
                            raise Failed(f"round {rnd} ({order}): the answer to {type(sent).__name__} is not a valid "
                                         f"frame: {e}", ("NMQ-3.1-4",)) from None
                        want = PublishAck if isinstance(sent, Publish) else Pong
                        check(isinstance(f, want) and f.request_id == sent.request_id,
                              f"round {rnd} ({order}): {type(sent).__name__} {sent.request_id} answered {f!r}")
                        if isinstance(f, Pong):
                            check(f.token == token, f"round {rnd} ({order}): PONG token {f.token:#x}", "NMQ-4.10-1")
