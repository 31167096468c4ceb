"""What the command line prints is whole and true: piped tables keep identifiers, config values name their source."""

from __future__ import annotations

import json
import os
import re
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
    from tierflow.core.ledger import Ledger

    vault = tmp_path / "vault"
    vault.mkdir()
    Ledger.for_vault(vault)  # a ledger with nothing in it (a vault with none at all says so: test_first_use)
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
    from tierflow.core.ledger import Ledger

    run_ids = ["20261118-060000-ab12cd", "20261118-061500-ef34ab"]
    held = [
        budget.OpenReservation(n, run_id, "student-feedback", "synthesise", 0.123456, 120000,
                               "2026-11-18T06:00:00+00:00", 3600.0, -1200.0, 123456, "marking-host.example.org")
        for n, run_id in enumerate(run_ids, start=1)
    ]  # fmt: skip
    monkeypatch.setattr(budget, "open_reservations", lambda ledger: held)
    vault = tmp_path / "vault"
    vault.mkdir()
    Ledger.for_vault(vault)
    for env in ({"COLUMNS": "80"}, {"COLUMNS": "80", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}):
        result = CliRunner().invoke(app, ["budget", "reservations", "--vault", str(vault)], env=env)
        assert result.exit_code == 0, result.output
        text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
        for run_id in run_ids:
            assert run_id in text, (env, text)
        assert len(re.findall(r"│ expired +│", text)) == 2, (env, text)
        assert "…" not in text, (env, text)  # nothing cut; a long host name may fold onto a second line


NARROW = 60
"""The tester's terminal: `stty cols 60`."""


def narrow_ledger(tmp_path: Path) -> list[dict[str, object]]:
    """A vault whose ledger has three calls on three tiers, the models differing only after `anthropic:claude-`;
    returns their rows."""
    from conftest import call_record

    from tierflow.core.ledger import Ledger
    from tierflow.core.usage import Usage

    vault = tmp_path / "vault"
    (vault / ".tierflow").mkdir(parents=True)
    ledger = Ledger.for_vault(vault)
    ledger.record(call_record())  # collate, light, claude-haiku-4-5, $0.0010
    ledger.record(
        call_record(phase="synthesise", tier="standard", model="claude-sonnet-4-6", cost_usd=0.0065,
                    usage=Usage(input_tokens=1234, output_tokens=567))
    )  # fmt: skip
    ledger.record(
        call_record(phase="draft", tier="deep", model="claude-opus-4-6", cost_usd=0.0421,
                    usage=Usage(input_tokens=12345, output_tokens=5678, reasoning_tokens=2048))
    )  # fmt: skip
    return ledger.rows()


NARROW_TERMINAL = {"COLUMNS": str(NARROW), "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
"""A 60-column terminal, as rich sees one: `TTY_COMPATIBLE` makes it treat captured output as a terminal."""

MODELS = ("anthropic:claude-haiku-4-5", "anthropic:claude-sonnet-4-6", "anthropic:claude-opus-4-6")
AMOUNTS = ("$0.0010", "$0.0065", "$0.0421")


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def assert_whole_and_within(text: str, *expected: str) -> None:
    """Every expected name and amount is printed whole, nothing is cut, and no line is wider than the terminal."""
    for item in expected:
        assert item in text, (item, text)
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= NARROW, text


def narrow_spend(tmp_path: Path, *args: str) -> str:
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    result = CliRunner().invoke(app, ["spend", "--vault", str(tmp_path / "vault"), *args], env=NARROW_TERMINAL)
    assert result.exit_code == 0, result.output
    return plain(result.output)


def test_spend_in_a_narrow_terminal_keeps_amounts_models_tiers_and_phases_whole(tmp_path: Path):
    narrow_ledger(tmp_path)
    for by, names in (
        ("phase", ("collate", "synthesise", "draft")),
        ("tier", ("light", "standard", "deep")),
        ("model", tuple(m.split(":")[1] for m in MODELS)),  # the ledger's model column, without its provider
    ):
        assert_whole_and_within(narrow_spend(tmp_path, "--by", by), *AMOUNTS, *names)
    assert_whole_and_within(narrow_spend(tmp_path, "--last", "3"), *AMOUNTS, *MODELS, "synthesise", "standard")


def test_a_spend_table_too_wide_for_the_terminal_leaves_out_token_columns_and_says_which(tmp_path: Path):
    narrow_ledger(tmp_path)
    text = narrow_spend(tmp_path, "--by", "phase")
    assert "│ synthesise │" in text and "$0.0065 │" in text, text  # still a table, a line per phase
    assert "not shown at this width: reasoning" in " ".join(text.split()), text


def test_the_run_summary_in_a_narrow_terminal_names_each_model_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from tierflow.cli.runner import print_summary
    from tierflow.report.run_report import RunSummary
    from tierflow.report.spend import spend_by

    rows = [{**r, "all_deep_usd": 0.05} for r in narrow_ledger(tmp_path)]
    summary = RunSummary(run_id="20261118-060000-ab12cd", flow="reading-notes", tokens=21483, cost_usd=0.0496)
    summary.phases = [p.table_row() for p in spend_by(rows, "phase")]
    for name, value in NARROW_TERMINAL.items():
        monkeypatch.setenv(name, value)
    print_summary(tmp_path / "vault", summary)
    text = plain(capsys.readouterr().out)
    assert_whole_and_within(text, *MODELS, *AMOUNTS, "synthesise", "standard", "light", "deep")


def test_a_narrow_terminal_changes_nothing_in_a_pipe(tmp_path: Path):
    """Piped, the listing is printed whole, a line per call, at the width its content needs."""
    narrow_ledger(tmp_path)
    result = piped(["spend", "--vault", str(tmp_path / "vault"), "--last", "3"], env={"COLUMNS": str(NARROW)})
    assert result.returncode == 0, result.stderr
    calls = [line for line in result.stdout.splitlines() if "anthropic:claude-" in line]
    assert len(calls) == 3 and all(line.count("$0.0") == 1 for line in calls), result.stdout
    assert "reason" in result.stdout and "cache r/w" in result.stdout and "…" not in result.stdout


SUBJECTS = ["東京の授業", "emoji 😀 note", "café"]


def spend_in(tmp_path: Path, args: list[str], *, encoding: str, to_file: bool) -> bytes:
    """`tierflow spend ARGS` with stdout in `encoding` (PYTHONIOENCODING, as a Windows code page gives it), into a
    new file (`> calls.csv`) or a pipe; its stdout's bytes."""
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    environ["PYTHONIOENCODING"] = encoding
    command = [*TIERFLOW, "spend", "--vault", str(tmp_path / "vault"), *args]
    if not to_file:
        result = subprocess.run(command, capture_output=True, timeout=900, env=environ)
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
        return result.stdout
    target = tmp_path / "out.csv"
    with target.open("wb") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.PIPE, timeout=900, env=environ)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    return target.read_bytes()


def ledger_with_subjects(tmp_path: Path) -> None:
    from conftest import call_record

    from tierflow.core.ledger import Ledger

    (tmp_path / "vault" / ".tierflow").mkdir(parents=True)
    ledger = Ledger.for_vault(tmp_path / "vault")
    for subject in SUBJECTS:
        ledger.record(call_record(subject=subject, project="café" if subject == "café" else "研究 😀"))


def test_spend_csv_is_utf8_whatever_the_consoles_code_page(tmp_path: Path):
    """`tierflow spend --format csv > calls.csv` where the console's code page is Windows-1252: UTF-8 all the same,
    every subject whole, with a BOM so that Excel reads it as UTF-8 (it reads a file without one in the code page);
    to a pipe, and on a UTF-8 console, UTF-8 without a BOM, as before. Rows end in CRLF, never CR CR LF."""
    import csv
    import io

    ledger_with_subjects(tmp_path)
    listing = ["--format", "csv", "--last", "3"]
    to_file = spend_in(tmp_path, listing, encoding="cp1252", to_file=True)
    assert to_file.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(to_file.decode("utf-8-sig"), newline="")))
    assert [r["subject"] for r in rows] == SUBJECTS and [r["project"] for r in rows] == ["研究 😀"] * 2 + ["café"]
    assert b"\r\r\n" not in to_file and to_file.count(b"\r\n") == 4
    piped_out = spend_in(tmp_path, listing, encoding="cp1252", to_file=False)
    assert piped_out == to_file[3:]  # the same UTF-8, no BOM
    assert spend_in(tmp_path, listing, encoding="utf-8", to_file=True) == to_file[3:]
    grouped = spend_in(tmp_path, ["--format", "csv", "--by", "project"], encoding="cp1252", to_file=True)
    by_project = {r["project"]: r["calls"] for r in csv.DictReader(io.StringIO(grouped.decode("utf-8-sig")))}
    assert by_project == {"研究 😀": "2", "café": "1"}


def test_a_spend_table_prints_on_a_code_page_that_lacks_its_characters(tmp_path: Path):
    """`tierflow spend --by project` on Windows-1252: what the code page cannot hold prints as `?`, the rest
    (`café`) as itself, and the table keeps its columns lined up; no UnicodeEncodeError."""
    ledger_with_subjects(tmp_path)
    for args, shown in ((["--by", "project"], ("?? ?", "café")), (["--by", "phase"], ("collate",))):
        text = spend_in(tmp_path, args, encoding="cp1252", to_file=False).decode("cp1252")
        assert all(s in text for s in shown), text
        lines = [line for line in text.splitlines() if line.startswith(("|", "+"))]
        assert lines and len({len(line) for line in lines}) == 1, text


def test_a_run_or_project_no_call_has_is_named_with_the_nearest_one_the_ledger_has(tmp_path: Path):
    """`tierflow spend --project edu7001` (the ledger has EDU7001) or a mistyped `--run`: the empty report is
    printed as asked, exit 0, and stderr says no call has it and which one was probably meant."""
    from conftest import call_record

    from tierflow.core.ledger import Ledger

    vault = tmp_path / "vault"
    (vault / ".tierflow").mkdir(parents=True)
    ledger = Ledger.for_vault(vault)
    ledger.record(call_record(run_id="20261118-060000-ab12cd", project="EDU7001"))
    ledger.record(call_record(run_id="20261119-070000-ef34ab", project=None))
    cases = [
        (["--project", "edu7001"], "no call in the ledger has --project edu7001; did you mean --project EDU7001?"),
        (["--run", "20261118-060000-ab12ce"], "; did you mean --run 20261118-060000-ab12cd?"),
        (["--project", "zzz"], "no call in the ledger has --project zzz (`tierflow spend --by project` lists"),
    ]  # fmt: skip
    for options, said in cases:
        for fmt in ("table", "json", "csv"):
            args = [*TIERFLOW, "spend", "--vault", str(vault), "--format", fmt, *options]
            result = subprocess.run(args, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, result.stderr
            assert said in " ".join(result.stderr.split()), (options, fmt, result.stderr)
            if fmt == "json":
                assert json.loads(result.stdout) == []  # the output itself stays what was asked for
    matched = subprocess.run(
        [*TIERFLOW, "spend", "--vault", str(vault), "--project", "EDU7001"], capture_output=True, text=True, timeout=600
    )
    assert matched.returncode == 0 and "note:" not in matched.stderr, matched.stderr


@pytest.mark.usefixtures("prefect_harness")
def test_resume_prints_no_prefect_log_line_without_verbose(reading_vault: Path):
    """`tierflow resume` printed Prefect's INFO lines (a flow run beginning, each task run "Finished in state
    Completed()"), which `tierflow run` keeps to `--verbose`: it quieted Prefect only after loading the flow, which
    had imported Prefect and so set up its logging."""
    from prefect.settings import PREFECT_API_URL
    from typer.testing import CliRunner

    from tierflow.cli.app import app
    from tierflow.core.ledger import Ledger

    since, until = READING_WEEK
    first = CliRunner().invoke(
        app, ["run", "reading-notes", "--vault", str(reading_vault), "--since", since, "--until", until]
    )
    assert first.exit_code == 0, first.output
    (run_id,) = {r["run_id"] for r in Ledger.for_vault(reading_vault).rows()}
    # Prefect's settings as a user's shell has them: the run above, in this process, quieted them in os.environ.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING_HANDLERS_")}
    resume = [*TIERFLOW, "resume", run_id, "--vault", str(reading_vault)]
    env = {**environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    result = subprocess.run(resume, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr
    assert f"starting run {run_id}" in result.stderr  # it ran, and said so
    logged = [line for line in (result.stdout + result.stderr).splitlines() if re.search(r"\| INFO +\|", line)]
    assert logged == [], logged
