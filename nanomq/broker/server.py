"""The broker process: listening socket, connections, topics, timers, shutdown.

Start-up opens and recovers every topic, then listens. Shutdown (SIGTERM/SIGINT or
:meth:`Broker.stop`) stops accepting, tells every client SHUTTING_DOWN, lets durable acks that are
waiting for a sync finish, syncs every topic and closes the logs cleanly (writing the
clean-shutdown marker, so the next start scans nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from nanomq._c.plane import CAP_LZ4, Plane
from nanomq.broker.admin_api import AdminApi
from nanomq.broker.admin_http import AdminHttpServer
from nanomq.broker.auth import AuthConfigError, Authenticator
from nanomq.broker.config import BrokerConfig
from nanomq.broker.connection import (
    Announcement,
    Connection,
    ConnectionContext,
    FrameBudget,
    TopicQuota,
    Turns,
)
from nanomq.broker.loop import run_loop
from nanomq.broker.metrics import BrokerStats
from nanomq.broker.state import ConnectionState
from nanomq.broker.tls import TlsAcceptor, load_server_context
from nanomq.broker.topics import TopicRegistry
from nanomq.protocol import Capability, ErrorCode
from nanomq.storage import StorageError

__all__ = ["Broker", "BrokerLockedError", "run"]

_log = logging.getLogger("nanomq.broker")

_LAG_PROBE_S = 0.25
"""How often the event-loop lag is sampled."""


class BrokerLockedError(RuntimeError):
    """Another broker process already uses this data directory."""


class Broker:
    """A NanoMQ broker serving one data directory on one address."""

    def __init__(self, config: BrokerConfig) -> None:
        config.validate()
        self.config = config
        self.capabilities = Capability.SEEK_TIME
        if config.compression == "lz4":
            self.capabilities |= Capability.COMPRESSION_LZ4
        self._ssl: ssl.SSLContext | None = None
        if config.tls_cert is not None:
            # Loaded here, before anything else starts, so a bad certificate or key is a clear
            # start-up error (TlsConfigError, naming the file) rather than a failed handshake later.
            self._ssl = load_server_context(config.tls_cert, config.tls_key, config.tls_client_ca)
            self.capabilities |= Capability.TLS
        self.auth: Authenticator | None = None
        self._auth_executor: ThreadPoolExecutor | None = None
        if config.auth_file is not None:
            # Loaded here too: a bad file is a start-up error (AuthConfigError, naming the file).
            self.auth = Authenticator(Path(config.auth_file))
            self.auth.load()
            self.capabilities |= Capability.AUTH
            # Tokens are checked here (one scrypt each), never on the loop, and never queued
            # behind a retention run in the executor below.
            self._auth_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="nanomq-auth")
        # Retention, trimming and the final sync run here; durable acks' syncs run in the
        # registry's C sync threads.
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="nanomq-io")
        plane = None
        if config.data_plane == "c":
            caps = CAP_LZ4 if self.capabilities & Capability.COMPRESSION_LZ4 else 0
            plane = Plane(config.max_frame, config.max_payload, config.max_batch, caps)
        # New topics are created in the registry's own threads (off the loop, and never queued
        # behind a retention run in the executor above).
        self.stats = BrokerStats()
        """What the metrics count as it happens (nanomq/broker/metrics.py)."""
        self.topics = TopicRegistry(config, plane, create_threads=2, stats=self.stats)
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock_fd: int | None = None
        self._stopped = asyncio.Event()
        self.started_at = 0.0
        self.ready = False
        """Recovery is done and the broker listens (the admin API's /readyz)."""
        self.stopping = False
        self._admin: AdminHttpServer | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Lock the data directory, start the admin API (if configured), recover every topic and
        start listening."""
        data = Path(self.config.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self._lock(data)
        loop = asyncio.get_running_loop()
        if self.config.admin_port is not None:
            # First, so that /healthz answers and /readyz says "recovering" while recovery runs
            # (in a worker thread: the loop stays free for the admin API meanwhile).
            self._admin = AdminHttpServer(AdminApi(self), self.config.admin_host, self.config.admin_port)
            try:
                await self._admin.start()
            except OSError:
                self._unlock()
                raise
        t0 = time.monotonic()
        try:
            await loop.run_in_executor(self._executor, self.topics.open_all)
        except BaseException:
            if self._admin is not None:
                await self._admin.stop()
            raise
        if self.auth is not None:  # topic quotas count what each principal created, across restarts
            self.auth.open_ledger(data, (t.name for t in self.topics))
        self.stats.recovery_seconds = time.monotonic() - t0
        self.stats.recovered_topics = len(self.topics)
        self.topics.watch_syncs(loop)
        # TLS: a TlsAcceptor peeks at each new connection, upgrades TLS ones and tells plaintext
        # clients that TLS is expected (asyncio's own ssl= listener just drops them).
        connection = partial(Connection, self._connection_context())
        factory: Callable[[], asyncio.BaseProtocol] = connection
        if self._ssl is not None:
            factory = TlsAcceptor(connection, self._ssl, self.config.hello_timeout_s, self.config.max_connections)
        self._server = await loop.create_server(
            factory, self.config.host, self.config.port, reuse_address=True, backlog=1024,
        )
        self._tasks = [loop.create_task(self._watchdog()), loop.create_task(self._retention()),
                       loop.create_task(self._trim()), loop.create_task(self._loop_lag_probe())]
        self.started_at = time.monotonic()
        self.ready = True
        _log.info("recovered %d topic(s) in %.3f s", len(self.topics), self.stats.recovery_seconds)

    @property
    def topic_views(self) -> TopicRegistry:
        """Every open topic (what the metrics and the admin API read)."""
        return self.topics

    @property
    def auth_executor(self) -> ThreadPoolExecutor | None:
        """Where tokens are checked (one scrypt each, off the loop); None without authentication."""
        return self._auth_executor

    @property
    def data_dir(self) -> Path:
        """The data directory."""
        return Path(self.config.data_dir)

    @property
    def listening(self) -> bool:
        """Whether the client listener is up."""
        return self._server is not None

    @property
    def admin_address(self) -> tuple[str, int] | None:
        """The (host, port) of the admin API, or None when it is off."""
        return self._admin.address if self._admin is not None else None

    def uptime_s(self) -> float:
        """Seconds since the broker began listening (0 before)."""
        return time.monotonic() - self.started_at if self.started_at else 0.0

    async def delete_topic(self, name: str) -> None:
        """Delete a topic ([NMQ-ADM-3-5]): out of the registry and the data plane at once (requests
        naming it wait, then create it anew), every connection subscribed to it closed with
        UNKNOWN_TOPIC, durable acks already waiting for its sync answered, then its log closed and
        its directory removed in a worker thread. Raises LookupError (no such topic) or
        StorageError (nothing was removed: the topic is open again)."""
        topic = self.topics.begin_delete(name)
        failed: BaseException | None = None
        try:
            for conn in tuple(self.connections):
                conn.topic_deleted(topic)
            deadline = time.monotonic() + 10.0
            while (topic.syncing or topic.pending_durable) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            await asyncio.get_running_loop().run_in_executor(self._executor, self.topics.delete_files, topic)
        except BaseException as e:
            failed = e
            raise
        finally:
            self.topics.finish_delete(topic, failed if isinstance(failed, StorageError) else None)
        if self.auth is not None:  # its creator's topic quota is given back [NMQ-10-8]
            self.auth.topic_deleted(name)
        _log.warning("topic %s (id %d) deleted through the admin API", name, topic.topic_id)

    def connection_states(self) -> dict[str, int]:
        """Client connections by state (every state named, zero counts included)."""
        out = {s.value: 0 for s in ConnectionState}
        for conn in self.connections:
            out[conn.state.value] += 1
        return out

    def subscription_positions(self) -> dict[str, list[int]]:
        """Topic name -> next ids of its live subscriptions (the metrics' and the admin API's lag)."""
        out: dict[str, list[int]] = {}
        for conn in self.connections:
            for name, next_id in conn.subscription_positions():
                out.setdefault(name, []).append(next_id)
        return out

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound (port 0 in the config picks a free one)."""
        assert self._server is not None and self._server.sockets
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def serve_until_stopped(self) -> None:
        """Run until :meth:`stop` has completed."""
        await self._stopped.wait()

    async def stop(self) -> None:
        """Graceful shutdown: drain, sync, mark clean. Idempotent."""
        if self._server is None:
            return
        server, self._server = self._server, None
        self.ready = False
        self.stopping = True
        server.close()
        for task in self._tasks:
            task.cancel()
        # Let durable acks already waiting for a sync be answered before saying goodbye.
        deadline = time.monotonic() + 5.0
        while any(t.pending_durable for t in self.topics) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        # ... and let background syncs finish before the logs are closed under them.
        while any(t.syncing for t in self.topics) and time.monotonic() < deadline + 10:
            await asyncio.sleep(0.005)
        for conn in tuple(self.connections):
            conn.close()
        await asyncio.sleep(0)  # let transports flush what they can
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.topics.sync_all)
        self.topics.close_all(clean=True)
        if self._admin is not None:
            await self._admin.stop()
        self._executor.shutdown(wait=True)
        if self._auth_executor is not None:
            self._auth_executor.shutdown(wait=True, cancel_futures=True)
        if self.auth is not None:
            self.auth.close()
        self._unlock()
        self._stopped.set()

    # ------------------------------------------------------------------ connections

    def _connection_context(self) -> ConnectionContext:
        """What every connection is given: all it may know of this broker."""
        cfg = self.config
        return ConnectionContext(
            announcement=Announcement(self.capabilities, cfg.max_frame, cfg.max_payload, cfg.max_batch,
                                      cfg.server_name),
            topics=self.topics,
            max_subscriptions=cfg.max_subscriptions,
            write_buffer_bytes=cfg.write_buffer_bytes,
            admit=self.admit,
            forget=self.forget,
            plane=self.topics.plane,
            topic_at=self.topics.at if self.topics.plane is not None else None,
            turns=Turns(),
            frame_budget=FrameBudget(cfg.frame_buffer_bytes),
            max_commit_gaps=cfg.max_commit_gaps,
            topic_quota=TopicQuota(cfg.topic_create_rate, cfg.topic_create_burst) if cfg.topic_create_rate else None,
            stats=self.stats,
            auth=self.auth,
            auth_executor=self._auth_executor,
        )

    def reload_auth(self) -> bool:
        """Read the auth file again (SIGHUP) and apply it to every open connection without closing
        those still allowed what they use ([NMQ-10-6]). A file that does not load is logged and the
        principals stay as they were. Whether it loaded."""
        if self.auth is None:
            _log.warning("SIGHUP: nothing to reload (no --auth-file)")
            return False
        try:
            n = self.auth.load()
        except AuthConfigError as e:
            _log.error("SIGHUP: %s; the previous principals stay in force", e)
            return False
        for conn in tuple(self.connections):
            conn.reauthorize(self.auth)
        _log.info("SIGHUP: reloaded %d principal(s) from %s", n, self.auth.path)
        return True

    def admit(self, conn: Connection) -> bool:
        """Register a new connection; False when over the connection limit [NMQ-6.2-1]."""
        if self._server is None or len(self.connections) >= self.config.max_connections:
            return False
        self.connections.add(conn)
        return True

    def forget(self, conn: Connection) -> None:
        """A connection has closed."""
        self.connections.discard(conn)

    # ------------------------------------------------------------------ timers

    async def _watchdog(self) -> None:
        """Close connections that never say HELLO or dribble a frame (slow-loris) [NMQ-2-3], that
        stay idle [NMQ-2-5], or whose output stays stuck because they do not read [NMQ-6.2-7]."""
        cfg = self.config
        idle = cfg.idle_timeout_s or float("inf")
        while True:
            await asyncio.sleep(min(1.0, cfg.hello_timeout_s / 2, cfg.frame_timeout_s / 2, idle / 2,
                                    cfg.write_timeout_s / 2))
            now = time.monotonic()
            for conn in tuple(self.connections):
                if conn.awaiting_hello and now - conn.opened_at > cfg.hello_timeout_s:
                    conn.close(ErrorCode.BAD_STATE, "no HELLO within the handshake timeout", "NMQ-2-3")
                elif conn.partial_since is not None and now - conn.partial_since > cfg.frame_timeout_s:
                    conn.close(ErrorCode.MALFORMED, "a frame took too long to arrive", "NMQ-2-3")
                elif (stalled := conn.stalled_since) is not None and now - stalled > cfg.write_timeout_s:
                    conn.drop(f"it has not read its output for {cfg.write_timeout_s:g} s")
                elif (since := conn.idle_since) is not None and now - since > idle:
                    conn.close(ErrorCode.RESOURCE_LIMIT, f"idle for {cfg.idle_timeout_s:g} s: no request and no "
                               "subscription", "NMQ-2-5")

    async def _loop_lag_probe(self) -> None:
        """Every 0.25 s, how late the loop ran a timer that was due: the event-loop lag metric. A
        loop held up by a long callback shows it here before clients notice."""
        loop = asyncio.get_running_loop()
        period = _LAG_PROBE_S
        while True:
            due = loop.time() + period
            await asyncio.sleep(period)
            self.stats.loop_lag.observe(max(0.0, loop.time() - due))

    async def _retention(self) -> None:
        """Every ``retention_check_s``, apply retention to every topic (in a worker thread). A
        failure of one run is logged and the next run comes as usual: an exception escaping here
        would end this task, and with it retention, for the rest of the broker's life."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.retention_check_s)
            if self.topics.any_retention:
                try:
                    deleted = await loop.run_in_executor(self._executor, self.topics.apply_retention)
                except Exception:  # noqa: BLE001 - a bug must not stop retention [NMQ-8-4]
                    _log.exception("retention failed; it runs again in %g s", self.config.retention_check_s)
                    continue
                if deleted:
                    _log.info("retention deleted %d segment(s)", deleted)

    async def _trim(self) -> None:
        """Every ``trim_interval_s``, drop from the broker's resident set the mapped log pages of
        topics appended to or read since the last time: they would otherwise stay mapped and the
        broker's RSS would grow with the log (they remain in the page cache; the next access maps
        them again). One madvise per segment of a touched topic: idle topics cost nothing."""
        while True:
            await asyncio.sleep(self.config.trim_interval_s)
            for t in self.topics:
                if not t.touched_since_trim:
                    continue
                t.touched_since_trim = False
                try:
                    t.log.trim_memory()
                except StorageError as e:
                    _log.warning("topic %s: trim failed: %s", t.name, e)

    # ------------------------------------------------------------------ data dir lock

    def _lock(self, data: Path) -> None:
        fd = os.open(data / "broker.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BrokerLockedError(f"data directory {data} is in use by another broker") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


async def _main(config: BrokerConfig, ready: str) -> int:
    broker = Broker(config)
    await broker.start()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signame: str) -> None:
        if not stopping:
            _log.info("%s received: shutting down", signame)
            stopping.append(loop.create_task(broker.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    admin = broker.admin_address
    if admin is not None:
        print(f"nanomq-broker admin API on http://{admin[0]}:{admin[1]}", flush=True)
    if broker.auth is not None:  # without an auth file SIGHUP keeps its default action
        loop.add_signal_handler(signal.SIGHUP, broker.reload_auth)
    host, port = broker.address
    print(ready.format(host=host, port=port, data_dir=config.data_dir), flush=True)
    await broker.serve_until_stopped()
    with contextlib.suppress(Exception):
        for t in stopping:
            await t
    return 0


def run(config: BrokerConfig, ready: str = "nanomq-broker listening on {host}:{port} (data dir {data_dir})") -> int:
    """Run a broker in this process until SIGTERM/SIGINT; returns the exit status."""
    # TLS connections are upgraded with loop.start_tls after a peek (broker/tls.py), which uvloop
    # does not support on a paused transport: a TLS broker runs on asyncio's loop.
    kind = "asyncio" if config.tls_cert is not None and config.loop == "auto" else config.loop
    return run_loop(lambda: _main(config, ready), kind, config.busy_poll_us)
