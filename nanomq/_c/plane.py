"""Thin wrapper over the broker's data plane in C (``src/plane.c``, in the ``_log`` module).

:class:`Plane` holds the C topic table and the buffers its calls reuse; it validates nothing a
C call does not, and turns results into plain Python values. The contract — which frames the
fast path takes, what it leaves to the codec, how a delivery is written — is in ``src/plane.h``.

One Plane per broker, used by the event-loop thread only (no locking: plane.h). The buffers are
reused from call to call, so a result is valid until the next call.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanomq._c import realize_all
from nanomq._c._log import ffi, lib
from nanomq._c.log import Buffer, CLog, _raise

__all__ = ["Plane", "FeedResult", "Delivery", "STOP_END", "STOP_FRAME", "STOP_OUT", "STOP_TOPICS", "STOP_DURABLE",
           "CAP_LZ4"]

realize_all(ffi, lib, "nmq_plane_limits *", "nmq_feed_result *", "nmq_deliver_result *", "const uint8_t **")

STOP_END = int(lib.NMQ_PLANE_STOP_END)
STOP_FRAME = int(lib.NMQ_PLANE_STOP_FRAME)
STOP_OUT = int(lib.NMQ_PLANE_STOP_OUT)
STOP_TOPICS = int(lib.NMQ_PLANE_STOP_TOPICS)
STOP_DURABLE = int(lib.NMQ_PLANE_STOP_DURABLE)
CAP_LZ4 = int(lib.NMQ_PLANE_CAP_LZ4)

_OUT_BYTES = 64 * 1024
"""Answers one feed call can write: 2048 PUBLISH_ACKs; then it stops (STOP_OUT) to be called again."""
_TOPICS = 64
"""Topics one feed call can report as appended to; then it stops (STOP_TOPICS)."""

_feed = lib.nmq_plane_feed
_deliver = lib.nmq_plane_deliver
_unpin = lib.nmq_log_unpin
_from_buffer = ffi.from_buffer
_buffer = ffi.buffer


@dataclass(slots=True)
class FeedResult:
    """What one :meth:`Plane.feed` did (see plane.h)."""

    consumed: int
    """Bytes at the start of the buffer that were handled."""
    frames: int
    stop: int
    """Why it stopped: STOP_END (every complete frame handled), STOP_FRAME (the next frame is for
    the codec), STOP_OUT / STOP_TOPICS (call again), STOP_DURABLE (the last frame handled is a
    durable PUBLISH, appended: ``durable`` says what its ack will be)."""
    unsent: bytes
    """Answers not yet written to the socket (all of them when no fd was given), in order."""
    appended: list[tuple[int, int]]
    """(topic index, bytes appended) for every topic appended to, in first-append order."""
    send_errno: int
    durable: tuple[int, int, int, int] | None = None
    """With STOP_DURABLE: (request id, first record id, record count, topic index) of that PUBLISH."""
    acks: int = 0
    """Of the frames, PUBLISHes with ack written: their acks are in the answers (sent or ``unsent``)."""


@dataclass(slots=True)
class Delivery:
    """One DELIVER built by :meth:`Plane.deliver`."""

    count: int
    """Records in it (0: nothing to deliver; ``first_id`` is then where the next record goes)."""
    first_id: int
    unsent: list[bytes]
    """The part of the frame the socket did not take (empty when it took all), to write in order."""
    send_errno: int
    nbytes: int = 0
    """Bytes of the records in it (the frame without its 24-byte header and prefix)."""


class Plane:
    """The broker's C fast path for PUBLISH (appended here; acked here for ack written), PING and
    DELIVER."""

    __slots__ = ("_p", "_res", "_out", "_idx", "_bytes", "_dres", "_hdr", "_recs", "_pin")

    def __init__(self, max_frame: int, max_payload: int, max_batch: int, caps: int) -> None:
        lim = ffi.new("nmq_plane_limits *")
        lim.max_frame, lim.max_payload, lim.max_batch, lim.caps = max_frame, max_payload, max_batch, caps
        p = lib.nmq_plane_new(lim)
        if p == ffi.NULL:
            raise ValueError(f"bad plane limits: max_frame {max_frame}, max_batch {max_batch}")
        self._p = ffi.gc(p, lib.nmq_plane_free)
        self._res = ffi.new("nmq_feed_result *")
        self._out = ffi.new("uint8_t[]", _OUT_BYTES)
        self._idx = ffi.new("uint32_t[]", _TOPICS)
        self._bytes = ffi.new("uint64_t[]", _TOPICS)
        self._dres = ffi.new("nmq_deliver_result *")
        self._hdr = ffi.new("uint8_t[]", 24)
        self._recs = ffi.new("const uint8_t **")
        self._pin = ffi.new("nmq_seg **")

    def topic(self, name: str, log: CLog, index: int) -> None:
        """Let PUBLISHes to ``name`` be appended to ``log`` here; ``index`` is what ``appended``
        reports for it. ``log`` must stay open until :meth:`untopic`."""
        raw = name.encode()
        rc = lib.nmq_plane_topic(self._p, raw, len(raw), log.handle, index)
        if rc:
            _raise(rc, f"registering topic {name!r}")

    def untopic(self, name: str) -> None:
        """Stop taking PUBLISHes to ``name`` (before its log closes)."""
        raw = name.encode()
        lib.nmq_plane_untopic(self._p, raw, len(raw))

    def feed(self, data: Buffer, fd: int) -> FeedResult:
        """Handle the hot frames at the start of ``data``; ``fd`` >= 0 writes the answers to that
        socket (only while the transport has nothing buffered: plane.h), -1 returns them all."""
        res = self._res
        _feed(self._p, _from_buffer(data), len(data), self._out, _OUT_BYTES, fd, self._idx, self._bytes, _TOPICS, res)
        n_out, sent = res.out_len, res.out_sent
        unsent = _buffer(self._out, n_out)[sent:] if sent < n_out else b""
        idx, nb = self._idx, self._bytes
        durable = ((res.durable_rid, res.durable_first, res.durable_count, res.durable_index)
                   if res.stop == STOP_DURABLE else None)
        return FeedResult(res.consumed, res.frames, res.stop, unsent,
                          [(idx[i], nb[i]) for i in range(res.appended)], res.send_errno, durable, res.acks)

    def deliver(self, log: CLog, fd: int, sub_id: int, from_id: int, credit: int, max_bytes: int) -> Delivery:
        """Build the next DELIVER of subscription ``sub_id`` (up to ``credit`` records from
        ``from_id``) and write it to ``fd`` (-1: return it all). Raises the log's error for
        damaged stored bytes (nothing sent)."""
        r = self._dres
        rc = _deliver(log.handle, fd, sub_id, from_id, credit, max_bytes, self._hdr, self._recs, self._pin, r)
        if rc:
            _raise(rc, "deliver")
        if r.count == 0:
            return Delivery(0, r.first_id, [], 0)
        frame, sent = r.frame_len, r.sent
        if sent == frame:
            return Delivery(r.count, r.first_id, [], r.send_errno, frame - 24)
        # The socket did not take it all: copy out what is left (the transport buffers it), unpin.
        unsent = []
        if sent < 24:
            unsent.append(_buffer(self._hdr, 24)[sent:])
        start = max(0, sent - 24)
        unsent.append(_buffer(self._recs[0], frame - 24)[start:])
        _unpin(log.handle, self._pin[0])
        return Delivery(r.count, r.first_id, unsent, r.send_errno, frame - 24)
