"""`tierflow spend --watch`: a terminal dashboard of spend, redrawn from the ledger every few seconds.

It reads only the ledger, so it shows the calls of every process and machine that shares it (SQLite under WAL,
or PostgreSQL): each budget's bar (spent, reserved, limit), the calls in flight (open budget reservations), and
spend by model, phase and project over the current period. Times are in the vault's time zone.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tierflow.core import clock
from tierflow.core.budget import Budgets, BudgetState
from tierflow.core.config import BudgetConfig, Config
from tierflow.core.ledger import Ledger, LedgerChanged
from tierflow.report.spend import Spend, bar, ledger_spend, ledger_total, money

BAR = 30


def period_start(config: Config, ledger: Ledger, period: str) -> str:
    """The start of the current day, week or month in the vault's time zone (UTC ISO), as budgets count it."""
    budgets = Budgets(config, ledger, run_id="", flow="")
    return budgets.period_start(BudgetConfig(period=period, tokens=0)) or ""


def _totals(groups: list[Spend], whole: Spend, by: str, title: str) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for col in (by, "calls", "tokens", "USD"):
        table.add_column(col, justify="left" if col == by else "right", overflow="fold")
    groups = sorted(groups, key=lambda s: -s.cost_usd)
    for g in groups:
        table.add_row(g.key or "(none)", str(g.billed), str(g.tokens), money(g.cost_usd))
    if groups:
        table.add_row("total", str(whole.billed), str(whole.tokens), money(whole.cost_usd), style="bold")
    return table


def _budget_line(s: BudgetState) -> Text:
    if s.limit_usd is not None:
        spent, held, limit = s.spent_usd, s.reserved_usd, s.limit_usd
        figures = f"{money(spent)} spent + {money(held)} reserved of {money(limit)}"
    else:
        spent, held, limit = float(s.spent_tokens), float(s.reserved_tokens), float(s.limit_tokens or 0)
        figures = f"{int(spent)} spent + {int(held)} reserved of {int(limit)} tokens"
    used = bar(spent / limit, BAR) if limit else ""
    reserved = "░" * round(min(held / limit, 1 - min(spent / limit, 1)) * BAR) if limit else ""
    line = Text(f"{s.name:<16} ")
    line.append(used, style="red" if limit and spent + held > limit else "green")
    line.append(reserved, style="yellow")
    line.append(" " * max(BAR - len(used) - len(reserved), 0) + f"  {figures}  ({s.scope})")
    return line


def _header(config: Config, start: str, calls: int) -> Text:
    """The frame's first line: the period's start and the time of the frame, both in the vault's time zone (in
    which budgets count their periods), each with the zone's abbreviation."""
    zone = ZoneInfo(config.settings.vault.timezone)
    begun = datetime.fromisoformat(start)
    if begun.tzinfo is None:  # a `--since` day, compared with the ledger's UTC timestamps
        begun = begun.replace(tzinfo=UTC)
    since = begun.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
    now = clock.now().astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")
    return Text(f"Spend: {calls} calls since {since} · as of {now}", style="bold")


def dashboard(config: Config, ledger: Ledger, *, period: str = "week", since: str | None = None) -> Group:
    """One frame of the dashboard, read fresh from the ledger: the budgets and the calls in flight first, so that
    a short terminal, which shows a frame's first lines only, still shows them; then the spend by model, phase
    and project."""
    start = since or period_start(config, ledger, period)
    # Added up by the database: a frame costs the same on a year's ledger as on a week's.
    whole = ledger_total(ledger, since=start)
    flying = ledger.in_flight()
    budgets = Budgets(config, ledger, run_id="", flow="").states()
    zone = config.settings.vault.timezone
    parts: list[Any] = [
        _header(config, start, whole.billed),  # billed calls, as `tierflow spend` counts them
        Text(f"Budgets (periods and times in {zone}, the vault's time zone)", style="bold"),
    ]
    parts += [_budget_line(s) for s in budgets] or [Text("  none configured")]
    parts.append(Text(f"In flight: {len(flying)} calls", style="bold"))
    for f in flying[:10]:
        parts.append(Text(f"  {f['flow'] or ''} · {f['phase'] or ''} · run {f['run_id']} · up to {money(f['usd'])}"))
    parts += [
        _totals(ledger_spend(ledger, "model", since=start), whole, "model", "By model"),
        _totals(ledger_spend(ledger, "phase", since=start), whole, "phase", "By phase"),
        _totals(ledger_spend(ledger, "project", since=start), whole, "project", "By project"),
        Text("Ctrl-C to stop.", style="dim"),
    ]
    return Group(*parts)


def _fresh(config: Config, ledger: Ledger, period: str, since: str | None) -> Group | None:
    """The next frame; None if writers wrote into a read-only SQLite ledger under each try of one of its reads
    (`Ledger.read`), which the next refresh reads again."""
    try:
        return dashboard(config, ledger, period=period, since=since)
    except LedgerChanged:
        return None


def watch(config: Config, ledger: Ledger, *, interval: float = 2.0, period: str = "week", since: str | None = None):
    """Redraw the dashboard every `interval` seconds until interrupted."""
    console = Console()
    try:
        if not console.is_terminal:
            # A pipe or a file (`| tee spend.log`): each redraw printed whole and flushed as it comes, not one
            # frame when the watch ends (Live's way off a terminal), which a SIGTERM never reaches.
            while True:
                if (frame := _fresh(config, ledger, period, since)) is not None:
                    console.print(frame)
                    console.print()
                    console.file.flush()
                time.sleep(interval)
        with Live(dashboard(config, ledger, period=period, since=since), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                if (frame := _fresh(config, ledger, period, since)) is not None:
                    live.update(frame, refresh=True)
    except KeyboardInterrupt:
        pass
