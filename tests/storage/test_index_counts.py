"""An index file's entry count is never trusted beyond its size (issue 10 item 13).

The count `n` of a sealed segment's `.idx` was checked as ``size == 64 + n * 24``, a product that
wraps: an index of 88 bytes claiming ``1 + k * 2**61`` entries, with a valid CRC, passed, and the
reserve for them wrapped too (to a zero-byte buffer for k = 1, an endless doubling loop for
k = 7). Opening such a log overflowed the heap (a crash) or hung. Each open runs in a child
process, so the failure before the fix is a failed test and not a dead test run. The C driver
``tests/c/test_log_open.c`` (make sanitize) checks the same under ASan.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from nanomq._c.crc import crc32c
from nanomq.storage import TopicLog
from tests.storage.helpers import batch, payload

SEG = 8192

_CHILD = """
import sys
from nanomq.storage import TopicLog
with TopicLog.open(sys.argv[1], segment_bytes=8192, on_corrupt="raise") as log:
    r = log.report
    n, nxt = 0, 1
    while True:
        got = log.read(nxt, 1000, 1 << 22)
        if got.count == 0:
            break
        n += got.count
        nxt = got.first_id + got.count
    print(r.corruption, r.indexes_rebuilt, n)
"""


@pytest.mark.parametrize("k", [1, 3, 7])
def test_an_index_count_that_wraps_is_rejected(tmp_path: Path, k: int) -> None:
    d = tmp_path / "t"
    with TopicLog.open(d, segment_bytes=SEG, fsync="never") as log:
        for i in range(30):
            log.append_batch(batch([payload(i, 900)]), 1)
    idx = sorted(p for p in d.iterdir() if p.suffix == ".idx")[0]
    data = bytearray(idx.read_bytes()[: 64 + 24])  # the header and the first entry
    struct.pack_into("<Q", data, 48, 1 + (k << 61))  # 64 + n * 24 == 88 (mod 2**64)
    struct.pack_into("<I", data, 56, 0)
    struct.pack_into("<I", data, 56, crc32c(bytes(data)))
    idx.write_bytes(bytes(data))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(d)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    corruption, rebuilt, n = out.stdout.split()
    assert corruption == "none" and int(rebuilt) >= 1 and int(n) == 30
