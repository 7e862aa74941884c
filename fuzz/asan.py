"""An AddressSanitizer + UndefinedBehaviorSanitizer build of ``nanomq._c._log`` for fuzz targets.

A target that calls :func:`load_log_module` before anything imports ``nanomq._c.log`` is run by
``run_all.py`` against this build: the module is compiled once into ``build/fuzz-asan/`` (again
when a C source or builder changes) and named to the fuzzer in the environment. A memory error or
undefined behaviour in the C code then aborts the fuzzer with the sanitizer's report, which
``run_all.py`` shows as a crash.

How the runtime is loaded: not with ``LD_PRELOAD`` of gcc's ``libasan.so``, the usual way for an
uninstrumented Python, because libasan then also provides the ``__sanitizer_cov_*`` symbols and
atheris's libFuzzer loses the Python coverage it fuzzes by (it says so: "Coverage symbols are
being provided by a library other than libFuzzer"); atheris's remedy, its clang-built
``asan_with_fuzzer.so``, needs clang. Instead the module is opened with ``RTLD_DEEPBIND``: its own
dependency, libasan, comes first for its symbols, so the log's malloc/free and memory functions
are ASan's (heap redzones, use-after-free), while the rest of the process keeps glibc's and
atheris keeps its coverage. ``verify_asan_link_order=0`` lets the runtime start that way. Memory
the log allocates is freed only by the log, so the two heaps never mix.

gcc has no libFuzzer coverage instrumentation (``-fsanitize=fuzzer-no-link`` is clang's), so the
C code gives the fuzzer no coverage feedback: the targets branch in Python on what it did.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "fuzz-asan"
ENV_MODULE = "NANOMQ_FUZZ_ASAN_LOG"
"""The environment variable naming the built module's file, set by run_all.py for the child."""
SANITIZE = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def _inputs() -> list[Path]:
    c = ROOT / "nanomq" / "_c"
    return sorted([*(c / "src").iterdir(), c / "build_log.py", c / "_builder.py", Path(__file__)])


def build() -> Path:
    """Compile the sanitized ``_log`` module if it is missing or older than its sources; its path.

    The C sources and builders are copied into build/fuzz-asan/ first: the builder names its
    sources relative to the working directory and cffi puts each object file beside that relative
    path, so a build from the tree would leave objects in nanomq/_c/src."""
    built = sorted(OUT.glob("nanomq/_c/_log*.so"))
    if built and built[0].stat().st_mtime >= max(p.stat().st_mtime for p in _inputs()):
        return built[0]
    shutil.rmtree(OUT, ignore_errors=True)
    work = OUT / "c"
    shutil.copytree(ROOT / "nanomq" / "_c" / "src", work / "src")
    for f in ("_builder.py", "build_log.py"):
        shutil.copy2(ROOT / "nanomq" / "_c" / f, work / f)
    code = "import sys; sys.path.insert(0, 'c'); from build_log import ffibuilder; ffibuilder.compile(tmpdir='.')"
    env = dict(os.environ, NANOMQ_CFLAGS=" ".join(SANITIZE), LDFLAGS=" ".join(SANITIZE[-2:]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=OUT, env=env, capture_output=True, text=True)
    built = sorted(OUT.glob("nanomq/_c/_log*.so"))
    if proc.returncode != 0 or not built:
        raise RuntimeError(f"building the ASan module failed:\n{proc.stdout}{proc.stderr}")
    return built[0]


def child_env(module: Path) -> dict[str, str]:
    """The environment of a fuzzer process that runs against ``module``."""
    return dict(
        os.environ,
        # no leak checking: the process exits through libFuzzer with Python's objects alive
        ASAN_OPTIONS="verify_asan_link_order=0:detect_leaks=0:abort_on_error=1:allocator_may_return_null=1",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        **{ENV_MODULE: str(module)},
    )


def load_log_module() -> bool:
    """Install the sanitized ``nanomq._c._log`` named by the environment (run_all.py sets it); the
    regular module stays when none is named. Call before importing ``nanomq._c.log``. Returns
    whether the sanitized module is in use."""
    path = os.environ.get(ENV_MODULE)
    if not path:
        return False
    if "nanomq._c.log" in sys.modules or "nanomq._c._log" in sys.modules:
        raise RuntimeError("load_log_module() must run before nanomq._c.log is imported")
    spec = importlib.util.spec_from_file_location("nanomq._c._log", path)
    assert spec is not None and spec.loader is not None
    flags = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_DEEPBIND)  # see the module's docstring
    try:
        mod: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.setdlopenflags(flags)
    sys.modules["nanomq._c._log"] = mod
    return True
