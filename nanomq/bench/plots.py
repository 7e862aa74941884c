"""PNG plots of a :class:`~nanomq.bench.results.Run` with matplotlib (imported here only).

* ``latency.png`` — the percentile spectrum of the 64 B one-way latency of every system, with
  the raw relay (publisher → relay → subscriber) calibration dashed;
* ``durable.png`` — NanoMQ's durable e2e and ack latency spectra against raw fdatasync;
* ``throughput.png`` — bars of the acked and batched 1 KiB workloads per system (median, with
  the min–max of the rounds);
* ``scaling.png`` — aggregate records/s and publish p99 of the topics × connections table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nanomq.bench.hist import spectrum_points
from nanomq.bench.results import Figure, Run

__all__ = ["write_plots"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(run: Run, what: str) -> str:
    m = run.meta
    load = m.get("load1", {})
    return (f"{what}\n{m.get('date_utc', '')}, {m.get('rounds')} round(s), load {load.get('min')}–{load.get('max')}, "
            f"{m.get('machine', {}).get('cpus')} vCPUs")


def _spectrum(ax: Any, f: Figure, label: str, **kw: Any) -> bool:
    h = f.histogram()
    if h is None or h.count == 0:
        return False
    xs, ys = spectrum_points(h)
    if not xs:
        return False
    ax.plot(xs, [y / 1000 for y in ys], label=label, **kw)
    return True


def _nines(ax: Any) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000, 100000]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0", "50", "90", "99", "99.9", "99.99", "99.999"])
    ax.set_xlabel("percentile")
    ax.grid(True, which="both", alpha=0.3)


def write_plots(run: Run, outdir: str | Path) -> list[Path]:
    """Write the PNGs into ``outdir``; returns their paths."""
    plt = _plt()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    # latency spectrum
    fig, ax = plt.subplots(figsize=(9, 5.5))
    any_line = False
    for f in run.figures.values():
        if f.workload == "oneway64" and f.id.endswith("/latency"):
            any_line |= _spectrum(ax, f, f"{f.system} ({f.wait})")
    cal = run.calibrations.get("calib/relay_one_way_fast")
    if cal is not None:
        _spectrum(ax, cal, "raw relay (calibration)", linestyle="--", color="grey")
    if any_line:
        _nines(ax)
        ax.set_ylabel("one-way latency, µs (receive − scheduled send)")
        ax.set_title(_title(run, f"64 B one-way latency, open loop at {run.meta.get('rate', 0):,.0f}/s"), fontsize=9)
        ax.legend(fontsize=7)
        p = out / "latency.png"
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        paths.append(p)
    plt.close(fig)

    # durable
    fig, ax = plt.subplots(figsize=(9, 5.5))
    drew = False
    for fid, label in (("durable1000/nanomq-durable/latency", "NanoMQ durable: e2e"),
                       ("durable1000/nanomq-durable/ack", "NanoMQ durable: scheduled send → ack"),
                       ("cpu1000/nanomq-written/latency", "NanoMQ written: e2e")):
        lf = run.get(fid)
        if lf is not None:
            drew |= _spectrum(ax, lf, label)
    fsync = run.calibrations.get("calib/fdatasync")
    if fsync is not None:
        _spectrum(ax, fsync, "raw pwrite 4 KiB + fdatasync (calibration)", linestyle="--", color="grey")
    if drew:
        _nines(ax)
        ax.set_ylabel("µs")
        ax.set_title(_title(run, f"durable latency, 64 B open loop at {run.meta.get('cpu_rate', 0):,.0f}/s"),
                     fontsize=9)
        ax.legend(fontsize=7)
        p = out / "durable.png"
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        paths.append(p)
    plt.close(fig)

    # throughput bars
    groups = [("acked1k", "1 KiB acked one by one"), ("batch1k", "1 KiB batched/pipelined 256")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    drew = False
    for ax, (wl, title) in zip(axes, groups, strict=True):
        figs = [f for f in run.figures.values() if f.workload == wl and f.id.endswith("/rate")]
        if not figs:
            ax.set_visible(False)
            continue
        drew = True
        names = [f.system for f in figs]
        vals = [f.value if math.isfinite(f.value) else 0.0 for f in figs]
        lo = [v - min((r for r in f.rounds if r == r), default=v) for f, v in zip(figs, vals, strict=True)]
        hi = [max((r for r in f.rounds if r == r), default=v) - v for f, v in zip(figs, vals, strict=True)]
        colors = ["tab:blue" if n.startswith("NanoMQ") else "tab:gray" for n in names]
        ax.bar(range(len(figs)), vals, yerr=[lo, hi], color=colors, capsize=3)
        ax.set_xticks(range(len(figs)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("records/s (median, min–max of rounds)")
        ax.set_title(title + ", subscriber running", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    if drew:
        fig.suptitle(_title(run, "throughput"), fontsize=9)
        fig.tight_layout()
        p = out / "throughput.png"
        fig.savefig(p, dpi=110)
        paths.append(p)
    plt.close(fig)

    # scaling
    sc = [f for f in run.figures.values() if f.workload == "scale" and f.id.endswith("/rate")]
    if sc:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5))
        topics = sorted({int(f.extra["topics"]) for f in sc})
        conns = sorted({int(f.extra["connections"]) for f in sc})
        width = 0.8 / max(1, len(conns))
        for j, c in enumerate(conns):
            xs, ys, p99 = [], [], []
            for i, t in enumerate(topics):
                rate = run.get(f"scale/{t}x{c}/rate")
                call = run.get(f"scale/{t}x{c}/call")
                if rate is None:
                    continue
                xs.append(i + j * width)
                ys.append(rate.value)
                p99.append((call.percentiles or {}).get("p99", 0.0) if call else 0.0)
            a1.bar(xs, ys, width, label=f"{c} connections")
            a2.bar(xs, p99, width, label=f"{c} connections")
        for ax, ylabel in ((a1, "aggregate records/s"), (a2, "publish_batch round trip p99, µs")):
            ax.set_xticks([i + width * (len(conns) - 1) / 2 for i in range(len(topics))])
            ax.set_xticklabels([f"{t} topics" for t in topics])
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
            ax.grid(True, axis="y", alpha=0.3)
        a2.set_yscale("log")
        fig.suptitle(_title(run, "NanoMQ scaling: topics x connections (one pass, after the rounds)"), fontsize=9)
        fig.tight_layout()
        p = out / "scaling.png"
        fig.savefig(p, dpi=110)
        paths.append(p)
        plt.close(fig)
    return paths
