"""End-to-end: the reference broker (a real process) with the CLI, and what the broker keeps across
restarts. The clients' own behaviour is tested against both clients in tests/test_clients.py."""

from __future__ import annotations

import subprocess
import sys
import time

import nanomq
from nanomq.testing import BrokerProcess


def test_graceful_restart_keeps_everything(nanomq_broker) -> None:
    with nanomq.Publisher(nanomq_broker.address, ack="written") as pub:
        pub.publish_batch("g", [b"x"] * 300)
    assert nanomq_broker.stop() == 0
    nanomq_broker.start()
    with nanomq.Publisher(nanomq_broker.address) as pub:
        assert pub.topics("g")[0].next_id == 301
        assert pub.publish("g", b"y") == 301


def test_fixture_starts_fast(tmp_path) -> None:
    t = time.monotonic()
    with BrokerProcess(tmp_path / "fast") as b:
        started = time.monotonic() - t
        with nanomq.Publisher(b.address) as pub:
            pub.ping()
    assert started < 5.0  # typically ~0.3 s; generous for a loaded CI machine


# ---------------------------------------------------------------- CLI

def _cli(*args: str, stdin: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "nanomq.cli.client", *args], input=stdin,
                          capture_output=True, timeout=timeout)


def test_cli_publish_then_subscribe(nanomq_broker) -> None:
    b = ["--broker", nanomq_broker.address]
    r = _cli(*b, "publish", "--topic", "orders", "--message", '{"symbol":"AAPL","qty":100}')
    assert r.returncode == 0 and r.stdout.strip() == b"1"
    r = _cli(*b, "publish", "--topic", "orders", stdin=b"line one\nline two\n")
    assert r.returncode == 0, r.stderr
    r = _cli(*b, "subscribe", "--topic", "orders", "--count", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ['{"symbol":"AAPL","qty":100}', "line one", "line two"]
    r = _cli(*b, "subscribe", "--topic", "orders", "--from", "id:2", "--count", "1", "--format", "json")
    assert b'"id": 2' in r.stdout and b'"data": "line one"' in r.stdout
    r = _cli(*b, "topics")
    assert r.returncode == 0 and r.stdout.startswith(b"orders\tid=1\trecords=3")


def test_cli_errors(nanomq_broker) -> None:
    r = _cli("--broker", nanomq_broker.address, "publish", "--topic", "bad/topic", "--message", "x")
    assert r.returncode == 2 and b"invalid topic" in r.stderr
    r = _cli("--broker", nanomq_broker.address, "subscribe", "--topic", "t", "--from", "yesterday")
    assert r.returncode == 2 and b"bad --from" in r.stderr
    r = _cli("--broker", "127.0.0.1:1", "--timeout", "0.3", "topics")
    assert r.returncode == 1 and b"cannot connect" in r.stderr


def test_broker_cli_rejects_bad_flags(tmp_path) -> None:
    run = [sys.executable, "-m", "nanomq.cli.broker", "--data-dir", str(tmp_path / "x")]
    r = subprocess.run([*run, "--tls-cert", str(tmp_path / "missing.pem")], capture_output=True, timeout=30)
    assert r.returncode == 2 and b"missing.pem: cannot read it" in r.stderr
    r = subprocess.run([*run, "--log-segment-size", "12XB"], capture_output=True, timeout=30)
    assert r.returncode == 2 and b"bad size" in r.stderr
    r = subprocess.run([*run, "--log-segment-size", "1KB"], capture_output=True, timeout=30)
    assert r.returncode == 2 and b"at least 1 MiB" in r.stderr


def test_second_broker_on_same_data_dir_is_refused(nanomq_broker) -> None:
    r = subprocess.run([sys.executable, "-m", "nanomq.cli.broker", "--port", "0", "--data-dir",
                        str(nanomq_broker.data_dir)], capture_output=True, timeout=30)
    assert r.returncode == 1 and b"in use by another broker" in r.stderr


