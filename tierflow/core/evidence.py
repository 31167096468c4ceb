"""What the ledger says about each tier's quality per flow and phase: pass rates with a lower confidence bound.

The evidence is the outcome of each tier's first answer to a request (`ok` passes; a malformed, cut-off, refused
or check-failing answer fails): the loop gives every tier two tries, and counting the informed retry's failure
again would count one hard request twice against its tier. First tries are the odd attempt numbers (1, 3, 5:
each tier of an escalation gets two). Shadow calls count too, and so do the quality signals stored beside the
calls: pairwise judge verdicts, the person's edits to drafts and their `tierflow_rating`. The lower bound is
Wilson's score interval at 95%, so a tier needs both a high pass rate and enough calls before it is trusted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tierflow.core.config import Config
from tierflow.core.ledger import Ledger, calls, signals

Z = 1.96
"""Two-sided 95%."""


def wilson_low(passed: int, n: int, z: float = Z) -> float:
    """The lower end of Wilson's score interval for `passed` successes in `n` trials (0 when n is 0)."""
    if n == 0:
        return 0.0
    p = passed / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n))


@dataclass(frozen=True)
class TierEvidence:
    tier: str
    calls: int
    """Observations: billed attempts plus quality signals."""
    passed: int
    cost_per_call_usd: float | None

    @property
    def pass_rate(self) -> float:
        return self.passed / self.calls if self.calls else 0.0

    @property
    def pass_rate_low(self) -> float:
        return wilson_low(self.passed, self.calls)

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "pass_rate": round(self.pass_rate, 4),
            "pass_rate_low": round(self.pass_rate_low, 4),
            "cost_per_call_usd": None if self.cost_per_call_usd is None else round(self.cost_per_call_usd, 6),
        }


@dataclass(frozen=True)
class PhaseEvidence:
    flow: str
    phase: str
    complexity: str
    tiers: dict[str, TierEvidence]


def gather(ledger: Ledger, *, flow: str | None = None) -> list[PhaseEvidence]:
    """Evidence per (flow, phase) and tier, from every billed attempt and every stored signal."""
    query = sa.select(
        calls.c.flow, calls.c.phase, calls.c.complexity, calls.c.tier, calls.c.outcome, calls.c.cost_usd
    ).where(
        calls.c.cached_result.is_(False),
        calls.c.attempt % 2 == 1,
        calls.c.outcome.not_in(("lost", "error")),
        # An escalation step a budget downgraded is no first answer of the cheaper tier.
        sa.or_(calls.c.escalated_from.is_(None), calls.c.downgraded_from.is_(None)),
    )
    signal_query = sa.select(signals.c.flow, signals.c.phase, signals.c.tier, signals.c.passed).where(
        signals.c.passed.is_not(None)
    )
    if flow:
        query = query.where(calls.c.flow == flow)
        signal_query = signal_query.where(signals.c.flow == flow)
    with ledger.engine.connect() as conn:
        rows = conn.execute(query).all()
        extra = conn.execute(signal_query).all()
    return summarise(rows, extra)


def summarise(rows: Iterable[Any], extra: Iterable[Any] = ()) -> list[PhaseEvidence]:
    """`gather`'s arithmetic, on (flow, phase, complexity, tier, outcome, cost_usd) and (flow, phase, tier, passed)."""
    seen: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    costs: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    complexity: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        key = (r.flow or "", r.phase or "", r.tier or "")
        seen[key][0] += 1
        seen[key][1] += r.outcome == "ok"
        if r.cost_usd is not None:
            costs[key].append(r.cost_usd)
        complexity[(key[0], key[1])][r.complexity or ""] += 1
    for s in extra:
        key = (s.flow or "", s.phase or "", s.tier or "")
        seen[key][0] += 1
        seen[key][1] += bool(s.passed)
    phases: dict[tuple[str, str], dict[str, TierEvidence]] = defaultdict(dict)
    for (f, p, t), (n, ok) in seen.items():
        spent = costs.get((f, p, t))
        phases[(f, p)][t] = TierEvidence(t, n, ok, sum(spent) / len(spent) if spent else None)
    return [
        PhaseEvidence(f, p, max(complexity[(f, p)], key=complexity[(f, p)].get) if complexity[(f, p)] else "", tiers)
        for (f, p), tiers in sorted(phases.items())
    ]


@dataclass(frozen=True)
class Suggestion:
    flow: str
    phase: str
    complexity: str
    current_tier: str
    suggested_tier: str
    reason: str
    evidence: Mapping[str, TierEvidence]

    def as_json(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "phase": self.phase,
            "complexity": self.complexity,
            "current_tier": self.current_tier,
            "suggested_tier": self.suggested_tier,
            "reason": self.reason,
            "evidence": {tier: e.as_json() for tier, e in self.evidence.items()},
        }


def suggest(config: Config, phase: PhaseEvidence) -> Suggestion:
    """The cheapest tier whose lower bound meets `[routing] target` on at least `[routing] min_evidence`."""
    routing = config.settings.routing
    current = routing.phases.get(phase.phase) or (
        routing[phase.complexity] if phase.complexity in routing else routing["low"]
    )
    order = [t for t in config.tier_order if t in config.settings.tiers]
    qualified = [
        e
        for t in order
        if (e := phase.tiers.get(t)) is not None
        and e.calls >= routing.min_evidence
        and e.pass_rate_low >= routing.target
    ]
    if qualified:
        best = qualified[0]
        verb = "keep" if best.tier == current else "move to"
        reason = (
            f"{verb} {best.tier}: pass {best.pass_rate:.2f} (low {best.pass_rate_low:.2f}) over {best.calls} calls "
            f"meets the target {routing.target:.2f}"
        )
        cheaper = [t for t in order[: order.index(best.tier)] if t in phase.tiers]
        if cheaper:
            e = phase.tiers[cheaper[-1]]
            reason += f"; {e.tier} passes {e.pass_rate:.2f} (low {e.pass_rate_low:.2f}) over {e.calls} calls"
        return Suggestion(phase.flow, phase.phase, phase.complexity, current, best.tier, reason, phase.tiers)
    now = phase.tiers.get(current)
    above = order[order.index(current) + 1 :] if current in order else []
    if now is not None and now.calls >= routing.min_evidence and above:
        # The current tier demonstrably misses the target and nothing qualifies yet: one tier up cannot do worse.
        up = above[0]
        reason = (
            f"move to {up}: {current} misses the target {routing.target:.2f} (pass {now.pass_rate:.2f}, low "
            f"{now.pass_rate_low:.2f} over {now.calls} calls) and no tier has met it yet"
        )
        return Suggestion(phase.flow, phase.phase, phase.complexity, current, up, reason, phase.tiers)
    thin = [t for t, e in phase.tiers.items() if e.calls < routing.min_evidence]
    reason = (
        f"keep {current}: no tier meets the target {routing.target:.2f} with at least {routing.min_evidence} "
        "observations" + (f" (too few for {', '.join(sorted(thin))})" if thin else "")
    )
    return Suggestion(phase.flow, phase.phase, phase.complexity, current, current, reason, phase.tiers)


def learned_routes(config: Config, ledger: Ledger, flow: str) -> dict[str, tuple[str, str]]:
    """Adaptive routing's table for one flow: phase -> (tier, why), where the evidence suffices."""
    table: dict[str, tuple[str, str]] = {}
    for phase in gather(ledger, flow=flow):
        s = suggest(config, phase)
        e = s.evidence.get(s.suggested_tier)
        if e is not None and e.calls >= config.settings.routing.min_evidence:
            table[phase.phase] = (
                s.suggested_tier,
                f"adaptive: {phase.phase} on {s.suggested_tier}, pass {e.pass_rate:.2f} "
                f"(low {e.pass_rate_low:.2f}) over {e.calls} calls",
            )
    return table
