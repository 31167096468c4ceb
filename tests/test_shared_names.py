"""Students who share a name, and a model quoting across a line break: each student's own text hides a shared name
under their own label, text of no one student under no one's, and every label comes back as the student wrote it."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from conftest import anthropic_config, write_config
from lms_exports import Student as Submitter
from lms_exports import docx_bytes, essay, moodle_zip
from lms_rules import php_fputcsv
from responders import skilled

from tierflow.offline import SKILLS, prompt_data
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply
from tierflow.vault.pseudonyms import Pseudonyms, Student

ASSIGNMENT = "Teaching/EDU7001/essay-2"  # `lms_vault`'s empty assignment
NAMESAKE = re.compile(r"Namesake-\d+")
"""What stands for a name two or more students share, in text that is none of theirs."""


def labels_in(text: str) -> set[str]:
    return set(re.findall(r"(?:Student|Namesake)-\d+", text))


def test_a_name_two_students_share_is_each_ones_own_label_in_their_own_text():
    """The first student by sorted id took "Sarah" for the whole cohort: Sarah Patel's own log read "I,
    Student-01" (Sarah Jones)."""
    cohort = Pseudonyms([Student("2031", "Sarah Patel"), Student("2007", "Sarah Jones")])
    assert cohort.label == {"2007": "Student-01", "2031": "Student-02"}
    log = "Reflective log of Sarah Patel. In week 3 I, Sarah, changed my mind; Sarah Jones and SARAH'S notes helped."
    assert cohort.hide(log, student="2031") == (
        "Reflective log of Student-02. In week 3 I, Student-02, changed my mind; Student-01 and Student-02'S notes "
        "helped."
    )
    assert cohort.hide(log, student="2007") == (
        "Reflective log of Student-02. In week 3 I, Student-01, changed my mind; Student-01 and Student-01'S notes "
        "helped."
    )
    # A German possessive of the shared name is the writer's own too.
    assert cohort.hide("Sarahs Analyse", student="2031") == "Student-02 Analyse"

    # Two students of one full name: each one's essay is all their own label, whichever sorts first.
    annas = Pseudonyms([Student("2004", "Anna Smith"), Student("2005", "Anna Smith"), Student("2001", "Ben Carter")])
    essay_ = "Anna Smith, second of that name (Smith, A.). I, Anna, worked with Ben."
    assert annas.hide(essay_, student="2005") == (
        "Student-03, second of that name (Student-03, A.). I, Student-03, worked with Student-01."
    )
    assert labels_in(annas.hide(essay_, student="2004")) == {"Student-02", "Student-01"}


def test_a_shared_name_in_text_of_no_one_student_is_attributed_to_none_of_them_and_reads_back_as_written():
    cohort = Pseudonyms(
        [Student("2004", "Anna Smith"), Student("2005", "Anna Smith"), Student("2031", "Sarah Patel"),
         Student("2007", "Sarah Jones"), Student("2001", "Ben Carter")]
    )  # fmt: skip
    labels = cohort.label
    brief = "Like Sarah's exemplar and Anna Smith's, cite Smith (2019). Sarah Patel and Ben set the data."
    hidden = cohort.hidden(brief)
    found = labels_in(hidden.text)
    # "Sarah" and "Anna Smith" name no one student: no label of a Sarah or an Anna stands for them.
    assert labels["2031"] in found and labels["2001"] in found  # "Sarah Patel", "Ben": each one student's
    assert not {labels["2007"], labels["2004"], labels["2005"]} & found
    sarah, anna = NAMESAKE.findall(hidden.text)[0], NAMESAKE.findall(hidden.text)[1]
    assert hidden.text == (
        f"Like {sarah}'s exemplar and {anna}'s, cite {anna} (2019). {labels['2031']} and {labels['2001']} set the data."
    )
    assert sarah != anna
    # No name part reaches the model.
    assert not re.search(r"(?i)sarah|anna|smith|patel|jones|ben|carter", hidden.text)
    # The lecturer reads the shared name back, never one student's.
    assert cohort.reveal(f"Like {sarah}'s exemplar and {anna}'s.") == "Like Sarah's exemplar and Anna Smith's."
    assert hidden.written()[anna] == "Anna Smith"
    assert cohort.restore_label(f"Cite {anna} (2019).", hidden, anna, "Anna Smith") == "Cite Smith (2019)."

    # A classmate's essay naming the Annas: neither Anna's label, and it reads back as the student wrote it.
    ben = cohort.hidden("I planned it with Anna Smith; Sarah Patel helped.", student="2001")
    assert ben.text == f"I planned it with {anna}; {labels['2031']} helped."
    assert cohort.restore(f"with {anna};", ben) == "with Anna Smith;"


def test_a_label_quoted_across_a_line_break_comes_back_as_what_stood_there():
    """A .docx cover table is read with a blank line between cells; the model quotes it on one line. The student
    number's label came back as the student's name (12 characters of context, `\\n\\n` against a space)."""
    cohort = Pseudonyms([Student("2006", "Liam O\u2019Sullivan", also=("S1234501",)), Student("2001", "Ben Carter")])
    hidden = cohort.hidden(
        "Name\n\nLiam O\u2019Sullivan\n\nStudent number\n\nS1234501\n\nEssay by Liam O\u2019Sullivan on feedback."
    )
    label = cohort.label["2006"]
    quoted = f'You open with "Name {label} Student number {label} Essay by {label} on feedback", which is clear.'
    assert cohort.restore_label(quoted, hidden, label, "Liam O'Sullivan") == (
        'You open with "Name Liam O\u2019Sullivan Student number S1234501 Essay by Liam O\u2019Sullivan on feedback", '
        "which is clear."
    )
    # Runs of any whitespace are alike; other characters still count exactly.
    tabbed = f"Name\t{label}  Student number\n{label}\r\nEssay by"
    assert cohort.restore_label(tabbed, hidden, label, "Liam O'Sullivan") == (
        "Name\tLiam O\u2019Sullivan  Student number\nS1234501\r\nEssay by"
    )
    assert cohort.restore_label(f"Well done, {label}.", hidden, label, "Liam O'Sullivan") == (
        "Well done, Liam O'Sullivan."
    )


# End to end: a Moodle export and its grading worksheet, through the feedback flow on Anthropic's wire double.

WORKSHEET_HEADER = ["Identifier", "Full name", "Email address", "ID number", "Status", "Grade", "Feedback comments"]
ROSTER = [
    ("2001", "Ben Carter", "ben.carter@example.ac.uk", "S1234001"),
    ("2004", "Anna Smith", "anna.smith@example.ac.uk", "S1234004"),
    ("2005", "Anna Smith", "anna.smith2@example.ac.uk", "S1234005"),
    ("2006", "Liam O\u2019Sullivan", "liam.osullivan@example.ac.uk", "S1234501"),
]


def cover_docx(name: str, number: str, paragraphs: list[str]) -> bytes:
    """A .docx opening with the cover table students fill in (`Name | ...`, `Student number | ...`)."""
    import docx

    document = docx.Document()
    table = document.add_table(rows=2, cols=2)
    for row, (key, value) in enumerate((("Name", name), ("Student number", number))):
        table.cell(row, 0).text, table.cell(row, 1).text = key, value
    for text in paragraphs:
        document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def worksheet(path: Path) -> Path:
    lines = [php_fputcsv(WORKSHEET_HEADER)]
    for sid, name, email, number in ROSTER:
        lines.append(php_fputcsv([f"Participant {sid}", name, email, number, "Submitted for grading", "", ""]))
    path.write_bytes(b"\xef\xbb\xbf" + "".join(lines).encode("utf-8"))
    return path


@pytest.mark.usefixtures("prefect_harness")
def test_namesakes_and_a_cover_table_through_the_feedback_flow(lms_vault, tmp_path, monkeypatch):
    from tierflow.flows.student_feedback import student_feedback
    from tierflow.lms.importer import import_submissions

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    liam = "Liam O\u2019Sullivan"
    submitters = [
        Submitter("2001", "Ben Carter", {"essay.docx": docx_bytes(essay(1, "I planned this essay with Anna Smith."))}),
        Submitter("2004", "Anna Smith", {"essay.docx": docx_bytes(essay(2, "Essay by Anna Smith."))}),
        Submitter(
            "2005", "Anna Smith", {"essay.docx": docx_bytes(essay(3, "Anna Smith, second of that name. I, Anna, "))}
        ),
        Submitter("2006", liam, {"essay.docx": cover_docx(liam, "S1234501", essay(4, f"Essay by {liam}."))}),
    ]
    export = moodle_zip(tmp_path / "export.zip", submitters)
    import_submissions(lms_vault, ASSIGNMENT, export, roster=worksheet(tmp_path / "worksheet.csv"))
    config = lms_vault / ".tierflow" / "config.toml"

    prompts: dict[str, list[str]] = {}  # each student's label: the submissions sent for them

    def drafting(request: DoubleRequest) -> Reply:
        data = prompt_data(request.last_user_text)
        prompts.setdefault(data["student"], []).append(data["submission"])
        answer = SKILLS["feedbackout"](data)
        submission = data["submission"]
        if "Student number" in submission:  # the cover table, quoted as a model does: on one line
            cover = submission[submission.index("Name") :].split()[:8]
            answer["overall"] += f' You open with "{" ".join(cover)}", which is clear.'
        for other in sorted(set(NAMESAKE.findall(submission))):
            answer["overall"] += f" Your planning with {other} shows."
        answer["overall"] += f" Well done, {data['student']}."
        return Reply(data=answer)

    with ProviderDouble(skilled({"feedbackout": drafting})) as double:
        write_config(config, anthropic_config(double) + config.read_text())
        summary = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT)
        sent = [
            (r.raw.decode("utf-8", "replace") + json.dumps(r.json, ensure_ascii=False)).casefold()
            for r in double.requests
        ]
    assert not summary.failed
    for identity in ("Anna", "Smith", "Ben", "Carter", "Liam", "Sullivan", "1234501", "1234004", "1234005"):
        # As a word: the bundled essays cite Black & Wiliam.
        leaked = [i for i, body in enumerate(sent) if re.search(rf"\b{identity.casefold()}", body)]
        assert not leaked, f"{identity} reached the model in request(s) {leaked}"
    # Where a namesake label reaches the marking model, its system prompt says whom it stands for: no one student.
    marking = [body for body in sent if "namesake-01" in body and "mark student work against a rubric" in body]
    assert marking and all("a name that several students share" in body for body in marking)

    ben, anna, anna2, liam_ = "Student-01", "Student-02", "Student-03", "Student-04"  # by sorted id
    # Each Anna's prompt holds her own label only, however the two sort; Ben's names neither Anna.
    assert prompts[anna2] and all(labels_in(s) == {anna2} for s in prompts[anna2])
    assert prompts[anna] and all(labels_in(s) == {anna} for s in prompts[anna])
    assert prompts[ben] and all(len(NAMESAKE.findall(s)) == 1 and labels_in(s) & {anna, anna2} == set()
                                for s in prompts[ben])  # fmt: skip

    feedback = lms_vault / ASSIGNMENT / "feedback"
    drafts = {sid: (feedback / f"{sid} feedback.md").read_text(encoding="utf-8") for sid, *_ in ROSTER}
    assert "Your planning with Anna Smith shows." in drafts["2001"] and "Well done, Ben Carter." in drafts["2001"]
    assert "Well done, Anna Smith." in drafts["2005"] and "Student-0" not in drafts["2005"]
    # The student number's label comes back as the number, not as Liam's name.
    assert f'"Name {liam} Student number S1234501 Essay by {liam}' in drafts["2006"], drafts["2006"]
    assert liam_ not in drafts["2006"]
