"""Layer (b), content: every delivered record compared byte-exact with what was published, across the
whole payload size range; the fields the server stamps (id, timestamp, topic id, CRC) and the ones
it must keep (flags, raw_size, producer_id, sequence, payload); and the same stored bytes for every
reader.
"""

from __future__ import annotations

import struct
import time

from conformance.cases_enums import _restamp
from conformance.helpers import collect_all, publish, raw_publish, subscribe
from conformance.registry import Context, case, check
from nanomq.protocol import Ack, PublishAck, Record, RecordBatch

_HEADER = struct.Struct("<QQIIIIQQI")
_SKEW_NS = 5_000_000_000
"""How far the target's clock may be from the kit's (a remote target without NTP)."""


def _sizes(m: int) -> list[int]:
    base = list(range(0, 18)) + [31, 32, 33, 55, 56, 57, 63, 64, 65, 127, 128, 129, 255, 256, 1000, 1023, 1024,
                                   1025, 4095, 4096, 4097, 8191, 16384, 32767, 32768]
    return sorted({s for s in base + [m - 8, m - 7, m - 1, m] if 0 <= s <= m})


@case("content.sizes", "payloads of every size class from 0 to max_payload (each length 0..17, powers of two "
      "and their neighbours, max_payload−8..max_payload) with random bytes come back byte-exact, in batches "
      "mixing sizes", layer="wire", rules=("NMQ-SEM-3-3", "NMQ-5.1-1", "NMQ-4.6-3", "NMQ-4.2-1", "NMQ-6.1-2"))
def sizes(ctx: Context) -> None:
    t = ctx.topic("sizes")
    m = ctx.max_payload
    sz = _sizes(m)
    ctx.rng.shuffle(sz)
    payloads = [ctx.rng.randbytes(s) for s in sz]
    limit = (ctx.max_frame or 16 << 20) - 1024
    with ctx.client() as w:
        batch: list[bytes] = []
        used = 0
        with ctx.step("NMQ-4.2-1", "NMQ-6.1-2"):
            for p in payloads + [None]:  # type: ignore[list-item]
                if p is None or len(batch) == ctx.max_batch or used + len(p) + 72 > limit:
                    if batch:
                        publish(w, t, batch, max_payload=m)
                    batch, used = [], 0
                if p is not None:
                    batch.append(p)
                    used += len(p) + 72
        with ctx.step("NMQ-SEM-3-3", "NMQ-5.1-1", "NMQ-4.6-3"):
            s = subscribe(w, t)
            recs = collect_all(w, s.sub_id, len(payloads), timeout=30)
            check(len(recs) == len(payloads), f"{len(recs)} of {len(payloads)} records delivered")
            for r, p in zip(recs, payloads, strict=True):
                if r.payload != p:
                    first = next((i for i, (x, y) in enumerate(zip(r.payload, p, strict=False)) if x != y),
                                 min(len(p), len(r.payload)))
                    check(False, f"record {r.id}: {len(p)} bytes published, {len(r.payload)} delivered, first "
                          f"difference at byte {first}")


@case("content.stamps", "the server stamps id, timestamp (its clock at append, within the publish's send..ack "
      "window) and topic_id over whatever the client sent, recomputes the CRC, and keeps flags, raw_size, "
      "producer_id 0 with any sequence, and the payload", layer="wire",
      rules=("NMQ-4.2-4", "NMQ-SEM-2-2", "NMQ-5.1-6", "NMQ-5.2-1", "NMQ-S6-1"))
def stamps(ctx: Context) -> None:
    t = ctx.topic("stamps2")
    raw = bytearray(RecordBatch.from_payloads([b"one", b"two", b"three"], first_id=999, timestamp_ns=5,
                                              topic_id=77).data)
    seqs = (5, (1 << 64) - 1, 0)
    off = 0
    recs = []
    for s in seqs:  # producer_id 0 with a sequence: stored as given ([NMQ-5.1-6])
        size = struct.unpack_from("<I", raw, off + 20)[0]
        span = (64 + size + 7) & ~7
        rec = bytearray(raw[off : off + span])
        struct.pack_into("<Q", rec, 40, s)
        recs.append(_restamp(rec))
        off += span
    with ctx.client() as w:
        before = time.time_ns()
        rid = w.next_id()
        w.send_raw(raw_publish(rid, t.encode(), b"".join(recs), 3))
        f = w.recv_response()
        after = time.time_ns()
        check(isinstance(f, PublishAck) and f.first_id == 1, f"PUBLISH answered {f!r}", "NMQ-4.2-4")
        s = subscribe(w, t)
        got = collect_all(w, s.sub_id, 3)  # the codec verifies every CRC: a stale one fails here
        with ctx.step("NMQ-4.2-4"):
            check([r.id for r in got] == [1, 2, 3], f"ids {[r.id for r in got]} (the client sent 999..1001)")
            check(all(r.topic_id == s.topic_id for r in got), f"topic_ids {[r.topic_id for r in got]}, the topic's "
                  f"is {s.topic_id} (the client sent 77)")
        with ctx.step("NMQ-SEM-2-2", "NMQ-4.2-4"):
            for r in got:
                check(before - _SKEW_NS <= r.timestamp_ns <= after + _SKEW_NS,
                      f"record {r.id} has timestamp {r.timestamp_ns}; it was appended between {before} and {after}")
            check(got[0].timestamp_ns <= got[1].timestamp_ns <= got[2].timestamp_ns, "timestamps decrease")
        with ctx.step("NMQ-5.1-6", "NMQ-S6-1"):
            check([(r.producer_id, r.sequence) for r in got] == [(0, q) for q in seqs],
                  f"(producer_id, sequence) stored as {[(r.producer_id, r.sequence) for r in got]}")
            check([r.payload for r in got] == [b"one", b"two", b"three"] and all(r.flags == r.raw_size == 0 for r in got),
                  "payload, flags or raw_size changed")


def _header(r: Record) -> bytes:
    return _HEADER.pack(*r[:9])


@case("content.stored-bytes", "records are delivered as stored: two subscribers on two connections, and a "
      "second read by the same one, get identical header bytes (timestamp and CRC included) for every id",
      layer="wire", rules=("NMQ-4.6-3", "NMQ-SEM-3-3"))
def stored_bytes(ctx: Context) -> None:
    t = ctx.topic("stored")
    with ctx.client() as p:
        for k in range(5):
            publish(p, t, [ctx.rng.randbytes(ctx.rng.randint(0, 500)) for _ in range(20)],
                    Ack.DURABLE if k % 2 else Ack.WRITTEN)
            time.sleep(0.002)
    with ctx.client() as a, ctx.client() as b:
        ra = collect_all(a, subscribe(a, t).sub_id, 100)
        rb = collect_all(b, subscribe(b, t).sub_id, 100)
        again = collect_all(a, subscribe(a, t).sub_id, 100)
    with ctx.step("NMQ-4.6-3", "NMQ-SEM-3-3"):
        check(len(ra) == len(rb) == len(again) == 100, f"delivered {len(ra)}, {len(rb)}, {len(again)} of 100")
        for x, y, z in zip(ra, rb, again, strict=True):
            check(_header(x) == _header(y) == _header(z) and x.payload == y.payload == z.payload,
                  f"record {x.id} was delivered with different bytes to different readers")
