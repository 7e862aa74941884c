"""Run cases against a target and turn outcomes into verdicts per case and per spec rule."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from conformance.registry import CASES, Case, Context, Failed, Skipped, Unimplemented, bind_case_context
from conformance.rules import Rule

__all__ = ["CaseResult", "RunResult", "run_cases", "VERDICTS", "SIDE_LAYERS", "side_lane"]
# Per-rule verdicts (rule_verdicts) are in conformance.verdicts.

VERDICTS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")


@dataclass
class CaseResult:
    """What one case gave."""

    case: Case
    verdict: str
    message: str = ""
    failed_rules: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    verified_rules: tuple[str, ...] = ()
    """Rules an UNIMPLEMENTED case still verified (e.g. the NOT_SUPPORTED answer)."""


@dataclass
class RunResult:
    """Every case result plus the seed that reproduces the run."""

    results: list[CaseResult]
    seed: int
    duration_s: float


def _level(rule_ids: tuple[str, ...], rules: dict[str, Rule]) -> str:
    levels = {rules[r].level for r in rule_ids if r in rules}
    return "MUST" if "MUST" in levels or not levels else ("SHOULD" if "SHOULD" in levels else "MAY")


def run_one(c: Case, ctx: Context, rules: dict[str, Rule]) -> CaseResult:
    """Run one case on its own copy of ``ctx``; never raises."""
    ctx = ctx.for_case(c)
    t0 = time.monotonic()
    if c.layer in ("crash", "storage") and not ctx.target.can_crash:
        return CaseResult(c, "INFORMATIONAL", "skipped: no launch command: the kit cannot crash and restart the "
                          "target", duration_s=0.0)
    if c.needs is not None and not ctx.has(c.needs):
        return CaseResult(c, "UNIMPLEMENTED", f"capability {c.needs.name} not announced", duration_s=0.0)
    bind_case_context(ctx)
    try:
        c.fn(ctx)
        if ctx.soft:  # only SHOULD failures: the case ran to its end and checked every other rule
            ctx.verified.extend(c.rules)
            raise Failed("; ".join(m for m, _ in ctx.soft[:4]),
                         tuple(dict.fromkeys(r for _, rs in ctx.soft for r in rs)))
        verdict, msg, failed = ("INFORMATIONAL" if c.layer == "budgets" else "OK"), "", ()
    except Failed as e:
        failed = e.rules or c.rules
        budget = any(r.startswith("BUDGET:") for r in failed)
        verdict = "FAILED" if budget or _level(tuple(r for r in failed if r in rules), rules) == "MUST" else "NON-STRICT"
        msg = str(e)
        if e.__cause__ is not None:
            msg += "\n" + "".join(traceback.format_exception(e.__cause__, limit=-3))
    except Unimplemented as e:
        bind_case_context(None)
        return CaseResult(c, "UNIMPLEMENTED", str(e), (), list(ctx.notes), time.monotonic() - t0, e.verified)
    except Skipped as e:
        verdict, msg, failed = "INFORMATIONAL", f"skipped: {e}", ()
    except Exception as e:
        # Raised outside every ctx.step(): the kit cannot tell which check was running, so every
        # rule of the case fails (cases wrap their phases in steps to avoid this).
        failed = c.rules
        verdict = "FAILED" if _level(c.rules, rules) == "MUST" else "NON-STRICT"
        msg = (f"{type(e).__name__}: {e} (outside any step, so every rule of the case)\n"
               + "".join(traceback.format_exc(limit=-4)))
    bind_case_context(None)
    # Rules of the steps that completed before a failure were verified all the same.
    verified = tuple(dict.fromkeys(r for r in ctx.verified if r not in failed)) if failed else ()
    return CaseResult(c, verdict, msg, tuple(failed), list(ctx.notes), time.monotonic() - t0, verified)


SIDE_LAYERS = ("crash", "storage")
"""The layers whose every case stops, kills or restarts its target (:attr:`Case.restarts`), which
would disturb any case running beside it on the same one."""


def side_lane(c: Case) -> str:
    """Which instance of the target a case that restarts it runs on, when the kit runs more than
    one: the storage layer on one, the crash layer and the wire cases that restart on another."""
    return "storage" if c.layer == "storage" else "crash"


def run_cases(cases: list[Case], ctx: Context, rules: dict[str, Rule],
              progress: Callable[[CaseResult], None] | None = None, fail_fast: bool = False,
              jobs: int = 1, before_layer: Callable[[str], None] | None = None,
              side: Callable[[str], Context | None] | None = None) -> RunResult:
    """Run ``cases`` (layer order is the caller's choice). Consecutive non-exclusive cases run
    ``jobs`` at a time on threads (they use topics of their own, so they cannot disturb each
    other's checks); an exclusive case runs alone. ``fail_fast`` stops after the first FAILED
    case. ``before_layer(layer)`` runs before the first case of each layer (the kit gives the crash
    layer a fresh data directory). Results keep the order of ``cases``.

    ``side``, if given, runs the cases that restart their target (:attr:`Case.restarts`: every
    case of :data:`SIDE_LAYERS`, and a few wire cases) on other instances of the target, while
    the rest run on ``ctx``: ``side(lane)`` is called on a thread of its own for each lane of
    :func:`side_lane` and returns the context of a further instance, started, or None if there
    is none. Each lane's cases run there one at a time, in order; the budgets layer runs after
    every lane has finished, on a machine the kit no longer loads. Exclusive still means alone on
    its instance: a crash case restarts only the one it runs on. A lane without an instance runs
    on ``ctx`` after the others, as without ``side``."""
    t0 = time.monotonic()
    done: dict[int, CaseResult] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def finish(i: int, r: CaseResult) -> None:
        with lock:
            done[i] = r
            if progress is not None:
                progress(r)
            if fail_fast and r.verdict == "FAILED":
                stop.set()

    everything = list(range(len(cases)))
    if side is None:
        _run_lane(cases, everything, ctx, rules, finish, stop, jobs, before_layer)
        return RunResult([done[k] for k in sorted(done)], ctx.seed, time.monotonic() - t0)
    lanes: dict[str, list[int]] = {}
    for k in everything:
        if cases[k].restarts and cases[k].layer != "budgets":
            lanes.setdefault(side_lane(cases[k]), []).append(k)
    last_part = [k for k in everything if cases[k].layer == "budgets"]
    in_lanes = {k for part in lanes.values() for k in part}
    main_part = [k for k in everything if k not in in_lanes and k not in last_part]
    lane_ctx: dict[str, Context | None] = {}

    def run_lane(name: str) -> None:
        try:
            lane_ctx[name] = side(name)
        except Exception:  # a bug, not a verdict: say so, and run the lane on ctx after all
            traceback.print_exc()
            lane_ctx[name] = None
        there = lane_ctx[name]
        if there is not None:
            _run_lane(cases, lanes[name], there, rules, finish, stop, 1, None)

    threads = [threading.Thread(target=run_lane, args=(name,), name=f"lane-{name}", daemon=True) for name in lanes]
    for th in threads:
        th.start()
    _run_lane(cases, main_part, ctx, rules, finish, stop, jobs, before_layer)
    for th in threads:
        th.join()
    left = sorted(k for name, part in lanes.items() if lane_ctx.get(name) is None for k in part)
    _run_lane(cases, left, ctx, rules, finish, stop, jobs, before_layer)  # lanes without an instance
    _run_lane(cases, last_part, ctx, rules, finish, stop, jobs, before_layer)
    return RunResult([done[k] for k in sorted(done)], ctx.seed, time.monotonic() - t0)


def _run_lane(cases: list[Case], part: list[int], ctx: Context, rules: dict[str, Rule],
              finish: Callable[[int, CaseResult], None], stop: threading.Event, jobs: int,
              before_layer: Callable[[str], None] | None) -> None:
    """Run the cases numbered ``part`` (ascending) on ``ctx``, handing each result to ``finish``."""
    i = 0
    layer = ""
    while i < len(part) and not stop.is_set():
        if cases[part[i]].layer != layer:
            layer = cases[part[i]].layer
            if before_layer is not None:
                before_layer(layer)
        if cases[part[i]].exclusive or jobs <= 1:
            finish(part[i], run_one(cases[part[i]], ctx, rules))
            i += 1
            continue
        j = i
        while j < len(part) and not cases[part[j]].exclusive and cases[part[j]].layer == layer:
            j += 1
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="case") as pool:
            futures = []
            for k in part[i:j]:
                def job(k: int = k) -> None:
                    if not stop.is_set():
                        finish(k, run_one(cases[k], ctx, rules))
                futures.append(pool.submit(job))
            for f in futures:
                f.result()
        i = j


def all_cases() -> list[Case]:
    """Every registered case, layers in order (importing the case modules registers them)."""
    from conformance import (  # noqa: F401
        cases_admin,
        cases_budgets,
        cases_capabilities,
        cases_content,
        cases_crash,
        cases_durability,
        cases_enums,
        cases_errors,
        cases_history,
        cases_limits,
        cases_resources,
        cases_restart,
        cases_security,
        cases_session,
        cases_storage,
        cases_vectors,
        cases_wire,
    )
    from conformance.registry import LAYERS

    return sorted(CASES, key=lambda c: LAYERS.index(c.layer))


__all__ += ["all_cases"]
