"""Every billed answer is one ledger row, its reservation settled and its tier slot given back, whatever happens
after it arrives: a check that raises, an error while handling the answer, a settle transaction whose connection
drops, a timeout raised into the thread between the reservation and the call (the real SDK on the wire double)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import anthropic_config, gone, write_config
from prefect._internal.concurrency.cancellation import CancelledError
from pydantic import BaseModel, field_validator

from tierflow import Check
from tierflow.core.budget import open_reservations
from tierflow.core.calls import Caller, RunSettings
from tierflow.core.errors import ProviderError
from tierflow.core.ledger import tier_slots
from tierflow.testing.double import ProviderDouble, Reply


class Verdict(BaseModel):
    label: str


class Fussy(BaseModel):
    """An output model whose own validator has a bug: it raises something pydantic does not turn into errors."""

    label: str

    @field_validator("label")
    @classmethod
    def _broken(cls, value: str) -> str:
        raise RuntimeError("a bug in the caller's validator")


def by_key(verdict: Verdict) -> list[str]:
    return {"summative": []}[verdict.label + "-typo"]  # raises KeyError, as a buggy check would


RAISES = Check("label_in_rubric", by_key)


def scoped_caller(
    tmp_path: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch, concurrency: int, ledger_url: str = ""
) -> Caller:
    """Light allows `concurrency` calls at once; no escalation, so each ask stays on light."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    text = anthropic_config(double, "[routing]\nescalate = false\n").replace(
        "max_output_tokens = 1024\n", f"max_output_tokens = 1024\nconcurrency = {concurrency}\n", 1
    )
    if ledger_url:
        text = f"ledger_url = {json.dumps(ledger_url)}\n" + text
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", text)
    return Caller(RunSettings(vault=str(vault), run_id="scope", flow="test", use_cache=False))


def held_slots(caller: Caller) -> int:
    with caller.ledger.reading() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(tier_slots)).scalar() or 0


def in_thread(work) -> list:
    """Run `work` in a thread; a generous join is only a guard against a hung tier, never a measure of speed."""
    done: list = []
    thread = threading.Thread(target=lambda: done.append(work()), daemon=True)
    thread.start()
    thread.join(timeout=300)
    assert not thread.is_alive(), "the tier hung: a slot or a gate was never given back"
    return done


def ask(caller: Caller, prompt: str, **kw):
    return caller.ask(phase="collate", complexity="low", system="Be brief.", prompt=prompt, **kw)


def test_a_check_that_raises_is_a_failed_check_and_the_tier_stays_free(tmp_path, monkeypatch, double):
    double.responder = lambda r: Reply(data={"label": "summative"})
    caller = scoped_caller(tmp_path, double, monkeypatch, concurrency=2)

    def three_raising_then_one_more():
        kept = []
        for n in range(3):  # one more than the tier's slots: each would leak one if the check's error escaped
            try:
                kept.append(ask(caller, f"Classify {n}.", output=Verdict, checks=[RAISES]))
            except KeyError:
                kept.append(None)
        return kept, ask(caller, "And one more.")

    [(kept, last)] = in_thread(three_raising_then_one_more)
    assert [k and k.checks_failed for k in kept] == [("label_in_rubric raised KeyError",)] * 3
    assert last.text
    rows = caller.ledger.rows()
    assert len(rows) == len(double.model_calls()) == 3 * 2 + 1  # each answer and its informed retry, then one
    assert [(r["outcome"], r["checks_failed"]) for r in rows[:6]] == [
        ("check_failed", "label_in_rubric raised KeyError")
    ] * 6
    assert open_reservations(caller.ledger) == [] and held_slots(caller) == 0


def test_an_error_while_handling_a_billed_answer_is_recorded_as_error(tmp_path, monkeypatch, double):
    double.responder = lambda r: Reply(data={"label": "summative"})
    caller = scoped_caller(tmp_path, double, monkeypatch, concurrency=1)
    with pytest.raises(RuntimeError, match="a bug in the caller's validator"):
        ask(caller, "Classify.", output=Fussy)
    (row,) = caller.ledger.rows()
    assert row["outcome"] == "error" and row["usage_known"] and row["output_tokens"] > 0 and row["cost_usd"] > 0
    assert open_reservations(caller.ledger) == [] and held_slots(caller) == 0
    [answer] = in_thread(lambda: ask(caller, "The next call on the tier."))
    assert answer.text and len(caller.ledger.rows()) == len(double.model_calls()) == 2


def test_a_settle_whose_connection_drops_once_is_tried_again_and_the_row_lands(
    tmp_path, monkeypatch, double, ledger_url
):
    caller = scoped_caller(tmp_path, double, monkeypatch, concurrency=1, ledger_url=ledger_url)
    dropped: list[str] = []

    def drop_once(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ANN202
        if statement.lstrip().upper().startswith("INSERT INTO CALLS") and not dropped:
            dropped.append(statement)
            raise gone(conn.dialect)

    sa.event.listen(caller.ledger.engine, "before_cursor_execute", drop_once)
    try:
        answer = ask(caller, "Summarise.")
    finally:
        sa.event.remove(caller.ledger.engine, "before_cursor_execute", drop_once)
    assert dropped and answer.text
    (row,) = caller.ledger.rows()
    assert row["outcome"] == "ok" and row["output_tokens"] > 0 and len(double.model_calls()) == 1
    assert open_reservations(caller.ledger) == [] and held_slots(caller) == 0
    [after] = in_thread(lambda: ask(caller, "The next call on the tier."))
    assert after.text


def test_a_release_that_commits_before_its_connection_drops_records_its_lost_attempts_once(
    tmp_path, monkeypatch, double, ledger_url
):
    """The call failed after sending three attempts (billed, never read whole). Its closing transaction, which
    records them and drops the reservation, commits, and then the connection drops before the acknowledgement: the
    retry finds them in the ledger and writes nothing twice."""
    double.responder = lambda r: Reply(text="cut", fault="cut")
    caller = scoped_caller(tmp_path, double, monkeypatch, concurrency=1, ledger_url=ledger_url)
    release = caller.budgets.release
    dropped: list[int] = []

    def committed_then_dropped(reservation_id: int, **kw) -> None:  # noqa: ANN003
        release(reservation_id, **kw)
        if not dropped:
            dropped.append(reservation_id)
            raise sa.exc.OperationalError(
                "COMMIT", {}, Exception("server closed the connection unexpectedly"), connection_invalidated=True
            )

    monkeypatch.setattr(caller.budgets, "release", committed_then_dropped)
    with pytest.raises(ProviderError):
        ask(caller, "Summarise.")
    assert dropped
    rows = caller.ledger.rows()
    assert [r["outcome"] for r in rows] == ["lost"] * len(double.model_calls()) == ["lost"] * 3
    assert open_reservations(caller.ledger) == [] and held_slots(caller) == 0


def test_a_timeout_raised_between_the_reservation_and_the_call_leaks_nothing(tmp_path, monkeypatch, double):
    """Prefect times a sync task out by raising its CancelledError (a BaseException) into the task's thread, at
    whatever line it is on: here, just after the reservation and the slot were committed."""
    caller = scoped_caller(tmp_path, double, monkeypatch, concurrency=1)
    renew = caller.budgets.keep_alive

    def timed_out(reservation_id: int) -> None:
        raise CancelledError()

    monkeypatch.setattr(caller.budgets, "keep_alive", timed_out)
    with pytest.raises(CancelledError):
        ask(caller, "Summarise.")
    assert double.model_calls() == [] and caller.ledger.rows() == []
    assert open_reservations(caller.ledger) == [] and held_slots(caller) == 0
    monkeypatch.setattr(caller.budgets, "keep_alive", renew)
    [after] = in_thread(lambda: ask(caller, "The next call on the tier."))
    assert after.text and len(caller.ledger.rows()) == 1


def test_a_timeout_raised_as_the_answer_arrives_leaves_the_answers_row(tmp_path, monkeypatch, double):
    """Prefect's timeout raised into the task's thread just after the provider answered, as the call hands its slot
    on: the answer is paid for, so its row is written (`error`, its tokens known) and settles the reservation, never
    a reservation released with no row in its place (the call then counted nowhere)."""
    caller = scoped_caller(tmp_path, double, monkeypatch, concurrency=1)
    hand_over = caller.slots.hand_over

    def timed_out(tier: str, slot: str | None) -> None:
        raise CancelledError()

    monkeypatch.setattr(caller.slots, "hand_over", timed_out)
    with pytest.raises(CancelledError):
        ask(caller, "Summarise.")
    assert len(double.model_calls()) == 1
    (row,) = caller.ledger.rows()
    assert row["outcome"] == "error" and row["usage_known"] and row["output_tokens"] > 0
    assert open_reservations(caller.ledger) == [] and held_slots(caller) == 0
    monkeypatch.setattr(caller.slots, "hand_over", hand_over)
    [after] = in_thread(lambda: ask(caller, "The next call on the tier."))
    assert after.text and len(caller.ledger.rows()) == len(double.model_calls()) == 2
