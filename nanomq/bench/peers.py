"""The systems a run compares, behind one adapter interface, and the servers the run starts.

Every system is driven by the same workload code (:mod:`nanomq.bench.workloads`) through the
same methods, each through its own Python client:

=====================  ====================================================  =====================
system                 publish / batch / receive                              client
=====================  ====================================================  =====================
NanoMQ                 ``publish`` / ``publish_batch`` / ``poll_batch``        ``nanomq.Publisher``/``Subscriber``
Redis streams          XADD / pipeline of XADDs / XREAD BLOCK COUNT           redis-py (+ hiredis)
NATS core              PUB / PUBs + flush (PING/PONG) / subscription callback nats-py (asyncio)
JetStream              ``js.publish`` (PubAck) / ``publish_async`` × n then     nats-py (asyncio)
                       every PubAck / ordered push consumer callback
pyzmq                  PUSH ``send`` / n sends / PULL ``recv``                 pyzmq
multiprocessing.Queue  ``put`` / n puts / ``get``                             stdlib
=====================  ====================================================  =====================

Handles expose coroutines (``async def``) so one workload body serves both kinds of client:
a synchronous client's methods never suspend, and :func:`drive` runs them without an event loop
(an ``await`` of a coroutine that does not suspend costs ≈ 0.2 µs); an asyncio client runs under
``asyncio.run``.

Servers (:class:`RedisServer`, :class:`NatsServer`) are started by the run itself on a free
127.0.0.1 port with a temporary directory, and stopped by their PID; a missing binary or Python
package makes :func:`unavailable` say why, and the run skips that peer (it never substitutes a
remembered figure).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Sequence
from typing import Any, Self, TypeVar

from nanomq.bench.system import FORK, free_port

__all__ = [
    "JetStreamPeer", "MpQueuePeer", "NanoMQPeer", "NanoMQServer", "NatsCorePeer", "NatsServer", "Peer",
    "PubHandle", "RedisPeer", "RedisServer", "SubHandle", "ZmqPeer", "drive", "unavailable",
]

T = TypeVar("T")
RECV_MAX = 4096
"""Most records one receive hands back."""


def drive(coro: Coroutine[Any, Any, T], is_async: bool) -> T:
    """Run a workload coroutine: under ``asyncio.run`` for an asyncio client, else straight
    through (it must never suspend; a synchronous handle that did would be a bug)."""
    if is_async:
        return asyncio.run(coro)
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a synchronous peer's workload suspended")


class PubHandle(ABC):
    """A connected publisher of one channel (topic, stream or subject)."""

    @abstractmethod
    async def publish(self, data: bytes) -> None:
        """Publish one record; for an acked system, return once the server acknowledged it."""

    @abstractmethod
    async def publish_batch(self, payloads: Sequence[bytes]) -> None:
        """Publish records back to back (pipelined / one batch); return once all are acked, or
        for a system without acks, once they are handed to the client (or flushed, see each)."""

    async def idle(self) -> None:  # noqa: B027 - optional hook
        """Called while the workload waits for its next scheduled send: lets a client whose I/O
        runs in a task or thread get it done (asyncio clients yield, multiprocessing.Queue lets
        its feeder thread run)."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect."""


class SubHandle(ABC):
    """A connected, subscribed receiver of one channel."""

    @abstractmethod
    async def recv(self, timeout: float) -> list[bytes]:
        """Whatever has arrived (up to RECV_MAX payloads); if nothing has, wait up to
        ``timeout`` seconds for the first."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect."""


class Peer(ABC):
    """One system (and mode) under test. Created in the parent; handles are opened in the
    forked workload processes."""

    label: str = ""
    """What the tables print, e.g. "NanoMQ written" or "Redis streams"."""
    key: str = ""
    """A short identifier for the results JSON, e.g. "nanomq-written", "redis"."""
    is_async = False
    acked = True
    """publish() returns after the server acknowledged the record"""
    retains = True
    """a subscriber that joins later can read what was published before (a drain is possible)"""
    wait = "blocking"
    """How the subscriber waits for data (the wait strategy a latency figure is produced with)."""
    server_pid: int | None = None
    """The server process whose CPU a workload measures (None: no server process)."""
    _n = 0

    def new_channel(self, tag: str) -> str:
        """A fresh channel name for one run (never reused, so runs do not see each other's data)."""
        Peer._n += 1
        return f"bench-{tag}-{os.getpid()}-{Peer._n}"

    def prepare(self, channel: str) -> None:  # noqa: B027 - optional hook
        """Set the channel up before the workload's processes are forked (in the parent)."""

    def cleanup(self, channel: str) -> None:  # noqa: B027 - optional hook
        """Free what the channel holds on the server once its run is over (in the parent)."""

    @abstractmethod
    async def open_publisher(self, channel: str) -> PubHandle:
        """A connected publisher (in a workload process)."""

    @abstractmethod
    async def open_subscriber(self, channel: str) -> SubHandle:
        """A connected receiver that is subscribed from the channel's first record once this returns."""


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def unavailable(system: str) -> str | None:
    """Why ``system`` ("redis", "nats", "zmq") cannot run here, or None when it can."""
    if system == "redis":
        if shutil.which("redis-server") is None:
            return "no redis-server binary on PATH (apt-get install redis-server)"
        if not _have("redis"):
            return "Python package redis not installed (pip install 'nanomq[bench]')"
        return None
    if system == "nats":
        if shutil.which("nats-server") is None:
            return "no nats-server binary on PATH (apt-get install nats-server)"
        if not _have("nats"):
            return "Python package nats-py not installed (pip install 'nanomq[bench]')"
        return None
    if system == "zmq":
        return None if _have("zmq") else "Python package pyzmq not installed (pip install 'nanomq[bench]')"
    raise ValueError(system)


# ================================================================ servers


class _Server:
    """A server child process on 127.0.0.1 with a temporary directory; stopped by its PID."""

    name = ""
    binary = ""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = ""
        self.version = ""

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def _cmd(self, binary: str) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> Self:
        """Start on a free port and wait until it answers; RuntimeError if it does not."""
        binary = shutil.which(self.binary)
        if binary is None:
            raise RuntimeError(f"no {self.binary} on PATH")
        self.version = _binary_version(binary)
        self.dir = tempfile.mkdtemp(prefix=f"nanomq-bench-{self.binary}-")
        last = ""
        for _attempt in range(3):  # the free port may be taken between probe and bind
            with free_port() as port:
                self.port = port
            log = open(os.path.join(self.dir, "server.log"), "ab")  # noqa: SIM115 - handed to the child
            try:
                self.proc = subprocess.Popen(self._cmd(binary), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                             cwd=self.dir)
            finally:
                log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(OSError):
                    if self._ready():
                        return self
                time.sleep(0.05)
            last = self._log_tail()
            self._kill()
        self.stop()
        raise RuntimeError(f"{self.binary} did not start: {last}")

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.dir, "server.log"), "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError as e:
            return str(e)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # by its PID
                self.proc.wait()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        self._kill()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _binary_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).decode(errors="replace").strip()
    m = re.search(r"v=?(\d+\.\d+\.\d+)", text)
    return m.group(1) if m else text[:60]


class RedisServer(_Server):
    """``redis-server`` in memory (no RDB snapshots, no AOF), so its XADD acks mean "in the
    server's memory", NanoMQ's ack=written counterpart."""

    name = "Redis"
    binary = "redis-server"

    def _cmd(self, binary: str) -> list[str]:
        return [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.dir, "--daemonize", "no", "--protected-mode", "yes", "--logfile", ""]

    def _ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")


class NatsServer(_Server):
    """``nats-server -js``: NATS core plus JetStream, its store in the temporary directory."""

    name = "NATS"
    binary = "nats-server"

    def _cmd(self, binary: str) -> list[str]:
        return [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", os.path.join(self.dir, "js")]

    def _ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            if not s.recv(4096).startswith(b"INFO"):
                return False
        # JetStream may come up a moment after the port: ask it.
        return "jetstream" in self._log_tail().lower() and "ready" in self._log_tail().lower()


class NanoMQServer:
    """The NanoMQ broker under test: the installed package's ``nanomq-broker`` started by the run
    (:class:`nanomq.testing.BrokerProcess`, 127.0.0.1, a temporary data dir), or a broker already
    running at ``address`` (then its CPU is measured only if ``pid`` is given, and the fdatasync
    calibration uses ``data_dir`` if given)."""

    def __init__(self, args: Sequence[str] = (), address: str = "", pid: int | None = None,
                 data_dir: str = "") -> None:
        self.args = list(args)
        self._address = address
        self._pid = pid
        self.data_dir = data_dir
        self._tmp = ""
        self._proc: Any = None

    @property
    def address(self) -> str:
        """host:port of the broker."""
        return self._address or str(self._proc.address)

    @property
    def pid(self) -> int | None:
        """The broker's PID (None for an external broker given without one)."""
        if self._proc is not None:
            return int(self._proc.pid)
        return self._pid

    def start(self) -> NanoMQServer:
        """Start the broker (unless an address was given, or it runs already)."""
        if self._address or (self._proc is not None and self.alive()):
            return self
        from nanomq.testing import BrokerProcess

        self._tmp = tempfile.mkdtemp(prefix="nanomq-bench-broker-")
        self.data_dir = os.path.join(self._tmp, "data")
        self._proc = BrokerProcess(self.data_dir, self.args)
        try:
            self._proc.start()
        except BaseException:
            self.stop()
            raise
        return self

    def alive(self) -> bool:
        """Whether the broker this run started is still running (True for an external one)."""
        return self._proc is None or (self._proc.proc is not None and self._proc.proc.poll() is None)

    def log_tail(self, n: int = 3000) -> str:
        """The end of the started broker's log ("" for an external one)."""
        if self._proc is None:
            return ""
        try:
            with open(self._proc.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError as e:
            return str(e)

    def stop(self) -> int | None:
        """Stop the broker this run started (SIGTERM by PID) and delete its data; its exit code."""
        code = None
        if self._proc is not None:
            code = self._proc.stop()
            self._proc = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = ""
        return code


def broker_option(flag: str) -> str | None:
    """How the installed ``nanomq-broker`` takes ``flag``, from its --help: None when it has no such
    option, "" for a bare flag, else the metavar of its value (e.g. "US" for ``--busy-poll US``)."""
    import sys

    out = subprocess.run([sys.executable, "-m", "nanomq.cli.broker", "--help"], capture_output=True, timeout=60,
                         check=False)
    m = re.search(rf"^\s+{re.escape(flag)}(?:[ =](\S+))?", out.stdout.decode(errors="replace"), re.MULTILINE)
    if m is None:
        return None
    return m.group(1) or ""


# ================================================================ NanoMQ


class _NanoPub(PubHandle):
    def __init__(self, pub: Any, topic: str) -> None:
        self.pub, self.topic = pub, topic
        self._publish, self._batch = pub.publish, pub.publish_batch

    async def publish(self, data: bytes) -> None:
        self._publish(self.topic, data)

    async def publish_batch(self, payloads: Sequence[bytes]) -> None:
        self._batch(self.topic, payloads)

    async def close(self) -> None:
        self.pub.close()


class _NanoSub(SubHandle):
    def __init__(self, sub: Any) -> None:
        self.sub = sub
        self._poll = sub.poll_batch

    async def recv(self, timeout: float) -> list[bytes]:
        return [m.data for m in self._poll(RECV_MAX, int(timeout * 1e6))]

    async def close(self) -> None:
        self.sub.close()


class NanoMQPeer(Peer):
    """NanoMQ through the blocking ``nanomq.Publisher`` (``ack`` mode) and ``nanomq.Subscriber``
    (``window`` credits, ``spin_us`` busy-poll before each blocking wait)."""

    def __init__(self, address: str, ack: str, *, server_pid: int | None, spin_us: int = 0, window: int = 4096,
                 label: str = "", key: str = "", broker_wait: str = "") -> None:
        self.address, self.ack, self.spin_us, self.window = address, ack, spin_us, window
        self.server_pid = server_pid
        self.acked = ack != "none"
        self.label = label or f"NanoMQ {ack}" + (f" spin {spin_us} us" if spin_us else "")
        self.key = key or f"nanomq-{ack}" + (f"-spin{spin_us}" if spin_us else "")
        sub = f"subscriber busy-polls spin_us={spin_us} then blocks" if spin_us else "blocking subscriber"
        self.wait = sub + (f"; {broker_wait}" if broker_wait else "")

    async def open_publisher(self, channel: str) -> PubHandle:
        import nanomq

        return _NanoPub(nanomq.Publisher(self.address, ack=self.ack), channel)

    async def open_subscriber(self, channel: str) -> SubHandle:
        import nanomq

        sub = nanomq.Subscriber(self.address, window=self.window, spin_us=self.spin_us)
        sub.subscribe(channel, start="earliest")
        return _NanoSub(sub)


# ================================================================ Redis streams


class _RedisPub(PubHandle):
    def __init__(self, r: Any, key: str) -> None:
        self.r, self.key = r, key
        self._xadd = r.xadd

    async def publish(self, data: bytes) -> None:
        self._xadd(self.key, {"d": data})

    async def publish_batch(self, payloads: Sequence[bytes]) -> None:
        pipe = self.r.pipeline(transaction=False)
        xadd, key = pipe.xadd, self.key
        for d in payloads:
            xadd(key, {"d": d})
        pipe.execute()

    async def close(self) -> None:
        self.r.close()


class _RedisSub(SubHandle):
    def __init__(self, r: Any, key: str) -> None:
        self.r, self.key, self.last = r, key, b"0-0"
        self._xread = r.xread

    async def recv(self, timeout: float) -> list[bytes]:
        res = self._xread({self.key: self.last}, count=RECV_MAX, block=max(1, int(timeout * 1000)))
        if not res:
            return []
        entries = res[0][1]
        self.last = entries[-1][0]
        return [f[b"d"] for _, f in entries]

    async def close(self) -> None:
        self.r.close()


class RedisPeer(Peer):
    """Redis streams through redis-py (with hiredis when installed): XADD, pipelined XADDs,
    XREAD BLOCK from the last id seen."""

    label = "Redis streams"
    key = "redis"
    wait = "blocking (redis-py socket, XREAD BLOCK)"

    def __init__(self, server: RedisServer) -> None:
        self.port = server.port
        self.server_pid = server.pid

    def _client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)

    def cleanup(self, channel: str) -> None:
        r = self._client()
        try:
            r.delete(channel)
        finally:
            r.close()

    async def open_publisher(self, channel: str) -> PubHandle:
        return _RedisPub(self._client(), channel)

    async def open_subscriber(self, channel: str) -> SubHandle:
        r = self._client()
        r.ping()
        return _RedisSub(r, channel)

    @staticmethod
    def client_info() -> dict[str, Any]:
        """redis-py's version and whether it parses with hiredis."""
        try:
            from redis.utils import HIREDIS_AVAILABLE
        except ImportError:
            HIREDIS_AVAILABLE = False  # noqa: N806
        return {"redis-py": _version("redis"), "hiredis": _version("hiredis"), "hiredis_used": bool(HIREDIS_AVAILABLE)}


# ================================================================ NATS core and JetStream


class _Inbox:
    """Messages a nats-py subscription callback hands over, and an event for the waiting side."""

    def __init__(self) -> None:
        self.buf: list[bytes] = []
        self.event = asyncio.Event()

    async def cb(self, msg: Any) -> None:
        self.buf.append(msg.data)
        self.event.set()

    async def take(self, timeout: float) -> list[bytes]:
        if not self.buf:
            self.event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.event.wait(), timeout)
        out, self.buf = self.buf[:RECV_MAX], self.buf[RECV_MAX:]
        return out


class _NatsPub(PubHandle):
    def __init__(self, nc: Any, subject: str) -> None:
        self.nc, self.subject = nc, subject

    async def publish(self, data: bytes) -> None:
        await self.nc.publish(self.subject, data)

    async def publish_batch(self, payloads: Sequence[bytes]) -> None:
        pub, subject = self.nc.publish, self.subject
        for d in payloads:
            await pub(subject, d)
        await self.nc.flush()  # PING/PONG: the server has read every PUB before it

    async def idle(self) -> None:
        await asyncio.sleep(0)  # nats-py writes from a flusher task: let it run
        await asyncio.sleep(0)

    async def close(self) -> None:
        await self.nc.flush()
        await self.nc.close()


class _NatsSub(SubHandle):
    def __init__(self, nc: Any, inbox: _Inbox) -> None:
        self.nc, self.inbox = nc, inbox

    async def recv(self, timeout: float) -> list[bytes]:
        return await self.inbox.take(timeout)

    async def close(self) -> None:
        await self.nc.close()


class _NatsBase(Peer):
    is_async = True
    wait = "blocking (nats-py asyncio, epoll)"

    def __init__(self, server: NatsServer) -> None:
        self.url = f"nats://127.0.0.1:{server.port}"
        self.server_pid = server.pid

    def new_channel(self, tag: str) -> str:
        return super().new_channel(tag).replace("-", "_")

    async def _connect(self) -> Any:
        import nats

        return await nats.connect(self.url, allow_reconnect=False, pending_size=64 << 20)


class NatsCorePeer(_NatsBase):
    """NATS core (no persistence, no acks): PUB, and a subscription whose callback collects."""

    label = "NATS core"
    key = "nats"
    acked = False
    retains = False

    async def open_publisher(self, channel: str) -> PubHandle:
        return _NatsPub(await self._connect(), channel)

    async def open_subscriber(self, channel: str) -> SubHandle:
        nc = await self._connect()
        inbox = _Inbox()
        await nc.subscribe(channel, cb=inbox.cb, pending_msgs_limit=-1, pending_bytes_limit=-1)
        await nc.flush()  # the server has the subscription before the publisher starts
        return _NatsSub(nc, inbox)


class _JsPub(PubHandle):
    def __init__(self, nc: Any, subject: str) -> None:
        self.nc, self.subject = nc, subject
        self.js = nc.jetstream()

    async def publish(self, data: bytes) -> None:
        await self.js.publish(self.subject, data)

    async def publish_batch(self, payloads: Sequence[bytes]) -> None:
        pub, subject = self.js.publish_async, self.subject
        futs = [await pub(subject, d) for d in payloads]
        await asyncio.gather(*futs)

    async def idle(self) -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def close(self) -> None:
        await self.nc.close()


class JetStreamPeer(_NatsBase):
    """NATS JetStream, file storage (the server syncs it on its own interval, 2 min by default:
    a PubAck means "in the server's store", like NanoMQ's ack=written): ``js.publish`` waits for
    each PubAck; batches are ``publish_async`` then every PubAck; an ordered push consumer."""

    label = "JetStream"
    key = "jetstream"

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(coro)

    def prepare(self, channel: str) -> None:
        async def go() -> None:
            nc = await self._connect()
            try:
                await nc.jetstream().add_stream(name=channel, subjects=[channel])
            finally:
                await nc.close()

        self._run(go())

    def cleanup(self, channel: str) -> None:
        async def go() -> None:
            nc = await self._connect()
            try:
                await nc.jetstream().delete_stream(channel)
            finally:
                await nc.close()

        self._run(go())

    async def open_publisher(self, channel: str) -> PubHandle:
        return _JsPub(await self._connect(), channel)

    async def open_subscriber(self, channel: str) -> SubHandle:
        nc = await self._connect()
        inbox = _Inbox()
        await nc.jetstream().subscribe(channel, cb=inbox.cb, ordered_consumer=True, pending_msgs_limit=-1,
                                       pending_bytes_limit=-1)
        await nc.flush()
        return _NatsSub(nc, inbox)


def nats_client_info() -> dict[str, Any]:
    """nats-py's version."""
    return {"nats-py": _version("nats-py")}


# ================================================================ brokerless peers


class _ZmqPub(PubHandle):
    def __init__(self, ctx: Any, sock: Any) -> None:
        self.ctx, self.sock = ctx, sock
        self._send = sock.send

    async def publish(self, data: bytes) -> None:
        self._send(data)

    async def publish_batch(self, payloads: Sequence[bytes]) -> None:
        send = self._send
        for d in payloads:
            send(d)

    async def close(self) -> None:
        self.sock.close(linger=5000)
        self.ctx.term()


class _ZmqSub(SubHandle):
    def __init__(self, ctx: Any, sock: Any) -> None:
        import zmq

        self.ctx, self.sock = ctx, sock
        self._recv = sock.recv
        self._noblock = zmq.NOBLOCK
        self._again = zmq.Again

    async def recv(self, timeout: float) -> list[bytes]:
        if not self.sock.poll(int(timeout * 1000)):
            return []
        out = [self._recv()]
        with contextlib.suppress(self._again):
            while len(out) < RECV_MAX:
                out.append(self._recv(self._noblock))
        return out

    async def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class ZmqPeer(Peer):
    """pyzmq PUSH/PULL over tcp://127.0.0.1 (no server, no acks, no persistence); the high-water
    marks (100,000) hold a fast sender back."""

    label = "pyzmq PUSH/PULL"
    key = "zmq"
    acked = False
    retains = False
    wait = "blocking (zmq poll)"

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}

    def prepare(self, channel: str) -> None:
        with free_port() as port:
            self.ports[channel] = port

    async def open_publisher(self, channel: str) -> PubHandle:
        import zmq

        ctx = zmq.Context()
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, 100_000)
        s.connect(f"tcp://127.0.0.1:{self.ports[channel]}")
        return _ZmqPub(ctx, s)

    async def open_subscriber(self, channel: str) -> SubHandle:
        import zmq

        ctx = zmq.Context()
        s = ctx.socket(zmq.PULL)
        s.setsockopt(zmq.RCVHWM, 100_000)
        s.bind(f"tcp://127.0.0.1:{self.ports[channel]}")
        return _ZmqSub(ctx, s)


class _MpqPub(PubHandle):
    def __init__(self, q: Any) -> None:
        self.q = q
        self._put = q.put

    async def publish(self, data: bytes) -> None:
        self._put(data)

    async def publish_batch(self, payloads: Sequence[bytes]) -> None:
        put = self._put
        for d in payloads:
            put(d)

    async def idle(self) -> None:
        time.sleep(0)  # releases the GIL: Queue's feeder thread writes to the pipe meanwhile

    async def close(self) -> None:
        self.q.close()
        self.q.join_thread()


class _MpqSub(SubHandle):
    def __init__(self, q: Any) -> None:
        self.q = q

    async def recv(self, timeout: float) -> list[bytes]:
        try:
            out = [self.q.get(timeout=timeout)]
        except queue.Empty:
            return []
        get = self.q.get_nowait
        with contextlib.suppress(queue.Empty):
            while len(out) < RECV_MAX:
                out.append(get())
        return out

    async def close(self) -> None:
        pass


class MpQueuePeer(Peer):
    """multiprocessing.Queue between two processes (bounded at 10,000 items, so a fast sender waits)."""

    label = "multiprocessing.Queue"
    key = "mpqueue"
    acked = False
    retains = False
    wait = "blocking (pipe read)"

    def __init__(self) -> None:
        self.queues: dict[str, Any] = {}

    def prepare(self, channel: str) -> None:
        self.queues[channel] = FORK.Queue(maxsize=10_000)

    def cleanup(self, channel: str) -> None:
        q = self.queues.pop(channel, None)
        if q is not None:
            q.close()
            q.cancel_join_thread()

    async def open_publisher(self, channel: str) -> PubHandle:
        return _MpqPub(self.queues[channel])

    async def open_subscriber(self, channel: str) -> SubHandle:
        return _MpqSub(self.queues[channel])
