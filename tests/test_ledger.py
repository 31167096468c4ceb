"""The spend ledger: schema versions, one row per call, safe concurrent writes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import call_record, ledger_at

from tierflow.core.ledger import COLUMNS, MIGRATIONS, CallRecord, Ledger, calls
from tierflow.core.usage import Usage
from tierflow.report.spend import summarise


def record(n: int = 0, **kw) -> CallRecord:
    usage = Usage(input_tokens=10 + n, output_tokens=5, cache_read_tokens=2, reasoning_tokens=1)
    return call_record(**{"usage": usage, **kw})


def test_new_ledger_is_at_the_latest_schema_version(tmp_path: Path):
    ledger = Ledger.for_vault(tmp_path)
    assert ledger.version == len(MIGRATIONS)
    assert (tmp_path / ".tierflow" / "ledger.sqlite").exists()


def test_an_old_ledger_is_migrated_and_keeps_its_rows(ledger_url: str):
    url = ledger_url
    engine = sa.create_engine(url)
    from tierflow.core.ledger import schema_version

    with engine.begin() as conn:  # a version-1 ledger, as an earlier tierflow wrote it
        schema_version.create(conn)
        MIGRATIONS[0](conn)
        conn.execute(schema_version.insert().values(version=1))
        v1 = sa.Table("calls", sa.MetaData(), autoload_with=conn)
        conn.execute(v1.insert().values(**{k: v for k, v in record().row().items() if k in v1.c}))
    engine.dispose()
    ledger = Ledger(url)
    assert ledger.version == len(MIGRATIONS)
    assert len(ledger.rows()) == 1


def test_a_ledger_from_before_refusals_were_kept_keeps_its_batch_items_with_no_error(ledger_url: str):
    """Version 20 keeps a refused batch item's error; an item refused before has none, so it is sent once more."""
    from tierflow.core.ledger import batch_items

    engine = sa.create_engine(ledger_url)
    with engine.begin() as conn:
        ledger_at(conn, 19)
        v19 = sa.Table("batch_items", sa.MetaData(), autoload_with=conn)
        assert "error" not in v19.c
        conn.execute(v19.insert().values(key="k", custom_id="c", batch_id="b", provider="anthropic", status="refused"))
    engine.dispose()
    ledger = Ledger(ledger_url)
    assert ledger.version == len(MIGRATIONS)
    with ledger.reading() as conn:
        assert conn.execute(sa.select(batch_items.c.key, batch_items.c.status, batch_items.c.error)).all() == [
            ("k", "refused", None)
        ]


def test_rows_have_the_stable_columns_and_group_totals(ledger_url: str):
    ledger = Ledger(ledger_url)
    ledger.record(record(0))
    ledger.record(record(1, phase="draft", cost_usd=None))
    rows = ledger.rows()
    assert tuple(rows[0]) == COLUMNS
    totals = {t["phase"]: t for t in summarise(rows, "phase")}
    assert totals["collate"]["input_tokens"] == 10 and totals["draft"]["unpriced_calls"] == 1


def test_threads_record_concurrently_without_losing_a_row(ledger_url: str):
    ledger = Ledger(ledger_url)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: ledger.record(record(n)), range(200)))
    rows = ledger.rows()
    assert len(rows) == 200 and sorted(r["input_tokens"] for r in rows) == list(range(10, 210))


def test_processes_record_concurrently_into_one_ledger(ledger_url: str):
    script = (
        "import sys; sys.path.insert(0, 'tests'); from test_ledger import record; "
        "from tierflow.core.ledger import Ledger; "
        "l = Ledger(sys.argv[1]); [l.record(record(int(sys.argv[2]) * 1000 + i)) for i in range(50)]"
    )
    url = ledger_url
    Ledger(url)
    repo = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", script, url, str(p)], cwd=repo) for p in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert len(Ledger(url).rows()) == 200


@pytest.mark.postgres
def test_workers_starting_at_once_on_a_fresh_postgresql_ledger_migrate_it_once(postgres_server):
    """Four processes open one empty PostgreSQL ledger at the same instant: each succeeds, each version once."""
    from conftest import drop_postgres_database, fresh_postgres_database

    script = (
        "import sys, time; from tierflow.core.ledger import Ledger\n"
        "start = float(sys.argv[2])\n"
        "while time.time() < start: pass\n"
        "print(Ledger(sys.argv[1]).version)"
    )
    repo = Path(__file__).resolve().parents[1]
    for _ in range(2):
        url = fresh_postgres_database(postgres_server)
        start = time.time() + 3  # all four have imported tierflow by then, and start migrating together
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, url, str(start)], cwd=repo, stdout=subprocess.PIPE, text=True
            )
            for _ in range(4)
        ]
        outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0]
        assert outputs == [str(len(MIGRATIONS))] * 4
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            versions = [row[0] for row in conn.exec_driver_sql("SELECT version FROM schema_version ORDER BY version")]
        engine.dispose()
        assert versions == list(range(1, len(MIGRATIONS) + 1))
        drop_postgres_database(postgres_server, url)


def _finishes(work, seconds: float = 10.0) -> bool:
    """Run `work` in a thread; whether it finished within `seconds` (the ledger's busy timeout is 60 s)."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


def test_reads_do_not_wait_for_a_writer_on_sqlite(tmp_path: Path):
    """`rows()` and the answer-cache lookup are plain reads: under WAL they go on while another process writes."""
    ledger = Ledger.for_vault(tmp_path)
    ledger.record(record(0))
    ledger.cache_response("k", "m", "an answer", None)
    writer = sqlite3.connect(tmp_path / ".tierflow" / "ledger.sqlite", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock, mid-transaction
    try:
        found = {}
        assert _finishes(lambda: found.update(rows=ledger.rows(), hit=ledger.cached_response("k")))
        assert len(found["rows"]) == 1 and found["hit"] == ("an answer", None)
    finally:
        writer.rollback()
        writer.close()


def test_a_long_read_does_not_block_a_write_on_sqlite(tmp_path: Path):
    """A long-running read (a `tierflow spend` over a big ledger) does not stall the flows recording calls."""
    ledger = Ledger.for_vault(tmp_path)
    ledger.record(record(0))
    with ledger.engine.connect() as reader:
        assert len(reader.execute(sa.select(calls)).all()) == 1  # the read transaction is open from here
        assert _finishes(lambda: ledger.record(record(1)))
        assert _finishes(lambda: ledger.cache_response("k", "m", "text", None))
    assert len(ledger.rows()) == 2


def test_a_reservation_left_open_by_an_older_tierflow_is_released_after_migration(ledger_url: str):
    """Before leases (version 4) a dead process's reservation stayed open for good; now its lease is over."""
    from tierflow.core.budget import open_reservations, release_stale
    from tierflow.core.ledger import schema_version

    engine = sa.create_engine(ledger_url)
    with engine.begin() as conn:  # a version-4 ledger holding one open reservation
        schema_version.create(conn)
        for number, migration in enumerate(MIGRATIONS[:4], start=1):
            migration(conn)
            conn.execute(schema_version.insert().values(version=number))
        conn.exec_driver_sql(
            "INSERT INTO reservations (created, run_id, flow, phase, usd, tokens, open, kept) "
            "VALUES ('2026-11-17T09:00:00+00:00', 'old', 'f', 'collate', 0.5, 900, TRUE, FALSE)"
        )
    engine.dispose()
    ledger = Ledger(ledger_url)
    assert ledger.version == len(MIGRATIONS)
    (old,) = open_reservations(ledger)
    assert old.run_id == "old" and old.expired and old.holder_pid is None
    assert [r.id for r in release_stale(ledger)] == [old.id] and open_reservations(ledger) == []


def test_the_compact_spend_row_keeps_the_money_and_shortens_the_rest():
    from tierflow.core.usage import Usage
    from tierflow.report.spend import Spend, compact_count

    assert [compact_count(n) for n in (0, 999, 1000, 12_345, 999_949, 999_950, 4_560_000)] == [
        "0", "999", "1.0k", "12.3k", "999.9k", "1.00M", "4.56M"
    ]  # fmt: skip
    phase = Spend("synthesise", ["deep", "standard"], ["anthropic:claude-opus-4-6", "anthropic:claude-sonnet-4-6"])
    phase.calls, phase.usage, phase.cost_usd, phase.all_deep_usd = 2, Usage(input_tokens=12_345), 0.18, 0.59
    full, compact = phase.table_row(), phase.table_row(compact=True)
    assert (full["model"], full["tokens"]) == ("anthropic:claude-opus-4-6, anthropic:claude-sonnet-4-6", 12_345)
    assert (compact["model"], compact["tokens"]) == ("claude-opus-4-6, claude-sonnet-4-6", "12.3k")
    money = ("USD", "all-deep USD", "saved")
    assert [compact[k] for k in money] == [full[k] for k in money] == ["$0.1800", "$0.5900", "69%"]
    phase.key = "total"
    totals = phase.table_row(compact=True)
    assert (totals["phase"], totals["tier"], totals["model"], totals["USD"]) == ("total", "", "", "$0.1800")
    assert phase.table_row()["tier"] == "deep, standard"


def test_threads_of_one_process_queue_for_the_write_lock_in_the_process_not_in_sqlite(tmp_path: Path):
    """A thread that waits for another thread's write transaction waits on a lock that wakes it when that one
    commits, never in SQLite's busy handler (which sleeps up to 100 ms between tries: freed tier slots sat idle)."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    begins: list[str] = []

    def began(conn) -> None:  # noqa: ANN001
        begins.append(threading.current_thread().name)

    done = threading.Event()
    sa.event.listen(ledger._writer, "begin", began, insert=True)  # before the BEGIN IMMEDIATE that waits
    try:
        with ledger.transaction():
            waiter = threading.Thread(target=lambda: (ledger.record(record(1)), done.set()), name="waiter")
            waiter.start()
            time.sleep(0.5)  # the waiter is queued by now on any machine; what matters is where it waits
            assert begins == ["MainThread"] and not done.is_set()
        waiter.join(30)
    finally:
        sa.event.remove(ledger._writer, "begin", began)
    assert done.is_set() and begins == ["MainThread", "waiter"]
    assert len(ledger.rows()) == 1


def test_a_nul_or_a_lone_surrogate_in_an_answer_or_a_subject_never_loses_the_billed_call(
    ledger_url: str, tmp_path: Path, double, monkeypatch: pytest.MonkeyPatch
):
    """PostgreSQL's text cannot hold NUL. A model's answer (and so the answer cache) or a subject with one is stored
    with U+FFFD in its place, on either database, in the transaction that records the call: nothing billed is lost."""
    import json

    from conftest import anthropic_config, write_config

    from tierflow.core.calls import Caller, RunSettings
    from tierflow.testing.double import Reply

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda r: Reply(text="before\x00after")
    shared = f"ledger_url = {json.dumps(ledger_url)}\n"
    config = write_config(tmp_path / "v" / ".tierflow" / "config.toml", shared + anthropic_config(double))
    settings = RunSettings(vault=str(tmp_path / "v"), config_path=str(config), run_id="nul", flow="test")

    def ask() -> object:
        return Caller(settings).ask(phase="draft", complexity="low", system="s", prompt="Write.", subject="a\x00title")

    answer = ask()
    assert answer.text == "before\x00after"  # the flow gets the model's own text
    (row,) = Ledger(ledger_url).rows(run_id="nul")
    assert row["subject"] == "a\ufffdtitle" and row["output_tokens"] > 0
    again = ask()
    assert again.cached and again.text == "before\ufffdafter"
    assert len(double.model_calls()) == 1
    # A file name that is not UTF-8 (as Python reads one: a lone surrogate) is stored the same way.
    named = Caller(settings.model_copy(update={"run_id": "latin-1"}))
    named.ask(phase="draft", complexity="low", system="s", prompt="Write again.", subject="caf\udce9.docx")
    (row,) = Ledger(ledger_url).rows(run_id="latin-1")
    assert row["subject"] == "caf\ufffd.docx" and row["output_tokens"] > 0


def test_values_longer_than_their_column_never_lose_the_billed_call(
    ledger_url: str, tmp_path: Path, double, monkeypatch: pytest.MonkeyPatch
):
    """PostgreSQL refuses a value longer than its VARCHAR column; SQLite keeps it. A user's own flow, phase or
    project name, or a local server's model path, past its column's length is stored clipped to it, on either
    database, and the billed call is recorded."""
    import json

    from conftest import anthropic_config, write_config

    from tierflow.core.calls import Caller, RunSettings
    from tierflow.testing.double import Reply

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda r: Reply(text="ok")
    shared = f"ledger_url = {json.dumps(ledger_url)}\n"
    config = write_config(tmp_path / "v" / ".tierflow" / "config.toml", shared + anthropic_config(double))
    flow, phase, project = "f" * 100, "p" * 100, "EDU7001 " + "x" * 200
    settings = RunSettings(
        vault=str(tmp_path / "v"), config_path=str(config), run_id="long", flow=flow, project=project
    )
    Caller(settings).ask(phase=phase, complexity="low", system="s", prompt="Write.", subject="s" * 400)
    (row,) = Ledger(ledger_url).rows(run_id="long")
    assert (row["flow"], row["phase"], row["project"], row["subject"]) == (
        flow[:64],
        phase[:64],
        project[:128],
        "s" * 256,
    )
    assert row["output_tokens"] > 0
