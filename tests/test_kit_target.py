"""The kit's target handling: launch commands written the way implementers write them, the
broker's own pid, logs that stay where messages point, and topics left on an --address target."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conformance import target as target_mod
from conformance.target import TRACE_SYSCALLS, Target, TargetError, TargetSpec
from nanomq.protocol import Ack, PublishAck

ROOT = Path(__file__).resolve().parents[1]
BROKER_ARGS = "--port {port} --data-dir {data_dir} --log-level warning --log-segment-size 8MB"
HAVE_STRACE = shutil.which("strace") is not None

# The three forms of launch command: a variable assignment first, a compound command, a bare
# command found on PATH. Each is checked on the broker process itself (its environment, its
# working directory, its executable).
FORMS = {
    "assignment": "NMQ_KIT_FORM=assigned {python} -m nanomq.cli.broker " + BROKER_ARGS,
    "compound": "cd {data_dir} && {python} -m nanomq.cli.broker " + BROKER_ARGS,
    "bare": "nanomq-broker " + BROKER_ARGS,
}


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The venv's bin directory (nanomq-broker) on PATH, as in an activated venv."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', os.defpath)}")


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _is_broker(pid: int) -> bool:
    args = _cmdline(pid)
    return any(a.endswith("nanomq-broker") or a == "nanomq.cli.broker" for a in args) and \
        Path(args[0]).name not in ("sh", "bash", "dash", "strace")


@pytest.mark.parametrize("traced", [False, pytest.param(True, marks=pytest.mark.skipif(
    not HAVE_STRACE, reason="needs strace"))], ids=["plain", "strace"])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_launch_forms_with_and_without_strace(tmp_path: Path, on_path: None, form: str, traced: bool) -> None:
    spec = TargetSpec(launch=FORMS[form], kill="kill -9 {pid}", trace_syncs=traced, ready_timeout=20)
    t = Target(spec, log_dir=tmp_path / "report")
    try:
        t.start()
        pid = t.broker_pid()
        assert pid is not None and _is_broker(pid), (_cmdline(pid) if pid else None, t.log_path.read_text())
        if form == "assignment":
            assert b"NMQ_KIT_FORM=assigned" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if form == "compound":
            assert Path(os.readlink(f"/proc/{pid}/cwd")) == t.data_dir
        if form == "bare":
            assert Path(_cmdline(pid)[1]).name == "nanomq-broker"
        with t.client() as w:
            assert isinstance(w.publish("cf-forms", [b"x"], Ack.DURABLE), PublishAck)
        if traced:
            # strace -y: each synced file descriptor carries the path of its file
            trace = t.trace_path.read_text()
            assert any(f"{name}(" in trace for name in TRACE_SYSCALLS), trace[:2000]
            assert f"<{t.data_dir}" in trace, trace[:2000]
        t.kill()  # kill -9 {pid}: the broker itself, so the whole launched group goes away
        assert not Path(f"/proc/{pid}").exists()
        assert t.warnings == []
    finally:
        t.cleanup()
    assert not t.workdir.exists()


def test_strace_wrapper_runs_the_command_unchanged(tmp_path: Path) -> None:
    t = Target(TargetSpec(launch="A=1 cd x && b --port {port}", trace_syncs=True), log_dir=tmp_path)
    t.port = 1234
    cmd = t.launch_command()
    assert "exec " not in cmd
    assert " -y " in cmd and f"trace={','.join(TRACE_SYSCALLS)}" in cmd
    assert cmd.endswith("-- sh -c 'A=1 cd x && b --port 1234'")
    t.cleanup()


def test_pid_is_the_broker_not_the_shell_around_it(tmp_path: Path) -> None:
    # "; true" makes sh fork the broker and wait for it: the launched process is the shell.
    launch = "{python} -m nanomq.cli.broker " + BROKER_ARGS + "; true"
    t = Target(TargetSpec(launch=launch, kill="kill -9 {pid}"), log_dir=tmp_path)
    try:
        t.start()
        assert t.proc is not None
        pid = t.broker_pid()
        assert pid is not None and pid != t.proc.pid and _is_broker(pid)
        assert Path(_cmdline(t.proc.pid)[0]).name in ("sh", "dash", "bash")
        t.kill()  # SIGKILL to the broker: the shell then runs `true` and exits
        assert t.proc.poll() is not None
    finally:
        t.cleanup()


def test_pid_falls_back_to_the_launched_process_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    t = Target(TargetSpec(launch="{python} -m nanomq.cli.broker " + BROKER_ARGS), log_dir=tmp_path)
    try:
        t.start()
        monkeypatch.setattr(target_mod, "_listening_inodes", lambda port: set())
        assert t.proc is not None and t.broker_pid() == t.proc.pid
        assert len(t.warnings) == 1 and f"port {t.port}" in t.warnings[0]
        assert "using the launched process" in capsys.readouterr().err
        assert t.report_meta()[0]["warnings"] == t.warnings
    finally:
        t.cleanup()


def test_a_failed_start_leaves_the_log_where_the_message_points(tmp_path: Path) -> None:
    report = tmp_path / "report"
    t = Target(TargetSpec(launch="echo the-broker-says-no >&2; exit 3", ready_timeout=10), log_dir=report)
    with pytest.raises(TargetError) as e:
        t.start()
    t.cleanup()
    assert f"log: {report / 'target.log'}" in str(e.value)
    assert "the-broker-says-no" in str(e.value)  # the log's last lines are in the message too
    assert "the-broker-says-no" in (report / "target.log").read_text()
    assert not t.workdir.exists()


def test_without_a_log_dir_a_log_a_message_named_survives_cleanup(tmp_path: Path) -> None:
    t = Target(TargetSpec(launch="echo nope >&2; exit 3", ready_timeout=10))
    with pytest.raises(TargetError, match="log: "):
        t.start()
    t.cleanup()
    assert "nope" in t.log_path.read_text()
    assert sorted(p.name for p in t.workdir.iterdir()) == ["target.log"]  # data is gone, the log is not
    shutil.rmtree(t.workdir)


def test_a_clean_run_deletes_the_working_directory_and_keeps_the_log(tmp_path: Path) -> None:
    t = Target(TargetSpec(launch="{python} -m nanomq.cli.broker " + BROKER_ARGS), log_dir=tmp_path)
    t.start()
    t.stop()
    t.start()  # a restart appends to the same log
    t.cleanup()
    assert not t.workdir.exists()
    assert t.log_path.read_text().count("=== nanomq-conformance") == 2


def _kit(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "report"
    p = subprocess.run([sys.executable, "-m", "conformance", "--report-dir", str(out), "--seed", "7", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    index = json.loads((out / "index.json").read_text()) if (out / "index.json").exists() else {}
    return p, index


def test_cli_failed_start_points_at_a_log_that_exists(tmp_path: Path) -> None:
    p, _ = _kit(tmp_path, "--launch", "echo cannot-bind >&2; exit 7", "--ready-timeout", "10")
    assert p.returncode == 2, p.stdout + p.stderr
    log = tmp_path / "report" / "target.log"
    assert f"log: {log}" in p.stderr
    assert "cannot-bind" in log.read_text()


def test_cli_keep_data_says_where_the_data_is(tmp_path: Path) -> None:
    p, index = _kit(tmp_path, "--only", "wire.hello", "--keep-data")
    assert p.returncode == 0, p.stdout + p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("target data kept in "))
    data = Path(line.removeprefix("target data kept in ").split(";")[0])
    try:
        assert data.is_dir() and data.name == "data"
        assert index["target"]["log"] == str(tmp_path / "report" / "target.log")
        assert Path(index["target"]["log"]).exists()
    finally:
        shutil.rmtree(data.parent)


def test_cli_address_mode_reports_the_topics_it_cannot_delete(tmp_path: Path, nanomq_broker) -> None:
    p, index = _kit(tmp_path, "--address", nanomq_broker.address, "--only", "wire.publish")
    assert p.returncode == 0, p.stdout + p.stderr
    left = index["target"]["created_topics"]
    assert left and all(t.startswith("cf-") for t in left)
    assert index["target"]["created_topics_confirmed"] is True
    assert f"{len(left)} topics named cf-" in p.stdout and "cannot be deleted over protocol v1" in p.stdout
    # they are really there: the broker's METADATA lists every one
    from conformance.wire import WireClient
    from nanomq.protocol import Metadata, MetadataOk

    host, port = nanomq_broker.address.rsplit(":", 1)
    with WireClient(host, int(port)) as w:
        w.hello()
        w.send(Metadata(w.next_id(), ""))
        f = w.recv_response()
    assert isinstance(f, MetadataOk) and set(left) <= {t.name for t in f.topics}


def test_cli_launch_mode_leaves_no_topics_to_report(tmp_path: Path) -> None:
    p, index = _kit(tmp_path, "--only", "wire.publish")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "created_topics" not in index["target"]
    assert "cannot be deleted" not in p.stdout


def test_unknown_placeholder_is_a_clear_error(tmp_path: Path) -> None:
    t = Target(TargetSpec(launch="broker --port {prot}"), log_dir=tmp_path)
    with pytest.raises(TargetError, match="bad placeholder"):
        t.start()
    t.cleanup()


def test_a_twin_is_an_independent_instance_and_only_for_targets_the_kit_places(tmp_path: Path) -> None:
    spec = TargetSpec(launch="{python} -m nanomq.cli.broker " + BROKER_ARGS, kill="kill -9 {pid}")
    t = Target(spec, log_dir=tmp_path)
    twin = t.twin("target-crash.log")
    try:
        t.start()
        twin.start()
        assert twin.port != t.port and twin.data_dir != t.data_dir and twin.workdir != t.workdir
        assert twin.log_path == tmp_path / "target-crash.log" and twin.log_path.exists()
        pid = twin.broker_pid()
        twin.kill()  # kill -9 {pid} of the twin leaves the first running
        assert pid is not None and not Path(f"/proc/{pid}").exists()
        with t.client() as w:
            assert isinstance(w.publish("cf-twin", [b"x"]), PublishAck)
    finally:
        twin.cleanup()
        t.cleanup()
    # a fixed port, a fixed directory, or a kill command that cannot tell the instances apart
    for bad in (TargetSpec(launch="b --port 9000 --data {data_dir}"), TargetSpec(launch="b --port {port} --data /d"),
                TargetSpec(launch="b --port {port} --data {data_dir}", kill="pkill b"),
                TargetSpec(address="127.0.0.1:9000", launch="b --port {port} --data {data_dir}")):
        other = Target(bad, log_dir=tmp_path)
        assert not other.can_twin
        with pytest.raises(TargetError):
            other.twin("x.log")
        other.cleanup()
