"""Topics: one TopicLog each, the registry of open topics, and group commit of durable acks.

Group commit: a durable PUBLISH appends at once (so later batches keep their order) and then
waits for a sync that starts *after* its append. At most one sync per topic runs at a time, in the
C group-commit threads (:class:`~nanomq._c.syncer.Syncer`: no Python thread, no GIL handoff, one
eventfd wake-up of the loop per finished sync); every batch appended while it runs is covered by
the next one, so N concurrent durable publishers share ~N/k fdatasyncs instead of paying one each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanomq._c.plane import Plane
from nanomq._c.syncer import Syncer
from nanomq.broker.config import BrokerConfig
from nanomq.broker.metrics import BrokerStats
from nanomq.protocol import valid_topic
from nanomq.storage import (
    LogIOError,
    StorageError,
    StoredTopic,
    TopicCatalog,
    TopicLog,
    TopicRetention,
    read_retention,
    write_retention,
)

__all__ = ["Topic", "TopicRegistry", "SYNC_AHEAD_BYTES"]

SYNC_AHEAD_BYTES = 8 << 20
"""Bytes appended to a topic after which the broker syncs it in the background (fsync policies
``always`` and ``interval``), so that sealing a full segment never waits for much dirty data."""

_log = logging.getLogger("nanomq.broker")

DurableCallback = Callable[[BaseException | None], None]


class Topic:
    """A named log plus the subscriptions that read it and the durable acks waiting on it."""

    def __init__(self, name: str, topic_id: int, log: TopicLog, syncer: Syncer, index: int,
                 stats: BrokerStats | None = None) -> None:
        self.name = name
        self.topic_id = topic_id
        self.log = log
        self._syncer = syncer
        self._waiters: list[tuple[int, DurableCallback]] = []
        self._syncing = False
        self._unsynced = 0
        self.listeners: set[Callable[[], None]] = set()
        """Called (synchronously, on the event loop) after every append."""
        self.touched_since_trim = False
        """Set by appends and deliveries: the trimmer drops this topic's mapped pages when True."""
        self._refused = 0
        """Appends refused by the disk (ENOSPC, EIO, ...) since the last one that succeeded."""
        self._sync_failing = False
        self.damaged: set[int] = set()
        """Ids whose stored bytes failed their check when read ([NMQ-S9-7]); each is logged once."""
        self.index = index
        """This topic's number: in the registry, the data plane's topic table and the syncer."""
        self.bytes_in = 0
        """Bytes of records appended since the broker started (metrics)."""
        self.delivered_records = 0
        """Records delivered to its subscriptions since the broker started (metrics)."""
        self.delivered_bytes = 0
        self._stats = stats
        self._sync_asked = 0.0
        self.own_retention = TopicRetention()
        """The topic's own retention settings ([NMQ-ADM-3-8]); None in a field: the broker's."""

    def append(self, data: bytes, count: int) -> tuple[int, int]:
        """Append a validated batch (not yet synced); call :meth:`notify` once it is acked."""
        # The append publishes each run with a store into the segment mapping, which maps that
        # page into the broker: let the trimmer know.
        self.touched_since_trim = True
        try:
            ids = self.log.append_batch(data, count, sync=False)
        except LogIOError as e:
            # logged once per episode (a full disk refuses every publish), not once per publish
            if not self._refused:
                _log.error("topic %s: appends refused by the disk: %s; the next refusals are not logged until an "
                           "append succeeds", self.name, e)
            self._refused += 1
            raise
        self.appended(len(data))
        return ids

    def appended(self, nbytes: int) -> None:
        """Bookkeeping after ``nbytes`` of records were appended (by :meth:`append`, or by the C
        data plane straight from a connection's buffer)."""
        self.touched_since_trim = True
        self.bytes_in += nbytes
        if self._refused:
            _log.warning("topic %s: appends accepted again, after %d refused", self.name, self._refused)
            self._refused = 0
        self._unsynced += nbytes
        if self._syncing:
            return
        if self.log.unsealed:
            # The append rotated to a new segment; the old one is sealed (fdatasync, index,
            # checkpoint) by the next sync, in the sync threads: rotation itself never waits for the
            # disk on the loop. Whatever the policy: `never` syncs at rotation too.
            self._start_sync()
        elif self._unsynced >= SYNC_AHEAD_BYTES and self.log.sync_policy != "never":
            # Sync ahead: with only `written` acks nothing else would sync the segment before its
            # seal, which would then flush a whole segment of dirty pages at once (~50 ms per
            # 100 MiB) and delay every durable ack queued behind it.
            self._start_sync()

    def notify(self) -> None:
        """Wake the subscriptions of this topic (they deliver synchronously, see Connection)."""
        for wake in tuple(self.listeners):
            wake()

    def first_record_at_or_after(self, record_id: int) -> int:
        """``record_id``, or the id of the first record after it when it is an id no record has: one
        lost at the end of the log and never handed out again ([NMQ-S9-8]). So SUBSCRIBED and
        SEEK_OK name the first record the subscription delivers ([NMQ-4.4-5])."""
        if record_id >= self.log.next_id:
            return record_id
        try:
            r = self.log.read(record_id, 1, 0)
        except StorageError:
            return record_id  # damaged: the delivery says so ([NMQ-S9-7])
        first = r.first_id
        r.data.release()
        return first

    def damage_found(self, record_id: int, exc: BaseException) -> None:
        """A read met damaged stored bytes at ``record_id`` ([NMQ-S9-4]): log it loudly, once per
        record. The bytes stay where they are (published bytes never change, [NMQ-S13-2]); a start
        with ``--verify-on-start`` quarantines them ([NMQ-S9-2], [NMQ-S9-7])."""
        if record_id in self.damaged:
            return
        self.damaged.add(record_id)
        _log.error("topic %s: DAMAGED DATA: record %d fails its check when read (%s); it and the records after it "
                   "are not delivered to subscriptions that reach it. Restart with --verify-on-start to quarantine "
                   "the damage.", self.name, record_id, exc)

    def when_durable(self, last_id: int, callback: DurableCallback) -> None:
        """Call ``callback(None)`` once ``last_id`` is on stable storage, or ``callback(exc)``."""
        if self.log.durable_id >= last_id:
            callback(None)
            return
        self._waiters.append((last_id, callback))
        if not self._syncing:
            self._start_sync()

    def _start_sync(self) -> None:
        self._syncing = True
        self._unsynced = 0
        self._sync_asked = time.perf_counter()
        try:
            self._syncer.request(self.log.clog, self.index)
        except StorageError as e:  # the syncer could not queue it (out of memory): fail the waiters
            self.sync_finished(0, e)

    def sync_finished(self, durable: int, exc: BaseException | None) -> None:
        """The sync started by :meth:`_start_sync` ended: every id up to ``durable`` is on stable
        storage, or it failed with ``exc`` (called on the event loop, by the registry)."""
        self._syncing = False
        if self._stats is not None:
            self._stats.sync_latency.observe(time.perf_counter() - self._sync_asked)
        if exc is not None:
            # The records stay in the log and the next sync retries them (the C log rewrites
            # unsynced bytes), but the clients waiting now get an error: their outcome is unknown.
            if not self._sync_failing:
                _log.error("topic %s: sync failed: %s; the next failures are not logged until a sync succeeds",
                           self.name, exc)
            self._sync_failing = True
            waiters, self._waiters = self._waiters, []
            for _, cb in waiters:
                cb(exc)
            return
        if self._sync_failing:
            _log.warning("topic %s: syncs succeed again", self.name)
            self._sync_failing = False
        ready = [cb for last, cb in self._waiters if last <= durable]
        self._waiters = [(last, cb) for last, cb in self._waiters if last > durable]
        for cb in ready:
            cb(None)
        if self._waiters or self.log.unsealed:  # a rotation during the sync: seal it now
            self._start_sync()

    @property
    def syncing(self) -> bool:
        """A sync of this topic is queued or running in the sync threads."""
        return self._syncing

    @property
    def pending_durable(self) -> int:
        """Durable acks waiting for a sync."""
        return len(self._waiters)


@dataclass(slots=True)
class _Creation:
    """A topic being created in a creation thread: what its requesters wait on (a future of the
    event loop) and the thread's work (the catalog's directory and the opened log)."""

    waiters: asyncio.Future[Topic]
    work: concurrent.futures.Future[tuple[StoredTopic, TopicLog]]
    over: bool = False
    """Handed over: registered, failed, or closed by :meth:`TopicRegistry.close_all`."""


class TopicRegistry:
    """Every topic of the data directory, open: opened and recovered at start, created on demand.

    Where topics live on disk and which id each has is the storage catalog's
    (:class:`~nanomq.storage.TopicCatalog`); the registry opens their logs with the broker's
    settings and enforces its topic limit.

    Creating a topic takes disk syncs (the catalog's directory and ``topic_id`` file, the log's
    preallocated segment and checkpoint: 352 ms was seen), so with ``create_threads`` the registry
    does it in threads of its own and :meth:`open_or_create` returns a future that the event loop
    completes once the topic is open and registered; every other connection is served meanwhile.
    Without (``create_threads=0``, or no running event loop), creation runs in the caller's thread.
    """

    def __init__(self, config: BrokerConfig, plane: Plane | None = None, sync_threads: int = 4,
                 create_threads: int = 0, stats: BrokerStats | None = None) -> None:
        self._config = config
        self._stats = stats
        self._syncer = Syncer(sync_threads)
        self._watcher: asyncio.AbstractEventLoop | None = None
        self._catalog = TopicCatalog(Path(config.data_dir) / "topics", is_topic_name=valid_topic)
        self._topics: dict[str, Topic] = {}
        self.plane = plane
        """The C data plane, if the broker uses it: every open topic is registered with it."""
        self._by_index: list[Topic] = []
        self._creator = (ThreadPoolExecutor(create_threads, thread_name_prefix="nanomq-create")
                         if create_threads else None)
        self._creating: dict[str, _Creation] = {}
        """Topics being created in the creation threads, by name (they count against max_topics)."""
        self._deleting: dict[str, asyncio.Future[None]] = {}
        """Topics being deleted, by name: requests naming one wait for this (then create it anew)."""

    def open_all(self) -> None:
        """Open (and recover) every topic found on disk, its id repaired if need be ([NMQ-S2-5])."""
        for stored in self._catalog.recover():
            self._open(stored)

    def _open(self, stored: StoredTopic) -> Topic:
        return self._register(stored, self._open_log(stored))

    def effective_retention(self, own: TopicRetention) -> tuple[int | None, int | None]:
        """(retention_ms, retention_bytes) a topic with ``own`` settings keeps (None: no bound)."""
        c = self._config
        ms = c.retention_ms if own.retention_ms is None else own.retention_ms or None
        nbytes = c.retention_bytes if own.retention_bytes is None else own.retention_bytes or None
        return ms, nbytes

    def _open_log(self, stored: StoredTopic) -> TopicLog:
        """Open (creating or recovering) a topic's log; in any thread: it touches no registry state."""
        c = self._config
        name, topic_id = stored.name, stored.topic_id
        retention_ms, retention_bytes = self.effective_retention(read_retention(stored.path))
        log = TopicLog.open(
            stored.path,
            segment_bytes=c.segment_bytes,
            fsync=c.fsync,
            interval_ms=c.fsync_interval_ms,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
            max_payload=c.max_payload,
            topic_id=topic_id,
            verify_all=c.verify_on_start,
        )
        rep = log.report
        if rep.message:
            _log.log(logging.INFO if rep.ok else logging.WARNING, "topic %s (id %d): %s", name, topic_id, rep.message)
        ro = log.stats().read_only_errno
        if ro:
            _log.error("topic %s: opened read-only, recovery could not finish: %s; reads are served, publishes are "
                       "refused until there is space", name, os.strerror(ro))
        return log

    def _register(self, stored: StoredTopic, log: TopicLog) -> Topic:
        """Make an open log a topic of the broker (on the event loop: the data plane's topic table
        and the registry are the loop's). The data plane learns of it only now, fully open."""
        topic = Topic(stored.name, stored.topic_id, log, self._syncer, len(self._by_index), self._stats)
        topic.own_retention = read_retention(stored.path)
        self._topics[stored.name] = topic
        self._by_index.append(topic)
        if self.plane is not None:
            self.plane.topic(stored.name, log.clog, topic.index)
        return topic

    def at(self, index: int) -> Topic:
        """The topic numbered ``index`` (by the data plane and the syncer)."""
        return self._by_index[index]

    def watch_syncs(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have ``loop`` answer the durable acks of every sync that finishes (the syncer's eventfd
        becomes readable); needed before any durable ack can complete."""
        loop.add_reader(self._syncer.fd, self.finish_syncs)
        self._watcher = loop

    def finish_syncs(self) -> None:
        """Hand every finished sync to its topic (on the loop, when the syncer's fd is readable)."""
        for index, durable, exc in self._syncer.take():
            self._by_index[index].sync_finished(durable, exc)

    def __len__(self) -> int:
        return len(self._topics)

    def __iter__(self) -> Iterator[Topic]:
        """Every open topic, in the order they were opened or created."""
        return iter(tuple(self._topics.values()))

    def get(self, name: str) -> Topic | None:
        """The topic called ``name``, if it exists."""
        return self._topics.get(name)

    def creating(self, name: str) -> asyncio.Future[Any] | None:
        """The future of the topic called ``name`` while a creation thread creates it, or of its
        deletion while it is being deleted (a request waits for it, then creates the topic anew);
        else None."""
        c = self._creating.get(name)
        return c.waiters if c is not None else self._deleting.get(name)

    def _check_limit(self) -> None:
        # creations in flight count: each of them is a topic once it finishes; so do deletions,
        # whose files are still on disk
        if len(self._topics) + len(self._creating) + len(self._deleting) >= self._config.max_topics:
            raise LookupError(f"topic limit of {self._config.max_topics} reached")

    def get_or_create(self, name: str) -> Topic:
        """The topic called ``name``, created (durably) if new, in this thread (blocking; one
        being created in a creation thread is waited for). Raises StorageError / LookupError."""
        topic = self._topics.get(name)
        if topic is not None:
            return topic
        c = self._creating.get(name)
        if c is not None:
            exc = c.work.exception()  # waits for it
            self._created(name, c)
            if exc is not None:
                raise exc
            return self._topics[name]
        self._check_limit()
        return self._open(self._catalog.create(name))

    def open_or_create(self, name: str) -> Topic | asyncio.Future[Any]:
        """The topic called ``name``; if new, a future of it, which the event loop completes once a
        creation thread has created it (durably) and opened its log, and the registry (and the data
        plane) know it; or fails with StorageError, leaving nothing behind that a restart trips on.
        Two requests for the same new name get the same future. Created at once (a Topic) without
        creation threads or a running loop. Raises LookupError at the topic limit."""
        topic = self._topics.get(name)
        if topic is not None:
            return topic
        c = self._creating.get(name)
        if c is not None:
            return c.waiters
        if name in self._deleting:
            return self._deleting[name]
        self._check_limit()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._creator is None or loop is None:
            return self._open(self._catalog.create(name))
        c = _Creation(loop.create_future(), self._creator.submit(self._make, name))
        self._creating[name] = c

        def finished(_: concurrent.futures.Future[tuple[StoredTopic, TopicLog]]) -> None:
            # in the creation thread: the registry is the loop's, hand the result over to it
            with contextlib.suppress(RuntimeError):  # the loop is closed: close_all handles it
                loop.call_soon_threadsafe(self._created, name, c)

        c.work.add_done_callback(finished)
        return c.waiters

    def _make(self, name: str) -> tuple[StoredTopic, TopicLog]:
        """A creation thread's work: the topic's directory and id (the catalog's), then its log."""
        stored = self._catalog.create(name)
        return stored, self._open_log(stored)

    def _created(self, name: str, c: _Creation) -> None:
        """A creation finished (on the loop): register the topic, then wake whoever waits for it."""
        if c.over:
            return
        c.over = True
        if self._creating.get(name) is c:
            del self._creating[name]
        exc = c.work.exception()
        if exc is not None:
            if not c.waiters.done():
                c.waiters.set_exception(exc)
            return
        topic = self._register(*c.work.result())
        if not c.waiters.done():
            c.waiters.set_result(topic)

    # ------------------------------------------------------------------ deletion [NMQ-ADM-3-5]

    def begin_delete(self, name: str) -> Topic:
        """Take ``name`` out of the registry and the data plane (on the loop): no request appends to
        it or reads it any more, and one naming it waits (:meth:`creating`) until
        :meth:`finish_delete`. Its number stays taken, so syncs in flight still find it. Raises
        LookupError when there is no such topic (or it is being deleted already)."""
        topic = self._topics.pop(name, None)
        if topic is None:
            raise LookupError(f"no topic {name!r}")
        if self.plane is not None:
            self.plane.untopic(name)  # before anything else: the plane must never append to it again
        self._deleting[name] = asyncio.get_running_loop().create_future()
        return topic

    def delete_files(self, topic: Topic) -> None:
        """Close the topic's log and remove its directory (blocking: in a worker thread, once no
        sync of it runs). Raises StorageError; then the files are still there."""
        topic.log.close(clean=True)
        self._catalog.delete(StoredTopic(topic.name, topic.topic_id, self._catalog.root / topic.name))

    def finish_delete(self, topic: Topic, failed: BaseException | None) -> None:
        """The deletion of ``topic`` ended (on the loop): wake the requests that waited; when it
        ``failed`` before removing anything, the topic is opened again and stays."""
        waiters = self._deleting.pop(topic.name)
        if failed is not None:
            try:
                self._register(StoredTopic(topic.name, topic.topic_id, self._catalog.root / topic.name),
                               self._open_log(StoredTopic(topic.name, topic.topic_id,
                                                          self._catalog.root / topic.name)))
            except StorageError as e:
                _log.error("topic %s: could not be reopened after a failed deletion: %s", topic.name, e)
        if not waiters.done():
            waiters.set_result(None)

    def set_retention(self, topic: Topic, own: TopicRetention) -> None:
        """Give ``topic`` its own retention ([NMQ-ADM-3-8]): stored durably in its directory first,
        then applied to the open log (blocking: in a worker thread). Raises StorageError."""
        try:
            write_retention(self._catalog.root / topic.name, own)
        except OSError as e:
            raise StorageError(f"cannot store the retention of topic {topic.name}: {e}") from e
        topic.log.set_retention(*self.effective_retention(own))
        topic.own_retention = own

    @property
    def any_retention(self) -> bool:
        """Whether retention has anything to do: the broker's, or a topic's own."""
        c = self._config
        return bool(c.retention_ms or c.retention_bytes) or any(
            t.own_retention.retention_ms or t.own_retention.retention_bytes for t in tuple(self._topics.values()))

    def apply_retention(self) -> int:
        """Run retention on every topic; returns segments deleted. Runs in a worker thread while
        the loop may register new topics: it walks a copy of the registry (iterating the dict
        itself would fail with "dictionary changed size during iteration" when a creation finishes
        meanwhile, and end the broker's retention)."""
        deleted = 0
        for t in tuple(self._topics.values()):
            try:
                deleted += t.log.apply_retention()
            except StorageError as e:
                _log.error("topic %s: retention failed: %s", t.name, e)
        return deleted

    def sync_all(self) -> None:
        """Sync every topic (shutdown path; blocking, in a worker thread)."""
        for t in tuple(self._topics.values()):  # a creation finishing on the loop may add one meanwhile
            try:
                t.log.sync()
            except StorageError as e:
                _log.error("topic %s: final sync failed: %s", t.name, e)

    def close_all(self, clean: bool = True) -> None:
        """Stop the sync threads, then close every log (``clean`` writes the clean-shutdown marker).

        A sync still running finishes first (the syncer joins its threads), so no log is closed
        under a thread syncing it; one still queued is dropped, and its waiters, if any, are
        left to the clean close, which syncs every log."""
        if self._watcher is not None and not self._watcher.is_closed():
            self._watcher.remove_reader(self._syncer.fd)
        self._watcher = None
        self._syncer.close()
        if self._creator is not None:
            # Creations still running finish first (no log is left half-opened); one whose result
            # the loop has not taken yet is closed here: its directory, id and log are complete, so
            # the next start opens it like any other topic. Its requesters' connections are closed.
            self._creator.shutdown(wait=True, cancel_futures=True)  # queued ones never start
            self._creator = None
        for name, c in tuple(self._creating.items()):
            c.over = True
            with contextlib.suppress(RuntimeError):  # the loop that would run its callbacks is closed
                c.waiters.cancel()
            if not c.work.cancelled() and c.work.exception() is None:
                _, log = c.work.result()
                try:
                    log.close(clean=clean)
                except StorageError as e:
                    _log.error("topic %s: close failed: %s", name, e)
        self._creating.clear()
        for t in self._topics.values():
            if self.plane is not None:
                self.plane.untopic(t.name)  # before its log closes: the plane must never append to it
            try:
                t.log.close(clean=clean)
            except StorageError as e:
                _log.error("topic %s: close failed: %s", t.name, e)
        self._topics.clear()
        self._by_index.clear()
