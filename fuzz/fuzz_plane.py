"""atheris target: the broker's C data plane (nanomq/_c/src/plane.c) against the sans-IO codec.

The plane may take only frames the codec decodes as a PUBLISH with ack none/written to a
registered topic, or a PING, and must answer them exactly as the broker's Python handlers do
(src/plane.h, invariant P1). Input: the byte stream a client sent; it is fed to the plane, the
bytes it consumed are decoded by the codec, and the two must agree on every frame, every answer
and every stored record. Any disagreement or exception is a finding.
"""

import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from nanomq._c.log import CLog
    from nanomq._c.plane import CAP_LZ4, STOP_DURABLE, STOP_FRAME, Plane
    from nanomq.protocol import (
        Ack,
        Decoder,
        Limits,
        Ping,
        Pong,
        ProtocolError,
        Publish,
        PublishAck,
        RecordBatch,
        encode,
    )

MAX_FRAME, MAX_PAYLOAD, MAX_BATCH = 1 << 20, 4096, 256
TOPICS = ("t", "orders")  # "orders": the topic of the golden vectors the corpus starts from
# One log for both names, kept across inputs (opening one per input would be most of the cost):
# each input's records are those appended from the log's next id at its start.
_LOG = CLog(tempfile.mkdtemp(prefix="nanomq-fuzz-plane-") + "/log", segment_bytes=64 << 20, sync_policy="never",
            interval_ms=10, retention_ms=None, retention_bytes=None, max_payload=MAX_PAYLOAD, topic_id=1,
            on_corrupt="quarantine", verify_all=False)
_PLANE = Plane(MAX_FRAME, MAX_PAYLOAD, MAX_BATCH, CAP_LZ4)
for _i, _t in enumerate(TOPICS):
    _PLANE.topic(_t, _LOG, _i)


def _stored(first: int) -> list[bytes]:
    out = []
    while True:
        view, n, start = _LOG.read(first, 256, 1 << 22)
        if not n:
            return out
        out += [x.payload for x in RecordBatch.parse(bytes(view), n, max_payload=MAX_PAYLOAD)]
        first = start + n


def TestOneInput(data: bytes) -> None:
    base = _LOG.stats().next_id
    r = _PLANE.feed(data, -1)
    dec = Decoder("server", max_frame=MAX_FRAME, limits=Limits(MAX_PAYLOAD, MAX_BATCH))
    dec.feed(data[: r.consumed])
    answers, records, next_id = [], [], base
    for i in range(r.frames):
        f = dec.next_frame()  # a ProtocolError here: the plane took a frame the codec rejects
        if isinstance(f, Ping):
            answers.append(encode(Pong(f.request_id, f.token)))
            continue
        assert isinstance(f, Publish) and f.topic in TOPICS, f
        if f.ack == Ack.DURABLE:  # taken last, its ack left for after a sync
            assert i == r.frames - 1 and r.stop == STOP_DURABLE, (i, r.frames, r.stop)
            assert r.durable == (f.request_id, next_id, f.records.count, TOPICS.index(f.topic)), r.durable
        if f.ack == Ack.WRITTEN:
            answers.append(encode(PublishAck(f.request_id, next_id, f.records.count)))
        next_id += f.records.count
        records += [x.payload for x in f.records]
    assert dec.buffered == 0 and dec.next_frame() is None
    assert r.unsent == b"".join(answers)
    assert _stored(base) == records
    if r.stop == STOP_FRAME:  # what it left is a frame the codec rejects, or one not its to take
        rest = Decoder("server", max_frame=MAX_FRAME, limits=Limits(MAX_PAYLOAD, MAX_BATCH))
        rest.feed(data[r.consumed :])
        try:
            f = rest.next_frame()
        except ProtocolError:
            return
        assert f is not None
        assert not isinstance(f, Ping), f
        # a PUBLISH to a known topic is the plane's unless its records carry a producer id
        # (NOT_SUPPORTED, answered by the codec's path)
        assert not (isinstance(f, Publish) and f.topic in TOPICS and not f.records.summary()[1]), f


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
