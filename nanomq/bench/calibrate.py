"""Calibrations: what the machine itself costs, measured in the same run as every figure.

Each figure of a run is reported as a ratio to one of these, because on a shared 2-vCPU VM
absolute figures move several-fold from one minute to the next:

* :func:`socket_rtt` — a raw Python loopback TCP ping-pong of 64 B between two processes,
  blocking sockets, paced at a rate (both ends wake from sleep, as a broker's do) and back to back;
* :func:`relay_floor` — the kernel's floor for one record through a broker: a relay process does
  one blocking loopback ``recv`` and two ``send``\\ s, each waking a blocked peer (the ack to the
  publisher, the delivery to the subscriber). The CPU time of each call is measured per call
  (``CLOCK_THREAD_CPUTIME_ID`` around it, the clock's own cost subtracted); the floor is
  p50(recv) + p50(send ack) + p50(send delivery). The same run gives the relay process's whole
  CPU per record (/proc/<pid>/task/*/schedstat, as the broker's is measured) and the one-way latency
  publisher → relay → subscriber with the schedule in the payload (open loop);
* :func:`fdatasync` — ``pwrite`` of 4 KiB at the append position of a preallocated
  (``posix_fallocate``: unwritten extents, as the log's segments) file plus ``fdatasync``, on the
  disk of a given directory (the broker's data dir), back to back;
* :func:`memcpy` — copying 16 MiB between two buffers (``memoryview`` slice assignment, one
  ``memcpy``), in GB/s.
"""

from __future__ import annotations

import gc
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from nanomq.bench.hist import Histogram
from nanomq.bench.system import cpu_seconds_fine, start_child, wait_until

__all__ = ["RelayFloor", "fdatasync", "loop_rtt", "memcpy", "python_speed", "relay_floor", "socket_rtt"]

MSG = 64


def _nodelay(s: socket.socket) -> socket.socket:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _recv_exact(s: socket.socket, buf: bytearray, view: memoryview) -> bool:
    got = s.recv_into(buf, MSG)
    if not got:
        return False
    while got < MSG:
        n = s.recv_into(view[got:], MSG - got)
        if not n:
            return False
        got += n
    return True


# ---------------------------------------------------------------- raw socket round trip


def _echo(lsock: socket.socket) -> int:
    conn, _ = lsock.accept()
    lsock.close()
    _nodelay(conn)
    buf = bytearray(MSG)
    view = memoryview(buf)
    n = 0
    while _recv_exact(conn, buf, view):
        conn.sendall(buf)
        n += 1
    conn.close()
    return n


def socket_rtt(rate: float, seconds: float, back_to_back: int) -> tuple[Histogram, Histogram]:
    """64 B round trips between this process and a forked echo process over 127.0.0.1:
    (paced at ``rate``/s for ``seconds``, open loop: a late send counts from its scheduled time;
    ``back_to_back`` round trips with both ends hot). Nanoseconds."""
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    child = start_child(_echo, lsock, name="echo")
    lsock.close()
    s = _nodelay(socket.create_connection(("127.0.0.1", port)))
    msg = b"\x01" * MSG
    buf = bytearray(MSG)
    view = memoryview(buf)
    now = time.monotonic_ns
    paced: list[int] = []
    back: list[int] = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(200):  # warm-up
            s.sendall(msg)
            _recv_exact(s, buf, view)
        interval = int(1e9 / rate)
        start = now() + 1_000_000
        for i in range(max(1, int(seconds * rate))):
            due = start + i * interval
            wait_until(due)
            s.sendall(msg)
            _recv_exact(s, buf, view)
            paced.append(now() - due)
        for _ in range(back_to_back):
            t = now()
            s.sendall(msg)
            _recv_exact(s, buf, view)
            back.append(now() - t)
    finally:
        if gc_was:
            gc.enable()
        s.close()
        child.result(10)
        child.reap()
    hp, hb = Histogram(), Histogram()
    hp.record_many(paced)
    hb.record_many(back)
    return hp, hb


# ---------------------------------------------------------------- the kernel floor of a broker hop


@dataclass(slots=True)
class RelayFloor:
    """What one record costs the kernel when a process relays it with blocking sockets."""

    recv_cpu: Histogram
    """CPU ns of the relay's blocking recv() that a publisher's send woke (clock cost subtracted)"""
    ack_cpu: Histogram
    """CPU ns of the relay's send() of the 64 B ack to the blocked publisher"""
    deliver_cpu: Histogram
    """CPU ns of the relay's send() of the 64 B delivery to the blocked subscriber"""
    relay_cpu_per_record_ns: float
    """the relay process's CPU time (/proc/<pid>/task/*/schedstat, ns) over the run / records"""
    one_way: Histogram
    """subscriber receive - scheduled send (publisher -> relay -> subscriber), ns, open loop"""
    round_trip: Histogram
    """ack received at the publisher - scheduled send, ns, open loop"""
    clock_ns: float
    """p50 cost of one pair of CPU-clock reads, subtracted from every per-call figure"""
    records: int

    @property
    def floor_ns(self) -> float:
        """p50(recv) + p50(send ack) + p50(send delivery): the kernel's CPU per brokered record."""
        return self.recv_cpu.percentile(50) + self.ack_cpu.percentile(50) + self.deliver_cpu.percentile(50)


def _relay(lpub: socket.socket, lsub: socket.socket, total: int, warm: int) -> dict[str, Any]:
    cpub, _ = lpub.accept()
    csub, _ = lsub.accept()
    lpub.close()
    lsub.close()
    _nodelay(cpub)
    _nodelay(csub)
    tt = time.thread_time_ns
    pairs = sorted(-tt() + tt() for _ in range(2001))
    clock = pairs[len(pairs) // 2]
    buf = bytearray(MSG)
    view = memoryview(buf)
    recv_into, send_ack, send_del = cpub.recv_into, cpub.send, csub.send
    rc: list[int] = []
    ac: list[int] = []
    dc: list[int] = []
    c0 = 0.0
    pid = os.getpid()
    for i in range(total):
        if i == warm:
            c0 = cpu_seconds_fine(pid)
        t0 = tt()
        got = recv_into(buf, MSG)
        t1 = tt()
        while 0 < got < MSG:
            got += recv_into(view[got:], MSG - got)
        if not got:
            break
        t2 = tt()
        send_ack(buf)
        t3 = tt()
        send_del(buf)
        t4 = tt()
        if i >= warm:
            rc.append(t1 - t0 - clock)
            ac.append(t3 - t2 - clock)
            dc.append(t4 - t3 - clock)
    cpu = cpu_seconds_fine(pid) - c0
    cpub.close()
    csub.close()
    return {"recv": rc, "ack": ac, "deliver": dc, "cpu_s": cpu, "records": len(rc), "clock": clock}


def _relay_sub(port: int, total: int, warm: int) -> list[int]:
    s = _nodelay(socket.create_connection(("127.0.0.1", port)))
    buf = bytearray(MSG)
    view = memoryview(buf)
    now = time.monotonic_ns
    out: list[int] = []
    for i in range(total):
        if not _recv_exact(s, buf, view):
            break
        t = now()
        if i >= warm:
            out.append(t - int.from_bytes(buf[:8], "little"))
    s.close()
    return out


def _relay_pub(port: int, total: int, warm: int, rate: float) -> list[int]:
    s = _nodelay(socket.create_connection(("127.0.0.1", port)))
    buf = bytearray(MSG)
    view = memoryview(buf)
    pad = b"\0" * (MSG - 8)
    now = time.monotonic_ns
    interval = int(1e9 / rate)
    rtt: list[int] = []
    time.sleep(0.05)  # let the relay accept the subscriber too
    start = now() + 2_000_000
    for i in range(total):
        due = start + i * interval
        wait_until(due)
        s.sendall(due.to_bytes(8, "little") + pad)
        if not _recv_exact(s, buf, view):
            break
        if i >= warm:
            rtt.append(now() - due)
    s.close()
    return rtt


def relay_floor(rate: float, seconds: float) -> RelayFloor:
    """Publisher -> relay -> subscriber, three forked processes, 64 B at ``rate``/s for ``seconds``
    (the first 5 %, at least 50, are warm-up). See the module docstring."""
    n = max(1, int(rate * seconds))
    warm = max(50, n // 20)
    total = n + warm
    lpub = socket.create_server(("127.0.0.1", 0))
    lsub = socket.create_server(("127.0.0.1", 0))
    relay = start_child(_relay, lpub, lsub, total, warm, name="relay")
    sub = start_child(_relay_sub, lsub.getsockname()[1], total, warm, name="relay subscriber")
    pub = start_child(_relay_pub, lpub.getsockname()[1], total, warm, rate, name="relay publisher")
    lpub.close()
    lsub.close()
    try:
        limit = seconds * 3 + 30
        rtt = pub.result(limit)
        one = sub.result(limit)
        r = relay.result(limit)
    finally:
        for c in (pub, sub, relay):
            c.reap()
    hists = [Histogram() for _ in range(5)]
    for h, vals in zip(hists, (r["recv"], r["ack"], r["deliver"], one, rtt), strict=True):
        h.record_many(vals)
    recs = max(1, int(r["records"]))
    return RelayFloor(hists[0], hists[1], hists[2], r["cpu_s"] * 1e9 / recs, hists[3], hists[4],
                      float(r["clock"]), recs)


# ---------------------------------------------------------------- disk and memory


def fdatasync(directory: str, seconds: float, max_ops: int = 20_000) -> Histogram:
    """Latency (ns) of ``pwrite`` 4 KiB at the append position + ``fdatasync`` of a preallocated
    file in ``directory``, back to back for ``seconds`` (at most ``max_ops``); the file is removed."""
    path = os.path.join(directory, f"nanomq-bench-fdatasync-{os.getpid()}.bin")
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    out: list[int] = []
    try:
        os.posix_fallocate(fd, 0, (max_ops + 16) * 4096)
        os.fsync(fd)
        block = b"r" * 4096
        now = time.perf_counter_ns
        end = now() + int(seconds * 1e9)
        for i in range(max_ops):
            t0 = now()
            os.pwrite(fd, block, i * 4096)
            os.fdatasync(fd)
            t1 = now()
            out.append(t1 - t0)
            if t1 >= end:
                break
    finally:
        os.close(fd)
        os.unlink(path)
    h = Histogram()
    h.record_many(out)
    return h


def memcpy(seconds: float = 0.2, size: int = 16 << 20) -> float:
    """GB/s (10^9 bytes) of copying ``size`` bytes between two bytearrays, best of the copies
    made in ``seconds``."""
    src = bytearray(os.urandom(1024)) * (size // 1024)
    dst = bytearray(len(src))
    d = memoryview(dst)
    best = float("inf")
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter_ns()
        d[:] = src
        best = min(best, time.perf_counter_ns() - t0)
        if time.perf_counter() >= end:
            break
    return len(src) / best


# ---------------------------------------------------------------- a Python event-loop server's round trip


def _loop_server(lsock: socket.socket, reply: int) -> int:
    """An event-loop server that answers every ``size``-byte request with ``reply`` bytes: the
    cheapest a Python server on asyncio's Protocol API can do (uvloop when installed)."""
    import asyncio

    try:
        import uvloop

        new_loop: Any = uvloop.new_event_loop
    except ImportError:
        new_loop = asyncio.new_event_loop
    loop = new_loop()
    asyncio.set_event_loop(loop)
    answer = b"\x02" * reply
    served = [0]
    done = loop.create_future()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.pending = 0
            _nodelay(transport.get_extra_info("socket"))

        def data_received(self, data: bytes) -> None:
            self.pending += len(data)
            while self.pending >= _REQ[0]:
                self.pending -= _REQ[0]
                served[0] += 1
                self.t.write(answer)

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_result(None)

    async def main() -> None:
        server = await loop.create_server(Echo, sock=lsock)
        await done
        server.close()

    loop.run_until_complete(main())
    loop.close()
    return served[0]


_REQ = [1024]


def loop_rtt(seconds: float, size: int = 1024, reply: int = 24, max_calls: int = 200_000) -> Histogram:
    """Round trips (ns) of ``size``-byte requests answered with ``reply`` bytes by a forked Python
    event-loop server (:func:`_loop_server`), back to back from this process over 127.0.0.1 with
    a blocking socket, for ``seconds``: what one request costs a Python server that does nothing
    with it. A broker's acked publish round trip is divided by it."""
    _REQ[0] = size
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    child = start_child(_loop_server, lsock, reply, name="loop server")
    lsock.close()
    s = _nodelay(socket.create_connection(("127.0.0.1", port)))
    msg = b"\x01" * size
    buf = bytearray(reply)
    view = memoryview(buf)
    now = time.monotonic_ns
    out: list[int] = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        def one() -> None:
            s.sendall(msg)
            got = 0
            while got < reply:
                n = s.recv_into(view[got:], reply - got)
                if not n:
                    raise RuntimeError("the loop server closed the connection")
                got += n

        for _ in range(200):
            one()
        end = now() + int(seconds * 1e9)
        for _ in range(max_calls):
            t = now()
            one()
            t2 = now()
            out.append(t2 - t)
            if t2 >= end:
                break
    finally:
        if gc_was:
            gc.enable()
        s.close()
        child.result(10)
        child.reap()
    h = Histogram()
    h.record_many(out)
    return h


# ---------------------------------------------------------------- the interpreter's own speed


def _python_work(n: int) -> int:
    """A fixed piece of interpreter work of the kind a Python broker does per request: struct
    packing and unpacking, a CRC, bytes slicing, a dict and a list (stdlib only, never the code
    under test)."""
    import struct
    import zlib

    pack, unpack = struct.Struct("<IqqB").pack, struct.Struct("<IqqB").unpack
    acc = 0
    index: dict[int, int] = {}
    out: list[bytes] = []
    body = b"\x07" * 1024
    for i in range(n):
        head = pack(i, i * 3, -i, i & 0xFF)
        frame = head + body
        a, b, c, d = unpack(frame[:21])
        acc = zlib.crc32(frame[21:], acc)
        index[a] = b + c + d
        out.append(frame[:32])
        if len(out) > 64:
            out.clear()
    return acc + len(index)


def python_speed(seconds: float = 0.2, n: int = 200) -> Histogram:
    """Durations (ns) of a fixed piece of interpreter work (:func:`_python_work` of ``n``
    requests), repeated for ``seconds`` in this process: how fast this machine runs Python code
    right now. Its low percentiles move with what the neighbours take from the core (steal,
    shared caches), which the code under test suffers too."""
    now = time.perf_counter_ns
    _python_work(n)
    out: list[int] = []
    end = now() + int(seconds * 1e9)
    while True:
        t = now()
        _python_work(n)
        t2 = now()
        out.append(t2 - t)
        if t2 >= end:
            break
    h = Histogram()
    h.record_many(out)
    return h
