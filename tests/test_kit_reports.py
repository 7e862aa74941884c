"""The kit's rule-level verdicts and its reports: UNTESTED only for rules no case names, NOT-RUN
and UNTESTABLE apart from it, honest summary counts, JUnit counts that match the elements, and an
HTML page that opens with the failures and can be filtered."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from conformance import cli, untestable
from conformance.registry import Case, Context, Failed, Skipped, Unimplemented
from conformance.report import summarize, summary_line, write_reports
from conformance.rules import Rule
from conformance.runner import RunResult, all_cases, run_cases
from conformance.verdicts import coverage_lines, rule_verdicts

ROOT = Path(__file__).resolve().parents[1]


def _rule(rid: str, level: str = "MUST") -> Rule:
    return Rule(rid, level, f"the text of {rid} <b>", "protocol.md")


RULES = {r.id: r for r in [
    _rule("NMQ-90-1"),            # verified by a case
    _rule("NMQ-90-2"),            # failed
    _rule("NMQ-90-3"),            # named by the failing case, which stopped before checking it
    _rule("NMQ-90-4", "SHOULD"),  # failed, but only a SHOULD
    _rule("NMQ-90-5"),            # its only case was skipped
    _rule("NMQ-90-6"),            # its only case was deselected
    _rule("NMQ-90-7"),            # capability not announced
    _rule("NMQ-90-8"),            # verified by an UNIMPLEMENTED case (the NOT_SUPPORTED answer)
    _rule("NMQ-90-9"),            # untestable, with a reason
    _rule("NMQ-90-10"),           # no case at all
    _rule("NMQ-90-11"),           # one case OK, another skipped
    _rule("NMQ-90-12", "MAY"),    # no case at all
]}


def _ok(ctx: Context) -> None:
    pass


def _fail(ctx: Context) -> None:
    raise Failed("wrong answer <script>alert(1)</script>", ("NMQ-90-2",))


def _fail_should(ctx: Context) -> None:
    raise Failed("late", ("NMQ-90-4",))


def _skip(ctx: Context) -> None:
    raise Skipped("strace is not installed")


def _unimpl(ctx: Context) -> None:
    raise Unimplemented("capability X not announced", ("NMQ-90-8",))


def _over_budget(ctx: Context) -> None:
    raise Failed("e2e p99 9 ms: over budget", ("BUDGET:e2e_p99_ms",))


def _case(cid: str, layer: str, rules: tuple[str, ...], fn: Any) -> Case:
    return Case(id=cid, title=f"title of {cid}", layer=layer, rules=rules, fn=fn)


CASES = [
    _case("wire.ok", "wire", ("NMQ-90-1", "NMQ-90-11"), _ok),
    _case("wire.fail", "wire", ("NMQ-90-2", "NMQ-90-3"), _fail),
    _case("wire.should", "wire", ("NMQ-90-4",), _fail_should),
    _case("crash.skip", "crash", ("NMQ-90-5", "NMQ-90-11"), _skip),
    _case("crash.deselected", "crash", ("NMQ-90-6",), _ok),
    _case("wire.unimpl", "wire", ("NMQ-90-7", "NMQ-90-8"), _unimpl),
    _case("budgets.over", "budgets", (), _over_budget),
    _case("budgets.measure", "budgets", (), _ok),
    _case("budgets.skip", "budgets", (), _skip),
]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> RunResult:
    monkeypatch.setitem(untestable.UNTESTABLE, "NMQ-90-9", "about what clients do: the kit is the client")
    ctx = Context(SimpleNamespace(can_crash=True), 0, 99)  # type: ignore[arg-type]  # cases never touch it
    return run_cases([c for c in CASES if c.id != "crash.deselected"], ctx, RULES)


def test_rule_verdicts(run: RunResult) -> None:
    table = rule_verdicts(run, RULES, CASES)
    verdict = {rid: e["verdict"] for rid, e in table.items()}
    assert verdict == {
        "NMQ-90-1": "OK", "NMQ-90-2": "FAILED", "NMQ-90-3": "NOT-RUN", "NMQ-90-4": "NON-STRICT",
        "NMQ-90-5": "NOT-RUN", "NMQ-90-6": "NOT-RUN", "NMQ-90-7": "UNIMPLEMENTED", "NMQ-90-8": "OK",
        "NMQ-90-9": "UNTESTABLE", "NMQ-90-10": "UNTESTED", "NMQ-90-11": "OK", "NMQ-90-12": "UNTESTED",
    }
    assert "stopped at a failure of NMQ-90-2" in table["NMQ-90-3"]["reason"]
    assert "skipped: strace is not installed" in table["NMQ-90-5"]["reason"]
    assert "crash.deselected: not in this run" in table["NMQ-90-6"]["reason"]
    assert table["NMQ-90-9"]["reason"] == "about what clients do: the kit is the client"
    assert table["NMQ-90-10"]["reason"] == "no case names this rule"
    assert table["NMQ-90-11"]["case_verdicts"] == {"wire.ok": "OK", "crash.skip": "NOT-RUN"}
    assert table["NMQ-90-6"]["cases"] == ["crash.deselected"] and table["NMQ-90-6"]["layers"] == ["crash"]
    # budget cases name no rule: nothing of theirs enters the rule table
    assert not [rid for rid in table if rid.startswith("BUDGET:")]


def test_a_failure_counts_for_the_rule_that_failed_even_if_the_case_does_not_name_it() -> None:
    def fails_elsewhere(ctx: Context) -> None:
        raise Failed("a helper's check failed", ("NMQ-90-2",))

    c = _case("limits.x", "wire", ("NMQ-90-1",), fails_elsewhere)
    ctx = Context(SimpleNamespace(), 0, 1)  # type: ignore[arg-type]
    run = run_cases([c], ctx, RULES)
    table = rule_verdicts(run, RULES, [c])
    assert table["NMQ-90-2"]["verdict"] == "FAILED" and table["NMQ-90-2"]["cases"] == ["limits.x"]
    assert table["NMQ-90-1"]["verdict"] == "NOT-RUN"
    assert summarize(run, RULES, table)["MUST"]["failed"] == ["NMQ-90-2"]


def test_summary_counts_every_rule_once(run: RunResult) -> None:
    s = summarize(run, RULES, cases=CASES)
    must = s["MUST"]
    assert must["ok"] == 3 and must["total"] == 10
    assert must["failed"] == ["NMQ-90-2"] and must["unimplemented"] == ["NMQ-90-7"]
    assert must["not_run"] == ["NMQ-90-3", "NMQ-90-5", "NMQ-90-6"]
    assert must["untestable"] == ["NMQ-90-9"] and must["untested"] == ["NMQ-90-10"]
    for level in ("MUST", "SHOULD", "MAY"):
        e = s[level]
        assert e["ok"] + sum(len(e[k]) for k in ("failed", "unimplemented", "informational", "not_run",
                                                 "untestable", "untested")) == e["total"]
    assert s["SHOULD"]["failed"] == ["NMQ-90-4"] and s["MAY"]["untested"] == ["NMQ-90-12"]
    assert s["budgets_failed"] == ["e2e_p99_ms"]
    line = summary_line(s)
    assert line.startswith("MUST 3/10 (failed 1, unimplemented 1, not run 3, untestable 1, untested 1)"), line
    assert "SHOULD 0/1 (failed 1," in line and "MAY 0/1" in line and "over budget: e2e_p99_ms" in line
    assert "cases: FAILED 2, INFORMATIONAL 3, NON-STRICT 1, OK 1, UNIMPLEMENTED 1" in line


def test_junit_counts_match_the_elements(run: RunResult, tmp_path: Path) -> None:
    write_reports(run, RULES, tmp_path, {}, CASES)
    root = ET.parse(tmp_path / "junit.xml").getroot()
    suites = root.findall("testsuite")
    assert {s.get("name") for s in suites} == {"wire", "crash", "budgets"}
    for s in suites:
        assert int(s.get("tests", -1)) == len(s.findall("testcase")), s.get("name")
        assert int(s.get("failures", -1)) == len(s.findall("testcase/failure")), s.get("name")
        assert int(s.get("skipped", -1)) == len(s.findall("testcase/skipped")), s.get("name")
        assert int(s.get("errors", -1)) == len(s.findall("testcase/error")), s.get("name")
        for tc in s.findall("testcase"):
            assert len(tc.findall("system-out")) <= 1
    for k, path in (("tests", "testcase"), ("failures", "testcase/failure"), ("skipped", "testcase/skipped")):
        assert int(root.get(k, -1)) == len(root.findall(f"testsuite/{path}"))
    budgets = next(s for s in suites if s.get("name") == "budgets")
    by_name = {tc.get("name"): tc for tc in budgets.findall("testcase")}
    assert by_name["budgets.skip"].find("skipped") is not None  # a skipped budget case is skipped
    assert by_name["budgets.measure"].find("skipped") is None  # a measurement is not
    assert by_name["budgets.over"].find("failure") is not None
    assert budgets.get("skipped") == "1" and budgets.get("failures") == "1"


class _Rows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str | None]] = []
        self.ids: list[str] = []
        self.options: dict[str, list[str]] = {}
        self._select = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "data-verdict" in a:
            self.rows.append(a)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "select":
            self._select = str(a.get("id"))
            self.options[self._select] = []
        if tag == "option":
            self.options[self._select].append(str(a.get("value")))


def test_html_opens_with_the_failures_and_has_a_filter(run: RunResult, tmp_path: Path) -> None:
    write_reports(run, RULES, tmp_path, {"target": {"address": "127.0.0.1:1"}}, CASES)
    page = (tmp_path / "index.html").read_text()
    top = page[: page.index("Rules × verdicts")]
    assert top.index("Failed: 2 rules, 3 cases") < top.index('id="filter"')
    for must_be_on_top in ("NMQ-90-2", "NMQ-90-4", "wire.fail", "wire.should", "budgets.over", "BUDGET:e2e_p99_ms"):
        assert must_be_on_top in top[: top.index('id="filter"')], must_be_on_top
    assert "NMQ-90-1'" not in top  # an OK rule is not among the failures
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    # no external assets: everything is inline
    for external in ("http://", "https://", "<link", " src=", "@import"):
        assert external not in page, external
    p = _Rows()
    p.feed(page)
    assert {"fv", "fl", "fy", "ft"} <= set(p.ids)
    assert {"FAILED", "NOT-RUN", "UNTESTABLE", "UNTESTED", "OK"} <= set(p.options["fv"])
    assert {"MUST", "SHOULD", "MAY"} <= set(p.options["fl"]) and {"wire", "crash", "budgets"} <= set(p.options["fy"])
    for row in p.rows:
        assert row.get("data-level") and row.get("data-layer") is not None, row
    verdicts = [r["data-verdict"] for r in p.rows]
    assert verdicts.count("UNTESTABLE") == 1 and "about what clients do" in page
    assert "<script>" in page and "addEventListener" in page


_FAKE_DOM = """
const rows = JSON.parse(process.argv[1]).map(r => ({dataset: r, textContent: r.text, style: {display: ''}}));
const ctl = {};
for (const id of ['fv', 'fl', 'fy', 'ft', 'fn'])
  ctl[id] = {value: '', textContent: '', handlers: [], addEventListener(k, f) { this.handlers.push(f); }};
global.document = {getElementById: id => ctl[id], querySelectorAll: () => rows};
eval(require('fs').readFileSync(0, 'utf8'));
const out = [];
for (const [k, v] of JSON.parse(process.argv[2])) {
  ctl[k].value = v; ctl[k].handlers.forEach(f => f());
  out.push(rows.filter(r => r.style.display !== 'none').map(r => r.dataset.id));
}
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_html_filter_script_filters_rows(run: RunResult, tmp_path: Path) -> None:
    write_reports(run, RULES, tmp_path, {}, CASES)
    page = (tmp_path / "index.html").read_text()
    script = page[page.index("<script>") + len("<script>"): page.index("</script>")]
    rows = [{"id": "a", "verdict": "FAILED", "level": "MUST", "layer": "wire crash", "text": "NMQ-1 boom"},
            {"id": "b", "verdict": "OK", "level": "MUST", "layer": "wire", "text": "NMQ-2 fine"},
            {"id": "c", "verdict": "OK", "level": "SHOULD", "layer": "crashy", "text": "NMQ-3 Fine too"}]
    steps = [["fv", "OK"], ["fl", "MUST"], ["fl", ""], ["fy", "crash"], ["fy", ""], ["fv", ""], ["ft", "FINE"]]
    p = subprocess.run(["node", "-e", _FAKE_DOM, json.dumps(rows), json.dumps(steps)], input=script,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [["b", "c"], ["b"], ["b", "c"], [], ["b", "c"], ["a", "b", "c"], ["b", "c"]]


def test_coverage_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(untestable.UNTESTABLE, "NMQ-90-9", "about what clients do: the kit is the client")
    text = "\n".join(coverage_lines(CASES, RULES))
    assert "rules -> cases:" in text
    assert any(line.startswith("NMQ-90-11") and "wire.ok crash.skip" in line for line in text.splitlines())
    assert "NMQ-90-9  MUST   about what clients do" in text.replace("   NMQ", "NMQ").replace("  NMQ", "NMQ")
    assert "MUST rules without a case, untested (1): NMQ-90-10" in text
    assert "MAY rules without a case, untested (1): NMQ-90-12" in text


def test_list_prints_rules_to_cases_and_untestable_reasons(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rules = cli.load_rules()
    covered = {r for c in all_cases() for r in c.rules}
    rid = next(r for r in rules if r not in covered)  # the spec has rules no black-box case can check
    monkeypatch.setitem(untestable.UNTESTABLE, rid, "a reason only this test gives")
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "rules -> cases:" in out and "wire.hello.ok" in out
    assert f"{rid}" in out and "a reason only this test gives" in out
    some = next(c for c in all_cases() if c.rules)
    assert any(line.startswith(some.rules[0]) and some.id in line for line in out.splitlines())


def test_a_partial_run_marks_deselected_rules_not_run(tmp_path: Path) -> None:
    out = tmp_path / "report"
    p = subprocess.run([sys.executable, "-m", "conformance", "--report-dir", str(out), "--seed", "5",
                        "--only", "wire.hello.ok"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    index = json.loads((out / "index.json").read_text())
    named = {r for c in all_cases() for r in c.rules}
    table = index["rules"]
    for rid, e in table.items():
        if e["verdict"] in ("UNTESTED", "UNTESTABLE"):
            assert rid not in named, (rid, e)
        elif rid in named and not set(e["cases"]) & {"wire.hello.ok"}:
            assert e["verdict"] == "NOT-RUN" and "not in this run" in e["reason"], (rid, e)
    assert table["NMQ-4.1-4"]["verdict"] == "OK"
    must = index["summary"]["MUST"]
    assert len(must["not_run"]) > 10 and f"not run {len(must['not_run'])}" in index["summary_line"]
