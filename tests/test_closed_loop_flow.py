"""The closed loop in the reading-notes flow, under Prefect's test harness, on the wire double: invented
quotations fail their check and escalate, nothing paid for is lost when no tier passes, ungrounded concepts
are reported, and a local server without `json_schema` runs the whole flow through the fallback."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

import frontmatter
import pytest
from conftest import anthropic_config, openai_config, stopped, write_config
from responders import skilled

from tierflow.core.ledger import Ledger
from tierflow.flows.reading_notes import reading_notes
from tierflow.offline import SKILLS, prompt_data
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply

pytestmark = pytest.mark.usefixtures("prefect_harness")

SINCE, UNTIL = date(2026, 11, 16), date(2026, 11, 22)


def configure(vault: Path, text: str) -> None:
    existing = (vault / ".tierflow" / "config.toml").read_text()
    write_config(vault / ".tierflow" / "config.toml", text + existing)


def run(vault: Path):
    return reading_notes(vault=str(vault), since=SINCE, until=UNTIL)


def drafts(vault: Path) -> dict[str, frontmatter.Post]:
    return {p.name: frontmatter.load(p) for p in sorted((vault / "Concepts" / "Drafts").glob("*.md"))}


def invented_quotes(request: DoubleRequest) -> Reply:
    data = SKILLS["draftout"](prompt_data(request.last_user_text))
    source = data["quotes"][0]["source"] if data["quotes"] else "nobody"
    return Reply(data={**data, "quotes": [{"source": source, "text": "Feedback is always harmful to learning."}]})


@pytest.fixture
def vault(reading_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    configure(reading_vault, anthropic_config(double))
    return reading_vault


def test_invented_quotations_fail_their_check_and_the_draft_escalates(vault: Path, double: ProviderDouble):
    def drafts_by_tier(request: DoubleRequest) -> Reply:
        # The standard tier invents a quotation; the deep tier quotes the sources exactly.
        if request.model == "claude-sonnet-4-6":
            return invented_quotes(request)
        return Reply(data=SKILLS["draftout"](prompt_data(request.last_user_text)))

    double.responder = skilled({"draftout": drafts_by_tier})
    summary = run(vault)
    assert summary.written and not summary.failed
    rows = [r for r in Ledger.for_vault(vault).rows(run_id=summary.run_id) if r["phase"] == "draft"]
    failed = [r for r in rows if r["outcome"] == "check_failed"]
    assert failed and {r["checks_failed"] for r in failed} == {"quotes_verbatim"}
    assert {r["tier"] for r in failed} == {"standard"}
    escalated = [r for r in rows if r["escalated_from"] == "standard"]
    assert escalated and all(r["tier"] == "deep" and r["outcome"] == "ok" for r in escalated)
    for post in drafts(vault).values():
        assert "Feedback is always harmful" not in post.content
        assert post["tierflow_unverified_quotes"] == 0 and "tierflow_checks_failed" not in post.metadata


def test_when_no_tier_passes_the_best_draft_is_kept_with_a_warning(vault: Path, double: ProviderDouble):
    double.responder = skilled({"draftout": invented_quotes})
    summary = run(vault)
    assert summary.written  # nothing paid for is lost
    for post in drafts(vault).values():
        assert post["tierflow_checks_failed"] == ["quotes_verbatim"]
        assert "[!warning] This draft failed tierflow's checks: quotes_verbatim" in post.content
    rows = Ledger.for_vault(vault).rows(run_id=summary.run_id)
    assert {r["outcome"] for r in rows if r["phase"] == "draft"} == {"check_failed"}
    report = (vault / summary.report.path).read_text()
    assert "quotes_verbatim" in report  # the run report lists what was kept with failed checks


def test_ungrounded_concepts_are_dropped_and_reported(vault: Path, double: ProviderDouble):
    def ungrounded(request: DoubleRequest) -> Reply:
        data = SKILLS["synthesisout"](prompt_data(request.last_user_text))
        ghost = {"name": "Ghost concept", "summary": "x", "sources": ["Nobody2099"], "quote_refs": [], "tensions": []}
        return Reply(data={**data, "concepts": [ghost, *data["concepts"]]})

    double.responder = skilled({"synthesisout": ungrounded})
    summary = run(vault)
    reasons = dict(summary.skipped)
    assert "cites unknown citekeys ['Nobody2099']" in reasons["concept Ghost concept"]
    assert "Ghost concept.md" not in drafts(vault)
    assert "Ghost concept" in (vault / summary.report.path).read_text()


@pytest.mark.parametrize("status", [500, 400])
def test_a_local_server_without_json_schema_runs_the_whole_flow(
    reading_vault: Path, double: ProviderDouble, status: int
):
    answer = skilled()

    def local_server(request: DoubleRequest) -> Reply | None:
        fmt = request.body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            message = (
                "Input should be 'text' or 'json_object' (response_format.type)"
                if status == 500
                else "response_format json_schema is not supported"
            )
            return Reply(status=status, text=message)
        return answer(request)

    double.responder = local_server
    configure(reading_vault, openai_config(double, kind="openai-compatible"))
    summary = run(reading_vault)
    assert summary.written and not summary.failed and not summary.skipped
    calls = double.model_calls()
    rejected = {}
    for call in calls:
        if call.status != 200:
            rejected[call.model] = rejected.get(call.model, 0) + 1
    assert rejected == {"gpt-5-nano": 1, "gpt-5.1": 1, "gpt-5-mini": 1}  # once per provider and model
    rows = Ledger.for_vault(reading_vault).rows(run_id=summary.run_id)
    assert len(rows) == len(calls) - len(rejected) and all(r["outcome"] == "ok" for r in rows)


def test_a_phase_that_breaks_unexpectedly_still_gets_a_report_with_what_was_spent(
    vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch
):
    import tierflow.tasks.synthesise as synthesise

    def broken(*args, **kwargs):
        raise ValueError("Input too long to encode safely")

    double.responder = skilled()
    monkeypatch.setattr(synthesise, "prompt", broken)
    summary = stopped(run, vault)
    assert summary.failed and "synthesise failed unexpectedly (ValueError: Input too long" in summary.failed
    report = (vault / summary.report.path).read_text()
    rows = Ledger.for_vault(vault).rows(run_id=summary.run_id)
    assert rows and {r["phase"] for r in rows} == {"collate"}  # the collate calls are reported, not lost
    assert "| collate |" in report and "synthesise failed unexpectedly" in report


def test_a_flow_through_20_percent_faults_bills_nothing_twice_and_the_ledger_equals_the_billing(
    reading_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch
):
    """One request in five fails: 429, 529, 500, a timeout or a connection reset (the SDKs retry). The run
    completes, and every billed answer has exactly one ledger row: a delivered one with exactly the tokens the
    double billed; one the client timed out on (the double billed it, the answer was lost) as a `lost` row
    with usage unknown and its worst case as its cost. A reset was never processed, so the double did not
    bill it; tierflow cannot tell, and records it as `lost` too, an upper bound rather than nothing."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    configure(reading_vault, anthropic_config(double).replace("max_retries = 2", "max_retries = 3\ntimeout_s = 1.0"))
    answer = skilled()
    seen = {"n": 0}
    lock = threading.Lock()

    def faulty(request: DoubleRequest) -> Reply | None:
        with lock:
            seen["n"] += 1
            n = seen["n"]
        if n % 5 == 0:
            kind = ("timeout", "reset", 429, 529, 500)[(n // 5 - 1) % 5]
            if isinstance(kind, str):
                return Reply(fault=kind, delay_s=3.0, **_reply_fields(answer(request)))
            return Reply(status=kind, text="injected fault")
        return answer(request)

    double.responder = faulty
    summary = run(reading_vault)
    assert summary.written and not summary.failed and not summary.halted
    calls = double.model_calls()
    faults = {kind: [c for c in calls if c.fault == kind] for kind in ("timeout", "reset")}
    assert faults["timeout"] and faults["reset"]  # both faults really happened
    assert all(c.status == 200 and not c.delivered for c in faults["timeout"])  # billed, never read
    assert all(c.status == 0 for c in faults["reset"])  # never processed
    delivered = [c for c in calls if c.status == 200 and c.delivered]
    rows = [r for r in Ledger.for_vault(reading_vault).rows(run_id=summary.run_id) if not r["cached_result"]]
    known = [r for r in rows if r["outcome"] != "lost"]
    lost = [r for r in rows if r["outcome"] == "lost"]
    assert len(known) == len(delivered)  # no answer recorded twice, none missing
    assert len(lost) == len(faults["timeout"]) + len(faults["reset"])
    assert all(not r["usage_known"] and r["input_tokens"] == 0 for r in lost)
    prompt = sum(c.response["usage"]["input_tokens"] + c.response["usage"]["cache_read_input_tokens"]
                 + c.response["usage"]["cache_creation_input_tokens"] for c in delivered)  # fmt: skip
    output = sum(c.response["usage"]["output_tokens"] for c in delivered)
    assert sum(r["input_tokens"] + r["cache_read_tokens"] + r["cache_write_tokens"] for r in known) == prompt
    assert sum(r["output_tokens"] + r["reasoning_tokens"] for r in known) == output
    # What the lost answers may have cost is counted at their worst case: never less than the double billed.
    from tierflow.core.config import load_config
    from tierflow.core.usage import Usage, price

    config = load_config(reading_vault)
    models = {"claude-haiku-4-5": "light", "claude-sonnet-4-6": "standard", "claude-opus-4-6": "deep"}
    for call in faults["timeout"]:
        usage = call.response["usage"]
        billed = price(
            Usage(
                input_tokens=usage["input_tokens"],
                output_tokens=usage["output_tokens"],
                cache_read_tokens=usage["cache_read_input_tokens"],
                cache_write_tokens=usage["cache_creation_input_tokens"],
            ),
            call.model,
            provider_kind="anthropic",
            override=config.tier(models[call.model]).price,
        )
        assert any(r["model"] == call.model and r["cost_usd"] >= float(billed) for r in lost)


def _reply_fields(reply: Reply | None) -> dict:
    """A responder's answer as `Reply` fields, to send the same answer with a fault."""
    if reply is None:
        return {}
    if isinstance(reply, str):
        return {"text": reply}
    if isinstance(reply, dict):
        return {"data": reply}
    return {"text": reply.text, "data": reply.data}
