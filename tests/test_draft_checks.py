"""Which feedback drafts were kept although their answer failed its checks, and which a person has edited: what
`tierflow run student-feedback --retry-failed` drafts again (`tasks.feedback.already_drafted`)."""

from __future__ import annotations

from types import SimpleNamespace

from tierflow.lms.drafts import Draft
from tierflow.vault.notes import HASH_KEY, body_hash, template_env


def body(problems: str = "", verbatim: bool = True) -> str:
    """A draft's body as the bundled feedback template writes it: one criterion, one quotation."""
    student = SimpleNamespace(student_id="s1", name="Ada", path="s/s1.md", not_read=(), empty=False)
    criteria = [
        {
            "criterion": "Argument", "missing": False, "level": "Good", "range": "", "score": "",
            "comment": "Clear.", "quotes": [{"text": "I argue that", "verbatim": verbatim}],
        }
    ]  # fmt: skip
    return (
        template_env(None, "Templates/tierflow")
        .get_template("notes/feedback.md.j2")
        .render(student=student, criteria=criteria, problems=problems, next_steps=[], overall="", empty=False,
                flags=(), offline=False)
    )  # fmt: skip


def draft(meta: dict, text: str) -> Draft:
    """A draft as tierflow wrote it: its hash in the front-matter."""
    return Draft("s1", "f/s1 feedback.md", {**meta, HASH_KEY: body_hash(meta, text)}, text)


def test_a_draft_says_which_checks_its_answer_failed_as_it_records_them_or_as_an_older_one_shows_them():
    assert draft({"tierflow_unverified_quotes": 0}, body()).checks_failed == []
    recorded = {"tierflow_checks_failed": ["quotes_verbatim"], "tierflow_unverified_quotes": 1}
    assert draft(recorded, body(verbatim=False)).checks_failed == ["quotes_verbatim"]
    # Written before drafts recorded them: a quotation not found verbatim, the rubric's warning.
    assert draft({"tierflow_unverified_quotes": 1}, body(verbatim=False)).checks_failed == ["quotes_verbatim"]
    rubric = body(problems="'Argument': no level given")
    assert draft({"tierflow_unverified_quotes": 0}, rubric).checks_failed == ["rubric_coverage"]


def test_a_draft_is_as_tierflow_wrote_it_until_someone_edits_it():
    written = draft({"status": "draft"}, body())
    assert written.as_written
    assert not Draft("s1", written.path, written.metadata, written.body + "\nMy comment.").as_written
    assert not Draft("s1", written.path, {**written.metadata, "status": "reviewed"}, written.body).as_written
    assert not Draft("s1", written.path, {"status": "draft"}, written.body).as_written  # no hash: not tierflow's
