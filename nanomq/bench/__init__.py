"""Measurement code for NanoMQ's benchmarks (needs the ``bench`` extra: ``pip install 'nanomq[bench]'``).

One module per job, importable by any harness (``benchmarks/bench_broker.py`` today, a CI gate
or the conformance kit's budget layer later):

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
* :mod:`nanomq.bench.report` — the text report; :mod:`nanomq.bench.plots` — PNGs (the only
  module that imports matplotlib).

Nothing is imported here, so ``import nanomq.bench`` is free.
"""
