"""CRC-32C (Castagnoli) over the C core, with the hardware/software path selectable.

The path is chosen once at import: SSE4.2 when the CPU has it, else a slicing-by-8 table. The
environment variable ``NANOMQ_CRC32C`` set to ``sw`` or ``hw`` forces one (``hw`` silently falls
back to ``sw`` on a CPU without SSE4.2, since both give identical results).
"""

from __future__ import annotations

import os
from typing import Literal

from nanomq._c import realize_all
from nanomq._c._core import ffi, lib

__all__ = ["crc32c", "crc32c_sw", "crc32c_hw", "HAVE_HW", "select", "active_path"]

Buffer = bytes | bytearray | memoryview

realize_all(ffi, lib)

HAVE_HW: bool = bool(lib.nmq_crc32c_hw_available())
"""True when the CPU has the SSE4.2 crc32 instruction."""

_PATHS = {"auto": 0, "sw": 1, "hw": 2}
_active = lib.nmq_crc32c_select(_PATHS.get(os.environ.get("NANOMQ_CRC32C", "auto"), 0))


def select(path: Literal["auto", "sw", "hw"]) -> Literal["sw", "hw"]:
    """Force the implementation used by :func:`crc32c`; returns the path now active."""
    global _active
    if path not in _PATHS:
        raise ValueError(f"path must be one of {sorted(_PATHS)}, not {path!r}")
    _active = lib.nmq_crc32c_select(_PATHS[path])
    return active_path()


def active_path() -> Literal["sw", "hw"]:
    """Which implementation :func:`crc32c` currently uses."""
    return "hw" if _active == 2 else "sw"


def crc32c(data: Buffer, value: int = 0) -> int:
    """CRC-32C of ``data``, continuing from ``value`` (the result of a previous call, or 0)."""
    buf = ffi.from_buffer(data)
    return int(lib.nmq_crc32c(value & 0xFFFFFFFF, buf, len(buf)))


def crc32c_sw(data: Buffer, value: int = 0) -> int:
    """CRC-32C through the portable table implementation, whatever the CPU."""
    buf = ffi.from_buffer(data)
    return int(lib.nmq_crc32c_sw(value & 0xFFFFFFFF, buf, len(buf)))


def crc32c_hw(data: Buffer, value: int = 0) -> int:
    """CRC-32C through the SSE4.2 instruction; raises RuntimeError on a CPU without it."""
    if not HAVE_HW:
        raise RuntimeError("this CPU has no SSE4.2 crc32 instruction")
    buf = ffi.from_buffer(data)
    return int(lib.nmq_crc32c_hw(value & 0xFFFFFFFF, buf, len(buf)))
