"""The reference broker against hostile and careless clients on raw sockets."""

from __future__ import annotations

import time

import pytest

import nanomq
from conformance.wire import Closed, WireClient
from nanomq.protocol import (
    Ack,
    Credit,
    Error,
    ErrorCode,
    Hello,
    Ping,
    Pong,
    Publish,
    PublishAck,
    RecordBatch,
    Start,
    Subscribe,
    encode,
    frame_header,
)
from nanomq.testing import BrokerProcess


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = BrokerProcess(tmp_path_factory.mktemp("wire") / "data",
                      ["--handshake-timeout", "1", "--frame-timeout", "1", "--max-connections", "50"])
    b.start()
    yield b
    b.stop()


def _wire(b: BrokerProcess) -> WireClient:
    return WireClient("127.0.0.1", b.port, timeout=5)


def _healthy(b: BrokerProcess) -> None:
    """Another client is served normally."""
    with nanomq.Publisher(b.address) as pub:
        i = pub.publish("health", b"ok")
        assert i >= 1
        assert pub.ping() < 1.0


def test_garbage_gets_error_and_close(broker) -> None:
    with _wire(broker) as w:
        w.send_raw(b"\xff" * 64)
        frames = w.expect_closed()
        assert any(isinstance(f, Error) and f.code in (ErrorCode.FRAME_TOO_LARGE, ErrorCode.BAD_STATE,
                                                        ErrorCode.RESERVED_NONZERO) for f in frames)
    _healthy(broker)


def test_first_frame_must_be_hello(broker) -> None:
    with _wire(broker) as w:
        w.send(Ping(1, 0))
        frames = w.expect_closed()
        assert [f.code for f in frames if isinstance(f, Error)] == [ErrorCode.BAD_STATE]


def test_second_hello_is_fatal(broker) -> None:
    with _wire(broker) as w:
        w.hello()
        w.send(Hello(5, 1, "again", b""))
        assert [f.code for f in w.expect_closed() if isinstance(f, Error)] == [ErrorCode.BAD_STATE]


def test_truncated_frame_then_close_does_no_harm(broker) -> None:
    with _wire(broker) as w:
        w.hello()
        raw = encode(Publish(2, "t", Ack.DURABLE, RecordBatch.from_payloads([b"x" * 1000])))
        w.send_raw(raw[: len(raw) // 2])
    _healthy(broker)


def test_slowloris_is_cut_off(broker) -> None:
    with _wire(broker) as w:
        w.hello()
        raw = encode(Ping(2, 0))
        t = time.monotonic()
        with pytest.raises((Closed, BrokenPipeError, ConnectionResetError)):
            for byte in raw:  # one byte every 0.4 s: the frame would take 6 s
                w.send_raw(bytes([byte]))
                _healthy(broker)
                time.sleep(0.4)
            w.recv(5)
        assert time.monotonic() - t < 6


def test_silent_connection_is_closed_after_handshake_timeout(broker) -> None:
    with _wire(broker) as w:
        frames = w.expect_closed(timeout=5)
        assert [f.code for f in frames if isinstance(f, Error)] == [ErrorCode.BAD_STATE]


def test_bad_crc_is_rejected_and_connection_goes_on(broker) -> None:
    with _wire(broker) as w:
        w.hello()
        raw = bytearray(encode(Publish(7, "crc", Ack.DURABLE, RecordBatch.from_payloads([b"payload"]))))
        raw[-8] ^= 0xFF  # flip a payload byte
        w.send_raw(bytes(raw))
        err = w.recv()
        assert isinstance(err, Error) and err.code == ErrorCode.BAD_CRC and err.request_id == 7
        ok = w.publish("crc", [b"fine"])
        assert isinstance(ok, PublishAck) and ok.first_id == 1  # the bad batch took no id


def test_batch_over_limit_and_unknown_opcode_are_nonfatal(broker) -> None:
    with _wire(broker) as w:
        w.hello()
        body = bytes([2, 0, 1, 0]) + (257).to_bytes(2, "little") + bytes(2) + b"t"
        w.send_raw(frame_header(0x02, 9, len(body)) + body)
        e = w.recv()
        assert isinstance(e, Error) and e.code == ErrorCode.BATCH_TOO_LARGE and e.request_id == 9
        w.send_raw(frame_header(0x3E, 10, 0))
        e = w.recv()
        assert isinstance(e, Error) and e.code == ErrorCode.UNKNOWN_OPCODE and e.request_id == 10
        w.send(Ping(11, 5))
        assert w.recv() == Pong(11, 5)


def test_responses_keep_request_order_across_group_commit(broker) -> None:
    with _wire(broker) as w:
        w.hello()
        batch = RecordBatch.from_payloads([b"a"])
        w.send(Ping(1, 1), Publish(2, "order", Ack.DURABLE, batch), Ping(3, 3),
               Publish(4, "order", Ack.WRITTEN, batch), Ping(5, 5))
        got = [w.recv() for _ in range(5)]
        assert [f.request_id for f in got] == [1, 2, 3, 4, 5]
        assert isinstance(got[1], PublishAck) and isinstance(got[3], PublishAck)


def test_credit_bounds_delivery(broker) -> None:
    with _wire(broker) as w:
        w.hello()
        w.publish("credit", [str(i).encode() for i in range(20)])
        sub = w.subscribe("credit", Start.EARLIEST, credit=5)
        assert len(w.collect(sub.sub_id, 5)) == 5
        with pytest.raises(TimeoutError):
            w.recv(0.3)  # no credit, nothing more
        w.send(Credit(0, sub.sub_id, 3))
        assert [r.id for r in w.collect(sub.sub_id, 3)] == [6, 7, 8]
        with pytest.raises(TimeoutError):
            w.recv(0.3)


def test_connection_limit(tmp_path) -> None:
    with BrokerProcess(tmp_path / "lim", ["--max-connections", "2"]) as b:
        a, c = _wire(b), _wire(b)
        a.hello()
        c.hello()
        with _wire(b) as third:
            frames = third.expect_closed()
            assert [f.code for f in frames if isinstance(f, Error)] == [ErrorCode.TOO_MANY_CONNECTIONS]
        a.close()
        time.sleep(0.2)
        with _wire(b) as again:
            again.hello()
        c.close()


def _rss_anon_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def test_slow_subscriber_does_not_make_broker_buffer(broker) -> None:
    """A subscriber with unlimited credit that never reads: the broker's memory stays bounded
    and other clients are served."""
    with nanomq.Publisher(broker.address, ack="written") as pub:
        chunk = [b"z" * 60_000] * 64
        for _ in range(10):  # ~38 MB in the log
            pub.publish_batch("flood", chunk)
    before = _rss_anon_kb(broker.pid)
    w = WireClient("127.0.0.1", broker.port, rcvbuf=4096)
    w.hello()
    w.send(Subscribe(w.next_id(), "flood", Start.EARLIEST, 0, 1 << 30, ""))
    time.sleep(1.0)  # the broker pushes until the socket and its bounded buffer are full
    _healthy(broker)
    grown_mb = (_rss_anon_kb(broker.pid) - before) / 1024
    assert grown_mb < 20, f"broker grew {grown_mb:.1f} MB for a subscriber that does not read"
    w.close()
