"""The spec's rules, read from the normative text: ID, level and sentence.

A rule is a line of spec/*.md that carries ``[NMQ-…]`` followed by MUST, SHOULD or MAY. The kit's
coverage report is over all three specs: protocol.md and semantics.md are checked over the wire;
storage.md rules are checked over the wire plus, for targets that declare the reference on-disk
format (``storage_format = "nanomq-v1"``), by inspecting and damaging their files between a stop
and a start. Rules no case can check are listed, with the reason, in :mod:`conformance.untestable`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Rule", "load_rules", "SPEC_DIR", "WIRE_SPECS"]

SPEC_DIR = Path(__file__).resolve().parents[1] / "spec"
WIRE_SPECS = ("protocol.md", "semantics.md", "storage.md")
_RULE = re.compile(r"\[(NMQ-(?:SEM-|S)?\d[\d.]*-\d+)\]\**\s*(MUST|SHOULD|MAY)\b\**:?\s*(.*)")


@dataclass(frozen=True, slots=True)
class Rule:
    """One normative sentence."""

    id: str
    level: str
    """MUST, SHOULD or MAY."""
    text: str
    source: str
    """The spec file it is in."""


def load_rules(spec_dir: Path = SPEC_DIR, files: tuple[str, ...] = WIRE_SPECS) -> dict[str, Rule]:
    """Every rule defined in ``files`` (first definition wins; later mentions are references)."""
    rules: dict[str, Rule] = {}
    for name in files:
        path = spec_dir / name
        if not path.exists():
            continue
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            m = _RULE.search(line)
            if not m or not line.lstrip().startswith("-") or m.group(1) in rules:
                continue
            text = [m.group(3).strip()]
            for more in lines[i + 1 :]:  # the bullet's continuation lines (indented, non-empty)
                if not more.startswith("  ") or not more.strip() or more.lstrip().startswith("-"):
                    break
                text.append(more.strip())
            rules[m.group(1)] = Rule(m.group(1), m.group(2), " ".join(text), name)
    return rules
