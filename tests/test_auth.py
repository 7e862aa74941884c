"""Authentication, authorization and quotas (spec/protocol.md §10): nanomq/broker/auth.py, the
broker's checks, the clients' token= and client certificates, the CLIs, the fixture's marker."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nanomq
from nanomq.broker.auth import (
    Action,
    AuthConfigError,
    Authenticator,
    Grant,
    Principal,
    PublishBucket,
    hash_token,
    load_principals,
    principal_from_certificate,
    verify_hash,
)
from nanomq.client import ConnectionLostError, ServerError
from nanomq.protocol import Capability, ErrorCode
from nanomq.testing import BrokerProcess
from tests.tls_cert import HAVE_OPENSSL

ALICE = "alice:" + "a" * 32
MALLORY = "mallory:" + "m" * 32
PRINCIPALS = {
    "alice": {"token": ALICE, "permissions": {"*": ["admin"]}},
    "mallory": {"token": MALLORY, "max_topics": 2, "max_connections": 2, "publish_bytes_per_s": 2000,
                "permissions": {"mallory-*": ["publish", "subscribe", "create"], "public": ["subscribe"]}},
}


# ---------------------------------------------------------------------------- units

def test_hash_verifies_only_its_token() -> None:
    stored = hash_token(ALICE)
    assert stored.startswith("scrypt$16384$8$1$") and ALICE not in stored
    assert verify_hash(stored, ALICE.encode())
    assert not verify_hash(stored, (ALICE[:-1] + "b").encode())
    assert hash_token(ALICE) != stored  # salted


def test_grants_by_name_prefix_and_wildcard() -> None:
    p = Principal("p", grants=(Grant.parse("orders.*", Action.PUBLISH), Grant.parse("audit", Action.SUBSCRIBE),
                               Grant.parse("group:billing-*", Action.SUBSCRIBE), Grant.parse("ops.*", Action.ADMIN)))
    assert p.allowed("orders.eu", Action.PUBLISH) and not p.allowed("orders.eu", Action.SUBSCRIBE)
    assert not p.allowed("orders", Action.PUBLISH)  # the prefix is "orders.", not "orders"
    assert p.allowed("audit", Action.SUBSCRIBE) and not p.allowed("audit2", Action.SUBSCRIBE)
    assert p.allowed("billing-eu", Action.SUBSCRIBE, group=True) and not p.allowed("billing-eu", Action.SUBSCRIBE)
    assert all(p.allowed("ops.x", a) for a in (Action.PUBLISH, Action.SUBSCRIBE, Action.CREATE))
    assert not p.publishes_anywhere
    assert Principal("q", grants=(Grant.parse("*", Action.PUBLISH),)).publishes_anywhere
    assert not Principal("q", grants=(Grant.parse("*", Action.PUBLISH),), publish_bytes_per_s=5).publishes_anywhere
    with pytest.raises(ValueError):
        Grant.parse("a*b", Action.PUBLISH)


@pytest.mark.parametrize("text, fault", [
    ("", "no principals"),
    ("[principals.x]\ncertificate = false\n", "neither a token"),
    ('[principals.x]\ntoken = "plain-text"\n', "scrypt$N$r$p$salt$hash"),
    ('[principals."a b"]\ncertificate = true\n', "principal name"),
    ("[principals.x]\ncertificate = true\nmax_topics = -1\n", "max_topics"),
    ("[principals.x]\ncertificate = true\ncolour = 1\n", "unknown keys"),
    ('[principals.x]\ncertificate = true\n[principals.x.permissions]\n"t" = ["fly"]\n', "non-empty list"),
    ('[principals.x]\ncertificate = true\n[principals.x.permissions]\n"a/b" = ["publish"]\n', "pattern"),
    ('[principals.x]\ntoken = "scrypt$1024$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA=="\n', "too weak"),
])
def test_bad_auth_files_are_refused_with_the_reason(tmp_path: Path, text: str, fault: str) -> None:
    path = tmp_path / "users.toml"
    path.write_text(text)
    with pytest.raises(AuthConfigError, match=fault.replace("$", r"\$")):
        load_principals(path)


def test_publish_bucket_admits_until_in_debt_then_refills() -> None:
    b = PublishBucket(rate=1000.0, burst=1000)
    assert b.take(1500) == 0.0  # not in debt yet: admitted, now 500 in debt
    wait = b.take(1)
    assert 0.4 < wait <= 0.5
    time.sleep(wait + 0.05)
    assert b.take(1) == 0.0


def test_failures_are_rate_limited_per_address(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    auth = Authenticator(tmp_path / "unused")
    for _ in range(10):
        assert not auth.limited("10.0.0.1")
        auth.failed("10.0.0.1", "wrong token", "alice")
    assert auth.limited("10.0.0.1") and not auth.limited("10.0.0.2")
    assert "10.0.0.1" in caplog.text and "alice" in caplog.text
    time.sleep(0.6)  # 2 per second come back
    assert not auth.limited("10.0.0.1")


def test_refusals_are_logged_as_a_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A client hammering the broker after its failures cannot flood the audit log, and its
    refusals do not keep the address locked out once it stops."""
    auth = Authenticator(tmp_path / "unused")
    for _ in range(10):
        auth.failed("10.0.0.3", "wrong token")
    caplog.clear()
    for _ in range(500):
        assert auth.limited("10.0.0.3")
        auth.refused("10.0.0.3")
    lines = [r for r in caplog.records if "refused unchecked" in r.getMessage()]
    assert len(lines) == 1 and "1 HELLO" in lines[0].getMessage()
    time.sleep(0.6)
    assert not auth.limited("10.0.0.3")


def test_unknown_principal_costs_a_full_check(tmp_path: Path) -> None:
    """A token naming no principal is checked against a dummy hash: its failure takes about as
    long as a wrong token of a real principal ([NMQ-10-12])."""
    path = tmp_path / "users.toml"
    path.write_text(f'[principals.alice]\ntoken = "{hash_token(ALICE)}"\n')
    auth = Authenticator(path)
    auth.load()

    def best(token: bytes) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            assert auth.verify(token)[1] is None
            times.append(time.perf_counter() - t)
        return min(times)

    real, unknown = best(b"alice:" + b"x" * 32), best(b"nobody:" + b"x" * 32)
    assert unknown > real / 3


def test_certificate_names() -> None:
    cert = {"subject": ((("commonName", "alice"),),), "subjectAltName": (("DNS", "alice.example"), ("IP", "1.2.3.4"))}
    assert principal_from_certificate(cert) == ["alice.example"]
    assert principal_from_certificate({"subject": ((("commonName", "bob"),),)}) == ["bob"]
    assert principal_from_certificate(None) == []


# ---------------------------------------------------------------------------- a broker with principals

@pytest.fixture
def broker(tmp_path: Path):
    b = BrokerProcess(tmp_path / "data", principals=PRINCIPALS)
    b.start()
    yield b
    b.stop()


def test_mallory_is_refused_and_alice_is_served(broker: BrokerProcess) -> None:
    """The scenario of issue 15: mallory listed every topic and read alice-private."""
    with nanomq.Publisher(broker.address, token=ALICE, ack="written") as alice:
        assert alice.server_info.capabilities & Capability.AUTH
        alice.publish("alice-private", b"alice's secret")
        alice.publish("public", b"for everyone")
        assert {t.name for t in alice.topics()} == {"alice-private", "public"}
    with nanomq.Subscriber(broker.address, token=ALICE) as s:
        s.subscribe("alice-private")
        assert [m.data for m in s.poll_batch(1, 5_000_000)] == [b"alice's secret"]
    for ack in ("written", "durable"):  # on a topic that exists (what the C plane would take)
        with nanomq.Publisher(broker.address, token=MALLORY, ack=ack) as m:
            with pytest.raises(ServerError) as e:
                m.publish("alice-private", b"forged")
            assert e.value.code == ErrorCode.PERMISSION_DENIED and e.value.rule == "NMQ-10-2"
    with contextlib.suppress(ServerError), nanomq.Publisher(broker.address, token=MALLORY, ack="none") as m:
        m.publish("alice-private", b"forged")  # refused too: the count below says nothing was appended
        m.ping()
    with nanomq.Subscriber(broker.address, token=MALLORY) as m:
        assert [t.name for t in m.topics()] == ["public"]
        with pytest.raises(ServerError) as e:
            m.subscribe("alice-private")
        assert e.value.code == ErrorCode.PERMISSION_DENIED
        with pytest.raises(ServerError) as absent:
            m.subscribe("alice-nothing-here")
        assert absent.value.message == e.value.message.replace("alice-private", "alice-nothing-here")
        with pytest.raises(ServerError) as meta:
            m.topics("alice-private")
        assert meta.value.code == ErrorCode.PERMISSION_DENIED
    with nanomq.Subscriber(broker.address, token=ALICE) as s:  # nothing of mallory's was appended
        s.subscribe("alice-private")
        assert len(s.poll_batch(10, 1_000_000)) == 1
    for token in ("", "mallory:wrong", ALICE + "x"):
        with pytest.raises(ConnectionLostError) as lost:
            nanomq.Publisher(broker.address, token=token, connect_timeout=2).publish("mallory-x", b"x")
        assert lost.value.closed_by is not None and lost.value.closed_by.code == ErrorCode.AUTH_FAILED
    log = broker.log_path.read_text()
    assert "authentication failed" in log and "m" * 32 not in log and "a" * 32 not in log


def test_token_from_the_environment(broker: BrokerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOMQ_TOKEN", ALICE)
    with nanomq.Publisher(broker.address, ack="written") as p:
        assert p.publish("env-topic", b"x") == 1


def test_each_quota_holds_and_spares_others(broker: BrokerProcess) -> None:
    with nanomq.Publisher(broker.address, token=MALLORY, ack="written") as m:
        # topics: two may be created, the third not; existing ones stay usable
        m.publish("mallory-1", b"x")
        m.publish("mallory-2", b"x")
        with pytest.raises(ServerError) as e:
            m.publish("mallory-3", b"x")
        assert e.value.code == ErrorCode.RESOURCE_LIMIT and e.value.rule == "NMQ-10-8"
        # publish bytes/s: 2000/s; try to push 20 kB in about a second
        admitted = refused = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            try:
                m.publish("mallory-1", b"p" * 500)
                admitted += 1
            except ServerError as q:
                assert q.code == ErrorCode.RESOURCE_LIMIT and q.rule == "NMQ-10-9"
                refused += 1
        elapsed = time.monotonic() - t0
        # bucket of 2000 + 2000/s, one batch (564 bytes with its header) of debt at most
        assert refused > 0 and admitted * 564 <= 2000 + 2000 * elapsed + 564
        # connections: two at most (this one is the first)
        second = nanomq.Publisher(broker.address, token=MALLORY)
        with pytest.raises(ConnectionLostError) as lost:
            nanomq.Publisher(broker.address, token=MALLORY, connect_timeout=2)
        assert lost.value.closed_by is not None and lost.value.closed_by.code == ErrorCode.TOO_MANY_CONNECTIONS
        # ... and none of it touches alice
        with nanomq.Publisher(broker.address, token=ALICE, ack="written") as a:
            for k in range(5):
                a.publish(f"alice-{k}", b"y" * 5000)
        second.close()
    time.sleep(0.2)
    with nanomq.Publisher(broker.address, token=MALLORY):  # a slot is free again
        pass


def test_topic_quota_holds_across_restarts(broker: BrokerProcess) -> None:
    with nanomq.Publisher(broker.address, token=MALLORY, ack="written") as m:
        m.publish("mallory-1", b"x")
        m.publish("mallory-2", b"x")
    broker.restart()
    with nanomq.Publisher(broker.address, token=MALLORY, ack="written") as m:
        with pytest.raises(ServerError) as e:
            m.publish("mallory-3", b"x")
        assert e.value.rule == "NMQ-10-8"
        m.publish("mallory-1", b"existing topics stay usable")
    broker.kill()  # a crash keeps the count too
    broker.start()
    with nanomq.Publisher(broker.address, token=MALLORY, ack="written") as m, pytest.raises(ServerError):
        m.publish("mallory-3", b"x")


def test_ledger_counts_existing_topics_and_skips_a_torn_line(tmp_path: Path) -> None:
    (tmp_path / "principal-topics.log").write_text("mallory\ta\nmallory\tb\nmallory\tgone\nalice\tc\nmallory\ttor")
    auth = Authenticator(tmp_path / "unused")
    auth.open_ledger(tmp_path, ["a", "b", "c", "tor"])
    try:
        assert auth.usage["mallory"].topics_created == 2 and auth.usage["alice"].topics_created == 1
        auth.record_creation("mallory", "d")
    finally:
        auth.close()
    assert (tmp_path / "principal-topics.log").read_text().endswith("mallory\ttor\nmallory\td\n")


def test_sighup_reloads_without_dropping_connections(broker: BrokerProcess) -> None:
    with nanomq.Publisher(broker.address, token=MALLORY, ack="written") as m:
        m.publish("mallory-a", b"x")
        with pytest.raises(ServerError):
            m.publish("team", b"x")
        widened = {**PRINCIPALS, "mallory": {**PRINCIPALS["mallory"],
                                             "permissions": {"mallory-*": ["publish", "subscribe", "create"],
                                                             "team": ["publish", "create"]}}}
        broker.set_principals(widened)
        deadline = time.monotonic() + 10
        while True:  # the same connection, new permissions
            try:
                m.publish("team", b"x")
                break
            except ServerError:
                assert time.monotonic() < deadline, "the reload did not apply"
                time.sleep(0.1)
        with nanomq.Subscriber(broker.address, token=ALICE) as watcher:
            watcher.subscribe("team")
            broker.set_principals({"alice": PRINCIPALS["alice"]})  # mallory removed
            time.sleep(1.0)
            with pytest.raises(ConnectionLostError):
                m.publish("mallory-a", b"x")
            m.close()
            assert len(watcher.poll_batch(10, 2_000_000)) == 1  # alice's subscription kept delivering
    broker.set_principals(PRINCIPALS)


def test_bad_reload_keeps_the_principals(broker: BrokerProcess) -> None:
    assert broker.auth_path is not None
    broker.auth_path.write_text("not toml [")
    broker.reload()
    time.sleep(0.5)
    with nanomq.Publisher(broker.address, token=ALICE) as a:
        a.publish("still-here", b"x")
    assert "previous principals stay" in broker.log_path.read_text()


@pytest.mark.nanomq_broker(principals={"reader": {"token": "reader:" + "r" * 32,
                                                  "permissions": {"orders.*": ["subscribe", "create"]}}})
def test_fixture_marker_starts_with_auth(nanomq_broker: BrokerProcess) -> None:
    with nanomq.Publisher(nanomq_broker.address, token="reader:" + "r" * 32) as pub:
        with pytest.raises(ServerError) as e:
            pub.publish("orders.eu", b"x")
        assert e.value.code == ErrorCode.PERMISSION_DENIED


# ---------------------------------------------------------------------------- CLIs

def _run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, input=stdin, timeout=60)


def test_hash_token_makes_a_working_entry(tmp_path: Path) -> None:
    r = _run("-m", "nanomq.cli.broker", "hash-token", "carol")
    assert r.returncode == 0, r.stderr
    token, entry = r.stdout.split("\n", 1)
    assert token.startswith("carol:") and token not in entry
    path = tmp_path / "users.toml"
    path.write_text(entry)
    p = load_principals(path)["carol"]
    assert verify_hash(p.token_hash, token.encode()) and p.allowed("carol.x", Action.CREATE)
    given = _run("-m", "nanomq.cli.broker", "hash-token", "carol", "--token-file", "-", stdin="carol:" + "z" * 20)
    assert given.returncode == 0 and "carol:" not in given.stdout.split("[principals", 1)[0].strip()
    short = _run("-m", "nanomq.cli.broker", "hash-token", "carol", "--token-file", "-", stdin="carol:short")
    assert short.returncode == 2 and "shorter than 16" in short.stderr
    wrong = _run("-m", "nanomq.cli.broker", "hash-token", "carol", "--token-file", "-", stdin="dave:" + "z" * 20)
    assert wrong.returncode == 2


def test_broker_flags_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "users.toml"
    bad.write_text('[principals.x]\ntoken = "nope"\n')
    r = _run("-m", "nanomq.cli.broker", "--data-dir", str(tmp_path / "d"), "--auth-file", str(bad))
    assert r.returncode == 2 and "--auth-file" in r.stderr and "principal 'x'" in r.stderr
    r = _run("-m", "nanomq.cli.broker", "--data-dir", str(tmp_path / "d"), "--tls-client-ca", str(bad))
    assert r.returncode == 2 and "--tls-client-ca needs --tls-cert" in r.stderr


def test_cli_token_and_token_file(broker: BrokerProcess, tmp_path: Path) -> None:
    tok = tmp_path / "alice.token"
    tok.write_text(ALICE + "\n")
    cli = ("-m", "nanomq.cli.client", "--broker", broker.address)
    assert _run(*cli, "--token-file", str(tok), "publish", "--topic", "cli-t", "--message", "hi").returncode == 0
    listed = _run(*cli, "--token", ALICE, "topics")
    assert listed.returncode == 0 and "cli-t" in listed.stdout
    denied = _run(*cli, "--token", MALLORY, "publish", "--topic", "cli-t", "--message", "x")
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr
    none = _run(*cli, "topics")
    assert none.returncode == 1 and "AUTH_FAILED" in none.stderr
    both = _run(*cli, "--token", ALICE, "--token-file", str(tok), "topics")
    assert both.returncode == 2


# ---------------------------------------------------------------------------- TLS client certificates

def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.mark.skipif(not HAVE_OPENSSL, reason="needs the openssl command")
def test_client_certificate_proves_a_principal(tmp_path: Path) -> None:
    d = tmp_path
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
             "-days", "2", "-subj", "/CN=test-ca")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "server.pem"), "-out",
             str(d / "server.crt"), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")
    (d / "server-all.pem").write_text((d / "server.crt").read_text() + (d / "server.pem").read_text())
    for name in ("alice", "mallory"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"),
                 "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-out", str(d / f"{name}.crt"), "-days", "2")
    principals = {"alice": {"certificate": True, "permissions": {"*": ["admin"]}},
                  "mallory": {"token": MALLORY, "permissions": {"mallory-*": ["publish", "create"]}}}
    b = BrokerProcess(d / "data", principals=principals, args=["--tls-cert", str(d / "server-all.pem"),
                                                              "--tls-client-ca", str(d / "ca.pem")])
    b.start()
    try:
        def ctx() -> ssl.SSLContext:
            return ssl.create_default_context(cafile=str(d / "server.crt"))

        address = f"tls://{b.address}"
        with pytest.raises(ConnectionLostError):  # no certificate, no token
            nanomq.Publisher(address, ssl_context=ctx(), ack="written", connect_timeout=2)
        good = ctx()
        good.load_cert_chain(str(d / "alice.crt"), str(d / "alice.key"))
        with nanomq.Publisher(address, ssl_context=good, ack="written") as p:
            assert p.publish("alice-cert", b"x") == 1
        with nanomq.Subscriber(address, tls_ca=d / "server.crt", tls_cert=d / "alice.crt",
                               tls_key=d / "alice.key") as s:  # the same by arguments
            s.subscribe("alice-cert")
            assert len(s.poll_batch(1, 5_000_000)) == 1
        # mallory's certificate is signed by the CA, but mallory does not accept certificates
        bad = ctx()
        bad.load_cert_chain(str(d / "mallory.crt"), str(d / "mallory.key"))
        with pytest.raises(ConnectionLostError):
            nanomq.Publisher(address, ssl_context=bad, ack="written", connect_timeout=2)
        with nanomq.Publisher(address, ssl_context=ctx(), token=MALLORY, ack="written") as p:  # token inside TLS
            assert p.publish("mallory-x", b"x") == 1
    finally:
        b.stop()


def test_raw_hello_without_token_is_closed(broker: BrokerProcess) -> None:
    from nanomq.protocol import Decoder, Hello, encode

    host, port = broker.address.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(encode(Hello(1, 1, "raw", b"")))
        d = Decoder("client")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        d.feed(data)
        f = d.next_frame()
        assert f is not None and f.code == ErrorCode.AUTH_FAILED  # type: ignore[attr-defined]


def test_async_clients_take_a_token(broker: BrokerProcess) -> None:
    import asyncio

    from nanomq.aio import AsyncPublisher

    async def go() -> int:
        async with AsyncPublisher(broker.address, token=ALICE, ack="written") as p:
            return await p.publish("async-t", b"x")

    assert asyncio.run(go()) == 1
