"""Layer (d): crashes. SIGKILL (or the target's kill command) under load, restart, verify.

SIGKILL cannot catch a broker that acks ``durable`` before syncing: the killed process's writes
are still in the page cache. That is checked directly, under strace, by
:mod:`conformance.cases_durability` ([NMQ-SEM-3-1]; spec/semantics.md §3 "How the kit tests it").
"""

from __future__ import annotations

import threading
import time

from conformance.helpers import collect_all
from conformance.registry import Context, Failed, Skipped, case, check
from nanomq.protocol import Ack, Deliver, Error, ErrorCode, PublishAck, Start, Subscribed


def _ranges(ids: list[int]) -> str:
    """``1-4, 9, 12-13`` for sorted ids (the first 10 ranges)."""
    out: list[str] = []
    start = prev = ids[0]
    for i in [*ids[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(out[:10]) + (" …" if len(out) > 10 else "")


def _need_crash(ctx: Context) -> None:
    if not ctx.target.can_crash:
        raise Skipped("no launch command: the kit cannot crash and restart the target")


def _storm(ctx: Context, topic: str, ack: Ack, stop: threading.Event, acked: dict[int, bytes],
           sent: dict[bytes, int], seed: int) -> None:
    """Publish batches until the connection breaks; record what was acked."""
    import random

    rng = random.Random(seed)
    n = 0
    try:
        with ctx.client() as w:
            while not stop.is_set():
                k = rng.randint(1, 32)
                payloads = [f"{topic}:{n + i}".encode() for i in range(k)]
                for p in payloads:
                    sent[p] = n
                n += k
                f = w.publish(topic, payloads, ack)
                if isinstance(f, PublishAck):
                    for i, p in enumerate(payloads):
                        acked[f.first_id + i] = p
    except Exception:  # the kill breaks the connection: expected
        return


def _read_all(ctx: Context, topic: str) -> list[tuple[int, bytes]]:
    """Every record of ``topic`` from the earliest, as delivered after the restart. Reads until the
    end SUBSCRIBED announced, or until nothing arrives for 2 s: a target that lost records in the
    middle is judged at once, not after a long timeout."""
    with ctx.client() as w:
        sub = w.subscribe(topic, Start.EARLIEST)
        if not isinstance(sub, Subscribed):
            raise Failed(f"after restart SUBSCRIBE answered {sub!r}", ("NMQ-4.4-1",))
        want = sub.end_id - sub.next_id
        recs = collect_all(w, sub.sub_id, want, timeout=60, idle=2.0) if want > 0 else []
        return [(r.id, r.payload) for r in recs]


def _crash_loop(ctx: Context, ack: Ack, rule: str) -> None:
    _need_crash(ctx)
    total = 0
    for it in range(ctx.crash_iterations):
        topic = ctx.topic(f"crash{it}")
        acked: dict[int, bytes] = {}
        sent: dict[bytes, int] = {}
        stop = threading.Event()
        th = threading.Thread(target=_storm, args=(ctx, topic, ack, stop, acked, sent, ctx.rng.getrandbits(32)))
        th.start()
        time.sleep(0.15 + ctx.rng.random() * 0.6)
        ctx.target.kill()
        stop.set()
        th.join(30)
        ctx.target.start()
        got = _read_all(ctx, topic)
        have = dict(got)
        lost = sorted(i for i in acked if i not in have)
        changed = sorted(i for i in acked if i in have and have[i] != acked[i])
        if lost:
            raise Failed(f"iteration {it}: {len(lost)} acknowledged record(s) lost after the restart: ids "
                         f"{_ranges(lost)}", (rule, "NMQ-SEM-3-3"))
        if changed:
            raise Failed(f"iteration {it}: {len(changed)} acknowledged record(s) changed after the restart: ids "
                         f"{_ranges(changed)}", ("NMQ-SEM-3-3",))
        ids = [i for i, _ in got]
        if ids != list(range(1, len(ids) + 1)):
            raise Failed(f"iteration {it}: ids after restart are not 1..n in order: {ids[:10]}...",
                         ("NMQ-SEM-2-1",))
        unknown = [p for _, p in got if p not in sent]
        if unknown:
            raise Failed(f"iteration {it}: records nobody published: {unknown[:3]}", ("NMQ-SEM-3-3",))
        with ctx.step("NMQ-SEM-2-1"), ctx.client() as w:  # ids continue after what survived: none reused
            f = w.publish(topic, [b"after-restart"], Ack.WRITTEN)
            if not isinstance(f, PublishAck) or f.first_id != len(got) + 1:
                raise Failed(f"iteration {it}: the first publish after the restart answered {f!r}; "
                             f"{len(got)} records survived, so its id must be {len(got) + 1}")
        total += len(acked)
    ctx.note(f"{ctx.crash_iterations} kill/restart cycles, {total} acked records checked")


@case("crash.durable", "SIGKILL under durable load loses no acked record; ids stay contiguous", layer="crash",
      randomized=True, rules=("NMQ-SEM-3-1", "NMQ-SEM-3-3", "NMQ-SEM-2-1"))
def crash_durable(ctx: Context) -> None:
    _crash_loop(ctx, Ack.DURABLE, "NMQ-SEM-3-1")


@case("crash.written", "a process crash loses no record acked as written", layer="crash", randomized=True,
      rules=("NMQ-SEM-3-2", "NMQ-SEM-3-3", "NMQ-SEM-2-1"))
def crash_written(ctx: Context) -> None:
    _crash_loop(ctx, Ack.WRITTEN, "NMQ-SEM-3-2")


@case("crash.graceful-stop", "a graceful stop (the target's stop: SIGTERM to its process group) tells each "
      "connection why: an idle one and a subscribed one each get ERROR SHUTTING_DOWN with request_id 0 and an empty "
      "rule, after every answer owed, and are then closed; every acked record is there after the restart",
      layer="crash", rules=("NMQ-2-6", "NMQ-8-6", "NMQ-8-5", "NMQ-8-2", "NMQ-SEM-3-3"))
def graceful_stop(ctx: Context) -> None:
    _need_crash(ctx)
    t = ctx.topic("stop")
    idle = ctx.client()
    subscriber = ctx.client()
    try:
        with ctx.client() as w:
            acked = w.publish(t, [b"before the stop %d" % i for i in range(8)], Ack.WRITTEN)
        if not isinstance(acked, PublishAck):
            raise Failed(f"PUBLISH answered {acked!r}", ("NMQ-SEM-3-3",))
        sub = subscriber.subscribe(t, Start.EARLIEST, 0, 1 << 20)
        if not isinstance(sub, Subscribed):
            raise Failed(f"SUBSCRIBE answered {sub!r}", ("NMQ-SEM-3-3",))
        got = collect_all(subscriber, sub.sub_id, 8)
        ctx.target.stop()
        for label, c in (("an idle connection", idle), ("a subscribed connection", subscriber)):
            with ctx.step("NMQ-2-6", "NMQ-8-2"):
                try:
                    frames = c.expect_closed(5.0)
                except TimeoutError:
                    raise Failed(f"{label} was still open 5 s after the target stopped") from None
                errors = [f for f in frames if isinstance(f, Error)]
                check(bool(errors) and errors[-1].code == ErrorCode.SHUTTING_DOWN and errors[-1].request_id == 0,
                      f"{label} was closed by the graceful stop after {frames!r}, not ERROR SHUTTING_DOWN "
                      "(request_id 0)", "NMQ-2-6")
                check(all(isinstance(f, Deliver) for f in frames[:-1]), f"{label} got {frames[:-1]!r} before the "
                      "ERROR SHUTTING_DOWN, where only deliveries can be", "NMQ-2-6")
            with ctx.step("NMQ-8-6", "NMQ-8-5"):
                check(errors[-1].rule == "" and bool(errors[-1].message.strip()), f"the ERROR SHUTTING_DOWN of a "
                      f"graceful stop carries message {errors[-1].message!r} and rule {errors[-1].rule!r}: a message "
                      "is due, and no rule (the client broke none)", "NMQ-8-6")
    finally:
        idle.close()
        subscriber.close()
        if not ctx.target.proc or ctx.target.proc.poll() is not None:
            ctx.target.start()
    with ctx.step("NMQ-SEM-3-3"):
        check([r.id for r in got] == list(range(acked.first_id, acked.first_id + 8)),
              f"before the stop the subscriber got {[r.id for r in got]}")
        after = _read_all(ctx, t)
        check([p for _, p in after] == [b"before the stop %d" % i for i in range(8)],
              f"after a graceful stop and a restart the topic holds {len(after)} records, not the 8 acked")
