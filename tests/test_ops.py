"""Prefect operations against a real `prefect server start` on a loopback port: prefect.yaml deployments,
`tierflow schedule`, `tierflow limits`, and tier concurrency limits holding across task runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import typer
from conftest import READING_WEEK, REPO, write_config
from prefect import flow, task
from typer.testing import CliRunner

from tierflow.cli import prefect_ops as ops
from tierflow.cli.ops_commands import limits_app, schedule_app
from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.phases import phase_task
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

pytestmark = pytest.mark.slow


# --- a real Prefect server ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a Prefect server or CLI process of our own: its own home, no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # Without batching the task-run recorder can lose task runs when the server stops.
        PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE="500",
        PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL="1",
        **extra,
    )
    return env


@contextmanager
def prefect_server(home: Path, *, timeout: float = 600) -> Iterator[str]:
    """`prefect server start` on a free 127.0.0.1 port; yields its API URL and stops it afterwards."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (home / "server.log").open("wb")
    url = f"http://127.0.0.1:{port}/api"
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        # The UI asks the API URL of the server's settings, not of --port.
        env=server_env(
            home, PREFECT_UI_API_URL=url, PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port)
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {process.returncode}:\n{_tail(home / 'server.log')}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not healthy after {timeout}s:\n{_tail(home / 'server.log')}")
            time.sleep(0.25)
        yield url
    finally:
        _stop(process)
        log.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as url:
        yield url


@pytest.fixture
def api(server: str) -> Iterator[str]:
    """This process's Prefect settings point at the module's server for the test."""
    with pointed_at(server):
        yield server


@contextmanager
def pointed_at(url: str) -> Iterator[None]:
    """This process's Prefect settings point at the server of API `url` inside the block."""
    from prefect.concurrency.services import _no_limits_cache
    from prefect.settings import PREFECT_API_URL, temporary_settings

    _no_limits_cache.clear()
    # Events buffered for another server (the session's test harness, say) go there now, and the next events
    # worker is started for this one: a worker keeps the API URL it started with.
    drain_prefect_workers()
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield
        drain_prefect_workers()
    _no_limits_cache.clear()


def drain_prefect_workers() -> None:
    """Send this process's buffered Prefect logs and events now, while their server is still up.

    Left buffered, they are sent at interpreter exit, to a server that has stopped: a minute of retries.
    """
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())


def client() -> SyncPrefectClient:
    from prefect import get_client

    return get_client(sync_client=True)


def state(url: str) -> dict[str, Any]:
    """Everything `tierflow schedule` or `tierflow limits` could have written, to compare before and after."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}), client() as c:
        deployments = []
        for d in c.read_deployments():
            schedules = sorted(str(s.schedule) + str(s.active) for s in c.read_deployment_schedules(d.id))
            deployments.append((d.name, d.paused, str(d.parameters), d.work_pool_name, schedules))
        return {
            "deployments": sorted(deployments),
            "flows": sorted(f.name for f in c.read_flows()),
            "pools": sorted(p.name for p in c.read_work_pools()),
            "limits": sorted((x.tag, x.concurrency_limit) for x in c.read_concurrency_limits(limit=200, offset=0)),
        }


# --- the CLI, as `tierflow` registers it ----------------------------------------------------------

cli = typer.Typer(pretty_exceptions_enable=False)
cli.add_typer(schedule_app, name="schedule")
cli.add_typer(limits_app, name="limits")


def tierflow(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


# --- prefect.yaml ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`prefect deploy --all --prefect-file prefect.yaml`, from the repository root, as the README says."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    vault = tmp_path_factory.mktemp("deployed") / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "reading-week", vault)
    with temporary_settings(updates={PREFECT_API_URL: server}), client() as c:
        assert ops.ensure_pool(c, ops.DEFAULT_POOL)  # `prefect work-pool create tierflow --type process`
    env = server_env(tmp_path_factory.mktemp("deploy-home"), PREFECT_API_URL=server, TIERFLOW_VAULT=str(vault))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "prefect.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {"vault": vault, "env": env, "seconds": time.monotonic() - started, "output": done.stdout}


def test_prefect_deploy_all_registers_both_deployments_with_their_schedules(deployed: dict[str, Any], api: str):
    with client() as c:
        weekly = c.read_deployment_by_name("reading-notes/weekly")
        schedules = c.read_deployment_schedules(weekly.id)
        feedback = c.read_deployment_by_name("student-feedback/on-demand")
        feedback_schedules = c.read_deployment_schedules(feedback.id)
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in schedules] == [
        ("0 7 * * 1", "Europe/London", True)
    ]
    assert weekly.work_pool_name == "tierflow" and weekly.work_queue_name == "default"
    assert weekly.parameters["vault"] == str(deployed["vault"])
    assert weekly.parameters.get("profile") is None
    assert weekly.entrypoint == "flows/reading_notes.py:reading_notes"
    assert weekly.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    assert feedback_schedules == []
    assert feedback.work_pool_name == "tierflow"
    assert feedback.parameters["vault"] == str(deployed["vault"]) and feedback.parameters["mode"] == "direct"
    # Monday 07:00 in London, whatever the season: the next run is a Monday at 07:00 local time.
    nxt = ops.next_fire("0 7 * * 1", "Europe/London")
    assert nxt is not None and (nxt.weekday(), nxt.hour, nxt.minute) == (0, 7, 0)


def test_prefect_deploy_all_registers_the_module_review_for_the_end_of_term_and_on_demand(
    deployed: dict[str, Any], api: str
):
    with client() as c:
        term = c.read_deployment_by_name("module-review/end-of-term")
        term_schedules = c.read_deployment_schedules(term.id)
        anytime = c.read_deployment_by_name("module-review/on-demand")
        anytime_schedules = c.read_deployment_schedules(anytime.id)
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in term_schedules] == [
        ("0 7 15 12 *", "Europe/London", True)
    ]
    assert anytime_schedules == []
    for d in (term, anytime):
        assert d.entrypoint == "flows/module_review.py:module_review" and d.work_pool_name == "tierflow"
        assert d.parameters["vault"] == str(deployed["vault"]) and d.parameters.get("module") is None


def test_a_process_worker_runs_the_deployed_reading_notes_flow(deployed: dict[str, Any], api: str, tmp_path: Path):
    """The deployment is runnable as deployed: a `prefect worker start --pool tierflow` picks it up."""
    vault = deployed["vault"]
    with client() as c:
        weekly = c.read_deployment_by_name("reading-notes/weekly")
        run = c.create_flow_run_from_deployment(
            weekly.id, parameters={"since": READING_WEEK[0], "until": READING_WEEK[1], "profile": "offline"}
        )
    worker = subprocess.run(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "tierflow", "--run-once"],
        cwd=tmp_path,
        env=deployed["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    with client() as c:
        finished = c.read_flow_run(run.id)
    assert finished.state is not None and finished.state.is_completed(), worker.stdout[-3000:] + worker.stderr[-3000:]
    assert list((vault / "Concepts" / "Drafts").glob("*.md")), "the scheduled flow wrote no concept drafts"
    # Its spend is attributed to the deployment, and the run carries tierflow's tags.
    from tierflow.core.ledger import Ledger

    rows = [r for r in Ledger.for_vault(vault).rows() if r["flow_run_id"] == str(run.id)]
    assert rows and {r["deployment"] for r in rows} == {"reading-notes/weekly"}
    assert {"profile:offline", f"vault:{vault.name}"} <= set(finished.tags)
    assert any(t.startswith("tierflow-run:") for t in finished.tags)


def doc_block(language: str, first_line: str) -> str:
    """The fenced `language` block of README.md that starts with `first_line`."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"```{language}\n({re.escape(first_line)}.*?)```", text, flags=re.DOTALL)
    assert match, f"README.md has no {language} block starting {first_line!r}"
    return match.group(1)


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Hook.received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_budget_automations_from_the_docs_pause_the_deployment_and_notify(
    deployed: dict[str, Any], api: str, tmp_path: Path
):
    """A scheduled run stopped by a `halt` budget: the documented automations pause its deployment and notify."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    _Hook.received.clear()
    automations = []
    try:
        CustomWebhookNotificationBlock(
            name="tierflow budget",
            url=f"http://127.0.0.1:{hook.server_address[1]}/hook",
            json_data={"text": "{{subject}}: {{body}}"},
        ).save("tierflow-budget", overwrite=True)
        code = doc_block("python", "from prefect.automations import Automation")
        exec(compile(code, "README.md", "exec"), {})  # the documented snippet, as written
        (tmp_path / "budget-pause.yaml").write_text(doc_block("yaml", "# budget-pause.yaml"), encoding="utf-8")
        created = subprocess.run(
            [sys.executable, "-m", "prefect", "automation", "create", "--from-file", "budget-pause.yaml"],
            cwd=tmp_path, env=deployed["env"], capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr
        with client() as c:
            automations = [a for a in c.read_automations() if a.name.startswith("tierflow budget")]
        assert len(automations) == 2

        vault = tmp_path / "vault"
        shutil.copytree(REPO / "vault_fixtures" / "reading-week", vault)
        with (vault / ".tierflow" / "config.toml").open("a", encoding="utf-8") as config:
            config.write('\n[budgets.weekly]\ntokens = 10\npolicy = "halt"\n')
        with client() as c:
            weekly = c.read_deployment_by_name("reading-notes/weekly")
            assert weekly.paused is False
            c.create_flow_run_from_deployment(
                weekly.id,
                parameters={
                    "vault": str(vault),
                    "since": READING_WEEK[0],
                    "until": READING_WEEK[1],
                    "profile": "offline",
                },
            )
        worker = subprocess.run(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "tierflow", "--run-once"],
            cwd=tmp_path, env=deployed["env"], capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        (report,) = (vault / "tierflow" / "Runs").glob("* reading-notes *.md")  # the run stopped; its report says why
        assert "budget" in report.read_text() and not (vault / "Concepts" / "Drafts").exists()
        deadline = time.monotonic() + 600  # automations act on events, later on a busy machine; no speed is asserted
        while time.monotonic() < deadline:
            with client() as c:
                paused = c.read_deployment(weekly.id).paused
            if paused and _Hook.received:
                break
            time.sleep(0.5)
        assert paused, (
            "in 600 s the budget-pause automation did not pause reading-notes/weekly\n" + worker.stderr[-2000:]
        )
        assert _Hook.received, "the notify automation did not call the webhook"
        text = _Hook.received[0]["text"]
        assert (
            text.startswith("tierflow budget weekly exceeded: reading-notes, collate of ") and "on tier light" in text
        )
    finally:
        hook.shutdown()
        with client() as c:
            for automation in automations:
                c.delete_automation(automation.id)
            weekly = c.read_deployment_by_name("reading-notes/weekly")
            c.resume_deployment(weekly.id)


# --- tierflow schedule -----------------------------------------------------------------------------


def test_schedule_registers_reads_back_updates_lists_pauses_and_resumes(api: str, reading_vault: Path):
    result = tierflow(
        "schedule", "reading-notes", "--vault", str(reading_vault), "--cron", "0 7 * * MON",
        "--timezone", "America/New_York", "--name", "cli-weekly", "--pool", "cli-pool", "--profile", "offline",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Registered deployment reading-notes/cli-weekly on schedule 0 7 * * MON (America/New_York)" in result.output
    assert "prefect worker start --pool cli-pool" in result.output
    with client() as c:
        d = c.read_deployment_by_name("reading-notes/cli-weekly")
        schedules = c.read_deployment_schedules(d.id)
        pool = c.read_work_pool("cli-pool")
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in schedules] == [
        ("0 7 * * MON", "America/New_York", True)
    ]
    assert d.parameters == {"vault": str(reading_vault.resolve()), "profile": "offline"}
    assert pool.type == "process" and d.work_pool_name == "cli-pool"
    assert d.entrypoint == "tierflow.flows.reading_notes.reading_notes" and d.pull_steps == []

    # Again with another schedule: the same deployment, updated, with only the new schedule.
    result = tierflow(
        "schedule", "reading-notes", "--vault", str(reading_vault), "--cron", "30 6 * * TUE",
        "--name", "cli-weekly", "--pool", "cli-pool",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Updated deployment reading-notes/cli-weekly" in result.output
    with client() as c:
        again = c.read_deployment_by_name("reading-notes/cli-weekly")
        schedules = c.read_deployment_schedules(again.id)
    assert again.id == d.id
    # Without --timezone the vault's [vault] timezone applies (the fixture vault's config sets one).
    vault_tz = _vault_timezone(reading_vault)
    assert [(s.schedule.cron, s.schedule.timezone) for s in schedules] == [("30 6 * * TUE", vault_tz)]

    listed = tierflow("schedule", "list")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "reading-notes/cli-weekly" in line)
    assert "30 6 * * TUE" in row and "active" in row and "cli-pool" in row

    paused = tierflow("schedule", "pause", "cli-weekly")
    assert paused.exit_code == 0 and "Paused reading-notes/cli-weekly" in paused.output
    with client() as c:
        assert c.read_deployment_by_name("reading-notes/cli-weekly").paused is True
    row = next(line for line in tierflow("schedule", "list").output.splitlines() if "cli-weekly" in line)
    assert "paused" in row
    resumed = tierflow("schedule", "resume", "reading-notes/cli-weekly")
    assert resumed.exit_code == 0 and "Resumed reading-notes/cli-weekly" in resumed.output
    with client() as c:
        assert c.read_deployment_by_name("reading-notes/cli-weekly").paused is False

    missing = tierflow("schedule", "pause", "no-such-deployment")
    assert missing.exit_code == 1 and "no deployment 'no-such-deployment'" in missing.output


PAGE = 200
"""Objects per request that a Prefect server returns (PREFECT_SERVER_API_DEFAULT_LIMIT): a listing drops the rest."""


@contextmanager
def crowded(count: int = PAGE + 5) -> Iterator[list[str]]:
    """More flows, each with a deployment, and more tag limits than one page of the API holds, named to sort
    first (`aaa-…`): yields the deployments' full names; all removed afterwards, for the module's later tests."""
    names = [f"aaa-crowd-{i:03}" for i in range(count)]
    flow_ids = []
    try:
        with client() as c:
            for name in names:
                flow_ids.append(c.create_flow_from_name(name))
                c.create_deployment(flow_id=flow_ids[-1], name=f"{name}-nightly")
                c.create_concurrency_limit(tag=name, concurrency_limit=1)
        yield [f"{name}/{name}-nightly" for name in names]
    finally:
        with client() as c:
            for flow_id in flow_ids:
                c.delete_flow(flow_id)  # and its deployment
            for name in names[: len(flow_ids)]:
                c.delete_concurrency_limit_by_tag(name)


def test_schedule_list_pause_and_limits_see_past_the_first_page_of_a_busy_server(api: str, tmp_path: Path):
    """A server with more than 200 flows, deployments or tag limits: `schedule list` listed only the first 200
    deployments (by name) and named the flows of the rest `?`; `schedule pause NAME` said a deployment past them
    did not exist; `limits show` and `limits apply` did not see the tier limits past the first 200 tags."""
    config = write_config(tmp_path / "limits.toml", LIMITS_CONFIG.format(standard=3))
    assert tierflow("limits", "apply", "--config", str(config)).exit_code == 0
    with crowded() as deployments:
        listed = tierflow("schedule", "list")
        assert listed.exit_code == 0, listed.output
        missing = [d for d in deployments if d not in listed.output]  # named with its flow, not `?/…`
        assert not missing, f"{len(missing)} deployments not listed, as {missing[0]}"
        last = deployments[-1].split("/")[1]  # by its own name, unique on the server
        paused = tierflow("schedule", "pause", last)
        assert paused.exit_code == 0 and f"Paused {deployments[-1]}" in paused.output, paused.output
        with client() as c:
            assert c.read_deployment_by_name(deployments[-1]).paused is True

        limits = tierflow("limits", "show", "--config", str(config))
        row = next((line for line in limits.output.splitlines() if "tier:deep" in line), "")
        assert row.replace("│", " ").split()[:2] == ["tier:deep", "2"], limits.output  # not "unlimited"
        again = tierflow("limits", "apply", "--config", str(config))
        assert "tier:deep: at most 2 at once (unchanged)" in again.output, again.output


def test_schedule_module_review_at_the_end_of_term_or_on_demand(api: str, tmp_path: Path):
    vault = tmp_path / "module-vault"
    shutil.copytree(REPO / "vault_fixtures" / "module-review", vault)
    result = tierflow(
        "schedule", "module-review", "--vault", str(vault), "--module", "Teaching/EDU7001",
        "--cron", "0 7 15 12 *", "--timezone", "Europe/London",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # Registered, or updated when prefect.yaml's deployments of the same names are on this server already.
    assert re.search(
        r"(Registered|Updated) deployment module-review/end-of-term on schedule 0 7 15 12 \* \(Europe/London\)",
        result.output,
    )
    on_demand = tierflow("schedule", "module-review", "--vault", str(vault))
    assert on_demand.exit_code == 0, on_demand.output
    assert re.search(r"(Registered|Updated) deployment module-review/on-demand with no schedule", on_demand.output)
    with client() as c:
        term = c.read_deployment_by_name("module-review/end-of-term")
        anytime = c.read_deployment_by_name("module-review/on-demand")
    assert term.parameters == {"vault": str(vault.resolve()), "module": "Teaching/EDU7001"}
    assert term.entrypoint == "tierflow.flows.module_review.module_review"
    assert anytime.parameters == {"vault": str(vault.resolve())}


def test_schedule_on_a_fresh_server_where_no_flow_has_run_creates_the_flows(reading_vault: Path, tmp_path: Path):
    """On a new server the flows are not known yet (they are only once a run or a deployment creates them)."""
    feedback_vault = tmp_path / "feedback-vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", feedback_vault)
    with prefect_server(tmp_path / "fresh-server") as url, pointed_at(url):
        assert state(url)["flows"] == []
        weekly = tierflow("schedule", "reading-notes", "--vault", str(reading_vault), "--profile", "offline")
        assert weekly.exit_code == 0, weekly.output
        assert "Registered deployment reading-notes/weekly on schedule 0 7 * * MON (Europe/London)" in weekly.output
        # A scheduled student-feedback run is not named on-demand: `--name` left out, it is `scheduled`.
        feedback = tierflow(
            "schedule", "student-feedback", "--vault", str(feedback_vault), "--cron", "0 6 21 11 *",
            "--timezone", "Europe/London",
        )  # fmt: skip
        assert feedback.exit_code == 0, feedback.output
        assert "Registered deployment student-feedback/scheduled on schedule 0 6 21 11 *" in feedback.output
        anytime = tierflow("schedule", "student-feedback", "--vault", str(feedback_vault))
        assert anytime.exit_code == 0, anytime.output
        assert "Registered deployment student-feedback/on-demand with no schedule" in anytime.output
        after = state(url)
    assert after["flows"] == ["reading-notes", "student-feedback"]
    assert [d[0] for d in after["deployments"]] == ["on-demand", "scheduled", "weekly"]


@pytest.mark.parametrize(
    ("assignment", "config", "args", "looked_for"),
    [
        ("Teaching/EDU7001/essay-9", None, (), "Teaching/EDU7001/essay-9"),
        (None, "Teaching/EDU7001/essay-9", ("--cron", "0 6 21 11 *"), "Teaching/EDU7001/essay-9"),
        (None, None, ("--cron", "0 6 21 11 *"), None),
    ],
    ids=["given", "from-config", "none-on-a-schedule"],
)
def test_schedule_student_feedback_refuses_an_assignment_folder_not_in_the_vault(
    server: str,
    api: str,
    feedback_vault: Path,
    assignment: str | None,
    config: str | None,
    args: tuple[str, ...],
    looked_for: str | None,
) -> None:
    """Refused at once, as `tierflow run` refuses it, not when the worker runs the deployment days later."""
    settings = feedback_vault / ".tierflow" / "config.toml"
    write_config(settings, f"[feedback]\nassignment_folder = {json.dumps(config)}\n" if config else "")
    before = state(server)
    given = ("--assignment", assignment) if assignment else ()
    result = tierflow("schedule", "student-feedback", "--vault", str(feedback_vault), *given, *args)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    if looked_for is None:  # a scheduled run would have no assignment to read
        assert "give the assignment folder: --assignment FOLDER (or set [feedback] assignment_folder" in said
    else:
        vault = feedback_vault.resolve()
        assert f"assignment folder {looked_for} does not exist in {vault} (looked for {vault / looked_for})" in said
        assert "Teaching/EDU7001 holds: essay-1." in said
        imports = f"tierflow import submissions EXPORT --assignment {looked_for} --vault {vault}"
        assert f"import this one's submissions from a Moodle or Canvas export: `{imports}`." in said
    assert state(server) == before, "a refused `tierflow schedule` registered something"


def test_schedule_student_feedback_on_demand_needs_no_assignment_folder_yet(api: str, feedback_vault: Path) -> None:
    """Each run of an on-demand deployment may be given its assignment (`-p assignment=...`)."""
    write_config(feedback_vault / ".tierflow" / "config.toml", "")
    result = tierflow("schedule", "student-feedback", "--vault", str(feedback_vault), "--name", "any-assignment")
    assert result.exit_code == 0, result.output
    assert re.search(r"(Registered|Updated) deployment student-feedback/any-assignment with no schedule", result.output)


@pytest.mark.parametrize(
    ("module", "config", "args", "looked_for"),
    [
        ("Teaching/EDU7099", None, (), "Teaching/EDU7099"),
        (None, "Teaching/EDU7099", ("--cron", "0 7 15 12 *"), "Teaching/EDU7099"),
        (None, None, ("--cron", "0 7 15 12 *"), None),
    ],
    ids=["given", "from-config", "none-on-a-schedule"],
)
def test_schedule_module_review_refuses_a_module_folder_not_in_the_vault(
    server: str,
    api: str,
    tmp_path: Path,
    module: str | None,
    config: str | None,
    args: tuple[str, ...],
    looked_for: str | None,
) -> None:
    """Refused at once, as `tierflow run` refuses it, not when the worker runs the deployment at the end of term."""
    vault = tmp_path / "module-vault"
    shutil.copytree(REPO / "vault_fixtures" / "module-review", vault)
    write_config(vault / ".tierflow" / "config.toml", f"[module]\nfolder = {json.dumps(config)}\n" if config else "")
    before = state(server)
    given = ("--module", module) if module else ()
    result = tierflow("schedule", "module-review", "--vault", str(vault), *given, *args)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    if looked_for is None:  # a scheduled run would have no module to read
        assert "no module folder: pass --module FOLDER (relative to the vault), or set [module] folder" in said
    else:
        vault = vault.resolve()
        assert f"'{looked_for}' is not a folder of the vault {vault} (looked for {vault / looked_for})" in said
        assert "Teaching holds: EDU7001." in said
        assert "Give a module folder that is there with --module FOLDER" in said
    assert state(server) == before, "a refused `tierflow schedule` registered something"


def test_schedule_module_review_on_demand_needs_no_module_folder_yet(api: str, tmp_path: Path) -> None:
    """Each run of an on-demand deployment may be given its module (`-p module=...`)."""
    vault = tmp_path / "module-vault"
    shutil.copytree(REPO / "vault_fixtures" / "module-review", vault)
    write_config(vault / ".tierflow" / "config.toml", "")
    result = tierflow("schedule", "module-review", "--vault", str(vault), "--name", "any-module")
    assert result.exit_code == 0, result.output
    assert re.search(r"(Registered|Updated) deployment module-review/any-module with no schedule", result.output)


def _vault_timezone(vault: Path) -> str:
    from tierflow.core.config import load_config

    return load_config(vault).settings.vault.timezone


@pytest.mark.parametrize(
    ("args", "api_url", "message"),
    [
        (("--cron", "61 7 * * MON"), "server", "--cron '61 7 * * MON' is not a cron expression"),
        (("--cron", "every monday"), "server", "Write five fields, minute hour day-of-month month day-of-week"),
        (("--timezone", "Mars/Olympus_Mons"), "server", "--timezone 'Mars/Olympus_Mons' is not a time zone name"),
        (("--timezone", "europe/london"), "server", "Did you mean Europe/London?"),
        ((), None, "no Prefect server is configured (PREFECT_API_URL is not set)"),
        ((), "closed", "is not reachable"),
    ],
    ids=["bad-minute", "not-cron", "unknown-zone", "wrong-case-zone", "no-server", "unreachable"],
)
def test_bad_schedule_input_says_why_and_registers_nothing(
    server: str, reading_vault: Path, args: tuple[str, ...], api_url: str | None, message: str
):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = {"server": server, "closed": f"http://127.0.0.1:{free_port()}/api", None: None}[api_url]
    before = state(server)
    command = ["schedule", "reading-notes", "--vault", str(reading_vault), "--name", "half", "--pool", "half-pool"]
    # No URL: whatever the session configured (the test harness sets one), this command sees no server.
    settings = (
        temporary_settings(updates={PREFECT_API_URL: url})
        if url
        else temporary_settings(restore_defaults={PREFECT_API_URL})
    )
    with settings:
        result = tierflow(*command, *args)
    # A wrong option is a usage error (2); a server that is not there is not (1).
    assert result.exit_code == (1 if api_url in (None, "closed") else 2), result.output
    assert message in result.output
    assert "Traceback" not in result.output
    if api_url is None or api_url == "closed":
        assert "prefect server start" in result.output
    assert state(server) == before, "a failed `tierflow schedule` left something behind"


def test_unknown_flow_is_named_with_the_flows_that_exist(server: str):
    before = state(server)
    result = tierflow("schedule", "weekly-digest", "--vault", ".")
    assert result.exit_code == 2
    said = " ".join(result.output.replace("│", " ").split())  # unwrapped from Typer's error box
    assert (
        "unknown flow 'weekly-digest'" in said and "these flows: module-review, reading-notes, student-feedback" in said
    )
    assert state(server) == before


def test_a_flow_missing_from_the_install_or_a_wrong_parameter_registers_nothing(server: str, api: str, tmp_path: Path):
    before = state(server)
    gone = ops.FlowTarget("weekly-digest", "tierflow.flows.weekly_digest.weekly_digest", "weekly")
    with pytest.raises(ops.OpsError, match="the weekly-digest flow is not in this install"):
        ops.register(gone, parameters={}, cron="0 7 * * MON", pool="half-pool")
    with pytest.raises(ops.OpsError, match="takes no parameter 'colour'"):
        ops.register(ops.FLOWS["reading-notes"], parameters={"vault": str(tmp_path), "colour": "red"}, pool="half-pool")
    with pytest.raises(ops.OpsError, match="needs 'vault'"):  # a scheduled run is given no parameter of its own
        ops.register(ops.FLOWS["reading-notes"], parameters={}, cron="0 7 * * MON", pool="half-pool")
    assert state(server) == before


# --- tierflow limits --------------------------------------------------------------------------------

LIMITS_CONFIG = """
profile = "offline"
[tiers.light]
model = "offline:extractive-light"
[tiers.standard]
model = "offline:extractive-standard"
concurrency = {standard}
[tiers.deep]
model = "offline:extractive-deep"
concurrency = 2
[limits]
mechanism = "prefect"
"""


def test_limits_apply_sets_tag_limits_from_config_and_leaves_unset_tiers_unlimited(api: str, tmp_path: Path):
    from prefect.exceptions import ObjectNotFound

    config = write_config(tmp_path / "limits.toml", LIMITS_CONFIG.format(standard=3))
    result = tierflow("limits", "apply", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "tier:deep: at most 2 at once" in result.output
    assert "tier:standard: at most 3 at once" in result.output
    assert "tier:light: unlimited (no concurrency set for [tiers.light]" in result.output
    with client() as c:
        assert c.read_concurrency_limit_by_tag("tier:deep").concurrency_limit == 2
        assert c.read_concurrency_limit_by_tag("tier:standard").concurrency_limit == 3
        with pytest.raises(ObjectNotFound):
            c.read_concurrency_limit_by_tag("tier:light")
        # The task engine enforces the global limit named tag:<tag>: that is the one the UI lists.
        names = {g.name: g.limit for g in c.read_global_concurrency_limits(limit=200, offset=0)}
    assert names["tag:tier:deep"] == 2 and "tag:tier:light" not in names

    shown = tierflow("limits", "show", "--config", str(config))
    assert shown.exit_code == 0, shown.output
    light = next(line for line in shown.output.splitlines() if "tier:light" in line)
    assert light.count("unlimited") == 2

    # standard loses its concurrency: apply makes it unlimited again, and says it removed the old limit.
    relaxed = write_config(tmp_path / "relaxed.toml", LIMITS_CONFIG.replace("concurrency = {standard}", ""))
    result = tierflow("limits", "apply", "--config", str(relaxed))
    assert result.exit_code == 0, result.output
    assert "tier:standard: unlimited (no concurrency set for [tiers.standard]; removed the old limit of 3)" in (
        result.output
    )
    assert "tier:deep: at most 2 at once (unchanged)" in result.output
    with client() as c, pytest.raises(ObjectNotFound):
        c.read_concurrency_limit_by_tag("tier:standard")


def test_limits_refuse_tier_names_prefect_cannot_use_and_change_nothing(server: str, api: str, tmp_path: Path):
    from prefect.types.names import BANNED_CHARACTERS

    assert set(ops.BANNED_LIMIT_CHARACTERS) == set(BANNED_CHARACTERS)
    config = write_config(
        tmp_path / "bad.toml",
        'profile = "offline"\n[limits]\nmechanism = "prefect"\n[tiers."deep/fast"]\nmodel = "offline:extractive-deep"\n'
        "concurrency = 1\n",
    )
    before = state(server)
    result = tierflow("limits", "apply", "--config", str(config))
    assert result.exit_code == 1
    assert "'deep/fast' cannot be a Prefect concurrency limit" in result.output
    assert state(server) == before


def test_limits_under_the_ledger_mechanism_leave_prefect_alone_and_show_the_slots(api: str, tmp_path: Path):
    """The default mechanism: tierflow's ledger slots. `apply` removes a tag limit that would throttle whole
    task runs on top of them; `show` says which mechanism is in force and needs no Prefect server."""
    from prefect.exceptions import ObjectNotFound

    prefect_limits = write_config(tmp_path / "prefect.toml", LIMITS_CONFIG.format(standard=3))
    assert tierflow("limits", "apply", "--config", str(prefect_limits)).exit_code == 0
    vault = tmp_path / "vault"
    vault.mkdir()
    ledger_limits = write_config(
        vault / ".tierflow" / "config.toml", LIMITS_CONFIG.format(standard=3).replace('"prefect"', '"ledger"')
    )
    result = tierflow("limits", "apply", "--vault", str(vault))
    assert result.exit_code == 0, result.output
    assert "tier:deep: at most 2 at once, held by tierflow's ledger slots; removed the Prefect tag limit of 2" in (
        result.output
    )
    with client() as c, pytest.raises(ObjectNotFound):
        c.read_concurrency_limit_by_tag("tier:deep")
    shown = tierflow("limits", "show", "--vault", str(vault))
    assert shown.exit_code == 0, shown.output
    assert 'Mechanism in force: tierflow ledger slots ([limits] mechanism = "ledger")' in shown.output
    assert ledger_limits.is_file()
    shown = tierflow("limits", "show", "--config", str(prefect_limits))
    assert 'Mechanism in force: Prefect tag limits ([limits] mechanism = "prefect")' in shown.output


def test_prefect_limits_without_a_server_explain_how_to_start_one(tmp_path: Path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    config = write_config(tmp_path / "prefect.toml", LIMITS_CONFIG.format(standard=3))
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = tierflow("limits", "apply", "--config", str(config))
    assert result.exit_code == 1
    assert "no Prefect server is configured" in result.output and "prefect server start" in result.output


@pytest.mark.parametrize("api_url", [None, "closed"], ids=["no-server", "unreachable"])
def test_ledger_limits_apply_without_a_server_says_the_ledger_holds_them(
    reading_vault: Path, api_url: str | None
) -> None:
    """The default mechanism needs no Prefect server: `apply` says which limits the ledger's slots hold, and that
    no server was looked at for a tag limit left from before; it was `error: no Prefect server ...` (exit 1)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = f"http://127.0.0.1:{free_port()}/api" if api_url else None
    config = reading_vault / ".tierflow" / "config.toml"  # no [limits]: the ledger mechanism, by default
    write_config(config, config.read_text() + "\n[tiers.deep]\nconcurrency = 2\n")
    settings = (
        temporary_settings(updates={PREFECT_API_URL: url})
        if url
        else temporary_settings(restore_defaults={PREFECT_API_URL})
    )
    with settings:
        result = tierflow("limits", "apply", "--vault", str(reading_vault))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "tier:deep: at most 2 at once, held by tierflow's ledger slots" in said
    assert "tier:light: unlimited, held by tierflow's ledger slots" in said
    assert "nothing is needed on the Prefect server" in said
    unseen = "No tier: tag limit left on a Prefect server was looked for: "
    if url is None:
        assert unseen + "no Prefect server is configured (PREFECT_API_URL is not set)." in said
    else:
        assert unseen + f"the Prefect API at {url} is not reachable (" in said
        assert f"Once it is up, `tierflow limits apply --vault {reading_vault.resolve()}` removes any" in said


# --- the limit holds: four tier:deep calls under concurrency = 1 -----------------------------------

DEEP_CONFIG = """
profile = "anthropic"
[providers.anthropic]
kind = "anthropic"
base_url = "{base_url}"
api_key_env = "ANTHROPIC_API_KEY"
max_retries = 0
[tiers.light]
model = "anthropic:claude-haiku-4-5"
[tiers.standard]
model = "anthropic:claude-sonnet-4-6"
[tiers.deep]
model = "anthropic:claude-opus-4-6"
{concurrency}
[limits]
mechanism = "prefect"
"""


@task
def deep_call(settings: RunSettings, index: int) -> str:
    """One synthesise-phase (complexity high, so tier deep) call."""
    answer = caller_for(settings).ask(
        phase="synthesise", complexity="high", system="Be brief.", prompt=f"Question {index}", subject=f"q{index}"
    )
    return answer.text


@flow(name="tier-limit-check")
def four_deep_calls(settings: RunSettings) -> list[str]:
    """Four tier:deep task runs, submitted at once to the default (thread pool) task runner."""
    futures = [
        phase_task(deep_call, settings, phase="synthesise", complexity="high", subject=f"q{i}").submit(settings, i)
        for i in range(4)
    ]
    return [f.result() for f in futures]


def _intervals(vault: Path, run_id: str) -> list[tuple[datetime, datetime]]:
    from tierflow.core.ledger import Ledger

    rows = Ledger.for_vault(vault).rows(run_id=run_id)
    assert len(rows) == 4 and {r["tier"] for r in rows} == {"deep"} and not any(r["cached_result"] for r in rows)
    return sorted((datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["timestamp"])) for r in rows)


def _overlaps(intervals: list[tuple[datetime, datetime]]) -> int:
    """How many calls started before an earlier-started call had ended."""
    count, latest_end = 0, None
    for start, end in intervals:
        if latest_end is not None and start < latest_end:
            count += 1
        latest_end = end if latest_end is None else max(latest_end, end)
    return count


def test_four_tier_deep_calls_under_concurrency_1_never_overlap(
    api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from prefect.concurrency.services import _no_limits_cache

    from tierflow.core.config import load_config

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")

    started = threading.Condition()
    calls = {"started": 0, "limited": False}

    def answer(request: DoubleRequest) -> Reply:
        """Without a limit the first call waits for a second to start, so their overlap does not rest on timing."""
        with started:
            calls["started"] += 1
            started.notify_all()
            if not calls["limited"]:
                assert started.wait_for(lambda: calls["started"] >= 2, timeout=600), "no second call started"
        if calls["limited"]:
            time.sleep(0.3)  # a window in which a second call would overlap, were the limit not held
        return Reply(text="ok")

    with ProviderDouble(answer) as double:
        results = {}
        for label, concurrency in (("unlimited", ""), ("limited", "concurrency = 1")):
            calls.update(started=0, limited=bool(concurrency))
            vault = tmp_path / label
            write_config(
                vault / ".tierflow" / "config.toml",
                DEEP_CONFIG.format(base_url=double.anthropic_base_url, concurrency=concurrency),
            )
            changes = {c.tag: c for c in ops.apply_limits(load_config(vault))}
            assert changes["tier:deep"].limit == (1 if concurrency else None)
            _no_limits_cache.clear()
            settings = RunSettings(vault=str(vault), run_id=f"limits-{label}").with_run("tier-limit-check")
            assert four_deep_calls(settings) == ["ok"] * 4
            results[label] = _intervals(vault, settings.run_id)
    # Without the limit the four calls run side by side (so the check below can fail) ...
    assert _overlaps(results["unlimited"]) >= 1, results["unlimited"]
    # ... and with tier:deep limited to 1 each starts only after the one before it has ended.
    assert _overlaps(results["limited"]) == 0, results["limited"]
    # The server records task runs from events, a moment after they happen.
    deadline = time.monotonic() + 600
    while True:
        with client() as c:
            tagged = [r for r in c.read_task_runs() if r.name.startswith("synthesise · q")]
        if len(tagged) >= 8 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(tagged) == 8, f"the server recorded {len(tagged)} of 8 task runs within 600 s"
    assert all("tier:deep" in r.tags for r in tagged)


def test_ops_and_cli_ops_import_without_prefect():
    """`tierflow --help` stays fast: the sub-apps import Prefect only when a command runs."""
    code = (
        "import sys, tierflow.cli.ops_commands, tierflow.cli.prefect_ops; "
        "assert 'prefect' not in sys.modules, 'prefect imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
