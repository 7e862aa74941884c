"""TLS: the broker serves TLS only when given a certificate; the CLI and the kit speak it (the
clients over TLS are in the shared client suite, tests/test_clients.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nanomq.protocol import Capability
from nanomq.testing import BrokerProcess
from tests.tls_cert import HAVE_OPENSSL, make_cert

pytestmark = pytest.mark.skipif(not HAVE_OPENSSL, reason="needs the openssl command")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> Path:
    """A self-signed certificate for 127.0.0.1, key in the same file."""
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_broker(cert, tmp_path_factory):
    b = BrokerProcess(tmp_path_factory.mktemp("tlsb") / "data", ["--tls-cert", str(cert)])
    b.start()
    yield b
    b.stop()


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
