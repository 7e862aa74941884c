"""The terminal report of a :class:`~nanomq.bench.results.Run` (plain text, no plotting)."""

from __future__ import annotations

import math

from nanomq.bench.results import Comparison, Figure, Run, format_table

__all__ = ["render"]

COLUMNS = [("nanomq-written", "NanoMQ written"), ("nanomq-durable", "NanoMQ durable"), ("redis", "Redis streams"),
           ("nats", "NATS core"), ("jetstream", "JetStream"), ("zmq", "pyzmq"), ("mpqueue", "mp.Queue")]


def _num(v: float | None, digits: int = 0) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return f"{v:,.{digits}f}"


def _spread(vals: list[float]) -> str:
    vs = [v for v in vals if v is not None and math.isfinite(v)]
    if not vs:
        return "—"
    if len(vs) == 1:
        return "(1 round)"
    lo, hi = min(vs), max(vs)
    d = 2 if hi < 10 else (1 if hi < 100 else 0)
    return f"{lo:,.{d}f}–{hi:,.{d}f}"


def _verdict(c: Comparison) -> str:
    if c.meets is None:
        return ""
    return "meets" if c.meets else "SHORT"


def render(run: Run) -> str:
    """Every table of the run, as text."""
    m = run.meta
    spin = m.get("spin_us", 0)
    cols = list(COLUMNS)
    if spin:
        cols.insert(1, (f"nanomq-written-spin{spin}", f"NanoMQ spin {spin} us"))
    out: list[str] = []
    load = m.get("load1", {})
    out.append(f"NanoMQ data plane against its peers: one run, medians of {m.get('rounds')} interleaved round(s), "
               f"{m.get('seconds', 0):.0f} s")
    out.append(f"date {m.get('date_utc')}; nanomq {m.get('nanomq', {}).get('version')} "
               f"{m.get('nanomq', {}).get('commit', '')}; {m.get('machine', {}).get('cpus')} CPUs "
               f"({m.get('machine', {}).get('cpu_model', '')}); 1-min load average over the run "
               f"{load.get('min')}–{load.get('max')} (median {load.get('median')})")
    out.append(f"command: {m.get('command', '')}")
    for s in run.skipped:
        out.append(f"skipped {s['system']}: {s['reason']}")
    for f in m.get("failures", []):
        out.append(f"FAILED {f['system']} {f['workload']} round {f['round']}: {f['error'][:300]}")

    def fig(fid: str) -> Figure | None:
        return run.get(fid)

    # ---- the table of issue 12
    present = [(k, lbl) for k, lbl in cols if any(f.id.split("/")[1] == k for f in run.figures.values()
                                                  if f.id.count("/") >= 2)]
    rows: list[dict[str, object]] = []

    def row(label: str, cell: object) -> None:
        r: dict[str, object] = {"workload (medians)": label}
        for k, lbl in present:
            r[lbl] = cell(k)  # type: ignore[operator]
        rows.append(r)

    row("1 KiB acked one by one, subscriber running (msgs/s)",
        lambda k: _num(f.value) if (f := fig(f"acked1k/{k}/rate")) else "—")
    row("1 KiB batched/pipelined 256, subscriber running (msgs/s)",
        lambda k: _num(f.value) if (f := fig(f"batch1k/{k}/rate")) else "—")
    rate = m.get("rate", 0)
    row(f"64 B one-way, paced {rate:,.0f}/s, p50 / p99 / p99.9 (us)",
        lambda k: (f"{_num(_p(f, 'p50'))} / {_num(_p(f, 'p99'))} / {_num(_p(f, 'p99.9'))}"
                   if (f := fig(f"oneway64/{k}/latency")) else "—"))
    row("64 B publish round trip, p50 (us)", lambda k: _num(f.value) if (f := fig(f"oneway64/{k}/publish_rtt")) else "—")
    row("server CPU per record, 1 KiB batched (us)",
        lambda k: _num(f.value, 1) if (f := fig(f"batch1k/{k}/server_cpu")) else "—")
    out.append("\nissue 12's table: each system through its own Python client, publisher, server and subscriber in "
               "separate processes; '—' = not applicable or not run")
    out.append(format_table(rows))
    waits = {f.system: f.wait for f in run.figures.values() if f.workload == "oneway64" and f.id.endswith("/latency")}
    out.append("wait strategy of each latency column: " + "; ".join(f"{k}: {v}" for k, v in waits.items()))

    # ---- ratios
    def ratio_rows(prefixes: tuple[str, ...], targets_only: bool = False) -> list[dict[str, object]]:
        rs: list[dict[str, object]] = []
        for c in run.comparisons:
            if not (c.target if targets_only else c.id.startswith(prefixes)):
                continue
            rs.append({"comparison": c.label, "ratio": f"{c.value:.2f}x" if math.isfinite(c.value) else "—",
                       "rounds": _spread(c.rounds), "target": c.target, "": _verdict(c)})
        return rs

    out.append("\nNanoMQ / peer, same run (median of the per-round ratios; throughput: higher is better for NanoMQ, "
               "latency: lower)")
    out.append(format_table(ratio_rows(("acked1k/", "batch1k/", "oneway64/", "rtt64/", "drain64/"))))
    out.append("\nevery target of issue 12 (ratios to peers or calibrations of this run, or to the issue's absolute "
               "figures; the last row is spec/budgets.toml's e2e budget)")
    out.append(format_table(ratio_rows((), targets_only=True)))

    # ---- calibrations
    cal_rows: list[dict[str, object]] = []
    for f in run.calibrations.values():
        if f.unit == "us" and f.percentiles:
            v = f"p50 {_num(f.value, 1)}  p99 {_num(_p(f, 'p99'), 1)}  max {_num(_p(f, 'max'), 0)} us"
        else:
            v = f"{_num(f.value, 2)} {f.unit}"
        cal_rows.append({"calibration (same run)": f.label, "median of rounds": v, "rounds": _spread(f.rounds)})
    floor = run.calibrations.get("calib/kernel_floor")
    out.append("\ncalibrations")
    out.append(format_table(cal_rows))
    if floor is not None:
        e = floor.extra
        def med(key: str) -> str:
            vs = [v for v in e.get(key, []) if v is not None]
            return f"{sorted(vs)[len(vs) // 2]:.1f}" if vs else "—"

        out.append(f"  kernel floor per call, CPU us (p50; median of rounds): recv {med('recv_us')}, send ack "
                   f"{med('send_ack_us')}, send delivery {med('send_deliver_us')}; a CPU-clock pair "
                   f"({med('clock_pair_ns')} ns) subtracted from each")

    # ---- latency detail
    lat_rows: list[dict[str, object]] = []
    for f in run.figures.values():
        if f.unit != "us" or not f.percentiles or f.workload == "scale":
            continue
        lat_rows.append({"latency (us, all rounds merged)": f.label, "p50": _p(f, "p50"), "p99": _p(f, "p99"),
                         "p99.9": _p(f, "p99.9"), "max": _p(f, "max"), "n": int(_p(f, "count") or 0),
                         "p50 rounds": _spread(f.rounds),
                         "/ calib": _calib(f, ".2f"),
                         "load": _load(f)})
    out.append("\nlatency detail")
    out.append(format_table(lat_rows))

    # ---- throughput and CPU detail
    t_rows: list[dict[str, object]] = []
    for f in run.figures.values():
        if f.workload == "scale" or f.unit not in ("records/s", "us/record"):
            continue
        t_rows.append({"figure": f.label, "median": _num(f.value, 1 if f.unit == "us/record" else 0), "unit": f.unit,
                       "rounds": _spread(f.rounds),
                       "/ calib": _calib(f, ".3g"),
                       "lost": _lost(f), "load": _load(f)})
    out.append("\nthroughput and CPU per record (acked rates / raw RTT rate; batched and drain bytes/s / memcpy)")
    out.append(format_table(t_rows))

    # ---- scaling
    sc = [f for f in run.figures.values() if f.workload == "scale" and f.id.endswith("/rate")]
    if sc:
        s_rows: list[dict[str, object]] = []
        for f in sc:
            t, c = f.extra["topics"], f.extra["connections"]
            call = run.get(f"scale/{t}x{c}/call")
            cpu = run.get(f"scale/{t}x{c}/server_cpu")
            s_rows.append({"topics": t, "connections": c, "procs": f.extra.get("processes"), "records/s": _num(f.value),
                           "/ 1x1": f"{f.ratio:.2f}x" if f.ratio else "", "call p50 us": _num(_p(call, "p50")),
                           "call p99 us": _num(_p(call, "p99")), "broker CPU us/rec": _num(cpu.value, 2) if cpu else "—",
                           "load": _load(f)})
        e = sc[0].extra
        out.append(f"\nscaling: C connections publish batches of {e.get('batch')} x {e.get('size')} B (ack=written, "
                   "asyncio clients in 'procs' processes), cycling over T topics, one subscriber of "
                   "every topic; p50/p99 = publish_batch round trip")
        out.append(format_table(s_rows))

    b = [run.get(k) for k in ("broker/rss_fresh", "broker/rss_idle", "broker/idle_cpu")]
    if all(b):
        out.append(f"\nbroker: VmRSS fresh {b[0].value:.1f} MB; RssAnon idle after the rounds {b[1].value:.1f} MB "  # type: ignore[union-attr]
                   f"(VmRSS {b[1].extra.get('status', {}).get('VmRSS', 0):.1f} MB); idle CPU {b[2].value:.2f} %")  # type: ignore[union-attr]
    return "\n".join(out)


def _calib(f: Figure, spec: str) -> str:
    if f.ratio is None or f.calibration is None or not math.isfinite(f.ratio):
        return ""
    return f"{f.ratio:{spec}}x {f.calibration.split('/')[-1]}"


def _p(f: Figure | None, key: str) -> float | None:
    if f is None or not f.percentiles:
        return None
    return f.percentiles.get(key)


def _load(f: Figure) -> str:
    vals = [w.get("load1_after") for w in f.load if w]
    busy = [w.get("machine_busy_pct") for w in f.load if w]
    vs = [v for v in vals if v is not None]
    bs = [v for v in busy if v is not None]
    if not vs:
        return ""
    return f"{min(vs):.2f}–{max(vs):.2f}, busy {min(bs):.0f}–{max(bs):.0f}%"


def _lost(f: Figure) -> str:
    lost = [x for x in f.extra.get("lost", []) if x]
    return f"{sum(lost):,}" if lost else ""
