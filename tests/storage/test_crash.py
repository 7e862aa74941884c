"""Fault injection (a): SIGKILL a writer at random moments; every acked record must survive.

Each iteration starts a writer on the same directory (so it also recovers from the previous
kill), lets it append for a random time, kills it with SIGKILL, then reopens the log here and
checks that every acknowledged record is present exactly once, in order, byte for byte, and that
nothing failing its CRC is returned. CI runs a few dozen iterations; NANOMQ_LONG=1 runs hundreds.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanomq.storage import TopicLog
from tests.storage._kill_writer import expected_payload
from tests.storage.helpers import read_all

LONG = os.environ.get("NANOMQ_LONG") == "1"
ROOT = Path(__file__).resolve().parents[2]


def _run_and_kill(directory: Path, policy: str, seed: int, rnd: random.Random) -> int:
    """Start a writer, kill it at a random moment; return the highest acked id (0 if none)."""
    p = subprocess.Popen(
        [sys.executable, "-m", "tests.storage._kill_writer", str(directory), policy, str(96 * 1024), str(seed)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    acked = 0
    buf = b""
    try:
        assert p.stdout is not None
        early = rnd.random() < 0.15  # sometimes kill during start-up / recovery
        if not early:
            deadline = time.monotonic() + 20
            while b"ready" not in buf and time.monotonic() < deadline:
                r, _, _ = select.select([p.stdout], [], [], 0.1)
                if r:
                    chunk = os.read(p.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    buf += chunk
            assert b"ready" in buf, p.stderr.read().decode() if p.poll() is not None and p.stderr else "no ready"
        time.sleep(rnd.random() * (0.003 if early else 0.08))
    finally:
        p.send_signal(signal.SIGKILL)
        rest, err = p.communicate(timeout=30)
    buf += rest
    assert p.returncode == -signal.SIGKILL, err.decode()
    for line in buf.decode().splitlines():
        if line.isdigit():
            acked = max(acked, int(line))
    return acked


@pytest.mark.parametrize("policy", ["always", "never", "interval"])
def test_sigkill_during_append_storm(tmp_path, policy):
    iterations = 120 if LONG else 10
    rnd = random.Random(f"{policy}-{os.getpid()}")
    d = tmp_path / "log"
    acked_total = 0
    for it in range(iterations):
        acked = _run_and_kill(d, policy, rnd.randrange(1 << 30), rnd)
        acked_total = max(acked_total, acked)
        log = TopicLog.open(d, segment_bytes=96 * 1024, on_corrupt="raise")
        try:
            rep = log.report
            assert rep.corruption == "none", rep
            got = read_all(log)  # CRC-checks every record it returns
            ids = [g[0] for g in got]
            assert ids == list(range(1, len(ids) + 1)), f"iteration {it}: ids not contiguous"
            assert len(ids) >= acked_total, f"iteration {it}: acked {acked_total} but only {len(ids)} present ({rep})"
            for rid, _ts, _topic, data in got:
                assert data == expected_payload(rid), f"iteration {it}: record {rid} has wrong bytes"
            ts = [g[1] for g in got]
            assert ts == sorted(ts)
        finally:
            log.close(clean=rnd.random() < 0.5)  # the writer then starts after a clean or unclean stop
    assert acked_total > 0
