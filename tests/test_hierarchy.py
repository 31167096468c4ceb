"""Grouping inputs so that each group's prompt fits the routed model: in order, fewest groups, balanced."""

from __future__ import annotations

import pytest
from prefect import flow, task

from tierflow.core.calls import RunSettings
from tierflow.core.hierarchy import GroupTooLarge, group_to_fit, reduce_in_groups
from tierflow.core.phases import PhaseOutcome

FRAME = 100
"""Tokens of the prompt around the items (instructions, schema)."""


def measure(sizes: dict[str, int]):
    """A group's prompt tokens: the frame plus each item's tokens."""
    return lambda group: FRAME + sum(sizes[i] for i in group)


def test_items_that_fit_one_prompt_stay_one_group():
    sizes = {"a": 100, "b": 200, "c": 300}
    assert group_to_fit(list(sizes), measure(sizes), limit=700) == [["a", "b", "c"]]
    assert group_to_fit([], measure(sizes), limit=700) == []


def test_groups_keep_order_fit_the_limit_and_are_as_few_as_possible():
    sizes = {f"n{i:02d}": 100 for i in range(20)}  # 2,000 tokens of items
    groups = group_to_fit(list(sizes), measure(sizes), limit=FRAME + 700)
    assert [i for g in groups for i in g] == list(sizes)  # every item, once, in order
    assert len(groups) == 3  # 700 per group: two groups cannot hold 2,000
    assert all(measure(sizes)(g) <= FRAME + 700 for g in groups)
    assert sorted(len(g) for g in groups) == [6, 7, 7]  # balanced, not 7 + 7 + 6 by chance of greedy filling


def test_uneven_items_are_balanced_by_tokens_not_by_count():
    sizes = {"big1": 400, "big2": 300, "s1": 100, "s2": 100, "s3": 100, "s4": 100, "s5": 100, "s6": 100}
    groups = group_to_fit(list(sizes), measure(sizes), limit=FRAME + 700)
    totals = [sum(sizes[i] for i in g) for g in groups]
    assert len(groups) == 2 and totals == [700, 600]
    assert groups == [["big1", "big2"], ["s1", "s2", "s3", "s4", "s5", "s6"]]


def test_a_group_that_measures_over_after_balancing_gets_one_more_group():
    # Shares are not additive here: each group pays 50 extra per item (a separator), so the first cut is too big.
    sizes = {f"n{i}": 100 for i in range(10)}

    def with_separators(group):
        return FRAME + sum(sizes[i] + 50 for i in group)

    groups = group_to_fit(list(sizes), with_separators, limit=FRAME + 500)
    assert [i for g in groups for i in g] == list(sizes)
    assert all(with_separators(g) <= FRAME + 500 for g in groups)
    assert len(groups) == 4  # 3 items (450) per group at most: 10 items need 4 groups


def test_a_rendered_prompt_is_counted():
    words = {f"w{i}": "lorem ipsum dolor sit amet " * 40 for i in range(6)}
    render = lambda group: "Synthesise these:\n" + "\n".join(words[w] for w in group)  # noqa: E731
    from tierflow.core.tokens import count_tokens

    one = count_tokens(render(["w0"]))
    groups = group_to_fit(list(words), render, limit=2 * one)
    assert len(groups) > 1 and all(count_tokens(render(g)) <= 2 * one for g in groups)
    assert [w for g in groups for w in g] == list(words)


def test_an_item_too_big_for_any_group_is_named_with_the_fix():
    sizes = {"Reading/small.md": 100, "Reading/huge.md": 5000, "Reading/other.md": 100}
    with pytest.raises(GroupTooLarge) as caught:
        group_to_fit(list(sizes), measure(sizes), limit=1000, hint="Split that note.")
    message = str(caught.value)
    assert "Reading/huge.md alone makes a prompt of about 5,100 tokens, over the 1,000 tokens" in message
    assert message.endswith("Split that note.")
    assert caught.value.item == "Reading/huge.md"


CALLS: list[tuple[str, tuple[int, ...]]] = []


@task
def add_up(values: list[int]) -> int:
    CALLS.append(("synthesise", tuple(values)))
    return sum(values)


@task
def merge_sums(sums: list[int]) -> int:
    CALLS.append(("merge", tuple(sums)))
    return sum(sums)


@flow
def summing(settings: RunSettings, values: list[int], limit: int | None, merge_room: int) -> PhaseOutcome[int]:
    return reduce_in_groups(
        settings,
        values,
        phase="synthesise",
        complexity="high",
        limit=limit,
        synthesise=add_up,
        synthesise_args=lambda group: (group,),
        measure=lambda group: FRAME + 100 * len(group),
        merge=merge_sums,
        merge_args=lambda sums: (sums,),
        merge_measure=lambda sums: FRAME + merge_room * len(sums),
        subject="week",
    )


@pytest.mark.usefixtures("prefect_harness")
def test_reduce_synthesises_each_group_then_merges_the_results_as_phase_tasks(tmp_path):
    settings = RunSettings(vault=str(tmp_path), run_id="reduce-test", flow="reduce-test", profile="offline")
    values = list(range(1, 21))  # 20 items of 100 tokens

    CALLS.clear()
    outcome = summing(settings, values, None, 100)  # no known window: one call
    assert outcome.results == [210] and [("synthesise", tuple(values))] == CALLS

    CALLS.clear()
    outcome = summing(settings, values, FRAME + 700, 100)  # 3 groups, whose 3 results fit one merge
    assert outcome.results == [210] and not outcome.skipped and outcome.failed is None
    groups = sorted(v for kind, v in CALLS if kind == "synthesise")
    assert [x for g in groups for x in g] == values and len(groups) == 3
    assert [kind for kind, _ in CALLS][-1] == "merge" and len(CALLS) == 4

    CALLS.clear()
    outcome = summing(settings, values, FRAME + 700, 300)  # two results per merge at most: merged in levels
    assert outcome.results == [210]
    merges = [v for kind, v in CALLS if kind == "merge"]
    assert merges == [(28, 77), (105, 105)]  # groups 1+2 merged, group 3 passed on as it is, then the week

    CALLS.clear()
    outcome = summing(settings, values, FRAME + 50, 100)  # no item fits alone: the phase fails, nothing is called
    assert outcome.results == [] and CALLS == []
    assert outcome.failed.startswith("synthesise failed: 1 alone makes a prompt of about 200 tokens")
