"""A request whose answers were cut off at the output limit on every tier is not paid for again by a rerun with the
limits unchanged: it fails at once, naming the run that paid and the config keys to raise, at no cost. Raised, it is
sent. Direct calls and batch items alike, on the wire double (real SDK)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import anthropic_config, write_config
from pydantic import BaseModel

from tierflow.core.batch import BatchCall, run_batch
from tierflow.core.calls import Caller, RunSettings
from tierflow.core.errors import MalformedResponse, OutputLimitReached
from tierflow.core.ledger import Ledger
from tierflow.testing.double import ProviderDouble, Reply

LONG = {"text": " ".join(f"point {n}" for n in range(200))}
"""An answer longer than every limit here (about 600 tokens of tool input)."""


class Summary(BaseModel):
    text: str


def configure(vault: Path, double: ProviderDouble, *, light: int = 64, escalate: bool = True) -> None:
    """Every tier cut off: light at `light` (ceiling 128), standard and deep at 64 (ceiling 128)."""
    text = anthropic_config(double, "" if escalate else "[routing]\nescalate = false\n")
    for limit, mine in (("1024", light), ("2048", 64), ("4096", 64)):
        text = text.replace(
            f"max_output_tokens = {limit}", f"max_output_tokens = {mine}\nmax_output_tokens_ceiling = 128"
        )
    write_config(vault / ".tierflow" / "config.toml", text)


def ask(vault: Path, run_id: str, **settings: object) -> object:
    caller = Caller(RunSettings(vault=str(vault), run_id=run_id, flow="cut", **settings))
    return caller.ask(phase="collate", complexity="low", system="Summarise.", prompt="the week", output=Summary)


@pytest.mark.parametrize("escalate", [False, True])
def test_a_rerun_at_unchanged_limits_fails_a_request_cut_off_on_every_tier_at_once_without_paying(
    tmp_path: Path, monkeypatch, escalate: bool
):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    vault = tmp_path / "vault"
    with ProviderDouble(lambda request: Reply(data=LONG)) as double:
        configure(vault, double, escalate=escalate)
        with pytest.raises(OutputLimitReached):
            ask(vault, "first")
        sent = len(double.model_calls())
        assert sent == (6 if escalate else 2)  # a retry at 128 on each tier it went to
        with pytest.raises(OutputLimitReached) as again:
            ask(vault, "second")
        assert len(double.model_calls()) == sent  # nothing sent
        error = str(again.value)
        assert "not sent again, at no cost: run first sent this request" in error
        assert "`tiers.light.max_output_tokens` (64)" in error and "shorten the note" in error
        assert Ledger.for_vault(vault).rows(run_id="second") == []  # no charge, no row
        paid = Ledger.for_vault(vault).rows(run_id="first")
        assert len(paid) == sent and {r["outcome"] for r in paid} == {"truncated"}  # every billed token kept

        configure(vault, double, light=96, escalate=escalate)  # the limit raised: sent, and paid for
        with pytest.raises(OutputLimitReached):
            ask(vault, "third")
        assert [c.max_tokens for c in double.model_calls()][sent : sent + 2] == [96, 128]
        # `--retry-failed` pays to send it again on purpose, at the same limits.
        before = len(double.model_calls())
        with pytest.raises(OutputLimitReached):
            ask(vault, "fourth", retry_failed=True)
        assert len(double.model_calls()) == before + (sent if escalate else 2)


def test_a_batch_rerun_does_not_submit_an_item_cut_off_on_every_tier_and_a_raised_limit_sends_it(
    tmp_path: Path, monkeypatch
):
    """The batch item is cut off, retried alone (cut off again), and fails; a rerun fails it at once without a
    batch; after a direct run of the same request, likewise."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    vault = tmp_path / "vault"
    call = BatchCall(key="s0", subject="s0", system="Summarise.", prompt="the week", output=Summary)

    def batch(run_id: str) -> object:
        caller = Caller(RunSettings(vault=str(vault), run_id=run_id, flow="cut"))
        return run_batch(caller, [call], phase="collate", complexity="low", poll_interval=0.01)

    with ProviderDouble(lambda request: Reply(data=LONG)) as double:
        configure(vault, double, escalate=False)
        first = batch("first")
        assert "cut off" in first.failed["s0"] and not first.answers
        sent = len(double.model_calls(include_batch=True))
        creates = [q for q in double.requests if q.kind == "batch_create"]
        assert sent == 2 and len(creates) == 1
        second = batch("second")
        assert "not sent again, at no cost: run first" in second.failed["s0"] and not second.answers
        assert len(double.model_calls(include_batch=True)) == sent
        assert [q for q in double.requests if q.kind == "batch_create"] == creates
        assert Ledger.for_vault(vault).rows(run_id="second") == []

        configure(vault, double, light=96, escalate=False)
        with pytest.raises(OutputLimitReached):
            ask(vault, "direct")  # a direct call at the raised limit is sent, and remembered as cut off there too
        calls = len(double.model_calls(include_batch=True))
        assert calls == sent + 2
        third = batch("third")
        assert "not sent again, at no cost: run direct" in third.failed["s0"]
        assert len(double.model_calls(include_batch=True)) == calls


def test_a_request_cut_off_on_a_retry_a_budget_clamped_is_sent_again_by_a_rerun_with_budget_left(
    tmp_path: Path, monkeypatch
):
    """The retry after a cut-off answer asks for twice the limit; a budget sent it less than that (what it could
    afford). A rerun the budget affords in full is not refused: its answer fits there."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    vault = tmp_path / "vault"

    def reply(request) -> Reply:  # the answer needs the retry's full 600 tokens
        return Reply(data={"text": "in brief"} if (request.max_tokens or 0) >= 600 else LONG)

    with ProviderDouble(reply) as double:
        text = anthropic_config(double, "[routing]\nescalate = false\n").replace(
            "max_output_tokens = 1024", "max_output_tokens = 300\nmax_output_tokens_ceiling = 600"
        )
        write_config(vault / ".tierflow" / "config.toml", text)
        probe = Caller(RunSettings(vault=str(vault), run_id="probe", flow="cut", use_cache=False))
        routed, request = probe.build(
            phase="collate", complexity="low", system="Summarise.", prompt="the week", output=Summary
        )
        prompt = probe.estimate(routed, request).prompt_tokens
        # Per run: the first attempt in full, the retry only about 450 of its 600 output tokens.
        write_config(vault / ".tierflow" / "config.toml", f"{text}\n[budgets.run]\ntokens = {2 * prompt + 750}\n")
        with pytest.raises(OutputLimitReached):
            ask(vault, "first")
        first, retry = (c.max_tokens for c in double.model_calls())
        assert first == 300 and 256 <= retry < 600  # the retry clamped by the budget
        write_config(vault / ".tierflow" / "config.toml", text)  # the budget raised (or a new period): the limits stand
        answer = ask(vault, "second")  # sent again, its retry in full
        assert answer.parsed.text == "in brief"
        assert [c.max_tokens for c in double.model_calls()][2:] == [300, 600]


def test_a_request_whose_retry_was_not_cut_off_but_malformed_is_sent_again_by_a_rerun(tmp_path: Path, monkeypatch):
    """Cut off once, then an answer not of the schema at the doubled limit: the limit is not why it failed, so a
    rerun at unchanged limits is not refused; its retry's answer passes."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    vault = tmp_path / "vault"
    retries: list[int] = []

    def reply(request) -> Reply:
        if (request.max_tokens or 0) < 600:
            return Reply(data=LONG)
        retries.append(request.max_tokens)
        return Reply(data={"wrong": 1} if len(retries) == 1 else {"text": "in brief"})

    with ProviderDouble(reply) as double:
        text = anthropic_config(double, "[routing]\nescalate = false\n").replace(
            "max_output_tokens = 1024", "max_output_tokens = 300\nmax_output_tokens_ceiling = 600"
        )
        write_config(vault / ".tierflow" / "config.toml", text)
        with pytest.raises(OutputLimitReached, match="1 of 2 attempts"):
            ask(vault, "first")
        assert ask(vault, "second").parsed.text == "in brief"
        assert [c.max_tokens for c in double.model_calls()] == [300, 600, 300, 600]


def test_a_cut_off_request_is_remembered_and_refused_at_no_cost_on_the_ledger_database(
    tmp_path: Path, monkeypatch, ledger_url: str
):
    """The same memory on a shared ledger (SQLite file or PostgreSQL): the rerun sends nothing and writes no row."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    vault = tmp_path / "vault"
    with ProviderDouble(lambda request: Reply(data=LONG)) as double:
        configure(vault, double, escalate=False)
        path = vault / ".tierflow" / "config.toml"
        write_config(path, f"ledger_url = {json.dumps(ledger_url)}\n{path.read_text()}")
        with pytest.raises(OutputLimitReached):
            ask(vault, "first")
        with pytest.raises(OutputLimitReached, match="not sent again, at no cost: run first"):
            ask(vault, "second")
        assert len(double.model_calls()) == 2
        ledger = Ledger(ledger_url)
        assert ledger.rows(run_id="second") == [] and len(ledger.rows(run_id="first")) == 2


def test_a_request_cut_off_on_the_tier_a_budget_downgraded_it_to_is_sent_again_by_a_rerun_with_budget_left(
    tmp_path: Path, monkeypatch
):
    """Routed to standard, a `downgrade` budget sent it to light, where it was cut off: a rerun the budget affords
    sends it to standard, whose limit its answer fits, not refused as cut off at unchanged limits."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    vault = tmp_path / "vault"
    with ProviderDouble(lambda request: Reply(data=LONG)) as double:
        text = anthropic_config(double, "[routing]\nescalate = false\n").replace(
            "max_output_tokens = 1024", "max_output_tokens = 64\nmax_output_tokens_ceiling = 128"
        )
        path = vault / ".tierflow" / "config.toml"
        write_config(path, f'{text}\n[budgets.run]\nusd = 0.01\npolicy = "downgrade"\nfloor = "light"\n')

        def ask_standard(run_id: str) -> object:
            caller = Caller(RunSettings(vault=str(vault), run_id=run_id, flow="cut"))
            return caller.ask(
                phase="collate", complexity="medium", system="Summarise.", prompt="the week", output=Summary
            )

        with pytest.raises(OutputLimitReached):
            ask_standard("first")
        assert [c.model for c in double.model_calls()] == ["claude-haiku-4-5"] * 2  # downgraded, cut off there
        write_config(path, text)  # the budget raised (or a new period): the limits stand
        assert ask_standard("second").parsed.text == LONG["text"]
        assert [c.model for c in double.model_calls()][2:] == ["claude-sonnet-4-6"]


def test_a_retry_failed_run_not_cut_off_on_every_attempt_lifts_the_memory_of_the_earlier_cut_off(
    tmp_path: Path, monkeypatch
):
    """Cut off on every attempt, remembered; `--retry-failed` sends it again at the same limits and its answers are
    not cut off (malformed): the memory is stale, and a later run sends it (and its answer passes)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    vault = tmp_path / "vault"
    answers = {"now": LONG}
    with ProviderDouble(lambda request: Reply(data=answers["now"])) as double:
        configure(vault, double, escalate=False)
        with pytest.raises(OutputLimitReached):
            ask(vault, "first")
        answers["now"] = {"wrong": 1}
        with pytest.raises(MalformedResponse) as retried:
            ask(vault, "second", retry_failed=True)
        assert not isinstance(retried.value, OutputLimitReached)
        answers["now"] = {"text": "in brief"}
        assert ask(vault, "third").parsed.text == "in brief"
        assert len(double.model_calls()) == 5
