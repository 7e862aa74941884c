"""Hypothesis strategies for arbitrary valid frames of every type."""

from __future__ import annotations

from hypothesis import strategies as st

from nanomq.protocol import (
    Ack,
    Commit,
    Committed,
    Credit,
    Deliver,
    Error,
    Hello,
    HelloOk,
    Metadata,
    MetadataOk,
    Ping,
    Pong,
    Publish,
    PublishAck,
    RecordBatch,
    RecordFlag,
    Seek,
    SeekOk,
    Start,
    Subscribe,
    Subscribed,
    TopicInfo,
    Unsubscribe,
    Unsubscribed,
)

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)
rid = u64
names = st.text(alphabet="abcxyzABC019._-", min_size=1, max_size=40).filter(lambda s: s not in (".", ".."))
ids = st.integers(1, (1 << 64) - 1)


@st.composite
def batches(draw: st.DrawFn, stored: bool = False) -> RecordBatch:
    payloads = draw(st.lists(st.binary(max_size=300), min_size=1, max_size=12))
    flags = draw(st.lists(st.sampled_from([0, int(RecordFlag.LZ4)]), min_size=len(payloads), max_size=len(payloads)))
    raw = [draw(st.integers(0, 65536)) if f else 0 for f in flags]
    producer = draw(st.one_of(st.just(0), u64))
    return RecordBatch.from_payloads(
        payloads, flags=flags, raw_sizes=raw,
        first_id=draw(st.integers(1, 1 << 62)) if stored else 0,
        timestamp_ns=draw(u64) if stored else 0,
        topic_id=draw(u32) if stored else 0,
        producer_id=producer, first_sequence=draw(st.integers(0, 1 << 62)),
    )


requests = st.one_of(
    st.builds(Hello, rid, u16, st.text(max_size=30), st.binary(max_size=40)),
    st.builds(Publish, rid, names, st.sampled_from(list(Ack)), batches()),
    st.builds(Subscribe, rid, names, st.sampled_from(list(Start)), u64, u32, st.one_of(st.just(""), names)),
    st.builds(Unsubscribe, rid, u32),
    st.builds(Credit, rid, u32, u32),
    st.builds(Commit, rid, u32, st.lists(ids, min_size=1, max_size=256).map(tuple)),
    st.builds(Seek, rid, u32, st.sampled_from(list(Start)), u64),
    st.builds(Metadata, rid, st.one_of(st.just(""), names)),
    st.builds(Ping, rid, u64),
)

responses = st.one_of(
    st.builds(HelloOk, rid, u16, u32, u32, u32, u32, st.text(max_size=30)),
    st.builds(PublishAck, rid, u64, u32),
    st.builds(Subscribed, rid, u32, u32, u64, u64),
    st.builds(Unsubscribed, rid),
    st.builds(Deliver, st.just(0), u32, batches(stored=True)),
    st.builds(Committed, rid, u64),
    st.builds(SeekOk, rid, u64),
    st.builds(MetadataOk, rid, st.lists(st.builds(TopicInfo, u32, names, u64, u64), max_size=5).map(tuple)),
    st.builds(Pong, rid, u64),
    st.builds(Error, rid, u16, st.text(max_size=50), st.text(alphabet="NMQ-0123456789.", max_size=20)),
)
