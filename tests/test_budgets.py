"""Budgets: estimate before, reserve atomically, settle to actual; halt, downgrade and warn; zero overshoot."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from conftest import READING_WEEK, anthropic_config, openai_config, stopped, write_config

from tierflow.core.budget import Budgets
from tierflow.core.calls import Caller, RunSettings
from tierflow.core.config import load_config
from tierflow.core.errors import BudgetExceeded
from tierflow.core.ledger import Ledger
from tierflow.testing.double import NO_USAGE, ProviderDouble, Reply

PROMPT = "Summarise the argument of Sadler (1989) on closing the gap."
REPO = Path(__file__).resolve().parents[1]


def make_caller(vault: Path, config_text: str, *, run_id: str = "run-b", ledger_url: str | None = None) -> Caller:
    """A caller on a vault whose config is `config_text`, recording in `ledger_url` (else the vault's SQLite)."""
    if ledger_url:
        config_text = f"ledger_url = {json.dumps(ledger_url)}\n{config_text}"
    path = write_config(vault / ".tierflow" / "config.toml", config_text)
    return Caller(RunSettings(vault=str(vault), config_path=str(path), run_id=run_id, flow="test", use_cache=False))


def one_call_worst_case(vault: Path, double: ProviderDouble, *, bill_worst_case: bool = False) -> float:
    """The worst-case USD of one test call; optionally make the double bill every call at exactly that."""
    probe = make_caller(vault / "probe", anthropic_config(double))
    routed, request = probe.build(phase="collate", complexity="low", system="Be brief.", prompt=PROMPT)
    est = probe.estimate(routed, request)
    if bill_worst_case:
        usage = {"input_tokens": est.prompt_tokens, "output_tokens": est.max_output_tokens}
        double.responder = lambda r: Reply(text="ok", usage=usage)
    return float(est.usd)


def budget_config(double: ProviderDouble, body: str) -> str:
    return anthropic_config(double, extra=body)


def ask(c: Caller, prompt: str = PROMPT, complexity: str = "low", phase: str = "collate"):
    return c.ask(phase=phase, complexity=complexity, system="Be brief.", prompt=prompt)


def test_32_concurrent_threads_never_overshoot_a_cap_that_fits_ten(tmp_path, monkeypatch, double, ledger_url):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    # Every call bills its full worst case, so exactly ten fit even after the first ones settle.
    cap = 10 * one_call_worst_case(tmp_path, double, bill_worst_case=True)
    c = make_caller(
        tmp_path / "v", budget_config(double, f'[budgets.run]\nusd = {cap!r}\npolicy = "halt"\n'), ledger_url=ledger_url
    )

    def attempt(_: int) -> str:
        try:
            ask(c)
            return "called"
        except BudgetExceeded as exc:
            assert "budget 'run' (per run)" in str(exc) and "limit $" in str(exc)
            return "refused"

    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(attempt, range(32)))
    assert outcomes.count("called") == 10 and len(double.model_calls()) == 10
    rows = c.ledger.rows()
    assert len(rows) == 10 and sum(r["cost_usd"] for r in rows) <= cap


def test_two_processes_sharing_a_ledger_never_overshoot(tmp_path, monkeypatch, double, ledger_url):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    cap = 10 * one_call_worst_case(tmp_path, double, bill_worst_case=True)
    vault = tmp_path / "shared"
    config = write_config(
        vault / ".tierflow" / "config.toml",
        f"ledger_url = {json.dumps(ledger_url)}\n"
        + budget_config(double, f'[budgets.daily]\nusd = {cap!r}\nperiod = "day"\npolicy = "halt"\n'),
    )
    script = """
import sys, json
from concurrent.futures import ThreadPoolExecutor
from tierflow.core.calls import Caller, RunSettings
from tierflow.core.errors import BudgetExceeded
c = Caller(RunSettings(vault=sys.argv[1], config_path=sys.argv[2], run_id=sys.argv[3], flow="test", use_cache=False))
def one(_):
    try:
        c.ask(phase="collate", complexity="low", system="Be brief.", prompt=sys.argv[4]); return 1
    except BudgetExceeded:
        return 0
with ThreadPoolExecutor(16) as pool:
    print(json.dumps(sum(pool.map(one, range(16)))))
"""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(vault), str(config), f"proc-{n}", PROMPT],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**__import__("os").environ, "ANTHROPIC_API_KEY": "k"},
        )
        for n in range(2)
    ]
    made = [json.loads(p.communicate(timeout=180)[0]) for p in procs]
    assert sum(made) == 10 and len(double.model_calls()) == 10
    rows = Ledger(ledger_url).rows()
    assert len(rows) == 10 and sum(r["cost_usd"] for r in rows) <= cap


def test_settlement_releases_the_unused_worst_case(tmp_path, monkeypatch, double, ledger_url):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    worst = one_call_worst_case(tmp_path, double)
    c = make_caller(
        tmp_path / "v", budget_config(double, f"[budgets.run]\nusd = {worst * 1.5!r}\n"), ledger_url=ledger_url
    )
    ask(c)
    ask(c)  # fits only because the first call settled below its worst case
    (state,) = c.budgets.states()
    assert state.reserved_usd == 0 and 0 < state.spent_usd < worst


def test_unknown_usage_stays_charged_at_its_worst_case(tmp_path, monkeypatch, double, ledger_url):
    double.responder = lambda r: Reply(text="no usage here", usage=NO_USAGE)
    text = openai_config(double, kind="openai-compatible", extra="[budgets.run]\ntokens = 100000\n")
    c = make_caller(tmp_path / "v", text, ledger_url=ledger_url)
    ask(c)
    (state,) = c.budgets.states()
    # Charged as spent at the worst case (not merely in flight: nothing waits on it).
    assert state.reserved_tokens == 0 and state.spent_tokens > 0
    assert c.ledger.rows()[0]["input_tokens"] == 0


def test_zero_cost_local_tier_runs_under_a_zero_usd_budget(tmp_path, double, ledger_url):
    text = openai_config(double, kind="openai-compatible", extra="[budgets.none]\nusd = 0\n")
    c = make_caller(tmp_path / "v", text, ledger_url=ledger_url)
    assert ask(c).cost_usd == 0.0
    text = openai_config(double, kind="openai-compatible", extra="[budgets.tight]\ntokens = 50\n")
    with pytest.raises(BudgetExceeded, match="budget 'tight'.*limit 50 tokens"):
        ask(make_caller(tmp_path / "w", text, ledger_url=ledger_url))  # zero-cost tiers still consume token budgets


def test_warn_policy_proceeds_and_flags(tmp_path, monkeypatch, double, caplog, ledger_url):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    c = make_caller(
        tmp_path / "v",
        budget_config(double, '[budgets.soft]\nusd = 0.000001\npolicy = "warn"\n'),
        ledger_url=ledger_url,
    )
    with caplog.at_level("WARNING", logger="tierflow"):
        answer = ask(c)
    assert answer.warnings and answer.warnings[0][0] == "soft"
    assert "budget: over budget 'soft'" in caplog.text
    assert len(double.model_calls()) == 1


@pytest.mark.parametrize(
    ("body", "complexity", "fix", "not_offered"),
    [
        ('policy = "halt"', "medium", 'or set policy = "downgrade".', "floor"),
        ('policy = "halt"', "low", "or lower the tier's max_output_tokens.", "policy"),  # no cheaper tier
        ('policy = "downgrade"\nfloor = "standard"', "high", "or lower its floor (now 'standard').", "policy"),
        ('policy = "downgrade"\nfloor = "light"', "high", "or lower the tier's max_output_tokens.", "policy"),
    ],
)
def test_a_refusal_offers_only_the_fixes_that_apply(tmp_path, monkeypatch, double, body, complexity, fix, not_offered):
    """A budget already `downgrade` is not told to downgrade; a call on the cheapest tier has nowhere to go."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    c = make_caller(tmp_path / "v", budget_config(double, f"[budgets.tiny]\nusd = 0.000001\n{body}\n"))
    with pytest.raises(BudgetExceeded) as refused:
        ask(c, complexity=complexity)
    message = str(refused.value)
    assert "Raise `budgets.tiny` in the config" in message and message.endswith(fix)
    assert not_offered not in message.split("at worst.")[1]
    assert double.model_calls() == []


def test_phase_and_flow_scopes_only_count_their_calls(tmp_path, monkeypatch, double, ledger_url):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    extra = (
        '[budgets.drafting]\nusd = 0.000001\nphase = "draft"\n'
        '[budgets.other-flow]\nusd = 0.000001\nflow = "student-feedback"\n'
    )
    c = make_caller(tmp_path / "v", budget_config(double, extra), ledger_url=ledger_url)
    ask(c, phase="collate")  # neither budget applies to a collate call of this flow
    with pytest.raises(BudgetExceeded, match="budget 'drafting' \\(per run, phase draft\\)"):
        ask(c, phase="draft", complexity="medium")


def test_periods_are_calendar_aligned_in_the_vault_time_zone(tmp_path):
    path = write_config(
        tmp_path / "c.toml",
        '[vault]\ntimezone = "Australia/Sydney"\n[budgets.w]\nusd = 1\nperiod = "week"\n'
        '[budgets.m]\nusd = 5\nperiod = "month"\n[budgets.d]\nusd = 1\nperiod = "day"\n',
    )
    config = load_config(config_path=path)
    b = Budgets(config, Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}"), run_id="r", flow="f")
    now = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)  # Monday 07:00 in Sydney
    assert b.period_start(config.settings.budgets["d"], now) == "2026-11-22T13:00:00.000000+00:00"
    assert b.period_start(config.settings.budgets["w"], now) == "2026-11-22T13:00:00.000000+00:00"
    assert b.period_start(config.settings.budgets["m"], now) == "2026-10-31T13:00:00.000000+00:00"


def test_budget_report_and_otel_export_from_the_cli(tmp_path, monkeypatch, double, ledger_url):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    vault = tmp_path / "v"
    c = make_caller(
        vault, budget_config(double, '[budgets.monthly]\nusd = 5\nperiod = "month"\n'), ledger_url=ledger_url
    )
    ask(c)
    env = {**__import__("os").environ, "ANTHROPIC_API_KEY": "k"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tierflow.cli",
            "spend",
            "--vault",
            str(vault),
            "--budget",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    (state,) = json.loads(out.stdout)
    assert state["budget"] == "monthly" and state["limit_usd"] == 5 and state["remaining_usd"] < 5
    assert state["spent_usd"] > 0 and state["reserved_usd"] == 0
    otel = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "spend", "--vault", str(vault), "--format", "otel"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    (record,) = [json.loads(line) for line in otel.stdout.splitlines()]
    attrs = record["attributes"]
    row = c.ledger.rows()[0]
    assert attrs["gen_ai.request.model"] == "claude-haiku-4-5" and attrs["gen_ai.provider.name"] == "anthropic"
    assert (
        attrs["gen_ai.usage.input_tokens"] == row["input_tokens"] + row["cache_read_tokens"] + row["cache_write_tokens"]
    )
    assert attrs["gen_ai.usage.output_tokens"] == row["output_tokens"] + row["reasoning_tokens"]


# --- on the reading-notes flow ------------------------------------------------------------------------


@pytest.fixture
def flow_vault(reading_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch):
    from responders import skilled

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    double.responder = skilled()
    existing = (reading_vault / ".tierflow" / "config.toml").read_text()

    def configure(budgets: str, ledger_url: str | None = None) -> Path:
        shared = f"ledger_url = {json.dumps(ledger_url)}\n" if ledger_url else ""
        return write_config(
            reading_vault / ".tierflow" / "config.toml", shared + anthropic_config(double, budgets) + existing
        )

    return reading_vault, configure


def run_week(vault: Path):
    from tierflow.flows.reading_notes import reading_notes

    since, until = (date.fromisoformat(d) for d in READING_WEEK)
    return reading_notes(vault=str(vault), since=since, until=until)


@pytest.mark.usefixtures("prefect_harness")
def test_plan_brackets_the_actual_spend_of_the_same_run(flow_vault, double):
    from tierflow.flows.plans import plan_reading_notes

    vault, configure = flow_vault
    configure("")
    since, until = (date.fromisoformat(d) for d in READING_WEEK)
    plan = plan_reading_notes(load_config(vault), vault, since=since, until=until)
    assert [p.calls for p in plan.phases][:2] == [8, 1]
    summary = run_week(vault)
    rows = Ledger.for_vault(vault).rows(run_id=summary.run_id)
    actual = {p: sum(r["cost_usd"] for r in rows if r["phase"] == p) for p in ("collate", "synthesise", "draft")}
    for phase in plan.phases:
        assert actual[phase.key] <= float(phase.cost_or_none), phase.key
        assert phase.all_deep_usd >= phase.cost_or_none
    assert sum(actual.values()) <= float(plan.worst_usd)


@pytest.mark.usefixtures("prefect_harness")
def test_downgrade_completes_the_run_on_cheaper_tiers_under_the_cap(flow_vault, double, ledger_url):
    vault, configure = flow_vault
    cap = 0.12  # below the synthesise call's worst case on the deep tier (about $0.16)
    configure(f'[budgets.run]\nusd = {cap}\npolicy = "downgrade"\nfloor = "light"\n', ledger_url)
    summary = run_week(vault)
    assert not summary.halted and not summary.failed and summary.written
    rows = Ledger(ledger_url).rows(run_id=summary.run_id)
    downgraded = [r for r in rows if r["downgraded_from"]]
    assert downgraded and all(r["tier"] != r["downgraded_from"] for r in downgraded)
    assert any(r["phase"] == "synthesise" and r["downgraded_from"] == "deep" for r in downgraded)
    assert sum(r["cost_usd"] for r in rows) <= cap
    report = (vault / summary.report.path).read_text()
    assert "## Downgrades" in report and "synthesise · week: deep -> " in report


@pytest.mark.usefixtures("prefect_harness")
def test_halt_stops_names_the_budget_keeps_notes_and_resumes_without_respending(flow_vault, double):
    vault, configure = flow_vault
    configure("")
    reference_vault = vault.parent / "reference"
    shutil.copytree(vault, reference_vault)
    reference = run_week(reference_vault)  # learn what this week really costs, in a copy
    rows = Ledger.for_vault(reference_vault).rows(run_id=reference.run_id)

    # The worst case of each draft call the reference run made, as the budget guard will compute it.
    from tierflow.tasks.draft import DraftOut

    probe = Caller(RunSettings(vault=str(reference_vault), run_id="probe", flow="reading-notes"))
    worst = []
    for call in [c for c in double.model_calls() if c.forced_tool == "draftout"]:
        routed, request = probe.build(
            phase="draft",
            complexity="medium",
            system=call.system,
            prompt=call.last_user_text,
            output=DraftOut,
        )
        worst.append(float(probe.estimate(routed, request).usd))
    actual = [r["cost_usd"] for r in rows if r["phase"] == "draft"]
    # Only the cheapest draft's worst case fits; once it has settled, no other draft's worst case does (and
    # no smaller output allowance is tried: clamping has its own tests).
    cap = min(worst) + 0.5 * min(actual)
    double.reset()
    configure(f'[budgets.drafting]\nusd = {cap}\nphase = "draft"\npolicy = "halt"\nclamp_output = false\n')
    halted = stopped(run_week, vault)
    assert halted.halted and "budget 'drafting' (per run, phase draft)" in halted.halted
    assert "Raise `budgets.drafting`" in halted.halted
    assert len(halted.written) == 1
    assert any("budget halted the draft phase" in reason for _, reason in halted.skipped)
    kept = {w.path: (vault / w.path).read_bytes() for w in halted.written}
    report = (vault / halted.report.path).read_text()
    assert "Stopped early" in report and "budget 'drafting'" in report
    drafted = [r for r in Ledger.for_vault(vault).rows(run_id=halted.run_id) if r["phase"] == "draft"]
    assert sum(r["cost_usd"] for r in drafted) <= cap

    calls_before = len(double.model_calls())
    configure('[budgets.drafting]\nusd = 5\nphase = "draft"\npolicy = "halt"\n')
    resumed = run_week(vault)
    assert not resumed.halted and len(resumed.written) == len(reference.written) >= 3
    new_calls = double.model_calls()[calls_before:]
    assert {c.forced_tool for c in new_calls} == {"draftout"}
    assert len(new_calls) == len(reference.written) - len(halted.written)
    assert all((vault / p).read_bytes() == b for p, b in kept.items())


@pytest.mark.usefixtures("prefect_harness")
def test_halt_emits_a_prefect_event_naming_the_budget(flow_vault, double):
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    vault, configure = flow_vault
    configure('[budgets.tiny]\nusd = 0.0001\npolicy = "halt"\n')
    summary = stopped(run_week, vault)
    assert summary.halted and "budget 'tiny'" in summary.halted
    # This run's events only: other tests' halted reading-notes runs emit the same event, and the server records
    # events in the background (batched, every few seconds), so theirs may be there before this run's.
    this_run = EventFilter(
        event=EventNameFilter(name=["tierflow.budget.exceeded"]),
        related=EventRelatedFilter(id=[f"tierflow.run.{summary.run_id}"]),
    )
    mine = []
    with get_client(sync_client=True) as client:
        for _ in range(600):  # up to 300 s
            mine = client.read_events(filter=this_run, limit=50).events
            if mine:
                break
            time.sleep(0.5)
    assert mine and all(e.resource.id == "tierflow.budget.tiny" for e in mine)
    assert mine[0].resource["tierflow.policy"] == "halt" and mine[0].payload["flow"] == "reading-notes"


@pytest.mark.usefixtures("prefect_harness")
def test_a_halt_during_collate_stops_before_synthesis(flow_vault, double, ledger_url):
    vault, configure = flow_vault
    configure('[budgets.collating]\ntokens = 5000\nphase = "collate"\npolicy = "halt"\n', ledger_url)
    summary = stopped(run_week, vault)
    assert summary.halted and "budget 'collating' (per run, phase collate)" in summary.halted
    rows = Ledger(ledger_url).rows(run_id=summary.run_id)
    assert 1 <= sum(r["phase"] == "collate" for r in rows) < 8
    assert not [r for r in rows if r["phase"] != "collate"]
    assert summary.written == [] and not (vault / "Concepts" / "Drafts").exists()
    assert "Stopped early" in (vault / summary.report.path).read_text()


# --- unknown prices and tier-scoped budgets ---------------------------------------------------------------

UNPRICED = "claude-unreleased-1"  # a model genai-prices does not know


def unpriced_config(double: ProviderDouble, budgets: str) -> str:
    return anthropic_config(double, budgets).replace("claude-haiku-4-5", UNPRICED)


@pytest.mark.parametrize("policy", ["halt", "warn"])
def test_a_model_with_no_known_price_is_refused_under_any_usd_budget(tmp_path, monkeypatch, double, ledger_url, policy):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    text = unpriced_config(double, f'[budgets.tiny]\nusd = 0.000001\npolicy = "{policy}"\n')
    c = make_caller(tmp_path / "v", text, ledger_url=ledger_url)
    for _ in range(3):
        with pytest.raises(BudgetExceeded) as refused:
            ask(c)
        message = str(refused.value)
        assert "budget 'tiny'" in message and f"tier 'light' runs anthropic:{UNPRICED}" in message
        assert "price is not known" in message and "`[tiers.light.price]`" in message
        assert 'unpriced = "allow"' in message and "[budgets.tiny]" in message
    assert double.model_calls() == [] and c.ledger.rows() == []


def test_an_unpriced_model_allowed_by_a_budget_counts_at_its_fallback_price(tmp_path, monkeypatch, double, ledger_url):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    allow = 'unpriced = "allow"\nfallback_usd_per_mtok = 2.0\n'
    tiny = make_caller(
        tmp_path / "t", unpriced_config(double, "[budgets.tiny]\nusd = 0.000001\n" + allow), ledger_url=ledger_url
    )
    with pytest.raises(BudgetExceeded, match="Raise `budgets.tiny`"):  # allowed, but its worst case does not fit
        ask(tiny)
    c = make_caller(
        tmp_path / "v", unpriced_config(double, "[budgets.run]\nusd = 1\n" + allow), run_id="r2", ledger_url=ledger_url
    )
    for n in range(3):
        assert ask(c, prompt=f"{PROMPT} ({n})").cost_usd is None  # the ledger still says: price unknown
    rows = c.ledger.rows(run_id="r2")
    tokens = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
    (state,) = c.budgets.states()
    assert len(rows) == 3 and state.reserved_usd == 0
    assert state.spent_usd == pytest.approx(tokens * 2.0 / 1e6)


def test_allowing_unpriced_models_needs_a_stated_fallback_price(tmp_path, double):
    from tierflow.core.errors import ConfigError

    path = write_config(tmp_path / "c.toml", unpriced_config(double, '[budgets.run]\nusd = 1\nunpriced = "allow"\n'))
    with pytest.raises(ConfigError, match='`budgets.run.unpriced = "allow"` needs .* set `fallback_usd_per_mtok`'):
        load_config(config_path=path)


def test_a_tier_scoped_budget_counts_and_checks_only_that_tiers_calls(tmp_path, monkeypatch, double, ledger_url):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    c = make_caller(
        tmp_path / "v",
        budget_config(double, '[budgets.deep-pool]\ntokens = 50\ntier = "deep"\n'),
        ledger_url=ledger_url,
    )
    ask(c, complexity="low")  # a light call: the deep pool neither checks nor counts it
    (state,) = c.budgets.states()
    assert state.scope == "per run, tier deep" and state.spent_tokens == 0
    with pytest.raises(BudgetExceeded, match=r"budget 'deep-pool' \(per run, tier deep\).*limit 50 tokens"):
        ask(c, complexity="high")
    assert [r["tier"] for r in c.ledger.rows()] == ["light"]

    # Under `downgrade`, the deep call moves to a tier the pool does not cover, and goes through.
    d = make_caller(
        tmp_path / "w",
        budget_config(double, '[budgets.deep-pool]\ntokens = 50\ntier = "deep"\npolicy = "downgrade"\n'),
        run_id="run-d",
        ledger_url=ledger_url,
    )
    answer = ask(d, complexity="high")
    assert answer.route.tier == "standard"
    assert [(r["tier"], r["downgraded_from"]) for r in d.ledger.rows(run_id="run-d")] == [("standard", "deep")]


def test_a_budget_scoped_to_an_unknown_tier_is_a_config_error(tmp_path, double):
    from tierflow.core.errors import ConfigError

    path = write_config(tmp_path / "c.toml", budget_config(double, '[budgets.x]\ntokens = 5\ntier = "deeep"\n'))
    with pytest.raises(ConfigError, match="`budgets.x.tier` names unknown tier 'deeep'"):
        load_config(config_path=path)


def test_a_call_that_does_not_fit_at_full_output_is_sent_with_what_the_budget_affords(tmp_path, monkeypatch, double):
    """Caps are used in full: a halt run spends at least 90% of its cap, never more, by clamping max_tokens."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    worst = one_call_worst_case(tmp_path, double)
    double.responder = lambda r: Reply(text="ok " * 90)  # about a tenth of the 1,024-token allowance
    cap = 10 * worst
    c = make_caller(tmp_path / "v", budget_config(double, f'[budgets.run]\nusd = {cap!r}\npolicy = "halt"\n'))
    with pytest.raises(BudgetExceeded):
        for n in range(200):
            ask(c, f"{PROMPT} ({n})")
    spent = sum(r["cost_usd"] for r in c.ledger.rows())
    assert 0.9 * cap <= spent <= cap
    sent = [call.max_tokens for call in double.model_calls()]
    assert sent[0] == 1024 and min(sent) < 1024 and min(sent) >= 256  # clamped, never below the floor


def test_without_clamping_a_halt_run_stops_at_the_first_call_that_does_not_fit_in_full(tmp_path, monkeypatch, double):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    worst = one_call_worst_case(tmp_path, double)
    double.responder = lambda r: Reply(text="ok " * 90)
    cap = 10 * worst
    body = f'[budgets.run]\nusd = {cap!r}\npolicy = "halt"\nclamp_output = false\n'
    c = make_caller(tmp_path / "v", budget_config(double, body))
    with pytest.raises(BudgetExceeded):
        for n in range(200):
            ask(c, f"{PROMPT} ({n})")
    assert {call.max_tokens for call in double.model_calls()} == {1024}
    # It stops once a full worst case no longer fits: most of a worst case is left unused.
    assert sum(r["cost_usd"] for r in c.ledger.rows()) < cap - 0.75 * worst


def test_a_call_that_fits_only_clamped_waits_for_the_calls_in_flight(tmp_path, monkeypatch, double, ledger_url):
    """Under a cap smaller than one full worst case, a second call in parallel cannot fit even clamped while the
    first holds the cap; it waits for the first to settle, then is sent with what the budget affords (it used to
    be refused at once, though the same calls one after the other both ran)."""
    from tierflow.core import budget as budget_module

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    worst = one_call_worst_case(tmp_path, double)
    in_flight, let_go, decided = threading.Event(), threading.Event(), threading.Event()

    def responder(request):
        if "(first)" in request.last_user_text:
            in_flight.set()
            let_go.wait(60)
        return Reply(text="ok")

    double.responder = responder
    decide = budget_module.decide_reservation

    def watched(candidates, states, **kw):  # tells the test once a call has been decided with the first in flight
        decision = decide(candidates, states, **kw)
        if in_flight.is_set() and any(s.reserved_usd for s in states):
            decided.set()
        return decision

    monkeypatch.setattr(budget_module, "decide_reservation", watched)
    cap = 0.6 * worst  # one call, clamped to about 60% of its output allowance, takes the whole cap
    c = make_caller(
        tmp_path / "v", budget_config(double, f'[budgets.run]\nusd = {cap!r}\npolicy = "halt"\n'), ledger_url=ledger_url
    )
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(ask, c, f"{PROMPT} (first)")
        assert in_flight.wait(60)
        second = pool.submit(ask, c, f"{PROMPT} (second)")
        assert decided.wait(60)  # the second call has seen the first's reservation
        let_go.set()
        answers = [first.result(60), second.result(60)]
    assert [a.text for a in answers] == ["ok", "ok"]
    sent = [call.max_tokens for call in double.model_calls()]
    assert len(sent) == 2 and all(256 <= n < 1024 for n in sent)
    assert sum(r["cost_usd"] for r in c.ledger.rows()) <= cap
