"""CRC-32C: published check values, both C paths against a pure-Python reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanomq._c import crc

# Published check values: RFC 3720 (iSCSI) appendix B.4 and the CRC catalogue's "check" value.
VECTORS = [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


def crc32c_reference(data: bytes, value: int = 0) -> int:
    """Bit-at-a-time CRC-32C, the slowest and most obviously correct form."""
    c = value ^ 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
    return c ^ 0xFFFFFFFF


PATHS = [crc.crc32c, crc.crc32c_sw] + ([crc.crc32c_hw] if crc.HAVE_HW else [])


@pytest.mark.parametrize("fn", PATHS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(("data", "expected"), VECTORS)
def test_check_values(fn, data: bytes, expected: int) -> None:
    assert fn(data) == expected
    assert crc32c_reference(data) == expected


@settings(max_examples=300)
@given(st.binary(max_size=2048), st.integers(0, 64))
def test_paths_agree_with_reference(data: bytes, cut: int) -> None:
    expected = crc32c_reference(data)
    for fn in PATHS:
        assert fn(data) == expected
        # Chaining over any split, including unaligned starts, gives the same value.
        k = min(cut, len(data))
        assert fn(data[k:], fn(data[:k])) == expected


def test_accepts_any_buffer() -> None:
    data = bytearray(b"123456789")
    assert crc.crc32c(data) == crc.crc32c(memoryview(data)) == 0xE3069283
    assert crc.crc32c(memoryview(b"xx123456789")[2:]) == 0xE3069283


def test_select_paths() -> None:
    before = crc.active_path()
    try:
        assert crc.select("sw") == "sw"
        assert crc.crc32c(b"123456789") == 0xE3069283
        assert crc.select("hw") == ("hw" if crc.HAVE_HW else "sw")
        assert crc.crc32c(b"123456789") == 0xE3069283
        with pytest.raises(ValueError):
            crc.select("fast")  # type: ignore[arg-type]
    finally:
        crc.select("auto")
    assert crc.active_path() == before


@pytest.mark.skipif(crc.HAVE_HW, reason="only meaningful on a CPU without SSE4.2")
def test_hw_refused_without_sse42() -> None:
    with pytest.raises(RuntimeError):
        crc.crc32c_hw(b"x")
