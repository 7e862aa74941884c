"""Functional tests of TopicLog: ids, stamping, reads, time index, rotation, retention, reopen."""

from __future__ import annotations

import gc
import os
import threading

import pytest

from nanomq.storage import BadRecordsError, LogClosedError, LogLockedError, TopicLog
from tests.storage.helpers import batch, payload, read_all, records


def test_empty_log(tmp_path):
    with TopicLog.open(tmp_path / "t") as log:
        assert (log.first_id, log.next_id, log.last_id) == (1, 1, 0)
        r = log.read(1)
        assert r.count == 0 and r.first_id == 1 and len(r.data) == 0
        assert log.find_by_timestamp(0) == 1
        assert log.report.ok and log.report.records == 0


def test_append_assigns_contiguous_ids_and_stamps(tmp_path):
    with TopicLog.open(tmp_path / "t", topic_id=7) as log:
        assert log.append_batch(batch([b"a", b"bb", b""]), 3) == (1, 3)
        assert log.append_batch(batch([b"x" * 100]), 1) == (4, 4)
        assert log.durable_id == 4  # fsync=always and sync=None: durable on return
        got = read_all(log)
        assert [g[0] for g in got] == [1, 2, 3, 4]
        assert [g[3] for g in got] == [b"a", b"bb", b"", b"x" * 100]
        assert all(g[2] == 7 for g in got)
        ts = [g[1] for g in got]
        assert ts == sorted(ts) and ts[0] > 1_600_000_000 * 10**9


def test_timestamps_never_decrease(tmp_path):
    with TopicLog.open(tmp_path / "t", fsync="never") as log:
        log.append_batch(batch([b"a"]), 1, timestamp_ns=2000)
        log.append_batch(batch([b"b"]), 1, timestamp_ns=1000)  # clock stepped back: clamped
        log.append_batch(batch([b"c"]), 1, timestamp_ns=3000)
        assert [g[1] for g in read_all(log)] == [2000, 2000, 3000]
        assert log.find_by_timestamp(0) == 1
        assert log.find_by_timestamp(2000) == 1
        assert log.find_by_timestamp(2001) == 3
        assert log.find_by_timestamp(3001) == 4


def test_read_limits(tmp_path):
    with TopicLog.open(tmp_path / "t", fsync="never") as log:
        log.append_batch(batch([payload(i, 100) for i in range(50)]), 50)
        r = log.read(10, max_records=5)
        assert (r.first_id, r.count, r.last_id) == (10, 5, 14)
        assert [g[0] for g in records(r.data, r.count)] == list(range(10, 15))
        r = log.read(1, max_records=100, max_bytes=400)  # 168-byte records: 2 fit
        assert r.count == 2
        r = log.read(1, max_records=100, max_bytes=1)  # always at least one
        assert r.count == 1
        assert log.read(51).count == 0
        assert log.read(0).first_id == 1
        with pytest.raises(TypeError):
            r.data[0:1] = b"x"  # type: ignore[index]  # read-only view


def test_bad_batches_are_rejected_without_effect(tmp_path):
    with TopicLog.open(tmp_path / "t", fsync="never", max_payload=1000) as log:
        good = batch([b"abc"])
        with pytest.raises(BadRecordsError):
            log.append_batch(good, 2)  # fewer records than count
        with pytest.raises(BadRecordsError):
            log.append_batch(good + b"\0" * 8, 1)  # trailing bytes
        with pytest.raises(BadRecordsError):
            log.append_batch(batch([b"x" * 1001]), 1)  # over max_payload
        with pytest.raises(BadRecordsError):
            log.append_batch(good[:-8], 1)
        assert log.next_id == 1
        assert log.append_batch(good, 1) == (1, 1)


def test_rotation_time_index_and_reopen(tmp_path):
    d = tmp_path / "t"
    n = 0
    with TopicLog.open(d, segment_bytes=64 * 1024, fsync="never") as log:
        for b in range(40):
            ps = [payload(n + i, 200) for i in range(20)]
            log.append_batch(batch(ps), 20, timestamp_ns=1_000_000 + b)
            n += 20
        assert log.stats().segments >= 4
        for b in range(40):
            assert log.find_by_timestamp(1_000_000 + b) == b * 20 + 1
        got = read_all(log)
    assert [g[0] for g in got] == list(range(1, n + 1))
    assert [g[3] for g in got] == [payload(i, 200) for i in range(n)]
    names = sorted(os.listdir(d))
    assert "00000000000000000001.log" in names and "checkpoint" in names
    with TopicLog.open(d, segment_bytes=64 * 1024) as log:
        assert log.report.clean and log.report.verified_bytes == 0
        assert read_all(log) == got
        assert log.find_by_timestamp(1_000_000 + 17) == 17 * 20 + 1
    with TopicLog.open(d, segment_bytes=64 * 1024, verify_all=True) as log:
        assert log.report.verified_bytes == log.report.bytes
        assert read_all(log) == got


def test_retention_by_size_and_age(tmp_path):
    with TopicLog.open(tmp_path / "t", segment_bytes=16 * 1024, fsync="never", retention_bytes=40 * 1024) as log:
        for i in range(100):
            log.append_batch(batch([payload(i, 1000)]), 1, timestamp_ns=10**9 * (i + 1))
        before = log.first_id
        deleted = log.apply_retention(now_ns=10**9 * 100)
        assert deleted > 0 and log.first_id > before
        assert log.stats().total_bytes <= 40 * 1024 + 16 * 1024
        assert [g[0] for g in read_all(log, 0)] == list(range(log.first_id, 101))
        assert log.read(1).first_id == log.first_id  # below the start: clamped
    with TopicLog.open(tmp_path / "a", segment_bytes=16 * 1024, fsync="never", retention_ms=10_000) as log:
        for i in range(100):
            log.append_batch(batch([payload(i, 1000)]), 1, timestamp_ns=10**9 * (i + 1))
        log.apply_retention(now_ns=10**9 * 101)
        first = log.first_id
        assert 80 <= first <= 91  # segments whose last record is older than 10 s are gone
        assert log.find_by_timestamp(0) == first


def test_view_survives_retention_and_close(tmp_path):
    log = TopicLog.open(tmp_path / "t", segment_bytes=8192, fsync="never", retention_bytes=1)
    for i in range(30):
        log.append_batch(batch([payload(i, 1000)]), 1)
    r = log.read(1)
    expect = bytes(r.data)
    assert log.apply_retention() > 0
    assert bytes(r.data) == expect  # the view pinned its (now deleted) segment
    log.close()
    assert bytes(r.data) == expect
    with pytest.raises(LogClosedError):
        log.append_batch(batch([b"x"]), 1)
    del r
    gc.collect()


def test_the_sync_policy_is_reported_as_opened(tmp_path):
    for policy in ("always", "interval", "never"):
        with TopicLog.open(tmp_path / policy, fsync=policy) as log:
            assert log.sync_policy == policy and f"sync_policy={policy}" in repr(log)


def test_second_opener_is_refused(tmp_path):
    with TopicLog.open(tmp_path / "t"), pytest.raises(LogLockedError):
        TopicLog.open(tmp_path / "t")


def test_group_commit_sync_in_threads(tmp_path):
    """Appends continue while other threads sync; every sync covers what was appended before it."""
    with TopicLog.open(tmp_path / "t", fsync="always") as log:
        errors: list[BaseException] = []
        stop = threading.Event()

        def syncer() -> None:
            try:
                while not stop.is_set():
                    last_before = log.last_id
                    assert log.sync() >= last_before
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        ts = [threading.Thread(target=syncer) for _ in range(3)]
        for t in ts:
            t.start()
        for i in range(300):
            log.append_batch(batch([payload(i)]), 1, sync=False)
        stop.set()
        for t in ts:
            t.join()
        assert not errors
        assert log.sync() == 300 == log.durable_id


def test_interval_policy_syncs_in_background(tmp_path):
    import time

    with TopicLog.open(tmp_path / "t", fsync="interval", interval_ms=5) as log:
        log.append_batch(batch([b"x"]), 1)
        deadline = time.monotonic() + 5
        while log.durable_id < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert log.durable_id == 1


def test_reopen_keeps_ids_after_everything_retained(tmp_path):
    d = tmp_path / "t"
    with TopicLog.open(d, fsync="never") as log:
        log.append_batch(batch([b"a", b"b"]), 2)
    for f in os.listdir(d):
        if f.endswith((".log", ".idx")):
            os.unlink(d / f)
    with TopicLog.open(d) as log:
        assert log.next_id == 3 and log.first_id == 3


def test_concurrent_sync_and_rotation_no_deadlock(tmp_path):
    """sync() leaders take the log mutex while holding the sync mutex; rotation (under the log
    mutex) must never wait for the sync mutex, or the two would deadlock."""
    with TopicLog.open(tmp_path / "t", fsync="always", segment_bytes=8192) as log:
        stop = threading.Event()
        errors: list[BaseException] = []

        def syncer() -> None:
            try:
                while not stop.is_set():
                    log.sync()
            except BaseException as e:  # pragma: no cover
                errors.append(e)

        ts = [threading.Thread(target=syncer, daemon=True) for _ in range(2)]
        for t in ts:
            t.start()
        for i in range(400):
            log.append_batch(batch([payload(i, 900)]), 1, sync=False)
        stop.set()
        for t in ts:
            t.join(timeout=30)
            assert not t.is_alive(), "deadlock"
        assert not errors
        assert log.stats().segments > 30
        assert log.sync() == 400
        assert [g[3] for g in read_all(log)] == [payload(i, 900) for i in range(400)]


def test_timestamps_never_decrease_across_rotation_and_restart(tmp_path):
    """After a restart whose recovery leaves the active segment empty, the clamp still uses the
    last timestamp of the previous segment."""
    d = tmp_path / "t"
    with TopicLog.open(d, segment_bytes=8192, fsync="never") as log:
        for _ in range(9):  # 8 records of 968 bytes fill segment 1; the 9th starts segment 2
            log.append_batch(batch([payload(0, 900)]), 1, timestamp_ns=5_000)
        assert log.stats().segments == 2
        log.close(clean=False)
    last = sorted(p for p in d.iterdir() if p.suffix == ".log")[-1]
    data = bytearray(last.read_bytes())
    data[0:8] = bytes(8)  # the 9th record was never published: recovery cuts it
    last.write_bytes(data)
    with TopicLog.open(d, segment_bytes=8192, fsync="never") as log:
        assert log.next_id == 9 and log.report.truncated_offset == 0
        log.append_batch(batch([b"x"]), 1, timestamp_ns=1_000)  # clock behind: clamped
        ts = [g[1] for g in read_all(log)]
        assert ts[-1] == 5_000 and ts == sorted(ts)


def test_trim_memory_keeps_views_valid(tmp_path) -> None:
    """trim_memory drops mapped pages from the resident set; data and live views are unaffected."""
    from nanomq.protocol import RecordBatch

    payloads = [os.urandom(1000) for _ in range(64)]
    with TopicLog.open(tmp_path / "t", fsync="never") as log:
        log.append_batch(RecordBatch.from_payloads(payloads).data, 64, sync=False)
        view = log.read(1, 64, 1 << 20)
        before = bytes(view.data)
        assert log.trim_memory() >= len(before)
        assert bytes(view.data) == before
        assert RecordBatch.parse(bytes(log.read(1, 64, 1 << 20).data), 64).payloads() == payloads


@pytest.mark.parametrize("clean", [True, False])
def test_batch_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path, clean):
    """NMQ-S3-6 / NMQ-4.1-4: a batch the announced limits allow is never refused for being larger
    than a segment: in an empty log the segment grows; later one gets a segment sized to fit."""
    mib = 1 << 20
    big = [payload(i, 65536) for i in range(40)]  # ~2.6 MiB, more than a 1 MiB segment
    log = TopicLog.open(tmp_path / "t", segment_bytes=mib, fsync="never")
    assert log.append_batch(batch(big), len(big)) == (1, 40)  # the empty first segment grows
    assert log.append_batch(batch([b"small"]), 1) == (41, 41)
    assert log.append_batch(batch(big), len(big)) == (42, 81)  # a new segment of its own size
    assert log.append_batch(batch([b"after"]), 1) == (82, 82)  # and then a normal one
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "t").glob("*.log")}
    assert sizes["00000000000000000042.log"] > mib
    got = read_all(log)
    assert [g[0] for g in got] == list(range(1, 83))
    assert [g[3] for g in got] == [*big, b"small", *big, b"after"]
    if clean:
        log.close()
    else:  # as a crash leaves it: no clean close
        log._c.close(False)
    with TopicLog.open(tmp_path / "t", segment_bytes=mib, fsync="never") as again:
        assert again.report.corruption == "none" and again.report.truncated_bytes == 0
        assert [g[3] for g in read_all(again)] == [*big, b"small", *big, b"after"]
        assert again.append_batch(batch(big), len(big)) == (83, 122)
