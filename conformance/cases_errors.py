"""Layer (b), error paths the other cases leave untried: body-length errors of HELLO on an active
connection, and ERROR frames that must carry their request's id.

Each case is built to fail when its rule alone is broken. They came out of mutation testing
(docs/mutation.md): broken brokers the rest of the kit passed.
"""

from __future__ import annotations

import struct

from conformance.helpers import alive, expect_error, is_error, raw_frame, responses
from conformance.registry import Context, case, check
from nanomq.protocol import ErrorCode

_HELLO_OP = 0x01


def _hello_body(version: int, name: bytes, token: bytes, *, nlen: int | None = None, tlen: int | None = None) -> bytes:
    """A HELLO body whose length fields may disagree with what follows them."""
    return struct.pack("<HHHH", version, len(name) if nlen is None else nlen,
                       len(token) if tlen is None else tlen, 0) + name + token


@case("errors.hello-body-length", "on an active connection, HELLOs whose name or token length overruns or "
      "underruns the body are MALFORMED, answered with their own request_id, and the connection goes on",
      layer="wire", rules=("NMQ-3.1-2", "NMQ-3.1-6", "NMQ-8-1", "NMQ-8-2"))
def hello_body_length(ctx: Context) -> None:
    bad = [
        ("name length overruns the body", _hello_body(1, b"abc", b"", nlen=9)),
        ("token length overruns the body", _hello_body(1, b"abc", b"tk", tlen=7)),
        ("body longer than its fields say", _hello_body(1, b"abc", b"") + b"\x00\x00"),
        ("body shorter than its fixed part", struct.pack("<HHH", 1, 0, 0)),
    ]
    with ctx.client() as w:
        rids = [0x4E11_0000 + k for k in range(len(bad))]
        w.send_raw(b"".join(raw_frame(_HELLO_OP, rid, body) for rid, (_, body) in zip(rids, bad, strict=True)))
        got = responses(w, len(bad))
        for (label, _), rid, f in zip(bad, rids, got, strict=True):
            with ctx.step("NMQ-3.1-2", "NMQ-3.1-6", "NMQ-8-1"):
                check(is_error(f, ErrorCode.MALFORMED), f"HELLO with its {label}: expected ERROR MALFORMED, got {f!r}")
                expect_error(f, ErrorCode.MALFORMED, request_id=rid)
        with ctx.step("NMQ-3.1-6", "NMQ-8-2"):
            alive(w)
