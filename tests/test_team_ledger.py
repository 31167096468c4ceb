"""A team's shared PostgreSQL ledger: resuming runs from it, reservations that cannot leak, workers sharing a cap."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from conftest import READING_WEEK, write_config
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.core.ledger import Ledger

pytestmark = pytest.mark.postgres


def share_ledger(vault: Path, url: str, extra: str = "") -> Path:
    """Point a vault's config at a shared ledger, as the README's team set-up does."""
    config = vault / ".tierflow" / "config.toml"
    return write_config(config, f"ledger_url = {json.dumps(url)}\n{extra}\n" + config.read_text())


@pytest.fixture
def pg_ledger(postgres_server) -> str:
    from conftest import drop_postgres_database, fresh_postgres_database

    url = fresh_postgres_database(postgres_server)
    yield url
    drop_postgres_database(postgres_server, url)


@pytest.mark.usefixtures("prefect_harness")
def test_resume_finds_the_run_in_the_shared_ledger_and_leaves_no_sqlite_in_the_vault(reading_vault, pg_ledger):
    from tierflow.flows.reading_notes import reading_notes

    share_ledger(reading_vault, pg_ledger)
    since, until = (date.fromisoformat(d) for d in READING_WEEK)
    first = reading_notes(vault=str(reading_vault), since=since, until=until)
    made = len(Ledger(pg_ledger).rows(run_id=first.run_id))
    assert made > 0

    result = CliRunner().invoke(app, ["resume", first.run_id, "--vault", str(reading_vault)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = Ledger(pg_ledger).rows(run_id=first.run_id)
    # Resumed in the shared ledger: every answer reused from its cache, nothing paid twice.
    assert len(rows) == 2 * made and all(r["cached_result"] for r in rows[made:])
    assert not (reading_vault / ".tierflow" / "ledger.sqlite").exists()


def test_resume_names_the_ledger_it_searched_without_its_password(reading_vault, pg_ledger):
    url = pg_ledger.replace("postgres:@", "postgres:s3cret@")
    share_ledger(reading_vault, url)
    result = CliRunner().invoke(app, ["resume", "no-such-run", "--vault", str(reading_vault)])
    assert result.exit_code == 2
    assert "no run 'no-such-run' in the ledger postgresql+psycopg://postgres:***@" in result.output
    assert "s3cret" not in result.output
    assert not (reading_vault / ".tierflow" / "ledger.sqlite").exists()
