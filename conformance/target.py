"""The broker under test: where it listens, and how to start, kill and restart it.

A target is described by a TOML file, flags or environment variables::

    [target]
    address = "127.0.0.1:9000"          # without launch: a broker that is already running
    launch = "mybroker --port {port} --data {data_dir}"   # with launch: the kit starts it
    kill = "kill -9 {pid}"              # optional; default SIGKILL to the launched process group
    ready_timeout = 20                  # seconds to wait for the port to answer HELLO
    tls_ca = "ca.pem"                   # optional: speak TLS, trusting this certificate
    admin = "http://127.0.0.1:{admin_port}"   # optional: its admin HTTP API (spec/admin.md)
    token = "admin:secret"              # optional: the token every connection of the kit sends
    [target.capabilities]               # false: test as if not announced; true: must be announced
    COMPRESSION_LZ4 = false
    [target.auth]                       # optional: the security cases (spec/protocol.md §10)
    launch = "mybroker --auth users.toml --port {port} --data {data_dir}"  # or address = ...; or neither:
                                        # the target above itself authenticates
    token = "admin:..."                 # a principal with admin on "*"
    restricted_token = "mallory:..."    # see AuthSpec for the grants it must have

Placeholders: ``{port}`` (a free port the kit picked), ``{admin_port}`` (another, for an admin API
in the launch command and ``admin``), ``{data_dir}`` (a fresh directory the kit
owns), ``{pid}`` (kill only: the broker's own pid, see :meth:`Target.broker_pid`), ``{python}``
(this interpreter). The launch command is run by ``/bin/sh``, so it may set variables
(``RUST_LOG=warn mybroker …``), be compound (``cd /opt/x && ./broker …``) or name a bare command on
PATH, with or without the strace wrapper of the durability case. With a launch command the kit can
crash and restart the target; without one, crash cases are skipped with the reason.

The target's stdout and stderr go to ``target.log`` in the report directory (``log_dir``), which
the kit never deletes; the working directory (data, strace output) is deleted at the end unless
``--keep-data``.
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
from typing import Any

from conformance.wire import WireClient
from nanomq.protocol import Capability, Metadata, MetadataOk

__all__ = ["AuthSpec", "TargetSpec", "Target", "REFERENCE_LAUNCH", "REFERENCE_AUTH", "TargetError", "TRACE_SYSCALLS"]

TRACE_SYSCALLS = ("fsync", "fdatasync", "msync", "sync_file_range", "syncfs", "sync",
                  # which file each write, mapping and creation touched (conformance/strace.py);
                  # "?" : no error on an architecture without that call (aarch64 has no open/mkdir)
                  "?open", "openat", "?creat", "?mkdir", "mkdirat", "?rename", "?renameat", "renameat2",
                  "mmap", "munmap", "write", "writev", "pwrite64", "pwritev", "pwritev2")
"""The system calls the strace wrapper records (``trace_syncs``). strace runs with ``-y``, so each
file descriptor is printed with its path and a sync can be attributed to the file it synced."""

REFERENCE_LAUNCH = ("{python} -m nanomq.cli.broker --port {port} --admin-port {admin_port} --data-dir {data_dir} "
                    "--log-level warning "
                    "--log-segment-size 8MB --handshake-timeout 2 --frame-timeout 2 --max-connections 64 --max-subscriptions 32 "
                    "--retention-bytes 32MB --retention-check-interval 0.2 --idle-timeout 3 --write-timeout 2 "
                    "--max-commit-gaps 64 --max-frame-buffer 32MiB --topic-create-rate 10 --topic-create-burst 50")
"""The default target: the reference broker, started through its CLI like any other broker.
Small segments: every topic preallocates one, the kit makes dozens of topics, and rotation gets
exercised by the larger cases. Short handshake, frame, idle and write timeouts, a connection limit,
retention and the resource limits of issue 10 (commit runs, frames still arriving, topic creation:
a burst of 50 is more than the kit's wire layer creates in any 5 s), so the cases of those rules
can run (declared in :data:`REFERENCE_DECLARES`)."""

REFERENCE_DECLARES = {"storage_format": "nanomq-v1", "max_connections": 64, "retention_bytes": 32 << 20,
                      "retention_check_s": 0.2, "segment_bytes": 8 << 20, "max_subscriptions": 32,
                      "idle_timeout_s": 3.0, "write_timeout_s": 2.0, "max_commit_gaps": 64,
                      "frame_buffer_bytes": 32 << 20, "topic_create_rate": 10.0, "topic_create_burst": 50,
                      "capabilities": {"COMPRESSION_LZ4": True, "SEEK_TIME": True},
                      "admin": "http://127.0.0.1:{admin_port}"}
"""What the kit knows of its default target beyond HELLO_OK (the keys of a target.toml)."""


REFERENCE_USERS = Path(__file__).with_name("reference_users.toml")
"""The principals of the reference's authenticating instance (hashed tokens; the tokens are below)."""

REFERENCE_AUTH = {
    "launch": REFERENCE_LAUNCH + " --auth-file " + shlex.quote(str(REFERENCE_USERS)).replace("{", "{{").replace("}", "}}"),
    "token": "cf-admin:" + "A" * 32, "restricted_token": "cf-mallory:" + "M" * 32, "quota_token": "cf-quota:" + "Q" * 32,
    "prefix": "cf-sec-", "quota_max_connections": 3, "quota_max_topics": 3, "quota_publish_bytes_per_s": 20000.0,
    "quota_publish_burst_bytes": 20000, "failure_burst": 10, "failure_refill_per_s": 2.0,
}
"""The default target's ``[target.auth]``: a second reference broker started with
``reference_users.toml`` (test credentials only: never use them for a real broker)."""


class TargetError(RuntimeError):
    """The target could not be reached, started or stopped."""


@dataclass(slots=True)
class AuthSpec:
    """``[target.auth]``: an instance of the target that authenticates (spec/protocol.md §10) and
    the principals the security cases use. The kit cannot configure a broker's principals, so it
    states what it expects of them; with ``P`` = ``prefix``:

    - ``token``: a principal with ``admin`` on ``*``;
    - ``restricted_token``: exactly ``P + "rw-*"`` publish, subscribe, create; ``P + "ro-*"``
      subscribe; ``P + "nc-*"`` publish, subscribe (no create); nothing else, no quotas;
    - ``quota_token``: ``P + "q-*"`` publish, subscribe, create, and the quotas below (0: that
      quota is not configured, its case is skipped);
    - ``failure_burst`` / ``failure_refill_per_s``: the failed authentications one address may
      have before it is refused unchecked, and how fast that allowance comes back ([NMQ-10-11]).
    """

    launch: str = ""
    """A launch command for the authenticating instance (placeholders as ``launch``)."""
    address: str = ""
    """Or where an authenticating instance runs; neither: the main target is that instance."""
    token: str = ""
    restricted_token: str = ""
    quota_token: str = ""
    prefix: str = "cf-sec-"
    quota_max_connections: int = 0
    quota_max_topics: int = 0
    quota_publish_bytes_per_s: float = 0.0
    quota_publish_burst_bytes: int = 0
    failure_burst: int = 0
    failure_refill_per_s: float = 0.0

    @classmethod
    def from_table(cls, path: object, data: dict[str, Any]) -> AuthSpec:
        """Read ``[target.auth]``; TargetError on unknown keys or a missing token."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise TargetError(f"{path}: unknown keys in [target.auth]: {sorted(unknown)} (known: {sorted(known)})")
        if not data.get("token") or not data.get("restricted_token"):
            raise TargetError(f"{path}: [target.auth] needs token and restricted_token")
        out = cls()
        for key, value in data.items():
            setattr(out, key, type(getattr(out, key))(value))
        return out


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
    max_connections: int = 0
    """The target's connection limit: connection number max_connections+1 must be refused with
    TOO_MANY_CONNECTIONS ([NMQ-6.2-1]). 0: unknown, that case is skipped."""
    retention_bytes: int = 0
    """The target deletes a topic's oldest whole segments while the topic holds more than this many
    bytes of records ([NMQ-SEM-2-4]); 0: no retention configured, that case is skipped."""
    retention_check_s: float = 60.0
    """How often the target applies retention, in seconds (the case waits up to 5x this)."""
    segment_bytes: int = 0
    """The size at which the target starts a new log segment, if it has segments (0: unknown).
    Retention deletes whole segments, so with it the retention case also bounds what is kept."""
    max_subscriptions: int = 0
    """The subscriptions one connection may hold: the next SUBSCRIBE must be RESOURCE_LIMIT
    ([NMQ-6.2-3]). 0: unknown, that case is skipped."""
    idle_timeout_s: float = 0.0
    """The target closes a connection idle this long ([NMQ-2-5]). 0: unknown, that case is skipped."""
    write_timeout_s: float = 0.0
    """The target drops a connection whose output has been stuck this long ([NMQ-6.2-7]). 0: unknown."""
    max_commit_gaps: int = 0
    """The runs of ids committed out of order one connection's subscriptions may keep
    ([NMQ-4.7-5]). 0: unknown, that case is skipped."""
    frame_buffer_bytes: int = 0
    """The target's bound on large frames still arriving, all connections together ([NMQ-6.2-6]).
    0: unknown, that case is skipped (it also needs a target the kit launched on this host)."""
    topic_create_rate: float = 0.0
    """Topics the target creates per second at most, on average ([NMQ-6.2-5]). 0: unknown."""
    topic_create_burst: int = 0
    """Topics the target creates at once before its rate applies (with ``topic_create_rate``)."""
    max_topics: int = 0
    """The topics the target holds at most, those on disk included: a PUBLISH or SUBSCRIBE that
    would create one more is RESOURCE_LIMIT ([NMQ-6.2-5]). 0: unknown, that case is skipped."""
    admin: str = ""
    """The base URL of the target's admin HTTP API (spec/admin.md), ``{admin_port}`` allowed (the
    kit picks it, as ``{port}``). Empty: the target declares none, the admin cases are
    UNIMPLEMENTED."""
    token: str = ""
    """The auth token every HELLO of the kit's own connections carries (a target that requires
    authentication; empty: none)."""
    auth: AuthSpec | None = None
    """The security cases' instance and principals (None: those cases are skipped)."""

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> TargetSpec:
        """Read a target.toml (table ``[target]``)."""
        with open(path, "rb") as f:
            data = tomllib.load(f).get("target", {})
        unknown = set(data) - {"address", "launch", "kill", "ready_timeout", "capabilities", "tls_ca",
                               "storage_format", "topic_path", "max_connections", "retention_bytes",
                               "retention_check_s", "segment_bytes", "max_subscriptions", "idle_timeout_s",
                               "write_timeout_s", "max_commit_gaps", "frame_buffer_bytes", "topic_create_rate",
                               "topic_create_burst", "max_topics", "admin", "token", "auth"}
        if unknown:
            raise TargetError(f"{path}: unknown keys in [target]: {sorted(unknown)}")
        caps = data.get("capabilities", {})
        for name in caps:
            if name not in Capability.__members__:
                raise TargetError(f"{path}: unknown capability {name!r} (known: {list(Capability.__members__)})")
        return cls(str(data.get("address", "")), str(data.get("launch", "")), str(data.get("kill", "")),
                   float(data.get("ready_timeout", 20.0)), {k: bool(v) for k, v in caps.items()},
                   str(data.get("tls_ca", "")), False, str(data.get("storage_format", "")),
                   str(data.get("topic_path", "{data_dir}/topics/{topic}")), int(data.get("max_connections", 0)),
                   int(data.get("retention_bytes", 0)), float(data.get("retention_check_s", 60.0)),
                   int(data.get("segment_bytes", 0)), int(data.get("max_subscriptions", 0)),
                   float(data.get("idle_timeout_s", 0.0)), float(data.get("write_timeout_s", 0.0)),
                   int(data.get("max_commit_gaps", 0)), int(data.get("frame_buffer_bytes", 0)),
                   float(data.get("topic_create_rate", 0.0)), int(data.get("topic_create_burst", 0)),
                   int(data.get("max_topics", 0)), str(data.get("admin", "")), str(data.get("token", "")),
                   AuthSpec.from_table(path, data["auth"]) if "auth" in data else None)

    def missing(self, announced: int) -> list[str]:
        """Capabilities the target.toml declares ``= true`` (the target must announce them) that
        HELLO_OK did not announce."""
        return [name for name, on in self.capabilities.items() if on and not announced & Capability[name]]

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


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes of the TCP sockets listening on ``port`` (IPv4 and IPv6), from /proc/net."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f[9])
    return inodes


def _session_processes(sid: int) -> dict[int, int]:
    """pid -> parent pid of every process whose session or process group is ``sid``."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp session ...
        if sid in (int(fields[2]), int(fields[3])):
            out[int(entry)] = int(fields[1])
    return out


def _live_members(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (anything but a zombie). True when
    /proc cannot tell."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp ...
        if int(fields[2]) != pgid:
            continue
        if fields[0] not in ("Z", "X"):
            return True
        # A zombie thread-group leader may still have threads exiting, and they hold the
        # process's files (a lock's descriptor) until the last one is gone.
        try:
            threads = len(os.listdir(f"/proc/{entry}/task"))
        except OSError:
            continue
        if threads > 1:
            return True
    return False


def _socket_holders(pids: dict[int, int], inodes: set[str]) -> list[int]:
    """Which of ``pids`` hold one of the sockets ``inodes``, outermost first (a holder whose parent
    holds it too, e.g. a worker that inherited the listening socket, comes after its parent)."""
    wanted = {f"socket:[{i}]" for i in inodes}
    holders = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    holders.add(pid)
                    break
            except OSError:
                continue
    return sorted(holders, key=lambda p: (pids[p] in holders, p))


class Target:
    """A running target: launched by the kit, or an address it only connects to."""

    def __init__(self, spec: TargetSpec, workdir: Path | None = None, log_dir: Path | None = None,
                 log_name: str = "target.log") -> None:
        if not spec.launch and not spec.address:
            raise TargetError("the target needs an address or a launch command")
        self.spec = spec
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="nanomq-conformance-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.admin_port = 0
        """The port the kit picked for ``{admin_port}`` (0 until a launch needs one)."""
        self.host = "127.0.0.1"
        self.data_dir = self.workdir / "data"
        self.trace_path = self.workdir / "syncs.strace"
        self._log_dir = log_dir
        self.log_path = Path(log_dir) / log_name if log_dir is not None else self.workdir / log_name
        """The target's stdout and stderr, from every start of this run (each start marked)."""
        self._log_opened = False
        self._log_named = False
        """A message pointed at the log: cleanup keeps it even when it is in the working directory."""
        self.created_topics: list[str] = []
        """Every topic name the kit's cases were given (Context.topic() appends), in order."""
        self.warnings: list[str] = []
        """What the kit had to guess about the target (printed when it happens, and reported)."""
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
    def can_twin(self) -> bool:
        """Whether the kit can launch a second, independent instance of this target alongside it:
        the kit launches it (no fixed address), its launch command takes the kit's ``{port}`` and
        ``{data_dir}`` (so two instances cannot share a port or a directory), and a kill command,
        if any, names ``{pid}`` (so killing one cannot kill the other)."""
        s = self.spec
        return (bool(s.launch) and not s.address and "{port}" in s.launch and "{data_dir}" in s.launch
                and (not s.kill or "{pid}" in s.kill))

    def twin(self, log_name: str) -> Target:
        """A second instance of this target (see :attr:`can_twin`), not started: its own
        working directory, port and data directory, its log ``log_name`` beside this one's."""
        if not self.can_twin:
            raise TargetError("this target cannot have a second instance (fixed address, or a launch or kill "
                              "command without the kit's {port}, {data_dir} or {pid})")
        return Target(self.spec, log_dir=self._log_dir, log_name=log_name)

    @property
    def admin_url(self) -> str:
        """The admin API's base URL without a trailing slash ("" when the target declares none)."""
        if not self.spec.admin:
            return ""
        try:
            return self.spec.admin.format(admin_port=self.admin_port).rstrip("/")
        except (KeyError, IndexError, ValueError) as e:
            raise TargetError(f"bad placeholder in admin {self.spec.admin!r}: {e!r} (known: {{admin_port}})") from None

    @property
    def can_crash(self) -> bool:
        """Whether the kit can kill and restart the target (it has a launch command)."""
        return bool(self.spec.launch)

    def _format(self, cmd: str, pid: int = 0) -> str:
        try:
            return cmd.format(port=self.port, data_dir=shlex.quote(str(self.data_dir)),
                              python=shlex.quote(sys.executable), pid=pid, admin_port=self.admin_port)
        except (KeyError, IndexError, ValueError) as e:
            raise TargetError(f"bad placeholder in {cmd!r}: {e!r} (known: {{port}} {{admin_port}} {{data_dir}} {{python}}, "
                              "and {pid} in the kill command; write {{ and }} for literal braces)") from None

    def launch_command(self) -> str:
        """The shell command the kit runs: the launch command with its placeholders filled in,
        under ``strace`` when sync calls are traced. The command goes to ``sh -c`` unchanged (no
        ``exec`` prefix), so variable assignments, compound commands and bare commands on PATH
        work the same with and without the wrapper."""
        cmd = self._format(self.spec.launch)
        if self.spec.trace_syncs:
            cmd = (f"strace -f -ttt -T -y -qq -e trace={','.join(TRACE_SYSCALLS)} "
                   f"-o {shlex.quote(str(self.trace_path))} -- sh -c {shlex.quote(cmd)}")
        return cmd

    def start(self) -> None:
        """Launch (if the kit launches it) and wait until it answers HELLO."""
        if self.spec.launch:
            if self.proc is not None and self.proc.poll() is None:
                raise TargetError("target already running")
            if not self.port or not self.spec.address:
                self.port = self.port or _free_port()
            if not self.admin_port and "{admin_port}" in self.spec.launch + self.spec.admin:
                while (p := _free_port()) == self.port:
                    pass
                self.admin_port = p
            self.data_dir.mkdir(parents=True, exist_ok=True)
            cmd = self.launch_command()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab" if self._log_opened else "wb") as log:
                self._log_opened = True
                log.write(f"=== nanomq-conformance {time.strftime('%H:%M:%S')}: {cmd}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(cmd, shell=True, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
        self.wait_ready()

    def _log_hint(self) -> str:
        """``; log: PATH`` and the log's last lines, for a message about a launched target."""
        if self.proc is None:
            return ""
        self._log_named = True
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-8:]
        except OSError:
            tail = []
        return f"; log: {self.log_path}" + "".join(f"\n    | {line}" for line in tail)

    def wait_ready(self) -> None:
        """Poll the port until a HELLO succeeds (or ready_timeout passes)."""
        deadline = time.monotonic() + self.spec.ready_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None and self._group_gone(0):
                raise TargetError(f"target exited with {self.proc.returncode} during start-up{self._log_hint()}")
            try:
                with WireClient(self.host, self.port, timeout=2.0, ssl_context=self.ssl) as w:
                    w.hello(token=self.spec.token.encode())
                return
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.05)
        raise TargetError(f"target at {self.host}:{self.port} not ready after {self.spec.ready_timeout} s: "
                          f"{last}{self._log_hint()}")

    def warn(self, text: str) -> None:
        """Say (once) what the kit had to guess about the target."""
        if text not in self.warnings:
            self.warnings.append(text)
            print(f"nanomq-conformance: warning: {text}", file=sys.stderr, flush=True)

    def broker_pid(self) -> int | None:
        """The broker's own pid: the process of the launched session (or process group) that holds
        the socket listening on the target's port, found through /proc/net/tcp{,6} and
        /proc/<pid>/fd. That is the broker itself, not the ``sh -c`` that ran the launch command,
        nor the strace wrapper, nor a ``cd x && …`` shell. When no process of the session holds it
        (no /proc, or a broker that left the session), the launched process, with a warning.
        None when the kit did not launch the target."""
        if self.proc is None:
            return None
        holders = _socket_holders(_session_processes(self.proc.pid), _listening_inodes(self.port))
        if holders:
            return holders[0]
        self.warn(f"no process of the launched session listens on port {self.port} (or /proc cannot tell); "
                  f"using the launched process {self.proc.pid} as the broker's pid, which may be a shell "
                  "around it")
        return self.proc.pid

    def kill(self) -> None:
        """Crash the target: the kill command (``{pid}`` is :meth:`broker_pid`), else SIGKILL to
        its process group."""
        if self.proc is None:
            raise TargetError("the kit did not launch the target, so it cannot kill it")
        if self.spec.kill:
            pid = self.broker_pid() if "{pid" in self.spec.kill else 0
            cmd = self._format(self.spec.kill, pid or 0)
            done = subprocess.run(cmd, shell=True, check=False, timeout=30, capture_output=True, text=True)
            if not self._group_gone(30):
                raise TargetError(f"target did not die after the kill command {cmd!r} (exit {done.returncode}"
                                  f"{': ' + done.stderr.strip() if done.stderr.strip() else ''})")
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if not self._group_gone(30):
            raise TargetError(f"target did not die after SIGKILL to its process group {self.proc.pid}")

    def _group_gone(self, timeout: float) -> bool:
        """Wait until every process of the launched group has exited (the launch shell may exit
        before the broker it started, which still holds its port and data directory)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            self.proc.poll()
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                self.proc.wait()
                return True
            if not _live_members(self.proc.pid):
                # Only zombies left: they hold no port, file or mapping any more, just a process
                # table entry until their (possibly slow) reaper collects them.
                self.proc.wait()
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def fresh_start(self) -> None:
        """Stop the target and start it again on a new, empty data directory (a launched target
        only). The crash and storage layers begin this way, so that each restart recovers only
        their own topics and not every topic the earlier layers made."""
        if self.proc is None:
            return
        self.stop()
        self._data_generation = getattr(self, "_data_generation", 0) + 1
        self.data_dir = self.workdir / f"data-{self._data_generation}"
        self.start()

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
        """Stop the target and delete the working directory the kit made (data, traces). The log
        is kept when it is outside it (the report directory), or when a message pointed at it."""
        self.stop()
        if not self._own_workdir:
            return
        keep = self.log_path if self._log_named and self.log_path.parent == self.workdir else None
        if keep is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            return
        for entry in self.workdir.iterdir():
            if entry != keep:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def keep_note(self) -> str:
        """What ``--keep-data`` kept, and where."""
        if self.proc is None:
            return "--keep-data: the kit did not launch the target, so it has no data directory of the kit's"
        trace = f"; strace output: {self.trace_path}" if self.trace_path.exists() else ""
        return f"target data kept in {self.data_dir}{trace}; log: {self.log_path}"

    def leftover_topics(self) -> tuple[list[str], bool]:
        """The topics the kit created on a target it did not launch, and whether the target's
        METADATA confirmed them. They stay there: protocol v1 has no operation that deletes a
        topic. A launched target's topics go with its data directory, so the list is empty. When
        METADATA fails, every name the kit handed out is listed (some may never have been created)."""
        if self.spec.launch or not self.created_topics:
            return [], True
        names = list(dict.fromkeys(self.created_topics))
        try:
            with self.client() as w:
                w.send(Metadata(w.next_id(), ""))
                f = w.recv_response()
        except Exception:
            return names, False
        if not isinstance(f, MetadataOk):
            return names, False
        present = {t.name for t in f.topics}
        return [n for n in names if n in present], True

    def report_meta(self) -> tuple[dict[str, Any], list[str]]:
        """What the reports say about the target when the run ends (call it while the target
        still runs), and the lines to print: where the log is, the warnings, and for a target the
        kit did not launch the topics it created there and cannot delete."""
        meta: dict[str, Any] = {"warnings": list(self.warnings)}
        lines: list[str] = []
        if self.proc is not None:
            meta["log"] = str(self.log_path)
        if not self.spec.launch:
            left, confirmed = self.leftover_topics()
            meta["created_topics"] = left
            meta["created_topics_confirmed"] = confirmed
            if left:
                lines.append(f"{len(left)} topics named cf-… (e.g. {left[0]}) were created on {self.host}:{self.port} "
                             + ("" if confirmed else "(METADATA failed, so these are the names the kit used) ")
                             + "and cannot be deleted over protocol v1, which has no delete operation; "
                             "the list is in index.json (target.created_topics)")
        return meta, lines

    def restart_after_crash(self) -> None:
        """Kill, then launch again on the same port and data directory."""
        self.kill()
        self.start()

    def topic_dir(self, topic: str) -> Path:
        """The directory holding ``topic`` on disk (targets with a ``storage_format`` only)."""
        return Path(self.spec.topic_path.format(data_dir=self.data_dir, topic=topic))

    def client(self, timeout: float = 10.0, token: str | None = None) -> WireClient:
        """A new connection that has done HELLO (with ``token``, default the target's own)."""
        w = WireClient(self.host, self.port, timeout=timeout, ssl_context=self.ssl)
        try:
            w.hello(token=(self.spec.token if token is None else token).encode())
        except BaseException:
            w.close()
            raise
        return w

    def raw_client(self, timeout: float = 10.0) -> WireClient:
        """A new connection without HELLO."""
        return WireClient(self.host, self.port, timeout=timeout, ssl_context=self.ssl)
