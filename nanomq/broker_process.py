"""A NanoMQ broker as a child process, for tests, benchmarks and scripts: needs nothing but nanomq.

::

    from nanomq.testing import BrokerProcess      # (this class; the pytest fixture lives there too)

    with BrokerProcess("/tmp/nanomq-data") as broker:
        with nanomq.Publisher(broker.address) as pub:
            pub.publish("orders", b"hello")

The broker (``python -m nanomq.cli.broker``) listens on a free 127.0.0.1 port, with 8 MB log
segments unless you pass your own ``--log-segment-size`` (each topic preallocates one segment).
``restart()`` keeps port and data, ``kill()`` is SIGKILL (for crash tests).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BrokerProcess"]

_READY = re.compile(r"listening on (\S+):(\d+)")
_ADMIN = re.compile(r"admin API on http://(\S+):(\d+)")


class BrokerProcess:
    """A ``nanomq-broker`` child process. Not started until :meth:`start`."""

    def __init__(self, data_dir: str | os.PathLike[str], args: Sequence[str] = (), host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir)
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
