"""The C core, reached through cffi API-mode extension modules.

Each compiled module (``_core``, ``_ring``, ``_log``) exposes only ``ffi`` and ``lib``; the thin
Python modules beside this file validate arguments, own C handles and turn C error codes into
exceptions. Nothing outside ``nanomq._c`` and the codec imports a compiled module directly.
"""

from __future__ import annotations

from typing import Any

__all__ = ["realize_all"]


def realize_all(ffi: Any, lib: Any, *ctypes: str) -> tuple[Any, ...]:
    """Realize every function of ``lib`` and the given C types now, in the importing thread.

    cffi 2.x realizes C types lazily, and on GIL builds of CPython two threads that realize the
    same type at the same moment can corrupt its table and abort the process (seen here: an
    assertion in realize_c_type.c; python-cffi/cffi#271). Importing happens in one thread under
    the import lock, so doing all of it at import makes later calls from any thread safe.
    Returns the ``ffi.typeof`` objects of ``ctypes``, to be used instead of type strings.
    """
    for name in dir(lib):
        getattr(lib, name)
    return tuple(ffi.typeof(t) for t in ctypes)
