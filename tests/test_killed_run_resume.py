"""A run killed (SIGKILL) with calls in flight: the calls the provider billed and whose answers died with the process
are recorded as `lost` when the run is resumed (or another run starts), so the resumed run's report and
`tierflow spend --run` count them, once, at their worst case; never a live holder's or another host's call."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import frontmatter
import pytest
import sqlalchemy as sa
from conftest import anthropic_config, openai_config, write_config
from responders import schema_name, skilled
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.core.budget import HOST, open_reservations, release_stale
from tierflow.core.calls import Caller, RunSettings
from tierflow.core.ledger import Ledger, reservations
from tierflow.testing.double import DoubleRequest, ProviderDouble

REPO = Path(__file__).resolve().parents[1]
GUARD_S = 900
"""A guard against a hung test (a first Prefect start on a busy machine is slow), never a measure of speed."""
COLLATED = 13
"""The feedback fixture's collate calls: 14 submissions, one of them empty (no call)."""


class HeldAnswers:
    """The double's `hold`: every collate answer, made and billed, is held back until `let_go`; `wait_for(n)`
    returns once `n` are held (the calls are in flight, their answers billed)."""

    def __init__(self) -> None:
        self.held = 0
        self._changed = threading.Condition()
        self._go = threading.Event()

    def __call__(self, request: DoubleRequest) -> None:
        if self._go.is_set() or schema_name(request) != "evidenceout":
            return
        with self._changed:
            self.held += 1
            self._changed.notify_all()
        self._go.wait(GUARD_S)

    def wait_for(self, n: int, process: subprocess.Popen, console: Path) -> None:
        with self._changed:
            for _ in range(GUARD_S):
                if self._changed.wait_for(lambda: self.held >= n or process.poll() is not None, timeout=1):
                    break
        assert process.poll() is None, console.read_text()[-3000:]
        assert self.held == n, f"{self.held} collate answers held, not {n}"

    def let_go(self) -> None:
        self._go.set()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_resume_after_a_kill_reports_the_killed_runs_billed_calls_as_lost_once(
    provider, feedback_vault, tmp_path, monkeypatch
):
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    held = HeldAnswers()
    with ProviderDouble(skilled(), hold=held) as double:
        config = feedback_vault / ".tierflow" / "config.toml"
        text = anthropic_config(double) if provider == "anthropic" else openai_config(double)
        # A lease far longer than the test: only the holder being gone may release the killed calls, never a
        # lapse that a slow machine would bring about in the middle of the resumed run.
        # Every collate call at once: no warm-up (OpenAI caches their shared prefix, so the first would go alone) ...
        write_config(config, "reservation_lease_s = 36000\n" + text + config.read_text() + "warm_up = false\n")
        if provider == "openai":  # ... and the output mode learned by an earlier run (else the first call learns it)
            Ledger.for_vault(feedback_vault).remember_output_mode("openai", "gpt-5-nano", "json_schema")
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
        console = tmp_path / "console.txt"
        with console.open("w") as out:
            run = subprocess.Popen(
                [sys.executable, "-m", "tierflow.cli", "run", "student-feedback", "--vault", str(feedback_vault)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            held.wait_for(COLLATED, run, console)  # every collate call sent, answered and billed; none read
            ledger = Ledger.for_vault(feedback_vault)
            in_flight = open_reservations(ledger)
            run.send_signal(signal.SIGKILL)
            run.wait(GUARD_S)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait(GUARD_S)
            held.let_go()
        (run_id,) = {r.run_id for r in in_flight}
        assert len(in_flight) == COLLATED and {r.phase for r in in_flight} == {"collate"}
        assert {r.state for r in open_reservations(ledger)} == {"holder gone"}
        assert ledger.rows(run_id=run_id) == []  # the answers died with the process
        worst = sum(r.usd for r in in_flight)
        assert worst > 0
        cli = CliRunner()

        resumed = cli.invoke(app, ["resume", run_id, "--vault", str(feedback_vault)], catch_exceptions=False)
        assert resumed.exit_code == 0, resumed.output
        billed = len([c for c in double.model_calls() if schema_name(c) == "evidenceout"])
        assert billed == 2 * COLLATED  # paid again: the first answers were never read

    assert open_reservations(ledger) == []
    rows = ledger.rows(run_id=run_id)
    lost = [r for r in rows if r["outcome"] == "lost"]
    assert len(lost) == COLLATED and {r["phase"] for r in lost} == {"collate"}
    assert sum(r["cost_usd"] for r in lost) == pytest.approx(worst)
    assert sorted(r["cost_usd"] for r in lost) == pytest.approx(sorted(r.usd for r in in_flight))
    assert release_stale(ledger) == [] and len(ledger.rows(run_id=run_id)) == len(rows)  # recorded once

    listed = cli.invoke(app, ["spend", "--vault", str(feedback_vault), "--run", run_id, "-f", "json", "--last", "0"])
    spent = json.loads(listed.output)
    assert [r["outcome"] for r in spent].count("lost") == COLLATED
    total = sum(r["cost_usd"] for r in spent)
    assert total == pytest.approx(sum(r["cost_usd"] for r in rows))

    (path,) = (feedback_vault / "tierflow" / "Runs").glob("*student-feedback*.md")
    report = frontmatter.load(path)
    assert report.metadata["tierflow_run"] == run_id
    assert report.metadata["tierflow_cost_usd"] == pytest.approx(total, abs=1e-6)  # the lost calls included
    collate = next(line for line in report.content.splitlines() if line.startswith("| collate |"))
    assert f"| {2 * COLLATED} |" in collate  # the lost calls and the resumed ones
    assert f"{COLLATED} calls sent and never answered" in report.content
    assert f"${worst:.4f}" in report.content


DEAD = "import os; print(os.getpid())"


def dead_pid() -> int:
    """The pid of a process that has ended."""
    return int(subprocess.run([sys.executable, "-c", DEAD], capture_output=True, text=True, check=True).stdout)


def test_a_run_starting_records_only_provably_dead_holders_calls_as_lost(tmp_path, double, ledger_url, monkeypatch):
    """A run starting releases the calls of processes on this host that are gone, whatever their run (as the next
    reservation would once their leases were over); a live process's call, and one held on another host, stay."""
    from test_budgets import PROMPT

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    config = write_config(
        tmp_path / "vault" / ".tierflow" / "config.toml",
        f"ledger_url = {json.dumps(ledger_url)}\nreservation_lease_s = 36000\n" + anthropic_config(double),
    )
    vault = str(config.parent.parent)
    held = {}
    for run_id in ("killed", "other-killed", "live", "elsewhere"):
        c = Caller(RunSettings(vault=vault, config_path=str(config), run_id=run_id, flow="test"))
        routed, request = c.build(phase="collate", complexity="low", system="Be brief.", prompt=PROMPT)
        held[run_id] = c.budgets.reserve([(routed, c.estimate(routed, request))])
    ledger = Ledger(ledger_url)
    dead = dead_pid()
    with ledger.transaction() as conn:
        for run_id, host in (("killed", HOST), ("other-killed", HOST), ("elsewhere", "another-host")):
            conn.execute(
                sa.update(reservations)
                .where(reservations.c.id == held[run_id].id)
                .values(holder_pid=dead, holder_host=host)
            )

    RunSettings.start("test", vault=vault, config=str(config), profile=None, tier=None, run_id="killed", parameters={})

    assert {r.run_id: r.state for r in open_reservations(ledger)} == {"live": "held", "elsewhere": "held"}
    for run_id in ("killed", "other-killed"):
        (row,) = ledger.rows(run_id=run_id)
        assert (row["outcome"], row["phase"], row["tier"]) == ("lost", "collate", "light")
        assert row["cost_usd"] == pytest.approx(float(held[run_id].estimate.usd))
    assert ledger.rows(run_id="live") == [] and ledger.rows(run_id="elsewhere") == []
