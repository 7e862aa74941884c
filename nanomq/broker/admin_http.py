"""A small HTTP/1.1 server for the admin API, on the broker's event loop.

HTTP parsing is h11's (sans-IO, like the broker's own codec): this module only moves bytes between
asyncio and an ``h11.Connection`` and hands each complete request to a handler. Why not aiohttp or
http.server: aiohttp is a whole framework for six endpoints, and http.server blocks a thread per
request; h11 on the loop the broker already runs costs no thread and keeps every request's work
(a few dict reads) where the state is, without locks.

Limits, so that an admin client can never hold the broker up ([NMQ-ADM-1-3]):

- a request head of at most ``MAX_HEAD`` bytes and a body of at most ``MAX_BODY``;
- ``MAX_CONNECTIONS`` connections at once (the next one gets 503 and is closed);
- a connection idle (or sending a request) for ``IDLE_TIMEOUT_S`` is closed;
- one request at a time per connection (h11 pauses a pipelined next one until the answer is sent).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import h11

__all__ = ["AdminHttpServer", "HttpRequest", "HttpResponse", "Handler", "json_response", "error_response"]

_log = logging.getLogger("nanomq.admin")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 64
IDLE_TIMEOUT_S = 30.0
LINGER_S = 2.0
"""How long a connection given a last answer is kept to drain what the client still sends."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One complete request."""

    method: str
    target: str
    """The path and query, as sent."""
    headers: dict[str, str]
    """Lower-cased names; a repeated header keeps its last value."""
    body: bytes
    peer: str = ""
    """The client's address (for the authentication failure limit and the audit log)."""


@dataclass(slots=True)
class HttpResponse:
    """What a handler answers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


def json_response(status: int, value: object) -> HttpResponse:
    """``value`` as a JSON body."""
    return HttpResponse(status, json.dumps(value, separators=(",", ":"), sort_keys=True).encode() + b"\n")


def error_response(status: int, code: str, message: str) -> HttpResponse:
    """The admin API's error body: ``{"error": {"code": ..., "message": ...}}`` (spec/admin.md)."""
    return json_response(status, {"error": {"code": code, "message": message}})


class _AdminConnection(asyncio.Protocol):
    """One admin client: bytes in through h11, requests out to the handler, answers back."""

    def __init__(self, server: AdminHttpServer) -> None:
        self._server = server
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._transport: asyncio.Transport | None = None
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._busy = False
        """A handler is running: events wait (h11 buffers what arrives meanwhile)."""
        self._idle: asyncio.TimerHandle | None = None
        self._ending = False
        """A last answer was sent (a refusal or an error) and our side shut: what arrives is
        discarded until the client closes or LINGER_S passes. Closing at once, with the client's
        request still unread, would reset the connection and could lose that answer."""

    # -------------------------------------------------------------- asyncio side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but is one
        if not self._server.admit(self):
            self._end(error_response(503, "TOO_MANY_CONNECTIONS",
                                     f"the admin server takes {MAX_CONNECTIONS} connections at once"))
            return
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.forget(self)
        if self._idle is not None:
            self._idle.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._ending:
            return
        self._h11.receive_data(data)
        self._arm_idle()
        self._pump()

    def eof_received(self) -> bool | None:
        if self._ending:
            return None  # close (our side is shut already)
        self._h11.receive_data(b"")
        self._pump()
        return None

    def close(self) -> None:
        """Close now (the broker is stopping)."""
        if self._transport is not None:
            self._transport.close()

    # -------------------------------------------------------------- h11 side

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT_S, self.close)

    def _pump(self) -> None:
        """Take the events h11 has, up to the end of one request (then answer it)."""
        while self._transport is not None and not self._busy:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint
                self._end(error_response(status, "TOO_LARGE" if status == 431 else "BAD_REQUEST",
                                         str(e) or "malformed request"))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                # h11 bounds a head that arrives in pieces (max_incomplete_event_size); one that
                # arrived whole in a single read is measured here, so the bound holds either way.
                if len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers) > MAX_HEAD:
                    self._end(error_response(431, "TOO_LARGE", f"request heads are at most {MAX_HEAD} bytes"))
                    return
                self._request = event
                self._body = bytearray()
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > MAX_BODY:
                    self._end(error_response(413, "TOO_LARGE", f"request bodies are at most {MAX_BODY} bytes"))
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._busy = True
                asyncio.get_running_loop().create_task(self._answer())
                return
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
                return

    async def _answer(self) -> None:
        req = self._request
        assert req is not None
        peer = self._transport.get_extra_info("peername") if self._transport is not None else None
        request = HttpRequest(req.method.decode("ascii", "replace"), req.target.decode("ascii", "replace"),
                              {k.decode("ascii", "replace").lower(): v.decode("latin-1") for k, v in req.headers},
                              bytes(self._body), str(peer[0]) if peer else "")
        try:
            response = await self._server.handler(request)
        except Exception:  # a bug in a handler answers 500; the broker goes on [NMQ-ADM-1-3]
            _log.exception("admin: internal error answering %s %s", request.method, request.target)
            response = error_response(500, "INTERNAL", "internal server error")
        if self._transport is None:
            return
        self._send(response, head_only=request.method == "HEAD")
        self._busy = False
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            self._pump()
        elif self._h11.our_state is h11.MUST_CLOSE or self._h11.their_state is h11.MUST_CLOSE:
            self.close()

    def _send(self, response: HttpResponse, head_only: bool = False) -> None:
        """Write ``response`` (``head_only``: a HEAD's answer, the GET's headers without its body)."""
        headers = [("content-type", response.content_type), ("content-length", str(len(response.body))),
                   ("cache-control", "no-store"), *response.headers]
        try:
            out = self._h11.send(h11.Response(status_code=response.status, headers=headers))
            out += self._h11.send(h11.Data(data=response.body)) if response.body and not head_only else b""
            out += self._h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self.close()
            return
        assert self._transport is not None
        self._transport.write(out)

    def _end(self, response: HttpResponse) -> None:
        """A last answer outside h11's request cycle (a refused or malformed request), then shut
        our side and linger (see ``_ending``)."""
        t = self._transport
        if t is None or self._ending:
            return
        self._ending = True
        head = (f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Error')}\r\n"
                f"content-type: {response.content_type}\r\ncontent-length: {len(response.body)}\r\n"
                "connection: close\r\n\r\n").encode()
        t.write(head + response.body)
        if t.can_write_eof():
            t.write_eof()
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(LINGER_S, self.close)


_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


class AdminHttpServer:
    """Listens on ``host:port`` and answers every request with ``handler``."""

    def __init__(self, handler: Handler, host: str, port: int) -> None:
        self.handler = handler
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None
        self._conns: set[_AdminConnection] = set()

    async def start(self) -> None:
        """Bind and listen (raises OSError when the port is taken)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _AdminConnection(self), self._host, self._port,
                                                reuse_address=True)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) bound."""
        assert self._server is not None and self._server.sockets
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    def admit(self, conn: _AdminConnection) -> bool:
        """Register a connection; False over MAX_CONNECTIONS."""
        if len(self._conns) >= MAX_CONNECTIONS:
            return False
        self._conns.add(conn)
        return True

    def forget(self, conn: _AdminConnection) -> None:
        """A connection closed."""
        self._conns.discard(conn)

    async def stop(self) -> None:
        """Stop listening and close every admin connection."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for conn in tuple(self._conns):
            conn.close()
        await server.wait_closed()
