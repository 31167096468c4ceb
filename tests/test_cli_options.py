"""The same option is spelled the same way in every command that takes it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tierflow.cli.app import app

REPO = Path(__file__).resolve().parents[1]


def commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """Every command under `group` (Typer's own click), by its words (`schedule student-feedback`)."""
    if hasattr(group, "list_commands"):
        ctx = group.context_class(group)
        subs = [(name, group.get_command(ctx, name)) for name in group.list_commands(ctx)]
        return [c for name, sub in subs if sub is not None for c in commands(sub, (*path, name))]
    return [(" ".join(path), group)]


def test_every_assignment_option_takes_a_too():
    found = {
        name: param.opts
        for name, command in commands(typer.main.get_command(app))
        for param in command.params
        if "--assignment" in getattr(param, "opts", [])
    }
    assert {"run", "plan", "schedule student-feedback", "import submissions", "export feedback"} <= set(found)
    assert {name for name, opts in found.items() if "-a" not in opts} == set()


@pytest.mark.parametrize("command", ["run", "plan"])
def test_student_feedback_reads_its_assignment_from_a(tmp_path, command):
    vault = tmp_path / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    args = [command, "student-feedback", "--vault", str(vault), "-a", "../elsewhere"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "outside" in result.stderr, result.output
