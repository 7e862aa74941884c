"""atheris target: opening and recovering damaged log directories, the C log under ASan/UBSan.

Each input is a list of edits applied to a copy of a small valid log directory (several sealed
segments with their indexes, the active segment and the checkpoint; shut down cleanly or not):
bytes overwritten, xored or appended, a u64 field set, a file truncated or deleted, a file named
like a segment or an index created, and a file's CRC recomputed after the edit, so that damage
also gets past the CRCs to the structural checks behind them (an index that lies, a checkpoint
that vouches for too much, a record with a wrong id or length). The log is then opened (either
corruption policy, with or without verifying every CRC), and must:

- open, or refuse with a LogError (never crash, never touch memory out of bounds: run_all.py
  runs this target against an ASan/UBSan build of the C log, ``fuzz/asan.py``);
- return only intact records, in increasing id order (a read may refuse damage it finds in bytes
  recovery trusted without checking: LogCorruptError);
- take an append at its next id and return it;
- after a clean close, open again with no corruption and no stray file to report, and the same
  records (recovery leaves a valid log behind).

Input format (easy to write by hand, see run_all.py's seeds): one flags byte (bit 0: the
unclean template, bit 1: on_corrupt "raise", bit 2: verify_all), then edits of
``op u8, file u8, offset u32 LE, n u8, n data bytes`` while they fit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
import asan  # noqa: E402

SANITIZED = asan.load_log_module()

with atheris.instrument_imports():
    from nanomq._c.crc import crc32c
    from nanomq._c.log import CLog, LogCorruptError, LogError, RecoveryReport
    from nanomq.protocol import RecordBatch

SEG, INTERVAL, MAX_PAYLOAD = 4096, 256, 4096
MAX_EDITS = 12
# under TMPDIR, which run_all.py points at a scratch directory (on tmpfs when there is one) that it
# removes after the run: libFuzzer ends the process without running Python's atexit handlers
_ROOT = Path(tempfile.mkdtemp(prefix="nanomq-fuzz-recovery-"))
atexit.register(shutil.rmtree, _ROOT, True)


def _records(n: int, base: int) -> bytes:
    payloads = [bytes([(base + i) % 251]) * ((base * 7 + i * 37) % 300) for i in range(n)]
    return RecordBatch.from_payloads(payloads, max_payload=MAX_PAYLOAD).data


def _template(name: str, clean: bool) -> Path:
    d = _ROOT / name
    log = CLog(d, segment_bytes=SEG, sync_policy="never", max_payload=MAX_PAYLOAD, topic_id=3,
               index_interval=INTERVAL)
    for i in range(40):  # about six segments
        log.append(_records(1 + i % 5, i), 1 + i % 5)
    log.sync()
    log.close(clean=clean)
    return d


_TEMPLATES = (_template("clean", True), _template("unclean", False))
_N = 0


def _open(d: Path, raise_: bool, verify: bool) -> CLog:
    return CLog(d, segment_bytes=SEG, sync_policy="never", max_payload=MAX_PAYLOAD, topic_id=3,
                on_corrupt="raise" if raise_ else "quarantine", verify_all=verify, index_interval=INTERVAL)


def _fix_crc(p: Path, off: int) -> None:
    b = bytearray(p.read_bytes())
    if p.name.endswith(".idx") and len(b) >= 64:
        struct.pack_into("<I", b, 56, 0)
        struct.pack_into("<I", b, 56, crc32c(bytes(b)))
    elif p.name == "checkpoint" and len(b) >= 64:
        struct.pack_into("<I", b, 48, 0)
        struct.pack_into("<I", b, 48, crc32c(bytes(b[:64])))
    elif p.name.endswith(".log"):  # the record that holds `off`, found by walking the headers
        r = 0
        while r + 64 <= len(b):
            size = struct.unpack_from("<I", b, r + 20)[0]
            span = (64 + size + 7) & ~7
            if r + span > len(b):
                return
            if off < r + span:
                c = crc32c(bytes(b[r + 28 : r + 64 + size]), crc32c(bytes(b[r : r + 24]) + b"\0\0\0\0"))
                struct.pack_into("<I", b, r + 24, c)
                break
            r += span
    else:
        return
    p.write_bytes(bytes(b))


def _edit(d: Path, op: int, which: int, off: int, data: bytes) -> None:
    files = sorted(p for p in d.iterdir() if p.name != "lock")
    if op == 4:  # a new file named like a segment or an index
        ext = ".idx" if data[:1] and data[0] & 1 else ".log"
        (d / f"{off:020d}{ext}").write_bytes(data[1:])
        return
    if not files:
        return
    p = files[which % len(files)]
    size = p.stat().st_size
    if op == 3:
        p.unlink()
    elif op == 2:
        os.truncate(p, off % (size + 1))
    elif op == 5:
        _fix_crc(p, off % (size + 1))
    elif op == 6:
        with p.open("ab") as f:
            f.write(data)
    elif size:
        with p.open("r+b") as f:
            pos = off % size
            if op == 7:  # a u64 field
                pos &= ~7
                data = (data + bytes(8))[:8]
            f.seek(pos)
            old = f.read(len(data))
            if op == 1:
                data = bytes(a ^ b for a, b in zip(data, old, strict=False))
            f.seek(pos)
            f.write(data)


def _intact(view: memoryview, n: int, first: int) -> list[tuple[int, bytes]]:
    """(id, payload) of the ``n`` records of a read, checked as the log promises them: ids from
    ``first`` on, lengths within the run, CRCs that hold, zero padding (the protocol's other checks,
    reserved fields and flags, are the codec's: a forged CRC can store anything)."""
    b = bytes(view)
    out, off = [], 0
    for i in range(n):
        assert len(b) - off >= 64, (len(b), off)
        rid, size, crc = struct.unpack_from("<Q", b, off)[0], *struct.unpack_from("<II", b, off + 20)
        span = (64 + size + 7) & ~7
        assert rid == first + i and span <= len(b) - off, (rid, first, i, size)
        assert crc32c(b[off + 28 : off + 64 + size], crc32c(b[off : off + 24] + bytes(4))) == crc, rid
        assert not any(b[off + 64 + size : off + span]), rid
        out.append((rid, b[off + 64 : off + 64 + size]))
        off += span
    assert off == len(b), (off, len(b))
    return out


def _read_all(log: CLog) -> tuple[list[tuple[int, bytes]], bool]:
    """(id, payload) of every record, and whether a read refused damage."""
    out: list[tuple[int, bytes]] = []
    nxt = 0
    while True:
        try:
            view, n, first = log.read(nxt, 64, 1 << 20)
        except LogCorruptError:
            return out, True
        if n == 0:
            return out, False
        assert first >= nxt, (first, nxt)
        out += _intact(view, n, first)
        nxt = first + n


@atheris.instrument_func
def _feedback(rep: RecoveryReport) -> None:
    """One branch per thing recovery can do: the fuzzer's only view of the C code's paths."""
    if rep.corruption == "bad-record":
        pass
    if rep.corruption == "id-gap":
        pass
    if rep.corruption == "unreadable":
        pass
    if rep.quarantined_files:
        pass
    if rep.truncated_bytes:
        pass
    if rep.stray_files:
        pass
    if rep.indexes_loaded:
        pass
    if rep.indexes_rebuilt:
        pass
    if rep.trusted_bytes:
        pass
    if rep.verified_bytes:
        pass
    if rep.clean:
        pass
    if rep.checkpoint_used:
        pass
    if rep.segments > 6:
        pass
    if rep.first_id > 1:
        pass


@atheris.instrument_func
def TestOneInput(data: bytes) -> None:
    global _N
    if not data:
        return
    flags = data[0]
    raise_, verify = bool(flags & 2), bool(flags & 4)
    _N += 1
    d = _ROOT / f"w{_N % 2}"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(_TEMPLATES[flags & 1], d)
    pos, edits = 1, 0
    while pos + 7 <= len(data) and edits < MAX_EDITS:
        op, which, off, n = data[pos] % 8, data[pos + 1], *struct.unpack_from("<IB", data, pos + 2)
        chunk = data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        edits += 1
        _edit(d, op, which, off, chunk)
    try:
        log = _open(d, raise_, verify)
    except LogError:
        return
    _feedback(log.report)
    got, refused = _read_all(log)
    st = log.stats()
    if got:
        assert got[-1][0] < st.next_id
    if st.read_only_errno == 0:
        recs = _records(3, edits)
        first, last = log.append(recs, 3)
        assert (first, last) == (st.next_id, st.next_id + 2), (first, last, st.next_id)
        view, n, f = log.read(first, 3)
        assert (n, f) == (3, first)
        got += _intact(view, n, first)
    log.close(clean=True)
    del log
    if refused:
        return
    again = _open(d, True, verify)
    rep2 = again.report
    # Not required: truncated_bytes == 0. A clean start trusts that the active segment is zero past
    # its tail (I2 in log.c; it checks the first word only), so damage there stays until a start
    # that scans it (the next one, after an append moved the tail over it) cuts it as a torn tail.
    # It is no record, and nothing else may be found.
    assert rep2.corruption == "none" and rep2.stray_files == 0, rep2
    assert _read_all(again) == (got, False)
    again.close(clean=True)


if __name__ == "__main__":
    if not SANITIZED:
        print("fuzz_recovery: running against the regular build (fuzz/run_all.py uses ASan)", file=sys.stderr)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
