"""Layer (d), durability: a durable ack follows a sync of the file that holds the record.

SIGKILL cannot catch a broker that acks ``durable`` before syncing: the killed process's writes
survive in the page cache. So the target runs under ``strace -f -ttt -T -y`` (spec/semantics.md
§3 "How the kit tests it"), and for every durable ack the kit proves from the trace that

1. the file holding the acked records was synced (fsync/fdatasync of it, msync(MS_SYNC) of a
   shared mapping of it, syncfs of its file system, or sync) by a call that began after the
   PUBLISH was sent and returned before the PUBLISH_ACK arrived ([NMQ-SEM-3-1], [NMQ-S7-1],
   [NMQ-S7-2]); and
2. when that file — or a directory above it, up to the data directory — was created while traced
   (an ``O_CREAT`` open, ``mkdir``, the target of a ``rename``), its parent directory was synced
   after the creation and before the ack: without that, a power loss can lose the file's name and
   with it the acked records.

Which file holds a record is found by a unique marker in its payload, searched for in every file
under the target's data directory (any broker that stores payloads uncompressed); a marker that is
found nowhere makes the case SKIPPED with the reason, never a pass. The workload publishes large
durable batches, so the reference broker (8 MB segments) rotates a segment inside the test: the
batch that rotates lands in a new file, which needs its own data sync and a directory sync, and
every earlier file holding records must have been synced after its last write before a record of
the new one is acked ([NMQ-S3-7]).

For a target in the reference on-disk format the case then writes records without syncing, kills
the target and restarts it under strace: the recovery must sync the segment holding them and then
put a new checkpoint in place before the target accepts connections ([NMQ-S8-4]).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from conformance.registry import Context, Failed, Skipped, case
from conformance.strace import Trace
from conformance.target import Target
from nanomq.protocol import Ack, PublishAck

__all__ = ["durable_after_sync", "find_markers"]

_RULES_ACK = ("NMQ-SEM-3-1", "NMQ-S7-1", "NMQ-S7-2")


def find_markers(root: Path, pattern: re.Pattern[bytes]) -> dict[int, set[str]]:
    """Marker number -> the real paths of the files under ``root`` whose bytes contain it."""
    where: dict[int, set[str]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            real = os.path.realpath(p)
            for m in pattern.finditer(data):
                where.setdefault(int(m.group(1)), set()).add(real)
    return where


def _chain(path: str, root: str) -> list[str]:
    """``path`` and the directories above it, strictly below ``root``."""
    out = []
    p = path
    while p.startswith(root + os.sep):
        out.append(p)
        p = os.path.dirname(p)
    return out


@case("crash.durable-ack-after-sync",
      "every durable ack follows a sync of the file holding the record (and of its directory when the file is "
      "new) inside the publish->ack window, also when a batch rotates a segment", layer="crash",
      rules=("NMQ-SEM-3-1", "NMQ-S7-1", "NMQ-S7-2", "NMQ-S3-7", "NMQ-S8-4"))
def durable_after_sync(ctx: Context) -> None:
    if not ctx.target.can_crash:
        raise Skipped("no launch command: the kit cannot restart the target under strace")
    if shutil.which("strace") is None:
        raise Skipped("strace is not installed (the durability check observes sync calls with it)")
    target = ctx.target
    topic = ctx.topic("durable")
    marker = re.compile(rb"<" + re.escape(topic.encode()) + rb":(\d{8})>")
    size = max(64, min(8192, ctx.max_payload))
    per_batch = max(1, min(32, ctx.max_batch))

    def payload(n: int, length: int) -> bytes:
        head = f"<{topic}:{n:08d}>".encode()
        return head + bytes((n * 7 + k) & 0xFF for k in range(min(64, length - len(head)))) \
            + b"." * max(0, length - len(head) - 64)

    # (t0, t1, record numbers) per acknowledged PUBLISH
    acks: list[tuple[float, float, list[int]]] = []
    target.stop()
    target.spec.trace_syncs = True
    Path(target.trace_path).unlink(missing_ok=True)
    rotated = False
    recovery = target.spec.storage_format == "nanomq-v1"
    main_text = ""
    tail: list[int] = []
    t_restart = t_ready = 0.0
    try:
        target.start()
        n = 0
        with ctx.client() as w:
            plan = [1] * 10  # single records first, then batches until the records span two files
            budget = 32 << 20
            sent = 0
            while plan or (not rotated and sent < budget):
                k = plan.pop(0) if plan else per_batch
                nums = list(range(n, n + k))
                payloads = [payload(i, size) for i in nums]
                t0 = time.time()
                f = w.publish(topic, payloads, Ack.DURABLE)
                t1 = time.time()
                if not isinstance(f, PublishAck):
                    raise Failed(f"durable publish {len(acks) + 1} answered {f!r}", ("NMQ-SEM-3-1",))
                acks.append((t0, t1, nums))
                n += k
                sent += sum(len(p) for p in payloads)
                if not plan and sent >= (9 << 20) and len(acks) % 4 == 0:
                    where = find_markers(target.data_dir, marker)
                    rotated = bool(where.get(0)) and bool(where.get(n - 1)) and not (where[0] & where[n - 1])
            if rotated:
                # [NMQ-S3-7] with unsynced writes: batches acked only "written" until the records
                # move to a new file, then one durable record there. Its ack must come after a sync
                # of the file before, which no durable ack synced after its last writes.
                old = find_markers(target.data_dir, marker).get(n - 1, set())
                moved, sent = False, 0
                while not moved and sent < budget:
                    nums = list(range(n, n + per_batch))
                    f = w.publish(topic, [payload(i, size) for i in nums], Ack.WRITTEN)
                    if not isinstance(f, PublishAck):
                        raise Failed(f"a written publish answered {f!r}", ("NMQ-S3-7",))
                    n += per_batch
                    sent += per_batch * size
                    now = find_markers(target.data_dir, marker).get(n - 1, set())
                    moved = bool(now) and not (now & old)
                if moved:
                    nums = [n]
                    t0 = time.time()
                    f = w.publish(topic, [payload(n, size)], Ack.DURABLE)
                    t1 = time.time()
                    if not isinstance(f, PublishAck):
                        raise Failed(f"durable publish {len(acks) + 1} answered {f!r}", ("NMQ-SEM-3-1",))
                    acks.append((t0, t1, nums))
                    n += 1
            if recovery:
                # [NMQ-S8-4]: records written (not synced) before a kill are synced by the recovery,
                # and a new checkpoint written, before the target accepts connections again
                tail = list(range(n, n + 16))
                f = w.publish(topic, [payload(i, 512) for i in tail], Ack.WRITTEN)
                if not isinstance(f, PublishAck):
                    raise Failed(f"a written publish answered {f!r}", ("NMQ-S8-4",))
                n += len(tail)
        if recovery:
            target.kill()
            main_text = Path(target.trace_path).read_text(errors="replace")
            Path(target.trace_path).unlink()
            t_restart = time.time()
            target.start()
            t_ready = time.time()
    finally:
        # a clean stop ends the trace (strace writes every line before its tracee exits)
        target.stop()
        target.spec.trace_syncs = False
        trace_text = Path(target.trace_path).read_text(errors="replace") if Path(target.trace_path).exists() else ""
        target.start()
    trace = Trace.from_text(main_text if recovery else trace_text)
    where = find_markers(target.data_dir, marker)
    missing = [i for _, _, nums in acks for i in nums if i not in where]
    if missing:
        raise Skipped(f"{len(missing)} of {n} acked payloads were not found uncompressed in any file under the "
                      f"data directory (first: record {missing[0]}): the kit cannot tell which file holds them")
    root = os.path.realpath(target.data_dir)
    bad_data: list[str] = []
    bad_dir: list[str] = []
    for k, (t0, t1, nums) in enumerate(acks):
        files = set().union(*(where[i] for i in nums))
        for path in sorted(files):
            if not trace.data_syncs(path, t0, t1):
                bad_data.append(f"ack {k + 1} (records {nums[0]}..{nums[-1]}): {os.path.relpath(path, root)} "
                                "was not synced between the PUBLISH and its ack")
                continue
            for p in _chain(path, root):
                created = trace.created.get(p)
                if created is not None and created <= t1 and not trace.dir_syncs(os.path.dirname(p), created, t1):
                    bad_dir.append(f"ack {k + 1}: {os.path.relpath(p, root)} was created at {created:.6f} but its "
                                   "directory was not synced after that and before the ack")
    # [NMQ-S3-7]: an ack of records in a file comes after a sync of every earlier file holding
    # records, made after that file's last write (a later segment's records are durable only once
    # the segments before it are sealed); when the seal runs is the target's choice
    order: list[str] = []
    for _, _, nums in acks:
        for i in nums:
            for p in sorted(where[i]):
                if p not in order:
                    order.append(p)
    bad_seal: list[str] = []
    for k, (_t0, t1, nums) in enumerate(acks):
        last = max(order.index(p) for i in nums for p in where[i])
        for g in order[:last]:
            last_w = trace.last_write(g, t1)
            lo = last_w if last_w is not None else acks[0][0]
            if not trace.data_syncs(g, lo, t1):
                bad_seal.append(f"ack {k + 1} (records {nums[0]}..{nums[-1]}) came before {os.path.relpath(g, root)}, "
                                "which holds earlier records, was synced after its last write")
    bad_recovery = []
    if recovery:
        rec = Trace.from_text(trace_text)
        for path in sorted(set().union(*(where.get(i, set()) for i in tail))):
            syncs = rec.data_syncs(path, t_restart, t_ready)
            if not syncs:
                bad_recovery.append(f"after the kill, {os.path.relpath(path, root)} (holding records written but not "
                                    "synced before it) was not synced before the target accepted connections")
                continue
            ck = os.path.join(os.path.dirname(path), "checkpoint")
            done = min(c.end for c in syncs)
            if not [c for c in rec.renames_to(ck) if c.start >= done and c.end <= t_ready]:
                bad_recovery.append(f"after the kill, no new {os.path.relpath(ck, root)} was put in place after the "
                                    "recovery's sync and before the target accepted connections")
    ctx.note(f"{len(acks)} durable acks of {n} records in {len(order)} file(s); {len(trace.calls)} traced calls")
    if len(order) < 2:
        ctx.note("the records stayed in one file: no rotation inside the test, NMQ-S3-7 was not exercised")
    if bad_data or bad_dir:
        detail = (bad_data + bad_dir)[:3]
        raise Failed(f"{len(bad_data)} ack(s) without a sync of the file holding the records, {len(bad_dir)} without "
                     f"a sync of the directory of a file created for them; e.g. {'; '.join(detail)}", _RULES_ACK)
    if bad_seal:
        raise Failed("a durable ack of records in a segment came before an earlier segment was sealed: "
                     + "; ".join(bad_seal[:3]), ("NMQ-S3-7",))
    if bad_recovery:
        raise Failed("; ".join(bad_recovery), ("NMQ-S8-4",))


def _traceable_reference_format(ctx: Context) -> Target:
    """The target, if the kit can restart it under strace and it stores topics in the reference
    on-disk format; else Skipped with the reason."""
    if not ctx.target.can_crash:
        raise Skipped("no launch command: the kit cannot restart the target under strace")
    if shutil.which("strace") is None:
        raise Skipped("strace is not installed (the check observes sync calls with it)")
    if ctx.target.spec.storage_format != "nanomq-v1":
        raise Skipped("the target does not declare the reference on-disk format (storage_format = \"nanomq-v1\")")
    return ctx.target


def _traced_start(target: Target, while_traced: Callable[[float], None] | None = None) -> tuple[Trace, float]:
    """Start the (stopped) target under strace, run ``while_traced(t_ready)``, stop it cleanly (which
    ends the trace: strace writes every line before its tracee exits) and start it again untraced;
    the trace and the time the traced start was ready."""
    target.spec.trace_syncs = True
    Path(target.trace_path).unlink(missing_ok=True)
    try:
        target.start()
        t_ready = time.time()
        if while_traced is not None:
            while_traced(t_ready)
    finally:
        target.stop()
        target.spec.trace_syncs = False
        text = Path(target.trace_path).read_text(errors="replace") if Path(target.trace_path).exists() else ""
        target.start()
    return Trace.from_text(text), t_ready


@case("crash.checkpoint-replace", "every replacement of a topic's checkpoint (at open, at a clean stop) is atomic "
      "and durable: checkpoint.tmp synced after its last write and before the rename, and the directory synced "
      "after the rename", layer="crash", rules=("NMQ-S5-2", "NMQ-S5-3"))
def checkpoint_replace(ctx: Context) -> None:
    target = _traceable_reference_format(ctx)
    topic = ctx.topic("ckpt")
    with ctx.client() as w:  # the topic exists before the traced start, so that start replaces its checkpoint
        f = w.publish(topic, [b"before"], Ack.DURABLE)
        if not isinstance(f, PublishAck):
            raise Failed(f"a durable publish answered {f!r}", ("NMQ-S5-2",))
    target.stop()

    def publish_after(_t_ready: float) -> None:
        with ctx.client() as w:
            f = w.publish(topic, [b"after"], Ack.DURABLE)
            if not isinstance(f, PublishAck):
                raise Failed(f"a durable publish answered {f!r}", ("NMQ-S5-2",))

    trace, _ = _traced_start(target, publish_after)
    d = os.path.realpath(target.topic_dir(topic))
    ckpt, tmp = os.path.join(d, "checkpoint"), os.path.join(d, "checkpoint.tmp")
    renames = trace.renames_to(ckpt)
    if not renames:
        raise Failed(f"{topic}: no rename onto {ckpt} in the trace of a start and a clean stop: the checkpoint is "
                     "not replaced by writing checkpoint.tmp and renaming it", ("NMQ-S5-2", "NMQ-S5-3"))
    end = max((c.end for c in trace.calls), default=0.0)
    bad = []
    for k, r in enumerate(renames):
        last = trace.last_write(tmp, r.start)
        if last is None:
            bad.append(f"rename {k + 1}: no write of checkpoint.tmp before it")
        elif not trace.data_syncs(tmp, last, r.start):
            bad.append(f"rename {k + 1}: checkpoint.tmp was not synced between its last write and the rename")
        nxt = renames[k + 1].start if k + 1 < len(renames) else end
        if not trace.dir_syncs(d, r.end, nxt):
            bad.append(f"rename {k + 1}: the topic directory was not synced after the rename")
    if bad:
        raise Failed(f"{topic}: the checkpoint was not replaced atomically and durably ({len(renames)} replacement(s)): "
                     + "; ".join(bad), ("NMQ-S5-2",))


@case("crash.quarantine-durable", "bytes cut from the end of the log after an unclean shutdown are copied to their "
      "quarantine file durably — the file synced after its last write and its directory synced after its creation — "
      "before the target accepts connections", layer="crash", rules=("NMQ-S8-3",))
def quarantine_durable(ctx: Context) -> None:
    """[NMQ-S8-3] "nothing cut is silently destroyed": the tail is zeroed and synced, so a copy that
    is only in the page cache would be lost with the power, and the cut bytes with it."""
    from conformance.cases_storage import segments, write_at  # the on-disk format's helpers

    target = _traceable_reference_format(ctx)
    topic = ctx.topic("qdur")
    with ctx.client() as w:
        f = w.publish(topic, [b"kept-%d" % i for i in range(8)], Ack.DURABLE)
        if not isinstance(f, PublishAck):
            raise Failed(f"a durable publish answered {f!r}", ("NMQ-S8-3",))
    target.kill()
    d = Path(target.topic_dir(topic))
    active = segments(d)[-1]
    # stray bytes after the end of the log (an unpublished run's leftovers): recovery must cut and
    # quarantine them
    write_at(active.path, active.end + 1000, bytes([0xA5]) * 100)
    trace, t_ready = _traced_start(target)
    dd = os.path.realpath(d)
    made = sorted(p for p in trace.created if os.path.dirname(p) == dd and p.endswith(".quarantine"))
    if not made:
        raise Failed(f"{topic}: the restart after a kill created no quarantine file for the 100 stray bytes after the "
                     f"end of {active.path.name} (files now: {sorted(p.name for p in d.iterdir())})", ("NMQ-S8-3",))
    bad = []
    for q in made:
        name = os.path.basename(q)
        last = trace.last_write(q, t_ready)
        if last is None:
            bad.append(f"{name} was created but nothing was written to it before the target accepted connections")
        elif not trace.data_syncs(q, last, t_ready):
            bad.append(f"{name} was not synced after its last write and before the target accepted connections")
        if not trace.dir_syncs(dd, trace.created[q], t_ready):
            bad.append(f"the topic directory was not synced after {name} was created and before the target "
                       "accepted connections")
    if bad:
        raise Failed("; ".join(bad) + ": a power loss could lose the cut bytes", ("NMQ-S8-3",))
    ctx.note(f"{len(made)} quarantine file(s) created by the recovery, each synced with its directory")
