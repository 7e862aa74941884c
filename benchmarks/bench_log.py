"""Benchmarks of the write-ahead log (nanomq.storage.TopicLog over the C log).

Prints one table. Every durability figure is put next to a raw baseline measured in the same run:
a loop of ``pwrite(4 KiB) + fdatasync`` on a preallocated file (the cheapest durable write this
disk offers), so the ratios hold on a noisy shared machine where absolute numbers drift.

Rows:
* append throughput, 64 B and 1 KiB records, batch 1 and 256, fsync never / interval / always
  (``always``: every batch is made durable before the next one, i.e. one fdatasync per batch);
* durable single-record latency (append + sync), one appender, vs the raw fdatasync p50;
* durable latency with several appender threads sharing group commits (each thread: append one
  1 KiB record, then sync(); concurrent syncs share one fdatasync);
* scan throughput: TopicLog.read over the whole log (zero-copy views), and the same with every
  record's CRC verified;
* recovery: reopening ~1 GiB (``--quick``: 128 MiB) of log after an unclean stop, with every CRC
  verified (``verify_all``), and the default checkpoint-bounded recovery, and after a clean stop.

All data lives in a temporary directory that is deleted at the end. Page cache is warm (the data
was just written): recovery figures are CPU-bound, not disk-bound. On this VM the first touch of
never-used guest memory is slow (~0.4 GB/s), so a warm-up pass runs first (see docs/storage.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nanomq._c._core import ffi, lib  # the record scanner itself, over the zero-copy view (as the fuzzers do)
from nanomq.bench.hist import Histogram
from nanomq.bench.results import format_table
from nanomq.protocol import RecordBatch
from nanomq.storage import TopicLog

MiB = 1 << 20


def _records(payloads: list[bytes]) -> bytes:
    """Publisher-style records (ids 0) packed back to back, as a broker hands them to the log."""
    return RecordBatch.from_payloads(payloads, max_payload=1 << 30).data


def _verify(view: memoryview, count: int) -> None:
    """Check framing and every CRC of ``count`` records in place (what --verify-on-start does)."""
    offsets, err = ffi.new("uint32_t[]", count), ffi.new("uint32_t *")
    if lib.nmq_records_scan(ffi.from_buffer(view), len(view), count, 1 << 30, 1, offsets, err):
        raise ValueError(f"record {err[0]} is damaged")


def raw_fdatasync(directory: str, n: int) -> Histogram:
    """Baseline: pwrite 4 KiB at increasing offsets of a preallocated file, then fdatasync."""
    path = os.path.join(directory, "raw.bin")
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    try:
        os.posix_fallocate(fd, 0, (n + 16) * 4096)
        os.fsync(fd)
        block = b"r" * 4096
        h = Histogram()
        for i in range(n):
            t0 = time.perf_counter_ns()
            os.pwrite(fd, block, i * 4096)
            os.fdatasync(fd)
            h.record(time.perf_counter_ns() - t0)
        return h
    finally:
        os.close(fd)
        os.unlink(path)


def warm_up(directory: str, total: int) -> None:
    """Touch `total` bytes of page cache once, so later runs don't pay the VM's first-touch cost."""
    d = os.path.join(directory, "warm")
    b = _records([b"w" * 1024] * 256)
    with TopicLog.open(d, fsync="never") as log:
        done = 0
        while done < total:
            log.append_batch(b, 256)
            done += len(b)
        log.close(clean=False)
    shutil.rmtree(d)


def append_throughput(directory: str, size: int, batch: int, policy: str, seconds: float) -> dict[str, object]:
    d = os.path.join(directory, f"a-{size}-{batch}-{policy}")
    buf = _records([b"x" * size] * batch)
    log = TopicLog.open(d, fsync=policy)  # type: ignore[arg-type]
    n = 0
    durable = policy == "always"
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(16):
            log.append_batch(buf, batch, sync=durable)
        n += 16 * batch
        if time.perf_counter() >= deadline:
            break
    dt = time.perf_counter() - t0
    log.close(clean=False)
    shutil.rmtree(d)
    rate = n / dt
    return {"rec/s": rate, "MB/s": rate * len(buf) / batch / 1e6, "syncs/s": (n / batch / dt) if durable else 0.0}


def durable_latency(directory: str, n: int) -> Histogram:
    d = os.path.join(directory, "lat1")
    buf = _records([b"y" * 1024])
    h = Histogram()
    with TopicLog.open(d, fsync="always") as log:
        for _ in range(n):
            t0 = time.perf_counter_ns()
            log.append_batch(buf, 1, sync=False)
            log.sync()
            h.record(time.perf_counter_ns() - t0)
    shutil.rmtree(d)
    return h


def group_commit(directory: str, threads: int, seconds: float) -> tuple[Histogram, float, float]:
    """Several appenders, each appending one 1 KiB record then calling sync() (shared fdatasync).
    The appends are serialised by the log mutex, as the contract allows (one at a time)."""
    d = os.path.join(directory, f"gc{threads}")
    buf = _records([b"z" * 1024])
    log = TopicLog.open(d, fsync="always")
    hists = [Histogram() for _ in range(threads)]
    counts = [0] * threads
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def worker(i: int) -> None:
        h = hists[i]
        while time.perf_counter() < stop:
            t0 = time.perf_counter_ns()
            with lock:  # the contract: one appender at a time
                log.append_batch(buf, 1, sync=False)
            log.sync()
            h.record(time.perf_counter_ns() - t0)
            counts[i] += 1

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    syncs = log.stats().fdatasyncs
    log.close()
    shutil.rmtree(d)
    total = Histogram()
    for h in hists:
        total.merge(h)
    return total, sum(counts) / dt, float(syncs)


def asyncio_group_commit(directory: str, appenders: int, seconds: float) -> tuple[Histogram, float, float]:
    """The broker's pattern: coroutines append on the event-loop thread (sync=False) and await
    durability; one committer runs sync() in an executor thread (GIL released during fdatasync)
    and resolves every waiter whose id it covered, while appends for the next group go on."""
    import asyncio

    d = os.path.join(directory, f"agc{appenders}")
    buf = _records([b"q" * 1024])
    log = TopicLog.open(d, fsync="always")
    h = Histogram()
    done = 0

    async def run() -> None:
        nonlocal done
        loop = asyncio.get_running_loop()
        waiters: list[tuple[int, asyncio.Future[None]]] = []
        wake = asyncio.Event()
        stop = loop.time() + seconds

        async def committer() -> None:
            while loop.time() < stop or waiters:
                await wake.wait()
                wake.clear()
                durable = await loop.run_in_executor(None, log.sync)
                keep = []
                for rid, fut in waiters:
                    if rid <= durable:
                        fut.set_result(None)
                    else:
                        keep.append((rid, fut))
                waiters[:] = keep
                if waiters:
                    wake.set()

        async def appender() -> None:
            nonlocal done
            while loop.time() < stop:
                t0 = time.perf_counter_ns()
                _, last = log.append_batch(buf, 1, sync=False)
                fut = loop.create_future()
                waiters.append((last, fut))
                wake.set()
                await fut
                h.record(time.perf_counter_ns() - t0)
                done += 1

        c = asyncio.create_task(committer())
        await asyncio.gather(*(appender() for _ in range(appenders)))
        wake.set()
        await c

    t0 = time.perf_counter()
    asyncio.run(run())
    dt = time.perf_counter() - t0
    syncs = log.stats().fdatasyncs
    log.close()
    shutil.rmtree(d)
    return h, done / dt, float(syncs)


def build_log(d: str, total: int, size: int = 1024) -> tuple[int, int]:
    buf = _records([b"s" * size] * 256)
    with TopicLog.open(d, fsync="never") as log:
        done = 0
        while done < total:
            log.append_batch(buf, 256)
            done += len(buf)
        n = log.last_id
        log.close(clean=False)
    return n, done


def scan(d: str, verify: bool) -> tuple[float, int]:
    with TopicLog.open(d) as log:
        t0 = time.perf_counter()
        nxt, nbytes = 1, 0
        while True:
            r = log.read(nxt, 4096, 4 * MiB)
            if r.count == 0:
                break
            if verify:
                _verify(r.data, r.count)
            nbytes += len(r.data)
            nxt = r.first_id + r.count
        return time.perf_counter() - t0, nbytes


def drop_cache(d: str) -> None:
    """Evict this log's pages from the page cache (only these files: the machine is shared)."""
    for name in os.listdir(d):
        fd = os.open(os.path.join(d, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def recovery(d: str, **kw: object) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    log = TopicLog.open(d, **kw)  # type: ignore[arg-type]
    dt = time.perf_counter() - t0
    rep = log.report
    log.close(clean=bool(kw.pop("_clean_after", False)))
    return dt, rep.verified_bytes, rep.bytes


COLUMNS = ("case", "rec/s", "MB/s", "p50 us", "p99 us", "ratio", "ms", "note")


def one_round(root: str, quick: bool) -> tuple[list[dict[str, object]], float, float]:
    """Every case once; returns the rows and the raw fdatasync p50/p99 (ns) of this round."""
    secs = 0.25 if quick else 1.5
    rows: list[dict[str, object]] = []
    raw = raw_fdatasync(root, 200 if quick else 2000)
    raw_p50 = raw.percentile(50)
    rs = raw.summary()
    rows.append({"case": "raw pwrite 4KiB + fdatasync (baseline)", "rec/s": 1e9 / rs.mean, "MB/s": "",
                 "p50 us": rs.p50 / 1e3, "p99 us": rs.p99 / 1e3, "ratio": 1.0, "note": "per fdatasync"})
    for size in (64, 1024):
        for batch in (1, 256):
            for policy in ("never", "interval", "always"):
                r = append_throughput(root, size, batch, policy, secs)
                note = ""
                ratio: object = ""
                if policy == "always":
                    # durable batches per second relative to raw fdatasyncs per second
                    ratio = r["syncs/s"] / (1e9 / raw_p50)  # type: ignore[operator]
                    note = "1 fdatasync per batch; ratio = batches/s vs raw syncs/s"
                rows.append({"case": f"append {size}B x{batch} fsync={policy}", "rec/s": r["rec/s"],
                             "MB/s": r["MB/s"], "p50 us": "", "p99 us": "", "ratio": ratio, "note": note})
    lat = durable_latency(root, 300 if quick else 3000).summary()
    rows.append({"case": "durable 1 rec 1KiB append+sync (1 appender)", "rec/s": 1e9 / lat.mean, "MB/s": "",
                 "p50 us": lat.p50 / 1e3, "p99 us": lat.p99 / 1e3, "ratio": lat.p50 / raw_p50,
                 "note": "ratio = p50 / raw fdatasync p50"})
    for n_app in (4, 16, 64):
        h, rate, syncs = asyncio_group_commit(root, n_app, secs)
        s = h.summary()
        rows.append({"case": f"durable 1 rec 1KiB, {n_app} asyncio appenders + committer", "rec/s": rate,
                     "MB/s": "", "p50 us": s.p50 / 1e3, "p99 us": s.p99 / 1e3, "ratio": s.p50 / raw_p50,
                     "note": f"{h.count / max(syncs, 1):.1f} rec per fdatasync; ratio = p50 / raw p50"})
    h, rate, syncs = group_commit(root, 4, secs)
    s = h.summary()
    rows.append({"case": "durable 1 rec 1KiB, 4 threads each calling sync()", "rec/s": rate, "MB/s": "",
                 "p50 us": s.p50 / 1e3, "p99 us": s.p99 / 1e3, "ratio": s.p50 / raw_p50,
                 "note": f"{h.count / max(syncs, 1):.1f} rec per fdatasync (GIL hand-offs dominate)"})
    size = (128 if quick else 1024) * MiB
    d = os.path.join(root, "big")
    n, nbytes = build_log(d, size)
    dt, got = scan(d, verify=False)
    rows.append({"case": f"scan read() zero-copy {got / MiB:.0f} MiB", "rec/s": n / dt, "MB/s": got / dt / 1e6,
                 "p50 us": "", "p99 us": "", "ratio": "", "note": "views, bytes not touched"})
    dt, got = scan(d, verify=True)
    rows.append({"case": f"scan read() + CRC verify {got / MiB:.0f} MiB", "rec/s": n / dt,
                 "MB/s": got / dt / 1e6, "p50 us": "", "p99 us": "", "ratio": "", "note": "warm page cache"})
    # the scans above closed cleanly; make the stop unclean again for the recovery cases
    with TopicLog.open(d) as log:
        log.close(clean=False)
    dt, verified, total = recovery(d, verify_all=True)
    rows.append({"case": f"recover {total / MiB:.0f} MiB, verify all CRCs", "rec/s": n / dt,
                 "MB/s": verified / dt / 1e6, "p50 us": "", "p99 us": "", "ratio": "",
                 "ms": dt * 1e3, "note": "warm page cache"})
    drop_cache(d)
    dt, verified, total = recovery(d, verify_all=True)
    rows.append({"case": f"recover {total / MiB:.0f} MiB, verify all CRCs, cold cache", "rec/s": n / dt,
                 "MB/s": verified / dt / 1e6, "p50 us": "", "p99 us": "", "ratio": "",
                 "ms": dt * 1e3, "note": "pages evicted with fadvise(DONTNEED)"})
    # a crash after appending more: only what follows the checkpoint is verified
    buf = _records([b"t" * 1024] * 256)
    with TopicLog.open(d, fsync="never") as log:
        for _ in range((16 if quick else 64) * MiB // len(buf)):
            log.append_batch(buf, 256)
        log.close(clean=False)
    dt, verified, total = recovery(d)
    rows.append({"case": f"recover {total / MiB:.0f} MiB, unclean, checkpoint", "rec/s": "", "MB/s": "",
                 "p50 us": "", "p99 us": "", "ratio": "", "ms": dt * 1e3, "note": f"{verified / MiB:.0f} MiB verified"})
    with TopicLog.open(d) as log:
        pass  # clean close
    dt, verified, total = recovery(d)
    rows.append({"case": f"recover {total / MiB:.0f} MiB, after clean close", "rec/s": "", "MB/s": "",
                 "p50 us": "", "p99 us": "", "ratio": "", "ms": dt * 1e3, "note": "indexes loaded, no data read"})
    shutil.rmtree(d)
    return [{k: r.get(k, "") for k in COLUMNS} for r in rows], raw_p50, rs.p99


def aggregate(rounds: list[list[dict[str, object]]]) -> list[dict[str, object]]:
    """Median of every numeric cell over the rounds, plus the min-max range of the row's key metric."""
    out = []
    for i, first in enumerate(rounds[0]):
        row: dict[str, object] = {}
        for k in COLUMNS:
            vals = [r[i][k] for r in rounds]
            nums = sorted(float(v) for v in vals if isinstance(v, float | int))
            row[k] = nums[len(nums) // 2] if nums and len(nums) == len(vals) else first[k]
        key = "MB/s" if isinstance(first["MB/s"], float | int) else "ms" if isinstance(first["ms"], float | int) \
            else "p50 us" if isinstance(first["p50 us"], float | int) else "rec/s"
        nums = sorted(float(r[i][key]) for r in rounds if isinstance(r[i][key], float | int))
        row["range"] = f"{key} {nums[0]:,.4g}-{nums[-1]:,.4g}" if nums else ""
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (CI smoke test)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds; the table shows medians and the range")
    ap.add_argument("--dir", default=None, help="where to put the temporary data (default: system temp)")
    args = ap.parse_args(argv)
    root = tempfile.mkdtemp(prefix="nanomq-bench-log-", dir=args.dir)
    rounds: list[list[dict[str, object]]] = []
    raws: list[tuple[float, float]] = []
    try:
        warm_up(root, (128 if args.quick else 1024) * MiB)
        for _ in range(max(1, args.repeat)):
            rows, p50, p99 = one_round(root, args.quick)
            rounds.append(rows)
            raws.append((p50, p99))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(format_table(rounds[0] if len(rounds) == 1 else aggregate(rounds)))
    p50s = ", ".join(f"{a / 1e3:.0f}/{b / 1e3:.0f}" for a, b in raws)
    print(f"\nraw fdatasync p50/p99 us per round: {p50s}; {'quick' if args.quick else 'full'} run, "
          f"{len(rounds)} round(s){' (medians shown)' if len(rounds) > 1 else ''}; {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
