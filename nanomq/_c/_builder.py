"""Shared helper for the cffi builders: each C component is one out-of-line API-mode module.

A builder names its module, its C sources and its public headers (all in ``src/``). The cffi
declarations are generated from those headers at build time, never copied by hand: each header
marks its public API between the comments ``/* cffi-begin ... */`` and ``/* cffi-end */`` (a
header may have several such blocks), and :func:`cdef_of` turns a block into cdef text: comments
go, ``#define NAME value`` becomes ``#define NAME ...`` (cffi takes the value from the compiled C),
and any other preprocessor line or a ``static`` definition inside a block is an error. Paths are
relative to this file, so builds work from any working directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"]

_BLOCK = re.compile(r"/\*\s*cffi-begin\b.*?\*/(.*?)/\*\s*cffi-end\s*\*/", re.S)
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"#\s*define\s+([A-Za-z_]\w*)\s+\S")


def cdef_of(header: str, name: str = "header") -> str:
    """The cffi declarations of the ``cffi-begin`` / ``cffi-end`` blocks of a header's text."""
    blocks = _BLOCK.findall(header)
    if not blocks:
        raise ValueError(f"{name}: no /* cffi-begin */ ... /* cffi-end */ block")
    out: list[str] = []
    for line in _COMMENT.sub(" ", "\n".join(blocks)).splitlines():
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            m = _DEFINE.match(text)
            if m is None:  # a function-like macro, an #if, an #include: not a declaration
                raise ValueError(f"{name}: {text!r} in a cffi block (only '#define NAME value' is)")
            out.append(f"#define {m.group(1)} ...")
        elif re.match(r"static\b", text):
            raise ValueError(f"{name}: {text!r} in a cffi block (a static definition is not an API)")
        else:
            out.append(line.rstrip())
    return "\n".join(out) + "\n"


def make_builder(module: str, sources: list[str], headers: list[str]) -> FFI:
    """Return an FFI builder for ``nanomq._c.<module>`` compiled from ``src/<sources>``, declaring
    (and including) the public API of ``src/<headers>``."""
    ffi = FFI()
    ffi.cdef("".join(cdef_of((SRC / h).read_text(), h) for h in headers))
    extra = os.environ.get("NANOMQ_CFLAGS", "").split()
    ffi.set_source(
        f"nanomq._c.{module}",
        "\n".join(f'#include "{h}"' for h in headers),
        # Paths relative to the project root: setuptools rejects absolute source paths in sdists.
        sources=[os.path.relpath(SRC / s) for s in sources],
        include_dirs=[os.path.relpath(SRC)],
        extra_compile_args=CFLAGS + extra,
        libraries=["pthread"],
    )
    return ffi
