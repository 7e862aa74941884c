"""The broker's event loop: uvloop when it is installed, asyncio's own otherwise, and an opt-in
busy-polling loop for the lowest latency.

Why a choice: on this kind of machine a blocked process woken from another CPU pays ~50 µs
(design.md §5), and every hop of a message pays it once. A loop that spins on ``epoll_wait(0)``
for a while before blocking sees the next request within a few µs instead, at the price of a core
kept busy while it spins. That is what ``--busy-poll US`` buys: the asyncio loop with a selector
that spins up to ``US`` microseconds before each blocking wait. uvloop (libuv, C) handles each
event with less Python than asyncio's own loop, but cannot spin, so ``--busy-poll`` uses asyncio's.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["LoopKind", "SpinningSelector", "run_loop", "uvloop_available"]

LoopKind = Literal["auto", "asyncio", "uvloop"]
T = TypeVar("T")


def uvloop_available() -> bool:
    """Whether the uvloop package can be imported."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


class SpinningSelector(selectors.EpollSelector):
    """An epoll selector that polls without blocking for up to ``spin_us`` before it blocks.

    The event loop calls ``select(timeout)`` once per iteration; when nothing is ready at once, this
    one keeps asking the kernel (``epoll_wait`` with timeout 0, about a microsecond each) until an
    event arrives or the spin time is used up, then blocks for what is left of ``timeout``. A loop
    with timers due (``timeout == 0``) never spins.
    """

    def __init__(self, spin_us: int) -> None:
        super().__init__()
        if spin_us <= 0:
            raise ValueError("spin_us must be > 0")
        self._spin_ns = spin_us * 1000

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return super().select(0)
        poll = super().select
        now = time.monotonic_ns
        start = now()
        deadline = start + self._spin_ns
        while True:
            ready = poll(0)
            if ready:
                return ready
            t = now()
            if t >= deadline:
                break
        if timeout is None:
            return poll(None)
        left = timeout - (t - start) / 1e9
        return poll(left) if left > 0 else []


def run_loop(main: Callable[[], Coroutine[Any, Any, T]], kind: LoopKind = "auto", busy_poll_us: int = 0) -> T:
    """Run ``main()`` to completion on the loop asked for: ``busy_poll_us`` > 0 gives asyncio's
    loop with a :class:`SpinningSelector`; else ``uvloop`` (an error if it is not installed),
    ``asyncio``, or ``auto`` (uvloop when installed)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if busy_poll_us > 0:
        if kind == "uvloop":
            raise ValueError("--busy-poll needs the asyncio loop: uvloop cannot spin")
        spin = busy_poll_us

        def factory() -> asyncio.AbstractEventLoop:
            return asyncio.SelectorEventLoop(SpinningSelector(spin))
    elif kind == "uvloop" or (kind == "auto" and uvloop_available()):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())
