"""Durable, atomic consumer-group offsets: an append-only CRC'd journal with compaction.

Format (spec/storage.md §8): ``<dir>/offsets.journal`` is a sequence of entries

    u32 length of body | u32 CRC-32C of body | body = u64 position, u16 len(group), u16 len(topic),
                                                      group UTF-8, topic UTF-8

all little-endian. Replaying the entries in order gives the current value of every key; the first
entry that is short or fails its CRC ends the journal (a torn append) and is cut on open. A set is
one ``write`` of one entry followed by ``fdatasync``: after a crash the key holds the old or the new
value, never garbage. When the journal holds mostly superseded entries it is compacted: the live
entries are written to ``offsets.journal.tmp``, fsynced, renamed over the journal and the directory
is fsynced, so a crash leaves either the old journal or the new one. From the rename on, the store
writes only to the new journal; if the directory fsync fails, every later set first retries it and
fails with OffsetStoreError (writing nothing) until it succeeds, because until then a crash could
bring back the old journal and lose what was appended to the new one.

Thread-safe (one lock); one process per directory (the caller — the broker — owns the data dir).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Iterable
from types import TracebackType

from nanomq._c.crc import crc32c
from nanomq.storage.catalog import fsync_dir
from nanomq.storage.errors import OffsetStoreError

__all__ = ["OffsetStore"]

_HDR = struct.Struct("<II")
_BODY = struct.Struct("<QHH")
_MAX_KEY = 0xFFFF


def _entry(group: str, topic: str, position: int) -> bytes:
    g, t = group.encode(), topic.encode()
    body = _BODY.pack(position, len(g), len(t)) + g + t
    return _HDR.pack(len(body), crc32c(body)) + body


class OffsetStore:
    """Committed positions per ``(group, topic)``; every :meth:`set` is durable when it returns."""

    JOURNAL = "offsets.journal"

    def __init__(self, directory: str | os.PathLike[str], *, compact_min_bytes: int = 1 << 20) -> None:
        """Open (creating if needed) the store in ``directory`` and replay its journal."""
        self.path = os.fspath(directory)
        os.makedirs(self.path, exist_ok=True)
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str], int] = {}
        self._compact_min = compact_min_bytes
        self.recovered_cut_bytes = 0
        """Bytes of a torn final entry cut when the journal was opened (0 normally)."""
        self._dir_unsynced = False
        """A compaction's rename is not known to be durable yet (its directory fsync failed)."""
        jpath = os.path.join(self.path, self.JOURNAL)
        try:
            tmp = jpath + ".tmp"
            if os.path.exists(tmp):
                os.unlink(tmp)  # an unfinished compaction: the old journal is still complete
            self._fd = os.open(jpath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            data = _read_all(self._fd)
            good = self._replay(data)
            if good < len(data):
                self.recovered_cut_bytes = len(data) - good
                os.ftruncate(self._fd, good)
                os.fsync(self._fd)
            self._size = good
        except OSError as e:
            raise OffsetStoreError(f"cannot open offset store {self.path}: {e}") from e

    def _replay(self, data: bytes) -> int:
        off = 0
        while off + _HDR.size <= len(data):
            ln, crc = _HDR.unpack_from(data, off)
            body = data[off + _HDR.size : off + _HDR.size + ln]
            if ln < _BODY.size or len(body) != ln or crc32c(body) != crc:
                break
            pos, gl, tl = _BODY.unpack_from(body)
            if _BODY.size + gl + tl != ln:
                break
            try:
                g = body[_BODY.size : _BODY.size + gl].decode()
                t = body[_BODY.size + gl :].decode()
            except UnicodeDecodeError:
                break
            self._values[(g, t)] = pos
            off += _HDR.size + ln
        return off

    def get(self, group: str, topic: str) -> int | None:
        """The committed position of ``group`` on ``topic``, or None if never set."""
        with self._lock:
            return self._values.get((group, topic))

    def items(self) -> dict[tuple[str, str], int]:
        """A copy of every committed position."""
        with self._lock:
            return dict(self._values)

    def set(self, group: str, topic: str, position: int) -> None:
        """Commit ``position`` durably (one write + fdatasync); atomic across a crash."""
        self.set_many([(group, topic, position)])

    def set_many(self, items: Iterable[tuple[str, str, int]]) -> None:
        """Commit several positions with one fdatasync (each entry is individually atomic)."""
        entries = []
        staged: dict[tuple[str, str], int] = {}
        for group, topic, position in items:
            if not isinstance(position, int) or not 0 <= position < 1 << 64:
                raise ValueError("position must be an int in [0, 2**64)")
            if len(group.encode()) > _MAX_KEY or len(topic.encode()) > _MAX_KEY:
                raise ValueError("group and topic names must be < 64 KiB")
            entries.append(_entry(group, topic, position))
            staged[(group, topic)] = position
        if not entries:
            return
        blob = b"".join(entries)
        with self._lock:
            if self._fd < 0:
                raise OffsetStoreError("offset store is closed")
            if self._dir_unsynced:
                # A compaction renamed a new journal in but could not sync the directory: until it
                # can, a crash may bring the old journal back, so nothing appended to the new one
                # would be durable. Retry; refuse the set (changing nothing) while it fails.
                try:
                    fsync_dir(self.path)
                except OSError as e:
                    raise OffsetStoreError(f"committing offsets failed: the compacted journal is not yet "
                                           f"durable in its directory (directory fsync: {e})") from e
                self._dir_unsynced = False
            try:
                _pwrite_all(self._fd, blob, self._size)
                os.fdatasync(self._fd)
            except OSError as e:
                # Cut any partial write so the journal stays a clean sequence of entries (if the
                # cut itself fails, replay stops at the torn entry anyway: old values survive).
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                raise OffsetStoreError(f"committing offsets failed: {e}") from e
            self._size += len(blob)
            self._values.update(staged)
            if self._size > self._compact_min and self._size > 4 * self._live_bytes():
                self._compact()

    def _live_bytes(self) -> int:
        return sum(_HDR.size + _BODY.size + len(g.encode()) + len(t.encode()) for g, t in self._values)

    def _compact(self) -> None:
        """Rewrite the journal with only live entries (tmp + fsync + rename + fsync dir).

        Until the rename, a failure leaves the old journal in use (compaction is an optimisation).
        After it, the directory names the new journal, so the store switches to it whatever
        happens next; if the directory fsync then fails, the rename is not yet durable (a crash
        may bring back the old journal, which holds every value set so far, the current one
        included). The next :meth:`set_many` retries that fsync and refuses to commit until it
        succeeds, so no set is ever acknowledged into a journal a crash could discard.
        """
        jpath = os.path.join(self.path, self.JOURNAL)
        tmp = jpath + ".tmp"
        blob = b"".join(_entry(g, t, p) for (g, t), p in self._values.items())
        fd = -1
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            _pwrite_all(fd, blob, 0)
            os.fsync(fd)
            os.replace(tmp, jpath)
        except OSError:
            # The old journal is intact and still named by the directory: keep using it.
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return
        os.close(self._fd)  # unlinked now: never written again
        self._fd = fd
        self._size = len(blob)
        try:
            fsync_dir(self.path)
        except OSError:
            self._dir_unsynced = True

    def close(self) -> None:
        """Close the journal file (every set was already durable). Idempotent."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> OffsetStore:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    off = 0
    while True:
        b = os.pread(fd, 1 << 20, off)
        if not b:
            return b"".join(chunks)
        chunks.append(b)
        off += len(b)


def _pwrite_all(fd: int, data: bytes, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view = view[n:]
        off += n
