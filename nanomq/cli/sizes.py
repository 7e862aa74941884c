"""Parsing of human sizes on the command line (``100MB``, ``1GiB``, ``65536``)."""

from __future__ import annotations

import argparse
import re

__all__ = ["parse_size"]

# Binary multiples throughout: the seed's "--log-segment-size 100MB" means 100 MiB (storage.md).
_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgt", start=1):
    for _suffix in (_p, _p + "b", _p + "ib"):
        _UNITS[_suffix] = 1024**_i


def parse_size(text: str) -> int:
    """``"100MB"`` -> 104857600. K/KB/KiB, M/MB/MiB, G…, T… are all powers of 1024."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 100MB, 1GiB, 65536")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
