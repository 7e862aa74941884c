"""``nanomq-cli``: publish, subscribe and list topics from the shell."""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time

from nanomq import __version__
from nanomq.client import ConnectionLostError, NanoMQError, Publisher, Subscriber
from nanomq.client.message import Message
from nanomq.protocol import valid_topic


def _topic(text: str) -> str:
    if not valid_topic(text):
        raise argparse.ArgumentTypeError(f"invalid topic {text!r}: 1-255 characters of A-Z a-z 0-9 . _ -")
    return text


def _start(text: str) -> tuple[str, int]:
    """``earliest`` | ``latest`` | ``id:N`` | ``time:NS`` (ns since the epoch) | ``time:-SECONDS``."""
    if text in ("earliest", "latest"):
        return text, 0
    kind, _, value = text.partition(":")
    try:
        if kind == "id" and int(value) >= 1:
            return "id", int(value)
        if kind == "time":
            v = float(value)
            # a negative value is "that many seconds ago"
            return "timestamp", int(time.time_ns() + v * 1e9) if v < 0 else int(v)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"bad --from {text!r}: earliest, latest, id:N, time:NS or time:-SECONDS")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nanomq-cli``."""
    ap = argparse.ArgumentParser(prog="nanomq-cli", description="Talk to a NanoMQ broker.")
    ap.add_argument("--broker", default="127.0.0.1:9000",
                    help="host:port of the broker (default 127.0.0.1:9000); tls://host:port for TLS")
    ap.add_argument("--tls-ca", metavar="PEM", help="connect with TLS, trusting this CA (or self-signed) certificate")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker (default 10)")
    ap.add_argument("--version", action="version", version=f"nanomq-cli {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("publish", help="publish --message, or one record per line of standard input")
    p.add_argument("--topic", required=True, type=_topic)
    p.add_argument("--message", help="the record (UTF-8); without it, each stdin line is a record")
    p.add_argument("--ack", choices=["none", "written", "durable"], default="durable",
                   help="acknowledgement mode (default durable: fsynced)")

    s = sub.add_parser("subscribe", help="print records of a topic as they arrive")
    s.add_argument("--topic", required=True, type=_topic)
    s.add_argument("--from", dest="start", type=_start, default=("earliest", 0), metavar="POS",
                   help="earliest (default), latest, id:N, time:NS, time:-SECONDS")
    s.add_argument("--count", type=int, default=0, help="exit after this many records (default: run until Ctrl-C)")
    s.add_argument("--idle-timeout", type=float, default=0.0,
                   help="exit when no record arrives for this many seconds (default: wait forever)")
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nanomq-cli``; exit 0 ok, 1 broker problem, 2 bad arguments."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command == "subscribe" and (args.count < 0 or args.idle_timeout < 0):
        ap.error("--count and --idle-timeout must be >= 0")
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
                if args.message is not None:
                    msg_id = pub.publish(args.topic, args.message.encode())
                    print(msg_id if msg_id else "sent")
                else:
                    n = 0
                    batch: list[bytes] = []
                    for line in sys.stdin.buffer:
                        batch.append(line.rstrip(b"\r\n"))
                        if len(batch) == 256:
                            n += pub.publish_batch(args.topic, batch)
                            batch = []
                    if batch:
                        n += pub.publish_batch(args.topic, batch)
                    print(f"published {n} record(s)", file=sys.stderr)
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
    except ConnectionLostError as e:
        print(f"nanomq-cli: {e}", file=sys.stderr)
        return 1
    except NanoMQError as e:
        print(f"nanomq-cli: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
