"""How the export reads the vault's notes: as Obsidian shows them whatever saved them (a UTF-8 BOM from Notepad),
and a note it cannot read is named with the reason, the rest exported."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lms_exports import canvas_zip, cohort, moodle_zip
from test_lms_moodle import draft_text, worksheet_bytes

from tierflow.lms.exporter import export_feedback
from tierflow.lms.importer import import_submissions

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "Teaching/EDU7001/essay-2"
BOM = b"\xef\xbb\xbf"


def imported(tmp_path: Path, platform: str) -> Path:
    """A vault whose essay-2 submissions came from `platform`, with a reviewed draft for 1001-1003."""
    vault = tmp_path / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    (vault / ASSIGNMENT / "feedback").mkdir(parents=True)
    shutil.copy(vault / "Teaching/EDU7001/essay-1/rubric.md", vault / ASSIGNMENT / "rubric.md")
    make = canvas_zip if platform == "canvas" else moodle_zip
    import_submissions(vault, ASSIGNMENT, make(tmp_path / "submissions.zip", cohort()))
    for sid in ("1001", "1002", "1003"):
        (vault / ASSIGNMENT / "feedback" / f"{sid} feedback.md").write_text(draft_text(sid), encoding="utf-8")
    return vault


def with_bom(path: Path) -> None:
    """As Windows Notepad saves a note: UTF-8 with a byte-order mark."""
    path.write_bytes(BOM + path.read_bytes())


def worksheet(tmp_path: Path) -> Path:
    path = tmp_path / "worksheet.csv"
    path.write_bytes(worksheet_bytes())
    return path


def test_a_reviewed_draft_saved_with_a_bom_is_exported_with_its_mark(tmp_path):
    vault = imported(tmp_path, "moodle")
    with_bom(vault / ASSIGNMENT / "feedback" / "1002 feedback.md")
    result = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=worksheet(tmp_path), dry_run=True)
    assert result.sent == ["1001", "1002", "1003"]
    assert "1002" in result.marks
    assert all(sid != "1002" for sid, _ in result.untouched)


@pytest.mark.parametrize("target", ["moodle-worksheet", "moodle-files"])
def test_a_canvas_submission_note_saved_with_a_bom_is_still_refused_for_moodle(tmp_path, target):
    vault = imported(tmp_path, "canvas")
    with_bom(vault / ASSIGNMENT / "submissions" / "1001.md")
    result = export_feedback(
        vault, ASSIGNMENT, target, worksheet=worksheet(tmp_path), out=tmp_path / "out.zip", dry_run=True
    )
    assert "1001" not in result.sent and "1001" not in result.marks
    refused = [path for path, why in result.left_out if "imported from canvas" in why]
    assert f"{ASSIGNMENT}/feedback/1001 feedback.md" in refused


MALFORMED = '---\nstudent_id: "1002"\nname: Ben: Carter: x\nplatform: moodle\n---\nMy essay.\n'


@pytest.mark.parametrize("target", ["moodle-worksheet", "moodle-files"])
def test_a_submission_note_with_malformed_yaml_leaves_that_student_out_by_name_and_exports_the_rest(tmp_path, target):
    vault = imported(tmp_path, "moodle")
    (vault / ASSIGNMENT / "submissions" / "1002.md").write_text(MALFORMED, encoding="utf-8")
    result = export_feedback(
        vault, ASSIGNMENT, target, worksheet=worksheet(tmp_path), out=tmp_path / "out.zip", dry_run=True
    )
    assert result.sent == ["1001", "1003"] and "1002" not in result.marks
    ((path, why),) = [(p, w) for p, w in result.left_out if "1002" in p]
    assert path == f"{ASSIGNMENT}/feedback/1002 feedback.md"
    assert f"{ASSIGNMENT}/submissions/1002.md" in why and "line 3, column 10" in why
    assert "quotes" in why and "between the --- lines" in why


def test_the_cli_dry_run_names_a_malformed_submission_note_and_carries_on(tmp_path):
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    vault = imported(tmp_path, "moodle")
    (vault / ASSIGNMENT / "submissions" / "1002.md").write_text(MALFORMED, encoding="utf-8")
    args = ["export", "feedback", "--vault", str(vault), "-a", ASSIGNMENT, "--to", "moodle-worksheet"]
    result = CliRunner().invoke(app, [*args, "--worksheet", str(worksheet(tmp_path)), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "1001: sent" in result.stdout and "1003: sent" in result.stdout and "1002: sent" not in result.stdout
    assert f"{ASSIGNMENT}/submissions/1002.md" in result.stderr and "line 3, column 10" in result.stderr
    assert "Traceback" not in result.output and "ScannerError" not in result.output


def test_a_draft_with_malformed_yaml_is_left_out_with_the_line_and_column(tmp_path):
    vault = imported(tmp_path, "moodle")
    (vault / ASSIGNMENT / "feedback" / "1002 feedback.md").write_text(MALFORMED, encoding="utf-8")
    result = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=worksheet(tmp_path), dry_run=True)
    ((path, why),) = [(p, w) for p, w in result.left_out if "1002" in p]
    assert why.startswith("unreadable front-matter") and "line 3, column 10" in why
