"""A student resubmits after the lecturer reviewed their draft: the old draft's mark and feedback are never sent,
the import says whose reviewed draft is now out of date, and a rerun drafts only that student."""

from __future__ import annotations

from pathlib import Path

import frontmatter
import pytest
from lms_exports import cohort, docx_bytes, essay, moodle_zip
from test_lms_moodle import draft_text
from test_lms_roundtrip import worksheet_for
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.flows.student_feedback import student_feedback
from tierflow.lms.drafts import VERSION_KEY
from tierflow.lms.exporter import export_feedback
from tierflow.lms.importer import import_submissions
from tierflow.vault.text import load_note, note_text, text_version

ASSIGNMENT = "Teaching/EDU7001/essay-2"


def drafts(vault: Path) -> dict[str, list[Path]]:
    """Every draft by its front-matter `student_id`, whatever the files are called."""
    out: dict[str, list[Path]] = {}
    for path in sorted((vault / ASSIGNMENT / "feedback").glob("*.md")):
        sid = frontmatter.load(path).metadata.get("student_id")
        if sid:
            out.setdefault(str(sid), []).append(path)
    return out


def review(path: Path) -> None:
    """What the lecturer does once they have read a draft."""
    path.write_text(path.read_text(encoding="utf-8").replace("status: draft", "status: reviewed", 1), encoding="utf-8")


def resubmitted() -> list:  # noqa: ANN001
    """The cohort, with Liam (1001) having handed in a new essay since the first download."""
    students = cohort()
    students[0].files = {"essay.docx": docx_bytes(essay(14, "Essay by Liam O'Sullivan, resubmitted."))}
    return students


@pytest.mark.usefixtures("prefect_harness")
def test_a_resubmission_is_drafted_alone_and_the_old_reviewed_draft_is_never_exported(lms_vault, tmp_path):
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "first.zip", cohort()))
    first = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT, profile="offline")
    assert not first.failed
    for (path,) in drafts(lms_vault).values():
        assert frontmatter.load(path).metadata[VERSION_KEY]  # which submission it was written for
        review(path)
    old = lms_vault / ASSIGNMENT / "feedback" / "1001 feedback.md"
    # An unchanged student's draft written before tierflow recorded versions: taken as current, said once.
    legacy = lms_vault / ASSIGNMENT / "feedback" / "1002 feedback.md"
    legacy.write_text(
        "".join(line for line in legacy.read_text(encoding="utf-8").splitlines(True) if VERSION_KEY not in line),
        encoding="utf-8",
    )

    report = import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "second.zip", resubmitted()))
    assert {s.student_id: s.action for s in report.students}["1001"] == "updated"
    assert [s.student_id for s in report.students if s.outdated] == ["1001"]
    (warning,) = [w for w in report.warnings if "reviewed draft" in w]
    assert warning.startswith("1001 (Liam O'Sullivan): a new submission was imported")
    assert f"{ASSIGNMENT}/feedback/1001 feedback.md" in warning and "will not be exported" in warning

    second = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT, profile="offline")
    assert not second.failed
    redrafted = [w for w in second.written if "/feedback/" in w.path and "Cohort summary" not in w.path]
    assert [Path(w.path).name for w in redrafted] == [Path(redrafted[0].path).name]
    assert Path(redrafted[0].path).name.startswith("1001 feedback (tierflow ")  # beside the reviewed one
    skipped = [why for _, why in second.skipped]
    assert any(w.startswith("6 student(s) already have a draft") and "--redraft-all" in w for w in skipped)
    (said,) = [w for w in skipped if "record no submission version" in w]
    assert f"{ASSIGNMENT}/feedback/1002 feedback.md" in said
    assert {sid: len(paths) for sid, paths in drafts(lms_vault).items()} == {
        "1001": 2, "1002": 1, "1003": 1, "1004": 1, "1005": 1, "1006": 1, "1007": 1
    }  # fmt: skip

    worksheet = tmp_path / "worksheet.csv"
    worksheet.write_bytes(worksheet_for(cohort()))
    result = export_feedback(lms_vault, ASSIGNMENT, "moodle-worksheet", worksheet=worksheet, dry_run=True)
    assert "1001" not in result.sent and "1001" not in result.marks
    left_out = dict(result.left_out)
    why = left_out[f"{ASSIGNMENT}/feedback/1001 feedback.md"]
    assert why.startswith("written for an earlier version of the submission; 1001 (Liam O'Sullivan)")
    assert redrafted[0].path in why  # the draft to review instead
    (once,) = [n for n in result.notes if "record no version" in n]
    assert f"{ASSIGNMENT}/feedback/1002 feedback.md" in once
    assert sorted(result.sent) == ["1002", "1003", "1004", "1007"]

    review(lms_vault / redrafted[0].path)  # the lecturer reviews the new draft: it is the one sent
    result = export_feedback(lms_vault, ASSIGNMENT, "moodle-worksheet", worksheet=worksheet, dry_run=True)
    assert "1001" in result.sent and "1001" in result.marks
    assert [p for p, why in result.left_out if "earlier version" in why] == [old.relative_to(lms_vault).as_posix()]

    again = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT, profile="offline", redraft_all=True)
    written = [w for w in again.written if "/feedback/" in w.path and "Cohort summary" not in w.path]
    assert len(written) == 7  # asked for: every student drafted again


def imported(tmp_path: Path, *, versioned: bool) -> Path:
    """A vault whose essay-2 submissions came from Moodle, with a reviewed draft for 1001-1003; `versioned`: the
    drafts record the submission they were written for, as drafts written now do."""
    import shutil

    vault = tmp_path / "vault"
    shutil.copytree(Path(__file__).resolve().parents[1] / "vault_fixtures" / "feedback-batch", vault)
    (vault / ASSIGNMENT / "feedback").mkdir(parents=True)
    shutil.copy(vault / "Teaching/EDU7001/essay-1/rubric.md", vault / ASSIGNMENT / "rubric.md")
    import_submissions(vault, ASSIGNMENT, moodle_zip(tmp_path / "first.zip", cohort()[:3]))
    for sid in ("1001", "1002", "1003"):
        text = draft_text(sid)
        if versioned:
            version = text_version(note_text(load_note(vault / ASSIGNMENT / "submissions" / f"{sid}.md").content))
            text = text.replace("status: reviewed\n", f"status: reviewed\n{VERSION_KEY}: {version}\n", 1)
        (vault / ASSIGNMENT / "feedback" / f"{sid} feedback.md").write_text(text, encoding="utf-8")
    return vault


def test_drafts_written_before_versions_were_recorded_are_exported_and_said_once(tmp_path):
    vault = imported(tmp_path, versioned=False)
    worksheet = tmp_path / "worksheet.csv"
    worksheet.write_bytes(worksheet_for(cohort()))
    result = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=worksheet, dry_run=True)
    assert result.sent == ["1001", "1002", "1003"]
    (said,) = [n for n in result.notes if "record no version" in n]
    assert all(f"{ASSIGNMENT}/feedback/{sid} feedback.md" in said for sid in ("1001", "1002", "1003"))

    # A new submission over such a draft: the import knows the draft is older, the export cannot tell.
    report = import_submissions(vault, ASSIGNMENT, moodle_zip(tmp_path / "second.zip", resubmitted()[:3]))
    (warning,) = [w for w in report.warnings if "reviewed draft" in w]
    assert warning.startswith("1001 (Liam O'Sullivan)") and "WOULD send it" in warning and "move it out" in warning


def test_reimport_names_the_student_whose_reviewed_draft_is_out_of_date_and_the_export_refuses_it(tmp_path):
    vault = imported(tmp_path, versioned=True)
    worksheet = tmp_path / "worksheet.csv"
    worksheet.write_bytes(worksheet_for(cohort()))
    assert export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=worksheet, dry_run=True).sent == [
        "1001", "1002", "1003"
    ]  # fmt: skip

    args = ["import", "submissions", str(moodle_zip(tmp_path / "second.zip", resubmitted()[:3]))]
    shown = CliRunner().invoke(app, [*args, "--vault", str(vault), "-a", ASSIGNMENT])
    assert shown.exit_code == 0, shown.output
    assert (
        "1001: updated, 1 part; the submission differs from the one imported before; your reviewed draft is now out "
        "of date (see the warnings)"
    ) in shown.stdout
    assert "1002: unchanged" in shown.stdout and "out of date" not in shown.stdout.split("1002:")[1]
    assert f"warning: 1001 (Liam O'Sullivan): a new submission was imported, and your reviewed draft {ASSIGNMENT}" in (
        shown.stderr
    )

    args = ["export", "feedback", "--vault", str(vault), "-a", ASSIGNMENT, "--to", "moodle-worksheet"]
    sent = CliRunner().invoke(app, [*args, "--worksheet", str(worksheet), "--dry-run"])
    assert sent.exit_code == 0, sent.output
    assert "1001: sent" not in sent.stdout and "1002: sent" in sent.stdout and "1003: sent" in sent.stdout
    assert "1 written for an earlier version of the submission" in sent.stderr
    assert "tierflow run student-feedback --assignment" in sent.stderr


@pytest.mark.usefixtures("prefect_harness")
def test_the_estimate_of_a_rerun_prices_only_the_students_it_drafts_and_says_how_many_are_unchanged(
    lms_vault, tmp_path
):
    """`plan` and `run --dry-run` priced a draft for every student, where the rerun drafts only the one who
    resubmitted: the estimate was several times the spend, and said nothing of the students left as they are."""
    from tierflow.core.config import load_config
    from tierflow.core.ledger import Ledger
    from tierflow.flows.plans import plan_student_feedback

    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "first.zip", cohort()))
    assert not student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT, profile="offline").failed
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "second.zip", resubmitted()))
    config = load_config(lms_vault, profile="offline")

    def calls(**given: bool) -> dict[str, int]:
        plan = plan_student_feedback(config, lms_vault, assignment=ASSIGNMENT, **given)
        return {p.key: p.calls for p in plan.phases}

    # 1005 and 1006 gave no text (no call); of the other five, only 1001 resubmitted.
    planned = calls()
    assert planned == {"collate": 5, "synthesise": 1, "draft": 1}
    assert calls(redraft_all=True) == {"collate": 5, "synthesise": 1, "draft": 5}

    base = ["--vault", str(lms_vault), "--assignment", ASSIGNMENT, "--profile", "offline"]
    for args in (["plan", "student-feedback", *base], ["run", "student-feedback", *base, "--dry-run"]):
        shown = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.output
        assert "6 student(s) already have a draft for their submission as it is now" in shown.stdout, args
        assert "Drafts are priced for 1 of the 7 students: 6 are unchanged since their draft" in shown.stdout
        again = CliRunner().invoke(app, [*args, "--redraft-all"], env={"COLUMNS": "200"})
        assert again.exit_code == 0, again.output
        assert "already have a draft" not in again.stdout and "unchanged since their draft" not in again.stdout

    # The run drafts whom the estimate priced (one student, however many tiers its answer went through).
    rerun = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT, profile="offline")
    rows = Ledger.for_vault(lms_vault).rows(run_id=rerun.run_id)
    assert len({r["subject"] for r in rows if r["phase"] == "draft"}) == planned["draft"]
    assert calls()["draft"] == 0  # and now every student has a draft for their submission as it is


def team_folder(export: Path) -> Path:
    """`export` with a team's folder added, named after its group and group id (17: no participant's)."""
    import zipfile

    with zipfile.ZipFile(export, "a") as z:
        z.writestr("Team Alpha_17_assignsubmission_file/report.docx", docx_bytes(essay(6)))
    return export


def test_a_moodle_reimport_without_roster_keeps_the_rosters_names_emails_and_team_refusal(lms_vault, tmp_path):
    worksheet = tmp_path / "worksheet.csv"
    worksheet.write_bytes(worksheet_for(cohort()))
    first = import_submissions(
        lms_vault, ASSIGNMENT, team_folder(moodle_zip(tmp_path / "first.zip", cohort())), roster=worksheet
    )
    assert "Team Alpha_17_assignsubmission_file/" in dict(first.ignored)
    before = {p.stem: p.read_text(encoding="utf-8") for p in (lms_vault / ASSIGNMENT / "submissions").glob("*.md")}
    # Later: Liam resubmitted; the lecturer downloads the submissions again, but not the worksheet.
    later = import_submissions(lms_vault, ASSIGNMENT, team_folder(moodle_zip(tmp_path / "later.zip", resubmitted())))
    assert {s.student_id: s.action for s in later.students} == {
        **{s.participant: "unchanged" for s in cohort()},
        "1001": "updated",
    }
    assert "Team Alpha_17_assignsubmission_file/" in dict(later.ignored)  # still a team's, not participant 17's
    assert not (lms_vault / ASSIGNMENT / "submissions" / "17.md").exists()
    after = {p.stem: p.read_text(encoding="utf-8") for p in (lms_vault / ASSIGNMENT / "submissions").glob("*.md")}
    assert set(after) == set(before)
    assert all(after[sid] == before[sid] for sid in after if sid != "1001")
    liam = frontmatter.loads(after["1001"]).metadata
    assert liam["name"] == "Liam O'Sullivan" and liam["email"] == "1001@example.ac.uk"


def test_a_canvas_reimport_without_roster_keeps_the_gradebooks_names_and_sis_ids(lms_vault, tmp_path):
    from lms_exports import canvas_zip
    from test_lms_canvas import gradebook_bytes

    gradebook = tmp_path / "Grades-EDU7001.csv"
    gradebook.write_bytes(gradebook_bytes())
    export = canvas_zip(tmp_path / "submissions.zip", cohort())
    base = ["import", "submissions", str(export), "--vault", str(lms_vault), "-a", ASSIGNMENT]
    assert CliRunner().invoke(app, [*base, "--roster", str(gradebook)]).exit_code == 0
    before = {p.stem: p.read_text(encoding="utf-8") for p in (lms_vault / ASSIGNMENT / "submissions").glob("*.md")}
    again = CliRunner().invoke(app, base)  # the same zip, later, without --roster
    assert again.exit_code == 0, again.output
    assert "7 students: 0 new, 0 updated, 7 unchanged" in again.stderr
    assert "give the gradebook CSV with --roster" not in again.stderr  # the kept roster.csv has every name
    after = {p.stem: p.read_text(encoding="utf-8") for p in (lms_vault / ASSIGNMENT / "submissions").glob("*.md")}
    assert after == before
    kofi = frontmatter.loads(after["1004"]).metadata
    assert kofi["name"] == "Kofi Mensah" and kofi["sis_ids"] == ["S1004", "u1004"]


def test_a_later_roster_without_a_student_drops_none_of_what_the_kept_roster_gives_them(lms_vault, tmp_path):
    from lms_exports import canvas_zip
    from test_lms_canvas import gradebook_bytes

    export = canvas_zip(tmp_path / "submissions.zip", cohort())
    full, later = tmp_path / "Grades-EDU7001.csv", tmp_path / "Grades-EDU7001 (1).csv"
    full.write_bytes(gradebook_bytes())
    later.write_bytes(gradebook_bytes([s for s in cohort() if s.participant != "1007"]))  # Mei-Lin has left
    import_submissions(lms_vault, ASSIGNMENT, export, roster=full)
    report = import_submissions(lms_vault, ASSIGNMENT, export, roster=later)
    assert {s.action for s in report.students} == {"unchanged"}
    meilin = frontmatter.load(lms_vault / ASSIGNMENT / "submissions" / "1007.md").metadata
    assert meilin["name"] == "Mei-Lin Zhao" and meilin["sis_ids"] == ["S1007", "u1007"]
    assert not [w for w in report.warnings if "does not list" in w]  # the kept roster.csv still names her


def test_a_moodle_reimport_without_the_worksheet_keeps_the_late_it_said(lms_vault, tmp_path):
    from test_lms_moodle import worksheet_bytes

    worksheet = tmp_path / "worksheet.csv"
    worksheet.write_bytes(worksheet_bytes())  # 1003: "Assignment was submitted 2 hours late"
    export = moodle_zip(tmp_path / "export.zip", cohort()[:4])
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet)
    report = import_submissions(lms_vault, ASSIGNMENT, export)  # Moodle's file names do not say who was late
    assert {s.action for s in report.students} == {"unchanged"}
    assert frontmatter.load(lms_vault / ASSIGNMENT / "submissions" / "1003.md").metadata["late"] is True


RESUBMITTED_ON = (2026, 3, 9, 16, 30, 0)
"""When the later download's entries are dated: a week after the first's (`lms_exports.DOWNLOADED`)."""


def notes_text(vault: Path) -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted((vault / ASSIGNMENT / "submissions").glob("*.md"))}


def test_an_older_download_imported_again_never_rolls_a_resubmission_back_unless_asked(tmp_path):
    vault = imported(tmp_path, versioned=True)  # first.zip, dated 2026-03-02 10:00; reviewed drafts for all three
    base = ["--vault", str(vault), "-a", ASSIGNMENT]
    newer = moodle_zip(tmp_path / "newer.zip", resubmitted()[:3], dated=RESUBMITTED_ON)
    shown = CliRunner().invoke(app, ["import", "submissions", str(newer), *base])
    assert shown.exit_code == 0, shown.output
    assert "1001: updated, 1 part; the submission differs from the one imported before" in shown.stdout
    said = " ".join(shown.stderr.split())
    assert "warning: 1001 (Liam O'Sullivan): the submission differs from the one imported before" in said
    assert "2026-03-02 10:00" in said and "2026-03-09 16:30" in said  # the files' dates, before and now
    assert "1002 (" not in said and "1003 (" not in said  # unchanged
    # The lecturer reviews a draft of the resubmission.
    version = text_version(note_text(load_note(vault / ASSIGNMENT / "submissions" / "1001.md").content))
    draft = vault / ASSIGNMENT / "feedback" / "1001 feedback.md"
    draft.write_text(
        draft_text("1001").replace("status: reviewed\n", f"status: reviewed\n{VERSION_KEY}: {version}\n", 1),
        encoding="utf-8",
    )
    before = notes_text(vault)
    originals = {p.name: p.read_bytes() for p in (vault / ASSIGNMENT / "submissions" / "1001").iterdir()}

    # The first download, imported again by mistake: its files are older than those imported for 1001.
    first = tmp_path / "first.zip"
    shown = CliRunner().invoke(app, ["import", "submissions", str(first), *base])
    assert shown.exit_code == 0, shown.output
    assert "1001: NOT replaced: this export's submission is older than the one imported before" in shown.stdout
    said = " ".join(shown.stderr.split())
    assert "warning: 1001 (Liam O'Sullivan):" in said and "--replace-newer" in said
    assert "2026-03-02 10:00" in said and "2026-03-09 16:30" in said
    assert "1 NOT replaced by an older submission" in said
    assert notes_text(vault) == before  # nothing rolled back
    assert {p.name: p.read_bytes() for p in (vault / ASSIGNMENT / "submissions" / "1001").iterdir()} == originals
    assert "resubmitted" in (vault / ASSIGNMENT / "submissions" / "1001.md").read_text(encoding="utf-8")

    # Asked for: the older submission replaces the newer, said plainly, with the reviewed draft it leaves behind.
    shown = CliRunner().invoke(app, ["import", "submissions", str(first), *base, "--replace-newer"])
    assert shown.exit_code == 0, shown.output
    assert "1001: updated, 1 part; the submission differs from the one imported before" in shown.stdout
    said = " ".join(shown.stderr.split())
    assert "warning: 1001 (Liam O'Sullivan): the submission differs from the one imported before" in said
    assert "OLDER" in said
    assert (
        f"1001 (Liam O'Sullivan): an older submission was imported, and your reviewed draft {ASSIGNMENT}/feedback/"
        "1001 feedback.md was written for the newer one, so it will not be exported"
    ) in said
    assert "resubmitted" not in (vault / ASSIGNMENT / "submissions" / "1001.md").read_text(encoding="utf-8")


def test_a_reimport_that_changes_a_submission_says_so_when_the_dates_cannot_tell_which_is_older(lms_vault, tmp_path):
    """Both downloads' entries dated alike (or an unpacked folder's, which give no date): the older one imported
    again is taken, but never silently."""
    base = ["--vault", str(lms_vault), "-a", ASSIGNMENT]
    first = moodle_zip(tmp_path / "first.zip", cohort())
    newer = moodle_zip(tmp_path / "newer.zip", resubmitted())
    for export in (first, newer):
        assert CliRunner().invoke(app, ["import", "submissions", str(export), *base]).exit_code == 0
    shown = CliRunner().invoke(app, ["import", "submissions", str(first), *base])
    assert shown.exit_code == 0, shown.output
    assert "1001: updated, 1 part; the submission differs from the one imported before" in shown.stdout
    said = " ".join(shown.stderr.split())
    (warning,) = [w for w in said.split("warning: ")[1:] if w.startswith("1001 ")]
    assert "the submission differs from the one imported before" in warning and "essay.docx" in warning
    assert "a draft written before this import is for the text it replaced" in warning
    assert "1002 (" not in said


def test_a_submission_imported_without_dates_gets_them_from_the_next_import_of_it_so_an_older_one_is_refused(
    tmp_path,
):
    """A note imported before tierflow kept the files' dates (or from an unpacked folder, which gives none): the next
    import of the same submission, from a zip, records its date, so an older download after it is refused as usual."""
    import zipfile

    vault = imported(tmp_path, versioned=True)
    base = ["--vault", str(vault), "-a", ASSIGNMENT]
    newer = moodle_zip(tmp_path / "newer.zip", resubmitted()[:3], dated=RESUBMITTED_ON)
    unpacked = tmp_path / "newer-unpacked"
    with zipfile.ZipFile(newer) as archive:
        archive.extractall(unpacked)
    note = vault / ASSIGNMENT / "submissions" / "1001.md"
    assert CliRunner().invoke(app, ["import", "submissions", str(unpacked), *base]).exit_code == 0
    assert "resubmitted" in note.read_text(encoding="utf-8") and "files_dated" not in note.read_text(encoding="utf-8")

    again = CliRunner().invoke(app, ["import", "submissions", str(newer), *base])  # the same submission, dated
    assert again.exit_code == 0, again.output
    assert "files_dated" in note.read_text(encoding="utf-8")

    shown = CliRunner().invoke(app, ["import", "submissions", str(tmp_path / "first.zip"), *base])
    assert shown.exit_code == 0, shown.output
    assert "1001: NOT replaced: this export's submission is older than the one imported before" in shown.stdout
    assert "resubmitted" in note.read_text(encoding="utf-8")


def _dated_moodle_zip(path: Path, students: list, dates: dict[str, tuple[int, ...]]) -> Path:  # noqa: ANN001
    """A Moodle download whose entries are dated by their own files, as Moodle's are (`add_storedfile_to_archive`
    adds each stored file with its own time): `dates` by file name, `DOWNLOADED` otherwise."""
    import zipfile

    from lms_exports import DOWNLOADED, write_entry

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for s in students:
            for filename, data in s.files.items():
                write_entry(
                    z,
                    f"{s.moodle_name}_{s.participant}_assignsubmission_file/{filename}",
                    data,
                    dates.get(filename, DOWNLOADED),
                )
    return path


def _with_appendix() -> list:  # noqa: ANN001
    """The cohort's first three, with Liam (1001) having handed in an appendix beside his essay."""
    students = cohort()[:3]
    students[0].files = {**students[0].files, "appendix.docx": docx_bytes(["Appendix: the interview schedule."])}
    return students


APPENDIX_ON = (2026, 3, 5, 12, 0, 0)
SUBMITTED = {"earlier": b"Thursday, 5 March 2026, 12:00 PM", "later": b"Monday, 9 March 2026, 4:30 PM"}


def _worksheet(tmp_path: Path, when: str) -> Path:
    """Moodle's grading worksheet, every submission last changed `when` (`SUBMITTED`)."""
    path = tmp_path / f"worksheet {when}.csv"
    path.write_bytes(worksheet_for(cohort()[:3]).replace(b"Thursday, 19 November 2026, 10:14 PM", SUBMITTED[when]))
    return path


def test_a_resubmission_with_a_file_removed_is_told_from_an_older_download_by_moodles_submission_time(tmp_path):
    """Moodle dates each file in its zip by the file's own time: a student who resubmits without their appendix
    leaves an essay dated before the appendix imported before, as an older download would. The zip's dates cannot
    tell the two apart (said, and nothing rolled back); the worksheet's `Last modified (submission)` can."""
    import shutil

    vault = tmp_path / "vault"
    shutil.copytree(Path(__file__).resolve().parents[1] / "vault_fixtures" / "feedback-batch", vault)
    base = ["--vault", str(vault), "-a", ASSIGNMENT]
    note = vault / ASSIGNMENT / "submissions" / "1001.md"
    students = _with_appendix()
    first = _dated_moodle_zip(tmp_path / "first.zip", students, {"appendix.docx": APPENDIX_ON})
    assert CliRunner().invoke(app, ["import", "submissions", str(first), *base]).exit_code == 0
    assert "appendix.docx" in note.read_text(encoding="utf-8")
    # The same download again, with a worksheet: the same submissions, so no time is recorded for them (a note
    # imported before is not rewritten for it); the next import tells by the files' dates instead.
    again = CliRunner().invoke(
        app, ["import", "submissions", str(first), *base, "--roster", str(_worksheet(tmp_path, "earlier"))]
    )
    assert again.exit_code == 0, again.output
    assert "submitted:" not in note.read_text(encoding="utf-8")
    # Liam resubmits on 9 March without the appendix: his essay keeps its 2 March date.
    students[0].files.pop("appendix.docx")
    removed = _dated_moodle_zip(tmp_path / "removed.zip", students, {})

    shown = CliRunner().invoke(app, ["import", "submissions", str(removed), *base])
    assert shown.exit_code == 0, shown.output
    assert "1001: NOT replaced: this export has fewer files than the one imported before, and its dates cannot " in (
        " ".join(shown.stdout.split())
    )
    said = " ".join(shown.stderr.split())
    (warning,) = [w for w in said.split("warning: ")[1:] if w.startswith("1001 ")]
    assert "either the student removed a file when they resubmitted, or this is an earlier download" in warning
    assert "`Last modified (submission)`" in warning and "--roster" in warning and "--replace-newer" in warning
    assert "OLDER" not in warning, warning
    assert "appendix.docx" in note.read_text(encoding="utf-8")  # nothing rolled back on a guess

    # With the worksheet downloaded beside it, Moodle's own time says which: a resubmission, taken and said.
    shown = CliRunner().invoke(
        app, ["import", "submissions", str(removed), *base, "--roster", str(_worksheet(tmp_path, "later"))]
    )
    assert shown.exit_code == 0, shown.output
    assert "1001: updated" in shown.stdout
    said = " ".join(shown.stderr.split())
    (warning,) = [w for w in said.split("warning: ")[1:] if w.startswith("1001 ")]
    assert "a resubmission, though its files are dated before those imported before" in warning, warning
    assert "last changed 2026-03-09 16:30, after 2026-03-05 12:00" in warning, warning
    assert "appendix.docx" not in note.read_text(encoding="utf-8")
    assert "submitted: '2026-03-09 16:30:00'" in note.read_text(encoding="utf-8")

    # The first download imported again, with the worksheet of its day: older by Moodle's time, not taken.
    shown = CliRunner().invoke(
        app, ["import", "submissions", str(first), *base, "--roster", str(_worksheet(tmp_path, "earlier"))]
    )
    assert shown.exit_code == 0, shown.output
    assert "1001: NOT replaced: this export's submission is older than the one imported before" in shown.stdout
    said = " ".join(shown.stderr.split())
    (warning,) = [w for w in said.split("warning: ")[1:] if w.startswith("1001 ")]
    assert "Moodle says it was last changed 2026-03-05 12:00, before 2026-03-09 16:30" in warning, warning
    assert "appendix.docx" not in note.read_text(encoding="utf-8")


def test_an_older_canvas_download_with_fewer_files_is_said_to_be_older(tmp_path):
    """Canvas dates every entry of its zip when it makes it: a download with fewer files dated before the one
    imported is an older download, said so (not the Moodle case, where the files keep their own dates)."""
    import shutil

    from lms_exports import canvas_zip

    vault = tmp_path / "vault"
    shutil.copytree(Path(__file__).resolve().parents[1] / "vault_fixtures" / "feedback-batch", vault)
    base = ["--vault", str(vault), "-a", ASSIGNMENT]
    students = cohort()[:3]
    earlier = canvas_zip(tmp_path / "earlier.zip", students)  # 2 March: Liam's essay alone
    students[0].files = {**students[0].files, "appendix.docx": docx_bytes(["Appendix: the interview schedule."])}
    later = canvas_zip(tmp_path / "later.zip", students, dated=RESUBMITTED_ON)
    assert CliRunner().invoke(app, ["import", "submissions", str(later), *base]).exit_code == 0
    shown = CliRunner().invoke(app, ["import", "submissions", str(earlier), *base])
    assert shown.exit_code == 0, shown.output
    assert "1001: NOT replaced: this export's submission is older than the one imported before" in shown.stdout
    said = " ".join(shown.stderr.split())
    (warning,) = [w for w in said.split("warning: ")[1:] if w.startswith("1001 ")]
    assert "OLDER" in warning and "cannot tell" not in warning, warning


def test_an_older_download_paired_with_a_later_worksheet_is_not_taken(tmp_path):
    """The worksheet's time is the submission's when the worksheet was downloaded: given with a zip downloaded
    before it, it would call an older version of the files newer. Where the files are other versions (not only
    fewer), their dates say older, and nothing is rolled back."""
    import shutil

    vault = tmp_path / "vault"
    shutil.copytree(Path(__file__).resolve().parents[1] / "vault_fixtures" / "feedback-batch", vault)
    base = ["--vault", str(vault), "-a", ASSIGNMENT]
    note = vault / ASSIGNMENT / "submissions" / "1001.md"
    students = cohort()[:3]
    draft = docx_bytes(essay(14, "An early draft by Liam O'Sullivan."))
    students[0].files = {"essay.docx": draft}
    early = _dated_moodle_zip(tmp_path / "early.zip", students, {"essay.docx": (2026, 2, 20, 9, 0, 0)})
    final = cohort()[:3]
    latest = _dated_moodle_zip(tmp_path / "latest.zip", final, {})
    worksheet = str(_worksheet(tmp_path, "later"))
    assert CliRunner().invoke(app, ["import", "submissions", str(latest), *base, "--roster", worksheet]).exit_code == 0
    assert "early draft" not in note.read_text(encoding="utf-8")

    shown = CliRunner().invoke(app, ["import", "submissions", str(early), *base, "--roster", worksheet])
    assert shown.exit_code == 0, shown.output
    assert "1001: NOT replaced" in shown.stdout
    said = " ".join(shown.stderr.split())
    (warning,) = [w for w in said.split("warning: ")[1:] if w.startswith("1001 ")]
    assert "are dated before those imported before" in warning and "a worksheet downloaded later" in warning
    assert "--replace-newer" in warning, warning
    assert "early draft" not in note.read_text(encoding="utf-8")


def test_a_resubmission_dated_after_the_import_before_is_taken_whatever_zone_the_worksheet_gives_its_time_in(
    tmp_path,
):
    """The worksheet gives `Last modified (submission)` in the zone of whoever downloaded it, the zip its dates in the
    server's. A submission imported without a worksheet, then a resubmission whose new files are dated after it: a
    worksheet three hours behind the server says 11:05 of a resubmission made at 14:05, before the 12:00 of the file
    imported before. The dates tell, and the resubmission is taken: nothing may keep the lecturer on the old essay."""
    import shutil

    vault = tmp_path / "vault"
    shutil.copytree(Path(__file__).resolve().parents[1] / "vault_fixtures" / "feedback-batch", vault)
    base = ["--vault", str(vault), "-a", ASSIGNMENT]
    note = vault / ASSIGNMENT / "submissions" / "1001.md"
    students = cohort()[:3]
    first = _dated_moodle_zip(tmp_path / "first.zip", students, {"essay.docx": (2026, 3, 5, 12, 0, 0)})
    assert CliRunner().invoke(app, ["import", "submissions", str(first), *base]).exit_code == 0
    students[0].files = {"essay.docx": docx_bytes(essay(14, "Essay by Liam O'Sullivan, resubmitted."))}
    second = _dated_moodle_zip(tmp_path / "second.zip", students, {"essay.docx": (2026, 3, 5, 14, 0, 0)})
    worksheet = tmp_path / "worksheet.csv"
    worksheet.write_bytes(
        worksheet_for(cohort()[:3]).replace(
            b"Thursday, 19 November 2026, 10:14 PM", b"Thursday, 5 March 2026, 11:05 AM"
        )
    )
    shown = CliRunner().invoke(app, ["import", "submissions", str(second), *base, "--roster", str(worksheet)])
    assert shown.exit_code == 0, shown.output
    assert "1001: updated" in shown.stdout, shown.stdout
    assert "resubmitted" in note.read_text(encoding="utf-8")
