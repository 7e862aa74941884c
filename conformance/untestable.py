"""Spec rules that no case of the kit can check, each with the reason.

The coverage report lists every MUST rule that no case names. A rule belongs here only when a
black-box kit *cannot* observe it from outside the broker (the wire, and for targets declaring the
reference on-disk format, the files in its data directory between a stop and a start): a rule about
what a client does, about an internal API, or about an event the kit cannot cause (power loss, a
failing disk). ``--list`` prints these with their reasons; the reports show them as UNTESTABLE.
"""

from __future__ import annotations

__all__ = ["UNTESTABLE"]

UNTESTABLE: dict[str, str] = {
}
"""Rule ID -> why no black-box case can check it."""
