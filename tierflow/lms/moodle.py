"""Moodle's assignment (`mod/assign`): the submissions download in, the grading worksheet and feedback files out.

The rules come from Moodle's own code:
- `mod/assign/classes/downloader.php` (4.1+) and `mod/assign/locallib.php` `download_submissions` (before 4.1):
  each student's prefix is `clean_filename(str_replace('_', ' ', fullname) . '_' . participant id)`
  (`Participant` under blind marking; before 4.1 with a trailing `_`); with "Download submissions in folders" on
  (the default) each plugin's files go under `<prefix>_assignsubmission_<plugin>/`, otherwise they are flat as
  `<prefix>_assignsubmission_<plugin>_<filename>`. `clean_filename` strips `& < > " \\` | ' : \\ /`.
- `mod/assign/gradingtable.php`: the worksheet's columns; `Identifier` is `Participant <participant id>`.
- `lib/csvlib.class.php` and `mod/assign/feedback/offline/importgradeslib.php` / `locallib.php`: how the
  worksheet is read back (see `tests/test_lms_moodle.py`, which ports those rules).
- `lib/openspout/src/Writer/CSV/Writer.php`: the worksheet is written with a UTF-8 BOM by PHP's `fputcsv`
  (`,` and `"`, no escape character, `\\n` line ends). A lecturer may have saved it again in Excel (`;`, or
  Windows-1252): the upload form (`mod/assign/feedback/offline/uploadgradesform.php`) asks for the encoding and
  separator, so a filled copy keeps the file's own.
- `mod/assign/feedback/file/importziplib.php`: a feedback file is matched when a folder or file name on its
  path splits on `_` into name, numeric participant id, `assignsubmission`, plugin.
- `mod/assign/classes/downloader.php` `get_student_prefix`: a team (group) assignment names each submission after
  the group and its *group* id (`Team Alpha_17_...`), or `Default group` with no id for students in no group; a
  group id is no participant id, so such folders are never imported as a student's (see `team_folders`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

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
from tierflow.lms.source import Entry, Export
from tierflow.lms.work import PlatformFile, ReadExport, RosterEntry
from tierflow.vault.pseudonyms import fold

PLATFORM = "moodle"
_ENTRY = re.compile(
    r"^(?P<name>[^_/]*)_(?P<id>\d+)_(?P<subtype>assignsubmission)_(?P<plugin>[A-Za-z0-9]+)"
    r"(?:(?P<old>_)?/(?P<inner>.+)|_(?P<flat>[^/]+))$"
)
BLIND = "Participant"
"""The name part Moodle writes for every student under blind marking (`get_string('participant', 'assign')`)."""
CLEANED = "&<>\"`|':\\/"
"""What `clean_filename` removes from a name (PARAM_FILE): `Liam O'Sullivan` arrives as `Liam OSullivan`."""
DEFAULT_GROUP = "Default group"
"""`get_string('defaultteam', 'assign')`: a team assignment's folder for the students in no group."""
_DEFAULT_GROUP_ENTRY = re.compile(rf"^{DEFAULT_GROUP}_assignsubmission_[A-Za-z0-9]+")
_FOLDER = re.compile(r"^[^/]*?_assignsubmission_[A-Za-z0-9]+")
TEAM_ADVICE = (
    "tierflow marks individual submissions: download them with 'Download submissions in folders' from an "
    "individual (not group) assignment, or give each member's own files in a folder named as Moodle names an "
    "individual's (`Full Name_<participant id>_assignsubmission_file/`)"
)

IDENTIFIER = "Identifier"
GRADE = "Grade"
MODIFIED_GRADE = "Last modified (grade)"
MAXIMUM = "Maximum Grade"
FEEDBACK = "Feedback comments"
FULL_NAME = "Full name"
EMAIL = "Email address"
ID_NUMBER = "ID number"
"""Identity columns (`$CFG->showuseridentity`) the worksheet may hold: hidden from every prompt with the name."""
STATUS = "Status"
SUBMITTED = "Last modified (submission)"
"""`gradingtable.php` `col_timesubmitted`: `userdate()` of the submission's last change, `-` when there is none."""
_USERDATE = re.compile(
    r"^(?:[A-Za-z]+,\s*)?(?P<day>\d{1,2})\s+(?P<month>[A-Za-z]+)\s+(?P<year>\d{4}),\s*"
    r"(?P<hour>\d{1,2}):(?P<minute>\d{2})\s*(?P<half>[AaPp][Mm])$"
)
"""English `strftimedaydatetime` (`Thursday, 19 November 2026, 10:14 PM`), as Moodle writes the worksheet's dates."""
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")  # fmt: skip
PARTICIPANT = "Participant "
"""`get_string('hiddenuser', 'assign')`: the worksheet's `Identifier` is this followed by the participant id."""
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(?:[.,]\d+)?")
"""A Grade cell read one way only: digits, with `.` or `,` (a decimal-comma Excel's) as the decimal point."""
_LOCALIZED_ID = re.compile(r"^(?P<word>\D*[^\d\s])\s?\d+$")
"""`Teilnehmer/in2001`: another language's `hiddenuser` before the participant id."""


def _not_english(name: str, header: list[str], first_column: list[str]) -> WorksheetError | None:
    """The error for a worksheet Moodle wrote in another language: laid out as the worksheet is (the identifier
    first, one word and the participant id in every row), with other column names. Moodle's upload reads the
    identifiers back in the language of whoever uploads it, so the fix is English both ways, not a translation."""
    values = [v.strip() for v in first_column if v.strip()]
    words = {m["word"] for v in values if (m := _LOCALIZED_ID.match(v))}
    if len(header) < 4 or not values or len(words) != 1 or not all(_LOCALIZED_ID.match(v) for v in values):
        return None
    return WorksheetError(
        f"{name} looks like a Moodle grading worksheet, but not in English (its first column is `{header[0]}`, "
        f"not `{IDENTIFIER}`, and its rows `{values[0]}`, not `{PARTICIPANT}<id>`): tierflow reads Moodle's "
        "English worksheet. Switch your Moodle language to English (user menu > Language > English) before "
        "downloading the grading worksheet, and upload it back in English too: Moodle reads the identifiers in "
        "the language of the person uploading."
    )


def matches(paths: list[str]) -> int:
    """How many entry paths look like Moodle's (used to tell the platforms apart)."""
    return sum(1 for p in paths if _ENTRY.match(p) or _ENTRY.match(p.split("/", 1)[-1]))


def read_export(export: Export) -> ReadExport:
    """Every student's files in a Moodle submissions download, in any of its four layouts."""
    result = ReadExport(PLATFORM)
    entries = export.entries
    if entries and not any(_ENTRY.match(e.path) for e in entries):
        # Unpacked into a folder named after the zip: look one level down.
        entries = [Entry(e.path.split("/", 1)[1], e.size) if "/" in e.path else e for e in entries]
        stripped = {e.path: orig for e, orig in zip(entries, export.entries, strict=True)}
    else:
        stripped = {e.path: e for e in entries}
    teams: list[str] = []
    for entry in entries:
        m = _ENTRY.match(entry.path)
        original = stripped[entry.path]
        if (m and m["name"] == DEFAULT_GROUP) or _DEFAULT_GROUP_ENTRY.match(entry.path):
            teams.append(folder_of(original.path))
            continue
        if not m:
            result.ignored.append((original.path, "not named as Moodle names submission files; skipped"))
            continue
        blind = m["name"] == BLIND
        layout = "flat" if m["flat"] else ("folders, before Moodle 4.1" if m["old"] else "folders")
        if blind:
            layout = f"blind marking, {layout}"
        work = result.student(m["id"], "" if blind else m["name"].strip(), PLATFORM, layout)
        plugin = m["plugin"]
        filename = m["flat"] or m["inner"]
        kind = "online text" if plugin == "onlinetext" else "file"
        work.files.append(PlatformFile(original, filename, kind))
    result.ignored += [
        (
            folder,
            f"`{DEFAULT_GROUP}` is where Moodle puts a team assignment's students who are in no group: this is a "
            f"team submission, not one student's; not imported. {TEAM_ADVICE}.",
        )
        for folder in dict.fromkeys(teams)
    ]
    return result


def folder_of(path: str) -> str:
    """The submission folder (`Name_<id>_assignsubmission_file/`) an entry lies in, or the flat entry's name."""
    parts = path.split("/")
    for i, part in enumerate(parts[:-1]):
        if _FOLDER.match(part):
            return "/".join(parts[: i + 1]) + "/"
    return path


def clean_name(name: str) -> str:
    """A full name as Moodle writes it into a file name: `clean_filename`'s characters removed, `_` as a space."""
    return "".join(ch for ch in name if ch not in CLEANED and ch >= " ").replace("_", " ")


_NAME_JOINERS = re.compile(r"[\s\-\u2010-\u2015'\u2019.]+")


def _joined_runs(words: list[str]) -> Iterator[list[str]]:
    """Every way of joining neighbouring `words` into runs: ["o", "brien", "x"] -> ["obrienx"], ["o", "brienx"]..."""
    for cuts in range(1 << max(len(words) - 1, 0)):
        runs, current = [], words[0] if words else ""
        for i, word in enumerate(words[1:]):
            if cuts >> i & 1:
                runs.append(current)
                current = word
            else:
                current += word
        yield [*runs, current]


def same_name(in_file: str, in_roster: str) -> bool:
    """Whether the name in a submission's file name is the roster's name for that participant: as Moodle cleans it,
    accents folded, case and word order aside (Moodle may show "Last First"), a hyphen or apostrophe as a space
    or as nothing ("Garcia-Lopez" for "García López", "OBrien" for "O'Brien"), and a `?` in the roster standing
    for any one letter (Excel, saving as Windows-1252, writes `?` for a letter it cannot hold)."""

    def words(name: str) -> list[str]:
        return [w for w in _NAME_JOINERS.split(fold(unicodedata.normalize("NFC", name)).casefold()) if w]

    found, listed = sorted(words(clean_name(in_file))), sorted(words(clean_name(in_roster)))
    if len(found) != len(listed):
        # Words run together on one side ("OBrien", "Annemarie"): the longer side's words, joined in runs, give
        # the shorter side's.
        short, long = (found, words(clean_name(in_roster))) if len(found) < len(listed) else (listed, words(
            clean_name(in_file)))  # fmt: skip
        return any(sorted(runs) == short for runs in _joined_runs(long))
    for word in listed:
        pattern = re.compile(re.escape(word).replace(r"\?", "."))
        match = next((w for w in found if pattern.fullmatch(w)), None)
        if match is None:
            return False
        found.remove(match)
    return True


def team_folders(found: ReadExport, roster: dict[str, RosterEntry], roster_name: str) -> list[tuple[str, str]]:
    """Take out of `found` every student whose file name is not the roster's name for that id, or whose id the
    roster lacks under a name no student on it has, and say why for each folder: a team submission carries its
    group's id, which may be any participant's (their mark would go to that student) or none, or the export and
    the roster are of different assignments."""
    out = []
    names = [e.name for e in roster.values() if e.name]
    for sid, work in list(found.students.items()):
        entry = roster.get(sid)
        if not work.name:
            continue  # blind marking: no names to tell by
        if entry is None:
            # A group id that is no participant's: a team, unless a student of that name is on the roster.
            if not names or any(same_name(work.name, n) for n in names):
                continue
            why = (
                f"named `{work.name}`, but {roster_name} has no participant {sid} and no student of that name: this "
                "looks like a team submission (Moodle names those after the group and its group id, which is no "
                f"participant id); not imported. If it is a student who joined after {roster_name} was downloaded, "
                f"download the worksheet again and import with it. {TEAM_ADVICE}."
            )
        elif not entry.name or same_name(work.name, entry.name):
            continue  # the same person, or the roster gives no name
        else:
            why = (
                f"named `{work.name}`, but participant {sid} in {roster_name} is `{entry.name}`: this looks like a "
                "team submission (Moodle names those after the group and its group id, which is no participant id), "
                f"or the export and {roster_name} are of different assignments; not imported, so no student gets "
                f"this submission's mark. {TEAM_ADVICE}."
            )
        del found.students[sid]
        out += [(folder, why) for folder in dict.fromkeys(folder_of(f.entry.path) for f in work.files)]
    return out


# --- the grading worksheet --------------------------------------------------------------------------------


def read_roster(data: bytes, name: str) -> dict[str, RosterEntry]:
    """Participant id -> the worksheet's full name (with its apostrophes), email and ID number, and whether Moodle
    says it was late. A WorksheetError when it names no participant (not a worksheet, or no rows)."""
    try:
        rows = rows_of(data)
    except CsvEncodingError as exc:
        raise WorksheetError(f"{name} {exc}") from None
    header = rows[0] if rows else []
    if IDENTIFIER not in header:
        foreign = _not_english(name, header, [r[0] for r in rows[1:] if r])
        if foreign:
            raise foreign
        raise WorksheetError(
            f"{name} is not a Moodle grading worksheet: tierflow looked for a `{IDENTIFIER}` column (with "
            f"`{FULL_NAME}`, `{STATUS}`) and found {found(header)}. Download it from the assignment: View all "
            "submissions -> Grading action -> Download grading worksheet."
        )
    out = {}
    for row in rows[1:]:
        if len(row) != len(header):
            continue
        cells = dict(zip(header, row, strict=True))
        ident = cells[IDENTIFIER]
        if not ident.startswith(PARTICIPANT):
            continue
        sid = ident[len(PARTICIPANT) :].strip()
        status = cells.get(STATUS, "")
        out[sid] = RosterEntry(
            sid,
            cells.get(FULL_NAME, "").strip(),
            late=("late" in status.lower()) or None,
            email=cells.get(EMAIL, "").strip(),
            sis_ids=tuple(i for i in [cells.get(ID_NUMBER, "").strip()] if i),
            submitted=userdate(cells.get(SUBMITTED, "")),
        )
    if not out:
        raise WorksheetError(
            f"{name} has the worksheet's columns but no student rows (`{PARTICIPANT}<id>` in `{IDENTIFIER}`): "
            "download the grading worksheet again, with all participants shown."
        )
    return out


def userdate(cell: str) -> datetime | None:
    """A worksheet date as Moodle writes it in English (`Thursday, 19 November 2026, 10:14 PM`), without a zone;
    None for `-` (no submission) or anything else."""
    m = _USERDATE.match(cell.strip())
    if not m or m["month"].lower() not in _MONTHS:
        return None
    hour = int(m["hour"]) % 12 + (12 if m["half"].lower() == "pm" else 0)
    try:
        return datetime(int(m["year"]), _MONTHS.index(m["month"].lower()) + 1, int(m["day"]), hour, int(m["minute"]))
    except ValueError:
        return None


class WorksheetError(ValueError):
    """The worksheet cannot be filled: not Moodle's, or its columns say the worksheet route is off."""


@dataclass
class Worksheet:
    """A downloaded grading worksheet, kept byte for byte, with `Grade` and `Feedback comments` to fill."""

    dialect: Dialect
    """The file's own encoding and delimiter, which the filled copy keeps."""
    header: list[str]
    rows: list[RawRow]

    @classmethod
    def parse(cls, data: bytes, name: str) -> Worksheet:
        try:
            text, dialect = read_csv(data)
        except CsvEncodingError as exc:
            raise WorksheetError(f"{name} {exc}") from None
        rows = split_raw(text, dialect.delimiter)
        if not rows:
            raise WorksheetError(f"{name} is empty. Download the grading worksheet again from Moodle.")
        header = [raw_value(f, dialect.delimiter) for f in rows[0].fields]
        missing = [c for c in (IDENTIFIER, GRADE, MODIFIED_GRADE) if c not in header]
        if IDENTIFIER not in header:
            first = [raw_value(r.fields[0], dialect.delimiter) for r in rows[1:] if r.fields]
            foreign = _not_english(name, header, first)
            if foreign:
                raise foreign
            raise WorksheetError(
                f"{name} is not a Moodle grading worksheet (no `{IDENTIFIER}` column). Download it from the "
                "assignment: View all submissions -> Grading action -> Download grading worksheet."
            )
        if missing:
            raise WorksheetError(
                f"{name} has no {', '.join(f'`{c}`' for c in missing)} column. Moodle's importer needs "
                f"`{IDENTIFIER}`, `{GRADE}` and `{MODIFIED_GRADE}`. When the assignment uses an advanced grading "
                "method (a Moodle rubric or marking guide), Moodle switches the grading worksheet off: give "
                "feedback as files instead with `--to moodle-files`, and enter the rubric levels in Moodle."
            )
        if MAXIMUM not in header:
            raise WorksheetError(
                f"{name} has no `{MAXIMUM}` column: the assignment is graded on a scale, which tierflow does not "
                "fill. Give feedback as files with `--to moodle-files`, and choose the scale items in Moodle."
            )
        if FEEDBACK not in header:
            raise WorksheetError(
                f"{name} has no `{FEEDBACK}` column: feedback comments are switched off for this assignment. "
                "Turn on Feedback comments in the assignment's settings and download the worksheet again, or "
                "use `--to moodle-files`."
            )
        for number, row in enumerate(rows[1:], start=2):
            if len(row.fields) != len(header) and any(f.strip() for f in row.fields):
                raise WorksheetError(
                    f"{name}, row {number}: {len(row.fields)} fields where the header has {len(header)}. Moodle "
                    "rejects the whole file for this; download the grading worksheet again."
                )
        return cls(dialect, header, rows)

    def participants(self) -> dict[str, int]:
        """Participant id -> row index (into `rows`)."""
        col = self.header.index(IDENTIFIER)
        out = {}
        for i, row in enumerate(self.rows[1:], start=1):
            if len(row.fields) == len(self.header):
                ident = raw_value(row.fields[col], self.dialect.delimiter)
                if ident.startswith(PARTICIPANT):
                    out[ident[len(PARTICIPANT) :].strip()] = i
        return out

    def value(self, index: int, column: str) -> str:
        return raw_value(self.rows[index].fields[self.header.index(column)], self.dialect.delimiter)

    def fill(self, index: int, grade: str | None, feedback_html: str | None) -> None:
        """Set the row's `Grade` and `Feedback comments`, each unless None; every other cell stays as downloaded."""
        row = self.rows[index]
        if grade is not None:
            row.fields[self.header.index(GRADE)] = fputcsv_field(grade, self.dialect.delimiter)
        if feedback_html is not None:
            row.fields[self.header.index(FEEDBACK)] = fputcsv_field(feedback_html, self.dialect.delimiter)

    def decimal_points(self) -> list[tuple[str, str, str]]:
        """Write every participant's numeric `Grade` with `.` as the decimal point (`64,75` as `64.75`), and return
        (participant id, cell as it was, as written) for each cell changed.

        Moodle's upload reads a grade with PHP's `(float)` after `unformat_float`, which turns only the site's own
        decimal separator into `.`: on a site whose separator is `.` (English), `64,75` (a decimal-comma Excel's)
        would be read as 64 and change a held grade; `.` is read right on every site. A WorksheetError names the
        rows whose Grade is no plain number (`1.064,75`, `B+`), which Moodle would read as another one.
        """
        changed, unclear = [], []
        for sid, index in self.participants().items():
            cell = self.value(index, GRADE).strip()
            if cell in ("", "-"):
                continue
            if not _PLAIN_NUMBER.fullmatch(cell):
                unclear.append(f"{PARTICIPANT}{sid} ({cell})")
            elif "," in cell:
                written = cell.replace(",", ".")
                self.fill(index, written, None)
                changed.append((sid, cell, written))
        if unclear:
            raise WorksheetError(
                f"the `{GRADE}` of {', '.join(unclear)} is not a plain number, which Moodle's upload would read as "
                "another grade (it reads only the leading digits and a `.`: `1.064,75` as 1.064, a letter as 0), "
                "changing it: write it as a number with `.` or `,` as the decimal point and no thousands separator "
                "(`64.75`), or empty it, and export again. Nothing was written."
            )
        return changed

    def render(self) -> bytes:
        return render(self.rows, self.dialect)


# --- feedback files ---------------------------------------------------------------------------------------


def feedback_folder(student_id: str, name: str) -> str:
    """`Full Name_<id>_assignsubmission_file`: the folder Moodle's feedback-zip importer matches to a participant.

    The name part is cleaned as Moodle cleans it, with underscores made spaces (an underscore there would make
    the importer read part of the name as the id), and `Participant` when no name is known.
    """
    cleaned = " ".join(clean_name(name).split()) or BLIND
    return f"{cleaned}_{student_id}_assignsubmission_file"


def feedback_path(student_id: str, name: str, filename: str) -> str:
    return str(PurePosixPath(feedback_folder(student_id, name)) / filename)
