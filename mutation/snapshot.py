"""A frozen copy of the broker's sources, with its C modules built from those same sources.

Other engineers edit nanomq/ while a campaign runs, so every job works on one snapshot taken at
the start: build/mutation/snapshot/nanomq (Python sources plus the three cffi modules compiled
there, never in the source tree). Python mutants are generated from it, C mutants copy it, and
the coverage map is measured on it. Its hash keys every cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mutation.common import hash_files, source_files
from mutation.config import BUILD, ROOT

SNAPSHOT = BUILD / "snapshot"
KIT = BUILD / "kit"
"""The kit as it was at the start: conformance/ and spec/ copied, nanomq/ a link to the
snapshot's (unmutated) package. Every kit run of a campaign runs from here, so cases that other
engineers add meanwhile do not change a campaign half-way (the next one takes them)."""
_SOURCE_SUFFIXES = (".py", ".c", ".h", ".typed")
KEEP_KIT = False
"""Keep the kit copy there is (``run --kit keep``), e.g. for a second-chance run under the same
kit as the results it completes."""

SOURCES = os.environ.get("NMQ_MUTATION_SOURCES", "worktree")
"""Where a snapshot comes from: ``head`` (the committed tree, ``git archive HEAD``: what the
campaign uses, so the uncommitted, half-done work of other engineers in the checkout is never
tested), ``worktree`` (the files as they are: the CI sample, which tests your own edits) or
``snapshot`` (keep the broker snapshot there is, whatever has been committed since, and take
the kit of HEAD: to run the same mutants again under new kit cases).
``python -m mutation run|coverage --sources`` sets it."""


def _generated(p: Path) -> bool:
    """cffi's generated wrappers (nanomq/_c/_log.c ...), left by in-place builds."""
    return p.parent.name == "_c" and p.name.startswith("_") and p.suffix == ".c"


def source_hash(root: Path = ROOT) -> str:
    """Hash of everything the broker is built from under ``root/nanomq``."""
    return hash_files([p for p in source_files(root, "nanomq", _SOURCE_SUFFIXES) if not _generated(p)], root)


def _export(top: str, dst: Path) -> None:
    """``top`` (a directory of the repository) as committed in HEAD, extracted under ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    arch = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD", top], capture_output=True,
                          check=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(dst)], input=arch, check=True, timeout=120)


def _head_tree(top: str) -> str:
    """The git tree id of ``top`` in HEAD (changes exactly when a commit changes it)."""
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", f"HEAD:{top}"], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def kit_hash(root: Path = ROOT) -> str:
    """Hash of the conformance kit and the spec it reads (cases appear there while we work)."""
    files = source_files(root, "conformance", (".py",)) + [p for p in (root / "spec").rglob("*") if p.is_file()]
    return hash_files(files, root)


def take_kit(log=print) -> str:  # type: ignore[no-untyped-def]
    """Copy the kit (unless the copy is current); returns its hash."""
    if SOURCES in ("head", "snapshot"):
        with tempfile.TemporaryDirectory(prefix="nanomq-mutation-kit-") as t:
            _export("conformance", Path(t))
            _export("spec", Path(t))
            h = kit_hash(Path(t))
            if (KIT / "conformance").is_dir() and kit_hash(KIT) == h and (KIT / "nanomq").exists():
                return h
            log(f"snapshot: copying the kit (conformance/ and spec/ of HEAD, {h})")
            shutil.rmtree(KIT, ignore_errors=True)
            shutil.copytree(t, KIT)
    else:
        h = kit_hash()
        if (KIT / "conformance").is_dir() and kit_hash(KIT) == h and (KIT / "nanomq").exists():
            return h
        log(f"snapshot: copying the kit (conformance/ and spec/, {h})")
        shutil.rmtree(KIT, ignore_errors=True)
        KIT.mkdir(parents=True)
        shutil.copytree(ROOT / "conformance", KIT / "conformance",
                        ignore=shutil.ignore_patterns("__pycache__", "_spec"))
        shutil.copytree(ROOT / "spec", KIT / "spec")
    (KIT / "nanomq").symlink_to(Path("..") / "snapshot" / "nanomq")
    compile_tree(KIT / "conformance")
    return kit_hash(KIT)


def compile_tree(path: Path) -> None:
    """Write the .pyc files of ``path`` now. The environment here may say PYTHONDONTWRITEBYTECODE,
    and then every broker start would compile its modules again: for mutmut's trampolined files
    (megabytes) that is 1.2 s per start instead of 0.2 s, and a mutant's run starts dozens."""
    import compileall

    compileall.compile_dir(str(path), quiet=1, workers=1)


def _copy_sources(src: Path, dst: Path) -> None:
    def ignore(d: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith((".so", ".o", ".gcno", ".gcda", ".pyc"))}
        return skip | {n for n in names if _generated(Path(d) / n)}

    shutil.copytree(src, dst, ignore=ignore)


BUILD_MODULE = r"""
import runpy, sys
sys.path.insert(0, "nanomq/_c")
ffi = runpy.run_path(sys.argv[1])["ffibuilder"]
print(ffi.compile(tmpdir=".", verbose=False))
"""


def build_c_module(tree: Path, builder: str, *, cflags: str = "", ldflags: str = "",
                   timeout: float = 300) -> tuple[bool, str]:
    """Compile the cffi module of ``nanomq/_c/<builder>`` (e.g. ``build_log.py``) inside ``tree``
    (a directory holding a ``nanomq`` package), with the project's own builder and flags plus
    ``cflags`` (through its NANOMQ_CFLAGS hook). The module lands in ``tree/nanomq/_c`` as
    ``_<name>.cpython-*.so``; an ``.abi3.so`` of the same module there is removed, so exactly the
    fresh build is importable. Returns (ok, compiler output)."""
    env = dict(os.environ)
    env["NANOMQ_CFLAGS"] = (env.get("NANOMQ_CFLAGS", "") + " " + cflags).strip()
    if ldflags:
        env["LDFLAGS"] = (env.get("LDFLAGS", "") + " " + ldflags).strip()
    try:
        p = subprocess.run([sys.executable, "-c", BUILD_MODULE, f"nanomq/_c/{builder}"], cwd=tree, env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "build timed out"
    name = builder.removeprefix("build_").removesuffix(".py")
    if p.returncode == 0:
        for old in (tree / "nanomq" / "_c").glob(f"_{name}.abi3.so"):
            old.unlink()
    return p.returncode == 0, p.stdout + p.stderr


def take(force: bool = False, log=print) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Make (or reuse) the snapshot of the current working tree and kit; returns its manifest
    (``source_hash``, ``kit_hash``)."""
    m = _take_sources(force, log)
    if KEEP_KIT and (KIT / "conformance").is_dir():
        if not (KIT / "nanomq").exists():
            (KIT / "nanomq").symlink_to(Path("..") / "snapshot" / "nanomq")
        m["kit_hash"] = kit_hash(KIT)
    else:
        m["kit_hash"] = take_kit(log)
    return m


def _take_sources(force: bool, log) -> dict[str, str]:  # type: ignore[no-untyped-def]
    manifest = SNAPSHOT / "snapshot.json"
    if SOURCES == "snapshot":
        if not manifest.exists():
            raise RuntimeError("--sources snapshot: there is no snapshot to keep")
        return dict(json.loads(manifest.read_text()))
    head = SOURCES == "head"
    h = _head_tree("nanomq") if head else source_hash()
    if not force and manifest.exists():
        m = json.loads(manifest.read_text())
        if m.get("origin", m.get("source_hash")) == h and all((SNAPSHOT / "nanomq" / "_c").glob(f"_{x}.*.so")
                                                              for x in ("core", "log", "ring")):
            return dict(m)
    log(f"snapshot: copying nanomq/ ({'HEAD tree ' + h if head else 'working tree, sources ' + h}) "
        "and building its C modules")
    shutil.rmtree(SNAPSHOT, ignore_errors=True)
    SNAPSHOT.mkdir(parents=True)
    if head:
        _export("nanomq", SNAPSHOT)
    else:
        _copy_sources(ROOT / "nanomq", SNAPSHOT / "nanomq")
        if source_hash(SNAPSHOT) != h:  # an edit landed while we copied: try once more
            shutil.rmtree(SNAPSHOT / "nanomq")
            h = source_hash()
            _copy_sources(ROOT / "nanomq", SNAPSHOT / "nanomq")
    for builder in sorted((SNAPSHOT / "nanomq" / "_c").glob("build_*.py")):
        ok, out = build_c_module(SNAPSHOT, builder.name)
        if not ok:
            raise RuntimeError(f"snapshot: building {builder.name} failed:\n{out[-3000:]}")
    compile_tree(SNAPSHOT / "nanomq")
    m = {"source_hash": source_hash(SNAPSHOT), "taken": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "origin": h,
         "sources": "HEAD " + _head_commit() if head else "working tree"}
    (KIT / "nanomq").unlink(missing_ok=True)  # the kit's link to the old snapshot: taken again below
    if not head and m["source_hash"] != h:
        raise RuntimeError("snapshot: the sources changed while they were copied; run again")
    manifest.write_text(json.dumps(m, indent=1))
    return m


def _head_commit() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True, timeout=60).stdout.strip()


def current() -> dict[str, str]:
    """The manifest of the existing snapshot (commands that only read use it as it is)."""
    manifest = SNAPSHOT / "snapshot.json"
    if not manifest.exists() or not (KIT / "conformance").is_dir():
        raise RuntimeError("no snapshot yet: run `python -m mutation run` (or `coverage`) first")
    return dict(json.loads(manifest.read_text()), kit_hash=kit_hash(KIT))


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Hold the campaign lock of BUILD: one campaign (or coverage build) per build directory, so
    nothing replaces a snapshot under a running campaign."""
    BUILD.mkdir(parents=True, exist_ok=True)
    fd = os.open(BUILD / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another campaign is running in {BUILD} (see its .lock)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def running() -> bool:
    """Whether a campaign holds the lock of BUILD now (another process: this one holds no lock
    while it asks)."""
    try:
        fd = os.open(BUILD / ".lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor releases a lock it took
    return False


def copy_tree(dst: Path, src: Path = SNAPSHOT) -> Path:
    """A copy of the snapshot's ``nanomq`` package (with its built modules) under ``dst``."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    shutil.copytree(src / "nanomq", dst / "nanomq")  # with __pycache__: see compile_tree
    return dst
