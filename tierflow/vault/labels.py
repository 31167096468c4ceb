"""The labels an assignment's students were given (`Student-07`), kept in the assignment folder as `pseudonyms.csv`.

A label stands for one student in every prompt, in the ledger's subjects, in a batch waiting at the provider, and
in the notes that keep labels (the cohort summary; a classmate the student did not name, in a draft). Numbered
afresh by sorted id on every run, a student whose id sorts first (a late submitter, a re-import with a roster) would
move every later student's label: a batch submitted before the re-import would no longer be found, and a label in
last week's summary would name another student. So each label is written here the first time it is given and read
back ever after; a new student gets the next number, and a student who leaves keeps theirs, never given to another.

A folder without the file gets the labels its cohort had before the file existed (by sorted id, `numbered`), so
its drafts and pending batches keep theirs. Two columns, `student_id` and `label`, UTF-8; tierflow adds rows and
changes none. The file is never sent to a model (it is not a Markdown note, so no flow reads it as one).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tierflow.core.errors import VaultError
from tierflow.vault.notes import write_atomically
from tierflow.vault.pseudonyms import LABEL, numbered

LABELS_FILE = "pseudonyms.csv"
COLUMNS = ("student_id", "label")


class LabelsFileError(VaultError):
    """The kept labels cannot be read or trusted: numbering the students again could give a label to another
    student, so nothing goes ahead."""


def _problem(path: Path, what: str) -> LabelsFileError:
    return LabelsFileError(
        f"{path}: {what}. It keeps the label each student was given (`Student-07`), which drafts, the cohort "
        "summary and batches still at the provider refer to: put it back as tierflow wrote it (from the vault's "
        "history or a backup). Deleting it numbers the students again by sorted id, which may move their labels."
    )


def read_labels(folder: Path) -> dict[str, str]:
    """Each kept label by student id, in the file's order; empty when the folder has no file. A LabelsFileError
    when it cannot be read, or gives one student two labels or one label to two students."""
    path = folder / LABELS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise _problem(path, f"cannot be read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")  # saved again in Excel: ids and labels are ASCII
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    # Saved again in Excel, the file may be separated by `;` or tabs.
    delimiter = next((d for d in ",;\t" if d in lines[0]), ",")
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = [cell.strip().lower() for cell in rows[0]]
    if any(c not in header for c in COLUMNS):
        raise _problem(path, f"has no {' and '.join(f'`{c}`' for c in COLUMNS)} columns (found {rows[0]})")
    at = [header.index(c) for c in COLUMNS]
    out: dict[str, str] = {}
    owner: dict[int, str] = {}
    for row in rows[1:]:
        sid, label = (row[i].strip() if i < len(row) else "" for i in at)
        found = LABEL.fullmatch(label)
        if not sid or found is None:
            raise _problem(path, f"the row {','.join(row)!r} has no student id or no label (Student- and a number)")
        number = int(found.group(1))
        if out.get(sid, label) != label:
            raise _problem(path, f"student {sid} has two labels, {out[sid]} and {label}")
        if owner.get(number, sid) != sid:
            raise _problem(path, f"{label} is given to two students, {owner[number]} and {sid}")
        out[sid], owner[number] = label, sid
    return out


def keep_labels(folder: Path, student_ids: Iterable[str], *, write: bool = True) -> dict[str, str]:
    """Every label the folder has given, by student id: the kept ones, and one for each of `student_ids` that has
    none yet (`numbered`), written to the file before they are returned, and so before any prompt holds them.
    `write=False` (a plan, which writes nothing) gives the same labels without keeping the new ones."""
    with _locked(folder):
        kept = read_labels(folder)
        new = {sid: label for sid, label in numbered(student_ids, kept).items() if sid not in kept}
        if new and write:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows([*kept.items(), *new.items()])
            write_atomically(folder / LABELS_FILE, out.getvalue())
        return {**kept, **new}


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Held by one process at a time (an advisory lock on the folder itself, released when the process ends):
    two runs of one assignment, each reading the file and numbering its own new students, would otherwise give
    one number to two students, and the second write would drop the first's."""
    try:
        import fcntl
    except ImportError:  # Windows has no flock: the write is still atomic, two runs at once are not kept apart
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
