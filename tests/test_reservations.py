"""Budget reservations cannot leak: each has a lease its holder renews, and a dead holder's lapses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import anthropic_config, write_config
from test_budgets import PROMPT, ask, one_call_worst_case
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.core.budget import HOST, open_reservations
from tierflow.core.calls import Caller, RunSettings
from tierflow.core.ledger import Ledger
from tierflow.testing.double import Reply

REPO = Path(__file__).resolve().parents[1]
SLOW = PROMPT + " Take your time."

HOLDER = """
import sys
from tierflow.core.calls import Caller, RunSettings
c = Caller(RunSettings(vault=sys.argv[1], config_path=sys.argv[2], run_id="killed", flow="test", use_cache=False))
c.ask(phase="collate", complexity="low", system="Be brief.", prompt=sys.argv[3])
"""


@pytest.fixture
def slow_double(double):
    """The double answers SLOW prompts only once the test lets it (or after a minute); others at once."""
    let_go = threading.Event()

    def responder(request):
        if "Take your time." in request.last_user_text:
            let_go.wait(60)
        return Reply(text="ok")

    double.responder = responder
    yield double
    let_go.set()


def shared_vault(tmp_path: Path, double, ledger_url: str, *, lease_s: float, cap: float) -> Path:
    """A vault on the shared ledger with a daily cap; returns its config file."""
    return write_config(
        tmp_path / "vault" / ".tierflow" / "config.toml",
        f"ledger_url = {json.dumps(ledger_url)}\nreservation_lease_s = {lease_s}\n"
        + anthropic_config(double, f'[budgets.daily]\nusd = {cap!r}\nperiod = "day"\npolicy = "halt"\n'),
    )


def start_holder(config: Path) -> subprocess.Popen:
    """A process making one SLOW call: it reserves, then waits on the double mid-call."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(config.parent.parent), str(config), SLOW],
        cwd=REPO,
        env={**os.environ, "ANTHROPIC_API_KEY": "k"},
    )


def held_by(ledger: Ledger, pid: int, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = [r for r in open_reservations(ledger) if r.holder_pid == pid]
        if mine:
            return mine[0]
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never reserved")


def caller(config: Path) -> Caller:
    c = Caller(RunSettings(vault=str(config.parent.parent), config_path=str(config), run_id="next", flow="test"))
    c.budgets.max_wait_s = 15  # without leases the dead holder's reservation would make this call wait in vain
    return c


def test_a_call_killed_mid_flight_holds_no_budget_past_its_lease(tmp_path, monkeypatch, slow_double, ledger_url):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    lease = 3.0  # renewed every second; short, so the test is quick, with room for a busy machine
    # Room for one call in flight, not two: the next call must wait for the first reservation to go.
    cap = 1.5 * one_call_worst_case(tmp_path, slow_double)
    config = shared_vault(tmp_path, slow_double, ledger_url, lease_s=lease, cap=cap)
    ledger = Ledger(ledger_url)
    holder = start_holder(config)
    try:
        first = held_by(ledger, holder.pid)
        assert first.holder_host == HOST and first.state == "held"
        time.sleep(2 * lease)  # longer than the lease: the holder renews it while its call is in flight
        (renewed,) = [r for r in open_reservations(ledger) if r.id == first.id]
        assert renewed.age_s >= 2 * lease and renewed.lease_left_s > 0 and renewed.state == "held"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    killed_at = time.monotonic()

    answer = ask(caller(config))  # waits for the dead holder's lease to lapse, releases it, then reserves
    waited = time.monotonic() - killed_at
    assert answer.text == "ok" and waited < lease + 10  # not the 15 s it may wait: the lapsed lease freed it
    assert open_reservations(ledger) == []
    # The dead call's request had reached the provider, which may bill it: the lapse records it as lost, at its
    # worst case, and the budget counts it.
    rows = ledger.rows()
    assert [(r["run_id"], r["outcome"]) for r in rows] == [("killed", "lost"), ("next", "ok")]
    assert rows[0]["cost_usd"] == pytest.approx(first.usd) and sum(r["cost_usd"] for r in rows) <= cap


def test_release_stale_frees_a_dead_holders_reservation_at_once(tmp_path, monkeypatch, slow_double, ledger_url):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    cap = 1.5 * one_call_worst_case(tmp_path, slow_double)
    config = shared_vault(tmp_path, slow_double, ledger_url, lease_s=600, cap=cap)
    ledger = Ledger(ledger_url)
    holder = start_holder(config)
    try:
        reservation = held_by(ledger, holder.pid)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    vault = str(config.parent.parent)
    cli = CliRunner()

    listed = cli.invoke(app, ["budget", "reservations", "--vault", vault, "--format", "json"], catch_exceptions=False)
    (row,) = json.loads(listed.output)
    assert row["id"] == reservation.id and row["run_id"] == "killed" and row["phase"] == "collate"
    assert row["holder_pid"] == holder.pid and row["holder_host"] == HOST and row["state"] == "holder gone"
    assert row["lease_left_s"] > 500  # not expired: only the vanished holder makes it stale

    table = cli.invoke(
        app, ["budget", "reservations", "--vault", vault], catch_exceptions=False, env={"COLUMNS": "200"}
    )
    assert "killed" in table.output and "holder gone" in table.output and "--release-stale" in table.output

    released = cli.invoke(app, ["budget", "reservations", "--vault", vault, "--release-stale"], catch_exceptions=False)
    assert released.exit_code == 0 and "Released 1 stale reservation(s)." in released.output
    assert open_reservations(ledger) == []
    c = caller(config)
    c.budgets.max_wait_s = 0.5  # nothing to wait for any more
    assert ask(c).text == "ok"


def test_release_stale_records_a_dead_holders_sent_call_as_lost_at_its_worst_case(
    tmp_path, monkeypatch, slow_double, ledger_url
):
    """The provider has the request of a call whose holder was killed, and may bill it: releasing the reservation
    keeps it counted, as a `lost` row at its worst case (as a timeout's), and says so."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    cap = 10 * one_call_worst_case(tmp_path, slow_double)
    config = shared_vault(tmp_path, slow_double, ledger_url, lease_s=600, cap=cap)
    ledger = Ledger(ledger_url)
    holder = start_holder(config)
    try:
        reservation = held_by(ledger, holder.pid)
        deadline = time.monotonic() + 60
        while not slow_double.model_calls():  # sent: the double holds it until the test lets it go
            assert time.monotonic() < deadline, "the holder never sent its call"
            time.sleep(0.05)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    vault = str(config.parent.parent)
    released = CliRunner().invoke(
        app, ["budget", "reservations", "--vault", vault, "--release-stale"], catch_exceptions=False
    )
    assert released.exit_code == 0 and "Released 1 stale reservation(s)" in released.output
    assert "1 call sent before its holder stopped is recorded as lost" in released.output
    (row,) = ledger.rows(run_id="killed")
    assert (row["outcome"], row["flow"], row["phase"], row["tier"], row["project"]) == (
        "lost",
        "test",
        "collate",
        "light",
        None,
    )
    assert row["model"] == slow_double.model_calls()[0].model and row["complexity"] == "low"
    assert row["cost_usd"] == pytest.approx(reservation.usd) and not row["usage_known"]
    (state,) = caller(config).budgets.states()
    assert state.reserved_usd == 0 and state.spent_usd == pytest.approx(reservation.usd)


def test_a_live_holders_reservation_is_never_released(tmp_path, ledger_url, double):
    """--release-stale leaves a reservation whose holder lives and whose lease runs."""
    config = shared_vault(tmp_path, double, ledger_url, lease_s=600, cap=1.0)
    c = Caller(RunSettings(vault=str(config.parent.parent), config_path=str(config), run_id="live", flow="test"))
    routed, request = c.build(phase="collate", complexity="low", system="Be brief.", prompt=PROMPT)
    reservation = c.budgets.reserve([(routed, c.estimate(routed, request))])
    result = CliRunner().invoke(
        app, ["budget", "reservations", "--vault", str(config.parent.parent), "--release-stale", "-f", "json"]
    )
    (row,) = json.loads(result.output)
    assert row["id"] == reservation.id and row["state"] == "held" and row["holder_pid"] == os.getpid()
    assert [r.id for r in open_reservations(c.ledger)] == [reservation.id]


BATCH_HOLDER = """
import sys
from pydantic import BaseModel
from tierflow.core.batch import BatchCall, run_batch
from tierflow.core.calls import Caller, RunSettings

class Verdict(BaseModel):
    label: str

c = Caller(RunSettings(vault=sys.argv[1], config_path=sys.argv[2], run_id="batched", flow="test"))
calls = [BatchCall(key=f"s{i}", subject=f"s{i}", system="Be brief.", prompt=f"Classify {i}.", output=Verdict)
         for i in range(2)]
assert run_batch(c, calls, phase="collate", complexity="low", wait=False).pending
"""


def test_release_stale_keeps_a_pending_batchs_reservations_and_names_its_run(tmp_path, monkeypatch, double, ledger_url):
    """A `--no-wait` batch run exits with its batch at the provider: its reservations (holder gone) stay held until
    the batch is collected, and the listing names the run to resume instead of offering to release them."""
    from pydantic import BaseModel

    from tierflow.core.batch import BatchCall, run_batch

    class Verdict(BaseModel):
        label: str

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda r: Reply(data={"label": "formative"})
    double.batch_polls_until_done = 3  # still running when the submitting run exits
    config = shared_vault(tmp_path, double, ledger_url, lease_s=600, cap=1.0)
    vault = str(config.parent.parent)
    subprocess.run(
        [sys.executable, "-c", BATCH_HOLDER, vault, str(config)],
        cwd=REPO,
        env={**os.environ, "ANTHROPIC_API_KEY": "k"},
        check=True,
        timeout=180,
    )
    ledger = Ledger(ledger_url)
    held = open_reservations(ledger)
    assert len(held) == 2 and {r.state for r in held} == {"batch pending"}
    cli = CliRunner()

    released = cli.invoke(app, ["budget", "reservations", "--vault", vault, "--release-stale", "-f", "json"])
    assert {(row["run_id"], row["state"]) for row in json.loads(released.output)} == {("batched", "batch pending")}
    assert [r.id for r in open_reservations(ledger)] == [r.id for r in held]
    table = cli.invoke(app, ["budget", "reservations", "--vault", vault], env={"COLUMNS": "80"})
    # The whole command, --vault included, on one line however narrow the terminal: one a user can paste.
    resume = f"tierflow resume batched --vault {Path(vault).resolve()}"
    assert f"batch pending at the provider: `{resume}` collects it" in table.output
    assert "--release-stale" not in table.output

    c = Caller(RunSettings(vault=vault, config_path=str(config), run_id="batched", flow="test"))
    calls = [
        BatchCall(key=f"s{i}", subject=f"s{i}", system="Be brief.", prompt=f"Classify {i}.", output=Verdict)
        for i in range(2)
    ]
    collected = run_batch(c, calls, phase="collate", complexity="low", poll_interval=0.01)
    assert sorted(collected.answers) == ["s0", "s1"] and not collected.submitted  # collected, not sent again
    assert open_reservations(ledger) == []
    assert [r["outcome"] for r in ledger.rows(run_id="batched")] == ["ok", "ok"]


FLOW_WORKER = """
import sys
from datetime import date
from tierflow.flows.reading_notes import reading_notes
reading_notes(vault=sys.argv[1], since=date.fromisoformat(sys.argv[2]), until=date.fromisoformat(sys.argv[3]),
              run_id=sys.argv[4])
"""


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_flow_killed_mid_call_holds_no_budget_and_resume_pays_only_for_what_was_not_done(
    reading_vault, double, monkeypatch
):
    from conftest import READING_WEEK
    from prefect.settings import PREFECT_API_URL
    from responders import schema_name, skilled

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    answer = skilled()
    let_go = threading.Event()

    def responder(request):
        if schema_name(request) == "synthesisout":
            let_go.wait(60)  # the synthesis call hangs until the process making it is killed
        return answer(request)

    double.responder = responder
    lease = 3.0
    config = reading_vault / ".tierflow" / "config.toml"
    config.write_text(
        f"reservation_lease_s = {lease}\n"
        + anthropic_config(double, '[budgets.week]\nusd = 5\nperiod = "week"\n')
        + config.read_text()
    )
    ledger = Ledger.for_vault(reading_vault)
    run_id = "20261118-060000-killed"
    env = {**os.environ, "ANTHROPIC_API_KEY": "k", "PREFECT_API_URL": PREFECT_API_URL.value()}
    worker = subprocess.Popen(
        [sys.executable, "-c", FLOW_WORKER, str(reading_vault), *READING_WEEK, run_id], cwd=REPO, env=env
    )
    try:
        deadline = time.monotonic() + 120
        while not [r for r in open_reservations(ledger) if r.phase == "synthesise"]:
            assert time.monotonic() < deadline and worker.poll() is None, "the flow never reached synthesis"
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        let_go.set()
    killed_at = time.monotonic()
    (held,) = open_reservations(ledger)
    assert held.run_id == run_id and held.holder_pid == worker.pid and held.state == "holder gone"
    collated = [c for c in double.model_calls() if schema_name(c) == "collationout"]
    assert len(collated) == 8

    # Once the lease is over, the next reservation attempt, by any process, frees the dead call's budget.
    time.sleep(max(0.0, lease + 0.5 - (time.monotonic() - killed_at)))
    assert [r.state for r in open_reservations(ledger)] == ["expired"]
    calls_before = len(double.model_calls())
    resumed = CliRunner().invoke(app, ["resume", run_id, "--vault", str(reading_vault)], catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert open_reservations(ledger) == []
    new = [schema_name(c) for c in double.model_calls()[calls_before:]]
    assert "collationout" not in new and new.count("synthesisout") == 1 and "draftout" in new
    rows = ledger.rows(run_id=run_id)
    paid = [r for r in rows if not r["cached_result"]]
    collate = [r["cached_result"] for r in rows if r["phase"] == "collate"]
    assert collate == [False] * 8 + [True] * 8  # collated before the kill; resumed from the answer cache
    # The killed synthesis call had been sent: its lapsed lease recorded it as lost, at its worst case.
    assert [r["outcome"] for r in rows if r["phase"] == "synthesise"] == ["lost", "ok"]
    (state,) = Caller(RunSettings(vault=str(reading_vault), run_id=run_id, flow="reading-notes")).budgets.states()
    assert state.reserved_usd == 0 and state.spent_usd == pytest.approx(sum(r["cost_usd"] for r in paid))


def test_a_paused_holder_whose_call_was_recorded_lost_is_billed_once_when_its_answer_comes(
    tmp_path, monkeypatch, double, ledger_url
):
    """A suspended laptop or SIGSTOP: the holder's lease lapses, its call is released and recorded as lost; then
    the process wakes up, the answer arrives and is settled. The lost row goes: one row, one cost, per call."""
    import sqlalchemy as sa

    from tierflow.core.budget import release_stale
    from tierflow.core.ledger import reservations

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    let_go = threading.Event()

    def responder(request):
        if "Take your time." in request.last_user_text:
            let_go.wait(120)
        return Reply(text="ok")

    double.responder = responder
    cap = 10 * one_call_worst_case(tmp_path, double)
    config = shared_vault(tmp_path, double, ledger_url, lease_s=600, cap=cap)
    ledger = Ledger(ledger_url)
    holder = start_holder(config)
    try:
        reservation = held_by(ledger, holder.pid)
        deadline = time.monotonic() + 60
        while not double.model_calls():
            assert time.monotonic() < deadline, "the holder never sent its call"
            time.sleep(0.05)
        holder.send_signal(signal.SIGSTOP)
        with ledger.engine.begin() as conn:  # its lease over, as after a long pause
            conn.execute(sa.update(reservations).values(lease_expires=0.0))
        (released,) = release_stale(ledger)
        assert released.id == reservation.id and released.lost
        assert [r["outcome"] for r in ledger.rows(run_id="killed")] == ["lost"]
        holder.send_signal(signal.SIGCONT)
        let_go.set()
        assert holder.wait(120) == 0
    finally:
        let_go.set()
        if holder.poll() is None:
            holder.send_signal(signal.SIGCONT)
            holder.kill()
            holder.wait(30)
    (row,) = ledger.rows(run_id="killed")
    assert row["outcome"] == "ok" and row["usage_known"]
    (state,) = caller(config).budgets.states()
    next_cost = sum(r["cost_usd"] for r in ledger.rows(run_id="next"))
    assert state.reserved_usd == 0 and state.spent_usd == pytest.approx(row["cost_usd"] + next_cost)
