"""Metrics in the wild: the Grafana dashboard and alert rules use exported names, promtool accepts
them, and a real Prometheus (Debian's ``prometheus``) scrapes a broker under load."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]

from nanomq.broker_process import BrokerProcess
from nanomq.client import Publisher, Subscriber

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "docs" / "grafana" / "nanomq-broker.json"
ALERTS = ROOT / "docs" / "prometheus" / "alerts.yml"
_NAME = re.compile(r"\bnanomq_[a-z0-9_]+")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path_factory.mktemp("obs") / "data", ["--admin-port", "0"]).start()
    try:
        with Publisher(b.address, ack="durable") as pub, Subscriber(b.address) as sub:
            sub.subscribe("obs")
            for _ in range(20):
                pub.publish("obs", b"x" * 64)
            assert all(sub.poll(timeout=5.0) is not None for _ in range(20))
        yield b
    finally:
        b.stop()


def scrape(b: BrokerProcess) -> str:
    with urllib.request.urlopen(b.admin_url + "/metrics", timeout=10) as r:
        return str(r.read().decode())


def exported_names(text: str) -> set[str]:
    """Every sample name (``_bucket``/``_count``/``_sum``/``_total`` included) and family name."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p["targets"]]


def alert_exprs() -> list[str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def test_every_dashboard_panel_and_alert_uses_exported_metrics(broker: BrokerProcess) -> None:
    names = exported_names(scrape(broker))
    exprs = dashboard_exprs()
    assert len(exprs) >= 14
    for expr in exprs + alert_exprs():
        used = set(_NAME.findall(expr))
        assert used, expr
        assert used <= names, f"{expr}: not exported: {sorted(used - names)}"


def test_metric_names_follow_prometheus_conventions(broker: BrokerProcess) -> None:
    text = scrape(broker)
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name.startswith("nanomq_")
            if kind == "counter":
                assert name.endswith("_total"), name
            assert not re.search(r"_(ms|us|kb|mb|percent)$", name), name


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_metrics_and_rules(broker: BrokerProcess) -> None:
    r = subprocess.run(["promtool", "check", "metrics"], input=scrape(broker), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def prometheus(broker: BrokerProcess, tmp_path: Path) -> Iterator[int]:
    """A Prometheus scraping ``broker``'s admin port every second; yields its HTTP port. Stopped by
    its PID whatever happens."""
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "nanomq", "static_configs": [{"targets": [f"127.0.0.1:{broker.admin_port}"]}]}],
    }))
    port = _free_port()
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
        try:
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (apt-get install prometheus)")
def test_a_real_prometheus_scrapes_the_broker(broker: BrokerProcess, tmp_path: Path) -> None:
    with prometheus(broker, tmp_path) as port:
        with Publisher(broker.address, ack="written") as pub:
            for _ in range(50):
                pub.publish("obs-prom", b"y")
        query = urllib.parse.quote('nanomq_topic_published_records_total{topic="obs-prom"}')
        deadline = time.monotonic() + 60
        result: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query={query}", timeout=5) as r:
                    result = json.loads(r.read())["data"]["result"]
            except OSError:
                result = []
            if result:
                break
            time.sleep(0.5)
        assert result, (tmp_path / "prometheus.log").read_text()[-3000:]
        value = result[0]["value"]
        assert isinstance(value, list) and float(value[1]) == 50


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (apt-get install prometheus)")
def test_every_dashboard_panel_query_returns_data_from_a_real_prometheus(broker: BrokerProcess, tmp_path: Path) -> None:
    """The stand-in for rendering the dashboard (Grafana is not packaged here): Prometheus scrapes a
    broker under a load that exercises every panel, and each panel's query, as Grafana would send
    it, returns at least one series."""
    with prometheus(broker, tmp_path) as port:
        exprs = [e.replace("$__rate_interval", "30s") for e in dashboard_exprs()]
        pending = set(exprs)
        deadline = time.monotonic() + 90
        with Publisher(broker.address, ack="durable") as pub, Subscriber(broker.address) as sub:
            sub.subscribe("obs-dash")
            with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw:
                from nanomq.protocol.codec import encode
                from nanomq.protocol.frames import Hello, Subscribe
                raw.sendall(encode(Hello(1, 1, "t", b"")) + encode(Subscribe(2, "obs-dash", group="g")))  # an error
                while pending and time.monotonic() < deadline:
                    for _ in range(20):  # load for every rate() and histogram panel
                        pub.publish("obs-dash", b"d" * 100)
                        sub.poll(timeout=1.0)
                    for expr in tuple(pending):
                        q = urllib.parse.quote(expr)
                        try:
                            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query={q}", timeout=5) as r:
                                doc = json.loads(r.read())
                        except OSError:
                            continue
                        assert doc["status"] == "success", (expr, doc)
                        if any(s["value"][1] not in ("NaN",) for s in doc["data"]["result"]):
                            pending.discard(expr)
                    time.sleep(0.5)
        assert not pending, f"panels with no data after 90 s: {sorted(pending)}"
