"""Blocking Publisher and Subscriber, mirroring the seed's C++ API, Pythonic where it was not.

Both are thread-safe (one lock per client: calls from several threads take turns), context
managers, and reconnect with exponential backoff. Every wait is sliced to at most 100 ms so
Ctrl-C and timeouts are honoured promptly.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Self

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

__all__ = ["Publisher", "Subscriber", "START_POSITIONS"]

_SLICE = 0.1
START_POSITIONS = {"earliest": Start.EARLIEST, "latest": Start.LATEST, "id": Start.ID, "timestamp": Start.TIMESTAMP}


class _SyncClient:
    """Socket, handshake, request/response matching and reconnection for the sync clients."""

    def __init__(self, address: str, *, client_name: str, timeout: float, connect_timeout: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.address = address
        self._host, self._port = parse_address(address)
        self._tls = tls_context(address, ssl_context)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._core = ClientCore(client_name)
        self._sock: socket.socket | None = None
        self._responses: dict[int, Frame] = {}
        self._loss = "not connected"
        """Why the last connection ended (raised for requests still waiting on it)."""
        self._pending_resubscribe: list[SubState] = []
        self._lock = threading.RLock()
        self._closed = False
        self._connect()

    # ------------------------------------------------------------------ connection

    @property
    def server_info(self) -> HelloOk:
        """What the broker announced in HELLO_OK (capabilities and limits)."""
        self._ensure()
        assert self._core.server is not None
        return self._core.server

    def _connect(self) -> None:
        """Connect and handshake, retrying with exponential backoff up to ``connect_timeout``."""
        deadline = time.monotonic() + self._connect_timeout
        delay = 0.05
        while True:
            try:
                sock = socket.create_connection((self._host, self._port), timeout=min(5.0, self._connect_timeout))
                break
            except OSError as e:
                if time.monotonic() + delay > deadline:
                    raise ConnectionLostError(f"cannot connect to broker at {self._host}:{self._port}: {e}") from e
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self._host)
            except (ssl.SSLError, OSError) as e:
                sock.close()
                raise ConnectionLostError(f"TLS handshake with {self._host}:{self._port} failed: {e}") from e
        sock.settimeout(_SLICE)
        self._sock = sock
        self._responses.clear()
        rid, data = self._core.hello()
        self._send(data)
        check(self._wait(rid, self._connect_timeout), HelloOk)
        self._on_connected()

    def _on_connected(self) -> None:
        """Hook: restore per-connection state after (re)connecting."""

    def _ensure(self) -> None:
        if self._closed:
            raise ConnectionLostError("client is closed")
        if self._sock is None:
            self._connect()

    def _lost(self, why: str, unacked: int = 0) -> ConnectionLostError:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
        closed_by = self._core.closed_by_server
        if closed_by is not None and str(closed_by) not in why:
            why = f"{why}: {closed_by}"
        self._pending_resubscribe = self._core.reset_connection()
        self._loss = why
        return ConnectionLostError(why, unacked)

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise self._lost(f"send failed: {e}") from e

    def _read_once(self, timeout: float, spin: float = 0.0) -> None:
        """Read what arrives within ``timeout`` (≤ one slice) and hand it to the core.

        With ``spin`` > 0, first busy-poll the socket (non-blocking reads) for up to that many
        seconds, then block: a process woken by the kernel pays ~50 µs on this kind of machine,
        a spinning one does not, at the price of a core while it spins.
        """
        assert self._sock is not None
        data = b""
        if spin > 0:
            self._sock.settimeout(0.0)
            end = time.perf_counter() + min(spin, timeout)
            while True:
                try:
                    data = self._sock.recv(1 << 20)
                    break
                except (BlockingIOError, ssl.SSLWantReadError):
                    if time.perf_counter() >= end:
                        break
                except OSError as e:
                    raise self._lost(f"receive failed: {e}") from e
        if not data:
            self._sock.settimeout(max(0.0005, min(timeout, _SLICE)))
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError:
                return
            except OSError as e:
                raise self._lost(f"receive failed: {e}") from e
        if not data:
            raise self._lost("connection closed by broker")
        # Responses decoded before a closing ERROR (or broken bytes) in this same read are kept:
        # _wait hands them out before it reports the loss [D10].
        for rid, frame in self._core.feed(data):
            self._responses[rid] = frame
        if self._core.lost is not None:
            raise self._lost(self._core.lost.reason) from self._core.lost

    def _wait(self, rid: int, timeout: float | None = None) -> Frame:
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        while rid not in self._responses:
            if self._sock is None:  # the connection ended after answering earlier requests
                raise ConnectionLostError(self._loss)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimeoutError(f"no answer from the broker within {self._timeout} s")
            try:
                self._read_once(remaining)
            except ConnectionLostError:
                if rid not in self._responses:
                    raise
        return self._responses.pop(rid)

    def _request(self, rid_data: tuple[int, bytes], expected: type[Frame]) -> Frame:
        rid, data = rid_data
        self._send(data)
        return check(self._wait(rid), expected)

    # ------------------------------------------------------------------ common API

    def topics(self, topic: str = "") -> list[TopicInfo]:
        """Every topic (or just ``topic``) with its retained id range."""
        with self._lock:
            self._ensure()
            rid, data = self._core.metadata(topic)
            self._send(data)
            return topics_of(self._wait(rid))

    def ping(self) -> float:
        """Round trip to the broker, in seconds."""
        with self._lock:
            self._ensure()
            t = time.perf_counter()
            rid, data = self._core.ping()
            self._send(data)
            self._wait(rid)
            return time.perf_counter() - t

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._closed = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Publisher(_SyncClient):
    """Publishes records to topics.

    ``ack`` is the default acknowledgement mode: ``"durable"`` (fsynced before the ack; the
    default), ``"written"`` (in the broker's log, not yet synced) or ``"none"``. TLS: a
    ``tls://host:port`` address (system CAs), or ``ssl_context=`` for your own.
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
    ) -> None:
        if ack not in ACK_MODES:
            raise ValueError(f"ack must be one of {sorted(ACK_MODES)}, not {ack!r}")
        self._ack = ACK_MODES[ack]
        self._compress_above: int | None = None
        self._batching = False
        self._pending: dict[str, list[bytes]] = {}
        self._pending_bytes = 0
        self._pending_since = 0.0
        self._flusher: threading.Thread | None = None
        self._bg_error: BaseException | None = None
        self._wake = threading.Event()
        super().__init__(address, client_name=client_name, timeout=timeout, connect_timeout=connect_timeout,
                         ssl_context=ssl_context)

    def publish(self, topic: str, data: bytes) -> int:
        """Publish one record; returns its id once acked.

        Returns 0 (no id) with ack mode ``none``, and when batching is enabled: then the record
        is sent with the next batch (within 10 ms or once 1 KiB is pending) and :meth:`flush`
        waits for it.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("data must be bytes")
        with self._lock:
            self._raise_bg_error()
            if self._batching:
                self._pending.setdefault(topic, []).append(bytes(data))
                if not self._pending_bytes:
                    self._pending_since = time.monotonic()
                self._pending_bytes += len(data)
                if self._pending_bytes >= 1024 or len(self._pending[topic]) >= 256:
                    self._flush_pending()
                return 0
            ids = self._publish_chunks(topic, [bytes(data)])
            return ids[0]

    def publish_batch(self, topic: str, payloads: Iterable[bytes]) -> int:
        """Publish records in order; returns how many were acked (lists over 256 go as several
        pipelined batches, acked together)."""
        items = [bytes(p) for p in payloads]
        if not items:
            return 0
        with self._lock:
            self._raise_bg_error()
            self._publish_chunks(topic, items)
            return len(items)

    def _publish_chunks(self, topic: str, payloads: Sequence[bytes]) -> list[int]:
        """Send ≤256-record batches back to back, then collect their acks: first ids."""
        self._ensure()
        chunk = self._core.server.max_batch if self._core.server else 256
        sent: list[tuple[int, int]] = []
        firsts: list[int] = []
        try:
            for part in split(payloads, chunk):
                batch = self._core.encode_payloads(part, self._compress_above)
                rid, data = self._core.publish(topic, batch, self._ack)
                self._send(data)
                sent.append((rid, len(part)))
            if self._ack == 0:
                return [0]
            for i, (rid, _) in enumerate(sent):
                try:
                    ack = check(self._wait(rid), PublishAck)
                except ServerError:
                    for later, _ in sent[i + 1 :]:  # still collect the rest so nothing is left queued
                        self._responses.pop(later, None)
                    raise
                firsts.append(ack.first_id)  # type: ignore[attr-defined]
            return firsts
        except ConnectionLostError as e:
            # Outcome unknown: what was sent and got no answer (acks already read are not counted).
            unacked = sum(n for rid, n in sent[len(firsts):] if rid not in self._responses)
            raise ConnectionLostError(e.reason, unacked=unacked) from e

    def flush(self) -> None:
        """Send whatever batching holds and wait until it is acked."""
        with self._lock:
            self._raise_bg_error()
            self._flush_pending()

    def _flush_pending(self) -> None:
        pending, self._pending, self._pending_bytes = self._pending, {}, 0
        for topic, items in pending.items():
            self._publish_chunks(topic, items)

    def set_compression_threshold(self, nbytes: int | None) -> None:
        """LZ4-compress payloads larger than ``nbytes`` (None: never). Subscribers see the
        original bytes. Raises NotSupportedError if the broker does not accept LZ4 records."""
        if nbytes is not None and nbytes < 0:
            raise ValueError("threshold must be >= 0 or None")
        with self._lock:
            if nbytes is not None:
                self._ensure()
                self._core.require(Capability.COMPRESSION_LZ4, "LZ4 compression")
            self._compress_above = nbytes

    def set_batching_enabled(self, enabled: bool) -> None:
        """Coalesce :meth:`publish` calls: a batch goes out every 10 ms or once 1 KiB is pending.
        While enabled, ``publish`` returns 0 instead of the id. Disabling flushes."""
        with self._lock:
            self._batching = bool(enabled)
            if not enabled:
                self._flush_pending()
                return
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="nanomq-flush", daemon=True)
                self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._closed and not self._wake.wait(0.002):
            if not self._pending_bytes or time.monotonic() - self._pending_since < 0.010:
                continue
            with self._lock:
                if self._closed or not self._pending_bytes:
                    continue
                try:
                    self._flush_pending()
                except BaseException as e:  # reported on the next call, never lost silently
                    self._bg_error = e

    def _raise_bg_error(self) -> None:
        if self._bg_error is not None:
            e, self._bg_error = self._bg_error, None
            raise e

    def close(self) -> None:
        """Flush what batching holds (best effort if the broker is gone), then close."""
        with self._lock:
            if not self._closed and self._pending_bytes and self._sock is not None:
                self._flush_pending()
            self._wake.set()
        super().close()


class Subscriber(_SyncClient):
    """Receives records of the topics it subscribes to.

    Without a consumer group each subscription starts at the earliest retained record, so
    "publish, then subscribe, then poll" sees what was published. ``window`` bounds how many
    records per subscription the broker may push ahead of :meth:`poll` (credit flow control).
    A non-empty ``consumer_group`` raises NotSupportedError when the broker does not announce
    consumer groups (the reference broker does not yet).
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
    ) -> None:
        if not 1 <= window <= 1 << 20:
            raise ValueError("window must be 1 .. 1048576 records")
        if not 0 <= spin_us <= 1_000_000:
            raise ValueError("spin_us must be 0 .. 1000000")
        self._window = window
        self._spin = spin_us / 1e6
        super().__init__(address, client_name=client_name, timeout=timeout, connect_timeout=connect_timeout,
                         ssl_context=ssl_context)
        self.consumer_group = consumer_group
        if consumer_group:
            try:
                self._core.require(Capability.CONSUMER_GROUPS, f"consumer group {consumer_group!r}")
            except ServerError:
                self.close()
                raise

    def _on_connected(self) -> None:
        # Resume every subscription right after the last record handed out: no gap, and records
        # received but never handed out are fetched again.
        subs, self._pending_resubscribe = self._pending_resubscribe, []
        for i, st in enumerate(subs):
            try:
                self._request(self._core.subscribe(st.topic, Start.ID, st.resume_id, st.window), Subscribed)
            except ConnectionLostError:
                # _lost() kept the ones restored so far; keep the rest too for the next attempt.
                self._pending_resubscribe += subs[i:]
                raise

    def subscribe(self, topic: str, *, start: str = "earliest", value: int = 0) -> bool:
        """Subscribe to ``topic``; False if already subscribed. ``start``: earliest (default),
        latest, id (``value`` = first id) or timestamp (``value`` = ns since the epoch)."""
        if start not in START_POSITIONS:
            raise ValueError(f"start must be one of {sorted(START_POSITIONS)}")
        with self._lock:
            self._ensure()
            if topic in self._core.subs:
                return False
            self._request(self._core.subscribe(topic, START_POSITIONS[start], value, self._window), Subscribed)
            return True

    def unsubscribe(self, topic: str) -> bool:
        """Stop receiving ``topic``; False if not subscribed. Buffered records of it are dropped."""
        with self._lock:
            self._ensure()
            if topic not in self._core.subs:
                return False
            self._request(self._core.unsubscribe(topic), Unsubscribed)
            return True

    @property
    def subscriptions(self) -> list[str]:
        """Topics currently subscribed."""
        return list(self._core.subs)

    def poll(self, timeout_us: int = 1_000_000) -> Message | None:
        """The next message, waiting up to ``timeout_us`` microseconds; None on timeout."""
        got = self.poll_batch(1, timeout_us)
        return got[0] if got else None

    def poll_batch(self, max_msgs: int = 256, timeout_us: int = 1_000_000) -> list[Message]:
        """Up to ``max_msgs`` messages: whatever is buffered, else waits up to ``timeout_us`` for
        the first to arrive. A lost connection is re-established (with backoff) and every
        subscription resumed after the last message handed out."""
        if max_msgs < 1:
            raise ValueError("max_msgs must be >= 1")
        deadline = time.monotonic() + max(0, timeout_us) / 1e6
        with self._lock:
            while True:
                if self._sock is None:
                    self._ensure()
                msgs, credits = self._core.take(max_msgs)
                if msgs:
                    if credits:
                        # On failure the messages are still ours; the next poll reconnects and resumes.
                        with contextlib.suppress(ConnectionLostError):
                            self._send(b"".join(credits))
                    return msgs
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                try:
                    self._read_once(remaining, self._spin)
                except ConnectionLostError:
                    if self._closed or time.monotonic() >= deadline:
                        raise
                    time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def commit(self, message: int | Message, topic: str | None = None) -> int:
        """Mark a delivered message processed; returns the subscription's committed position."""
        if isinstance(message, Message):
            return self.commit_batch([message.id], message.topic)
        return self.commit_batch([message], topic)

    def commit_batch(self, ids: Sequence[int], topic: str | None = None) -> int:
        """Mark several delivered ids of one topic processed; returns the committed position."""
        if not ids:
            raise ValueError("nothing to commit")
        with self._lock:
            self._ensure()
            t = self._core.one_topic(topic)
            position = 0
            for rid_data in self._core.commit(t, list(ids)):
                position = check(self._request_raw(rid_data), Committed).position  # type: ignore[attr-defined]
            return position

    def _request_raw(self, rid_data: tuple[int, bytes]) -> Frame:
        rid, data = rid_data
        self._send(data)
        return self._wait(rid)

    def seek(self, message_id: int, topic: str | None = None) -> bool:
        """Deliver from ``message_id`` next (every subscription when ``topic`` is None).
        False when the id is beyond the end of a topic."""
        return self._seek(Start.ID, message_id, topic)

    def seek_to_timestamp(self, timestamp_ns: int, topic: str | None = None) -> bool:
        """Deliver from the first record with timestamp ≥ ``timestamp_ns`` next."""
        return self._seek(Start.TIMESTAMP, timestamp_ns, topic)

    def _seek(self, start: Start, value: int, topic: str | None) -> bool:
        with self._lock:
            self._ensure()
            ok = True
            for t in self._core.seek_targets(topic):
                try:
                    self._request(self._core.seek(t, start, value), SeekOk)
                except ServerError as e:
                    if e.code != ErrorCode.OUT_OF_RANGE:
                        raise
                    ok = False
            return ok
