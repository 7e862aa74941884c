"""Properties and edge cases of the sans-IO codec (nanomq.protocol)."""

from __future__ import annotations

import contextlib
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanomq.protocol import (
    Ack,
    Commit,
    Decoder,
    Deliver,
    Error,
    ErrorCode,
    Hello,
    HelloOk,
    Limits,
    Metadata,
    MetadataOk,
    Ping,
    ProtocolError,
    Publish,
    Record,
    RecordBatch,
    Start,
    Subscribe,
    TopicInfo,
    encode,
    encode_publish,
    frame_header,
    record_span,
    valid_topic,
)
from nanomq.protocol.records import record_into
from tests.strategies import requests, responses


def _decode_all(role: str, raw: bytes, chunks: list[int] | None = None) -> list:
    d = Decoder(role)
    out = []
    if chunks is None:
        d.feed(raw)
        out.extend(d)
    else:
        pos = 0
        for n in chunks + [len(raw)]:
            d.feed(raw[pos : pos + n])
            pos += n
            out.extend(d)
    assert d.buffered == 0
    return out


@settings(max_examples=300)
@given(st.lists(requests, min_size=1, max_size=5))
def test_requests_roundtrip(frames: list) -> None:
    raw = b"".join(encode(f) for f in frames)
    assert _decode_all("server", raw) == frames


@settings(max_examples=300)
@given(st.lists(responses, min_size=1, max_size=5))
def test_responses_roundtrip(frames: list) -> None:
    raw = b"".join(encode(f) for f in frames)
    assert _decode_all("client", raw) == frames


@settings(max_examples=200)
@given(st.lists(requests, min_size=1, max_size=4), st.lists(st.integers(0, 200), max_size=30))
def test_any_chunking_gives_same_frames(frames: list, chunks: list[int]) -> None:
    raw = b"".join(encode(f) for f in frames)
    assert _decode_all("server", raw, chunks) == frames


@settings(max_examples=1000)
@given(st.binary(max_size=400), st.sampled_from(["server", "client"]))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes, role: str) -> None:
    d = Decoder(role, max_frame=1 << 16)
    d.feed(data)
    for _ in range(100):
        try:
            if d.next_frame() is None:
                break
        except ProtocolError as e:
            assert isinstance(e.code, ErrorCode)
            if e.fatal:
                with pytest.raises(ProtocolError):
                    d.next_frame()
                break


@settings(max_examples=300)
@given(requests, st.integers(0, 10_000), st.integers(0, 255))
def test_single_byte_corruption_never_crashes(frame, pos: int, value: int) -> None:
    raw = bytearray(encode(frame))
    raw[pos % len(raw)] = value
    d = Decoder("server")
    d.feed(bytes(raw))
    with contextlib.suppress(ProtocolError):
        d.next_frame()


def test_record_fields_and_iteration() -> None:
    b = RecordBatch.from_payloads([b"abc", b""], first_id=10, timestamp_ns=5, topic_id=2)
    recs = b.records()
    assert [r.id for r in recs] == [10, 11]
    assert recs[0] == b[0] and isinstance(recs[0], Record)
    assert recs[0].payload == b"abc" and recs[1].payload == b""
    assert b.payloads() == [b"abc", b""]
    assert len(b) == 2 and b.offsets == (0, record_span(3))
    assert b == RecordBatch.parse(b.data, 2) and hash(b) == hash(RecordBatch.parse(b.data, 2))
    assert b != "x" and "count=2" in repr(b)


def test_record_span() -> None:
    assert record_span(0) == 64 and record_span(1) == 72 and record_span(8) == 72 and record_span(9) == 80


@pytest.mark.parametrize(
    "kwargs",
    [
        {"payloads": []},
        {"payloads": [b"x"] * 257},
        {"payloads": [b"x" * 65537]},
        {"payloads": [b"x"], "flags": [2]},
        {"payloads": [b"x"], "flags": [0, 0]},
        {"payloads": [b"x"], "raw_sizes": [1, 2]},
        {"payloads": [b"x"], "flags": [1], "raw_sizes": [65537]},
    ],
)
def test_encoder_refuses_invalid_batches(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RecordBatch.from_payloads(**kwargs)


def test_encoder_refuses_invalid_frames() -> None:
    one = RecordBatch.from_payloads([b"x"])
    empty = RecordBatch(b"", 0, ())
    for bad in [
        Publish(1, "bad/topic", Ack.DURABLE, one),
        Publish(1, "t", Ack.DURABLE, empty),
        Subscribe(1, "", Start.EARLIEST, 0, 0, ""),
        Subscribe(1, "t", Start.EARLIEST, 0, 0, "bad group"),
        Commit(1, 1, ()),
        Commit(1, 1, tuple(range(1, 300))),
        Hello(1, 1, "n" * 300, b""),
        HelloOk(1, 1, 0, 0, 0, 0, "n" * 300),
        Metadata(1, "a b"),
        MetadataOk(1, (TopicInfo(1, "", 1, 1),)),
        Ping(-1, 0),
        Deliver(0, 1, empty),
    ]:
        with pytest.raises(ValueError):
            encode(bad)


def test_valid_topic() -> None:
    assert valid_topic("orders") and valid_topic("a.b-c_D9") and valid_topic("x" * 255)
    for bad in ["", ".", "..", "x" * 256, "a/b", "a b", "é"]:
        assert not valid_topic(bad)


def test_fatal_error_poisons_decoder_and_is_raised_early() -> None:
    d = Decoder("server", max_frame=1000)
    d.feed((5000).to_bytes(4, "little"))  # only the size field: already known to be too big
    with pytest.raises(ProtocolError) as e:
        d.next_frame()
    assert e.value.fatal and e.value.code is ErrorCode.FRAME_TOO_LARGE
    d.feed(encode(Ping(1, 1)))
    with pytest.raises(ProtocolError):
        d.next_frame()


def test_nonfatal_error_consumes_frame_and_continues() -> None:
    bad = bytearray(encode(Ping(9, 0)))
    bad[4] = 0x40  # unknown opcode
    d = Decoder("server")
    d.feed(bytes(bad) + encode(Ping(10, 3)))
    with pytest.raises(ProtocolError) as e:
        d.next_frame()
    assert not e.value.fatal and e.value.request_id == 9
    assert d.next_frame() == Ping(10, 3)


def test_partial_input_and_buffer_accounting() -> None:
    raw = encode(Ping(1, 2))
    d = Decoder("server")
    d.feed(raw[:3])
    assert d.next_frame() is None and d.pending_frame_size == 0
    d.feed(raw[3:10])
    assert d.next_frame() is None and d.pending_frame_size == len(raw)
    d.feed(raw[10:])
    assert d.next_frame() == Ping(1, 2) and d.buffered == 0


def test_compaction_keeps_data() -> None:
    d = Decoder("server")
    frames = [Ping(i, i) for i in range(50)]
    for f in frames:
        d.feed(encode(f))
    got = [d.next_frame() for _ in range(25)]
    d.feed(encode(Ping(99, 99)))  # triggers compaction of the consumed prefix
    got += list(d)
    assert got == frames + [Ping(99, 99)]


def test_limits_and_roles() -> None:
    with pytest.raises(ValueError):
        Decoder("broker")
    one = encode(Publish(1, "t", Ack.DURABLE, RecordBatch.from_payloads([b"x" * 100] * 3)))
    d = Decoder("server", limits=Limits(max_payload=50))
    d.feed(one)
    with pytest.raises(ProtocolError) as e:
        d.next_frame()
    assert e.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    d.set_limits(limits=Limits(max_batch=2), max_frame=100_000)
    d.feed(one)
    with pytest.raises(ProtocolError) as e:
        d.next_frame()
    assert e.value.code is ErrorCode.BATCH_TOO_LARGE


def test_frame_header_and_error_helpers() -> None:
    assert frame_header(0x09, 7, 8) == encode(Ping(7, 0))[:16]
    err = Error(1, int(ErrorCode.BAD_CRC), "m", "NMQ-5.2-1")
    assert err.error_code is ErrorCode.BAD_CRC
    assert Error(1, 999, "", "").error_code == 999
    pe = ProtocolError(ErrorCode.MALFORMED, "NMQ-3.1-2", "x", fatal=True, request_id=4)
    back = pickle.loads(pickle.dumps(pe))
    assert (back.code, back.rule, back.fatal, back.request_id) == (pe.code, pe.rule, True, 4)
    assert "MALFORMED" in str(pe)


@pytest.mark.parametrize(
    ("role", "raw"),
    [
        # bodies shorter than their fixed part, one per frame type with a variable part
        ("server", frame_header(0x01, 1, 2) + b"\0\0"),
        ("server", frame_header(0x02, 1, 2) + b"\0\0"),
        ("server", frame_header(0x02, 1, 8) + bytes([1, 0, 9, 0, 1, 0, 0, 0])),
        ("server", frame_header(0x03, 1, 2) + b"\0\0"),
        ("server", frame_header(0x06, 1, 2) + b"\0\0"),
        ("server", frame_header(0x08, 1, 2) + b"\0\0"),
        ("client", frame_header(0x81, 1, 2) + b"\0\0"),
        ("client", frame_header(0x85, 1, 2) + b"\0\0"),
        ("client", frame_header(0x88, 1, 2) + b"\0\0"),
        ("client", frame_header(0x88, 1, 8) + (1).to_bytes(4, "little") + bytes(4)),
        ("client", frame_header(0x88, 1, 8 + 24) + (1).to_bytes(4, "little") + bytes(4) + bytes([1, 0, 0, 0, 9, 0]) + bytes(18)),
        ("client", frame_header(0xFF, 1, 2) + b"\0\0"),
        ("client", frame_header(0xFF, 1, 9) + bytes([1, 0, 1, 0, 0, 0, 0, 0]) + b"\xff"),
        ("client", frame_header(0x82, 1, 16) + bytes(12) + b"\1\0\0\0"),
        ("client", frame_header(0x85, 1, 8) + bytes([0, 0, 0, 0, 0, 0, 0, 0])),
        ("client", frame_header(0x85, 1, 8) + bytes([0, 0, 0, 0, 1, 0, 1, 0])),
        ("client", frame_header(0x88, 1, 8) + bytes([0, 0, 0, 0, 1, 0, 0, 0])),
        ("client", frame_header(0x88, 1, 32) + (1).to_bytes(4, "little") + bytes(4) + bytes([1, 0, 0, 0, 0, 0, 1, 0]) + bytes(16)),
        ("client", frame_header(0xFF, 1, 8) + bytes([1, 0, 0, 0, 0, 0, 1, 0])),
        ("server", frame_header(0x04, 1, 8) + bytes([1, 0, 0, 0, 1, 0, 0, 0])),
        ("server", frame_header(0x08, 1, 8) + bytes([0, 0, 1, 0, 0, 0, 0, 0])),
        ("server", frame_header(0x03, 1, 20) + bytes(13) + b"\1" + bytes(6)),
        ("server", frame_header(0x06, 1, 8) + bytes([1, 0, 0, 0, 1, 0, 1, 0])),
        ("server", frame_header(0x07, 1, 16) + bytes([1, 0, 0, 0, 3, 1, 0, 0]) + bytes(8)),
        ("server", frame_header(0x02, 1, 8) + bytes([1, 1, 0, 0, 1, 0, 0, 0])),
    ],
)
def test_malformed_bodies(role: str, raw: bytes) -> None:
    d = Decoder(role)
    d.feed(raw)
    with pytest.raises(ProtocolError) as e:
        d.next_frame()
    assert not e.value.fatal and e.value.request_id == 1


def test_small_helpers() -> None:
    from nanomq.protocol import PublishAck
    from nanomq.protocol.jsonform import from_dict

    assert PublishAck(1, 41, 2).last_id == 42
    d = Decoder("server")
    d.set_limits(max_frame=20)
    d.set_limits(limits=None)
    d.feed(encode(Metadata(1, "x" * 10)))
    with pytest.raises(ProtocolError):
        d.next_frame()
    assert from_dict({"type": "Ping", "request_id": 3}) == Ping(3, 0)


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=100), min_size=1, max_size=6), st.integers(0, 2000), st.integers(0, 255),
       st.integers(1, 8), st.integers(0, 200))
def test_c_and_python_record_scanners_agree(payloads, pos: int, value: int, count: int, max_payload: int) -> None:
    """Differential check of record.c against the independent pure-Python scanner."""
    from nanomq._c._core import ffi, lib
    from nanomq.protocol import _pyrecords

    raw = bytearray(RecordBatch.from_payloads(payloads).data)
    raw[pos % len(raw)] = value
    offsets = ffi.new("uint32_t[]", count)
    err = ffi.new("uint32_t *")
    rc = lib.nmq_records_scan(bytes(raw), len(raw), count, max_payload, 1, offsets, err)
    py_rc, py_index, py_offsets = _pyrecords.scan(bytes(raw), count, max_payload)
    assert (rc, err[0]) == (py_rc, py_index)
    if rc == 0:
        assert list(ffi.unpack(offsets, count)) == py_offsets


def test_scanners_agree_on_truncated_payload() -> None:
    from nanomq.protocol import _pyrecords

    data = RecordBatch.from_payloads([b"x" * 40]).data[:-8]
    assert _pyrecords.scan(data, 1, 65536)[:2] == (-1, 0)
    with pytest.raises(ProtocolError) as e:
        RecordBatch.parse(data, 1)
    assert e.value.code is ErrorCode.MALFORMED


def test_batch_summary() -> None:
    assert RecordBatch.from_payloads([b"a"]).summary() == (0, False)
    b = RecordBatch.from_payloads([b"a", b"b"], flags=[1, 0], raw_sizes=[3, 0], producer_id=5)
    assert b.summary() == (1, True)


def test_codec_from_many_threads_right_after_import() -> None:
    """cffi realizes C types lazily and two threads racing on it could abort the process
    (python-cffi/cffi#271); the codec realizes everything at import, so this must just work."""
    import subprocess
    import sys

    code = (
        "import threading\n"
        "from nanomq.protocol import RecordBatch\n"
        "def work():\n"
        "    for _ in range(200):\n"
        "        b = RecordBatch.from_payloads([b'x' * 10] * 5)\n"
        "        RecordBatch.parse(b.data, 5)\n"
        "ts = [threading.Thread(target=work) for _ in range(8)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print('ok')\n"
    )
    for _ in range(3):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_codec_errors_are_nanomq_errors() -> None:
    """One root for every NanoMQ exception: ``except nanomq.NanoMQError`` also catches the codec's."""
    import nanomq
    from nanomq.errors import NanoMQError

    assert issubclass(ProtocolError, NanoMQError) and nanomq.NanoMQError is NanoMQError
    assert issubclass(nanomq.ProtocolError, ProtocolError)


def test_pending_and_skip_let_a_fast_path_take_whole_frames() -> None:
    from nanomq.protocol import Ping, encode

    d = Decoder("server")
    d.feed(encode(Ping(1, 1)) + encode(Ping(2, 2))[:10])
    view = d.pending()
    assert bytes(view) == encode(Ping(1, 1)) + encode(Ping(2, 2))[:10]
    view.release()
    d.skip(24)  # a fast path handled the first PING
    assert d.buffered == 10 and d.next_frame() is None
    d.feed(encode(Ping(2, 2))[10:])
    assert d.next_frame() == Ping(2, 2)
    with pytest.raises(ValueError):
        d.skip(1)


def test_a_large_frame_taken_lets_its_buffer_go_at_once_not_at_the_next_feed() -> None:
    """[NMQ-6.2-6]: an idle connection never feeds again, so its decoder must not keep the frame."""
    import sys

    from nanomq.protocol import Ack, Ping, Publish, RecordBatch, encode

    big = encode(Publish(1, "t", Ack.WRITTEN, RecordBatch.from_payloads([bytes(60_000)] * 30)))
    tail = encode(Ping(2, 2))
    d = Decoder("server")
    d.feed(big + tail[:5])
    assert isinstance(d.next_frame(), Publish)
    assert d.buffered == 5 and sys.getsizeof(d.pending()) < 1 << 16  # only the rest is kept
    assert sys.getsizeof(d._buf) < 1 << 16
    d.feed(tail[5:])
    assert d.next_frame() == Ping(2, 2)
    d.feed(big)
    view = d.pending()  # a fast path still holding a view when it skips: the old buffer stays alive
    d.skip(len(big))
    assert d.buffered == 0 and sys.getsizeof(d._buf) < 1 << 16 and len(view) == len(big)
    view.release()
    small = Decoder("server")  # under the threshold nothing is copied: the next feed compacts
    small.feed(tail + tail)
    assert small.next_frame() == Ping(2, 2) and small.buffered == len(tail)


# -- the one-record PUBLISH encoder (a publisher's hot path) ---------------------------------

_TOPIC = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=255).filter(valid_topic)


@given(st.integers(0, (1 << 64) - 1), _TOPIC, st.sampled_from(list(Ack)), st.binary(max_size=3000))
@settings(max_examples=300, deadline=None)
def test_encode_publish_gives_the_bytes_of_the_general_encoder(rid: int, topic: str, ack: Ack, payload: bytes) -> None:
    want = encode(Publish(rid, topic, ack, RecordBatch.from_payloads([payload])))
    assert encode_publish(rid, topic, ack, payload) == want
    frame = _decode_one(want)
    assert isinstance(frame, Publish) and frame.records.count == 1 and frame.records[0].payload == payload


def _decode_one(data: bytes) -> object:
    d = Decoder()
    d.feed(data)
    frame = d.next_frame()
    assert frame is not None and d.next_frame() is None
    return frame


def test_encode_publish_refuses_what_the_general_encoder_refuses() -> None:
    with pytest.raises(ValueError, match="request_id"):
        encode_publish(1 << 64, "t", Ack.WRITTEN, b"x")
    with pytest.raises(ValueError, match="max_payload"):
        encode_publish(1, "t", Ack.WRITTEN, b"x" * 11, max_payload=10)
    with pytest.raises(ValueError, match="invalid topic"):
        encode_publish(1, "bad topic", Ack.WRITTEN, b"x")
    with pytest.raises(ValueError):
        encode_publish(1, "t", 7, b"x")  # type: ignore[arg-type]  # no such ack mode
    assert encode_publish(2, "t", Ack.NONE, b"", max_payload=0) == encode(
        Publish(2, "t", Ack.NONE, RecordBatch.from_payloads([b""], max_payload=0)))


def test_record_into_needs_room_for_the_whole_record() -> None:
    out = bytearray(record_span(5) + 3)
    record_into(out, 3, b"hello")
    assert bytes(out[3:]) == RecordBatch.from_payloads([b"hello"]).data
    for offset in (-1, 4):
        with pytest.raises(ValueError, match="no room"):
            record_into(out, offset, b"hello")
