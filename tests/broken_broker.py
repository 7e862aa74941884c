"""Deliberately broken variants of the reference broker, to prove the conformance kit catches them.

``python -m tests.broken_broker --fault NAME <nanomq-broker flags>`` runs the reference broker
with one fault patched in:

* ``early-durable-ack``: acks ``durable`` at once and never syncs;
* ``drop``: leaves one record out of every 40th delivery (ids skip);
* ``duplicate``: sends one record twice in every 40th delivery;
* ``reorder``: swaps two records in every 40th delivery of two or more;
* ``ignore-seek``: answers SEEK_OK but keeps delivering from where it was;
* ``accept-bad-crc``: appends records without checking their CRC;
* ``no-deliver``: accepts subscriptions but never delivers a record;
* ``bad-rule``: cites rule IDs that do not exist in its ERROR frames (a SHOULD, [NMQ-8-5]).

The faults live in the Python data plane, so these brokers always run ``--data-plane python``.
"""

from __future__ import annotations

import sys

FAULTS = ("early-durable-ack", "drop", "duplicate", "reorder", "ignore-seek", "accept-bad-crc", "no-deliver", "bad-rule")


def _patch(fault: str) -> None:
    from nanomq.broker import connection, topics
    from nanomq.protocol import RecordBatch, SeekOk, records

    if fault == "early-durable-ack":
        topics.Topic.when_durable = lambda self, last_id, callback: callback(None)  # type: ignore[method-assign]
    elif fault in ("drop", "duplicate", "reorder"):
        original = connection.Connection._deliver
        state = {"n": 0}

        def mangled(self, sub_id, data, count):  # type: ignore[no-untyped-def]
            state["n"] += 1
            if state["n"] % 40 or (fault == "reorder" and count < 2) or (fault == "drop" and count < 2):
                return original(self, sub_id, data, count)
            batch = RecordBatch.parse(bytes(data), count, max_payload=1 << 30)
            spans = [bytes(batch.data[o : (batch.offsets + (len(batch.data),))[i + 1]])
                     for i, o in enumerate(batch.offsets)]
            if fault == "drop":
                spans = spans[:-1]
            elif fault == "duplicate":
                spans = spans + spans[-1:]
            else:
                spans[0], spans[1] = spans[1], spans[0]
            return original(self, sub_id, memoryview(b"".join(spans)), len(spans))

        connection.Connection._deliver = mangled  # type: ignore[method-assign]
    elif fault == "ignore-seek":
        def on_seek(self, f):  # type: ignore[no-untyped-def]
            sub = self._sub(f.sub_id)
            self._respond(SeekOk(f.request_id, self._resolve(sub.topic, f.start, f.value)))

        connection._HANDLERS[connection.Seek] = on_seek
    elif fault == "accept-bad-crc":
        parse = records.RecordBatch.parse.__func__  # type: ignore[attr-defined]

        def parse_no_crc(cls, data, count, *, max_payload=65536, check_crc=True, request_id=0):  # type: ignore[no-untyped-def]
            return parse(cls, data, count, max_payload=max_payload, check_crc=False, request_id=request_id)

        records.RecordBatch.parse = classmethod(parse_no_crc)  # type: ignore[method-assign,assignment]
    elif fault == "bad-rule":
        init = connection._Failure.__init__

        def bad_rule(self, code, message, rule="", fatal=False):  # type: ignore[no-untyped-def]
            init(self, code, message, f"XX{rule}XX" if rule else "", fatal)

        connection._Failure.__init__ = bad_rule  # type: ignore[method-assign]
    elif fault == "no-deliver":
        connection.Connection._deliver = lambda self, sub_id, data, count: None  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--fault":
        print(f"usage: python -m tests.broken_broker --fault {{{','.join(FAULTS)}}} [broker flags]", file=sys.stderr)
        return 2
    _patch(argv[1])
    from nanomq.cli.broker import main as broker_main

    # The faults are patched into the Python data plane (Connection._deliver, Topic, the codec);
    # the C plane would serve PUBLISH and DELIVER around them, so these brokers run the Python one.
    return broker_main([*argv[2:], "--data-plane", "python"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
