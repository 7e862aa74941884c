"""The C ring against a damaged header (issue 10, item 14) and an abandoned claim (item 15).

Header layout (ring.c, struct nmq_ring_hdr): magic u64 @0, version u32 @8, mode u32 @12,
capacity u64 @16, max_record u32 @24, hdr_size u32 @28, max_producers u32 @32, tail u64 @128,
head u64 @256, the peer table @640 (consumer pid, four counters, then producer_pid[16] @660).
"""

from __future__ import annotations

import struct

import pytest

from nanomq._c import ring as R
from nanomq.ipc import Channel, NotAChannel

MAX_PRODUCERS_OFF = 32
TAIL_OFF, HEAD_OFF = 128, 256
PRODUCER_PID_OFF = 660


def _put32(mem: bytearray, off: int, v: int) -> None:
    struct.pack_into("<I", mem, off, v)


def _put64(mem: bytearray, off: int, v: int) -> None:
    struct.pack_into("<Q", mem, off, v)


def _formatted(mode: int, cap: int = 1024) -> bytearray:
    mem = bytearray(R.required_size(cap))
    R.Ring.format(mem, cap, mode).close()
    return mem


# ---- item 14: every header field validated on attach --------------------------------------------


@pytest.mark.parametrize(("mode", "value"), [(R.MPSC, 17), (R.MPSC, 1000), (R.MPSC, 0), (R.MPSC, 1),
                                             (R.SPSC, 2), (R.SPSC, 0), (R.SPSC, 0xFFFFFFFF)])
def test_attach_refuses_a_bad_max_producers(mode: int, value: int) -> None:
    mem = _formatted(mode)
    _put32(mem, MAX_PRODUCERS_OFF, value)
    with pytest.raises(R.NotARing, match="header"):
        R.Ring.attach(mem)


@pytest.mark.parametrize(("head", "tail"), [
    (0, 3),          # tail not 8-aligned
    (5, 64),         # head not 8-aligned
    (64, 0),         # head beyond tail
    (0, 1024 + 8),   # more in flight than the ring holds
    (8, 1 << 63),    # garbage
])
def test_attach_refuses_impossible_positions(head: int, tail: int) -> None:
    for mode in (R.SPSC, R.MPSC):
        mem = _formatted(mode)
        _put64(mem, HEAD_OFF, head)
        _put64(mem, TAIL_OFF, tail)
        with pytest.raises(R.NotARing, match="header"):
            R.Ring.attach(mem)


def test_attach_accepts_any_consistent_positions() -> None:
    mem = _formatted(R.SPSC)
    _put64(mem, HEAD_OFF, 4096 + 1024)
    _put64(mem, TAIL_OFF, 4096 + 1024 + 1024)  # exactly full: allowed
    r = R.Ring.attach(mem)
    assert r.used == 1024
    r.close()


def test_channel_open_reports_a_damaged_header_as_not_a_channel(tmp_path) -> None:
    path = str(tmp_path / "ch")
    with Channel.create(path, 1024, mpsc=True):
        with open(path, "r+b") as f:
            f.seek(MAX_PRODUCERS_OFF)
            f.write(struct.pack("<I", 4096))
        with pytest.raises(NotAChannel, match="header"):
            Channel.open(path)


def test_register_uses_the_max_producers_validated_at_attach() -> None:
    """A header rewritten after attach (a buggy or hostile peer) must not make register index past
    producer_pid[16]: the handle uses the value it validated."""
    mem = _formatted(R.MPSC)
    r = R.Ring.attach(mem)
    slots = [r.register(1, 1000 + i) for i in range(16)]
    assert slots == list(range(16))
    tail_of_table = bytes(mem[PRODUCER_PID_OFF + 64 : 4096])
    _put32(mem, MAX_PRODUCERS_OFF, 64)
    assert r.register(1, 2000) == -1  # all 16 taken: no 17th slot beyond the table
    assert bytes(mem[PRODUCER_PID_OFF + 64 : 4096]) == tail_of_table
    assert len(r.peer_pids(1)) == 16
    assert r.replace(1, 20, 0, 5) is False
    r.close()


def test_spsc_handle_keeps_one_producer_slot_when_the_header_changes() -> None:
    mem = _formatted(R.SPSC)
    r = R.Ring.attach(mem)
    assert r.register(1, 111) == 0
    _put32(mem, MAX_PRODUCERS_OFF, 16)
    assert r.register(1, 222) == -1  # an SPSC ring has one producer, whatever the header says now
    assert r.peer_pids(1) == [111]
    r.close()


# ---- item 15: abort a claim; claim() as a context manager -----------------------------------------


@pytest.fixture(params=[R.SPSC, R.MPSC], ids=["spsc", "mpsc"])
def mode(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def test_abort_gives_the_claim_up(mode: int) -> None:
    r = R.Ring.heap(1024, mode)
    c = r.claim(10)
    c[:3] = b"abc"
    r.abort()
    assert r.pop() is None and r.used in (0, 24)  # MPSC: the claimed bytes became padding
    assert r.push(b"next")
    assert r.pop() == b"next" and r.pop() is None and r.used == 0
    with pytest.raises(R.RingError):
        r.abort()  # nothing claimed


def test_mpsc_abort_unwedges_the_records_claimed_after_it() -> None:
    """The bug: an exception between claim() and commit() left a hole the consumer waited at
    forever, holding back every record other producers committed after it."""
    mem = bytearray(R.required_size(1024))
    a = R.Ring.format(mem, 1024, R.MPSC)
    b = R.Ring.attach(mem)
    cons = R.Ring.attach(mem)
    a.claim(3)
    assert b.push(b"second")
    assert cons.pop() is None
    a.abort()
    assert cons.pop_batch() == [b"second"]
    assert a.push(b"third") and cons.pop() == b"third"
    for h in (a, b, cons):
        h.close()


def test_claim_as_context_manager_commits_on_success(mode: int) -> None:
    r = R.Ring.heap(1024, mode)
    with r.claim(5) as buf:
        buf[:] = b"hello"
    assert r.pop() == b"hello"
    with r.claim(3) as buf:  # a buffer for APIs that take one (recv_into, struct.pack_into, …)
        memoryview(buf)[:] = b"xyz"
    assert r.pop() == b"xyz"


def test_claim_as_context_manager_aborts_on_exception(mode: int) -> None:
    mem = bytearray(R.required_size(1024))
    prod = R.Ring.format(mem, 1024, mode)
    cons = R.Ring.attach(mem)
    with pytest.raises(ZeroDivisionError), prod.claim(8) as buf:
        buf[:4] = b"half"
        1 / 0  # noqa: B018 - the failure between claim and commit
    assert cons.pop() is None
    assert prod.push(b"after")  # the handle is usable again, the ring not wedged
    assert cons.pop() == b"after" and cons.pop() is None
    prod.close()
    cons.close()


def test_claim_context_manager_after_an_explicit_commit_or_abort(mode: int) -> None:
    r = R.Ring.heap(1024, mode)
    with r.claim(2) as buf:
        buf[:] = b"ok"
        r.commit()  # done by hand: leaving the block does nothing more
    with r.claim(2):
        r.abort()
    assert r.pop() == b"ok" and r.pop() is None


def test_old_style_claim_commit_still_works(mode: int) -> None:
    r = R.Ring.heap(1024, mode)
    buf = r.claim(4)
    buf[:] = b"four"
    assert len(buf) == 4 and bytes(buf[:2]) == b"fo"
    r.commit()
    assert r.pop() == b"four"


def test_abort_at_the_wrap_skips_the_padding_too() -> None:
    for mode in (R.SPSC, R.MPSC):
        r = R.Ring.heap(256, mode)
        assert r.push(b"x" * 100) and r.push(b"y" * 100)
        assert r.pop() == b"x" * 100
        r.claim(100)  # needs padding at the end of the data area first
        r.abort()
        assert r.pop() == b"y" * 100
        assert r.push(b"z" * 50)
        assert r.pop() == b"z" * 50 and r.pop() is None
        assert r.used == 0


def test_an_ended_claim_never_acts_on_the_next_one() -> None:
    r = R.Ring.heap(1024, R.MPSC)
    first = r.claim(1)
    first[:] = b"1"
    first.commit()
    assert not first.open
    second = r.claim(1)
    second[:] = b"2"
    with pytest.raises(R.RingError):
        first.abort()
    assert second.open
    second.commit()
    assert r.pop_batch() == [b"1", b"2"]


# ---- Ring.reload: a handle that takes over a role refreshes its cached positions ------------------


def test_reload_refreshes_a_handle_that_takes_over_the_consumer_role() -> None:
    mem = bytearray(R.required_size(1024))
    prod = R.Ring.format(mem, 1024, R.SPSC)
    old, new = R.Ring.attach(mem), R.Ring.attach(mem)  # `new` caches the positions of now
    assert prod.push(b"one") and prod.push(b"two")
    assert old.pop() == b"one"
    new.reload()  # without it `new` would read from its stale head and deliver b"one" again
    assert new.pop() == b"two" and new.pop() is None
    for h in (prod, old, new):
        h.close()
