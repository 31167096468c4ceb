"""Every `tierflow ...` command a message tells the user to run works as printed, pasted from any folder: it names
the vault (quoted: an Obsidian vault's path often holds a space), and the options and `--param`s of the run it
repeats. Each test takes the printed command, splits it as a shell would, and runs it from another folder."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import frontmatter
import pytest
from lms_exports import moodle_zip
from test_lms_resubmission import ASSIGNMENT as RESUBMITTED
from test_lms_resubmission import imported, resubmitted
from test_lms_roundtrip import worksheet_for
from test_public_api import doc_code
from test_your_own_flow_cli import install, said
from typer.testing import CliRunner

from tierflow.cli.app import app

ASSIGNMENT = "Teaching/EDU7001/essay-1"
MODULE = "tierflow_doc_triage_stops"
LOCK = "Triage.lock"
"""While this file is in the vault, the test's triage flow stops with a VaultError after its triage calls."""


def printed(output: str, start: str) -> list[str]:
    """The arguments of the `tierflow ...` command that `output` quotes in backticks and that begins with `start`,
    split as a shell splits them (without the leading `tierflow`)."""
    commands = [c for c in re.findall(r"`(tierflow [^`]*)`", output) if c.startswith(start)]
    assert commands, f"no `{start}...` in: {output}"
    words = shlex.split(commands[0])
    assert words[0] == "tierflow"
    return words[1:]


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder that is not the vault nor holds it: where the user pastes the command."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_the_rubric_show_that_normalise_suggests_runs_as_printed(
    feedback_vault: Path, tmp_path: Path, elsewhere: Path
) -> None:
    vault = feedback_vault.rename(tmp_path / "My Vault")
    done = CliRunner().invoke(app, ["rubric", "normalise", "--vault", str(vault), "--assignment", ASSIGNMENT])
    assert done.exit_code == 2 and "already parses" in done.output, done.output
    show = printed(said(done), "tierflow rubric show")
    shown = CliRunner().invoke(app, show)
    assert shown.exit_code == 0, shown.output  # it was `error: give the vault: ...` (exit 2)
    assert "Argument" in shown.output
    assert show[-2:] == ["--vault", str(vault.resolve())]


@pytest.mark.usefixtures("prefect_harness")
def test_the_feedback_run_that_import_and_export_suggest_after_a_resubmission_runs_as_printed(
    tmp_path: Path, elsewhere: Path
) -> None:
    vault = imported(tmp_path / "My Drive", versioned=True)
    shutil.copy(vault / ASSIGNMENT / "brief.md", vault / RESUBMITTED / "brief.md")
    worksheet = tmp_path / "worksheet.csv"
    worksheet.write_bytes(worksheet_for(resubmitted()[:3]))
    export = moodle_zip(tmp_path / "second.zip", resubmitted()[:3])
    imported_again = CliRunner().invoke(
        app, ["import", "submissions", str(export), "--vault", str(vault), "-a", RESUBMITTED]
    )
    assert imported_again.exit_code == 0, imported_again.output
    from_import = printed(said(imported_again), "tierflow run student-feedback")
    args = ["export", "feedback", "--vault", str(vault), "-a", RESUBMITTED, "--to", "moodle-worksheet"]
    exported = CliRunner().invoke(app, [*args, "--worksheet", str(worksheet), "--dry-run"])
    assert exported.exit_code == 0, exported.output
    from_export = printed(said(exported), "tierflow run student-feedback")
    rerun = CliRunner().invoke(app, from_import)
    assert rerun.exit_code == 0, rerun.output  # it was `error: give the vault: ...` (exit 2)
    assert from_import == from_export == [
        "run", "student-feedback", "--assignment", RESUBMITTED, "--vault", str(vault.resolve())
    ]  # fmt: skip
    drafted = [p for p in (vault / RESUBMITTED / "feedback").glob("*.md") if "1001" in p.name]
    assert len(drafted) == 2, drafted  # the reviewed draft for the old submission, and one for the new


def test_a_run_of_an_assignment_folder_not_in_the_vault_is_refused_at_once_with_the_import_that_fills_it(
    feedback_vault: Path, tmp_path: Path, elsewhere: Path
) -> None:
    vault = feedback_vault.rename(tmp_path / "My Vault")
    missing = "Teaching/EDU7001/essay-9"
    refused = CliRunner().invoke(app, ["run", "student-feedback", "--vault", str(vault), "--assignment", missing])
    assert refused.exit_code == 2, refused.output
    assert "starting run" not in refused.output  # refused before any run (or Prefect server) started
    message = said(refused)
    assert f"assignment folder {missing} does not exist in {vault.resolve()}" in message
    assert "Teaching/EDU7001 holds: essay-1." in message  # the folder beside it, which was meant
    command = printed(message, "tierflow import submissions")
    assert command[:3] == ["import", "submissions", "EXPORT"]
    command[2] = str(moodle_zip(tmp_path / "export.zip", resubmitted()[:2]))
    done = CliRunner().invoke(app, command)
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (vault / missing / "submissions").glob("*.md")) == ["1001.md", "1002.md"]


@pytest.mark.parametrize("command", ["run", "plan"])
def test_the_missing_vault_error_names_the_flow_asked_for(command: str, elsewhere: Path) -> None:
    done = CliRunner().invoke(app, [command, "student-feedback"])
    assert done.exit_code == 2
    assert f"give the vault: tierflow {command} student-feedback --vault DIR" in said(done)  # not reading-notes


def stopping(code: str) -> str:
    """The doc's flow, stopping with a VaultError after its triage calls while `LOCK` is in the vault."""
    triaged = "        verdicts = run.absorb(each)\n"
    assert triaged in code
    stop = (
        "        from pathlib import Path\n"
        "        from tierflow.core.errors import VaultError\n"
        f"        if (Path(vault) / {LOCK!r}).exists():\n"
        "            raise VaultError('the Triage folder is locked')\n"
    )
    return code.replace(triaged, triaged + stop)


@pytest.fixture
def stopping_triage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The doc's reading-triage flow (it takes no run_id), registered, and a vault whose notes are in Reading/."""
    install(tmp_path / "site", MODULE, stopping(doc_code()), f"reading-triage = {MODULE}:SPEC")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    reading = tmp_path / "My Vault" / "Reading"
    reading.mkdir(parents=True)
    (reading / "Long read.md").write_text("---\ntitle: Long read\n---\n\n" + "A careful argument. " * 20)
    (reading / "Stub.md").write_text("---\ntitle: Stub\n---\n\nTODO\n")
    yield tmp_path / "My Vault"
    sys.modules.pop(MODULE, None)


@pytest.mark.usefixtures("prefect_harness")
def test_the_rerun_a_stopped_run_of_your_own_flow_suggests_keeps_its_params(
    stopping_triage: Path, elsewhere: Path
) -> None:
    vault = stopping_triage
    (vault / LOCK).write_text("")
    stopped = CliRunner().invoke(app, ["run", "reading-triage", "--vault", str(vault), "--param", "folder=Reading"])
    assert stopped.exit_code == 3, stopped.output
    assert "the Triage folder is locked" in said(stopped)
    spend = CliRunner().invoke(app, printed(said(stopped), "tierflow spend"))
    assert spend.exit_code == 0, spend.output
    again = printed(said(stopped), "tierflow run reading-triage")

    (vault / LOCK).unlink()  # "once that is fixed"
    rerun = CliRunner().invoke(app, again)
    assert rerun.exit_code == 0, rerun.output  # it read the default folder, Inbox, which is not there (exit 2)
    assert again == ["run", "reading-triage", "--vault", str(vault.resolve()), "--param", "folder=Reading"]
    assert "Long read" in (vault / "Triage" / "Reading triage.md").read_text()


@pytest.mark.usefixtures("prefect_harness")
def test_the_rerun_resume_suggests_for_a_flow_without_run_id_keeps_its_params(
    stopping_triage: Path, elsewhere: Path
) -> None:
    vault = stopping_triage
    first = CliRunner().invoke(app, ["run", "reading-triage", "--vault", str(vault), "--param", "folder=Reading"])
    assert first.exit_code == 0, first.output
    run_id = frontmatter.load(vault / "Triage" / "Reading triage.md")["tierflow_run"]
    refused = CliRunner().invoke(app, ["resume", run_id, "--vault", str(vault)])
    assert refused.exit_code == 2 and "cannot continue that run" in said(refused), refused.output
    again = printed(said(refused), "tierflow run reading-triage")
    rerun = CliRunner().invoke(app, again)
    assert rerun.exit_code == 0, rerun.output  # it read the default folder, Inbox, which is not there (exit 2)
    assert again == ["run", "reading-triage", "--vault", str(vault.resolve()), "--param", "folder=Reading"]


def taking_config(code: str) -> str:
    """The doc's flow, taking a `config` (still no run_id) and running on it."""
    signature = 'def reading_triage(vault: str, folder: str = "Inbox") -> RunSummary:'
    begin = 'parameters={"folder": folder}, folders=[folder])'
    assert signature in code and begin in code
    code = code.replace(signature, signature.replace(") ->", ", config: str | None = None) ->"))
    return code.replace(begin, begin[:-1] + ", config=config)")


@pytest.fixture
def config_triage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The doc's reading-triage flow taking a config (and no run_id), registered, and a vault with Reading/."""
    module = "tierflow_doc_triage_config"
    install(tmp_path / "site", module, taking_config(doc_code()), f"reading-triage = {module}:SPEC")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    reading = tmp_path / "My Vault" / "Reading"
    reading.mkdir(parents=True)
    (reading / "Long read.md").write_text("---\ntitle: Long read\n---\n\n" + "A careful argument. " * 20)
    yield tmp_path / "My Vault"
    sys.modules.pop(module, None)


@pytest.mark.usefixtures("prefect_harness")
def test_the_rerun_resume_suggests_for_a_flow_without_run_id_takes_the_config_given_to_resume(
    config_triage: Path, tmp_path: Path, elsewhere: Path
) -> None:
    """As `tierflow resume` itself runs on the --config given to it, so does the `tierflow run` line it prints: the
    config the run remembered is a path where it started (a teammate's copy, or a file since moved)."""
    vault = config_triage
    theirs, mine = tmp_path / "theirs.toml", tmp_path / "mine.toml"
    theirs.write_text('profile = "offline"\n')
    mine.write_text('profile = "offline"\n')
    args = ["run", "reading-triage", "--vault", str(vault), "--config", str(theirs), "--param", "folder=Reading"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    theirs.unlink()  # the file the run started on is gone
    run_id = frontmatter.load(vault / "Triage" / "Reading triage.md")["tierflow_run"]
    refused = CliRunner().invoke(app, ["resume", run_id, "--vault", str(vault), "--config", str(mine)])
    assert refused.exit_code == 2 and "cannot continue that run" in said(refused), refused.output
    again = printed(said(refused), "tierflow run reading-triage")
    assert again[again.index("--config") + 1] == str(mine), again
    rerun = CliRunner().invoke(app, again)
    assert rerun.exit_code == 0, rerun.output  # it was `config file ... theirs.toml does not exist` (exit 2)


def test_the_missing_vault_error_names_your_own_flow(stopping_triage: Path, elsewhere: Path) -> None:
    done = CliRunner().invoke(app, ["plan", "reading-triage"])
    assert done.exit_code == 2
    assert "give the vault: tierflow plan reading-triage --vault DIR" in said(done)


def test_a_run_with_a_relative_config_resumes_on_that_config_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--config offline.toml`, typed relative to where the run started: the run's `tierflow resume` line, pasted
    in another folder that has a file of that name of its own, continues on the config the run ran on."""
    from tierflow.cli.runner import DEMO_WEEK, copy_demo_vault
    from tierflow.core.ledger import Ledger

    vault = copy_demo_vault(tmp_path / "My Vault")
    started = tmp_path / "started"
    started.mkdir()
    (started / "offline.toml").write_text('profile = "offline"\n')
    monkeypatch.chdir(started)
    since, until = (d.isoformat() for d in DEMO_WEEK)
    args = ["run", "reading-notes", "--vault", str(vault), "--config", "offline.toml", "--since", since]
    done = CliRunner().invoke(app, [*args, "--until", until])
    assert done.exit_code == 0, done.output
    resume = printed(said(done), "tierflow resume")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "offline.toml").write_text('profile = "no-such-profile"\n')  # another config of the same name
    monkeypatch.chdir(elsewhere)
    resumed = CliRunner().invoke(app, resume)
    assert resumed.exit_code == 0, resumed.output
    (run_id,) = {r["run_id"] for r in Ledger.for_vault(vault).rows()}
    _, parameters = Ledger.for_vault(vault).run_parameters(run_id)
    assert parameters["config"] == str(started / "offline.toml")
    assert {r["provider"] for r in Ledger.for_vault(vault).rows()} == {"offline"}
