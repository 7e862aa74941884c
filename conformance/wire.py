"""A raw protocol client for conversations with a broker under test: frames in, frames out.

No retries, no hidden requests: the kit says exactly what goes on the wire, including bytes that
break the protocol, and sees exactly what comes back.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterable

from nanomq.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Credit,
    Decoder,
    Deliver,
    Error,
    Frame,
    Hello,
    HelloOk,
    Limits,
    ProtocolError,
    Publish,
    PublishAck,
    RecordBatch,
    Start,
    Subscribe,
    Subscribed,
    encode,
)

__all__ = ["WireClient", "Closed"]


class Closed(Exception):
    """The broker closed the connection."""


class WireClient:
    """One TCP connection to the target, speaking raw frames."""

    def __init__(self, host: str, port: int, timeout: float = 10.0, rcvbuf: int = 0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """``rcvbuf`` > 0 shrinks the socket's receive buffer (to play a slow reader);
        ``ssl_context`` wraps the connection in TLS."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((host, port))
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.decoder = Decoder("client")
        self.server: HelloOk | None = None
        self._rid = 0
        self.deliveries: list[Deliver] = []

    # ------------------------------------------------------------------ bytes

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        self.sock.sendall(data)

    def send(self, *frames: Frame) -> None:
        """Encode and send frames back to back (one write: pipelined)."""
        self.sock.sendall(b"".join(encode(f) for f in frames))

    def next_id(self) -> int:
        """A fresh request id."""
        self._rid += 1
        return self._rid

    def recv(self, timeout: float | None = None) -> Frame:
        """The next frame from the broker. Raises Closed, TimeoutError or ProtocolError."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame from the broker in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                raise TimeoutError("no frame from the broker in time") from None
            except ConnectionResetError:
                raise Closed("connection reset by the broker") from None
            if not data:
                raise Closed("connection closed by the broker")
            self.decoder.feed(data)

    def recv_response(self, timeout: float | None = None) -> Frame:
        """The next frame that is not a DELIVER (DELIVERs are kept in ``deliveries``)."""
        while True:
            f = self.recv(timeout)
            if isinstance(f, Deliver):
                self.deliveries.append(f)
                continue
            return f

    def expect_closed(self, timeout: float = 5.0) -> list[Frame]:
        """Read until the broker closes; returns what came before. TimeoutError if it doesn't."""
        got: list[Frame] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                got.append(self.recv(max(0.01, deadline - time.monotonic())))
            except (Closed, ProtocolError):
                return got
            except TimeoutError:
                raise TimeoutError("the broker did not close the connection") from None

    # ------------------------------------------------------------------ conveniences

    def hello(self, name: str = "nanomq-conformance", token: bytes = b"") -> HelloOk:
        """Handshake; returns HELLO_OK (and applies its limits to the decoder)."""
        self.send(Hello(self.next_id(), PROTOCOL_VERSION, name, token))
        f = self.recv_response()
        if not isinstance(f, HelloOk):
            raise AssertionError(f"expected HELLO_OK, got {f!r}")
        self.server = f
        self.decoder.set_limits(max_frame=max(f.max_frame, 1 << 16), limits=Limits(f.max_payload, f.max_batch))
        return f

    def batch_limits(self) -> dict[str, int]:
        """The codec's client-side guard for batches this connection builds, at the limit HELLO_OK
        announced (not the codec's default, which a target announcing a larger max_payload allows
        more than); empty before HELLO."""
        return {"max_payload": self.server.max_payload} if self.server is not None else {}

    def publish(self, topic: str, payloads: Iterable[bytes], ack: Ack = Ack.DURABLE) -> PublishAck | Error | None:
        """PUBLISH one batch and return its answer (None for ack none)."""
        rid = self.next_id()
        self.send(Publish(rid, topic, ack, RecordBatch.from_payloads(list(payloads), **self.batch_limits())))
        if ack == Ack.NONE:
            return None
        f = self.recv_response()
        assert isinstance(f, PublishAck | Error), f
        return f

    def subscribe(self, topic: str, start: Start = Start.EARLIEST, value: int = 0, credit: int = 1 << 20,
                  group: str = "") -> Subscribed | Error:
        """SUBSCRIBE and return its answer."""
        self.send(Subscribe(self.next_id(), topic, start, value, credit, group))
        f = self.recv_response()
        assert isinstance(f, Subscribed | Error), f
        return f

    def credit(self, sub_id: int, n: int) -> None:
        """Send CREDIT (no response)."""
        self.send(Credit(0, sub_id, n))

    def collect(self, sub_id: int, count: int, timeout: float = 10.0) -> list:
        """Records delivered on ``sub_id`` until ``count`` have arrived (TimeoutError otherwise)."""
        out: list = []
        for d in self.deliveries:
            if d.sub_id == sub_id:
                out.extend(d.records)
        self.deliveries = [d for d in self.deliveries if d.sub_id != sub_id]
        deadline = time.monotonic() + timeout
        while len(out) < count:
            f = self.recv(max(0.001, deadline - time.monotonic()))
            if isinstance(f, Deliver) and f.sub_id == sub_id:
                out.extend(f.records)
            elif isinstance(f, Deliver):
                self.deliveries.append(f)
            else:
                raise AssertionError(f"unexpected {f!r} while collecting deliveries")
        return out

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
