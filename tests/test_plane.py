"""The C data plane (nanomq/_c/src/plane.c) against the sans-IO codec, which is its reference.

The plane may only take a frame the codec decodes as a valid PUBLISH (ack none/written) to a
registered topic, or a PING, and must answer it exactly as the broker's Python handlers do; any
other frame it leaves, unconsumed, to the codec (plane.h, invariant P1). Hypothesis checks that
on arbitrary byte streams built from valid frames and their mutations.
"""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanomq._c.log import CLog
from nanomq._c.plane import CAP_LZ4, STOP_DURABLE, STOP_END, STOP_FRAME, STOP_OUT, STOP_TOPICS, Plane
from nanomq.protocol import (
    Ack,
    Decoder,
    Deliver,
    Limits,
    Ping,
    Pong,
    ProtocolError,
    Publish,
    PublishAck,
    RecordBatch,
    encode,
)

MAX_FRAME, MAX_PAYLOAD, MAX_BATCH = 1 << 20, 4096, 256


def _log(tmp_path, name: str = "t") -> CLog:  # type: ignore[no-untyped-def]
    return CLog(tmp_path / name, segment_bytes=1 << 20, sync_policy="never", interval_ms=10, retention_ms=None,
                retention_bytes=None, max_payload=MAX_PAYLOAD, topic_id=7, on_corrupt="quarantine", verify_all=False)


@pytest.fixture
def plane_log(tmp_path):  # type: ignore[no-untyped-def]
    log = _log(tmp_path)
    p = Plane(MAX_FRAME, MAX_PAYLOAD, MAX_BATCH, CAP_LZ4)
    p.topic("t", log, 0)
    yield p, log
    p.untopic("t")
    log.close(True)


def _frames(data: bytes) -> list[object]:
    d = Decoder("client")
    d.feed(data)
    return list(d)


def test_takes_written_and_none_publishes_and_pings_in_order(plane_log) -> None:  # type: ignore[no-untyped-def]
    p, log = plane_log
    data = (encode(Publish(5, "t", Ack.WRITTEN, RecordBatch.from_payloads([b"a", b"bb"]))) + encode(Ping(6, 99))
            + encode(Publish(7, "t", Ack.NONE, RecordBatch.from_payloads([b"c"])))
            + encode(Publish(8, "t", Ack.WRITTEN, RecordBatch.from_payloads([b"d"]))))
    r = p.feed(data, -1)
    assert (r.consumed, r.frames, r.stop, r.appended) == (len(data), 4, STOP_END, [(0, 72 * 3 + 72)])
    assert _frames(r.unsent) == [PublishAck(5, 1, 2), Pong(6, 99), PublishAck(8, 4, 1)]
    assert r.acks == 2  # the written PUBLISHes (the metrics time their acks): not the PING, not ack none
    view, count, first = log.read(1, 10)
    assert (count, first) == (4, 1)


def test_a_durable_publish_is_appended_and_stops_the_feed_for_its_ack(plane_log) -> None:  # type: ignore[no-untyped-def]
    """The answers before it are written; it is stored, and what its ack will say is reported; the
    frames after it are left untouched (their answers wait behind the durable ack)."""
    p, log = plane_log
    head = encode(Publish(5, "t", Ack.WRITTEN, RecordBatch.from_payloads([b"a"]))) + encode(Ping(6, 9))
    durable = encode(Publish(7, "t", Ack.DURABLE, RecordBatch.from_payloads([b"b", b"cc", b"d"])))
    tail = encode(Ping(8, 8)) + encode(Publish(9, "t", Ack.WRITTEN, RecordBatch.from_payloads([b"e"])))
    r = p.feed(head + durable + tail, -1)
    assert (r.consumed, r.frames, r.stop) == (len(head) + len(durable), 3, STOP_DURABLE)
    assert r.durable == (7, 2, 3, 0)  # request id, first id, count, topic index
    assert r.acks == 1  # the written one before it; the durable ack comes after the sync
    assert _frames(r.unsent) == [PublishAck(5, 1, 1), Pong(6, 9)]  # no ack for the durable one yet
    assert r.appended == [(0, 72 * 4)]
    view, count, first = log.read(1, 10)
    assert (count, first) == (4, 1)  # the durable batch is stored, nothing after it
    r = p.feed(head, -1)
    assert r.stop == STOP_END and r.durable is None


@pytest.mark.parametrize("frame", [
    encode(Publish(1, "other", Ack.WRITTEN, RecordBatch.from_payloads([b"x"]))),  # a topic it does not know
    encode(Publish(1, "t", Ack.WRITTEN, RecordBatch.from_payloads([b"x"], producer_id=3, first_sequence=1))),
    bytes(encode(Publish(1, "t", Ack.WRITTEN, RecordBatch.from_payloads([b"xyz"]))))[:-1] + b"\x01",  # padding
    encode(Ping(1, 1))[:4] + b"\x09\x01" + encode(Ping(1, 1))[6:],                  # frame flags set
], ids=["unknown-topic", "producer", "bad-padding", "flags"])
def test_leaves_everything_else_whole_to_the_codec(plane_log, frame: bytes) -> None:  # type: ignore[no-untyped-def]
    p, log = plane_log
    r = p.feed(frame + encode(Ping(2, 2)), -1)
    assert (r.consumed, r.frames, r.stop, r.unsent, r.appended) == (0, 0, STOP_FRAME, b"", [])
    assert log.read(1, 10)[1] == 0  # nothing appended


def test_partial_frames_wait(plane_log) -> None:  # type: ignore[no-untyped-def]
    p, _ = plane_log
    whole = encode(Publish(1, "t", Ack.WRITTEN, RecordBatch.from_payloads([b"x" * 100])))
    for cut in (1, 15, 16, len(whole) - 1):
        r = p.feed(whole[:cut], -1)
        assert (r.consumed, r.frames, r.stop) == (0, 0, STOP_END)
    assert p.feed(whole, -1).frames == 1


def test_stops_when_answers_or_topics_do_not_fit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = Plane(MAX_FRAME, MAX_PAYLOAD, MAX_BATCH, 0)
    logs = [_log(tmp_path, f"t{i}") for i in range(70)]
    for i, log in enumerate(logs):
        p.topic(f"t{i}", log, i)
    pings = encode(Ping(1, 1)) * 3000  # 72 000 bytes of PONGs: more than one call writes
    r = p.feed(pings, -1)
    assert r.stop == STOP_OUT and r.frames == len(r.unsent) // 24 and 0 < r.consumed < len(pings)
    many = b"".join(encode(Publish(i + 1, f"t{i}", Ack.NONE, RecordBatch.from_payloads([b"x"]))) for i in range(70))
    r = p.feed(many, -1)
    assert r.stop == STOP_TOPICS and len(r.appended) == 64 and r.frames == 64
    for log in logs:
        log.close(True)


def test_lz4_records_need_the_capability(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = _log(tmp_path)
    lz4 = encode(Publish(1, "t", Ack.WRITTEN, RecordBatch.from_payloads([b"\x10a"], flags=[1], raw_sizes=[1])))
    for caps, taken in ((0, 0), (CAP_LZ4, 1)):
        p = Plane(MAX_FRAME, MAX_PAYLOAD, MAX_BATCH, caps)
        p.topic("t", log, 0)
        assert p.feed(lz4, -1).frames == taken
    log.close(True)


def test_writes_answers_and_deliveries_to_the_socket(plane_log) -> None:  # type: ignore[no-untyped-def]
    p, log = plane_log
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        r = p.feed(encode(Publish(3, "t", Ack.WRITTEN, RecordBatch.from_payloads([b"hello"]))), a.fileno())
        assert r.unsent == b"" and _frames(b.recv(100)) == [PublishAck(3, 1, 1)]
        d = p.deliver(log, a.fileno(), 9, 1, 5, 1 << 20)
        assert (d.count, d.first_id, d.unsent, d.nbytes) == (1, 1, [], 72)  # one record: 64-byte header + 8
        (f,) = _frames(b.recv(1000))
        assert isinstance(f, Deliver) and f.sub_id == 9 and [r.payload for r in f.records] == [b"hello"]
    finally:
        a.close()
        b.close()


def test_a_delivery_the_socket_does_not_take_is_handed_back_whole(plane_log) -> None:  # type: ignore[no-untyped-def]
    p, log = plane_log
    payloads = [bytes([i]) * 4000 for i in range(200)]
    for i in range(0, 200, 50):
        assert p.feed(encode(Publish(1, "t", Ack.NONE, RecordBatch.from_payloads(payloads[i : i + 50]))), -1).frames
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.setblocking(False)
    try:
        d = p.deliver(log, a.fileno(), 2, 1, 256, 1 << 20)
        assert d.count == 200 and d.unsent  # the socket took part of it
        b.setblocking(False)
        got = b""
        while True:
            try:
                got += b.recv(1 << 20)
            except BlockingIOError:
                break
        stream = got + b"".join(d.unsent)
        dec = Decoder("client", limits=Limits(MAX_PAYLOAD, MAX_BATCH))
        dec.feed(stream)
        (f,) = list(dec)
        assert [r.payload for r in f.records] == payloads
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------- differential, against the codec

_valid = st.one_of(
    st.builds(lambda rid, ack, ps: encode(Publish(rid, "t", ack, RecordBatch.from_payloads(ps))),
              st.integers(0, 2**64 - 1), st.sampled_from([Ack.NONE, Ack.WRITTEN, Ack.DURABLE]),
              st.lists(st.binary(max_size=300), min_size=1, max_size=5)),
    st.builds(lambda rid, tok: encode(Ping(rid, tok)), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
    st.builds(lambda ps: encode(Publish(1, "nope", Ack.WRITTEN, RecordBatch.from_payloads(ps))),
              st.lists(st.binary(max_size=10), min_size=1, max_size=2)),
)


@st.composite
def _stream(draw: st.DrawFn) -> bytes:
    frames = draw(st.lists(_valid, min_size=1, max_size=6))
    out = []
    for f in frames:
        f = bytearray(f)
        if draw(st.integers(0, 3)) == 0:  # damage one byte of one frame in four
            pos = draw(st.integers(0, len(f) - 1))
            f[pos] = draw(st.integers(0, 255))
        out.append(bytes(f))
    return b"".join(out)


def _python_answer(frame: object, next_id: list[int]) -> bytes | None:
    """What the broker answers at once to a frame the plane may take (nothing for ack none; a
    durable ack comes later, after a sync)."""
    if isinstance(frame, Ping):
        return encode(Pong(frame.request_id, frame.token))
    assert isinstance(frame, Publish) and frame.topic == "t"
    first = next_id[0]
    next_id[0] += frame.records.count
    return encode(PublishAck(frame.request_id, first, frame.records.count)) if frame.ack == Ack.WRITTEN else b""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_stream())
def test_the_plane_takes_only_what_the_codec_accepts_and_answers_the_same(tmp_path_factory, data: bytes) -> None:
    tmp = tmp_path_factory.mktemp("plane")
    log = _log(tmp)
    p = Plane(MAX_FRAME, MAX_PAYLOAD, MAX_BATCH, CAP_LZ4)
    p.topic("t", log, 0)
    try:
        r = p.feed(data, -1)
        dec = Decoder("server", max_frame=MAX_FRAME, limits=Limits(MAX_PAYLOAD, MAX_BATCH))
        dec.feed(data[: r.consumed])
        taken = []
        while True:
            f = dec.next_frame()  # raises if the plane took a frame the codec rejects
            if f is None:
                break
            taken.append(f)
        assert len(taken) == r.frames and dec.buffered == 0
        next_id = [1]
        expected = b"".join(a for f in taken if (a := _python_answer(f, next_id)) is not None)
        assert r.unsent == expected
        records = [rec.payload for f in taken if isinstance(f, Publish) for rec in f.records]
        stored = []
        nxt = 1
        while True:
            view, n, first = log.read(nxt, 256, 1 << 20)
            if not n:
                break
            stored += [x.payload for x in RecordBatch.parse(bytes(view), n, max_payload=MAX_PAYLOAD)]
            nxt = first + n
        assert stored == records
        if r.stop == STOP_DURABLE:  # the last frame it took is a durable PUBLISH, and only the last
            last = taken[-1]
            assert isinstance(last, Publish) and last.ack == Ack.DURABLE
            assert r.durable == (last.request_id, next_id[0] - last.records.count, last.records.count, 0)
        assert not any(isinstance(f, Publish) and f.ack == Ack.DURABLE for f in taken[:-1])
        if r.stop == STOP_FRAME:
            # what it left: a frame the codec rejects, or one that is not the plane's to take
            rest = Decoder("server", max_frame=MAX_FRAME, limits=Limits(MAX_PAYLOAD, MAX_BATCH))
            rest.feed(data[r.consumed :])
            try:
                f = rest.next_frame()
            except ProtocolError:
                return
            assert f is not None
            assert not (isinstance(f, Ping) or (isinstance(f, Publish) and f.topic == "t"
                                                 and not f.records.summary()[1])), f  # producer: NOT_SUPPORTED
    finally:
        log.close(True)


def test_deliver_of_nothing_says_where_the_next_record_goes(plane_log) -> None:  # type: ignore[no-untyped-def]
    p, log = plane_log
    d = p.deliver(log, -1, 1, 1, 10, 1 << 20)
    assert (d.count, d.first_id, d.unsent) == (0, 1, [])
