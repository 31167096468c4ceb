"""A batch has ended, and downloading its results is cut off (the connection drops mid-body, the results endpoint
answers 503, a read times out): tierflow tries again itself, up to the provider's `max_retries`, and records every
item once. When every try fails, the run says which batch, that its answers are paid for and kept by the provider,
and the `tierflow resume RUN` that collects them (exit 3, as a provider failure); that resume records each once."""

from __future__ import annotations

import re
import shlex
from collections import Counter
from pathlib import Path

import pytest
from responders import skilled
from test_batch_crash import billed
from test_student_feedback import SUBMITTED, assert_runnable_resume, configure, drafts, keys, schema_of  # noqa: F401
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.core.budget import open_reservations
from tierflow.core.ledger import Ledger
from tierflow.flows.student_feedback import student_feedback
from tierflow.testing.double import ProviderDouble

pytestmark = pytest.mark.usefixtures("prefect_harness", "keys")

RESULTS = {"anthropic": "batch_results", "openai": "file_content"}
"""The request that downloads a batch's results: Anthropic's results_url (streamed JSONL), OpenAI's output file."""
TRIES = 3
"""`max_retries = 2` in the tests' config: a download is tried three times in all."""


def fault_results(double: ProviderDouble, provider: str, fault: str, times: int) -> None:
    """Make the next `times` downloads of batch results fail with `fault`."""
    if fault == "503":
        double.fail_next(503, kind=RESULTS[provider], times=times)
    else:  # the body cut off halfway, after its full Content-Length; or held past the client's timeout
        double.lose_next(RESULTS[provider], fault=fault, delay_s=2.0, times=times)


def assert_recorded_once(vault: Path, double: ProviderDouble, run_id: str) -> None:
    """One ledger row per answer the double billed, with its tokens: no item recorded twice, none lost; and no
    reservation left open."""
    ledger = Ledger.for_vault(vault)
    rows = [r for r in ledger.rows(run_id=run_id) if not r["cached_result"]]
    answered = [q for q in double.batch_items if q.status == 200] + [c for c in double.model_calls() if c.status == 200]
    assert len(rows) == len(answered)
    assert sum(r["input_tokens"] + r["cache_read_tokens"] + r["cache_write_tokens"] for r in rows) == sum(
        billed(q)[0] for q in answered
    )
    assert sum(r["output_tokens"] for r in rows) == sum(billed(q)[1] for q in answered)
    collated = Counter(r["subject"] for r in rows if r["phase"] == "collate")
    assert len(collated) == SUBMITTED - 1 and set(collated.values()) == {1}
    assert open_reservations(ledger) == []


@pytest.mark.parametrize("fault", ["cut", "503", "timeout"])
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_results_download_that_fails_once_is_tried_again_and_every_item_recorded_once(
    provider: str, fault: str, feedback_vault: Path, double: ProviderDouble
):
    configure(feedback_vault, double, provider)
    if fault == "timeout":  # the double holds the answer 2 s: past the client's timeout
        config = feedback_vault / ".tierflow" / "config.toml"
        config.write_text(config.read_text().replace("max_retries = 2", "max_retries = 2\ntimeout_s = 1.0"))
    double.responder = skilled()
    fault_results(double, provider, fault, times=1)

    summary = student_feedback(vault=str(feedback_vault), mode="batch")

    assert not summary.failed, summary.failed
    downloads = [q for q in double.requests if q.kind == RESULTS[provider]]
    assert downloads[0].status == 503 if fault == "503" else not downloads[0].delivered
    assert len([q for q in double.requests if q.kind == "batch_create"]) == 3  # collate, cohort, drafts: none twice
    assert len([q for q in double.batch_items if schema_of(q) == "evidenceout"]) == SUBMITTED - 1
    assert len(drafts(feedback_vault)) == SUBMITTED
    assert_recorded_once(feedback_vault, double, summary.run_id)


@pytest.mark.parametrize("fault", ["cut", "503"])
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_results_download_that_fails_every_time_says_how_to_collect_and_resume_records_each_once(
    provider: str, fault: str, feedback_vault: Path, double: ProviderDouble
):
    configure(feedback_vault, double, provider)
    double.responder = skilled()
    fault_results(double, provider, fault, times=TRIES)

    args = ["run", "student-feedback", "--vault", str(feedback_vault), "--mode", "batch"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)

    assert result.exit_code == 3, result.output  # as any provider failure that fails a phase
    downloads = [q for q in double.requests if q.kind == RESULTS[provider]]
    assert len(downloads) == TRIES  # tried again, as often as max_retries says, and no more
    (batch_id,) = {q.batch_id for q in double.batch_items}
    failed = " ".join(result.output.split("failed:", 1)[1].split())  # one line, however the terminal wrapped it
    assert f"batch {batch_id} has ended, but downloading its results failed (tried {TRIES} times)" in failed
    assert f"Its answers are paid for, and {provider} keeps them: `tierflow resume " in failed
    assert_runnable_resume(failed, feedback_vault)
    assert drafts(feedback_vault) == {}
    ledger = Ledger.for_vault(feedback_vault)
    assert [r for r in ledger.rows() if r["batch"]] == []  # nothing recorded from a results file never read whole
    assert len(open_reservations(ledger)) == SUBMITTED - 1  # held for the batch until it is collected

    resume = shlex.split(re.search(r"`(tierflow resume [^`]*)`", failed).group(1))
    resumed = CliRunner().invoke(app, resume[1:], catch_exceptions=False)

    assert resumed.exit_code == 0, resumed.output
    assert len([q for q in double.requests if q.kind == "batch_create"]) == 3  # collected, not sent again
    assert len([q for q in double.batch_items if schema_of(q) == "evidenceout"]) == SUBMITTED - 1
    assert len(drafts(feedback_vault)) == SUBMITTED
    assert_recorded_once(feedback_vault, double, resume[2])
