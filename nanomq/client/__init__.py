"""NanoMQ clients: blocking :class:`Publisher` and :class:`Subscriber` (asyncio forms in
``nanomq.client.aio``, also importable as ``nanomq.aio``), their messages and their errors."""

from nanomq.client.errors import (
    ArgumentTypeError,
    ConnectionLostError,
    InvalidArgumentError,
    NanoMQError,
    NotSupportedError,
    ProtocolError,
    RequestTimeoutError,
    ServerError,
)
from nanomq.client.message import Message, RecordHeader
from nanomq.client.sync import Publisher, Subscriber

__all__ = [
    "ArgumentTypeError", "ConnectionLostError", "InvalidArgumentError", "Message", "NanoMQError",
    "NotSupportedError", "ProtocolError", "Publisher", "RecordHeader", "RequestTimeoutError", "ServerError",
    "Subscriber",
]
