"""The admin API's resources (spec/admin.md): health, metrics, broker, topics, connections.

Every handler reads the broker's state on the event loop, in one go (no await between two reads),
so what one answer shows is consistent; none of them touches the disk except ``POST /v1/topics``,
whose creation runs in the registry's creation threads like a client's ([NMQ-ADM-1-3]).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Awaitable, Collection, Iterator
from concurrent.futures import Executor
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from prometheus_client.registry import CollectorRegistry

from nanomq import __version__
from nanomq.broker.admin_http import HttpRequest, HttpResponse, error_response, json_response
from nanomq.broker.auth import Action, Authenticator, Principal
from nanomq.broker.config import MAX_RETENTION_BYTES, MAX_RETENTION_MS, BrokerConfig
from nanomq.broker.metrics import CONTENT_TYPE, BrokerCollector, BrokerView, TopicView, exposition
from nanomq.protocol import Capability, valid_topic
from nanomq.storage import StorageError, TopicRetention

__all__ = ["AdminApi", "AdminBrokerView"]


def _unauthenticated(message: str) -> HttpResponse:
    resp = error_response(401, "UNAUTHENTICATED", message)
    resp.headers.append(("www-authenticate", 'Bearer realm="nanomq"'))
    return resp


def _admin_of(p: Principal, topic: str | None) -> bool:
    """Whether ``p`` holds admin on ``topic``, or (None) on every topic: a grant of ``*``."""
    if topic is not None:
        return p.allowed(topic, Action.ADMIN)
    return any(g.actions & Action.ADMIN and not g.group and g.prefix and g.stem == "" for g in p.grants)


def _create_name(body: bytes) -> str | None:
    """The topic a ``POST /v1/topics`` names, if its body says (the body is checked later)."""
    try:
        doc = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        return None
    name = doc.get("name") if isinstance(doc, dict) else None
    return name if isinstance(name, str) else None


class _Described(Protocol):
    def describe(self) -> dict[str, object]: ...


class _Topics(Protocol):
    def __iter__(self) -> Iterator[TopicView]: ...
    def __len__(self) -> int: ...
    def get(self, name: str) -> TopicView | None: ...
    def creating(self, name: str) -> Awaitable[TopicView | None] | None: ...
    def open_or_create(self, name: str) -> TopicView | Awaitable[TopicView | None]: ...
    def effective_retention(self, own: TopicRetention) -> tuple[int | None, int | None]: ...
    def set_retention(self, topic: Any, own: TopicRetention) -> None: ...


class AdminBrokerView(BrokerView, Protocol):
    """What the admin API reads and does of the broker (nanomq.broker.server.Broker; a protocol,
    so that this module does not import the server that imports it)."""

    config: BrokerConfig
    capabilities: Capability
    auth: Authenticator | None

    @property
    def auth_executor(self) -> Executor | None:
        """Where tokens are checked (one scrypt each, off the loop)."""

    @property
    def connections(self) -> Collection[_Described]:
        """Every client connection."""

    @property
    def topics(self) -> _Topics:
        """The topic registry."""

    @property
    def listening(self) -> bool:
        """Whether the client port listens."""

    @property
    def address(self) -> tuple[str, int]:
        """The client port's (host, port)."""

    async def delete_topic(self, name: str) -> None:
        """Delete a topic ([NMQ-ADM-3-5]); LookupError, StorageError."""


class AdminApi:
    """Routes a request to its resource; one per broker."""

    def __init__(self, broker: AdminBrokerView) -> None:
        self._broker = broker
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(BrokerCollector(broker))

    async def __call__(self, req: HttpRequest) -> HttpResponse:
        """The answer to ``req`` (the :class:`~nanomq.broker.admin_http.AdminHttpServer` handler)."""
        path = urlsplit(req.target).path
        parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
        method = "GET" if req.method == "HEAD" else req.method
        if parts == ["healthz"]:
            return self._only(method, "GET") or json_response(200, {"status": "ok"})
        if parts == ["readyz"]:
            return self._only(method, "GET") or self._readyz()
        # Everything below needs an admin principal when the broker authenticates ([NMQ-ADM-1-5]):
        # admin on the topic a request names, admin on every topic for the rest. The permission is
        # checked before anything is looked up, so a refusal says nothing about what exists.
        named = parts[2] if len(parts) in (3, 4) and parts[:2] == ["v1", "topics"] else None
        if named is None and parts == ["v1", "topics"] and method == "POST":
            named = _create_name(req.body)
        if (refused := await self._authorize(req, named)) is not None:
            return refused
        if parts == ["metrics"]:
            return self._only(method, "GET") or HttpResponse(200, exposition(self._registry), CONTENT_TYPE)
        if not parts or parts[0] != "v1" or len(parts) < 2:
            return error_response(404, "NOT_FOUND", f"no resource {path!r} (spec/admin.md lists them)")
        resource, rest = parts[1], parts[2:]
        if resource == "broker" and not rest:
            return self._only(method, "GET") or json_response(200, self._describe_broker())
        if resource == "connections" and not rest:
            return self._only(method, "GET") or self._list_connections()
        if resource == "groups" and not rest:
            return self._only(method, "GET") or error_response(
                501, "NOT_SUPPORTED", "consumer groups are not supported by this broker yet: there are no groups "
                "to show (the CONSUMER_GROUPS capability is not announced)")
        if resource == "topics":
            return await self._topics(method, rest, req)
        return error_response(404, "NOT_FOUND", f"no resource {path!r} (spec/admin.md lists them)")

    # -------------------------------------------------------------- authentication

    async def _authorize(self, req: HttpRequest, topic: str | None) -> HttpResponse | None:
        """None when ``req`` may go on; else the refusal (401, 403 or 429)."""
        auth = self._broker.auth
        if auth is None:
            return None
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthenticated("this broker authenticates: send Authorization: Bearer <token> of a principal "
                                    "with the admin permission")
        raw = token.strip().encode()
        address = req.peer
        principal = auth.cached(raw)
        if principal is None:
            if auth.limited(address):
                auth.refused(address)
                return error_response(429, "TOO_MANY_FAILURES", "too many failed authentications from this address; "
                                      "try again later")
            generation, name = await asyncio.get_running_loop().run_in_executor(
                self._broker.auth_executor, auth.verify, raw)
            principal = auth.remember(generation, raw, name) if name is not None else None
            if principal is None:
                auth.failed(address, "admin API: no principal proved by the token", auth.named_by(raw))
                return _unauthenticated("the token proves no principal")
            auth.succeeded(address, principal.name, "token (admin API)")
        if not _admin_of(principal, topic):
            what = f"topic {topic!r}" if topic is not None else "every topic ('*')"
            return error_response(403, "PERMISSION_DENIED", f"principal {principal.name!r} lacks the admin permission "
                                  f"on {what}")
        return None

    # -------------------------------------------------------------- health

    @staticmethod
    def _only(method: str, *allowed: str) -> HttpResponse | None:
        if method in allowed:
            return None
        resp = error_response(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed here (only {', '.join(allowed)})")
        resp.headers.append(("allow", ", ".join(allowed)))
        return resp

    def _readyz(self) -> HttpResponse:
        b = self._broker
        if b.ready:
            return json_response(200, {"ready": True})
        return json_response(503, {"ready": False, "reason": "recovering" if not b.stopping else "stopping"})

    def _not_ready(self) -> HttpResponse | None:
        if self._broker.ready:
            return None
        return error_response(503, "NOT_READY", "the broker is still recovering its topics (see /readyz)")

    # -------------------------------------------------------------- broker

    def _describe_broker(self) -> dict[str, object]:
        b = self._broker
        cfg = b.config
        host, port = b.address if b.listening else (cfg.host, cfg.port)
        caps = [c.name for c in Capability if c.name is not None and b.capabilities & c]
        data_dir = os.fspath(cfg.data_dir)
        disk: dict[str, int] = {}
        try:
            usage = shutil.disk_usage(data_dir)
            disk = {"total_bytes": usage.total, "free_bytes": usage.free}
        except OSError:
            pass
        if b.ready:
            disk["topics_bytes"] = sum(t.log.stats().total_bytes for t in b.topics)
        return {
            "version": __version__,
            "server_name": cfg.server_name,
            "protocol_version": 1,
            "address": {"host": host, "port": port},
            "ready": b.ready,
            "uptime_s": round(b.uptime_s(), 3),
            "recovery_s": round(b.stats.recovery_seconds, 3),
            "capabilities": caps,
            "topics": len(b.topics) if b.ready else None,
            "connections": len(b.connections),
            "disk": disk,
            "config": {
                "data_dir": data_dir,
                "data_plane": cfg.data_plane,
                "loop": cfg.loop,
                "fsync": cfg.fsync,
                "fsync_interval_ms": cfg.fsync_interval_ms,
                "segment_bytes": cfg.segment_bytes,
                "retention_ms": cfg.retention_ms,
                "retention_bytes": cfg.retention_bytes,
                "compression": cfg.compression,
                "max_connections": cfg.max_connections,
                "max_topics": cfg.max_topics,
                "max_subscriptions": cfg.max_subscriptions,
                "max_frame": cfg.max_frame,
                "max_payload": cfg.max_payload,
                "max_batch": cfg.max_batch,
                "tls": cfg.tls_cert is not None,
            },
        }

    # -------------------------------------------------------------- connections

    def _list_connections(self) -> HttpResponse:
        conns = sorted((c.describe() for c in self._broker.connections), key=lambda d: str(d["peer"]))
        return json_response(200, {"connections": conns})

    # -------------------------------------------------------------- topics

    async def _topics(self, method: str, rest: list[str], req: HttpRequest) -> HttpResponse:
        if (wait := self._not_ready()) is not None:
            return wait
        b = self._broker
        if not rest:
            if method == "GET":
                subs = b.subscription_positions()
                return json_response(200, {"topics": [self._describe_topic(t, subs) for t in
                                                      sorted(b.topics, key=lambda t: t.name)]})
            if method == "POST":
                return await self._create_topic(req)
            return self._only(method, "GET", "POST") or error_response(405, "METHOD_NOT_ALLOWED", method)
        if len(rest) == 1:
            if (bad := self._only(method, "GET", "DELETE")) is not None:
                return bad
            topic = b.topics.get(rest[0])
            if topic is None:
                return error_response(404, "UNKNOWN_TOPIC", f"no topic {rest[0]!r}")
            described = self._describe_topic(topic, b.subscription_positions())
            if method == "GET":
                return json_response(200, described)
            try:
                await b.delete_topic(rest[0])
            except LookupError:  # deleted by another request meanwhile
                return error_response(404, "UNKNOWN_TOPIC", f"no topic {rest[0]!r}")
            except StorageError as e:
                return error_response(507, "STORAGE_ERROR", f"topic {rest[0]!r} not deleted (it stays): {e}")
            return json_response(200, {"deleted": described})
        if len(rest) == 2 and rest[1] == "retention":
            if (bad := self._only(method, "PUT")) is not None:
                return bad
            return await self._set_retention(rest[0], req)
        return error_response(404, "NOT_FOUND", f"no resource {req.target!r}")

    async def _set_retention(self, name: str, req: HttpRequest) -> HttpResponse:
        """PUT /v1/topics/NAME/retention ([NMQ-ADM-3-8])."""
        try:
            doc = json.loads(req.body or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            return error_response(400, "BAD_REQUEST", f"the body is not JSON: {e}")
        keys = {"retention_ms", "retention_bytes"}
        if not isinstance(doc, dict) or set(doc) != keys:
            return error_response(400, "BAD_REQUEST", 'the body must be {"retention_ms": N|0|null, '
                                  '"retention_bytes": N|0|null} (0: none; null: the broker\'s)')
        for key, top in (("retention_ms", MAX_RETENTION_MS), ("retention_bytes", MAX_RETENTION_BYTES)):
            v = doc[key]
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= top):
                return error_response(400, "BAD_REQUEST", f"{key} must be null, 0 (none) or 1 .. {top}, not {v!r}")
        b = self._broker
        topic = b.topics.get(name)
        if topic is None:
            return error_response(404, "UNKNOWN_TOPIC", f"no topic {name!r}")
        own = TopicRetention(doc["retention_ms"], doc["retention_bytes"])
        try:
            await asyncio.get_running_loop().run_in_executor(None, b.topics.set_retention, topic, own)
        except StorageError as e:
            return error_response(507, "STORAGE_ERROR", f"retention of topic {name!r} not changed: {e}")
        return json_response(200, self._describe_topic(topic, b.subscription_positions()))

    def _describe_topic(self, t: TopicView, positions: dict[str, list[int]]) -> dict[str, object]:
        st = t.log.stats()
        ms, nbytes = self._broker.topics.effective_retention(t.own_retention)
        subs = positions.get(t.name, [])
        return {
            "name": t.name,
            "topic_id": t.topic_id,
            "first_id": st.first_id,
            "next_id": st.next_id,
            "durable_id": st.durable_id,
            "records": st.next_id - st.first_id,
            "disk_bytes": st.total_bytes,
            "segments": st.segments,
            "last_timestamp_ns": st.last_timestamp_ns,
            "subscriptions": len(subs),
            "max_lag_records": max((max(0, st.next_id - p) for p in subs), default=0),
            "published_bytes": t.bytes_in,
            "delivered_records": t.delivered_records,
            "delivered_bytes": t.delivered_bytes,
            "read_only": bool(st.read_only_errno),
            "last_sync_errno": st.last_sync_errno,
            "retention": {"retention_ms": ms, "retention_bytes": nbytes,
                          "own": {"retention_ms": t.own_retention.retention_ms,
                                  "retention_bytes": t.own_retention.retention_bytes}},
        }

    async def _create_topic(self, req: HttpRequest) -> HttpResponse:
        try:
            doc = json.loads(req.body or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            return error_response(400, "BAD_REQUEST", f"the body is not JSON: {e}")
        if not isinstance(doc, dict) or set(doc) != {"name"} or not isinstance(doc["name"], str):
            return error_response(400, "BAD_REQUEST", 'the body must be {"name": "<topic>"}')
        name = doc["name"]
        if not valid_topic(name):
            return error_response(400, "INVALID_TOPIC", f"invalid topic {name!r}: 1-255 characters of A-Z a-z 0-9 . _ -")
        b = self._broker
        existing = b.topics.get(name)
        if existing is not None:
            return json_response(200, self._describe_topic(existing, b.subscription_positions()))
        try:
            topic = None
            while topic is None:  # a deletion of the name in progress is waited for, then it is created anew
                made = b.topics.creating(name) or b.topics.open_or_create(name)
                topic = await made if isinstance(made, Awaitable) else made
        except LookupError as e:  # the topic limit
            return error_response(409, "RESOURCE_LIMIT", str(e))
        except StorageError as e:
            return error_response(507, "STORAGE_ERROR", f"topic {name!r} not created: {e}")
        return json_response(201, self._describe_topic(topic, b.subscription_positions()))
