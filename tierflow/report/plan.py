"""Estimate a run before it spends: every call it could make, its prompt tokens and worst-case cost.

Collate prompts are rendered exactly. Synthesise and draft prompts depend on model output that does not
exist yet, so they are rendered from the parsed quotes with the model-written parts left empty, and each
missing part is counted at its producing tier's full `max_output_tokens`. That makes every figure an
upper bound: the actual run costs less.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tierflow.core.batch import refused_before
from tierflow.core.budget import estimate, padded
from tierflow.core.calls import Caller
from tierflow.core.context import overflow
from tierflow.core.errors import ContextWindowExceeded
from tierflow.core.routing import Route, route_to_tier
from tierflow.core.tokens import count_tokens
from tierflow.report.console import show
from tierflow.report.spend import Spend, money, spend_by


@dataclass
class Plan:
    """Every call a run could make, as estimated ledger rows: worst-case usage and cost, and the all-deep cost."""

    flow: str
    since: date | None
    until: date | None
    selected: int
    skipped: list[tuple[str, str]]
    phase_names: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[tuple[str, str, str]] = field(default_factory=list)
    """(phase, subject, rendered prompt) for every call."""
    notes: list[str] = field(default_factory=list)
    """What the reader should know about how the estimate was made."""
    too_long: list[tuple[str, str, str]] = field(default_factory=list)
    """(phase, subject, why) for every call whose prompt would not fit its model's context window."""
    refused: list[tuple[str, str, str]] = field(default_factory=list)
    """(phase, subject, why) for every batch call left out unpriced: the provider refused it as too long in an
    earlier run, and a batch run does not send it again while it is unchanged (`refused_before`)."""

    @property
    def phases(self) -> list[Spend]:
        """Per-phase totals (the same aggregation as the run report's), every planned phase listed."""
        found = {s.key: s for s in spend_by(self.rows, "phase")}
        return [found.get(name) or Spend(name) for name in self.phase_names]

    @property
    def worst_usd(self) -> float | None:
        costs = [p.cost_or_none for p in self.phases]
        return None if None in costs else sum(costs)  # type: ignore[arg-type]

    @property
    def all_deep_usd(self) -> float | None:
        costs = [p.all_deep_usd for p in self.phases]
        return None if None in costs else sum(costs)  # type: ignore[arg-type]

    def refused_before(
        self,
        caller: Caller,
        phase: str,
        complexity: str,
        system: str,
        prompt: str,
        output: type,
        *,
        subject: str,
        cache_prefix: str = "",
    ) -> ContextWindowExceeded | None:
        """The provider's refusal of this batch call as too long in an earlier run, on the tier it is routed to now
        (`tierflow.core.batch.refused_before`): a batch run does not send it, so it is recorded in `refused` and must
        not be priced. None when a batch run would send it."""
        routed, request = caller.build(
            phase=phase, complexity=complexity, system=system, prompt=prompt, output=output, cache_prefix=cache_prefix
        )
        error = refused_before(caller, routed, request)
        if error is not None:
            self.refused.append((phase, subject, str(error)))
        return error

    def add(
        self,
        caller: Caller,
        phase: str,
        complexity: str,
        system: str,
        prompt: str,
        output: type,
        *,
        subject: str,
        extra_tokens: int = 0,
        front_matter: dict | None = None,
        note: str = "",
        cache_prefix: str = "",
        batch: bool = False,
    ) -> Route:
        """Plan one call: route and render it as the run would, and price its worst case and all-deep case.

        `extra_tokens` counts prompt parts that earlier phases' models will write, at their full output allowance.
        """
        routed, request = caller.build(
            phase=phase,
            complexity=complexity,
            system=system,
            prompt=prompt,
            output=output,
            front_matter=front_matter,
            note=note,
            cache_prefix=cache_prefix,
        )
        # Without Anthropic's count (no key), the padded o200k count: a byte-level bound would overstate a plan.
        est = caller.estimate(routed, request, provider_count=True, batch=batch, uncounted_bound=False)
        prefix = min(padded(count_tokens(cache_prefix), exact=False), est.prompt_tokens) if cache_prefix else 0
        est = estimate(caller.config, routed, est.prompt_tokens + extra_tokens, prefix, batch=batch)
        problem = overflow(caller.config, routed, est.prompt_tokens)
        if problem is not None:
            self.too_long.append((phase, subject, problem))
        deep_route = route_to_tier(
            caller.config,
            phase=phase,
            complexity=complexity,
            tier=caller.config.settings.routing["high"],
            rule="all-deep",
        )
        deep = estimate(caller.config, deep_route, est.prompt_tokens, prefix, batch=batch)
        self.rows.append(
            {
                "phase": phase,
                "tier": routed.tier,
                "provider": routed.model_ref.split(":", 1)[0],
                "model": routed.model_ref.split(":", 1)[1],
                "input_tokens": est.prompt_tokens,
                "output_tokens": est.max_output_tokens,
                "cache_read_tokens": 0,
                "cache_write_tokens": 0,
                "cache_write_1h_tokens": 0,
                "reasoning_tokens": 0,
                "usage_known": True,
                "cost_usd": None if est.usd is None else float(est.usd),
                "all_deep_usd": None if deep.usd is None else float(deep.usd),
            }
        )
        self.prompts.append((phase, subject, prompt))
        return routed


def print_plan(plan: Plan, *, show_prompts: bool = False) -> None:
    console = Console()
    if show_prompts:
        for phase, subject, prompt in plan.prompts:
            console.rule(f"{phase} · {subject}")
            console.print(prompt, markup=False, highlight=False)
    window = f" {plan.since} to {plan.until}" if plan.since else ""
    console.print(f"[bold]{plan.flow}[/]{window}: {plan.selected} notes selected, {len(plan.skipped)} skipped")
    for path, reason in plan.skipped:
        console.print(f"  [yellow]skipped[/] {escape(path)}: {escape(reason)}")
    table = Table(title="Estimate (worst case: every prompt token billed, every output token used)")
    for col in (
        "phase",
        "tier",
        "model",
        "calls",
        "prompt tokens",
        "max output",
        "worst-case USD",
        "all-deep USD",
    ):
        table.add_column(col, justify="right" if col not in ("phase", "tier", "model") else "left")
    for p in plan.phases:
        table.add_row(
            p.key,
            ", ".join(sorted(p.tiers)),
            ", ".join(sorted(p.models)),
            str(p.calls),
            str(p.usage.prompt_tokens),
            str(p.usage.output_tokens),
            money(p.cost_or_none),
            money(p.all_deep_usd),
        )
    table.add_row(
        "total",
        "",
        "",
        str(sum(p.calls for p in plan.phases)),
        "",
        "",
        money(plan.worst_usd),
        money(plan.all_deep_usd),
        style="bold",
    )
    # A narrow terminal loses the token counts first; the tiers, models and worst case stay whole.
    show(console, table, optional=("max output", "prompt tokens", "calls", "all-deep USD"))
    for phase, subject, why in plan.too_long:
        console.print(f"[red]does not fit[/] {escape(f'{phase} · {subject}: {why}')}", highlight=False)
    if plan.refused:
        console.print(f"[yellow]left out[/]: {escape(refused_note(plan.refused))}", highlight=False)
    console.print(escape(" ".join(["Nothing was sent to a model.", *plan.notes])))
    if not show_prompts:
        console.print(f"{len(plan.prompts)} prompts were rendered; add --show-prompts to print them.")


def refused_note(refused: list[tuple[str, str, str]]) -> str:
    """What a plan says of the batch calls it left out (`Plan.refused`): how many, which, why, and what makes them
    go: a trimmed prompt, or another tier."""
    one = len(refused) == 1
    which = ", ".join(f"{phase} · {subject}" for phase, subject, _ in refused)
    tiers = " or ".join(f"--tier {phase}=TIER" for phase in dict.fromkeys(phase for phase, _, _ in refused))
    it, is_ = ("it", "it is") if one else ("them", "each is")
    return (
        f"{len(refused)} batch request{'' if one else 's'} ({which}), which the provider refused as too long in an "
        f"earlier run: a batch run does not send {it} again while {is_} unchanged, so {'it is' if one else 'they are'} "
        f"not priced. Trim the note {is_} made of (see skipped), or route the phase to a tier with a larger context "
        f"window ({tiers}), and {'it is' if one else 'they are'} sent, and priced."
    )
