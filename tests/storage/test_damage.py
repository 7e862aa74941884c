"""Damaged and stray files never take intact records or ids with them (issue 10, "Damaged data").

Each test failed before its fix: an index that lies with a valid CRC was trusted (and made the
next segment look like a gap), a stray file named like a segment quarantined the log (or made it
hand out id 0), ids lost at the end were handed out again, a zeroed header before valid records
was cut as a torn tail, and an id-gap report named the wrong expected id.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from nanomq._c.crc import crc32c
from nanomq.storage import LogCorruptError, TopicLog
from tests.storage.helpers import batch, payload, read_all

SEG = 8192


def _segments(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix == ".log")


def _log(d: Path, n: int = 30, size: int = 900, clean: bool = True) -> list[bytes]:
    ps = [payload(i, size) for i in range(n)]
    with TopicLog.open(d, segment_bytes=SEG, fsync="never") as log:
        for p in ps:
            log.append_batch(batch([p]), 1)
        log.close(clean=clean)
    return ps


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.name != "lock"}


def _fix_crc(data: bytearray) -> bytes:
    struct.pack_into("<I", data, 56, 0)
    struct.pack_into("<I", data, 56, crc32c(bytes(data)))
    return bytes(data)


# -- indexes that agree with their CRC but not with their segment (NMQ-S4-3) ----------------

@pytest.mark.parametrize("lie", ["shorter", "last-id", "first-id", "entry-offset"])
def test_index_that_lies_with_a_valid_crc_is_ignored(tmp_path, lie):
    d = tmp_path / "t"
    ps = _log(d)
    seg = _segments(d)[0]
    idx = seg.with_suffix(".idx")
    data = bytearray(idx.read_bytes())
    first, last, length, count = struct.unpack_from("<QQ", data, 16) + struct.unpack_from("<Q", data, 40) + \
        struct.unpack_from("<Q", data, 48)
    if lie == "shorter":  # the index of this segment without its last record
        struct.pack_into("<Q", data, 24, last - 1)
        struct.pack_into("<Q", data, 40, length - ((64 + 900 + 7) & ~7))
    elif lie == "last-id":
        struct.pack_into("<Q", data, 24, last + 1)
    elif lie == "first-id":
        struct.pack_into("<Q", data, 16, first + 1)
        for k in range(count):
            o = 64 + 24 * k
            struct.pack_into("<Q", data, o, struct.unpack_from("<Q", data, o)[0] + 1)
    else:
        assert count >= 2
        struct.pack_into("<Q", data, 64 + 24 + 16, struct.unpack_from("<Q", data, 64 + 24 + 16)[0] + 8)
    idx.write_bytes(_fix_crc(data))
    with TopicLog.open(d, segment_bytes=SEG, on_corrupt="raise") as log:
        assert log.report.corruption == "none" and log.report.indexes_rebuilt >= 1
        assert [g[3] for g in read_all(log)] == ps
        for i in range(1, len(ps) + 1):
            r = log.read(i, 1)
            assert r.count == 1 and r.first_id == i


# -- stray files named like segments (NMQ-S9-9) --------------------------------------------

def test_stray_segment_files_are_set_aside(tmp_path):
    d = tmp_path / "t"
    ps = _log(d, clean=True)
    segs = _segments(d)
    assert len(segs) >= 3
    mid = int(segs[0].name[:20]) + 2  # inside the first segment's range, sorts before the second
    strays = {f"{0:020d}.log": os.urandom(4096), f"{mid:020d}.log": os.urandom(5000),
              f"{len(ps) + 500:020d}.log": os.urandom(4096)}
    for name, data in strays.items():
        (d / name).write_bytes(data)
    before = _snapshot(d)
    with pytest.raises(LogCorruptError, match="not a segment"):
        TopicLog.open(d, segment_bytes=SEG, on_corrupt="raise")
    assert _snapshot(d) == before  # a refused open changes nothing
    with TopicLog.open(d, segment_bytes=SEG) as log:
        rep = log.report
        assert rep.stray_files == 3 and rep.corruption == "none" and not rep.ok
        assert [g[3] for g in read_all(log)] == ps
        assert log.append_batch(batch([b"next"]), 1) == (len(ps) + 1, len(ps) + 1)
    for name, data in strays.items():
        assert not (d / name).exists() and (d / f"{name}.quarantine").read_bytes() == data
    with TopicLog.open(d, segment_bytes=SEG, on_corrupt="raise") as log:  # nothing left to set aside
        assert log.report.ok and log.next_id == len(ps) + 2


def test_a_damaged_first_segment_no_longer_takes_the_log(tmp_path):
    """The oldest segment's first record is damaged: the log starts at the next segment (as after
    retention) instead of restarting at id 1 with every later segment quarantined."""
    d = tmp_path / "t"
    ps = _log(d)
    segs = _segments(d)
    data = bytearray(segs[0].read_bytes())
    data[100] ^= 0xFF
    segs[0].write_bytes(bytes(data))
    with TopicLog.open(d, segment_bytes=SEG) as log:
        second = int(segs[1].name[:20])
        assert log.first_id == second and log.next_id == len(ps) + 1
        assert [g[3] for g in read_all(log)] == ps[second - 1:]


# -- ids lost at the end are never handed out again (NMQ-S9-3, NMQ-S9-8) -------------------

@pytest.mark.parametrize("how", ["deleted", "truncated", "every-segment-but-an-empty-last"])
def test_ids_lost_at_the_end_are_never_reused(tmp_path, how):
    d = tmp_path / "t"
    ps = _log(d)
    segs = _segments(d)
    last = segs[-1]
    if how == "deleted":
        kept = int(last.name[:20]) - 1
        last.unlink()
        last.with_suffix(".idx").unlink(missing_ok=True)
    elif how == "truncated":  # cut at a record boundary, three records from the end
        data = last.read_bytes()
        offs, off = [], 0
        while data[off:off + 8] != bytes(8):
            offs.append(off)
            off += (64 + struct.unpack_from("<I", data, off + 20)[0] + 7) & ~7
        os.truncate(last, offs[-3])
        kept = len(ps) - 3
    else:  # every record of the last segment lost, the (empty) file itself still there
        kept = int(last.name[:20]) - 1
        os.truncate(last, 0)
        last.with_suffix(".idx").unlink(missing_ok=True)
    with pytest.raises(LogCorruptError, match="missing"):
        TopicLog.open(d, segment_bytes=SEG, on_corrupt="raise")
    with TopicLog.open(d, segment_bytes=SEG) as log:
        assert log.report.corruption == "id-gap" and "never handed out again" in log.report.message
        assert [g[3] for g in read_all(log)] == ps[:kept]
        assert log.next_id == len(ps) + 1
        assert log.append_batch(batch([b"after"]), 1) == (len(ps) + 1, len(ps) + 1)
        got = read_all(log)
        assert [g[0] for g in got] == [*range(1, kept + 1), len(ps) + 1]
        r = log.read(kept + 1)  # a lost id: the read starts after the lost ids, and says so
        assert r.first_id == len(ps) + 1 and r.count == 1
        assert log.find_by_timestamp(got[-1][1]) == len(ps) + 1
    marker = d / f"{kept + 1:020d}.log"
    assert marker.stat().st_size == 0  # the lost-ids marker
    for _ in range(2):  # later opens accept the marker: no corruption, nothing quarantined
        with TopicLog.open(d, segment_bytes=SEG, on_corrupt="raise") as log:
            assert log.report.ok and log.next_id == len(ps) + 2
            assert [g[0] for g in read_all(log)] == [*range(1, kept + 1), len(ps) + 1]
            log.close(clean=False)


def test_a_crash_after_the_marker_before_the_new_segment(tmp_path):
    """The marker is the last file (the new active segment was never created): the next open
    continues at the checkpoint's next id all the same."""
    d = tmp_path / "t"
    ps = _log(d)
    last = _segments(d)[-1]
    first_lost = int(last.name[:20])
    last.unlink()
    last.with_suffix(".idx").unlink(missing_ok=True)
    (d / f"{first_lost:020d}.log").write_bytes(b"")
    with TopicLog.open(d, segment_bytes=SEG) as log:
        assert log.next_id == len(ps) + 1
        assert [g[3] for g in read_all(log)] == ps[:first_lost - 1]
    with TopicLog.open(d, segment_bytes=SEG, on_corrupt="raise") as log:
        assert log.report.ok and log.next_id == len(ps) + 1


def test_retention_deletes_a_leading_marker(tmp_path):
    d = tmp_path / "t"
    ps = _log(d)
    last = _segments(d)[-1]
    last.unlink()
    last.with_suffix(".idx").unlink(missing_ok=True)
    with TopicLog.open(d, segment_bytes=SEG, retention_bytes=1) as log:
        log.append_batch(batch([b"after"]), 1)
        log.apply_retention()
        assert log.stats().segments == 1 and log.first_id == len(ps) + 1
        assert [g[3] for g in read_all(log)] == [b"after"]


# -- a zeroed header before intact records is corruption (NMQ-S8-7) ------------------------

def test_zeroed_header_before_valid_records_is_corruption(tmp_path, caplog):
    d = tmp_path / "t"
    ps = [payload(i, 200) for i in range(12)]
    with TopicLog.open(d, segment_bytes=1 << 20, fsync="never") as log:
        for p in ps:
            log.append_batch(batch([p]), 1)
        log.close(clean=False)
    seg = _segments(d)[0]
    data = bytearray(seg.read_bytes())
    span = (64 + 200 + 7) & ~7
    off = 9 * span  # record 10 of 12
    data[off:off + 64] = bytes(64)
    seg.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError):
        TopicLog.open(d, segment_bytes=1 << 20, on_corrupt="raise")
    with TopicLog.open(d, segment_bytes=1 << 20) as log:
        rep = log.report
        assert rep.corruption == "bad-record" and rep.corrupt_offset == off and rep.corrupt_id == 10
        assert [g[3] for g in read_all(log)] == ps[:9]
        assert (d / f"{seg.name}.{off}.quarantine").exists()
    assert any(r.levelname == "ERROR" and "CORRUPTION" in r.getMessage() for r in caplog.records)


def test_zeroed_last_header_is_still_a_torn_tail(tmp_path):
    """Nothing intact after the zero header: the end of the log (what a torn write looks like)."""
    d = tmp_path / "t"
    with TopicLog.open(d, segment_bytes=1 << 20, fsync="never") as log:
        for i in range(5):
            log.append_batch(batch([payload(i, 200)]), 1)
        log.close(clean=False)
    seg = _segments(d)[0]
    data = bytearray(seg.read_bytes())
    off = 4 * ((64 + 200 + 7) & ~7)
    data[off:off + 64] = bytes(64)
    seg.write_bytes(bytes(data))
    with TopicLog.open(d, segment_bytes=1 << 20, on_corrupt="raise") as log:
        assert log.report.corruption == "none" and log.next_id == 5


def test_gap_report_names_the_expected_id(tmp_path):
    d = tmp_path / "t"
    _log(d)
    segs = _segments(d)
    expected = int(segs[1].name[:20])
    segs[1].unlink()
    segs[1].with_suffix(".idx").unlink()
    with pytest.raises(LogCorruptError) as ei:
        TopicLog.open(d, segment_bytes=SEG, on_corrupt="raise")
    assert f"next id {expected}" in str(ei.value) and ei.value.report is not None
    assert ei.value.report.corrupt_id == expected
