"""What the machine and its processes are doing: CPU time from /proc, load, pacing, child processes.

Everything here reads Linux's /proc (the benchmark's home); nothing needs root.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLK_TCK", "FORK", "Child", "Window", "awake_cpus", "cpu_seconds", "cpu_seconds_fine", "free_port", "loadavg", "machine", "proc_status",
    "start_child", "wait_until",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
"""Clock ticks per second of /proc/<pid>/stat's utime and stime (their resolution)."""
FORK = mp.get_context("fork")
"""Children are forked: they inherit the parent's imports and arguments without pickling."""


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` so far (dead threads included), in seconds,
    from /proc/<pid>/stat; resolution 1/CLK_TCK (10 ms here)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds_fine(pid: int) -> float:
    """CPU time of ``pid``'s live threads in seconds at nanosecond resolution, from
    /proc/<pid>/task/*/schedstat (the scheduler's sum_exec_runtime); falls back to
    :func:`cpu_seconds` (10 ms ticks) where schedstat is missing. Threads that ended are not in
    it, so use it for differences over a window in which the threads stay the same."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return cpu_seconds(pid)
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            if not os.path.exists(f"/proc/{pid}/task/{tid}/schedstat") and os.path.exists(f"/proc/{pid}/task/{tid}"):
                return cpu_seconds(pid)
    return total / 1e9


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS / RssAnon / RssFile of ``pid`` in MB (10^6 bytes), from /proc/<pid>/status."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) * 1024 / 1e6
    return out


def loadavg() -> float:
    """The 1-minute load average now."""
    return os.getloadavg()[0]


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts[:8]]
    idle = vals[3] + vals[4]  # idle + iowait
    return sum(vals) - idle, sum(vals)


_SPIN = """
import os, sys
parent = int(sys.argv[1])
try:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
except (AttributeError, OSError):
    os.nice(19)
while os.getppid() == parent:  # a parent killed without stopping it: it stops on its own
    for _ in range(1_000_000):
        pass
"""

_awake: list[int] = []
"""PIDs of the spinners :func:`awake_cpus` runs now (a :class:`Window` leaves their CPU out)."""


@contextlib.contextmanager
def awake_cpus(count: int | None = None) -> Iterator[list[int]]:
    """Keep ``count`` CPUs (default: all) from going idle while the block runs: one spinning
    process per CPU at the lowest scheduling class (SCHED_IDLE; nice 19 where that is refused).

    Why: on a virtual machine an idle vCPU halts, and waking it again (an inter-processor
    interrupt through the hypervisor) costs tens of microseconds. A round trip that wakes a
    sleeping process then measures the host's idle handling as much as the code: on the 2-vCPU
    machine this project is built on, the Python event-loop round trip's p10 was 21 µs on a busy
    machine and 64-74 µs on a quiet one, and the gate's baseline publish round trip was ~20 % slower
    when the machine was quieter. A spinner never delays anyone (any runnable task of a normal class
    preempts a SCHED_IDLE one at once), but a CPU that runs it never halts, so the wake-up cost is the
    same at every load. The spinners are stopped by PID when the block ends."""
    import subprocess

    n = count if count is not None else (os.cpu_count() or 1)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", _SPIN, str(os.getpid())], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _awake[:] = [p.pid for p in procs]
        time.sleep(0.05)  # they are running (and have lowered their class) before anything is measured
        yield [p.pid for p in procs]
    finally:
        _awake.clear()
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(10)


def _spinner_jiffies() -> int:
    """CPU time of the running spinners, in /proc/stat's jiffies (a spinner that went counts 0)."""
    total = 0.0
    for pid in _awake:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds(pid)
    return round(total * CLK_TCK)


@dataclass(slots=True)
class Window:
    """The machine around one measurement: load average before and after, and how busy all CPUs
    were (everyone's processes, ours included, but not :func:`awake_cpus`' spinners) while it ran.
    The load average does count the spinners (they are always runnable)."""

    load_before: float = 0.0
    load_after: float = 0.0
    busy_pct: float = 0.0
    """CPU busy % of the whole machine (all cores, 100 = every core busy) over the window."""
    seconds: float = 0.0
    _t0: float = 0.0
    _j0: tuple[int, int] = (0, 0)
    _s0: int = 0

    @classmethod
    def open(cls) -> Window:
        """Start a window now."""
        w = cls(load_before=loadavg())
        w._t0 = time.monotonic()
        w._j0 = _cpu_jiffies()
        w._s0 = _spinner_jiffies()
        return w

    def close(self) -> Window:
        """End the window now; returns itself."""
        b1, t1 = _cpu_jiffies()
        db, dt = b1 - self._j0[0], t1 - self._j0[1]
        db = max(0, db - (_spinner_jiffies() - self._s0))
        self.busy_pct = 100.0 * db / dt if dt > 0 else 0.0
        self.load_after = loadavg()
        self.seconds = time.monotonic() - self._t0
        return self

    def as_dict(self) -> dict[str, float]:
        """For the results JSON."""
        return {"load1_before": round(self.load_before, 2), "load1_after": round(self.load_after, 2),
                "machine_busy_pct": round(self.busy_pct, 1), "seconds": round(self.seconds, 2)}


@contextlib.contextmanager
def window() -> Iterator[Window]:
    """``with window() as w:`` … ``w`` is closed when the block ends."""
    w = Window.open()
    try:
        yield w
    finally:
        w.close()


def wait_until(due_ns: int) -> None:
    """Sleep until ~150 µs before ``due_ns`` (monotonic clock), then spin, so timer slack is not
    charged to what is measured."""
    now = time.monotonic_ns()
    if due_ns - now > 200_000:
        time.sleep((due_ns - now - 150_000) / 1e9)
    while time.monotonic_ns() < due_ns:
        pass


@contextlib.contextmanager
def free_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers that need one given)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    yield port


@dataclass(slots=True)
class Child:
    """A forked child process and the receiving end of its result pipe."""

    process: Any
    rx: Any
    name: str = ""
    _result: Any = field(default=None)
    _have: bool = False

    @property
    def pid(self) -> int:
        """The child's process id."""
        return int(self.process.pid)

    def result(self, timeout: float) -> Any:
        """What the child sent back; raises RuntimeError if nothing came within ``timeout`` s
        (or the child died), or re-raises the child's own exception (as RuntimeError)."""
        if not self._have:
            if not self.rx.poll(timeout):
                code = self.process.exitcode
                raise RuntimeError(f"{self.name or 'child'} (pid {self.pid}) sent no result within {timeout:g} s"
                                   f" (exit code {code})")
            try:
                self._result = self.rx.recv()
            except EOFError as e:
                raise RuntimeError(f"{self.name or 'child'} (pid {self.pid}) died (exit code "
                                   f"{self.process.exitcode})") from e
            self._have = True
        if isinstance(self._result, _Failure):
            raise RuntimeError(f"{self.name or 'child'} failed: {self._result.text}")
        return self._result

    def reap(self, timeout: float = 10.0) -> None:
        """Wait for the child to end; SIGKILL it by its PID after ``timeout`` seconds."""
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.rx.close()


@dataclass(frozen=True, slots=True)
class _Failure:
    text: str


def _child_main(tx: Any, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    gc.disable()
    try:
        out = target(*args)
    except BaseException as e:  # sent to the parent, which raises it with the run's context
        import traceback

        out = _Failure(f"{e!r}\n{traceback.format_exc()}")
    tx.send(out)
    tx.close()


def start_child(target: Callable[..., Any], *args: Any, name: str = "") -> Child:
    """Fork ``target(*args)`` with GC disabled; its return value comes back through :meth:`Child.result`."""
    rx, tx = FORK.Pipe(duplex=False)
    p = FORK.Process(target=_child_main, args=(tx, target, args), daemon=True, name=name or None)
    p.start()
    tx.close()
    return Child(p, rx, name)


def machine() -> dict[str, Any]:
    """Facts about this machine for the results' header."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0.0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024 / 2**30
                break
    return {"hostname": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "cpu_model": model, "mem_gib": round(mem, 1), "python": sys.version.split()[0],
            "clk_tck": CLK_TCK}
