"""Per spec rule: what the cases of a run add up to, and which rules no case can check.

A rule's verdict is one of :data:`RULE_VERDICTS`:

- FAILED (NON-STRICT for a SHOULD or MAY rule): a case that ran failed on this rule;
- OK: a case verified it and none failed on it (an UNIMPLEMENTED case still verifies the rules it
  names in ``verified_rules``, e.g. the NOT_SUPPORTED answer, and a case that failed verified the
  rules of the steps it completed before the failure);
- UNIMPLEMENTED: its cases ran only as far as "the target does not announce the capability";
- INFORMATIONAL: its cases only measured (no pass/fail);
- NOT-RUN: cases for it exist but none ran to a verdict on it here: skipped (no launch command, no
  strace, …), deselected (``--layers``, ``--only``, ``--case``, ``--rules``, ``--quick``,
  stopped by ``--fail-fast``), or stopped by a failure of another rule before reaching it;
- UNTESTABLE: no case names it, and :data:`conformance.untestable.UNTESTABLE` says why none can;
- UNTESTED: no case names it and it is not listed as untestable: a gap of the kit.

Budget cases check figures of spec/budgets.toml, not rules: they name no rule, and their failures
(``BUDGET:<key>``) show up as failed cases and in the summary's ``budgets_failed``.
"""

from __future__ import annotations

from typing import Any

from conformance.registry import Case
from conformance.rules import Rule
from conformance.runner import CaseResult, RunResult
from conformance.untestable import UNTESTABLE

__all__ = ["RULE_VERDICTS", "rule_verdicts", "case_ran", "coverage_lines"]

RULE_VERDICTS = ("FAILED", "NON-STRICT", "UNIMPLEMENTED", "INFORMATIONAL", "OK", "NOT-RUN", "UNTESTABLE", "UNTESTED")


def case_ran(r: CaseResult) -> bool:
    """Whether a result says something about its rules (a skipped case does not)."""
    return not (r.verdict == "INFORMATIONAL" and r.message.startswith("skipped:"))


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def _cases_by_rule(cases: list[Case]) -> dict[str, list[Case]]:
    out: dict[str, list[Case]] = {}
    for c in cases:
        for rid in c.rules:
            mine = out.setdefault(rid, [])
            if all(x.id != c.id for x in mine):
                mine.append(c)
    return out


def _verdict(rid: str, level: str, cases: list[Case], results: dict[str, CaseResult]) -> tuple[str, str]:
    """The verdict of rule ``rid`` from the results of the cases that name it, and why."""
    if not cases:
        if rid in UNTESTABLE:
            return "UNTESTABLE", UNTESTABLE[rid]
        return "UNTESTED", "no case names this rule"
    ran = [results[c.id] for c in cases if c.id in results]
    failed = [r for r in ran if r.verdict in ("FAILED", "NON-STRICT") and rid in r.failed_rules]
    if failed:
        return ("NON-STRICT" if level in ("SHOULD", "MAY") else "FAILED"), "; ".join(
            f"{r.case.id}: {_first_line(r.message)}" for r in failed)
    ok = [r for r in ran if r.verdict == "OK" or (r.verdict in ("UNIMPLEMENTED", "FAILED", "NON-STRICT")
                                                   and rid in r.verified_rules)]
    if ok:
        return "OK", "verified by " + ", ".join(r.case.id for r in ok)
    unimpl = [r for r in ran if r.verdict == "UNIMPLEMENTED"]
    if unimpl:
        return "UNIMPLEMENTED", "; ".join(f"{r.case.id}: {_first_line(r.message)}" for r in unimpl)
    measured = [r for r in ran if r.verdict == "INFORMATIONAL" and case_ran(r)]
    if measured:
        return "INFORMATIONAL", "measured by " + ", ".join(r.case.id for r in measured)
    why = []
    for c in cases:
        r = results.get(c.id)
        if r is None:
            why.append(f"{c.id}: not in this run")
        elif not case_ran(r):
            why.append(f"{c.id}: {r.message}")
        else:  # FAILED or NON-STRICT on other rules, before (or instead of) checking this one
            why.append(f"{c.id}: stopped at a failure of {', '.join(r.failed_rules)}")
    return "NOT-RUN", "; ".join(why)


def rule_verdicts(run: RunResult, rules: dict[str, Rule], cases: list[Case] | None = None) -> dict[str, dict[str, Any]]:
    """Per rule (spec order; then rules that cases name but the spec does not define, level "?"):
    level, text, source, verdict, reason, the cases that name it with each one's verdict in this
    run (NOT-RUN when it did not run) and their layers.

    ``cases`` is every case that exists (default: every registered case), so that a rule whose
    cases were deselected is NOT-RUN, not UNTESTED. A case that failed (or verified) a rule it
    does not name counts for that rule too."""
    if cases is None:
        from conformance.runner import all_cases

        cases = all_cases()
    results = {r.case.id: r for r in run.results}
    by_rule = _cases_by_rule([*cases, *(r.case for r in run.results)])
    for r in run.results:  # a check may fail (or verify) a rule its case does not name
        for rid in (*r.failed_rules, *r.verified_rules):
            if not rid.startswith("BUDGET:") and all(c.id != r.case.id for c in by_rule.get(rid, [])):
                by_rule.setdefault(rid, []).append(r.case)
    table: dict[str, dict[str, Any]] = {}
    for rid in [*rules, *sorted(set(by_rule) - set(rules))]:
        rule = rules.get(rid)
        level = rule.level if rule is not None else "?"
        mine = by_rule.get(rid, [])
        verdict, reason = _verdict(rid, level, mine, results)
        table[rid] = {
            "level": level,
            "text": rule.text if rule is not None else "",
            "source": rule.source if rule is not None else "",
            "verdict": verdict,
            "reason": reason,
            "cases": [c.id for c in mine],
            "case_verdicts": {c.id: (results[c.id].verdict if c.id in results and case_ran(results[c.id])
                                     else "NOT-RUN") for c in mine},
            "layers": sorted({c.layer for c in mine}),
        }
    return table


def coverage_lines(cases: list[Case], rules: dict[str, Rule]) -> list[str]:
    """What ``--list`` prints after the cases: every rule with the cases that check it, the
    untestable rules with their reasons, and the gaps."""
    by_rule = _cases_by_rule(cases)
    width = max((len(r) for r in rules), default=10)
    lines = ["", "rules -> cases:"]
    for rid, r in rules.items():
        names = [c.id for c in by_rule.get(rid, [])]
        shown = " ".join(names) if names else ("UNTESTABLE" if rid in UNTESTABLE else "UNTESTED (no case)")
        lines.append(f"{rid:{width}s} {r.level:6s} {shown}")
    unknown = sorted(set(by_rule) - set(rules))
    if unknown:
        lines.append(f"rules named by cases but not defined in the spec ({len(unknown)}): {' '.join(unknown)}")
    untestable = [rid for rid in UNTESTABLE if rid not in by_rule]
    lines.append("")
    lines.append(f"untestable rules ({len(untestable)}), with the reason no black-box case can check them:")
    for rid in untestable:
        level = rules[rid].level if rid in rules else "?"
        lines.append(f"  {rid:{width}s} {level:6s} {UNTESTABLE[rid]}")
    stale = [rid for rid in UNTESTABLE if rid in by_rule]
    if stale:
        lines.append(f"listed as untestable but named by a case ({len(stale)}): {' '.join(stale)}")
    undefined = [rid for rid in UNTESTABLE if rid not in rules]
    if undefined:
        lines.append(f"listed as untestable but not defined in the spec ({len(undefined)}): {' '.join(undefined)}")
    for level in ("MUST", "SHOULD", "MAY"):
        gap = [rid for rid, r in rules.items() if r.level == level and rid not in by_rule and rid not in UNTESTABLE]
        if level != "MAY" or gap:
            lines.append(f"{level} rules without a case, untested ({len(gap)}): {' '.join(gap) or '-'}")
    return lines
