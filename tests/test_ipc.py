"""nanomq.ipc: the shared-memory channel between processes.

Multi-process tests use the "fork" start method (children inherit nothing but the channel name and
open it themselves, as unrelated processes would). Sizes: the CI run moves ~1.1 M records across
the SPSC and MPSC stress tests; NANOMQ_LONG=1 moves ~10 M.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import signal
import struct
import time
import uuid
import zlib
from collections.abc import Iterator

import pytest

from nanomq import ipc
from nanomq._c import ring as R

LONG = os.environ.get("NANOMQ_LONG") == "1"
FORK = mp.get_context("fork")
HDR = struct.Struct("<IIQI")  # producer, payload length, seq, crc32(payload)


@pytest.fixture
def name() -> Iterator[str]:
    n = f"test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    yield n
    path = os.path.join(ipc.SHM_DIR, f"nanomq-{n}")
    if os.path.exists(path):
        os.unlink(path)


@pytest.fixture
def procs() -> Iterator[list[mp.process.BaseProcess]]:
    """Children started by a test; killed and reaped whatever happens."""
    started: list[mp.process.BaseProcess] = []
    yield started
    for p in started:
        if p.is_alive():
            p.kill()
        p.join(5)


def test_send_recv_in_one_process(name: str) -> None:
    with ipc.Channel.create(name, 8192) as ch, ipc.Channel.open(name) as rx:
        assert os.path.exists(ch.path) and ch.capacity == 8192 and ch.max_record == 4088
        assert not ch.mpsc and ch.wait_strategy == "block"
        ch.send(b"hello")
        ch.send(b"")
        ch.send_batch([b"a", b"bb", b"ccc"] * 100)
        assert rx.recv(0) == b"hello"
        assert rx.recv(0) == b""
        got: list[bytes] = []
        while len(got) < 300:
            got += rx.recv_batch(256, 0)
        assert got == [b"a", b"bb", b"ccc"] * 100
        assert rx.recv(0) is None and rx.recv_batch(10, 0) == []
        assert "capacity=8192" in repr(ch)
    assert not os.path.exists(ch.path)  # the creator removes the file
    assert ch.closed
    ch.close()  # idempotent


def test_timeouts_are_honoured(name: str) -> None:
    with ipc.Channel.create(name, 1024) as ch:
        for wait in ("spin", "yield", "block"):
            with ipc.Channel.open(name, wait=wait) as rx:  # type: ignore[arg-type]
                t0 = time.monotonic()
                assert rx.recv(timeout_us=50_000) is None
                assert rx.recv_batch(timeout_us=20_000) == []
                assert 0.06 <= time.monotonic() - t0 < 1.0
        ch.send(b"x")


def test_full_ring_is_backpressure(name: str) -> None:
    with ipc.Channel.create(name, 256) as ch:
        n = 0
        while True:
            try:
                ch.send(b"%15d" % n, timeout_us=0)
            except ipc.ChannelFull:
                break
            n += 1
        t0 = time.monotonic()
        with pytest.raises(ipc.ChannelFull):
            ch.send(b"y" * 15, timeout_us=30_000)
        assert time.monotonic() - t0 >= 0.029
        with pytest.raises(ipc.ChannelFull) as info:
            ch.send_batch([b"z" * 15] * 5, timeout_us=1000)
        assert info.value.sent == 0
        with ipc.Channel.open(name) as rx:
            assert [rx.recv(0) for _ in range(n)] == [b"%15d" % i for i in range(n)]
            assert rx.recv(0) is None


def test_record_too_large_and_bad_args(name: str) -> None:
    with ipc.Channel.create(name, 256) as ch:
        with pytest.raises(ipc.RecordTooLarge):
            ch.send(b"x" * 121)
        with pytest.raises(ipc.RecordTooLarge):
            ch.send_batch([b"ok", b"x" * 121])
        with pytest.raises(ValueError):
            ch.recv_batch(257, 0)
    with pytest.raises(ValueError):
        ipc.Channel.create(name, 1000)
    with pytest.raises(ValueError):
        ipc.Channel.create("bad name!", 1024)
    with pytest.raises(ValueError):
        ipc.Channel.create(name, 1024, wait="sleepy")  # type: ignore[arg-type]
    assert not os.path.exists(os.path.join(ipc.SHM_DIR, f"nanomq-{name}"))


def test_records_larger_than_the_receive_buffers_arrive_whole(name: str) -> None:
    """The ring's pop buffers start at 64 KiB (one record) and 256 KiB (a batch) and grow."""
    big, bigger = bytes(range(256)) * 300, b"\x07" * (300 << 10)  # 75 KiB, 300 KiB
    with ipc.Channel.create(name, 1 << 20) as ch:
        ch.send(big)
        ch.send(b"small")
        assert ch.recv(0) == big and ch.recv(0) == b"small"
        ch.send_batch([bigger, b"after"])
        got = ch.recv_batch(timeout_us=0)
        got += ch.recv_batch(timeout_us=0) if len(got) < 2 else []
        assert got == [bigger, b"after"]


def test_a_closed_channel_refuses_to_send_or_receive(name: str) -> None:
    ch = ipc.Channel.create(name, 1024)
    ch.send(b"x")
    ch.close()
    with pytest.raises(ipc.ChannelError, match="closed"):
        ch.send(b"y")
    with pytest.raises(ipc.ChannelError, match="closed"):
        ch.recv(0)


def test_create_and_open_errors(name: str, tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(FileNotFoundError):
        ipc.Channel.open(name)
    with ipc.Channel.create(name, 1024) as ch:
        with pytest.raises(FileExistsError):
            ipc.Channel.create(name, 1024)
        ipc.Channel.create(name, 2048, replace=True).close()
        assert ch.capacity == 1024  # our mapping still holds the old (unlinked) ring
    junk = os.path.join(str(tmp_path), "junk")
    with open(junk, "wb") as f:
        f.write(os.urandom(R.HEADER_SIZE + 1024))
    with pytest.raises(ipc.NotAChannel):
        ipc.Channel.open(junk)
    with open(junk, "wb") as f:
        f.write(b"tiny")
    with pytest.raises(ipc.NotAChannel):
        ipc.Channel.open(junk)
    path = os.path.join(str(tmp_path), "other-version")
    ipc.Channel.create(path, 1024).close()  # creator unlinks on close: make it again, keep it
    ch2 = ipc.Channel.create(path, 1024)
    ch2.unlink()
    ch2._creator_pid = 0
    with open(path, "wb") as f:  # re-create the file from the live mapping, then bump the version
        f.write(bytes(ch2.ring._buf))
    ch2.close()
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 2))
    with pytest.raises(ipc.LayoutVersionError):
        ipc.Channel.open(path)


def test_second_consumer_is_refused(name: str) -> None:
    with ipc.Channel.create(name, 1024) as a, ipc.Channel.open(name) as b:
        assert a.recv(0) is None
        with pytest.raises(ipc.RoleTaken):
            b.recv(0)
        a.send(b"spsc has one producer")
        with pytest.raises(ipc.RoleTaken):
            b.send(b"second producer")


# ---- multi-process ----------------------------------------------------------------------------


def _payload(prod: int, seq: int) -> bytes:
    n = (seq * 2654435761 + prod) % 200
    return (seq.to_bytes(8, "little") * 26)[:n]


def _producer(name: str, prod: int, count: int, mpsc: bool) -> None:
    with ipc.Channel.open(name) as ch:
        seq = 0
        while seq < count:
            if seq % 1000 < 500:  # single sends and batches, alternating in runs
                p = _payload(prod, seq)
                ch.send(HDR.pack(prod, len(p), seq, zlib.crc32(p)) + p)
                seq += 1
            else:
                batch = []
                for s in range(seq, min(seq + 97, count)):
                    p = _payload(prod, s)
                    batch.append(HDR.pack(prod, len(p), s, zlib.crc32(p)) + p)
                ch.send_batch(batch)
                seq += len(batch)


def _stress(name: str, procs: list[mp.process.BaseProcess], nprod: int, per: int, mpsc: bool) -> None:
    with ipc.Channel.create(name, 1 << 16, mpsc=mpsc, wait="yield", spin_us=20) as ch:
        for i in range(nprod):
            procs.append(FORK.Process(target=_producer, args=(name, i, per, mpsc)))
            procs[-1].start()
        nxt = [0] * nprod
        total = 0
        unpack = HDR.unpack_from
        while total < nprod * per:
            blob, lens = ch.recv_batch_raw(256, timeout_us=10_000_000)
            assert lens, "stalled"
            pos = 0
            for n in lens:
                prod, plen, seq, crc = unpack(blob, pos)
                p = blob[pos + HDR.size : pos + n]
                assert plen == len(p) and zlib.crc32(p) == crc, f"corrupt record {prod}/{seq}"
                assert seq == nxt[prod], f"producer {prod}: got seq {seq}, expected {nxt[prod]}"
                nxt[prod] = seq + 1
                pos += n
            total += len(lens)
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        assert nxt == [per] * nprod
        # Everyone closed: the consumer now sees end of stream, not a hang.
        with pytest.raises(ipc.ChannelClosed):
            ch.recv(timeout_us=1_000_000)


def test_stress_spsc(name: str, procs: list[mp.process.BaseProcess]) -> None:
    _stress(name, procs, 1, 6_000_000 if LONG else 600_000, mpsc=False)


def test_stress_mpsc_three_producers(name: str, procs: list[mp.process.BaseProcess]) -> None:
    _stress(name, procs, 3, 1_500_000 if LONG else 170_000, mpsc=True)


def _send_then_die(name: str, n: int, clean: bool) -> None:
    ch = ipc.Channel.open(name)
    for i in range(n):
        ch.send(b"%d" % i)
    if clean:
        ch.close()
    os._exit(0)  # no close, no atexit: like a crash


@pytest.mark.parametrize("mpsc", [False, True])
def test_dead_producer_is_reported_after_drain(
    name: str, procs: list[mp.process.BaseProcess], mpsc: bool
) -> None:
    with ipc.Channel.create(name, 4096, mpsc=mpsc) as ch:
        procs.append(FORK.Process(target=_send_then_die, args=(name, 5, False)))
        procs[0].start()
        procs[0].join(10)  # dead, and reaped
        assert [ch.recv(1_000_000) for _ in range(5)] == [b"%d" % i for i in range(5)]
        t0 = time.monotonic()
        with pytest.raises(ipc.PeerDied):
            ch.recv(timeout_us=5_000_000)
        assert time.monotonic() - t0 < 1.0


def test_zombie_producer_counts_as_dead(name: str) -> None:
    with ipc.Channel.create(name, 4096) as ch:
        pid = os.fork()
        if pid == 0:
            _send_then_die(name, 1, False)
        try:
            assert ch.recv(2_000_000) == b"0"
            time.sleep(0.05)  # child exits but is not reaped yet: kill(pid, 0) still succeeds
            with pytest.raises(ipc.PeerDied):
                ch.recv(timeout_us=5_000_000)
        finally:
            os.waitpid(pid, 0)


def test_clean_close_is_end_of_stream(name: str, procs: list[mp.process.BaseProcess]) -> None:
    with ipc.Channel.create(name, 4096) as ch:
        procs.append(FORK.Process(target=_send_then_die, args=(name, 3, True)))
        procs[0].start()
        assert list(ch) == [b"0", b"1", b"2"]  # iteration ends at ChannelClosed


def _consume_some(name: str, n: int) -> None:
    ch = ipc.Channel.open(name)
    for _ in range(n):
        ch.recv()
    os._exit(0)


def test_dead_consumer_unblocks_producer(name: str, procs: list[mp.process.BaseProcess]) -> None:
    with ipc.Channel.create(name, 256) as ch:
        procs.append(FORK.Process(target=_consume_some, args=(name, 1)))
        procs[0].start()
        t0 = time.monotonic()
        with pytest.raises(ipc.PeerDied):
            for _ in range(1000):
                ch.send(b"x" * 64, timeout_us=10_000_000)
        assert time.monotonic() - t0 < 5


def _blocked_consumer(name: str, q: mp.Queue) -> None:  # type: ignore[type-arg]
    with ipc.Channel.open(name, wait="block", spin_us=20) as ch:
        ch.recv(0)  # take the role
        q.put("ready")
        msg = ch.recv(timeout_us=10_000_000)
        q.put((msg, time.monotonic_ns()))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        q.put(ru.ru_utime + ru.ru_stime)


def test_blocked_consumer_is_idle_and_woken(name: str, procs: list[mp.process.BaseProcess]) -> None:
    with ipc.Channel.create(name, 4096) as ch:
        q = FORK.Queue()
        procs.append(FORK.Process(target=_blocked_consumer, args=(name, q)))
        procs[0].start()
        assert q.get(timeout=10) == "ready"
        t_cpu0 = time.monotonic()
        time.sleep(1.0)
        sent = time.monotonic_ns()
        ch.send(b"wake up")
        msg, got = q.get(timeout=10)
        cpu = q.get(timeout=10)
        assert msg == b"wake up"
        assert (got - sent) / 1e9 < 0.05  # woken by the futex, not by the 100 ms slice
        wall = time.monotonic() - t_cpu0
        # Includes interpreter start-up in the child (~tens of ms); an idle spinner would show ~1 s.
        assert cpu < 0.3 * wall, f"blocked consumer used {cpu:.3f} s CPU in {wall:.2f} s"


def _interrupted(name: str, q: mp.Queue) -> None:  # type: ignore[type-arg]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with ipc.Channel.open(name, wait="block") as ch:
        q.put("ready")
        try:
            ch.recv()  # no timeout: only Ctrl-C ends this
        except KeyboardInterrupt:
            q.put("interrupted")


def test_ctrl_c_interrupts_a_blocked_recv(name: str, procs: list[mp.process.BaseProcess]) -> None:
    with ipc.Channel.create(name, 4096) as ch:
        ch.send(b"")  # a live producer, so the consumer keeps waiting
        with ipc.Channel.open(name) as ch_rx_probe:
            assert ch_rx_probe.recv(0) == b""
            ch_rx_probe.close()
        q = FORK.Queue()
        procs.append(FORK.Process(target=_interrupted, args=(name, q)))
        procs[0].start()
        assert q.get(timeout=10) == "ready"
        time.sleep(0.2)
        t0 = time.monotonic()
        os.kill(procs[0].pid or 0, signal.SIGINT)
        assert q.get(timeout=5) == "interrupted"
        assert time.monotonic() - t0 < 0.5


def test_channel_inherited_through_fork(name: str) -> None:
    with ipc.Channel.create(name, 4096) as ch:
        ch.recv(0)  # parent is the consumer
        pid = os.fork()
        if pid == 0:
            try:
                ch.send(b"from child")  # the child registers as producer under its own pid
                ch.close()  # gives back the producer slot; never unlinks (not the creator pid)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert ch.recv(1_000_000) == b"from child"
        assert os.path.exists(ch.path)
