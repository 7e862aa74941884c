"""Read ``strace -f -ttt -T -qq -y`` output: which file each call touched, when it started and ended.

The durability case ([NMQ-SEM-3-1]) needs more than "some sync happened": it must show that the
file holding an acknowledged record was synced inside the publish→ack window, and that a file (or
directory) created for it was made durable by a sync of its directory. This module turns a trace
into :class:`Call` objects and answers those questions:

* :func:`parse` pairs ``<unfinished ...>`` / ``<... resumed>`` lines per thread, keeps the path
  ``-y`` prints after each file descriptor, the returned path (``openat``), and whether the call
  succeeded;
* :class:`Trace` tracks the ``mmap``/``munmap`` of shared file mappings (so an ``msync`` is
  attributed to the file it flushes), the first creation of each path (``O_CREAT`` opens,
  ``creat``, ``mkdir*``, the target of ``rename*``), and finds the sync calls that make a file's
  data, or a directory's entries, durable.

Timing: ``-ttt`` stamps a line when strace handles the syscall-entry stop, before the kernel runs
the call, and ``-T`` gives the time to the exit stop, after it returned. So ``start`` is never
before the call really began, and ``end`` never before it really returned: a call with
``start >= t0`` and ``end <= t1`` provably ran inside the window [t0, t1].
"""

from __future__ import annotations

import os
import re
from bisect import bisect_right
from dataclasses import dataclass, field

__all__ = ["Call", "Trace", "parse", "DATA_SYNCS", "DIR_SYNCS", "FS_SYNCS"]

DATA_SYNCS = frozenset({"fsync", "fdatasync"})
"""Calls on a file descriptor that make that file's data durable. ``sync_file_range`` is not
one: it neither flushes the disk's cache nor the metadata needed to read the data back."""
DIR_SYNCS = frozenset({"fsync", "fdatasync"})
"""Calls on a directory's descriptor that make its entries durable."""
FS_SYNCS = frozenset({"syncfs", "sync"})
"""Calls that flush a whole file system (``syncfs``: the one holding the descriptor) or all."""

_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)$")
_DUR = re.compile(r"\s*<(\d+\.\d+)>\s*$")
_FD = re.compile(r"^\s*(-?\d+|AT_FDCWD)<(.*)>\s*$")
_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESC = re.compile(r"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)")


def _unescape(s: str) -> str:
    def one(m: re.Match[str]) -> str:
        c = m.group(1)
        if c[0] == "x":
            return chr(int(c[1:], 16))
        if c[0].isdigit():
            return chr(int(c, 8))
        return {"n": "\n", "t": "\t", "r": "\r", "v": "\v", "f": "\f"}.get(c, c)

    return _ESC.sub(one, s)


def _split_args(s: str) -> list[str]:
    """Top-level comma-separated arguments (commas inside quotes, braces, brackets or the
    ``<path>`` decorations do not split)."""
    out, depth, cur, quote, i = [], 0, [], False, 0
    while i < len(s):
        c = s[i]
        if quote:
            cur.append(c)
            if c == "\\" and i + 1 < len(s):
                cur.append(s[i + 1])
                i += 1
            elif c == '"':
                quote = False
        elif c == '"':
            quote = True
            cur.append(c)
        elif c in "([{<":
            depth += 1
            cur.append(c)
        elif c in ")]}>":
            depth -= 1
            cur.append(c)
        elif c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if cur or out:
        out.append("".join(cur).strip())
    return out


@dataclass(slots=True)
class Call:
    """One completed system call."""

    pid: int
    name: str
    args: list[str]
    ret: str
    """The return value as printed (``0``, ``-1``, ``0x7f…``, ``5``)."""
    ret_path: str
    """The path decorating a returned descriptor (``openat``), else empty."""
    start: float
    end: float
    ok: bool

    def fd_path(self, i: int = 0) -> str:
        """The path ``-y`` printed for argument ``i`` when it is a descriptor, else empty."""
        if i >= len(self.args):
            return ""
        m = _FD.match(self.args[i])
        return m.group(2) if m else ""

    def string(self, i: int) -> str:
        """Argument ``i`` as an (unescaped) string literal, else empty."""
        if i >= len(self.args):
            return ""
        m = _STR.search(self.args[i])
        return _unescape(m.group(1)) if m else ""


def _finish(pid: int, name: str, args_text: str, tail: str, start: float, stamp: float) -> Call | None:
    """Build a Call from ``args) = ret <dur>``; None when it never returned (killed)."""
    head, sep, ret_part = tail.rpartition(") = ")
    if not sep:
        return None
    args_text += head
    d = _DUR.search(ret_part)
    dur = float(d.group(1)) if d else 0.0
    if d:
        ret_part = ret_part[: d.start()]
    ret = ret_part.strip()
    value = ret.split(" ", 1)[0]
    ret_path = ""
    m = re.match(r"^(-?\d+)<(.*)>$", value)
    if m:
        value, ret_path = m.group(1), m.group(2)
    ok = not value.startswith("-") and value != "?"
    return Call(pid, name, _split_args(args_text), value, ret_path, start, max(start + dur, stamp), ok)


def parse(text: str) -> list[Call]:
    """Every completed call in an ``strace -f -ttt -T -y`` log, in the order they returned."""
    calls: list[Call] = []
    pending: dict[tuple[int, str], tuple[float, str]] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        pid, stamp, rest = int(m.group(1)), float(m.group(2)), m.group(3)
        r = _RESUMED.match(rest)
        if r:
            name = r.group(1)
            begun = pending.pop((pid, name), None)
            if begun is None:
                continue
            c = _finish(pid, name, begun[1], r.group(2), begun[0], stamp)
            if c is not None:
                calls.append(c)
            continue
        cm = _CALL.match(rest)
        if not cm:
            continue  # signals, exits
        name, body = cm.group(1), cm.group(2)
        if body.endswith("<unfinished ...>"):
            pending[(pid, name)] = (stamp, body[: -len("<unfinished ...>")].rstrip())
            continue
        c = _finish(pid, name, "", body, stamp, stamp)
        if c is not None:
            calls.append(c)
    calls.sort(key=lambda c: c.end)
    return calls


@dataclass(slots=True)
class _Mapping:
    addr: int
    length: int
    path: str
    since: float
    until: float = float("inf")


def _int(s: str) -> int:
    try:
        return int(s, 0)
    except ValueError:
        return -1


def _join(base: str, name: str) -> str:
    return os.path.normpath(name if name.startswith("/") or not base else os.path.join(base, name))


@dataclass
class Trace:
    """A parsed trace with the questions the durability case asks of it."""

    calls: list[Call]
    mappings: list[_Mapping] = field(default_factory=list)
    created: dict[str, float] = field(default_factory=dict)
    """Path -> when it was first created in the trace (the end of the creating call)."""
    writes: dict[str, list[float]] = field(default_factory=dict)
    """Path -> start times of the successful write-family calls on it (sorted)."""

    @classmethod
    def from_text(cls, text: str) -> Trace:
        """Parse a trace and index its mappings, creations and writes."""
        t = cls(parse(text))
        open_maps: dict[int, _Mapping] = {}
        for c in t.calls:
            if not c.ok:
                continue
            if c.name in ("mmap", "mmap2") and len(c.args) >= 5 and "MAP_SHARED" in c.args[3]:
                path = c.fd_path(4)
                addr, length = _int(c.ret), _int(c.args[1])
                if path and addr > 0 and length > 0:
                    mp = _Mapping(addr, length, path, c.start)
                    t.mappings.append(mp)
                    open_maps[addr] = mp
            elif c.name == "munmap" and len(c.args) >= 2:
                addr, length = _int(c.args[0]), _int(c.args[1])
                for a, mp in list(open_maps.items()):
                    if addr <= mp.addr < addr + length:
                        mp.until = c.end
                        del open_maps[a]
            elif c.name in ("open", "openat", "creat", "openat2"):
                path = c.ret_path
                flags = " ".join(c.args[1:3])
                if path and (c.name == "creat" or "O_CREAT" in flags):
                    t.created.setdefault(os.path.normpath(path), c.end)
            elif c.name in ("mkdir", "mkdirat"):
                path = (_join("", c.string(0)) if c.name == "mkdir"
                        else _join(c.fd_path(0), c.string(1)))
                if path.startswith("/"):
                    t.created.setdefault(path, c.end)
            elif c.name in ("rename", "renameat", "renameat2"):
                path = (_join("", c.string(1)) if c.name == "rename"
                        else _join(c.fd_path(2), c.string(3)))
                if path.startswith("/"):
                    # a rename makes a new directory entry: it needs a directory sync like a creation
                    t.created[path] = c.end
            elif c.name in ("write", "pwrite64", "pwritev", "pwritev2", "writev"):
                path = c.fd_path(0)
                if path.startswith("/"):
                    t.writes.setdefault(os.path.normpath(path), []).append(c.start)
        for w in t.writes.values():
            w.sort()
        return t

    def first_write(self, path: str, after: float = 0.0) -> float | None:
        """Start of the first write-family call on ``path`` at or after ``after``."""
        w = self.writes.get(os.path.normpath(path), [])
        i = bisect_right(w, after - 1e-9)
        return w[i] if i < len(w) else None

    def last_write(self, path: str, before: float) -> float | None:
        """Start of the last write-family call on ``path`` that began before ``before``."""
        w = self.writes.get(os.path.normpath(path), [])
        i = bisect_right(w, before) - 1
        return w[i] if i >= 0 else None

    def renames_to(self, path: str) -> list[Call]:
        """Successful ``rename*`` calls whose target is ``path``."""
        path = os.path.normpath(path)
        out = []
        for c in self.calls:
            if c.ok and c.name in ("rename", "renameat", "renameat2"):
                target = _join("", c.string(1)) if c.name == "rename" else _join(c.fd_path(2), c.string(3))
                if target == path:
                    out.append(c)
        return out

    def _fs_sync(self, c: Call, same_fs: str) -> bool:
        if c.name == "sync":
            return True
        if c.name == "syncfs":
            p = c.fd_path(0)
            return bool(p) and _same_fs(p, same_fs)
        return False

    def data_syncs(self, path: str, t0: float, t1: float) -> list[Call]:
        """Successful calls that made ``path``'s data durable and ran wholly inside [t0, t1]:
        fsync/fdatasync of it, msync(MS_SYNC) of a shared mapping of it, syncfs of its file
        system, sync."""
        path = os.path.normpath(path)
        out = []
        for c in self.calls:
            if not c.ok or c.start < t0 or c.end > t1:
                continue
            if c.name in DATA_SYNCS and os.path.normpath(c.fd_path(0) or "?") == path or c.name == "msync" and "MS_SYNC" in " ".join(c.args[2:3]) and self._msync_covers(c, path) or c.name in FS_SYNCS and self._fs_sync(c, path):
                out.append(c)
        return out

    def dir_syncs(self, directory: str, t0: float, t1: float) -> list[Call]:
        """Successful calls that made ``directory``'s entries durable inside [t0, t1]."""
        directory = os.path.normpath(directory)
        return [c for c in self.calls if c.ok and c.start >= t0 and c.end <= t1 and (
            (c.name in DIR_SYNCS and os.path.normpath(c.fd_path(0) or "?") == directory)
            or (c.name in FS_SYNCS and self._fs_sync(c, directory)))]

    def _msync_covers(self, c: Call, path: str) -> bool:
        addr, length = _int(c.args[0]) if c.args else -1, _int(c.args[1]) if len(c.args) > 1 else -1
        if addr < 0 or length <= 0:
            return False
        for mp in self.mappings:
            if (os.path.normpath(mp.path) == path and mp.since <= c.start and c.end <= mp.until
                    and addr < mp.addr + mp.length and mp.addr < addr + length):
                return True
        return False


def _same_fs(a: str, b: str) -> bool:
    """Whether two paths are on one file system (a vanished path counts as not)."""
    def dev(p: str) -> int:
        while p and p != "/":
            try:
                return os.stat(p).st_dev
            except OSError:
                p = os.path.dirname(p)
        return os.stat("/").st_dev

    try:
        return dev(a) == dev(b)
    except OSError:
        return False
