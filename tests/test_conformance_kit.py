"""The conformance kit: the reference broker passes it, and deliberately broken brokers fail it
on the right rules (proof that the kit has teeth)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _kit(tmp_path: Path, *args: str, timeout: float = 600) -> tuple[int, dict, str]:
    out = tmp_path / "report"
    p = subprocess.run([sys.executable, "-m", "conformance", "--report-dir", str(out), "--seed", "12345", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    index = json.loads((out / "index.json").read_text()) if (out / "index.json").exists() else {}
    return p.returncode, index, p.stdout + p.stderr


def test_reference_broker_passes_the_whole_kit(tmp_path: Path) -> None:
    # The default mode: the restarting cases run on two more instances alongside.
    code, index, log = _kit(tmp_path)
    assert code == 0, log
    verdicts = {c["id"]: c["verdict"] for c in index["cases"]}
    assert "FAILED" not in verdicts.values(), log
    # what the reference broker does not implement is reported as such, not as a failure
    assert verdicts["wire.subscribe.group"] == "UNIMPLEMENTED"
    assert index["summary_line"].startswith("MUST ")
    for name in ("index.json", "junit.xml", "index.html"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    if shutil.which("strace"):
        assert verdicts["crash.durable-ack-after-sync"] == "OK"


@pytest.mark.parametrize(("flag", "announced"), [("1000", 1000), ("128KiB", 128 << 10)])
def test_a_target_with_other_announced_limits_gets_no_false_failure(tmp_path: Path, flag: str, announced: int) -> None:
    """A broker that announces a max_payload of 1000 bytes, or of 128 KiB, is as conforming as the
    default: every case sizes what it sends by the announced limits (seven cases used to send larger
    records than a small limit; three built their batches with the codec's default 64 KiB guard, so
    a larger limit failed them in the kit, before anything was sent)."""
    from conformance.target import REFERENCE_DECLARES, REFERENCE_LAUNCH

    keys = {k: v for k, v in REFERENCE_DECLARES.items() if k != "capabilities"}
    lines = ["[target]", f"launch = {json.dumps(REFERENCE_LAUNCH + ' --max-payload ' + flag)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    target = tmp_path / "t.toml"
    target.write_text("\n".join(lines) + "\n")
    code, index, log = _kit(tmp_path, "--quick", "--target", str(target))
    assert index["server"]["max_payload"] == announced, log
    assert code == 0, log
    assert not [c["id"] for c in index["cases"] if c["verdict"] in ("FAILED", "NON-STRICT")], log


def test_a_target_with_a_topic_limit_is_refused_beyond_it_and_only_there(tmp_path: Path) -> None:
    """resources.topic-limit runs against a reference broker launched with --max-topics 20 (it is
    skipped against the default target, which allows 10,000) and passes; against the same broker
    declared with a limit one higher than it has, it fails on NMQ-6.2-5."""
    from conformance.target import REFERENCE_DECLARES, REFERENCE_LAUNCH

    keys = {k: v for k, v in REFERENCE_DECLARES.items() if k != "capabilities"}
    for declared, expect in ((20, "OK"), (21, "FAILED")):
        lines = ["[target]", f"launch = {json.dumps(REFERENCE_LAUNCH + ' --max-topics 20')}"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()] + [f"max_topics = {declared}"]
        target = tmp_path / f"t{declared}.toml"
        target.write_text("\n".join(lines) + "\n")
        code, index, log = _kit(tmp_path / str(declared), "--target", str(target), "--only", "resources.topic-limit")
        verdicts = {c["id"]: c["verdict"] for c in index["cases"]}
        assert verdicts["resources.topic-limit"] == expect, log
        if expect == "FAILED":
            assert index["rules"]["NMQ-6.2-5"]["verdict"] == "FAILED", log


BROKEN = [
    ("accept-bad-crc", ["vectors.invalid.publish-bad-crc", "wire.publish.atomic"], {"NMQ-5.2-1"}),
    ("ignore-seek", ["wire.seek.id"], {"NMQ-4.8-1", "NMQ-4.8-4"}),
    ("drop", ["history.concurrent"], {"NMQ-SEM-4-1"}),
    ("duplicate", ["history.concurrent"], {"NMQ-SEM-4-1"}),
    ("reorder", ["history.concurrent"], {"NMQ-SEM-4-1"}),
    pytest.param("early-durable-ack", ["crash.durable-ack-after-sync"], {"NMQ-SEM-3-1"},
                 marks=pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")),
]


@pytest.mark.parametrize(("fault", "cases", "rules"), BROKEN)
def test_broken_broker_is_caught(tmp_path: Path, fault: str, cases: list[str], rules: set[str]) -> None:
    launch = f"{{python}} -m tests.broken_broker --fault {fault} --port {{port}} --data-dir {{data_dir}} --log-level error"
    only = [a for c in cases for a in ("--only", c)]
    code, index, log = _kit(tmp_path, "--launch", launch, *only)
    assert code == 1, f"kit did not fail against the {fault} broker:\n{log}"
    failed_rules = {rid for rid, r in index["rules"].items() if r["verdict"] == "FAILED"}
    assert rules <= failed_rules, f"{fault}: failed rules {sorted(failed_rules)}\n{log}"


def test_kit_without_launch_skips_crash_cases(tmp_path: Path, nanomq_broker) -> None:
    code, index, log = _kit(tmp_path, "--address", nanomq_broker.address, "--layers", "crash")
    assert code == 0, log
    assert {c["verdict"] for c in index["cases"]} == {"INFORMATIONAL"}
    assert all("no launch command" in c["message"] for c in index["cases"])


def test_kit_arguments(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "conformance", "--layers", "nope"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "unknown layer" in p.stderr
    p = subprocess.run([sys.executable, "-m", "conformance", "--list"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and "wire.hello.ok" in p.stdout and "MUST rules without a case" in p.stdout
    bad = tmp_path / "t.toml"
    bad.write_text('[target]\naddress = "127.0.0.1:1"\ncolour = "blue"\n')
    p = subprocess.run([sys.executable, "-m", "conformance", "--target", str(bad)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "unknown keys" in p.stderr
