"""Shared helper for the cffi builders: each C component is one out-of-line API-mode module.

A builder names its module, its C sources (in ``src/``) and its cdef file (in ``cdef/``); this
helper reads them relative to this file so builds work from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"]


def make_builder(module: str, sources: list[str], cdef: str, includes: list[str]) -> FFI:
    """Return an FFI builder for ``nanomq._c.<module>`` compiled from ``src/<sources>``."""
    ffi = FFI()
    ffi.cdef((HERE / "cdef" / cdef).read_text())
    header = "\n".join(f'#include "{h}"' for h in includes)
    extra = os.environ.get("NANOMQ_CFLAGS", "").split()
    ffi.set_source(
        f"nanomq._c.{module}",
        header,
        # Paths relative to the project root: setuptools rejects absolute source paths in sdists.
        sources=[os.path.relpath(SRC / s) for s in sources],
        include_dirs=[os.path.relpath(SRC)],
        extra_compile_args=CFLAGS + extra,
        libraries=["pthread"],
    )
    return ffi
