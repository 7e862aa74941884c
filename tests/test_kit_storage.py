"""The kit's storage layer and durable-ack proof have teeth: brokers with one storage or durability
rule broken fail on that rule; the reference broker passes, also when it verifies at start; and the
strace parser attributes every call to the right file and time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.strace import Trace, parse

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = "{python} -m %s --port {port} --data-dir {data_dir} --log-level error --log-segment-size 8MB"


def _kit(tmp_path: Path, launch: str, *args: str, storage: bool = True) -> tuple[int, dict, str]:
    toml = tmp_path / "t.toml"
    toml.write_text(f'[target]\nlaunch = "{launch}"\n' + ('storage_format = "nanomq-v1"\n' if storage else ""))
    out = tmp_path / "report"
    p = subprocess.run([sys.executable, "-m", "conformance", "--target", str(toml), "--report-dir", str(out),
                        "--seed", "7", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    index = json.loads((out / "index.json").read_text()) if (out / "index.json").exists() else {}
    return p.returncode, index, p.stdout + p.stderr


BROKEN = [
    pytest.param("sync-other-file", "crash.durable-ack-after-sync", {"NMQ-SEM-3-1", "NMQ-S7-2"},
                 marks=pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")),
    ("hang-on-damage", "storage.read-damage", {"NMQ-S9-7"}),
    ("forget-topic-id", "storage.stray-files", {"NMQ-S2-5"}),
]


@pytest.mark.parametrize(("fault", "case", "rules"), BROKEN)
def test_broken_storage_broker_is_caught(tmp_path: Path, fault: str, case: str, rules: set[str]) -> None:
    code, index, log = _kit(tmp_path, LAUNCH % f"tests.broken_storage --fault {fault}", "--only", case,
                            "--layers", "crash,storage")
    assert code == 1, f"the kit did not fail against {fault}:\n{log}"
    failed = {rid for rid, r in index["rules"].items() if r["verdict"] == "FAILED"}
    assert rules <= failed, f"{fault}: failed rules {sorted(failed)}\n{log}"


def test_storage_layer_passes_a_broker_that_verifies_at_start(tmp_path: Path) -> None:
    code, index, log = _kit(tmp_path, LAUNCH % "nanomq.cli.broker" + " --verify-on-start", "--layers", "storage")
    assert code == 0, log
    # storage.failed-append has no failing append to observe: the broker takes a batch larger than
    # a segment (it gets a segment of its own, NMQ-S3-6), so that case is skipped, with its reason
    verdicts = {c["id"]: c["verdict"] for c in index["cases"]}
    assert verdicts.pop("storage.failed-append") == "INFORMATIONAL", log
    # this launch gives the target no admin API, so the storage case that uses one cannot run
    assert verdicts.pop("admin.topic-settings-damaged") == "UNIMPLEMENTED", log
    assert set(verdicts.values()) == {"OK"}, log


def test_storage_layer_skips_targets_without_the_format(tmp_path: Path) -> None:
    code, index, log = _kit(tmp_path, LAUNCH % "nanomq.cli.broker", "--layers", "storage", storage=False)
    assert code == 0, log
    assert index["cases"] and all(c["verdict"] == "INFORMATIONAL" and "storage_format = nanomq-v1" in c["message"]
                                  for c in index["cases"])


# -- conformance/strace.py ----------------------------------------------------------------

TRACE = """\
100 1000.000100 mkdir("/d/topics/t", 0777) = 0 <0.000010>
100 1000.000200 openat(AT_FDCWD</w>, "/d/topics/t/00000000000000000001.log", O_RDWR|O_CREAT|O_TRUNC|O_CLOEXEC, 0644) = 5</d/topics/t/00000000000000000001.log> <0.000010>
100 1000.000300 mmap(NULL, 8388608, PROT_READ|PROT_WRITE, MAP_SHARED, 5</d/topics/t/00000000000000000001.log>, 0) = 0x7f0000000000 <0.000005>
100 1000.000400 fsync(3</d/topics/t>) = 0 <0.000100>
100 1000.000600 fsync(7</d/topics>) = 0 <0.000100>
101 1000.001000 pwritev(5</d/topics/t/00000000000000000001.log>, [{iov_base="x", iov_len=1}], 1, 0) = 1 <0.000010>
102 1000.002000 fdatasync(5</d/topics/t/00000000000000000001.log> <unfinished ...>
101 1000.002100 write(9<socket:[1]>, "ack", 3) = 3 <0.000003>
102 1000.003000 <... fdatasync resumed>) = 0 <0.000900>
102 1000.004000 fdatasync(5</d/topics/t/00000000000000000001.log>) = -1 EIO (Input/output error) <0.000050>
103 1000.005000 msync(0x7f0000001000, 4096, MS_SYNC) = 0 <0.000100>
103 1000.005500 msync(0x7f0000001000, 4096, MS_ASYNC) = 0 <0.000100>
100 1000.006000 munmap(0x7f0000000000, 8388608) = 0 <0.000010>
103 1000.007000 msync(0x7f0000001000, 4096, MS_SYNC) = 0 <0.000100>
100 1000.008000 renameat(3</d/topics/t>, "checkpoint.tmp", 3</d/topics/t>, "checkpoint") = 0 <0.000010>
104 1000.009000 sync_file_range(5</d/topics/t/00000000000000000001.log>, 0, 0, SYNC_FILE_RANGE_WRITE) = 0 <0.000010>
104 1000.010000 syncfs(5</d/topics/t/00000000000000000001.log>) = 0 <0.000500>
105 1000.011000 fsync(5</d/topics/t/00000000000000000001.log> <unfinished ...>
105 1000.012000 +++ killed by SIGKILL +++
"""
SEG = "/d/topics/t/00000000000000000001.log"


def test_strace_pairs_resumed_calls_and_keeps_paths() -> None:
    calls = parse(TRACE)
    fd = [c for c in calls if c.name == "fdatasync"]
    assert [(c.start, c.ok) for c in fd] == [(1000.002, True), (1000.004, False)]
    # a resumed call ends at the later of start + duration and the resumed line's stamp
    assert fd[0].end == pytest.approx(1000.003) and fd[0].fd_path() == SEG
    assert not any(c.name == "fsync" and c.pid == 105 for c in calls)  # never returned: no call
    op = next(c for c in calls if c.name == "openat")
    assert op.ret == "5" and op.ret_path == SEG


def test_strace_attributes_syncs_to_files() -> None:
    t = Trace.from_text(TRACE)
    assert t.created[SEG] == pytest.approx(1000.00021)
    assert t.created["/d/topics/t"] == pytest.approx(1000.00011)
    assert t.created["/d/topics/t/checkpoint"] == pytest.approx(1000.00801)
    names = [c.name for c in t.data_syncs(SEG, 1000.0, 1001.0)]
    # the fdatasync that returned, msync(MS_SYNC) while the file was mapped, syncfs; not the failed
    # fdatasync, not MS_ASYNC, not msync after munmap, not sync_file_range
    assert names == ["fdatasync", "msync", "syncfs"]
    assert [c.name for c in t.data_syncs(SEG, 1000.0025, 1001.0)] == ["msync", "syncfs"]  # began before t0
    assert t.data_syncs(SEG, 1000.0, 1000.0028) == []  # returned after t1
    assert [c.fd_path() for c in t.dir_syncs("/d/topics/t", 1000.0002, 1000.001)] == ["/d/topics/t"]
    assert [c.fd_path() for c in t.dir_syncs("/d/topics", 1000.0, 1000.001)] == ["/d/topics"]
    assert t.first_write(SEG) == pytest.approx(1000.001)
    assert t.last_write(SEG, 1000.5) == pytest.approx(1000.001) and t.last_write(SEG, 1000.0005) is None
