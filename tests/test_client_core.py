"""The clients' sans-IO parts on their own: the core, the state table, the policies, the argument
checks, the error classes, and a flow driven by a scripted transport (no socket anywhere)."""

from __future__ import annotations

import itertools
import logging

import pytest

import nanomq
from nanomq.client import args
from nanomq.client.core import ClientCore
from nanomq.client.errors import (
    ArgumentTypeError,
    ConnectionLostError,
    InvalidArgumentError,
    NanoMQError,
    ProtocolError,
    RequestTimeoutError,
    ServerError,
)
from nanomq.client.flows import Open, OpenFailed, Receive, Runner, Send, Sleep, connect
from nanomq.client.policy import PUBLISH_OVERHEAD, Backoff, Batcher, PublishRun, plan_batches
from nanomq.client.state import TRANSITIONS, ClientState, ClientStateError, Event, next_state
from nanomq.protocol import Ack, Error, ErrorCode, HelloOk, Pong, PublishAck, encode

BYE = Error(0, int(ErrorCode.SHUTTING_DOWN), "broker is shutting down")


def _ready_core() -> ClientCore:
    core = ClientCore()
    core.begin_connect()
    req = core.hello()
    assert core.feed(encode(HelloOk(req.rid, 1, 0, 1 << 24, 65536, 256, "x"))) is None
    assert core.response(req) is not None
    core.ready()
    return core


# ---------------------------------------------------------------------------- state

def test_every_transition_is_in_the_table_and_no_other() -> None:
    for state, event in itertools.product(ClientState, Event):
        allowed = TRANSITIONS[state].get(event)
        if allowed is None:
            with pytest.raises(ClientStateError):
                next_state(state, event)
        else:
            assert next_state(state, event) is allowed
    assert next_state(ClientState.READY, Event.CLOSE) is ClientState.CLOSED
    assert TRANSITIONS[ClientState.CLOSED] == {Event.LOSE: ClientState.CLOSED, Event.CLOSE: ClientState.CLOSED}


def test_core_moves_through_its_states() -> None:
    core = _ready_core()
    assert core.state is ClientState.READY
    core.connection_lost("gone")
    assert core.state is ClientState.DISCONNECTED and core.loss is not None
    with pytest.raises(ClientStateError):
        core.ready()  # not connecting
    core.close()
    assert core.state is ClientState.CLOSED
    with pytest.raises(ClientStateError):
        core.begin_connect()
    assert "closed" in str(core.last_error())


# ---------------------------------------------------------------------------- responses and losses

def test_core_keeps_responses_decoded_before_a_closing_error() -> None:
    core = _ready_core()
    p1, p2, p3 = (core.publish("t", [p], Ack.WRITTEN, None)[0][0] for p in (b"a", b"b", b"c"))
    data = encode(PublishAck(p1.rid, 1, 1)) + encode(PublishAck(p2.rid, 2, 1)) + encode(BYE) + b"\x00" * 7
    lost = core.feed(data)
    assert isinstance(lost, ConnectionLostError) and "SHUTTING_DOWN" in str(lost)
    assert lost.closed_by is not None and lost.closed_by.code == ErrorCode.SHUTTING_DOWN
    assert core.state is ClientState.DISCONNECTED
    assert core.answered() == {p1.rid, p2.rid}
    assert [core.response(p).first_id for p in (p1, p2)] == [1, 2]  # type: ignore[union-attr]
    with pytest.raises(ConnectionLostError) as e:
        core.response(p3)  # went out on the connection that ended, got no answer
    assert str(e.value).count("SHUTTING_DOWN") == 1
    assert core.feed(encode(PublishAck(99, 3, 1))) is None  # nothing after the end of the stream


def test_core_keeps_responses_decoded_before_garbage() -> None:
    core = ClientCore()
    core.begin_connect()
    req = core.hello()
    lost = core.feed(encode(HelloOk(req.rid, 1, 0, 1 << 24, 65536, 256, "x")) + b"\xff" * 16)
    assert isinstance(lost, ProtocolError) and "invalid data" in str(lost)
    assert core.response(req) is not None


def test_a_response_of_the_wrong_type_ends_the_connection() -> None:
    core = _ready_core()
    req = core.ping()
    lost = core.feed(encode(PublishAck(req.rid, 1, 1)))
    assert isinstance(lost, ProtocolError) and lost.rule == "NMQ-3.2-1"
    with pytest.raises(ProtocolError):
        core.response(req)


def test_an_error_answer_is_a_server_error_and_an_unawaited_one_is_logged(caplog) -> None:
    core = _ready_core()
    req = core.ping()
    core.feed(encode(Error(req.rid, int(ErrorCode.INVALID_ARGUMENT), "no", "NMQ-1")))
    with pytest.raises(ServerError) as e:
        core.response(req)
    assert e.value.code == ErrorCode.INVALID_ARGUMENT and e.value.rule == "NMQ-1"
    none_rid = core.publish("t", [b"x"], Ack.NONE, None)[0][0].rid
    with caplog.at_level(logging.WARNING, logger="nanomq.client"):
        core.feed(encode(Error(none_rid, int(ErrorCode.PAYLOAD_TOO_LARGE), "too big")))
    assert any(f"request {none_rid}" in r.getMessage() for r in caplog.records)
    assert core.state is ClientState.READY


def test_a_forgotten_request_drops_its_late_answer() -> None:
    core = _ready_core()
    req = core.ping()
    core.forget(req.rid)
    core.feed(encode(Pong(req.rid, 0)))
    assert core.answered() == set()


# ---------------------------------------------------------------------------- policies

def test_backoff_doubles_to_its_cap_within_the_budget() -> None:
    b = Backoff(now=0.0, budget=4.0)
    delays, now = [], 0.0
    while (d := b.next_delay(now)) is not None:
        delays.append(d)
        now += d
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]  # 3.55 s; one more second would pass 4
    assert b.attempts == 8


def test_batcher_sends_at_1kib_256_records_or_10ms() -> None:
    b = Batcher()
    assert not b.add("t", b"x" * 1000, now=0.0)
    assert not b.due(0.009) and b.due(0.010)
    assert b.add("t", b"x" * 24, now=0.001)  # 1024 bytes
    assert b.take() == {"t": [b"x" * 1000, b"x" * 24]} and b.pending_bytes == 0 and not b.due(1.0)
    assert [b.add("u", b"", now=1.0) for _ in range(256)][-1] and not any(
        b.add("v", b"", now=1.0) for _ in range(3))


def test_plan_batches_cuts_by_count_and_by_bytes() -> None:
    assert plan_batches([72] * 600, PUBLISH_OVERHEAD, 256, 1 << 24) == [range(0, 256), range(256, 512),
                                                                         range(512, 600)]
    spans = [30_064] * 10
    assert plan_batches(spans, 30, 256, 100_000) == [range(0, 3), range(3, 6), range(6, 9), range(9, 10)]
    assert plan_batches([200_000, 8], 30, 256, 100_000) == [range(0, 1), range(1, 2)]  # too big: alone
    assert plan_batches([], 30, 256, 100_000) == []


def test_publish_run_counts_only_what_got_no_answer() -> None:
    run = PublishRun(sent=[(1, 256), (2, 256), (3, 44)])
    run.acked(10, 256)
    assert run.ids == list(range(10, 266))
    assert run.unacked(answered={2}) == 44
    assert run.unacked(answered=set()) == 300


# ---------------------------------------------------------------------------- arguments and errors

def test_argument_checks() -> None:
    assert args.poll_timeout(None, None) == 1.0
    assert args.poll_timeout(250_000, None) == 0.25
    assert args.poll_timeout(None, 2) == 2.0
    assert args.poll_timeout(None, float("inf")) == float("inf")
    for bad, kind in [((1.0, None), ArgumentTypeError), ((True, None), ArgumentTypeError),
                      ((5, 1.0), ArgumentTypeError), ((-1, None), InvalidArgumentError),
                      ((None, float("nan")), InvalidArgumentError), ((None, "1"), ArgumentTypeError)]:
        with pytest.raises(kind):
            args.poll_timeout(*bad)  # type: ignore[arg-type]
    assert args.parse_address("tls://[::1]:9001") == ("::1", 9001)
    assert args.parse_address("broker") == ("broker", 9000)
    with pytest.raises(InvalidArgumentError):
        args.parse_address("h:0")
    assert args.start_position("timestamp", 5) == (args.START_POSITIONS["timestamp"], 5)
    with pytest.raises(InvalidArgumentError):
        args.record_ids([1, 0])
    with pytest.raises(ArgumentTypeError):
        args.record_ids(5)  # type: ignore[arg-type]
    assert args.payloads([b"a", bytearray(b"b"), memoryview(b"c")]) == [b"a", b"b", b"c"]


def test_error_classes_are_nanomq_errors_and_builtin_ones() -> None:
    assert issubclass(nanomq.ProtocolError, nanomq.NanoMQError)
    assert issubclass(nanomq.ProtocolError, nanomq.protocol.ProtocolError)
    assert issubclass(nanomq.ProtocolError, nanomq.ConnectionLostError)
    assert issubclass(nanomq.ConnectionLostError, ConnectionError)
    assert issubclass(InvalidArgumentError, ValueError) and issubclass(InvalidArgumentError, NanoMQError)
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(ArgumentTypeError, NanoMQError)
    assert issubclass(RequestTimeoutError, TimeoutError)
    e = ConnectionLostError("gone", closed_by=ServerError(int(ErrorCode.SHUTTING_DOWN), "bye"))
    assert str(e) == "gone: SHUTTING_DOWN: bye" and e.reason == "gone: SHUTTING_DOWN: bye"
    assert e.with_unacked(3) is e and e.unacked == 3 and str(e).startswith("gone: SHUTTING_DOWN: bye (3 record")
    assert e.with_unacked(0) is e and str(e) == "gone: SHUTTING_DOWN: bye"  # no note parsed away: rebuilt


# ---------------------------------------------------------------------------- a flow without a socket

def test_connect_retries_with_backoff_then_says_hello() -> None:
    core = ClientCore(args.options("127.0.0.1:9", client_name="t", timeout=5, connect_timeout=5, ssl_context=None))
    run = Runner(connect(core))
    performed = []
    refusals = 3
    while run.op is not None:
        op = run.op
        performed.append(type(op).__name__)
        if isinstance(op, Open):
            if refusals:
                refusals -= 1
                run.resume(OpenFailed("refused", retry=True))
                continue
        elif isinstance(op, Send):
            rid = 1
            core.feed(encode(HelloOk(rid, 1, 0, 1 << 24, 65536, 256, "scripted")))
        elif isinstance(op, Sleep):
            assert op.seconds in (0.05, 0.1, 0.2)
        else:
            assert isinstance(op, Receive)
        run.resume(None)
    assert performed == ["Open", "Sleep", "Open", "Sleep", "Open", "Sleep", "Open", "Send"]
    assert core.state is ClientState.READY and core.server is not None and core.server.server_name == "scripted"


def test_connect_gives_up_at_once_when_a_retry_cannot_help() -> None:
    core = ClientCore()
    run = Runner(connect(core))
    assert isinstance(run.op, Open)
    with pytest.raises(ConnectionLostError) as e:
        run.resume(OpenFailed("TLS handshake failed", retry=False))
    assert "TLS handshake failed" in str(e.value) and core.state is ClientState.DISCONNECTED
