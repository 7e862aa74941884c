"""The client suite, run against both clients: every test gets the blocking client or the asyncio
one (behind a small blocking adapter) through the ``clients`` fixture, so the two behave the same.

Against the reference broker (a real process) for what it does, and against a scripted fake
broker (tests/fake_broker.py) for what a real broker does not do on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nanomq
from nanomq.client import (
    ArgumentTypeError,
    ConnectionLostError,
    InvalidArgumentError,
    NanoMQError,
    NotSupportedError,
    ProtocolError,
    RequestTimeoutError,
    ServerError,
)
from nanomq.client.aio import AsyncPublisher, AsyncSubscriber
from nanomq.protocol import (
    Capability,
    Deliver,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Ping,
    Pong,
    Publish,
    PublishAck,
    RecordBatch,
    Subscribe,
    Subscribed,
    encode,
)
from nanomq.testing import BrokerProcess
from tests.fake_broker import FakeBroker, Script, hello_ok
from tests.tls_cert import HAVE_OPENSSL, make_cert

# ---------------------------------------------------------------------------- the adapter


class _Loop:
    """An asyncio event loop running in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Blocking:
    """An AsyncPublisher or AsyncSubscriber with blocking methods: each coroutine method runs on
    the loop thread and returns its result (or raises its exception) here."""

    def __init__(self, loop: _Loop, client: Any) -> None:
        self._loop = loop
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **kw: self._loop.run(attr(*a, **kw))
        return attr

    def __iter__(self) -> Iterator[Any]:
        it = self._client.__aiter__()
        try:
            while True:
                try:
                    yield self._loop.run(it.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run(it.aclose())

    def __enter__(self) -> Blocking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Clients:
    """Makes publishers and subscribers of one kind: ``"sync"`` or ``"asyncio"``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._loop = _Loop() if kind == "asyncio" else None
        self._made: list[Any] = []

    def _make(self, sync_cls: type, async_cls: type, address: str, **kw: Any) -> Any:
        if self._loop is None:
            client = sync_cls(address, **kw)
        else:
            async def connect() -> Any:
                return await async_cls.connect(address, **kw)
            client = Blocking(self._loop, self._loop.run(connect()))
        self._made.append(client)
        return client

    def publisher(self, address: str, **kw: Any) -> Any:
        return self._make(nanomq.Publisher, AsyncPublisher, address, **kw)

    def subscriber(self, address: str, *args: Any, **kw: Any) -> Any:
        if args:
            kw["consumer_group"] = args[0]
        return self._make(nanomq.Subscriber, AsyncSubscriber, address, **kw)

    def close(self) -> None:
        for c in self._made:
            with contextlib.suppress(NanoMQError):
                c.close()
        if self._loop is not None:
            self._loop.close()


@pytest.fixture(params=["sync", "asyncio"])
def clients(request: pytest.FixtureRequest) -> Iterator[Clients]:
    kit = Clients(request.param)
    yield kit
    kit.close()


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeBroker]]:
    made: list[FakeBroker] = []

    def start(script: Callable[[], Script], **kw: Any) -> FakeBroker:
        b = FakeBroker(script, **kw)
        made.append(b)
        return b

    yield start
    for b in made:
        b.close()


def _drain(sub: Any, n: int, timeout: float = 10.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += sub.poll_batch(256, 500_000)
    return got


# ---------------------------------------------------------------------------- against the broker


def test_seed_usage_example_as_written(nanomq_broker, clients) -> None:
    # The seed README's example, in Python: publish, then subscribe, then poll, then commit.
    pub = clients.publisher(nanomq_broker.address)
    message = b"Hello, NanoMQ!"
    msg_id = pub.publish("my-topic", message)
    assert msg_id == 1

    sub = clients.subscriber(nanomq_broker.address)
    assert sub.subscribe("my-topic") is True
    msg = sub.poll(1_000_000)
    assert msg is not None and msg.id > 0
    assert msg.data == message and msg.topic == "my-topic"
    assert msg.header.id == msg.id and msg.header.size == len(message)
    assert sub.commit(msg.id) == msg.id + 1
    pub.close()
    sub.close()


def test_ids_batches_and_order(nanomq_broker, clients) -> None:
    pub, sub = clients.publisher(nanomq_broker.address), clients.subscriber(nanomq_broker.address)
    payloads = [f"r{i}".encode() for i in range(700)]
    assert pub.publish_batch("t", payloads) == 700  # three pipelined batches
    assert pub.publish("t", b"last") == 701
    assert sub.subscribe("t") is True and sub.subscribe("t") is False
    assert sub.subscriptions == ["t"]
    got = _drain(sub, 701)
    assert [m.id for m in got] == list(range(1, 702))
    assert [m.data for m in got] == payloads + [b"last"]
    ts = [m.timestamp for m in got]
    assert ts == sorted(ts)
    assert sub.poll(50_000) is None


def test_publish_batch_returns_the_ids_on_request(nanomq_broker, clients) -> None:
    pub = clients.publisher(nanomq_broker.address, ack="written")
    assert pub.publish("ids", b"first") == 1
    assert pub.publish_batch("ids", [b"x"] * 300, ids=True) == list(range(2, 302))  # two wire batches
    assert pub.publish_batch("ids", [b"y"] * 3) == 3  # the count, as in the seed
    assert pub.publish_batch("ids", [], ids=True) == []
    none = clients.publisher(nanomq_broker.address, ack="none")
    assert none.publish_batch("ids", [b"z"] * 2, ids=True) == [0, 0]  # ack none: no ids known


def test_seek_by_id_and_time_unsubscribe_and_topics(nanomq_broker, clients) -> None:
    pub = clients.publisher(nanomq_broker.address, ack="written")
    sub = clients.subscriber(nanomq_broker.address)
    for i in range(10):
        pub.publish("s", str(i).encode())
    sub.subscribe("s", start="latest")
    assert sub.poll(100_000) is None
    assert sub.seek(4) is True
    assert sub.poll().id == 4
    ts = sub.poll().timestamp  # id 5
    assert sub.seek_to_timestamp(ts) is True
    assert sub.poll().id <= 5
    assert sub.seek(1000) is False  # beyond the end: OUT_OF_RANGE
    assert sub.unsubscribe("s") is True and sub.unsubscribe("s") is False
    assert sub.subscriptions == []
    assert sub.subscribe("s", start="id", value=9) is True
    assert [m.id for m in sub.poll_batch(10, 1_000_000)] == [9, 10]
    info = {t.name: t for t in pub.topics()}
    assert info["s"].first_id == 1 and info["s"].next_id == 11
    assert [t.name for t in sub.topics("s")] == ["s"]
    assert pub.ping() > 0
    with pytest.raises(ServerError):
        pub.topics("nope")


def test_commit_rules(nanomq_broker, clients) -> None:
    pub, sub = clients.publisher(nanomq_broker.address), clients.subscriber(nanomq_broker.address)
    pub.publish_batch("c", [b"a", b"b", b"c"])
    sub.subscribe("c")
    msgs = sub.poll_batch(3, 1_000_000)
    assert sub.commit(msgs[1]) == 1  # id 2 committed, 1 still open
    assert sub.commit_batch([1, 3]) == 4
    with pytest.raises(ServerError) as e:
        sub.commit(99)
    assert e.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(InvalidArgumentError):
        sub.commit_batch([])
    with pytest.raises(InvalidArgumentError):
        sub.commit(1, topic="not-subscribed")


def test_compression_is_transparent(nanomq_broker, clients) -> None:
    pub, sub = clients.publisher(nanomq_broker.address), clients.subscriber(nanomq_broker.address)
    pub.set_compression_threshold(100)
    big = b"abc" * 5000
    pub.publish("z", big)
    pub.publish("z", os.urandom(500))  # incompressible: sent as is
    pub.publish("z", b"small")
    sub.subscribe("z")
    got = sub.poll_batch(3, 1_000_000)
    assert got[0].data == big and got[0].header.flags == 1 and got[0].header.size < len(big)
    assert got[0].header.raw_size == len(big)
    assert got[1].header.flags == 0 and got[2].data == b"small"
    with pytest.raises(InvalidArgumentError):
        pub.set_compression_threshold(-1)


def test_compression_refused_when_disabled(tmp_path, clients) -> None:
    with BrokerProcess(tmp_path / "d", ["--compression", "none"]) as b:
        pub = clients.publisher(b.address)
        with pytest.raises(NotSupportedError):
            pub.set_compression_threshold(10)


def test_batching_mode(nanomq_broker, clients) -> None:
    pub, sub = clients.publisher(nanomq_broker.address), clients.subscriber(nanomq_broker.address)
    pub.set_batching_enabled(True)
    assert pub.publish("b", b"x") == 0
    time.sleep(0.1)  # the 10 ms flusher sends it without flush()
    sub.subscribe("b")
    assert sub.poll(2_000_000).data == b"x"
    for _ in range(100):
        pub.publish("b", b"y" * 50)  # 1 KiB thresholds trigger sends
    pub.flush()
    pub.set_batching_enabled(False)
    assert pub.publish("b", b"z") == 102


def test_publish_batch_goes_after_what_batching_holds(nanomq_broker, clients) -> None:
    pub, sub = clients.publisher(nanomq_broker.address), clients.subscriber(nanomq_broker.address)
    pub.set_batching_enabled(True)
    pub.publish("order", b"held")  # held back (well under 1 KiB, and the flusher waits 10 ms)
    assert pub.publish_batch("order", [b"batch"], ids=True) == [2]
    sub.subscribe("order")
    assert [m.data for m in sub.poll_batch(2, 1_000_000)] == [b"held", b"batch"]


def test_close_flushes_what_batching_holds(nanomq_broker, clients) -> None:
    pub = clients.publisher(nanomq_broker.address)
    pub.set_batching_enabled(True)
    pub.publish("closing", b"kept")
    pub.close()
    assert pub.closed
    sub = clients.subscriber(nanomq_broker.address)
    sub.subscribe("closing")
    assert sub.poll(2_000_000).data == b"kept"


def test_consumer_group_is_refused_clearly(nanomq_broker, clients) -> None:
    with pytest.raises(NotSupportedError) as e:
        clients.subscriber(nanomq_broker.address, "billing")
    assert "consumer group" in str(e.value)


def test_ack_none_and_written(nanomq_broker, clients) -> None:
    pub = clients.publisher(nanomq_broker.address, ack="none")
    assert pub.publish("n", b"1") == 0
    assert pub.publish_batch("n", [b"2", b"3"]) == 2
    pub.close()
    sub = clients.subscriber(nanomq_broker.address)
    sub.subscribe("n")
    assert [m.data for m in sub.poll_batch(3, 2_000_000)] == [b"1", b"2", b"3"]
    with pytest.raises(ValueError):
        clients.publisher(nanomq_broker.address, ack="maybe")


def test_invalid_arguments_are_nanomq_errors_and_builtin_ones(nanomq_broker, clients) -> None:
    pub, sub = clients.publisher(nanomq_broker.address), clients.subscriber(nanomq_broker.address)
    cases: list[tuple[Callable[[], object], type[Exception]]] = [
        (lambda: pub.publish("bad topic", b"x"), ValueError),
        (lambda: pub.publish("t", b"x" * 70_000), ValueError),  # over max_payload
        (lambda: pub.publish("t", "text"), TypeError),
        (lambda: pub.publish_batch("t", [b"ok", 5]), TypeError),  # bytes(5) would be 5 zero bytes
        (lambda: pub.publish_batch("t", b"not a list"), TypeError),
        (lambda: sub.subscribe("t", start="yesterday"), ValueError),
        (lambda: sub.subscribe("t", start="id", value=-1), ValueError),
        (lambda: sub.poll_batch(0), ValueError),
        (lambda: sub.seek(-1), ValueError),
        (lambda: clients.publisher("not an address:xx"), ValueError),
        (lambda: clients.publisher(nanomq_broker.address, timeout=0), ValueError),
        (lambda: clients.publisher(nanomq_broker.address, connect_timeout=math.nan), ValueError),
        (lambda: clients.subscriber(nanomq_broker.address, window=0), ValueError),
        (lambda: clients.subscriber(nanomq_broker.address, spin_us=-1), ValueError),
        (lambda: clients.subscriber(nanomq_broker.address, client_name="x" * 256), ValueError),
    ]
    for call, builtin in cases:
        with pytest.raises(builtin) as e:
            call()
        assert isinstance(e.value, NanoMQError), e.value
        assert isinstance(e.value, InvalidArgumentError if builtin is ValueError else ArgumentTypeError)
    assert pub.publish("t", b"still connected") == 1  # a refused argument sends nothing


def test_poll_timeout_in_microseconds_or_seconds(nanomq_broker, clients) -> None:
    sub = clients.subscriber(nanomq_broker.address)
    sub.subscribe("p")
    t = time.monotonic()
    assert sub.poll(timeout=0.2) is None
    assert 0.15 < time.monotonic() - t < 2
    assert sub.poll_batch(10, timeout=0.0) == []
    with pytest.raises(TypeError) as e:
        sub.poll(1.0)  # a float is not microseconds: once silently 1 µs
    assert isinstance(e.value, NanoMQError) and "timeout=" in str(e.value)
    with pytest.raises(TypeError):
        sub.poll_batch(10, 1.5)
    with pytest.raises(TypeError):
        sub.poll(1000, timeout=1.0)  # both
    with pytest.raises(ValueError):
        sub.poll(-1)
    with pytest.raises(ValueError):
        sub.poll(timeout=-0.5)
    pub = clients.publisher(nanomq_broker.address)
    pub.publish("p", b"now")
    assert sub.poll(timeout=2).data == b"now"


def test_iteration_yields_messages_until_closed(nanomq_broker, clients) -> None:
    pub, sub = clients.publisher(nanomq_broker.address), clients.subscriber(nanomq_broker.address)
    pub.publish_batch("it", [b"1", b"2", b"3"])
    sub.subscribe("it")
    got = []
    for msg in sub:
        got.append(msg.data)
        if len(got) == 2:
            break
    assert got == [b"1", b"2"]
    assert sub.poll(1_000_000).data == b"3"  # breaking out lost nothing
    threading.Timer(0.3, sub.close).start()
    t = time.monotonic()
    assert list(sub) == []  # waits for records, ends when the subscriber is closed
    assert time.monotonic() - t < 5


def test_many_publishers_and_subscribers_at_once(nanomq_broker, clients) -> None:
    n_pub, per_pub, topics = 4, 1500, ["m0", "m1"]
    errors: list[BaseException] = []

    def produce(k: int) -> None:
        try:
            pub = clients.publisher(nanomq_broker.address, ack="written")
            for i in range(0, per_pub, 50):
                pub.publish_batch(topics[k % 2], [f"{k}:{j}".encode() for j in range(i, i + 50)])
        except BaseException as e:
            errors.append(e)

    results: dict[int, list] = {}

    def consume(k: int) -> None:
        try:
            sub = clients.subscriber(nanomq_broker.address, window=128)
            sub.subscribe(topics[k % 2])
            results[k] = _drain(sub, per_pub * n_pub // 2, timeout=60)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=consume, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=produce, args=(k,)) for k in range(n_pub)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for k, got in results.items():
        ids = [m.id for m in got]
        assert ids == list(range(1, per_pub * n_pub // 2 + 1)), f"subscriber {k}: lost/duplicated/reordered"
        seqs: dict[str, list[int]] = {}
        for m in got:  # per producer, records arrive in the order they were published
            p, j = m.data.decode().split(":")
            seqs.setdefault(p, []).append(int(j))
        assert all(v == list(range(per_pub)) for v in seqs.values())


def test_sigkill_loses_no_durable_acked_record(nanomq_broker, clients) -> None:
    pub = clients.publisher(nanomq_broker.address)
    acked = [pub.publish("d", f"rec-{i}".encode()) for i in range(200)]
    nanomq_broker.kill()
    with pytest.raises(ConnectionLostError) as e:
        pub.publish("d", b"after the crash")
    assert isinstance(e.value, ConnectionError)
    nanomq_broker.start()
    sub = clients.subscriber(nanomq_broker.address)
    sub.subscribe("d")
    got = _drain(sub, 200)
    assert [m.id for m in got[:200]] == acked
    assert [m.data for m in got[:200]] == [f"rec-{i}".encode() for i in range(200)]


def test_subscriber_reconnects_resumes_without_gap_and_logs(nanomq_broker, clients, caplog) -> None:
    pub = clients.publisher(nanomq_broker.address, ack="written", connect_timeout=20)
    pub.publish_batch("r", [str(i).encode() for i in range(1, 101)])
    sub = clients.subscriber(nanomq_broker.address, window=16, connect_timeout=20)
    sub.subscribe("r")
    first = sub.poll_batch(30, 1_000_000)
    assert [m.id for m in first] == list(range(1, len(first) + 1))
    with caplog.at_level(logging.INFO, logger="nanomq.client"):
        nanomq_broker.restart()
        rest = _drain(sub, 100 - len(first), timeout=30)
    assert [m.id for m in first + rest] == list(range(1, 101))
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "nanomq.client"]
    assert any(lv == logging.WARNING and "lost" in m for lv, m in said), said
    assert any(lv == logging.INFO and "reconnected" in m and "1 subscription" in m for lv, m in said), said


def test_unreachable_broker_is_a_clear_error(clients, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="nanomq.client"), pytest.raises(ConnectionLostError) as e:
        clients.publisher("127.0.0.1:1", connect_timeout=0.3)
    assert "cannot connect" in str(e.value) and isinstance(e.value, ConnectionError)
    said = [r.getMessage() for r in caplog.records if r.name == "nanomq.client"]
    assert any("retrying in" in m for m in said) and any("giving up" in m for m in said), said


def test_spin_then_block_subscriber(nanomq_broker, clients) -> None:
    pub = clients.publisher(nanomq_broker.address, ack="written")
    sub = clients.subscriber(nanomq_broker.address, spin_us=500)
    sub.subscribe("spin")
    assert sub.poll(10_000) is None  # spins 0.5 ms, then blocks for the rest of the timeout
    pub.publish("spin", b"s")
    assert sub.poll(1_000_000).data == b"s"


# ---------------------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Iterator[tuple[BrokerProcess, Path]]:
    if not HAVE_OPENSSL:
        pytest.skip("needs the openssl command")
    cert = make_cert(tmp_path_factory.mktemp("tls"))
    b = BrokerProcess(tmp_path_factory.mktemp("tlsb") / "data", ["--tls-cert", str(cert)])
    b.start()
    yield b, cert
    b.stop()


def test_publish_subscribe_over_tls(tls, clients) -> None:
    broker, cert = tls
    ctx = ssl.create_default_context(cafile=str(cert))
    pub = clients.publisher(broker.address, ssl_context=ctx)
    sub = clients.subscriber(broker.address, ssl_context=ctx)
    assert pub.server_info.capabilities & Capability.TLS
    topic = f"secure-{clients.kind}"
    ids = [pub.publish(topic, f"m{i}".encode()) for i in range(3)]
    pub.publish_batch(topic, [b"x" * 1000] * 300)
    sub.subscribe(topic)
    got = _drain(sub, 303)
    assert [m.id for m in got[:3]] == ids and got[0].data == b"m0" and len(got) == 303


def test_plain_client_or_untrusted_certificate_is_refused(tls, clients) -> None:
    broker, _ = tls
    with pytest.raises(ConnectionLostError):
        clients.publisher(broker.address, connect_timeout=1, timeout=2)
    t = time.monotonic()
    with pytest.raises(ConnectionLostError) as e:
        clients.publisher(f"tls://{broker.address}", connect_timeout=5)
    assert "TLS handshake" in str(e.value)
    assert time.monotonic() - t < 2.5  # a certificate that is not trusted is not retried for 5 s


# ---------------------------------------------------------------------------- against a fake broker

BYE = Error(0, int(ErrorCode.SHUTTING_DOWN), "broker is shutting down")


def ack_then_bye(acked_batches: int) -> Callable[[], Script]:
    """Acks the first ``acked_batches`` PUBLISHes of a connection; with the last of them it sends
    SHUTTING_DOWN in the same write and closes (later PUBLISHes get no answer)."""

    def make() -> Script:
        state = {"publishes": 0, "next_id": 1, "pending": b""}

        def script(f: Frame) -> tuple[bytes, bool]:
            if isinstance(f, Hello):
                return hello_ok(f), False
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


def acks(max_frame: int = 1 << 24) -> Callable[[], Script]:
    """Acks every PUBLISH with consecutive ids, announcing ``max_frame``."""
    state = {"next": 1}

    def make() -> Script:
        def script(f: Frame) -> tuple[bytes, bool]:
            if isinstance(f, Hello):
                return hello_ok(f, max_frame=max_frame), False
            assert isinstance(f, Publish)
            first, state["next"] = state["next"], state["next"] + f.records.count
            return encode(PublishAck(f.request_id, first, f.records.count)), False

        return script

    return make


def first_acked_then_bye() -> Script:
    """Holds the first PUBLISH's ack; when the second PUBLISH arrives, sends that ack and
    SHUTTING_DOWN in one write and closes: the second batch never gets an answer."""
    state: dict[str, object] = {"n": 0, "first": b""}

    def script(f: Frame) -> tuple[bytes, bool]:
        if isinstance(f, Hello):
            return hello_ok(f), False
        assert isinstance(f, Publish)
        state["n"] = int(state["n"]) + 1  # type: ignore[call-overload]
        if state["n"] == 1:
            state["first"] = encode(PublishAck(f.request_id, 1, f.records.count))
            return b"", False
        return bytes(state["first"]) + encode(BYE), True  # type: ignore[call-overload]

    return script


def test_publish_acked_with_the_closing_error_returns_its_id(fake, clients) -> None:
    b = fake(ack_then_bye(1))
    pub = clients.publisher(b.address, connect_timeout=2, timeout=5)
    assert pub.publish("t", b"x") == 1
    # the connection is gone: the next call reconnects (a new fake connection) and goes on
    for _ in range(100):
        if pub.state.value != "ready":
            break
        time.sleep(0.01)  # (the asyncio client's reader notices the close on its own)
    assert pub.publish("t", b"y") == 1
    assert b.connections == 2


def test_batches_all_acked_with_the_closing_error(fake, clients) -> None:
    b = fake(ack_then_bye(2))
    pub = clients.publisher(b.address, connect_timeout=2, timeout=5)
    assert pub.publish_batch("t", [b"r"] * 300) == 300  # 256 + 44, both acked, then ERROR


def test_only_unanswered_records_count_as_unacked(fake, clients) -> None:
    b = fake(first_acked_then_bye)
    pub = clients.publisher(b.address, connect_timeout=2, timeout=5)
    with pytest.raises(ConnectionLostError) as e:
        pub.publish_batch("t", [b"r"] * 300)
    assert e.value.unacked == 44, str(e.value)  # the 256 of the first batch were acked
    assert str(e.value).count("SHUTTING_DOWN") == 1, str(e.value)
    assert e.value.closed_by is not None and e.value.closed_by.code == ErrorCode.SHUTTING_DOWN


def test_a_batch_over_max_frame_is_cut_by_bytes(fake, clients) -> None:
    b = fake(acks(max_frame=100_000))  # max_batch 256, but 100,000 bytes a frame
    pub = clients.publisher(b.address, connect_timeout=2, timeout=5)
    payloads = [bytes([i]) * 30_000 for i in range(10)]  # 300 KB: at most 3 records a frame
    assert pub.publish_batch("big", payloads, ids=True) == list(range(1, 11))
    publishes = [f for f in b.frames if isinstance(f, Publish)]
    assert [f.records.count for f in publishes] == [3, 3, 3, 1]
    assert all(len(encode(f)) <= 100_000 for f in publishes)
    assert [r.payload for f in publishes for r in f.records] == payloads


def test_a_record_larger_than_max_frame_is_refused_before_sending(fake, clients) -> None:
    b = fake(acks(max_frame=50_000))  # smaller than max_payload (65,536)
    pub = clients.publisher(b.address, connect_timeout=2, timeout=5)
    with pytest.raises(InvalidArgumentError) as e:
        pub.publish("big", b"x" * 60_000)
    assert "max_frame of 50000" in str(e.value)
    assert not [f for f in b.frames if isinstance(f, Publish)]
    assert pub.publish("big", b"x" * 40_000) == 1


def wrong_answer() -> Callable[[], Script]:
    """Answers the first PING with PUBLISH_ACK (a response of the wrong type), later ones properly."""
    state = {"pings": 0}

    def make() -> Script:
        def script(f: Frame) -> tuple[bytes, bool]:
            if isinstance(f, Hello):
                return hello_ok(f), False
            assert isinstance(f, Ping)
            state["pings"] += 1
            if state["pings"] == 1:
                return encode(PublishAck(f.request_id, 1, 1)), False
            return encode(Pong(f.request_id, f.token)), False

        return script

    return make


def test_a_wrong_response_is_a_protocol_error_and_drops_the_connection(fake, clients) -> None:
    b = fake(wrong_answer())
    pub = clients.publisher(b.address, connect_timeout=2, timeout=5)
    with pytest.raises(ProtocolError) as e:
        pub.ping()
    err = e.value
    assert isinstance(err, ConnectionLostError) and isinstance(err, NanoMQError)
    assert isinstance(err, nanomq.protocol.ProtocolError) and err.rule == "NMQ-3.2-1"
    assert "PublishAck where Pong was due" in str(err)
    assert pub.ping() > 0  # reconnected
    assert b.connections == 2


def garbage() -> Script:
    def script(f: Frame) -> tuple[bytes, bool]:
        if isinstance(f, Hello):
            return hello_ok(f), False
        return b"\xff" * 32, False

    return script


def test_undecodable_bytes_are_a_protocol_error(fake, clients) -> None:
    b = fake(garbage)
    pub = clients.publisher(b.address, connect_timeout=2, timeout=5)
    with pytest.raises(ProtocolError) as e:
        pub.ping()
    assert "invalid data from broker" in str(e.value) and e.value.code == ErrorCode.FRAME_TOO_LARGE


def test_a_big_send_to_a_slow_broker_is_not_a_lost_connection(fake, clients) -> None:
    # After HELLO the broker reads nothing for 1 s while 32 MB wait to be sent: more than the
    # socket buffers hold, so the send blocks (once cut short by a 100 ms read slice).
    b = fake(acks(), stall=1.0)
    pub = clients.publisher(b.address, connect_timeout=5, timeout=10)
    assert pub.publish_batch("slow", [b"s" * 32_000] * 1000) == 1000


def resubscribe_refused() -> Callable[[], Script]:
    """Connection 1: subscriptions a and b are accepted, then the broker closes. Connection 2:
    resuming a is refused (OUT_OF_RANGE), b is resumed and gets a record."""
    conn = {"n": 0}

    def make() -> Script:
        conn["n"] += 1
        n = conn["n"]

        def script(f: Frame) -> tuple[bytes, bool]:
            if isinstance(f, Hello):
                return hello_ok(f), False
            assert isinstance(f, Subscribe)
            sub_id = 1 if f.topic == "a" else 2
            if n == 1:
                return encode(Subscribed(f.request_id, sub_id=sub_id, topic_id=1, next_id=1)), f.topic == "b"
            if f.topic == "a":
                return encode(Error(f.request_id, int(ErrorCode.OUT_OF_RANGE), "gone", "NMQ-4.4-3")), False
            batch = RecordBatch.from_payloads([b"for b"], first_id=1)
            return (encode(Subscribed(f.request_id, sub_id=sub_id, topic_id=1, next_id=1))
                    + encode(Deliver(0, sub_id, batch))), False

        return script

    return make


def test_a_subscription_that_cannot_be_resumed_is_said_and_the_others_go_on(fake, clients, caplog) -> None:
    b = fake(resubscribe_refused())
    sub = clients.subscriber(b.address, connect_timeout=2, timeout=5)
    sub.subscribe("a")
    sub.subscribe("b")  # the broker closes after answering
    with caplog.at_level(logging.ERROR, logger="nanomq.client"):
        with pytest.raises(ServerError) as e:
            for _ in range(50):
                sub.poll(100_000)
        assert "'a' cannot be resumed" in str(e.value) and e.value.code == ErrorCode.OUT_OF_RANGE
    assert any("cannot be resumed" in r.getMessage() for r in caplog.records)
    assert sub.subscriptions == ["b"]
    assert sub.poll(2_000_000).data == b"for b"


def silent_second_hello() -> Callable[[], Script]:
    """Connection 1 answers HELLO and closes at the first PING; connection 2 never answers its
    HELLO; connection 3 and later answer everything."""
    conn = {"n": 0}

    def make() -> Script:
        conn["n"] += 1
        n = conn["n"]

        def script(f: Frame) -> tuple[bytes, bool]:
            if isinstance(f, Hello):
                return (b"", False) if n == 2 else (hello_ok(f), False)
            assert isinstance(f, Ping) and n != 2
            return (b"", True) if n == 1 else (encode(Pong(f.request_id, f.token)), False)

        return script

    return make


def test_a_handshake_that_times_out_is_dropped_and_the_next_call_reconnects(fake, clients) -> None:
    b = fake(silent_second_hello())
    pub = clients.publisher(b.address, connect_timeout=0.5, timeout=5)
    with pytest.raises(ConnectionLostError):
        pub.ping()  # connection 1 closes
    with pytest.raises(RequestTimeoutError):
        pub.ping()  # connection 2: no HELLO_OK within connect_timeout
    assert pub.state.value == "disconnected"
    assert pub.ping() > 0  # connection 3, not a request on the connection that never said HELLO_OK
    assert b.connections == 3
