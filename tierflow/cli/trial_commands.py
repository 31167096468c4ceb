"""`tierflow trial`: replay a phase's recorded requests on several tiers and judge them against the strongest.

Registered in `tierflow.cli.app` with `app.command("trial")(trial)`; the logic is in `tierflow.learn.trial`.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer

from tierflow.cli.common import ConfigOpt, ProfileOpt, VaultOpt, fail, vault_dir


class TrialFormat(StrEnum):
    table = "table"
    json = "json"


def trial(
    flow: Annotated[str, typer.Argument(metavar="FLOW", help="The flow whose recorded requests to replay.")],
    phase: Annotated[str, typer.Option("--phase", help="The phase to trial, e.g. draft.")],
    tiers: Annotated[
        str, typer.Option("--tiers", help="Candidate tiers, comma-separated; the strongest is the reference.")
    ] = "light,standard,deep",
    sample: Annotated[int, typer.Option("--sample", min=1, help="How many recorded requests (a fixed sample).")] = 10,
    judge: Annotated[str | None, typer.Option("--judge", help="The judge's tier (default: the strongest).")] = None,
    budget: Annotated[
        float | None, typer.Option("--budget", min=0, help="USD the trial may spend at most (a halt budget).")
    ] = None,
    vault: VaultOpt = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    fmt: Annotated[TrialFormat, typer.Option("--format", "-f", help="table or json.")] = TrialFormat.table,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the sample and worst case; spend nothing.")] = False,
    send_local_data: Annotated[
        bool,
        typer.Option("--send-local-data", help="Let requests first answered by a local model go to cloud tiers."),
    ] = False,
) -> None:
    """Replay recorded requests of a phase on each tier, judge them pairwise, and write a trial report note."""
    from tierflow.cli.app import _quiet_prefect

    _quiet_prefect(False)  # the artifact's one-step flow run logs warnings only; before anything imports Prefect
    from tierflow.core.errors import TierflowError
    from tierflow.learn.trial import create_artifact, plan_trial, run_trial, trial_caller, write_report

    vault = vault_dir(vault, required=f"tierflow trial {flow} --phase PHASE")
    assert vault is not None
    names = [t.strip() for t in tiers.split(",") if t.strip()]
    try:
        caller = trial_caller(vault, flow, config_path=config, profile=profile, budget_usd=budget)
        planned = plan_trial(
            caller, flow, phase, names, sample=sample, judge=judge, budget_usd=budget, send_local_data=send_local_data
        )
    except TierflowError as exc:
        raise fail(str(exc)) from None
    _print_worst_case(planned)
    if dry_run:
        return
    try:
        result = run_trial(caller, planned)
        written = write_report(result, vault, caller.config)
    except TierflowError as exc:
        raise fail(str(exc), 1) from None
    try:
        result.artifact = create_artifact(result)
    except Exception as exc:  # the note holds the same table; an unreachable server must not lose the trial
        result.artifact = f"no artifact: {exc}"
    if fmt is TrialFormat.json:
        typer.echo(json.dumps({**result.as_json(), "note": written.path, "artifact": result.artifact}, indent=2))
    else:
        _print_table(result)
        typer.echo(f"{written.action}: {vault / written.path}")
        typer.echo(result.artifact)
    if result.halted:
        typer.echo(result.halted, err=True)
        raise typer.Exit(3)


def _print_worst_case(planned) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    from tierflow.report.console import show

    def money(value) -> str:  # noqa: ANN001
        return "unknown (no price)" if value is None else f"${value:.4f}"

    table = Table(
        title=f"Trial of {planned.flow} {planned.phase}: {len(planned.samples)} recorded requests, worst case",
        title_justify="left",
    )
    for column in ("calls of", "model", "worst-case USD"):
        table.add_column(column)
    for tier in planned.tiers:
        table.add_row(tier, planned.results[tier].model, money(planned.worst_usd[tier]))
    table.add_row(f"judge ({planned.judge})", planned.judge_result.model, money(planned.worst_usd["judge"]))
    table.add_row("total", "", money(planned.worst_total_usd))
    console = Console(stderr=True)
    show(console, table)
    limit = (
        f"The trial stops before any call that could take its spend past ${planned.budget_usd:.4f}"
        if planned.budget_usd is not None
        else "No --budget: the config's own budgets apply"
    )
    console.print(
        f"Every prompt token billed, every output limit used, one retry each; the actual trial costs less. {limit}.",
        highlight=False,
    )


def _print_table(result) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    from tierflow.report.console import show

    table = Table(title=f"Trial {result.run_id}: against {result.reference}, judged by {result.judge}")
    columns = ("tier", "model", "requests", "calls", "USD", "check pass", "wins", "ties", "losses", "median ms")
    for column in columns:
        table.add_column(column)
    for r in result.table():
        table.add_row(
            r["tier"],
            r["model"],
            str(r["requests"]),
            str(r["calls"]),
            f"{r['cost_usd']:.6f}" + (f" (+{r['unpriced_calls']} unpriced)" if r["unpriced_calls"] else ""),
            "-" if r["check_pass_rate"] is None else f"{r['check_pass_rate']:.0%}",
            *("-" if r[k] is None else str(r[k]) for k in ("wins", "ties", "losses")),
            "-" if r["median_latency_ms"] is None else f"{r['median_latency_ms']:.0f}",
        )
    show(Console(), table)
