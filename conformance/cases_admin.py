"""The admin HTTP API of spec/admin.md, for a target that declares one (``admin`` in target.toml).

A target without one gets UNIMPLEMENTED: the API is optional as a whole. Every case talks plain
HTTP/1.1 (http.client) to the declared base URL and checks what the wire protocol shows at the same
time (HELLO_OK's capabilities, METADATA's ids, a subscription's position), so the API is checked
against the broker's own answers, never against the reference implementation.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from typing import Any
from urllib.parse import quote, urlsplit

from prometheus_client.parser import text_string_to_metric_families

from conformance.cases_storage import _need, running_at_exit
from conformance.helpers import HELLO_V1, alive, closed, collect_all, is_error, publish, subscribe, topic_info
from conformance.registry import Context, Failed, Skipped, Unimplemented, case, check
from conformance.target import Target
from nanomq.protocol import Capability, ErrorCode, Metadata

_ERROR_CODES = {"BAD_REQUEST", "TOO_LARGE", "TOO_MANY_CONNECTIONS", "NOT_FOUND", "METHOD_NOT_ALLOWED", "NOT_READY",
                "UNKNOWN_TOPIC", "INVALID_TOPIC", "RESOURCE_LIMIT", "STORAGE_ERROR", "NOT_SUPPORTED", "INTERNAL",
                "UNAUTHENTICATED", "PERMISSION_DENIED", "TOO_MANY_FAILURES"}


class _Admin:
    """One admin API, by its base URL."""

    def __init__(self, ctx: Context, target: Target | None = None, token: str = "") -> None:
        url = (target or ctx.target).admin_url
        self.token = token
        """Sent as ``Authorization: Bearer`` (empty: no header)."""
        if not url:
            raise Unimplemented("the target declares no admin API (admin = URL in target.toml)")
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise Failed(f"admin {url!r}: the kit speaks http://host:port", ())
        self.host, self.port, self.base = parts.hostname, parts.port, parts.path.rstrip("/")

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        headers = dict(headers or {})
        if self.token and "authorization" not in {k.lower() for k in headers}:
            headers["authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, self.base + path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, expect: int, body: bytes | None = None, rule: str = "",
             headers: dict[str, str] | None = None) -> Any:
        status, headers, data = self.call(method, path, body, headers)
        check(status == expect, f"{method} {path}: status {status}, expected {expect} ({data[:200]!r})", *(
            (rule,) if rule else ()))
        ctype = headers.get("content-type", "")
        check(ctype.split(";")[0].strip() == "application/json", f"{method} {path}: content-type {ctype!r}, not "
              "application/json", "NMQ-ADM-1-2")
        try:
            return json.loads(data)
        except ValueError as e:
            raise Failed(f"{method} {path}: the body is not JSON ({e}): {data[:200]!r}", ("NMQ-ADM-1-2",)) from None

    def error(self, method: str, path: str, expect: int, code: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> dict[str, str]:
        doc = self.json(method, path, expect, body, headers=headers)
        err = doc.get("error") if isinstance(doc, dict) else None
        check(isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str),
              f"{method} {path}: error body {doc!r} is not {{\"error\": {{\"code\", \"message\"}}}}", "NMQ-ADM-1-4")
        assert isinstance(err, dict)
        check(err["code"] == code, f"{method} {path}: error code {err['code']!r}, expected {code!r}")
        check(err["code"] in _ERROR_CODES, f"{method} {path}: error code {err['code']!r} is not one of §4",
              "NMQ-ADM-1-4")
        return err

    def raw(self, data: bytes, timeout: float = 5.0) -> bytes:
        """Send ``data`` on a fresh connection; what comes back until the server closes or
        ``timeout`` passes."""
        out = b""
        with socket.create_connection((self.host, self.port), timeout=timeout) as s:
            s.sendall(data)
            deadline = time.monotonic() + timeout
            try:
                while time.monotonic() < deadline:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    out += chunk
            except (TimeoutError, ConnectionResetError):
                pass
        return out


def _status(raw: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", raw)
    return int(m.group(1)) if m else 0


@case("admin.health", "GET /healthz answers 200 {\"status\": \"ok\"}; /readyz 200 {\"ready\": true} on a serving broker",
      layer="wire", rules=("NMQ-ADM-2-1", "NMQ-ADM-2-2", "NMQ-ADM-1-2"))
def admin_health(ctx: Context) -> None:
    a = _Admin(ctx)
    with ctx.step("NMQ-ADM-2-1"):
        doc = a.json("GET", "/healthz", 200)
        check(doc == {"status": "ok"}, f"/healthz answered {doc!r}")
    with ctx.step("NMQ-ADM-2-2"):
        doc = a.json("GET", "/readyz", 200)
        check(doc.get("ready") is True, f"/readyz answered {doc!r} on a broker that serves clients")


@case("admin.separate-port", "the admin API is HTTP on a port of its own: the wire protocol is not spoken there, "
      "and the client port does not answer HTTP", layer="wire", rules=("NMQ-ADM-1-1",))
def admin_separate_port(ctx: Context) -> None:
    a = _Admin(ctx)
    check(a.port != ctx.target.port, f"the admin API is on the client port {a.port}")
    answer = a.raw(HELLO_V1, timeout=2.0)
    check(not answer or answer.startswith(b"HTTP/1."), f"a HELLO sent to the admin port got {answer[:40]!r}, "
          "not an HTTP answer or a close")
    with ctx.client() as w:
        alive(w, "NMQ-ADM-1-1")


@case("admin.errors", "unknown path 404 NOT_FOUND, a method not taken 405 METHOD_NOT_ALLOWED with allow, HEAD as GET "
      "without a body; every error has the error body", layer="wire", rules=("NMQ-ADM-1-4",))
def admin_errors(ctx: Context) -> None:
    a = _Admin(ctx)
    a.error("GET", "/v1/no-such-resource", 404, "NOT_FOUND")
    a.error("GET", "/nothing/here", 404, "NOT_FOUND")
    status, headers, _ = a.call("DELETE", "/healthz")
    check(status == 405 and "GET" in headers.get("allow", ""), f"DELETE /healthz: {status}, allow "
          f"{headers.get('allow')!r}")
    a.error("PUT", "/v1/broker", 405, "METHOD_NOT_ALLOWED")
    _, get_headers, get_body = a.call("GET", "/healthz")
    status, headers, body = a.call("HEAD", "/healthz")
    check(status == 200 and body == b"", f"HEAD /healthz: {status} with {len(body)} body bytes")
    check(headers.get("content-length") == get_headers.get("content-length", str(len(get_body))),
          f"HEAD /healthz content-length {headers.get('content-length')!r}, GET's {get_headers.get('content-length')!r}")


@case("admin.bad-requests", "malformed, oversized and half-sent requests get an error or a closed connection, and "
      "clients of the wire protocol are served meanwhile", layer="wire", rules=("NMQ-ADM-1-3",))
def admin_bad_requests(ctx: Context) -> None:
    a = _Admin(ctx)
    with ctx.client() as w:
        for data in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (256 * 1024) + b"\r\n\r\n",
                     b"\x16\x03\x01\x00\xff" + bytes(300), b"GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: zz\r\n\r\n"):
            answer = a.raw(data, timeout=3.0)
            status = _status(answer)
            check(not answer or 400 <= status < 500, f"{data[:30]!r}...: answered {answer[:60]!r}, not a 4xx or a close")
            alive(w, "NMQ-ADM-1-3")
        big = b"x" * (8 << 20)
        head = f"POST /v1/topics HTTP/1.1\r\nhost: x\r\ncontent-length: {len(big)}\r\n\r\n".encode()
        answer = a.raw(head + big, timeout=5.0)
        check(not answer or 400 <= _status(answer) < 500, f"an 8 MiB body got {answer[:60]!r}")
        # A request that never ends, held open while the broker serves others.
        with socket.create_connection((a.host, a.port), timeout=5) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            alive(w, "NMQ-ADM-1-3")
            doc = a.json("GET", "/healthz", 200)
            check(doc == {"status": "ok"}, f"/healthz beside a half-sent request: {doc!r}")


@case("admin.broker", "GET /v1/broker carries its required fields, and capabilities are exactly HELLO_OK's",
      layer="wire", rules=("NMQ-ADM-3-1", "NMQ-ADM-3-2"))
def admin_broker(ctx: Context) -> None:
    a = _Admin(ctx)
    doc = a.json("GET", "/v1/broker", 200)
    with ctx.step("NMQ-ADM-3-1"):
        for key, kind in (("version", str), ("server_name", str), ("protocol_version", int), ("address", dict),
                          ("ready", bool), ("uptime_s", (int, float)), ("recovery_s", (int, float)),
                          ("capabilities", list), ("connections", int), ("disk", dict), ("config", dict)):
            check(isinstance(doc.get(key), kind), f"/v1/broker: {key} is {doc.get(key)!r}")
        check(doc["protocol_version"] == 1, f"protocol_version {doc['protocol_version']!r}")
        check(doc["ready"] is True, "ready is not true on a serving broker")
    with ctx.step("NMQ-ADM-3-2"):
        with ctx.target.raw_client() as w:
            ok = w.hello()
        announced = sorted(c.name for c in Capability if c.name is not None and ok.capabilities & c)
        check(sorted(doc["capabilities"]) == announced, f"/v1/broker capabilities {sorted(doc['capabilities'])}, "
              f"HELLO_OK announced {announced}")


def _check_topic(doc: Any, where: str) -> None:
    check(isinstance(doc.get("name"), str), f"{where}: name is {doc.get('name')!r}", "NMQ-ADM-3-1")
    for key in ("topic_id", "first_id", "next_id", "durable_id", "records", "disk_bytes", "segments",
                "last_timestamp_ns", "subscriptions", "max_lag_records", "published_bytes", "delivered_records",
                "delivered_bytes", "last_sync_errno"):
        check(isinstance(doc.get(key), int) and not isinstance(doc.get(key), bool), f"{where}: {key} is "
              f"{doc.get(key)!r}", "NMQ-ADM-3-1")
    check(isinstance(doc.get("read_only"), bool), f"{where}: read_only is {doc.get('read_only')!r}", "NMQ-ADM-3-1")


@case("admin.topics", "GET /v1/topics lists topics sorted by name, /v1/topics/NAME agrees with METADATA, an unknown "
      "one is 404 UNKNOWN_TOPIC", layer="wire", rules=("NMQ-ADM-3-3", "NMQ-ADM-3-1"))
def admin_topics(ctx: Context) -> None:
    a = _Admin(ctx)
    t = ctx.topic("adm")
    with ctx.client() as w:
        publish(w, t, [b"r%d" % i for i in range(7)])
        info = topic_info(w, t)
        doc = a.json("GET", "/v1/topics/" + quote(t, safe=""), 200)
        _check_topic(doc, f"/v1/topics/{t}")
        with ctx.step("NMQ-ADM-3-3"):
            check((doc["name"], doc["topic_id"], doc["first_id"], doc["next_id"]) ==
                  (t, info.topic_id, info.first_id, info.next_id),
                  f"/v1/topics/{t}: {doc['topic_id']}, {doc['first_id']}..{doc['next_id']}; METADATA: "
                  f"{info.topic_id}, {info.first_id}..{info.next_id}")
            check(doc["records"] == info.next_id - info.first_id == 7, f"records {doc['records']}")
            listed = a.json("GET", "/v1/topics", 200)
            names = [x.get("name") for x in listed.get("topics", [])]
            check(t in names, f"{t} missing from /v1/topics")
            check(names == sorted(names), "/v1/topics is not sorted by name")
            a.error("GET", "/v1/topics/" + quote(ctx.topic("absent"), safe=""), 404, "UNKNOWN_TOPIC")


@case("admin.create-topic", "POST /v1/topics creates a topic (201, then 200: idempotent) that METADATA shows; bad "
      "names and bodies are 400", layer="wire", rules=("NMQ-ADM-3-4",))
def admin_create_topic(ctx: Context) -> None:
    a = _Admin(ctx)
    t = ctx.topic("admmade")
    doc = a.json("POST", "/v1/topics", 201, json.dumps({"name": t}).encode())
    _check_topic(doc, "POST /v1/topics")
    check(doc["name"] == t, f"created {doc['name']!r}, asked for {t!r}")
    again = a.json("POST", "/v1/topics", 200, json.dumps({"name": t}).encode())
    check(again["topic_id"] == doc["topic_id"], "creating an existing topic changed its id")
    with ctx.client() as w:
        info = topic_info(w, t)
        check(info.topic_id == doc["topic_id"], f"METADATA id {info.topic_id}, the API's {doc['topic_id']}")
    a.error("POST", "/v1/topics", 400, "INVALID_TOPIC", json.dumps({"name": "bad name!"}).encode())
    a.error("POST", "/v1/topics", 400, "INVALID_TOPIC", json.dumps({"name": "x" * 256}).encode())
    a.error("POST", "/v1/topics", 400, "BAD_REQUEST", b"{not json")
    a.error("POST", "/v1/topics", 400, "BAD_REQUEST", json.dumps({"topic": t}).encode())


@case("admin.connections", "GET /v1/connections lists every connection with every subscription and its position",
      layer="wire", rules=("NMQ-ADM-3-6", "NMQ-ADM-3-1"))
def admin_connections(ctx: Context) -> None:
    a = _Admin(ctx)
    t = ctx.topic("admconn")
    with ctx.client() as p, ctx.client() as s:
        publish(p, t, [b"a", b"b", b"c"])
        sub = subscribe(s, t, credit=0)
        doc = a.json("GET", "/v1/connections", 200)
        conns = doc.get("connections")
        check(isinstance(conns, list) and len(conns) >= 2, f"/v1/connections: {str(doc)[:200]}")
        for c in conns:
            check("principal" in c and (c["principal"] is None or isinstance(c["principal"], str)),
                  f"a connection's principal is {c.get('principal', 'missing')!r}", "NMQ-ADM-3-1")
            for key, kind in (("peer", str), ("client_name", str), ("state", str), ("write_state", str),
                              ("tls", bool), ("age_s", (int, float)), ("idle_s", (int, float)),
                              ("buffered_in_bytes", int), ("buffered_out_bytes", int), ("subscriptions", list)):
                check(isinstance(c.get(key), kind), f"a connection's {key} is {c.get(key)!r}", "NMQ-ADM-3-1")
        with ctx.step("NMQ-ADM-3-6"):
            mine = [x for c in conns for x in c["subscriptions"] if x.get("topic") == t]
            check(len(mine) == 1, f"{len(mine)} subscriptions of {t} listed, 1 held")
            check(mine[0].get("sub_id") == sub.sub_id and mine[0].get("next_id") == sub.next_id,
                  f"listed {mine[0]}, SUBSCRIBED said sub {sub.sub_id} next {sub.next_id}")


@case("admin.groups", "GET /v1/groups: 501 NOT_SUPPORTED on a broker without CONSUMER_GROUPS", layer="wire",
      rules=("NMQ-ADM-3-7",))
def admin_groups(ctx: Context) -> None:
    a = _Admin(ctx)
    if ctx.has(Capability.CONSUMER_GROUPS):
        raise Unimplemented("the kit checks /v1/groups only on brokers without groups (spec/admin.md §3.4)")
    a.error("GET", "/v1/groups", 501, "NOT_SUPPORTED")


@case("admin.metrics", "GET /metrics is the Prometheus text format, every family prefixed nanomq_ with HELP and "
      "TYPE, counters ending _total", layer="wire", rules=("NMQ-ADM-5-1", "NMQ-ADM-1-2"))
def admin_metrics(ctx: Context) -> None:
    a = _Admin(ctx)
    with ctx.client() as w:
        publish(w, ctx.topic("admmetrics"), [b"m"])
    status, headers, body = a.call("GET", "/metrics")
    check(status == 200, f"/metrics: {status}")
    with ctx.step("NMQ-ADM-1-2"):
        ctype = headers.get("content-type", "")
        check(ctype.startswith("text/plain") and "version=0.0.4" in ctype, f"/metrics content-type {ctype!r}")
        text = body.decode("utf-8")
    with ctx.step("NMQ-ADM-5-1"):
        families = list(text_string_to_metric_families(text))
        check(families, "/metrics exports nothing")
        helps = set(re.findall(r"^# HELP (\S+) ", text, re.M))
        types = dict(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
        for name, kind in types.items():
            check(name.startswith("nanomq_"), f"metric {name} lacks the nanomq_ prefix")
            check(name in helps, f"metric {name} has no HELP line")
            check(kind != "counter" or name.endswith("_total"), f"counter {name} does not end in _total")
            check(not re.search(r"_(milliseconds|ms|us|micros|kb|mb|percent)(_total)?$", name),
                  f"metric {name} is not in a base unit")


@case("admin.auth", "with authentication on, the admin API needs a bearer token of an admin principal: none or a "
      "bad one is 401, a principal without admin 403 whether a topic exists or not; the probes stay open",
      layer="wire", rules=("NMQ-ADM-1-5",))
def admin_auth(ctx: Context) -> None:
    if ctx.auth is None or ctx.auth_target is None:
        raise Skipped("no [target.auth] in the target description (an authenticating instance and its principals)")
    auth, target = ctx.auth, ctx.auth_target
    anonymous = _Admin(ctx, target)
    admin = _Admin(ctx, target, auth.token)
    restricted = _Admin(ctx, target, auth.restricted_token)
    check(anonymous.json("GET", "/healthz", 200) == {"status": "ok"}, "/healthz needs no token")
    check(anonymous.json("GET", "/readyz", 200).get("ready") is True, "/readyz needs no token")
    existing = ctx.topic("admauth")
    admin.json("POST", "/v1/topics", 201, json.dumps({"name": existing}).encode())
    absent = ctx.topic("admauth-absent")
    for path in ("/v1/broker", "/v1/topics", "/v1/connections", "/metrics", f"/v1/topics/{existing}"):
        status, headers, _ = anonymous.call("GET", path)
        check(status == 401 and headers.get("www-authenticate", "").lower().startswith("bearer"),
              f"GET {path} without a token: {status}, www-authenticate {headers.get('www-authenticate')!r}")
        status, _, _ = anonymous.call("GET", path, headers={"authorization": "Bearer nobody:" + "x" * 32})
        check(status == 401, f"GET {path} with a token that proves no principal: {status}")
    for path in ("/v1/broker", "/v1/topics", "/v1/connections", "/metrics"):
        restricted.error("GET", path, 403, "PERMISSION_DENIED")
    # No leak: the same refusal for a topic that exists and one that does not ([NMQ-10-4]).
    a = restricted.error("GET", f"/v1/topics/{existing}", 403, "PERMISSION_DENIED")
    b = restricted.error("GET", f"/v1/topics/{absent}", 403, "PERMISSION_DENIED")
    check(a["message"].replace(existing, "T") == b["message"].replace(absent, "T"),
          f"the refusals differ: {a['message']!r} / {b['message']!r}")
    restricted.error("POST", "/v1/topics", 403, "PERMISSION_DENIED", json.dumps({"name": absent}).encode())
    admin.error("GET", f"/v1/topics/{absent}", 404, "UNKNOWN_TOPIC")  # the refused creation created nothing
    check(admin.json("GET", "/v1/broker", 200).get("ready") is True, "the admin principal is refused /v1/broker")
    status, _, body = admin.call("GET", "/metrics")
    check(status == 200 and body.startswith(b"# HELP"), f"the admin principal's /metrics: {status}")


@case("admin.delete-topic", "DELETE /v1/topics/NAME: the topic goes with its records, its subscribers' connections "
      "are closed with UNKNOWN_TOPIC, and a later PUBLISH creates a new topic (ids from 1, a new topic_id)",
      layer="wire", rules=("NMQ-ADM-3-5", "NMQ-SEM-1-3"))
def admin_delete_topic(ctx: Context) -> None:
    a = _Admin(ctx)
    t = ctx.topic("admdel")
    with ctx.client() as p, ctx.client() as s:
        publish(p, t, [b"a", b"b", b"c"])
        before = topic_info(p, t)
        sub = subscribe(s, t, credit=0)
        with ctx.step("NMQ-ADM-3-5"):
            doc = a.json("DELETE", "/v1/topics/" + quote(t, safe=""), 200)
            gone = doc.get("deleted") if isinstance(doc, dict) else None
            check(isinstance(gone, dict) and gone.get("name") == t and gone.get("next_id") == before.next_id,
                  f"DELETE answered {str(doc)[:200]}")
            frames = closed(s, "NMQ-ADM-3-5")
            check(any(is_error(f, ErrorCode.UNKNOWN_TOPIC) and getattr(f, "request_id", 1) == 0 for f in frames),
                  f"the subscriber (sub {sub.sub_id}) was closed without ERROR UNKNOWN_TOPIC: {frames!r}")
            a.error("GET", "/v1/topics/" + quote(t, safe=""), 404, "UNKNOWN_TOPIC")
            a.error("DELETE", "/v1/topics/" + quote(t, safe=""), 404, "UNKNOWN_TOPIC")
            p.send(Metadata(p.next_id(), t))
            f = p.recv_response()
            check(is_error(f, ErrorCode.UNKNOWN_TOPIC), f"METADATA of the deleted topic answered {f!r}")
        with ctx.step("NMQ-SEM-1-3"):
            ack = publish(p, t, [b"new"])
            check(ack.first_id == 1, f"the first record of the topic made anew got id {ack.first_id}, not 1")
            again = topic_info(p, t)
            check(again.topic_id != before.topic_id, f"the topic made anew has the deleted one's id {again.topic_id}")
            check((again.first_id, again.next_id) == (1, 2), f"the topic made anew holds {again.first_id}..{again.next_id}")


@case("admin.topic-retention", "PUT /v1/topics/NAME/retention: the topic's own retention is validated, applied by "
      "the next retention run (its oldest whole segments go, another topic's stay), and shown with its source",
      layer="wire", rules=("NMQ-ADM-3-8",), exclusive=True)
def admin_topic_retention(ctx: Context) -> None:
    a = _Admin(ctx)
    spec = ctx.target.spec
    if not spec.segment_bytes or not spec.retention_check_s:
        raise Skipped("the target declares no segment_bytes and retention_check_s (retention is not observable)")
    t, other = ctx.topic("admret"), ctx.topic("admretkeep")
    chunk = [b"r" * min(ctx.max_payload, 60_000)] * 4
    with ctx.client() as w:
        written = 0
        while written < spec.segment_bytes * 2.5:  # more than two segments in each topic
            publish(w, t, chunk)
            publish(w, other, chunk)
            written += sum(map(len, chunk))
        for bad in ({"retention_ms": -1, "retention_bytes": None}, {"retention_bytes": 5}, {"retention_ms": "x",
                    "retention_bytes": None}, [1]):
            a.error("PUT", f"/v1/topics/{quote(t, safe='')}/retention", 400, "BAD_REQUEST", json.dumps(bad).encode())
        a.error("PUT", f"/v1/topics/{quote(ctx.topic('admretnone'), safe='')}/retention", 404, "UNKNOWN_TOPIC",
                json.dumps({"retention_ms": None, "retention_bytes": 1}).encode())
        doc = a.json("PUT", f"/v1/topics/{quote(t, safe='')}/retention", 200,
                     json.dumps({"retention_ms": None, "retention_bytes": 1}).encode())
        ret = doc.get("retention") if isinstance(doc, dict) else None
        check(isinstance(ret, dict) and ret.get("retention_bytes") == 1 and ret.get("own") == {
            "retention_ms": None, "retention_bytes": 1}, f"the answer's retention is {ret!r}")
        deadline = time.monotonic() + max(10.0, spec.retention_check_s * 20)
        first = topic_info(w, t).first_id
        while first == 1 and time.monotonic() < deadline:
            time.sleep(spec.retention_check_s / 2)
            first = topic_info(w, t).first_id
        check(first > 1, f"the topic's own retention (1 byte) removed nothing within {deadline:.0f} s")
        kept = topic_info(w, other)
        check(kept.first_id == 1, f"retention set on {t} removed records of {other} (first id {kept.first_id})")
        doc = a.json("PUT", f"/v1/topics/{quote(t, safe='')}/retention", 200,
                     json.dumps({"retention_ms": None, "retention_bytes": None}).encode())
        check(doc["retention"]["own"] == {"retention_ms": None, "retention_bytes": None},
              f"null did not give the broker's settings back: {doc['retention']!r}")


@case("admin.topic-settings-damaged", "a topic's own settings file (retention) missing or damaged between a stop and "
      "a start: the topic is served whole with its id, the broker's settings apply", layer="storage",
      rules=("NMQ-S2-7",))
def admin_topic_settings_damaged(ctx: Context) -> None:
    _need(ctx)
    a = _Admin(ctx)
    t = ctx.topic("admsetdmg")
    with running_at_exit(ctx):
        with ctx.client() as w:
            ack = publish(w, t, [b"s%d" % i for i in range(10)])
            before = topic_info(w, t)
        a.json("PUT", f"/v1/topics/{quote(t, safe='')}/retention", 200,
               json.dumps({"retention_ms": 0, "retention_bytes": 0}).encode())
        path = ctx.target.topic_dir(t) / "retention"
        check(path.is_file(), f"the reference layout keeps a topic's own retention in {path}, which is missing")
        for damage in (b"{not json", b'{"retention_ms": -5, "retention_bytes": "x"}', b"\xff\xfe", None):
            ctx.target.stop()
            if damage is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(damage)
            ctx.target.start()
            with ctx.client() as w:
                after = topic_info(w, t)
                check((after.topic_id, after.first_id, after.next_id) == (before.topic_id, before.first_id,
                                                                          before.next_id),
                      f"after a damaged settings file ({damage!r}) the topic is {after}, was {before}")
                sub = subscribe(w, t, credit=100)
                got = collect_all(w, sub.sub_id, 10, timeout=10)
                check([r.id for r in got] == list(range(ack.first_id, ack.first_id + 10)),
                      f"after a damaged settings file ({damage!r}) {len(got)} of 10 records were delivered")
            doc = a.json("GET", f"/v1/topics/{quote(t, safe='')}", 200)
            check(doc["retention"]["own"] == {"retention_ms": None, "retention_bytes": None},
                  f"a damaged settings file ({damage!r}) was used: {doc['retention']!r}")
