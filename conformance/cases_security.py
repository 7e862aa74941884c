"""Layer (b), security (spec/protocol.md §10): authentication, permissions, no leak, quotas.

These cases run on the instance ``[target.auth]`` describes (:class:`conformance.target.AuthSpec`:
an admin principal, a restricted one with known grants, a quota principal), which is the main
target or a second instance the kit launched; without ``[target.auth]`` they are skipped. With the
default target the kit launches a second reference broker with ``conformance/reference_users.toml``.

Names: ``P`` is the spec's prefix. The restricted principal may publish, subscribe and create
``P rw-*``, only subscribe to ``P ro-*``, publish and subscribe but not create ``P nc-*``, and
nothing else; the kit's own topics (``cf-…``) are outside its grants.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from conformance.helpers import alive, closed, expect_error, is_error, publish, subscribe
from conformance.registry import Context, Skipped, case, check, soft_check
from conformance.target import AuthSpec, Target
from conformance.wire import WireClient
from nanomq.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Capability,
    Error,
    ErrorCode,
    Frame,
    Hello,
    HelloOk,
    Metadata,
    MetadataOk,
    Ping,
    Pong,
    Publish,
    RecordBatch,
    Start,
    Subscribe,
)

DENIED = ErrorCode.PERMISSION_DENIED


def _setup(ctx: Context) -> tuple[AuthSpec, Target]:
    if ctx.auth is None or ctx.auth_target is None:
        raise Skipped("no [target.auth] in the target description (the instance and principals of the security cases)")
    return ctx.auth, ctx.auth_target


@contextmanager
def _as(target: Target, token: str) -> Iterator[WireClient]:
    """A connection that has done HELLO with ``token``."""
    w = target.client(token=token)
    try:
        yield w
    finally:
        w.close()


def _name(auth: AuthSpec, ctx: Context, area: str, hint: str) -> str:
    """A fresh topic in one of the restricted principal's areas (``rw``, ``ro``, ``nc``, ``q``)."""
    return f"{auth.prefix}{area}-{ctx.topic(hint)}"


def _next_id(target: Target, auth: AuthSpec, topic: str) -> int | None:
    """The topic's next id as the admin sees it (None: it does not exist)."""
    with _as(target, auth.token) as w:
        w.send(Metadata(w.next_id(), topic))
        f = w.recv_response()
    if isinstance(f, MetadataOk) and len(f.topics) == 1:
        return f.topics[0].next_id
    check(is_error(f, ErrorCode.UNKNOWN_TOPIC), f"the admin's METADATA {topic} answered {f!r}", "NMQ-4.9-1")
    return None


def _ask(w: WireClient, frame: Frame) -> Frame:
    w.send(frame)
    return w.recv_response()


def _denied(f: Frame, what: str) -> Error:
    check(is_error(f, DENIED), f"{what}: expected ERROR PERMISSION_DENIED, got {f!r}", "NMQ-10-2", "NMQ-10-3")
    return expect_error(f, DENIED)


def _one(payload: bytes = b"x") -> RecordBatch:
    return RecordBatch.from_payloads([payload])


@case("security.authentication", "with AUTH, a HELLO without a token, with random bytes, or with a known principal's "
      "name and a wrong secret is answered AUTH_FAILED and closed, and a request sent behind it is never served; the "
      "right token is answered HELLO_OK announcing AUTH", layer="wire",
      rules=("NMQ-10-1", "NMQ-4.1-3", "NMQ-7-9", "NMQ-8-2"))
def authentication(ctx: Context) -> None:
    auth, target = _setup(ctx)
    name = auth.restricted_token.partition(":")[0]
    probe = _name(auth, ctx, "rw", "unauth")
    wrong = [b"", bytes(ctx.rng.getrandbits(8) for _ in range(40)), f"{name}:{'z' * 32}".encode(),
             auth.restricted_token.encode()[:-1]]
    for token in wrong:
        with ctx.step("NMQ-10-1", "NMQ-4.1-3", "NMQ-7-9", "NMQ-8-2"), target.raw_client() as w:
            # HELLO and, in the same write, a PUBLISH that would create the probe topic
            w.send(Hello(1, PROTOCOL_VERSION, "intruder", token), Publish(2, probe, Ack.WRITTEN, _one()))
            frames = closed(w)
            check(not any(isinstance(f, HelloOk) for f in frames), f"a token of {len(token)} bytes got HELLO_OK")
            check(any(is_error(f, ErrorCode.AUTH_FAILED) for f in frames),
                  f"a token of {len(token)} bytes answered {frames!r}, not AUTH_FAILED")
            for f in frames:
                if isinstance(f, Error) and f.code == ErrorCode.AUTH_FAILED:
                    check(token == b"" or token not in f.message.encode(), "the AUTH_FAILED message echoes the token")
            check(not any(f.request_id == 2 for f in frames), f"the PUBLISH behind a failed HELLO was answered: {frames!r}")
    with ctx.step("NMQ-10-1"):
        check(_next_id(target, auth, probe) is None, f"a PUBLISH behind a failed HELLO created {probe}")
    with ctx.step("NMQ-10-1", "NMQ-7-9"), target.raw_client() as w:
        h = w.hello(token=auth.restricted_token.encode())
        check(bool(h.capabilities & Capability.AUTH), f"HELLO_OK of an authenticated connection lacks AUTH: {h!r}")
        alive(w, "NMQ-10-1")


@case("security.publish-denied", "the restricted principal's PUBLISH to a topic outside its grants, and to one it "
      "may only subscribe to, is PERMISSION_DENIED for every ack mode (none included), appends nothing, and the "
      "connection goes on; its PUBLISH inside its grants is acked", layer="wire",
      rules=("NMQ-10-2", "NMQ-10-3", "NMQ-8-2"))
def publish_denied(ctx: Context) -> None:
    auth, target = _setup(ctx)
    outside, readonly = ctx.topic("alice-private"), _name(auth, ctx, "ro", "ro")
    with _as(target, auth.token) as admin:
        publish(admin, outside, [b"alice's"])
        publish(admin, readonly, [b"read me"])
    before = {t: _next_id(target, auth, t) for t in (outside, readonly)}
    with _as(target, auth.restricted_token) as w:
        for topic in (outside, readonly):
            for ack in (Ack.NONE, Ack.WRITTEN, Ack.DURABLE):
                with ctx.step("NMQ-10-2", "NMQ-10-3"):
                    rid = w.next_id()
                    w.send(Publish(rid, topic, ack, _one(b"forged")))
                    _denied(w.recv_response(5.0), f"PUBLISH ack {ack.name} to {topic}")
        with ctx.step("NMQ-10-3", "NMQ-8-2"):
            alive(w, "NMQ-10-3")
        with ctx.step("NMQ-10-2"):
            publish(w, _name(auth, ctx, "rw", "mine"), [b"mine"])
    with ctx.step("NMQ-10-3"):
        after = {t: _next_id(target, auth, t) for t in (outside, readonly)}
        check(after == before, f"denied PUBLISHes appended records: next ids {before} -> {after}")


@case("security.subscribe-denied", "the restricted principal's SUBSCRIBE to a topic outside its grants is "
      "PERMISSION_DENIED, and no record of it is delivered; SUBSCRIBE to a topic it may only read is served",
      layer="wire", rules=("NMQ-10-2", "NMQ-10-3"))
def subscribe_denied(ctx: Context) -> None:
    auth, target = _setup(ctx)
    outside, readonly = ctx.topic("secret"), _name(auth, ctx, "ro", "feed")
    with _as(target, auth.token) as admin:
        publish(admin, outside, [b"secret"])
        publish(admin, readonly, [b"news"])
    with _as(target, auth.restricted_token) as w:
        with ctx.step("NMQ-10-2", "NMQ-10-3"):
            for start in (Start.EARLIEST, Start.LATEST):
                _denied(_ask(w, Subscribe(w.next_id(), outside, start, 0, 100)), f"SUBSCRIBE {outside}")
        with ctx.step("NMQ-10-2"):
            sub = subscribe(w, readonly)
            got = w.collect(sub.sub_id, 1, timeout=5.0)
            check([r.payload for r in got] == [b"news"], f"the readable topic delivered {got!r}")
        with ctx.step("NMQ-10-3"):
            time.sleep(0.3)
            w.send(Ping(w.next_id(), 7))
            f = w.recv_response(5.0)
            leaked = [d for d in w.deliveries if d.sub_id != sub.sub_id]
            check(isinstance(f, Pong) and not leaked, f"after a denied SUBSCRIBE: {f!r}, deliveries {leaked!r}")


@case("security.create-denied", "a PUBLISH or SUBSCRIBE of the restricted principal that would create a topic it may "
      "publish to and read but not create is PERMISSION_DENIED and creates nothing; once the admin created it, the "
      "same PUBLISH and SUBSCRIBE succeed; inside its create grant it creates topics", layer="wire",
      rules=("NMQ-10-2", "NMQ-10-3"))
def create_denied(ctx: Context) -> None:
    auth, target = _setup(ctx)
    nc, ro = _name(auth, ctx, "nc", "nocreate"), _name(auth, ctx, "ro", "nocreate")
    with _as(target, auth.restricted_token) as w:
        with ctx.step("NMQ-10-2", "NMQ-10-3"):
            _denied(_ask(w, Publish(w.next_id(), nc, Ack.WRITTEN, _one())), f"PUBLISH creating {nc}")
            _denied(_ask(w, Subscribe(w.next_id(), nc, Start.EARLIEST, 0, 10)), f"SUBSCRIBE creating {nc}")
            _denied(_ask(w, Subscribe(w.next_id(), ro, Start.EARLIEST, 0, 10)), f"SUBSCRIBE creating {ro}")
            check(_next_id(target, auth, nc) is None and _next_id(target, auth, ro) is None,
                  "a denied creation created the topic")
        with _as(target, auth.token) as admin:
            publish(admin, nc, [b"made by the admin"])
        with ctx.step("NMQ-10-2"):
            publish(w, nc, [b"now it exists"])
            subscribe(w, nc)
            publish(w, _name(auth, ctx, "rw", "created"), [b"created by the restricted principal"])


@case("security.group-denied", "a SUBSCRIBE of the restricted principal with a consumer group it holds no grant on "
      "is PERMISSION_DENIED, on a topic it may read", layer="wire", rules=("NMQ-10-2", "NMQ-10-3"),
      needs=Capability.CONSUMER_GROUPS)
def group_denied(ctx: Context) -> None:
    auth, target = _setup(ctx)
    topic = _name(auth, ctx, "rw", "grp")
    with _as(target, auth.restricted_token) as w:
        publish(w, topic, [b"x"])
        with ctx.step("NMQ-10-2", "NMQ-10-3"):
            _denied(_ask(w, Subscribe(w.next_id(), topic, Start.EARLIEST, 0, 10, "cf-no-grant-group")),
                    "SUBSCRIBE with a group outside the grants")


def _shape(f: Frame, name: str) -> tuple[object, ...]:
    """What an answer says, with the topic's name taken out."""
    if isinstance(f, Error):
        return ("ERROR", f.code, f.rule, f.message.replace(name, "<topic>"))
    return (type(f).__name__,)


@case("security.no-leak", "for a topic outside the restricted principal's grants, PUBLISH, SUBSCRIBE and METADATA "
      "get the same answers (code, rule, message up to the name) whether the topic exists or not, METADATA is "
      "never UNKNOWN_TOPIC, and the topic list shows only topics it may publish to or read", layer="wire",
      rules=("NMQ-10-4", "NMQ-10-2"))
def no_leak(ctx: Context) -> None:
    auth, target = _setup(ctx)
    exists, absent = ctx.topic("exists"), ctx.topic("absent")
    mine, readable = _name(auth, ctx, "rw", "listed"), _name(auth, ctx, "ro", "listed")
    with _as(target, auth.token) as admin:
        publish(admin, exists, [b"x"])
        publish(admin, readable, [b"x"])
    with _as(target, auth.restricted_token) as w:
        publish(w, mine, [b"x"])
        requests: dict[str, Callable[[str], Frame]] = {
            "PUBLISH written": lambda t: Publish(w.next_id(), t, Ack.WRITTEN, _one()),
            "PUBLISH durable": lambda t: Publish(w.next_id(), t, Ack.DURABLE, _one()),
            "SUBSCRIBE earliest": lambda t: Subscribe(w.next_id(), t, Start.EARLIEST, 0, 10),
            "SUBSCRIBE id 1": lambda t: Subscribe(w.next_id(), t, Start.ID, 1, 10),
            "SUBSCRIBE id 99": lambda t: Subscribe(w.next_id(), t, Start.ID, 99, 10),
            "METADATA": lambda t: Metadata(w.next_id(), t),
        }
        for label, make in requests.items():
            with ctx.step("NMQ-10-4"):
                a, b = _ask(w, make(exists)), _ask(w, make(absent))
                check(not is_error(a, ErrorCode.UNKNOWN_TOPIC) and not is_error(b, ErrorCode.UNKNOWN_TOPIC),
                      f"{label}: UNKNOWN_TOPIC tells the restricted principal which topic exists: {a!r} / {b!r}")
                check(_shape(a, exists) == _shape(b, absent),
                      f"{label} answers differ for an existing and a missing topic: {a!r} / {b!r}")
                _denied(a, f"{label} outside the grants")
        with ctx.step("NMQ-10-4"):
            f = _ask(w, Metadata(w.next_id(), ""))
            check(isinstance(f, MetadataOk), f"METADATA of every topic answered {f!r}")
            assert isinstance(f, MetadataOk)
            names = {t.name for t in f.topics}
            hidden = sorted(n for n in names if not n.startswith((f"{auth.prefix}rw-", f"{auth.prefix}ro-",
                                                                  f"{auth.prefix}nc-")))
            check(not hidden, f"the topic list shows the restricted principal topics outside its grants: {hidden[:5]}")
            check({mine, readable} <= names, f"the topic list lacks topics it may use ({mine}, {readable})")
    with ctx.step("NMQ-10-4"):
        check(_next_id(target, auth, absent) is None, f"denied requests created {absent}")


def _quota(ctx: Context) -> tuple[AuthSpec, Target]:
    auth, target = _setup(ctx)
    if not auth.quota_token:
        raise Skipped("[target.auth] has no quota_token")
    return auth, target


@case("security.quota-connections", "the quota principal's connection beyond its quota is TOO_MANY_CONNECTIONS "
      "and closed, its other connections and the admin's go on, and once one closed the next HELLO succeeds",
      layer="wire", rules=("NMQ-10-7", "NMQ-10-10", "NMQ-8-2"), exclusive=True)
def quota_connections(ctx: Context) -> None:
    auth, target = _quota(ctx)
    n = auth.quota_max_connections
    if not n:
        raise Skipped("[target.auth] declares no quota_max_connections")
    held = [target.client(token=auth.quota_token) for _ in range(n)]
    try:
        with ctx.step("NMQ-10-7", "NMQ-8-2"), target.raw_client() as extra:
            extra.send(Hello(1, PROTOCOL_VERSION, "one-too-many", auth.quota_token.encode()), Ping(2, 2))
            frames = closed(extra)
            check(any(is_error(f, ErrorCode.TOO_MANY_CONNECTIONS) for f in frames)
                  and not any(isinstance(f, HelloOk | Pong) for f in frames),
                  f"connection {n + 1} of a principal with a quota of {n} got {frames!r}")
        with ctx.step("NMQ-10-10", "NMQ-10-7"):
            for w in held:
                alive(w, "NMQ-10-7")
            with _as(target, auth.token) as admin:
                alive(admin, "NMQ-10-10")
        held.pop().close()
        with ctx.step("NMQ-10-7"):
            deadline = time.monotonic() + 5
            while True:
                try:
                    held.append(target.client(token=auth.quota_token))
                    break
                except AssertionError:
                    check(time.monotonic() < deadline, "a connection slot freed by a close never came back")
                    time.sleep(0.1)
    finally:
        for w in held:
            w.close()
        time.sleep(0.3)  # the next case's connections find the slots free


@case("security.quota-topics", "the quota principal's PUBLISH or SUBSCRIBE that would create a topic beyond its topic "
      "quota is RESOURCE_LIMIT citing NMQ-10-8 and creates nothing; its existing topics stay usable, and the admin "
      "still creates topics", layer="wire", rules=("NMQ-10-8", "NMQ-10-10"), exclusive=True)
def quota_topics(ctx: Context) -> None:
    auth, target = _quota(ctx)
    n = auth.quota_max_topics
    if not n:
        raise Skipped("[target.auth] declares no quota_max_topics")
    with _as(target, auth.quota_token) as w:
        made: list[str] = []
        refused: Frame | None = None
        with ctx.step("NMQ-10-8"):
            for _ in range(n + 1):  # fewer succeed when an earlier run already used some of the quota
                t = _name(auth, ctx, "q", "quota")
                f = _ask(w, Publish(w.next_id(), t, Ack.WRITTEN, _one()))
                if is_error(f, ErrorCode.RESOURCE_LIMIT):
                    refused = f
                    break
                made.append(t)
            check(refused is not None, f"{len(made)} topics created by a principal with a topic quota of {n}")
            assert isinstance(refused, Error)
            check(refused.rule == "NMQ-10-8", f"the refusal cites {refused.rule!r}, not NMQ-10-8")
            t = _name(auth, ctx, "q", "quota-sub")
            f = _ask(w, Subscribe(w.next_id(), t, Start.EARLIEST, 0, 10))
            check(is_error(f, ErrorCode.RESOURCE_LIMIT), f"a SUBSCRIBE creating a topic over the quota answered {f!r}")
            check(_next_id(target, auth, t) is None, "a refused creation created the topic")
            for t in made:
                publish(w, t, [b"still usable"])
        with ctx.step("NMQ-10-10"), _as(target, auth.token) as admin:
            publish(admin, ctx.topic("admin-after-quota"), [b"x"])


@case("security.quota-topics-restart", "the quota principal's topic quota, used up, is still used up after a graceful "
      "restart and after a kill and restart of the target (a launched target only)", layer="wire",
      rules=("NMQ-10-8",), exclusive=True)
def quota_topics_restart(ctx: Context) -> None:
    auth, target = _quota(ctx)
    if not auth.quota_max_topics:
        raise Skipped("[target.auth] declares no quota_max_topics")
    if not target.can_crash or target.proc is None:
        raise Skipped("the kit did not launch the authenticating instance, so it cannot restart it")

    def refused() -> Frame:
        with _as(target, auth.quota_token) as w:
            return _ask(w, Publish(w.next_id(), _name(auth, ctx, "q", "restart"), Ack.WRITTEN, _one()))

    for _ in range(auth.quota_max_topics + 1):  # use the quota up (security.quota-topics may have)
        if is_error(f := refused(), ErrorCode.RESOURCE_LIMIT):
            break
    with ctx.step("NMQ-10-8"):
        check(is_error(f, ErrorCode.RESOURCE_LIMIT), f"{auth.quota_max_topics + 1} creations, none refused: {f!r}")
    for how, restart in (("a graceful restart", lambda: (target.stop(), target.start())),
                         ("a kill and restart", target.restart_after_crash)):
        restart()
        with ctx.step("NMQ-10-8"):
            f = refused()
            check(is_error(f, ErrorCode.RESOURCE_LIMIT) and isinstance(f, Error) and f.rule == "NMQ-10-8",
                  f"after {how} a creation over the used-up topic quota answered {f!r}")


@case("security.quota-publish", "the quota principal publishing as fast as it can for 1.5 s gets no more than its "
      "burst + rate x time + one batch appended; the PUBLISHes refused are RESOURCE_LIMIT citing NMQ-10-9 and append "
      "nothing; the admin publishing meanwhile is never refused; after the debt is repaid it publishes again",
      layer="wire", rules=("NMQ-10-9", "NMQ-10-10", "NMQ-8-2"), exclusive=True)
def quota_publish(ctx: Context) -> None:
    auth, target = _quota(ctx)
    rate, burst = auth.quota_publish_bytes_per_s, auth.quota_publish_burst_bytes or int(auth.quota_publish_bytes_per_s)
    if not rate:
        raise Skipped("[target.auth] declares no quota_publish_bytes_per_s")
    payload = b"q" * 1000
    size = len(RecordBatch.from_payloads([payload]).data)
    with _as(target, auth.quota_token) as w, _as(target, auth.token) as admin:
        topic, other = _name(auth, ctx, "q", "rate"), ctx.topic("admin-rate")
        publish(admin, topic, [b"0"])  # made by the admin: the quota principal's topic quota may be used up
        first = _next_id(target, auth, topic)
        admitted = refused = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            f = _ask(w, Publish(w.next_id(), topic, Ack.WRITTEN, RecordBatch.from_payloads([payload])))
            if is_error(f, ErrorCode.RESOURCE_LIMIT):
                with ctx.step("NMQ-10-9"):
                    check(isinstance(f, Error) and f.rule == "NMQ-10-9", f"the refusal cites {f!r}, not NMQ-10-9")
                refused += 1
            else:
                with ctx.step("NMQ-10-9"):
                    check(not isinstance(f, Error), f"a PUBLISH within the quota answered {f!r}")
                admitted += 1
            if (admitted + refused) % 8 == 0:
                with ctx.step("NMQ-10-10"):
                    a = _ask(admin, Publish(admin.next_id(), other, Ack.WRITTEN, RecordBatch.from_payloads([payload])))
                    check(not isinstance(a, Error), f"the admin's PUBLISH was refused while another principal was "
                          f"over its quota: {a!r}")
        elapsed = time.monotonic() - t0
        with ctx.step("NMQ-10-9"):
            limit = burst + rate * elapsed + size
            check(refused > 0, f"{admitted} PUBLISHes of {size} bytes in {elapsed:.2f} s, none refused, with a quota of "
                  f"{rate:g} bytes/s")
            check(admitted * size <= limit, f"{admitted * size} bytes admitted in {elapsed:.2f} s: more than burst "
                  f"{burst} + {rate:g}/s + one batch = {limit:.0f}")
            last = _next_id(target, auth, topic)
            check(first is not None and last is not None and last - first == admitted,
                  f"{admitted} PUBLISHes acked but the topic grew by {None if last is None or first is None else last - first}")
            ctx.note(f"{admitted} admitted, {refused} refused in {elapsed:.2f} s ({admitted * size / elapsed:.0f} B/s)")
        with ctx.step("NMQ-10-9", "NMQ-8-2"):
            time.sleep(min(10.0, (size * 2) / rate + 0.2))
            f = _ask(w, Publish(w.next_id(), topic, Ack.WRITTEN, RecordBatch.from_payloads([payload])))
            check(not isinstance(f, Error), f"after the debt was repaid a PUBLISH answered {f!r}")


@case("security.failure-rate", "once an address has failed authentication more often than its allowance, even the "
      "right token from it is AUTH_FAILED citing NMQ-10-11 (no guess can succeed then); after the allowance has "
      "refilled, the right token is accepted again", layer="wire", rules=("NMQ-10-11",), exclusive=True)
def failure_rate(ctx: Context) -> None:
    auth, target = _setup(ctx)
    if not auth.failure_burst or not auth.failure_refill_per_s:
        raise Skipped("[target.auth] declares no failure_burst / failure_refill_per_s")
    name = auth.restricted_token.partition(":")[0]
    limited = False
    tries = 3 * auth.failure_burst + 10  # the allowance refills while the guesses are checked
    for k in range(tries):
        with target.raw_client() as w:
            w.send(Hello(1, PROTOCOL_VERSION, "guess", f"{name}:guess-{k}-{'g' * 24}".encode()))
            frames = closed(w, "NMQ-10-11")
        if any(isinstance(f, Error) and f.code == ErrorCode.AUTH_FAILED and f.rule == "NMQ-10-11" for f in frames):
            limited = True
            break
    soft_check(limited, f"{tries} wrong tokens in a row from one address, none refused citing NMQ-10-11", "NMQ-10-11")
    with target.raw_client() as w:
        w.send(Hello(1, PROTOCOL_VERSION, "right", auth.restricted_token.encode()))
        frames = closed(w, "NMQ-10-11")
        soft_check(any(is_error(f, ErrorCode.AUTH_FAILED) for f in frames) and
                   not any(isinstance(f, HelloOk) for f in frames),
                   f"right after a refusal for too many failures the right token was answered {frames!r}",
                   "NMQ-10-11")
    refill = auth.failure_burst / auth.failure_refill_per_s
    deadline = time.monotonic() + refill + 5
    while True:  # and the address is let in again
        try:
            target.client(token=auth.restricted_token).close()
            break
        except AssertionError:
            check(time.monotonic() < deadline, "the right token was still refused after the allowance refilled",
                  "NMQ-10-11")
            time.sleep(0.5)
    time.sleep(refill)  # the whole allowance back: the cases after this one may fail authentication on purpose


@case("security.audit-log", "a failed authentication is in the launched target's log, and no part of the token "
      "presented is", layer="wire", rules=("NMQ-10-13",))
def audit_log(ctx: Context) -> None:
    auth, target = _setup(ctx)
    if target.proc is None:
        raise Skipped("the kit did not launch the authenticating instance, so it cannot read its log")
    secret = f"leak{ctx.rng.getrandbits(64):016x}"
    before = target.log_path.stat().st_size if target.log_path.exists() else 0
    with target.raw_client() as w:
        w.send(Hello(1, PROTOCOL_VERSION, "audited", f"{auth.restricted_token.partition(':')[0]}:{secret}".encode()))
        closed(w, "NMQ-10-1")
    time.sleep(0.5)
    log = target.log_path.read_bytes()[before:].decode(errors="replace")
    soft_check(secret not in log and secret[4:12] not in log, "the target logged the token of a failed HELLO",
               "NMQ-10-13")
    soft_check(bool(log.strip()), "the target logged nothing about a failed authentication", "NMQ-10-13")
