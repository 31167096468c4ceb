"""`ledger_url`: its password never printed, a URL tierflow cannot use refused in one line, and why a server
could not be reached said with the fix that fits the cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import postgres_url, write_config

from tierflow.core.errors import LedgerError
from tierflow.core.ledger import Ledger

TIERFLOW = [sys.executable, "-m", "tierflow.cli"]


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    # Wide enough that `config show`'s table never wraps or cuts a URL.
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run([*TIERFLOW, *args], capture_output=True, text=True, timeout=900, env=env)


def vault_with(tmp_path: Path, url: str) -> Path:
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", f'profile = "offline"\nledger_url = {json.dumps(url)}\n')
    return vault


def refused(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The command failed with `code` and one line, no traceback; returns the line."""
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr.strip()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://tierflow:S3cretPw-xyz@/tierflow?host=/run/pg",
            "postgresql+psycopg://tierflow:***@/tierflow?host=/run/pg",
        ),
        ("postgresql://tierflow:S3cret@Pw@db:5432/tierflow", "postgresql://tierflow:***@db:5432/tierflow"),
        (
            "postgresql://tierflow:a/b?c:d@db/tierflow?application_name=me@x",
            "postgresql://tierflow:***@db/tierflow?application_name=me@x",
        ),
        (
            "postgresql:///tierflow?host=/run/pg&password=S3cret&user=t",
            "postgresql:///tierflow?host=/run/pg&password=***&user=t",
        ),
        ("postgresql://tierflow:@/tierflow?host=/run/pg", "postgresql://tierflow:***@/tierflow?host=/run/pg"),
        ("postgresql://tierflow@db/tierflow", "postgresql://tierflow@db/tierflow"),
        ("postgresql://db:5432/tierflow", "postgresql://db:5432/tierflow"),
        ("sqlite:////home/me@work/ledger.sqlite", "sqlite:////home/me@work/ledger.sqlite"),
        ("host=db user=tierflow password=S3cret", "host=db user=tierflow password=***"),
        ("tierflow:S3cret@db/tierflow", "tierflow:***@db/tierflow"),
        ("C:\\tierflow\\ledger.sqlite", "C:\\tierflow\\ledger.sqlite"),
    ],
)
def test_a_ledger_url_is_shown_with_everything_of_its_password_masked(url: str, shown: str):
    from tierflow.core.urls import masked_url

    assert masked_url(url) == shown


def test_config_show_masks_the_ledger_password(tmp_path: Path):
    url = "postgresql+psycopg://tierflow:S3cretPw-xyz@/tierflow?host=/run/postgresql"
    result = run(["config", "show", "--vault", str(vault_with(tmp_path, url))])
    assert result.returncode == 0, result.stderr
    assert '"postgresql+psycopg://tierflow:***@/tierflow?host=/run/postgresql"' in result.stdout
    assert "S3cretPw" not in result.stdout + result.stderr


def test_config_show_masks_a_password_given_as_a_query_parameter(tmp_path: Path):
    url = "postgresql+psycopg:///tierflow?host=/run/postgresql&user=tierflow&password=S3cretPw-xyz"
    result = run(["config", "show", "--vault", str(vault_with(tmp_path, url))])
    assert result.returncode == 0, result.stderr
    assert "&password=***" in result.stdout and "S3cretPw" not in result.stdout + result.stderr


def test_a_password_with_an_unencoded_at_is_refused_without_any_of_it_shown(tmp_path: Path):
    vault = vault_with(tmp_path, "postgresql+psycopg://tierflow:S3cret@Pw9z@/tierflow?host=/run/postgresql")
    for args in (["config", "show"], ["spend"]):
        message = refused(run([*args, "--vault", str(vault)]), 2)
        assert "S3cret" not in message and "Pw9z" not in message, message
        assert "postgresql+psycopg://tierflow:***@/tierflow?host=/run/postgresql" in message
        assert "percent-encoded" in message and "@ as %40" in message, message


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "postgresql+psycopg2://tierflow:S3cretPw@db/tierflow",
            "the PostgreSQL driver psycopg2, which tierflow does not use",
        ),
        (
            "postgresql+asyncpg://tierflow:S3cretPw@db/tierflow",
            "the PostgreSQL driver asyncpg, which tierflow does not use",
        ),
        ("postgres://tierflow:S3cretPw@db/tierflow", "postgres:// is not a database SQLAlchemy knows"),
        ("mysql://tierflow:S3cretPw@db/tierflow", "a ledger is kept in SQLite or PostgreSQL only, not mysql"),
        ("mysql+pymysql://tierflow:S3cretPw@db/tierflow", "a ledger is kept in SQLite or PostgreSQL only, not mysql"),
        ("sqlite+aiosqlite:///ledger.sqlite", "the SQLite driver aiosqlite, which tierflow does not use"),
        ("db.internal/tierflow", "not a database URL"),
        ("tierflow:S3cretPw@db.internal/tierflow", "tierflow:***@db.internal/tierflow is not a database URL"),
    ],
)
def test_a_ledger_url_tierflow_cannot_use_is_one_line_naming_the_fix(tmp_path: Path, url: str, says: str):
    vault = vault_with(tmp_path, url)
    for args in (["spend"], ["config", "show"]):
        message = refused(run([*args, "--vault", str(vault)]), 2)  # as any other config error
        assert "`ledger_url`" in message and says in message and "S3cretPw" not in message, message
        fix = "sqlite:///PATH" if url.startswith("sqlite") else "postgresql+psycopg://"
        assert fix in message.partition(": write")[2], message


def test_the_python_api_refuses_an_unusable_ledger_url_the_same_way():
    with pytest.raises(LedgerError, match="the PostgreSQL driver psycopg2, which tierflow does not use") as caught:
        Ledger("postgresql+psycopg2://tierflow:S3cretPw@db/tierflow")
    assert "S3cretPw" not in str(caught.value) and "postgresql+psycopg2://tierflow:***@db/tierflow" in str(caught.value)


# Connection failures, each on the session's real PostgreSQL (or a socket where none listens).


def cannot_open(url: str) -> str:
    with pytest.raises(LedgerError) as caught:
        Ledger(url)
    return str(caught.value)


@pytest.fixture
def password_role(postgres_server) -> Iterator[tuple[str, str]]:
    """A login role whose password the server checks (scram-sha-256; the server trusts every other role)."""
    import sqlalchemy as sa

    role, password = "pw_" + uuid.uuid4().hex[:8], "S3cret@Pw-xyz"
    hba = Path(postgres_server.pgdata) / "pg_hba.conf"
    before = hba.read_text()
    admin = sa.create_engine(postgres_url(postgres_server, "postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        hba.write_text(f"local all {role} scram-sha-256\n{before}")  # first match wins: this role only
        conn.exec_driver_sql("SELECT pg_reload_conf()")
    try:
        yield role, password
    finally:
        with admin.connect() as conn:
            hba.write_text(before)
            conn.exec_driver_sql("SELECT pg_reload_conf()")
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


@pytest.mark.postgres
def test_a_wrong_or_missing_password_says_where_the_password_comes_from(postgres_server, password_role, monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)  # libpq's other sources of a password: none here
    monkeypatch.setenv("PGPASSFILE", "/nonexistent/pgpass")
    role, password = password_role
    server = postgres_url(postgres_server, "postgres")
    wrong = server.replace("://postgres:@", f"://{role}:{quote('Wrong-' + password, safe='')}@", 1)
    message = cannot_open(wrong)
    assert f'password authentication failed for user "{role}"' in message, message
    assert "check the password in ledger_url, PGPASSWORD or ~/.pgpass" in message, message
    assert f"postgresql+psycopg://{role}:***@/postgres?host=" in message and "S3cret" not in message
    assert "server is up" not in message

    message = cannot_open(server.replace("://postgres:@", f"://{role}@", 1))
    assert "no password supplied" in message, message
    assert "give the password in ledger_url, PGPASSWORD or ~/.pgpass" in message, message

    # Percent-encoded, the password with its @ is the one the server checks: connected, the role may not make tables.
    right = server.replace("://postgres:@", f"://{role}:{quote(password, safe='')}@", 1)
    with pytest.raises(LedgerError, match="its database role may only read it"):
        Ledger(right)


@pytest.mark.postgres
def test_a_missing_database_says_to_create_it_or_fix_its_name(postgres_server, tmp_path: Path):
    url = postgres_url(postgres_server, "no_such_ledger").replace("://postgres:@", "://postgres:S3cretPw@", 1)
    message = refused(run(["spend", "--vault", str(vault_with(tmp_path, url))]), 1)
    assert 'database "no_such_ledger" does not exist' in message, message
    assert "create the database no_such_ledger on that server, or correct its name in ledger_url" in message
    assert "postgresql+psycopg://postgres:***@/no_such_ledger?host=" in message and "S3cretPw" not in message


@pytest.mark.postgres
def test_a_missing_role_says_to_create_it_or_fix_the_user_name(postgres_server):
    url = postgres_url(postgres_server, "postgres").replace("://postgres:@", "://no_such_role:S3cretPw@", 1)
    message = cannot_open(url)
    assert 'role "no_such_role" does not exist' in message and "S3cretPw" not in message, message
    assert "create the role no_such_role on that server, or correct the user name in ledger_url" in message


@pytest.mark.parametrize(
    ("cause", "advice"),
    [
        (
            'connection failed: could not translate host name "db.internal" to address: Name or service not known',
            "the host name is not known: correct the host in ledger_url",
        ),
        ("connection timeout expired", "the server did not answer in time: check the host and port in ledger_url"),
        (
            'FATAL:  no pg_hba.conf entry for host "10.0.0.7", user "tierflow", database "tierflow", no encryption',
            "the server does not accept this user from this machine: its administrator adds a pg_hba.conf entry",
        ),
        ("server closed the connection unexpectedly", "check that its server is up and ledger_url is right"),
    ],
)
def test_other_connection_failures_get_the_advice_that_fits(cause: str, advice: str):
    from tierflow.core.urls import connection_advice

    assert connection_advice(cause).startswith(advice)


def test_no_server_at_a_socket_or_port_says_none_is_running_there(tmp_path: Path):
    socket = f"postgresql+psycopg://tierflow:S3cretPw@/tierflow?host={tmp_path}"
    message = cannot_open(socket)
    assert "No such file or directory" in message and "S3cretPw" not in message, message
    assert "no PostgreSQL server is running at that host and port (or socket folder)" in message, message
    message = cannot_open("postgresql+psycopg://tierflow:S3cretPw@127.0.0.1:1/tierflow")  # port 1: refused at once
    assert "Connection refused" in message and "S3cretPw" not in message, message
    assert "no PostgreSQL server is running at that host and port (or socket folder)" in message, message
