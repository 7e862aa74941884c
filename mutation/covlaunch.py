"""Run the reference broker under coverage.py, for the coverage map (never for a mutant).

Usage (the kit's --launch; PYTHONPATH names the coverage tree)::

    python mutation/covlaunch.py <broker flags>

Environment: NMQ_MUTATION_COV_DIR, where the coverage data file of this process goes. The
tree's _log module is a gcov build whose counters land under GCOV_PREFIX. SIGUSR1 writes both
now (coverage.py data and gcov counters) and answers by touching ``<dir>/flushed.<pid>``:
mutation/covkill.py sends it before the SIGKILL of a crash case, whose lines would otherwise be
lost with the process.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys
from pathlib import Path


def main() -> None:
    # this script's directory (mutation/) must not shadow anything the broker imports
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    out = Path(os.environ["NMQ_MUTATION_COV_DIR"])
    import coverage

    tree = next(p for p in sys.path if (Path(p) / "nanomq" / "__init__.py").exists())
    cov = coverage.Coverage(data_file=str(out / ".coverage"), data_suffix=True, branch=False,
                            source=[str(Path(tree) / "nanomq")], config_file=False)
    cov.start()
    gcov_flush = None

    def flush(*_: object) -> None:
        nonlocal gcov_flush
        cov.save()
        if gcov_flush is None:
            import nanomq._c._log as m

            gcov_flush = ctypes.CDLL(m.__file__).nmq_mutation_gcov_flush
        gcov_flush()
        (out / f"flushed.{os.getpid()}").write_text(str(os.times().elapsed))

    signal.signal(signal.SIGUSR1, flush)
    sys.argv = ["nanomq-broker", *sys.argv[1:]]
    try:
        runpy.run_module("nanomq.cli.broker", run_name="__main__", alter_sys=True)
    finally:
        cov.stop()
        cov.save()


if __name__ == "__main__":
    main()
