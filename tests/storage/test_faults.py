"""Fault injection (b)-(e): torn tails, bit flips, injected I/O errors, damaged files."""

from __future__ import annotations

import errno
import os
import random
import shutil
import struct
from pathlib import Path

import pytest

from nanomq._c.log import fault_clear, fault_set
from nanomq.storage import LogCorruptError, LogIOError, TopicLog
from tests.storage.helpers import batch, payload, read_all

LONG = os.environ.get("NANOMQ_LONG") == "1"
SEG = 64 * 1024


@pytest.fixture(autouse=True)
def _no_faults_left():
    yield
    fault_clear()


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.name != "lock"}


def _restore(snap: dict[str, bytes], d: Path) -> None:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    for name, data in snap.items():
        (d / name).write_bytes(data)


def _make_log(d: Path, n_batches: int = 12, clean: bool = False) -> tuple[list[bytes], list[tuple[int, int]]]:
    """A log of small records; returns payloads and (offset, span) of each record in the last segment."""
    rnd = random.Random(1)
    payloads: list[bytes] = []
    with TopicLog.open(d, segment_bytes=SEG, fsync="never") as log:
        for _ in range(n_batches):
            ps = [payload(len(payloads) + i, rnd.randrange(0, 120)) for i in range(rnd.randint(1, 4))]
            payloads += ps
            log.append_batch(batch(ps), len(ps))
        log.close(clean=clean)
    spans = [(64 + len(p) + 7) & ~7 for p in payloads]
    offs, o = [], 0
    for s in spans:
        offs.append((o, s))
        o += s
    return payloads, offs


def _segments(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix == ".log")


# -- (b) torn tails ------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["truncate", "zero"])
def test_torn_tail_at_every_byte(tmp_path, how):
    src = tmp_path / "src"
    payloads, offs = _make_log(src)
    snap = _snapshot(src)
    seg = _segments(src)[0].name
    tail = offs[-1][0] + offs[-1][1]
    start = offs[-3][0]
    d = tmp_path / "d"
    for cut in range(start, tail + 1):
        _restore(snap, d)
        data = bytearray(snap[seg])
        if how == "truncate":
            data = data[:cut]
        else:
            data[cut:] = bytes(len(data) - cut)
        (d / seg).write_bytes(data)
        # a record survives when every byte its CRC covers does (the padding after it is zero anyway)
        keep = sum(1 for (o, _s), p in zip(offs, payloads, strict=True) if o + 64 + len(p) <= cut)
        with TopicLog.open(d, segment_bytes=SEG, on_corrupt="raise") as log:
            rep = log.report
            assert rep.corruption == "none"
            got = read_all(log)
            assert [g[3] for g in got] == payloads[:keep], cut
            boundary = offs[keep][0] if keep < len(offs) else tail
            if cut > boundary:  # part of a record survived: cut there, and said where
                assert rep.truncated_bytes > 0 and rep.truncated_offset == boundary
                assert any(n.endswith(".quarantine") for n in os.listdir(d))
            else:
                assert rep.truncated_bytes == 0
            assert log.append_batch(batch([b"after"]), 1) == (keep + 1, keep + 1)
            assert read_all(log)[-1][3] == b"after"


def test_clean_log_missing_its_tail_is_corruption(tmp_path):
    """A clean shutdown vouched for the tail: losing it is damage, not a torn write."""
    src = tmp_path / "src"
    payloads, offs = _make_log(src, clean=True)
    seg = _segments(src)[0]
    data = seg.read_bytes()
    seg.write_bytes(data[: offs[-2][0] + 10])
    with pytest.raises(LogCorruptError):
        TopicLog.open(src, segment_bytes=SEG, on_corrupt="raise")


# -- (c) bit flips -------------------------------------------------------------------------

@pytest.mark.parametrize("clean", [False, True])
def test_bit_flips_in_segment_never_returned(tmp_path, clean):
    src = tmp_path / "src"
    payloads, offs = _make_log(src, clean=clean)
    snap = _snapshot(src)
    seg = _segments(src)[0].name
    tail = offs[-1][0] + offs[-1][1]
    rnd = random.Random(7)
    d = tmp_path / "d"
    n = 1500 if LONG else 150
    for _ in range(n):
        pos = rnd.randrange(0, tail + 256)
        bit = rnd.randrange(8)
        _restore(snap, d)
        data = bytearray(snap[seg])
        data[pos] ^= 1 << bit
        (d / seg).write_bytes(data)
        k = next((i for i, (o, s) in enumerate(offs) if o <= pos < o + s), None)
        with TopicLog.open(d, segment_bytes=SEG) as log:
            rep = log.report
            if k is None:  # flipped a zero byte after the tail: cut (unless clean), records intact
                if not clean:
                    assert rep.truncated_offset == tail and rep.truncated_bytes > 0
                assert [g[3] for g in read_all(log)] == payloads
                continue
            if clean and rep.corruption == "none" and rep.truncated_bytes == 0:
                # the clean checkpoint let recovery trust the index; the read path checks lazily
                with pytest.raises(LogCorruptError):
                    read_all(log)
                if k == 0:
                    with pytest.raises(LogCorruptError):
                        log.read(1)
                else:
                    r = log.read(1, 10_000, 1 << 30)
                    assert r.count == k  # everything before the damage, nothing of it
                continue
            where = rep.corrupt_offset if rep.corruption != "none" else rep.truncated_offset
            assert where == offs[k][0], (pos, rep)
            got = read_all(log)
            assert [g[3] for g in got] == payloads[:k]


def test_bit_flips_everywhere_with_verify_all(tmp_path):
    """verify_all makes recovery itself find damage in data a clean checkpoint vouched for."""
    src = tmp_path / "src"
    payloads, offs = _make_log(src, clean=True)
    snap = _snapshot(src)
    seg = _segments(src)[0].name
    rnd = random.Random(3)
    d = tmp_path / "d"
    for _ in range(60):
        k = rnd.randrange(len(offs))
        pos = offs[k][0] + rnd.randrange(offs[k][1])
        _restore(snap, d)
        data = bytearray(snap[seg])
        data[pos] ^= 1 << rnd.randrange(8)
        (d / seg).write_bytes(data)
        with TopicLog.open(d, segment_bytes=SEG, verify_all=True) as log:
            rep = log.report
            where = rep.corrupt_offset if rep.corruption != "none" else rep.truncated_offset
            assert where == offs[k][0]
            assert [g[3] for g in read_all(log)] == payloads[:k]
        with pytest.raises(LogCorruptError) as ei:
            _restore(snap, d)
            (d / seg).write_bytes(data)
            TopicLog.open(d, segment_bytes=SEG, verify_all=True, on_corrupt="raise")
        if k < len(offs) - 1:
            assert f"offset {offs[k][0]}" in str(ei.value)


def test_bit_flips_in_index_and_checkpoint(tmp_path):
    src = tmp_path / "src"
    with TopicLog.open(src, segment_bytes=8192, fsync="never") as log:
        for i in range(200):
            log.append_batch(batch([payload(i, 100)]), 1)
        expect = read_all(log)
    snap = _snapshot(src)
    rnd = random.Random(5)
    d = tmp_path / "d"
    targets = [n for n in snap if n.endswith(".idx") or n == "checkpoint"]
    for _ in range(120 if not LONG else 1000):
        name = rnd.choice(targets)
        _restore(snap, d)
        data = bytearray(snap[name])
        data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
        (d / name).write_bytes(data)
        with TopicLog.open(d, segment_bytes=8192, on_corrupt="raise") as log:
            if name.endswith(".idx"):
                assert log.report.indexes_rebuilt >= 1
            else:
                assert not log.report.clean
            assert read_all(log) == expect
            assert log.find_by_timestamp(expect[57][1]) <= 58


# -- (d) injected I/O errors ---------------------------------------------------------------

def test_append_write_error_then_recovers(tmp_path):
    with TopicLog.open(tmp_path / "t", fsync="never") as log:
        log.append_batch(batch([b"a"]), 1)
        fault_set("write", 1, 1, errno.EIO)
        with pytest.raises(LogIOError) as ei:
            log.append_batch(batch([b"b"]), 1)
        assert ei.value.errno == errno.EIO
        assert log.next_id == 2
        assert log.append_batch(batch([b"c"]), 1) == (2, 2)
        assert [g[3] for g in read_all(log)] == [b"a", b"c"]


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
def test_fsync_error_is_reported_and_retried(tmp_path, err):
    d = tmp_path / "t"
    with TopicLog.open(d, fsync="always") as log:
        log.append_batch(batch([b"a"]), 1)
        fault_set("fsync", 1, 2, err)
        with pytest.raises(LogIOError) as ei:
            log.append_batch(batch([b"b"]), 1)  # appended, but its sync failed: no durable ack
        assert ei.value.errno == err
        assert log.durable_id == 1 and log.next_id == 3
        with pytest.raises(LogIOError):
            log.sync()
        assert log.sync() == 2  # the fault is gone: the unsynced bytes are rewritten and synced
        log.append_batch(batch([b"c"]), 1)
    with TopicLog.open(d) as log:
        assert [g[3] for g in read_all(log)] == [b"a", b"b", b"c"]


@pytest.mark.parametrize("kind,err", [("fallocate", errno.ENOSPC), ("write", errno.ENOSPC)])
def test_rotation_errors(tmp_path, kind, err):
    """A failed rotation fails the append cleanly; the log continues once the fault is gone."""
    d = tmp_path / "t"
    with TopicLog.open(d, segment_bytes=8192, fsync="never") as log:
        n = 0
        while log.stats().segments == 1:
            log.append_batch(batch([payload(n, 500)]), 1)
            n += 1
        # fill the second segment up to the brink of rotating again
        while log.stats().total_bytes + 1000 < 2 * 8192 - 600:
            log.append_batch(batch([payload(n, 500)]), 1)
            n += 1
        fault_set(kind, 1, 0, err)  # every call fails until cleared
        failed = 0
        for _ in range(3):
            try:
                log.append_batch(batch([payload(n, 500)]), 1)
                n += 1
            except LogIOError as e:
                assert e.errno == err
                failed += 1
        fault_clear()
        if kind != "write":
            assert failed >= 1
        for _ in range(30):
            log.append_batch(batch([payload(n, 500)]), 1)
            n += 1
        assert [g[3] for g in read_all(log)] == [payload(i, 500) for i in range(n)]
    with TopicLog.open(d, segment_bytes=8192, on_corrupt="raise") as log:
        assert [g[3] for g in read_all(log)] == [payload(i, 500) for i in range(n)]


def test_rotation_does_not_sync_the_next_sync_seals_and_a_failed_seal_fails_only_the_sync(tmp_path):
    """Rotation (inside an append, on the broker's event loop) never waits for a disk flush: a
    failing fsync does not fail it. The next sync seals the old segment first; while the seal
    fails, sync raises and durable_id stays before the sealed segment's end; once the fault is
    gone the next sync seals it and covers everything ([NMQ-S9-1])."""
    d = tmp_path / "t"
    with TopicLog.open(d, segment_bytes=8192, fsync="never") as log:
        n = 0
        while log.stats().segments == 1:
            log.append_batch(batch([payload(n, 500)]), 1)
            n += 1
        fault_set("fsync", 1, 0, errno.EIO)  # every fsync and fdatasync fails until cleared
        while log.stats().segments == 2:  # a second rotation, under the fault
            log.append_batch(batch([payload(n, 500)]), 1)
            n += 1
        assert log.unsealed == 2
        with pytest.raises(LogIOError) as e:
            log.sync()
        assert e.value.errno == errno.EIO and "sealing segment" in str(e.value)
        assert log.durable_id < 14 and log.unsealed == 2
        fault_clear()
        assert log.sync() == n and log.durable_id == n and log.unsealed == 0
        assert (d / "00000000000000000001.idx").exists()
        assert [g[3] for g in read_all(log)] == [payload(i, 500) for i in range(n)]
    with TopicLog.open(d, segment_bytes=8192, on_corrupt="raise") as log:
        assert log.report.corruption == "none"
        assert [g[3] for g in read_all(log)] == [payload(i, 500) for i in range(n)]


def test_a_closed_log_with_unsealed_segments_recovers_them(tmp_path):
    """An unclean close (or a crash) with segments rotated out but not sealed: the next open
    scans and syncs them (the checkpoint is still before them) and loses nothing."""
    d = tmp_path / "t"
    with TopicLog.open(d, segment_bytes=8192, fsync="never") as log:
        for i in range(60):
            log.append_batch(batch([payload(i, 500)]), 1)
        assert log.unsealed >= 3
        log.close(clean=False)
    with TopicLog.open(d, segment_bytes=8192, on_corrupt="raise") as log:
        assert log.report.corruption == "none" and log.unsealed == 0
        assert log.durable_id == 60
        assert [g[3] for g in read_all(log)] == [payload(i, 500) for i in range(60)]


@pytest.mark.parametrize("kind", ["ftruncate", "write"])
def test_nonfatal_rotation_steps(tmp_path, kind):
    """The index/checkpoint writes and the tail truncation of a seal may fail without failing the
    sync: recovery rebuilds what they would have saved."""
    d = tmp_path / "t"
    with TopicLog.open(d, segment_bytes=8192, fsync="never") as log:
        for i in range(40):
            assert log.append_batch(batch([payload(i, 500)]), 1) == (i + 1, i + 1)
            if i == 14:  # 14 records of 568 bytes fill a segment: append 15 rotated
                assert log.stats().segments == 2 and log.unsealed == 1
                # write: the 1st and 2nd writes of the seal are the index and the checkpoint
                fault_set(kind, 1, 2 if kind == "write" else 1, errno.EIO)
                assert log.sync() == 15 and log.unsealed == 0
                fault_clear()
        log.close(clean=False)
    if kind == "write":
        assert not (d / "00000000000000000001.idx").exists()
    with TopicLog.open(d, segment_bytes=8192, on_corrupt="raise") as log:
        assert log.report.corruption == "none"
        assert [g[3] for g in read_all(log)] == [payload(i, 500) for i in range(40)]


def test_open_fails_cleanly_on_io_error(tmp_path):
    d = tmp_path / "t"
    with TopicLog.open(d) as log:
        log.append_batch(batch([b"a"]), 1)
    fault_set("fsync", 1, 0, errno.EIO)
    with pytest.raises(LogIOError):
        TopicLog.open(d)
    fault_clear()
    with TopicLog.open(d) as log:
        assert [g[3] for g in read_all(log)] == [b"a"]


# -- (e) files deleted or replaced by garbage ----------------------------------------------

def _three_segments(d: Path) -> list[bytes]:
    ps = [payload(i, 900) for i in range(30)]
    with TopicLog.open(d, segment_bytes=8192, fsync="never") as log:
        for p in ps:
            log.append_batch(batch([p]), 1)
        assert log.stats().segments >= 3
    return ps


def test_middle_segment_deleted(tmp_path):
    d = tmp_path / "t"
    ps = _three_segments(d)
    segs = _segments(d)
    os.unlink(segs[1])
    before = _snapshot(d)
    with pytest.raises(LogCorruptError, match="gap"):
        TopicLog.open(d, segment_bytes=8192, on_corrupt="raise")
    assert _snapshot(d) == before
    with TopicLog.open(d, segment_bytes=8192) as log:  # quarantine mode: keep what precedes the gap
        assert log.report.corruption == "id-gap"
        assert log.report.quarantined_files == len(segs) - 2
        got = read_all(log)
        assert [g[3] for g in got] == ps[: len(got)] and len(got) > 0
    assert any(n.endswith(".log.quarantine") for n in os.listdir(d))


@pytest.mark.parametrize("which", [0, 1, -1])
def test_segment_replaced_by_garbage(tmp_path, which):
    d = tmp_path / "t"
    _three_segments(d)
    seg = _segments(d)[which]
    seg.write_bytes(os.urandom(seg.stat().st_size or 4096))
    if which != -1:
        with pytest.raises(LogCorruptError):
            TopicLog.open(d, segment_bytes=8192, on_corrupt="raise", verify_all=True)
    with TopicLog.open(d, segment_bytes=8192, verify_all=True) as log:
        rep = log.report
        # a garbage segment other than the last is set aside as a stray (NMQ-S9-9): reported too
        assert rep.corruption != "none" or rep.truncated_bytes > 0 or rep.stray_files == 1
        read_all(log)  # whatever is left reads back CRC-clean


@pytest.mark.parametrize("which", [0, 1])
def test_garbage_in_trusted_segment_is_caught_on_read(tmp_path, which):
    """Without verify_all a clean checkpoint's index is trusted: damage surfaces as a read error.
    (Open checks the first record of every segment, NMQ-S9-9, and walks the headers behind the
    last index entry, NMQ-S4-3: the garbage is in the payloads of the records after the first.)"""
    d = tmp_path / "t"
    _three_segments(d)
    seg = _segments(d)[which]
    data = bytearray(seg.read_bytes())
    off, k = 0, 0
    while off + 64 <= len(data) and data[off:off + 8] != bytes(8):
        size = struct.unpack_from("<I", data, off + 20)[0]
        if k:
            data[off + 64:off + 64 + size] = os.urandom(size)
        off += (64 + size + 7) & ~7
        k += 1
    seg.write_bytes(bytes(data))
    with TopicLog.open(d, segment_bytes=8192) as log:
        assert log.report.ok
        with pytest.raises(LogCorruptError):
            read_all(log)
        first = int(seg.name[:20])
        # a read that started before the damage returns the records before it (one segment per read)
        assert log.read(1, 1000, 1 << 30).count == (1 if first == 1 else first - 1)
        assert log.read(first, 1000, 1 << 30).count == 1  # the intact first record of the damaged segment
        with pytest.raises(LogCorruptError):
            log.read(first + 1)


def test_index_deleted_or_garbage(tmp_path):
    d = tmp_path / "t"
    ps = _three_segments(d)
    idx = sorted(p for p in d.iterdir() if p.suffix == ".idx")
    idx[0].unlink()
    idx[1].write_bytes(b"garbage" * 10)
    with TopicLog.open(d, segment_bytes=8192, on_corrupt="raise") as log:
        assert log.report.indexes_rebuilt >= 2
        assert [g[3] for g in read_all(log)] == ps


def test_checkpoint_garbage_and_stray_files(tmp_path):
    d = tmp_path / "t"
    ps = _three_segments(d)
    (d / "checkpoint").write_bytes(struct.pack("<Q", 12345) * 8)
    (d / "junk.log").write_bytes(b"x")
    (d / "00000000000000000007.idx.tmp").write_bytes(b"x")
    with TopicLog.open(d, segment_bytes=8192, on_corrupt="raise") as log:
        assert not log.report.clean and log.report.verified_bytes > 0
        assert [g[3] for g in read_all(log)] == ps


def test_unpublished_run_is_a_torn_tail(tmp_path):
    """A writer killed after writing a run but before storing its first id word (the publish
    store) leaves complete, valid-looking records behind a zero id word: they were never visible,
    so recovery cuts them as a torn tail rather than calling them corruption."""
    d = tmp_path / "t"
    with TopicLog.open(d, segment_bytes=SEG, fsync="never") as log:
        log.append_batch(batch([b"a", b"b"]), 2)
        log.append_batch(batch([b"c" * 10, b"d", b"e"]), 3)
        log.close(clean=False)
    seg = _segments(d)[0]
    data = bytearray(seg.read_bytes())
    off = 2 * 72  # the second batch starts after two 1-byte records (72 bytes each)
    assert data[off : off + 8] == (3).to_bytes(8, "little")
    data[off : off + 8] = bytes(8)
    seg.write_bytes(data)
    with TopicLog.open(d, segment_bytes=SEG, on_corrupt="raise") as log:
        assert log.report.corruption == "none"
        assert log.report.truncated_offset == off and log.report.truncated_bytes > 0
        assert [g[3] for g in read_all(log)] == [b"a", b"b"]


@pytest.mark.parametrize("clean", [True, False])
def test_last_segment_deleted(tmp_path, clean):
    """Losing the newest segment file must not silently hand its ids out again."""
    d = tmp_path / "t"
    ps = _three_segments(d)
    with TopicLog.open(d, segment_bytes=8192) as log:
        log.close(clean=clean)
    last = _segments(d)[-1]
    first_lost = int(last.name[:20])
    last.unlink()
    before = _snapshot(d)
    with pytest.raises(LogCorruptError, match="missing"):
        TopicLog.open(d, segment_bytes=8192, on_corrupt="raise")
    assert _snapshot(d) == before  # a refused open changes nothing
    with TopicLog.open(d, segment_bytes=8192) as log:  # quarantine mode: reported, log usable
        assert log.report.corruption == "id-gap"
        assert log.report.corrupt_id == first_lost
        assert [g[3] for g in read_all(log)] == ps[: first_lost - 1]
