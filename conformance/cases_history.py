"""Layer (c): concurrent clients record what they did and saw; the history checker judges it.

Publishers pipeline their batches (several in flight on one connection, mixed ack modes), so the
order of appends per connection is exercised; subscribers grant credit in small windows and record
every DELIVER frame, so batching and credit are checked along with content and order.
"""

from __future__ import annotations

import random
import struct
import threading
import time

from conformance.history import (
    RULES_OF,
    Anomaly,
    Batch,
    Delivered,
    acked_records,
    check_batches,
    check_commits,
    check_deliveries,
    check_frames,
)
from conformance.registry import Context, Failed, case
from nanomq.protocol import (
    Ack,
    Commit,
    Committed,
    Deliver,
    Publish,
    PublishAck,
    Record,
    RecordBatch,
    Seek,
    SeekOk,
    Start,
    Subscribed,
)

_HEADER = struct.Struct("<QQIIIIQQI")


def _fail(anomalies: list[Anomaly]) -> Failed:
    """A failure naming exactly the rules the anomalies break."""
    rules = sorted({r for a in anomalies for r in RULES_OF[a.kind]})
    return Failed("; ".join(str(a) for a in anomalies[:6]), tuple(rules))


def _delivered(r: Record, frame: int) -> Delivered:
    return Delivered(r.id, r.payload, r.timestamp_ns, r.topic_id, _HEADER.pack(*r[:9]), frame)


def _publisher(ctx: Context, topic: str, name: str, batches: int, size: int, acks: tuple[Ack, ...],
               out: list[Batch], lock: threading.Lock, errors: list[str], seed: int) -> None:
    """Send ``batches`` batches, up to 4 in flight, cycling through ``acks``; record each acked one."""
    rng = random.Random(seed)
    try:
        with ctx.client() as w:
            seq = 0
            while seq < batches:
                depth = min(rng.randint(1, 4), batches - seq)
                sent = []
                for k in range(depth):
                    n = rng.randint(1, size)
                    payloads = tuple(f"{name}:{seq + k}:{i}:{rng.getrandbits(32):08x}".encode() for i in range(n))
                    rid = w.next_id()
                    sent.append((rid, seq + k, payloads))
                    w.send(Publish(rid, topic, acks[(seq + k) % len(acks)], RecordBatch.from_payloads(list(payloads))))
                for rid, s, payloads in sent:
                    f = w.recv_response()
                    if not isinstance(f, PublishAck) or f.count != len(payloads) or f.request_id != rid:
                        errors.append(f"{name}: publish #{s} answered {f!r}")
                        return
                    with lock:
                        out.append(Batch(name, s, f.first_id, payloads))
                seq += depth
    except Exception as e:  # recorded, judged by the caller
        errors.append(f"{name}: {type(e).__name__}: {e}")


class _Reader:
    """A subscriber from the earliest record that grants ``credit`` at a time and records every
    DELIVER, until it has ``want[0]`` records (``want`` may change while it reads)."""

    def __init__(self, ctx: Context, topic: str, name: str, credit: int, want: list[int], deadline: float) -> None:
        self.ctx, self.topic, self.name, self.credit, self.want, self.deadline = ctx, topic, name, credit, want, deadline
        self.seen: list[Delivered] = []
        self.frames: list[list[int]] = []
        self.granted = 0
        self.topic_id = 0
        self.errors: list[str] = []
        self.max_batch = 256

    def run(self) -> None:
        try:
            with self.ctx.client() as w:
                assert w.server is not None
                self.max_batch = w.server.max_batch
                sub = w.subscribe(self.topic, Start.EARLIEST, 0, self.credit)
                if not isinstance(sub, Subscribed):
                    self.errors.append(f"{self.name}: SUBSCRIBE answered {sub!r}")
                    return
                self.topic_id = sub.topic_id
                self.granted = self.credit
                outstanding = self.credit
                while len(self.seen) < self.want[0] and time.monotonic() < self.deadline:
                    try:
                        f = w.recv(0.2)
                    except TimeoutError:
                        continue
                    if not isinstance(f, Deliver) or f.sub_id != sub.sub_id:
                        self.errors.append(f"{self.name}: unexpected {f!r}")
                        return
                    recs = list(f.records)
                    self.frames.append([r.id for r in recs])
                    self.seen.extend(_delivered(r, len(self.frames)) for r in recs)
                    outstanding -= len(recs)
                    if outstanding <= self.credit // 2:  # top the window up, as a client would
                        w.credit(sub.sub_id, self.credit - max(outstanding, 0))
                        self.granted += self.credit - max(outstanding, 0)
                        outstanding = self.credit
        except Exception as e:
            self.errors.append(f"{self.name}: {type(e).__name__}: {e}")


def _judge(batches: list[Batch], readers: list[_Reader], errors: list[str], top: int | None = None) -> None:
    acked = acked_records(batches)
    if top is not None:
        for r in readers:
            r.seen = [d for d in r.seen if d.id <= top]
    anomalies = check_batches(batches)
    tids = {r.topic_id for r in readers}
    anomalies += check_deliveries(acked, {r.name: r.seen for r in readers}, batches=batches,
                                  topic_id=tids.pop() if len(tids) == 1 else None)
    if len(tids) > 1:
        anomalies.append(Anomaly("topic-id", "all", f"SUBSCRIBED gave several topic ids {sorted(tids)}"))
    for r in readers:
        anomalies += check_frames(r.name, r.frames, r.max_batch, r.granted)
    if anomalies:
        raise _fail(anomalies)
    bad = errors + [e for r in readers for e in r.errors]
    if bad:
        raise Failed("; ".join(bad[:5]), ("NMQ-SEM-4-1",))


@case("history.concurrent", "3 publishers pipelining batches (written, durable, none-free mixes) and 3 "
      "subscribers with different credit windows: nothing lost, duplicated, reordered, skipped, corrupted or "
      "interleaved; per-connection order kept; timestamps non-decreasing; one topic id; DELIVERs within "
      "max_batch and credit", layer="history", randomized=True,
      rules=("NMQ-SEM-1-1", "NMQ-SEM-1-2", "NMQ-SEM-2-1", "NMQ-SEM-2-2", "NMQ-SEM-2-3", "NMQ-SEM-4-1",
             "NMQ-SEM-3-3", "NMQ-4.2-1", "NMQ-4.6-2", "NMQ-4.6-3"))
def concurrent(ctx: Context) -> None:
    topic = ctx.topic("history")
    batches: list[Batch] = []
    lock = threading.Lock()
    errors: list[str] = []
    nb = 15 if ctx.quick else 40
    acks = ((Ack.WRITTEN,), (Ack.DURABLE,), (Ack.WRITTEN, Ack.DURABLE))
    pubs = [threading.Thread(target=_publisher, args=(ctx, topic, f"p{k}", nb, 60, acks[k], batches, lock, errors,
                                                      ctx.rng.getrandbits(32))) for k in range(3)]
    for p in pubs:
        p.start()
    for p in pubs:
        p.join(120)
    if errors:
        raise Failed("; ".join(errors[:5]), ("NMQ-4.2-1",))
    want = [sum(len(b.payloads) for b in batches)]
    deadline = time.monotonic() + 60
    readers = [_Reader(ctx, topic, f"s{k}", c, want, deadline) for k, c in enumerate((7, 64, 100_000))]
    threads = [threading.Thread(target=r.run) for r in readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    ctx.note(f"{want[0]} records in {len(batches)} batches acked by 3 publishers; 3 subscribers (credit 7, 64, 100000)")
    _judge(batches, readers, [])


@case("history.live-tail", "subscribers reading while publishers write see every record in order, whole, "
      "within their credit", layer="history", randomized=True,
      rules=("NMQ-SEM-4-1", "NMQ-SEM-2-3", "NMQ-4.6-5", "NMQ-SEM-2-2", "NMQ-4.6-2", "NMQ-4.6-3", "NMQ-SEM-3-3"))
def live_tail(ctx: Context) -> None:
    topic = ctx.topic("tail")
    batches: list[Batch] = []
    lock = threading.Lock()
    errors: list[str] = []
    total_batches, size = (20 if ctx.quick else 50), 20
    with ctx.client() as w:
        f = w.publish(topic, [b"seed"], Ack.WRITTEN)
        if not isinstance(f, PublishAck) or f.first_id != 1:
            raise Failed(f"first publish answered {f!r}", ("NMQ-4.2-1",))
    batches.append(Batch("seed", 0, 1, (b"seed",)))
    deadline = time.monotonic() + 60
    want = [1 + 2 * total_batches * size]  # an upper bound until the publishers are done
    readers = [_Reader(ctx, topic, n, c, want, deadline) for n, c in (("early", 1000), ("tiny-credit", 3))]
    threads = [threading.Thread(target=r.run) for r in readers]
    for t in threads:
        t.start()
    pubs = [threading.Thread(target=_publisher, args=(ctx, topic, f"p{k}", total_batches, size, (Ack.WRITTEN,),
                                                      batches, lock, errors, ctx.rng.getrandbits(32)))
            for k in range(2)]
    for p in pubs:
        p.start()
    for p in pubs:
        p.join(120)
    want[0] = top = sum(len(b.payloads) for b in batches)
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    _judge(batches, readers, errors, top)


@case("history.commits-and-seeks", "random commits never move the committed position back; random seeks "
      "restart delivery exactly at the sought id", layer="history", randomized=True,
      rules=("NMQ-4.7-4", "NMQ-4.8-4", "NMQ-4.8-1", "NMQ-SEM-4-1"))
def commits_and_seeks(ctx: Context) -> None:
    topic = ctx.topic("cs")
    with ctx.client() as w:
        n = 300
        payloads = [f"c{i}".encode() for i in range(1, n + 1)]
        for i in range(0, n, 100):
            w.publish(topic, payloads[i : i + 100], Ack.WRITTEN)
        sub = w.subscribe(topic, Start.EARLIEST, 0, 50)
        if not isinstance(sub, Subscribed):
            raise Failed(f"SUBSCRIBE answered {sub!r}", ("NMQ-4.4-1",))
        with ctx.step("NMQ-4.7-4"):
            delivered = [r.id for r in w.collect(sub.sub_id, 50)]
            positions = []
            order = delivered[:]
            ctx.rng.shuffle(order)
            rid = 1000
            for i in range(0, len(order), 7):
                rid += 1
                w.send(Commit(rid, sub.sub_id, tuple(order[i : i + 7])))
                f = w.recv_response()
                if not isinstance(f, Committed):
                    raise Failed(f"COMMIT answered {f!r}", ("NMQ-4.7-1",))
                positions.append(f.position)
            committed: set[int] = set()
            for i in range(0, len(order), 7):  # the exact lowest uncommitted id after each COMMIT
                committed |= set(order[i : i + 7])
                lowest = next(k for k in range(1, n + 2) if k not in committed)
                if positions[i // 7] != lowest:
                    raise Failed(f"after committing {sorted(committed)[:12]}… the position is {positions[i // 7]}, "
                                 f"expected {lowest}", ("NMQ-4.7-4",))
            anomalies = check_commits(positions)
            if anomalies or positions[-1] != 51:
                raise Failed(f"committed positions {positions}: {anomalies}", ("NMQ-4.7-4",))
        with ctx.step("NMQ-4.8-4", "NMQ-4.8-1"):
            for _ in range(4 if ctx.quick else 8):
                target = ctx.rng.randint(1, n)
                rid += 1
                w.send(Seek(rid, sub.sub_id, Start.ID, target))
                while True:
                    f = w.recv()
                    if isinstance(f, SeekOk):
                        break
                w.credit(sub.sub_id, 5)
                ids = [r.id for r in w.collect(sub.sub_id, min(5, n - target + 1))]
                expected = list(range(target, target + len(ids)))
                if ids != expected:
                    raise Failed(f"after SEEK to {target} got {ids}", ("NMQ-4.8-4",))
