"""End-to-end: the reference broker (a real process) with the Python clients and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

import nanomq
from nanomq.client import ConnectionLostError, NotSupportedError, ServerError
from nanomq.testing import BrokerProcess


def test_seed_usage_example_as_written(nanomq_broker) -> None:
    # The seed README's example, in Python: publish, then subscribe, then poll, then commit.
    pub = nanomq.Publisher(nanomq_broker.address)
    message = b"Hello, NanoMQ!"
    msg_id = pub.publish("my-topic", message)
    assert msg_id == 1

    sub = nanomq.Subscriber(nanomq_broker.address)
    assert sub.subscribe("my-topic") is True
    msg = sub.poll(1_000_000)
    assert msg is not None and msg.id > 0
    assert msg.data == message and msg.topic == "my-topic"
    assert msg.header.id == msg.id and msg.header.size == len(message)
    assert sub.commit(msg.id) == msg.id + 1
    pub.close()
    sub.close()


def test_ids_batches_and_order(nanomq_broker) -> None:
    with nanomq.Publisher(nanomq_broker.address) as pub, nanomq.Subscriber(nanomq_broker.address) as sub:
        payloads = [f"r{i}".encode() for i in range(700)]
        assert pub.publish_batch("t", payloads) == 700  # three pipelined batches
        assert pub.publish("t", b"last") == 701
        sub.subscribe("t")
        got = []
        while len(got) < 701:
            got.extend(sub.poll_batch(256, 2_000_000))
        assert [m.id for m in got] == list(range(1, 702))
        assert [m.data for m in got] == payloads + [b"last"]
        ts = [m.timestamp for m in got]
        assert ts == sorted(ts)
        assert sub.poll(50_000) is None


def test_seek_by_id_and_time_unsubscribe_and_topics(nanomq_broker) -> None:
    with nanomq.Publisher(nanomq_broker.address, ack="written") as pub, nanomq.Subscriber(nanomq_broker.address) as sub:
        for i in range(10):
            pub.publish("s", str(i).encode())
        sub.subscribe("s", start="latest")
        assert sub.poll(100_000) is None
        assert sub.seek(4) is True
        assert sub.poll().id == 4
        ts = sub.poll().timestamp  # id 5
        assert sub.seek_to_timestamp(ts) is True
        assert sub.poll().id <= 5
        assert sub.seek(1000) is False  # beyond the end: OUT_OF_RANGE
        assert sub.unsubscribe("s") is True and sub.unsubscribe("s") is False
        assert sub.subscribe("s", start="id", value=9) is True
        assert [m.id for m in sub.poll_batch(10, 1_000_000)] == [9, 10]
        info = {t.name: t for t in pub.topics()}
        assert info["s"].first_id == 1 and info["s"].next_id == 11
        with pytest.raises(ServerError):
            pub.topics("nope")


def test_commit_rules(nanomq_broker) -> None:
    with nanomq.Publisher(nanomq_broker.address) as pub, nanomq.Subscriber(nanomq_broker.address) as sub:
        pub.publish_batch("c", [b"a", b"b", b"c"])
        sub.subscribe("c")
        msgs = sub.poll_batch(3, 1_000_000)
        assert sub.commit(msgs[1]) == 1  # id 2 committed, 1 still open
        assert sub.commit_batch([1, 3]) == 4
        with pytest.raises(ServerError) as e:
            sub.commit(99)
        assert e.value.code == nanomq.protocol.ErrorCode.INVALID_ARGUMENT


def test_compression_is_transparent(nanomq_broker) -> None:
    with nanomq.Publisher(nanomq_broker.address) as pub, nanomq.Subscriber(nanomq_broker.address) as sub:
        pub.set_compression_threshold(100)
        big = b"abc" * 5000
        pub.publish("z", big)
        pub.publish("z", os.urandom(500))  # incompressible: sent as is
        pub.publish("z", b"small")
        sub.subscribe("z")
        got = sub.poll_batch(3, 1_000_000)
        assert got[0].data == big and got[0].header.flags == 1 and got[0].header.size < len(big)
        assert got[0].header.raw_size == len(big)
        assert got[1].header.flags == 0 and got[2].data == b"small"


def test_compression_refused_when_disabled(tmp_path) -> None:
    with (BrokerProcess(tmp_path / "d", ["--compression", "none"]) as b, nanomq.Publisher(b.address) as pub,
          pytest.raises(NotSupportedError)):
        pub.set_compression_threshold(10)


def test_batching_mode(nanomq_broker) -> None:
    with nanomq.Publisher(nanomq_broker.address) as pub, nanomq.Subscriber(nanomq_broker.address) as sub:
        pub.set_batching_enabled(True)
        assert pub.publish("b", b"x") == 0
        time.sleep(0.1)  # the 10 ms flusher sends it without flush()
        sub.subscribe("b")
        assert sub.poll(2_000_000).data == b"x"
        for _ in range(100):
            pub.publish("b", b"y" * 50)  # 1 KiB thresholds trigger sends
        pub.flush()
        pub.set_batching_enabled(False)
        assert pub.publish("b", b"z") == 102


def test_consumer_group_is_refused_clearly(nanomq_broker) -> None:
    with pytest.raises(NotSupportedError) as e:
        nanomq.Subscriber(nanomq_broker.address, consumer_group="billing")
    assert "consumer group" in str(e.value)


def test_ack_none_and_written(nanomq_broker) -> None:
    with nanomq.Publisher(nanomq_broker.address, ack="none") as pub:
        assert pub.publish("n", b"1") == 0
        assert pub.publish_batch("n", [b"2", b"3"]) == 2
    with nanomq.Subscriber(nanomq_broker.address) as sub:
        sub.subscribe("n")
        assert [m.data for m in sub.poll_batch(3, 2_000_000)] == [b"1", b"2", b"3"]
    with pytest.raises(ValueError):
        nanomq.Publisher(nanomq_broker.address, ack="maybe")


def test_invalid_arguments_are_clear(nanomq_broker) -> None:
    with nanomq.Publisher(nanomq_broker.address) as pub:
        with pytest.raises(ValueError):
            pub.publish("bad topic", b"x")
        with pytest.raises(ValueError):
            pub.publish("t", b"x" * 70_000)
        with pytest.raises(TypeError):
            pub.publish("t", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        nanomq.Publisher("not an address:xx")


def test_many_publishers_and_subscribers_at_once(nanomq_broker) -> None:
    n_pub, per_pub, topics = 4, 1500, ["m0", "m1"]
    errors: list[BaseException] = []

    def produce(k: int) -> None:
        try:
            with nanomq.Publisher(nanomq_broker.address, ack="written") as pub:
                for i in range(0, per_pub, 50):
                    pub.publish_batch(topics[k % 2], [f"{k}:{j}".encode() for j in range(i, i + 50)])
        except BaseException as e:
            errors.append(e)

    results: dict[int, list] = {}

    def consume(k: int) -> None:
        try:
            with nanomq.Subscriber(nanomq_broker.address, window=128) as sub:
                sub.subscribe(topics[k % 2])
                got: list = []
                deadline = time.monotonic() + 60
                while len(got) < per_pub * n_pub // 2 and time.monotonic() < deadline:
                    got.extend(sub.poll_batch(256, 200_000))
                results[k] = got
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=consume, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=produce, args=(k,)) for k in range(n_pub)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for k, got in results.items():
        ids = [m.id for m in got]
        assert ids == list(range(1, per_pub * n_pub // 2 + 1)), f"subscriber {k}: lost/duplicated/reordered"
        # per producer, records arrive in the order they were published
        seqs: dict[str, list[int]] = {}
        for m in got:
            p, j = m.data.decode().split(":")
            seqs.setdefault(p, []).append(int(j))
        assert all(v == list(range(per_pub)) for v in seqs.values())


def test_sigkill_loses_no_durable_acked_record(nanomq_broker) -> None:
    acked: list[int] = []
    with nanomq.Publisher(nanomq_broker.address) as pub:
        for i in range(200):
            acked.append(pub.publish("d", f"rec-{i}".encode()))
        nanomq_broker.kill()
        with pytest.raises(ConnectionLostError):
            pub.publish("d", b"after the crash")
    nanomq_broker.start()
    with nanomq.Subscriber(nanomq_broker.address) as sub:
        sub.subscribe("d")
        got = []
        while len(got) < 200:
            batch = sub.poll_batch(256, 2_000_000)
            assert batch, "records missing after restart"
            got.extend(batch)
        assert [m.id for m in got[:200]] == acked
        assert [m.data for m in got[:200]] == [f"rec-{i}".encode() for i in range(200)]


def test_subscriber_reconnects_and_resumes_without_gap(nanomq_broker) -> None:
    with nanomq.Publisher(nanomq_broker.address, ack="written", connect_timeout=20) as pub:
        pub.publish_batch("r", [str(i).encode() for i in range(1, 101)])
    sub = nanomq.Subscriber(nanomq_broker.address, window=16, connect_timeout=20)
    sub.subscribe("r")
    first = sub.poll_batch(30, 1_000_000)
    assert [m.id for m in first] == list(range(1, len(first) + 1))
    nanomq_broker.restart()
    rest = []
    deadline = time.monotonic() + 30
    while len(first) + len(rest) < 100 and time.monotonic() < deadline:
        rest.extend(sub.poll_batch(256, 500_000))
    assert [m.id for m in first + rest] == list(range(1, 101))
    sub.close()


def test_graceful_restart_keeps_everything(nanomq_broker) -> None:
    with nanomq.Publisher(nanomq_broker.address, ack="written") as pub:
        pub.publish_batch("g", [b"x"] * 300)
    assert nanomq_broker.stop() == 0
    nanomq_broker.start()
    with nanomq.Publisher(nanomq_broker.address) as pub:
        assert pub.topics("g")[0].next_id == 301
        assert pub.publish("g", b"y") == 301


def test_unreachable_broker_is_a_clear_error() -> None:
    with pytest.raises(ConnectionLostError) as e:
        nanomq.Publisher("127.0.0.1:1", connect_timeout=0.2)
    assert "cannot connect" in str(e.value)


def test_fixture_starts_fast(tmp_path) -> None:
    t = time.monotonic()
    with BrokerProcess(tmp_path / "fast") as b:
        started = time.monotonic() - t
        with nanomq.Publisher(b.address) as pub:
            pub.ping()
    assert started < 5.0  # typically ~0.3 s; generous for a loaded CI machine


# ---------------------------------------------------------------- CLI

def _cli(*args: str, stdin: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "nanomq.cli.client", *args], input=stdin,
                          capture_output=True, timeout=timeout)


def test_cli_publish_then_subscribe(nanomq_broker) -> None:
    b = ["--broker", nanomq_broker.address]
    r = _cli(*b, "publish", "--topic", "orders", "--message", '{"symbol":"AAPL","qty":100}')
    assert r.returncode == 0 and r.stdout.strip() == b"1"
    r = _cli(*b, "publish", "--topic", "orders", stdin=b"line one\nline two\n")
    assert r.returncode == 0, r.stderr
    r = _cli(*b, "subscribe", "--topic", "orders", "--count", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ['{"symbol":"AAPL","qty":100}', "line one", "line two"]
    r = _cli(*b, "subscribe", "--topic", "orders", "--from", "id:2", "--count", "1", "--format", "json")
    assert b'"id": 2' in r.stdout and b'"data": "line one"' in r.stdout
    r = _cli(*b, "topics")
    assert r.returncode == 0 and r.stdout.startswith(b"orders\tid=1\trecords=3")


def test_cli_errors(nanomq_broker) -> None:
    r = _cli("--broker", nanomq_broker.address, "publish", "--topic", "bad/topic", "--message", "x")
    assert r.returncode == 2 and b"invalid topic" in r.stderr
    r = _cli("--broker", nanomq_broker.address, "subscribe", "--topic", "t", "--from", "yesterday")
    assert r.returncode == 2 and b"bad --from" in r.stderr
    r = _cli("--broker", "127.0.0.1:1", "--timeout", "0.3", "topics")
    assert r.returncode == 1 and b"cannot connect" in r.stderr


def test_broker_cli_rejects_bad_flags(tmp_path) -> None:
    run = [sys.executable, "-m", "nanomq.cli.broker", "--data-dir", str(tmp_path / "x")]
    r = subprocess.run([*run, "--tls-cert", str(tmp_path / "missing.pem")], capture_output=True, timeout=30)
    assert r.returncode == 2 and b"missing.pem: cannot read it" in r.stderr
    r = subprocess.run([*run, "--log-segment-size", "12XB"], capture_output=True, timeout=30)
    assert r.returncode == 2 and b"bad size" in r.stderr
    r = subprocess.run([*run, "--log-segment-size", "1KB"], capture_output=True, timeout=30)
    assert r.returncode == 2 and b"at least 1 MiB" in r.stderr


def test_second_broker_on_same_data_dir_is_refused(nanomq_broker) -> None:
    r = subprocess.run([sys.executable, "-m", "nanomq.cli.broker", "--port", "0", "--data-dir",
                        str(nanomq_broker.data_dir)], capture_output=True, timeout=30)
    assert r.returncode == 1 and b"in use by another broker" in r.stderr


def test_spin_then_block_subscriber(nanomq_broker) -> None:
    with nanomq.Publisher(nanomq_broker.address, ack="written") as pub, \
            nanomq.Subscriber(nanomq_broker.address, spin_us=500) as sub:
        sub.subscribe("spin")
        assert sub.poll(10_000) is None  # spins 0.5 ms, then blocks for the rest of the timeout
        pub.publish("spin", b"s")
        assert sub.poll(1_000_000).data == b"s"
    with pytest.raises(ValueError):
        nanomq.Subscriber(nanomq_broker.address, spin_us=-1)
