"""Clients that misbehave (issue 10 items 6, 7, 8): each test failed before its change.

- fairness: a flood is handled one turn at a time, the rest waiting unread ([NMQ-6.2-4]); before,
  all 3000 pipelined PINGs of one read were answered in one callback;
- dead connections: a reset storm writes nothing to the lost connections (29,370 asyncio
  ``socket.send() raised exception`` lines before, with the Python data plane);
- idle connections and clients that never read are closed after ``--idle-timeout`` /
  ``--write-timeout`` ([NMQ-2-5], [NMQ-6.2-7]); the flags did not exist;
- memory: commit gaps are runs, capped per connection ([NMQ-4.7-5]; 2..1,000,000 was a set of a
  million ints); large frames still arriving are bounded across connections (8 connections
  holding 15 MiB of a 16 MiB frame each grew the broker by about 120 MiB); topic creation is
  limited in rate ([NMQ-6.2-5]).
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nanomq._c.plane import CAP_LZ4, Plane
from nanomq.broker import connection as connection_module
from nanomq.broker.config import BrokerConfig
from nanomq.broker.connection import (
    _INLINE_BYTES,
    _READ_BYTES,
    _TURN_BYTES,
    _TURN_FRAMES,
    Announcement,
    Connection,
    ConnectionContext,
    FrameBudget,
    TopicQuota,
    Turns,
)
from nanomq.broker.subscription import Subscription
from nanomq.broker.topics import TopicRegistry
from nanomq.broker_process import BrokerProcess
from nanomq.cli.broker import main as broker_main
from nanomq.protocol import (
    Ack,
    Commit,
    Committed,
    Decoder,
    Deliver,
    Error,
    ErrorCode,
    Frame,
    Hello,
    HelloOk,
    Limits,
    Metadata,
    MetadataOk,
    Ping,
    Pong,
    Publish,
    PublishAck,
    RecordBatch,
    Start,
    Subscribe,
    Subscribed,
    encode,
)
from tests.test_broker_connection import ANNOUNCED, FakeTransport, _hold_durable_acks

# ---------------------------------------------------------------- a connection alone


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[TopicRegistry]:
    plane = Plane(ANNOUNCED.max_frame, ANNOUNCED.max_payload, ANNOUNCED.max_batch, CAP_LZ4)
    reg = TopicRegistry(BrokerConfig(data_dir=tmp_path, segment_bytes=1 << 20, fsync="never"), plane)
    reg.open_all()
    yield reg
    reg.close_all()


class Transport(FakeTransport):
    """FakeTransport with what the data plane path also asks of a transport."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: Any) -> None:
        self.writes += 1
        super().write(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        self.closed = True


class Peer:
    def __init__(self, registry: TopicRegistry, *, c_plane: bool = False, turns: Turns | None = None,
                 max_commit_gaps: int = 4096, budget: FrameBudget | None = None,
                 announced: Announcement = ANNOUNCED) -> None:
        self.conn = Connection(ConnectionContext(
            announced, registry, 8, 1 << 16, lambda c: True, lambda c: None,
            plane=registry.plane if c_plane else None, topic_at=registry.at if c_plane else None,
            turns=turns, max_commit_gaps=max_commit_gaps, frame_budget=budget))
        self.transport = Transport()
        self.conn.connection_made(self.transport)
        self._decoder = Decoder("client", limits=Limits(max_payload=4096, max_batch=64))
        self._seen = 0

    def send(self, *frames: Frame) -> None:
        self.conn.data_received(b"".join(encode(f) for f in frames))

    def frames(self) -> list[Frame]:
        self._decoder.feed(bytes(self.transport.out[self._seen :]))
        self._seen = len(self.transport.out)
        out = []
        while (f := self._decoder.next_frame()) is not None:
            out.append(f)
        return out

    async def collect(self, got: list[Frame], n: int) -> list[Frame]:
        """``got`` and the frames written after it, letting the loop run turns, until there are
        ``n`` (or 10,000 loop passes went by)."""
        got = list(got)
        for _ in range(10_000):
            if len(got) == n:
                break
            await asyncio.sleep(0)
            got += self.frames()
        return got


@pytest.mark.parametrize("c_plane", [False, True], ids=["python-plane", "c-plane"])
def test_a_flood_is_handled_a_turn_at_a_time(registry: TopicRegistry, c_plane: bool) -> None:
    n = 3000
    per_turn = _TURN_BYTES // 24 + 1 if c_plane else _TURN_FRAMES  # a PING is 24 bytes

    async def main() -> None:
        p = Peer(registry, c_plane=c_plane)
        p.send(Hello(1))
        assert isinstance(p.frames()[0], HelloOk)
        p.send(*(Ping(2 + i, i) for i in range(n)))
        first = p.frames()
        assert 0 < len(first) <= per_turn, len(first)  # one turn now, not the whole read
        assert not p.transport.reading  # and no more reading until the backlog is handled
        got = await p.collect(first, n)
        assert got == [Pong(2 + i, i) for i in range(n)]
        assert p.transport.reading

    asyncio.run(main())


def test_a_queued_flood_lets_a_quiet_connection_through(registry: TopicRegistry) -> None:
    """Two connections share the broker's turns: the quiet one's PING is answered in its own
    callback, while the flooder's backlog waits for its turns."""

    async def main() -> None:
        turns = Turns()
        flood, quiet = Peer(registry, turns=turns), Peer(registry, turns=turns)
        for p in (flood, quiet):
            p.send(Hello(1))
            p.frames()
        flood.send(*(Ping(2 + i, i) for i in range(2000)))
        assert len(turns) == 1
        quiet.send(Ping(9, 9))
        assert quiet.frames() == [Pong(9, 9)]
        assert len(flood.frames()) <= _TURN_FRAMES

    asyncio.run(main())


@pytest.mark.parametrize("c_plane", [False, True], ids=["python-plane", "c-plane"])
def test_a_second_flood_joins_the_queue_instead_of_taking_a_turn_ahead_of_it(registry: TopicRegistry,
                                                                              c_plane: bool) -> None:
    """[NMQ-6.2-4]: with one flooder queued for turns, another read of more than a turn of complete
    frames (a flooder resumed) is not handled in its own callback, where every client that just sent
    something would wait behind it; a lone request still is, and both floods are answered in full."""

    async def main() -> None:
        turns = Turns()
        a, b, quiet = (Peer(registry, c_plane=c_plane, turns=turns) for _ in range(3))
        for p in (a, b, quiet):
            p.send(Hello(1))
            p.frames()
        n = 3000
        a.send(*(Ping(2 + i, i) for i in range(n)))
        got_a = a.frames()
        assert got_a and len(turns) == 1  # the first flooder took one turn, then queued
        b.send(*(Ping(2 + i, i) for i in range(n)))
        assert b.frames() == [] and len(turns) == 2 and not b.transport.reading  # queued, nothing handled
        quiet.send(Ping(9, 9))
        assert quiet.frames() == [Pong(9, 9)]
        got_b: list[Frame] = []
        for _ in range(10_000):
            if len(got_a) == n and len(got_b) == n:
                break
            await asyncio.sleep(0)
            got_a += a.frames()
            got_b += b.frames()
        assert got_a == [Pong(2 + i, i) for i in range(n)] and got_b == got_a

    asyncio.run(main())


def test_a_c_plane_turn_answers_in_one_write_and_leaves_the_cut_frame_to_the_next_turn(
        registry: TopicRegistry) -> None:
    """The plane stops inside the frame the turn's byte limit cuts: that frame is the next turn's
    first, not decoded and answered through the Python handlers (a write of its own per turn)."""

    async def main() -> None:
        p = Peer(registry, c_plane=True)
        p.send(Hello(1))
        p.frames()
        writes = p.transport.writes
        n = 3000
        p.send(*(Ping(2 + i, i) for i in range(n)))
        first = p.frames()
        assert len(first) == _TURN_BYTES // 24, len(first)  # the whole PINGs within the turn's bytes
        assert p.transport.writes - writes == 1  # all of them in one write
        got = await p.collect(first, n)
        assert got == [Pong(2 + i, i) for i in range(n)]

    asyncio.run(main())


@pytest.mark.parametrize("c_plane", [False, True], ids=["python-plane", "c-plane"])
def test_while_others_wait_for_turns_more_than_a_few_requests_wait_too(registry: TopicRegistry,
                                                                      c_plane: bool) -> None:
    """Light requests first ([NMQ-6.2-4]): with a flooder queued, a read of more than
    ``_INLINE_BYTES`` of complete frames (less than a turn) joins the queue rather than being
    handled in its own callback; a read within it is answered at once."""

    async def main() -> None:
        turns = Turns()
        flood, some, few = (Peer(registry, c_plane=c_plane, turns=turns) for _ in range(3))
        for p in (flood, some, few):
            p.send(Hello(1))
            p.frames()
        flood.send(*(Ping(2 + i, i) for i in range(3000)))
        assert len(turns) == 1
        k = _INLINE_BYTES // 24 + 8  # just over the inline bound, well under a turn
        assert k * 24 < _TURN_BYTES
        some.send(*(Ping(2 + i, i) for i in range(k)))
        assert some.frames() == [] and len(turns) == 2 and not some.transport.reading
        m = _INLINE_BYTES // 24 if c_plane else _TURN_FRAMES  # a turn of the Python path is 16 frames
        few.send(*(Ping(2 + i, i) for i in range(m)))
        assert few.frames() == [Pong(2 + i, i) for i in range(m)]
        got = await some.collect([], k)
        assert got == [Pong(2 + i, i) for i in range(k)] and some.transport.reading

    asyncio.run(main())


def test_reads_take_one_turn_at_most_while_others_wait(registry: TopicRegistry) -> None:
    """The connection is a buffered protocol: a read lands in the broker's one read buffer, all of
    it while no connection waits for turns, one turn's worth while some do ([NMQ-6.2-4])."""

    async def main() -> None:
        turns = Turns()
        flood, other = Peer(registry, turns=turns), Peer(registry, turns=turns)
        buf = other.conn.get_buffer(-1)
        assert len(buf) == _READ_BYTES
        hello = encode(Hello(1))
        buf[: len(hello)] = hello
        other.conn.buffer_updated(len(hello))
        assert isinstance(other.frames()[0], HelloOk)
        flood.send(Hello(1))
        flood.send(*(Ping(2 + i, i) for i in range(3000)))
        assert len(turns) == 1
        buf = other.conn.get_buffer(-1)
        assert len(buf) == _TURN_BYTES
        ping = encode(Ping(7, 7))
        buf[: len(ping)] = ping
        other.conn.buffer_updated(len(ping))
        assert other.frames() == [Pong(7, 7)]

    asyncio.run(main())


def test_the_c_plane_takes_a_durable_publish_and_its_ack_keeps_its_place(registry: TopicRegistry,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A durable PUBLISH is appended by the C plane, not decoded by the codec; its ack waits for
    the sync, and the answers pipelined behind it wait behind it ([NMQ-3.3-2], [NMQ-SEM-3-1])."""
    pending = _hold_durable_acks(registry.get_or_create("t"))
    decoded: list[int] = []
    on_publish = Connection._on_publish

    def spy(self: Connection, f: Publish) -> None:
        decoded.append(f.request_id)
        on_publish(self, f)

    monkeypatch.setitem(connection_module._HANDLERS, Publish, spy)
    p = Peer(registry, c_plane=True)
    p.send(Hello(1))
    p.frames()
    p.send(Publish(2, "t", Ack.DURABLE, RecordBatch.from_payloads([b"a", b"b"])), Ping(3, 9),
           Publish(4, "t", Ack.WRITTEN, RecordBatch.from_payloads([b"c"])))
    assert p.frames() == []  # the PING and the written ack wait for the durable ack ahead of them
    assert decoded == [4]  # the durable one went through the plane; the rest, queued, through the codec
    (done,) = pending
    done(None)
    assert p.frames() == [PublishAck(2, 1, 2), Pong(3, 9), PublishAck(4, 3, 1)]
    p.send(Publish(5, "t", Ack.DURABLE, RecordBatch.from_payloads([b"d"])))
    pending[1](OSError(5, "EIO"))
    (err,) = p.frames()
    assert isinstance(err, Error) and err.request_id == 5 and err.code == ErrorCode.STORAGE_ERROR
    assert decoded == [4]


def test_nothing_is_handled_or_written_once_the_transport_is_closing(registry: TopicRegistry) -> None:
    async def main() -> None:
        p = Peer(registry)
        p.send(Hello(1))
        p.frames()
        p.send(*(Ping(2 + i, i) for i in range(500)))
        p.transport.closed = True  # the peer reset the connection: the transport is closing
        before = len(p.transport.out)
        for _ in range(50):
            await asyncio.sleep(0)
        p.conn._pump()
        assert len(p.transport.out) == before

    asyncio.run(main())


def test_commit_gaps_are_runs_and_capped_per_connection(registry: TopicRegistry) -> None:
    sub = Subscription(1, registry.get_or_create("g"), 1, 0)
    sub.next_id = 1_000_001
    sub.commit(tuple(range(2, 1_000_001)))
    assert sub.committed == 1 and sub.gaps == 1  # one run, not a million ids
    assert sub.commit((1,)) == 1_000_001 and sub.gaps == 0

    async def main() -> None:
        p = Peer(registry, max_commit_gaps=4)
        p.send(Hello(1))
        p.send(Publish(2, "gaps", Ack.WRITTEN, RecordBatch.from_payloads([b"x"] * 20)),
               Subscribe(3, "gaps", Start.EARLIEST, 0, 100, ""))
        for _ in range(3):
            await asyncio.sleep(0)
        subscribed = [f for f in p.frames() if isinstance(f, Subscribed)][0]
        sid = subscribed.sub_id
        p.send(Commit(4, sid, (3, 5, 7, 9)))  # four runs above the committed position
        assert p.frames() == [Committed(4, 1)]
        p.send(Commit(5, sid, (11,)))  # a fifth: refused, without effect
        (err,) = p.frames()
        assert isinstance(err, Error) and err.code == ErrorCode.RESOURCE_LIMIT and err.rule == "NMQ-4.7-5"
        p.send(Commit(6, sid, (4,)))  # joins two runs: three left
        assert p.frames() == [Committed(6, 1)]
        p.send(Commit(7, sid, (11, 13)))
        (err,) = p.frames()
        assert isinstance(err, Error) and err.code == ErrorCode.RESOURCE_LIMIT
        p.send(Commit(8, sid, (1, 2, 11)))  # 1..5 committed, runs 7, 9, 11
        assert p.frames() == [Committed(8, 6)]
        assert p.conn._gaps == 3

    asyncio.run(main())


def test_topic_quota_is_a_token_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    q = TopicQuota(5, 8)
    assert [q.take() for _ in range(10)] == [True] * 8 + [False] * 2
    now[0] += 0.2  # one more allowed
    assert [q.take(), q.take()] == [True, False]
    now[0] += 60  # never more than the burst at once
    assert sum(q.take() for _ in range(20)) == 8


# ---------------------------------------------------------------- a broker process


class W:
    """A raw wire client."""

    def __init__(self, port: int, hello: bool = True) -> None:
        self.s = socket.create_connection(("127.0.0.1", port))
        self.d = Decoder("client", limits=Limits(1 << 24, 256))
        self.rid = 10
        if hello:
            self.send(Hello(1))
            assert isinstance(self.recv(), HelloOk)

    def next(self) -> int:
        self.rid += 1
        return self.rid

    def send(self, *fs: Frame) -> None:
        self.s.sendall(b"".join(encode(f) for f in fs))

    def recv(self, timeout: float = 10.0) -> Frame:
        self.s.settimeout(timeout)
        while True:
            f = self.d.next_frame()
            if f is not None:
                return f
            b = self.s.recv(1 << 20)
            if not b:
                raise EOFError("closed")
            self.d.feed(b)

    def response(self, timeout: float = 10.0) -> Frame:
        while True:
            f = self.recv(timeout)
            if not isinstance(f, Deliver):
                return f

    def received_within(self, seconds: float) -> tuple[list[Frame], bool]:
        """The frames received within ``seconds``, and whether the broker closed the connection."""
        deadline = time.monotonic() + seconds
        out: list[Frame] = []
        while time.monotonic() < deadline:
            try:
                out.append(self.recv(max(0.01, deadline - time.monotonic())))
            except (EOFError, ConnectionResetError):
                return out, True
            except TimeoutError:
                break
        return out, False

    def closed_within(self, seconds: float) -> list[Frame]:
        """The frames received until the broker closed the connection (fails if it does not)."""
        out, closed = self.received_within(seconds)
        if not closed:
            raise AssertionError(f"still open after {seconds} s (got {out!r})")
        return out

    def close(self) -> None:
        self.s.close()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise OSError("no VmRSS")


@pytest.mark.parametrize("plane", ["python", "c"])
def test_a_reset_storm_writes_nothing_to_dead_connections(tmp_path: Path, plane: str) -> None:
    pings = b"".join(encode(Ping(i + 2, i)) for i in range(12_000))
    with BrokerProcess(tmp_path / "data", ["--data-plane", plane, "--loop", "asyncio"]) as b:
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", b.port))
            s.sendall(encode(Hello(1)))
            time.sleep(0.05)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(pings)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
            s.close()
        time.sleep(1.0)
        w = W(b.port)
        w.send(Ping(2, 1))
        assert w.response() == Pong(2, 1)  # and the broker serves on
        w.close()
    log = b.log_path.read_text(errors="replace")
    assert log.count("socket.send() raised exception") == 0, log[-2000:]


def test_idle_connections_are_closed_subscribers_and_talkers_are_not(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data", ["--idle-timeout", "0.5"]) as b:
        idle, talker, subscriber = W(b.port), W(b.port), W(b.port)
        subscriber.send(Subscribe(2, "quiet", Start.LATEST, 0, 10, ""))
        assert isinstance(subscriber.response(), Subscribed)
        t0 = time.monotonic()
        closed: list[Frame] | None = None
        seen: list[Frame] = []  # kept across polls: the ERROR may come in one poll, the close in the next
        while time.monotonic() - t0 < 3.0:
            talker.send(Ping(talker.next(), 0))
            assert isinstance(talker.response(), Pong)
            if closed is None:
                idle.s.settimeout(0.2)
                got, gone = idle.received_within(0.2)
                seen += got
                if gone:
                    closed = seen
            time.sleep(0.1)
        assert closed is not None, "the idle connection was not closed within 3 s"
        assert any(isinstance(f, Error) and f.code == ErrorCode.RESOURCE_LIMIT and f.rule == "NMQ-2-5"
                   for f in closed), closed
        subscriber.send(Ping(3, 0))
        assert subscriber.response() == Pong(3, 0)
        for w in (talker, subscriber, idle):
            w.close()


def test_a_client_that_never_reads_is_dropped(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data", ["--write-timeout", "1"]) as b:
        w = W(b.port)
        batch = RecordBatch.from_payloads([bytes(4000)] * 250)
        for _ in range(24):  # 24 MB of backlog
            w.send(Publish(w.next(), "backlog", Ack.WRITTEN, batch))
            assert isinstance(w.response(), PublishAck)
        lazy = W(b.port)
        lazy.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lazy.send(Subscribe(2, "backlog", Start.EARLIEST, 0, 0xFFFF_FFFF, ""))
        time.sleep(3.5)  # never reads
        lazy.s.settimeout(5)
        with pytest.raises((ConnectionResetError, EOFError)):
            while True:  # what was buffered in the kernel, then the reset
                if not lazy.s.recv(1 << 20):
                    raise EOFError
        w.send(Ping(w.next(), 5))
        assert isinstance(w.response(), Pong)
        w.close()


def test_large_frames_still_arriving_are_bounded_across_connections(tmp_path: Path) -> None:
    frame = encode(Publish(5, "big", Ack.WRITTEN, RecordBatch.from_payloads([bytes(65_000)] * 256)))
    assert len(frame) > 16_000_000
    with BrokerProcess(tmp_path / "data", ["--max-frame-buffer", "16MiB"]) as b:
        time.sleep(0.3)
        base = _rss_kb(b.pid)
        clients = []
        for _ in range(8):
            w = W(b.port)
            w.s.setblocking(False)
            sent, deadline = 0, time.monotonic() + 1.0
            while sent < len(frame) - (1 << 20) and time.monotonic() < deadline:
                try:
                    sent += w.s.send(memoryview(frame)[sent : len(frame) - (1 << 20)])
                except BlockingIOError:
                    time.sleep(0.002)
            clients.append((w, sent))
        time.sleep(0.5)
        grown = (_rss_kb(b.pid) - base) >> 10
        assert grown <= 16 + 8 + 16, f"8 partial 16 MiB frames grew the broker by {grown} MiB (budget 16 MiB)"
        for w, sent in clients:  # every frame completes in turn: no deadlock
            w.s.setblocking(True)
            w.s.sendall(memoryview(frame)[sent:])
        for w, _ in clients:
            assert isinstance(w.response(30), PublishAck)
            w.close()
        time.sleep(1.5)
        kept = (_rss_kb(b.pid) - base) >> 10
        assert kept <= 24, f"the broker kept {kept} MiB after the frames were handled"


def test_topic_creation_is_rate_limited(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data", ["--topic-create-rate", "5", "--topic-create-burst", "5"]) as b:
        w = W(b.port)
        answers = []
        for k in range(10):
            w.send(Subscribe(w.next(), f"made-up-{k}", Start.EARLIEST, 0, 1, ""))
            answers.append(w.response())
        made = [a for a in answers if isinstance(a, Subscribed)]
        refused = [a for a in answers if isinstance(a, Error)]
        assert 5 <= len(made) <= 6 and len(made) + len(refused) == 10, answers
        assert all(e.code == ErrorCode.RESOURCE_LIMIT and e.rule == "NMQ-6.2-5" for e in refused)
        w.send(Metadata(w.next(), ""))
        md = w.response()
        assert isinstance(md, MetadataOk) and len(md.topics) == len(made)  # refused ones were not created
        time.sleep(1.1)
        w.send(Subscribe(w.next(), "made-up-9", Start.EARLIEST, 0, 1, ""))
        assert isinstance(w.response(), Subscribed)  # allowed again later
        w.close()


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--idle-timeout", "-1", "--idle-timeout must be 0 (never) or"),
    ("--idle-timeout", "nan", "not a finite number"),
    ("--write-timeout", "0", "--write-timeout must be"),
    ("--max-topics", "0", "--max-topics must be"),
    ("--topic-create-rate", "-1", "--topic-create-rate must be"),
    ("--topic-create-rate", "inf", "not a finite number"),
    ("--topic-create-burst", "0", "--topic-create-burst must be"),
    ("--max-commit-gaps", "0", "--max-commit-gaps must be"),
    ("--max-frame-buffer", "4KiB", "--max-frame-buffer must be"),
])
def test_new_flags_are_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str,
                                 says: str) -> None:
    with pytest.raises(SystemExit) as e:
        broker_main(["--data-dir", str(tmp_path), flag, value])
    assert e.value.code == 2
    assert says in capsys.readouterr().err


def test_new_flags_are_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        broker_main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--idle-timeout", "--write-timeout", "--max-topics", "--topic-create-rate", "--topic-create-burst",
                 "--max-commit-gaps", "--max-frame-buffer"):
        assert flag in out


class TlsTransport(Transport):
    """What a connection sees of asyncio's SSL transport: an sslcontext, no socket to write to."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return object() if name == "sslcontext" else super().get_extra_info(name, default)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_tls_connection_whose_output_stalls_gives_openssls_freed_buffers_back(
        registry: TopicRegistry, tls: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """[NMQ-6.2-2] The memory a stuck TLS subscriber costs stays near what is buffered for it:
    OpenSSL grows its outgoing buffer to the write limit by reallocating, and the blocks it frees
    stay resident unless the heap is trimmed, which a stall arms 0.5 s later (at most one trim per
    0.5 s, however many connections stall); plain TCP output needs none."""
    from nanomq.broker import connection as connection_mod

    trims: list[float] = []
    monkeypatch.setattr(connection_mod, "_release_freed_memory", lambda: trims.append(time.monotonic()))

    async def main() -> None:
        budget = FrameBudget(64 << 20)
        conns = []
        for _ in range(3):
            conn = Connection(ConnectionContext(ANNOUNCED, registry, 8, 1 << 16, lambda c: True, lambda c: None,
                                                frame_budget=budget))
            conn.connection_made(TlsTransport() if tls else Transport())
            conns.append(conn)
        for conn in conns:
            conn.pause_writing()
        await asyncio.sleep(0.7)
        assert len(trims) == (1 if tls else 0), trims
        for conn in conns:
            conn.resume_writing()
            conn.pause_writing()
        await asyncio.sleep(0.7)
        assert len(trims) == (2 if tls else 0), trims

    asyncio.run(main())


@pytest.mark.parametrize("c_plane", [False, True], ids=["python-plane", "c-plane"])
def test_a_large_frame_handled_gives_its_memory_back_even_after_an_earlier_trim(
        registry: TopicRegistry, c_plane: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """[NMQ-6.2-6] "the memory is given back once the frame has been handled": the heap is trimmed
    after a large frame is handled, also when it arrived in one read (no reservation was ever
    made) and when a trim already ran before it (a frame that waited for its turn)."""
    from nanomq.broker import connection as connection_mod

    trims: list[float] = []
    monkeypatch.setattr(connection_mod, "_release_freed_memory", lambda: trims.append(time.monotonic()))
    announced = dataclasses.replace(ANNOUNCED, max_frame=4 << 20, max_batch=256, max_payload=65536)
    frame = Publish(2, "trimmed", Ack.WRITTEN, RecordBatch.from_payloads([bytes(8192)] * 256))
    assert len(encode(frame)) >= 1 << 20

    async def main() -> None:
        p = Peer(registry, c_plane=c_plane, budget=FrameBudget(64 << 20), announced=announced)
        p.send(Hello(1))
        p.send(frame)
        await asyncio.sleep(0.7)
        assert len(trims) == 1, trims  # handled: trimmed 0.5 s later
        p.send(dataclasses.replace(frame, request_id=3))
        await asyncio.sleep(0.7)
        assert len(trims) == 2, trims  # a later frame arms the trim again
        assert sum(isinstance(f, PublishAck) for f in p.frames()) == 2

    asyncio.run(main())
