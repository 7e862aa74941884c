"""What every job shares: the mutant record, the key that makes a diff comparable across runs,
hashing, and finding/stopping the processes a run started."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

VERDICTS = ("killed", "survived", "timeout", "no-coverage", "build-error", "equivalent")
"""What a mutant's run can end as. ``excluded`` mutants are out of scope and never run."""


@dataclass
class Mutant:
    """One mutant, Python or C."""

    id: str
    """mutmut's name (``nanomq.broker.connection.xǁConnectionǁ_on_hello__mutmut_3``) or, for C,
    ``<file>:<line>:<operator>:<n>`` (``log.c:702:skip_check:1``, ``plane.c:247:off_by_one:1``)."""
    kind: str
    """``python`` or ``c``."""
    file: str
    """Repository-relative path of the mutated source file."""
    function: str
    """``Class.method`` or ``function`` (C: the enclosing function)."""
    lines: list[int]
    """Lines of the snapshot's source file the mutation changes (1-based)."""
    diff: str
    """Unified diff of the function (Python, as ``mutmut show`` prints it) or of the file (C)."""
    operator: str = ""
    """C: the operator (see cmutants.OPERATORS); Python: empty (mutmut's operators)."""
    description: str = ""
    excluded: str = ""
    """Why the mutant is out of scope (empty: in scope)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def diff_key(self) -> str:
        return diff_key(self.diff)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["diff_key"] = self.diff_key
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Mutant:
        d = {k: v for k, v in d.items() if k != "diff_key"}
        return cls(**d)


def diff_key(diff: str) -> str:
    """A short hash of what a diff changes and its context, without file names and hunk line
    numbers: an entry keyed by it goes stale when the mutation or the code around it changes,
    but not when unrelated code above it moves."""
    body = [ln.rstrip() for ln in diff.splitlines() if not ln.startswith(("---", "+++", "@@"))]
    return hashlib.sha256("\n".join(body).encode()).hexdigest()[:16]


def hash_files(paths: Iterable[Path], root: Path) -> str:
    """sha256 over the relative names and contents of ``paths`` (sorted)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def source_files(root: Path, top: str, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under ``root/top`` with one of ``suffixes`` (no caches, no build products)."""
    out = []
    for p in (root / top).rglob("*"):
        if p.is_file() and p.suffix in suffixes and "__pycache__" not in p.parts:
            out.append(p)
    return out


# ------------------------------------------------------------------------------------------------
# processes: every process a run starts carries NMQ_MUTATION_TOKEN=<token> in its environment


def processes_with_token(token: str) -> list[int]:
    """PIDs of this user's processes whose environment holds NMQ_MUTATION_TOKEN=<token>: the kit
    and the brokers of one run (the broker runs in a session of its own, so it is not in the
    kit's process group)."""
    needle = f"NMQ_MUTATION_TOKEN={token}".encode()
    me, uid = os.getpid(), os.getuid()
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            if d.stat().st_uid != uid:
                continue
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            pids.append(int(d.name))
    return pids


def kill_token(token: str, grace_s: float = 0.0) -> list[int]:
    """SIGKILL (after an optional SIGTERM and ``grace_s``) every process of a run, by PID."""
    pids = processes_with_token(token)
    if pids and grace_s > 0:
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and processes_with_token(token):
            time.sleep(0.1)
        pids = processes_with_token(token)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    return pids


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def dir_bytes(path: Path) -> int:
    """Disk space allocated under ``path`` (preallocated segments count in full)."""
    total = 0
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(Path(e.path))
                        else:
                            total += e.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        pass
        except OSError:
            pass
    return total
