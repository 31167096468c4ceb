"""A rerun of unchanged inputs pays nothing, also when an answer was kept without passing its checks: the kept
answer is remembered for its request (as kept, never as validated) and reused with its warning, unless the run
pays again on purpose (`--retry-failed`). All three flows on their fixtures, on the offline model and on the wire
double (real SDK) with answers that fail their checks."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, READING_WEEK, anthropic_config, write_config
from pydantic import BaseModel
from responders import schema_name

from tierflow.core.calls import Caller, RunSettings
from tierflow.core.ledger import Ledger
from tierflow.flows.module_review import module_review
from tierflow.flows.reading_notes import reading_notes
from tierflow.flows.student_feedback import student_feedback
from tierflow.offline import SKILLS, prompt_data
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply

pytestmark = pytest.mark.usefixtures("prefect_harness")

FLOWS: dict[str, tuple[str, Callable[..., Any]]] = {
    "reading-notes": (
        "reading-week",
        lambda vault, **kw: reading_notes(vault=str(vault), since=READING_WEEK[0], until=READING_WEEK[1], **kw),
    ),
    "student-feedback": ("feedback-batch", lambda vault, **kw: student_feedback(vault=str(vault), **kw)),
    "module-review": ("module-review", lambda vault, **kw: module_review(vault=str(vault), **kw)),
}


def failing_checks(request: DoubleRequest) -> Reply | None:
    """The offline skills' answer, with what each flow's checks refuse: an invented quotation or evidence."""
    name = schema_name(request)
    if name is None:
        return None
    data = SKILLS[name](prompt_data(request.last_user_text))
    if name == "draftout" and data.get("quotes"):
        data["quotes"].append({"source": data["quotes"][0]["source"], "text": "Feedback always improves learning."})
    elif name == "moduleproposal":
        data["what_worked"].append({"claim": "Everything went well.", "evidence": ["Invented note"]})
    elif data.get("criteria") and isinstance(data["criteria"][0].get("quotes"), list):
        data["criteria"][0]["quotes"].append("A sentence nobody wrote in any submission.")
    return Reply(data=data)


def prepared(tmp_path: Path, fixture: str, model: str, double: ProviderDouble, monkeypatch) -> Path:
    vault = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, vault)
    if model == "double":
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        config = vault / ".tierflow" / "config.toml"
        write_config(config, anthropic_config(double) + config.read_text(encoding="utf-8"))
        double.responder = failing_checks
    return vault


def billed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if not r["cached_result"]]


@pytest.mark.parametrize("model", ["offline", "double"])
@pytest.mark.parametrize("flow", list(FLOWS))
def test_an_unchanged_rerun_pays_nothing_for_answers_kept_without_passing(
    tmp_path: Path, monkeypatch, double: ProviderDouble, flow: str, model: str
):
    fixture, run = FLOWS[flow]
    vault = prepared(tmp_path, fixture, model, double, monkeypatch)
    first = run(vault)
    ledger = Ledger.for_vault(vault)
    kept_first = {r["subject"] for r in ledger.rows(run_id=first.run_id) if r["outcome"] == "check_failed"}
    if model == "double":
        assert kept_first, "the double's answers should fail their checks"
    calls = len(double.model_calls())

    second = run(vault)
    rows = ledger.rows(run_id=second.run_id)
    assert rows and billed(rows) == [], [(r["phase"], r["subject"], r["outcome"]) for r in billed(rows)]
    assert len(double.model_calls()) == calls
    # A kept answer comes back with the checks it failed: its draft keeps its warning.
    kept_again = [r for r in rows if r["outcome"] == "check_failed"]
    assert all(r["checks_failed"] for r in kept_again)
    if model == "double":
        assert kept_again


def test_retry_failed_pays_again_on_purpose(tmp_path: Path, monkeypatch, double: ProviderDouble):
    fixture, run = FLOWS["reading-notes"]
    vault = prepared(tmp_path, fixture, "double", double, monkeypatch)
    run(vault)
    calls = len(double.model_calls())
    again = run(vault, retry_failed=True)
    paid = billed(Ledger.for_vault(vault).rows(run_id=again.run_id))
    assert paid and all(r["phase"] == "draft" for r in paid)  # only what was kept is paid for again
    assert len(double.model_calls()) == calls + len(paid)


class Summary(BaseModel):
    text: str


def test_an_answer_that_passed_only_on_a_retry_is_replayed_by_an_unchanged_rerun(tmp_path: Path, monkeypatch):
    """The first answer is cut off at the tier's output limit; the retry, with the limit doubled, passes. Its
    answer is cached under the retry's request, which a rerun never sends first: it is remembered for the
    original request too, so the rerun pays nothing and replays it as passing."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    long = {"text": " ".join(f"point {n}" for n in range(30))}  # about 70 tokens of tool input
    with ProviderDouble(lambda request: Reply(data=long)) as double:
        vault = tmp_path / "vault"
        config = anthropic_config(double).replace("max_output_tokens = 1024", "max_output_tokens = 48", 1)
        write_config(vault / ".tierflow" / "config.toml", config)

        def ask(run_id: str) -> Any:
            caller = Caller(RunSettings(vault=str(vault), run_id=run_id, flow="kept"))
            return caller.ask(phase="collate", complexity="low", system="Summarise.", prompt="the week", output=Summary)

        first = ask("first")
        assert [c.response["stop_reason"] for c in double.model_calls()] == ["max_tokens", "tool_use"]
        assert first.outcome == "ok" and first.parsed == Summary(**long) and not first.cached
        second = ask("second")
        assert len(double.model_calls()) == 2  # nothing sent
    assert second.cached and second.outcome == "ok" and not second.checks_failed and second.parsed == first.parsed
    (row,) = Ledger.for_vault(vault).rows(run_id="second")
    assert row["cached_result"] and row["outcome"] == "ok" and row["cost_usd"] == 0 and row["tier"] == "light"


@pytest.mark.parametrize("mode", ["direct", "batch"])
def test_student_feedback_retry_failed_drafts_again_only_the_failed_drafts_nobody_edited(
    tmp_path: Path, monkeypatch, double: ProviderDouble, mode: str
):
    """The drafts of the first run fail their checks and are kept with a warning; the lecturer edits one of them.
    `--retry-failed` drafts the others again and pays for their evidence again (kept too), but nothing for the
    edited draft, which stays byte for byte, nor for a student whose draft passed; a draft written before drafts
    recorded their failed checks is known by its unverified quotation. The plan prices the same drafts."""
    from typer.testing import CliRunner

    from tierflow.cli.app import app
    from tierflow.core.config import load_config
    from tierflow.flows.plans import plan_settings, plan_student_feedback
    from tierflow.lms.drafts import scan
    from tierflow.tasks.assignment import load_assignment
    from tierflow.vault.notes import HASH_KEY, render_note
    from tierflow.vault.text import load_note

    fixture, run = FLOWS["student-feedback"]
    vault = prepared(tmp_path, fixture, "double", double, monkeypatch)
    folder = "Teaching/EDU7001/essay-1"
    checks_key = "tierflow_checks_failed"  # the draft's front-matter, as the README names it
    run(vault, mode=mode)
    drafts = {d.student_id: d for d in scan(vault, folder)[0]}
    failed = sorted(sid for sid, d in drafts.items() if d.metadata.get(checks_key))
    assert len(failed) >= 3 and all(drafts[sid].metadata[checks_key] == ["quotes_verbatim"] for sid in failed)
    passed = set(drafts) - set(failed)  # the empty submission's note at least
    assert passed

    edited, legacy = failed[0], failed[1]
    edited_note = vault / drafts[edited].path
    edited_note.write_text(edited_note.read_text(encoding="utf-8") + "\nMy own comment on the argument.\n")
    before = edited_note.read_bytes()
    # As tierflow wrote drafts before they recorded the checks that failed: the warnings alone, and its own hash.
    legacy_note = vault / drafts[legacy].path
    post = load_note(legacy_note)
    meta = {k: v for k, v in post.metadata.items() if k not in (checks_key, HASH_KEY)}
    legacy_note.write_text(render_note(meta, post.content), encoding="utf-8")

    config = load_config(vault)
    plan = plan_student_feedback(config, vault, mode=mode, retry_failed=True)
    labels = load_assignment.fn(plan_settings(config, vault, fixture, None), folder, keep=False).pseudonyms().label
    priced = {subject for phase, subject, _ in plan.prompts if phase == "draft"}
    calls = len(double.model_calls(include_batch=True))
    again = run(vault, mode=mode, retry_failed=True)
    rows = Ledger.for_vault(vault).rows(run_id=again.run_id)
    paid = billed(rows)
    assert len(double.model_calls(include_batch=True)) == calls + len(paid)  # each billed row one the double answered

    drafted = {r["subject"] for r in paid if r["phase"] == "draft"}
    redrafted = set(failed) - {edited}
    assert drafted == {labels[sid] for sid in redrafted} and priced == drafted
    # Evidence is paid for again only for the students drafted again: their kept evidence failed its checks too.
    assert {r["subject"] for r in paid if r["phase"] == "collate"} == drafted
    # The others' kept evidence is reused, free, for the cohort summary: the edited draft's student's too.
    assert labels[edited] in {r["subject"] for r in rows if r["phase"] == "collate" and r["cached_result"]}
    assert {r["phase"] for r in paid} <= {"collate", "draft"}
    assert edited_note.read_bytes() == before
    why = [w for _, w in again.skipped if "edited since tierflow wrote them" in w]
    assert len(why) == 1 and drafts[edited].path in why[0] and "--retry-failed leaves them as they are" in why[0]
    left = next(w for _, w in again.skipped if "already have a draft" in w)
    assert all(sid in left for sid in passed | {edited})

    # `tierflow plan` and `run --dry-run` with --retry-failed price the drafts a run would write again now: those
    # that failed again (no answer of the double passes), never the edited one.
    failed_now = {d.student_id for d in scan(vault, folder)[0] if d.checks_failed and d.as_written}
    assert failed_now == redrafted
    for args in (["plan", "student-feedback"], ["run", "student-feedback", "--dry-run"]):
        shown = CliRunner().invoke(app, [*args, "--vault", str(vault), "--retry-failed"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.output
        assert f", {len(redrafted)} of them because their draft failed its checks (--retry-failed)" in shown.stdout
        plain = CliRunner().invoke(app, [*args, "--vault", str(vault)], env={"COLUMNS": "200"})
        assert "failed its checks" not in plain.stdout
