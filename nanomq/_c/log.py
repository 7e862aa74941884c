"""Thin wrapper over the C write-ahead log (``nanomq._c._log``).

It validates arguments, owns the C handle with ``ffi.gc`` and turns C error codes into exceptions.
Policy (what a topic is, when to sync, how to log recovery) lives in :mod:`nanomq.storage`.

Zero-copy reads: :meth:`CLog.read` returns a read-only ``memoryview`` straight into the segment
mapping. The view *pins* its segment: retention may unlink the file, and :meth:`CLog.close` may
run, but the mapping stays valid until the last view (and every slice of it) is garbage-collected.

Every C call releases the GIL (cffi API mode), so :meth:`CLog.sync` can run in a worker thread
while another thread appends; see ``src/log.h`` for the threading contract.
"""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass
from typing import Any, Literal

from nanomq._c import realize_all
from nanomq._c._log import ffi, lib

# Realize every C type and function now, in the importing thread: the broker calls sync() from a
# worker thread, and cffi's lazy realization racing between threads can abort the process (cffi#271).
realize_all(ffi, lib, "const uint8_t **", "nmq_log **", "nmq_log_config *", "nmq_log_stats *", "nmq_recovery_report *", "nmq_seg **", "uint64_t *")

__all__ = [
    "Buffer",
    "CLog",
    "RecoveryReport",
    "LogStats",
    "LogError",
    "LogIOError",
    "LogCorruptError",
    "LogLockedError",
    "LogClosedError",
    "BadRecordsError",
    "fault_set",
    "fault_clear",
    "FAULT_KINDS",
]

Buffer = bytes | bytearray | memoryview
SyncPolicy = Literal["always", "interval", "never"]
OnCorrupt = Literal["raise", "quarantine"]

_POLICIES: dict[str, int] = {
    "always": lib.NMQ_SYNC_ALWAYS,
    "interval": lib.NMQ_SYNC_INTERVAL,
    "never": lib.NMQ_SYNC_NEVER,
}
_ON_CORRUPT: dict[str, int] = {"raise": lib.NMQ_ON_CORRUPT_RAISE, "quarantine": lib.NMQ_ON_CORRUPT_QUARANTINE}
FAULT_KINDS: dict[str, int] = {
    "write": lib.NMQ_FAULT_WRITE,
    "fsync": lib.NMQ_FAULT_FSYNC,
    "ftruncate": lib.NMQ_FAULT_FTRUNCATE,
    "fallocate": lib.NMQ_FAULT_FALLOCATE,
    "slow_fsync": lib.NMQ_FAULT_SLOW_FSYNC,
}
_U64 = (1 << 64) - 1


class LogError(Exception):
    """Base class of every error raised by the log."""


class LogIOError(LogError, OSError):
    """A system call failed (``errno`` is set: ENOSPC, EIO, ...). The log stays consistent: nothing
    of a failed append is visible, and a failed sync leaves ``durable_id`` where it was."""


class LogCorruptError(LogError):
    """Recovery found damage before the tail (bad CRC, id gap, unreadable segment) and the log was
    opened with ``on_corrupt='raise'``; ``report`` says where."""

    def __init__(self, message: str, report: RecoveryReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class LogLockedError(LogError):
    """Another process (or another open handle) owns the log directory."""


class LogClosedError(LogError):
    """The log was closed."""


class BadRecordsError(LogError, ValueError):
    """The buffer handed to append is not ``count`` well-framed records, or is too large."""


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What opening the log found and did (see spec/storage.md §6)."""

    segments: int
    records: int
    bytes: int
    verified_bytes: int
    trusted_bytes: int
    first_id: int
    next_id: int
    clean: bool
    checkpoint_used: bool
    indexes_loaded: int
    indexes_rebuilt: int
    truncated_bytes: int
    truncated_segment: int
    truncated_offset: int
    corruption: Literal["none", "bad-record", "id-gap", "unreadable"]
    corrupt_segment: int
    corrupt_offset: int
    corrupt_id: int
    quarantined_files: int
    stray_files: int
    """Files named like segments that were not segments of this log, set aside as ``.quarantine``."""
    duration_s: float
    message: str

    @property
    def ok(self) -> bool:
        """True when nothing was cut or quarantined."""
        return self.corruption == "none" and self.truncated_bytes == 0 and self.stray_files == 0


@dataclass(frozen=True, slots=True)
class LogStats:
    """A consistent snapshot of the log's counters."""

    first_id: int
    next_id: int
    durable_id: int
    segments: int
    total_bytes: int
    last_timestamp_ns: int
    last_sync_errno: int
    closed: bool
    fdatasyncs: int
    """How many group commits (fdatasyncs of the active segment) sync() has performed."""
    read_only_errno: int = 0
    """Non-zero (ENOSPC, EDQUOT) while recovery could not finish for lack of space: reads work, every
    append retries the unfinished steps and fails with :class:`LogIOError` until they succeed."""


_CORRUPTION = {0: "none", 1: "bad-record", 2: "id-gap", 3: "unreadable"}


def _report(rep: Any) -> RecoveryReport:
    return RecoveryReport(
        segments=rep.segments,
        records=rep.records,
        bytes=rep.bytes,
        verified_bytes=rep.verified_bytes,
        trusted_bytes=rep.trusted_bytes,
        first_id=rep.first_id,
        next_id=rep.next_id,
        clean=bool(rep.clean),
        checkpoint_used=bool(rep.checkpoint_used),
        indexes_loaded=rep.indexes_loaded,
        indexes_rebuilt=rep.indexes_rebuilt,
        truncated_bytes=rep.truncated_bytes,
        truncated_segment=rep.truncated_segment,
        truncated_offset=rep.truncated_offset,
        corruption=_CORRUPTION.get(rep.corruption, "unreadable"),  # type: ignore[arg-type]
        corrupt_segment=rep.corrupt_segment,
        corrupt_offset=rep.corrupt_offset,
        corrupt_id=rep.corrupt_id,
        quarantined_files=rep.quarantined_files,
        stray_files=rep.stray_files,
        duration_s=rep.duration_ns / 1e9,
        message=ffi.string(rep.message).decode("utf-8", "replace"),
    )


def _last_error() -> str:
    return str(ffi.string(lib.nmq_log_last_error()).decode("utf-8", "replace"))


def _raise(rc: int, what: str, report: RecoveryReport | None = None) -> None:
    """Turn a negative C return code into the matching exception."""
    msg = _last_error() or what
    if rc > -1000:
        raise LogIOError(-rc, f"{what}: {os.strerror(-rc)} ({msg})")
    if rc == lib.NMQ_LOG_ECLOSED:
        raise LogClosedError(f"{what}: the log is closed")
    if rc == lib.NMQ_LOG_ECORRUPT:
        raise LogCorruptError(f"{what}: {msg}", report)
    if rc == lib.NMQ_LOG_ELOCKED:
        raise LogLockedError(f"{what}: {msg}")
    if rc in (lib.NMQ_LOG_EBADREC, lib.NMQ_LOG_ETOOBIG):
        raise BadRecordsError(f"{what}: {msg}")
    raise LogError(f"{what}: {msg} (code {rc})")


class CLog:
    """One open topic log directory (a handle on the C ``nmq_log``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        segment_bytes: int = 100 * 1024 * 1024,
        sync_policy: SyncPolicy = "always",
        interval_ms: int = 10,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        max_payload: int = 65536,
        topic_id: int = 0,
        on_corrupt: OnCorrupt = "quarantine",
        verify_all: bool = False,
        index_interval: int = 4096,
    ) -> None:
        if sync_policy not in _POLICIES:
            raise ValueError(f"sync_policy must be one of {sorted(_POLICIES)}, not {sync_policy!r}")
        if on_corrupt not in _ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {sorted(_ON_CORRUPT)}, not {on_corrupt!r}")
        if not 4096 <= segment_bytes <= 1 << 40:
            raise ValueError("segment_bytes must be between 4 KiB and 1 TiB")
        if not 0 <= max_payload <= 1 << 30:
            raise ValueError("max_payload must be between 0 and 1 GiB")
        if sync_policy == "interval" and not 1 <= interval_ms <= 60_000:
            raise ValueError("interval_ms must be between 1 and 60000")
        if not 0 <= topic_id <= 0xFFFFFFFF:
            raise ValueError("topic_id must fit in u32")
        if not 8 <= index_interval <= 1 << 30:
            raise ValueError("index_interval must be between 8 bytes and 1 GiB")
        for name, v in (("retention_ms", retention_ms), ("retention_bytes", retention_bytes)):
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be positive or None")
        cfg = ffi.new("nmq_log_config *")
        cfg.segment_bytes = segment_bytes
        cfg.retention_ms = retention_ms or 0
        cfg.retention_bytes = retention_bytes or 0
        cfg.max_payload = max_payload
        cfg.topic_id = topic_id
        cfg.interval_ms = interval_ms
        cfg.sync_policy = _POLICIES[sync_policy]
        cfg.on_corrupt = _ON_CORRUPT[on_corrupt]
        cfg.verify_all = 1 if verify_all else 0
        cfg.index_interval = index_interval
        out = ffi.new("nmq_log **")
        rep = ffi.new("nmq_recovery_report *")
        self.path = os.fspath(path)
        rc = lib.nmq_log_open(os.fsencode(self.path), cfg, out, rep)
        if rc:
            _raise(rc, f"opening log {self.path}", _report(rep))
        self.report: RecoveryReport = _report(rep)
        """What recovery found and did when this handle was opened."""
        self.segment_bytes = segment_bytes
        self.max_payload = max_payload
        self._h = ffi.gc(out[0], lib.nmq_log_free)
        # Out-parameters reused by append (one appender at a time is the contract).
        self._a_first = ffi.new("uint64_t *")
        self._a_last = ffi.new("uint64_t *")

    @property
    def handle(self) -> Any:
        """The C handle (``nmq_log *``), for another C module of this extension (the data plane,
        ``nanomq._c.plane``); it stays valid while this object lives."""
        return self._h

    # -- writing ----------------------------------------------------------------------------

    def append(self, records: Buffer, count: int, timestamp_ns: int = 0) -> tuple[int, int]:
        """Append ``count`` records packed back to back; returns ``(first_id, last_id)``.

        The log stamps id, timestamp (``timestamp_ns`` or now, never below the previous one),
        topic id and CRC. Not durable until :meth:`sync` returns. One appender at a time.
        """
        if not 1 <= count <= 0xFFFFFFFF:
            raise BadRecordsError("count must be >= 1")
        buf = ffi.from_buffer(records)
        rc = lib.nmq_log_append(self._h, buf, len(buf), count, timestamp_ns & _U64, self._a_first, self._a_last)
        if rc:
            _raise(rc, "append")
        return int(self._a_first[0]), int(self._a_last[0])

    def sync(self) -> int:
        """Make every record appended before this call durable; returns the durable last id.

        Safe to call from any thread, concurrently with appends (the GIL is released during the
        fdatasync). Concurrent callers share one fdatasync (group commit).
        """
        out = ffi.new("uint64_t *")
        rc = lib.nmq_log_sync(self._h, out)
        if rc:
            _raise(rc, "sync")
        return int(out[0])

    # -- reading ----------------------------------------------------------------------------

    def read(self, from_id: int, max_records: int = 256, max_bytes: int = 1 << 20) -> tuple[memoryview, int, int]:
        """Whole records from ``from_id`` (clamped to the first retained id) within one segment.

        Returns ``(view, count, first_id)``: a read-only zero-copy view of ``count`` records whose
        first id is ``first_id``. At most ``max_records`` records and ``max_bytes`` bytes, except
        that one record is always returned when available. ``count == 0`` at the end of the log.
        """
        if from_id < 0 or max_records < 0 or max_bytes < 0:
            raise ValueError("from_id, max_records and max_bytes must be >= 0")
        ptr = ffi.new("const uint8_t **")
        ln = ffi.new("uint64_t *")
        first = ffi.new("uint64_t *")
        seg = ffi.new("nmq_seg **")
        n = lib.nmq_log_read(self._h, from_id & _U64, min(max_records, 0xFFFFFFFF), max_bytes & _U64, ptr, ln, first, seg)
        if n < 0:
            _raise(n, "read")
        if n == 0:
            return memoryview(b""), 0, int(first[0])
        h, s = self._h, seg[0]
        # The view keeps `p` alive; when it goes, the segment is unpinned (and unmapped if retired).
        p = ffi.gc(ptr[0], lambda _p: lib.nmq_log_unpin(h, s))
        return memoryview(ffi.buffer(p, ln[0])).toreadonly(), int(n), int(first[0])

    def find_ts(self, timestamp_ns: int) -> int:
        """The first id whose timestamp is >= ``timestamp_ns``, or ``next_id`` if none is."""
        out = ffi.new("uint64_t *")
        rc = lib.nmq_log_find_ts(self._h, max(0, timestamp_ns) & _U64, out)
        if rc:
            _raise(rc, "find_ts")
        return int(out[0])

    # -- maintenance ------------------------------------------------------------------------

    def set_retention(self, retention_ms: int | None, retention_bytes: int | None) -> None:
        """Change the retention of the open log (None: none); the next :meth:`retain` applies it."""
        rc = lib.nmq_log_set_retention(self._h, retention_ms or 0, retention_bytes or 0)
        if rc:
            _raise(rc, "set_retention")

    def retain(self, now_ns: int = 0) -> int:
        """Delete whole segments beyond retention (never the active one); returns how many."""
        out = ffi.new("uint64_t *")
        rc = lib.nmq_log_retain(self._h, max(0, now_ns) & _U64, out)
        if rc:
            _raise(rc, "retention")
        return int(out[0])

    def trim(self) -> int:
        """Drop the mapped log pages from this process's resident set (they stay in the page
        cache; later reads map them again). Returns the bytes of log covered."""
        out = ffi.new("uint64_t *")
        rc = lib.nmq_log_trim(self._h, out)
        if rc:
            _raise(rc, "trim")
        return int(out[0])

    @property
    def unsealed(self) -> int:
        """Segments rotated out by appends and not sealed yet: the next :meth:`sync` seals them
        (fdatasync, index, checkpoint) before it syncs the active segment. Rotation itself does no
        disk flush, so an appender on an event loop never waits for one; when this is non-zero it
        should have :meth:`sync` run soon in another thread."""
        return int(lib.nmq_log_unsealed(self._h))

    def stats(self) -> LogStats:
        """A snapshot of ids, sizes and the last background sync error."""
        st = ffi.new("nmq_log_stats *")
        lib.nmq_log_stats_get(self._h, st)
        return LogStats(
            st.first_id, st.next_id, st.durable_id, st.segments, st.total_bytes,
            st.last_timestamp_ns, st.last_sync_errno, bool(st.closed), st.fdatasyncs, st.read_only_errno,
        )

    def close(self, clean: bool = True) -> None:
        """Close; with ``clean`` sync everything and write the clean-shutdown checkpoint.

        Idempotent. Outstanding read views stay valid until they are released.
        """
        rc = lib.nmq_log_close(self._h, 1 if clean else 0)
        if rc:
            _raise(rc, "close")


def fault_set(kind: Literal["write", "fsync", "ftruncate", "fallocate", "slow_fsync"], nth: int = 1, count: int = 1,
              err: int = _errno.EIO) -> None:
    """Test hook: make the ``nth`` next call of ``kind`` (process-wide) and the ``count - 1``
    following ones fail with ``err`` (``count=0``: every call until :func:`fault_clear`);
    ``slow_fsync``: every fsync and fdatasync sleeps ``err`` microseconds first, then succeeds."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"kind must be one of {sorted(FAULT_KINDS)}")
    if nth < 1 or count < 0:
        raise ValueError("nth must be >= 1 and count >= 0")
    lib.nmq_log_fault_set(FAULT_KINDS[kind], nth, count, err)


def fault_clear() -> None:
    """Remove every injected fault."""
    lib.nmq_log_fault_clear()

