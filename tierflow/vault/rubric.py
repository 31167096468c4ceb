"""Rubrics as lecturers write them, parsed into one structure: criteria with weights, levels with score ranges.

Shapes read (`SHAPES`, in the order tried):
- a table either way round: criteria as rows and levels as columns, or levels as rows and criteria as columns;
- a heading per criterion, at any level, numbered or not (`### 2. Method (20 marks)`), with level bullets;
- a bold line per criterion (`**Criterion A: Reflection (40 points)**`), with level bullets;
- a list of criteria with shared grade bands (`Grade bands: A (70+), B (60-69), ...`): each criterion takes every band.

Level bullets may be bold or not and separate the level from its descriptor with `:`, `–`, `—` or ` - `
(`- **Excellent (17-20)**: replicable`, `* Exemplary (36–40) – ...`). Marks, points, percentages and weights
in parentheses or in their own column become a `Weight` per criterion and a `ScoreRange` per level.

When `rubric.md` cannot be parsed, `tierflow rubric normalise` asks the light tier for a rewrite in the
canonical shape (`Rubric.as_markdown`) into `rubric.normalised.md`; a run reads that file only once the
lecturer has set `status: checked` in its front-matter.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import yaml
from markdown_it import MarkdownIt
from pydantic import BaseModel, Field

from tierflow.core.commands import tierflow_command
from tierflow.core.errors import VaultError
from tierflow.vault.annotations import locate
from tierflow.vault.text import hide_comments, parse_note, read_note_text

NORMALISED = "rubric.normalised.md"
"""The light tier's rewrite of an unparseable rubric, beside it; used once its front-matter says `status: checked`."""

SHAPES = (
    "a table with criteria as rows (first column `Criterion`, one column per level, optionally a `Weight` column)",
    "a table with criteria as columns (first column `Level` or `Grade`, one column per criterion)",
    "one heading per criterion at any level, numbered or not (`### 2. Method (20 marks)`), with level bullets",
    "one bold line per criterion (`**Criterion A: Reflection (40 points)**`), with level bullets",
    "a list of criteria with shared grade bands (`- Argument (25%)` and `Grade bands: A (70+), B (60-69), ...`)",
)
"""Every shape the parser tries, in order; a rubric in none of them gets an error that lists them."""

LEVEL_BULLETS = (
    "level bullets such as `- Excellent (17-20): descriptor` or `* **Good** – descriptor` "
    "(bold or not; `:`, `–`, `—` or ` - ` between level and descriptor)"
)


class RubricError(VaultError):
    """The rubric is missing or cannot be parsed; nothing has been spent."""


@dataclass(frozen=True)
class ScoreRange:
    """The scores a level spans: `17–20`, `70+` (no upper bound) or `<40` (below, not including, 40)."""

    low: float | None
    high: float | None
    high_exclusive: bool = False
    unit: str = ""
    """`marks`, `points`, `%`, or empty when the rubric gives none."""

    def contains(self, score: float) -> bool:
        if self.low is not None and score < self.low:
            return False
        if self.high is None:
            return True
        return score < self.high if self.high_exclusive else score <= self.high

    def typical(self) -> float:
        """A score inside the range: its midpoint, or its bound when it is open on one side."""
        return float(self.exact_typical())

    def exact_typical(self) -> Fraction:
        """`typical` as an exact fraction of the bounds as the rubric writes them (a score to suggest; a level
        without a score counts as `middle`, not this)."""
        low = None if self.low is None else exact(self.low)
        high = None if self.high is None else exact(self.high)
        if low is not None and high is not None:
            middle = (low + high) / 2
            return middle - 1 if self.high_exclusive and middle >= high else middle
        if low is not None:
            return low
        return max(Fraction(0), (high or 0) - 1)

    def middle(self, top: Fraction | None, floor: Fraction = Fraction(0)) -> Fraction | None:
        """The middle of the range, an open side closed by the scale's bound (`<40` from `floor`, `70+` up to
        `top`); None when it is open at the top and `top` is None: no middle can be told without a guess."""
        low = floor if self.low is None else exact(self.low)
        if self.high is None:
            return None if top is None else (low + top) / 2
        high = exact(self.high)
        return (low + high) / 2 if low <= high else None

    def __str__(self) -> str:
        unit = "%" if self.unit == "%" else (f" {self.unit}" if self.unit else "")
        if self.low is not None and self.high is None:
            return f"{_num(self.low)}+{unit}"
        if self.high_exclusive or self.low is None:
            return f"<{_num(self.high or 0)}{unit}"
        if self.low == self.high:
            return f"{_num(self.low)}{unit}"
        return f"{_num(self.low)}-{_num(self.high or 0)}{unit}"


@dataclass(frozen=True)
class Weight:
    """What a criterion is worth: `25%`, `20 marks`, `40 points`, or a bare weight."""

    value: float
    unit: str = ""

    def __str__(self) -> str:
        if self.unit == "%":
            return f"{_num(self.value)}%"
        return f"{_num(self.value)} {self.unit}" if self.unit else f"weight {_num(self.value)}"


@dataclass(frozen=True)
class Level:
    name: str
    """As the rubric names it, without its score range: `Excellent`."""
    descriptor: str = ""
    score: ScoreRange | None = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.score})" if self.score else self.name


@dataclass(frozen=True)
class Criterion:
    name: str
    """As the rubric names it, without numbering or weight: `Method`."""
    levels: tuple[Level, ...]
    """In the rubric's order."""
    weight: Weight | None = None
    description: str = ""

    def level(self, name: str) -> Level | None:
        return next((lvl for lvl in self.levels if lvl.name == name), None)


@dataclass(frozen=True)
class Rubric:
    path: str
    title: str
    criteria: tuple[Criterion, ...]
    notes: str = ""
    shape: str = ""
    """Which of `SHAPES` it was read as (`table, criteria as rows`, `headings`, ...)."""

    @property
    def levels(self) -> tuple[str, ...]:
        """Every level name, in the order the rubric first uses them."""
        return tuple(dict.fromkeys(lvl.name for c in self.criteria for lvl in c.levels))

    def shares(self) -> dict[str, float]:
        """Each criterion's share of the whole, from its weight; equal shares when the rubric gives no weights."""
        return {name: float(share) for name, share in self.exact_shares().items()}

    def exact_shares(self) -> dict[str, Fraction]:
        """`shares` as exact fractions of the weights as the rubric writes them, for marks rounded exactly."""
        weights = [exact(c.weight.value) if c.weight else None for c in self.criteria]
        if any(w is None for w in weights) or not sum(w or 0 for w in weights):
            return {c.name: Fraction(1, len(self.criteria)) for c in self.criteria}
        total = sum(w or 0 for w in weights)
        return {c.name: (w or 0) / total for c, w in zip(self.criteria, weights, strict=True)}

    @property
    def warnings(self) -> tuple[str, ...]:
        """What tierflow had to assume to use the rubric: percentage weights that do not add up to 100."""
        weights = [c.weight for c in self.criteria]
        if not weights or not all(w and w.unit == "%" for w in weights):
            return ()
        total = sum(w.value for w in weights if w)
        if abs(total - 100) <= 0.5:
            return ()
        shares = ", ".join(f"{name} {share:.1%}" for name, share in self.shares().items())
        return (
            f"the criteria's weights add up to {_num(total)}%, not 100%; each was scaled by "
            f"100/{_num(total)}, so they count as {shares}. Correct the weights if that is not what you meant.",
        )

    def as_markdown(self, prose: Callable[[str], str] = str) -> str:
        """The canonical shape: `## Criterion (weight)` headings with `- Level (range): descriptor` bullets.

        `prose` is applied to the title, descriptions, descriptors and notes (`Pseudonyms.hide` for a prompt), not
        to criterion and level names, which a model is asked to give back exactly as the rubric names them."""
        lines = [f"# {prose(self.title)}"]
        for c in self.criteria:
            lines.append(f"\n## {c.name}" + (f" ({c.weight})" if c.weight else ""))
            if c.description:
                lines.append(f"\n{prose(c.description)}\n")
            lines += [f"- {lvl.label}: {prose(lvl.descriptor)}".rstrip() for lvl in c.levels]
        if self.notes:
            lines.append(f"\n{prose(self.notes)}")
        return "\n".join(lines) + "\n"


def load_rubric(vault: Path, relpath: str) -> Rubric:
    """The assignment's rubric: `relpath` if it parses, else its checked `rubric.normalised.md`.

    A RubricError names the file, the shapes tried, and what to do: rewrite it, run `tierflow rubric
    normalise`, or check the normalised file.
    """
    path = vault / relpath
    normalised = path.with_name(NORMALISED)
    if not path.is_file():
        raise RubricError(
            f"{relpath}: no rubric found. Put the marking rubric there (a Markdown table or headed sections)."
        )
    try:
        return parse_rubric(read_rubric_text(path, relpath), relpath, vault=vault)
    except RubricError as unparsed:
        if not normalised.is_file():
            raise
        failure = unparsed
    rel_normalised = str(Path(relpath).with_name(NORMALISED).as_posix())
    folder = Path(relpath).parent.as_posix()
    post = parse_note(read_rubric_text(normalised, rel_normalised))
    status = str(post.metadata.get("status") or "").strip().lower()
    if status != "checked":
        raise RubricError(
            f"{relpath} cannot be parsed, and {rel_normalised} is not checked yet (status: {status or 'none'}). "
            f"Read it, correct anything the model got wrong, and set `status: checked` in its front-matter; "
            f"the run uses it only then.\n({failure})"
        )
    if str(post.metadata.get("source_hash") or "") not in ("", source_hash(path)):
        raise RubricError(
            f"{relpath} has changed since {rel_normalised} was written from it. Run "
            f"`{tierflow_command('rubric', 'normalise', '--assignment', folder, vault=vault)}` "
            "again, or, if the normalised rubric is still right, "
            f"delete its `source_hash` line."
        )
    return parse_rubric(read_rubric_text(normalised, rel_normalised), rel_normalised)


def source_hash(path: Path) -> str:
    """The hash of a rubric file's bytes, kept in the normalised file to notice a later change."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def read_rubric_text(path: Path, relpath: str) -> str:
    try:
        # Obsidian hides comments: a marker's private remarks never reach a prompt.
        text = hide_comments(read_note_text(path))
        parse_note(text)
    except UnicodeDecodeError:
        raise RubricError(f"{relpath}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise RubricError(f"{relpath}: malformed YAML front-matter ({' '.join(str(exc).split())[:120]})") from None
    return text


def parse_rubric(text: str, relpath: str = "rubric.md", *, vault: Path | None = None) -> Rubric:
    """Parse a rubric's Markdown (front-matter allowed) in any of `SHAPES`; a RubricError lists them otherwise, and
    the `tierflow rubric normalise` command (for the `vault` it is in, when given) that rewrites it."""
    try:
        post = parse_note(text)
    except yaml.YAMLError as exc:
        raise RubricError(f"{relpath}: malformed YAML front-matter ({' '.join(str(exc).split())[:120]})") from None
    body = post.content
    title = str(post.metadata.get("title") or _first_heading(body) or Path(relpath).stem)
    found = _from_tables(body, relpath)
    if found is None or len(found[0]) < 2:
        # A one-column table beside headed criteria is more likely a grade table than the rubric itself.
        found = _from_sections(body, relpath) or found or _from_shared_bands(body, relpath)
    if found is not None:
        criteria, shape, notes = found
        repeated = [name for name, n in Counter(c.name for c in criteria).items() if n > 1]
        if repeated:
            raise RubricError(
                f"{relpath}: criterion {repeated[0]!r} appears more than once; give each criterion a distinct name"
            )
        return Rubric(path=relpath, title=title, criteria=tuple(criteria), notes=notes, shape=shape)
    folder = str(Path(relpath).parent.as_posix())
    normalise = tierflow_command("rubric", "normalise", "--assignment", folder, vault=vault)
    tried = "\n".join(f"  {i}. {s}" for i, s in enumerate(SHAPES, start=1))
    raise RubricError(
        f"{relpath}: no criteria found. Shapes tried:\n{tried}\n"
        f"Headings, bold lines and shared bands need {LEVEL_BULLETS}. Rewrite the rubric in one of these shapes, "
        f"or run `{normalise}` to have the light tier rewrite it into "
        f"{NORMALISED} for you to check."
    )


# --- numbers, weights and ranges ---------------------------------------------------------------------------

_NUM = r"\d+(?:\.\d+)?"
_DASH = r"\s*(?:-|–|—|to)\s*"
_UNIT = r"(?:%|percent|marks?|points?|pts?\.?)"


def exact(value: float | int | str) -> Fraction:
    """A number as the text it was read from means it: `0.35` is 35/100, not the float nearest to it (a float
    from a rubric or a draft prints back as the text it was parsed from)."""
    text = str(value).strip().replace(",", ".")
    if "/" in text:  # Fraction would read `1/2`; a mark or weight is written as a decimal number
        raise ValueError(f"not a decimal number: {value!r}")
    return Fraction(text)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _unit(text: str | None) -> str:
    text = (text or "").strip().lower().rstrip(".")
    if text in ("%", "percent"):
        return "%"
    if text.startswith("mark"):
        return "marks"
    if text.startswith(("point", "pt")):
        return "points"
    return ""


_RANGE_FORMS = (
    (re.compile(rf"^({_NUM})\s*({_UNIT})?{_DASH}({_NUM})\s*({_UNIT})?$", re.I), "between"),
    (re.compile(rf"^(?:≥|>=|at\s+least\s+)?({_NUM})\s*({_UNIT})?\s*(?:\+|or\s+(?:above|more|over))$", re.I), "up"),
    (re.compile(rf"^(?:≥|>=|at\s+least\s+)({_NUM})\s*({_UNIT})?$", re.I), "up"),
    (re.compile(rf"^(?:<|below\s+|under\s+|less\s+than\s+)\s*({_NUM})\s*({_UNIT})?$", re.I), "below"),
    (re.compile(rf"^(?:≤|<=|up\s+to\s+)\s*({_NUM})\s*({_UNIT})?$", re.I), "upto"),
    (re.compile(rf"^({_NUM})\s*({_UNIT})?$", re.I), "exact"),
)


def parse_range(text: str) -> ScoreRange | None:
    """`17-20`, `36–40 points`, `70+`, `70% or above`, `<40`, `≤ 39`, `4`; None when `text` is not a range."""
    text = " ".join(text.replace("*", "").split()).strip(" :")
    text = re.sub(r"^(?:marks?|points?|score|range)\s*[:=]?\s*", "", text, flags=re.I)
    for pattern, form in _RANGE_FORMS:
        m = pattern.match(text)
        if not m:
            continue
        if form == "between":
            return ScoreRange(float(m[1]), float(m[3]), unit=_unit(m[4] or m[2]))
        if form == "up":
            return ScoreRange(float(m[1]), None, unit=_unit(m[2]))
        if form == "below":
            return ScoreRange(None, float(m[1]), high_exclusive=True, unit=_unit(m[2]))
        if form == "upto":
            return ScoreRange(None, float(m[1]), unit=_unit(m[2]))
        return ScoreRange(float(m[1]), float(m[1]), unit=_unit(m[2]))
    return None


_WEIGHT = re.compile(
    rf"^(?:weight(?:ing)?|worth|value|out\s+of|max(?:imum)?)?\s*[:=]?\s*(?:x\s*)?({_NUM})\s*({_UNIT})?(?:\s+available)?$",
    re.I,
)


def parse_weight(text: str) -> Weight | None:
    """`25%`, `20 marks`, `40 points`, `weight 30%`, `weighting: 0.3`; None when `text` is not a weight."""
    text = " ".join(text.replace("*", "").split()).strip(" :")
    m = _WEIGHT.match(text)
    if not m:
        return None
    return Weight(float(m[1]), _unit(m[2]))


# --- names ------------------------------------------------------------------------------------------------

_TRAILING_PAREN = re.compile(r"^(.*?)\s*[(\[]([^()\[\]]*)[)\]]\s*$")
_TRAILING_WEIGHT = re.compile(
    rf"^(.*?\S)\s*(?:[:,–—]|\s-)\s*({_NUM}\s*{_UNIT}|weight(?:ing)?\s*[:=]?\s*{_NUM}\s*%?)$", re.I
)
_NAME_THEN_RANGE = re.compile(
    rf"^(.*?\D)\s*[:,–—-]?\s*((?:<|≥|>=|≤)?\s*{_NUM}\s*{_UNIT}?(?:{_DASH}{_NUM}\s*{_UNIT}?|\s*\+)?)$"
)
_NUMBERING = re.compile(
    r"^(?:(?:criterion|criteria|part|section)\s+[A-Za-z0-9]{1,3}\s*(?:[:.)–—]|\s-)\s*"
    r"|\d+(?:\.\d+)*[.):]\s+|[A-Za-z][.)]\s+|\(\w{1,3}\)\s+)",
    re.I,
)


def _plain(text: str) -> str:
    """Text without Markdown emphasis, links' brackets, or surrounding whitespace."""
    text = re.sub(r"\*\*|__|(?<!\w)[*_](?=\S)|(?<=\S)[*_](?!\w)", "", text)
    text = re.sub(r"\[\[([^\]|]*\|)?([^\]]*)\]\]", r"\2", text)
    return " ".join(text.split()).strip()


def _criterion_name(text: str) -> tuple[str, Weight | None]:
    """`2. Method (20 marks)` -> (`Method`, 20 marks); `Criterion A: Reflection (40 points)` -> (`Reflection`, ...)."""
    text = _plain(text).rstrip(":").strip()
    weight = None
    m = _TRAILING_PAREN.match(text)
    if m and parse_weight(m[2]):
        text, weight = m[1], parse_weight(m[2])
    else:
        m = _TRAILING_WEIGHT.match(text)
        if m and parse_weight(m[2]):
            text, weight = m[1], parse_weight(m[2])
    name = _NUMBERING.sub("", text, count=1).strip(" :–—-") or text.strip()
    return name, weight


def _level_name(text: str) -> tuple[str, ScoreRange | None]:
    """`Excellent (17-20)` -> (`Excellent`, 17–20); `Good 60-69` -> (`Good`, 60–69)."""
    text = _plain(text).rstrip(":").strip()
    m = _TRAILING_PAREN.match(text)
    if m and parse_range(m[2]):
        return m[1].strip(" :–—-") or text, parse_range(m[2])
    m = _NAME_THEN_RANGE.match(text)
    if m and parse_range(m[2]) and m[1].strip(" :–—-"):
        return m[1].strip(" :–—-"), parse_range(m[2])
    return text, None


# --- level bullets ----------------------------------------------------------------------------------------

_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.+?)\s*$")
_RANGE_THEN_TEXT = re.compile(r"^([^()\[\]]{1,60}?)\s*[(\[]([^()\[\]]*)[)\]]\s+(\S.*)$")
_LEADING_PAREN = re.compile(r"^[(\[]([^()\[\]]*)[)\]]\s*")


def _split_head(content: str) -> tuple[str, str] | None:
    """`head: descriptor` at the first `:`, `–`, `—` or ` - ` outside parentheses; None without a separator."""
    depth = 0
    for i, ch in enumerate(content):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif depth == 0 and (
            ch in ":–—" or (ch == "-" and 0 < i < len(content) - 1 and content[i - 1] == " " and content[i + 1] == " ")
        ):
            if i > 0 and content[i - 1].isdigit() and content[i + 1 : i + 2].isdigit():
                continue  # a range such as 17–20, or a class such as 2:1, written without parentheses
            return content[:i], content[i + 1 :]
    return None


def _level_line(line: str, *, need_separator: bool = True) -> Level | None:
    """A level bullet, bold or not, with its range and descriptor; None for other lines."""
    bullet = _BULLET.match(line)
    if not bullet:
        return None
    content = bullet.group(1)
    bold = re.match(r"^(\*\*|__)(.+?)\1\s*(.*)$", content)
    if bold:
        head, rest = bold.group(2), bold.group(3)
        paren = _LEADING_PAREN.match(rest)
        if paren:
            head, rest = f"{head} ({paren.group(1)})", rest[paren.end() :]
        rest = re.sub(r"^\s*(?::|–|—|-)\s*", "", rest)
        head = head.rstrip().rstrip(":–—").strip()
    else:
        split = _split_head(content)
        ranged = _RANGE_THEN_TEXT.match(content)
        if split is None and ranged and parse_range(ranged.group(2)):
            split = (f"{ranged.group(1)} ({ranged.group(2)})", ranged.group(3))  # `Excellent (17-20) replicable`
        if split is None:
            name, score = _level_name(content)
            if need_separator or (score is None and len(name.split()) > 3):
                return None
            return Level(name=name, descriptor="", score=score)
        head, rest = split
    name, score = _level_name(head)
    if not name or len(name) > 60 or len(name.split()) > 6:
        return None
    return Level(name=name, descriptor=_plain(rest), score=score)


# --- tables -----------------------------------------------------------------------------------------------

_CRITERIA_WORDS = ("criteri", "dimension", "aspect", "area", "component", "element", "skill", "outcome", "category")
_LEVEL_WORDS = ("level", "grade", "band", "mark", "score", "performance", "rating", "standard", "classification")
_WEIGHT_HEADERS = ("weight", "weighting", "marks", "mark", "points", "max", "maximum", "out of", "value", "%", "worth")
_RANGE_HEADERS = ("marks", "mark", "points", "range", "score", "scores", "%", "percentage", "mark range")
_KNOWN_LEVELS = re.compile(
    r"^(?:excellent|outstanding|exemplary|exceptional|very good|good|proficient|competent|accomplished|"
    r"satisfactory|adequate|sound|developing|emerging|beginning|novice|basic|limited|weak|poor|"
    r"unsatisfactory|inadequate|fail|pass|merit|distinction|first|upper second|lower second|third|"
    r"2:1|2:2|[a-f][+-]?|high distinction|credit)\b",
    re.I,
)


def _levelish(cell: str) -> bool:
    name, score = _level_name(cell)
    return score is not None or bool(_KNOWN_LEVELS.match(name))


def _tables(body: str) -> list[list[list[str]]]:
    tokens = MarkdownIt("commonmark").enable("table").parse(body)
    tables: list[list[list[str]]] = []
    row: list[str] | None = None
    for i, tok in enumerate(tokens):
        if tok.type == "table_open":
            tables.append([])
        elif tok.type == "tr_open":
            row = []
        elif tok.type in ("th_open", "td_open") and row is not None:
            row.append(tokens[i + 1].content.strip() if tokens[i + 1].type == "inline" else "")
        elif tok.type == "tr_close" and row is not None:
            tables[-1].append(row)
            row = None
    return [t for t in tables if len(t) >= 2]


def _from_tables(body: str, relpath: str) -> tuple[list[Criterion], str, str] | None:
    for rows in _tables(body):
        width = max(len(r) for r in rows)
        rows = [r + [""] * (width - len(r)) for r in rows]
        corner = _plain(rows[0][0]).lower()
        if any(w in corner for w in _CRITERIA_WORDS):
            across = False
        elif any(w in corner for w in _LEVEL_WORDS):
            across = True
        else:
            header_levels = sum(_levelish(h) for h in rows[0][1:])
            column_levels = sum(_levelish(r[0]) for r in rows[1:])
            if header_levels == column_levels:
                continue
            across = column_levels > header_levels
        criteria = _criteria_across(rows) if across else _criteria_down(rows)
        if criteria:
            empty = [c.name for c in criteria if not any(lvl.descriptor for lvl in c.levels)]
            if empty:
                raise RubricError(f"{relpath}: criterion {empty[0]!r} has no level descriptors")
            shape = "table, criteria as columns" if across else "table, criteria as rows"
            return criteria, shape, _notes(body)
    return None


def _cell_range(cell: str) -> tuple[ScoreRange | None, str]:
    """A range written at the start of a cell (`(17-20) replicable`, `17–20: replicable`), and the rest."""
    cell = _plain(cell)
    m = _LEADING_PAREN.match(cell)
    if m and parse_range(m.group(1)):
        return parse_range(m.group(1)), cell[m.end() :].lstrip(" :–—-")
    m = re.match(rf"^((?:<\s*)?{_NUM}\s*{_UNIT}?(?:{_DASH}{_NUM}\s*{_UNIT}?|\s*\+)?)\s*[:–—]\s*(.*)$", cell)
    if m and parse_range(m.group(1)):
        return parse_range(m.group(1)), m.group(2)
    return None, cell


def _with_unit(weight: Weight | None, header: str) -> Weight | None:
    """A bare number in a `Points` or `Marks` column is that many points or marks."""
    if weight is None or weight.unit:
        return weight
    return Weight(weight.value, _unit(header.split()[-1] if header.split() else ""))


def _criteria_down(rows: list[list[str]]) -> list[Criterion]:
    """Criteria as rows, levels as columns; a `Weight` (or `Marks`) column gives each criterion's weight."""
    header = [_plain(h) for h in rows[0]]
    weight_col = next((i for i in range(1, len(header)) if header[i].lower() in _WEIGHT_HEADERS), None)
    level_cols = [i for i in range(1, len(header)) if i != weight_col and header[i]]
    heads = {i: _level_name(header[i]) for i in level_cols}
    criteria = []
    for r in rows[1:]:
        if not _plain(r[0]):
            continue
        name, weight = _criterion_name(r[0])
        if weight_col is not None and parse_weight(r[weight_col]):
            weight = _with_unit(parse_weight(r[weight_col]), header[weight_col])
        levels = []
        for i in level_cols:
            own, text = _cell_range(r[i])
            levels.append(Level(name=heads[i][0], descriptor=text, score=own or heads[i][1]))
        criteria.append(Criterion(name=name, levels=tuple(levels), weight=weight))
    return criteria


def _criteria_across(rows: list[list[str]]) -> list[Criterion]:
    """Levels as rows, criteria as columns; a `Marks` column gives ranges, a `Weight` row gives weights."""
    header = [_plain(h) for h in rows[0]]
    range_col = next((i for i in range(1, len(header)) if header[i].lower() in _RANGE_HEADERS), None)
    criterion_cols = [i for i in range(1, len(header)) if i != range_col and header[i]]
    weights: dict[int, Weight | None] = {}
    level_rows = []
    for r in rows[1:]:
        first = _plain(r[0]).lower().rstrip(":")
        if first in _WEIGHT_HEADERS:
            weights = {i: _with_unit(parse_weight(r[i]), first) for i in criterion_cols}
        elif first:
            level_rows.append(r)
    criteria = []
    for i in criterion_cols:
        name, weight = _criterion_name(header[i])
        levels = []
        for r in level_rows:
            level, score = _level_name(r[0])
            if range_col is not None and parse_range(r[range_col]):
                score = parse_range(r[range_col])
            own, text = _cell_range(r[i])
            levels.append(Level(name=level, descriptor=text, score=own or score))
        criteria.append(Criterion(name=name, levels=tuple(levels), weight=weights.get(i) or weight))
    return criteria


# --- headings and bold lines ------------------------------------------------------------------------------

_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.+?)\s*#*\s*$")
_BOLD_LINE = re.compile(r"^\s*(\*\*|__)(.+?)\1\s*(.*?)\s*$")
_CONTAINER = re.compile(
    r"^(?:the\s+)?(?:(?:marking|assessment|grading)\s+)?(?:criteria|rubric)\b"
    r"|^(?:(?:marking|grade|grading)\s+)?(?:bands?|scale)\b|^grades?\b|^(?:performance\s+)?levels?\b",
    re.I,
)
_BANDS = re.compile(
    r"^\s*(?:#{1,6}\s+)?(?:\*\*|__)?\s*(?:(?:shared|common)\s+)?(?:grade|grading|marking|mark|performance)?\s*"
    r"(?:bands?|scale|levels?|grades?)\s*(?:\*\*|__)?\s*(?:[:–—]|\s-)?\s*(?:\*\*|__)?\s*(.*)$",
    re.I,
)


@dataclass
class _Section:
    heading: str
    kind: str
    levels: list[Level] = field(default_factory=list)
    description: list[str] = field(default_factory=list)


def _lines(body: str) -> list[str]:
    """The body's lines outside fenced code blocks."""
    out, fenced = [], False
    for line in body.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def _bold_line(line: str) -> str | None:
    """`**Reflection** (40 points)`, `**Knowledge** — 30 marks` or `**Method:**` as criterion text; else None."""
    m = _BOLD_LINE.match(line)
    if not m:
        return None
    rest = m.group(3).strip(" :–—-()[]")
    if rest and parse_weight(rest) is None:
        return None
    return f"{m.group(2)} ({rest})" if rest else m.group(2)


def _from_sections(body: str, relpath: str) -> tuple[list[Criterion], str, str] | None:
    sections: list[_Section] = []
    notes: list[str] = []
    current: _Section | None = None
    for line in _lines(body):
        heading = _HEADING.match(line)
        bold = None if heading else _bold_line(line)
        if heading or bold:
            text = heading.group(2) if heading else bold
            current = _Section(text, "heading" if heading else "bold line")
            sections.append(current)
            continue
        level = _level_line(line) if current is not None else None
        if level is not None:
            current.levels.append(level)
        elif line.strip() and not line.lstrip().startswith(("|", ">")):
            (current.description if current is not None and not current.levels else notes).append(line.strip())
    found = [s for s in sections if s.levels and not _CONTAINER.match(_criterion_name(s.heading)[0])]
    bands_marked = any(_bands_marker(line) is not None for line in _lines(body))
    if not found or (len(found) < 2 and bands_marked):
        return None
    criteria = []
    for s in found:
        name, weight = _criterion_name(s.heading)
        criteria.append(Criterion(name, tuple(s.levels), weight, " ".join(s.description)))
    kinds = sorted({s.kind for s in found})
    shape = {"heading": "headings", "bold line": "bold lines"}.get(kinds[0]) if len(kinds) == 1 else None
    shape = shape or "headings and bold lines"
    return criteria, shape, "\n".join(notes)


# --- a list of criteria with shared bands -----------------------------------------------------------------


def _bands_marker(line: str) -> str | None:
    """The text after a `Grade bands:` marker (empty when the bands follow as bullets); None for other lines."""
    if _BULLET.match(line):
        return None
    m = _BANDS.match(line)
    if not m or not re.search(r"band|grade|scale|level", line, re.I):
        return None
    rest = m.group(1).strip()
    if rest and not parse_range(rest) and not re.search(r"\d", rest):
        return None
    return rest


def _split_items(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif ch in ",;" and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [i.strip(" .") for i in items if i.strip(" .")]


def _from_shared_bands(body: str, relpath: str) -> tuple[list[Criterion], str, str] | None:
    lines = _lines(body)
    bands: list[Level] = []
    band_lines: set[int] = set()
    for index, line in enumerate(lines):
        rest = _bands_marker(line)
        if rest is None or bands:
            continue
        band_lines.add(index)
        if rest:
            for item in _split_items(rest):
                split = _split_head(item)
                name, score = (
                    _level_name(item)
                    if split is None or parse_range(split[1]) is None
                    else (_plain(split[0]), parse_range(split[1]))
                )
                bands.append(Level(name=name, score=score))
            continue
        for follow in range(index + 1, len(lines)):
            if not lines[follow].strip():
                if bands:
                    break
                continue
            band = _level_line(lines[follow], need_separator=False)
            if band is None:
                break
            bands.append(band)
            band_lines.add(follow)
    if not bands:
        return None
    criteria, notes = [], []
    for index, line in enumerate(lines):
        if index in band_lines or _HEADING.match(line) or not line.strip():
            continue
        bullet = _BULLET.match(line)
        if not bullet:
            if not line.lstrip().startswith(">"):
                notes.append(line.strip())
            continue
        content = bullet.group(1)
        bold = re.match(r"^(\*\*|__)(.+?)\1\s*(.*)$", content)
        if bold:
            rest = bold.group(3)
            paren = _LEADING_PAREN.match(rest)
            head = f"{bold.group(2)} ({paren.group(1)})" if paren else bold.group(2)
            description = re.sub(r"^\s*(?::|–|—|-)\s*", "", rest[paren.end() :] if paren else rest)
        else:
            split = _split_head(content)
            head, description = split if split else (content, "")
        name, weight = _criterion_name(head)
        criteria.append(Criterion(name, tuple(bands), weight, _plain(description)))
    if not criteria:
        return None
    return criteria, "criteria with shared grade bands", "\n".join(notes)


def _notes(body: str) -> str:
    return "\n".join(
        line.strip()
        for line in _lines(body)
        if line.strip() and not line.lstrip().startswith(("|", "#", ">")) and not _BULLET.match(line)
    )


def _first_heading(body: str) -> str:
    for line in _lines(body):
        m = _HEADING.match(line)
        if m and len(m.group(1)) == 1:
            return _plain(m.group(2))
    return ""


# --- the light tier's rewrite -----------------------------------------------------------------------------


class LevelOut(BaseModel):
    name: str
    score_range: str = ""
    """As `17-20`, `70+` or `<40`; empty when the rubric gives none."""
    descriptor: str = ""


class CriterionOut(BaseModel):
    name: str
    weight: str = ""
    """As `25%`, `20 marks` or `40 points`; empty when the rubric gives none."""
    description: str = ""
    levels: list[LevelOut] = Field(default_factory=list)


class RubricOut(BaseModel):
    """A rubric rewritten by a model (`tierflow rubric normalise`); rendered in the canonical shape."""

    title: str = ""
    criteria: list[CriterionOut] = Field(default_factory=list)
    notes: str = ""


def rewrite_problems(out: RubricOut) -> list[str]:
    """What makes a model's rewrite unusable: no criteria, a criterion without levels, an unreadable range."""
    problems = [] if out.criteria else ["no criteria"]
    for c in out.criteria:
        if not c.levels:
            problems.append(f"criterion {c.name!r} has no levels")
        if c.weight and parse_weight(c.weight) is None:
            problems.append(f"criterion {c.name!r}: weight {c.weight!r} is not like `25%`, `20 marks` or `40 points`")
        problems += [
            f"{c.name!r}, level {lvl.name!r}: range {lvl.score_range!r} is not like `17-20`, `70+` or `<40`"
            for lvl in c.levels
            if lvl.score_range and parse_range(lvl.score_range) is None
        ]
    return problems


def rubric_from_out(out: RubricOut, relpath: str, title: str) -> Rubric:
    """The model's rewrite as a Rubric; a RubricError when it has no criteria, or a criterion has no levels."""
    criteria = tuple(
        Criterion(
            name=_plain(c.name),
            weight=parse_weight(c.weight) if c.weight else None,
            description=_plain(c.description),
            levels=tuple(
                Level(_plain(lvl.name), _plain(lvl.descriptor), parse_range(lvl.score_range or "-"))
                for lvl in c.levels
                if _plain(lvl.name)
            ),
        )
        for c in out.criteria
        if _plain(c.name)
    )
    if not criteria or any(not c.levels for c in criteria):
        raise RubricError(
            f"{relpath}: the model's rewrite has no usable criteria with levels; nothing was written. "
            "Rewrite the rubric by hand in one of the shapes `tierflow rubric show` lists."
        )
    return Rubric(path=relpath, title=_plain(out.title) or title, criteria=criteria, notes=out.notes.strip())


# --- what checks of answers marked against the rubric find (tierflow.flowkit.checks makes them Checks) ------
# An answer here has `criteria`: entries with `criterion`, `level`, optionally `score`, and `quotes`.


def coverage_problems(rubric: Rubric, parsed: object) -> list[str]:
    """Every rubric criterion exactly once, with one of its levels and a score inside that level's range."""
    entries = list(getattr(parsed, "criteria", []) or [])
    problems = []
    known = {c.name for c in rubric.criteria}
    for name in dict.fromkeys(e.criterion for e in entries if e.criterion not in known):
        problems.append(f"{name!r} is not a criterion of the rubric")
    for c in rubric.criteria:
        mine = [e for e in entries if e.criterion == c.name]
        if not mine:
            problems.append(f"criterion {c.name!r} is missing")
            continue
        if len(mine) > 1:
            problems.append(f"criterion {c.name!r} appears {len(mine)} times; give it once")
        entry = mine[0]
        level = c.level(entry.level)
        if level is None:
            names = ", ".join(lvl.name for lvl in c.levels)
            problems.append(f"{c.name!r}: level {entry.level!r} is not one of its levels ({names})")
            continue
        score = getattr(entry, "score", None)
        if level.score is not None and score is None:
            problems.append(f"{c.name!r}: no score; level {level.name!r} spans {level.score}")
        elif level.score is not None and not level.score.contains(score):
            problems.append(f"{c.name!r}: score {_num(score)} is outside level {level.name!r} ({level.score})")
    return problems


def quote_problems(text: str, parsed: object) -> list[str]:
    """Every quotation verbatim in `text` (whitespace, quote marks and `>` prefixes aside)."""
    return [
        f"{e.criterion!r}: quotation not found verbatim in the submission: {q[:80]!r}"
        for e in getattr(parsed, "criteria", []) or []
        for q in getattr(e, "quotes", []) or []
        if not locate(q, text)
    ]
