"""Running flows from the command line: a progress display per phase, then what was written and its cost."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date
from importlib.resources import as_file, files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tierflow.cli import temporary_server
from tierflow.cli.common import fail, load, refuse_option_params
from tierflow.core import progress
from tierflow.core.commands import tierflow_command
from tierflow.core.errors import TierflowError
from tierflow.report.console import show
from tierflow.report.spend import money

if TYPE_CHECKING:
    from tierflow.core.ledger import Ledger
    from tierflow.core.registry import FlowSpec

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


SETTINGS = ("profile", "config", "tier")
"""The options `run_flow` takes itself: which config and tiers the run uses."""

BUILT_IN_OPTIONS: dict[str, tuple[str, ...]] = {
    "reading-notes": ("since", "until"),
    "student-feedback": ("assignment", "mode", "wait", "redraft_all"),
    "module-review": ("module",),
}
"""The parameters `tierflow run` options made for tierflow's own flows give (`--since`, `--mode`, ...), by flow."""


def own_parameter(flow: str, name: str) -> bool:
    """Whether `name`, although a `tierflow run` option gives a parameter of that name, is the flow's own to take
    with `--param`: so for any flow but tierflow's own, whose `mode` (say) need not be student-feedback's. The
    option, when set, gives the parameter to such a flow too, without the checks made for tierflow's flows."""
    return flow not in BUILT_IN_OPTIONS and any(name in names for names in BUILT_IN_OPTIONS.values())


def run_flow(
    flow: str,
    vault: Path,
    *,
    profile: str | None = None,
    config: Path | str | None = None,
    tier: dict[str, str] | None = None,
    task_runner: Any = None,
    options: Mapping[str, tuple[str, object]] | None = None,
    params: Mapping[str, str] | None = None,
    show_tracebacks: bool = False,
    **parameters: Any,
) -> Any:
    """Run a flow in this process with progress bars, then print what it wrote and what it cost; returns its
    RunSummary, or None when the flow returned something else (a flow of another package may return nothing).

    `options` and `params` are what the command line asked for beyond the settings (`flow_call`); a call the
    flow cannot take as asked is refused before any run starts.
    A run that a budget halted or whose phase failed ends Failed in Prefect (`final_state`): its summary is
    printed here all the same (the caller exits 3). An expected user error (a rubric, vault or config problem: a
    TierflowError) ends the run with its message, and exit code 2, or 3 once the run has made calls
    (`error_ended_run`); its traceback goes to the Prefect log only, never to the console. So does any other
    exception raised in the flow's own code (a bug: a KeyError, a class of its own), named with its type and the
    line of the flow's code it was raised at; its traceback is shown with `show_tracebacks` (`--verbose`).
    """
    spec, arguments, run_id = flow_call(
        flow, vault, profile=profile, config=config, tier=tier, options=options, params=params, **parameters
    )
    _check_ledger(vault, config, profile)
    entry = spec.flow
    if task_runner is not None:
        entry = entry.with_options(task_runner=task_runner)
    tracebacks_to_prefect_log_only(show_tracebacks)
    from tierflow.report.run_report import RunStopped, RunSummary

    try:
        if run_id is None:
            resume = f"the {flow} flow takes no run_id, so `tierflow resume` cannot continue its runs"
            starting = f"starting a run of {flow} (its flow takes no run_id, so `tierflow resume` cannot continue it)"
        else:
            resume = f"run {run_id}: `{resume_command(run_id, vault, config=config, profile=profile)}` continues it"
            starting = f"starting {resume} if it stops"
        # Said before the run, on stderr: a run that is killed or crashes (or a batch run, silent for minutes, in a
        # pipe) still leaves its id and how to resume it on screen or in the log.
        console.print(escape(starting))
        with stopped_by_interrupt(resume), prefect_start_errors():
            temporary_server.start()
            with phase_progress():
                summary = entry(**arguments)
                if inspect.iscoroutine(summary):  # an `async def` flow: calling it only made its coroutine
                    summary = asyncio.run(summary)
    except RunStopped as exc:
        # A budget halted the run or a phase failed: its flow run is Failed in Prefect, and here it is a stopped run
        # like any other, with its summary and report (exit 3).
        summary = exc.summary
    except TierflowError as exc:
        again = rerun_command(flow, vault, config=config, profile=profile, tier=tier, options=options, params=params)
        raise error_ended_run(exc, flow, vault, run_id, config=config, profile=profile, rerun=again) from None
    except KeyboardInterrupt:
        if run_id is None:
            console.print(f"[bold yellow]interrupted: the run stopped; {escape(resume)}.")
            raise typer.Exit(interrupted_code()) from None
        console.print(f"[bold yellow]{escape(interrupted_message(run_id, vault, config=config, profile=profile))}")
        # The task runs the interrupt ended reach Prefect's temporary server as events: a few seconds' wait lets its
        # recorder write them before the server stops (not mid-write: a traceback on the console, runs missing from
        # the UI). A second Ctrl-C meanwhile ends it at once (`stopped_by_interrupt`).
        wait_for_task_run_records(run_id, patience=INTERRUPTED_WAIT_S)
        raise typer.Exit(interrupted_code()) from None
    except Exception as exc:
        where = raised_in_flow(exc, getattr(spec.flow, "fn", spec.flow))
        if where is None:
            raise  # not raised in the flow's code: a bug of tierflow's or Prefect's, with its whole traceback
        # A bug in the flow's own code, outside a phase task (whose errors its phase reports): the run ends as a
        # TierflowError ends it, said in one line; the traceback is in the Prefect log, and on the console with
        # --verbose.
        said = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        message = f"{said} ({where}; --verbose shows its traceback)"
        again = rerun_command(flow, vault, config=config, profile=profile, tier=tier, options=options, params=params)
        raise error_ended_run(
            exc, flow, vault, run_id, config=config, profile=profile, rerun=again, message=message
        ) from None
    if not isinstance(summary, RunSummary):
        # A flow of another package may return nothing: it ran, and its calls are in the ledger all the same.
        console.print(
            f"the {flow} flow returned {type(summary).__name__}, not a RunSummary, so there is no summary to show; "
            f"`{tierflow_command('spend', '--last', 20, vault=vault, config=config, profile=profile)}` lists its calls."
        )
        return None
    try:
        wait_for_task_run_records(summary.run_id)
    except KeyboardInterrupt:  # the run had finished: nothing of it stops, only its summary is not shown
        spend = tierflow_command("spend", "--run", summary.run_id, vault=vault, config=config, profile=profile)
        console.print(
            f"[bold yellow]interrupted: run {escape(summary.run_id)} had finished, before its summary was shown; "
            f"`{escape(spend)}` lists its calls."
        )
        raise typer.Exit(INTERRUPTED) from None
    print_summary(vault, summary)
    if summary.ledger_error:
        console.print(escape(ledger_gone_message(summary.run_id, vault, config=config, profile=profile)))
    return summary


def ledger_gone_message(run_id: str, vault: Path, *, config: Path | str | None, profile: str | None) -> str:
    """How to go on with a run that stopped because its ledger could not be reached: where its calls are, and the
    `tierflow resume` that continues it, once the ledger is back."""
    spend = tierflow_command("spend", "--run", run_id, vault=vault, config=config, profile=profile)
    return (
        f"run {run_id} stopped: its ledger could not be reached. Once it is back, `{spend}` lists the run's calls, "
        f"and `{resume_command(run_id, vault, config=config, profile=profile)}` continues it without paying again "
        "for the answers it recorded."
    )


def _check_ledger(vault: Path, config: Path | str | None, profile: str | None) -> None:
    """Open the ledger the run records in, before any run starts: one that cannot be used (read-only here, a server
    that is down) ends the command with one line naming it and the fix, not a run that fails at its first call."""
    from tierflow.core.folders import check_vault
    from tierflow.core.ledger import Ledger

    try:
        check_vault(vault)  # a vault that is gone is named as such, not made again by opening its ledger
    except TierflowError as exc:
        raise fail(str(exc)) from None
    try:
        Ledger(load(vault, Path(config) if config else None, profile).ledger_url)
    except TierflowError as exc:
        raise fail(str(exc), 1) from None


def flow_call(
    flow: str,
    vault: Path,
    *,
    profile: str | None = None,
    config: Path | str | None = None,
    tier: dict[str, str] | None = None,
    options: Mapping[str, tuple[str, object]] | None = None,
    params: Mapping[str, str] | None = None,
    **parameters: Any,
) -> tuple[FlowSpec, dict[str, Any], str | None]:
    """The flow, the arguments its function gets, and the run's id (None when the flow takes no run_id).

    Refused with exit code 2, before any flow run starts: an option the user set (`options`: parameter name to
    the option as written and its value, None when not set; and --profile, --config, --tier) that the flow does
    not take, since the run would not use it; a `params` entry (`--param NAME=VALUE`, as text) that names a
    parameter an option gives, one the flow does not take, or a text its type refuses (`read_params` reads each as
    the flow's signature types it); and arguments Prefect's validation of the flow's signature refuses (a value of
    the wrong type, a required parameter missing).
    """
    from tierflow.cli.prefect_ops import OpsError, check_parameters, read_params
    from tierflow.core.calls import new_run_id
    from tierflow.core.registry import flow_spec

    try:
        spec = flow_spec(flow)
    except TierflowError as exc:
        raise fail(str(exc)) from None
    # The config as a full path: the ledger keeps it for `tierflow resume`, which may run in another folder.
    settings = {
        "profile": profile or None,
        "config": str(Path(config).resolve()) if config else None,
        "tier": tier or None,
    }
    given = {**(options or {}), **{name: (f"--{name}", value) for name, value in settings.items()}}
    # The flow's own parameter of an option's name (`own_parameter`) is refused as a --param only beside that option.
    taken = {name: opt for name, (opt, value) in given.items() if value is not None or not own_parameter(flow, name)}
    refuse_option_params(params or {}, taken | {"vault": "--vault"})
    for name, (option, value) in given.items():
        if value is not None and not spec.takes(name):
            # A setting that cannot reach the flow means the run would use another config than the one asked for.
            effect = "cannot reach it" if name in SETTINGS else "would be ignored"
            raise fail(
                f"the {flow} flow takes no {name!r} parameter, so {option} {effect}; "
                f"it takes: {', '.join(spec.parameter_names())}"
            )
    # Chosen here, so that an interrupt can name it; a flow that takes no run id chooses its own.
    run_id = parameters.pop("run_id", None) if spec.takes("run_id") else None
    if spec.takes("run_id") and not run_id:  # of now in the vault's zone, as its report and `spend --by day` date it
        run_id = new_run_id(load(vault, Path(config) if config else None, profile).settings.vault.timezone)
    # Each flow gets only the parameters its function takes: a flow of another package may take fewer. A --param
    # is passed all the same, so that one the flow does not take is refused, not dropped.
    offered = {"vault": str(vault), **settings, "tier": tier or {}, "run_id": run_id, **parameters}
    try:
        arguments = {**spec.accepted(offered), **read_params(spec.flow, params or {})}
        check_parameters(spec.flow, arguments)
    except OpsError as exc:
        raise fail(str(exc)) from None
    return spec, arguments, run_id


INTERRUPTED = 130
"""The exit code of a run stopped by Ctrl-C: 128 + SIGINT, as shells report it."""

_stopped_by: list[int] = []  # the signals that stopped a run in this process, newest last


def interrupted_code() -> int:
    """The exit code of a run stopped by a signal: 128 + its number, as shells report it (130 for Ctrl-C, 143 for
    SIGTERM from a scheduler or `kill`, 129 for a closed terminal)."""
    return 128 + _stopped_by[-1] if _stopped_by else INTERRUPTED


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
"""Signals that stop a run as Ctrl-C does, so its calls settle and the temporary server is stopped too."""


@contextmanager
def stopped_by_interrupt(resume: str = "") -> Iterator[None]:
    """Ctrl-C (or SIGTERM, or a closed terminal) raises KeyboardInterrupt in the run; a second Ctrl-C ends it at once.

    The first interrupt lets the calls in flight finish, settle and release their reservations, and lets the
    flow run's crash reach Prefect; that takes seconds. The second does not wait: it stops the temporary server
    and exits with 128 + the signal's number, and the reservations of calls then still in flight are left to
    lapse (their holder is gone: `tierflow budget reservations --release-stale` releases them at once). Outside
    the main thread, where no signal handler can be set, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum: int, frame: Any) -> None:
        _stopped_by.append(signum)
        signal.signal(signal.SIGINT, again)
        raise KeyboardInterrupt

    def again(signum: int, frame: Any) -> None:
        # Said here, since the first interrupt's line may not have been printed yet; answers in flight now were
        # perhaps paid for and are not recorded, so the line says so.
        told = f"; {resume}. Calls in flight were stopped unrecorded: the provider may bill them" if resume else ""
        os.write(2, f"\ninterrupted again: stopping at once{told}.\n".encode())
        temporary_server.kill()
        os._exit(128 + signum)

    signals = (signal.SIGINT, *STOP_SIGNALS)
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        signal.signal(sig, first)
    try:
        yield
    except KeyboardInterrupt:
        # The process is on its way out (the task runner, Prefect's event delivery, the server's stop): a second
        # signal while it goes ends it at once.
        previous = dict.fromkeys(signals, again)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def interrupted_message(run_id: str, vault: Path, *, config: Path | str | None, profile: str | None) -> str:
    """What an interrupted run did, and how to go on with it: `tierflow resume`, when the run had started."""
    from tierflow.core.errors import NoLedger
    from tierflow.core.ledger import Ledger

    try:
        cfg = load(vault, Path(config) if config else None, profile)
        started = Ledger(cfg.ledger_url, reading=True).run_parameters(run_id)
    except NoLedger:  # no ledger yet: the run recorded nothing
        started = None
    except Exception:  # the message matters more than this check: say how to resume
        started = True
    if started is None:
        return f"interrupted before run {run_id} started: nothing was run and nothing was spent."
    return (
        f"interrupted: run {run_id} stopped. `{resume_command(run_id, vault, config=config, profile=profile)}` "
        "continues it without paying again for the answers it already has."
    )


_NOT_FLOW_CODE = frozenset({"tierflow", "prefect"})
"""Packages whose errors are never a flow's own: an error raised in them is a bug of theirs."""


def raised_in_flow(error: BaseException, function: Any) -> str | None:
    """Where in the flow's own code `error` was raised, as `file:line, in name`: the innermost frame of the package
    of the flow's `function` at or below the flow function's own frame (its line that called what raised, when that
    was someone else's code). None when the error did not pass through the flow function at all, when the flow is
    one of tierflow's, or when tierflow's or Prefect's code, called by the flow, raised it: their bugs keep their
    tracebacks."""
    module = getattr(function, "__module__", None) or ""
    package = module.split(".")[0]
    if package in _NOT_FLOW_CODE:
        return None  # one of tierflow's own flows: an error there is tierflow's bug, shown with its traceback
    code = getattr(function, "__code__", None)
    inside, found = False, None
    tb = error.__traceback__
    while tb is not None:  # outermost frame first
        frame = tb.tb_frame
        inside = inside or frame.f_code is code
        name = str(frame.f_globals.get("__name__", ""))
        if inside and (name == package or name.startswith(f"{package}.")):
            found = tb
        tb = tb.tb_next
    if found is None:
        return None
    deeper = found.tb_next
    while deeper is not None:
        name = str(deeper.tb_frame.f_globals.get("__name__", ""))
        if name.split(".")[0] in _NOT_FLOW_CODE:
            return None  # raised in tierflow's or Prefect's code, which the flow called: theirs, with its traceback
        deeper = deeper.tb_next
    return f"{found.tb_frame.f_code.co_filename}:{found.tb_lineno}, in {found.tb_frame.f_code.co_name}"


def error_ended_run(
    error: Exception,
    flow: str,
    vault: Path,
    run_id: str | None,
    *,
    config: Path | str | None,
    profile: str | None,
    rerun: str | None = None,
    message: str | None = None,
) -> typer.Exit:
    """Say why an error raised in a flow's own code (not in a phase task) ended its run, and return the exit.

    Before the run made any call it is a usage error (a folder that is not there, a config problem): the message
    alone, exit code 2. Once it made calls, they are paid for and in the ledger: the run failed (exit code 3),
    and a second line says where its calls are and how to go on without paying for them again.
    `run_id` is the id the CLI chose, None for a flow that chooses its own (then the error names it, `run_of`);
    `rerun` is the command line that runs it again with the same options (`rerun_command`); `message` what to say
    of the error (default: its own message).
    """
    from tierflow.core.errors import LedgerUnreachable, run_of
    from tierflow.core.ledger import Ledger
    from tierflow.report.spend import total

    run = run_of(error) or run_id
    rows: list[dict[str, Any]] | None
    try:
        rows = Ledger(load(vault, Path(config) if config else None, profile).ledger_url).rows(run_id=run) if run else []
    except LedgerUnreachable:  # the ledger went away: the run may have made calls, which it cannot say now
        rows = None
    except Exception:  # the error's own message matters more than this look-up (a ledger it cannot read says so)
        rows = []
    said = message or str(error)
    if not rows and (rows is not None or not run):
        return fail(said)
    ended = fail(said, code=3)
    if rows is None:
        console.print(escape(ledger_gone_message(run, vault, config=config, profile=profile)))
        return ended
    rerun = rerun or tierflow_command("run", flow, vault=vault, config=config, profile=profile)
    again = (
        f"`{resume_command(run, vault, config=config, profile=profile)}` continues it without paying again for "
        "the answers it already has"
        if run_id is not None
        else f"`{rerun}` runs it again and reuses, at no cost, every answer this run cached"
    )
    spend = tierflow_command("spend", "--run", run, vault=vault, config=config, profile=profile)
    console.print(
        escape(
            f"run {run} stopped: its {len(rows)} calls ({money(total(rows).cost_usd)}) are in the ledger; "
            f"`{spend}` lists them. Once that is fixed, {again}."
        )
    )
    return ended


def interrupted_ask_message(ledger: Ledger | None, run_id: str) -> str:
    """What an interrupted `tierflow ask` left: the call it had in flight, if it was sent, recorded as `lost` at
    its worst case (the provider may bill it), or nothing spent."""
    try:
        rows = ledger.rows(run_id=run_id) if ledger is not None else []
    except Exception:  # the message matters more than the ledger's own error
        return "interrupted: the call in flight, if it was sent, is recorded as lost (the provider may bill it)."
    # The rows of the attempt in flight: each of its SDK retries that got no answer is one.
    lost = [r for r in rows if r["outcome"] == "lost" and r["attempt"] == rows[-1]["attempt"]] if rows else []
    if not lost or rows[-1]["outcome"] != "lost":
        return "interrupted before the call was sent: it is not recorded and costs nothing."
    usd = None if any(r["cost_usd"] is None for r in lost) else sum(r["cost_usd"] for r in lost)
    worst = "unknown cost" if usd is None else f"${usd:.6f}"
    attempts = "" if len(lost) == 1 else f" ({len(lost)} attempts)"
    return (
        f"interrupted: the call in flight is recorded as lost{attempts}, at its worst case of {worst}, since the "
        "provider may bill it."
    )


def rerun_command(
    flow: str,
    vault: Path,
    *,
    config: Path | str | None = None,
    profile: str | None = None,
    tier: Mapping[str, str] | None = None,
    options: Mapping[str, tuple[str, object]] | None = None,
    params: Mapping[str, object] | None = None,
) -> str:
    """The `tierflow run` command line that runs `flow` again as asked: the options the user set (`options`, as
    `run_flow` takes them: a flag alone when its value is a bool), each `--tier` and each `--param`."""
    words: list[object] = ["run", flow]
    for option, value in (options or {}).values():
        if value is None:
            continue
        words += [option] if isinstance(value, bool) else [option, value]
    for phase, tier_name in (tier or {}).items():
        words += ["--tier", tier_name if phase == "*" else f"{phase}={tier_name}"]
    return tierflow_command(*words, vault=vault, config=config, profile=profile, params=params)


def resume_command(run_id: str, vault: Path, *, config: Path | str | None, profile: str | None) -> str:
    """The `tierflow resume` command line that continues a run."""
    return tierflow_command("resume", run_id, vault=vault, config=config, profile=profile)


PREFECT_DID_NOT_START = "Timed out while attempting to connect to ephemeral Prefect API server"
"""The start of the RuntimeError Prefect raises when its temporary server does not answer in time."""


@contextmanager
def prefect_start_errors() -> Iterator[None]:
    """Turn Prefect's "Timed out ... ephemeral Prefect API server" and "Failed to reach API" tracebacks into one
    paragraph with the fix."""
    try:
        yield
    except RuntimeError as exc:
        if PREFECT_DID_NOT_START in str(exc):
            raise fail(prefect_did_not_start_message(), code=1) from None
        if (unreached := re.search(PREFECT_NOT_REACHED, str(exc))) is not None:
            raise fail(prefect_not_reached_message(unreached.group(1).rstrip(".")), code=1) from None
        raise


PREFECT_NOT_REACHED = r"Failed to reach API at (\S+)"
"""Prefect's error when the server PREFECT_API_URL names does not answer (its URL without credentials)."""


def prefect_not_reached_message(url: str) -> str:
    return (
        f"Prefect's server at {url} (PREFECT_API_URL) did not answer, so nothing was run and nothing was spent. "
        "Start it (`prefect server start`) and run the command again; or point tierflow at the server you use "
        "(`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`); or unset it "
        "(`prefect config unset PREFECT_API_URL`) and each run starts a temporary server of its own."
    )


def prefect_did_not_start_message() -> str:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    waited = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    return (
        f"Prefect's temporary server did not answer within {waited} s, so nothing was run and nothing was "
        "spent. The machine is probably busy (or this is Prefect's first start, which creates its database). "
        "Run the command again with a longer wait, e.g. PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=900, "
        "or start a server once with `prefect server start` and point tierflow at it: "
        "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`."
    )


INTERRUPTED_WAIT_S = 15.0
"""At most how long an interrupted run waits for the temporary server to record its task runs before it exits."""


def wait_for_task_run_records(run_id: str | None, *, patience: float = 120.0) -> None:
    """Wait until Prefect's temporary server has recorded the run's task runs, so that stopping it loses none.

    Task runs reach the server as events, which its task-run recorder writes in batches. When the process exits,
    Prefect stops its temporary server; a recorder still writing then is cancelled mid-write ("Error flushing N
    events" and a CancelledError traceback on the console, and task runs missing from the UI). So, with a
    temporary server only, this polls until every task run tagged with the run is in a final state and their
    count holds across two polls more than a flush interval apart. A server the user runs (PREFECT_API_URL)
    outlives the process and needs no wait; `patience` bounds the wait, after which the exit proceeds.
    """
    from prefect.settings import PREFECT_API_URL

    if not run_id or PREFECT_API_URL.value():
        return
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags

    from tierflow.cli.prefect_ops import every

    mine = TaskRunFilter(tags=TaskRunFilterTags(all_=[f"tierflow-run:{run_id}"]))
    interval = 1.5  # more than PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL (1 s, `prefect_defaults`)
    last: tuple[int, bool] | None = None
    deadline = time.monotonic() + patience
    try:
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                # Every page: the server returns at most 200 task runs per request (PREFECT_SERVER_API_DEFAULT_LIMIT).
                runs = every(client.read_task_runs, task_run_filter=mine)
                seen = (len(runs), all(r.state is not None and r.state.is_final() for r in runs))
                if seen == last and seen[1]:
                    return
                last = seen
                time.sleep(interval)
    except Exception:  # only a courtesy to the UI: the run and its ledger rows are already complete
        return


STOPPED_BY_SIGNAL = ("Execution was aborted by an interrupt signal.", "Execution was aborted by a termination signal.")
"""The crash messages of Prefect's runs stopped by Ctrl-C or SIGTERM (`prefect.states.exception_to_crashed_state`)."""


FLOW_RUN_ENDED_BY = "Encountered exception during execution: %r"
"""The message of Prefect's record (`prefect.flow_engine`) of the error that ended a flow run, traceback attached; a
flow's own `logger.exception(...)` lines are not it, and keep theirs."""


class ExpectedErrorFilter(logging.Filter):
    """Keeps a TierflowError's traceback, and Prefect's echo of its message, off the console; and Prefect's
    "Crash detected!" for a run stopped by Ctrl-C, which tierflow reports in one line of its own; and, unless
    `tracebacks` (`--verbose`), the traceback of any other error that ended a flow run, which `run_flow` names in
    one line (or, when the flow's code did not raise it, shows whole).

    The API handler sits on Prefect's flow- and task-run loggers themselves, so the Prefect log (and the UI)
    still has every traceback; only the console handler, where records propagate to, gets this filter.
    """

    tracebacks = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TierflowError):
            return False
        if record.exc_info and record.msg == FLOW_RUN_ENDED_BY and not self.tracebacks:
            return False  # Prefect's record of the error that ended the flow run: `run_flow` names it in one line
        if record.levelno >= logging.ERROR and record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
            message = record.getMessage()
            if message.endswith(STOPPED_BY_SIGNAL):
                return False
            return not any(f"{name}:" in message or f"{name}(" in message for name in _error_names())
        return True


def _error_names() -> set[str]:
    names, todo = set(), [TierflowError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def tracebacks_to_prefect_log_only(show: bool = False) -> None:
    """Add `ExpectedErrorFilter` to Prefect's console handlers (once Prefect's logging is set up); `show`: the
    tracebacks of errors that end a flow run, other than a TierflowError, stay on the console (`--verbose`)."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict))]
    for logger in loggers:
        for handler in logger.handlers:
            if not isinstance(handler, PrefectConsoleHandler):
                continue
            if not any(isinstance(f, ExpectedErrorFilter) for f in handler.filters):
                handler.addFilter(ExpectedErrorFilter())
            for f in handler.filters:
                if isinstance(f, ExpectedErrorFilter):
                    f.tracebacks = show


def print_summary(vault: Path, summary: Any) -> None:
    out = Console(soft_wrap=True)
    if summary.message:
        out.print(escape(summary.message))
    if summary.phases:
        table = Table(title=f"Spend of run {summary.run_id}")
        columns = ("phase", "tier", "model", "calls", "cache hits", "tokens", "USD", "all-deep USD", "saved")
        for col in columns:
            table.add_column(col, justify="left" if col in ("phase", "tier", "model") else "right")
        for p in summary.phases:
            table.add_row(*(str(p[col]) for col in columns))
        # The tiers, models and money stay whole: a narrow terminal loses the counts first.
        show(out, table, optional=("cache hits", "calls", "tokens", "all-deep USD", "saved"))
    for w in summary.written:
        out.print(
            f"  [green]{w.action:>14}[/]  {escape(str(vault / w.path))}"
            + (f"\n{'':16}{escape(w.message)}" if w.message else "")
        )
    for path, reason in summary.skipped:
        out.print(f"  [yellow]{'skipped':>14}[/]  {escape(path)}: {escape(reason)}")
    if summary.report is not None:
        out.print(f"  [cyan]{'run report':>14}[/]  {escape(str(vault / summary.report.path))}")
    if getattr(summary, "report_error", None):
        out.print(f"  [red]{'run report':>14}[/]  not written: {escape(summary.report_error)}")
    if not getattr(summary, "spend_known", True):
        out.print("Total: unknown (the ledger could not be read).")
    else:
        out.print(f"Total: {summary.tokens} tokens, {money(summary.cost_usd)}.")
    for batch in getattr(summary, "batches", []):
        out.print(f"  [cyan]{'batch':>14}[/]  {escape(batch)}")
    if summary.halted:
        console.print(f"[bold red]stopped early:[/] {escape(summary.halted)}")
    if summary.failed:
        console.print(f"[bold red]failed:[/] {escape(summary.failed)}")
    if summary.pending:
        console.print(f"[bold yellow]batch pending:[/] {escape(summary.pending)}")


def copy_demo_vault(folder: Path | None) -> Path:
    """A fresh copy of the bundled reading-week vault."""
    target = Path(tempfile.mkdtemp(prefix="tierflow-demo-")) / "reading-week" if folder is None else folder
    if target.exists() and not target.is_dir():
        raise fail(f"{target} is a file. Give an empty or new folder for the demo vault.")
    if target.exists() and any(target.iterdir()):
        raise fail(f"{target} is not empty. Give an empty or new folder for the demo vault.")
    try:
        with as_file(files("tierflow.vault_fixtures") / "reading-week") as source:
            shutil.copytree(source, target, dirs_exist_ok=True)
    except OSError as exc:  # a file where a parent folder should be, no permission, a full disk
        raise fail(
            f"cannot copy the demo vault to {target}: {exc.strerror or exc}. Give a folder you can write to, "
            "or no folder (a temporary one)."
        ) from None
    return target


def run_demo(folder: Path | None) -> Path:
    vault = copy_demo_vault(folder)
    console.print(f"Demo vault: [bold]{escape(str(vault))}[/] (a copy of vault_fixtures/reading-week)")
    console.print("Model: tierflow's offline extractive model, so no keys and no network. Output is labelled as such.")
    run_flow("reading-notes", vault, since=DEMO_WEEK[0], until=DEMO_WEEK[1], profile="offline")
    console.print(
        f"\nOpen [bold]{escape(str(vault))}[/] in Obsidian and look in Concepts/Drafts/ and tierflow/Runs/.\n"
        f"The spend ledger: {escape(tierflow_command('spend', '--by', 'phase', vault=vault))}",
        soft_wrap=True,
    )
    return vault
