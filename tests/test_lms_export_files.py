"""A second export never overwrites the first: the lecturer may have edited or uploaded it."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest
from lms_exports import canvas_zip, cohort
from test_lms_canvas import gradebook_bytes
from test_lms_moodle import draft_text, worksheet_bytes
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.lms.exporter import export_feedback
from tierflow.lms.importer import import_submissions

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "Teaching/EDU7001/essay-2"
TODAY = date(2026, 11, 20)


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    vault = tmp_path / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    (vault / ASSIGNMENT / "feedback").mkdir(parents=True)
    shutil.copy(vault / "Teaching/EDU7001/essay-1/rubric.md", vault / ASSIGNMENT / "rubric.md")
    for sid in ("1001", "1002"):
        (vault / ASSIGNMENT / "feedback" / f"{sid} feedback.md").write_text(draft_text(sid), encoding="utf-8")
    return vault


def test_a_second_worksheet_export_is_written_beside_the_first_never_over_it(vault, tmp_path):
    worksheet = tmp_path / "w.csv"
    worksheet.write_bytes(worksheet_bytes())
    first = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=worksheet, today=TODAY)
    assert first.written == [tmp_path / "w (tierflow).csv"]
    (tmp_path / "w (tierflow).csv").write_bytes(b"edited in Excel")
    second = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=worksheet, today=TODAY)
    assert second.written == [tmp_path / "w (tierflow 2026-11-20).csv"]
    assert (tmp_path / "w (tierflow).csv").read_bytes() == b"edited in Excel"
    assert any("w (tierflow).csv exists" in n and "w (tierflow 2026-11-20).csv" in n for n in second.notes)
    third = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=worksheet, today=TODAY)
    assert third.written == [tmp_path / "w (tierflow 2026-11-20 2).csv"]
    given = dict(worksheet=worksheet, out=tmp_path / "o.csv", today=TODAY)
    assert export_feedback(vault, ASSIGNMENT, "moodle-worksheet", **given).written == [tmp_path / "o.csv"]
    again = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", **given)
    assert again.written == [tmp_path / "o (tierflow 2026-11-20).csv"]  # a given --out is no exception


def test_a_second_canvas_export_keeps_its_csv_and_comments_zip_together(vault, tmp_path):
    import_submissions(vault, ASSIGNMENT, canvas_zip(tmp_path / "submissions.zip", cohort()))
    gradebook = tmp_path / "g.csv"
    gradebook.write_bytes(gradebook_bytes())
    run = dict(gradebook=gradebook, column="4512", today=TODAY)
    assert export_feedback(vault, ASSIGNMENT, "canvas", **run).written == [
        tmp_path / "g (tierflow).csv",
        tmp_path / "g (tierflow) comments.zip",
    ]
    (tmp_path / "g (tierflow).csv").unlink()  # uploaded, then tidied away: its comments zip is still there
    assert export_feedback(vault, ASSIGNMENT, "canvas", **run).written == [
        tmp_path / "g (tierflow 2026-11-20).csv",
        tmp_path / "g (tierflow 2026-11-20) comments.zip",
    ]


def test_a_second_feedback_files_zip_is_a_new_file(vault, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = export_feedback(vault, ASSIGNMENT, "moodle-files", today=TODAY).written
    second = export_feedback(vault, ASSIGNMENT, "moodle-files", today=TODAY).written
    assert first == [tmp_path / "essay-2 feedback files.zip"]
    assert second == [tmp_path / "essay-2 feedback files (tierflow 2026-11-20).zip"]


def test_the_cli_says_where_a_second_export_went(vault, tmp_path):
    worksheet = tmp_path / "w.csv"
    worksheet.write_bytes(worksheet_bytes())
    args = ["export", "feedback", "--vault", str(vault), "-a", ASSIGNMENT, "--to", "moodle-worksheet"]
    CliRunner().invoke(app, [*args, "--worksheet", str(worksheet)])
    result = CliRunner().invoke(app, [*args, "--worksheet", str(worksheet)])
    assert result.exit_code == 0, result.output
    (dated,) = [p for p in tmp_path.glob("w (tierflow 2*).csv")]
    assert f"wrote {dated}" in result.stdout
    assert "w (tierflow).csv exists" in " ".join(result.stderr.split())


def test_a_second_export_given_no_day_is_dated_by_tierflows_clock_not_the_machines(vault, tmp_path, monkeypatch):
    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2031-03-04T23:30:00+00:00")
    worksheet = tmp_path / "w.csv"
    worksheet.write_bytes(worksheet_bytes())
    assert export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=worksheet).written == [
        tmp_path / "w (tierflow).csv"
    ]
    second = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=worksheet)
    assert second.written == [tmp_path / "w (tierflow 2031-03-04).csv"]


def test_files_given_with_a_tilde_are_in_the_home_folder_not_a_folder_named_tilde(vault, tmp_path, monkeypatch):
    """`--worksheet=~/w.csv` (a `~` the shell leaves as it is, after `=` or quoted) was "cannot be read", and
    `--out=~/o.csv` wrote a folder named `~` in the current one, as `--vault=~/...` no longer does."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    (home / "w.csv").write_bytes(worksheet_bytes())
    args = ["export", "feedback", "--vault", str(vault), "-a", ASSIGNMENT, "--to", "moodle-worksheet"]
    result = CliRunner().invoke(app, [*args, "--worksheet=~/w.csv", "--out=~/o.csv"])
    assert result.exit_code == 0, result.output
    assert (home / "o.csv").is_file()
    assert not (elsewhere / "~").exists()


def test_feedback_files_with_no_draft_to_send_write_no_empty_zip(vault, tmp_path, monkeypatch):
    """Every reviewed draft left out (here: a student id that is no Moodle participant id): the command wrote an empty
    zip and said `wrote ...`, to be uploaded to Moodle as though it held the cohort's feedback."""
    monkeypatch.chdir(tmp_path)
    feedback = vault / ASSIGNMENT / "feedback"
    for sid in ("1001", "1002"):
        (feedback / f"{sid} feedback.md").unlink()
    (feedback / "s2026004 feedback.md").write_text(draft_text("1001").replace('"1001"', '"s2026004"'))
    args = ["export", "feedback", "--vault", str(vault), "-a", ASSIGNMENT, "--to", "moodle-files"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "student id s2026004 is not a Moodle participant id" in result.stderr
    assert "no feedback file to send (see above), so no zip was written" in result.stderr
    assert "wrote" not in result.stdout and list(tmp_path.glob("*.zip")) == []


def test_canvas_with_no_comment_to_send_and_no_gradebook_says_nothing_was_written(vault, tmp_path, monkeypatch):
    """The drafts' submissions were never imported from Canvas, so no comment file can be named as Canvas needs, and
    no gradebook was given: the command wrote nothing and ended without a word of it on stdout or stderr."""
    monkeypatch.chdir(tmp_path)
    args = ["export", "feedback", "--vault", str(vault), "-a", ASSIGNMENT, "--to", "canvas"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "no comment to send (see above) and no --gradebook, so nothing was written" in result.stderr
    assert "wrote" not in result.stdout and list(tmp_path.iterdir()) == [vault]
