"""The broker over damaged storage (issue 10, "Damaged data"; spec/storage.md NMQ-S2-5, NMQ-S9-7).

Before the fixes: a subscriber reaching a damaged record hung forever while every publish to the
topic had its connection closed with INTERNAL; a garbage ``topic_id`` hid its topic; a topic
directory left by an unfinished creation stayed forever, and a failed creation left one behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import struct
import time
from pathlib import Path

import pytest

from conformance.wire import Closed, WireClient
from nanomq.broker import topics as topics_mod
from nanomq.broker.config import BrokerConfig
from nanomq.broker.topics import TopicRegistry
from nanomq.protocol import Ack, Deliver, Error, ErrorCode, PublishAck, Start, Subscribed
from nanomq.storage import StorageError, TopicLog
from nanomq.testing import BrokerProcess
from tests.storage.helpers import batch


def _client(b: BrokerProcess) -> WireClient:
    w = WireClient(b.host, b.port, timeout=10)
    w.hello()
    return w


def _segment(data_dir: Path, topic: str) -> Path:
    return sorted((data_dir / "topics" / topic).glob("*.log"))[-1]


def _flip_payload(seg: Path, index: int) -> int:
    """Flip a bit in the payload of record ``index`` (0-based); returns its id."""
    data = bytearray(seg.read_bytes())
    off = 0
    for _ in range(index):
        off += (64 + struct.unpack_from("<I", data, off + 20)[0] + 7) & ~7
    data[off + 64 + 3] ^= 0x08
    seg.write_bytes(bytes(data))
    return int(struct.unpack_from("<Q", data, off)[0])


def _until_end(w: WireClient, timeout: float = 10.0) -> tuple[list[int], Error | None, bool]:
    """Delivered ids, the ERROR that ended them, and whether the connection then closed."""
    ids: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            f = w.recv(deadline - time.monotonic())
        except (Closed, OSError):
            return ids, None, True
        except TimeoutError:
            break
        if isinstance(f, Deliver):
            ids += [r.id for r in f.records]
        elif isinstance(f, Error):
            try:
                w.recv(5.0)
                closed = False
            except (Closed, OSError):
                closed = True
            except TimeoutError:
                closed = False
            return ids, f, closed
    return ids, None, False


@pytest.fixture
def damaged(tmp_path: Path):  # type: ignore[no-untyped-def]
    b = BrokerProcess(tmp_path / "data")
    b.start()
    with _client(b) as w:
        for i in range(5):
            f = w.publish("t", [b"record-%d-" % (i * 10 + k) * 20 for k in range(10)], Ack.DURABLE)
            assert isinstance(f, PublishAck)
        assert isinstance(w.publish("other", [b"fine"]), PublishAck)
    b.stop()
    bad = _flip_payload(_segment(b.data_dir, "t"), 19)
    try:
        yield b, bad
    finally:
        b.stop()


def test_a_subscriber_meeting_damage_gets_storage_error_and_publishers_carry_on(damaged) -> None:  # type: ignore[no-untyped-def]
    b, bad = damaged
    b.start()
    with _client(b) as at_damage, _client(b) as pub, _client(b) as reader:
        at_damage.subscribe("t", Start.ID, bad)
        time.sleep(0.2)
        for k in range(3):  # used to be closed with INTERNAL while a subscriber sat at the damage
            f = pub.publish("t", [b"late-%d" % k], Ack.DURABLE)
            assert isinstance(f, PublishAck) and f.first_id == 51 + k
        ids, err, closed = _until_end(at_damage)
        assert ids == [] and err is not None and closed
        assert (err.request_id, err.code, err.rule) == (0, ErrorCode.STORAGE_ERROR, "NMQ-S9-7")
        assert f"record {bad}" in err.message and "'t'" in err.message
        s = reader.subscribe("t")
        assert isinstance(s, Subscribed)
        ids, err, closed = _until_end(reader)
        assert ids == list(range(1, bad)) and err is not None and err.code == ErrorCode.STORAGE_ERROR and closed
    with _client(b) as w:  # the rest of the topic, and other topics, stay readable
        s = w.subscribe("t", Start.ID, bad + 1)
        assert isinstance(s, Subscribed)
        assert [r.id for r in w.collect(s.sub_id, 53 - bad)] == list(range(bad + 1, 54))
        s = w.subscribe("other")
        assert isinstance(s, Subscribed) and [r.payload for r in w.collect(s.sub_id, 1)] == [b"fine"]
    b.stop()
    log = b.log_path.read_text()
    assert log.count(f"record {bad} fails its check when read") == 1  # loud, and once
    assert "Traceback" not in log


def test_verify_on_start_quarantines_the_damage(damaged) -> None:  # type: ignore[no-untyped-def]
    b, bad = damaged
    b.args.append("--verify-on-start")
    b.start()
    seg = _segment(b.data_dir, "t")
    assert any(p.name.endswith(".quarantine") for p in seg.parent.iterdir())
    with _client(b) as w:
        s = w.subscribe("t")
        assert isinstance(s, Subscribed) and (s.next_id, s.end_id) == (1, bad)
        assert [r.id for r in w.collect(s.sub_id, bad - 1)] == list(range(1, bad))
        f = w.publish("t", [b"after"])
        assert isinstance(f, PublishAck) and f.first_id == bad


# -- the broker's own files beside the log (NMQ-S2-5) ----------------------------------------

def _registry(root: Path) -> TopicRegistry:
    return TopicRegistry(BrokerConfig(data_dir=root, segment_bytes=1 << 20))


def test_a_damaged_topic_id_does_not_hide_or_renumber_the_topic(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    reg.open_all()
    reg.get_or_create("a")
    b = reg.get_or_create("b")
    empty = reg.get_or_create("c")
    assert (b.topic_id, empty.topic_id) == (2, 3)
    b.log.append_batch(batch([b"x"]), 1, sync=True)
    reg.close_all()
    (tmp_path / "topics" / "b" / "topic_id").write_bytes(b"\xffgarbage")
    (tmp_path / "topics" / "c" / "topic_id").unlink()
    reg = _registry(tmp_path)
    reg.open_all()
    assert {t.name for t in reg} == {"a", "b", "c"}
    assert reg.get("b").topic_id == 2  # from the topic_id field of its first record
    assert reg.get("c").topic_id not in (1, 2)  # no record to tell: an id no other topic has
    assert (tmp_path / "topics" / "b" / "topic_id").read_text() == "2\n"
    assert reg.get("b").log.read(1).count == 1
    assert reg.get_or_create("d").topic_id not in (1, 2, reg.get("c").topic_id)
    reg.close_all()


def test_a_stray_segment_file_does_not_renumber_a_topic_whose_topic_id_is_damaged(tmp_path: Path) -> None:
    """NMQ-S2-5 with NMQ-S9-9: the id comes from the log's own first record, never from a file
    named like a segment that is not one (4 KiB of random bytes sorting before the log)."""
    reg = _registry(tmp_path)
    reg.open_all()
    reg.get_or_create("a")
    b = reg.get_or_create("b")
    b.log.append_batch(batch([b"x"]), 1, sync=True)
    reg.close_all()
    rnd = random.Random(7)
    (tmp_path / "topics" / "b" / "00000000000000000000.log").write_bytes(bytes(rnd.randrange(256) for _ in range(4096)))
    (tmp_path / "topics" / "b" / "topic_id").write_bytes(b"\xffgarbage")
    reg = _registry(tmp_path)
    reg.open_all()
    assert reg.get("b").topic_id == 2
    assert reg.get("b").log.read(1).count == 1
    reg.close_all()


def test_an_unfinished_creation_is_removed_at_start(tmp_path: Path) -> None:
    d = tmp_path / "topics" / "half"
    d.mkdir(parents=True)
    (d / "topic_id.tmp").write_bytes(b"")
    reg = _registry(tmp_path)
    reg.open_all()
    assert not d.exists() and reg.get("half") is None and len(reg) == 0
    reg.close_all()


def test_a_failed_creation_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = _registry(tmp_path)
    reg.open_all()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(topics_mod.os, "fsync", full)
    with pytest.raises(StorageError, match="cannot create topic"):
        reg.get_or_create("x")
    monkeypatch.undo()
    assert not (tmp_path / "topics" / "x").exists()
    assert reg.get_or_create("x").topic_id == 1  # and it can be created once the disk has room
    reg.close_all()


def test_a_start_at_a_lost_id_names_the_first_record_delivered(tmp_path: Path) -> None:
    """Ids lost at the end are never reused (NMQ-S9-8): SUBSCRIBED/SEEK_OK at one of them name the
    first record after them, the one the subscription delivers (NMQ-4.4-5)."""
    reg = _registry(tmp_path)
    reg.open_all()
    t = reg.get_or_create("t")
    for _ in range(40):
        t.log.append_batch(batch([b"x" * 60_000]), 1, sync=False)
    assert t.log.stats().segments >= 2
    reg.close_all()
    last = sorted((tmp_path / "topics" / "t").glob("*.log"))[-1]
    lost = int(last.name[:20])
    last.unlink()
    reg = _registry(tmp_path)
    reg.open_all()
    t = reg.get("t")
    assert t.first_record_at_or_after(lost) == 41 == t.log.next_id
    assert t.append(batch([b"after"]), 1) == (41, 41)
    assert t.first_record_at_or_after(lost) == 41 and t.first_record_at_or_after(1) == 1
    reg.close_all()


def test_retention_walks_the_registry_while_the_loop_adds_topics(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """apply_retention runs in a worker thread while the loop registers new topics: a topic
    registered during its walk must not end it (it did: "dictionary changed size during
    iteration" escaped into the broker's retention task, which then never ran again)."""
    reg = TopicRegistry(BrokerConfig(data_dir=tmp_path, segment_bytes=1 << 20, retention_bytes=1 << 20))
    reg.open_all()
    reg.get_or_create("a")
    reg.get_or_create("b")
    real = TopicLog.apply_retention
    created: list[str] = []

    def retention_while_a_topic_is_created(self: TopicLog, now_ns: int | None = None) -> int:
        if not created:  # what the loop thread does while the walk runs
            created.append("created-meanwhile")
            reg.get_or_create("created-meanwhile")
        return real(self, now_ns)

    monkeypatch.setattr(TopicLog, "apply_retention", retention_while_a_topic_is_created)
    assert reg.apply_retention() == 0
    assert created and reg.get("created-meanwhile") is not None
    reg.close_all()


def test_a_failed_retention_run_does_not_end_retention(tmp_path: Path) -> None:
    """An exception out of one retention run is logged, and the next run comes as usual (before,
    it ended the broker's retention task for good)."""
    from concurrent.futures import ThreadPoolExecutor

    from nanomq.broker.server import Broker

    calls: list[int] = []

    class Topics:
        any_retention = True  # the registry's answer to "has retention anything to do"

        def apply_retention(self) -> int:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("dictionary changed size during iteration")
            return 0

    broker = Broker.__new__(Broker)
    broker.config = BrokerConfig(data_dir=tmp_path, retention_bytes=1 << 20, retention_check_s=0.01)
    broker.topics = Topics()  # type: ignore[assignment]
    broker._executor = ThreadPoolExecutor(max_workers=1)

    async def run() -> None:
        task = asyncio.ensure_future(broker._retention())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(calls) >= 3:
                break
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(run())
    finally:
        broker._executor.shutdown()
    assert len(calls) >= 3
