"""`tierflow routing explain` the way a user comes to it: from a draft note (its path or name as in the vault), or
from a run whose requests it lists to pick from; a miss says what was looked for and a command that lists the
candidates. Flows run under Prefect's harness on the Anthropic SDK's wire double, with a real SQLite ledger."""

from __future__ import annotations

import json
import sqlite3
from datetime import date
from pathlib import Path

import pytest
from conftest import anthropic_config, write_config
from responders import skilled
from test_printed_commands import printed
from test_your_own_flow_cli import said
from typer.testing import CliRunner

from tierflow.flows.reading_notes import reading_notes
from tierflow.flows.student_feedback import student_feedback
from tierflow.testing.double import ProviderDouble

pytestmark = pytest.mark.usefixtures("prefect_harness")

DRAFTS = "Concepts/Drafts"
FEEDBACK = "Teaching/EDU7001/essay-1/feedback"


def explain(*args: str):  # noqa: ANN201
    from tierflow.cli.app import app

    return CliRunner().invoke(app, ["routing", "explain", *args])


def ledger_rows(vault: Path, query: str, *params: object) -> list[tuple]:
    with sqlite3.connect(vault / ".tierflow" / "ledger.sqlite") as conn:
        return conn.execute(query, params).fetchall()


@pytest.fixture
def week(reading_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """The reading-notes flow run over the fixture week: the vault and the run's id."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    existing = (reading_vault / ".tierflow" / "config.toml").read_text()
    write_config(reading_vault / ".tierflow" / "config.toml", anthropic_config(double) + existing)
    double.responder = skilled()
    summary = reading_notes(vault=str(reading_vault), since=date(2026, 11, 16), until=date(2026, 11, 22))
    assert not summary.failed
    return reading_vault, summary.run_id


def test_a_concept_draft_is_explained_from_its_note_by_path_or_name(week: tuple[Path, str], monkeypatch) -> None:
    vault, run_id = week
    drafted = ledger_rows(vault, "SELECT note, request_id FROM drafts WHERE run_id = ?", run_id)
    assert drafted and all(request_id for _, request_id in drafted)
    note, request_id = drafted[0]
    assert note.startswith(f"{DRAFTS}/")
    name = Path(note).stem
    monkeypatch.chdir(vault / DRAFTS)  # a shell in the drafts folder: the file as tab completion gives it
    for given in (note, note.removesuffix(".md"), name, f"[[{name}]]", str(vault / note), Path(note).name):
        explained = explain(given, "--vault", str(vault), "--format", "json")
        assert explained.exit_code == 0, (given, explained.output)
        why = json.loads(explained.stdout)
        assert (why["request_id"], why["flow"], why["phase"], why["note"]) == (
            request_id, "reading-notes", "draft", note,
        ), given  # fmt: skip
        assert [a["tier"] for a in why["answers"]] == ["standard"]
    shown = explain(name, "--vault", str(vault))
    assert shown.exit_code == 0, shown.output
    assert f"reading-notes · draft · request {request_id[:12]} · {note}" in shown.stdout
    assert "answered on standard (anthropic:claude-sonnet-4-6" in shown.stdout


def test_a_runs_requests_are_listed_to_pick_one_and_the_pick_is_explained(week: tuple[Path, str]) -> None:
    vault, run_id = week
    listed = explain("--run", run_id, "--vault", str(vault))
    assert listed.exit_code == 0, listed.output
    lines = [line.split("\t") for line in listed.stdout.splitlines()]
    assert lines and all(len(fields) == 7 for fields in lines), listed.stdout  # tab-separated: pipes cleanly
    phases = [fields[2] for fields in lines]
    assert phases.count("collate") == 8 and phases.count("synthesise") == 1
    drafted = dict(ledger_rows(vault, "SELECT request_id, note FROM drafts WHERE run_id = ?", run_id))
    draft_lines = [fields for fields in lines if fields[2] == "draft"]
    assert len(draft_lines) == len(drafted)
    for short, flow, _, subject, tiers, outcome, note in draft_lines:
        assert (flow, tiers, outcome) == ("reading-notes", "standard", "ok") and subject
        assert drafted[next(r for r in drafted if r.startswith(short))] == note  # the note written from it
    assert f"{len(lines)} requests of run {run_id}" in said(listed)

    # A short id as listed is what `explain` takes.
    short = draft_lines[0][0]
    picked = explain(short, "--vault", str(vault), "--format", "json")
    assert picked.exit_code == 0, picked.output
    assert json.loads(picked.stdout)["request_id"].startswith(short)

    as_json = explain("--run", run_id, "--vault", str(vault), "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    found = json.loads(as_json.stdout)
    assert [r["request_id"][:12] for r in found] == [fields[0] for fields in lines]
    assert {r["note"] for r in found if r["phase"] == "draft"} == set(drafted.values())
    assert all(r["tiers"] == ["light"] for r in found if r["phase"] == "collate")


def test_a_miss_says_what_was_looked_for_and_prints_a_command_that_lists_the_candidates(
    week: tuple[Path, str], tmp_path: Path, monkeypatch
) -> None:
    vault, run_id = week
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    missed = explain("Ghost concept", "--vault", str(vault))
    assert missed.exit_code == 2
    message = said(missed)
    assert "'Ghost concept'" in message and "no draft note" in message and "give more of the id" not in message
    listing = printed(message, "tierflow routing explain --run")
    assert listing[listing.index("--run") + 1] == run_id  # the newest run's
    listed = explain(*listing[2:])
    assert listed.exit_code == 0 and listed.stdout.count("\n") == 8 + 1 + len(
        ledger_rows(vault, "SELECT note FROM drafts")
    ), listed.output

    no_run = explain("--run", "20261118-000000-nosuch", "--vault", str(vault))
    assert no_run.exit_code == 2 and "20261118-000000-nosuch" in said(no_run)
    runs = printed(said(no_run), "tierflow spend --by run")
    from tierflow.cli.app import app

    spend = CliRunner().invoke(app, runs)
    assert spend.exit_code == 0 and run_id in spend.output, spend.output

    # A prefix two requests share is ambiguous: both are listed, each by an id that tells it apart.
    ids = [r for (r,) in ledger_rows(vault, "SELECT request_id FROM request_texts ORDER BY request_id")]
    shared = next(a[:1] for a, b in zip(ids, ids[1:], strict=False) if a[:1] == b[:1])
    ambiguous = explain(shared, "--vault", str(vault))
    assert ambiguous.exit_code == 2
    assert f"{sum(r.startswith(shared) for r in ids)} requests have an id starting with '{shared}'" in said(ambiguous)
    candidates = [line.split("\t")[0] for line in ambiguous.stderr.splitlines() if "\t" in line]
    assert len(candidates) >= 2 and all(explain(c, "--vault", str(vault)).exit_code == 0 for c in candidates)


def test_a_feedback_draft_is_explained_from_its_note(
    feedback_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Feedback drafts are not in the ledger's `drafts`: the note's run (`tierflow_run`) and its student's label
    (the subject of the run's `draft` calls) find its request."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    existing = (feedback_vault / ".tierflow" / "config.toml").read_text()
    write_config(feedback_vault / ".tierflow" / "config.toml", anthropic_config(double) + existing)
    double.responder = skilled()
    summary = student_feedback(vault=str(feedback_vault))
    assert not summary.failed
    note = f"{FEEDBACK}/s2026003 feedback.md"
    explained = explain(note, "--vault", str(feedback_vault), "--format", "json")
    assert explained.exit_code == 0, explained.output
    why = json.loads(explained.stdout)
    assert (why["flow"], why["phase"], why["note"]) == ("student-feedback", "draft", note)
    label = dict(ledger_rows(feedback_vault, "SELECT DISTINCT request_id, subject FROM calls"))[why["request_id"]]
    assert label.startswith("Student-")  # the pseudonym the prompt carried, never the name
    assert "s2026003" not in label and [a["tier"] for a in why["answers"]] == ["standard"]
    by_name = explain("s2026003 feedback", "--vault", str(feedback_vault), "--format", "json")
    assert by_name.exit_code == 0 and json.loads(by_name.stdout)["request_id"] == why["request_id"], by_name.output

    # The cohort summary was written by the run but from no one request of it: the run's list is offered.
    summary_note = explain(f"{FEEDBACK}/Cohort summary.md", "--vault", str(feedback_vault))
    assert summary_note.exit_code == 2
    listing = printed(said(summary_note), "tierflow routing explain --run")
    assert listing[listing.index("--run") + 1] == summary.run_id
