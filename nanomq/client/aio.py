"""asyncio forms of :class:`nanomq.Publisher` and :class:`nanomq.Subscriber`.

The same methods as coroutines, the same flows (``nanomq.client.flows``) over asyncio streams::

    async with AsyncPublisher("127.0.0.1:9000") as pub:
        msg_id = await pub.publish("orders", b"...")

A reader task per connection feeds the core everything the broker sends; a flow waiting for an
answer or a delivery wakes when something arrives. Calls of one client take turns (an asyncio
lock), except that a poll waiting for deliveries lets the others through.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, overload

from nanomq.client import flows
from nanomq.client.flows import ClientBase, Flow, PublisherBase, SubscriberBase
from nanomq.client.message import Message
from nanomq.protocol import HelloOk, Start, TopicInfo

__all__ = ["AsyncPublisher", "AsyncSubscriber"]

T = TypeVar("T")

_READ = 1 << 20


class _AsyncClient(ClientBase):
    """The asyncio transport: streams, a reader task, and the loop that drives a flow over them."""

    _reader: asyncio.StreamReader | None
    _writer: asyncio.StreamWriter | None
    _reading: asyncio.Task[None] | None
    _arrived: asyncio.Event
    _lock: asyncio.Lock

    def _start(self) -> None:
        self._reader = self._writer = self._reading = None
        self._arrived = asyncio.Event()
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, address: str = "127.0.0.1:9000", **kwargs: Any) -> Self:
        """Create the client (same arguments as the constructor) and connect it."""
        client = cls(address, **kwargs)
        await client._run(client._server_info())
        return client

    async def _run(self, flow: Flow[T]) -> T:
        await self._lock.acquire()
        held = True
        try:
            run = flows.Runner(flow)  # the flow's first step runs under the lock too
            while (op := run.op) is not None:
                if isinstance(op, flows.Receive) and op.idle:  # waiting for deliveries: let other calls in
                    self._lock.release()
                    held = False
                    try:
                        await self._receive(op)
                    finally:
                        await self._lock.acquire()  # a cancellation here leaves it released: held stays False
                        held = True
                    run.resume(None)
                else:
                    run.resume(await self._perform(op))
            return run.result
        finally:
            if held:
                self._lock.release()

    async def _perform(self, op: flows.Op) -> flows.OpenFailed | None:
        if isinstance(op, flows.Send):
            await self._send(op.data)
        elif isinstance(op, flows.Receive):
            await self._receive(op)
        elif isinstance(op, flows.Open):
            return await self._open(op.timeout)
        elif isinstance(op, flows.Sleep):
            await asyncio.sleep(op.seconds)
        else:
            self._hangup()
        return None

    async def _open(self, timeout: float) -> flows.OpenFailed | None:
        opts = self._core.options
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(opts.host, opts.port, ssl=opts.tls,
                                        server_hostname=opts.host if opts.tls else None), timeout)
        except OSError as e:  # TimeoutError and ssl.SSLError are OSErrors
            if isinstance(e, ssl.SSLError):
                return flows.OpenFailed.tls(opts, e)
            return flows.OpenFailed.unreachable(opts, e)
        self._reader, self._writer = reader, writer
        self._reading = asyncio.get_running_loop().create_task(self._read_loop(reader))
        return None

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        """Feed the core until the stream ends; then report the loss (unless this connection was
        already dropped, or the client closed)."""
        reason = "connection closed by broker"
        try:
            while data := await reader.read(_READ):
                if self._reader is not reader:
                    return  # a connection already dropped: its late bytes are not this one's
                ended = self._core.feed(data) is not None
                self._arrived.set()
                if ended:
                    self._hangup()
                    return
        except OSError as e:
            reason = f"receive failed: {e}"
        except asyncio.CancelledError:
            return
        if self._reader is reader:
            self._hangup()
            self._core.connection_lost(reason)
        self._arrived.set()

    async def _send(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            return  # the connection is gone: the core knows, the flow looks
        writer.write(data)
        try:
            await writer.drain()  # bounded memory: wait while the broker is slower than we write
        except OSError as e:
            if self._writer is writer:
                self._hangup()
                self._core.connection_lost(f"send failed: {e}")

    async def _receive(self, op: flows.Receive) -> None:
        """Wait until something arrives or ``op.deadline``; busy-yield to the loop for
        ``op.spin`` seconds first (the reader task runs as soon as bytes are there)."""
        self._arrived.clear()
        if op.spin > 0:
            end = time.perf_counter() + op.spin
            while not self._arrived.is_set() and time.perf_counter() < end:
                await asyncio.sleep(0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), max(0.0, op.deadline - time.monotonic()))

    def _hangup(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
        if self._reading is not None and self._reading is not asyncio.current_task():
            self._reading.cancel()
        self._reading = None
        self._arrived.set()

    # ------------------------------------------------------------------ common API

    @property
    def server_info(self) -> HelloOk:
        """What the broker announced in HELLO_OK; ConnectionLostError when not connected."""
        if self._core.server is None:
            raise self._core.last_error()
        return self._core.server

    async def topics(self, topic: str = "") -> list[TopicInfo]:
        """Every topic (or just ``topic``) with its retained id range."""
        return await self._run(self._topics(topic))

    async def ping(self) -> float:
        """Round trip to the broker, in seconds."""
        return await self._run(self._ping())

    async def close(self) -> None:
        """Close the connection (idempotent). A publisher first sends what batching holds."""
        try:
            await self._run(self._before_close())
        finally:
            self._core.close()
            writer = self._writer
            self._hangup()
            if writer is not None:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def __aenter__(self) -> Self:
        """Connect (unless connected) and return the client."""
        if not self.closed:
            await self._run(self._server_info())
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        """:meth:`close`."""
        await self.close()


class AsyncPublisher(PublisherBase, _AsyncClient):
    """asyncio form of :class:`nanomq.Publisher`: the same arguments, the methods as coroutines.
    Not connected until ``await AsyncPublisher.connect(...)``, ``async with``, or the first call."""

    _flusher: asyncio.Task[None] | None

    def _start(self) -> None:
        self._flusher = None
        super()._start()

    async def publish(self, topic: str, data: bytes) -> int:
        """See :meth:`nanomq.Publisher.publish`."""
        return await self._run(self._publish(topic, data))

    @overload
    async def publish_batch(self, topic: str, payloads: Iterable[bytes], *,
                            ids: Literal[False] = False) -> int: ...

    @overload
    async def publish_batch(self, topic: str, payloads: Iterable[bytes], *, ids: Literal[True]) -> list[int]: ...

    async def publish_batch(self, topic: str, payloads: Iterable[bytes], *, ids: bool = False) -> int | list[int]:
        """See :meth:`nanomq.Publisher.publish_batch`: the count acked, or the ids with ``ids=True``."""
        return await self._run(self._publish_batch(topic, payloads, ids))

    async def flush(self) -> None:
        """See :meth:`nanomq.Publisher.flush`."""
        await self._run(self._flush_now())

    async def set_compression_threshold(self, nbytes: int | None) -> None:
        """See :meth:`nanomq.Publisher.set_compression_threshold`."""
        await self._run(self._set_compression(nbytes))

    async def set_batching_enabled(self, enabled: bool) -> None:
        """See :meth:`nanomq.Publisher.set_batching_enabled` (a task flushes)."""
        await self._run(self._set_batching(enabled))
        if enabled and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(self._batcher.tick)
            if self._batcher.due(time.monotonic()):
                await self._run(self._background_flush())

    async def close(self) -> None:
        """See :meth:`nanomq.Publisher.close`."""
        try:
            await super().close()
        finally:
            if self._flusher is not None:
                self._flusher.cancel()
                self._flusher = None


class AsyncSubscriber(SubscriberBase, _AsyncClient):
    """asyncio form of :class:`nanomq.Subscriber`: the same arguments, the methods as coroutines,
    ``async for msg in sub``. Not connected until ``await AsyncSubscriber.connect(...)``,
    ``async with``, or the first call."""

    async def subscribe(self, topic: str, *, start: str = "earliest", value: int = 0) -> bool:
        """See :meth:`nanomq.Subscriber.subscribe`."""
        return await self._run(self._subscribe(topic, start, value))

    async def unsubscribe(self, topic: str) -> bool:
        """See :meth:`nanomq.Subscriber.unsubscribe`."""
        return await self._run(self._unsubscribe(topic))

    async def poll(self, timeout_us: int | None = None, *, timeout: float | None = None) -> Message | None:
        """See :meth:`nanomq.Subscriber.poll`."""
        return await self._run(self._poll(timeout_us, timeout))

    async def poll_batch(self, max_msgs: int = 256, timeout_us: int | None = None, *,
                         timeout: float | None = None) -> list[Message]:
        """See :meth:`nanomq.Subscriber.poll_batch`."""
        return await self._run(self._poll_batch(max_msgs, timeout_us, timeout))

    async def __aiter__(self) -> AsyncIterator[Message]:
        """``async for msg in sub``: each message as it arrives; ends once the subscriber is closed."""
        while (got := await self._run(self._iteration_step())) is not None:
            for msg in got:
                yield msg

    async def commit(self, message: int | Message, topic: str | None = None) -> int:
        """See :meth:`nanomq.Subscriber.commit`."""
        return await self._run(self._commit_one(message, topic))

    async def commit_batch(self, ids: Sequence[int], topic: str | None = None) -> int:
        """See :meth:`nanomq.Subscriber.commit_batch`."""
        return await self._run(self._commit(ids, topic))

    async def seek(self, message_id: int, topic: str | None = None) -> bool:
        """See :meth:`nanomq.Subscriber.seek`."""
        return await self._run(self._seek(Start.ID, message_id, topic))

    async def seek_to_timestamp(self, timestamp_ns: int, topic: str | None = None) -> bool:
        """See :meth:`nanomq.Subscriber.seek_to_timestamp`."""
        return await self._run(self._seek(Start.TIMESTAMP, timestamp_ns, topic))

