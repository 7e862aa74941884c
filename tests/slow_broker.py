"""A deliberately slowed reference broker, to measure what the CI latency gate detects.

Two kinds of slowdown, both busy work (a wall-clock spin) before a request frame is handled
(PUBLISH, PING, SUBSCRIBE, CREDIT, ...):

``python -m tests.slow_broker --delay-us D <nanomq-broker flags>``
    D µs before every request: a fixed cost per request. What share of a round trip that is
    depends on how long the round trip takes, i.e. on the machine's load at that minute.
    ``--delay-us 0`` is the broker without any delay, the baseline a slowed run is compared with.

``python -m tests.slow_broker --slowdown F <nanomq-broker flags>``
    a self-calibrating delay before every PUBLISH that makes a back-to-back publisher's request
    cycle (1 + F) times as long at every load (F = 0.25: the known 25 % slowdown the gate's
    detection is measured with; the gated figure is a publish round trip). Per connection, the
    broker keeps the **own cycle** of each of its last ``WINDOW`` PUBLISH requests: the time from
    the previous one's arrival at the dispatcher to this one's, less every delay this broker added
    in between (on any connection, so the delay never feeds on itself or on another connection's).
    Cycles longer than ``IDLE_NS`` are a client that was not waiting for the broker (open loop,
    idle) and are not kept. Each PUBLISH is delayed by F × the p10 of the kept cycles (p10: the
    gated figure is the p10 of the round trips, see docs/gate.md); no delay before
    ``MIN_SAMPLES`` are kept. Other requests (CREDIT, COMMIT, PING, ...) are not delayed. The
    delay's deadline is fixed on the request's arrival, before the bookkeeping, so the bookkeeping
    is inside the delay, not added to it. The own cycle is the client's round trip plus the
    client's µs between two calls (about 1 µs on mean in the bench's acked workload: its
    records/s against its calls' mean round trip), so the round trip's p10 grows by F × p10(cycle),
    a share of it a little over F.

The delay is patched into the Python request dispatcher (``Connection._dispatch``), so this broker
always runs ``--data-plane python``: the C data plane would serve PUBLISH and PING around the
patch. Baseline and slowed target therefore run the same data plane, and differ only by the delay.
"""

from __future__ import annotations

import sys
import time
import weakref
from collections import deque
from collections.abc import Callable

WINDOW = 128
"""own cycles kept per connection"""
MIN_SAMPLES = 16
"""kept cycles before the first delay"""
IDLE_NS = 2_000_000
"""a longer cycle is not a client waiting for the broker, and is not kept"""
QUANTILE = 0.10
EVERY = 8
"""the delay is recomputed from the window every EVERY requests"""


class Slowdown:
    """The self-calibrating delay of one connection (``--slowdown F``). ``added`` is the broker's
    running total of the delay it has added, on every connection, ns (shared by all)."""

    __slots__ = ("fraction", "added", "cycles", "last_arrival", "last_added", "delay_ns", "count")

    def __init__(self, fraction: float, added: list[int]) -> None:
        self.fraction = fraction
        self.added = added
        self.cycles: deque[int] = deque(maxlen=WINDOW)
        self.last_arrival = -1
        self.last_added = 0
        self.delay_ns = 0
        self.count = 0

    def arrive(self, now: int) -> int:
        """A request arrived at ``now`` (ns): the deadline its handling waits for. The caller
        then spins until the deadline and reports :meth:`done`."""
        deadline = now + self.delay_ns
        total = self.added[0]
        if self.last_arrival >= 0:
            own = now - self.last_arrival - (total - self.last_added)
            if 0 <= own <= IDLE_NS:
                self.cycles.append(own)
        self.last_arrival, self.last_added = now, total
        self.count += 1
        if self.count % EVERY == 0 and len(self.cycles) >= MIN_SAMPLES:
            s = sorted(self.cycles)
            self.delay_ns = int(self.fraction * s[int(QUANTILE * (len(s) - 1))])
        return deadline

    def done(self, end: int) -> None:
        """The delay of the request that arrived last ended at ``end`` (ns)."""
        self.added[0] += max(0, end - self.last_arrival)


def _spin(end: int, clock: Callable[[], int]) -> int:
    t = clock()
    while t < end:
        t = clock()
    return t


def _patch(delay_us: float, slowdown: float = 0.0) -> None:
    from nanomq.broker import connection

    if delay_us <= 0 and slowdown <= 0:
        return
    dispatch = connection.Connection._dispatch
    clock = time.perf_counter_ns
    if delay_us > 0:
        delay_ns = int(delay_us * 1000)

        def slowed(self, frame):  # type: ignore[no-untyped-def]
            _spin(clock() + delay_ns, clock)
            return dispatch(self, frame)
    else:
        from nanomq.protocol.frames import Publish

        state: weakref.WeakKeyDictionary[object, Slowdown] = weakref.WeakKeyDictionary()
        added = [0]

        def slowed(self, frame):  # type: ignore[no-untyped-def]
            if type(frame) is not Publish:
                return dispatch(self, frame)
            now = clock()
            s = state.get(self)
            if s is None:
                s = state[self] = Slowdown(slowdown, added)
            s.done(_spin(s.arrive(now), clock))
            return dispatch(self, frame)

    connection.Connection._dispatch = slowed  # type: ignore[method-assign]


USAGE = "usage: python -m tests.slow_broker (--delay-us D | --slowdown F) [broker flags]"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("--delay-us", "--slowdown"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        value = float(argv[1])
    except ValueError:
        print(f"{argv[0]}: not a number: {argv[1]!r}", file=sys.stderr)
        return 2
    if not value >= 0 or (argv[0] == "--slowdown" and value > 10):
        print(f"{argv[0]} must be >= 0" + (" and <= 10" if argv[0] == "--slowdown" else ""), file=sys.stderr)
        return 2
    if argv[0] == "--delay-us":
        _patch(value)
    else:
        _patch(0, value)
    from nanomq.cli.broker import main as broker_main

    return broker_main([*argv[2:], "--data-plane", "python"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
