"""The topics of a data directory on disk: one directory per topic, its log and its ``topic_id``.

Layout (spec/storage.md §2)::

    <root>/<topic name>/topic_id      the topic's id in decimal, written durably before the log
    <root>/<topic name>/retention     the topic's own retention, if it has one (JSON)
    <root>/<topic name>/...           the topic's log (segments, indexes, checkpoint, lock)
    <root>/~topic_id_floor            the highest id a deleted topic had (so it is never handed out again)
    <root>/~deleted-<n>-<topic name>  a deleted topic's directory, until it is removed (or at the next start)

A :class:`TopicCatalog` lists, creates and repairs these directories and hands out topic ids; the
log inside each is :class:`~nanomq.storage.TopicLog`'s. It never hides or renumbers a topic because
its ``topic_id`` is missing or damaged ([NMQ-S2-5]): the id is taken from the ``topic_id`` field of
the log's first record (a fresh one when the log has none) and the file rewritten. A directory with
neither a ``topic_id`` nor a log is a creation that did not finish (a crash, a full disk): it is
removed at start, and a creation that fails leaves nothing behind.

One process owns the catalog (the broker holds the data directory's lock). :meth:`TopicCatalog.recover`
runs alone, before anything else; :meth:`TopicCatalog.create` may then run in several threads at
once, for different names (the broker creates topics in worker threads, off its event loop).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nanomq.protocol import RECORD_HEADER_SIZE, ProtocolError, RecordBatch, record_span
from nanomq.storage.errors import StorageError

__all__ = ["TopicCatalog", "StoredTopic", "TopicRetention", "fsync_dir", "read_retention", "write_retention",
           "TOPIC_ID_FILE", "RETENTION_FILE"]

TOPIC_ID_FILE = "topic_id"
RETENTION_FILE = "retention"
"""In a topic directory: ``{"retention_ms": N|null, "retention_bytes": N|null}``, the topic's own
retention (0: none; null: the broker's) [NMQ-ADM-3-8]. No file: the broker's for both."""
ID_FLOOR_FILE = "~topic_id_floor"
"""In the root: every id up to this one was handed out (to a topic since deleted) [NMQ-SEM-1-3]."""
DELETED_PREFIX = "~deleted-"
"""A deleted topic's directory is renamed to this prefix plus a number and its name, in one durable
rename, and then removed: a crash in between leaves a name no topic can have ('~' is not valid in
topic names), which the next start removes. So a deletion is all or nothing [NMQ-ADM-3-5]."""
_TMP = TOPIC_ID_FILE + ".tmp"
_MAX_TOPIC_ID = 0xFFFFFFFF
_log = logging.getLogger("nanomq.storage")
_MAX_RECORD = 1 << 30  # the log's own bound on a payload (nanomq/_c/log.py)


@dataclass(frozen=True, slots=True)
class StoredTopic:
    """A topic directory with a valid id: where its log is, and the id its records carry."""

    name: str
    topic_id: int
    path: Path


class TopicCatalog:
    """The topic directories under ``root``; ``is_topic_name`` says which directory names are topics
    (others are left alone). Call :meth:`recover` once, before :meth:`create`."""

    def __init__(self, root: str | os.PathLike[str], is_topic_name: Callable[[str], bool]) -> None:
        self.root = Path(root)
        self._is_topic_name = is_topic_name
        self._next_topic_id = 1
        self._id_lock = threading.Lock()
        """Guards ``_next_topic_id`` against creations running in other threads."""

    def recover(self) -> list[StoredTopic]:
        """Every topic directory under the root, by name, each with an id no other one has.

        Repairs as it goes ([NMQ-S2-5]): a ``topic_id`` that is missing, unreadable or taken by
        another topic is replaced (by the id of the log's first record, else a fresh one) and
        rewritten, logged at ERROR; a directory left by an unfinished creation is removed.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        found: list[tuple[str, int | None]] = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and entry.name.startswith(DELETED_PREFIX):
                _log.warning("removing %s, left by a topic deletion that did not finish", entry)
                _remove_tree(entry)
                continue
            if not entry.is_dir() or not self._is_topic_name(entry.name):
                continue
            topic_id = _read_topic_id(entry)
            if topic_id is None and not _has_log(entry):
                _remove_unfinished(entry)
                continue
            if topic_id is None:
                topic_id = _first_record_topic_id(entry)
            found.append((entry.name, topic_id))
        self._next_topic_id = max(max((tid for _, tid in found if tid is not None), default=0), self._id_floor()) + 1
        seen: set[int] = set()
        topics: list[StoredTopic] = []
        for name, topic_id in found:
            path = self.root / name
            if topic_id is None or topic_id in seen or _read_topic_id(path) != topic_id:
                how = "kept from its records"
                if topic_id is None or topic_id in seen:
                    how = ("new: its log has no record that tells the old one" if topic_id is None
                           else "new: another topic has the id its records carry")
                    topic_id = self._take_id()
                try:
                    _write_topic_id(path, topic_id)
                except OSError as e:
                    _log.error("topic %s: cannot rewrite its topic_id file: %s", name, e)
                _log.error("topic %s: its topic_id file was missing or damaged; topic id %d, %s", name, topic_id, how)
            seen.add(topic_id)
            topics.append(StoredTopic(name, topic_id, path))
        return topics

    def create(self, name: str) -> StoredTopic:
        """Create the directory of a new topic with the next id, durably (its ``topic_id`` file and
        its entry in the root are synced); the log is opened in it afterwards. Raises
        :class:`~nanomq.storage.errors.StorageError`, leaving nothing behind and the id unused
        (unless a creation in another thread took a later id meanwhile: ids need not be dense, only
        unique). Thread-safe, for different names; the caller never creates one name twice at once."""
        path = self.root / name
        with self._id_lock:
            topic_id = self._take_id()
        existed = (path / TOPIC_ID_FILE).exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
            _write_topic_id(path, topic_id)
            fsync_dir(self.root)
        except OSError as e:
            # a later start would find a topic without a log
            if not existed:
                with contextlib.suppress(OSError):
                    (path / TOPIC_ID_FILE).unlink(missing_ok=True)
            _remove_unfinished(path)
            with self._id_lock:
                if self._next_topic_id == topic_id + 1:  # no later id handed out: give this one back
                    self._next_topic_id = topic_id
            raise StorageError(f"cannot create topic {name}: {e}") from e
        return StoredTopic(name, topic_id, path)

    def delete(self, stored: StoredTopic) -> None:
        """Remove a topic's directory, all or nothing: its id is recorded as taken first (when it
        is the highest handed out, so a new topic never gets it), then the directory is renamed
        out of the topics' namespace, durably, then removed. Its log must be closed. Raises
        StorageError when the rename fails (nothing was removed); a failure after it is logged and
        left to the next start."""
        try:
            with self._id_lock:
                if stored.topic_id >= self._id_floor():
                    _write_atomically(self.root / ID_FLOOR_FILE, f"{stored.topic_id}\n")
            trash = self.root / f"{DELETED_PREFIX}{os.getpid()}-{stored.topic_id}-{stored.name}"
            os.rename(stored.path, trash)
            fsync_dir(self.root)
        except OSError as e:
            raise StorageError(f"cannot delete topic {stored.name}: {e}") from e
        _remove_tree(trash)

    def _id_floor(self) -> int:
        try:
            text = (self.root / ID_FLOOR_FILE).read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return 0
        return int(text) if text.isdigit() else 0

    def _take_id(self) -> int:
        topic_id = self._next_topic_id
        self._next_topic_id += 1
        return topic_id


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so the names created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class TopicRetention:
    """A topic's own retention: per setting, None (the broker's), 0 (none) or a positive bound."""

    retention_ms: int | None = None
    retention_bytes: int | None = None

    @property
    def inherited(self) -> bool:
        """Both settings are the broker's."""
        return self.retention_ms is None and self.retention_bytes is None


def read_retention(path: Path) -> TopicRetention:
    """The topic's own retention from ``<path>/retention`` (a missing file: the broker's). A file
    that cannot be used is logged at ERROR and the broker's settings apply: a damaged setting
    never hides the topic or stops the broker ([NMQ-S2-5])."""
    f = path / RETENTION_FILE
    try:
        doc = json.loads(f.read_bytes())
    except FileNotFoundError:
        return TopicRetention()
    except (OSError, ValueError) as e:
        _log.error("topic dir %s: cannot read %s (%s); the broker's retention applies", path, RETENTION_FILE, e)
        return TopicRetention()
    values = []
    for key in ("retention_ms", "retention_bytes"):
        v = doc.get(key) if isinstance(doc, dict) else "missing"
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            _log.error("topic dir %s: %s has a bad %s (%r); the broker's retention applies", path, RETENTION_FILE,
                       key, v)
            return TopicRetention()
        values.append(v)
    return TopicRetention(values[0], values[1])


def write_retention(path: Path, retention: TopicRetention) -> None:
    """Store the topic's own retention durably (no file when both settings are the broker's)."""
    target = path / RETENTION_FILE
    if retention.inherited:
        target.unlink(missing_ok=True)
        fsync_dir(path)
        return
    _write_atomically(target, json.dumps({"retention_ms": retention.retention_ms,
                                          "retention_bytes": retention.retention_bytes}) + "\n")


def _write_topic_id(path: Path, topic_id: int) -> None:
    """Write ``<path>/topic_id`` durably and atomically (tmp, fsync, rename, fsync the directory)."""
    _write_atomically(path / TOPIC_ID_FILE, f"{topic_id}\n", path / _TMP)


def _write_atomically(target: Path, text: str, tmp: Path | None = None) -> None:
    """``target`` holds ``text`` durably, old or new whatever happens (tmp, fsync, rename, fsync)."""
    tmp = tmp if tmp is not None else target.with_name(target.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_tree(path: Path) -> None:
    """Remove a deleted topic's renamed directory (errors logged: the next start tries again)."""
    try:
        shutil.rmtree(path)
        fsync_dir(path.parent)
    except OSError as e:
        _log.error("cannot remove %s (a deleted topic's files): %s; the next start tries again", path, e)


def _read_topic_id(path: Path) -> int | None:
    """The id in ``<path>/topic_id``, or None when it is missing or not a topic id."""
    try:
        text = (path / TOPIC_ID_FILE).read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.isdigit():
        return None
    value = int(text)
    return value if 1 <= value <= _MAX_TOPIC_ID else None


def _segment_files(path: Path) -> list[Path]:
    """The files named like segments (``<first id:020>.log``, [NMQ-S2-2]), oldest first."""
    return sorted(p for p in path.iterdir() if len(p.name) == 24 and p.name.endswith(".log") and p.name[:20].isdigit())


def _has_log(path: Path) -> bool:
    return bool(_segment_files(path)) or (path / "checkpoint").exists()


def _first_record_topic_id(path: Path) -> int | None:
    """The ``topic_id`` field of the first record of the topic's log (spec/storage.md §3), or None.

    Only a record the log itself would take counts: the first of a segment file whose name is its
    id, intact (its CRC holds). A stray named like a segment ([NMQ-S9-9]; random bytes sort before
    the log as ``00000000000000000000.log``) must not renumber the topic ([NMQ-S2-5])."""
    for seg in _segment_files(path):
        first = int(seg.name[:-4]) if seg.name[:-4].isdigit() else 0
        if first == 0:
            continue
        try:
            with open(seg, "rb") as f:
                head = f.read(RECORD_HEADER_SIZE)
                if len(head) < RECORD_HEADER_SIZE or int.from_bytes(head[:8], "little") != first:
                    continue
                size = int.from_bytes(head[20:24], "little")
                if size > _MAX_RECORD:
                    continue
                record = head + f.read(record_span(size) - RECORD_HEADER_SIZE)
        except OSError:
            continue
        try:
            RecordBatch.parse(record, 1, max_payload=_MAX_RECORD)
        except ProtocolError:
            continue
        tid = int.from_bytes(head[16:20], "little")
        return tid if tid else None
    return None


def _remove_unfinished(path: Path) -> None:
    """Remove the directory of a topic creation that did not finish: only its own leftovers
    (``topic_id.tmp``, an empty directory); anything else stays, and says so in the log."""
    (path / _TMP).unlink(missing_ok=True)
    try:
        path.rmdir()
    except FileNotFoundError:
        return
    except OSError as e:
        _log.error("topic dir %s has no topic_id and no log, but holds other files; left alone (%s)", path, e)
        return
    _log.warning("removed %s, left by a topic creation that did not finish", path)
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)
