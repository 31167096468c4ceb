"""Context windows: a prompt that would not fit the routed model is caught before anything is sent or spent."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from conftest import anthropic_config, write_config

from tierflow.core.config import load_config
from tierflow.core.context import check_fits, context_window
from tierflow.core.errors import ContextWindowExceeded, ProviderError
from tierflow.core.routing import route
from tierflow.flows.plans import plan_reading_notes


def deep_route(vault: Path):
    config = load_config(vault)
    return config, route(config, phase="synthesise", complexity="high", overrides={})


def test_known_models_have_a_window_and_the_config_overrides_it(reading_vault: Path, double):
    path = reading_vault / ".tierflow" / "config.toml"
    write_config(path, anthropic_config(double) + path.read_text())
    config, routed = deep_route(reading_vault)
    assert routed.model == "claude-opus-4-6" and context_window(config, routed) == 200_000
    write_config(
        path, path.read_text().replace("max_output_tokens = 4096", "max_output_tokens = 4096\ncontext_window = 8000")
    )
    config, routed = deep_route(reading_vault)
    assert context_window(config, routed) == 8000
    check_fits(config, routed, 8000 - 4096)  # exactly fits
    with pytest.raises(ContextWindowExceeded) as caught:
        check_fits(config, routed, 8000 - 4096 + 1)
    message = str(caught.value)
    assert "8,000-token context window of anthropic:claude-opus-4-6 (tier deep)" in message
    assert (
        "nothing was sent" in message
        and "--tier synthesise=TIER" in message
        and "[tiers.deep] context_window" in message
    )
    assert isinstance(caught.value, ProviderError)  # a phase fails with it; the run reports it


def test_a_model_tierflow_does_not_know_is_not_checked(reading_vault: Path):
    path = reading_vault / ".tierflow" / "config.toml"
    write_config(path, path.read_text() + '\n[tiers.deep]\nmodel = "offline:a-model-nobody-knows"\n')
    config, routed = deep_route(reading_vault)
    assert context_window(config, routed) is None
    check_fits(config, routed, 10**9)


def test_plan_names_the_call_that_would_not_fit(reading_vault: Path, double):
    path = reading_vault / ".tierflow" / "config.toml"
    text = anthropic_config(double).replace(
        "max_output_tokens = 4096", "max_output_tokens = 4096\ncontext_window = 6000"
    )
    write_config(path, text + '\n[vault]\nreading_folders = ["Reading"]\nreading_tags = ["literature"]\n')
    plan = plan_reading_notes(
        load_config(reading_vault), reading_vault, since=date(2026, 11, 16), until=date(2026, 11, 22)
    )
    assert [(phase, subject) for phase, subject, _ in plan.too_long] == [("synthesise", "week")]
    assert "6,000-token context window" in plan.too_long[0][2]
