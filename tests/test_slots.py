"""Tier concurrency by slots in the ledger, and the call path's two ledger transactions.

`[tiers.<name>] concurrency = N` holds across every process that shares a ledger: a slot is taken in the
transaction before the model call (with the cache lookup and the budget reservation) and given back in the one
after it (with the call's row, its settlement and its cache entry).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import anthropic_config, fan_out_flow, write_config
from pydantic import BaseModel

from tierflow.core.calls import Caller, RunSettings
from tierflow.core.checks import Check
from tierflow.core.ledger import Ledger, tier_slots
from tierflow.core.slots import in_flight
from tierflow.testing.double import ProviderDouble, Reply, Together
from tierflow.testing.ledger import most_at_once

WORKER = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from tierflow.core.calls import Caller, RunSettings
    from tierflow.core.tokens import count_tokens

    vault, run_id, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    caller = Caller(RunSettings(vault=vault, run_id=run_id, flow="slots", use_cache=False))
    caller.provider("anthropic")  # import the SDK and build its client before the race starts
    count_tokens("warm the tokenizer")
    (Path(vault) / f"ready-{run_id}").touch()
    while not (Path(vault) / "go").exists():  # both processes start their calls together
        time.sleep(0.005)
    threads = [
        threading.Thread(
            target=caller.ask,
            kwargs=dict(phase="collate", complexity="low", system="Be brief.", prompt=f"{run_id} {i}", subject=str(i)),
        )
        for i in range(calls)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    """
)


def slots_vault(tmp_path: Path, double: ProviderDouble, name: str, concurrency: str) -> Path:
    vault = tmp_path / name
    # `concurrency` (and any table after it) goes right under [tiers.light].
    text = anthropic_config(double).replace(
        "max_output_tokens = 1024\n", f"max_output_tokens = 1024\n{concurrency}\n", 1
    )
    write_config(vault / ".tierflow" / "config.toml", text)
    return vault


def run_two_processes(vault: Path, calls_each: int) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(vault), f"p{n}", str(calls_each)]) for n in range(2)]
    deadline = time.monotonic() + 60
    while not all((vault / f"ready-p{n}").exists() for n in range(2)) and time.monotonic() < deadline:
        time.sleep(0.01)
    (vault / "go").touch()
    for p in procs:
        assert p.wait(timeout=120) == 0
    return Ledger.for_vault(vault).rows()


def test_two_processes_sharing_a_ledger_never_exceed_the_tier_limit(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    # The double answers the first few calls only once they are all in flight, so "at once" does not depend on
    # how fast a busy machine starts the processes' threads.
    with ProviderDouble(latency_s=0.25, hold=Together(3)) as double:
        # Without a limit the two processes' calls run side by side (so the checks below can fail) ...
        free = run_two_processes(slots_vault(tmp_path, double, "free", ""), 4)
        assert len(free) == 8 and most_at_once(free) > 2 and double.max_in_flight > 2
        double.reset()
        double.hold = Together(2)
        # ... with `concurrency = 2` never more than two at once, by the ledger's times and by the double's count.
        limited = run_two_processes(slots_vault(tmp_path, double, "limited", "concurrency = 2"), 4)
    assert len(limited) == 8 and {r["run_id"] for r in limited} == {"p0", "p1"}
    assert most_at_once(limited) <= 2, limited
    assert double.max_in_flight == 2
    # How fast slots hand over is measured by benchmarks/tier_throughput.py, not asserted here: a loaded machine
    # would fail a timed test for nothing tierflow did.
    with Ledger.for_vault(tmp_path / "limited").engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tier_slots)).scalar() == 0


def test_threads_of_one_process_keep_to_the_limit(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with ProviderDouble(latency_s=0.1, hold=Together(3)) as double:
        vault = slots_vault(tmp_path, double, "threads", "concurrency = 3")
        caller = Caller(RunSettings(vault=str(vault), run_id="threads", flow="slots", use_cache=False))
        threads = [
            threading.Thread(
                target=caller.ask,
                kwargs=dict(phase="collate", complexity="low", system="Be brief.", prompt=f"q{i}", subject=str(i)),
            )
            for i in range(9)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    rows = caller.ledger.rows()
    assert len(rows) == 9 and double.max_in_flight == 3 and most_at_once(rows) <= 3


def test_a_slot_held_by_a_dead_process_frees_when_its_lease_lapses(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with ProviderDouble() as double:
        vault = slots_vault(tmp_path, double, "crash", "concurrency = 1\n[limits]\nlease_s = 1.0")
        crash = textwrap.dedent(
            """
            import os, sys
            from tierflow.core.calls import Caller, RunSettings
            caller = Caller(RunSettings(vault=sys.argv[1], run_id="dead", flow="slots"))
            with caller.ledger.transaction() as conn:
                assert caller.slots.claim(conn, "light")
            os._exit(0)  # dies holding the slot, as a killed worker would
            """
        )
        subprocess.run([sys.executable, "-c", crash, str(vault)], check=True, timeout=60)
        caller = Caller(RunSettings(vault=str(vault), run_id="alive", flow="slots", use_cache=False))
        with caller.ledger.transaction() as conn:
            assert caller.slots.claim(conn, "light") is None  # the dead process's lease still runs
        t0 = time.monotonic()
        answer = caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="after the crash")
        waited = time.monotonic() - t0
    # It waited for the 1 s lease, not the 30 s default (the margin is for a busy machine).
    assert answer.text and 0.2 < waited < 20.0


def test_one_uncached_call_takes_two_ledger_transactions_and_a_cached_one_takes_one(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with ProviderDouble() as double:
        vault = slots_vault(tmp_path, double, "lean", "concurrency = 2")
        text = (vault / ".tierflow" / "config.toml").read_text() + "[budgets.run]\nusd = 1.0\n"
        (vault / ".tierflow" / "config.toml").write_text(text)
        caller = Caller(RunSettings(vault=str(vault), run_id="lean", flow="slots"))
        caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="warm up")  # engine, tokenizer
        begins: list[int] = []
        listener = lambda conn: begins.append(1)  # noqa: E731
        sa.event.listen(caller.ledger.engine, "begin", listener)
        try:
            caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="one uncached call")
            uncached = len(begins)
            begins.clear()
            caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="one uncached call")
            cached = len(begins)
        finally:
            sa.event.remove(caller.ledger.engine, "begin", listener)
    # Before the call: cache lookup + reservation + slot. After it: row + settlement + cache entry + slot back.
    assert uncached == 2
    assert cached == 1
    rows = caller.ledger.rows()
    assert [r["cached_result"] for r in rows] == [False, False, True]


@pytest.mark.parametrize("mechanism", ["prefect"])
def test_with_prefect_tag_limits_tierflow_takes_no_slots(tmp_path: Path, monkeypatch, mechanism: str):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with ProviderDouble(hold=Together(2)) as double:
        vault = slots_vault(tmp_path, double, "prefect", f'concurrency = 1\n[limits]\nmechanism = "{mechanism}"')
        caller = Caller(RunSettings(vault=str(vault), run_id="p", flow="slots", use_cache=False))
        threads = [
            threading.Thread(
                target=caller.ask, kwargs=dict(phase="collate", complexity="low", system="s", prompt=f"{i}")
            )
            for i in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # Outside a Prefect task run nothing limits these calls: the limit is Prefect's, on task runs.
    assert caller.slots.limits == {} and double.max_in_flight > 1


@pytest.mark.parametrize("warm", [True, False])
def test_a_phase_asks_prefect_about_its_tags_before_its_task_runs_start(
    tmp_path: Path, monkeypatch, prefect_harness, warm: bool
):
    """Prefect asks the server whether a task run's tags have a concurrency limit before the run starts, and
    every task run of a phase waits on that one answer. A phase asks first, before the server is busy taking
    its task runs' events (on a loaded machine the first call started 0.06 s after the phase, against 2-3 s)."""
    from prefect import task
    from prefect.client.orchestration import PrefectClient
    from prefect.task_runners import ThreadPoolTaskRunner

    import tierflow.core.phases as phases

    submitted = 0
    asked: list[tuple[list[str], int]] = []
    ask, submit = PrefectClient.increment_concurrency_slots_with_lease, ThreadPoolTaskRunner.submit

    async def counted(self, names, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        asked.append((list(names), submitted))
        return await ask(self, names, *args, **kwargs)

    def counted_submit(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        nonlocal submitted
        submitted += 1
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(PrefectClient, "increment_concurrency_slots_with_lease", counted)
    monkeypatch.setattr(ThreadPoolTaskRunner, "submit", counted_submit)
    if not warm:  # the baseline: shows that the order below is the phase's doing
        monkeypatch.setattr(phases, "warm_tag_limits", lambda task, settings: None)
    monkeypatch.setattr(phases, "TAG_ANSWER_REFRESH_S", 3600.0)  # the refresh has a test of its own

    @task
    def item(index):  # noqa: ANN001, ANN202
        return index

    phase = fan_out_flow(item, 12)

    settings = RunSettings(vault=str(tmp_path), run_id=f"warm-{warm}", flow="slots", profile="offline")
    assert phase(settings).results == list(range(12))
    ours = [before for names, before in asked if f"tag:tierflow-run:warm-{warm}" in names]
    assert len(ours) == 1  # Prefect remembers a tag set without limits: one question per phase either way
    assert (ours[0] == 0) if warm else (ours[0] >= 1)


def test_a_long_phase_asks_prefect_again_before_its_tag_answer_lapses(tmp_path: Path, monkeypatch, prefect_harness):
    """Prefect remembers a tag set without limits for five seconds; a task run starting after that asks the server
    itself and waits (2-7 s on a loaded machine, while the tier's slots sat idle). The fan-out asks again in the
    background while Prefect still remembers the answer, so it never lapses. Here the task runs wait until it has
    asked twice more."""
    from prefect import task
    from prefect.client.orchestration import PrefectClient, SyncPrefectClient
    from prefect.concurrency.services import _no_limits_cache

    import tierflow.core.phases as phases

    monkeypatch.setattr(phases, "TAG_ANSWER_REFRESH_S", 0.05)
    asked: list[bool] = []  # for each question about the phase's tags: whether Prefect still remembered the answer
    again = threading.Event()

    def noted(names) -> None:  # noqa: ANN001
        if "tag:tierflow-run:refresh" in names:
            asked.append(frozenset(names) in _no_limits_cache)
            if sum(asked) >= 2:
                again.set()

    ask, ask_sync = (
        PrefectClient.increment_concurrency_slots_with_lease,
        SyncPrefectClient.increment_concurrency_slots_with_lease,
    )

    async def counted(self, names, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        noted(names)
        return await ask(self, names, *args, **kwargs)

    def counted_sync(self, names, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        noted(names)
        return ask_sync(self, names, *args, **kwargs)

    monkeypatch.setattr(PrefectClient, "increment_concurrency_slots_with_lease", counted)
    monkeypatch.setattr(SyncPrefectClient, "increment_concurrency_slots_with_lease", counted_sync)

    @task
    def item(index):  # noqa: ANN001, ANN202
        return again.wait(120) and index

    phase = fan_out_flow(item, 3)

    settings = RunSettings(vault=str(tmp_path), run_id="refresh", flow="slots", profile="offline")
    assert phase(settings).results == [0, 1, 2]
    assert asked[0] is False and sum(asked) >= 2  # the first question before any answer, then refreshes


class Verdict(BaseModel):
    label: str


SUMMATIVE = Check("label_in_rubric", lambda v: [] if v.label == "summative" else ["not summative"])


def limited_caller(tmp_path: Path, double: ProviderDouble, name: str, budgets: str = "") -> Caller:
    """A caller whose three tiers each allow one call at a time, by the ledger mechanism."""
    text = anthropic_config(double, budgets)
    for limit in ("1024", "2048", "4096"):
        text = text.replace(f"max_output_tokens = {limit}\n", f"max_output_tokens = {limit}\nconcurrency = 1\n", 1)
    vault = tmp_path / name
    write_config(vault / ".tierflow" / "config.toml", text)
    return Caller(RunSettings(vault=str(vault), run_id=name, flow="slots", use_cache=False))


def held_during_calls(caller: Caller, double: ProviderDouble, answer) -> list[tuple[str, dict[str, int], set[str]]]:
    """For each model call: its model, the ledger's slots held while it was in flight, and the tiers whose local
    gate was shut (no other call of this process could have passed it)."""
    seen: list[tuple[str, dict[str, int], set[str]]] = []

    def responder(request):
        shut = set()
        for tier in ("light", "standard", "deep"):
            gate = caller.slots.local(tier)
            if gate.acquire(blocking=False):
                gate.release()
            else:
                shut.add(tier)
        seen.append((request.model, in_flight(caller.ledger), shut))
        return answer(request)

    double.responder = responder
    return seen


def test_a_downgraded_call_holds_the_slot_of_the_tier_it_runs_on_and_none_of_the_tier_asked_for(
    tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with ProviderDouble() as double:
        # Deep's worst case (4,096 output tokens of Opus) does not fit $0.05; standard's does.
        budget = '[budgets.run]\nusd = 0.05\npolicy = "downgrade"\nfloor = "light"\n'
        caller = limited_caller(tmp_path, double, "down", budget)
        seen = held_during_calls(caller, double, lambda r: Reply(data={"label": "summative"}))
        answer = caller.ask(phase="draft", complexity="high", system="s", prompt="Synthesise the week.", output=Verdict)
    assert answer.route.tier == "standard"
    assert seen == [("claude-sonnet-4-6", {"standard": 1}, {"standard"})]
    (row,) = caller.ledger.rows()
    assert (row["tier"], row["downgraded_from"]) == ("standard", "deep")
    assert in_flight(caller.ledger) == {}


def test_an_escalated_call_holds_each_attempts_own_tier_and_gives_the_first_back(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with ProviderDouble() as double:
        caller = limited_caller(tmp_path, double, "up")
        label = {"claude-haiku-4-5": "formative", "claude-sonnet-4-6": "summative"}
        seen = held_during_calls(caller, double, lambda r: Reply(data={"label": label[r.model]}))
        answer = caller.ask(
            phase="collate", complexity="low", system="s", prompt="Classify.", output=Verdict, checks=[SUMMATIVE]
        )
    assert answer.route.tier == "standard"
    assert seen == [
        ("claude-haiku-4-5", {"light": 1}, {"light"}),
        ("claude-haiku-4-5", {"light": 1}, {"light"}),  # the informed retry, on the same tier
        ("claude-sonnet-4-6", {"standard": 1}, {"standard"}),
    ]
    assert in_flight(caller.ledger) == {}


def shared_slots(tmp_path: Path, double: ProviderDouble, ledger_url: str, name: str) -> Caller:
    """A caller on `ledger_url` whose light tier allows one call at a time, on a lease far longer than the test."""
    text = (
        f"ledger_url = {json.dumps(ledger_url)}\n" + anthropic_config(double, "[limits]\nlease_s = 30.0\n")
    ).replace("max_output_tokens = 1024\n", "max_output_tokens = 1024\nconcurrency = 1\n", 1)
    vault = tmp_path / name
    write_config(vault / ".tierflow" / "config.toml", text)
    return Caller(RunSettings(vault=str(vault), run_id=name, flow="slots", use_cache=False))


def slot_holders(caller: Caller) -> list[str]:
    with caller.ledger.reading() as conn:
        return list(conn.execute(sa.select(tier_slots.c.holder)).scalars())


def test_a_worker_whose_clock_runs_ahead_does_not_take_a_live_slot(
    tmp_path: Path, monkeypatch, double, ledger_url: str
):
    first = shared_slots(tmp_path, double, ledger_url, "first")
    with first.ledger.transaction() as conn:
        assert first.slots.claim(conn, "light")
    # A second worker on the same ledger whose host clock runs 60 s ahead of the first's (and of the database's).
    import tierflow.core.clock as clock

    monkeypatch.setattr(clock, "epoch", lambda: time.time() + 60)
    monkeypatch.setattr(clock, "now", lambda: datetime.now(UTC) + timedelta(seconds=60))
    ahead = shared_slots(tmp_path, double, ledger_url, "ahead")
    with ahead.ledger.transaction() as conn:
        assert ahead.slots.claim(conn, "light") is None  # the first worker's lease runs by the database's clock
    assert len(slot_holders(first)) == 1 and in_flight(first.ledger) == {"light": 1}


def test_giving_back_a_lapsed_slot_never_frees_the_slot_that_replaced_it(tmp_path: Path, double, ledger_url: str):
    first = shared_slots(tmp_path, double, ledger_url, "first")
    second = shared_slots(tmp_path, double, ledger_url, "second")
    with first.ledger.transaction() as conn:
        mine = first.slots.claim(conn, "light")
        conn.execute(tier_slots.update().values(lease_until=0.0))  # the first holder stalled past its lease
    with second.ledger.transaction() as conn:
        theirs = second.slots.claim(conn, "light")  # takes the lapsed slot (on SQLite, under the same row id)
    assert theirs
    with first.ledger.transaction() as conn:
        first.slots.release(conn, mine)  # the first holder wakes up and gives back what it thinks it holds
    assert len(slot_holders(second)) == 1 and in_flight(second.ledger) == {"light": 1}
    with second.ledger.transaction() as conn:
        second.slots.release(conn, theirs)
    assert slot_holders(second) == []


def test_a_call_waiting_for_a_slot_tries_again_the_moment_this_process_gives_one_back(
    tmp_path: Path, monkeypatch, double, ledger_url: str
):
    """A call past its tier's gate whose slot is held (here by this process, outside the gate, as a downgraded
    call's slot is) is woken when the slot's give-back commits, not at its next poll: with polls an hour apart
    it still takes the slot on its very next try."""
    import tierflow.core.calls as calls_module

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setattr(calls_module, "POLL_S", (3600.0, 3600.0))
    caller = shared_slots(tmp_path, double, ledger_url, "waiter")
    claim = caller.slots.claim
    tries: list[tuple[str, bool]] = []
    refused = threading.Event()

    def counted(conn, tier):  # noqa: ANN001, ANN202
        token = claim(conn, tier)
        tries.append((threading.current_thread().name, token is not None))
        if token is None:
            refused.set()
        return token

    monkeypatch.setattr(caller.slots, "claim", counted)
    with caller.ledger.transaction() as conn:
        held = claim(conn, "light")
    assert held
    answers = []
    waiter = threading.Thread(
        target=lambda: answers.append(caller.ask(phase="collate", complexity="low", system="s", prompt="after you")),
        name="waiter",
        daemon=True,
    )
    waiter.start()
    assert refused.wait(60)  # the waiter found the tier full and waits
    with caller.ledger.transaction() as conn:
        caller.slots.release(conn, held)
    caller.slots.forget(held)  # the give-back has committed: this is what wakes the waiter
    waiter.join(120)  # a guard against a hang only: without the wake-up the waiter would sleep for an hour
    assert not waiter.is_alive() and answers[0].text
    assert tries == [("waiter", False), ("waiter", True)]
    assert [r["run_id"] for r in caller.ledger.rows()] == ["waiter"] and slot_holders(caller) == []


def test_an_answered_calls_slot_goes_to_the_next_call_before_its_verdict_and_settlement(
    tmp_path: Path, monkeypatch, double, ledger_url: str
):
    """With one slot, the second call is sent while the first call's check still runs: the first call handed its
    slot over when its answer arrived, where it used to give it back only in the transaction that settles it."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    caller = shared_slots(tmp_path, double, ledger_url, "handover")
    sent = {"first": threading.Event(), "second": threading.Event()}
    order: list[str] = []

    def responder(request):  # noqa: ANN001, ANN202
        name = "second" if "second" in request.text else "first"
        order.append(f"{name} sent")
        sent[name].set()
        return Reply(data={"label": "summative"})

    def waits_for_the_second(verdict: Verdict) -> list[str]:
        # Only the first call's check waits. The guard only keeps a regression from hanging: without the
        # hand-over the second call could not be sent before this check returns, and the order below fails.
        if threading.current_thread().name == "first" and sent["second"].wait(60):
            order.append("first's check returns")
        return []

    double.responder = responder
    check = Check("waits_for_the_second", waits_for_the_second)

    def ask(prompt: str) -> None:
        caller.ask(phase="collate", complexity="low", system="s", prompt=prompt, output=Verdict, checks=[check])

    first = threading.Thread(target=ask, args=("first",), name="first", daemon=True)
    first.start()
    assert sent["first"].wait(60)
    second = threading.Thread(target=ask, args=("second",), name="second", daemon=True)
    second.start()
    first.join(120)
    second.join(120)
    assert order == ["first sent", "second sent", "first's check returns"]
    rows = caller.ledger.rows()
    assert double.max_in_flight == 1 and len(rows) == 2 and most_at_once(rows) <= 1
    assert slot_holders(caller) == [] and in_flight(caller.ledger) == {}


def test_waiting_for_the_ledger_an_urgent_transaction_goes_ahead_of_the_ordinary_ones():
    """This process's SQLite writers queue at one gate, in arrival order, except that an urgent one (the
    transaction before a model call) goes ahead of every ordinary one waiting (settlements, lease renewals)."""
    from tierflow.core.ledger import WriterGate

    gate = WriterGate()
    order: list[str] = []

    def write(name: str, urgent: bool) -> threading.Thread:
        def body() -> None:
            with gate.held(urgent=urgent):
                order.append(name)

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        return thread

    def until(waiting: tuple[int, int]) -> None:
        deadline = time.monotonic() + 60  # a guard against a hang, not a timing assertion
        while gate.waiting() != waiting:
            assert time.monotonic() < deadline, gate.waiting()
            time.sleep(0.001)

    with gate.held():
        with gate.held():  # the holder may enter again
            pass
        threads = [write("settle 1", False)]
        until((0, 1))
        threads.append(write("settle 2", False))
        until((0, 2))
        threads.append(write("claim 1", True))
        until((1, 2))
        threads.append(write("claim 2", True))
        until((2, 2))
    for thread in threads:
        thread.join(60)
    assert order == ["claim 1", "claim 2", "settle 1", "settle 2"] and gate.waiting() == (0, 0)
    with gate.held():  # free again
        assert order


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
def test_the_next_calls_claim_goes_ahead_of_the_answered_calls_settlement(
    tmp_path: Path, monkeypatch, double, ledger_url: str
):
    """With one slot, the call waiting for it and the call that has just answered both queue for the ledger: the
    waiting call's reservation and claim go first, so the freed slot does not sit idle behind the settlement."""
    from contextlib import contextmanager

    from tierflow.core.ledger import writer_gate

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    caller = shared_slots(tmp_path, double, ledger_url, "urgent")
    entered: list[tuple[str, bool]] = []
    transaction = Ledger.transaction

    @contextmanager
    def noted(ledger, **options):  # noqa: ANN001, ANN003, ANN202
        with transaction(ledger, **options) as conn:
            entered.append((threading.current_thread().name, options.get("urgent", False)))
            yield conn

    monkeypatch.setattr(Ledger, "transaction", noted)
    sent, answer = threading.Event(), threading.Event()

    def responder(request):  # noqa: ANN001, ANN202
        if "first" in request.text:
            sent.set()
            assert answer.wait(60)
        return Reply(text="ok")

    double.responder = responder

    def ask(prompt: str) -> None:
        caller.ask(phase="collate", complexity="low", system="s", prompt=prompt)

    first = threading.Thread(target=ask, args=("first",), name="first", daemon=True)
    first.start()
    assert sent.wait(60)
    second = threading.Thread(target=ask, args=("second",), name="second", daemon=True)
    second.start()  # it waits for the slot at this process's gate
    gate = writer_gate(caller.ledger.url)
    with gate.held():  # the ledger is busy: both transactions queue behind this
        answer.set()
        deadline = time.monotonic() + 60  # a guard against a hang only
        while gate.waiting()[0] < 1 or gate.waiting()[1] < 1:
            assert time.monotonic() < deadline, gate.waiting()
            time.sleep(0.001)
        mark = len(entered)
    first.join(60)
    second.join(60)
    after = entered[mark:]
    assert after[0] == ("second", True) and ("first", False) in after
    rows = caller.ledger.rows()
    assert len(rows) == 2 and double.max_in_flight == 1 and slot_holders(caller) == []


def test_a_sqlite_ledger_checkpoints_its_log_in_the_background_not_inside_a_write(tmp_path: Path, monkeypatch):
    """SQLite's own checkpoint runs inside the commit that takes the log past 1000 pages, and this process's other
    writers (the next call's claim among them) queue behind it. Here no connection checkpoints on commit, and a
    background thread checkpoints every `CHECKPOINT_EVERY` writes."""
    import tierflow.core.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "CHECKPOINT_EVERY", 2)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    with ledger.reading() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    background = ledger_module.checkpointer(ledger.url, ledger.engine)
    before = background.done
    for n in range(4):
        with ledger.transaction() as conn:
            conn.execute(tier_slots.insert(), {"tier": "light", "holder": f"h{n}", "acquired": "", "lease_until": 0.0})
    deadline = time.monotonic() + 60  # a guard against a hang only
    while background.done == before:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with ledger.reading() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tier_slots)).scalar() == 4
