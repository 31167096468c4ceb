"""A mark for each reviewed draft, from the rubric's parsed levels and weights, with the lecturer's edits winning.

Where the mark comes from, first found wins:
1. `mark:` in the draft's front-matter: the lecturer's own mark (tierflow never writes one). A bare number
   (`mark: 68`) is on the rubric's scale (see below) and is scaled to the platform's like any other mark; written
   with the platform's maximum (`mark: 15/20`, `mark: "15 / 20"`), it is out of that maximum and sent as written,
   never rescaled: a platform whose maximum is not 20 gets no mark for that student, and is told why (`off_scale`).
2. Each criterion's section in the draft body as it stands now, edited or not: `**Suggested level:** Good` and
   `**suggested score:** 65` (or `Level:` / `Score:`). A level without a score counts as the middle of its range
   (`counts_as`), an open band closed by the scale's bounds: 0 below (`<40` counts as 20), and above, the criterion's
   marks, or 100 for percentages; a band open at a top the rubric does not give (`70+`, no `%`, no marks) gives no
   mark, and says to give a score;
   a score outside its level's range gives no mark (which of the two was meant is a guess) and says so.
   Comments (`%% ... %%`, `<!-- ... -->`) are left out, as Obsidian hides them.
3. The draft's `tierflow_levels` front-matter (the model's suggestion), for a criterion whose section lost its level.

The rubric's scale (`marking`): when every criterion is weighted in marks or points, the mark is the sum of the
criteria's marks out of the sum of their marks. A criterion's score is in marks when its levels' ranges reach at most
its marks (`Method (20 marks)`, `Excellent (17-20)`); it is a percentage of its marks (score/100 x marks) when they
are on a 0-100 scale (shared grade bands `First (70-100)` or `70+` beside `Argument (40 marks)`). A criterion whose
levels read both ways (`17+` in a 20-mark criterion: marks, or percentages from 17?) or neither (up to 50 in a
20-mark one) is refused with what to write. Otherwise the mark is the weighted mean of the criterion scores (weights as
shares, equal without weights) out of the highest score a level allows (100 for open ranges such as `70+`).

To the platform: `mark / scale * maximum` (the worksheet's `Maximum Grade`, Canvas's points possible; a mark
written out of the platform's maximum is that mark), rounded half up to `decimals` places (2 by default). A mark
within 0 and the maximum stays within them: when rounding would carry it past a maximum with more places than
`decimals` (20.5 of 20.5 at 0 places is 21), the highest mark at `decimals` places within it is sent (20), and
said. A mark outside them as it will be written, rounded (`mark: 22/20`, a negative score; not `mark: 20.001/20`,
which is 20.00 at 2 places) is `OnPlatform.outside`: the exporter follows each platform's importer (Moodle's
worksheet upload skips such a grade; Canvas's gradebook import takes a score above points possible as extra credit).
All of it in exact fractions of the numbers as written: a float sum makes 39.5 `39.49999999999999`, which rounds
down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from math import floor

from tierflow.lms.drafts import Draft, without_comments
from tierflow.vault.rubric import Criterion, Level, Rubric, exact

_LEVEL = re.compile(r"(?:suggested\s+)?level\s*(?::\s*\*{0,2}|\*{1,2}\s*:)\s*(?P<level>[^(\n·*]+)", re.I)
_SCORE = re.compile(r"(?:suggested\s+)?score\s*(?::\s*\*{0,2}|\*{1,2}\s*:)\s*(?P<score>-?\d+(?:[.,]\d+)?)", re.I)
_OUT_OF = re.compile(r"\s*(?P<mark>-?\d+(?:[.,]\d+)?)\s*/\s*(?P<of>\d+(?:[.,]\d+)?)\s*")
"""`15/20`, `15 / 20`, `15.5/20.00`: a mark written out of the platform's maximum."""


NO_TEXT = "no text was read from the submission; add `mark:` to the draft's front-matter to give one"
"""Why a reviewed draft of a submission that gave no text has no mark (it has no criteria to score)."""


@dataclass
class Mark:
    student_id: str
    value: Fraction | None
    """On the rubric's scale (out of `scale`), or out of `out_of` when the lecturer wrote it so; None when it cannot
    be worked out (see `problems`)."""
    scale: Fraction
    source: str = ""
    """`your mark` (front-matter), or `criteria` (from the levels and scores)."""
    problems: list[str] = field(default_factory=list)
    out_of: Fraction | None = None
    """The platform maximum a `mark: 15/20` was written out of: `value` is out of it, not out of `scale`; None for a
    mark on the rubric's scale."""
    written: str = ""
    """The front-matter's `mark:` as the lecturer wrote it; empty for a mark from the criteria."""


@dataclass(frozen=True)
class Marking:
    """How a rubric's criterion scores make a mark (see the module docstring)."""

    scale: Fraction
    """The most a submission can score."""
    factors: dict[str, Fraction]
    """By criterion name: what one point of its score adds to the mark."""
    how: str
    """One line for the lecturer: how the mark is worked out."""
    warnings: tuple[str, ...] = ()
    problem: str = ""
    """Why no mark can be worked out from this rubric; empty when one can."""
    tops: dict[str, Fraction | None] = field(default_factory=dict)
    """By criterion name: the highest score its scale allows, as the rubric gives it (its marks, or 100 for
    percentages); None when the rubric does not say (`Excellent (70+)` and no `%`). Closes an open top band."""


def marking(rubric: Rubric) -> Marking:
    """How marks are worked out on this rubric, or why they cannot be (see the module docstring)."""
    if not _marks_weighted(rubric):
        scale = max(_criterion_max(c) for c in rubric.criteria)
        weights = "weights as shares" if all(c.weight for c in rubric.criteria) else "equal weights"
        how = f"the weighted mean of the criteria's scores ({weights}), out of {_text(scale)}"
        return Marking(scale, rubric.exact_shares(), how, tops={c.name: _given_top(c) for c in rubric.criteria})
    factors, parts, warnings, problems = {}, [], [], []
    tops: dict[str, Fraction | None] = {}
    for c in rubric.criteria:
        worth = exact(c.weight.value)
        reading, note = _reading(c, worth)
        tops[c.name] = Fraction(100) if reading == "percent" else worth
        if reading == "percent":
            factors[c.name] = worth / 100
            parts.append(f"{c.name} score/100 x {_text(worth)}")
        elif reading == "marks":
            factors[c.name] = Fraction(1)
            parts.append(f"{c.name} score in marks (up to {_text(worth)})")
            warnings += [note] if note else []
        else:
            problems.append(note)
    scale = sum((exact(c.weight.value) for c in rubric.criteria if c.weight), Fraction(0))
    how = f"the sum of the criteria's marks, out of {_text(scale)}: {'; '.join(parts)}"
    return Marking(scale, factors, how, tuple(warnings), " ".join(problems), tops)


def _given_top(criterion: Criterion) -> Fraction | None:
    """The top of a criterion's scale where the rubric gives one without marks: 100 for percentages (`70%+`)."""
    return Fraction(100) if any(lvl.score and lvl.score.unit == "%" for lvl in criterion.levels) else None


def counts_as(criterion: Criterion, level: Level, how: Marking) -> Fraction | None:
    """What `level` counts as in a draft that gives it no score: the middle of its range, an open band closed by
    the scale's bounds (0, and the criterion's top in `how.tops`): `<40` counts as 20. None when the level has no
    range, or its range is open at a top the rubric does not give: any score there would be a guess."""
    return level.score.middle(how.tops.get(criterion.name)) if level.score else None


def without_score(criterion: Criterion, level: Level, how: Marking) -> str:
    """What a level without a score counts as, in a few words (`rubric show`): `20`, or `no mark: give a score`."""
    value = counts_as(criterion, level, how)
    return _text(value) if value is not None else "no mark: give a score"


WITHOUT_SCORE = (
    "A level without a score counts as the middle of its range, an open band closed by the scale's bounds (0, and "
    "the criterion's marks, or 100 for percentages); `no mark`: the band is open at a top the rubric does not give "
    "(`70+` with no `%` and no marks), so the draft needs a score there, or `mark:` in its front-matter."
)
"""Said under `rubric show`'s levels: how its `without a score` column is worked out."""


def _reading(criterion: Criterion, worth: Fraction) -> tuple[str, str]:
    """Whether a criterion worth `worth` marks is scored in `marks` or as a `percent` of them, with a warning; or
    `""` with why it cannot be told."""
    ranges = [lvl.score for lvl in criterion.levels if lvl.score]
    unit = f"{_text(worth)} {criterion.weight.unit if criterion.weight else 'marks'}"
    if not ranges or worth == 100:
        return "marks", ""  # no ranges to read, or both readings are the same
    units = {r.unit for r in ranges}
    if "%" in units:
        return "percent", ""
    top = max((exact(r.high) for r in ranges if r.high is not None), default=Fraction(0))
    opens = [exact(r.low) for r in ranges if r.high is None and r.low is not None]
    name = repr(criterion.name)
    if units & {"marks", "points"}:
        if top > worth or any(low > worth for low in opens):
            return (
                "",
                f"{name} is worth {unit}, but its levels' ranges go past {_text(worth)}: correct the one or the other.",
            )
        return "marks", ""
    if opens:
        low = min(opens)
        if low >= worth and top <= 100:
            return "percent", ""  # scores past the criterion's marks can only be percentages
        return "", (
            f"{name} is worth {unit} and its top level is open ({_text(low)}+): its scores may be marks (up to "
            f"{_text(worth)}) or percentages (up to 100). Close the range: {_text(low)}-{_text(worth)} for marks, or "
            f"{_text(low)}-100 for percentages."
        )
    if top == 100:
        return "percent", ""
    if top > worth:
        return "", (
            f"{name} is worth {unit}, but its levels' scores go up to {_text(top)}: neither marks (up to "
            f"{_text(worth)}) nor percentages (up to 100). Give its levels ranges in marks up to {_text(worth)}, or "
            "percentages up to 100."
        )
    if top < worth:
        return "marks", (
            f"{name}: its levels' scores go up to {_text(top)} of its {unit}; a score counts as that many marks, so "
            f"no submission gets more than {_text(top)} for it."
        )
    return "marks", ""


def _text(value: Fraction) -> str:
    return number(Decimal(value.numerator) / Decimal(value.denominator))


def scale_of(rubric: Rubric) -> Fraction:
    """The most a submission can score on this rubric (see the module docstring)."""
    return marking(rubric).scale


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
    how = marking(rubric)
    scale = how.scale
    if draft.own_mark:
        return _own_mark(draft, scale)
    if how.problem:
        return Mark(draft.student_id, None, scale, "criteria", [how.problem])
    sections = _sections(without_comments(draft.body))  # a score in a comment is the lecturer's aside
    if draft.of_no_text and not any(c.name in sections for c in rubric.criteria):
        # No criterion was drafted (nor written in since): one reason, not one per criterion.
        return Mark(draft.student_id, None, scale, "criteria", [NO_TEXT])
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
        level = c.level(level_name) or next(
            (lvl for lvl in c.levels if lvl.name.casefold() == level_name.casefold()), None
        )
        if score_m:
            score = exact(score_m.group("score"))
            # A level and score that disagree are an edit half made: which one was meant is a guess, so no mark.
            if level_m and level and level.score and not level.score.contains(score):
                problems.append(
                    f"{c.name!r}: score {score_m.group('score')} is outside level {level.name!r} ({level.score}); "
                    "change the level or the score so they agree"
                )
                continue
            scores[c.name] = score
            continue
        if level is None or level.score is None:
            problems.append(
                f"{c.name!r}: no score, and level {level_name or 'none'!r} "
                + ("has no score range" if level else "is not one of the rubric's")
            )
            continue
        middle = counts_as(c, level, how)
        if middle is None:
            problems.append(
                f"{c.name!r}: no score, and level {level.name!r} ({level.score}) is open at the top, which the rubric "
                "gives no bound for, so its middle would be a guess: give a score (`**suggested score:** N`) in "
                "that section, or `mark:` in the front-matter"
            )
            continue
        scores[c.name] = middle
    if problems:
        return Mark(draft.student_id, None, scale, "criteria", problems)
    value = sum((how.factors[name] * score for name, score in scores.items()), Fraction(0))
    return Mark(draft.student_id, value, scale, "criteria")


def _own_mark(draft: Draft, scale: Fraction) -> Mark:
    """The front-matter's `mark:`: a bare number on the rubric's `scale`, or `15/20`, out of the platform's 20."""
    own = draft.metadata.get("mark")
    written = " ".join(str(own).split())
    out_of = _OUT_OF.fullmatch(str(own))
    try:
        if out_of:
            top = exact(out_of.group("of"))
            if top > 0:
                value = exact(out_of.group("mark"))
                return Mark(draft.student_id, value, scale, "your mark", out_of=top, written=written)
        else:
            return Mark(draft.student_id, exact(own), scale, "your mark", written=written)
    except (ValueError, ZeroDivisionError):
        pass
    return Mark(
        draft.student_id,
        None,
        scale,
        "your mark",
        [
            f"`mark: {written}` in the front-matter of {draft.path} is not a mark: write a number on the rubric's "
            f"scale (`mark: 68`, out of {_text(scale)}), or one out of the platform's maximum (`mark: 15/20`)"
        ],
        written=written,
    )


def off_scale(mark: Mark, maximum: float, where: str, maximum_is: str) -> str:
    """Why a mark written out of a maximum (`mark: 15/25`) that is not the platform's (`maximum`, which
    `maximum_is` names: `the worksheet's Maximum Grade`) is not sent: tierflow never rescales it. `where` is the
    draft's path. Empty when the mark can be sent."""
    if mark.out_of is None or mark.out_of == exact(maximum):
        return ""
    top = _text(exact(maximum))
    return (
        f"`mark: {mark.written}` in {where} is out of {_text(mark.out_of)}, but {maximum_is} is {top}, and a mark "
        f"written out of its maximum is never rescaled: write the mark out of {top} (`mark: N/{top}`), or as a bare "
        f"number on the rubric's scale (`mark: N`, out of {_text(mark.scale)}), which is scaled to {top}"
    )


def conversion(mark: Mark, grade: Decimal, maximum: float, bounded: str = "") -> str:
    """How `mark` became `grade` on the platform, in full: `15 (yours, of 100 on the rubric) -> 3.00 of 20`,
    `15/20 (yours, as written) -> 15.00 of 20`; `bounded` (`OnPlatform.said`) says why the grade is not the mark as
    rounded, or that it is above the maximum."""
    top = _text(exact(maximum))
    to = f"{grade} of {top}" + (f" ({bounded})" if bounded else "")
    if mark.value is None:  # no grade is sent without a mark; said for completeness
        return to
    if mark.out_of is not None:
        return f"{_shown(mark.value)}/{_text(mark.out_of)} (yours, as written) -> {to}"
    whose = "yours" if mark.source == "your mark" else "from the criteria"
    return f"{_shown(mark.value)} ({whose}, of {_text(mark.scale)} on the rubric) -> {to}"


def scaled(mark: Mark, maximum: float) -> bool:
    """Whether `mark` is the lecturer's bare `mark:`, on the rubric's scale, sent to a platform whose maximum is
    another number: the number typed is not the number sent (0 is 0 on any scale)."""
    own = mark.source == "your mark" and mark.out_of is None
    return own and bool(mark.value) and mark.scale != exact(maximum)


def scaled_warning(first: Mark, grade: Decimal, maximum: float, whom: list[str]) -> str:
    """Said once per export when bare `mark:`s were scaled (`scaled`): both forms, with `first`'s own numbers, and
    `whom` (the students and drafts) it concerns."""
    top = _text(exact(maximum))
    return (
        f"a bare `mark:` is on the rubric's scale (out of {_text(first.scale)}) and is scaled to the platform's: "
        f"`mark: {first.written}` sends {grade} of {top}. To give a mark out of the platform's maximum as you mean "
        f"it, write the maximum too (`mark: {first.written}/{top}`), which is sent as written and refused if the "
        f"maximum is not the platform's. Scaled: {', '.join(whom)}"
    )


def _shown(value: Fraction) -> str:
    """A mark on the rubric's scale to read: exact, or to 4 places with `~` (a weighted mean of thirds)."""
    places = half_up(value, 4)
    return number(places) if Fraction(places) == value else f"~{number(places)}"


@dataclass(frozen=True)
class OnPlatform:
    """A mark on the platform's scale (`on_platform`): the grade to send, and why it is not simply the mark rounded."""

    grade: Decimal | None
    """Rounded half up to `decimals` places and kept within 0 and the maximum (see `rounded`); None when there is no
    mark, or it is written out of another maximum (`off_scale`)."""
    rounded: Decimal | None = None
    """The mark rounded half up to `decimals` places, before any bound."""
    outside: str = ""
    """`above` or `below`: the mark is above the maximum or below 0 and still is rounded to `decimals` places
    (`rounded`; 20.001 of 20 at 2 places is 20.00, within), and `grade` is the bound. The exporter decides what the
    platform gets (`rounded`, `grade`, or nothing)."""
    decimals: int = 2
    maximum: Fraction = Fraction(0)

    @property
    def clamped(self) -> bool:
        return self.grade != self.rounded

    @property
    def top(self) -> str:
        """The maximum as written (`20.5`)."""
        return _text(self.maximum)

    @property
    def places(self) -> int:
        """The maximum's own decimal places (1 for 20.5)."""
        return max(
            0, -(Decimal(self.maximum.numerator) / Decimal(self.maximum.denominator)).normalize().as_tuple().exponent
        )

    def said(self, sent: Decimal | None = None) -> str:
        """Why `sent` (the grade by default) is not the mark as rounded, or is above the maximum; empty when it is
        the mark rounded, within the maximum."""
        sent = self.grade if sent is None else sent
        top, rounded = self.top, self.rounded
        if rounded is None or sent is None:
            return ""
        if self.outside == "above":
            return f"above the maximum {top}" if sent == rounded else f"{number(rounded)} is above {top}: sent as {top}"
        if self.outside == "below":
            return f"{number(rounded)} is below 0: sent as 0"
        if sent != rounded:
            highest = "the highest whole mark" if self.decimals == 0 else f"the highest mark {_places(self.decimals)}"
            return (
                f"rounded {_places(self.decimals)} it is {number(rounded)}, above {top}: sent as {number(sent)}, "
                f"{highest} within {top}"
            )
        return ""


def _places(decimals: int) -> str:
    """`to 2 decimal places`, `to whole marks` (`--decimals`)."""
    return "to whole marks" if decimals == 0 else f"to {decimals} decimal place{'s' if decimals > 1 else ''}"


def on_platform(mark: Mark, maximum: float, decimals: int = 2) -> OnPlatform:
    """The mark on the platform's scale (see `OnPlatform`). The maximum cut down to `decimals` places is the
    highest grade a mark within it gets, so rounding never carries a mark past it (20.5 at 0 places gives 20)."""
    top = exact(maximum)
    if mark.value is None or mark.scale <= 0 or off_scale(mark, maximum, "", ""):
        return OnPlatform(None, decimals=decimals, maximum=top)
    raw = mark.value if mark.out_of is not None else mark.value / mark.scale * top
    rounded = half_up(raw, decimals)
    highest = Decimal(floor(top * 10**decimals)).scaleb(-decimals)
    # Outside as it will be written: 20.001 of 20 is 20.00 at 2 places, which Moodle's upload takes, so it is not
    # above; a mark within the maximum that rounding carries past it (20.5 of 20.5 at 0 places) is not either.
    outside = "above" if raw > top and rounded > top else "below" if rounded < 0 else ""
    grade = min(max(rounded, Decimal(0).quantize(Decimal(1).scaleb(-decimals))), highest)
    return OnPlatform(grade, rounded, outside, decimals, top)


def to_platform(mark: Mark, maximum: float, decimals: int = 2) -> tuple[Decimal | None, bool]:
    """The mark on the platform's scale, rounded half up, kept within [0, maximum]; and whether it had to be (see
    `on_platform`). None for a mark written out of another maximum than `maximum` (`off_scale`): never rescaled."""
    found = on_platform(mark, maximum, decimals)
    return found.grade, found.clamped


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
