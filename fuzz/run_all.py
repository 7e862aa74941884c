"""Run every atheris target (fuzz/fuzz_*.py) for a time bound each and print execs/s.

The seed corpus of each target is built from the golden vectors in spec/vectors/ into
fuzz/corpus/<target>/ (which also keeps what the fuzzer finds between runs); fuzz_recovery's
seeds are edits of a log directory written here. Crashes are written to fuzz/crashes/<target>/
and make this script exit non-zero.

A target that calls ``asan.load_log_module()`` runs against an ASan/UBSan build of the C log
(fuzz/asan.py: built once into build/fuzz-asan/, gcc's libasan preloaded); the others run against
the installed build.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VECTORS = HERE.parent / "spec" / "vectors"
sys.path.insert(0, str(HERE))
import asan  # noqa: E402


def _edit(op: int, which: int, off: int, data: bytes = b"") -> bytes:
    """One edit of fuzz_recovery's input format (see its docstring)."""
    return bytes([op, which]) + struct.pack("<IB", off, len(data)) + data


def recovery_seeds() -> dict[str, bytes]:
    """Hand-written inputs of fuzz_recovery: flags byte, then edits. File 0 is the first sealed
    segment's index, file 1 that segment; the checkpoint sorts last."""
    wrapped = (1 + (1 << 61)).to_bytes(8, "little")  # 64 + n * 24 == 88 (mod 2**64): issue 10 item 13
    return {
        "intact-clean": b"\x00",
        "intact-unclean": b"\x01",
        "intact-raise-verify": b"\x06",
        "flip-sealed-record": b"\x00" + _edit(1, 1, 100, b"\x01"),
        "flip-and-fix-crc": b"\x00" + _edit(1, 1, 100, b"\x01") + _edit(5, 1, 100),
        "index-count-wraps": b"\x00" + _edit(2, 0, 88) + _edit(7, 0, 48, wrapped) + _edit(5, 0, 0),
        "index-lies": b"\x00" + _edit(7, 0, 40, (1 << 20).to_bytes(8, "little")) + _edit(5, 0, 0),
        "checkpoint-vouches-more": b"\x01" + _edit(7, 255, 32, (10**6).to_bytes(8, "little")) + _edit(5, 255, 0),
        "stray-segment": b"\x00" + _edit(4, 0, 5, b"\x00" + bytes(range(200))),
        "segment-deleted": b"\x01" + _edit(3, 3, 0),
        "torn-tail": b"\x01" + _edit(6, 254, 0, b"\x07" * 80),
    }


def seed_corpus(target: str, out: Path) -> int:
    """Write the vectors as seeds shaped for ``target``; returns how many were written."""
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    if target == "fuzz_recovery":
        for name, seed in recovery_seeds().items():
            (out / f"seed-{name}").write_bytes(seed)
        return len(recovery_seeds())
    for fname in ("frames.json", "invalid.json"):
        for v in json.loads((VECTORS / fname).read_text())["vectors"]:
            raw = bytes.fromhex(v["hex"])
            if target == "fuzz_plane":  # the stream a client sends: client-to-server frames as they are
                if v["direction"] != "client_to_server":
                    continue
                seed = raw
            elif target == "fuzz_decoder":
                role_bit = 1 if v["direction"] == "client_to_server" else 0
                seed = bytes([role_bit | 0xFE]) + raw  # one big chunk
            else:  # fuzz_records: take the record bytes of PUBLISH/DELIVER frames
                opcode = raw[4] if len(raw) > 4 else 0
                if opcode == 0x02 and len(raw) >= 24:
                    count = struct.unpack_from("<H", raw, 20)[0]
                    body = raw[24 + struct.unpack_from("<H", raw, 18)[0] :]
                elif opcode == 0x85 and len(raw) >= 24:
                    count, body = struct.unpack_from("<H", raw, 20)[0], raw[24:]
                else:
                    continue
                seed = bytes([(count - 1) % 8, 0xFF]) + body
            (out / f"seed-{v['name']}").write_bytes(seed)
            n += 1
    return n


def run_target(path: Path, seconds: int) -> tuple[bool, str]:
    name = path.stem
    corpus = HERE / "corpus" / name
    crashes = HERE / "crashes" / name
    seeds = seed_corpus(name, corpus)
    crashes.mkdir(parents=True, exist_ok=True)
    sanitized = "asan.load_log_module()" in path.read_text()
    env = asan.child_env(asan.build()) if sanitized else dict(os.environ)
    cmd = [sys.executable, str(path), str(corpus), f"-max_total_time={seconds}",
           f"-artifact_prefix={crashes}/", "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]
    t0 = time.monotonic()
    # the target's temporary files go to a scratch directory removed afterwards (libFuzzer exits
    # without Python's cleanup), on tmpfs when there is one (fuzz_recovery writes files per input)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix=f"nanomq-{name}-", dir=shm) as scratch:
        env["TMPDIR"] = scratch
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, env=env)
    elapsed = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    execs = int(runs[-1]) if runs else 0
    cov = re.findall(r"cov: (\d+)", log)
    ok = proc.returncode == 0
    line = (f"{name:16s} {'ok' if ok else 'CRASH'}  {execs:>9,} execs in {elapsed:5.1f} s = "
            f"{execs / max(elapsed, 1e-9):>9,.0f} execs/s  cov {cov[-1] if cov else '?'}  seeds {seeds}"
            f"{'  (C log under ASan/UBSan)' if sanitized else ''}")
    if not ok:
        line += "\n" + "\n".join(log.splitlines()[-40:])
    return ok, line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=60, help="time bound per target (default 60)")
    ap.add_argument("--only", default="", help="run only targets whose name contains this")
    args = ap.parse_args(argv)
    if args.seconds <= 0:
        ap.error("--seconds must be positive")
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: `pip install -e '.[fuzz]'` (make install does it)", file=sys.stderr)
        return 2
    all_ok = True
    for path in sorted(HERE.glob("fuzz_*.py")):
        if args.only and args.only not in path.stem:
            continue
        ok, line = run_target(path, args.seconds)
        print(line, flush=True)
        all_ok &= ok
    if all_ok:
        shutil.rmtree(HERE / "crashes", ignore_errors=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
