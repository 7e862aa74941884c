"""Layer (a): the golden vectors of spec/vectors/, sent to the target as they are.

Every client→server invalid vector must be answered with its error code, and the connection must
be closed exactly when the vector says the error is fatal (else a PING after it still gets its
PONG). Valid request vectors must be accepted.
"""

from __future__ import annotations

import json

from conformance.helpers import check_error_text
from conformance.registry import Context, Failed, Skipped, Unimplemented, case, check, soft_check
from conformance.rules import spec_file
from conformance.wire import Closed
from nanomq.protocol import (
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_PAYLOAD,
    Ack,
    Capability,
    Error,
    ErrorCode,
    HelloOk,
    MetadataOk,
    Ping,
    Pong,
    ProtocolError,
    PublishAck,
)

_VECTORS = spec_file("vectors")
_INVALID = [v for v in json.loads((_VECTORS / "invalid.json").read_text())["vectors"]
            if v["direction"] == "client_to_server"]
_VALID = [v for v in json.loads((_VECTORS / "frames.json").read_text())["vectors"]
          if v["direction"] == "client_to_server" and v["frame"]["type"] in ("Hello", "Publish", "Metadata", "Ping")]

# Vectors built on the default limits only mean the same thing to a target that uses them.
_NEEDS_DEFAULT_LIMITS = {"size-over-max-frame": "max_frame", "publish-payload-over-max": "max_payload",
                         "publish-raw-size-over-max": "max_payload"}
_CAPABILITY_OF = {"publish-raw-size-over-max": Capability.COMPRESSION_LZ4, "publish-lz4": Capability.COMPRESSION_LZ4,
                  "publish-idempotent": Capability.IDEMPOTENT}


def _invalid_case(vec: dict) -> None:
    code = ErrorCode[vec["error"]["code"]]
    fatal = vec["error"]["fatal"]
    raw = bytes.fromhex(vec["hex"])
    rules = tuple(vec["rules"]) + (("NMQ-3.1-6", "NMQ-8-2") if fatal else ("NMQ-3.1-6", "NMQ-8-1")) + ("NMQ-8-5", "NMQ-8-6")

    @case(f"vectors.invalid.{vec['name']}", f"invalid vector {vec['name']} is answered {code.name}"
          + (" and the connection closed" if fatal else ", the connection goes on"), layer="vectors", rules=rules)
    def run(ctx: Context) -> None:
        with ctx.client() as w:
            assert w.server is not None
            limit = _NEEDS_DEFAULT_LIMITS.get(vec["name"])
            if limit == "max_frame" and w.server.max_frame != DEFAULT_MAX_FRAME:
                raise Skipped("target's max_frame differs from the default the vector assumes")
            if limit == "max_payload" and w.server.max_payload != DEFAULT_MAX_PAYLOAD:
                raise Skipped("target's max_payload differs from the default the vector assumes")
            w.send_raw(raw)
            try:
                f = w.recv_response()
            except (Closed, ConnectionResetError):
                raise Failed(f"connection closed without an ERROR {code.name}", ("NMQ-8-1",)) from None
            cap = _CAPABILITY_OF.get(vec["name"])
            if (cap is not None and not ctx.has(cap) and isinstance(f, Error)
                    and f.code == ErrorCode.NOT_SUPPORTED):
                raise Unimplemented(f"capability {cap.name} not announced")
            check(isinstance(f, Error), f"expected ERROR {code.name}, got {type(f).__name__}", *vec["rules"])
            assert isinstance(f, Error)
            check(f.code == code, f"expected ERROR {code.name}, got {f.error_code!r} ({f.message})", *vec["rules"])
            check_error_text(f)
            soft_check(not f.rule or f.rule in vec["rules"], f"ERROR {code.name} cites rule {f.rule!r}; the vector "
                       f"breaks {', '.join(vec['rules'])}", "NMQ-8-5")
            if fatal:
                try:
                    w.expect_closed(5.0)
                except TimeoutError:
                    raise Failed("connection not closed after a fatal error", ("NMQ-3.1-6", "NMQ-8-2")) from None
            else:
                w.send(Ping(4242, 7))
                try:
                    pong = w.recv_response(5.0)
                except (Closed, TimeoutError, ProtocolError) as e:
                    raise Failed(f"connection unusable after a non-fatal error: {e}", ("NMQ-3.1-6", "NMQ-8-2")) from None
                check(pong == Pong(4242, 7), f"expected PONG after the error, got {pong!r}", "NMQ-3.1-6")


def _valid_case(vec: dict) -> None:
    kind = vec["frame"]["type"]
    expect = {"Hello": HelloOk, "Publish": PublishAck, "Metadata": MetadataOk, "Ping": Pong}[kind]
    raw = bytes.fromhex(vec["hex"])

    @case(f"vectors.valid.{vec['name']}", f"valid vector {vec['name']} is answered {expect.__name__}",
          layer="vectors", rules=tuple(vec["rules"]) + ("NMQ-3.2-3",))
    def run(ctx: Context) -> None:
        w = ctx.target.raw_client() if kind == "Hello" else ctx.client()
        with w:
            if kind == "Metadata" and vec["frame"].get("topic"):
                # the vector names a fixed topic: make sure it exists (cases run in any order)
                f = w.publish(vec["frame"]["topic"], [b"vector"], Ack.WRITTEN)
                check(isinstance(f, PublishAck), f"PUBLISH to {vec['frame']['topic']} answered {f!r}", "NMQ-4.2-1")
            w.send_raw(raw)
            if vec["frame"].get("ack") == "NONE":
                w.send(Ping(777, 1))
                f = w.recv_response()
                check(f == Pong(777, 1), f"ack-none PUBLISH must get no answer; got {f!r}", "NMQ-4.2-3")
                return
            f = w.recv_response()
            cap = _CAPABILITY_OF.get(vec["name"])
            if cap is not None and not ctx.has(cap):
                check(isinstance(f, Error) and f.code == ErrorCode.NOT_SUPPORTED,
                      f"without {cap.name} the answer must be NOT_SUPPORTED, got {f!r}", "NMQ-7-1")
                raise Unimplemented(f"capability {cap.name} not announced (NOT_SUPPORTED answered correctly)",
                                    ("NMQ-7-1",))
            check(isinstance(f, expect), f"expected {expect.__name__}, got {f!r}", *vec["rules"])
            check(f.request_id == vec["frame"]["request_id"], "response request_id differs", "NMQ-3.2-3")


for _v in _INVALID:
    _invalid_case(_v)
for _v in _VALID:
    _valid_case(_v)
