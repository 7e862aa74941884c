"""Shared-memory channels between processes on one host, over the C ring (``nanomq._c.ring``).

Theory of operation
-------------------
A channel is a file in ``/dev/shm`` (``/dev/shm/nanomq-<name>``) holding one ring: a 4 KiB header
(magic, layout version, capacity, head, tail, wake-up words, a table of peer pids) and a
power-of-two data area of length-prefixed, 8-byte aligned records. Every process maps the file
``MAP_SHARED`` and gets its own C handle, which keeps cached copies of the other side's index, so
the hot path touches a shared cache line only when the cache says "full" or "empty".

* SPSC channels (the default) have one producer and one consumer; MPSC channels (``mpsc=True``)
  accept up to 16 producers, which claim space with a CAS on the tail (Aeron style) and commit
  each record by a release store of its length word. The consumer is always single.
* Publication is release/acquire: the consumer never sees a partial record, whatever the CPU.
* Roles are taken lazily: the first :meth:`Channel.send` registers the calling process as a
  producer, the first :meth:`Channel.recv` as the consumer (pids go into the header). A second
  live consumer, or a second live producer of an SPSC channel, gets :class:`RoleTaken`.
* Waiting: a full ring (for ``send``) or an empty one (for ``recv``) is waited on according to the
  channel's wait strategy — ``"spin"`` (busy-poll in C: lowest latency, one core at 100 %),
  ``"yield"`` (spin ``spin_us`` then ``sched_yield``) or ``"block"`` (spin ``spin_us`` then sleep
  on a futex in the shared header; the other side issues ``FUTEX_WAKE`` only when a waiter has
  announced itself, so the fast path costs no system call and an idle consumer uses ~0 % CPU).
  Every wait is cut in slices of at most 100 ms: between slices Python runs signal handlers
  (Ctrl-C works), checks the caller's deadline and checks that the peers are still alive.
* Back-pressure: a full ring never drops anything. ``send`` waits up to its timeout and then raises
  :class:`ChannelFull` (with nothing written).
* Peer death: pids are checked (``kill(pid, 0)`` plus ``/proc`` for zombies) at most every 100 ms
  while waiting. A consumer first drains every committed record, then gets :class:`PeerDied` if a
  producer died, or :class:`ChannelClosed` once every producer that attached has closed cleanly.
  A producer blocked on a full ring gets :class:`PeerDied` / :class:`ChannelClosed` likewise.
  pids can be reused by the OS; the check is a liveness heuristic, not a lease.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import time
from collections.abc import Iterator, Sequence
from itertools import accumulate
from types import TracebackType
from typing import Any, Literal

from nanomq._c import ring as _ring

__all__ = [
    "Channel",
    "ChannelError",
    "ChannelFull",
    "ChannelClosed",
    "PeerDied",
    "NotAChannel",
    "LayoutVersionError",
    "RoleTaken",
    "RecordTooLarge",
    "WaitStrategy",
    "SHM_DIR",
    "MAX_BATCH",
]

WaitStrategy = Literal["spin", "yield", "block"]
"""How a process waits on an empty (recv) or full (send) ring: see the theory of operation."""

SHM_DIR = "/dev/shm"
"""Where named channels live (a tmpfs: the pages are the shared memory itself)."""

MAX_BATCH: int = _ring.MAX_BATCH
"""Most records moved by one C call in :meth:`Channel.send_batch` / :meth:`Channel.recv_batch`."""

_SLICE_NS = 100_000_000  # longest uninterrupted wait in C: bounds Ctrl-C and peer-check latency
_PEER_CHECK_NS = 100_000_000
_STRATEGIES = {"spin": _ring.WAIT_SPIN, "yield": _ring.WAIT_YIELD, "block": _ring.WAIT_BLOCK}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_CONSUMER, _PRODUCER = 0, 1

# Our pid, refreshed in a forked child, so a handle inherited through fork() re-registers its role
# under the child's pid instead of acting under the parent's.
_pid = os.getpid()


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


class ChannelError(Exception):
    """Base class of every error raised by :mod:`nanomq.ipc`."""


class ChannelFull(ChannelError, TimeoutError):
    """The ring stayed full until the send timeout; nothing of the failed record was written.

    ``sent`` is how many records of a :meth:`Channel.send_batch` did go in before the timeout.
    """

    def __init__(self, message: str, sent: int = 0) -> None:
        super().__init__(message)
        self.sent = sent


class ChannelClosed(ChannelError, EOFError):
    """The peer side closed cleanly (and, for a consumer, every record has been received)."""


class PeerDied(ChannelError):
    """A registered peer process no longer exists (crashed or killed without closing)."""


class NotAChannel(ChannelError, ValueError):
    """The file is not a NanoMQ channel (bad magic, truncated, or inconsistent header)."""


class LayoutVersionError(NotAChannel):
    """The file is a NanoMQ channel of a layout version this code does not read."""


class RoleTaken(ChannelError):
    """Another live process already holds the consumer role (or the producer role, or all 16)."""


class RecordTooLarge(ChannelError, ValueError):
    """A record is larger than the channel's ``max_record`` (capacity / 2 - 8 bytes)."""


def _channel_path(name: str) -> str:
    if "/" in name:
        return name
    if not _NAME_RE.match(name):
        raise ValueError(f"channel name must match {_NAME_RE.pattern}, not {name!r}")
    return os.path.join(SHM_DIR, f"nanomq-{name}")


def _pid_alive(pid: int) -> bool:
    """True unless ``pid`` is gone or a zombie (a dead child not yet reaped still answers kill 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] not in (b"Z", b"X")
    except (OSError, ValueError):
        return True


def _check_wait(wait: str) -> None:
    if wait not in _STRATEGIES:
        raise ValueError(f"wait must be one of {sorted(_STRATEGIES)}, not {wait!r}")


def _deadline(timeout_us: float | None) -> int | None:
    return None if timeout_us is None else time.monotonic_ns() + max(0, int(timeout_us * 1000))


class Channel:
    """One process's view of a named shared-memory channel.

    Create it in one process with :meth:`create`, open it elsewhere with :meth:`open` (or inherit it
    through ``fork``). Use it as a context manager: leaving the block closes it, and the creating
    process also removes the file.
    """

    def __init__(
        self,
        path: str,
        fd: int,
        mm: mmap.mmap,
        ring: _ring.Ring,
        *,
        wait: WaitStrategy,
        spin_us: float,
        creator: bool,
    ) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        _check_wait(wait)
        self.path = path
        self._fd = fd
        self._mm: mmap.mmap | None = mm
        self._ring: _ring.Ring | None = ring
        # The ring's own calls, bound once: the hot paths below are one Python call away from C.
        self._push, self._push_batch, self._pop, self._pop_batch = ring.push, ring.push_batch, ring.pop, ring.pop_batch_raw
        self._strategy = _STRATEGIES[wait]
        self._wait_name: WaitStrategy = wait
        self._spin_ns = int(spin_us * 1000)
        self._creator_pid = os.getpid() if creator else 0
        self._prod_pid = 0  # pid under which we hold a producer slot (0: none)
        self._prod_slot = -1
        self._cons_pid = 0
        self._max = ring.max_record
        self._last_peer_check = 0

    # ---- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        capacity_bytes: int,
        *,
        mpsc: bool = False,
        wait: WaitStrategy = "block",
        spin_us: float = 50.0,
        replace: bool = False,
    ) -> Channel:
        """Create the channel file and format an empty ring of ``capacity_bytes`` (a power of two).

        ``name`` is a plain name (the file is ``/dev/shm/nanomq-<name>``) or a path containing "/".
        Raises FileExistsError if it exists, unless ``replace`` is true.
        """
        path = _channel_path(name)
        _check_wait(wait)
        if capacity_bytes < 64 or capacity_bytes & (capacity_bytes - 1):
            raise ValueError(f"capacity_bytes must be a power of two >= 64, not {capacity_bytes}")
        if replace:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        size = _ring.required_size(capacity_bytes)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            try:
                r = _ring.Ring.format(mm, capacity_bytes, _ring.MPSC if mpsc else _ring.SPSC)
            except BaseException:
                mm.close()
                raise
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return cls(path, fd, mm, r, wait=wait, spin_us=spin_us, creator=True)

    @classmethod
    def open(cls, name: str, *, wait: WaitStrategy = "block", spin_us: float = 50.0) -> Channel:
        """Open an existing channel; raises :class:`NotAChannel` / :class:`LayoutVersionError`."""
        path = _channel_path(name)
        _check_wait(wait)
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < _ring.HEADER_SIZE:
                raise NotAChannel(f"{path}: {size} bytes, too small for a channel header")
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            try:
                r = _ring.Ring.attach(mm)
            except _ring.LayoutVersionError as e:
                mm.close()
                raise LayoutVersionError(f"{path}: {e}") from None
            except _ring.NotARing as e:
                mm.close()
                raise NotAChannel(f"{path}: {e}") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, mm, r, wait=wait, spin_us=spin_us, creator=False)

    def close(self) -> None:
        """Give back our roles, unmap and close (idempotent). The creating process also unlinks."""
        if self._ring is None:
            return
        if self._prod_pid == _pid:
            self._ring.unregister(_PRODUCER, self._prod_slot, _pid)
        if self._cons_pid == _pid:
            self._ring.unregister(_CONSUMER, 0, _pid)
        self._prod_pid = self._cons_pid = 0
        self._ring.close()
        self._ring = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        os.close(self._fd)
        if self._creator_pid == _pid:
            self.unlink()

    def unlink(self) -> None:
        """Remove the channel's file (processes that have it mapped keep working)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> Channel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Best effort only (interpreter shutdown may have torn modules down); close() is the API.
        try:
            if getattr(self, "_ring", None) is not None:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._ring is None else f"capacity={self.capacity}, used={self._ring.used}"
        return f"<Channel {self.path!r} {state} wait={self._wait_name!r}>"

    # ---- properties ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._ring is None

    @property
    def capacity(self) -> int:
        """Data bytes of the ring."""
        return self._live().capacity

    @property
    def max_record(self) -> int:
        """Largest record accepted, in bytes."""
        return self._max

    @property
    def mpsc(self) -> bool:
        """True for a many-producer channel."""
        return self._live().mode == _ring.MPSC

    @property
    def wait_strategy(self) -> WaitStrategy:
        """How this process waits: "spin", "yield" or "block"."""
        return self._wait_name

    def _live(self) -> _ring.Ring:
        if self._ring is None:
            raise ChannelError("channel is closed")
        return self._ring

    # ---- roles ---------------------------------------------------------------------------------

    def _take(self, role: int) -> int:
        r = self._live()
        slot = r.register(role, _pid)
        if slot < 0:
            # Every slot is taken: free the ones held by dead processes, then try again.
            for i, pid in enumerate(r.peer_pids(role)):
                if pid and pid != _pid and not _pid_alive(pid) and r.replace(role, i, pid, _pid):
                    slot = i
                    break
        if slot < 0:
            who = "consumer" if role == _CONSUMER else "producer"
            raise RoleTaken(
                f"{self.path}: the {who} role is held by live pid(s) {[p for p in r.peer_pids(role) if p]}"
            )
        # Our cached indexes may predate other processes' work (or a dead peer's): reload them.
        r.reload()
        return slot

    def _become_producer(self) -> None:
        self._prod_slot = self._take(_PRODUCER)
        self._prod_pid = _pid

    def _become_consumer(self) -> None:
        self._take(_CONSUMER)
        self._cons_pid = _pid

    # ---- peer checks ---------------------------------------------------------------------------

    def _check_producers(self, force: bool = False) -> None:
        now = time.monotonic_ns()
        if not force and now - self._last_peer_check < _PEER_CHECK_NS:
            return
        self._last_peer_check = now
        r = self._live()
        if r.readable():
            return  # drain first
        dead = []
        live = 0
        for i, pid in enumerate(r.peer_pids(_PRODUCER)):
            if not pid:
                continue
            if _pid_alive(pid):
                live += 1
            else:
                dead.append(pid)
                r.replace(_PRODUCER, i, pid, 0)  # free the slot; report once
        if r.readable():
            return  # a record landed between the checks: deliver it first
        if dead:
            raise PeerDied(f"{self.path}: producer pid(s) {dead} died without closing")
        ever, _closed = r.peer_counts(_PRODUCER)
        if live == 0 and ever > 0:
            raise ChannelClosed(f"{self.path}: every producer has closed")

    def _check_consumer(self) -> None:
        now = time.monotonic_ns()
        if now - self._last_peer_check < _PEER_CHECK_NS:
            return
        self._last_peer_check = now
        r = self._live()
        pid = r.peer_pids(_CONSUMER)[0]
        if pid and not _pid_alive(pid):
            raise PeerDied(f"{self.path}: consumer pid {pid} died without closing")
        ever, _closed = r.peer_counts(_CONSUMER)
        if not pid and ever > 0:
            raise ChannelClosed(f"{self.path}: the consumer has closed")

    def _wait(self, writer: bool, length: int, deadline: int | None) -> bool:
        """Wait in ≤ 100 ms slices for room/data; False at the deadline. Raises on dead peers."""
        r = self._live()
        while True:
            if deadline is None:
                slice_ns = _SLICE_NS
            else:
                slice_ns = min(_SLICE_NS, deadline - time.monotonic_ns())
                if slice_ns <= 0:
                    return False
            if writer:
                ok = r.wait_writable(length, self._strategy, self._spin_ns, slice_ns)
            else:
                ok = r.wait_readable(self._strategy, self._spin_ns, slice_ns)
            if ok:
                return True
            # The GIL was released for the slice; Python runs pending signal handlers (Ctrl-C)
            # as soon as we return to the interpreter loop here.
            if writer:
                self._check_consumer()
            else:
                self._check_producers()

    # ---- sending -------------------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview, timeout_us: float | None = None) -> None:
        """Append one record; waits for room up to ``timeout_us`` (None: forever, 0: no wait).

        Raises :class:`ChannelFull` on timeout (nothing written), :class:`RecordTooLarge`,
        :class:`PeerDied` / :class:`ChannelClosed` if the consumer is gone while the ring is full.
        """
        if self._prod_pid != _pid:
            self._become_producer()
        try:
            if self._push(data):
                return
            deadline = _deadline(timeout_us)
            while True:
                if not self._wait(True, len(data), deadline):
                    raise ChannelFull(f"{self.path}: ring full for {timeout_us} µs")
                if self._push(data):
                    return
        except _ring.RingError as e:
            raise self._error(e, len(data)) from None

    def send_batch(self, records: Sequence[bytes], timeout_us: float | None = None) -> None:
        """Append every record, up to 256 per C call, waiting for room up to ``timeout_us`` overall.

        On timeout raises :class:`ChannelFull` whose ``sent`` says how many records went in (a
        prefix of ``records``, in order).
        """
        if self._prod_pid != _pid:
            self._become_producer()
        n = len(records)
        sent = 0
        deadline: int | None = -1
        while sent < n:
            chunk = records[sent : sent + MAX_BATCH]
            try:
                k = self._push_batch(chunk)
            except _ring.RingError as e:
                raise self._error(e, max(len(c) for c in chunk)) from None
            sent += k
            if k == len(chunk):
                continue
            if deadline == -1:
                deadline = _deadline(timeout_us)
            if not self._wait(True, len(records[sent]), deadline):
                raise ChannelFull(f"{self.path}: ring full for {timeout_us} µs after {sent} records", sent)

    # ---- receiving -----------------------------------------------------------------------------

    def recv(self, timeout_us: float | None = None) -> bytes | None:
        """Remove and return the next record, waiting up to ``timeout_us`` (None: forever).

        Returns None on timeout. Raises :class:`PeerDied` / :class:`ChannelClosed` when the ring is
        empty and the producers are gone.
        """
        if self._cons_pid != _pid:
            self._become_consumer()
        try:
            data = self._pop()
            if data is not None:
                return data
            deadline = _deadline(timeout_us)
            while True:
                if not self._wait(False, 0, deadline):
                    self._check_producers(force=timeout_us is not None and timeout_us > 0)
                    return None
                data = self._pop()
                if data is not None:
                    return data
        except _ring.RingError as e:
            raise self._error(e, 0) from None

    def recv_batch(self, max_msgs: int = MAX_BATCH, timeout_us: float | None = None) -> list[bytes]:
        """Remove up to ``max_msgs`` (≤ 256) records in one C call, waiting up to ``timeout_us`` for
        the first one. Returns [] on timeout."""
        blob, lens = self.recv_batch_raw(max_msgs, timeout_us)
        offs = list(accumulate(lens, initial=0))
        return [blob[a:b] for a, b in zip(offs, offs[1:], strict=False)]  # fastest split measured

    def recv_batch_raw(
        self, max_msgs: int = MAX_BATCH, timeout_us: float | None = None
    ) -> tuple[bytes, list[int]]:
        """Like :meth:`recv_batch` but returns the records back to back in one bytes object plus
        their lengths: one allocation per batch instead of one per record."""
        if not 0 < max_msgs <= MAX_BATCH:
            raise ValueError(f"max_msgs must be in 1..{MAX_BATCH}")
        if self._cons_pid != _pid:
            self._become_consumer()
        try:
            got = self._pop_batch(max_msgs)
            if got[1]:
                return got
            deadline = _deadline(timeout_us)
            while True:
                if not self._wait(False, 0, deadline):
                    self._check_producers(force=timeout_us is not None and timeout_us > 0)
                    return b"", []
                got = self._pop_batch(max_msgs)
                if got[1]:
                    return got
        except _ring.RingError as e:
            raise self._error(e, 0) from None

    def __iter__(self) -> Iterator[bytes]:
        """Yield records until the producers close (:class:`ChannelClosed` ends the iteration)."""
        while True:
            try:
                rec = self.recv()
            except ChannelClosed:
                return
            if rec is not None:
                yield rec

    def _error(self, e: _ring.RingError, length: int) -> ChannelError:
        """The channel's exception for an error of its ring."""
        if isinstance(e, _ring.RecordTooLarge):
            return RecordTooLarge(f"{self.path}: record of {length} bytes > max_record {self._max}")
        return ChannelError(f"{self.path}: {e}")

    # Low-level access for benchmarks and tests.
    @property
    def ring(self) -> Any:
        """The underlying :class:`nanomq._c.ring.Ring`."""
        return self._live()
