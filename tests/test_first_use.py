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
    [["spend"], ["spend", "--budget"], ["routing", "explain", "abc"], ["budget", "reservations"], ["resume", "r1"]],
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


MIXED = """
[providers.anthropic]
kind = "anthropic"
api_key_env = "ANTHROPIC_API_KEY"
[providers.openai]
kind = "openai"
api_key_env = "OPENAI_API_KEY"
[providers.local]
kind = "openai-compatible"
base_url = "http://localhost:11434/v1"
[tiers.light]
model = "local:llama3.2:3b"
[tiers.standard]
model = "openai:gpt-5-mini"
[tiers.deep]
model = "anthropic:claude-opus-4-6"
[tiers.spare]
model = "anthropic:claude-haiku-4-5"
[routing]
low = "light"
medium = "light"
high = "standard"
ceiling = "standard"
"""


def test_a_run_without_its_providers_key_is_refused_before_anything_starts(reading_vault: Path):
    result = tierflow("run", "reading-notes", "--profile", "anthropic", "--vault", str(reading_vault),
                      env={"ANTHROPIC_API_KEY": "", "PREFECT_API_URL": "http://127.0.0.1:1/api"})  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    said = " ".join(result.stderr.split())
    assert said.startswith("error: ") and said.count("error:") == 1, said
    assert "ANTHROPIC_API_KEY (anthropic, for tiers light, standard, deep)" in said, said
    assert "export ANTHROPIC_API_KEY=..." in said and "--profile offline" in said, said
    assert "Nothing was started or spent" in said, said
    assert not (reading_vault / ".tierflow" / "ledger.sqlite").exists()  # no ledger, no reservation, no run


def test_only_the_keys_of_providers_the_routing_table_reaches_are_asked_for(tmp_path: Path):
    from tierflow.cli.app import missing_keys
    from tierflow.core.config import load_config

    vault = tmp_path / "vault"
    (vault / ".tierflow").mkdir(parents=True)
    (vault / ".tierflow" / "config.toml").write_text(MIXED, encoding="utf-8")
    cfg = load_config(vault)
    env = {"ANTHROPIC_API_KEY": "", "OPENAI_API_KEY": ""}
    with pytest.MonkeyPatch.context() as mp:
        for name in env:
            mp.delenv(name, raising=False)
        said = missing_keys(cfg, {}, "reading-notes")  # light, escalating to standard: OpenAI's key; no Anthropic
        assert said is not None and "OPENAI_API_KEY (openai, for tier standard)" in said
        assert "ANTHROPIC" not in said
        said = missing_keys(cfg, {"draft": "deep"}, "reading-notes")  # --tier draft=deep reaches Anthropic
        assert said is not None and "ANTHROPIC_API_KEY (anthropic, for tier deep)" in said
        said = missing_keys(cfg, {"*": "light"}, "reading-notes")  # an answer failing on light escalates
        assert said is not None and "OPENAI_API_KEY" in said and "ANTHROPIC" not in said
        (vault / ".tierflow" / "config.toml").write_text(MIXED + "escalate = false\n", encoding="utf-8")
        local = load_config(vault)
        assert missing_keys(local, {"*": "light"}, "reading-notes") is None  # the local server needs no key
        mp.setenv("OPENAI_API_KEY", "k")
        assert missing_keys(cfg, {}, "reading-notes") is None


def test_plan_without_a_key_warns_and_still_estimates(reading_vault: Path):
    result = tierflow("plan", "reading-notes", "--profile", "anthropic", "--vault", str(reading_vault),
                      env={"ANTHROPIC_API_KEY": ""})  # fmt: skip
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "warning: " in said and "ANTHROPIC_API_KEY" in said and "refuses to start" in said, said
    assert "Estimate" in result.stdout


C_LOCALE = {"PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0", "LC_ALL": "C", "LANG": "C"}
"""A locale whose encoding is ASCII, with Python's own coercion to UTF-8 turned off."""


def test_a_non_ascii_vault_path_under_a_non_utf8_locale_is_one_line_naming_the_fix(tmp_path: Path):
    vault = tmp_path / "Forschung é"
    vault.mkdir()
    env = {**os.environ, "COLUMNS": "400", **C_LOCALE}
    env.pop("PYTHONIOENCODING", None)
    for args, cwd in ((["run", "reading-notes", "--profile", "offline", "--vault", os.fsencode(vault)], None),
                      (["spend", "--vault", "."], vault)):  # fmt: skip
        result = subprocess.run([*TIERFLOW, *args], capture_output=True, env=env, cwd=cwd, timeout=300)
        said = " ".join(result.stderr.decode("ascii", "backslashreplace").split())
        assert result.returncode == 2 and "Traceback" not in said, said
        assert said.startswith("error: ") and said.count("error:") == 1, said
        assert "Forschung \\xc3\\xa9 is not text in this locale's encoding (ascii)" in said, said
        assert "export LC_ALL=C.UTF-8" in said and "PYTHONUTF8=1" in said, said
    assert list(vault.iterdir()) == []  # nothing started: no ledger, no note


def test_limits_show_on_a_vault_without_a_ledger_shows_the_limits_with_nothing_in_flight(tmp_path: Path):
    vault = tmp_path / "vault"
    (vault / ".tierflow").mkdir(parents=True)
    (vault / ".tierflow" / "config.toml").write_text('[limits]\nmechanism = "ledger"\n', encoding="utf-8")
    result = tierflow("limits", "show", "--vault", str(vault))
    assert result.returncode == 0, result.stderr
    assert "calls in flight" in result.stdout and "deep" in result.stdout
    assert sorted(p.name for p in (vault / ".tierflow").iterdir()) == ["config.toml"]  # no ledger made
