"""Retention never makes an append wait for the disk (issue 10 item 17).

Before: nmq_log_retain fsynced the directory with the log mutex held, so an append on the event
loop waited for the whole directory fsync of a retention run in a worker thread (here slowed to
0.4 s with the ``slow_fsync`` fault)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from nanomq._c.log import fault_clear, fault_set
from nanomq.storage import TopicLog
from tests.storage.helpers import batch

SEG = 1 << 20
SLOW_US = 400_000


@pytest.fixture(autouse=True)
def _no_faults_left():
    yield
    fault_clear()


def test_an_append_does_not_wait_for_retentions_directory_fsync(tmp_path: Path) -> None:
    with TopicLog.open(tmp_path / "t", segment_bytes=SEG, fsync="never", retention_bytes=1) as log:
        for _ in range(40):
            log.append_batch(batch([b"x" * 60_000]), 1, sync=False)
        log.sync()  # seal the rotated-out segments, so retention may delete them
        assert log.stats().segments >= 2
        fault_set("slow_fsync", 1, 0, SLOW_US)
        deleted: list[int] = []
        t = threading.Thread(target=lambda: deleted.append(log.apply_retention()))
        t.start()
        time.sleep(0.1)  # retention is in its directory fsync now
        t0 = time.perf_counter()
        log.append_batch(batch([b"y"]), 1, sync=False)
        waited = time.perf_counter() - t0
        t.join()
        fault_clear()
        assert deleted and deleted[0] >= 1
        assert waited < SLOW_US / 1e6 / 4, f"an append waited {waited * 1000:.0f} ms for retention"
        assert log.read(log.next_id - 1).count == 1
