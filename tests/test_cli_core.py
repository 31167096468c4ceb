"""The `tierflow` command: ask, spend, config show, and a lazy --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import anthropic_config, openai_config, write_config

from tierflow.testing.double import Reply

TIERFLOW = [sys.executable, "-m", "tierflow.cli"]


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TIERFLOW, *args], capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})}
    )


def test_ask_against_a_local_openai_compatible_server_records_the_double_usage(tmp_path: Path, double):
    usage = {
        "prompt_tokens": 61,
        "completion_tokens": 17,
        "total_tokens": 78,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    double.responder = lambda r: Reply(text="Feedback closes the gap.", usage=usage)
    vault = tmp_path / "vault"
    config = write_config(vault / ".tierflow" / "config.toml", openai_config(double, kind="openai-compatible"))
    result = run(["ask", "--vault", str(vault), "--complexity", "high", "What does feedback do?"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Feedback closes the gap."
    assert "deep -> openai:gpt-5.1" in result.stderr and "$0.000000" in result.stderr
    (sent,) = double.model_calls()
    assert sent.json["model"] == "gpt-5.1" and "What does feedback do?" in sent.text

    spend = run(["spend", "--vault", str(vault), "--format", "json"])
    assert spend.returncode == 0, spend.stderr
    (row,) = json.loads(spend.stdout)  # one JSON document: an array of rows
    assert (row["input_tokens"], row["output_tokens"], row["reasoning_tokens"], row["cache_read_tokens"]) == (
        61,
        12,
        5,
        0,
    )
    assert (row["flow"], row["phase"], row["tier"], row["provider"], row["model"]) == (
        "ask",
        "ask",
        "deep",
        "openai",
        "gpt-5.1",
    )
    assert row["usage_known"] is True and row["batch"] is False and row["cost_usd"] == 0.0
    totals = run(["spend", "--vault", str(vault), "--format", "json", "--by", "tier"])
    (total,) = json.loads(totals.stdout)
    assert "total" not in total and total["tier"] == "deep" and total["calls"] == 1
    lines = run(["spend", "--vault", str(vault), "--format", "jsonl", "--by", "tier"]).stdout.splitlines()
    assert [json.loads(line) for line in lines] == [total]
    csv_out = run(["spend", "--vault", str(vault), "--format", "csv"]).stdout.splitlines()
    assert csv_out[0].startswith("id,timestamp,run_id,flow,flow_run_id,task_run_id,phase")
    assert config.exists()


def test_ask_reports_what_the_whole_ask_spent_not_only_the_kept_answer(tmp_path: Path, double):
    """A cut-off answer is retried: both calls are billed, and the line says so beside the kept answer's cost."""
    replies = iter([Reply(text="Feedback closes", stop_reason="max_tokens"), Reply(text="Feedback closes the gap.")])
    double.responder = lambda r: next(replies)
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", anthropic_config(double))
    result = run(
        ["ask", "--vault", str(vault), "--tier", "standard", "What does feedback do?"], {"ANTHROPIC_API_KEY": "k"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Feedback closes the gap."
    rows = json.loads(run(["spend", "--vault", str(vault), "--format", "json"]).stdout)
    assert len(rows) == 2 and len(double.model_calls()) == 2
    kept = rows[-1]["cost_usd"]
    assert f"; this answer ${kept:.6f}; this ask ${sum(r['cost_usd'] for r in rows):.6f} over 2 calls" in result.stderr


def test_ask_sends_a_prompt_with_bytes_that_are_not_utf8_as_u_fffd(tmp_path: Path, double):
    double.responder = lambda r: Reply(text="Feedback is information about a gap.")
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", anthropic_config(double))
    prompt = os.fsdecode(b"Define \xff\xfe caf\xe9")  # as Python reads such an argument: lone surrogates
    result = run(["ask", "--vault", str(vault), "--tier", "standard", prompt], {"ANTHROPIC_API_KEY": "k"})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "the prompt is not UTF-8 text (first at byte 7)" in " ".join(result.stderr.split())
    (sent,) = double.model_calls()
    assert "Define \ufffd\ufffd caf\ufffd" in sent.text


def test_a_ledger_file_that_is_not_a_database_is_one_line_naming_it_and_the_fix(tmp_path: Path, double):
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", anthropic_config(double))
    damaged = vault / ".tierflow" / "ledger.sqlite"
    damaged.write_bytes(bytes(range(256)) * 20)  # not SQLite's header: no tierflow ledger
    for args in (
        ["ask", "--tier", "standard", "Define feedback."],
        ["routing", "suggest"],
        ["routing", "fit"],
        ["spend"],
    ):
        result = run([*args, "--vault", str(vault)], {"ANTHROPIC_API_KEY": "k"})
        assert result.returncode == 1 and "Traceback" not in result.stderr, (args, result.stderr)
        message = " ".join(result.stderr.split())
        assert len(result.stderr.strip().splitlines()) <= 2, (args, result.stderr)  # one line, however wrapped
        assert str(damaged) in message and "not a tierflow ledger or is damaged. Move it aside" in message, args
    assert double.model_calls() == []


def test_an_unreachable_ledger_server_is_one_line_naming_it_without_its_password(tmp_path: Path, double):
    vault = tmp_path / "vault"
    url = "postgresql+psycopg://tierflow:hunter2-secret@127.0.0.1:1/tierflow"  # port 1: refused at once
    write_config(vault / ".tierflow" / "config.toml", f'ledger_url = "{url}"\n' + anthropic_config(double))
    for args in (["ask", "--tier", "standard", "Define feedback."], ["spend"]):
        result = run([*args, "--vault", str(vault)], {"ANTHROPIC_API_KEY": "k"})
        assert result.returncode == 1 and "Traceback" not in result.stderr, (args, result.stderr)
        message = " ".join(result.stderr.split())
        assert "postgresql+psycopg://tierflow:***@127.0.0.1:1/tierflow" in message, args
        assert "hunter2" not in message and "Connection refused" in message, args
        assert "no PostgreSQL server is running at that host and port (or socket folder): start it" in message, args
    assert double.model_calls() == []


def test_ask_offline_needs_no_keys(tmp_path: Path):
    result = run(["ask", "--profile", "offline", "--vault", str(tmp_path), "Summarise: Feedback matters."])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[offline extractive model]")


def test_ask_with_a_missing_key_says_what_to_set(tmp_path: Path):
    result = run(["ask", "--profile", "anthropic", "--vault", str(tmp_path), "hi"], env={"ANTHROPIC_API_KEY": ""})
    assert result.returncode == 1
    assert "ANTHROPIC_API_KEY is not set" in result.stderr and "Traceback" not in result.stderr


def test_config_show_prints_sources_and_never_a_key(tmp_path: Path):
    secret = "sk-ant-supersecretvalue123"
    result = run(
        ["config", "show", "--profile", "anthropic", "--vault", str(tmp_path)],
        env={"ANTHROPIC_API_KEY": secret},
    )
    assert result.returncode == 0, result.stderr
    assert "ANTHROPIC_API_KEY" in result.stdout and "profile:anthropic" in result.stdout
    assert secret not in result.stdout + result.stderr


def test_bad_config_is_a_clear_error_not_a_traceback(tmp_path: Path):
    path = write_config(tmp_path / "bad.toml", '[routing]\nhigh = "galactic"\n')
    result = run(["config", "show", "--config", str(path)])
    assert result.returncode == 2
    assert "routing.high" in result.stderr and str(path) in result.stderr and "Traceback" not in result.stderr


def test_missing_vault_is_a_clear_error(tmp_path: Path):
    result = run(["spend", "--vault", str(tmp_path / "nowhere")])
    assert result.returncode == 2 and "does not exist" in result.stderr
    afile = tmp_path / "file.md"
    afile.write_text("x")
    result = run(["spend", "--vault", str(afile)])
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr


def test_limits_given_a_vault_that_is_not_there_say_so_and_create_nothing(tmp_path: Path):
    """A mistyped --vault: `limits show` made the folder, with a ledger in it, and showed its (empty) slots."""
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    nowhere = tmp_path / "Reserch"
    for command in ("show", "apply"):
        result = CliRunner().invoke(app, ["limits", command, "--vault", str(nowhere)])
        assert result.exit_code == 2, result.output
        assert f"vault {nowhere} does not exist" in result.output
        assert not nowhere.exists()


def test_a_run_whose_since_is_after_its_until_is_refused_before_it_starts(reading_vault: Path):
    """It printed `starting run ...: tierflow resume ... continues it if it stops`, started Prefect, then failed."""
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    args = ["run", "reading-notes", "--vault", str(reading_vault), "--since", "2026-11-22", "--until", "2026-11-16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--since 2026-11-22 is after --until 2026-11-16" in result.output
    assert "starting run" not in result.output and not (reading_vault / ".tierflow" / "ledger.sqlite").exists()


def test_demo_into_a_file_or_under_one_says_so_without_a_traceback(tmp_path: Path):
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    afile = tmp_path / "notes.md"
    afile.write_text("mine")
    into = CliRunner().invoke(app, ["demo", str(afile)])
    assert into.exit_code == 2 and f"{afile} is a file" in " ".join(into.output.split())
    under = CliRunner().invoke(app, ["demo", str(afile / "demo")])
    said = " ".join(under.output.split())
    assert under.exit_code == 2 and f"cannot copy the demo vault to {afile / 'demo'}: Not a directory" in said
    assert afile.read_text() == "mine" and not isinstance(under.exception, OSError)


def test_help_names_what_the_commands_do():
    """`spend --help` left out `--by value`; `rubric normalise --help` named a complexity (`low`) as a tier."""
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    spend = " ".join(CliRunner().invoke(app, ["spend", "--help"]).output.split())
    assert "project, deployment or value (days" in spend
    normalise = " ".join(CliRunner().invoke(app, ["rubric", "normalise", "--help"]).output.split())
    assert "the tier `low` complexity routes to (light by default)" in normalise


def test_spend_refuses_the_watch_options_without_watch(tmp_path: Path):
    """`tierflow spend --period month` printed the call list as if --period had not been given."""
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    for option in (["--period", "month"], ["--interval", "5"]):
        result = CliRunner().invoke(app, ["spend", "--vault", str(tmp_path), *option])
        assert result.exit_code == 2, result.output
        said = " ".join(result.output.split())
        assert f"{option[0]} goes with --watch (the live dashboard): add --watch, or leave {option[0]} out" in said


def test_help_does_not_import_prefect_or_the_sdks():
    code = (
        "import sys; from typer.testing import CliRunner; from tierflow.cli.app import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('prefect', 'anthropic', 'openai', 'genai_prices', 'sqlalchemy') if m in sys.modules]; "
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


IN_PROCESS_TWICE = """
import io, logging, sys
from typer.testing import CliRunner
from tierflow.cli.app import app

for _ in range(2):  # the first command imports Prefect, under the runner's stderr
    result = CliRunner().invoke(app, ["plan", "reading-notes", "--vault", sys.argv[1], "--profile", "offline"])
    assert result.exit_code == 0, result.output
    assert "prefect.main" in sys.modules
later = io.StringIO()
sys.stderr = later
logging.getLogger("prefect").warning("a Prefect line after both commands")
sys.stderr = sys.__stderr__
print(later.getvalue())
"""


def test_a_command_invoked_twice_in_one_process_leaves_prefect_logging_on_a_live_stream(tmp_path: Path):
    """`tierflow` invoked in-process (a custom flow, a notebook): Prefect, imported by the first command, builds its
    log handlers on that invocation's stderr, closed when it returns. Its later lines go to the stderr of the moment,
    never to the closed one ("--- Logging error --- ... I/O operation on closed file")."""
    result = subprocess.run(
        [sys.executable, "-c", IN_PROCESS_TWICE, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "Logging error" not in result.stdout and "closed file" not in result.stdout, result.stdout
    assert "a Prefect line after both commands" in result.stdout


def test_an_unknown_vault_timezone_is_a_config_error_in_config_show_plan_and_run(tmp_path: Path):
    write_config(tmp_path / ".tierflow" / "config.toml", '[vault]\ntimezone = "Mars/Olympus"\n')
    for args in (["config", "show"], ["plan", "reading-notes"], ["run", "reading-notes", "--profile", "offline"]):
        result = run([*args, "--vault", str(tmp_path)])
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        message = " ".join(result.stderr.split())
        assert "vault.timezone" in message and "'Mars/Olympus' is not a time zone name" in message, (args, message)
        assert "Europe/London" in message


def test_plan_with_a_template_typo_names_the_template_and_the_variable_without_a_traceback(reading_vault: Path):
    template = reading_vault / "Templates" / "tierflow" / "prompts" / "collate" / "note.j2"
    template.parent.mkdir(parents=True)
    template.write_text("<data>{{ dta | tojson }}</data>\n", encoding="utf-8")
    week = ["--since", "2026-11-16", "--until", "2026-11-22"]
    result = run(["plan", "reading-notes", "--vault", str(reading_vault), *week])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    message = " ".join(result.stderr.split())
    assert f"error: the template {template}, line 1, does not render: 'dta' is undefined" in message, message
    assert "Did you mean 'data'?" in message, message


def test_every_tier_flag_is_checked_before_any_note_is_selected(tmp_path: Path):
    """An empty vault: a run would find no notes, so only an up-front check can refuse these flags."""
    for flag, problem in (
        ("nophase=deep", "no phase 'nophase'; the phases are collate, synthesise, draft"),
        ("synthesise=ultra", "no tier 'ultra' in the config; its tiers are"),
        ("ultra", "no tier 'ultra' in the config"),
    ):
        for command in ("run", "plan"):
            result = run([command, "reading-notes", "--vault", str(tmp_path), "--profile", "offline", "--tier", flag])
            message = " ".join(result.stderr.split())
            assert result.returncode == 2 and problem in message, (command, flag, result.stdout, message)
    result = run(["run", "reading-notes", "--vault", str(tmp_path), "--profile", "offline", "--mode", "fast"])
    assert result.returncode == 2 and "--mode 'fast': use direct or batch" in result.stderr
