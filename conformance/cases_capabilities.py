"""Layers (b)–(d), announced capabilities verified by their semantics: consumer groups (semantics §6)
and idempotent publish (semantics §7). A target that does not announce one gets UNIMPLEMENTED (and
the NOT_SUPPORTED answer is checked by the enums and wire cases). Also the shape of every response
frame (sizes, no padding), read from the raw bytes.
"""

from __future__ import annotations

import socket
import struct
import time

from conformance.helpers import collect_all, publish, raw_commit, topic_info
from conformance.registry import Context, Failed, Skipped, case, check
from conformance.wire import WireClient
from nanomq.protocol import (
    Ack,
    Capability,
    Commit,
    Committed,
    Hello,
    Metadata,
    Ping,
    Publish,
    PublishAck,
    RecordBatch,
    Seek,
    Start,
    Subscribe,
    Subscribed,
    Unsubscribe,
    encode,
)


def _member(ctx: Context, topic: str, group: str, credit: int, start: Start = Start.EARLIEST) -> tuple[WireClient, int]:
    w = ctx.client()
    rid = w.next_id()
    w.send(Subscribe(rid, topic, start, 0, credit, group))
    f = w.recv_response()
    check(isinstance(f, Subscribed), f"a group SUBSCRIBE answered {f!r}", "NMQ-7-6")
    assert isinstance(f, Subscribed)
    return w, f.sub_id


def _drain(w: WireClient, sub_id: int, idle: float = 0.5) -> list[int]:
    return [r.id for r in collect_all(w, sub_id, 1 << 30, timeout=10, idle=idle)]


@case("groups.shared", "two live members of a group share a topic: each record goes to exactly one of them",
      layer="wire", needs=Capability.CONSUMER_GROUPS, rules=("NMQ-SEM-6-1", "NMQ-SEM-6-2", "NMQ-7-6"))
def groups_shared(ctx: Context) -> None:
    t, g = ctx.topic("gshare"), ctx.topic("g")
    with ctx.client() as p:
        publish(p, t, [f"r{i}".encode() for i in range(100)])
    a, sa = _member(ctx, t, g, 1000)
    b, sb = _member(ctx, t, g, 1000)
    try:
        with ctx.step("NMQ-SEM-6-1", "NMQ-SEM-6-2"):
            ga, gb = _drain(a, sa), _drain(b, sb)
            both = set(ga) & set(gb)
            check(not both, f"records delivered to both live members: {sorted(both)[:10]}", "NMQ-SEM-6-1")
            missing = set(range(1, 101)) - set(ga) - set(gb)
            check(not missing, f"records delivered to no member: {sorted(missing)[:10]}", "NMQ-SEM-6-2")
    finally:
        a.close()
        b.close()


@case("groups.redelivery", "what a member received and did not commit is delivered to another member after it "
      "leaves (UNSUBSCRIBE or closing its connection)", layer="wire", needs=Capability.CONSUMER_GROUPS,
      rules=("NMQ-SEM-6-2", "NMQ-SEM-6-1", "NMQ-7-6"))
def groups_redelivery(ctx: Context) -> None:
    t, g = ctx.topic("gredel"), ctx.topic("g")
    with ctx.client() as p:
        publish(p, t, [f"r{i}".encode() for i in range(20)])
    a, sa = _member(ctx, t, g, 5)
    got_a = _drain(a, sa)
    check(len(got_a) == 5, f"the first member got {got_a} with a credit of 5", "NMQ-4.6-2")
    a.send(Commit(a.next_id(), sa, tuple(got_a[:2])))
    check(isinstance(a.recv_response(), Committed), "COMMIT", "NMQ-SEM-6-3")
    b, sb = _member(ctx, t, g, 1000)
    try:
        with ctx.step("NMQ-SEM-6-1"):
            early = _drain(b, sb)
            check(not set(early) & set(got_a[2:]), f"the second member got {sorted(set(early) & set(got_a[2:]))} "
                  "while the first still held them")
        a.close()
        with ctx.step("NMQ-SEM-6-2"):
            later = _drain(b, sb, idle=2.0)
            missing = set(got_a[2:]) - set(later)
            check(not missing, f"uncommitted records {sorted(missing)} of the member that left were not redelivered")
            check(not set(got_a[:2]) & set(later), "committed records were redelivered after the member left")
    finally:
        a.close()
        b.close()


@case("groups.position", "the group's committed position is the lowest id no member committed, whatever order "
      "the commits come in; it never decreases", layer="wire", needs=Capability.CONSUMER_GROUPS,
      rules=("NMQ-SEM-6-3", "NMQ-4.7-4"))
def groups_position(ctx: Context) -> None:
    t, g = ctx.topic("gpos"), ctx.topic("g")
    with ctx.client() as p:
        publish(p, t, [b"x"] * 10)
    a, sa = _member(ctx, t, g, 1000)
    try:
        ids = _drain(a, sa)
        check(ids == list(range(1, 11)), f"a lone member got {ids}", "NMQ-SEM-6-2")
        with ctx.step("NMQ-SEM-6-3", "NMQ-4.7-4"):
            for commit, want in (((3,), 1), ((1,), 2), ((2,), 4), ((10, 4), 5)):
                a.send(Commit(a.next_id(), sa, commit))
                f = a.recv_response()
                check(isinstance(f, Committed) and f.position == want, f"COMMIT {commit} answered {f!r}, position "
                      f"{want} expected")
    finally:
        a.close()


@case("groups.durable-commit", "a group's committed position survives a crash of the target: a new member with "
      "start committed starts at it", layer="crash", needs=Capability.CONSUMER_GROUPS,
      rules=("NMQ-SEM-5-2", "NMQ-4.7-3", "NMQ-SEM-6-3"))
def groups_durable(ctx: Context) -> None:
    if not ctx.target.can_crash:
        raise Skipped("no launch command: the kit cannot crash the target")
    t, g = ctx.topic("gdur"), ctx.topic("g")
    with ctx.client() as p:
        publish(p, t, [b"d"] * 10, Ack.DURABLE)
    a, sa = _member(ctx, t, g, 1000)
    _drain(a, sa)
    a.send(Commit(a.next_id(), sa, tuple(range(1, 7))))
    f = a.recv_response()
    check(isinstance(f, Committed) and f.position == 7, f"COMMIT 1..6 answered {f!r}", "NMQ-SEM-6-3")
    a.close()
    ctx.target.kill()
    ctx.target.start()
    with ctx.step("NMQ-SEM-5-2", "NMQ-4.7-3"):
        b, sb = _member(ctx, t, g, 1000, Start.COMMITTED)
        try:
            ids = _drain(b, sb)
            check(ids[:1] == [7] or (ids and ids[0] >= 7 and 7 in ids),
                  f"after a crash a member starting at the committed position 7 got {ids[:10]}")
        finally:
            b.close()


@case("idempotent.duplicates", "a batch repeating the (producer_id, sequence) pairs of the producer's last batch "
      "is acknowledged with the original ids and appends nothing; other producers and new sequences append; "
      "producer_id and sequence are stored unchanged", layer="wire", needs=Capability.IDEMPOTENT,
      rules=("NMQ-SEM-7-1", "NMQ-SEM-7-2", "NMQ-7-7", "NMQ-5.1-6"))
def idempotent(ctx: Context) -> None:
    t = ctx.topic("idem2")
    with ctx.client() as w:
        first = RecordBatch.from_payloads([b"a", b"b", b"c"], producer_id=77, first_sequence=1)
        a = publish_batch(w, t, first)
        with ctx.step("NMQ-SEM-7-1"):
            again = publish_batch(w, t, first)
            check((again.first_id, again.count) == (a.first_id, a.count), f"the repeated batch answered {again!r}, "
                  f"the original {a!r}")
            check(topic_info(w, t).next_id == a.first_id + 3, "the repeated batch was appended")
        with ctx.step("NMQ-SEM-7-2"):
            other = publish_batch(w, t, RecordBatch.from_payloads([b"a", b"b", b"c"], producer_id=78, first_sequence=1))
            check(other.first_id == a.first_id + 3, f"another producer's batch answered {other!r}")
            new = publish_batch(w, t, RecordBatch.from_payloads([b"d"], producer_id=77, first_sequence=4))
            check(new.first_id == a.first_id + 6, f"a new sequence answered {new!r}")
        with ctx.step("NMQ-5.1-6"):
            rid = w.next_id()
            w.send(Subscribe(rid, t, Start.EARLIEST, 0, 100, ""))
            s = w.recv_response()
            assert isinstance(s, Subscribed)
            recs = collect_all(w, s.sub_id, 7)
            check([(r.producer_id, r.sequence) for r in recs] == [(77, 1), (77, 2), (77, 3), (78, 1), (78, 2), (78, 3),
                                                                 (77, 4)],
                  f"producer ids and sequences stored as {[(r.producer_id, r.sequence) for r in recs]}")


def publish_batch(w: WireClient, topic: str, batch: RecordBatch) -> PublishAck:
    """PUBLISH a prepared batch (written) that must be accepted."""
    rid = w.next_id()
    w.send(Publish(rid, topic, Ack.WRITTEN, batch))
    f = w.recv_response()
    check(isinstance(f, PublishAck) and f.count == batch.count, f"PUBLISH answered {f!r}", "NMQ-4.2-1")
    assert isinstance(f, PublishAck)
    return f


# ---------------------------------------------------------------- response frames, byte by byte

_BODY = {  # opcode -> (fixed body length, or None when variable)
    0x81: None, 0x82: 16, 0x83: 24, 0x84: 0, 0x85: None, 0x86: 8, 0x87: 8, 0x88: None, 0x89: 8, 0xFF: None,
}


def _split(raw: bytes) -> list[tuple[int, int, int, bytes]]:
    """(opcode, flags|reserved, request_id, body) of every frame in ``raw``, checked against its size."""
    out = []
    off = 0
    while off < len(raw):
        check(len(raw) - off >= 16, f"{len(raw) - off} stray bytes after the last whole frame", "NMQ-3.1-1")
        size, op, flags, res, rid = struct.unpack_from("<IBBHQ", raw, off)
        check(16 <= size <= len(raw) - off, f"a frame of size {size} with {len(raw) - off} bytes left", "NMQ-3.1-1")
        out.append((op, flags | res, rid, raw[off + 16 : off + size]))
        off += size
    return out


def _records_of(body: bytes) -> list[int]:
    """The ids of the records in a DELIVER body (lengths taken from the headers)."""
    ids = []
    off = 8
    while off + 64 <= len(body):
        ids.append(struct.unpack_from("<Q", body, off)[0])
        off += (64 + struct.unpack_from("<I", body, off + 20)[0] + 7) & ~7
    return ids


def _variable_ok(op: int, body: bytes) -> bool:
    """Whether a variable-length body is exactly as long as its own fields say (no padding)."""
    if op == 0x81:
        n = struct.unpack_from("<H", body, 2)[0]
        return len(body) == 20 + n
    if op == 0xFF:
        m, r = struct.unpack_from("<HH", body, 2)
        return len(body) == 8 + m + r
    if op == 0x88:
        count = struct.unpack_from("<I", body)[0]
        off = 8
        for _ in range(count):
            if off + 24 > len(body):
                return False
            off += 24 + struct.unpack_from("<H", body, off + 4)[0]
        return off == len(body)
    if op == 0x85:
        count = struct.unpack_from("<H", body, 4)[0]
        off = 8
        for _ in range(count):
            if off + 64 > len(body):
                return False
            off += (64 + struct.unpack_from("<I", body, off + 20)[0] + 7) & ~7
        return off == len(body)
    return False


@case("wire.response-bytes", "every response type read as raw bytes: each frame's size covers exactly its bytes, "
      "bodies have exactly their fields' length (no padding), flags and reserved are zero, the opcode is the "
      "request's | 0x80", layer="wire", rules=("NMQ-3.1-1", "NMQ-3.1-3", "NMQ-3.1-4", "NMQ-3.2-1", "NMQ-3.2-3", "NMQ-4.6-3"))
def response_bytes(ctx: Context) -> None:
    t = ctx.topic("rbytes")
    sock = socket.create_connection((ctx.target.host, ctx.target.port), timeout=10)
    if ctx.target.ssl is not None:
        sock = ctx.target.ssl.wrap_socket(sock, server_hostname=ctx.target.host)
    with sock:
        reqs = [Hello(1, 1, "bytes", b""), Publish(2, t, Ack.WRITTEN, RecordBatch.from_payloads([b"x" * 13, b"y"])),
                Subscribe(3, t, Start.EARLIEST, 0, 2, ""), Metadata(4, t), Metadata(5, ""), Ping(6, 6),
                Seek(7, 1, Start.ID, 1), Metadata(8, t + "-none"), Unsubscribe(9, 1)]
        sock.sendall(b"".join(encode(r) for r in reqs) + raw_commit(10, 99, [1])
                     + encode(Subscribe(11, t, Start.EARLIEST, 0, 2, "")))
        want_ops = {1: 0x81, 2: 0x82, 3: 0x83, 4: 0x88, 5: 0x88, 6: 0x89, 7: 0x87, 8: 0xFF, 9: 0x84, 10: 0xFF, 11: 0x83}
        raw = b""
        deadline = time.monotonic() + 10
        frames: list[tuple[int, int, int, bytes]] = []
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                break
            if not chunk:
                break
            raw += chunk
            try:
                frames = _split(raw)
            except Failed:
                continue  # a frame is still arriving
            if sum(1 for f in frames if f[0] != 0x85) >= len(want_ops) and sum(
                    len(_records_of(f[3])) for f in frames if f[0] == 0x85) >= 2:
                break
        with ctx.step("NMQ-3.1-1"):
            frames = _split(raw)
        answers = [f for f in frames if f[0] != 0x85]
        with ctx.step("NMQ-3.2-1", "NMQ-3.2-3"):
            check([(f[2], f[0]) for f in answers] == list(want_ops.items()),
                  f"(request_id, opcode) of the answers: {[(f[2], hex(f[0])) for f in answers]}")
        with ctx.step("NMQ-3.1-4"):
            check(all(f[1] == 0 for f in frames), "a response frame has non-zero flags or reserved bits")
        with ctx.step("NMQ-3.2-3", "NMQ-4.6-3"):
            delivered = [i for f in frames if f[0] == 0x85 for i in _records_of(f[3])]
            check(delivered == [1, 2] and all(f[2] == 0 for f in frames if f[0] == 0x85),
                  f"the last subscription (credit 2) was delivered ids {delivered} (request_id of DELIVER must be 0)")
        with ctx.step("NMQ-3.1-3", "NMQ-3.1-1"):
            for op, _, rid, body in frames:
                fixed = _BODY.get(op, -1)
                check(fixed != -1, f"unknown response opcode 0x{op:02x}")
                ok = len(body) == fixed if fixed is not None else _variable_ok(op, body)
                check(ok, f"response 0x{op:02x} to request {rid} has a {len(body)}-byte body that does not match "
                      "its fields")
