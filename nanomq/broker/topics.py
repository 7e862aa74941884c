"""Topics: one TopicLog each, the registry that names them, and group commit of durable acks.

Group commit: a durable PUBLISH appends at once (so later batches keep their order) and then
waits for a sync that starts *after* its append. At most one sync per topic runs at a time, in a
worker thread (the C sync releases the GIL); every batch appended while it runs is covered by the
next one, so N concurrent durable publishers share ~N/k fdatasyncs instead of paying one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from nanomq.broker.config import BrokerConfig
from nanomq.protocol import valid_topic
from nanomq.storage import LogIOError, StorageError, TopicLog

__all__ = ["Topic", "TopicRegistry", "SYNC_AHEAD_BYTES"]

SYNC_AHEAD_BYTES = 8 << 20
"""Bytes appended to a topic after which the broker syncs it in the background (fsync policies
``always`` and ``interval``), so that sealing a full segment never waits for much dirty data."""

_log = logging.getLogger("nanomq.broker")

DurableCallback = Callable[[BaseException | None], None]


class Topic:
    """A named log plus the subscriptions that read it and the durable acks waiting on it."""

    def __init__(self, name: str, topic_id: int, log: TopicLog, executor: Executor) -> None:
        self.name = name
        self.topic_id = topic_id
        self.log = log
        self._executor = executor
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
        if self._refused:
            _log.warning("topic %s: appends accepted again, after %d refused", self.name, self._refused)
            self._refused = 0
        self._unsynced += len(data)
        if self._unsynced >= SYNC_AHEAD_BYTES and not self._syncing and self.log.sync_policy != "never":
            # Sync ahead in the worker thread: sealing a full segment fdatasyncs it on the event
            # loop's thread, and with only `written` acks nothing else would have synced it, so
            # the seal waited for a whole segment of dirty pages (~50 ms per 100 MiB, every
            # connection stalled). Syncing early costs nothing in correctness.
            self._start_sync()
        return ids

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
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, self.log.sync)
        fut.add_done_callback(self._sync_done)

    def _sync_done(self, fut: asyncio.Future[int]) -> None:
        self._syncing = False
        exc = fut.exception()
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
        durable = fut.result()
        if self._sync_failing:
            _log.warning("topic %s: syncs succeed again", self.name)
            self._sync_failing = False
        ready = [cb for last, cb in self._waiters if last <= durable]
        self._waiters = [(last, cb) for last, cb in self._waiters if last > durable]
        for cb in ready:
            cb(None)
        if self._waiters:
            self._start_sync()

    @property
    def syncing(self) -> bool:
        """A sync of this topic is running in the worker thread."""
        return self._syncing

    @property
    def pending_durable(self) -> int:
        """Durable acks waiting for a sync."""
        return len(self._waiters)


class TopicRegistry:
    """Every topic under ``<data_dir>/topics``; opens existing ones at start, creates on demand.

    A topic's id is stored in ``<topic dir>/topic_id`` (written before the log is created, synced,
    so a crash leaves either no topic or a topic with its id).
    """

    def __init__(self, config: BrokerConfig, executor: Executor) -> None:
        self._config = config
        self._executor = executor
        self.root = Path(config.data_dir) / "topics"
        self.topics: dict[str, Topic] = {}
        self._next_topic_id = 1

    def open_all(self) -> None:
        """Open (and recover) every topic found on disk.

        Damage to the broker's own file never hides a topic ([NMQ-S2-5]): a ``topic_id`` that is
        missing or unreadable beside a log is taken from the ``topic_id`` field of the log's first
        record (a fresh id when the log has none) and rewritten; a directory left by a creation
        that never finished (no ``topic_id``, no log) is removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        found: list[tuple[str, int | None]] = []
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir() or not valid_topic(entry.name):
                continue
            topic_id = _read_topic_id(entry)
            if topic_id is None and not _has_log(entry):
                _remove_unfinished(entry)
                continue
            if topic_id is None:
                topic_id = _first_record_topic_id(entry)
            found.append((entry.name, topic_id))
        used = {tid for _, tid in found if tid is not None}
        self._next_topic_id = max(used, default=0) + 1
        seen: set[int] = set()
        for name, topic_id in found:
            if topic_id is None or topic_id in seen or _read_topic_id(self.root / name) != topic_id:
                how = "kept from its records"
                if topic_id is None or topic_id in seen:
                    how = ("new: its log has no record that tells the old one" if topic_id is None
                           else "new: another topic has the id its records carry")
                    topic_id = self._next_topic_id
                    self._next_topic_id += 1
                try:
                    self._write_topic_id(self.root / name, topic_id)
                except OSError as e:
                    _log.error("topic %s: cannot rewrite its topic_id file: %s", name, e)
                _log.error("topic %s: its topic_id file was missing or damaged; topic id %d, %s", name, topic_id, how)
            seen.add(topic_id)
            self._open(name, topic_id)

    def _write_topic_id(self, path: Path, topic_id: int) -> None:
        """Write ``<path>/topic_id`` durably and atomically (tmp, fsync, rename, fsync the directory)."""
        tmp = path / "topic_id.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(f"{topic_id}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path / "topic_id")
            _fsync_dir(path)
        finally:
            tmp.unlink(missing_ok=True)

    def _open(self, name: str, topic_id: int) -> Topic:
        c = self._config
        log = TopicLog.open(
            self.root / name,
            segment_bytes=c.segment_bytes,
            fsync=c.fsync,
            interval_ms=c.fsync_interval_ms,
            retention_ms=c.retention_ms,
            retention_bytes=c.retention_bytes,
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
        topic = Topic(name, topic_id, log, self._executor)
        self.topics[name] = topic
        return topic

    def get(self, name: str) -> Topic | None:
        """The topic called ``name``, if it exists."""
        return self.topics.get(name)

    def get_or_create(self, name: str) -> Topic:
        """The topic called ``name``, created (durably) if new. Raises StorageError / LookupError."""
        topic = self.topics.get(name)
        if topic is not None:
            return topic
        if len(self.topics) >= self._config.max_topics:
            raise LookupError(f"topic limit of {self._config.max_topics} reached")
        path = self.root / name
        topic_id = self._next_topic_id
        existed = (path / "topic_id").exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._write_topic_id(path, topic_id)
            _fsync_dir(self.root)
        except OSError as e:
            # a failed creation leaves nothing behind (a later start would find a topic without a log)
            if not existed:
                with contextlib.suppress(OSError):
                    (path / "topic_id").unlink(missing_ok=True)
            _remove_unfinished(path)
            raise StorageError(f"cannot create topic {name}: {e}") from e
        self._next_topic_id += 1
        return self._open(name, topic_id)

    def apply_retention(self) -> int:
        """Run retention on every topic; returns segments deleted."""
        deleted = 0
        for t in self.topics.values():
            try:
                deleted += t.log.apply_retention()
            except StorageError as e:
                _log.error("topic %s: retention failed: %s", t.name, e)
        return deleted

    def sync_all(self) -> None:
        """Sync every topic (shutdown path; blocking)."""
        for t in self.topics.values():
            try:
                t.log.sync()
            except StorageError as e:
                _log.error("topic %s: final sync failed: %s", t.name, e)

    def close_all(self, clean: bool = True) -> None:
        """Close every log (``clean`` writes the clean-shutdown marker)."""
        for t in self.topics.values():
            try:
                t.log.close(clean=clean)
            except StorageError as e:
                _log.error("topic %s: close failed: %s", t.name, e)
        self.topics.clear()


def _read_topic_id(path: Path) -> int | None:
    """The id in ``<path>/topic_id``, or None when it is missing or not a topic id."""
    try:
        text = (path / "topic_id").read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.isdigit():
        return None
    value = int(text)
    return value if 1 <= value <= 0xFFFFFFFF else None


def _segment_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if len(p.name) == 24 and p.name.endswith(".log") and p.name[:20].isdigit())


def _has_log(path: Path) -> bool:
    return bool(_segment_files(path)) or (path / "checkpoint").exists()


def _first_record_topic_id(path: Path) -> int | None:
    """The ``topic_id`` field of the first record of the topic's log (spec/storage.md §3), or None."""
    for seg in _segment_files(path):
        try:
            with open(seg, "rb") as f:
                head = f.read(64)
        except OSError:
            continue
        if len(head) == 64 and int.from_bytes(head[:8], "little") != 0:
            tid = int.from_bytes(head[16:20], "little")
            return tid if tid else None
    return None


def _remove_unfinished(path: Path) -> None:
    """Remove the directory of a topic creation that did not finish: only its own leftovers
    (``topic_id.tmp``, an empty directory); anything else stays, and says so in the log."""
    (path / "topic_id.tmp").unlink(missing_ok=True)
    try:
        path.rmdir()
    except FileNotFoundError:
        return
    except OSError as e:
        _log.error("topic dir %s has no topic_id and no log, but holds other files; left alone (%s)", path, e)
        return
    _log.warning("removed %s, left by a topic creation that did not finish", path)
    with contextlib.suppress(OSError):
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
