"""Running flows from the command line: a progress display per phase, then what was written and its cost."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from datetime import date
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tierflow.core import progress
from tierflow.report.console import show
from tierflow.report.spend import money

console = Console(stderr=True, soft_wrap=True)

DEMO_WEEK = (date(2026, 11, 16), date(2026, 11, 22))
"""The week the bundled reading-week vault was read in."""


@contextmanager
def phase_progress():  # noqa: ANN201
    """A progress bar per phase, fed by the flow's progress events."""
    bars = Progress(
        TextColumn("[bold]{task.description:<11}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[subject]}", style="dim"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def on_progress(phase: str, done: int, total: int, subject: str) -> None:
        if phase not in tasks:
            tasks[phase] = bars.add_task(phase, total=total, subject="")
        bars.update(tasks[phase], completed=done, total=total, subject=subject[:40])

    remove = progress.listen(on_progress)
    with bars:
        try:
            yield
        finally:
            remove()


def run_flow(
    flow: str,
    vault: Path,
    *,
    profile: str | None = None,
    config: Path | str | None = None,
    tier: dict[str, str] | None = None,
    task_runner: Any = None,
    **parameters: Any,
) -> Any:
    """Run a flow in this process with progress bars, then print what it wrote and what it cost."""
    from tierflow.core.registry import flow_spec

    entry = flow_spec(flow).flow
    if task_runner is not None:
        entry = entry.with_options(task_runner=task_runner)
    with phase_progress():
        summary = entry(
            vault=str(vault), profile=profile, config=str(config) if config else None, tier=tier or {}, **parameters
        )
    print_summary(vault, summary)
    return summary


def print_summary(vault: Path, summary: Any) -> None:
    out = Console(soft_wrap=True)
    if summary.message:
        out.print(summary.message)
    if summary.phases:
        table = Table(title=f"Spend of run {summary.run_id}")
        columns = ("phase", "tier", "model", "calls", "tokens", "USD", "all-deep USD", "saved")
        for col in columns:
            table.add_column(col, justify="left" if col in ("phase", "tier", "model") else "right")
        for p in summary.phases:
            table.add_row(*(str(p[col]) for col in columns))
        show(out, table)
    for w in summary.written:
        out.print(f"  [green]{w.action:>14}[/]  {vault / w.path}" + (f"\n{'':16}{w.message}" if w.message else ""))
    for path, reason in summary.skipped:
        out.print(f"  [yellow]{'skipped':>14}[/]  {path}: {reason}")
    if summary.report is not None:
        out.print(f"  [cyan]{'run report':>14}[/]  {vault / summary.report.path}")
    out.print(f"Total: {summary.tokens} tokens, {money(summary.cost_usd)}.")
    for batch in getattr(summary, "batches", []):
        out.print(f"  [cyan]{'batch':>14}[/]  {batch}")
    if summary.halted:
        console.print(f"[bold red]stopped early:[/] {summary.halted}")
    if summary.failed:
        console.print(f"[bold red]failed:[/] {summary.failed}")


def copy_demo_vault(folder: Path | None) -> Path:
    """A fresh copy of the bundled reading-week vault."""
    target = Path(tempfile.mkdtemp(prefix="tierflow-demo-")) / "reading-week" if folder is None else folder
    if target.exists() and any(target.iterdir()):
        raise SystemExit(f"error: {target} is not empty. Give an empty or new folder for the demo vault.")
    with as_file(files("tierflow.vault_fixtures") / "reading-week") as source:
        shutil.copytree(source, target, dirs_exist_ok=True)
    return target


def run_demo(folder: Path | None) -> Path:
    vault = copy_demo_vault(folder)
    console.print(f"Demo vault: [bold]{vault}[/] (a copy of vault_fixtures/reading-week)")
    console.print("Model: tierflow's offline extractive model, so no keys and no network. Output is labelled as such.")
    run_flow("reading-notes", vault, since=DEMO_WEEK[0], until=DEMO_WEEK[1], profile="offline")
    console.print(
        f"\nOpen [bold]{vault}[/] in Obsidian and look in Concepts/Drafts/ and tierflow/Runs/.\n"
        f"The spend ledger: tierflow spend --vault {vault} --by phase"
    )
    return vault
