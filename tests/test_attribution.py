"""Spend attributed to projects: from --project, the vault config, a folder, or the assignment's course code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import READING_WEEK, recorded_task_run, write_config

from tierflow.core.calls import Caller, RunSettings
from tierflow.core.config import load_config
from tierflow.core.errors import BudgetExceeded
from tierflow.core.ledger import MIGRATIONS, Ledger, schema_version

PROJECTS = """
[project]
name = "research"
[project.folders]
"Teaching/EDU7001" = "edu-7001"
"Teaching/EDU7001/essay-1/resit" = "resits"
"""


def test_the_project_comes_from_the_option_a_folder_a_course_code_or_the_vault(tmp_path: Path):
    config = load_config(config_path=write_config(tmp_path / "c.toml", PROJECTS))
    assert config.project_for("Teaching/EDU7001/essay-1", explicit="thesis") == "thesis"
    assert config.project_for("Teaching/EDU7001/essay-1") == "edu-7001"
    assert config.project_for("Teaching/EDU7001/essay-1/resit/") == "resits"  # the deepest folder wins
    assert config.project_for("Teaching/PSYC2010/lab-report") == "PSYC2010"  # a course code in the path
    assert config.project_for("Reading") == "research"
    assert load_config().project_for("Reading") is None


def caller(vault: Path, project: str | None, run_id: str, config: Path | None = None) -> Caller:
    settings = RunSettings(
        vault=str(vault), config_path=str(config) if config else None, flow="ask", run_id=run_id, project=project
    )
    return Caller(settings)


def ask(c: Caller, prompt: str = "Summarise: feedback closes the gap between work and goal.") -> None:
    c.ask(phase="collate", complexity="low", system="Be brief.", prompt=prompt)


def spend(vault: Path, *args: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "spend", "--vault", str(vault), "--format", "json", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_spend_by_project_week_and_deployment(tmp_path: Path):
    vault = tmp_path / "vault"
    vault.mkdir()
    for project, run_id, times in (("EDU7001", "r1", 2), ("thesis", "r2", 1), (None, "r3", 1)):
        c = caller(vault, project, run_id)
        for n in range(times):
            ask(c, f"Summarise: point {n} about feedback for {project}.")
    rows = Ledger.for_vault(vault).rows()
    by_project = {r["project"]: r for r in spend(vault, "--by", "project")}
    assert set(by_project) == {"EDU7001", "thesis", ""}
    assert by_project["EDU7001"]["calls"] == 2 and by_project["thesis"]["calls"] == 1
    assert by_project["EDU7001"]["input_tokens"] == sum(r["input_tokens"] for r in rows if r["project"] == "EDU7001")
    (week,) = spend(vault, "--by", "week")
    assert week == {**week, "week": "2026-W47", "calls": 4}  # the test clock starts on Wednesday 18 November 2026
    (deployment,) = spend(vault, "--by", "deployment")
    assert deployment["deployment"] == "" and deployment["calls"] == 4  # none of these calls came from a deployment
    only = spend(vault, "--project", "thesis")
    assert [r["project"] for r in only] == ["thesis"]


def test_a_budget_scoped_to_a_project_counts_and_stops_only_that_project(tmp_path: Path):
    vault = tmp_path / "vault"
    config = write_config(
        vault / ".tierflow" / "config.toml",
        # Without output clamping, so the long call is refused rather than sent with what is left.
        '[budgets.edu]\ntokens = 1300\nproject = "EDU7001"\nperiod = "day"\nclamp_output = false\n',
    )
    long_prompt = "Summarise: " + "feedback is information about the gap between work and goal. " * 30
    ask(caller(vault, "thesis", "t1", config), long_prompt)  # another project's spend does not count
    (state,) = caller(vault, "EDU7001", "e0", config).budgets.states()
    assert state.spent_tokens == 0 and state.scope == "per day, project EDU7001"
    with pytest.raises(BudgetExceeded, match="edu"):  # worst case: the prompt and 1024 output tokens
        ask(caller(vault, "EDU7001", "e1", config), long_prompt.replace("gap", "distance"))
    ask(caller(vault, "EDU7001", "e2", config))  # a small call still fits
    (state,) = caller(vault, "EDU7001", "e3", config).budgets.states()
    charged = [r for r in Ledger.for_vault(vault).rows() if r["project"] == "EDU7001"]
    assert state.spent_tokens == sum(r["input_tokens"] + r["output_tokens"] for r in charged) > 0


def test_a_ledger_from_before_projects_is_migrated(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a version-4 ledger: no project or deployment columns yet
        schema_version.create(conn)
        for migration in MIGRATIONS[:4]:
            migration(conn)
        conn.execute(schema_version.insert().values(version=4))
    engine.dispose()
    ledger = Ledger(url)
    assert ledger.version == len(MIGRATIONS) >= 7
    with ledger.engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("calls")}
        held = {c["name"] for c in sa.inspect(conn).get_columns("reservations")}
    assert {"project", "deployment"} <= columns and "project" in held


@pytest.mark.usefixtures("prefect_harness")
def test_a_feedback_run_is_charged_to_the_assignments_course_and_tagged_with_it(feedback_vault: Path):
    from prefect.client.orchestration import get_client

    from tierflow.flows.student_feedback import student_feedback

    summary = student_feedback(vault=str(feedback_vault), profile="offline")
    rows = Ledger.for_vault(feedback_vault).rows(run_id=summary.run_id)
    assert rows and {r["project"] for r in rows} == {"EDU7001"}
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(rows[0]["flow_run_id"])
        task_run = recorded_task_run(client, next(r["task_run_id"] for r in rows if r["task_run_id"]))
    assert "project:EDU7001" in flow_run.tags and "project:EDU7001" in task_run.tags
    assert "Project**: EDU7001" in (feedback_vault / summary.report.path).read_text()


@pytest.mark.usefixtures("prefect_harness")
def test_project_given_to_a_reading_run_wins(reading_vault: Path):
    from datetime import date

    from tierflow.flows.reading_notes import reading_notes

    since, until = (date.fromisoformat(d) for d in READING_WEEK)
    summary = reading_notes(vault=str(reading_vault), since=since, until=until, project="thesis")
    rows = Ledger.for_vault(reading_vault).rows(run_id=summary.run_id)
    assert rows and {r["project"] for r in rows} == {"thesis"}
