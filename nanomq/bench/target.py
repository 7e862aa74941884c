"""The broker a ``nanomq-bench`` run measures, described as the conformance kit describes one.

The description is the kit's own (:class:`conformance.target.TargetSpec`): a ``target.toml`` with a
``[target]`` table, or ``--address`` (a broker that already runs), or ``--launch`` (a command the run
starts, with the placeholders ``{port}``, ``{data_dir}`` and ``{python}``). A launched broker is
started and stopped by the kit's :class:`conformance.target.Target` (its process group, by PID), so
the bench and the kit start a broker the same way. Without any of them the reference broker is
launched (:data:`REFERENCE_LAUNCH`).

What the run can measure depends on what it knows:

* the broker's PID (launched: the process holding the listening socket) gives its CPU per record
  and its RSS; an ``--address`` broker has none unless ``--pid`` is given;
* its data directory is local when the run launched it (``{data_dir}``), so raw ``fdatasync`` is
  calibrated on that disk; for an ``--address`` broker only with ``--data-dir``, else that
  calibration and the ratios that need it are left out, and the run says why.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["REFERENCE_LAUNCH", "BenchTarget", "TargetProblem", "describe"]

REFERENCE_LAUNCH = ("{python} -m nanomq.cli.broker --port {port} --data-dir {data_dir} --log-level warning "
                    "--log-segment-size 8MB")
"""The reference broker as a launch command: the installed package's CLI, warnings only, 8 MB
segments (each topic preallocates one; a run makes a few dozen topics)."""


class TargetProblem(ValueError):
    """The target description cannot be used (a bad file, a missing field, TLS)."""


def describe(target_file: str | os.PathLike[str] | None, address: str, launch: str,
             ready_timeout: float | None = None) -> Any:
    """The kit's :class:`~conformance.target.TargetSpec` for these options: the file first, then
    ``address`` / ``launch`` override it; the reference launch when nothing names a broker.
    Raises :class:`TargetProblem` for an unusable description."""
    import importlib
    import tomllib

    kit = importlib.import_module("conformance.target")  # the kit's own loader (imported, not followed by mypy)
    TargetError, TargetSpec = kit.TargetError, kit.TargetSpec  # noqa: N806
    try:
        spec = TargetSpec.from_toml(target_file) if target_file else TargetSpec()
    except (OSError, tomllib.TOMLDecodeError, TargetError) as e:
        raise TargetProblem(f"bad target file: {e}") from e
    spec.address = address or spec.address
    spec.launch = launch or spec.launch
    if ready_timeout is not None:
        spec.ready_timeout = ready_timeout
    if not spec.address and not spec.launch:
        spec.launch = REFERENCE_LAUNCH
    if spec.tls_ca:
        raise TargetProblem("the target speaks TLS (tls_ca): nanomq-bench measures plain TCP targets only")
    return spec


class BenchTarget:
    """A broker to measure: launched (and stopped) through the kit's target code, or one that runs
    already at an address."""

    def __init__(self, spec: Any, *, pid: int | None = None, data_dir: str = "",
                 log_dir: str | os.PathLike[str] | None = None, running: Any = None) -> None:
        import importlib

        Target = importlib.import_module("conformance.target").Target  # noqa: N806
        self.spec = spec
        self._external_pid = pid
        self._external_data_dir = data_dir
        self._owned = running is None
        self._pid: int | None = None
        if running is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="nanomq-bench-target-"))
            self._target = Target(spec, workdir=self._workdir, log_dir=Path(log_dir) if log_dir else None)
            self._started = False
        else:
            self._target = running
            self._started = True

    @classmethod
    def wrap(cls, running: Any) -> BenchTarget:
        """A started :class:`conformance.target.Target` of the kit's, measured as it is: never
        started or stopped by the bench (the conformance kit's budget layer)."""
        return cls(running.spec, running=running)

    @property
    def launched(self) -> bool:
        """Whether this run starts the broker."""
        return bool(self.spec.launch)

    def start(self) -> BenchTarget:
        """Launch the broker (if this run launches it) and wait until it answers HELLO; raises
        :class:`conformance.target.TargetError` when it does not."""
        if not self._owned:
            return self
        self._target.start()
        self._started = True
        self._pid = None
        return self

    @property
    def address(self) -> str:
        """host:port of the broker."""
        return f"{self._target.host}:{self._target.port}"

    @property
    def pid(self) -> int | None:
        """The broker's own PID (launched: found through its listening socket), or the ``pid``
        given for an external broker, or None."""
        if self.launched and self._started:
            if self._pid is None:
                pid = self._target.broker_pid()
                self._pid = int(pid) if pid is not None else None
            return self._pid
        return self._external_pid

    @property
    def data_dir(self) -> str:
        """The broker's data directory when it is on this machine and known ("" otherwise)."""
        if self.launched:
            return str(self._target.data_dir)
        return self._external_data_dir

    def alive(self) -> bool:
        """Whether a launched broker still runs (True for an external one)."""
        proc = self._target.proc
        return proc is None or proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        """The end of a launched broker's log ("" for an external one)."""
        if not self.launched:
            return ""
        try:
            return str(self._target.log_path.read_bytes()[-n:].decode(errors="replace"))
        except OSError as e:
            return str(e)

    def description(self) -> dict[str, Any]:
        """What the results JSON says about the target."""
        return {"address": self.address, "launch": self.spec.launch, "pid_known": self.pid is not None,
                "data_dir_local": bool(self.data_dir)}

    def stop(self) -> None:
        """Stop a launched broker (SIGTERM to its process group, then SIGKILL) and delete its
        working directory (a wrapped target is left as it is)."""
        if not self._owned:
            return
        self._target.cleanup()
        shutil.rmtree(self._workdir, ignore_errors=True)  # the kit keeps a workdir it was given
        self._started = False

    def __enter__(self) -> BenchTarget:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
