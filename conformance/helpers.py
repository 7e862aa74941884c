"""Conversation helpers shared by the case modules: expected answers, raw frames, quiet periods.

Raw builders exist because the codec's encoders refuse to produce invalid frames (an unknown start
kind, an ack mode of 3, a topic of 256 bytes): the kit must be able to send exactly the bytes a
broken or hostile client would.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence

from conformance.registry import Failed, check, soft_check
from conformance.wire import Closed, WireClient
from nanomq.protocol import (
    Ack,
    Deliver,
    Error,
    ErrorCode,
    Frame,
    Metadata,
    MetadataOk,
    Ping,
    Pong,
    ProtocolError,
    PublishAck,
    Record,
    RecordBatch,
    Start,
    Subscribed,
    TopicInfo,
    frame_header,
)

__all__ = [
    "expect_error", "is_error", "closed", "publish", "subscribe", "quiet", "alive", "topic_info",
    "raw_publish", "raw_subscribe", "raw_seek", "raw_commit", "raw_metadata", "raw_frame", "batch",
    "collect_all", "responses", "fatal", "HELLO_V1", "PING_AFTER", "check_error_text", "known_rule",
]


def is_error(f: Frame, code: ErrorCode) -> bool:
    """Whether ``f`` is an ERROR with ``code``. When it is, its message and rule are checked too
    (SHOULDs, recorded without stopping the case: :func:`check_error_text`)."""
    if not (isinstance(f, Error) and f.code == code):
        return False
    check_error_text(f)
    return True


def check_error_text(f: Error) -> None:
    """An ERROR says what went wrong and cites the rule broken ([NMQ-8-6]), a rule that exists
    ([NMQ-8-5]); both SHOULDs, recorded with :func:`soft_check`."""
    name = f.error_code.name if hasattr(f.error_code, "name") else str(f.code)
    soft_check(bool(f.message.strip()) and bool(f.rule), f"ERROR {name} carries message {f.message!r} and rule "
               f"{f.rule!r}: both are due", "NMQ-8-6")
    soft_check(not f.rule or known_rule(f.rule), f"ERROR {name} cites rule {f.rule!r}, which the "
               "specifications do not define", "NMQ-8-5")


_KNOWN_RULES: set[str] = set()


def known_rule(rule: str) -> bool:
    """Whether ``rule`` is the ID of a rule of the specifications."""
    if not _KNOWN_RULES:
        from conformance.rules import load_rules

        _KNOWN_RULES.update(load_rules())
    return rule in _KNOWN_RULES


def expect_error(f: Frame, code: ErrorCode, *rules: str, request_id: int | None = None) -> Error:
    """Check that ``f`` is ERROR ``code`` (and, if given, carries ``request_id`` [NMQ-8-1]); its
    rule field must be empty or a real rule ID ([NMQ-8-5], a SHOULD: recorded, not stopping)."""
    check(is_error(f, code), f"expected ERROR {code.name}, got {f!r}", *rules)
    assert isinstance(f, Error)
    if request_id is not None:
        check(f.request_id == request_id, f"ERROR {code.name} carries request_id {f.request_id}, "
              f"not the request's {request_id}", "NMQ-8-1")
    return f


def closed(w: WireClient, *rules: str, timeout: float = 5.0) -> list[Frame]:
    """Frames received until the target closed the connection; Failed if it stays open."""
    try:
        return w.expect_closed(timeout)
    except TimeoutError:
        raise Failed(f"the connection was not closed within {timeout:.0f} s", tuple(rules)) from None


HELLO_V1 = struct.pack("<IBBHQHHHH", 24, 0x01, 0, 0, 0xF011, 1, 0, 0, 0)
"""A valid HELLO (request 0xF011) sent right behind a frame that must be fatal: if the server
did not close, it would answer it."""
PING_AFTER = struct.pack("<IBBHQQ", 24, 0x09, 0, 0, 0xF012, 0xF012)
"""A PING (request 0xF012) sent right behind a frame that must be fatal after HELLO."""


def fatal(w: WireClient, raw: bytes, code: ErrorCode, *rules: str, follow: bytes = PING_AFTER,
          what: str = "") -> list[Frame]:
    """Send ``raw`` and, in the same write, ``follow`` (a request the server would answer if it
    went on): expect ERROR ``code``, the connection closed, and ``follow`` never answered — a
    server that sends the ERROR but keeps serving is caught even when a timeout closes it later."""
    w.send_raw(raw + follow)
    frames = closed(w, *rules)
    pre = f"{what}: " if what else ""
    check(any(is_error(f, code) for f in frames), f"{pre}expected ERROR {code.name} and a close, got {frames!r}",
          *rules)
    served = [f for f in frames if not isinstance(f, Error) and f.request_id in (0xF011, 0xF012)]
    check(not served, f"{pre}after the fatal ERROR {code.name} the server still answered {served!r}: it must close "
          "the connection", *(rules or ()), "NMQ-8-2")
    return frames


def alive(w: WireClient, *rules: str, token: int = 0x5EED) -> None:
    """The connection still answers a PING (after a non-fatal error, [NMQ-8-2])."""
    rid = w.next_id() + 50_000
    try:
        w.send(Ping(rid, token))
        f = w.recv_response(5.0)
    except (Closed, TimeoutError, ProtocolError, OSError) as e:
        raise Failed(f"connection unusable after a non-fatal error: {type(e).__name__}: {e}",
                     tuple(rules) or ("NMQ-8-2",)) from None
    check(f == Pong(rid, token), f"expected the PONG, got {f!r}", *(rules or ("NMQ-8-2",)))


def quiet(w: WireClient, seconds: float, what: str, *rules: str) -> None:
    """No frame at all arrives for ``seconds`` (else Failed: ``what`` happened)."""
    try:
        f = w.recv(seconds)
    except TimeoutError:
        return
    except Closed:
        raise Failed(f"the connection was closed ({what} expected nothing)", tuple(rules)) from None
    raise Failed(f"{what}: {f!r}", tuple(rules))


def publish(w: WireClient, topic: str, payloads: Sequence[bytes], ack: Ack = Ack.WRITTEN, **kw: object) -> PublishAck:
    """PUBLISH one batch that must be accepted ([NMQ-4.2-1]); ``kw`` goes to RecordBatch.from_payloads."""
    rid = w.next_id()
    from nanomq.protocol import Publish

    w.send(Publish(rid, topic, ack, RecordBatch.from_payloads(list(payloads), **{**w.batch_limits(), **kw})))  # type: ignore[arg-type]
    f = w.recv_response()
    check(isinstance(f, PublishAck), f"PUBLISH of {len(payloads)} record(s) to {topic} answered {f!r}", "NMQ-4.2-1")
    assert isinstance(f, PublishAck)
    check(f.request_id == rid and f.count == len(payloads),
          f"PUBLISH_ACK {f!r} for a batch of {len(payloads)} (request {rid})", "NMQ-4.2-5")
    return f


def subscribe(w: WireClient, topic: str, start: Start = Start.EARLIEST, value: int = 0,
              credit: int = 1 << 20) -> Subscribed:
    """SUBSCRIBE that must succeed ([NMQ-4.4-1])."""
    f = w.subscribe(topic, start, value, credit)
    check(isinstance(f, Subscribed), f"SUBSCRIBE {topic} start {start.name} {value} answered {f!r}", "NMQ-4.4-1")
    assert isinstance(f, Subscribed)
    return f


def topic_info(w: WireClient, topic: str) -> TopicInfo:
    """The METADATA entry of ``topic`` (which must exist)."""
    rid = w.next_id()
    w.send(Metadata(rid, topic))
    f = w.recv_response()
    check(isinstance(f, MetadataOk) and len(f.topics) == 1 and f.topics[0].name == topic,
          f"METADATA {topic} answered {f!r}", "NMQ-4.9-1")
    assert isinstance(f, MetadataOk)
    return f.topics[0]


def collect_all(w: WireClient, sub_id: int, count: int, timeout: float = 10.0, idle: float = 1.0) -> list[Record]:
    """Records delivered on ``sub_id`` until ``count`` arrived, ``timeout`` passed, or nothing came
    for ``idle`` seconds: returns what arrived (the caller judges a shortfall)."""
    out: list[Record] = []
    for d in w.deliveries:
        if d.sub_id == sub_id:
            out.extend(d.records)
    w.deliveries = [d for d in w.deliveries if d.sub_id != sub_id]
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        try:
            f = w.recv(min(idle, max(0.001, deadline - time.monotonic())))
        except TimeoutError:
            break
        if isinstance(f, Deliver) and f.sub_id == sub_id:
            out.extend(f.records)
        elif isinstance(f, Deliver):
            w.deliveries.append(f)
        else:
            raise AssertionError(f"unexpected {f!r} while collecting deliveries")
    return out


def responses(w: WireClient, n: int, timeout: float = 10.0) -> list[Frame]:
    """The next ``n`` non-DELIVER frames."""
    return [w.recv_response(timeout) for _ in range(n)]


# ---------------------------------------------------------------- raw frames

def raw_frame(opcode: int, request_id: int, body: bytes) -> bytes:
    """Header + body, the header computed from the body."""
    return frame_header(opcode, request_id, len(body)) + body


def batch(payloads: Sequence[bytes], **kw: object) -> RecordBatch:
    """Records as a publisher sends them (ids, timestamps and topic ids zero)."""
    return RecordBatch.from_payloads(list(payloads), **kw)  # type: ignore[arg-type]


def raw_publish(rid: int, topic: bytes, records: bytes, count: int, ack: int = int(Ack.WRITTEN),
                res1: int = 0, res2: int = 0) -> bytes:
    """A PUBLISH frame with every field as given."""
    body = struct.pack("<BBHHH", ack, res1, len(topic), count, res2) + topic + records
    return raw_frame(0x02, rid, body)


def raw_subscribe(rid: int, topic: bytes, start: int = int(Start.EARLIEST), value: int = 0,
                  credit: int = 1 << 20, group: bytes = b"", res1: int = 0, res2: int = 0) -> bytes:
    """A SUBSCRIBE frame with every field as given."""
    body = struct.pack("<QIBBHHH", value, credit, start, res1, len(topic), len(group), res2) + topic + group
    return raw_frame(0x03, rid, body)


def raw_seek(rid: int, sub_id: int, start: int, value: int = 0) -> bytes:
    """A SEEK frame (start kind unchecked)."""
    return raw_frame(0x07, rid, struct.pack("<IBBHQ", sub_id, start, 0, 0, value))


def raw_commit(rid: int, sub_id: int, ids: Sequence[int], count: int | None = None) -> bytes:
    """A COMMIT frame; ``count`` may differ from ``len(ids)`` only to build a broken one."""
    n = len(ids) if count is None else count
    return raw_frame(0x06, rid, struct.pack("<IHH", sub_id, n, 0) + b"".join(struct.pack("<Q", i) for i in ids))


def raw_metadata(rid: int, topic: bytes) -> bytes:
    """A METADATA frame for ``topic`` (b"": all topics)."""
    return raw_frame(0x08, rid, struct.pack("<HHI", len(topic), 0, 0) + topic)
