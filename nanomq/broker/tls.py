"""TLS for the broker: loading the certificate (errors that name the file) and the accept path.

:func:`load_server_context` builds the server's SSLContext. Every failure is a
:class:`TlsConfigError` (a ValueError) whose message names the flag and the file and says what is
wrong in words: a file that cannot be read, one without a PEM certificate, a certificate given
without its private key, an encrypted key, a key that does not match the certificate.

:class:`TlsAcceptor` is the protocol factory of a TLS listener. Each new connection first *peeks*
at its first byte (MSG_PEEK on a duplicate of the socket's descriptor: nothing is consumed). A TLS
ClientHello starts with the handshake record type 0x16; then the connection is upgraded with
``loop.start_tls`` and handed to the broker's protocol. Anything else is a plaintext client: it is
answered, in plaintext, with one ERROR frame (request_id 0, BAD_STATE) saying that this broker
expects TLS, and closed. A connection that sends nothing is closed after the handshake timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from nanomq.protocol import Error, ErrorCode, encode

if TYPE_CHECKING:
    from nanomq.broker.connection import Connection

__all__ = ["TlsConfigError", "load_server_context", "TlsAcceptor", "PLAINTEXT_REFUSAL"]

_log = logging.getLogger("nanomq.broker")

PLAINTEXT_REFUSAL = ("this broker accepts TLS connections only: connect with tls://host:port "
                     "(or give the client an ssl_context)")
_TLS_HANDSHAKE = 0x16
"""First byte of every TLS record carrying a handshake message (a ClientHello opens with one)."""


class TlsConfigError(ValueError):
    """--tls-cert / --tls-key cannot be used; the message names the file and the reason."""


def _read(flag: str, path: Path) -> str:
    try:
        return path.read_bytes().decode("ascii", "replace")
    except OSError as e:
        raise TlsConfigError(f"{flag} {path}: cannot read it: {e.strerror or e}") from None


def load_server_context(cert: Path, key: Path | None, client_ca: Path | None = None) -> ssl.SSLContext:
    """The broker's TLS context (TLS 1.2 or newer) for certificate chain ``cert`` and private key
    ``key`` (None: the key is in the certificate file). With ``client_ca``, clients may present a
    certificate, which must verify against it (a client without one still connects, and proves a
    principal by token: spec/protocol.md [NMQ-10-1])."""
    cert_text = _read("--tls-cert", cert)
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise TlsConfigError(f"--tls-cert {cert}: no PEM certificate in it (expected a "
                             "-----BEGIN CERTIFICATE----- block)")
    key_flag, key_path = ("--tls-key", key) if key is not None else ("--tls-cert", cert)
    key_text = _read("--tls-key", key) if key is not None else cert_text
    if "PRIVATE KEY-----" not in key_text:
        if key is None:
            raise TlsConfigError(f"--tls-cert {cert} holds a certificate but no private key: give the key "
                                 "with --tls-key FILE (or append it to the certificate file)")
        raise TlsConfigError(f"--tls-key {key}: no PEM private key in it (expected a "
                             "-----BEGIN PRIVATE KEY----- block)")
    if "ENCRYPTED" in key_text:
        raise TlsConfigError(f"{key_flag} {key_path}: the private key is encrypted; the broker needs it "
                             "unencrypted (e.g. openssl pkey -in KEY -out PLAIN)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # password: never prompt on the terminal (an encrypted key the check above missed fails)
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None, password=b"")
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        if "KEY_VALUES_MISMATCH" in reason:
            raise TlsConfigError(f"{key_flag} {key_path}: the private key does not match the certificate "
                                 f"in --tls-cert {cert}") from None
        files = f"--tls-cert {cert}" + (f" / --tls-key {key}" if key is not None else "")
        raise TlsConfigError(f"{files}: cannot load the certificate and key ({reason})") from None
    except OSError as e:
        raise TlsConfigError(f"--tls-cert {cert}: cannot load it: {e.strerror or e}") from None
    if client_ca is not None:
        ca_text = _read("--tls-client-ca", client_ca)
        if "-----BEGIN CERTIFICATE-----" not in ca_text:
            raise TlsConfigError(f"--tls-client-ca {client_ca}: no PEM certificate in it")
        try:
            ctx.load_verify_locations(cafile=str(client_ca))
        except ssl.SSLError as e:
            raise TlsConfigError(f"--tls-client-ca {client_ca}: cannot load it: {e.reason or e}") from None
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class TlsAcceptor:
    """Protocol factory for a TLS listener (plain TCP underneath): see the module docstring."""

    def __init__(self, make_protocol: Callable[[], Connection], ctx: ssl.SSLContext, timeout_s: float,
                 limit: int) -> None:
        self.make_protocol = make_protocol
        self.ctx = ctx
        self.timeout_s = timeout_s
        self.limit = limit
        """At most this many connections are between accept and the end of their handshake."""
        self.pending: set[_TlsGate] = set()

    def __call__(self) -> asyncio.Protocol:
        return _TlsGate(self)


class _Early(asyncio.Protocol):
    """Holds what the TLS layer delivers between the end of the handshake and the moment the
    broker's protocol is connected (start_tls has not returned yet), then hands over."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False
        self.lost: list[Exception | None] = []

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


class _TlsGate(asyncio.Protocol):
    def __init__(self, acceptor: TlsAcceptor) -> None:
        self.acceptor = acceptor
        self.transport: asyncio.Transport | None = None
        self._peek: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
        self.transport = transport
        acc = self.acceptor
        if len(acc.pending) >= acc.limit:
            transport.abort()
            self._done = True
            return
        acc.pending.add(self)
        # Stop the transport's own reads (nothing is consumed) and watch a duplicate descriptor
        # of the same socket: asyncio lets no one else watch the transport's own descriptor.
        transport.pause_reading()
        loop = asyncio.get_running_loop()
        try:
            sock = transport.get_extra_info("socket")
            self._peek = socket.socket(fileno=os.dup(sock.fileno()))
            self._peek.setblocking(False)
            loop.add_reader(self._peek.fileno(), self._on_readable)
        except OSError as e:
            _log.warning("cannot watch a new connection: %s", e)
            self._finish()
            transport.abort()
            return
        self._timer = loop.call_later(acc.timeout_s, self._on_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def data_received(self, data: bytes) -> None:  # reading is paused until the upgrade
        pass

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self.acceptor.pending.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._peek is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._peek.fileno())
            self._peek.close()
            self._peek = None

    def _on_timeout(self) -> None:
        self._finish()
        if self.transport is not None:
            self.transport.abort()

    def _on_readable(self) -> None:
        assert self._peek is not None and self.transport is not None
        try:
            head = self._peek.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            head = b""
        if not head:  # closed (or reset) before saying anything
            self._finish()
            self.transport.abort()
            return
        if head[0] == _TLS_HANDSHAKE:
            self._finish()
            asyncio.get_running_loop().create_task(self._upgrade(self.transport))
            return
        self._refuse()

    def _refuse(self) -> None:
        """A plaintext client: drain what it sent (so the close is a FIN, not a reset that could
        discard our answer), tell it TLS is expected, close."""
        assert self._peek is not None and self.transport is not None
        drained = 0
        with contextlib.suppress(OSError):
            while drained < 1 << 20:
                chunk = self._peek.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        self._finish()
        _log.info("plaintext connection from %s refused: this broker speaks TLS only",
                  self.transport.get_extra_info("peername"))
        self.transport.write(encode(Error(0, int(ErrorCode.BAD_STATE), PLAINTEXT_REFUSAL, "NMQ-2-4")))
        self.transport.close()

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        early = _Early()
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(transport, early, self.acceptor.ctx, server_side=True,
                                       ssl_handshake_timeout=self.acceptor.timeout_s)
        except Exception as e:  # whatever ends a handshake ends only this connection
            _log.debug("TLS handshake with %s failed: %s", transport.get_extra_info("peername"), e)
            transport.abort()
            return
        if tls is None:
            return
        proto = self.acceptor.make_protocol()
        tls.set_protocol(proto)
        proto.connection_made(tls)
        for chunk in early.data:
            proto.data_received(chunk)
        if early.eof:
            proto.eof_received()
        if early.lost:
            proto.connection_lost(early.lost[0])
