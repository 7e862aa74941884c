"""NanoMQ: a specification-first, low-latency persistent message queue with a C core.

>>> import nanomq
>>> with nanomq.Publisher("127.0.0.1:9000") as pub:          # doctest: +SKIP
...     msg_id = pub.publish("my-topic", b"Hello, NanoMQ!")
"""

from nanomq.client import (
    ConnectionLostError,
    Message,
    NanoMQError,
    NotSupportedError,
    Publisher,
    RecordHeader,
    RequestTimeoutError,
    ServerError,
    Subscriber,
)
from nanomq.protocol import ProtocolError

__all__ = [
    "ConnectionLostError", "Message", "NanoMQError", "NotSupportedError", "ProtocolError", "Publisher",
    "RecordHeader", "RequestTimeoutError", "ServerError", "Subscriber", "__version__",
]

__version__ = "0.1.0"
