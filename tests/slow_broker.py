"""A deliberately slowed reference broker, to measure what the CI latency gate detects.

``python -m tests.slow_broker --delay-us D <nanomq-broker flags>`` runs the reference broker with
every request frame it handles (PUBLISH, PING, SUBSCRIBE, CREDIT, ...) preceded by D µs of busy
work: a fixed cost per request, as a slower code path would add. ``--delay-us 0`` is the same
broker without the delay, the baseline that a slowed run is compared with.

The delay is patched into the Python request dispatcher (``Connection._dispatch``), so this broker
always runs ``--data-plane python``: the C data plane would serve PUBLISH and PING around the
patch. Baseline and slowed target therefore run the same data plane, and differ only by D.
"""

from __future__ import annotations

import sys
import time


def _patch(delay_us: float) -> None:
    from nanomq.broker import connection

    if delay_us <= 0:
        return
    delay_ns = int(delay_us * 1000)
    dispatch = connection.Connection._dispatch
    clock = time.perf_counter_ns

    def slowed(self, frame):  # type: ignore[no-untyped-def]
        end = clock() + delay_ns
        while clock() < end:
            pass
        return dispatch(self, frame)

    connection.Connection._dispatch = slowed  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--delay-us":
        print("usage: python -m tests.slow_broker --delay-us D [broker flags]", file=sys.stderr)
        return 2
    try:
        delay = float(argv[1])
    except ValueError:
        print(f"--delay-us: not a number: {argv[1]!r}", file=sys.stderr)
        return 2
    if delay < 0:
        print("--delay-us must be >= 0", file=sys.stderr)
        return 2
    _patch(delay)
    from nanomq.cli.broker import main as broker_main

    return broker_main([*argv[2:], "--data-plane", "python"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
