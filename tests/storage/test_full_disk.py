"""A full disk at open: the log opens read-only instead of failing (NMQ-S10-8, issue 10 item 5).

Before: the checkpoint that open writes (or the preallocation of a short active segment) failing
with ENOSPC made the open fail, so a broker restarted with no space served nothing; and a
quarantine copy that could not be written was ignored while the torn bytes were zeroed anyway.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from pathlib import Path

import pytest

from nanomq._c.log import fault_clear, fault_set
from nanomq.broker.config import BrokerConfig
from nanomq.broker.topics import TopicRegistry
from nanomq.storage import LogIOError, StorageError, TopicLog
from tests.storage.helpers import batch, payload, read_all

SEG = 1 << 20


@pytest.fixture(autouse=True)
def _no_faults_left():
    yield
    fault_clear()


def _log(d: Path, n: int = 10, clean: bool = True) -> list[bytes]:
    ps = [payload(i, 300) for i in range(n)]
    with TopicLog.open(d, segment_bytes=SEG, fsync="never") as log:
        for p in ps:
            log.append_batch(batch([p]), 1)
        log.close(clean=clean)
    return ps


def _checkpoint_flags(d: Path) -> int:
    return struct.unpack_from("<I", (d / "checkpoint").read_bytes(), 12)[0]


def test_no_space_for_the_checkpoint_opens_read_only(tmp_path):
    d = tmp_path / "t"
    ps = _log(d)
    fault_set("write", 1, 0, errno.ENOSPC)  # every write fails: the disk is full
    with TopicLog.open(d, segment_bytes=SEG) as log:
        assert log.stats().read_only_errno == errno.ENOSPC
        assert [g[3] for g in read_all(log)] == ps
        assert _checkpoint_flags(d) & 1  # still the clean one: nothing was appended
        for _ in range(2):
            with pytest.raises(LogIOError) as ei:
                log.append_batch(batch([b"x"]), 1)
            assert ei.value.errno == errno.ENOSPC and log.next_id == len(ps) + 1
        fault_clear()  # space again
        assert log.append_batch(batch([b"x"]), 1) == (len(ps) + 1, len(ps) + 1)
        assert log.stats().read_only_errno == 0
        assert _checkpoint_flags(d) & 1 == 0  # the unclean checkpoint came first (NMQ-S5-3)
    with TopicLog.open(d, segment_bytes=SEG, on_corrupt="raise") as log:
        assert [g[3] for g in read_all(log)] == [*ps, b"x"]


def test_no_space_to_save_a_torn_tail_keeps_it_until_there_is(tmp_path):
    d = tmp_path / "t"
    ps = _log(d, clean=False)
    seg = sorted(d.glob("*.log"))[0]
    data = bytearray(seg.read_bytes())
    span = (64 + 300 + 7) & ~7
    off = (len(ps) - 1) * span
    data[off + 200:off + span] = bytes(span - 200)  # the last record torn
    seg.write_bytes(bytes(data))
    torn = bytes(data[off:off + 200])
    fault_set("write", 1, 0, errno.ENOSPC)
    with TopicLog.open(d, segment_bytes=SEG) as log:
        assert log.stats().read_only_errno == errno.ENOSPC
        assert [g[3] for g in read_all(log)] == ps[:-1]
        assert seg.read_bytes()[off:off + 200] == torn  # not destroyed: there was no room for a copy
        assert not list(d.glob("*.quarantine"))
        with pytest.raises(LogIOError):
            log.append_batch(batch([b"x"]), 1)
        fault_clear()
        log.close()  # a clean close must not hide the cut the next open has to redo
    with TopicLog.open(d, segment_bytes=SEG) as log:
        q = d / f"{seg.name}.{off}.quarantine"
        assert q.read_bytes()[:200] == torn
        assert log.append_batch(batch([b"x"]), 1) == (len(ps), len(ps))


def test_no_space_for_the_copy_at_open_is_saved_by_the_first_append(tmp_path):
    d = tmp_path / "t"
    ps = _log(d, clean=False)
    seg = sorted(d.glob("*.log"))[0]
    data = bytearray(seg.read_bytes())
    garbage = os.urandom(40)
    end = len(ps) * ((64 + 300 + 7) & ~7)
    data[end + 64:end + 104] = garbage  # stray bytes after the end after a crash
    seg.write_bytes(bytes(data))
    fault_set("write", 1, 1, errno.ENOSPC)  # only the quarantine copy fails
    with TopicLog.open(d, segment_bytes=SEG) as log:
        assert log.stats().read_only_errno == errno.ENOSPC
        assert log.append_batch(batch([b"x"]), 1) == (len(ps) + 1, len(ps) + 1)  # retried and saved first
        q = d / f"{seg.name}.{end}.quarantine"
        assert q.read_bytes()[64:104] == garbage
        assert [g[3] for g in read_all(log)] == [*ps, b"x"]


def test_no_space_to_preallocate_the_active_segment(tmp_path):
    d = tmp_path / "t"
    ps = _log(d)
    seg = sorted(d.glob("*.log"))[0]
    os.truncate(seg, len(ps) * ((64 + 300 + 7) & ~7))  # as a sealed segment is
    fault_set("fallocate", 1, 0, errno.ENOSPC)
    with TopicLog.open(d, segment_bytes=SEG) as log:
        assert log.stats().read_only_errno == errno.ENOSPC
        assert [g[3] for g in read_all(log)] == ps
        with pytest.raises(LogIOError):
            log.append_batch(batch([b"x"]), 1)
        fault_clear()
        assert log.append_batch(batch([b"x"]), 1)[0] == len(ps) + 1
        st = seg.stat()
        assert st.st_size >= SEG and st.st_blocks * 512 >= SEG  # preallocated before it was written


def test_broker_serves_reads_and_logs_a_full_disk_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reg = TopicRegistry(BrokerConfig(data_dir=tmp_path, segment_bytes=SEG))
    reg.open_all()
    t = reg.get_or_create("t")
    t.log.append_batch(batch([b"a", b"b"]), 2, sync=True)
    reg.close_all()
    fault_set("write", 1, 0, errno.ENOSPC)
    caplog.set_level(logging.WARNING, logger="nanomq.broker")
    reg = TopicRegistry(BrokerConfig(data_dir=tmp_path, segment_bytes=SEG))
    reg.open_all()  # used to fail: the broker did not start
    t = reg.get("t")
    assert [g[3] for g in read_all(t.log)] == [b"a", b"b"]
    for _ in range(5):
        with pytest.raises(StorageError):
            t.append(batch([b"c"]), 1)
    refused = [r for r in caplog.records if "appends refused" in r.getMessage()]
    assert len(refused) == 1 and any("opened read-only" in r.getMessage() for r in caplog.records)
    fault_clear()
    assert t.append(batch([b"c"]), 1) == (3, 3)
    assert any("accepted again, after 5 refused" in r.getMessage() for r in caplog.records)
    reg.close_all()
