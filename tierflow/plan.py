"""Estimate a run before it spends: every call it could make, its prompt tokens and worst-case cost.

Collate prompts are rendered exactly. Synthesise and draft prompts depend on model output that does not
exist yet, so they are rendered from the parsed quotes with the model-written parts left empty, and each
missing part is counted at its producing tier's full `max_output_tokens`. That makes every figure an
upper bound: the actual run costs less.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tierflow.budget import Estimate
from tierflow.calls import Caller, RunSettings, caller_for
from tierflow.config import Config
from tierflow.report import money
from tierflow.routing import Route, route_to_tier


@dataclass
class PhasePlan:
    phase: str
    tiers: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    calls: int = 0
    prompt_tokens: int = 0
    max_output_tokens: int = 0
    worst_usd: Decimal | None = Decimal(0)
    all_deep_usd: Decimal | None = Decimal(0)

    def add(self, routed: Route, est: Estimate, deep: Estimate) -> None:
        self.tiers.add(routed.tier)
        self.models.add(routed.model_ref)
        self.calls += 1
        self.prompt_tokens += est.prompt_tokens
        self.max_output_tokens += est.max_output_tokens
        self.worst_usd = None if self.worst_usd is None or est.usd is None else self.worst_usd + est.usd
        self.all_deep_usd = None if self.all_deep_usd is None or deep.usd is None else self.all_deep_usd + deep.usd


@dataclass
class Plan:
    flow: str
    since: date
    until: date
    selected: int
    skipped: list[tuple[str, str]]
    phases: list[PhasePlan]
    prompts: list[tuple[str, str, str]] = field(default_factory=list)
    """(phase, subject, rendered prompt) for every call."""

    @property
    def worst_usd(self) -> Decimal | None:
        costs = [p.worst_usd for p in self.phases]
        return None if None in costs else sum(costs, Decimal(0))  # type: ignore[arg-type]

    @property
    def all_deep_usd(self) -> Decimal | None:
        costs = [p.all_deep_usd for p in self.phases]
        return None if None in costs else sum(costs, Decimal(0))  # type: ignore[arg-type]


def plan_reading_notes(
    config: Config, vault: Path, *, since: date | None, until: date | None, tier: dict[str, str] | None = None
) -> Plan:
    """Every call a reading-notes run over this window would make, priced at its worst case."""
    from tierflow.tasks import collate, draft, synthesise
    from tierflow.tasks.vault import load_sources, select_week

    settings = RunSettings(
        vault=str(vault),
        config_path=str(config.path) if config.path else None,
        profile=config.settings.profile,
        tier_overrides=tier or {},
        run_id="plan",
        flow="reading-notes",
    )
    caller = caller_for(settings)
    week = select_week.fn(settings, since, until)
    sources, unreadable = load_sources.fn(settings, week)
    plan = Plan(
        flow="reading-notes",
        since=week.since,
        until=week.until,
        selected=len(week.notes),
        skipped=[(s.path, s.reason) for s in week.skipped + unreadable],
        phases=[PhasePlan("collate"), PhasePlan("synthesise"), PhasePlan("draft")],
    )
    collating, synthesising, drafting = plan.phases
    if not sources:
        return plan

    light_outputs = 0
    for source in sources:
        system, prompt = collate.prompt(settings, source)
        routed = _add(
            plan,
            caller,
            collating,
            "collate",
            collate.COMPLEXITY,
            system,
            prompt,
            collate.CollationOut,
            subject=source.citekey,
            front_matter=source.front_matter,
            note=source.path,
        )
        light_outputs += routed.max_output_tokens

    # Collations with their model-written parts empty; those parts are added at full output allowance.
    skeletons = [
        collate.Collation(
            path=s.path,
            link=s.link,
            citekey=s.citekey,
            title=s.title,
            quotes=sorted(collate.quotes_of(s)[0], key=lambda q: -len(q.text)),
            notes=collate.quotes_of(s)[1],
            summary="",
            claims=[],
            keywords=[],
            model="",
            cost_usd=0,
            tokens=0,
        )
        for s in sources
    ]
    system, prompt = synthesise.prompt(settings, skeletons, str(week.since), str(week.until))
    deep = _add(
        plan,
        caller,
        synthesising,
        "synthesise",
        synthesise.COMPLEXITY,
        system,
        prompt,
        synthesise.SynthesisOut,
        subject="week",
        extra_tokens=light_outputs,
    )

    everything = synthesise.Concept(name="", summary="", sources=[s.citekey for s in sources])
    system, prompt = draft.prompt(settings, everything, skeletons)
    for n in range(config.settings.vault.max_concepts):
        _add(
            plan,
            caller,
            drafting,
            "draft",
            draft.COMPLEXITY,
            system,
            prompt,
            draft.DraftOut,
            subject=f"concept {n + 1}",
            extra_tokens=light_outputs + deep.max_output_tokens,
        )
    return plan


def _add(
    plan: Plan,
    caller: Caller,
    phase_plan: PhasePlan,
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
) -> Route:
    routed, request = caller.build(
        phase=phase,
        complexity=complexity,
        system=system,
        prompt=prompt,
        output=output,
        front_matter=front_matter,
        note=note,
    )
    est = caller.estimate(routed, request, provider_count=True)
    est = _grown(caller.config, routed, est, extra_tokens)
    deep_route = route_to_tier(
        caller.config,
        phase=phase,
        complexity=complexity,
        tier=caller.config.settings.routing["high"],
        rule="all-deep",
    )
    deep = _grown(caller.config, deep_route, Estimate(est.prompt_tokens, 0, None), 0)
    phase_plan.add(routed, est, deep)
    plan.prompts.append((phase, subject, prompt))
    return routed


def _grown(config: Config, routed: Route, est: Estimate, extra_tokens: int) -> Estimate:
    from tierflow.budget import estimate

    return estimate(config, routed, est.prompt_tokens + extra_tokens)


def print_plan(plan: Plan, *, show_prompts: bool = False) -> None:
    console = Console()
    if show_prompts:
        for phase, subject, prompt in plan.prompts:
            console.rule(f"{phase} · {subject}")
            console.print(prompt, markup=False, highlight=False)
    console.print(
        f"[bold]{plan.flow}[/] {plan.since} to {plan.until}: {plan.selected} notes selected, "
        f"{len(plan.skipped)} skipped"
    )
    for path, reason in plan.skipped:
        console.print(f"  [yellow]skipped[/] {path}: {reason}")
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
            p.phase,
            ", ".join(sorted(p.tiers)),
            ", ".join(sorted(p.models)),
            str(p.calls),
            str(p.prompt_tokens),
            str(p.max_output_tokens),
            _usd(p.worst_usd),
            _usd(p.all_deep_usd),
        )
    table.add_row(
        "total",
        "",
        "",
        str(sum(p.calls for p in plan.phases)),
        "",
        "",
        _usd(plan.worst_usd),
        _usd(plan.all_deep_usd),
        style="bold",
    )
    console.print(table)
    console.print("Nothing was sent to a model. Drafts are counted at the configured maximum number of concepts.")
    if not show_prompts:
        console.print(f"{len(plan.prompts)} prompts were rendered; add --show-prompts to print them.")


def _usd(value: Decimal | None) -> str:
    return money(None if value is None else float(value))
