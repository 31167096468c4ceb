"""How a flow submits a phase task: its route is resolved first, so the task run is created with its tags.

Prefect sets a task run's tags when it creates the run; afterwards only the run's name can change. So the
flow resolves `phase -> complexity -> tier -> model` before submitting, and the task run carries
`phase:`, `complexity:`, `tier:` and `model:` from its first state on. These tags name the ROUTE: the tier
the call was sent to first, whose `tier:` concurrency limit it held. When another tier answered (an
escalation, a budget downgrade) the task run's name starts with `[routed>actual]` and its artifact names the
actual tier and model (`tierflow.core.calls._shown`); filter on the name, not the tags, for the answering tier.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from prefect import Task
from prefect.futures import PrefectFuture
from pydantic import BaseModel

from tierflow.core import telemetry
from tierflow.core.calls import Answer, RunSettings, caller_for, prefect_run_ids
from tierflow.core.checks import Check
from tierflow.core.errors import (
    BatchPending,
    BudgetExceeded,
    LedgerError,
    LedgerUnreachable,
    OutputLimitReached,
    ProviderAuthError,
    ProviderError,
    VaultError,
    mark_run,
)
from tierflow.core.progress import advance as _advance
from tierflow.core.progress import flush_progress, prefect_progress
from tierflow.core.routing import Route
from tierflow.core.slots import started_task_runs

R = TypeVar("R")


def advance(phase: str, done: int, total: int, subject: str = "", *, note: str = "") -> None:
    """Tell the CLI's progress bars and the flow run's Prefect progress artifact; `note`: why a phase ended
    short of its total (the CLI's bar shows it where it shows the subject)."""
    _advance(phase, done, total, subject or note)
    prefect_progress(phase, done, total, subject, note=note)


T = TypeVar("T")


def phase_route(
    settings: RunSettings,
    *,
    phase: str,
    complexity: str,
    front_matter: Mapping[str, Any] | None = None,
    note: str = "",
) -> Route:
    return caller_for(settings).route(phase, complexity, front_matter=front_matter, note=note)


def phase_task(
    task: Task[..., R],
    settings: RunSettings,
    *,
    phase: str,
    complexity: str,
    subject: str,
    front_matter: Mapping[str, Any] | None = None,
    note: str = "",
) -> Task[..., R]:
    """`task`, named `<phase> · <subject>` and tagged with its route, ready to call or `.submit()`."""
    routed = phase_route(settings, phase=phase, complexity=complexity, front_matter=front_matter, note=note)
    return task.with_options(
        name=f"{phase}",
        task_run_name=f"{phase} · {subject}"[:100],
        tags=sorted(routed.tags | set(run_tags(settings))),
    )


def warm_tag_limits(task: Task[..., Any], settings: RunSettings) -> None:
    """Ask Prefect whether a phase's task runs would wait on a tag limit, before the phase fans out.

    Prefect's task engine asks the server about a task run's tags before the run starts, and every task run of
    the phase waits on that one answer (Prefect then remembers a tag set without limits for five seconds). Asked
    from inside the fan-out, the question queued behind the server's work on the task runs' own events: the first
    model call started 2-3 s after the phase on a loaded machine, against 0.06 s when the phase asks first
    (`benchmarks/tier_throughput.py`, `ledger, cold`). Under `[limits] mechanism = "prefect"` the tags have
    limits and nothing is remembered, so it is skipped; a failure here costs only the speed-up. Like the engine's
    own check it asks quietly: Prefect's public `concurrency()` would log "Concurrency limits [...] do not exist
    - skipping acquisition" as a WARNING on every phase of every run, though no limit is the normal case.
    """
    if caller_for(settings).config.settings.limits.mechanism != "ledger" or not task.tags:
        return
    import uuid

    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency._sync import concurrency  # the task engine's own, which can ask quietly

    holder = ConcurrencyLeaseHolder(type="task_run", id=uuid.uuid4())
    try:  # the same names and holder kind as the task engine's check, so Prefect caches the same answer
        with concurrency([f"tag:{tag}" for tag in task.tags], holder=holder, max_retries=0, suppress_warnings=True):
            pass
    except Exception:  # a tag limit that is full, or no server: the task runs ask for themselves
        return


TAG_ANSWER_REFRESH_S = 2.0
"""How often a fan-out asks the Prefect server again about its task runs' tags while it runs."""


class TagAnswers:
    """Keeps Prefect's answer about a fan-out's tag sets fresh from one background thread until `stop`.

    Prefect's task engine remembers a tag set without limits for five seconds; a task run that starts once the
    answer has lapsed asks the server itself and waits. On a loaded machine that answer took 2-7 s, the phase's
    started task runs ran out meanwhile and its tier slots sat idle (`benchmarks/tier_throughput.py`: "no call
    waiting yet", "questions to the Prefect server"). So while the fan-out runs, this asks the server every
    `TAG_ANSWER_REFRESH_S`, past the remembered answer, and remembers a "no limits" answer as the engine does.
    """

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        self.tasks: dict[frozenset[str], Task[..., Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, task: Task[..., Any]) -> None:
        """Ask about `task`'s tags now if they are new to this fan-out (`warm_tag_limits`), and keep them fresh."""
        key = frozenset(task.tags)
        if key in self.tasks:
            return
        warm_tag_limits(task, self.settings)
        self.tasks[key] = task
        if self._thread is None and caller_for(self.settings).config.settings.limits.mechanism == "ledger":
            context = contextvars.copy_context()  # the flow's Prefect settings and client
            self._thread = threading.Thread(
                target=context.run, args=(self._refresh,), name="tierflow-tag-answers", daemon=True
            )
            self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(TAG_ANSWER_REFRESH_S):
            for task in list(self.tasks.values()):
                if task.tags:
                    _ask_again(sorted(task.tags))

    def stop(self) -> None:
        self._stop.set()  # not joined: a slow answer must not hold the phase


def _ask_again(tags: list[str]) -> None:
    """Ask the server whether `tags` have limits, past Prefect's remembered answer, and remember "none" for the
    task engine (its own cache, under the key it reads); a limit that exists gets its slot back at once."""
    import uuid

    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.objects import ConcurrencyLeaseHolder
        from prefect.concurrency import services

        names = [f"tag:{tag}" for tag in tags]
        holder = ConcurrencyLeaseHolder(type="task_run", id=uuid.uuid4())
        with get_client(sync_client=True) as client:
            answer = client.increment_concurrency_slots_with_lease(
                names=names, slots=1, mode="concurrency", lease_duration=60, holder=holder
            ).json()
            if answer.get("limits"):
                client.release_concurrency_slots_with_lease(answer["lease_id"])
                return
        with services._cache_lock:
            services._no_limits_cache[frozenset(names)] = True
    except Exception:  # a full limit, no server, another Prefect: the task runs ask for themselves
        return


def run_tags(settings: RunSettings) -> list[str]:
    """The tags that tell one tierflow run from another in the Prefect UI: vault, profile, project and run id."""
    tags = [f"profile:{run_profile(settings)}", f"tierflow-run:{settings.run_id}"]
    if settings.vault:
        tags.append(f"vault:{Path(settings.vault).name}")
    if settings.project:
        tags.append(f"project:{settings.project}")
    return sorted(tags)


def run_profile(settings: RunSettings) -> str:
    """The profile a run's tiers come from: `--profile`, else the config's `profile =`, else `config` when the
    config file defines tiers or providers of its own over the built-in (offline) profile."""
    if settings.profile:
        return settings.profile
    config = caller_for(settings).config
    own = str(config.path) if config.path else None
    if config.sources.get("profile") == "default" and any(
        key.startswith(("tiers.", "providers.")) and source == own for key, source in config.sources.items()
    ):
        return "config"
    return config.settings.profile


@contextmanager
def run_span(settings: RunSettings) -> Iterator[None]:
    """The OpenTelemetry span around a flow run (a no-op unless OTEL_EXPORTER_OTLP_ENDPOINT is set). At its end
    the run's progress artifact, sent in the background while the phases ran, has reached Prefect, and the stop its
    phases remembered is let go (`_stopped`). An error that leaves it names the run (`errors.run_of`): a TierflowError,
    or a bug in the flow's own code."""
    flow_run_id, _ = prefect_run_ids()
    with telemetry.flow_run_span(
        run_id=settings.run_id, flow=settings.flow, project=settings.project, flow_run_id=flow_run_id
    ):
        try:
            yield
        except Exception as exc:
            # The run it ended, for the CLI to say where its calls are: a flow may choose its own run id.
            mark_run(exc, settings.run_id)
            raise
        finally:
            flush_progress()
            _forget_stops()


def attribute(settings: RunSettings, *folders: str, project: str | None = None) -> RunSettings:
    """The run's settings with the project its spend is charged to, and the Prefect deployment that started it.

    The project is `project` (`--project`), else the config's choice for the run's folders
    (`Config.project_for`: `[project.folders]`, a course code in the path, `[project] name`).
    """
    config = caller_for(settings).config
    return settings.model_copy(
        update={"project": config.project_for(*folders, explicit=project), "deployment": _deployment_name()}
    )


def _deployment_name() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    deployment_id = context.flow_run.deployment_id if context and context.flow_run else None
    if deployment_id is None:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    return f"{context.flow.name}/{deployment.name}" if context.flow else deployment.name


def label_flow_run(settings: RunSettings, name: str | None = None) -> None:
    """Give the current flow run the run's tags and, once it is known, a name with the resolved window.

    Prefect fixes a run's tags when the run is created from a deployment or a schedule, before tierflow knows
    its vault, profile or run id, and names it from the raw parameters (`None to None`); both are updated here.
    """
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    from prefect.client.orchestration import get_client

    tags = sorted(set(context.flow_run.tags) | set(run_tags(settings)))
    with get_client(sync_client=True) as client:
        client.update_flow_run(context.flow_run.id, name=name, tags=tags)


@dataclass
class PhaseOutcome(Generic[R]):
    """What a fanned-out phase produced, what it skipped and why, and whether a budget halted it."""

    results: list[R] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    halted: str | None = None
    failed: str | None = None
    batches: list[str] = field(default_factory=list)
    """Provider batch ids this phase submitted or is waiting on."""
    pending: str | None = None
    """Its batch is still running, as the run chose (`--no-wait`): no failure, but later phases wait for
    `tierflow resume RUN`, which collects it."""
    ledger_gone: str | None = None
    """The ledger stayed away longer than the run waits for it (`ledger_outage_s`): its error. The phase failed."""


@dataclass(frozen=True)
class _Stop:
    phase: str
    halted: str | None
    failed: str | None
    pending: str | None = None


_stops: dict[tuple[str, str, int], _Stop] = {}
"""The first phase that failed or that a budget halted, per run id and attempt of a Prefect flow run, in this
process, oldest first."""
_stops_lock = threading.Lock()
MAX_STOPS = 256
"""The stops a process remembers at most: a long-lived worker (`prefect serve`) runs flows of your own that need not
end in `run_span`, which lets go of its own; past this many the oldest are dropped."""


def _stop_key(settings: RunSettings) -> tuple[str, str, int] | None:
    """The attempt of the flow run a phase belongs to. A resumed run (a new flow run of the same run id) starts
    afresh, and so does a Prefect retry of the flow run (`@flow(retries=...)`): the same flow run, its next
    attempt (`run_count`)."""
    flow_run_id, attempt = _flow_attempt()
    return (settings.run_id, flow_run_id, attempt) if flow_run_id else None


def _flow_attempt() -> tuple[str | None, int]:
    """The current Prefect flow run's id and attempt (`FlowRunContext.flow_run.run_count`: 1, then 2 on the first
    retry); the attempt is 0 where only a task run's context tells the flow run."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None:
        return str(context.flow_run.id), context.flow_run.run_count
    return prefect_run_ids()[0], 0


def _stopped(settings: RunSettings, phase: str) -> PhaseOutcome[Any] | None:
    """The outcome of a phase that is not started because an earlier phase of its flow run stopped the run;
    None when none did. A flow need not check `RunSummary.stopped` to pay for no phase on nothing."""
    key = _stop_key(settings)
    if key is None:
        return None
    with _stops_lock:
        for earlier in [k for k in _stops if k[1] == key[1] and k[2] < key[2]]:
            del _stops[earlier]  # an earlier attempt's: this retry never looks at it again
        stop = _stops.get(key)
    if stop is None:
        return None
    if stop.failed:
        why = f"the {stop.phase} phase failed"
    elif stop.halted:
        why = f"a budget halted the {stop.phase} phase"
    else:
        why = (
            f"the {stop.phase} phase's batch is still running; `{settings.resume_command()}` goes on once it is "
            "collected"
        )
    return PhaseOutcome(
        skipped=[(phase, f"not started: {why}")], halted=stop.halted, failed=stop.failed, pending=stop.pending
    )


def _remember(settings: RunSettings, phase: str, outcome: PhaseOutcome[R]) -> PhaseOutcome[R]:
    """`outcome`, remembered as its flow run attempt's stop when it failed or was halted (the first one only)."""
    key = _stop_key(settings)
    if key and (outcome.failed or outcome.halted or outcome.pending):
        with _stops_lock:
            _stops.setdefault(key, _Stop(phase, outcome.halted, outcome.failed, outcome.pending))
            while len(_stops) > MAX_STOPS:
                del _stops[next(iter(_stops))]
    return outcome


def _forget_stops() -> None:
    """At the end of a flow run: let go of its stops (every attempt's), which nothing reads any more."""
    flow_run_id, _ = _flow_attempt()
    if not flow_run_id:
        return
    with _stops_lock:
        for key in [k for k in _stops if k[1] == flow_run_id]:
            del _stops[key]


def _ended_short(phase: str, total: int, outcome: PhaseOutcome[Any], failed: int) -> None:
    """A phase's last progress when not every item finished: the items that did, and why the others did not.

    Items are counted as they are gathered, failed and halted ones too; left at that, a phase a budget halted
    ended on `10/10`."""
    why = [f"{failed} failed"] if failed else []
    if outcome.halted:
        why.append("halted by budget")
    elif outcome.pending:
        why.append("waiting for its batch")
    if why:
        advance(phase, len(outcome.results), total, note=", ".join(why))


def fan_out(
    task: Task[..., R],
    settings: RunSettings,
    items: Sequence[T],
    *,
    phase: str,
    complexity: str,
    subject: Callable[[T], str],
    args: Callable[[T], tuple[Any, ...]],
    front_matter: Callable[[T], Mapping[str, Any] | None] = lambda _: None,
    path: Callable[[T], str] = lambda _: "",
    warm: bool = False,
) -> PhaseOutcome[R]:
    """Submit one tagged task per item, at most `[run] workers` unfinished at once (at least twice the largest
    ledger-enforced tier `concurrency`: `slots.started_task_runs`), and gather them as they finish.

    The bound is a sliding window here, not a smaller task runner: the worker count comes from the vault's
    config, known only once the run has started, and it holds under any task runner (threads or Dask). A
    week of thousands of notes therefore never has thousands of task runs competing for the ledger's
    connections (`pool_size(workers)`, see `tierflow.core.ledger`).

    A provider failure or malformed answer skips that item with its reason and the rest go on; when no item
    finishes, for whatever reason, the phase fails (`failed`: the run exits 3). A budget halt stops the phase:
    finished items are kept, unfinished ones are listed as not done. After either, no later phase of the flow run
    starts (`_stopped`). With `warm` (the
    items' prompts share a cacheable prefix), the first item runs alone and the rest fan out once it has
    answered: the provider writes the prefix to its cache once, and every other call reads it, where
    calls started together would each pay the cache write.
    """
    stopped = _stopped(settings, phase)
    if stopped is not None:
        return stopped
    outcome: PhaseOutcome[R] = PhaseOutcome()
    workers = started_task_runs(caller_for(settings).config)
    finished_queue: queue.SimpleQueue[PrefectFuture[R]] = queue.SimpleQueue()
    indices: dict[PrefectFuture[R], int] = {}
    finished: dict[int, R] = {}
    unanswered: list[str] = []  # the provider's errors, one per item that got none
    keyless = 0  # of them, a key missing or refused: no waiting helps
    cut_off: list[str] = []  # items whose every answer was cut off at the config's output limit
    errors: dict[int, str] = {}  # why each failed item failed, by its place in `items`
    ledger_gone: str | None = None  # the ledger stayed away longer than the run waits: nothing more is started
    advance(phase, 0, len(items))
    if items:  # the one-off work of the first calls, while Prefect starts their task runs (`Caller.warm`)
        route_first = lambda: phase_route(  # noqa: E731
            settings, phase=phase, complexity=complexity, front_matter=front_matter(items[0]), note=path(items[0])
        )
        threading.Thread(target=_warm, args=(settings, route_first), name="tierflow-warm", daemon=True).start()
    submitted = done = 0
    answers = TagAnswers(settings)
    try:
        # Once a budget halts the phase, or the ledger is gone, nothing more is submitted: the items already running
        # finish.
        while done < submitted or (submitted < len(items) and outcome.halted is None and ledger_gone is None):
            # Alone until the first answer when warming the cache, then up to `workers` at once.
            window = 1 if warm and done == 0 else workers
            while (
                outcome.halted is None and ledger_gone is None and submitted < len(items) and submitted - done < window
            ):
                item = items[submitted]
                tagged = phase_task(
                    task,
                    settings,
                    phase=phase,
                    complexity=complexity,
                    subject=subject(item),
                    front_matter=front_matter(item),
                    note=path(item),
                )
                answers.add(tagged)  # asks before the first task run of each tag set, and keeps it fresh
                future = tagged.submit(*args(item))
                indices[future] = submitted
                future.add_done_callback(finished_queue.put)
                submitted += 1
            future = finished_queue.get()
            done += 1
            item = items[indices[future]]
            name = path(item) or subject(item)
            try:
                finished[indices[future]] = future.result()
            except BudgetExceeded as exc:
                outcome.halted = outcome.halted or str(exc)
                outcome.skipped.append((name, f"not done: budget halted the {phase} phase"))
            except (ProviderError, VaultError, LedgerError) as exc:
                errors[indices[future]] = str(exc)
                if isinstance(exc, LedgerUnreachable) and exc.gave_up:
                    # Away longer than the run waits (`ledger_outage_s`): every later call would fail the same way.
                    # The phase fails naming the ledger once; each item says only that the ledger was not there.
                    outcome.skipped.append((name, f"{phase} failed: the ledger could not be reached"))
                    ledger_gone = ledger_gone or str(exc)
                else:
                    outcome.skipped.append((name, f"{phase} failed: {exc}"))
                if isinstance(exc, OutputLimitReached):
                    cut_off.append(str(exc))
                elif isinstance(exc, ProviderError):
                    unanswered.append(str(exc))
                    keyless += isinstance(exc, ProviderAuthError)
            except (
                Exception
            ) as exc:  # a bug or an input nobody foresaw: this item is lost, the others and the report are not
                outcome.skipped.append((name, f"{phase} failed unexpectedly: {type(exc).__name__}: {exc}"))
                errors[indices[future]] = f"{type(exc).__name__}: {exc}"
            advance(phase, done, len(items), subject(item))
    finally:
        answers.stop()
    why = "the ledger could not be reached" if ledger_gone else f"budget halted the {phase} phase"
    for item in items[submitted:]:
        outcome.skipped.append((path(item) or subject(item), f"not done: {why}"))
    # Input order, not completion order: later prompts (and so their cache keys) must not depend on timing.
    outcome.results = [finished[i] for i in sorted(finished)]
    _ended_short(phase, len(items), outcome, len(errors))
    if ledger_gone and not outcome.halted:
        outcome.failed, outcome.ledger_gone = f"{phase} failed: {ledger_gone}", ledger_gone
    elif errors and not outcome.results and not outcome.halted:
        # Nothing to go on with: the run fails (exit 3) so that a scheduled run's failure is seen, and the flow
        # starts no later phase on empty input (`RunSummary.stopped`).
        if keyless == len(errors):  # the key: waiting for the provider would not help
            outcome.failed = (
                f"{phase} failed: no item got an answer; the provider's key was missing or refused for all "
                f"{keyless} (the first: {unanswered[0].rstrip('.')}). Set the key and rerun: finished answers are "
                "reused, not paid again."
            )
        elif len(unanswered) == len(errors):  # an outage, not a bad item
            outcome.failed = (
                f"{phase} failed: no item got an answer; {len(unanswered)} of {len(items)} failed at the provider "
                f"(the first: {unanswered[0]}). Rerun once it answers: finished answers are reused, not paid again."
            )
        elif len(cut_off) == len(errors):  # the config's output limit: waiting for the provider would not help
            # The error names the limits tried, the keys to raise, and that a rerun alone is cut off again.
            outcome.failed = (
                f"{phase} failed: no item finished; the answers for {len(cut_off)} of {len(items)} were cut off at "
                f"the config's output limit (the first: {cut_off[0].rstrip('.')})."
            )
        else:  # a bug, a template that no longer renders, notes that cannot be written: the same for every item
            outcome.failed = (
                f"{phase} failed: no item finished; all {len(errors)} failed "
                f"(the first: {errors[min(errors)].rstrip('.')}). "
                "Each item's reason is under Skipped. Fix the cause and rerun: answers already paid for are reused."
            )
    return _remember(settings, phase, outcome)


def _warm(settings: RunSettings, route_first: Callable[[], Route]) -> None:
    try:
        caller_for(settings).warm(route_first())
    except Exception:  # a route that fails fails its item's task run, with its own error
        return


def single(
    task: Task[..., R],
    settings: RunSettings,
    *args: Any,
    phase: str,
    complexity: str,
    subject: str,
) -> PhaseOutcome[R]:
    """Run one tagged phase task; a failure fails the phase with its cause, and the run goes on to report."""
    stopped = _stopped(settings, phase)
    if stopped is not None:
        return stopped
    outcome: PhaseOutcome[R] = PhaseOutcome()
    advance(phase, 0, 1)
    try:
        outcome.results.append(phase_task(task, settings, phase=phase, complexity=complexity, subject=subject)(*args))
    except BudgetExceeded as exc:
        outcome.halted = str(exc)
    except BatchPending as exc:
        outcome.pending = str(exc)
    except OutputLimitReached as exc:  # the config's limit, which its error names: a rerun alone meets it again
        outcome.failed = (
            f"{phase} failed: {exc}. Earlier phases are kept; once the limit is raised, a rerun continues from them."
        )
    except ProviderError as exc:
        # Earlier phases' answers are cached in the ledger: a rerun after the fix does not pay for them again.
        outcome.failed = f"{phase} failed: {exc}. Earlier phases are kept; rerun to continue from them."
    except VaultError as exc:  # its note was not written (`NoteNotWritten`), the cause and fix named: as `fan_out`
        outcome.skipped.append((subject, f"{phase} failed: {exc}"))
        outcome.failed = f"{phase} failed: {exc}"
    except LedgerError as exc:  # its error names the ledger and the fix (a full disk: free space on it)
        outcome.failed = f"{phase} failed: {exc}"
        if isinstance(exc, LedgerUnreachable):  # it went away for good (`ledger_outage_s`): the run says how to go on
            outcome.ledger_gone = str(exc)
    except Exception as exc:  # the run still reports what it spent, and says what broke
        outcome.failed = (
            f"{phase} failed unexpectedly ({type(exc).__name__}: {exc}). Earlier phases are kept in the ledger "
            "and the answer cache; the traceback is in the Prefect log."
        )
    if outcome.results:
        advance(phase, 1, 1, subject)
    else:
        _ended_short(phase, 1, outcome, 1 if outcome.failed else 0)
    return _remember(settings, phase, outcome)


@contextmanager
def begin_run(
    flow: str,
    *,
    vault: str,
    parameters: Mapping[str, Any] | None = None,
    folders: Sequence[str] | Callable[[RunSettings], Sequence[str]] = (),
    project: str | None = None,
    config: str | None = None,
    profile: str | None = None,
    tier: dict[str, str] | None = None,
    run_id: str | None = None,
    name: str | Callable[[RunSettings], str] | None = None,
    retry_failed: bool = False,
) -> Iterator[RunSettings]:
    """A flow's run, from inside its Prefect flow: the settings every phase task takes.

    It starts the run (`RunSettings.start`, remembered with `parameters` for `tierflow resume`), charges it
    to the project of `folders` (or `project`), tags and names the Prefect flow run (`name`), and wraps it
    in the run's span. `folders` and `name` may be functions of the settings, when the config decides them.
    """
    settings = RunSettings.start(
        flow, vault=vault, config=config, profile=profile, tier=tier, run_id=run_id,
        parameters={**(parameters or {}), "project": project}, retry_failed=retry_failed,
    )  # fmt: skip
    settings = attribute(settings, *(folders(settings) if callable(folders) else folders), project=project)
    with run_span(settings):
        label_flow_run(settings, name(settings) if callable(name) else name)
        yield settings


@dataclass(frozen=True)
class Phase:
    """A phase of a flow with its complexity: how its tasks are routed, tagged and gathered.

    `Phase("collate", "low").each(task, settings, items, ...)` fans one task out per item (`fan_out`);
    `.once(task, settings, *args, subject=...)` runs one (`single`). Both return a `PhaseOutcome`. Inside the
    task, `.ask(settings, system=..., prompt=..., output=...)` is `Caller.ask` for this phase and complexity.
    """

    name: str
    complexity: str

    def each(
        self,
        task: Task[..., R],
        settings: RunSettings,
        items: Sequence[T],
        *,
        subject: Callable[[T], str],
        args: Callable[[T], tuple[Any, ...]],
        **options: Any,
    ) -> PhaseOutcome[R]:
        return fan_out(
            task, settings, items, phase=self.name, complexity=self.complexity, subject=subject, args=args, **options
        )

    def once(self, task: Task[..., R], settings: RunSettings, *args: Any, subject: str) -> PhaseOutcome[R]:
        return single(task, settings, *args, phase=self.name, complexity=self.complexity, subject=subject)

    def ask(
        self,
        settings: RunSettings,
        *,
        system: str,
        prompt: str,
        output: type[BaseModel] | None = None,
        cache_prefix: str = "",
        subject: str = "",
        front_matter: Mapping[str, Any] | None = None,
        note: str = "",
        routed: Route | None = None,
        checks: Sequence[Check] = (),
        retry_failed: bool | None = None,
    ) -> Answer:
        """One call in this phase, at its complexity: `caller_for(settings).ask(phase=..., complexity=..., ...)`.

        `output` a pydantic model makes the answer structured (its `.parsed`); `checks` are run on the answer,
        which is retried, then sent a tier up, until it passes; `subject` names the call in the ledger and logs.
        """
        return caller_for(settings).ask(
            phase=self.name, complexity=self.complexity, system=system, prompt=prompt, output=output,
            cache_prefix=cache_prefix, subject=subject, front_matter=front_matter, note=note, routed=routed,
            checks=checks, retry_failed=retry_failed,
        )  # fmt: skip
