"""Principals, permissions and quotas: the broker side of spec/protocol.md §10.

Theory of operation
-------------------
``--auth-file users.toml`` names the principals. Each has a salted scrypt hash of its token
(``nanomq-broker hash-token`` makes the entry), or accepts a TLS client certificate, or both; a
table of grants (pattern -> actions); and optional quotas::

    [principals.alice]
    token = "scrypt$16384$8$1$<salt, base64>$<hash, base64>"
    certificate = true                  # a verified client certificate naming "alice" also proves it
    max_connections = 8
    max_topics = 100                    # topics it may create (since the broker started)
    publish_bytes_per_s = 1048576       # token bucket, refilled at this rate ...
    publish_burst_bytes = 4194304       # ... holding at most this much (default: one second's worth)

    [principals.alice.permissions]
    "alice-*" = ["publish", "subscribe", "create"]
    "shared" = ["subscribe"]
    "group:alice-*" = ["subscribe"]

A token is ``<principal>:<secret>``: the name says which stored hash to check, so a HELLO costs
one scrypt (about 50 ms and 16 MiB, in a worker thread: the event loop never waits for it) however
many principals there are. An unknown name is checked against a dummy hash all the same, so the
time of a failure does not say whether the name exists ([NMQ-10-12]). A token that verified once
is remembered by its HMAC under a key of this process only (never the token), so reconnecting
costs a dictionary lookup and a constant-time comparison; a reload forgets them all.

Failures cost a client address one token of a bucket (10, refilled at 2 per second); with the
bucket empty a HELLO from that address is refused without its token being looked at
([NMQ-10-11]), so it gets at most 2 checked guesses a second. Every checked failure is logged on
the ``nanomq.audit`` logger with the address, the reason and the principal's name if the token
named one, never the token ([NMQ-10-13]); refusals without a check as one line per address and
second, with their count.

Quotas live in a :class:`Usage` per principal name, which survives reloads (the connections and
topics counted stay counted; new limits apply from the reload on). Who created which topic is
also appended to a ledger in the data directory (``principal-topics.log``, one ``name<TAB>topic``
line each, written when the creation is counted, before it happens), and read back at start,
counting only topics that exist: so a topic quota holds across restarts and a killed broker (the
line is in the page cache before the topic exists), and a creation that failed is not counted
after the next start. Only a power loss right after a creation could lose its line (the ledger is
not synced; the topic's directory is). A topic deleted through the admin API ([NMQ-ADM-3-5])
gives its creator its quota back at once and appends a ``~<TAB>topic`` line (``~`` is no
principal name): read back, it ends every earlier claim on that topic, so a topic made anew by
someone else counts for them alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntFlag
from pathlib import Path
from typing import Any

__all__ = [
    "Action", "AuthConfigError", "Authenticator", "Grant", "Principal", "Usage", "PublishBucket",
    "hash_token", "load_principals", "make_token", "principal_from_certificate", "verify_hash",
]

_log = logging.getLogger("nanomq.broker")
audit = logging.getLogger("nanomq.audit")
"""Failed (WARNING) and successful (INFO) authentications, never with a token."""

SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
"""scrypt's cost: 16 MiB of memory and about 50 ms per check on this machine type."""
_SALT_BYTES = 16
_HASH_BYTES = 32
_NAME_RE = re.compile(r"[A-Za-z0-9._@-]{1,128}")
_TOPIC_PATTERN_RE = re.compile(r"[A-Za-z0-9._-]{0,255}\*?")
FAILURE_BURST = 10.0
"""Failed authentications one client address may have at once before it is refused unchecked."""
FAILURE_REFILL_PER_S = 2.0
REFUSAL_REPORT_S = 1.0
"""Refusals of one address without a check are logged as one line per this many seconds."""
_MAX_ADDRESSES = 65536
"""Addresses whose failures are remembered at most (the oldest are forgotten first)."""


class AuthConfigError(ValueError):
    """The auth file cannot be used; the message names the file and the principal."""


class Action(IntFlag):
    """What a grant allows (spec/protocol.md §10.2)."""

    PUBLISH = 1
    SUBSCRIBE = 2
    CREATE = 4
    ADMIN = 8


_ACTIONS = {"publish": Action.PUBLISH, "subscribe": Action.SUBSCRIBE, "create": Action.CREATE,
            "admin": Action.ADMIN}


@dataclass(frozen=True, slots=True)
class Grant:
    """One pattern and its actions: ``name`` exactly, or every name starting with ``prefix`` when
    the pattern ended with ``*``; ``group`` for patterns of consumer groups (``group:...``)."""

    pattern: str
    actions: Action
    group: bool
    prefix: bool
    stem: str

    @classmethod
    def parse(cls, pattern: str, actions: Action) -> Grant:
        """A grant from the auth file's spelling (``"orders.*"``, ``"group:billing"``); ValueError if bad."""
        group = pattern.startswith("group:")
        body = pattern[len("group:"):] if group else pattern
        if not _TOPIC_PATTERN_RE.fullmatch(body) or body in ("", ".", ".."):
            raise ValueError(f"pattern {pattern!r} is not a name, a prefix followed by '*', or '*'")
        prefix = body.endswith("*")
        return cls(pattern, actions, group, prefix, body[:-1] if prefix else body)

    def matches(self, name: str, group: bool) -> bool:
        """Whether this grant covers ``name`` (a group name when ``group``)."""
        if group is not self.group:
            return False
        return name.startswith(self.stem) if self.prefix else name == self.stem


@dataclass(frozen=True, slots=True)
class Principal:
    """An identity of the auth file: how it proves itself, what it may do, its quotas."""

    name: str
    token_hash: str = ""
    """``scrypt$N$r$p$salt$hash`` (empty: no token proves it)."""
    certificate: bool = False
    """A verified TLS client certificate naming it proves it."""
    grants: tuple[Grant, ...] = ()
    max_connections: int = 0
    """0: no quota."""
    max_topics: int = 0
    """Topics it may create; 0: no quota."""
    publish_bytes_per_s: float = 0.0
    """0: no quota."""
    publish_burst_bytes: int = 0

    def allowed(self, name: str, action: Action, group: bool = False) -> bool:
        """Whether a grant allows ``action`` on ``name`` ([NMQ-10-2]); admin allows every action."""
        want = action | Action.ADMIN
        return any(g.actions & want and g.matches(name, group) for g in self.grants)

    def visible(self, topic: str) -> bool:
        """Whether METADATA may show ``topic``: publish, subscribe or admin on it ([NMQ-10-4])."""
        return self.allowed(topic, Action.PUBLISH | Action.SUBSCRIBE)

    @property
    def publishes_anywhere(self) -> bool:
        """Allowed to publish to every topic with no publish quota: its PUBLISHes may take the C
        data plane, which does not check permissions (nanomq/broker/connection.py)."""
        return not self.publish_bytes_per_s and any(
            g.actions & (Action.PUBLISH | Action.ADMIN) and not g.group and g.prefix and g.stem == ""
            for g in self.grants)


class PublishBucket:
    """A principal's publish allowance in bytes ([NMQ-10-9]): refills at ``rate`` per second up to
    ``burst``; a PUBLISH is admitted while the bucket is not in debt and then takes its size."""

    __slots__ = ("rate", "burst", "_level", "_stamp")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._level = float(burst)
        self._stamp = time.monotonic()

    def configure(self, rate: float, burst: int) -> None:
        """New limits (a reload); what is in the bucket now is kept, capped at the new burst."""
        self._refill()
        self.rate, self.burst = rate, float(burst)
        self._level = min(self._level, self.burst)

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.burst, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self, nbytes: int) -> float:
        """Admit ``nbytes`` (returns 0.0), or refuse them: the seconds until the debt is repaid."""
        self._refill()
        if self._level < 0:
            return -self._level / self.rate
        self._level -= nbytes
        return 0.0


@dataclass(slots=True)
class Usage:
    """What one principal uses now, over all its connections (kept across reloads)."""

    connections: int = 0
    topics_created: int = 0
    bucket: PublishBucket | None = None


def make_token(principal: str) -> str:
    """A new random token for ``principal``: ``<principal>:<32 random bytes, urlsafe base64>``."""
    _check_name(principal)
    return f"{principal}:{secrets.token_urlsafe(32)}"


def hash_token(token: str | bytes, *, salt: bytes | None = None) -> str:
    """The auth file's ``token`` value for ``token``: a salted scrypt hash, never the token."""
    raw = token.encode() if isinstance(token, str) else token
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = hashlib.scrypt(raw, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=_HASH_BYTES,
                            maxmem=64 * 1024 * 1024)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def _parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("token must be 'scrypt$N$r$p$salt$hash' as nanomq-broker hash-token prints it")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise ValueError("token hash has a bad number or base64 field") from None
    if n < 1 << 14 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16 or n * r * 128 * p > 256 << 20:
        raise ValueError(f"scrypt parameters N={n} r={r} p={p} are too weak or too costly "
                         "(N a power of two >= 16384, memory <= 256 MiB)")
    if len(salt) < 16 or len(digest) < 16:
        raise ValueError("token hash has a salt or hash shorter than 16 bytes")
    return n, r, p, salt, digest


def verify_hash(stored: str, token: bytes) -> bool:
    """Whether ``token`` hashes to ``stored``; the comparison takes the same time however much of
    the hash matches ([NMQ-10-12])."""
    n, r, p, salt, digest = _parse_hash(stored)
    got = hashlib.scrypt(token, salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=n * r * 128 * p + (1 << 20))
    return hmac.compare_digest(got, digest)


_DUMMY_HASH = hash_token(b"not a token of anyone", salt=bytes(_SALT_BYTES))
"""What a token naming no principal is checked against, so that it costs what a real check costs."""


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"principal name {name!r} must be 1-128 of A-Z a-z 0-9 . _ @ -")


def _number(where: str, entry: Mapping[str, Any], key: str, kind: type) -> Any:
    v = entry.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)) or v < 0:
        raise AuthConfigError(f"{where}: {key} must be a non-negative {'integer' if kind is int else 'number'}")
    return kind(v)


def load_principals(path: Path) -> dict[str, Principal]:
    """Read and check an auth file; AuthConfigError naming the file and the principal on any fault."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise AuthConfigError(f"--auth-file {path}: cannot read it: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise AuthConfigError(f"--auth-file {path}: not valid TOML: {e}") from None
    unknown = set(data) - {"principals"}
    if unknown:
        raise AuthConfigError(f"--auth-file {path}: unknown top-level keys {sorted(unknown)} (only [principals.NAME])")
    table = data.get("principals", {})
    if not isinstance(table, dict) or not table:
        raise AuthConfigError(f"--auth-file {path}: no principals (add a [principals.NAME] table)")
    out: dict[str, Principal] = {}
    keys = {"token", "certificate", "permissions", "max_connections", "max_topics", "publish_bytes_per_s",
            "publish_burst_bytes"}
    for name, entry in table.items():
        where = f"--auth-file {path}: principal {name!r}"
        try:
            _check_name(name)
        except ValueError as e:
            raise AuthConfigError(f"--auth-file {path}: {e}") from None
        if not isinstance(entry, dict):
            raise AuthConfigError(f"{where} must be a table")
        if bad := set(entry) - keys:
            raise AuthConfigError(f"{where}: unknown keys {sorted(bad)} (known: {sorted(keys)})")
        token = entry.get("token", "")
        if not isinstance(token, str):
            raise AuthConfigError(f"{where}: token must be a string")
        if token:
            try:
                _parse_hash(token)
            except ValueError as e:
                raise AuthConfigError(f"{where}: {e}") from None
        cert = entry.get("certificate", False)
        if not isinstance(cert, bool):
            raise AuthConfigError(f"{where}: certificate must be true or false")
        if not token and not cert:
            raise AuthConfigError(f"{where}: has neither a token nor certificate = true, so nothing can prove it")
        perms = entry.get("permissions", {})
        if not isinstance(perms, dict):
            raise AuthConfigError(f"{where}: permissions must be a table of pattern = [actions]")
        grants = []
        for pattern, actions in perms.items():
            if not isinstance(actions, list) or not actions or not all(a in _ACTIONS for a in actions):
                raise AuthConfigError(f"{where}: permissions {pattern!r} must be a non-empty list of "
                                      f"{', '.join(_ACTIONS)}")
            flags = Action(0)
            for a in actions:
                flags |= _ACTIONS[a]
            try:
                grants.append(Grant.parse(pattern, flags))
            except ValueError as e:
                raise AuthConfigError(f"{where}: {e}") from None
        rate = _number(where, entry, "publish_bytes_per_s", float)
        burst = _number(where, entry, "publish_burst_bytes", int)
        if burst and not rate:
            raise AuthConfigError(f"{where}: publish_burst_bytes needs publish_bytes_per_s")
        out[name] = Principal(name, token, cert, tuple(grants), _number(where, entry, "max_connections", int),
                              _number(where, entry, "max_topics", int), rate,
                              burst or (max(1, round(rate)) if rate else 0))
    return out


def principal_from_certificate(peercert: Mapping[str, Any] | None) -> list[str]:
    """The names a verified client certificate gives, in order: its subjectAltName entries of type
    DNS or URI, else its subject's commonName (ssl's ``getpeercert()`` dictionary)."""
    if not peercert:
        return []
    sans = [v for kind, v in peercert.get("subjectAltName", ()) if kind in ("DNS", "URI")]
    if sans:
        return sans
    return [v for rdn in peercert.get("subject", ()) for k, v in rdn if k == "commonName"]


@dataclass(slots=True)
class _Failures:
    level: float
    stamp: float
    refused: int = 0
    """HELLOs refused unchecked since the last line that reported them."""
    reported_at: float = float("-inf")


LEDGER_NAME = "principal-topics.log"
_DELETED_MARK = "~"
"""The ledger's principal column for a deletion (no principal name contains ``~``)."""
"""The file in the data directory that says which principal created which topic."""


@dataclass(slots=True)
class Authenticator:
    """The broker's principals (reloadable), their usage, the failure limiter and the audit log."""

    path: Path
    principals: dict[str, Principal] = field(default_factory=dict)
    usage: dict[str, Usage] = field(default_factory=dict)
    _verified: dict[bytes, str] = field(default_factory=dict)
    """HMAC(token) -> principal name, for tokens that verified since the last (re)load."""
    _key: bytes = field(default_factory=lambda: os.urandom(32))
    _failures: dict[str, _Failures] = field(default_factory=dict)
    generation: int = 0
    """Bumped by every successful (re)load."""
    _ledger: int = -1
    """The ledger's descriptor (O_APPEND), -1 until :meth:`open_ledger`."""
    _creators: dict[str, str] = field(default_factory=dict)
    """Topic -> the principal whose creation of it counts (from the ledger, then as created)."""

    def load(self) -> int:
        """(Re)read the auth file; AuthConfigError leaves the principals as they were. The count."""
        principals = load_principals(self.path)
        self.principals = principals
        self._verified.clear()
        self._key = os.urandom(32)
        self.generation += 1
        for p in principals.values():
            u = self.usage_of(p)
            if p.publish_bytes_per_s:
                if u.bucket is None:
                    u.bucket = PublishBucket(p.publish_bytes_per_s, p.publish_burst_bytes)
                else:
                    u.bucket.configure(p.publish_bytes_per_s, p.publish_burst_bytes)
            else:
                u.bucket = None
        return len(principals)

    def open_ledger(self, data_dir: Path, existing: Iterable[str]) -> None:
        """Count, from the ledger in ``data_dir``, the topics each principal created that still
        exist (``existing``), then keep the ledger open to append to. A torn last line (a crash
        while it was written) is ignored."""
        path = data_dir / LEDGER_NAME
        names = set(existing)
        owned: dict[str, set[str]] = {}
        try:
            text = path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            text = ""
        for line in text.split("\n")[:-1]:  # the part after the last newline is torn or empty
            principal, sep, topic = line.partition("\t")
            if sep and principal == _DELETED_MARK:  # a deletion ends the earlier claims on it
                for held in owned.values():
                    held.discard(topic)
            elif sep:
                owned.setdefault(principal, set()).add(topic)
        owned = {p: {t for t in ts if t in names} for p, ts in owned.items()}
        self._creators = {t: p for p, ts in owned.items() for t in ts}
        for principal, topics in owned.items():
            self.usage.setdefault(principal, Usage()).topics_created = len(topics)
        if text and not text.endswith("\n"):  # end the torn line, so the next one starts clean
            with open(path, "ab") as f:
                f.write(b"\n")
        self._ledger = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def record_creation(self, principal: str, topic: str) -> None:
        """Append ``principal`` created ``topic`` to the ledger, before the creation (one small
        O_APPEND write on the loop, not synced: see the module's docstring)."""
        if self._ledger >= 0:
            os.write(self._ledger, f"{principal}\t{topic}\n".encode())
        self._creators[topic] = principal

    def topic_deleted(self, topic: str) -> None:
        """``topic`` was deleted: its creator may create one more, now and after a restart."""
        creator = self._creators.pop(topic, None)
        if creator is not None:
            u = self.usage.get(creator)
            if u is not None and u.topics_created > 0:
                u.topics_created -= 1
        if self._ledger >= 0:
            os.write(self._ledger, f"{_DELETED_MARK}\t{topic}\n".encode())

    def close(self) -> None:
        """Close the ledger."""
        if self._ledger >= 0:
            os.close(self._ledger)
            self._ledger = -1

    def usage_of(self, p: Principal) -> Usage:
        """The usage record of ``p`` (made on first use)."""
        u = self.usage.get(p.name)
        if u is None:
            u = self.usage[p.name] = Usage()
        return u

    # ------------------------------------------------------------------ tokens

    def _tag(self, token: bytes) -> bytes:
        return hmac.new(self._key, token, hashlib.sha256).digest()

    def cached(self, token: bytes) -> Principal | None:
        """The principal ``token`` proved since the last load, without a scrypt; else None."""
        # A dict lookup is not constant-time, but its key is an HMAC under a key that never
        # leaves this process: how long it takes says nothing about any stored token.
        name = self._verified.get(self._tag(token))
        return self.principals.get(name) if name is not None else None

    def named_by(self, token: bytes) -> str:
        """The principal name a token claims (the part before ':'), or '' (for the audit log)."""
        head, sep, _ = token.partition(b":")
        if not sep:
            return ""
        try:
            name = head.decode()
        except UnicodeDecodeError:
            return ""
        return name if _NAME_RE.fullmatch(name) else ""

    def verify(self, token: bytes) -> tuple[int, str | None]:
        """Check ``token`` (blocking, about one scrypt: run it in a worker thread). Returns the
        generation it was checked against and the principal's name, or None. A token naming no
        principal still costs one scrypt, against a dummy hash."""
        generation, principals = self.generation, self.principals
        name = self.named_by(token)
        p = principals.get(name)
        stored = p.token_hash if p is not None and p.token_hash else _DUMMY_HASH
        ok = verify_hash(stored, token) and p is not None and bool(p.token_hash)
        return generation, name if ok else None

    def remember(self, generation: int, token: bytes, name: str) -> Principal | None:
        """Record a successful :meth:`verify` (on the loop); the principal, unless a reload came
        in between (then None: the caller checks again)."""
        if generation != self.generation:
            return None
        self._verified[self._tag(token)] = name
        return self.principals.get(name)

    def by_certificate(self, names: Iterable[str]) -> Principal | None:
        """The principal a verified certificate's names give, if one accepts certificates."""
        for n in names:
            p = self.principals.get(n)
            if p is not None and p.certificate:
                return p
        return None

    # ------------------------------------------------------------------ failures

    def limited(self, address: str) -> bool:
        """Whether ``address`` has used up its failures ([NMQ-10-11]): refuse it unchecked."""
        f = self._failures.get(address)
        if f is None:
            return False
        now = time.monotonic()
        f.level = min(FAILURE_BURST, f.level + (now - f.stamp) * FAILURE_REFILL_PER_S)
        f.stamp = now
        return f.level < 1.0

    def refused(self, address: str) -> None:
        """Audit-log a HELLO refused unchecked ([NMQ-10-11]): one line per address per
        ``REFUSAL_REPORT_S`` with the count, so a client hammering the broker cannot flood its log.
        Refusals do not count against the allowance, which refills as usual: an address gets at
        most ``FAILURE_REFILL_PER_S`` checked guesses a second, and a right token gets in soon
        after the guessing stops."""
        f = self._failures.get(address)
        if f is None:  # forgotten meanwhile (the table is bounded): count it as a failure
            self.failed(address, "too many failed attempts")
            return
        f.refused += 1
        now = time.monotonic()
        if now - f.reported_at >= REFUSAL_REPORT_S:
            audit.warning("authentication refused unchecked from %s: %d HELLO(s) after too many failures",
                          address, f.refused)
            f.refused, f.reported_at = 0, now

    def failed(self, address: str, reason: str, claimed: str = "") -> None:
        """Count and audit-log one failed authentication (never the token, [NMQ-10-13])."""
        now = time.monotonic()
        f = self._failures.get(address)
        if f is None:
            if len(self._failures) >= _MAX_ADDRESSES:
                self._failures.pop(next(iter(self._failures)))
            f = self._failures[address] = _Failures(FAILURE_BURST, now)
        else:
            f.level = min(FAILURE_BURST, f.level + (now - f.stamp) * FAILURE_REFILL_PER_S)
            f.stamp = now
        f.level = max(0.0, f.level - 1.0)
        audit.warning("authentication failed from %s: %s%s", address, reason,
                      f" (token names principal {claimed!r})" if claimed else "")

    def succeeded(self, address: str, principal: str, how: str) -> None:
        """Audit-log a successful authentication."""
        audit.info("authenticated %s as %r by %s", address, principal, how)
