"""A scripted stand-in for a broker, for client behaviour a real broker never shows on demand
(an ack in the same segment as a closing ERROR, a wrong response, a small max_frame...).

A *script* answers the frames of one connection: it gets each decoded request and returns the
bytes to send (all in one sendall) and whether to close afterwards. ``FakeBroker(make_script)``
calls ``make_script()`` for each connection it accepts.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from nanomq.protocol import Decoder, Frame, HelloOk, encode

Script = Callable[[Frame], tuple[bytes, bool]]


def hello_ok(f: Frame, *, max_frame: int = 1 << 24, max_payload: int = 65536, max_batch: int = 256) -> bytes:
    """HELLO_OK for the HELLO ``f``, announcing these limits and no capability."""
    return encode(HelloOk(f.request_id, 1, 0, max_frame, max_payload, max_batch, "fake"))


class FakeBroker:
    """A one-thread TCP server on 127.0.0.1 that answers each connection with a script."""

    def __init__(self, script: Callable[[], Script], *, stall: float = 0.0) -> None:
        self.script = script
        self.stall = stall
        """Seconds each connection reads nothing after its first answer (a broker slower than its client)."""
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections = 0
        self.frames: list[Frame] = []
        """Every request received, in order, over all connections."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                self._one(conn, self.script())

    def _one(self, conn: socket.socket, script: Script) -> None:
        conn.settimeout(5)
        answered = 0
        dec = Decoder("server", max_frame=1 << 30)
        while not self._stop.is_set():
            try:
                data = conn.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            dec.feed(data)
            while (frame := dec.next_frame()) is not None:
                self.frames.append(frame)
                out, close = script(frame)
                if out:
                    conn.sendall(out)
                if close:
                    conn.shutdown(socket.SHUT_WR)
                    return
                answered += 1
                if answered == 1 and self.stall:
                    time.sleep(self.stall)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sock.close()
