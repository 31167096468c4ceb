"""The per-request router's evidence belongs to the model that answered, not to the tier's name: a tier repointed
at another model in the config is judged by that model's record alone. Through the real OpenAI and Anthropic SDKs
on the wire double, with a real SQLite ledger and the real `tierflow routing fit`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import anthropic_config, write_config
from test_request_router import CHECK, Out, _app, easy, hard
from typer.testing import CliRunner

from tierflow.core.calls import Caller, RunSettings
from tierflow.learn import request_router
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply

SMALL_LOCAL = "local:small-model"
HAIKU = "anthropic:claude-haiku-4-5"


@pytest.fixture(autouse=True)
def _fresh_router():
    request_router.forget()
    yield
    request_router.forget()


def small_model_fails_hard(r: DoubleRequest) -> Reply:
    """The small local model cannot ground the dense annotations; every other model can."""
    return Reply(data={"ok": not (r.model == "small-model" and "Annotation" in r.text)})


def config_text(double: ProviderDouble, light: str, routing: str) -> str:
    """`anthropic_config` with light on `light`, and a local OpenAI-compatible server on the double."""
    local = f'[providers.local]\nkind = "openai-compatible"\nbase_url = "{double.openai_base_url}"\nmax_retries = 2\n'
    text = anthropic_config(double, local + routing)
    return text.replace(f'model = "{HAIKU}"', f'model = "{light}"', 1)


def run(vault: Path, double: ProviderDouble, light: str, routing: str, run_id: str) -> Caller:
    path = write_config(vault / ".tierflow" / "config.toml", config_text(double, light, routing))
    return Caller(RunSettings(vault=str(vault), config_path=str(path), run_id=run_id, flow="reading-notes"))


def ask(c: Caller, prompt: str):
    return c.ask(phase="collate", complexity="low", system="Collate.", prompt=prompt, output=Out, checks=[CHECK])


RULES = '[routing]\nmode = "rules"\n'
REQUEST = '[routing]\nmode = "request"\nmin_requests = 20\nmin_evidence = 1000\n'


def fit(vault: Path) -> dict:
    fitted = CliRunner().invoke(_app(), ["routing", "fit", "--vault", str(vault), "--format", "json"])
    assert fitted.exit_code == 0, fitted.output
    request_router.forget()
    return json.loads(fitted.stdout)


def test_a_tier_repointed_at_another_model_is_judged_by_that_models_record_alone(tmp_path, monkeypatch, double):
    """Light was a small local model that failed every dense annotation; the person repoints light at
    claude-haiku. The router keyed its evidence by the tier's name, so the small model's failures kept sending
    every dense annotation past haiku to standard (`request: P(standard)=...`), and went on doing so after haiku
    had answered (and passed) eighty requests, until new answers outweighed the old ones."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = small_model_fails_hard
    vault = tmp_path / "vault"
    vault.mkdir()
    history = run(vault, double, SMALL_LOCAL, RULES, "history")
    for i in range(40):
        ask(history, easy(i))
        ask(history, hard(i))
    learned = fit(vault)
    assert learned["models"][SMALL_LOCAL]["first_answers"] == 80 and learned["models"][SMALL_LOCAL]["tiers"] == [
        "light"
    ]
    assert learned["tiers"]["light"] == {"model": SMALL_LOCAL, **{k: learned["models"][SMALL_LOCAL][k] for k in (
        "first_answers", "pass_rate", "calibrated")}}  # fmt: skip

    # Before the change the router sends the dense annotations past the small model.
    before = run(vault, double, SMALL_LOCAL, REQUEST, "before")
    assert before.route("collate", "low", prompt=hard(500)).tier == "standard"
    assert before.route("collate", "low", prompt=easy(500)).tier == "light"

    # Light is repointed at haiku: nothing the router knows is about haiku, so it cannot judge light, and does not
    # pass over it; the rules route (collate is `low` -> light), and the rule says why.
    after = run(vault, double, HAIKU, REQUEST, "after")
    for prompt in (hard(501), easy(501)):
        routed = after.route("collate", "low", prompt=prompt)
        assert routed.tier == "light" and routed.model == "claude-haiku-4-5"
        assert routed.rule.startswith(
            f"request: light is {HAIKU}, with 0 first answers for reading-notes/collate (fewer than 20)"
        ), routed.rule
        assert "; rules; routing.low (" in routed.rule and "P(" not in routed.rule

    # Haiku answers (and passes) under the rules; refitted, the router judges light by haiku's record alone.
    for i in range(40, 80):
        ask(after, easy(i))
        ask(after, hard(i))
    learned = fit(vault)
    assert learned["tiers"]["light"]["model"] == HAIKU and learned["tiers"]["light"]["first_answers"] == 80
    assert learned["models"][SMALL_LOCAL]["tiers"] == []  # still known, as the model no tier is on
    table = CliRunner().invoke(_app(), ["routing", "fit", "--vault", str(vault)])
    assert table.exit_code == 0, table.output
    assert f"  light ({HAIKU}): 80 first answers, pass 1.00" in table.stdout
    assert f"  {SMALL_LOCAL} (on no tier now): 80 first answers, pass 0.50" in table.stdout
    assert f"  reading-notes/collate · {HAIKU} (light): 80 first answers" in table.stdout
    later = run(vault, double, HAIKU, REQUEST, "later")
    routed = later.route("collate", "low", prompt=hard(502))
    assert routed.tier == "light" and routed.rule.startswith("request: P(light)=1.00 ≥ 0.90"), routed.rule

    # Pointed back at the small model, its own record decides again.
    back = run(vault, double, SMALL_LOCAL, REQUEST, "back")
    assert back.route("collate", "low", prompt=hard(503)).tier == "standard"
    assert back.route("collate", "low", prompt=easy(503)).tier == "light"
