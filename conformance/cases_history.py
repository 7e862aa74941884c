"""Layer (c): concurrent clients record what they did and saw; the history checker judges it."""

from __future__ import annotations

import threading
import time

from conformance.history import Anomaly, check_commits, check_deliveries
from conformance.registry import Context, Failed, case
from nanomq.protocol import Ack, Commit, Committed, PublishAck, Seek, SeekOk, Start, Subscribed

_RULES_OF = {
    "lost": ("NMQ-SEM-3-3", "NMQ-SEM-4-1"),
    "skipped": ("NMQ-SEM-4-1",),
    "duplicated": ("NMQ-SEM-4-1",),
    "reordered": ("NMQ-SEM-4-1", "NMQ-SEM-1-1"),
    "corrupted": ("NMQ-SEM-3-3",),
    "commit-regressed": ("NMQ-4.7-4",),
}


def _fail(anomalies: list[Anomaly]) -> Failed:
    """A failure naming exactly the rules the anomalies break."""
    rules = sorted({r for a in anomalies for r in _RULES_OF[a.kind]})
    return Failed("; ".join(str(a) for a in anomalies[:6]), tuple(rules))


def _publisher(ctx: Context, topic: str, name: str, batches: int, size: int, ack: Ack,
               acked: dict[int, bytes], lock: threading.Lock, errors: list[str], seed: int) -> None:
    import random

    rng = random.Random(seed)
    try:
        with ctx.client() as w:
            for b in range(batches):
                n = rng.randint(1, size)
                payloads = [f"{name}:{b}:{i}:{rng.getrandbits(32):08x}".encode() for i in range(n)]
                f = w.publish(topic, payloads, ack)
                if not isinstance(f, PublishAck) or f.count != n:
                    errors.append(f"{name}: publish answered {f!r}")
                    return
                with lock:
                    for i, p in enumerate(payloads):
                        acked[f.first_id + i] = p
    except Exception as e:  # recorded, judged below
        errors.append(f"{name}: {type(e).__name__}: {e}")


def _reader(ctx: Context, topic: str, want: list[int], seen: list[tuple[int, bytes]], errors: list[str],
            credit: int, deadline: float) -> None:
    """Read from the earliest record until ``want[0]`` records are seen (``want`` may grow or
    shrink while reading: the publishers set it when they know the final count)."""
    try:
        with ctx.client() as w:
            sub = w.subscribe(topic, Start.EARLIEST, 0, credit)
            if not isinstance(sub, Subscribed):
                errors.append(f"subscribe answered {sub!r}")
                return
            while len(seen) < want[0] and time.monotonic() < deadline:
                try:
                    recs = w.collect(sub.sub_id, 1, timeout=0.2)
                except TimeoutError:
                    continue  # maybe done: ``want`` is re-read
                seen.extend((r.id, r.payload) for r in recs)
                w.credit(sub.sub_id, len(recs))
    except Exception as e:
        errors.append(f"reader: {type(e).__name__}: {e}")


@case("history.concurrent", "3 publishers and 3 subscribers at once: nothing lost, duplicated, reordered, "
      "skipped or corrupted", layer="history", randomized=True,
      rules=("NMQ-SEM-1-1", "NMQ-SEM-2-1", "NMQ-SEM-2-3", "NMQ-SEM-4-1", "NMQ-SEM-3-3", "NMQ-4.6-3"))
def concurrent(ctx: Context) -> None:
    topic = ctx.topic("history")
    acked: dict[int, bytes] = {}
    lock = threading.Lock()
    errors: list[str] = []
    pubs = [threading.Thread(target=_publisher, args=(ctx, topic, f"p{k}", 40, 60, (Ack.WRITTEN, Ack.DURABLE)[k % 2],
                                                      acked, lock, errors, ctx.rng.getrandbits(32)))
            for k in range(3)]
    for p in pubs:
        p.start()
    for p in pubs:
        p.join(120)
    if errors:
        raise Failed("; ".join(errors[:5]))
    want = [max(acked)]
    views: dict[str, list[tuple[int, bytes]]] = {f"s{k}": [] for k in range(3)}
    deadline = time.monotonic() + 60
    readers = [threading.Thread(target=_reader, args=(ctx, topic, want, views[f"s{k}"], errors, c, deadline))
               for k, c in enumerate((7, 64, 100_000))]
    for r in readers:
        r.start()
    for r in readers:
        r.join(90)
    anomalies = check_deliveries(acked, views)
    ctx.note(f"{len(acked)} records acked by 3 publishers; 3 subscribers (credit 7, 64, 100000)")
    if anomalies:
        raise _fail(anomalies)
    if errors:
        raise Failed("; ".join(errors[:5]))


@case("history.live-tail", "subscribers reading while publishers write see every record in order",
      layer="history", randomized=True, rules=("NMQ-SEM-4-1", "NMQ-SEM-2-3", "NMQ-4.6-5"))
def live_tail(ctx: Context) -> None:
    topic = ctx.topic("tail")
    acked: dict[int, bytes] = {}
    lock = threading.Lock()
    errors: list[str] = []
    total_batches, size = 50, 20
    with ctx.client() as w:
        w.publish(topic, [b"seed"], Ack.WRITTEN)
    acked[1] = b"seed"
    views: dict[str, list[tuple[int, bytes]]] = {"early": [], "tiny-credit": []}
    deadline = time.monotonic() + 60
    want = [1 + 2 * total_batches * size]  # an upper bound until the publishers are done
    readers = [threading.Thread(target=_reader, args=(ctx, topic, want, views[n], errors, c, deadline))
               for n, c in (("early", 1000), ("tiny-credit", 3))]
    for r in readers:
        r.start()
    pubs = [threading.Thread(target=_publisher, args=(ctx, topic, f"p{k}", total_batches, size, Ack.WRITTEN,
                                                      acked, lock, errors, ctx.rng.getrandbits(32)))
            for k in range(2)]
    for p in pubs:
        p.start()
    for p in pubs:
        p.join(120)
    want[0] = top = max(acked)
    for r in readers:
        r.join(max(0.1, deadline - time.monotonic()))
    for v in views.values():
        del v[top:]  # a reader may have taken a few more in its last DELIVER
    anomalies = check_deliveries(acked, views)
    if anomalies:
        raise _fail(anomalies)
    if errors and any("reader" in e for e in errors):
        raise Failed("; ".join(errors[:5]))


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
        assert isinstance(sub, Subscribed)
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
        anomalies = check_commits(positions)
        if anomalies or positions[-1] != 51:
            raise Failed(f"committed positions {positions}: {anomalies}", ("NMQ-4.7-4",))
        for _ in range(8):
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
