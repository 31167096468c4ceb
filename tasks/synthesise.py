"""Synthesise (complexity `high`): one call across the week's collations finds patterns and concepts."""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel, Field

from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.checks import Check
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
    dropped: list[tuple[str, str]] = Field(default_factory=list)
    """(concept name, why) for every concept the checks removed."""
    checks_failed: list[str] = Field(default_factory=list)


def concept_problems(concept: Concept, citekeys: set[str], quotes: set[tuple[str, int]]) -> list[str]:
    """Why a proposed concept cannot be drafted; empty when it can."""
    name = concept.name.strip() or "(unnamed)"
    problems = []
    if not concept.name.strip():
        problems.append("a concept has an empty name")
    unknown = [s for s in concept.sources if s not in citekeys]
    if unknown:
        problems.append(f"concept {name!r} cites unknown citekeys {unknown}")
    if not [s for s in concept.sources if s in citekeys]:
        problems.append(f"concept {name!r} cites none of this week's sources")
    bad_refs = [f"{r.citekey}#{r.quote_id}" for r in concept.quote_refs if (r.citekey, r.quote_id) not in quotes]
    if bad_refs:
        problems.append(f"concept {name!r} cites quotes that do not exist: {', '.join(bad_refs)}")
    return problems


def grounded(collations: list[Collation]) -> Check:
    """At least one concept, and every concept named and citing real citekeys and quote ids."""
    citekeys = {c.citekey for c in collations}
    quotes = {(c.citekey, q.id) for c in collations for q in c.quotes}

    def problems(out: SynthesisOut) -> list[str]:
        found = [p for concept in out.concepts for p in concept_problems(concept, citekeys, quotes)]
        return found or ([] if out.concepts else ["no concepts were proposed; propose at least one"])

    return Check("concepts_grounded", problems)


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
        phase=PHASE,
        complexity=COMPLEXITY,
        system=system,
        prompt=user,
        output=SynthesisOut,
        subject="week",
        checks=[grounded(collations)],
    )
    out: SynthesisOut = answer.parsed
    quotes = {(c.citekey, q.id) for c in collations for q in c.quotes}
    citekeys = {c.citekey for c in collations}
    concepts, dropped = [], []
    # Whatever the tiers answered, only concepts grounded in this week's sources and quotes are drafted.
    limit = caller_for(settings).config.settings.vault.max_concepts
    for concept in out.concepts:
        name = concept.name.strip() or "(unnamed)"
        sources = [s for s in dict.fromkeys(concept.sources) if s in citekeys]
        if not sources or not concept.name.strip():
            dropped.append((name, "; ".join(concept_problems(concept, citekeys, quotes))))
        elif len(concepts) >= limit:
            dropped.append((name, f"more than [vault] max_concepts = {limit} concepts"))
        else:
            refs = [r for r in concept.quote_refs if (r.citekey, r.quote_id) in quotes]
            concepts.append(concept.model_copy(update={"sources": sources, "quote_refs": refs}))
    return Synthesis(
        dropped=dropped,
        checks_failed=list(answer.checks_failed),
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
    outcome = single(
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
    for synthesis in outcome.results:
        outcome.skipped += [
            (f"concept {name}", f"dropped by synthesis checks: {why}") for name, why in synthesis.dropped
        ]
        if not synthesis.concepts:
            outcome.skipped.append(("synthesis", "no concept survived the checks, so nothing was drafted"))
    return outcome
