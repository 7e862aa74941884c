"""pytest-benchmark micro benchmarks of the ring through its Python wrappers (one process)."""

from __future__ import annotations

import os
from typing import Any

from nanomq import ipc
from nanomq._c import ring as R

MSG = b"x" * 64
BATCH = [MSG] * 256


def test_ring_push_pop_64b(benchmark: Any) -> None:
    r = R.Ring.heap(1 << 16)

    def op() -> None:
        r.push(MSG)
        r.pop()

    benchmark(op)


def test_ring_batch256_64b(benchmark: Any) -> None:
    r = R.Ring.heap(1 << 16)

    def op() -> None:
        r.push_batch(BATCH)
        r.pop_batch_raw(256)

    benchmark(op)


def test_channel_send_recv_64b(benchmark: Any) -> None:
    with ipc.Channel.create(f"micro-{os.getpid()}", 1 << 16, replace=True) as ch:

        def op() -> None:
            ch.send(MSG)
            ch.recv(0)

        benchmark(op)


def test_channel_batch256_64b(benchmark: Any) -> None:
    with ipc.Channel.create(f"micro-b-{os.getpid()}", 1 << 16, replace=True) as ch:

        def op() -> None:
            ch.send_batch(BATCH)
            ch.recv_batch(256, 0)

        benchmark(op)
