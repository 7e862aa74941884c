"""The data-plane suite of issue 12: every workload on NanoMQ and its peers, in interleaved rounds.

:func:`run_suite` starts what it measures (the installed NanoMQ broker, and ``redis-server`` /
``nats-server -js`` when installed), then runs ``rounds`` rounds; each round measures the
calibrations again and then every workload on every system, the systems in a rotated order, so
each figure and the baseline it is divided by come from the same minute. Headlines are medians
over rounds; every ratio is the median of the per-round ratios. Afterwards the scaling table
(topics × connections) on a fresh broker, and the broker's idle RSS and CPU.

Workloads (ids as in the results JSON):

=============  ===================================================================================
``acked1k``    1 KiB, acked one by one, a subscriber process running (records/s acked)
``batch1k``    1 KiB, batches / pipelines of 256, a subscriber process running (records/s delivered)
``batch64``    NanoMQ only: the same with 64 B records
``oneway64``   64 B open loop at ``rate`` (4,000/s): one-way latency (and each acked publish call's
               round trip)
``cpu1000``    NanoMQ ack=written, 64 B open loop at 1,000/s: broker CPU per record (and e2e latency)
``durable1000`` NanoMQ ack=durable, 64 B open loop at 1,000/s: e2e and ack latency, largest stall
``drain64``    a backlog of 64 B records read by a subscriber that joins afterwards (NanoMQ, Redis)
``scale``      T topics × C connections (1/100/1000 × 1/10/100), NanoMQ
=============  ===================================================================================
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from nanomq.bench import calibrate, peers, workloads
from nanomq.bench.hist import Histogram
from nanomq.bench.peers import NanoMQServer
from nanomq.bench.results import Figure, Run, median
from nanomq.bench.system import Window, cpu_seconds, loadavg, machine, proc_status

__all__ = ["FULL", "QUICK", "Options", "Sizes", "run_suite"]


@dataclass(frozen=True, slots=True)
class Sizes:
    """How long each part runs (``QUICK`` shrinks everything for a smoke run)."""

    rounds: int = 3
    oneway_seconds: float = 5.0
    cpu_seconds: float = 10.0
    durable_seconds: float = 10.0
    acked_seconds: float = 2.0
    batch_seconds: float = 2.0
    backlog: int = 500_000
    rtt_seconds: float = 2.0
    rtt_back_to_back: int = 20_000
    relay_seconds: float = 3.0
    fsync_seconds: float = 1.5
    scale_seconds: float = 2.0
    scale_topics: tuple[int, ...] = (1, 100, 1000)
    scale_connections: tuple[int, ...] = (1, 10, 100)
    idle_seconds: float = 3.0


FULL = Sizes()
QUICK = Sizes(rounds=1, oneway_seconds=0.5, cpu_seconds=1.0, durable_seconds=1.0, acked_seconds=0.3,
              batch_seconds=0.3, backlog=20_000, rtt_seconds=0.5, rtt_back_to_back=1_000, relay_seconds=0.5,
              fsync_seconds=0.3, scale_seconds=0.3, scale_topics=(1, 10), scale_connections=(1, 4),
              idle_seconds=0.5)

ALL_PEERS = ("redis", "nats", "jetstream", "zmq", "mpqueue")


@dataclass(slots=True)
class Options:
    """What :func:`run_suite` runs."""

    sizes: Sizes = FULL
    rate: float = 4000.0
    """the one-way latency workload's rate (records/s)"""
    cpu_rate: float = 1000.0
    """rate of the broker-CPU and durable workloads, and of the paced calibrations"""
    spin_us: int = 0
    """> 0: also run NanoMQ with the subscriber busy-polling this long (and the broker with
    --busy-poll when it has that option)"""
    busy_poll_broker: bool = True
    """with ``spin_us``: run the spinning subscriber against a second broker started with
    --busy-poll (when the installed broker has it); False: against the blocking broker"""
    peers: tuple[str, ...] = ALL_PEERS
    broker_args: tuple[str, ...] = ()
    scaling: bool = True
    target: NanoMQServer | None = None
    """the NanoMQ broker to measure, also for the scaling table (started here if it is not running;
    the caller stops it); None: launch the installed broker (and a fresh one for the scaling table)"""
    command: str = ""
    log: Callable[[str], None] = field(default=lambda s: None)


# ---------------------------------------------------------------- figure builders


def _lat_figure(fid: str, label: str, system: str, workload: str, hists: list[Histogram | None], wait: str,
                stat: str = "p50", windows: list[dict[str, float]] | None = None, **extra: Any) -> Figure:
    merged = Histogram()
    rps: list[dict[str, float]] = []
    for h in hists:
        if h is None or h.count == 0:
            rps.append({k: float("nan") for k in ("p1", "p5", "p10", "p25", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean",
                                                  "min")}
                       | {"count": 0.0})
            continue
        merged.merge(h)
        rps.append(h.summary().as_dict(1000.0))
    rounds = [rp[stat] for rp in rps]
    return Figure(fid, label, system, workload, "us", median(rounds), rounds, stat, False,
                  merged.summary().as_dict(1000.0) if merged.count else None, rps, merged.encode() if merged.count else None,
                  wait, load=windows or [], extra=extra)


def _value_figure(fid: str, label: str, system: str, workload: str, unit: str, rounds: list[float],
                  higher: bool, wait: str | None = None, windows: list[dict[str, float]] | None = None,
                  **extra: Any) -> Figure:
    return Figure(fid, label, system, workload, unit, median(rounds), rounds, "value", higher, wait=wait,
                  load=windows or [], extra=extra)


def _calibrate(fig: Figure, calib: Figure | None, per_round: Callable[[float, float], float]) -> None:
    """Set ``fig``'s calibration and the median of its per-round ratios to it."""
    if calib is None:
        return
    fig.calibration = calib.id
    rs = [per_round(a, b) if b == b and b else float("nan")
          for a, b in zip(fig.rounds, calib.rounds, strict=False)]
    fig.ratio = median(rs)
    fig.extra["ratio_rounds"] = rs


# ---------------------------------------------------------------- the run


class _Servers:
    def __init__(self) -> None:
        self.nano: peers.NanoMQServer | None = None
        self.spin: peers.NanoMQServer | None = None
        self.redis: peers.RedisServer | None = None
        self.nats: peers.NatsServer | None = None

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for name in ("spin", "nano"):
            s = getattr(self, name)
            if s is not None:
                codes[name] = s.stop()
                setattr(self, name, None)
        for name in ("redis", "nats"):
            s = getattr(self, name)
            if s is not None:
                s.stop()
                setattr(self, name, None)
        return codes


def _git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, timeout=10,
                             check=False)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--", "../../nanomq"],
                               capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    commit = out.stdout.decode().strip()
    return commit + (" (+ uncommitted changes under nanomq/)" if commit and dirty.stdout.strip() else "")


def run_suite(opts: Options) -> Run:
    """Run the suite; returns every figure (see :mod:`nanomq.bench.results`)."""
    import nanomq

    sz, log = opts.sizes, opts.log
    run = Run()
    t_start = time.monotonic()
    loads = [loadavg()]
    run.meta = {"date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "command": opts.command,
                "machine": machine(), "nanomq": {"version": nanomq.__version__, "path": os.path.dirname(nanomq.__file__),
                                                 "commit": _git_commit()},
                "rounds": sz.rounds, "rate": opts.rate, "cpu_rate": opts.cpu_rate, "spin_us": opts.spin_us,
                "sizes": {k: getattr(sz, k) for k in sz.__dataclass_fields__}, "broker_args": list(opts.broker_args),
                "peers": {}}
    srv = _Servers()
    failures: list[dict[str, str]] = []
    try:
        _start_servers(srv, opts, run, log)
        plan = _plan(srv, opts, run)
        out: dict[tuple[str, str], list[workloads.Outcome | None]] = {}
        cal: dict[str, list[Any]] = {k: [] for k in ("rtt", "relay", "relay_fast", "fsync", "memcpy", "win")}
        assert srv.nano is not None and srv.nano.pid is not None
        fresh_w = Window.open()
        time.sleep(0.3)
        rss_fresh = proc_status(srv.nano.pid)
        fresh_w.close()
        for r in range(sz.rounds):
            log(f"round {r + 1}/{sz.rounds}: calibrations (load {loadavg():.2f})")
            _calibrations(cal, opts, srv.nano.data_dir or "/tmp")
            loads.append(loadavg())
            for wl, systems, fn in plan:
                k = r % len(systems)
                for peer in systems[k:] + systems[:k]:
                    log(f"round {r + 1}/{sz.rounds}: {wl} {peer.label}")
                    try:
                        o = fn(peer)
                    except Exception as e:
                        if not srv.nano.alive():
                            raise RuntimeError(f"the NanoMQ broker died during {wl} ({peer.label}); its log:\n"
                                               f"{srv.nano.log_tail()}") from e
                        log(f"  !! {peer.label} {wl} failed: {e!r}")
                        failures.append({"system": peer.label, "workload": wl, "round": str(r + 1),
                                         "error": repr(e)[:2000]})
                        o = None
                    out.setdefault((wl, peer.key), [None] * sz.rounds)[r] = o
            loads.append(loadavg())
        labels = {p.key: p for _, systems, _ in plan for p in systems}
        _build(run, out, cal, labels, opts)
        _compare(run, opts)
        time.sleep(1.0)
        rss_idle = proc_status(srv.nano.pid)
        log(f"broker idle CPU over {sz.idle_seconds:g} s ...")
        c0, w0 = cpu_seconds(srv.nano.pid), time.monotonic()
        w = Window.open()
        time.sleep(sz.idle_seconds)
        idle = 100.0 * (cpu_seconds(srv.nano.pid) - c0) / (time.monotonic() - w0)
        wins = [w.close().as_dict()]
        run.add(_value_figure("broker/rss_fresh", "broker VmRSS, fresh", "NanoMQ", "broker", "MB",
                              [rss_fresh.get("VmRSS", 0.0)], False, windows=[fresh_w.as_dict()], status=rss_fresh))
        run.add(_value_figure("broker/rss_idle", "broker RssAnon, idle after the rounds", "NanoMQ", "broker", "MB",
                              [rss_idle.get("RssAnon", 0.0)], False, windows=wins, status=rss_idle))
        run.add(_value_figure("broker/idle_cpu", "broker CPU at idle", "NanoMQ", "broker", "%", [idle], False,
                              windows=wins))
        for key in ("spin", "nano"):  # stop the measured brokers before the scaling broker starts
            s = getattr(srv, key)
            if s is not None and not (key == "nano" and opts.target is not None):
                run.meta.setdefault("broker_exit", {})[key] = s.stop()
                setattr(srv, key, None)
        if opts.scaling:
            _scaling(run, opts, log, failures)
        loads.append(loadavg())
    finally:
        if opts.target is not None:
            srv.nano = None  # the caller's: not stopped here
        codes = srv.stop()
        if codes:
            run.meta.setdefault("broker_exit", {}).update(codes)
    run.meta["failures"] = failures
    run.meta["load1"] = {"samples": [round(x, 2) for x in loads], "min": round(min(loads), 2),
                         "max": round(max(loads), 2), "median": round(median(loads), 2)}
    run.meta["seconds"] = round(time.monotonic() - t_start, 1)
    return run


def _start_servers(srv: _Servers, opts: Options, run: Run, log: Callable[[str], None]) -> None:
    args = list(opts.broker_args)
    srv.nano = (opts.target or peers.NanoMQServer(args)).start()
    ver = subprocess.run([sys.executable, "-m", "nanomq.cli.broker", "--version"], capture_output=True, timeout=60,
                         check=False)
    run.meta["broker"] = {"address": srv.nano.address, "args": args, "launch": f"{sys.executable} -m nanomq.cli.broker",
                          "version": (ver.stdout or ver.stderr).decode(errors="replace").strip(),
                          # what the broker's --loop auto picks (uvloop when installed, as of 2026-12)
                          "uvloop_installed": importlib.util.find_spec("uvloop") is not None,
                          "loop_option": peers.broker_option("--loop"),
                          "data_plane_option": peers.broker_option("--data-plane")}
    if opts.spin_us and not opts.busy_poll_broker:
        run.meta["broker"]["busy_poll"] = None
        log("the spin rows use the blocking broker (--no-busy-poll-broker)")
    elif opts.spin_us:
        busy = peers.broker_option("--busy-poll")
        if busy is not None:  # "--busy-poll US" spins that long; a bare "--busy-poll" just spins
            flag = ["--busy-poll", str(opts.spin_us)] if busy else ["--busy-poll"]
            run.meta["broker"]["busy_poll"] = flag
            srv.spin = peers.NanoMQServer([*args, *flag]).start()
        else:
            run.meta["broker"]["busy_poll"] = None
            log("the installed broker has no --busy-poll option: the spin rows use the blocking broker")
    want = set(opts.peers)
    if want & {"redis"}:
        why = peers.unavailable("redis")
        if why is None:
            try:
                srv.redis = peers.RedisServer().start()
                info: dict[str, Any] = {"server": srv.redis.version, **peers.RedisPeer.client_info()}
                run.meta["peers"]["redis"] = info
            except Exception as e:
                why = f"redis-server failed to start: {e}"
        if why:
            run.skipped.append({"system": "Redis streams", "reason": why})
    if want & {"nats", "jetstream"}:
        why = peers.unavailable("nats")
        if why is None:
            try:
                srv.nats = peers.NatsServer().start()
                run.meta["peers"]["nats"] = {"server": srv.nats.version, **peers.nats_client_info()}
            except Exception as e:
                why = f"nats-server failed to start: {e}"
        if why:
            for name in ("NATS core", "JetStream"):
                if name == "NATS core" and "nats" in want or name == "JetStream" and "jetstream" in want:
                    run.skipped.append({"system": name, "reason": why})
    if "zmq" in want and (why := peers.unavailable("zmq")):
        run.skipped.append({"system": "pyzmq PUSH/PULL", "reason": why})
    for s in run.skipped:
        log(f"skipped {s['system']}: {s['reason']}")


def _plan(srv: _Servers, opts: Options, run: Run) -> list[tuple[str, list[peers.Peer], Callable[[peers.Peer], Any]]]:
    sz = opts.sizes
    assert srv.nano is not None
    addr, pid = srv.nano.address, srv.nano.pid
    written = peers.NanoMQPeer(addr, "written", server_pid=pid)
    durable = peers.NanoMQPeer(addr, "durable", server_pid=pid)
    spin: list[peers.Peer] = []
    if opts.spin_us:
        s = srv.spin or srv.nano
        busy = " ".join(run.meta["broker"].get("busy_poll") or [])
        spin = [peers.NanoMQPeer(s.address, "written", server_pid=s.pid, spin_us=opts.spin_us,
                                 broker_wait=f"broker {busy}" if srv.spin else "broker blocking")]
    want = set(opts.peers)
    redis = [peers.RedisPeer(srv.redis)] if srv.redis else []
    nats = [peers.NatsCorePeer(srv.nats)] if srv.nats and "nats" in want else []
    js = [peers.JetStreamPeer(srv.nats)] if srv.nats and "jetstream" in want else []
    zmq = [peers.ZmqPeer()] if "zmq" in want and peers.unavailable("zmq") is None else []
    mpq = [peers.MpQueuePeer()] if "mpqueue" in want else []
    return [
        ("oneway64", [written, *spin, *redis, *nats, *zmq, *mpq],
         lambda p: workloads.paced(p, 64, opts.rate, sz.oneway_seconds)),
        ("acked1k", [written, durable, *spin, *redis, *js], lambda p: workloads.stream(p, 1024, 1, sz.acked_seconds)),
        ("batch1k", [written, durable, *redis, *nats, *js, *zmq, *mpq],
         lambda p: workloads.stream(p, 1024, 256, sz.batch_seconds)),
        ("batch64", [written], lambda p: workloads.stream(p, 64, 256, sz.batch_seconds)),
        ("cpu1000", [written], lambda p: workloads.paced(p, 64, opts.cpu_rate, sz.cpu_seconds)),
        ("durable1000", [durable], lambda p: workloads.paced(p, 64, opts.cpu_rate, sz.durable_seconds)),
        ("drain64", [written, *redis], lambda p: workloads.drain(p, 64, sz.backlog)),
    ]


def _calibrations(cal: dict[str, list[Any]], opts: Options, data_dir: str) -> None:
    sz = opts.sizes
    with _window() as w:
        cal["rtt"].append(calibrate.socket_rtt(opts.cpu_rate, sz.rtt_seconds, sz.rtt_back_to_back))
        cal["relay"].append(calibrate.relay_floor(opts.cpu_rate, sz.relay_seconds))
        cal["relay_fast"].append(calibrate.relay_floor(opts.rate, max(0.5, sz.relay_seconds / 2)))
        cal["fsync"].append(calibrate.fdatasync(data_dir, sz.fsync_seconds))
        cal["memcpy"].append(calibrate.memcpy())
    cal["win"].append(w.as_dict())


@contextlib.contextmanager
def _window() -> Any:
    w = Window.open()
    try:
        yield w
    finally:
        w.close()


# ---------------------------------------------------------------- figures


def _wins(outs: list[workloads.Outcome | None]) -> list[dict[str, float]]:
    return [o.window.as_dict() if o is not None and o.window is not None else {} for o in outs]


def _build(run: Run, out: dict[tuple[str, str], list[workloads.Outcome | None]], cal: dict[str, list[Any]],
           systems: dict[str, peers.Peer], opts: Options) -> None:
    nan = float("nan")
    cw = cal["win"]
    rtt_p = _lat_figure("calib/rtt_paced", f"raw socket RTT 64 B, paced {opts.cpu_rate:,.0f}/s", "raw socket",
                        "calibration", [x[0] for x in cal["rtt"]], "blocking sockets", windows=cw)
    rtt_b = _lat_figure("calib/rtt_b2b", "raw socket RTT 64 B, back to back", "raw socket", "calibration",
                        [x[1] for x in cal["rtt"]], "blocking sockets", windows=cw)
    relay: list[calibrate.RelayFloor] = cal["relay"]
    fast: list[calibrate.RelayFloor] = cal["relay_fast"]
    r1w = _lat_figure("calib/relay_one_way", f"raw relay one-way 64 B, {opts.cpu_rate:,.0f}/s "
                      "(publisher -> relay -> subscriber)", "raw relay", "calibration",
                      [x.one_way for x in relay], "blocking sockets", windows=cw)
    r1f = _lat_figure("calib/relay_one_way_fast", f"raw relay one-way 64 B, {opts.rate:,.0f}/s", "raw relay",
                      "calibration", [x.one_way for x in fast], "blocking sockets", windows=cw)
    floor = _value_figure("calib/kernel_floor", "kernel floor: recv + 2 sends waking blocked peers (CPU per record)",
                          "raw relay", "calibration", "us/record", [x.floor_ns / 1000 for x in relay], False,
                          "blocking sockets", windows=cw,
                          recv_us=[x.recv_cpu.percentile(50) / 1000 for x in relay],
                          send_ack_us=[x.ack_cpu.percentile(50) / 1000 for x in relay],
                          send_deliver_us=[x.deliver_cpu.percentile(50) / 1000 for x in relay],
                          clock_pair_ns=[x.clock_ns for x in relay], rate=opts.cpu_rate)
    rcpu = _value_figure("calib/relay_cpu", "raw relay process CPU per record (schedstat)", "raw relay",
                         "calibration", "us/record", [x.relay_cpu_per_record_ns / 1000 for x in relay], False,
                         "blocking sockets", windows=cw)
    fs = _lat_figure("calib/fdatasync", "raw pwrite 4 KiB + fdatasync, preallocated file, data dir's disk",
                     "raw disk", "calibration", cal["fsync"], "synchronous", windows=cw)
    mc = _value_figure("calib/memcpy", "memcpy 16 MiB", "raw memory", "calibration", "GB/s", cal["memcpy"], True,
                       windows=cw)
    for f in (rtt_p, rtt_b, r1w, r1f, floor, rcpu, fs, mc):
        run.add(f, calibration=True)

    def rounds(wl: str, key: str) -> list[workloads.Outcome | None]:
        return out.get((wl, key), [])

    for (wl, key), outs in out.items():
        p = systems[key]
        name = p.label
        wins = _wins(outs)
        if wl in ("oneway64", "cpu1000", "durable1000"):
            rate = opts.rate if wl == "oneway64" else opts.cpu_rate
            f = run.add(_lat_figure(f"{wl}/{key}/latency", f"{name}: one-way 64 B at {rate:,.0f}/s", name, wl,
                                    [o.latency if o else None for o in outs], p.wait, windows=wins,
                                    lost=[o.lost if o else None for o in outs]))
            _calibrate(f, r1f if wl == "oneway64" else r1w, lambda a, b: a / b)
            if p.acked:
                run.add(_lat_figure(f"{wl}/{key}/publish_rtt", f"{name}: publish call round trip 64 B at {rate:,.0f}/s",
                                    name, wl, [o.call if o else None for o in outs], "blocking publisher",
                                    windows=wins))
                run.add(_lat_figure(f"{wl}/{key}/ack", f"{name}: scheduled send -> ack, 64 B at {rate:,.0f}/s", name, wl,
                                    [o.ack if o else None for o in outs], "blocking publisher", windows=wins))
            run.add(_lat_figure(f"{wl}/{key}/lateness", f"{name}: publisher lateness at {rate:,.0f}/s", name, wl,
                                [o.late if o else None for o in outs], "paced publisher", windows=wins))
        else:
            size = 1024 if wl.endswith("1k") else 64
            f = run.add(_value_figure(f"{wl}/{key}/rate", f"{name}: {wl}", name, wl, "records/s",
                                      [o.rate if o else nan for o in outs], True, p.wait, wins,
                                      publish_rate=[o.publish_rate if o else None for o in outs],
                                      received=[o.received if o else None for o in outs],
                                      records=[o.records if o else None for o in outs],
                                      lost=[o.lost if o else None for o in outs],
                                      extra=[o.extra if o else None for o in outs]))
            if wl == "acked1k":
                _calibrate(f, rtt_b, lambda a, b: a * b / 1e6)  # rate / (raw round trips per second)
            else:
                _calibrate(f, mc, _bytes_vs_memcpy(size))
        for who in ("server", "publisher", "subscriber"):
            vals = [o.cpu_us.get(who, nan) if o else nan for o in outs]
            if all(v != v for v in vals):
                continue
            c = run.add(_value_figure(f"{wl}/{key}/{who}_cpu", f"{name}: {who} CPU per record, {wl}", name, wl,
                                      "us/record", vals, False, p.wait, wins))
            if who == "server" and wl == "cpu1000":
                _calibrate(c, floor, lambda a, b: a / b)
    fd = run.get("durable1000/nanomq-durable/latency")
    if fd is not None:
        _calibrate(fd, fs, lambda a, b: a / b)
        fd.extra["vs_fdatasync_p99"] = [a / b if b else nan for a, b in
                                        zip([rp["p99"] for rp in fd.round_percentiles or []],
                                            [rp["p99"] for rp in fs.round_percentiles or []], strict=False)]
    del rounds


def _bytes_vs_memcpy(size: int) -> Callable[[float, float], float]:
    """records/s of ``size`` bytes, GB/s of memcpy -> the ratio of the two byte rates."""
    return lambda rate, gbps: rate * size / (gbps * 1e9)


# ---------------------------------------------------------------- comparisons


def _compare(run: Run, opts: Options) -> None:
    spin = f"nanomq-written-spin{opts.spin_us}" if opts.spin_us else ""
    # The table of issue 12, as NanoMQ / peer ratios.
    for nano in ("nanomq-written", "nanomq-durable", spin):
        if not nano:
            continue
        for peer, pl in (("redis", "Redis XADD"), ("jetstream", "JetStream publish")):
            target = ""
            if peer == "redis" and nano == "nanomq-written":
                target = ">= 1.25"
            if peer == "redis" and nano == spin:
                target = ">= 2"
            run.compare(f"acked1k/{nano}/{peer}", f"1 KiB acked one by one, subscriber running: {nano} / {pl}",
                        f"acked1k/{nano}/rate", f"acked1k/{peer}/rate", target=target)
    for nano in ("nanomq-written", "nanomq-durable"):
        for peer, pl in (("redis", "Redis pipelined"), ("nats", "NATS core"), ("jetstream", "JetStream async"),
                         ("zmq", "pyzmq"), ("mpqueue", "multiprocessing.Queue")):
            target = ">= 10" if peer == "redis" and nano == "nanomq-written" else ""
            run.compare(f"batch1k/{nano}/{peer}", f"1 KiB batched 256, consumer running: {nano} / {pl}",
                        f"batch1k/{nano}/rate", f"batch1k/{peer}/rate", target=target)
    for nano in ("nanomq-written", spin):
        if not nano:
            continue
        for peer, pl in (("redis", "Redis streams"), ("nats", "NATS core"), ("zmq", "pyzmq"),
                         ("mpqueue", "multiprocessing.Queue")):
            for stat in ("p50", "p99", "p99.9"):
                target = ""
                if peer == "redis" and stat == "p50":
                    target = "<= 0.8" if nano == "nanomq-written" else "<= 0.3"
                run.compare(f"oneway64/{nano}/{peer}/{stat}", f"64 B one-way {opts.rate:,.0f}/s {stat}: {nano} / {pl}",
                            f"oneway64/{nano}/latency", f"oneway64/{peer}/latency", stat=stat, target=target)
        run.compare(f"rtt64/{nano}/redis", "64 B publish round trip p50: " + nano + " / Redis XADD",
                    f"oneway64/{nano}/publish_rtt", "oneway64/redis/publish_rtt", stat="p50")
    # The targets of issue 12 that are ratios to calibrations or absolute.
    run.compare("target/cpu_written", f"broker CPU per record, ack=written, {opts.cpu_rate:,.0f}/s / kernel floor",
                "cpu1000/nanomq-written/server_cpu", "calib/kernel_floor", target="<= 1.3")
    run.compare("target/cpu_batch", "broker CPU per record, batches of 256 x 1 KiB / 2 us",
                "batch1k/nanomq-written/server_cpu", None, absolute=2.0, target="<= 1")
    run.compare("target/durable_p99", f"durable e2e p99 at {opts.cpu_rate:,.0f}/s / raw fdatasync p99",
                "durable1000/nanomq-durable/latency", "calib/fdatasync", stat="p99", target="<= 3")
    run.compare("target/durable_ack_p99", f"durable ack p99 (scheduled -> ack) at {opts.cpu_rate:,.0f}/s / raw "
                "fdatasync p99", "durable1000/nanomq-durable/ack", "calib/fdatasync", stat="p99")
    run.compare("target/durable_stall", "durable largest e2e latency (stall) / 10 ms",
                "durable1000/nanomq-durable/latency", None, stat="max", absolute=10_000.0, target="<= 1")
    run.compare("target/durable_ack_stall", "durable largest ack latency (stall) / 10 ms",
                "durable1000/nanomq-durable/ack", None, stat="max", absolute=10_000.0, target="<= 1")
    f = run.get("acked1k/nanomq-durable/rate")
    fs = run.get("calib/fdatasync")
    if f is not None and fs is not None and fs.round_percentiles:
        # throughput x fdatasync p50 = throughput / (1 / p50)
        rs = [a * rp["p50"] / 1e6 for a, rp in zip(f.rounds, fs.round_percentiles, strict=False)]
        from nanomq.bench.results import Comparison, check

        c = Comparison("target/durable_rate", "durable 1 KiB acked one by one / (1 / raw fdatasync p50)",
                       f.id, fs.id, median(rs), rs, "value x p50", ">= 0.8")
        c.meets = check(c.value, c.target)
        run.comparisons.append(c)
    run.compare("target/batch_1m", "1 KiB batched 256 (written), consumer running / 1 M records/s",
                "batch1k/nanomq-written/rate", None, absolute=1e6, target=">= 1")
    run.compare("target/drain_2m", "delivery drain 64 B / 2 M records/s", "drain64/nanomq-written/rate", None,
                absolute=2e6, target=">= 1")
    run.compare("drain64/nanomq-written/redis", "delivery drain 64 B: NanoMQ / Redis XREAD",
                "drain64/nanomq-written/rate", "drain64/redis/rate")
    # spec/budgets.toml [broker] e2e budget: e2e p50 at 1000/s / paced raw RTT p50
    run.compare("budget/e2e_p50_vs_rtt", f"e2e p50 ack=written {opts.cpu_rate:,.0f}/s / raw RTT p50 paced",
                "cpu1000/nanomq-written/latency", "calib/rtt_paced", stat="p50", target="<= 2")


# ---------------------------------------------------------------- scaling


def _scaling(run: Run, opts: Options, log: Callable[[str], None], failures: list[dict[str, str]]) -> None:
    sz = opts.sizes
    if opts.target is not None:
        srv = opts.target.start()
    else:
        srv = peers.NanoMQServer([*opts.broker_args, "--log-segment-size", "4MB"]
                                 if "--log-segment-size" not in opts.broker_args else list(opts.broker_args)).start()
    try:
        base: Figure | None = None
        for t in sz.scale_topics:
            for c in sz.scale_connections:
                log(f"scaling: {t} topics x {c} connections (load {loadavg():.2f})")
                try:
                    o = workloads.scaling(srv.address, srv.pid, t, c, sz.scale_seconds)
                except Exception as e:
                    if not srv.alive():
                        raise RuntimeError(f"the scaling broker died at {t}x{c}; its log:\n{srv.log_tail()}") from e
                    failures.append({"system": "NanoMQ", "workload": f"scale {t}x{c}", "round": "1", "error": repr(e)})
                    continue
                wins = [o.window.as_dict()] if o.window else []
                f = run.add(_value_figure(f"scale/{t}x{c}/rate", f"{t} topics x {c} connections", "NanoMQ written",
                                          "scale", "records/s", [o.rate], True, "blocking subscriber; asyncio publishers",
                                          wins, topics=t, connections=c, batch=o.extra["batch"], size=o.extra["size"],
                                          processes=o.extra["processes"], delivered=o.received))
                lat = run.add(_lat_figure(f"scale/{t}x{c}/call", f"{t} topics x {c} connections: publish_batch round trip",
                                          "NanoMQ written", "scale", [o.call], "asyncio publishers", windows=wins,
                                          topics=t, connections=c))
                if "server" in o.cpu_us:
                    run.add(_value_figure(f"scale/{t}x{c}/server_cpu", f"{t} topics x {c} connections: broker CPU",
                                          "NanoMQ written", "scale", "us/record", [o.cpu_us["server"]], False,
                                          windows=wins, topics=t, connections=c))
                if base is None and t == sz.scale_topics[0] and c == sz.scale_connections[0]:
                    base = f
                if base is not None:
                    f.calibration, f.ratio = base.id, f.value / base.value if base.value else None
                del lat
        if base is not None:
            top = sz.scale_connections[-1]
            for t in sz.scale_topics:
                run.compare(f"scale/{t}x{top}", f"aggregate {t} topics x {top} connections / 1 x 1",
                            f"scale/{t}x{top}/rate", base.id, target=">= 0.8")
    finally:
        if opts.target is None:
            run.meta.setdefault("broker_exit", {})["scaling"] = srv.stop()


def quick(opts: Options) -> Options:
    """The same options with the quick sizes."""
    return replace(opts, sizes=QUICK)
