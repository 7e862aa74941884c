"""Cases: what each checks (spec rule IDs), which layer it is in, and how a result becomes a verdict.

A case is a function taking a :class:`Context`. It returns normally when the target behaves,
raises :class:`Failed` when it does not, :class:`Unimplemented` when the target lacks an optional
capability, and :class:`Skipped` when the kit cannot run it here (no launch command, no strace).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nanomq.protocol import Capability

if TYPE_CHECKING:
    from conformance.target import Target
    from conformance.wire import WireClient

__all__ = ["Case", "Context", "Failed", "Unimplemented", "Skipped", "case", "CASES", "LAYERS"]

LAYERS = ("vectors", "wire", "history", "crash", "storage", "budgets")


class Failed(AssertionError):
    """The target broke a rule. ``rules`` narrows which of the case's rules (default: all)."""

    def __init__(self, message: str, rules: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.rules = rules


class Unimplemented(Exception):
    """The target does not announce a capability the case needs. ``verified`` names rules the
    case could still check (typically that the target answered NOT_SUPPORTED, [NMQ-7-1])."""

    def __init__(self, message: str, verified: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.verified = verified


class Skipped(Exception):
    """The kit cannot run the case against this target (say why)."""


@dataclass(frozen=True, slots=True)
class Case:
    """A registered case."""

    id: str
    title: str
    layer: str
    rules: tuple[str, ...]
    fn: Callable[[Context], None]
    needs: Capability | None = None
    randomized: bool = False


CASES: list[Case] = []


def case(id: str, title: str, *, layer: str, rules: tuple[str, ...] | list[str], needs: Capability | None = None,
         randomized: bool = False) -> Callable[[Callable[[Context], None]], Callable[[Context], None]]:
    """Register a case function."""
    assert layer in LAYERS, layer

    def register(fn: Callable[[Context], None]) -> Callable[[Context], None]:
        if any(c.id == id for c in CASES):
            raise ValueError(f"duplicate case id {id}")
        CASES.append(Case(id, title, layer, tuple(rules), fn, needs, randomized))
        return fn

    return register


@dataclass
class Context:
    """What a case gets: the target, the capabilities under test, a seeded RNG and options."""

    target: Target
    capabilities: int
    seed: int
    budgets: dict[str, dict[str, float]] = field(default_factory=dict)
    enforce_budgets: bool = False
    crash_iterations: int = 3
    max_batch: int = 256
    max_payload: int = 65536
    quick: bool = False
    """The fast mode (--quick): cases shrink their workloads; every rule is still checked."""
    rng: random.Random = field(init=False)
    _topic_n: int = field(init=False, default=0)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._run = f"{self.seed:x}-{random.Random().getrandbits(24):06x}"

    def topic(self, hint: str = "t") -> str:
        """A topic name no other case (or earlier run against the same broker) uses."""
        self._topic_n += 1
        return f"cf-{hint}-{self._run}-{self._topic_n}"

    def client(self) -> WireClient:
        """A connection that has done HELLO."""
        return self.target.client()

    def has(self, cap: Capability) -> bool:
        """Whether ``cap`` is under test (announced and not narrowed away)."""
        return bool(self.capabilities & cap)

    def note(self, text: str) -> None:
        """Add a line to the case's report (measured figures, observations)."""
        self.notes.append(text)


def check(condition: bool, message: str, *rules: str) -> None:
    """Raise Failed(message) unless ``condition``."""
    if not condition:
        raise Failed(message, tuple(rules))


__all__ += ["check"]
