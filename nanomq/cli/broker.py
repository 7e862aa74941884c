"""``nanomq-broker``: run the reference broker."""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from pathlib import Path

from nanomq import __version__
from nanomq.broker import BrokerConfig, BrokerLockedError, default_data_dir, run
from nanomq.cli.sizes import parse_size
from nanomq.storage import StorageError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the flags)."""
    ap = argparse.ArgumentParser(
        prog="nanomq-broker",
        description="Run a NanoMQ broker: topics stored in a crash-safe write-ahead log, served over "
        "NanoMQ wire protocol v1. Stop it with Ctrl-C or SIGTERM (it syncs and marks the log clean).",
    )
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=9000, help="TCP port (default 9000; 0 picks a free one)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help=f"where topics are stored (default $NANOMQ_DATA_DIR or {default_data_dir()})")
    ap.add_argument("--log-segment-size", type=parse_size, default=100 * 1024 * 1024, metavar="SIZE",
                    help="roll to a new log segment at this size (default 100MB; at least 1MB)")
    ap.add_argument("--retention-days", type=float, default=None, metavar="DAYS",
                    help="delete whole segments whose newest record is older than this")
    ap.add_argument("--retention-bytes", type=parse_size, default=None, metavar="SIZE",
                    help="keep at most about this much log per topic (oldest segments go first)")
    ap.add_argument("--retention-check-interval", type=float, default=60.0, metavar="S",
                    help="how often retention runs, in seconds (default 60)")
    ap.add_argument("--compression", choices=["lz4", "none"], default="lz4",
                    help="lz4 (default): accept and store LZ4-compressed records; none: refuse them")
    ap.add_argument("--fsync", choices=["always", "interval", "never"], default="always",
                    help="background sync policy. Durable acks (the default ack mode) always wait for a "
                    "sync; 'always' also syncs a topic in the background every 8 MiB written, 'interval' "
                    "every --fsync-interval-ms as well, 'never' only at rotation/shutdown")
    ap.add_argument("--fsync-interval-ms", type=int, default=10, metavar="MS", help="for --fsync interval (default 10)")
    ap.add_argument("--max-connections", type=int, default=1024, help="connection limit (default 1024)")
    ap.add_argument("--max-payload", type=parse_size, default=65536, metavar="SIZE",
                    help="largest record payload accepted (default 64KiB)")
    ap.add_argument("--handshake-timeout", type=float, default=10.0, metavar="S",
                    help="close connections that send no HELLO within this many seconds (default 10)")
    ap.add_argument("--frame-timeout", type=float, default=30.0, metavar="S",
                    help="close connections that take longer than this to send one frame (default 30)")
    ap.add_argument("--tls-cert", type=Path, metavar="PEM",
                    help="serve TLS only (1.2+), with this PEM certificate chain; announces capability TLS")
    ap.add_argument("--tls-key", type=Path, metavar="PEM", help="the PEM private key (if not in --tls-cert)")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--version", action="version", version=f"nanomq-broker {__version__}")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nanomq-broker``."""
    ap = build_parser()
    args = ap.parse_args(argv)
    max_payload = args.max_payload
    config = BrokerConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir if args.data_dir is not None else default_data_dir(),
        segment_bytes=args.log_segment_size,
        retention_ms=int(args.retention_days * 86_400_000) if args.retention_days is not None else None,
        retention_bytes=args.retention_bytes,
        retention_check_s=args.retention_check_interval,
        fsync=args.fsync,
        fsync_interval_ms=args.fsync_interval_ms,
        compression=args.compression,
        max_connections=args.max_connections,
        max_payload=max_payload,
        hello_timeout_s=args.handshake_timeout,
        frame_timeout_s=args.frame_timeout,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_frame=max(16 * 1024 * 1024 + 64 * 1024, 256 * (64 + max_payload) + 1024),
    )
    try:
        config.validate()
    except ValueError as e:
        ap.error(str(e))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return run(config)
    except ssl.SSLError as e:
        print(f"nanomq-broker: cannot load the TLS certificate/key: {e}", file=sys.stderr)
        return 1
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
