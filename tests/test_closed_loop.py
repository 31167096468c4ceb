"""The closed loop on every call, through the real SDKs on the wire double: every billed answer is a ledger row
with its outcome, only answers that pass are cached, a failed check gets one informed retry and then the next
tier up, and a server that rejects `json_schema` is served through the fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import anthropic_config, openai_config, write_config
from pydantic import BaseModel

from tierflow.core.batch import BatchCall, run_batch
from tierflow.core.calls import Caller, RunSettings
from tierflow.core.checks import Check
from tierflow.core.errors import BudgetExceeded, MalformedResponse, ProviderUnavailable
from tierflow.core.ledger import Ledger
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply


class Verdict(BaseModel):
    label: str
    score: int


def summative_only(v: Verdict) -> list[str]:
    return [] if v.label == "summative" else [f"label {v.label!r} is not one of the rubric's labels (summative)"]


LABEL = Check("label_in_rubric", summative_only)


def caller(
    tmp_path: Path, config_text: str, monkeypatch: pytest.MonkeyPatch, *, run_id: str = "run-1", vault: str = "vault"
) -> Caller:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-anthropic-key")
    monkeypatch.setenv("OPENAI_API_KEY", "test-openai-key")
    folder = tmp_path / vault
    folder.mkdir(exist_ok=True)
    path = write_config(folder / ".tierflow" / "config.toml", config_text)
    return Caller(RunSettings(vault=str(folder), config_path=str(path), run_id=run_id, flow="test"))


def config_for(provider: str, double: ProviderDouble, extra: str = "") -> str:
    return anthropic_config(double, extra) if provider == "anthropic" else openai_config(double, extra)


def ask(c: Caller, prompt: str = "Classify this assessment.", **kw: Any):
    return c.ask(phase="collate", complexity="low", system="You are terse.", prompt=prompt, output=Verdict, **kw)


def billed(double: ProviderDouble, *, delivered_only: bool = False) -> dict[str, int]:
    """Prompt and output tokens the double billed, from its own responses (errors bill nothing); with
    `delivered_only`, those of the answers the client read whole (a lost answer's usage is unknown to tierflow)."""
    total = {"prompt": 0, "output": 0}
    for call in double.model_calls(include_batch=True):
        if delivered_only and not call.delivered:
            continue
        usage = (call.response or {}).get("usage") if call.status == 200 and isinstance(call.response, dict) else None
        if not usage:
            continue
        if call.provider == "anthropic":
            total["prompt"] += (
                usage["input_tokens"]
                + (usage.get("cache_read_input_tokens") or 0)
                + (usage.get("cache_creation_input_tokens") or 0)
            )
            total["output"] += usage["output_tokens"]
        else:
            total["prompt"] += usage["prompt_tokens"]
            total["output"] += usage["completion_tokens"]
    return total


def recorded(ledger: Ledger) -> dict[str, int]:
    rows = ledger.rows()
    return {
        "prompt": sum(r["input_tokens"] + r["cache_read_tokens"] + r["cache_write_tokens"] for r in rows),
        "output": sum(r["output_tokens"] + r["reasoning_tokens"] for r in rows),
    }


# Each unusable answer, in each provider's own vocabulary.
UNUSABLE = {
    "malformed": {
        "anthropic": lambda r: Reply(text="I think it is summative."),  # no tool call at all
        "openai": lambda r: Reply(text='{"label": "summative", "score": '),  # invalid JSON
    },
    "schema-invalid": {
        "anthropic": lambda r: Reply(data={"label": "summative"}),
        "openai": lambda r: Reply(data={"label": "summative", "score": "high"}),
    },
    "truncated": {
        "anthropic": lambda r: Reply(data={"label": "summ"}, stop_reason="max_tokens"),
        "openai": lambda r: Reply(text='{"label": "summative", "sco', stop_reason="length"),
    },
    "refused": {
        "anthropic": lambda r: Reply(text="I can't help with that.", stop_reason="refusal"),
        "openai": lambda r: Reply(text="", stop_reason="content_filter"),
    },
}
OUTCOME = {"malformed": "malformed", "schema-invalid": "malformed", "truncated": "truncated", "refused": "refused"}


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
@pytest.mark.parametrize("case", list(UNUSABLE))
def test_every_unusable_answer_is_billed_into_the_ledger(tmp_path, monkeypatch, double, provider, case):
    double.responder = UNUSABLE[case][provider]
    c = caller(tmp_path, config_for(provider, double, "[routing]\nescalate = false\n"), monkeypatch)
    with pytest.raises(MalformedResponse) as err:
        ask(c)
    rows = c.ledger.rows()
    assert len(rows) == len(double.model_calls()) == 2  # the answer and its one informed retry, both paid for
    assert [r["outcome"] for r in rows] == [OUTCOME[case]] * 2 and [r["attempt"] for r in rows] == [1, 2]
    assert all(r["usage_known"] and r["output_tokens"] > 0 or case == "refused" for r in rows)
    assert recorded(c.ledger) == billed(double)
    if case == "truncated":
        assert "tiers.light.max_output_tokens" in str(err.value)  # says which key to raise
        first, second = (call.max_tokens for call in double.model_calls())
        assert second == 2 * first  # the retry raised the output limit, up to the tier's ceiling
    # No unusable answer is cached; a request cut off on every tier is remembered with no answer, so that a rerun
    # at the same limits fails it without paying again (test_cut_off_rerun).
    with c.ledger.engine.connect() as conn:
        cached = conn.exec_driver_sql("SELECT text, checks_failed FROM response_cache").all()
    assert [tuple(row) for row in cached] == ([("", "cut off")] if case == "truncated" else [])


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_ledger_equals_billing_when_30_percent_are_malformed(tmp_path, monkeypatch, double, provider):
    served = {"n": 0}

    def flaky(request: DoubleRequest) -> Reply:
        served["n"] += 1
        if served["n"] % 10 in (1, 4, 7):
            return UNUSABLE["schema-invalid"][provider](request)
        return Reply(data={"label": "summative", "score": 3})

    double.responder = flaky
    c = caller(tmp_path, config_for(provider, double), monkeypatch)
    for n in range(14):
        assert ask(c, f"Assessment number {n}: classify it.").parsed.label == "summative"
    rows = c.ledger.rows()
    outcomes = [r["outcome"] for r in rows]
    assert outcomes.count("malformed") >= 4 and outcomes.count("ok") == 14
    assert recorded(c.ledger) == billed(double) and len(rows) == len(double.model_calls())


def test_a_rerun_replays_no_malformed_answer(tmp_path, monkeypatch, double):
    double.responder = lambda r: Reply(data={"label": "summative"})  # schema-invalid, every time
    first = caller(tmp_path, anthropic_config(double, "[routing]\nescalate = false\n"), monkeypatch, run_id="r1")
    with pytest.raises(MalformedResponse):
        ask(first)
    double.responder = lambda r: Reply(data={"label": "summative", "score": 2})
    again = caller(tmp_path, anthropic_config(double, "[routing]\nescalate = false\n"), monkeypatch, run_id="r2")
    answer = ask(again)
    assert answer.parsed == Verdict(label="summative", score=2) and not answer.cached
    second_run = [r for r in again.ledger.rows() if r["run_id"] == "r2"]
    assert [(r["cached_result"], r["outcome"]) for r in second_run] == [(False, "ok")]
    assert len(double.model_calls()) == 3  # two failed attempts in run 1, one fresh call in run 2
    # A third run replays the answer that passed, and only that one.
    third = caller(tmp_path, anthropic_config(double, "[routing]\nescalate = false\n"), monkeypatch, run_id="r3")
    assert ask(third).cached and len(double.model_calls()) == 3


def test_a_downgraded_answer_is_not_replayed_for_the_original_tier(tmp_path, monkeypatch, double):
    double.responder = lambda r: Reply(data={"label": "summative", "score": 2})
    tight = '[budgets.run]\nusd = 0.008\npolicy = "downgrade"\nfloor = "light"\n'
    poor = caller(tmp_path, anthropic_config(double, tight), monkeypatch, run_id="poor")
    low = poor.ask(phase="draft", complexity="high", system="s", prompt="Synthesise the week.", output=Verdict)
    assert low.route.tier != "deep"
    (row,) = poor.ledger.rows()
    assert row["downgraded_from"] == "deep"
    # The downgraded call was sent with its own tier's output limit, not deep's.
    assert double.model_calls()[0].max_tokens == poor.config.tier(low.route.tier).max_output_tokens
    rich = caller(tmp_path, anthropic_config(double), monkeypatch, run_id="rich")
    high = rich.ask(phase="draft", complexity="high", system="s", prompt="Synthesise the week.", output=Verdict)
    assert high.route.tier == "deep" and not high.cached
    assert double.model_calls()[-1].model == "claude-opus-4-6"


def test_a_failed_check_gets_one_informed_retry_then_escalates(tmp_path, monkeypatch, double):
    def by_tier(request: DoubleRequest) -> Reply:
        if request.model == "claude-haiku-4-5":
            return Reply(data={"label": "formative", "score": 1})
        return Reply(data={"label": "summative", "score": 4})

    double.responder = by_tier
    c = caller(tmp_path, anthropic_config(double), monkeypatch)
    answer = ask(c, checks=[LABEL])
    assert answer.parsed.label == "summative" and answer.route.tier == "standard"
    rows = c.ledger.rows()
    assert [(r["tier"], r["attempt"], r["outcome"], r["checks_failed"], r["escalated_from"]) for r in rows] == [
        ("light", 1, "check_failed", "label_in_rubric", None),
        ("light", 2, "check_failed", "label_in_rubric", None),
        ("standard", 3, "ok", None, "light"),
    ]
    first, retry, escalated = double.model_calls()
    assert "Your previous answer" not in first.last_user_text
    assert "label_in_rubric: label 'formative' is not one of the rubric's labels" in retry.last_user_text
    assert escalated.model == "claude-sonnet-4-6"
    # The answer that passed is cached under the request that produced it, and remembered for the original
    # request (so an unchanged rerun, which sends that first, replays it); nothing that failed is kept.
    stored = c.ledger.engine.connect().exec_driver_sql("SELECT tier, kept, checks_failed FROM response_cache")
    assert sorted((tuple(r) for r in stored), key=lambda r: r[1]) == [(None, False, None), ("standard", True, "")]
    again = ask(caller(tmp_path, anthropic_config(double), monkeypatch), checks=[LABEL])
    assert again.cached and again.parsed.label == "summative" and len(double.model_calls()) == 3


def test_escalation_respects_a_halt_budget_and_keeps_the_best_answer(tmp_path, monkeypatch, double):
    double.responder = lambda r: Reply(data={"label": "formative", "score": 1})
    probe = caller(tmp_path, anthropic_config(double), monkeypatch, vault="probe")
    routed, request = probe.build(phase="collate", complexity="low", system="You are terse.", prompt="Classify.")
    light_worst = float(probe.estimate(routed, request).usd)
    cap = 2.5 * light_worst  # two light attempts fit; a standard one does not
    # Without clamping: an escalation that does not fit in full is refused (with clamping it would be sent
    # with what the budget affords, as test_budgets shows; either way the cap holds).
    body = f'[budgets.run]\nusd = {cap!r}\npolicy = "halt"\nclamp_output = false\n'
    c = caller(tmp_path, anthropic_config(double, body), monkeypatch)
    answer = ask(c, "Classify.", checks=[LABEL])
    assert answer.checks_failed == ("label_in_rubric",) and answer.parsed.label == "formative"
    assert {call.model for call in double.model_calls()} == {"claude-haiku-4-5"}
    assert sum(r["cost_usd"] for r in c.ledger.rows()) <= cap


def test_an_unreadable_answer_with_no_budget_left_to_retry_halts_on_the_budget(tmp_path, monkeypatch, double):
    """A cut-off answer the budget leaves no room to retry stops the call on the budget, and says so: the fix is
    the budget, not the tier's output limit. The paid, cut-off answer is in the ledger."""
    double.responder = UNUSABLE["truncated"]["anthropic"]
    probe = caller(tmp_path, anthropic_config(double), monkeypatch, vault="probe")
    routed, request = probe.build(phase="collate", complexity="low", system="You are terse.", prompt="Classify.")
    cap = 1.5 * float(probe.estimate(routed, request).usd)  # one light attempt fits, its retry does not
    body = f'[budgets.run]\nusd = {cap!r}\npolicy = "halt"\nclamp_output = false\n'
    c = caller(tmp_path, anthropic_config(double, body), monkeypatch)
    with pytest.raises(BudgetExceeded, match=r"budget 'run' \(per run\)") as err:
        ask(c, "Classify.", checks=[LABEL])
    assert "the only answer was cut off" in str(err.value) and "Raise `budgets.run`" in str(err.value)
    (row,) = c.ledger.rows()
    assert row["outcome"] == "truncated" and row["output_tokens"] > 0
    assert recorded(c.ledger) == billed(double)


def test_the_first_call_over_budget_still_raises(tmp_path, monkeypatch, double):
    c = caller(tmp_path, anthropic_config(double, '[budgets.run]\nusd = 0.0000001\npolicy = "halt"\n'), monkeypatch)
    with pytest.raises(BudgetExceeded):
        ask(c, checks=[LABEL])
    assert double.model_calls() == []


def test_with_escalation_off_nothing_goes_past_the_routed_tier(tmp_path, monkeypatch, double):
    double.responder = lambda r: Reply(data={"label": "formative", "score": 1})
    c = caller(tmp_path, anthropic_config(double, "[routing]\nescalate = false\n"), monkeypatch)
    answer = ask(c, checks=[LABEL])
    assert answer.checks_failed == ("label_in_rubric",)
    assert [r["tier"] for r in c.ledger.rows()] == ["light", "light"]


def test_the_ceiling_caps_escalation(tmp_path, monkeypatch, double):
    double.responder = lambda r: Reply(data={"label": "formative", "score": 1})
    c = caller(tmp_path, anthropic_config(double, '[routing]\nceiling = "standard"\n'), monkeypatch)
    ask(c, checks=[LABEL])
    assert [r["tier"] for r in c.ledger.rows()] == ["light", "light", "standard", "standard"]


@pytest.mark.parametrize("returned", [None, "the label is wrong", True])
def test_a_check_of_your_own_that_returns_no_list_fails_named_and_every_paid_answer_is_recorded(
    tmp_path, monkeypatch, double, returned
):
    """A flow's own check that returns None, a bare string or a bool, not a list of problems: the answer it judged
    is paid for, so it is recorded, and the check fails as one that raises does, naming what it returned (None
    raised a TypeError out of the call, losing the ledger row; a string became one problem per letter)."""
    double.responder = lambda r: Reply(data={"label": "summative", "score": 4})
    c = caller(tmp_path, anthropic_config(double, "[routing]\nescalate = false\n"), monkeypatch)
    answer = ask(c, checks=[Check("my_check", lambda v: returned)])
    rows = c.ledger.rows()
    assert len(rows) == len(double.model_calls()) == 2 and recorded(c.ledger) == billed(double)
    assert answer.checks_failed == (f"my_check returned {type(returned).__name__}",)
    assert {r["outcome"] for r in rows} == {"check_failed"}


# --- structured output on servers that do not take json_schema -------------------------------------------


def llama_cpp(request: DoubleRequest) -> Reply | None:
    """llama-cpp-python's server: HTTP 500 for `json_schema`, JSON mode with a schema beside it works."""
    fmt = request.body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return Reply(
            status=500,
            text="1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  "
            "Input should be 'text' or 'json_object' [type=literal_error, input_value='json_schema']",
        )
    return None


def strict_400(request: DoubleRequest) -> Reply | None:
    """A server that refuses `json_schema` and JSON mode with 400, and answers plain prompts."""
    fmt = request.body.get("response_format") or {}
    if fmt.get("type") in ("json_schema", "json_object"):
        return Reply(status=400, text=f"response_format type {fmt['type']!r} is not supported by this server")
    return None


@pytest.mark.parametrize("server", [llama_cpp, strict_400], ids=["llama-cpp-500", "rejects-with-400"])
def test_a_server_that_rejects_json_schema_is_served_through_the_fallback(tmp_path, monkeypatch, double, server):
    def respond(request: DoubleRequest) -> Reply:
        return server(request) or Reply(text='```json\n{"label": "summative", "score": 3}\n```')

    double.responder = respond
    c = caller(tmp_path, openai_config(double, kind="openai-compatible"), monkeypatch)
    for n in range(3):
        assert ask(c, f"Classify number {n}.").parsed == Verdict(label="summative", score=3)
    rejected = [call for call in double.model_calls() if call.status != 200]
    assert len(rejected) == (1 if server is llama_cpp else 2)  # each refused form is tried once, never again
    assert len(c.ledger.rows()) == 3  # rejected requests bill nothing; every answer is a row
    # A new process (a new Caller) remembers what works, from the ledger database.
    again = caller(tmp_path, openai_config(double, kind="openai-compatible"), monkeypatch, run_id="run-2")
    ask(again, "Classify once more.")
    assert len([call for call in double.model_calls() if call.status != 200]) == len(rejected)


def fast_timeout(config: str) -> str:
    """A provider block (of `anthropic_config` or `openai_config`) whose calls time out after 1 s."""
    return config.replace("max_retries = 2", "max_retries = 2\ntimeout_s = 1", 1)


@pytest.mark.parametrize("fault", ["timeout", "cut"])
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_first_structured_call_retries_lost_answers_as_configured_and_records_each_as_lost(
    tmp_path, monkeypatch, double, provider, fault
):
    """The first structured call to a model (OpenAI: while the server's output mode is still being learned) loses
    two answers, timed out or cut off mid-transfer: the SDK retries (max_retries = 2), the third answer is kept,
    and each lost attempt, which the provider billed, is one `lost` row. Before, OpenAI gave up at the first."""
    double.responder = lambda r: Reply(data={"label": "summative", "score": 3})
    double.lose_next("message" if provider == "anthropic" else "chat", fault=fault, delay_s=2.5, times=2)
    c = caller(tmp_path, fast_timeout(config_for(provider, double)), monkeypatch)
    assert ask(c).parsed == Verdict(label="summative", score=3)
    sent = double.model_calls()
    assert [(s.status, s.fault, s.delivered) for s in sent] == [(200, fault, False)] * 2 + [(200, None, True)]
    assert sorted(r["outcome"] for r in c.ledger.rows()) == ["lost", "lost", "ok"]  # one row per billed answer
    assert recorded(c.ledger) == billed(double, delivered_only=True)


def test_a_timeout_before_a_server_refuses_json_schema_is_retried_then_falls_back_and_is_recorded_lost(
    tmp_path, monkeypatch, double
):
    """llama-cpp-python's server, slow at first: the `json_schema` request times out, its retry is refused with
    a 500 naming the form, which is not retried, and JSON mode answers. The attempt that timed out is a `lost`
    row, though the call went on in another form: tierflow cannot tell whether it was billed (here it was the
    refusal, held), so it counts it as an upper bound rather than as nothing."""

    def respond(request: DoubleRequest) -> Reply:
        return llama_cpp(request) or Reply(data={"label": "summative", "score": 3})

    double.responder = respond
    double.lose_next("chat", delay_s=2.5)
    c = caller(tmp_path, fast_timeout(openai_config(double, kind="openai-compatible")), monkeypatch)
    assert ask(c).parsed == Verdict(label="summative", score=3)
    sent = [(s.body["response_format"]["type"], s.status, s.delivered) for s in double.model_calls()]
    assert sent == [("json_schema", 500, False), ("json_schema", 500, True), ("json_object", 200, True)]
    assert sorted(r["outcome"] for r in c.ledger.rows()) == ["lost", "ok"]


def test_a_call_whose_every_answer_timed_out_says_what_to_raise_in_the_config_or_to_rerun(
    tmp_path, monkeypatch, double
):
    """Retries exhausted: the error names the provider's `timeout_s` and `max_retries` to raise, and that a rerun
    does not pay again for finished work; every attempt is a `lost` row."""
    double.responder = lambda r: Reply(data={"label": "summative", "score": 3})
    double.lose_next("chat", delay_s=2.5, times=3)
    c = caller(tmp_path, fast_timeout(openai_config(double)), monkeypatch)
    with pytest.raises(ProviderUnavailable) as error:
        ask(c)
    assert str(error.value) == (
        "openai:gpt-5-nano: timed out after 1 s. raise timeout_s (1 s now) or max_retries (2 now) under "
        "[providers.openai] in the config, or rerun: finished answers are reused, not paid again"
    )
    assert [r["outcome"] for r in c.ledger.rows()] == ["lost"] * 3 == ["lost"] * len(double.model_calls())


def test_openai_gets_a_strict_json_schema(tmp_path, monkeypatch, double):
    double.responder = lambda r: Reply(data={"label": "summative", "score": 2})
    c = caller(tmp_path, openai_config(double), monkeypatch)
    ask(c)
    fmt = double.model_calls()[0].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["additionalProperties"] is False and set(schema["required"]) == {"label", "score"}


# --- batch mode: the same loop ---------------------------------------------------------------------------


def batch_calls(n: int, checks: tuple[Check, ...] = ()) -> list[BatchCall]:
    return [
        BatchCall(
            key=f"s{i}", system="You are terse.", prompt=f"Classify submission {i}.", output=Verdict, checks=checks
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_batch_items_are_judged_recorded_retried_and_escalated_like_direct_calls(
    tmp_path, monkeypatch, double, provider
):
    def respond(request: DoubleRequest) -> Reply:
        text = request.last_user_text
        if "submission 0" in text:  # malformed in the batch, fine when retried with the problem stated
            ok = "Your previous answer" in text
            return (
                Reply(data={"label": "summative", "score": 2}) if ok else UNUSABLE["schema-invalid"][provider](request)
            )
        if "submission 1" in text and request.model in ("claude-haiku-4-5", "gpt-5-nano"):
            return Reply(data={"label": "formative", "score": 1})  # fails its check on light; passes one tier up
        return Reply(data={"label": "summative", "score": 3})

    double.responder = respond
    c = caller(tmp_path, config_for(provider, double), monkeypatch)
    outcome = run_batch(c, batch_calls(3, (LABEL,)), phase="collate", complexity="low", poll_interval=0.01)
    assert {k: a.parsed.label for k, a in outcome.answers.items()} == {k: "summative" for k in ("s0", "s1", "s2")}
    rows = c.ledger.rows()
    assert sorted(r["outcome"] for r in rows if r["batch"]) == ["check_failed", "malformed", "ok"]
    direct = [(r["tier"], r["attempt"], r["outcome"], r["escalated_from"]) for r in rows if not r["batch"]]
    assert ("light", 2, "ok", None) in direct  # s0: the informed retry, run directly
    assert ("light", 2, "check_failed", None) in direct and ("standard", 3, "ok", "light") in direct  # s1
    assert recorded(c.ledger) == billed(double)


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_an_unchanged_batch_rerun_replays_what_the_first_run_kept_and_pays_for_nothing(
    tmp_path, monkeypatch, double, provider
):
    """Items whose answer passed only on a retry or a dearer tier, or was kept failing, are replayed by an unchanged
    rerun as a direct call would replay them: no batch, no model call, the kept answer's warning and all."""

    def respond(request: DoubleRequest) -> Reply:
        text = request.last_user_text
        if "submission 0" in text and "Your previous answer" not in text:
            return UNUSABLE["schema-invalid"][provider](request)  # passes on its informed retry
        if "submission 1" in text and request.model in ("claude-haiku-4-5", "gpt-5-nano"):
            return Reply(data={"label": "formative", "score": 1})  # passes one tier up
        if "submission 2" in text:
            return Reply(data={"label": "formative", "score": 1})  # fails on every tier: kept with a warning
        return Reply(data={"label": "summative", "score": 3})

    double.responder = respond
    extra = '[routing]\nceiling = "standard"\n'
    first = run_batch(
        caller(tmp_path, config_for(provider, double, extra), monkeypatch, run_id="run-1"),
        batch_calls(4, (LABEL,)), phase="collate", complexity="low", poll_interval=0.01,
    )  # fmt: skip
    assert first.answers["s2"].checks_failed == ("label_in_rubric",)
    paid = len(double.model_calls(include_batch=True))

    again = caller(tmp_path, config_for(provider, double, extra), monkeypatch, run_id="run-2")
    second = run_batch(again, batch_calls(4, (LABEL,)), phase="collate", complexity="low", poll_interval=0.01)
    assert len(double.model_calls(include_batch=True)) == paid and second.submitted == [] and not second.failed
    assert {k: (a.parsed, a.checks_failed) for k, a in second.answers.items()} == {
        k: (a.parsed, a.checks_failed) for k, a in first.answers.items()
    }
    assert all(a.cached for a in second.answers.values())
    assert second.answers["s1"].route.tier == "standard"  # replayed as the tier that answered
    rerun = [r for r in again.ledger.rows() if r["run_id"] == "run-2"]
    assert len(rerun) == 4 and all(r["cached_result"] and r["cost_usd"] == 0 for r in rerun)
    assert sorted(r["outcome"] for r in rerun) == ["check_failed", "ok", "ok", "ok"]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_batch_item_that_cannot_be_resolved_fails_alone_and_every_other_answer_is_recorded(
    tmp_path, monkeypatch, double, provider
):
    """The first item's answer is unusable in the batch and on its retry: that item fails, with why, and the
    batch's other answers (already paid for) are still recorded, judged and returned in this run."""

    def respond(request: DoubleRequest) -> Reply:
        if "submission 0" in request.last_user_text:
            return UNUSABLE["malformed"][provider](request)
        return Reply(data={"label": "summative", "score": 3})

    double.responder = respond
    c = caller(tmp_path, config_for(provider, double, "[routing]\nescalate = false\n"), monkeypatch)
    outcome = run_batch(c, batch_calls(3, (LABEL,)), phase="collate", complexity="low", poll_interval=0.01)
    assert sorted(outcome.answers) == ["s1", "s2"] and list(outcome.failed) == ["s0"]
    assert "no usable" in outcome.failed["s0"] and "Every attempt is in the ledger" in outcome.failed["s0"]
    rows = c.ledger.rows()
    assert sorted((r["batch"], r["outcome"]) for r in rows) == [
        (False, "malformed"), (True, "malformed"), (True, "ok"), (True, "ok")
    ]  # fmt: skip
    assert recorded(c.ledger) == billed(double)


def test_a_downgrade_budget_downgrades_batch_items_instead_of_halting(tmp_path, monkeypatch, double):
    double.responder = lambda r: Reply(data={"label": "summative", "score": 2})
    tight = '[budgets.run]\nusd = 0.02\npolicy = "downgrade"\nfloor = "light"\n'
    c = caller(tmp_path, anthropic_config(double, tight), monkeypatch)
    outcome = run_batch(c, batch_calls(2), phase="draft", complexity="high", poll_interval=0.01)
    assert len(outcome.answers) == 2
    rows = c.ledger.rows()
    assert {r["downgraded_from"] for r in rows} == {"deep"} and all(r["tier"] != "deep" for r in rows)
    assert sum(r["cost_usd"] for r in rows) <= 0.02


# --- budgets that cannot fund the next tier: escalation and shadow calls ---------------------------------------


def light_worst_case(tmp_path: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch) -> float:
    probe = caller(tmp_path, anthropic_config(double), monkeypatch, vault="probe")
    routed, request = probe.build(
        phase="collate", complexity="low", system="You are terse.", prompt="Classify.", output=Verdict
    )
    return float(probe.estimate(routed, request).usd)


def test_an_escalation_the_budget_cannot_fund_keeps_the_best_answer_and_never_goes_back(tmp_path, monkeypatch, double):
    double.responder = lambda r: Reply(data={"label": "formative", "score": 1})  # fails its check on every tier
    # Light's two attempts fit, and a third would; standard's worst case never does.
    cap = 3.5 * light_worst_case(tmp_path, double, monkeypatch)
    body = f'[budgets.run]\nusd = {cap!r}\npolicy = "downgrade"\nfloor = "light"\nclamp_output = false\n'
    c = caller(tmp_path, anthropic_config(double, body), monkeypatch)
    answer = ask(c, "Classify.", checks=[LABEL])
    assert answer.checks_failed == ("label_in_rubric",) and answer.route.tier == "light"
    rows = c.ledger.rows()
    # The escalation is not downgraded back onto light, which had just failed: nothing more is billed.
    assert [(r["tier"], r["attempt"], r["downgraded_from"]) for r in rows] == [("light", 1, None), ("light", 2, None)]
    assert len(double.model_calls()) == 2


def test_a_shadow_call_its_tier_cannot_afford_is_skipped_not_downgraded(tmp_path, monkeypatch, double):
    from tierflow.core.evidence import gather
    from tierflow.core.ledger import signals

    double.responder = lambda r: Reply(data={"label": "summative", "score": 3})
    cap = 1.5 * light_worst_case(tmp_path, double, monkeypatch)  # light fits; standard's shadow call does not
    body = (
        f'[budgets.run]\nusd = {cap!r}\npolicy = "downgrade"\nfloor = "light"\nclamp_output = false\n'
        '[routing]\nmode = "adaptive"\nexplore = 1.0\n'
    )
    c = caller(tmp_path, anthropic_config(double, body), monkeypatch)
    answer = ask(c, "Classify.", checks=[LABEL])
    assert answer.route.tier == "light" and not answer.checks_failed
    (row,) = c.ledger.rows()  # one call, paid once; no shadow answer from light credited to light
    assert (row["tier"], row["downgraded_from"]) == ("light", None) and len(double.model_calls()) == 1
    with c.ledger.reading() as conn:
        (skipped,) = conn.execute(sa.select(signals)).all()
    assert (skipped.kind, skipped.tier, skipped.passed) == ("shadow", "standard", None)
    assert skipped.detail.startswith("skipped (BudgetExceeded)")
    (phase,) = gather(c.ledger)
    assert {t: (e.calls, e.passed) for t, e in phase.tiers.items()} == {"light": (1, 1)}


def test_a_downgraded_escalation_is_no_first_answer_of_the_cheaper_tier(tmp_path):
    """A request routed to standard and downgraded to light for its first two attempts, then escalated to deep and
    downgraded to standard: that third attempt carries the earlier failures in its prompt, so it is no first answer
    of standard's."""
    from conftest import call_record

    from tierflow.core.evidence import gather

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    for attempt, tier, escalated, downgraded, outcome in [
        (1, "light", None, "standard", "check_failed"),
        (2, "light", None, "standard", "check_failed"),
        (3, "standard", "standard", "deep", "ok"),
        (1, "standard", None, None, "check_failed"),  # another request's first answer on standard
    ]:
        ledger.record(
            call_record(
                attempt=attempt, tier=tier, escalated_from=escalated, downgraded_from=downgraded, outcome=outcome
            )
        )
    (phase,) = gather(ledger)
    assert {t: (e.calls, e.passed) for t, e in phase.tiers.items()} == {"light": (1, 0), "standard": (1, 0)}
