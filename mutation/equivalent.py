"""Survivors shown equivalent: mutation/equivalent.toml.

Each entry names a mutant and the key of its diff (common.diff_key: the changed lines and their
context, without line numbers), with a kind and the reason::

    [[equivalent]]
    id = "log.c:1160:skip_check:1"
    diff_key = "3f2a..."
    kind = "equivalent"      # the mutant behaves exactly like the original
    # kind = "not-a-rule"    # it behaves differently, but in nothing any spec rule constrains
    # kind = "untestable"    # it differs only under a rule listed untestable over the wire
    reason = "..."

An entry applies while a mutant with that diff key exists. When the code changes so that the diff
changes, the entry goes stale: the mutant is reported as a survivor again, and the stale entry
is listed until someone re-examines it. Recorded mutants are still run: one a new case kills is
reported as killed (and its entry as contradicted).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from mutation import config
from mutation.common import Mutant

KINDS = ("equivalent", "not-a-rule", "untestable")
"""equivalent: behaves exactly like the original. not-a-rule: behaves differently, but only in
what no spec rule constrains (error texts, resources no rule names). untestable: differs only
where a rule applies that the kit lists as untestable over the wire (conformance/untestable.py:
a failing disk, a power loss ...); the report also gives the score counting these as survived."""


@dataclass(frozen=True)
class Entry:
    id: str
    diff_key: str
    kind: str
    reason: str


def load(path: Path = config.EQUIVALENT_FILE) -> list[Entry]:
    if not path.exists():
        return []
    data = tomllib.loads(path.read_text())
    out = []
    for e in data.get("equivalent", []):
        kind = e.get("kind", "equivalent")
        if kind not in KINDS:
            raise ValueError(f"{path}: {e.get('id')}: kind must be one of {KINDS}, not {kind!r}")
        if not e.get("reason"):
            raise ValueError(f"{path}: {e.get('id')}: an entry needs its reason")
        out.append(Entry(str(e["id"]), str(e["diff_key"]), kind, str(e["reason"])))
    return out


def match(mutants: list[Mutant], entries: list[Entry]) -> tuple[dict[str, Entry], list[tuple[Entry, str]]]:
    """({mutant id: entry} for entries that apply, [(stale entry, why)])."""
    by_key: dict[str, list[Mutant]] = {}
    by_id = {m.id: m for m in mutants}
    for m in mutants:
        by_key.setdefault(m.diff_key, []).append(m)
    applied: dict[str, Entry] = {}
    stale: list[tuple[Entry, str]] = []
    for e in entries:
        hits = by_key.get(e.diff_key, [])
        if hits:
            # the same diff under another mutant number (code above it in the function changed
            # nothing of its context) is still the same mutation
            same = [m for m in hits if m.id == e.id] or hits
            for m in same:
                applied[m.id] = e
        elif e.id in by_id:
            stale.append((e, f"the mutant's diff changed (now {by_id[e.id].diff_key})"))
        else:
            stale.append((e, "no such mutant any more"))
    return applied, stale


def add(m: Mutant, kind: str, reason: str, path: Path = config.EQUIVALENT_FILE) -> None:
    """Append an entry for ``m`` (its current diff key)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if any(e.diff_key == m.diff_key for e in load(path)):
        raise ValueError(f"{m.id} is already recorded")
    text = path.read_text() if path.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    text += (f"\n[[equivalent]]\nid = {json.dumps(m.id, ensure_ascii=False)}\ndiff_key = {json.dumps(m.diff_key)}\n"
             f"kind = {json.dumps(kind)}\nreason = {json.dumps(reason, ensure_ascii=False)}\n")
    path.write_text(text)
