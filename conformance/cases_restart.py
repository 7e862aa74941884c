"""Layer (d), state that outlives a restart: every operation repeated on topics that existed before a
clean restart (SIGTERM) and before an unclean one (the kill command): ids, topic ids, timestamps,
stored bytes, start positions and seeks, and the ids and timestamps of what is published after.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from conformance.helpers import collect_all, publish, subscribe
from conformance.registry import Context, Skipped, case, check
from conformance.wire import WireClient
from nanomq.protocol import (
    Ack,
    Capability,
    Credit,
    Metadata,
    MetadataOk,
    Record,
    Seek,
    SeekOk,
    Start,
    Subscribed,
)

_RULES = ("NMQ-SEM-1-2", "NMQ-SEM-2-1", "NMQ-SEM-2-2", "NMQ-SEM-3-2", "NMQ-SEM-3-3", "NMQ-4.9-1", "NMQ-4.9-2",
          "NMQ-4.4-2", "NMQ-4.4-4", "NMQ-4.8-1", "NMQ-4.8-3", "NMQ-4.6-3", "NMQ-5.3-1", "NMQ-4.4-5")


@dataclass
class _Snapshot:
    topics: dict[str, tuple[int, int, int]]
    """name -> (topic_id, first_id, next_id) as METADATA listed it."""
    records: dict[str, list[Record]]


def _listing(w: WireClient) -> dict[str, tuple[int, int, int]]:
    w.send(Metadata(w.next_id(), ""))
    md = w.recv_response()
    check(isinstance(md, MetadataOk), f"METADATA answered {md!r}", "NMQ-4.9-1")
    assert isinstance(md, MetadataOk)
    return {x.name: (x.topic_id, x.first_id, x.next_id) for x in md.topics}


def _read(w: WireClient, topic: str, n: int) -> list[Record]:
    s = subscribe(w, topic)
    return collect_all(w, s.sub_id, n, idle=2.0) if n else []


def _build(ctx: Context) -> _Snapshot:
    names = {k: ctx.topic(f"rs{k}") for k in ("a", "b", "c")}
    with ctx.client() as w:
        a = names["a"]
        publish(w, a, [b"a1"])
        time.sleep(0.005)
        publish(w, a, [f"a{i}".encode() for i in range(2, 12)], Ack.DURABLE)
        time.sleep(0.005)
        publish(w, a, [ctx.rng.randbytes(ctx.rng.randint(0, min(3000, ctx.max_payload))) for _ in range(40)])
        if ctx.has(Capability.COMPRESSION_LZ4):
            import lz4.block

            raw = b"compressible " * 40
            publish(w, a, [lz4.block.compress(raw, store_size=False)], flags=[1], raw_sizes=[len(raw)])
        subscribe(w, names["b"])  # created empty by SUBSCRIBE
        publish(w, names["c"], [b"only"], Ack.DURABLE)
        listed = _listing(w)
        for n in names.values():
            check(n in listed, f"METADATA does not list {n}", "NMQ-SEM-1-2")
        records = {n: _read(w, n, listed[n][2] - listed[n][1]) for n in names.values()}
    return _Snapshot({n: listed[n] for n in names.values()}, records)


def _verify(ctx: Context, snap: _Snapshot, how: str) -> None:
    a, b, _ = snap.topics
    with ctx.client() as w:
        with ctx.step("NMQ-SEM-1-2", "NMQ-4.9-1", "NMQ-4.9-2", "NMQ-SEM-2-1"):
            listed = _listing(w)
            for n, before in snap.topics.items():
                check(listed.get(n) == before, f"after a {how} restart METADATA lists {n} as {listed.get(n)} "
                      f"(topic_id, first_id, next_id), before it was {before}")
        with ctx.step("NMQ-SEM-3-3", "NMQ-SEM-3-2", "NMQ-4.6-3", "NMQ-SEM-2-2", "NMQ-5.3-1"):
            for n, before_recs in snap.records.items():
                after = _read(w, n, len(before_recs))
                check(len(after) == len(before_recs), f"after a {how} restart {n} delivered {len(after)} of "
                      f"{len(before_recs)} records")
                for x, y in zip(before_recs, after, strict=True):
                    check(x == y, f"after a {how} restart record {x.id} of {n} differs: {y[:9]} vs {x[:9]} "
                          f"(id, timestamp, topic_id, size, crc, flags, producer, sequence, raw_size)"
                          + ("" if x.payload == y.payload else "; payload differs"))
        recs = snap.records[a]
        nxt = snap.topics[a][2]
        with ctx.step("NMQ-4.4-2", "NMQ-4.4-4", "NMQ-4.4-5"):
            for start, value, first in ((Start.ID, 5, 5), (Start.LATEST, 0, nxt), (Start.EARLIEST, 0, 1),
                                        (Start.ID, nxt, nxt)):
                s = w.subscribe(a, start, value, 3)
                check(isinstance(s, Subscribed) and (s.next_id, s.end_id) == (first, nxt),
                      f"after a {how} restart SUBSCRIBE {start.name} {value} answered {s!r}; expected {first}, {nxt}")
                assert isinstance(s, Subscribed)
                if first < nxt:
                    got = [r.id for r in collect_all(w, s.sub_id, min(3, nxt - first))]
                    check(got == list(range(first, first + len(got))) and got, f"then delivered {got}")
        if ctx.has(Capability.SEEK_TIME):
            with ctx.step("NMQ-4.8-3", "NMQ-4.8-1"):
                ts = recs[1].timestamp_ns
                want = next(r.id for r in recs if r.timestamp_ns >= ts)
                s = w.subscribe(a, Start.TIMESTAMP, ts, 0)
                check(isinstance(s, Subscribed) and s.next_id == want,
                      f"after a {how} restart SUBSCRIBE at the timestamp of id 2 answered {s!r}, expected {want}")
                assert isinstance(s, Subscribed)
                ts = recs[-1].timestamp_ns
                want = next(r.id for r in recs if r.timestamp_ns >= ts)
                w.send(Seek(w.next_id(), s.sub_id, Start.TIMESTAMP, ts))
                f = w.recv_response()
                check(isinstance(f, SeekOk) and f.next_id == want,
                      f"after a {how} restart SEEK to the last timestamp answered {f!r}, expected {want}")
                w.send(Credit(0, s.sub_id, 1))
                got = [r.id for r in collect_all(w, s.sub_id, 1)]
                check(got == [want], f"after the SEEK delivered {got}")
        with ctx.step("NMQ-SEM-2-1", "NMQ-SEM-2-2", "NMQ-SEM-1-2"):
            ack = publish(w, a, [b"after"])
            check(ack.first_id == nxt, f"after a {how} restart the next record of {a} got id {ack.first_id}, "
                  f"expected {nxt}")
            s = subscribe(w, a, Start.ID, nxt)
            r = collect_all(w, s.sub_id, 1)
            check(len(r) == 1 and r[0].timestamp_ns >= recs[-1].timestamp_ns and r[0].topic_id == snap.topics[a][0],
                  f"the record published after a {how} restart: {r[:1]!r}; its timestamp must not be below "
                  f"{recs[-1].timestamp_ns} and its topic_id must stay {snap.topics[a][0]}")
            ack = publish(w, b, [b"first"])
            check(ack.first_id == 1, f"the empty topic created before the {how} restart got first id {ack.first_id}")
            s = subscribe(w, b)
            r = collect_all(w, s.sub_id, 1)
            check(len(r) == 1 and r[0].topic_id == snap.topics[b][0] == s.topic_id,
                  f"the empty topic's topic_id changed across the {how} restart")
            d = ctx.topic("rsd")
            publish(w, d, [b"new"])
            tid = _listing(w)[d][0]
            check(tid not in {v[0] for v in snap.topics.values()},
                  f"a topic created after the {how} restart got topic_id {tid}, already taken")


def _restart(ctx: Context, clean: bool) -> None:
    if not ctx.target.can_crash:
        raise Skipped("no launch command: the kit cannot restart the target")
    snap = _build(ctx)
    if clean:
        ctx.target.stop()
    else:
        ctx.target.kill()
    ctx.target.start()
    _verify(ctx, snap, "clean" if clean else "unclean")


@case("crash.restart-clean", "after a clean restart (SIGTERM) every topic keeps its topic_id, id range and stored "
      "bytes; starts, seeks by id and time, ids and timestamps of new records continue", layer="crash",
      rules=_RULES)
def restart_clean(ctx: Context) -> None:
    _restart(ctx, True)


@case("crash.restart-unclean", "after an unclean restart (kill) every topic keeps its topic_id, id range and "
      "stored bytes (written and durable acks); starts, seeks by id and time, ids and timestamps continue",
      layer="crash", rules=_RULES)
def restart_unclean(ctx: Context) -> None:
    _restart(ctx, False)
