"""Broker configuration: every knob the CLI exposes, with the defaults a user gets."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nanomq.cli.sizes import format_size  # sizes spelled as the flags take them
from nanomq.protocol import DEFAULT_MAX_FRAME, DEFAULT_MAX_PAYLOAD, MAX_BATCH, RECORD_HEADER_SIZE
from nanomq.storage import SyncPolicy

MIN_SEGMENT = 1024 * 1024
MAX_SEGMENT = 1 << 40
"""The log's own bounds on a segment (nanomq._c.log refuses more than 1 TiB)."""
MAX_PAYLOAD = 16 * 1024 * 1024
MAX_FRAME_FIELD = 0xFFFF_FFFF
"""HELLO_OK carries max_frame in a u32."""
MAX_CONNECTIONS = 1_000_000
MIN_TIMEOUT_S = 0.01
MAX_TIMEOUT_S = 86_400.0
MAX_RETENTION_MS = 1_000_000 * 86_400_000
"""A million days: the log keeps retention in a u64 of milliseconds."""
MAX_RETENTION_BYTES = 1 << 60
MAX_COMMIT_GAPS = 1 << 20
MIN_FRAME_BUFFER = 1024 * 1024
MAX_TOPICS = 1_000_000
MAX_TOPIC_RATE = 100_000.0


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
    fsync: SyncPolicy = "always"
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
    """Topics the broker holds at most; creating one more is RESOURCE_LIMIT ([NMQ-6.2-5])."""
    topic_create_rate: float = 100.0
    """Topics created per second at most, broker-wide, on average ([NMQ-6.2-5]): each new topic
    preallocates a segment, so a client subscribing to names it makes up fills the disk as fast as
    it is allowed to. 0: no rate limit."""
    topic_create_burst: int = 1000
    """Topics that may be created at once (the token bucket's size) before ``topic_create_rate``
    applies: a deployment that creates its topics together at start is not slowed."""
    max_commit_gaps: int = 4096
    """Per connection: the runs of committed ids above a subscription's committed position (ids
    committed out of order, past a gap) it keeps, over all its subscriptions ([NMQ-4.7-5])."""
    frame_buffer_bytes: int = 64 * 1024 * 1024
    """Bytes of frames still arriving that the broker holds, all connections together: a large
    frame (over 64 KiB) is read only once its whole size fits, else its connection waits
    unread for room ([NMQ-6.2-6]). One frame is always let in, however large."""
    write_buffer_bytes: int = 4 * 1024 * 1024
    """Per connection: above this much unsent output the broker stops delivering to it and stops
    reading its requests until the client drains its socket (bounded memory per slow client)."""
    hello_timeout_s: float = 10.0
    frame_timeout_s: float = 30.0
    """A connection holding a partial frame this long is closed (slow-loris defence)."""
    idle_timeout_s: float = 600.0
    """A connection without subscriptions that has sent no frame for this long is closed
    ([NMQ-2-5]); 0: never."""
    write_timeout_s: float = 60.0
    """A connection whose unsent output has stayed above ``write_buffer_bytes`` this long (the
    client does not read) is dropped ([NMQ-6.2-7])."""
    retention_check_s: float = 60.0
    trim_interval_s: float = 1.0
    """How often the logs' mapped pages are dropped from the broker's resident set."""
    server_name: str = "nanomq"
    tls_cert: Path | None = None
    """PEM certificate chain; with it the broker speaks only TLS and announces capability TLS."""
    tls_key: Path | None = None
    """PEM private key (omit when the certificate file holds it too)."""
    tls_client_ca: Path | None = None
    """PEM certificate(s) of the authority that signs client certificates: a client presenting a
    certificate it signed proves the principal the certificate names (needs ``tls_cert`` and
    ``auth_file``; spec/protocol.md [NMQ-10-1])."""
    auth_file: Path | None = None
    """The principals (nanomq/broker/auth.py): with it the broker announces AUTH, every HELLO must
    prove a principal, and every request is checked against its permissions and quotas."""
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    """The event loop: ``auto`` is uvloop when installed, else asyncio's (nanomq/broker/loop.py)."""
    busy_poll_us: int = 0
    """> 0: spin this many µs polling for events before each blocking wait (asyncio's loop)."""
    data_plane: Literal["c", "python"] = "c"
    """``c``: PUBLISH (appended in C for every ack mode, acked in C for none/written), PING and
    DELIVER take the C fast path
    (``nanomq/_c/src/plane.c``); ``python``: every frame goes through the Python handlers (the
    reference the fast path is measured and tested against)."""
    admin_host: str = "127.0.0.1"
    """Where the admin HTTP API listens (spec/admin.md); loopback unless told otherwise."""
    admin_port: int | None = None
    """The admin API's TCP port (0 picks a free one); None: no admin API (the default)."""
    verify_on_start: bool = False
    """Verify every record of every topic at start (``verify_all``), instead of trusting what the
    checkpoints vouch for and verifying it when first read: damage is then found and quarantined
    at start ([NMQ-S9-2], [NMQ-S9-7]). Costs a full read of the logs (0.3-0.9 s per GiB cached)."""

    def validate(self) -> None:
        """Raise ValueError, naming the ``nanomq-broker`` flag, for any setting that cannot work.

        Every bound here is one the rest of the broker relies on (the log's own limits, the u32
        fields of HELLO_OK), so a configuration that passes never fails later at its first request.
        nan and inf fail every range check below (chained comparisons with nan are False).
        """
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be 0..65535 (0 picks a free port), not {self.port}")
        self._check_host()
        if self.admin_port is not None:
            if not isinstance(self.admin_port, int) or not 0 <= self.admin_port <= 65535:
                raise ValueError(f"--admin-port must be 0..65535 (0 picks a free port), not {self.admin_port}")
            if self.admin_port and self.admin_port == self.port and self.admin_host == self.host:
                raise ValueError(f"--admin-port {self.admin_port} is the client port (--port): give it another one")
            self._check_host(self.admin_host, "--admin-host")
        if not MIN_SEGMENT <= self.segment_bytes <= MAX_SEGMENT:
            raise ValueError(f"--log-segment-size must be at least 1 MiB and at most 1 TiB, not "
                             f"{format_size(self.segment_bytes)}")
        if self.fsync not in ("always", "interval", "never"):
            raise ValueError(f"--fsync must be always, interval or never, not {self.fsync!r}")
        if self.fsync == "interval" and not 1 <= self.fsync_interval_ms <= 60_000:
            raise ValueError(f"--fsync-interval-ms must be 1 .. 60000, not {self.fsync_interval_ms}")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise ValueError(f"--loop must be auto, asyncio or uvloop, not {self.loop!r}")
        if not 0 <= self.busy_poll_us <= 1_000_000:
            raise ValueError(f"--busy-poll must be 0 .. 1000000 µs, not {self.busy_poll_us}")
        if self.busy_poll_us and self.loop == "uvloop":
            raise ValueError("--busy-poll needs --loop asyncio (or auto): uvloop cannot spin")
        if self.loop == "uvloop" and self.tls_cert is not None:
            raise ValueError("--loop uvloop cannot serve TLS (--tls-cert): use --loop asyncio or auto")
        if self.loop == "uvloop":
            from nanomq.broker.loop import uvloop_available

            if not uvloop_available():
                raise ValueError("--loop uvloop: the uvloop package is not installed")
        if self.data_plane not in ("c", "python"):
            raise ValueError(f"--data-plane must be c or python, not {self.data_plane!r}")
        if self.compression not in ("lz4", "none"):
            raise ValueError(f"--compression must be lz4 or none, not {self.compression!r}")
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ValueError(f"max batch must be 1..{MAX_BATCH}, not {self.max_batch}")
        if not 1 <= self.max_payload <= MAX_PAYLOAD:
            raise ValueError(f"--max-payload must be 1B .. 16MiB, not {format_size(self.max_payload)}")
        if self.segment_bytes < RECORD_HEADER_SIZE + (self.max_payload + 7) // 8 * 8:
            raise ValueError(f"--log-segment-size {format_size(self.segment_bytes)} cannot hold a record of "
                             f"--max-payload {format_size(self.max_payload)} plus its 64-byte header (a record "
                             "never spans segments): raise the segment size or lower the payload limit")
        if self.max_frame < 16 + 8 + 255 + self.max_batch * 64 + self.max_payload:
            raise ValueError("max frame is too small for one maximum record")
        if self.max_frame > MAX_FRAME_FIELD:
            raise ValueError(f"max frame must fit HELLO_OK's u32 field (at most {MAX_FRAME_FIELD})")
        if not 1 <= self.max_connections <= MAX_CONNECTIONS:
            raise ValueError(f"--max-connections must be 1 .. {MAX_CONNECTIONS}, not {self.max_connections}")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("--tls-key needs --tls-cert")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert (client certificates are checked inside TLS)")
        if self.tls_client_ca is not None and self.auth_file is None:
            raise ValueError("--tls-client-ca needs --auth-file (the principals that certificates name)")
        for flag, value in (("--handshake-timeout", self.hello_timeout_s), ("--frame-timeout", self.frame_timeout_s),
                            ("--write-timeout", self.write_timeout_s)):
            if not MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S:
                raise ValueError(f"{flag} must be {MIN_TIMEOUT_S} .. {MAX_TIMEOUT_S:.0f} seconds, not {value}")
        if not (self.idle_timeout_s == 0 or MIN_TIMEOUT_S <= self.idle_timeout_s <= MAX_TIMEOUT_S):
            raise ValueError(f"--idle-timeout must be 0 (never) or {MIN_TIMEOUT_S} .. {MAX_TIMEOUT_S:.0f} seconds, "
                             f"not {self.idle_timeout_s}")
        if not 1 <= self.max_topics <= MAX_TOPICS:
            raise ValueError(f"--max-topics must be 1 .. {MAX_TOPICS}, not {self.max_topics}")
        if not 0 <= self.topic_create_rate <= MAX_TOPIC_RATE:
            raise ValueError(f"--topic-create-rate must be 0 (no limit) .. {MAX_TOPIC_RATE:.0f} per second, "
                             f"not {self.topic_create_rate}")
        if not 1 <= self.topic_create_burst <= MAX_TOPICS:
            raise ValueError(f"--topic-create-burst must be 1 .. {MAX_TOPICS}, not {self.topic_create_burst}")
        if not 1 <= self.max_commit_gaps <= MAX_COMMIT_GAPS:
            raise ValueError(f"--max-commit-gaps must be 1 .. {MAX_COMMIT_GAPS}, not {self.max_commit_gaps}")
        if not MIN_FRAME_BUFFER <= self.frame_buffer_bytes <= MAX_RETENTION_BYTES:
            raise ValueError(f"--max-frame-buffer must be 1MiB .. 1EiB, not {format_size(self.frame_buffer_bytes)}")
        if self.retention_ms is not None and not 1 <= self.retention_ms <= MAX_RETENTION_MS:
            raise ValueError(f"--retention-days must be at least 1 ms (1.2e-8 days) and at most "
                             f"{MAX_RETENTION_MS // 86_400_000} days")
        if self.retention_bytes is not None and not 1 <= self.retention_bytes <= MAX_RETENTION_BYTES:
            raise ValueError(f"--retention-bytes must be 1B .. 1EiB, not {format_size(self.retention_bytes)}")
        if not MIN_TIMEOUT_S <= self.retention_check_s <= MAX_TIMEOUT_S:
            raise ValueError(f"--retention-check-interval must be {MIN_TIMEOUT_S} .. {MAX_TIMEOUT_S:.0f} seconds, "
                             f"not {self.retention_check_s}")
        if not 0 < self.trim_interval_s <= MAX_TIMEOUT_S:
            raise ValueError(f"trim interval must be > 0 and at most {MAX_TIMEOUT_S:.0f} seconds")
        for name, v in (("max subscriptions", self.max_subscriptions), ("write buffer bytes", self.write_buffer_bytes)):
            if v < 1:
                raise ValueError(f"{name} must be at least 1, not {v}")

    def _check_host(self, host: str | None = None, flag: str = "--host") -> None:
        """``host`` (default --host) must be an address this machine can listen on (resolved as
        create_server would)."""
        host = self.host if host is None else host
        if host in ("", "0.0.0.0", "::"):  # every interface
            return
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (socket.gaierror, UnicodeError, ValueError) as e:
            raise ValueError(f"{flag} {host!r} is not an address to listen on ({e})") from None
