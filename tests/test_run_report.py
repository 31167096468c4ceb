"""The run report and the flow run's final state say truthfully what a run kept and what it needs."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import frontmatter
import pytest
from conftest import anthropic_config, write_config
from responders import skilled

from tierflow.core.calls import NOT_USED
from tierflow.core.ledger import Ledger
from tierflow.flows.reading_notes import reading_notes
from tierflow.offline import SKILLS, prompt_data
from tierflow.report.run_report import _closed_loop
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply

SINCE, UNTIL = date(2026, 11, 16), date(2026, 11, 22)


def row(id: int, tier: str, model: str, outcome: str, checks: str | None = None, rule: str = "table", **more):  # noqa: A002
    return {
        "id": id, "task_run_id": "t1", "phase": "draft", "subject": "Feedback", "tier": tier,
        "provider": "anthropic", "model": model, "outcome": outcome, "checks_failed": checks,
        "route_rule": rule, "escalated_from": None, **more,
    }  # fmt: skip


def test_kept_names_the_answer_kept_not_the_last_attempt():
    rows = [
        row(1, "standard", "claude-sonnet-4-6", "check_failed", "quotes_verbatim"),
        row(2, "standard", "claude-sonnet-4-6", "check_failed", "quotes_verbatim,sources_resolve"),
        row(3, "deep", "claude-opus-4-6", "check_failed", "quotes_verbatim", escalated_from="standard"),
        row(4, "deep", "claude-opus-4-6", "malformed"),
    ]
    _, kept = _closed_loop(rows)
    # Fewest failures, the first among equals: the first attempt, as the call path keeps it.
    assert kept == ["draft · Feedback: kept from anthropic:claude-sonnet-4-6 (check_failed: quotes_verbatim)"]


def test_a_cached_answer_that_failed_a_check_added_since_is_never_the_one_kept():
    rows = [
        row(1, "standard", "claude-sonnet-4-6", "check_failed", "quotes_verbatim", cached_result=1),
        row(2, "standard", "claude-sonnet-4-6", "malformed", cached_result=0),
        row(
            3, "deep", "claude-opus-4-6", "check_failed", "quotes_verbatim", escalated_from="standard", cached_result=0
        ),
    ]
    # The call path keeps the best billed answer; the cached one was only judged, and failed.
    assert _closed_loop(rows)[1] == [
        "draft · Feedback: kept from anthropic:claude-opus-4-6 (check_failed: quotes_verbatim)"
    ]
    replayed = [row(1, "deep", "claude-opus-4-6", "check_failed", "quotes_verbatim", cached_result=1)]
    assert _closed_loop(replayed)[1] == [
        "draft · Feedback: kept from anthropic:claude-opus-4-6 (check_failed: quotes_verbatim)"
    ]


def test_a_rejected_cached_answer_whose_fresh_call_failed_is_not_listed_as_kept():
    # Judged, failed a check added since it was cached, and not used; the call made afresh raised: nothing was kept.
    rejected = f"{NOT_USED} fails a check added since it was cached; table"
    rows = [row(1, "standard", "claude-sonnet-4-6", "check_failed", "quotes_verbatim", rejected, cached_result=1)]
    assert _closed_loop(rows)[1] == []
    # An earlier run's kept answer, replayed (a cached `check_failed` row too): kept.
    replayed = [row(1, "standard", "claude-sonnet-4-6", "check_failed", "quotes_verbatim", cached_result=1)]
    assert _closed_loop(replayed)[1] == [
        "draft · Feedback: kept from anthropic:claude-sonnet-4-6 (check_failed: quotes_verbatim)"
    ]


def test_a_failed_shadow_call_is_never_listed_as_an_answer_kept():
    rows = [
        row(1, "standard", "claude-sonnet-4-6", "ok"),
        row(2, "deep", "claude-opus-4-6", "check_failed", "quotes_verbatim", rule="shadow: explore deep for draft"),
    ]
    assert _closed_loop(rows)[1] == []


def invented_quotes(request: DoubleRequest) -> Reply:
    data = SKILLS["draftout"](prompt_data(request.last_user_text))
    source = data["quotes"][0]["source"] if data["quotes"] else "nobody"
    return Reply(data={**data, "quotes": [{"source": source, "text": "Feedback is always harmful to learning."}]})


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_that_kept_failing_answers_ends_needs_review_and_its_report_says_which(
    reading_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    config = reading_vault / ".tierflow" / "config.toml"
    write_config(config, anthropic_config(double) + config.read_text() + '\n[project]\nname = "EDU7001"\n')
    double.responder = skilled({"draftout": invented_quotes})
    state = reading_notes(vault=str(reading_vault), since=SINCE, until=UNTIL, return_state=True)
    assert state.is_completed() and state.name == "Needs review", state
    summary = state.result()
    assert summary.kept and summary.written
    report = (reading_vault / summary.report.path).read_text()
    lines = report.splitlines()
    # One bullet each: the providers/project line and the spend line are not run together.
    assert any(line.startswith("- ") and line.endswith("**Project**: EDU7001") for line in lines), report[:600]
    assert any(line.startswith("- **Spend**: ") for line in lines), report[:600]
    rows = Ledger.for_vault(reading_vault).rows(run_id=summary.run_id)
    for path in (reading_vault / "Concepts" / "Drafts").glob("*.md"):
        post = frontmatter.load(path)
        (model,) = [m.split(": ", 1)[1] for m in post["tierflow_phase_models"] if m.startswith("draft: ")]
        assert any(f": kept from {model} (check_failed" in line for line in lines), (model, report)
    assert {r["model"] for r in rows if r["phase"] == "draft"} > {model.split(":", 1)[1]}  # other attempts too


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_that_passed_every_check_ends_plain_completed(reading_vault: Path):
    state = reading_notes(vault=str(reading_vault), since=SINCE, until=UNTIL, profile="offline", return_state=True)
    assert state.is_completed() and state.name == "Completed" and not state.result().kept


def test_a_reason_that_quotes_a_broken_link_is_reported_as_text_and_the_report_is_written(
    tmp_path: Path, prefect_harness
):
    """A note not written because a link did not resolve says so in the report: quoting that link as a link would
    stop the report itself, the one record of the run."""
    from tierflow.core.calls import RunSettings
    from tierflow.report.run_report import RunSummary, write_run_report

    vault = tmp_path / "vault"
    (vault / "Reading").mkdir(parents=True)
    (vault / "Reading" / "Source.md").write_text("# Source\n", encoding="utf-8")
    settings = RunSettings(vault=str(vault), run_id="broken-link", flow="reading-notes", profile="offline")
    why = "draft failed: Drafts/Idea.md was not written: [[Reading/Gone]] links to no note in the vault"
    summary = RunSummary("broken-link", "reading-notes", skipped=[("Reading/Source.md", why)])
    write_run_report(settings, summary, since=None, until=None, selected=1)
    assert summary.report is not None
    text = (vault / summary.report.path).read_text(encoding="utf-8")
    assert "was not written: Reading/Gone links to no note" in text and "[[Reading/Gone]]" not in text


def phase_table(report: str) -> dict[str, dict[str, str]]:
    """The report's spend-per-phase table: phase -> column -> cell."""
    table = report.split("## Spend per phase", 1)[1].split("\n| phase |", 1)[1]
    lines = ("| phase |" + table).split("\n\n", 1)[0].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip(" *") for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


@pytest.mark.usefixtures("prefect_harness")
def test_an_unchanged_rerun_reports_cache_hits_apart_from_calls_as_tierflow_spend_does(reading_vault: Path):
    """An unchanged rerun's report said `calls 12 / 1 / 5` with 0 tokens; `tierflow spend --by run`: calls 0."""
    from tierflow.report.spend import ledger_summary

    first = reading_notes(vault=str(reading_vault), since=SINCE, until=UNTIL, profile="offline")
    second = reading_notes(vault=str(reading_vault), since=SINCE, until=UNTIL, profile="offline")
    ledger = Ledger.for_vault(reading_vault)
    for summary in (second, first):
        table = phase_table((reading_vault / summary.report.path).read_text(encoding="utf-8"))
        spend = {r["phase"]: r for r in ledger_summary(ledger, "phase", run_id=summary.run_id)}
        assert set(table) == {*spend, "total"}
        for phase, row in spend.items():
            assert table[phase]["calls"] == str(row["calls"]), (phase, table[phase], row)
            assert table[phase]["cache hits"] == str(row["cache_hits"])
        (whole,) = ledger_summary(ledger, "run_id", run_id=summary.run_id)  # `tierflow spend --by run`
        total = table["total"]
        assert (total["calls"], total["cache hits"]) == (str(whole["calls"]), str(whole["cache_hits"]))
        assert [p["calls"] for p in summary.phases] == [spend[p["phase"]]["calls"] for p in summary.phases]
        if summary is second:  # the rerun: every answer from the cache
            assert whole["calls"] == 0 and whole["cache_hits"] > 0


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_whose_phase_failed_ends_failed_in_prefect_with_its_reason_and_summary(
    reading_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch
):
    """A scheduled run whose synthesis failed on every attempt stopped early (`tierflow run` exits 3), but its flow
    run ended Completed: green in the Prefect UI. It ends Failed, saying why, after its report is written, and a
    caller still gets its summary."""
    from prefect import get_client
    from prefect.client.schemas.objects import StateType

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    config = reading_vault / ".tierflow" / "config.toml"
    write_config(config, anthropic_config(double) + config.read_text())
    double.responder = skilled({"synthesisout": {"patterns": "not a list"}})
    state = reading_notes(vault=str(reading_vault), since=SINCE, until=UNTIL, return_state=True)

    assert state.is_failed(), state
    from tierflow.report.run_report import RunStopped

    assert state.message.startswith("synthesise failed") and "no usable synthesisout" in state.message
    stopped = state.result(raise_on_failure=False)
    assert isinstance(stopped, RunStopped) and str(stopped) == state.message
    summary = stopped.summary
    assert summary.failed == state.message and summary.phases  # the report's spend is in it
    assert "synthesise failed" in (reading_vault / summary.report.path).read_text(encoding="utf-8")
    rows = Ledger.for_vault(reading_vault).rows(run_id=summary.run_id)
    assert {r["phase"] for r in rows} == {"collate", "synthesise"}  # every attempt paid for is in the ledger
    with get_client(sync_client=True) as client:  # what the UI shows
        recorded = client.read_flow_run(state.state_details.flow_run_id).state
    assert recorded.type == StateType.FAILED and recorded.message == state.message
    # Called from Python, the flow raises its reason, a TierflowError that carries the summary.
    with pytest.raises(RunStopped, match="^synthesise failed") as raised:
        reading_notes(vault=str(reading_vault), since=SINCE, until=UNTIL)
    assert raised.value.summary.failed and raised.value.summary.report is not None


@pytest.mark.usefixtures("prefect_harness")
def test_a_dataview_sum_over_run_reports_counts_a_resumed_run_once_beside_the_report_a_person_edited(
    reading_vault: Path,
):
    """The person edited the run's report, so the resume (which collected a batch answer: one more billed call)
    writes its report beside it: the person's note keeps its spend properties, byte for byte, and the sibling's
    carry only the rest, so `sum(tierflow_cost_usd)` and `sum(tierflow_tokens)` over `#tierflow/run` are the run's.
    The sibling says the whole run's spend in `tierflow_run_*`, as its body and the day's index do."""
    from conftest import call_record

    from tierflow.core.usage import Usage
    from tierflow.report.spend import money

    run_id = "20261118-060000-ab12cd"
    ledger = Ledger.for_vault(reading_vault)
    usage = Usage(input_tokens=1200, output_tokens=300)
    # A priced call of the run before its first report (the offline model's calls cost nothing).
    ledger.record(call_record(run_id=run_id, flow="reading-notes", usage=usage, cost_usd=0.004))
    first = reading_notes(vault=str(reading_vault), since=SINCE, until=UNTIL, profile="offline", run_id=run_id)
    assert first.cost_usd == pytest.approx(0.004)
    report = reading_vault / first.report.path
    edited = report.read_text(encoding="utf-8") + "\nMy remark on this run.\n"
    report.write_text(edited, encoding="utf-8")
    ledger.record(call_record(run_id=first.run_id, flow="reading-notes", usage=usage, cost_usd=0.0123))
    resumed = reading_notes(vault=str(reading_vault), since=SINCE, until=UNTIL, profile="offline", run_id=first.run_id)
    assert report.read_text(encoding="utf-8") == edited
    sibling = reading_vault / resumed.report.path
    assert sibling != report
    runs = reading_vault / "tierflow" / "Runs"
    reports = [
        frontmatter.load(p)
        for p in runs.glob("*.md")
        if "tierflow/run" in frontmatter.load(p).get("tags", []) and frontmatter.load(p)["tierflow_run"] == first.run_id
    ]
    assert len(reports) == 2
    assert sum(r["tierflow_cost_usd"] for r in reports) == pytest.approx(resumed.cost_usd, abs=1e-6)
    assert resumed.cost_usd == pytest.approx(first.cost_usd + 0.0123)
    assert sum(r["tierflow_tokens"] for r in reports) == resumed.tokens == first.tokens + 1500
    written = frontmatter.load(sibling)
    assert written["tierflow_run_tokens"] == resumed.tokens
    assert written["tierflow_run_cost_usd"] == pytest.approx(resumed.cost_usd)
    assert written["tierflow_counted_in"] == [f"[[{report.stem}]]"]
    index = (runs / f"{written['tierflow_day']} tierflow runs.md").read_text(encoding="utf-8")
    assert f"[[{sibling.stem}]] | {resumed.tokens} | {money(resumed.cost_usd)} |" in index


@pytest.mark.usefixtures("prefect_harness")
def test_run_reports_sum_to_the_run_over_several_resumes_beside_reports_people_edited(reading_vault: Path):
    """Resumed twice beside the edited report (the sibling rewritten), then once more after the person edited the
    sibling too: at each step the reports' spend properties sum to the run's, and every edited note stays as is."""
    from conftest import call_record

    from tierflow.core.usage import Usage

    run_id = "20261118-060000-ab12cd"
    ledger = Ledger.for_vault(reading_vault)
    usage = Usage(input_tokens=1200, output_tokens=300)
    runs = reading_vault / "tierflow" / "Runs"

    def resume(cost: float) -> object:
        ledger.record(call_record(run_id=run_id, flow="reading-notes", usage=usage, cost_usd=cost))
        return reading_notes(vault=str(reading_vault), since=SINCE, until=UNTIL, profile="offline", run_id=run_id)

    def reports() -> list[dict]:
        found = [frontmatter.load(p) for p in runs.glob("*.md")]
        return [r for r in found if "tierflow/run" in r.get("tags", []) and r["tierflow_run"] == run_id]

    def edit(path: Path) -> str:
        text = path.read_text(encoding="utf-8") + "\nMy remark.\n"
        path.write_text(text, encoding="utf-8")
        return text

    first = resume(0.004)
    mine = {reading_vault / first.report.path: edit(reading_vault / first.report.path)}
    for cost, count in ((0.0123, 2), (0.02, 2)):
        done = resume(cost)
        assert len(reports()) == count
        assert sum(r["tierflow_cost_usd"] for r in reports()) == pytest.approx(done.cost_usd, abs=1e-6)
        assert sum(r["tierflow_tokens"] for r in reports()) == done.tokens
    sibling = reading_vault / done.report.path
    mine[sibling] = edit(sibling)
    done = resume(0.03)
    assert len(reports()) == 3
    assert sum(r["tierflow_cost_usd"] for r in reports()) == pytest.approx(done.cost_usd, abs=1e-6)
    assert sum(r["tierflow_tokens"] for r in reports()) == done.tokens
    assert done.cost_usd == pytest.approx(0.004 + 0.0123 + 0.02 + 0.03)
    assert all(path.read_text(encoding="utf-8") == text for path, text in mine.items())
