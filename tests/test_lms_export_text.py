"""What a reviewed draft sends to the student: the lecturer's private comments never, tierflow's notices to the
lecturer never, the lecturer's own callouts always, in every export target."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
from test_lms_moodle import draft_text

from tierflow.lms.drafts import Draft
from tierflow.lms.exporter import ExportResult, export_feedback

REPO = Path(__file__).resolve().parents[1]
PRIVATE = ("borderline", "moderator", "second marker", "private")
REVIEWED = """## Argument

**Suggested level:** Good · **suggested score:** 65

A clear argument. %% borderline - discuss with moderator %%

<!-- private: second marker disagreed -->
%%
private: compare with last year's
script before release
%%
The conclusion follows.

> [!tip] Next time
> Start each paragraph with your claim.

> [!warning] Not found verbatim in the submission: check this quotation.

Use `%%d` in the format string, and keep `<!-- x -->` out of your HTML.

```python
print("%% %d" % 5)  # <!-- kept -->
```
"""


def test_comments_are_stripped_and_the_lecturers_callouts_kept_as_readable_html():
    html = Draft("1", "x", {}, REVIEWED).html()
    assert not any(word in html for word in PRIVATE)
    assert "<!--" not in html.replace("&lt;!-- x --&gt;", "").replace("&lt;!-- kept --&gt;", "")
    assert "<p>A clear argument.</p>" in html
    assert "The conclusion follows." in html
    assert "<blockquote><p><strong>Next time</strong><br>Start each paragraph with your claim.</p></blockquote>" in html
    assert "[!tip]" not in html and "Not found verbatim" not in html
    # Inside code, `%%` and `<!--` are what the lecturer wrote, not comments.
    assert "<code>%%d</code>" in html and "<code>&lt;!-- x --&gt;</code>" in html
    assert "print(&quot;%% %d&quot; % 5)  # &lt;!-- kept --&gt;" in html


def test_a_comment_left_open_hides_the_rest_as_obsidian_does():
    text = Draft("1", "x", {}, "Good work.\n\n%% not for the student\n\nstill hidden").student_text()
    assert text == "Good work."
    assert Draft("1", "x", {}, "Fine. <!-- hidden\nhidden too").student_text() == "Fine."


def test_a_callout_without_a_title_is_titled_by_its_type_as_obsidian_shows_it():
    text = Draft("1", "x", {}, "> [!note]-\n> Read chapter 3.").student_text()
    assert text == "> **Note**\n> Read chapter 3."


def test_every_callout_tierflows_feedback_template_writes_is_a_notice():
    from tierflow.lms.drafts import TIERFLOW_NOTICES, is_notice

    template = (REPO / "templates" / "notes" / "feedback.md.j2").read_text(encoding="utf-8")
    heads = [
        (kind, re.sub(r"\{\{.*?\}\}", "x", title)) for kind, title in re.findall(r"^> \[!(\w+)\] (.+)$", template, re.M)
    ]
    for kind, title in heads:
        assert is_notice(kind, title), title
    # Every notice is one the template writes (two callouts may share one: a quotation named, or not).
    for kind, start in TIERFLOW_NOTICES:
        assert any(k == kind and title.startswith(start) for k, title in heads), start
    assert not is_notice("tip", "Next time") and not is_notice("warning", "Check your references")


@pytest.mark.parametrize("target", ["moodle-worksheet", "moodle-files", "canvas"])
def test_no_export_target_sends_a_comment(tmp_path, target):
    import shutil

    from lms_exports import canvas_zip, cohort, moodle_zip
    from test_lms_canvas import gradebook_bytes
    from test_lms_moodle import worksheet_bytes

    from tierflow.lms.importer import import_submissions

    vault = tmp_path / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    assignment = "Teaching/EDU7001/essay-2"
    (vault / assignment / "feedback").mkdir(parents=True)
    shutil.copy(vault / "Teaching/EDU7001/essay-1/rubric.md", vault / assignment / "rubric.md")
    students = cohort()[:1]
    make = canvas_zip if target == "canvas" else moodle_zip
    import_submissions(vault, assignment, make(tmp_path / "submissions.zip", students))
    draft = draft_text("1001").replace("## Next steps", "%% borderline - discuss with moderator %%\n\n## Next steps")
    draft = draft.replace("A sound essay.", "A sound essay. <!-- private: second marker disagreed -->")
    (vault / assignment / "feedback" / "1001 feedback.md").write_text(draft, encoding="utf-8")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    if target == "moodle-worksheet":
        (downloads / "w.csv").write_bytes(worksheet_bytes())
        result = export_feedback(vault, assignment, target, worksheet=downloads / "w.csv")
        sent = result.written[0].read_text(encoding="utf-8-sig")
    else:
        if target == "canvas":
            (downloads / "g.csv").write_bytes(gradebook_bytes())
            result = export_feedback(vault, assignment, target, gradebook=downloads / "g.csv", column="4512")
        else:
            result = export_feedback(vault, assignment, target, out=downloads / "files.zip")
        import docx

        (archive,) = [p for p in result.written if p.suffix == ".zip"]
        with zipfile.ZipFile(archive) as z:
            (name,) = z.namelist()
            sent = "\n".join(p.text for p in docx.Document(io.BytesIO(z.read(name))).paragraphs)
    assert result.sent == ["1001"]
    assert "A sound essay." in sent
    assert not any(word in sent for word in PRIVATE), sent


def feedback_body(student_id: str, name: str, *, criteria: list, next_steps: list, overall: str, empty=False) -> str:
    """A draft's body as tierflow's feedback template writes it (the bundled template, no vault override)."""
    from types import SimpleNamespace

    from tierflow.vault.notes import template_env

    student = SimpleNamespace(student_id=student_id, name=name, path=f"s/{student_id}.md", not_read=(), empty=empty)
    return (
        template_env(None, "Templates/tierflow")
        .get_template("notes/feedback.md.j2")
        .render(
            student=student,
            criteria=criteria,
            problems="",
            next_steps=next_steps,
            overall=overall,
            empty=empty,
            flags=(),
            offline=False,
        )
    )


def test_a_students_comment_marks_quoted_back_in_a_draft_start_no_comment_and_reach_the_student_as_written():
    """A student typed "from 40%% to 65%"; a model quoting it wrote `%%` into the draft, where it started a
    comment that hid the rest of the draft in Obsidian and in what was exported to the student."""

    from tierflow.vault.text import hide_comments, unclosed_comment

    criterion = {
        "criterion": "Argument",
        "missing": False,
        "level": "Good",
        "range": "60-69",
        "score": 65,
        "comment": "You show completion rose from 40%% to 65%, and you explain the <!-- markup.",
        "quotes": [{"text": "Completion rose from 40%% to 65%", "verbatim": True}],
    }
    body = feedback_body(
        "2001", "Ben Carter", criteria=[criterion], next_steps=["Keep the 40%% figure."],
        overall="A careful essay; the end matters.",
    )  # fmt: skip
    assert unclosed_comment(body) is None and "the end matters" in hide_comments(body)
    sent = Draft("2001", "x", {}, body).student_text()
    assert "rose from 40%% to 65%" in sent and "the <!-- markup" in sent and "the end matters" in sent


def test_a_students_link_marks_quoted_back_in_a_draft_make_no_link_and_reach_the_student_as_written(tmp_path):
    """A student wrote R's `df[["age"]]`: a model quoting it wrote a link to no note into the draft, which the
    writer refuses, so the student got no draft."""

    from tierflow.vault.links import link_targets
    from tierflow.vault.notes import NoteWriter

    code = 'df[["age"]]'
    criterion = {
        "criterion": "Method",
        "missing": False,
        "level": "Good",
        "range": "60-69",
        "score": 65,
        "comment": f"You select the column with {code}; see your [appendix](appendix.md).",
        "quotes": [{"text": f"I selected the column with {code} and then x[[1]]", "verbatim": True}],
    }
    body = feedback_body(
        "2001", "Ben Carter", criteria=[criterion], next_steps=["Keep ![[img.png]] out of the text."],
        overall="A careful lab report.",
    )  # fmt: skip
    assert link_targets(body) == []
    (tmp_path / "vault").mkdir()
    assert NoteWriter(tmp_path / "vault", "feedback").write("2001 feedback", {"student_id": "2001"}, body).action == (
        "created"
    )
    sent = Draft("2001", "x", {}, body).student_text()
    assert f"column with {code}; see your [appendix](appendix.md)" in sent and "and then x[[1]]" in sent
    assert "Keep ![[img.png]] out" in sent


def no_content_draft(*, before_the_notice: bool = False, written: str = "", mark: str = "") -> str:
    """A reviewed draft of Zoë Hart's (1005) scanned PDF, which gave no text: as the feedback template writes it now,
    or as it wrote it before its words to the lecturer were a notice (a heading and a paragraph); with the `mark`
    the lecturer set in its front-matter."""

    if before_the_notice:
        body = (
            "> [!info] Draft feedback by tierflow, for the lecturer to review before release\n> Structured.\n\n"
            "## No content submitted\n\nThe submission for Zoë Hart has no text, so no feedback was drafted and no "
            "model was called. Check whether the work was submitted elsewhere.\n"
        )
    else:
        body = feedback_body("1005", "Zoë Hart", criteria=[], next_steps=[], overall="", empty=True)
    own = f"mark: {mark}\n" if mark else ""
    front = f'---\ntitle: "Feedback: Zoë Hart"\nstudent_id: "1005"\nstatus: reviewed\n{own}tierflow_levels: []\n---\n\n'
    return front + body + written


def test_tierflows_words_on_a_submission_with_no_text_are_a_notice_to_the_lecturer():
    for legacy in (False, True):
        text = no_content_draft(before_the_notice=legacy)
        assert "has no text" in text
        assert Draft("1005", "x", {}, text.split("---\n", 2)[2]).student_text() == ""
    own = no_content_draft(written="\nYour essay reached me by email: see the comments in it.\n").split("---\n", 2)[2]
    assert Draft("1005", "x", {}, own).student_text() == "Your essay reached me by email: see the comments in it."


NO_TEXT = "Teaching/EDU7001/essay-2"


def export_no_content(tmp_path: Path, target: str, draft: str) -> tuple[ExportResult, Path]:
    """The cohort imported for `target`, 1001's draft and 1005's `draft` (of a submission with no text) reviewed,
    exported to `target` (`moodle-files` into `out.zip`); the result and the worksheet or gradebook downloaded."""
    import shutil

    from lms_exports import canvas_zip, cohort, moodle_zip
    from test_lms_canvas import gradebook_bytes
    from test_lms_roundtrip import worksheet_for

    from tierflow.lms.importer import import_submissions

    vault = tmp_path / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    (vault / NO_TEXT / "feedback").mkdir(parents=True)
    shutil.copy(vault / "Teaching/EDU7001/essay-1/rubric.md", vault / NO_TEXT / "rubric.md")
    make = canvas_zip if target == "canvas" else moodle_zip
    import_submissions(vault, NO_TEXT, make(tmp_path / "submissions.zip", cohort()))
    (vault / NO_TEXT / "feedback" / "1001 feedback.md").write_text(draft_text("1001"), encoding="utf-8")
    (vault / NO_TEXT / "feedback" / "1005 feedback.md").write_text(draft, encoding="utf-8")
    downloaded = tmp_path / "downloaded.csv"
    downloaded.write_bytes(gradebook_bytes() if target == "canvas" else worksheet_for(cohort()))
    if target == "moodle-files":
        return export_feedback(vault, NO_TEXT, target, out=tmp_path / "out.zip"), downloaded
    given = {"gradebook": downloaded, "column": "4512"} if target == "canvas" else {"worksheet": downloaded}
    return export_feedback(vault, NO_TEXT, target, **given), downloaded


@pytest.mark.parametrize("legacy", [False, True], ids=["notice", "before-the-notice"])
@pytest.mark.parametrize("target", ["moodle-worksheet", "moodle-files", "canvas"])
def test_a_reviewed_draft_of_a_submission_with_no_text_sends_nothing_and_is_named_once(tmp_path, target, legacy):
    result, downloaded = export_no_content(tmp_path, target, no_content_draft(before_the_notice=legacy))
    assert result.sent == ["1001"] and "1005" not in result.marks
    (why,) = [why for path, why in result.left_out if path == f"{NO_TEXT}/feedback/1005 feedback.md"]
    assert why.startswith("no feedback to send: no text was read; 1005 (Zoë Hart)")
    assert "scan.pdf: no text layer" in why and "no mark" in why
    # The notes name the vault's path, and pytest's temporary folders are numbered (`pytest-1005`): left out.
    said = "\n".join(result.notes).replace(str(tmp_path), "<tmp>")
    assert "1005" not in said and "level 'none'" not in said  # named once, with no explanation per criterion
    for path in result.written:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as z:
                (name,) = z.namelist()  # Moodle's folder names the participant id, Canvas's the sortable name
                assert "_1001_" in name or name.startswith("osullivanliam_1001_")
        else:
            before = downloaded.read_bytes().decode("utf-8-sig").splitlines()
            after = path.read_bytes().decode("utf-8-sig").splitlines()
            (row,) = [i for i, line in enumerate(before) if "1005" in line]
            assert after[row] == before[row]  # 1005 as downloaded


@pytest.mark.parametrize("legacy", [False, True], ids=["notice", "before-the-notice"])
@pytest.mark.parametrize("target", ["moodle-worksheet", "canvas"])
def test_feedback_written_into_a_draft_of_a_submission_with_no_text_and_no_mark_says_once_why_no_mark(
    tmp_path, target, legacy
):
    """Not once per criterion ("level 'none' is not one of the rubric's"): the draft has no criteria to score."""
    written = "\nYour essay reached me by email: see the comments in it.\n"
    result, _ = export_no_content(tmp_path, target, no_content_draft(before_the_notice=legacy, written=written))
    assert "1005" not in result.marks
    (said,) = [n for n in result.notes if n.startswith("1005 ")]
    assert "no text was read from the submission; add `mark:` to the draft's front-matter to give one" in said
    assert "level 'none'" not in "\n".join(result.notes)


@pytest.mark.parametrize("legacy", [False, True], ids=["notice", "before-the-notice"])
@pytest.mark.parametrize("target", ["moodle-worksheet", "moodle-files", "canvas"])
def test_a_mark_set_in_a_reviewed_draft_of_a_submission_with_no_text_is_exported_as_written(tmp_path, target, legacy):
    """A lecturer gives `mark: 0` to a student whose submission gave no text (a scanned PDF): the draft holds only
    tierflow's notice, and the export dropped the mark with it ("no mark either is sent"). A mark a person set goes
    as written, 0 too, and nothing else of the draft: the Feedback comments cell stays as it was, Canvas gets no
    comment file, and the feedback-files zip (which holds no grades) names the draft and where its mark goes."""
    from lms_exports import cohort
    from lms_rules import canvas_import_gradebook, moodle_import_worksheet
    from test_lms_canvas import ASSIGNMENTS

    result, _ = export_no_content(tmp_path, target, no_content_draft(before_the_notice=legacy, mark="0"))
    if target == "moodle-files":
        assert result.sent == ["1001"] and "1005" not in result.marks
        (why,) = [why for path, why in result.left_out if path == f"{NO_TEXT}/feedback/1005 feedback.md"]
        assert "`mark: 0`" in why and "--to moodle-worksheet" in why
        with zipfile.ZipFile(tmp_path / "out.zip") as z:
            assert [n for n in z.namelist() if "_1005_" in n] == []
        return
    if target == "canvas":
        grades = canvas_import_gradebook(result.written[0].read_bytes(), ASSIGNMENTS)["grades"]
        assert grades["1005"]["4512"] == "0" and float(grades["1001"]["4512"]) > 0
        with zipfile.ZipFile(result.written[1]) as z:
            assert not [n for n in z.namelist() if "_1005_" in n]  # no comment file with nothing in it
    else:
        imported = moodle_import_worksheet(result.written[0].read_bytes(), participants={s.participant for s in
                                           cohort()}, maximum=100)  # fmt: skip
        assert imported["1005"] == {"grade": 0.0, "feedback": ""}  # the comments cell as downloaded
        assert imported["1001"]["grade"] > 0
    assert sorted(result.sent) == ["1001", "1005"] and result.marks["1005"] == 0
    assert not [why for path, why in result.left_out if path.endswith("1005 feedback.md")]
    assert any(n.startswith("1005 (Zoë Hart): `mark: 0` sent alone") for n in result.notes), result.notes


STUDENT_LINKS = "I describe my [method](method.md) and the [survey site](https://survey.example.org/q)."
LECTURERS_LINK = "https://uni.example.ac.uk/writing"


@pytest.mark.parametrize("target", ["moodle-worksheet", "canvas"])
def test_a_students_markdown_links_quoted_in_a_draft_reach_the_student_as_typed_not_as_links(
    lms_vault, tmp_path, target
):
    """A student's `[method](method.md)`, quoted back in a draft, went to Moodle's feedback comments as
    `<a href="method.md">`, a link Moodle resolves against its own page, and their `[survey site](https://...)` as a
    link in the feedback they never typed as one. A link the lecturer adds while reviewing stays a link."""
    import csv

    from conftest import LMS_ASSIGNMENT as assignment
    from lms_exports import canvas_zip, cohort, moodle_zip, onlinetext
    from test_lms_canvas import gradebook_bytes
    from test_lms_moodle import LEVELS
    from test_lms_roundtrip import worksheet_for

    from tierflow.lms.importer import import_submissions

    vault = lms_vault
    (vault / assignment / "feedback").mkdir()
    students = cohort()[:1]
    students[0].files = {"essay.html": onlinetext(f"<p>Essay by Liam O'Sullivan.</p><p>{STUDENT_LINKS}</p>")}
    make = canvas_zip if target == "canvas" else moodle_zip
    import_submissions(vault, assignment, make(tmp_path / "submissions.zip", students))
    a_level, a_score, b_level, b_score = LEVELS["1001"]
    criteria = [
        {"criterion": name, "missing": False, "level": level, "range": "", "score": score, "quotes": [],
         "comment": f"A comment on {name.lower()}."}
        for name, level, score in (
            ("Argument and critical evaluation", a_level, a_score), ("Use of literature", b_level, b_score),
            ("Structure and clarity", a_level, a_score), ("Referencing and academic conventions", b_level, b_score),
        )
    ]  # fmt: skip
    criteria[0]["quotes"] = [{"text": STUDENT_LINKS, "verbatim": True}]
    criteria[0]["comment"] = "You point the reader to your [method](method.md) section."
    body = feedback_body("1001", "Liam O'Sullivan", criteria=criteria, next_steps=["Cite the survey."], overall="Good.")
    body += f"\nRead [the writing guide]({LECTURERS_LINK}) before the next essay.\n"  # the lecturer's, on review
    front = '---\ntitle: "Feedback: Liam O\'Sullivan"\nstudent_id: "1001"\nstatus: reviewed\n---\n\n'
    (vault / assignment / "feedback" / "1001 feedback.md").write_text(front + body, encoding="utf-8")

    downloaded = tmp_path / "downloaded.csv"
    if target == "moodle-worksheet":
        downloaded.write_bytes(worksheet_for(students))
        result = export_feedback(vault, assignment, target, worksheet=downloaded)
        (row,) = csv.DictReader(io.StringIO(result.written[0].read_text(encoding="utf-8-sig")))
        sent = row["Feedback comments"]
    else:
        downloaded.write_bytes(gradebook_bytes())
        result = export_feedback(vault, assignment, target, gradebook=downloaded, column="4512")
        with zipfile.ZipFile(tmp_path / "downloaded (tierflow) comments.zip") as z:
            (name,) = z.namelist()
            assert name.endswith("_essay.html")
            sent = z.read(name).decode()
    assert result.sent == ["1001"]
    assert "I describe my [method](method.md) and the [survey site](https://survey.example.org/q)." in sent
    assert "your [method](method.md) section" in sent
    assert re.findall(r'<a href="([^"]*)"', sent) == [LECTURERS_LINK], sent
