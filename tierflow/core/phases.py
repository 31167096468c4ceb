"""How a flow submits a phase task: its route is resolved first, so the task run is created with its tags.

Prefect sets a task run's tags when it creates the run; afterwards only the run's name can change. So the
flow resolves `phase -> complexity -> tier -> model` before submitting, and the task run carries
`phase:`, `complexity:`, `tier:` and `model:` from its first state on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prefect import Task
from prefect.futures import as_completed

from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.errors import BudgetExceeded, ProviderError, VaultError
from tierflow.core.progress import advance as _advance
from tierflow.core.progress import prefect_progress
from tierflow.core.routing import Route

R = TypeVar("R")


def advance(phase: str, done: int, total: int, subject: str = "") -> None:
    """Tell the CLI's progress bars and the flow run's Prefect progress artifact."""
    _advance(phase, done, total, subject)
    prefect_progress(phase, done, total, subject)


T = TypeVar("T")


def phase_route(
    settings: RunSettings,
    *,
    phase: str,
    complexity: str,
    front_matter: Mapping[str, Any] | None = None,
    note: str = "",
) -> Route:
    return caller_for(settings).route(phase, complexity, front_matter=front_matter, note=note)


def phase_task(
    task: Task[..., R],
    settings: RunSettings,
    *,
    phase: str,
    complexity: str,
    subject: str,
    front_matter: Mapping[str, Any] | None = None,
    note: str = "",
) -> Task[..., R]:
    """`task`, named `<phase> · <subject>` and tagged with its route, ready to call or `.submit()`."""
    routed = phase_route(settings, phase=phase, complexity=complexity, front_matter=front_matter, note=note)
    return task.with_options(
        name=f"{phase}",
        task_run_name=f"{phase} · {subject}"[:100],
        tags=sorted(routed.tags),
    )


@dataclass
class PhaseOutcome(Generic[R]):
    """What a fanned-out phase produced, what it skipped and why, and whether a budget halted it."""

    results: list[R] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    halted: str | None = None
    failed: str | None = None
    batches: list[str] = field(default_factory=list)
    """Provider batch ids this phase submitted or is waiting on."""


def fan_out(
    task: Task[..., R],
    settings: RunSettings,
    items: Sequence[T],
    *,
    phase: str,
    complexity: str,
    subject: Callable[[T], str],
    args: Callable[[T], tuple[Any, ...]],
    front_matter: Callable[[T], Mapping[str, Any] | None] = lambda _: None,
    path: Callable[[T], str] = lambda _: "",
    warm: bool = False,
) -> PhaseOutcome[R]:
    """Submit one tagged task per item and gather them as they finish.

    A provider failure or malformed answer skips that item with its reason and the rest go on. A budget
    halt stops the phase: finished items are kept, unfinished ones are listed as not done. With `warm` (the
    items' prompts share a cacheable prefix), the first item runs alone and the rest fan out once it has
    answered: the provider writes the prefix to its cache once, and every other call reads it, where
    calls started together would each pay the cache write.
    """
    outcome: PhaseOutcome[R] = PhaseOutcome()
    futures = {}
    for index, item in enumerate(items):
        tagged = phase_task(
            task,
            settings,
            phase=phase,
            complexity=complexity,
            subject=subject(item),
            front_matter=front_matter(item),
            note=path(item),
        )
        future = tagged.submit(*args(item))
        futures[future] = index
        if warm and index == 0 and len(items) > 1:
            future.wait()
    finished: dict[int, R] = {}
    advance(phase, 0, len(items))
    for done, future in enumerate(as_completed(list(futures)), start=1):
        item = items[futures[future]]
        name = path(item) or subject(item)
        try:
            finished[futures[future]] = future.result()
        except BudgetExceeded as exc:
            outcome.halted = outcome.halted or str(exc)
            outcome.skipped.append((name, f"not done: budget halted the {phase} phase"))
        except (ProviderError, VaultError) as exc:
            outcome.skipped.append((name, f"{phase} failed: {exc}"))
        advance(phase, done, len(items), subject(item))
    # Input order, not completion order: later prompts (and so their cache keys) must not depend on timing.
    outcome.results = [finished[i] for i in sorted(finished)]
    return outcome


def single(
    task: Task[..., R],
    settings: RunSettings,
    *args: Any,
    phase: str,
    complexity: str,
    subject: str,
) -> PhaseOutcome[R]:
    """Run one tagged phase task; a failure fails the phase with its cause, and the run goes on to report."""
    outcome: PhaseOutcome[R] = PhaseOutcome()
    advance(phase, 0, 1)
    try:
        outcome.results.append(phase_task(task, settings, phase=phase, complexity=complexity, subject=subject)(*args))
    except BudgetExceeded as exc:
        outcome.halted = str(exc)
    except ProviderError as exc:
        # Earlier phases' answers are cached in the ledger: a rerun after the fix does not pay for them again.
        outcome.failed = f"{phase} failed: {exc}. Earlier phases are kept; rerun to continue from them."
    advance(phase, 1, 1, subject)
    return outcome
