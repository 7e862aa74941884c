"""``nanomq-cli admin``: the broker's admin HTTP API (spec/admin.md) from the shell.

    nanomq-cli admin --admin http://127.0.0.1:9090 topics [NAME]
    nanomq-cli admin topics --create NAME
    nanomq-cli admin topics --delete NAME
    nanomq-cli admin topics NAME --retention-bytes 1GiB --retention-ms inherit
    nanomq-cli admin connections --format json
    nanomq-cli admin broker

The broker serves the API only when started with ``--admin-port``. ``--format table`` (default)
prints aligned columns, ``json`` the API's own document. A broker that authenticates wants the
token of an admin principal: ``--token``, ``--token-file`` or ``$NANOMQ_TOKEN``, as for the other
commands (sent as ``Authorization: Bearer``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit

from nanomq.cli.sizes import parse_size

__all__ = ["DEFAULT_ADMIN", "AdminError", "add_parser", "check_args", "run"]

DEFAULT_ADMIN = "http://127.0.0.1:9090"


class AdminError(Exception):
    """The admin API could not be reached, or answered with an error (exit 1)."""


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"--admin must be an http:// or https:// URL, not {text!r}")
    return text.rstrip("/")


def _options(*, defaults: bool) -> argparse.ArgumentParser:
    """--admin and --format, accepted before or after the resource (the same trick as the
    connection options: defaults only on the outer parser)."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--admin", type=_url, default=default(os.environ.get("NANOMQ_ADMIN", DEFAULT_ADMIN)),
                   help=f"URL of the admin API (default $NANOMQ_ADMIN or {DEFAULT_ADMIN})")
    p.add_argument("--format", choices=["table", "json"], default=default("table"), help="table (default) or json")
    return p


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``admin`` command to ``nanomq-cli``'s subcommands."""
    a = sub.add_parser("admin", parents=[*parents, _options(defaults=True)],
                       help="the broker's admin HTTP API: topics, connections, broker (the broker must run "
                       "with --admin-port)")
    inner = [_options(defaults=False), *parents]
    what = a.add_subparsers(dest="resource", required=True)
    t = what.add_parser("topics", parents=inner, help="list topics, describe one (NAME), --create or --delete one")
    t.add_argument("name", nargs="?", help="describe only this topic")
    t.add_argument("--create", metavar="NAME", help="create this topic (no error if it exists)")
    t.add_argument("--retention-ms", metavar="MS|none|inherit",
                   help="with NAME: the topic's own time retention in ms (none: no bound; inherit: the broker's)")
    t.add_argument("--retention-bytes", metavar="SIZE|none|inherit",
                   help="with NAME: the topic's own size retention (e.g. 1GiB; none: no bound; inherit: the broker's)")
    t.add_argument("--delete", metavar="NAME", help="delete this topic with its records; connections subscribed "
                   "to it are closed (spec/admin.md NMQ-ADM-3-5). There is no undo")
    what.add_parser("connections", parents=inner, help="client connections with their subscriptions")
    what.add_parser("broker", parents=inner, help="version, configuration, capabilities, uptime, disk")
    what.add_parser("groups", parents=inner, help="consumer groups (the broker says whether it has any)")


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (exit 2) what cannot be meant: two of NAME, --create, --delete at once."""
    if args.resource == "topics" and sum(x is not None for x in (args.name, args.create, args.delete)) > 1:
        ap.error("admin topics: give one of NAME (describe), --create NAME and --delete NAME")
    if args.resource == "topics" and (args.retention_ms is not None or args.retention_bytes is not None):
        if args.name is None:
            ap.error("admin topics: --retention-ms/--retention-bytes go with a topic NAME")
        if args.retention_ms is None or args.retention_bytes is None:
            ap.error("admin topics: give both --retention-ms and --retention-bytes (inherit keeps the broker's)")
        try:
            args.retention = {"retention_ms": _setting(args.retention_ms, int),
                              "retention_bytes": _setting(args.retention_bytes, parse_size)}
        except (ValueError, argparse.ArgumentTypeError) as e:
            ap.error(f"admin topics: {e}")


def _setting(text: str, parse: Any) -> int | None:
    """A retention setting from the command line: inherit -> None, none -> 0, else a value >= 1."""
    if text == "inherit":
        return None
    if text == "none":
        return 0
    value = int(parse(text))
    if value < 1:
        raise ValueError(f"a retention bound must be at least 1, not {text!r} (none: no bound)")
    return value


def _request(base: str, method: str, path: str, body: dict[str, Any] | None, timeout: float,
             token: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"} if data else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the URL's scheme is checked
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())["error"]
            raise AdminError(f"{method} {path}: {e.code} {err['code']}: {err['message']}") from None
        except (ValueError, KeyError, TypeError):
            raise AdminError(f"{method} {path}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise AdminError(f"cannot reach the admin API at {base}: {getattr(e, 'reason', e)}") from None


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


_TOPIC_COLUMNS = ["name", "topic_id", "records", "first_id", "next_id", "durable_id", "disk_bytes", "segments",
                  "subscriptions", "max_lag_records"]
_CONN_COLUMNS = ["peer", "principal", "client_name", "state", "write_state", "age_s", "idle_s", "buffered_out_bytes", "subs"]


def run(args: argparse.Namespace, token: str | None = None) -> None:
    """Perform ``nanomq-cli admin ...`` (``token``: an admin principal's); raises AdminError."""
    base, timeout, fmt = args.admin, args.timeout, args.format

    def _call(method: str, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        return _request(base, method, path, body, timeout, token)

    out: Any
    if args.resource == "topics":
        if args.delete:
            out = _call("DELETE", "/v1/topics/" + quote(args.delete, safe=""), None, timeout)
            rows = [out["deleted"]]
        elif args.create:
            out = _call("POST", "/v1/topics", {"name": args.create}, timeout)
            rows = [out]
        elif args.name and getattr(args, "retention", None) is not None:
            out = _call("PUT", "/v1/topics/" + quote(args.name, safe="") + "/retention", args.retention, timeout)
            rows = [out]
        elif args.name:
            out = _call("GET", "/v1/topics/" + quote(args.name, safe=""), None, timeout)
            rows = [out]
        else:
            out = _call("GET", "/v1/topics", None, timeout)
            rows = out["topics"]
        text = _table(rows, _TOPIC_COLUMNS)
    elif args.resource == "connections":
        out = _call("GET", "/v1/connections", None, timeout)
        rows = [dict(c, subs=",".join(f"{s['topic']}@{s['next_id']}" for s in c["subscriptions"]) or "-")
                for c in out["connections"]]
        text = _table(rows, _CONN_COLUMNS)
    elif args.resource == "groups":
        out = _call("GET", "/v1/groups", None, timeout)
        text = json.dumps(out, indent=2)
    else:
        out = _call("GET", "/v1/broker", None, timeout)
        flat = {k: v for k, v in out.items() if not isinstance(v, dict | list)}
        flat["capabilities"] = ",".join(out["capabilities"]) or "-"
        flat.update({f"config.{k}": v for k, v in out["config"].items()})
        flat.update({f"disk.{k}": v for k, v in out["disk"].items()})
        flat["address"] = f"{out['address']['host']}:{out['address']['port']}"
        width = max(map(len, flat))
        text = "\n".join(f"{k.ljust(width)}  {v}" for k, v in sorted(flat.items()))
    if fmt == "json":
        text = json.dumps(out, indent=2, sort_keys=True)
    sys.stdout.write(text + "\n")
