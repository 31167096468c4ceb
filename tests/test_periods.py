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


def write_note(vault: Path, name: str, date_line: str | None, mtime: datetime | None = None) -> None:
    path = vault / "Reading" / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    front = f"---\n{date_line}\ntags: [literature]\n---\n" if date_line else ""
    path.write_text(f"{front}# {name}\n\n> a highlight\n", encoding="utf-8")
    if mtime is not None:
        os.utime(path, ns=(int(mtime.timestamp() * 1e9),) * 2)


@pytest.mark.parametrize("zone", sorted(ZONES))
def test_the_reading_week_holds_the_notes_of_its_days_in_the_vault_zone(tmp_path: Path, zone: str, monkeypatch):
    """This week (to the clock's today) and last week, in the vault's zone: a note dated with a time and an offset (a
    YAML timestamp, or quoted) is on the day it was where the lecturer is; a time without an offset, or a day, is
    the day written; an undated note is on its file's day there."""
    from tierflow.tasks.week import default_window
    from tierflow.vault.index import VaultIndex

    tz = ZoneInfo(zone)
    sunday = date(2026, 4, 5)  # Sydney's and Chatham's clocks go back this morning
    monday_midnight = datetime(2026, 4, 6, tzinfo=tz)
    just_after, just_before = monday_midnight + timedelta(minutes=1), monday_midnight - timedelta(minutes=1)
    vault = tmp_path / "vault"
    written = {
        "utc-after": f"date: {just_after.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
        "utc-before": f"date: {just_before.astimezone(UTC).isoformat()}",
        "quoted-after": f"created: '{just_after.astimezone(ZoneInfo('Asia/Tokyo')).isoformat(timespec='minutes')}'",
        "local-before": f"date: {just_before.isoformat()}",
        "wall-clock-monday": "date: 2026-04-06T00:30",
        "day-sunday": "date: 2026-04-05",
    }
    for name, line in written.items():
        write_note(vault, name, line)
    write_note(vault, "file-after", None, mtime=just_after)
    write_note(vault, "file-before", None, mtime=just_before)
    monkeypatch.setenv("TIERFLOW_CLOCK_START", (monday_midnight + timedelta(days=6, hours=12)).isoformat())
    since, until = default_window(zone, None, None)
    assert (since, until) == (date(2026, 4, 6), date(2026, 4, 12))
    index = VaultIndex(vault, tz=tz)
    this_week = index.select(folders=["Reading"], tags=[], since=since, until=until)
    last_week = index.select(folders=["Reading"], tags=[], since=sunday - timedelta(days=6), until=sunday)
    after = ["file-after", "quoted-after", "utc-after", "wall-clock-monday"]
    before = ["day-sunday", "file-before", "local-before", "utc-before"]
    assert [PathName(n.path) for n in this_week.notes] == after
    assert [PathName(n.path) for n in last_week.notes] == before
    # The same from the cache, and each note's day as the index's notes give it.
    again = VaultIndex(vault, tz=tz)
    cached = again.select(folders=["Reading"], tags=[], since=since, until=until)
    assert [PathName(n.path) for n in cached.notes] == after
    days = {PathName(n.path): n.day_in(tz) for n in again.notes()}
    assert days == {**dict.fromkeys(after, date(2026, 4, 6)), **dict.fromkeys(before, sunday)}


def PathName(path: str) -> str:  # noqa: N802
    return Path(path).stem


@pytest.mark.parametrize("zone", sorted(ZONES))
def test_a_monday_0700_schedule_is_next_at_0700_local_across_the_zone_s_clock_changes(zone: str, monkeypatch):
    """`tierflow schedule` prints the next run: on the Monday after each change (and in the week of it), at 07:00
    where the lecturer is, as Prefect's scheduler runs it."""
    from tierflow.cli.prefect_ops import describe_schedule, next_fire

    tz = ZoneInfo(zone)
    for day in ZONES[zone]:
        changed = date.fromisoformat(day)
        for before in (changed - timedelta(days=6), changed - timedelta(days=1), changed):
            at = datetime(before.year, before.month, before.day, 8, tzinfo=tz)
            monkeypatch.setenv("TIERFLOW_CLOCK_START", at.isoformat())
            nxt = next_fire("0 7 * * MON", zone)
            assert nxt is not None
            local = nxt.astimezone(tz)
            assert (local.weekday(), local.hour, local.minute) == (0, 7, 0), (zone, before, local)
            assert timedelta(0) < local - at <= timedelta(days=7)
            assert f"next {local:%Y-%m-%d} 07:00" in describe_schedule("0 7 * * MON", zone)


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("europe/london", "'europe/london' is not a time zone name. Did you mean Europe/London?"),
        ("localtime", "'localtime' is the machine's zone, which may not be yours"),
        ("Asia/Calcutta_", "'Asia/Calcutta_' is not a time zone name"),
    ],
)
def test_a_vault_timezone_that_is_not_an_iana_name_is_refused_with_the_key_and_an_example(name: str, said: str):
    """A name only a case-insensitive disk finds (macOS), or the machine's own zone, would count a vault's days
    differently on another machine (and Prefect refuses the first for a schedule)."""
    from pydantic import ValidationError

    from tierflow.core.config import VaultConfig

    with pytest.raises(ValidationError) as raised:
        VaultConfig(timezone=name)
    message = str(raised.value)
    assert "timezone" in message and said in message and "Europe/London" in message and "Asia/Kolkata" in message
    assert VaultConfig(timezone="Pacific/Chatham").timezone == "Pacific/Chatham"


@pytest.mark.parametrize("zone", sorted(ZONES))
def test_a_day_budget_runs_midnight_to_midnight_local_across_23_and_25_hour_days_counting_calls_in_flight_once(
    tmp_path: Path, monkeypatch, zone: str
):
    """Each local day (and month) starts with nothing spent; a call in flight over midnight is reserved in both
    periods while it flies and spent once, in the day it answers in; the totals agree with the calls."""
    from test_budget_totals import candidates, config_for, from_calls, from_totals, settle

    from tierflow.core.budget import Budgets

    tz = ZoneInfo(zone)
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    config = config_for(tmp_path, ledger_url, timezone=zone)
    budgets = Budgets(config, Ledger(ledger_url), run_id="r1", flow="f", project="thesis")
    changed = date.fromisoformat(ZONES[zone][0])
    days = [changed - timedelta(days=1), changed, changed + timedelta(days=1)]
    spent = {}
    flying = None
    for n, day in enumerate(days):
        midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
        monkeypatch.setenv("TIERFLOW_CLOCK_START", (midnight + timedelta(seconds=2)).isoformat())
        states = {s.name: s for s in budgets.states()}
        assert states["daily"].spent_usd == 0, day  # a new local day
        if flying is not None:
            assert states["daily"].reserved_usd == pytest.approx(0.02)  # still in flight: reserved here too
            settle(budgets, flying, 0.015, 700)  # answers after midnight: spent in this day, once
        settle(budgets, budgets.reserve(candidates(config)), 0.001 * (n + 1), 100)
        end = datetime.fromisoformat(budgets.period_start(config.settings.budgets["daily"]) or "")
        assert end.astimezone(tz) == midnight
        following = (budgets.period_end(config.settings.budgets["daily"]) or midnight).astimezone(tz)
        assert following == datetime(day.year, day.month, day.day, tzinfo=tz) + timedelta(days=1)
        hours = (following - midnight.astimezone(UTC)).total_seconds() / 3600
        assert hours == {changed: (following.utcoffset() - midnight.utcoffset()).total_seconds() / -3600 + 24}.get(
            day, 24
        )
        monkeypatch.setenv("TIERFLOW_CLOCK_START", (following - timedelta(seconds=10)).isoformat())
        flying = budgets.reserve(candidates(config, usd=0.02))
        spent[day] = {s.name: s.spent_usd for s in budgets.states()}["daily"]
    assert spent == pytest.approx({days[0]: 0.001, days[1]: 0.017, days[2]: 0.018})
    budgets.release(flying.id)
    for day in days:
        noon = datetime(day.year, day.month, day.day, 12, tzinfo=tz)
        assert from_totals(budgets, noon) == from_calls(budgets, noon)
    last_noon = datetime(days[2].year, days[2].month, days[2].day, 12, tzinfo=tz)
    month = {s.name: s.spent_usd for s in budgets.states(now=last_noon)}["monthly"]
    assert month == pytest.approx(sum(usd for day, usd in spent.items() if day.month == days[2].month))


@pytest.mark.parametrize("zone", sorted(ZONES))
def test_a_scheduled_monday_run_reads_monday_to_sunday_before_the_day_it_was_due_however_late(zone: str, monkeypatch):
    """Monday 07:00 runs read the week before, Monday to Sunday (the budget's week): a note of Monday 09:00 is in the
    next run's week, never in none; a run a worker starts on Tuesday reads the same week. A direct run (`tierflow
    run`) still reads the seven days to today."""
    from prefect.runtime import deployment, flow_run

    from tierflow.tasks.week import default_window, scheduled_for

    tz = ZoneInfo(zone)
    monday = date.fromisoformat(ZONES[zone][0]) + timedelta(days=1)
    while monday.weekday():
        monday += timedelta(days=1)
    due = datetime(monday.year, monday.month, monday.day, 7, tzinfo=tz)
    monkeypatch.setenv("TIERFLOW_CLOCK_START", (due + timedelta(days=1, hours=3)).isoformat())  # started late
    monkeypatch.setattr(deployment, "id", "a-deployment", raising=False)
    monkeypatch.setattr(flow_run, "scheduled_start_time", due.astimezone(UTC), raising=False)
    assert scheduled_for() == due
    week = default_window(zone, None, None, scheduled=scheduled_for())
    assert week == (monday - timedelta(days=7), monday - timedelta(days=1))
    following = default_window(zone, None, None, scheduled=due + timedelta(days=7))
    assert following == (monday, monday + timedelta(days=6))
    monkeypatch.setattr(deployment, "id", None, raising=False)
    assert scheduled_for() is None
    assert default_window(zone, None, None) == (monday - timedelta(days=5), monday + timedelta(days=1))


@pytest.mark.usefixtures("prefect_harness")
def test_a_deployment_run_of_reading_notes_selects_the_week_before_the_day_it_was_due(reading_vault: Path, monkeypatch):
    import tierflow.flows.reading_notes as flow_module

    config = reading_vault / ".tierflow" / "config.toml"
    config.write_text(config.read_text().replace('"Europe/London"', '"Australia/Sydney"'))
    due = datetime(2026, 4, 6, 7, tzinfo=ZoneInfo("Australia/Sydney"))
    monkeypatch.setattr(flow_module, "scheduled_for", lambda: due)
    seen = []
    real = flow_module.select_week

    def select(settings, since, until):
        seen.append((since, until))
        return real(settings, since, until)

    monkeypatch.setattr(flow_module, "select_week", select)
    flow_module.reading_notes(vault=str(reading_vault), profile="offline")
    assert seen == [(date(2026, 3, 30), date(2026, 4, 5))]


@pytest.mark.usefixtures("prefect_harness")
def test_a_resume_of_a_scheduled_reading_notes_run_days_later_reads_the_week_the_run_read(
    reading_vault: Path, monkeypatch
):
    """The resume (`tierflow resume RUN`, not a deployment's run) reads the week the run worked out from its due
    day, kept with the run in the ledger, not the seven days before the resume's own day."""
    from typer.testing import CliRunner

    import tierflow.flows.reading_notes as flow_module
    from tierflow.cli.app import app

    config = reading_vault / ".tierflow" / "config.toml"
    config.write_text(config.read_text().replace('"Europe/London"', '"Australia/Sydney"'))
    due = datetime(2026, 4, 6, 7, tzinfo=ZoneInfo("Australia/Sydney"))
    monkeypatch.setenv("TIERFLOW_CLOCK_START", (due + timedelta(hours=5)).isoformat())
    monkeypatch.setattr(flow_module, "scheduled_for", lambda: due)
    seen = []
    real = flow_module.select_week

    def select(settings, since, until):
        seen.append((since, until))
        return real(settings, since, until)

    monkeypatch.setattr(flow_module, "select_week", select)
    run = flow_module.reading_notes(vault=str(reading_vault), profile="offline")
    monkeypatch.setenv("TIERFLOW_CLOCK_START", (due + timedelta(days=4, hours=2)).isoformat())  # Friday
    monkeypatch.setattr(flow_module, "scheduled_for", lambda: None)  # a resume is no deployment's run
    resumed = CliRunner().invoke(app, ["resume", run.run_id, "--vault", str(reading_vault)])
    assert resumed.exit_code == 0, resumed.output
    assert seen == [(date(2026, 3, 30), date(2026, 4, 5))] * 2


def test_the_spend_listing_shows_each_call_s_time_in_the_vault_zone(tmp_path: Path):
    """Beside `--since` and `--by day`, which count local days: a call at 23:30 UTC on 4 April is shown at 09:30 on
    the 5th in Sydney (its clocks went back at 03:00)."""
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", '[vault]\ntimezone = "Australia/Sydney"\n')
    Ledger(f"sqlite:///{vault / '.tierflow' / 'ledger.sqlite'}").record(
        call_record(timestamp="2026-04-04T23:30:00.000000+00:00")
    )
    result = CliRunner().invoke(app, ["spend", "--vault", str(vault)], env={"COLUMNS": "250", "TZ": "UTC"})
    assert result.exit_code == 0, result.output
    assert "2026-04-05 09:30:00" in result.stdout and "times in Australia/Sydney" in result.stdout


def test_a_run_id_is_of_now_in_the_vault_zone_not_the_machine_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run ids carried the machine's local time: a run at 01:30 on the 19th in Kolkata, on a machine set to Los
    Angeles, was `20261118-120000-...`, dated the day before its report and `spend --by day`."""
    import time

    from typer.testing import CliRunner

    from tierflow.cli.app import app
    from tierflow.cli.runner import flow_call
    from tierflow.core import clock
    from tierflow.core.calls import RunSettings

    monkeypatch.setattr(clock, "now", lambda: datetime(2026, 11, 18, 20, 0, tzinfo=UTC))
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", '[vault]\ntimezone = "Asia/Kolkata"\n')
    try:
        (vault / "Reading").mkdir()
        chosen = {
            "tierflow run": flow_call("reading-notes", vault)[2],
            "a deployment's run": RunSettings(vault=str(vault)).with_run("reading-notes").run_id,
        }
        asked = CliRunner().invoke(app, ["ask", "--vault", str(vault), "What is retrieval practice?"])
        assert asked.exit_code == 0, asked.output
        ledger = Ledger(f"sqlite:///{vault / '.tierflow' / 'ledger.sqlite'}")
        (chosen["tierflow ask"],) = {row["run_id"] for row in ledger.rows()}
    finally:
        monkeypatch.undo()
        time.tzset()  # the machine's own zone again for the tests after this one
    for where, run_id in chosen.items():
        assert run_id.startswith("20261119-013000-") and len(run_id) == len("20261119-013000-") + 6, (where, run_id)
