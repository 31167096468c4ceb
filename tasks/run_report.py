"""The run report: a note in the vault, and the same spend table and summary as Prefect artifacts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tierflow.core import clock
from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.phases import PhaseOutcome
from tierflow.learn.signals import scan
from tierflow.report.spend import all_deep_cost, money, phase_spend, row_tokens, savings_text
from tierflow.vault.links import VaultNames
from tierflow.vault.notes import NoteWriter, WriteResult, template_env

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
    tokens: int = 0
    cost_usd: float = 0.0
    phases: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    batches: list[str] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        """A budget halted the run or a phase failed: later phases must not start."""
        return bool(self.halted or self.failed)

    def absorb(self, outcome: PhaseOutcome[T]) -> list[T]:
        """Take a phase's skips and stops into the run; returns what it finished."""
        self.skipped += outcome.skipped
        self.batches += [b for b in outcome.batches if b not in self.batches]
        self.halted = self.halted or outcome.halted
        self.failed = self.failed or outcome.failed
        return outcome.results


def _closed_loop(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Attempts that failed or escalated, and the answers kept although no tier passed their checks."""
    retries = [r for r in rows if r["outcome"] != "ok" or r["escalated_from"]]
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        last[(r["phase"], r["subject"])] = r
    kept = [
        f"{r['phase']} · {r['subject'] or '-'}: kept from {r['provider']}:{r['model']} ({r['outcome']}"
        + (f": {r['checks_failed']})" if r["checks_failed"] else ")")
        for r in last.values()
        if r["outcome"] == "check_failed"
    ]
    return retries, kept


def artifact_key(flow: str, what: str) -> str:
    """Prefect artifact keys allow only lower-case letters, digits and dashes."""
    return "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in f"{flow}-{what}".lower())


@task(name="run report", task_run_name="report · {summary.flow}")
def write_run_report(
    settings: RunSettings,
    summary: RunSummary,
    *,
    since: date | None,
    until: date | None,
    selected: int,
) -> RunSummary:
    """Write the run report note and the Prefect artifacts; returns the summary with its totals."""
    caller = caller_for(settings)
    config = caller.config
    # The person's edits and ratings of earlier drafts become routing evidence at every run.
    scan(Path(settings.vault or "."), caller.ledger)
    rows = caller.ledger.rows(run_id=settings.run_id)
    summary.batches = list(dict.fromkeys(summary.batches + [r["batch_id"] for r in rows if r["batch_id"]]))
    phases = phase_spend(rows)
    total_cost = sum(p.cost_usd for p in phases)
    unpriced = sum(p.unpriced for p in phases)
    all_deep, savings = savings_text(total_cost, all_deep_cost(config, rows))
    started = clock.now().astimezone().strftime("%Y-%m-%d %H:%M")
    budgets = [
        {
            "name": b.name,
            "scope": b.scope,
            "policy": b.policy,
            "limit": money(b.limit_usd) if b.limit_usd is not None else f"{b.limit_tokens} tokens",
            "spent": money(b.spent_usd) if b.limit_usd is not None else f"{b.spent_tokens} tokens",
            "reserved": money(b.reserved_usd) if b.limit_usd is not None else f"{b.reserved_tokens} tokens",
        }
        for b in caller.budgets.states()
    ]
    downgrades = [
        f"{r['phase']} · {r['subject']}: {r['downgraded_from']} -> {r['tier']}" for r in rows if r["downgraded_from"]
    ]
    retries, kept = _closed_loop(rows)
    today = date.today().isoformat()
    earlier = _earlier_runs(caller.ledger.rows(since=today, flow=summary.flow), settings.run_id)
    env = template_env(config.vault, config.settings.vault.templates_folder)
    written = [
        {"link": Path(w.path).with_suffix("").as_posix(), "action": w.action, "message": w.message}
        for w in summary.written
    ]
    context = {
        "flow": summary.flow,
        "run_id": settings.run_id,
        "started": started,
        "flow_run_url": _flow_run_url(),
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "selected": selected,
        "profile": config.settings.profile,
        "total": {
            "tokens": sum(p.tokens for p in phases),
            "cost": money(total_cost) + (f" (+{unpriced} unpriced calls)" if unpriced else ""),
        },
        "all_deep": all_deep,
        "savings": savings,
        "halted": summary.halted or summary.failed,
        "phases": [p.table_row() for p in phases],
        # Free runs (offline, local) still show where the tokens went.
        "pie": [
            {"phase": p.key, "value": round(p.cost_usd, 6) if total_cost > 0 else p.tokens}
            for p in phases
            if (p.cost_usd if total_cost > 0 else p.tokens) > 0
        ],
        "pie_unit": "USD" if total_cost > 0 else "tokens",
        "budgets": budgets,
        "downgrades": downgrades,
        "retries": retries,
        "kept": kept,
        "written": written,
        "skipped": [{"path": p, "reason": r} for p, r in summary.skipped],
        "earlier": earlier,
        "batches": summary.batches,
        "message": summary.message,
    }
    body = env.get_template("notes/run-report.md.j2").render(**context)
    front_matter = {
        "title": f"{today} {summary.flow}",
        "tags": ["tierflow/run"],
        "tierflow_run": settings.run_id,
        "tierflow_flow": summary.flow,
        "tierflow_tokens": context["total"]["tokens"],
        "tierflow_cost_usd": round(total_cost, 6),
        "tierflow_notes_written": len(summary.written),
    }
    vault = Path(settings.vault or ".").resolve()
    writer = NoteWriter(vault, config.settings.vault.runs_folder, names=VaultNames.scan(vault))
    summary.report = writer.write(f"{today} {summary.flow}", front_matter, body)
    summary.tokens = context["total"]["tokens"]
    summary.cost_usd = total_cost
    summary.phases = context["phases"]
    create_table_artifact(
        key=artifact_key(summary.flow, "spend"),
        table=[{k: v for k, v in p.items() if k != "cost"} for p in context["phases"]]
        or [{"phase": "none", "calls": 0}],
        description=f"Spend per phase for run {settings.run_id} (USD; all-deep equivalent {all_deep}).",
    )
    create_markdown_artifact(
        key=artifact_key(summary.flow, "report"),
        markdown=body,
        description=f"tierflow run report {settings.run_id}",
    )
    return summary


def _earlier_runs(rows: list[dict[str, Any]], current: str) -> list[dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["run_id"] == current:
            continue
        e = runs.setdefault(r["run_id"], {"run_id": r["run_id"], "calls": 0, "tokens": 0, "cost_usd": 0.0})
        e["calls"] += 1
        e["tokens"] += row_tokens(r)
        e["cost_usd"] += r["cost_usd"] or 0.0
    return [{**e, "cost": money(e["cost_usd"])} for e in runs.values()]


def _flow_run_url() -> str | None:
    try:
        from prefect.runtime import flow_run

        url = flow_run.ui_url
        return url if url and url.startswith("http") else None
    except Exception:  # the URL is a convenience; a report without it is still whole
        return None
