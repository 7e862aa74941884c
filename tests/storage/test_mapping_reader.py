"""NMQ-S6-3: another process reading the segment mapping while the log appends sees whole,
CRC-valid runs only: a non-zero id word means the run it starts is complete."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from nanomq.storage import TopicLog
from tests.storage.helpers import batch, payload

ROOT = Path(__file__).resolve().parents[2]
SEG = 8 * 1024 * 1024

READER = textwrap.dedent(
    """
    import mmap, struct, sys, time
    from nanomq.protocol import RecordBatch
    path, n = sys.argv[1], int(sys.argv[2])
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    off, expect, deadline = 0, 1, time.monotonic() + 60
    print("ready", flush=True)
    while expect <= n and time.monotonic() < deadline:
        rid = struct.unpack_from("<Q", m, off)[0]   # the publish word
        if rid == 0:
            continue                                # not published yet: poll
        assert rid == expect, (rid, expect)
        size = struct.unpack_from("<I", m, off + 20)[0]
        span = (64 + size + 7) & ~7
        RecordBatch.parse(m[off:off + span], 1, max_payload=1 << 30)  # framing and CRC, or ProtocolError
        off += span
        expect += 1
    print(expect - 1, flush=True)
    """
)


def test_other_process_sees_only_whole_records(tmp_path):
    n = 3000
    with TopicLog.open(tmp_path / "t", segment_bytes=SEG, fsync="never") as log:
        seg = tmp_path / "t" / "00000000000000000001.log"
        p = subprocess.Popen([sys.executable, "-c", READER, str(seg), str(n)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
            i = 0
            while i < n:
                k = min(1 + i % 37, n - i)
                log.append_batch(batch([payload(i + j, (i + j) % 300) for j in range(k)]), k)
                i += k
                if i % 500 < 37:
                    time.sleep(0.001)
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        assert p.returncode == 0, err
        assert out.strip().splitlines()[-1] == str(n)
