"""The Prefect integration point: a phase task run is created with its route's tags and recorded with its ids."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import recorded_task_run
from prefect import flow, task
from pydantic import BaseModel

from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.checks import Check
from tierflow.core.phases import phase_task

pytestmark = pytest.mark.usefixtures("prefect_harness")


@task
def summarise_note(settings: RunSettings, text: str) -> str:
    return (
        caller_for(settings).ask(phase="collate", complexity="low", system="Be brief.", prompt=text, subject="n1").text
    )


@flow
def one_phase(settings: RunSettings) -> str:
    tagged = phase_task(summarise_note, settings, phase="collate", complexity="low", subject="Hattie2007")
    return tagged.submit(settings, "Feedback is powerful. It can also harm.").result()


def test_task_run_carries_route_tags_and_ledger_row_carries_its_run_ids(tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    settings = RunSettings(vault=str(tmp_path), run_id="helper-test", flow="helper-test", profile="offline")
    assert one_phase(settings).startswith("[offline extractive model]")
    (row,) = caller_for(settings).ledger.rows()
    with get_client(sync_client=True) as client:
        # The server records the task run, then its name, in the background: late under load.
        task_run = recorded_task_run(client, row["task_run_id"], until=lambda t: t.name == "collate · Hattie2007")
        flow_run = client.read_flow_run(row["flow_run_id"])
        # Listed with its flow run's, as the UI lists them: not looked for among the whole session's, of which the
        # server returns one page (200) in an order the test does not control.
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    assert set(task_run.tags) == {
        "phase:collate",
        "complexity:low",
        "tier:light",
        "model:offline:extractive-light",
        # and the run's own tags, which tell one vault's or run's task runs from another's
        "profile:offline",
        f"vault:{tmp_path.name}",
        "tierflow-run:helper-test",
    }
    assert task_run.name == "collate · Hattie2007"
    assert str(task_run.flow_run_id) == str(flow_run.id)
    assert any(r.id == task_run.id for r in runs)


class Verdict(BaseModel):
    label: str


@task
def classify(settings: RunSettings, text: str) -> str:
    only_summative = Check("label", lambda v: [] if v.label == "summative" else ["not summative"])
    answer = caller_for(settings).ask(
        phase="collate", complexity="low", system="s", prompt=text, output=Verdict, checks=[only_summative]
    )
    return answer.route.tier


@flow
def escalating_phase(settings: RunSettings) -> str:
    tagged = phase_task(classify, settings, phase="collate", complexity="low", subject="essay")
    return tagged.submit(settings, "Classify this assessment.").result()


def test_an_escalated_call_renames_its_task_run_marker_first_and_shows_its_whole_spend(
    tmp_path: Path, double, monkeypatch: pytest.MonkeyPatch
):
    """Tags are fixed when a task run is created: the run's name says where the answer came from, and its
    artifact gives the kept answer's cost beside the task's total over every attempt."""
    from conftest import anthropic_config, write_config
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterTaskRunId

    from tierflow.testing.double import Reply

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    config = write_config(tmp_path / "c.toml", anthropic_config(double))
    double.responder = lambda r: Reply(data={"label": "formative" if r.model == "claude-haiku-4-5" else "summative"})
    settings = RunSettings(vault=str(tmp_path), config_path=str(config), run_id="escalating", flow="helper-test")
    assert escalating_phase(settings) == "standard"
    rows = caller_for(settings).ledger.rows(run_id="escalating")
    row = next(r for r in rows if r["escalated_from"])
    attempts = [r for r in rows if r["task_run_id"] == row["task_run_id"]]
    assert [r["tier"] for r in attempts] == ["light", "light", "standard"]  # a retry on light, then one tier up
    with get_client(sync_client=True) as client:  # the server records the task run, then its names, late under load
        task_run = recorded_task_run(client, row["task_run_id"], until=lambda t: t.name.startswith("[light>"))
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(task_run_id=ArtifactFilterTaskRunId(any_=[row["task_run_id"]]))
        )
    # The marker first, in ASCII: a narrow task list that clips the end of a name still shows it.
    assert task_run.name == "[light>standard] collate · essay"
    assert "tier:light" in task_run.tags  # the tags still say where it was routed
    assert artifact.description == "collate: answered on standard"
    header, _, cells = (line.strip("|").split(" | ") for line in artifact.data.splitlines())
    shown = dict(zip([h.strip() for h in header], [c.strip() for c in cells], strict=True))
    assert shown["model"] == "anthropic:claude-sonnet-4-6" and shown["attempts"] == "3"
    assert shown["USD (kept answer)"] == f"${row['cost_usd']:.6f}"
    total = sum(r["cost_usd"] for r in attempts)
    assert total > row["cost_usd"] and shown["USD (task, all attempts)"] == f"${total:.6f} (3 calls)"


def test_a_runs_profile_tag_names_where_its_tiers_come_from(tmp_path: Path, double):
    from conftest import anthropic_config, write_config

    from tierflow.core.phases import run_tags

    no_profile_key = write_config(tmp_path / "own.toml", anthropic_config(double).replace('profile = "anthropic"', ""))
    named = write_config(tmp_path / "named.toml", anthropic_config(double))
    vault_only = write_config(tmp_path / "vault-only.toml", '[vault]\ntimezone = "Europe/London"\n')
    for config, profile, tag in (
        (no_profile_key, None, "profile:config"),  # its own Anthropic tiers: not the built-in offline profile
        (named, None, "profile:anthropic"),
        (vault_only, None, "profile:offline"),
        (no_profile_key, "openai", "profile:openai"),
    ):
        settings = RunSettings(vault=str(tmp_path), config_path=str(config), profile=profile, run_id="p", flow="t")
        tags = run_tags(settings)
        assert tag in tags and sum(t.startswith("profile:") for t in tags) == 1, (config.name, tags)


def recorded_task_runs(flow_run_id: str, ready) -> list:  # noqa: ANN001
    """The flow run's task runs once `ready(runs)` holds: the server records them from events, late under load."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 600
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if ready(runs) or time.monotonic() > deadline:
                return runs
            time.sleep(0.25)


def test_a_run_without_a_window_names_its_select_task_with_the_resolved_window(reading_vault: Path):
    from tierflow.flows.reading_notes import reading_notes

    state = reading_notes(vault=str(reading_vault), profile="offline", return_state=True)
    assert state.is_completed(), state
    runs = recorded_task_runs(
        str(state.state_details.flow_run_id), lambda rs: any(r.name.startswith("select · ") for r in rs)
    )  # not just "select": the engine's generated name (`select-123`) is recorded before the task_run_name
    names = [r.name for r in runs if r.name.startswith("select")]
    # The test clock's today is 2026-11-18 (conftest), so the default window is the seven days to it.
    assert names == ["select · 2026-11-12 to 2026-11-18"], names


def test_a_run_without_tag_limits_logs_no_concurrency_warning(reading_vault: Path, caplog: pytest.LogCaptureFixture):
    """No tag limit is the normal case (`[limits] mechanism = "ledger"`): nothing to warn about, per phase."""
    import logging

    from conftest import READING_WEEK

    from tierflow.flows.reading_notes import reading_notes

    with caplog.at_level(logging.WARNING):
        summary = reading_notes(
            vault=str(reading_vault), since=READING_WEEK[0], until=READING_WEEK[1], profile="offline"
        )
    assert summary.phases and not summary.failed
    noise = [r.getMessage() for r in caplog.records if "do not exist - skipping acquisition" in r.getMessage()]
    assert noise == []
