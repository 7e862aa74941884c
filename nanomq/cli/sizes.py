"""Parsing of human sizes on the command line (``100MB``, ``1GiB``, ``65536``), and printing them."""

from __future__ import annotations

import argparse
import re

__all__ = ["parse_size", "format_size"]

# Binary multiples throughout: the seed's "--log-segment-size 100MB" means 100 MiB (storage.md).
_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgtpe", start=1):
    for _suffix in (_p, _p + "b", _p + "ib"):
        _UNITS[_suffix] = 1024**_i


def parse_size(text: str) -> int:
    """``"100MB"`` -> 104857600. K/KB/KiB, M/MB/MiB, G…, T…, P…, E… are all powers of 1024.

    Only the syntax is checked here; whether the size suits the flag is the caller's check."""
    m = re.fullmatch(r"\s*(\d+)(?:\.(\d+))?\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(3).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 100MB, 1GiB, 65536")
    unit = _UNITS[m.group(3).lower()]
    whole, frac = int(m.group(1)), m.group(2) or ""
    # exact arithmetic (no float rounding): 1.5MB is 1572864 bytes, fractions of a byte are dropped
    scale = int(10 ** len(frac))
    return whole * unit + int(frac or "0") * unit // scale


def format_size(n: int) -> str:
    """``104857600`` -> ``"100MiB"``; exact multiples get the largest unit, others ``"1.5MiB"``."""
    for name, unit in (("EiB", 1024**6), ("PiB", 1024**5), ("TiB", 1024**4), ("GiB", 1024**3),
                       ("MiB", 1024**2), ("KiB", 1024)):
        if n >= unit:
            return f"{n // unit}{name}" if n % unit == 0 else f"{n / unit:.4g}{name}"
    return f"{n}B"
