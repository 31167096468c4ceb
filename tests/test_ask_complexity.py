"""`tierflow ask` without --complexity or --tier: a cheap, documented classifier decides, and the ledger says why."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import anthropic_config, write_config
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.core.ledger import Ledger
from tierflow.learn.complexity import LONG_TOKENS, MIN_TAGGED, by_rules, task_verbs
from tierflow.testing.double import ProviderDouble, Reply


@pytest.fixture
def vault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, double: ProviderDouble) -> Path:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-anthropic-key")
    double.responder = lambda request: Reply(text="An answer.")
    folder = tmp_path / "vault"
    write_config(folder / ".tierflow" / "config.toml", anthropic_config(double))
    return folder


def ask(vault: Path, prompt: str, *args: str) -> dict:
    result = CliRunner().invoke(app, ["ask", "--vault", str(vault), *args, prompt], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return Ledger.for_vault(vault).rows()[-1]


@pytest.mark.parametrize(
    ("prompt", "complexity", "tier", "why"),
    [
        ("List the authors cited in this paragraph.", "low", "light", "task verb 'list'"),
        ("What is formative assessment?", "low", "light", "a short request with no task verb"),
        ("Summarise Sadler's argument about feedback in two sentences.", "medium", "standard", "'summarise'"),
        ("Compare and critique Sadler (1989) and Hattie (2007) on feedback.", "high", "deep", "'compare'"),
        ("Extract every date: " + "The seminar met on a Tuesday. " * 250, "medium", "standard", "but "),
    ],
)
def test_an_untagged_ask_is_classified_and_the_ledger_says_why(vault, double, prompt, complexity, tier, why):
    row = ask(vault, prompt)
    assert (row["complexity"], row["tier"]) == (complexity, tier)
    assert row["route_rule"].startswith(f"classified {complexity} (") and why in row["route_rule"]
    assert row["route_rule"].endswith(f"routing.{complexity} (profile:anthropic)")  # then the routing table's rule
    (sent,) = double.model_calls()
    assert sent.model == {"light": "claude-haiku-4-5", "standard": "claude-sonnet-4-6", "deep": "claude-opus-4-6"}[tier]


def test_the_rules_weigh_length_and_the_most_demanding_verb():
    assert task_verbs("I compared the notes, then listed and summarised them") == ["compare", "list", "summarise"]
    assert by_rules("List, then evaluate, the claims.").complexity == "high"
    assert by_rules("Provide the improvisation.").complexity == "low"  # no verb hides inside another word
    assert by_rules("Define: " + "feedback " * LONG_TOKENS).complexity == "medium"
    assert by_rules("Define: " + "feedback " * 4 * LONG_TOKENS).complexity == "high"


def test_a_tagged_ask_keeps_its_complexity_and_is_not_classified(vault):
    row = ask(vault, "List the authors cited here.", "--complexity", "high")
    assert (row["complexity"], row["tier"]) == ("high", "deep") and not row["route_rule"].startswith("classified")
    pinned = ask(vault, "Compare these two essays.", "--tier", "light")
    assert (
        pinned["tier"] == "light"
        and pinned["route_rule"] == "classified high (task verb 'compare', 5 tokens); override"
    )


def test_once_enough_asks_are_tagged_the_persons_own_tags_decide(vault):
    prompt = "Compare the two definitions of feedback literacy."
    for n in range(MIN_TAGGED - 1):
        ask(vault, f"Compare source {n} with source {n + 1}.", "--complexity", "medium")
    assert ask(vault, prompt)["complexity"] == "high"  # too few tagged 'compare' asks yet: the rules decide
    ask(vault, "Compare both drafts.", "--complexity", "medium")
    ask(vault, "List the drafts.", "--complexity", "high")  # another verb's tags do not count
    row = ask(vault, prompt)
    assert (row["complexity"], row["tier"]) == ("medium", "standard")
    assert row["route_rule"].startswith(f"classified medium ({MIN_TAGGED} of your {MIN_TAGGED} tagged 'compare' asks")
