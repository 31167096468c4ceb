"""What the ledger says about each tier's quality per flow, phase and complexity: pass rates with a lower bound.

Evidence is kept apart per complexity (forty `low` asks say nothing about a `high` one) and can be read per
project, so that adaptive routing prefers a project's own evidence once it has enough. The database does the
counting: each call recorded is added to `evidence_totals` by a trigger (`ledger._migration_evidence_totals`, which
also says which calls count), and a read groups those few rows; Python only does the arithmetic on the counts.

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
from tierflow.core.ledger import Ledger, evidence_totals, signals

Z = 1.96
"""Two-sided 95%."""


def wilson(passed: float, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson's score interval for `passed` successes in `n` trials: (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = passed / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n)), min(1.0, (centre + margin) / (1 + z * z / n))


def wilson_low(passed: float, n: int, z: float = Z) -> float:
    """The lower end of `wilson`."""
    return wilson(passed, n, z)[0]


def wilson_high(passed: float, n: int, z: float = Z) -> float:
    """The upper end of `wilson`."""
    return wilson(passed, n, z)[1]


def calls_to_decide(passed: int, n: int, target: float, limit: int = 100_000) -> int | None:
    """How many more calls, at the pass rate seen so far, would show whether a tier meets `target`: until its
    lower bound reaches the target, or its upper bound falls below it. 0 when it already shows; None when the
    rate is too close to the target for `limit` more calls to tell."""
    rate = passed / n if n else 0.0
    for more in range(limit + 1):
        m = n + more
        if m and (wilson_low(rate * m, m) >= target or wilson_high(rate * m, m) < target):
            return more
    return None


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

    @property
    def pass_rate_high(self) -> float:
        return wilson_high(self.passed, self.calls)

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "pass_rate": round(self.pass_rate, 4),
            "pass_rate_low": round(self.pass_rate_low, 4),
            "pass_rate_high": round(self.pass_rate_high, 4),
            "cost_per_call_usd": None if self.cost_per_call_usd is None else round(self.cost_per_call_usd, 6),
        }


@dataclass(frozen=True)
class PhaseEvidence:
    flow: str
    phase: str
    complexity: str
    tiers: dict[str, TierEvidence]
    project: str | None = None
    """The project whose calls these are; None when every project's calls are pooled."""


def gather(ledger: Ledger, *, flow: str | None = None, by_project: bool = False) -> list[PhaseEvidence]:
    """Evidence per (flow, phase, complexity) and tier, from the counts kept as calls are recorded.

    Every project's calls are pooled, with the stored signals added; `by_project` gives one group per project
    instead, from the calls alone (signals carry no project). Both are GROUP BY reads of a few rows
    (`ledger.evidence_totals`, kept by the database as each call is recorded), whatever the ledger's size.
    """
    t = evidence_totals
    keys = [t.c.flow, t.c.phase, t.c.complexity, t.c.tier]
    if by_project:
        keys.insert(3, t.c.project)
    query = sa.select(
        *keys,
        sa.func.sum(t.c.n).label("n"),
        sa.func.sum(t.c.passed).label("passed"),
        sa.func.sum(t.c.cost_sum).label("cost_sum"),
        sa.func.sum(t.c.cost_n).label("cost_n"),
    ).group_by(*keys)
    signal_keys = [signals.c.flow, signals.c.phase, signals.c.tier]
    signal_query = (
        sa.select(
            *signal_keys,
            sa.func.count().label("n"),
            sa.func.sum(sa.case((signals.c.passed.is_(True), 1), else_=0)).label("passed"),
        )
        .where(signals.c.passed.is_not(None))
        .group_by(*signal_keys)
    )
    if flow:
        query = query.where(t.c.flow == flow)
        signal_query = signal_query.where(signals.c.flow == flow)
    with ledger.reading() as conn:
        rows = conn.execute(query).all()
        extra = [] if by_project else conn.execute(signal_query).all()
    return summarise(rows, extra)


def summarise(rows: Iterable[Any], extra: Iterable[Any] = ()) -> list[PhaseEvidence]:
    """`gather`'s arithmetic on grouped counts: (flow, phase, complexity, [project,] tier, n, passed, cost_sum,
    cost_n) for the calls and (flow, phase, tier, n, passed) for the signals.

    A signal names no complexity: it counts in each complexity its flow and phase were called at.
    """
    seen: dict[tuple[str, str, str, str | None, str], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0])
    for r in rows:
        key = (r.flow or "", r.phase or "", r.complexity or "", getattr(r, "project", None) or None, r.tier or "")
        counts = seen[key]
        counts[0] += r.n
        counts[1] += r.passed or 0
        counts[2] += r.cost_sum or 0.0
        counts[3] += r.cost_n or 0
    complexities: dict[tuple[str, str], set[str]] = defaultdict(set)
    for f, p, c, _, _ in list(seen):
        complexities[(f, p)].add(c)
    for s in extra:
        for c in sorted(complexities.get((s.flow or "", s.phase or ""), {""})):
            counts = seen[(s.flow or "", s.phase or "", c, None, s.tier or "")]
            counts[0] += s.n
            counts[1] += s.passed or 0
    groups: dict[tuple[str, str, str, str | None], dict[str, TierEvidence]] = defaultdict(dict)
    for (f, p, c, project, t), (n, ok, cost_sum, cost_n) in seen.items():
        groups[(f, p, c, project)][t] = TierEvidence(t, int(n), int(ok), cost_sum / cost_n if cost_n else None)
    return [
        PhaseEvidence(f, p, c, tiers, project)
        for (f, p, c, project), tiers in sorted(groups.items(), key=lambda item: (*item[0][:3], item[0][3] or ""))
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


def shown_low(bound: float) -> str:
    """A lower bound as shown: rounded down to two decimals, so that one below the target never reads as meeting it
    (0.898 is 0.89, not 0.90)."""
    return f"{math.floor(bound * 100 + 1e-9) / 100:.2f}"


def shown_high(bound: float) -> str:
    """An upper bound as shown: rounded up to two decimals, so that one at or above the target never reads as
    missing it."""
    return f"{math.ceil(bound * 100 - 1e-9) / 100:.2f}"


def suggest(config: Config, phase: PhaseEvidence) -> Suggestion:
    """The cheapest tier whose lower bound meets `[routing] target` on at least `[routing] min_evidence`.

    When none does, the current tier is moved one up only when the evidence shows it misses the target (even its
    upper bound is below it); otherwise it is kept, saying how many more calls would tell."""
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
            f"{verb} {best.tier}: pass {best.pass_rate:.2f} (low {shown_low(best.pass_rate_low)}) over "
            f"{best.calls} calls meets the target {routing.target:.2f}"
        )
        cheaper = [t for t in order[: order.index(best.tier)] if t in phase.tiers]
        if cheaper:
            e = phase.tiers[cheaper[-1]]
            reason += f"; {e.tier} passes {e.pass_rate:.2f} (low {shown_low(e.pass_rate_low)}) over {e.calls} calls"
        return Suggestion(phase.flow, phase.phase, phase.complexity, current, best.tier, reason, phase.tiers)
    now = phase.tiers.get(current)
    above = order[order.index(current) + 1 :] if current in order else []
    if now is not None and now.calls >= routing.min_evidence:
        seen = (
            f"pass {now.pass_rate:.2f} (low {shown_low(now.pass_rate_low)}, "
            f"high {shown_high(now.pass_rate_high)}) over {now.calls} calls"
        )
        if now.pass_rate_high < routing.target and above:
            # Even its upper bound is below the target, and nothing qualifies yet: one tier up cannot do worse.
            up = above[0]
            reason = f"move to {up}: {current} misses the target {routing.target:.2f} ({seen}) and no tier has met it"
            return Suggestion(phase.flow, phase.phase, phase.complexity, current, up, reason, phase.tiers)
        if now.pass_rate_high < routing.target:
            reason = f"keep {current}: it misses the target {routing.target:.2f} ({seen}) but no tier is above it"
            return Suggestion(phase.flow, phase.phase, phase.complexity, current, current, reason, phase.tiers)
        more = calls_to_decide(now.passed, now.calls, routing.target)
        reason = (
            f"keep {current}: not enough evidence yet, {seen} neither meets the target {routing.target:.2f} nor "
            "shows that it misses it" + (f"; about {more} more calls at this pass rate would tell" if more else "")
        )
        return Suggestion(phase.flow, phase.phase, phase.complexity, current, current, reason, phase.tiers)
    thin = [t for t, e in phase.tiers.items() if e.calls < routing.min_evidence]
    reason = (
        f"keep {current}: no tier meets the target {routing.target:.2f} with at least {routing.min_evidence} "
        "observations" + (f" (too few for {', '.join(sorted(thin))})" if thin else "")
    )
    return Suggestion(phase.flow, phase.phase, phase.complexity, current, current, reason, phase.tiers)


def learned_routes(
    config: Config, ledger: Ledger, flow: str, *, project: str | None = None
) -> dict[tuple[str, str], tuple[str, str]]:
    """Adaptive routing's table for one flow: (phase, complexity) -> (tier, why), where the evidence suffices.

    A project's own evidence decides when its suggested tier has at least `[routing] min_evidence` observations;
    otherwise every project's evidence of that flow, phase and complexity, pooled. One or two grouped reads.
    """
    enough = config.settings.routing.min_evidence
    own = (
        {(e.phase, e.complexity): e for e in gather(ledger, flow=flow, by_project=True) if e.project == project}
        if project
        else {}
    )
    table: dict[tuple[str, str], tuple[str, str]] = {}
    for pooled in gather(ledger, flow=flow):
        key = (pooled.phase, pooled.complexity)
        for phase, whose in ((own.get(key), f"project {project}"), (pooled, "all projects")):
            if phase is None:
                continue
            s = suggest(config, phase)
            e = s.evidence.get(s.suggested_tier)
            if e is not None and e.calls >= enough:
                table[key] = (
                    s.suggested_tier,
                    f"adaptive: {phase.phase} on {s.suggested_tier}, pass {e.pass_rate:.2f} (low "
                    f"{shown_low(e.pass_rate_low)}) over {e.calls} calls "
                    f"({phase.complexity or 'any'} complexity, {whose})",
                )
                break
    return table
