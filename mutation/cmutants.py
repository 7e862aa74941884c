"""C mutants of the C files in scope (config.C_FILES: log.c, plane.c, syncer.c), from a small
operator set of our own.

Each file is tokenised (comments, string and character literals and preprocessor lines are never
touched) and every operator is applied at every place it fits inside a function body:

==============  ==========================================================================
operator        what it does
==============  ==========================================================================
cmp_negate      flip a comparison: ``==``/``!=`` swapped, ``<`` -> ``>=``, ``>`` -> ``<=``,
                ``<=`` -> ``>``, ``>=`` -> ``<``
cmp_boundary    off by one in a comparison: ``<`` <-> ``<=``, ``>`` <-> ``>=``
off_by_one      an integer literal added or subtracted (``x + 1``, ``n - 8``) one less and one more
drop_sync       a sync call (fdatasync, fsync and our wrappers, seg_sync, nmq_log_sync) replaced
                by ``0``: it "succeeds" without syncing
skip_check      an ``if`` condition replaced by ``0``: the validation, the early error return or
                the conditional step is skipped
logic_swap      ``&&`` <-> ``||``
==============  ==========================================================================

Exclusions (mutation/config.py, each with its reason): log.c's fault-injection machinery, and the
arguments of message-formatting calls. Each mutant is one change on one line; its id is
``<file>:<line>:<operator>:<n>`` (``plane.c:247:cmp_negate:2``; n counts that operator's mutants on
that line, left to right).

A mutant is built into a directory of its own: a copy of the snapshot's nanomq package whose
``_log`` module is compiled from the mutated file (and the other, unmutated sources of the module)
with the project's builder and flags. The source tree is never touched.
"""

from __future__ import annotations

import difflib
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from mutation import config
from mutation.common import Mutant
from mutation.snapshot import SNAPSHOT, build_c_module, copy_tree

OPERATORS = ("cmp_negate", "cmp_boundary", "off_by_one", "drop_sync", "skip_check", "logic_swap")

_NEGATE = {"==": "!=", "!=": "==", "<": ">=", ">": "<=", "<=": ">", ">=": "<"}
_BOUNDARY = {"<": "<=", "<=": "<", ">": ">=", ">=": ">"}
_LOGIC = {"&&": "||", "||": "&&"}
SYNC_CALLS = ("fdatasync", "fsync", "x_fdatasync", "x_fsync", "fsync_dir", "seg_sync", "nmq_log_sync")

_PUNCT = sorted(["...", "<<=", ">>=", "->", "++", "--", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||", "+=", "-=",
                 "*=", "/=", "%=", "&=", "|=", "^=", "##"], key=len, reverse=True)


@dataclass(frozen=True)
class Token:
    kind: str  # ident, number, punct, string, char
    text: str
    start: int  # offset in the source
    end: int
    line: int


def tokenize(src: str) -> list[Token]:
    """C tokens of ``src`` without comments and preprocessor lines."""
    out: list[Token] = []
    i, n, line = 0, len(src), 1
    at_line_start = True
    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
            at_line_start = True
            continue
        if c in " \t\r\f\v":
            i += 1
            continue
        if at_line_start and c == "#":  # a directive, with its continuation lines
            while i < n and src[i] != "\n":
                if src[i] == "\\" and i + 1 < n and src[i + 1] == "\n":
                    line += 1
                    i += 1
                i += 1
            continue
        at_line_start = False
        if src.startswith("//", i):
            while i < n and src[i] != "\n":
                i += 1
            continue
        if src.startswith("/*", i):
            j = src.index("*/", i + 2) + 2
            line += src.count("\n", i, j)
            i = j
            continue
        if c in "\"'":
            j = i + 1
            while src[j] != c:
                j += 2 if src[j] == "\\" else 1
            out.append(Token("string" if c == '"' else "char", src[i : j + 1], i, j + 1, line))
            i = j + 1
            continue
        if c.isalpha() or c == "_":
            m = re.compile(r"[A-Za-z_]\w*").match(src, i)
            assert m
            out.append(Token("ident", m.group(), i, m.end(), line))
            i = m.end()
            continue
        if c.isdigit() or (c == "." and i + 1 < n and src[i + 1].isdigit()):
            m = re.compile(r"(0[xX][0-9a-fA-F]+|\d+\.?\d*([eE][+-]?\d+)?)[uUlLfF]*").match(src, i)
            assert m
            out.append(Token("number", m.group(), i, m.end(), line))
            i = m.end()
            continue
        p = next((p for p in _PUNCT if src.startswith(p, i)), c)
        out.append(Token("punct", p, i, i + len(p), line))
        i += len(p)
    return out


def _match(tokens: list[Token], i: int, open_: str = "(", close: str = ")") -> int:
    """Index of the token closing the bracket opened at ``tokens[i]``."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j].text == open_:
            depth += 1
        elif tokens[j].text == close:
            depth -= 1
            if depth == 0:
                return j
    raise ValueError(f"unbalanced {open_} at line {tokens[i].line}")


def function_spans(tokens: list[Token]) -> list[tuple[str, int, int]]:
    """(name, first body token, closing brace token) of every function definition: a ``{`` at
    file level right after ``name(...)``."""
    spans = []
    depth = 0
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.text == "{":
            if depth == 0 and i > 0 and tokens[i - 1].text == ")":
                j = i - 1
                d = 0
                while j >= 0:  # back to the "(" of the parameter list
                    if tokens[j].text == ")":
                        d += 1
                    elif tokens[j].text == "(":
                        d -= 1
                        if d == 0:
                            break
                    j -= 1
                if j > 0 and tokens[j - 1].kind == "ident":
                    end = _match(tokens, i, "{", "}")
                    spans.append((tokens[j - 1].text, i, end))
                    i = end + 1
                    continue
            depth += 1
        elif t.text == "}":
            depth -= 1
        i += 1
    return spans


@dataclass(frozen=True)
class Edit:
    operator: str
    start: int
    end: int
    replacement: str
    line: int
    last_line: int
    function: str
    description: str


def _excluded_ranges(tokens: list[Token], lo: int, hi: int) -> list[tuple[int, int]]:
    """Token index ranges inside the argument lists of the calls config.C_EXCLUDED_CALLS names."""
    out = []
    for i in range(lo, hi):
        t = tokens[i]
        if t.kind == "ident" and t.text in config.C_EXCLUDED_CALLS and tokens[i + 1].text == "(":
            out.append((i, _match(tokens, i + 1)))
    return out


def edits(src: str, path: str = config.C_FILES[0]) -> list[Edit]:
    """Every mutation the operators make in ``src`` (the text of ``path``, whose excluded functions
    are left alone), in source order."""
    tokens = tokenize(src)
    lines = src.splitlines()
    excluded = config.C_EXCLUDED_FUNCTIONS.get(path, {})
    out: list[Edit] = []
    for func, lo, hi in function_spans(tokens):
        if func not in excluded:
            out += _function_edits(src, tokens, lines, func, lo, hi)
    out.sort(key=lambda e: (e.start, OPERATORS.index(e.operator)))
    return out


def _function_edits(src: str, tokens: list[Token], lines: list[str], func: str, lo: int, hi: int) -> list[Edit]:
    out: list[Edit] = []
    skip = _excluded_ranges(tokens, lo, hi)

    def allowed(i: int, j: int | None = None) -> bool:
        j = i if j is None else j
        if any(a <= i <= b or a <= j <= b for a, b in skip):
            return False
        return not any(rx.search(lines[ln - 1]) for ln in range(tokens[i].line, tokens[j].line + 1)
                       for rx, _ in config.C_EXCLUDED_LINES)

    def add(op: str, i: int, j: int, repl: str, what: str) -> None:
        t0, t1 = tokens[i], tokens[j]
        out.append(Edit(op, t0.start, t1.end, repl, t0.line, t1.line, func, what))

    for i in range(lo + 1, hi):
        t = tokens[i]
        if not allowed(i):
            continue
        if t.kind == "punct" and t.text in _NEGATE:
            add("cmp_negate", i, i, _NEGATE[t.text], f"'{t.text}' -> '{_NEGATE[t.text]}'")
        if t.kind == "punct" and t.text in _BOUNDARY:
            add("cmp_boundary", i, i, _BOUNDARY[t.text], f"'{t.text}' -> '{_BOUNDARY[t.text]}'")
        if t.kind == "punct" and t.text in _LOGIC:
            add("logic_swap", i, i, _LOGIC[t.text], f"'{t.text}' -> '{_LOGIC[t.text]}'")
        if (t.kind == "number" and tokens[i - 1].text in ("+", "-") and _is_binary(tokens, i - 1)
                and re.fullmatch(r"\d+[uUlL]*", t.text)):
            digits = re.match(r"\d+", t.text).group()  # type: ignore[union-attr]
            suffix, sign = t.text[len(digits):], tokens[i - 1].text
            for nv in (int(digits) - 1, int(digits) + 1):
                if nv >= 0:
                    add("off_by_one", i, i, f"{nv}{suffix}", f"'{sign} {t.text}' -> '{sign} {nv}{suffix}'")
        if t.kind == "ident" and t.text in SYNC_CALLS and tokens[i + 1].text == "(":
            j = _match(tokens, i + 1)
            if allowed(i, j):
                add("drop_sync", i, j, "0", f"{t.text}(...) -> 0")
        if t.kind == "ident" and t.text == "if" and tokens[i + 1].text == "(":
            j = _match(tokens, i + 1)
            if allowed(i, j) and j > i + 2:
                short = " ".join(src[tokens[i + 2].start : tokens[j - 1].end].split())
                short = short if len(short) <= 60 else short[:57] + "..."
                out.append(Edit("skip_check", tokens[i + 2].start, tokens[j - 1].end, "0", tokens[i + 2].line,
                                tokens[j - 1].line, func, f"if ({short}) -> if (0)"))
    return out


def _is_binary(tokens: list[Token], k: int) -> bool:
    """Whether the +/- at ``tokens[k]`` is a binary operator (its left side is an operand)."""
    prev = tokens[k - 1]
    if prev.kind == "ident":
        return prev.text not in _KEYWORDS
    return prev.kind in ("number", "char") or prev.text in (")", "]")


_KEYWORDS = {"return", "case", "else", "do", "if", "while", "for", "switch", "goto", "sizeof"}


def apply(src: str, e: Edit) -> str:
    """``src`` with the one change ``e``."""
    return src[: e.start] + e.replacement + src[e.end :]


def unified_diff(src: str, mutated: str, path: str = config.C_FILES[0]) -> str:
    """The unified diff of one mutant (three lines of context), named by ``path``."""
    return "\n".join(difflib.unified_diff(src.splitlines(), mutated.splitlines(), f"a/{path}", f"b/{path}",
                                          lineterm="", n=3))


def generate(src: str, path: str = config.C_FILES[0]) -> list[tuple[Mutant, str]]:
    """(mutant, mutated source) for every edit of ``src``, the text of ``path``; ids
    ``<file name>:<line>:<operator>:<n>``."""
    out = []
    seen: dict[tuple[int, str], int] = {}
    name = config.c_name(path)
    for e in edits(src, path):
        k = seen.get((e.line, e.operator), 0) + 1
        seen[(e.line, e.operator)] = k
        mutated = apply(src, e)
        m = Mutant(id=f"{name}:{e.line}:{e.operator}:{k}", kind="c", file=path, function=e.function,
                   lines=list(range(e.line, e.last_line + 1)), diff=unified_diff(src, mutated, path),
                   operator=e.operator, description=e.description)
        out.append((m, mutated))
    return out


def load(root: Path = SNAPSHOT, files: tuple[str, ...] = config.C_FILES) -> list[tuple[Mutant, str]]:
    """(mutant, mutated source) of every C file in scope under ``root``, file by file."""
    out: list[tuple[Mutant, str]] = []
    for path in files:
        out += generate((root / path).read_text(), path)
    return out


# ------------------------------------------------------------------------------------------------
# building


def build(mutated_src: str, dest: Path, path: str) -> tuple[bool, str]:
    """A broker tree at ``dest`` whose _log module is compiled with ``mutated_src`` as the source
    file ``path`` (one of config.C_FILES: they are all in _log)."""
    if path not in config.C_FILES:
        raise ValueError(f"{path} is not a C file in scope (config.C_FILES)")
    copy_tree(dest)
    (dest / path).write_text(mutated_src)
    for old in (dest / "nanomq" / "_c").glob("_log.*.so"):
        old.unlink()
    ok, out = build_c_module(dest, "build_log.py")
    if ok and not list((dest / "nanomq" / "_c").glob("_log.*.so")):
        return False, out + "\n(no _log module was produced)"
    return ok, out


def remove(dest: Path) -> None:
    """Remove a mutant's build tree."""
    shutil.rmtree(dest, ignore_errors=True)


def launch(tree: Path, variant: str = "") -> str:
    """The kit's --launch for a C mutant: the reference broker started from its own tree."""
    t = shlex.quote(str(tree))
    # -C: `python -m` puts the working directory first on sys.path, and the kit's is the checkout
    return f"env -C {t} PYTHONPATH={t} {{python}} -m nanomq.cli.broker " + config.broker_args(variant)
