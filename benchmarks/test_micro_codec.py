"""pytest-benchmark micro benchmarks of the codec (ops = batches/s; extra_info has records/s)."""

from __future__ import annotations

import os

import pytest

from nanomq.protocol import Ack, Decoder, Publish, RecordBatch, encode


@pytest.mark.parametrize("batch", [1, 256])
def test_encode_publish_1k(benchmark, batch: int) -> None:
    payloads = [os.urandom(1024) for _ in range(batch)]
    benchmark(lambda: encode(Publish(1, "bench", Ack.WRITTEN, RecordBatch.from_payloads(payloads))))
    benchmark.extra_info["records_per_s"] = batch / benchmark.stats.stats.median


@pytest.mark.parametrize("batch", [1, 256])
def test_decode_publish_1k(benchmark, batch: int) -> None:
    raw = encode(Publish(1, "bench", Ack.WRITTEN, RecordBatch.from_payloads([os.urandom(1024)] * batch)))

    def run() -> int:
        d = Decoder("server")
        d.feed(raw)
        return len(list(d.next_frame().records))  # type: ignore[union-attr]

    assert benchmark(run) == batch
    benchmark.extra_info["records_per_s"] = batch / benchmark.stats.stats.median
