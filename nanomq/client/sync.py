"""Blocking Publisher and Subscriber, mirroring the seed's C++ API, Pythonic where it was not.

Both drive the flows of ``nanomq.client.flows`` over a blocking socket. They are thread-safe (one
lock per client: calls from several threads take turns), context managers, and reconnect with
exponential backoff. Every wait is sliced to at most 100 ms so Ctrl-C and timeouts are honoured
promptly.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Literal, Self, TypeVar, overload

from nanomq.client import flows
from nanomq.client.flows import ClientBase, Flow, PublisherBase, SubscriberBase
from nanomq.client.message import Message
from nanomq.protocol import HelloOk, Start, TopicInfo

__all__ = ["Publisher", "Subscriber"]

T = TypeVar("T")

_SLICE = 0.1
"""Longest blocking read, in seconds: the longest a Ctrl-C or a deadline waits to be noticed."""
_READ = 1 << 20


class _SyncClient(ClientBase):
    """The blocking transport: a socket, a lock, and the loop that drives a flow over them."""

    _sock: socket.socket | None
    _lock: threading.RLock
    _closing: threading.Event
    """Set by :meth:`close` before it waits for the lock: a thread iterating stops taking it."""

    def _start(self) -> None:
        self._sock = None
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._run(self._server_info())  # the seed's clients are connected once constructed

    def _run(self, flow: Flow[T]) -> T:
        with self._lock:
            run = flows.Runner(flow)
            while run.op is not None:
                run.resume(self._perform(run.op))
            return run.result

    def _perform(self, op: flows.Op) -> flows.OpenFailed | None:
        if isinstance(op, flows.Send):
            self._send(op.data)
        elif isinstance(op, flows.Receive):
            self._receive(op)
        elif isinstance(op, flows.Open):
            return self._open(op.timeout)
        elif isinstance(op, flows.Sleep):
            time.sleep(op.seconds)
        else:
            self._hangup()
        return None

    def _open(self, timeout: float) -> flows.OpenFailed | None:
        opts = self._core.options
        try:
            sock = socket.create_connection((opts.host, opts.port), timeout=timeout)
        except OSError as e:
            return flows.OpenFailed.unreachable(opts, e)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if opts.tls is not None:
            try:
                sock = opts.tls.wrap_socket(sock, server_hostname=opts.host)
            except OSError as e:  # ssl.SSLError is an OSError
                sock.close()
                return flows.OpenFailed.tls(opts, e)
        self._sock = sock
        return None

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            return  # the connection is gone: the core knows, the flow looks
        # A whole frame may be 16 MiB: its send gets the request timeout, not one read slice.
        self._sock.settimeout(self._core.options.timeout)
        try:
            self._sock.sendall(data)
        except OSError as e:
            self._lost(f"send failed: {e}")

    def _receive(self, op: flows.Receive) -> None:
        """Read what arrives before ``op.deadline`` (one slice at most) and hand it to the core.

        With ``op.spin`` > 0, first busy-poll the socket (non-blocking reads) for up to that many
        seconds, then block: a process woken by the kernel pays ~50 µs on this kind of machine, a
        spinning one does not, at the price of a core while it spins.
        """
        sock = self._sock
        if sock is None:
            return
        timeout = op.deadline - time.monotonic()
        data: bytes | None = None
        try:
            if op.spin > 0:
                sock.settimeout(0.0)
                end = time.perf_counter() + min(op.spin, timeout)
                while data is None:
                    try:
                        data = sock.recv(_READ)
                    except (BlockingIOError, ssl.SSLWantReadError):
                        if time.perf_counter() >= end:
                            break
            if data is None:
                sock.settimeout(max(0.0005, min(timeout, _SLICE)))
                try:
                    data = sock.recv(_READ)
                except TimeoutError:
                    return
        except OSError as e:
            self._lost(f"receive failed: {e}")
            return
        if not data:
            self._lost("connection closed by broker")
        elif self._core.feed(data) is not None:
            self._hangup()

    def _lost(self, reason: str) -> None:
        self._hangup()
        self._core.connection_lost(reason)

    def _hangup(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()

    # ------------------------------------------------------------------ common API

    @property
    def server_info(self) -> HelloOk:
        """What the broker announced in HELLO_OK (capabilities and limits); connects if needed."""
        return self._run(self._server_info())

    def topics(self, topic: str = "") -> list[TopicInfo]:
        """Every topic (or just ``topic``) with its retained id range."""
        return self._run(self._topics(topic))

    def ping(self) -> float:
        """Round trip to the broker, in seconds."""
        return self._run(self._ping())

    def close(self) -> None:
        """Close the connection (idempotent). A publisher first sends what batching holds."""
        self._closing.set()
        with self._lock:
            try:
                self._run(self._before_close())
            finally:
                self._core.close()
                self._hangup()

    def __enter__(self) -> Self:
        """The client itself (it is connected already)."""
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        """:meth:`close`."""
        self.close()


class Publisher(PublisherBase, _SyncClient):
    """Publishes records to topics; connects when constructed.

    ``ack`` is the default acknowledgement mode: ``"durable"`` (fsynced before the ack; the
    default), ``"written"`` (in the broker's log, not yet synced) or ``"none"``. ``timeout``: seconds
    a request waits for its answer; ``connect_timeout``: seconds a connection may take, retries
    included. TLS: a ``tls://host:port`` address (system CAs), or ``ssl_context=`` for your own.
    """

    _flusher: threading.Thread | None
    _wake: threading.Event

    def _start(self) -> None:
        self._flusher = None
        self._wake = threading.Event()
        super()._start()

    def publish(self, topic: str, data: bytes) -> int:
        """Publish one record; returns its id once acked.

        Returns 0 (no id) with ack mode ``none``, and when batching is enabled: then the record
        is sent with the next batch (within 10 ms or once 1 KiB is pending) and :meth:`flush`
        waits for it.
        """
        return self._run(self._publish(topic, data))

    @overload
    def publish_batch(self, topic: str, payloads: Iterable[bytes], *, ids: Literal[False] = False) -> int: ...

    @overload
    def publish_batch(self, topic: str, payloads: Iterable[bytes], *, ids: Literal[True]) -> list[int]: ...

    def publish_batch(self, topic: str, payloads: Iterable[bytes], *, ids: bool = False) -> int | list[int]:
        """Publish records in order; returns how many were acked, or with ``ids=True`` their ids
        (0 for each with ack mode ``none``).

        The records go as several pipelined wire batches when they are more than the broker's
        max_batch (256) or would make a frame larger than its max_frame; each wire batch is
        stored atomically, the call as a whole is not (see the user guide). Records that
        batching holds are sent first.
        """
        return self._run(self._publish_batch(topic, payloads, ids))

    def flush(self) -> None:
        """Send whatever batching holds and wait until it is acked."""
        self._run(self._flush_now())

    def set_compression_threshold(self, nbytes: int | None) -> None:
        """LZ4-compress payloads larger than ``nbytes`` (None: never). Subscribers see the
        original bytes. Raises NotSupportedError if the broker does not accept LZ4 records."""
        self._run(self._set_compression(nbytes))

    def set_batching_enabled(self, enabled: bool) -> None:
        """Coalesce :meth:`publish` calls: a batch goes out every 10 ms or once 1 KiB is pending
        (a background thread flushes). While enabled, ``publish`` returns 0 instead of the id.
        Disabling flushes."""
        self._run(self._set_batching(enabled))
        with self._lock:
            if enabled and self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="nanomq-flush", daemon=True)
                self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._wake.wait(self._batcher.tick):
            if self._batcher.due(time.monotonic()):
                self._run(self._background_flush())

    def close(self) -> None:
        """Flush what batching holds (if still connected), then close (idempotent)."""
        try:
            super().close()
        finally:
            self._wake.set()


class Subscriber(SubscriberBase, _SyncClient):
    """Receives records of the topics it subscribes to; connects when constructed.

    Without a consumer group each subscription starts at the earliest retained record, so
    "publish, then subscribe, then poll" sees what was published. ``window`` bounds how many
    records per subscription the broker may push ahead of :meth:`poll` (credit flow control).
    ``spin_us`` busy-polls that many microseconds before blocking in each wait (lower latency,
    a core busy meanwhile). A non-empty ``consumer_group`` raises NotSupportedError when the
    broker does not announce consumer groups (the reference broker does not yet).

    ``for msg in sub`` yields messages as they arrive, waiting as long as it takes; it ends when
    the subscriber is closed.
    """

    def subscribe(self, topic: str, *, start: str = "earliest", value: int = 0) -> bool:
        """Subscribe to ``topic``; False if already subscribed. ``start``: earliest (default),
        latest, id (``value`` = first id) or timestamp (``value`` = ns since the epoch)."""
        return self._run(self._subscribe(topic, start, value))

    def unsubscribe(self, topic: str) -> bool:
        """Stop receiving ``topic``; False if not subscribed. Buffered records of it are dropped."""
        return self._run(self._unsubscribe(topic))

    def poll(self, timeout_us: int | None = None, *, timeout: float | None = None) -> Message | None:
        """The next message, waiting up to ``timeout_us`` microseconds (an int; default
        1,000,000) or ``timeout`` seconds; None when nothing arrived in time."""
        return self._run(self._poll(timeout_us, timeout))

    def poll_batch(self, max_msgs: int = 256, timeout_us: int | None = None, *,
                   timeout: float | None = None) -> list[Message]:
        """Up to ``max_msgs`` messages: whatever is buffered, else waits up to ``timeout_us``
        microseconds (default 1,000,000) or ``timeout`` seconds for the first to arrive. A lost
        connection is re-established (with backoff) and every subscription resumed after the
        last message handed out."""
        return self._run(self._poll_batch(max_msgs, timeout_us, timeout))

    def __iter__(self) -> Iterator[Message]:
        """Each message as it arrives, waiting as long as it takes; ends once the subscriber is
        closed (from another thread, say). Breaking out loses nothing."""
        while not self._closing.is_set() and (got := self._run(self._iteration_step())) is not None:
            yield from got

    def commit(self, message: int | Message, topic: str | None = None) -> int:
        """Mark a delivered message (or id) processed; returns the subscription's committed
        position (every id below it is committed). ``topic`` may be left out while one topic is
        subscribed."""
        return self._run(self._commit_one(message, topic))

    def commit_batch(self, ids: Sequence[int], topic: str | None = None) -> int:
        """Mark several delivered ids of one topic processed; returns the committed position."""
        return self._run(self._commit(ids, topic))

    def seek(self, message_id: int, topic: str | None = None) -> bool:
        """Deliver from ``message_id`` next (every subscription when ``topic`` is None).
        False when the id is beyond the end of a topic."""
        return self._run(self._seek(Start.ID, message_id, topic))

    def seek_to_timestamp(self, timestamp_ns: int, topic: str | None = None) -> bool:
        """Deliver from the first record with timestamp ≥ ``timestamp_ns`` next."""
        return self._run(self._seek(Start.TIMESTAMP, timestamp_ns, topic))
