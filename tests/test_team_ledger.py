"""A team's shared PostgreSQL ledger: resuming runs from it, reservations that cannot leak, workers sharing a cap."""

from __future__ import annotations

import json
import re
import textwrap
from datetime import date
from pathlib import Path

import pytest
from conftest import READING_WEEK, write_config
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.core.ledger import Ledger

pytestmark = pytest.mark.postgres


def readme_team_config(url: str, usd: float) -> tuple[str, str]:
    """The README's team config, with this test's database and cap: (its top-level keys, its tables)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```toml\n(  ledger_url = \"postgresql\+psycopg://.*?)```", readme, re.S)
    assert match, "README.md has no team set-up block starting with a PostgreSQL ledger_url"
    text = textwrap.dedent(match.group(1))
    documented = re.search(r'^ledger_url = "(.*)"$', text, re.M).group(1)
    text = text.replace(documented, url).replace("usd = 20\n", f"usd = {usd!r}\n")
    tables = text.index("\n[")
    return text[:tables], text[tables:]


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


@pytest.mark.usefixtures("prefect_harness")
def test_a_teammate_resumes_a_run_on_their_own_copy_of_the_team_config(reading_vault, pg_ledger, tmp_path):
    """The run remembers the --config its starter gave, a path on their machine; `tierflow resume RUN --config
    MINE --profile P` runs on the config and profile given, in the ledger it found the run in."""
    team = f"ledger_url = {json.dumps(pg_ledger)}\n" + (reading_vault / ".tierflow" / "config.toml").read_text()
    alice = write_config(tmp_path / "alice" / "team.toml", team)
    bob = write_config(tmp_path / "bob" / "team.toml", team)
    week = ["--since", READING_WEEK[0], "--until", READING_WEEK[1]]
    mine = ["--vault", str(reading_vault), "--profile", "offline"]
    first = CliRunner().invoke(app, ["run", "reading-notes", *mine, *week, "--config", str(alice)])
    assert first.exit_code == 0, first.output
    (run_id,) = {r["run_id"] for r in Ledger(pg_ledger).rows()}
    made = len(Ledger(pg_ledger).rows(run_id=run_id))
    (alice.parent / "team.toml").unlink()  # Alice's copy is on her machine, not on Bob's

    result = CliRunner().invoke(app, ["resume", run_id, *mine, "--config", str(bob)], catch_exceptions=False)
    # It was `error: config file .../alice/team.toml does not exist` (exit 2): the run was found in the ledger of
    # Bob's config, then run on the config the ledger remembered.
    assert result.exit_code == 0, result.output
    rows = Ledger(pg_ledger).rows(run_id=run_id)
    # Resumed in the shared ledger, on the same models: every answer reused from its cache, nothing paid twice.
    assert len(rows) == 2 * made and all(r["cached_result"] for r in rows[made:])
    assert [r["model"] for r in rows[made:]] == [r["model"] for r in rows[:made]]
    assert not (reading_vault / ".tierflow" / "ledger.sqlite").exists()


def test_resume_names_the_ledger_it_searched_without_its_password(reading_vault, pg_ledger):
    url = pg_ledger.replace("postgres:@", "postgres:s3cret@")
    share_ledger(reading_vault, url)
    result = CliRunner().invoke(app, ["resume", "no-such-run", "--vault", str(reading_vault)])
    assert result.exit_code == 2
    assert "no run 'no-such-run' in the ledger postgresql+psycopg://postgres:***@" in result.output
    assert "s3cret" not in result.output
    assert not (reading_vault / ".tierflow" / "ledger.sqlite").exists()


WORKER = """
import json, sys
from datetime import date
from tierflow.flows.reading_notes import reading_notes
from tierflow.report.run_report import RunStopped
since, until = date.fromisoformat(sys.argv[2]), date.fromisoformat(sys.argv[3])
try:
    summary = reading_notes(vault=sys.argv[1], since=since, until=until)
except RunStopped as stopped:  # a budget halted it: its flow run is Failed
    summary = stopped.summary
print(json.dumps({"run_id": summary.run_id, "halted": summary.halted, "failed": summary.failed}))
"""


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_two_workers_on_one_prefect_server_and_one_postgresql_ledger_never_overshoot_a_shared_cap(
    reading_vault, double, monkeypatch, pg_ledger
):
    """Two processes run the reading-notes flow at once, for two vaults, under one daily cap: the README's set-up."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import anthropic_config
    from prefect.settings import PREFECT_API_URL
    from responders import skilled

    from tierflow.flows.reading_notes import reading_notes

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = skilled()
    existing = (reading_vault / ".tierflow" / "config.toml").read_text()
    write_config(reading_vault / ".tierflow" / "config.toml", anthropic_config(double) + existing)
    vaults = [reading_vault.parent / f"worker-{n}" for n in (1, 2)]
    for n, vault in enumerate(vaults, start=1):
        shutil.copytree(reading_vault, vault)
        for note in (vault / "Reading").rglob("*.md"):  # each worker's notes are its own: no shared answers
            note.write_text(note.read_text() + f"\n\nRead by worker {n}.\n")
    # What one run costs, in a copy with its own ledger.
    reference = reading_vault.parent / "reference"
    shutil.copytree(vaults[0], reference)
    since, until = (date.fromisoformat(d) for d in READING_WEEK)
    alone = reading_notes(vault=str(reference), since=since, until=until)
    one_run = sum(r["cost_usd"] for r in Ledger.for_vault(reference).rows(run_id=alone.run_id))

    cap = 1.5 * one_run  # room for one run and part of another, not for both
    top, tables = readme_team_config(pg_ledger, cap)
    for vault in vaults:
        config = vault / ".tierflow" / "config.toml"
        config.write_text(top + config.read_text() + tables)
    env = {**os.environ, "ANTHROPIC_API_KEY": "k", "PREFECT_API_URL": PREFECT_API_URL.value()}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(vault), *READING_WEEK], stdout=subprocess.PIPE, text=True, env=env
        )
        for vault in vaults
    ]
    outcomes = [json.loads(w.communicate(timeout=900)[0].strip().splitlines()[-1]) for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    assert not any(o["failed"] for o in outcomes)
    rows = Ledger(pg_ledger).rows()
    spent = sum(r["cost_usd"] for r in rows)
    assert {r["run_id"] for r in rows} == {o["run_id"] for o in outcomes}  # both worked, in one ledger
    assert spent <= cap
    # Both could not finish within the cap, so one at least was halted by it, and said so.
    halted = [o["halted"] for o in outcomes if o["halted"]]
    assert halted and all("budget 'team' (per day)" in h for h in halted)
    # Both workers ran their flows on the one Prefect server.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_runs = {r["flow_run_id"] for r in rows}
        assert len(flow_runs) == 2 and all(client.read_flow_run(f).name for f in flow_runs)
