"""One client connection: decode requests, act on them, answer in order, push deliveries.

Theory of operation
-------------------
A :class:`Connection` never sees the broker: everything it needs (what HELLO_OK announces, the
topic directory, its per-connection limits, and the broker's admit/forget callbacks) comes in one
:class:`ConnectionContext`, which the broker's protocol factory hands to every connection. Its
session and its writing side are explicit states (:mod:`nanomq.broker.state`), and so is each
subscription's.

``data_received`` feeds the shared sans-IO decoder and handles complete frames on the event loop
(the log calls it makes are short C calls; the slow ones run in worker threads: fsync through
:class:`~nanomq.broker.topics.Topic`, topic creation through the registry's creation threads), but
at most one *turn* of them per callback: a
turn is ``_TURN_BYTES`` of input through the C data plane and ``_TURN_FRAMES`` frames through the
codec. Frames left over wait in the decoder; the connection stops reading its socket and queues
for more turns with the broker's :class:`Turns`, which gives every queued connection one turn in
turn, for at most ``_ROUND_S`` per loop iteration, before the loop polls again. A client that
pipelines requests as fast as it can therefore costs the others about one round of latency, not
the time its whole backlog takes ([NMQ-6.2-4]).

Responses leave in request order [NMQ-3.3-2] through a queue of slots: a request answered at once
writes directly when nothing is queued; a durable PUBLISH (appended by the C plane or the codec's
path) reserves a slot that its group-commit callback fills later, and everything behind it waits.

A PUBLISH or SUBSCRIBE that names a new topic waits for the topic to be created off the loop: the
connection stops handling its frames (and reading) at that request, and handles it again, then the
rest, once the creation is over. So no later request of the same connection is processed before
it ([NMQ-3.3-2]: a PUBLISH, SUBSCRIBE or METADATA behind it finds the topic), while every other
connection is served meanwhile.

Deliveries are pushed by ``_pump`` whenever a subscribed topic grows, credit arrives or the socket
drains. A subscription delivers only in READY, once every SUBSCRIBED / SEEK_OK it is owed has been
written (so no DELIVER overtakes one, even when two SEEKs wait behind a durable ack), never beyond
its credit, and never while the transport's buffer is above ``write_buffer_bytes``: then
``pause_writing`` stops the pump *and* stops reading the client's requests until the client drains
its socket. So a slow or malicious client costs at most about
``write_buffer_bytes`` + ``max_frame`` of memory, and everyone else keeps being served; one whose
output stays stuck for ``write_timeout_s`` is dropped (the broker's watchdog).

Frames still arriving are bounded across all connections by a :class:`FrameBudget`: a frame
larger than ``_RESERVE_OVER`` is read only once its whole size is reserved, so a crowd of clients
each sending part of a 16 MiB frame cannot make the broker hold more than the budget (plus one read
each); the others wait, unread, and a reservation always belongs to a frame that can complete.

With ``ctx.auth`` (``--auth-file``), HELLO binds the connection to a principal
(:mod:`nanomq.broker.auth`): a token not seen since the last reload is checked in a worker thread,
HELLO waiting the way a request waits for its topic's creation. Every request is then checked
against the principal's grants before anything about its topic is looked at ([NMQ-10-3],
[NMQ-10-4]), and a PUBLISH is charged to the principal's publish bucket ([NMQ-10-9]). The C data
plane does not check permissions, so only connections whose principal may publish to every topic
without a publish quota feed it (``_fast_publish``); the others take the Python path for PUBLISH
and PING (deliveries still leave through the plane: a subscription was checked when it was made).

Once the transport is closing (the peer reset the connection, or the broker closed it), nothing is
handled or written any more: asyncio logs every write to a lost connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

from nanomq._c.plane import STOP_END, STOP_FRAME, Delivery, Plane
from nanomq.broker.auth import (
    Action,
    Authenticator,
    Principal,
    Usage,
    principal_from_certificate,
    verify_hash,
)
from nanomq.broker.state import (
    CONNECTION_TRANSITIONS,
    WRITE_TRANSITIONS,
    ConnectionEvent,
    ConnectionState,
    SubscriptionState,
    WriteEvent,
    WriteState,
    next_state,
)
from nanomq.broker.subscription import Subscription
from nanomq.protocol import (
    FRAME_HEADER_SIZE,
    PROTOCOL_VERSION,
    Ack,
    Capability,
    Commit,
    Committed,
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
    Opcode,
    Ping,
    Pong,
    ProtocolError,
    Publish,
    PublishAck,
    RecordFlag,
    Seek,
    SeekOk,
    Start,
    Subscribe,
    Subscribed,
    TopicInfo,
    Unsubscribe,
    Unsubscribed,
    encode,
    frame_header,
)
from nanomq.storage import StorageError

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from nanomq.broker.metrics import BrokerStats
    from nanomq.broker.topics import Topic

__all__ = ["Connection", "ConnectionContext", "Announcement", "TopicDirectory"]

_log = logging.getLogger("nanomq.broker")

_BATCHES_PER_PUMP = 16
"""Deliveries per subscription per pump turn, so one backlog cannot monopolise the loop."""
_DELIVER_MAX_BYTES = 1 << 20
_TURN_BYTES = 32 * 1024
"""Input the C data plane takes from one connection in one turn (about 1,360 PINGs of 24 bytes); a
frame larger than this is taken whole, alone."""
_TURN_FRAMES = 16
"""Frames the codec and the Python handlers take from one connection in one turn."""
_INLINE_BYTES = 2 * 1024
"""While other connections wait for turns, a connection with more complete input than this joins
them rather than being served where its data arrives: light requests first ([NMQ-6.2-4])."""
_READ_BYTES = 256 * 1024
"""The most one read takes from a socket (asyncio's own read size), while no connection waits for
turns; while some do, a read takes at most ``_TURN_BYTES``."""
_ROUND_S = 0.0001
"""What :class:`Turns` spends on queued connections per loop iteration before the loop polls."""
_RESERVE_OVER = 64 * 1024
"""Frames larger than this are read only once the :class:`FrameBudget` has room for all of them."""
_HEADER = FRAME_HEADER_SIZE
_DEAD_SOCKET = frozenset((errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN))

# The states the hot paths compare with ``is``.
_AWAITING_HELLO, _ACTIVE = ConnectionState.AWAITING_HELLO, ConnectionState.ACTIVE
_FLOWING = WriteState.FLOWING
_READY = SubscriptionState.READY


@dataclass(frozen=True, slots=True)
class Announcement:
    """What HELLO_OK announces ([NMQ-4.1-2]), the same on every connection; the limits are also
    what the connection's decoder enforces."""

    capabilities: Capability
    max_frame: int
    max_payload: int
    max_batch: int
    server_name: str


class TopicDirectory(Protocol):
    """The topic operations a connection uses (the broker's TopicRegistry provides them)."""

    def get(self, name: str) -> Topic | None:
        """The topic called ``name``, if it exists."""

    def creating(self, name: str) -> asyncio.Future[Any] | None:
        """The future of the topic called ``name`` while it is being created (or of its deletion
        while it is being deleted: then the request is handled again, and creates it anew), else
        None."""

    def open_or_create(self, name: str) -> Topic | asyncio.Future[Any]:
        """The topic called ``name``, or, when it has to be created, a future of it (or the topic,
        created at once); LookupError at the topic limit, StorageError (at once or by the future)."""

    def __iter__(self) -> Iterator[Topic]:
        """Every topic."""


class Turns:
    """Turns for connections with a backlog of complete frames, round robin ([NMQ-6.2-4]).

    A connection queued here has stopped reading its socket. Each loop iteration, :meth:`_run`
    gives the queued connections a turn each, in order, again and again until ``round_s`` has
    passed or none is left; one that still has a backlog goes to the back. Then the loop polls
    again, so a request from any other client waits about one round."""

    __slots__ = ("_queue", "_scheduled", "round_s")

    def __init__(self, round_s: float = _ROUND_S) -> None:
        self._queue: deque[Connection] = deque()
        self._scheduled = False
        self.round_s = round_s

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, conn: Connection) -> None:
        """Queue ``conn`` for turns (it stopped reading)."""
        self._queue.append(conn)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        queue = self._queue
        deadline = time.perf_counter() + self.round_s
        while queue:
            conn = queue.popleft()
            if conn._turn():
                queue.append(conn)
            if time.perf_counter() >= deadline:
                break
        if queue:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run)


def _release_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim): a large frame's buffer,
    freed, would otherwise stay in the broker's resident set (60 closed connections that had each
    buffered 16 MB kept 368 MB)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


class FrameBudget:
    """Bytes of large frames still arriving, all connections together ([NMQ-6.2-6]).

    A connection whose next frame is larger than ``_RESERVE_OVER`` reserves the frame's whole size
    here before reading more of it; without room it stops reading and waits, in order, until a
    reservation is given back. A reservation is always for a frame that can complete, so waiting
    never deadlocks; and one frame is let in when nothing is reserved, however large it is."""

    __slots__ = ("limit", "used", "_waiting", "_trim")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: deque[tuple[Connection, int]] = deque()
        self._trim: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        """Connections waiting for room."""
        return len(self._waiting)

    def take(self, conn: Connection, n: int) -> bool:
        """Reserve ``n`` bytes for ``conn``'s frame; False (and ``conn`` waits) when there is no room."""
        if not self._waiting and (self.used == 0 or self.used + n <= self.limit):
            self.used += n
            return True
        self._waiting.append((conn, n))
        return False

    def give(self, n: int) -> None:
        """A reservation of ``n`` bytes is over (its frame arrived, or its connection went)."""
        self.used -= n
        while self._waiting:
            conn, need = self._waiting[0]
            if not conn.wants_budget(need):
                self._waiting.popleft()
                continue
            if self.used and self.used + need > self.limit:
                break
            self._waiting.popleft()
            self.used += need
            conn.budget_granted(need)
        self.freed(n)

    def freed(self, n: int) -> None:
        """``n`` bytes of frames were let go (a reservation given back, or frames handled): when
        that is 1 MiB or more, give the heap's free pages back to the system 0.5 s from now,
        unless a trim is already due. A trim is armed again by every large release after it, so
        a frame handled after one trim (it waited for its turn) is given back by the next."""
        if n >= 1 << 20:
            self.trim_soon()

    def trim_soon(self) -> None:
        """Give the heap's free pages back to the system 0.5 s from now, unless a trim is already due
        (at most one trim per 0.5 s, however many releases ask for one)."""
        if self._trim is None:
            with contextlib.suppress(RuntimeError):  # no running loop: a test driving a connection
                self._trim = asyncio.get_running_loop().call_later(0.5, self._trimmed)

    def _trimmed(self) -> None:
        self._trim = None
        _release_freed_memory()


class TopicQuota:
    """Topic creations allowed, broker-wide: a token bucket that refills at ``rate`` per second and
    holds at most ``burst`` ([NMQ-6.2-5])."""

    __slots__ = ("rate", "burst", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()

    def take(self) -> bool:
        """Whether one more topic may be created now (it uses the allowance if so)."""
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


@dataclass(frozen=True, slots=True)
class ConnectionContext:
    """Everything a :class:`Connection` needs from the broker, and nothing more. The broker makes
    one and its protocol factory hands it to every connection; a test can hand it fakes."""

    announcement: Announcement
    topics: TopicDirectory
    max_subscriptions: int
    """Subscriptions one connection may hold ([NMQ-6.2-2])."""
    write_buffer_bytes: int
    """Output buffered in the transport above which delivery and reading pause."""
    admit: Callable[[Connection], bool]
    """Called once connected: False refuses the connection (TOO_MANY_CONNECTIONS, [NMQ-6.2-1])."""
    forget: Callable[[Connection], None]
    """Called once the connection is gone."""
    plane: Plane | None = None
    """The C data plane (None: every frame through the Python handlers): it takes valid PUBLISHes
    to open topics (acking none/written ones itself, a durable one left for its sync) and PINGs
    straight from the receive buffer, and writes
    DELIVERs from the log mapping to the socket ([nanomq/_c/src/plane.h])."""
    topic_at: Callable[[int], Topic] | None = None
    """The topic the data plane numbers ``index`` (with ``plane``)."""
    turns: Turns | None = None
    """Where connections with a backlog queue for turns (None: each connection gets its own)."""
    frame_budget: FrameBudget | None = None
    """The bound on large frames still arriving, shared by every connection (None: unbounded)."""
    max_commit_gaps: int = 4096
    """Runs of ids committed out of order the connection's subscriptions keep, all together ([NMQ-4.7-5])."""
    topic_quota: TopicQuota | None = None
    """The broker-wide allowance of topic creations (None: unlimited)."""
    stats: BrokerStats | None = None
    """Where errors and ack latencies are counted for the metrics (None: not counted)."""
    auth: Authenticator | None = None
    """The principals (spec/protocol.md §10); None: no authentication, every client may do everything."""
    auth_executor: Executor | None = None
    """Where tokens are checked (one scrypt each, off the loop); None: the loop's default executor."""
    read_buffer: memoryview = field(default_factory=lambda: memoryview(bytearray(_READ_BYTES)))
    """Where every connection's socket reads land (:meth:`Connection.get_buffer`). One is enough for
    all: the loop fills it for one connection and hands it over (``buffer_updated``), which copies
    the bytes into that connection's decoder, before it reads for any other."""


@dataclass(slots=True)
class _Slot:
    """A response's place in the output order: its bytes (None until a durable ack fills it) and
    what to do once they are written."""

    data: bytes | None
    on_written: Callable[[], None] | None = None


class _Wait(Exception):
    """A request that waits for its topic to be created (or a HELLO for its token to be checked):
    handled again once ``creation`` is done."""

    def __init__(self, creation: asyncio.Future[Any]) -> None:
        super().__init__("waiting for a topic creation")
        self.creation = creation


class _Failure(Exception):
    """A request that fails with an ERROR frame (non-fatal unless ``fatal``)."""

    def __init__(self, code: ErrorCode, message: str, rule: str = "", fatal: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.rule, self.fatal = code, message, rule, fatal


class Connection(asyncio.BufferedProtocol):
    """The broker side of one client connection; everything it needs comes in ``ctx``."""

    def __init__(self, ctx: ConnectionContext) -> None:
        self._ctx = ctx
        ann = ctx.announcement
        self._decoder = Decoder("server", max_frame=ann.max_frame,
                                limits=Limits(max_payload=ann.max_payload, max_batch=ann.max_batch))
        self._transport: asyncio.Transport | None = None
        self.peer = "?"
        self.client_name = ""
        """What the client called itself in HELLO (admin API; never trusted for anything)."""
        self._state = ConnectionState.NEW
        self._write_state = WriteState.FLOWING
        self._subs: dict[int, Subscription] = {}
        self._next_sub_id = 1
        self._queue: deque[_Slot] = deque()
        self._pump_scheduled = False
        self._opened_at = time.monotonic()
        self._partial_since: float | None = None
        self._plane = ctx.plane
        self._by_topic: dict[Topic, list[Subscription]] = {}
        """The subscriptions of each subscribed topic (what that topic's listener pumps)."""
        self._wakers: dict[Topic, Callable[[], None]] = {}
        self._fd = -1
        """The socket the data plane may write to directly (-1: never, e.g. TLS)."""
        self._tls = False
        """The transport is TLS (asyncio's SSL transport: output is encrypted into OpenSSL's buffer)."""
        self._turns = ctx.turns if ctx.turns is not None else Turns()
        self._backlog = False
        """Complete frames are waiting for turns (queued with ``_turns``; reading stopped)."""
        self._reading = True
        self._budget_wait = 0
        """Bytes this connection waits to reserve for its next frame (reading stopped), or 0."""
        self._reserved = 0
        """Bytes reserved in the frame budget for the frame now arriving."""
        self._heard_at = self._opened_at
        self._stalled_since: float | None = None
        self._gaps = 0
        """Runs of ids committed out of order, over all subscriptions ([NMQ-4.7-5])."""
        self._waiting: Frame | None = None
        """The request waiting for its topic to be created (nothing after it is handled; reading stopped)."""
        self._principal: Principal | None = None
        """Who this connection acts for, from HELLO on (always None without ``ctx.auth``)."""
        self._usage: Usage | None = None
        """The principal's quotas in use; set once this connection counts among its connections."""
        self._fast_publish = True
        """PUBLISH (and PING) may take the C data plane: no auth, or a principal that may publish
        to every topic without a publish quota (the plane does not check permissions)."""
        self._verifying: asyncio.Future[tuple[int, str | None]] | None = None
        """HELLO's token being checked in a worker thread."""
        self._token: bytes | None = None
        """The token that proved the principal (None: a certificate did), kept in memory only, so
        that a reload that changes the principal's stored hash can check it again ([NMQ-10-6])."""

    def _move(self, event: ConnectionEvent) -> None:
        self._state = next_state(CONNECTION_TRANSITIONS, self._state, event)

    # ------------------------------------------------------------------ what the broker sees

    @property
    def state(self) -> ConnectionState:
        """Where the connection is (:mod:`nanomq.broker.state`)."""
        return self._state

    @property
    def awaiting_hello(self) -> bool:
        """Connected, and HELLO not received yet."""
        return self._state is _AWAITING_HELLO

    @property
    def opened_at(self) -> float:
        """When the connection was made (``time.monotonic()``)."""
        return self._opened_at

    @property
    def partial_since(self) -> float | None:
        """When the frame now being received began arriving (None: no partial frame; a connection
        that waits for room in the frame budget is not late: the broker keeps it waiting)."""
        return None if self._budget_wait or self._waiting is not None else self._partial_since

    @property
    def idle_since(self) -> float | None:
        """Since when the connection has been idle: no frame from the client, none arriving (the
        frame timeout covers that), no subscription, no answer owed (None: it is not idle)."""
        if (self._subs or self._queue or self._state is not _ACTIVE or self._decoder.buffered
                or self._waiting is not None):
            return None
        return self._heard_at

    @property
    def stalled_since(self) -> float | None:
        """Since when the output has been stuck above the write buffer limit (None: it flows)."""
        return self._stalled_since

    def drop(self, reason: str) -> None:
        """Drop the connection at once, without an ERROR: its output is stuck, so one would never
        arrive (the watchdog, for a client that does not read). Buffered output is discarded."""
        if self._transport is None or (self._state is not _ACTIVE and self._state is not _AWAITING_HELLO):
            return
        _log.info("dropping %s: %s", self.peer, reason)
        self._move(ConnectionEvent.FATAL)
        sock = self._transport.get_extra_info("socket")
        if sock is not None:  # reset, so that the kernel does not go on sending what it holds either
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()

    def describe(self) -> dict[str, object]:
        """This connection as the admin API shows it (spec/admin.md, ``Connection``)."""
        now = time.monotonic()
        transport = self._transport
        return {
            "peer": self.peer,
            "principal": self._principal.name if self._principal is not None else None,
            "client_name": self.client_name,
            "state": self._state.value,
            "write_state": self._write_state.value,
            "tls": self._tls,
            "age_s": round(now - self._opened_at, 3),
            "idle_s": round(now - self._heard_at, 3),
            "buffered_in_bytes": self._decoder.buffered,
            "buffered_out_bytes": transport.get_write_buffer_size() if transport is not None else 0,
            "subscriptions": [
                {"sub_id": sub.sub_id, "topic": sub.topic.name, "state": sub.state.value, "next_id": sub.next_id,
                 "committed": sub.committed, "credit": sub.credit}
                for sub in self._subs.values()],
        }

    def topic_deleted(self, topic: Topic) -> None:
        """``topic`` is being deleted ([NMQ-ADM-3-5]): a connection holding a subscription to it
        is told so and closed (protocol v1 has no way to end one subscription from the server's
        side, as for damaged records, [NMQ-S9-7])."""
        subs = self._by_topic.get(topic)
        if subs:
            ids = ", ".join(str(s.sub_id) for s in subs)
            self._fatal(ErrorCode.UNKNOWN_TOPIC, f"topic {topic.name!r} was deleted by the operator: subscription "
                        f"{ids} cannot go on", "NMQ-ADM-3-5")

    def subscription_positions(self) -> Iterator[tuple[str, int]]:
        """(topic name, next id to deliver) of each live subscription (the metrics' lag)."""
        for sub in self._subs.values():
            yield sub.topic.name, sub.next_id

    def close(self, code: ErrorCode = ErrorCode.SHUTTING_DOWN, message: str = "broker is shutting down",
              rule: str = "") -> None:
        """Close from the broker's side (shutdown, watchdog): ERROR, then close. No-op once closing.
        ``rule``: the rule the client broke, if it broke one (a shutdown breaks none)."""
        self._fatal(code, message, rule)

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
        self._transport = transport
        self._move(ConnectionEvent.MADE)
        self.peer = str(transport.get_extra_info("peername"))
        transport.set_write_buffer_limits(high=self._ctx.write_buffer_bytes)
        sock = transport.get_extra_info("socket")
        self._tls = transport.get_extra_info("sslcontext") is not None
        if self._plane is not None and sock is not None and not self._tls:
            self._fd = sock.fileno()
        if not self._ctx.admit(self):
            self._fatal(ErrorCode.TOO_MANY_CONNECTIONS, "connection limit reached", "NMQ-6.2-1")

    def connection_lost(self, exc: Exception | None) -> None:
        self._move(ConnectionEvent.LOST)
        if self._usage is not None:
            self._usage.connections -= 1
            self._usage = None
        for sub in self._subs.values():
            self._detach(sub)
            sub.end()
        self._subs.clear()
        self._queue.clear()
        self._decoder = Decoder("server")  # drop what was buffered now, not when the protocol goes
        self._release_budget()
        self._ctx.forget(self)

    def pause_writing(self) -> None:
        self._write_state = next_state(WRITE_TRANSITIONS, self._write_state, WriteEvent.PAUSE)
        self._stalled_since = time.monotonic()
        self._update_reading()
        budget = self._ctx.frame_budget
        if self._tls and budget is not None:
            # Before a TLS connection's output pauses, OpenSSL has grown its outgoing buffer up to
            # the write limit by reallocating (a larger block, copy, free the old one); glibc keeps
            # the freed blocks resident, 5-12 MiB more per stalled connection than the buffer
            # itself (the kit's resources.slow-consumer under TLS). Give them back soon.
            budget.trim_soon()

    def resume_writing(self) -> None:
        self._write_state = next_state(WRITE_TRANSITIONS, self._write_state, WriteEvent.RESUME)
        self._stalled_since = None
        if self._live():
            self._update_reading()
            self._schedule_pump()

    def _live(self) -> bool:
        """Open, and the transport not closing (once it is, nothing is handled or written)."""
        return ((self._state is _ACTIVE or self._state is _AWAITING_HELLO) and self._transport is not None
                and not self._transport.is_closing())

    def _update_reading(self) -> None:
        """Read the socket unless the output is stuck, a backlog waits for turns, the next frame
        waits for room in the frame budget, or a request waits for its topic to be created."""
        transport = self._transport
        if transport is None:
            return
        want = (self._write_state is _FLOWING and not self._backlog and not self._budget_wait and self._live()
                and self._waiting is None)
        if want is not self._reading:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the next read goes: the shared read buffer, all of it, or one turn's worth while
        other connections wait for turns. So a read never takes more from one client than a turn
        when others wait: twenty flooders resuming at once cost the others twenty short reads,
        not twenty reads of 256 KiB and their copies ([NMQ-6.2-4])."""
        buf = self._ctx.read_buffer
        return buf[:_TURN_BYTES] if len(self._turns) else buf

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were read into :meth:`get_buffer`'s buffer."""
        self.data_received(self._ctx.read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """Bytes from the client (also called directly with what TLS delivered before the hand-over);
        ``data`` is copied into the decoder and not kept."""
        if not self._live():
            return
        self._decoder.feed(data)
        if self._backlog or self._waiting is not None:  # a read under way when reading stopped: it waits
            return
        if len(self._turns) and self._decoder.buffered > _INLINE_BYTES and self._complete_frame_buffered():
            # More than a few requests while others wait for turns: most likely a client pipelining
            # as fast as it can (a flooder resumed after its backlog drained). It joins the queue
            # rather than taking a turn here, ahead of every client that just sent something: with
            # twenty flooders resuming in one loop iteration, twenty turns taken here could hold a
            # lone PING for twenty turns ([NMQ-6.2-4]). A request of a few KiB is still handled at once.
            self._queue_for_turns()
            return
        self._work()
        if self._live() and self._waiting is None:
            if self._complete_frame_buffered():
                self._queue_for_turns()
            self._account()

    def _queue_for_turns(self) -> None:
        self._backlog = True
        self._update_reading()
        self._turns.add(self)

    def _turn(self) -> bool:
        """One turn for a queued connection (:class:`Turns`); whether it stays queued."""
        if not self._live():
            self._backlog = False
            return False
        self._work()
        if self._live() and self._waiting is None and self._complete_frame_buffered():
            return True
        self._backlog = False
        if self._live():
            if self._waiting is None:
                self._account()
            self._update_reading()
        return False

    def _complete_frame_buffered(self) -> bool:
        d = self._decoder
        n = d.buffered
        return n >= _HEADER and d.pending_frame_size <= n

    def _work(self) -> None:
        """Handle the buffered frames, at most one turn of them ([NMQ-6.2-4]); the memory of large
        ones handled goes back to the system soon after ([NMQ-6.2-6], :meth:`FrameBudget.freed`)."""
        buffered = self._decoder.buffered
        self._work_frames()
        budget = self._ctx.frame_budget
        if budget is not None:  # the frames handled are garbage now (a fatal error dropped the rest)
            budget.freed(buffered - self._decoder.buffered)

    def _work_frames(self) -> None:
        decoder = self._decoder
        completed = False
        plane = self._plane
        frames = taken = 0
        while frames < _TURN_FRAMES and taken < _TURN_BYTES and self._live():
            # The C fast path takes the hot frames at the head of the buffer while no answer is
            # waiting in the queue (its answers go out at once, so order holds, [NMQ-3.3-2]);
            # whatever it leaves, valid or not, the codec decodes below, one frame at a time.
            if plane is not None and self._state is _ACTIVE and self._fast_publish and not self._queue and decoder.buffered:
                used, cut = self._fast(plane, _TURN_BYTES - taken)
                if used:
                    completed = True
                    taken += used
                    if taken >= _TURN_BYTES or not self._live():
                        break
                    if cut and self._complete_frame_buffered():
                        # The plane stopped at the turn's byte limit, inside the next frame: the
                        # turn is spent. Decoding that frame here would answer one of the plane's
                        # frames through the Python handlers (a write of its own per turn: a
                        # fifth of a PING flood's cost); it is the next turn's first frame.
                        break
            before = decoder.buffered
            try:
                frame = decoder.next_frame()
            except ProtocolError as e:
                completed = True
                frames += 1
                if e.fatal or self._state is _AWAITING_HELLO:
                    self._fatal(e.code, e.message, e.rule)
                    return
                self._respond_error(e.request_id, e.code, e.message, e.rule)
                continue
            if frame is None:
                break
            completed = True
            frames += 1
            taken += before - decoder.buffered
            try:
                self._dispatch(frame)
            except _Wait as w:  # nothing after it is handled until its topic exists
                self._wait_for_topic(frame, w.creation)
                break
            except _Failure as f:
                if f.fatal:
                    self._fatal(f.code, f.message, f.rule)
                    return
                self._respond_error(frame.request_id, f.code, f.message, f.rule)
            except Exception:  # a bug must not take the broker down with it [NMQ-8-4]
                _log.exception("internal error handling %s from %s", type(frame).__name__, self.peer)
                self._fatal(ErrorCode.INTERNAL, "internal server error", "NMQ-8-4")
                return
        if completed:
            self._heard_at = time.monotonic()
        if decoder.buffered == 0 or self._complete_frame_buffered():
            self._partial_since = None  # complete frames waiting for a turn are not late
        elif completed or self._partial_since is None:
            self._partial_since = self._heard_at if completed else time.monotonic()

    def _wait_for_topic(self, frame: Frame, creation: asyncio.Future[Any]) -> None:
        """Stop handling (and reading) at ``frame`` until the topic it names has been created."""
        self._waiting = frame
        self._partial_since = None  # what the client sends meanwhile is not late: the broker holds it
        # Any frame-budget reservation is kept: it is this frame's, still held in memory until it
        # has been handled ([NMQ-6.2-6]); _account gives it back once it has.
        self._update_reading()
        creation.add_done_callback(partial(self._topic_ready, frame))

    def _topic_ready(self, frame: Frame, creation: asyncio.Future[Any]) -> None:
        """The creation ``frame`` waited for is over (on the loop, after the registry took the
        topic): handle ``frame`` again, or answer the creation's failure; then the frames behind it."""
        exc = None if creation.cancelled() else creation.exception()  # retrieved, whoever is left to answer
        if self._waiting is not frame:
            return
        self._waiting = None
        if not self._live() or creation.cancelled():  # gone, or the broker is stopping
            return
        self._heard_at = time.monotonic()
        try:
            if exc is not None:
                raise exc
            self._dispatch(frame)
        except _Wait as w:  # cannot happen (the topic exists now), but waiting again is correct
            self._wait_for_topic(frame, w.creation)
            return
        except _Failure as f:
            if f.fatal:
                self._fatal(f.code, f.message, f.rule)
                return
            self._respond_error(frame.request_id, f.code, f.message, f.rule)
        except StorageError as e:  # the creation failed, as get_or_create's callers were told before
            self._respond_error(frame.request_id, ErrorCode.STORAGE_ERROR, str(e), "NMQ-SEM-3-4")
        except Exception:  # a bug must not take the broker down with it [NMQ-8-4]
            _log.exception("internal error handling %s from %s", type(frame).__name__, self.peer)
            self._fatal(ErrorCode.INTERNAL, "internal server error", "NMQ-8-4")
            return
        if not self._live():
            return
        if self._complete_frame_buffered():  # the frames behind it, in turns like any backlog
            self._queue_for_turns()
            return
        if self._decoder.buffered:
            self._partial_since = self._heard_at
        self._account()
        self._update_reading()

    def _account(self) -> None:
        """Reserve room in the frame budget for a large frame now arriving, or give it back."""
        budget = self._ctx.frame_budget
        if budget is None or self._budget_wait:
            return
        d = self._decoder
        need = 0
        if d.buffered >= 4 and not self._complete_frame_buffered():
            size = d.pending_frame_size
            if size > _RESERVE_OVER:
                need = min(size, self._ctx.announcement.max_frame)
        if need == self._reserved:
            return
        self._release_budget()
        if need:
            if budget.take(self, need):
                self._reserved = need
            else:
                self._budget_wait = need
                self._update_reading()

    def _release_budget(self) -> None:
        budget = self._ctx.frame_budget
        self._budget_wait = 0
        if budget is not None and self._reserved:
            n, self._reserved = self._reserved, 0
            budget.give(n)

    def wants_budget(self, n: int) -> bool:
        """Whether this connection still waits for ``n`` bytes of frame budget (:class:`FrameBudget`)."""
        return self._budget_wait == n and self._live()

    def budget_granted(self, n: int) -> None:
        """Room for its next frame: read on (the frame timeout counts from now)."""
        self._budget_wait = 0
        self._reserved = n
        self._partial_since = time.monotonic()
        self._update_reading()

    def _fast(self, plane: Plane, limit: int) -> tuple[int, bool]:
        """Run the data plane over the head of the receive buffer, about ``limit`` bytes of it (a
        first frame larger than that whole); the bytes it took, and whether it stopped only
        because ``limit`` cut the next frame (not at a frame it leaves to the codec)."""
        decoder, transport = self._decoder, self._transport
        assert transport is not None
        started = time.perf_counter()
        took = 0
        while took < limit:
            fd = self._fd if self._write_state is _FLOWING and not transport.get_write_buffer_size() else -1
            view = decoder.pending()
            try:
                n = len(view)
                if n > limit - took:
                    first = decoder.pending_frame_size if n >= 4 else 0
                    n = max(limit - took, first)
                cut = n < len(view)
                part = view[:n] if cut else view
                try:
                    r = plane.feed(part, fd)
                finally:
                    part.release()  # every export of the buffer goes before it is resized
            finally:
                view.release()
            if not r.frames:
                return took, False
            took += r.consumed
            decoder.skip(r.consumed)
            if r.send_errno in _DEAD_SOCKET:  # the peer is gone: stop at once
                transport.abort()
                return took, False
            if r.unsent:
                transport.write(r.unsent)
            stats = self._ctx.stats
            if r.acks and stats is not None:
                stats.ack_latency["written"].observe(time.perf_counter() - started, r.acks)
            topic_at = self._ctx.topic_at
            assert topic_at is not None
            # Acked first, then delivered, as the Python path does; a durable PUBLISH (STOP_DURABLE,
            # the last frame taken) has its sync asked for before anything is delivered, and its
            # ack, with every answer after it, waits for that sync (the frames after it go to the
            # codec meanwhile).
            for index, nbytes in r.appended:
                topic_at(index).appended(nbytes)
            if r.durable is not None:
                rid, first, count, index = r.durable
                self._ack_when_durable(topic_at(index), rid, first, first + count - 1, count, started)
            for index, _ in r.appended:
                topic_at(index).notify()
            if r.durable is not None:
                return took, False
            if r.stop == STOP_END or r.stop == STOP_FRAME or not self._live() or self._state is not _ACTIVE:
                return took, cut and r.stop == STOP_END
        return took, False

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # ------------------------------------------------------------------ output

    def _write(self, data: bytes) -> None:
        if self._live():
            self._transport.write(data)  # type: ignore[union-attr]

    def _respond(self, frame: Frame, on_written: Callable[[], None] | None = None) -> None:
        """Send a response in request order (after any still-pending earlier ones)."""
        data = encode(frame)
        if not self._queue:
            self._write(data)
            if on_written is not None:
                on_written()
        else:
            self._queue.append(_Slot(data, on_written))

    def _reserve(self) -> _Slot:
        """A place in the output order for a response that is not known yet (a durable ack)."""
        slot = _Slot(None)
        self._queue.append(slot)
        return slot

    def _fill(self, slot: _Slot, frame: Frame) -> None:
        """Give a reserved slot its response; write every response now at the head of the queue."""
        if self._state is not _ACTIVE:
            return
        slot.data = encode(frame)
        queue = self._queue
        while queue and queue[0].data is not None:
            head = queue.popleft()
            self._write(head.data)  # type: ignore[arg-type]
            if head.on_written is not None:
                head.on_written()

    def _respond_error(self, request_id: int, code: ErrorCode, message: str, rule: str) -> None:
        if self._ctx.stats is not None:
            self._ctx.stats.error(code.name)
        self._respond(Error(request_id, int(code), message, rule))

    def _fatal(self, code: ErrorCode, message: str, rule: str = "") -> None:
        """Send ERROR (request_id 0) and close: the stream or the session cannot go on."""
        if self._transport is None or (self._state is not _ACTIVE and self._state is not _AWAITING_HELLO):
            return
        _log.info("closing %s: %s %s", self.peer, code.name, message)
        if self._ctx.stats is not None:
            self._ctx.stats.error(code.name)
        if not self._transport.is_closing():
            self._transport.write(encode(Error(0, int(code), message, rule)))
        self._move(ConnectionEvent.FATAL)
        self._transport.close()

    # ------------------------------------------------------------------ requests

    def _dispatch(self, frame: Frame) -> None:
        if self._state is _AWAITING_HELLO:
            if not isinstance(frame, Hello):
                raise _Failure(ErrorCode.BAD_STATE, "the first frame must be HELLO", "NMQ-4.1-1", fatal=True)
            self._on_hello(frame)
            return
        handler = _HANDLERS.get(type(frame))
        if handler is None:  # HELLO again
            raise _Failure(ErrorCode.BAD_STATE, "HELLO was already received", "NMQ-4.1-1", fatal=True)
        handler(self, frame)

    def _on_hello(self, f: Hello) -> None:
        if f.version != PROTOCOL_VERSION:
            raise _Failure(ErrorCode.UNSUPPORTED_VERSION, f"version {f.version} not supported (1 is)",
                           "NMQ-4.1-5", fatal=True)
        if self._ctx.auth is not None:
            self._authenticate(self._ctx.auth, f.auth_token)
        self._move(ConnectionEvent.HELLO)
        self.client_name = f.client_name
        ann = self._ctx.announcement
        self._respond(HelloOk(f.request_id, PROTOCOL_VERSION, int(ann.capabilities), ann.max_frame,
                              ann.max_payload, ann.max_batch, ann.server_name))

    def _authenticate(self, auth: Authenticator, token: bytes) -> None:
        """Bind the connection to a principal ([NMQ-10-1]), or fail HELLO with AUTH_FAILED. A token
        not seen since the last reload is checked in a worker thread (:class:`_Wait`): HELLO is
        handled again when that is done."""
        address = self._address()
        claimed = auth.named_by(token) if token else ""
        principal: Principal | None = None
        if self._verifying is None:
            if auth.limited(address):
                auth.refused(address)
                raise _Failure(ErrorCode.AUTH_FAILED, "too many failed authentications from this address: "
                               "try again later", "NMQ-10-11", fatal=True)
            if token:
                principal = auth.cached(token)
                if principal is None:
                    loop = asyncio.get_running_loop()
                    self._verifying = loop.run_in_executor(self._ctx.auth_executor, auth.verify, token)
                    raise _Wait(self._verifying)
                how = "token"
            else:
                transport = self._transport
                names = principal_from_certificate(transport.get_extra_info("peercert")) if transport else []
                principal = auth.by_certificate(names)
                how = "certificate"
                if principal is None:
                    auth.failed(address, "a certificate naming no principal that accepts certificates" if names
                                else "no token and no client certificate", ", ".join(names))
        else:
            generation, name = self._verifying.result()
            self._verifying = None
            how = "token"
            if name is not None:
                principal = auth.remember(generation, token, name)
                if principal is None:  # a reload came in between: check against the new principals
                    return self._authenticate(auth, token)
            else:
                auth.failed(address, "wrong token", claimed)
        if principal is None:
            raise _Failure(ErrorCode.AUTH_FAILED, "authentication failed", "NMQ-10-1", fatal=True)
        usage = auth.usage_of(principal)
        if principal.max_connections and usage.connections >= principal.max_connections:
            raise _Failure(ErrorCode.TOO_MANY_CONNECTIONS, f"principal {principal.name!r} already has its quota of "
                           f"{principal.max_connections} connections", "NMQ-10-7", fatal=True)
        usage.connections += 1
        self._usage = usage
        self._token = token if how == "token" else None
        self._set_principal(principal)
        auth.succeeded(address, principal.name, how)

    def _set_principal(self, principal: Principal) -> None:
        self._principal = principal
        self._fast_publish = principal.publishes_anywhere

    def _address(self) -> str:
        transport = self._transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)

    @property
    def principal(self) -> Principal | None:
        """The principal this connection acts for (None: not authenticated, or no auth)."""
        return self._principal

    def reauthorize(self, auth: Authenticator) -> None:
        """The principals were reloaded ([NMQ-10-6]): go on with the new permissions, or close with
        AUTH_FAILED if this connection's principal is gone, is no longer proved the same way, or
        may no longer hold one of its subscriptions."""
        old = self._principal
        if old is None or not self._live():
            return
        new = auth.principals.get(old.name)
        why = ""
        token = self._token
        if new is None:
            why = f"principal {old.name!r} was removed"
        elif token is None and not new.certificate or token is not None and not new.token_hash:
            why = f"principal {old.name!r} may no longer prove itself this way"
        else:
            lost = [s.topic.name for s in self._subs.values() if not new.allowed(s.topic.name, Action.SUBSCRIBE)]
            if lost:
                why = f"principal {old.name!r} may no longer subscribe to {lost[0]!r}"
        if why:
            self._fatal(ErrorCode.AUTH_FAILED, f"{why}: reconnect", "NMQ-10-6")
            return
        assert new is not None
        self._set_principal(new)
        if token is not None and new.token_hash != old.token_hash:
            # The stored hash changed (a new salt, or a new token): check this connection's token
            # against it, off the loop; the connection goes on meanwhile, and is closed if it fails.
            loop = asyncio.get_running_loop()
            check = loop.run_in_executor(self._ctx.auth_executor, verify_hash, new.token_hash, token)
            check.add_done_callback(partial(self._rechecked, new))

    def _rechecked(self, principal: Principal, check: asyncio.Future[bool]) -> None:
        """A reload's check of this connection's token is done: close unless it still holds."""
        ok = not check.cancelled() and check.exception() is None and check.result()
        if not ok and self._principal is principal:
            self._fatal(ErrorCode.AUTH_FAILED, f"the token of principal {principal.name!r} changed: reconnect",
                        "NMQ-10-6")

    def _allow(self, topic: str, action: Action) -> None:
        """PERMISSION_DENIED unless the principal may do ``action`` on ``topic`` ([NMQ-10-2]). The
        message names only the request's own action and topic, the same whether the topic exists
        or not ([NMQ-10-4])."""
        p = self._principal
        if p is not None and not p.allowed(topic, action):
            raise _Failure(ErrorCode.PERMISSION_DENIED, f"principal {p.name!r} may not "
                           f"{action.name.lower()} topic {topic!r}", "NMQ-10-2")  # type: ignore[union-attr]

    def _charge_publish(self, nbytes: int) -> None:
        """Take ``nbytes`` from the principal's publish allowance, or RESOURCE_LIMIT ([NMQ-10-9])."""
        usage = self._usage
        bucket = usage.bucket if usage is not None else None
        if bucket is not None and (wait := bucket.take(nbytes)):
            raise _Failure(ErrorCode.RESOURCE_LIMIT, f"publish quota of {bucket.rate:g} bytes/s exceeded: nothing "
                           f"appended; retry in {wait:.2f} s", "NMQ-10-9")

    def _on_publish(self, f: Publish) -> None:
        started = time.perf_counter()
        self._allow(f.topic, Action.PUBLISH)
        flags, has_producer = f.records.summary()
        caps = self._ctx.announcement.capabilities
        if flags & RecordFlag.LZ4 and not caps & Capability.COMPRESSION_LZ4:
            raise _Failure(ErrorCode.NOT_SUPPORTED, "LZ4 records are disabled on this broker", "NMQ-5.3-1")
        if has_producer and not caps & Capability.IDEMPOTENT:
            raise _Failure(ErrorCode.NOT_SUPPORTED, "idempotent publish is not supported", "NMQ-4.2-6")
        topic = self._topic(f.topic)
        self._charge_publish(len(f.records.data))
        try:
            first, last = topic.append(f.records.data, f.records.count)
        except StorageError as e:
            raise _Failure(ErrorCode.STORAGE_ERROR, f"append failed, nothing stored: {e}", "NMQ-SEM-3-4") from e
        if f.ack == Ack.NONE:
            topic.notify()
            return
        ack = PublishAck(f.request_id, first, f.records.count)
        if f.ack == Ack.WRITTEN:
            # Ack first, then deliver in the same turn: the publisher's answer is not delayed by
            # the delivery work, and subscribers do not wait for another loop iteration.
            self._respond(ack)
            stats = self._ctx.stats
            if stats is not None:
                stats.ack_latency["written"].observe(time.perf_counter() - started)
            topic.notify()
            return
        self._ack_when_durable(topic, f.request_id, first, last, f.records.count, started)
        topic.notify()

    def _ack_when_durable(self, topic: Topic, rid: int, first: int, last: int, count: int, started: float) -> None:
        """Answer a durable PUBLISH of ids ``first..last`` (appended, by the codec's path or the C
        plane) once a sync covers them: whatever the log's background policy, the ack waits for a
        sync that covers the batch (group commit) [NMQ-SEM-3-1], and holds its place in the output
        order meanwhile. ``started``: when the broker took the PUBLISH up (``time.perf_counter``)."""
        slot = self._reserve()

        def done(exc: BaseException | None) -> None:
            stats = self._ctx.stats
            if exc is None:
                self._fill(slot, PublishAck(rid, first, count))
                if stats is not None:
                    stats.ack_latency["durable"].observe(time.perf_counter() - started)
            else:
                if stats is not None:
                    stats.error(ErrorCode.STORAGE_ERROR.name)
                self._fill(slot, Error(rid, int(ErrorCode.STORAGE_ERROR),
                                       f"sync failed; records {first}..{last} may or may not survive: {exc}",
                                       "NMQ-SEM-3-1"))

        topic.when_durable(last, done)

    def _on_subscribe(self, f: Subscribe) -> None:
        self._allow(f.topic, Action.SUBSCRIBE)
        if f.group:
            raise _Failure(ErrorCode.NOT_SUPPORTED, "consumer groups are not supported by this broker", "NMQ-4.4-3")
        if len(self._subs) >= self._ctx.max_subscriptions:
            raise _Failure(ErrorCode.RESOURCE_LIMIT, "too many subscriptions on this connection", "NMQ-6.2-2")
        topic = self._topic(f.topic)
        start = self._resolve(topic, f.start, f.start_value)
        sub = Subscription(self._next_sub_id, topic, start, f.credit)
        self._next_sub_id += 1
        self._subs[sub.sub_id] = sub
        subs = self._by_topic.get(topic)
        if subs is None:
            # One listener per (connection, topic), over that topic's subscriptions only: an append
            # wakes just them, not every subscription of the connection.
            subs = self._by_topic[topic] = []
            wake = partial(self._on_append, subs)
            self._wakers[topic] = wake
            topic.listeners.add(wake)
        subs.append(sub)
        self._respond(Subscribed(f.request_id, sub.sub_id, topic.topic_id, start, topic.log.next_id),
                      on_written=lambda: self._announced(sub))

    def _on_unsubscribe(self, f: Unsubscribe) -> None:
        sub = self._sub(f.sub_id)
        self._gaps -= sub.gaps
        del self._subs[sub.sub_id]
        self._detach(sub)
        sub.end()
        self._respond(Unsubscribed(f.request_id))

    def _on_credit(self, f: Credit) -> None:
        self._sub(f.sub_id).add_credit(f.credit)
        self._schedule_pump()

    def _on_commit(self, f: Commit) -> None:
        sub = self._sub(f.sub_id)
        bad = [i for i in f.ids if not sub.can_commit(i)]
        if bad:
            raise _Failure(ErrorCode.INVALID_ARGUMENT,
                           f"id {bad[0]} was not delivered on subscription {sub.sub_id}", "NMQ-4.7-1")
        limit = self._ctx.max_commit_gaps
        before = sub.gaps
        position = sub.commit(f.ids, limit - (self._gaps - before))
        if position is None:
            raise _Failure(ErrorCode.RESOURCE_LIMIT, f"committing these ids would leave more than {limit} runs of "
                           "ids committed out of order on this connection: commit the ids below them first",
                           "NMQ-4.7-5")
        self._gaps += sub.gaps - before
        self._respond(Committed(f.request_id, position))

    def _on_seek(self, f: Seek) -> None:
        sub = self._sub(f.sub_id)
        start = self._resolve(sub.topic, f.start, f.value)
        self._gaps -= sub.gaps
        sub.seek(start)
        self._respond(SeekOk(f.request_id, start), on_written=lambda: self._announced(sub))

    def _on_metadata(self, f: Metadata) -> None:
        directory = self._ctx.topics
        p = self._principal
        if f.topic:
            if p is not None and not p.visible(f.topic):  # the same answer whether it exists or not [NMQ-10-4]
                raise _Failure(ErrorCode.PERMISSION_DENIED, f"principal {p.name!r} may not see topic {f.topic!r}",
                               "NMQ-10-2")
            t = directory.get(f.topic)
            if t is None:
                raise _Failure(ErrorCode.UNKNOWN_TOPIC, f"no topic {f.topic!r}", "NMQ-4.9-1")
            topics = [t]
        else:
            topics = sorted((t for t in directory if p is None or p.visible(t.name)), key=lambda t: t.name)
        self._respond(MetadataOk(f.request_id, tuple(
            TopicInfo(t.topic_id, t.name, t.log.first_id, t.log.next_id) for t in topics)))

    def _on_ping(self, f: Ping) -> None:
        self._respond(Pong(f.request_id, f.token))

    # ------------------------------------------------------------------ helpers

    def _topic(self, name: str) -> Topic:
        directory = self._ctx.topics
        topic = directory.get(name)
        if topic is not None:
            return topic
        creation = directory.creating(name)
        if creation is None:  # a new topic: the allowance counts it now, while it is being created
            p = self._principal
            usage = self._usage
            if p is not None:
                self._allow(name, Action.CREATE)
                if p.max_topics and usage is not None and usage.topics_created >= p.max_topics:
                    raise _Failure(ErrorCode.RESOURCE_LIMIT, f"topic {name!r} not created: principal {p.name!r} has "
                                   f"created its quota of {p.max_topics} topics", "NMQ-10-8")
            quota = self._ctx.topic_quota
            if quota is not None and not quota.take():
                raise _Failure(ErrorCode.RESOURCE_LIMIT, f"topic {name!r} not created: the broker creates at most "
                               f"{quota.rate:g} topics per second ({quota.burst} at once); try again later",
                               "NMQ-6.2-5")
            try:
                made = directory.open_or_create(name)
            except LookupError as e:
                raise _Failure(ErrorCode.RESOURCE_LIMIT, str(e), "NMQ-6.2-5") from e
            except StorageError as e:
                raise _Failure(ErrorCode.STORAGE_ERROR, str(e), "NMQ-SEM-3-4") from e
            if usage is not None and p is not None and self._ctx.auth is not None:
                usage.topics_created += 1
                self._ctx.auth.record_creation(p.name, name)
            if not asyncio.isfuture(made):
                return made
            if usage is not None:  # a creation that fails made nothing to count
                made.add_done_callback(partial(_uncount, usage))
            creation = made
        raise _Wait(creation)

    def _sub(self, sub_id: int) -> Subscription:
        sub = self._subs.get(sub_id)
        if sub is None:
            raise _Failure(ErrorCode.UNKNOWN_SUBSCRIPTION, f"no subscription {sub_id} on this connection", "NMQ-4.5-1")
        return sub

    def _resolve(self, topic: Topic, start: Start, value: int) -> int:
        """The id a SUBSCRIBE/SEEK start position denotes ([NMQ-4.4-2..4], semantics §4)."""
        log = topic.log
        if start == Start.EARLIEST:
            return topic.first_record_at_or_after(log.first_id)
        if start == Start.LATEST:
            return log.next_id
        if start == Start.COMMITTED:
            raise _Failure(ErrorCode.INVALID_ARGUMENT, "start 'committed' needs a consumer group", "NMQ-4.4-3")
        if start == Start.TIMESTAMP:
            return max(log.find_by_timestamp(value), log.first_id)
        if value > log.next_id:
            raise _Failure(ErrorCode.OUT_OF_RANGE, f"id {value} is beyond the topic's next id {log.next_id}", "NMQ-4.4-4")
        return topic.first_record_at_or_after(max(value, log.first_id))

    def _announced(self, sub: Subscription) -> None:
        """A SUBSCRIBED / SEEK_OK of ``sub`` was written: deliver once none it is owed is left."""
        if sub.announced():
            self._schedule_pump()

    def _detach(self, sub: Subscription) -> None:
        # The topic's listener is shared by every subscription of this connection on that topic.
        subs = self._by_topic.get(sub.topic)
        if subs is None:
            return
        subs.remove(sub)
        if not subs:
            del self._by_topic[sub.topic]
            sub.topic.listeners.discard(self._wakers.pop(sub.topic))

    # ------------------------------------------------------------------ delivery

    def _on_append(self, subs: list[Subscription]) -> None:
        """A subscribed topic grew: deliver now, in the publisher's turn of the loop, so a waiting
        subscriber gets the record without waiting for another loop iteration. Only ``subs``, the
        subscriptions of this connection on that topic, are pumped."""
        if self._state is _ACTIVE and self._write_state is _FLOWING and self._deliver_all(tuple(subs)):
            self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self._state is _ACTIVE and self._write_state is _FLOWING:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self._state is not _ACTIVE or self._write_state is not _FLOWING:
            return
        if self._deliver_all(tuple(self._subs.values())):
            self._schedule_pump()

    def _deliver_all(self, subs: tuple[Subscription, ...]) -> bool:
        """Deliver what ``subs`` have credit for, at most _BATCHES_PER_PUMP DELIVERs each; whether
        one of them has more (the caller schedules another turn, so no backlog hogs the loop)."""
        max_batch = self._ctx.announcement.max_batch
        plane = self._plane
        again = False
        for sub in subs:
            turns = 0
            while (sub.state is _READY and sub.credit > 0 and self._write_state is _FLOWING and self._state is _ACTIVE
                   and not self._transport.is_closing()):  # type: ignore[union-attr]
                if turns == _BATCHES_PER_PUMP:
                    again = True
                    break
                if plane is not None:
                    try:
                        d = self._deliver_fast(plane, sub, min(sub.credit, max_batch))
                    except StorageError as e:
                        self._damaged(sub, e)
                        return False
                    if d.count == 0:
                        if d.first_id > sub.next_id:  # retention removed what was next
                            sub.next_id = d.first_id
                            continue
                        break
                    sub.next_id = d.first_id + d.count
                    sub.credit -= d.count
                    topic = sub.topic
                    topic.touched_since_trim = True
                    topic.delivered_records += d.count
                    topic.delivered_bytes += d.nbytes
                    turns += 1
                    continue
                log = sub.topic.log
                if sub.next_id >= log.next_id:
                    break
                try:
                    r = log.read(sub.next_id, min(sub.credit, max_batch), _DELIVER_MAX_BYTES)
                except StorageError as e:
                    self._damaged(sub, e)
                    return False
                if r.count == 0:
                    if r.first_id > sub.next_id:  # retention removed what was next
                        sub.next_id = r.first_id
                        continue
                    break
                if r.first_id != sub.next_id:  # ids below first_id were retained away
                    sub.next_id = r.first_id
                self._deliver(sub.sub_id, r.data, r.count)
                topic = sub.topic
                topic.touched_since_trim = True
                topic.delivered_records += r.count
                topic.delivered_bytes += len(r.data)
                r.data.release()
                sub.next_id += r.count
                sub.credit -= r.count
                turns += 1
        return again

    def _damaged(self, sub: Subscription, exc: StorageError) -> None:
        """Damaged stored bytes met while serving [NMQ-S9-7]: never delivered, logged once; this
        subscription cannot go on, so its connection is told why and closed."""
        sub.topic.damage_found(sub.next_id, exc)
        self._fatal(ErrorCode.STORAGE_ERROR, f"topic {sub.topic.name!r}: record {sub.next_id} cannot be delivered "
                    f"on subscription {sub.sub_id}: its stored bytes are damaged ({exc})", "NMQ-S9-7")

    def _deliver_fast(self, plane: Plane, sub: Subscription, credit: int) -> Delivery:
        """One DELIVER through the data plane: written to the socket from the log mapping when the
        transport has nothing buffered, else (or for what the socket did not take) handed to the
        transport, which buffers it and applies flow control."""
        transport = self._transport
        assert transport is not None
        fd = self._fd if not transport.get_write_buffer_size() else -1
        d = plane.deliver(sub.topic.log.clog, fd, sub.sub_id, sub.next_id, credit, _DELIVER_MAX_BYTES)
        if d.send_errno in _DEAD_SOCKET:  # the peer is gone: stop at once
            transport.abort()
            return d
        for part in d.unsent:
            transport.write(part)
        return d

    def _deliver(self, sub_id: int, records: memoryview, count: int) -> None:
        """Write one DELIVER of ``count`` stored records, their bytes as they are [NMQ-4.6-3]."""
        assert self._transport is not None
        self._transport.write(frame_header(Opcode.DELIVER, 0, 8 + len(records))
                             + Deliver.prefix(sub_id, count) + records)


def _uncount(usage: Usage, creation: asyncio.Future[Topic]) -> None:
    if creation.cancelled() or creation.exception() is not None:
        usage.topics_created -= 1


_HANDLERS: dict[type[Frame], Callable[[Connection, Frame], None]] = {
    Publish: Connection._on_publish,  # type: ignore[dict-item]
    Subscribe: Connection._on_subscribe,  # type: ignore[dict-item]
    Unsubscribe: Connection._on_unsubscribe,  # type: ignore[dict-item]
    Credit: Connection._on_credit,  # type: ignore[dict-item]
    Commit: Connection._on_commit,  # type: ignore[dict-item]
    Seek: Connection._on_seek,  # type: ignore[dict-item]
    Metadata: Connection._on_metadata,  # type: ignore[dict-item]
    Ping: Connection._on_ping,  # type: ignore[dict-item]
}
