"""Team scale: a wide week runs with a bounded fan-out and a ledger pool sized to it."""

from __future__ import annotations

import re
import threading
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from tierflow.core.config import load_config
from tierflow.core.ledger import Ledger, pool_size

SINCE, UNTIL = date(2026, 11, 16), date(2026, 11, 22)


def widen(vault: Path, copies: int) -> int:
    """Add `copies` reading notes to the week (the fixture's notes of that week again, each under its own
    citekey); returns how many notes the week now has."""
    originals = sorted((vault / "Reading").glob("*.md"))
    texts = [t for t in (p.read_text(encoding="utf-8") for p in originals) if "date: 2026-11-" in t]
    for i in range(copies):
        text = re.sub(r"citekey: (\S+)", lambda m, i=i: f"citekey: {m.group(1)}x{i}", texts[i % len(texts)], count=1)
        (vault / "Reading" / f"Copy {i:04d}.md").write_text(text, encoding="utf-8")
    return copies + len(texts)


def set_workers(vault: Path, workers: int) -> None:
    config = vault / ".tierflow" / "config.toml"
    config.write_text(config.read_text(encoding="utf-8") + f"\n[run]\nworkers = {workers}\n", encoding="utf-8")


class PeakConnections:
    """The most connections of an engine's pool checked out at once, from SQLAlchemy's pool events."""

    def __init__(self, engine: sa.Engine) -> None:
        self.now = self.peak = 0
        self._lock = threading.Lock()
        sa.event.listen(engine, "checkout", self._out)
        sa.event.listen(engine, "checkin", self._in)

    def _out(self, *_: object) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def _in(self, *_: object) -> None:
        with self._lock:
            self.now -= 1


@pytest.mark.usefixtures("prefect_harness")
def test_a_wide_week_runs_with_ledger_connections_bounded_by_the_worker_count(reading_vault: Path):
    """The QueuePool crash: a phase submitted every note's task run at once, and all of them competed for the
    ledger's connections (`QueuePool limit of size 5 overflow 10 reached` on a 2,610-note week). With
    `[run] workers = 3`, at most 3 collate task runs are unfinished at once, and the ledger never has more
    connections out than its pool holds."""
    from tierflow.flows.reading_notes import reading_notes

    notes = widen(reading_vault, 150)
    set_workers(reading_vault, 3)
    config = load_config(reading_vault)
    peak = PeakConnections(Ledger(config.ledger_url, workers=3).engine)  # the engine the run's tasks share
    summary = reading_notes(vault=str(reading_vault), since=SINCE, until=UNTIL)
    assert summary.written and not summary.failed and not summary.halted
    rows = Ledger(config.ledger_url).rows(run_id=summary.run_id)
    assert len([r for r in rows if r["phase"] == "collate" and r["attempt"] == 1]) == notes  # every note collated
    assert 0 < peak.peak <= pool_size(3), f"{peak.peak} ledger connections out at once"


def test_the_ledger_pool_is_sized_to_the_worker_count(ledger_url: str):
    """One connection per worker plus a margin, on SQLite and PostgreSQL alike, never the library's 5 + 10."""
    for workers in (1, 8, 40):
        pool = Ledger(ledger_url, workers=workers).engine.pool
        assert pool.size() == pool_size(workers) > workers


def test_workers_are_configured_under_run(tmp_path: Path):
    (tmp_path / ".tierflow").mkdir()
    (tmp_path / ".tierflow" / "config.toml").write_text("", encoding="utf-8")
    assert load_config(tmp_path).settings.run.workers == 16
    set_workers(tmp_path, 2)
    assert load_config(tmp_path).settings.run.workers == 2


def test_a_budget_halt_stops_the_phase_submitting_more(tmp_path: Path, prefect_harness):
    """After a budget halt the phase sends no more task runs; the items left are listed as not done."""
    from prefect import flow, task

    from tierflow.core.calls import RunSettings
    from tierflow.core.errors import BudgetExceeded
    from tierflow.core.phases import fan_out

    (tmp_path / ".tierflow").mkdir()
    (tmp_path / ".tierflow" / "config.toml").write_text('profile = "offline"\n', encoding="utf-8")
    set_workers(tmp_path, 1)
    ran: list[int] = []

    @task
    def item(index):  # noqa: ANN001, ANN202
        ran.append(index)
        if index >= 2:
            raise BudgetExceeded("budget 'run' is spent", budget="run")
        return index

    @flow
    def phase(settings):  # noqa: ANN001, ANN202
        return fan_out(
            item, settings, list(range(8)), phase="collate", complexity="low", subject=str, args=lambda i: (i,)
        )

    outcome = phase(RunSettings(vault=str(tmp_path), run_id="halt", flow="t", profile="offline"))
    assert outcome.results == [0, 1] and outcome.halted == "budget 'run' is spent"
    assert sorted(ran) == [0, 1, 2]  # one worker: nothing was submitted after the halt
    assert [name for name, _ in outcome.skipped] == ["2", "3", "4", "5", "6", "7"]
    assert all(reason == "not done: budget halted the collate phase" for _, reason in outcome.skipped)
