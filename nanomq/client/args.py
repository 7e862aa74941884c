"""Checks of what the application passes in, shared by the blocking and the asyncio clients.

Each function returns the value in the form the client uses, or raises
:class:`~nanomq.client.errors.InvalidArgumentError` (a ``ValueError``) or
:class:`~nanomq.client.errors.ArgumentTypeError` (a ``TypeError``) before anything is sent.
"""

from __future__ import annotations

import math
import os
import re
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nanomq.client.errors import ArgumentTypeError, InvalidArgumentError
from nanomq.protocol import Ack, Start, valid_topic

__all__ = [
    "ACK_MODES", "DEFAULT_PORT", "START_POSITIONS", "Options", "ack_mode", "compression_threshold", "max_msgs",
    "options", "parse_address", "payload", "payloads", "poll_timeout", "record_id", "record_ids", "spin_us",
    "start_position", "tls_context", "auth_token", "topic", "u64", "window",
]

DEFAULT_PORT = 9000
ACK_MODES = {"none": Ack.NONE, "written": Ack.WRITTEN, "durable": Ack.DURABLE}
START_POSITIONS = {"earliest": Start.EARLIEST, "latest": Start.LATEST, "id": Start.ID, "timestamp": Start.TIMESTAMP}
MAX_WINDOW = 1 << 20
MAX_SPIN_US = 1_000_000
DEFAULT_POLL_US = 1_000_000
_U64 = (1 << 64) - 1
_ADDR = re.compile(r"^(?:tcp://|tls://)?(\[[0-9a-fA-F:.]+\]|[^:/\s]+)(?::(\d{1,5}))?/?$")
_BYTES = (bytes, bytearray, memoryview)


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be a whole number (int), not {type(value).__name__}")
    return value


def _in_range(name: str, value: object, low: int, high: int) -> int:
    n = _int(name, value)
    if not low <= n <= high:
        raise InvalidArgumentError(f"{name} must be {low} .. {high}, not {n}")
    return n


def _seconds(name: str, value: object, *, allow_zero: bool, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentTypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or v < 0 or (v == 0 and not allow_zero) or (math.isinf(v) and not allow_inf):
        what = ">= 0" if allow_zero else "> 0"
        raise InvalidArgumentError(f"{name} must be a {'' if allow_inf else 'finite '}number of seconds {what}, "
                                   f"not {value!r}")
    return v


def parse_address(address: str) -> tuple[str, int]:
    """``host:port``, ``tcp://host:port``, ``tls://host:port`` or ``host`` (port 9000) -> (host, port)."""
    if not isinstance(address, str):
        raise ArgumentTypeError(f"the broker address must be a str, not {type(address).__name__}")
    m = _ADDR.match(address.strip())
    if not m:
        raise InvalidArgumentError(f"bad broker address {address!r}: expected host:port, tcp://host:port "
                                   "or tls://host:port")
    host = m.group(1).strip("[]")
    port = int(m.group(2)) if m.group(2) else DEFAULT_PORT
    if not 0 < port < 65536:
        raise InvalidArgumentError(f"bad port in broker address {address!r}")
    return host, port


def tls_context(address: str, ssl_context: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """The TLS context to connect with: ``ssl_context`` if given, a default one (system CAs,
    host name checked) for a ``tls://`` address, else None (plain TCP)."""
    if ssl_context is not None:
        if not isinstance(ssl_context, ssl.SSLContext):
            raise ArgumentTypeError(f"ssl_context must be an ssl.SSLContext, not {type(ssl_context).__name__}")
        return ssl_context
    if address.strip().startswith("tls://"):
        return ssl.create_default_context()
    return None


@dataclass(frozen=True, slots=True)
class Options:
    """How one client reaches its broker, checked."""

    address: str
    host: str
    port: int
    tls: ssl.SSLContext | None
    timeout: float
    """Seconds a request may wait for its answer."""
    connect_timeout: float
    """Seconds a connection (with its retries) may take."""
    client_name: str


def auth_token(token: str | bytes | None) -> bytes:
    """HELLO's auth_token: ``token`` (str as UTF-8), else ``$NANOMQ_TOKEN``, else none."""
    if token is None:
        token = os.environ.get("NANOMQ_TOKEN", "")
    if isinstance(token, str):
        token = token.encode()
    if not isinstance(token, bytes):
        raise ArgumentTypeError(f"token must be str or bytes, not {type(token).__name__}")
    if len(token) > 0xFFFF:
        raise InvalidArgumentError("token must be at most 65535 bytes")
    return token


def options(address: str, *, client_name: str, timeout: float, connect_timeout: float,
            ssl_context: ssl.SSLContext | None, tls_cert: str | os.PathLike[str] | None = None,
            tls_key: str | os.PathLike[str] | None = None, tls_ca: str | os.PathLike[str] | None = None) -> Options:
    """Every connection argument of a client, checked. ``tls_cert`` / ``tls_key``: a client
    certificate (PEM) presented to the broker; ``tls_ca``: the PEM certificate(s) to trust for the
    broker's instead of the system's (both for a ``tls://`` address)."""
    host, port = parse_address(address)
    tls = tls_context(address, ssl_context)
    if tls_ca is not None:
        if ssl_context is not None:
            raise InvalidArgumentError("tls_ca with ssl_context: give one of them")
        if tls is None:
            raise InvalidArgumentError("tls_ca needs a tls://host:port address")
        try:
            tls = ssl.create_default_context(cafile=os.fspath(tls_ca))
        except (OSError, ssl.SSLError) as e:
            raise InvalidArgumentError(f"cannot load tls_ca {os.fspath(tls_ca)}: {e}") from None
    if tls_key is not None and tls_cert is None:
        raise InvalidArgumentError("tls_key needs tls_cert")
    if tls_cert is not None:
        if ssl_context is not None:
            raise InvalidArgumentError("tls_cert with ssl_context: load the certificate into your context "
                                       "(ssl_context.load_cert_chain) instead")
        if tls is None:
            raise InvalidArgumentError("tls_cert needs a tls://host:port address")
        try:
            tls.load_cert_chain(os.fspath(tls_cert), os.fspath(tls_key) if tls_key is not None else None)
        except (OSError, ssl.SSLError) as e:
            raise InvalidArgumentError(f"cannot load the client certificate {os.fspath(tls_cert)}: {e}") from None
    if not isinstance(client_name, str):
        raise ArgumentTypeError(f"client_name must be a str, not {type(client_name).__name__}")
    if len(client_name.encode()) > 255:
        raise InvalidArgumentError("client_name must be at most 255 bytes of UTF-8")
    return Options(address, host, port, tls,
                   _seconds("timeout", timeout, allow_zero=False),
                   _seconds("connect_timeout", connect_timeout, allow_zero=False), client_name)


def ack_mode(ack: str) -> Ack:
    """``"none"``, ``"written"`` or ``"durable"`` -> the wire's ack mode."""
    if ack not in ACK_MODES:
        raise InvalidArgumentError(f"ack must be one of {sorted(ACK_MODES)}, not {ack!r}")
    return ACK_MODES[ack]


def window(n: int) -> int:
    """Records per subscription the broker may push ahead of the application: 1 .. 2^20."""
    return _in_range("window", n, 1, MAX_WINDOW)


def spin_us(n: int) -> float:
    """Microseconds to busy-poll before blocking (0 .. 1,000,000) -> seconds."""
    return _in_range("spin_us", n, 0, MAX_SPIN_US) / 1e6


def topic(name: str) -> str:
    """A topic name: 1-255 characters of A-Z a-z 0-9 . _ -"""
    if not isinstance(name, str):
        raise ArgumentTypeError(f"topic must be a str, not {type(name).__name__}")
    if not valid_topic(name):
        raise InvalidArgumentError(f"invalid topic {name!r}: 1-255 characters of A-Z a-z 0-9 . _ -")
    return name


def payload(data: bytes) -> bytes:
    """One record's payload: bytes, bytearray or memoryview (a ``str`` is refused: encode it)."""
    if not isinstance(data, _BYTES):
        raise ArgumentTypeError(f"data must be bytes, bytearray or memoryview, not {type(data).__name__}")
    return bytes(data)


def payloads(items: Iterable[bytes]) -> list[bytes]:
    """Every payload of a batch, checked as :func:`payload` checks one."""
    if isinstance(items, (*_BYTES, str)):
        raise ArgumentTypeError("payloads must be an iterable of bytes, not a single bytes or str object")
    out = list(items)
    if all(type(p) is bytes for p in out):  # the usual case: nothing to convert (bytes are immutable)
        return out
    return [payload(p) for p in out]


def u64(name: str, value: int) -> int:
    """A value of a u64 wire field: 0 .. 2^64-1."""
    return _in_range(name, value, 0, _U64)


def start_position(start: str, value: int) -> tuple[Start, int]:
    """``start`` (earliest, latest, id, timestamp) and its ``value`` -> the wire's start kind."""
    if start not in START_POSITIONS:
        raise InvalidArgumentError(f"start must be one of {sorted(START_POSITIONS)}, not {start!r}")
    return START_POSITIONS[start], u64("value", value)


def poll_timeout(timeout_us: int | None, timeout: float | None) -> float:
    """Seconds to wait, from ``timeout_us`` (microseconds, an int, as in the seed API) or
    ``timeout`` (seconds, a number, ``math.inf`` for no limit); at most one of them. Neither:
    1 second."""
    if timeout is not None:
        if timeout_us is not None:
            raise ArgumentTypeError("give timeout_us (microseconds) or timeout (seconds), not both")
        return _seconds("timeout", timeout, allow_zero=True, allow_inf=True)
    if timeout_us is None:
        return DEFAULT_POLL_US / 1e6
    if isinstance(timeout_us, float):
        raise ArgumentTypeError(f"timeout_us is a whole number of microseconds, not the float {timeout_us!r}; "
                                "for seconds, pass timeout=...")
    return u64("timeout_us", timeout_us) / 1e6


def max_msgs(n: int) -> int:
    """How many messages one poll may return: at least 1."""
    return _in_range("max_msgs", n, 1, _U64)


def record_id(message_id: int) -> int:
    """A record id: 1 .. 2^64-1 (0 means no record)."""
    return _in_range("message id", message_id, 1, _U64)


def record_ids(ids: Sequence[int]) -> list[int]:
    """Ids to commit: at least one, each a record id."""
    if isinstance(ids, int):
        raise ArgumentTypeError("ids must be a sequence of record ids; for one id use commit()")
    out = [record_id(i) for i in ids]
    if not out:
        raise InvalidArgumentError("nothing to commit")
    return out


def compression_threshold(nbytes: int | None) -> int | None:
    """Payloads above this many bytes are LZ4-compressed; None: never."""
    return None if nbytes is None else _in_range("threshold", nbytes, 0, _U64)
