"""Hierarchical synthesis: inputs too big for one prompt are grouped, each group synthesised, then the results.

`group_to_fit` is pure: given the items, how many tokens a group's prompt takes (`measure`), and the token
limit (the routed model's context window minus its answer allowance, `context.prompt_room`), it returns the
fewest groups, in order and balanced, whose prompts each fit. `reduce_in_groups` runs that as phase tasks:
one task per group (`<phase> · group 2/5`, through `phases.fan_out`), then one over the groups' results
(`<phase> · <subject>`), merging in groups again (`<phase> · merge 1/2`) while the results do not fit one
prompt. Every call goes through the ordinary call path, so each has its ledger row and cached answer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prefect import Task
from pydantic import BaseModel

from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.errors import TierflowError
from tierflow.core.phases import PhaseOutcome, fan_out, single
from tierflow.core.routing import Route
from tierflow.core.tokens import count_tokens

T = TypeVar("T")
R = TypeVar("R")

Measure = Callable[[Sequence[T]], int | str]
"""The prompt for a group of items, or its token count; it must accept an empty group (the prompt's frame)."""


class GroupTooLarge(TierflowError):
    """One item alone makes a prompt over the limit, so no grouping can fit it."""

    def __init__(self, item: str, tokens: int, limit: int, hint: str = "") -> None:
        self.item = item
        self.tokens = tokens
        self.limit = limit
        message = (
            f"{item} alone makes a prompt of about {tokens:,} tokens, over the {limit:,} tokens a prompt may "
            "take here, so it cannot be synthesised even in a group of its own"
        )
        super().__init__(f"{message}. {hint}" if hint else message)


def tokens_of(measure: Measure[T], group: Sequence[T]) -> int:
    """`measure` of a group as tokens: a rendered prompt is counted, a count is taken as is."""
    found = measure(group)
    return count_tokens(found) if isinstance(found, str) else found


def prompt_tokens(
    settings: RunSettings, routed: Route, system: str, prompt: str, output: type[BaseModel] | None = None
) -> int:
    """The prompt tokens the call path counts against `routed`'s window for this call (its schema included)."""
    caller = caller_for(settings)
    _, request = caller.build(
        phase=routed.phase, complexity=routed.complexity, system=system, prompt=prompt, output=output, routed=routed
    )
    return caller.estimate(routed, request).prompt_tokens


def group_to_fit(
    items: Sequence[T],
    measure: Measure[T],
    limit: int,
    *,
    label: Callable[[T], str] = str,
    hint: str = "",
) -> list[list[T]]:
    """The fewest groups of `items`, in order and about equal in tokens, whose prompts each fit `limit`.

    All items in one group when they fit. Otherwise each item's share is its own prompt less the empty
    prompt; the items are cut into k runs whose largest share is as small as it can be, k starting from the
    total share over the room, and every group is measured; if one does not fit, k grows by one. Raises
    `GroupTooLarge`, naming the item (by `label`), when an item alone does not fit.
    """
    items = list(items)
    if not items or tokens_of(measure, items) <= limit:
        return [items] if items else []
    frame = tokens_of(measure, [])
    sizes = [tokens_of(measure, [item]) for item in items]
    for item, size in zip(items, sizes, strict=True):
        if size > limit:
            raise GroupTooLarge(label(item), size, limit, hint)
    shares = [max(size - frame, 1) for size in sizes]
    count = max(2, math.ceil(sum(shares) / max(limit - frame, 1)))
    while count < len(items):
        groups = _balanced(items, shares, count)
        if all(tokens_of(measure, group) <= limit for group in groups):
            return groups
        count += 1
    return [[item] for item in items]  # each fits alone, checked above


def _balanced(items: list[T], shares: list[int], count: int) -> list[list[T]]:
    """`items` cut into at most `count` runs whose largest share is as small as it can be."""

    def runs(cap: int) -> list[list[T]]:
        groups: list[list[T]] = [[]]
        held = 0
        for item, share in zip(items, shares, strict=True):
            if groups[-1] and held + share > cap:
                groups.append([])
                held = 0
            groups[-1].append(item)
            held += share
        return groups

    low, high = max(shares), sum(shares)
    while low < high:  # the smallest cap that needs no more than `count` runs
        cap = (low + high) // 2
        low, high = (low, cap) if len(runs(cap)) <= count else (cap + 1, high)
    return runs(low)


def reduce_in_groups(
    settings: RunSettings,
    items: Sequence[T],
    *,
    phase: str,
    complexity: str,
    limit: int | None,
    synthesise: Task[..., R],
    synthesise_args: Callable[[list[T]], tuple[Any, ...]],
    measure: Measure[T],
    merge: Task[..., R],
    merge_args: Callable[[list[R]], tuple[Any, ...]],
    merge_measure: Measure[R],
    subject: str = "all",
    label: Callable[[T], str] = str,
    hint: str = "",
) -> PhaseOutcome[R]:
    """Synthesise `items` in one task when they fit `limit` (None: no known limit), else hierarchically.

    `synthesise(*synthesise_args(group))` makes one result from a group of items, `merge(*merge_args(results))`
    one result from several. The outcome holds the one final result, or says why there is none: a budget halt
    or a failure stops the reduction where it happened (an item or result too big for any group fails it, with
    `GroupTooLarge`'s message), and a failed group is listed as skipped while the others go on.
    """
    items = list(items)
    outcome: PhaseOutcome[R] = PhaseOutcome()
    try:  # sizing renders prompts in the flow, outside any task: its failure fails the phase, not the run
        fits = limit is None or tokens_of(measure, items) <= limit
        groups = [] if fits or limit is None else group_to_fit(items, measure, limit, label=label, hint=hint)
    except Exception as exc:
        return _failed(outcome, phase, exc)
    if fits or limit is None:
        args = synthesise_args(items)
        return single(synthesise, settings, *args, phase=phase, complexity=complexity, subject=subject)
    results = _stage(outcome, settings, groups, synthesise, synthesise_args, phase, complexity, "group")
    while outcome.halted is None and len(results) > 1:
        try:
            if tokens_of(merge_measure, results) <= limit:
                break
            merged = group_to_fit(results, merge_measure, limit, label=lambda _: "one group's result", hint=hint)
        except Exception as exc:
            return _failed(outcome, phase, exc)
        if len(merged) == len(results):
            outcome.failed = (
                f"{phase} failed: no two of the {len(results)} group results fit one merge prompt "
                f"of {limit:,} tokens. {hint}"
            ).strip()
            return outcome
        results = _stage(outcome, settings, merged, merge, merge_args, phase, complexity, "merge")
    if outcome.halted is not None:
        return outcome
    if not results:
        outcome.failed = outcome.failed or f"{phase} failed: no group was synthesised (see the skipped groups)"
        return outcome
    if len(results) == 1:
        outcome.results = results
        return outcome
    final = single(merge, settings, *merge_args(results), phase=phase, complexity=complexity, subject=subject)
    outcome.results = final.results
    outcome.skipped += final.skipped
    outcome.halted, outcome.failed = final.halted, final.failed
    return outcome


def _failed(outcome: PhaseOutcome[R], phase: str, exc: Exception) -> PhaseOutcome[R]:
    """The phase fails with `exc`, said as `phases.single` says it: a group too large, or a bug while sizing."""
    if isinstance(exc, GroupTooLarge):
        outcome.failed = f"{phase} failed: {exc}"
        return outcome
    logging.getLogger(__name__).error("sizing the %s prompts failed", phase, exc_info=exc)
    outcome.failed = (
        f"{phase} failed unexpectedly ({type(exc).__name__}: {exc}) while sizing its prompts. Earlier phases are "
        "kept in the ledger and the answer cache; the traceback is in the log."
    )
    return outcome


def _stage(
    outcome: PhaseOutcome[R],
    settings: RunSettings,
    groups: list[list[Any]],
    task: Task[..., R],
    args: Callable[[list[Any]], tuple[Any, ...]],
    phase: str,
    complexity: str,
    kind: str,
) -> list[R]:
    """One level of the reduction: a task per group, fanned out; what it skipped or halted joins `outcome`.

    In a merge level, a group of one result is passed on as it is: merging one result would pay for nothing.
    """
    subjects = [f"{kind} {n}/{len(groups)}" for n in range(1, len(groups) + 1)]
    called = [n for n, group in enumerate(groups) if kind == "group" or len(group) > 1]
    stage = fan_out(
        task,
        settings,
        called,
        phase=phase,
        complexity=complexity,
        subject=lambda n: subjects[n],
        args=lambda n: args(groups[n]),
    )
    outcome.skipped += stage.skipped
    outcome.batches += stage.batches
    outcome.halted = outcome.halted or stage.halted
    lost = {name for name, _ in stage.skipped}
    answered = iter(stage.results)  # in input order, without the lost groups
    by_group = {n: next(answered) for n in called if subjects[n] not in lost}
    kept = sorted([*by_group, *(n for n in range(len(groups)) if n not in called)])
    return [by_group[n] if n in by_group else groups[n][0] for n in kept]
