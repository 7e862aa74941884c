"""``nanomq-cli``: bad input exits 2 with a message and never a traceback (issue 10, item 11), a
runtime failure exits 1; the connection options go anywhere on the line; ``--format raw`` writes
the payloads exactly; ``topics --describe`` (issue 11, item 4).

Every bad-input case is listed below and run against a live broker, so that a value the argument
checks let through would reach the client (and fail there) rather than stop at "cannot connect".
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from datetime import datetime

import pytest

from nanomq.cli import client as cli
from nanomq.protocol import record_span
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
    # the connection options after the command: checked as before it (not "unrecognized arguments")
    (["topics", "--broker", "bad address"], "--broker: bad broker address"),
    (["@", "topics", "--timeout", "nan"], "--timeout: 'nan': must be a finite number"),
    (["@", "subscribe", "--topic", "t", "--tls-ca", "/nonexistent/ca.pem"], "cannot load --tls-ca"),
    (["@", "topics", "--scan"], "--scan goes with --describe"),
    (["@", "topics", "--describe", "--topic", "bad topic!"], "--topic"),
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
    assert r.returncode == 0 and r.stdout == raw, r


def test_time_before_the_epoch_starts_at_the_earliest_record(broker: BrokerProcess) -> None:
    assert _cli("--broker", broker.address, "publish", "--topic", "old", "--message", "m").returncode == 0
    r = _cli("--broker", broker.address, "subscribe", "--topic", "old", "--from", "time:-1e12", "--count", "1")
    assert r.returncode == 0 and r.stdout == b"m\n", r


def test_broker_problems_still_exit_1(tmp_path) -> None:
    r = _cli("--broker", "127.0.0.1:1", "--timeout", "0.3", "topics")
    assert r.returncode == 1 and "cannot connect" in _message(r.stderr) and b"Traceback" not in r.stderr
    assert r.stderr.count(b"cannot connect") == 1, r.stderr  # said once (the client's log is not printed)


def test_runtime_failures_exit_1_without_a_traceback(broker: BrokerProcess, monkeypatch, capsys) -> None:
    assert _cli("--broker", broker.address, "publish", "--topic", "short", "--message", "m").returncode == 0
    r = _cli("subscribe", "--topic", "short", "--from", "id:99", "--broker", broker.address)
    assert r.returncode == 1 and "OUT_OF_RANGE" in _message(r.stderr) and b"Traceback" not in r.stderr, r

    class Unreadable:  # standard input whose read fails (EIO)
        def __iter__(self):
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": Unreadable()})())
    assert cli.main(["publish", "--topic", "t", "--broker", broker.address]) == 1
    assert "Input/output error" in capsys.readouterr().err


def test_connection_options_go_before_or_after_the_command(broker: BrokerProcess) -> None:
    r = _cli("publish", "--topic", "anywhere", "--message", "one", "--broker", broker.address)
    assert r.returncode == 0 and r.stdout.strip() == b"1", r
    r = _cli("publish", "--broker", broker.address, "--timeout", "5", "--topic", "anywhere", "--message", "two")
    assert r.returncode == 0 and r.stdout.strip() == b"2", r
    # after the command wins over before it
    r = _cli("--broker", "127.0.0.1:1", "subscribe", "--topic", "anywhere", "--count", "2", "--broker", broker.address)
    assert r.returncode == 0 and r.stdout == b"one\ntwo\n", r
    r = _cli("--broker", broker.address, "topics", "--timeout", "0.3", "--broker", "127.0.0.1:1")
    assert r.returncode == 1 and "127.0.0.1:1" in _message(r.stderr), r


def test_raw_format_writes_exactly_the_payload_bytes(broker: BrokerProcess) -> None:
    payloads = [b"\x01\x02", b"no newline", b"", b"\n", b"\xff"]
    for p in payloads:  # one by one: a stdin line cannot hold a newline
        r = subprocess.run([sys.executable, "-m", "nanomq.cli.client", "--broker", broker.address, "publish",
                            "--topic", "raw", "--message", os.fsdecode(p)], capture_output=True, timeout=30)
        assert r.returncode == 0, r
    r = _cli("--broker", broker.address, "subscribe", "--topic", "raw", "--count", "5", "--format", "raw")
    assert r.returncode == 0 and r.stdout == b"".join(payloads), r


def test_a_reader_that_goes_away_is_not_a_failure(broker: BrokerProcess) -> None:
    assert _cli("--broker", broker.address, "publish", "--topic", "pipe", stdin=b"line\n" * 20_000).returncode == 0
    p = subprocess.Popen([sys.executable, "-m", "nanomq.cli.client", "--broker", broker.address, "subscribe",
                          "--topic", "pipe", "--count", "20000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.read(10)
    p.stdout.close()  # like `| head -c 10`
    err = p.stderr.read()
    assert p.wait(30) == 0 and b"Traceback" not in err and b"Exception ignored" not in err, err


def test_topics_describe(broker: BrokerProcess) -> None:
    before = time.time_ns()
    for m in ("first", "second", "x" * 100):
        assert _cli("--broker", broker.address, "publish", "--topic", "described", "--message", m).returncode == 0
    after = time.time_ns()
    r = _cli("topics", "--describe", "--topic", "described", "--broker", broker.address)
    assert r.returncode == 0, r
    (line,) = r.stdout.decode().splitlines()
    name, *pairs = line.split("\t")
    fields = dict(p.split("=", 1) for p in pairs)
    assert name == "described" and fields["records"] == "3"
    assert fields["first_id"] == "1" and fields["last_id"] == "3"
    first, last = (datetime.fromisoformat(fields[k].replace("Z", "+00:00")) for k in ("first_time", "last_time"))
    assert before // 1000 <= first.timestamp() * 1e6 <= last.timestamp() * 1e6 <= after // 1000 + 1
    assert fields["bytes"] == "n/a" and fields["segments"] == "n/a"
    assert "segments=n/a" in _message(r.stderr) and "--scan" in _message(r.stderr)
    r = _cli("--broker", broker.address, "topics", "--describe", "--scan", "--topic", "described")
    fields = dict(p.split("=", 1) for p in r.stdout.decode().strip().split("\t")[1:])
    assert r.returncode == 0 and fields["bytes"] == str(record_span(5) + record_span(6) + record_span(100)), r
    r = _cli("--broker", broker.address, "topics", "--describe")  # every topic, one line each
    assert r.returncode == 0 and "described\t" in r.stdout.decode() and len(r.stdout.splitlines()) >= 2
