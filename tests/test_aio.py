"""The asyncio twins against a real broker (asyncio.run inside plain pytest functions)."""

from __future__ import annotations

import asyncio

import pytest

from nanomq.aio import AsyncPublisher, AsyncSubscriber
from nanomq.client import NotSupportedError


def test_async_roundtrip_seek_commit(nanomq_broker) -> None:
    async def main() -> None:
        async with await AsyncPublisher.connect(nanomq_broker.address) as pub:
            assert await pub.publish("a", b"first") == 1
            assert await pub.publish_batch("a", [str(i).encode() for i in range(600)]) == 600
            async with await AsyncSubscriber.connect(nanomq_broker.address) as sub:
                assert await sub.subscribe("a") is True
                assert await sub.subscribe("a") is False
                m = await sub.poll()
                assert m is not None and m.id == 1 and m.data == b"first"
                got = []
                while len(got) < 600:
                    got += await sub.poll_batch(256, 2_000_000)
                assert [x.id for x in got] == list(range(2, 602))
                assert await sub.commit(m) == 2
                assert await sub.seek(300) is True
                assert (await sub.poll()).id == 300
                assert await sub.seek_to_timestamp(m.timestamp) is True
                assert (await sub.poll()).id == 1
                assert await sub.seek(10_000) is False
                assert [t.name for t in await sub.topics()] == ["a"]
                assert await sub.unsubscribe("a") is True
                assert await sub.poll(50_000) is None

    asyncio.run(main())


def test_async_batching_compression_and_groups(nanomq_broker) -> None:
    async def main() -> None:
        async with await AsyncPublisher.connect(nanomq_broker.address, ack="written") as pub:
            await pub.set_compression_threshold(64)
            await pub.set_batching_enabled(True)
            assert await pub.publish("b", b"q" * 1000) == 0
            await asyncio.sleep(0.05)
            await pub.set_batching_enabled(False)
            async with await AsyncSubscriber.connect(nanomq_broker.address) as sub:
                await sub.subscribe("b")
                m = await sub.poll()
                assert m.data == b"q" * 1000 and m.header.flags == 1
        with pytest.raises(NotSupportedError):
            await AsyncSubscriber.connect(nanomq_broker.address, consumer_group="g")

    asyncio.run(main())


def test_async_subscriber_resumes_after_restart(nanomq_broker) -> None:
    async def main() -> None:
        async with await AsyncPublisher.connect(nanomq_broker.address, ack="written") as pub:
            await pub.publish_batch("r", [str(i).encode() for i in range(50)])
        sub = await AsyncSubscriber.connect(nanomq_broker.address, window=8, connect_timeout=20)
        await sub.subscribe("r")
        first = await sub.poll_batch(20, 1_000_000)
        await asyncio.get_running_loop().run_in_executor(None, nanomq_broker.restart)
        rest: list = []
        for _ in range(200):
            rest += await sub.poll_batch(256, 200_000)
            if len(first) + len(rest) >= 50:
                break
        assert [m.id for m in first + rest] == list(range(1, 51))
        await sub.close()

    asyncio.run(main())
