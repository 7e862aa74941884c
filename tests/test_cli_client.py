"""``nanomq-cli`` never prints a traceback for bad input: exit 2 with a message (issue 10, item 11).

Every case is listed below and run against a live broker, so that a value the argument checks let
through would reach the client (and fail there) rather than stop at "cannot connect".
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nanomq.testing import BrokerProcess


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    b = BrokerProcess(tmp_path_factory.mktemp("cli") / "data", ["--log-segment-size", "1MB"])
    b.start()
    yield b
    b.stop()


def _cli(*args: str | bytes, stdin: bytes = b"", timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "nanomq.cli.client", *args], input=stdin,
                          capture_output=True, timeout=timeout)


def _message(stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


# (arguments after --broker ADDRESS, or None: --broker given in the case; text of the message)
BAD_INPUT: list[tuple[list[str], str]] = [
    (["--broker", "bad address", "topics"], "--broker"),
    (["--broker", "127.0.0.1:99999", "topics"], "--broker"),
    (["--broker", "127.0.0.1:0", "topics"], "--broker"),
    (["--broker", "", "topics"], "--broker"),
    (["--broker", "tcp://", "topics"], "--broker"),
    (["@", "--timeout", "-1", "topics"], "--timeout"),
    (["@", "--timeout", "0", "topics"], "--timeout"),
    (["@", "--timeout", "nan", "topics"], "--timeout"),
    (["@", "--timeout", "inf", "topics"], "--timeout"),
    (["@", "subscribe", "--topic", "t", "--from", "id:18446744073709551616"], "--from"),
    (["@", "subscribe", "--topic", "t", "--from", "id:0"], "--from"),
    (["@", "subscribe", "--topic", "t", "--from", "id:-3"], "--from"),
    (["@", "subscribe", "--topic", "t", "--from", "time:inf"], "--from"),
    (["@", "subscribe", "--topic", "t", "--from", "time:-inf"], "--from"),
    (["@", "subscribe", "--topic", "t", "--from", "time:nan"], "--from"),
    (["@", "subscribe", "--topic", "t", "--from", "time:1e30"], "--from"),
    (["@", "subscribe", "--topic", "t", "--from", "sometime"], "--from"),
    (["@", "subscribe", "--topic", "t", "--count", "-1"], "--count"),
    (["@", "subscribe", "--topic", "t", "--idle-timeout", "-1"], "--idle-timeout"),
    (["@", "subscribe", "--topic", "t", "--idle-timeout", "nan"], "--idle-timeout"),
    (["@", "subscribe", "--topic", "t", "--idle-timeout", "inf"], "--idle-timeout"),
    (["@", "publish", "--topic", "bad topic!", "--message", "x"], "--topic"),
    (["@", "--tls-ca", "/nonexistent/ca.pem", "topics"], "--tls-ca"),
    (["@", "publish", "--topic", "t", "--message", "x" * 65537], "max_payload"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_INPUT, ids=[" ".join(a)[:60] for a, _ in BAD_INPUT])
def test_bad_input_exits_2_with_a_message(broker: BrokerProcess, args: list[str], needle: str) -> None:
    argv = ["--broker", broker.address, *args[1:]] if args[0] == "@" else args
    r = _cli(*argv)
    assert r.returncode == 2, r
    assert needle in _message(r.stderr), r.stderr
    assert b"Traceback" not in r.stderr, r.stderr


def test_stdin_record_over_max_payload_exits_2(broker: BrokerProcess) -> None:
    r = _cli("--broker", broker.address, "publish", "--topic", "big-lines",
             stdin=b"ok\n" + b"y" * 65537 + b"\n")
    assert r.returncode == 2 and "max_payload" in _message(r.stderr) and b"Traceback" not in r.stderr, r.stderr
    assert "line 2" in _message(r.stderr), r.stderr


def test_non_utf8_message_argument_is_published_as_its_bytes(broker: BrokerProcess) -> None:
    raw = b"caf\xe9"  # Latin-1: not UTF-8, arrives in argv as a surrogate escape
    r = subprocess.run([sys.executable, "-m", "nanomq.cli.client", "--broker", broker.address, "publish",
                        "--topic", "latin1", "--message", os.fsdecode(raw)], capture_output=True, timeout=30)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    r = _cli("--broker", broker.address, "subscribe", "--topic", "latin1", "--count", "1", "--format", "raw")
    assert r.returncode == 0 and r.stdout == raw + b"\n", r


def test_time_before_the_epoch_starts_at_the_earliest_record(broker: BrokerProcess) -> None:
    assert _cli("--broker", broker.address, "publish", "--topic", "old", "--message", "m").returncode == 0
    r = _cli("--broker", broker.address, "subscribe", "--topic", "old", "--from", "time:-1e12", "--count", "1")
    assert r.returncode == 0 and r.stdout == b"m\n", r


def test_broker_problems_still_exit_1(tmp_path) -> None:
    r = _cli("--broker", "127.0.0.1:1", "--timeout", "0.3", "topics")
    assert r.returncode == 1 and "cannot connect" in _message(r.stderr) and b"Traceback" not in r.stderr
