"""Reviewed drafts out to the platform's own import files, written beside the lecturer's download, never into it,
and never over an earlier export (which the lecturer may have edited or uploaded): a second export is dated,
`worksheet (tierflow 2026-11-20).csv`, as a vault note written beside the lecturer's is.

- `moodle-worksheet`: a filled copy of the grading worksheet (`Grade`, `Feedback comments` only; every row's
  decimal-comma `Grade` written with `.`, which is all Moodle's upload reads: `moodle.Worksheet.decimal_points`).
- `moodle-files`: a zip for "Upload multiple feedback files in a zip", one document per student in
  `Full Name_<participant id>_assignsubmission_file/`.
- `canvas`: a filled copy of the gradebook CSV (the assignment's column only), and a zip for "Re-upload
  submissions", one document per student named as the student's file was downloaded.

What is already in the downloaded file stays, unless `replace_existing`: a student whose worksheet row holds a
Grade or Feedback comments, or whose gradebook cell holds a score or `EX` (excused), other than this export's, is
left as downloaded and named (both platforms' importers apply any changed value: a second marker's comments or a
moderated grade would be overwritten, and a number over `EX` un-excuses the student). A reviewed draft written for
an earlier version of the submission (`tierflow.lms.drafts`), or holding nothing for the student (a submission with
no text), is not sent.
"""

from __future__ import annotations

import html
import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from pathlib import Path, PurePosixPath

import frontmatter
import yaml

from tierflow.core import clock
from tierflow.core.commands import tierflow_command
from tierflow.core.errors import TierflowError
from tierflow.lms import canvas, files, moodle
from tierflow.lms.cells import Dialect
from tierflow.lms.drafts import Draft, Drafts, collect, who
from tierflow.lms.marks import (
    Mark,
    OnPlatform,
    conversion,
    distribution,
    mark_of,
    marking,
    number,
    off_scale,
    on_platform,
    scale_of,
    scaled,
    scaled_warning,
)
from tierflow.lms.notices import split_notices
from tierflow.vault.rubric import load_rubric
from tierflow.vault.text import load_note, note_text, text_version, unescape_links, yaml_problem

TARGETS = ("moodle-worksheet", "moodle-files", "canvas")


class ExportFeedbackError(TierflowError):
    """The export cannot be written; the message names the file and what to do."""


@dataclass
class ExportResult:
    target: str
    written: list[Path] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    """Student ids whose feedback (and mark, where the target takes one) went into the files."""
    left_out: list[tuple[str, str]] = field(default_factory=list)
    untouched: list[tuple[str, str]] = field(default_factory=list)
    """(student id, why) for students of the worksheet or gradebook with a submission note but no draft at all."""
    no_submission: list[str] = field(default_factory=list)
    """Students of the worksheet or gradebook with no submission note in the vault."""
    kept_existing: list[tuple[str, str]] = field(default_factory=list)
    """(student, what the downloaded file holds) for students whose grade or feedback there is left as it is."""
    notes: list[str] = field(default_factory=list)
    distribution: list[str] = field(default_factory=list)
    marks: dict[str, Decimal] = field(default_factory=dict)
    conversions: dict[str, str] = field(default_factory=dict)
    """By student id: how the mark sent became the platform's grade, in full (`15 (yours, of 100 on the rubric) ->
    3.00 of 20`)."""
    drafts: Drafts | None = None


def beside(download: Path, suffix: str) -> Path:
    """`worksheet (tierflow).csv` next to `worksheet.csv`: a new file, never the lecturer's own."""
    return download.with_name(f"{download.stem} (tierflow){suffix}")


def _dated(path: Path, today: date) -> Iterator[Path]:
    """`path`, then ` (tierflow <date>)`, ` (tierflow <date> 2)`, ... beside it (as `NoteWriter` dates a sibling)."""
    yield path
    stem = path.stem.removesuffix(" (tierflow)")
    for n in range(1, 100):
        yield path.with_name(f"{stem} (tierflow {today.isoformat()}{f' {n}' if n > 1 else ''}){path.suffix}")


def _unused(path: Path, today: date, result: ExportResult, companion: str = "") -> Path:
    """The first of `_dated(path)` that exists neither itself nor with its `companion` file (`<stem><companion>`,
    the canvas comments zip); said in a note when it is not `path`."""
    for candidate in _dated(path, today):
        pair = candidate.with_name(f"{candidate.stem}{companion}") if companion else None
        if not candidate.exists() and not (pair and pair.exists()):
            break
    else:
        raise ExportFeedbackError(f"{path} and 99 dated files beside it exist; give another --out")
    if candidate != path:
        taken = path if path.exists() else path.with_name(f"{path.stem}{companion}")
        result.notes.append(
            f"{taken} exists (an earlier export, which you may have edited or uploaded) and is left as it is: this "
            f"export goes to {candidate}"
        )
    return candidate


def _guard(out: Path, *downloads: Path | None) -> None:
    for d in downloads:
        if d is not None and out.resolve() == d.resolve():
            raise ExportFeedbackError(
                f"--out {out} is the file you downloaded; tierflow never writes into it. Give another path, or "
                "leave --out out to write beside it."
            )


class UnreadableNote(ExportFeedbackError):
    """A student's submission note cannot be read; the message says why and what to fix."""


def _submission(vault: Path, folder: str, sid: str) -> frontmatter.Post | None:
    """The student's submission note, None when there is none; an `UnreadableNote` when it cannot be read."""
    path = vault / folder / "submissions" / f"{sid}.md"
    if not path.is_file():
        return None
    rel = path.relative_to(vault).as_posix()
    try:
        return load_note(path)
    except UnicodeDecodeError:
        raise UnreadableNote(
            f"its submission note is not UTF-8 text ({rel}); save it as UTF-8 and export again"
        ) from None
    except yaml.YAMLError as exc:
        raise UnreadableNote(
            f"malformed YAML front-matter in its submission note ({rel}: {yaml_problem(exc)}); "
            'fix the YAML between the --- lines (a value holding ": " needs quotes: name: "Ben: Carter") and '
            "export again"
        ) from None


def _name(note: frontmatter.Post | None) -> str:
    """The student's name as their submission note holds it, link marks the import wrote as shown text (`Jane
    [&#91;X]]`) the characters again; "" without a note."""
    return unescape_links(str(note.metadata.get("name") or "")) if note else ""


def _title(draft: Draft, note: frontmatter.Post | None) -> str:
    name = _name(note) or draft.name
    return f"Feedback: {name}" if name else "Feedback"


def export_feedback(
    vault: Path,
    folder: str,
    target: str,
    *,
    out: Path | None = None,
    worksheet: Path | None = None,
    gradebook: Path | None = None,
    column: str | None = None,
    decimals: int = 2,
    fmt: str = ".docx",
    dry_run: bool = False,
    today: date | None = None,
    replace_existing: bool = False,
) -> ExportResult:
    """Write the reviewed drafts of `folder` for `target` (see the module docstring); `today` dates a second
    export's file names; `replace_existing` overwrites the grades and feedback the downloaded file already holds."""
    vault = vault.resolve()
    today = today or clock.now().date()  # tierflow's clock (UTC), which tests set; the CLI gives the vault's day
    drafts = collect(vault, folder, version_of=lambda sid: _version(vault, folder, sid))
    result = ExportResult(target, drafts=drafts, left_out=list(drafts.left_out))
    if target in TARGETS:
        drafts = _of_platform(vault, folder, drafts, "canvas" if target == "canvas" else "moodle", result)
        _unversioned(vault, drafts, folder, result)
    if target == "moodle-worksheet":
        _moodle_worksheet(vault, folder, drafts, result, worksheet, out, decimals, dry_run, today, replace_existing)
    elif target == "moodle-files":
        _moodle_files(vault, folder, drafts, result, out, fmt, dry_run, today)
    elif target == "canvas":
        _canvas(vault, folder, drafts, result, gradebook, out, column, decimals, dry_run, today, replace_existing)
    else:
        raise ExportFeedbackError(f"unknown target {target!r}; give one of {', '.join(TARGETS)}")
    return result


def _of_platform(vault: Path, folder: str, drafts: Drafts, platform: str, result: ExportResult) -> Drafts:
    """The reviewed drafts whose submission came from `platform` (or says no platform: a note written by hand), and
    can be read: a draft whose submission note cannot be read is left out, with the reason.

    Both platforms' ids are all digits: a Canvas user id sent to Moodle, or a Moodle participant id to Canvas,
    would give the feedback and mark to whichever student has that id there.
    """
    keep = {}
    for sid, draft in drafts.reviewed.items():
        try:
            note = _submission(vault, folder, sid)
        except UnreadableNote as exc:
            # Its platform cannot be checked: neither its feedback nor its mark goes, the others do.
            result.left_out.append((draft.path, str(exc)))
            continue
        came = str(note.metadata.get("platform") or "").strip().lower() if note else ""
        if came in ("", platform):
            # A mark the lecturer set (`mark: 0` for work never handed in) is theirs to send, feedback or none.
            if draft.student_text() or draft.own_mark:
                keep[sid] = draft
            else:
                result.left_out.append((draft.path, _no_text(draft, note, folder)))
            continue
        targets = "--to canvas" if came == "canvas" else "--to moodle-worksheet or --to moodle-files"
        result.left_out.append(
            (
                draft.path,
                f"imported from {came}, not {platform} ({folder}/submissions/{sid}.md has `platform: {came}`); "
                f"{sid} is no {platform.capitalize()} id for this student, and {platform.capitalize()} would give "
                f"the feedback to whoever has that id there. Export it with {targets}, or import this assignment's "
                f"{platform.capitalize()} download into {folder}.",
            )
        )
    return replace(drafts, reviewed=keep)


def _version(vault: Path, folder: str, sid: str) -> str | None:
    """The version of the student's submission now; None when there is no note, or it cannot be read (then the
    draft is left out for that, by `_of_platform`)."""
    try:
        note = _submission(vault, folder, sid)
    except UnreadableNote:
        return None
    return text_version(note_text(note.content)) if note is not None else None


def _unversioned(vault: Path, drafts: Drafts, folder: str, result: ExportResult) -> None:
    """Said once: the reviewed drafts to be sent that record no version of the submission, taken as current."""
    old = sorted(d.path for d in drafts.unversioned if drafts.reviewed.get(d.student_id) is d)
    if old:
        again = tierflow_command("run", "student-feedback", "--assignment", folder, "--redraft-all", vault=vault)
        result.notes.append(
            f"{len(old)} reviewed draft(s) record no version of the submission they were written for (drafted before "
            f"tierflow recorded it), so each is taken as written for the submission as it is now: {', '.join(old)}. "
            f"If a student has resubmitted since, draft again (`{again}`, or move that draft out of feedback/ and "
            "run it) and review the new draft."
        )


def _no_text(draft: Draft, note: frontmatter.Post | None, folder: str) -> str:
    """Why a reviewed draft with nothing for the student (tierflow's notice on a submission with no text, or
    comments alone) is not sent: its mark neither, since no feedback backs it."""
    # The import's notice of hidden text is the lecturer's: a file that hid all it held gave no text to mark.
    if note is not None and not note_text(split_notices(note.content)[0]).strip():
        files = []
        for entry in note.metadata.get("tierflow_unreadable") or []:
            # The import's reason cut to its first clause: the import said the whole of it, with what to do.
            name, _, why = unescape_links(str(entry)).partition(": ")
            files.append(f"{name}: {re.split(r'[;:(]', why)[0].strip()}")
        because = f" ({'; '.join(files)})" if files else ""
        return (
            f"no feedback to send: no text was read; {who(draft)}: {folder}/submissions/{draft.student_id}.md has no "
            f"text{because}, so the draft holds only tierflow's notice to you, and nothing (no mark either) is sent. "
            "Check whether the work was submitted elsewhere; feedback you write in the draft is sent, and so is a "
            "`mark:` you set in its front-matter (`mark: 0` too)."
        )
    return (
        f"no feedback to send: the draft holds nothing for the student; {who(draft)}: only tierflow's notices and "
        "comments, which are never sent. Write the feedback in it to send it and its mark, or set `mark:` in its "
        "front-matter to send a mark alone."
    )


def _written(draft: Draft, mark: Mark) -> str:
    """The mark as the lecturer sees it in the draft: `` `mark: 21/20` in <path> `` or the criteria's."""
    what = f"`mark: {mark.written}`" if mark.written else "the mark from its criteria"
    return f"{what} in {draft.path}"


def _bounded(draft: Draft, mark: Mark, found: OnPlatform, maximum_is: str) -> str:
    """The note on a grade that is not the mark as rounded: a mark below 0 sent as 0, or one within the maximum that
    rounding to `--decimals` would carry past it (20.5 of 20.5 at 0 places), sent as the highest within it.
    `maximum_is` names the maximum (`the worksheet's Maximum Grade`). Empty when the grade is the mark rounded."""
    if found.grade is None or not found.clamped or found.outside == "above":
        return ""
    if found.outside == "below":
        return (
            f"{who(draft)}: {_written(draft, mark)} is below 0, so 0 is sent. If it is a slip, correct it there and "
            "export again"
        )
    own = f"; `--decimals {found.places}` sends marks to the maximum's own places" if found.places <= 4 else ""
    return f"{who(draft)}: {_written(draft, mark)}: {found.said()} ({maximum_is}){own}"


def _above_moodle(draft: Draft, mark: Mark, found: OnPlatform, maximum_is: str) -> str:
    """Why a mark outside 0 and the Maximum Grade gets no grade: Moodle's worksheet upload skips it."""
    top = found.top
    side = f"above {maximum_is} ({top})" if found.outside == "above" else "below 0"
    by_hand = (
        "; a grade above the maximum can only be entered in Moodle's gradebook by hand, where the site allows it "
        "(Site administration > Grades > General settings > Unlimited grades)"
        if found.outside == "above"
        else ""
    )
    return (
        f"{who(draft)}: {_written(draft, mark)} is {side}, which Moodle's Upload grading worksheet skips without a "
        f"word (the student would keep the grade Moodle holds), so no grade is sent and the Grade cell is left as it "
        f"was. Write a mark from 0 to {top} there and export again{by_hand}"
    )


def _extra_credit(draft: Draft, mark: Mark, found: OnPlatform) -> str:
    """The note on a mark above Canvas's points possible, sent as it is: Canvas takes it as extra credit."""
    top = found.top
    return (
        f"{who(draft)}: {_written(draft, mark)} is above the {top} points possible, and is sent as "
        f"{number(found.rounded)}: Canvas's Grades -> Import takes a score above points possible (extra credit, "
        f"{number(found.rounded - Decimal(str(top)))} over). If it is a slip, correct it there and export again"
    )


def _mark_alone(draft: Draft) -> str:
    """Why a reviewed draft that holds a mark and no feedback for the student (`_of_platform` keeps it) sends its
    mark alone; empty for a draft with feedback."""
    if draft.student_text():
        return ""
    return (
        f"`mark: {draft.metadata.get('mark')}` sent alone: the draft holds no feedback for the student (only "
        "tierflow's notices and comments)"
    )


def _marks(vault: Path, folder: str, drafts: Drafts, result: ExportResult):  # noqa: ANN202
    """The rubric and each reviewed draft's mark; an ExportFeedbackError, before anything is written, when the
    rubric's marks can be read two ways."""
    rubric = load_rubric(vault, f"{folder}/rubric.md")
    how = marking(rubric)
    if how.problem:
        raise ExportFeedbackError(
            f"{rubric.path}: no marks can be worked out from it, so none are exported: {how.problem} "
            f"Check the reading with `{tierflow_command('rubric', 'show', '--assignment', folder, vault=vault)}`."
        )
    result.notes += [f"{rubric.path}: {warning}" for warning in (*rubric.warnings, *how.warnings)]
    result.notes.append(f"marks: {how.how}")
    return rubric, {sid: mark_of(rubric, d) for sid, d in drafts.reviewed.items()}


class _Sent:
    """The marks an export sends, each with how it was converted; and the lecturer's bare `mark:`s that were scaled
    to another maximum, to be warned about once (`scaled_warning`)."""

    def __init__(self, result: ExportResult) -> None:
        self.result = result
        self.scaled: list[tuple[Mark, Decimal, float, str]] = []

    def add(self, draft: Draft, mark: Mark, grade: Decimal, maximum: float, found: OnPlatform) -> None:
        self.result.marks[draft.student_id] = grade
        self.result.conversions[draft.student_id] = conversion(mark, grade, maximum, found.said(grade))
        if scaled(mark, maximum):
            self.scaled.append((mark, grade, maximum, f"{who(draft)} ({draft.path})"))

    def warn(self) -> None:
        if self.scaled:
            mark, grade, maximum, _ = self.scaled[0]
            self.result.notes.append(scaled_warning(mark, grade, maximum, [whom for *_, whom in self.scaled]))


def _moodle_worksheet(  # noqa: ANN001
    vault, folder, drafts, result, worksheet, out, decimals, dry_run, today, replace_existing
) -> None:
    if worksheet is None:
        raise ExportFeedbackError(
            "give the grading worksheet you downloaded from Moodle: --worksheet W.csv (assignment -> View all "
            "submissions -> Grading action -> Download grading worksheet). If Moodle offers no worksheet, the "
            "assignment uses an advanced grading method (a Moodle rubric or marking guide), which switches the "
            "worksheet off: export feedback files with --to moodle-files instead."
        )
    try:
        sheet = moodle.Worksheet.parse(worksheet.read_bytes(), str(worksheet))
    except OSError as exc:
        raise ExportFeedbackError(f"{worksheet}: cannot be read ({exc.strerror})") from None
    except moodle.WorksheetError as exc:
        raise ExportFeedbackError(str(exc)) from None
    out = out or beside(worksheet, ".csv")
    _guard(out, worksheet)
    out = _unused(out, today, result)
    rubric, marks = _marks(vault, folder, drafts, result)
    rows = sheet.participants()
    values = []
    sent = _Sent(result)
    for sid, draft in sorted(drafts.reviewed.items()):
        index = rows.get(sid)
        if index is None:
            result.left_out.append((draft.path, f"no row `Participant {sid}` in {worksheet.name}"))
            continue
        try:
            maximum = float(sheet.value(index, moodle.MAXIMUM).replace(",", "."))
        except ValueError:
            maximum = 0.0
        mark = marks[sid]
        found = on_platform(mark, maximum, decimals) if maximum > 0 else OnPlatform(None)
        maximum_is = f"{worksheet.name}'s Maximum Grade"
        # Moodle's upload skips a grade above the maximum or below 0 (locallib.php process_import_grades): none goes.
        grade = None if found.outside else found.grade
        alone = _mark_alone(draft)
        feedback = None if alone else draft.html()  # a mark alone leaves the Feedback comments cell as it was
        held = _held_moodle(sheet, index, grade, feedback)
        if held and not replace_existing:
            result.kept_existing.append((who(draft), held))
            continue
        if grade is None:
            if found.outside:
                outside = _above_moodle(draft, mark, found, maximum_is)
                if alone:
                    result.left_out.append((draft.path, f"no feedback to send and no grade; {outside}"))
                    continue
                result.notes.append(f"{outside}. Its feedback is sent")
                sheet.fill(index, None, feedback)
                result.sent.append(sid)
                continue
            refused = off_scale(mark, maximum, draft.path, maximum_is) if maximum > 0 else ""
            why = refused or "; ".join(mark.problems) or f"no usable Maximum Grade in {worksheet.name}"
            if alone:
                result.left_out.append((draft.path, f"no feedback to send and no grade ({why}); {who(draft)}"))
                continue
            result.notes.append(
                f"{who(draft)}: feedback sent without a grade ({why}); the Grade cell is left as it was"
            )
            sheet.fill(index, None, feedback)
        else:
            if bounded := _bounded(draft, mark, found, maximum_is):
                result.notes.append(bounded)
            if alone:
                result.notes.append(f"{who(draft)}: {alone}; the Feedback comments cell is left as it was")
            values.append(grade)
            sent.add(draft, mark, grade, maximum, found)
            sheet.fill(index, number(grade), feedback)
        result.sent.append(sid)
    try:
        points = sheet.decimal_points()
    except moodle.WorksheetError as exc:
        raise ExportFeedbackError(f"{worksheet.name}: {exc}") from None
    if points:
        result.notes.append(
            "Grade cells written with `.` as the decimal point, so Moodle's upload reads each grade as it stands "
            "(it would read `64,75` as 64, changing a held grade): "
            + ", ".join(f"{sid} ({cell} as {written})" for sid, cell, written in points)
        )
    _without_drafts(vault, folder, drafts, rows, result)
    result.distribution = distribution(values, _sheet_max(sheet))
    result.notes.append(
        f"marks on the rubric's scale (out of {float(scale_of(rubric)):g}: from the criteria, or a bare `mark:`) "
        "scaled to each row's Maximum Grade, and a `mark:` written out of it (`mark: 15/20`) sent as written, "
        f"rounded half up to {decimals} decimal places. Upload promptly: Moodle skips a row whose grade changed in "
        "Moodle more than 60 s after the worksheet's `Last modified (grade)`."
    )
    sent.warn()
    if _resaved(sheet.dialect):
        result.notes.append(
            f"{worksheet.name} was saved again after download ({sheet.dialect.described}); the filled copy is "
            "written the same way: choose that encoding and separator in Moodle's Upload grading worksheet form."
        )
    if not dry_run:
        _write(out, sheet.render())
        result.written.append(out)


def _held_moodle(sheet: moodle.Worksheet, index: int, grade: Decimal | None, feedback: str | None) -> str:
    """What the row's Grade and Feedback comments already hold, where it is not what this export would write (a
    second marker's comments, a moderated grade); empty when the row is free to fill. `feedback` None: the
    comments are not written, so whatever they hold stays."""
    held = []
    existing = sheet.value(index, moodle.GRADE).strip()
    if existing not in ("", "-") and not _same_number(existing, grade):
        held.append(f"Grade {existing}")
    comments = sheet.value(index, moodle.FEEDBACK)
    # Compared as Moodle shows them: an export in an encoding without 王 wrote it `&#29579;` (`Dialect.encode`).
    if feedback is not None and _plain(comments) and html.unescape(comments.strip()) != html.unescape(feedback):
        held.append(f"Feedback comments {_plain(comments, 80)!r}")
    return ", ".join(held)


def _same_number(cell: str, value: Decimal | None) -> bool:
    try:
        return value is not None and Decimal(cell.replace(",", ".")) == value
    except ArithmeticError:  # decimal.InvalidOperation: `EX`, a letter grade
        return False


def _plain(cell: str, limit: int = 0) -> str:
    """An HTML cell's text on one line (Moodle's editor leaves `<p><br></p>` in an emptied box): what is in it."""
    text = " ".join(html.unescape(re.sub(r"<[^>]*>", " ", cell)).split())
    return text[: limit - 3] + "..." if limit and len(text) > limit else text


def _without_drafts(vault: Path, folder: str, drafts: Drafts, rows: dict[str, int], result: ExportResult) -> None:
    """The file's students that no draft speaks for: their rows are never filled, so they stay as downloaded."""
    for sid in sorted(rows):
        if sid in drafts.students:
            continue  # sent, or its draft is listed among the left-out ones
        if (vault / folder / "submissions" / f"{sid}.md").is_file():
            result.untouched.append(
                (
                    sid,
                    f"no feedback draft (no note with `student_id: {sid}` under feedback/: deleted, or its drafting "
                    "failed; see the run report); its row is left as it was",
                )
            )
        else:
            result.no_submission.append(sid)


def _resaved(dialect: Dialect) -> bool:
    """True when a worksheet or gradebook is no longer as the platform wrote it (UTF-8, comma-separated)."""
    return (dialect.encoding, dialect.delimiter) != ("utf-8", ",")


def _sheet_max(sheet: moodle.Worksheet) -> float:
    found = []
    for index in sheet.participants().values():
        try:
            found.append(float(sheet.value(index, moodle.MAXIMUM).replace(",", ".")))
        except ValueError:
            continue
    return max(found, default=100.0)


def _moodle_files(vault, folder, drafts, result, out, fmt, dry_run, today) -> None:  # noqa: ANN001
    if fmt not in (".docx", ".pdf"):
        raise ExportFeedbackError(f"Moodle feedback files are written as .docx or .pdf, not {fmt}")
    entries = []
    for sid, draft in sorted(drafts.reviewed.items()):
        note = _submission(vault, folder, sid)
        if not sid.isdigit():
            result.left_out.append((draft.path, f"student id {sid} is not a Moodle participant id"))
            continue
        if _mark_alone(draft):
            result.left_out.append(
                (
                    draft.path,
                    f"no feedback file to send, only `mark: {draft.metadata.get('mark')}`, and this zip holds no "
                    "grades: send the mark with --to moodle-worksheet",
                )
            )
            continue
        title, markdown = _title(draft, note), draft.student_markdown()
        try:
            entries.append(
                (moodle.feedback_path(sid, _name(note), f"feedback{fmt}"), files.render(fmt, title, markdown))
            )
        except files.Undrawable as exc:
            # Moodle keeps the file's own name, so a .docx (whose text the reader's fonts draw) can stand in.
            entries.append(
                (moodle.feedback_path(sid, _name(note), "feedback.docx"), files.render(".docx", title, markdown))
            )
            result.notes.append(
                f"{who(draft)}: feedback.docx, not {fmt}: {exc}, which a {fmt} file would lose; Word and "
                "LibreOffice draw them with the student's own fonts"
            )
        result.sent.append(sid)
    if not entries:  # an empty zip to upload would send nobody anything, and say nothing of it
        result.notes.append("no feedback file to send (see above), so no zip was written")
        return
    out = _unused(out or Path.cwd() / f"{PurePosixPath(folder).name} feedback files.zip", today, result)
    result.notes.append(
        "In Moodle: View all submissions -> Grading action -> Upload multiple feedback files in a zip. Grades are "
        "not in this zip: enter them in Moodle (with an advanced grading method, on its grading form)."
    )
    if not dry_run:
        _write_zip(out, entries)
        result.written.append(out)


def _canvas(  # noqa: ANN001
    vault, folder, drafts, result, gradebook, out, column, decimals, dry_run, today, replace_existing
) -> None:
    sheet = None
    held: set[str] = set()
    if gradebook is not None:
        try:
            sheet = canvas.Gradebook.parse(gradebook.read_bytes(), str(gradebook))
            col = sheet.column(column)
        except OSError as exc:
            raise ExportFeedbackError(f"{gradebook}: cannot be read ({exc.strerror})") from None
        except canvas.GradebookError as exc:
            raise ExportFeedbackError(str(exc)) from None
        points = sheet.points_possible(col)
        if not points:
            raise ExportFeedbackError(
                f"{gradebook.name}: no `Points Possible` for {sheet.header[col]}; export the gradebook again"
            )
        rubric, marks = _marks(vault, folder, drafts, result)
        students = sheet.students()
        values = []
        extra: list[str] = []
        sent = _Sent(result)
        for sid, draft in sorted(drafts.reviewed.items()):
            index = students.get(sid)
            if index is None:
                result.left_out.append((draft.path, f"no row with ID {sid} in {gradebook.name}"))
                continue
            found = on_platform(marks[sid], points, decimals)
            # Canvas's gradebook import takes a score above points possible (extra credit): it is sent as rounded.
            grade = found.rounded if found.outside == "above" else found.grade
            existing = sheet.value(index, col).strip()
            if existing and not _same_number(existing, grade) and not replace_existing:
                # Its comment stays out of the re-upload zip too: it would speak for a mark the student never gets.
                held.add(sid)
                excused = existing.upper() == "EX"
                held_what = "EX (excused): a mark would un-excuse the student" if excused else f"score {existing}"
                result.kept_existing.append((who(draft), held_what))
                continue
            if grade is None:
                maximum_is = f"{gradebook.name}'s Points Possible for {sheet.header[col]}"
                why = off_scale(marks[sid], points, draft.path, maximum_is) or "; ".join(marks[sid].problems)
                result.notes.append(f"{who(draft)}: no mark ({why}); cell left as it was")
                continue
            if found.outside == "above":
                result.notes.append(_extra_credit(draft, marks[sid], found))
            elif bounded := _bounded(draft, marks[sid], found, f"the points possible for {sheet.header[col]}"):
                result.notes.append(bounded)
            if alone := _mark_alone(draft):
                result.notes.append(f"{who(draft)}: {alone}; no comment is uploaded")
            sheet.fill(index, col, number(grade))
            values.append(grade)
            sent.add(draft, marks[sid], grade, points, found)
            result.sent.append(sid)
            if found.outside == "above":
                extra.append(sid)
        _without_drafts(vault, folder, drafts, students, result)
        result.distribution = distribution(values, points)
        if sheet.dialect != sheet.downloaded:
            result.notes.append(
                f"{gradebook.name} was saved again after export ({sheet.downloaded.described}); Canvas's Grades -> "
                f"Import reads only `,`- or `;`-separated files, so the filled copy is written `,`-separated "
                f"({sheet.dialect.described})."
            )
        elif _resaved(sheet.dialect):
            result.notes.append(
                f"{gradebook.name} was saved again after export ({sheet.dialect.described}); the filled copy is "
                "written the same way."
            )
        result.notes.append(
            f"marks on the rubric's scale (out of {float(scale_of(rubric)):g}: from the criteria, or a bare `mark:`) "
            f"scaled to {points:g} points, and a `mark:` written out of {points:g} (`mark: 15/{points:g}`) sent as "
            f"written, rounded half up to {decimals} decimal places; only the column {sheet.header[col]!r} changed. "
            + (
                f"{len(extra)} mark(s) above the {points:g} points possible sent as written, which Canvas keeps as "
                f"extra credit: {', '.join(extra)}. "
                if extra
                else ""
            )
            + "In Canvas: Grades -> Import."
        )
        sent.warn()
    entries: list[tuple[str, bytes]] = []
    commented: list[str] = []
    for sid, draft in sorted(drafts.reviewed.items()):
        if sid in held:
            continue
        if _mark_alone(draft):  # no comment to upload: its mark goes in the gradebook CSV alone
            if sheet is None:
                result.left_out.append(
                    (
                        draft.path,
                        f"no feedback to send, only `mark: {draft.metadata.get('mark')}`, and a mark goes only in the "
                        "gradebook CSV: give the gradebook you downloaded from Canvas with --gradebook",
                    )
                )
            continue
        note = _submission(vault, folder, sid)
        # The names as Canvas gave them (link marks the import wrote as shown text are the characters again).
        given = (note.metadata.get("downloaded_as") or []) if note else []
        downloaded = [PurePosixPath(unescape_links(str(d))).name for d in given]
        attached = [d for d in downloaded if (p := canvas.parse_name(d)) and not p.text_entry]
        usable = [d for d in attached if PurePosixPath(d).suffix.lower() in files.WRITABLE]
        if not usable:
            result.notes.append(f"{sid}: comment not in the re-upload zip: {_why_not_reuploaded(downloaded, attached)}")
            continue
        entry = _comment_file(usable, _title(draft, note), draft.student_markdown())
        if isinstance(entry, str):
            result.notes.append(f"{sid}: comment not in the re-upload zip: {entry}")
            continue
        entries.append(entry)
        commented.append(sid)
    if sheet is None:
        result.sent += commented
    if sheet is None and not entries:  # said, or the command ends as if it had written something
        result.notes.append("no comment to send (see above) and no --gradebook, so nothing was written")
        return
    base = out or (beside(gradebook, ".csv") if gradebook else Path.cwd() / f"{PurePosixPath(folder).name}.csv")
    _guard(base, gradebook)
    base = _unused(base, today, result, companion=" comments.zip")
    if not dry_run:
        if sheet is not None:
            _write(base, sheet.render())
            result.written.append(base)
        if entries:
            comments = base.with_name(f"{base.stem} comments.zip")
            _write_zip(comments, entries)
            result.written.append(comments)
            result.notes.append("In Canvas: the assignment -> Re-Upload Submissions, with the comments zip.")


def _comment_file(usable: list[str], title: str, markdown: str) -> tuple[str, bytes] | str:
    """The comment file, named as the first submitted file it can be written as; why none, when a PDF would lose
    characters (Canvas shows a re-uploaded file under the submitted one's name, so a .pdf cannot hold a .docx)."""
    refused = []
    for name in usable:
        try:
            return name, files.render(PurePosixPath(name).suffix, title, markdown)
        except files.Undrawable as exc:
            refused.append(f"{exc}, which {name} would lose")
    return (
        f"{'; '.join(refused)}, and Canvas names a re-uploaded comment file after the submitted one, so it cannot "
        "go as a .docx: paste the comment in SpeedGrader"
    )


def _why_not_reuploaded(downloaded: list[str], attached: list[str]) -> str:
    """Why a student's comment cannot go into the re-upload zip, and what the lecturer can do instead."""
    if attached:
        what = "file ({}) is a type" if len(attached) == 1 else "files ({}) are types"
        return (
            f"the submitted {what.format(', '.join(attached))} tierflow cannot write feedback into (it writes "
            f"{', '.join(files.WRITABLE)}), and Canvas names a re-uploaded comment file after the submitted one: "
            "paste the comment in SpeedGrader"
        )
    if any((p := canvas.parse_name(d)) and p.text_entry for d in downloaded):
        return (
            "only a text entry, which Canvas's re-upload cannot match (it needs an attachment id): paste the "
            "comment in SpeedGrader"
        )
    if downloaded:
        return (
            f"no file named as Canvas names its downloads ({', '.join(downloaded)}), so Canvas's re-upload cannot "
            "match it to the submission: paste the comment in SpeedGrader"
        )
    return "no Canvas file recorded for this student (import the submissions.zip first)"


def _write(path: Path, data: bytes) -> None:
    """A new file only (`_unused` chose a free name; one made since is not overwritten either)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("xb") as handle:
            handle.write(data)
    except FileExistsError:
        raise ExportFeedbackError(f"{path} was made by something else during the export; run it again") from None


def _write_zip(path: Path, entries: list[tuple[str, bytes]]) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    _write(path, buffer.getvalue())
