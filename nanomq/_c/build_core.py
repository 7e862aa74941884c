"""cffi builder for ``nanomq._c._core``: CRC-32C and batch record encode/scan/summary."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _builder import make_builder  # noqa: E402

ffibuilder = make_builder("_core", ["crc32c.c", "record.c"], ["crc32c.h", "record.h"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
