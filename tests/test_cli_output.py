"""What the command line prints is whole and true: piped tables keep identifiers, config values name their source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import READING_WEEK

TIERFLOW = [sys.executable, "-m", "tierflow.cli"]


def piped(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run tierflow with stdout a pipe, as `tierflow ... > file` or `| less` would."""
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [*TIERFLOW, *args], capture_output=True, text=True, timeout=900, env={**environ, **(env or {})}
    )


def test_a_piped_plan_shows_full_phase_and_model_names(reading_vault: Path):
    since, until = READING_WEEK
    result = piped(
        ["plan", "reading-notes", "--vault", str(reading_vault), "--since", since, "--until", until],
        env={"COLUMNS": "80"},
    )
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    rows = [line for line in result.stdout.splitlines() if "offline:extractive-" in line]
    assert {"collate", "synthesise", "draft"} <= {line.split("│")[1].strip() for line in rows}
    for model in ("offline:extractive-light", "offline:extractive-deep", "offline:extractive-standard"):
        assert model in result.stdout


def test_a_piped_spend_table_shows_full_model_names(tmp_path: Path):
    vault = tmp_path / "vault"
    vault.mkdir()
    asked = piped(["ask", "--vault", str(vault), "--complexity", "medium", "Summarise: feedback matters."])
    assert asked.returncode == 0, asked.stderr
    for args in ([], ["--by", "model"], ["--by", "phase"]):
        result = piped(["spend", "--vault", str(vault), *args], env={"COLUMNS": "60"})
        assert result.returncode == 0, result.stderr
        assert "…" not in result.stdout
        assert ("extractive-standard" if args != ["--by", "phase"] else "ask") in result.stdout
    assert json.loads(piped(["spend", "--vault", str(vault), "--format", "json"]).stdout)[0]["tier"] == "standard"


def test_help_keeps_config_names_in_brackets():
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    runner = CliRunner()
    limits = runner.invoke(app, ["limits", "--help"])
    assert limits.exit_code == 0, limits.output
    assert "[tiers.<name>] concurrency" in " ".join(limits.output.split())
    run = runner.invoke(app, ["run", "--help"])
    assert "[feedback] in config" in " ".join(run.output.split())


def test_budget_reservations_as_json_is_one_array_even_when_none_is_open(tmp_path: Path):
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    vault = tmp_path / "vault"
    vault.mkdir()
    result = CliRunner().invoke(app, ["budget", "reservations", "--vault", str(vault), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == []


def test_config_names_in_run_messages_reach_the_console(reading_vault: Path):
    """A skip reason that names `[vault] max_concepts` is printed with its brackets, not read as Rich markup."""
    config = reading_vault / ".tierflow" / "config.toml"
    config.write_text(config.read_text() + "max_concepts = 1\n", encoding="utf-8")  # inside [vault]
    since, until = READING_WEEK
    result = piped(
        [
            "run",
            "reading-notes",
            "--vault",
            str(reading_vault),
            "--since",
            since,
            "--until",
            until,
            "--profile",
            "offline",
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    console = " ".join((result.stdout + result.stderr).split())
    assert "more than [vault] max_concepts = 1 concepts" in console, console[-3000:]


def test_a_reader_that_stops_early_ends_the_command_quietly_and_successfully(tmp_path: Path):
    """`tierflow spend --format jsonl | head -1`: the rest of the output has nowhere to go; no traceback, no
    message, exit 0, whatever the format and however much was left to write."""
    from conftest import call_record

    from tierflow.core.ledger import Ledger

    vault = tmp_path / "vault"
    (vault / ".tierflow").mkdir(parents=True)
    ledger = Ledger.for_vault(vault)
    with ledger.transaction() as conn:
        for i in range(3000):  # far more than a pipe holds (64 KiB)
            ledger.record(call_record(subject=f"note {i}"), conn=conn)
    for fmt in ("json", "jsonl", "csv", "otel", "table"):
        args = [*TIERFLOW, "spend", "--vault", str(vault), "--format", fmt, "--last", "0"]
        with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            assert proc.stdout is not None and proc.stdout.read(100)
            proc.stdout.close()  # as `head -c 100` does once it has its bytes
            err = proc.stderr.read() if proc.stderr else b""
            assert proc.wait(timeout=600) == 0, (fmt, err)
        assert not err.strip(), (fmt, err)


def test_budget_reservations_never_cut_a_run_id_or_a_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """At 80 columns, in a pipe and in a terminal, every run id and state is printed whole."""
    import re

    from typer.testing import CliRunner

    from tierflow.cli.app import app
    from tierflow.core import budget

    run_ids = ["20261118-060000-ab12cd", "20261118-061500-ef34ab"]
    held = [
        budget.OpenReservation(n, run_id, "student-feedback", "synthesise", 0.123456, 120000,
                               "2026-11-18T06:00:00+00:00", 3600.0, -1200.0, 123456, "marking-host.example.org")
        for n, run_id in enumerate(run_ids, start=1)
    ]  # fmt: skip
    monkeypatch.setattr(budget, "open_reservations", lambda ledger: held)
    vault = tmp_path / "vault"
    vault.mkdir()
    for env in ({"COLUMNS": "80"}, {"COLUMNS": "80", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}):
        result = CliRunner().invoke(app, ["budget", "reservations", "--vault", str(vault)], env=env)
        assert result.exit_code == 0, result.output
        text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
        for run_id in run_ids:
            assert run_id in text, (env, text)
        assert len(re.findall(r"│ expired +│", text)) == 2, (env, text)
        assert "…" not in text, (env, text)  # nothing cut; a long host name may fold onto a second line
