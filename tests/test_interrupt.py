"""Ctrl-C stops a run: promptly, naming the run and how to resume it, with no budget reserved and no server left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import READING_WEEK, anthropic_config, write_config
from responders import skilled
from test_scale import widen

from tierflow.core.budget import open_reservations
from tierflow.core.ledger import Ledger

REPO = Path(__file__).resolve().parents[1]


def processes_marked(mark: str) -> list[int]:
    """The processes whose environment holds `mark` (Linux's /proc; elsewhere none are found)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def test_ctrl_c_mid_run_stops_it_promptly_names_the_run_and_leaves_nothing_reserved_or_running(
    reading_vault, double, tmp_path
):
    """The terminal sends Ctrl-C to tierflow's whole process group, which held Prefect's temporary server too:
    the server stopped, and tierflow spent minutes failing to deliver its queued events to it."""
    answer = skilled()

    def responder(request):
        time.sleep(1.0)  # answers take a second, so calls are in flight when Ctrl-C comes
        return answer(request)

    double.responder = responder
    widen(reading_vault, 60)
    config = reading_vault / ".tierflow" / "config.toml"
    write_config(config, anthropic_config(double) + config.read_text())
    mark = f"tierflow-interrupt-test-{uuid.uuid4().hex}"
    env = {**os.environ, "ANTHROPIC_API_KEY": "k", "TIERFLOW_TEST_MARK": mark}
    env.pop("PREFECT_API_URL", None)  # Prefect's temporary server, as a user without a server of their own has
    console = tmp_path / "console.txt"
    with console.open("w") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "tierflow.cli", "run", "reading-notes", "--vault", str(reading_vault)]
            + ["--since", READING_WEEK[0], "--until", READING_WEEK[1]],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job has
        )
    ledger = Ledger.for_vault(reading_vault)
    try:
        deadline = time.monotonic() + 900  # a first start of Prefect's server on a busy machine takes minutes
        while not ledger.rows():
            assert run.poll() is None, console.read_text()
            assert time.monotonic() < deadline, "no call was recorded"
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGINT)
        interrupted = time.monotonic()
        try:
            code = run.wait(timeout=60)  # seconds at most; generous for a busy 2-core machine
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 60 s after Ctrl-C:\n{console.read_text()[-3000:]}") from None
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        for pid in processes_marked(mark):  # a temporary server left behind by a failure
            os.kill(pid, signal.SIGKILL)
    took = time.monotonic() - interrupted
    text = console.read_text()
    assert code == 130, text
    (run_id,) = {row["run_id"] for row in ledger.rows()}
    resume = f"`tierflow resume {run_id} --vault {reading_vault.resolve()}`"
    assert f"interrupted: run {run_id} stopped. {resume} continues it" in text, text
    assert "Crash detected" not in text and "Traceback" not in text, text  # tierflow's one line says it
    assert open_reservations(ledger) == []
    assert len([r for r in ledger.rows() if r["phase"] == "collate"]) < 68, "the run was not interrupted"
    assert processes_marked(mark) == [], "Prefect's temporary server outlived tierflow"
    assert took < 60


def test_a_run_that_ends_otherwise_leaves_the_signal_handlers_as_they_were():
    """In-process callers (the tests, a notebook) keep their own Ctrl-C after a run, however it ended."""
    import typer

    from tierflow.cli.runner import STOP_SIGNALS, stopped_by_interrupt

    signals = (signal.SIGINT, *STOP_SIGNALS)
    before = [signal.getsignal(s) for s in signals]
    with stopped_by_interrupt():
        assert [signal.getsignal(s) for s in signals] != before
    try:
        with stopped_by_interrupt():
            raise typer.Exit(2)  # a TierflowError's exit
    except typer.Exit:
        pass
    assert [signal.getsignal(s) for s in signals] == before


def test_a_second_interrupt_stops_at_once_and_still_names_the_run_and_its_resume():
    """Two quick Ctrl-Cs: the first one's line may never be printed, so the second says which run and how to go
    on, and that calls then in flight were stopped unrecorded."""
    import subprocess
    import sys

    script = (
        "import os, signal, time\n"
        "from tierflow.cli.runner import stopped_by_interrupt\n"
        "try:\n"
        "    with stopped_by_interrupt('run R1: `tierflow resume R1 --vault v` continues it'):\n"
        "        os.kill(os.getpid(), signal.SIGINT); time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(60)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 130, done.stderr
    assert "interrupted again" in done.stderr and "tierflow resume R1 --vault v" in done.stderr
    assert "unrecorded" in done.stderr


def test_a_run_stopped_by_sigterm_exits_143_as_schedulers_expect():
    """systemd, cron wrappers and `kill` send SIGTERM; their logs tell a stop from a crash by 128 + the signal's
    number. tierflow exited 130 (Ctrl-C's) whatever the signal."""
    script = (
        "import os, signal, sys, time\n"
        "from tierflow.cli.runner import interrupted_code, stopped_by_interrupt\n"
        "try:\n"
        "    with stopped_by_interrupt('run R1: `tierflow resume R1 --vault v` continues it'):\n"
        "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    if sys.argv[1] == 'twice':\n"
        "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(60)\n"
        "    sys.exit(interrupted_code())\n"
    )
    for times in ("once", "twice"):
        done = subprocess.run([sys.executable, "-c", script, times], capture_output=True, text=True, timeout=600)
        assert done.returncode == 143, (times, done.stderr)
    assert "interrupted again" in done.stderr


def test_the_temporary_server_stops_when_tierflow_is_killed_outright(tmp_path):
    """SIGKILL (or `timeout -s KILL`, a cancelled CI job) gives tierflow no chance to stop the server, which, out
    of tierflow's process group since it must not hear Ctrl-C, a group kill does not reach either. Linux stops it."""
    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    script = (
        "import sys, time\n"
        "from tierflow.cli.app import prefect_defaults\n"
        "prefect_defaults()\n"
        "from tierflow.cli import temporary_server\n"
        "server = temporary_server.start()\n"
        "print(server.server_process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env) as holder:
        assert holder.stdout is not None
        line = holder.stdout.readline()  # once the server answers: Prefect waits up to 300 s for it
        assert line.strip().isdigit(), f"no server started: {line!r}"
        server = int(line)
        os.kill(server, 0)  # running
        holder.kill()
        holder.wait(timeout=60)
    deadline = time.monotonic() + 120  # a guard against a server that never stops, not a measure of speed
    while time.monotonic() < deadline:
        try:
            os.kill(server, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{server}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return  # stopped, waiting only for init to reap it
        time.sleep(0.5)
    os.kill(server, signal.SIGKILL)
    raise AssertionError("the temporary Prefect server outlived tierflow by 2 minutes")


CTRL_C_AS_PREFECT_STOPS_ITS_SERVER = """
import os, signal, sys
from tierflow.cli import prefect_defaults
prefect_defaults()
from prefect.server.api import server

stop = server.SubprocessASGIServer.stop


def stopped_by_ctrl_c(self):  # Prefect's exit hook, as Ctrl-C comes in the second after the run has finished
    os.kill(os.getpid(), signal.SIGINT)
    stop(self)


server.SubprocessASGIServer.stop = stopped_by_ctrl_c
from tierflow.cli.app import main

sys.argv = ["tierflow", "demo", sys.argv[1]]
main()
"""


def test_ctrl_c_as_a_finished_run_closes_ends_it_quietly_with_130_and_its_ledger_closed(tmp_path):
    """Ctrl-C in the second after a run finished raised KeyboardInterrupt inside Prefect's exit hooks: a traceback
    ("Exception ignored in atexit callback: ... SubprocessASGIServer.stop"), and exit code 0."""
    mark = f"tierflow-closing-test-{uuid.uuid4().hex}"
    env = {**os.environ, "TIERFLOW_TEST_MARK": mark}
    env.pop("PREFECT_API_URL", None)  # Prefect's temporary server, whose stop at exit is the hook interrupted
    vault = tmp_path / "demo"
    try:
        done = subprocess.run(
            [sys.executable, "-c", CTRL_C_AS_PREFECT_STOPS_ITS_SERVER, str(vault)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        for pid in processes_marked(mark):  # a temporary server left behind by a failure
            os.kill(pid, signal.SIGKILL)
    said = done.stdout + done.stderr
    assert done.returncode == 130, said
    assert "Total: 20524 tokens" in done.stdout  # the run and its summary were done
    assert done.stderr.rstrip().endswith(
        "interrupted while tierflow was closing: the command had finished (Prefect's last log lines may be missing)."
    ), said
    assert "Traceback" not in said and "KeyboardInterrupt" not in said, said
    assert not (vault / ".tierflow" / "ledger.sqlite-wal").exists()  # closed: its calls are in the ledger file
    assert Ledger.for_vault(vault).rows()


@pytest.mark.usefixtures("prefect_harness")
def test_ctrl_c_after_a_run_finished_before_its_summary_says_so_in_one_line_and_exits_130(reading_vault, monkeypatch):
    """Ctrl-C while tierflow waited for Prefect to record a finished run's task runs (a second or two before the
    summary) exited 130 without a word: no summary, nothing saying the run had finished."""
    from typer.testing import CliRunner

    from tierflow.cli import runner
    from tierflow.cli.app import app

    def ctrl_c(run_id: str | None, **_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "wait_for_task_run_records", ctrl_c)
    week = ["--since", READING_WEEK[0], "--until", READING_WEEK[1]]
    result = CliRunner().invoke(
        app, ["run", "reading-notes", "--vault", str(reading_vault), "--profile", "offline", *week]
    )
    assert result.exit_code == 130, result.output
    (run_id,) = {row["run_id"] for row in Ledger.for_vault(reading_vault).rows()}
    spend = f"tierflow spend --run {run_id} --vault {reading_vault.resolve()} --profile offline"
    said = " ".join(result.output.split())
    assert f"interrupted: run {run_id} had finished, before its summary was shown; `{spend}` lists its calls." in said
    assert "Traceback" not in result.output
