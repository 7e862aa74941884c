"""Where the campaign works, what it mutates, and what it leaves out (with the reason for each).

Every exclusion here is listed in the report with its mutant count, so the score can be read
against what was left out. docs/mutation.md explains the choices.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("NMQ_MUTATION_BUILD") or ROOT / "build" / "mutation")
"""Snapshots, mutants, builds, the coverage map and the results journal (gitignored). The CI
sample uses build/mutation-ci (NMQ_MUTATION_BUILD), apart from a campaign that may be running."""
REPORT_DIR = ROOT / "reports" / "mutation"
EQUIVALENT_FILE = ROOT / "mutation" / "equivalent.toml"
CI_SAMPLE_FILE = ROOT / "mutation" / "ci_sample.toml"
DOCS_REPORT = ROOT / "docs" / "mutation-report.md"

SEED = 1
"""The kit's --seed for every run: the coverage map and the mutant runs see the same workloads."""
WORKERS = 2
"""Mutants run this many at a time (a kit process and a broker each)."""

# ------------------------------------------------------------------------------------------------
# how brokers are launched

_DEFAULT_BROKER_ARGS = ("--port {port} --data-dir {data_dir} --log-level warning --log-segment-size 8MB")

_REFERENCE = r"""
import json
import conformance.target as t
print(json.dumps({"launch": t.REFERENCE_LAUNCH, "declares": getattr(t, "REFERENCE_DECLARES", {})}))
"""


@functools.cache
def reference_target() -> dict[str, Any]:
    """The kit's default target: its launch command (REFERENCE_LAUNCH) and what the kit knows of
    it beyond HELLO_OK (REFERENCE_DECLARES: storage format, connection limit, retention ...), read
    from the campaign's copy of the kit (else the checkout's). Mutants are launched with the same
    flags and declared the same way, so every case that runs against the reference broker runs
    against them, and none is skipped for want of a declaration."""
    kit = BUILD / "kit"
    cwd = kit if (kit / "conformance" / "target.py").exists() else ROOT
    try:
        p = subprocess.run([sys.executable, "-c", _REFERENCE], cwd=cwd, capture_output=True, text=True, timeout=60)
        ref = json.loads(p.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        ref = {"launch": "{python} -m nanomq.cli.broker " + _DEFAULT_BROKER_ARGS, "declares": {}}
    ref.setdefault("declares", {})
    ref["declares"].setdefault("storage_format", "nanomq-v1")
    return dict(ref)


def broker_args(variant: str = "") -> str:
    """The reference broker's command-line flags exactly as the kit's default target uses them,
    plus those of a second-chance ``variant`` (VARIANTS)."""
    launch = str(reference_target()["launch"])
    prefix = "{python} -m nanomq.cli.broker "
    args = launch[len(prefix):] if launch.startswith(prefix) else _DEFAULT_BROKER_ARGS
    if variant:
        args += " " + VARIANTS[variant]["args"].format(**variant_files())
    return args


def target_declares(variant: str = "") -> dict[str, Any]:
    """What a mutant's target file declares: the default target's declarations (and a variant's)."""
    out = dict(reference_target()["declares"])
    if variant:
        files = variant_files()
        out.update({k: v.format(**files) if isinstance(v, str) else v
                    for k, v in VARIANTS[variant].get("declares", {}).items()})
    return out


VARIANTS: dict[str, dict[str, Any]] = {
    "python-plane": {
        "args": "--data-plane python",
        "why": "the default data plane (--data-plane c) serves PUBLISH with ack none/written, PING and "
               "DELIVER in C, so the Python handlers of those frames (the documented --data-plane python) "
               "run in no case of the default launch",
    },
    "max-payload": {
        "args": "--max-payload 1000",
        "why": "the default target runs with the default limits, so code that uses a default where it should "
               "use the configured --max-payload (which HELLO_OK announces) behaves the same there",
    },
    "max-topics": {
        "args": "--max-topics 20",
        "declares": {"max_topics": 20},
        "cases": ("resources.topic-limit",),
        "why": "the default target allows 10,000 topics, more than the kit can create, so the refusal of a topic "
               "beyond --max-topics (NMQ-6.2-5, resources.topic-limit) is never reached there",
    },
    "no-lz4": {
        "args": "--compression none",
        "declares": {"capabilities": {"COMPRESSION_LZ4": False, "SEEK_TIME": True}},
        "why": "the default target announces COMPRESSION_LZ4, so the refusal of LZ4 records by a broker that does not "
               "(NOT_SUPPORTED, NMQ-5.3-1, NMQ-7-1), which the kit's LZ4 cases check when it is not announced, runs "
               "in no case of the default launch",
    },
    "large-payload": {
        "args": "--max-payload 128KiB",
        "why": "the default target's max_payload (64 KiB) makes max_frame the codec's default, so code that uses "
               "the codec's default frame limit where it should use the announced one (HELLO_OK's max_frame, "
               "32 MiB with 128 KiB payloads) behaves the same there",
    },
    "no-topic-rate": {
        "args": "--topic-create-rate 0",
        "declares": {"topic_create_rate": 0.0, "topic_create_burst": 0},
        "why": "the default target limits topic creation (10/s after 50), so the documented '0 = no limit' of "
               "--topic-create-rate runs in no case: a broker that limits creation anyway refuses topics the "
               "kit's cases create once more than the burst were made (NMQ-6.2-5)",
    },
    "busy-poll": {
        "args": "--busy-poll 50",
        "why": "the default target waits for its sockets in epoll, so the busy-polling selector of the "
               "documented --busy-poll option (SpinningSelector) runs in no case of the default launch",
    },
    "small-frame-buffer": {
        "args": "--max-frame-buffer 1MiB",
        "declares": {"frame_buffer_bytes": 1 << 20},
        "why": "the default target's frame budget (32 MiB) is larger than max_frame, so the rule that one "
               "frame is let in when nothing is reserved, however large (NMQ-6.2-6: waiting never "
               "deadlocks), is never needed there",
    },
    "fsync-never": {
        "args": "--fsync never",
        "why": "the default target syncs with --fsync always, so the log's code for the documented never "
               "policy (sync only at rotation, shutdown and for durable acks) runs in no case",
    },
    "fsync-interval": {
        "args": "--fsync interval --fsync-interval-ms 5",
        "why": "the default target syncs with --fsync always, so the background syncer of the documented "
               "interval policy runs in no case",
    },
    "tls": {
        "args": "--tls-cert {tls_cert} --tls-key {tls_key}",
        "declares": {"tls_ca": "{tls_cert}"},
        "why": "the default target speaks plain TCP, so the broker's TLS code (--tls-cert) runs in no case",
    },
}
"""Second-chance launches: a mutant that survives the default launch is run again with these
flags (each with a coverage map of its own), because its code serves a documented configuration
the default target does not use. A kill there counts (the mutant is a broker that breaks a rule
when so configured); the report gives the score with and without them. ``cases``, where given,
are the only kit cases used under a variant, because its flags do not suit the others (with 20
topics at most, the cases a mutant runs together would create more)."""


def variant_files() -> dict[str, str]:
    """Files the variants' flags name: a self-signed certificate for 127.0.0.1 (made once with
    the openssl command, in BUILD/tls)."""
    d = BUILD / "tls"
    cert, key = d / "cert.pem", d / "key.pem"
    if not (cert.exists() and key.exists()):
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "30", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=120)
    return {"tls_cert": str(cert), "tls_key": str(key)}


def scratch_root() -> Path:
    """Where the kit's working directories of this process's runs go (TMPDIR of the kit), so
    everything a run leaves behind is under one directory that is removed afterwards."""
    return Path(tempfile.gettempdir()) / f"nanomq-mutation-{os.getpid()}"


# ------------------------------------------------------------------------------------------------
# Python scope: the files mutmut generates mutants for, and which of their functions count

PY_GENERATE = [
    "nanomq/broker/*.py",
    "nanomq/storage/*.py",
    "nanomq/protocol/codec.py",
    "nanomq/protocol/frames.py",
    "nanomq/protocol/records.py",
    "nanomq/protocol/_pyrecords.py",
]
"""mutmut's only_mutate: every mutant of these files is generated; the scope below decides which
are run (the others are listed in the report as excluded, with the reason)."""

PY_EXCLUDED_FILES = {
    "nanomq/broker/config.py": "operator configuration (BrokerConfig.validate of command-line values, "
    "default_data_dir): nothing a client sends reaches it, no spec rule constrains it, and every "
    "conformance target is launched with valid, explicit flags",
    "nanomq/storage/offsets.py": "OffsetStore is not used by the reference broker (it does not implement "
    "consumer groups: SUBSCRIBE with a group is answered NOT_SUPPORTED), so no wire behaviour depends on it",
    "nanomq/protocol/_pyrecords.py": "the pure-Python reference scanner the C scanner is fuzzed against; "
    "the server validates records with the C scanner (RecordBatch.parse)",
}

PY_PROTOCOL_SCOPE = {
    "nanomq/protocol/codec.py": {"Decoder.*"},
    "nanomq/protocol/frames.py": {"valid_topic", "_fail", "_need", "_reserved", "_name", "_text", "_enum"},
    "nanomq/protocol/records.py": {"RecordBatch.__init__", "RecordBatch.parse", "RecordBatch.summary"},
}
"""The server side of nanomq/protocol: the decoder, the validation helpers of requests, and the
record-scan wrapper. ``<Request>.parse`` of every class in codec.REQUESTS is added to frames.py
(read from the snapshot's codec.py, so a new request type is in scope at once)."""

PY_PROTOCOL_OUT_OF_SCOPE = ("client side of nanomq/protocol (encoders: frame_header, encode, *.body, "
                            "*.prefix, RecordBatch.from_payloads; parse of response frames; record "
                            "iteration): the issue scopes the protocol to what a server uses to decode "
                            "and validate requests")

PY_EXCLUDED_FUNCTIONS = {
    ("nanomq/storage/topic_log.py", "TopicLog.__repr__"): "debugging text, never on the wire",
}

DO_NOT_MUTATE_PATTERNS = [r"\b_log\.(debug|info|warning|error|exception|critical|log)\("]
"""Lines starting a call to the module loggers: the whole call (level, message, arguments) is left
alone. Log output is not part of the wire protocol and no spec rule constrains it."""

# ------------------------------------------------------------------------------------------------
# C scope: the C sources of the _log module that the broker's behaviour on the wire rests on, with
# our operator set (mutation/cmutants.py)

C_FILES = ("nanomq/_c/src/log.c", "nanomq/_c/src/plane.c", "nanomq/_c/src/syncer.c")
"""The mutated C files: the write-ahead log, the data plane (PUBLISH validate, append, ack; PING;
DELIVER framing and credit) and the group-commit threads, all three compiled into ``_log``
(nanomq/_c/build_log.py). A mutant's id starts with the file's name (``plane.c:<line>:...``).
Left out: record.c, the record scanner, which fuzz/fuzz_records.py checks against the pure-Python
scanner (nanomq/protocol/_pyrecords.py) verdict for verdict; crc32c.c, checked against its
reference vectors (tests/test_crc32c.py); ring.c, the IPC ring, which the broker does not use."""

C_EXCLUDED_FUNCTIONS: dict[str, dict[str, str]] = {
    "nanomq/_c/src/log.c": {
        "nmq_log_fault_set": "test-only fault injection: never called by the broker",
        "nmq_log_fault_clear": "test-only fault injection: never called by the broker",
        "fault": "test-only fault injection: inert in a broker (no fault is ever armed, f_nth stays 0)",
    },
    # every function of plane.c serves the broker
    "nanomq/_c/src/plane.c": {},
    "nanomq/_c/src/syncer.c": {
        "nmq_syncer_busy": "test-only: Syncer.busy, its wrapper, is called by tests/test_syncer.py alone; the broker "
                           "tracks its syncs itself (Topic.syncing)",
    },
}
"""Functions never mutated, per file, each with the reason."""
C_EXCLUDED_LINES = [
    (re.compile(r"\bfault\(|^\s*if \(e\) \{ errno = e; return -1; \}"),
     "the fault-injection hook of log.c's x_* syscall wrappers: inert in a broker (no fault is ever armed)"),
]
"""Lines never mutated (in any of C_FILES; only log.c has them)."""
C_EXCLUDED_CALLS = {
    "SETERR": "error message text (raised as the exception text; no spec rule constrains it)",
    "snprintf": "message and file-name formatting (the report message is logged; names are fixed-width)",
}
"""Tokens inside the argument list of these calls are not mutated (in any of C_FILES; plane.c and
syncer.c format no message: their errors are codes, which are mutated)."""


def c_name(path: str) -> str:
    """The short name of a C file in mutant ids and reports (``plane.c``)."""
    return path.rsplit("/", 1)[-1]


# ------------------------------------------------------------------------------------------------
# running

QUICK = True
"""Mutant runs and the coverage map use the kit's --quick (one crash cycle per crash case,
smaller histories; every rule is still checked) and so never the budgets layer."""
TIMEOUT_BASE_S = 60.0
TIMEOUT_FACTOR = 3.0
TIMEOUT_PER_CASE_S = 1.0
"""A mutant's run is stopped (verdict timeout) after TIMEOUT_BASE_S + the sum over its selected
cases of TIMEOUT_FACTOR x the case's duration against the reference broker (measured under
coverage, so already slower than a plain run) + TIMEOUT_PER_CASE_S: about ten times what a
surviving mutant's run takes."""
READY_TIMEOUT_S = 10.0
"""The kit's ready_timeout (default 20 s): a broker starts in well under a second, and a mutant
that cannot answer HELLO would otherwise cost 20 s per start."""
KIT_JOBS = 8
"""The kit's --jobs: its non-exclusive cases run this many at a time (crash, storage and
restarting cases always run alone)."""
DISK_LIMIT_BYTES = 6 << 30
"""A run whose working directory grows beyond this is stopped (verdict timeout, "disk limit")."""
