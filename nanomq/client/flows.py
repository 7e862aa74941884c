"""What the clients do, written once for both transports: each operation is a *flow*.

A flow is a generator over the sans-IO core. It yields the I/O it needs as small operation
objects — :class:`Open` a connection, :class:`Send` bytes, :class:`Receive` what arrives until a
deadline, :class:`Sleep`, :class:`Hangup` — and gets back their outcome. The blocking client
performs each operation on a socket, the asyncio client with streams; both drive every flow with
a :class:`Runner`, so reconnection with backoff, the handshake, resubscription, the publish
pipeline with its unacked count, batching and polling behave the same over both, by
construction.

The base classes here (:class:`ClientBase`, :class:`PublisherBase`, :class:`SubscriberBase`)
are the I/O-free halves of the public classes: they check the arguments, hold the core and the
settings, and make the flows. ``Publisher`` is ``PublisherBase`` driven by the blocking
transport, ``AsyncPublisher`` the same driven by asyncio.

Reconnects and errors are logged to ``logging.getLogger("nanomq.client")``.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from nanomq.client import args
from nanomq.client.core import ClientCore, Request
from nanomq.client.errors import (
    ArgumentTypeError,
    ConnectionLostError,
    NanoMQError,
    RequestTimeoutError,
    ServerError,
)
from nanomq.client.message import Message
from nanomq.client.policy import Backoff, Batcher, PublishRun
from nanomq.client.state import ClientState
from nanomq.protocol import Ack, Capability, ErrorCode, Frame, HelloOk, Start, TopicInfo

__all__ = [
    "ITERATION_SLICE", "LOSS_PAUSE", "ClientBase", "Flow", "Hangup", "Open", "OpenFailed", "Op", "PublisherBase", "Receive", "Runner", "Send", "Sleep",
    "SubscriberBase", "connect", "ensure", "request", "response",
]

log = logging.getLogger("nanomq.client")

T = TypeVar("T")
F = TypeVar("F", bound=Frame)

LOSS_PAUSE = 0.05
"""Seconds a poll waits after losing its connection before it reconnects (no hot loop against
a broker that closes at once)."""
ITERATION_SLICE = 1.0
"""Seconds one step of ``for msg in sub`` waits before it looks whether the subscriber was closed."""


# ---------------------------------------------------------------------------- the operations

@dataclass(frozen=True, slots=True)
class Open:
    """Open the transport (TCP, and TLS when configured) to the broker: one attempt, within
    ``timeout`` seconds. Answered with None, or :class:`OpenFailed`."""

    timeout: float


@dataclass(frozen=True, slots=True)
class OpenFailed:
    """Why an :class:`Open` failed, and whether another attempt may succeed."""

    message: str
    retry: bool

    @classmethod
    def unreachable(cls, opts: args.Options, error: OSError) -> OpenFailed:
        """The TCP connection could not be made (refused, unreachable, timed out): worth retrying."""
        return cls(f"cannot connect to broker at {opts.host}:{opts.port}: {error}", retry=True)

    @classmethod
    def tls(cls, opts: args.Options, error: OSError) -> OpenFailed:
        """The TLS handshake failed (an untrusted certificate, a plaintext server): not retried."""
        return cls(f"TLS handshake with {opts.host}:{opts.port} failed: {error}", retry=False)


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``data``. A failure is reported to the core (the connection is lost), not raised."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Receive:
    """Feed the core what arrives, returning once something did or at ``deadline`` (monotonic
    clock); busy-poll for ``spin`` seconds first. ``idle``: the flow waits for deliveries only, so
    a transport that lets other calls run meanwhile (asyncio) may."""

    deadline: float
    spin: float = 0.0
    idle: bool = False


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Hangup:
    """Close the transport (the core already knows why)."""


Op = Open | Send | Receive | Sleep | Hangup
Flow = Generator[Op, OpenFailed | None, T]


class Runner(Generic[T]):
    """Steps a flow: perform :attr:`op`, hand its outcome to :meth:`resume`, until ``op`` is None;
    then :attr:`result` is the flow's value (its exception propagates out of ``resume``)."""

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self.result: T
        self.op: Op | None = self._advance(None)

    def resume(self, outcome: OpenFailed | None) -> None:
        """Hand the outcome of :attr:`op` back to the flow."""
        self.op = self._advance(outcome)

    def _advance(self, outcome: OpenFailed | None) -> Op | None:
        try:
            return self._flow.send(outcome)
        except StopIteration as stop:
            self.result = stop.value
            return None


# ---------------------------------------------------------------------------- connection flows

def response(core: ClientCore, req: Request[F], timeout: float | None = None) -> Flow[F]:
    """The answer to ``req``, within ``timeout`` (default: the client's); ServerError for an
    ERROR, ConnectionLostError when the connection ends first, RequestTimeoutError."""
    wait = core.options.timeout if timeout is None else timeout
    deadline = time.monotonic() + wait
    while (frame := core.response(req)) is None:
        if time.monotonic() >= deadline:
            core.forget(req.rid)
            raise RequestTimeoutError(f"no answer from the broker within {wait} s")
        yield Receive(deadline)
    return frame


def request(core: ClientCore, req: Request[F]) -> Flow[F]:
    """Send ``req`` and return its answer."""
    yield Send(req.data)
    return (yield from response(core, req))


def ensure(core: ClientCore) -> Flow[None]:
    """A ready connection: connect (and resume subscriptions) unless there is one."""
    if core.state is ClientState.CLOSED:
        raise ConnectionLostError("client is closed")
    if core.state is ClientState.CONNECTING:  # an attempt abandoned half-way (Ctrl-C, a cancelled task)
        core.connection_lost("connection attempt interrupted")
        yield Hangup()
    if core.state is not ClientState.READY:
        yield from connect(core)


def connect(core: ClientCore) -> Flow[None]:
    """Connect with exponential backoff for up to ``connect_timeout``, say HELLO, check the
    capabilities the client needs, and resume every subscription of the lost connection right
    after the last record handed out (no gap, and what was received but not handed out is
    fetched again)."""
    opts = core.options
    reconnect = core.loss is not None
    core.begin_connect()
    backoff = Backoff(time.monotonic(), opts.connect_timeout)
    while (failed := (yield Open(min(5.0, opts.connect_timeout)))) is not None:
        delay = backoff.next_delay(time.monotonic()) if failed.retry else None
        if delay is None:
            log.warning("%s (%d attempt(s)); giving up", failed.message, backoff.attempts)
            raise core.connect_failed(failed.message)
        log.info("%s; retrying in %.2f s", failed.message, delay)
        yield Sleep(delay)
    try:
        yield from _hello(core)
    except NanoMQError as e:  # no HELLO_OK in time, or an ERROR for the HELLO: this attempt is over
        if core.state is ClientState.CONNECTING:
            core.connect_failed(f"handshake failed: {e}")
            yield Hangup()
        raise
    for cap, what in core.requirements:
        try:
            core.require(cap, what)
        except ServerError:
            core.close()
            yield Hangup()
            raise
    failures = []
    for st in list(core.resume):
        req = core.subscribe(st.topic, Start.ID, st.resume_id, st.window, resumes=st)
        yield Send(req.data)
        try:
            yield from response(core, req)
        except ServerError as e:
            log.error("subscription to %s cannot be resumed at id %d: %s", st.topic, st.resume_id, e)
            failures.append(ServerError(e.code, f"subscription to {st.topic!r} cannot be resumed at id "
                                        f"{st.resume_id}: {e.message}", e.rule))
    core.ready()
    if reconnect:
        log.info("reconnected to %s; %d subscription(s) resumed", opts.address, len(core.subs))
    if failures:
        raise failures[0]


def _hello(core: ClientCore) -> Flow[HelloOk]:
    req = core.hello()
    yield Send(req.data)
    return (yield from response(core, req, core.options.connect_timeout))


# ---------------------------------------------------------------------------- the I/O-free halves

class ClientBase:
    """Arguments, core and flows common to publishers and subscribers."""

    def __init__(self, address: str, *, client_name: str, timeout: float, connect_timeout: float,
                 ssl_context: ssl.SSLContext | None, token: str | bytes | None = None,
                 tls_cert: str | os.PathLike[str] | None = None, tls_key: str | os.PathLike[str] | None = None,
                 tls_ca: str | os.PathLike[str] | None = None) -> None:
        opts = args.options(address, client_name=client_name, timeout=timeout, connect_timeout=connect_timeout,
                            ssl_context=ssl_context, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca)
        self._core = ClientCore(opts, auth_token=args.auth_token(token))

    def _start(self) -> None:
        """The transport's set-up, called once the arguments are checked (the blocking client
        connects here)."""
        raise NotImplementedError

    @property
    def address(self) -> str:
        """The broker address as given."""
        return self._core.options.address

    @property
    def state(self) -> ClientState:
        """Where the connection is: DISCONNECTED, CONNECTING, READY or CLOSED."""
        return self._core.state

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._core.state is ClientState.CLOSED

    def _server_info(self) -> Flow[HelloOk]:
        yield from ensure(self._core)
        assert self._core.server is not None
        return self._core.server

    def _topics(self, topic: str) -> Flow[list[TopicInfo]]:
        name = topic if topic == "" else args.topic(topic)
        yield from ensure(self._core)
        return list((yield from request(self._core, self._core.metadata(name))).topics)

    def _ping(self) -> Flow[float]:
        yield from ensure(self._core)
        t = time.perf_counter()
        yield from request(self._core, self._core.ping())
        return time.perf_counter() - t

    def _before_close(self) -> Flow[None]:
        """What closing does before the connection goes (a publisher flushes)."""
        return
        yield  # a flow that performs nothing


class PublisherBase(ClientBase):
    """The I/O-free half of :class:`~nanomq.Publisher` and :class:`~nanomq.aio.AsyncPublisher`.

    ``ack`` is the default acknowledgement mode: ``"durable"`` (fsynced before the ack; the
    default), ``"written"`` (in the broker's log, not yet synced) or ``"none"``. TLS: a
    ``tls://host:port`` address (system CAs), or ``ssl_context=`` for your own. Authentication
    (a broker with ``--auth-file``): ``token=`` (default ``$NANOMQ_TOKEN``), or a client
    certificate, ``tls_cert=`` / ``tls_key=`` (PEM files; with a ``tls://`` address; ``tls_ca=``
    trusts the broker's certificate authority instead of the system's).
    """

    def __init__(
        self,
        address: str = "127.0.0.1:9000",
        *,
        ack: str = "durable",
        client_name: str = "nanomq-publisher",
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        token: str | bytes | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        self._ack = args.ack_mode(ack)
        self._compress_above: int | None = None
        self._batcher = Batcher()
        super().__init__(address, client_name=client_name, timeout=timeout, connect_timeout=connect_timeout,
                         ssl_context=ssl_context, token=token, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca)
        self._start()

    def _publish_batches(self, topic: str, payloads: Sequence[bytes]) -> Flow[list[int]]:
        """Send the batches back to back, then collect their acks: the ids, in order."""
        core = self._core
        if core.state is not ClientState.READY:
            yield from ensure(core)
        batches = core.publish(topic, payloads, self._ack, self._compress_above)
        run = PublishRun()
        try:
            for req, n in batches:
                yield Send(req.data)
                if core.state is not ClientState.READY:
                    break  # this one may have gone out in part: not stored
                run.sent.append((req.rid, n))
            if core.state is not ClientState.READY:
                raise core.last_error()
            if self._ack == Ack.NONE:
                return [0] * len(payloads)
            for req, _ in batches:
                ack = yield from response(core, req)
                run.acked(ack.first_id, ack.count)
            return run.ids
        except ConnectionLostError as e:
            # Outcome unknown: what was sent and got no answer (acks that arrived are not counted).
            raise e.with_unacked(run.unacked(core.answered())) from None
        finally:
            for req, _ in batches:
                core.forget(req.rid)

    def _flush(self) -> Flow[None]:
        for topic, items in self._batcher.take().items():
            yield from self._publish_batches(topic, items)

    def _publish(self, topic: str, data: bytes) -> Flow[int]:
        name, payload = args.topic(topic), args.payload(data)
        self._batcher.raise_failure()
        if not self._batcher.enabled:
            return (yield from self._publish_batches(name, [payload]))[0]
        if self._batcher.add(name, payload, time.monotonic()):
            yield from self._flush()
        return 0

    def _publish_batch(self, topic: str, payloads: Iterable[bytes], ids: bool) -> Flow[int | list[int]]:
        name, items = args.topic(topic), args.payloads(payloads)
        self._batcher.raise_failure()
        yield from self._flush()  # what batching holds goes first: order is kept
        got = (yield from self._publish_batches(name, items)) if items else []
        return got if ids else len(items)

    def _flush_now(self) -> Flow[None]:
        self._batcher.raise_failure()
        yield from self._flush()

    def _background_flush(self) -> Flow[None]:
        """The flusher's turn: send what waited long enough; an error waits for the next call."""
        if self._core.state is ClientState.CLOSED or not self._batcher.due(time.monotonic()):
            return
        try:
            yield from self._flush()
        except NanoMQError as e:
            log.error("background flush of batched records failed: %s", e)
            self._batcher.failure = e

    def _set_batching(self, enabled: bool) -> Flow[None]:
        self._batcher.enabled = bool(enabled)
        if not enabled:
            yield from self._flush_now()

    def _set_compression(self, nbytes: int | None) -> Flow[None]:
        threshold = args.compression_threshold(nbytes)
        if threshold is not None:
            yield from ensure(self._core)
            self._core.require(Capability.COMPRESSION_LZ4, "LZ4 compression")
        self._compress_above = threshold

    def _before_close(self) -> Flow[None]:
        if self._core.state is ClientState.READY and self._batcher.pending:
            yield from self._flush()


class SubscriberBase(ClientBase):
    """The I/O-free half of :class:`~nanomq.Subscriber` and :class:`~nanomq.aio.AsyncSubscriber`.

    Without a consumer group each subscription starts at the earliest retained record, so
    "publish, then subscribe, then poll" sees what was published. ``window`` bounds how many
    records per subscription the broker may push ahead of ``poll`` (credit flow control);
    ``spin_us`` busy-polls that long before blocking in each wait. A non-empty ``consumer_group``
    raises NotSupportedError when the broker does not announce consumer groups (the reference
    broker does not yet).
    """

    def __init__(
        self,
        address: str = "127.0.0.1:9000",
        consumer_group: str = "",
        *,
        window: int = 1024,
        spin_us: int = 0,
        client_name: str = "nanomq-subscriber",
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        token: str | bytes | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        self._window = args.window(window)
        self._spin = args.spin_us(spin_us)
        if not isinstance(consumer_group, str):
            raise ArgumentTypeError(f"consumer_group must be a str, not {type(consumer_group).__name__}")
        self.consumer_group = consumer_group
        super().__init__(address, client_name=client_name, timeout=timeout, connect_timeout=connect_timeout,
                         ssl_context=ssl_context, token=token, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca)
        if consumer_group:
            self._core.requirements.append((Capability.CONSUMER_GROUPS, f"consumer group {consumer_group!r}"))
        self._start()

    @property
    def subscriptions(self) -> list[str]:
        """Topics currently subscribed."""
        return list(self._core.subs)

    def _subscribe(self, topic: str, start: str, value: int) -> Flow[bool]:
        name = args.topic(topic)
        kind, v = args.start_position(start, value)
        yield from ensure(self._core)
        if name in self._core.subs:
            return False
        yield from request(self._core, self._core.subscribe(name, kind, v, self._window))
        return True

    def _unsubscribe(self, topic: str) -> Flow[bool]:
        name = args.topic(topic)
        yield from ensure(self._core)
        if name not in self._core.subs:
            return False
        yield from request(self._core, self._core.unsubscribe(name))
        return True

    def _poll_until(self, max_msgs: int, deadline: float) -> Flow[list[Message]]:
        """Whatever is buffered (up to ``max_msgs``), else the first to arrive before
        ``deadline``. A lost connection is re-established (with backoff) and every subscription
        resumed after the last message handed out."""
        core = self._core
        while True:
            if core.state is not ClientState.READY:  # (checked here first: polls are the hot path)
                yield from ensure(core)
            msgs, credits = core.take(max_msgs)
            if msgs:
                if credits:  # if this fails the messages are still ours: the next poll reconnects
                    yield Send(b"".join(credits))
                return msgs
            if time.monotonic() >= deadline:
                return []
            yield Receive(deadline, self._spin, idle=True)
            if core.state is ClientState.DISCONNECTED:  # lost while waiting
                if time.monotonic() >= deadline:
                    raise core.last_error()
                yield Sleep(min(LOSS_PAUSE, max(0.0, deadline - time.monotonic())))

    def _poll_batch(self, max_msgs: int, timeout_us: int | None, timeout: float | None) -> Flow[list[Message]]:
        n = args.max_msgs(max_msgs)
        wait = args.poll_timeout(timeout_us, timeout)
        return (yield from self._poll_until(n, time.monotonic() + wait))

    def _poll(self, timeout_us: int | None, timeout: float | None) -> Flow[Message | None]:
        wait = args.poll_timeout(timeout_us, timeout)
        got = yield from self._poll_until(1, time.monotonic() + wait)
        return got[0] if got else None

    def _iteration_step(self) -> Flow[list[Message] | None]:
        """One step of iteration: a message (or none within a slice); None once closed."""
        if self.closed:
            return None
        try:
            return (yield from self._poll_until(1, time.monotonic() + ITERATION_SLICE))
        except ConnectionLostError:
            if self.closed:
                return None
            raise

    def _commit(self, ids: Sequence[int], topic: str | None) -> Flow[int]:
        checked = args.record_ids(ids)
        yield from ensure(self._core)
        position = 0
        for req in self._core.commit(self._core.one_topic(topic), checked):
            position = (yield from request(self._core, req)).position
        return position

    def _commit_one(self, message: int | Message, topic: str | None) -> Flow[int]:
        if isinstance(message, Message):
            return (yield from self._commit([message.id], message.topic))
        return (yield from self._commit([args.record_id(message)], topic))

    def _seek(self, start: Start, value: int, topic: str | None) -> Flow[bool]:
        v = args.u64("timestamp_ns" if start is Start.TIMESTAMP else "message_id", value)
        yield from ensure(self._core)
        ok = True
        for t in self._core.seek_targets(topic):
            try:
                yield from request(self._core, self._core.seek(t, start, v))
            except ServerError as e:
                if e.code != ErrorCode.OUT_OF_RANGE:
                    raise
                ok = False
        return ok

