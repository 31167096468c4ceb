"""Rubrics as lecturers write them: every shape parses into the same criteria, weights, levels and score ranges."""

from __future__ import annotations

import pytest
from conftest import FIXTURES

from tierflow.vault.rubric import SHAPES, RubricError, ScoreRange, Weight, parse_range, parse_rubric

# Reflection is worth 40 points and Method 20; each level has its own range of points.
POINTS = [
    ("Reflection", Weight(40, "points"), [("Exemplary", 36, 40), ("Proficient", 28, 35), ("Developing", 0, 27)]),
    ("Method", Weight(20, "points"), [("Exemplary", 17, 20), ("Proficient", 12, 16), ("Developing", 0, 11)]),
]
DESCRIPTORS = {
    ("Reflection", "Exemplary"): "Insightful and critical.",
    ("Reflection", "Proficient"): "Clear and relevant.",
    ("Reflection", "Developing"): "Mostly descriptive.",
    ("Method", "Exemplary"): "Fully replicable.",
    ("Method", "Proficient"): "Mostly replicable.",
    ("Method", "Developing"): "Hard to follow.",
}

POINTS_SHAPES = {
    "table, criteria as rows": """
| Criterion | Points | Exemplary | Proficient | Developing |
| --- | --- | --- | --- | --- |
| Reflection | 40 | (36-40) Insightful and critical. | (28-35) Clear and relevant. | (0-27) Mostly descriptive. |
| Method | 20 | (17-20) Fully replicable. | (12-16) Mostly replicable. | (0-11) Hard to follow. |
""",
    "table, criteria as columns": """
| Level | Reflection (40 points) | Method (20 points) |
|---|---|---|
| **Exemplary** | 36–40: Insightful and critical. | 17–20: Fully replicable. |
| **Proficient** | 28–35: Clear and relevant. | 12–16: Mostly replicable. |
| **Developing** | 0–27: Mostly descriptive. | 0–11: Hard to follow. |
""",
    "table, criteria as columns, no header words": """
|  | Reflection (40 pts) | Method (20 pts) |
|---|---|---|
| Exemplary | (36-40) Insightful and critical. | (17-20) Fully replicable. |
| Proficient | (28-35) Clear and relevant. | (12-16) Mostly replicable. |
| Developing | (0-27) Mostly descriptive. | (0-11) Hard to follow. |
""",
    "numbered headings with bold levels": """
# Project rubric

### 1. Reflection (40 points)
- **Exemplary (36-40)**: Insightful and critical.
- **Proficient (28-35)**: Clear and relevant.
- **Developing (0-27)**: Mostly descriptive.

### 2. Method (20 points)
- **Exemplary (17-20)**: Fully replicable.
- **Proficient (12-16)**: Mostly replicable.
- **Developing (0-11)**: Hard to follow.
""",
    "headings at mixed levels, plain levels with dashes": """
## Reflection – 40 points
* Exemplary (36–40) – Insightful and critical.
* Proficient (28–35) — Clear and relevant.
* Developing (0–27) - Mostly descriptive.

#### Method (20 points)
+ Exemplary 17-20: Fully replicable.
+ Proficient 12-16: Mostly replicable.
+ Developing 0-11: Hard to follow.
""",
    "bold criterion lines": """
Marked out of 60.

**Criterion A: Reflection (40 points)**
* Exemplary (36–40): Insightful and critical.
* Proficient (28–35): Clear and relevant.
* Developing (0–27): Mostly descriptive.

**Criterion B: Method** (20 points)
- **Exemplary** (17-20) – Fully replicable.
- **Proficient** (12-16) – Mostly replicable.
- **Developing:** (0-11) Hard to follow.
""",
}

# Argument is 60% and Method 40%; both share the same grade bands.
BANDS = [
    ("Argument", Weight(60, "%"), [("Excellent", 70, None), ("Good", 50, 69), ("Weak", None, 50)]),
    ("Method", Weight(40, "%"), [("Excellent", 70, None), ("Good", 50, 69), ("Weak", None, 50)]),
]

BANDS_SHAPES = {
    "table, criteria as rows (the original shape)": """
| Criterion | Weight | Excellent (70+) | Good (50-69) | Weak (<50) |
| --- | --- | --- | --- | --- |
| Argument | 60% | Clear. | Coherent. | Descriptive. |
| Method | 40% | Replicable. | Mostly replicable. | Unclear. |
""",
    "table, levels as rows with a marks column and a weight row": """
| Grade | Marks | Argument | Method |
|---|---|---|---|
| Weight | | 60% | 40% |
| Excellent | 70+ | Clear. | Replicable. |
| Good | 50-69 | Coherent. | Mostly replicable. |
| Weak | <50 | Descriptive. | Unclear. |
""",
    "## headings with level bullets (the original shape)": """
## Argument (60%)
- Excellent (70+): Clear.
- Good (50-69): Coherent.
- Weak (<50): Descriptive.

## Method (weight 40%)
- Excellent (70+): Replicable.
- Good (50-69): Mostly replicable.
- Weak (<50): Unclear.
""",
    "criteria list with inline grade bands": """
# Essay rubric

Criteria:
- Argument (60%): builds a case.
- Method (40%)

Grade bands: Excellent (70+), Good (50-69), Weak (<50).
""",
    "criteria list with grade bands as bullets": """
## Marking criteria
1. **Argument** (60%) – builds a case.
2. **Method** (40%)

## Grade bands
- Excellent (70+)
- Good (50-69): most work lands here.
- Weak (<50)
""",
}


def skeleton(rubric) -> list:
    """Criteria, weights, levels and ranges: what every shape must agree on."""

    def bounds(r: ScoreRange | None):
        return None if r is None else (r.low if not r.high_exclusive else None, r.high)

    return [
        (c.name, c.weight, [(lvl.name, *(bounds(lvl.score) or (None, None))) for lvl in c.levels])
        for c in rubric.criteria
    ]


def expected(table) -> list:
    return [(name, weight, [(lvl, low, high) for lvl, low, high in levels]) for name, weight, levels in table]


@pytest.mark.parametrize("shape", POINTS_SHAPES)
def test_each_shape_with_points_parses_to_the_same_rubric(shape):
    rubric = parse_rubric(POINTS_SHAPES[shape], "course/rubric.md")
    assert skeleton(rubric) == expected(POINTS)
    for c in rubric.criteria:
        for lvl in c.levels:
            assert lvl.descriptor == DESCRIPTORS[(c.name, lvl.name)], (shape, c.name, lvl.name)
    assert rubric.shares() == pytest.approx({"Reflection": 2 / 3, "Method": 1 / 3})


@pytest.mark.parametrize("shape", BANDS_SHAPES)
def test_each_shape_with_shared_bands_parses_to_the_same_rubric(shape):
    rubric = parse_rubric(BANDS_SHAPES[shape], "course/rubric.md")
    assert skeleton(rubric) == expected(BANDS)
    assert rubric.levels == ("Excellent", "Good", "Weak")
    weak = rubric.criteria[0].level("Weak").score
    assert weak.contains(49) and not weak.contains(50)
    assert rubric.shares() == pytest.approx({"Argument": 0.6, "Method": 0.4})


OVER_100 = """
| Criterion | Weight | Excellent (70+) | Good (60-69) | Fail (<60) |
| --- | --- | --- | --- | --- |
| Argument | 50% | a | b | c |
| Literature | 30% | a | b | c |
| Structure | 30% | a | b | c |
"""


def test_percentage_weights_that_do_not_add_up_to_100_are_scaled_and_the_rubric_says_so():
    rubric = parse_rubric(OVER_100, "course/rubric.md")
    assert rubric.shares() == pytest.approx({"Argument": 50 / 110, "Literature": 30 / 110, "Structure": 30 / 110})
    (warning,) = rubric.warnings
    assert "add up to 110%, not 100%" in warning and "scaled" in warning
    assert "Argument 45.5%, Literature 27.3%, Structure 27.3%" in warning
    assert parse_rubric(OVER_100.replace("| 30% |", "| 25% |"), "course/rubric.md").warnings == ()
    assert parse_rubric(POINTS_SHAPES["table, criteria as rows"]).warnings == ()  # marks add up to the total


def test_shapes_are_named_for_rubric_show():
    shapes = {parse_rubric(text).shape for text in [*POINTS_SHAPES.values(), *BANDS_SHAPES.values()]}
    assert shapes == {
        "table, criteria as rows",
        "table, criteria as columns",
        "headings",
        "bold lines",
        "criteria with shared grade bands",
    }


def test_the_issues_own_examples():
    method = parse_rubric("### 2. Method (20 marks)\n- **Excellent (17-20)**: replicable\n- **Weak (0-16)**: not\n")
    assert method.criteria[0].name == "Method" and method.criteria[0].weight == Weight(20, "marks")
    assert method.criteria[0].levels[0].score == ScoreRange(17, 20)
    reflection = parse_rubric("**Criterion A: Reflection (40 points)**\n* Exemplary (36–40): deep\n* Weak (0–35): x\n")
    assert reflection.criteria[0].name == "Reflection" and reflection.criteria[0].weight == Weight(40, "points")
    bands = parse_rubric("- Argument\n- Sources\n\nGrade bands: A (70+), B (60-69), C (50-59), F (<50)\n")
    assert [c.name for c in bands.criteria] == ["Argument", "Sources"]
    assert [lvl.name for lvl in bands.criteria[1].levels] == ["A", "B", "C", "F"]
    assert bands.criteria[1].levels[1].score == ScoreRange(60, 69)


def test_the_bundled_rubric_keeps_its_weights_and_bands():
    rubric = parse_rubric((FIXTURES / "feedback-batch/Teaching/EDU7001/essay-1/rubric.md").read_text())
    assert [c.name for c in rubric.criteria] == [
        "Argument and critical evaluation",
        "Use of literature",
        "Structure and clarity",
        "Referencing and academic conventions",
    ]
    assert {c.weight for c in rubric.criteria} == {Weight(25, "%")}
    assert rubric.levels == ("Excellent", "Good", "Satisfactory", "Weak", "Fail")
    first = rubric.criteria[0]
    assert [str(lvl.score) for lvl in first.levels] == ["70+", "60-69", "50-59", "40-49", "<40"]
    assert rubric.title == "Essay 1 marking rubric" and "weighted mean" in rubric.notes


@pytest.mark.parametrize("text", [*POINTS_SHAPES.values(), *BANDS_SHAPES.values()])
def test_the_canonical_markdown_reads_back_as_the_same_rubric(text):
    rubric = parse_rubric(text)
    again = parse_rubric(rubric.as_markdown())
    assert again.criteria == rubric.criteria and again.shape == "headings"


@pytest.mark.parametrize(
    "text",
    [
        "---\ntitle: rubric\n---\nJust some prose, no criteria.\n",
        "# Rubric\n\nMark it fairly.\n\n- be kind\n- be quick\n",
        "| Name | Notes |\n|---|---|\n| x | y |\n",
    ],
)
def test_a_garbled_rubric_gets_an_error_listing_every_shape_tried(text):
    with pytest.raises(RubricError) as caught:
        parse_rubric(text, "Teaching/X/rubric.md")
    message = str(caught.value)
    assert message.startswith("Teaching/X/rubric.md: no criteria found")
    assert all(shape in message for shape in SHAPES)
    assert "tierflow rubric normalise --assignment Teaching/X" in message


def test_a_criterion_without_descriptors_is_named():
    with pytest.raises(RubricError, match="criterion 'Method' has no level descriptors"):
        parse_rubric("| Criterion | Good | Weak |\n|---|---|---|\n| Argument | a | b |\n| Method | | |\n")


@pytest.mark.parametrize(
    ("text", "low", "high", "exclusive"),
    [
        ("17-20", 17, 20, False),
        ("36–40 points", 36, 40, False),
        ("70+", 70, None, False),
        ("70% or above", 70, None, False),
        ("<40", None, 40, True),
        ("4", 4, 4, False),
    ],
)
def test_score_ranges(text, low, high, exclusive):
    r = parse_range(text)
    assert (r.low, r.high, r.high_exclusive) == (low, high, exclusive)
    assert r.contains(r.typical())


def test_levels_without_a_separator_after_their_range_and_a_grade_table_beside_headings():
    text = """
## Argument (60%)
- Excellent (70+) a clear case
- Weak (<70) description

## Method (40%)
- Excellent (70+) replicable
- Weak (<70) unclear

| Grade | Marks | Meaning |
|---|---|---|
| A | 70+ | Excellent |
"""
    rubric = parse_rubric(text)
    assert rubric.shape == "headings" and [c.name for c in rubric.criteria] == ["Argument", "Method"]
    assert rubric.criteria[0].levels[0].descriptor == "a clear case"
    assert rubric.criteria[0].levels[0].score == ScoreRange(70, None)


def test_a_repeated_criterion_is_named():
    with pytest.raises(RubricError, match="criterion 'Argument' appears more than once"):
        parse_rubric("## Argument\n- Good: g\n- Weak: w\n## Argument\n- Good: g\n- Weak: w\n")


def test_degree_classes_and_bold_lines_with_a_dashed_weight():
    bands = parse_rubric(
        "Criteria\n1. Knowledge (30%)\n2. Use (70%)\n\n## Grade bands\n1. First (70+): top\n2. 2:1 (60-69): good\n"
    )
    assert [(lvl.name, str(lvl.score)) for lvl in bands.criteria[0].levels] == [("First", "70+"), ("2:1", "60-69")]
    bold = parse_rubric(
        "**Knowledge** — 30 marks\n- Excellent — deep\n- Poor — thin\n\n**Use** — 70 marks\n- Good — ok\n"
    )
    assert [(c.name, str(c.weight)) for c in bold.criteria] == [("Knowledge", "30 marks"), ("Use", "70 marks")]


def test_the_rewrite_check_names_what_a_model_left_unusable():
    from tierflow.vault.rubric import RubricOut, rewrite_problems

    good = {"name": "A", "weight": "20 marks", "levels": [{"name": "Good", "score_range": "15-20"}]}
    assert rewrite_problems(RubricOut.model_validate({"criteria": [good]})) == []
    bad = RubricOut.model_validate(
        {"criteria": [{"name": "B", "levels": []}, {**good, "levels": [{"name": "Good", "score_range": "most"}]}]}
    )
    assert rewrite_problems(bad) == [
        "criterion 'B' has no levels",
        "'A', level 'Good': range 'most' is not like `17-20`, `70+` or `<40`",
    ]
