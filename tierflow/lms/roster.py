"""The assignment's kept roster, `A/roster.csv`: every student a `--roster` named, whether they submitted or not.

Classmates who handed nothing in have no note in `submissions/`, yet essays name them ("I planned this with Priya
Sharma"); the student-feedback flow hides everyone in this file as it hides the submitters, and the file itself is
never sent to a model (it is not a Markdown note, so no flow reads it as one).

One row per student, UTF-8 with a BOM (so Excel shows the accents), with the columns

    student_id, name, email, ids, other_names

`student_id` is the platform's id (Moodle's participant id, Canvas's user id), `ids` the institution's ids (Moodle's
`ID number`, Canvas's SIS ids) and `other_names` any other name to hide (a nickname, a former name). `email`, `ids`
and `other_names` may hold several values, separated by `;`. Rows and columns may be added by hand, and the file
saved again in Excel (`read_csv` reads it as Excel wrote it).

An import with a roster merges into the file and loses nothing written there: a student the new roster lacks
keeps their row; a name or email the platform now spells otherwise stays in the row (in `other_names`, or after
the new email), as do ids, other names, extra columns and the rows' order.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tierflow.core.errors import VaultError
from tierflow.lms.cells import CsvEncodingError, found, read_csv
from tierflow.lms.work import RosterEntry
from tierflow.vault.notes import write_atomically
from tierflow.vault.pseudonyms import Student

ROSTER_FILE = "roster.csv"
COLUMNS = ("student_id", "name", "email", "ids", "other_names")
SEPARATOR = ";"
"""Between values in one cell (`email`, `ids`, `other_names`)."""


class RosterFileError(VaultError):
    """The kept roster cannot be read: names it holds would go unhidden, so nothing goes ahead."""


@dataclass
class KeptRoster:
    """The kept roster as read: its students, and the rows that name nobody tierflow can hide."""

    path: Path
    students: list[Student] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class _Table:
    """The file as read: its header as written, and every row's cells, blank header cells and extra cells too."""

    header: list[str]
    rows: list[list[str]]
    delimiter: str = ","

    def column(self, key: str) -> int | None:
        keys = [_key(h) for h in self.header]
        return keys.index(key) if key in keys else None

    def get(self, row: list[str], key: str) -> str:
        i = self.column(key)
        return row[i] if i is not None and i < len(row) else ""

    def set(self, row: list[str], key: str, value: str) -> None:
        i = self.column(key)
        if i is None:
            self.header.append(key)
            i = len(self.header) - 1
        row.extend([""] * (i + 1 - len(row)))
        row[i] = value


def _key(column: str) -> str:
    """`Student ID`, `student_id ` -> `student_id`: a header as a person may retype it."""
    return "_".join(column.strip().lower().replace("-", " ").split())


def _values(cell: str) -> list[str]:
    return [v.strip() for v in cell.split(SEPARATOR) if v.strip()]


def _read(path: Path) -> _Table | None:
    """The file's header and rows; None when there is no file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RosterFileError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        text, dialect = read_csv(data)
    except CsvEncodingError as exc:
        raise RosterFileError(f"{path} {exc}") from None
    lines = list(csv.reader(io.StringIO(text), delimiter=dialect.delimiter))
    if not any(cell.strip() for line in lines for cell in line):
        return _Table(list(COLUMNS), [], dialect.delimiter)  # emptied: as if new
    table = _Table(lines[0], [], dialect.delimiter)
    if table.column("student_id") is None:
        raise RosterFileError(
            f"{path} has no `student_id` column ({found(table.header)}): tierflow keeps the assignment's roster "
            f"there, with the columns {', '.join(COLUMNS)}. Put the header back, or move the file aside and import "
            "the submissions again with --roster."
        )
    table.rows = [line for line in lines[1:] if any(cell.strip() for cell in line)]
    return table


_BROKEN = re.compile(r"[\w?]\?|\?\w")
"""A `?` beside a letter or another `?` (`?? Mai` for Đỗ Mai): one Excel could not keep, saving the file as "CSV
(Comma delimited)" (Windows-1252)."""


def _explained(broken: str, names: Iterable[str]) -> bool:
    """Whether one of `names`, whole, is `broken` with its `?` put back (`Şule Yılmaz` for `?ule Y?lmaz`)."""
    pattern = re.compile(".".join(re.escape(piece) for piece in broken.split("?")), re.IGNORECASE)
    return any("?" not in n and pattern.fullmatch(n) for n in names)


def _lost_letters(sid: str, names: list[str], known: Iterable[str]) -> list[str]:
    """`sid (name)` for each of a row's names with letters Excel lost that no whole name, in the row or `known`
    elsewhere, gives back."""
    whole = [*names, *known]
    return [f"{sid} ({n})" for n in names if _BROKEN.search(n) and not _explained(n, whole)]


def read_kept(folder: Path, known: Mapping[str, Iterable[str]] | None = None) -> KeptRoster | None:
    """The kept roster of the assignment folder; None when it has none. A RosterFileError when it cannot be read.

    A name with `?` for letters (the file saved again in Excel as Windows-1252, or another code page) is a problem:
    each `?` is hidden as whichever letter it may have been, or the two typed for it ("Mueller" for `M?ller`), only
    where the letters kept make a name (`tierflow.vault.pseudonyms.Pseudonyms`), so a short part typed without its
    accents ("Sule" for `?ule`) is not found, and words of the name's shape are hidden too. Not when `known` (names
    by student id, a submission note's) spells it whole: that spelling is hidden."""
    known = known or {}
    path = folder / ROSTER_FILE
    table = _read(path)
    if table is None:
        return None
    kept = KeptRoster(path)
    broken: list[str] = []
    for row in table.rows:
        sid = table.get(row, "student_id").strip()
        if not sid:
            shown = ", ".join(c.strip() for c in row if c.strip())
            kept.problems.append(f"a row without a student_id ({shown}) is not hidden: give it one")
            continue
        name, others = table.get(row, "name").strip(), _values(table.get(row, "other_names"))
        broken += _lost_letters(sid, [n for n in (name, *others) if n], known.get(sid, ()))
        kept.students.append(
            Student(
                sid,
                name,
                aliases=tuple(others),
                also=tuple(_values(table.get(row, "email")) + _values(table.get(row, "ids"))),
            )
        )
    if broken:
        kept.problems.append(
            f"the names of {', '.join(broken[:20])}{', ...' if len(broken) > 20 else ''} have `?` where Excel, "
            'saving the file as "CSV (Comma delimited)" (Windows-1252, or the code page of your Windows), dropped '
            "letters it could not hold. Each `?` is hidden as any letter outside ASCII, and as an ASCII letter, or "
            'the two typed for one ("ue" for "ü", "ss" for "ß", "aa" for "å"), only where the letters kept make a '
            'name of it ("Sule Yilmaz" for `?ule Y?lmaz`, "Juergen Mueller" for `J?rgen M?ller`): a short part '
            'typed without its accents ("Sule" of `?ule Y?lmaz`, "Do" of `?? Mai`) is not hidden, and other words '
            "of that shape may be. "
            f'Type the names again in {ROSTER_FILE} and save it as "CSV UTF-8 (Comma delimited)", or import the '
            "submissions again with --roster"
        )
    return kept


def entries(folder: Path) -> dict[str, RosterEntry]:
    """The kept roster's students as the import takes a `--roster`'s, by student id: the name, the first email
    (the platform's latest) and the ids; empty when the folder keeps none. A RosterFileError when it cannot be read.

    An import without `--roster` names its students from these, so a re-import records what the roster gave."""
    table = _read(folder / ROSTER_FILE)
    if table is None:
        return {}
    out: dict[str, RosterEntry] = {}
    for row in table.rows:
        sid = table.get(row, "student_id").strip()
        if sid and sid not in out:
            emails = _values(table.get(row, "email"))
            out[sid] = RosterEntry(
                sid,
                table.get(row, "name").strip(),
                email=emails[0] if emails else "",
                sis_ids=tuple(_values(table.get(row, "ids"))),
            )
    return out


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def _joined(*groups: Iterable[str]) -> str:
    """The values of every group, first seen first, each once (case aside)."""
    out: dict[str, str] = {}
    for group in groups:
        for value in group:
            if value.strip():
                out.setdefault(" ".join(value.split()).casefold(), value.strip())
    return f"{SEPARATOR} ".join(out.values())


def _merge(table: _Table, row: list[str], entry: RosterEntry) -> None:
    """The platform's latest values into a row, keeping what the row held: a name it replaces becomes another
    name, an email it replaces stays after it."""
    old = table.get(row, "name").strip()
    # A `?` is a letter Excel could not keep (saved as Windows-1252): such a name never replaces a whole one.
    take = bool(entry.name) and not (old and "?" in entry.name and "?" not in old)
    name = entry.name if take else old
    moved = [old] if old and not _same(old, name) else []
    moved += [entry.name] if entry.name and not _same(entry.name, name) else []
    table.set(row, "name", name)
    table.set(row, "email", _joined([entry.email], _values(table.get(row, "email"))))
    table.set(row, "ids", _joined(entry.sis_ids, _values(table.get(row, "ids"))))
    table.set(row, "other_names", _joined(_values(table.get(row, "other_names")), moved))


def keep(folder: Path, entries: Iterable[RosterEntry]) -> tuple[int, int]:
    """Merge a roster's students into the folder's `roster.csv` (see the module docstring); returns how many rows
    were added and how many the file holds. A RosterFileError, before anything is written, when the file is there
    but cannot be read."""
    path = folder / ROSTER_FILE
    table = _read(path) or _Table(list(COLUMNS), [])
    by_id: dict[str, list[str]] = {}
    for row in table.rows:
        by_id.setdefault(table.get(row, "student_id").strip(), row)
    added = 0
    for entry in entries:
        row = by_id.get(entry.student_id)
        if row is None:
            row = by_id[entry.student_id] = []
            table.set(row, "student_id", entry.student_id)
            table.rows.append(row)
            added += 1
        _merge(table, row, entry)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=table.delimiter, lineterminator="\n")
    writer.writerow(table.header)
    writer.writerows(row + [""] * (len(table.header) - len(row)) for row in table.rows)
    write_atomically(path, "\ufeff" + out.getvalue())
    return added, len(table.rows)
