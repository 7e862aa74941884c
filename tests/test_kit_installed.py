"""The kit as an implementer gets it: a wheel installed into a fresh venv outside the repo, its
console script on PATH, the reference broker launched as a bare command, every layer run. Also:
the spec texts come through one accessor, and the lint env has what mypy needs."""

from __future__ import annotations

import ast
import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from conformance.registry import LAYERS
from conformance.rules import load_rules, spec_file, spec_root

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = "nanomq-broker --port {port} --data-dir {data_dir} --log-level warning --log-segment-size 8MB"


def _source_tree(dest: Path) -> None:
    """The files a clean checkout has (tracked, plus new files not ignored), without the build
    products of the working tree, so the wheel is built as from a clone."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
            ".git", ".venv", ".tox", "build", "dist", "*.egg-info", "__pycache__", "*.so", "reports", "data"))
        return
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    assert p.returncode == 0 or kw.get("check") is False, f"{cmd} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_every_layer() -> None:
    work = Path(tempfile.mkdtemp(prefix="nanomq-installed-"))
    assert not work.is_relative_to(ROOT)
    try:
        src, dist, venv, cwd = work / "src", work / "dist", work / "venv", work / "elsewhere"
        for d in (src, dist, cwd):
            d.mkdir()
        _source_tree(src)
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)], cwd=work,
             timeout=600)
        wheels = list(dist.glob("nanomq-*.whl"))
        assert len(wheels) == 1, wheels
        shutil.rmtree(src)
        _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
        py = venv / "bin" / "python"
        _run([str(py), "-m", "pip", "install", "-q", str(wheels[0])], timeout=600)

        # the installed package is what runs: nothing of the repo on the path, its venv off PATH
        path = os.pathsep.join([str(venv / "bin"), *(p for p in os.environ.get("PATH", os.defpath).split(os.pathsep)
                                                    if p and not Path(p).resolve().is_relative_to(ROOT))])
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env["PATH"] = path
        assert shutil.which("nanomq-broker", path=path) == str(venv / "bin" / "nanomq-broker")
        where = _run([str(py), "-c", "import conformance.rules as r; print(r.__file__); print(r.spec_root())"],
                     cwd=cwd, env=env).stdout.split()
        assert all(Path(p).is_relative_to(venv) for p in where), where

        listed = _run(["nanomq-conformance", "--list"], cwd=cwd, env=env, timeout=120).stdout
        assert "vectors.invalid." in listed and "rules -> cases:" in listed

        (cwd / "t.toml").write_text(f'[target]\nlaunch = "{LAUNCH}"\nstorage_format = "nanomq-v1"\n')
        p = _run(["nanomq-conformance", "--target", "t.toml", "--report-dir", "report", "--seed", "4242"],
                 cwd=cwd, env=env, timeout=420, check=False)
        assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
        index = json.loads((cwd / "report" / "index.json").read_text())
        assert index["layers"] == list(LAYERS)
        assert index["target"]["launch"] == LAUNCH
        ran = {c["layer"] for c in index["cases"]}
        assert {"vectors", "wire", "history", "crash", "budgets"} <= ran, ran
        assert index["summary"]["MUST"]["failed"] == []
        assert {r["source"] for r in index["rules"].values()} >= {"protocol.md", "semantics.md", "storage.md"}
        for name in ("index.json", "junit.xml", "index.html", "target.log"):
            assert (cwd / "report" / name).stat().st_size > 0, name
        assert not list(Path(tempfile.gettempdir()).glob(f"nanomq-conformance-*/data/topics/cf-*-{4242:x}-*")), \
            "the kit left a working directory behind"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_spec_texts_come_from_the_source_tree_in_a_checkout() -> None:
    """In a checkout (editable install) the accessor reads spec/ itself: edits count at once."""
    assert Path(str(spec_root())).resolve() == ROOT / "spec"
    assert spec_file("vectors/invalid.json").read_text() == (ROOT / "spec" / "vectors" / "invalid.json").read_text()
    rules = load_rules()
    assert {r.source for r in rules.values()} == {"protocol.md", "semantics.md", "storage.md", "admin.md"}


def test_spec_files_open_only_through_the_accessor() -> None:
    """No kit module builds a path to spec/ of its own (that is what broke the installed kit)."""
    for path in (ROOT / "conformance").glob("*.py"):
        text = path.read_text()
        assert "SPEC_DIR" not in text, path.name
        assert "parents[1] / \"spec\"" not in text or path.name == "rules.py", path.name


def test_the_wheel_declares_every_spec_file() -> None:
    """package data of conformance._spec covers every file the kit opens (the wheel test proves it
    for real; this catches a new spec file in a second)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    declared = {f"{f}" for f in data["conformance._spec"]} | {f"vectors/{f}" for f in data["conformance._spec.vectors"]}
    for name in ("protocol.md", "semantics.md", "storage.md", "budgets.toml"):
        assert name in declared
    assert "vectors/*.json" in declared


def _third_party_imports(paths: list[Path]) -> set[str]:
    mods: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m not in ("nanomq", "conformance", "tests")}


def test_lint_env_installs_what_mypy_imports() -> None:
    """``tox -e lint`` runs mypy over what pyproject's [tool.mypy] names: every third-party module
    those files import must be installed by the env's extras (or be ignore_missing_imports)."""
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mypy = py["tool"]["mypy"]
    ignored = {m.split(".")[0] for o in mypy.get("overrides", []) if o.get("ignore_missing_imports")
               for m in o["module"]}
    files = [p for f in mypy["files"] for p in ((ROOT / f).rglob("*.py") if (ROOT / f).is_dir() else [ROOT / f])
             if "/_c/build_" not in str(p)]
    needed = _third_party_imports(files) - ignored
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    extras = [e.strip() for e in tox["testenv:lint"]["extras"].replace(",", "\n").split() if e.strip()]
    reqs = list(py["project"]["dependencies"]) + [r for e in extras for r in py["project"]["optional-dependencies"][e]]
    def norm(name: str) -> str:  # PEP 503: prometheus-client and prometheus_client are one distribution
        return re.sub(r"[-_.]+", "-", name).lower()

    names = {norm(r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("~")[0].strip())
             for r in reqs}
    dist_of = packages_distributions()
    for mod in sorted(needed):
        provided_by = {norm(d) for d in dist_of.get(mod, [mod])}
        assert provided_by & names, f"mypy needs {mod} ({provided_by}); tox -e lint installs {sorted(names)}"
