"""The admin HTTP API (spec/admin.md): resources, metrics, robustness, the CLI over it."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nanomq.broker import BrokerConfig
from nanomq.broker.server import Broker
from nanomq.broker_process import BrokerProcess
from nanomq.client import Publisher, ServerError, Subscriber
from nanomq.protocol import Capability, ErrorCode
from nanomq.protocol.codec import Decoder, encode
from nanomq.protocol.frames import Error, Hello, Subscribe


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path_factory.mktemp("admin") / "data", ["--admin-port", "0"]).start()
    try:
        yield b
    finally:
        b.stop()


def request(b: BrokerProcess, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", b.admin_port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def get_json(b: BrokerProcess, path: str, expect: int = 200) -> object:
    status, headers, body = request(b, "GET", path)
    assert status == expect, (path, status, body)
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def metrics(b: BrokerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = request(b, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_health_and_readiness(broker: BrokerProcess) -> None:
    assert get_json(broker, "/healthz") == {"status": "ok"}
    assert get_json(broker, "/readyz") == {"ready": True}
    status, headers, body = request(broker, "HEAD", "/healthz")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(b'{"status":"ok"}\n'))


def test_broker_resource(broker: BrokerProcess) -> None:
    doc = get_json(broker, "/v1/broker")
    assert isinstance(doc, dict)
    assert doc["address"]["port"] == broker.port and doc["ready"] is True and doc["protocol_version"] == 1
    with Publisher(broker.address) as p:  # [NMQ-ADM-3-2]: what HELLO_OK announces
        announced = p.server_info.capabilities
    assert sorted(doc["capabilities"]) == sorted(c.name for c in Capability if announced & c)
    assert doc["disk"]["free_bytes"] > 0 and doc["config"]["data_dir"] == str(broker.data_dir)


def test_topics_agree_with_metadata_and_count_deliveries(broker: BrokerProcess) -> None:
    with Publisher(broker.address, ack="written") as pub, Subscriber(broker.address) as sub:
        sub.subscribe("adm-orders")
        first = pub.publish("adm-orders", b"a" * 100)
        for _ in range(4):
            pub.publish("adm-orders", b"b" * 100)
        got = [sub.poll(timeout=5.0) for _ in range(5)]
        assert all(m is not None for m in got)
        time.sleep(0.05)
        listed = get_json(broker, "/v1/topics")
        assert isinstance(listed, dict)
        names = [t["name"] for t in listed["topics"]]
        assert names == sorted(names) and "adm-orders" in names
        t = get_json(broker, "/v1/topics/adm-orders")
        assert isinstance(t, dict)
        (info,) = pub.topics("adm-orders")
        assert (t["topic_id"], t["first_id"], t["next_id"]) == (info.topic_id, info.first_id, info.next_id)
        assert t["records"] == 5 and t["first_id"] == first
        assert t["subscriptions"] == 1 and t["max_lag_records"] == 0
        assert t["delivered_records"] == 5 and t["delivered_bytes"] == t["published_bytes"] > 500
        conns = get_json(broker, "/v1/connections")
        assert isinstance(conns, dict)
        subs = [s for c in conns["connections"] for s in c["subscriptions"] if s["topic"] == "adm-orders"]
        assert len(subs) == 1 and subs[0]["next_id"] == info.next_id and subs[0]["state"] == "ready"
        assert {"nanomq-publisher", "nanomq-subscriber"} <= {c["client_name"] for c in conns["connections"]}
        m = metrics(broker)
        label = (("topic", "adm-orders"),)
        assert m[("nanomq_topic_published_records_total", label)] == info.next_id - 1
        assert m[("nanomq_topic_delivered_records_total", label)] == 5
        assert m[("nanomq_topic_retained_records", label)] == 5
        assert m[("nanomq_topic_subscriptions", label)] == 1
        assert m[("nanomq_publish_ack_seconds_count", (("ack", "written"),))] >= 5
        assert m[("nanomq_connections", (("state", "active"),))] >= 2


def test_durable_acks_and_syncs_are_timed(broker: BrokerProcess) -> None:
    before = metrics(broker)
    with Publisher(broker.address, ack="durable") as pub:
        for _ in range(3):
            pub.publish("adm-durable", b"d")
    after = metrics(broker)
    key = ("nanomq_publish_ack_seconds_count", (("ack", "durable"),))
    assert after[key] - before.get(key, 0) == 3
    assert after[("nanomq_sync_seconds_count", ())] > before.get(("nanomq_sync_seconds_count", ()), 0)
    assert after[("nanomq_topic_unsynced_records", (("topic", "adm-durable"),))] == 0


def test_errors_are_counted_by_code(broker: BrokerProcess) -> None:
    key = ("nanomq_errors_total", (("code", "NOT_SUPPORTED"),))
    before = metrics(broker).get(key, 0)
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as s:
        # A SUBSCRIBE with a group: this broker refuses it with NOT_SUPPORTED [NMQ-4.4-3].
        s.sendall(encode(Hello(1, 1, "t", b"")) + encode(Subscribe(2, "adm-err", group="g")))
        dec, frames = Decoder("client"), []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(frames) < 2:
            dec.feed(s.recv(65536))
            frames += list(dec)
    assert isinstance(frames[1], Error) and frames[1].code == ErrorCode.NOT_SUPPORTED
    assert metrics(broker)[key] == before + 1


def test_create_topic_is_idempotent_and_validated(broker: BrokerProcess) -> None:
    status, _, body = request(broker, "POST", "/v1/topics", json.dumps({"name": "adm-made"}).encode())
    assert status == 201, body
    assert json.loads(body)["name"] == "adm-made"
    status, _, body = request(broker, "POST", "/v1/topics", json.dumps({"name": "adm-made"}).encode())
    assert status == 200 and json.loads(body)["topic_id"] > 0
    with Publisher(broker.address) as p:
        assert any(t.name == "adm-made" for t in p.topics())
    for body, code in ((b"not json", "BAD_REQUEST"), (b'{"name": 5}', "BAD_REQUEST"),
                       (b'{"name": "a", "x": 1}', "BAD_REQUEST"), (b'{"name": "bad name!"}', "INVALID_TOPIC")):
        status, _, answer = request(broker, "POST", "/v1/topics", body)
        assert status == 400 and json.loads(answer)["error"]["code"] == code, (body, answer)


def test_unknown_paths_methods_and_groups(broker: BrokerProcess) -> None:
    status, _, body = request(broker, "GET", "/v1/topics/no-such-topic")
    assert status == 404 and json.loads(body)["error"]["code"] == "UNKNOWN_TOPIC"
    status, _, body = request(broker, "GET", "/v2/whatever")
    assert status == 404 and json.loads(body)["error"]["code"] == "NOT_FOUND"
    status, headers, body = request(broker, "PUT", "/v1/topics/adm-orders")
    assert status == 405 and headers["allow"] == "GET, DELETE"
    status, headers, _ = request(broker, "GET", "/v1/topics/adm-orders/retention")
    assert status == 405 and headers["allow"] == "PUT"
    status, headers, _ = request(broker, "POST", "/metrics")
    assert status == 405 and headers["allow"] == "GET"
    status, _, body = request(broker, "GET", "/v1/groups")
    assert status == 501 and json.loads(body)["error"]["code"] == "NOT_SUPPORTED"


def _raw(b: BrokerProcess, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", b.admin_port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_bad_requests_get_errors_and_the_broker_goes_on(broker: BrokerProcess) -> None:
    assert _raw(broker, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _raw(broker, b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
    big = b"x" * (70 * 1024)
    head = f"POST /v1/topics HTTP/1.1\r\nhost: x\r\ncontent-length: {len(big)}\r\n\r\n".encode()
    assert b" 413 " in _raw(broker, head + big).split(b"\r\n")[0] + b" "
    with Publisher(broker.address, ack="written") as pub:  # clients unaffected [NMQ-ADM-1-3]
        assert pub.publish("adm-after", b"ok") > 0
    assert get_json(broker, "/healthz") == {"status": "ok"}


def test_keep_alive_serves_several_requests(broker: BrokerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", broker.admin_port, timeout=5)
    try:
        for path in ("/healthz", "/readyz", "/v1/broker", "/metrics"):
            conn.request("GET", path)
            r = conn.getresponse()
            assert r.status == 200
            r.read()
    finally:
        conn.close()


def test_too_many_admin_connections_are_refused(broker: BrokerProcess) -> None:
    socks = []
    try:
        for _ in range(64):
            socks.append(socket.create_connection(("127.0.0.1", broker.admin_port), timeout=5))
        time.sleep(0.2)
        assert _raw(broker, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").startswith(b"HTTP/1.1 503")
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if _raw(broker, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").startswith(b"HTTP/1.1 200"):
            return
        time.sleep(0.05)
    raise AssertionError("admin connections were not freed")


def test_readyz_says_recovering_until_recovery_is_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin API is up before recovery and says so [NMQ-ADM-2-2], [NMQ-ADM-2-3]."""
    from nanomq.broker import topics as topics_mod

    release = threading.Event()
    real = topics_mod.TopicRegistry.open_all

    def slow_open_all(self: topics_mod.TopicRegistry) -> None:
        release.wait(10)
        real(self)

    monkeypatch.setattr(topics_mod.TopicRegistry, "open_all", slow_open_all)

    async def get(port: int, path: str) -> tuple[int, bytes]:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        data = await r.read()
        w.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    async def scenario() -> None:
        broker = Broker(BrokerConfig(port=0, data_dir=tmp_path / "d", admin_port=0))
        start = asyncio.create_task(broker.start())
        while broker.admin_address is None:
            await asyncio.sleep(0.01)
        port = broker.admin_address[1]
        assert await get(port, "/healthz") == (200, b'{"status":"ok"}\n')
        status, body = await get(port, "/readyz")
        assert status == 503 and json.loads(body) == {"ready": False, "reason": "recovering"}
        status, body = await get(port, "/v1/topics")
        assert status == 503 and json.loads(body)["error"]["code"] == "NOT_READY"
        status, body = await get(port, "/metrics")
        assert status == 200 and b"nanomq_up 0.0" in body and b"nanomq_topic" not in body
        release.set()
        await start
        assert (await get(port, "/readyz"))[0] == 200
        await broker.stop()

    asyncio.run(scenario())


def test_flags(tmp_path: Path) -> None:
    def broker(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nanomq.cli.broker", "--data-dir", str(tmp_path / "d"),
                               "--port", "0", *flags], capture_output=True, text=True, timeout=30)

    r = broker("--admin-host", "127.0.0.1")
    assert r.returncode == 2 and "--admin-host only applies with --admin-port" in r.stderr
    r = broker("--admin-port", "70000")
    assert r.returncode == 2 and "--admin-port must be 0..65535" in r.stderr


def test_cli_admin(broker: BrokerProcess) -> None:
    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nanomq.cli.client", "admin", "--admin", broker.admin_url,
                               *argv], capture_output=True, text=True, timeout=30)

    r = cli("topics", "--create", "adm-cli")
    assert r.returncode == 0 and "adm-cli" in r.stdout
    r = cli("topics", "--format", "json")
    assert r.returncode == 0 and "adm-cli" in {t["name"] for t in json.loads(r.stdout)["topics"]}
    r = cli("topics", "adm-cli")
    assert r.returncode == 0 and r.stdout.splitlines()[0].split()[:2] == ["NAME", "TOPIC_ID"]
    r = cli("broker")
    assert r.returncode == 0 and f"127.0.0.1:{broker.port}" in r.stdout
    r = cli("connections", "--format", "json")
    assert r.returncode == 0 and "connections" in json.loads(r.stdout)
    r = cli("topics", "no-such-topic")
    assert r.returncode == 1 and "404 UNKNOWN_TOPIC" in r.stderr
    r = cli("groups")
    assert r.returncode == 1 and "NOT_SUPPORTED" in r.stderr
    r = subprocess.run([sys.executable, "-m", "nanomq.cli.client", "admin", "--admin", "ftp://x", "broker"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    r = subprocess.run([sys.executable, "-m", "nanomq.cli.client", "admin", "--admin", "http://127.0.0.1:1",
                        "broker"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "cannot reach the admin API" in r.stderr


def test_no_admin_api_by_default(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "d") as b:
        assert b.admin_port == 0
        with pytest.raises(RuntimeError):
            _ = b.admin_url


OPS = "ops:" + "o" * 32
TEAM = "team:" + "t" * 32
READER = "reader:" + "r" * 32


def test_admin_api_needs_an_admin_principal_when_the_broker_authenticates(tmp_path: Path) -> None:
    """[NMQ-ADM-1-5]: probes open; everything else a bearer token of a principal holding admin on
    every topic, or on the topic named; refusals before lookups; failures limited per address."""
    principals = {"ops": {"token": OPS, "permissions": {"*": ["admin"]}},
                  "team": {"token": TEAM, "permissions": {"team-*": ["admin"]}},
                  "reader": {"token": READER, "permissions": {"*": ["subscribe"]}}}
    with BrokerProcess(tmp_path / "d", ["--admin-port", "0"], principals=principals) as b:
        def call(method: str, path: str, token: str = "", body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
            return request(b, method, path, body, {"authorization": f"Bearer {token}"} if token else None)

        assert call("GET", "/healthz")[0] == 200 and call("GET", "/readyz")[0] == 200
        status, headers, body = call("GET", "/v1/broker")
        assert status == 401 and headers["www-authenticate"] == 'Bearer realm="nanomq"'
        assert json.loads(body)["error"]["code"] == "UNAUTHENTICATED"
        assert call("GET", "/metrics", "ops:" + "x" * 32)[0] == 401
        assert call("GET", "/v1/broker", OPS)[0] == 200 and call("GET", "/metrics", OPS)[0] == 200
        with Publisher(b.address, token=OPS):
            conns = json.loads(call("GET", "/v1/connections", OPS)[2])["connections"]
            assert [c["principal"] for c in conns] == ["ops"]
        assert call("POST", "/v1/topics", OPS, b'{"name": "other"}')[0] == 201
        # admin on team-* only: its topics yes, the broker-wide resources and other topics no
        assert call("POST", "/v1/topics", TEAM, b'{"name": "team-a"}')[0] == 201
        assert call("GET", "/v1/topics/team-a", TEAM)[0] == 200
        for path in ("/v1/broker", "/v1/topics", "/v1/connections", "/metrics"):
            status, _, body = call("GET", path, TEAM)
            assert status == 403 and json.loads(body)["error"]["code"] == "PERMISSION_DENIED", path
        # no leak: an existing and a missing topic outside the grants get the same refusal
        s1, _, b1 = call("GET", "/v1/topics/other", TEAM)
        s2, _, b2 = call("GET", "/v1/topics/missing", TEAM)
        assert s1 == s2 == 403
        assert json.loads(b1)["error"]["message"].replace("other", "T") == \
            json.loads(b2)["error"]["message"].replace("missing", "T")
        assert call("POST", "/v1/topics", READER, b'{"name": "made-by-reader"}')[0] == 403
        assert call("GET", "/v1/topics/made-by-reader", OPS)[0] == 404
        # wrong tokens use up the address's allowance: then 429, unchecked, even for a right one
        statuses = [call("GET", "/v1/broker", "ops:" + str(i) * 32)[0] for i in range(12)]
        assert statuses[0] == 401 and statuses[-1] == 429, statuses
        # a token verified before stays usable (no scrypt, no failure count)
        assert call("GET", "/v1/broker", OPS)[0] == 200
        # nanomq-cli admin sends the token of --token / --token-file / $NANOMQ_TOKEN
        cli = [sys.executable, "-m", "nanomq.cli.client", "admin", "--admin", b.admin_url, "broker"]
        r = subprocess.run([*cli, "--token", OPS], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and f"127.0.0.1:{b.port}" in r.stdout, r.stderr
        r = subprocess.run(cli, capture_output=True, text=True, timeout=30, env={**os.environ, "NANOMQ_TOKEN": ""})
        assert r.returncode == 1 and "401 UNAUTHENTICATED" in r.stderr


def test_delete_topic(tmp_path: Path) -> None:
    """[NMQ-ADM-3-5], [NMQ-SEM-1-3]: gone with its files, subscribers closed, made anew by a later
    PUBLISH with ids from 1 and an id no topic had, also after a restart; a request naming it
    during the deletion waits and then creates it."""
    with BrokerProcess(tmp_path / "d", ["--admin-port", "0"]) as b:
        with Publisher(b.address, ack="durable") as pub:
            for _ in range(5):
                pub.publish("doomed", b"x" * 10)
            pub.publish("kept", b"y")
            (old,) = pub.topics("doomed")
            with socket.create_connection(("127.0.0.1", b.port), timeout=5) as s:
                s.sendall(encode(Hello(1, 1, "t", b"")) + encode(Subscribe(2, "doomed", credit=0)))
                status, _, body = request(b, "DELETE", "/v1/topics/doomed")
                assert status == 200 and json.loads(body)["deleted"]["next_id"] == old.next_id
                dec, frames = Decoder("client"), []
                while chunk := s.recv(65536):
                    dec.feed(chunk)
                    frames += list(dec)
            assert isinstance(frames[-1], Error) and frames[-1].request_id == 0
            assert frames[-1].code == ErrorCode.UNKNOWN_TOPIC and frames[-1].rule == "NMQ-ADM-3-5"
            assert sorted(p.name for p in (b.data_dir / "topics").iterdir()) == ["kept", "~topic_id_floor"]
            assert request(b, "GET", "/v1/topics/doomed")[0] == 404
            assert request(b, "DELETE", "/v1/topics/doomed")[0] == 404
            assert [t.name for t in pub.topics()] == ["kept"]
            assert pub.publish("doomed", b"new") == 1
            (new,) = pub.topics("doomed")
            assert new.topic_id not in (old.topic_id, pub.topics("kept")[0].topic_id)
        # the deleted topic's id is never handed out again, also after a restart
        status, _, _ = request(b, "DELETE", "/v1/topics/doomed")
        assert status == 200
        b.restart()
        with Publisher(b.address) as pub:
            pub.publish("fresh", b"z")
            ids = {t.name: t.topic_id for t in pub.topics()}
        assert ids["fresh"] > new.topic_id and "doomed" not in ids


def test_a_deletion_cut_short_is_finished_at_start(tmp_path: Path) -> None:
    """[NMQ-S2-6]: a ~deleted-… directory (a crash after the rename) is removed at start and
    shows as no topic; the id floor keeps its id from being handed out."""
    with BrokerProcess(tmp_path / "d") as b, Publisher(b.address) as pub:
        pub.publish("a", b"1")
        pub.publish("b", b"2")
        ids = {t.name: t.topic_id for t in pub.topics()}
    topics = tmp_path / "d" / "topics"
    (topics / "b").rename(topics / "~deleted-1-2-b")
    (topics / "~topic_id_floor").write_text(f"{ids['b']}\n")
    with BrokerProcess(tmp_path / "d") as b, Publisher(b.address) as pub:
        assert [t.name for t in pub.topics()] == ["a"]
        pub.publish("c", b"3")
        assert {t.name: t.topic_id for t in pub.topics()}["c"] == ids["b"] + 1
    assert sorted(p.name for p in topics.iterdir()) == ["a", "c", "~topic_id_floor"]


def test_cli_retention(broker: BrokerProcess) -> None:
    with Publisher(broker.address) as pub:
        pub.publish("adm-cli-ret", b"x")
    base = [sys.executable, "-m", "nanomq.cli.client", "admin", "--admin", broker.admin_url, "topics"]
    r = subprocess.run([*base, "adm-cli-ret", "--retention-bytes", "1GiB", "--retention-ms", "inherit",
                        "--format", "json"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["retention"]["own"] == {"retention_ms": None, "retention_bytes": 1 << 30}
    r = subprocess.run([*base, "adm-cli-ret", "--retention-bytes", "none", "--retention-ms", "none"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    for bad in (["--retention-bytes", "1GiB"], ["adm-cli-ret", "--retention-bytes", "0", "--retention-ms", "1"],
                ["adm-cli-ret", "--retention-bytes", "lots", "--retention-ms", "1"]):
        r = subprocess.run([*base, *bad], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (bad, r.stderr)


def test_cli_delete(broker: BrokerProcess) -> None:
    with Publisher(broker.address) as pub:
        pub.publish("adm-cli-del", b"x")
    base = [sys.executable, "-m", "nanomq.cli.client", "admin", "--admin", broker.admin_url, "topics"]
    r = subprocess.run([*base, "--delete", "adm-cli-del"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "adm-cli-del" in r.stdout, r.stderr
    r = subprocess.run([*base, "--delete", "adm-cli-del"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "404 UNKNOWN_TOPIC" in r.stderr
    r = subprocess.run([*base, "x", "--delete", "y"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "give one of" in r.stderr


def test_a_deleted_topic_gives_its_creator_the_quota_back(tmp_path: Path) -> None:
    """[NMQ-10-8] with [NMQ-ADM-3-5]: at once, and after a restart (the ledger's deletion line)."""
    principals = {"ops": {"token": OPS, "permissions": {"*": ["admin"]}},
                  "team": {"token": TEAM, "max_topics": 1, "permissions": {"team-*": ["publish", "create"]}}}
    with BrokerProcess(tmp_path / "d", ["--admin-port", "0"], principals=principals) as b:
        def delete(name: str) -> int:
            return request(b, "DELETE", f"/v1/topics/{name}", None, {"authorization": f"Bearer {OPS}"})[0]

        with Publisher(b.address, ack="written", token=TEAM) as pub:
            pub.publish("team-a", b"1")
            with pytest.raises(ServerError) as e:
                pub.publish("team-b", b"2")
            assert e.value.code == ErrorCode.RESOURCE_LIMIT
            assert delete("team-a") == 200
            pub.publish("team-b", b"2")  # the quota came back
        b.restart()
        with Publisher(b.address, ack="written", token=TEAM) as pub:
            with pytest.raises(ServerError):
                pub.publish("team-c", b"3")  # team-b still counts after the restart, team-a no longer
            assert delete("team-b") == 200
        b.restart()
        with Publisher(b.address, ack="written", token=TEAM) as pub:
            pub.publish("team-c", b"3")


def test_per_topic_retention(tmp_path: Path) -> None:
    """[NMQ-ADM-3-8]: a topic's own retention is applied, survives a restart, and null returns it
    to the broker's; bad bodies are 400."""
    flags = ["--admin-port", "0", "--log-segment-size", "1MB", "--retention-days", "1000",
             "--retention-check-interval", "0.2"]  # the broker's: far; checked often
    with BrokerProcess(tmp_path / "d", flags) as b:
        def put(name: str, doc: object) -> tuple[int, dict[str, object]]:
            status, _, body = request(b, "PUT", f"/v1/topics/{name}/retention", json.dumps(doc).encode())
            return status, json.loads(body)

        with Publisher(b.address, ack="written") as pub:
            for _ in range(40):  # 40 x 64 KiB: a few 1 MiB segments
                pub.publish_batch("short", [b"x" * 60_000])
                pub.publish_batch("long", [b"y" * 60_000])
        status, doc = put("short", {"retention_ms": None, "retention_bytes": 1})
        assert status == 200 and doc["retention"] == {"retention_ms": 1000 * 86_400_000, "retention_bytes": 1,
                                                      "own": {"retention_ms": None, "retention_bytes": 1}}
        assert (tmp_path / "d" / "topics" / "short" / "retention").exists()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            short = get_json(b, "/v1/topics/short")
            if isinstance(short, dict) and short["first_id"] > 1:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the topic's own retention was not applied")
        long = get_json(b, "/v1/topics/long")
        assert isinstance(long, dict) and long["first_id"] == 1 and long["retention"] == {
            "retention_ms": 1000 * 86_400_000, "retention_bytes": None,
            "own": {"retention_ms": None, "retention_bytes": None}}
        for bad in ({"retention_ms": -1, "retention_bytes": None}, {"retention_ms": "1"}, [1],
                    {"retention_ms": True, "retention_bytes": None}):
            assert put("short", bad)[0] == 400, bad
        assert put("absent", {"retention_ms": 5, "retention_bytes": None})[0] == 404
        b.restart()
        short = get_json(b, "/v1/topics/short")
        assert isinstance(short, dict) and short["retention"]["own"]["retention_bytes"] == 1
        status, doc = put("short", {"retention_ms": None, "retention_bytes": None})
        assert status == 200 and doc["retention"]["own"] == {"retention_ms": None, "retention_bytes": None}
        assert not (tmp_path / "d" / "topics" / "short" / "retention").exists()
        status, doc = put("long", {"retention_ms": 0, "retention_bytes": None})  # 0: none, whatever the broker's
        assert status == 200 and doc["retention"]["retention_ms"] is None
    # a damaged retention file: the broker's settings apply, the topic is served
    (tmp_path / "d" / "topics" / "long" / "retention").write_text("{not json")
    with BrokerProcess(tmp_path / "d", flags) as b:
        long = get_json(b, "/v1/topics/long")
        assert isinstance(long, dict) and long["records"] == 40
        assert long["retention"]["own"] == {"retention_ms": None, "retention_bytes": None}
