"""NanoMQ clients: blocking :class:`Publisher`/:class:`Subscriber` (asyncio twins in nanomq.aio)."""

from nanomq.client.errors import (
    ConnectionLostError,
    NanoMQError,
    NotSupportedError,
    RequestTimeoutError,
    ServerError,
)
from nanomq.client.message import Message, RecordHeader
from nanomq.client.sync import Publisher, Subscriber

__all__ = [
    "ConnectionLostError", "Message", "NanoMQError", "NotSupportedError", "Publisher", "RecordHeader",
    "RequestTimeoutError", "ServerError", "Subscriber",
]
