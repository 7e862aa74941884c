"""The spec's rules, read from the normative text: ID, level and sentence.

A rule is a line of spec/*.md that carries ``[NMQ-…]`` followed by MUST, SHOULD or MAY. The kit's
coverage report is over all four specs: protocol.md and semantics.md are checked over the wire,
admin.md over the target's admin HTTP API when it declares one (``admin`` in target.toml);
storage.md rules are checked over the wire plus, for targets that declare the reference on-disk
format (``storage_format = "nanomq-v1"``), by inspecting and damaging their files between a stop
and a start. Rules no case can check are listed, with the reason, in :mod:`conformance.untestable`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["Rule", "load_rules", "spec_root", "spec_file", "WIRE_SPECS"]

WIRE_SPECS = ("protocol.md", "semantics.md", "storage.md", "admin.md")
_RULE = re.compile(r"\[(NMQ-(?:SEM-|ADM-|S)?\d[\d.]*-\d+)\]\**\s*(MUST|SHOULD|MAY)\b\**:?\s*(.*)")


def spec_root() -> Traversable:
    """The directory of the spec texts (protocol.md, semantics.md, storage.md, budgets.toml,
    vectors/*.json), wherever the kit runs from.

    An installed wheel carries them as the package data ``conformance/_spec`` (setup.py maps
    that package onto spec/, so git holds one copy). A source checkout or an editable install has
    no ``conformance/_spec`` and reads spec/ next to the package, so edits to spec/ count at once.
    """
    packaged = files("conformance") / "_spec"
    if packaged.is_dir():
        return packaged
    tree = Path(__file__).resolve().parents[1] / "spec"
    if tree.is_dir():
        return tree
    raise FileNotFoundError(f"the spec texts are missing: neither {packaged} nor {tree} exists; "
                            "the package was installed without its data (reinstall it from a wheel)")


def spec_file(name: str) -> Traversable:
    """One file of the spec texts, e.g. ``spec_file("vectors/invalid.json").read_text()``: the one
    way the kit opens them (see :func:`spec_root`)."""
    return spec_root().joinpath(*name.split("/"))


@dataclass(frozen=True, slots=True)
class Rule:
    """One normative sentence."""

    id: str
    level: str
    """MUST, SHOULD or MAY."""
    text: str
    source: str
    """The spec file it is in."""


def load_rules(spec_dir: Traversable | None = None, names: tuple[str, ...] = WIRE_SPECS) -> dict[str, Rule]:
    """Every rule defined in the spec files ``names`` (first definition wins; later mentions are
    references). ``spec_dir`` defaults to :func:`spec_root`."""
    root = spec_root() if spec_dir is None else spec_dir
    rules: dict[str, Rule] = {}
    for name in names:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"spec file {name} is missing from {root}")
        lines = path.read_text(encoding="utf-8").splitlines()
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
