"""Scale-out smoke test: the reading-notes flow on a local Dask cluster writes what the default runner writes."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from typing import Any

import frontmatter
import pytest
from conftest import FIXTURES, READING_WEEK

from tierflow.cli import prefect_ops as ops
from tierflow.core.ledger import Ledger
from tierflow.flows.reading_notes import reading_notes
from tierflow.report.spend import summarise

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

SINCE, UNTIL = (date.fromisoformat(d) for d in READING_WEEK)
RUN_KEYS = {"tierflow_run", "tierflow_hash"}
"""Front-matter that differs between any two runs: the run id, and the content hash of a note that holds it."""


def notes(vault: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """Every concept draft: name -> (front-matter without the run id, body)."""
    out = {}
    for path in sorted((vault / "Concepts" / "Drafts").glob("*.md")):
        post = frontmatter.load(path)
        out[path.name] = ({k: v for k, v in post.metadata.items() if k not in RUN_KEYS}, post.content)
    return out


def phase_tokens(vault: Path, run_id: str) -> dict[str, dict[str, Any]]:
    rows = Ledger.for_vault(vault).rows(run_id=run_id)
    keep = ("calls", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
    return {row["phase"]: {k: row[k] for k in keep} for row in summarise(rows, "phase")}


def test_dask_local_cluster_writes_the_same_notes_and_spends_the_same_tokens(tmp_path: Path):
    runs = {}
    for label in ("thread", "dask"):
        vault = tmp_path / label
        shutil.copytree(FIXTURES / "reading-week", vault)
        runner = ops.task_runner_for(label, dashboard=False)
        flow = reading_notes if runner is None else reading_notes.with_options(task_runner=runner)
        summary = flow(vault=str(vault), since=SINCE, until=UNTIL, profile="offline")
        assert not summary.failed and not summary.halted, summary
        runs[label] = (vault, summary)

    (thread_vault, thread_run), (dask_vault, dask_run) = runs["thread"], runs["dask"]
    assert thread_run.run_id != dask_run.run_id
    written = notes(thread_vault)
    assert written, "the default runner wrote no concept drafts"
    assert notes(dask_vault) == written
    assert sorted(w.path for w in dask_run.written) == sorted(w.path for w in thread_run.written)

    tokens = phase_tokens(thread_vault, thread_run.run_id)
    assert set(tokens) == {"collate", "synthesise", "draft"} and all(t["input_tokens"] > 0 for t in tokens.values())
    assert phase_tokens(dask_vault, dask_run.run_id) == tokens
    assert dask_run.tokens == thread_run.tokens > 0
    rows = Ledger.for_vault(dask_vault).rows(run_id=dask_run.run_id)
    assert rows and all(r["flow_run_id"] and r["task_run_id"] for r in rows)


def test_task_runner_names():
    from prefect_dask import DaskTaskRunner

    assert ops.task_runner_for("thread") is None and ops.task_runner_for("") is None
    local = ops.task_runner_for("dask")
    assert isinstance(local, DaskTaskRunner)
    assert local.cluster_kwargs["n_workers"] == 2 and local.cluster_kwargs["dashboard_address"] == "127.0.0.1:8787"
    assert ops.task_runner_for("dask:3", dashboard=False).cluster_kwargs == {
        "n_workers": 3,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
    }
    assert ops.task_runner_for("dask:tcp://127.0.0.1:8786").address == "tcp://127.0.0.1:8786"
    for bad, message in (("ray", "choose thread"), ("dask:zero", "whole number"), ("dask:0", "whole number")):
        with pytest.raises(ops.OpsError, match=message):
            ops.task_runner_for(bad)
