"""Broker configuration: every knob the CLI exposes, with the defaults a user gets."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nanomq.protocol import DEFAULT_MAX_FRAME, DEFAULT_MAX_PAYLOAD, MAX_BATCH

FsyncPolicy = Literal["always", "interval", "never"]


def default_data_dir() -> Path:
    """``$NANOMQ_DATA_DIR``, else ``$XDG_DATA_HOME/nanomq``, else ``~/.local/share/nanomq``."""
    if env := os.environ.get("NANOMQ_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "nanomq"


@dataclass(slots=True)
class BrokerConfig:
    """What one broker process serves, where it stores it and the limits it enforces."""

    host: str = "127.0.0.1"
    port: int = 9000
    data_dir: Path = field(default_factory=default_data_dir)
    segment_bytes: int = 100 * 1024 * 1024
    retention_ms: int | None = None
    retention_bytes: int | None = None
    fsync: FsyncPolicy = "always"
    fsync_interval_ms: int = 10
    compression: Literal["lz4", "none"] = "lz4"
    """``lz4``: announce COMPRESSION_LZ4 and store compressed records; ``none``: refuse them."""
    max_connections: int = 1024
    max_frame: int = DEFAULT_MAX_FRAME
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_batch: int = MAX_BATCH
    max_subscriptions: int = 1024
    """Per connection."""
    max_topics: int = 10_000
    write_buffer_bytes: int = 4 * 1024 * 1024
    """Per connection: above this much unsent output the broker stops delivering to it and stops
    reading its requests until the client drains its socket (bounded memory per slow client)."""
    hello_timeout_s: float = 10.0
    frame_timeout_s: float = 30.0
    """A connection holding a partial frame this long is closed (slow-loris defence)."""
    retention_check_s: float = 60.0
    trim_interval_s: float = 1.0
    """How often the logs' mapped pages are dropped from the broker's resident set."""
    server_name: str = "nanomq"
    tls_cert: Path | None = None
    """PEM certificate chain; with it the broker speaks only TLS and announces capability TLS."""
    tls_key: Path | None = None
    """PEM private key (omit when the certificate file holds it too)."""

    def validate(self) -> None:
        """Raise ValueError for settings that cannot work."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not in 0..65535")
        if self.segment_bytes < 1024 * 1024:
            raise ValueError("segment size must be at least 1 MiB")
        if self.fsync not in ("always", "interval", "never"):
            raise ValueError(f"unknown fsync policy {self.fsync!r}")
        if self.compression not in ("lz4", "none"):
            raise ValueError(f"unknown compression {self.compression!r} (lz4 or none)")
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ValueError(f"max batch must be 1..{MAX_BATCH}")
        if not 1 <= self.max_payload <= 16 * 1024 * 1024:
            raise ValueError("max payload must be 1 B .. 16 MiB")
        if self.max_frame < 16 + 8 + 255 + self.max_batch * 64 + self.max_payload:
            raise ValueError("max frame is too small for one maximum record")
        if self.max_connections < 1:
            raise ValueError("max connections must be at least 1")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("--tls-key needs --tls-cert")
        if self.hello_timeout_s <= 0 or self.frame_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.retention_ms is not None and self.retention_ms <= 0:
            raise ValueError("retention must be positive")
        if self.retention_bytes is not None and self.retention_bytes <= 0:
            raise ValueError("retention bytes must be positive")
        if not 0.01 <= self.retention_check_s <= 86_400:  # also refuses nan and inf
            raise ValueError("the retention check interval must be 0.01 .. 86400 seconds")
