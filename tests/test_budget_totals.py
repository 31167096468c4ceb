"""Budget totals kept as calls settle: a check reads one row per budget, whatever the ledger holds, and agrees with
the sums of the calls across period boundaries, config changes and a ledger written by the previous version."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import call_record, ledger_at, write_config

from tierflow.core.budget import Budgets, Estimate
from tierflow.core.config import load_config
from tierflow.core.errors import BudgetExceeded
from tierflow.core.ledger import (
    MIGRATIONS,
    Ledger,
    budget_scopes,
    budget_totals,
    calls,
    reservations,
    schema_version,
    spent_from_calls,
)
from tierflow.core.routing import route
from tierflow.core.usage import Usage

BUDGETS = """
[budgets.daily]
usd = 100
period = "day"
[budgets.monthly]
usd = 1000
tokens = 100000000
period = "month"
[budgets.thesis]
usd = 500
period = "month"
project = "thesis"
[budgets.per-run]
usd = 50
"""


def config_for(tmp_path: Path, ledger_url: str, budgets: str = BUDGETS, timezone: str = "UTC"):
    vault = tmp_path / "vault"
    text = f'ledger_url = {json.dumps(ledger_url)}\n[vault]\ntimezone = "{timezone}"\n{budgets}'
    write_config(vault / ".tierflow" / "config.toml", text)
    return load_config(vault)


def candidates(config, *, usd: float = 0.01, tokens: int = 200):
    routed = route(config, phase="collate", complexity="low")
    est = Estimate(prompt_tokens=tokens // 2, max_output_tokens=tokens - tokens // 2, usd=Decimal(str(usd)))
    return [(routed, est)]


def from_calls(budgets: Budgets, now: datetime) -> dict[str, tuple[float, int]]:
    """Each budget's spent USD and tokens summed from the calls and kept reservations (the old way)."""
    out = {}
    with budgets.ledger.reading() as conn:
        for name, b in budgets.config.settings.budgets.items():
            scope = budgets.scope_of(b)
            if b.period == "run":
                usd, tokens, _ = spent_from_calls(conn, scope, run_id=budgets.run_id)
            else:
                end = budgets.period_end(b, now).isoformat(timespec="microseconds")
                usd, tokens, _ = spent_from_calls(conn, scope, start=budgets.period_start(b, now), end=end)
            out[name] = (round(usd, 9), tokens)
    return out


def from_totals(budgets: Budgets, now: datetime) -> dict[str, tuple[float, int]]:
    return {s.name: (round(s.spent_usd, 9), s.spent_tokens) for s in budgets.states(now=now)}


def settle(budgets: Budgets, reservation, usd: float, tokens: int, **kw) -> None:
    record = call_record(
        run_id=budgets.run_id, project=budgets.project, usage=Usage(input_tokens=tokens), cost_usd=usd, **kw
    )
    budgets.settle(reservation.id, record)


def test_totals_follow_the_calls_across_a_day_and_a_month_boundary_with_calls_in_flight(
    tmp_path, monkeypatch, ledger_url
):
    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2026-11-30T23:59:50+00:00")
    config = config_for(tmp_path, ledger_url)
    ledger = Ledger(ledger_url)
    budgets = Budgets(config, ledger, run_id="r1", flow="f", project="thesis")
    before = datetime(2026, 11, 30, 23, 59, 55, tzinfo=UTC)
    settle(budgets, budgets.reserve(candidates(config)), 0.004, 300)  # settled in November
    flying = budgets.reserve(candidates(config, usd=0.02))  # in flight across midnight
    also_flying = budgets.reserve(candidates(config, usd=0.03))
    (daily,) = [s for s in budgets.states() if s.name == "daily"]
    assert daily.spent_usd == pytest.approx(0.004) and daily.reserved_usd == pytest.approx(0.05)

    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2026-12-01T00:00:02+00:00")  # a new day and a new month
    after = datetime(2026, 12, 1, 0, 0, 5, tzinfo=UTC)
    states = {s.name: s for s in budgets.states()}
    # The new periods start with nothing spent; what is still in flight is reserved in them, where it will be recorded.
    assert states["daily"].spent_usd == 0 and states["daily"].reserved_usd == pytest.approx(0.05)
    assert states["monthly"].spent_usd == 0 and states["per-run"].reserved_usd == pytest.approx(0.05)
    settle(budgets, flying, 0.015, 700)  # it answers in December: its spend counts there
    settle(budgets, budgets.reserve(candidates(config)), 0.001, 100)
    budgets.release(also_flying.id)
    assert from_totals(budgets, after) == from_calls(budgets, after)
    assert from_totals(budgets, before) == from_calls(budgets, before)
    assert {n: v for n, v in from_totals(budgets, after).items()} == {
        "daily": (0.016, 800),
        "monthly": (0.016, 800),
        "thesis": (0.016, 800),
        "per-run": (0.02, 1100),
    }
    assert from_totals(budgets, before)["daily"] == (0.004, 300)


def test_a_batch_in_flight_across_a_month_boundary_counts_in_the_month_its_answers_are_recorded_in(
    tmp_path, monkeypatch, ledger_url
):
    """A batch submitted on the 30th is answered, and recorded, on the 1st: until then December's budget counts its
    reservation as reserved, so no December call can take the room its answers will use."""
    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2026-11-30T22:00:00+00:00")
    config = config_for(tmp_path, ledger_url, '[budgets.monthly]\nusd = 1.0\nperiod = "month"\npolicy = "halt"\n')
    budgets = Budgets(config, Ledger(ledger_url), run_id="r1", flow="f")
    batch = budgets.reserve(candidates(config, usd=0.8), wait=False)  # a batch item's reservation, held 24 h

    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2026-12-01T06:00:00+00:00")
    (monthly,) = budgets.states()
    assert monthly.spent_usd == 0 and monthly.reserved_usd == pytest.approx(0.8)
    with pytest.raises(BudgetExceeded, match="monthly"):
        budgets.reserve(candidates(config, usd=0.8), wait=False)
    settle(budgets, batch, 0.8, 200)  # collected in December
    (monthly,) = budgets.states()
    assert monthly.spent_usd == pytest.approx(0.8) and monthly.reserved_usd == 0


def test_a_budget_check_reads_one_row_per_budget_in_one_statement_and_never_the_calls(tmp_path, ledger_url):
    config = config_for(tmp_path, ledger_url)
    ledger = Ledger(ledger_url)
    budgets = Budgets(config, ledger, run_id="r1", flow="f", project="thesis")
    settle(budgets, budgets.reserve(candidates(config)), 0.004, 300)  # the scopes are registered
    statements: list[str] = []
    parameters: list[object] = []

    def seen(conn, cursor, statement, params, *args):
        statements.append(statement)
        parameters.append(params)

    sa.event.listen(ledger.engine, "before_cursor_execute", seen)
    try:
        reservation = budgets.reserve(candidates(config))
        settle(budgets, reservation, 0.004, 300)
    finally:
        sa.event.remove(ledger.engine, "before_cursor_execute", seen)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert not [s for s in reads if " calls" in s], reads
    (totals,) = [p for s, p in zip(statements, parameters, strict=True) if "FROM budget_totals" in s]
    keys = list(totals.values()) if isinstance(totals, dict) else list(totals)
    assert len(keys) == 4  # day, month, project, run: one row each, in one round trip


def test_a_settled_reservation_leaves_the_table_and_a_kept_one_stays_charged(tmp_path, ledger_url):
    config = config_for(tmp_path, ledger_url)
    ledger = Ledger(ledger_url)
    budgets = Budgets(config, ledger, run_id="r1", flow="f")
    settle(budgets, budgets.reserve(candidates(config)), 0.004, 300)
    budgets.release(budgets.reserve(candidates(config)).id)
    unknown = budgets.reserve(candidates(config, usd=0.07, tokens=900))
    budgets.settle(unknown.id, call_record(run_id="r1", usage=Usage(known=False), cost_usd=None))
    with ledger.reading() as conn:
        left = conn.execute(sa.select(reservations.c.usd, reservations.c.open, reservations.c.kept)).all()
    assert [tuple(r) for r in left] == [(0.07, False, True)]  # only the kept worst case, charged
    (daily,) = [s for s in budgets.states() if s.name == "daily"]
    assert daily.spent_usd == pytest.approx(0.074) and daily.spent_tokens == 1200 and daily.reserved_usd == 0


def test_a_budget_added_to_the_config_is_rebuilt_from_the_calls_then_kept(tmp_path, monkeypatch, ledger_url):
    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2026-11-18T12:00:00+00:00")
    ledger = Ledger(ledger_url)
    for n, (project, usd) in enumerate([("thesis", 0.5), ("other", 0.25), ("thesis", 0.125)]):
        ledger.record(call_record(project=project, cost_usd=usd, run_id=f"r{n}"))
    config = config_for(tmp_path, ledger_url)
    budgets = Budgets(config, ledger, run_id="r0", flow="f", project="thesis")
    now = datetime(2026, 11, 18, 12, 0, 1, tzinfo=UTC)
    assert from_totals(budgets, now) == from_calls(budgets, now)
    assert from_totals(budgets, now)["thesis"] == (0.625, 36)
    settle(budgets, budgets.reserve(candidates(config)), 0.25, 100)
    assert from_totals(budgets, now)["thesis"] == (0.875, 136) == from_calls(budgets, now)["thesis"]
    # A changed scope (the same name, another project) is a new scope: rebuilt once, then kept.
    changed = config_for(tmp_path, ledger_url, BUDGETS.replace('project = "thesis"', 'project = "other"'))
    other = Budgets(changed, ledger, run_id="r1", flow="f", project="other")
    assert from_totals(other, now)["thesis"] == (0.25, 18) == from_calls(other, now)["thesis"]
    # A budget in another time zone counts its own day.
    tokyo = config_for(tmp_path, ledger_url, timezone="Asia/Tokyo")
    far = Budgets(tokyo, ledger, run_id="r1", flow="f")
    assert from_totals(far, now) == from_calls(far, now)


UNPRICED_OK = '[budgets.unpriced-ok]\nusd = 100\nperiod = "month"\nunpriced = "allow"\nfallback_usd_per_mtok = 10\n'
"""A budget that counts the tokens of calls of unknown price at a fallback price (`spent_tokens` does not show them)."""


def narrowed(budgets: str, line: str) -> str:
    """`budgets` with `line` (a filter every test call passes) in each budget: new scopes, rebuilt from the calls."""
    return "".join(part + (f"{line}\n" if part.startswith("[budgets.") else "") for part in budgets.splitlines(True))


def test_a_lost_calls_worst_case_tokens_count_alike_in_live_and_rebuilt_totals(tmp_path, monkeypatch, ledger_url):
    """A call sent and never answered counts at its worst case: its USD and, for token budgets, its tokens. Totals
    rebuilt from the calls (a budget added or changed) count its tokens as the live ones did, and when its answer
    comes after all (`_unrecord_lost`) both lose them. `tierflow spend` still shows its tokens as unknown."""
    from tierflow.core.budget import release_stale
    from tierflow.core.ledger import COLUMNS, lost_call

    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2026-11-18T12:00:00+00:00")
    config = config_for(tmp_path, ledger_url, BUDGETS + UNPRICED_OK)
    ledger = Ledger(ledger_url)
    budgets = Budgets(config, ledger, run_id="r1", flow="f", project="thesis")
    settle(budgets, budgets.reserve(candidates(config)), 0.004, 300)
    # A holder frozen mid-call: its lease lapses and its call is recorded lost at its worst case.
    frozen = budgets.reserve(candidates(config, usd=0.07, tokens=900))
    with ledger.transaction() as conn:
        conn.execute(reservations.update().values(lease_expires=0.0))
    (released,) = release_stale(ledger)
    assert released.id == frozen.id and released.lost
    # An attempt on a model of unknown price that was never answered (a timeout): its worst case is tokens only.
    ledger.record(lost_call(call_record(run_id="r1", project="thesis"), None, 500))
    now = datetime(2026, 11, 18, 12, 0, 1, tzinfo=UTC)
    live = from_totals(budgets, now)
    assert live["monthly"] == (0.074, 1700) and live["per-run"] == (0.074, 1700)
    assert live["unpriced-ok"][0] == pytest.approx(0.074 + 500 * 10 / 1e6)
    rebuilt = Budgets(
        config_for(tmp_path, ledger_url, narrowed(BUDGETS + UNPRICED_OK, 'flow = "f"')),
        ledger, run_id="r1", flow="f", project="thesis",
    )  # fmt: skip
    assert from_totals(rebuilt, now) == live
    assert from_calls(budgets, now)["monthly"] == live["monthly"]  # a period before the totals: summed the same way
    # Reports: the lost rows' tokens stay unknown (their USD is the worst case, as before), not billed tokens.
    lost = [r for r in ledger.rows() if r["outcome"] == "lost"]
    assert [(r["usage_known"], r["input_tokens"], r["output_tokens"]) for r in lost] == [(False, 0, 0)] * 2
    assert all(tuple(r) == COLUMNS for r in lost)

    # The frozen holder wakes and its answer comes: the lost row gives way, its worst case leaves the totals.
    settle(budgets, frozen, 0.02, 700)
    live = from_totals(budgets, now)
    assert live["monthly"] == (0.024, 1500)
    again = Budgets(
        config_for(tmp_path, ledger_url, narrowed(BUDGETS + UNPRICED_OK, 'phase = "collate"')),
        ledger, run_id="r1", flow="f", project="thesis",
    )  # fmt: skip
    assert from_totals(again, now) == live and from_totals(rebuilt, now) == live
    assert from_calls(budgets, now)["monthly"] == live["monthly"]


def test_a_ledger_written_by_the_previous_version_migrates_to_the_totals_once(tmp_path, ledger_url):
    engine = sa.create_engine(ledger_url)
    with engine.begin() as conn:  # a version-10 ledger: calls, settled and kept reservations
        ledger_at(conn, 10)
        for n in range(30):
            row = call_record(
                run_id=f"r{n % 3}",
                project="thesis" if n % 2 else "other",
                cost_usd=None if n == 7 else 0.01 * n,
                timestamp=f"2026-11-{1 + n % 28:02d}T10:00:00.000000+00:00",
            ).row()
            # Only the columns a version-10 ledger has (later migrations add the request router's, worst cases).
            later = ("request_id", "value", "worst_tokens")
            conn.execute(calls.insert(), {k: v for k, v in row.items() if k not in later})
        for n, (is_open, kept) in enumerate([(False, False), (False, True), (False, False), (True, False)]):
            conn.execute(
                reservations.insert().values(
                    created=f"2026-11-2{n}T10:00:00.000000+00:00", run_id="r1", flow="f", phase="collate",
                    usd=0.5, tokens=1000, open=is_open, kept=kept, project="thesis", tier="light", priced=True,
                    lease_expires=1e12,
                )
            )  # fmt: skip
    engine.dispose()
    config = config_for(tmp_path, ledger_url)
    ledger = Ledger(ledger_url)
    assert ledger.version == len(MIGRATIONS)
    with ledger.reading() as conn:  # settled reservations are gone; the kept one and the one in flight stay
        assert sorted(conn.execute(sa.select(reservations.c.kept, reservations.c.open)).all()) == [
            (False, True),
            (True, False),
        ]
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    budgets = Budgets(config, ledger, run_id="r1", flow="f", project="thesis")
    first = from_totals(budgets, now)
    assert first == from_calls(budgets, now)
    assert first["monthly"][0] == pytest.approx(sum(0.01 * n for n in range(30) if n != 7) + 0.5)
    with ledger.transaction() as conn:  # mark the totals: a second open must not rebuild them
        conn.execute(budget_totals.update().values(usd=budget_totals.c.usd + 1000))
        registered = conn.execute(sa.select(budget_scopes.c.scope, budget_scopes.c.registered)).all()
    again = Budgets(config, Ledger(ledger_url), run_id="r1", flow="f", project="thesis")
    assert {name: usd for name, (usd, _) in from_totals(again, now).items()} == {
        name: round(usd + 1000, 9) for name, (usd, _) in first.items()
    }
    with ledger.reading() as conn:
        assert conn.execute(sa.select(budget_scopes.c.scope, budget_scopes.c.registered)).all() == registered


def test_a_ledger_holding_lost_calls_migrates_to_storing_their_worst_case_tokens_once(ledger_url):
    """Four workers open a version-18 ledger at once: each succeeds and each version is recorded once (under the
    migration lock on PostgreSQL). The lost call already there keeps its row; one recorded now stores its worst
    case."""
    from tierflow.core.ledger import lost_call

    engine = sa.create_engine(ledger_url)
    with engine.begin() as conn:
        ledger_at(conn, 18)
        row = lost_call(call_record(run_id="r1"), 0.07, 900).row()
        conn.execute(calls.insert(), {k: v for k, v in row.items() if k != "worst_tokens"})
    engine.dispose()
    start = threading.Barrier(4)
    versions: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            versions.append(Ledger(ledger_url).version)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert versions == [len(MIGRATIONS)] * 4 and len(MIGRATIONS) >= 19
    ledger = Ledger(ledger_url)
    ledger.record(lost_call(call_record(run_id="r2"), 0.07, 900))
    with ledger.reading() as conn:
        recorded = conn.execute(sa.select(schema_version.c.version).order_by(schema_version.c.version)).scalars()
        assert list(recorded) == list(range(1, len(MIGRATIONS) + 1))
        lost = conn.execute(sa.select(calls.c.run_id, calls.c.outcome, calls.c.worst_tokens).order_by(calls.c.id))
        assert [tuple(r) for r in lost] == [("r1", "lost", None), ("r2", "lost", 900)]


def test_a_budgeted_call_reads_the_reservations_in_flight_and_the_totals_once(tmp_path, monkeypatch, ledger_url):
    """Three capped budgets: the reservation's check reads the reservations in flight once and every budget's
    running total in one statement, and the prompt-size check (`Caller._near_cap`) uses what it read (issue 23:
    three budgets added 1.5 ms over none on PostgreSQL, one round trip per statement)."""
    from conftest import anthropic_config

    from tierflow.core.calls import Caller, RunSettings
    from tierflow.testing.double import ProviderDouble

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
    with ProviderDouble() as double:
        vault = tmp_path / "vault"
        text = f"ledger_url = {json.dumps(ledger_url)}\n" + anthropic_config(
            double, BUDGETS.replace("[budgets.per-run]\nusd = 50\n", "")
        )
        write_config(vault / ".tierflow" / "config.toml", text)
        caller = Caller(RunSettings(vault=str(vault), run_id="r1", flow="f", project="thesis", use_cache=False))
        caller.ask(phase="collate", complexity="low", system="Be terse.", prompt="first")  # registers the scopes
        ledger = Ledger(ledger_url)
        statements: list[str] = []

        def seen(conn, cursor, statement, *args):
            statements.append(statement)

        sa.event.listen(ledger.engine, "before_cursor_execute", seen)
        try:
            caller.ask(phase="collate", complexity="low", system="Be terse.", prompt="second")
        finally:
            sa.event.remove(ledger.engine, "before_cursor_execute", seen)
    held = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "FROM reservations" in s]
    assert len(held) == 1, held
    assert sum("FROM budget_totals" in s for s in statements if s.lstrip().upper().startswith("SELECT")) == 1


SHARED_SCOPE = """
[budgets.hard]
usd = 1
period = "month"
[budgets.soft]
usd = 0.5
period = "month"
policy = "warn"
[budgets.a]
usd = 1
[budgets.b]
tokens = 100000
"""


def test_two_budgets_of_one_scope_share_its_running_total(tmp_path, monkeypatch, ledger_url):
    """A hard and a soft limit on the same period (and a USD and a token limit per run) register their scope once
    and read the one total: the first call used to fail on the scope's primary key."""
    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2026-11-18T12:00:00+00:00")
    config = config_for(tmp_path, ledger_url, SHARED_SCOPE)
    ledger = Ledger(ledger_url)
    ledger.record(call_record(run_id="r0", cost_usd=0.25))  # before the budgets: rebuilt into the shared total
    budgets = Budgets(config, ledger, run_id="r1", flow="f")
    settle(budgets, budgets.reserve(candidates(config)), 0.125, 300)
    now = datetime(2026, 11, 18, 12, 0, 1, tzinfo=UTC)
    assert from_totals(budgets, now) == from_calls(budgets, now)
    assert from_totals(budgets, now) == {
        "hard": (0.375, 318),
        "soft": (0.375, 318),
        "a": (0.125, 300),
        "b": (0.125, 300),
    }
    with ledger.reading() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(budget_scopes)).scalar() == 2


def test_two_processes_first_naming_a_shared_scope_register_it_once(tmp_path, ledger_url):
    """Two workers (threads, each with its own ledger engine) reach a new ledger's budgets at the same moment:
    each scope is registered once, and both calls are counted."""
    config = config_for(tmp_path, ledger_url, SHARED_SCOPE)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(run_id: str) -> None:
        try:
            budgets = Budgets(config, Ledger(ledger_url), run_id=run_id, flow="f")
            start.wait()
            settle(budgets, budgets.reserve(candidates(config)), 0.125, 300)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"r{n}",)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    ledger = Ledger(ledger_url)
    with ledger.reading() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(budget_scopes)).scalar() == 2
    (hard,) = [s for s in Budgets(config, ledger, run_id="r0", flow="f").states() if s.name == "hard"]
    assert (round(hard.spent_usd, 9), hard.spent_tokens) == (0.25, 600)
