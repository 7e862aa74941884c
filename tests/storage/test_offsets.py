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
