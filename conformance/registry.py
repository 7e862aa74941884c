"""Cases: what each checks (spec rule IDs), which layer it is in, and how a result becomes a verdict.

A case is a function taking a :class:`Context`. It returns normally when the target behaves,
raises :class:`Failed` when it does not, :class:`Unimplemented` when the target lacks an optional
capability, and :class:`Skipped` when the kit cannot run it here (no launch command, no strace).
"""

from __future__ import annotations

import copy
import itertools
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nanomq.protocol import Capability

if TYPE_CHECKING:
    from conformance.target import AuthSpec, Target
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
    exclusive: bool = False
    """Runs with no other case at the same time (it restarts the target, fills a limit, or
    measures). Cases of the crash, storage and budgets layers are always exclusive."""
    restarts: bool = False
    """Stops or restarts the target (always exclusive): when the kit runs a second instance of the
    target, such a case runs there, with the crash and storage layers, not beside the wire cases.
    Every case of the crash and storage layers restarts."""


CASES: list[Case] = []


def case(id: str, title: str, *, layer: str, rules: tuple[str, ...] | list[str], needs: Capability | None = None,
         randomized: bool = False, exclusive: bool = False, restarts: bool = False
         ) -> Callable[[Callable[[Context], None]], Callable[[Context], None]]:
    """Register a case function."""
    assert layer in LAYERS, layer

    def register(fn: Callable[[Context], None]) -> Callable[[Context], None]:
        if any(c.id == id for c in CASES):
            raise ValueError(f"duplicate case id {id}")
        CASES.append(Case(id, title, layer, tuple(rules), fn, needs, randomized,
                          exclusive or restarts or layer in ("crash", "storage", "budgets"),
                          restarts or layer in ("crash", "storage")))
        return fn

    return register


_steps = threading.local()
"""The rules of the checks running on this thread (innermost last); see :meth:`Context.step`."""


_case_ctx = threading.local()
"""The Context of the case running on this thread (set by the runner), for :func:`soft_check`."""


def soft_check(condition: bool, message: str, *rules: str) -> None:
    """Record a failure of a SHOULD (or MAY) rule without stopping the case: the case goes on
    checking its MUST rules, and ends NON-STRICT with these rules if nothing else failed. Outside
    a case's own thread (a helper thread of a history case) it does nothing."""
    ctx = getattr(_case_ctx, "ctx", None)
    if not condition and ctx is not None:
        ctx.soft.append((message, rules))


def current_rules() -> tuple[str, ...]:
    """The rules of the innermost :meth:`Context.step` active on this thread (empty: none)."""
    stack: list[tuple[str, ...]] = getattr(_steps, "stack", [])
    return stack[-1] if stack else ()


@contextmanager
def _step(rules: tuple[str, ...], verified: list[str] | None = None) -> Iterator[None]:
    stack: list[tuple[str, ...]] = getattr(_steps, "stack", None) or []
    _steps.stack = stack
    stack.append(rules)
    try:
        yield
        if verified is not None:
            verified.extend(rules)
    except Failed as e:
        if not e.rules:
            e.rules = rules
        raise
    except (Unimplemented, Skipped):
        raise
    except Exception as e:
        # The target did something this check did not foresee (no answer, a closed connection, a
        # frame the codec rejects): that fails the rule being checked, not every rule of the case.
        raise Failed(f"{type(e).__name__}: {e}", rules) from e
    finally:
        stack.pop()


class _TopicNames:
    """Topic names unique across the cases of a run (cases may run on several threads)."""

    def __init__(self, run: str) -> None:
        self.run = run
        self._n = itertools.count(1)
        self._lock = threading.Lock()

    def next(self, hint: str) -> str:
        with self._lock:
            return f"cf-{hint}-{self.run}-{next(self._n)}"


@dataclass
class Context:
    """What a case gets: the target, the capabilities under test, a seeded RNG and options.

    The runner gives every case its own copy (:meth:`for_case`): own notes, and an RNG seeded from
    the run's seed and the case id, so a case replays the same with ``--seed`` whatever else runs.
    """

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
    max_frame: int = 0
    auth: AuthSpec | None = None
    """The principals of the security cases (``[target.auth]``); None: those cases are skipped."""
    auth_target: Target | None = None
    """The instance that authenticates (the main target, or one the kit started for them)."""
    rng: random.Random = field(init=False)
    notes: list[str] = field(default_factory=list)
    soft: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    """Failures of SHOULD rules recorded by :func:`soft_check` (message, rules)."""
    verified: list[str] = field(default_factory=list)
    """Rules of the steps of this case that completed: a case that fails at a later step still
    verified these (the runner reports them)."""
    _names: _TopicNames = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._names = _TopicNames(f"{self.seed:x}-{random.Random().getrandbits(24):06x}")

    def for_case(self, c: Case) -> Context:
        """A copy for running ``c``: fresh notes, an RNG of its own, the same topic namespace."""
        other = copy.copy(self)
        other.notes = []
        other.verified = []
        other.soft = []
        other.rng = random.Random(f"{self.seed}:{c.id}")
        return other

    def topic(self, hint: str = "t") -> str:
        """A topic name no other case (or earlier run against the same broker) uses."""
        name = self._names.next(hint)
        created = getattr(self.target, "created_topics", None)
        if created is not None:
            created.append(name)
        return name

    def client(self) -> WireClient:
        """A connection that has done HELLO."""
        return self.target.client()

    def has(self, cap: Capability) -> bool:
        """Whether ``cap`` is under test (announced and not narrowed away)."""
        return bool(self.capabilities & cap)

    def note(self, text: str) -> None:
        """Add a line to the case's report (measured figures, observations)."""
        self.notes.append(text)

    def step(self, *rules: str) -> AbstractContextManager[None]:
        """``with ctx.step("NMQ-4.4-4"): ...``: the checks inside are of these rules. A
        :class:`Failed` without rules gets them, and any unexpected exception inside (a timeout,
        a closed connection, a frame the codec rejects) becomes a :class:`Failed` of these rules
        only; a case that raises outside every step fails all of its rules."""
        return _step(tuple(rules), self.verified)


def check(condition: bool, message: str, *rules: str) -> None:
    """Raise Failed(message) unless ``condition``; without ``rules``, those of the current step."""
    if not condition:
        raise Failed(message, tuple(rules) or current_rules())


def bind_case_context(ctx: Context | None) -> None:
    """Make ``ctx`` the current case's context on this thread (the runner does this)."""
    _case_ctx.ctx = ctx


__all__ += ["check", "current_rules", "soft_check", "bind_case_context"]
