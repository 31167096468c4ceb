"""Days, weeks and months where the lecturer lives: `[vault] timezone` decides where every period starts (budgets,
`tierflow spend --by` and `--since`, the reading week, schedules), never the machine's zone or UTC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import call_record, write_config

from tierflow.core.ledger import Ledger, period_start
from tierflow.report.spend import ledger_summary, summarise

REPO = Path(__file__).resolve().parents[1]

ZONES = {
    # zone: days of its daylight-saving changes in 2026 (none for Kolkata) and a plain day
    "Europe/London": ["2026-03-29", "2026-10-25"],
    "America/Los_Angeles": ["2026-03-08", "2026-11-01"],
    "Australia/Sydney": ["2026-04-05", "2026-10-04"],
    "Asia/Kolkata": ["2026-06-30"],
    "Pacific/Chatham": ["2026-04-05", "2026-09-27"],
}


def around_midnights(zone: str) -> list[datetime]:
    """Instants a minute either side of each local midnight around each change (and the month's end), in UTC."""
    tz = ZoneInfo(zone)
    found = []
    for day in ZONES[zone]:
        changed = date.fromisoformat(day)
        month_end = date(changed.year + changed.month // 12, changed.month % 12 + 1, 1)
        for d in (changed - timedelta(days=1), changed, changed + timedelta(days=1), month_end):
            midnight = datetime(d.year, d.month, d.day, tzinfo=tz).astimezone(UTC)
            found += [midnight - timedelta(minutes=1), midnight, midnight + timedelta(hours=12)]
    return found


@pytest.mark.parametrize("zone", sorted(ZONES))
@pytest.mark.parametrize("by", ["day", "week", "month"])
def test_spend_by_day_week_and_month_are_the_budget_periods_in_the_vault_zone(ledger_url: str, zone: str, by: str):
    """A call a minute before local midnight is on that day, one at midnight on the next, across 23- and 25-hour
    days and the months holding them, whether added up by the database or row by row."""
    ledger = Ledger(ledger_url)
    tz = ZoneInfo(zone)
    instants = around_midnights(zone)
    for n, at in enumerate(instants):
        ledger.record(call_record(timestamp=at.isoformat(timespec="microseconds"), cost_usd=float(2**n)))
    expected: dict[str, float] = {}
    for n, at in enumerate(instants):
        start = datetime.fromisoformat(period_start(by, tz, at) or "").astimezone(tz).date()
        name = {"day": start.isoformat(), "week": f"{start.isocalendar()[0]}-W{start.isocalendar()[1]:02d}"}
        key = name.get(by, start.isoformat()[:7])
        expected[key] = expected.get(key, 0.0) + float(2**n)
    database = {r[by]: r["cost_usd"] for r in ledger_summary(ledger, by, tz=tz)}
    rows = {r[by]: r["cost_usd"] for r in summarise(ledger.rows(), by, tz)}
    assert database == rows == expected
    since = period_start("day", tz, instants[4])
    database = {r[by]: r["cost_usd"] for r in ledger_summary(ledger, by, tz=tz, since=since)}
    assert database == {r[by]: r["cost_usd"] for r in summarise(ledger.rows(since=since), by, tz)}


def test_spend_since_a_date_starts_at_its_midnight_in_the_vault_zone_not_the_machine_s_or_utc(tmp_path: Path):
    """Los Angeles, 8 March 2026 (a 23-hour day): a call at 23:30 on the 7th is before it, one at 00:30 is on it."""
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", '[vault]\ntimezone = "America/Los_Angeles"\n')
    ledger = Ledger(f"sqlite:///{vault / '.tierflow' / 'ledger.sqlite'}")
    for stamp, usd in (("2026-03-08T07:30:00", 1.0), ("2026-03-08T08:30:00", 2.0), ("2026-03-09T06:59:00", 4.0)):
        ledger.record(call_record(timestamp=f"{stamp}.000000+00:00", cost_usd=usd))
    for machine in ("Pacific/Chatham", "UTC"):
        env = {**os.environ, "TZ": machine, "COLUMNS": "200"}
        run = [sys.executable, "-m", "tierflow.cli", "spend", "--vault", str(vault), "--format", "json"]
        for by, want in (("day", {"2026-03-08": 6.0}), ("month", {"2026-03": 6.0})):
            out = subprocess.run(
                [*run, "--by", by, "--since", "2026-03-08"], cwd=REPO, env=env, capture_output=True, text=True
            )
            assert out.returncode == 0, out.stderr
            assert {r[by]: r["cost_usd"] for r in json.loads(out.stdout)} == want
        out = subprocess.run([*run, "--by", "day"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
        assert {r["day"]: r["cost_usd"] for r in json.loads(out.stdout)} == {"2026-03-07": 1.0, "2026-03-08": 6.0}
