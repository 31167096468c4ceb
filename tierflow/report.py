"""Spend reports from ledger rows: terminal tables, OpenTelemetry records, per-phase summaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tierflow.ledger import SUMMED, summarise, usage_of

OTEL_NAMES = {
    "provider": "gen_ai.provider.name",
    "model": "gen_ai.request.model",
    "phase": "tierflow.phase",
    "tier": "tierflow.tier",
    "complexity": "tierflow.complexity",
    "flow": "tierflow.flow",
    "run_id": "tierflow.run_id",
    "flow_run_id": "prefect.flow_run.id",
    "task_run_id": "prefect.task_run.id",
    "cost_usd": "tierflow.cost_usd",
    "latency_ms": "tierflow.latency_ms",
    "batch": "tierflow.batch",
    "cached_result": "tierflow.cached_result",
    "usage_known": "tierflow.usage_known",
}


def otel_record(row: dict[str, Any]) -> dict[str, Any]:
    """One ledger row as a JSON Lines record with OpenTelemetry GenAI attribute names."""
    attributes: dict[str, Any] = {"gen_ai.operation.name": "chat"}
    for column, name in OTEL_NAMES.items():
        if row.get(column) is not None:
            attributes[name] = row[column]
    attributes.update(usage_of(row).opentelemetry_attributes())
    return {"timestamp": row["timestamp"], "name": f"chat {row['model']}", "attributes": attributes}


def money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"


def spend_table(rows: Sequence[dict[str, Any]], group: str | None) -> Any:
    """A rich Table of calls, or of totals per group."""
    from rich.table import Table

    if group is None:
        table = Table(title=f"Ledger: {len(rows)} calls")
        for col in ("when", "flow", "phase", "tier", "model", "in", "out", "cache r/w", "reason", "cost"):
            table.add_column(col, justify="right" if col in ("in", "out", "reason", "cost") else "left")
        for r in rows:
            table.add_row(
                r["timestamp"][:19].replace("T", " "),
                r["flow"] or "",
                r["phase"] or "",
                r["tier"] or "",
                f"{r['provider']}:{r['model']}" + (" (cached)" if r["cached_result"] else ""),
                str(r["input_tokens"]) if r["usage_known"] else "?",
                str(r["output_tokens"]) if r["usage_known"] else "?",
                f"{r['cache_read_tokens']}/{r['cache_write_tokens']}",
                str(r["reasoning_tokens"]),
                money(r["cost_usd"]) + (" batch" if r["batch"] else ""),
            )
        return table
    totals = summarise(rows, group)
    table = Table(title=f"Spend by {group}")
    table.add_column(group)
    table.add_column("calls", justify="right")
    for k in SUMMED:
        table.add_column(k.replace("_tokens", "").replace("_", " "), justify="right")
    table.add_column("cost", justify="right")
    for t in totals:
        cost = money(t["cost_usd"]) + (f" (+{t['unpriced_calls']} unpriced)" if t["unpriced_calls"] else "")
        table.add_row(t[group], str(t["calls"]), *[str(t[k]) for k in SUMMED], cost)
    return table
