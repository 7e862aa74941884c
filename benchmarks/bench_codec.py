"""Codec throughput through the public API: encode and decode of 1 KiB records, batch 1 and 256.

"encode" = RecordBatch.from_payloads + encode(Publish); "decode" = Decoder.feed + next_frame
(framing, every CRC checked) + materialising every Record. Figures are the best of several
rounds (the machine is shared; the best round is the least disturbed), in records/s and MB/s of
payload, and compared with spec/budgets.toml [codec].
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable

from benchmarks.budgets import load
from nanomq.bench.results import format_table
from nanomq.protocol import Ack, Decoder, Publish, RecordBatch, encode


def _best_rate(fn: Callable[[], object], records_per_call: int, seconds: float, rounds: int = 5) -> float:
    """Best records/s over ``rounds`` rounds of about ``seconds``/``rounds`` each."""
    calls = 1
    while True:  # calibrate so a round lasts long enough to time
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - t > 0.02:
            break
        calls *= 2
    per_round = max(1, int(calls * (seconds / rounds) / max(time.perf_counter() - t, 1e-9)))
    best = 0.0
    gc.disable()
    try:
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(per_round):
                fn()
            best = max(best, per_round * records_per_call / (time.perf_counter() - t))
    finally:
        gc.enable()
    return best


def measure(seconds: float = 2.0) -> list[dict[str, object]]:
    """One row per (operation, batch size)."""
    rows: list[dict[str, object]] = []
    for batch in (1, 256):
        payloads = [os.urandom(1024) for _ in range(batch)]

        def enc(payloads: list[bytes] = payloads) -> bytes:
            return encode(Publish(1, "bench", Ack.WRITTEN, RecordBatch.from_payloads(payloads)))

        raw = enc()

        def dec(raw: bytes = raw) -> object:
            d = Decoder("server")
            d.feed(raw)
            frame = d.next_frame()
            return list(frame.records)  # type: ignore[union-attr]

        for op, fn in (("encode", enc), ("decode", dec)):
            rate = _best_rate(fn, batch, seconds)
            rows.append({"op": op, "batch": batch, "records/s": rate, "MB/s": rate * 1024 / 1e6})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short rounds")
    args = ap.parse_args(argv)
    rows = measure(0.5 if args.quick else 2.0)
    budgets = load("codec")
    for r in rows:
        key = f"{r['op']}_batch256_1k_records_per_s"
        if r["batch"] == 256 and key in budgets:
            r["budget"] = float(budgets[key])
            r["vs budget"] = f"{float(r['records/s']) / budgets[key]:.2f}x"
        else:
            r["budget"], r["vs budget"] = "", ""
    print("codec, 1 KiB records, public Python API (best of 5 rounds)")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
