"""Synthesise (complexity `high`): one call across the week's collations finds patterns and concepts."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prefect import task
from pydantic import BaseModel, Field

from tierflow.calls import RunSettings, caller_for
from tierflow.phases import PhaseOutcome, single
from tierflow.providers.offline import skill
from tierflow.tasks.collate import Collation
from tierflow.vault import template_env

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


@skill("synthesisout")
def offline_synthesis(data: dict[str, Any]) -> dict[str, Any]:
    """Offline: a concept for each keyword that two or more sources share, most shared first."""
    by_keyword: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in data.get("collations", []):
        for k in c.get("keywords", []):
            by_keyword[k].append(c)
    shared = sorted(((k, cs) for k, cs in by_keyword.items() if len(cs) >= 2), key=lambda kv: (-len(kv[1]), kv[0]))
    concepts = []
    for keyword, cs in shared[:6]:
        refs = [{"citekey": c["citekey"], "quote_id": c["quotes"][0]["id"]} for c in cs if c.get("quotes")]
        concepts.append(
            {
                "name": keyword[:1].upper() + keyword[1:],
                "summary": f"{len(cs)} of this week's sources bear on {keyword}: "
                + ", ".join(c["citekey"] for c in cs)
                + ".",
                "sources": [c["citekey"] for c in cs],
                "quote_refs": refs,
                "tensions": [],
            }
        )
    patterns = [f"{k} recurs in {len(cs)} sources" for k, cs in shared[:5]]
    return {"patterns": patterns, "tensions": [], "concepts": concepts}
