"""NanoMQ: a specification-first, low-latency persistent message queue with a C core.

>>> import nanomq
>>> with nanomq.Publisher("127.0.0.1:9000") as pub:          # doctest: +SKIP
...     msg_id = pub.publish("my-topic", b"Hello, NanoMQ!")

Names are imported on first use (PEP 562), so ``import nanomq.testing`` — the pytest plugin every
pytest run in an environment with nanomq loads — stays cheap and imports no C extension.
``nanomq.ProtocolError`` is the client's (a :class:`NanoMQError`, and also the codec's
``nanomq.protocol.ProtocolError``, which it subclasses). The asyncio clients are in ``nanomq.aio``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "ArgumentTypeError", "ConnectionLostError", "InvalidArgumentError", "Message", "NanoMQError",
    "NotSupportedError", "ProtocolError", "Publisher", "RecordHeader", "RequestTimeoutError", "ServerError",
    "Subscriber", "__version__",
]

__version__ = "0.1.0"

_HOME = {name: "nanomq.client" for name in __all__ if name != "__version__"}

if TYPE_CHECKING:
    from nanomq.client import (
        ArgumentTypeError,
        ConnectionLostError,
        InvalidArgumentError,
        Message,
        NanoMQError,
        NotSupportedError,
        ProtocolError,
        Publisher,
        RecordHeader,
        RequestTimeoutError,
        ServerError,
        Subscriber,
    )


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nanomq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
