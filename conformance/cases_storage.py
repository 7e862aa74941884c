"""Layer (e), storage: the on-disk format of spec/storage.md, recovery, damage and what survives it.

Only for targets that declare the reference on-disk format (``storage_format = "nanomq-v1"``, which
the default target, the reference broker launched by the kit, does) and that the kit launches
(it stops, kills and restarts them). Each case builds topics over the wire, inspects their files
(while the target runs, or between a stop and a start), damages them the way a disk, an operator
or a crash would, restarts the target and checks over the wire what it delivers, what it refuses
and which ids it hands out. Rule IDs name the check that failed; a case groups the scenarios that
share a stop/start (each restart costs about a second).

Timestamps are compared with the kit's clock: the kit runs on the target's host (127.0.0.1).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import platform
import random
import re
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conformance.helpers import known_rule
from conformance.registry import Context, Failed, Skipped, Unimplemented, case, soft_check
from conformance.wire import Closed, WireClient
from nanomq._c.crc import crc32c
from nanomq.protocol import (
    Ack,
    Capability,
    Deliver,
    Error,
    ErrorCode,
    Metadata,
    MetadataOk,
    Ping,
    Pong,
    ProtocolError,
    Publish,
    PublishAck,
    Record,
    RecordBatch,
    Start,
    Subscribed,
    TopicInfo,
)

__all__ = ["DiskRecord", "parse_segment", "parse_index", "parse_checkpoint"]

HEADER = 64
ZERO8 = bytes(8)
_SEG = re.compile(r"^(\d{20})\.log$")
_IDX = re.compile(r"^(\d{20})\.idx$")
_HDR = struct.Struct("<QQIIIIQQI12s")
_CKPT = struct.Struct("<8sIIQQQQI12s")
_IDXH = struct.Struct("<8sIIQQQQQI4s")
_ENTRY = struct.Struct("<QQQ")
INDEX_INTERVAL = 4096


def span(size: int) -> int:
    """Bytes a record of ``size`` payload bytes occupies: align8(64 + size) [NMQ-S3-2]."""
    return (HEADER + size + 7) & ~7


def record_crc(raw: bytes) -> int:
    """CRC-32C of a stored record: header with the crc field zero, then the payload [NMQ-S3-1]."""
    size = struct.unpack_from("<I", raw, 20)[0]
    hdr = raw[:24] + ZERO8[:4] + raw[28:HEADER]
    return crc32c(raw[HEADER:HEADER + size], crc32c(hdr))


# ---------------------------------------------------------------- reading the files

@dataclass(frozen=True, slots=True)
class DiskRecord:
    """One record as found in a segment file."""

    offset: int
    raw: bytes
    """The record's ``span`` bytes: header, payload, padding."""
    id: int
    ts: int
    topic_id: int
    size: int
    crc: int
    flags: int
    producer_id: int
    sequence: int
    raw_size: int
    reserved: bytes

    @property
    def payload(self) -> bytes:
        return self.raw[HEADER:HEADER + self.size]

    @property
    def end(self) -> int:
        return self.offset + len(self.raw)


def parse_segment(data: bytes) -> tuple[list[DiskRecord], int]:
    """Walk records from offset 0 until an all-zero id word or a header that does not fit; returns
    the records and the offset where the walk stopped (no CRC check here)."""
    out: list[DiskRecord] = []
    off = 0
    while len(data) - off >= HEADER and data[off:off + 8] != ZERO8:
        f = _HDR.unpack_from(data, off)
        sp = span(f[3])
        if sp > len(data) - off:
            break
        out.append(DiskRecord(off, bytes(data[off:off + sp]), *f))
        off += sp
    return out, off


@dataclass(slots=True)
class Segment:
    first_id: int
    path: Path
    data: bytes
    records: list[DiskRecord]
    end: int

    @property
    def last_id(self) -> int:
        return self.records[-1].id if self.records else self.first_id - 1


def segments(d: Path) -> list[Segment]:
    """The segment files of a topic directory, in id order, parsed."""
    out = []
    for p in sorted(d.iterdir()):
        m = _SEG.match(p.name)
        if m and p.is_file():
            data = p.read_bytes()
            recs, end = parse_segment(data)
            out.append(Segment(int(m.group(1)), p, data, recs, end))
    return out


@dataclass(frozen=True, slots=True)
class Checkpoint:
    magic: bytes
    version: int
    flags: int
    seg: int
    offset: int
    next_id: int
    last_ts: int
    crc: int
    tail: bytes
    crc_ok: bool


def parse_checkpoint(data: bytes) -> Checkpoint | None:
    """The 64-byte checkpoint [NMQ-S5-1], or None when the file has another length."""
    if len(data) != 64:
        return None
    f = _CKPT.unpack(data)
    ok = crc32c(data[:48] + bytes(4) + data[52:]) == f[7]
    return Checkpoint(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], crc_ok=ok)


@dataclass(frozen=True, slots=True)
class Index:
    magic: bytes
    version: int
    entry_size: int
    first_id: int
    last_id: int
    last_ts: int
    length: int
    count: int
    crc: int
    tail: bytes
    entries: list[tuple[int, int, int]]
    crc_ok: bool
    size_ok: bool


def parse_index(data: bytes) -> Index | None:
    """An index file [NMQ-S4-1], or None when it is shorter than its header."""
    if len(data) < 64:
        return None
    f = _IDXH.unpack_from(data)
    n = f[7]
    size_ok = len(data) == 64 + 24 * n
    entries = [_ENTRY.unpack_from(data, 64 + 24 * i) for i in range(min(n, (len(data) - 64) // 24))]
    ok = crc32c(data[:56] + bytes(4) + data[60:]) == f[8]
    return Index(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], entries=entries, crc_ok=ok,
                 size_ok=size_ok)


def expected_entries(recs: list[DiskRecord]) -> list[tuple[int, int, int]]:
    """The sparse index [NMQ-S4-2] of a segment's records: the first record, then the first record
    at or beyond 4096 bytes after the previous entry."""
    out: list[tuple[int, int, int]] = []
    due = 0
    for r in recs:
        if r.offset >= due:
            out.append((r.id, r.ts, r.offset))
            due = r.offset + INDEX_INTERVAL
    return out


def fixed_index(data: bytearray) -> bytes:
    """An index with its CRC recomputed (to build indexes that lie with a valid CRC)."""
    struct.pack_into("<I", data, 56, 0)
    struct.pack_into("<I", data, 56, crc32c(bytes(data)))
    return bytes(data)


# ---------------------------------------------------------------- damaging the files

def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ (1 << bit)]))


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def remove_segment(path: Path) -> None:
    """Delete a segment and its index."""
    path.unlink()
    path.with_suffix(".idx").unlink(missing_ok=True)


def try_lock(path: Path) -> bool:
    """Whether this process can take the exclusive flock on ``path`` (released at once)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    finally:
        os.close(fd)  # closing releases the lock
    return True


# ---------------------------------------------------------------- the wire side

@dataclass
class Read:
    """What a subscription delivered until it stopped."""

    sub: Subscribed | Error
    records: list[tuple[Record, bytes]] = field(default_factory=list)
    """Each delivered record with its stored bytes as sent."""
    end: str = "count"
    """count (as many as asked), idle (nothing more came), error (ERROR frame), closed, bad-frame."""
    error: Error | None = None
    detail: str = ""

    @property
    def ids(self) -> list[int]:
        return [r.id for r, _ in self.records]


def _raw_records(d: Deliver) -> list[tuple[Record, bytes]]:
    data = d.records.data
    offs = list(d.records.offsets) + [len(data)]
    return [(d.records[i], bytes(data[offs[i]:offs[i + 1]])) for i in range(d.records.count)]


def read(w: WireClient, topic: str, start: Start = Start.EARLIEST, value: int = 0, count: int | None = None,
         timeout: float = 20.0, idle: float = 0.6, linger: float = 0.0, credit: int = 0xFFFFFFFF) -> Read:
    """SUBSCRIBE and collect deliveries: until ``count`` records (None: SUBSCRIBED's end_id - next_id)
    arrived (then ``linger`` more seconds, to see records that should not come), an ERROR, the
    connection closing, a frame the codec rejects, or ``idle`` seconds without a frame."""
    rid = w.next_id()
    from nanomq.protocol import Subscribe

    w.send(Subscribe(rid, topic, start, value, credit, ""))
    first = w.recv_response()
    out = Read(first if isinstance(first, Subscribed | Error) else Error(0, 0, f"unexpected {first!r}", ""))
    if not isinstance(out.sub, Subscribed):
        out.end = "error"
        return out
    want = count if count is not None else max(0, out.sub.end_id - out.sub.next_id)
    deadline = time.monotonic() + timeout
    lingering: float | None = None
    while True:
        now = time.monotonic()
        if len(out.records) >= want and lingering is None:
            if linger <= 0:
                return out
            lingering = now + linger
        limit = min(deadline, lingering) if lingering is not None else deadline
        if now >= limit:
            if lingering is None:
                out.end = "idle"
            return out
        try:
            f = w.recv(min(idle if lingering is None else limit - now, limit - now))
        except TimeoutError:
            if lingering is None:
                out.end = "idle"
            return out
        except Closed as e:
            out.end, out.detail = "closed", str(e)
            return out
        except ProtocolError as e:
            out.end, out.detail = "bad-frame", f"{e.code.name} {e.rule}: {e.message}"
            return out
        if isinstance(f, Deliver):
            if f.sub_id == out.sub.sub_id:
                out.records.extend(_raw_records(f))
            continue
        if isinstance(f, Error):
            out.end, out.error = "error", f
            return out
        out.end, out.detail = "error", f"unexpected {f!r}"
        return out


def publish(w: WireClient, topic: str, payloads: list[bytes], ack: Ack = Ack.WRITTEN, **kw: object) -> PublishAck:
    """A PUBLISH that must be acknowledged."""
    rid = w.next_id()
    w.send(Publish(rid, topic, ack, RecordBatch.from_payloads(payloads, **{**w.batch_limits(), **kw})))  # type: ignore[arg-type]
    f = w.recv_response(30.0)
    if not isinstance(f, PublishAck) or f.count != len(payloads):
        raise Failed(f"PUBLISH of {len(payloads)} record(s) to {topic} answered {f!r}")
    return f


def metadata(w: WireClient, topic: str) -> TopicInfo | Error:
    w.send(Metadata(w.next_id(), topic))
    f = w.recv_response()
    if isinstance(f, MetadataOk) and len(f.topics) == 1:
        return f.topics[0]
    if isinstance(f, Error):
        return f
    raise Failed(f"METADATA {topic} answered {f!r}", ("NMQ-4.9-1",))


def ping(w: WireClient) -> bool:
    rid = w.next_id()
    try:
        w.send(Ping(rid, 77))
        return w.recv_response(5.0) == Pong(rid, 77)
    except (Closed, TimeoutError, OSError, ProtocolError):
        return False


class Payloads:
    """Unique, recognisable payloads: ``<tag:n>`` then bytes from a seeded RNG."""

    def __init__(self, tag: str, rng: random.Random) -> None:
        self.tag, self.rng, self.n = tag, rng, 0

    def make(self, size: int) -> bytes:
        head = f"<{self.tag}:{self.n}>".encode()
        self.n += 1
        if size <= len(head):
            return head[:size]
        return head + self.rng.randbytes(size - len(head))


@dataclass
class Filled:
    """Records published to a topic: id -> payload, and the batches as (first_id, count)."""

    payloads: dict[int, bytes] = field(default_factory=dict)
    batches: list[tuple[int, int]] = field(default_factory=list)
    last_ts_window: tuple[int, int] = (0, 0)

    @property
    def next_id(self) -> int:
        return max(self.payloads, default=0) + 1

    def add(self, ack: PublishAck, payloads: list[bytes]) -> None:
        for i, p in enumerate(payloads):
            self.payloads[ack.first_id + i] = p
        self.batches.append((ack.first_id, len(payloads)))


def fill(w: WireClient, topic: str, gen: Payloads, got: Filled, nbytes: int, size: int = 16384, per: int = 64,
         ack: Ack = Ack.WRITTEN) -> None:
    """Publish about ``nbytes`` of payload in batches of ``per`` records of ``size`` bytes."""
    sent = 0
    while sent < nbytes:
        ps = [gen.make(size) for _ in range(per)]
        got.add(publish(w, topic, ps, ack), ps)
        sent += size * per


def fill_until_segments(ctx: Context, w: WireClient, topic: str, gen: Payloads, got: Filled, n_segments: int,
                        limit: int = 160 << 20, size: int = 16384) -> None:
    """Publish batches of up to 1 MiB (records of ``size`` bytes) until the topic has ``n_segments``
    segment files (the target's segment size is unknown to the kit; the reference broker's is 8 MB)."""
    d = ctx.target.topic_dir(topic)
    size = min(size, ctx.max_payload)
    per = max(1, min(64, ctx.max_batch, (1 << 20) // size))
    sent = 0
    while not d.is_dir() or len([p for p in d.iterdir() if _SEG.match(p.name)]) < n_segments:
        if sent > limit:
            raise Skipped(f"{limit >> 20} MiB published to one topic without {n_segments} segment files: the "
                          "target's segments are too large for this case")
        fill(w, topic, gen, got, size * per, size, per)
        sent += size * per


# ---------------------------------------------------------------- running a case

def _need(ctx: Context) -> None:
    if ctx.target.spec.storage_format != "nanomq-v1":
        raise Skipped("target does not declare storage_format = nanomq-v1")
    if not ctx.target.can_crash:
        raise Skipped("no launch command: the kit cannot stop, damage and restart the target")


def _running(ctx: Context) -> bool:
    p = ctx.target.proc
    if p is None:
        return False
    try:
        os.killpg(p.pid, 0)
    except ProcessLookupError:
        return False
    return True


class Checks:
    """Failures collected over a case's scenarios, each with the rules it broke; raised together at
    the end, so one scenario's failure does not hide another's."""

    def __init__(self) -> None:
        self.failures: list[tuple[str, tuple[str, ...]]] = []

    def check(self, cond: object, message: str, *rules: str) -> bool:
        if not cond:
            self.failures.append((message, rules))
        return bool(cond)

    @contextlib.contextmanager
    def scenario(self, name: str, *rules: str) -> Iterator[None]:
        """Checks of one scenario: an unexpected exception inside fails ``rules`` (and skips the rest
        of the scenario, not of the case)."""
        try:
            yield
        except (Skipped, Unimplemented):
            raise
        except Failed as e:
            self.failures.append((f"{name}: {e}", e.rules or rules))
        except Exception as e:
            self.failures.append((f"{name}: {type(e).__name__}: {e}", rules))

    def done(self) -> None:
        if self.failures:
            rules = tuple(dict.fromkeys(r for _, rs in self.failures for r in rs))
            raise Failed(" | ".join(m for m, _ in self.failures[:6])
                         + (f" | (+{len(self.failures) - 6} more)" if len(self.failures) > 6 else ""), rules)


def restart(ctx: Context, checks: Checks, damaged: list[str], how: str = "start", *rules: str,
            strays: tuple[bytes, ...] = ()) -> bool:
    """Start the target after the kit damaged ``damaged`` topics (and made the files or directories
    ``strays``). If it cannot start, that fails ``rules``; the damaged topics and the strays are then
    deleted and the target started again, so that the cases after this one still have a target."""
    try:
        ctx.target.start()
        return True
    except Exception as e:
        checks.check(False, f"the target did not start after {how}: {e}", *rules)
    for t in damaged:
        shutil.rmtree(ctx.target.topic_dir(t), ignore_errors=True)
    for p in strays:
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(p)
    with contextlib.suppress(Exception):
        ctx.target.stop()
    ctx.target.start()
    return False


@contextlib.contextmanager
def running_at_exit(ctx: Context) -> Iterator[None]:
    """However the case ends, leave the target running for the next case."""
    try:
        yield
    finally:
        if not _running(ctx):
            ctx.target.start()


def compare(checks: Checks, label: str, got: Read, want: dict[int, bytes], ids: list[int], *rules: str,
            disk: dict[int, bytes] | None = None) -> bool:
    """The records delivered are exactly ``ids``, in order, with the payloads ``want`` (and, if
    ``disk`` is given, byte-identical to those stored bytes)."""
    if got.ids != ids:
        extra = [i for i in got.ids if i not in set(ids)]
        checks.check(False, f"{label}: delivered {len(got.ids)} record(s) {_span_text(got.ids)}, expected "
                     f"{len(ids)} {_span_text(ids)}{f'; unexpected ids {extra[:5]}' if extra else ''} "
                     f"(ended: {got.end} {got.detail or (got.error.message if got.error else '')})", *rules)
        return False
    for r, raw in got.records:
        if r.payload != want.get(r.id):
            checks.check(False, f"{label}: record {r.id} delivered with other bytes than were published", *rules)
            return False
        if disk is not None and raw != disk.get(r.id):
            checks.check(False, f"{label}: record {r.id} delivered with other bytes than stored", *rules)
            return False
    return True


def _span_text(ids: list[int]) -> str:
    if not ids:
        return "(none)"
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return f"{ids[0]}..{ids[-1]}"
    return f"{ids[:4]}..{ids[-2:]}"


def quarantine_files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.name.endswith(".quarantine")}


# ================================================================ cases

_FORMAT_RULES = ("NMQ-S2-1", "NMQ-S2-2", "NMQ-S2-3", "NMQ-S2-4", "NMQ-S3-1", "NMQ-S3-2", "NMQ-S3-3", "NMQ-S3-4",
                 "NMQ-S3-5", "NMQ-S3-6", "NMQ-S4-1", "NMQ-S4-2", "NMQ-S4-3", "NMQ-S4-4", "NMQ-S5-1", "NMQ-S5-2",
                 "NMQ-S5-3", "NMQ-S6-1", "NMQ-S6-2")


def _check_layout(checks: Checks, label: str, d: Path, segs: list[Segment]) -> None:
    names = {p.name for p in d.iterdir()}
    checks.check("checkpoint" in names and "lock" in names and segs,
                 f"{label}: the topic directory lacks a segment, the checkpoint or the lock: {sorted(names)}",
                 "NMQ-S2-1")
    for n in names:
        if n.endswith(".log") or n.endswith(".idx"):
            checks.check(_SEG.match(n) or _IDX.match(n), f"{label}: {n} is not named <20 digits>.log/.idx",
                         "NMQ-S2-2")
        if _IDX.match(n):
            checks.check(n[:20] + ".log" in names, f"{label}: index {n} has no segment with its stem", "NMQ-S2-2")
    for s in segs:
        if s.records:
            checks.check(s.records[0].id == s.first_id,
                         f"{label}: {s.path.name} starts with record {s.records[0].id}, not the id in its name",
                         "NMQ-S3-4", "NMQ-S2-2")
    for a, b in zip(segs, segs[1:], strict=False):
        checks.check(b.first_id == a.last_id + 1, f"{label}: {b.path.name} follows {a.path.name}, whose last id is "
                     f"{a.last_id}: segments are not contiguous", "NMQ-S2-3")
    if segs:
        checks.check(segs[0].first_id == 1, f"{label}: the log of a new topic starts at {segs[0].first_id}, not 1",
                     "NMQ-S3-4")


def _check_records(checks: Checks, label: str, segs: list[Segment], topic_id: int, delivered: dict[int, bytes],
                   published: dict[int, bytes], meta: dict[int, tuple[int, int, int, int]],
                   windows: dict[int, tuple[int, int]]) -> None:
    """Every record on disk: byte-identical to its delivery, header fields, CRC, padding, ids,
    timestamps (non-decreasing, within the publish->ack window)."""
    prev_ts = 0
    expect_id = segs[0].first_id if segs else 1
    bad = {"S3-1": 0, "S3-2": 0, "S3-4": 0, "S3-5": 0, "S6-1": 0}
    first_bad: dict[str, str] = {}

    def fail(rule: str, text: str) -> None:
        bad[rule] += 1
        first_bad.setdefault(rule, text)

    for s in segs:
        off = 0
        for r in s.records:
            if r.offset != off:
                fail("S3-2", f"record {r.id} at offset {r.offset} of {s.path.name}, expected {off}")
            off = r.end
            if r.id != expect_id:
                fail("S3-4", f"record {r.id} where id {expect_id} was expected ({s.path.name} @{r.offset})")
            expect_id = r.id + 1
            if r.raw[HEADER + r.size:] != bytes(len(r.raw) - HEADER - r.size) or len(r.raw) != span(r.size):
                fail("S3-2", f"record {r.id}: padding is not zero or the record is not align8(64 + size) bytes")
            if r.raw != delivered.get(r.id):
                fail("S3-1", f"record {r.id}: the bytes on disk differ from the bytes delivered")
            if (r.payload != published.get(r.id) or r.topic_id != topic_id or r.reserved != bytes(12)
                    or record_crc(r.raw) != r.crc or (r.flags, r.producer_id, r.sequence, r.raw_size)
                    != meta.get(r.id, (0, 0, 0, 0))):
                fail("S3-1", f"record {r.id}: a header field or the payload differs from what was published "
                     f"(topic_id {r.topic_id}/{topic_id}, crc ok {record_crc(r.raw) == r.crc}, reserved "
                     f"{r.reserved.hex()}, flags/producer/sequence/raw_size {(r.flags, r.producer_id, r.sequence, r.raw_size)})")
            if r.ts < prev_ts:
                fail("S3-5", f"record {r.id} has timestamp {r.ts} below the previous one's {prev_ts}")
            prev_ts = max(prev_ts, r.ts)
            w = windows.get(r.id)
            if w is not None and not (w[0] - 2_000_000 <= r.ts <= w[1] + 2_000_000):
                fail("S6-1", f"record {r.id} is stamped {r.ts}, outside its publish->ack window {w}")
    missing = [i for i in published if i >= expect_id]
    if missing:
        fail("S3-4", f"records {_span_text(missing)} were acknowledged but are not in the segment files")
    for rule, n in bad.items():
        checks.check(n == 0, f"{label}: {n} record(s) break it, first: {first_bad.get(rule)}", f"NMQ-{rule}")


def _check_index(checks: Checks, label: str, s: Segment, path: Path) -> None:
    if not checks.check(path.exists(), f"{label}: {s.path.name} has no index file {path.name}", "NMQ-S4-3"):
        return
    ix = parse_index(path.read_bytes())
    if not checks.check(ix is not None, f"{label}: {path.name} is shorter than its header", "NMQ-S4-1"):
        return
    assert ix is not None
    last = s.records[-1] if s.records else None
    fields = {
        "magic": (ix.magic, b"NMQIDX01"), "version": (ix.version, 1), "entry size": (ix.entry_size, 24),
        "first_id": (ix.first_id, s.first_id), "last_id": (ix.last_id, s.last_id),
        "last timestamp": (ix.last_ts, last.ts if last else ix.last_ts), "valid length": (ix.length, s.end),
        "CRC": (ix.crc_ok, True), "file size": (ix.size_ok, True), "reserved": (ix.tail, bytes(4)),
    }
    wrong = [f"{k} {v[0]!r} (expected {v[1]!r})" for k, v in fields.items() if v[0] != v[1]]
    checks.check(not wrong, f"{label}: {path.name}: " + ", ".join(wrong), "NMQ-S4-1")
    want = expected_entries(s.records)
    checks.check(ix.entries == want, f"{label}: {path.name} has {len(ix.entries)} entries, the sparse index of its "
                 f"records has {len(want)}; first difference at "
                 f"{next((i for i, (a, b) in enumerate(zip(ix.entries, want, strict=False)) if a != b), min(len(want), len(ix.entries)))}",
                 "NMQ-S4-2")


def _fill_to_the_byte(ctx: Context, w: WireClient, topic: str, gen: Payloads, got: Filled) -> bool:
    """Publish one batch whose records fill the active segment to exactly the declared segment size,
    then one record more: a segment is rotated only when the next batch would not fit ([NMQ-S3-6]),
    so the batch stays and the record starts the next segment. False when the target declares no
    segment size, or its limits cannot make such a batch."""
    seg_bytes = ctx.target.spec.segment_bytes
    if seg_bytes <= 0 or seg_bytes % 8:
        return False
    room = seg_bytes - segments(ctx.target.topic_dir(topic))[-1].end  # records end on 8-byte boundaries
    big = (HEADER + ctx.max_payload) // 8 * 8  # the largest span a record of at most max_payload can have
    k, rest = divmod(room, big)
    spans = [big] * k
    if rest:  # split the last full span and the rest into two spans of at least a header each
        if not spans or big + rest < 2 * HEADER:
            return False
        whole = spans.pop() + rest
        half = whole // 2 // 8 * 8
        spans += [half, whole - half]
    if not spans or len(spans) > ctx.max_batch:
        return False
    ps = [gen.make(x - HEADER) for x in spans]
    got.add(publish(w, topic, ps), ps)
    ps = [gen.make(8)]
    got.add(publish(w, topic, ps), ps)
    return True


@case("storage.format", "segment, index and checkpoint files are named and laid out as spec/storage.md §2-§6 says, "
      "byte-identical to what is delivered; the active segment is preallocated, its index written at a clean close "
      "and deleted at the next open, the checkpoint clean after a stop and unclean while running",
      layer="storage", rules=_FORMAT_RULES)
def storage_format(ctx: Context) -> None:
    _need(ctx)
    checks = Checks()
    big, small = ctx.topic("fmt"), ctx.topic("fmt1")
    dbig, dsmall = ctx.target.topic_dir(big), ctx.target.topic_dir(small)
    gen = Payloads(big, ctx.rng)
    got = Filled()
    meta: dict[int, tuple[int, int, int, int]] = {}
    windows: dict[int, tuple[int, int]] = {}
    mp = ctx.max_payload
    # every size class up to the target's max_payload (a target may announce a small one)
    sizes = sorted({x for x in (0, 1, 7, 8, 9, 15, 16, 17, 55, 56, 57, 63, 64, 65, 127, 128, 129, 1000, 4095, 4096,
                                4097, mp - 1, mp) if 0 <= x <= mp})
    with running_at_exit(ctx), ctx.client() as w:
        publish(w, small, [b"x"])
        for k in range(0, len(sizes), 5):  # mixed sizes in one batch
            ps = [gen.make(s) for s in sizes[k:k + 5]]
            t0 = time.time_ns()
            a = publish(w, big, ps, Ack.DURABLE if k % 2 else Ack.WRITTEN)
            t1 = time.time_ns()
            got.add(a, ps)
            for i in range(len(ps)):
                windows[a.first_id + i] = (t0, t1)
        if ctx.has(Capability.COMPRESSION_LZ4):
            import lz4.block

            text = (b"compressible " * 100)[:mp]
            ps = [lz4.block.compress(text, store_size=False)]
            a = publish(w, big, ps, flags=[1], raw_sizes=[len(text)])
            got.add(a, ps)
            meta[a.first_id] = (1, 0, 0, len(text))
        # rotation: fill until a second segment exists, then some more in it
        fill_until_segments(ctx, w, big, gen, got, 2)
        fill(w, big, gen, got, 100_000, 1000, 50)
        exact = _fill_to_the_byte(ctx, w, big, gen, got)
        sub = w.subscribe(big)
        if not isinstance(sub, Subscribed):
            raise Failed(f"SUBSCRIBE {big} answered {sub!r}", ("NMQ-S3-1",))
        topic_id = sub.topic_id
        w.close()
        # while running: the checkpoint is unclean and points at the newest segment (rotation)
        with checks.scenario("while running", "NMQ-S5-2", "NMQ-S5-3", "NMQ-S6-2", "NMQ-S2-4"):
            segs_now = segments(dbig)
            newest = segs_now[-1]
            # the checkpoint moves when the rotated-out segment is sealed, which a log may do after the
            # rotation (at its next sync, NMQ-S3-7): give that sync a few seconds
            deadline = time.monotonic() + 5.0
            while True:
                ck = parse_checkpoint((dbig / "checkpoint").read_bytes())
                if (ck is not None and (ck.seg, ck.offset, ck.next_id) == (newest.first_id, 0, newest.first_id)
                        or time.monotonic() > deadline):
                    break
                time.sleep(0.05)
            checks.check(ck is not None and ck.crc_ok and ck.flags & 1 == 0,
                         f"while running, {big}'s checkpoint is {ck!r}: not a valid unclean one", "NMQ-S5-3")
            checks.check(ck is not None and (ck.seg, ck.offset, ck.next_id) == (newest.first_id, 0, newest.first_id),
                         f"5 s after the rotation to {newest.path.name}, the checkpoint says segment "
                         f"{ck.seg if ck else '?'} offset {ck.offset if ck else '?'} next id {ck.next_id if ck else '?'} "
                         f"(expected {newest.first_id}, 0, {newest.first_id})", "NMQ-S5-2")
            sealed_max = max((s.path.stat().st_size for s in segs_now[:-1]), default=0)
            for d in (dbig, dsmall):
                act_path = segments(d)[-1].path
                st = act_path.stat()
                checks.check(st.st_size >= max(4096, sealed_max) and st.st_blocks * 512 >= st.st_size,
                             f"active segment {d.name}/{act_path.name}: {st.st_size} bytes, {st.st_blocks * 512} allocated "
                             f"(largest sealed segment {sealed_max}): not preallocated to a full segment", "NMQ-S6-2")
                seg_bytes = ctx.target.spec.segment_bytes
                if seg_bytes > 0:
                    # its full size is the declared segment size (a file system may round it up to
                    # a page), unless it holds a batch larger than that, which gets a segment of
                    # its own as large as it needs [NMQ-S3-6]
                    data_end = segments(d)[-1].end
                    full = max(-(-seg_bytes // 4096) * 4096, -(-data_end // 4096) * 4096)
                    checks.check(st.st_size <= full, f"active segment {d.name}/{act_path.name} is {st.st_size} bytes, "
                                 f"more than the declared segment size {seg_bytes} (its records end at {data_end})",
                                 "NMQ-S6-2")
                checks.check(not try_lock(d / "lock"), f"{d.name}/lock is not flocked by the running target",
                             "NMQ-S2-4")
        with ctx.client() as w2:
            delivered = read(w2, big, count=len(got.payloads))
        checks.check(delivered.ids == sorted(got.payloads), f"before the stop, {big} delivered "
                     f"{_span_text(delivered.ids)} of {_span_text(sorted(got.payloads))} ({delivered.end})", "NMQ-S3-4")
        raw = {r.id: b for r, b in delivered.records}
        # the stop comes while new topics are still being created (more than a broker creates at once): it is
        # a clean stop all the same
        late = [ctx.client() for _ in range(30)]
        try:
            for k, c in enumerate(late):
                c.send(Publish(c.next_id(), ctx.topic(f"fmtlate{k}"), Ack.WRITTEN, RecordBatch.from_payloads([b"l"])))
            time.sleep(0.005)
            ctx.target.stop()
        finally:
            for c in late:
                c.close()
        with checks.scenario("after a clean stop", *_FORMAT_RULES):
            for d in (dbig, dsmall):
                checks.check(try_lock(d / "lock"), f"{d.name}/lock is still locked after the target stopped",
                             "NMQ-S2-4")
            segs = segments(dbig)
            _check_layout(checks, big, dbig, segs)
            _check_layout(checks, small, dsmall, segments(dsmall))
            _check_records(checks, big, segs, topic_id, raw, got.payloads, meta, windows)
            act = segs[-1]
            checks.check(act.data[act.end:] == bytes(len(act.data) - act.end),
                         f"{act.path.name}: non-zero bytes after the last record", "NMQ-S3-3")
            for s in segs:
                _check_index(checks, big, s, s.path.with_suffix(".idx"))
            # [NMQ-S3-6] (SHOULD): a batch is never split; a segment is sealed only when the next batch did not fit
            cap = act.path.stat().st_size
            if not exact:
                ctx.note("no batch filled a segment to the byte (no segment_bytes declared, or the limits cannot)")
            seg_of = {r.id: s.first_id for s in segs for r in s.records}
            for first, n in got.batches:
                checks.check(len({seg_of.get(first + i) for i in range(n)}) == 1,
                             f"batch {first}..{first + n - 1} is split across segments", "NMQ-S3-6")
            for s, nxt in zip(segs, segs[1:], strict=False):
                b = next(((f, n) for f, n in got.batches if f == nxt.first_id), None)
                if b is not None:
                    need = sum(r.end - r.offset for r in nxt.records if r.id < b[0] + b[1])
                    checks.check(s.end + need > cap, f"{s.path.name} was sealed at {s.end} bytes although the next "
                                 f"batch ({need} bytes) fit in {cap}", "NMQ-S3-6")
                if s.path.stat().st_size != s.end:
                    ctx.note(f"{s.path.name}: sealed but not truncated to its records ({s.path.stat().st_size} bytes)")
            for d, s_list in ((dbig, segs), (dsmall, segments(dsmall))):
                ck = parse_checkpoint((d / "checkpoint").read_bytes())
                tail_seg = s_list[-1]
                want = (b"NMQCKPT1", 1, 1, tail_seg.first_id, tail_seg.end, tail_seg.last_id + 1,
                        tail_seg.records[-1].ts if tail_seg.records else None, True, bytes(12))
                have = None if ck is None else (ck.magic, ck.version, ck.flags, ck.seg, ck.offset, ck.next_id,
                                                ck.last_ts, ck.crc_ok, ck.tail)
                checks.check(have == want, f"{d.name}: the clean checkpoint is (magic, version, flags, segment, "
                             f"offset, next id, last ts, crc ok, tail) {have}, expected {want}", "NMQ-S5-1", "NMQ-S5-2")
            active_idx = {d: segments(d)[-1].path.with_suffix(".idx") for d in (dbig, dsmall)}
        ctx.target.start()
        with checks.scenario("after the restart", "NMQ-S4-4", "NMQ-S5-3", "NMQ-S4-3", "NMQ-S3-4", "NMQ-S3-5"):
            for d, p in active_idx.items():
                checks.check(not p.exists(), f"{d.name}/{p.name}: the active segment's index survived the open",
                             "NMQ-S4-4")
                ck = parse_checkpoint((d / "checkpoint").read_bytes())
                checks.check(ck is not None and ck.crc_ok and ck.flags & 1 == 0,
                             f"{d.name}: after the open, before any append, the checkpoint is {ck!r}: still clean",
                             "NMQ-S5-3")
            with ctx.client() as w3:
                again = read(w3, big, count=len(got.payloads))
                compare(checks, "after a clean restart", again, got.payloads, sorted(got.payloads), "NMQ-S4-3",
                        disk=raw)
                t0 = time.time_ns()
                a = publish(w3, big, [b"after"])
                checks.check(a.first_id == got.next_id, f"the first id after the restart is {a.first_id}, not "
                             f"{got.next_id}", "NMQ-S3-4")
                after = read(w3, big, Start.ID, a.first_id, count=1)
                checks.check(after.records and after.records[0][0].timestamp_ns >= max(
                    r.timestamp_ns for r, _ in delivered.records) and after.records[0][0].timestamp_ns >= t0 - 2_000_000,
                             "the first record after the restart has a timestamp below the last one before it",
                             "NMQ-S3-5")
    checks.done()


def _last_nonzero(data: bytes, start: int) -> int:
    """One past the last non-zero byte of ``data`` at or after ``start`` (``start`` if none)."""
    stripped = data[start:].rstrip(b"\0")
    return start + len(stripped)


def _check_quarantine(checks: Checks, label: str, d: Path, seg: Segment, damaged: bytes, off: int, *rules: str) -> None:
    """[NMQ-S8-3]: the bytes cut at ``off`` are in ``<segment>.log.<off>.quarantine``, from the cut to
    (at least) the last non-zero byte, and the segment is zero from there on (restored I2)."""
    name = f"{seg.path.name}.{off}.quarantine"
    q = d / name
    last = _last_nonzero(damaged, off)
    if not checks.check(q.exists(), f"{label}: no {name} after the cut at offset {off} (quarantine files: "
                        f"{sorted(quarantine_files(d))})", *rules):
        return
    data = q.read_bytes()
    # a copy may run on past the file's old end into zeros (a file cut to a size that is not a
    # multiple of 8 reads as zero to the end of its last word, and the owner may extend it)
    as_was = damaged + bytes(max(0, off + len(data) - len(damaged)))
    checks.check(len(data) >= last - off and data == as_was[off:off + len(data)],
                 f"{label}: {name} holds {len(data)} bytes, not the {last - off} cut bytes as they were", *rules)


@case("storage.unclean", "after a kill: intact records all kept (also those a stale index of the active segment "
      "would hide), the checkpoint rewritten at the end of the log, a torn last record, an unpublished last run and "
      "stray bytes after the end cut and copied to <segment>.log.<offset>.quarantine with the tail zeroed, a bit flip "
      "or a zeroed header before valid records never delivered (nor anything after), ids continuing from the cut",
      layer="storage",
      rules=("NMQ-S2-4", "NMQ-S3-3", "NMQ-S3-4", "NMQ-S3-5", "NMQ-S4-4", "NMQ-S5-2", "NMQ-S5-3", "NMQ-S8-1",
             "NMQ-S8-2", "NMQ-S8-3", "NMQ-S8-4", "NMQ-S9-1", "NMQ-S9-2", "NMQ-S6-2"))
def storage_unclean(ctx: Context) -> None:
    _need(ctx)
    checks = Checks()
    names = {k: ctx.topic(f"u{k}") for k in ("plain", "torn", "unpub", "garb", "odd", "flip", "zero", "stale")}
    dirs = {k: ctx.target.topic_dir(t) for k, t in names.items()}
    got = {k: Filled() for k in names}
    gens = {k: Payloads(t, ctx.rng) for k, t in names.items()}
    with running_at_exit(ctx):
        with ctx.client() as w:
            for k, t in names.items():
                for _ in range(4):
                    ps = [gens[k].make(200) for _ in range(5)]
                    got[k].add(publish(w, t, ps, Ack.DURABLE), ps)
        ctx.target.stop()
        stale_idx = segments(dirs["stale"])[-1].path.with_suffix(".idx")
        saved_idx = stale_idx.read_bytes() if stale_idx.exists() else None
        checks.check(saved_idx is not None, f"{stale_idx.name}: no index of the active segment after a clean stop",
                     "NMQ-S4-4")
        ctx.target.start()
        with ctx.client() as w:
            for k, t in names.items():  # records after the open's checkpoint
                for n in (2, 3, 5):
                    ps = [gens[k].make(200 + 8 * n) for _ in range(n)]
                    got[k].add(publish(w, t, ps, Ack.DURABLE), ps)
        ctx.target.kill()
        checks.check(try_lock(dirs["plain"] / "lock"), "the topic's lock is still held after the owner was killed",
                     "NMQ-S2-4")
        seg = {k: segments(d)[-1] for k, d in dirs.items()}
        by_id = {k: {r.id: r for r in s.records} for k, s in seg.items()}
        for k in names:
            checks.check(sorted(by_id[k]) == sorted(got[k].payloads), f"{names[k]}: the segment holds records "
                         f"{_span_text(sorted(by_id[k]))} after the kill, {len(got[k].payloads)} were acked", "NMQ-S8-2")
        # the damage
        last = {k: max(got[k].payloads) for k in names}
        torn = by_id["torn"][last["torn"]]
        write_at(seg["torn"].path, torn.offset + HEADER + torn.size // 2, bytes(torn.end - torn.offset - HEADER - torn.size // 2))
        unpub_first = got["unpub"].batches[-1][0]
        unpub = by_id["unpub"][unpub_first]
        write_at(seg["unpub"].path, unpub.offset, ZERO8)
        garb_end = seg["garb"].end
        garbage = bytes([0xA5]) * 100
        write_at(seg["garb"].path, garb_end + 1000, garbage)
        # stray bytes up to the end of a file cut to a size that is not a multiple of 8: the last
        # ones are in a partial 8-byte word, and are cut bytes all the same
        odd_end = seg["odd"].end
        write_at(seg["odd"].path, odd_end + 1000, bytes([0x5A]) * 107)
        os.truncate(seg["odd"].path, odd_end + 1107)
        flip = by_id["flip"][last["flip"] - 4]
        flip_bit(seg["flip"].path, flip.offset + HEADER + flip.size // 2, 3)
        zero = by_id["zero"][last["zero"] - 2]
        write_at(seg["zero"].path, zero.offset, bytes(HEADER))
        if saved_idx is not None:
            stale_idx.write_bytes(saved_idx)
        damaged = {k: seg[k].path.read_bytes() for k in names}
        if not restart(ctx, checks, list(names.values()), "a kill and damage to eight topics",
                       "NMQ-S8-1", "NMQ-S8-2", "NMQ-S9-2"):
            checks.done()
        with ctx.client() as w:
            def expect(k: str, kept: list[int], next_id: int, rules_keep: tuple[str, ...],
                       rules_next: tuple[str, ...]) -> None:
                t = names[k]
                with checks.scenario(t, *rules_keep):
                    r = read(w, t)
                    compare(checks, f"{k} ({t})", r, got[k].payloads, kept, *rules_keep,
                            disk={i: by_id[k][i].raw for i in kept})
                with checks.scenario(t, *rules_next):
                    a = publish(w, t, [b"next"])
                    checks.check(a.first_id == next_id, f"{k} ({t}): the first record after the restart got id "
                                 f"{a.first_id}, expected {next_id}", *rules_next)
            ids = {k: sorted(got[k].payloads) for k in names}
            with checks.scenario("plain", "NMQ-S8-4", "NMQ-S5-2"):
                ck = parse_checkpoint((dirs["plain"] / "checkpoint").read_bytes())
                s = seg["plain"]
                want = (s.first_id, s.end, last["plain"] + 1, 0, True)
                have = None if ck is None else (ck.seg, ck.offset, ck.next_id, ck.flags & 1, ck.crc_ok)
                checks.check(have == want, f"after recovery from a kill the checkpoint is (segment, offset, next id, "
                             f"clean, crc ok) {have}, expected {want}", "NMQ-S8-4", "NMQ-S5-2")
            expect("plain", ids["plain"], last["plain"] + 1, ("NMQ-S8-1", "NMQ-S8-2"), ("NMQ-S3-4",))
            with checks.scenario("plain", "NMQ-S3-5"):
                r = read(w, names["plain"], Start.ID, last["plain"], count=2)
                checks.check(len(r.records) == 2 and r.records[1][0].timestamp_ns >= r.records[0][0].timestamp_ns,
                             "the first record after an unclean restart has an earlier timestamp than the last one "
                             "before it", "NMQ-S3-5")
            expect("stale", ids["stale"], last["stale"] + 1, ("NMQ-S4-4",), ("NMQ-S4-4",))
            expect("torn", ids["torn"][:-1], last["torn"], ("NMQ-S8-2",), ("NMQ-S8-2",))
            expect("unpub", [i for i in ids["unpub"] if i < unpub_first], unpub_first, ("NMQ-S8-2",), ("NMQ-S8-2",))
            expect("garb", ids["garb"], last["garb"] + 1, ("NMQ-S8-2",), ("NMQ-S8-3",))
            expect("odd", ids["odd"], last["odd"] + 1, ("NMQ-S8-2",), ("NMQ-S8-3",))
            with checks.scenario(names["odd"], "NMQ-S6-2"):
                # the segment left short by the cut is the active one again: preallocated to its full
                # size, so that no write into its mapping can meet a full disk
                st = seg["odd"].path.stat()
                full = ctx.target.spec.segment_bytes or 4096
                checks.check(st.st_size >= full and st.st_blocks * 512 >= st.st_size,
                             f"odd ({names['odd']}): after recovery the active segment {seg['odd'].path.name} is "
                             f"{st.st_size} bytes, {st.st_blocks * 512} allocated: not preallocated to a full segment "
                             f"({full} bytes)", "NMQ-S6-2")
            expect("flip", [i for i in ids["flip"] if i < flip.id], flip.id, ("NMQ-S9-1",), ("NMQ-S9-2",))
            expect("zero", [i for i in ids["zero"] if i < zero.id], zero.id, ("NMQ-S9-1",), ("NMQ-S9-2",))
        for k, off, rules in (("torn", torn.offset, ("NMQ-S8-3",)), ("unpub", unpub.offset, ("NMQ-S8-3",)),
                              ("garb", garb_end, ("NMQ-S8-3",)), ("odd", odd_end, ("NMQ-S8-3",)), ("flip", flip.offset, ("NMQ-S8-3", "NMQ-S9-2")),
                              ("zero", zero.offset, ("NMQ-S8-3", "NMQ-S9-2"))):
            with checks.scenario(names[k], *rules):
                _check_quarantine(checks, f"{k} ({names[k]})", dirs[k], seg[k], damaged[k], off, *rules)
                # the cut bytes are zero in the segment again: only the one record appended since follows the cut
                now = seg[k].path.read_bytes()
                recs, end = parse_segment(now)
                checks.check(now[end:_last_nonzero(damaged[k], off)].strip(b"\0") == b"",
                             f"{k} ({names[k]}): the bytes cut at offset {off} were not zeroed in {seg[k].path.name}",
                             "NMQ-S8-3", "NMQ-S3-3")
    checks.done()


def _await_end(w: WireClient, timeout: float) -> tuple[str, Error | None, list[Deliver]]:
    """Frames until an ERROR or the connection closes: ('error', frame) / ('closed', None) /
    ('timeout', None) / ('bad-frame', None), with the DELIVERs seen meanwhile."""
    seen: list[Deliver] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout", None, seen
        try:
            f = w.recv(left)
        except TimeoutError:
            return "timeout", None, seen
        except (Closed, OSError):
            return "closed", None, seen
        except ProtocolError:
            return "bad-frame", None, seen
        if isinstance(f, Deliver):
            seen.append(f)
        elif isinstance(f, Error):
            return "error", f, seen


def _damaged_read(checks: Checks, ctx: Context, label: str, topic: str, want: dict[int, bytes], bad_id: int,
                  start: Start = Start.EARLIEST, value: int = 0) -> None:
    """A subscription that reaches the damaged record ``bad_id``: the records before it, then ERROR
    STORAGE_ERROR (request_id 0) and the connection closed [NMQ-S9-7]; never the damaged record or
    one after it [NMQ-S9-1]."""
    first = value if start == Start.ID else min(want)
    kept = [i for i in sorted(want) if first <= i < bad_id]
    with ctx.client() as w:
        r = read(w, topic, start, value, count=len(kept), timeout=10.0)
        beyond = [i for i in r.ids if i >= bad_id]
        checks.check(not beyond and r.end != "bad-frame", f"{label}: the damaged record {bad_id} or one after it was "
                     f"delivered (ids {beyond[:3]}; {r.end} {r.detail})", "NMQ-S9-1")
        if beyond:
            return
        compare(checks, label, r, want, kept, "NMQ-S9-4", "NMQ-S8-6")
        how, err, more = (r.end, r.error, []) if r.end in ("error", "closed", "bad-frame") else _await_end(w, 10.0)
        later = [rec.id for d in more for rec in d.records]
        checks.check(not later, f"{label}: records {later[:3]} delivered after the ones before the damage",
                     "NMQ-S9-1")
        if how == "bad-frame":
            checks.check(False, f"{label}: a delivered record fails its CRC", "NMQ-S9-1")
        elif how == "timeout":
            checks.check(False, f"{label}: the subscription got neither record {bad_id} nor an answer in 10 s "
                         "(it hangs at the damage)", "NMQ-S9-7")
        else:
            checks.check(how == "error" and err is not None and err.request_id == 0
                         and err.code == ErrorCode.STORAGE_ERROR,
                         f"{label}: at the damage the subscription got {how} {err!r}, not ERROR STORAGE_ERROR with "
                         "request_id 0", "NMQ-S9-7")
            if err is not None:  # no rule broken by the client, but a rule field must be empty or a rule id
                soft_check(bool(err.message.strip()) and (not err.rule or known_rule(err.rule)), f"{label}: the ERROR "
                           f"at the damage carries message {err.message!r} and rule {err.rule!r}, which the "
                           "specifications do not define", "NMQ-8-6", "NMQ-8-5")
            if how == "error":
                try:
                    w.recv(5.0)
                    closed = False
                except (Closed, OSError, ProtocolError):
                    closed = True
                except TimeoutError:
                    closed = False
                checks.check(closed, f"{label}: the connection stayed open after ERROR {err!r}", "NMQ-S9-7")


@case("storage.read-damage", "a flipped bit in a sealed segment, in the active segment after a clean stop, and in "
      "a record's id while the target runs, is found when first read: the subscriber gets the records before it, then ERROR STORAGE_ERROR and the connection "
      "closed, never the damaged record nor one after it; the topic keeps taking publishes and serving reads that do "
      "not meet the damage, and other topics and connections are unaffected",
      layer="storage", rules=("NMQ-S8-6", "NMQ-S9-1", "NMQ-S9-4", "NMQ-S9-7", "NMQ-8-4", "NMQ-8-5"))
def storage_read_damage(ctx: Context) -> None:
    _need(ctx)
    checks = Checks()
    sealed, active, other = ctx.topic("rdseal"), ctx.topic("rdact"), ctx.topic("rdother")
    zeroed = ctx.topic("rdzero")
    got = {t: Filled() for t in (sealed, active, other, zeroed)}
    with running_at_exit(ctx):
        with ctx.client() as w:
            fill_until_segments(ctx, w, sealed, Payloads(sealed, ctx.rng), got[sealed], 2)
            gen = Payloads(active, ctx.rng)
            for _ in range(6):
                ps = [gen.make(500) for _ in range(10)]
                got[active].add(publish(w, active, ps), ps)
            ps = [b"other-%d" % i for i in range(20)]
            got[other].add(publish(w, other, ps), ps)
            gen = Payloads(zeroed, ctx.rng)
            for _ in range(6):
                ps = [gen.make(500) for _ in range(10)]
                got[zeroed].add(publish(w, zeroed, ps), ps)
        ctx.target.stop()
        s1 = segments(ctx.target.topic_dir(sealed))
        bad_sealed = s1[0].records[len(s1[0].records) // 2]
        flip_bit(s1[0].path, bad_sealed.offset + HEADER + bad_sealed.size // 3, 5)
        s2 = segments(ctx.target.topic_dir(active))[-1]
        bad_active = s2.records[len(s2.records) // 2]
        flip_bit(s2.path, bad_active.offset + HEADER + 7, 1)
        s3 = segments(ctx.target.topic_dir(zeroed))[-1]
        bad_zero = s3.records[len(s3.records) // 2]
        write_at(s3.path, bad_zero.offset, bytes(HEADER))  # a zeroed header amid valid records
        if not restart(ctx, checks, [sealed, active, zeroed], "damage in three topics", "NMQ-S9-1", "NMQ-S9-4"):
            checks.done()
        with ctx.client() as w:
            cut = {t: metadata(w, t) for t in (sealed, active, zeroed)}
        if all(isinstance(i, TopicInfo) and i.next_id == b.id for i, b in ((cut[sealed], bad_sealed),
                                                                             (cut[active], bad_active),
                                                                             (cut[zeroed], bad_zero))):
            # A target that verifies everything at start (reference broker: --verify-on-start) found the
            # damage at open and quarantined it ([NMQ-S9-2]): nothing is left to meet while serving.
            ctx.note("the target verified every record at start: the damage was quarantined at open")
            with ctx.client() as w:
                for t, b in ((sealed, bad_sealed), (active, bad_active), (zeroed, bad_zero)):
                    with checks.scenario(t, "NMQ-S9-1", "NMQ-S9-2"):
                        r = read(w, t)
                        compare(checks, f"{t} cut at open", r, got[t].payloads, list(range(1, b.id)), "NMQ-S9-1")
                        checks.check(quarantine_files(ctx.target.topic_dir(t)),
                                     f"{t}: cut at the damage at open, but nothing was quarantined", "NMQ-S9-2")
            checks.done()
            return
        with ctx.client() as pub, ctx.client() as bystander:
            # a subscriber sits at the damage while the topic is published to
            sub_w = ctx.client()
            try:
                sub_w.subscribe(sealed, Start.ID, bad_sealed.id)
                time.sleep(0.2)
                with checks.scenario("publish while a subscriber met the damage", "NMQ-S9-7", "NMQ-8-4"):
                    for k in range(3):
                        ps = [b"late-%d" % k]
                        rid = pub.next_id()
                        pub.send(Publish(rid, sealed, Ack.DURABLE, RecordBatch.from_payloads(ps)))
                        f = pub.recv_response(10.0)
                        checks.check(isinstance(f, PublishAck), f"a publish to {sealed} while a subscriber met its "
                                     f"damage answered {f!r}", "NMQ-S9-7", "NMQ-8-4")
                        if isinstance(f, PublishAck):
                            got[sealed].add(f, ps)
                    checks.check(ping(bystander), "another connection stopped answering PING", "NMQ-8-4")
            finally:
                sub_w.close()
            with checks.scenario(sealed, "NMQ-S9-1", "NMQ-S9-4", "NMQ-S9-7"):
                _damaged_read(checks, ctx, "sealed segment, from the start", sealed, got[sealed].payloads,
                              bad_sealed.id)
            with checks.scenario(sealed, "NMQ-S9-1", "NMQ-S9-7"):
                _damaged_read(checks, ctx, "sealed segment, at the damaged id", sealed, got[sealed].payloads,
                              bad_sealed.id, Start.ID, bad_sealed.id)
            with checks.scenario(active, "NMQ-S9-1", "NMQ-S9-4", "NMQ-S9-7", "NMQ-S8-6"):
                _damaged_read(checks, ctx, "active segment after a clean stop", active, got[active].payloads,
                              bad_active.id)
            with checks.scenario(zeroed, "NMQ-S9-1", "NMQ-S9-4", "NMQ-S9-7", "NMQ-S8-6"):
                _damaged_read(checks, ctx, "a zeroed header amid valid records after a clean stop", zeroed,
                              got[zeroed].payloads, bad_zero.id)
            with checks.scenario("reads that do not meet the damage", "NMQ-S9-7"):
                nxt = s1[1].first_id
                r = read(bystander, sealed, Start.ID, nxt)
                want = [i for i in sorted(got[sealed].payloads) if i >= nxt]
                compare(checks, "sealed topic, from the next segment on", r, got[sealed].payloads, want, "NMQ-S9-7")
                r = read(bystander, active, Start.ID, bad_active.id + 1)
                want = [i for i in sorted(got[active].payloads) if i > bad_active.id]
                compare(checks, "active topic, after the damaged record", r, got[active].payloads, want, "NMQ-S9-7")
                r = read(bystander, sealed, Start.EARLIEST, count=bad_sealed.id - 1, credit=bad_sealed.id - 1)
                compare(checks, "sealed topic, the records before the damage", r, got[sealed].payloads,
                        list(range(1, bad_sealed.id)), "NMQ-S9-4")
            with checks.scenario("other topics", "NMQ-8-4"):
                r = read(bystander, other)
                compare(checks, "an undamaged topic", r, got[other].payloads, sorted(got[other].payloads), "NMQ-8-4")
                checks.check(ping(pub) and ping(bystander), "a connection stopped answering PING", "NMQ-8-4")
            with checks.scenario("a record's id damaged while the target runs", "NMQ-S9-1", "NMQ-S9-4", "NMQ-S9-7"):
                # bytes the target verified when it appended them change under it (its page cache, its
                # disk): a record whose header no longer carries its own id is never delivered as one
                live = ctx.topic("rdlive")
                got[live] = Filled()
                ps = [b"live-%d" % i for i in range(10)]
                got[live].add(publish(pub, live, ps), ps)
                seg = segments(ctx.target.topic_dir(live))[-1]
                bad_live = seg.records[4]
                flip_bit(seg.path, bad_live.offset + 2, 0)  # its id, + 2^16
                _damaged_read(checks, ctx, "a record's id flipped while the target runs", live, got[live].payloads,
                              bad_live.id)
    checks.done()


def _lookups(checks: Checks, w: WireClient, label: str, topic: str, segs: list[Segment], want: dict[int, bytes],
             *rules: str) -> None:
    """SUBSCRIBE by id at the first, a middle and the last record of every segment, and by timestamp
    at a middle record's: the first record delivered is the right one [NMQ-S4-2]."""
    all_recs = [r for s in segs for r in s.records]
    for s in segs:
        if not s.records:
            continue
        for r in (s.records[0], s.records[len(s.records) // 2], s.records[-1]):
            got = read(w, topic, Start.ID, r.id, count=1, credit=1)
            checks.check(got.ids == [r.id] and got.records[0][0].payload == want[r.id],
                         f"{label}: SUBSCRIBE at id {r.id} delivered {got.ids[:1]} ({got.end})", *rules)
        m = s.records[len(s.records) // 2]
        first = next(x.id for x in all_recs if x.ts >= m.ts)
        got = read(w, topic, Start.TIMESTAMP, m.ts, count=1, credit=1)
        checks.check(got.ids == [first], f"{label}: SUBSCRIBE at timestamp {m.ts} delivered {got.ids[:1]}, "
                     f"expected {first}", *rules)


@case("storage.index-checkpoint-damage", "index files that are missing, fail their CRC, carry a first id or a "
      "length their segment does not have, or (CRC intact) no entries but a record, a first entry that is not "
      "the segment's first record, or entries whose ids or offsets stop increasing are ignored and rebuilt, and a sealed "
      "segment with zeros after its records and no index is read to its last record (every record delivered, lookups by id "
      "and timestamp right, nothing quarantined); a garbage, missing, bad-CRC or cut-short checkpoint is ignored "
      "and every segment verified at open (damage found then, not later), ids continuing",
      layer="storage", rules=("NMQ-S4-2", "NMQ-S4-3", "NMQ-S5-4", "NMQ-S8-1", "NMQ-S9-2", "NMQ-S9-5", "NMQ-S3-7"))
def storage_index_checkpoint_damage(ctx: Context) -> None:
    _need(ctx)
    checks = Checks()
    # at most three damaged indexes per topic: a topic of more full segments would pass the default
    # target's retention (32 MiB) and lose its oldest ones during the case
    groups = ([["bit-flip", "first-id", "length"], ["order", "offsets", "empty"]] if ctx.quick
              else [["deleted", "bit-flip", "first-id"], ["length", "order"], ["offsets", "first-entry", "empty"]])
    # Records smaller than the index interval (4 KiB): the last record of a segment then has no entry
    # of its own, so an index rewound by one record agrees with every entry it has, and only its
    # length tells it from the segment's; a sealed segment that kept zeros past its records (a seal
    # that did not truncate it, NMQ-S3-7 being a SHOULD) and has no index is scanned to its end.
    groups.append(["zero-tail", "length"])
    sizes = {len(groups) - 1: 1000}
    ixs = {ctx.topic(f"ixd{n}"): g for n, g in enumerate(groups)}
    ix_size = {t: sizes.get(n, 16384) for n, t in enumerate(ixs)}
    cks = {k: ctx.topic(f"ck{k}") for k in ("garbage", "missing", "badcrc", "short")}
    got = {t: Filled() for t in (*ixs, *cks.values())}
    with running_at_exit(ctx):
        with ctx.client() as w:
            for it, variants in ixs.items():
                fill_until_segments(ctx, w, it, Payloads(it, ctx.rng), got[it], len(variants) + 1, size=ix_size[it])
                fill(w, it, Payloads(it + "b", ctx.rng), got[it], 60_000, 1000, 30)
            for t in cks.values():
                gen = Payloads(t, ctx.rng)
                for _ in range(5):
                    ps = [gen.make(300) for _ in range(8)]
                    got[t].add(publish(w, t, ps), ps)
        ctx.target.stop()
        all_segs = {it: segments(ctx.target.topic_dir(it)) for it in ixs}
        probes: dict[str, list[int]] = {it: [] for it in ixs}
        """Ids whose lookup goes through a damaged index entry, looked up after the restart."""
        for it, variants in ixs.items():
            segs = all_segs[it]
            for v, s in zip(variants, segs, strict=False):
                p = s.path.with_suffix(".idx")
                data = bytearray(p.read_bytes())
                if v == "deleted":
                    p.unlink()
                elif v == "zero-tail":  # no index, and 4 KiB of zeros after the last record
                    p.unlink()
                    with open(s.path, "ab") as f:
                        f.write(bytes(4096))
                elif v == "bit-flip":
                    data[64 + 24 + 16] ^= 0x10  # the offset of the second entry: the CRC no longer matches
                    p.write_bytes(bytes(data))
                    if struct.unpack_from("<Q", data, 48)[0] > 2:  # an index trusted anyway would misplace these
                        second = struct.unpack_from("<Q", data, 64 + 24)[0]
                        probes[it] += [second, second + 1]
                elif v == "first-id":  # a consistent index of a segment one id later
                    for off in (16, 24):
                        struct.pack_into("<Q", data, off, struct.unpack_from("<Q", data, off)[0] + 1)
                    for e in range(struct.unpack_from("<Q", data, 48)[0]):
                        o = 64 + 24 * e
                        struct.pack_into("<Q", data, o, struct.unpack_from("<Q", data, o)[0] + 1)
                    p.write_bytes(fixed_index(data))
                elif v == "order":  # a CRC-valid index whose ids stop increasing (offsets and timestamps still do)
                    count = struct.unpack_from("<Q", data, 48)[0]
                    first = struct.unpack_from("<Q", data, 64)[0]
                    for e in range(1, count - 1):  # every entry but the first and the last claims the first id
                        struct.pack_into("<Q", data, 64 + 24 * e, first)
                    p.write_bytes(fixed_index(data))
                elif v == "offsets":  # a CRC-valid index whose offsets stop increasing (ids and timestamps still do)
                    count = struct.unpack_from("<Q", data, 48)[0]
                    for e in range(2, count - 1, 2):  # every second entry claims the offset of the one before it
                        o = 64 + 24 * e + 16
                        struct.pack_into("<Q", data, o, struct.unpack_from("<Q", data, o - 24)[0])
                    p.write_bytes(fixed_index(data))
                elif v == "empty":  # a CRC-valid index of no entries and length 0 that names one record
                    data = data[:64]
                    struct.pack_into("<Q", data, 24, s.first_id)
                    struct.pack_into("<Q", data, 32, 0)
                    struct.pack_into("<Q", data, 40, 0)
                    struct.pack_into("<Q", data, 48, 0)
                    p.write_bytes(fixed_index(data))
                elif v == "first-entry":  # a CRC-valid index whose first entry is not the segment's first record
                    struct.pack_into("<Q", data, 64, struct.unpack_from("<Q", data, 64)[0] + 1)
                    p.write_bytes(fixed_index(data))
                elif v == "length":  # a consistent index of the segment without its last record
                    struct.pack_into("<Q", data, 24, s.last_id - 1)
                    struct.pack_into("<Q", data, 32, s.records[-2].ts)
                    struct.pack_into("<Q", data, 40, s.records[-1].offset)
                    p.write_bytes(fixed_index(data))
            act_idx = segs[-1].path.with_suffix(".idx")
            if act_idx.exists():
                act_idx.write_bytes(act_idx.read_bytes()[:40])
        rng = random.Random(ctx.rng.getrandbits(32))
        (ctx.target.topic_dir(cks["garbage"]) / "checkpoint").write_bytes(rng.randbytes(64))
        (ctx.target.topic_dir(cks["missing"]) / "checkpoint").unlink()
        # a checkpoint that fails its CRC, and one cut short (its CRC intact, 8 of its zero bytes gone): both
        # are ignored, so every segment is verified at open and the damaged record is found there
        dbad = {k: ctx.target.topic_dir(cks[k]) for k in ("badcrc", "short")}
        flip_bit(dbad["badcrc"] / "checkpoint", 24, 2)  # the offset field: the CRC fails
        ckp = dbad["short"] / "checkpoint"
        ckp.write_bytes(ckp.read_bytes()[:56])
        sbs = {k: segments(d)[-1] for k, d in dbad.items()}
        bads = {k: sb.records[len(sb.records) // 2] for k, sb in sbs.items()}
        for k, sb in sbs.items():
            flip_bit(sb.path, bads[k].offset + HEADER + 5, 4)
        if not restart(ctx, checks, [*ixs, *cks.values()], "index and checkpoint damage", "NMQ-S9-5", "NMQ-S4-3"):
            checks.done()
        for k, how in (("badcrc", "fails its CRC"), ("short", "is cut short")):
            with checks.scenario(f"verified at open ({k})", "NMQ-S5-4"):
                qs = quarantine_files(dbad[k])
                checks.check(f"{sbs[k].path.name}.{bads[k].offset}.quarantine" in qs,
                             f"{cks[k]}: with a checkpoint that {how}, the damaged record at offset "
                             f"{bads[k].offset} was not found at open (quarantine files: {sorted(qs)})",
                             "NMQ-S5-4", "NMQ-S8-1", *(("NMQ-S9-5",) if k == "short" else ()))
        for it, variants in ixs.items():  # a connection each: the lookups take many subscriptions
            segs = all_segs[it]
            d = ctx.target.topic_dir(it)
            with ctx.client() as w, checks.scenario(f"index damage ({', '.join(variants)})", "NMQ-S4-3", "NMQ-S9-5"):
                checks.check(not quarantine_files(d), f"{it}: index damage was taken for log damage: "
                             f"{sorted(quarantine_files(d))} quarantined", "NMQ-S9-5", "NMQ-S4-3")
                r = read(w, it)
                compare(checks, f"{it} with damaged indexes ({', '.join(variants)})", r, got[it].payloads,
                        sorted(got[it].payloads), "NMQ-S4-3", "NMQ-S9-5",
                        disk={x.id: x.raw for s in segs for x in s.records})
                _lookups(checks, w, it, it, segs, got[it].payloads, "NMQ-S4-3", "NMQ-S4-2")
                for pid in probes[it]:
                    r = read(w, it, Start.ID, pid, count=1, credit=1)
                    checks.check(r.ids == [pid] and r.records[0][0].payload == got[it].payloads[pid],
                                 f"{it}: SUBSCRIBE at id {pid}, within the interval of an index entry whose offset "
                                 f"fails the index's CRC, delivered {r.ids[:1]} ({r.end})", "NMQ-S4-3", "NMQ-S4-2")
                a = publish(w, it, [b"next"])
                checks.check(a.first_id == got[it].next_id, f"{it}: next id {a.first_id}, expected "
                             f"{got[it].next_id}", "NMQ-S9-5")
        with ctx.client() as w:
            for k in ("garbage", "missing"):
                t = cks[k]
                with checks.scenario(f"checkpoint {k}", "NMQ-S5-4", "NMQ-S9-5"):
                    checks.check(not quarantine_files(ctx.target.topic_dir(t)),
                                 f"{t}: a {k} checkpoint was taken for log damage", "NMQ-S9-5")
                    r = read(w, t)
                    compare(checks, f"{t} ({k} checkpoint)", r, got[t].payloads, sorted(got[t].payloads),
                            "NMQ-S5-4", "NMQ-S9-5")
                    a = publish(w, t, [b"next"])
                    checks.check(a.first_id == got[t].next_id, f"{t} ({k} checkpoint): next id {a.first_id}, "
                                 f"expected {got[t].next_id}", "NMQ-S9-5", "NMQ-S5-4")
            for k, label in (("badcrc", "bad-CRC"), ("short", "short")):
                t, bad = cks[k], bads[k]
                with checks.scenario(f"checkpoint {label}", "NMQ-S9-1", "NMQ-S9-2"):
                    kept = [i for i in sorted(got[t].payloads) if i < bad.id]
                    r = read(w, t, count=len(kept), linger=0.2)
                    compare(checks, f"{t} ({label} checkpoint, damaged record {bad.id})", r, got[t].payloads, kept,
                            "NMQ-S9-1")
                    a = publish(w, t, [b"next"])
                    checks.check(a.first_id == bad.id, f"{t}: after the damage at {bad.id} was cut at open, the next "
                                 f"id is {a.first_id}", "NMQ-S9-2")
    checks.done()


@case("storage.stale-checkpoint", "a checkpoint older than the log (its last rewrite lost: it names an earlier "
      "segment and an offset there) vouches only for what it names: the later segment is verified record by "
      "record, nothing is cut or quarantined, every record is delivered and ids continue",
      layer="storage", rules=("NMQ-S5-2", "NMQ-S8-1", "NMQ-S9-5", "NMQ-SEM-3-2", "NMQ-S3-4"))
def storage_stale_checkpoint(ctx: Context) -> None:
    _need(ctx)
    checks = Checks()
    t = ctx.topic("stale")
    got = Filled()
    d = ctx.target.topic_dir(t)
    gen = Payloads(t, ctx.rng)
    with running_at_exit(ctx):
        with ctx.client() as w:
            fill(w, t, gen, got, 2 << 20, min(4096, ctx.max_payload), 64)
        ctx.target.stop()
        if not restart(ctx, checks, [t], "a clean stop", "NMQ-S9-5"):
            checks.done()
        with ctx.client() as w:
            metadata(w, t)  # the log is open again: its checkpoint names the first segment's end
            saved = (d / "checkpoint").read_bytes()
            ck = parse_checkpoint(saved)
            if ck is None or not ck.crc_ok:
                raise Skipped(f"the checkpoint of {t} while it runs is not one the kit can read ({ck!r})")
            # a second segment whose records run well past the saved checkpoint's offset (an offset in
            # the first segment): a checkpoint taken for the later segment's would cut it there
            fill_until_segments(ctx, w, t, gen, got, 2)
            while segments(d)[-1].end < ck.offset + (1 << 20):
                fill(w, t, gen, got, 1 << 20, min(16384, ctx.max_payload), 64)
        ctx.target.stop()
        (d / "checkpoint").write_bytes(saved)
        if not restart(ctx, checks, [t], "putting back an older checkpoint", "NMQ-S9-5", "NMQ-S5-2"):
            checks.done()
        with ctx.client() as w, checks.scenario("a checkpoint older than the log", "NMQ-S5-2", "NMQ-S9-5"):
            checks.check(not quarantine_files(d), f"{t}: with a checkpoint of segment {ck.seg} offset {ck.offset}, "
                         f"{sorted(quarantine_files(d))} were quarantined", "NMQ-S5-2", "NMQ-S9-5", "NMQ-S8-1")
            r = read(w, t, count=len(got.payloads))
            compare(checks, f"{t} with a checkpoint older than its log", r, got.payloads, sorted(got.payloads),
                    "NMQ-S5-2", "NMQ-S9-5", "NMQ-SEM-3-2")
            a = publish(w, t, [b"next"])
            checks.check(a.first_id == got.next_id, f"{t}: next id {a.first_id}, expected {got.next_id}",
                         "NMQ-S3-4", "NMQ-S9-5")
    ctx.note(f"checkpoint of segment {ck.seg} offset {ck.offset} put back under a log of {len(got.payloads)} records")
    checks.done()


@case("storage.index-after-restart", "appends after a clean restart continue the index of the segment they go to: "
      "once it is sealed (and the new active one closed cleanly) each index holds exactly the sparse entries of its "
      "records, as if no restart had happened",
      layer="storage", rules=("NMQ-S4-1", "NMQ-S4-2", "NMQ-S4-3"))
def storage_index_after_restart(ctx: Context) -> None:
    _need(ctx)
    checks = Checks()
    t = ctx.topic("ixr")
    got = Filled()
    with running_at_exit(ctx):
        with ctx.client() as w:
            gen = Payloads(t, ctx.rng)
            size = min(1500, ctx.max_payload)
            for _ in range(3):  # a few index intervals before the restart
                ps = [gen.make(size) for _ in range(4)]
                got.add(publish(w, t, ps), ps)
        ctx.target.stop()
        if not restart(ctx, checks, [t], "a clean stop", "NMQ-S4-3"):
            checks.done()
        with ctx.client() as w:
            fill_until_segments(ctx, w, t, Payloads(t + "b", ctx.rng), got, 2)
            fill(w, t, Payloads(t + "c", ctx.rng), got, 20_000, 1000, 10)
        ctx.target.stop()
        segs = segments(ctx.target.topic_dir(t))
        with checks.scenario("indexes after a restart", "NMQ-S4-2"):
            for sg in segs:
                _check_index(checks, f"{t} (appended to after a clean restart)", sg, sg.path.with_suffix(".idx"))
        restart(ctx, checks, [t], "a clean stop")
    checks.done()


@case("storage.vouched-damage", "records the checkpoint vouched for, damaged in their header at the end of the "
      "log (an unexpected id; a zeroed id word; a zeroed header) with the index gone, so recovery walks the "
      "headers: bad-record corruption, neither a torn tail nor the end of the log — the records before are served, the damaged bytes "
      "are kept in a .quarantine file, and the log continues from the damaged record's id",
      layer="storage", rules=("NMQ-S5-2", "NMQ-S9-1", "NMQ-S9-2", "NMQ-S9-3"))
def storage_vouched_damage(ctx: Context) -> None:
    _need(ctx)
    checks = Checks()
    damage = {"id": lambda r: struct.pack("<Q", r.id + 1000), "zero-id": lambda r: bytes(8),
              "zero-header": lambda r: bytes(HEADER)}
    topics = {k: ctx.topic(f"vd{k}") for k in damage}
    got = {k: Filled() for k in damage}
    last = {}
    with running_at_exit(ctx):
        with ctx.client() as w:
            for k, t in topics.items():
                gen = Payloads(t, ctx.rng)
                for _ in range(4):
                    ps = [gen.make(200) for _ in range(10)]
                    got[k].add(publish(w, t, ps), ps)
        ctx.target.stop()  # clean: the checkpoint vouches for every record
        for k, t in topics.items():
            segs = segments(ctx.target.topic_dir(t))
            last[k] = segs[-1].records[-1]
            for sg in segs:
                sg.path.with_suffix(".idx").unlink(missing_ok=True)
            # the last record's header: the header walk up to the checkpoint stops there
            write_at(segs[-1].path, last[k].offset, damage[k](last[k]))
        if not restart(ctx, checks, list(topics.values()), "damage to records the checkpoint vouched for", "NMQ-S9-2"):
            checks.done()
        with ctx.client() as w:
            for k, t in topics.items():
                bad = last[k].id
                with checks.scenario(f"vouched damage ({k})", "NMQ-S9-1", "NMQ-S9-2", "NMQ-S9-3"):
                    kept = [i for i in sorted(got[k].payloads) if i < bad]
                    r = read(w, t, count=len(kept), linger=0.2)
                    compare(checks, f"{t} (record {bad}, vouched for, damaged: {k})", r, got[k].payloads, kept,
                            "NMQ-S9-1")
                    checks.check(quarantine_files(ctx.target.topic_dir(t)), f"{t}: the damaged record's bytes were "
                                 "not kept in a .quarantine file", "NMQ-S9-2")
                    a = publish(w, t, [b"next"])
                    checks.check(a.first_id == bad, f"{t}: after the vouched-for record {bad} was found damaged ({k}) "
                                 f"at open, the next id is {a.first_id}: the damage was taken for a torn tail, the "
                                 "end of the log or lost segments (the log continues from the bad record's id, "
                                 "NMQ-S9-2; bad-record, NMQ-S9-3)", "NMQ-S9-2", "NMQ-S9-3", "NMQ-S5-2")
    checks.done()


@case("storage.missing-segments", "segments deleted: the oldest (reads below the first retained id start there), "
      "the newest or a truncated tail (three records, or only the last) after a clean stop (ids of the lost records are never handed out again, the "
      "records before them stay readable and a read across the lost ids skips them), every segment (the checkpoint "
      "remembers the next id), a middle one (a gap is corruption: what follows is quarantined, never delivered); "
      "the newest with a zeroed header amid the segment before it (damage, not the end of the log: the intact "
      "records after it are cut and kept in a .quarantine file); the marker of lost ids outlives a restart",
      layer="storage", rules=("NMQ-S2-3", "NMQ-S3-4", "NMQ-S8-3", "NMQ-S9-1", "NMQ-S9-2", "NMQ-S9-3", "NMQ-S9-8",
                              "NMQ-S11-4"))
def storage_missing_segments(ctx: Context) -> None:
    _need(ctx)
    checks = Checks()
    names = {k: ctx.topic(f"ms{k}") for k in ("ends", "trunc", "trunc1", "all", "middle", "endzero",
                                                           "endsame")}
    got = {k: Filled() for k in names}
    with running_at_exit(ctx):
        with ctx.client() as w:
            for k in ("ends", "middle"):
                fill_until_segments(ctx, w, names[k], Payloads(names[k], ctx.rng), got[k], 3)
            for k in ("endzero", "endsame"):
                fill_until_segments(ctx, w, names[k], Payloads(names[k], ctx.rng), got[k], 2)
            for k in ("trunc", "trunc1", "all"):
                gen = Payloads(names[k], ctx.rng)
                for _ in range(5):
                    ps = [gen.make(400) for _ in range(6)]
                    got[k].add(publish(w, names[k], ps, Ack.DURABLE), ps)
        ctx.target.stop()
        d = {k: ctx.target.topic_dir(t) for k, t in names.items()}
        segs = {k: segments(d[k]) for k in names}
        e = segs["ends"]
        remove_segment(e[0].path)
        remove_segment(e[-1].path)
        cuts = {}
        for k, n_cut in (("trunc", 3), ("trunc1", 1)):  # three records lost, and exactly one (the last)
            tr = segs[k][-1]
            cuts[k] = tr.records[-n_cut]
            with open(tr.path, "r+b") as f:
                f.truncate(cuts[k].offset)
        for s in segs["all"]:
            remove_segment(s.path)
        m = segs["middle"]
        remove_segment(m[1].path)
        # the newest segment lost, and in the segment before it (now the last) a zeroed header amid
        # intact records, its index gone so recovery walks it: the zero header is damage, not the end
        # of the log (NMQ-S8-7), and the intact records after it are cut and kept [NMQ-S8-3, NMQ-S9-2]
        ez = segs["endzero"]
        remove_segment(ez[-1].path)
        ez_prev = ez[-2]
        ez_prev.path.with_suffix(".idx").unlink(missing_ok=True)
        ez_bad = ez_prev.records[len(ez_prev.records) // 2]
        write_at(ez_prev.path, ez_bad.offset, bytes(HEADER))
        # the same, but the zeroed header is the second-to-last record's and the last record is rewritten
        # as an intact record carrying the zeroed one's id: no record with a LATER id follows the zero
        # header, so it is the end of the log (NMQ-S8-7) and the lost segment's ids are never handed out
        # again [NMQ-S9-8]
        es = segs["endsame"]
        remove_segment(es[-1].path)
        es_prev = es[-2]
        es_prev.path.with_suffix(".idx").unlink(missing_ok=True)
        es_zero, es_last = es_prev.records[-2], es_prev.records[-1]
        write_at(es_prev.path, es_zero.offset, bytes(HEADER))
        write_at(es_prev.path, es_last.offset,
                 _record_like(es_last, es_zero.id, es_last.ts, es_last.raw[HEADER:HEADER + es_last.size]))
        if not restart(ctx, checks, list(names.values()), "segments were deleted", "NMQ-S9-2", "NMQ-S9-3"):
            checks.done()
        ends_after: tuple[dict[int, bytes], list[int]] | None = None
        with ctx.client() as w:
            t = names["ends"]
            kept = [r.id for r in e[1].records]
            with checks.scenario("oldest and newest segments deleted", "NMQ-S11-4", "NMQ-S9-8"):
                info = metadata(w, t)
                checks.check(isinstance(info, TopicInfo) and info.first_id == e[1].first_id,
                             f"{t}: METADATA says {info!r}; the first retained id is {e[1].first_id}", "NMQ-S11-4")
                r = read(w, t, Start.ID, 1, count=len(kept))
                checks.check(isinstance(r.sub, Subscribed) and r.sub.next_id == e[1].first_id,
                             f"{t}: SUBSCRIBE at id 1, below the first retained id {e[1].first_id}, answered {r.sub!r}",
                             "NMQ-S11-4")
                compare(checks, f"{t} read from id 1", r, got["ends"].payloads, kept, "NMQ-S11-4", "NMQ-S9-8")
            with checks.scenario("newest segment deleted", "NMQ-S9-3", "NMQ-S9-8"):
                lost_next = got["ends"].next_id
                a = publish(w, t, [b"after-the-loss"])
                checks.check(a.first_id >= lost_next, f"{t}: the newest segment (ids {e[-1].first_id}.."
                             f"{lost_next - 1}) was lost and the next publish got id {a.first_id}: ids handed out "
                             "twice", "NMQ-S9-3")
                checks.check(a.first_id == lost_next, f"{t}: the log did not continue at the checkpoint's next id "
                             f"{lost_next} (got {a.first_id})", "NMQ-S9-8")
                want = dict(got["ends"].payloads)
                want[a.first_id] = b"after-the-loss"
                r = read(w, t, count=len(kept) + 1)
                compare(checks, f"{t} read across the lost ids", r, want, [*kept, a.first_id], "NMQ-S9-8")
                r = read(w, t, Start.ID, e[-1].first_id, count=1)
                compare(checks, f"{t} read from a lost id", r, want, [a.first_id], "NMQ-S9-8")
                ends_after = (want, [*kept, a.first_id])
                checks.check(isinstance(r.sub, Subscribed) and r.sub.next_id == a.first_id,
                             f"{t}: SUBSCRIBE at the lost id {e[-1].first_id} answered {r.sub!r}: next_id must be "
                             f"the first record it delivers, {a.first_id}", "NMQ-4.4-5", "NMQ-S9-8")
            for k, cut_at in cuts.items():
                t = names[k]
                with checks.scenario(f"tail truncated at a record boundary ({k})", "NMQ-S9-3", "NMQ-S9-8"):
                    kept = [i for i in sorted(got[k].payloads) if i < cut_at.id]
                    r = read(w, t)
                    compare(checks, f"{t} truncated before record {cut_at.id}", r, got[k].payloads, kept, "NMQ-S9-8")
                    a = publish(w, t, [b"after-the-cut"])
                    checks.check(a.first_id >= got[k].next_id, f"{t}: records {cut_at.id}..{got[k].next_id - 1}"
                                 f" were cut off and the next publish got id {a.first_id}: ids handed out twice",
                                 "NMQ-S9-3")
                    checks.check(a.first_id == got[k].next_id, f"{t}: next id {a.first_id}, not the checkpoint's "
                                 f"{got[k].next_id}", "NMQ-S9-8")
            t = names["all"]
            with checks.scenario("every segment deleted", "NMQ-S3-4"):
                a = publish(w, t, [b"fresh"])
                checks.check(a.first_id == got["all"].next_id, f"{t}: every segment was deleted, the checkpoint "
                             f"remembers next id {got['all'].next_id}, and the next publish got {a.first_id}",
                             "NMQ-S3-4")
                r = read(w, t)
                compare(checks, f"{t} after every segment was deleted", r, {a.first_id: b"fresh"}, [a.first_id],
                        "NMQ-S3-4")
            t = names["endzero"]
            with checks.scenario("newest segment deleted, a zeroed header amid the one before", "NMQ-S8-3",
                                 "NMQ-S9-1", "NMQ-S9-2"):
                kept = [x.id for x in ez_prev.records if x.id < ez_bad.id]
                r = read(w, t, count=len(kept), linger=0.2)
                compare(checks, f"{t} cut at the zeroed header of record {ez_bad.id}", r, got["endzero"].payloads,
                        kept, "NMQ-S9-1")
                after = ez_prev.data[ez_bad.offset + HEADER:ez_prev.end]  # the intact records after it
                qs = quarantine_files(d["endzero"])
                checks.check(any(after in q for q in qs.values()),
                             f"{t}: records {ez_bad.id + 1}..{ez_prev.last_id} after the zeroed header of record "
                             f"{ez_bad.id} are not kept in a .quarantine file ({sorted(qs)}): the zero header was "
                             "taken for the end of the log and what followed it destroyed", "NMQ-S8-3", "NMQ-S9-2")
                # (the next id is left unchecked: NMQ-S9-2 continues from the cut, NMQ-S9-8 forbids reusing
                # the lost segment's ids; the reference does the former, see the seed-4 C review)
            t = names["endsame"]
            with checks.scenario("newest segment deleted, the log before it ends at a zeroed header",
                                 "NMQ-S9-8", "NMQ-S3-4"):
                kept = [x.id for x in es_prev.records if x.id < es_zero.id]
                r = read(w, t, count=len(kept), linger=0.2)
                compare(checks, f"{t} ending at the zeroed header of record {es_zero.id}", r, got["endsame"].payloads,
                        kept, "NMQ-S9-8")
                a = publish(w, t, [b"after-the-loss"])
                checks.check(a.first_id == got["endsame"].next_id, f"{t}: the newest segment was lost and the one "
                             f"before it ends at a zeroed header (record {es_zero.id}; after it only a record with "
                             f"that same id, no later one): the next publish got id {a.first_id}, not the "
                             f"checkpoint's next id {got['endsame'].next_id}: lost ids handed out again",
                             "NMQ-S9-8", "NMQ-S3-4")
            t = names["middle"]
            with checks.scenario("middle segment deleted", "NMQ-S2-3", "NMQ-S9-1", "NMQ-S9-2"):
                kept = [x.id for x in m[0].records]
                r = read(w, t, count=len(kept), linger=0.2)
                compare(checks, f"{t} without its middle segment", r, got["middle"].payloads, kept, "NMQ-S9-1",
                        "NMQ-S2-3")
                q = d["middle"] / f"{m[2].path.name}.quarantine"
                checks.check(q.exists() and q.read_bytes()[:m[2].end] == m[2].data[:m[2].end],
                             f"{t}: the segment after the gap was not renamed to {q.name} with its bytes", "NMQ-S9-2")
                a = publish(w, t, [b"after-gap"])
                checks.check(a.first_id == m[1].first_id, f"{t}: after the gap at {m[1].first_id} the log continues "
                             f"at {a.first_id}", "NMQ-S9-2")
        if ends_after is not None:
            # the lost-ids marker outlives a restart: the records after it are still part of the log
            ctx.target.stop()
            if restart(ctx, checks, list(names.values()), "a clean stop after lost ids", "NMQ-S9-8"):
                t = names["ends"]
                want, ids = ends_after
                with ctx.client() as w, checks.scenario("lost ids, then a restart", "NMQ-S9-8", "NMQ-S2-3"):
                    checks.check(not quarantine_files(d["ends"]), f"{t}: after a restart the log past its lost ids was "
                                 f"set aside: {sorted(quarantine_files(d['ends']))}", "NMQ-S9-8", "NMQ-S2-3")
                    r = read(w, t, count=len(ids))
                    compare(checks, f"{t} across its lost ids, after a restart", r, want, ids, "NMQ-S9-8")
                    a = publish(w, t, [b"after-the-restart"])
                    checks.check(a.first_id == ids[-1] + 1, f"{t}: after a restart the next id is {a.first_id}, "
                                 f"expected {ids[-1] + 1}", "NMQ-S9-8", "NMQ-S3-4")
    checks.done()


@case("storage.stray-files", "files a topic directory may hold that are not the log's: other names are ignored and "
      "left alone, files named like segments that are not part of the log (random bytes before, inside and after "
      "its id range) are set aside without taking intact records with them, a damaged topic_id file (with a short "
      "stray before the log) does not hide the topic or change its id, a directory left by an unfinished topic "
      "creation is removed (or, holding someone else's file, is no topic but takes one created under its name), and "
      "names in the topics' root that are not UTF-8 are ignored", layer="storage",
      rules=("NMQ-S2-1", "NMQ-S2-5", "NMQ-S9-9", "NMQ-SEM-1-2"))
def storage_stray_files(ctx: Context) -> None:
    _need(ctx)
    checks = Checks()
    names = {k: ctx.topic(f"sf{k}") for k in ("names", "segs", "tid", "mid", "last")}
    unfinished = ctx.topic("sfnew")
    leftover = ctx.topic("sfleft")
    got = {k: Filled() for k in names}
    rng = random.Random(ctx.rng.getrandbits(32))
    with running_at_exit(ctx):
        with ctx.client() as w:
            # "tid" first: its topic id must not be the highest, which a fresh id could repeat by chance
            for k in ("tid", "names"):
                gen = Payloads(names[k], ctx.rng)
                for _ in range(4):
                    ps = [gen.make(300) for _ in range(5)]
                    got[k].add(publish(w, names[k], ps), ps)
            fill_until_segments(ctx, w, names["segs"], Payloads(names["segs"], ctx.rng), got["segs"], 2)
            fill_until_segments(ctx, w, names["mid"], Payloads(names["mid"], ctx.rng), got["mid"], 3)
            fill_until_segments(ctx, w, names["last"], Payloads(names["last"], ctx.rng), got["last"], 2)
            sub = w.subscribe(names["tid"], Start.LATEST)
            old_tid = sub.topic_id if isinstance(sub, Subscribed) else -1
        ctx.target.stop()
        d = {k: ctx.target.topic_dir(t) for k, t in names.items()}
        others = {"junk.log": b"x", "notes.txt": b"hello", "00000000000000000001.log.bak": rng.randbytes(200),
                  "1.log": rng.randbytes(100), "0000000000000000000x.log": rng.randbytes(100),
                  "00000000000000000001.idx.old": rng.randbytes(64), "readme": b""}
        for n, data in others.items():
            (d["names"] / n).write_bytes(data)
        segs = segments(d["segs"])
        strays = {f"{0:020d}.log": rng.randbytes(4096),
                  f"{(segs[0].first_id + segs[0].last_id) // 2:020d}.log": rng.randbytes(8192),
                  f"{segs[-1].last_id + 1000:020d}.log": rng.randbytes(4096)}
        # and one that looks like a segment of the log: an intact copy of a record from inside the first
        # segment, named by its id (a leftover of an older copy of the log); a later file has the id the
        # log expects, so this one is not part of the log
        twin = segs[0].records[len(segs[0].records) // 3]
        strays[f"{twin.id:020d}.log"] = twin.raw + bytes(4096 - len(twin.raw) % 4096)
        for n, data in strays.items():
            (d["segs"] / n).write_bytes(data)
        # a segment that does not begin with an intact record: before the last it is a stray, set aside
        # whole (<name>.quarantine); the last segment, the checkpoint's after a clean stop, never is
        damaged_first = {k: segments(d[k])[i] for k, i in (("mid", 1), ("last", -1))}
        mid_first_ids = [x.id for x in segments(d["mid"])[0].records]
        for sg in damaged_first.values():
            flip_bit(sg.path, HEADER + sg.records[0].size // 2, 1)
        (d["tid"] / "topic_id").write_bytes(b"\x00garbage\xff")
        # and a stray named like a segment before the log, too short to hold a record header: the id must
        # still come from the log's first record
        (d["tid"] / f"{0:020d}.log").write_bytes(b"\x01" + rng.randbytes(23))
        du = ctx.target.topic_dir(unfinished)
        du.mkdir(parents=True)
        (du / "topic_id.tmp").write_bytes(b"")
        # an unfinished creation's directory that also holds a file of someone else's: it stays, and is
        # not a topic, but a PUBLISH to its name creates the topic in it
        dl = ctx.target.topic_dir(leftover)
        dl.mkdir(parents=True)
        (dl / "notes.txt").write_bytes(b"an operator's file")
        # and entries in the topics' root whose names are not UTF-8 (not topic names at all)
        root = os.fsencode(str(du.parent))
        odd = [root + b"/\xffnot-utf8", root + b"/bad\xfe\xfd"]
        os.mkdir(odd[0])
        with open(odd[1], "wb") as f:
            f.write(b"x")
        if not restart(ctx, checks, [*names.values(), unfinished, leftover], "stray files were added", "NMQ-S2-1",
                       "NMQ-S9-9", "NMQ-S2-5", strays=tuple(odd)):
            checks.done()
        with ctx.client() as w:
            with checks.scenario("other names", "NMQ-S2-1"):
                t = names["names"]
                r = read(w, t)
                compare(checks, f"{t} with files of other names", r, got["names"].payloads,
                        sorted(got["names"].payloads), "NMQ-S2-1")
                a = publish(w, t, [b"next"])
                checks.check(a.first_id == got["names"].next_id, f"{t}: next id {a.first_id}", "NMQ-S2-1")
                for n, data in others.items():
                    p = d["names"] / n
                    checks.check(p.exists() and p.read_bytes() == data, f"{t}: {n}, a file of another name, was "
                                 "changed or removed (readers must ignore it)", "NMQ-S2-1")
            with checks.scenario("stray segment files", "NMQ-S9-9"):
                t = names["segs"]
                r = read(w, t)
                compare(checks, f"{t} with stray segment files {sorted(strays)}", r, got["segs"].payloads,
                        sorted(got["segs"].payloads), "NMQ-S9-9")
                a = publish(w, t, [b"next"])
                checks.check(a.first_id == got["segs"].next_id, f"{t}: with stray segment files the next id is "
                             f"{a.first_id}, not {got['segs'].next_id}", "NMQ-S9-9")
                kept = {p.read_bytes() for p in d["segs"].iterdir() if p.is_file()}
                for n, data in strays.items():
                    checks.check(data in kept, f"{t}: the stray {n} was destroyed, not set aside", "NMQ-S9-9")
            with checks.scenario("segments damaged in their first record", "NMQ-S9-9"):
                mid = damaged_first["mid"]
                checks.check((d["mid"] / f"{mid.path.name}.quarantine").exists(),
                             f"{names['mid']}: {mid.path.name}, not the last segment and its first record damaged, was "
                             f"not set aside as {mid.path.name}.quarantine (files: {sorted(p.name for p in d['mid'].iterdir())})",
                             "NMQ-S9-9")
                lst = damaged_first["last"]
                checks.check(lst.path.exists() and not (d["last"] / f"{lst.path.name}.quarantine").exists(),
                             f"{names['last']}: the last segment {lst.path.name}, the checkpoint's, was set aside as a "
                             f"stray because its first record is damaged (files: "
                             f"{sorted(p.name for p in d['last'].iterdir())})", "NMQ-S9-9")
                r = read(w, names["mid"], count=len(got["mid"].payloads))
                first_seg = mid_first_ids
                checks.check(r.ids[:len(first_seg)] == first_seg and mid.first_id not in r.ids,
                             f"{names['mid']}: delivered {_span_text(r.ids)}; the first segment holds "
                             f"{_span_text(first_seg)}, the damaged one starts at {mid.first_id}", "NMQ-S9-9")
            with checks.scenario("damaged topic_id", "NMQ-S2-5"):
                t = names["tid"]
                info = metadata(w, t)
                checks.check(isinstance(info, TopicInfo) and info.topic_id == old_tid
                             and info.next_id == got["tid"].next_id,
                             f"{t}: with a damaged topic_id file, METADATA answers {info!r} (topic id was {old_tid}, "
                             f"next id {got['tid'].next_id})", "NMQ-S2-5")
                r = read(w, t)
                checks.check(isinstance(r.sub, Subscribed) and r.sub.topic_id == old_tid,
                             f"{t}: SUBSCRIBED says topic id {getattr(r.sub, 'topic_id', r.sub)}, it was {old_tid}",
                             "NMQ-S2-5")
                compare(checks, f"{t} with a damaged topic_id", r, got["tid"].payloads, sorted(got["tid"].payloads),
                        "NMQ-S2-5")
            with checks.scenario("unfinished creation", "NMQ-S2-5"):
                checks.check(not du.exists(), f"{du.name}: the directory of a topic creation that never finished "
                             f"(only topic_id.tmp) is still there", "NMQ-S2-5")
            with checks.scenario("a topic's directory holding only someone else's file", "NMQ-S2-1", "NMQ-SEM-1-2"):
                info = metadata(w, leftover)
                checks.check(isinstance(info, Error) and info.code == ErrorCode.UNKNOWN_TOPIC,
                             f"{leftover}: a directory holding only notes.txt (no topic_id, no log) is listed as a "
                             f"topic: {info!r}", "NMQ-S2-1")
                a = publish(w, leftover, [b"first"])
                checks.check(a.first_id == 1, f"{leftover}: the first PUBLISH to a name whose directory holds only "
                             f"someone else's file got id {a.first_id}", "NMQ-SEM-1-2")
                checks.check((dl / "notes.txt").read_bytes() == b"an operator's file", f"{leftover}: notes.txt, a "
                             "file of another name, was changed or removed", "NMQ-S2-1")
            with checks.scenario("names in the topics' root that are not UTF-8", "NMQ-S2-1"):
                checks.check(all(os.path.lexists(p) for p in odd), "entries of the topics' root whose names are not "
                             "UTF-8 were removed (readers must ignore other names)", "NMQ-S2-1")
    checks.done()


@case("storage.atomic-append", "a process that maps the active segment and reads it while the target appends never "
      "sees a record whose id word is published before the record is whole: every record it reaches by walking "
      "non-zero id words has its payload and a valid CRC", layer="storage", rules=("NMQ-S6-3",))
def storage_atomic_append(ctx: Context) -> None:
    _need(ctx)
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        raise Skipped(f"on {platform.machine()} the kit's loads from a mapping are not ordered like acquire loads "
                      "(x86 is TSO), so a torn read could be the kit's own")
    t = ctx.topic("atomic")
    size = min(ctx.max_payload, 65536)
    per = max(1, min(8, ctx.max_batch))
    with ctx.client() as w:
        publish(w, t, [b"first"])
        seg = segments(ctx.target.topic_dir(t))[-1]
        file_size = seg.path.stat().st_size
        budget = min(file_size // 2, 6 << 20) - seg.end
        n = max(per, (budget // span(size)) // per * per)
        if n < per * 2:
            raise Skipped(f"the active segment ({file_size} bytes) is too small to append to while it is mapped")
        rng = random.Random(ctx.rng.getrandbits(32))
        payloads = [rng.randbytes(size - 8) + struct.pack("<Q", (1 << 63) | k) for k in range(n)]
        problems: list[str] = []
        progress = [0]
        done = threading.Event()
        with open(seg.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), file_size, access=mmap.ACCESS_READ)

        def poll() -> None:
            off, k = seg.end, 0
            deadline = time.monotonic() + 60
            while k < n and time.monotonic() < deadline and not problems:
                if mm[off:off + 8] == ZERO8:
                    if done.is_set() and time.monotonic() > deadline - 55:
                        break
                    continue
                p = payloads[k]
                tail = mm[off + HEADER + len(p) - 8:off + HEADER + len(p)]
                if tail != p[-8:]:
                    problems.append(f"record {k + 2}: its id word was visible before its payload was in place")
                    return
                raw = mm[off:off + span(len(p))]
                if struct.unpack_from("<Q", raw)[0] != k + 2 or raw[HEADER:HEADER + len(p)] != p \
                        or record_crc(raw) != struct.unpack_from("<I", raw, 24)[0]:
                    problems.append(f"record {k + 2}: visible but not whole (id, payload or CRC wrong)")
                    return
                off += span(len(p))
                k += 1
                progress[0] = k

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        try:
            for b in range(0, n, per):
                publish(w, t, payloads[b:b + per])
        finally:
            done.set()
            th.join(10)
            mm.close()
    if problems:
        raise Failed(problems[0], ("NMQ-S6-3",))
    if progress[0] < n:
        raise Failed(f"a reader of the mapping saw {progress[0]} of {n} acknowledged records", ("NMQ-S6-3",))
    ctx.note(f"{n} records of {size} bytes read through a mapping while appended")


@case("storage.failed-append", "an append that fails (a batch larger than a segment) has no effect: no id consumed, "
      "nothing readable, the next append at the same position", layer="storage", rules=("NMQ-S6-4",))
def storage_failed_append(ctx: Context) -> None:
    _need(ctx)
    t = ctx.topic("fail")
    with ctx.client() as w:
        before = [b"a", b"b", b"c"]
        first = publish(w, t, before).first_id
        cap = segments(ctx.target.topic_dir(t))[-1].path.stat().st_size
        size = min(ctx.max_payload, 65536)
        n = cap // span(size) + 1
        if n > ctx.max_batch or n * span(size) + 4096 > (ctx.max_frame or 16 << 20):
            raise Skipped(f"a batch larger than the segment ({cap} bytes) exceeds the announced batch or frame limits")
        rid = w.next_id()
        w.send(Publish(rid, t, Ack.WRITTEN, RecordBatch.from_payloads([bytes([k & 0xFF]) * size for k in range(n)], **w.batch_limits())))
        f = w.recv_response(30.0)
        if isinstance(f, PublishAck):
            raise Skipped(f"the target stored a batch of {n} x {size} bytes, larger than its segment file ({cap} "
                          "bytes): no failing append to observe")
        info = metadata(w, t)
        if not isinstance(info, TopicInfo) or info.next_id != first + 3:
            raise Failed(f"after a refused batch ({f!r}) METADATA says {info!r}: ids were consumed", ("NMQ-S6-4",))
        a = publish(w, t, [b"d"])
        if a.first_id != first + 3:
            raise Failed(f"the append after a failed one got id {a.first_id}, not {first + 3}", ("NMQ-S6-4",))
        r = read(w, t, count=4, linger=0.2)
        if [x.payload for x, _ in r.records] != [*before, b"d"]:
            raise Failed(f"after a failed append the topic holds {len(r.records)} records "
                         f"{[x.payload[:8] for x, _ in r.records][:6]}", ("NMQ-S6-4",))


@case("storage.topic-ids", "on a new data directory, every topic keeps its topic id over a clean and an unclean "
      "restart, the first one created and one holding no record included; and when its topic_id file is damaged "
      "while its checkpoint is missing, or while the first record of its first segment is damaged too, the topic is "
      "still listed under its id, with its records and its next id",
      layer="storage", rules=("NMQ-SEM-1-2", "NMQ-S2-5", "NMQ-S5-4", "NMQ-S9-9"))
def storage_topic_ids(ctx: Context) -> None:
    _need(ctx)
    checks = Checks()
    # a new data directory: the topics below are the only ones, the first of them the first the target
    # ever made (the reference numbers it 1)
    ctx.target.fresh_start()
    names = {k: ctx.topic(f"ti{k}") for k in ("empty", "kept", "nockpt", "firstbad", "firstlong")}
    got = {k: Filled() for k in names}
    with running_at_exit(ctx):
        with ctx.client() as w:
            sub = w.subscribe(names["empty"], Start.EARLIEST)  # created with no record, and it keeps none
            checks.check(isinstance(sub, Subscribed), f"SUBSCRIBE {names['empty']} answered {sub!r}", "NMQ-SEM-1-2")
            # the damaged ones before "kept": neither has the highest id, which a fresh id could repeat by chance
            fill_until_segments(ctx, w, names["firstbad"], Payloads(names["firstbad"], ctx.rng), got["firstbad"], 2)
            fill_until_segments(ctx, w, names["firstlong"], Payloads(names["firstlong"], ctx.rng), got["firstlong"], 2)
            for k in ("nockpt", "kept"):
                gen = Payloads(names[k], ctx.rng)
                for _ in range(3):
                    ps = [gen.make(200) for _ in range(4)]
                    got[k].add(publish(w, names[k], ps), ps)
            before = {k: metadata(w, t) for k, t in names.items()}
        ids = {k: info.topic_id for k, info in before.items() if isinstance(info, TopicInfo)}
        if not checks.check(len(ids) == len(names), f"METADATA of the new topics answered {before!r}", "NMQ-SEM-1-2"):
            checks.done()

        def same_ids(how: str) -> None:
            with ctx.client() as w:
                for k, t in names.items():
                    info = metadata(w, t)
                    checks.check(isinstance(info, TopicInfo) and info.topic_id == ids[k],
                                 f"after {how}, METADATA {t} answers {info!r}: its topic id was {ids[k]}",
                                 "NMQ-SEM-1-2")

        for how in ("a clean restart", "an unclean restart"):
            if how == "a clean restart":
                ctx.target.stop()
            else:
                ctx.target.kill()
            if not restart(ctx, checks, [], how, "NMQ-SEM-1-2"):
                checks.done()
            same_ids(how)
        ctx.target.stop()
        d = {k: ctx.target.topic_dir(t) for k, t in names.items()}
        for k in ("nockpt", "firstbad", "firstlong"):
            (d[k] / "topic_id").write_bytes(b"\xffnot an id\x00")
        (d["nockpt"] / "checkpoint").unlink()
        segs = segments(d["firstbad"])
        first = segs[0].records[0]
        flip_bit(segs[0].path, first.offset + 2, 3)  # the first record's id no longer matches its file's name
        long_segs = segments(d["firstlong"])
        # the first record's length runs far past its file (a torn length): no record to take the id from
        write_at(long_segs[0].path, long_segs[0].records[0].offset + 20, b"\xff\xff\xff\xff")
        damaged = [names["nockpt"], names["firstbad"], names["firstlong"]]
        if not restart(ctx, checks, damaged, "damaging topic_id files", "NMQ-S2-5"):
            checks.done()
        same_ids("a restart with damaged topic_id files")
        with ctx.client() as w:
            with checks.scenario("topic_id damaged, checkpoint missing", "NMQ-S2-5", "NMQ-S5-4"):
                t = names["nockpt"]
                r = read(w, t)
                compare(checks, f"{t} with a damaged topic_id and no checkpoint", r, got["nockpt"].payloads,
                        sorted(got["nockpt"].payloads), "NMQ-S2-5", "NMQ-S5-4")
                a = publish(w, t, [b"next"])
                checks.check(a.first_id == got["nockpt"].next_id, f"{t}: next id {a.first_id}, not "
                             f"{got['nockpt'].next_id}", "NMQ-S2-5")
            def from_second_segment(k: str, second: Segment, damage: str) -> None:
                later = {i: p for i, p in got[k].payloads.items() if i >= second.first_id}
                r = read(w, names[k], Start.ID, second.first_id, count=len(later))
                compare(checks, f"{names[k]} from its second segment, with a damaged topic_id and {damage}", r, later,
                        sorted(later), "NMQ-S9-9")

            with checks.scenario("topic_id and the first record damaged", "NMQ-S2-5", "NMQ-S9-9"):
                t = names["firstbad"]
                from_second_segment("firstbad", segs[1], "the first record of its first segment damaged")
                a = publish(w, t, [b"next"])
                checks.check(a.first_id == got["firstbad"].next_id, f"{t}: next id {a.first_id}, not "
                             f"{got['firstbad'].next_id}", "NMQ-S2-5")
            with checks.scenario("topic_id damaged, the first record's length past its file", "NMQ-S2-5", "NMQ-S9-9"):
                from_second_segment("firstlong", long_segs[1], "the length of the first record of its first "
                                    "segment past the file")
            with checks.scenario("the others untouched", "NMQ-SEM-1-2"):
                info = metadata(w, names["empty"])
                checks.check(isinstance(info, TopicInfo) and info.next_id == 1,
                             f"{names['empty']}, which never held a record, answers {info!r}", "NMQ-SEM-1-2")
    checks.done()


def _record_like(last: DiskRecord, record_id: int, ts: int, payload: bytes) -> bytes:
    """A stored record as a broker writes it ([NMQ-S3-1]): ``last``'s topic id and flags, the given
    id, timestamp and payload, its CRC computed, padded to its span."""
    hdr = _HDR.pack(record_id, ts, last.topic_id, len(payload), 0, 0, 0, 0, 0, bytes(12))
    raw = hdr + payload + bytes(span(len(payload)) - HEADER - len(payload))
    return raw[:24] + struct.pack("<I", record_crc(raw)) + raw[28:]


@case("storage.clock-behind", "after a kill, the log's last record has a timestamp an hour ahead of the target's "
      "clock (written while its clock was ahead): it is kept, and the records appended after the restart are "
      "stamped no earlier than it",
      layer="storage", rules=("NMQ-SEM-2-2", "NMQ-S3-5", "NMQ-S8-1"))
def storage_clock_behind(ctx: Context) -> None:
    _need(ctx)
    checks = Checks()
    t = ctx.topic("clock")
    with running_at_exit(ctx):
        with ctx.client() as w:
            ps = [b"before-%d" % i for i in range(5)]
            a = publish(w, t, ps)
        ctx.target.kill()
        seg = segments(ctx.target.topic_dir(t))[-1]
        last = seg.records[-1]
        ahead = last.ts + 3600 * 10**9
        write_at(seg.path, last.end, _record_like(last, last.id + 1, ahead, b"from a clock an hour ahead"))
        if not restart(ctx, checks, [t], "a kill", "NMQ-S8-1"):
            checks.done()
        with ctx.client() as w:
            with checks.scenario("the record from the clock ahead", "NMQ-S8-1"):
                r = read(w, t)
                checks.check(r.ids == list(range(a.first_id, last.id + 2)), f"{t}: after the kill delivered ids "
                             f"{_span_text(r.ids)}, not {a.first_id}..{last.id + 1} (the last written an hour ahead)",
                             "NMQ-S8-1")
            with checks.scenario("records appended after it", "NMQ-SEM-2-2", "NMQ-S3-5"):
                b = publish(w, t, [b"after-0", b"after-1"])
                r = read(w, t, Start.ID, b.first_id, count=2)
                stamps = [rec.timestamp_ns for rec, _ in r.records]
                checks.check(len(stamps) == 2 and all(s >= ahead for s in stamps),
                             f"{t}: the records appended after the restart are stamped {stamps}, earlier than the "
                             f"record before them ({ahead}): timestamps went back", "NMQ-SEM-2-2", "NMQ-S3-5")
    checks.done()


@case("storage.torn-length", "after a kill, the log ends in a header with the next id whose length field runs far "
      "past the file (a torn write of a large record): the target starts, cuts it as a torn tail (copied to a "
      ".quarantine file), keeps every record before it and gives the next record that id",
      layer="storage", rules=("NMQ-S8-2", "NMQ-S8-3", "NMQ-S9-1", "NMQ-8-4"))
def storage_torn_length(ctx: Context) -> None:
    _need(ctx)
    checks = Checks()
    t = ctx.topic("tornlen")
    with running_at_exit(ctx):
        with ctx.client() as w:
            ps = [b"kept-%d" % i for i in range(6)]
            a = publish(w, t, ps)
        ctx.target.kill()
        d = ctx.target.topic_dir(t)
        seg = segments(d)[-1]
        last = seg.records[-1]
        for size in (0x7FFF_FF00, seg.path.stat().st_size * 2):  # past any mapping; past the file
            torn = _record_like(last, last.id + 1, last.ts, b"x" * 40)
            torn = torn[:20] + struct.pack("<I", size) + torn[24:]
            write_at(seg.path, last.end, torn)
            if not restart(ctx, checks, [t], f"a torn header of length {size:#x} at the end of the log", "NMQ-S8-2",
                           "NMQ-8-4"):
                checks.done()
            with ctx.client() as w:
                with checks.scenario(f"a torn length of {size:#x}", "NMQ-S8-2", "NMQ-S9-1"):
                    r = read(w, t)
                    compare(checks, f"{t} ending in a header of length {size:#x}", r, dict(zip(range(a.first_id,
                            a.first_id + 6), ps, strict=True)), list(range(a.first_id, a.first_id + 6)), "NMQ-S8-2",
                            "NMQ-S9-1")
                with checks.scenario(f"a torn length of {size:#x}: quarantined", "NMQ-S8-3"):
                    checks.check(bool(quarantine_files(d)), f"{t}: the torn header after id {last.id} was cut but not "
                                 f"copied to a .quarantine file (files: {sorted(p.name for p in d.iterdir())})",
                                 "NMQ-S8-3")
            ctx.target.kill()
            for q in quarantine_files(d):
                (d / q).unlink()
        if not restart(ctx, checks, [t], "a kill", "NMQ-S8-2"):
            checks.done()
        with ctx.client() as w, checks.scenario("the next id", "NMQ-S8-2"):
            b = publish(w, t, [b"next"])
            checks.check(b.first_id == last.id + 1, f"{t}: after the torn header the next record got id {b.first_id}, "
                         f"not {last.id + 1}", "NMQ-S8-2")
    checks.done()
