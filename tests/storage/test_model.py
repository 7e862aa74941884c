"""Model-based test (hypothesis): random appends, syncs, reads, time lookups, retention and
reopens (clean and unclean) against a plain Python list of what was appended."""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from nanomq.storage import TopicLog
from tests.storage.helpers import batch, records

SEG = 8192


class LogModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="nmq-model-")
        self.log = TopicLog.open(self.dir, segment_bytes=SEG, fsync="never")
        self.model: list[tuple[int, bytes]] = []  # (timestamp, payload) of ids 1..n
        self.first = 1
        self.clock = 1_000

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(sizes=st.lists(st.integers(0, 700), min_size=1, max_size=12), step=st.integers(-5, 50))
    def append(self, sizes: list[int], step: int) -> None:
        self.clock += step  # the clock may step back: the log clamps
        ts = max(self.clock, self.model[-1][0] if self.model else 0)
        ps = [bytes([len(self.model) % 251]) * n for n in sizes]
        first, last = self.log.append_batch(batch(ps), len(ps), timestamp_ns=self.clock)
        assert first == len(self.model) + 1 and last == first + len(ps) - 1
        self.model += [(ts, p) for p in ps]

    @rule()
    def sync(self) -> None:
        assert self.log.sync() == len(self.model)

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        frm = data.draw(st.integers(0, len(self.model) + 2))
        r = self.log.read(frm, data.draw(st.integers(1, 50)), data.draw(st.integers(1, 20000)))
        start = max(frm, self.first)
        assert r.first_id == start
        if start > len(self.model):
            assert r.count == 0
            return
        assert r.count >= 1
        for rid, ts, _topic, payload in records(r.data, r.count):
            assert (ts, payload) == self.model[rid - 1]

    @rule(data=st.data())
    def find_ts(self, data: st.DataObject) -> None:
        if not self.model:
            return
        t = data.draw(st.integers(self.model[0][0] - 2, self.model[-1][0] + 2))
        expect = next((i + 1 for i in range(self.first - 1, len(self.model)) if self.model[i][0] >= t),
                      len(self.model) + 1)
        assert self.log.find_by_timestamp(t) == expect

    @precondition(lambda self: len(self.model) > 0)
    @rule(keep=st.integers(SEG, 6 * SEG))
    def retention(self, keep: int) -> None:
        self.log.close()
        self.log = TopicLog.open(self.dir, segment_bytes=SEG, fsync="never", retention_bytes=keep)
        self.log.apply_retention()
        self.first = self.log.first_id
        assert self.first <= len(self.model) + 1

    @rule(clean=st.booleans())
    def reopen(self, clean: bool) -> None:
        self.log.close(clean=clean)
        self.log = TopicLog.open(self.dir, segment_bytes=SEG, fsync="never", on_corrupt="raise")
        assert self.log.report.clean == clean
        assert self.log.report.truncated_bytes == 0

    @invariant()
    def ids(self) -> None:
        assert self.log.next_id == len(self.model) + 1
        assert self.log.first_id == self.first


LogModel.TestCase.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)
test_log_model = LogModel.TestCase
