"""`tierflow import submissions` and `tierflow export feedback`: the learning platform at both ends.

Registered in `tierflow.cli.app` with `app.add_typer(import_app, name="import")` and
`app.add_typer(export_app, name="export")`.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from tierflow.cli.common import ConfigOpt, ProfileOpt, VaultOpt, _home, fail, load, vault_dir
from tierflow.core.commands import tierflow_command

import_app = typer.Typer(help="Bring work in from a learning platform.", no_args_is_help=True)
export_app = typer.Typer(help="Send reviewed work back to a learning platform.", no_args_is_help=True)


class Platform(StrEnum):
    moodle = "moodle"
    canvas = "canvas"


AssignmentOpt = Annotated[
    str | None,
    typer.Option(
        "--assignment",
        "-a",
        help="The assignment folder in the vault, as Teaching/EDU7001/essay-1 (default: the config's "
        "feedback.assignment_folder). Its rubric.md is what the feedback flow marks against.",
    ),
]


def _folder(cfg, assignment: str | None) -> str:  # noqa: ANN001
    folder = assignment or cfg.settings.feedback.assignment_folder
    if not folder:
        raise fail("give the assignment folder: --assignment FOLDER (or set [feedback] assignment_folder)")
    return folder.strip("/")


def _console(stderr: bool = False):  # noqa: ANN202
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True, highlight=False)


@import_app.command("submissions")
def import_submissions(
    export: Annotated[
        Path,
        typer.Argument(
            help="The platform's export: Moodle's `Download all submissions` zip (<course>-<assignment>-<cmid>.zip) "
            "or Canvas's submissions.zip, or the folder either was unpacked to.",
            show_default=False,
            callback=_home,
        ),
    ],
    vault: VaultOpt = None,
    assignment: AssignmentOpt = None,
    platform: Annotated[
        Platform | None,
        typer.Option(
            "--from",
            help="Which platform made the export. Detected from the file names when not given.",
        ),
    ] = None,
    roster: Annotated[
        Path | None,
        typer.Option(
            "--roster",
            help="The platform's grade file, for students' real names and late status: Moodle's grading "
            "worksheet CSV (names keep their apostrophes, which Moodle strips from file names) or Canvas's "
            "gradebook CSV (Canvas's file names only hold a squashed sortable name). Read, never written; its "
            "students, those who submitted nothing too, are kept in the assignment folder's roster.csv and hidden "
            "from every prompt. Not needed again on a later import: without it, the kept roster.csv names them.",
            callback=_home,
        ),
    ] = None,
    replace_newer: Annotated[
        bool,
        typer.Option(
            "--replace-newer",
            help="Take a student's files even when the zip dates them before the files imported before (an older "
            "download imported again): without it such a student's note is kept and named in a warning.",
        ),
    ] = False,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Fill the assignment's submissions/ folder from a Moodle or Canvas export, one note per student.

    Each student's files become one note (submissions/<platform id>.md), each file a labelled part; the files
    as downloaded are kept read-only beside it (submissions/<platform id>/). Files that give no text (a scanned
    PDF, an empty or corrupt file, a password, a type tierflow cannot read) are listed per student with the reason
    and never stop the others. Run it again on a later export: students are added or updated by id, never
    duplicated, and notes you edited are left as they are, with their files (a new submission for one is named in
    a warning, not imported). A student whose submission differs from the one imported before is named in a
    warning; one whose files the zip dates before those imported before (an older download) is not replaced
    without --replace-newer. A student whose note cannot be written is named with the reason and what to do,
    the others are imported, and the command exits 1. Then run `tierflow run student-feedback`.
    """
    from tierflow.core.errors import TierflowError
    from tierflow.lms.importer import import_submissions as run_import

    vault = vault_dir(vault, required="tierflow import submissions EXPORT") or Path(".")
    cfg = load(vault, config, profile)
    folder = _folder(cfg, assignment)
    from tierflow.core.folders import unwritable

    # A vault shared read-only: one line, not one failure per student.
    why = unwritable(vault / folder / "submissions")
    if why is not None:
        raise fail(f"cannot import into {folder}/submissions: {why}. Import with write access to the vault", 1)
    err = _console(stderr=True)
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(
            TextColumn("importing"), BarColumn(), MofNCompleteColumn(), console=err, transient=True,
            disable=not err.is_terminal,
        ) as progress:  # fmt: skip
            bar = progress.add_task("import", total=None)

            def tick(result, done: int, total: int) -> None:  # noqa: ANN001
                progress.update(bar, completed=done, total=total)

            report = run_import(
                vault,
                folder,
                export,
                platform=platform.value if platform else None,
                roster=roster,
                replace_newer=replace_newer,
                on_student=tick,
            )
    except TierflowError as exc:
        raise fail(str(exc)) from None
    out = _console()
    layouts = ", ".join(report.layouts) or "no layout"
    out.print(f"{report.platform} export ({layouts}) -> {report.folder}/submissions", markup=False)
    for s in report.students:
        late = " (late)" if s.late else ""
        parts = f"{s.parts} part{'s' * (s.parts != 1)}"
        extra = f"; hidden text in {', '.join(s.hidden)}" if s.hidden else ""
        if s.action == "failed":
            out.print(f"  {s.student_id}: NOT imported: {s.error}", markup=False)
            continue
        if s.action == "kept-edit":  # nothing of the export was taken: its parts are not the note's
            new = "; a new submission was NOT imported (see the warning)" if s.warning else ""
            out.print(f"  {s.student_id}: kept as you edited it{late}{new}", markup=False)
        elif s.action == "kept-newer" and s.undecided:
            out.print(
                f"  {s.student_id}: NOT replaced: this export has fewer files than the one imported before, and its "
                "dates cannot tell a resubmission from an older download (see the warning)",
                markup=False,
            )
        elif s.action == "kept-newer":
            out.print(
                f"  {s.student_id}: NOT replaced: this export's submission is older than the one imported before (see "
                "the warning)",
                markup=False,
            )
        else:
            differs = "; the submission differs from the one imported before" if s.changed else ""
            stale = "; your reviewed draft is now out of date" if s.outdated else ""
            see = f" (see the warning{'s' * bool(differs and stale)})" if differs or stale else ""
            out.print(f"  {s.student_id}: {s.action}, {parts}{late}{extra}{differs}{stale}{see}", markup=False)
        for file, why in s.problems:
            out.print(f"    not read: {file}: {why}", markup=False)
        for file, note in s.notes:
            out.print(f"    note: {file}: {note}", markup=False)
    for entry, why in report.ignored:
        out.print(f"  ignored {entry}: {why}", markup=False)
    if report.roster:
        out.print(
            f"roster kept in {report.roster}: {report.roster_rows} students ({report.roster_added} new), hidden from "
            "every prompt whether they submitted or not",
            markup=False,
        )
    for warning in report.warnings:
        err.print(f"warning: {warning}", markup=False)
    counts = {a: sum(s.action == a for s in report.students) for a in ("created", "updated", "unchanged", "kept-edit")}
    unread = len(report.unreadable)
    resubmitted = sum(bool(s.warning) for s in report.students if s.action == "kept-edit")
    not_taken = f" ({resubmitted} with a new submission NOT imported)" if resubmitted else ""
    older = sum(s.action == "kept-newer" and not s.undecided for s in report.students)
    not_taken += f", {older} NOT replaced by an older submission" if older else ""
    undecided = sum(s.action == "kept-newer" and s.undecided for s in report.students)
    not_taken += (
        f", {undecided} NOT replaced by fewer files (a resubmission or an older download?)" if undecided else ""
    )
    failed = f", {len(report.failed)} NOT imported (see above)" if report.failed else ""
    err.print(
        f"{len(report.students)} students: {counts['created']} new, {counts['updated']} updated, "
        f"{counts['unchanged']} unchanged, {counts['kept-edit']} kept as edited{not_taken}{failed}; {unread} file(s) "
        f"not read. Next: {tierflow_command('run', 'student-feedback', '--assignment', report.folder, vault=vault)}",
        markup=False,
    )
    sys.stdout.flush()
    if report.failed:
        raise typer.Exit(1)  # the others were imported, but not every student: a script must not take it for done


class Target(StrEnum):
    moodle_worksheet = "moodle-worksheet"
    moodle_files = "moodle-files"
    canvas = "canvas"


class FileFormat(StrEnum):
    docx = "docx"
    pdf = "pdf"


@export_app.command("feedback")
def export_feedback(
    to: Annotated[
        Target,
        typer.Option(
            "--to",
            help="moodle-worksheet: a filled copy of the grading worksheet (Grade and Feedback comments; needs "
            "--worksheet). moodle-files: a zip for Moodle's 'Upload multiple feedback files in a zip' (the route "
            "when the assignment uses a Moodle rubric, which switches the worksheet off). canvas: a filled copy of "
            "the gradebook CSV (needs --gradebook) and a comments zip for Canvas's 'Re-upload submissions'.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Where to write: the CSV (moodle-worksheet, canvas; the canvas comments zip goes beside it as "
            "'<name> comments.zip') or the zip (moodle-files). Default: beside the file you downloaded, as "
            "'<name> (tierflow).csv'. Never the downloaded file itself, nor an earlier export: when the file exists, "
            "'<name> (tierflow <date>).csv' is written beside it.",
            callback=_home,
        ),
    ] = None,
    vault: VaultOpt = None,
    assignment: AssignmentOpt = None,
    worksheet: Annotated[
        Path | None,
        typer.Option(
            "--worksheet",
            help="The grading worksheet CSV downloaded from Moodle (View all submissions -> Grading action -> "
            "Download grading worksheet). Read, never written.",
            callback=_home,
        ),
    ] = None,
    gradebook: Annotated[
        Path | None,
        typer.Option(
            "--gradebook",
            help="The gradebook CSV exported from Canvas (Grades -> Export). Read, never written. Without it only "
            "the comments zip is written.",
            callback=_home,
        ),
    ] = None,
    column: Annotated[
        str | None,
        typer.Option(
            "--column",
            help="Canvas: the assignment's column, as its header names it ('Essay 2 (4512)') or by its id; needed "
            "when the gradebook holds several assignments. The header itself is never changed.",
        ),
    ] = None,
    decimals: Annotated[
        int, typer.Option("--decimals", min=0, max=4, help="Decimal places of a mark (rounded half up).")
    ] = 2,
    file_format: Annotated[
        FileFormat,
        typer.Option(
            "--format",
            help="moodle-files: write each student's feedback as docx or pdf. With pdf, a student whose feedback "
            "holds characters the PDF font cannot draw (Chinese, Japanese, Korean) gets docx, and is named.",
        ),
    ] = FileFormat.docx,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be sent and the marks' distribution; write nothing.")
    ] = False,
    replace_existing: Annotated[
        bool,
        typer.Option(
            "--replace-existing",
            help="Write the reviewed drafts' grades and feedback over those the downloaded worksheet or gradebook "
            "already holds (a second marker's Feedback comments, a moderated Grade, a Canvas score, or EX: a mark "
            "over EX un-excuses the student). Without it those students are left as they are, and named.",
        ),
    ] = False,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Write reviewed feedback drafts as the learning platform's own import files.

    Only drafts whose front-matter says `status: reviewed` are sent; the command says how many were left out
    and why. Each mark comes from the rubric (levels' score ranges and weights); your edits to a draft win: a
    `mark:` in its front-matter (a bare `mark: 68` is on the rubric's scale and scaled to the platform's maximum;
    `mark: 15/20` is out of the platform's maximum and sent as written, or refused when that is not 20), or the
    level and score lines in its body as you left them. Each student sent says how their mark was converted
    (`mark 15 (yours, of 100 on the rubric) -> 3.00 of 20`). The distribution of marks is shown before anything is
    written, and the path of every file written is printed. A grade or feedback
    already in the downloaded file is never overwritten unless you say so (--replace-existing); a draft written for
    an earlier submission than the one imported now is never sent.
    """
    from tierflow.core.errors import TierflowError
    from tierflow.lms.exporter import export_feedback as run_export

    vault = vault_dir(vault, required="tierflow export feedback --to TARGET") or Path(".")
    cfg = load(vault, config, profile)
    folder = _folder(cfg, assignment)
    err = _console(stderr=True)
    try:
        with err.status("reading the reviewed drafts", spinner="dots") if err.is_terminal else _nothing():
            result = run_export(
                vault, folder, to.value, out=out, worksheet=worksheet, gradebook=gradebook, column=column,
                decimals=decimals, fmt=f".{file_format.value}", dry_run=dry_run, today=cfg.today(),
                replace_existing=replace_existing,
            )  # fmt: skip
    except TierflowError as exc:
        raise fail(str(exc)) from None
    console = _console()
    if result.distribution:
        console.print("marks to be written:", markup=False)
        for line in result.distribution:
            console.print(f"  {line}", markup=False)
    for sid in result.sent:
        # The conversion in full (`15 (yours, of 100 on the rubric) -> 3.00 of 20`): a typed mark never changes unsaid.
        mark = result.conversions.get(sid) or result.marks.get(sid)
        console.print(f"  {sid}: sent" + (f", mark {mark}" if mark is not None else ""), markup=False)
    drafts = result.drafts
    reasons = {}
    for _, why in result.left_out:
        key = why.split(";")[0].split(" (")[0]
        reasons[key] = reasons.get(key, 0) + 1
    if result.left_out:
        summary = ", ".join(f"{n} {why}" for why, n in reasons.items())
        err.print(f"{len(result.left_out)} draft(s) left out: {summary}", markup=False)
        for path, why in result.left_out:
            err.print(f"  {path}: {why}", markup=False)
    downloaded = (worksheet or gradebook or Path()).name
    if result.kept_existing:
        err.print(
            f"{len(result.kept_existing)} student(s) already graded or commented in {downloaded}, left as they are "
            "(nothing of their drafts is sent); to write the reviewed drafts over them, export again with "
            "--replace-existing:",
            markup=False,
        )
        for student, held in result.kept_existing:
            err.print(f"  {student}: {held}", markup=False)
    if result.untouched:
        err.print(f"{len(result.untouched)} student(s) in {downloaded} left as they were:", markup=False)
        for sid, why in result.untouched:
            err.print(f"  {sid}: {why}", markup=False)
    if result.no_submission:
        shown = ", ".join(result.no_submission[:20]) + (", ..." if len(result.no_submission) > 20 else "")
        err.print(
            f"{len(result.no_submission)} student(s) in {downloaded} with no submission note in the vault, left as "
            f"they were: {shown}",
            markup=False,
        )
    for note in result.notes:
        err.print(note, markup=False)
    if dry_run:
        err.print("dry run: nothing written", markup=False)
    for path in result.written:
        console.print(f"wrote {path}", markup=False)
    if drafts is not None and not drafts.reviewed:
        err.print("no reviewed drafts: set `status: reviewed` in the front-matter of each draft you checked")


def _nothing():  # noqa: ANN202
    from contextlib import nullcontext

    return nullcontext()
