"""``nanomq-broker`` validates every flag before it starts (issue 10, item 10).

A bad value exits 2 with a one-line message naming the flag, never a traceback and never a broker
that starts and then fails its first request. TLS start-up errors name the file; a plaintext
client that reaches a TLS broker is told that TLS is expected.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

import nanomq
from nanomq.client import ConnectionLostError
from nanomq.protocol import Decoder, Error, ErrorCode, Hello, encode
from nanomq.testing import BrokerProcess

_STARTED = "STARTED"


def _broker(tmp_path: Path, *flags: str, data_dir: Path | None = None) -> tuple[object, str]:
    """Run ``nanomq-broker`` with ``flags``; (exit status, stderr), or (STARTED, stderr) if it
    started listening (it is stopped at once: a bad flag must never get that far)."""
    cmd = [sys.executable, "-m", "nanomq.cli.broker", "--port", "0", "--log-segment-size", "1MB",
           "--data-dir", str(data_dir or tmp_path / "d"), *flags]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        if b"listening on" in line:
            p.terminate()
            _, err = p.communicate(timeout=30)
            return _STARTED, err.decode(errors="replace")
        _, err = p.communicate(timeout=30)
        return p.returncode, err.decode(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _message(stderr: str) -> str:
    """The error line (argparse prints the usage before it)."""
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else ""


# (flags, text the message must contain). Every case: exit 2, the message, no traceback.
BAD_FLAGS = [
    (["--retention-days", "nan"], "--retention-days"),
    (["--retention-days", "inf"], "--retention-days"),
    (["--retention-days", "-1"], "--retention-days"),
    (["--retention-days", "0"], "--retention-days"),
    (["--retention-days", "1e-12"], "--retention-days"),
    (["--retention-days", "1e300"], "--retention-days"),
    (["--retention-bytes", "0"], "--retention-bytes"),
    (["--retention-bytes", "99999999T"], "--retention-bytes"),
    (["--retention-check-interval", "5"], "--retention-check-interval"),  # no retention to check
    (["--retention-days", "1", "--retention-check-interval", "nan"], "--retention-check-interval"),
    (["--retention-days", "1", "--retention-check-interval", "0"], "--retention-check-interval"),
    (["--fsync", "interval", "--fsync-interval-ms", "0"], "--fsync-interval-ms"),
    (["--fsync", "interval", "--fsync-interval-ms", "60001"], "--fsync-interval-ms"),
    (["--fsync-interval-ms", "5"], "--fsync-interval-ms"),  # without --fsync interval it does nothing
    (["--log-segment-size", "2048T"], "--log-segment-size"),
    (["--log-segment-size", "1KB"], "--log-segment-size"),
    (["--log-segment-size", "12XB"], "bad size"),
    (["--max-payload", "17MB"], "--max-payload"),
    (["--max-payload", "0"], "--max-payload"),
    (["--max-payload", "2MB"], "--log-segment-size"),  # a record never spans segments (1MB here)
    (["--handshake-timeout", "nan"], "--handshake-timeout"),
    (["--handshake-timeout", "inf"], "--handshake-timeout"),
    (["--handshake-timeout", "0"], "--handshake-timeout"),
    (["--frame-timeout", "nan"], "--frame-timeout"),
    (["--frame-timeout", "-1"], "--frame-timeout"),
    (["--port", "65536"], "port"),
    (["--port", "-1"], "port"),
    (["--host", "bad address"], "--host"),
    (["--max-connections", "0"], "--max-connections"),
    (["--max-connections", "100000000"], "--max-connections"),
    (["--tls-key", "k.pem"], "--tls-key needs --tls-cert"),
]


@pytest.mark.parametrize(("flags", "needle"), BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_exits_2_with_a_message(tmp_path: Path, flags: list[str], needle: str) -> None:
    rc, err = _broker(tmp_path, *flags)
    assert rc == 2, (rc, err)
    assert needle in _message(err), err  # in the message itself, not just in the usage lines
    assert "Traceback" not in err, err


def test_data_dir_that_is_a_file_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    rc, err = _broker(tmp_path, data_dir=f)
    assert rc == 2 and "--data-dir" in _message(err) and str(f) in err and "Traceback" not in err, err


def test_good_flags_start_and_serve(tmp_path: Path) -> None:
    """The values the checks accept work: interval sync, retention, a custom check interval."""
    with BrokerProcess(tmp_path / "d", ["--log-segment-size", "1MB", "--fsync", "interval",
                                        "--fsync-interval-ms", "5", "--retention-days", "0.5",
                                        "--retention-check-interval", "0.5", "--frame-timeout", "5"]) as b, \
            nanomq.Publisher(b.address) as pub:
        assert pub.publish("t", b"x") == 1


def test_max_payload_16mb_serves_hello_and_a_16mb_record(tmp_path: Path) -> None:
    """It used to make every HELLO fail with INTERNAL (max_frame overflowed its u32 field)."""
    with BrokerProcess(tmp_path / "d", ["--log-segment-size", "20MB", "--max-payload", "16MB"]) as b, \
            nanomq.Publisher(b.address) as pub, nanomq.Subscriber(b.address) as sub:
        info = pub.server_info
        assert info.max_payload == 16 * 1024 * 1024 and info.max_frame <= 0xFFFFFFFF
        big = bytes(range(256)) * (16 * 4096)
        assert pub.publish("big", big) == 1
        sub.subscribe("big")
        msg = sub.poll(10_000_000)
        assert msg is not None and msg.data == big


# ---- TLS ---------------------------------------------------------------------------------------

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """cert.pem, key.pem, both.pem (cert + key) and other_key.pem (a key of another certificate)."""
    d = tmp_path_factory.mktemp("pems")
    for name in ("", "other_"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(d / f"{name}key.pem"), "-out", str(d / f"{name}cert.pem"), "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
    (d / "both.pem").write_text((d / "cert.pem").read_text() + (d / "key.pem").read_text())
    (d / "garbage.pem").write_text("not a certificate\n")
    return {p.stem: p for p in d.iterdir()}


@needs_openssl
def test_tls_errors_name_the_file(tmp_path: Path, pems: dict[str, Path]) -> None:
    missing = tmp_path / "missing.pem"
    cases = [
        (["--tls-cert", str(missing)], [str(missing), "--tls-cert"]),
        (["--tls-cert", str(pems["garbage"])], [str(pems["garbage"]), "--tls-cert"]),
        (["--tls-cert", str(pems["both"]), "--tls-key", str(missing)], [str(missing), "--tls-key"]),
        (["--tls-cert", str(pems["cert"]), "--tls-key", str(pems["cert"])], [str(pems["cert"]), "--tls-key"]),
        (["--tls-cert", str(pems["cert"]), "--tls-key", str(pems["other_key"])],
         [str(pems["other_key"]), "does not match"]),
    ]
    for flags, needles in cases:
        rc, err = _broker(tmp_path, *flags)
        assert rc == 2 and "Traceback" not in err, (flags, err)
        for n in needles:
            assert n in _message(err), (flags, n, err)


@needs_openssl
def test_certificate_without_key_is_said_in_words(tmp_path: Path, pems: dict[str, Path]) -> None:
    rc, err = _broker(tmp_path, "--tls-cert", str(pems["cert"]))
    assert rc == 2 and "Traceback" not in err, err
    msg = _message(err)
    assert str(pems["cert"]) in msg and "no private key" in msg and "--tls-key" in msg, err


@needs_openssl
def test_plaintext_client_is_told_tls_is_expected(tmp_path: Path, pems: dict[str, Path]) -> None:
    with BrokerProcess(tmp_path / "d", ["--log-segment-size", "1MB", "--tls-cert", str(pems["both"])]) as b:
        # the Python client
        with pytest.raises(ConnectionLostError) as e:
            nanomq.Publisher(b.address, connect_timeout=2, timeout=5)
        assert "TLS" in str(e.value) and "tls://" in str(e.value), str(e.value)
        # a raw HELLO: the answer is a plaintext ERROR (request_id 0, fatal), then the close
        with socket.create_connection(("127.0.0.1", b.port), timeout=5) as s:
            s.sendall(encode(Hello(1, 1, "plain", b"")))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        d = Decoder("client")
        d.feed(data)
        frame = d.next_frame()
        assert isinstance(frame, Error) and frame.request_id == 0, frame
        assert frame.code == ErrorCode.BAD_STATE and "TLS" in frame.message
        # a TLS client on the same broker still works
        ctx = ssl.create_default_context(cafile=str(pems["cert"]))
        with nanomq.Publisher(b.address, ssl_context=ctx) as pub:
            assert pub.publish("t", b"x") == 1


@needs_openssl
def test_silent_plaintext_connection_is_closed_after_the_handshake_timeout(tmp_path: Path,
                                                                          pems: dict[str, Path]) -> None:
    with BrokerProcess(tmp_path / "d", ["--log-segment-size", "1MB", "--tls-cert", str(pems["both"]),
                                        "--handshake-timeout", "0.5"]) as b, \
            socket.create_connection(("127.0.0.1", b.port), timeout=5) as s:
        assert s.recv(1) == b""  # closed by the broker, nothing sent


def test_segment_larger_than_the_free_space_exits_2(tmp_path: Path) -> None:
    """Each topic preallocates a whole segment: one that cannot fit would fail every topic creation."""
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    if free + (1 << 30) > 1 << 40:
        pytest.skip("more than 1 TiB free: no segment size is both valid and too large")
    size = f"{(free >> 30) + 1}GiB"
    rc, err = _broker(tmp_path, "--log-segment-size", size)
    assert rc == 2 and "free space" in _message(err) and "Traceback" not in err, err
