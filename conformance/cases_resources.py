"""Layer (b), resources: the connection limit, retention, and what a slow consumer may cost; and
what misbehaving clients may cost (issue 10): fairness under a flood, idle and never-reading
connections, runs of out-of-order commits, large frames still arriving, topic creation.

Most need facts HELLO_OK does not announce. The target declares them (``max_connections``,
``retention_bytes``, ``retention_check_s``, ``idle_timeout_s``, ``write_timeout_s``,
``max_commit_gaps``, ``frame_buffer_bytes``, ``topic_create_rate`` / ``topic_create_burst`` in
target.toml; the reference launch sets them); a target that declares nothing skips those cases.
Fairness needs no declaration. The memory bounds are read from the broker process
(``/proc/<pid>/status``), so they run only for a target the kit launched on this host.
"""

from __future__ import annotations

import contextlib
import select
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from conformance.helpers import (
    alive,
    collect_all,
    expect_error,
    is_error,
    publish,
    raw_frame,
    subscribe,
    topic_info,
)
from conformance.registry import Context, Failed, Skipped, case, check
from conformance.wire import Closed, WireClient
from nanomq.protocol import (
    Ack,
    Commit,
    Committed,
    Error,
    ErrorCode,
    Frame,
    Hello,
    HelloOk,
    Metadata,
    MetadataOk,
    Ping,
    Pong,
    ProtocolError,
    Publish,
    PublishAck,
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
      "TOO_MANY_CONNECTIONS and is closed (N counting no connection that has closed, one holding a subscription "
      "included); the N open ones keep working; after one closes a new one is accepted",
      layer="wire", exclusive=True, rules=("NMQ-6.2-1", "NMQ-8-4"))
def connection_limit(ctx: Context) -> None:
    n = ctx.target.spec.max_connections
    if n <= 0:
        raise Skipped("the target declares no max_connections")
    if n > 1000:
        raise Skipped(f"max_connections {n}: the kit opens at most 1000 connections")
    opened: list[WireClient] = []
    try:
        with ctx.step("NMQ-6.2-1", "NMQ-8-4"):
            # a connection that held a subscription when it closed gives its slot back like any other
            w0 = ctx.client()
            try:
                sub = w0.subscribe(ctx.topic("climit"), Start.EARLIEST, 0, 1)
            finally:
                w0.close()
            check(isinstance(sub, Subscribed), f"SUBSCRIBE answered {sub!r}")
            time.sleep(0.2)
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
    size = min(16 * 1024, ctx.max_payload)
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
        # The rules set no time for retention, and a correct target may run it only after the seals of
        # the segments just written, which wait for the disk: on a busy disk (other brokers writing
        # beside it) that took more than 30 s. So the kit first waits for the disk itself: one more
        # record acked durable, which a target acks only once everything before it is synced too
        # ([NMQ-SEM-3-1]); then retention has its own time.
        synced_at = time.monotonic()
        w.send(Publish(w.next_id(), t, Ack.DURABLE, RecordBatch.from_payloads([f"{n:08d}".encode()])))
        f = w.recv_response(120.0)
        check(isinstance(f, PublishAck) and f.first_id == n + 1, f"a durable PUBLISH after the writes answered {f!r}",
              "NMQ-4.2-1")
        n += 1
        synced_s = time.monotonic() - synced_at
        wait = max(30.0, 5 * ctx.target.spec.retention_check_s)
        started = time.monotonic()
        deadline = started + wait

        def settled() -> bool:  # retention ran after the last write (it may also have run during them)
            kept = (info.next_id - info.first_id) * (64 + size)
            return info.first_id > 1 and (not seg or kept <= limit + seg)

        info = topic_info(w, t)
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.1)
            info = topic_info(w, t)
        ctx.note(f"{n} records of {size} bytes; the last, durable, acked {synced_s:.1f} s after the others; "
                 f"retention settled {time.monotonic() - started:.1f} s after that")
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


def _backlog_batch(ctx: Context, per: int) -> list[bytes]:
    """A batch of up to ``per`` records of up to 4 KiB each, within the target's announced limits."""
    return [bytes(min(4096, ctx.max_payload))] * max(1, min(per, ctx.max_batch))


def _rss_anon_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise OSError("no RssAnon line")


def _stuck_subscriber(ctx: Context, t: str, pid: int) -> tuple[WireClient, int, int]:
    """A subscriber with unlimited credit on ``t`` that never reads its socket and goes on sending
    requests whose answers it never reads; returns it (still connected), the MiB of anonymous memory
    the broker grew by meanwhile, and the bytes of requests it got to send."""
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
        deadline = time.monotonic() + (1.2 if ctx.quick else 3.0)
        while time.monotonic() < deadline:
            try:
                sent += lazy.sock.send(pings)
            except (TimeoutError, BlockingIOError):
                pass  # the server stopped reading: what it must do
            except OSError:
                break
        time.sleep(0.5)  # the broker has had time to push and buffer as much as it will
    except BaseException:
        lazy.close()
        raise
    return lazy, (_rss_anon_kb(pid) - before) // 1024, sent


@case("resources.slow-consumer", "a subscriber with unlimited credit that never reads its socket, on a topic "
      "with a large backlog: the broker's own memory stays bounded and other clients are served",
      layer="wire", exclusive=True, rules=("NMQ-SEM-5-1", "NMQ-6.2-2", "NMQ-8-4"))
def slow_consumer(ctx: Context) -> None:
    pid = ctx.target.broker_pid()
    if pid is None or not Path(f"/proc/{pid}/status").exists():
        raise Skipped("the broker's memory can be read only for a target the kit launched on this host")
    t = ctx.topic("slow")
    mb = 64 if ctx.quick else 160
    chunk = _backlog_batch(ctx, 256)
    bound = 10
    with ctx.client() as w:
        for _ in range(-(-(mb << 20) // sum(map(len, chunk)))):  # mb MiB of backlog
            publish(w, t, chunk)
        for k in range(20):
            publish(w, ctx.topic(f"slow-listed-{k}"), [b"x"])
        stuck: list[WireClient] = []
        try:
            lazy, grown, sent = _stuck_subscriber(ctx, t, pid)
            stuck.append(lazy)
            second = None
            if grown > bound:
                # The broker's memory also moves for reasons of its own (a thread's first allocation
                # maps a new arena, more so on a loaded machine): a server that buffers for a stuck
                # subscriber grows again by as much for a second one; a one-off does not repeat.
                alive(w, "NMQ-8-4")  # (and the publisher talks, so that an idle timeout does not close it)
                lazy2, second, _ = _stuck_subscriber(ctx, t, pid)
                stuck.append(lazy2)
            with ctx.step("NMQ-SEM-5-1", "NMQ-6.2-2"):
                check(second is None or second <= bound, f"a subscriber that does not read (and sent {sent >> 20} MiB "
                      f"of METADATA requests) made the broker's anonymous memory grow by {grown} MiB with a {mb} MiB "
                      f"backlog, and a second one by {second} MiB more (bound: {bound} MiB each)")
            with ctx.step("NMQ-8-4"):
                t0 = time.monotonic()
                for _ in range(20):
                    alive(w, "NMQ-8-4")
                check(time.monotonic() - t0 < 2.0, "the stuck subscriber slowed another client down")
        finally:
            for c in stuck:
                c.close()
    ctx.note(f"broker anonymous memory +{grown} MiB with a {mb} MiB backlog to a subscriber that does not read"
             + (f"; +{second} MiB for a second one (the first figure was over {bound} MiB)" if second is not None
                else ""))


# ---------------------------------------------------------------- issue 10: clients that misbehave

def _pings(n: int, base: int = 1000) -> bytes:
    return b"".join(encode(Ping(base + i, i)) for i in range(n))


def _median_rtt(w: WireClient, n: int, token: int, budget_s: float = 5.0) -> float:
    """Median PING round trip of ``n`` (one at a time, fewer if they take more than ``budget_s``
    together), in seconds."""
    rtts: list[float] = []
    end = time.monotonic() + budget_s
    for k in range(n):
        if rtts and time.monotonic() > end:
            break
        t0 = time.perf_counter()
        w.send(Ping(w.next_id(), token + k))
        while True:
            f = w.recv_response(10.0)
            if isinstance(f, Pong) and f.token == token + k:
                break
        rtts.append(time.perf_counter() - t0)
        time.sleep(0.002)
    return sorted(rtts)[len(rtts) // 2]


@case("resources.fairness", "while several clients pipeline PINGs as fast as they can, another client's PING "
      "round trip stays within a small multiple of its quiet one (not the time their backlogs take)",
      layer="wire", exclusive=True, rules=("NMQ-6.2-4", "NMQ-8-4"))
def fairness(ctx: Context) -> None:
    _fairness(ctx, _pings(64 * 1024 // 24), "PINGs")  # 64 KiB of pipelined PINGs per send


@case("resources.fairness-errors", "while several clients pipeline requests that are each refused with a non-fatal "
      "ERROR (PINGs with a short body) as fast as they can, another client's PING round trip stays within a small "
      "multiple of its quiet one: refused requests count against a connection's share like answered ones",
      layer="wire", exclusive=True, rules=("NMQ-6.2-4", "NMQ-8-4"))
def fairness_errors(ctx: Context) -> None:
    bad = b"".join(raw_frame(0x09, 1000 + i, bytes(7)) for i in range(64 * 1024 // 23))  # MALFORMED, non-fatal
    _fairness(ctx, bad, "PINGs with a 7-byte body (each refused MALFORMED)")


@contextlib.contextmanager
def _fresh_target(ctx: Context, unknown: str) -> Iterator[None]:
    """Run the body on a target started afresh (a new data directory: no topic, a full creation
    allowance), and start it afresh again after, for the cases that follow. ``unknown`` says what
    could not be known otherwise: Skipped for a target the kit did not launch."""
    if not ctx.target.can_crash:
        raise Skipped(f"{unknown} cannot be known: needs a target the kit launched (it starts it afresh)")
    ctx.target.fresh_start()
    try:
        yield
    finally:
        ctx.target.fresh_start()


def _creating(w: WireClient, topic: str) -> Publish:
    """A PUBLISH of one record to ``topic``: to a new name, a request that creates a topic."""
    return Publish(w.next_id(), topic, Ack.WRITTEN, RecordBatch.from_payloads([b"r"]))


@case("resources.fairness-create", "while a client creates new topics as fast as it can within the declared "
      "allowance (PUBLISHes to new names, pipelined), another client's PING round trip stays within a small multiple "
      "of its quiet one: creating a topic holds up no other connection", layer="wire", restarts=True,
      rules=("NMQ-6.2-4", "NMQ-8-4"))
def fairness_create(ctx: Context) -> None:
    burst = ctx.target.spec.topic_create_burst
    n = min(burst, 50) if burst > 0 else 50
    with _fresh_target(ctx, "the creation allowance other cases used up"):
        base = ctx.topic("fcreate")
        with ctx.client() as probe, ctx.client() as creator:
            quiet = _median_rtt(probe, 40, 1)
            answers: list[Frame] = []

            def collect() -> None:
                with contextlib.suppress(Closed, OSError, TimeoutError, ProtocolError):
                    for _ in range(n):
                        answers.append(creator.recv_response(30.0))

            reader = threading.Thread(target=collect, daemon=True)
            creator.send(*(_creating(creator, f"{base}-{i}") for i in range(n)))
            reader.start()
            rtts: list[float] = []
            token = 5000
            while reader.is_alive() or not rtts:
                t0 = time.perf_counter()
                probe.send(Ping(probe.next_id(), token))
                try:
                    while True:
                        f = probe.recv_response(10.0)
                        if isinstance(f, Pong) and f.token == token:
                            break
                except TimeoutError:
                    raise Failed(f"while another client created {n} topics, a PING got no answer within 10 s: it "
                                 "is starved", ("NMQ-6.2-4", "NMQ-8-4")) from None
                rtts.append(time.perf_counter() - t0)
                token += 1
            reader.join(30)
            loaded = sorted(rtts)[len(rtts) // 2]
            bound = max(0.02, 10 * quiet)
            with ctx.step("NMQ-8-4"):
                check(len(answers) == n and all(isinstance(f, PublishAck) for f in answers),
                      f"{n} PUBLISHes to new topics within the declared burst got {len(answers)} answers, not all "
                      "PUBLISH_ACK")
            with ctx.step("NMQ-6.2-4", "NMQ-8-4"):
                check(loaded <= bound, f"while another client created {n} topics, the median PING round trip was "
                      f"{loaded * 1e3:.1f} ms over {len(rtts)} PINGs (quiet: {quiet * 1e3:.2f} ms; bound: "
                      f"{bound * 1e3:.1f} ms): the creations hold up the other connections")
        ctx.note(f"median PING round trip {quiet * 1e3:.2f} ms quiet, {loaded * 1e3:.2f} ms over {len(rtts)} PINGs "
                 f"while {n} topics were created")


@case("resources.fairness-drain", "while subscribers read a large backlog as fast as they can, another client's PING "
      "round trip stays within a small multiple of its quiet one: one subscription's backlog is delivered in turns",
      layer="wire", exclusive=True, rules=("NMQ-6.2-4", "NMQ-8-4"))
def fairness_drain(ctx: Context) -> None:
    n_sub = 2
    per = max(1, min(ctx.max_batch, 256))
    n_records = 100_000 if ctx.quick else 200_000
    t = ctx.topic("drain")
    with ctx.client() as w:
        batch = RecordBatch.from_payloads([bytes(64)] * per)
        sent = 0
        while sent < n_records:
            w.send(*(Publish(w.next_id(), t, Ack.WRITTEN, batch) for _ in range(16)))
            for _ in range(16):
                f = w.recv_response()
                check(isinstance(f, PublishAck), f"PUBLISH answered {f!r}", "NMQ-8-4")
            sent += 16 * per
    subs_each = max(1, min(4, ctx.target.spec.max_subscriptions or 4))

    @contextlib.contextmanager
    def draining() -> Iterator[None]:
        drainers = [ctx.client() for _ in range(n_sub)]
        stop = threading.Event()
        for d in drainers:  # several subscriptions each: a backlog of subs_each times the topic
            d.send(*(Subscribe(d.next_id(), t, Start.EARLIEST, 0, 0xFFFF_FFFF, "") for _ in range(subs_each)))

        def drain(c: WireClient) -> None:  # as fast as it can, unparsed
            c.sock.settimeout(0.2)
            while not stop.is_set():
                try:
                    if not c.sock.recv(1 << 20):
                        return
                except (TimeoutError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    return

        threads = [threading.Thread(target=drain, args=(d,), daemon=True) for d in drainers]
        for th in threads:
            th.start()
        try:
            yield
        finally:
            stop.set()
            for th in threads:
                th.join(5)
            for d in drainers:
                d.close()

    _fair_under(ctx, f"while {n_sub} subscribers read a backlog of {subs_each} x {sent} records as fast as they could",
                draining, settle_s=0.05, who="one subscription's backlog is delivered")


@case("resources.fairness-unread", "while a client pipelines PINGs and never reads their PONGs (its socket full), "
      "another client's PING round trip stays within a small multiple of its quiet one: answers that do not fit a "
      "socket wait there, they do not hold the target", layer="wire", exclusive=True, rules=("NMQ-6.2-4", "NMQ-8-4"))
def fairness_unread(ctx: Context) -> None:
    # The C data plane writes its answers to the socket itself while the transport has nothing
    # buffered; once the socket takes no more, the rest must go to the transport (which buffers it,
    # pauses reading that client and drops it after the write timeout), never wait in a retry loop
    # that holds the whole event loop until this client reads.
    pings = b"".join(encode(Ping(k + 1, k)) for k in range(4096))  # 96 KiB of whole frames per turn

    @contextlib.contextmanager
    def flooding() -> Iterator[None]:
        c = WireClient(ctx.target.host, ctx.target.port, rcvbuf=4096, ssl_context=ctx.target.ssl)
        c.hello()
        stop = threading.Event()

        def flood() -> None:  # a continuous stream of whole PINGs, never reading
            c.sock.settimeout(0.2)
            off = 0
            while not stop.is_set():
                try:
                    off = (off + c.sock.send(pings[off:])) % len(pings)
                except (TimeoutError, ssl.SSLWantWriteError):
                    continue  # the target stopped reading this client: it keeps trying until stopped
                except OSError:
                    return  # dropped (its output stuck past the write timeout)

        th = threading.Thread(target=flood, daemon=True)
        th.start()
        try:
            yield
        finally:
            stop.set()
            th.join(5)
            c.close()

    _fair_under(ctx, "while another client pipelined PINGs without reading their PONGs", flooding, settle_s=0.3,
                who="the answers that did not fit that client's socket held the target")


def _fairness(ctx: Context, chunk: bytes, what: str) -> None:
    """The probe's median PING round trip, quiet and while several clients send ``chunk`` over and
    over as fast as the target reads it (reading what comes back, unparsed)."""
    n_flood = 4 if ctx.quick else 8

    @contextlib.contextmanager
    def flooding() -> Iterator[None]:
        flooders = [ctx.client() for _ in range(n_flood)]
        stop = threading.Event()

        def flood() -> None:
            socks = [f.sock for f in flooders]
            for s in socks:
                s.setblocking(False)
            while not stop.is_set():
                r, w, _ = select.select(socks, socks, [], 0.05)
                for s in w:
                    with contextlib.suppress(BlockingIOError, InterruptedError, ssl.SSLWantWriteError, OSError):
                        s.send(chunk)
                for s in r:
                    with contextlib.suppress(BlockingIOError, InterruptedError, ssl.SSLWantReadError, OSError):
                        s.recv(1 << 20)  # the PONGs, unread

        th = threading.Thread(target=flood, daemon=True)
        th.start()
        try:
            yield
        finally:
            stop.set()
            th.join(5)
            for f in flooders:
                f.close()

    _fair_under(ctx, f"with {n_flood} clients pipelining {what}", flooding, settle_s=0.3,
                who="one client's backlog is handled")


def _fair_under(ctx: Context, load_text: str, load: Callable[[], AbstractContextManager[None]], *, settle_s: float,
                who: str) -> None:
    """NMQ-6.2-4: a probe's median PING round trip, quiet and then ``settle_s`` into ``load`` (a
    context that starts the load on entry and stops it on exit), stays within 10x the quiet one
    (at least 20 ms); a probe PING that gets no answer at all is starvation."""
    with ctx.client() as probe:
        quiet = _median_rtt(probe, 40, 1)
        with load():
            time.sleep(settle_s)  # the load is under way: backlogs on the server
            try:
                loaded = _median_rtt(probe, 40, 1000)
            except TimeoutError:
                raise Failed(f"{load_text}, another client's PING got no answer within 10 s: it is starved",
                             ("NMQ-6.2-4", "NMQ-8-4")) from None
        bound = max(0.02, 10 * quiet)
        with ctx.step("NMQ-6.2-4", "NMQ-8-4"):
            check(loaded <= bound, f"{load_text}, another client's median PING round trip was {loaded * 1e3:.1f} ms "
                  f"(quiet: {quiet * 1e3:.2f} ms; bound: {bound * 1e3:.1f} ms): {who} before the others are served")
    ctx.note(f"median PING round trip {quiet * 1e3:.2f} ms quiet, {loaded * 1e3:.2f} ms {load_text}")


def _memory_given_back(pid: int, before_kb: int) -> int:
    """MiB of anonymous memory the broker holds above ``before_kb``, polled for up to 3 s until it
    is 32 MiB or less (the rule sets no time; the reference broker trims its heap 0.5 s after a
    large frame is let go)."""
    give_back = time.monotonic() + 3.0
    while True:
        kept = (_rss_anon_kb(pid) - before_kb) >> 10
        if kept <= 32 or time.monotonic() >= give_back:
            return kept
        time.sleep(0.05)


@case("resources.frame-buffer", "several clients each sending most of a large frame make the broker hold at most "
      "about the declared bound for frames still arriving; every frame then completes and is acked, and the "
      "memory goes back", layer="wire", exclusive=True, rules=("NMQ-6.2-6", "NMQ-6.2-2", "NMQ-8-4"))
def frame_buffer(ctx: Context) -> None:
    limit = ctx.target.spec.frame_buffer_bytes
    if limit <= 0:
        raise Skipped("the target declares no frame_buffer_bytes")
    pid = ctx.target.broker_pid()
    if pid is None or not Path(f"/proc/{pid}/status").exists():
        raise Skipped("the broker's memory can be read only for a target the kit launched on this host")
    per = max(1, min(ctx.max_batch, 256))
    size = min(ctx.max_payload, ((ctx.max_frame or 1 << 24) - 1024) // per - 64)
    t = ctx.topic("bigframes")
    frame = encode(Publish(7, t, Ack.WRITTEN, RecordBatch.from_payloads([bytes(size)] * per, max_payload=ctx.max_payload)))
    if len(frame) < 4 << 20:
        raise Skipped(f"the largest frame the target allows is {len(frame) >> 20} MiB: too small to tell")
    k = 5 if ctx.quick else 8
    if limit > (k * len(frame)) // 2:
        raise Skipped(f"frame_buffer_bytes {limit >> 20} MiB: the kit holds at most {k} frames of "
                      f"{len(frame) >> 20} MiB, not enough to tell")
    hold = len(frame) - (1 << 20)  # all but the last MiB of each frame
    with ctx.client() as w:
        publish(w, t, [b"first"])  # the topic exists
        time.sleep(0.3)
        before = _rss_anon_kb(pid)
        senders = [ctx.client() for _ in range(k)]
        sent = [0] * k
        answers: list[Frame | BaseException | None] = [None] * k
        try:
            # All at once and quickly: a target's frame timeout runs on every frame it is reading.
            for c in senders:
                c.sock.setblocking(False)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and any(n < hold for n in sent):
                progress = False
                for i, c in enumerate(senders):
                    if sent[i] < hold:
                        with contextlib.suppress(BlockingIOError, ssl.SSLWantWriteError):
                            sent[i] += c.sock.send(memoryview(frame)[sent[i] : hold])
                            progress = True
                if not progress:
                    time.sleep(0.002)
            time.sleep(0.3)
            grown = (_rss_anon_kb(pid) - before) >> 10
            bound = (limit >> 20) + 2 * k + 16
            with ctx.step("NMQ-6.2-6", "NMQ-6.2-2"):
                check(grown <= bound, f"{k} clients each sending up to {hold >> 20} MiB of a {len(frame) >> 20} MiB frame "
                      f"({sum(sent) >> 20} MiB sent) made the broker's anonymous memory grow by {grown} MiB (declared "
                      f"bound {limit >> 20} MiB; allowed {bound} MiB with a read per connection and slack)")
            with ctx.step("NMQ-8-4"):
                alive(w, "NMQ-8-4")

            def finish(i: int) -> None:  # each frame completes, all in parallel: none may be refused or stall
                c = senders[i]
                try:
                    c.sock.setblocking(True)
                    c.sock.settimeout(60)
                    c.sock.sendall(memoryview(frame)[sent[i] :])
                    answers[i] = c.recv_response(60)
                except BaseException as e:  # noqa: BLE001 - reported below
                    answers[i] = e

            threads = [threading.Thread(target=finish, args=(i,), daemon=True) for i in range(k)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(90)
            with ctx.step("NMQ-6.2-6"):
                for i, f in enumerate(answers):
                    check(isinstance(f, PublishAck) and f.count == per, f"frame {i + 1} of {k}, once complete, "
                          f"answered {f!r}")
            # The memory goes back once the frames are handled, while their connections stay open
            # (idle, sending nothing more): a server that frees a frame's buffer only when its
            # connection goes holds a whole frame per idle client.
            held = _memory_given_back(pid, before)
            with ctx.step("NMQ-6.2-6"):
                check(held <= 32, f"after the {k} frames were handled, with their connections still open, the "
                      f"broker kept {held} MiB more anonymous memory than before for 3 s (bound: 32 MiB)")
        finally:
            for c in senders:
                c.close()
        kept = _memory_given_back(pid, before)
        with ctx.step("NMQ-6.2-6"):
            check(kept <= 32, f"after the {k} frames were handled and their connections closed the broker kept "
                  f"{kept} MiB more anonymous memory than before (bound: 32 MiB)")
    ctx.note(f"{k} x {hold >> 20} MiB of partial frames: broker anonymous memory +{grown} MiB (declared bound "
             f"{limit >> 20} MiB), +{held} MiB once handled, +{kept} MiB once their connections closed")


@case("resources.frame-room", "while one client holds the start of a large frame, another client's large frame "
      "that fits beside it within the declared bound is read and acked at once, not after the first one; then the "
      "first completes and is acked too", layer="wire", exclusive=True, rules=("NMQ-6.2-6", "NMQ-8-4"))
def frame_room(ctx: Context) -> None:
    limit = ctx.target.spec.frame_buffer_bytes
    if limit <= 0:
        raise Skipped("the target declares no frame_buffer_bytes")
    per = max(1, min(ctx.max_batch, 256))
    # two frames of about a third of the bound each: both fit in it at once
    size = min(ctx.max_payload, ((ctx.max_frame or 1 << 24) - 1024) // per - 64, (limit // 3) // per - 64)
    t = ctx.topic("frameroom")
    frames = [encode(Publish(k, t, Ack.WRITTEN, RecordBatch.from_payloads([bytes([k]) * size] * per, max_payload=ctx.max_payload)))
              for k in (1, 2)]
    if len(frames[0]) < 4 << 20:
        raise Skipped(f"frames of a third of frame_buffer_bytes or within max_frame are {len(frames[0]) >> 20} MiB: "
                      "too small to tell")
    start = 1 << 20  # what the first client sends of its frame before it pauses
    with ctx.client() as w, ctx.client() as first, ctx.client() as second:
        publish(w, t, [b"first"])  # the topic exists
        first.sock.sendall(memoryview(frames[0])[:start])
        time.sleep(0.2)  # the target has read the start of the first frame: it holds room for it
        answer: list[Frame | BaseException] = []

        def send_second() -> None:
            try:
                second.sock.settimeout(30)
                second.sock.sendall(frames[1])
                answer.append(second.recv_response(30))
            except BaseException as e:  # noqa: BLE001 - reported below
                answer.append(e)

        t0 = time.monotonic()
        th = threading.Thread(target=send_second, daemon=True)
        th.start()
        th.join(10)
        waited = time.monotonic() - t0
        with ctx.step("NMQ-6.2-6"):
            check(bool(answer) and isinstance(answer[0], PublishAck) and answer[0].count == per,
                  f"a {len(frames[1]) >> 20} MiB frame, sent while another client held the first {start >> 20} MiB "
                  f"of one of {len(frames[0]) >> 20} MiB (both together {2 * len(frames[0]) >> 20} MiB, within the "
                  f"declared bound of {limit >> 20} MiB), answered {answer[0] if answer else 'nothing'!r} within "
                  f"{waited:.1f} s: it waited for the other frame although there was room for it")
            # the first client's frame was not given up meanwhile (a target that read the second frame only
            # once the first connection had timed out would have closed it)
            first.sock.settimeout(30)
            try:
                first.sock.sendall(memoryview(frames[0])[start:])
                f = first.recv_response(30)
            except (Closed, OSError) as e:
                raise Failed(f"the client holding the start of its frame was closed ({e}) before it could finish it; "
                             f"the other client's frame was answered after {waited:.1f} s") from None
            check(isinstance(f, PublishAck) and f.count == per, f"the first frame, once complete, answered {f!r}")
        with ctx.step("NMQ-8-4"):
            alive(w, "NMQ-8-4")
    ctx.note(f"a {len(frames[1]) >> 20} MiB frame beside another one still arriving was acked after {waited:.2f} s")


@case("resources.topic-rate", "topics created as fast as a client can: beyond the declared burst and rate a new "
      "topic is RESOURCE_LIMIT, is not created, the connection goes on, and the same PUBLISH succeeds later",
      layer="wire", restarts=True, rules=("NMQ-6.2-5", "NMQ-8-2"))
def topic_rate(ctx: Context) -> None:
    rate, burst = ctx.target.spec.topic_create_rate, ctx.target.spec.topic_create_burst
    if rate <= 0 or burst <= 0:
        raise Skipped("the target declares no topic_create_rate and topic_create_burst")
    if burst > 500:
        raise Skipped(f"topic_create_burst {burst}: the kit creates at most 500 topics to test it")
    with _fresh_target(ctx, "the allowance other cases used up"):
        base = ctx.topic("rate")
        with ctx.client() as w:
            t0 = time.monotonic()
            made, refused = 0, None
            while refused is None:  # PUBLISH creates them (SUBSCRIBEs would meet the subscription limit)
                w.send(_creating(w, f"{base}-{made}"))
                f = w.recv_response()
                elapsed = time.monotonic() - t0
                if isinstance(f, PublishAck):
                    made += 1
                    with ctx.step("NMQ-6.2-5"):
                        check(made <= burst + rate * elapsed + 1, f"{made} topics created in {elapsed:.2f} s, over "
                              f"the declared burst {burst} and rate {rate:g}/s")
                    if elapsed > 15:
                        raise Skipped(f"the target created {made} topics in {elapsed:.0f} s without reaching its "
                                      f"declared rate {rate:g}/s: creating topics is slower than the limit")
                    continue
                refused = f
            with ctx.step("NMQ-6.2-5", "NMQ-8-2"):
                expect_error(refused, ErrorCode.RESOURCE_LIMIT, "NMQ-6.2-5")
                check(made >= burst, f"only {made} topics were created before a refusal; the declared burst is {burst}")
                alive(w)
                w.send(Metadata(w.next_id(), ""))
                md = w.recv_response()
                check(isinstance(md, MetadataOk) and not any(x.name == f"{base}-{made}" for x in md.topics),
                      "the refused topic was created")
            # room for one creation (not three): three connections send the same PUBLISH at once; it creates
            # one topic, and the two that name it while it is being created create nothing, so none is refused
            w2, w3 = ctx.client(), ctx.client()
            time.sleep(1.0 / rate + 0.05)
            with ctx.step("NMQ-6.2-5"), w2, w3:
                for c in (w, w2, w3):
                    c.send(_creating(c, f"{base}-{made}"))
                fs = [c.recv_response() for c in (w, w2, w3)]
                check(all(isinstance(f, PublishAck) for f in fs), f"{1.0 / rate + 0.05:.2f} s later the same PUBLISH, "
                      f"sent by three connections at once (one topic to create), answered {fs!r}")
        ctx.note(f"{made} topics created before the first refusal (declared burst {burst}, rate {rate:g}/s)")


def _create_paced(w: WireClient, ctx: Context, topic: str, n: int, t0: float) -> Frame:
    """PUBLISH one record to ``topic`` as the target's ``n``-th topic creation since ``t0``, late
    enough that a declared creation rate (NMQ-6.2-5's other limit) cannot be why it is refused."""
    rate, burst = ctx.target.spec.topic_create_rate, ctx.target.spec.topic_create_burst
    if rate > 0 and burst > 0:
        wait = (n - burst) / rate - (time.monotonic() - t0)
        if wait > 0:
            time.sleep(wait + 0.1)
    w.send(_creating(w, topic))
    return w.recv_response()


def _refused_creation(w: WireClient, ctx: Context, base: str, limit: int, t0: float, when: str) -> None:
    """A PUBLISH and a SUBSCRIBE that would create topic number ``limit + 1`` are RESOURCE_LIMIT,
    create nothing and leave the connection usable; the topics held still take records."""
    with ctx.step("NMQ-6.2-5", "NMQ-8-2"):
        f = _create_paced(w, ctx, f"{base}-{limit}", limit + 1, t0)
        expect_error(f, ErrorCode.RESOURCE_LIMIT, "NMQ-6.2-5")
        alive(w)
        rid = w.next_id()
        w.send(Subscribe(rid, f"{base}-sub", Start.EARLIEST, 0, 1, ""))
        f = w.recv_response()
        expect_error(f, ErrorCode.RESOURCE_LIMIT, "NMQ-6.2-5", request_id=rid)
        alive(w)
        w.send(Metadata(w.next_id(), ""))
        md = w.recv_response()
        check(isinstance(md, MetadataOk), f"METADATA answered {md!r}")
        assert isinstance(md, MetadataOk)
        names = {x.name for x in md.topics}
        check(f"{base}-{limit}" not in names and f"{base}-sub" not in names,
              f"{when}: a topic refused RESOURCE_LIMIT was created anyway")
        check(len(names) == limit, f"{when}: the target holds {len(names)} topics, its declared max_topics is {limit}")
    with ctx.step("NMQ-6.2-5"):
        # the limit is on topics, not on records: those it holds go on taking them
        publish(w, f"{base}-0", [b"more"])
        publish(w, f"{base}-{limit - 1}", [b"more"])


@case("resources.topic-limit", "a target holding its declared max_topics (counted from a fresh start): every "
      "topic up to the limit is created, and a PUBLISH or SUBSCRIBE that would create one more is RESOURCE_LIMIT, "
      "creates nothing, and the connection and the topics held go on; after a clean restart the topics on disk "
      "still count", layer="wire", restarts=True, rules=("NMQ-6.2-5", "NMQ-8-2"))
def topic_limit(ctx: Context) -> None:
    limit = ctx.target.spec.max_topics
    if limit <= 0:
        raise Skipped("the target declares no max_topics")
    if limit > 200:
        raise Skipped(f"max_topics {limit}: the kit creates at most 200 topics to test it")
    with _fresh_target(ctx, "the topics a target holds already"):
        base = ctx.topic("limit")
        t0 = time.monotonic()
        with ctx.client() as w:
            for k in range(limit):
                f = _create_paced(w, ctx, f"{base}-{k}", k + 1, t0)
                with ctx.step("NMQ-6.2-5"):
                    check(isinstance(f, PublishAck), f"the creation of topic {k + 1} of the declared max_topics "
                          f"{limit} answered {f!r}")
            _refused_creation(w, ctx, base, limit, t0, "at the limit")
        ctx.target.stop()  # clean: the topics are on disk, and a restarted target must count them
        ctx.target.start()
        with ctx.client() as w:
            _refused_creation(w, ctx, base, limit, time.monotonic() - 3600, "after a clean restart")
        ctx.note(f"{limit} topics created, the next refused RESOURCE_LIMIT, before and after a clean restart")


# The cases below are not exclusive: last in this module, they run alongside the wire cases of the
# modules after it (the runner batches consecutive non-exclusive cases), so their waits cost no time.

@case("resources.commit-gaps", "with the declared bound N on runs of ids committed out of order, N runs are "
      "accepted, a COMMIT making one more is RESOURCE_LIMIT without effect, and once lower commits join runs it "
      "succeeds; ids within a run never count", layer="wire", rules=("NMQ-4.7-5", "NMQ-6.2-3", "NMQ-4.7-4"))
def commit_gaps(ctx: Context) -> None:
    n = ctx.target.spec.max_commit_gaps
    if n <= 0:
        raise Skipped("the target declares no max_commit_gaps")
    if n > 2000:
        raise Skipped(f"max_commit_gaps {n}: the kit makes at most 2000 runs")
    t = ctx.topic("gaps")
    total = 2 * n + 2 + 256
    with ctx.client() as w:
        for i in range(0, total, 256):
            publish(w, t, [b"g"] * min(256, total - i))
        s = subscribe(w, t, Start.EARLIEST, credit=total)
        got = collect_all(w, s.sub_id, total)
        check(len(got) == total and got[0].id == 1, f"delivered {len(got)} of {total} records")

        def commit(ids: list[int]) -> Frame:
            out: Frame | None = None
            for i in range(0, len(ids), ctx.max_batch):  # one COMMIT per max_batch ids
                w.send(Commit(w.next_id(), s.sub_id, tuple(ids[i : i + ctx.max_batch])))
                out = w.recv_response()
                if not isinstance(out, Committed):
                    return out
            assert out is not None
            return out

        with ctx.step("NMQ-4.7-5", "NMQ-4.7-4"):
            f = commit(list(range(2, 2 * n + 1, 2)))  # 2, 4, ..., 2n: n runs above position 1
            check(isinstance(f, Committed) and f.position == 1, f"committing {n} runs (the declared bound) answered {f!r}")
        with ctx.step("NMQ-4.7-5", "NMQ-6.2-3"):
            f = commit([2 * n + 2])  # run n + 1
            expect_error(f, ErrorCode.RESOURCE_LIMIT)
            f = commit([3])  # joins the runs [2] and [4]: allowed at the bound, and 1 is still not committed
            check(isinstance(f, Committed) and f.position == 1, f"a COMMIT joining two runs at the bound answered {f!r}")
            f = commit([1])  # 1..4 committed: the first run joins the position
            check(isinstance(f, Committed) and f.position == 5, f"after committing 1, the position is {f!r}, expected 5")
            f = commit([2 * n + 2])  # room again
            check(isinstance(f, Committed), f"under the bound again, the same COMMIT answered {f!r}")
        with ctx.step("NMQ-4.7-5"):
            f = commit(list(range(2 * n + 3, total + 1)))  # 256 ids: one run, whatever their number
            check(isinstance(f, Committed) and f.position == 5, f"a COMMIT of {total - 2 * n - 2} consecutive ids answered {f!r}")


@case("resources.idle-timeout", "a connection with no subscription that sends nothing is closed after the "
      "declared idle timeout, with RESOURCE_LIMIT citing NMQ-2-5; a subscribed one, a talking one and one whose "
      "every request is refused (a non-fatal ERROR) stay open", layer="wire", rules=("NMQ-2-5", "NMQ-8-2"))
def idle_timeout(ctx: Context) -> None:
    idle_s = ctx.target.spec.idle_timeout_s
    if idle_s <= 0:
        raise Skipped("the target declares no idle_timeout_s")
    if idle_s > 30:
        raise Skipped(f"idle_timeout_s {idle_s}: the kit waits at most 30 s for it")
    t = ctx.topic("idle")
    with ctx.client() as idle, ctx.client() as talker, ctx.client() as subscriber, ctx.client() as refused:
        subscribe(subscriber, t, Start.LATEST, credit=10)
        deadline = time.monotonic() + 1.5 * idle_s + 2
        closed_frames: list | None = None
        idle.sock.settimeout(0.05)
        rid = 0x1D1E_0000
        while time.monotonic() < deadline and closed_frames is None:
            alive(talker, "NMQ-2-5")
            # a frame received is not idleness, whether or not the request is valid: a PING with a
            # short body, refused MALFORMED (non-fatal), every round
            rid += 1
            refused.send_raw(raw_frame(0x09, rid, bytes(7)))
            with ctx.step("NMQ-2-5", "NMQ-8-2"):
                try:
                    f = refused.recv_response(10.0)
                except (Closed, OSError) as e:
                    raise Failed(f"a connection sending a request every 0.25 s, each refused with a non-fatal "
                                 f"ERROR, was closed as if idle ({e})") from None
                check(not (isinstance(f, Error) and f.request_id == 0), f"a connection sending a request every "
                      f"0.25 s, each refused with a non-fatal ERROR, was closed with {f!r}, as if idle")
                check(is_error(f, ErrorCode.MALFORMED) and f.request_id == rid,
                      f"a PING with a 7-byte body answered {f!r}, not ERROR MALFORMED with its request_id", "NMQ-8-2")
            with contextlib.suppress(TimeoutError):
                closed_frames = idle.expect_closed(min(0.25, idle_s / 4))
        with ctx.step("NMQ-2-5"):
            check(closed_frames is not None, f"a connection idle for {1.5 * idle_s + 2:.0f} s (declared idle timeout "
                  f"{idle_s:g} s) was not closed")
            assert closed_frames is not None
            check(any(is_error(f, ErrorCode.RESOURCE_LIMIT) and f.rule == "NMQ-2-5" for f in closed_frames),
                  f"the idle connection was closed with {closed_frames!r}, not ERROR RESOURCE_LIMIT citing NMQ-2-5")
        with ctx.step("NMQ-2-5", "NMQ-8-2"):
            alive(subscriber, "NMQ-2-5")  # holds a subscription: never idle
            alive(talker, "NMQ-2-5")
            try:  # refused requests all along: it was not idle either
                alive(refused, "NMQ-2-5")
            except Failed as e:
                raise Failed(f"a connection sending a request every 0.25 s, each refused with a non-fatal ERROR, "
                             f"was closed as if idle when the idle one was: {e}", ("NMQ-2-5",)) from None


@case("resources.write-timeout", "a subscriber with a large backlog that never reads its socket is dropped after "
      "the declared write timeout, one that stops reading for less than that is not (it gets every record); the "
      "others are served", layer="wire", rules=("NMQ-6.2-7", "NMQ-6.2-2", "NMQ-8-4"))
def write_timeout(ctx: Context) -> None:
    write_s = ctx.target.spec.write_timeout_s
    if write_s <= 0:
        raise Skipped("the target declares no write_timeout_s")
    if write_s > 30:
        raise Skipped(f"write_timeout_s {write_s}: the kit waits at most 30 s for it")
    t = ctx.topic("stuck")
    with ctx.client() as w:
        chunk = _backlog_batch(ctx, 64)
        batches = -(-(24 << 20) // sum(map(len, chunk)))
        for _ in range(batches):  # 24 MiB of backlog
            publish(w, t, chunk)
        total = batches * len(chunk)
        lazy = WireClient(ctx.target.host, ctx.target.port, rcvbuf=4096, ssl_context=ctx.target.ssl)
        pauser = WireClient(ctx.target.host, ctx.target.port, ssl_context=ctx.target.ssl)
        pause_s = 0.6 * write_s
        paused: list[str] = []

        def pause_then_read() -> None:
            """Subscribed with the same backlog, it reads nothing for 0.6 of the write timeout, then
            everything: a connection whose output stayed stuck for less than the timeout is kept."""
            try:
                time.sleep(pause_s)
                got = collect_all(pauser, sub.sub_id, total, timeout=60.0, idle=5.0)
                if len(got) != total or [r.id for r in got] != list(range(1, total + 1)):
                    paused.append(f"it got {len(got)} of the {total} records")
                else:
                    alive(pauser, "NMQ-6.2-7")
            except Failed as e:
                paused.append(str(e))
            except (Closed, OSError, AssertionError, ProtocolError) as e:
                paused.append(f"{type(e).__name__}: {e}")

        try:
            lazy.hello()
            lazy.send(Subscribe(lazy.next_id(), t, Start.EARLIEST, 0, 0xFFFF_FFFF, ""))
            pauser.hello()
            sub = pauser.subscribe(t, Start.EARLIEST, 0, 0xFFFF_FFFF)
            check(isinstance(sub, Subscribed), f"SUBSCRIBE answered {sub!r}", "NMQ-6.2-7")
            assert isinstance(sub, Subscribed)
            reader = threading.Thread(target=pause_then_read, daemon=True)
            reader.start()
            # It never reads: its output is stuck on the server. Meanwhile the other client is
            # served, and talks, so that a target's idle timeout [NMQ-2-5] never closes it.
            stuck_until = time.monotonic() + write_s + 1.5
            while time.monotonic() < stuck_until:
                alive(w, "NMQ-8-4")
                time.sleep(0.25)
            with ctx.step("NMQ-6.2-7", "NMQ-6.2-2"):
                # now read: what the kernel holds, then the end of the connection, unless it was kept
                lazy.sock.settimeout(1.0)
                deadline = time.monotonic() + 2 * write_s + 3
                dropped = False
                while time.monotonic() < deadline:
                    try:
                        if not lazy.sock.recv(1 << 20):
                            dropped = True
                            break
                    except TimeoutError:
                        alive(w, "NMQ-8-4")
                        continue
                    except OSError:  # reset
                        dropped = True
                        break
                check(dropped, f"a subscriber that read nothing for {write_s + 1.5:.1f} s (declared write timeout "
                      f"{write_s:g} s) was still connected and being served")
            with ctx.step("NMQ-8-4"):
                alive(w, "NMQ-8-4")
            reader.join(70)
            with ctx.step("NMQ-6.2-7"):
                check(not reader.is_alive() and not paused, f"a subscriber that stopped reading for {pause_s:.1f} s "
                      f"(less than the declared write timeout of {write_s:g} s) with {total} records of backlog, then "
                      f"read them all, was not served to the end: {paused[0] if paused else 'still reading after 70 s'}")
        finally:
            lazy.close()
            pauser.close()
