"""`tierflow schedule` and `tierflow limits`: Prefect deployments and tier concurrency limits without YAML.

Registered in `tierflow.cli.app` with `app.add_typer(schedule_app, name="schedule")` and
`app.add_typer(limits_app, name="limits")`. Prefect is imported only when a command runs.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from tierflow.cli.common import (
    ConfigOpt,
    FlowHelp,
    ProfileOpt,
    VaultOpt,
    check_assignment,
    check_module,
    fail,
    load,
    parse_params,
    refuse_option_params,
    vault_dir,
)
from tierflow.core.commands import tierflow_command

if TYPE_CHECKING:
    from tierflow.cli.prefect_ops import FlowTarget
    from tierflow.core.config import Config


class _ScheduleGroup(TyperGroup):
    """Names the flows that can be scheduled when given one it does not know."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            from tierflow.core.registry import flow_names

            names = flow_names()
            if args[0] in names:  # a flow another package registered: the generic command, given its name
                return args[0], self._flow_command(args[0]), args[1:]
            ctx.fail(
                f"unknown flow {args[0]!r}. tierflow schedules these flows: {', '.join(names)}. "
                "Other commands: list, pause NAME, resume NAME."
            )
        return super().resolve_command(ctx, args)

    def _flow_command(self, flow: str) -> Any:
        """The hidden generic command as `flow`'s own: its help and usage name the flow, and it takes no FLOW."""
        base = self.commands[REGISTERED]
        command = copy.copy(base)
        command.name = flow
        command.hidden = False
        command.params = [p for p in base.params if p.name != "flow_name"]
        command.callback = functools.partial(base.callback, flow_name=flow)  # type: ignore[arg-type]
        command.help = (
            f"Register the {flow} flow (a flow another package registered): on demand (the default), or on a "
            "schedule with --cron."
        )
        return command


REGISTERED = "registered-flow"
"""The hidden command that schedules a flow with no command of its own: `tierflow schedule FLOW ...`."""


class _FlowSchedule(FlowHelp, TyperCommand):
    """`tierflow schedule FLOW`: its help ends with the flow's parameters, each as `--param NAME=VALUE`."""

    def help_flow(self, ctx: Any) -> str | None:
        return None if self.name == REGISTERED else self.name


schedule_app = typer.Typer(
    cls=_ScheduleGroup,
    help=(
        "Run flows on a schedule: Prefect deployments on a process work pool, against the Prefect server in "
        "PREFECT_API_URL. A worker runs them: prefect worker start --pool tierflow. A flow another package "
        "registers (tierflow.flows entry points) is scheduled by its name too: tierflow schedule FLOW --vault DIR "
        "[--cron ...] [--param NAME=VALUE]."
    ),
    no_args_is_help=True,
)
limits_app = typer.Typer(
    help="Tier concurrency limits: Prefect tag limits (tier:<name>) from [tiers.<name>] concurrency.",
    no_args_is_help=True,
)

CronOpt = Annotated[
    str | None,
    typer.Option("--cron", help='Cron expression: minute hour day-of-month month day-of-week, e.g. "0 7 * * MON".'),
]
TimezoneOpt = Annotated[
    str | None,
    typer.Option("--timezone", help="IANA time zone of the schedule (default: the vault's [vault] timezone)."),
]
NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="Deployment name (default: reading-notes' weekly, end-of-term for a scheduled module-review; else "
        "on-demand, or scheduled with --cron).",
    ),
]
PoolOpt = Annotated[str, typer.Option("--pool", help="Process work pool; created if missing.")]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        metavar="NAME=VALUE",
        help="Another flow parameter, repeatable; VALUE is read as the flow's signature types it, as `tierflow run "
        "--param` reads it (folder=2024 the text for a str, n=3 the int for an int, tags='[\"a\"]' for a list). "
        "--help ends with the flow's parameters.",
    ),
]


def _vault(vault: Path | None, command: str) -> Path:
    return vault_dir(vault, required=f"tierflow schedule {command}")  # type: ignore[return-value]


def _base_parameters(vault: Path, profile: str | None, config: Path | None) -> tuple[Config, dict[str, Any]]:
    """The loaded config, and the deployment parameters every flow takes: vault, profile, config."""
    cfg = load(vault, config, profile)
    parameters: dict[str, Any] = {"vault": str(vault)}
    if profile:
        parameters["profile"] = profile
    if config:
        parameters["config"] = str(config.resolve())
    return cfg, parameters


def _params(param: list[str] | None, flow: str, *options: str) -> dict[str, str]:
    """The `--param` texts of the `flow`'s parameters, refused (exit 2) as `tierflow run` refuses them when one names
    a parameter that --vault, --profile, --config or another of the command's `options` gives."""
    params = parse_params(param, flow)
    refuse_option_params(params, {o.removeprefix("--"): o for o in ("--vault", "--profile", "--config", *options)})
    return params


def _register(
    target: FlowTarget,
    parameters: dict[str, Any],
    params: dict[str, str],
    cfg: Config,
    *,
    cron: str | None,
    timezone: str | None,
    name: str | None,
    pool: str,
) -> None:
    from tierflow.cli.prefect_ops import OpsError, OpsUsageError, register

    try:
        done = register(
            target,
            parameters=parameters,
            params=params,
            name=name,
            cron=cron,
            timezone=timezone or cfg.settings.vault.timezone,
            pool=pool,
        )
    except OpsError as exc:
        # A wrong parameter, cron expression, time zone or name is a usage error (2), as `tierflow run` says it.
        raise fail(str(exc), 2 if isinstance(exc, OpsUsageError) else 1) from None
    verb = "Registered" if done.created else "Updated"
    when = f"on schedule {done.schedule}" if done.schedule else "with no schedule (runs on demand)"
    typer.echo(f"{verb} deployment {done.deployment} {when}, on work pool {done.pool!r}.")
    if done.pool_created:
        typer.echo(f"Created the process work pool {done.pool!r}.")
    typer.echo(f"Runs start while a worker polls the pool: prefect worker start --pool {done.pool}")
    if done.left_out:
        one = len(done.left_out) == 1
        typer.echo(
            f"Each run needs {', '.join(done.left_out)}, which the deployment leaves to the run (Prefect refuses a "
            f"run without {'it' if one else 'them'}): give {'it' if one else 'each'} with -p NAME=VALUE, as here "
            f"with an example value:"
        )
    typer.echo(f"Run it now: {done.run_command}")


@schedule_app.command("reading-notes", cls=_FlowSchedule)
def schedule_reading_notes(
    vault: VaultOpt = None,
    cron: CronOpt = "0 7 * * MON",
    timezone: TimezoneOpt = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    name: NameOpt = None,
    pool: PoolOpt = "tierflow",
    param: ParamOpt = None,
) -> None:
    """Schedule the reading-notes flow (default: Mondays 07:00), each run over the seven days before it."""
    from tierflow.cli.prefect_ops import FLOWS

    vault = _vault(vault, "reading-notes")
    params = _params(param, "reading-notes")
    cfg, parameters = _base_parameters(vault, profile, config)
    _register(FLOWS["reading-notes"], parameters, params, cfg, cron=cron, timezone=timezone, name=name, pool=pool)


@schedule_app.command("student-feedback", cls=_FlowSchedule)
def schedule_student_feedback(
    vault: VaultOpt = None,
    assignment: Annotated[
        str | None,
        typer.Option("--assignment", "-a", help="The assignment folder in the vault (default: [feedback] in config)."),
    ] = None,
    mode: Annotated[str, typer.Option("--mode", help="direct, or batch (the providers' batch APIs).")] = "direct",
    cron: CronOpt = None,
    timezone: TimezoneOpt = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    name: NameOpt = None,
    pool: PoolOpt = "tierflow",
    param: ParamOpt = None,
) -> None:
    """Register the student-feedback flow: on demand (the default), or on a schedule with --cron."""
    from tierflow.cli.prefect_ops import FLOWS

    vault = _vault(vault, "student-feedback")
    if mode not in ("direct", "batch"):
        raise fail(f"--mode {mode!r}: use direct or batch")
    params = _params(param, "student-feedback", "--mode", "--assignment")
    cfg, parameters = _base_parameters(vault, profile, config)
    if assignment or cfg.settings.feedback.assignment_folder or cron:
        # The folder its runs read, refused now as `tierflow run` refuses it, not when a worker runs it days later.
        # Without one an on-demand deployment is still of use: each run may be given its assignment.
        check_assignment("student-feedback", cfg, vault, assignment)
    parameters["mode"] = mode
    if assignment:
        parameters["assignment"] = assignment
    _register(FLOWS["student-feedback"], parameters, params, cfg, cron=cron, timezone=timezone, name=name, pool=pool)


@schedule_app.command("module-review", cls=_FlowSchedule)
def schedule_module_review(
    vault: VaultOpt = None,
    module: Annotated[
        str | None,
        typer.Option("--module", help="The module folder in the vault (default: [module] folder in config)."),
    ] = None,
    cron: CronOpt = None,
    timezone: TimezoneOpt = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    name: NameOpt = None,
    pool: PoolOpt = "tierflow",
    param: ParamOpt = None,
) -> None:
    """Register the module review: on demand (the default), or at the end of term with --cron "0 7 15 12 *"."""
    from tierflow.cli.prefect_ops import FLOWS

    vault = _vault(vault, "module-review")
    params = _params(param, "module-review", "--module")
    cfg, parameters = _base_parameters(vault, profile, config)
    if module or cfg.settings.module.folder or cron:
        # The folder its runs read, refused now as `tierflow run` refuses it, not when a worker runs it days later.
        # Without one an on-demand deployment is still of use: each run may be given its module.
        check_module("module-review", cfg, vault, module)
    if module:
        parameters["module"] = module
    _register(FLOWS["module-review"], parameters, params, cfg, cron=cron, timezone=timezone, name=name, pool=pool)


@schedule_app.command(REGISTERED, hidden=True, cls=_FlowSchedule)
def schedule_registered_flow(
    flow_name: Annotated[str, typer.Argument(metavar="FLOW", help="A registered flow.")],
    vault: VaultOpt = None,
    cron: CronOpt = None,
    timezone: TimezoneOpt = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    name: NameOpt = None,
    pool: PoolOpt = "tierflow",
    param: ParamOpt = None,
) -> None:
    """Register a flow another package registered: on demand (the default), or on a schedule with --cron."""
    from tierflow.cli.prefect_ops import flow_target
    from tierflow.core.errors import TierflowError

    vault = _vault(vault, flow_name)
    try:
        target = flow_target(flow_name)
    except TierflowError as exc:
        raise fail(str(exc)) from None
    params = _params(param, flow_name)
    cfg, parameters = _base_parameters(vault, profile, config)
    _register(target, parameters, params, cfg, cron=cron, timezone=timezone, name=name, pool=pool)


@schedule_app.command("list")
def schedule_list() -> None:
    """The deployments on the Prefect server, their schedules, and whether they are paused."""
    from rich.console import Console
    from rich.table import Table

    from tierflow.cli.prefect_ops import OpsError, list_deployments

    try:
        deployments = list_deployments()
    except OpsError as exc:
        raise fail(str(exc), 1) from None
    if not deployments:
        typer.echo("No deployments yet. Add one: tierflow schedule reading-notes --vault DIR")
        return
    table = Table(title="Prefect deployments")
    for col in ("deployment", "schedule", "state", "pool", "vault"):
        table.add_column(col)
    for d in deployments:
        state = "paused" if d.paused else ("active" if d.schedules else "on demand")
        table.add_row(d.name, "\n".join(d.schedules) or "-", state, d.pool or "-", str(d.parameters.get("vault", "")))
    Console(width=200).print(table)


def _set_paused(name: str, paused: bool) -> None:
    from tierflow.cli.prefect_ops import OpsError, set_paused

    try:
        full = set_paused(name, paused)
    except OpsError as exc:
        raise fail(str(exc), 1) from None
    if paused:
        typer.echo(f"Paused {full}: no runs are scheduled until `tierflow schedule resume {full}`.")
    else:
        typer.echo(f"Resumed {full}: its schedule runs again.")


@schedule_app.command("pause")
def schedule_pause(name: Annotated[str, typer.Argument(help="FLOW/DEPLOYMENT, or a unique deployment name.")]) -> None:
    """Pause a deployment's schedule."""
    _set_paused(name, True)


@schedule_app.command("resume")
def schedule_resume(
    name: Annotated[str, typer.Argument(help="FLOW/DEPLOYMENT, or a unique deployment name.")],
) -> None:
    """Resume a paused deployment's schedule."""
    _set_paused(name, False)


@limits_app.command("apply")
def limits_apply(vault: VaultOpt = None, config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """Create or update a Prefect concurrency limit on tag tier:<name> for each tier with `concurrency`.

    Under the ledger mechanism (the default) tierflow's slots hold the limits: this lists them, and removes the
    tier:<name> tag limits left on a reachable Prefect server; no server is needed."""
    from tierflow.cli.prefect_ops import NoServer, OpsError, apply_limits, ledger_limits

    cfg = load(vault_dir(vault), config, profile)
    ledger = cfg.settings.limits.mechanism == "ledger"
    unseen: NoServer | None = None
    try:
        changes = apply_limits(cfg)
    except NoServer as exc:
        if not ledger:
            raise fail(str(exc), 1) from None
        # The ledger's slots need no server; one only lost the tag limits left on it, and there is none to reach.
        changes, unseen = ledger_limits(cfg), exc
    except OpsError as exc:
        raise fail(str(exc), 1) from None
    for change in changes:
        typer.echo(change.message)
    if ledger:
        typer.echo(
            "tierflow holds these limits itself, with slots in its ledger around each model call; nothing is needed "
            'on the Prefect server. For Prefect tag limits instead, set [limits] mechanism = "prefect".'
        )
        if unseen is not None:
            said = f"No tier: tag limit left on a Prefect server was looked for: {unseen.reason}."
            if unseen.url is not None:
                again = tierflow_command("limits", "apply", vault=vault, config=config, profile=profile)
                said += (
                    f' Once it is up, `{again}` removes any: one left from mechanism = "prefect" would hold whole '
                    "task runs on top of the slots."
                )
            typer.echo(said)
        return
    typer.echo("Every flow and worker on this server now keeps to these limits; see the UI's Concurrency page.")


@limits_app.command("show")
def limits_show(vault: VaultOpt = None, config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """The tier:<name> concurrency limits on the Prefect server (beside the config's, given a vault or config)."""
    from rich.console import Console
    from rich.table import Table

    from tierflow.cli.prefect_ops import OpsError, show_limits

    cfg = load(vault_dir(vault), config, profile) if (vault or config or profile) else None
    if cfg is not None and cfg.settings.limits.mechanism == "ledger":
        _show_ledger_slots(cfg)
        return
    if cfg is not None:
        typer.echo(
            'Mechanism in force: Prefect tag limits ([limits] mechanism = "prefect"): each limit holds whole task '
            "runs tagged tier:<name>, on this Prefect server."
        )
    else:
        typer.echo(
            "The Prefect server's tier:* tag limits. Give --vault or --config to see which mechanism is in force."
        )
    try:
        rows = show_limits(cfg)
    except OpsError as exc:
        raise fail(str(exc), 1) from None
    if not rows:
        typer.echo("No tier limits on the server: every tier is unlimited. Set them with `tierflow limits apply`.")
        return
    table = Table(title="Tier concurrency limits")
    for col in ("tag", "limit", "running", *(("config",) if cfg else ())):
        table.add_column(col)
    for r in rows:
        limit = "unlimited" if r.limit is None else str(r.limit)
        cells = [r.tag, limit, str(r.active)]
        if cfg:
            cells.append("unlimited" if r.configured is None else str(r.configured))
        table.add_row(*cells)
    Console(width=200).print(table)


def _show_ledger_slots(cfg: Config) -> None:
    """`limits show` under the ledger mechanism: each tier's limit and the slots held now, from the ledger."""
    from rich.console import Console
    from rich.table import Table

    from tierflow.core.errors import ConfigError, NoLedger
    from tierflow.core.ledger import Ledger
    from tierflow.core.slots import in_flight, limits_of

    typer.echo(
        'Mechanism in force: tierflow ledger slots ([limits] mechanism = "ledger"): each limit holds the model '
        "calls of a tier, across every process and worker sharing this ledger."
    )
    try:
        held = in_flight(Ledger(cfg.ledger_url, reading=True))
    except NoLedger:  # no ledger yet: no call holds a slot, and the limits are shown all the same
        held = {}
    except ConfigError as exc:
        raise fail(str(exc)) from None
    limits = limits_of(cfg)
    table = Table(title="Tier concurrency limits")
    for col in ("tier", "limit", "calls in flight"):
        table.add_column(col)
    for tier in cfg.settings.tiers:
        table.add_row(tier, str(limits.get(tier, "unlimited")), str(held.get(tier, 0)))
    Console(width=200).print(table)
