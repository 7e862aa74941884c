"""Which kit cases a mutant is run under: those that execute a line the mutation changes.

Python lines are compared the way coverage.py reports them: every line of a multi-line statement
counts as its first line (coverage.parser.PythonParser.first_line), on both sides. A C line that
gcov did not instrument (a continuation line) counts as the nearest instrumented line above it in
the same file (the map keeps C lines per file).
Cases that did not pass against the reference broker are never selected. The selected cases run
fastest first (their order in the kit is the kit's own; with --fail-fast the first failure ends
the run), and the run's time budget is derived from their measured durations.
"""

from __future__ import annotations

import bisect
from functools import cache
from pathlib import Path
from typing import Any

from mutation import config
from mutation.common import Mutant
from mutation.snapshot import SNAPSHOT

PASSING = ("OK", "UNIMPLEMENTED", "INFORMATIONAL")
"""Baseline verdicts of a usable case (UNIMPLEMENTED still checks the NOT_SUPPORTED answer)."""


@cache
def _parser(root: Path, path: str) -> Any:
    from coverage.parser import PythonParser

    p = PythonParser(text=(root / path).read_text())
    p.parse_source()
    return p


def first_lines(path: str, lines: list[int] | set[int], root: Path = SNAPSHOT) -> set[int]:
    """coverage.py's first line of the statement each of ``lines`` belongs to."""
    p = _parser(root, path)
    return {p.first_line(ln) for ln in lines}


def usable_cases(cmap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cid: c for cid, c in cmap["cases"].items() if c.get("verdict") in PASSING}


def baseline_failures(cmap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cid: c for cid, c in cmap["cases"].items() if c.get("verdict") not in PASSING}


class Selector:
    """Selects cases per mutant from one coverage map."""

    def __init__(self, cmap: dict[str, Any], root: Path = SNAPSHOT) -> None:
        self.root = root
        self.cases = usable_cases(cmap)
        self._py: dict[tuple[str, str], set[int]] = {}
        self._instrumented = {path: sorted(lines) for path, lines in cmap.get("c_instrumented", {}).items()}
        self._c = {cid: {path: set(lines) for path, lines in c["c"].items()} for cid, c in self.cases.items()}

    def _py_lines(self, cid: str, path: str) -> set[int]:
        key = (cid, path)
        if key not in self._py:
            self._py[key] = first_lines(path, self.cases[cid]["py"].get(path, []), self.root)
        return self._py[key]

    def _c_line(self, path: str, line: int) -> int:
        ins = self._instrumented.get(path, [])
        i = bisect.bisect_right(ins, line)
        return ins[i - 1] if i else line

    def cases_for(self, m: Mutant) -> list[str]:
        """The usable cases that run a changed line of ``m``, fastest first."""
        if m.kind == "python":
            want = first_lines(m.file, m.lines, self.root)
            hit = [cid for cid in self.cases if want & self._py_lines(cid, m.file)]
        else:
            want = {self._c_line(m.file, ln) for ln in m.lines}
            hit = [cid for cid in self.cases if want & self._c[cid].get(m.file, set())]
        return sorted(hit, key=lambda cid: (self.cases[cid]["duration_s"], cid))

    def timeout_for(self, cases: list[str]) -> float:
        return config.TIMEOUT_BASE_S + sum(config.TIMEOUT_FACTOR * float(self.cases[c]["duration_s"])
                                           + config.TIMEOUT_PER_CASE_S for c in cases)


def source_line(m: Mutant, root: Path = SNAPSHOT) -> str:
    """The first changed source line, for reports."""
    lines = (root / m.file).read_text().splitlines()
    return lines[m.lines[0] - 1].strip() if m.lines and m.lines[0] <= len(lines) else ""
