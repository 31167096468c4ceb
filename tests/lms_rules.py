"""The platforms' importers, ported: what Moodle and Canvas do with the files tierflow writes.

Every export test holds tierflow's files to these rules, each cited from the platform's own source.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime

# --- Moodle: lib/csvlib.class.php, mod/assign/feedback/offline/importgradeslib.php and locallib.php -----------

MOODLE_DATE = "%A, %d %B %Y, %I:%M %p"
"""`strftimedatetime` in Moodle's English language pack: how `Last modified (grade)` is written."""


class MoodleRejected(Exception):
    """The whole file is refused (csvlib's `csvweirdcolumns`, importgradeslib's `invalidgradeimport`)."""


def php_fputcsv(row: list[str]) -> str:
    """PHP `fputcsv($fp, $row, ',', '"', '')`: a field is enclosed when it holds the delimiter, the enclosure,
    `\\n`, `\\r`, `\\t` or a space; enclosures are doubled; the line ends with `\\n`."""
    out = []
    for value in row:
        if any(ch in value for ch in ',"\n\r\t '):
            value = '"' + value.replace('"', '""') + '"'
        out.append(value)
    return ",".join(out) + "\n"


def php_float(text: str) -> float:
    """PHP's `(float)` cast: the longest leading number, else 0 (`7,5` -> 7, `B+` -> 0)."""
    m = re.match(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", text)
    return float(m.group(0)) if m else 0.0


def unformat_float(text: str, decsep: str = ".") -> float | None:
    """lib/moodlelib.php `unformat_float`: '' -> null; spaces removed; the locale's decimal separator made '.'."""
    text = text.strip()
    if text == "":
        return None
    return php_float(text.replace(" ", "").replace(decsep, "."))


@dataclass(frozen=True)
class MoodleGrade:
    """What Moodle holds for one participant before the upload: grade and its `timemodified`."""

    grade: float | None
    modified: datetime


def moodle_import_worksheet(
    data: bytes,
    *,
    participants: set[str],
    maximum: float,
    existing: dict[str, MoodleGrade] | None = None,
    encoding: str = "UTF-8",
    separator: str = "comma",
) -> dict[str, dict[str, object]]:
    """Participant id -> what the upload changes (`grade`, `feedback`), as Moodle would import `data` with the
    upload form's (uploadgradesform.php) `encoding` and `separator` (csv_import_reader::get_delimiter_list)."""
    existing = existing or {}
    # csv_import_reader::load_csv_content: to UTF-8, BOM trimmed, \r\n? -> \n, trimmed, then fgetcsv per row.
    text = data.decode(encoding)
    text = text.removeprefix("\ufeff")
    text = re.sub(r"\r\n?", "\n", text).strip()
    delimiter = {"comma": ",", "semicolon": ";", "colon": ":", "tab": "\t"}[separator]
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r]
    if not rows:
        raise MoodleRejected("csvemptyfile")
    header = rows[0]
    if any(len(r) != len(header) for r in rows):  # "this is critical": the whole file is rejected
        raise MoodleRejected("csvweirdcolumns")
    # importgradeslib.php init(): the three columns are required.
    try:
        idindex = header.index("Identifier")
        gradeindex = header.index("Grade")
        modifiedindex = header.index("Last modified (grade)")
    except ValueError:
        raise MoodleRejected("invalidgradeimport") from None
    feedbackindex = header.index("Feedback comments") if "Feedback comments" in header else None
    out: dict[str, dict[str, object]] = {}
    for record in rows[1:]:
        # next(): strip `get_string('hiddenuser', 'assign')` ("Participant ") off the identifier.
        uid = record[idindex][len("Participant ") :]
        if uid not in participants:
            continue
        grade = unformat_float(record[gradeindex])
        try:
            modified = datetime.strptime(record[modifiedindex], MOODLE_DATE).replace(tzinfo=UTC).timestamp()
        except ValueError:
            modified = 0.0  # strtotime('-') is false
        usergrade = existing.get(uid)
        stale = usergrade is not None and usergrade.modified.timestamp() > modified + 60
        changes: dict[str, object] = {}
        # locallib.php process_import_grades(): the skip rules, in Moodle's order.
        skip = (
            (usergrade is not None and usergrade.grade == grade)
            or grade is None
            or grade < 0
            or stale
            or grade > maximum
        )
        if not skip:
            changes["grade"] = grade
        if not stale and feedbackindex:  # `!empty($details['index'])`
            changes["feedback"] = record[feedbackindex]
        out[uid] = changes
    return out


def moodle_feedback_zip_matches(data: bytes, participants: set[str]) -> dict[str, list[str]]:
    """mod/assign/feedback/file/importziplib.php `is_valid_filename_for_import`: participant id -> file names."""
    out: dict[str, list[str]] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            base = info.filename.rsplit("/", 1)[-1]
            if base.startswith((".", "~")):
                continue
            parts = info.filename.split("/")
            while parts:
                info_parts = parts.pop(0).split("_", 4)
                if len(info_parts) < 4:
                    continue
                pid = info_parts[1]
                if not re.fullmatch(r"\s*[+-]?\d+(?:\.\d+)?", pid):  # is_numeric
                    continue
                pid = str(int(float(pid)))
                if pid not in participants or (info_parts[2], info_parts[3]) != ("assignsubmission", "file"):
                    continue
                rest = [info_parts[4] if len(info_parts) == 5 else "", *parts]
                out.setdefault(pid, []).append("/".join(rest).strip("/"))
                break
    return out


# --- Canvas: app/models/gradebook_importer.rb and Assignment.title_and_id --------------------------------------

TITLE_AND_ID = re.compile(r"\A(.*)\s\((\d+)\)\Z", re.S)


class CanvasRejected(Exception):
    pass


def canvas_delimiter(text: str) -> str:
    """`identify_delimiter`: `;` when the first three lines each split into the same number of fields by it, more
    than by `,` (a line that does not parse counts as no agreement); else `,`. No other delimiter is tried."""
    lines = text.splitlines(keepends=True)[:3]
    counts = {}
    for separator in (";", ","):
        counts[separator] = 0
        try:
            sizes = {len(next(csv.reader([line], delimiter=separator, strict=True), [])) for line in lines}
        except csv.Error:  # Ruby's CSV::MalformedCSVError
            continue
        if len(sizes) == 1:
            counts[separator] = sizes.pop()
    return ";" if counts[";"] > counts[","] else ","


def canvas_import_gradebook(data: bytes, assignments: dict[str, str]) -> dict[str, object]:
    """What Canvas's gradebook importer reads from `data`: assignments found by `Title (id)`, points possible,
    and each student's grades by user id. `assignments` is Canvas's own id -> title; a header naming an unknown id
    or a changed title with no id creates a new assignment (reported under `new_assignments`). Both of the
    exporter's layouts are read: `Student, ID` and, with first and last names shown apart, `LastName, FirstName,
    ID` (`allow_student_last_first_names?` on)."""
    text = data.decode("utf-8").removeprefix("\ufeff")
    separator = canvas_delimiter(text)  # csv_stream
    rows = [
        r
        for r in csv.reader(io.StringIO(text), delimiter=separator)
        if r and not re.fullmatch(r"[;, ]+", separator.join(r))
    ]
    header = rows[0]
    # header?: row_has_student_headers?, then update_column_count, and the last student column includes "Section".
    if not (
        (len(header) > 3 and "Student" in header[0] and "ID" in header[1])
        or (len(header) > 4 and "LastName" in header[0] and "FirstName" in header[1] and "ID" in header[2])
    ):
        raise CanvasRejected("Invalid header row")
    first_last = header[0] == "LastName" and header[1] == "FirstName"
    names = 4 if first_last else 3  # the name(s), the user id, the section
    student_columns = names

    def cell(i: int) -> str:  # Ruby's row[i]: nil past the end
        return header[i] if i < len(header) else ""

    if re.search(r"SIS\s+Login\s+ID", cell(names - 1)):
        student_columns += 1
    elif re.search(r"SIS\s+User\s+ID", cell(names - 1)) and re.search(r"SIS\s+Login\s+ID", cell(names)):
        student_columns += 2 + (1 if re.search(r"Integration\s+ID", cell(names + 1)) else 0)
    if "Section" not in cell(student_columns - 1):
        raise CanvasRejected("Invalid header row")
    non_assignment = re.compile(
        "Current Score|Current Points|Current Grade|Final Score|Final Points|Final Grade|Override Score|"
        "Override Grade|Override Status"
    )
    columns = {}
    new = []
    for index, name in enumerate(header):
        if index < student_columns or non_assignment.search(name):
            continue
        m = TITLE_AND_ID.match(name)
        if m and m.group(2) in assignments:
            columns[m.group(2)] = index
        elif name in assignments.values():  # backward compat: by title alone
            columns[next(k for k, v in assignments.items() if v == name)] = index
        else:
            new.append(name)
    points: dict[str, str] = {}
    grades: dict[str, dict[str, str]] = {}
    for row in rows[1:]:
        if "Points Possible" in row[0]:
            points = {aid: row[i] for aid, i in columns.items()}
            continue
        if all(re.fullmatch(r"\s*(Muted|Manual Posting.*)?\s*", c, re.I) for c in row):
            continue
        grades[row[2] if first_last else row[1]] = {aid: row[i].strip() for aid, i in columns.items()}
    return {"points": points, "grades": grades, "new_assignments": new, "columns": columns}
