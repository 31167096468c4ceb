"""What the downloaded worksheet or gradebook already holds stays as it is unless the lecturer says otherwise: a second
marker's Feedback comments, a moderated Grade, a Canvas score or EX (excused). Both platforms' importers apply any
changed value, so a filled cell over them would overwrite the one, and un-excuse the student for the other."""

from __future__ import annotations

import csv
import io
import shutil
import zipfile
from decimal import Decimal
from pathlib import Path

from lms_exports import canvas_base, canvas_zip, cohort
from lms_rules import MoodleGrade, canvas_import_gradebook, moodle_import_worksheet, php_fputcsv
from test_lms_canvas import ASSIGNMENTS, gradebook_bytes
from test_lms_moodle import GRADED_AT, STUDENTS, draft_text, worksheet_bytes
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.lms.exporter import ExportFeedbackError, export_feedback
from tierflow.lms.importer import import_submissions

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "Teaching/EDU7001/essay-2"
RUTH = "<p>Second marker: the argument needs a counter-case. Ruth</p>"


def vault_with_drafts(tmp_path: Path, reviewed: tuple[str, ...], platform: str = "") -> Path:
    """The feedback vault with a reviewed draft for each of `reviewed` (imported from `platform`, when given)."""
    vault = tmp_path / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    (vault / ASSIGNMENT / "feedback").mkdir(parents=True)
    shutil.copy(vault / "Teaching/EDU7001/essay-1/rubric.md", vault / ASSIGNMENT / "rubric.md")
    if platform == "canvas":
        import_submissions(vault, ASSIGNMENT, canvas_zip(tmp_path / "submissions.zip", cohort()))
    for sid in reviewed:
        (vault / ASSIGNMENT / "feedback" / f"{sid} feedback.md").write_text(draft_text(sid), encoding="utf-8")
    return vault


def rows_of(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))


def worksheet_holding(cells: dict[str, dict[str, str]]) -> bytes:
    """The worksheet as Moodle writes it, where some rows already hold a grade or feedback comments."""
    rows = rows_of(worksheet_bytes())
    header = rows[0]
    for row in rows[1:]:
        for column, value in cells.get(row[0].removeprefix("Participant "), {}).items():
            row[header.index(column)] = value
    return b"\xef\xbb\xbf" + "".join(php_fputcsv(r) for r in rows).encode("utf-8")


def test_a_second_markers_comments_and_a_moderated_grade_stay_unless_replace_existing(tmp_path):
    vault = vault_with_drafts(tmp_path, ("1001", "1002", "1003"))
    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(
        worksheet_holding(
            {
                "1001": {"Feedback comments": RUTH},  # a second marker's comments, no grade yet
                "1002": {"Grade": "64.00", "Last modified (grade)": "Friday, 20 November 2026, 9:30 AM"},
            }
        )
    )
    before = rows_of(downloaded.read_bytes())
    result = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded)
    assert result.sent == ["1003"] and set(result.marks) == {"1003"}
    held = dict(result.kept_existing)
    assert held == {
        "1001 (Liam O'Sullivan)": "Feedback comments 'Second marker: the argument needs a counter-case. Ruth'",
        "1002 (Chloé Dubois-Martin)": "Grade 64.00",
    }
    data = result.written[0].read_bytes()
    after = rows_of(data)
    assert after[1] == before[1] and after[2] == before[2]  # as downloaded
    assert php_fputcsv(before[1]).encode() in data and php_fputcsv(before[2]).encode() in data
    ids = {sid for sid, _ in STUDENTS}
    imported = moodle_import_worksheet(
        data, participants=ids, maximum=100, existing={"1002": MoodleGrade(64.0, GRADED_AT)}
    )
    assert imported["1001"] == {"feedback": RUTH}  # Moodle keeps Ruth's comments
    assert "grade" not in imported["1002"] and imported["1002"]["feedback"] == ""  # and the moderated grade

    replaced = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded, replace_existing=True)
    assert replaced.sent == ["1001", "1002", "1003"] and not replaced.kept_existing
    imported = moodle_import_worksheet(replaced.written[0].read_bytes(), participants=ids, maximum=100)
    assert imported["1001"]["feedback"] != RUTH and imported["1002"]["grade"] == float(replaced.marks["1002"])

    args = ["export", "feedback", "--vault", str(vault), "-a", ASSIGNMENT, "--to", "moodle-worksheet"]
    shown = CliRunner().invoke(app, [*args, "--worksheet", str(downloaded), "--dry-run"])
    assert shown.exit_code == 0, shown.output
    assert "2 student(s) already graded or commented in worksheet.csv, left as they are" in shown.stderr
    assert "--replace-existing" in shown.stderr and "  1002 (Chloé Dubois-Martin): Grade 64.00" in shown.stderr
    assert "1003: sent" in shown.stdout and "1001: sent" not in shown.stdout


def test_a_worksheet_holding_this_exports_own_grades_is_filled_again_without_a_word(tmp_path):
    """Downloaded again after the upload: the rows hold what tierflow wrote, which is no one else's."""
    vault = vault_with_drafts(tmp_path, ("1001", "1002", "1003"))
    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(worksheet_bytes())
    first = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded)
    again = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=first.written[0], out=tmp_path / "2.csv")
    assert again.sent == first.sent and again.marks == first.marks and not again.kept_existing
    assert (tmp_path / "2.csv").read_bytes() == first.written[0].read_bytes()


def gradebook_holding(cells: dict[str, str]) -> bytes:
    """The gradebook as Canvas exports it, where some students' Essay 2 cells already hold a score or EX."""
    rows = rows_of(gradebook_bytes())
    column = rows[0].index("Essay 2 (4512)")
    for row in rows[2:]:
        row[column] = cells.get(row[1], row[column])
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode("utf-8")


def test_canvas_ex_and_an_existing_score_stay_unless_replace_existing(tmp_path):
    vault = vault_with_drafts(tmp_path, ("1001", "1002", "1003"), platform="canvas")
    downloaded = tmp_path / "grades.csv"
    downloaded.write_bytes(gradebook_holding({"1001": "EX", "1002": "12.50"}))
    result = export_feedback(vault, ASSIGNMENT, "canvas", gradebook=downloaded, column="4512")
    assert result.sent == ["1003"]
    assert dict(result.kept_existing) == {
        "1001 (Liam O'Sullivan)": "EX (excused): a mark would un-excuse the student",
        "1002 (Chloé Dubois-Martin)": "score 12.50",
    }
    csv_out, comments = result.written
    grades = canvas_import_gradebook(csv_out.read_bytes(), ASSIGNMENTS)["grades"]
    assert grades["1001"]["4512"] == "EX" and grades["1002"]["4512"] == "12.50"
    assert Decimal(grades["1003"]["4512"]) == result.marks["1003"]
    with zipfile.ZipFile(comments) as z:  # no comment for a mark the student does not get
        assert [n.split("_")[0] for n in z.namelist()] == [canvas_base("Anne-Marie Łukasik")]

    replaced = export_feedback(
        vault, ASSIGNMENT, "canvas", gradebook=downloaded, column="4512", replace_existing=True, out=tmp_path / "r.csv"
    )
    assert replaced.sent == ["1001", "1002", "1003"] and not replaced.kept_existing
    grades = canvas_import_gradebook((tmp_path / "r.csv").read_bytes(), ASSIGNMENTS)["grades"]
    assert Decimal(grades["1001"]["4512"]) == replaced.marks["1001"]

    args = ["export", "feedback", "--vault", str(vault), "-a", ASSIGNMENT, "--to", "canvas", "--column", "4512"]
    shown = CliRunner().invoke(app, [*args, "--gradebook", str(downloaded), "--dry-run"])
    assert shown.exit_code == 0, shown.output
    assert "  1001 (Liam O'Sullivan): EX (excused): a mark would un-excuse the student" in shown.stderr
    assert "--replace-existing" in shown.stderr


def decimal_comma_worksheet(grades: dict[str, str]) -> bytes:
    """The worksheet saved again by a decimal-comma Excel: `;`, Windows-1252, CRLF, `100,00`, and `grades`."""
    from lms_exports import excel_resaved

    cells = {sid: {"Maximum Grade": "100,00"} for sid, _ in STUDENTS}
    for sid, grade in grades.items():
        cells[sid] |= {"Grade": grade, "Last modified (grade)": "Friday, 20 November 2026, 9:30 AM"}
    return excel_resaved(worksheet_holding(cells), delimiter=";", encoding="cp1252")


def test_a_decimal_comma_worksheet_leaves_every_held_grade_as_moodle_holds_it(tmp_path):
    """Moodle's upload reads `64,75` as 64: a held grade written back as downloaded would be lowered."""
    vault = vault_with_drafts(tmp_path, ("1001", "1002", "1003"))
    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(decimal_comma_worksheet({"1002": "64,75", "1004": "58,00"}))
    result = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded)
    assert result.sent == ["1001", "1003"]
    assert dict(result.kept_existing) == {"1002 (Chloé Dubois-Martin)": "Grade 64,75"}
    held = {"1002": MoodleGrade(64.75, GRADED_AT), "1004": MoodleGrade(58.0, GRADED_AT)}
    imported = moodle_import_worksheet(
        result.written[0].read_bytes(),
        participants={sid for sid, _ in STUDENTS},
        maximum=100,
        existing=held,
        encoding="WINDOWS-1252",
        separator="semicolon",
    )
    assert "grade" not in imported["1002"] and "grade" not in imported["1004"]  # Moodle leaves both as they are
    for sid in result.sent:
        assert imported[sid]["grade"] == float(result.marks[sid])
    assert any("`.` as the decimal point" in n and "1002 (64,75 as 64.75)" in n for n in result.notes)


def test_a_grade_cell_moodle_would_misread_stops_the_export_naming_the_row(tmp_path):
    vault = vault_with_drafts(tmp_path, ("1001",))
    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(decimal_comma_worksheet({"1002": "1.064,75"}))
    try:
        export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded)
    except ExportFeedbackError as exc:
        assert "Participant 1002" in str(exc) and "1.064,75" in str(exc)
    else:
        raise AssertionError("exported a worksheet Moodle would read another grade from")
    assert list(tmp_path.glob("worksheet (tierflow*")) == []


def test_a_level_left_without_a_score_in_a_band_open_at_the_top_names_student_criterion_and_level(tmp_path):
    """The fixture rubric's `Excellent (70+)` gives no top: 70, 85 or 100 would be a guess, so no grade is sent."""
    vault = vault_with_drafts(tmp_path, ("1002",))
    path = vault / ASSIGNMENT / "feedback" / "1002 feedback.md"
    path.write_text(path.read_text().replace(" · **suggested score:** 75", "", 1), encoding="utf-8")
    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(worksheet_bytes())
    result = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded, dry_run=True)
    assert result.sent == ["1002"] and result.marks == {}
    (note,) = [n for n in result.notes if n.startswith("1002 (Chloé Dubois-Martin): feedback sent without a grade")]
    assert "'Argument and critical evaluation'" in note and "'Excellent' (70+)" in note and "give a score" in note


def test_a_windows_1252_worksheet_holding_this_exports_own_character_references_is_filled_again(tmp_path):
    """Windows-1252 has no 王: the export wrote `&#29579;`, which Moodle shows as 王; read back, it is tierflow's."""
    from lms_exports import excel_resaved

    vault = vault_with_drafts(tmp_path, ("1001", "1002"))
    draft = vault / ASSIGNMENT / "feedback" / "1001 feedback.md"
    draft.write_text(draft.read_text(encoding="utf-8") + "\n王芳 and I read it together: 很好.\n", encoding="utf-8")
    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(excel_resaved(worksheet_bytes(), delimiter=";", encoding="cp1252"))
    first = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded)
    assert b"&#29579;&#33459;" in first.written[0].read_bytes()
    again = export_feedback(vault, ASSIGNMENT, "moodle-worksheet", worksheet=first.written[0], out=tmp_path / "2.csv")
    assert again.sent == first.sent == ["1001", "1002"] and not again.kept_existing
    assert (tmp_path / "2.csv").read_bytes() == first.written[0].read_bytes()
