"""A paused holder (a suspended laptop, SIGSTOP) whose lease lapsed mid-call: the lapse records its call `lost` at
its worst case, and when the holder wakes, whatever ends its call (an answer, a failed check, an error with or
without attempts sent, an interrupt) takes that row's place in the same transaction. Each call is counted once,
and the budgets' running totals match a rebuild from the calls. Real SDK clients against the wire double."""

from __future__ import annotations

import json
import os
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import anthropic_config, call_record, write_config
from test_budget_totals import BUDGETS, candidates, config_for, from_calls, from_totals, narrowed
from test_call_scope import Verdict, held_slots

from tierflow import Check
from tierflow.core.budget import Budgets, OpenReservation, open_reservations, release_stale
from tierflow.core.calls import Caller, RunSettings
from tierflow.core.config import load_config
from tierflow.core.errors import ProviderError
from tierflow.core.ledger import Ledger, lost_call, reservations
from tierflow.core.scope import CallScope
from tierflow.core.slots import TierSlots
from tierflow.testing.double import NO_USAGE, DoubleRequest, ProviderDouble, Reply

GUARD_S = 300
"""A guard against a hung test, never a measure of speed."""
NOW = datetime(2026, 11, 18, 12, 0, 1, tzinfo=UTC)
NEVER = Check("never_good_enough", lambda answer: ["it is never good enough"])


def lapse(ledger: Ledger, how: str, vault: Path) -> OpenReservation:
    """Every lease in flight over, as after a long pause; the lapse found by `--release-stale`, or by the next
    reservation (`Budgets.reserve_in`, another run's). Returns the call the lapse released, as it was held."""
    with ledger.transaction() as conn:
        conn.execute(reservations.update().where(reservations.c.open.is_(True)).values(lease_expires=0.0))
    (held,) = open_reservations(ledger)
    if how == "release_stale":
        (released,) = release_stale(ledger)
        assert released.id == held.id and released.lost
        return released
    config = load_config(vault)
    other = Budgets(config, ledger, run_id="other", flow="f", project="thesis")
    other.release(other.reserve(candidates(config)).id)
    assert [r["outcome"] for r in ledger.rows() if r["run_id"] == held.run_id] == ["lost"]
    return held


def assert_totals_match_a_rebuild(config_path: Path, ledger_url: str, run_id: str) -> dict[str, tuple[float, int]]:
    """The running totals, as the calls kept them, equal the calls summed and a fresh scope rebuilt from them."""
    config = load_config(config_path.parent.parent)
    ledger = Ledger(ledger_url)
    budgets = Budgets(config, ledger, run_id=run_id, flow="test", project="thesis")
    live = from_totals(budgets, NOW)
    assert live == from_calls(budgets, NOW)
    text = config_path.read_text()
    config_path.write_text(text.replace(BUDGETS, narrowed(BUDGETS, 'flow = "test"')))
    try:
        rebuilt = Budgets(load_config(config_path.parent.parent), ledger, run_id=run_id, flow="test", project="thesis")
        assert from_totals(rebuilt, NOW) == live
    finally:
        config_path.write_text(text)
    return live


# The exit paths of `CallScope`, each as the double brings it about once the holder wakes, and the rows they leave.
EXITS = {
    "answer": dict(reply=lambda r: Reply(text="ok"), rows=["ok"], raises=None),
    # Settled at its worst case: its reservation is kept, charged.
    "answer of unknown usage": dict(reply=lambda r: Reply(text="ok", usage=NO_USAGE), rows=["ok"], raises=None),
    # The answer and its informed retry, both billed, both failing the check.
    "check failure": dict(reply=lambda r: Reply(data={"label": "summative"}), rows=["check_failed"] * 2, raises=None),
    # Billed and never read whole, as after a timeout; the SDK retries twice: three attempts lost.
    "failure with billed attempts": dict(
        reply=lambda r: Reply(text="cut", fault="cut"), rows=["lost"] * 3, raises=ProviderError
    ),
    # Answered with an error: nothing billed, nothing recorded.
    "failure without billed attempts": dict(
        reply=lambda r: Reply(status=400, text="bad request"), rows=[], raises=ProviderError
    ),
    # Ctrl-C once the holder wakes, its answer not yet in: the attempt in flight is lost.
    "interruption": dict(reply=None, rows=["lost"], raises=KeyboardInterrupt),
}


@pytest.mark.parametrize("how", ["release_stale", "next reservation"])
@pytest.mark.parametrize("exit_path", list(EXITS))
def test_a_lapsed_holders_call_is_counted_once_whatever_ends_it(
    tmp_path, monkeypatch, double: ProviderDouble, ledger_url, exit_path, how
):
    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2026-11-18T12:00:00+00:00")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    vault = tmp_path / "vault"
    # A lease far longer than the test: its renewal never races the lapse the test makes.
    config_path = write_config(
        vault / ".tierflow" / "config.toml",
        f"ledger_url = {json.dumps(ledger_url)}\nreservation_lease_s = 36000\n"
        + anthropic_config(double, "[routing]\nescalate = false\n" + BUDGETS),
    )
    ledger = Ledger(ledger_url)
    case = EXITS[exit_path]
    lapsed: list[OpenReservation] = []
    woken = threading.Event()

    def paused_then_woken(request: DoubleRequest) -> Reply:
        if not lapsed:  # the first request: its holder pauses with it in flight, and its lease lapses
            lapsed.append(lapse(ledger, how, vault))
            if case["reply"] is None:
                os.kill(os.getpid(), signal.SIGINT)  # the holder wakes to Ctrl-C
                woken.wait(GUARD_S)
                return Reply(text="too late")
        return case["reply"](request)

    double.responder = paused_then_woken
    caller = Caller(RunSettings(vault=str(vault), run_id="paused", flow="test", project="thesis", use_cache=False))
    checked = dict(output=Verdict, checks=[NEVER]) if exit_path == "check failure" else {}
    try:
        if case["raises"] is None:
            caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Hello.", **checked)
        else:
            with pytest.raises(case["raises"]):
                caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Hello.")
    finally:
        woken.set()
    assert not double.errors, double.errors
    (released,) = lapsed

    rows = ledger.rows(run_id="paused")
    assert [r["outcome"] for r in rows] == case["rows"], [(r["outcome"], r["timestamp"]) for r in rows]
    # No row is the lapse's (dated when the call was reserved): each is the holder's own.
    assert all(r["timestamp"] != released.created for r in rows)
    assert open_reservations(ledger) == [] and held_slots(caller) == 0
    with ledger.reading() as conn:
        kept = conn.execute(sa.select(reservations.c.id).where(reservations.c.kept.is_(True))).scalars().all()
    assert kept == ([released.id] if exit_path == "answer of unknown usage" else [])
    live = assert_totals_match_a_rebuild(config_path, ledger_url, "paused")
    lost = case["rows"].count("lost")
    if exit_path.startswith("failure") or exit_path == "interruption":
        # Each attempt sent and never answered counts once, at the call's worst case; the lapse's guess, not at all.
        assert live["per-run"] == (round(lost * released.usd, 9), lost * released.tokens)
    elif exit_path == "answer of unknown usage":
        assert live["per-run"] == (round(released.usd, 9), released.tokens)
    else:
        billed = sum(r["cost_usd"] for r in rows)
        assert live["per-run"][0] == pytest.approx(billed) and live["per-run"][0] < released.usd * len(rows)


def test_a_lapsed_then_timed_out_call_is_counted_once(tmp_path, monkeypatch, ledger_url):
    """The reviewer's reproduction: the holder's lease lapsed and `--release-stale` recorded its call lost; it wakes,
    its request times out (one attempt sent, never answered), and `CallScope` writes its lost-attempt row as it
    releases the reservation. One lost row, one worst case."""
    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2026-11-18T12:00:00+00:00")
    config = config_for(tmp_path, ledger_url, BUDGETS)
    ledger = Ledger(ledger_url)
    budgets = Budgets(config, ledger, run_id="r1", flow="f", project="thesis")
    frozen = budgets.reserve(candidates(config, usd=0.07, tokens=900))
    with ledger.transaction() as conn:
        conn.execute(reservations.update().values(lease_expires=0.0))
    (released,) = release_stale(ledger)
    assert released.lost
    scope = CallScope(ledger, budgets, TierSlots(config, ledger))
    scope.reserved(frozen)
    scope.lost = [lost_call(call_record(run_id="r1", flow="f", project="thesis"), 0.07, 900)]
    scope.close(TimeoutError("read timed out"))
    (row,) = [r for r in ledger.rows() if r["outcome"] == "lost"]
    assert row["timestamp"] != released.created  # the holder's own row
    assert from_totals(budgets, NOW)["monthly"] == (0.07, 900) == from_calls(budgets, NOW)["monthly"]
    with ledger.reading() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(reservations)).scalar() == 0
