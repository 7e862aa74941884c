"""Client D10 (issue 10, item 12): responses decoded in the same read as a closing ERROR are
delivered, not dropped.

A broker that acks a publish and then closes the connection (SHUTTING_DOWN, say) sends both in one
segment; the client reads them with one recv. The ack must reach the caller — the record is
stored, reporting its outcome as unknown invites a duplicate — and only what really got no answer
counts as unacked.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

import nanomq
from nanomq.aio import AsyncPublisher
from nanomq.client import ConnectionLostError
from nanomq.client.core import ClientCore
from nanomq.protocol import Decoder, Error, ErrorCode, Frame, Hello, HelloOk, Publish, PublishAck, encode

BYE = Error(0, int(ErrorCode.SHUTTING_DOWN), "broker is shutting down")

# A script answers the frames of one connection: it gets each decoded request and returns the bytes
# to send (all in one sendall) and whether to close afterwards.
Script = Callable[[Frame], tuple[bytes, bool]]


class FakeBroker:
    """A one-thread TCP server on 127.0.0.1 that answers each connection with a script."""

    def __init__(self, script: Callable[[], Script]) -> None:
        self.script = script
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                self._one(conn, self.script())

    def _one(self, conn: socket.socket, script: Script) -> None:
        conn.settimeout(5)
        dec = Decoder("server")
        while True:
            try:
                data = conn.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            dec.feed(data)
            while (frame := dec.next_frame()) is not None:
                out, close = script(frame)
                if out:
                    conn.sendall(out)
                if close:
                    conn.shutdown(socket.SHUT_WR)
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _hello_ok(f: Frame) -> bytes:
    return encode(HelloOk(f.request_id, 1, 0, 1 << 24, 65536, 256, "fake"))


def ack_then_bye(acked_batches: int) -> Callable[[], Script]:
    """Acks the first ``acked_batches`` PUBLISHes of a connection; with the last of them it sends
    SHUTTING_DOWN in the same write and closes (later PUBLISHes get no answer)."""

    def make() -> Script:
        state = {"publishes": 0, "next_id": 1, "pending": b""}

        def script(f: Frame) -> tuple[bytes, bool]:
            if isinstance(f, Hello):
                return _hello_ok(f), False
            assert isinstance(f, Publish)
            state["publishes"] += 1
            ack = encode(PublishAck(f.request_id, state["next_id"], f.records.count))
            state["next_id"] += f.records.count
            state["pending"] += ack
            if state["publishes"] < acked_batches:
                return b"", False  # hold the acks: all of them go out with the ERROR
            out, state["pending"] = state["pending"] + encode(BYE), b""
            return out, True

        return script  # type: ignore[return-value]

    return make


@pytest.fixture
def fake() -> Iterator[Callable[[Callable[[], Script]], FakeBroker]]:
    made: list[FakeBroker] = []

    def start(script: Callable[[], Script]) -> FakeBroker:
        b = FakeBroker(script)
        made.append(b)
        return b

    yield start
    for b in made:
        b.close()


# ---- the sans-IO core -----------------------------------------------------------------------


def test_core_returns_responses_decoded_before_a_closing_error() -> None:
    core = ClientCore()
    rid, _ = core.hello()
    core.feed(encode(HelloOk(rid, 1, 0, 1 << 24, 65536, 256, "x")))
    p1, _ = core.publish("t", core.encode_payloads([b"a"], None), 2)
    p2, _ = core.publish("t", core.encode_payloads([b"b"], None), 2)
    data = encode(PublishAck(p1, 1, 1)) + encode(PublishAck(p2, 2, 1)) + encode(BYE) + b"\x00" * 7
    done = core.feed(data)
    assert [(r, f.first_id) for r, f in done] == [(p1, 1), (p2, 2)]  # type: ignore[attr-defined]
    assert isinstance(core.lost, ConnectionLostError) and "SHUTTING_DOWN" in str(core.lost)
    assert core.closed_by_server is not None and core.closed_by_server.code == ErrorCode.SHUTTING_DOWN
    assert core.feed(encode(PublishAck(99, 3, 1))) == []  # nothing after the end of the stream
    core.reset_connection()
    assert core.lost is None


def test_core_returns_responses_decoded_before_garbage() -> None:
    core = ClientCore()
    rid, _ = core.hello()
    done = core.feed(encode(HelloOk(rid, 1, 0, 1 << 24, 65536, 256, "x")) + b"\xff" * 16)
    assert [r for r, _ in done] == [rid]
    assert core.lost is not None and "invalid data" in str(core.lost)


# ---- the blocking client --------------------------------------------------------------------


def test_sync_publish_acked_with_the_closing_error_returns_its_id(fake) -> None:
    b = fake(ack_then_bye(1))
    with nanomq.Publisher(b.address, connect_timeout=2, timeout=5) as pub:
        assert pub.publish("t", b"x") == 1
        # the connection is gone: the next call reconnects (a new fake connection) and goes on
        assert pub.publish("t", b"y") == 1
    assert b.connections == 2


def test_sync_batches_all_acked_with_the_closing_error(fake) -> None:
    b = fake(ack_then_bye(2))
    with nanomq.Publisher(b.address, connect_timeout=2, timeout=5) as pub:
        assert pub.publish_batch("t", [b"r"] * 300) == 300  # 256 + 44, both acked, then ERROR


def first_acked_then_bye() -> Script:
    """Holds the first PUBLISH's ack; when the second PUBLISH arrives, sends that ack and
    SHUTTING_DOWN in one write and closes: the second batch never gets an answer."""
    state: dict[str, object] = {"n": 0, "first": b""}

    def script(f: Frame) -> tuple[bytes, bool]:
        if isinstance(f, Hello):
            return _hello_ok(f), False
        assert isinstance(f, Publish)
        state["n"] = int(state["n"]) + 1  # type: ignore[call-overload]
        if state["n"] == 1:
            state["first"] = encode(PublishAck(f.request_id, 1, f.records.count))
            return b"", False
        return bytes(state["first"]) + encode(BYE), True  # type: ignore[call-overload]

    return script


def test_sync_only_unanswered_records_count_as_unacked(fake) -> None:
    b = fake(first_acked_then_bye)
    with nanomq.Publisher(b.address, connect_timeout=2, timeout=5) as pub, \
            pytest.raises(ConnectionLostError) as e:
        pub.publish_batch("t", [b"r"] * 300)
    assert e.value.unacked == 44, str(e.value)  # the 256 of the first batch were acked
    assert str(e.value).count("SHUTTING_DOWN") == 1, str(e.value)


# ---- the asyncio client ---------------------------------------------------------------------


def test_async_publish_acked_with_the_closing_error_returns_its_id(fake) -> None:
    b = fake(ack_then_bye(1))

    async def main() -> tuple[int, int]:
        async with await AsyncPublisher.connect(b.address, connect_timeout=2, timeout=5) as pub:
            first = await pub.publish("t", b"x")
            for _ in range(100):  # let the reader notice the close
                if pub._writer is None:
                    break
                await asyncio.sleep(0.01)
            return first, await pub.publish("t", b"y")

    assert asyncio.run(main()) == (1, 1)


def test_async_batches_all_acked_with_the_closing_error(fake) -> None:
    b = fake(ack_then_bye(2))

    async def main() -> int:
        async with await AsyncPublisher.connect(b.address, connect_timeout=2, timeout=5) as pub:
            return await pub.publish_batch("t", [b"r"] * 300)

    assert asyncio.run(main()) == 300


def test_async_only_unanswered_records_count_as_unacked(fake) -> None:
    b = fake(first_acked_then_bye)

    async def main() -> ConnectionLostError:
        async with await AsyncPublisher.connect(b.address, connect_timeout=2, timeout=5) as pub:
            with pytest.raises(ConnectionLostError) as e:
                await pub.publish_batch("t", [b"r"] * 300)
            return e.value

    err = asyncio.run(main())
    assert err.unacked == 44, str(err)
    assert str(err).count("SHUTTING_DOWN") == 1, str(err)
