"""`tierflow demo`, as a new user runs it: no keys, no network, a clean console, real notes and ledger rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import frontmatter

from tierflow.core.ledger import Ledger


def test_demo_runs_keyless_and_writes_drafts_report_and_ledger(tmp_path: Path):
    vault = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # a machine that has never run Prefect
    env.pop("PREFECT_API_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "demo", str(vault)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    console = result.stdout + result.stderr
    assert result.returncode == 0, console
    for noise in ("Traceback", "Error flushing", "CancelledError", "ERROR"):
        assert noise not in console, f"{noise!r} on the console:\n{console}"
    assert "offline extractive model" in console and "Concepts/Drafts" in console

    drafts = sorted((vault / "Concepts" / "Drafts").glob("*.md"))
    assert len(drafts) >= 3
    for path in drafts:
        post = frontmatter.load(path)
        assert post.metadata["status"] == "draft" and post.metadata["sources"]
        assert all(m.split(": ", 1)[1].startswith("offline:") for m in post.metadata["tierflow_phase_models"])
        assert "offline extractive model" in post.content  # labelled as the offline model's work
    (report,) = (vault / "tierflow" / "Runs").glob("* reading-notes *.md")
    text = report.read_text()
    assert "## Spend per phase" in text and "| **total** |" in text and "█" in text
    assert all(f"[[Concepts/Drafts/{p.stem}]]" in text for p in drafts)

    rows = Ledger.for_vault(vault).rows()
    assert {r["phase"] for r in rows} == {"collate", "synthesise", "draft"}
    assert {r["provider"] for r in rows} == {"offline"}
    assert sum(r["phase"] == "collate" for r in rows) == 8
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 and r["flow_run_id"] for r in rows)
