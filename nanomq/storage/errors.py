"""Exceptions of the storage layer (the log's come from the C wrapper, re-exported here)."""

from __future__ import annotations

from nanomq._c.log import (
    BadRecordsError,
    LogClosedError,
    LogCorruptError,
    LogError,
    LogIOError,
    LogLockedError,
)

__all__ = [
    "StorageError",
    "LogError",
    "LogIOError",
    "LogCorruptError",
    "LogLockedError",
    "LogClosedError",
    "BadRecordsError",
    "OffsetStoreError",
]

StorageError = LogError
"""Base class of every storage error."""


class OffsetStoreError(LogError):
    """The offset store could not be read or written (the cause is chained)."""
