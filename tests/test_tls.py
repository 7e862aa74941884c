"""TLS: the broker serves TLS only when given a certificate; clients, CLI and kit speak it."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

import nanomq
from nanomq.aio import AsyncPublisher
from nanomq.client import ConnectionLostError
from nanomq.protocol import Capability
from nanomq.testing import BrokerProcess

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> Path:
    """A self-signed certificate for 127.0.0.1, key in the same file."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem"), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    both = d / "both.pem"
    both.write_text((d / "cert.pem").read_text() + (d / "key.pem").read_text())
    return both


@pytest.fixture(scope="module")
def tls_broker(cert, tmp_path_factory):
    b = BrokerProcess(tmp_path_factory.mktemp("tlsb") / "data", ["--tls-cert", str(cert)])
    b.start()
    yield b
    b.stop()


def _ctx(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def test_publish_subscribe_over_tls(tls_broker, cert) -> None:
    with nanomq.Publisher(tls_broker.address, ssl_context=_ctx(cert)) as pub, \
            nanomq.Subscriber(tls_broker.address, ssl_context=_ctx(cert)) as sub:
        assert pub.server_info.capabilities & Capability.TLS
        ids = [pub.publish("secure", f"m{i}".encode()) for i in range(3)]
        pub.publish_batch("secure", [b"x" * 1000] * 300)
        sub.subscribe("secure")
        got = []
        while len(got) < 303:
            got += sub.poll_batch(256, 2_000_000)
        assert [m.id for m in got[:3]] == ids and got[0].data == b"m0"


def test_async_client_over_tls(tls_broker, cert) -> None:
    async def main() -> int:
        async with await AsyncPublisher.connect(tls_broker.address, ssl_context=_ctx(cert)) as pub:
            return await pub.publish("secure-async", b"a")

    assert asyncio.run(main()) == 1


def test_plain_client_or_untrusted_certificate_is_refused(tls_broker) -> None:
    with pytest.raises(ConnectionLostError):
        nanomq.Publisher(tls_broker.address, connect_timeout=1, timeout=2)
    with pytest.raises(ConnectionLostError) as e:
        nanomq.Publisher(f"tls://{tls_broker.address}", connect_timeout=1)
    assert "TLS handshake" in str(e.value)


def test_cli_over_tls(tls_broker, cert) -> None:
    base = [sys.executable, "-m", "nanomq.cli.client", "--broker", tls_broker.address, "--tls-ca", str(cert)]
    r = subprocess.run([*base, "publish", "--topic", "cli-tls", "--message", "hi"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*base, "subscribe", "--topic", "cli-tls", "--count", "1"], capture_output=True, timeout=30)
    assert r.stdout.strip() == b"hi"


def test_conformance_kit_over_tls(cert, tmp_path) -> None:
    launch = f"{{python}} -m nanomq.cli.broker --port {{port}} --data-dir {{data_dir}} --tls-cert {cert}"
    out = tmp_path / "r"
    p = subprocess.run([sys.executable, "-m", "conformance", "--launch", launch, "--tls-ca", str(cert),
                        "--layers", "vectors,wire", "--only", "wire.publish", "--only", "wire.subscribe",
                        "--only", "vectors.invalid.publish", "--only", "session.tls-plaintext",
                        "--only", "session.capabilities", "--report-dir", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["server"]["capabilities"] & int(Capability.TLS)
    assert not [c for c in index["cases"] if c["verdict"] == "FAILED"]
    verdicts = {c["id"]: c["verdict"] for c in index["cases"]}
    assert verdicts["session.tls-plaintext"] == verdicts["session.capabilities"] == "OK"


def test_broker_tls_errors(tmp_path) -> None:
    run = [sys.executable, "-m", "nanomq.cli.broker", "--port", "0", "--data-dir", str(tmp_path / "d")]
    r = subprocess.run([*run, "--tls-key", "k.pem"], capture_output=True, timeout=30)
    assert r.returncode == 2 and b"--tls-key needs --tls-cert" in r.stderr
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    r = subprocess.run([*run, "--tls-cert", str(bad)], capture_output=True, timeout=30)
    assert r.returncode == 2 and str(bad).encode() in r.stderr and b"no PEM certificate" in r.stderr
