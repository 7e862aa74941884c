"""Measurement code for NanoMQ's benchmarks (needs the ``bench`` extra: ``pip install 'nanomq[bench]'``).

One module per job, importable by any harness (``benchmarks/bench_broker.py``, the
``nanomq-bench`` command and its CI gate, the conformance kit's budget layer):

* :mod:`nanomq.bench.hist` — HdrHistogram-backed histograms and percentiles;
* :mod:`nanomq.bench.system` — CPU time from /proc, load average, pacing, forked children;
* :mod:`nanomq.bench.calibrate` — raw socket round trip, the kernel floor of a broker hop,
  raw fdatasync, memcpy;
* :mod:`nanomq.bench.peers` — NanoMQ, Redis streams, NATS core, JetStream, pyzmq and
  multiprocessing.Queue behind one adapter interface, and the servers a run starts;
* :mod:`nanomq.bench.workloads` — open-loop paced latency, acked and batched throughput with a
  live subscriber, drain, the topics × connections scaling run;
* :mod:`nanomq.bench.results` — figures, ratios and their JSON form;
* :mod:`nanomq.bench.suite` — issue 12's suite in interleaved rounds;
* :mod:`nanomq.bench.report` — the text report; :mod:`nanomq.bench.plots` — PNGs (matplotlib
  is imported there and in :mod:`nanomq.bench.outputs` only, when a plot is drawn);
* :mod:`nanomq.bench.target` — the broker a run measures, described as the conformance kit does;
* :mod:`nanomq.bench.measure` — ``nanomq-bench run``: profiles of workloads in repeated rounds
  against any broker, with a same-run reference target optionally;
* :mod:`nanomq.bench.stats` — bootstrap intervals of a shift, Mann–Whitney U (numpy, scipy);
* :mod:`nanomq.bench.budgets` — spec/budgets.toml read from a run (shared with the kit);
* :mod:`nanomq.bench.gate` — the CI gate's checks, decision and confirmation by a rerun;
* :mod:`nanomq.bench.outputs` — terminal table, JSON, Markdown, JUnit, HTML.

Nothing is imported here, so ``import nanomq.bench`` is free.
"""
