"""NanoMQ clients: blocking :class:`Publisher` and :class:`Subscriber` (asyncio forms in
``nanomq.client.aio``, also importable as ``nanomq.aio``), their messages and their errors.

Reconnects and errors are logged to ``logging.getLogger("nanomq.client")``, which has only a
NullHandler (the library convention): configure logging to see them, e.g.
``logging.basicConfig(level=logging.INFO)``.
"""

import logging

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

logging.getLogger("nanomq.client").addHandler(logging.NullHandler())

__all__ = [
    "ArgumentTypeError", "ConnectionLostError", "InvalidArgumentError", "Message", "NanoMQError",
    "NotSupportedError", "ProtocolError", "Publisher", "RecordHeader", "RequestTimeoutError", "ServerError",
    "Subscriber",
]
