"""Thin wrapper over the C group-commit threads (``src/syncer.c``, in the ``_log`` module).

:class:`Syncer` owns the C object and the eventfd its threads write to when a sync finishes; the
event loop watches :attr:`Syncer.fd` and calls :meth:`Syncer.take` when it is readable. The
contract (coalescing, one log per thread at a time, lifetime) is in ``src/syncer.h``.
"""

from __future__ import annotations

import contextlib
import os

from nanomq._c import realize_all
from nanomq._c._log import ffi, lib
from nanomq._c.log import CLog, LogClosedError, LogError, _raise

__all__ = ["Syncer"]

realize_all(ffi, lib, "nmq_sync_done[]")

_TAKE = 256


class Syncer:
    """C threads that run ``nmq_log_sync`` on request; results are read with :meth:`take`."""

    __slots__ = ("fd", "_s", "_out")

    def __init__(self, threads: int = 4) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        """Readable when a sync has finished (an eventfd; :meth:`take` drains it)."""
        s = lib.nmq_syncer_new(self.fd, threads)
        if s == ffi.NULL:
            os.close(self.fd)
            raise OSError(f"cannot start {threads} sync threads")
        self._s = s
        self._out = ffi.new("nmq_sync_done[]", _TAKE)

    def request(self, log: CLog, index: int) -> None:
        """Sync ``log`` (number ``index``) soon, covering everything appended to it before now."""
        if not 0 <= index < 0xFFFFFFFF:
            raise ValueError(f"log index {index} is outside 0..2**32-2")
        if self._s is None:
            raise LogClosedError("requesting a sync: the syncer is closed")
        rc = lib.nmq_syncer_request(self._s, log.handle, index)
        if rc:
            _raise(rc, "requesting a sync")

    def busy(self, index: int) -> bool:
        """Whether a sync of log ``index`` is queued or running."""
        if self._s is None:
            return False
        return bool(lib.nmq_syncer_busy(self._s, index))

    def take(self) -> list[tuple[int, int, LogError | None]]:
        """Every finished sync not taken yet: (index, durable id, None or the error it raised)."""
        out: list[tuple[int, int, LogError | None]] = []
        if self._s is None:
            return out
        with contextlib.suppress(BlockingIOError):  # woken for results already taken
            os.eventfd_read(self.fd)
        while True:
            n = lib.nmq_syncer_take(self._s, self._out, _TAKE)
            for i in range(n):
                d = self._out[i]
                err: LogError | None = None
                if d.rc:
                    try:
                        _raise(d.rc, "sync")
                    except LogError as e:
                        err = e
                out.append((d.index, d.durable_id, err))
            if n < _TAKE:
                return out

    def close(self) -> None:
        """Stop the threads (after the running syncs) and close the eventfd. Idempotent."""
        if self._s is not None:
            lib.nmq_syncer_free(self._s)
            self._s = None
            os.close(self.fd)
