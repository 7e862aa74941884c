"""The broker's state tables (nanomq/broker/state.py) and the subscription that moves through one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from nanomq.broker.state import (
    CONNECTION_TRANSITIONS,
    SUBSCRIPTION_TRANSITIONS,
    WRITE_TRANSITIONS,
    BrokerStateError,
    ConnectionEvent,
    ConnectionState,
    SubscriptionEvent,
    SubscriptionState,
    WriteEvent,
    WriteState,
    next_state,
)
from nanomq.broker.subscription import Subscription

TABLES = [
    (CONNECTION_TRANSITIONS, ConnectionState, ConnectionEvent),
    (WRITE_TRANSITIONS, WriteState, WriteEvent),
    (SUBSCRIPTION_TRANSITIONS, SubscriptionState, SubscriptionEvent),
]
BROKER = Path(__file__).resolve().parents[1] / "nanomq" / "broker"


@pytest.mark.parametrize(("table", "states", "events"), TABLES, ids=["connection", "write", "subscription"])
def test_every_pair_is_a_listed_move_or_refused(table, states, events) -> None:  # type: ignore[no-untyped-def]
    assert set(table) == set(states)  # every state has a row, even a terminal one
    for state in states:
        for event in events:
            if event in table[state]:
                assert next_state(table, state, event) is table[state][event]
            else:
                with pytest.raises(BrokerStateError, match=f"{event.value}.*{state.value}"):
                    next_state(table, state, event)


def test_the_connection_moves_one_way_and_only_open_states_can_fail() -> None:
    c, e = ConnectionState, ConnectionEvent
    assert next_state(CONNECTION_TRANSITIONS, c.NEW, e.MADE) is c.AWAITING_HELLO
    assert next_state(CONNECTION_TRANSITIONS, c.AWAITING_HELLO, e.HELLO) is c.ACTIVE
    assert {s for s in c if e.FATAL in CONNECTION_TRANSITIONS[s]} == {c.AWAITING_HELLO, c.ACTIVE}
    assert {s for s in c if e.LOST in CONNECTION_TRANSITIONS[s]} == {c.AWAITING_HELLO, c.ACTIVE, c.CLOSING}
    assert CONNECTION_TRANSITIONS[c.CLOSED] == {}
    with pytest.raises(BrokerStateError):
        next_state(CONNECTION_TRANSITIONS, c.ACTIVE, e.HELLO)  # a second HELLO is a bug if it gets here


def test_pause_and_resume_alternate() -> None:
    w = next_state(WRITE_TRANSITIONS, WriteState.FLOWING, WriteEvent.PAUSE)
    assert w is WriteState.PAUSED
    with pytest.raises(BrokerStateError):
        next_state(WRITE_TRANSITIONS, w, WriteEvent.PAUSE)
    assert next_state(WRITE_TRANSITIONS, w, WriteEvent.RESUME) is WriteState.FLOWING


def test_a_subscription_delivers_only_once_announced() -> None:
    sub = Subscription(1, None, 5, 10)  # type: ignore[arg-type]
    assert sub.state is SubscriptionState.ANNOUNCING
    assert sub.announced() and sub.state is SubscriptionState.READY
    sub.seek(2)
    assert sub.state is SubscriptionState.ANNOUNCING and (sub.start_id, sub.next_id, sub.committed) == (2, 2, 2)
    sub.seek(3)  # a second SEEK before the first SEEK_OK is written
    assert not sub.announced() and sub.state is SubscriptionState.ANNOUNCING  # the first SEEK_OK
    assert sub.announced()  # the second
    sub.end()
    assert sub.state is SubscriptionState.ENDED
    assert not sub.announced()  # its SUBSCRIBED written after UNSUBSCRIBE: it stays ended
    with pytest.raises(BrokerStateError):
        sub.seek(3)
    with pytest.raises(BrokerStateError):
        sub.end()


def _broker_imports(path: Path) -> set[str]:
    """The nanomq.broker modules ``path`` imports, under TYPE_CHECKING too."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if isinstance(node, ast.ImportFrom) and node.module == "nanomq.broker":
            names = [f"nanomq.broker.{a.name}" for a in node.names]
        out |= {n.split(".")[2] for n in names if n.startswith("nanomq.broker.")}
    return out


def test_no_import_cycle_in_the_broker() -> None:
    graph = {p.stem: _broker_imports(p) - {p.stem} for p in BROKER.glob("*.py") if p.stem != "__init__"}
    assert graph["connection"] and "server" not in graph["connection"]
    done: set[str] = set()

    def visit(mod: str, path: tuple[str, ...]) -> None:
        assert mod not in path, f"import cycle: {' -> '.join((*path, mod))}"
        if mod in done:
            return
        for dep in graph.get(mod, ()):
            visit(dep, (*path, mod))
        done.add(mod)

    for mod in graph:
        visit(mod, ())
