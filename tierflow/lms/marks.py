"""A mark for each reviewed draft, from the rubric's parsed levels and weights, with the lecturer's edits winning.

Where the mark comes from, first found wins:
1. `mark:` in the draft's front-matter: the lecturer's own mark, on the rubric's scale (see below), taken as it is.
2. Each criterion's section in the draft body as it stands now, edited or not: `**Suggested level:** Good` and
   `**suggested score:** 65` (or `Level:` / `Score:`). A level without a score counts as the middle of its range.
   Comments (`%% ... %%`, `<!-- ... -->`) are left out, as Obsidian hides them.
3. The draft's `tierflow_levels` front-matter (the model's suggestion), for a criterion whose section lost its level.

The rubric's scale: when every criterion is weighted in marks or points, the mark is the sum of the criterion scores
out of the sum of the weights; otherwise it is the weighted mean of the criterion scores (weights as shares, equal
without weights) out of the highest score a level allows (100 for open ranges such as `70+`).

To the platform: `mark / scale * maximum` (the worksheet's `Maximum Grade`, Canvas's points possible), rounded half
up to `decimals` places (2 by default), and never above the maximum or below 0 (a clamped mark is reported). All of it
in exact fractions of the numbers as written: a float sum makes 39.5 `39.49999999999999`, which rounds down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from math import floor

from tierflow.lms.drafts import Draft, without_comments
from tierflow.vault.rubric import Criterion, Rubric, exact

_LEVEL = re.compile(r"(?:suggested\s+)?level\s*(?::\s*\*{0,2}|\*{1,2}\s*:)\s*(?P<level>[^(\n·*]+)", re.I)
_SCORE = re.compile(r"(?:suggested\s+)?score\s*(?::\s*\*{0,2}|\*{1,2}\s*:)\s*(?P<score>-?\d+(?:[.,]\d+)?)", re.I)


@dataclass
class Mark:
    student_id: str
    value: Fraction | None
    """On the rubric's scale; None when it cannot be worked out (see `problems`)."""
    scale: Fraction
    source: str = ""
    """`your mark` (front-matter), or `criteria` (from the levels and scores)."""
    problems: list[str] = field(default_factory=list)


def scale_of(rubric: Rubric) -> Fraction:
    """The most a submission can score on this rubric (see the module docstring)."""
    if _marks_weighted(rubric):
        return sum((exact(c.weight.value) for c in rubric.criteria if c.weight), Fraction(0))
    return max(_criterion_max(c) for c in rubric.criteria)


def _marks_weighted(rubric: Rubric) -> bool:
    return all(c.weight and c.weight.unit in ("marks", "points") for c in rubric.criteria)


def _criterion_max(criterion: Criterion) -> Fraction:
    highs = [exact(lvl.score.high) for lvl in criterion.levels if lvl.score and lvl.score.high is not None]
    opens = any(lvl.score and lvl.score.high is None for lvl in criterion.levels)
    if opens or not highs:
        return Fraction(100)
    return max(highs)


def _sections(body: str) -> dict[str, str]:
    out: dict[str, str] = {}
    current = None
    for line in body.splitlines():
        m = re.match(r"^#{2,3}\s+(.+?)\s*$", line)
        if m:
            current = m.group(1).strip()
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def mark_of(rubric: Rubric, draft: Draft) -> Mark:
    scale = scale_of(rubric)
    own = draft.metadata.get("mark")
    if own not in (None, ""):
        try:
            return Mark(draft.student_id, exact(own), scale, "your mark")
        except (ValueError, ZeroDivisionError):
            return Mark(draft.student_id, None, scale, problems=[f"`mark: {own}` in the front-matter is not a number"])
    sections = _sections(without_comments(draft.body))  # a score in a comment is the lecturer's aside
    suggested = {}
    for item in draft.metadata.get("tierflow_levels") or []:
        name, _, level = str(item).rpartition(": ")
        suggested[name] = level
    scores: dict[str, Fraction] = {}
    problems = []
    for c in rubric.criteria:
        text = sections.get(c.name, "")
        level_m = _LEVEL.search(text)
        score_m = _SCORE.search(text)
        level_name = level_m.group("level").strip() if level_m else suggested.get(c.name, "")
        if score_m:
            scores[c.name] = exact(score_m.group("score"))
            continue
        level = c.level(level_name) or next(
            (lvl for lvl in c.levels if lvl.name.casefold() == level_name.casefold()), None
        )
        if level is None or level.score is None:
            problems.append(
                f"{c.name!r}: no score, and level {level_name or 'none'!r} "
                + ("has no score range" if level else "is not one of the rubric's")
            )
            continue
        scores[c.name] = level.score.exact_typical()
    if problems:
        return Mark(draft.student_id, None, scale, "criteria", problems)
    if _marks_weighted(rubric):
        value = sum(scores.values(), Fraction(0))
    else:
        shares = rubric.exact_shares()
        value = sum((shares[name] * score for name, score in scores.items()), Fraction(0))
    return Mark(draft.student_id, value, scale, "criteria")


def to_platform(mark: Mark, maximum: float, decimals: int = 2) -> tuple[Decimal | None, bool]:
    """The mark on the platform's scale, rounded half up; and whether it had to be clamped to [0, maximum]."""
    if mark.value is None or mark.scale <= 0:
        return None, False
    top = exact(maximum)
    raw = mark.value / mark.scale * top
    rounded = half_up(raw, decimals)
    # The maximum cut down to `decimals` places, so a clamped mark is never above it.
    highest = Decimal(floor(top * 10**decimals)).scaleb(-decimals)
    clamped = min(max(rounded, Decimal(0)), highest)
    return clamped, clamped != rounded


def half_up(value: Fraction, decimals: int) -> Decimal:
    """`value` rounded to `decimals` places, a half away from zero (Decimal's ROUND_HALF_UP), exactly."""
    steps = floor(abs(value) * 10**decimals + Fraction(1, 2))
    return Decimal(steps if value >= 0 else -steps).scaleb(-decimals)


def number(value: Decimal) -> str:
    """`65.5`, `70` (no trailing zeros): what both importers read as a number."""
    text = format(value.normalize(), "f")
    return text


def distribution(values: list[Decimal], maximum: float, width: int = 30) -> list[str]:
    """A text histogram of the marks in ten bands of the maximum, with count, mean, lowest and highest."""
    if not values:
        return ["no marks to write"]
    top = Decimal(str(maximum)) or Decimal(1)
    bands = [0] * 10
    for v in values:
        bands[min(9, int(v / top * 10))] += 1
    most = max(bands) or 1
    lines = []
    for i, n in enumerate(bands):
        low, high = float(top) * i / 10, float(top) * (i + 1) / 10
        lines.append(f"{low:6g}-{high:<6g} {'#' * round(n / most * width):<{width}} {n}")
    mean = sum(values) / len(values)
    lines.append(
        f"n={len(values)}  mean={float(mean):.2f}  lowest={min(values)}  highest={max(values)}  of {maximum:g}"
    )
    return lines
