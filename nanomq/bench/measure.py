"""``nanomq-bench run``'s measurement: any broker that speaks the protocol, in repeated rounds.

A :class:`Profile` lists the workloads (:class:`Work`) and how long each part runs. :func:`measure`
runs ``rounds`` rounds against one :class:`~nanomq.bench.target.BenchTarget`; each round measures
the calibrations again and then every workload, their order rotated by one each round, so a figure
and the calibration it is divided by come from the same few seconds. Every figure keeps its value
of every round, and its per-round ratio to its calibration (``extra["ratio_rounds"]``): the gate
compares those per-round values with a baseline's.

Workloads (ids as in the results JSON; every client is ``nanomq.Publisher`` / ``Subscriber``,
publisher and subscriber in separate forked processes, :mod:`nanomq.bench.workloads`):

==========================  ==============================================================================
``e2e{rate}/written/…``     64 B, ack=written, open loop at ``rate``/s, the schedule in each payload:
                            ``latency`` (receive − scheduled send, per-round p50 / raw RTT paced p50),
                            ``publish_rtt`` (each publish call, p50 / raw RTT paced p50), ``server_cpu``
``durable{rate}/…``         the same with ack=durable: ``latency`` and ``ack`` (scheduled send → ack), each
                            per-round p50 / raw fdatasync p50 (when the data dir is local)
``acked{size}/{ack}/rate``  records of ``size`` B published one by one, each acked, a subscriber running;
                            × raw back-to-back RTT p50 (the share of raw round trips per second)
``batch{size}/{ack}/rate``  batches of 256, acked, a subscriber running: records/s delivered; bytes/s /
                            memcpy bytes/s; ``server_cpu`` per record
``drain{size}/rate``        a backlog read by a subscriber that joins afterwards; bytes/s / memcpy
``broker/rss``, ``broker/idle_cpu``  the broker's VmRSS and CPU at idle after the rounds (PID known)
==========================  ==============================================================================

Calibrations each round (:mod:`nanomq.bench.calibrate`): ``calib/rtt_paced`` and ``calib/rtt_b2b``
(raw 64 B loopback ping-pong between two processes, paced at the profile's calibration rate and back
to back), ``calib/fdatasync`` (pwrite 4 KiB + fdatasync of a preallocated file in the broker's data
directory, only when it is local), ``calib/memcpy`` (16 MiB, GB/s).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from nanomq.bench import calibrate, workloads
from nanomq.bench.hist import Histogram
from nanomq.bench.peers import NanoMQPeer
from nanomq.bench.results import Figure, Run, median
from nanomq.bench.suite import _calibrate, _git_commit, _lat_figure, _value_figure
from nanomq.bench.system import Window, awake_cpus, cpu_seconds_fine, loadavg, machine, proc_status
from nanomq.bench.target import BenchTarget

__all__ = ["ACKS", "GATE", "RUN", "Profile", "Work", "measure", "run_profile"]

ACKS = ("none", "written", "durable")


@dataclass(frozen=True, slots=True)
class Work:
    """One workload of a profile."""

    kind: str
    """"e2e" (open loop, ack=written), "durable" (open loop, ack=durable), "acked" (one by one),
    "batch" (batches of ``batch``), "drain" (a backlog of ``backlog`` records)"""
    size: int = 64
    ack: str = "written"
    rate: float = 1000.0
    """records/s of an open-loop workload"""
    seconds: float = 1.0
    batch: int = 256
    backlog: int = 20_000

    def __post_init__(self) -> None:
        if self.kind not in ("e2e", "durable", "acked", "batch", "drain"):
            raise ValueError(f"unknown workload kind {self.kind!r}")
        if self.size < workloads.HEAD:
            raise ValueError(f"records must be at least {workloads.HEAD} bytes (schedule, sequence, flag), not {self.size}")
        if self.ack not in ACKS:
            raise ValueError(f"ack must be one of {ACKS}, not {self.ack!r}")
        if self.rate <= 0 or self.seconds <= 0 or self.batch < 1 or self.backlog < 1:
            raise ValueError("rate, seconds, batch and backlog must be positive")

    @property
    def id(self) -> str:
        """The id prefix of this workload's figures."""
        if self.kind == "e2e":
            return f"e2e{self.rate:g}/{self.ack}"
        if self.kind == "durable":
            return f"durable{self.rate:g}"
        if self.kind == "drain":
            return f"drain{self.size}"
        return f"{self.kind}{self.size}/{self.ack}"

    def label(self) -> str:
        """What the tables print."""
        if self.kind == "e2e":
            return f"{self.size} B open loop at {self.rate:,.0f}/s, ack={self.ack}"
        if self.kind == "durable":
            return f"{self.size} B open loop at {self.rate:,.0f}/s, ack=durable"
        if self.kind == "acked":
            return f"{self.size} B acked one by one, ack={self.ack}"
        if self.kind == "batch":
            return f"{self.size} B in batches of {self.batch}, ack={self.ack}"
        return f"drain of {self.backlog:,} x {self.size} B"


@dataclass(frozen=True, slots=True)
class Profile:
    """What one run measures, and for how long."""

    works: tuple[Work, ...]
    rounds: int = 3
    calib_rate: float = 1000.0
    """rate of the paced raw RTT calibration"""
    rtt_seconds: float = 1.0
    rtt_back_to_back: int = 5_000
    fsync_seconds: float = 0.5
    memcpy_seconds: float = 0.1
    loop_seconds: float = 0.3
    """the Python event-loop server's round trip (calib/loop_rtt)"""
    speed_seconds: float = 0.2
    """the interpreter's speed (calib/python_speed)"""
    idle_seconds: float = 3.0
    """how long the broker's idle CPU is measured after the rounds (0: not measured; spec/budgets.toml
    says ~3 s), from /proc/<pid>/task/*/schedstat (ns), not 10 ms ticks"""
    awake_cpus: bool = False
    """keep every CPU from going idle during the rounds (:func:`nanomq.bench.system.awake_cpus`), so
    that round trips do not measure how deeply the machine's CPUs were sleeping"""

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if not self.works:
            raise ValueError("a profile needs at least one workload")
        ids = [w.id for w in self.works]
        if len(set(ids)) != len(ids):
            raise ValueError(f"two workloads of the profile have the same id: {ids}")

    def as_dict(self) -> dict[str, Any]:
        """For the results JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        """Inverse of :meth:`as_dict` (a baseline's profile)."""
        return cls(**{**d, "works": tuple(Work(**w) for w in d["works"])})


RUN = Profile(works=(
    Work("e2e", 64, "written", rate=1000, seconds=3.0),
    Work("e2e", 64, "written", rate=4000, seconds=3.0),
    Work("durable", 64, "durable", rate=500, seconds=3.0),
    Work("acked", 64, "written", seconds=1.0), Work("acked", 1024, "written", seconds=1.0),
    Work("acked", 1024, "durable", seconds=1.0),
    Work("batch", 64, "none", seconds=1.0), Work("batch", 64, "written", seconds=1.0),
    Work("batch", 1024, "written", seconds=1.0), Work("batch", 1024, "durable", seconds=1.0),
    Work("drain", 64, backlog=200_000),
), rounds=3)
"""``nanomq-bench run``'s default: open loop at 1,000 and 4,000/s, durable latency, acked and
batched throughput by size and ack mode, a drain; 3 rounds (about 1.5 min)."""

GATE = Profile(works=(
    Work("acked", 1024, "written", seconds=0.8),
    Work("e2e", 64, "written", rate=1000, seconds=0.6),
    Work("batch", 64, "written", seconds=0.3), Work("batch", 1024, "written", seconds=0.3),
    Work("batch", 1024, "durable", seconds=0.3),
), rounds=6, rtt_seconds=0.4, rtt_back_to_back=3_000, fsync_seconds=0.2, idle_seconds=3.0, awake_cpus=True)
"""The gate's profile: the workloads behind the gated figures and the budgets of spec/budgets.toml
[broker], short enough that one pass of 6 rounds takes well under a minute; the CPUs are kept
awake (docs/gate.md: the machine's drift was mostly how deeply its idle CPUs slept)."""


def _peer(target: BenchTarget, ack: str) -> NanoMQPeer:
    return NanoMQPeer(target.address, ack, server_pid=target.pid, label=f"NanoMQ {ack}", key=f"nanomq-{ack}")


def _one(target: BenchTarget, w: Work) -> workloads.Outcome:
    if w.kind in ("e2e", "durable"):
        return workloads.paced(_peer(target, "durable" if w.kind == "durable" else w.ack), w.size, w.rate, w.seconds)
    if w.kind == "acked":
        return workloads.stream(_peer(target, w.ack), w.size, 1, w.seconds)
    if w.kind == "batch":
        return workloads.stream(_peer(target, w.ack), w.size, w.batch, w.seconds)
    return workloads.drain(_peer(target, "written"), w.size, w.backlog, w.batch)


@dataclass(slots=True)
class _Cal:
    rtt_paced: list[Histogram] = field(default_factory=list)
    rtt_b2b: list[Histogram] = field(default_factory=list)
    fsync: list[Histogram | None] = field(default_factory=list)
    memcpy: list[float] = field(default_factory=list)
    loop: list[Histogram] = field(default_factory=list)
    speed: list[Histogram] = field(default_factory=list)
    win: list[dict[str, float]] = field(default_factory=list)


def _calibrations(cal: _Cal, p: Profile, data_dir: str) -> None:
    w = Window.open()
    paced, b2b = calibrate.socket_rtt(p.calib_rate, p.rtt_seconds, p.rtt_back_to_back)
    cal.rtt_paced.append(paced)
    cal.rtt_b2b.append(b2b)
    cal.fsync.append(calibrate.fdatasync(data_dir, p.fsync_seconds) if data_dir else None)
    cal.memcpy.append(calibrate.memcpy(p.memcpy_seconds))
    cal.loop.append(calibrate.loop_rtt(p.loop_seconds))
    cal.speed.append(calibrate.python_speed(p.speed_seconds))
    cal.win.append(w.close().as_dict())


REFERENCE_PREFIX = "ref/"
"""Figures of the reference target of a run carry this prefix (``ref/acked1024/written/call``)."""


def measure(target: BenchTarget, profile: Profile, *, command: str = "",
            log: Callable[[str], None] = lambda s: None, reference: BenchTarget | None = None,
            reference_works: tuple[str, ...] = ()) -> Run:
    """Run ``profile`` against the started ``target``; every figure of every round.

    With a started ``reference`` target, the workloads whose ids are in ``reference_works`` are
    also run against it in every round, each right next to the same workload on ``target`` (which
    of the two goes first alternates by round), and its figures are kept with the
    :data:`REFERENCE_PREFIX`: a same-run, same-minute reference that the gate can divide by."""
    import nanomq

    t0 = time.monotonic()
    loads = [loadavg()]
    run = Run()
    run.meta = {"date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "command": command,
                "tool": "nanomq-bench run", "machine": machine(),
                "nanomq": {"version": nanomq.__version__, "commit": _git_commit()},
                "target": target.description(), "profile": profile.as_dict(), "rounds": profile.rounds}
    failures: list[dict[str, str]] = []
    cal = _Cal()
    outs: dict[str, list[workloads.Outcome | None]] = {w.id: [None] * profile.rounds for w in profile.works}
    ref_outs: dict[str, list[workloads.Outcome | None]] = {}
    data_dir = target.data_dir
    if not data_dir:
        run.skipped.append({"system": "calib/fdatasync", "reason": "the broker's data directory is not known to be "
                            "on this machine (give --data-dir for an --address broker): no raw fdatasync calibration"})
    if target.pid is None:
        run.skipped.append({"system": "broker CPU and RSS", "reason": "the broker's PID is not known (give --pid for "
                            "an --address broker)"})
    works = list(profile.works)
    awake: contextlib.AbstractContextManager[list[int]] = (awake_cpus() if profile.awake_cpus
                                                            else contextlib.nullcontext([]))
    with awake as spinners:
        run.meta["awake_cpus"] = len(spinners)
        for r in range(profile.rounds):
            log(f"round {r + 1}/{profile.rounds}: calibrations (load {loadavg():.2f})")
            _calibrations(cal, profile, data_dir)
            k = r % len(works)
            for w in works[k:] + works[:k]:
                pair: list[tuple[str, BenchTarget]] = [("", target)]
                if reference is not None and w.id in reference_works:
                    pair = pair + [(REFERENCE_PREFIX, reference)] if r % 2 == 0 else [(REFERENCE_PREFIX, reference), *pair]
                for prefix, t in pair:
                    log(f"round {r + 1}/{profile.rounds}: {prefix}{w.id}")
                    into = outs
                    if prefix:
                        into = ref_outs
                        into.setdefault(w.id, [None] * profile.rounds)
                    try:
                        into[w.id][r] = _one(t, w)
                    except Exception as e:
                        if not t.alive():
                            raise RuntimeError(f"the {'reference ' if prefix else ''}broker died during {w.id}; its log:\n"
                                               f"{t.log_tail()}") from e
                        log(f"  !! {prefix}{w.id} failed: {e!r}")
                        failures.append({"workload": prefix + w.id, "round": str(r + 1), "error": repr(e)[:2000]})
            loads.append(loadavg())
    _build(run, profile, cal, outs)
    if reference is not None and ref_outs:
        run.meta["reference"] = reference.description()
        refp = replace(profile, works=tuple(w for w in profile.works if w.id in ref_outs))
        _build(run, refp, cal, ref_outs, prefix=REFERENCE_PREFIX)
    if target.pid is not None and profile.idle_seconds > 0:
        _idle(run, target.pid, profile.idle_seconds)
    loads.append(loadavg())
    run.meta["failures"] = failures
    run.meta["load1"] = {"samples": [round(x, 2) for x in loads], "min": round(min(loads), 2),
                         "max": round(max(loads), 2), "median": round(median(loads), 2)}
    run.meta["seconds"] = round(time.monotonic() - t0, 1)
    return run


def run_profile(spec: Any, profile: Profile, *, pid: int | None = None, data_dir: str = "", command: str = "",
                log: Callable[[str], None] = lambda s: None, reference: Any = None,
                reference_works: tuple[str, ...] = ()) -> Run:
    """Start the target of ``spec`` (the kit's TargetSpec) and the ``reference`` target's (a
    TargetSpec too, or None), :func:`measure` them, stop them."""
    target = BenchTarget(spec, pid=pid, data_dir=data_dir)
    ref = BenchTarget(reference) if reference is not None else None
    try:
        target.start()
        if ref is not None:
            ref.start()
        log(f"target {target.address} (pid {target.pid}); {profile.rounds} rounds of {len(profile.works)} workloads"
            + (f"; reference {ref.address} for {', '.join(reference_works)}" if ref is not None else ""))
        return measure(target, profile, command=command, log=log, reference=ref, reference_works=reference_works)
    finally:
        target.stop()
        if ref is not None:
            ref.stop()


def _idle(run: Run, pid: int, seconds: float) -> None:
    time.sleep(0.5)
    try:
        rss = proc_status(pid)
        w = Window.open()
        c0, t0 = cpu_seconds_fine(pid), time.monotonic()
        time.sleep(seconds)
        idle = 100.0 * (cpu_seconds_fine(pid) - c0) / (time.monotonic() - t0)
    except OSError:
        return
    wins = [w.close().as_dict()]
    run.add(_value_figure("broker/rss", "broker VmRSS after the rounds", "broker", "broker", "MB",
                          [rss.get("VmRSS", 0.0)], False, windows=wins, status=rss))
    run.add(_value_figure("broker/idle_cpu", f"broker CPU at idle over {seconds:g} s", "broker", "broker", "%",
                          [idle], False, windows=wins))


def _wins(outs: list[workloads.Outcome | None]) -> list[dict[str, float]]:
    return [o.window.as_dict() if o is not None and o.window is not None else {} for o in outs]


def _build(run: Run, p: Profile, cal: _Cal, outs: dict[str, list[workloads.Outcome | None]], prefix: str = "") -> None:
    nan = float("nan")
    if prefix:  # a reference target's figures, made as the target's and renamed
        part = Run()
        _build(part, p, cal, outs)
        for fid, f in part.figures.items():
            f.id, f.label, f.system = prefix + fid, f"reference target: {f.label}", "reference"
            run.add(f)
        return
    rtt_p = run.add(_lat_figure("calib/rtt_paced", f"raw socket RTT 64 B, paced {p.calib_rate:,.0f}/s", "raw socket",
                                "calibration", list(cal.rtt_paced), "blocking sockets", windows=cal.win),
                    calibration=True)
    rtt_b = run.add(_lat_figure("calib/rtt_b2b", "raw socket RTT 64 B, back to back", "raw socket", "calibration",
                                list(cal.rtt_b2b), "blocking sockets", windows=cal.win), calibration=True)
    fs: Figure | None = None
    if any(h is not None for h in cal.fsync):
        fs = run.add(_lat_figure("calib/fdatasync", "raw pwrite 4 KiB + fdatasync, preallocated file, data dir's disk",
                                 "raw disk", "calibration", list(cal.fsync), "synchronous", windows=cal.win),
                     calibration=True)
    run.add(_lat_figure("calib/loop_rtt", "Python event-loop server round trip, 1 KiB request, 24 B answer, back to "
                        "back", "raw loop server", "calibration", list(cal.loop), "blocking client", windows=cal.win),
            calibration=True)
    run.add(_lat_figure("calib/python_speed", "fixed interpreter work (200 requests' struct/CRC/dict work)",
                        "interpreter", "calibration", list(cal.speed), "cpu", windows=cal.win), calibration=True)
    mc = run.add(_value_figure("calib/memcpy", "memcpy 16 MiB", "raw memory", "calibration", "GB/s", list(cal.memcpy),
                               True, windows=cal.win), calibration=True)
    for w in p.works:
        os_ = outs[w.id]
        wins = _wins(os_)
        name = f"NanoMQ {w.ack if w.kind != 'durable' else 'durable'}"
        lost = [o.lost if o else None for o in os_]
        if w.kind in ("e2e", "durable"):
            f = run.add(_lat_figure(f"{w.id}/latency", f"e2e one-way, {w.label()}", name, w.kind,
                                    [o.latency if o else None for o in os_], "blocking subscriber", windows=wins,
                                    lost=lost, rate=w.rate, size=w.size))
            c = run.add(_lat_figure(f"{w.id}/publish_rtt", f"publish call round trip, {w.label()}", name, w.kind,
                                    [o.call if o else None for o in os_], "blocking publisher", windows=wins))
            a = run.add(_lat_figure(f"{w.id}/ack", f"scheduled send -> ack, {w.label()}", name, w.kind,
                                    [o.ack if o else None for o in os_], "blocking publisher", windows=wins))
            run.add(_lat_figure(f"{w.id}/lateness", f"publisher lateness, {w.label()}", name, w.kind,
                                [o.late if o else None for o in os_], "paced publisher", windows=wins))
            if w.kind == "e2e":
                _calibrate(f, rtt_p, lambda x, y: x / y)
                _calibrate(c, rtt_p, lambda x, y: x / y)
            elif fs is not None:
                _calibrate(f, fs, lambda x, y: x / y)
                _calibrate(a, fs, lambda x, y: x / y)
        else:
            f = run.add(_value_figure(f"{w.id}/rate", w.label(), name, w.kind, "records/s",
                                      [o.rate if o else nan for o in os_], True, "blocking subscriber", wins,
                                      lost=lost, received=[o.received if o else None for o in os_],
                                      records=[o.records if o else None for o in os_], size=w.size,
                                      publish_rate=[o.publish_rate if o else None for o in os_]))
            what = "publish call round trip" if w.kind == "acked" else "publish_batch call round trip"
            c = run.add(_lat_figure(f"{w.id}/call", f"{what}, back to back, {w.label()}", name, w.kind,
                                    [o.call if o else None for o in os_], "blocking publisher", windows=wins))
            if w.kind == "acked":
                _calibrate(f, rtt_b, lambda rate, us: rate * us / 1e6)
                _calibrate(c, rtt_b, lambda x, y: x / y)
            else:
                size = w.size
                _calibrate(f, mc, lambda rate, gbps, size=size: rate * size / (gbps * 1e9))  # type: ignore[misc]
        vals = [o.cpu_us.get("server", nan) if o else nan for o in os_]
        if any(v == v for v in vals):
            run.add(_value_figure(f"{w.id}/server_cpu", f"broker CPU per record, {w.label()}", name, w.kind,
                                  "us/record", vals, False, windows=wins))


def quick(profile: Profile) -> Profile:
    """``profile`` with every part about 4x shorter and one round (a smoke run)."""
    return replace(profile, rounds=1, rtt_seconds=0.3, rtt_back_to_back=1_000, fsync_seconds=0.1, idle_seconds=0.3,
                   works=tuple(replace(w, seconds=max(0.2, w.seconds / 4), backlog=max(1_000, w.backlog // 10))
                               for w in profile.works))

