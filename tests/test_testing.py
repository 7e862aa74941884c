"""Set-up (issue 11, item 5): BrokerProcess without pytest, the pytest plugin as installed, what
`make run` installs and starts, and the preallocation said where a user looks."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_broker_process_imports_and_runs_without_pytest(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        sys.modules["pytest"] = None  # as if pytest were not installed: importing it fails
        import nanomq
        from nanomq.testing import BrokerProcess
        import nanomq.testing
        assert not hasattr(nanomq.testing, "nanomq_broker") and nanomq.testing.__all__ == ["BrokerProcess"]
        with BrokerProcess({str(tmp_path / "data")!r}, ["--log-segment-size", "1MB"]) as b:
            with nanomq.Publisher(b.address) as pub:
                print(pub.publish("plain", b"no pytest"))
        assert "pytest" not in sys.modules or sys.modules["pytest"] is None
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr


def test_the_fixture_works_as_an_installed_plugin(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent("""
        import nanomq

        def test_roundtrip(nanomq_broker):
            with nanomq.Publisher(nanomq_broker.address) as pub:
                assert pub.publish("orders", b"hello") == 1
            nanomq_broker.kill()
            nanomq_broker.start()
            with nanomq.Subscriber(nanomq_broker.address) as sub:
                sub.subscribe("orders")
                assert sub.poll().data == b"hello"
    """))
    # outside the repository: no conftest, the fixture comes from the pytest11 entry point alone
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr


def _dry_run(target: str) -> str:
    r = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_installs_the_runtime_package_only_and_starts_small_segments() -> None:
    out = _dry_run("run")
    installs = [line for line in out.splitlines() if "pip install" in line]
    assert installs and all("-e ." in line and "[" not in line for line in installs), out  # no extras
    assert ".installed-runtime" in out
    broker = [line for line in out.splitlines() if "nanomq-broker" in line]
    assert broker and "--log-segment-size 8MB" in broker[-1], out
    assert any("[" in line and "pip install" in line for line in _dry_run("test").splitlines())  # dev extras


def test_preallocation_is_said_in_help_and_readme() -> None:
    r = subprocess.run([sys.executable, "-m", "nanomq.cli.broker", "--help"], capture_output=True, text=True,
                       timeout=30)
    assert "preallocates one segment of this size" in " ".join(r.stdout.split())
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "preallocates one segment of --log-segment-size" in readme
