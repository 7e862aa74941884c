"""Spec rules that no case of the kit can check, each with the reason.

The coverage report lists every MUST rule that no case names. A rule belongs here only when a
black-box kit *cannot* observe it from outside the broker (the wire, and for targets declaring the
reference on-disk format, the files in its data directory between a stop and a start): a rule about
what a client does, about an internal API, or about an event the kit cannot cause (power loss, a
failing disk). ``--list`` prints these with their reasons; the reports show them as UNTESTABLE.
"""

from __future__ import annotations

__all__ = ["UNTESTABLE"]

_CLIENT = ("a rule for clients: the kit plays the client and tests servers; the reference clients are "
           "checked by tests/ in this repository")

_POLICY = ("the sync policy is the target's configuration, not chosen or visible over the wire; whatever it "
           "is, every durable ack must follow a sync of the record's file (crash.durable-ack-after-sync)")
_DISK = ("needs the target's disk to fail (EIO) or to be full (ENOSPC); the kit cannot cause that from outside "
         "without filling the host's disk. tests/storage injects these faults (nmq_log_fault_set)")
_OFFSETS = ("the spec does not say where in its data directory a broker keeps offsets.journal, and the "
            "reference broker has no consumer groups (CONSUMER_GROUPS is not announced); tests/storage checks "
            "the reference OffsetStore")
_API = "a rule of the log's in-process read API and threading contract, not observable on the wire or on disk"

UNTESTABLE: dict[str, str] = {
    "NMQ-3.3-3": _CLIENT,
    "NMQ-4.6-4": _CLIENT,
    "NMQ-7-2": _CLIENT,
    "NMQ-8-3": _CLIENT,
    "NMQ-SEM-3-5": _CLIENT,
    "NMQ-SEM-3-6": "a power loss (or kernel crash) cannot be caused from outside the target; killing the "
                   "process keeps the page cache, so only what the process writes is tested "
                   "(NMQ-SEM-3-2, NMQ-SEM-3-3), and durable acks are checked against observed syncs (NMQ-SEM-3-1)",
    # spec/storage.md: what the storage layer (files between a stop and a start) cannot observe
    "NMQ-S7-3": _POLICY,
    "NMQ-S7-4": _POLICY,
    "NMQ-S7-5": "a promise about power loss, which cannot be caused from outside the target (the durable-ack "
                "proof under strace checks that acknowledged records were synced: NMQ-SEM-3-1, NMQ-S7-2)",
    "NMQ-S8-5": "the recovery report is a value of the log's API (RecoveryReport), not on the wire or on disk; "
                "what recovery did is checked by its effects (storage.unclean, storage.*-damage)",
    "NMQ-S8-7": "only the classification changes (corruption instead of a torn tail: ERROR in the log, a refused "
                "open with on_corrupt = raise); what is delivered, quarantined and the next id are the same as "
                "for a torn tail, which storage.unclean checks for a zeroed header",
    "NMQ-S10-1": _DISK,
    "NMQ-S10-2": _DISK,
    "NMQ-S10-3": _DISK,
    "NMQ-S10-4": _DISK,
    "NMQ-S10-5": _DISK,
    "NMQ-S10-8": _DISK,
    "NMQ-S10-6": "says what the contract does not cover (files changed under a running owner): nothing to check",
    "NMQ-S10-7": "the fault-injection hook is a C/Python API of the reference implementation "
                 "(nmq_log_fault_set), used by tests/storage",
    "NMQ-S12-1": _OFFSETS,
    "NMQ-S12-2": _OFFSETS,
    "NMQ-S12-3": _OFFSETS,
    "NMQ-S13-1": _API,
    "NMQ-S13-2": _API,
    "NMQ-S13-3": _API,
    "NMQ-S13-4": _API,
    # spec/admin.md
    "NMQ-ADM-2-3": "needs the target caught while it recovers, long enough to ask its admin API: the kit cannot "
                   "make a recovery slow from outside; tests/test_admin.py holds the reference broker's recovery "
                   "and checks /readyz, /v1/topics and /metrics meanwhile",
    "NMQ-S2-6": "needs the target killed inside a topic deletion, between its steps, which the kit cannot time from "
                "outside; admin.delete-topic checks what a whole deletion leaves, and tests/test_admin.py the reference "
                "broker's start after a deletion cut short (a ~deleted-… directory, the id floor)",
    "NMQ-ADM-5-2": "a cost of the implementation, measured by benchmarks (docs/operations.md, "
                   "benchmarks/bench_metrics_cost.py), not a behaviour the kit can observe",
    # spec/protocol.md §10
    "NMQ-10-6": "a reload is caused by the target's operator (the reference: SIGHUP after editing --auth-file), not over "
                "the wire, and the kit cannot change a target's principals; tests/test_auth.py checks the reference",
    "NMQ-10-12": "how tokens are stored and compared is inside the target; a timing difference of a comparison is far "
                 "below what a network round trip lets the kit measure. tests/test_auth.py checks the reference",
}
"""Rule ID -> why no black-box case can check it."""
