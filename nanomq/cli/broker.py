"""``nanomq-broker``: run the reference broker.

Every flag is checked before anything starts (:func:`check_args`): a value that cannot work exits
2 with one line naming the flag, never a traceback and never a broker that starts and then fails
its first request. Exit 1 is for what only shows when starting (the port in use, the data
directory locked by another broker, a storage error).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import resource
import ssl
import sys
from pathlib import Path

from nanomq import __version__
from nanomq.broker import BrokerConfig, BrokerLockedError, default_data_dir, run
from nanomq.broker.auth import AuthConfigError, hash_token, load_principals, make_token
from nanomq.broker.tls import TlsConfigError, load_server_context
from nanomq.cli.sizes import format_size, parse_size
from nanomq.protocol import DEFAULT_MAX_FRAME, MAX_BATCH, RECORD_HEADER_SIZE
from nanomq.storage import StorageError

_log = logging.getLogger("nanomq.broker")

_FD_MARGIN = 64
"""Descriptors kept for everything but connections (listener, logs, lock file) in the ulimit check."""


def _number(text: str) -> float:
    """A finite decimal number (nan and inf are refused here, ranges by BrokerConfig.validate)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the flags)."""
    ap = argparse.ArgumentParser(
        prog="nanomq-broker",
        description="Run a NanoMQ broker: topics stored in a crash-safe write-ahead log, served over "
        "NanoMQ wire protocol v1. Stop it with Ctrl-C or SIGTERM (it syncs and marks the log clean). "
        "Every flag is checked at start: a value that cannot work exits 2 with a message.",
        epilog="Subcommand: 'nanomq-broker hash-token NAME' makes a token and the --auth-file entry for "
        "principal NAME (see nanomq-broker hash-token --help). "
        "SIZE: a number of bytes with an optional binary suffix, e.g. 65536, 64KiB, 100MB, 1GiB "
        "(K/M/G/T are powers of 1024). Exit status: 0 clean stop, 1 could not start (port in use, data "
        "directory locked, storage error), 2 bad flags.",
    )
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1); must resolve on this machine")
    ap.add_argument("--port", type=int, default=9000, help="TCP port 0..65535 (default 9000; 0 picks a free one)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help=f"where topics are stored (default $NANOMQ_DATA_DIR or {default_data_dir()}); "
                    "created if missing, must be a writable directory")
    ap.add_argument("--log-segment-size", type=parse_size, default=100 * 1024 * 1024, metavar="SIZE",
                    help="roll to a new log segment at this size (default 100MB; 1MB .. 1TB, and room for "
                    "one record of --max-payload). Each topic preallocates one segment of this size on disk: "
                    "N topics take at least N x SIZE (make run uses 8MB)")
    ap.add_argument("--retention-days", type=_number, default=None, metavar="DAYS",
                    help="delete whole segments whose newest record is older than this (a positive number, "
                    "fractions allowed, at least 1 ms; default: keep everything)")
    ap.add_argument("--retention-bytes", type=parse_size, default=None, metavar="SIZE",
                    help="keep at most about this much log per topic, oldest segments first (default: no limit)")
    ap.add_argument("--retention-check-interval", type=_number, default=None, metavar="S",
                    help="how often retention runs, in seconds (default 60; 0.01 .. 86400; only with "
                    "--retention-days or --retention-bytes)")
    ap.add_argument("--compression", choices=["lz4", "none"], default="lz4",
                    help="lz4 (default): accept and store LZ4-compressed records; none: refuse them")
    ap.add_argument("--fsync", choices=["always", "interval", "never"], default="always",
                    help="background sync policy. Durable acks (the default ack mode) always wait for a "
                    "sync; 'always' also syncs a topic in the background every 8 MiB written, 'interval' "
                    "every --fsync-interval-ms as well, 'never' only at rotation/shutdown")
    ap.add_argument("--fsync-interval-ms", type=int, default=None, metavar="MS",
                    help="for --fsync interval only: 1 .. 60000 (default 10)")
    ap.add_argument("--max-connections", type=int, default=None,
                    help="connection limit, 1 .. 1000000 (default 1024); the process's open-file limit "
                    "is raised to fit if it can be, else the value is refused")
    ap.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                    help="event loop: auto (default) is uvloop when installed, else asyncio's")
    ap.add_argument("--busy-poll", type=int, default=0, metavar="US",
                    help="spin up to US microseconds polling for events before each blocking wait (lowest "
                    "latency, a core kept busy while it spins; uses asyncio's loop); default 0: block at once")
    ap.add_argument("--data-plane", choices=["c", "python"], default="c",
                    help="c (default): publishes (appended in C whatever the ack mode; a durable ack is sent "
                    "after the group commit's sync), pings and deliveries take the C fast path; python: every "
                    "frame through the Python handlers (for comparison)")
    ap.add_argument("--max-subscriptions", type=int, default=1024, metavar="N",
                    help="subscriptions one connection may hold at once, at least 1 (default 1024); a SUBSCRIBE "
                    "beyond it is answered RESOURCE_LIMIT")
    ap.add_argument("--max-topics", type=int, default=10_000, metavar="N",
                    help="topics the broker holds at most, 1 .. 1000000 (default 10000); creating one more is "
                    "answered RESOURCE_LIMIT. Each topic preallocates one --log-segment-size on disk")
    ap.add_argument("--topic-create-rate", type=_number, default=100.0, metavar="N",
                    help="topics created per second at most, on average, broker-wide (default 100; 0 = no "
                    "limit, up to 100000); a SUBSCRIBE or PUBLISH that would create one more is answered "
                    "RESOURCE_LIMIT and may be retried later")
    ap.add_argument("--topic-create-burst", type=int, default=1000, metavar="N",
                    help="topics that may be created at once before --topic-create-rate applies, 1 .. 1000000 "
                    "(default 1000)")
    ap.add_argument("--max-commit-gaps", type=int, default=4096, metavar="N",
                    help="per connection, the runs of ids committed out of order (past a gap) its "
                    "subscriptions keep, 1 .. 1048576 (default 4096); a COMMIT that would leave more is "
                    "answered RESOURCE_LIMIT")
    ap.add_argument("--max-frame-buffer", type=parse_size, default=64 * 1024 * 1024, metavar="SIZE",
                    help="memory for large frames still arriving, all connections together (default 64MiB, "
                    "at least 1MiB): a frame over 64 KiB is read once its whole size fits, its connection "
                    "waits unread until then; one frame is always let in")
    ap.add_argument("--max-payload", type=parse_size, default=65536, metavar="SIZE",
                    help="largest record payload accepted, 1B .. 16MiB (default 64KiB)")
    ap.add_argument("--handshake-timeout", type=_number, default=10.0, metavar="S",
                    help="close connections that send no HELLO (or finish no TLS handshake) within this many "
                    "seconds (default 10; 0.01 .. 86400)")
    ap.add_argument("--frame-timeout", type=_number, default=30.0, metavar="S",
                    help="close connections that take longer than this to send one frame (default 30; "
                    "0.01 .. 86400)")
    ap.add_argument("--idle-timeout", type=_number, default=600.0, metavar="S",
                    help="close connections that hold no subscription and have sent nothing for this many "
                    "seconds (default 600; 0 = never, else 0.01 .. 86400)")
    ap.add_argument("--write-timeout", type=_number, default=60.0, metavar="S",
                    help="drop connections that have not read their output for this many seconds while "
                    "more than 4 MiB of it waits (default 60; 0.01 .. 86400)")
    ap.add_argument("--tls-cert", type=Path, metavar="PEM",
                    help="serve TLS only (1.2+), with this PEM certificate chain; announces capability TLS. "
                    "Plaintext clients are answered with an ERROR saying TLS is expected")
    ap.add_argument("--tls-key", type=Path, metavar="PEM",
                    help="the PEM private key, unencrypted (needed unless it is in the --tls-cert file)")
    ap.add_argument("--admin-port", type=int, default=None, metavar="PORT",
                    help="serve the admin HTTP API (health, Prometheus /metrics, topics, connections; "
                    "spec/admin.md) on this TCP port, 0 picking a free one; off by default")
    ap.add_argument("--admin-host", default=None, metavar="HOST",
                    help="address the admin API listens on (default 127.0.0.1). Without --auth-file it has no "
                    "authentication: expose it only where its readers are trusted; with it, every request but "
                    "/healthz and /readyz needs an admin principal's token (Authorization: Bearer)")
    ap.add_argument("--auth-file", type=Path, metavar="TOML",
                    help="require authentication: the principals, their salted token hashes (nanomq-broker "
                    "hash-token), permissions and quotas (docs/user-guide.md, Security). Announces AUTH; a HELLO "
                    "that proves no principal is answered AUTH_FAILED. Reloaded on SIGHUP without dropping "
                    "connections")
    ap.add_argument("--tls-client-ca", type=Path, metavar="PEM",
                    help="with --tls-cert and --auth-file: accept client certificates signed by this authority; "
                    "a client without a token proves the principal its certificate names (a DNS or URI "
                    "subjectAltName, else the subject CN) if that principal has certificate = true")
    ap.add_argument("--verify-on-start", action="store_true",
                    help="verify the CRC of every stored record at start, quarantining damage then (reads "
                    "every log once: 0.3-0.9 s per GiB in the page cache, the disk's read time otherwise); by "
                    "default what the checkpoints vouch for is trusted and verified when first read")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--version", action="version", version=f"nanomq-broker {__version__}")
    return ap


def config_from_args(args: argparse.Namespace) -> BrokerConfig:
    """The BrokerConfig the flags describe (not validated yet)."""
    max_payload = args.max_payload
    retention_ms = None
    if args.retention_days is not None:
        retention_ms = round(args.retention_days * 86_400_000)
    return BrokerConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir if args.data_dir is not None else default_data_dir(),
        segment_bytes=args.log_segment_size,
        retention_ms=retention_ms,
        retention_bytes=args.retention_bytes,
        retention_check_s=args.retention_check_interval if args.retention_check_interval is not None else 60.0,
        fsync=args.fsync,
        fsync_interval_ms=args.fsync_interval_ms if args.fsync_interval_ms is not None else 10,
        compression=args.compression,
        max_connections=args.max_connections if args.max_connections is not None else 1024,
        max_subscriptions=args.max_subscriptions,
        data_plane=args.data_plane,
        loop=args.loop,
        busy_poll_us=args.busy_poll,
        max_payload=max_payload,
        hello_timeout_s=args.handshake_timeout,
        frame_timeout_s=args.frame_timeout,
        idle_timeout_s=args.idle_timeout,
        write_timeout_s=args.write_timeout,
        max_topics=args.max_topics,
        topic_create_rate=args.topic_create_rate,
        topic_create_burst=args.topic_create_burst,
        max_commit_gaps=args.max_commit_gaps,
        frame_buffer_bytes=args.max_frame_buffer,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth_file=args.auth_file,
        verify_on_start=args.verify_on_start,
        admin_host=args.admin_host if args.admin_host is not None else "127.0.0.1",
        admin_port=args.admin_port,
        # Room for a full batch of maximum records, within HELLO_OK's u32 field: at 16 MiB payloads
        # a full batch would not fit, and a client has to send fewer per frame.
        max_frame=min(0xFFFF_FFFF, max(DEFAULT_MAX_FRAME, MAX_BATCH * (RECORD_HEADER_SIZE + max_payload) + 1024)),
    )


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> BrokerConfig:
    """Every check that can be made before starting; ``ap.error`` (exit 2) on the first failure."""
    if args.fsync_interval_ms is not None and args.fsync != "interval":
        ap.error("--fsync-interval-ms only applies with --fsync interval")
    if args.retention_check_interval is not None and args.retention_days is None and args.retention_bytes is None:
        ap.error("--retention-check-interval only applies with --retention-days or --retention-bytes")
    if args.retention_days is not None and args.retention_days <= 0:
        ap.error(f"--retention-days must be positive, not {args.retention_days:g}")
    if args.admin_host is not None and args.admin_port is None:
        ap.error("--admin-host only applies with --admin-port")
    config = config_from_args(args)
    try:
        config.validate()
        if config.tls_cert is not None:
            load_server_context(config.tls_cert, config.tls_key, config.tls_client_ca)
        if config.auth_file is not None:
            load_principals(config.auth_file)
    except ValueError as e:
        ap.error(str(e))
    _check_data_dir(ap, Path(config.data_dir), config.segment_bytes)
    _check_fd_limit(ap, config.max_connections, explicit=args.max_connections is not None)
    return config


def _check_data_dir(ap: argparse.ArgumentParser, data: Path, segment_bytes: int) -> None:
    try:
        data.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        ap.error(f"--data-dir {data} exists and is not a directory")
    except OSError as e:
        ap.error(f"--data-dir {data}: cannot create it: {e.strerror or e}")
    if not data.is_dir():
        ap.error(f"--data-dir {data} is not a directory")
    if not os.access(data, os.W_OK | os.X_OK):
        ap.error(f"--data-dir {data} is not writable by this user")
    st = os.statvfs(data)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    if segment_bytes > total:
        ap.error(f"--log-segment-size {format_size(segment_bytes)} is larger than the whole file system of "
                 f"--data-dir {data} ({format_size(total)}): each topic preallocates one segment")
    if segment_bytes > free:
        ap.error(f"--log-segment-size {format_size(segment_bytes)} is more than the free space of --data-dir "
                 f"{data} ({format_size(free)}): no topic could be created and no segment rolled")


def _check_fd_limit(ap: argparse.ArgumentParser, max_connections: int, explicit: bool) -> None:
    """Each connection is a descriptor: raise the soft RLIMIT_NOFILE to fit if the hard one allows."""
    need = max_connections + _FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(hard, need)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target >= need:
        return
    msg = (f"--max-connections {max_connections} needs about {need} open files, but this process may open "
           f"at most {target} (ulimit -n): lower --max-connections or raise the limit")
    if explicit:
        ap.error(msg)
    _log.warning("%s; connections beyond about %d will be refused by the system", msg, target - _FD_MARGIN)


def build_hash_parser() -> argparse.ArgumentParser:
    """The parser of ``nanomq-broker hash-token``."""
    ap = argparse.ArgumentParser(
        prog="nanomq-broker hash-token",
        description="Make the --auth-file entry of principal NAME: a salted scrypt hash of its token "
        "(the file never holds the token itself). Without --token-file a new random token is made; the "
        "token goes to stdout on its own line first (give it to the client: --token-file, NANOMQ_TOKEN or "
        "token=), then the TOML entry to add to the auth file. Tokens are NAME:SECRET.")
    ap.add_argument("name", metavar="NAME", help="the principal (1-128 of A-Z a-z 0-9 . _ @ -)")
    ap.add_argument("--token-file", type=Path, metavar="FILE",
                    help="hash the token in FILE (one line, NAME:SECRET; '-' reads stdin) instead of making one")
    return ap


def hash_token_main(argv: list[str]) -> int:
    """``nanomq-broker hash-token NAME``: print a token (unless given) and its auth-file entry."""
    ap = build_hash_parser()
    args = ap.parse_args(argv)
    try:
        if args.token_file is None:
            token = make_token(args.name)
            print(token)
        else:
            text = sys.stdin.read() if str(args.token_file) == "-" else args.token_file.read_text()
            token = text.strip()
            if not token.startswith(f"{args.name}:") or len(token) <= len(args.name) + 1:
                ap.error(f"the token must be {args.name}:SECRET (the broker finds the principal by the part "
                         "before ':')")
            if len(token) - len(args.name) - 1 < 16:
                ap.error("the secret after ':' is shorter than 16 characters: too easy to guess")
            make_token(args.name)  # checks the name
    except ValueError as e:
        ap.error(str(e))
    except OSError as e:
        ap.error(f"--token-file {args.token_file}: {e.strerror or e}")
    print(f"\n[principals.{args.name}]\ntoken = \"{hash_token(token)}\"\n"
          f"[principals.{args.name}.permissions]\n\"{args.name}.*\" = [\"publish\", \"subscribe\", \"create\"]")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nanomq-broker`` (and of its subcommand ``hash-token``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hash-token"]:
        return hash_token_main(argv[1:])
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    config = check_args(ap, args)
    try:
        return run(config)
    except (TlsConfigError, AuthConfigError) as e:  # a file changed between the check and the start
        print(f"nanomq-broker: {e}", file=sys.stderr)
        return 2
    except ssl.SSLError as e:
        print(f"nanomq-broker: cannot load the TLS certificate/key: {e}", file=sys.stderr)
        return 2
    except BrokerLockedError as e:
        print(f"nanomq-broker: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"nanomq-broker: cannot start: {e}", file=sys.stderr)
        return 1
    except StorageError as e:
        print(f"nanomq-broker: storage error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
