"""Canvas out: the gradebook CSV and the "Re-upload submissions" zip, held to Canvas's own rules (tests/lms_rules.py:
app/models/gradebook_importer.rb, Assignment.title_and_id, Assignment#infer_comment_context_from_filename)."""

from __future__ import annotations

import csv
import io
import shutil
import zipfile
from pathlib import Path

import frontmatter
import pytest
from lms_exports import Student, canvas_zip, cohort
from lms_rules import canvas_import_gradebook
from test_lms_moodle import draft_text

from tierflow.lms.exporter import ExportFeedbackError, export_feedback
from tierflow.lms.importer import import_submissions

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "Teaching/EDU7001/essay-2"
ASSIGNMENTS = {"4512": "Essay 2", "4513": "Quiz 1"}


def gradebook_bytes(students: list[Student] | None = None) -> bytes:
    """A gradebook export as Canvas writes it (Ruby's CSV: quoted only when needed), Points Possible and Test
    Student rows included, totals columns after the assignments; of `students`, else the cohort."""
    rows = [
        ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "Essay 2 (4512)", "Quiz 1 (4513)",
         "Current Score", "Unposted Current Score", "Final Score", "Unposted Final Score"],
        ["    Points Possible", "", "", "", "", "20", "10", "(read only)", "(read only)", "(read only)", "(read only)"],
    ]  # fmt: skip
    for s in cohort() if students is None else students:
        first, _, last = s.name.rpartition(" ")
        rows.append([f"{last}, {first}", s.participant, f"S{s.participant}", f"u{s.participant}", "EDU7001 A",
                     "", "7", "70", "70", "35", "35"])  # fmt: skip
    rows.append(["Student, Test", "99999", "", "", "EDU7001 A", "", "", "", "", "", ""])
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode("utf-8")


@pytest.fixture
def canvas_vault(tmp_path: Path) -> Path:
    vault = tmp_path / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    (vault / ASSIGNMENT / "feedback").mkdir(parents=True)
    shutil.copy(vault / "Teaching/EDU7001/essay-1/rubric.md", vault / ASSIGNMENT / "rubric.md")
    import_submissions(vault, ASSIGNMENT, canvas_zip(tmp_path / "submissions.zip", cohort()))
    for sid in ("1001", "1002", "1003", "1004"):
        status = "draft" if sid == "1003" else "reviewed"
        (vault / ASSIGNMENT / "feedback" / f"{sid} feedback.md").write_text(draft_text(sid, status), encoding="utf-8")
    return vault


def test_the_gradebook_port_rejects_a_foreign_header_and_sees_a_renamed_column_as_new():
    from lms_rules import CanvasRejected

    with pytest.raises(CanvasRejected):
        canvas_import_gradebook(b"Name,Number,Section\nx,1,A\n", ASSIGNMENTS)
    renamed = gradebook_bytes().replace(b"Essay 2 (4512)", b"Essay 2 (final)", 1)
    assert canvas_import_gradebook(renamed, ASSIGNMENTS)["new_assignments"] == ["Essay 2 (final)"]


def test_gradebook_copy_changes_only_the_assignment_column_within_points_possible(canvas_vault, tmp_path):
    downloaded = tmp_path / "2026-11-20T1200_Grades-EDU7001.csv"
    downloaded.write_bytes(gradebook_bytes())
    before = downloaded.read_bytes()
    result = export_feedback(canvas_vault, ASSIGNMENT, "canvas", gradebook=downloaded, column="4512")
    assert downloaded.read_bytes() == before
    out = tmp_path / "2026-11-20T1200_Grades-EDU7001 (tierflow).csv"
    assert result.written[0] == out
    data = out.read_bytes()

    parsed = canvas_import_gradebook(data, ASSIGNMENTS)
    assert parsed["new_assignments"] == [] and set(parsed["columns"]) == {"4512", "4513"}
    assert parsed["points"] == {"4512": "20", "4513": "10"}
    assert sorted(result.sent) == ["1001", "1002", "1004"]
    for sid in result.sent:
        grade = float(parsed["grades"][sid]["4512"])
        assert 0 <= grade <= 20 and grade == float(result.marks[sid])
    assert parsed["grades"]["1003"]["4512"] == ""  # not reviewed
    old = list(csv.reader(io.StringIO(before.decode())))
    new = list(csv.reader(io.StringIO(data.decode())))
    column = old[0].index("Essay 2 (4512)")
    for a, b in zip(old, new, strict=True):
        assert a[:column] + a[column + 1 :] == b[:column] + b[column + 1 :]
    old_lines, new_lines = before.decode().split("\n"), data.decode().split("\n")
    assert old_lines[:2] == new_lines[:2] and old_lines[-2] == new_lines[-2]  # header, points, Test Student
    assert new_lines[-2].startswith('"Student, Test",99999')


def test_reupload_zip_keeps_each_downloaded_name_so_canvas_matches_user_and_attachment(canvas_vault, tmp_path):
    downloaded = tmp_path / "grades.csv"
    downloaded.write_bytes(gradebook_bytes())
    result = export_feedback(canvas_vault, ASSIGNMENT, "canvas", gradebook=downloaded, column="Essay 2 (4512)")
    comments = tmp_path / "grades (tierflow) comments.zip"
    assert comments in result.written
    with zipfile.ZipFile(comments) as z:
        names = sorted(z.namelist())
        assert names == ["duboismartinchloé_1002_9002_Feedback essay.pdf", "osullivanliam_1001_9001_essay.docx"]
        for name in names:
            # infer_comment_context_from_filename: the first two all-digit parts are user id and attachment id.
            user_id, attachment_id = [t for t in name.split("_") if t.isdigit()][:2]
            assert user_id in result.sent and attachment_id.startswith("900")
        pdf = z.read(names[0])
    from pypdf import PdfReader

    assert "Argument and critical evaluation" in PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    # 1004 typed a text entry only: Canvas cannot match a re-upload to it, and the command says so.
    assert any(n.startswith("1004: comment not in the re-upload zip") for n in result.notes)


def test_a_submitted_doc_is_named_as_a_file_tierflow_cannot_write_into_not_a_text_entry(tmp_path):
    vault = tmp_path / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    (vault / ASSIGNMENT / "feedback").mkdir(parents=True)
    shutil.copy(vault / "Teaching/EDU7001/essay-1/rubric.md", vault / ASSIGNMENT / "rubric.md")
    students = cohort()
    students[0].files = {"essay.doc": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600}  # Word 97-2003
    import_submissions(vault, ASSIGNMENT, canvas_zip(tmp_path / "submissions.zip", students))
    for sid in ("1001", "1004"):
        (vault / ASSIGNMENT / "feedback" / f"{sid} feedback.md").write_text(draft_text(sid), encoding="utf-8")
    result = export_feedback(vault, ASSIGNMENT, "canvas", out=tmp_path / "grades.csv")

    (doc,) = [n for n in result.notes if n.startswith("1001: comment not in the re-upload zip")]
    assert "osullivanliam_1001_9001_essay.doc" in doc and "cannot write" in doc and "SpeedGrader" in doc
    assert "text entry" not in doc
    (text,) = [n for n in result.notes if n.startswith("1004: comment not in the re-upload zip")]
    assert "text entry" in text
    assert not (tmp_path / "grades comments.zip").exists()  # nothing else to re-upload


def test_gradebook_students_with_a_submission_but_no_draft_are_named_and_their_cells_kept(canvas_vault, tmp_path):
    downloaded = tmp_path / "grades.csv"
    downloaded.write_bytes(gradebook_bytes().replace(b"EDU7001 A,,7", b"EDU7001 A,12.5,7"))
    result = export_feedback(canvas_vault, ASSIGNMENT, "canvas", gradebook=downloaded, column="4512")

    assert [sid for sid, _ in result.untouched] == ["1005", "1006", "1007"]  # imported, never drafted
    assert all("no feedback draft" in why for _, why in result.untouched)
    assert result.no_submission == []  # the Test Student is no student
    grades = canvas_import_gradebook((tmp_path / "grades (tierflow).csv").read_bytes(), ASSIGNMENTS)["grades"]
    assert all(grades[sid]["4512"] == "12.5" for sid in ("1005", "1006", "1007"))


def test_several_assignments_need_a_column_and_a_wrong_one_is_named(canvas_vault, tmp_path):
    downloaded = tmp_path / "grades.csv"
    downloaded.write_bytes(gradebook_bytes())
    with pytest.raises(ExportFeedbackError, match="say which with --column.*Essay 2 \\(4512\\); Quiz 1 \\(4513\\)"):
        export_feedback(canvas_vault, ASSIGNMENT, "canvas", gradebook=downloaded)
    with pytest.raises(ExportFeedbackError, match="no single assignment column matches 'Essay 3'"):
        export_feedback(canvas_vault, ASSIGNMENT, "canvas", gradebook=downloaded, column="Essay 3")


def test_cli_canvas_export_prints_both_paths_and_never_touches_the_download(canvas_vault, tmp_path):
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    downloaded = tmp_path / "grades.csv"
    downloaded.write_bytes(gradebook_bytes())
    args = ["export", "feedback", "--to", "canvas", "--vault", str(canvas_vault), "-a", ASSIGNMENT]
    result = CliRunner().invoke(app, [*args, "--gradebook", str(downloaded), "--column", "4512"])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'grades (tierflow).csv'}" in result.stdout
    assert f"wrote {tmp_path / 'grades (tierflow) comments.zip'}" in result.stdout
    assert "marks to be written:" in result.stdout and "1 draft(s) left out: 1 not reviewed" in result.stderr
    assert downloaded.read_bytes() == gradebook_bytes()
    same = CliRunner().invoke(app, [*args, "--gradebook", str(downloaded), "--column", "4512", "-o", str(downloaded)])
    assert same.exit_code == 2 and "never writes into it" in same.stderr


@pytest.mark.parametrize("target", ["moodle-files", "moodle-worksheet"])
def test_notes_imported_from_canvas_are_refused_for_moodle_by_name(canvas_vault, tmp_path, target):
    """Canvas user ids are all digits too: Moodle would give the feedback to the participant with that id."""
    from test_lms_moodle import worksheet_bytes

    worksheet = tmp_path / "worksheet.csv"
    worksheet.write_bytes(worksheet_bytes())  # its participants 1001-1004 share the Canvas ids
    result = export_feedback(canvas_vault, ASSIGNMENT, target, out=tmp_path / "out", worksheet=worksheet)
    assert result.sent == [] and result.marks == {}
    refused = {path: why for path, why in result.left_out if "imported from canvas" in why}
    assert sorted(refused) == [f"{ASSIGNMENT}/feedback/{sid} feedback.md" for sid in ("1001", "1002", "1004")]
    why = refused[f"{ASSIGNMENT}/feedback/1001 feedback.md"]
    assert f"{ASSIGNMENT}/submissions/1001.md" in why and "--to canvas" in why
    if target == "moodle-files":  # nothing to send: no empty zip to upload
        assert not (tmp_path / "out").exists()
        assert "no feedback file to send (see above), so no zip was written" in result.notes


def test_notes_imported_from_moodle_are_refused_for_canvas(tmp_path):
    from lms_exports import moodle_zip
    from test_lms_moodle import draft_text

    vault = tmp_path / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    (vault / ASSIGNMENT / "feedback").mkdir(parents=True)
    shutil.copy(vault / "Teaching/EDU7001/essay-1/rubric.md", vault / ASSIGNMENT / "rubric.md")
    import_submissions(vault, ASSIGNMENT, moodle_zip(tmp_path / "export.zip", cohort()))
    (vault / ASSIGNMENT / "feedback" / "1001 feedback.md").write_text(draft_text("1001"), encoding="utf-8")
    gradebook = tmp_path / "grades.csv"
    gradebook.write_bytes(gradebook_bytes())
    result = export_feedback(vault, ASSIGNMENT, "canvas", gradebook=gradebook, column="4512")
    assert result.sent == []
    ((path, why),) = result.left_out
    assert "imported from moodle" in why and "--to moodle-worksheet" in why
    grades = canvas_import_gradebook((tmp_path / "grades (tierflow).csv").read_bytes(), ASSIGNMENTS)["grades"]
    assert grades["1001"]["4512"] == ""


def test_a_level_changed_without_its_score_leaves_that_students_cell_as_it_was(canvas_vault, tmp_path):
    path = canvas_vault / ASSIGNMENT / "feedback" / "1002 feedback.md"
    path.write_text(path.read_text().replace("**Suggested level:** Excellent", "**Suggested level:** Fail", 1))
    gradebook = tmp_path / "grades.csv"
    gradebook.write_bytes(gradebook_bytes())
    result = export_feedback(canvas_vault, ASSIGNMENT, "canvas", gradebook=gradebook, column="4512")
    assert "1002" not in result.marks and "1002" not in result.sent and "1001" in result.marks
    (note,) = [n for n in result.notes if n.startswith("1002 (")]
    assert "'Argument and critical evaluation': score 75 is outside level 'Fail' (<40)" in note
    grades = canvas_import_gradebook((tmp_path / "grades (tierflow).csv").read_bytes(), ASSIGNMENTS)["grades"]
    assert grades["1002"]["4512"] == ""


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("osullivanliam_1001_9001_essay.docx", ("osullivanliam", "1001", False, "9001", "essay.docx", False)),
        (
            "osullivanliam_LATE_1001_9001_my_essay_v2.docx",
            ("osullivanliam", "1001", True, "9001", "my_essay_v2.docx", False),
        ),
        ("smithjane_late_103_9003_essay-1.docx", ("smithjane", "103", True, "9003", "essay-1.docx", False)),
        ("smithjane_103_9003_2026_report.docx", ("smithjane", "103", False, "9003", "2026_report.docx", False)),
        ("brownt_105_text.html", ("brownt", "105", False, "", "text.html", True)),
        ("anon_x7Kq2_9004_essay.docx", ("anon_x7Kq2", "anon_x7Kq2", False, "9004", "essay.docx", False)),
        ("anon_x7Kq2_text.html", ("anon_x7Kq2", "anon_x7Kq2", False, "", "text.html", True)),
        # Canvas keeps `_` in the sortable name (`Doe_Smith, Jane`): the ids are still the first two numeric parts.
        ("doe_smithjane_102_9002_essay.docx", ("doe_smithjane", "102", False, "9002", "essay.docx", False)),
        ("doe_smithjane_LATE_102_9002_essay.docx", ("doe_smithjane", "102", True, "9002", "essay.docx", False)),
        ("doe_smith_jane_102_text.html", ("doe_smith_jane", "102", False, "", "text.html", True)),
        ("101_9008_essay.docx", None),  # no name
        ("101_9008_9009_essay.docx", None),
        ("osullivanliam_1001_essay.docx", None),  # no attachment id
        ("notes.docx", None),
        ("folder/osullivanliam_1001_9001_essay.docx", None),
    ],
)
def test_submission_file_names_are_split_as_canvas_reads_them_back(name, parsed):
    from tierflow.lms.canvas import parse_name

    got = parse_name(name)
    assert (got and (got.base, got.student_id, got.late, got.attachment_id, got.original, got.text_entry)) == parsed
    if parsed and not parsed[5] and not parsed[0].startswith("anon_"):
        # Canvas's re-upload reads the first two all-digit parts as user id and attachment id.
        assert [t for t in name.split("_") if t.isdigit()][:2] == [parsed[1], parsed[3]]


def test_a_student_whose_sortable_name_has_an_underscore_is_imported_and_exported(tmp_path):
    """`Doe_Smith, Jane` came as `doe_smithjane_102_9002_essay.docx`: ignored at import as not named as Canvas names
    files, then reported at export as a student with no submission."""
    from lms_exports import Student, docx_bytes, essay

    vault = tmp_path / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    (vault / ASSIGNMENT / "feedback").mkdir(parents=True)
    shutil.copy(vault / "Teaching/EDU7001/essay-1/rubric.md", vault / ASSIGNMENT / "rubric.md")
    students = cohort()[:1] + [Student("1002", "Jane Doe_Smith", {"essay.docx": docx_bytes(essay(2))})]
    export = canvas_zip(tmp_path / "submissions.zip", students)
    with zipfile.ZipFile(export) as z:
        assert "doe_smithjane_1002_9002_essay.docx" in [i.filename.encode("cp437").decode() for i in z.infolist()]
    report = import_submissions(vault, ASSIGNMENT, export)
    assert not report.ignored and [s.student_id for s in report.students] == ["1001", "1002"]
    for sid in ("1001", "1002"):
        (vault / ASSIGNMENT / "feedback" / f"{sid} feedback.md").write_text(draft_text(sid), encoding="utf-8")
    gradebook = tmp_path / "grades.csv"
    gradebook.write_bytes(gradebook_bytes().replace(b"Dubois-Martin, Chlo\xc3\xa9", b"Doe_Smith, Jane"))
    result = export_feedback(vault, ASSIGNMENT, "canvas", gradebook=gradebook, column="4512")
    assert "1002" in result.sent and "1002" not in result.no_submission
    with zipfile.ZipFile(tmp_path / "grades (tierflow) comments.zip") as z:
        assert "doe_smithjane_1002_9002_essay.docx" in z.namelist()


def split_gradebook_bytes() -> bytes:
    """`gradebook_bytes` as Canvas exports it with "show first and last names separately": `LastName`,
    `FirstName`, then `ID` and the rest."""
    rows = list(csv.reader(io.StringIO(gradebook_bytes().decode())))
    out = [["LastName", "FirstName", *rows[0][1:]], [rows[1][0], "", *rows[1][1:]]]
    for row in rows[2:]:
        last, _, first = row[0].partition(", ")
        out.append([last, first, *row[1:]])
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(out)
    return text.getvalue().encode("utf-8")


def test_a_gradebook_with_first_and_last_names_apart_is_a_roster(lms_vault, tmp_path):
    """Canvas's importer takes `LastName,FirstName,ID,...`; tierflow refused it as "not a Canvas gradebook export",
    and would have read the first name as the user id."""
    from tierflow.lms.roster import read_kept

    data = split_gradebook_bytes()
    assert set(canvas_import_gradebook(data, ASSIGNMENTS)["grades"]) >= {"1001", "1007"}  # Canvas reads it
    roster = tmp_path / "grades.csv"
    roster.write_bytes(data)
    report = import_submissions(
        lms_vault, ASSIGNMENT, canvas_zip(tmp_path / "submissions.zip", cohort()), roster=roster
    )
    assert not report.warnings
    got = {p.stem: frontmatter.load(p).metadata for p in (lms_vault / ASSIGNMENT / "submissions").glob("*.md")}
    assert got["1001"]["name"] == "Liam O'Sullivan" and got["1001"]["sis_ids"] == ["S1001", "u1001"]
    assert got["1002"]["name"] == "Chloé Dubois-Martin"
    kept = read_kept(lms_vault / ASSIGNMENT)
    assert sorted(s.student_id for s in kept.students) == sorted(s.participant for s in cohort())  # no Test Student


def test_a_gradebook_with_first_and_last_names_apart_is_filled_in_its_own_layout(canvas_vault, tmp_path):
    downloaded = tmp_path / "grades.csv"
    downloaded.write_bytes(split_gradebook_bytes())
    before = downloaded.read_bytes()
    result = export_feedback(canvas_vault, ASSIGNMENT, "canvas", gradebook=downloaded, column="4512")
    data = (tmp_path / "grades (tierflow).csv").read_bytes()
    parsed = canvas_import_gradebook(data, ASSIGNMENTS)
    assert sorted(result.sent) == ["1001", "1002", "1004"] and result.no_submission == []
    for sid in result.sent:
        assert float(parsed["grades"][sid]["4512"]) == float(result.marks[sid])
    old = list(csv.reader(io.StringIO(before.decode())))
    new = list(csv.reader(io.StringIO(data.decode())))
    column = old[0].index("Essay 2 (4512)")
    assert old[0] == new[0] and new[0][:3] == ["LastName", "FirstName", "ID"]
    for a, b in zip(old, new, strict=True):
        assert a[:column] + a[column + 1 :] == b[:column] + b[column + 1 :]


@pytest.mark.parametrize("delimiter, written", [("\t", ","), (";", ";"), (",", ",")])
def test_a_gradebook_saved_again_is_written_back_with_a_separator_canvas_reads(
    canvas_vault, tmp_path, delimiter, written
):
    """Canvas's importer tells `;` from `,` and tries nothing else: a tab-separated gradebook (Excel's "Text (Tab
    delimited)") was filled "the same way", and Canvas refused the copy."""
    from lms_exports import excel_resaved
    from lms_rules import CanvasRejected

    downloaded = tmp_path / "grades.csv"
    downloaded.write_bytes(excel_resaved(gradebook_bytes(), delimiter=delimiter))
    if delimiter == "\t":
        with pytest.raises(CanvasRejected):
            canvas_import_gradebook(downloaded.read_bytes(), ASSIGNMENTS)
    result = export_feedback(canvas_vault, ASSIGNMENT, "canvas", gradebook=downloaded, column="4512")
    data = (tmp_path / "grades (tierflow).csv").read_bytes()
    parsed = canvas_import_gradebook(data, ASSIGNMENTS)
    assert parsed["new_assignments"] == [] and parsed["points"] == {"4512": "20", "4513": "10"}
    for sid in result.sent:
        assert float(parsed["grades"][sid]["4512"]) == float(result.marks[sid])
    assert parsed["grades"]["1001"]["4513"] == "7"
    text = data.decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text), delimiter=written))
    assert rows[0][:2] == ["Student", "ID"] and rows[-1][:2] == ["Student, Test", "99999"]
    assert text.splitlines()[0].count(written) == len(rows[0]) - 1
    (told,) = [n for n in result.notes if "saved again" in n] or [""]
    if delimiter == "\t":
        assert "tab-separated" in told and "Canvas" in told and "written `,`-separated" in told
    elif delimiter == ";":
        assert "UTF-8, ;-separated" in told and "written the same way" in told


def group_submissions_zip(path: Path) -> Path:
    """A submissions.zip of a Canvas group assignment: Anna Smith and Zoë de la Cruz handed in one essay as a group,
    so Canvas gives each member a copy under the group's one attachment id (771004); Ben Carter worked alone."""
    from lms_exports import docx_bytes, essay, without_utf8_flag, write_entry

    report = docx_bytes(essay(1, "Our group essay."))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        write_entry(z, "smithanna_48004_771004_essay.docx", report)
        write_entry(z, "cruzzoëdela_LATE_48006_771004_essay.docx", report)
        write_entry(z, "cruzzoëdela_LATE_48006_text.html", b"<p>Our plan.</p>")
        write_entry(z, "carterben_48010_771020_essay.docx", docx_bytes(essay(2, "Essay by Ben Carter.")))
    path.write_bytes(without_utf8_flag(buffer.getvalue()))
    return path


def test_a_canvas_group_submission_is_refused_like_a_moodle_team_one_and_nobody_is_drafted_twice(lms_vault, tmp_path):
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    export = group_submissions_zip(tmp_path / "submissions.zip")
    result = CliRunner().invoke(
        app, ["import", "submissions", str(export), "--vault", str(lms_vault), "-a", ASSIGNMENT]
    )
    assert result.exit_code == 0, result.output
    notes = sorted(p.stem for p in (lms_vault / ASSIGNMENT / "submissions").glob("*.md"))
    assert notes == ["48010"]  # the one individual submission; no note, so no draft and no mark, for the group's
    said = " ".join(result.stdout.split())
    for entry in ("smithanna_48004_771004_essay.docx", "cruzzoëdela_LATE_48006_771004_essay.docx"):
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(f"ignored {entry}:"))
        assert "group submission" in line and "attachment id 771004" in line, line
        other = next(e for e in ("smithanna_48004", "cruzzoëdela_LATE_48006") if not entry.startswith(e))
        assert other in line  # the other member's file is named
        assert "not imported" in line and "individual (not group) assignment" in line  # what to do
    # The member's other file (their typed text) is part of the same group submission: not imported either.
    assert "ignored cruzzoëdela_LATE_48006_text.html: " in said
    assert "48004:" not in said and "48006:" not in said
    # Imported again, the same refusal: a group submission never becomes a student's.
    again = import_submissions(lms_vault, ASSIGNMENT, export)
    assert [s.student_id for s in again.students] == ["48010"]
    assert {e for e, _ in again.ignored} == {
        "smithanna_48004_771004_essay.docx", "cruzzoëdela_LATE_48006_771004_essay.docx",
        "cruzzoëdela_LATE_48006_text.html",
    }  # fmt: skip
