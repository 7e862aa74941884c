"""Sans-IO protocol state of one client: no sockets, no clock, no asyncio here.

The core turns calls into :class:`Request` objects (the frame bytes, the request id and the
response due) and received bytes into (a) responses kept by request id and (b) messages buffered
per subscription. It owns the client's :class:`~nanomq.client.state.ClientState`, the typed
table of requests awaiting an answer, the subscriptions to resume after a loss, and the
translation of what the broker sends into the client's exceptions. The blocking client
(``nanomq.client.sync``) and the asyncio client (``nanomq.client.aio``) only move bytes, driven
by the flows of ``nanomq.client.flows``.

Credit: each subscription keeps ``granted - handed <= window``. Records received but not handed
out sit in the buffer, so the buffer never exceeds ``window`` records per subscription; when the
application has taken half a window, the core asks to send CREDIT for the rest [NMQ-SEM-5-1].
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import lz4.block

from nanomq.client.args import Options, options
from nanomq.client.errors import (
    ConnectionLostError,
    InvalidArgumentError,
    NotSupportedError,
    ProtocolError,
    ServerError,
)
from nanomq.client.message import Message
from nanomq.client.policy import PUBLISH_OVERHEAD, frame_spans, plan_batches
from nanomq.client.state import ClientState, Event, next_state
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
    ErrorCode,
    Frame,
    Hello,
    HelloOk,
    Limits,
    Metadata,
    MetadataOk,
    Ping,
    Pong,
    Publish,
    PublishAck,
    RecordBatch,
    RecordFlag,
    Seek,
    SeekOk,
    Start,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    encode,
    encode_publish,
    record_span,
)
from nanomq.protocol import ProtocolError as CodecError

__all__ = ["ClientCore", "Request", "SubState"]


def _fits_frame(overhead: int, span: int, max_frame: int) -> None:
    """Refuse a record of ``span`` bytes that no PUBLISH of ``overhead`` bytes can carry."""
    if overhead + span > max_frame:
        raise InvalidArgumentError(f"a record of {span - 64} bytes does not fit the broker's max_frame "
                                   f"of {max_frame} bytes")

log = logging.getLogger("nanomq.client")

_LZ4 = int(RecordFlag.LZ4)
"""As a plain int: ``flags & RecordFlag.LZ4`` goes through enum code, ~1 µs a record."""

F = TypeVar("F", bound=Frame)


@dataclass(frozen=True, slots=True)
class Request(Generic[F]):
    """One request to send: its id, its frame bytes, and the response type due."""

    rid: int
    data: bytes
    expected: type[F]


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


# What the core remembers of a request until its answer comes: the response due, and for some the
# bookkeeping the answer completes.

@dataclass(frozen=True, slots=True)
class _Pending:
    expected: type[Frame]


@dataclass(frozen=True, slots=True)
class _PendingSubscribe(_Pending):
    topic: str
    window: int
    resumes: SubState | None
    """The subscription of a lost connection this request re-creates, if it does."""


@dataclass(frozen=True, slots=True)
class _PendingSeek(_Pending):
    sub: SubState


@dataclass(frozen=True, slots=True)
class _Loss:
    """Why a connection ended; :meth:`error` makes a fresh exception each time it is raised."""

    reason: str
    closed_by: ServerError | None = None
    protocol: tuple[ErrorCode, str] | None = None
    """(code, rule) when the broker broke the protocol."""

    def error(self) -> ConnectionLostError:
        if self.protocol is not None:
            return ProtocolError(self.reason, *self.protocol)
        return ConnectionLostError(self.reason, closed_by=self.closed_by)


def _server_error(frame: Error) -> ServerError:
    return ServerError(frame.code, frame.message, frame.rule)


class ClientCore:
    """State, requests, responses and subscription buffers of one client, across connections."""

    def __init__(self, opts: Options | None = None, *, auth_token: bytes = b"") -> None:
        self.options = opts if opts is not None else options(
            "127.0.0.1:9000", client_name="nanomq-python", timeout=30.0, connect_timeout=10.0, ssl_context=None)
        self.auth_token = auth_token
        self.state = ClientState.DISCONNECTED
        self.decoder = Decoder("client")
        self.server: HelloOk | None = None
        """What the broker announced in HELLO_OK on the current connection."""
        self.requirements: list[tuple[Capability, str]] = []
        """Capabilities the broker must announce, each with what needs it (checked on connect)."""
        self.subs: dict[str, SubState] = {}
        self.resume: list[SubState] = []
        """Subscriptions of a lost connection, to re-create on the next one (in order)."""
        self.loss: _Loss | None = None
        """Why the last connection ended."""
        self._rid = 0
        self._pending: dict[int, _Pending] = {}
        self._responses: dict[int, Frame] = {}
        self._lost: dict[int, _Loss] = {}
        """Requests outstanding on a connection that ended, with how it ended."""
        self._by_id: dict[int, SubState] = {}
        self._order: deque[SubState] = deque()

    # ------------------------------------------------------------------ state

    def _move(self, event: Event) -> None:
        self.state = next_state(self.state, event)

    def begin_connect(self) -> None:
        """A connection attempt begins: a fresh decoder, nothing left of the last connection."""
        self._move(Event.CONNECT)
        self.decoder = Decoder("client")
        self.server = None
        self._responses.clear()
        self._lost.clear()

    def ready(self) -> None:
        """HELLO_OK came and the subscriptions were resumed: requests may go out."""
        self._move(Event.READY)

    def connection_lost(self, reason: str) -> ConnectionLostError:
        """The transport ended (end of stream, a failed read or write): forget the connection.
        Returns the error for it (a fresh one each call)."""
        return self._lose(_Loss(reason))

    def connect_failed(self, reason: str) -> ConnectionLostError:
        """A connection attempt gave up (the flow that made it has said why in the log)."""
        return self._lose(_Loss(reason), quiet=True)

    def last_error(self) -> ConnectionLostError:
        """The error of the last loss (or of a closed client)."""
        if self.state is ClientState.CLOSED:
            return ConnectionLostError("client is closed")
        return (self.loss or _Loss("not connected")).error()

    def close(self) -> None:
        """The application closed the client: every request still waiting fails."""
        self._end(_Loss("client is closed"))
        self._move(Event.CLOSE)

    def _lose(self, loss: _Loss, *, quiet: bool = False) -> ConnectionLostError:
        if self.state in (ClientState.CONNECTING, ClientState.READY):
            if not quiet:
                log.warning("connection to %s lost: %s", self.options.address, loss.error())
            self._end(loss)
            self._move(Event.LOSE)
            self.loss = loss
        return loss.error()

    def _end(self, loss: _Loss) -> None:
        for rid in self._pending:
            self._lost[rid] = loss
        self._pending.clear()
        # Restored subscriptions first, in their order, then those not restored yet.
        self.resume = list(self.subs.values()) + self.resume
        self.subs.clear()
        self._by_id.clear()
        self._order.clear()

    def require(self, cap: Capability, what: str) -> None:
        """Raise NotSupportedError unless the broker announced ``cap`` [NMQ-7-2]."""
        if self.server is None or not self.server.capabilities & cap:
            raise NotSupportedError(f"{what} is not supported by this broker (capability {cap.name} not announced)")

    # ------------------------------------------------------------------ requests

    def _request(self, pending: _Pending | None) -> int:
        self._rid += 1
        if pending is not None:
            self._pending[self._rid] = pending
        return self._rid

    def _plain(self, frame_of: Callable[..., Frame], expected: type[F], *fields: object) -> Request[F]:
        rid = self._request(_Pending(expected))
        return Request(rid, encode(frame_of(rid, *fields)), expected)

    def hello(self) -> Request[HelloOk]:
        """HELLO, the first request of every connection."""
        return self._plain(Hello, HelloOk, PROTOCOL_VERSION, self.options.client_name, self.auth_token)

    def publish(self, topic: str, payloads: Sequence[bytes], ack: Ack,
                compress_above: int | None) -> list[tuple[Request[PublishAck], int]]:
        """PUBLISH requests for ``payloads`` in order, each with its record count: cut at the
        broker's max_batch and so that no frame exceeds its max_frame. No response is registered
        for ack ``none`` (the broker sends none)."""
        server = self._server()
        too_big = max(map(len, payloads))
        if too_big > server.max_payload:
            raise InvalidArgumentError(f"payload of {too_big} bytes is larger than the broker's max_payload "
                                       f"of {server.max_payload} bytes")
        if len(payloads) == 1 and (compress_above is None or too_big <= compress_above):
            # one record, not compressed: the same frame built in one buffer (a publisher's hot path)
            _fits_frame(PUBLISH_OVERHEAD + len(topic.encode()), record_span(too_big), server.max_frame)
            rid = self._request(None if ack == Ack.NONE else _Pending(PublishAck))
            return [(Request(rid, encode_publish(rid, topic, ack, payloads[0], server.max_payload), PublishAck), 1)]
        data, flags, raw_sizes = self._compress(payloads, compress_above)
        overhead = PUBLISH_OVERHEAD + len(topic.encode())
        spans = frame_spans(list(map(len, data)))
        _fits_frame(overhead, max(spans), server.max_frame)
        out = []
        for part in plan_batches(spans, overhead, server.max_batch, server.max_frame):
            batch = RecordBatch.from_payloads(
                data[part.start : part.stop], max_payload=server.max_payload,
                flags=None if flags is None else flags[part.start : part.stop],
                raw_sizes=None if raw_sizes is None else raw_sizes[part.start : part.stop])
            rid = self._request(None if ack == Ack.NONE else _Pending(PublishAck))
            out.append((Request(rid, encode(Publish(rid, topic, ack, batch)), PublishAck), len(part)))
        return out

    @staticmethod
    def _compress(payloads: Sequence[bytes], above: int | None) -> tuple[
            Sequence[bytes], list[int] | None, list[int] | None]:
        """LZ4-compress the payloads above ``above`` bytes when that makes them smaller (§5.3)."""
        if above is None:
            return payloads, None, None
        out, flags, raw_sizes = [], [], []
        for p in payloads:
            if len(p) > above:
                c = lz4.block.compress(p, store_size=False)
                if len(c) < len(p):
                    out.append(c)
                    flags.append(int(RecordFlag.LZ4))
                    raw_sizes.append(len(p))
                    continue
            out.append(p)
            flags.append(0)
            raw_sizes.append(0)
        return out, flags, raw_sizes

    def subscribe(self, topic: str, start: Start, value: int, window: int,
                  resumes: SubState | None = None) -> Request[Subscribed]:
        """SUBSCRIBE (``resumes``: the subscription of a lost connection it re-creates)."""
        rid = self._request(_PendingSubscribe(Subscribed, topic, window, resumes))
        return Request(rid, encode(Subscribe(rid, topic, start, value, window, "")), Subscribed)

    def unsubscribe(self, topic: str) -> Request[Unsubscribed]:
        """UNSUBSCRIBE; the subscription's buffered records are dropped now."""
        st = self._sub(topic)
        del self.subs[topic]
        self._by_id.pop(st.sub_id, None)
        if st in self._order:
            self._order.remove(st)
        return self._plain(Unsubscribe, Unsubscribed, st.sub_id)

    def commit(self, topic: str, ids: Sequence[int]) -> list[Request[Committed]]:
        """COMMITs of ``ids`` for the subscription to ``topic``, max_batch ids each."""
        st = self._sub(topic)
        return [self._plain(Commit, Committed, st.sub_id, tuple(ids[i : i + MAX_BATCH]))
                for i in range(0, len(ids), MAX_BATCH)]

    def seek(self, topic: str, start: Start, value: int) -> Request[SeekOk]:
        """SEEK of the subscription to ``topic``."""
        st = self._sub(topic)
        rid = self._request(_PendingSeek(SeekOk, st))
        return Request(rid, encode(Seek(rid, st.sub_id, start, value)), SeekOk)

    def metadata(self, topic: str = "") -> Request[MetadataOk]:
        """METADATA of ``topic``, or of every topic when empty."""
        return self._plain(Metadata, MetadataOk, topic)

    def ping(self, token: int = 0) -> Request[Pong]:
        """PING."""
        return self._plain(Ping, Pong, token)

    def one_topic(self, topic: str | None) -> str:
        """``topic`` if subscribed; with None, the only subscribed topic."""
        if topic is not None:
            return self._sub(topic).topic
        if len(self.subs) != 1:
            raise InvalidArgumentError("several topics are subscribed: say which one (topic=...)" if self.subs
                                       else "not subscribed to any topic")
        return next(iter(self.subs))

    def seek_targets(self, topic: str | None) -> list[str]:
        """The topics a seek applies to: ``topic``, or every subscribed one when None."""
        return list(self.subs) if topic is None else [self.one_topic(topic)]

    def _sub(self, topic: str) -> SubState:
        st = self.subs.get(topic)
        if st is None:
            raise InvalidArgumentError(f"not subscribed to {topic!r}")
        return st

    def _server(self) -> HelloOk:
        if self.server is None or self.state is not ClientState.READY:
            raise self.last_error()
        return self.server

    # ------------------------------------------------------------------ responses

    def response(self, req: Request[F]) -> F | None:
        """The answer to ``req``: the frame, None while it is still due. Raises ServerError for an
        ERROR answer and ConnectionLostError when the connection it went out on ended first."""
        frame = self._responses.pop(req.rid, None)
        if frame is None:
            if req.rid in self._pending:
                return None
            raise self._lost.pop(req.rid, self.loss or _Loss("no answer is due")).error()
        if isinstance(frame, Error):
            raise _server_error(frame)
        assert isinstance(frame, req.expected)  # checked on arrival
        return frame

    def answered(self) -> set[int]:
        """Ids of the requests whose answer has arrived and is not yet taken."""
        return set(self._responses)

    def forget(self, rid: int) -> None:
        """No one waits for ``rid`` any more (timed out, or abandoned): drop its answer."""
        self._pending.pop(rid, None)
        self._responses.pop(rid, None)
        self._lost.pop(rid, None)

    def feed(self, data: bytes) -> ConnectionLostError | None:
        """Received bytes: responses are kept for :meth:`response`, DELIVERs buffered.

        A broken stream (undecodable bytes, a bad CRC or LZ4 payload, a response of the wrong
        type) or a fatal ERROR from the broker (request_id 0) ends the connection: decoding stops
        there, the connection is forgotten and its error returned (the transport then closes).
        Everything decoded *before* it in the same bytes is kept, so the caller is handed those
        answers first — an ack that arrived with the closing ERROR is an ack [D10]. Bytes that
        arrive when no connection is up are ignored.
        """
        if self.state not in (ClientState.CONNECTING, ClientState.READY):
            return None
        self.decoder.feed(data)
        while True:
            try:
                frame = self.decoder.next_frame()
            except CodecError as e:  # the broker broke the protocol [NMQ-4.6-4]
                err = ProtocolError.from_codec(e)
                return self._lose(_Loss(err.reason, protocol=(e.code, e.rule)))
            if frame is None:
                return None
            if isinstance(frame, Deliver):
                loss = self._on_deliver(frame)
            elif isinstance(frame, Error) and frame.request_id == 0:
                loss = _Loss("broker closed the connection", closed_by=_server_error(frame))
            else:
                loss = self._on_response(frame)
            if loss is not None:
                return self._lose(loss)

    def _on_response(self, frame: Frame) -> _Loss | None:
        pending = self._pending.pop(frame.request_id, None)
        if pending is None:
            if isinstance(frame, Error):  # a request answered only when it fails: an ack-none PUBLISH
                log.warning("broker refused request %d (no answer was awaited): %s", frame.request_id,
                            _server_error(frame))
            return None
        if isinstance(frame, Error):
            if isinstance(pending, _PendingSubscribe) and pending.resumes in self.resume:
                self.resume.remove(pending.resumes)  # it cannot be resumed: dropped
        elif not isinstance(frame, pending.expected):
            err = ProtocolError.wrong_response(frame, pending.expected)
            return _Loss(err.reason, protocol=(err.code, err.rule))
        elif isinstance(frame, HelloOk):
            self.server = frame
            self.decoder.set_limits(max_frame=max(frame.max_frame, 1 << 16),
                                    limits=Limits(frame.max_payload, frame.max_batch))
        elif isinstance(frame, Subscribed) and isinstance(pending, _PendingSubscribe):
            st = SubState(pending.topic, frame.sub_id, frame.next_id, pending.window, granted=pending.window)
            self.subs[pending.topic] = st
            self._by_id[frame.sub_id] = st
            if pending.resumes in self.resume:
                self.resume.remove(pending.resumes)
        elif isinstance(frame, SeekOk) and isinstance(pending, _PendingSeek):
            st = pending.sub
            # DELIVERs before SEEK_OK belong to the old position [NMQ-4.8-4]: drop them and
            # count them as handed, so the credit they used is given back.
            st.handed += len(st.buffer)
            st.buffer.clear()
            st.resume_id = frame.next_id
        self._responses[frame.request_id] = frame
        return None

    def _on_deliver(self, f: Deliver) -> _Loss | None:
        st = self._by_id.get(f.sub_id)
        if st is None:
            return None  # a subscription we have just left
        was_empty = not st.buffer
        batch = f.records
        data, topic, view, append = batch.data, st.topic, Message._view, st.buffer.append
        if batch.summary()[0] & _LZ4:  # one C call for the batch: the common case has no LZ4
            for off, r in zip(batch.offsets, batch, strict=True):
                payload = None
                if r.flags & _LZ4:
                    try:
                        payload = lz4.block.decompress(r.payload, uncompressed_size=r.raw_size)
                    except lz4.block.LZ4BlockError as e:
                        return _Loss(f"invalid data from broker: record {r.id} of {topic}: bad LZ4 payload: {e}",
                                     protocol=(ErrorCode.MALFORMED, "NMQ-5.3-1"))
                append(view(data, off, topic, payload))
        else:
            for off in batch.offsets:
                append(view(data, off, topic))
        if was_empty and st.buffer:
            self._order.append(st)
        return None

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
