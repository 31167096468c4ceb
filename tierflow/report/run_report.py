"""The run report: a note in the vault, and the same spend table and summary as Prefect artifacts.

Any flow ends with `write_run_report` (public as `tierflow.write_run_report`), so it lives below the flows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import yaml
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tierflow.core import clock
from tierflow.core.budget import BudgetState, Forecast
from tierflow.core.calls import _RANK, NOT_USED, RunSettings, caller_for
from tierflow.core.commands import tierflow_command
from tierflow.core.config import Config
from tierflow.core.errors import LedgerError, LedgerUnreachable, TierflowError, VaultError
from tierflow.core.phases import PhaseOutcome
from tierflow.core.progress import artifact_key
from tierflow.learn.signals import scan
from tierflow.report.spend import money, phase_spend, savings_text, share_rows, spend_by, total, with_all_deep
from tierflow.vault.links import VaultNames
from tierflow.vault.notes import NoteWriter, WriteResult, ownership, template_env
from tierflow.vault.text import load_note

T = TypeVar("T")


@dataclass
class RunSummary:
    """What a run did: for the CLI, the tests and the flow run's return value."""

    run_id: str
    flow: str
    written: list[WriteResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    halted: str | None = None
    failed: str | None = None
    report: WriteResult | None = None
    report_error: str | None = None
    """Why the report note could not be written (a full disk): the console then shows all it would have said."""
    tokens: int = 0
    cost_usd: float = 0.0
    phases: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    batches: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    """Answers kept although no tier passed their checks (`phase · subject: ...`): the run needs review."""
    pending: str | None = None
    """A phase's batch is still running, as the run chose (`--no-wait`): `tierflow resume RUN` goes on."""
    ledger_error: str | None = None
    """The ledger could not be reached (it stayed away longer than the run waits, `ledger_outage_s`): its error. The
    run failed, and answers that arrived meanwhile are not recorded."""
    spend_known: bool = True
    """False when the report could not read the run's calls from the ledger: `tokens` and `cost_usd` are not its
    spend."""

    @property
    def stopped(self) -> bool:
        """A budget halted the run, a phase failed or its batch is still running: later phases must not start."""
        return bool(self.halted or self.failed or self.pending)

    def absorb(self, outcome: PhaseOutcome[T]) -> list[T]:
        """Take a phase's skips and stops into the run; returns what it finished."""
        self.skipped += outcome.skipped
        self.batches += [b for b in outcome.batches if b not in self.batches]
        self.halted = self.halted or outcome.halted
        self.failed = self.failed or outcome.failed
        self.pending = self.pending or outcome.pending
        self.ledger_error = self.ledger_error or outcome.ledger_gone
        return outcome.results


def _closed_loop(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Attempts that failed or escalated, and the answers kept although no tier passed their checks.

    A call's attempts are its task run's rows for one phase and subject. Shadow calls (a tier tried beside a
    passing answer, `route_rule` `shadow: ...`) never answer, nor does a cached answer that failed a check added
    since it was cached (`route_rule` `not used: ...`: the call was made afresh, and may have failed). When no
    attempt passed, the answer kept is the best-ranked one, the first among equals, as `Caller.resolve` keeps it
    (`Attempt.rank`): a billed one when there are any, else the cached answer an earlier run kept.
    """
    retries = [r for r in rows if r["outcome"] != "ok" or r["escalated_from"]]
    calls: dict[tuple[Any, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if not str(r["route_rule"] or "").startswith(("shadow:", NOT_USED)):
            calls.setdefault((r["task_run_id"], r["phase"], r["subject"]), []).append(r)
    kept = []
    for attempts in calls.values():
        if any(r["outcome"] == "ok" for r in attempts):
            continue
        # Billed first: a rejected cached answer recorded before it was marked `not used:` is not the one kept.
        candidates = [r for r in attempts if not r.get("cached_result")] or attempts
        best = max(candidates, key=lambda r: (_RANK.get(r["outcome"], 0), -len(_names(r["checks_failed"])), -r["id"]))
        if best["outcome"] != "check_failed":
            continue  # unreadable on every attempt: the call failed, nothing was kept
        kept.append(
            f"{best['phase']} · {best['subject'] or '-'}: kept from {best['provider']}:{best['model']} "
            f"({best['outcome']}: {best['checks_failed']})"
        )
    return retries, kept


def _names(checks_failed: str | None) -> list[str]:
    return [n for n in (checks_failed or "").split(",") if n]


class RunStopped(TierflowError):
    """A run that a budget halted or a phase failed: its message is the reason and `.summary` the RunSummary,
    report included. It is the data of the flow run's Failed state (`final_state`), so calling such a flow from
    Python raises it."""

    def __init__(self, summary: RunSummary) -> None:
        self.summary = summary
        self.run_id = summary.run_id
        super().__init__(summary.halted or summary.failed or "the run stopped")

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect persists a state's data when results are persisted: rebuilt from the summary, not the message.
        return (type(self), (self.summary,))


def final_state(summary: RunSummary) -> Any:
    """What a flow returns, so that the Prefect UI shows how its run ended: a Failed state whose message is the reason
    when a budget halted the run or a phase failed (its data a `RunStopped` carrying the summary); a Completed
    state named "Needs review" when answers were kept although no tier passed their checks (the caller still gets
    the summary); a Completed state named "Batch pending" when a batch is still running as the run chose
    (`--no-wait`); else the summary."""
    from prefect.states import Completed, Failed

    if summary.halted or summary.failed:
        stopped = RunStopped(summary)
        return Failed(message=str(stopped), data=stopped)
    if summary.pending:
        return Completed(name="Batch pending", message=summary.pending, data=summary)
    if not summary.kept:
        return summary
    return Completed(
        name="Needs review",
        message=f"{len(summary.kept)} answer(s) kept although no tier passed their checks; see the run report",
        data=summary,
    )


@task(name="run report", task_run_name="report · {summary.flow}")
def write_run_report(
    settings: RunSettings,
    summary: RunSummary,
    *,
    since: date | None,
    until: date | None,
    selected: int,
) -> RunSummary:
    """Write this run's report note and the day's index note, and the Prefect artifacts; returns the summary.

    A run has one report note, of the day it started: a resumed run (`tierflow resume`, on any day) updates the note
    it wrote before, as `NoteWriter` updates any note of its own, and the index of that day lists the run once.
    """
    caller = caller_for(settings)
    config = caller.config
    rows: list[dict[str, Any]] | None = None
    states: list[BudgetState] = []
    first_started = None
    try:
        # The person's edits and ratings of earlier drafts become routing evidence at every run.
        scan(Path(settings.vault or "."), caller.ledger)
        rows = with_all_deep(config, caller.ledger.rows(run_id=settings.run_id))
        first_started = caller.ledger.run_started(settings.run_id)
        states = caller.budgets.states()
    except LedgerError as exc:
        if rows is None:
            # The ledger went away for good (past `ledger_outage_s`), or refused a write (a full disk): the report,
            # the one record of the run then, says what the run did and that its spend is not known, and the run fails.
            rows = []
            summary.spend_known = False
            if isinstance(exc, LedgerUnreachable):  # not a full disk, whose error names its own fix
                summary.ledger_error = summary.ledger_error or str(exc)
            summary.failed = summary.failed or f"the run's spend could not be read: {exc}"
        else:  # gone once the run's calls were read: its spend is known, only the budgets' table is left out
            get_run_logger().warning("the budgets' states could not be read: %s", exc)
    summary.batches = list(dict.fromkeys(summary.batches + [r["batch_id"] for r in rows if r["batch_id"]]))
    phases = phase_spend(rows)
    overall = total(rows)
    values = spend_by(rows, "value")
    all_deep, savings = savings_text(overall.cost_usd, overall.all_deep_usd)
    zone = ZoneInfo(config.settings.vault.timezone)
    vault = Path(settings.vault or ".")
    runs_folder = config.settings.vault.runs_folder
    # When the run started, which names its report and its day: as its report says it, when it wrote one (a report an
    # earlier tierflow wrote, named for when that report was written, is found again), else as the ledger remembers
    # the run's start, else now.
    started = (
        reported_start(vault / runs_folder, settings.run_id)
        or (first_started.astimezone(zone) if first_started else None)
        or clock.now().astimezone(zone)
    )
    day = started.date().isoformat()
    budgets = [
        {
            "name": b.name,
            "scope": b.scope,
            "policy": b.policy,
            "limit": money(b.limit_usd) if b.limit_usd is not None else f"{b.limit_tokens} tokens",
            "spent": money(b.spent_usd) if b.limit_usd is not None else f"{b.spent_tokens} tokens",
            "reserved": money(b.reserved_usd) if b.limit_usd is not None else f"{b.reserved_tokens} tokens",
        }
        for b in states
    ]
    # Once per draft and downgrade, however many of its attempts it took.
    downgrades = list(
        dict.fromkeys(
            f"{r['phase']} · {r['subject']}: {r['downgraded_from']} -> {r['tier']}"
            for r in rows
            if r["downgraded_from"]
        )
    )
    retries, kept = _closed_loop(rows)
    lost = lost_calls(rows)
    summary.kept = kept
    env = template_env(config.vault, config.settings.vault.templates_folder)
    written = [
        {"link": Path(w.path).with_suffix("").as_posix(), "action": w.action, "message": w.message}
        for w in summary.written
    ]
    names = VaultNames.scan(vault)
    # A note of the run's day: a report a person edited is kept, and the resumed run's report is its sibling dated
    # that day, one sibling however many days later the run is resumed.
    writer = NoteWriter(vault, runs_folder, today=started.date(), names=names)
    # The report links the day's index note, written just after it: its name is taken already.
    names.add(writer.target(day_index_title(day)).relative_to(writer.vault.resolve()).as_posix())
    context = {
        "flow": summary.flow,
        "run_id": settings.run_id,
        "started": started.strftime("%Y-%m-%d %H:%M"),
        "flow_run_url": flow_run_url(),
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "selected": selected,
        "providers": providers_used(config, rows),
        "project": settings.project,
        "total": {
            "tokens": overall.tokens,
            "cost": money(overall.cost_usd) + (f" (+{overall.unpriced} unpriced calls)" if overall.unpriced else ""),
        }
        if summary.spend_known
        else {"tokens": "unknown", "cost": "USD unknown (the ledger could not be read)"},
        "all_deep": all_deep,
        "savings": savings if summary.spend_known else None,
        "halted": summary.halted or summary.failed,
        "pending": summary.pending,
        "lost": lost,
        "phases": [p.table_row() for p in phases],
        "totals": overall.table_row() if phases else None,
        # Free runs (offline, local) still show where the tokens went.
        "shares": share_rows(phases),
        "share_unit": "USD" if overall.cost_usd > 0 else "tokens",
        # Spend per value class, only when the run's calls were of more than one value.
        "values": [
            {**v.table_row("value"), "per_value": money(v.usd_per_value_unit), "weighted": f"{v.value_units:g}"}
            for v in values
        ]
        if len(values) > 1
        else [],
        "budgets": budgets,
        "downgrades": downgrades,
        "retries": retries,
        "kept": kept,
        "written": written,
        "skipped": [{"path": p, "reason": r} for p, r in summary.skipped],
        "batches": summary.batches,
        "message": "\n\n".join(filter(None, [summary.message, ledger_gone_note(settings, summary)])),
        "day_index": Path(writer.target(day_index_title(day))).stem,
    }
    # The reasons and messages quote errors, which may quote a link that does not resolve (the reason a note was
    # not written): as text, so that the report, the one record of the run, is always written.
    body = names.unlink_unresolved(env.get_template("notes/run-report.md.j2").render(**context))
    front_matter = {
        "title": f"{summary.flow} run {settings.run_id}",
        "tags": ["tierflow/run"],
        "tierflow_run": settings.run_id,
        "tierflow_flow": summary.flow,
        "tierflow_project": settings.project or "",
        "tierflow_day": day,
        "tierflow_started": started.isoformat(timespec="seconds"),
        # Unknown (null) when the ledger could not be read, never a zero the run did not spend.
        "tierflow_tokens": overall.tokens if summary.spend_known else None,
        "tierflow_cost_usd": round(overall.cost_usd, 6) if summary.spend_known else None,
        "tierflow_notes_written": len(summary.written),
    }
    if summary.spend_known:
        front_matter |= beside_kept_reports(vault / runs_folder, settings.run_id, overall.tokens, overall.cost_usd)
    report_key = artifact_key(summary.flow, "report", settings.vault)
    try:
        summary.report = writer.write(report_title(writer, settings.run_id, summary.flow, started), front_matter, body)
    except VaultError as exc:  # a full disk: the run's record is still the summary, its artifact and the console
        summary.report_error = f"{exc} The report's text is the flow run's Prefect artifact {report_key}."
        get_run_logger().warning("run report not written: %s", summary.report_error)
    else:
        try:
            write_day_index(writer, env, day)
        except VaultError as exc:  # the report is written: the day's next run indexes it
            get_run_logger().warning("the day's index of run reports was not written: %s", exc)
    summary.tokens = overall.tokens
    summary.cost_usd = overall.cost_usd
    summary.phases = context["phases"]
    create_table_artifact(
        key=artifact_key(summary.flow, "spend", settings.vault),
        table=[p.table_row(compact=True) for p in [*phases, *([overall] if phases else [])]]
        or [{"phase": "none", "calls": 0}],
        description=f"{money(overall.cost_usd)} · all-deep {all_deep} · saved {savings or 'unknown'}",
    )
    create_markdown_artifact(
        key=report_key,
        markdown=body,
        description=f"tierflow run report {settings.run_id}",
    )
    get_run_logger().info(
        "run %s: %d calls, %d cache hits, %d tokens, %s · all-deep %s · saved %s",
        settings.run_id,
        overall.billed,
        overall.hits,
        overall.tokens,
        context["total"]["cost"],
        all_deep,
        savings or "unknown",
    )
    if summary.spend_known:
        try:
            warn_of_projected_overspend(caller.budgets.forecasts(), settings)
        except LedgerError as exc:  # gone since the report read it: the report is whole, the calls recorded
            get_run_logger().warning("the budgets' projections could not be read: %s", exc)
    return summary


def ledger_gone_note(settings: RunSettings, summary: RunSummary) -> str:
    """What the report says of a run whose ledger stayed away (`RunSummary.ledger_error`): what is not recorded, and
    how to go on once it is back. Empty otherwise."""
    if not summary.ledger_error:
        return ""
    spend = tierflow_command(
        "spend", "--run", settings.run_id, vault=settings.vault, config=settings.config_path, profile=settings.profile
    )
    return (
        "The ledger could not be reached, so answers that arrived meanwhile are not recorded (each counts as a lost "
        f"call at its worst case once it is back). Once it is back, `{spend}` lists the run's calls, and "
        f"`{settings.resume_command()}` continues the run without paying again for the answers it recorded."
    )


PROJECTED_OVER = "tierflow.budget.projected-over"
"""The Prefect event a run emits for each period budget its projection puts over the limit before the period ends."""


def warn_of_projected_overspend(forecasts: list[Forecast], settings: RunSettings) -> None:
    """Emit `tierflow.budget.projected-over` per budget whose projection crosses its limit: automations can warn."""
    from prefect.events import emit_event

    for f in forecasts:
        if not f.over:
            continue
        s = f.state
        emit_event(
            event=PROJECTED_OVER,
            resource={"prefect.resource.id": f"tierflow.budget.{s.name}", "prefect.resource.name": s.name},
            related=[
                {"prefect.resource.id": f"tierflow.run.{settings.run_id}", "prefect.resource.role": "tierflow-run"}
            ],
            payload={
                "scope": s.scope,
                "limit_usd": s.limit_usd,
                "projected_usd": f.projected_usd,
                "limit_tokens": s.limit_tokens,
                "projected_tokens": f.projected_tokens,
                "period_end": f.period_end.isoformat(),
                "runs_out": f.runs_out.isoformat() if f.runs_out else None,
            },
        )


def lost_calls(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's calls sent and never answered (outcome `lost`: a timeout, a dropped connection, a process of the run
    killed mid-call), as the report names them: how many, in which phases, and their worst case, which the totals
    count. None when there are none."""
    lost = [r for r in rows if r["outcome"] == "lost"]
    if not lost:
        return None
    spent = total(lost)
    return {
        "calls": len(lost),
        "phases": ", ".join(f"{p.calls} {p.key}" for p in phase_spend(lost)),
        "cost": money(spent.cost_usd) + (f" (+{spent.unpriced} unpriced)" if spent.unpriced else ""),
    }


def providers_used(config: Config, rows: list[dict[str, Any]]) -> str:
    """The providers the run's calls went to (with their kind), or, before any call, those its routing names."""
    names = list(dict.fromkeys(r["provider"] for r in rows)) or list(
        dict.fromkeys(config.tier(t).provider for t in config.settings.routing.values())
    )
    kinds = config.settings.providers
    return ", ".join(f"{n} ({kinds[n].kind})" if n in kinds and kinds[n].kind != n else n for n in names)


def report_title(writer: NoteWriter, run_id: str, flow: str, started: datetime) -> str:
    """`<date> <flow> <HHMM> <short id>`, of when the run started: one note per run. A name another run's note (or a
    person) holds is never taken; a resumed run, given the same start (`reported_start`), finds its own note again:
    the one of that name whose front-matter says it is this run's."""
    base = f"{started.date().isoformat()} {flow} {started.strftime('%H%M')} {run_id.rsplit('-', 1)[-1]}"
    for n in range(1, 100):
        title = base if n == 1 else f"{base} ({n})"
        path = writer.target(title)
        if not path.exists() or _run_of(path) == run_id:
            return title
    raise VaultError(f"{writer.folder}: no free name for the report of run {run_id}; tidy the folder and rerun")


def reported_start(folder: Path, run_id: str) -> datetime | None:
    """When the run started, as the earliest report note of it in `folder` says (`tierflow_started`, with the offset
    it was written in, so that its name comes out the same); None when the run has no report there yet."""
    found = []
    for path in folder.glob("*.md"):
        meta = _meta(path)
        if meta.get("tierflow_run") != run_id or meta.get("tierflow_day_index"):
            continue
        started = meta.get("tierflow_started")
        try:  # written as text; a person's editor may have saved it as a YAML timestamp
            when = started if isinstance(started, datetime) else datetime.fromisoformat(str(started))
        except ValueError:
            continue
        found.append(when if when.tzinfo else when.replace(tzinfo=ZoneInfo("UTC")))
    return min(found, default=None)


def beside_kept_reports(folder: Path, run_id: str, tokens: int, cost_usd: float) -> dict[str, Any]:
    """The spend properties of a run's report written beside reports of the run that tierflow keeps as they are (a
    person edited them): `tierflow_tokens` and `tierflow_cost_usd` carry only what theirs do not already count, so
    that a Dataview sum over reports counts the run once; `tierflow_run_tokens` and `tierflow_run_cost_usd` the whole
    run's, and `tierflow_counted_in` links the reports that count the rest. Nothing when there are none."""
    kept: list[str] = []
    counted_tokens, counted_usd = 0, 0.0
    for path in sorted(folder.glob("*.md")):
        meta = _meta(path)
        if meta.get("tierflow_run") != run_id or meta.get("tierflow_day_index") or ownership(path) == "owned":
            continue
        kept.append(f"[[{path.stem}]]")
        counted_tokens += _number(meta.get("tierflow_tokens"))
        counted_usd += _number(meta.get("tierflow_cost_usd"))
    if not kept:
        return {}
    return {
        "tierflow_tokens": tokens - counted_tokens,
        "tierflow_cost_usd": round(cost_usd - counted_usd, 6),
        "tierflow_run_tokens": tokens,
        "tierflow_run_cost_usd": round(cost_usd, 6),
        "tierflow_counted_in": kept,
    }


def _number(value: object) -> Any:
    """A property as Dataview's sum counts it: a number, else nothing (null, text)."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


def day_index_title(day: str) -> str:
    return f"{day} tierflow runs"


def write_day_index(writer: NoteWriter, env: Any, day: str) -> WriteResult:
    """The day's index note: every run of that day, each once, by its report in the runs folder, in the order they
    started.

    A run with more than one report note (the one a person edited and tierflow's sibling of it, or the notes an earlier
    tierflow wrote at each resume) is listed by the one tierflow wrote last and nobody edited: its spend is the run's.
    """
    reports: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path in sorted(writer.root.glob("*.md")):
        meta = _meta(path)
        if meta.get("tierflow_day") == day and meta.get("tierflow_run"):
            if writer.names is not None:  # a report another run wrote after this writer scanned the vault
                writer.names.add(path.relative_to(writer.vault).as_posix())
            reports.setdefault(str(meta["tierflow_run"]), []).append((path, meta))
    runs = []
    for notes in reports.values():
        path, meta = max(notes, key=_latest) if len(notes) > 1 else notes[0]
        # The whole run's spend: a report beside one a person edited carries the rest of it in `tierflow_tokens`.
        tokens = meta.get("tierflow_run_tokens", meta.get("tierflow_tokens", 0))  # null: the ledger was not read
        runs.append(
            {
                "link": path.stem,
                "started": str(meta.get("tierflow_started", ""))[11:16],
                "flow": meta.get("tierflow_flow", ""),
                "run_id": meta["tierflow_run"],
                "tokens": "unknown" if tokens is None else tokens,
                "cost": money(meta.get("tierflow_run_cost_usd", meta.get("tierflow_cost_usd"))),
            }
        )
    runs.sort(key=lambda r: (r["started"], r["run_id"]))
    body = env.get_template("notes/run-index.md.j2").render(day=day, runs=runs)
    front_matter = {"title": day_index_title(day), "tags": ["tierflow/runs"], "tierflow_day_index": day}
    return writer.write(day_index_title(day), front_matter, body)


def _latest(note: tuple[Path, dict[str, Any]]) -> tuple[bool, str, str]:
    """How one report note of a run ranks among its others: tierflow's own as written first, then the one written
    latest (an earlier tierflow named each resume's report for when it was written), then a sibling over the note it
    is named from."""
    path, meta = note
    return ownership(path) == "owned", str(meta.get("tierflow_started", "")), path.stem


def _meta(path: Path) -> dict[str, Any]:
    try:
        return dict(load_note(path).metadata)
    except (UnicodeDecodeError, yaml.YAMLError, OSError):
        return {}


def _run_of(path: Path) -> str | None:
    return _meta(path).get("tierflow_run")


def flow_run_url() -> str | None:
    """The flow run's page in the current Prefect UI, or None when no UI URL is known.

    A Prefect 3.8 server serves its current UI under `<ui>/v2` (and the old one at `<ui>/`, which is where
    `prefect.runtime.flow_run.ui_url` and `url_for` point); Prefect Cloud has one UI, at its UI URL.
    """
    try:
        from prefect.runtime import flow_run
        from prefect.settings import PREFECT_API_URL, PREFECT_CLOUD_API_URL, PREFECT_UI_URL, get_current_settings

        run_id = flow_run.get_id()
        base = (PREFECT_UI_URL.value() or "").rstrip("/")
        if not run_id or not base.startswith("http"):
            return None
        cloud = (PREFECT_API_URL.value() or "").startswith(PREFECT_CLOUD_API_URL.value())
        if not cloud and get_current_settings().server.ui.v2_enabled and not base.endswith("/v2"):
            base += "/v2"
        return f"{base}/runs/flow-run/{run_id}"
    except Exception:  # the URL is a convenience; a report without it is still whole
        return None
