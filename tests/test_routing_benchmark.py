"""benchmarks/routing.py: every strategy that learns from the history (suggested, adaptive, request) is given the
whole history, through the real Anthropic SDK on the wire double."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from tierflow.core.evidence import gather
from tierflow.core.ledger import Ledger
from tierflow.learn import request_router
from tierflow.testing.double import ProviderDouble

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "routing.py"

# The benchmark's history: every phase starts on light, escalates what fails and shadows every passing answer one
# tier up, so every tier answers.
TRAINING = (
    '[routing]\nlow = "light"\nmedium = "light"\nhigh = "light"\nceiling = "deep"\n'
    'mode = "adaptive"\nexplore = 1.0\nmin_evidence = 100000\n'
)


@pytest.fixture
def routing(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # The module sets a default API key on import: set it here, so that it is taken away after the test.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    spec = importlib.util.spec_from_file_location("routing_benchmark", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _evidence(vault: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(phase, tier) -> (first answers, passed), as suggested and adaptive routing read them."""
    return {
        (phase.phase, tier): (e.calls, e.passed)
        for phase in gather(Ledger.for_vault(vault), flow="bench")
        for tier, e in phase.tiers.items()
    }


def test_a_strategy_vault_starts_from_every_call_of_the_history(routing: ModuleType, tmp_path: Path) -> None:
    """The history's newest calls are still in the SQLite ledger's write-ahead log when the strategies' vaults are
    made: a copy of the ledger file alone left them out (all of them in a short history; in the README's 150-item
    one the last two to four items, as the log was last checkpointed), and the suggested and adaptive rows were
    learnt from a history short of them."""
    items = 2
    with ProviderDouble() as double:
        double.responder = routing.respond
        history = routing.vault_with(tmp_path, "history", routing.config_text(double, TRAINING))
        routing.run(history, "history", range(items), "t")
        copy = routing.vault_with(tmp_path, "suggested", routing.config_text(double, "[routing]\n"), history)

    learnt = _evidence(copy)
    assert learnt == _evidence(history)
    # Every item was first answered on light and, escalated or shadowed, on standard.
    assert all(learnt[(phase, tier)][0] == items for phase in routing.PHASES for tier in ("light", "standard"))
    # Request routing is fitted on the same first answers.
    assert request_router.first_answers(Ledger.for_vault(copy)) == request_router.first_answers(
        Ledger.for_vault(history)
    )
