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

UNTESTABLE: dict[str, str] = {
    "NMQ-3.3-3": _CLIENT,
    "NMQ-4.6-4": _CLIENT,
    "NMQ-7-2": _CLIENT,
    "NMQ-8-3": _CLIENT,
    "NMQ-SEM-3-5": _CLIENT,
    "NMQ-SEM-3-6": "a power loss (or kernel crash) cannot be caused from outside the target; killing the "
                   "process keeps the page cache, so only what the process writes is tested "
                   "(NMQ-SEM-3-2, NMQ-SEM-3-3), and durable acks are checked against observed syncs (NMQ-SEM-3-1)",
}
"""Rule ID -> why no black-box case can check it."""
