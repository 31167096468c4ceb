"""The rubric from the command line: a garbled one ends a run with its message alone; show and normalise."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

ASSIGNMENT = "Teaching/EDU7001/essay-1"
GARBLED = "---\ntitle: rubric\n---\nMark it fairly, with care and attention to the argument.\n"


def test_a_garbled_rubric_ends_the_run_with_the_message_alone(feedback_vault: Path, tmp_path: Path):
    (feedback_vault / ASSIGNMENT / "rubric.md").write_text(GARBLED)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "run", "student-feedback", "--vault", str(feedback_vault)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert f"error: {ASSIGNMENT}/rubric.md: no criteria found. Shapes tried:" in done.stderr
    assert done.stderr.count("no criteria found") == 1, done.stderr
    # ... while the Prefect log keeps the traceback, for whoever debugs it in the UI.
    with sqlite3.connect(tmp_path / "prefect-home" / "prefect.db") as db:
        logged = [m for (m,) in db.execute("SELECT message FROM log")]
    assert any("Traceback" in m and "RubricError" in m for m in logged), logged


def test_the_console_filter_drops_expected_errors_only():
    from tierflow.cli.runner import ExpectedErrorFilter
    from tierflow.vault.rubric import RubricError

    def record(name: str, message: str, exc: BaseException | None = None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc else None
        return logging.LogRecord(name, logging.ERROR, __file__, 1, message, None, info)

    keep = ExpectedErrorFilter().filter
    assert not keep(record("prefect.task_runs", "Task run failed", RubricError("bad rubric")))
    assert not keep(record("prefect.flow_runs", "Finished in state Failed('... RubricError: bad rubric')"))
    assert keep(record("prefect.task_runs", "Task run failed", ValueError("a bug")))
    assert keep(record("prefect.flow_runs", "Finished in state Failed('... ValueError: a bug')"))
