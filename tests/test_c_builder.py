"""The cffi declarations are generated from the C headers (nanomq/_c/_builder.py), never copied."""

from __future__ import annotations

import re

import pytest

from nanomq._c import _core, _log, _ring
from nanomq._c._builder import SRC, cdef_of

MODULES = {"crc32c.h": _core, "record.h": _core, "log.h": _log, "ring.h": _ring}


def test_a_block_becomes_cdef_text() -> None:
    header = """
    #ifndef X_H
    #define X_H
    #include <stdint.h>
    #define HIDDEN 1  /* outside the block */
    /* cffi-begin: the API */
    #define ONE 1u          /* a constant */
    #define NEG (-3)
    // a line comment
    typedef struct x x;
    int x_open(const char *path, /* inline comment */ x **out);
    /* cffi-end */
    static inline int not_api(void) { return 0; }
    /* cffi-begin */
    void x_close(x *h);
    /* cffi-end */
    #endif
    """
    out = cdef_of(header)
    assert out.split("\n") == ["#define ONE ...", "#define NEG ...", "    typedef struct x x;",
                               "    int x_open(const char *path,   x **out);", "    void x_close(x *h);", ""]


@pytest.mark.parametrize("bad", ["#include <a.h>", "#define F(x) (x)", "#if 1", "static int s;"])
def test_what_cffi_cannot_take_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="in a cffi block"):
        cdef_of(f"/* cffi-begin */\n{bad}\n/* cffi-end */\n", "t.h")


def test_a_header_without_a_block_is_refused() -> None:
    with pytest.raises(ValueError, match="no /\\* cffi-begin"):
        cdef_of("int f(void);\n", "t.h")


@pytest.mark.parametrize("header", sorted(MODULES))
def test_every_name_a_header_declares_is_in_its_compiled_module(header: str) -> None:
    decl = cdef_of((SRC / header).read_text(), header)
    functions = re.findall(r"(\w+)\s*\(", re.sub(r"#define.*", "", decl))
    constants = re.findall(r"#define (\w+) \.\.\.", decl)
    assert functions and all(hasattr(MODULES[header].lib, n) for n in functions + constants)


def test_no_hand_copied_cdef_is_left() -> None:
    assert not (SRC.parent / "cdef").exists()
