"""`tierflow demo`, as a new user runs it: no keys, no network, a clean console, real notes and ledger rows."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import frontmatter

from tierflow.core.ledger import Ledger


def test_demo_runs_keyless_and_writes_drafts_report_and_ledger(tmp_path: Path):
    vault = tmp_path / "my demo"  # a space in the path, as in "Documents/Teaching notes"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # a machine that has never run Prefect
    env.pop("PREFECT_API_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "demo", str(vault)],
        capture_output=True,
        text=True,
        timeout=1800,  # generous: a loaded machine is slow, and a hung demo should still end the test
        env=env,
    )
    console = result.stdout + result.stderr
    assert result.returncode == 0, console
    for noise in ("Traceback", "Error flushing", "CancelledError", "ERROR"):
        assert noise not in console, f"{noise!r} on the console:\n{console}"
    assert "offline extractive model" in console and "Concepts/Drafts" in console
    # The spend command it prints runs as printed, from another folder.
    (printed,) = re.findall(r"The spend ledger: (.+)", console)
    words = shlex.split(printed)
    assert words[:2] == ["tierflow", "spend"], printed
    spend = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", *words[1:]], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert spend.returncode == 0 and "collate" in spend.stdout, spend.stdout + spend.stderr

    drafts = sorted((vault / "Concepts" / "Drafts").glob("*.md"))
    assert len(drafts) >= 3
    for path in drafts:
        post = frontmatter.load(path)
        assert post.metadata["status"] == "draft" and post.metadata["sources"]
        assert all(m.split(": ", 1)[1].startswith("offline:") for m in post.metadata["tierflow_phase_models"])
        assert "offline extractive model" in post.content  # labelled as the offline model's work
    (report,) = (vault / "tierflow" / "Runs").glob("* reading-notes *.md")
    text = report.read_text()
    assert "## Spend per phase" in text and "| **total** |" in text and "█" in text
    assert all(f"[[Concepts/Drafts/{p.stem}]]" in text for p in drafts)

    rows = Ledger.for_vault(vault).rows()
    assert {r["phase"] for r in rows} == {"collate", "synthesise", "draft"}
    assert {r["provider"] for r in rows} == {"offline"}
    assert sum(r["phase"] == "collate" for r in rows) == 8
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 and r["flow_run_id"] for r in rows)


def test_a_prefect_server_that_does_not_start_in_time_ends_in_one_paragraph_with_the_fix(tmp_path: Path):
    """A busy machine: Prefect's temporary server does not answer within the wait (here 0 s, so it cannot)."""
    env = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "0", "PREFECT_API_URL": None}
    message = failed_without_prefect(tmp_path, ["demo", str(tmp_path / "demo")], env)
    assert "did not answer within 0 s" in message
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=" in message and "prefect server start" in message


def test_a_prefect_server_that_does_not_answer_at_prefect_api_url_ends_in_one_paragraph_with_the_fix(tmp_path: Path):
    """PREFECT_API_URL names a server that is not running: one paragraph naming it and the three ways on, no
    traceback, nothing run."""
    import socket

    vault = tmp_path / "vault"
    shutil.copytree(Path(__file__).parents[1] / "vault_fixtures" / "reading-week", vault)
    with socket.socket() as taken:  # bound, never listening: a connection to it is refused
        taken.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{taken.getsockname()[1]}/api"
        args = ["run", "reading-notes", "--vault", str(vault), "--profile", "offline"]
        message = failed_without_prefect(tmp_path, args, {"PREFECT_API_URL": url})
    assert f"Prefect's server at {url}/ (PREFECT_API_URL) did not answer" in message, message
    assert "nothing was spent" in message and "prefect server start" in message and "prefect config unset" in message
    assert not Ledger.for_vault(vault).rows()


def failed_without_prefect(tmp_path: Path, args: list[str], env_changes: dict[str, str | None]) -> str:
    """`tierflow ARGS` with no keys and the environment changed (None: unset), which must end with exit 1 and one
    message, no traceback: the message, its whitespace made single spaces."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    result = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", *args], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "RuntimeError" not in result.stderr, result.stderr
    return " ".join(result.stderr.split())


def test_tierflow_waits_minutes_not_seconds_for_prefects_temporary_server():
    """Prefect's own default (20 s) fails on a busy machine; the user's environment still wins."""
    code = (
        "import os; from tierflow.cli import prefect_defaults; prefect_defaults();"
        "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s; print(s.value())"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    waited = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert int(waited.stdout.strip()) >= 120, waited.stderr
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "45"
    chosen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert chosen.stdout.strip() == "45", chosen.stderr
