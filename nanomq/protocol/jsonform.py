"""Frames as plain JSON-ready dicts, and back: the language-neutral form of spec/vectors/.

``to_dict(frame)`` gives ``{"type": "Publish", "request_id": 1, ...}`` with bytes as hex strings,
enums as their names and record batches as lists of records; ``from_dict`` inverts it exactly.
"""

from __future__ import annotations

import struct
from dataclasses import fields
from enum import Enum
from typing import Any

from nanomq.protocol.codec import REQUESTS, RESPONSES
from nanomq.protocol.constants import Ack, Start
from nanomq.protocol.frames import Frame, TopicInfo
from nanomq.protocol.records import Record, RecordBatch

__all__ = ["to_dict", "from_dict", "FRAME_TYPES"]

FRAME_TYPES: dict[str, type[Frame]] = {c.__name__: c for c in (*REQUESTS.values(), *RESPONSES.values())}
"""Frame class by name, as used in the ``type`` key."""

_ENUM_FIELDS: dict[str, type[Enum]] = {"ack": Ack, "start": Start}


def _record_to_dict(r: Record) -> dict[str, Any]:
    d: dict[str, Any] = r._asdict()
    d["payload"] = r.payload.hex()
    return d


def to_dict(frame: Frame) -> dict[str, Any]:
    """A JSON-ready dict describing ``frame``."""
    out: dict[str, Any] = {"type": type(frame).__name__}
    for f in fields(frame):
        v = getattr(frame, f.name)
        if isinstance(v, RecordBatch):
            v = [_record_to_dict(r) for r in v]
        elif isinstance(v, Enum):
            v = v.name
        elif isinstance(v, bytes):
            v = v.hex()
        elif isinstance(v, tuple) and v and isinstance(v[0], TopicInfo):
            v = [{"topic_id": t.topic_id, "name": t.name, "first_id": t.first_id, "next_id": t.next_id} for t in v]
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _batch(records: list[dict[str, Any]]) -> RecordBatch:
    """Rebuild the exact bytes of a batch from its records (CRCs are checked, not recomputed)."""
    parts = []
    for r in records:
        payload = bytes.fromhex(r["payload"])
        hdr = struct.pack(
            "<QQIIIIQQI12x", r["id"], r["timestamp_ns"], r["topic_id"], r["size"], r["crc"],
            r["flags"], r["producer_id"], r["sequence"], r["raw_size"],
        )
        pad = (-(64 + len(payload))) % 8
        parts.append(hdr + payload + bytes(pad))
    return RecordBatch.parse(b"".join(parts), len(records), max_payload=1 << 31)


def from_dict(d: dict[str, Any]) -> Frame:
    """The frame a :func:`to_dict` dict describes."""
    cls = FRAME_TYPES[d["type"]]
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        if f.name == "records":
            v = _batch(v)
        elif f.name in _ENUM_FIELDS:
            v = _ENUM_FIELDS[f.name][v]
        elif f.name == "auth_token":
            v = bytes.fromhex(v)
        elif f.name == "topics":
            v = tuple(TopicInfo(**t) for t in v)
        elif f.name == "ids":
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)

