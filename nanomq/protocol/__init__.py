"""The sans-IO codec of NanoMQ wire protocol v1 (spec/protocol.md).

Bytes in, frames out; frames in, bytes out. No sockets, no asyncio: broker, clients and the
conformance kit all parse through this one package.

>>> from nanomq.protocol import Decoder, Ping, encode
>>> d = Decoder("server"); d.feed(encode(Ping(request_id=7, token=42))); d.next_frame()
Ping(request_id=7, token=42)
"""

from nanomq.protocol.codec import REQUESTS, RESPONSES, Decoder, encode, encode_publish, frame_header
from nanomq.protocol.constants import (
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_PAYLOAD,
    FRAME_HEADER_SIZE,
    MAX_BATCH,
    PROTOCOL_VERSION,
    RECORD_HEADER_SIZE,
    Ack,
    Capability,
    ErrorCode,
    Opcode,
    RecordFlag,
    Start,
)
from nanomq.protocol.errors import ProtocolError
from nanomq.protocol.frames import (
    Commit,
    Committed,
    Credit,
    Deliver,
    Error,
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
    Seek,
    SeekOk,
    Subscribe,
    Subscribed,
    TopicInfo,
    Unsubscribe,
    Unsubscribed,
    valid_topic,
)
from nanomq.protocol.records import Record, RecordBatch, record_span

__all__ = [
    "Ack", "Capability", "Commit", "Committed", "Credit", "DEFAULT_MAX_FRAME", "DEFAULT_MAX_PAYLOAD",
    "Decoder", "Deliver", "Error", "ErrorCode", "FRAME_HEADER_SIZE", "Frame", "Hello", "HelloOk",
    "Limits", "MAX_BATCH", "Metadata", "MetadataOk", "Opcode", "PROTOCOL_VERSION", "Ping", "Pong",
    "ProtocolError", "Publish", "PublishAck", "RECORD_HEADER_SIZE", "Record", "RecordBatch",
    "RecordFlag", "REQUESTS", "RESPONSES", "Seek", "SeekOk", "Start", "Subscribe", "Subscribed",
    "TopicInfo", "Unsubscribe", "Unsubscribed", "encode", "encode_publish", "frame_header", "record_span", "valid_topic",
]
