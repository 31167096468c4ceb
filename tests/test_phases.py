"""A fanned-out phase's own work between its task runs: what it asks of the Prefect server, and what it waits for."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import anthropic_config, fan_out_flow, write_config

from tierflow.core.calls import RunSettings


def test_a_phase_never_waits_for_its_progress_artifact_and_the_run_ends_once_it_is_sent(
    tmp_path: Path, monkeypatch, prefect_harness
):
    """The progress artifact is sent from a background thread, newest first: while the server is slow to answer
    (here it answers nothing until the phase has finished), the phase submits and gathers its task runs, and the
    updates that pile up meanwhile become one. The run's end (`run_span`) waits until the last one is sent."""
    import prefect.artifacts as artifacts
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    import tierflow.core.phases as phases

    finished = threading.Event()
    sent: list[str] = []

    def held(send):  # noqa: ANN001, ANN202
        def after_the_phase(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if not finished.wait(30):  # the phase itself waits on this send: it never finishes
                raise AssertionError("the phase waited for its progress artifact")
            sent.append(kwargs["description"])
            return send(*args, **kwargs)

        return after_the_phase

    monkeypatch.setattr(artifacts, "create_progress_artifact", held(artifacts.create_progress_artifact))
    monkeypatch.setattr(artifacts, "update_progress_artifact", held(artifacts.update_progress_artifact))

    @task
    def item(index):  # noqa: ANN001, ANN202
        return index

    @flow
    def phase(settings):  # noqa: ANN001, ANN202
        from prefect.context import FlowRunContext

        with phases.run_span(settings):
            outcome = phases.fan_out(
                item, settings, list(range(4)), phase="collate", complexity="low", subject=str, args=lambda i: (i,)
            )
            finished.set()
        return outcome, FlowRunContext.get().flow_run.id

    settings = RunSettings(vault=str(tmp_path), run_id="progress", flow="phases", profile="offline")
    outcome, flow_run_id = phase(settings)
    assert outcome.results == [0, 1, 2, 3]
    # The first (0 of 4) was held until the phase finished; the four updates queued meanwhile went as the last one.
    assert len(sent) == 2 and sent[0] == "collate: 0/4" and sent[1].startswith("collate: 4/4 ")
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    assert artifact.type == "progress" and float(artifact.data) == round(100 / 3, 1)
    assert artifact.description == sent[1]
    # Once sent, the run's sender and the context it held are let go: a long-lived worker keeps none per run.
    from tierflow.core import progress

    assert str(flow_run_id) not in progress._senders


def test_the_progress_artifact_of_a_phase_a_budget_halted_counts_the_items_that_finished(
    tmp_path: Path, prefect_harness
):
    """Ten items are submitted together; six finish and four meet the budget's halt. The progress artifact ends
    on the six that finished and says the budget halted the phase, not on ten of ten; a phase that finished
    every item ends as before."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.context import FlowRunContext

    import tierflow.core.phases as phases
    from tierflow.core.calls import caller_for
    from tierflow.core.errors import BudgetExceeded, ProviderError
    from tierflow.core.slots import started_task_runs

    failing: set[int] = set()

    @task
    def item(index):  # noqa: ANN001, ANN202
        if index >= 6:
            raise BudgetExceeded("budget 'run' (per run): $0.0100 spent", budget="run", scope="run")
        if index in failing:
            raise ProviderError("anthropic", "claude-haiku-4-5", "HTTP 529 overloaded")
        return index

    @flow
    def phase(settings, count):  # noqa: ANN001, ANN202
        with phases.run_span(settings):
            outcome = phases.fan_out(
                item, settings, list(range(count)), phase="collate", complexity="low", subject=lambda i: f"note {i}",
                args=lambda i: (i,),
            )  # fmt: skip
        return outcome, FlowRunContext.get().flow_run.id

    def progress(flow_run_id):  # noqa: ANN001, ANN202
        with get_client(sync_client=True) as client:
            (artifact,) = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(like_="progress")
                )
            )
        return artifact

    settings = RunSettings(vault=str(tmp_path), run_id="halted-progress", flow="phases", profile="offline")
    assert started_task_runs(caller_for(settings).config) >= 10  # all ten are submitted before any halts
    outcome, flow_run_id = phase(settings, 10)
    assert outcome.halted and outcome.results == list(range(6))
    artifact = progress(flow_run_id)
    assert artifact.description == "collate: 6/10, halted by budget"
    assert float(artifact.data) == round(100 * 0.6 / 3, 1)

    outcome, flow_run_id = phase(RunSettings(vault=str(tmp_path), run_id="whole", flow="phases", profile="offline"), 6)
    assert not outcome.halted and progress(flow_run_id).description.startswith("collate: 6/6 (note ")

    failing.update({1, 2})  # items that fail count as failed, not done
    outcome, flow_run_id = phase(RunSettings(vault=str(tmp_path), run_id="some", flow="phases", profile="offline"), 6)
    assert outcome.results == [0, 3, 4, 5] and progress(flow_run_id).description == "collate: 4/6, 2 failed"

    @flow
    def once(settings):  # noqa: ANN001, ANN202
        with phases.run_span(settings):
            outcome = phases.single(item, settings, 7, phase="synthesise", complexity="high", subject="week")
        return outcome, FlowRunContext.get().flow_run.id

    outcome, flow_run_id = once(RunSettings(vault=str(tmp_path), run_id="once", flow="phases", profile="offline"))
    assert outcome.halted and progress(flow_run_id).description == "synthesise: 0/1, halted by budget"


@pytest.mark.parametrize(("mechanism", "started"), [("ledger", 6), ("prefect", 2)])
def test_a_phase_keeps_the_next_call_of_every_tier_slot_started_and_waiting(
    tmp_path: Path, double, prefect_harness, mechanism: str, started: int
):
    """With `[run] workers = 2` and a tier `concurrency` of 3 held by ledger slots, a phase keeps 6 task runs
    unfinished: one in flight per slot and the next one waiting for it. Under Prefect's tag limits (which hold
    whole task runs) `workers` alone bounds it."""
    from prefect import task

    text = anthropic_config(double, f'[limits]\nmechanism = "{mechanism}"\n[run]\nworkers = 2\n')
    write_config(
        tmp_path / ".tierflow" / "config.toml",
        text.replace("max_output_tokens = 1024\n", "max_output_tokens = 1024\nconcurrency = 3\n", 1),
    )
    together = threading.Barrier(started, timeout=60)  # the first `started` items finish only once all have started
    lock = threading.Lock()
    running = [0, 0]  # now, most at once

    @task
    def item(index):  # noqa: ANN001, ANN202
        with lock:
            running[0] += 1
            running[1] = max(running)
        try:
            if index < started:
                together.wait()
            return index
        finally:
            with lock:
                running[0] -= 1

    phase = fan_out_flow(item, 9)

    settings = RunSettings(vault=str(tmp_path), run_id=f"started-{mechanism}", flow="phases")
    outcome = phase(settings)
    assert outcome.results == list(range(9)) and not outcome.skipped
    assert running[1] == started


def test_a_phase_warms_its_first_calls_route_ahead_of_them(tmp_path: Path, double, monkeypatch, prefect_harness):
    """Before its task runs start, a phase has the process load the tokenizer and prices and build the SDK client
    of its first item's route, in the background (`Caller.warm`); without an API key that is left to the call."""
    from prefect import task

    from tierflow.core.calls import Caller, caller_for

    write_config(tmp_path / ".tierflow" / "config.toml", anthropic_config(double))
    settings = RunSettings(vault=str(tmp_path), run_id="warm-route", flow="phases")
    caller_for(settings).warm(caller_for(settings).route("collate", "low"))  # no key: no client, no error
    assert "client" not in vars(caller_for(settings).provider("anthropic"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    warmed: list[tuple[str, str]] = []
    done = threading.Event()
    warm = Caller.warm

    def noted(caller, routed):  # noqa: ANN001, ANN202
        warm(caller, routed)
        warmed.append((routed.phase, routed.tier))
        done.set()

    monkeypatch.setattr(Caller, "warm", noted)

    @task
    def item(index):  # noqa: ANN001, ANN202
        return index

    phase = fan_out_flow(item, 3)

    assert phase(settings).results == [0, 1, 2]
    assert done.wait(60)  # a guard against a hang only
    assert warmed == [("collate", "light")] and "client" in vars(caller_for(settings).provider("anthropic"))


def test_a_phase_whose_every_item_fails_at_the_provider_fails_the_run_and_one_answer_keeps_it_going(
    tmp_path: Path, prefect_harness
):
    """An outage (every call a 529) must not end as a successful run that wrote nothing: a scheduled run's exit
    code is all that tells. One item answered is a partial week, as before: the others are skipped with why."""
    from prefect import task

    from tierflow.core.errors import ProviderError

    @task
    def outage(index):  # noqa: ANN001, ANN202
        raise ProviderError("anthropic", "claude-haiku-4-5", "HTTP 529 overloaded")

    @task
    def one_answers(index):  # noqa: ANN001, ANN202
        if index:
            raise ProviderError("anthropic", "claude-haiku-4-5", "HTTP 529 overloaded")
        return index

    settings = RunSettings(vault=str(tmp_path), run_id="outage", flow="phases", profile="offline")
    down = fan_out_flow(outage, 3)(settings)
    assert not down.results and len(down.skipped) == 3
    assert down.failed and "no item got an answer" in down.failed and "529" in down.failed
    partial = fan_out_flow(one_answers, 3)(settings)
    assert partial.results == [0] and len(partial.skipped) == 2 and partial.failed is None


def test_a_phase_whose_every_item_fails_for_any_reason_fails_the_run(tmp_path: Path, prefect_harness):
    """Not only an outage: a bug in a task, or a template that no longer renders, that fails every item must not
    end as a successful run that wrote nothing. The phase fails (exit 3) and says why, with the first error."""
    from prefect import task

    from tierflow.core.errors import VaultError

    @task
    def bug(index):  # noqa: ANN001, ANN202
        raise KeyError("claims")

    @task
    def mixed(index):  # noqa: ANN001, ANN202
        if index:
            raise ValueError("a value nobody foresaw")
        raise VaultError("a note that cannot be read")

    settings = RunSettings(vault=str(tmp_path), run_id="bug", flow="phases", profile="offline")
    broken = fan_out_flow(bug, 3)(settings)
    assert not broken.results and len(broken.skipped) == 3 and broken.halted is None
    assert broken.failed and "collate failed: no item finished; all 3 failed" in broken.failed
    assert "(the first: KeyError: 'claims')" in broken.failed
    both = fan_out_flow(mixed, 2)(settings)
    assert both.failed and "all 2 failed (the first: a note that cannot be read)" in both.failed
    none = fan_out_flow(bug, 0)(settings)  # no items is an empty phase, not a failed one
    assert none.failed is None and not none.skipped


def test_once_a_phase_has_failed_no_later_phase_of_the_run_starts(tmp_path: Path, prefect_harness):
    """A flow of your own that does not check `run.stopped` still pays for no phase on nothing: after a phase
    failed, a later `.once` or `.each` of that flow run returns at once with the same stop, its task never run.
    Another flow run (a resumed run is one) of the same run id starts afresh."""
    from prefect import flow, task

    import tierflow.core.phases as phases

    ran: list[str] = []

    @task
    def bug(index):  # noqa: ANN001, ANN202
        raise KeyError("claims")

    @task
    def later(name):  # noqa: ANN001, ANN202
        ran.append(name)
        return name

    @flow
    def three_phases(settings, fail: bool):  # noqa: ANN001, ANN202
        first = phases.fan_out(
            bug if fail else later, settings, ["a"], phase="collate", complexity="low", subject=str, args=lambda i: (i,)
        )
        second = phases.single(later, settings, "synthesis", phase="synthesise", complexity="high", subject="week")
        third = phases.Phase("draft", "medium").each(later, settings, ["x", "y"], subject=str, args=lambda i: (i,))
        return first, second, third

    settings = RunSettings(vault=str(tmp_path), run_id="stops", flow="phases", profile="offline")
    first, second, third = three_phases(settings, True)
    assert first.failed and second.failed == third.failed == first.failed and ran == []
    assert not second.results and not third.results
    assert second.skipped == [("synthesise", "not started: the collate phase failed")]
    assert third.skipped == [("draft", "not started: the collate phase failed")]
    first, second, third = three_phases(settings, False)  # the same run id, a new flow run
    assert first.failed is None and second.results == ["synthesis"] and third.results == ["x", "y"]


def test_a_prefect_retry_of_the_flow_runs_its_phases_again(tmp_path: Path, prefect_harness):
    """A flow of your own with `@flow(retries=1)` whose phase fails on the first attempt (the provider is down)
    and that raises so that Prefect retries it: the retry is the same flow run, its next attempt, and its phases
    run again; one stopped attempt does not stop the next."""
    from prefect import flow, task
    from prefect.context import FlowRunContext

    import tierflow.core.phases as phases
    from tierflow.core.errors import ProviderError

    attempts: list[int] = []
    drafted: list[str] = []

    @task
    def collate(index):  # noqa: ANN001, ANN202
        attempts.append(index)
        if len(attempts) == 1:  # down for the flow's first attempt only
            raise ProviderError("anthropic", "claude-haiku-4-5", "overloaded (529)")
        return index

    @task
    def draft(name):  # noqa: ANN001, ANN202
        drafted.append(name)
        return name

    @flow(retries=1, retry_delay_seconds=0)
    def retried(settings):  # noqa: ANN001, ANN202
        first = phases.fan_out(collate, settings, [1], phase="collate", complexity="low", subject=str,
                               args=lambda i: (i,))  # fmt: skip
        if first.failed:
            raise RuntimeError(first.failed)  # let Prefect retry the flow
        second = phases.single(draft, settings, "x", phase="draft", complexity="medium", subject="x")
        return first, second, FlowRunContext.get().flow_run.run_count

    settings = RunSettings(vault=str(tmp_path), run_id="retried", flow="phases", profile="offline")
    first, second, run_count = retried(settings)
    assert run_count == 2 and attempts == [1, 1]
    assert first.results == [1] and first.failed is None and not first.skipped
    assert second.results == ["x"] and drafted == ["x"]
    # The first attempt's stop was let go when the second began: nothing of this flow run is remembered.
    assert not [key for key in phases._stops if key[0] == "retried"]


def test_a_long_lived_worker_keeps_no_stop_of_a_finished_run(tmp_path: Path, monkeypatch, prefect_harness):
    """A worker (`prefect serve`) runs flow after flow in one process: the stop a failed phase leaves is let go
    when its run ends (`run_span`, which `begin_run` opens), and a flow of your own that never opens one leaves at
    most `MAX_STOPS`, the newest."""
    from prefect import flow, task

    import tierflow.core.phases as phases

    @task
    def bug(index):  # noqa: ANN001, ANN202
        raise KeyError("claims")

    @flow
    def spanned(settings):  # noqa: ANN001, ANN202
        with phases.run_span(settings):
            return phases.fan_out(bug, settings, [1], phase="collate", complexity="low", subject=str,
                                  args=lambda i: (i,))  # fmt: skip

    for n in range(3):
        outcome = spanned(RunSettings(vault=str(tmp_path), run_id=f"spanned-{n}", flow="phases", profile="offline"))
        assert outcome.failed
    assert not [key for key in phases._stops if key[0].startswith("spanned-")]

    monkeypatch.setattr(phases, "MAX_STOPS", 2)
    for n in range(3):
        outcome = fan_out_flow(bug, 1)(
            RunSettings(vault=str(tmp_path), run_id=f"bare-{n}", flow="phases", profile="offline")
        )
        assert outcome.failed
    assert len(phases._stops) <= 2 and [key[0] for key in phases._stops][-1] == "bare-2"


def test_answers_cut_off_at_a_configured_output_limit_name_the_limits_tried_and_the_key_not_an_outage(
    tmp_path: Path, double, monkeypatch, prefect_harness
):
    """`tiers.light.max_output_tokens = 64` with its ceiling 128, and a JSON answer longer than both: the first
    answer is cut off at 64, its retry at 128 (the ledger and the double show both). The error names both limits
    and the keys, and says a rerun with the config unchanged is cut off the same way; the failed phase does not
    call it a provider outage to wait out."""
    from prefect import task
    from pydantic import BaseModel

    from tierflow.core.calls import caller_for
    from tierflow.core.errors import ProviderError
    from tierflow.core.ledger import Ledger
    from tierflow.testing.double import Reply

    class Summary(BaseModel):
        text: str

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    double.responder = lambda request: Reply(data={"text": " ".join(f"point {n}" for n in range(200))})
    config = anthropic_config(double, "[routing]\nescalate = false\n").replace(
        "max_output_tokens = 1024", "max_output_tokens = 64\nmax_output_tokens_ceiling = 128", 1
    )
    write_config(tmp_path / ".tierflow" / "config.toml", config)
    settings = RunSettings(vault=str(tmp_path), run_id="cut-off", flow="phases")
    errors: list[str] = []

    @task
    def summarise(index):  # noqa: ANN001, ANN202
        try:
            return caller_for(settings).ask(
                phase="collate", complexity="low", system="Summarise.", prompt=f"note {index}", output=Summary
            )
        except ProviderError as exc:
            errors.append(str(exc))
            raise

    outcome = fan_out_flow(summarise, 1)(settings)
    assert [call.max_tokens for call in double.model_calls()] == [64, 128]
    rows = Ledger.for_vault(tmp_path).rows(run_id="cut-off")
    assert [(r["attempt"], r["outcome"]) for r in rows] == [(1, "truncated"), (2, "truncated")]
    (error,) = errors
    assert "(64 tokens) on every attempt" not in error
    assert "light: 64, then 128 tokens" in error
    assert "`tiers.light.max_output_tokens` (64)" in error and "`tiers.light.max_output_tokens_ceiling` (128)" in error
    assert "a rerun with the config unchanged is cut off the same way" in error
    assert outcome.failed and not outcome.results
    assert "failed at the provider" not in outcome.failed and "Rerun once it answers" not in outcome.failed
    assert "cut off at the output limit" in outcome.failed and "tiers.light.max_output_tokens" in outcome.failed
    assert "rerun with the config unchanged is cut off the same way" in outcome.failed

    from prefect import flow

    import tierflow.core.phases as phases

    @flow
    def once(settings):  # noqa: ANN001, ANN202
        return phases.single(summarise, settings, 0, phase="synthesise", complexity="low", subject="week")

    alone = once(RunSettings(vault=str(tmp_path), run_id="cut-off-once", flow="phases"))
    assert alone.failed and "light: 64, then 128 tokens" in alone.failed
    assert "once the limit is raised, a rerun continues from them" in alone.failed


def test_a_ledger_whose_disk_refuses_a_write_fails_the_phase_naming_the_disk_not_a_ledger_gone_away(
    tmp_path: Path, prefect_harness
):
    """A single-task phase whose answer's row a full disk refused (the closing write's LedgerError, no outage): the
    phase fails with that error, which names the file and the fix; the run is not told its ledger 'could not be
    reached' and to go on 'once it is back' (`ledger_gone`), as only a ledger that went away is."""
    from prefect import flow, task

    import tierflow.core.phases as phases
    from tierflow.core.errors import LedgerError
    from tierflow.core.ledger import disk_refused

    full = LedgerError(disk_refused(f"sqlite:///{tmp_path / 'ledger.sqlite'}", OSError("disk I/O error")))

    @task
    def synthesise(name):  # noqa: ANN001, ANN202
        raise full

    @flow
    def once(settings):  # noqa: ANN001, ANN202
        return phases.single(synthesise, settings, "week", phase="synthesise", complexity="high", subject="week")

    outcome = once(RunSettings(vault=str(tmp_path), run_id="disk-full", flow="phases", profile="offline"))
    assert outcome.failed == f"synthesise failed: {full}" and "free space on it" in outcome.failed
    assert outcome.ledger_gone is None


def test_a_phase_whose_every_call_lacks_its_key_says_to_set_it_not_to_wait_for_the_provider(
    tmp_path: Path, double, monkeypatch, prefect_harness
):
    """`--profile anthropic` without ANTHROPIC_API_KEY: nothing reached the provider, yet the phase said every item
    "failed at the provider" and to "Rerun once it answers", which no wait brings about."""
    from prefect import task

    from tierflow.core.calls import caller_for

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    write_config(tmp_path / ".tierflow" / "config.toml", anthropic_config(double))
    settings = RunSettings(vault=str(tmp_path), run_id="no-key", flow="phases")

    @task
    def summarise(index):  # noqa: ANN001, ANN202
        return caller_for(settings).ask(phase="collate", complexity="low", system="Summarise.", prompt=f"note {index}")

    outcome = fan_out_flow(summarise, 2)(settings)
    assert outcome.failed and not outcome.results and double.model_calls() == []
    assert "Rerun once it answers" not in outcome.failed and "failed at the provider" not in outcome.failed
    assert "the provider's key was missing or refused for all 2" in outcome.failed
    assert "ANTHROPIC_API_KEY is not set" in outcome.failed and "Set the key and rerun" in outcome.failed
