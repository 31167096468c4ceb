"""One student's submission too long for the model, in batch mode: that student is reported as in direct mode, the
rest of the cohort is batched, collected and drafted, and nothing is reserved or billed for what was not sent."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import anthropic_config, openai_config, write_config
from lms_exports import Student, docx_bytes, essay, moodle_zip
from responders import schema_name, skilled
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.core.budget import open_reservations
from tierflow.core.config import load_config
from tierflow.core.ledger import Ledger
from tierflow.flows.plans import plan_student_feedback
from tierflow.flows.student_feedback import student_feedback
from tierflow.lms.importer import import_submissions
from tierflow.report.plan import Plan
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply

pytestmark = pytest.mark.usefixtures("prefect_harness")

ASSIGNMENT = "Teaching/EDU7001/essay-2"
LONG = f"{ASSIGNMENT}/submissions/3002.md"
SURVEY = "survey-data.txt"
SURVEY_LINE = "Survey response"
WINDOW = 16_000
"""The collate tier's context window here: an essay is some 700 tokens, the long note some 85,000."""


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def three_submissions(vault: Path, tmp_path: Path) -> None:
    """Three students imported from Moodle; the second handed in their survey's raw data beside the essay."""
    survey = "".join(f"{SURVEY_LINE} {n}: I read the comments once and then filed them.\n" for n in range(6000))
    students = [
        Student("3001", "Ben Carter", {"essay.docx": docx_bytes(essay(1))}),
        Student("3002", "Aisha Khan", {"essay.docx": docx_bytes(essay(2)), SURVEY: survey.encode()}),
        Student("3003", "Kofi Mensah", {"essay.docx": docx_bytes(essay(3))}),
    ]
    import_submissions(vault, ASSIGNMENT, moodle_zip(tmp_path / "EDU7001-Essay 2-4512.zip", students))


def configure(vault: Path, double: ProviderDouble, provider: str, window: int | None = None) -> None:
    text = anthropic_config(double) if provider == "anthropic" else openai_config(double)
    if window is not None:  # on the collate phase's tier (complexity low: `light`)
        text = text.replace("[tiers.light]\n", f"[tiers.light]\ncontext_window = {window}\n", 1)
    config = vault / ".tierflow" / "config.toml"
    write_config(config, text + config.read_text())


def drafted(vault: Path) -> set[str]:
    return {p.stem.removesuffix(" feedback") for p in (vault / ASSIGNMENT / "feedback").glob("3*.md")}


def batch_rows(vault: Path, run_id: str) -> list[dict]:
    return [r for r in Ledger.for_vault(vault).rows(run_id=run_id) if r["batch"]]


def test_a_submission_too_long_for_the_window_is_left_out_of_the_batch_and_named_as_in_direct_mode(
    lms_vault, tmp_path, double, keys
):
    three_submissions(lms_vault, tmp_path)
    configure(lms_vault, double, "anthropic", WINDOW)
    direct_vault = tmp_path / "direct"
    shutil.copytree(lms_vault, direct_vault)
    double.responder = skilled()
    direct = student_feedback(vault=str(direct_vault), assignment=ASSIGNMENT, mode="direct")
    told = dict(direct.skipped)[LONG]
    assert f"{LONG} is one student's submission, too long for one prompt" in told
    assert f"the largest file in it is {SURVEY} (" in told and f"Trim the note: cut {SURVEY}" in told

    double.reset()
    ledger = Ledger.for_vault(lms_vault)
    held: list[list[tuple[str, str]]] = []  # the reservations open while the provider works on a batch

    def responder(request: DoubleRequest) -> Reply | None:
        if request.in_batch:
            held.append([(r.phase, r.run_id) for r in open_reservations(ledger)])
        return skilled()(request)

    double.responder = responder
    summary = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT, mode="batch")

    assert not summary.failed and not summary.halted, summary.failed
    # The same words as a direct run: the note, its largest file, and what to do.
    assert dict(summary.skipped)[LONG] == told
    report = (lms_vault / summary.report.path).read_text()
    assert LONG in report and f"cut {SURVEY}" in report
    assert drafted(lms_vault) == {"3001", "3003"}
    # Never sent, so never billed: no request carries the survey, and each batch holds only the others.
    assert not [q for q in double.requests + double.batch_items if SURVEY_LINE in q.text]
    collated = [q for q in double.batch_items if schema_name(q) == "evidenceout"]
    assert len(collated) == 2 and {q.batch_id for q in collated} == {summary.batches[0]}
    assert len([q for q in double.batch_items if schema_name(q) == "feedbackout"]) == 2
    # Reserved only for what was sent: two collate items while the collate batch was at the provider.
    first = held[0]
    assert sorted(first) == [("collate", summary.run_id)] * 2
    assert open_reservations(ledger) == []
    rows = batch_rows(lms_vault, summary.run_id)
    assert sorted(r["phase"] for r in rows) == ["collate", "collate", "draft", "draft", "synthesise"]


REFUSALS = {
    "anthropic": Reply(status=400, text="prompt is too long: 212431 tokens > 200000 maximum"),
    "openai": Reply(
        status=400,
        text="This model's maximum context length is 400000 tokens. However, your messages resulted in 412431 "
        "tokens. Please reduce the length of the messages.",
        code="context_length_exceeded",
    ),
}


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_batch_item_the_provider_refuses_as_too_long_names_the_note_and_the_others_are_drafted(
    provider, lms_vault, tmp_path, double, keys
):
    """The prompt fits by tierflow's count but not by the provider's: its batch result is an error for that one
    request (Anthropic `errored`, OpenAI a line of the error file), which no retry can mend."""
    three_submissions(lms_vault, tmp_path)
    configure(lms_vault, double, provider)
    answer = skilled()

    def responder(request: DoubleRequest) -> Reply | None:
        return REFUSALS[provider] if SURVEY_LINE in request.text else answer(request)

    double.responder = responder
    summary = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT, mode="batch")

    assert not summary.failed and not summary.halted, summary.failed
    why = dict(summary.skipped)[LONG]
    assert why.startswith("collate failed: ") and "context window" in why
    assert REFUSALS[provider].text.rstrip(".") in why  # the provider's own words
    assert f"{LONG} is one student's submission, too long for one prompt" in why
    assert f"the largest file in it is {SURVEY} (" in why and f"Trim the note: cut {SURVEY}" in why
    assert drafted(lms_vault) == {"3001", "3003"}
    # Sent once, in the batch: resending the same prompt alone would be refused the same way.
    assert len([q for q in double.requests + double.batch_items if SURVEY_LINE in q.text]) == 1
    assert not [q for q in double.requests if q.kind in ("message", "chat")]
    # Every answer the provider billed is in the ledger, with its tokens; the refused request billed nothing.
    billed = [q for q in double.batch_items if q.status == 200]
    rows = batch_rows(lms_vault, summary.run_id)
    assert len(rows) == len(billed) == 5  # collate 2, synthesise 1, draft 2
    usage = [q.response["usage"] for q in billed]
    output = "output_tokens" if provider == "anthropic" else "completion_tokens"
    assert sum(r["output_tokens"] for r in rows) == sum(u[output] for u in usage)
    assert open_reservations(Ledger.for_vault(lms_vault)) == []


def survey_sent(double: ProviderDouble) -> int:
    """How many requests (direct or batch items) the provider has received with the survey in them."""
    return len([q for q in double.requests + double.batch_items if SURVEY_LINE in q.text])


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_refused_item_is_not_sent_again_until_its_note_changes(provider, lms_vault, tmp_path, double, keys):
    """A rerun (plain, or --retry-failed) would send the same refused prompt again, to be refused again and billed
    where the provider bills refusals: it is reported in the same words without being sent, until the lecturer
    trims the note."""
    three_submissions(lms_vault, tmp_path)
    configure(lms_vault, double, provider)
    answer = skilled()
    last_line = f"{SURVEY_LINE} 5999:"

    def responder(request: DoubleRequest) -> Reply | None:
        return REFUSALS[provider] if last_line in request.text else answer(request)

    double.responder = responder
    first = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT, mode="batch")
    assert survey_sent(double) == 1
    told = dict(first.skipped)[LONG]
    assert f"Trim the note: cut {SURVEY}" in told and REFUSALS[provider].text.rstrip(".") in told

    for retry_failed in (False, True):
        again = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT, mode="batch", retry_failed=retry_failed)
        assert not again.failed and not again.halted, again.failed
        assert survey_sent(double) == 1  # not sent again
        assert dict(again.skipped)[LONG] == told
        assert drafted(lms_vault) == {"3001", "3003"}

    # The lecturer trims the survey to its first hundred responses: the note's text is new, so it is sent.
    note = lms_vault / LONG
    text = note.read_text()
    note.write_text(re.sub(rf"{SURVEY_LINE} \d{{3,}}:[^\n]*\n", "", text))
    assert last_line not in note.read_text() and f"{SURVEY_LINE} 99:" in note.read_text()
    trimmed = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT, mode="batch")
    assert not trimmed.failed and not trimmed.halted, trimmed.failed
    assert survey_sent(double) == 3  # collated, then drafted
    assert LONG not in dict(trimmed.skipped)
    assert drafted(lms_vault) == {"3001", "3002", "3003"}
    assert open_reservations(Ledger.for_vault(lms_vault)) == []


def priced(plan: Plan) -> list[tuple[str, int]]:
    return [(p.key, p.calls) for p in plan.phases]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_the_plan_leaves_out_a_refused_item_a_batch_run_would_not_send_again(
    provider, lms_vault, tmp_path, double, keys
):
    """After the provider refused 3002's collate request as too long, a batch rerun does not send it (nor draft 3002),
    but `tierflow plan` and `run --dry-run` priced both. They price what the run sends, and say what they left out,
    why, and how to have it sent: trim the note, or route the phase to another tier. A direct run sends it (the
    memory is of a batch item's refusal), so a direct plan still prices it."""
    three_submissions(lms_vault, tmp_path)
    configure(lms_vault, double, provider)
    answer = skilled()
    double.responder = lambda r: REFUSALS[provider] if SURVEY_LINE in r.text else answer(r)
    first = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT, mode="batch")
    told = dict(first.skipped)[LONG]
    assert REFUSALS[provider].text.rstrip(".") in told and drafted(lms_vault) == {"3001", "3003"}
    double.reset()

    config = load_config(lms_vault)
    plan = plan_student_feedback(config, lms_vault, assignment=ASSIGNMENT, mode="batch")
    # 3002 is neither collated nor drafted; 3001 and 3003 are collated (priced at worst, as always) and not drafted.
    assert priced(plan) == [("collate", 2), ("synthesise", 1), ("draft", 0)]
    assert plan.prompts and not [p for _, _, p in plan.prompts if SURVEY_LINE in p]
    ((phase, subject, why),) = plan.refused
    assert (phase, subject) == ("collate", "Student-02") and REFUSALS[provider].text.rstrip(".") in why
    assert dict(plan.skipped)[LONG] == told  # in the run's words, naming the file to cut
    assert priced(plan_student_feedback(config, lms_vault, assignment=ASSIGNMENT)) == [
        ("collate", 3), ("synthesise", 1), ("draft", 1)
    ]  # fmt: skip
    # The run it priced: 3002 not sent, not drafted.
    again = student_feedback(vault=str(lms_vault), assignment=ASSIGNMENT, mode="batch")
    assert survey_sent(double) == 0 and dict(again.skipped)[LONG] == told and drafted(lms_vault) == {"3001", "3003"}

    for command in (["plan", "student-feedback"], ["run", "student-feedback", "--dry-run"]):
        args = [*command, "--vault", str(lms_vault), "--assignment", ASSIGNMENT, "--mode", "batch"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        said = " ".join(result.output.split())
        assert "left out: 1 batch request (collate · Student-02), which the provider refused as too long" in said
        assert "a batch run does not send it again while it is unchanged, so it is not priced" in said
        assert "Trim the note it is made of (see skipped), or route the phase to a tier" in said
        assert "(--tier collate=TIER), and it is sent, and priced" in said
        assert "1 whose request a batch run does not send again (see skipped) is not drafted" in said
    assert double.model_calls() == [] and survey_sent(double) == 0
