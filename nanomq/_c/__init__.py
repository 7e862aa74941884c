"""The C core, reached through cffi API-mode extension modules.

Each compiled module (``_core``, and later ``_ring`` and ``_log``) exposes only ``ffi`` and ``lib``;
the thin Python modules beside this file validate arguments, own C handles and turn C error codes
into exceptions. Nothing outside ``nanomq._c`` imports a compiled module directly.
"""
