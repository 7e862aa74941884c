"""Topic logs and consumer-group offsets on disk (the Python side of the C write-ahead log).

``TopicLog`` appends, syncs (group commit), reads zero-copy and recovers one topic's directory of
segments; ``TopicCatalog`` lists, creates and repairs the topic directories of a data directory and
hands out topic ids; ``OffsetStore`` keeps committed consumer-group positions durably and atomically. The
normative contract is spec/storage.md; docs/storage.md explains the design and measured figures.
"""

from nanomq.storage.catalog import StoredTopic, TopicCatalog, TopicRetention, read_retention, write_retention
from nanomq.storage.errors import (
    BadRecordsError,
    LogClosedError,
    LogCorruptError,
    LogIOError,
    LogLockedError,
    OffsetStoreError,
    StorageError,
)
from nanomq.storage.offsets import OffsetStore
from nanomq.storage.topic_log import ReadResult, RecoveryReport, SyncPolicy, TopicLog

__all__ = [
    "TopicLog",
    "ReadResult",
    "RecoveryReport",
    "SyncPolicy",
    "OffsetStore",
    "TopicCatalog",
    "StoredTopic",
    "TopicRetention",
    "read_retention",
    "write_retention",
    "StorageError",
    "LogIOError",
    "LogCorruptError",
    "LogLockedError",
    "LogClosedError",
    "BadRecordsError",
    "OffsetStoreError",
]
