"""atheris target: the frame decoder in both roles must raise nothing but ProtocolError.

Input: first byte picks the role and a chunk size, the rest is the byte stream, fed in chunks so
the incremental paths are exercised too. Any other exception (or a hang) is a finding.
"""

import sys

import atheris

with atheris.instrument_imports():
    from nanomq.protocol import Decoder, ProtocolError, encode


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    role = "server" if data[0] & 1 else "client"
    chunk = (data[0] >> 1) + 1
    d = Decoder(role, max_frame=1 << 20)
    stream = data[1:]
    for pos in range(0, len(stream), chunk):
        d.feed(stream[pos : pos + chunk])
        while True:
            try:
                frame = d.next_frame()
            except ProtocolError as e:
                if e.fatal:
                    return
                continue
            if frame is None:
                break
            # Whatever decodes must re-encode to a frame that decodes to the same value.
            again = Decoder(role, max_frame=1 << 20)
            again.feed(encode(frame))
            assert again.next_frame() == frame


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
