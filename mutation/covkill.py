"""The kit's --kill command while the coverage map is measured: flush, then crash.

Usage: ``python mutation/covkill.py <pid>`` (the kit's ``{pid}``: the launched process, maybe a
shell or strace in front of the broker). Every covlaunch.py process below it gets SIGUSR1 and
is given up to 10 s to write its coverage data and gcov counters; then the whole process group
gets SIGKILL, exactly as the kit's default kill does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def main() -> int:
    pid = int(sys.argv[1])
    out = Path(os.environ["NMQ_MUTATION_COV_DIR"])
    t0 = time.time()
    flushing = []
    for p in descendants(pid):
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # the broker itself (python .../covlaunch.py ...), not a shell, env or strace in front of it
        if len(argv) > 1 and Path(os.fsdecode(argv[0])).name.startswith("python") and argv[1].endswith(b"covlaunch.py"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGUSR1)
                flushing.append(p)
    deadline = time.time() + 10
    for p in flushing:
        marker = out / f"flushed.{p}"
        while time.time() < deadline and not (marker.exists() and marker.stat().st_mtime >= t0 - 0.01):
            time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
