"""An answer reused from the cache is judged by the checks of the call that reuses it, and its ledger row says so:
a check added since the answer was cached fails it (the row `check_failed`, cost 0; the call pays again and the run
needs review); a check removed since an answer was kept lets it pass (reused as passing, nothing paid, not kept).
A small flow of one's own, under Prefect's test harness, on the Anthropic wire double (real SDK)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import anthropic_config, write_config

from tierflow import (
    BaseModel,
    Check,
    Phase,
    RunSummary,
    begin_run,
    final_state,
    flow,
    read_folder,
    task,
    write_run_report,
)
from tierflow.core.calls import NOT_USED
from tierflow.core.ledger import Ledger
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply

pytestmark = pytest.mark.usefixtures("prefect_harness")

COLLATE = Phase("collate", "low")
KEPT_SECTION = "Kept although no tier passed its checks"


class Points(BaseModel):
    strengths: list[str]
    risks: list[str]


def never_ok(points: Points) -> list[str]:
    return ["this check always fails"]


ALWAYS_FAIL = Check("always_fails", never_ok)


@task
def collate(settings: Any, note: Any, strict: bool) -> list[str]:
    data = json.dumps({"title": note.title, "text": note.body[:400]})
    answer = COLLATE.ask(
        settings, system="You review notes.", prompt=f"<data>{data}</data>\nList strengths and risks.",
        output=Points, subject=note.title, checks=[ALWAYS_FAIL] if strict else [],
    )  # fmt: skip
    return list(answer.checks_failed)


@flow(name="checked-collate")
def checked_collate(vault: str, strict: bool = False) -> RunSummary:
    with begin_run("checked-collate", vault=vault, parameters={"strict": strict}, folders=["Inbox"]) as settings:
        notes = read_folder(settings, "Inbox")
        run = RunSummary(settings.run_id, "checked-collate")
        run.absorb(
            COLLATE.each(
                collate, settings, notes.notes, subject=lambda n: n.title, args=lambda n: (settings, n, strict)
            )
        )
        return final_state(write_run_report(settings, run, since=None, until=None, selected=len(notes)))


def points(request: DoubleRequest) -> Reply:
    return Reply(data={"strengths": ["clear aims"], "risks": ["a small sample"]})


@pytest.fixture
def vault(tmp_path: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    root = tmp_path / "vault"
    (root / "Inbox").mkdir(parents=True)
    for title in ("Note 1", "Note 2"):
        (root / "Inbox" / f"{title}.md").write_text(f"---\ntitle: {title}\n---\n\nA proposal on {title}.\n")
    write_config(root / ".tierflow" / "config.toml", anthropic_config(double))
    double.responder = points
    return root


def run(vault: Path, *, strict: bool) -> tuple[Any, RunSummary, str]:
    """The flow run's final state, its summary and its report."""
    state = checked_collate(vault=str(vault), strict=strict, return_state=True)
    summary = state.result()
    return state, summary, (vault / summary.report.path).read_text(encoding="utf-8")


def test_a_check_added_since_answers_were_cached_fails_them_and_the_run_needs_review(
    vault: Path, double: ProviderDouble
):
    state, _, _ = run(vault, strict=False)
    assert state.name == "Completed"
    first = len(double.model_calls())
    assert first == 2  # one answer per note, each cached

    state, summary, report = run(vault, strict=True)
    rows = Ledger.for_vault(vault).rows(run_id=summary.run_id)
    # The cached answers fail today's check: their rows say so, at no cost, and the calls pay again.
    reused = [r for r in rows if r["cached_result"]]
    assert len(reused) == 2
    assert all(r["outcome"] == "check_failed" and r["checks_failed"] == "always_fails" for r in reused), reused
    assert all(r["cost_usd"] == 0 for r in reused)
    assert all(r["outcome"] == "check_failed" for r in rows), [(r["outcome"], r["cached_result"]) for r in rows]
    assert len(double.model_calls()) > first
    # Every answer was kept although no tier passed its check: the report and the flow run say so.
    assert state.is_completed() and state.name == "Needs review", state
    assert len(summary.kept) == 2 and KEPT_SECTION in report


def test_an_answer_kept_for_a_check_since_removed_is_reused_as_passing(
    vault: Path, double: ProviderDouble, caplog: pytest.LogCaptureFixture
):
    run(vault, strict=False)
    state, _, _ = run(vault, strict=True)
    assert state.name == "Needs review"
    paid = len(double.model_calls())

    with caplog.at_level(logging.WARNING):
        state, summary, report = run(vault, strict=False)
    assert len(double.model_calls()) == paid  # nothing paid again
    rows = Ledger.for_vault(vault).rows(run_id=summary.run_id)
    assert len(rows) == 2 and all(r["cached_result"] and r["outcome"] == "ok" for r in rows), rows
    assert "reusing the answer an earlier run kept" not in caplog.text
    assert state.name == "Completed" and not summary.kept and KEPT_SECTION not in report


def test_a_kept_answer_that_passes_the_checks_of_today_is_replayed_as_passing(
    vault: Path, double: ProviderDouble, caplog: pytest.LogCaptureFixture
):
    """With no passing answer in the cache for the request (the kept answer only), the kept one is judged too."""
    run(vault, strict=True)  # nothing cached: every tier fails the check, the answers are kept
    paid = len(double.model_calls())
    with caplog.at_level(logging.WARNING):
        state, summary, report = run(vault, strict=False)
    assert len(double.model_calls()) == paid
    rows = Ledger.for_vault(vault).rows(run_id=summary.run_id)
    assert len(rows) == 2 and all(r["cached_result"] and r["outcome"] == "ok" for r in rows), rows
    assert all(r["checks_failed"] is None for r in rows)
    assert "reusing the answer an earlier run kept" not in caplog.text
    assert state.name == "Completed" and not summary.kept and KEPT_SECTION not in report


def test_an_unchanged_rerun_after_a_check_was_added_reuses_the_kept_answer_not_the_stale_cached_one(
    vault: Path, double: ProviderDouble
):
    run(vault, strict=False)  # cached: passing with no checks
    run(vault, strict=True)  # the cached answers fail the check added; every tier does; the answers are kept
    paid = len(double.model_calls())
    state, summary, report = run(vault, strict=True)
    assert len(double.model_calls()) == paid  # an unchanged rerun pays nothing
    rows = Ledger.for_vault(vault).rows(run_id=summary.run_id)
    # One row per note: the kept answer, replayed; the stale cached answer it supersedes leaves none.
    assert [(r["cached_result"], r["outcome"], r["checks_failed"]) for r in rows] == [
        (1, "check_failed", "always_fails")
    ] * 2
    assert state.name == "Needs review" and len(summary.kept) == 2 and KEPT_SECTION in report


def test_a_rejected_cached_answer_is_not_listed_as_kept_when_the_fresh_call_fails(vault: Path, double: ProviderDouble):
    """A check is added and the provider answers 500 to every request about Note 1: its cached answer is judged and
    rejected, and the call made afresh fails, so Note 1 is skipped, not kept (no note was written for it). Note 2's
    fresh answers fail the check on every tier: that one is kept, and the run needs review for it alone."""
    run(vault, strict=False)

    def down_for_note_1(request: DoubleRequest) -> Reply:
        return Reply(status=500, text="overloaded") if "Note 1" in json.dumps(request.body) else points(request)

    double.responder = down_for_note_1
    state, summary, report = run(vault, strict=True)
    assert [title for title, _ in summary.skipped] == ["Note 1"], summary.skipped
    assert len(summary.kept) == 1 and summary.kept[0].startswith("collate · Note 2: kept from"), summary.kept
    assert "Note 1: kept" not in report
    assert state.name == "Needs review", state
    # Its rejected cached answer still has its row, at no cost, saying it was not used.
    rows = Ledger.for_vault(vault).rows(run_id=summary.run_id)
    note_1 = [r for r in rows if r["subject"] == "Note 1"]
    assert [(r["cached_result"], r["outcome"], r["cost_usd"]) for r in note_1] == [(1, "check_failed", 0.0)]
    assert note_1[0]["route_rule"].startswith(NOT_USED), note_1[0]["route_rule"]


def test_a_rejected_cached_answer_is_neither_a_billed_call_nor_a_cache_hit_in_spend(
    vault: Path, double: ProviderDouble
):
    """`tierflow spend` and the run's summary count a cached answer a check added since rejected as neither: not
    billed (it cost nothing) and not a cache hit (nothing came of it); the listing marks it `(cached, not used)`."""
    from typer.testing import CliRunner

    from tierflow.cli.app import app
    from tierflow.report.spend import ledger_summary, spend_by

    run(vault, strict=False)
    double.responder = lambda request: (
        Reply(status=500, text="overloaded") if "Note 1" in json.dumps(request.body) else points(request)
    )
    _, summary, _ = run(vault, strict=True)
    ledger = Ledger.for_vault(vault)
    rows = ledger.rows(run_id=summary.run_id)
    assert sum(bool(r["cached_result"]) for r in rows) == 2  # Note 1's and Note 2's cached answers, both rejected
    by_database = ledger_summary(ledger, "run_id", run_id=summary.run_id)
    (by_python,) = [s.as_row("run_id") for s in spend_by(rows, "run_id")]
    assert by_database == [by_python]
    assert by_python["cache_hits"] == 0
    assert by_python["calls"] == sum(not r["cached_result"] for r in rows)
    listed = CliRunner().invoke(app, ["spend", "--run", summary.run_id, "--vault", str(vault)], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("(cached, not used)") == 2, listed.output
