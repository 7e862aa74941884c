"""Thin Python wrapper over the C ring (``nanomq._c._ring``): handles, argument checks, errors.

A :class:`Ring` formats or attaches to memory it is given (a heap block it allocates itself, or any
writable buffer such as an ``mmap`` of a file in /dev/shm) and owns a process-local C handle (freed
by ``ffi.gc``). It does not know about processes, names or liveness: that is :mod:`nanomq.ipc`.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from itertools import accumulate
from types import TracebackType
from typing import Any

from nanomq._c import realize_all
from nanomq._c._ring import ffi, lib

# Realize every C type and function now, in the importing thread (cffi#271: lazy realization
# racing between threads can abort the process).
realize_all(ffi, lib, "char *", "int *", "uint32_t *", "uint32_t[]", "uint8_t **", "uint8_t[]")

__all__ = [
    "Ring",
    "Claim",
    "RingError",
    "RingFull",
    "RecordTooLarge",
    "NotARing",
    "LayoutVersionError",
    "SPSC",
    "MPSC",
    "WAIT_SPIN",
    "WAIT_YIELD",
    "WAIT_BLOCK",
    "HEADER_SIZE",
    "MAX_BATCH",
    "MAX_PRODUCERS",
    "required_size",
]

Buffer = bytes | bytearray | memoryview

SPSC: int = lib.NMQ_RING_SPSC
MPSC: int = lib.NMQ_RING_MPSC
WAIT_SPIN: int = lib.NMQ_WAIT_SPIN
WAIT_YIELD: int = lib.NMQ_WAIT_YIELD
WAIT_BLOCK: int = lib.NMQ_WAIT_BLOCK
HEADER_SIZE: int = lib.NMQ_RING_HDR_SIZE
MAX_BATCH: int = lib.NMQ_RING_MAX_BATCH
MAX_PRODUCERS: int = lib.NMQ_RING_MAX_PRODUCERS
_EAGAIN: int = lib.NMQ_RING_EAGAIN
_EBUFSIZE: int = lib.NMQ_RING_EBUFSIZE
# The calls of the single-record hot paths, looked up once (each lookup on lib costs ~20 ns).
_c_push, _c_pop, _unpack, _from_buffer = lib.nmq_ring_push, lib.nmq_ring_pop, ffi.unpack, ffi.from_buffer


class RingError(Exception):
    """Any error reported by the C ring; ``code`` is the C error code (negative)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class RingFull(RingError):
    """No room for the record right now (back-pressure; nothing was written)."""


class RecordTooLarge(RingError, ValueError):
    """The record exceeds the ring's maximum record size (capacity / 2 - 8)."""


class NotARing(RingError):
    """The memory does not hold a ring (bad magic, or a header inconsistent with its size)."""


class LayoutVersionError(NotARing):
    """The memory holds a ring of another layout version."""


_MESSAGES = {
    lib.NMQ_RING_EAGAIN: (RingFull, "ring is full"),
    lib.NMQ_RING_EMSGSIZE: (RecordTooLarge, "record larger than the ring's maximum record size"),
    lib.NMQ_RING_EINVAL: (RingError, "invalid argument or state"),
    lib.NMQ_RING_EBADMAGIC: (NotARing, "not a NanoMQ ring (bad magic)"),
    lib.NMQ_RING_EVERSION: (LayoutVersionError, "ring of an unsupported layout version"),
    lib.NMQ_RING_ESIZE: (NotARing, "bad ring size (capacity not a power of two, or memory too small)"),
    lib.NMQ_RING_EBUSY: (RingError, "role already taken"),
    lib.NMQ_RING_ENOMEM: (MemoryError, "out of memory"),
    lib.NMQ_RING_EHEADER: (NotARing, "corrupt ring header (max_producers or head/tail positions inconsistent)"),
}


def _raise(code: int, what: str = "") -> None:
    cls, msg = _MESSAGES.get(code, (RingError, f"ring error {code}"))
    if what:
        msg = f"{what}: {msg}"
    if cls is MemoryError:
        raise MemoryError(msg)
    raise cls(msg, code)


def required_size(capacity: int) -> int:
    """Bytes of memory a ring of ``capacity`` data bytes needs (header included)."""
    return int(lib.nmq_ring_required_size(capacity))


def _check_capacity(capacity: int) -> None:
    if capacity < 64 or capacity & (capacity - 1):
        raise ValueError(f"capacity must be a power of two >= 64, not {capacity}")


class Ring:
    """A ring of variable-length records over caller-provided (or self-allocated) memory.

    Use :meth:`heap` for an in-process ring, :meth:`format` / :meth:`attach` over a writable buffer
    for a shared one. One handle per thread/process role: the handle caches indexes locally.
    """

    __slots__ = ("_buf", "_owner", "_h", "_max", "_out", "_outc", "_out_cap", "_batch_out", "_batch_cap", "_lens",
                 "_len1", "_ptr1", "_claim", "__weakref__")

    def __init__(self, buf: Any, owner: object = None) -> None:
        """Attach to the ring in ``buf`` (a cdata ``uint8_t *`` block or any writable buffer)."""
        mine = not isinstance(buf, ffi.CData)
        if mine:
            buf = ffi.from_buffer("uint8_t[]", buf, require_writable=True)
        self._buf = buf
        self._owner = owner  # keeps the memory alive as long as the handle
        err = ffi.new("int *")
        h = lib.nmq_ring_attach(buf, len(buf), err)
        if h == ffi.NULL:
            if mine:
                ffi.release(buf)  # so the caller can close an mmap it passed in
            self._buf = None
            _raise(err[0], "attach")
        self._h = ffi.gc(h, lib.nmq_ring_free)
        self._max = int(lib.nmq_ring_max_record(self._h))
        # Output buffers of pop (grown to the largest record seen) and pop_batch (grown likewise).
        self._out_cap = 0
        self._out: Any = None
        self._outc: Any = None
        self._ensure_out(min(self._max, 65536))
        self._batch_cap = 0
        self._batch_out: Any = None
        self._lens = ffi.new("uint32_t[]", MAX_BATCH)
        self._len1 = ffi.new("uint32_t *")
        self._ptr1 = ffi.new("uint8_t **")
        self._claim: Claim | None = None

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def format(cls, buf: Any, capacity: int, mode: int = SPSC) -> Ring:
        """Write an empty ring of ``capacity`` bytes into ``buf`` and attach to it."""
        _check_capacity(capacity)
        mine = not isinstance(buf, ffi.CData)
        if mine:
            buf = ffi.from_buffer("uint8_t[]", buf, require_writable=True)
        rc = lib.nmq_ring_init(buf, len(buf), capacity, mode)
        if rc:
            if mine:
                ffi.release(buf)
            _raise(rc, "init")
        return cls(buf)

    @classmethod
    def heap(cls, capacity: int, mode: int = SPSC) -> Ring:
        """A ring in process memory, aligned to 128 bytes (head/tail lines must not straddle)."""
        _check_capacity(capacity)
        size = required_size(capacity)
        raw = ffi.new("uint8_t[]", size + 128)
        addr = int(ffi.cast("uintptr_t", raw))
        aligned = ffi.cast("uint8_t *", (addr + 127) & ~127)
        block = ffi.buffer(aligned, size)
        view = ffi.from_buffer("uint8_t[]", block, require_writable=True)
        rc = lib.nmq_ring_init(view, size, capacity, mode)
        if rc:
            _raise(rc, "init")
        return cls(view, owner=raw)

    @classmethod
    def attach(cls, buf: Any) -> Ring:
        """Attach to an existing ring in ``buf``; raises :class:`NotARing` / :class:`LayoutVersionError`."""
        return cls(buf)

    def close(self) -> None:
        """Free the C handle now and drop references to the memory (idempotent)."""
        h = getattr(self, "_h", None)
        if h is not None:
            ffi.release(h)  # runs nmq_ring_free
            self._h = None
        buf = getattr(self, "_buf", None)
        if buf is not None and self._owner is None:
            ffi.release(buf)  # lets an mmap be closed (no exported buffer left)
        self._buf = None
        self._owner = None

    # ---- properties ----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Data bytes in the ring (a power of two)."""
        return int(lib.nmq_ring_capacity(self._h))

    @property
    def max_record(self) -> int:
        """Largest record payload accepted (capacity / 2 - 8)."""
        return self._max

    @property
    def mode(self) -> int:
        """:data:`SPSC` or :data:`MPSC`."""
        return int(lib.nmq_ring_mode(self._h))

    @property
    def used(self) -> int:
        """Bytes between head and tail right now (frames, headers and padding included)."""
        return int(lib.nmq_ring_used(self._h))

    @property
    def handle(self) -> Any:
        """The C handle (for benchmarks and tests that call ``lib`` directly)."""
        return self._h

    def reload(self) -> None:
        """Reload this handle's cached head and tail from the shared header and forget any claim or
        peek in progress (after taking over a producer or consumer role). Not a sync to storage."""
        lib.nmq_ring_reload(self._h)

    # ---- producer ------------------------------------------------------------------------------

    def push(self, data: Buffer) -> bool:
        """Append one record; False when the ring is full (nothing written)."""
        # cffi passes a bytes object's buffer directly (no from_buffer: ~120 ns saved per call).
        rc = _c_push(self._h, data if type(data) is bytes else _from_buffer(data), len(data))
        if rc == 0:
            return True
        if rc == _EAGAIN:
            return False
        _raise(rc, "push")
        return False

    def push_batch(self, records: Sequence[bytes]) -> int:
        """Append up to 256 records in one C call; returns how many went in (a prefix)."""
        n = len(records)
        if n > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} records per batch, not {n}")
        if n == 0:
            return 0
        # array('I', map(len, ...)) builds the length table in C: ~3x cheaper than assigning 256
        # cdata items from Python.
        lens = ffi.from_buffer("uint32_t[]", array("I", map(len, records)))
        rc = lib.nmq_ring_push_batch(self._h, b"".join(records), lens, n)
        if rc < 0:
            _raise(rc, "push_batch")
        return int(rc)

    def claim(self, length: int) -> Claim:
        """Reserve ``length`` bytes in the ring (zero-copy) and return the :class:`Claim`.

        Best used as a context manager, which commits when the block ends normally and aborts when
        it raises (an MPSC ring would otherwise wait at the unfinished record forever)::

            with ring.claim(n) as buf:   # buf: a writable buffer of n bytes
                buf[:] = data            # or sock.recv_into(buf), struct.pack_into(..., buf, 0)

        Or write into the claim (``c[a:b] = ...``, ``c.buffer``) and call :meth:`commit` or
        :meth:`abort`. One claim at a time per handle. Raises :class:`RingFull` when there is no room.
        """
        if length < 0:
            raise ValueError("length must be >= 0")
        rc = lib.nmq_ring_claim(self._h, length, self._ptr1)
        if rc:
            _raise(rc, "claim")
        self._claim = Claim(self, ffi.buffer(self._ptr1[0], length))
        return self._claim

    def commit(self) -> None:
        """Publish the record reserved by :meth:`claim`."""
        rc = lib.nmq_ring_commit(self._h)
        if rc:
            _raise(rc, "commit (no claim outstanding)")
        self._end_claim()

    def abort(self) -> None:
        """Give up the record reserved by :meth:`claim`: nothing of it is delivered.

        SPSC: the space is reused by the next record. MPSC: the space (already claimed in the
        shared tail, possibly with other producers' records after it) becomes padding the consumer
        skips, so the records claimed after it are delivered.
        """
        rc = lib.nmq_ring_abort(self._h)
        if rc:
            _raise(rc, "abort (no claim outstanding)")
        self._end_claim()

    def _end_claim(self) -> None:
        if self._claim is not None:
            self._claim._open = False
            self._claim = None

    # ---- consumer ------------------------------------------------------------------------------

    def _ensure_out(self, cap: int) -> None:
        if cap > self._out_cap or self._out is None:
            self._out = ffi.new("uint8_t[]", max(cap, 8))
            self._outc = ffi.cast("char *", self._out)  # ffi.unpack of a char * makes bytes in one call
            self._out_cap = max(cap, 8)

    def pop(self) -> bytes | None:
        """Remove and return the next record, or None when the ring is empty."""
        rc = _c_pop(self._h, self._out, self._out_cap, self._len1)
        if rc == 1:
            data: bytes = _unpack(self._outc, self._len1[0])
            return data
        while rc:
            if rc != _EBUFSIZE:
                _raise(rc, "pop")
            self._ensure_out(int(self._len1[0]))
            rc = lib.nmq_ring_pop(self._h, self._out, self._out_cap, self._len1)
            if rc == 1:
                grown: bytes = ffi.unpack(self._outc, self._len1[0])
                return grown
        return None

    def pop_batch(self, max_records: int = MAX_BATCH) -> list[bytes]:
        """Remove up to ``max_records`` (<= 256) records in one C call; [] when empty."""
        blob, lens = self.pop_batch_raw(max_records)
        offs = list(accumulate(lens, initial=0))
        return [blob[a:b] for a, b in zip(offs, offs[1:], strict=False)]

    def pop_batch_raw(self, max_records: int = MAX_BATCH) -> tuple[bytes, list[int]]:
        """Like :meth:`pop_batch` but returns the records back to back in one bytes, plus lengths.

        Cheaper than building one bytes object per record when the caller can parse in place.
        """
        if not 0 < max_records <= MAX_BATCH:
            raise ValueError(f"max_records must be in 1..{MAX_BATCH}")
        if self._batch_out is None:
            self._batch_cap = 1 << 18
            self._batch_out = ffi.new("uint8_t[]", self._batch_cap)
        while True:
            rc = lib.nmq_ring_pop_batch(self._h, self._batch_out, self._batch_cap, self._lens, max_records)
            if rc > 0:
                lens: list[int] = ffi.unpack(self._lens, rc)
                return ffi.buffer(self._batch_out, sum(lens))[:], lens
            if rc == 0:
                return b"", []
            if rc != _EBUFSIZE:
                _raise(rc, "pop_batch")
            self._batch_cap = int(self._lens[0])  # the next record alone is larger than the buffer
            self._batch_out = ffi.new("uint8_t[]", self._batch_cap)

    def peek(self) -> Any | None:
        """A read-only view of the next record without removing it (zero-copy), or None when empty.

        The view is valid until :meth:`release`; copy what you need before releasing.
        """
        rc = lib.nmq_ring_peek(self._h, self._ptr1, self._len1)
        if rc == 0:
            return None
        return memoryview(ffi.buffer(self._ptr1[0], self._len1[0])).toreadonly()

    def release(self) -> None:
        """Consume the record returned by :meth:`peek`."""
        rc = lib.nmq_ring_release(self._h)
        if rc:
            _raise(rc, "release (nothing peeked)")

    # ---- waiting -------------------------------------------------------------------------------

    def readable(self) -> bool:
        """True when a record (or padding) is ready at the read position."""
        return bool(lib.nmq_ring_readable(self._h))

    def writable(self, length: int) -> bool:
        """True when a record of ``length`` bytes would fit now."""
        return bool(lib.nmq_ring_writable(self._h, length))

    def wait_readable(self, strategy: int, spin_ns: int, timeout_ns: int) -> bool:
        """Wait in C (GIL released) up to ``timeout_ns`` for data; keep timeouts short (≤ 100 ms)."""
        return bool(lib.nmq_ring_wait_readable(self._h, strategy, spin_ns, timeout_ns))

    def wait_writable(self, length: int, strategy: int, spin_ns: int, timeout_ns: int) -> bool:
        """Wait in C up to ``timeout_ns`` for room for a ``length``-byte record."""
        return bool(lib.nmq_ring_wait_writable(self._h, length, strategy, spin_ns, timeout_ns))

    # ---- peers ---------------------------------------------------------------------------------

    def register(self, role: int, pid: int) -> int:
        """Take a role slot (0 consumer, 1 producer) for ``pid``; returns the slot or -1 if all taken."""
        rc = int(lib.nmq_ring_register(self._h, role, pid))
        return rc if rc >= 0 else -1

    def replace(self, role: int, slot: int, old_pid: int, pid: int) -> bool:
        """Atomically swap ``old_pid`` for ``pid`` (0 frees the slot) in a role slot."""
        return int(lib.nmq_ring_register_replace(self._h, role, slot, old_pid, pid)) >= 0

    def unregister(self, role: int, slot: int, pid: int) -> None:
        """Give a role slot back (counts as a clean close)."""
        lib.nmq_ring_unregister(self._h, role, slot, pid)

    def peer_pids(self, role: int) -> list[int]:
        """pids in the role's slots (0 = free slot)."""
        n = 1 if role == 0 else int(lib.nmq_ring_max_producers(self._h))
        return [int(lib.nmq_ring_peer_pid(self._h, role, i)) for i in range(n)]

    def peer_counts(self, role: int) -> tuple[int, int]:
        """(registered ever, closed cleanly) for a role."""
        return int(lib.nmq_ring_peer_count(self._h, role, 0)), int(lib.nmq_ring_peer_count(self._h, role, 1))


class Claim:
    """Space reserved by :meth:`Ring.claim`: write the record into it, then commit or abort.

    As a context manager it yields the writable buffer and, on leaving the block, commits (normal
    exit) or aborts (an exception), unless the claim was already committed or aborted by hand.
    Indexing and slice assignment go to the buffer; :attr:`buffer` is the buffer itself (it
    supports the buffer protocol: ``memoryview``, ``recv_into``, ``pack_into``). The buffer
    points into the ring: do not use it after the claim ends.
    """

    __slots__ = ("_ring", "buffer", "_open")

    def __init__(self, ring: Ring, buffer: Any) -> None:
        self._ring = ring
        self.buffer = buffer
        self._open = True

    def __len__(self) -> int:
        return len(self.buffer)

    def __getitem__(self, key: int | slice) -> Any:
        return self.buffer[key]

    def __setitem__(self, key: int | slice, value: Any) -> None:
        self.buffer[key] = value

    @property
    def open(self) -> bool:
        """True until the claim is committed or aborted."""
        return self._open

    def commit(self) -> None:
        """Publish the record (same as :meth:`Ring.commit`)."""
        self._check_open("commit")
        self._ring.commit()

    def abort(self) -> None:
        """Give the record up (same as :meth:`Ring.abort`)."""
        self._check_open("abort")
        self._ring.abort()

    def _check_open(self, what: str) -> None:
        if not self._open:  # never act on a later claim of the same handle
            raise RingError(f"{what}: this claim was already committed or aborted", lib.NMQ_RING_EINVAL)

    def __enter__(self) -> Any:
        return self.buffer

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if not self._open:
            return
        if et is None:
            self._ring.commit()
        else:
            self._ring.abort()
