"""Worst-case estimates of each flow before it spends (`tierflow plan`, `run --dry-run`).

Each planner renders the prompts its flow's phases would send, using the phases' own prompt builders, and
adds them to a `Plan`. The flows' registry entries (`FlowSpec.plan`) point here.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.config import Config
from tierflow.report.plan import Plan
from tierflow.tasks import collate, draft, synthesise
from tierflow.tasks.week import load_sources, select_week


def plan_reading_notes(
    config: Config, vault: Path, *, since: date | None, until: date | None, tier: dict[str, str] | None = None
) -> Plan:
    """Every call a reading-notes run over this window would make, priced at its worst case."""
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
        phase_names=["collate", "synthesise", "draft"],
    )
    if not sources:
        return plan

    light_outputs = 0
    for source in sources:
        system, prompt = collate.prompt(settings, source)
        routed = plan.add(
            caller,
            "collate",
            collate.COMPLEXITY,
            system,
            prompt,
            collate.CollationOut,
            subject=source.title,
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
    deep = plan.add(
        caller,
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
        plan.add(
            caller,
            "draft",
            draft.COMPLEXITY,
            system,
            prompt,
            draft.DraftOut,
            subject=f"concept {n + 1}",
            extra_tokens=light_outputs + deep.max_output_tokens,
        )
    return plan
