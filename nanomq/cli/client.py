"""``nanomq-cli``: publish, subscribe, list and describe topics from the shell; ``admin`` talks to the
broker's admin HTTP API (:mod:`nanomq.cli.admin`).

The connection options (``--broker``, ``--timeout``, ``--tls-ca``) are accepted anywhere on the
line, before or after the command. Exit status: 0 ok, 1 a runtime failure (the broker
unreachable, a request refused, an I/O error), 2 bad input (arguments, or a record the broker's
limits refuse), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import ssl
import sys
import time
from pathlib import Path
from typing import TypedDict

from nanomq import __version__
from nanomq.cli import admin
from nanomq.client import ArgumentTypeError, InvalidArgumentError, Message, NanoMQError, Publisher, Subscriber
from nanomq.client.args import parse_address
from nanomq.protocol import TopicInfo, record_span, valid_topic

DEFAULT_BROKER = "127.0.0.1:9000"
DEFAULT_TIMEOUT = 10.0


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


def _connection_options(*, defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, anywhere on the line: on the top parser with their
    defaults, on each command's parser with none (SUPPRESS), so that one given after the command
    overrides one given before it, and an absent one overrides nothing."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection (before or after the command)")
    g.add_argument("--broker", default=default(DEFAULT_BROKER), type=_broker,
                   help=f"host:port of the broker (default {DEFAULT_BROKER}; port 1..65535); tls://host:port for TLS")
    g.add_argument("--tls-ca", default=default(None), metavar="PEM",
                   help="connect with TLS, trusting this CA (or self-signed) certificate")
    g.add_argument("--token", default=default(None), metavar="TOKEN",
                   help="authenticate with this token (NAME:SECRET; default $NANOMQ_TOKEN). It is visible to other "
                   "users of this machine in the process list: prefer --token-file or $NANOMQ_TOKEN")
    g.add_argument("--token-file", default=default(None), metavar="FILE",
                   help="authenticate with the token in FILE (its first line; '-' reads stdin)")
    g.add_argument("--tls-cert", default=default(None), metavar="PEM",
                   help="present this client certificate (PEM; with its key unless --tls-key) to a broker with "
                   "--tls-client-ca; needs --tls-ca or a tls:// --broker")
    g.add_argument("--tls-key", default=default(None), metavar="PEM", help="the private key of --tls-cert")
    g.add_argument("--timeout", type=_seconds, default=default(DEFAULT_TIMEOUT),
                   help=f"seconds to wait for the broker, a finite number > 0 (default {DEFAULT_TIMEOUT:g})")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nanomq-cli``."""
    common = _connection_options(defaults=False)
    ap = argparse.ArgumentParser(
        prog="nanomq-cli", description="Talk to a NanoMQ broker.", parents=[_connection_options(defaults=True)],
        epilog="Exit status: 0 ok, 1 a runtime failure (broker unreachable, a request refused, an I/O error), "
        "2 bad input (arguments, or a record larger than the broker's max_payload), 130 interrupted.")
    ap.add_argument("--version", action="version", version=f"nanomq-cli {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("publish", parents=[common], help="publish --message, or one record per line of standard input")
    p.add_argument("--topic", required=True, type=_topic)
    p.add_argument("--message", help="the record (its bytes as given); without it, each stdin line is a record. "
                   "A record larger than the broker's max_payload is refused (exit 2)")
    p.add_argument("--ack", choices=["none", "written", "durable"], default="durable",
                   help="acknowledgement mode (default durable: fsynced)")

    s = sub.add_parser("subscribe", parents=[common], help="print records of a topic as they arrive")
    s.add_argument("--topic", required=True, type=_topic)
    s.add_argument("--from", dest="start", type=_start, default=("earliest", 0), metavar="POS",
                   help="earliest (default), latest, id:N (1 .. 2^64-1), time:NS (ns since the epoch), "
                   "time:-SECONDS (that long ago)")
    s.add_argument("--count", type=_count, default=0,
                   help="exit after this many records, >= 0 (default 0: run until Ctrl-C)")
    s.add_argument("--idle-timeout", type=_seconds_or_zero, default=0.0,
                   help="exit when no record arrives for this many seconds, finite >= 0 (default 0: wait forever)")
    s.add_argument("--format", choices=["text", "json", "raw"], default="text",
                   help="text: the payload as UTF-8, one line each; json: one object per line; raw: exactly the "
                   "payload bytes, nothing added (no separator)")

    t = sub.add_parser("topics", parents=[common], help="list topics with their id ranges (--describe: more)")
    t.add_argument("--topic", type=_topic, help="only this topic")
    t.add_argument("--describe", action="store_true",
                   help="per topic: records, first and last id and time (read from the first and last record), "
                   "bytes and segments where they can be had over the wire (see --scan)")
    t.add_argument("--scan", action="store_true",
                   help="with --describe: read every retained record to count the bytes they take in the log "
                   "(64-byte headers and payloads as stored); costs a full read of each topic")
    admin.add_parser(sub, [common])
    return ap


def _print(msg: Message, fmt: str) -> None:
    if fmt == "raw":
        sys.stdout.buffer.write(msg.data)
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


_NA = "n/a"
NOT_OVER_THE_WIRE = ("segments=n/a: protocol v1 does not say how a topic's log is cut into segments; "
                     "bytes=n/a unless --scan (METADATA gives ids only, --scan reads every record)")


def _time(ns: int) -> str:
    """ns since the epoch -> ISO 8601 UTC with every digit: 2025-01-02T03:04:05.123456789Z"""
    s, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{frac:09d}Z"


def _read_at(sub: Subscriber, topic: str, record_id: int, timeout: float) -> Message | None:
    """The record ``record_id`` of ``topic`` (or the first after it, if retention took it)."""
    sub.subscribe(topic, start="id", value=record_id)
    try:
        return sub.poll(timeout=timeout)
    finally:
        sub.unsubscribe(topic)


def _scan_bytes(sub: Subscriber, t: TopicInfo, timeout: float) -> int | None:
    """Bytes the records first_id .. next_id-1 of ``t`` take in the log: each record is its 64-byte
    header and its stored payload, padded to 8 (storage.md [NMQ-S3-2]). None if the read stalls."""
    total, last = 0, t.next_id - 1
    sub.subscribe(t.name, start="id", value=t.first_id)
    try:
        while True:
            got = sub.poll_batch(256, timeout=timeout)
            if not got:
                return None
            for m in got:
                if m.id > last:
                    return total
                total += record_span(m.header.size)
            if got[-1].id >= last:
                return total
    finally:
        sub.unsubscribe(t.name)


class _Connection(TypedDict):
    timeout: float
    connect_timeout: float
    ssl_context: ssl.SSLContext | None
    token: str | None


def _describe(address: str, conn: _Connection, topics: list[TopicInfo], scan: bool) -> None:
    timeout = conn["timeout"]
    with contextlib.ExitStack() as stack:
        one = stack.enter_context(Subscriber(address, window=1, **conn))  # reads one record at a time
        many = stack.enter_context(Subscriber(address, **conn)) if scan else None
        for t in topics:
            first = last = None
            if t.next_id > t.first_id:
                first = _read_at(one, t.name, t.first_id, timeout)
                last = _read_at(one, t.name, t.next_id - 1, timeout)
            nbytes: int | None = None
            if many is not None:
                nbytes = _scan_bytes(many, t, timeout) if t.next_id > t.first_id else 0
            print("\t".join([
                t.name, f"id={t.topic_id}", f"records={t.next_id - t.first_id}",
                f"first_id={first.id if first else '-'}", f"last_id={last.id if last else '-'}",
                f"first_time={_time(first.timestamp) if first else '-'}",
                f"last_time={_time(last.timestamp) if last else '-'}",
                f"bytes={_NA if nbytes is None else nbytes}", f"segments={_NA}"]))
    print(f"nanomq-cli: {NOT_OVER_THE_WIRE}", file=sys.stderr)


def _run(args: argparse.Namespace, tls: ssl.SSLContext | None, token: str | None) -> None:
    conn = _Connection(timeout=args.timeout, connect_timeout=args.timeout, ssl_context=tls, token=token)
    if args.command == "admin":
        admin.run(args, token if token is not None else os.environ.get("NANOMQ_TOKEN"))
    elif args.command == "publish":
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
            topics = c.topics(args.topic or "")
        if args.describe:
            _describe(args.broker, conn, topics, args.scan)
        else:
            for t in topics:
                print(f"{t.name}\tid={t.topic_id}\trecords={t.next_id - t.first_id}\tfirst={t.first_id}\tnext={t.next_id}")


def _token(ap: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The token of --token or --token-file (None: the client's default, ``$NANOMQ_TOKEN``)."""
    if args.token is not None and args.token_file is not None:
        ap.error("give --token or --token-file, not both")
    if args.token_file is None:
        return args.token  # type: ignore[no-any-return]
    try:
        text = sys.stdin.readline() if args.token_file == "-" else Path(args.token_file).read_text()
    except (OSError, UnicodeDecodeError) as e:
        ap.error(f"cannot read --token-file {args.token_file}: {e}")
    lines = text.splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        ap.error(f"--token-file {args.token_file} is empty")
    return token


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nanomq-cli``; exit 0 ok, 1 runtime failure, 2 bad input, 130 interrupted."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command == "topics" and args.scan and not args.describe:
        ap.error("--scan goes with --describe")
    if args.command == "admin":
        admin.check_args(ap, args)
    tls: ssl.SSLContext | None = None
    if args.tls_ca:
        try:
            tls = ssl.create_default_context(cafile=args.tls_ca)
        except (OSError, ssl.SSLError) as e:
            ap.error(f"cannot load --tls-ca {args.tls_ca}: {e}")
    if args.tls_key and not args.tls_cert:
        ap.error("--tls-key needs --tls-cert")
    if args.tls_cert:
        if tls is None and not args.broker.startswith("tls://"):
            ap.error("--tls-cert needs TLS: --tls-ca PEM or a tls://host:port --broker")
        tls = tls if tls is not None else ssl.create_default_context()
        try:
            tls.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as e:
            ap.error(f"cannot load --tls-cert {args.tls_cert}: {e}")
    token = _token(ap, args)
    try:
        _run(args, tls, token)
    except KeyboardInterrupt:
        return 130
    except (_BadInput, InvalidArgumentError, ArgumentTypeError) as e:  # input the broker's limits refuse
        print(f"nanomq-cli: {e}", file=sys.stderr)
        return 2
    except (NanoMQError, admin.AdminError) as e:  # ConnectionLostError, ServerError, RequestTimeoutError; admin API
        print(f"nanomq-cli: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (| head): not a failure of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as e:  # reading stdin, writing stdout
        print(f"nanomq-cli: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
