"""A run's spend per phase, tier and model, its all-deep equivalent, and the report note's content."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tierflow.config import Config
from tierflow.ledger import usage_of
from tierflow.report import money
from tierflow.routing import route
from tierflow.usage import Usage, price

PHASE_ORDER = ("collate", "synthesise", "draft")


@dataclass
class PhaseSpend:
    phase: str
    tiers: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    calls: int = 0
    cached: int = 0
    batch: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    unpriced: int = 0
    unknown_usage: int = 0

    @property
    def tokens(self) -> int:
        return self.usage.total_tokens

    def row(self) -> dict[str, Any]:
        """One row of the spend table, as the Prefect table artifact and the report show it."""
        cost = money(self.cost_usd) + (f" (+{self.unpriced} unpriced)" if self.unpriced else "")
        return {
            "phase": self.phase,
            "tiers": ", ".join(self.tiers),
            "models": ", ".join(self.models),
            "calls": self.calls,
            "cached": self.cached,
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "cache_read_tokens": self.usage.cache_read_tokens,
            "cache_write_tokens": self.usage.cache_write_tokens,
            "reasoning_tokens": self.usage.reasoning_tokens,
            "cost": cost,
            "cost_usd": round(self.cost_usd, 6),
        }


def phase_spend(rows: Sequence[dict[str, Any]]) -> list[PhaseSpend]:
    """Per-phase totals of a run's ledger rows, in workflow order."""
    phases: dict[str, PhaseSpend] = {}
    for r in rows:
        p = phases.setdefault(r["phase"], PhaseSpend(r["phase"]))
        if r["tier"] not in p.tiers:
            p.tiers.append(r["tier"])
        model = f"{r['provider']}:{r['model']}"
        if model not in p.models:
            p.models.append(model)
        p.calls += 1
        p.cached += bool(r["cached_result"])
        p.batch += bool(r["batch"])
        p.unknown_usage += not r["usage_known"]
        p.usage = p.usage + usage_of(r)
        if r["cost_usd"] is None:
            p.unpriced += 1
        else:
            p.cost_usd += r["cost_usd"]
    order = {name: i for i, name in enumerate(PHASE_ORDER)}
    return sorted(phases.values(), key=lambda p: (order.get(p.phase, 99), p.phase))


def all_deep_cost(config: Config, rows: Sequence[dict[str, Any]]) -> float | None:
    """What the run's model calls would have cost had every one gone to the `high` complexity's tier."""
    deep = route(config, phase="*", complexity="high")
    tier = config.tier(deep.tier)
    total = 0.0
    for r in rows:
        if r["cached_result"] or not r["usage_known"]:
            continue
        cost = price(usage_of(r), deep.model, provider_kind=deep.provider_kind, override=tier.price)
        if cost is None:
            return None
        total += float(cost) * (0.5 if r["batch"] else 1.0)
    return total


def savings_text(actual: float, all_deep: float | None) -> tuple[str, str | None]:
    if all_deep is None:
        return "unknown", None
    if all_deep <= 0:
        return money(all_deep), "n/a (no priced calls)"
    return money(all_deep), f"{(1 - actual / all_deep) * 100:.0f}%"
