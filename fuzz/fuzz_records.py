"""atheris target: differential fuzzing of the C record scanner against the pure-Python one.

Both must agree on the verdict, the failing record index and every record offset; the C path is
what broker, clients and kit use, the Python one (nanomq.protocol._pyrecords) is its reference.
"""

import sys

import atheris

with atheris.instrument_imports():
    from nanomq._c._core import ffi, lib
    from nanomq.protocol import _pyrecords


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    count = data[0] % 8 + 1
    max_payload = (data[1] * 37) % 4096
    body = data[2:]
    offsets = ffi.new("uint32_t[]", count)
    err = ffi.new("uint32_t *")
    rc = lib.nmq_records_scan(body, len(body), count, max_payload, 1, offsets, err)
    py_rc, py_index, py_offsets = _pyrecords.scan(body, count, max_payload)
    assert rc == py_rc, (rc, py_rc)
    assert err[0] == py_index, (err[0], py_index)
    if rc == 0:
        assert list(ffi.unpack(offsets, count)) == py_offsets


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
