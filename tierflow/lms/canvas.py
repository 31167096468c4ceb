"""Canvas: `submissions.zip` in; the gradebook CSV and a "Re-upload submissions" zip of comments out.

The rules come from Canvas's own code (instructure/canvas-lms):
- the submissions zip is flat: `<sortable name, lowercased, non-word characters removed>[_LATE]_<user id>_
  <attachment id>_<original name>` for uploads, `<base>_text.html` for text entries, `anon_<id>` as the base
  under anonymous grading (older Canvas wrote `_late_`); entry names are UTF-8, often without the zip's UTF-8
  flag (see `tierflow.lms.source`).
- `app/models/assignment.rb` `infer_comment_context_from_filename`: a re-uploaded file is matched by the first
  two purely numeric `_`-separated parts of its name (user id, attachment id), so it must keep its downloaded name.
- `app/models/gradebook_importer.rb`: the header must start `Student, ID` (then `SIS User ID`, `SIS Login ID`,
  `Section`); a row whose first cell contains `Points Possible` describes the assignments; assignment columns
  are matched by `Assignment.title_and_id` (`/\\A(.*)\\s\\((\\d+)\\)\\z/`), so a renamed header makes a new
  assignment. `tests/test_lms_canvas.py` ports these rules.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from tierflow.lms.source import Export
from tierflow.lms.work import PlatformFile, ReadExport, RosterEntry

PLATFORM = "canvas"
_NUMBER = re.compile(r"^\d+$")
_LATE = ("LATE", "late")
TITLE_AND_ID = re.compile(r"\A(.*)\s\((\d+)\)\Z", re.S)
"""Canvas's `Assignment.title_and_id`: how the importer recognises an assignment column."""
POINTS_POSSIBLE = "Points Possible"
TEST_STUDENT = "Student, Test"


@dataclass(frozen=True)
class CanvasName:
    """The parts of one submissions-zip entry name."""

    base: str
    student_id: str
    late: bool
    attachment_id: str
    original: str
    text_entry: bool


def parse_name(name: str) -> CanvasName | None:
    """Split an entry name the way Canvas built it; None when it is not one of Canvas's."""
    if "/" in name:
        return None
    tokens = name.split("_")
    if tokens[0] == "anon" and len(tokens) > 2:
        base, rest = f"anon_{tokens[1]}", tokens[2:]
        student_id = base
    else:
        base, rest = tokens[0], tokens[1:]
        student_id = ""
    late = bool(rest) and rest[0] in _LATE
    if late:
        rest = rest[1:]
    numbers = []
    while rest and _NUMBER.match(rest[0]) and len(numbers) < (1 if student_id else 2) and len(rest) > 1:
        numbers.append(rest.pop(0))
    remainder = "_".join(rest)
    if not student_id:
        if not numbers:
            return None
        student_id = numbers.pop(0)
    if remainder == "text.html" and not numbers:
        return CanvasName(base, student_id, late, "", "text.html", True)
    if not numbers or not remainder:
        return None
    return CanvasName(base, student_id, late, numbers[0], remainder, False)


def matches(paths: list[str]) -> int:
    return sum(1 for p in paths if parse_name(p) is not None)


def read_export(export: Export) -> ReadExport:
    """Every student's files in Canvas's flat submissions.zip."""
    result = ReadExport(PLATFORM)
    entries = export.entries
    wrapped = entries and all("/" in e.path for e in entries) and len({e.path.split("/")[0] for e in entries}) == 1
    for entry in entries:
        name = entry.path.split("/", 1)[1] if wrapped else entry.path
        parsed = parse_name(name)
        if parsed is None:
            result.ignored.append((entry.path, "not named as Canvas names submission files; skipped"))
            continue
        anonymous = parsed.student_id.startswith("anon_")
        layout = "anonymous grading" if anonymous else "flat"
        work = result.student(parsed.student_id, "" if anonymous else parsed.base, PLATFORM, layout)
        work.late = work.late or parsed.late
        kind = "text entry" if parsed.text_entry else "file"
        work.files.append(PlatformFile(entry, parsed.original, kind))
    return result


# --- the gradebook CSV ----------------------------------------------------------------------------------


def display_name(sortable: str) -> str:
    """`O'Sullivan, Liam` -> `Liam O'Sullivan` (Canvas's gradebook lists students by sortable name)."""
    last, comma, first = sortable.partition(",")
    return f"{first.strip()} {last.strip()}".strip() if comma else sortable.strip()


def read_roster(data: bytes) -> dict[str, RosterEntry]:
    """User id -> real name, from a gradebook CSV export."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    if not rows or len(rows[0]) < 2 or "Student" not in rows[0][0] or "ID" not in rows[0][1]:
        return {}
    out = {}
    for row in rows[1:]:
        if len(row) < 2 or POINTS_POSSIBLE in row[0] or not _NUMBER.match(row[1].strip()):
            continue
        out[row[1].strip()] = RosterEntry(row[1].strip(), display_name(row[0]))
    return out
