"""A newcomer's first commands: a mistyped vault, a missing provider key, a non-UTF-8 locale. Each is named in one
line before anything is made, started or spent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tierflow.core.errors import LedgerError
from tierflow.core.ledger import Ledger

TIERFLOW = [sys.executable, "-m", "tierflow.cli"]


def tierflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TIERFLOW, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "400", **(env or {})},
    )


@pytest.mark.parametrize(
    "command",
    [["spend"], ["spend", "--budget"], ["routing", "explain", "abc"], ["budget", "reservations"]],
    ids=lambda c: " ".join(c),
)
def test_a_report_on_a_folder_without_a_ledger_says_so_and_makes_nothing(tmp_path: Path, command: list[str]):
    folder = tmp_path / "Notes"  # a mistyped vault: a folder, with no ledger in it
    folder.mkdir()
    result = tierflow(*command, "--vault", str(folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    said = " ".join(result.stderr.split())
    assert f"there is no ledger yet at {folder / '.tierflow' / 'ledger.sqlite'}" in said, said
    assert "tierflow run" in said and "--vault" in said, said
    assert "Ledger: 0 calls" not in result.stdout
    assert list(folder.iterdir()) == []  # no .tierflow/ledger.sqlite made for a report


def test_reading_a_missing_sqlite_ledger_creates_nothing_and_recording_creates_it(tmp_path: Path):
    file = tmp_path / ".tierflow" / "ledger.sqlite"
    with pytest.raises(LedgerError, match="no ledger yet"):
        Ledger(f"sqlite:///{file}", reading=True)
    assert not file.exists()
    Ledger(f"sqlite:///{file}")  # a command that records (run, ask) makes it, as before
    assert file.exists()
    assert Ledger(f"sqlite:///{file}", reading=True).rows() == []
