"""Layer (b), resources: the connection limit, retention, and what a slow consumer may cost.

These need facts HELLO_OK does not announce. The target declares them (``max_connections``,
``retention_bytes``, ``retention_check_s`` in target.toml; the reference launch sets them); a
target that declares nothing skips these cases. The memory bound is read from the broker process
(``/proc/<pid>/status``), so it runs only for a target the kit launched on this host.
"""

from __future__ import annotations

import time
from pathlib import Path

from conformance.helpers import alive, collect_all, expect_error, is_error, publish, subscribe, topic_info
from conformance.registry import Context, Failed, Skipped, case, check
from conformance.wire import Closed, WireClient
from nanomq.protocol import (
    Ack,
    ErrorCode,
    Hello,
    HelloOk,
    Metadata,
    MetadataOk,
    ProtocolError,
    Publish,
    RecordBatch,
    Seek,
    SeekOk,
    Start,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    encode,
)


@case("resources.connection-limit", "with the declared connection limit N open, connection N+1 gets "
      "TOO_MANY_CONNECTIONS and is closed; the N open ones keep working; after one closes a new one is accepted",
      layer="wire", exclusive=True, rules=("NMQ-6.2-1", "NMQ-8-4"))
def connection_limit(ctx: Context) -> None:
    n = ctx.target.spec.max_connections
    if n <= 0:
        raise Skipped("the target declares no max_connections")
    if n > 1000:
        raise Skipped(f"max_connections {n}: the kit opens at most 1000 connections")
    opened: list[WireClient] = []
    try:
        with ctx.step("NMQ-6.2-1"):
            retried = False
            for k in range(n):
                try:
                    opened.append(ctx.client())
                except (Closed, AssertionError, ProtocolError, OSError) as e:
                    if retried:
                        raise Failed(f"connection {k + 1} of the declared limit {n} was refused: {e}") from None
                    # connections of earlier cases may still be closing on the server: wait once
                    retried = True
                    time.sleep(0.5)
                    opened.append(ctx.client())
            extra = ctx.target.raw_client()
            try:
                extra.send(Hello(1, 1, "one-too-many", b""))
                frames = extra.expect_closed(5.0)
            except TimeoutError:
                raise Failed(f"connection {n + 1} (over the limit of {n}) was neither refused nor closed") from None
            except (Closed, OSError):
                frames = []
            finally:
                extra.close()
            check(any(is_error(f, ErrorCode.TOO_MANY_CONNECTIONS) for f in frames) and
                  not any(isinstance(f, HelloOk) for f in frames),
                  f"connection {n + 1} over the limit of {n} got {frames!r}, not ERROR TOO_MANY_CONNECTIONS")
        with ctx.step("NMQ-8-4", "NMQ-6.2-1"):
            for w in (opened[0], opened[-1]):
                alive(w, "NMQ-8-4")
            opened.pop().close()
            deadline = time.monotonic() + 5
            while True:
                try:
                    opened.append(ctx.client())
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise Failed("after one of the connections closed, a new one was still refused") from None
                    time.sleep(0.1)
    finally:
        for w in opened:
            w.close()


@case("resources.subscription-limit", "with the declared per-connection limit of N subscriptions held, the next "
      "SUBSCRIBE is RESOURCE_LIMIT, creates nothing and the connection goes on; after one UNSUBSCRIBE a SUBSCRIBE "
      "succeeds again", layer="wire", rules=("NMQ-6.2-3", "NMQ-4.4-1", "NMQ-8-2"))
def subscription_limit(ctx: Context) -> None:
    n = ctx.target.spec.max_subscriptions
    if n <= 0:
        raise Skipped("the target declares no max_subscriptions")
    if n > 5000:
        raise Skipped(f"max_subscriptions {n}: the kit opens at most 5000 subscriptions")
    t = ctx.topic("sublimit")
    with ctx.client() as w:
        publish(w, t, [b"s"])
        base = w.next_id() + 10
        w.send(*(Subscribe(base + k, t, Start.LATEST, 0, 1, "") for k in range(n)))
        subs = []
        with ctx.step("NMQ-6.2-3", "NMQ-4.4-1"):
            for k in range(n):
                f = w.recv_response()
                check(isinstance(f, Subscribed), f"subscription {k + 1} of the declared limit {n} answered {f!r}")
                subs.append(f)
            rid = w.next_id() + 10 + n
            w.send(Subscribe(rid, ctx.topic("sublimit-new"), Start.EARLIEST, 0, 1, ""))
            expect_error(w.recv_response(), ErrorCode.RESOURCE_LIMIT, request_id=rid)
        with ctx.step("NMQ-6.2-3", "NMQ-8-2"):
            alive(w)
            w.send(Unsubscribe(rid + 1, subs[0].sub_id))
            check(isinstance(w.recv_response(), Unsubscribed), "UNSUBSCRIBE")
            f = w.subscribe(t, Start.EARLIEST, 0, 1)
            check(isinstance(f, Subscribed), f"under the limit again, SUBSCRIBE answered {f!r}")
            assert isinstance(f, Subscribed)
            check([r.id for r in collect_all(w, f.sub_id, 1)] == [1], "the new subscription delivers")
        with ctx.step("NMQ-6.2-3"):
            w.send(Metadata(w.next_id(), ""))
            md = w.recv_response()
            check(isinstance(md, MetadataOk) and ctx.target.created_topics and
                  not any(x.name.startswith(t + "-new") for x in md.topics),
                  "the SUBSCRIBE refused with RESOURCE_LIMIT created its topic")


@case("resources.retention", "with retention by size declared, a topic written well past it loses whole oldest "
      "segments only: first_id moves up, earlier ids are never delivered (SUBSCRIBE and SEEK below it start at "
      "it), what remains is intact and new ids continue", layer="wire", exclusive=True,
      rules=("NMQ-SEM-2-4", "NMQ-4.4-4", "NMQ-4.8-1", "NMQ-4.9-2", "NMQ-SEM-4-1", "NMQ-SEM-2-1", "NMQ-S11-1",
             "NMQ-S11-2", "NMQ-S11-3", "NMQ-S11-4"))
def retention(ctx: Context) -> None:
    limit = ctx.target.spec.retention_bytes
    if limit <= 0:
        raise Skipped("the target declares no retention_bytes")
    if limit > 256 << 20:
        raise Skipped(f"retention_bytes {limit}: the kit writes at most 1 GiB to test it")
    t = ctx.topic("retain")
    size = 16 * 1024
    per_batch = max(1, min(ctx.max_batch, (ctx.max_frame or 1 << 24) // (size + 100) - 1, 64))
    total = 3 * limit // size + per_batch
    payload = [f"{i:08d}".encode() + bytes(size - 8) for i in range(per_batch)]
    with ctx.client() as w:
        n = 0
        while n < total:
            rid = w.next_id()
            batch = [f"{n + i:08d}".encode() + p[8:] for i, p in enumerate(payload)]
            w.send(Publish(rid, t, Ack.WRITTEN, RecordBatch.from_payloads(batch)))
            f = w.recv_response()
            check(not is_error(f, ErrorCode.STORAGE_ERROR) and hasattr(f, "first_id"), f"PUBLISH answered {f!r}",
                  "NMQ-4.2-1")
            n += per_batch
        seg = ctx.target.spec.segment_bytes
        wait = max(5.0, 5 * ctx.target.spec.retention_check_s)
        deadline = time.monotonic() + wait

        def settled() -> bool:  # retention ran after the last write (it may also have run during them)
            kept = (info.next_id - info.first_id) * (64 + size)
            return info.first_id > 1 and (not seg or kept <= limit + seg)

        info = topic_info(w, t)
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.1)
            info = topic_info(w, t)
        with ctx.step("NMQ-SEM-2-4", "NMQ-4.9-2", "NMQ-S11-2"):
            check(info.first_id > 1, f"{n} records of {size} bytes ({n * size >> 20} MiB) against retention of "
                  f"{limit >> 20} MiB: first_id is still 1 after {wait:.0f} s")
            check(info.next_id == n + 1, f"retention changed next_id to {info.next_id} (expected {n + 1})")
            kept = (info.next_id - info.first_id) * (64 + size)
            if seg:  # whole segments go while more than the limit is kept: limit - seg < kept <= limit + seg
                check(limit - seg < kept <= limit + seg, f"retention kept {kept / 2**20:.1f} MiB of records with "
                      f"retention_bytes {limit >> 20} MiB and {seg >> 20} MiB segments")
        first = info.first_id
        if ctx.target.spec.storage_format == "nanomq-v1" and ctx.target.can_crash:
            with ctx.step("NMQ-S11-1", "NMQ-S11-3"):  # whole files went, oldest first; the active one stays
                segs = sorted(int(p.name[:20]) for p in ctx.target.topic_dir(t).glob("*.log"))
                check(segs and segs[0] == first, f"after retention the segments start at ids {segs[:4]}, but "
                      f"METADATA says the first retained id is {first}: retention deleted part of a segment or "
                      "left a deleted segment's file")
                check(segs == sorted(segs) and segs[-1] <= n, f"segments {segs}: the active one is gone")
                check(not list(ctx.target.topic_dir(t).glob("*.idx")) or all(
                    int(p.name[:20]) >= first for p in ctx.target.topic_dir(t).glob("*.idx")),
                    "the index of a deleted segment was left behind")
        with ctx.step("NMQ-4.4-4", "NMQ-SEM-2-4", "NMQ-S11-4"):
            for v in (0, 1, first - 1):
                s = w.subscribe(t, Start.ID, v, 2)
                check(isinstance(s, Subscribed) and s.next_id == first,
                      f"SUBSCRIBE from id {v}, below the first retained id {first}, answered {s!r}")
                assert isinstance(s, Subscribed)
                got = collect_all(w, s.sub_id, 2)
                check([r.id for r in got] == [first, first + 1] and got[0].payload[:8] == f"{first - 1:08d}".encode(),
                      f"delivered {[r.id for r in got]} from below the first retained id {first}")
        with ctx.step("NMQ-4.8-1", "NMQ-SEM-2-4"):
            s = subscribe(w, t, Start.LATEST, credit=0)
            w.send(Seek(w.next_id(), s.sub_id, Start.ID, 1))
            f = w.recv_response()
            check(isinstance(f, SeekOk) and f.next_id >= first, f"SEEK to id 1 after retention answered {f!r}")
        with ctx.step("NMQ-SEM-4-1", "NMQ-SEM-2-1"):
            s = subscribe(w, t, Start.EARLIEST, credit=1 << 20)
            want = info.next_id - s.next_id
            got = collect_all(w, s.sub_id, want, timeout=30)
            ids = [r.id for r in got]
            check(ids == list(range(s.next_id, info.next_id)), f"after retention delivered {len(ids)} records, "
                  f"ids {ids[:3]}…{ids[-3:]}, expected {s.next_id}..{info.next_id - 1}")
            check(all(r.payload[:8] == f"{r.id - 1:08d}".encode() for r in got), "a retained record changed")
            a = publish(w, t, [b"after-retention"])
            check(a.first_id == n + 1, f"after retention the next record got id {a.first_id}, expected {n + 1}")


def _rss_anon_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise OSError("no RssAnon line")


@case("resources.slow-consumer", "a subscriber with unlimited credit that never reads its socket, on a topic "
      "with a large backlog: the broker's own memory stays bounded and other clients are served",
      layer="wire", exclusive=True, rules=("NMQ-SEM-5-1", "NMQ-6.2-2", "NMQ-8-4"))
def slow_consumer(ctx: Context) -> None:
    pid = ctx.target.broker_pid()
    if pid is None or not Path(f"/proc/{pid}/status").exists():
        raise Skipped("the broker's memory can be read only for a target the kit launched on this host")
    t = ctx.topic("slow")
    mb = 64 if ctx.quick else 160
    chunk = [bytes(4096)] * 256  # 1 MiB per batch
    with ctx.client() as w:
        for _ in range(mb):
            publish(w, t, chunk)
        for k in range(20):
            publish(w, ctx.topic(f"slow-listed-{k}"), [b"x"])
        before = _rss_anon_kb(pid)
        lazy = WireClient(ctx.target.host, ctx.target.port, rcvbuf=4096, ssl_context=ctx.target.ssl)
        try:
            lazy.hello()
            lazy.send(Subscribe(1, t, Start.EARLIEST, 0, 0xFFFF_FFFF, ""))
            # ... and goes on sending requests whose answers it never reads: a server that keeps
            # reading them while its output to this client is stuck would buffer every answer
            # (METADATA of every topic: a 24-byte request, an answer listing 20+ topics).
            pings = b"".join(encode(Metadata(2 + k, "")) for k in range(4096))
            lazy.sock.settimeout(0.05)
            sent = 0
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                try:
                    sent += lazy.sock.send(pings)
                except (TimeoutError, BlockingIOError):
                    pass  # the server stopped reading: what it must do
                except OSError:
                    break
            time.sleep(0.5)  # the broker has had time to push and buffer as much as it will
            grown = (_rss_anon_kb(pid) - before) // 1024
            with ctx.step("NMQ-SEM-5-1", "NMQ-6.2-2"):
                check(grown <= 10, f"a subscriber that does not read (and sent {sent >> 20} MiB of METADATA requests) made the "
                      f"broker's anonymous memory grow by {grown} MiB with a {mb} MiB backlog (bound: 10 MiB)")
            with ctx.step("NMQ-8-4"):
                t0 = time.monotonic()
                for _ in range(20):
                    alive(w, "NMQ-8-4")
                check(time.monotonic() - t0 < 2.0, "the stuck subscriber slowed another client down")
        finally:
            lazy.close()
    ctx.note(f"broker anonymous memory +{grown} MiB with a {mb} MiB backlog to a subscriber that does not read")
