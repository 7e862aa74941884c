"""asyncio twins of :class:`nanomq.Publisher` and :class:`nanomq.Subscriber`.

Same methods, as coroutines, on the same sans-IO core (``nanomq.client.core``)::

    async with await AsyncPublisher.connect("127.0.0.1:9000") as pub:
        msg_id = await pub.publish("orders", b"...")

A background reader task decodes everything the broker sends: responses complete the futures of
their requests, deliveries fill the subscription buffers that ``poll`` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Self

from nanomq.client.core import (
    ACK_MODES,
    ClientCore,
    SubState,
    check,
    parse_address,
    split,
    tls_context,
    topics_of,
)
from nanomq.client.errors import ConnectionLostError, RequestTimeoutError, ServerError
from nanomq.client.message import Message
from nanomq.client.sync import START_POSITIONS
from nanomq.protocol import (
    Capability,
    Committed,
    ErrorCode,
    Frame,
    HelloOk,
    PublishAck,
    SeekOk,
    Start,
    Subscribed,
    TopicInfo,
    Unsubscribed,
)

__all__ = ["AsyncPublisher", "AsyncSubscriber"]


class _AsyncClient:
    def __init__(self, address: str, *, client_name: str, timeout: float, connect_timeout: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.address = address
        self._host, self._port = parse_address(address)
        self._tls = tls_context(address, ssl_context)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._core = ClientCore(client_name)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._futs: dict[int, asyncio.Future[Frame]] = {}
        self._arrived = asyncio.Event()
        self._closed = False
        self._resume: list[SubState] = []
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, address: str = "127.0.0.1:9000", **kwargs: Any) -> Self:
        """Create the client and connect it."""
        client = cls(address, **kwargs)
        await client._connect()
        return client

    @property
    def server_info(self) -> HelloOk:
        """What the broker announced in HELLO_OK."""
        if self._core.server is None:
            raise ConnectionLostError("not connected")
        return self._core.server

    async def _connect(self) -> None:
        deadline = time.monotonic() + self._connect_timeout
        delay = 0.05
        while True:
            try:
                self._reader, self._writer = await asyncio.wait_for(
                    asyncio.open_connection(self._host, self._port, ssl=self._tls,
                                            server_hostname=self._host if self._tls else None),
                    timeout=min(5.0, self._connect_timeout))
                break
            except (TimeoutError, OSError) as e:
                if time.monotonic() + delay > deadline:
                    raise ConnectionLostError(f"cannot connect to broker at {self._host}:{self._port}: {e}") from e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        assert self._reader is not None
        self._task = asyncio.get_running_loop().create_task(self._read_loop(self._reader))
        await self._request(self._core.hello(), HelloOk)
        subs, self._resume = self._resume, []
        for i, st in enumerate(subs):  # resume right after the last record handed out
            try:
                await self._request(self._core.subscribe(st.topic, Start.ID, st.resume_id, st.window), Subscribed)
            except ConnectionLostError:
                # _drop() kept the ones restored so far; keep the rest too for the next attempt.
                self._resume += subs[i:]
                raise

    async def _ensure(self) -> None:
        if self._closed:
            raise ConnectionLostError("client is closed")
        if self._writer is None:
            await self._connect()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        error: BaseException = ConnectionLostError("connection closed by broker")
        try:
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    break
                # Responses decoded before a closing ERROR in this same read complete their futures
                # first; only then is the connection dropped [D10].
                for rid, frame in self._core.feed(data):
                    fut = self._futs.pop(rid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(frame)
                self._arrived.set()
                if self._core.lost is not None:
                    raise self._core.lost
        except (OSError, ConnectionLostError) as e:
            error = e if isinstance(e, ConnectionLostError) else ConnectionLostError(f"receive failed: {e}")
        except asyncio.CancelledError:
            error = ConnectionLostError("client closed")
        self._drop(error)

    def _drop(self, error: BaseException) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = self._reader = None
        closed_by = self._core.closed_by_server
        if closed_by is not None and str(closed_by) not in str(error):
            error = ConnectionLostError(f"{error}: {closed_by}")
        self._resume = self._core.reset_connection() + self._resume
        futs, self._futs = self._futs, {}
        for fut in futs.values():
            if not fut.done():
                fut.set_exception(error)
        self._arrived.set()

    def _send(self, data: bytes) -> None:
        if self._writer is None:
            raise ConnectionLostError("not connected")
        self._writer.write(data)

    def _expect(self, rid: int) -> asyncio.Future[Frame]:
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._futs[rid] = fut
        return fut

    async def _await(self, fut: asyncio.Future[Frame]) -> Frame:
        try:
            return await asyncio.wait_for(fut, self._timeout)
        except TimeoutError:
            raise RequestTimeoutError(f"no answer from the broker within {self._timeout} s") from None

    async def _request(self, rid_data: tuple[int, bytes], expected: type[Frame]) -> Frame:
        rid, data = rid_data
        fut = self._expect(rid)
        self._send(data)
        return check(await self._await(fut), expected)

    async def topics(self, topic: str = "") -> list[TopicInfo]:
        """Every topic (or just ``topic``) with its retained id range."""
        async with self._lock:
            await self._ensure()
            rid, data = self._core.metadata(topic)
            fut = self._expect(rid)
            self._send(data)
            return topics_of(await self._await(fut))

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        self._closed = True
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def __aenter__(self) -> Self:
        if self._writer is None and not self._closed:
            await self._connect()
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


class AsyncPublisher(_AsyncClient):
    """asyncio twin of :class:`nanomq.Publisher`."""

    def __init__(self, address: str = "127.0.0.1:9000", *, ack: str = "durable", client_name: str = "nanomq-publisher",
                 timeout: float = 30.0, connect_timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None) -> None:
        if ack not in ACK_MODES:
            raise ValueError(f"ack must be one of {sorted(ACK_MODES)}, not {ack!r}")
        super().__init__(address, client_name=client_name, timeout=timeout, connect_timeout=connect_timeout,
                         ssl_context=ssl_context)
        self._ack = ACK_MODES[ack]
        self._compress_above: int | None = None
        self._batching = False
        self._pending: dict[str, list[bytes]] = {}
        self._pending_bytes = 0
        self._flusher: asyncio.Task[None] | None = None
        self._bg_error: BaseException | None = None

    async def publish(self, topic: str, data: bytes) -> int:
        """Publish one record; its id once acked (0 with ack none or while batching)."""
        self._raise_bg_error()
        if self._batching:
            self._pending.setdefault(topic, []).append(bytes(data))
            self._pending_bytes += len(data)
            if self._pending_bytes >= 1024 or len(self._pending[topic]) >= 256:
                await self.flush()
            return 0
        return (await self._publish_chunks(topic, [bytes(data)]))[0]

    async def publish_batch(self, topic: str, payloads: Iterable[bytes]) -> int:
        """Publish records in order (pipelined batches of ≤ 256); returns how many were acked."""
        items = [bytes(p) for p in payloads]
        if items:
            await self._publish_chunks(topic, items)
        return len(items)

    async def _publish_chunks(self, topic: str, payloads: Sequence[bytes]) -> list[int]:
        async with self._lock:
            await self._ensure()
            futs: list[tuple[asyncio.Future[Frame], int]] = []
            sent = 0
            firsts: list[int] = []
            try:
                for part in split(payloads, self.server_info.max_batch):
                    rid, data = self._core.publish(topic, self._core.encode_payloads(part, self._compress_above), self._ack)
                    if self._ack:
                        futs.append((self._expect(rid), len(part)))
                    self._send(data)
                    sent += len(part)
                if not self._ack:
                    return [0]
                for f, _ in futs:
                    firsts.append(check(await self._await(f), PublishAck).first_id)  # type: ignore[attr-defined]
                return firsts
            except ConnectionLostError as e:
                # Outcome unknown: what was sent and got no answer (acks already received are not).
                if self._ack:
                    answered = sum(n for f, n in futs if f.done() and not f.cancelled() and f.exception() is None)
                    sent = max(0, sent - answered)
                raise ConnectionLostError(e.reason, unacked=sent) from e

    async def flush(self) -> None:
        """Send what batching holds and wait for its acks."""
        self._raise_bg_error()
        pending, self._pending, self._pending_bytes = self._pending, {}, 0
        for topic, items in pending.items():
            await self._publish_chunks(topic, items)

    async def set_compression_threshold(self, nbytes: int | None) -> None:
        """LZ4-compress payloads above ``nbytes`` (None: never); NotSupportedError without LZ4."""
        if nbytes is not None:
            if nbytes < 0:
                raise ValueError("threshold must be >= 0 or None")
            await self._ensure()
            self._core.require(Capability.COMPRESSION_LZ4, "LZ4 compression")
        self._compress_above = nbytes

    async def set_batching_enabled(self, enabled: bool) -> None:
        """Coalesce publishes: flushed every 10 ms or at 1 KiB; ``publish`` then returns 0."""
        self._batching = bool(enabled)
        if not enabled:
            if self._flusher is not None:
                self._flusher.cancel()
                self._flusher = None
            await self.flush()
        elif self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.010)
            if self._pending_bytes:
                try:
                    await self.flush()
                except Exception as e:  # reported on the next call
                    self._bg_error = e

    def _raise_bg_error(self) -> None:
        if self._bg_error is not None:
            e, self._bg_error = self._bg_error, None
            raise e

    async def close(self) -> None:
        """Flush what batching holds (best effort), then close."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._pending_bytes and self._writer is not None:
            await self.flush()
        await super().close()


class AsyncSubscriber(_AsyncClient):
    """asyncio twin of :class:`nanomq.Subscriber`."""

    def __init__(self, address: str = "127.0.0.1:9000", consumer_group: str = "", *, window: int = 1024,
                 client_name: str = "nanomq-subscriber", timeout: float = 30.0, connect_timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if not 1 <= window <= 1 << 20:
            raise ValueError("window must be 1 .. 1048576 records")
        super().__init__(address, client_name=client_name, timeout=timeout, connect_timeout=connect_timeout,
                         ssl_context=ssl_context)
        self._window = window
        self.consumer_group = consumer_group

    async def _connect(self) -> None:
        await super()._connect()
        if self.consumer_group:
            try:
                self._core.require(Capability.CONSUMER_GROUPS, f"consumer group {self.consumer_group!r}")
            except ServerError:
                await self.close()
                raise

    async def subscribe(self, topic: str, *, start: str = "earliest", value: int = 0) -> bool:
        """Subscribe to ``topic`` (False if already subscribed)."""
        if start not in START_POSITIONS:
            raise ValueError(f"start must be one of {sorted(START_POSITIONS)}")
        async with self._lock:
            await self._ensure()
            if topic in self._core.subs:
                return False
            await self._request(self._core.subscribe(topic, START_POSITIONS[start], value, self._window), Subscribed)
            return True

    async def unsubscribe(self, topic: str) -> bool:
        """Stop receiving ``topic`` (False if not subscribed)."""
        async with self._lock:
            await self._ensure()
            if topic not in self._core.subs:
                return False
            await self._request(self._core.unsubscribe(topic), Unsubscribed)
            return True

    async def poll(self, timeout_us: int = 1_000_000) -> Message | None:
        """The next message within ``timeout_us`` µs, else None."""
        got = await self.poll_batch(1, timeout_us)
        return got[0] if got else None

    async def poll_batch(self, max_msgs: int = 256, timeout_us: int = 1_000_000) -> list[Message]:
        """Up to ``max_msgs`` messages, waiting up to ``timeout_us`` µs for the first; a lost
        connection is re-established and every subscription resumed after the last message
        handed out."""
        if max_msgs < 1:
            raise ValueError("max_msgs must be >= 1")
        deadline = time.monotonic() + max(0, timeout_us) / 1e6
        while True:
            if self._writer is None:
                try:
                    async with self._lock:
                        await self._ensure()
                except ConnectionLostError:
                    if self._closed or time.monotonic() >= deadline:
                        raise
                    await asyncio.sleep(0.05)
                    continue
            msgs, credits = self._core.take(max_msgs)
            if msgs:
                if credits and self._writer is not None:
                    self._writer.write(b"".join(credits))
                return msgs
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def commit(self, message: int | Message, topic: str | None = None) -> int:
        """Mark a delivered message processed; the committed position."""
        if isinstance(message, Message):
            return await self.commit_batch([message.id], message.topic)
        return await self.commit_batch([message], topic)

    async def commit_batch(self, ids: Sequence[int], topic: str | None = None) -> int:
        """Mark several delivered ids of one topic processed; the committed position."""
        if not ids:
            raise ValueError("nothing to commit")
        async with self._lock:
            await self._ensure()
            t = self._core.one_topic(topic)
            position = 0
            for rid_data in self._core.commit(t, list(ids)):
                position = (await self._request(rid_data, Committed)).position  # type: ignore[attr-defined]
            return position

    async def seek(self, message_id: int, topic: str | None = None) -> bool:
        """Deliver from ``message_id`` next; False if beyond the end of a topic."""
        return await self._seek(Start.ID, message_id, topic)

    async def seek_to_timestamp(self, timestamp_ns: int, topic: str | None = None) -> bool:
        """Deliver from the first record with timestamp ≥ ``timestamp_ns`` next."""
        return await self._seek(Start.TIMESTAMP, timestamp_ns, topic)

    async def _seek(self, start: Start, value: int, topic: str | None) -> bool:
        async with self._lock:
            await self._ensure()
            ok = True
            for t in self._core.seek_targets(topic):
                try:
                    await self._request(self._core.seek(t, start, value), SeekOk)
                except ServerError as e:
                    if e.code != ErrorCode.OUT_OF_RANGE:
                        raise
                    ok = False
            return ok
