"""The real anthropic and openai SDK clients against local wire-level doubles: usage, cost, errors, retries."""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import anthropic_config, openai_config, write_config
from pydantic import BaseModel

from tierflow.core.calls import Caller, RunSettings
from tierflow.core.errors import (
    MalformedResponse,
    ModelNotFound,
    ProviderAuthError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from tierflow.core.usage import TOKEN_KINDS
from tierflow.testing.double import NO_USAGE, ProviderDouble, Reply

M = Decimal(1_000_000)
# Published list prices, USD per million tokens, applied by hand below.
HAIKU = {
    "input": Decimal(1),
    "output": Decimal(5),
    "cache_read": Decimal("0.1"),
    "cache_write_5m": Decimal("1.25"),
}
HAIKU_1H_WRITE = Decimal(2)
GPT5_NANO = {"input": Decimal("0.05"), "output": Decimal("0.4"), "cache_read": Decimal("0.005")}


def caller(tmp_path: Path, config_text: str, monkeypatch: pytest.MonkeyPatch, **settings) -> Caller:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-anthropic-key")
    monkeypatch.setenv("OPENAI_API_KEY", "test-openai-key")
    vault = tmp_path / "vault"
    vault.mkdir(exist_ok=True)
    path = write_config(vault / ".tierflow" / "config.toml", config_text)
    return Caller(RunSettings(vault=str(vault), config_path=str(path), run_id="run-1", flow="test", **settings))


def only_row(c: Caller) -> dict:
    rows = c.ledger.rows()
    assert len(rows) == 1, rows
    return rows[0]


def ask(c: Caller, prompt: str = "What is formative assessment?", **kw):
    return c.ask(phase="collate", complexity="low", system="You are terse.", prompt=prompt, **kw)


def worst_usd(c: Caller, prompt: str = "What is formative assessment?") -> float:
    """The worst-case USD of `ask(c, prompt)`: what a budget charges for it while its usage is unknown."""
    routed, request = c.build(phase="collate", complexity="low", system="You are terse.", prompt=prompt)
    return float(c.estimate(routed, request).usd)


def test_anthropic_plain_usage_and_cost(tmp_path, monkeypatch, double):
    double.responder = lambda r: Reply(text="Assessment for learning.", usage=_anthropic_usage(120, 7))
    c = caller(tmp_path, anthropic_config(double), monkeypatch)
    answer = ask(c)
    assert answer.text == "Assessment for learning."
    row = only_row(c)
    assert (
        row["input_tokens"],
        row["output_tokens"],
        row["cache_read_tokens"],
        row["cache_write_tokens"],
    ) == (
        120,
        7,
        0,
        0,
    )
    assert row["model"] == "claude-haiku-4-5" and row["provider"] == "anthropic" and row["tier"] == "light"
    expected = (120 * HAIKU["input"] + 7 * HAIKU["output"]) / M
    assert Decimal(str(row["cost_usd"])) == pytest.approx(expected, abs=Decimal("1e-12"))
    (sent,) = double.model_calls()
    assert sent.json["model"] == "claude-haiku-4-5"
    assert sent.api_key == "test-anthropic-key"


def test_anthropic_cache_write_then_read_mapped_and_priced(tmp_path, monkeypatch, double):
    c = caller(tmp_path, anthropic_config(double), monkeypatch)
    # Past Haiku 4.5's minimum cacheable prefix (4,096 tokens): a shorter one is sent without cache_control.
    prefix = "Rubric and instructions shared by every call. " * 500
    ask(c, "first", cache_prefix=prefix)
    ask(c, "second", cache_prefix=prefix)
    first, second = c.ledger.rows()
    assert first["cache_write_tokens"] > 500 and first["cache_read_tokens"] == 0
    assert second["cache_read_tokens"] == first["cache_write_tokens"] and second["cache_write_tokens"] == 0
    # The double's usage blocks are the ground truth: tierflow must map them exactly, no token twice.
    wire = [r.response["usage"] for r in double.model_calls()]
    for row, usage in zip((first, second), wire, strict=True):
        assert row["input_tokens"] == usage["input_tokens"]
        assert row["cache_write_tokens"] == usage["cache_creation_input_tokens"]
        assert row["cache_read_tokens"] == usage["cache_read_input_tokens"]
        assert row["output_tokens"] == usage["output_tokens"]
        expected = (
            usage["input_tokens"] * HAIKU["input"]
            + usage["cache_creation_input_tokens"] * HAIKU["cache_write_5m"]
            + usage["cache_read_input_tokens"] * HAIKU["cache_read"]
            + usage["output_tokens"] * HAIKU["output"]
        ) / M
        assert Decimal(str(row["cost_usd"])) == pytest.approx(expected, abs=Decimal("1e-12"))


def test_anthropic_one_hour_cache_write_priced_at_its_rate(tmp_path, monkeypatch, double):
    usage = _anthropic_usage(50, 10, cache_write=2000)
    usage["cache_creation"] = {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 1500}
    double.responder = lambda r: Reply(text="ok", usage=usage)
    c = caller(tmp_path, anthropic_config(double), monkeypatch)
    ask(c)
    row = only_row(c)
    assert (row["cache_write_tokens"], row["cache_write_1h_tokens"]) == (2000, 1500)
    expected = (50 * HAIKU["input"] + 500 * HAIKU["cache_write_5m"] + 1500 * HAIKU_1H_WRITE + 10 * HAIKU["output"]) / M
    assert Decimal(str(row["cost_usd"])) == pytest.approx(expected, abs=Decimal("1e-12"))


def test_anthropic_thinking_tokens_are_reasoning_not_output(tmp_path, monkeypatch, double):
    usage = _anthropic_usage(40, 300)
    usage["output_tokens_details"] = {"thinking_tokens": 250}
    double.responder = lambda r: Reply(text="ok", usage=usage)
    c = caller(tmp_path, anthropic_config(double), monkeypatch)
    ask(c)
    row = only_row(c)
    assert (row["output_tokens"], row["reasoning_tokens"]) == (50, 250)
    expected = (40 * HAIKU["input"] + 300 * HAIKU["output"]) / M  # thinking is billed as output
    assert Decimal(str(row["cost_usd"])) == pytest.approx(expected, abs=Decimal("1e-12"))


def test_openai_cached_and_reasoning_tokens_are_disjoint(tmp_path, monkeypatch, double):
    usage = {
        "prompt_tokens": 3000,
        "completion_tokens": 500,
        "total_tokens": 3500,
        "prompt_tokens_details": {"cached_tokens": 2048, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 320, "audio_tokens": 0},
    }
    double.responder = lambda r: Reply(text="fine", usage=usage)
    c = caller(tmp_path, openai_config(double), monkeypatch)
    ask(c)
    row = only_row(c)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (
        952,
        2048,
        180,
        320,
    )
    total = row["input_tokens"] + row["cache_read_tokens"] + row["output_tokens"] + row["reasoning_tokens"]
    assert total == usage["total_tokens"]
    expected = (952 * GPT5_NANO["input"] + 2048 * GPT5_NANO["cache_read"] + 500 * GPT5_NANO["output"]) / M
    assert Decimal(str(row["cost_usd"])) == pytest.approx(expected, abs=Decimal("1e-12"))
    (sent,) = double.model_calls()
    assert sent.json["model"] == "gpt-5-nano" and sent.api_key == "test-openai-key"


def test_openai_prefix_cache_reported_by_the_double_is_recorded(tmp_path, monkeypatch, double):
    c = caller(tmp_path, openai_config(double), monkeypatch)
    prefix = "Shared rubric text for every submission. " * 200
    ask(c, "one", cache_prefix=prefix)
    ask(c, "two", cache_prefix=prefix)
    first, second = c.ledger.rows()
    assert first["cache_read_tokens"] == 0 and second["cache_read_tokens"] >= 1024
    assert second["cache_read_tokens"] % 128 == 0


def test_missing_usage_block_is_unknown_not_zero(tmp_path, monkeypatch, double, caplog):
    double.responder = lambda r: Reply(text="local answer", usage=NO_USAGE)
    c = caller(tmp_path, openai_config(double, kind="openai-compatible"), monkeypatch)
    with caplog.at_level(logging.WARNING, logger="tierflow"):
        answer = ask(c)
    assert answer.text == "local answer"
    row = only_row(c)
    assert row["usage_known"] is False or row["usage_known"] == 0
    assert row["cost_usd"] is None
    assert "no usable usage block" in caplog.text


HALT_BUDGET = '[budgets.daily]\nusd = 0.10\nperiod = "day"\npolicy = "halt"\n'
OA = {"prompt_tokens": 10, "completion_tokens": 40}
AN = {"input_tokens": 20, "output_tokens": 50}


@pytest.mark.parametrize(
    ("provider", "usage", "field"),
    [
        (
            "openai",
            {**OA, "prompt_tokens_details": {"cached_tokens": 2_000_000}},
            "prompt_tokens_details.cached_tokens",
        ),
        ("openai", {**OA, "completion_tokens_details": {"reasoning_tokens": 41}}, "reasoning_tokens"),
        ("openai", {**OA, "prompt_tokens": -5}, "prompt_tokens"),
        ("openai", {**OA, "prompt_tokens": 10.5}, "prompt_tokens"),
        ("openai", {**OA, "prompt_tokens": None, "total_tokens": None}, "prompt_tokens"),
        ("openai", {**OA, "completion_tokens": None}, "completion_tokens"),
        ("openai", {"completion_tokens": 40}, "prompt_tokens"),
        ("anthropic", {**AN, "input_tokens": None}, "input_tokens"),
        ("anthropic", {**AN, "output_tokens": None}, "output_tokens"),
        ("anthropic", {**AN, "input_tokens": -1}, "input_tokens"),
        ("anthropic", {**AN, "output_tokens": 50.5}, "output_tokens"),
        ("anthropic", {**AN, "cache_read_input_tokens": -7}, "cache_read_input_tokens"),
        ("anthropic", {**AN, "output_tokens_details": {"thinking_tokens": 60}}, "thinking_tokens"),
        (
            "anthropic",
            {**AN, "cache_creation_input_tokens": 100, "cache_creation": {"ephemeral_1h_input_tokens": 150}},
            "cache_creation.ephemeral_1h_input_tokens",
        ),
    ],
)
def test_impossible_or_missing_usage_counts_are_unknown_usage_never_zero_or_a_credit(
    tmp_path, monkeypatch, double, caplog, provider, usage, field
):
    """A required count (input, output) that is missing or null, a count that is not a non-negative integer, or
    one that makes another negative (more cached tokens than prompt tokens) cannot be priced: the call is
    recorded as unknown usage, with a warning naming the provider and the field, and its budget stays charged at
    its worst case. Read as written, the first would cost less than nothing and credit the budget."""
    double.responder = lambda r: Reply(text="ok", usage=usage)
    config = anthropic_config if provider == "anthropic" else openai_config
    c = caller(tmp_path, config(double, HALT_BUDGET), monkeypatch)
    worst = worst_usd(c)
    with caplog.at_level(logging.WARNING, logger="tierflow"):
        ask(c)
    row = only_row(c)
    assert not row["usage_known"] and row["cost_usd"] is None
    assert all(row[kind] == 0 for kind in TOKEN_KINDS)
    assert f"{provider}: unusable usage block" in caplog.text and field in caplog.text
    (state,) = c.budgets.states()
    assert state.spent_usd == pytest.approx(worst) and state.reserved_usd == 0


@pytest.mark.parametrize(
    ("provider", "usage"),
    [
        ("openai", {**OA, "prompt_tokens_details": {"cached_tokens": None}, "completion_tokens_details": None}),
        (
            "anthropic",
            {**AN, "cache_read_input_tokens": None, "cache_creation_input_tokens": None, "cache_creation": None},
        ),
    ],
)
def test_null_optional_counts_are_zero_and_the_usage_stays_known(
    tmp_path, monkeypatch, double, caplog, provider, usage
):
    double.responder = lambda r: Reply(text="ok", usage=usage)
    config = anthropic_config if provider == "anthropic" else openai_config
    c = caller(tmp_path, config(double), monkeypatch)
    with caplog.at_level(logging.WARNING, logger="tierflow"):
        ask(c)
    row = only_row(c)
    wire = tuple(usage.values())[:2]
    assert row["usage_known"] and (row["input_tokens"], row["output_tokens"]) == wire and row["cost_usd"] > 0
    assert sum(row[kind] for kind in TOKEN_KINDS) == sum(wire)
    assert "unusable usage" not in caplog.text


def test_unknown_model_price_is_null_with_a_warning(tmp_path, monkeypatch, double, caplog):
    text = anthropic_config(double).replace("claude-haiku-4-5", "claude-unreleased-9")
    c = caller(tmp_path, text, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="tierflow"):
        ask(c)
    row = only_row(c)
    assert row["cost_usd"] is None and row["input_tokens"] > 0
    assert "no price known for anthropic:claude-unreleased-9" in caplog.text
    assert "[tiers.light.price]" in caplog.text


def test_price_override_wins_for_local_models(tmp_path, monkeypatch, double):
    extra = "[tiers.light.price]\ninput = 2.0\noutput = 4.0\n"
    text = openai_config(double, kind="openai-compatible").replace("[tiers.light]\nmodel", "[tiers.light]\nmodel", 1)
    text = text.replace("[tiers.standard]", extra + "[tiers.standard]")
    double.responder = lambda r: Reply(
        text="x", usage={"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
    )
    c = caller(tmp_path, text, monkeypatch)
    ask(c)
    assert only_row(c)["cost_usd"] == pytest.approx((1000 * 2 + 100 * 4) / 1e6)


def test_local_model_costs_zero_unless_priced(tmp_path, monkeypatch, double):
    c = caller(tmp_path, openai_config(double, kind="openai-compatible"), monkeypatch)
    ask(c)
    assert only_row(c)["cost_usd"] == 0.0


def test_429_then_success_is_retried_by_the_sdk_and_billed_once(tmp_path, monkeypatch, double):
    double.fail_next(429, times=1)
    c = caller(tmp_path, anthropic_config(double), monkeypatch)
    ask(c)
    assert [r.status for r in double.model_calls()] == [429, 200]
    assert len(c.ledger.rows()) == 1


def test_429_beyond_retries_names_provider_and_cause(tmp_path, monkeypatch, double):
    double.fail_next(429, times=5)
    c = caller(tmp_path, openai_config(double), monkeypatch)
    with pytest.raises(ProviderRateLimited, match=r"openai:gpt-5-nano: rate limited \(HTTP 429"):
        ask(c)
    assert c.ledger.rows() == []


def test_500_and_529_after_retries_are_unavailable_errors(tmp_path, monkeypatch, double):
    c = caller(tmp_path, anthropic_config(double), monkeypatch)
    double.fail_next(529, times=3)
    with pytest.raises(ProviderUnavailable, match="anthropic:claude-haiku-4-5: overloaded"):
        ask(c)
    double.fail_next(500, times=3)
    with pytest.raises(ProviderUnavailable, match=r"server error \(HTTP 500"):
        ask(c, "another")
    assert c.ledger.rows() == []


def test_401_names_provider_and_env_var(tmp_path, monkeypatch, double):
    double.fail_next(401, times=1)
    c = caller(tmp_path, anthropic_config(double), monkeypatch)
    with pytest.raises(ProviderAuthError) as err:
        ask(c)
    assert "anthropic:claude-haiku-4-5" in str(err.value) and "ANTHROPIC_API_KEY" in str(err.value)
    assert "test-anthropic-key" not in str(err.value)
    assert len(double.model_calls()) == 1  # auth errors are not retried


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_404_for_the_model_is_model_not_found_and_other_404s_are_not(tmp_path, monkeypatch, double, provider):
    config = anthropic_config(double) if provider == "anthropic" else openai_config(double)
    c = caller(tmp_path, config, monkeypatch)
    routed = c.route("collate", "low")
    adapter = c.provider(routed.provider)
    double.retired = {routed.model}
    with pytest.raises(ModelNotFound) as gone:
        ask(c)
    assert f"{routed.provider}:{routed.model}" in str(gone.value) and "404" in str(gone.value)
    assert isinstance(adapter.translate(_sdk_not_found(provider, routed.model), routed.model), ModelNotFound)
    other = adapter.translate(_sdk_not_found(provider, None), routed.model)
    assert not isinstance(other, ModelNotFound)


def _sdk_not_found(provider: str, model: str | None):
    """The SDK's exception for a 404, with the real body for a missing model, or a batch's 404 body."""
    import httpx

    if provider == "anthropic":
        import anthropic

        message = f"model: {model}" if model else "No batch found with id msgbatch_x"
        body = {"type": "error", "error": {"type": "not_found_error", "message": message}}
        response = httpx.Response(404, json=body, request=httpx.Request("POST", "https://api.anthropic.com/v1/x"))
        return anthropic.NotFoundError(message, response=response, body=body)
    import openai

    message = f"The model `{model}` does not exist or you do not have access to it." if model else "No batch found"
    code = "model_not_found" if model else None
    body = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    response = httpx.Response(404, json={"error": body}, request=httpx.Request("POST", "https://api.openai.com/v1/x"))
    return openai.NotFoundError(message, response=response, body=body)


def test_missing_key_says_which_variable_to_set(tmp_path, monkeypatch, double):
    c = caller(tmp_path, openai_config(double), monkeypatch)
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ProviderAuthError, match="environment variable OPENAI_API_KEY is not set"):
        ask(c)
    assert double.model_calls() == []


def test_timeout_is_a_clear_error(tmp_path, monkeypatch):
    import socket

    # A listener that accepts and never answers.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    text = f"""
profile = "local"
[providers.local]
kind = "openai-compatible"
base_url = "http://127.0.0.1:{port}/v1"
timeout_s = 0.3
max_retries = 0
"""
    c = caller(tmp_path, text, monkeypatch)
    with pytest.raises(ProviderUnavailable, match=r"local:llama3.2:3b: timed out after 0.3 s"):
        ask(c)
    server.close()


@pytest.mark.parametrize("config", [anthropic_config, openai_config], ids=["anthropic", "openai"])
def test_an_answer_cut_off_mid_body_is_billed_as_lost_at_its_worst_case(tmp_path, monkeypatch, double, config):
    """Each attempt is answered 200 and billed, and the connection closes halfway through the body (the SDK
    retries twice). No answer arrived whole, so each attempt is a `lost` row charged at the call's worst case,
    and the error says the answer was cut off, not that the provider could not be reached."""
    double.responder = lambda r: Reply(text="never read whole", fault="cut")
    budgets = '[budgets.daily]\nusd = 1\nperiod = "day"\n[budgets.tokens]\ntokens = 1000000\nperiod = "day"\n'
    c = caller(tmp_path, config(double, budgets), monkeypatch)
    worst = worst_usd(c, "Define cut.")
    routed, request = c.build(phase="collate", complexity="low", system="You are terse.", prompt="Define cut.")
    worst_tokens = c.estimate(routed, request).tokens
    with pytest.raises(ProviderUnavailable, match="the answer was cut off mid-transfer") as error:
        ask(c, "Define cut.")
    assert "cannot connect" not in str(error.value)
    sent = double.model_calls()
    assert len(sent) == 3 and all(s.status == 200 and s.response["usage"] and not s.delivered for s in sent)
    rows = c.ledger.rows()
    assert [r["outcome"] for r in rows] == ["lost"] * 3
    assert all(not r["usage_known"] and r["cost_usd"] == pytest.approx(worst) for r in rows)
    daily, tokens = c.budgets.states()
    assert daily.spent_usd == pytest.approx(3 * worst) and daily.reserved_usd == 0
    # A token budget counts each lost attempt at its worst-case tokens too (it counted none: a token cap overshot).
    assert tokens.spent_tokens == 3 * worst_tokens and tokens.reserved_tokens == 0


class Verdict(BaseModel):
    label: str
    score: int


def test_structured_output_via_anthropic_tool_use(tmp_path, monkeypatch, double):
    double.responder = lambda r: Reply(data={"label": "formative", "score": 4})
    c = caller(tmp_path, anthropic_config(double), monkeypatch)
    answer = ask(c, output=Verdict)
    assert answer.parsed == Verdict(label="formative", score=4)
    (sent,) = double.model_calls()
    assert sent.json["tool_choice"] == {"type": "tool", "name": "verdict"}


def test_structured_output_via_openai_json_schema(tmp_path, monkeypatch, double):
    double.responder = lambda r: Reply(data={"label": "summative", "score": 2})
    c = caller(tmp_path, openai_config(double), monkeypatch)
    assert ask(c, output=Verdict).parsed == Verdict(label="summative", score=2)
    (sent,) = double.model_calls()
    assert sent.json["response_format"]["type"] == "json_schema"


def test_malformed_structure_is_retried_once_then_fails_clearly(tmp_path, monkeypatch, double):
    double.responder = lambda r: Reply(data={"label": "x"})
    c = caller(tmp_path, anthropic_config(double, "[routing]\nescalate = false\n"), monkeypatch)
    with pytest.raises(MalformedResponse, match="no usable verdict on any attempt"):
        ask(c, output=Verdict)
    assert len(double.model_calls()) == 2
    assert len(c.ledger.rows()) == 2  # both attempts really spent tokens, and both are recorded


def test_unchanged_call_is_served_from_the_cache_without_spending(tmp_path, monkeypatch, double):
    c = caller(tmp_path, anthropic_config(double), monkeypatch)
    ask(c)
    again = ask(c)
    assert again.cached and len(double.model_calls()) == 1
    first, second = c.ledger.rows()
    assert second["cached_result"] and second["input_tokens"] == 0 and second["cost_usd"] == 0.0


def _anthropic_usage(inp: int, out: int, *, cache_write: int = 0, cache_read: int = 0) -> dict:
    return {
        "input_tokens": inp,
        "output_tokens": out,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": cache_write, "ephemeral_1h_input_tokens": 0},
        "service_tier": "standard",
    }


def test_double_records_its_usage_for_assertions(double: ProviderDouble):
    assert double.url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("body", [b"", b"null", b"{}"], ids=["empty", "null", "object"])
@pytest.mark.parametrize("config", [anthropic_config, openai_config], ids=["anthropic", "openai"])
def test_a_200_whose_body_is_no_answer_is_billed_at_its_worst_case_and_retried_never_a_traceback(
    tmp_path, monkeypatch, double, config, body
):
    """A broken gateway answers 200 with an empty body, `null` or `{}`: the SDK cannot read it, but the request
    was processed and may be billed. Each such reply is a row of unknown usage at the worst case, the closed loop
    retries it, and the call ends in the call path's own error, not the SDK's JSON or shape error."""
    from tierflow.core.errors import TierflowError

    double.responder = lambda r: Reply(body=body)
    c = caller(tmp_path, config(double, '[budgets.daily]\nusd = 1\nperiod = "day"\n'), monkeypatch)
    worst = worst_usd(c, "Define empty.")
    with pytest.raises(TierflowError) as error:
        ask(c, "Define empty.")
    assert "could not be read" in str(error.value) or "no choices" in str(error.value), error.value
    sent = double.model_calls()
    rows = c.ledger.rows()
    assert len(rows) == len(sent) >= 2  # every reply recorded, and at least one retry
    # Unknown, never $0: each row's cost is unknown and its reservation stays charged at the worst case.
    assert all(not r["usage_known"] and r["cost_usd"] is None for r in rows)
    (state,) = c.budgets.states()
    assert state.reserved_usd == 0 and state.spent_usd >= worst
