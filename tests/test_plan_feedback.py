"""`tierflow plan student-feedback`: every call of the feedback flow, estimated before it spends."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import anthropic_config, write_config
from responders import skilled
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.core.config import load_config
from tierflow.core.ledger import Ledger
from tierflow.flows.plans import plan_student_feedback
from tierflow.flows.student_feedback import student_feedback

ASSIGNMENT = "Teaching/EDU7001/essay-1"
DRAFTED = 13  # 14 submissions, one of them empty: it gets its note without a call


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("mode", ["direct", "batch"])
def test_the_feedback_plan_brackets_the_actual_spend_of_the_same_run(mode, feedback_vault: Path, double, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    existing = (feedback_vault / ".tierflow" / "config.toml").read_text()
    write_config(feedback_vault / ".tierflow" / "config.toml", anthropic_config(double) + existing)
    double.responder = skilled()

    plan = plan_student_feedback(load_config(feedback_vault), feedback_vault, assignment=ASSIGNMENT, mode=mode)
    assert [(p.key, p.calls) for p in plan.phases] == [("collate", DRAFTED), ("synthesise", 1), ("draft", DRAFTED)]
    assert double.model_calls() == []  # nothing was sent

    summary = student_feedback(vault=str(feedback_vault), assignment=ASSIGNMENT, mode=mode)
    rows = Ledger.for_vault(feedback_vault).rows(run_id=summary.run_id)
    for phase in plan.phases:
        mine = [r for r in rows if r["phase"] == phase.key]
        assert len(mine) == phase.calls, phase.key
        assert sum(r["cost_usd"] for r in mine) <= float(phase.cost_or_none), phase.key
        assert phase.all_deep_usd >= phase.cost_or_none


def test_the_plan_command_estimates_student_feedback(feedback_vault: Path):
    result = CliRunner().invoke(
        app, ["plan", "student-feedback", "--vault", str(feedback_vault), "--assignment", ASSIGNMENT]
    )
    assert result.exit_code == 0, result.output
    assert "student-feedback: 14 notes selected" in result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│ ")}
    assert lines["collate"].split("│")[4].strip() == str(DRAFTED)
    assert lines["draft"].split("│")[4].strip() == str(DRAFTED)
    assert "reading-notes" not in result.output
