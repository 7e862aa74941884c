"""The mutation-testing tool (mutation/, ``make mutation``): its parts on small inputs, and the CI
sample end to end (real brokers under the kit, a few minutes at most)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mutation import cmutants, equivalent, pymutants, report, runner
from mutation.common import Mutant, diff_key
from mutation.config import ROOT
from mutation.selection import Selector

# ------------------------------------------------------------------------------------------------
# C operators

C_SRC = """#include <stdio.h>
#define MAX(a, b) ((a) > (b) ? (a) : (b))
struct s { int a; };
static int fault(int kind) { return kind > 0; }
/* a comment with a < b and if (x) */
static int f(int *p, int n) {
    int e = fault(1);
    if (e) { errno = e; return -1; }
    if (n < 0 || p == NULL) { SETERR("bad n %d", n - 1); return -22; }
    const char *s = "a <= b && c";
    int k = n + 1, m = p->a - 8;
    if (x_fdatasync(n)) return -5;
    return k >= m && n != 0;
}
"""


def test_tokenizer_skips_comments_strings_and_directives() -> None:
    toks = cmutants.tokenize(C_SRC)
    texts = [t.text for t in toks]
    assert "include" not in texts and "MAX" not in texts  # preprocessor lines
    assert '"a <= b && c"' in texts and "comment" not in texts
    assert "->" in texts and texts.count("<=") == 0  # `->` is one token, the `<=` is inside a string


def test_c_operators_on_a_small_function() -> None:
    es = cmutants.edits(C_SRC)
    assert {e.function for e in es} == {"f"}  # fault() is excluded (config.C_EXCLUDED_FUNCTIONS)
    ops = Counter(e.operator for e in es)
    # if (n < 0 || p == NULL), if (x_fdatasync(n)); not the fault-hook `if (e)`
    assert ops["skip_check"] == 2
    # <, ==, >=, != (the `n - 1` inside SETERR is excluded)
    assert ops["cmp_negate"] == 4 and ops["cmp_boundary"] == 2 and ops["logic_swap"] == 2
    assert ops["drop_sync"] == 1
    # `n + 1` -> 0, 2 and `p->a - 8` -> 7, 9; not `return -1` / `return -22` (unary minus)
    assert sorted(e.replacement for e in es if e.operator == "off_by_one") == ["0", "2", "7", "9"]
    for e in es:
        mutated = cmutants.apply(C_SRC, e)
        assert mutated != C_SRC
        assert mutated.splitlines()[: e.line - 1] == C_SRC.splitlines()[: e.line - 1]


def test_c_mutants_of_log_c_have_unique_ids_and_one_change() -> None:
    ms = cmutants.load(ROOT)
    ids = [m.id for m, _ in ms]
    assert len(ids) == len(set(ids)) > 300
    assert {m.operator for m, _ in ms} == set(cmutants.OPERATORS)
    for m, src in ms[::37]:
        hunks = [ln for ln in m.diff.splitlines() if ln.startswith("@@")]
        assert len(hunks) == 1, m.id
        assert src != (ROOT / m.file).read_text()


def test_c_scope_is_several_files_with_ids_by_file() -> None:
    """Every file of config.C_FILES has mutants, each id starts with its file's name and names a
    line of that file; the diff names the file. log.c's ids are what they were with log.c alone
    (the journal, equivalent.toml and ci_sample.toml key on them)."""
    from mutation import config

    assert config.C_FILES[0] == "nanomq/_c/src/log.c"
    ms = cmutants.load(ROOT)
    by_file = Counter(m.file for m, _ in ms)
    assert set(by_file) == set(config.C_FILES) and all(n > 20 for n in by_file.values())
    for m, _src in ms:
        name = config.c_name(m.file)
        line, op, n = m.id.removeprefix(name + ":").split(":")
        assert m.id.startswith(name + ":") and int(line) == m.lines[0] and op == m.operator and int(n) >= 1
        assert f"a/{m.file}" in m.diff.splitlines()[0]
    log_c = "nanomq/_c/src/log.c"
    alone = [m.id for m, _ in cmutants.generate((ROOT / log_c).read_text(), log_c)]
    assert [m.id for m, _ in ms if m.file == log_c] == alone
    assert any(m.function == "nmq_plane_feed" for m, _ in ms) and any(m.function == "worker" for m, _ in ms)


def test_recorded_log_c_ids_still_name_log_c_mutants() -> None:
    """Every entry of equivalent.toml and every C entry of ci_sample.toml that names a log.c mutant
    finds one: adding files changed no log.c id."""
    import tomllib

    from mutation import ci, config

    ms = [m for m, _ in cmutants.load(ROOT)]
    entries = [e for e in equivalent.load() if e.id.startswith("log.c:")]
    applied, stale = equivalent.match(ms, entries)
    # entries match by diff key (a renumbered line keeps its entry): none of them went stale, and
    # each applies to a log.c mutant, none to another file's
    assert entries and not stale
    assert {m.file for m in ms if m.id in applied} == {"nanomq/_c/src/log.c"}
    for spec in tomllib.loads((ROOT / "mutation/ci_sample.toml").read_text())["mutant"]:
        if spec["kind"] == "c":
            assert ci.find(ms, spec).id.startswith(config.c_name(spec["file"]) + ":")


def test_c_exclusions_are_per_file() -> None:
    """log.c's test-only functions are excluded in log.c only: one of the same name elsewhere is mutated."""
    src = "int nmq_log_fault_clear(int n) {\n    return n > 0;\n}\n"
    assert cmutants.edits(src, LOG_C) == []
    assert {e.function for e in cmutants.edits(src, PLANE_C)} == {"nmq_log_fault_clear"}
    plane = [m for m, _ in cmutants.generate(C_SRC, PLANE_C)]
    assert plane and all(m.id.startswith("plane.c:") and m.file == "nanomq/_c/src/plane.c" for m in plane)
    with pytest.raises(ValueError):
        cmutants.build("", Path("/nonexistent"), "nanomq/_c/src/ring.c")


# ------------------------------------------------------------------------------------------------
# Python mutants: names, lines, scope

DIFF = """--- nanomq/x.py
+++ nanomq/x.py
@@ -2,7 +2,7 @@
     a = 1
     b = 2
     c = 3
-    if a < b:
+    if a <= b:
         return c
     return a
     return b"""

ORIG = """def f(self):
    a = 1
    b = 2
    c = 3
    if a < b:
        return c
    return a
    return b"""


def test_changed_lines_and_file_lines() -> None:
    assert pymutants.changed_lines(DIFF) == [5]
    source = "import os\n\n\nclass K:\n    # a comment\n" + "\n".join("    " + ln for ln in ORIG.splitlines()) + "\n"
    import ast

    node = pymutants._function_node(ast.parse(source), "K.f")
    assert pymutants.file_lines(DIFF, "K.f", ORIG, source, node) == [10]
    assert source.splitlines()[9].strip() == "if a < b:"
    # text that does not match the file: every line of the function, never a wrong line
    assert pymutants.file_lines(DIFF, "K.f", ORIG.replace("a < b", "a > b"), source, node) == list(range(6, 14))


def test_parse_name() -> None:
    assert pymutants.parse_name("nanomq.broker.connection.xǁConnectionǁ_on_hello__mutmut_3") == (
        "nanomq.broker.connection", "Connection._on_hello")
    assert pymutants.parse_name("nanomq.protocol.frames.x__need__mutmut_11") == ("nanomq.protocol.frames", "_need")


def test_scope() -> None:
    reqs = pymutants.request_classes((ROOT / "nanomq/protocol/codec.py").read_text())
    assert {"Hello", "Publish", "Subscribe"} <= reqs and "HelloOk" not in reqs
    assert pymutants.scope_of("nanomq/protocol/frames.py", "Publish.parse", reqs) == ""
    assert pymutants.scope_of("nanomq/protocol/frames.py", "_need", reqs) == ""
    assert pymutants.scope_of("nanomq/protocol/frames.py", "HelloOk.parse", reqs) != ""
    assert pymutants.scope_of("nanomq/protocol/frames.py", "Publish.body", reqs) != ""
    assert pymutants.scope_of("nanomq/protocol/codec.py", "Decoder.next_frame", reqs) == ""
    assert pymutants.scope_of("nanomq/protocol/codec.py", "encode", reqs) != ""
    assert pymutants.scope_of("nanomq/broker/connection.py", "Connection._pump", reqs) == ""
    assert "consumer groups" in pymutants.scope_of("nanomq/storage/offsets.py", "OffsetStore.set", reqs)


def test_launch_commands_run_from_the_tree() -> None:
    # `python -m` puts the working directory first on sys.path: without -C the kit's checkout wins
    cmd = pymutants.launch("nanomq.broker.topics.xǁTopicǁappend__mutmut_1", Path("/t/mutants"))
    assert cmd.startswith("env -C /t/mutants PYTHONPATH=/t/mutants MUTANT_UNDER_TEST=")
    assert "{python} -m nanomq.cli.broker --port {port} --admin-port {admin_port} --data-dir {data_dir}" in cmd
    assert cmutants.launch(Path("/b/x")).startswith("env -C /b/x PYTHONPATH=/b/x {python} -m nanomq.cli.broker")


# ------------------------------------------------------------------------------------------------
# equivalence entries go stale with their diff


def test_diff_key_ignores_line_numbers_not_content() -> None:
    moved = DIFF.replace("@@ -2,7 +2,7 @@", "@@ -40,7 +40,7 @@")
    assert diff_key(moved) == diff_key(DIFF)
    assert diff_key(DIFF.replace("a <= b", "a > b")) != diff_key(DIFF)


def _m(id: str, diff: str) -> Mutant:
    return Mutant(id=id, kind="python", file="nanomq/x.py", function="K.f", lines=[10], diff=diff)


def test_equivalent_entries_apply_and_go_stale(tmp_path: Path) -> None:
    f = tmp_path / "eq.toml"
    a, b = _m("m.xǁKǁf__mutmut_1", DIFF), _m("m.xǁKǁf__mutmut_2", DIFF.replace("a <= b", "a > b"))
    equivalent.add(a, "equivalent", "same behaviour", f)
    equivalent.add(b, "not-a-rule", "no rule", f)
    with pytest.raises(ValueError):
        equivalent.add(a, "equivalent", "twice", f)
    entries = equivalent.load(f)
    applied, stale = equivalent.match([a, b], entries)
    assert set(applied) == {a.id, b.id} and not stale
    # the code changed: a's diff now differs -> its entry is stale and a is a survivor again
    a2 = _m(a.id, DIFF.replace("c = 3", "c = 4"))
    applied, stale = equivalent.match([a2, b], entries)
    assert set(applied) == {b.id} and [e.id for e, _ in stale] == [a.id]
    # renumbered but the same mutation: still applies
    applied, stale = equivalent.match([_m("m.xǁKǁf__mutmut_9", DIFF)], entries[:1])
    assert set(applied) == {"m.xǁKǁf__mutmut_9"} and not stale


# ------------------------------------------------------------------------------------------------
# verdicts and scores


def test_classify() -> None:
    def run(rc: int | None, cases: list[dict[str, str]], err: str = "", stopped: str = "") -> runner.KitRun:
        return runner.KitRun(rc, cases, "", err, 1.0, stopped)

    assert runner.classify(run(1, [{"id": "a", "verdict": "OK"}, {"id": "b", "verdict": "FAILED", "message": "x"}]))[:2] \
        == ("killed", "b")
    assert runner.classify(run(0, [{"id": "a", "verdict": "OK"}]))[0] == "survived"
    assert runner.classify(run(2, [], "nanomq-conformance: target exited with 1 during start-up; log: x"))[0] == "killed"
    assert runner.classify(run(None, [], stopped="timeout after 60 s"))[0] == "timeout"
    # the kit itself crashing is never a kill
    assert runner.classify(run(1, [], "Traceback (most recent call last):\n  ...\nKeyError: 'x'"))[0] == "error"


def test_target_file_declares_what_the_default_target_declares() -> None:
    """A mutant's target file must declare what the kit's default target declares (on-disk format,
    connection limit, retention ...): without it the kit skips those cases for the mutant."""
    import tomllib

    from mutation import config

    ref = config.reference_target()
    assert ref["launch"].startswith("{python} -m nanomq.cli.broker ")
    assert config.broker_args() in ref["launch"]
    t = tomllib.loads(runner.target_toml({"launch": "x", "kill": "", **ref["declares"]}))["target"]
    assert t["storage_format"] == "nanomq-v1" and "kill" not in t
    for k, v in ref["declares"].items():
        assert t[k] == v


def test_score_counts_timeouts_as_killed_and_leaves_equivalents_out() -> None:
    c = Counter({"killed": 6, "timeout": 2, "survived": 1, "no-coverage": 1, "equivalent": 5, "build-error": 3})
    assert report.score(c) == pytest.approx(0.8)


LOG_C, PLANE_C = "nanomq/_c/src/log.c", "nanomq/_c/src/plane.c"


def test_selection_by_statement_first_lines(tmp_path: Path) -> None:
    (tmp_path / "nanomq").mkdir()
    (tmp_path / "nanomq/x.py").write_text("def f(a):\n    return max(a,\n               2)\n\n\ndef g():\n    pass\n")
    cmap = {"cases": {
        "slow": {"verdict": "OK", "duration_s": 5.0, "py": {"nanomq/x.py": [2]}, "c": {LOG_C: [10, 12]}},
        "fast": {"verdict": "OK", "duration_s": 0.1, "py": {"nanomq/x.py": [2, 7]},
                 "c": {LOG_C: [12], PLANE_C: [11]}},
        "broken": {"verdict": "FAILED", "duration_s": 0.1, "py": {"nanomq/x.py": [2]}, "c": {LOG_C: [10]}},
    }, "c_instrumented": {LOG_C: [10, 12], PLANE_C: [3, 11]}}
    sel = Selector(cmap, root=tmp_path)
    # line 3 continues the statement of line 2: both cases ran it; fastest first; the failing case never
    assert sel.cases_for(Mutant("p", "python", "nanomq/x.py", "f", [3], "")) == ["fast", "slow"]
    assert sel.cases_for(Mutant("q", "python", "nanomq/x.py", "g", [7], "")) == ["fast"]
    # C line 11 has no gcov record: it counts as line 10 above it
    assert sel.cases_for(Mutant("c", "c", LOG_C, "f", [11], "")) == ["slow"]
    assert sel.cases_for(Mutant("c2", "c", LOG_C, "f", [5], "")) == []
    # lines are per file: plane.c's line 11 is not log.c's, and its line 10 counts as its line 3
    assert sel.cases_for(Mutant("c3", "c", PLANE_C, "g", [11], "")) == ["fast"]
    assert sel.cases_for(Mutant("c4", "c", PLANE_C, "g", [10], "")) == []
    assert sel.cases_for(Mutant("c5", "c", "nanomq/_c/src/syncer.c", "h", [12], "")) == []
    assert sel.timeout_for(["fast", "slow"]) > 60


def test_wilson_interval() -> None:
    lo, hi = report.wilson(90, 100) or (0.0, 0.0)
    assert lo == pytest.approx(0.8256, abs=1e-3) and hi == pytest.approx(0.9448, abs=1e-3)
    assert report.wilson(0, 0) is None
    lo, hi = report.wilson(10, 10) or (0.0, 0.0)
    assert hi == pytest.approx(1.0) and 0.6 < lo < 0.75


def _pop() -> list[Mutant]:
    ms = [Mutant(f"p{i}", "python", "a.py" if i < 60 else "b.py", "f" if i % 3 else "g", [1], "") for i in range(100)]
    return ms + [Mutant(f"c{i}", "c", "log.c", f"h{i % 7}", [1], "") for i in range(50)]


def test_stratified_sample_is_proportional_and_nested() -> None:
    from mutation.__main__ import stratified_sample

    ms = _pop()
    idx = list(range(len(ms)))
    s30 = stratified_sample(ms, idx, 30, None, 1)
    kinds = Counter(ms[i].kind for i in s30)
    assert len(s30) == 30 and kinds == {"python": 20, "c": 10}  # 100:50
    strata = Counter((ms[i].file, ms[i].function) for i in s30 if ms[i].kind == "python")
    assert strata[("a.py", "f")] == 8 and strata[("b.py", "g")] == 3  # 40 and 13 of 100
    assert stratified_sample(ms, idx, 30, None, 1) == s30  # seeded
    assert set(s30) <= set(stratified_sample(ms, idx, 60, None, 1))  # a larger sample holds a smaller one
    s = stratified_sample(ms, idx, 12, 5, 1)  # --sample-c gives the C share, --sample the Python one
    assert Counter(ms[i].kind for i in s) == {"python": 12, "c": 5}


def test_stratified_sample_of_several_c_files() -> None:
    """C strata are file and function: each C file gets its proportional share, and a file's
    sample does not move when another file is filtered out (its strata draw on their own seeds)."""
    from mutation.__main__ import stratified_sample

    ms = ([Mutant(f"log.c:{i}:x:1", "c", LOG_C, f"l{i % 4}", [i], "") for i in range(80)]
          + [Mutant(f"plane.c:{i}:x:1", "c", PLANE_C, f"p{i % 2}", [i], "") for i in range(40)]
          + [Mutant(f"syncer.c:{i}:x:1", "c", "nanomq/_c/src/syncer.c", "w", [i], "") for i in range(20)])
    s = stratified_sample(ms, list(range(len(ms))), None, 28, 3)
    assert Counter(ms[i].file for i in s) == {LOG_C: 16, PLANE_C: 8, "nanomq/_c/src/syncer.c": 4}
    new = [i for i, m in enumerate(ms) if m.file != LOG_C]
    s2 = stratified_sample(ms, new, None, 12, 3)
    assert {ms[i].id for i in s2} == {ms[i].id for i in s if ms[i].file != LOG_C}


def test_second_chance_merge() -> None:
    from mutation.__main__ import merge_variants

    base = {"a|1": {"verdict": "killed"}, "b|1": {"verdict": "survived"}, "c|1": {"verdict": "no-coverage"},
            "d|1": {"verdict": "survived"}}
    var = {"python-plane": {"b|1": {"verdict": "killed", "killed_by": "wire.credit"}, "d|1": {"verdict": "survived"}},
           "tls": {"c|1": {"verdict": "timeout"}}}
    out, n = merge_variants(base, var)
    assert out["b|1"]["verdict"] == "killed" and out["b|1"]["variant"] == "python-plane"
    assert out["b|1"]["killed_by"] == "python-plane: wire.credit" and out["b|1"]["first_pass"] == "survived"
    assert out["c|1"]["verdict"] == "timeout" and out["c|1"]["first_pass"] == "no-coverage"
    assert out["d|1"]["verdict"] == "survived" and out["d|1"]["variants_survived"] == ["python-plane: survived"]
    assert n == {"first_pass_killed": 1, "variant_killed": 2}


def test_variants_add_flags_and_declarations() -> None:
    from mutation import config

    assert config.broker_args("python-plane") == config.broker_args() + " --data-plane python"
    assert "tls_ca" not in config.target_declares()
    assert "--tls-cert" in config.VARIANTS["tls"]["args"] and "tls_ca" in config.VARIANTS["tls"]["declares"]
    assert all(v.get("why") for v in config.VARIANTS.values())


def test_a_variant_with_cases_maps_only_those(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The max-topics variant names the one case its flags suit: its coverage map measures only
    that case (others run together would pass its 20 topics), and the declaration reaches the target."""
    from mutation import config, coverage_map

    assert config.target_declares("max-topics")["max_topics"] == 20
    assert "--max-topics 20" in config.broker_args("max-topics")
    cases = [{"id": "resources.topic-limit"}, {"id": "wire.publish.ids"}, {"id": "resources.topic-rate"}]
    measured: list[str] = []

    def measure(case_id: str, variant: str = "") -> dict[str, object]:
        measured.append(case_id)
        return {"verdict": "OK", "duration_s": 0.1, "c_instrumented": {}}

    monkeypatch.setattr(coverage_map, "list_cases", lambda: cases)
    monkeypatch.setattr(coverage_map, "measure_case", measure)
    monkeypatch.setattr(coverage_map, "build_tree", lambda log: None)
    monkeypatch.setattr(coverage_map, "SNAPSHOT", tmp_path)
    monkeypatch.setattr(coverage_map, "COV", tmp_path / "cov")
    monkeypatch.setattr(coverage_map, "map_file", lambda variant="": tmp_path / f"map-{variant}.json")
    (tmp_path / "nanomq").mkdir()
    m = coverage_map.build("src", workers=1, force=True, log=lambda *a: None, variant="max-topics")
    assert measured == ["resources.topic-limit"] and list(m["cases"]) == ["resources.topic-limit"]
    measured.clear()
    coverage_map.build("src", workers=1, force=True, log=lambda *a: None)
    assert sorted(measured) == sorted(c["id"] for c in cases)


def test_report_of_a_sample_says_so() -> None:
    ms = [Mutant(f"p{i}", "python", "a.py", "f", [1], "-a\n+b") for i in range(4)]
    res = {f"p{i}|{ms[i].diff_key}": {"verdict": v} for i, v in enumerate(["killed", "killed", "survived", "killed"])}
    meta = {"selection": {"sample": 4, "sample_seed": 1}, "population": {"python": 40, "c": 0}}
    rep = report.build(meta, ms, res, {}, [], None)
    assert rep["sample"]["python"]["scored"] == 4 and rep["sample"]["python"]["killed"] == 3
    assert rep["sample"]["python"]["population"] == 40
    md = report.markdown(rep, full=False)
    assert "This is a sample, not the full campaign" in md and "Wilson" in md


def test_report_has_a_row_per_c_file() -> None:
    """A report of several C files names them in the C label and gives each its row (counts, score,
    the sample's population and interval); a report of one C file has no file rows."""
    ms = ([Mutant(f"plane.c:{i}:skip_check:1", "c", PLANE_C, "feed", [i], f"-a{i}\n+b") for i in range(5)]
          + [Mutant(f"syncer.c:{i}:skip_check:1", "c", "nanomq/_c/src/syncer.c", "worker", [i], f"-c{i}\n+d")
             for i in range(3)])
    verdicts = ["killed", "killed", "killed", "survived", "killed", "killed", "timeout", "survived"]
    res = {f"{m.id}|{m.diff_key}": {"verdict": v} for m, v in zip(ms, verdicts, strict=True)}
    eq = equivalent.Entry(ms[3].id, ms[3].diff_key, "untestable", "a full disk")
    meta = {"selection": {"sample_c": 8, "sample_seed": 1}, "population": {"python": 0, "c": 80},
            "population_files": {PLANE_C: 60, "nanomq/_c/src/syncer.c": 20}}
    rep = report.build(meta, ms, res, {ms[3].id: eq}, [], None)
    f = rep["c_files"]
    assert list(f) == ["plane.c", "syncer.c"]
    assert f["plane.c"]["score"] == pytest.approx(1.0) and f["plane.c"]["score_untestable_as_survived"] == 0.8
    assert f["syncer.c"]["score"] == pytest.approx(2 / 3)
    assert f["plane.c"]["sample"]["population"] == 60 and f["syncer.c"]["sample"]["scored"] == 3
    assert f["syncer.c"]["sample"]["ci95"] == list(report.wilson(2, 3) or ())
    md = report.markdown(rep, full=False)
    assert "| C (plane.c, syncer.c) | 80 | 8 | 7 | 6 |" in md
    assert "| … C: plane.c | 60 | 5 | 4 | 4 | **100.0 %** |" in md and "| … C: syncer.c | 20 | 3 | 3 | 2 |" in md
    one = report.build(meta, ms[:5], res, {}, [], None)
    assert report.c_label(one) == "C (plane.c)" and "… C:" not in report.markdown(one, full=False)


# ------------------------------------------------------------------------------------------------
# the CI sample: real brokers, real kit


def test_ci_sample(tmp_path: Path) -> None:
    """Known-killable mutants are killed, the reference broker passes the same cases from the same
    trees, and MUTANT_UNDER_TEST=fail proves the kit runs the trampolined tree. <= 3 minutes."""
    out = tmp_path / "ci.json"
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "mutation", "ci", "--json", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["ok"] and res["checks"]
    assert all(c["ok"] for c in res["checks"])
    kinds = Counter(c["want"] for c in res["checks"])
    assert kinds["killed"] >= 4 and kinds["survived"] >= 2
    assert took < 180, f"the CI sample took {took:.0f} s (budget 180 s)"


def _journal(path: Path, *records: dict[str, object]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_run_again_replaces_a_verdict_of_the_same_campaign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A suspect kill is run again with --again: run_all runs a mutant the journal already has a
    verdict for under the same key, and the new record is the one read back."""
    m = Mutant("p", "python", "nanomq/x.py", "f", [3], "d")
    journal = tmp_path / "results.jsonl"
    _journal(journal, {"key": "K", "id": "p", "diff_key": m.diff_key, "verdict": "killed", "killed_by": "a"})
    ran: list[str] = []

    def run_one(job: runner.Job, workdir: Path) -> dict[str, object]:
        ran.append(job.mutant.id)
        return {"id": job.mutant.id, "kind": "python", "diff_key": job.mutant.diff_key, "cases": job.cases,
                "verdict": "survived", "duration_s": 1.0}

    monkeypatch.setattr(runner, "run_one", run_one)
    monkeypatch.setattr(runner.config, "scratch_root", lambda: tmp_path / "scratch")
    job = runner.Job(m, ["a"], 10.0)
    assert runner.run_all([job], journal, "K", workers=1)[f"p|{m.diff_key}"]["verdict"] == "killed"
    assert ran == []  # resumed: not run again
    assert runner.run_all([job], journal, "K", workers=1, again=True)[f"p|{m.diff_key}"]["verdict"] == "survived"
    assert ran == ["p"]
    assert runner.load_journal(journal, "K")[f"p|{m.diff_key}"]["verdict"] == "survived"


def test_carry_kills_takes_only_the_latest_verdict(tmp_path: Path) -> None:
    """An earlier campaign's kill is carried only if it is that mutant's latest verdict on these
    sources: a kill that a later run did not repeat (a suspect kill run again) stays behind."""
    from mutation.__main__ import carry_kills

    ms = [Mutant(i, "python", "nanomq/x.py", "f", [3], i) for i in ("a", "b", "c")]
    journal = tmp_path / "results.jsonl"
    base = {"source_hash": "S", "variant": ""}
    _journal(journal,
             {**base, "key": "old", "id": "a", "diff_key": ms[0].diff_key, "verdict": "killed", "killed_by": "x"},
             {**base, "key": "old", "id": "b", "diff_key": ms[1].diff_key, "verdict": "killed", "killed_by": "x"},
             {**base, "key": "old2", "id": "b", "diff_key": ms[1].diff_key, "verdict": "survived"},
             {**base, "key": "old", "id": "c", "diff_key": ms[2].diff_key, "verdict": "survived"},
             {**base, "key": "old2", "id": "c", "diff_key": ms[2].diff_key, "verdict": "error"},
             {**base, "key": "old", "id": "a", "diff_key": ms[0].diff_key, "verdict": "killed", "killed_by": "gone"})
    jobs = [runner.Job(m, ["x"], 10.0) for m in ms]
    # a: its latest kill is by a case the kit no longer has; b: its kill was not repeated; c: never killed
    assert carry_kills(journal, "new", jobs, "S", {"x"}) == 0
    _journal(journal,
             {**base, "key": "old2", "id": "b", "diff_key": ms[1].diff_key, "verdict": "survived"},
             {**base, "key": "old", "id": "b", "diff_key": ms[1].diff_key, "verdict": "killed", "killed_by": "x"},
             {**base, "key": "old", "id": "a", "diff_key": ms[0].diff_key, "verdict": "killed", "killed_by": "x"},
             {**base, "key": "old", "id": "a", "diff_key": ms[0].diff_key, "verdict": "error"})
    assert carry_kills(journal, "new", jobs, "S", {"x"}) == 2  # a (the error is no verdict) and b
    assert set(runner.load_journal(journal, "new")) == {f"a|{ms[0].diff_key}", f"b|{ms[1].diff_key}"}


def test_running_sees_a_campaign_holding_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`report` during a campaign leaves docs/mutation-report.md alone: it asks snapshot.running(),
    true exactly while another process holds the build directory's lock."""
    from mutation import snapshot

    monkeypatch.setattr(snapshot, "BUILD", tmp_path)
    assert not snapshot.running()  # no lock file yet
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               f"fd = os.open({str(tmp_path / '.lock')!r}, os.O_RDWR | os.O_CREAT); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert snapshot.running()
    finally:
        holder.kill()
        holder.wait()
    assert not snapshot.running()


def test_rerun_survivors_runs_earlier_survivors_and_timeouts_again() -> None:
    """After new kit cases, survivors and timeouts of the earlier kit run again (a timeout is not
    carried over, so without a rerun it would drop out of the new kit's results); kills (carried),
    mutants never run and those this kit already judged do not; recorded ones keep their verdict."""
    from mutation.__main__ import split_for_rerun

    ms = {n: Mutant(n, "c", "nanomq/_c/src/log.c", "f", [1], n) for n in "abcdefg"}
    jobs = [runner.Job(m, ["x"], 10.0) for m in ms.values()]
    k = {n: f"{n}|{m.diff_key}" for n, m in ms.items()}
    earlier = {k["a"]: "survived", k["b"]: "no-coverage", k["c"]: "timeout", k["d"]: "killed", k["f"]: "survived",
               k["g"]: "survived"}
    rerun, kept = split_for_rerun(jobs, earlier, {k["f"]: {"verdict": "killed"}}, {"g"})
    assert [j.mutant.id for j in rerun] == ["a", "b", "c"]
    assert [j.mutant.id for j in kept] == ["g"]


def test_journal_key_finds_a_rerun_made_only_of_carried_records(tmp_path: Path) -> None:
    """A --rerun-survivors under a new kit that runs nothing again journals only carried records,
    which keep the kit hash they were reached with: the report still finds them by the current key."""
    from mutation.__main__ import journal_key

    journal = tmp_path / "results.jsonl"
    snap = {"source_hash": "S", "kit_hash": "K2"}
    _journal(journal,
             {"key": "old", "source_hash": "S", "kit_hash": "K1", "id": "a", "verdict": "killed"},
             {"key": "new", "source_hash": "S", "kit_hash": "K1", "id": "a", "verdict": "killed", "carried_from": "K1"})
    assert journal_key(journal, snap, "", "new") == "new"
    assert journal_key(journal, snap, "", "other") == ""  # no record of this kit, and not the current key
    assert journal_key(journal, {"source_hash": "S", "kit_hash": "K1"}, "", "other") == "new"  # the latest of K1
