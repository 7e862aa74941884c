"""cffi builder for ``nanomq._c._ring``: the SPSC/MPSC ring of variable-length records."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _builder import make_builder  # noqa: E402

ffibuilder = make_builder("_ring", ["ring.c"], ["ring.h"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
