"""Canvas: `submissions.zip` in; the gradebook CSV and a "Re-upload submissions" zip of comments out.

The rules come from Canvas's own code (instructure/canvas-lms):
- the submissions zip is flat: `<sortable name, lowercased, non-word characters removed>[_LATE]_<user id>_
  <attachment id>_<original name>` for uploads, `<base>_text.html` for text entries, `anon_<id>` as the base
  under anonymous grading (older Canvas wrote `_late_`); `_` is a word character, so a name may hold it
  (`Doe_Smith, Jane` -> `doe_smithjane`); entry names are UTF-8, often without the zip's UTF-8 flag (see
  `tierflow.lms.source`).
- `app/models/assignment.rb` `infer_comment_context_from_filename`: a re-uploaded file is matched by the first
  two purely numeric `_`-separated parts of its name (user id, attachment id), so it must keep its downloaded name.
- `app/models/gradebook_importer.rb`: the header must start `Student, ID`, or `LastName, FirstName, ID` when the
  gradebook was exported with first and last names apart (then `SIS User ID`, `SIS Login ID`, `Section`); a row
  whose first cell contains `Points Possible` describes the assignments; assignment columns are matched by
  `Assignment.title_and_id` (`/\\A(.*)\\s\\((\\d+)\\)\\z/`), so a renamed header makes a new assignment; the
  delimiter is `;` or `,` (`identify_delimiter`), nothing else. `tests/lms_rules.py` ports these rules.
- A group assignment's submission is one submission of the group's: Canvas zips a copy for each member, each under
  the member's name and user id but the same attachment id (`smithanna_48004_771004_essay.docx`,
  `cruzzoëdela_48006_771004_essay.docx`). Files of different users with one attachment id are therefore a group's,
  never imported as students' (see `read_export`), as Moodle's team folders are not.
- A gradebook the lecturer saved again in Excel (`;`, tab, or Windows-1252) is read as Excel wrote it, and a
  filled copy keeps the file's own layout, encoding and delimiter (`tierflow.lms.cells`), but for tab, which
  Canvas cannot read: it is written `,`-separated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from tierflow.lms.cells import (
    CsvEncodingError,
    Dialect,
    RawRow,
    found,
    fputcsv_field,
    raw_value,
    read_csv,
    render,
    rows_of,
    split_raw,
)
from tierflow.lms.source import Export
from tierflow.lms.work import PlatformFile, ReadExport, RosterEntry

PLATFORM = "canvas"
_NUMBER = re.compile(r"^\d+$")
_LATE = ("LATE", "late")
TITLE_AND_ID = re.compile(r"\A(.*)\s\((\d+)\)\Z", re.S)
"""Canvas's `Assignment.title_and_id`: how the importer recognises an assignment column."""
POINTS_POSSIBLE = "Points Possible"
SIS_COLUMNS = ("SIS User ID", "SIS Login ID")
"""The institution's ids for a student, hidden from every prompt like the name."""
TEST_STUDENT = "Student, Test"
GROUP_ADVICE = (
    "tierflow marks individual submissions: download the submissions of an individual (not group) assignment, or "
    "mark the group's work in Canvas (SpeedGrader); to mark one member's copy, keep only that member's files in the "
    "zip, under the names Canvas gave them"
)


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
    """Split an entry name the way Canvas built it; None when it is not one of Canvas's.

    The ids are found as Canvas's re-upload finds them (`infer_comment_context_from_filename`): the first two
    purely numeric `_`-separated parts, user id then attachment id. What comes before them is the name, which may
    hold `_` itself (Canvas keeps it: `Doe_Smith, Jane` is `doe_smithjane`), then `LATE` or `late`.
    """
    if "/" in name:
        return None
    tokens = name.split("_")
    if tokens[0] == "anon" and len(tokens) > 2:
        base, rest = f"anon_{tokens[1]}", tokens[2:]
        late = rest[0] in _LATE and len(rest) > 1
        rest = rest[1:] if late else rest
        if len(rest) > 1 and _NUMBER.match(rest[0]):
            return CanvasName(base, base, late, rest[0], "_".join(rest[1:]), False)
        if rest == ["text.html"]:
            return CanvasName(base, base, late, "", "text.html", True)
        return None
    # The user id: the first numeric part after a name, never the last part (the file's own name).
    at = next((i for i in range(1, len(tokens) - 1) if _NUMBER.match(tokens[i])), None)
    if at is None or _NUMBER.match(tokens[0]):
        return None  # no name before the ids, or none that Canvas's re-upload would not read as the user id
    head, student_id, rest = tokens[:at], tokens[at], tokens[at + 1 :]
    late = len(head) > 1 and head[-1] in _LATE
    base = "_".join(head[:-1] if late else head)
    if rest == ["text.html"]:
        return CanvasName(base, student_id, late, "", "text.html", True)
    if len(rest) < 2 or not _NUMBER.match(rest[0]):
        return None
    return CanvasName(base, student_id, late, rest[0], "_".join(rest[1:]), False)


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
    result.ignored += group_submissions(result)
    return result


def group_submissions(found: ReadExport) -> list[tuple[str, str]]:
    """Take out of `found` every student whose file has the attachment id of another student's file, and say why
    for each of their files: the members of a group submission each get a copy of the group's files under the
    group's one attachment id, so that submission is the group's, which imported as each member's would be drafted,
    marked and sent back once per member."""
    users: dict[str, dict[str, list[str]]] = {}  # attachment id -> user id -> their entries with it
    for sid, work in found.students.items():
        for f in work.files:
            parsed = parse_name(f.entry.path.rsplit("/", 1)[-1])
            if parsed is not None and parsed.attachment_id:
                users.setdefault(parsed.attachment_id, {}).setdefault(sid, []).append(f.entry.path)
    shared = {aid: by for aid, by in users.items() if len(by) > 1}
    out = []
    for sid in sorted({sid for by in shared.values() for sid in by}):
        work = found.students.pop(sid)
        own = {aid: by for aid, by in shared.items() if sid in by}
        others = "; ".join(
            f"attachment id {aid} is also "
            + ", ".join(f"`{path}` (user {uid})" for uid, paths in by.items() if uid != sid for path in paths)
            for aid, by in sorted(own.items())
        )
        for f in work.files:
            parsed = parse_name(f.entry.path.rsplit("/", 1)[-1])
            part = "" if parsed is not None and parsed.attachment_id in own else f"part of user {sid}'s submission; "
            out.append(
                (
                    f.entry.path,
                    f"{part}{others}: Canvas gives every member of a group the group's files under one attachment id, "
                    "so this is a group submission, not one student's; not imported, so no student gets this "
                    f"submission's mark or comments. {GROUP_ADVICE}.",
                )
            )
    return out


def squash(sortable: str) -> str:
    """Canvas's zip base for a sortable name: lowercased, non-word characters removed (`O'Sullivan, Liam` ->
    `osullivanliam`)."""
    return re.sub(r"\W", "", sortable).lower()


def name_from(base: str, texts: list[str]) -> str:
    """The student's name as written in `texts` (document authors first, then the text) whose sortable form
    squashes to the zip's `base`, a word in capitals in title case; empty when none does. Two to four words are
    tried, split every way."""
    words_re = re.compile(r"[^\W\d_][\w'’.-]*")
    for text in texts:
        words = words_re.findall(text[:20000])
        for size in (2, 3, 4):
            for i in range(len(words) - size + 1):
                window = words[i : i + size]
                if not window[0][0].isupper():
                    continue
                for k in range(1, size):
                    if squash(" ".join(window[k:]) + ", " + " ".join(window[:k])) == base:
                        return " ".join(_cased(w.rstrip(".")) for w in window)
    return ""


def _cased(word: str) -> str:
    """A word of a name as a name is spelt: in title case when written in capitals (`O’BRIEN` -> `O’Brien`, as an
    essay's heading or a form may write it), else as written (`McDonald`, `de`)."""
    return word.title() if len(word) > 1 and word.isupper() else word


# --- the gradebook CSV ----------------------------------------------------------------------------------


def display_name(sortable: str) -> str:
    """`O'Sullivan, Liam` -> `Liam O'Sullivan` (Canvas's gradebook lists students by sortable name)."""
    last, comma, first = sortable.partition(",")
    return f"{first.strip()} {last.strip()}".strip() if comma else sortable.strip()


@dataclass(frozen=True)
class Layout:
    """Where a gradebook holds each student's name and user id, found by its header as Canvas's importer finds
    them (`row_has_student_headers?`, `update_column_count`): `Student`, `ID` (the sortable name), or `LastName`,
    `FirstName`, `ID`, as Canvas exports it with "show first and last names separately"."""

    user_id: int
    names: tuple[int, ...]
    """The `Student` column, or the `LastName` and `FirstName` columns."""

    @classmethod
    def of(cls, header: list[str]) -> Layout | None:
        """The header's layout; None when it is neither of Canvas's."""
        cells = [h.strip() for h in header]
        if len(cells) > 2 and cells[0] == "LastName" and cells[1] == "FirstName" and "ID" in cells[2]:
            return cls(2, (0, 1))
        if len(cells) > 1 and "Student" in cells[0] and "ID" in cells[1]:
            return cls(1, (0,))
        return None

    def sortable(self, values: list[str]) -> str:
        """The row's student as a sortable name (`O'Sullivan, Liam`), whichever layout holds it."""
        parts = [values[i].strip() if i < len(values) else "" for i in self.names]
        return ", ".join(parts) if len(parts) > 1 else parts[0]


GRADEBOOK_HEADERS = "`Student`, `ID` (or `LastName`, `FirstName`, `ID`)"


def read_roster(data: bytes, name: str) -> dict[str, RosterEntry]:
    """User id -> real name and SIS ids, from a gradebook CSV export in either layout. A GradebookError when it names
    no student (not a gradebook, or no rows)."""
    try:
        rows = rows_of(data)
    except CsvEncodingError as exc:
        raise GradebookError(f"{name} {exc}") from None
    header = rows[0] if rows else []
    layout = Layout.of(header)
    if layout is None:
        raise GradebookError(
            f"{name} is not a Canvas gradebook export: tierflow looked for a header starting {GRADEBOOK_HEADERS} "
            f"(then {', '.join(f'`{c}`' for c in SIS_COLUMNS)}) and found {found(header)}. In Canvas: Grades -> "
            "Export -> Export Entire Gradebook, and give that file."
        )
    sis = [header.index(c) for c in SIS_COLUMNS if c in header]
    out = {}
    for row in rows[1:]:
        if len(row) <= layout.user_id or POINTS_POSSIBLE in row[0]:
            continue
        uid = row[layout.user_id].strip()
        if not _NUMBER.match(uid):
            continue
        ids = tuple(row[i].strip() for i in sis if i < len(row) and row[i].strip())
        out[uid] = RosterEntry(uid, display_name(layout.sortable(row)), sis_ids=ids)
    if not out:
        raise GradebookError(
            f"{name} has the gradebook's header but no student rows (a numeric `ID`): export the entire gradebook "
            "again from Canvas."
        )
    return out


NON_ASSIGNMENT = (
    "Current Score",
    "Current Points",
    "Current Grade",
    "Final Score",
    "Final Points",
    "Final Grade",
    "Override Score",
    "Override Grade",
    "Override Status",
)
"""Totals columns `gradebook_importer.rb` strips before it matches assignments (`Unposted ...` forms too)."""


class GradebookError(ValueError):
    """The gradebook CSV cannot be filled: not Canvas's, or the assignment column is not in it."""


CANVAS_DELIMITERS = (",", ";")
"""The delimiters Canvas's importer tells apart (`GradebookImporter#identify_delimiter`); it tries no other."""


@dataclass
class Gradebook:
    """A downloaded gradebook CSV kept byte for byte, with one assignment's column to fill."""

    dialect: Dialect
    """How the filled copy is written: the file's own encoding and delimiter, but `,` for a delimiter Canvas's
    importer does not read (tab)."""
    header: list[str]
    rows: list[RawRow]
    layout: Layout
    downloaded: Dialect
    """How the file itself was saved."""

    @classmethod
    def parse(cls, data: bytes, name: str) -> Gradebook:
        try:
            text, downloaded = read_csv(data)
        except CsvEncodingError as exc:
            raise GradebookError(f"{name} {exc}") from None
        rows = split_raw(text, downloaded.delimiter)
        header = [raw_value(f, downloaded.delimiter) for f in rows[0].fields] if rows else []
        layout = Layout.of(header)
        if layout is None or len(header) < 4:
            raise GradebookError(
                f"{name} is not a Canvas gradebook export (its header must start {GRADEBOOK_HEADERS}). In Canvas: "
                "Grades -> Export -> Export Entire Gradebook, and give that file as it came."
            )
        dialect = downloaded
        if downloaded.delimiter not in CANVAS_DELIMITERS:
            dialect = replace(downloaded, delimiter=",")
            rows = [RawRow([_refield(f, downloaded.delimiter) for f in r.fields], r.end) for r in rows]
        return cls(dialect, header, rows, layout, downloaded)

    def assignment_columns(self) -> list[tuple[int, str, str]]:
        """(index, title, id) of every assignment column, recognised as Canvas's importer recognises them."""
        out = []
        for i, cell in enumerate(self.header):
            m = TITLE_AND_ID.match(cell)
            if m and not any(n in cell for n in NON_ASSIGNMENT):
                out.append((i, m.group(1), m.group(2)))
        return out

    def column(self, choice: str | None) -> int:
        columns = self.assignment_columns()
        if choice:
            found = [i for i, title, aid in columns if choice in (self.header[i], aid, title)]
            if len(found) == 1:
                return found[0]
            raise GradebookError(
                f"no single assignment column matches {choice!r}; the columns are: "
                + "; ".join(self.header[i] for i, _, _ in columns)
            )
        if len(columns) == 1:
            return columns[0][0]
        raise GradebookError(
            "the gradebook has several assignments: say which with --column, as the header names it (or its "
            "id): " + "; ".join(self.header[i] for i, _, _ in columns)
        )

    def points_possible(self, col: int) -> float | None:
        for row in self.rows[1:]:
            if row.fields and POINTS_POSSIBLE in self._value(row, 0):
                try:
                    return float(self._value(row, col).replace(",", "."))
                except (ValueError, IndexError):
                    return None
        return None

    def students(self) -> dict[str, int]:
        """User id -> row index, leaving out the Points Possible, muted and Test Student rows."""
        out = {}
        for i, row in enumerate(self.rows[1:], start=1):
            if len(row.fields) <= self.layout.user_id:
                continue
            values = [self._value(row, c) for c in range(len(row.fields))]
            if POINTS_POSSIBLE in values[0] or self.layout.sortable(values) == TEST_STUDENT:
                continue
            uid = values[self.layout.user_id].strip()
            if _NUMBER.match(uid):
                out[uid] = i
        return out

    def value(self, index: int, col: int) -> str:
        """The value of row `index`'s cell in column `col`, as downloaded (empty when the row is short)."""
        row = self.rows[index]
        return self._value(row, col) if col < len(row.fields) else ""

    def _value(self, row: RawRow, col: int) -> str:
        return raw_value(row.fields[col], self.dialect.delimiter)

    def fill(self, index: int, col: int, value: str) -> None:
        self.rows[index].fields[col] = fputcsv_field(value, self.dialect.delimiter)

    def render(self) -> bytes:
        return render(self.rows, self.dialect)


def _refield(raw: str, delimiter: str) -> str:
    """A field of a file separated by `delimiter` as it must stand in a `,`-separated one: as it was, unless its
    value holds a `,`, a quote or a line break outside quotes, which Ruby's CSV (Canvas's importer) would split or
    refuse; then quoted, as Ruby writes it."""
    if raw.startswith('"'):
        return raw  # quoted: the same text whatever the delimiter
    value = raw_value(raw, delimiter)
    if any(ch in value for ch in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return raw
