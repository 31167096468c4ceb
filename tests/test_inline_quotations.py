"""Quotations a model writes inside its prose (in quotation marks, or a blockquote) are checked against the source
as the structured `quotes` are: an invented one is retried, escalated and, never fixed, flagged in the draft.

The reading-notes and student-feedback flows under Prefect's test harness, against the real Anthropic SDK on the
wire double, whose answers are the offline skills' with a quotation written into the text.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import frontmatter
import pytest
from conftest import READING_WEEK, anthropic_config, write_config
from responders import schema_name, skilled

from tierflow.core.ledger import Ledger
from tierflow.flows.reading_notes import reading_notes
from tierflow.flows.student_feedback import student_feedback
from tierflow.offline import SKILLS, prompt_data
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply
from tierflow.vault.quotations import inline_quotations, not_quoted

pytestmark = pytest.mark.usefixtures("prefect_harness")

FEEDBACK = "Teaching/EDU7001/essay-1/feedback"
CHECK = "inline_quotes_verbatim"
# The tester's two invented quotations, word for word.
INVENTED_NOTE = '> "Feedback is never useful for any learner." ({citekey})'
INVENTED_COMMENT = 'You write that "feedback always doubles learning", which overstates Hattie.'


def retry(request: DoubleRequest) -> bool:
    """Whether the request is an informed retry (templates/prompts/call/retry.j2 appended to the prompt)."""
    return "could not be used" in request.last_user_text


def answering(name: str, change: Callable[[dict[str, Any], dict[str, Any], DoubleRequest], None]):
    """The offline skills' answers, with `change(answer, prompt data, request)` made to those of schema `name`."""

    def respond(request: DoubleRequest) -> Reply:
        data = prompt_data(request.last_user_text)
        answer = SKILLS[name](data)
        change(answer, data, request)
        return Reply(data=answer)

    return skilled({name: respond})


def configure(vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    config = vault / ".tierflow" / "config.toml"
    write_config(config, anthropic_config(double) + config.read_text(encoding="utf-8"))


def billed_drafts(vault: Path, run_id: str) -> list[dict[str, Any]]:
    return [r for r in Ledger.for_vault(vault).rows(run_id=run_id) if r["phase"] == "draft" and not r["cached_result"]]


# --- what counts as a quotation --------------------------------------------------------------------


def test_scare_quotes_and_terms_are_not_quotations_but_clauses_in_any_marks_are():
    text = (
        'A "formative" view, "feedback literacy" and 「形成的評価」 are terms. '
        "Hattie writes “feedback always doubles learning” and „Rückmeldung ist immer sehr gut“ and "
        "« le retour est toujours utile », 「フィードバックは学習に最も強い影響を与える」 "
        "and 『反馈总是使学习效果翻倍的』.\n\n"
        "> Feedback is one of the most powerful influences on learning\n> — Hattie and Timperley (2007)\n\n"
        '`"a code span is not a quotation at all"`'
    )
    assert [q.text for q in inline_quotations(text)] == [
        "feedback always doubles learning",
        "Rückmeldung ist immer sehr gut",
        "le retour est toujours utile",
        "フィードバックは学習に最も強い影響を与える",
        "反馈总是使学习效果翻倍的",
        "Feedback is one of the most powerful influences on learning",
    ]


def test_a_genuine_quotation_passes_whatever_its_marks_whitespace_elision_or_full_stop():
    source = 'He said: "Feedback is one of the most powerful influences on learning and achievement" (p. 81).'
    prose = (
        "They call it “Feedback  is one of the most powerful\ninfluences on learning and achievement.” "
        'and "feedback is one of the most powerful ... and achievement".'
    )
    assert not_quoted(prose, source) == []
    assert not_quoted('He said "feedback is the most powerful influence".', source) == [
        "feedback is the most powerful influence"
    ]


# --- reading notes ---------------------------------------------------------------------------------


def invent_in_summary(answer: dict[str, Any], data: dict[str, Any], request: DoubleRequest) -> None:
    answer["summary"] += "\n\n" + INVENTED_NOTE.format(citekey=data["sources"][0]["citekey"])


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed on retry", "never fixed"])
def test_an_invented_quotation_in_a_reading_note_is_retried_and_flagged_if_never_fixed(
    reading_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch, fixed: bool
):
    configure(reading_vault, double, monkeypatch)

    def change(answer: dict[str, Any], data: dict[str, Any], request: DoubleRequest) -> None:
        if not (fixed and retry(request)):
            invent_in_summary(answer, data, request)

    double.responder = answering("draftout", change)
    summary = reading_notes(vault=str(reading_vault), since=READING_WEEK[0], until=READING_WEEK[1])
    assert summary.written
    rows = billed_drafts(reading_vault, summary.run_id)
    calls = [c for c in double.model_calls() if schema_name(c) == "draftout"]
    assert len(rows) == len(calls) > len(summary.written)  # every billed attempt, retries and escalations too
    first = [r for r in rows if r["attempt"] == 1 and not r["escalated_from"]]
    assert first and all(r["outcome"] == "check_failed" and CHECK in r["checks_failed"] for r in first)
    for written in summary.written:
        post = frontmatter.load(reading_vault / written.path)
        if fixed:
            assert "tierflow_checks_failed" not in post.metadata
            assert post.metadata["tierflow_unverified_quotes"] == 0 and "Not found verbatim" not in post.content
        else:
            assert CHECK in post.metadata["tierflow_checks_failed"]
            assert post.metadata["tierflow_unverified_quotes"] >= 1
            assert "[!warning] Not found verbatim in [[" in post.content
            assert '"Feedback is never useful for any learner."' in post.content
    if fixed:
        assert sorted(r["outcome"] for r in rows) == sorted(["check_failed", "ok"] * len(summary.written))
    else:
        problem = "is not word for word in"
        retried = [c for c in calls if retry(c)]
        assert retried and all(problem in c.last_user_text and "quotation marks" in c.last_user_text for c in retried)


def test_a_genuine_inline_quotation_and_scare_quotes_in_a_reading_note_pass_first_time(
    reading_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch
):
    configure(reading_vault, double, monkeypatch)

    def quote_genuinely(answer: dict[str, Any], data: dict[str, Any], request: DoubleRequest) -> None:
        source = next(s for s in data["sources"] if any(len(q.split()) >= 6 for q in s["quotes"]))
        words = next(q for q in source["quotes"] if len(q.split()) >= 6).split()
        half = len(words) // 2
        # Curly marks where the source has straight ones or none, and a line break and two spaces inside.
        curly = f"“{' '.join(words[:half])}\n{'  '.join(words[half:])}”"
        answer["discussion"] += (
            f'\n\nAs {source["citekey"]} puts it, {curly}. A "formative" reading, or "feedback literacy", is another.'
            f'\n\n> "{" ".join(words)}" ({source["citekey"]})'
        )

    double.responder = answering("draftout", quote_genuinely)
    summary = reading_notes(vault=str(reading_vault), since=READING_WEEK[0], until=READING_WEEK[1])
    assert summary.written
    rows = billed_drafts(reading_vault, summary.run_id)
    assert [r["outcome"] for r in rows] == ["ok"] * len(summary.written)
    for written in summary.written:
        post = frontmatter.load(reading_vault / written.path)
        assert "tierflow_checks_failed" not in post.metadata and "Not found verbatim" not in post.content
        assert '"formative"' in post.content


# --- student feedback ------------------------------------------------------------------------------


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed on retry", "never fixed"])
def test_an_invented_quotation_in_a_feedback_comment_is_retried_and_flagged_if_never_fixed(
    feedback_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch, fixed: bool
):
    configure(feedback_vault, double, monkeypatch)

    def change(answer: dict[str, Any], data: dict[str, Any], request: DoubleRequest) -> None:
        if not (fixed and retry(request)):
            answer["criteria"][0]["comment"] += " " + INVENTED_COMMENT

    double.responder = answering("feedbackout", change)
    summary = student_feedback(vault=str(feedback_vault))
    assert summary.written and not summary.failed
    rows = billed_drafts(feedback_vault, summary.run_id)
    calls = [c for c in double.model_calls() if schema_name(c) == "feedbackout"]
    assert len(rows) == len(calls)  # every billed attempt, retries and escalations too
    first = [r for r in rows if r["attempt"] == 1 and not r["escalated_from"]]
    assert first and all(r["outcome"] == "check_failed" and CHECK in r["checks_failed"] for r in first)
    drafts = [frontmatter.load(p) for p in (feedback_vault / FEEDBACK).glob("s*.md")]
    drafted = [d for d in drafts if d.metadata["tierflow_phase_models"][-1] != "draft: none"]
    assert len(drafted) == len(first)
    for post in drafted:
        if fixed:
            assert "tierflow_checks_failed" not in post.metadata and "Not found verbatim" not in post.content
        else:
            assert CHECK in post.metadata["tierflow_checks_failed"]
            assert post.metadata["tierflow_unverified_quotes"] >= 1
            assert '[!warning] Not found verbatim in the submission: "feedback always doubles learning"' in post.content
    if fixed:
        assert sorted(r["outcome"] for r in rows) == sorted(["check_failed", "ok"] * len(drafted))


def test_a_feedback_comment_quoting_the_students_own_words_passes_and_shows_their_name(
    feedback_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch
):
    """The model quotes the pseudonymised text it was sent (a label for the student's name): that is their words."""
    configure(feedback_vault, double, monkeypatch)

    def quote_student(answer: dict[str, Any], data: dict[str, Any], request: DoubleRequest) -> None:
        text = data["submission"]
        if "often read critical comments" in text:  # s2026001, who names herself in her essay
            start = text.index("In my own schooling")
            sentence = text[start : text.index(".", start)]
            assert "Amara" not in sentence and data["student"] in sentence
            answer["criteria"][0]["comment"] += f' You write that “{sentence}.” A "verdict" indeed.'

    double.responder = answering("feedbackout", quote_student)
    summary = student_feedback(vault=str(feedback_vault))
    assert summary.written and not summary.failed
    rows = billed_drafts(feedback_vault, summary.run_id)
    assert rows and all(r["outcome"] == "ok" for r in rows)
    post = frontmatter.load(feedback_vault / FEEDBACK / "s2026001 feedback.md")
    assert "“In my own schooling, I, Amara, often read critical comments" in post.content
    assert "Not found verbatim" not in post.content and "tierflow_checks_failed" not in post.metadata
