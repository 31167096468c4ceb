"""The roster an import is given is kept in the assignment folder (`roster.csv`): every student on it is hidden from
the prompts, whether they handed anything in or not."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import unicodedata
from pathlib import Path

import pytest
from conftest import anthropic_config, write_config
from lms_exports import Student, docx_bytes, essay, moodle_zip, onlinetext
from lms_rules import php_fputcsv
from responders import skilled

from tierflow.flows.student_feedback import student_feedback
from tierflow.lms.cells import rows_of
from tierflow.lms.importer import import_submissions
from tierflow.offline import SKILLS, prompt_data
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "Teaching/EDU7001/essay-2"
WORKSHEET_HEADER = ["Identifier", "Full name", "Email address", "ID number", "Status", "Grade", "Feedback comments"]
PRIYA = ("2004", "Priya Sharma", "priya.sharma@example.ac.uk", "Z20239944")
"""On the roster, handed in nothing; named in both essays."""


def submitters() -> list[Student]:
    return [
        Student("2001", "Ben Carter", {"essay.docx": docx_bytes(essay(1, "I planned this essay with Priya Sharma."))}),
        Student(
            "2002",
            "Aisha Khan",
            online=onlinetext("".join(f"<p>{p}</p>" for p in essay(2, "My friend Priya read a draft (Z20239944)."))),
        ),
    ]


def worksheet(path: Path, extra: list[tuple[str, str, str, str]] = ()) -> Path:
    """A Moodle grading worksheet listing the two submitters and Priya, who submitted nothing."""
    rows = [
        ("2001", "Ben Carter", "ben.carter@example.ac.uk", "Z20231001", "Submitted for grading"),
        ("2002", "Aisha Khan", "aisha.khan@example.ac.uk", "Z20231002", "Submitted for grading"),
        (*PRIYA, "No submission"),
        *[(*e, "No submission") for e in extra],
    ]
    lines = [php_fputcsv(WORKSHEET_HEADER)]
    for sid, name, email, number, status in rows:
        lines.append(php_fputcsv([f"Participant {sid}", name, email, number, status, "", ""]))
    path.write_bytes(b"\xef\xbb\xbf" + "".join(lines).encode("utf-8"))
    return path


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


def configure(vault: Path, double: ProviderDouble) -> None:
    config = vault / ".tierflow" / "config.toml"
    write_config(config, anthropic_config(double) + config.read_text())


def bodies(double: ProviderDouble) -> list[str]:
    """Every request's raw body, and its parsed JSON with non-ASCII unescaped, case-folded."""
    out = []
    for request in double.requests:
        parsed = json.dumps(request.json, ensure_ascii=False) if request.json is not None else ""
        out.append((request.raw.decode("utf-8", "replace") + parsed).casefold())
    return out


@pytest.mark.usefixtures("prefect_harness")
def test_a_classmate_on_the_roster_who_submitted_nothing_never_reaches_the_model(lms_vault, tmp_path, double, keys):
    export = moodle_zip(tmp_path / "EDU7001-Essay 2-4512.zip", submitters())
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv"))
    configure(lms_vault, double)
    double.responder = skilled()
    summary = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT)
    assert not summary.failed and double.model_calls()
    sent = bodies(double)
    for identity in ("Priya", "Sharma", PRIYA[2], PRIYA[3], "20239944", "Ben", "Carter", "Aisha", "Khan"):
        leaked = [i for i, body in enumerate(sent) if identity.casefold() in body]
        assert not leaked, f"{identity} reached the model in request(s) {leaked}"


def load(vault: Path, double: ProviderDouble):  # noqa: ANN201
    """The assignment as the flow loads it, with cloud tiers configured (so pseudonymisation is on)."""
    from tierflow.core.calls import RunSettings
    from tierflow.tasks.assignment import load_assignment

    configure(vault, double)
    return load_assignment.fn(RunSettings(vault=str(vault), run_id="r", flow="student-feedback"), ASSIGNMENT)


def rows(vault: Path) -> list[dict[str, str]]:
    """The kept roster's rows, read as Excel would (its delimiter, `,` or `;`)."""
    header, *lines = rows_of((vault / ASSIGNMENT / "roster.csv").read_bytes())
    return [dict(zip(header, line, strict=True)) for line in lines]


def test_the_import_keeps_the_whole_roster_and_every_student_on_it_is_hidden_and_revealed(lms_vault, tmp_path, double):
    export = moodle_zip(tmp_path / "export.zip", submitters())
    report = import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv"))
    assert report.roster == f"{ASSIGNMENT}/roster.csv" and report.roster_rows == 3
    kept = {r["student_id"]: r for r in rows(lms_vault)}
    assert set(kept) == {"2001", "2002", "2004"}  # the whole roster: Priya handed nothing in
    assert (kept["2004"]["name"], kept["2004"]["email"], kept["2004"]["ids"]) == PRIYA[1:]

    work = load(lms_vault, double)
    assert {s.student_id for s in work.submissions} == {"2001", "2002"}
    pseudonyms = work.pseudonyms()
    label = pseudonyms.label["2004"]
    hidden = pseudonyms.hide(f"I planned it with Priya Sharma ({PRIYA[2]}, {PRIYA[3]}); my friend Priya read it.")
    assert not any(i in hidden for i in ("Priya", "Sharma", "priya", "20239944"))
    assert hidden.count(label) == 4
    # ... and a label back to the name in a local note, a non-submitter's as a submitter's.
    assert pseudonyms.reveal(f"{label} read a draft.") == "Priya Sharma read a draft."
    assert pseudonyms.reveal(f"{pseudonyms.label['2001']} wrote it.") == "Ben Carter wrote it."


def test_importing_again_merges_into_the_kept_roster_and_loses_nothing_written_there(lms_vault, tmp_path, double):
    export = moodle_zip(tmp_path / "export.zip", submitters())
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv"))
    path = lms_vault / ASSIGNMENT / "roster.csv"
    # The lecturer, in Excel: a column of their own, a nickname, a corrected name, a guest the roster lacks.
    edited = [["student_id", "name", "email", "ids", "other_names", "notes"]]
    for r in rows(lms_vault):
        name = "Benjamin Carter" if r["student_id"] == "2001" else r["name"]
        other = "Pri" if r["student_id"] == "2004" else r["other_names"]
        notes = "extension to Friday" if r["student_id"] == "2004" else ""
        edited.append([r["student_id"], name, r["email"], r["ids"], other, notes])
    edited.append(["9001", "Sam O'Neill", "", "", "", "visiting student, not on Moodle"])
    out = io.StringIO()
    csv.writer(out, delimiter=";", lineterminator="\r\n").writerows(edited)
    path.write_bytes(out.getvalue().encode("utf-8-sig"))

    # A later worksheet: a new student, and Priya's address changed.
    later = worksheet(tmp_path / "later.csv", extra=[("2005", "Tomás Ruiz", "tomas.ruiz@example.ac.uk", "Z20231005")])
    later.write_bytes(later.read_bytes().replace(PRIYA[2].encode(), b"p.sharma@example.ac.uk"))
    report = import_submissions(lms_vault, ASSIGNMENT, export, roster=later)
    assert report.roster_added == 1 and report.roster_rows == 5

    kept = {r["student_id"]: r for r in rows(lms_vault)}
    assert list(kept) == ["2001", "2002", "2004", "9001", "2005"]  # the rows' order, the new one last
    assert kept["9001"]["name"] == "Sam O'Neill" and kept["9001"]["notes"] == "visiting student, not on Moodle"
    assert kept["2004"]["notes"] == "extension to Friday" and kept["2004"]["other_names"] == "Pri"
    assert kept["2004"]["email"] == f"p.sharma@example.ac.uk; {PRIYA[2]}"
    assert kept["2001"]["name"] == "Ben Carter" and kept["2001"]["other_names"] == "Benjamin Carter"
    assert kept["2005"]["name"] == "Tomás Ruiz"
    assert path.read_bytes().startswith(b"\xef\xbb\xbf") and b";" in path.read_bytes().splitlines()[0]

    pseudonyms = load(lms_vault, double).pseudonyms()
    hidden = pseudonyms.hide("Benjamin, Pri, Sam O'Neill, Tomas Ruiz, p.sharma@example.ac.uk and priya.sharma@.")
    assert not any(n in hidden for n in ("Benjamin", "Pri,", "Sam", "Neill", "Tomas", "Ruiz", "sharma")), hidden


def test_a_kept_roster_that_cannot_be_read_stops_the_import_and_the_run(lms_vault, tmp_path, double):
    from tierflow.core.errors import VaultError

    path = lms_vault / ASSIGNMENT / "roster.csv"
    path.write_text("Name,Email\nPriya Sharma,priya.sharma@example.ac.uk\n", encoding="utf-8")
    export = moodle_zip(tmp_path / "export.zip", submitters())
    with pytest.raises(VaultError, match="roster.csv has no `student_id` column"):
        import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv"))
    assert not (lms_vault / ASSIGNMENT / "submissions").exists()  # nothing written, the file as it was
    assert path.read_text(encoding="utf-8").startswith("Name,Email")

    # Without --roster too (it names the students from the kept file): nothing written, the file as it was ...
    with pytest.raises(VaultError, match="roster.csv has no `student_id` column"):
        import_submissions(lms_vault, ASSIGNMENT, export)
    assert not (lms_vault / ASSIGNMENT / "submissions").exists()
    assert path.read_text(encoding="utf-8").startswith("Name,Email")
    data = path.read_bytes()
    path.unlink()
    import_submissions(lms_vault, ASSIGNMENT, export)
    path.write_bytes(data)  # the file put back after an import
    with pytest.raises(VaultError, match="roster.csv has no `student_id` column"):
        load(lms_vault, double)  # ... and the run stops before any call: the names in it would go unhidden


def test_a_folder_imported_with_a_roster_before_it_was_kept_still_runs_and_says_to_import_again(
    lms_vault, tmp_path, double, caplog
):
    export = moodle_zip(tmp_path / "export.zip", submitters())
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv"))
    (lms_vault / ASSIGNMENT / "roster.csv").unlink(missing_ok=True)  # as an import before this change left the folder
    with caplog.at_level("WARNING", logger="tierflow"):
        work = load(lms_vault, double)
    assert {s.student_id for s in work.submissions} == {"2001", "2002"} and not work.roster
    told = dict(work.skipped)[f"{ASSIGNMENT}/roster.csv"]
    assert "imported with a --roster" in told and "--roster FILE" in told and "import" in caplog.text.lower()
    assert "Ben" not in work.pseudonyms().hide("Ben Carter")  # the submitters are hidden as before

    # Imported without a roster: nothing to keep, nothing said.
    shutil.rmtree(lms_vault / ASSIGNMENT / "submissions")
    import_submissions(lms_vault, ASSIGNMENT, export)
    assert f"{ASSIGNMENT}/roster.csv" not in dict(load(lms_vault, double).skipped)


def test_canvas_test_student_is_not_kept(lms_vault, tmp_path, double):
    """The gradebook lists Canvas's Student View user as `Student, Test`: kept, "test" and "student" would be
    hidden wherever an essay uses the words."""
    from lms_exports import canvas_zip, cohort
    from test_lms_canvas import gradebook_bytes

    gradebook = tmp_path / "gradebook.csv"
    gradebook.write_bytes(gradebook_bytes())
    import_submissions(lms_vault, ASSIGNMENT, canvas_zip(tmp_path / "submissions.zip", cohort()[:2]), roster=gradebook)
    kept = {r["student_id"]: r for r in rows(lms_vault)}
    assert "99999" not in kept and len(kept) == len(cohort())  # the five who submitted nothing are kept
    hidden = load(lms_vault, double).pseudonyms().hide("A test of what a student learns; Kofi Mensah helped.")
    assert hidden.startswith("A test of what a student learns;") and "Kofi" not in hidden


@pytest.mark.usefixtures("prefect_harness")
def test_a_label_for_someone_the_student_named_comes_back_in_their_draft_as_the_student_wrote_it(
    lms_vault, tmp_path, double, keys
):
    """Labels by sorted id: Ben 2001 is Student-01, Aisha 2002 Student-02, Priya 2004 (no submission) Student-03."""
    export = moodle_zip(tmp_path / "export.zip", submitters())
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv"))
    configure(lms_vault, double)

    def naming(request: DoubleRequest) -> Reply:
        answer = SKILLS["feedbackout"](prompt_data(request.last_user_text))
        # A comment naming Priya by her label, and Student-02 (Aisha), whom only Aisha's own essay names.
        answer["overall"] += " Your planning with Student-03 shows. Compare Student-02."
        return Reply(data=answer)

    double.responder = skilled({"feedbackout": naming})
    summary = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT)
    assert not summary.failed
    feedback = lms_vault / ASSIGNMENT / "feedback"
    ben = (feedback / "2001 feedback.md").read_text(encoding="utf-8")
    aisha = (feedback / "2002 feedback.md").read_text(encoding="utf-8")
    # Ben wrote "Priya Sharma", Aisha "Priya" (and her id, which is no name): each gets back what they wrote.
    assert "Your planning with Priya Sharma shows." in ben
    assert "Your planning with Priya shows." in aisha
    # Ben's essay names no Aisha: her label stays a label in his draft; in her own draft it is her name.
    assert "Compare Student-02." in ben and "Aisha" not in ben
    assert "Compare Aisha Khan." in aisha


def test_the_import_command_says_where_the_roster_is_kept(lms_vault, tmp_path):
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    export = moodle_zip(tmp_path / "export.zip", submitters())
    args = ["import", "submissions", str(export), "--vault", str(lms_vault), "-a", ASSIGNMENT]
    result = CliRunner().invoke(app, [*args, "--roster", str(worksheet(tmp_path / "worksheet.csv"))])
    assert result.exit_code == 0, result.output
    assert f"roster kept in {ASSIGNMENT}/roster.csv: 3 students (3 new)" in result.stdout
    result = CliRunner().invoke(app, args)  # without --roster: no roster said, the kept one untouched
    assert result.exit_code == 0 and "roster kept" not in result.stdout
    assert len(rows(lms_vault)) == 3


def test_a_cohorts_pseudonyms_are_built_once_not_for_every_task_of_every_submission():
    """Each task of each submission asks for them; a 300-student roster's matcher takes a tenth of a second."""
    from tierflow.tasks.assignment import Assignment, Submission
    from tierflow.vault.pseudonyms import Student

    submissions = [Submission(f"s{i}", f"Student Number{i}", f"a/s{i}.md", "text") for i in range(300)]
    roster = [Student(f"r{i}", f"Roster Person{i}") for i in range(300)]
    first = Assignment("a", None, "", [], submissions, roster=roster)  # type: ignore[arg-type]
    again = Assignment("a", None, "", [], list(submissions), roster=list(roster))  # type: ignore[arg-type]
    assert first.pseudonyms() is first.pseudonyms() is again.pseudonyms()
    label = first.pseudonyms().label
    assert first.pseudonyms().hide("Roster Person7 and Number12") == f"{label['r7']} and {label['s12']}"


def test_a_kept_roster_excel_saved_as_windows_1252_is_warned_of_and_what_is_left_of_each_name_is_hidden(
    lms_vault, tmp_path, double, caplog
):
    """Excel's "CSV (Comma delimited)" writes `?` for the letters Windows-1252 lacks: `?ukasik` matches no essay's
    "Łukasik", so the lecturer is told, and the rest of the name, the email and the id are still hidden."""
    classmates = [
        ("2005", "Wojciech Łukasik", "w.lukasik@example.ac.uk", "Z20235555"),
        ("2006", "Şule Yılmaz", "s.yilmaz@example.ac.uk", "Z20236666"),
    ]
    export = moodle_zip(tmp_path / "export.zip", submitters())
    roster = worksheet(tmp_path / "worksheet.csv", extra=classmates)
    report = import_submissions(lms_vault, ASSIGNMENT, export, roster=roster)
    assert not [w for w in report.warnings if "?" in w]  # the worksheet itself was whole
    path = lms_vault / ASSIGNMENT / "roster.csv"
    lines = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows([[*line, ""] for line in lines])
    path.write_bytes(out.getvalue().encode("cp1252", errors="replace"))  # Excel: Save As "CSV (Comma delimited)"

    with caplog.at_level("WARNING", logger="tierflow"):
        work = load(lms_vault, double)
    told = dict(work.skipped)[f"{ASSIGNMENT}/roster.csv"]
    assert "2005 (Wojciech ?ukasik)" in told and "2006 (?ule Y?lmaz)" in told and "CSV UTF-8" in told
    assert "--roster" in told and "2005 (Wojciech ?ukasik)" in caplog.text
    hidden = work.pseudonyms().hide("With Wojciech (w.lukasik@example.ac.uk, Z20236666) and s.yilmaz@example.ac.uk.")
    assert not any(i in hidden for i in ("Wojciech", "lukasik", "20236666", "yilmaz")), hidden

    # A whole spelling in the row (a name the lecturer typed again, or the import's other_names) explains the `?`.
    fixed = path.read_bytes().decode("cp1252").replace("Wojciech ?ukasik,", "Wojciech Łukasik,")
    fixed = fixed.replace("Z20236666,", "Z20236666,Şule Yılmaz")
    path.write_bytes(fixed.encode("utf-8-sig"))
    assert f"{ASSIGNMENT}/roster.csv" not in dict(load(lms_vault, double).skipped)


def test_a_submitters_name_excel_broke_in_the_kept_roster_is_hidden_as_their_note_spells_it_and_not_warned_of(
    lms_vault, tmp_path, double
):
    student = Student("2005", "Łukasz Nowak", {"essay.docx": docx_bytes(essay(3))})
    export = moodle_zip(tmp_path / "export.zip", [*submitters(), student])
    roster = worksheet(tmp_path / "worksheet.csv", extra=[("2005", "Łukasz Nowak", "l.nowak@example.ac.uk", "Z5")])
    import_submissions(lms_vault, ASSIGNMENT, export, roster=roster)
    path = lms_vault / ASSIGNMENT / "roster.csv"
    path.write_bytes(path.read_text(encoding="utf-8-sig").encode("cp1252", errors="replace"))
    assert "?ukasz Nowak" in path.read_bytes().decode("cp1252")
    work = load(lms_vault, double)
    assert f"{ASSIGNMENT}/roster.csv" not in dict(work.skipped)
    assert "Łukasz" not in work.pseudonyms().hide("Thanks to Łukasz and Lukasz Nowak.")


BROKEN_CLASSMATES = [
    ("2006", "Şule Yılmaz", "s.yilmaz@example.ac.uk", "Z20236666"),
    ("2007", "Nguyễn Văn An", "an.nguyen@example.ac.uk", "Z20237777"),
    ("2008", "Zeynep Ilgın-Şahin", "z.ilgin@example.ac.uk", "Z20238888"),
    ("2009", "Paweł Nowak", "p.nowak@example.ac.uk", "Z20239999"),
    ("2010", "Đỗ Mai", "mai.do@example.ac.uk", "Z20230010"),
]
"""Classmates who handed nothing in, each with letters Windows-1252 lacks: Turkish (ş, ı), Vietnamese (ễ, ă), a
`?` right after a hyphen (Ilg?n-?ahin), one right before a space (Pawe? Nowak), and a part all `?` (`?? Mai`)."""


@pytest.mark.usefixtures("prefect_harness")
def test_names_excel_broke_in_the_kept_roster_never_reach_the_model_however_the_essay_spells_them(
    lms_vault, tmp_path, double, keys
):
    """`?ule Y?lmaz` in the kept roster: each `?` stands for the letter Excel lost, so "Şule Yılmaz" in an essay,
    typed with or without its accents, precomposed or with combining marks, is hidden like any other name."""
    nfd = unicodedata.normalize("NFD", "Nguyễn Văn An")
    cohort = [
        Student(
            "2001",
            "Ben Carter",
            {"essay.docx": docx_bytes(essay(1, "I worked with Şule Yılmaz and Zeynep Ilgın-Şahin on the survey."))},
        ),
        Student(
            "2002",
            "Aisha Khan",
            online=onlinetext(
                "".join(
                    f"<p>{p}</p>"
                    for p in essay(2, f"Thanks to {nfd} for the data, Paweł for the charts, Đỗ Mai and Sule Yilmaz.")
                )
            ),
        ),
    ]
    export = moodle_zip(tmp_path / "EDU7001-Essay 2-4512.zip", cohort)
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv", BROKEN_CLASSMATES))
    path = lms_vault / ASSIGNMENT / "roster.csv"
    path.write_bytes(path.read_text(encoding="utf-8-sig").encode("cp1252", errors="replace"))  # Excel, Windows-1252
    assert "?ule Y?lmaz" in path.read_bytes().decode("cp1252")
    configure(lms_vault, double)
    double.responder = skilled()
    summary = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT)
    assert not summary.failed and double.model_calls()

    sent = [unicodedata.normalize("NFC", body) for body in bodies(double)]
    names = ("Şule", "Yılmaz", "Sule", "Yilmaz", "Nguyễn", "Nguyen", "Văn", "Ilgın", "Şahin", "Paweł", "Đỗ")
    for identity in names:
        leaked = [i for i, body in enumerate(sent) if identity.casefold() in body]
        assert not leaked, f"{identity} reached the model in request(s) {leaked}"
    # The lecturer is still told to save the file again as UTF-8: the `?` hides words of the name's shape too.
    told = dict(summary.skipped)[f"{ASSIGNMENT}/roster.csv"]
    assert "2006 (?ule Y?lmaz)" in told and "2007 (Nguy?n V?n An)" in told and "2010 (?? Mai)" in told
    assert "CSV UTF-8" in told and "--roster" in told


@pytest.mark.usefixtures("prefect_harness")
def test_a_classmates_nickname_in_quotes_on_the_roster_never_reaches_the_model(lms_vault, tmp_path, double, keys):
    """A worksheet's `Robert "Bob" Smith`: an essay's "Bob helped me" reached the model as written, the quoted part
    being kept whole (`"Bob"`) rather than split into the name "Bob"."""
    bob = ("2005", 'Robert "Bob" Smith', "r.smith@example.ac.uk", "Z20235555")
    cohort = [
        Student("2001", "Ben Carter", {"essay.docx": docx_bytes(essay(1, "Bob helped me plan this essay."))}),
        Student("2002", "Aisha Khan", online=onlinetext(f"<p>{essay(2, 'I thank bob for the data.')[0]}</p>")),
    ]
    export = moodle_zip(tmp_path / "EDU7001-Essay 2-4512.zip", cohort)
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv", [bob]))
    assert {r["name"] for r in rows(lms_vault)} >= {bob[1]}
    configure(lms_vault, double)
    double.responder = skilled()
    summary = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT)
    assert not summary.failed and double.model_calls()

    sent = bodies(double)
    for identity in ("Bob", "Robert", "Smith"):
        leaked = [i for i, body in enumerate(sent) if identity.casefold() in body]
        assert not leaked, f"{identity} reached the model in request(s) {leaked}"
    assert any("student-" in body and "helped me plan this essay" in body for body in sent)


ANNOTATED_CLASSMATES = [
    ("2006", "Anna Berg (Exchange)", "a.berg@example.ac.uk", "Z20236666"),
    ("2007", "Tom Reed (withdrawn)", "t.reed@example.ac.uk", "Z20237777"),
    ("2008", "Jane Doe [TA]", "j.doe@example.ac.uk", "Z20238888"),
    ("2009", "Mark O'Neil (Audit)", "m.oneil@example.ac.uk", "Z20239999"),
    ("2010", "Wei (David) Zhang", "w.zhang@example.ac.uk", "Z20231010"),
]
"""Classmates whose roster names carry a note in brackets, and one a nickname."""


@pytest.mark.usefixtures("prefect_harness")
def test_a_note_in_brackets_on_the_roster_leaves_the_essays_words_alone_and_a_nickname_stays_hidden(
    lms_vault, tmp_path, double, keys
):
    """A worksheet's `Anna Berg (Exchange)`, `Tom Reed (withdrawn)`, `Jane Doe [TA]` and `Mark O'Neil (Audit)`: an
    essay's "Peer exchange of feedback" reached the model as "Peer student-04 of feedback", and so did every
    "withdrawn", "TA" and "audit" of every essay. The words reach it as the student wrote them; the classmates'
    names, and the nickname of `Wei (David) Zhang`, do not."""
    own = {
        "2001": "Peer exchange of feedback helped, as David and Anna Berg said.",
        "2002": "The TA said an audit of accounts was withdrawn from the plan; Jane agreed.",
    }
    cohort = [
        Student("2001", "Ben Carter", {"essay.docx": docx_bytes(essay(1, own["2001"]))}),
        Student("2002", "Aisha Khan", online=onlinetext(f"<p>{essay(2, own['2002'])[0]}</p>")),
    ]
    export = moodle_zip(tmp_path / "EDU7001-Essay 2-4512.zip", cohort)
    import_submissions(
        lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv", ANNOTATED_CLASSMATES)
    )
    assert {r["name"] for r in rows(lms_vault)} >= {c[1] for c in ANNOTATED_CLASSMATES}
    configure(lms_vault, double)
    double.responder = skilled()
    summary = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT)
    assert not summary.failed and double.model_calls()

    sent = bodies(double)
    for words in ("peer exchange of feedback", "the ta said an audit of accounts was withdrawn from the plan"):
        assert any(words in body for body in sent), f"{words!r} reached no request as written"
    for identity in ("Anna", "Berg", "Tom", "Reed", "Jane", "Doe", "O'Neil", "Neil", "Wei", "David", "Zhang"):
        leaked = [i for i, body in enumerate(sent) if re.search(rf"\b{re.escape(identity.casefold())}\b", body)]
        assert not leaked, f"{identity} reached the model in request(s) {leaked}"
    assert any("helped, as student-" in body for body in sent)


GERMAN_CLASSMATES = [
    ("2011", "Jürgen Müller", "j.mueller@example.ac.uk", "Z20231111"),
    ("2012", "Gerhard Schröder", "g.schroeder@example.ac.uk", "Z20231212"),
    ("2013", "Johann Strauß", "j.strauss@example.ac.uk", "Z20231313"),
]
"""Classmates whose names an essay types with two letters for one ("Mueller", "Schroeder", "Strauss")."""


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("saved", ["utf-8-sig", "cp1251"], ids=["whole", "broken"])
def test_a_name_typed_with_two_letters_for_one_never_reaches_the_model_whole_roster_or_broken(
    lms_vault, tmp_path, double, keys, saved
):
    """An essay's "Interview with Juergen Mueller." reached the model as written once Excel, on a Windows whose code
    page lacks "ü" (Windows-1251, Cyrillic), had saved the kept roster as `J?rgen M?ller`; saved whole, it was
    hidden."""
    line = "Interview with Juergen Mueller. As Mueller argues, and Schroeder and Strauss, the issue is due."
    cohort = [
        Student("2001", "Ben Carter", {"essay.docx": docx_bytes(essay(1, line))}),
        Student(
            "2002", "Aisha Khan", online=onlinetext(f"<p>{essay(2, 'Does aesthetics matter? Ask Mueller.')[0]}</p>")
        ),
    ]
    export = moodle_zip(tmp_path / "EDU7001-Essay 2-4512.zip", cohort)
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv", GERMAN_CLASSMATES))
    path = lms_vault / ASSIGNMENT / "roster.csv"
    path.write_bytes(path.read_text(encoding="utf-8-sig").encode(saved, errors="replace"))  # Excel, Save As
    assert ("J?rgen M?ller" in path.read_bytes().decode("cp1252")) == (saved == "cp1251")
    configure(lms_vault, double)
    double.responder = skilled()
    summary = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT)
    assert not summary.failed and double.model_calls()

    sent = bodies(double)
    for identity in ("Juergen", "Mueller", "Schroeder", "Strauss", "Jürgen", "Müller"):
        leaked = [i for i, body in enumerate(sent) if identity.casefold() in body]
        assert not leaked, f"{identity} reached the model in request(s) {leaked}"
    assert any("interview with student-" in body and "the issue is due" in body for body in sent)
    assert any("does aesthetics matter? ask student-" in body for body in sent)
    told = dict(summary.skipped).get(f"{ASSIGNMENT}/roster.csv", "")
    assert ("2011 (J?rgen M?ller)" in told and '"Juergen Mueller"' in told) == (saved == "cp1251")


@pytest.mark.usefixtures("prefect_harness")
def test_a_student_named_in_the_rubric_or_brief_is_hidden_there_and_every_prompt_shares_one_prefix(
    lms_vault, tmp_path, double, keys
):
    """The lecturer's own text names students too ("Like Priya Sharma's exemplar"): the rubric went as written."""
    export = moodle_zip(tmp_path / "export.zip", submitters())
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv"))
    rubric = lms_vault / ASSIGNMENT / "rubric.md"
    rubric.write_text(rubric.read_text().replace("Sustains a clear", "Like Priya Sharma's exemplar, sustains a clear"))
    brief = lms_vault / ASSIGNMENT / "brief.md"
    brief.write_text(brief.read_text() + "\nAsk Ben Carter (ben.carter@example.ac.uk) for the data set.\n")
    configure(lms_vault, double)
    double.responder = skilled()
    summary = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT)
    assert not summary.failed
    sent = bodies(double)
    for identity in ("Priya", "Sharma", "Ben", "Carter", "ben.carter@"):
        leaked = [i for i, body in enumerate(sent) if identity.casefold() in body]
        assert not leaked, f"{identity} reached the model in request(s) {leaked}"
    priya = "student-03"  # by sorted id: 2001, 2002, 2004
    prefixed = [b for b in sent if "sustains a clear" in b]
    assert len(prefixed) >= 4 and all(f"like {priya}'s exemplar, sustains a clear" in b for b in prefixed)


ZOE = ("1999", "Zoe Able", "zoe.able@example.ac.uk", "Z20231999")
"""A late addition to the roster whose id sorts before everyone's: numbered afresh, every label would move."""


def kept_labels(vault: Path) -> dict[str, str]:
    """The assignment's kept labels (`pseudonyms.csv`), by student id."""
    with (vault / ASSIGNMENT / "pseudonyms.csv").open(encoding="utf-8") as handle:
        return {r["student_id"]: r["label"] for r in csv.DictReader(handle)}


def test_a_reimport_adding_a_student_whose_id_sorts_first_keeps_every_label(lms_vault, tmp_path, double):
    export = moodle_zip(tmp_path / "export.zip", submitters())
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv"))
    assert not (lms_vault / ASSIGNMENT / "pseudonyms.csv").exists()  # an import gives no labels; a run does
    before = load(lms_vault, double).pseudonyms().label
    # The first run numbers the cohort by sorted id, as runs always did, and keeps the labels.
    assert before == {"2001": "Student-01", "2002": "Student-02", "2004": "Student-03"} == kept_labels(lms_vault)

    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "later.csv", extra=[ZOE]))
    work = load(lms_vault, double)
    after = work.pseudonyms().label
    assert {sid: after[sid] for sid in before} == before  # Zoe, sorting first, moved nobody's label
    assert after["1999"] == "Student-04" and kept_labels(lms_vault)["1999"] == "Student-04"
    assert work.pseudonyms().hide("Zoe Able and Priya Sharma") == "Student-04 and Student-03"
    assert work.pseudonyms().reveal("Student-03 and Student-04") == "Priya Sharma and Zoe Able"


def test_a_student_who_leaves_keeps_their_label_and_no_one_else_is_given_it(lms_vault, tmp_path, double):
    export = moodle_zip(tmp_path / "export.zip", submitters())
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv"))
    load(lms_vault, double)
    # Priya (Student-03) taken off the kept roster by hand; Zoe arrives later.
    path = lms_vault / ASSIGNMENT / "roster.csv"
    path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("2004")) + "\n")
    assert "2004" not in load(lms_vault, double).pseudonyms().label
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "later.csv", extra=[ZOE]))
    path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("2004")) + "\n")
    label = load(lms_vault, double).pseudonyms().label
    assert label == {"1999": "Student-04", "2001": "Student-01", "2002": "Student-02"}
    assert kept_labels(lms_vault)["2004"] == "Student-03"  # kept: a label in last week's notes still means her


def test_submitters_only_labels_are_kept_and_a_late_submitter_sorting_first_moves_no_one(lms_vault, tmp_path, double):
    """Without --roster the cohort is the submitters: a late submission is imported on its own, later."""
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "export.zip", submitters()))
    assert load(lms_vault, double).pseudonyms().label == {"2001": "Student-01", "2002": "Student-02"}
    late = Student("1998", "Kofi Mensah", {"essay.docx": docx_bytes(essay(3))})
    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "late.zip", [*submitters(), late]))
    work = load(lms_vault, double)
    assert {s.student_id for s in work.submissions} == {"1998", "2001", "2002"} and not work.roster
    assert work.pseudonyms().label == {"1998": "Student-03", "2001": "Student-01", "2002": "Student-02"}
    assert not (lms_vault / ASSIGNMENT / "roster.csv").exists()  # the labels' file is not a roster


def test_a_plan_or_a_run_that_hides_no_names_keeps_no_labels(lms_vault, tmp_path, double):
    from tierflow.core.calls import RunSettings
    from tierflow.tasks.assignment import load_assignment

    export = moodle_zip(tmp_path / "export.zip", submitters())
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv"))
    configure(lms_vault, double)
    settings = RunSettings(vault=str(lms_vault), run_id="r", flow="student-feedback")
    planned = load_assignment.fn(settings, ASSIGNMENT, keep=False).pseudonyms().label
    assert not (lms_vault / ASSIGNMENT / "pseudonyms.csv").exists()  # a plan writes nothing
    assert load_assignment.fn(settings, ASSIGNMENT).pseudonyms().label == planned  # as the plan showed them
    assert kept_labels(lms_vault) == planned

    (lms_vault / ASSIGNMENT / "pseudonyms.csv").unlink()
    config = lms_vault / ".tierflow" / "config.toml"
    config.write_text(config.read_text() + "pseudonymise = false\n")  # under the fixture's [feedback]
    work = load_assignment.fn(settings.model_copy(update={"run_id": "r2"}), ASSIGNMENT)  # a new run reads it
    assert not work.pseudonymise and not work.labels and not (lms_vault / ASSIGNMENT / "pseudonyms.csv").exists()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("student_id,label\n2001,Student-01\n2002,Student-01\n", "Student-01 is given to two students"),
        ("student_id,label\n2001,Student-01\n2001,Student-02\n", "student 2001 has two labels"),
        ("student_id,label\n2001,Ben\n", "no label"),
        ("id,name\n2001,Student-01\n", "has no `student_id` and `label` columns"),
    ],
)
def test_kept_labels_that_cannot_be_trusted_stop_the_run_before_any_call(lms_vault, tmp_path, double, text, problem):
    from tierflow.core.errors import VaultError

    import_submissions(lms_vault, ASSIGNMENT, moodle_zip(tmp_path / "export.zip", submitters()))
    (lms_vault / ASSIGNMENT / "pseudonyms.csv").write_text(text, encoding="utf-8")
    with pytest.raises(VaultError, match=problem):
        load(lms_vault, double)
    assert (lms_vault / ASSIGNMENT / "pseudonyms.csv").read_text(encoding="utf-8") == text  # left as it was


@pytest.mark.usefixtures("prefect_harness")
def test_a_batch_pending_across_a_reimport_is_collected_and_each_answer_revealed_as_its_own_student(
    lms_vault, tmp_path, keys
):
    """The drafts go to the provider as a batch; before it ends, a re-import adds Zoe, whose id sorts first.
    Numbered afresh, Ben would be Student-02 (Aisha's label in the batch), Aisha Student-03 (Priya's): the resume
    no longer found the batch it waited for and paid for every phase again, under the moved labels."""
    export = moodle_zip(tmp_path / "export.zip", submitters())
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv"))

    def naming(request: DoubleRequest) -> Reply:
        data = prompt_data(request.last_user_text)
        answer = SKILLS["feedbackout"](data)
        # The student by their label, and Priya by hers when the batch was submitted (both essays name her).
        answer["overall"] += f" {data['student']} argues clearly. Your planning with Student-03 shows."
        return Reply(data=answer)

    with ProviderDouble(skilled({"feedbackout": naming}), batch_polls_until_done=2) as double:
        configure(lms_vault, double)

        def created() -> int:
            return sum(1 for q in double.requests if q.kind == "batch_create")

        run = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT, mode="batch", wait=False)
        for _ in range(3):  # collate, then the cohort, then the drafts: each batch still running when submitted
            if created() == 3:
                break
            run = student_feedback(
                vault=str(lms_vault),
                assignment=ASSIGNMENT,
                mode="batch",
                wait=False,
                run_id=run.run_id,
            )
        assert created() == 3 and "still running" in (run.pending or "") and not run.failed
        feedback = lms_vault / ASSIGNMENT / "feedback"
        assert not list(feedback.glob("* feedback.md"))  # the drafts' batch is at the provider

        import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "later.csv", extra=[ZOE]))
        done = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT, mode="batch", run_id=run.run_id)
        assert not done.failed, done.failed
        assert created() == 3  # the waiting batch was collected, nothing sent again

    ben = (feedback / "2001 feedback.md").read_text(encoding="utf-8")
    aisha = (feedback / "2002 feedback.md").read_text(encoding="utf-8")
    assert "Ben Carter argues clearly. Your planning with Priya Sharma shows." in ben and "Aisha" not in ben
    assert "Aisha Khan argues clearly. Your planning with Priya shows." in aisha and "Ben" not in aisha
    assert "Zoe" not in ben + aisha


@pytest.mark.parametrize(
    ("saved", "name"), [("cp1251", "Иван Петров"), ("cp1253", "Γιώργος Νίκας")], ids=["cyrillic", "greek"]
)
def test_a_kept_roster_excel_saved_in_another_code_page_stops_the_run_before_any_call(
    lms_vault, tmp_path, double, saved, name
):
    """Excel's "CSV" on a Cyrillic or Greek Windows writes the names in that code page, which reads as Windows-1252
    without an error but garbled (Иван as Èâàí): no essay's "Иван" would match, and the name would reach the model.
    The roster is refused, naming the file and the fix; a Windows-1252 roster of accented names still reads."""
    from tierflow.core.errors import VaultError

    export = moodle_zip(tmp_path / "export.zip", submitters())
    classmate = [("2005", name, "classmate@example.ac.uk", "Z5")]
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv", extra=classmate))
    path = lms_vault / ASSIGNMENT / "roster.csv"
    whole = path.read_text(encoding="utf-8-sig")
    path.write_bytes(whole.encode(saved))  # Excel: Save As "CSV (Comma delimited)" on that Windows
    with pytest.raises(VaultError, match=r"roster\.csv.*another Windows code page.*CSV UTF-8"):
        load(lms_vault, double)
    assert double.model_calls() == []

    path.write_bytes(whole.replace(name, "Zoë Åsa Ågren").encode("cp1252"))
    assert "Ågren" not in load(lms_vault, double).pseudonyms().hide("Thanks to Zoë Åsa Ågren.")
