"""OffsetStore: durable, atomic commits; torn journal tails; compaction."""

from __future__ import annotations

import os

import pytest

from nanomq.storage import OffsetStore


def test_set_get_reopen(tmp_path):
    with OffsetStore(tmp_path) as s:
        assert s.get("g", "t") is None
        s.set("g", "t", 5)
        s.set("g", "t", 9)
        s.set_many([("g2", "t", 1), ("g", "ü", 2**64 - 1)])
        assert s.get("g", "t") == 9
    with OffsetStore(tmp_path) as s:
        assert s.items() == {("g", "t"): 9, ("g2", "t"): 1, ("g", "ü"): 2**64 - 1}
        assert s.recovered_cut_bytes == 0


def test_bad_values(tmp_path):
    with OffsetStore(tmp_path) as s:
        with pytest.raises(ValueError):
            s.set("g", "t", -1)
        with pytest.raises(ValueError):
            s.set("g", "t", 2**64)


def test_torn_tail_at_every_byte_keeps_old_value(tmp_path):
    with OffsetStore(tmp_path / "a") as s:
        s.set("group", "topic", 100)
    base = (tmp_path / "a" / OffsetStore.JOURNAL).read_bytes()
    with OffsetStore(tmp_path / "a") as s:
        s.set("group", "topic", 200)
    full = (tmp_path / "a" / OffsetStore.JOURNAL).read_bytes()
    for cut in range(len(base), len(full)):
        d = tmp_path / f"c{cut}"
        d.mkdir()
        (d / OffsetStore.JOURNAL).write_bytes(full[:cut])
        with OffsetStore(d) as s:
            assert s.get("group", "topic") == 100
            assert s.recovered_cut_bytes == cut - len(base)
            s.set("group", "topic", 300)  # appends after the cut work
        with OffsetStore(d) as s:
            assert s.get("group", "topic") == 300


def test_bit_flip_in_last_entry_is_never_returned(tmp_path):
    with OffsetStore(tmp_path) as s:
        s.set("g", "t", 1)
        s.set("g", "t", 2)
    p = tmp_path / OffsetStore.JOURNAL
    data = bytearray(p.read_bytes())
    half = len(data) // 2
    for i in range(half, len(data)):
        for bit in (0, 7):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            p.write_bytes(bad)
            with OffsetStore(tmp_path) as s:
                assert s.get("g", "t") == 1


def test_compaction(tmp_path):
    with OffsetStore(tmp_path, compact_min_bytes=4096) as s:
        for i in range(2000):
            s.set("g", f"t{i % 3}", i)
        assert os.path.getsize(tmp_path / OffsetStore.JOURNAL) < 4096 * 2
    with OffsetStore(tmp_path) as s:
        assert s.items() == {("g", "t0"): 1998, ("g", "t1"): 1999, ("g", "t2"): 1997}


def _compacting_store(path, monkeypatch, fail_dir_fsync: list[bool]):
    """A store that compacts after a few sets, with the directory fsync failing while
    ``fail_dir_fsync[0]`` is True."""
    from nanomq.storage import offsets as mod

    real = mod.fsync_dir

    def flaky(p):
        if fail_dir_fsync[0]:
            raise OSError(5, "Input/output error")
        real(p)

    monkeypatch.setattr(mod, "fsync_dir", flaky)
    return OffsetStore(path, compact_min_bytes=256)


def _compact_now(s) -> None:
    """Set one key until the journal compacts (its size drops)."""
    last = os.path.getsize(s.path + "/" + OffsetStore.JOURNAL)
    for i in range(1000):
        s.set("g", "churn", i)
        size = os.path.getsize(s.path + "/" + OffsetStore.JOURNAL)
        if size < last:
            return
        last = size
    raise AssertionError("never compacted")


def test_set_after_a_failed_directory_fsync_in_compaction_survives_reopen(tmp_path, monkeypatch):
    """Issue 10 item 18: the journal was renamed over, the directory fsync failed, and the store
    kept appending to the old (now unlinked) journal: a later set() was lost on reopen."""
    fail = [False]
    s = _compacting_store(tmp_path, monkeypatch, fail)
    s.set("g", "kept", 7)
    fail[0] = True
    _compact_now(s)  # the set that compacts is durable in both journals: it does not fail
    fail[0] = False
    s.set("g", "after", 42)
    s.close()
    with OffsetStore(tmp_path) as r:
        assert r.get("g", "after") == 42
        assert r.get("g", "kept") == 7


def test_sets_are_refused_while_the_directory_cannot_be_synced(tmp_path, monkeypatch):
    """Until the renamed journal is durable in its directory, a set cannot promise durability (a
    crash could bring the old journal back): it raises OffsetStoreError and changes nothing; the
    next set retries the directory fsync."""
    from nanomq.storage import OffsetStoreError

    fail = [False]
    s = _compacting_store(tmp_path, monkeypatch, fail)
    s.set("g", "t", 1)
    fail[0] = True
    _compact_now(s)
    committed = s.items()
    size = os.path.getsize(tmp_path / OffsetStore.JOURNAL)
    with pytest.raises(OffsetStoreError, match="directory"):
        s.set("g", "t", 2)
    assert s.get("g", "t") == 1 and s.items() == committed
    assert os.path.getsize(tmp_path / OffsetStore.JOURNAL) == size  # nothing written
    fail[0] = False
    s.set("g", "t", 3)
    s.close()
    with OffsetStore(tmp_path) as r:
        assert r.items() == {**committed, ("g", "t"): 3}


def test_failed_rename_in_compaction_keeps_the_old_journal_and_no_descriptor_leaks(tmp_path, monkeypatch):
    from nanomq.storage import offsets as mod

    def no_replace(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mod.os, "replace", no_replace)
    fds_before = len(os.listdir("/proc/self/fd"))
    with OffsetStore(tmp_path, compact_min_bytes=256) as s:
        for i in range(200):
            s.set("g", f"t{i % 2}", i)  # compaction is tried (and fails) again and again
        assert len(os.listdir("/proc/self/fd")) <= fds_before + 2
        assert not os.path.exists(tmp_path / (OffsetStore.JOURNAL + ".tmp"))
    monkeypatch.undo()
    with OffsetStore(tmp_path) as r:
        assert r.items() == {("g", "t0"): 198, ("g", "t1"): 199}
