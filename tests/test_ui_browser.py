"""The Prefect UI tells the token story: a real flow run, opened in headless Chromium.

A `prefect server start` on a free loopback port, the reading-notes flow run against it by the CLI (offline
model), then the flow-run page: the phase task runs, their tier tags, and the spend table artifact. The
screenshots go to docs/ for the README. Select with `-m browser`; `.ci/run` installs Debian's chromium.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, READING_WEEK, REPO, anthropic_config, write_config
from prefect import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from test_ops import prefect_server, server_env

from tierflow.testing.double import ProviderDouble

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DOCS = REPO / "docs"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 180_000  # a page on a busy machine; generous, never a measure of speed


def chromium() -> str:
    """The system Chromium (Debian's `chromium`), or skip; in CI (`CI` set) its absence fails the test."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    problem = None
    if path is None:
        problem = "no system Chromium: apt-get install chromium (.ci/run does)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is missing: pip install -e '.[test]'"
    if problem is None:
        return str(path)
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {problem}")
    pytest.skip(problem)


DOWNGRADE = '[budgets.run]\nusd = 0.12\npolicy = "downgrade"\nfloor = "light"\n'
"""A per-run cap below the synthesis call's worst case on the deep tier: it runs on a cheaper tier."""
SCHEDULED_WINDOW = ("2026-11-12", "2026-11-18")
"""The seven days before the day the scheduled run was due (`SCHEDULED_DUE`), in the vault's time zone."""
SCHEDULED_DUE = datetime(2026, 11, 19, 7, 0, tzinfo=UTC)
"""When the deployment's run was due: the morning after the test clock's today (conftest's TIERFLOW_CLOCK_START),
set explicitly, as Prefect would otherwise date it by the wall clock."""


@pytest.fixture(scope="module")
def ui_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server with two finished reading-notes runs on it, priced on Anthropic's models (the wire double):
    one started by `tierflow run` with a `downgrade` budget, one from a scheduled deployment without a window."""
    from responders import skilled

    browser = chromium()
    root = tmp_path_factory.mktemp("ui")
    vault = root / "vault"
    shutil.copytree(FIXTURES / "reading-week", vault)
    config = vault / ".tierflow" / "config.toml"
    with ProviderDouble() as double, prefect_server(root / "server") as url:
        double.responder = skilled()
        write_config(config, anthropic_config(double, DOWNGRADE) + config.read_text())
        env = server_env(root / "client", PREFECT_API_URL=url, ANTHROPIC_API_KEY="test-key")
        command = [sys.executable, "-m", "tierflow.cli", "run", "reading-notes", "--vault", str(vault)]
        command += ["--since", READING_WEEK[0], "--until", READING_WEEK[1]]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        scheduled = _run_scheduled(url, vault, env)
        yield {"url": url, "vault": vault, "browser": browser, "scheduled": scheduled, **_recorded(url, vault)}


def _run_scheduled(url: str, vault: Path, env: dict[str, str]) -> str:
    """A `reading-notes` deployment on a weekly cron, a run of it due at `SCHEDULED_DUE` with the deployment's
    parameters, and that run executed as a worker would (`python -m prefect.engine`): since and until are None, as
    on every scheduled run, and the week is the one before the day it was due."""
    from prefect.states import Scheduled
    from prefect.types.entrypoint import EntrypointType

    from tierflow.flows.reading_notes import reading_notes

    with temporary_settings(updates={PREFECT_API_URL: url}):
        deployment = reading_notes.to_deployment(
            name="weekly",
            cron="0 7 * * 1",
            parameters={"vault": str(vault)},
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        deployment_id = deployment.apply()
        with get_client(sync_client=True) as client:
            (schedule,) = client.read_deployment_schedules(deployment_id)
            assert schedule.active and schedule.schedule.cron == "0 7 * * 1"
            # As the scheduler makes it: the deployment's parameters only, so since and until are None.
            run = client.create_flow_run_from_deployment(deployment_id, state=Scheduled(scheduled_time=SCHEDULED_DUE))
            assert run.parameters == {"vault": str(vault)} and run.name != "reading-notes · None to None"
    done = subprocess.run(
        [sys.executable, "-m", "prefect.engine", str(run.id)], env=env, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return str(run.id)


def _recorded(url: str, vault: Path) -> dict[str, Any]:
    """The CLI's run as the API has it, once every phase call's task run has been recorded."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    from tierflow.core.config import load_config
    from tierflow.core.ledger import Ledger
    from tierflow.report.spend import all_deep_cost

    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(is_null_=True))
        )
    rows = [r for r in Ledger.for_vault(vault).rows() if r["flow_run_id"] == str(flow_run.id)]
    expected = {f"{r['phase']} · {r['subject']}"[:100] for r in rows}  # task-run names are cut at 100 characters
    assert {r["phase"] for r in rows} == {"collate", "synthesise", "draft"}
    downgraded = [r for r in rows if r["downgraded_from"]]
    assert any(r["phase"] == "synthesise" and r["downgraded_from"] == "deep" for r in downgraded)
    renamed = {
        f"{r['phase']} · {r['subject']}"[:100]: f"[{r['downgraded_from']}>{r['tier']}] "
        + f"{r['phase']} · {r['subject']}"[:100]
        for r in downgraded
    }
    expected = {renamed.get(name, name) for name in expected}
    deadline = time.monotonic() + 600  # the server records task runs from events, late on a busy machine
    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        while True:
            runs = [t for t in client.read_task_runs() if t.flow_run_id == flow_run.id]
            names = {t.name for t in runs}
            if expected <= names or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert expected <= names, f"task runs not recorded within 600 s: {sorted(expected - names)}"
        artifacts = {a.key: a for a in client.read_artifacts() if a.flow_run_id == flow_run.id}
    assert flow_run.state is not None and flow_run.state.is_completed()
    from tierflow.core.progress import artifact_key

    key = artifact_key("reading-notes", "spend", str(vault))
    assert key in artifacts
    tags = {tag for t in runs for tag in t.tags}
    cost = sum(r["cost_usd"] for r in rows)
    all_deep = all_deep_cost(load_config(vault), rows)
    assert cost > 0 and all_deep is not None and all_deep > cost
    return {
        "flow_run_id": str(flow_run.id),
        "task_runs": sorted(expected),
        "downgraded": sorted(renamed.values()),
        "tags": tags,
        "spend": artifacts[key],
        "spend_key": key,
        "usd": f"${cost:.4f}",
        "all_deep": f"${all_deep:.4f}",
        "saved": f"{(1 - cost / all_deep) * 100:.0f}%",
    }


@pytest.fixture
def page(ui_run: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    # `expect` waits 5 s by default, not the page's timeout: a busy machine draws the task list later than that.
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=ui_run["browser"], args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1300})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def test_flow_run_page_shows_the_phase_task_runs_the_downgrade_and_the_spend_table(ui_run: dict[str, Any], page: Any):
    from playwright.sync_api import expect

    base = ui_run["url"].removesuffix("/api")
    page.goto(f"{base}/v2/runs/flow-run/{ui_run['flow_run_id']}")
    expect(page.get_by_text(f"reading-notes · {READING_WEEK[0]} to {READING_WEEK[1]}").first).to_be_visible()
    expect(page.get_by_text("Completed").first).to_be_visible()

    page.get_by_role("tab", name="Task Runs").click()
    for name in ui_run["task_runs"]:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    assert any(n.startswith("collate · ") for n in ui_run["task_runs"])
    assert any(n.startswith("draft · ") for n in ui_run["task_runs"])
    # The downgraded synthesis: created tagged `tier:deep`, its name says which tier actually answered.
    (synthesis,) = [n for n in ui_run["downgraded"] if n.startswith("[deep>") and n.endswith("] synthesise · week")]
    assert synthesis in ui_run["task_runs"] and "synthesise · week" not in ui_run["task_runs"]
    actual = synthesis.removeprefix("[deep>").removesuffix("] synthesise · week")
    assert actual in ("standard", "light")
    expect(page.get_by_text(synthesis, exact=True).first).to_be_visible()
    # Every downgrade marker is drawn inside the 1,440 px page, where the list clips long names at their end.
    for name in ui_run["downgraded"]:
        marker = name.split("] ", 1)[0] + "]"
        cell = page.get_by_text(name, exact=True).first
        box = cell.bounding_box()
        assert box is not None, name
        drawn = page.evaluate(
            """([el, marker]) => { const r = document.createRange(); const t = el.firstChild;
                 const i = t.textContent.indexOf(marker); r.setStart(t, i); r.setEnd(t, i + marker.length);
                 const b = r.getBoundingClientRect(); const c = el.getBoundingClientRect();
                 return b.width > 0 && b.right <= Math.min(c.right, 1440) + 0.5; }""",
            [cell.element_handle(), marker],
        )
        assert drawn, f"{marker} is not visible in {name!r} at 1,440 px"
    # Each phase's task run carries its route as tags (with the run's vault, profile and id tags the UI's list
    # folds some of them away, so they are read from the API the page draws from).
    for tag in ("tier:light", "tier:deep", "tier:standard", "phase:synthesise", "model:anthropic:claude-opus-4-6"):
        assert tag in ui_run["tags"], tag
    expect(page.get_by_text("tier:light", exact=True).first).to_be_attached()
    page.wait_for_timeout(500)  # let the run graph finish drawing before the picture
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "flow-run.png"))

    # The task run's own page: named with the tier that answered, beside the `tier:deep` tag it was created with,
    # and its artifact names the model that answered.
    page.get_by_text(synthesis, exact=True).first.click()
    expect(page.get_by_role("listitem").filter(has_text=synthesis).first).to_be_visible()
    expect(page.get_by_role("definition").filter(has_text="tier:deep").first).to_contain_text("phase:synthesise")
    model = {"standard": "claude-sonnet-4-6", "light": "claude-haiku-4-5"}[actual]
    page.get_by_role("tab", name="Artifacts").click()
    expect(page.get_by_text(f"synthesise: answered on {actual}", exact=True).first).to_be_visible()
    page.get_by_text(f"synthesise: answered on {actual}", exact=True).first.click()
    expect(page.get_by_role("table").first).to_contain_text(f"anthropic:{model}")
    expect(page.get_by_role("table").first).to_contain_text("USD (task, all attempts)")

    page.goto(f"{base}/v2/runs/flow-run/{ui_run['flow_run_id']}")
    page.get_by_role("tab", name="Artifacts").click()
    card = page.get_by_text(ui_run["spend_key"], exact=True).first
    expect(card).to_be_visible()
    card.click()  # the artifact key's timeline ...
    page.get_by_role("link", name=str(ui_run["spend"].id)[:8]).click()  # ... and this run's version of it
    description = f"{ui_run['usd']} · all-deep {ui_run['all_deep']} · saved {ui_run['saved']}"
    expect(page.get_by_text(description, exact=True).first).to_be_visible()
    table = page.get_by_role("table")
    expect(table).to_be_visible()
    for phase, tier in (("collate", "light"), ("synthesise", actual), ("draft", "standard")):
        row = table.get_by_role("row").filter(has_text=phase)
        expect(row).to_have_count(1)
        expect(row).to_contain_text(tier)
    headers = [h.strip() for h in table.get_by_role("columnheader").all_inner_texts()]
    assert headers[:8] == ["phase", "tier", "model", "calls", "tokens", "USD", "all-deep USD", "saved"], headers
    total = table.get_by_role("row").filter(has_text="total")
    expect(total).to_have_count(1)
    cells = dict(zip(headers, total.get_by_role("cell").all(), strict=False))
    page.set_viewport_size({"width": 1440, "height": 640})
    # The money as the page draws it: the ledger's figures, in view at 1,440 px and not clipped by the table.
    for column, figure in (("USD", ui_run["usd"]), ("all-deep USD", ui_run["all_deep"]), ("saved", ui_run["saved"])):
        cell = cells[column]
        assert cell.inner_text().strip() == figure, column
        box = cell.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 1440, (column, box)
        centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        drawn = page.evaluate("([x, y]) => document.elementFromPoint(x, y)?.closest('td')?.innerText", centre)
        assert drawn is not None and drawn.strip() == figure, (column, drawn)
    page.mouse.move(0, 0)  # no row highlighted under the pointer in the picture
    page.screenshot(path=str(DOCS / "spend-artifact.png"))


def test_a_scheduled_run_is_named_with_its_resolved_window(ui_run: dict[str, Any], page: Any):
    from playwright.sync_api import expect

    base = ui_run["url"].removesuffix("/api")
    page.goto(f"{base}/v2/runs/flow-run/{ui_run['scheduled']}")
    expect(page.get_by_text("Completed").first).to_be_visible()
    since, until = SCHEDULED_WINDOW
    name = f"reading-notes · {since} to {until}"
    expect(page.get_by_role("listitem").filter(has_text=name).first).to_be_visible()  # the page's title
    # Prefect's own log line from before tierflow renamed the run still quotes the template's name: the logs
    # may say `None to None`, nothing else on the page does.
    page.get_by_role("tab", name="Task Runs").click()
    # Count only once the task list has drawn: its select task, named with the resolved window, is in view.
    expect(page.get_by_text(f"select · {since} to {until}", exact=True).first).to_be_visible()
    expect(page.get_by_text("collate · ").first).to_be_visible()
    expect(page.get_by_text("None to None")).to_have_count(0)
