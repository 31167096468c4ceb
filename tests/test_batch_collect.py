"""Collecting a batch: two processes collecting one batch record each item once, and a batch item that a
`downgrade` budget moved to a cheaper tier is cached as what it was, never replayed for the dearer tier."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import anthropic_config, openai_config, write_config
from pydantic import BaseModel

from tierflow.core.batch import BatchCall, run_batch
from tierflow.core.budget import open_reservations
from tierflow.core.calls import Caller, RunSettings
from tierflow.core.ledger import Ledger
from tierflow.testing.double import ProviderDouble, Reply


class Verdict(BaseModel):
    label: str
    score: int


def make_caller(folder: Path, config_text: str, *, run_id: str = "run-1") -> Caller:
    path = write_config(folder / ".tierflow" / "config.toml", config_text)
    return Caller(RunSettings(vault=str(folder), config_path=str(path), run_id=run_id, flow="test"))


def calls(n: int) -> list[BatchCall]:
    return [
        BatchCall(key=f"s{i}", subject=f"s{i}", system="You are terse.", prompt=f"Classify {i}.", output=Verdict)
        for i in range(n)
    ]


def config_for(provider: str, double: ProviderDouble, extra: str = "") -> str:
    return anthropic_config(double, extra) if provider == "anthropic" else openai_config(double, extra)


def collect_together(callers: list[Caller], provider: str, batch: list[BatchCall], **kw: Any) -> list[Any]:
    """Run `run_batch` in one thread per caller, each holding back its results until every one has them."""
    barrier = threading.Barrier(len(callers), timeout=120)
    for c in callers:
        adapter = c.provider(provider)
        original = adapter.batch_results

        def held(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            barrier.wait()
            return list(_original(*args, **kwargs))

        adapter.batch_results = held  # type: ignore[method-assign]
    outcomes: list[Any] = [None] * len(callers)
    errors: list[BaseException] = []

    def collect(index: int) -> None:
        try:
            outcomes[index] = run_batch(callers[index], batch, poll_interval=0.01, **kw)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=collect, args=(i,)) for i in range(len(callers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return outcomes


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_batch_collected_by_two_processes_at_once_records_each_item_once(tmp_path, monkeypatch, ledger_url, provider):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    with ProviderDouble(lambda r: Reply(data={"label": "summative", "score": 2}), batch_polls_until_done=3) as double:
        text = f"ledger_url = {json.dumps(ledger_url)}\n{config_for(provider, double)}"
        # The run submits its batch and goes on waiting for it; `tierflow resume` of the same run, in another
        # process with its own ledger connection, collects the same batch at the same moment.
        waiting = make_caller(tmp_path / "run", text)
        first = run_batch(waiting, calls(3), phase="collate", complexity="low", wait=False)
        assert first.pending and not first.answers
        resumed = make_caller(tmp_path / "resume", text)
        outcomes = collect_together([waiting, resumed], provider, calls(3), phase="collate", complexity="low")

        assert len(double.batch_items) == 3  # the provider billed three items
        rows = [r for r in Ledger(ledger_url).rows() if not r["cached_result"]]
        assert Counter(r["subject"] for r in rows) == {"s0": 1, "s1": 1, "s2": 1}  # each recorded once
        assert all(r["batch"] for r in rows)
        for outcome in outcomes:  # both processes have every answer: the one collected elsewhere from the cache
            assert sorted(outcome.answers) == ["s0", "s1", "s2"] and not outcome.failed
        assert open_reservations(Ledger(ledger_url)) == []


RESUME_IN_ANOTHER_PROCESS = """
import sys, time
from pathlib import Path
from pydantic import BaseModel
from tierflow.core.batch import BatchCall, run_batch
from tierflow.core.calls import Caller, RunSettings
from tierflow.core.providers.{module} import {cls} as Provider

mine, theirs = Path(sys.argv[3]), Path(sys.argv[4])
original = Provider.batch_results

def held(self, *args, **kwargs):  # both processes have found the batch ended before either collects it
    mine.touch()
    deadline = time.monotonic() + 300
    while not theirs.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return original(self, *args, **kwargs)

Provider.batch_results = held

class Verdict(BaseModel):
    label: str
    score: int

caller = Caller(RunSettings(vault=sys.argv[1], config_path=sys.argv[2], run_id="run-1", flow="test"))
calls = [
    BatchCall(key=f"s{{i}}", subject=f"s{{i}}", system="You are terse.", prompt=f"Classify {{i}}.", output=Verdict)
    for i in range(3)
]
outcome = run_batch(caller, calls, phase="collate", complexity="low", poll_interval=0.01)
print(",".join(sorted(outcome.answers)), ",".join(sorted(outcome.failed)))
"""

ADAPTERS = {"anthropic": ("anthropic", "AnthropicProvider"), "openai": ("openai", "OpenAIProvider")}


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_run_waiting_on_its_batch_and_a_resume_in_another_process_record_each_item_once(
    tmp_path, monkeypatch, ledger_url, provider
):
    import subprocess
    import sys
    import time

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    with ProviderDouble(lambda r: Reply(data={"label": "summative", "score": 2}), batch_polls_until_done=3) as double:
        text = f"ledger_url = {json.dumps(ledger_url)}\n{config_for(provider, double)}"
        waiting = make_caller(tmp_path / "run", text)
        assert run_batch(waiting, calls(3), phase="collate", complexity="low", wait=False).pending
        mine, theirs = tmp_path / "run-collecting", tmp_path / "resume-collecting"
        adapter = waiting.provider(provider)
        original = adapter.batch_results

        def held(*args: Any, **kwargs: Any) -> Any:
            mine.touch()
            deadline = time.monotonic() + 300
            while not theirs.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            return original(*args, **kwargs)

        adapter.batch_results = held  # type: ignore[method-assign]
        module, cls = ADAPTERS[provider]
        resume_config = write_config(tmp_path / "resume" / ".tierflow" / "config.toml", text)
        resume = subprocess.Popen(
            [sys.executable, "-c", RESUME_IN_ANOTHER_PROCESS.format(module=module, cls=cls), str(tmp_path / "resume"),
             str(resume_config), str(theirs), str(mine)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        outcome = run_batch(waiting, calls(3), phase="collate", complexity="low", poll_interval=0.01)
        out, _ = resume.communicate(timeout=300)
        assert resume.returncode == 0
        assert out.split() == ["s0,s1,s2"]  # the resume has every answer, and nothing failed
        assert sorted(outcome.answers) == ["s0", "s1", "s2"] and not outcome.failed

        assert len(double.batch_items) == 3
        rows = [r for r in Ledger(ledger_url).rows() if not r["cached_result"]]
        assert Counter(r["subject"] for r in rows) == {"s0": 1, "s1": 1, "s2": 1}
        assert open_reservations(Ledger(ledger_url)) == []


TIGHT = '[budgets.run]\nusd = 0.02\npolicy = "downgrade"\nfloor = "light"\n'


def test_a_downgraded_batch_item_is_not_replayed_for_the_tier_it_was_routed_to(tmp_path, monkeypatch, double):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda r: Reply(data={"label": "summative", "score": 2})
    poor = make_caller(tmp_path / "v", anthropic_config(double, TIGHT), run_id="poor")
    low = run_batch(poor, calls(2), phase="draft", complexity="high", poll_interval=0.01)
    assert {a.route.tier for a in low.answers.values()} != {"deep"}
    sent = double.batch_items[0]
    assert sent.model != "claude-opus-4-6"
    assert sent.max_tokens == poor.config.tier(low.answers["s0"].route.tier).max_output_tokens

    rich = make_caller(tmp_path / "v", anthropic_config(double), run_id="rich")
    direct = rich.ask(
        phase="draft", complexity="high", system="You are terse.", prompt="Classify 0.", output=Verdict, subject="s0"
    )
    assert direct.route.tier == "deep" and not direct.cached
    assert double.model_calls()[-1].model == "claude-opus-4-6"
    batched = run_batch(rich, calls(2)[1:], phase="draft", complexity="high", poll_interval=0.01)
    assert not batched.answers["s1"].cached and batched.answers["s1"].route.tier == "deep"
    assert double.batch_items[-1].model == "claude-opus-4-6"


def test_a_downgraded_batch_collected_by_resume_is_recorded_and_cached_as_the_tier_it_went_to(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    with ProviderDouble(lambda r: Reply(data={"label": "summative", "score": 2}), batch_polls_until_done=3) as double:
        poor = make_caller(tmp_path / "v", anthropic_config(double, TIGHT), run_id="poor")
        first = run_batch(poor, calls(2), phase="draft", complexity="high", wait=False)
        assert first.pending
        resumed = make_caller(tmp_path / "v", anthropic_config(double, TIGHT), run_id="poor")
        collected = run_batch(resumed, calls(2), phase="draft", complexity="high", poll_interval=0.01)
        tiers = {a.route.tier for a in collected.answers.values()}
        assert len(collected.answers) == 2 and "deep" not in tiers
        rows = [r for r in resumed.ledger.rows() if not r["cached_result"]]
        assert len(rows) == 2 and {r["downgraded_from"] for r in rows} == {"deep"}
        assert {(r["tier"], r["model"]) for r in rows} == {(t, poor.config.tier(t).model_id) for t in tiers}
        assert {r["model"] for r in rows} == {q.model for q in double.batch_items}

        rich = make_caller(tmp_path / "v", anthropic_config(double), run_id="rich")
        direct = rich.ask(
            phase="draft", complexity="high", system="You are terse.", prompt="Classify 0.", output=Verdict
        )
        assert direct.route.tier == "deep" and not direct.cached
