"""A NanoMQ broker as a child process, for tests, benchmarks and scripts: needs nothing but nanomq.

::

    from nanomq.testing import BrokerProcess      # (this class; the pytest fixture lives there too)

    with BrokerProcess("/tmp/nanomq-data") as broker:
        with nanomq.Publisher(broker.address) as pub:
            pub.publish("orders", b"hello")

The broker (``python -m nanomq.cli.broker``) listens on a free 127.0.0.1 port, with 8 MB log
segments unless you pass your own ``--log-segment-size`` (each topic preallocates one segment).
``restart()`` keeps port and data, ``kill()`` is SIGKILL (for crash tests).

With ``principals=`` the broker runs with ``--auth-file`` (spec/protocol.md §10), written for you
with each plaintext token hashed; :meth:`BrokerProcess.set_principals` rewrites it and sends SIGHUP
(hot reload, connections kept)::

    principals = {"alice": {"token": "alice:" + "a" * 32, "permissions": {"alice-*": ["publish", "subscribe", "create"]}},
                  "bob": {"token": "bob:" + "b" * 32, "permissions": {"alice-*": ["subscribe"]}, "max_connections": 2}}
    with BrokerProcess("/tmp/nanomq-data", principals=principals) as broker:
        with nanomq.Publisher(broker.address, token=principals["alice"]["token"]) as pub:
            pub.publish("alice-orders", b"hello")
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BrokerProcess"]

_READY = re.compile(r"listening on (\S+):(\d+)")
_ADMIN = re.compile(r"admin API on http://(\S+):(\d+)")


class BrokerProcess:
    """A ``nanomq-broker`` child process. Not started until :meth:`start`."""

    def __init__(self, data_dir: str | os.PathLike[str], args: Sequence[str] = (), host: str = "127.0.0.1",
                 principals: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """``principals``: name -> the keys of an auth-file entry, with ``token`` in plaintext
        (hashed when written); None: no authentication."""
        self.data_dir = Path(data_dir)
        self.auth_path: Path | None = None
        """The auth file written for ``principals`` (None without)."""
        if principals is not None:
            if "--auth-file" in args:
                raise ValueError("give principals= or --auth-file, not both")
            self.auth_path = self.data_dir.parent / f"{self.data_dir.name}.users.toml"
            write_auth_file(self.auth_path, principals)
            args = [*args, "--auth-file", str(self.auth_path)]
        # Small segments unless the caller chose: each topic preallocates one, and tests make many.
        self.args = list(args) if "--log-segment-size" in args else ["--log-segment-size", "8MB", *args]
        self.host = host
        self.port = 0
        self.admin_port = 0
        """The admin API's port once started with ``--admin-port`` (0: no admin API)."""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.broker.log"

    @property
    def address(self) -> str:
        """``host:port`` to give to Publisher / Subscriber."""
        if not self.port:
            raise RuntimeError("broker not started")
        return f"{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        """``http://host:port`` of the admin API (started with ``--admin-port``)."""
        if not self.admin_port:
            raise RuntimeError("broker not started with --admin-port")
        return f"http://{self.host}:{self.admin_port}"

    @property
    def pid(self) -> int:
        """The broker's process id."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> BrokerProcess:
        """Start and wait until it listens (the first start picks a free port; restarts reuse it)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("broker already running")
        cmd = [sys.executable, "-m", "nanomq.cli.broker", "--host", self.host, "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--log-level", "warning", *self.args]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            text = line.decode(errors="replace")
            admin = _ADMIN.search(text)
            if admin:
                self.admin_port = int(admin.group(2))
                if "--admin-port" in self.args:  # a restart reuses the port it picked
                    i = self.args.index("--admin-port")
                    self.args[i + 1] = str(self.admin_port)
                continue
            m = _READY.search(text)
            if m:
                self.port = int(m.group(2))
                return self
        self.kill()
        raise RuntimeError(f"broker did not start: {line!r}; log:\n{self.log_path.read_text(errors='replace')[-4000:]}")

    def stop(self, timeout: float = 20.0) -> int:
        """Graceful shutdown (SIGTERM): drain, sync, clean-shutdown marker. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self._close_pipe()
        return code

    def set_principals(self, principals: Mapping[str, Mapping[str, Any]]) -> None:
        """Rewrite the auth file and tell the running broker to reload it (SIGHUP): connections
        stay open, unless their principal lost what they use (spec/protocol.md [NMQ-10-6])."""
        if self.auth_path is None:
            raise RuntimeError("this broker was started without principals=")
        write_auth_file(self.auth_path, principals)
        self.reload()

    def reload(self) -> None:
        """SIGHUP: the broker reads its --auth-file again."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("broker not running")
        self.proc.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as in a crash (the page cache survives)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close_pipe()

    def restart(self, timeout: float = 20.0) -> BrokerProcess:
        """Stop (if running) and start again on the same port and data directory."""
        self.stop()
        return self.start(timeout)

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> BrokerProcess:
        """:meth:`start`."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """:meth:`stop`."""
        self.stop()


def write_auth_file(path: Path, principals: Mapping[str, Mapping[str, Any]]) -> None:
    """Write an ``--auth-file`` for ``principals`` (name -> entry keys; ``token`` in plaintext is
    stored hashed), atomically: a broker reloading it never reads half a file."""
    from nanomq.broker.auth import hash_token  # only here: scrypt is not needed otherwise

    lines: list[str] = []
    for name, entry in principals.items():
        lines.append(f"[principals.{json.dumps(name)}]")
        perms: Mapping[str, Any] = {}
        for key, value in entry.items():
            if key == "permissions":
                perms = value
                continue
            if key == "token":
                value = hash_token(value)
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append(f"[principals.{json.dumps(name)}.permissions]")
        lines += [f"{json.dumps(pattern)} = {json.dumps(list(actions))}" for pattern, actions in perms.items()]
        lines.append("")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
