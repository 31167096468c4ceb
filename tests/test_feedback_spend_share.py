"""A feedback draft's spend in its front matter: tokens and USD alike from every attempt, its own and its share."""

from __future__ import annotations

import threading
from pathlib import Path

import frontmatter
import pytest
from conftest import anthropic_config, write_config
from responders import skilled

from tierflow.core.ledger import Ledger
from tierflow.flows.student_feedback import student_feedback
from tierflow.report.spend import row_tokens
from tierflow.testing.double import Reply

pytestmark = pytest.mark.usefixtures("prefect_harness")

FEEDBACK = "Teaching/EDU7001/essay-1/feedback"


def test_each_drafts_tokens_and_usd_count_every_attempt(feedback_vault: Path, double, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    existing = (feedback_vault / ".tierflow" / "config.toml").read_text()
    write_config(feedback_vault / ".tierflow" / "config.toml", anthropic_config(double) + existing)
    answer = skilled()
    seen, lock = set(), threading.Lock()

    def first_attempt_malformed(request):
        # Each draft's first answer is malformed and its retry passes, however the threads interleave (a draft
        # whose every attempt failed would be written by no one, and its spend would be in no note).
        asked = request.last_user_text.split("Your previous answer to this request could not be used:")[0].rstrip()
        with lock:
            first = asked not in seen
            seen.add(asked)
        return Reply(text="not the feedback asked for") if first else answer(request)

    double.responder = skilled({"feedbackout": first_attempt_malformed})
    summary = student_feedback(vault=str(feedback_vault))
    rows = Ledger.for_vault(feedback_vault).rows(run_id=summary.run_id)
    assert sum(r["phase"] == "draft" and r["outcome"] != "ok" for r in rows) > 0  # some drafts took retries
    notes = [frontmatter.load(p).metadata for p in sorted((feedback_vault / FEEDBACK).glob("s*.md"))]
    drafted = [m for m in notes if m["tierflow_tokens"]]
    whole_tokens = sum(row_tokens(r) for r in rows)
    # The shared phases are split evenly (whole tokens each): at most one token per draft is lost to rounding.
    assert whole_tokens - len(drafted) <= sum(m["tierflow_tokens"] for m in drafted) <= whole_tokens
    assert sum(m["tierflow_cost_usd"] for m in drafted) == pytest.approx(sum(r["cost_usd"] for r in rows), abs=1e-5)
