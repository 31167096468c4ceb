"""Long-context premium pricing: a prompt over the threshold is estimated and recorded at the premium rate.

Claude Sonnet 4.5 with the 1M-token context beta costs 2x input and 1.5x output on a call whose prompt is over
200K tokens (genai-prices models it as a price tier). A tier's own `price` may state such a threshold too.
Calls go through the real Anthropic SDK to the wire double, which reports the usage given here.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from conftest import anthropic_config, write_config

from tierflow.core.budget import estimate
from tierflow.core.calls import Caller, RunSettings
from tierflow.core.config import load_config
from tierflow.core.errors import ConfigError
from tierflow.core.routing import route
from tierflow.testing.double import ProviderDouble, Reply

pytestmark = pytest.mark.filterwarnings("ignore:The model 'claude-sonnet-4-5' is deprecated:DeprecationWarning")

M = Decimal(1_000_000)
LIGHT = 'model = "anthropic:claude-haiku-4-5"\nmax_output_tokens = 1024'
SONNET_45_1M = 'model = "anthropic:claude-sonnet-4-5"\nmax_output_tokens = 1024\ncontext_window = 1000000'
OWN_PRICE = """
[tiers.light.price]
input = 1.25
output = 10
cache_read = 0.125
premium_above = 200000
premium_input = 2.5
premium_output = 15
"""
"""A Gemini 2.5 Pro-like tiered price, stated in the config."""


def usage(prompt: int, output: int, *, cache_read: int = 0) -> dict:
    return {
        "input_tokens": prompt - cache_read,
        "output_tokens": output,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cache_read,
        "service_tier": "standard",
    }


def vault_with(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    vault = tmp_path / "vault"
    vault.mkdir()
    write_config(vault / ".tierflow" / "config.toml", text)
    return vault


def recorded_cost(vault: Path, double: ProviderDouble, prompt_tokens: int, output: int, **kw: int) -> Decimal:
    """Ask once on the light tier; the double reports `prompt_tokens`; returns the ledger row's cost."""
    double.responder = lambda _: Reply(text="ok", usage=usage(prompt_tokens, output, **kw))
    run = f"r{prompt_tokens}-{output}-{kw}"
    caller = Caller(RunSettings(vault=str(vault), run_id=run, flow="test"))
    caller.ask(phase="collate", complexity="low", system="Be terse.", prompt=f"A prompt: {run}")
    (row,) = caller.ledger.rows(run_id=run)
    return Decimal(str(row["cost_usd"]))


def estimated(vault: Path, prompt_tokens: int) -> Decimal:
    config = load_config(vault)
    routed = route(config, phase="collate", complexity="low", overrides={})
    usd = estimate(config, routed, prompt_tokens).usd
    assert usd is not None
    return usd


def test_genai_prices_tiers_price_a_long_prompt_at_the_premium_and_a_short_one_not(tmp_path, monkeypatch, double):
    vault = vault_with(tmp_path, anthropic_config(double).replace(LIGHT, SONNET_45_1M), monkeypatch)

    # Under 200K prompt tokens: $3 in, $15 out per million. Over: $6 and $22.50, on every token.
    assert estimated(vault, 150_000) == pytest.approx((150_000 * 3 + 1024 * 15) / M)
    assert estimated(vault, 250_000) == pytest.approx((250_000 * 6 + Decimal(1024) * Decimal("22.5")) / M)
    assert estimated(vault, 200_000) == pytest.approx((200_000 * 3 + 1024 * 15) / M)  # the premium starts above

    assert recorded_cost(vault, double, 150_000, 500) == pytest.approx((150_000 * 3 + 500 * 15) / M)
    premium = (250_000 * 6 + 500 * Decimal("22.5")) / M
    assert recorded_cost(vault, double, 250_000, 500) == pytest.approx(premium)
    # Cache reads count towards the threshold, and are priced at their own premium rate ($0.60).
    cached = (50_000 * 6 + 200_000 * Decimal("0.6") + 500 * Decimal("22.5")) / M
    assert recorded_cost(vault, double, 250_000, 500, cache_read=200_000) == pytest.approx(cached)


def test_a_tier_price_with_a_threshold_prices_a_long_prompt_at_its_premium(tmp_path, monkeypatch, double):
    vault = vault_with(tmp_path, anthropic_config(double, OWN_PRICE), monkeypatch)

    assert estimated(vault, 100_000) == pytest.approx((100_000 * Decimal("1.25") + 1024 * 10) / M)
    assert estimated(vault, 300_000) == pytest.approx((300_000 * Decimal("2.5") + 1024 * 15) / M)

    assert recorded_cost(vault, double, 100_000, 800) == pytest.approx((100_000 * Decimal("1.25") + 800 * 10) / M)
    assert recorded_cost(vault, double, 300_000, 800) == pytest.approx((300_000 * Decimal("2.5") + 800 * 15) / M)
    # The cache-read rate scales with the input rate: $0.125 -> $0.25.
    cached = (100_000 * Decimal("2.5") + 200_000 * Decimal("0.25") + 800 * 15) / M
    assert recorded_cost(vault, double, 300_000, 800, cache_read=200_000) == pytest.approx(cached)


def test_a_premium_without_its_threshold_or_rates_is_a_config_error(tmp_path, monkeypatch, double):
    half = OWN_PRICE.replace("premium_output = 15\n", "")
    vault = vault_with(tmp_path, anthropic_config(double, half), monkeypatch)
    with pytest.raises(ConfigError) as caught:
        load_config(vault)
    assert "premium_above needs both premium_input and premium_output" in str(caught.value)
    assert "tiers" in str(caught.value) and "light" in str(caught.value)
