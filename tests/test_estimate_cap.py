"""The worst-case estimate under a budget cap: the offline o200k count with headroom is not an upper bound for
every tokenizer (CJK and emoji take more of Claude's tokens), so when a reservation decides whether a call fits
under a cap, Anthropic's own (free) counter sizes the prompt; with no cap near, no counting round trip is made."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import anthropic_config, write_config

from tierflow.core.calls import Caller, RunSettings
from tierflow.core.errors import BudgetExceeded
from tierflow.testing.double import ProviderDouble, Reply

WIDE = "请总结：" + "你的账户还没有达到存储限制。" * 40 + "🙂📚✨🎓" * 60
"""A prompt of CJK and emoji, which the double (wide_scripts) counts at a token per UTF-8 byte, as a tokenizer
that is not o200k may."""


@pytest.fixture
def wide(double: ProviderDouble, monkeypatch: pytest.MonkeyPatch) -> ProviderDouble:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-anthropic-key")
    double.wide_scripts = True
    double.responder = lambda r: Reply(text="ok")
    return double


def make_caller(tmp_path, double: ProviderDouble, budget: str = "", run_id: str = "run-1") -> Caller:
    path = write_config(tmp_path / "v" / ".tierflow" / "config.toml", anthropic_config(double, budget))
    return Caller(RunSettings(vault=str(tmp_path / "v"), config_path=str(path), run_id=run_id, use_cache=False))


def counts(c: Caller) -> tuple[int, int, float]:
    """The padded o200k prompt count, the provider's count, and the worst-case USD at the provider's count."""
    routed, request = c.build(phase="collate", complexity="low", system="Be brief.", prompt=WIDE)
    padded = c.estimate(routed, request).prompt_tokens
    exact = c.estimate(routed, request, provider_count=True)
    return padded, exact.prompt_tokens, float(exact.usd)


def ask(c: Caller):
    return c.ask(phase="collate", complexity="low", system="Be brief.", prompt=WIDE)


def reserved_tokens(c: Caller) -> dict[int, int]:
    """Every reservation the caller takes, by id, with its tokens (settled reservations leave the ledger)."""
    seen: dict[int, int] = {}
    for name in ("reserve_in", "reserve"):
        real = getattr(c.budgets, name)

        def spy(*args, _real=real, **kwargs):
            taken = _real(*args, **kwargs)
            if taken is not None:
                seen[taken.id] = taken.estimate.tokens
            return taken

        setattr(c.budgets, name, spy)
    return seen


def count_requests(double: ProviderDouble) -> int:
    return sum(1 for q in double.requests if q.kind == "count_tokens")


def test_a_prompt_the_padded_count_undercounts_is_reserved_at_the_providers_count_near_a_cap(tmp_path, wide):
    padded, exact, usd = counts(make_caller(tmp_path / "probe", wide))
    assert exact > padded  # the premise: o200k x 1.15 + 32 is below this tokenizer's count
    c = make_caller(tmp_path, wide, f"[budgets.run]\nusd = {usd * 1.02!r}\n")
    taken = reserved_tokens(c)
    before = count_requests(wide)
    ask(c)
    assert count_requests(wide) == before + 1  # one free count before the call
    (tokens,) = taken.values()
    assert tokens == exact + c.config.tier("light").max_output_tokens
    (row,) = c.ledger.rows()
    assert row["input_tokens"] == exact  # the count and the bill agree: the reservation covered the prompt


def test_a_token_cap_the_padded_count_would_overrun_refuses_the_call_before_sending(tmp_path, wide):
    padded, exact, _ = counts(make_caller(tmp_path / "probe", wide))
    output = 1024
    cap = padded + output  # fits the padded estimate exactly; the prompt's real count does not fit with any output
    assert exact + 256 > cap
    c = make_caller(tmp_path, wide, f'[budgets.run]\ntokens = {cap}\npolicy = "halt"\n')
    sent = len(wide.model_calls())
    with pytest.raises(BudgetExceeded):
        ask(c)
    assert len(wide.model_calls()) == sent and c.ledger.rows() == []


@pytest.mark.parametrize("budget", ["", "[budgets.month]\nusd = 100.0\nperiod = 'month'\n"])
def test_no_counting_round_trip_without_a_cap_or_far_from_one(tmp_path, wide, budget):
    c = make_caller(tmp_path, wide, budget)
    ask(c)
    ask(c)
    assert count_requests(wide) == 0 and len(wide.model_calls()) == 2


def test_a_batch_item_near_a_cap_is_reserved_at_the_providers_count(tmp_path, wide):
    from pydantic import BaseModel

    from tierflow.core.batch import BatchCall, run_batch

    class Summary(BaseModel):
        text: str

    wide.responder = lambda r: Reply(data={"text": "a summary"})
    probe = make_caller(tmp_path / "probe", wide)
    routed, request = probe.build(phase="collate", complexity="low", system="Be brief.", prompt=WIDE, output=Summary)
    padded = probe.estimate(routed, request, batch=True).prompt_tokens
    exact = probe.estimate(routed, request, provider_count=True, batch=True)
    assert exact.prompt_tokens > padded
    c = make_caller(tmp_path, wide, f"[budgets.run]\nusd = {float(exact.usd) * 1.02!r}\n")
    call = BatchCall(key="s0", system="Be brief.", prompt=WIDE, output=Summary)
    taken = reserved_tokens(c)
    assert run_batch(c, [call], phase="collate", complexity="low", poll_interval=0.01).answers["s0"]
    (tokens,) = taken.values()
    assert tokens == exact.prompt_tokens + c.config.tier("light").max_output_tokens


def test_the_worst_case_at_the_providers_count_prices_every_token_the_cache_writes(tmp_path, double, monkeypatch):
    """Anthropic writes everything before the cache breakpoint (tools, system, prefix) at the cache-write rate, so
    a worst case sized by the exact count, with no headroom left, must price all of it so, not the prefix alone."""
    from pydantic import BaseModel

    from tierflow.core.ledger import usage_of
    from tierflow.core.usage import price

    class Summary(BaseModel):
        text: str
        points: list[str]

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-anthropic-key")
    double.responder = lambda r: Reply(data={"text": "a summary", "points": ["one"]})
    c = make_caller(tmp_path, double)
    system = "You collate reading notes for a lecturer. " * 120  # a long system prompt, written to the cache too
    routed, request = c.build(
        phase="collate", complexity="low", system=system, prompt="Collate this week.", output=Summary,
        cache_prefix="Rubric and week context. " * 800,
    )  # fmt: skip
    assert request.cacheable
    worst = c.estimate(routed, request, provider_count=True)
    c.resolve(routed, request, output=Summary)
    (row,) = c.ledger.rows()
    assert row["cache_write_tokens"] > 0  # the double wrote the prefix, and what came before it, to the cache
    paid_for_prompt = price(
        replace(usage_of(row), output_tokens=0), routed.model, provider_kind="anthropic", override=None
    )
    assert float(paid_for_prompt) <= float(worst.usd - worst.output_usd) + 1e-9


def test_near_a_cap_with_the_count_failing_the_prompt_is_sized_by_its_byte_bound(tmp_path, wide):
    """The padded o200k count is no upper bound for Claude's tokenizer: when count_tokens fails, a call that
    fits only at that count is refused, not sent past the cap."""
    padded, exact, _ = counts(make_caller(tmp_path / "probe", wide))
    cap = padded + 1024  # fits the padded estimate exactly; the prompt's real count does not fit with any output
    assert exact + 256 > cap
    c = make_caller(tmp_path, wide, f'[budgets.run]\ntokens = {cap}\npolicy = "halt"\n')
    wide.fail_next(500, times=10, kind="count_tokens")
    sent = len(wide.model_calls())
    with pytest.raises(BudgetExceeded):
        ask(c)
    assert count_requests(wide) > 0  # the count was tried, and failed
    assert len(wide.model_calls()) == sent and c.ledger.rows() == []


def test_the_count_uses_a_key_from_a_prefect_secret_block(tmp_path, wide, monkeypatch, prefect_harness):
    from prefect.blocks.system import Secret

    Secret(value="test-anthropic-key").save("tierflow-test-anthropic", overwrite=True)
    padded, exact, usd = counts(make_caller(tmp_path / "probe", wide))
    assert exact > padded
    monkeypatch.delenv("ANTHROPIC_API_KEY")  # the key is in the Secret block only
    config = anthropic_config(wide, f"[budgets.run]\nusd = {usd * 1.02!r}\n").replace(
        'api_key_env = "ANTHROPIC_API_KEY"', 'api_key_secret = "tierflow-test-anthropic"'
    )
    path = write_config(tmp_path / "v" / ".tierflow" / "config.toml", config)
    c = Caller(RunSettings(vault=str(tmp_path / "v"), config_path=str(path), run_id="run-1", use_cache=False))
    taken = reserved_tokens(c)
    before = count_requests(wide)
    ask(c)
    assert count_requests(wide) == before + 1
    (tokens,) = taken.values()
    assert tokens == exact + c.config.tier("light").max_output_tokens
