"""asyncio clients: :class:`AsyncPublisher` and :class:`AsyncSubscriber` (they live in
``nanomq.client.aio``; this module keeps the short import path)."""

from nanomq.client.aio import AsyncPublisher, AsyncSubscriber

__all__ = ["AsyncPublisher", "AsyncSubscriber"]
