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
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, READING_WEEK, REPO
from test_ops import prefect_server, server_env

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
TIMEOUT_MS = 60_000


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


@pytest.fixture(scope="module")
def ui_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server with one finished reading-notes run on it, made by `tierflow run` in its own process."""
    browser = chromium()
    root = tmp_path_factory.mktemp("ui")
    vault = root / "vault"
    shutil.copytree(FIXTURES / "reading-week", vault)
    with prefect_server(root / "server") as url:
        env = server_env(root / "client", PREFECT_API_URL=url)
        command = [sys.executable, "-m", "tierflow.cli", "run", "reading-notes", "--vault", str(vault)]
        command += ["--since", READING_WEEK[0], "--until", READING_WEEK[1], "--profile", "offline"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield {"url": url, "vault": vault, "browser": browser, **_recorded(url, vault)}


def _recorded(url: str, vault: Path) -> dict[str, Any]:
    """The run as the API has it, once every phase call's task run has been recorded."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tierflow.core.ledger import Ledger

    rows = Ledger.for_vault(vault).rows()
    expected = {f"{r['phase']} · {r['subject']}"[:100] for r in rows}  # task-run names are cut at 100 characters
    assert {r["phase"] for r in rows} == {"collate", "synthesise", "draft"}
    deadline = time.monotonic() + 30
    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs()
        while True:
            runs = [t for t in client.read_task_runs() if t.flow_run_id == flow_run.id]
            names = {t.name for t in runs}
            if expected <= names or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert expected <= names, f"task runs not recorded: {sorted(expected - names)}"
        artifacts = {a.key: a for a in client.read_artifacts() if a.flow_run_id == flow_run.id}
    assert flow_run.state is not None and flow_run.state.is_completed()
    from tierflow.core.progress import artifact_key

    key = artifact_key("reading-notes", "spend", str(vault))
    assert key in artifacts
    tags = {tag for t in runs for tag in t.tags}
    return {
        "flow_run_id": str(flow_run.id),
        "task_runs": sorted(expected),
        "tags": tags,
        "spend": artifacts[key],
        "spend_key": key,
    }


@pytest.fixture
def page(ui_run: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=ui_run["browser"], args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1300})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def test_flow_run_page_shows_the_phase_task_runs_and_the_spend_table(ui_run: dict[str, Any], page: Any):
    from playwright.sync_api import expect

    base = ui_run["url"].removesuffix("/api")
    page.goto(f"{base}/v2/runs/flow-run/{ui_run['flow_run_id']}")
    expect(page.get_by_text("reading-notes · 2026-11-16 to 2026-11-22").first).to_be_visible()
    expect(page.get_by_text("Completed").first).to_be_visible()

    page.get_by_role("tab", name="Task Runs").click()
    for name in ui_run["task_runs"]:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    assert any(n.startswith("collate · ") for n in ui_run["task_runs"])
    assert "synthesise · week" in ui_run["task_runs"]
    assert any(n.startswith("draft · ") for n in ui_run["task_runs"])
    # Each phase's task run carries its route as tags (with the run's vault, profile and id tags the UI's list
    # folds some of them away, so they are read from the API the page draws from).
    for tag in ("tier:light", "tier:deep", "tier:standard", "phase:synthesise", "model:offline:extractive-deep"):
        assert tag in ui_run["tags"], tag
    expect(page.get_by_text("tier:light", exact=True).first).to_be_attached()
    page.wait_for_timeout(500)  # let the run graph finish drawing before the picture
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "flow-run.png"))

    page.get_by_role("tab", name="Artifacts").click()
    card = page.get_by_text(ui_run["spend_key"], exact=True).first
    expect(card).to_be_visible()
    card.click()  # the artifact key's timeline ...
    page.get_by_role("link", name=str(ui_run["spend"].id)[:8]).click()  # ... and this run's version of it
    table = page.get_by_role("table")
    expect(table).to_be_visible()
    for phase, tier, model in (
        ("collate", "light", "offline:extractive-light"),
        ("synthesise", "deep", "offline:extractive-deep"),
        ("draft", "standard", "offline:extractive-standard"),
    ):
        row = table.get_by_role("row").filter(has_text=phase)
        expect(row).to_have_count(1)
        expect(row).to_contain_text(tier)
        expect(row).to_contain_text(model)
    for column in ("tokens", "USD", "all-deep USD", "saved"):
        expect(table.get_by_text(column, exact=True)).to_be_visible()
    expect(table.get_by_role("row").filter(has_text="total")).to_have_count(1)
    page.set_viewport_size({"width": 1440, "height": 640})
    page.screenshot(path=str(DOCS / "spend-artifact.png"))
