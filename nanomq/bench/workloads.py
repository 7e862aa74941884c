"""Workloads: the same publisher and subscriber code for every system (:mod:`nanomq.bench.peers`).

Each run forks a subscriber process and a publisher process (the server, if any, is a third);
the parent only waits. Every payload starts with 17 bytes the workload writes itself::

    [0:8]  scheduled send time (time.monotonic_ns, one clock for every process on the machine)
    [8:16] sequence number
    [16]   0 = warm-up, 1 = measured, 2 = the last record of the run

* :func:`paced` — open-loop one-way latency: the publisher sends on a fixed schedule and writes
  the *scheduled* time into the record, so a stalled publisher, server or client shows up as
  latency instead of hiding (no coordinated omission). The subscriber records receive time −
  scheduled time. The publisher also records each acked publish call (its round trip), the time
  from schedule to ack (open loop), and how late it was against its own schedule. CPU per record
  of the server (/proc/<pid>/task/*/schedstat, ns resolution), the publisher and the subscriber over the measured records.
* :func:`stream` — throughput with the consumer running: ``batch`` = 1 is acked one by one
  (the publisher's acked rate), ``batch`` > 1 publishes batches / pipelines of that many (the
  rate delivered to the subscriber: measured records / (last received − publisher start)).
* :func:`drain` — a backlog is published first, then a subscriber joins and reads it all.
* :func:`scaling` — NanoMQ only: T topics × C publisher connections (asyncio clients in two
  processes) plus one subscriber of every topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nanomq.bench.hist import Histogram
from nanomq.bench.peers import Peer, drive
from nanomq.bench.system import FORK, Window, cpu_seconds, cpu_seconds_fine, start_child, wait_until

__all__ = ["Outcome", "drain", "paced", "payload", "scaling", "stream"]

WARM, MEASURED, LAST = 0, 1, 2
HEAD = 17


def payload(size: int, due: int, seq: int, flag: int) -> bytes:
    """A record of ``size`` bytes (≥ 17) carrying its schedule, sequence number and flag."""
    return due.to_bytes(8, "little") + seq.to_bytes(8, "little") + bytes((flag,)) + b"\0" * (size - HEAD)


@dataclass(slots=True)
class Outcome:
    """What one run of a workload on one system measured."""

    system: str
    records: int
    """records measured (excluding warm-up and the final marker)"""
    received: int
    """measured records the subscriber got"""
    rate: float = 0.0
    """records/s: the workload's headline rate (see each workload)"""
    publish_rate: float = 0.0
    """records/s acked (or handed to the client) at the publisher"""
    latency: Histogram | None = None
    """one-way: subscriber receive - scheduled send, ns"""
    call: Histogram | None = None
    """duration of each publish call (for an acked system: its round trip), ns"""
    ack: Histogram | None = None
    """ack received - scheduled send, ns (open loop)"""
    late: Histogram | None = None
    """publisher's actual send - scheduled send, ns"""
    cpu_us: dict[str, float] = field(default_factory=dict)
    """CPU µs per measured record: "server" (/proc/<pid>/task/*/schedstat), "publisher", "subscriber" (process CPU)"""
    window: Window | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        """Measured records the subscriber never got."""
        return max(0, self.records - self.received)


# ---------------------------------------------------------------- the processes


def _consume(peer: Peer, channel: str, mode: str, ready: Any, done: Any, deadline_s: float,
             idle_s: float) -> dict[str, Any]:
    return drive(_consume_async(peer, channel, mode, ready, done, deadline_s, idle_s), peer.is_async)


async def _consume_async(peer: Peer, channel: str, mode: str, ready: Any, done: Any, deadline_s: float,
                         idle_s: float) -> dict[str, Any]:
    """Receive until the final marker (or, after the publisher is done, ``idle_s`` of silence)."""
    now = time.monotonic_ns
    t_open = now()
    sub = await peer.open_subscriber(channel)
    ready.set()
    lat: list[int] = []
    count = 0
    t_first = t_last = 0
    got_last = False
    cpu0 = cpu1 = 0.0
    deadline = now() + int(deadline_s * 1e9)
    quiet_since = 0
    recv = sub.recv
    measure = mode == "latency"
    while True:
        msgs = await recv(0.1)
        t = now()
        if msgs:
            if not t_first:
                t_first, cpu0 = t, time.process_time()
            count += len(msgs)
            t_last = t
            quiet_since = 0
            if measure:
                for m in msgs:
                    if m[16] == MEASURED:
                        lat.append(t - int.from_bytes(m[:8], "little"))
            if msgs[-1][16] == LAST:
                got_last = True
                break
        elif done.is_set():
            quiet_since = quiet_since or t
            if t - quiet_since > idle_s * 1e9:
                break
        if t > deadline:
            break
    cpu1 = time.process_time()
    await sub.close()
    return {"count": count, "t_open": t_open, "t_first": t_first, "t_last": t_last, "lat": lat,
            "got_last": got_last, "cpu_s": cpu1 - cpu0}


def _server_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        return cpu_seconds_fine(pid)
    except OSError:
        return 0.0


async def _paced_pub(peer: Peer, channel: str, size: int, rate: float, n: int, warm: int, go: Any,
                     done: Any) -> dict[str, Any]:
    pub = await peer.open_publisher(channel)
    try:
        if not go.wait(60):
            raise RuntimeError("never told to start")
        now = time.monotonic_ns
        interval = int(1e9 / rate)
        start = now() + 2_000_000
        calls: list[int] = []
        acks: list[int] = []
        late: list[int] = []
        publish, idle = pub.publish, pub.idle
        tt = time.thread_time_ns
        s0 = 0.0
        cpu = 0
        for i in range(warm + n):
            due = start + i * interval
            c0 = tt()
            await idle()
            c1 = tt()
            wait_until(due)
            if i == warm:
                s0 = _server_cpu(peer.server_pid)
            t = now()
            c2 = tt()
            await publish(payload(size, due, i, MEASURED if i >= warm else WARM))
            if i >= warm:
                t2 = now()
                cpu += c1 - c0 + tt() - c2
                calls.append(t2 - t)
                acks.append(t2 - due)
                late.append(t - due)
        s1 = _server_cpu(peer.server_pid)
        await publish(payload(size, now(), warm + n, LAST))
    finally:
        done.set()
        await pub.close()
    # the publisher's CPU: its thread's CPU time inside publish() and idle() (not while pacing)
    return {"calls": calls, "acks": acks, "late": late, "server_cpu_s": s1 - s0, "cpu_s": cpu / 1e9}


def _paced_pub_main(peer: Peer, *args: Any) -> dict[str, Any]:
    return drive(_paced_pub(peer, *args), peer.is_async)


async def _stream_pub(peer: Peer, channel: str, size: int, batch: int, seconds: float, go: Any,
                      done: Any) -> dict[str, Any]:
    pub = await peer.open_publisher(channel)
    try:
        if not go.wait(60):
            raise RuntimeError("never told to start")
        warm_rec = payload(size, 0, 0, WARM)
        rec = payload(size, 0, 0, MEASURED)
        now = time.monotonic_ns
        if batch == 1:
            warm = 64
            for _ in range(warm):
                await pub.publish(warm_rec)
        else:
            warm = batch
            await pub.publish_batch([warm_rec] * batch)
        s0, c0 = _server_cpu(peer.server_pid), time.process_time()
        t0 = now()
        end = t0 + int(seconds * 1e9)
        n = 0
        calls: list[int] = []
        note = calls.append
        if batch == 1:
            publish = pub.publish
            while True:
                for _ in range(16):
                    t = now()
                    await publish(rec)
                    note(now() - t)
                n += 16
                if now() >= end:
                    break
        else:
            lst = [rec] * batch
            publish_batch = pub.publish_batch
            while True:
                t = now()
                await publish_batch(lst)
                note(now() - t)
                n += batch
                if now() >= end:
                    break
        t1 = now()
        s1, c1 = _server_cpu(peer.server_pid), time.process_time()
        await pub.publish(payload(size, 0, 0, LAST))
    finally:
        done.set()
        await pub.close()
    return {"n": n, "warm": warm, "t0": t0, "t1": t1, "server_cpu_s": s1 - s0, "cpu_s": c1 - c0, "calls": calls}


def _stream_pub_main(peer: Peer, *args: Any) -> dict[str, Any]:
    return drive(_stream_pub(peer, *args), peer.is_async)


async def _backlog_pub(peer: Peer, channel: str, size: int, n: int, batch: int) -> int:
    pub = await peer.open_publisher(channel)
    try:
        rec = payload(size, 0, 0, MEASURED)
        lst = [rec] * batch
        left = n
        while left > 0:
            k = min(left, batch)
            await pub.publish_batch(lst if k == batch else lst[:k])
            left -= k
        await pub.publish(payload(size, 0, 0, LAST))
    finally:
        await pub.close()
    return n


def _backlog_pub_main(peer: Peer, *args: Any) -> int:
    return drive(_backlog_pub(peer, *args), peer.is_async)


def _pair(peer: Peer, tag: str, mode: str, publisher: Callable[..., Any], pub_args: tuple[Any, ...],
          limit_s: float, idle_s: float = 1.0) -> tuple[dict[str, Any], dict[str, Any], Window]:
    """Fork the subscriber, wait until it is subscribed, fork the publisher, collect both."""
    channel = peer.new_channel(tag)
    peer.prepare(channel)
    ready, go, done = FORK.Event(), FORK.Event(), FORK.Event()
    sub = start_child(_consume, peer, channel, mode, ready, done, limit_s, idle_s, name=f"{peer.label} subscriber")
    pub = None
    try:
        if not ready.wait(60):
            sub.result(1)  # raises with the child's error
            raise RuntimeError(f"{peer.label}: the subscriber did not get ready")
        pub = start_child(publisher, peer, channel, *pub_args, go, done, name=f"{peer.label} publisher")
        w = Window.open()
        go.set()
        p = pub.result(limit_s + 30)
        s = sub.result(limit_s + 30)
        w.close()
    finally:
        for c in (pub, sub):
            if c is not None:
                c.reap()
        with contextlib.suppress(Exception):  # a failed cleanup must not hide the figures
            peer.cleanup(channel)
    return p, s, w


# ---------------------------------------------------------------- the workloads


def paced(peer: Peer, size: int, rate: float, seconds: float) -> Outcome:
    """Open-loop one-way latency at ``rate`` records/s of ``size`` bytes for ``seconds`` (the first
    5 %, at least 50 records, are warm-up and not counted)."""
    n = max(1, int(rate * seconds))
    warm = max(50, n // 20)
    p, s, w = _pair(peer, f"paced{size}", "latency", _paced_pub_main, (size, rate, n, warm),
                    limit_s=seconds * 3 + 30)
    lat, call, ack, late = Histogram(), Histogram(), Histogram(), Histogram()
    lat.record_many(s["lat"])
    call.record_many(p["calls"])
    ack.record_many(p["acks"])
    late.record_many(p["late"])
    got = len(s["lat"])
    cpu = {"publisher": p["cpu_s"] * 1e6 / n, "subscriber": s["cpu_s"] * 1e6 / max(got, 1)}
    if peer.server_pid is not None:
        cpu["server"] = p["server_cpu_s"] * 1e6 / n
    return Outcome(peer.label, n, got, rate=rate, publish_rate=rate, latency=lat,
                   call=call if peer.acked else None, ack=ack if peer.acked else None, late=late,
                   cpu_us=cpu, window=w, extra={"got_last": s["got_last"], "warm": warm})


def stream(peer: Peer, size: int, batch: int, seconds: float) -> Outcome:
    """Publish ``size``-byte records for ``seconds`` with a subscriber running: one by one
    (``batch`` = 1; headline: the publisher's acked rate) or in batches (headline: the rate
    delivered to the subscriber). ``call`` holds the duration of every measured publish call
    (back to back: each one's round trip)."""
    p, s, w = _pair(peer, f"stream{size}x{batch}", "count", _stream_pub_main, (size, batch, seconds),
                    limit_s=seconds * 10 + 60)
    n = int(p["n"])
    received = max(0, int(s["count"]) - int(p["warm"]) - (1 if s["got_last"] else 0))
    pub_rate = n / ((p["t1"] - p["t0"]) / 1e9)
    span = (s["t_last"] - p["t0"]) / 1e9
    delivered = received / span if span > 0 else 0.0
    cpu = {"publisher": p["cpu_s"] * 1e6 / max(n, 1), "subscriber": s["cpu_s"] * 1e6 / max(received, 1)}
    if peer.server_pid is not None:
        cpu["server"] = p["server_cpu_s"] * 1e6 / max(n, 1)
    rate = pub_rate if batch == 1 else delivered
    call = Histogram()
    call.record_many(p.get("calls", []))
    return Outcome(peer.label, n, received, rate=rate, publish_rate=pub_rate, call=call, cpu_us=cpu, window=w,
                   extra={"delivered_rate": delivered, "got_last": s["got_last"],
                          "subscriber_lag_s": max(0.0, (s["t_last"] - p["t1"]) / 1e9)})


def drain(peer: Peer, size: int, backlog: int, batch: int = 256) -> Outcome:
    """Publish ``backlog`` records (batches of ``batch``), then time one subscriber reading them
    all: records / (last received − first received); the time to connect and subscribe is in
    ``extra["first_record_after_s"]``."""
    if not peer.retains:
        raise ValueError(f"{peer.label} keeps nothing for a late subscriber")
    channel = peer.new_channel(f"drain{size}")
    peer.prepare(channel)
    try:
        pub = start_child(_backlog_pub_main, peer, channel, size, backlog, batch, name=f"{peer.label} backlog")
        try:
            pub.result(600)
        finally:
            pub.reap()
        ready, done = FORK.Event(), FORK.Event()
        done.set()
        w = Window.open()
        sub = start_child(_consume, peer, channel, "count", ready, done, 600.0, 2.0, name=f"{peer.label} drain")
        try:
            s = sub.result(660)
        finally:
            sub.reap()
        w.close()
    finally:
        with contextlib.suppress(Exception):  # a failed cleanup must not hide the figures
            peer.cleanup(channel)
    got = max(0, int(s["count"]) - (1 if s["got_last"] else 0))
    # from the first record received to the last: connecting and subscribing are not draining
    span = (s["t_last"] - s["t_first"]) / 1e9
    return Outcome(peer.label, backlog, got, rate=(got - 1) / span if span > 0 else 0.0,
                   cpu_us={"subscriber": s["cpu_s"] * 1e6 / max(got, 1)}, window=w,
                   extra={"got_last": s["got_last"], "first_record_after_s": (s["t_first"] - s["t_open"]) / 1e9})


# ---------------------------------------------------------------- scaling (NanoMQ, asyncio clients)


async def _scale_pub(address: str, topics: list[list[str]], size: int, batch: int, seconds: float,
                     warmed: Any, go: Any, server_pid: int | None) -> dict[str, Any]:
    from nanomq.aio import AsyncPublisher

    pubs = [await AsyncPublisher.connect(address, ack="written") for _ in topics]
    rec = payload(size, 0, 0, MEASURED)
    lst = [rec] * batch
    for p, ts in zip(pubs, topics, strict=True):  # warm-up: every topic once
        for t in ts:
            await p.publish_batch(t, lst)
    warmed.set()
    if not go.wait(120):
        raise RuntimeError("never told to start")
    now = time.monotonic_ns
    calls: list[int] = []
    counts = [0] * len(pubs)
    t0 = now()
    end = t0 + int(seconds * 1e9)

    async def one(i: int) -> None:
        p, ts = pubs[i], topics[i]
        k = 0
        while True:
            t = now()
            await p.publish_batch(ts[k % len(ts)], lst)
            t2 = now()
            calls.append(t2 - t)
            counts[i] += batch
            k += 1
            if t2 >= end:
                return

    s0 = cpu_seconds(server_pid) if server_pid else 0.0
    await asyncio.gather(*(one(i) for i in range(len(pubs))))
    t1 = now()
    s1 = cpu_seconds(server_pid) if server_pid else 0.0
    for p in pubs:
        await p.close()
    return {"n": sum(counts), "t0": t0, "t1": t1, "calls": calls, "server_cpu_s": s1 - s0}


def _scale_pub_main(*args: Any) -> dict[str, Any]:
    return asyncio.run(_scale_pub(*args))


def _scale_sub(address: str, topics: list[str], ready: Any, stop: Any) -> dict[str, Any]:
    import nanomq

    with nanomq.Subscriber(address, window=4096) as sub:
        for t in topics:
            sub.subscribe(t, start="latest")
        ready.set()
        n = 0
        while not stop.is_set():
            n += len(sub.poll_batch(RECV, 100_000))
        return {"count": n}


RECV = 4096


def scaling(address: str, server_pid: int | None, topics: int, connections: int, seconds: float,
            size: int = 64, batch: int = 64, processes: int = 2) -> Outcome:
    """``connections`` publisher connections (asyncio ``nanomq.aio.AsyncPublisher``, spread over
    ``processes`` processes, each connection's calls in turn) publish ``batch`` × ``size`` B per
    acked (written) call for ``seconds``, cycling over ``topics`` topics (every topic is written;
    with fewer topics than connections, connections share them); one subscriber process follows
    every topic. Headline: aggregate acked records/s; ``call`` = each publish_batch round trip."""
    names = [f"scale-{i}" for i in range(topics)]
    per_conn: list[list[str]] = [[] for _ in range(connections)]
    for j, name in enumerate(names):
        per_conn[j % connections].append(name)
    for i in range(connections):
        if not per_conn[i]:
            per_conn[i].append(names[i % topics])
    procs = max(1, min(processes, connections))
    groups = [per_conn[i::procs] for i in range(procs)]
    ready, stop, go = FORK.Event(), FORK.Event(), FORK.Event()
    sub = start_child(_scale_sub, address, names, ready, stop, name="scaling subscriber")
    pubs = []
    try:
        if not ready.wait(120):
            sub.result(1)
            raise RuntimeError("scaling subscriber did not get ready")
        warmed = [FORK.Event() for _ in groups]
        pubs = [start_child(_scale_pub_main, address, g, size, batch, seconds, warmed[k], go,
                            server_pid if k == 0 else None, name=f"scaling publisher {k}")
                for k, g in enumerate(groups)]
        for k, ev in enumerate(warmed):  # every connection open and every topic written once
            if not ev.wait(120):
                pubs[k].result(1)
                raise RuntimeError("a scaling publisher did not get ready")
        w = Window.open()
        go.set()
        res = [p.result(seconds * 5 + 120) for p in pubs]
        w.close()
        stop.set()
        s = sub.result(60)
    finally:
        stop.set()
        for c in (*pubs, sub):
            c.reap()
    calls = Histogram()
    for r in res:
        calls.record_many(r["calls"])
    n = sum(int(r["n"]) for r in res)
    span = (max(r["t1"] for r in res) - min(r["t0"] for r in res)) / 1e9
    cpu = {"server": res[0]["server_cpu_s"] * 1e6 / max(n, 1)} if server_pid else {}
    return Outcome(f"NanoMQ {topics} topics x {connections} connections", n, int(s["count"]), rate=n / span,
                   publish_rate=n / span, call=calls, cpu_us=cpu, window=w,
                   extra={"topics": topics, "connections": connections, "batch": batch, "size": size,
                          "processes": procs, "pid": os.getpid()})
