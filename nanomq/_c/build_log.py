"""cffi builder for ``nanomq._c._log``: the mmap'ed write-ahead log (segments, indexes, recovery),
the broker's data plane (plane.c), which appends to and delivers from those logs, and the C group
commit threads that sync them (syncer.c)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _builder import make_builder  # noqa: E402

ffibuilder = make_builder("_log", ["crc32c.c", "record.c", "log.c", "plane.c", "syncer.c"],
                          ["log.h", "plane.h", "syncer.h"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
