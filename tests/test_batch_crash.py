"""A batch cannot be orphaned: a process killed after the provider accepted its batch, but before tierflow
recorded the batch's id, leaves a record that the next run settles from the provider's batch list."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from responders import skilled
from test_student_feedback import SUBMITTED, configure, drafts, keys, schema_of  # noqa: F401 (keys: a fixture)

from tierflow.core.budget import open_reservations
from tierflow.core.ledger import Ledger
from tierflow.flows.student_feedback import student_feedback
from tierflow.testing.double import ProviderDouble

pytestmark = pytest.mark.usefixtures("prefect_harness", "keys")

REPO = Path(__file__).resolve().parents[1]

KILLED_AFTER_SUBMIT = """
import os, sys
from tierflow.core.providers.{module} import {cls} as Provider

original = Provider.submit_batch

def accepted_then_killed(self, requests, **kwargs):
    original(self, requests, **kwargs)
    os._exit(137)  # as kill -9 here: the provider has the batch, tierflow never got its id back

def killed_before_sending(self, requests, **kwargs):
    os._exit(137)

Provider.submit_batch = {hook}
from tierflow.flows.student_feedback import student_feedback
student_feedback(vault=sys.argv[1], mode="batch", run_id=sys.argv[2])
"""


def crash(module: str, cls: str, hook: str) -> str:
    return KILLED_AFTER_SUBMIT.format(module=module, cls=cls, hook=hook)


PROVIDERS = {"anthropic": ("anthropic", "AnthropicProvider"), "openai": ("openai", "OpenAIProvider")}


def billed(item) -> tuple[int, int]:
    """(prompt, output) tokens the double billed for one answered request, in either provider's usage shape."""
    usage = item.response["usage"]
    if "prompt_tokens" in usage:
        return usage["prompt_tokens"], usage["completion_tokens"]
    prompt = usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
    return prompt, usage["output_tokens"]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_batch_accepted_just_before_a_crash_is_found_not_resubmitted_and_billed_once(
    provider: str, feedback_vault: Path, double: ProviderDouble
):
    from prefect.settings import PREFECT_API_URL

    configure(feedback_vault, double, provider)
    double.responder = skilled()
    run_id = "20261118-060000-crashed"
    module, cls = PROVIDERS[provider]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    crashed = subprocess.run(
        [sys.executable, "-c", crash(module, cls, "accepted_then_killed"), str(feedback_vault), run_id],
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert crashed.returncode == 137
    creates = [q for q in double.requests if q.kind == "batch_create"]
    assert len(creates) == 1  # the collate batch reached the provider, and its process died

    resumed = student_feedback(vault=str(feedback_vault), mode="batch", run_id=run_id)
    assert not resumed.failed, resumed.failed
    creates = [q for q in double.requests if q.kind == "batch_create"]
    assert len(creates) == 3  # the collate batch was found and collected, not resubmitted; then cohort, drafts
    collate_items = [q for q in double.batch_items if schema_of(q) == "evidenceout"]
    assert len(collate_items) == SUBMITTED - 1  # every submission with text, once
    assert len(drafts(feedback_vault)) == SUBMITTED

    ledger = Ledger.for_vault(feedback_vault)
    rows = [r for r in ledger.rows(run_id=run_id) if not r["cached_result"]]
    answered = [q for q in double.batch_items if q.status == 200] + [c for c in double.model_calls() if c.status == 200]
    assert len(rows) == len(answered)  # one row per billed answer: none twice, none lost
    assert sum(r["input_tokens"] + r["cache_read_tokens"] + r["cache_write_tokens"] for r in rows) == sum(
        billed(q)[0] for q in answered
    )
    assert sum(r["output_tokens"] for r in rows) == sum(billed(q)[1] for q in answered)
    assert open_reservations(ledger) == []  # the dead process's batch reservations were settled


def test_a_batch_recorded_but_never_sent_is_sent_on_the_next_run(feedback_vault: Path, double: ProviderDouble):
    from prefect.settings import PREFECT_API_URL

    configure(feedback_vault, double, "anthropic")
    double.responder = skilled()
    run_id = "20261118-060000-unsent"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    script = crash("anthropic", "AnthropicProvider", "killed_before_sending")
    crashed = subprocess.run(
        [sys.executable, "-c", script, str(feedback_vault), run_id], cwd=REPO, env=env, timeout=300
    )
    assert crashed.returncode == 137 and not [q for q in double.requests if q.kind == "batch_create"]

    resumed = student_feedback(vault=str(feedback_vault), mode="batch", run_id=run_id)
    assert not resumed.failed, resumed.failed
    assert len([q for q in double.requests if q.kind == "batch_create"]) == 3  # collate sent now, then the rest
    assert len([q for q in double.batch_items if schema_of(q) == "evidenceout"]) == SUBMITTED - 1
    assert open_reservations(Ledger.for_vault(feedback_vault)) == []


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_batch_whose_creation_answer_is_lost_is_found_not_created_twice(
    provider: str, feedback_vault: Path, double: ProviderDouble
):
    """The provider created the batch, but its answer timed out: the SDK would send the create again (two
    batches, billed twice); tierflow looks for it instead, and collects the one batch."""
    configure(feedback_vault, double, provider)
    config = feedback_vault / ".tierflow" / "config.toml"
    config.write_text(config.read_text().replace("max_retries = 2", "max_retries = 2\ntimeout_s = 1.0"))
    double.responder = skilled()
    double.lose_next("batch_create", delay_s=2.0)
    summary = student_feedback(vault=str(feedback_vault), mode="batch")
    assert not summary.failed, summary.failed
    creates = [q for q in double.requests if q.kind == "batch_create"]
    assert len(creates) == 3 and not creates[0].delivered  # collate (its answer lost, found), cohort, drafts
    assert len([q for q in double.batch_items if schema_of(q) == "evidenceout"]) == SUBMITTED - 1
    assert len(drafts(feedback_vault)) == SUBMITTED
    assert open_reservations(Ledger.for_vault(feedback_vault)) == []
