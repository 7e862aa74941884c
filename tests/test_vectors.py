"""The codec against the language-neutral golden vectors in spec/vectors/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanomq.protocol import Decoder, ErrorCode, ProtocolError, encode
from nanomq.protocol.jsonform import from_dict, to_dict

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors"
VALID = json.loads((VECTORS / "frames.json").read_text())["vectors"]
INVALID = json.loads((VECTORS / "invalid.json").read_text())["vectors"]


def _decoder(direction: str) -> Decoder:
    return Decoder("server" if direction == "client_to_server" else "client")


@pytest.mark.parametrize("vec", VALID, ids=[v["name"] for v in VALID])
def test_valid_vector_decodes_and_reencodes(vec: dict) -> None:
    raw = bytes.fromhex(vec["hex"])
    d = _decoder(vec["direction"])
    d.feed(raw)
    frame = d.next_frame()
    assert frame is not None
    assert to_dict(frame) == vec["frame"]
    assert encode(frame) == raw
    assert encode(from_dict(vec["frame"])) == raw
    assert d.next_frame() is None and d.buffered == 0


@pytest.mark.parametrize("vec", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_is_rejected(vec: dict) -> None:
    d = _decoder(vec["direction"])
    d.feed(bytes.fromhex(vec["hex"]))
    with pytest.raises(ProtocolError) as info:
        d.next_frame()
    err = info.value
    assert err.code == ErrorCode[vec["error"]["code"]]
    assert err.fatal is vec["error"]["fatal"]
    assert err.rule in vec["rules"]


def test_every_opcode_has_a_valid_vector() -> None:
    from nanomq.protocol import REQUESTS, RESPONSES

    types = {v["frame"]["type"] for v in VALID}
    assert types == {c.__name__ for c in (*REQUESTS.values(), *RESPONSES.values())}


def test_every_rule_the_decoder_raises_has_an_invalid_vector() -> None:
    """Each rule ID that appears in a ProtocolError raised by the codec has a vector."""
    import re

    src = "".join(p.read_text() for p in (Path(__file__).resolve().parents[1] / "nanomq" / "protocol").glob("*.py"))
    raised = set(re.findall(r'"(NMQ-[0-9.]+-[0-9]+)"', src))
    covered = {r for v in INVALID for r in v["rules"]}
    # Rules named in the codec only as documentation of valid behaviour are not error rules.
    missing = {r for r in raised - covered if r not in {"NMQ-3.1-1", "NMQ-4.1-1"}}
    assert not missing, f"error rules without an invalid vector: {sorted(missing)}"


WITH_RECORDS = [v for v in VALID + INVALID if bytes.fromhex(v["hex"][8:10]) in (b"\x02", b"\x85")]


@pytest.mark.parametrize("vec", WITH_RECORDS, ids=[v["name"] for v in WITH_RECORDS])
def test_python_reference_scanner_agrees_on_vectors(vec: dict) -> None:
    """The pure-Python record scanner gives the C scanner's verdict on every record-carrying vector."""
    import struct

    from nanomq._c._core import ffi, lib
    from nanomq.protocol import _pyrecords

    raw = bytes.fromhex(vec["hex"])
    if raw[4] == 0x02:
        count, body = struct.unpack_from("<H", raw, 20)[0], raw[24 + struct.unpack_from("<H", raw, 18)[0] :]
    else:
        count, body = struct.unpack_from("<H", raw, 20)[0], raw[24:]
    count = max(1, min(count, 256))
    offsets = ffi.new("uint32_t[]", count)
    err = ffi.new("uint32_t *")
    rc = lib.nmq_records_scan(body, len(body), count, 65536, 1, offsets, err)
    assert _pyrecords.scan(body, count, 65536)[:2] == (rc, err[0])
