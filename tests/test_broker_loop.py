"""The broker's event loops: uvloop, asyncio's, and the busy-polling selector."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import pytest

from nanomq.broker import BrokerConfig
from nanomq.broker.loop import SpinningSelector, run_loop, uvloop_available


def test_spinning_selector_spins_then_blocks_for_what_is_left() -> None:
    sel = SpinningSelector(spin_us=20_000)
    a, b = socket.socketpair()
    try:
        sel.register(a, 1)
        t0 = time.monotonic()
        assert sel.select(0.1) == []  # nothing: 20 ms spinning, then blocked for the rest
        assert 0.09 <= time.monotonic() - t0 < 0.5
        b.send(b"x")
        t0 = time.monotonic()
        assert [k.fileobj for k, _ in sel.select(1.0)] == [a]  # ready at once
        assert time.monotonic() - t0 < 0.05
        assert sel.select(0) != []  # a zero timeout never spins
    finally:
        sel.close()
        a.close()
        b.close()
    with pytest.raises(ValueError):
        SpinningSelector(0)


@pytest.mark.parametrize(("kind", "busy"), [("asyncio", 0), ("auto", 0), ("auto", 500)])
def test_run_loop_runs_a_coroutine_on_the_loop_asked_for(kind: str, busy: int) -> None:
    async def which() -> str:
        loop = asyncio.get_running_loop()
        sel = getattr(loop, "_selector", None)
        return f"{type(loop).__module__}:{type(sel).__name__}"

    got = run_loop(which, kind, busy)  # type: ignore[arg-type]
    if busy:
        assert got.endswith("SpinningSelector")
    elif kind == "auto" and uvloop_available():
        assert got.startswith("uvloop")
    else:
        assert got.startswith("asyncio")


def test_loop_settings_are_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for bad, msg in ((dict(busy_poll_us=-1), "--busy-poll"), (dict(busy_poll_us=10, loop="uvloop"), "uvloop cannot"),
                     (dict(loop="qt"), "--loop")):
        with pytest.raises(ValueError, match=msg):
            BrokerConfig(data_dir=tmp_path, **bad).validate()  # type: ignore[arg-type]


def test_a_busy_polling_broker_serves() -> None:
    import tempfile

    import nanomq
    from nanomq.testing import BrokerProcess

    with tempfile.TemporaryDirectory() as d:
        b = BrokerProcess(f"{d}/data", ["--busy-poll", "300", "--log-segment-size", "1MB"])
        b.start()
        try:
            with nanomq.Publisher(b.address) as pub, nanomq.Subscriber(b.address) as sub:
                pub.publish("spin", b"x")
                sub.subscribe("spin")
                assert sub.poll(timeout=5).data == b"x"
        finally:
            b.stop()
    r = subprocess.run([sys.executable, "-m", "nanomq.cli.broker", "--busy-poll", "10", "--loop", "uvloop",
                        "--data-dir", "/tmp/never-made"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "uvloop cannot spin" in r.stderr
