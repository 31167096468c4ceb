"""A ledger its user may only read (a head of department's or an auditor's copy): reports read it, never write it;
commands that record in it say so in one line.

File permissions do not bind root, and these tests may run as root: there each command runs without any capability
(`setpriv`), so that a file of mode 0444 in a folder of mode 0555 is read-only to it as to any user. Nothing is
patched: the commands meet the same file system checks and SQLite behaviour a user meets.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import as_reader, call_record, ledger_at, write_config

from tierflow.core.ledger import Ledger, dispose_engine

TIERFLOW = [sys.executable, "-m", "tierflow.cli"]
REQUEST = "5f0c2a9e" * 8
BUDGET = """
[budgets.weekly]
period = "week"
usd = 5.0
"""
COSTS = (0.25, 0.5, 1.0)


def run(args: list[str], reader: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*reader, *TIERFLOW, *args], capture_output=True, text=True, timeout=900)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed with one line (however the console wrapped it) and no traceback; returns it, unwrapped."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("error:") == 1, result.stderr
    return " ".join(result.stderr.split())


def record_calls(vault: Path, ledger: Ledger | None = None) -> Ledger:
    """Three priced calls of one request (answered, checked, escalated) and a draft of the vault, recorded in the
    vault's ledger (or `ledger`)."""
    ledger = ledger or Ledger.for_vault(vault)
    with ledger.transaction() as conn:
        ledger.remember_request_text(REQUEST, "Summarise the reading.", flow="reading-notes", phase="draft", conn=conn)
    for attempt, (cost, tier) in enumerate(zip(COSTS, ("light", "standard", "deep"), strict=True), start=1):
        ledger.record(
            call_record(
                flow="reading-notes", phase="draft", tier=tier, cost_usd=cost, request_id=REQUEST, attempt=attempt,
                timestamp=f"2026-11-17T1{attempt}:00:00+00:00", subject="Feedback",
            )
        )  # fmt: skip
    # A run `tierflow resume` finds (it reads the ledger first, then records in it).
    ledger.remember_run("20261117-100000-abcdef", "reading-notes", {"profile": "offline"})
    ledger.remember_draft("Concepts/Drafts/Feedback.md", "Feedback closes the gap.", run_id="r", flow="reading-notes",
                          phase="draft", tier="deep", request_id=REQUEST)  # fmt: skip
    note = vault / "Concepts" / "Drafts" / "Feedback.md"
    note.parent.mkdir(parents=True)
    note.write_text("Feedback closes the gap, the person wrote.\n", encoding="utf-8")
    return ledger


def make_read_only(folder: Path) -> None:
    for path in folder.iterdir():
        path.chmod(0o444)
    folder.chmod(0o555)


@pytest.fixture
def shared_vault(tmp_path: Path) -> Iterator[Path]:
    """A vault whose ledger (at the current schema, every call in its file) its user may only read: the file 0444,
    its folder 0555, as a department shares it."""
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", 'profile = "offline"\n' + BUDGET)
    ledger = record_calls(vault)
    dispose_engine(ledger.url)  # its last connection closed: SQLite writes its log into the file and removes it
    folder = vault / ".tierflow"
    assert not (folder / "ledger.sqlite-wal").exists()
    make_read_only(folder)
    yield vault
    folder.chmod(0o755)


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_every_report_reads_a_ledger_its_user_may_only_read_and_writes_nothing(shared_vault: Path):
    reader = as_reader()
    folder = shared_vault / ".tierflow"
    before = snapshot(folder)
    v = ["--vault", str(shared_vault)]

    table = run(["spend", *v], reader)
    assert table.returncode == 0, table.stderr
    assert "Ledger: 3 calls" in table.stdout
    week = run(["spend", "--by", "week", *v], reader)
    assert week.returncode == 0 and "2026-W47" in week.stdout, week.stderr
    listed = run(["spend", "--format", "json", *v], reader)
    assert listed.returncode == 0, listed.stderr
    assert [row["cost_usd"] for row in json.loads(listed.stdout)] == list(COSTS)
    lines = run(["spend", "--format", "jsonl", "--by", "tier", *v], reader)
    assert lines.returncode == 0, lines.stderr
    assert {json.loads(line)["tier"] for line in lines.stdout.splitlines()} == {"light", "standard", "deep"}
    csv = run(["spend", "--format", "csv", *v], reader)
    assert csv.returncode == 0 and len(csv.stdout.splitlines()) == 4, csv.stderr

    # The budget's scope was never registered on this ledger: its spend is summed from the calls instead.
    budgets = run(["spend", "--budget", "--format", "json", *v], reader)
    assert budgets.returncode == 0, budgets.stderr
    (weekly,) = json.loads(budgets.stdout)
    assert weekly["budget"] == "weekly" and weekly["spent_usd"] == pytest.approx(sum(COSTS))
    assert weekly["projected_usd"] is not None
    shown = run(["spend", "--budget", *v], reader)
    assert shown.returncode == 0 and "$1.7500" in shown.stdout, shown.stderr

    suggested = run(["routing", "suggest", "--format", "json", *v], reader)
    assert suggested.returncode == 0, suggested.stderr
    assert {(s["flow"], s["phase"]) for s in json.loads(suggested.stdout)} == {("reading-notes", "draft")}
    assert "read-only here" in suggested.stderr  # the drafts' edits are not scanned into it
    explained = run(["routing", "explain", REQUEST[:10], "--format", "json", *v], reader)
    assert explained.returncode == 0, explained.stderr
    answers = json.loads(explained.stdout)["answers"]
    assert [a["tier"] for a in answers] == ["light", "standard", "deep"]
    by_note = run(["routing", "explain", "Feedback", "--format", "json", *v], reader)  # the draft written from it
    assert by_note.returncode == 0 and json.loads(by_note.stdout)["request_id"] == REQUEST, by_note.stderr
    listed = run(["routing", "explain", "--run", "r", *v], reader)
    assert listed.returncode == 0 and listed.stdout.startswith(REQUEST[:12] + "\t"), listed.stderr

    assert snapshot(folder) == before  # nothing written, and no -wal or -shm file made beside it


def test_a_read_only_ledger_file_in_a_folder_its_reader_may_write_is_read_without_a_file_made_beside_it(
    tmp_path: Path,
):
    """SQLite made a -wal and a -shm file beside it, of the ledger's mode and its reader's: a later writer could not
    use them."""
    reader = as_reader()
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", 'profile = "offline"\n' + BUDGET)
    dispose_engine(record_calls(vault).url)
    folder = vault / ".tierflow"
    (folder / "ledger.sqlite").chmod(0o444)
    before = snapshot(folder)
    listed = run(["spend", "--format", "json", "--vault", str(vault)], reader)
    assert listed.returncode == 0, listed.stderr
    assert [row["cost_usd"] for row in json.loads(listed.stdout)] == list(COSTS)
    budgets = run(["spend", "--budget", "--format", "json", "--vault", str(vault)], reader)
    assert budgets.returncode == 0 and json.loads(budgets.stdout)[0]["spent_usd"] == pytest.approx(sum(COSTS))
    message = one_line(run(["ask", "Define feedback.", "--vault", str(vault)], reader))
    assert "read-only here (its file is read-only to you), and this command records in it" in message
    assert snapshot(folder) == before


def test_a_report_reads_the_calls_a_writer_still_holds_in_its_log(tmp_path: Path):
    """The ledger's writer has it open (or stopped without closing it): its latest calls are in the -wal file
    beside it, which a reader must read through, not skip."""
    reader = as_reader()
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", 'profile = "offline"\n')
    ledger = record_calls(vault)  # open: its calls are in its log, not yet in the file
    folder = vault / ".tierflow"
    assert (folder / "ledger.sqlite-wal").stat().st_size > 0 and (folder / "ledger.sqlite-shm").exists()
    make_read_only(folder)
    try:
        listed = run(["spend", "--format", "json", "--vault", str(vault)], reader)
        assert listed.returncode == 0, listed.stderr
        assert [row["cost_usd"] for row in json.loads(listed.stdout)] == list(COSTS)
    finally:
        folder.chmod(0o755)
        dispose_engine(ledger.url)


def test_a_read_only_ledger_that_cannot_be_read_whole_says_why_in_one_line(tmp_path: Path):
    reader = as_reader()
    older, copied = tmp_path / "older", tmp_path / "copied"
    # A ledger an older tierflow wrote (schema 19): it would need a migration, which its reader cannot run.
    file = older / ".tierflow" / "ledger.sqlite"
    write_config(older / ".tierflow" / "config.toml", 'profile = "offline"\n')
    engine = sa.create_engine(f"sqlite:///{file}")
    with engine.begin() as conn:
        ledger_at(conn, 19)
    engine.dispose()
    # A ledger copied with its -wal file but not its -shm: SQLite cannot read the calls in the log without it.
    write_config(copied / ".tierflow" / "config.toml", 'profile = "offline"\n')
    ledger = record_calls(copied)
    log = copied / ".tierflow" / "ledger.sqlite-wal"
    kept = log.read_bytes()
    dispose_engine(ledger.url)
    log.write_bytes(kept)  # as the writer left it, with its calls; its -shm file was not copied
    for vault in (older, copied):
        make_read_only(vault / ".tierflow")
    try:
        message = one_line(run(["spend", "--vault", str(older)], reader))
        assert f"the ledger {file} is at schema version 19 and this tierflow reads version" in message
        assert f"read-only here (the folder {file.parent} is read-only to you)" in message
        assert "someone with write access must open it once with this tierflow" in message
        message = one_line(run(["spend", "--by", "week", "--vault", str(copied)], reader))
        assert "its latest calls are in ledger.sqlite-wal, which SQLite cannot read without the ledger.sqlite-shm" in (
            message
        )
    finally:
        for vault in (older, copied):
            (vault / ".tierflow").chmod(0o755)


def test_commands_that_record_refuse_a_read_only_ledger_in_one_line_naming_it_and_the_fix(shared_vault: Path):
    reader = as_reader()
    file = shared_vault / ".tierflow" / "ledger.sqlite"
    before = snapshot(file.parent)
    v = ["--vault", str(shared_vault)]
    for args in (
        ["ask", "Define feedback."],
        ["run", "reading-notes", "--since", "2026-11-16", "--until", "2026-11-22"],
        ["resume", "20261117-100000-abcdef"],
        ["routing", "scan"],
        ["budget", "reservations", "--release-stale"],
    ):
        result = run([*args, *v], reader)
        message = one_line(result)
        where = f"the ledger {file} is read-only here (the folder {file.parent} is read-only to you)"
        assert f"{where}, and this command records in it" in message, args
        assert "run it with write access to the ledger file and its folder" in message, args
        assert "starting run" not in result.stderr, args  # refused before any run starts
    message = one_line(run(["routing", "fit", *v], reader))  # it saves the router beside the ledger
    assert f"cannot save the request router to {file.parent / 'router.model'}" in message
    assert f"run it with write access to {file.parent}" in message
    assert snapshot(file.parent) == before


def test_opening_a_ledger_at_the_current_schema_writes_nothing_so_it_never_waits_for_a_writer(tmp_path: Path):
    """Opening the ledger checked its schema in a write transaction: a report waited for every writer's
    transaction, up to a minute, before it read anything."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    Ledger(url).record(call_record())
    dispose_engine(url)
    import sqlite3

    writer = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process's write transaction, held
    opened: list[object] = []

    def open_and_read() -> None:
        try:
            opened.append(len(Ledger(url).rows()))
        except Exception as exc:  # noqa: BLE001 - reported below
            opened.append(exc)

    thread = threading.Thread(target=open_and_read, daemon=True)
    thread.start()
    thread.join(timeout=45)  # opening takes milliseconds; the write lock's wait took 60 s
    waited = thread.is_alive()
    writer.execute("ROLLBACK")
    writer.close()
    thread.join()
    dispose_engine(url)
    assert not waited and opened == [1]


@pytest.mark.postgres
def test_a_postgresql_role_that_may_only_select_reads_reports_and_is_refused_writes(postgres_server, tmp_path: Path):
    import uuid

    from conftest import drop_postgres_database, fresh_postgres_database, postgres_url

    url = fresh_postgres_database(postgres_server)
    role = "reader_" + uuid.uuid4().hex[:8]
    name = sa.engine.make_url(url).database
    vault = tmp_path / "vault"
    try:
        writer = record_calls(vault, Ledger(url))
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
            conn.exec_driver_sql(f'GRANT CONNECT ON DATABASE "{name}" TO "{role}"')
            conn.exec_driver_sql(f'GRANT USAGE ON SCHEMA public TO "{role}"')
            conn.exec_driver_sql(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
        admin.dispose()
        reading_url = url.replace("://postgres:@", f"://{role}:@", 1)
        assert reading_url != url
        config = f'ledger_url = {json.dumps(reading_url)}\nprofile = "offline"\n{BUDGET}'
        write_config(vault / ".tierflow" / "config.toml", config)
        v = ["--vault", str(vault)]

        listed = run(["spend", "--format", "json", *v], [])
        assert listed.returncode == 0, listed.stderr
        assert [row["cost_usd"] for row in json.loads(listed.stdout)] == list(COSTS)
        # A budget scope no one registered: summed from the calls, never registered by the reader.
        budgets = run(["spend", "--budget", "--format", "json", *v], [])
        assert budgets.returncode == 0, budgets.stderr
        assert json.loads(budgets.stdout)[0]["spent_usd"] == pytest.approx(sum(COSTS))
        suggested = run(["routing", "suggest", "--format", "json", *v], [])
        assert suggested.returncode == 0, suggested.stderr
        assert json.loads(suggested.stdout)[0]["phase"] == "draft"
        explained = run(["routing", "explain", REQUEST[:10], "--format", "json", *v], [])
        assert explained.returncode == 0 and json.loads(explained.stdout)["request_id"] == REQUEST, explained.stderr
        by_note = run(["routing", "explain", "Concepts/Drafts/Feedback.md", "--format", "json", *v], [])
        assert by_note.returncode == 0 and json.loads(by_note.stdout)["request_id"] == REQUEST, by_note.stderr
        listed = run(["routing", "explain", "--run", "r", "--format", "json", *v], [])
        assert listed.returncode == 0, listed.stderr
        assert [(r["request_id"], r["tiers"], r["note"]) for r in json.loads(listed.stdout)] == [
            (REQUEST, ["light", "standard", "deep"], "Concepts/Drafts/Feedback.md")
        ]

        message = one_line(run(["ask", "Define feedback.", *v], []))
        assert f"the ledger postgresql+psycopg://{role}:***@" in message
        assert "is read-only here (its database role may only read it), and this command records in it" in message
        assert "run it as a database role that may write" in message
        with writer.reading() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM budget_scopes")).scalar() == 0
            assert conn.execute(sa.text("SELECT count(*) FROM signals")).scalar() == 0
            assert conn.execute(sa.text("SELECT count(*) FROM calls")).scalar() == len(COSTS)
    finally:
        drop_postgres_database(postgres_server, url)
        admin = sa.create_engine(postgres_url(postgres_server, "postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


def test_a_ledger_file_copied_alone_after_a_command_holds_every_call_it_recorded(tmp_path: Path):
    """The command left its calls in ledger.sqlite-wal (its connections were never closed, so SQLite never wrote
    the log into the file): a ledger.sqlite shared or copied alone had no tables at all."""
    vault = tmp_path / "vault"
    vault.mkdir()
    asked = run(["ask", "--profile", "offline", "--vault", str(vault), "Summarise: feedback matters."], [])
    assert asked.returncode == 0, asked.stderr
    folder = vault / ".tierflow"
    assert sorted(p.name for p in folder.iterdir()) == ["ledger.sqlite"]
    copy = tmp_path / "copy" / "ledger.sqlite"
    copy.parent.mkdir()
    shutil.copy(folder / "ledger.sqlite", copy)
    import sqlite3

    alone = sqlite3.connect(f"{copy.as_uri()}?immutable=1", uri=True)  # the file as it is, nothing beside it
    tables = {name for (name,) in alone.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "calls" in tables and alone.execute("SELECT phase FROM calls").fetchall() == [("ask",)]
    alone.close()


WRITER = """
import sys
from tierflow.core.ledger import CallRecord, Ledger
from tierflow.core.usage import Usage

ledger = Ledger(sys.argv[1])
for i in range(int(sys.argv[2])):
    usage = Usage(input_tokens=10, output_tokens=5)
    ledger.record(CallRecord(run_id="later", flow="f", phase="draft", complexity="low", tier="light",
                             provider="anthropic", model="claude-haiku-4-5", usage=usage, cost_usd=0.001,
                             latency_ms=3.0, subject=f"later {i}"))
"""
"""A lecturer's process with write access: records calls and exits. Its ledger connection's last close writes its
log into the ledger file (a checkpoint) and removes the -wal and -shm files."""


def write_later(url: str, count: int) -> None:
    """`count` calls recorded by a writer process (`WRITER`), which has exited when this returns."""
    done = subprocess.run([sys.executable, "-c", WRITER, url, str(count)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def large_shared_vault(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A vault whose ledger holds enough calls that a listing of them outgrows a pipe, read-only to its reader (file
    0444, folder 0555) and with no writer: every call in the file, no -wal or -shm beside it. Yields the vault and
    how many calls it holds."""
    from tierflow.core.ledger import calls

    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", 'profile = "offline"\n')
    ledger = Ledger.for_vault(vault)
    row = call_record().row()
    count = 20_000
    with ledger.transaction() as conn:
        conn.execute(calls.insert(), [dict(row, subject=f"call {i}") for i in range(count)])
    dispose_engine(ledger.url)
    folder = vault / ".tierflow"
    assert sorted(p.name for p in folder.iterdir()) == ["config.toml", "ledger.sqlite"]
    make_read_only(folder)
    yield vault, count
    folder.chmod(0o755)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_listing_of_a_read_only_ledger_lists_the_calls_at_its_start_while_a_writer_records_and_exits(
    large_shared_vault: tuple[Path, int], fmt: str
):
    """The listing read the ledger file `immutable` (no writer had it open) on one connection for as long as its
    output took to be read: a writer's calls written into the file meanwhile were listed, or it failed halfway with
    `database disk image is malformed`."""
    vault, count = large_shared_vault
    listing = subprocess.Popen(
        [*as_reader(), *TIERFLOW, "spend", "--format", fmt, "--last", "0", "--vault", str(vault)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Its first call is out, and it cannot end before its reader (here) has read the rest: it is listing.
        first = listing.stdout.readline() + listing.stdout.readline()
        write_later(f"sqlite:///{vault / '.tierflow' / 'ledger.sqlite'}", 30)
        rest = listing.stdout.read()
        assert listing.wait(timeout=600) == 0, listing.stderr.read()
    finally:
        if listing.poll() is None:
            listing.kill()
    text = first + rest
    if fmt == "csv":
        import csv
        import io

        ids = [int(row["id"]) for row in csv.DictReader(io.StringIO(text))]
    else:
        ids = [row["id"] for row in json.loads(text)]
    assert ids == list(range(1, count + 1))  # every call at its start, once, and none recorded after


READER = """
import json
import sys

import sqlalchemy as sa

from tierflow.core.errors import LedgerError
from tierflow.core.ledger import Ledger, calls

ledger = Ledger(sys.argv[1], reading=True)
waited = []


def listed(conn):
    rows = conn.execute(sa.select(calls.c.id).order_by(calls.c.id))
    ids = [next(rows).id for _ in range(100)]
    if not waited:
        waited.append(True)
        print("reading", flush=True)
        sys.stdin.readline()  # the writer has recorded its calls and exited
    return ids + [row.id for row in rows]


try:
    if sys.argv[2] == "reading":
        with ledger.reading() as conn:
            ids = listed(conn)
    else:
        ids = ledger.read(listed)
    print(json.dumps(ids))
except LedgerError as exc:
    print(f"refused: {exc}")
"""
"""A report of one's own on a ledger one may only read: it lists the calls' ids in one read transaction (`reading`, or
`read`, which reads again if need be), and waits halfway the first time until told to go on."""


def test_a_read_of_a_read_only_ledger_that_a_writer_writes_under_it_is_refused_never_wrong(
    large_shared_vault: tuple[Path, int],
):
    """SQLite reads a ledger no writer has open `immutable` (it cannot make the -shm file that readers and writers
    share): a writer's checkpoint into the file under the read went unseen, and the read returned calls of no single
    moment, or failed with `database disk image is malformed`."""
    vault, count = large_shared_vault
    said = read_while_a_writer_writes(vault, "reading")
    assert said.startswith("refused: the ledger ") and "was written while it was read" in said
    assert said.rstrip().endswith("Run it again.")


def test_ledger_read_reads_again_when_a_writer_writes_under_it(large_shared_vault: tuple[Path, int]):
    vault, count = large_shared_vault
    assert json.loads(read_while_a_writer_writes(vault, "read")) == list(range(1, count + 31))


def read_while_a_writer_writes(vault: Path, how: str) -> str:
    """What `READER` says when a writer process records 30 calls and exits halfway through its read."""
    url = f"sqlite:///{vault / '.tierflow' / 'ledger.sqlite'}"
    code, said, errors = while_a_writer_writes(url, ["-c", READER, url, how])
    assert code == 0, errors
    return said


def while_a_writer_writes(url: str, args: list[str]) -> tuple[int, str, str]:
    """Python run with `args` as the ledger's reader, which says `reading` halfway through a read and waits: a writer
    process records 30 calls and exits, then it goes on. Its exit code, and what it said after `reading`."""
    reader = subprocess.Popen(
        [*as_reader(), sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline() == "reading\n", reader.stderr.read()
        write_later(url, 30)
        reader.stdin.write("go on\n")
        reader.stdin.close()
        said, errors = reader.stdout.read(), reader.stderr.read()
        return reader.wait(timeout=600), said, errors
    finally:
        if reader.poll() is None:
            reader.kill()


EXPLAINER = """
import sys

import sqlalchemy as sa

from tierflow.cli.app import main

word, waited = sys.argv[1], []


@sa.event.listens_for(sa.engine.Engine, "after_cursor_execute")
def halfway(conn, cursor, statement, parameters, context, executemany):
    if not waited and word in statement:
        waited.append(True)
        print("reading", flush=True)
        sys.stdin.readline()  # the writer has recorded its calls and exited


sys.argv = ["tierflow", *sys.argv[2:]]
main()
"""
"""`tierflow ARGS...` that stops halfway through the first read of the ledger whose SQL holds the given word (the
first argument), the first time, until told to go on."""


@pytest.mark.parametrize(
    ("halfway", "args"),
    [
        ("FROM request_texts", [REQUEST[:10]]),  # the requests whose id starts so
        ("FROM drafts", ["Feedback"]),  # the draft note of that name
        ("FROM calls", ["--run", "r"]),  # the run's requests
    ],
    ids=["by-id", "by-note", "run"],
)
def test_routing_explain_reads_a_read_only_ledger_again_when_a_writer_writes_under_it(
    shared_vault: Path, halfway: str, args: list[str]
):
    """As `tierflow spend` does: `routing explain` read it once, and ended with `error: the ledger ... was written
    while it was read ... Run it again.`"""
    url = f"sqlite:///{shared_vault / '.tierflow' / 'ledger.sqlite'}"
    command = ["routing", "explain", *args, "--format", "json", "--vault", str(shared_vault)]
    code, said, errors = while_a_writer_writes(url, ["-c", EXPLAINER, halfway, *command])
    assert code == 0, errors
    found = json.loads(said)
    if args[0] == "--run":
        assert [(r["request_id"], r["tiers"]) for r in found] == [(REQUEST, ["light", "standard", "deep"])]
    else:
        assert found["request_id"] == REQUEST
        assert [a["tier"] for a in found["answers"]] == ["light", "standard", "deep"]


def test_spend_watch_on_a_read_only_ledger_shows_the_calls_a_writer_records_after_it_started(shared_vault: Path):
    """Started when no writer had the ledger open (it reads the file `immutable`), it shows the calls a writer records
    later: while the writer has it open (read through its log) and after it has closed it (in the file)."""
    import os

    from test_watch import Terminal

    folder = shared_vault / ".tierflow"
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "60"}
    args = [*as_reader(), *TIERFLOW, "spend", "--vault", str(shared_vault), "--watch", "--interval", "0.3"]
    term = Terminal(args, env)
    try:
        term.wait_for("Spend: 3 calls")
        assert sorted(p.name for p in folder.iterdir()) == ["config.toml", "ledger.sqlite"]
        writer = Ledger.for_vault(shared_vault)  # a writer that keeps it open
        writer.record(call_record(model="claude-sonnet-4-6", cost_usd=0.25))
        term.wait_for("claude-sonnet-4-6")
        term.wait_for("Spend: 4 calls")
        dispose_engine(writer.url)  # the writer closes it
        write_later(writer.url, 2)  # and one that opens it, records and exits between two refreshes, or during one
        term.wait_for("Spend: 6 calls")
        term.interrupt()
    finally:
        term.close()
