"""The broker under test: where it listens, and how to start, kill and restart it.

A target is described by a TOML file, flags or environment variables::

    [target]
    address = "127.0.0.1:9000"          # without launch: a broker that is already running
    launch = "mybroker --port {port} --data {data_dir}"   # with launch: the kit starts it
    kill = "kill -9 {pid}"              # optional; default SIGKILL to the launched process group
    ready_timeout = 20                  # seconds to wait for the port to answer HELLO
    tls_ca = "ca.pem"                   # optional: speak TLS, trusting this certificate
    [target.capabilities]               # may only narrow what HELLO_OK announces
    COMPRESSION_LZ4 = false

Placeholders: ``{port}`` (a free port the kit picked), ``{data_dir}`` (a fresh directory the kit
owns), ``{pid}`` (kill only), ``{python}`` (this interpreter). With a launch command the kit can
crash and restart the target; without one, crash cases are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from conformance.wire import WireClient
from nanomq.protocol import Capability

__all__ = ["TargetSpec", "Target", "REFERENCE_LAUNCH", "TargetError"]

REFERENCE_LAUNCH = ("{python} -m nanomq.cli.broker --port {port} --data-dir {data_dir} --log-level warning "
                    "--log-segment-size 8MB")
"""The default target: the reference broker, started through its CLI like any other broker.
Small segments: every topic preallocates one, the kit makes dozens of topics, and rotation gets
exercised by the larger cases."""


class TargetError(RuntimeError):
    """The target could not be reached, started or stopped."""


@dataclass(slots=True)
class TargetSpec:
    """What the user told the kit about the target."""

    address: str = ""
    launch: str = ""
    kill: str = ""
    ready_timeout: float = 20.0
    capabilities: dict[str, bool] = field(default_factory=dict)
    tls_ca: str = ""
    """Speak TLS to the target, trusting this PEM certificate (empty: plain TCP)."""
    trace_syncs: bool = False
    """Run the launch command under strace to observe fsync-family calls (durability cases)."""
    storage_format: str = ""
    """``"nanomq-v1"``: the target stores topics in the on-disk format of spec/storage.md §2-§5,
    one directory per topic at :attr:`topic_path`, so the storage layer may inspect and damage
    its files between a stop and a start. Empty: the storage layer is skipped."""
    topic_path: str = "{data_dir}/topics/{topic}"
    """Where a topic's directory is, with ``{data_dir}`` and ``{topic}`` (storage layer only)."""

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> TargetSpec:
        """Read a target.toml (table ``[target]``)."""
        with open(path, "rb") as f:
            data = tomllib.load(f).get("target", {})
        unknown = set(data) - {"address", "launch", "kill", "ready_timeout", "capabilities", "tls_ca",
                               "storage_format", "topic_path"}
        if unknown:
            raise TargetError(f"{path}: unknown keys in [target]: {sorted(unknown)}")
        caps = data.get("capabilities", {})
        for name in caps:
            if name not in Capability.__members__:
                raise TargetError(f"{path}: unknown capability {name!r} (known: {list(Capability.__members__)})")
        return cls(str(data.get("address", "")), str(data.get("launch", "")), str(data.get("kill", "")),
                   float(data.get("ready_timeout", 20.0)), {k: bool(v) for k, v in caps.items()},
                   str(data.get("tls_ca", "")), False, str(data.get("storage_format", "")),
                   str(data.get("topic_path", "{data_dir}/topics/{topic}")))

    def narrow(self, announced: int) -> int:
        """The capabilities to test: what HELLO_OK announced, minus what the spec switches off."""
        caps = announced
        for name, on in self.capabilities.items():
            if not on:
                caps &= ~int(Capability[name])
        return caps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Target:
    """A running target: launched by the kit, or an address it only connects to."""

    def __init__(self, spec: TargetSpec, workdir: Path | None = None) -> None:
        if not spec.launch and not spec.address:
            raise TargetError("the target needs an address or a launch command")
        self.spec = spec
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="nanomq-conformance-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.host = "127.0.0.1"
        self.data_dir = self.workdir / "data"
        self.trace_path = self.workdir / "syncs.strace"
        self.log_path = self.workdir / "target.log"
        if spec.address:
            host, _, port = spec.address.rpartition(":")
            self.host, self.port = host or "127.0.0.1", int(port)
        self.ssl: ssl.SSLContext | None = None
        if spec.tls_ca:
            try:
                self.ssl = ssl.create_default_context(cafile=spec.tls_ca)
            except (OSError, ssl.SSLError) as e:
                raise TargetError(f"cannot load tls_ca {spec.tls_ca}: {e}") from e

    @property
    def can_crash(self) -> bool:
        """Whether the kit can kill and restart the target (it has a launch command)."""
        return bool(self.spec.launch)

    def _format(self, cmd: str) -> str:
        return cmd.format(port=self.port, data_dir=shlex.quote(str(self.data_dir)), python=shlex.quote(sys.executable),
                          pid=self.proc.pid if self.proc else 0)

    def start(self) -> None:
        """Launch (if the kit launches it) and wait until it answers HELLO."""
        if self.spec.launch:
            if self.proc is not None and self.proc.poll() is None:
                raise TargetError("target already running")
            if not self.port or not self.spec.address:
                self.port = self.port or _free_port()
            self.data_dir.mkdir(parents=True, exist_ok=True)
            cmd = self._format(self.spec.launch)
            if self.spec.trace_syncs:
                cmd = (f"strace -f -ttt -T -qq -e trace=fsync,fdatasync,msync,sync_file_range,syncfs,sync "
                       f"-o {shlex.quote(str(self.trace_path))} -- sh -c {shlex.quote('exec ' + cmd)}")
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, shell=True, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
        self.wait_ready()

    def wait_ready(self) -> None:
        """Poll the port until a HELLO succeeds (or ready_timeout passes)."""
        deadline = time.monotonic() + self.spec.ready_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise TargetError(f"target exited with {self.proc.returncode} during start-up; log: {self.log_path}")
            try:
                with WireClient(self.host, self.port, timeout=2.0, ssl_context=self.ssl) as w:
                    w.hello()
                return
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.05)
        raise TargetError(f"target at {self.host}:{self.port} not ready after {self.spec.ready_timeout} s: {last}")

    def kill(self) -> None:
        """Crash the target: the kill command, else SIGKILL to its process group."""
        if self.proc is None:
            raise TargetError("the kit did not launch the target, so it cannot kill it")
        if self.spec.kill:
            subprocess.run(self._format(self.spec.kill), shell=True, check=False, timeout=30)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if not self._group_gone(30):
            raise TargetError("target did not die after the kill command")

    def _group_gone(self, timeout: float) -> bool:
        """Wait until every process of the launched group has exited (the launch shell may exit
        before the broker it started, which still holds its port and data directory)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.proc.poll()
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                self.proc.wait()
                return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        """Graceful stop (SIGTERM to the process group), falling back to SIGKILL."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            self.proc.wait()
            return
        if not self._group_gone(20):
            self.kill()

    def cleanup(self) -> None:
        """Stop the target and delete the working directory the kit made (data, logs, traces)."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart_after_crash(self) -> None:
        """Kill, then launch again on the same port and data directory."""
        self.kill()
        self.start()

    def topic_dir(self, topic: str) -> Path:
        """The directory holding ``topic`` on disk (targets with a ``storage_format`` only)."""
        return Path(self.spec.topic_path.format(data_dir=self.data_dir, topic=topic))

    def client(self, timeout: float = 10.0) -> WireClient:
        """A new connection that has done HELLO."""
        w = WireClient(self.host, self.port, timeout=timeout, ssl_context=self.ssl)
        w.hello()
        return w

    def raw_client(self, timeout: float = 10.0) -> WireClient:
        """A new connection without HELLO."""
        return WireClient(self.host, self.port, timeout=timeout, ssl_context=self.ssl)
