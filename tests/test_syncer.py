"""The C group-commit threads (nanomq._c.syncer, src/syncer.c): requests, results through the
eventfd, coalescing, errors, and shutdown with syncs queued."""

from __future__ import annotations

import errno
import select
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanomq._c.log import CLog, LogClosedError, LogIOError, fault_clear, fault_set
from nanomq._c.syncer import Syncer
from nanomq.protocol import RecordBatch


def _append(log: CLog, n: int = 1) -> int:
    batch = RecordBatch.from_payloads([b"x" * 100] * n)
    return log.append(batch.data, n)[1]


def _results(s: Syncer, want: int, timeout: float = 10.0) -> list[tuple[int, int, BaseException | None]]:
    """Wait on the eventfd (as the broker's loop does) until ``want`` results were taken."""
    out: list[tuple[int, int, BaseException | None]] = []
    while len(out) < want:
        r, _, _ = select.select([s.fd], [], [], timeout)
        assert r, f"no sync finished within {timeout} s (have {out})"
        out += s.take()
    return out


@pytest.fixture
def syncer() -> Iterator[Syncer]:
    s = Syncer(2)
    yield s
    s.close()


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[list[CLog]]:
    made = [CLog(tmp_path / f"t{i}", segment_bytes=1 << 20) for i in range(3)]
    yield made
    for log in made:
        log.close()


def test_a_requested_sync_makes_what_was_appended_durable_and_says_so_through_the_fd(
        syncer: Syncer, logs: list[CLog]) -> None:
    last = _append(logs[0], 5)
    assert logs[0].stats().durable_id < last
    syncer.request(logs[0], 7)
    assert _results(syncer, 1) == [(7, last, None)]
    assert logs[0].stats().durable_id == last
    assert not syncer.busy(7)
    assert syncer.take() == []  # each result is taken once


def test_logs_are_synced_independently_each_result_naming_its_log(syncer: Syncer, logs: list[CLog]) -> None:
    lasts = [_append(log, i + 1) for i, log in enumerate(logs)]
    for i, log in enumerate(logs):
        syncer.request(log, i)
    got = sorted(_results(syncer, 3))
    assert got == [(i, lasts[i], None) for i in range(3)]


def test_results_of_one_log_not_yet_taken_are_one_result_the_latest(syncer: Syncer, logs: list[CLog]) -> None:
    log = logs[0]
    last = 0
    for _ in range(200):
        last = _append(log)
        syncer.request(log, 0)
    for _ in range(10_000):
        if not syncer.busy(0):
            break
        select.select([], [], [], 0.001)
    assert not syncer.busy(0)
    # however many syncs ran, the log has one result waiting: where it stands now (syncer.c Y2)
    assert syncer.take() == [(0, last, None)]
    assert log.stats().durable_id == last


def test_a_failed_sync_is_reported_with_its_error_and_the_next_one_recovers(syncer: Syncer, logs: list[CLog]) -> None:
    last = _append(logs[1], 3)
    fault_set("fsync", 1, 1, errno.EIO)
    try:
        syncer.request(logs[1], 1)
        ((index, _, exc),) = _results(syncer, 1)
    finally:
        fault_clear()
    assert index == 1 and isinstance(exc, LogIOError), exc
    assert logs[1].stats().durable_id < last
    syncer.request(logs[1], 1)
    assert _results(syncer, 1) == [(1, last, None)]


def test_a_high_index_grows_the_tables(syncer: Syncer, logs: list[CLog]) -> None:
    last = _append(logs[2])
    syncer.request(logs[2], 5000)
    assert _results(syncer, 1) == [(5000, last, None)]


def test_an_invalid_index_is_refused(syncer: Syncer, logs: list[CLog]) -> None:
    with pytest.raises(ValueError):
        syncer.request(logs[0], 0xFFFFFFFF)


def test_close_with_syncs_queued_returns_and_leaves_the_logs_usable(tmp_path: Path) -> None:
    s = Syncer(1)
    made = [CLog(tmp_path / f"q{i}", segment_bytes=1 << 20) for i in range(20)]
    for i, log in enumerate(made):
        _append(log, 10)
        s.request(log, i)
    done = threading.Event()

    def close() -> None:
        s.close()
        done.set()

    t = threading.Thread(target=close)
    t.start()
    assert done.wait(10), "close did not return"
    t.join()
    s.close()  # idempotent
    for log in made:
        assert log.sync() == log.stats().next_id - 1  # whatever was dropped, the log syncs on
        log.close()


def test_thread_counts_out_of_range_are_refused() -> None:
    for n in (0, 65):
        with pytest.raises(OSError):
            Syncer(n)


def test_a_closed_syncer_refuses_requests_and_has_nothing_to_give(logs: list[CLog]) -> None:
    s = Syncer(1)
    s.close()
    with pytest.raises(LogClosedError):
        s.request(logs[0], 0)
    assert s.take() == [] and not s.busy(0)
