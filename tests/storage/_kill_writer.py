"""Child process of the SIGKILL tests: append forever, printing each acknowledged last id.

Usage: python -m tests.storage._kill_writer DIR POLICY SEGMENT_BYTES SEED. With fsync=always a
line is printed after sync() returns (a durable ack); otherwise after append returns (a written
ack: it must survive a process crash too, since the page cache does). Payloads are a pure
function of the record id (see expected_payload), so the parent can check every byte.
"""

from __future__ import annotations

import random
import sys

from nanomq.storage import TopicLog
from tests.storage.helpers import batch


def expected_payload(rid: int) -> bytes:
    """The payload the writer stores under id ``rid``."""
    size = (rid * 2654435761) % 301
    head = f"{rid}:".encode()
    return (head * (size // len(head) + 1))[:size]


def main() -> None:
    directory, policy, seg, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rnd = random.Random(seed)
    log = TopicLog.open(directory, segment_bytes=seg, fsync=policy, on_corrupt="raise")  # type: ignore[arg-type]
    out = sys.stdout
    out.write(f"ready {log.next_id}\n")
    out.flush()
    while True:
        nxt = log.next_id
        k = rnd.randint(1, 64)
        first, last = log.append_batch(batch([expected_payload(nxt + i) for i in range(k)]), k, sync=False)
        assert first == nxt
        if policy == "always":
            log.sync()
        out.write(f"{last}\n")
        out.flush()


if __name__ == "__main__":
    main()
