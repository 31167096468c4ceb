"""`tierflow`: run flows, ask a tier, plan and report spend. Heavy imports wait until a command runs."""

from __future__ import annotations

import codecs
import csv
import inspect
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from tierflow.cli.common import (
    ConfigOpt,
    FlowHelp,
    ProfileOpt,
    VaultOpt,
    argument_text,
    check_assignment,
    check_module,
    csv_stdout,
    fail,
    load,
    locale_problem,
    parse_params,
    prefect_logs_follow_sys_streams,
    vault_dir,
)
from tierflow.cli.config_commands import config_check
from tierflow.cli.lms_commands import export_app, import_app
from tierflow.cli.ops_commands import limits_app, schedule_app
from tierflow.cli.routing_commands import routing_app
from tierflow.cli.rubric_commands import rubric_app
from tierflow.cli.trial_commands import trial
from tierflow.core.errors import ConfigError, LedgerError, NoLedger
from tierflow.core.urls import masked_url

if TYPE_CHECKING:
    from tierflow.core.config import Config
    from tierflow.core.ledger import Ledger
    from tierflow.core.registry import FlowSpec

app = typer.Typer(
    help="Tier-routed Prefect flows for academic knowledge work, with exact token spend.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Help is plain text: Rich markup would swallow config names such as [vault] or [tiers.<name>].
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
config_app.command("check")(config_check)
app.add_typer(schedule_app, name="schedule")
app.add_typer(limits_app, name="limits")
app.add_typer(rubric_app, name="rubric")
app.add_typer(routing_app, name="routing")
app.add_typer(import_app, name="import")
app.add_typer(export_app, name="export")
app.command("trial")(trial)
budget_app = typer.Typer(help="Budget reservations held in the ledger.", no_args_is_help=True)
app.add_typer(budget_app, name="budget")


@app.callback()
def _every_command(ctx: typer.Context) -> None:
    # Run twice in one process, a command must not log to the first one's stderr, closed when it returned.
    ctx.call_on_close(prefect_logs_follow_sys_streams)


TABLE_LAST = 50
"""Calls `tierflow spend` lists as a table by default: the newest, as a terminal can show them (`--last 0`: all)."""

TierOpt = Annotated[
    list[str] | None,
    typer.Option("--tier", "-t", help="Override a phase's tier, as PHASE=TIER (repeatable)."),
]

FlowParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        metavar="NAME=VALUE",
        help="A parameter of the flow's own, one no option here gives (a registered flow's, such as "
        "--param folder=Reading; for a flow of another package also one named as an option made for tierflow's "
        "flows, such as --param mode=strict); VALUE is read as the flow's signature types the parameter: as typed "
        "for a str (folder=2024 is the text 2024), parsed for an int, bool, date, list or dict (n=3, day=2026-11-16, "
        'tags=["a"]), as `tierflow schedule --param` reads it. Repeatable. A name the flow does not take, a '
        "parameter an option gives (--param vault=...) or a value its type refuses is an error. With FLOW, --help "
        "ends with the flow's parameters.",
    ),
]


class Complexity(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"


class GroupBy(StrEnum):
    phase = "phase"
    tier = "tier"
    model = "model"
    flow = "flow"
    day = "day"
    week = "week"
    month = "month"
    run = "run"
    project = "project"
    deployment = "deployment"
    value = "value"


class Format(StrEnum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    otel = "otel"


@app.command()
def ask(
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    complexity: Annotated[
        Complexity | None,
        typer.Option(help="Routed through the config's routing table. Without it (or --tier), tierflow classifies."),
    ] = None,
    tier: Annotated[str | None, typer.Option("--tier", help="Use this tier, bypassing routing.")] = None,
    phase: Annotated[str, typer.Option(help="Phase name recorded in the ledger.")] = "ask",
    system: Annotated[str, typer.Option(help="System prompt.")] = "You are a careful academic assistant.",
    project: Annotated[
        str | None, typer.Option(help="Charge the call to this project (default: the config's [project] name).")
    ] = None,
    vault: VaultOpt = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Route one prompt to a tier, print the answer, and record the call in the ledger."""
    from rich.markup import escape

    from tierflow.cli.runner import console, interrupted_ask_message, interrupted_code, stopped_by_interrupt
    from tierflow.core.calls import Caller, RunSettings, new_run_id
    from tierflow.core.errors import TierflowError
    from tierflow.report.spend import ledger_total

    vault = vault_dir(vault)
    cfg = load(vault, config, profile)
    prompt, system = argument_text(prompt, "the prompt"), argument_text(system, "--system")
    settings = RunSettings(
        vault=str(vault) if vault else None,
        config_path=str(config) if config else None,
        profile=profile,
        tier_overrides={"*": tier} if tier else {},
        run_id=new_run_id(cfg.settings.vault.timezone),
        flow="ask",
        use_cache=False,
        project=cfg.project_for(explicit=project),
    )
    if vault is None and not cfg.settings.ledger_url:
        raise fail("no ledger to record the call in: give --vault DIR, or set ledger_url in a --config file.")
    caller = None
    try:
        # A second Ctrl-C, while the interrupted call is being recorded, stops at once.
        with stopped_by_interrupt():
            caller = Caller(settings, cfg)
            level = complexity.value if complexity else "low"
            # A complexity the person chose is routed by the rules: learned routing never overrides it.
            routed = caller.route(phase, level, adaptive=False) if complexity else None
            if complexity is None:
                from dataclasses import replace

                from tierflow.learn.complexity import classify

                decision = classify(prompt, caller.ledger)
                level = decision.complexity
                # The per-request router decides on the prompt, as the ledger keeps it and `routing explain` reads it;
                # routed as a flow's call is (`build`), so a prompt too long for the router's tier goes where it fits.
                routed, _ = caller.build(phase=phase, complexity=level, system=system, prompt=prompt)
                routed = replace(routed, rule=f"{decision.rule}; {routed.rule}")
            subject = " ".join(prompt.split())[:120]
            answer = caller.ask(
                phase=phase, complexity=level, system=system, prompt=prompt, routed=routed, subject=subject
            )
    except TierflowError as exc:
        raise fail(str(exc), 1) from None
    except KeyboardInterrupt:
        said = interrupted_ask_message(caller.ledger if caller else None, settings.run_id)
        console.print(f"[bold yellow]{escape(said)}")
        raise typer.Exit(interrupted_code()) from None
    typer.echo(answer.text)
    u = answer.usage
    cost = "unknown cost" if answer.cost_usd is None else f"${answer.cost_usd:.6f}"
    # What the ask spent: a retry of a cut-off answer, a check's escalation and a downgrade are billed calls too.
    spent = ledger_total(caller.ledger, run_id=settings.run_id)
    spent_usd = "unknown cost" if spent.cost_or_none is None else f"${spent.cost_usd:.6f}"
    calls = f"{spent.billed} call" + ("" if spent.billed == 1 else "s")
    usage = (
        "unknown usage"
        if not u.known
        else (
            f"{u.input_tokens} in, {u.output_tokens} out, {u.cache_read_tokens} cache-read, "
            f"{u.cache_write_tokens} cache-write, {u.reasoning_tokens} reasoning"
        )
    )
    typer.echo(
        f"[{answer.route.tier} -> {answer.route.model_ref} via {answer.route.rule}] {usage}; "
        f"this answer {cost}; this ask {spent_usd} over {calls}",
        err=True,
    )


@app.command()
def spend(
    vault: VaultOpt = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    by: Annotated[GroupBy | None, typer.Option("--by", help="Group rows and total them.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only calls on or after this date (YYYY-MM-DD), from its midnight in the vault's time zone."),
    ] = None,
    run: Annotated[str | None, typer.Option("--run", help="Only this run id.")] = None,
    project: Annotated[str | None, typer.Option("--project", help="Only calls charged to this project.")] = None,
    fmt: Annotated[
        Format,
        typer.Option(
            "--format",
            "-f",
            help="table; json (one JSON array); jsonl (one JSON object a line); csv; "
            "otel (JSON Lines, OpenTelemetry GenAI attribute names).",
        ),
    ] = Format.table,
    budget: Annotated[
        bool,
        typer.Option(
            "--budget",
            help="Show each budget for its current period, with its projected end-of-period use and run-out date.",
        ),
    ] = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="A live dashboard, redrawn from the ledger: spend by model, phase and project this period, "
            "budgets and calls in flight. Ctrl-C stops it.",
        ),
    ] = False,
    last: Annotated[
        int | None,
        typer.Option(
            "--last",
            min=0,
            metavar="N",
            help="List only the newest N calls (default: 50 in the table, every call in json, jsonl, csv and "
            "otel); 0 lists every call.",
            show_default=False,
        ),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option("--interval", help="With --watch: seconds between redraws (default: 2).", show_default=False),
    ] = None,
    period: Annotated[
        str | None,
        typer.Option(
            "--period",
            help="With --watch: day, week (the default) or month, in the vault's time zone.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Report spend from the ledger: per call, or grouped by phase, tier, model, flow, day, week, month, run, project,
    deployment or value (days, weeks from Monday and months in the vault's time zone, as budgets count them)."""
    from zoneinfo import ZoneInfo

    from tierflow.core.ledger import COLUMNS, LISTING_PROCESSES, Ledger, period_start
    from tierflow.report.spend import PERIODS, ledger_summary

    _check_spend_options(budget=budget, watch=watch, by=by, last=last, fmt=fmt, since=since, run=run, project=project)
    unwatched = [f"--{name}" for name, value in (("interval", interval), ("period", period)) if value is not None]
    if unwatched and not watch:  # without --watch it would be ignored without a word
        raise fail(f"{unwatched[0]} goes with --watch (the live dashboard): add --watch, or leave {unwatched[0]} out")
    vault = vault_dir(vault)
    cfg = load(vault, config, profile)
    zone = ZoneInfo(cfg.settings.vault.timezone)
    # Compared with the ledger's UTC ISO timestamps as text: the day (a compact or week date, `20261204`,
    # `2026-W49-1`, too) starts at its midnight in the vault's time zone, where `--by day` and the budgets start it.
    day = _parse_date(since, "--since")
    since = period_start("day", zone, datetime.combine(day, time(12), zone)) if day else None
    try:
        # Reading only: a ledger shared read-only (a read-only folder, mount or database role) is reported all the same.
        ledger = Ledger(cfg.ledger_url, reading=True)
    except ConfigError as exc:  # it names the missing vault; a ledger that cannot be opened is `main`'s to report
        raise fail(str(exc)) from None
    except NoLedger as exc:
        if not watch:
            raise
        # A dashboard opened before the vault's first run (to watch it): it waits for the ledger, making none.
        found = _first_ledger(cfg.ledger_url, str(exc), 2.0 if interval is None else interval)
        if found is None:
            return
        ledger = found
    if budget:
        _print_budgets(cfg, ledger, fmt)
        return
    if watch:
        period = period or "week"
        if period not in ("day", "week", "month"):
            raise fail(f"--period {period!r}: use day, week or month")
        from tierflow.report.watch import watch as live

        live(cfg, ledger, interval=2.0 if interval is None else interval, period=period, since=since)
        return
    # Totals are added up by the database; rows are listed as they are read, never all held at once.
    filters = {"since": since, "run_id": run, "project": project}
    group = None if by is None else ("run_id" if by is GroupBy.run else by.value)
    periods = {"tz": zone} if group in PERIODS else {}
    if group is not None and last is not None:
        raise fail("--last lists calls; --by adds them up. Use one of them.")
    if last == 0:
        last = None
    elif last is None and fmt is Format.table and group is None:
        last = TABLE_LAST
    out = sys.stdout
    if fmt in (Format.json, Format.jsonl) and group is None:
        _write_json_text(
            ledger.stream_json(between=_BETWEEN[fmt], last=last, processes=LISTING_PROCESSES, **filters), fmt
        )
    elif fmt in (Format.json, Format.jsonl):
        _write_json(ledger_summary(ledger, group, **filters, **periods), fmt)
    elif fmt is Format.csv:
        if group is None:
            data = ledger.stream_rows(last=last, **filters)
        else:
            data = iter(ledger_summary(ledger, group, **filters, **periods))
        first = next(data, None)
        fields = list(COLUMNS) if group is None else list(first) if first else [group]
        writer = csv.DictWriter(csv_stdout(), fieldnames=fields)
        writer.writeheader()
        if first is not None:
            writer.writerow(first)
        writer.writerows(data)
    elif fmt is Format.otel:
        from tierflow.report.spend import otel_record

        for row in ledger.stream_rows(last=last, **filters):
            out.write(json.dumps(otel_record(row)) + "\n")
    else:
        from rich.console import Console

        from tierflow.report.console import show
        from tierflow.report.spend import SPEND_OPTIONAL, ledger_spend, spend_table

        if group is None:
            rows = ledger.rows(last=last, **filters)
            shown = len(rows) if last is None or len(rows) < last else ledger.count_calls(**filters)
            show(Console(), spend_table(rows, None, of=shown, tz=zone), optional=SPEND_OPTIONAL)
        else:
            table = spend_table([], group, groups=ledger_spend(ledger, group, **filters, **periods))
            show(Console(), table, optional=SPEND_OPTIONAL)
    _hint_unmatched(ledger, run=run, project=project)


def _hint_unmatched(ledger: Ledger, *, run: str | None, project: str | None) -> None:
    """On stderr, after the (empty) report: a `--run` or `--project` no call in the ledger has, with the nearest
    one it does have, so a typo or a project's case (`edu7001` for `EDU7001`) is not taken for no spend."""
    import difflib

    from rich.console import Console
    from rich.markup import escape

    from tierflow.report.spend import ledger_summary

    for option, value, key in (("--run", run, "run_id"), ("--project", project, "project")):
        if value is None or ledger.count_calls(**{key: value}):
            continue
        known = [str(row[key]) for row in ledger_summary(ledger, key) if row[key]]
        same_case = [k for k in known if k.casefold() == value.casefold()]
        close = same_case or difflib.get_close_matches(value, known, n=1)
        by = key.removesuffix("_id")
        hint = f"; did you mean {option} {close[0]}?" if close else f" (`tierflow spend --by {by}` lists those it has)"
        Console(stderr=True, soft_wrap=True).print(
            f"note: no call in the ledger has {option} {escape(value)}{escape(hint)}", highlight=False
        )


def _check_spend_options(
    *,
    budget: bool,
    watch: bool,
    by: GroupBy | None,
    last: int | None,
    fmt: Format,
    since: str | None = None,
    run: str | None = None,
    project: str | None = None,
) -> None:
    """Options that show different things cannot be combined: one of them would be silently ignored."""
    given = {
        "--budget": budget,
        "--watch": watch,
        f"--by {by.value if by else ''}": by is not None,
        f"--last {last}": last is not None,
    }
    shown = [option for option, on in given.items() if on]
    for mode in ("--budget", "--watch"):
        others = [option for option in shown if option != mode]
        if mode in shown and others:
            raise fail(f"{mode} cannot be combined with {others[0]}: {mode} shows {SHOWS[mode]}. Use one of them.")
    filters = [f"--{name}" for name, value in (("since", since), ("run", run), ("project", project)) if value]
    if budget and filters:
        raise fail(
            f"--budget cannot be combined with {filters[0]}: --budget shows each budget's current period, whichever "
            f"calls it counts, and {filters[0]} picks calls. Use one of them (with `--by phase`, {filters[0]} adds up "
            "the calls it picks)."
        )
    if watch and fmt is not Format.table:
        raise fail(f"--watch cannot be combined with --format {fmt.value}: --watch is a live table on the console.")
    if budget and fmt is Format.otel:
        raise fail(
            "--budget cannot be combined with --format otel: otel writes calls as OpenTelemetry spans, and a "
            "budget is not a call. Use --format table, json, jsonl or csv."
        )


SHOWS = {
    "--budget": "each budget's current period, not calls",
    "--watch": "a live dashboard of its own",
}


def _write_json(records: Iterable[dict], fmt: Format) -> None:
    """`json`: one document, an array (written as the records come, laid out as `json.dump(indent=2)` would);
    `jsonl`: one object a line."""
    if fmt is Format.json:
        sys.stdout.write("[")
        empty = True
        for record in records:
            sys.stdout.write(("\n  " if empty else ",\n  ") + _indented(record))
            empty = False
        sys.stdout.write("]\n" if empty else "\n]\n")
    else:
        for record in records:
            sys.stdout.write(json.dumps(record) + "\n")


_BETWEEN = {Format.json: ",\n", Format.jsonl: "\n"}
"""What goes between two calls of a listing (`Ledger.stream_json`): in `json`, one call a line of the array."""


def _write_json_text(pieces: Iterable[str], fmt: Format) -> None:
    """A listing of calls already written as JSON text (`Ledger.stream_json`), a piece of many at a time: `json`
    as one array with a call on each line, `jsonl` as a call a line. Text is written as UTF-8, as JSON is
    exchanged, or with `\\u` escapes where the output is not UTF-8 (a console's code page)."""
    out = sys.stdout
    if codecs.lookup(getattr(out, "encoding", None) or "utf-8").name != "utf-8":
        pieces = (piece if piece.isascii() else _NON_ASCII.sub(_escaped, piece) for piece in pieces)
    # A piece is megabytes: written as it is, never copied to add a separator.
    if fmt is Format.json:
        out.write("[")
        empty = True
        for piece in pieces:
            out.write("\n" if empty else ",\n")
            out.write(piece)
            empty = False
        out.write("]\n" if empty else "\n]\n")
    else:
        for piece in pieces:
            out.write(piece)
            out.write("\n")


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def _escaped(run: re.Match[str]) -> str:
    """Non-ASCII characters as JSON's `\\u` escapes: they only stand inside a listing's strings."""
    return json.encoder.encode_basestring_ascii(run.group())[1:-1]  # type: ignore[attr-defined]


_json_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _json_scalar(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _json_string(value)
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return repr(value)
    return json.dumps(value)


def _indented(record: dict) -> str:
    """A flat record as an element of `json.dump(records, indent=2)`, character for character, without the pure-Python
    encoder that `indent` selects (several times slower on a large listing)."""
    if not record or any(isinstance(v, dict | list | tuple) for v in record.values()):
        return json.dumps(record, indent=2).replace("\n", "\n  ")
    body = ",\n    ".join(f"{_json_string(str(k))}: {_json_scalar(v)}" for k, v in record.items())
    return "{\n    " + body + "\n  }"


BUDGET_FIELDS = (
    "budget", "scope", "policy", "limit_usd", "spent_usd", "reserved_usd", "remaining_usd",
    "limit_tokens", "spent_tokens", "reserved_tokens", "remaining_tokens",
    "period_end", "projected_usd", "projected_tokens", "runs_out",
)  # fmt: skip
"""The fields of `tierflow spend --budget` in json, jsonl and csv, in their order."""


def _first_ledger(url: str, said: str, interval: float) -> Ledger | None:
    """`spend --watch` on a vault with no ledger yet: says so on stderr and waits, making none, until a run makes
    it; the ledger, or None if Ctrl-C ended the wait (as it ends the watch: quietly)."""
    import time as clock

    from tierflow.core.ledger import Ledger

    typer.echo(f"{said}. The watch waits for it (Ctrl-C stops).", err=True)
    try:
        while True:
            clock.sleep(interval)
            try:
                return Ledger(url, reading=True)
            except NoLedger:
                continue
    except KeyboardInterrupt:
        return None


def _print_budgets(cfg, ledger, fmt: Format) -> None:  # noqa: ANN001
    from zoneinfo import ZoneInfo

    from tierflow.core import clock
    from tierflow.core.budget import Budgets

    now = clock.now()
    budgets = Budgets(cfg, ledger, run_id="", flow="")
    states = budgets.states(now=now)
    forecasts = {f.state.name: f for f in budgets.forecasts(now)}
    if fmt in (Format.json, Format.jsonl, Format.csv):
        records = []
        for s in states:
            f = forecasts.get(s.name)
            records.append(
                {
                    "budget": s.name,
                    "scope": s.scope,
                    "policy": s.policy,
                    "limit_usd": s.limit_usd,
                    "spent_usd": s.spent_usd,
                    "reserved_usd": s.reserved_usd,
                    "remaining_usd": s.remaining_usd,
                    "limit_tokens": s.limit_tokens,
                    "spent_tokens": s.spent_tokens,
                    "reserved_tokens": s.reserved_tokens,
                    "remaining_tokens": s.remaining_tokens,
                    "period_end": f.period_end.isoformat() if f else None,
                    "projected_usd": f.projected_usd if f else None,
                    "projected_tokens": f.projected_tokens if f else None,
                    "runs_out": f.runs_out.isoformat() if f and f.runs_out else None,
                }
            )
        if fmt is Format.csv:
            writer = csv.DictWriter(csv_stdout(), fieldnames=BUDGET_FIELDS)  # the header even when there is none
            writer.writeheader()
            writer.writerows(records)
        else:
            _write_json(records, fmt)
        return
    from rich.console import Console
    from rich.table import Table

    from tierflow.report.console import show

    if not states:
        print("No budgets are configured. Add a [budgets.<name>] table to the config.")
        return
    tz = ZoneInfo(cfg.settings.vault.timezone)

    def runs_out(name: str) -> str:
        f = forecasts.get(name)
        if f is None:
            return "n/a (per run)"
        return f.runs_out.astimezone(tz).strftime("%a %Y-%m-%d %H:%M") if f.runs_out else "not this period"

    table = Table(title=f"Budgets (current period; projections at the rate so far, {cfg.settings.vault.timezone})")
    for col in ("budget", "scope", "policy", "limit", "spent", "reserved", "remaining", "projected", "runs out"):
        table.add_column(col)
    for s in states:
        f = forecasts.get(s.name)
        if s.limit_usd is not None:
            projected = f"${f.projected_usd:.4f}" if f and f.projected_usd is not None else "n/a"
            table.add_row(
                s.name,
                s.scope,
                s.policy,
                f"${s.limit_usd:.4f}",
                f"${s.spent_usd:.4f}",
                f"${s.reserved_usd:.4f}",
                f"${s.remaining_usd:.4f}",
                projected,
                runs_out(s.name),
            )
        if s.limit_tokens is not None:
            projected = f"{f.projected_tokens} tok" if f and f.projected_tokens is not None else "n/a"
            table.add_row(
                s.name,
                s.scope,
                s.policy,
                f"{s.limit_tokens} tok",
                f"{s.spent_tokens} tok",
                f"{s.reserved_tokens} tok",
                f"{s.remaining_tokens} tok",
                projected,
                runs_out(s.name),
            )
    show(Console(), table)


def _registered_flow(value: str) -> str:
    """The FLOW argument: a flow registered under the `tierflow.flows` entry points, built in or a package's."""
    from tierflow.core.registry import flow_names

    names = flow_names()
    if value not in names:
        by_file = ""
        if value.endswith(".py") or ".py:" in value or "/" in value:  # `my_flow.py:my_flow`, as `prefect deploy` takes
            by_file = (
                " A flow is run by the name it is registered under, not by its file: register yours with a "
                '[project.entry-points."tierflow.flows"] entry in its package\'s pyproject.toml, '
                'NAME = "my_package.my_module:SPEC" (docs/your-own-flow.md), install the package, then '
                "tierflow run NAME."
            )
        raise typer.BadParameter(
            f"{value!r} is not a registered flow; the flows are: {', '.join(names) or 'none'}.{by_file}"
        )
    return value


class _FlowCommand(FlowHelp, TyperCommand):
    """A command taking FLOW, whose help lists the registered flows when it is shown (not at every start), and
    with a FLOW (`tierflow run FLOW --help`) that flow's parameters (`FlowHelp`)."""

    own_options = True

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        # `--help` is handled before FLOW is read: the FLOW given, read here, is what the help describes.
        import click

        try:
            opts, _, _ = self.make_parser(ctx).parse_args(args=list(args))
        except click.UsageError:
            opts = {}
        ctx.meta[_HELP_FLOW] = opts.get("flow_name")
        return super().parse_args(ctx, args)

    def help_flow(self, ctx: typer.Context) -> str | None:
        from tierflow.core.registry import flow_names

        flow = ctx.meta.get(_HELP_FLOW)
        return flow if flow in flow_names() else None

    def format_help(self, ctx: typer.Context, formatter: object) -> None:  # type: ignore[override]
        from tierflow.core.registry import flow_names

        for param in self.params:
            if param.name == "flow_name":
                param.help = f"A registered flow: {', '.join(flow_names())}."  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)  # type: ignore[arg-type]


_HELP_FLOW = "tierflow.help_flow"


class _PlanCommand(_FlowCommand):
    planned = True


FlowArg = Annotated[
    str,
    typer.Argument(
        metavar="FLOW",
        help="A registered flow (the tierflow.flows entry points).",
        callback=_registered_flow,
        show_default=False,
    ),
]


def _parse_date(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise fail(f"{option} {value!r} is not a date; write it as YYYY-MM-DD") from None


def _quiet_prefect(verbose: bool) -> None:
    """Keep Prefect's console logging to warnings so the progress display stays readable.

    Prefect reads these settings once, when it is first imported (`prefect.main` sets up its logging): a command
    calls this before anything imports Prefect, such as loading a flow (`flow_spec`)."""
    if not verbose:
        for handler in ("CONSOLE", "CONSOLE_FLOW_RUNS", "CONSOLE_TASK_RUNS"):
            os.environ.setdefault(f"PREFECT_LOGGING_HANDLERS_{handler}_LEVEL", "WARNING")


@app.command(cls=_FlowCommand)
def run(
    flow_name: FlowArg,
    vault: VaultOpt = None,
    since: Annotated[str | None, typer.Option(help="First day of the window (default: 6 days before --until).")] = None,
    until: Annotated[str | None, typer.Option(help="Last day of the window (default: today).")] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    tier: TierOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Render prompts and estimate spend; call no model.")
    ] = False,
    show_prompts: Annotated[bool, typer.Option("--show-prompts", help="With --dry-run: print every prompt.")] = False,
    assignment: Annotated[
        str | None,
        typer.Option(
            "--assignment", "-a", help="student-feedback: the assignment folder (default: [feedback] in config)."
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="student-feedback: direct (the default), or batch (provider batch APIs, about half price)."),
    ] = None,
    module: Annotated[
        str | None, typer.Option(help="module-review: the module folder (default: [module] folder in config).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="batch mode: wait for the batch, or exit and resume later.")
    ] = True,
    task_runner: Annotated[
        str, typer.Option("--task-runner", help="thread (default), dask, dask:N or dask:tcp://HOST:PORT.")
    ] = "thread",
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Prefect's own log lines.")] = False,
    project: Annotated[
        str | None,
        typer.Option(
            "--project", help="Charge the run's spend to this project (default: from the config or a course code)."
        ),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Pay again for answers an earlier run kept although they failed their checks (a rerun reuses them).",
        ),
    ] = False,
    param: FlowParamOpt = None,
    redraft_all: Annotated[
        bool,
        typer.Option(
            "--redraft-all",
            help="student-feedback: draft every student again. Without it a rerun drafts only the students with no "
            "draft for their submission as it is now (new ones, and those who resubmitted since).",
        ),
    ] = False,
) -> None:
    """Run a flow over a vault, with a progress display per phase; ends with what was written and its cost."""
    vault = vault_dir(vault, required=f"tierflow run {flow_name}")
    _quiet_prefect(verbose)  # before anything imports Prefect, which reads its logging settings at import
    cfg = load(vault, config, profile)
    # Every flag is checked before the flow selects a single note: these here, the rest against the flow's
    # signature by `flow_call`.
    overrides = _tier_overrides(tier, cfg)
    start, end = _parse_date(since, "--since"), _parse_date(until, "--until")
    if start is not None and end is not None and start > end:  # as the flow would, but before a run is started
        raise fail(f"--since {start} is after --until {end}")
    from tierflow.cli.runner import BUILT_IN_OPTIONS, flow_call, run_flow

    # --mode is student-feedback's: direct or batch. A flow of another package gets the mode the user wrote, if
    # any, for its signature to judge: its `mode` is its own (`own_parameter`).
    if flow_name in BUILT_IN_OPTIONS:
        mode = mode or "direct"
        if mode not in ("direct", "batch"):
            raise fail(f"--mode {mode!r}: use direct or batch")
    # Each of tierflow's own flows gets those of these made for it; a flow of another package those the user set
    # and its function takes (`run_flow` keeps only those): an option left at tierflow's default never replaces the
    # flow's own default.
    offered = {
        "since": start, "until": end, "assignment": assignment, "mode": mode, "wait": wait, "module": module,
        "redraft_all": redraft_all,
    }  # fmt: skip
    # What `run_flow` checks against the flow, with each option as the user wrote it (None: not set), so that one
    # the flow does not take is refused, not dropped without a word (`--since` for student-feedback).
    options = {
        "since": ("--since", since),
        "until": ("--until", until),
        "assignment": ("--assignment", assignment),
        "mode": ("--mode", None if mode == "direct" and flow_name in BUILT_IN_OPTIONS else mode),
        "wait": ("--no-wait", None if wait else False),
        "module": ("--module", module),
        "project": ("--project", project),
        "retry_failed": ("--retry-failed", retry_failed or None),
        "redraft_all": ("--redraft-all", redraft_all or None),
    }
    call = {
        "profile": profile,
        "config": config,
        "tier": overrides,
        "options": options,
        "params": parse_params(param, flow_name),
        "project": project,
        "retry_failed": retry_failed,
        **(
            {name: offered[name] for name in BUILT_IN_OPTIONS[flow_name]}
            if flow_name in BUILT_IN_OPTIONS
            else {name: offered[name] for name in offered if options[name][1] is not None}
        ),
    }
    if dry_run:
        flow_call(flow_name, vault, **call)  # the run's own check: a dry run refuses what the run would
        plan(
            flow_name,
            vault=vault,
            since=since,
            until=until,
            config=config,
            profile=profile,
            tier=tier,
            show_prompts=show_prompts,
            assignment=assignment,
            mode=mode,
            module=module,
            param=param,
            redraft_all=redraft_all,
            retry_failed=retry_failed,
        )
        return
    check_assignment(flow_name, cfg, vault, assignment)
    check_module(flow_name, cfg, vault, module)
    keys = missing_keys(cfg, overrides, flow_name)
    if keys:  # before Prefect starts and anything is reserved: every call would fail for want of it
        raise fail(f"{keys}. Nothing was started or spent")
    from tierflow.cli.prefect_ops import OpsError, task_runner_for

    try:
        runner = task_runner_for(task_runner)
    except OpsError as exc:
        raise fail(str(exc)) from None
    summary = run_flow(flow_name, vault, task_runner=runner, show_tracebacks=verbose, **call)
    raise typer.Exit(3 if summary is not None and (summary.halted or summary.failed) else 0)


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="The run id, as the run report and ledger show it.")],
    vault: VaultOpt = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Prefect's own log lines.")] = False,
) -> None:
    """Run an earlier run again: collect its finished batches, resubmit only what expired, reuse every answer."""
    vault = vault_dir(vault, required=f"tierflow resume {run_id}")
    # Before anything imports Prefect, which sets up its logging at import: loading the run's flow (`flow_spec`)
    # imports it.
    _quiet_prefect(verbose)
    from tierflow.core.commands import tierflow_command
    from tierflow.core.ledger import Ledger

    cfg = load(vault, config, profile)
    # The run is in the configured ledger (a shared `ledger_url`, else the vault's own SQLite file).
    found = Ledger(cfg.ledger_url, reading=True).run_parameters(run_id)  # none yet: says so, makes none
    if found is None:
        raise fail(
            f"no run {run_id!r} in the ledger {masked_url(cfg.ledger_url)}; "
            f"`{tierflow_command('spend', '--by', 'run', vault=vault, config=config, profile=profile)}` lists runs"
        )
    flow, parameters = found
    from tierflow.core.errors import TierflowError
    from tierflow.core.registry import flow_spec

    try:
        spec = flow_spec(flow)
    except TierflowError as exc:
        raise fail(f"run {run_id} is of the {flow} flow, which cannot be loaded: {exc}") from None
    if not spec.takes("run_id"):  # it would start a new run under a new id, not continue this one
        again = _rerun_of(spec, flow, vault, parameters, config=config, profile=profile)
        raise fail(
            f"run {run_id} is of the {flow} flow, whose function takes no run_id, so `tierflow resume` cannot "
            f"continue that run. `{again}` runs it again and reuses, at no cost, every "
            "answer the earlier run cached. To make the flow resumable, give it a `run_id: str | None = None` "
            "parameter and pass it to begin_run (docs/your-own-flow.md)."
        )
    from tierflow.cli.runner import run_flow

    # Run with the --config and --profile given here, as `tierflow run` does: the run was found in their ledger.
    # Those the run remembered are kept only when none is given: a remembered --config is a path where the run
    # started (a teammate's copy of a shared ledger's config, or a file since moved).
    parameters |= {"config": config or parameters.get("config"), "profile": profile or parameters.get("profile")}
    summary = run_flow(flow, vault, run_id=run_id, show_tracebacks=verbose, **parameters)
    raise typer.Exit(3 if summary is not None and (summary.halted or summary.failed) else 0)


RUN_OPTIONS = {
    "since": "--since", "until": "--until", "assignment": "--assignment", "mode": "--mode", "wait": "--no-wait",
    "module": "--module", "project": "--project", "retry_failed": "--retry-failed", "redraft_all": "--redraft-all",
}  # fmt: skip
"""The flow parameters `tierflow run` gives from an option of its own, and that option."""


def _rerun_of(
    spec: FlowSpec,
    flow: str,
    vault: Path,
    parameters: Mapping[str, Any],
    *,
    config: Path | None,
    profile: str | None,
) -> str:
    """The `tierflow run` command line that runs an earlier run again, from the parameters the ledger remembered
    for it: those its flow takes and that differ from the flow's defaults, each as its option or a `--param`;
    `config` and `profile` (those given to `resume`) over the ones it remembered."""
    from tierflow.cli.runner import own_parameter, rerun_command

    function = getattr(spec.flow, "fn", spec.flow)
    signature = inspect.signature(function).parameters
    defaults = {name: p.default for name, p in signature.items() if p.default is not p.empty}
    options: dict[str, tuple[str, object]] = {}
    params: dict[str, object] = {}
    for name, value in parameters.items():
        if name in ("vault", "config", "profile", "tier", "run_id") or not spec.takes(name) or value is None:
            continue
        if name in defaults and defaults[name] == value:
            continue
        if name in RUN_OPTIONS and not own_parameter(flow, name):
            options[name] = (RUN_OPTIONS[name], value if name != "wait" else (None if value else False))
        else:
            params[name] = value if isinstance(value, str) else json.dumps(value)
    # `tierflow run` refuses --config, --profile and --tier to a flow that does not take them. The --config and
    # --profile given to `resume` win, as they do for the run `resume` continues: a remembered --config is a path
    # where the run started (a teammate's copy of a shared ledger's config, or a file since moved).
    return rerun_command(
        flow,
        vault,
        config=(config or parameters.get("config")) if spec.takes("config") else None,
        profile=(profile or parameters.get("profile")) if spec.takes("profile") else None,
        tier=parameters.get("tier") if spec.takes("tier") else None,
        options=options,
        params=params,
    )


class ListFormat(StrEnum):
    table = "table"
    json = "json"


@budget_app.command("reservations")
def budget_reservations(
    vault: VaultOpt = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    release_stale: Annotated[
        bool,
        typer.Option(
            "--release-stale",
            help="Release reservations whose lease is over, and at once those whose holder process on this "
            "host no longer exists (a call's is recorded as lost at its worst case); never those of a batch "
            "pending at the provider (`tierflow resume RUN` collects it).",
        ),
    ] = False,
    fmt: Annotated[ListFormat, typer.Option("--format", "-f", help="Output format.")] = ListFormat.table,
) -> None:
    """Show the budget reservations still open: run, phase, age, lease, holder pid and host."""
    from tierflow.core import budget
    from tierflow.core.ledger import Ledger

    cfg = load(vault_dir(vault), config, profile)
    try:
        ledger = Ledger(cfg.ledger_url, reading=not release_stale)
    except ConfigError as exc:  # it names the missing vault; a ledger that cannot be opened is `main`'s to report
        raise fail(str(exc)) from None
    released = budget.release_stale(ledger) if release_stale else []
    rows = [_reservation_row(r, "released") for r in released]
    rows += [_reservation_row(r, r.state) for r in budget.open_reservations(ledger)]
    if fmt is ListFormat.json:
        _write_json(rows, Format.json)  # one array, as `spend --format json` prints; `[]` when none is open
        return
    from rich.console import Console
    from rich.table import Table

    from tierflow.report.console import show

    table = Table(title="open budget reservations" if not released else "budget reservations")
    for column in ("id", "run", "phase", "usd", "tokens", "age", "lease left", "holder", "state"):
        table.add_column(
            column,
            justify="right" if column in ("id", "usd", "tokens", "age", "lease left") else "left",
            # Nothing is cut: `show` keeps each word whole, and to fit a narrow terminal it folds the holder (a long
            # host name) or leaves the counts out.
            no_wrap=column in ("id", "run", "phase", "state"),
            overflow="fold" if column == "holder" else "ellipsis",
        )
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["run_id"],
            row["phase"],
            f"{row['usd']:.4f}",
            str(row["tokens"]),
            f"{row['age_s']:.0f}s",
            f"{row['lease_left_s']:.0f}s",
            f"pid {row['holder_pid']} on {row['holder_host']}",
            row["state"],
        )
    console = Console()
    # Ids and states whole, in a pipe and in a narrow terminal.
    show(console, table, optional=("age", "tokens", "lease left", "holder"))
    if not rows:
        console.print("No reservation is open: no call is in flight, and none holds budget.")
    elif released:
        console.print(f"Released {len(released)} stale reservation(s).")
        lost = [r for r in released if r.lost]
        if lost:
            one = len(lost) == 1
            calls = (
                "1 call sent before its holder stopped is"
                if one
                else f"{len(lost)} calls sent before their holder stopped are"
            )
            its, it = ("its", "it") if one else ("their", "them")
            console.print(
                f"{calls} recorded as lost at {its} worst case (${sum(r.usd for r in lost):.4f}): the provider may "
                f"bill {it}, so budgets keep counting {it} (`tierflow spend` lists {it})."
            )
    elif any(row["state"] in ("expired", "holder gone") for row in rows):
        console.print(
            "`tierflow budget reservations --release-stale` releases the expired ones and those whose holder is gone.",
            soft_wrap=True,
        )
    # A submitted batch outlives the process that sent it: the provider bills it, and collecting it settles these.
    from tierflow.cli.runner import resume_command

    for run_id in dict.fromkeys(row["run_id"] for row in rows if row["state"] == "batch pending"):
        resume = resume_command(run_id, vault_dir(vault), config=config, profile=profile)
        # soft_wrap: a command split over two lines in a pipe is not one a user can paste.
        console.print(f"Run {run_id}: batch pending at the provider: `{resume}` collects it.", soft_wrap=True)


def _reservation_row(r, state: str) -> dict:  # noqa: ANN001
    return {
        "id": r.id,
        "run_id": r.run_id,
        "flow": r.flow,
        "phase": r.phase,
        "usd": r.usd,
        "tokens": r.tokens,
        "created": r.created,
        "age_s": round(r.age_s, 3),
        "lease_left_s": round(r.lease_left_s, 3),
        "holder_pid": r.holder_pid,
        "holder_host": r.holder_host,
        "state": state,
        "recorded_lost": r.lost,  # released, and recorded as a lost call at its worst case
    }


@app.command()
def demo(
    folder: Annotated[
        Path | None, typer.Argument(help="Where to put the demo vault (default: a new temporary folder).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Prefect's own log lines.")] = False,
) -> None:
    """Copy the bundled reading-week vault and run the reading-notes flow on it with the offline model."""
    _quiet_prefect(verbose)
    from tierflow.cli.runner import run_demo

    run_demo(folder)


@app.command(cls=_PlanCommand)
def plan(
    flow_name: FlowArg,
    vault: VaultOpt = None,
    since: Annotated[str | None, typer.Option(help="First day of the window.")] = None,
    until: Annotated[str | None, typer.Option(help="Last day of the window.")] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    tier: TierOpt = None,
    show_prompts: Annotated[bool, typer.Option("--show-prompts", help="Print every rendered prompt.")] = False,
    assignment: Annotated[
        str | None,
        typer.Option(
            "--assignment", "-a", help="student-feedback: the assignment folder (default: [feedback] in config)."
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="student-feedback: direct (the default), or batch (priced at the batch discount)."),
    ] = None,
    module: Annotated[
        str | None, typer.Option(help="module-review: the module folder (default: [module] folder in config).")
    ] = None,
    param: FlowParamOpt = None,
    redraft_all: Annotated[
        bool,
        typer.Option(
            "--redraft-all",
            help="student-feedback: price a draft for every student, as `run --redraft-all` drafts them. Without "
            "it only the students the run would draft are priced: those with no draft for their submission as it "
            "is now.",
        ),
    ] = False,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Price the run as `run --retry-failed` makes it: student-feedback drafts again the students whose "
            "draft failed its checks (unless you edited it).",
        ),
    ] = False,
) -> None:
    """Estimate a run before it spends: calls, tokens and worst-case USD per phase, and the all-deep equivalent."""
    vault = vault_dir(vault, required=f"tierflow plan {flow_name}")
    cfg = load(vault, config, profile)
    from tierflow.core.errors import TierflowError
    from tierflow.core.registry import flow_spec
    from tierflow.report.plan import print_plan

    try:
        spec = flow_spec(flow_name)
    except TierflowError as exc:
        raise fail(str(exc)) from None
    if spec.plan is None:
        raise fail(f"the {flow_name} flow has no planner: its FlowSpec gives no plan=")
    from tierflow.cli.runner import BUILT_IN_OPTIONS, flow_call

    if flow_name in BUILT_IN_OPTIONS:  # --mode is student-feedback's; another flow's `mode` is its own
        mode = mode or "direct"
        if mode not in ("direct", "batch"):
            raise fail(f"--mode {mode!r}: use direct or batch")
    check_assignment(flow_name, cfg, vault, assignment)
    check_module(flow_name, cfg, vault, module)
    offered = {
        "since": _parse_date(since, "--since"),
        "until": _parse_date(until, "--until"),
        "assignment": assignment,
        "mode": mode,
        "module": module,
        "redraft_all": redraft_all,
        "retry_failed": retry_failed,
    }
    if flow_name not in BUILT_IN_OPTIONS:  # as `tierflow run` gives them: only those the user set
        offered = {name: value for name, value in offered.items() if value not in (None, False)}
    params = parse_params(param, flow_name)
    if params:
        # Checked as `tierflow run` checks them (a parameter the flow takes, of its type, that no option gives);
        # the options here only price the run, so one the flow does not take is not refused.
        options = {name: (f"--{name}", None) for name in ("since", "until", "assignment", "mode", "module")}
        options["redraft_all"] = ("--redraft-all", None)
        options["retry_failed"] = ("--retry-failed", None)
        # A flow's own parameter of an option's name (`own_parameter`) is refused as a --param beside that option.
        options |= {name: (option, offered.get(name)) for name, (option, _) in options.items() if name in params}
        _, arguments, _ = flow_call(flow_name, vault, options=options, params=params, **offered)
        params = {name: arguments[name] for name in params}  # as the flow's signature reads them: `n=3` the int 3
    accepted = inspect.signature(spec.plan).parameters
    any_name = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    for name in params:
        if name not in accepted and not any_name:  # the estimate would be of another run than the one asked for
            raise fail(
                f"the {flow_name} flow's planner takes no {name!r} parameter, so its estimate cannot follow "
                f"--param {name}; it takes: {', '.join(n for n, p in accepted.items() if p.kind is p.KEYWORD_ONLY)}"
            )
    overrides = _tier_overrides(tier, cfg)
    keys = missing_keys(cfg, overrides, flow_name)
    if keys:  # a plan spends nothing: the run would refuse, so say so
        typer.echo(f"warning: {keys}; `tierflow run {flow_name}` refuses to start until then.", err=True)
    try:
        result = spec.plan(
            cfg,
            vault,
            tier=overrides,
            **{k: v for k, v in offered.items() if k in accepted},
            **params,
        )
    except TierflowError as exc:
        raise fail(str(exc)) from None
    print_plan(result, show_prompts=show_prompts)


def missing_keys(cfg: Config, overrides: Mapping[str, str], flow_name: str) -> str | None:
    """What is missing, when a provider the routing table can send this flow's calls to has no API key in the
    environment (`missing_key`): one sentence naming each variable, the provider and tiers that need it, and how to
    set it or run without keys; None when every key is there."""
    from tierflow.core.providers import missing_key
    from tierflow.core.routing import run_tiers

    needed: dict[tuple[str, str], list[str]] = {}
    for tier_name in run_tiers(cfg, overrides):
        provider, provider_config = cfg.provider_for(tier_name)
        variable = missing_key(provider_config)
        if variable is not None:
            needed.setdefault((variable, provider), []).append(tier_name)
    if not needed:
        return None
    named = [
        f"{variable or f'providers.{provider}.api_key_env'} "
        f"({provider}, for tier{'s' if len(tiers) > 1 else ''} {', '.join(tiers)})"
        for (variable, provider), tiers in needed.items()
    ]
    exports = " and ".join(f"export {variable or 'THE_KEY_VARIABLE'}=..." for variable, _ in needed)
    return (
        f"the {flow_name} flow's calls can go to providers whose API key is not set: {'; '.join(named)}. "
        f"{exports} (the key from the provider's console), or use --profile offline (no keys)"
    )


OVERRIDABLE_PHASES = ("collate", "synthesise", "draft", "judge")
"""The phases a flow's calls are made in, so the phases `--tier PHASE=TIER` can name."""


def _tier_overrides(items: list[str] | None, cfg: Config) -> dict[str, str]:
    """`--tier` values as `{phase: tier}`, each phase one the flows call and each tier one the config defines."""
    from tierflow.core.routing import parse_tier_overrides

    try:
        overrides = parse_tier_overrides(items or [])
    except ConfigError as exc:
        raise fail(str(exc)) from None
    tiers = sorted(cfg.settings.tiers)
    for phase, tier_name in overrides.items():
        written = f"{phase}={tier_name}" if phase != "*" else tier_name
        if phase != "*" and phase not in OVERRIDABLE_PHASES:
            raise fail(f"--tier {written}: no phase {phase!r}; the phases are {', '.join(OVERRIDABLE_PHASES)}")
        if tier_name not in tiers:
            raise fail(f"--tier {written}: no tier {tier_name!r} in the config; its tiers are {', '.join(tiers)}")
    return overrides


@config_app.command("show")
def config_show(vault: VaultOpt = None, config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """Print the effective config, each value with its source. Keys are never printed, only env var names;
    URLs with their password as ***."""
    from rich.console import Console
    from rich.table import Table

    from tierflow.report.console import show

    vault = vault_dir(vault)
    cfg = load(vault, config, profile)
    table = Table(title=f"tierflow config ({cfg.path or 'built-in defaults'})")
    table.add_column("key")
    table.add_column("value")
    table.add_column("source")
    for key, (value, source) in sorted(cfg.redacted().items()):
        table.add_row(key, json.dumps(value), source)
    show(Console(), table)


def main() -> None:
    for argument in sys.argv[1:]:  # before anything reads them: one line, not a traceback from deep inside a run
        problem = locale_problem(argument, "the argument")
        if problem:
            fail(problem)
            sys.exit(2)
    # Prefect reads its settings at import; quiet defaults for a local, keyless first run.
    prefect_defaults()
    try:
        _main()
    except SystemExit:
        interrupt_while_closing()  # the command has finished: only Prefect's exit hooks and tierflow's are left
        raise


def _main() -> None:
    try:
        app()
    except NoLedger as exc:  # a report of a ledger not made yet: nothing there, as a run id that is not in it
        fail(str(exc))
        sys.exit(2)
    except LedgerError as exc:  # whichever command opened the ledger: one line naming it and the fix
        fail(str(exc), 1)
        sys.exit(1)
    except SystemExit as exc:
        # Click ends a command whose reader closed the pipe (`tierflow spend | head`) with exit 1 and no message,
        # after making stdout quiet (a PacifyFlushWrapper, of the click typer bundles); the reader chose to stop,
        # as it may with any Unix filter: not a failure.
        # Rich does the same (`Console.on_broken_pipe`), from inside the BrokenPipeError it caught.
        if exc.code == 1 and (
            type(sys.stdout).__name__.endswith("PacifyFlushWrapper") or isinstance(exc.__context__, BrokenPipeError)
        ):
            raise SystemExit(0) from None
        raise


CLOSING = "interrupted while tierflow was closing: the command had finished (Prefect's last log lines may be missing)"
"""What Ctrl-C after a command finished says (`interrupt_while_closing`)."""


def interrupt_while_closing() -> None:
    """From here on, Ctrl-C ends the process at once with one line (`CLOSING`) and exit code 130.

    Called once the command has finished (it ended with SystemExit, its output and exit code decided), before Python
    runs the exit hooks: Prefect's services draining their queues and its temporary server stopping, which take a
    second or more. A Ctrl-C then raised KeyboardInterrupt inside one of them: a traceback ("Exception ignored in
    atexit callback"), and exit code 0. The ledgers are closed (`close_ledgers`) and the temporary server stopped
    before the exit, as those hooks would have. A handler other than Python's own (`stopped_by_interrupt`'s second
    Ctrl-C, after an interrupted run) is kept; so is an error that escaped the command, with its traceback.
    """
    import contextlib
    import signal
    import threading

    from tierflow.cli import temporary_server

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return

    def closing(signum: int, frame: Any) -> None:
        for stream in (sys.stdout, sys.stderr):  # what the command printed, before os._exit drops it
            with contextlib.suppress(Exception):  # a closed pipe, or the stream interrupted mid-write
                stream.flush()
        os.write(2, f"\n{CLOSING}.\n".encode())
        temporary_server.kill()
        ledger = sys.modules.get("tierflow.core.ledger")  # not imported: no ledger was opened
        if ledger is not None:
            ledger.close_ledgers(wait=False)
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, closing)


PREFECT_STARTUP_WAIT = 300
"""Seconds tierflow waits for Prefect's temporary server to answer, unless the user's environment says otherwise."""


def prefect_defaults() -> None:
    """Settings Prefect reads at import, for a local, keyless run; the user's own environment wins."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tierflow")
    # tierflow logs outside flow runs too (`tierflow ask`); those lines belong on the console only.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # With the default batch size of 1 the ephemeral server's task-run recorder falls behind, and at exit
    # it is cancelled mid-write: "Error flushing 1 events" and task runs missing from the UI. Batching lets
    # the final flush complete.
    os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", "500")
    os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL", "1")
    # Without PREFECT_API_URL every run starts a temporary Prefect server and waits for it; Prefect's default wait
    # (20 s) is too short for a busy machine or a first run, which migrates a new database. Waiting longer costs
    # nothing when the server is quick; `prefect_start_errors` explains a timeout that still happens.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(PREFECT_STARTUP_WAIT))
