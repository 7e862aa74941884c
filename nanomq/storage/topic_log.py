"""A topic's log: the broker-facing API over the C write-ahead log.

Theory of operation
-------------------
A topic is one directory of segments (spec/storage.md §2). :meth:`TopicLog.append_batch` writes a
packed run of already-validated records into the active segment (one ``pwritev``: headers stamped
with id, timestamp, topic id and CRC, payloads as given) and publishes the run; the bytes stored
are the bytes later read back by :meth:`TopicLog.read` and sent to subscribers without re-encoding.

Durability is a separate step, :meth:`TopicLog.sync` (group commit). With ``fsync='always'`` the
broker appends several batches, then runs one ``sync()`` (in an executor thread: it releases the
GIL) and acks every batch appended before the call once it returns. ``append_batch(sync=None)``
does that inline for simple callers.

Thread-safety contract
----------------------
* ``append_batch``, ``apply_retention`` and ``close``: one thread at a time (the "owner", e.g. the
  event loop thread). They are serialised in C anyway; the contract keeps ids predictable.
* ``sync``: any thread, concurrently with the owner's appends and with other ``sync`` calls. It
  covers every record whose ``append_batch`` returned before ``sync`` was called; records appended
  while it runs are covered by the next one. It never blocks appends for the fdatasync's duration
  (only for a segment rotation, at most once per segment).
* ``read``, ``find_by_timestamp`` and the id properties: any thread. A read view is immutable and
  stays valid after retention or ``close`` (it pins its segment) until it is released.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from nanomq._c.log import Buffer, CLog, LogStats, RecoveryReport

__all__ = ["TopicLog", "ReadResult", "RecoveryReport", "LogStats", "SyncPolicy"]

SyncPolicy = Literal["always", "interval", "never"]
"""When the log makes appended records durable (the broker's ``--fsync``; see :meth:`TopicLog.open`)."""
_log = logging.getLogger("nanomq.storage")


@dataclass(frozen=True, slots=True)
class ReadResult:
    """A run of whole records straight from the log mapping.

    ``data`` is a read-only zero-copy view of ``count`` records with ids ``first_id`` ..
    ``first_id + count - 1``; it is what the broker sends on the wire. ``count == 0`` means nothing
    is available at or after the requested id (``first_id`` is then where the next record goes,
    or the first retained id if the request was below it).
    """

    first_id: int
    count: int
    data: memoryview

    @property
    def last_id(self) -> int:
        """Id of the last record in ``data`` (``first_id - 1`` when empty)."""
        return self.first_id + self.count - 1


class TopicLog:
    """One topic's log directory. Create it with :meth:`open`."""

    __slots__ = ("_c", "_sync_policy", "path", "report", "topic_id", "__weakref__")

    def __init__(self, clog: CLog, sync_policy: SyncPolicy, topic_id: int) -> None:
        self._c = clog
        self._sync_policy: SyncPolicy = sync_policy
        self.path: str = clog.path
        self.report: RecoveryReport = clog.report
        """What recovery found and did when the log was opened."""
        self.topic_id = topic_id

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = 100 * 1024 * 1024,
        fsync: SyncPolicy = "always",
        interval_ms: int = 10,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        max_payload: int = 65536,
        topic_id: int = 0,
        on_corrupt: Literal["raise", "quarantine"] = "quarantine",
        verify_all: bool = False,
    ) -> TopicLog:
        """Open (creating if needed) and recover the log in ``directory``.

        ``fsync``: ``always`` — acks wait for :meth:`sync`; ``interval`` — a C thread syncs every
        ``interval_ms``; ``never`` — only rotation and a clean close sync. ``on_corrupt``: what to do
        about damage *before* the tail (a torn tail is always cut): ``raise``
        :class:`~nanomq.storage.errors.LogCorruptError`, or ``quarantine`` what follows the damage
        (moved to ``*.quarantine`` files, logged at ERROR). ``verify_all`` checks every CRC
        instead of trusting what the last checkpoint vouches for. The directory is locked against
        a second opener (:class:`~nanomq.storage.errors.LogLockedError`).
        """
        clog = CLog(
            directory,
            segment_bytes=segment_bytes,
            sync_policy=fsync,
            interval_ms=interval_ms,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
            max_payload=max_payload,
            topic_id=topic_id,
            on_corrupt=on_corrupt,
            verify_all=verify_all,
        )
        rep = clog.report
        if rep.stray_files:
            _log.error("log %s: %d file(s) named like segments were not segments of this log; set aside as "
                       "*.quarantine (NMQ-S9-9)", clog.path, rep.stray_files)
        if rep.corruption != "none":
            _log.error("log %s: CORRUPTION: %s; %d file(s) quarantined", clog.path, rep.message, rep.quarantined_files)
        elif rep.truncated_bytes:
            _log.warning(
                "log %s: cut a torn tail of %d bytes at segment %d offset %d (kept in a .quarantine file)",
                clog.path, rep.truncated_bytes, rep.truncated_segment, rep.truncated_offset,
            )
        return cls(clog, fsync, topic_id)

    # -- ids --------------------------------------------------------------------------------

    @property
    def clog(self) -> CLog:
        """The C log under this topic log, for the broker's data plane (``nanomq._c.plane``)."""
        return self._c

    @property
    def first_id(self) -> int:
        """The first retained id (equal to ``next_id`` when the log is empty)."""
        return self._c.stats().first_id

    @property
    def next_id(self) -> int:
        """The id the next appended record will get."""
        return self._c.stats().next_id

    @property
    def last_id(self) -> int:
        """The id of the last appended record (0 for a log that never had one)."""
        return self._c.stats().next_id - 1

    @property
    def durable_id(self) -> int:
        """Every id up to this one is on stable storage."""
        return self._c.stats().durable_id

    @property
    def sync_policy(self) -> SyncPolicy:
        """The sync policy the log was opened with (``fsync=`` of :meth:`open`): a policy, not an action."""
        return self._sync_policy

    @property
    def unsealed(self) -> int:
        """Segments rotated out and not sealed yet (see :attr:`CLog.unsealed`): sync soon."""
        return self._c.unsealed

    def stats(self) -> LogStats:
        """A consistent snapshot of ids, sizes and the last background sync error."""
        return self._c.stats()

    # -- writing ----------------------------------------------------------------------------

    def append_batch(
        self, records: Buffer, count: int, *, sync: bool | None = None, timestamp_ns: int = 0
    ) -> tuple[int, int]:
        """Append ``count`` validated records packed back to back; returns ``(first_id, last_id)``.

        ``sync=None`` syncs inline when the policy is ``always`` (the record is durable on return);
        a broker doing group commit passes ``sync=False`` and calls :meth:`sync` once for several
        batches. ``timestamp_ns=0`` stamps the current time (never below the previous record's).
        Raises :class:`~nanomq.storage.errors.BadRecordsError` for a malformed buffer and
        :class:`~nanomq.storage.errors.LogIOError` (ENOSPC, EIO...) when the disk fails; either way
        nothing of the batch is visible and the log remains usable.
        """
        ids = self._c.append(records, count, timestamp_ns)
        if sync or (sync is None and self._sync_policy == "always"):
            self._c.sync()
        return ids

    def sync(self) -> int:
        """Make every record appended before this call durable; returns the durable last id.

        Thread-safe and GIL-free during the fdatasync: run it in an executor while the owner keeps
        appending the next group. Concurrent calls share one fdatasync. On an I/O error it raises
        :class:`~nanomq.storage.errors.LogIOError`, ``durable_id`` does not move, and the next
        ``sync`` rewrites the unsynced bytes before retrying (so a transient error loses nothing).
        """
        return self._c.sync()

    # -- reading ----------------------------------------------------------------------------

    def read(self, from_id: int, max_records: int = 256, max_bytes: int = 1 << 20) -> ReadResult:
        """Whole records from ``from_id`` (or the first retained id, if later), within one segment:
        at most ``max_records`` and ``max_bytes``, but always one record if any is available."""
        data, count, first = self._c.read(from_id, max_records, max_bytes)
        return ReadResult(first, count, data)

    def find_by_timestamp(self, timestamp_ns: int) -> int:
        """The first id with a timestamp >= ``timestamp_ns``, or ``next_id`` if none has."""
        return self._c.find_ts(timestamp_ns)

    # -- maintenance ------------------------------------------------------------------------

    def set_retention(self, retention_ms: int | None, retention_bytes: int | None) -> None:
        """Change ``retention_ms`` / ``retention_bytes`` (None: none) of the open log; the next
        :meth:`apply_retention` applies them (thread-safe)."""
        self._c.set_retention(retention_ms, retention_bytes)

    def apply_retention(self, now_ns: int | None = None) -> int:
        """Delete whole sealed segments older than ``retention_ms`` (by their last record) or
        beyond ``retention_bytes`` (oldest first); returns how many were deleted."""
        return self._c.retain(now_ns if now_ns is not None else time.time_ns())

    def trim_memory(self) -> int:
        """Drop the log's mapped pages from this process's resident set (nothing is lost: they
        stay in the page cache and reads map them again); returns the bytes of log covered."""
        return self._c.trim()

    def close(self, clean: bool = True) -> None:
        """Close the log. ``clean`` syncs, writes the active index and the clean-shutdown marker,
        so the next open trusts the indexes and scans nothing. Idempotent."""
        self._c.close(clean)

    def __enter__(self) -> TopicLog:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(clean=et is None)

    def __repr__(self) -> str:
        st = self._c.stats()
        return f"<TopicLog {self.path!r} ids {st.first_id}..{st.next_id - 1} sync_policy={self._sync_policy}>"
