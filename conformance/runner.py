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

__all__ = ["CaseResult", "RunResult", "run_cases", "VERDICTS"]
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


def run_cases(cases: list[Case], ctx: Context, rules: dict[str, Rule],
              progress: Callable[[CaseResult], None] | None = None, fail_fast: bool = False,
              jobs: int = 1, before_layer: Callable[[str], None] | None = None) -> RunResult:
    """Run ``cases`` (layer order is the caller's choice). Consecutive non-exclusive cases run
    ``jobs`` at a time on threads (they use topics of their own, so they cannot disturb each
    other's checks); an exclusive case runs alone. ``fail_fast`` stops after the first FAILED
    case. ``before_layer(layer)`` runs before the first case of each layer (the kit gives the crash
    layer a fresh data directory). Results keep the order of ``cases``."""
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

    i = 0
    layer = ""
    while i < len(cases) and not stop.is_set():
        if cases[i].layer != layer:
            layer = cases[i].layer
            if before_layer is not None:
                before_layer(layer)
        if cases[i].exclusive or jobs <= 1:
            finish(i, run_one(cases[i], ctx, rules))
            i += 1
            continue
        j = i
        while j < len(cases) and not cases[j].exclusive and cases[j].layer == layer:
            j += 1
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="case") as pool:
            futures = []
            for k in range(i, j):
                def job(k: int = k) -> None:
                    if not stop.is_set():
                        finish(k, run_one(cases[k], ctx, rules))
                futures.append(pool.submit(job))
            for f in futures:
                f.result()
        i = j
    return RunResult([done[k] for k in sorted(done)], ctx.seed, time.monotonic() - t0)


def all_cases() -> list[Case]:
    """Every registered case, layers in order (importing the case modules registers them)."""
    from conformance import (  # noqa: F401
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
        cases_session,
        cases_storage,
        cases_vectors,
        cases_wire,
    )
    from conformance.registry import LAYERS

    return sorted(CASES, key=lambda c: LAYERS.index(c.layer))


__all__ += ["all_cases"]
