"""cffi builder for ``nanomq._c._log``: the mmap'ed write-ahead log (segments, indexes, recovery),
and the broker's data plane (plane.c), which appends to and delivers from those logs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _builder import make_builder  # noqa: E402

ffibuilder = make_builder("_log", ["crc32c.c", "record.c", "log.c", "plane.c"], ["log.h", "plane.h"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
