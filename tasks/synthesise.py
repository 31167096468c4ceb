"""Synthesise (complexity `high`): one call across the week's collations finds patterns and concepts."""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel, Field

from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.phases import PhaseOutcome, single
from tierflow.tasks.collate import Collation
from tierflow.vault.notes import template_env

PHASE = "synthesise"
COMPLEXITY = "high"


class QuoteRef(BaseModel):
    citekey: str
    quote_id: int


class Concept(BaseModel):
    name: str
    summary: str
    sources: list[str]
    quote_refs: list[QuoteRef] = Field(default_factory=list)
    tensions: list[str] = Field(default_factory=list)


class SynthesisOut(BaseModel):
    patterns: list[str]
    tensions: list[str]
    concepts: list[Concept]


class Synthesis(SynthesisOut):
    model: str
    cost_usd: float | None
    tokens: int


def prompt(settings: RunSettings, collations: list[Collation], since: str, until: str) -> tuple[str, str]:
    config = caller_for(settings).config
    env = template_env(config.vault, config.settings.vault.templates_folder)
    data = {
        "collations": [
            {
                "citekey": c.citekey,
                "title": c.title,
                "summary": c.summary,
                "claims": [cl.model_dump() for cl in c.claims],
                "keywords": c.keywords,
                "quotes": [{"id": q.id, "text": q.text} for q in c.quotes],
                "reader_notes": c.notes,
            }
            for c in collations
        ]
    }
    system = env.get_template("prompts/synthesise/system.j2").render()
    user = env.get_template("prompts/synthesise/week.j2").render(
        collations=collations,
        data=data,
        since=since,
        until=until,
        max_concepts=config.settings.vault.max_concepts,
    )
    return system, user


@task(name=PHASE, task_run_name="synthesise · week")
def synthesise(settings: RunSettings, collations: list[Collation], since: str, until: str) -> Synthesis:
    """Find the week's patterns, tensions and candidate concepts; only sources and quotes that exist survive."""
    system, user = prompt(settings, collations, since, until)
    answer = caller_for(settings).ask(
        phase=PHASE, complexity=COMPLEXITY, system=system, prompt=user, output=SynthesisOut, subject="week"
    )
    out: SynthesisOut = answer.parsed
    quotes = {(c.citekey, q.id) for c in collations for q in c.quotes}
    citekeys = {c.citekey for c in collations}
    concepts = []
    for concept in out.concepts[: caller_for(settings).config.settings.vault.max_concepts]:
        sources = [s for s in dict.fromkeys(concept.sources) if s in citekeys]
        if not sources or not concept.name.strip():
            continue
        refs = [r for r in concept.quote_refs if (r.citekey, r.quote_id) in quotes]
        concepts.append(concept.model_copy(update={"sources": sources, "quote_refs": refs}))
    return Synthesis(
        patterns=out.patterns,
        tensions=out.tensions,
        concepts=concepts,
        model=answer.route.model_ref,
        cost_usd=answer.cost_usd,
        tokens=answer.usage.total_tokens,
    )


def synthesise_week(
    settings: RunSettings, collations: list[Collation], since: str, until: str
) -> PhaseOutcome[Synthesis]:
    """One tagged task run over all the week's collations."""
    return single(
        synthesise,
        settings,
        settings,
        collations,
        since,
        until,
        phase=PHASE,
        complexity=COMPLEXITY,
        subject="week",
    )
