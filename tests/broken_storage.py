"""Reference brokers with one storage or durability rule broken, to prove the kit's storage layer
and durable-ack proof catch them (tests/test_kit_storage.py).

``python -m tests.broken_storage --fault NAME <nanomq-broker flags>``:

* ``sync-other-file``: a durable ack waits for an fsync, but of the topic's ``topic_id`` file, not
  of the segment holding the records (the old durability check, "any sync in the window", passed);
* ``hang-on-damage``: a subscription that meets damaged stored bytes gets no answer (it hangs, as
  before issue 10's fix);
* ``forget-topic-id``: a damaged ``topic_id`` file gives the topic a new id instead of the one its
  records carry.
"""

from __future__ import annotations

import os
import sys

FAULTS = ("sync-other-file", "hang-on-damage", "forget-topic-id")


def _patch(fault: str) -> None:
    import asyncio

    from nanomq.broker import connection, topics
    from nanomq.protocol import ErrorCode
    from nanomq.storage import catalog

    if fault == "sync-other-file":
        def start_sync(self: topics.Topic) -> None:
            def other() -> int:
                fd = os.open(os.path.join(self.log.path, "topic_id"), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                return self.log.next_id - 1

            def done(fut: asyncio.Future[int]) -> None:
                exc = fut.exception()
                self.sync_finished(0 if exc else fut.result(), exc)

            self._syncing = True
            self._unsynced = 0
            asyncio.get_running_loop().run_in_executor(None, other).add_done_callback(done)

        topics.Topic._start_sync = start_sync  # type: ignore[method-assign]
    elif fault == "hang-on-damage":
        fatal = connection.Connection._fatal

        def quiet(self: connection.Connection, code: ErrorCode, message: str, rule: str = "") -> None:
            if code != ErrorCode.STORAGE_ERROR:
                fatal(self, code, message, rule)

        connection.Connection._fatal = quiet  # type: ignore[method-assign]
    elif fault == "forget-topic-id":
        catalog._first_record_topic_id = lambda path: None
    else:
        raise SystemExit(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--fault":
        print(f"usage: python -m tests.broken_storage --fault {{{','.join(FAULTS)}}} [broker flags]", file=sys.stderr)
        return 2
    _patch(argv[1])
    from nanomq.cli.broker import main as broker_main

    return broker_main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
