"""Marks to the platform rounded half up on the exact mark, never on a float's error (`39.49999999999999`)."""

from __future__ import annotations

import random
from decimal import Decimal
from fractions import Fraction
from math import floor

import pytest

from tierflow.lms.drafts import Draft
from tierflow.lms.marks import mark_of, marking, to_platform
from tierflow.vault.rubric import parse_rubric

LEVELS = "| Excellent (70+) | Good (60-69) | Satisfactory (50-59) | Weak (40-49) | Fail (<40) |"
WEIGHTED = parse_rubric(
    "| Criterion | Weight " + LEVELS + "\n| --- | --- | --- | --- | --- | --- | --- |\n"
    "| Argument | 35% | a | b | c | d | e |\n| Literature | 35% | a | b | c | d | e |\n"
    "| Structure | 30% | a | b | c | d | e |\n"
)
MARKS = parse_rubric(
    "## Method (20 marks)\n\n- Excellent (17-20): x\n- Good (10-16.5): y\n\n"
    "## Analysis (30 marks)\n\n- Excellent (25-30): x\n- Good (10-24.5): y\n"
)


def draft(rubric, scores: list[object]) -> Draft:  # noqa: ANN001
    """Each criterion at the level its score lies in (no level line for a score between two levels' ranges)."""
    sections = []
    for c, s in zip(rubric.criteria, scores, strict=True):
        level = next((lvl.name for lvl in c.levels if lvl.score and lvl.score.contains(float(s))), None)
        line = f"**Suggested level:** {level} · **suggested score:** {s}" if level else f"**Suggested score:** {s}"
        sections.append(f"## {c.name}\n\n{line}\n\nText.\n\n")
    return Draft("1", "x", {}, "".join(sections))


def half_up(value: Fraction, decimals: int) -> Decimal:
    """Round half up on exact fractions: the reference the export is held to."""
    scaled = value * 10**decimals
    return Decimal(floor(scaled + Fraction(1, 2))).scaleb(-decimals)


def test_an_exact_half_rounds_up():
    mark = mark_of(WEIGHTED, draft(WEIGHTED, [23, 53, 43]))  # 0.35*23 + 0.35*53 + 0.3*43 = 39.5 exactly
    assert mark.value == Fraction(79, 2)
    assert to_platform(mark, 100, 0) == (Decimal(40), False)
    mark = mark_of(WEIGHTED, draft(WEIGHTED, [50, 51, 50]))  # 50.35 of 100 -> 5.035 of 10
    assert to_platform(mark, 10, 2) == (Decimal("5.04"), False)


def test_a_midpoint_of_a_level_and_a_mark_in_the_front_matter_are_exact_too():
    body = "## Method\n\n**Suggested level:** Good\n\n## Analysis\n\n**Suggested level:** Good\n"
    mark = mark_of(MARKS, Draft("1", "x", {}, body))  # 13.25 + 17.25 of 50
    assert mark.value == Fraction(61, 2) and mark.scale == 50
    assert to_platform(mark, 7, 1) == (Decimal("4.3"), False)  # 30.5 / 50 * 7 = 4.27
    own = mark_of(MARKS, Draft("1", "x", {"mark": "0.1"}, body))
    assert own.value == Fraction(1, 10)
    assert to_platform(own, 0.3, 3) == (Decimal("0.001"), False)  # 0.1 / 50 * 0.3 = 0.0006


@pytest.mark.parametrize("rubric", [WEIGHTED, MARKS], ids=["weighted", "marks"])
def test_every_mark_is_rounded_as_exact_arithmetic_rounds_it(rubric):
    shares = [Fraction(35, 100), Fraction(35, 100), Fraction(30, 100)] if rubric is WEIGHTED else None
    scale = 100 if rubric is WEIGHTED else 50
    tops = [100, 100, 100] if rubric is WEIGHTED else [20, 30]
    rng = random.Random(20261120)
    for _ in range(4000):
        # Integers, and halves: the scores a lecturer types and a level's midpoint.
        scores = [Fraction(rng.randint(0, 2 * top), 2) if rng.random() < 0.3 else rng.randint(0, top) for top in tops]
        maximum = rng.choice([100, 10, 20, 15, 40])
        decimals = rng.choice([0, 1, 2])
        exact = sum(s * w for s, w in zip(scores, shares, strict=True)) if shares else sum(scores)
        shown = [str(float(s)) if isinstance(s, Fraction) else str(s) for s in scores]
        grade, clamped = to_platform(mark_of(rubric, draft(rubric, shown)), maximum, decimals)
        assert (grade, clamped) == (half_up(Fraction(exact) / scale * maximum, decimals), False), (scores, maximum)


def test_a_score_in_a_comment_is_not_the_mark():
    body = (
        "## Method\n\n%% first read: **suggested score:** 9 %%\n**Suggested level:** Good · **suggested score:** 15\n\n"
        "## Analysis\n\n<!-- **suggested score:** 12 -->\n**Suggested level:** Good · **suggested score:** 20\n"
    )
    assert mark_of(MARKS, Draft("1", "x", {}, body)).value == 35


BANDS = "Grade bands: First (70-100), Upper second (60-69), Lower second (50-59), Third (40-49), Fail (0-39)\n"
MARKS_AND_BANDS = parse_rubric(
    "# Essay rubric\n- Argument (40 marks)\n- Literature (30 marks)\n- Structure (30 marks)\n\n" + BANDS
)


def test_criteria_in_marks_with_percentage_bands_take_each_score_as_a_percentage_of_their_marks():
    body = "".join(f"## {c.name}\n**Suggested level:** Upper second\n" for c in MARKS_AND_BANDS.criteria)
    mark = mark_of(MARKS_AND_BANDS, Draft("1", "x", {}, body))
    assert (mark.value, mark.scale, mark.problems) == (Fraction(129, 2), 100, [])  # 64.5% of each: 64.5 of 100
    assert to_platform(mark, 100, 2) == (Decimal("64.50"), False)
    assert mark_of(MARKS_AND_BANDS, draft(MARKS_AND_BANDS, [65, 72, 55])).value == Fraction(641, 10)  # 26+21.6+16.5
    assert "score/100" in marking(MARKS_AND_BANDS).how and not marking(MARKS_AND_BANDS).problem
    assert "in marks" in marking(MARKS).how and not marking(MARKS).problem  # levels up to each criterion's marks


@pytest.mark.parametrize(
    ("levels", "told"),
    [
        ("- Excellent (17+): x\n- Good (10-16): y\n", "17-20"),  # marks, or percentages from 17?
        ("- Excellent (30-50): x\n- Good (10-29): y\n", "up to 50"),  # above 20 marks, yet not out of 100
    ],
    ids=["open-top", "past-the-marks"],
)
def test_criteria_in_marks_whose_levels_read_two_ways_are_refused_with_what_to_write(levels, told):
    rubric = parse_rubric(f"## Method (20 marks)\n\n{levels}\n## Analysis (30 marks)\n\n- Excellent (25-30): x\n")
    problem = marking(rubric).problem
    assert "'Method'" in problem and "20 marks" in problem and told in problem
    body = "## Method\n\n**Suggested level:** Good\n\n## Analysis\n\n**Suggested level:** Excellent\n"
    mark = mark_of(rubric, Draft("1", "x", {}, body))
    assert mark.value is None and mark.problems == [problem]


def test_a_score_outside_its_levels_range_gives_no_mark_and_names_the_criterion():
    """The lecturer changed the level and not the score (or the other way round): which one they meant is a guess."""
    body = (
        "## Method\n\n**Suggested level:** Good (10-16.5) · **suggested score:** 19\n\n"
        "## Analysis\n\n**Suggested level:** Good · **suggested score:** 20\n"
    )
    mark = mark_of(MARKS, Draft("1", "x", {}, body))
    assert mark.value is None
    (problem,) = mark.problems
    assert "'Method'" in problem and "19" in problem and "'Good' (10-16.5)" in problem
    assert "change the level or the score" in problem
    level_only = body.replace("Good (10-16.5) · **suggested score:** 19", "Excellent · **suggested score:** 15")
    assert mark_of(MARKS, Draft("1", "x", {}, level_only)).value is None
    agreed = body.replace("suggested score:** 19", "suggested score:** 16.5")
    assert mark_of(MARKS, Draft("1", "x", {}, agreed)).value == Fraction(73, 2)
    no_level = "## Method\n\n**Suggested score:** 19\n\n## Analysis\n\n**Score:** 20\n"  # the score alone stands
    assert mark_of(MARKS, Draft("1", "x", {"tierflow_levels": ["Method: Good"]}, no_level)).value == 39


def levels_only(rubric, levels: list[str]) -> Draft:  # noqa: ANN001
    """A reviewed draft whose every criterion has its level and no score (the lecturer deleted it)."""
    body = "".join(
        f"## {c.name}\n\n**Suggested level:** {lvl}\n\nText.\n\n"
        for c, lvl in zip(rubric.criteria, levels, strict=True)
    )
    return Draft("1", "x", {}, body)


def test_a_level_without_a_score_in_an_open_band_counts_as_the_middle_of_the_range_the_rubric_closes():
    """`Fail (<40)` runs from 0; `First (70+)` in a criterion scored in percentages of its marks runs to 100."""
    rubric = parse_rubric(
        "## Argument (40 marks)\n\n- First (70+): x\n- Pass (40-69): y\n- Fail (<40): z\n\n"
        "## Method (20 marks)\n\n- Excellent (17-20): x\n- Good (8-16.5): y\n- Fail (<8): z\n"
    )
    mark = mark_of(rubric, levels_only(rubric, ["First", "Fail"]))
    assert mark.problems == [] and mark.value == Fraction(85, 100) * 40 + 4  # 85% of 40, and 4 of 20 (0-8)
    failed = mark_of(WEIGHTED, levels_only(WEIGHTED, ["Fail", "Fail", "Fail"]))
    assert failed.value == 20  # the middle of 0-40, not 39 (nearly a Weak)


def test_a_level_without_a_score_in_a_band_the_rubric_leaves_open_gives_no_mark_and_says_to_give_a_score():
    """`Excellent (70+)` on a rubric that names no top: 70, 85 or 100 would each be a guess."""
    mark = mark_of(WEIGHTED, levels_only(WEIGHTED, ["Excellent", "Good", "Fail"]))
    assert mark.value is None
    assert len(mark.problems) == 1
    assert "'Argument'" in mark.problems[0] and "'Excellent' (70+)" in mark.problems[0]
    assert "give a score" in mark.problems[0]
