"""Layer (b), several things on one connection and the life of a subscription: several subscriptions
and topics at once, processing order in pipelines, unsubscribe, commit bookkeeping, closing at any
moment, and the capabilities a connection announces.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

from conformance.cases_enums import _restamp
from conformance.helpers import (
    alive,
    closed,
    collect_all,
    expect_error,
    is_error,
    publish,
    quiet,
    raw_publish,
    responses,
    subscribe,
    topic_info,
)
from conformance.registry import Context, Skipped, Unimplemented, case, check
from conformance.wire import WireClient
from nanomq.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Capability,
    Commit,
    Committed,
    Credit,
    Deliver,
    ErrorCode,
    Hello,
    HelloOk,
    Metadata,
    MetadataOk,
    Ping,
    Pong,
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


def _commit(w: WireClient, sub_id: int, ids: tuple[int, ...]) -> int:
    rid = w.next_id()
    w.send(Commit(rid, sub_id, ids))
    f = w.recv_response()
    check(isinstance(f, Committed) and f.request_id == rid, f"COMMIT {ids} answered {f!r}", "NMQ-4.7-1")
    assert isinstance(f, Committed)
    return f.position


@case("session.subscriptions", "three subscriptions on one connection (two on one topic, one on another) keep "
      "their own sub_id, position, credit and committed position; UNSUBSCRIBE or SEEK of one leaves the others",
      layer="wire", rules=("NMQ-4.4-1", "NMQ-4.6-1", "NMQ-4.6-2", "NMQ-4.6-3", "NMQ-SEM-4-1", "NMQ-SEM-5-3",
                           "NMQ-4.5-2", "NMQ-4.8-4", "NMQ-4.7-4"))
def subscriptions(ctx: Context) -> None:
    a, b = ctx.topic("ma"), ctx.topic("mb")
    with ctx.client() as w:
        publish(w, a, [f"a{i}".encode() for i in range(1, 11)])
        publish(w, b, [f"b{i}".encode() for i in range(1, 6)])
        with ctx.step("NMQ-4.4-1"):
            s1 = subscribe(w, a, credit=3)
            s2 = subscribe(w, a, Start.ID, 6, credit=2)
            s3 = subscribe(w, b, credit=100)
            check(len({s1.sub_id, s2.sub_id, s3.sub_id}) == 3, f"sub_ids {s1.sub_id}, {s2.sub_id}, {s3.sub_id} repeat")
            check(s1.topic_id == s2.topic_id != s3.topic_id, "topic ids of two topics are equal, or of one topic differ")
        with ctx.step("NMQ-4.6-2", "NMQ-4.6-3", "NMQ-SEM-4-1"):
            got1 = [(r.id, r.payload) for r in collect_all(w, s1.sub_id, 3)]
            got2 = [(r.id, r.payload) for r in collect_all(w, s2.sub_id, 2)]
            got3 = [(r.id, r.payload) for r in collect_all(w, s3.sub_id, 5)]
            check(got1 == [(i, f"a{i}".encode()) for i in (1, 2, 3)], f"first subscription got {got1}")
            check(got2 == [(i, f"a{i}".encode()) for i in (6, 7)], f"second subscription got {got2}")
            check(got3 == [(i, f"b{i}".encode()) for i in range(1, 6)], f"third subscription got {got3}")
            quiet(w, 0.3, "a subscription was delivered beyond its own credit")
        with ctx.step("NMQ-SEM-5-3", "NMQ-4.7-4"):
            p1 = _commit(w, s1.sub_id, (1, 2))
            p2 = _commit(w, s2.sub_id, (6,))
            check((p1, p2) == (3, 7), f"committed positions {p1}, {p2}: commits of one subscription leaked into "
                  "the other (expected 3 and 7)")
            w.send(Commit(w.next_id(), s2.sub_id, (2,)))
            expect_error(w.recv_response(), ErrorCode.INVALID_ARGUMENT, "NMQ-4.7-1")
        with ctx.step("NMQ-4.8-4"):
            w.send(Seek(w.next_id(), s1.sub_id, Start.ID, 9))
            f = w.recv_response()
            check(isinstance(f, SeekOk) and f.next_id == 9, f"SEEK answered {f!r}")
            w.send(Credit(0, s2.sub_id, 1))
            got2 = [r.id for r in collect_all(w, s2.sub_id, 1)]
            check(got2 == [8], f"a SEEK of another subscription moved this one: got {got2}, expected [8]")
            w.send(Credit(0, s1.sub_id, 1))
            got1 = [r.id for r in collect_all(w, s1.sub_id, 1)]
            check(got1 == [9], f"after SEEK to 9 and CREDIT 1: got {got1}")
        with ctx.step("NMQ-4.5-2", "NMQ-SEM-4-1"):
            w.send(Credit(0, s2.sub_id, 10))
            got2 = [r.id for r in collect_all(w, s2.sub_id, 2)]
            check(got2 == [9, 10], f"after CREDIT 10 the second subscription got {got2}")
            w.send(Unsubscribe(w.next_id(), s1.sub_id))
            check(isinstance(w.recv_response(), Unsubscribed), "UNSUBSCRIBE answered otherwise")
            # The second subscription of the topic has credit left: a record published now must
            # reach it with no other request to wake it (the first one's leaving must not stop it).
            publish(w, a, [b"a11"])
            got2 = [r.id for r in collect_all(w, s2.sub_id, 1)]
            check(got2 == [11], f"after another subscription of the topic left, this one got {got2} of a record "
                  "published later (it still had credit)")
            quiet(w, 0.3, "after UNSUBSCRIBED the subscription still delivered")
        with ctx.step("NMQ-4.4-1"):
            s4 = subscribe(w, a)
            check(s4.sub_id not in (s1.sub_id, s2.sub_id, s3.sub_id), f"sub_id {s4.sub_id} reused on the connection")


@case("session.processing-order", "a pipeline of publishes (durable, written, none) and reads is processed in "
      "the order sent: ids follow the sending order and each METADATA or SUBSCRIBE sees every PUBLISH before it",
      layer="wire", rules=("NMQ-3.3-2", "NMQ-SEM-2-3", "NMQ-3.3-1", "NMQ-4.4-5", "NMQ-4.9-2"))
def processing_order(ctx: Context) -> None:
    t = ctx.topic("porder")
    frames = []
    expect_next = []
    n = 1
    rid = 0
    for i in range(12):
        rid += 1
        ack = (Ack.DURABLE, Ack.WRITTEN, Ack.NONE)[i % 3]
        frames.append(Publish(rid, t, ack, RecordBatch.from_payloads([f"{i}:{k}".encode() for k in range(i % 4 + 1)])))
        n += i % 4 + 1
        if i % 4 == 3:
            rid += 1
            frames.append(Metadata(rid, t))
            expect_next.append(n)
    rid += 1
    frames.append(Subscribe(rid, t, Start.EARLIEST, 0, 1 << 20, ""))
    with ctx.client() as w:
        w.send(*frames)
        answered = [f for f in frames if not (isinstance(f, Publish) and f.ack == Ack.NONE)]
        got = responses(w, len(answered))
        with ctx.step("NMQ-3.3-2"):
            check([f.request_id for f in got] == [f.request_id for f in answered],
                  f"answers in order {[f.request_id for f in got]}")
        with ctx.step("NMQ-SEM-2-3", "NMQ-3.3-2"):
            firsts = [f.first_id for f in got if isinstance(f, PublishAck)]
            check(firsts == sorted(firsts) and len(set(firsts)) == len(firsts),
                  f"publishes sent in order got first ids {firsts}")
        with ctx.step("NMQ-3.3-2", "NMQ-4.9-2"):
            nexts = [f.topics[0].next_id for f in got if isinstance(f, MetadataOk)]
            check(nexts == expect_next, f"METADATA inside the pipeline saw next ids {nexts}, expected {expect_next}")
        with ctx.step("NMQ-4.4-5", "NMQ-3.3-2"):
            s = got[-1]
            check(isinstance(s, Subscribed) and s.end_id == n, f"SUBSCRIBE at the end of the pipeline: {s!r}, end {n}")
            assert isinstance(s, Subscribed)
            recs = collect_all(w, s.sub_id, n - 1)
            want = [f"{i}:{k}".encode() for i in range(12) for k in range(i % 4 + 1)]
            check([r.payload for r in recs] == want, "records not stored in the order their PUBLISHes were sent",
                  "NMQ-SEM-2-3")


@case("session.answers-first", "behind a durable PUBLISH still waiting for its sync, a SUBSCRIBE and a SEEK "
      "on a topic with records: no DELIVER of the subscription comes before its SUBSCRIBED, none of the new "
      "position before SEEK_OK, and the first after each starts at the id it names", layer="wire",
      rules=("NMQ-4.4-5", "NMQ-4.8-4", "NMQ-3.3-2"))
def answers_first(ctx: Context) -> None:
    slow, t = ctx.topic("af-durable"), ctx.topic("af")
    with ctx.client() as w:
        publish(w, t, [f"r{i}".encode() for i in range(1, 21)])
        s0 = subscribe(w, t, Start.LATEST, credit=0)
        for _ in range(3):
            base = w.next_id()
            # ~4 MB (or as near as the target's limits allow): its sync takes a while
            rec = min(60_000, ctx.max_payload)
            big = RecordBatch.from_payloads([bytes(rec)] * max(1, min(ctx.max_batch, (4 << 20) // rec)))
            w.send(Publish(base, slow, Ack.DURABLE, big), Subscribe(base + 1, t, Start.ID, 5, 100, ""),
                   Seek(base + 2, s0.sub_id, Start.ID, 12), Credit(0, s0.sub_id, 3))
            seen: list[object] = []
            sub_id = 0
            while len([f for f in seen if not isinstance(f, Deliver)]) < 3:
                f = w.recv(10.0)
                seen.append(f)
                if isinstance(f, Subscribed):
                    sub_id = f.sub_id
            with ctx.step("NMQ-3.3-2"):
                kinds = [type(f).__name__ for f in seen if not isinstance(f, Deliver)]
                check(kinds == ["PublishAck", "Subscribed", "SeekOk"], f"answers {kinds}")
            with ctx.step("NMQ-4.4-5"):
                i = next(k for k, f in enumerate(seen) if isinstance(f, Subscribed))
                early = [f for f in seen[:i] if isinstance(f, Deliver) and f.sub_id == sub_id]
                check(not early, "a DELIVER of the new subscription came before its SUBSCRIBED")
            with ctx.step("NMQ-4.8-4"):
                j = next(k for k, f in enumerate(seen) if isinstance(f, SeekOk))
                pre = [r.id for f in seen[:j] if isinstance(f, Deliver) and f.sub_id == s0.sub_id for r in f.records]
                check(not pre, f"records {pre} of the sought position came before SEEK_OK")
            with ctx.step("NMQ-4.4-5", "NMQ-4.8-4"):
                w.deliveries = [f for f in seen if isinstance(f, Deliver)]
                got = [r.id for r in collect_all(w, sub_id, 16)]
                check(got[:1] == [5] and got == list(range(5, 21)), f"after SUBSCRIBED (start id 5) delivered {got}")
                got = [r.id for r in collect_all(w, s0.sub_id, 3)]
                check(got == [12, 13, 14], f"after SEEK_OK (id 12) delivered {got}")
            w.send(Unsubscribe(w.next_id(), sub_id), Seek(w.next_id() + 1, s0.sub_id, Start.LATEST, 0))
            responses(w, 2)


@case("session.topics", "topics are independent: interleaved publishes to three topics give each its own ids "
      "from 1; each has its own topic_id, the same in SUBSCRIBED, METADATA and every record", layer="wire",
      rules=("NMQ-SEM-1-1", "NMQ-SEM-1-2", "NMQ-SEM-2-1", "NMQ-4.2-4", "NMQ-4.9-1"))
def topics_independent(ctx: Context) -> None:
    names = [ctx.topic(f"ind{k}") for k in range(3)]
    with ctx.client() as w:
        acks: dict[str, list[int]] = {n: [] for n in names}
        for i in range(9):
            n = names[(i * 7) % 3]
            acks[n].append(publish(w, n, [f"{n}:{i}".encode()]).first_id)
        with ctx.step("NMQ-SEM-2-1", "NMQ-SEM-1-1"):
            for n, ids in acks.items():
                check(ids == list(range(1, len(ids) + 1)), f"topic {n} got ids {ids}: ids are not per topic")
        with ctx.step("NMQ-SEM-1-2", "NMQ-4.2-4", "NMQ-4.9-1"):
            w.send(Metadata(w.next_id(), ""))
            md = w.recv_response()
            check(isinstance(md, MetadataOk), f"METADATA answered {md!r}")
            assert isinstance(md, MetadataOk)
            listed = {x.name: x for x in md.topics}
            ids = set()
            for n in names:
                check(n in listed, f"METADATA of all topics does not list {n}")
                s = subscribe(w, n)
                recs = collect_all(w, s.sub_id, len(acks[n]))
                check(s.topic_id == listed[n].topic_id, f"{n}: SUBSCRIBED topic_id {s.topic_id}, METADATA "
                      f"{listed[n].topic_id}")
                check(all(r.topic_id == s.topic_id for r in recs), f"{n}: a record carries another topic_id")
                ids.add(s.topic_id)
            check(len(ids) == 3, f"three topics share topic ids {ids}")


@case("session.subscribe-creates", "SUBSCRIBE to a topic that does not exist creates it empty: METADATA lists it "
      "with first_id = next_id = 1, and the subscription then delivers the first record published", layer="wire",
      rules=("NMQ-4.4-1", "NMQ-SEM-1-2", "NMQ-4.9-2", "NMQ-4.4-5", "NMQ-SEM-4-1"))
def subscribe_creates(ctx: Context) -> None:
    t = ctx.topic("screate")
    with ctx.client() as w, ctx.client() as p:
        with ctx.step("NMQ-4.4-1", "NMQ-4.4-5"):
            s = subscribe(w, t)
            check((s.next_id, s.end_id) == (1, 1), f"SUBSCRIBED on a new topic: {s!r}")
        with ctx.step("NMQ-SEM-1-2", "NMQ-4.9-2"):
            info = topic_info(p, t)
            check((info.first_id, info.next_id, info.topic_id) == (1, 1, s.topic_id),
                  f"the new empty topic is listed as {info!r}")
        with ctx.step("NMQ-SEM-4-1"):
            publish(p, t, [b"first"])
            recs = collect_all(w, s.sub_id, 1)
            check([(r.id, r.payload) for r in recs] == [(1, b"first")], f"delivered {recs!r}")


@case("session.pings-during-backlog", "a subscriber that reads a large backlog slowly while it pipelines PINGs gets "
      "an intact stream: every frame whole, every PONG with its token in order, every record once, in id order and "
      "byte-exact", layer="wire", rules=("NMQ-3.1-1", "NMQ-3.3-2", "NMQ-4.10-1", "NMQ-SEM-4-1"))
def pings_during_backlog(ctx: Context) -> None:
    t = ctx.topic("pingbacklog")
    size = min(4096, ctx.max_payload)
    per = max(1, min(64, ctx.max_batch))
    n_batches = (2 if ctx.quick else 4) * ((4 << 20) // (size * per) or 1)  # 8-16 MiB of backlog
    payloads = [struct.pack("<I", i) * (size // 4) for i in range(n_batches * per)]
    with ctx.client() as w:
        for b in range(n_batches):
            publish(w, t, payloads[b * per : (b + 1) * per])
    # a small receive buffer: the target's output backs up while the client reads slowly, so its
    # answers to the PINGs meet deliveries still waiting to go out
    with WireClient(ctx.target.host, ctx.target.port, rcvbuf=16384, ssl_context=ctx.target.ssl) as s:
        s.hello()
        sub = s.subscribe(t, Start.EARLIEST, 0, 0xFFFF_FFFF)
        check(isinstance(sub, Subscribed), f"SUBSCRIBE answered {sub!r}", "NMQ-SEM-4-1")
        assert isinstance(sub, Subscribed)
        sent: list[int] = []
        pongs: list[int] = []
        got: list[tuple[int, bytes]] = []
        token = 0x9000
        deadline = time.monotonic() + 60
        with ctx.step("NMQ-3.1-1", "NMQ-3.3-2", "NMQ-4.10-1"):
            while (len(got) < len(payloads) or len(pongs) < len(sent)) and time.monotonic() < deadline:
                if len(got) < len(payloads) and len(sent) - len(pongs) < 64:
                    s.send(*(Ping(s.next_id(), token + k) for k in range(4)))  # pipelined, unanswered yet
                    sent.extend(token + k for k in range(4))
                    token += 4
                f = s.recv(10.0)
                if isinstance(f, Deliver):
                    check(f.sub_id == sub.sub_id, f"a DELIVER for sub_id {f.sub_id}, not {sub.sub_id}", "NMQ-SEM-4-1")
                    got.extend((r.id, bytes(r.payload)) for r in f.records)
                else:
                    check(isinstance(f, Pong), f"a {f!r} in the stream, where only DELIVERs and PONGs can be")
                    assert isinstance(f, Pong)
                    pongs.append(f.token)
                    check(pongs == sent[: len(pongs)], f"PONG tokens {pongs[-5:]} (the last of {len(pongs)}) do not "
                          f"follow the PINGs' {sent[max(0, len(pongs) - 5) : len(pongs)]}")
                if len(got) % 512 == 0:
                    time.sleep(0.001)  # a slow reader
        with ctx.step("NMQ-SEM-4-1"):
            check([i for i, _ in got] == list(range(1, len(payloads) + 1)),
                  f"delivered {len(got)} records of {len(payloads)}, not ids 1..{len(payloads)} in order")
            bad = next((i for i, p in got if p != payloads[i - 1]), None)
            check(bad is None, f"record {bad}'s payload is not the one published")
    ctx.note(f"{len(payloads)} records of {size} B read slowly with {len(sent)} PINGs pipelined among them")


@case("session.pipelined-topics", "PUBLISHes to three topics that exist, sent in one write, each reach that "
      "topic's caught-up subscriber at once: every topic appended to is woken, not only the first",
      layer="wire", rules=("NMQ-SEM-5-1", "NMQ-4.6-5", "NMQ-SEM-4-1"))
def pipelined_topics(ctx: Context) -> None:
    # One read of the target takes the three frames together: the C data plane appends them in one
    # call and reports which topics it appended to, and only those topics' subscribers are woken.
    topics = [ctx.topic("pipetopic") for _ in range(3)]
    with ctx.client() as w, ctx.client() as r:
        for t in topics:
            publish(w, t, [b"before"])
        subs = {subscribe(r, t, Start.EARLIEST).sub_id: t for t in topics}
        seen = {sid: [rec.id for rec in collect_all(r, sid, 1)] for sid in subs}
        check(all(ids == [1] for ids in seen.values()), f"the first records were delivered as {seen}", "NMQ-SEM-4-2")
        batch = RecordBatch.from_payloads([b"pipelined"])
        rids = [w.next_id() for _ in topics]
        w.send_raw(b"".join(encode(Publish(rid, t, Ack.WRITTEN, batch)) for rid, t in zip(rids, topics, strict=True)))
        acks = [w.recv_response() for _ in topics]
        check(all(isinstance(a, PublishAck) and a.first_id == 2 for a in acks), f"the PUBLISHes answered {acks!r}",
              "NMQ-4.2-5")
        got: dict[int, list[int]] = {sid: [] for sid in subs}
        deadline = time.monotonic() + 5.0
        with ctx.step("NMQ-SEM-5-1", "NMQ-4.6-5"):
            while any(not ids for ids in got.values()) and time.monotonic() < deadline:
                try:
                    f = r.recv(max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    break
                check(isinstance(f, Deliver) and f.sub_id in subs, f"a {f!r} where only DELIVERs can be")
                assert isinstance(f, Deliver)
                got[f.sub_id].extend(rec.id for rec in f.records)
            late = [subs[sid] for sid, ids in got.items() if not ids]
            check(not late, f"no DELIVER within 5 s on {late} (of {topics}), each with credit, after PUBLISHes to "
                  "all three in one write were acknowledged")
        with ctx.step("NMQ-SEM-4-1"):
            check(all(ids == [2] for ids in got.values()), f"delivered after the pipelined PUBLISHes: {got}")


@contextlib.contextmanager
def _own_allowance(ctx: Context) -> Iterator[None]:
    """For a case that creates more topics than the declared creation burst: on a target the kit
    launched, a fresh start before and after (a full allowance for it, and again for the cases that
    follow); on another, the wait after it until the declared allowance is full again."""
    if ctx.target.can_crash:
        ctx.target.fresh_start()
    try:
        yield
    finally:
        rate, burst = ctx.target.spec.topic_create_rate, ctx.target.spec.topic_create_burst
        if ctx.target.can_crash:
            ctx.target.fresh_start()
        elif rate > 0:
            time.sleep(burst / rate + 0.1)


@case("session.many-topics-one-write", "PUBLISHes to 70 topics that exist, sent in one write, each reach the "
      "caught-up subscribers of its topic at once, the last topics' as well as the first",
      layer="wire", restarts=True, rules=("NMQ-SEM-5-1", "NMQ-4.6-5", "NMQ-SEM-4-1"))
def many_topics_one_write(ctx: Context) -> None:
    # session.pipelined-topics with more topics than one call of the C data plane reports as appended
    # to (it then stops, and is called again for the rest): the topics past that point must be woken
    # too. It creates 70 topics at the target's declared creation rate, so it runs alone, on a target
    # started afresh, and leaves a full allowance to the cases after it (_own_allowance).
    n, watched = 70, 10
    topics = [ctx.topic("manytopics") for _ in range(n)]
    rate = ctx.target.spec.topic_create_rate
    with _own_allowance(ctx), ctx.client() as w, ctx.client() as r:
        deadline = time.monotonic() + 60
        for t in topics:  # created one by one, waiting out RESOURCE_LIMIT (the creation rate, NMQ-6.2-5)
            while True:
                w.send(Publish(w.next_id(), t, Ack.WRITTEN, RecordBatch.from_payloads([b"before"])))
                f = w.recv_response()
                if isinstance(f, PublishAck):
                    break
                check(is_error(f, ErrorCode.RESOURCE_LIMIT) and time.monotonic() < deadline,
                      f"creating topic {t} answered {f!r}", "NMQ-4.2-1")
                time.sleep(1.0 / rate + 0.05 if rate > 0 else 0.2)
        last = topics[-watched:]
        subs = {subscribe(r, t, Start.EARLIEST).sub_id: t for t in last}
        seen = {sid: [rec.id for rec in collect_all(r, sid, 1)] for sid in subs}
        check(all(ids == [1] for ids in seen.values()), f"the first records were delivered as {seen}", "NMQ-SEM-4-2")
        batch = RecordBatch.from_payloads([b"one write"])
        rids = [w.next_id() for _ in topics]
        w.send_raw(b"".join(encode(Publish(rid, t, Ack.WRITTEN, batch)) for rid, t in zip(rids, topics, strict=True)))
        acks = [w.recv_response() for _ in topics]
        check(all(isinstance(a, PublishAck) and a.first_id == 2 for a in acks),
              f"the PUBLISHes answered {[a for a in acks if not isinstance(a, PublishAck)][:3]!r} ...", "NMQ-4.2-5")
        got: dict[int, list[int]] = {sid: [] for sid in subs}
        until = time.monotonic() + 5.0
        with ctx.step("NMQ-SEM-5-1", "NMQ-4.6-5"):
            while any(not ids for ids in got.values()) and time.monotonic() < until:
                try:
                    f = r.recv(max(0.01, until - time.monotonic()))
                except TimeoutError:
                    break
                check(isinstance(f, Deliver) and f.sub_id in subs, f"a {f!r} where only DELIVERs can be")
                assert isinstance(f, Deliver)
                got[f.sub_id].extend(rec.id for rec in f.records)
            late = [subs[sid] for sid, ids in got.items() if not ids]
            check(not late, f"no DELIVER within 5 s on {len(late)} of the last {watched} topics ({late[:3]} ...), each "
                  f"with credit, after PUBLISHes to all {n} in one write were acknowledged")
        with ctx.step("NMQ-SEM-4-1"):
            check(all(ids == [2] for ids in got.values()), f"delivered after the one write: {got}")


@case("session.durable-topics", "durable PUBLISHes to eight topics that exist, sent in one write, are each "
      "acknowledged, in request order, once stored: the syncs of several topics asked for at once all finish",
      layer="wire", rules=("NMQ-3.2-3", "NMQ-3.3-2", "NMQ-4.2-5", "NMQ-SEM-3-1"))
def durable_topics(ctx: Context) -> None:
    # Durable acks wait for syncs that the target runs in sync threads, one request per topic: eight
    # topics asked for at once queue several requests and finish several syncs together, which a
    # slip in the threads' queues (one request or one result lost) leaves unanswered for good.
    topics = [ctx.topic("durtopics") for _ in range(8)]
    with ctx.client() as w:
        for t in topics:
            publish(w, t, [b"before"])
        batch = RecordBatch.from_payloads([b"durable"])
        for rnd in range(3):
            rids = [w.next_id() for _ in topics]
            w.send_raw(b"".join(encode(Publish(rid, t, Ack.DURABLE, batch)) for rid, t in zip(rids, topics, strict=True)))
            with ctx.step("NMQ-3.2-3", "NMQ-3.3-2", "NMQ-4.2-5"):
                for k, rid in enumerate(rids):
                    try:
                        f = w.recv_response(10.0)
                    except TimeoutError:
                        check(False, f"round {rnd}: {k} of {len(rids)} durable PUBLISHes to {len(topics)} topics "
                              "answered; no answer to the others within 10 s", "NMQ-3.2-3")
                    check(isinstance(f, PublishAck) and f.request_id == rid and f.first_id == 2 + rnd,
                          f"round {rnd}: durable PUBLISH {rid} to {topics[k]} answered {f!r}")


@case("session.pings-unread", "a client that pipelines 200,000 PINGs before it reads anything (its socket fills "
      "with PONGs meanwhile) then gets every PONG, each with its token, in order", layer="wire",
      rules=("NMQ-3.2-3", "NMQ-3.3-2", "NMQ-4.10-1"))
def pings_unread(ctx: Context) -> None:
    # The C data plane writes a call's answers to the socket itself; when the socket takes only part
    # of them the rest must go to the transport. A client that does not read makes that happen once
    # the sockets' buffers hold no more (4.8 MB of PONGs is more than they do); it starts reading
    # before the target's write timeout could drop it. Reading 4.8 MB of PONGs can take longer than
    # an idle timeout once the target has read every PING: a subscription (to an empty topic, so
    # nothing is delivered) keeps the connection from counting as idle.
    n = 200_000
    with WireClient(ctx.target.host, ctx.target.port, rcvbuf=16384, ssl_context=ctx.target.ssl) as w:
        w.hello()
        subscribe(w, ctx.topic("pingsunread"), Start.EARLIEST, 0, 1)
        data = b"".join(encode(Ping(0x5000 + k, k)) for k in range(n))
        sender = threading.Thread(target=w.sock.sendall, args=(data,), daemon=True)
        sender.start()
        time.sleep(0.3)  # the PONGs back up in the target's socket
        got: list[int] = []
        with ctx.step("NMQ-3.2-3", "NMQ-3.3-2", "NMQ-4.10-1"):
            while len(got) < n:
                try:
                    f = w.recv(5.0)
                except TimeoutError:
                    break
                check(isinstance(f, Pong) and f.request_id == 0x5000 + len(got) and f.token == len(got),
                      f"answer {len(got)} of {n} PINGs is {f!r}, not PONG {0x5000 + len(got)} with token {len(got)}")
                got.append(f.request_id)
            check(len(got) == n, f"{len(got)} of {n} pipelined PINGs answered; none of the others within 5 s")
        sender.join(5)
        alive(w)


@case("session.unsubscribe", "UNSUBSCRIBE with a backlog in flight: no DELIVER after UNSUBSCRIBED; the sub_id is "
      "then unknown to CREDIT, COMMIT, SEEK and UNSUBSCRIBE", layer="wire",
      rules=("NMQ-4.5-1", "NMQ-4.5-2", "NMQ-4.6-1", "NMQ-4.8-2"))
def unsubscribe(ctx: Context) -> None:
    t = ctx.topic("unsub2")
    with ctx.client() as w:
        for _ in range(4):
            publish(w, t, [b"u" * 200] * ctx.max_batch)
        s = w.subscribe(t, Start.EARLIEST, 0, 1 << 30)
        check(isinstance(s, Subscribed), f"SUBSCRIBE answered {s!r}", "NMQ-4.4-1")
        assert isinstance(s, Subscribed)
        with ctx.step("NMQ-4.5-2"):
            rid = w.next_id()
            w.send(Unsubscribe(rid, s.sub_id))
            while True:
                f = w.recv(5.0)
                if isinstance(f, Unsubscribed):
                    check(f.request_id == rid, f"UNSUBSCRIBED for request {f.request_id}")
                    break
                check(isinstance(f, Deliver), f"unexpected {f!r} before UNSUBSCRIBED")
            publish(w, t, [b"later"])
            quiet(w, 0.4, "a DELIVER after UNSUBSCRIBED")
        with ctx.step("NMQ-4.5-1", "NMQ-4.6-1", "NMQ-4.8-2"):
            base = w.next_id()
            w.send(Credit(base, s.sub_id, 5), Commit(base + 1, s.sub_id, (1,)), Seek(base + 2, s.sub_id, Start.EARLIEST, 0),
                   Unsubscribe(base + 3, s.sub_id))
            for k, f in enumerate(responses(w, 4)):
                expect_error(f, ErrorCode.UNKNOWN_SUBSCRIPTION, request_id=base + k)
            quiet(w, 0.2, "a request on an unknown subscription delivered")


@case("session.commit", "COMMIT: positions follow out-of-order and repeated commits exactly; ids below the start, "
      "not yet delivered, or delivered before the last SEEK are INVALID_ARGUMENT; SEEK resets the position",
      layer="wire", rules=("NMQ-4.7-1", "NMQ-4.7-2", "NMQ-4.7-4", "NMQ-SEM-5-3", "NMQ-4.8-1"))
def commit(ctx: Context) -> None:
    t = ctx.topic("commit2")
    with ctx.client() as w:
        publish(w, t, [b"c"] * 12)
        s = subscribe(w, t, Start.ID, 3, credit=6)  # delivers 3..8
        check(len(collect_all(w, s.sub_id, 6)) == 6, "six records", "NMQ-4.4-1")
        with ctx.step("NMQ-4.7-4", "NMQ-SEM-5-3"):
            seq = [((5,), 3), ((3,), 4), ((3,), 4), ((4,), 6), ((8, 7), 6), ((6,), 9)]
            for ids, want in seq:
                got = _commit(w, s.sub_id, ids)
                check(got == want, f"COMMIT {ids} gave position {got}, expected {want}")
        with ctx.step("NMQ-4.7-1"):
            for bad in ((2,), (9,), (1,), (3, 9)):
                rid = w.next_id()
                w.send(Commit(rid, s.sub_id, bad))
                expect_error(w.recv_response(), ErrorCode.INVALID_ARGUMENT, request_id=rid)
        with ctx.step("NMQ-4.7-2"):
            rid = w.next_id()
            w.send(Commit(rid, s.sub_id, (0,)))
            expect_error(w.recv_response(), ErrorCode.INVALID_ARGUMENT, request_id=rid)
        with ctx.step("NMQ-4.8-1", "NMQ-4.7-4", "NMQ-4.7-1"):
            w.send(Seek(w.next_id(), s.sub_id, Start.ID, 5))
            check(isinstance(w.recv_response(), SeekOk), "SEEK")
            rid = w.next_id()
            w.send(Commit(rid, s.sub_id, (5,)))
            expect_error(w.recv_response(), ErrorCode.INVALID_ARGUMENT, request_id=rid)  # not delivered since SEEK
            w.send(Credit(0, s.sub_id, 2))
            check([r.id for r in collect_all(w, s.sub_id, 2)] == [5, 6], "after SEEK to 5")
            got = _commit(w, s.sub_id, (5,))
            check(got == 6, f"after SEEK to 5 and COMMIT 5 the position is {got}, expected 6")


@case("session.close-anytime", "a client may close at any moment (mid-frame, right after a durable PUBLISH, with "
      "a backlog being delivered): the target keeps serving, and a publish whose answer never came is either "
      "absent or whole at its id", layer="wire", rules=("NMQ-2-2", "NMQ-8-4", "NMQ-SEM-3-3"))
def close_anytime(ctx: Context) -> None:
    t = ctx.topic("close")
    payload = ctx.rng.randbytes(3000)
    with ctx.step("NMQ-2-2", "NMQ-8-4"):
        w = ctx.client()
        w.send_raw(encode(Publish(1, t, Ack.DURABLE, RecordBatch.from_payloads([payload]))))
        w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.close()  # RST right behind the PUBLISH
        w = ctx.client()
        w.send_raw(encode(Ping(1, 1))[:9])
        w.close()
        with ctx.client() as w:
            publish(w, ctx.topic("close-backlog"), [b"z" * 1000] * ctx.max_batch)
        w = ctx.client()
        w.subscribe(ctx.topic("close-backlog"), Start.EARLIEST, 0, 1 << 30)
        w.close()
        time.sleep(0.1)
    with ctx.step("NMQ-SEM-3-3"), ctx.client() as w:
        alive(w, "NMQ-8-4")
        rid = w.next_id()
        w.send(Metadata(rid, t))
        md = w.recv_response()
        if is_error(md, ErrorCode.UNKNOWN_TOPIC):
            return
        check(isinstance(md, MetadataOk), f"METADATA answered {md!r}")
        assert isinstance(md, MetadataOk)
        n = md.topics[0].next_id - 1
        check(n in (0, 1), f"one PUBLISH of one record left {n} records")
        if n:
            s = subscribe(w, t)
            recs = collect_all(w, s.sub_id, 1)
            check(len(recs) == 1 and recs[0].id == 1 and recs[0].payload == payload,
                  "the unacknowledged record is present but not whole")


@case("session.capabilities", "HELLO_OK announces no unknown capability bit, TLS exactly when the connection is "
      "inside TLS, and the same capabilities and limits on every connection", layer="wire",
      rules=("NMQ-7-3", "NMQ-7-8", "NMQ-4.1-4"))
def capabilities(ctx: Context) -> None:
    with ctx.target.raw_client() as w:
        h = w.hello()
    with ctx.step("NMQ-7-3"):
        check(h.capabilities >> 6 == 0, f"capabilities 0x{h.capabilities:x} set bits 6..31, unknown in v1")
    with ctx.step("NMQ-7-8"):
        tls = ctx.target.ssl is not None
        check(bool(h.capabilities & Capability.TLS) == tls,
              f"TLS {'not ' if tls else ''}announced on a connection that is {'' if tls else 'not '}inside TLS")
    with ctx.step("NMQ-4.1-4"):
        for _ in range(3):
            with ctx.target.raw_client() as w:
                h2 = w.hello()
            check((h2.capabilities, h2.max_frame, h2.max_payload, h2.max_batch) ==
                  (h.capabilities, h.max_frame, h.max_payload, h.max_batch),
                  f"connections announce different capabilities or limits: {h!r} vs {h2!r}")


@case("session.tls-plaintext", "a TLS target given a plaintext HELLO serves nothing, says TLS is expected "
      "(ERROR BAD_STATE) and closes", layer="wire", rules=("NMQ-2-4",))
def tls_plaintext(ctx: Context) -> None:
    if ctx.target.ssl is None:
        raise Skipped("the target is not spoken to over TLS")
    with ctx.step("NMQ-2-4"):
        w = WireClient(ctx.target.host, ctx.target.port, timeout=5)
        try:
            w.send(Hello(1, PROTOCOL_VERSION, "plaintext", b""))
            frames = closed(w)
        finally:
            w.close()
        check(not any(isinstance(f, HelloOk) for f in frames), "a plaintext HELLO was answered HELLO_OK")
        check(any(is_error(f, ErrorCode.BAD_STATE) and f.request_id == 0 for f in frames),
              f"a plaintext client got {frames!r}, not ERROR BAD_STATE saying TLS is expected")


@case("session.auth", "with AUTH announced, a token the server did not issue is AUTH_FAILED and closes",
      layer="wire", rules=("NMQ-4.1-3", "NMQ-7-9"), needs=Capability.AUTH)
def auth(ctx: Context) -> None:
    for token in (b"", bytes(ctx.rng.getrandbits(8) for _ in range(32))):
        with ctx.step("NMQ-4.1-3", "NMQ-7-9"), ctx.target.raw_client() as w:
            w.send(Hello(1, PROTOCOL_VERSION, "intruder", token))
            frames = closed(w)
            check(any(is_error(f, ErrorCode.AUTH_FAILED) for f in frames) and
                  not any(isinstance(f, HelloOk) for f in frames),
                  f"a token of {len(token)} random bytes answered {frames!r}")


@case("session.lz4", "with COMPRESSION_LZ4 announced, LZ4 records of every size (mixed with plain records in one "
      "batch) are stored and delivered with flags, raw_size and compressed bytes unchanged; raw_size of "
      "max_payload is accepted and max_payload+1 is PAYLOAD_TOO_LARGE; without it they are NOT_SUPPORTED and "
      "nothing is appended", layer="wire", rules=("NMQ-5.3-1", "NMQ-5.3-2", "NMQ-7-4", "NMQ-7-1", "NMQ-SEM-3-4"))
def lz4(ctx: Context) -> None:
    import lz4.block

    t = ctx.topic("lz4b")
    m = ctx.max_payload
    raws = [r for r in (b"a", b"ab" * 50, ctx.rng.randbytes(300), b"z" * 4096) if len(r) <= m] + [bytes(m)]
    blocks = [lz4.block.compress(r, store_size=False) for r in raws]
    payloads, flags, sizes = [], [], []
    for r, b in zip(raws, blocks, strict=True):
        payloads += [b, r[:100]]
        flags += [1, 0]
        sizes += [len(r), 0]
    batch = RecordBatch.from_payloads(payloads, flags=flags, raw_sizes=sizes, max_payload=m)
    with ctx.client() as w:
        rid = w.next_id()
        w.send(Publish(rid, t, Ack.WRITTEN, batch))
        f = w.recv_response()
        if not ctx.has(Capability.COMPRESSION_LZ4):
            with ctx.step("NMQ-5.3-1", "NMQ-7-1"):
                expect_error(f, ErrorCode.NOT_SUPPORTED, request_id=rid)
            with ctx.step("NMQ-SEM-3-4", "NMQ-7-1"):
                w.send(Metadata(w.next_id(), t))
                md = w.recv_response()
                check(is_error(md, ErrorCode.UNKNOWN_TOPIC) or (isinstance(md, MetadataOk) and md.topics[0].next_id == 1),
                      f"a refused LZ4 batch was appended: {md!r}")
            raise Unimplemented("COMPRESSION_LZ4 not announced (NOT_SUPPORTED answered correctly)",
                                ("NMQ-5.3-1", "NMQ-7-1", "NMQ-SEM-3-4"))
        with ctx.step("NMQ-5.3-1", "NMQ-7-4"):
            check(isinstance(f, PublishAck) and f.count == len(payloads), f"an LZ4 batch answered {f!r}")
            s = subscribe(w, t)
            recs = collect_all(w, s.sub_id, len(payloads))
            check(len(recs) == len(payloads), f"{len(recs)} of {len(payloads)} records delivered")
            for r, p, fl, rs in zip(recs, payloads, flags, sizes, strict=True):
                check((r.flags, r.raw_size, r.payload) == (fl, rs, p),
                      f"record {r.id} delivered with flags {r.flags}, raw_size {r.raw_size} "
                      f"({'same' if r.payload == p else 'other'} bytes); published flags {fl}, raw_size {rs}")
        with ctx.step("NMQ-5.3-2"):
            over = RecordBatch.from_payloads([lz4.block.compress(bytes(m + 1), store_size=False)], flags=[1],
                                             raw_sizes=[m], max_payload=m + 1)
            data = bytearray(over.data)
            struct.pack_into("<I", data, 48, m + 1)
            rid = w.next_id()
            w.send_raw(raw_publish(rid, t.encode(), _restamp(data), 1))
            expect_error(w.recv_response(), ErrorCode.PAYLOAD_TOO_LARGE, request_id=rid)
            alive(w)


@case("session.create-in-pipeline", "requests pipelined behind the SUBSCRIBE and the PUBLISH that create topics are "
      "answered after them, in order, and see the new topics; two connections naming one new topic at once get the "
      "same topic", layer="wire", rules=("NMQ-3.3-2", "NMQ-SEM-1-2"))
def create_in_pipeline(ctx: Context) -> None:
    """A server may create a topic off its request path (the reference broker does, in threads):
    whatever it does, nothing behind the creating request overtakes it, and what follows sees the
    topic."""
    a, b = ctx.topic("cp-sub"), ctx.topic("cp-pub")
    with ctx.client() as w:
        ids = [w.next_id() for _ in range(5)]
        w.send(Subscribe(ids[0], a, Start.EARLIEST, 0, 10, ""),
               Publish(ids[1], a, Ack.WRITTEN, RecordBatch.from_payloads([b"one"])),
               Publish(ids[2], b, Ack.WRITTEN, RecordBatch.from_payloads([b"two"])),
               Metadata(ids[3], ""), Ping(ids[4], 77))
        got = [w.recv_response(10.0) for _ in range(5)]
        with ctx.step("NMQ-3.3-2"):
            kinds = [type(f).__name__ for f in got]
            check(kinds == ["Subscribed", "PublishAck", "PublishAck", "MetadataOk", "Pong"]
                  and [f.request_id for f in got] == ids,
                  f"a pipeline that creates two topics was answered {list(zip(kinds, (f.request_id for f in got), strict=True))}, "
                  f"expected SUBSCRIBED, PUBLISH_ACK, PUBLISH_ACK, METADATA_OK, PONG for {ids}")
        with ctx.step("NMQ-SEM-1-2"):
            md = got[3]
            assert isinstance(md, MetadataOk)
            listed = {t.name for t in md.topics}
            check(a in listed and b in listed, f"METADATA pipelined behind their creation does not list "
                  f"{sorted({a, b} - listed)}")
            check(all(isinstance(f, PublishAck) and f.first_id == 1 for f in got[1:3]),
                  f"the first records of the new topics got {[getattr(f, 'first_id', f) for f in got[1:3]]}")
    c = ctx.topic("cp-both")
    with ctx.client() as w1, ctx.client() as w2, ctx.step("NMQ-SEM-1-2"):
        w1.send(Subscribe(w1.next_id(), c, Start.EARLIEST, 0, 0, ""))
        w2.send(Subscribe(w2.next_id(), c, Start.EARLIEST, 0, 0, ""))
        s1, s2 = w1.recv_response(10.0), w2.recv_response(10.0)
        check(isinstance(s1, Subscribed) and isinstance(s2, Subscribed) and s1.topic_id == s2.topic_id,
              f"two connections subscribing to one new topic at once got {s1!r} and {s2!r}: not one topic")
        w1.send(Metadata(w1.next_id(), ""))
        md = w1.recv_response(10.0)
        check(isinstance(md, MetadataOk) and sum(t.name == c for t in md.topics) == 1,
              f"METADATA lists {c} {sum(t.name == c for t in getattr(md, 'topics', ()))} times")
