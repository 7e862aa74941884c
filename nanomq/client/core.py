"""Sans-IO client state shared by the sync and asyncio clients: no sockets here.

The core turns calls into frame bytes and received bytes into (a) responses keyed by request id
and (b) messages buffered per subscription. The sync client (``nanomq.client.sync``) and the
asyncio twin (``nanomq.aio``) only move bytes; everything they agree on lives here once.

Credit: each subscription keeps ``granted - handed <= window``. Records received but not handed
out sit in the buffer, so the buffer never exceeds ``window`` records per subscription; when the
application has taken half a window, the core asks to send CREDIT for the rest [NMQ-SEM-5-1].
"""

from __future__ import annotations

import re
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import lz4.block

from nanomq.client.errors import ConnectionLostError, NotSupportedError, ServerError
from nanomq.client.message import Message, RecordHeader
from nanomq.protocol import (
    MAX_BATCH,
    PROTOCOL_VERSION,
    Ack,
    Capability,
    Commit,
    Committed,
    Credit,
    Decoder,
    Deliver,
    Error,
    Frame,
    Hello,
    HelloOk,
    Limits,
    Metadata,
    MetadataOk,
    Ping,
    Publish,
    PublishAck,
    RecordBatch,
    RecordFlag,
    Seek,
    SeekOk,
    Start,
    Subscribe,
    Subscribed,
    TopicInfo,
    Unsubscribe,
    encode,
)

__all__ = ["ClientCore", "SubState", "parse_address", "tls_context", "ACK_MODES", "DEFAULT_PORT"]

DEFAULT_PORT = 9000
ACK_MODES = {"none": Ack.NONE, "written": Ack.WRITTEN, "durable": Ack.DURABLE}
_ADDR = re.compile(r"^(?:tcp://|tls://)?(\[[0-9a-fA-F:.]+\]|[^:/\s]+)(?::(\d{1,5}))?/?$")


def tls_context(address: str, ssl_context: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """The TLS context to connect with: ``ssl_context`` if given, a default one (system CAs,
    host name checked) for a ``tls://`` address, else None (plain TCP)."""
    if ssl_context is not None:
        return ssl_context
    if address.strip().startswith("tls://"):
        return ssl.create_default_context()
    return None


def parse_address(address: str) -> tuple[str, int]:
    """``host:port``, ``tcp://host:port``, ``tls://host:port`` or ``host`` (port 9000) -> (host, port)."""
    m = _ADDR.match(address.strip())
    if not m:
        raise ValueError(f"bad broker address {address!r}: expected host:port, tcp://host:port or tls://host:port")
    host = m.group(1).strip("[]")
    port = int(m.group(2)) if m.group(2) else DEFAULT_PORT
    if not 0 < port < 65536:
        raise ValueError(f"bad port in broker address {address!r}")
    return host, port


@dataclass(slots=True)
class SubState:
    """Client-side state of one subscription."""

    topic: str
    sub_id: int
    resume_id: int
    """The next id to hand to the application (last handed + 1): where a reconnect resumes."""
    window: int
    granted: int = 0
    handed: int = 0
    buffer: deque[Message] = field(default_factory=deque)


class ClientCore:
    """Request ids, encoding, decoding, subscriptions and their buffers for one connection."""

    def __init__(self, client_name: str = "nanomq-python", auth_token: bytes = b"") -> None:
        self.client_name = client_name
        self.auth_token = auth_token
        self.decoder = Decoder("client")
        self.server: HelloOk | None = None
        self._rid = 0
        self._pending: dict[int, tuple[str, object]] = {}
        self.subs: dict[str, SubState] = {}
        self._by_id: dict[int, SubState] = {}
        self._order: deque[SubState] = deque()
        self.closed_by_server: ServerError | None = None
        self.lost: ConnectionLostError | None = None
        """Set by :meth:`feed` when the stream ended (fatal ERROR or broken bytes); see there."""

    # ------------------------------------------------------------------ requests

    def _next(self, kind: str, ctx: object = None) -> int:
        self._rid += 1
        self._pending[self._rid] = (kind, ctx)
        return self._rid

    def hello(self) -> tuple[int, bytes]:
        """HELLO, the first request of every connection."""
        rid = self._next("hello")
        return rid, encode(Hello(rid, PROTOCOL_VERSION, self.client_name, self.auth_token))

    def publish(self, topic: str, batch: RecordBatch, ack: Ack) -> tuple[int, bytes]:
        """One PUBLISH of an encoded batch (no response is expected for ack none)."""
        if ack == Ack.NONE:
            self._rid += 1
            rid = self._rid
        else:
            rid = self._next("publish")
        return rid, encode(Publish(rid, topic, ack, batch))

    def encode_payloads(self, payloads: Sequence[bytes], compress_above: int | None) -> RecordBatch:
        """Records for ``payloads``, LZ4-compressing those above ``compress_above`` bytes when
        that makes them smaller (spec §5.3)."""
        limit = self.server.max_payload if self.server else 65536
        if compress_above is None:
            return RecordBatch.from_payloads(payloads, max_payload=limit)
        flags, raw_sizes, out = [], [], []
        for p in payloads:
            if len(p) > compress_above:
                c = lz4.block.compress(p, store_size=False)
                if len(c) < len(p):
                    out.append(c)
                    flags.append(int(RecordFlag.LZ4))
                    raw_sizes.append(len(p))
                    continue
            out.append(p)
            flags.append(0)
            raw_sizes.append(0)
        if len(max(payloads, key=len)) > limit:
            raise ValueError(f"payload larger than the broker's max_payload of {limit} bytes")
        return RecordBatch.from_payloads(out, flags=flags, raw_sizes=raw_sizes, max_payload=limit)

    def subscribe(self, topic: str, start: Start, value: int, window: int) -> tuple[int, bytes]:
        rid = self._next("subscribe", (topic, window))
        return rid, encode(Subscribe(rid, topic, start, value, window, ""))

    def unsubscribe(self, topic: str) -> tuple[int, bytes]:
        st = self.subs.pop(topic)
        self._by_id.pop(st.sub_id, None)
        if st in self._order:
            self._order.remove(st)
        rid = self._next("unsubscribe")
        return rid, encode(Unsubscribe(rid, st.sub_id))

    def commit(self, topic: str, ids: Sequence[int]) -> list[tuple[int, bytes]]:
        st = self._sub(topic)
        out = []
        for i in range(0, len(ids), MAX_BATCH):
            rid = self._next("commit")
            out.append((rid, encode(Commit(rid, st.sub_id, tuple(ids[i : i + MAX_BATCH])))))
        return out

    def seek(self, topic: str, start: Start, value: int) -> tuple[int, bytes]:
        st = self._sub(topic)
        rid = self._next("seek", st)
        return rid, encode(Seek(rid, st.sub_id, start, value))

    def metadata(self, topic: str = "") -> tuple[int, bytes]:
        rid = self._next("metadata")
        return rid, encode(Metadata(rid, topic))

    def ping(self, token: int = 0) -> tuple[int, bytes]:
        rid = self._next("ping")
        return rid, encode(Ping(rid, token))

    def one_topic(self, topic: str | None) -> str:
        """``topic`` if subscribed; with None, the only subscribed topic (else ValueError)."""
        if topic is not None:
            if topic not in self.subs:
                raise ValueError(f"not subscribed to {topic!r}")
            return topic
        if len(self.subs) != 1:
            raise ValueError("several topics are subscribed: say which one (topic=...)")
        return next(iter(self.subs))

    def seek_targets(self, topic: str | None) -> list[str]:
        """The topics a seek applies to: ``topic``, or every subscribed one when None."""
        if topic is None:
            return list(self.subs)
        return [self.one_topic(topic)]

    def _sub(self, topic: str) -> SubState:
        st = self.subs.get(topic)
        if st is None:
            raise ValueError(f"not subscribed to {topic!r}")
        return st

    def require(self, cap: Capability, what: str) -> None:
        """Raise NotSupportedError unless the broker announced ``cap``."""
        if self.server is None or not self.server.capabilities & cap:
            raise NotSupportedError(f"{what} is not supported by this broker (capability {cap.name} not announced)")

    # ------------------------------------------------------------------ responses

    def feed(self, data: bytes) -> list[tuple[int, Frame]]:
        """Received bytes -> completed responses ``(request_id, frame)``; DELIVERs are buffered.

        A broken stream (undecodable bytes, a bad CRC, a bad LZ4 payload) or a fatal ERROR from the
        server (request_id 0, also kept in ``closed_by_server``) ends the connection: decoding stops
        there and ``lost`` is set to the ConnectionLostError to raise. Everything decoded *before*
        it in the same bytes is still returned (and DELIVERs buffered), so the caller hands those
        responses out first — an ack that arrived with the closing ERROR is an ack [D10]. Once
        ``lost`` is set, later bytes are ignored until :meth:`reset_connection`.
        """
        done: list[tuple[int, Frame]] = []
        if self.lost is not None:
            return done
        self.decoder.feed(data)
        while True:
            try:
                frame = self.decoder.next_frame()
            except Exception as e:  # ProtocolError: the server broke the protocol [NMQ-4.6-4]
                self.lost = ConnectionLostError(f"invalid data from broker: {e}")
                return done
            if frame is None:
                return done
            if isinstance(frame, Deliver):
                try:
                    self._on_deliver(frame)
                except ConnectionLostError as e:
                    self.lost = e
                    return done
                continue
            if isinstance(frame, Error) and frame.request_id == 0:
                self.closed_by_server = ServerError(frame.code, frame.message, frame.rule)
                self.lost = ConnectionLostError(f"broker closed the connection: {self.closed_by_server}")
                return done
            kind, ctx = self._pending.pop(frame.request_id, ("?", None))
            if isinstance(frame, HelloOk):
                self.server = frame
                self.decoder.set_limits(max_frame=max(frame.max_frame, 1 << 16),
                                        limits=Limits(frame.max_payload, frame.max_batch))
            elif isinstance(frame, Subscribed) and kind == "subscribe":
                assert isinstance(ctx, tuple)
                topic_name, window = ctx
                st = SubState(topic_name, frame.sub_id, frame.next_id, window, granted=window)
                self.subs[topic_name] = st
                self._by_id[frame.sub_id] = st
            elif isinstance(frame, SeekOk) and kind == "seek":
                st = ctx  # type: ignore[assignment]
                assert isinstance(st, SubState)
                # DELIVERs before SEEK_OK belong to the old position [NMQ-4.8-4]: drop them and
                # count them as handed, so the credit they used is given back.
                st.handed += len(st.buffer)
                st.buffer.clear()
                st.resume_id = frame.next_id
            done.append((frame.request_id, frame))

    def _on_deliver(self, f: Deliver) -> None:
        st = self._by_id.get(f.sub_id)
        if st is None:
            return  # a subscription we have just left
        was_empty = not st.buffer
        for r in f.records:
            data = r.payload
            if r.flags & RecordFlag.LZ4:
                try:
                    data = lz4.block.decompress(data, uncompressed_size=r.raw_size)
                except lz4.block.LZ4BlockError as e:
                    raise ConnectionLostError(f"record {r.id} of {st.topic}: bad LZ4 payload: {e}") from e
            st.buffer.append(Message(r.id, r.timestamp_ns, st.topic, data, RecordHeader(*r[:9])))
        if was_empty and st.buffer:
            self._order.append(st)

    # ------------------------------------------------------------------ the application's side

    def buffered(self) -> int:
        """Messages received and not yet handed out."""
        return sum(len(st.buffer) for st in self.subs.values())

    def take(self, max_msgs: int) -> tuple[list[Message], list[bytes]]:
        """Up to ``max_msgs`` buffered messages (round-robin over subscriptions) and the CREDIT
        frames to send for them."""
        out: list[Message] = []
        touched: list[SubState] = []
        while self._order and len(out) < max_msgs:
            st = self._order.popleft()
            if self.subs.get(st.topic) is not st:
                continue
            n = min(max_msgs - len(out), len(st.buffer))
            if n == 0:  # emptied by a SEEK since it was queued
                continue
            for _ in range(n):
                out.append(st.buffer.popleft())
            st.handed += n
            st.resume_id = out[-1].id + 1
            touched.append(st)
            if st.buffer:
                self._order.append(st)
        credits = []
        for st in touched:
            outstanding = st.granted - st.handed
            if outstanding <= st.window // 2:
                add = st.window - outstanding
                st.granted += add
                credits.append(encode(Credit(0, st.sub_id, add)))
        return out, credits

    def reset_connection(self) -> list[SubState]:
        """Forget the connection (after a loss); returns the subscriptions to re-create."""
        self.decoder = Decoder("client")
        self.server = None
        self._pending.clear()
        subs = list(self.subs.values())
        self.subs.clear()
        self._by_id.clear()
        self._order.clear()
        self.closed_by_server = None
        self.lost = None
        return subs


def check(frame: Frame, expected: type[Frame]) -> Frame:
    """Return ``frame`` if it is the expected response, raise ServerError for ERROR."""
    if isinstance(frame, Error):
        raise ServerError(frame.code, frame.message, frame.rule)
    if not isinstance(frame, expected):
        raise ConnectionLostError(f"broker answered {type(frame).__name__} where {expected.__name__} was due")
    return frame


def topics_of(frame: Frame) -> list[TopicInfo]:
    """The topics of a METADATA_OK."""
    return list(check(frame, MetadataOk).topics)  # type: ignore[attr-defined]


def split(payloads: Iterable[bytes], n: int = MAX_BATCH) -> list[list[bytes]]:
    """``payloads`` in lists of at most ``n``."""
    items = list(payloads)
    return [items[i : i + n] for i in range(0, len(items), n)]


__all__ += ["check", "topics_of", "split", "PublishAck", "Committed"]
