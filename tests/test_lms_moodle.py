"""The filled Moodle grading worksheet and feedback-files zip, held to Moodle's own importer rules (tests/lms_rules.py:
lib/csvlib.class.php, mod/assign/feedback/offline/importgradeslib.php and locallib.php,
mod/assign/feedback/file/importziplib.php)."""

from __future__ import annotations

import io
import shutil
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lms_exports import cohort, moodle_zip
from lms_rules import (
    MOODLE_DATE,
    MoodleGrade,
    MoodleRejected,
    moodle_feedback_zip_matches,
    moodle_import_worksheet,
    php_fputcsv,
    unformat_float,
)
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.lms.drafts import collect
from tierflow.lms.exporter import ExportFeedbackError, export_feedback
from tierflow.lms.importer import import_submissions
from tierflow.lms.marks import mark_of, scale_of
from tierflow.vault.rubric import load_rubric

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "Teaching/EDU7001/essay-2"
HEADER = [
    "Identifier",
    "Full name",
    "Email address",
    "Status",
    "Grade",
    "Maximum Grade",
    "Grade can be changed",
    "Last modified (submission)",
    "Online text",
    "Last modified (grade)",
    "Feedback comments",
]
GRADED_AT = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
STUDENTS = [
    ("1001", "Liam O'Sullivan"),
    ("1002", "Chloé Dubois-Martin"),
    ("1003", "Anne-Marie Łukasik"),
    ("1004", "Kofi Mensah"),
]
LEVELS = {
    "1001": ("Good", 65, "Excellent", 72),
    "1002": ("Excellent", 75, "Good", 64),
    "1003": ("Satisfactory", 55, "Weak", 45),
    "1004": ("Good", 62, "Good", 66),
}


def worksheet_bytes(*, advanced: bool = False, blind: bool = False) -> bytes:
    """A worksheet as Moodle writes it: UTF-8 BOM, fputcsv quoting, `\\n`; one graded row, odd cells to keep."""
    header = [h for h in HEADER if not (advanced and h == "Grade")]
    if blind:
        header = [h for h in header if h not in ("Full name", "Email address")]
    lines = [php_fputcsv(header)]
    for sid, name in STUDENTS:
        cells = {
            "Identifier": f"Participant {sid}",
            "Full name": name,
            "Email address": f"{sid}@example.ac.uk",
            "Status": "Submitted for grading\nAssignment was submitted 2 hours late" if sid == "1003" else "Submitted",
            "Grade": "58.00" if sid == "1004" else "",
            "Maximum Grade": "100.00",
            "Grade can be changed": "Yes",
            "Last modified (submission)": "Thursday, 19 November 2026, 10:14 PM",
            "Online text": 'He wrote "feedback, then action" \\ twice' if sid == "1002" else "",
            "Last modified (grade)": GRADED_AT.strftime(MOODLE_DATE) if sid == "1004" else "-",
            "Feedback comments": "",
        }
        lines.append(php_fputcsv([cells[h] for h in header]))
    return b"\xef\xbb\xbf" + "".join(lines).encode("utf-8")


def draft_text(sid: str, status: str = "reviewed", mark: str | None = None) -> str:
    a_level, a_score, b_level, b_score = LEVELS[sid]
    sections = []
    for criterion, level, score in (
        ("Argument and critical evaluation", a_level, a_score),
        ("Use of literature", b_level, b_score),
        ("Structure and clarity", a_level, a_score),
        ("Referencing and academic conventions", b_level, b_score),
    ):
        sections.append(
            f"## {criterion}\n\n**Suggested level:** {level} · **suggested score:** {score}\n\n"
            f"A comment on {criterion.lower()}, with a line\nbreak.\n"
        )
    extra = f"mark: {mark}\n" if mark else ""
    return (
        f'---\ntitle: "Feedback: {dict(STUDENTS)[sid]}"\nstudent_id: "{sid}"\nstatus: {status}\n{extra}---\n\n'
        "> [!info] Draft feedback by tierflow, for the lecturer to review before release\n> Structured.\n\n"
        + "\n".join(sections)
        + "## Next steps\n\n- Read Sadler (1989).\n\n## Overall\n\nA sound essay.\n"
    )


@pytest.fixture
def graded_vault(tmp_path: Path) -> Path:
    vault = tmp_path / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    (vault / ASSIGNMENT / "feedback").mkdir(parents=True)
    shutil.copy(vault / "Teaching/EDU7001/essay-1/rubric.md", vault / ASSIGNMENT / "rubric.md")
    for sid, _ in STUDENTS:
        status = "draft" if sid == "1004" else "reviewed"
        # Named as helper "vault" names drafts now, so nothing is found by file name.
        (vault / ASSIGNMENT / "feedback" / f"{sid} feedback.md").write_text(draft_text(sid, status), encoding="utf-8")
    (vault / ASSIGNMENT / "feedback" / "Cohort summary.md").write_text("---\nstatus: reviewed\n---\nCohort.\n")
    return vault


def test_the_importer_port_itself_rejects_and_skips_as_moodle_does():
    """The rules fail where Moodle fails, so passing them means something."""
    good = worksheet_bytes()
    ids = {sid for sid, _ in STUDENTS}
    assert moodle_import_worksheet(good, participants=ids, maximum=100)["1001"] == {"feedback": ""}
    ragged = good + b"Participant 9,extra\n"
    with pytest.raises(MoodleRejected, match="csvweirdcolumns"):
        moodle_import_worksheet(ragged, participants=ids, maximum=100)
    with pytest.raises(MoodleRejected, match="invalidgradeimport"):
        moodle_import_worksheet(worksheet_bytes(advanced=True), participants=ids, maximum=100)
    assert unformat_float("7,5") == 7 and unformat_float("B+") == 0 and unformat_float("") is None
    later = MoodleGrade(58.0, GRADED_AT + timedelta(seconds=61))
    filled = good.replace(b"58.00", b"70")
    assert moodle_import_worksheet(filled, participants=ids, maximum=100, existing={"1004": later})["1004"] == {}


def test_filled_worksheet_changes_only_grade_and_feedback_and_moodle_imports_every_reviewed_row(graded_vault, tmp_path):
    downloaded = tmp_path / "Grades-EDU7001-Essay 2-4512.csv"
    downloaded.write_bytes(worksheet_bytes())
    before = downloaded.read_bytes()
    quoted = graded_vault / ASSIGNMENT / "feedback" / "1001 feedback.md"
    quoted.write_text(quoted.read_text() + '\n> You wrote "<script>alert(1)</script>".\n')
    result = export_feedback(graded_vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded)
    assert downloaded.read_bytes() == before  # the lecturer's file is never written
    out = tmp_path / "Grades-EDU7001-Essay 2-4512 (tierflow).csv"
    assert result.written == [out]
    data = out.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and b"\r\n" not in data

    imported = moodle_import_worksheet(
        data,
        participants={sid for sid, _ in STUDENTS},
        maximum=100,
        existing={"1004": MoodleGrade(58.0, GRADED_AT)},
    )
    assert set(result.sent) == {"1001", "1002", "1003"}
    for sid in result.sent:
        assert imported[sid]["grade"] == float(result.marks[sid]) and 0 <= imported[sid]["grade"] <= 100
        feedback = str(imported[sid]["feedback"])
        assert feedback.startswith("<h2>") and "\n" not in feedback and "<br>" in feedback
        assert "[!info]" not in feedback and "Draft feedback by tierflow" not in feedback
        assert "<script>" not in feedback and not feedback.endswith("<br>")
    assert "&lt;script&gt;" in str(imported["1001"]["feedback"])  # a quoted student's markup stays text
    assert imported["1004"] == {"feedback": ""}  # not reviewed: its row is as downloaded
    # Every other cell, the row order and the quoting: byte for byte.
    old_lines = before.decode("utf-8-sig").split("\n")
    new_lines = data.decode("utf-8-sig").split("\n")
    assert len(old_lines) == len(new_lines)
    import csv

    old_rows = list(csv.reader(io.StringIO(before.decode("utf-8-sig"))))
    new_rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    keep = [i for i, h in enumerate(HEADER) if h not in ("Grade", "Feedback comments")]
    for old, new in zip(old_rows, new_rows, strict=True):
        assert [old[i] for i in keep] == [new[i] for i in keep]
    assert '"He wrote ""feedback, then action"" \\ twice"' in data.decode("utf-8")
    assert "Submitted for grading\nAssignment was submitted 2 hours late" in data.decode("utf-8")
    assert php_fputcsv(new_rows[1]).encode() in data  # each row as PHP's fputcsv writes it
    assert [p for p, why in result.left_out if "not reviewed" in why] == [f"{ASSIGNMENT}/feedback/1004 feedback.md"]


def test_worksheet_students_without_a_draft_are_named_and_their_rows_stay_as_downloaded(graded_vault, tmp_path):
    chloe = [s for s in cohort() if s.participant == "1002"]
    import_submissions(graded_vault, ASSIGNMENT, moodle_zip(tmp_path / "submissions.zip", chloe))
    for sid in ("1002", "1003"):  # 1002's draft deleted (or its drafting failed); 1003 has no submission either
        (graded_vault / ASSIGNMENT / "feedback" / f"{sid} feedback.md").unlink()
    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(worksheet_bytes())
    before = downloaded.read_bytes()
    result = export_feedback(graded_vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded)

    assert result.sent == ["1001"]
    ((sid, why),) = result.untouched
    assert sid == "1002" and "no feedback draft" in why and "left as it was" in why
    assert result.no_submission == ["1003"]
    import csv

    data = (tmp_path / "worksheet (tierflow).csv").read_bytes()
    old_rows = list(csv.reader(io.StringIO(before.decode("utf-8-sig"))))
    new_rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    for i in (2, 3):  # 1002, 1003: byte for byte as downloaded
        assert new_rows[i] == old_rows[i] and php_fputcsv(old_rows[i]).encode() in data
    assert new_rows[1] != old_rows[1]

    args = ["export", "feedback", "--vault", str(graded_vault), "-a", ASSIGNMENT, "--to", "moodle-worksheet"]
    dry = CliRunner().invoke(app, [*args, "--worksheet", str(downloaded), "--dry-run"])
    assert "1 student(s) in worksheet.csv left as they were:\n  1002: no feedback draft" in dry.stderr
    assert "1 student(s) in worksheet.csv with no submission note in the vault, left as they were: 1003" in dry.stderr


def test_marks_come_from_the_rubric_and_the_lecturers_edits_win(graded_vault):
    rubric = load_rubric(graded_vault, f"{ASSIGNMENT}/rubric.md")
    assert scale_of(rubric) == 100  # levels are `70+`, `60-69`, ...: out of 100
    drafts = collect(graded_vault, ASSIGNMENT)
    assert mark_of(rubric, drafts.reviewed["1001"]).value == pytest.approx((65 + 72 + 65 + 72) / 4)
    path = graded_vault / ASSIGNMENT / "feedback" / "1002 feedback.md"
    edited = path.read_text().replace("Excellent · **suggested score:** 75", "Weak · **suggested score:** 40", 1)
    path.write_text(edited)
    assert mark_of(rubric, collect(graded_vault, ASSIGNMENT).reviewed["1002"]).value == pytest.approx(
        (40 + 64 + 75 + 64) / 4
    )
    path.write_text(draft_text("1002", mark="81.5"))
    own = mark_of(rubric, collect(graded_vault, ASSIGNMENT).reviewed["1002"])
    assert own.value == 81.5 and own.source == "your mark"


def test_a_rubric_whose_marks_read_two_ways_stops_the_export_before_anything_is_written(graded_vault, tmp_path):
    (graded_vault / ASSIGNMENT / "rubric.md").write_text(
        "## Argument and critical evaluation (20 marks)\n\n- Excellent (17+): x\n- Good (10-16): y\n\n"
        "## Use of literature (20 marks)\n\n- Excellent (17-20): x\n- Good (10-16): y\n"
    )
    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(worksheet_bytes())
    with pytest.raises(ExportFeedbackError, match=r"no marks can be worked out.*'Argument and critical evaluation'"):
        export_feedback(graded_vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded)
    assert not list(tmp_path.glob("*(tierflow*"))


def test_a_level_changed_without_its_score_keeps_that_students_mark_out_and_says_so(graded_vault, tmp_path):
    path = graded_vault / ASSIGNMENT / "feedback" / "1002 feedback.md"
    edited = path.read_text().replace("**Suggested level:** Excellent", "**Suggested level:** Fail", 1)
    path.write_text(edited)  # the level changed, the score (75) not
    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(worksheet_bytes())
    result = export_feedback(graded_vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded)
    assert "1002" not in result.marks and {"1001", "1003"} <= set(result.marks)
    (note,) = [n for n in result.notes if n.startswith("1002")]
    assert "Chloé Dubois-Martin" in note and "'Argument and critical evaluation'" in note
    assert "score 75 is outside level 'Fail' (<40)" in note and "Grade cell is left as it was" in note
    imported = moodle_import_worksheet(
        result.written[0].read_bytes(), participants={sid for sid, _ in STUDENTS}, maximum=100
    )
    assert "grade" not in imported["1002"]


def test_advanced_grading_switches_the_worksheet_off_and_the_error_offers_feedback_files(graded_vault, tmp_path):
    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(worksheet_bytes(advanced=True))
    with pytest.raises(ExportFeedbackError, match="advanced grading method.*--to moodle-files"):
        export_feedback(graded_vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded)
    with pytest.raises(ExportFeedbackError, match="moodle-files"):
        export_feedback(graded_vault, ASSIGNMENT, "moodle-worksheet")
    with pytest.raises(ExportFeedbackError, match="never writes into it"):
        downloaded.write_bytes(worksheet_bytes())
        export_feedback(graded_vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded, out=downloaded)


def test_a_blind_marking_worksheet_is_filled_by_participant_id(graded_vault, tmp_path):
    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(worksheet_bytes(blind=True))
    result = export_feedback(graded_vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded)
    imported = moodle_import_worksheet(
        result.written[0].read_bytes(), participants={s for s, _ in STUDENTS}, maximum=100
    )
    assert all("grade" in imported[sid] for sid in ("1001", "1002", "1003"))


def test_a_worksheet_saved_again_by_excel_is_filled_in_its_own_encoding_and_separator(graded_vault, tmp_path):
    from lms_exports import excel_resaved

    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(excel_resaved(worksheet_bytes(), delimiter=";", encoding="cp1252"))
    before = downloaded.read_bytes()
    result = export_feedback(graded_vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded)
    assert any("Windows-1252, ;-separated" in note for note in result.notes)
    data = result.written[0].read_bytes()
    imported = moodle_import_worksheet(
        data, participants={s for s, _ in STUDENTS}, maximum=100, encoding="WINDOWS-1252", separator="semicolon"
    )
    assert set(result.sent) == {"1001", "1002", "1003"}
    for sid in result.sent:
        assert imported[sid]["grade"] == float(result.marks[sid]) and str(imported[sid]["feedback"]).startswith("<")
    # The rows tierflow did not fill (the header, 1004 not reviewed) are the lecturer's bytes, line ends and all.
    assert data.split(b"\r\n")[0] == before.split(b"\r\n")[0]
    assert [r for r in data.split(b"\r\n") if b"Participant 1004" in r] == [
        r for r in before.split(b"\r\n") if b"Participant 1004" in r
    ]


@pytest.mark.parametrize("fmt", [".docx", ".pdf"])
def test_feedback_files_zip_is_matched_by_moodles_zip_importer(graded_vault, tmp_path, fmt):
    out = tmp_path / "feedback.zip"
    result = export_feedback(graded_vault, ASSIGNMENT, "moodle-files", out=out, fmt=fmt)
    assert result.written == [out]
    data = out.read_bytes()
    matched = moodle_feedback_zip_matches(data, {sid for sid, _ in STUDENTS})
    assert matched == {sid: [f"feedback{fmt}"] for sid in ("1001", "1002", "1003")}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        assert all("_" not in n.split("/")[0].split("_assignsubmission")[0].rsplit("_", 1)[0] for n in names)
        body = z.read(names[0])
    if fmt == ".docx":
        import docx

        text = "\n".join(p.text for p in docx.Document(io.BytesIO(body)).paragraphs)
        assert "Argument and critical evaluation" in text and "Draft feedback by tierflow" not in text
    else:
        from pypdf import PdfReader

        assert "Argument and critical evaluation" in PdfReader(io.BytesIO(body)).pages[0].extract_text()


def test_an_underscore_in_a_name_would_break_the_match_so_it_becomes_a_space():
    from tierflow.lms.moodle import feedback_folder

    folder = feedback_folder("1001", "Jo_Ann O'Neil")
    assert folder == "Jo Ann ONeil_1001_assignsubmission_file"
    assert moodle_feedback_zip_matches(_zip({f"{folder}/feedback.docx": b"x"}), {"1001"}) == {"1001": ["feedback.docx"]}
    assert moodle_feedback_zip_matches(_zip({"Jo_Ann_1001_assignsubmission_file/f.docx": b"x"}), {"1001"}) == {}


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buffer.getvalue()


def test_cli_export_shows_the_distribution_counts_left_out_drafts_and_prints_the_path(graded_vault, tmp_path):
    downloaded = tmp_path / "worksheet.csv"
    downloaded.write_bytes(worksheet_bytes())
    args = ["export", "feedback", "--vault", str(graded_vault), "-a", ASSIGNMENT, "--to", "moodle-worksheet"]
    dry = CliRunner().invoke(app, [*args, "--worksheet", str(downloaded), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "marks to be written:" in dry.stdout and "n=3" in dry.stdout and "wrote" not in dry.stdout
    assert not (tmp_path / "worksheet (tierflow).csv").exists()
    real = CliRunner().invoke(app, [*args, "--worksheet", str(downloaded)])
    assert f"wrote {tmp_path / 'worksheet (tierflow).csv'}" in real.stdout
    assert "1 draft(s) left out: 1 not reviewed" in real.stderr
    help_text = CliRunner().invoke(app, ["export", "feedback", "--help"]).stdout
    for option in ("--to", "--out", "--worksheet", "--gradebook", "--column", "--decimals", "--format", "--dry-run"):
        assert option in help_text


GERMAN = ["ID", "Vollständiger Name", "E-Mail-Adresse", "Status", "Bewertung", "Bestwertung",
          "Bewertung kann geändert werden", "Zuletzt geändert (Abgabe)", "Online-Texteingabe",
          "Zuletzt geändert (Bewertung)", "Feedback als Kommentar"]  # fmt: skip


def german_worksheet() -> bytes:
    """The grading worksheet a Moodle set to German writes: the same columns, named in German, and
    `get_string('hiddenuser')` = `Teilnehmer/in` (no space) before each participant id."""
    lines = [php_fputcsv(GERMAN)]
    for sid, name in STUDENTS:
        row = [f"Teilnehmer/in{sid}", name, f"{sid}@example.ac.uk", "Zur Bewertung abgegeben", "", "100,00", "Ja",
               "Donnerstag, 19. November 2026, 22:14", "", "-", ""]  # fmt: skip
        lines.append(php_fputcsv(row))
    return b"\xef\xbb\xbf" + "".join(lines).encode("utf-8")


def test_a_worksheet_in_another_language_says_to_download_it_in_english(graded_vault, tmp_path):
    downloaded = tmp_path / "Bewertungen.csv"
    downloaded.write_bytes(german_worksheet())
    with pytest.raises(ExportFeedbackError) as caught:
        export_feedback(graded_vault, ASSIGNMENT, "moodle-worksheet", worksheet=downloaded)
    said = str(caught.value)
    assert "Bewertungen.csv" in said and "Teilnehmer/in1001" in said and "not in English" in said
    assert "user menu > Language" in said and "upload it back in English" in said
    assert "Download it from the assignment" not in said
    from tierflow.lms.source import ExportError

    with pytest.raises(ExportError) as caught:
        import_submissions(graded_vault, ASSIGNMENT, moodle_zip(tmp_path / "e.zip", cohort()), roster=downloaded)
    assert "user menu > Language" in str(caught.value)
    assert not (graded_vault / ASSIGNMENT / "submissions").exists()
