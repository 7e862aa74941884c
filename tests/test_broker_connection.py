"""A broker Connection alone: driven with a fake transport and a context of its own, no broker, no
socket. What it writes is decoded with the client side of the codec."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nanomq.broker.config import BrokerConfig
from nanomq.broker.connection import Announcement, Connection, ConnectionContext
from nanomq.broker.state import ConnectionState, SubscriptionState
from nanomq.broker.topics import Topic, TopicRegistry
from nanomq.protocol import (
    Ack,
    Capability,
    Credit,
    Decoder,
    Deliver,
    Error,
    ErrorCode,
    Frame,
    Hello,
    HelloOk,
    Limits,
    Metadata,
    MetadataOk,
    Ping,
    Pong,
    Publish,
    PublishAck,
    RecordBatch,
    Seek,
    SeekOk,
    Start,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    encode,
)

ANNOUNCED = Announcement(Capability.SEEK_TIME, max_frame=1 << 20, max_payload=4096, max_batch=64, server_name="unit")


class FakeTransport(asyncio.Transport):
    """Collects what is written; records flow control and closing."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.reading = True
        self.high: int | None = None

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


class Peer:
    """One connection under test, its transport, and the frames it wrote so far."""

    def __init__(self, registry: TopicRegistry, *, admit: bool = True, max_subscriptions: int = 8) -> None:
        self.admitted: list[Connection] = []
        self.forgotten: list[Connection] = []

        def on_admit(c: Connection) -> bool:
            self.admitted.append(c)
            return admit

        self.conn = Connection(ConnectionContext(ANNOUNCED, registry, max_subscriptions, 1 << 16, on_admit,
                                                 self.forgotten.append))
        self.transport = FakeTransport()
        self._decoder = Decoder("client", limits=Limits(max_payload=4096, max_batch=64))
        self._seen = 0

    def made(self) -> Peer:
        self.conn.connection_made(self.transport)
        return self

    def send(self, *frames: Frame) -> None:
        self.conn.data_received(b"".join(encode(f) for f in frames))

    def frames(self) -> list[Frame]:
        """Frames written since the last call."""
        self._decoder.feed(bytes(self.transport.out[self._seen :]))
        self._seen = len(self.transport.out)
        out = []
        while (f := self._decoder.next_frame()) is not None:
            out.append(f)
        return out

    def hello(self) -> HelloOk:
        self.send(Hello(1))
        (ok,) = self.frames()
        assert isinstance(ok, HelloOk)
        return ok


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[TopicRegistry]:
    reg = TopicRegistry(BrokerConfig(data_dir=tmp_path, segment_bytes=1 << 20, fsync="never"))
    reg.open_all()
    yield reg
    reg.close_all()


def _in_loop(fn: Callable[[], None]) -> None:
    """Run ``fn`` on an event loop (the connection schedules its pump there), then the loop's
    pending callbacks."""

    async def main() -> None:
        fn()
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(main())


def _hold_durable_acks(topic: Topic) -> list[Callable[[BaseException | None], None]]:
    """Make ``topic``'s durable acks wait until the test calls them (in order of the publishes)."""
    pending: list[Callable[[BaseException | None], None]] = []
    topic.when_durable = lambda last_id, callback: pending.append(callback)  # type: ignore[method-assign,assignment]
    return pending


def _records(n: int, tag: bytes = b"r") -> RecordBatch:
    return RecordBatch.from_payloads([tag + bytes([i]) for i in range(n)])


def _delivered_ids(frames: list[Frame]) -> list[int]:
    return [r.id for f in frames if isinstance(f, Deliver) for r in f.records]


def test_hello_announces_exactly_the_context(registry: TopicRegistry) -> None:
    p = Peer(registry)
    assert p.conn.state is ConnectionState.NEW
    p.made()
    assert p.conn.state is ConnectionState.AWAITING_HELLO and p.conn.awaiting_hello
    assert p.admitted == [p.conn] and p.transport.high == 1 << 16
    ok = p.hello()
    assert (ok.capabilities, ok.max_frame, ok.max_payload, ok.max_batch, ok.server_name) == \
        (int(Capability.SEEK_TIME), 1 << 20, 4096, 64, "unit")
    assert p.conn.state is ConnectionState.ACTIVE and not p.conn.awaiting_hello
    p.send(Ping(2, 7))
    assert p.frames() == [Pong(2, 7)]


def test_a_refused_connection_is_told_why_and_closed(registry: TopicRegistry) -> None:
    p = Peer(registry, admit=False).made()
    (err,) = p.frames()
    assert isinstance(err, Error) and err.code == ErrorCode.TOO_MANY_CONNECTIONS and err.request_id == 0
    assert p.transport.closed and p.conn.state is ConnectionState.CLOSING
    p.send(Hello(1))  # nothing is read once closing
    assert p.frames() == []
    p.conn.connection_lost(None)
    assert p.conn.state is ConnectionState.CLOSED and p.forgotten == [p.conn]


def test_the_first_frame_must_be_hello_and_hello_comes_once(registry: TopicRegistry) -> None:
    p = Peer(registry).made()
    p.send(Ping(1, 0))
    (err,) = p.frames()
    assert isinstance(err, Error) and err.code == ErrorCode.BAD_STATE and err.rule == "NMQ-4.1-1"
    assert p.conn.state is ConnectionState.CLOSING
    q = Peer(registry).made()
    q.hello()
    q.send(Hello(2))
    (err,) = q.frames()
    assert isinstance(err, Error) and err.code == ErrorCode.BAD_STATE and q.transport.closed


def test_close_from_the_broker_is_idempotent(registry: TopicRegistry) -> None:
    p = Peer(registry).made()
    p.hello()
    p.conn.close()
    p.conn.close(ErrorCode.BAD_STATE, "again")  # already closing: nothing more is written
    (err,) = p.frames()
    assert isinstance(err, Error) and err.code == ErrorCode.SHUTTING_DOWN


def test_a_partial_frame_is_timed_from_its_first_byte(registry: TopicRegistry) -> None:
    p = Peer(registry).made()
    p.hello()
    assert p.conn.partial_since is None
    data = encode(Ping(2, 1))
    p.conn.data_received(data[:5])
    since = p.conn.partial_since
    assert since is not None
    p.conn.data_received(data[5:9])
    assert p.conn.partial_since == since  # still the same frame
    p.conn.data_received(data[9:])
    assert p.conn.partial_since is None and p.frames() == [Pong(2, 1)]


def test_responses_leave_in_request_order_behind_a_durable_ack(registry: TopicRegistry) -> None:
    pending = _hold_durable_acks(registry.get_or_create("t"))
    p = Peer(registry).made()
    p.hello()
    p.send(Publish(2, "t", Ack.DURABLE, _records(2)), Ping(3, 9))
    assert p.frames() == []  # the PING waits for the durable ack ahead of it
    pending.pop()(None)
    assert p.frames() == [PublishAck(2, 1, 2), Pong(3, 9)]


def test_a_failed_sync_answers_its_slot_with_an_error(registry: TopicRegistry) -> None:
    pending = _hold_durable_acks(registry.get_or_create("t"))
    p = Peer(registry).made()
    p.hello()
    p.send(Publish(2, "t", Ack.DURABLE, _records(1)))
    pending.pop()(OSError(5, "EIO"))
    (err,) = p.frames()
    assert isinstance(err, Error) and err.request_id == 2 and err.code == ErrorCode.STORAGE_ERROR


def test_no_deliver_before_subscribed_and_none_beyond_credit(registry: TopicRegistry) -> None:
    out: list[Frame] = []

    async def main() -> None:
        p = Peer(registry).made()
        p.hello()
        p.send(Publish(2, "t", Ack.WRITTEN, _records(5)), Subscribe(3, "t", Start.EARLIEST, 0, 3))
        await asyncio.sleep(0)
        out.extend(p.frames())
        p.send(Credit(0, 1, 10))
        await asyncio.sleep(0)
        out.extend(p.frames())

    asyncio.run(main())
    assert out[:2] == [PublishAck(2, 1, 5), Subscribed(3, 1, registry.get("t").topic_id, 1, 6)]  # type: ignore[union-attr]
    assert _delivered_ids(out[:3]) == [1, 2, 3]  # within the credit of 3, after SUBSCRIBED
    assert _delivered_ids(out) == [1, 2, 3, 4, 5]  # the rest once credit came


def test_no_deliver_overtakes_the_last_of_two_seek_oks_behind_durable_acks(registry: TopicRegistry) -> None:
    """Two SEEKs queued behind durable acks: the first SEEK_OK written must not let the pump deliver
    from the second SEEK's position before the second SEEK_OK ([NMQ-4.8-4]), or the client drops
    those records as belonging to the old position and never gets them again."""
    topic = registry.get_or_create("t")
    out: list[Frame] = []

    async def main() -> None:
        p = Peer(registry).made()
        p.hello()
        p.send(Publish(2, "t", Ack.WRITTEN, _records(10)), Subscribe(3, "t", Start.LATEST, 0, 0))
        out.extend(p.frames())
        pending = _hold_durable_acks(topic)
        p.send(Publish(4, "t", Ack.DURABLE, _records(1, b"a")), Seek(5, 1, Start.ID, 1),
               Publish(6, "t", Ack.DURABLE, _records(1, b"b")), Seek(7, 1, Start.ID, 5), Credit(0, 1, 100))
        first, second = pending
        first(None)  # writes PUBLISH_ACK 4 and SEEK_OK 1, then waits at the second durable ack
        for _ in range(3):
            await asyncio.sleep(0)
        out.extend(p.frames())
        assert not _delivered_ids(out), "a DELIVER went out before the last SEEK_OK"
        second(None)
        for _ in range(3):
            await asyncio.sleep(0)
        out.extend(p.frames())

    asyncio.run(main())
    kinds = [type(f).__name__ for f in out if not isinstance(f, Deliver)]
    assert kinds == ["PublishAck", "Subscribed", "PublishAck", "SeekOk", "PublishAck", "SeekOk"]
    assert [f.next_id for f in out if isinstance(f, SeekOk)] == [1, 5]
    assert _delivered_ids(out) == list(range(5, 13))  # from the second SEEK's position, nothing skipped


def test_after_seek_ok_deliveries_start_at_its_position(registry: TopicRegistry) -> None:
    out: list[Frame] = []

    async def main() -> None:
        p = Peer(registry).made()
        p.hello()
        p.send(Publish(2, "t", Ack.WRITTEN, _records(6)), Subscribe(3, "t", Start.EARLIEST, 0, 2))
        await asyncio.sleep(0)
        p.send(Seek(4, 1, Start.ID, 4), Credit(0, 1, 10))
        await asyncio.sleep(0)
        out.extend(p.frames())

    asyncio.run(main())
    assert [type(f).__name__ for f in out if not isinstance(f, Deliver)] == ["PublishAck", "Subscribed", "SeekOk"]
    assert _delivered_ids(out) == [1, 2, 4, 5, 6]
    seek_at = next(i for i, f in enumerate(out) if isinstance(f, SeekOk))
    assert _delivered_ids(out[seek_at:]) == [4, 5, 6]


def test_pause_writing_stops_delivery_and_reading_until_resumed(registry: TopicRegistry) -> None:
    seen: list[int] = []

    async def main() -> None:
        p = Peer(registry).made()
        p.hello()
        p.send(Subscribe(2, "t", Start.EARLIEST, 0, 100))
        await asyncio.sleep(0)
        p.frames()
        p.conn.pause_writing()
        assert not p.transport.reading
        p.send(Publish(3, "t", Ack.WRITTEN, _records(4)))
        assert _delivered_ids(p.frames()) == []  # acked, not delivered while paused
        p.conn.resume_writing()
        assert p.transport.reading
        await asyncio.sleep(0)
        seen.extend(_delivered_ids(p.frames()))

    asyncio.run(main())
    assert seen == [1, 2, 3, 4]


def test_unsubscribe_ends_the_subscription(registry: TopicRegistry) -> None:
    def run() -> None:
        p = Peer(registry).made()
        p.hello()
        p.send(Subscribe(2, "t", Start.EARLIEST, 0, 100))
        (sub,) = p.conn._subs.values()
        p.send(Unsubscribe(3, 1), Unsubscribe(4, 1))
        out = p.frames()
        assert Unsubscribed(3) in out and sub.state is SubscriptionState.ENDED
        err = out[-1]
        assert isinstance(err, Error) and err.code == ErrorCode.UNKNOWN_SUBSCRIPTION
        assert not registry.get("t").listeners  # type: ignore[union-attr]

    _in_loop(run)


def test_subscription_limit_and_metadata_come_from_the_context(registry: TopicRegistry) -> None:
    def run() -> None:
        p = Peer(registry, max_subscriptions=1).made()
        p.hello()
        p.send(Subscribe(2, "b", Start.LATEST, 0, 0), Publish(3, "a", Ack.WRITTEN, _records(1)),
               Subscribe(4, "a", Start.LATEST, 0, 0), Metadata(5, ""))
        out = p.frames()
        err = out[2]
        assert isinstance(err, Error) and err.code == ErrorCode.RESOURCE_LIMIT and err.request_id == 4
        meta = out[3]
        assert isinstance(meta, MetadataOk) and [t.name for t in meta.topics] == ["a", "b"]  # by name

    _in_loop(run)


def test_connection_lost_ends_everything_and_forgets(registry: TopicRegistry) -> None:
    def run() -> None:
        p = Peer(registry).made()
        p.hello()
        p.send(Subscribe(2, "t", Start.EARLIEST, 0, 100))
        (sub,) = p.conn._subs.values()
        p.conn.connection_lost(None)
        assert p.conn.state is ConnectionState.CLOSED and sub.state is SubscriptionState.ENDED
        assert p.forgotten == [p.conn] and not registry.get("t").listeners  # type: ignore[union-attr]

    _in_loop(run)
