"""The root of every exception NanoMQ raises, in one module with no imports of its own, so that
the codec (nanomq.protocol), the storage layer and the clients can all derive from it without
importing each other."""

from __future__ import annotations

__all__ = ["NanoMQError"]


class NanoMQError(Exception):
    """Base class of every NanoMQ error: ``except nanomq.NanoMQError`` catches them all."""
