"""``nanomq-cli``: publish, subscribe and list topics from the shell."""

from __future__ import annotations

import argparse
import json
import math
import os
import ssl
import sys
import time

from nanomq import __version__
from nanomq.client import NanoMQError, Publisher, Subscriber
from nanomq.client.args import parse_address
from nanomq.client.message import Message
from nanomq.protocol import valid_topic


def _topic(text: str) -> str:
    if not valid_topic(text):
        raise argparse.ArgumentTypeError(f"invalid topic {text!r}: 1-255 characters of A-Z a-z 0-9 . _ -")
    return text


_U64 = (1 << 64) - 1


def _broker(text: str) -> str:
    """``host:port``, ``tcp://host:port`` or ``tls://host:port``, checked here (port 1..65535)."""
    try:
        parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _finite(text: str, *, positive: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number of seconds "
                                         + ("> 0" if positive else ">= 0"))
    return v


def _seconds(text: str) -> float:
    return _finite(text, positive=True)


def _seconds_or_zero(text: str) -> float:
    return _finite(text, positive=False)


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 0")
    return v


def _start(text: str) -> tuple[str, int]:
    """``earliest`` | ``latest`` | ``id:N`` (1 .. 2**64-1) | ``time:NS`` (ns since the epoch) |
    ``time:-SECONDS`` (that long ago; before the epoch means from the earliest record)."""
    if text in ("earliest", "latest"):
        return text, 0
    kind, _, value = text.partition(":")
    why = "earliest, latest, id:N, time:NS or time:-SECONDS"
    if kind == "id":
        try:
            n = int(value)
        except ValueError:
            n = 0
        if 1 <= n <= _U64:
            return "id", n
        why = f"the id must be a whole number 1 .. {_U64}"
    elif kind == "time":
        try:
            v = float(value)
        except ValueError:
            v = math.nan
        if math.isfinite(v):
            # a negative value is "that many seconds ago"
            ns = int(time.time_ns() + v * 1e9) if v < 0 else int(v)
            if ns <= _U64:
                return "timestamp", max(0, ns)
            why = f"time:NS is at most {_U64} ns since the epoch"
        else:
            why = "the time must be a finite number (ns since the epoch, or -SECONDS ago)"
    raise argparse.ArgumentTypeError(f"bad --from {text!r}: {why}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nanomq-cli``."""
    ap = argparse.ArgumentParser(
        prog="nanomq-cli", description="Talk to a NanoMQ broker.",
        epilog="Exit status: 0 ok, 1 broker unreachable or a request refused, 2 bad input (arguments, or a "
        "record larger than the broker's max_payload), 130 interrupted.")
    ap.add_argument("--broker", default="127.0.0.1:9000", type=_broker,
                    help="host:port of the broker (default 127.0.0.1:9000; port 1..65535); tls://host:port for TLS")
    ap.add_argument("--tls-ca", metavar="PEM", help="connect with TLS, trusting this CA (or self-signed) certificate")
    ap.add_argument("--timeout", type=_seconds, default=10.0,
                    help="seconds to wait for the broker, a finite number > 0 (default 10)")
    ap.add_argument("--version", action="version", version=f"nanomq-cli {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("publish", help="publish --message, or one record per line of standard input")
    p.add_argument("--topic", required=True, type=_topic)
    p.add_argument("--message", help="the record (its bytes as given); without it, each stdin line is a record. "
                   "A record larger than the broker's max_payload is refused (exit 2)")
    p.add_argument("--ack", choices=["none", "written", "durable"], default="durable",
                   help="acknowledgement mode (default durable: fsynced)")

    s = sub.add_parser("subscribe", help="print records of a topic as they arrive")
    s.add_argument("--topic", required=True, type=_topic)
    s.add_argument("--from", dest="start", type=_start, default=("earliest", 0), metavar="POS",
                   help="earliest (default), latest, id:N (1 .. 2^64-1), time:NS (ns since the epoch), "
                   "time:-SECONDS (that long ago)")
    s.add_argument("--count", type=_count, default=0,
                   help="exit after this many records, >= 0 (default 0: run until Ctrl-C)")
    s.add_argument("--idle-timeout", type=_seconds_or_zero, default=0.0,
                   help="exit when no record arrives for this many seconds, finite >= 0 (default 0: wait forever)")
    s.add_argument("--format", choices=["text", "json", "raw"], default="text",
                   help="text: the payload as UTF-8; json: one object per record; raw: payload bytes only")

    sub.add_parser("topics", help="list topics with their id ranges")
    return ap


def _print(msg: Message, fmt: str) -> None:
    if fmt == "raw":
        sys.stdout.buffer.write(msg.data + b"\n")
    elif fmt == "json":
        try:
            text, enc = msg.data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, enc = msg.data.hex(), "hex"
        print(json.dumps({"topic": msg.topic, "id": msg.id, "timestamp_ns": msg.timestamp, "data": text,
                          "encoding": enc}))
    else:
        print(msg.data.decode("utf-8", "replace"))
    sys.stdout.flush()


class _BadInput(Exception):
    """Input the broker's limits refuse (exit 2, like a bad argument)."""


def _publish(pub: Publisher, args: argparse.Namespace) -> None:
    limit = pub.server_info.max_payload
    if args.message is not None:
        data = os.fsencode(args.message)  # the bytes given, even when they are not UTF-8
        if len(data) > limit:
            raise _BadInput(f"--message is {len(data)} bytes, over the broker's max_payload of {limit} bytes")
        msg_id = pub.publish(args.topic, data)
        print(msg_id if msg_id else "sent")
        return
    n = 0
    batch: list[bytes] = []
    for lineno, line in enumerate(sys.stdin.buffer, start=1):
        record = line.rstrip(b"\r\n")
        if len(record) > limit:
            if batch:  # everything before the bad line goes in, nothing after it
                n += pub.publish_batch(args.topic, batch)
            raise _BadInput(f"standard input line {lineno} is {len(record)} bytes, over the broker's max_payload "
                            f"of {limit} bytes; published the {n} record(s) before it, nothing after")
        batch.append(record)
        if len(batch) == 256:
            n += pub.publish_batch(args.topic, batch)
            batch = []
    if batch:
        n += pub.publish_batch(args.topic, batch)
    print(f"published {n} record(s)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nanomq-cli``; exit 0 ok, 1 broker problem, 2 bad input, 130 interrupted."""
    ap = build_parser()
    args = ap.parse_args(argv)
    tls: ssl.SSLContext | None = None
    if args.tls_ca:
        try:
            tls = ssl.create_default_context(cafile=args.tls_ca)
        except (OSError, ssl.SSLError) as e:
            ap.error(f"cannot load --tls-ca {args.tls_ca}: {e}")
    conn = {"connect_timeout": args.timeout, "timeout": args.timeout, "ssl_context": tls}
    try:
        if args.command == "publish":
            with Publisher(args.broker, ack=args.ack, **conn) as pub:
                _publish(pub, args)
        elif args.command == "subscribe":
            with Subscriber(args.broker, **conn) as s:
                start, value = args.start
                s.subscribe(args.topic, start=start, value=value)
                seen, last = 0, time.monotonic()
                while not args.count or seen < args.count:
                    for msg in s.poll_batch(args.count - seen if args.count else 256, 200_000):
                        _print(msg, args.format)
                        seen += 1
                        last = time.monotonic()
                    if args.idle_timeout and time.monotonic() - last > args.idle_timeout:
                        break
        else:
            with Publisher(args.broker, **conn) as c:
                for t in c.topics():
                    print(f"{t.name}\tid={t.topic_id}\trecords={t.next_id - t.first_id}\tfirst={t.first_id}\tnext={t.next_id}")
    except KeyboardInterrupt:
        return 130
    except _BadInput as e:
        print(f"nanomq-cli: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # the client library refusing an argument (e.g. a payload it cannot send)
        print(f"nanomq-cli: {e}", file=sys.stderr)
        return 2
    except NanoMQError as e:  # ConnectionLostError, ServerError, RequestTimeoutError
        print(f"nanomq-cli: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
