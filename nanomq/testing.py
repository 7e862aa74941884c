"""pytest plugin: the ``nanomq_broker`` fixture, a real broker for integration tests.

Installed with nanomq (entry point ``pytest11``), so any project's tests can use it::

    def test_roundtrip(nanomq_broker):
        with nanomq.Publisher(nanomq_broker.address) as pub:
            pub.publish("orders", b"hello")

The broker is a separate process (``python -m nanomq.cli.broker``) on a free 127.0.0.1 port with a
fresh temporary data directory and 8 MB log segments (each topic preallocates one; pass your own
``--log-segment-size`` to change it); ``restart()`` keeps port and data, ``kill()`` is SIGKILL (for
crash tests), and the fixture stops it when the test ends.

To test your own permission setup, start it with authentication through the ``nanomq_broker``
marker (its keyword arguments go to :class:`BrokerProcess`)::

    @pytest.mark.nanomq_broker(principals={
        "writer": {"token": "writer:" + "w" * 32, "permissions": {"orders.*": ["publish", "create"]}},
        "reader": {"token": "reader:" + "r" * 32, "permissions": {"orders.*": ["subscribe"]}},
    })
    def test_reader_cannot_write(nanomq_broker):
        with nanomq.Publisher(nanomq_broker.address, token="reader:" + "r" * 32) as pub:
            with pytest.raises(nanomq.ServerError):   # PERMISSION_DENIED
                pub.publish("orders.eu", b"x")

:class:`BrokerProcess` (from ``nanomq.broker_process``) can also be used directly, e.g. from a
session-scoped fixture of your own, or from a script: ``from nanomq.testing import BrokerProcess``
works without pytest installed (the fixture is then not defined).
"""

from __future__ import annotations

import importlib.util

from nanomq.broker_process import BrokerProcess

__all__ = ["BrokerProcess"]

if importlib.util.find_spec("pytest") is not None:
    from collections.abc import Iterator
    from pathlib import Path

    import pytest

    __all__ += ["nanomq_broker", "pytest_configure"]

    def pytest_configure(config: pytest.Config) -> None:
        """Register the ``nanomq_broker`` marker."""
        config.addinivalue_line("markers", "nanomq_broker(args=(), principals=None): how the nanomq_broker "
                                "fixture starts its broker (extra nanomq-broker flags; principals for --auth-file)")

    @pytest.fixture
    def nanomq_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerProcess]:
        """A running broker on a free port with a temporary data dir; stopped after the test. A
        ``@pytest.mark.nanomq_broker(args=..., principals=...)`` on the test says how to start it."""
        marker = request.node.get_closest_marker("nanomq_broker")
        kwargs = dict(marker.kwargs) if marker is not None else {}
        broker = BrokerProcess(tmp_path / "nanomq-data", **kwargs)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()
