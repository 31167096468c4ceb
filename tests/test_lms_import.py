"""`tierflow import submissions`: Moodle and Canvas exports into the assignment folder the feedback flow reads."""

from __future__ import annotations

import json
import re
import stat
import zipfile
from pathlib import Path, PurePosixPath

import frontmatter
import pytest
from lms_exports import INJECTION, canvas_zip, cohort, damaged, excel_resaved, moodle_zip
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.lms.importer import import_submissions

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "Teaching/EDU7001/essay-2"


def notes(vault: Path) -> dict[str, frontmatter.Post]:
    return {p.stem: frontmatter.load(p) for p in sorted((vault / ASSIGNMENT / "submissions").glob("*.md"))}


@pytest.mark.parametrize("layout", ["folders", "old", "flat", "blind"])
def test_every_moodle_layout_gives_one_note_per_participant(lms_vault, tmp_path, layout):
    export = moodle_zip(tmp_path / "EDU7001-Essay 2-4512.zip", cohort(), layout=layout)
    report = import_submissions(lms_vault, ASSIGNMENT, export)
    assert report.platform == "moodle"
    got = notes(lms_vault)
    assert set(got) == {"1001", "1002", "1003", "1004", "1005", "1006", "1007"}
    assert all(post.metadata["student_id"] == sid for sid, post in got.items())
    if layout == "blind":  # Moodle gives no names under blind marking, and none are invented
        assert {post.metadata["name"] for post in got.values()} == {""}
    else:
        # Moodle stripped the apostrophe from the file name; the essay has it, so the recorded name does too.
        assert got["1001"].metadata["name"] == "Liam O'Sullivan"
        assert got["1002"].metadata["name"] == "Chloé Dubois-Martin"
    # Two files are one submission, in a stable order, each part labelled.
    assert "## Part 1 of 2 (.docx file)" in got["1003"].content and "## Part 2 of 2 (.odt file)" in got["1003"].content
    assert got["1003"].content.index("survey questions") < got["1003"].content.index("Łukasik writes")


def test_unreadable_files_are_listed_per_student_with_the_reason_and_never_stop_the_others(lms_vault, tmp_path):
    export = moodle_zip(tmp_path / "export.zip", cohort())
    report = import_submissions(lms_vault, ASSIGNMENT, export)
    reasons = {(sid, f): why for sid, f, why in report.unreadable}
    assert "no text layer" in reasons[("1005", "scan.pdf")]
    assert reasons[("1006", "onlinetext.html")] == "the online text is empty"
    got = notes(lms_vault)
    assert got["1005"].content == "" and got["1006"].content == ""  # the flow drafts them with no model call
    assert got["1005"].metadata["tierflow_unreadable"] == [f"scan.pdf: {reasons[('1005', 'scan.pdf')]}"]
    assert len(report.students) == 7


def test_originals_are_kept_read_only_beside_the_note(lms_vault, tmp_path):
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "export.zip", cohort()))
    folder = lms_vault / ASSIGNMENT / "submissions" / "1003"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["appendix.docx", "essay.odt"]
    for p in folder.iterdir():
        assert not p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert notes(lms_vault)["1003"].metadata["files"] == [
        f"{ASSIGNMENT}/submissions/1003/appendix.docx",
        f"{ASSIGNMENT}/submissions/1003/essay.odt",
    ]


def test_hidden_text_is_flagged_where_the_injection_check_reads_it(lms_vault, tmp_path):
    from tierflow.tasks.assignment import INJECTION as CHECK

    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "export.zip", cohort()))
    got = notes(lms_vault)
    for sid in ("1004", "1007"):  # white 1-px HTML text; a hidden Word run
        assert INJECTION in got[sid].content and "[!warning] Hidden text in the original" in got[sid].content
        assert CHECK.search(got[sid].content)
        assert got[sid].metadata["tierflow_hidden_text"]


def test_hidden_text_and_its_notice_are_not_the_text_a_run_sends_or_checks_quotes_against(lms_vault, tmp_path):
    from lms_exports import Student, docx_bytes, essay

    from tierflow.flowkit.checks import quotes_verbatim
    from tierflow.lms.exporter import _version
    from tierflow.tasks.assignment import _submissions

    students = [
        Student("1001", "Liam O'Sullivan", {"essay.docx": docx_bytes(essay(1), hidden=INJECTION)}),
        Student("1002", "Chloé Dubois-Martin", {"essay.docx": docx_bytes([], white=INJECTION)}),  # nothing visible
    ]
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "export.zip", students))
    got = {s.student_id: s for s in _submissions(lms_vault, f"{ASSIGNMENT}/submissions")[0]}
    text = got["1001"].text
    assert "See the appendix." in text and INJECTION not in text and "Hidden text" not in text
    assert any("hidden in the original" in f and "IGNORE ALL PREVIOUS INSTRUCTIONS" in f for f in got["1001"].flags)
    assert got["1002"].empty and got["1002"].flags  # no model call for a file that hid all it held
    # A draft records the version the export reads of the note, notice and all.
    assert got["1001"].version == _version(lms_vault, ASSIGNMENT, "1001")

    class Quoted:
        def __init__(self, quote: str) -> None:
            self.criteria = [type("E", (), {"criterion": "Argument", "quotes": [quote]})()]

    check = quotes_verbatim(text)
    assert not check.problems(Quoted("See the appendix."))
    assert check.problems(Quoted("Hidden text in the original"))


def test_late_is_a_property_and_metadata_names_stay_out_of_the_text(lms_vault, tmp_path):
    import_submissions(lms_vault, ASSIGNMENT, canvas_zip(tmp_path / "submissions.zip", cohort()), platform="canvas")
    got = notes(lms_vault)
    assert got["1003"].metadata["late"] is True and got["1001"].metadata["late"] is False
    assert not re.search(r"\blate\b", got["1003"].content, re.IGNORECASE)
    assert got["1002"].metadata["document_authors"] == ["Chloé Dubois-Martin"]


def test_reimport_adds_and_updates_by_id_never_duplicates_and_keeps_edited_notes(lms_vault, tmp_path):
    students = cohort()
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "first.zip", students[:5]))
    edited = lms_vault / ASSIGNMENT / "submissions" / "1002.md"
    edited.write_text(edited.read_text() + "\nLecturer's note: seen in class.\n")
    before = edited.read_bytes()
    draft = lms_vault / ASSIGNMENT / "feedback" / "1001 feedback.md"
    draft.parent.mkdir()
    draft.write_text("---\nstudent_id: '1001'\nstatus: reviewed\n---\nMy edited feedback.\n")
    draft_before = draft.read_bytes()

    students[0].files["essay.docx"] = students[6].files["essay.docx"]  # 1001 resubmitted
    report = import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "second.zip", students))
    actions = {s.student_id: s.action for s in report.students}
    assert actions["1001"] == "updated" and actions["1002"] == "kept-edit" and actions["1003"] == "unchanged"
    assert actions["1006"] == actions["1007"] == "created"
    assert len(list((lms_vault / ASSIGNMENT / "submissions").glob("*.md"))) == 7
    assert edited.read_bytes() == before and draft.read_bytes() == draft_before
    assert INJECTION in notes(lms_vault)["1001"].content


def test_canvas_names_without_the_utf8_flag_are_decoded_and_late_is_read(lms_vault, tmp_path):
    export = canvas_zip(tmp_path / "submissions.zip", cohort(), legacy_late=True)
    report = import_submissions(lms_vault, ASSIGNMENT, export)
    assert report.platform == "canvas"
    got = notes(lms_vault)
    assert got["1002"].metadata["downloaded_as"] == ["duboismartinchloé_1002_9002_Feedback essay.pdf"]
    assert got["1003"].metadata["late"] is True  # `_late_`, as older Canvas wrote it
    assert got["1004"].content.startswith("Feedback in student")  # the text entry, `<base>_text.html`
    # No roster: the squashed `osullivanliam` is matched to the name as the essay or the file's author writes it.
    assert got["1001"].metadata["name"] == "Liam O'Sullivan"
    assert got["1002"].metadata["name"] == "Chloé Dubois-Martin"
    assert got["1007"].metadata["name"] == "zhaomeilin"  # written nowhere in her work: nothing to hide either
    assert report.warnings and "--roster" in report.warnings[0]


def test_canvas_gradebook_roster_gives_real_names(lms_vault, tmp_path):
    gradebook = tmp_path / "gradebook.csv"
    rows = ["Student,ID,SIS User ID,SIS Login ID,Section,Essay 2 (77)", "    Points Possible,,,,,100"]
    rows += [f'"{s.name.rpartition(" ")[2]}, {s.name.rpartition(" ")[0]}",{s.participant},,,A,' for s in cohort()]
    gradebook.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = import_submissions(
        lms_vault, ASSIGNMENT, canvas_zip(tmp_path / "submissions.zip", cohort()), roster=gradebook
    )
    assert not report.warnings
    assert notes(lms_vault)["1001"].metadata["name"] == "Liam O'Sullivan"


def test_an_unpacked_folder_reads_like_the_zip(lms_vault, tmp_path):
    export = moodle_zip(tmp_path / "EDU7001-Essay 2-4512.zip", cohort())
    downloads = tmp_path / "Downloads"
    with zipfile.ZipFile(export) as z:
        z.extractall(downloads / "EDU7001-Essay 2-4512")
    for given in (downloads / "EDU7001-Essay 2-4512", downloads):  # the unpacked folder, or the one holding it
        report = import_submissions(lms_vault, ASSIGNMENT, given)
        assert len(report.students) == 7 and report.platform == "moodle" and not report.ignored


def test_cli_import_prints_per_student_and_names_the_next_step(lms_vault, tmp_path):
    export = moodle_zip(tmp_path / "export.zip", cohort())
    result = CliRunner().invoke(
        app, ["import", "submissions", str(export), "--vault", str(lms_vault), "-a", ASSIGNMENT]
    )
    assert result.exit_code == 0, result.output
    assert "1005: created, 0 parts" in result.stdout and "not read: scan.pdf: no text layer" in result.stdout
    assert "tierflow run student-feedback" in result.stderr
    bad = CliRunner().invoke(app, ["import", "submissions", str(tmp_path / "nope.zip"), "--vault", str(lms_vault)])
    assert bad.exit_code == 2 and "nope.zip does not exist" in bad.stderr
    assert json.dumps(result.stdout)


def test_cli_import_finds_an_export_and_roster_given_with_a_tilde_in_the_home_folder(lms_vault, tmp_path, monkeypatch):
    """`tierflow import submissions "~/export.zip" --roster=~/worksheet.csv` (a `~` the shell leaves as it is,
    quoted or after `=`) ended with "~/export.zip does not exist", as `--vault=~/...` no longer does."""
    from test_lms_moodle import worksheet_bytes

    monkeypatch.setenv("HOME", str(tmp_path))
    moodle_zip(tmp_path / "export.zip", cohort())
    (tmp_path / "worksheet.csv").write_bytes(worksheet_bytes())
    result = CliRunner().invoke(
        app,
        [
            "import",
            "submissions",
            "~/export.zip",
            "--roster=~/worksheet.csv",
            "--vault",
            str(lms_vault),
            "-a",
            ASSIGNMENT,
        ],
    )
    assert result.exit_code == 0, result.output
    assert notes(lms_vault)["1003"].metadata["late"] is True  # the roster says so; Moodle's zip does not


def test_import_help_describes_every_option():
    result = CliRunner().invoke(app, ["import", "submissions", "--help"])
    for option in ("--vault", "--assignment", "--from", "--roster", "--config", "--profile"):
        assert option in result.stdout
    assert "Download all submissions" in result.stdout and "read-only" in result.stdout


def test_names_from_document_metadata_are_hidden_in_prompts_too(lms_vault, tmp_path):
    """A Word file whose author (and title line) is a name the platform never gave: pseudonymised all the same."""
    from lms_exports import Student, docx_bytes, essay

    from tierflow.tasks.assignment import Assignment, _submissions

    own = Student("2001", "Amara Okafor", {"essay.docx": docx_bytes(["Essay by Jo Okafor-Smith.", *essay(1)],
                                                                     author="Jo Okafor-Smith")})  # fmt: skip
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "export.zip", [own, *cohort()[:2]]))
    assert notes(lms_vault)["2001"].metadata["document_authors"] == ["Jo Okafor-Smith"]
    submissions, _ = _submissions(lms_vault.resolve(), f"{ASSIGNMENT}/submissions")
    pseudonyms = Assignment(ASSIGNMENT, None, "", [], submissions).pseudonyms()  # type: ignore[arg-type]
    text = next(s for s in submissions if s.student_id == "2001").text
    hidden = pseudonyms.hide(text)
    assert "Jo Okafor-Smith" in text and "Okafor-Smith" not in hidden and "Amara" not in hidden
    assert f"Essay by {pseudonyms.label['2001']}." in hidden


def test_moodle_worksheet_roster_gives_real_names_and_moodles_late_status(lms_vault, tmp_path):
    from test_lms_moodle import worksheet_bytes

    roster = tmp_path / "worksheet.csv"
    roster.write_bytes(worksheet_bytes())
    export = moodle_zip(tmp_path / "export.zip", cohort(), layout="flat")
    import_submissions(lms_vault, ASSIGNMENT, export, roster=roster)
    got = notes(lms_vault)
    assert got["1003"].metadata["late"] is True and got["1002"].metadata["late"] is False  # "... submitted late"
    assert got["1004"].metadata["name"] == "Kofi Mensah"
    assert roster.read_bytes() == worksheet_bytes()  # read, never written


def test_a_resubmission_over_an_edited_note_touches_nothing_and_is_a_warning(lms_vault, tmp_path):
    from lms_exports import Student, docx_bytes, essay, pdf_bytes

    first = Student("2002", "Zoë Müller", {"Müller essay.pdf": pdf_bytes(essay(2, "Zoe Mueller, EDU7001."))})
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "first.zip", [first]))
    subs = lms_vault / ASSIGNMENT / "submissions"
    note = subs / "2002.md"
    note.write_text(note.read_text() + "\nLecturer: strong opening, weak conclusion.\n")
    before = {p.relative_to(subs).as_posix(): p.read_bytes() for p in subs.rglob("*") if p.is_file()}

    again = Student("2002", "Zoë Müller", {"Müller essay v2.docx": docx_bytes(essay(3, "Zoe Mueller, v2."))})
    export = moodle_zip(tmp_path / "second.zip", [again])
    result = CliRunner().invoke(
        app, ["import", "submissions", str(export), "--vault", str(lms_vault), "-a", ASSIGNMENT]
    )
    assert result.exit_code == 0, result.output
    # The note and the files it lists are as they were: no new file beside them, the original not deleted.
    assert {p.relative_to(subs).as_posix(): p.read_bytes() for p in subs.rglob("*") if p.is_file()} == before
    assert "2002: kept as you edited it" in result.stdout
    warning = next(line for line in result.stderr.splitlines() if line.startswith("warning:"))
    for told in ("2002.md", "new submission", "Müller essay v2.docx", "Müller essay.pdf", "import again"):
        assert told in warning
    assert "1 with a new submission NOT imported" in result.stderr
    # Nothing new since the edit: no warning.
    report = import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "first-again.zip", [first]))
    assert report.students[0].action == "kept-edit" and not report.warnings

    # As the warning says: the edited note moved out of submissions/, the new submission comes in beside it.
    aside = lms_vault / ASSIGNMENT / "2002 my edits.md"
    note.rename(aside)
    report = import_submissions(lms_vault, ASSIGNMENT, export)
    assert report.students[0].action == "created" and not report.warnings
    assert notes(lms_vault)["2002"].metadata["files"] == [f"{ASSIGNMENT}/submissions/2002/Müller essay v2.docx"]
    assert (subs / "2002" / "Müller essay.pdf").read_bytes() == before["2002/Müller essay.pdf"]  # the moved note's


def test_an_edited_note_saved_with_a_bom_is_read_for_the_files_it_lists(lms_vault, tmp_path):
    """Notepad saves a note with a byte-order mark: its front-matter still says which files it lists, so the same
    export imported again is no new submission."""
    from lms_exports import Student, essay, pdf_bytes

    first = Student("2002", "Zoë Müller", {"Müller essay.pdf": pdf_bytes(essay(2, "Zoe Mueller, EDU7001."))})
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "first.zip", [first]))
    note = lms_vault / ASSIGNMENT / "submissions" / "2002.md"
    edited = note.read_text(encoding="utf-8") + "\nLecturer: strong opening.\n"
    note.write_bytes(b"\xef\xbb\xbf" + edited.encode("utf-8"))
    report = import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "again.zip", [first]))
    assert report.students[0].action == "kept-edit" and not report.warnings


def test_a_file_damaged_inside_the_zip_is_not_read_and_the_others_import(lms_vault, tmp_path):
    students = cohort()
    export = moodle_zip(tmp_path / "export.zip", students)
    damaged(export, "Liam OSullivan_1001_assignsubmission_file/essay.docx")  # one byte flipped in Liam's essay
    result = CliRunner().invoke(
        app, ["import", "submissions", str(export), "--vault", str(lms_vault), "-a", ASSIGNMENT]
    )
    assert result.exit_code == 0, result.output
    assert set(notes(lms_vault)) == {s.participant for s in students}
    line = next(line for line in result.stdout.splitlines() if "not read: essay.docx" in line and "1001" in line)
    assert "download the export again" in line and "Bad CRC-32" in line
    kept = lms_vault / ASSIGNMENT / "submissions" / "1001" / "essay.docx"
    assert not kept.exists()
    assert notes(lms_vault)["1001"].metadata["tierflow_unreadable"] == [line.split("not read: ", 1)[1]]
    assert "essay.docx" in notes(lms_vault)["1007"].metadata["files"][0]

    # A whole export later, then a damaged one again: what the whole one gave stays.
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "whole.zip", students))
    before = (lms_vault / ASSIGNMENT / "submissions" / "1001.md").read_bytes(), kept.read_bytes()
    report = import_submissions(lms_vault, ASSIGNMENT, export)
    assert report.unreadable[0][:2] == ("1001", "essay.docx")
    assert ((lms_vault / ASSIGNMENT / "submissions" / "1001.md").read_bytes(), kept.read_bytes()) == before


def test_a_file_with_the_wrong_extension_or_none_is_imported_as_what_it_holds_and_the_report_says_so(
    lms_vault, tmp_path
):
    from lms_exports import Student, docx_bytes, essay, pdf_bytes

    student = Student("3001", "Noor Haddad", {"essay.docx": pdf_bytes(essay(2)), "appendix": docx_bytes(essay(3))})
    export = moodle_zip(tmp_path / "export.zip", [student])
    result = CliRunner().invoke(
        app, ["import", "submissions", str(export), "--vault", str(lms_vault), "-a", ASSIGNMENT]
    )
    assert result.exit_code == 0, result.output
    assert "3001: created, 2 parts" in result.stdout and "not read" not in result.stdout
    assert "note: essay.docx: a PDF file saved as .docx: read as .pdf (the file extension was wrong)" in result.stdout
    assert "note: appendix: a Word .docx file saved without an extension: read as .docx" in result.stdout
    body = notes(lms_vault)["3001"].content
    assert "## Part 1 of 2 (.docx file)" in body and "## Part 2 of 2 (.pdf file)" in body


def test_a_submission_far_longer_than_a_prompt_is_warned_of_at_import_naming_its_largest_file(lms_vault, tmp_path):
    from lms_exports import Student, docx_bytes, essay

    appendix = "".join(f"Survey response {n}: I read the comments once and then filed them.\n" for n in range(4000))
    big = Student("5001", "Sam Lee", {"essay.docx": docx_bytes(essay(6)), "appendix.txt": appendix.encode()})
    report = import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "export.zip", [big, *cohort()]))
    long = [w for w in report.warnings if "characters of text" in w]
    assert len(long) == 1, report.warnings
    note = notes(lms_vault)["5001"].content
    assert long[0].startswith(f"{ASSIGNMENT}/submissions/5001.md: {len(note):,} characters of text, ")
    assert f"{len(appendix.strip()):,} of them from appendix.txt" in long[0] and "trim the note" in long[0]


def test_reimport_deletes_only_the_files_it_imported_itself(lms_vault, tmp_path):
    students = cohort()
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "first.zip", students))
    folder = lms_vault / ASSIGNMENT / "submissions" / "1003"
    mine = folder / "my-annotations.txt"
    mine.write_text("Check the survey sample size.\n")

    del students[2].files["appendix.docx"]  # 1003 resubmitted without the appendix
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "second.zip", students))
    assert sorted(p.name for p in folder.iterdir()) == ["essay.odt", "my-annotations.txt"]
    assert mine.read_text() == "Check the survey sample size.\n"

    students[2].files["my-annotations.txt"] = b"The student's own file of that name."  # nor is it overwritten
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "third.zip", students))
    assert mine.read_text() == "Check the survey sample size.\n"
    assert (folder / "my-annotations (2).txt").read_bytes() == b"The student's own file of that name."
    assert f"{ASSIGNMENT}/submissions/1003/my-annotations (2).txt" in notes(lms_vault)["1003"].metadata["files"]


@pytest.mark.parametrize(
    ("platform", "delimiter", "encoding"),
    [("canvas", ";", "utf-8-sig"), ("canvas", "\t", "cp1252"), ("moodle", ";", "utf-8-sig"), ("moodle", ",", "cp1252")],
)
def test_a_roster_saved_again_by_excel_is_read_as_excel_wrote_it(lms_vault, tmp_path, platform, delimiter, encoding):
    from test_lms_canvas import gradebook_bytes
    from test_lms_moodle import worksheet_bytes

    roster = tmp_path / "roster.csv"
    downloaded = gradebook_bytes() if platform == "canvas" else worksheet_bytes()
    roster.write_bytes(excel_resaved(downloaded, delimiter=delimiter, encoding=encoding))
    zipped = canvas_zip if platform == "canvas" else moodle_zip
    import_submissions(lms_vault, ASSIGNMENT, zipped(tmp_path / "export.zip", cohort()), roster=roster)
    got = notes(lms_vault)
    assert got["1002"].metadata["name"] == "Chloé Dubois-Martin"
    if platform == "canvas":
        assert got["1007"].metadata["name"] == "Mei-Lin Zhao"  # written nowhere in her work: only the roster has it
        assert got["1007"].metadata["sis_ids"] == ["S1007", "u1007"]
    else:
        assert got["1003"].metadata["late"] is True  # only the worksheet's Status says so
        assert got["1001"].metadata["email"] == "1001@example.ac.uk"


@pytest.mark.parametrize(
    ("platform", "roster", "looked_for", "found"),
    [
        ("moodle", "Name;Mark\nLiam;60\n", "`Identifier`", "`Name`, `Mark`"),
        ("canvas", "Name,Mark\nLiam,60\n", "`Student`, `ID`", "`Name`, `Mark`"),
        ("canvas", "Student,ID,SIS User ID,SIS Login ID,Section\n    Points Possible,,,,\n", "", "no student rows"),
    ],
)
def test_a_roster_that_names_no_student_stops_the_import_and_says_what_it_found(
    lms_vault, tmp_path, platform, roster, looked_for, found
):
    given = tmp_path / "marks.csv"
    given.write_text(roster, encoding="utf-8")
    zipped = canvas_zip if platform == "canvas" else moodle_zip
    export = zipped(tmp_path / "export.zip", cohort())
    args = ["import", "submissions", str(export), "--vault", str(lms_vault), "-a", ASSIGNMENT, "--roster", str(given)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())
    assert "marks.csv" in said and looked_for in said and found in said and "Traceback" not in said
    assert not (lms_vault / ASSIGNMENT / "submissions").exists()  # nothing imported


def test_a_roster_in_neither_utf8_nor_cp1252_is_refused_by_name(lms_vault, tmp_path):
    from test_lms_moodle import worksheet_bytes

    given = tmp_path / "worksheet.csv"
    given.write_bytes(worksheet_bytes().decode("utf-8-sig").encode("utf-16"))  # Excel's "Unicode Text"
    args = ["import", "submissions", str(moodle_zip(tmp_path / "export.zip", cohort())), "--vault", str(lms_vault)]
    result = CliRunner().invoke(app, [*args, "-a", ASSIGNMENT, "--roster", str(given)])
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())
    assert "worksheet.csv" in said and "UTF-8" in said and "Windows-1252" in said


def test_a_name_excel_broke_saving_the_roster_as_windows_1252_is_taken_from_the_export_and_said(lms_vault, tmp_path):
    """Windows' "CSV" keeps no Ł: the worksheet says `Anne-Marie ?ukasik`, which would hide nothing of her name."""
    from test_lms_moodle import worksheet_bytes

    roster = tmp_path / "roster.csv"
    roster.write_bytes(excel_resaved(worksheet_bytes(), delimiter=",", encoding="cp1252"))
    export = moodle_zip(tmp_path / "export.zip", cohort())
    args = ["import", "submissions", str(export), "--vault", str(lms_vault), "-a", ASSIGNMENT, "--roster", str(roster)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    got = notes(lms_vault)
    assert got["1003"].metadata["name"] == "Anne-Marie Łukasik"
    assert got["1002"].metadata["name"] == "Chloé Dubois-Martin"  # Windows-1252 holds é: the roster's, as ever
    said = " ".join(result.stderr.split())
    assert "1003" in said and "CSV UTF-8" in said


def test_students_a_canvas_roster_does_not_list_are_named_in_a_warning(lms_vault, tmp_path):
    from test_lms_canvas import gradebook_bytes

    roster = tmp_path / "gradebook.csv"
    roster.write_bytes(b"\n".join(line for line in gradebook_bytes().split(b"\n") if b",1002," not in line))
    report = import_submissions(lms_vault, ASSIGNMENT, canvas_zip(tmp_path / "export.zip", cohort()), roster=roster)
    (warning,) = [w for w in report.warnings if "does not list" in w]
    assert "1002" in warning and "1001" not in warning and "squashed" in warning


def test_an_edited_note_whose_file_arrives_damaged_is_not_taken_for_a_new_submission(lms_vault, tmp_path):
    students = cohort()
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "first.zip", students))
    note = lms_vault / ASSIGNMENT / "submissions" / "1001.md"
    note.write_text(note.read_text() + "\nLecturer: check the references.\n")
    export = damaged(
        moodle_zip(tmp_path / "again.zip", students), "Liam OSullivan_1001_assignsubmission_file/essay.docx"
    )
    report = import_submissions(lms_vault, ASSIGNMENT, export)
    (liam,) = [s for s in report.students if s.student_id == "1001"]
    assert liam.action == "kept-edit" and not liam.warning and liam.problems
    assert not [w for w in report.warnings if "new submission" in w]


def team_worksheet() -> bytes:
    """A worksheet whose participant 17 is Zoe Adams (the id a team's group happens to share), and Liam."""
    from lms_rules import php_fputcsv
    from test_lms_moodle import HEADER

    rows = [HEADER]
    for sid, name in (("17", "Zoë Adams"), ("1001", "Liam O'Sullivan")):
        rows.append([f"Participant {sid}", name, f"{sid}@example.ac.uk", "Submitted", "", "100.00", "Yes", "-", "",
                     "-", ""])  # fmt: skip
    return b"\xef\xbb\xbf" + "".join(php_fputcsv(r) for r in rows).encode()


def team_zip(path: Path) -> Path:
    """A team assignment's download: folders named after the group and its group id, `Default group` for students
    in no group; and one individual's folder."""
    from lms_exports import docx_bytes, essay

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("Team Alpha_17_assignsubmission_file/report.docx", docx_bytes(essay(1)))
        z.writestr("Team Alpha_17_assignsubmission_onlinetext/onlinetext.html", b"<p>Our plan.</p>")
        z.writestr("Default group_assignsubmission_file/report.docx", docx_bytes(essay(2)))
        z.writestr("Liam OSullivan_1001_assignsubmission_file/essay.docx", docx_bytes(essay(3)))
        z.writestr("Team Beta_4242_assignsubmission_file/report.docx", docx_bytes(essay(4)))  # no participant's id
    return path


def test_a_team_submission_is_never_filed_under_the_participant_its_group_id_matches(lms_vault, tmp_path):
    roster = tmp_path / "worksheet.csv"
    roster.write_bytes(team_worksheet())
    report = import_submissions(lms_vault, ASSIGNMENT, team_zip(tmp_path / "export.zip"), roster=roster)
    assert [s.student_id for s in report.students] == ["1001"]  # Liam's own folder: his, as ever
    assert set(notes(lms_vault)) == {"1001"}
    ignored = dict(report.ignored)
    for folder in ("Team Alpha_17_assignsubmission_file/", "Team Alpha_17_assignsubmission_onlinetext/"):
        why = ignored[folder]
        assert "`Team Alpha`" in why and "participant 17" in why and "Zoë Adams" in why
        assert "team submission" in why and "Download submissions in folders" in why
    why = ignored["Default group_assignsubmission_file/"]
    assert "team submission" in why and "not named as Moodle names" not in why
    # A group id no participant has, under a name no student on the roster has: a team too, not a new student.
    why = ignored["Team Beta_4242_assignsubmission_file/"]
    assert "`Team Beta`" in why and "no participant 4242" in why and "team submission" in why
    assert not [w for w in report.warnings if "does not list" in w]


def test_default_group_is_a_team_submission_without_a_roster_too(lms_vault, tmp_path):
    report = import_submissions(lms_vault, ASSIGNMENT, team_zip(tmp_path / "export.zip"))
    why = dict(report.ignored)["Default group_assignsubmission_file/"]
    assert "team submission" in why and "Download submissions in folders" in why


@pytest.mark.parametrize(
    ("in_file", "in_roster", "same"),
    [
        ("Zoë Adams", "Zoë Adams", True),
        ("Adams Zoë", "Zoë Adams", True),  # Moodle's "Last First" name display
        ("Zoe Adams", "Zoë Adams", True),
        ("Liam OSullivan", "Liam O'Sullivan", True),  # clean_filename strips the apostrophe
        ("Anne-Marie Łukasik", "Anne-Marie ?ukasik", True),  # Excel's Windows-1252 lost the Ł
        ("Jo Ann Lee", "Jo_Ann Lee", True),
        # A hyphen for a space, or none, on one side only: real students were skipped as "team submissions".
        ("Jose Maria Garcia-Lopez", "José María García López", True),
        ("Anne Marie Lukasik", "Anne-Marie Łukasik", True),
        ("Annemarie Lukasik", "Anne-Marie Łukasik", True),
        ("OBrien Siobhan", "Siobhán O’Brien", True),
        ("Team Alpha", "Zoë Adams", False),
        ("Team Alpha Zoë", "Zoë Adams", False),
        ("Zoë Adams", "Zoë Adamson", False),
        ("Zoë", "Zoë Adams", False),
    ],
)
def test_a_moodle_file_name_is_the_rosters_name_however_moodle_wrote_it(in_file, in_roster, same):
    from tierflow.lms.moodle import same_name

    assert same_name(in_file, in_roster) is same


def test_footnotes_of_two_files_are_two_obsidian_footnotes_each_and_the_name_before_a_mark_is_hidden(
    lms_vault, tmp_path
):
    """Each file numbers its notes from 1: the second part's are labelled by the part, or Obsidian would take both
    `[^1]` for one footnote. The classmate named right before a mark is hidden in the text sent."""
    from lms_exports import Student, docx_xml_bytes

    from tierflow.tasks.assignment import _submissions
    from tierflow.vault.pseudonyms import Pseudonyms
    from tierflow.vault.pseudonyms import Student as Person

    def run(text: str) -> str:
        return f'<w:r><w:t xml:space="preserve">{text}</w:t></w:r>'

    def cited(text: str, note: str) -> bytes:
        ref = '<w:r><w:rPr><w:vertAlign w:val="superscript"/></w:rPr><w:footnoteReference w:id="1"/></w:r>'
        return docx_xml_bytes(
            [f"<w:p>{run(text)}{ref}{run('.')}</w:p>"],
            footnotes={1: f"<w:p><w:r><w:footnoteRef/></w:r>{run(' ' + note)}</w:p>"},
        )

    files = {
        "a.docx": cited("I planned this essay with Priya Sharma", "Personal communication, 2026."),
        "b.docx": cited("As Sharma put it", "Seminar notes."),
    }
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "e.zip", [Student("2001", "Ben Carter", files)]))
    body = notes(lms_vault)["2001"].content
    assert "Priya Sharma[^1]." in body and "[^1]: Personal communication, 2026." in body
    assert "As Sharma put it[^2-1]." in body and "[^2-1]: Seminar notes." in body
    (submission,) = _submissions(lms_vault, f"{ASSIGNMENT}/submissions")[0]
    sent = Pseudonyms([Person("2001", "Ben Carter"), Person("2004", "Priya Sharma")]).hide(submission.text)
    assert "Sharma" not in sent and "Priya" not in sent


def test_a_comment_mark_the_student_typed_is_shown_as_written_and_sent_as_written_with_the_rest(lms_vault, tmp_path):
    """ "40%%" in a Word file started an Obsidian comment that never closed: the rest of the essay was hidden from
    the lecturer in Obsidian and from every prompt."""
    from lms_exports import Student, docx_bytes, essay

    from tierflow.tasks.assignment import _submissions
    from tierflow.vault.text import hide_comments

    paras = essay(1)
    paras[1:1] = ["Completion rose from 40%% to 65% (see Table 2).", "In HTML a comment starts with <!-- and ends."]
    export = moodle_zip(tmp_path / "e.zip", [Student("2001", "Ben Carter", {"essay.docx": docx_bytes(paras)})])
    import_submissions(lms_vault, ASSIGNMENT, export)
    body = notes(lms_vault)["2001"].content
    assert "%%" not in body and "<!--" not in body and hide_comments(body) == body
    assert "40%&#37; to 65%" in body and "with &lt;!-- and ends" in body  # Obsidian shows "40%%", "<!--"
    (submission,), skipped = _submissions(lms_vault, f"{ASSIGNMENT}/submissions")
    assert submission.text == "\n\n".join(paras) and not skipped


def test_a_note_an_older_import_wrote_with_an_unclosed_comment_is_named_in_a_warning(lms_vault, tmp_path, caplog):
    from lms_exports import Student, docx_bytes, essay

    from tierflow.tasks.assignment import _submissions

    paras = essay(1)
    export = moodle_zip(tmp_path / "e.zip", [Student("2001", "Ben Carter", {"essay.docx": docx_bytes(paras)})])
    import_submissions(lms_vault, ASSIGNMENT, export)
    note = lms_vault / ASSIGNMENT / "submissions" / "2001.md"
    note.write_text(note.read_text().replace(paras[0], "Completion rose from 40%% to 65%. " + paras[0]))
    with caplog.at_level("WARNING", logger="tierflow"):
        (submission,), skipped = _submissions(lms_vault, f"{ASSIGNMENT}/submissions")
    told = dict(skipped)[f"{ASSIGNMENT}/submissions/2001.md"]
    assert "`%%` on line 1 of its text is never closed" in told and "%&#37;" in told
    assert "2001.md" in caplog.text and submission.text.startswith("Completion rose from 40")

    note.write_text(note.read_text().replace(" 40%% ", " 40% ") + "\n%% my remark: check the data\n")
    assert not _submissions(lms_vault, f"{ASSIGNMENT}/submissions")[1]  # a short remark at the end: no warning


R_CODE = 'In R I selected the column with df[["age"]] and then x[[1]], as the manual shows [[1]].'


def link_marks_export(tmp_path: Path, trigger: str) -> tuple[Path, str, str]:
    """An export of three students, the middle one typing what Obsidian reads as a link (`trigger`), and that
    student's id and typed text."""
    from lms_exports import Student, docx_bytes, essay, onlinetext

    before, after = Student("2001", "Ann Able", {"lab3.docx": docx_bytes(essay(1))}), None
    after = Student("2003", "Cat Cole", {"lab3.docx": docx_bytes(essay(3))})
    if trigger == "r-code":
        typed = R_CODE
        middle = Student("2002", "Ben Bold", {"lab3.docx": docx_bytes([*essay(2), typed])})
        return moodle_zip(tmp_path / "STAT101-Lab 3-77.zip", [before, middle, after]), "2002", typed
    if trigger == "embed":
        typed = "My chart is below. ![[img.png]]"
        middle = Student("2002", "Ben Bold", online=onlinetext(f"<p>{essay(2)[0]}</p><p>{typed}</p>"))
        return moodle_zip(tmp_path / "STAT101-Lab 3-77.zip", [before, middle, after]), "2002", typed
    typed = "The raw counts are in the [appendix](appendix.md), and the method in [[Method]]."
    middle = Student("102", "Jane Doe", {"essay.md": f"# Essay\n\n{essay(2)[0]}\n\n{typed}\n".encode()})
    before.participant, after.participant = "101", "103"
    return canvas_zip(tmp_path / "submissions.zip", [before, middle, after]), "102", typed


@pytest.mark.parametrize("trigger", ["r-code", "embed", "markdown-link"])
def test_link_marks_a_student_typed_are_shown_as_typed_and_sent_as_typed_and_stop_no_import(
    lms_vault, tmp_path, trigger
):
    """`df[["age"]]`, `![[img.png]]` or `[appendix](appendix.md)` in a student's text made the note a link to no
    note: the writer refused it, and the import stopped there (exit 2), the students after it never imported."""
    from tierflow.tasks.assignment import _submissions
    from tierflow.vault.links import VaultNames, link_targets

    export, sid, typed = link_marks_export(tmp_path, trigger)
    report = import_submissions(lms_vault, ASSIGNMENT, export)
    assert [(s.student_id, s.action) for s in report.students][1:] == [(sid, "created"), (str(int(sid) + 1), "created")]
    body = notes(lms_vault)[sid].content
    # Obsidian shows `[[` and `](` as typed (`&#91;`, `&#40;`) and makes no link of them.
    assert link_targets(body) == [] and VaultNames.scan(lms_vault).problems(body) == []
    assert "[&#91;" in body or "]&#40;" in body
    (submission,) = [s for s in _submissions(lms_vault, f"{ASSIGNMENT}/submissions")[0] if s.student_id == sid]
    assert typed in submission.text  # the model gets what the student typed
    assert submission.not_read == ()  # a typed `![[img.png]]` is no attachment of the note's


def test_link_marks_inside_code_are_left_as_typed(lms_vault, tmp_path):
    """In a code block Obsidian makes no link and shows an entity as its characters: the code stays as typed."""
    from lms_exports import Student

    from tierflow.tasks.assignment import _submissions

    code = '```r\nages <- df[["age"]]\n```'
    text = f"# Lab 3\n\nI selected the column:\n\n{code}\n\nand then used x[[1]] in the text.\n"
    export = canvas_zip(tmp_path / "submissions.zip", [Student("102", "Jane Doe", {"lab.md": text.encode()})])
    import_submissions(lms_vault, ASSIGNMENT, export)
    body = notes(lms_vault)["102"].content
    assert code in body and "x[&#91;1]]" in body
    (submission,), _ = _submissions(lms_vault, f"{ASSIGNMENT}/submissions")
    assert code in submission.text and "x[[1]]" in submission.text


LINKED_AUTHOR = "Jane [[X]]"
LINKED_FILES = ("essay [[draft]].docx", "essay [[draft]].pdf")


@pytest.mark.parametrize("platform", ["moodle", "canvas"])
def test_link_marks_in_a_file_name_or_a_documents_author_are_imported_as_text_and_the_file_is_found(
    lms_vault, tmp_path, platform
):
    """A file named `essay [[draft]].docx`, or a Word or PDF document whose author is `Jane [[X]]`, put a link to no
    note into the note's properties: the writer refused the note, so that student was not imported (exit 1)."""
    from lms_exports import docx_bytes, essay, pdf_bytes
    from test_lms_canvas import gradebook_bytes
    from test_lms_moodle import draft_text

    from tierflow.lms.exporter import export_feedback
    from tierflow.tasks.assignment import _submissions
    from tierflow.vault.links import VaultNames, link_targets, wikilink_can_name
    from tierflow.vault.text import unescape_links

    students = cohort()[:2]
    students[1].files = {
        LINKED_FILES[0]: docx_bytes(essay(2), author=LINKED_AUTHOR),
        LINKED_FILES[1]: pdf_bytes(essay(3), author=LINKED_AUTHOR),
    }
    make = moodle_zip if platform == "moodle" else canvas_zip
    export = make(tmp_path / "submissions.zip", students)
    for action in ("created", "unchanged"):  # and again: the same note, the same files, nothing doubled
        report = import_submissions(lms_vault, ASSIGNMENT, export)
        assert not report.failed, report.failed[0].error
        assert [(s.student_id, s.action) for s in report.students] == [("1001", action), ("1002", action)]

    written = (lms_vault / ASSIGNMENT / "submissions" / "1002.md").read_text(encoding="utf-8")
    assert "[[" not in written and link_targets(written) == []  # Obsidian shows no link, in properties or text
    meta = notes(lms_vault)["1002"].metadata
    # The originals are kept under names a link can hold, and the note's `files:` leads to each, byte for byte.
    names = VaultNames.scan(lms_vault)
    assert sorted(PurePosixPath(p).name for p in meta["files"]) == ["essay draft.docx", "essay draft.pdf"]
    for path in meta["files"]:
        assert wikilink_can_name(path) and names.resolve(path) == [path]
    assert sorted((lms_vault / p).read_bytes() for p in meta["files"]) == sorted(students[1].files.values())
    assert sorted(p.name for p in (lms_vault / ASSIGNMENT / "submissions" / "1002").iterdir()) == [
        "essay draft.docx", "essay draft.pdf"
    ]  # fmt: skip
    # What the student and the platform wrote is kept as written, read back as written.
    assert [unescape_links(a) for a in meta["document_authors"]] == [LINKED_AUTHOR]
    downloaded = [unescape_links(d) for d in meta["downloaded_as"]]
    assert sorted(PurePosixPath(d).name.rpartition("_")[2] if platform == "canvas" else PurePosixPath(d).name
                  for d in downloaded) == sorted(LINKED_FILES)  # fmt: skip
    (submission,) = [s for s in _submissions(lms_vault, f"{ASSIGNMENT}/submissions")[0] if s.student_id == "1002"]
    assert LINKED_AUTHOR in submission.aliases and submission.files == tuple(meta["files"])
    if platform == "canvas":
        # The comment goes back under the name Canvas gave the file, link marks and all, so Canvas matches it.
        (lms_vault / ASSIGNMENT / "feedback").mkdir()
        (lms_vault / ASSIGNMENT / "feedback" / "1002 feedback.md").write_text(draft_text("1002"), encoding="utf-8")
        gradebook = tmp_path / "grades.csv"
        gradebook.write_bytes(gradebook_bytes())
        export_feedback(lms_vault, ASSIGNMENT, "canvas", gradebook=gradebook, column="4512")
        with zipfile.ZipFile(tmp_path / "grades (tierflow) comments.zip") as z:
            assert z.namelist() == [PurePosixPath(downloaded[0]).name]
        assert downloaded[0].endswith(f"_{LINKED_FILES[0]}")


@pytest.mark.parametrize("edited", [False, True])
def test_a_file_an_earlier_import_kept_under_its_own_name_is_no_new_submission(lms_vault, tmp_path, edited):
    """A file name with `#` is now kept without it (`Lab 3.docx`); an earlier import kept `Lab #3.docx`. The same
    submission imported again is unchanged, and a note the lecturer edited gets no warning of a new submission."""
    from lms_exports import Student, docx_bytes, essay

    from tierflow.vault.notes import HASH_KEY, render_note

    export = moodle_zip(tmp_path / "export.zip", [Student("2001", "Ann Able", {"Lab #3.docx": docx_bytes(essay(1))})])
    import_submissions(lms_vault, ASSIGNMENT, export)
    originals = lms_vault / ASSIGNMENT / "submissions" / "2001"
    assert [p.name for p in originals.iterdir()] == ["Lab 3.docx"]
    # The folder and note as the earlier import left them.
    (originals / "Lab 3.docx").rename(originals / "Lab #3.docx")
    note = lms_vault / ASSIGNMENT / "submissions" / "2001.md"
    post = frontmatter.load(note)
    meta = {k: v for k, v in post.metadata.items() if k != HASH_KEY}
    meta["files"] = [f"{ASSIGNMENT}/submissions/2001/Lab #3.docx"]
    note.write_text(render_note(meta, post.content + ("\n\nSeen in class." if edited else "")), encoding="utf-8")
    if edited:
        note.write_text(note.read_text(encoding="utf-8").replace("Seen in class.", "Seen in class, twice."))
    before = note.read_bytes()

    (result,) = import_submissions(lms_vault, ASSIGNMENT, export).students
    assert (result.action, result.warning) == ("kept-edit" if edited else "unchanged", "")
    assert note.read_bytes() == before and [p.name for p in originals.iterdir()] == ["Lab #3.docx"]


def blocked_export(lms_vault: Path, tmp_path: Path) -> Path:
    """A Moodle export of three students, the middle one's import failing: a file is in the way of its folder of
    originals."""
    from lms_exports import Student, docx_bytes, essay

    students = [Student(sid, name, {"lab3.docx": docx_bytes(essay(n))}) for n, (sid, name) in
                enumerate([("2001", "Ann Able"), ("2002", "Ben Bold"), ("2003", "Cat Cole")], start=1)]  # fmt: skip
    submissions = lms_vault / ASSIGNMENT / "submissions"
    submissions.mkdir()
    (submissions / "2002").write_text("the lecturer's file, where tierflow keeps 2002's originals")
    return moodle_zip(tmp_path / "STAT101-Lab 3-77.zip", students)


def test_a_student_whose_note_cannot_be_written_is_reported_and_the_students_after_are_imported(lms_vault, tmp_path):
    """One student's failure stopped the whole import there (exit 2): the students after it were never imported,
    and a rerun stopped at the same student."""
    told = f"{ASSIGNMENT}/submissions/2002: File exists"
    export = blocked_export(lms_vault, tmp_path)
    for _ in range(2):  # and again: the students imported are unchanged, the failed one named again
        report = import_submissions(lms_vault, ASSIGNMENT, export)
        assert [s.student_id for s in report.students] == ["2001", "2002", "2003"]
        assert report.students[1].action == "failed"
        (failed,) = report.failed
        assert failed.error.startswith(f"{ASSIGNMENT}/submissions/2002.md was not imported: ")
        assert told in failed.error and "import again" in failed.error
        assert set(notes(lms_vault)) == {"2001", "2003"}
    assert [s.action for s in report.students] == ["unchanged", "failed", "unchanged"]


def test_cli_import_names_a_failed_student_goes_on_and_exits_non_zero(lms_vault, tmp_path):
    export = blocked_export(lms_vault, tmp_path)
    result = CliRunner().invoke(
        app, ["import", "submissions", str(export), "--vault", str(lms_vault), "-a", ASSIGNMENT]
    )
    assert result.exit_code == 1, result.output
    assert "2002: NOT imported" in result.stdout and "2003: created" in result.stdout
    assert "1 NOT imported" in result.stderr and "2001: created" in result.stdout


def test_import_into_a_folder_shared_read_only_is_one_line_naming_it(lms_vault, tmp_path):
    """Each student was refused on its own line (the same reason seven times), then `Next: tierflow run ...`."""
    import subprocess
    import sys

    from conftest import as_reader

    reader = as_reader()
    export = moodle_zip(tmp_path / "export.zip", cohort())
    folder = lms_vault / ASSIGNMENT
    before = sorted(p.name for p in folder.iterdir())
    folder.chmod(0o555)
    try:
        result = subprocess.run(
            [*reader, sys.executable, "-m", "tierflow.cli", "import", "submissions", str(export), "--vault",
             str(lms_vault), "-a", ASSIGNMENT],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        folder.chmod(0o755)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    message = " ".join(result.stderr.split())
    assert message == (
        f"error: cannot import into {ASSIGNMENT}/submissions: the folder {folder.resolve()} is read-only to you. "
        "Import with write access to the vault"
    )
    assert result.stdout == "" and sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.parametrize("platform", ["moodle", "canvas"])
def test_a_half_downloaded_export_is_named_as_damaged_or_incomplete_with_download_it_again(
    lms_vault, tmp_path, platform
):
    export = (moodle_zip if platform == "moodle" else canvas_zip)(tmp_path / "export.zip", cohort())
    whole = export.read_bytes()
    args = ["--vault", str(lms_vault), "-a", ASSIGNMENT]
    listing = whole.rindex(b"PK\x01\x02", 0, whole.rindex(b"PK\x05\x06"))  # the last entry of the zip's listing
    broken = whole[:listing] + b"\0" * 4 + whole[listing + 4 :]  # the list of files there, but broken
    # `head -c 50000`, a download stopped halfway, its last bytes missing, its list of files broken
    for data in (whole[:50_000], whole[: len(whole) // 2], whole[:-10], broken):
        assert len(data) < len(whole) or data != whole
        truncated = tmp_path / "t.zip"
        truncated.write_bytes(data)
        result = CliRunner().invoke(app, ["import", "submissions", str(truncated), *args])
        said = " ".join(result.stderr.split())
        assert result.exit_code == 2, result.output
        assert f"{truncated} is damaged or incomplete" in said and "download it again" in said.lower(), said
        assert "neither a zip file nor a folder" not in said
    assert not (lms_vault / ASSIGNMENT / "submissions").exists()  # nothing imported from it
    other = tmp_path / "notes.txt"
    other.write_text("not an export")
    result = CliRunner().invoke(app, ["import", "submissions", str(other), *args])
    assert result.exit_code == 2 and "neither a zip file nor a folder" in " ".join(result.stderr.split())


@pytest.mark.parametrize("zipped", [moodle_zip, canvas_zip])
def test_a_name_the_essay_writes_in_capitals_is_recorded_in_the_names_own_case_and_hidden_as_written(
    lms_vault, tmp_path, zipped
):
    """No roster: Moodle's file name lacks the apostrophe, Canvas's is squashed; the essay heads itself in capitals."""
    from lms_exports import Student, docx_bytes, essay

    from tierflow.tasks.assignment import Assignment, _submissions

    own = Student("3001", "Siobhán O'Brien", {"essay.docx": docx_bytes(essay(1, "SIOBHÁN O’BRIEN"))})
    import_submissions(lms_vault, ASSIGNMENT, zipped(tmp_path / "export.zip", [own, *cohort()[:2]]))
    assert notes(lms_vault)["3001"].metadata["name"] == "Siobhán O’Brien"
    submissions, _ = _submissions(lms_vault.resolve(), f"{ASSIGNMENT}/submissions")
    pseudonyms = Assignment(ASSIGNMENT, None, "", [], submissions).pseudonyms()  # type: ignore[arg-type]
    text = next(s for s in submissions if s.student_id == "3001").text
    assert text.startswith("SIOBHÁN O’BRIEN") and pseudonyms.hide(text).startswith(pseudonyms.label["3001"])


def test_a_truncated_pdf_is_reported_by_tierflow_alone_with_no_pypdf_line_on_stderr(lms_vault, tmp_path):
    """pypdf logs what it repairs or gives up on (`EOF marker not found`) through Python's logging, which, with no
    handler set, lands on stderr as a stray line; the file is already named, with the reason, in tierflow's report."""
    import subprocess
    import sys

    from lms_exports import Student, essay, pdf_bytes

    whole = pdf_bytes(essay(2))
    students = [*cohort()[:1], Student("1002", "Chloé Dubois-Martin", {"essay.pdf": whole[: len(whole) // 2]})]
    export = moodle_zip(tmp_path / "export.zip", students)
    result = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "import", "submissions", str(export), "--vault", str(lms_vault)]
        + ["-a", ASSIGNMENT],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    stray = [line for line in result.stderr.splitlines() if not line.startswith("warning:") and "students:" not in line]
    assert stray == [], result.stderr
    assert "EOF marker" not in result.stderr
    said = " ".join(result.stdout.split())
    assert "not read: essay.pdf: corrupt or unreadable .pdf file" in said
    assert "EOF marker not found" in said  # pypdf's finding, folded into tierflow's reason


def test_a_file_name_too_long_for_the_disk_is_cut_keeping_its_extension(lms_vault, tmp_path):
    """A long title in a file name (`反馈素养...研究.docx`, 341 bytes of UTF-8) was cut at 255 bytes with its `.docx`,
    kept without an extension, and the student named as having saved it without one; a second such file, the same
    to 255 bytes, then stopped the student's import (`(2)` made its name too long)."""
    from lms_exports import Student, docx_bytes, essay

    title = "反馈素养与学习者能动性的研究" * 8
    files = {f"{title}.docx": docx_bytes(essay(1)), f"{title} appendix.docx": docx_bytes(["Appendix A: data."])}
    report = import_submissions(
        lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "export.zip", [Student("5001", "王小明", files)])
    )
    (student,) = report.students
    assert student.action == "created" and student.parts == 2, student
    assert not student.notes, student.notes  # nothing "saved without an extension"
    kept = sorted((lms_vault / ASSIGNMENT / "submissions" / "5001").iterdir())
    assert len(kept) == 2 and all(p.suffix == ".docx" and len(p.name.encode()) <= 255 for p in kept), kept
    assert [str(lms_vault / ASSIGNMENT / "submissions" / "5001" / p.name) for p in kept] == sorted(
        str(lms_vault / f) for f in notes(lms_vault)["5001"].metadata["files"]
    )
