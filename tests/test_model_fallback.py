"""A model the provider retires or renames (HTTP 404 `model_not_found`): the tier's fallbacks are tried in order,
each recorded and priced as itself; without one the run stops before spending more, naming the tier, the model
and the fix. `tierflow config check` lists the configured models that no longer exist or have no price."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import anthropic_config, write_config
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.core.calls import Caller, RunSettings
from tierflow.core.errors import ModelNotFound
from tierflow.core.usage import Usage, price
from tierflow.testing.double import ProviderDouble, Reply


def two_providers(double: ProviderDouble, deep: str = "", *, model: str = "claude-opus-4-6") -> str:
    """conftest's Anthropic tiers (deep on `model`, then the lines `deep` in [tiers.deep]) and an OpenAI provider."""
    openai_provider = f"""
[providers.openai]
kind = "openai"
base_url = "{double.openai_base_url}"
api_key_env = "OPENAI_API_KEY"
"""
    return anthropic_config(double, deep + openai_provider).replace("claude-opus-4-6", model)


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-anthropic-key")
    monkeypatch.setenv("OPENAI_API_KEY", "test-openai-key")


def make_caller(folder: Path, text: str, run_id: str = "run-1") -> Caller:
    path = write_config(folder / ".tierflow" / "config.toml", text)
    return Caller(RunSettings(vault=str(folder), config_path=str(path), run_id=run_id, flow="test", use_cache=False))


def ask_deep(c: Caller, prompt: str = "Synthesise the week's reading."):
    return c.ask(phase="synthesise", complexity="high", system="Be brief.", prompt=prompt)


FALLING_BACK = """fallbacks = ["anthropic:claude-opus-4-1", "openai:gpt-5"]
[tiers.deep.price]
input = 1000.0
output = 1000.0
"""


def test_a_retired_model_falls_back_in_order_each_attempt_recorded_and_priced_as_itself(tmp_path, double, keys):
    double.responder = lambda r: Reply(text="a synthesis")
    double.retired = {"claude-opus-4-6", "claude-opus-4-1"}
    c = make_caller(tmp_path / "v", two_providers(double, FALLING_BACK))
    answer = ask_deep(c)
    assert answer.route.model_ref == "openai:gpt-5" and answer.route.tier == "deep"
    assert [(q.model, q.status) for q in double.model_calls()] == [
        ("claude-opus-4-6", 404),
        ("claude-opus-4-1", 404),
        ("gpt-5", 200),
    ]
    (row,) = c.ledger.rows()  # the 404s billed nothing; the answer is one row, as what answered it
    assert (row["tier"], row["provider"], row["model"]) == ("deep", "openai", "gpt-5")
    usage = Usage(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"])
    # Priced as gpt-5 by genai-prices: the tier's price override was the retired model's, not the fallback's.
    assert row["cost_usd"] == pytest.approx(float(price(usage, "gpt-5", provider_kind="openai")))
    assert row["cost_usd"] < 0.01
    assert "fallback" in row["route_rule"]

    again = ask_deep(c, "Synthesise another week.")  # the retired models are not asked again
    assert again.route.model_ref == "openai:gpt-5"
    assert [q.status for q in double.model_calls()] == [404, 404, 200, 200]


def test_a_fallback_of_the_same_provider_is_used_when_it_exists(tmp_path, double, keys):
    double.retired = {"claude-opus-4-6"}
    c = make_caller(tmp_path / "v", two_providers(double, FALLING_BACK))
    answer = ask_deep(c)
    assert answer.route.model_ref == "anthropic:claude-opus-4-1"
    (row,) = c.ledger.rows()
    assert (row["provider"], row["model"]) == ("anthropic", "claude-opus-4-1")


def test_a_retired_model_without_a_fallback_stops_naming_the_tier_the_model_and_the_fix(tmp_path, double, keys):
    double.retired = {"claude-opus-4-6"}
    c = make_caller(tmp_path / "v", two_providers(double))
    with pytest.raises(ModelNotFound) as stopped:
        ask_deep(c)
    message = str(stopped.value)
    assert "tier 'deep'" in message and "anthropic:claude-opus-4-6" in message
    assert "[tiers.deep]" in message and "fallbacks" in message and "tierflow config check" in message
    assert c.ledger.rows() == []
    sent = len(double.model_calls())
    with pytest.raises(ModelNotFound):
        ask_deep(c, "Another question.")
    assert len(double.model_calls()) == sent  # nothing more is sent to a model known to be gone
    assert c.ask(phase="collate", complexity="low", system="s", prompt="p").route.tier == "light"  # others go on


def test_ask_on_a_retired_model_prints_the_fix_not_a_traceback(tmp_path, double, keys):
    double.retired = {"claude-opus-4-6"}
    path = write_config(tmp_path / "v" / ".tierflow" / "config.toml", two_providers(double))
    result = CliRunner().invoke(
        app, ["ask", "What is formative assessment?", "--tier", "deep", "--vault", str(path.parents[1])]
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "tier 'deep'" in result.output and "fallbacks" in result.output


def test_fallbacks_must_name_a_configured_provider(tmp_path, double):
    from tierflow.core.config import load_config
    from tierflow.core.errors import ConfigError

    text = two_providers(double, 'fallbacks = ["google:gemini-2.5-pro"]')
    path = write_config(tmp_path / "config.toml", text)
    with pytest.raises(ConfigError, match=r"tiers\.deep\.fallbacks.*google:gemini-2\.5-pro"):
        load_config(None, config_path=path)


def config_check(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    return result.exit_code, result.output


def test_config_check_lists_models_that_no_longer_exist_or_have_no_price(tmp_path, double, keys):
    double.served = {"anthropic": ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-1"], "openai": ["gpt-5"]}
    deep = 'fallbacks = ["anthropic:claude-opus-4-1", "openai:gpt-9-imaginary"]'
    path = write_config(tmp_path / "config.toml", two_providers(double, deep))
    code, output = config_check(path)
    assert code == 1, output
    lines = {line.split(": ", 1)[0]: line for line in output.splitlines() if line.startswith("tiers.")}
    assert "does not serve 'claude-opus-4-6'" in lines["tiers.deep model"]
    assert lines["tiers.deep fallback 1"].endswith(": ok")
    assert "does not serve 'gpt-9-imaginary'" in lines["tiers.deep fallback 2"]
    assert "no price" in lines["tiers.deep fallback 2"]
    assert lines["tiers.light model"].endswith(": ok")
    # Each provider was asked for its models once.
    assert sorted(q.provider for q in double.requests if q.kind == "models") == ["anthropic", "openai"]


def test_config_check_passes_when_every_model_exists_and_is_priced(tmp_path, double, keys):
    double.served = {"anthropic": ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-6"], "openai": []}
    path = write_config(tmp_path / "config.toml", two_providers(double))
    code, output = config_check(path)
    assert code == 0, output
    assert "all 3 configured models exist and have a price" in output
    assert [q.provider for q in double.requests if q.kind == "models"] == ["anthropic"]  # openai names no tier


def test_config_check_names_a_model_without_a_price(tmp_path, double, keys):
    double.served = {"anthropic": ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-house-blend"], "openai": []}
    unpriced = two_providers(double, model="claude-house-blend")
    code, output = config_check(write_config(tmp_path / "config.toml", unpriced))
    assert code == 1 and "no price known" in output and "[tiers.deep.price]" in output
    priced = two_providers(double, "[tiers.deep.price]\ninput = 3.0\noutput = 15.0\n", model="claude-house-blend")
    code, output = config_check(write_config(tmp_path / "priced.toml", priced))
    assert code == 0, output


def test_batch_items_on_a_retired_model_are_answered_by_the_fallback(tmp_path, double, keys):
    from pydantic import BaseModel

    from tierflow.core.batch import BatchCall, run_batch

    class Summary(BaseModel):
        text: str

    double.retired = {"claude-opus-4-6"}
    c = make_caller(tmp_path / "v", two_providers(double, 'fallbacks = ["anthropic:claude-opus-4-1"]\n'))
    calls = [BatchCall(key=f"s{i}", system="Be brief.", prompt=f"Summarise {i}.", output=Summary) for i in range(2)]
    outcome = run_batch(c, calls, phase="synthesise", complexity="high", poll_interval=0.01)
    assert {a.route.model_ref for a in outcome.answers.values()} == {"anthropic:claude-opus-4-1"}
    assert [q.status for q in double.batch_items] == [404, 404]  # the batch's items: the model was gone
    rows = c.ledger.rows()
    assert [(r["model"], r["batch"]) for r in rows] == [("claude-opus-4-1", False)] * 2  # retried alone, once each
    # The next batch goes to the fallback at once.
    run_batch(c, [BatchCall(key="s9", system="Be brief.", prompt="Summarise 9.", output=Summary)], phase="synthesise",
              complexity="high", poll_interval=0.01)  # fmt: skip
    assert double.batch_items[-1].model == "claude-opus-4-1" and double.batch_items[-1].status == 200


def test_config_check_on_the_offline_profile_asks_no_provider(tmp_path):
    result = CliRunner().invoke(app, ["config", "check", "--profile", "offline"])
    assert result.exit_code == 0, result.output
    assert "configured models exist and have a price" in result.output


def test_config_check_warns_of_a_budget_whose_flow_or_phase_no_flow_has(tmp_path):
    """`phase = "colate"` or `flow = "reading-note"` made a budget that never applied, without a word."""
    budgets = (
        '[budgets.typo]\nusd = 1\nphase = "colate"\nflow = "reading-note"\n'
        '[budgets.mine]\nusd = 1\nphase = "triage"\n'
        '[budgets.right]\nusd = 1\nphase = "synthesise"\nflow = "student-feedback"\n'
    )
    path = write_config(tmp_path / "config.toml", budgets)
    result = CliRunner().invoke(app, ["config", "check", "--config", str(path), "--profile", "offline"])
    assert result.exit_code == 0, result.output  # warnings: a phase of the user's own flow is allowed
    warned = [line for line in result.output.splitlines() if line.startswith("budgets.")]
    assert len(warned) == 3, result.output
    assert any("phase 'colate'" in line and "did you mean 'collate'" in line for line in warned)
    assert any("flow 'reading-note'" in line and "did you mean 'reading-notes'" in line for line in warned)
    assert any(line.startswith("budgets.mine: phase 'triage'") for line in warned)
    assert not any("budgets.right" in line for line in warned)
