"""The C ring through its thin wrapper: unit checks, a stateful model test, the sanitizer driver."""

from __future__ import annotations

import collections
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from nanomq._c import ring as R

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=[R.SPSC, R.MPSC], ids=["spsc", "mpsc"])
def mode(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def test_roundtrip_every_api(mode: int) -> None:
    r = R.Ring.heap(1024, mode)
    assert r.capacity == 1024 and r.max_record == 504 and r.mode == mode
    assert r.pop() is None and r.peek() is None and r.pop_batch() == []
    assert r.push(b"one")
    assert r.push_batch([b"two", b"", b"four"]) == 3
    buf = r.claim(5)
    buf[:] = b"five!"
    r.commit()
    assert r.pop() == b"one"
    view = r.peek()
    assert view is not None and bytes(view) == b"two"
    r.release()
    assert r.pop_batch(1) == [b""]
    assert r.pop_batch() == [b"four", b"five!"]
    assert r.used == 0


def test_full_ring_is_backpressure_not_loss(mode: int) -> None:
    r = R.Ring.heap(256, mode)
    sent = 0
    while r.push(sent.to_bytes(4, "little") * 4):
        sent += 1
    assert sent == 256 // 24  # 8-byte header + 16 payload per frame
    assert not r.writable(16)
    with pytest.raises(R.RingFull):
        r.claim(16)
    assert r.push_batch([b"x" * 16] * 3) == 0
    got = [r.pop() for _ in range(sent)]
    assert got == [i.to_bytes(4, "little") * 4 for i in range(sent)]
    assert r.pop() is None


def test_record_limits(mode: int) -> None:
    r = R.Ring.heap(128, mode)
    assert r.max_record == 56
    with pytest.raises(R.RecordTooLarge):
        r.push(b"x" * 57)
    with pytest.raises(R.RecordTooLarge):
        r.push_batch([b"", b"x" * 57])
    with pytest.raises(R.RecordTooLarge):
        r.claim(57)
    # Two maximum records fill the ring exactly, whatever the position (padding included).
    for _ in range(5):
        assert r.push(b"a" * 56) and r.push(b"b" * 56)
        assert not r.push(b"")
        assert r.pop() == b"a" * 56
        assert r.push(b"c" * 56)
        assert r.pop() == b"b" * 56 and r.pop() == b"c" * 56


def test_wraparound_with_padding(mode: int) -> None:
    r = R.Ring.heap(256, mode)
    expect: collections.deque[bytes] = collections.deque()
    for i in range(2000):
        rec = bytes([i % 251]) * (i * 7 % 100)
        while not r.push(rec):
            assert r.pop() == expect.popleft()
        expect.append(rec)
    while expect:
        assert r.pop() == expect.popleft()
    assert r.pop() is None


def test_state_errors() -> None:
    r = R.Ring.heap(256)
    with pytest.raises(R.RingError):
        r.commit()
    with pytest.raises(R.RingError):
        r.release()
    with pytest.raises(ValueError):
        r.push_batch([b""] * 257)
    with pytest.raises(ValueError):
        r.pop_batch(0)
    r.claim(4)
    with pytest.raises(R.RingError):
        r.push(b"x")  # one claim at a time
    r.commit()
    with pytest.raises(ValueError):
        R.Ring.heap(100)
    with pytest.raises(ValueError):
        R.Ring.heap(32)


def test_attach_validates_header() -> None:
    mem = bytearray(R.required_size(256))
    with pytest.raises(R.NotARing):
        R.Ring.attach(mem)
    R.Ring.format(mem, 256).close()
    R.Ring.attach(mem).close()
    with pytest.raises(R.NotARing):
        R.Ring.attach(mem[: R.HEADER_SIZE + 128])  # shorter than the header's capacity
    bad = bytearray(mem)
    bad[8] = 2  # layout version
    with pytest.raises(R.LayoutVersionError):
        R.Ring.attach(bad)
    bad = bytearray(mem)
    bad[16] = 3  # capacity no longer a power of two
    with pytest.raises(R.NotARing):
        R.Ring.attach(bad)


def test_two_handles_share_one_ring(mode: int) -> None:
    mem = bytearray(R.required_size(512))
    prod = R.Ring.format(mem, 512, mode)
    cons = R.Ring.attach(mem)
    for i in range(500):
        assert prod.push_batch([bytes([i % 256]) * (i % 40), b"z"]) == 2
        assert cons.pop_batch() == [bytes([i % 256]) * (i % 40), b"z"]
    prod.close()
    cons.close()


def test_wait_times_out_without_data() -> None:
    r = R.Ring.heap(256)
    for strategy in (R.WAIT_SPIN, R.WAIT_YIELD, R.WAIT_BLOCK):
        assert not r.wait_readable(strategy, 1000, 2_000_000)
    r.push(b"x")
    assert r.wait_readable(R.WAIT_BLOCK, 0, 1_000_000)
    while r.push(b"x" * 100):
        pass
    assert not r.wait_writable(100, R.WAIT_BLOCK, 0, 1_000_000)


# ---- stateful model ---------------------------------------------------------------------------


def _frame(n: int) -> int:
    return (8 + n + 7) & ~7


class RingModel(RuleBasedStateMachine):
    """The ring against a byte-exact model: positions, padding at wrap, full and empty."""

    @initialize(cap=st.sampled_from([64, 128, 256, 1024]), mode=st.sampled_from([R.SPSC, R.MPSC]))
    def setup(self, cap: int, mode: int) -> None:
        self.ring = R.Ring.heap(cap, mode)
        self.cap = cap
        self.mpsc = mode == R.MPSC
        self.head = self.tail = 0
        # (record, bytes incl. padding before it); record None: an aborted MPSC claim (padding)
        self.q: collections.deque[tuple[bytes | None, int]] = collections.deque()
        self.peeked = False
        self.peek_skipped = 0

    def _need(self, pos: int, n: int) -> int:
        f = _frame(n)
        contig = self.cap - pos % self.cap
        return f if contig >= f else contig + f

    def _fits(self, pos: int, n: int) -> bool:
        return pos + self._need(pos, n) - self.head <= self.cap

    def _records(self) -> st.SearchStrategy[bytes]:
        return st.binary(max_size=self.cap // 2 - 8)

    @rule(data=st.data())
    def push(self, data: st.DataObject) -> None:
        rec = data.draw(st.binary(max_size=self.cap // 2 - 8))
        fits = self._fits(self.tail, len(rec))
        assert self.ring.push(rec) is fits
        if fits:
            need = self._need(self.tail, len(rec))
            self.q.append((rec, need))
            self.tail += need

    @rule(data=st.data())
    def push_max_or_empty(self, data: st.DataObject) -> None:
        rec = b"M" * (self.cap // 2 - 8) if data.draw(st.booleans()) else b""
        fits = self._fits(self.tail, len(rec))
        assert self.ring.push(rec) is fits
        if fits:
            need = self._need(self.tail, len(rec))
            self.q.append((rec, need))
            self.tail += need

    @rule(data=st.data())
    def push_batch(self, data: st.DataObject) -> None:
        recs = data.draw(st.lists(st.binary(max_size=self.cap // 2 - 8), max_size=12))
        k = 0
        pos = self.tail
        planned = []
        for rec in recs:
            if not self._fits(pos, len(rec)):
                break
            need = self._need(pos, len(rec))
            planned.append((rec, need))
            pos += need
            k += 1
        assert self.ring.push_batch(recs) == k
        self.q.extend(planned)
        self.tail = pos

    @rule(data=st.data())
    def claim_commit(self, data: st.DataObject) -> None:
        rec = data.draw(st.binary(max_size=self.cap // 2 - 8))
        if not self._fits(self.tail, len(rec)):
            with pytest.raises(R.RingFull):
                self.ring.claim(len(rec))
            return
        if data.draw(st.booleans()):
            with self.ring.claim(len(rec)) as buf:
                buf[:] = rec
        else:
            buf = self.ring.claim(len(rec))
            buf[:] = rec
            self.ring.commit()
        need = self._need(self.tail, len(rec))
        self.q.append((rec, need))
        self.tail += need

    @rule(data=st.data())
    def claim_abort(self, data: st.DataObject) -> None:
        """An abandoned claim (item 15): SPSC gives the space back, MPSC turns it into padding the
        consumer skips (a None entry of the model: consumed with whatever follows it)."""
        n = data.draw(st.integers(0, self.cap // 2 - 8))
        if not self._fits(self.tail, n):
            return
        if data.draw(st.booleans()):
            with pytest.raises(KeyError), self.ring.claim(n) as buf:
                buf[: min(n, 3)] = b"abc"[: min(n, 3)]
                raise KeyError("the work between claim and commit failed")
        else:
            self.ring.claim(n)
            self.ring.abort()
        if self.mpsc:
            need = self._need(self.tail, n)
            self.q.append((None, need))
            self.tail += need

    def _skip_pads(self) -> int:
        """Consume the padding entries at the front of the model queue; bytes skipped."""
        skipped = 0
        while self.q and self.q[0][0] is None:
            skipped += self.q.popleft()[1]
        return skipped

    @precondition(lambda self: not self.peeked)
    @rule()
    def pop(self) -> None:
        got = self.ring.pop()
        skipped = self._skip_pads()
        if not self.q:
            assert got is None
            self.head += skipped  # padding up to an empty ring is consumed and published
            return
        rec, need = self.q.popleft()
        assert got == rec
        self.head += skipped + need

    @precondition(lambda self: not self.peeked)
    @rule(n=st.integers(1, 256))
    def pop_batch(self, n: int) -> None:
        got = self.ring.pop_batch(n)
        want = []
        while len(want) < n:
            self.head += self._skip_pads()
            if not self.q:
                break
            rec, need = self.q.popleft()
            want.append(rec)
            self.head += need
        assert got == want

    @rule()
    def peek(self) -> None:
        if self.peeked:  # peeking again returns the same record
            view = self.ring.peek()
            assert view is not None and bytes(view) == self.q[0][0]
            return
        view = self.ring.peek()
        skipped = self._skip_pads()
        if not self.q:
            assert view is None
            self.head += skipped
            return
        assert view is not None and bytes(view) == self.q[0][0]
        self.peeked = True
        self.peek_skipped = skipped  # published with the release

    @precondition(lambda self: self.peeked)
    @rule()
    def release(self) -> None:
        self.ring.release()
        self.head += self.peek_skipped + self.q.popleft()[1]
        self.peek_skipped = 0
        self.peeked = False

    @invariant()
    def used_matches(self) -> None:
        if hasattr(self, "ring"):
            # The consumer publishes head only past whole records (padding before the next
            # record is consumed with it), so the shared counters equal the model's exactly.
            assert self.ring.used == self.tail - self.head
            assert self.ring.readable() is (bool(self.q) or self.peeked)


TestRingModel = RingModel.TestCase
TestRingModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


# ---- sanitizers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sanitizer", ["thread", "address,undefined"])
def test_c_driver_under_sanitizer(sanitizer: str, tmp_path: Path) -> None:
    """What `make sanitize` does, with fewer records; skipped without a compiler or runtime."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path / "test_ring"
    src = [str(ROOT / "tests/c/test_ring.c"), str(ROOT / "nanomq/_c/src/ring.c")]
    build = subprocess.run(
        [cc, "-O1", "-g", "-std=gnu11", f"-fsanitize={sanitizer}", "-fno-sanitize-recover=all",
         f"-I{ROOT / 'nanomq/_c/src'}", *src, "-o", str(exe), "-lpthread"],
        capture_output=True, text=True,
    )  # fmt: skip
    if build.returncode != 0:
        pytest.skip(f"cannot build with -fsanitize={sanitizer}: {build.stderr[-300:]}")
    run = subprocess.run([str(exe), "20000"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok:") == 8  # unit, header validation, abort, five threaded runs


def test_mpsc_uncommitted_claim_holds_back_later_records() -> None:
    """Aeron rule: records are delivered in claim order; a claimed-but-uncommitted record is a hole
    the consumer waits at, even when later claims are already committed."""
    mem = bytearray(R.required_size(1024))
    a = R.Ring.format(mem, 1024, R.MPSC)
    b = R.Ring.attach(mem)
    cons = R.Ring.attach(mem)
    buf = a.claim(3)
    assert b.push(b"second")
    assert cons.pop() is None and not cons.readable()
    buf[:] = b"1st"
    a.commit()
    assert cons.pop_batch() == [b"1st", b"second"]
    for h in (a, b, cons):
        h.close()


def test_mpsc_producers_interleave_across_wrap() -> None:
    mem = bytearray(R.required_size(256))
    prods = [R.Ring.format(mem, 256, R.MPSC), R.Ring.attach(mem), R.Ring.attach(mem)]
    cons = R.Ring.attach(mem)
    expect: collections.deque[bytes] = collections.deque()
    for i in range(3000):
        rec = b"%d:%d" % (i % 3, i) + b"." * (i % 50)
        while not prods[i % 3].push(rec):
            assert cons.pop() == expect.popleft()
        expect.append(rec)
    while expect:
        assert cons.pop() == expect.popleft()
    assert cons.pop() is None and cons.used == 0
