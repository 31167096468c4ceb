"""Budget forecasts: each period budget's use at the end of its period, at the rate so far, on an injected clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from conftest import call_record, write_config

from tierflow.core.budget import Budgets
from tierflow.core.config import load_config
from tierflow.core.ledger import Ledger
from tierflow.core.usage import Usage

CONFIG = """
[budgets.weekly]
usd = 10
period = "week"
[budgets.daily-tokens]
tokens = 10000
period = "day"
[budgets.run]
usd = 1
"""


def spend(ledger: Ledger, when: str, usd: float, tokens: int) -> None:
    ledger.record(call_record(usage=Usage(input_tokens=tokens), cost_usd=usd, started_at=when, timestamp=when))


def setup(tmp_path: Path) -> tuple[Path, Budgets]:
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", CONFIG)
    config = load_config(vault)
    ledger = Ledger(config.ledger_url)
    # The week starts on Monday 16 November 2026 (UTC); $5 spent by Wednesday noon, half of it last week.
    spend(ledger, "2026-11-13T10:00:00+00:00", 2.0, 500)  # the week before: not counted
    spend(ledger, "2026-11-16T09:00:00+00:00", 3.0, 1000)
    spend(ledger, "2026-11-18T06:00:00+00:00", 2.0, 3000)
    return vault, Budgets(config, ledger, run_id="", flow="")


def test_forecast_projects_the_rate_so_far_to_the_end_of_the_period(tmp_path: Path):
    _, budgets = setup(tmp_path)
    now = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)  # 2.5 days into the week, half a day into the day
    forecasts = {f.state.name: f for f in budgets.forecasts(now)}
    assert set(forecasts) == {"weekly", "daily-tokens"}  # a per-run budget has no period to project over
    weekly = forecasts["weekly"]
    assert weekly.period_end == datetime(2026, 11, 23, tzinfo=UTC)
    assert abs(weekly.projected_usd - 14.0) < 1e-9  # $5 in 2.5 days -> $2 a day -> $14 by the end of the week
    assert weekly.runs_out == datetime(2026, 11, 21, 0, 0, tzinfo=UTC)  # $5 left at $2 a day
    assert weekly.over
    daily = forecasts["daily-tokens"]
    assert daily.projected_tokens == 6000 and daily.runs_out is None and not daily.over  # 3000 by noon
    later = {f.state.name: f for f in budgets.forecasts(datetime(2026, 11, 22, 12, 0, tzinfo=UTC))}
    assert later["weekly"].projected_usd < 10 and later["weekly"].runs_out is None and not later["weekly"].over


def test_spend_budget_prints_the_forecast_on_the_injected_clock(tmp_path: Path):
    vault, _ = setup(tmp_path)
    env = {**os.environ, "TIERFLOW_CLOCK_START": "2026-11-18T12:00:00+00:00"}
    out = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "spend", "--vault", str(vault), "--budget", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    states = {s["budget"]: s for s in json.loads(out.stdout)}
    assert abs(states["weekly"]["projected_usd"] - 14.0) < 0.01
    assert states["weekly"]["runs_out"].startswith("2026-11-20T23:5") or states["weekly"]["runs_out"].startswith(
        "2026-11-21T00:00"
    )
    assert states["run"]["projected_usd"] is None and states["run"]["runs_out"] is None
    table = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "spend", "--vault", str(vault), "--budget"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert "Fri 2026-11-20 23:5" in table.stdout or "Sat 2026-11-21 00:00" in table.stdout
    assert "not this period" in table.stdout and "$14.0" in table.stdout


def test_a_run_whose_projection_crosses_a_limit_emits_a_prefect_event(reading_vault: Path, prefect_harness):
    import time
    from datetime import date

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    from tierflow.flows.reading_notes import reading_notes
    from tierflow.report.run_report import PROJECTED_OVER

    existing = (reading_vault / ".tierflow" / "config.toml").read_text()
    # Offline calls are free: a token budget that the run's rate will cross before the month ends.
    write_config(
        reading_vault / ".tierflow" / "config.toml",
        existing + '[budgets.monthly]\ntokens = 30000\nperiod = "month"\npolicy = "warn"\n',
    )
    summary = reading_notes(vault=str(reading_vault), since=date(2026, 11, 16), until=date(2026, 11, 22))
    assert summary.tokens > 0
    # This run's event only: another run's projection over a `monthly` budget emits the same one, and the server
    # records events in the background (batched, every few seconds), so it may be there before this run's.
    this_run = EventFilter(
        event=EventNameFilter(name=[PROJECTED_OVER]), related=EventRelatedFilter(id=[f"tierflow.run.{summary.run_id}"])
    )
    events = []
    with get_client(sync_client=True) as client:
        for _ in range(600):  # up to 300 s
            events = client.read_events(filter=this_run, limit=50).events
            if events:
                break
            time.sleep(0.5)
    (mine,) = events
    assert mine.resource.id == "tierflow.budget.monthly" and mine.payload["projected_tokens"] > 30000
    assert mine.payload["runs_out"].startswith("2026-11-")


def test_spend_budget_writes_csv_with_the_json_fields_and_refuses_otel(tmp_path: Path):
    import csv
    import io

    from typer.testing import CliRunner

    from tierflow.cli.app import app

    vault, _ = setup(tmp_path)
    args = ["spend", "--vault", str(vault), "--budget", "--format"]
    as_json = CliRunner().invoke(app, [*args, "json"])
    as_csv = CliRunner().invoke(app, [*args, "csv"])
    assert as_json.exit_code == 0 and as_csv.exit_code == 0, as_csv.output
    records = json.loads(as_json.stdout)
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [list(r) for r in rows] == [list(r) for r in records]
    moving = ("projected_usd", "projected_tokens", "runs_out")  # the clock runs on between the two commands

    def steady(row: dict) -> dict:
        return {k: "" if v is None else str(v) for k, v in row.items() if k not in moving}

    assert [steady(r) for r in rows] == [steady(r) for r in records]
    otel = CliRunner().invoke(app, [*args, "otel"])
    assert otel.exit_code == 2 and otel.stdout == ""
    assert "--budget cannot be combined with --format otel" in " ".join(otel.output.split())


def test_spend_refuses_options_that_would_be_ignored_naming_both(tmp_path: Path):
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    vault, _ = setup(tmp_path)
    for extra, both in (
        (["--budget", "--by", "phase"], "--budget cannot be combined with --by phase"),
        (["--budget", "--last", "5"], "--budget cannot be combined with --last 5"),
        (["--budget", "--watch"], "--budget cannot be combined with --watch"),
        (["--watch", "--by", "model"], "--watch cannot be combined with --by model"),
        (["--watch", "--format", "json"], "--watch cannot be combined with --format json"),
        (["--budget", "--run", "r1"], "--budget cannot be combined with --run"),
        (["--budget", "--project", "EDU7001"], "--budget cannot be combined with --project"),
        (["--budget", "--since", "2026-11-01"], "--budget cannot be combined with --since"),
    ):
        result = CliRunner().invoke(app, ["spend", "--vault", str(vault), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert both in " ".join(result.output.split()), result.output
