"""Draft (complexity `medium`): one concept note per concept, from a Jinja2 template, written safely."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from pydantic import BaseModel, Field

from tierflow.core import clock
from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.checks import Check
from tierflow.core.phases import PhaseOutcome, fan_out
from tierflow.report.spend import row_tokens
from tierflow.tasks.collate import Collation
from tierflow.tasks.synthesise import Concept, Synthesis
from tierflow.vault.annotations import locate
from tierflow.vault.notes import NoteWriter, SourceNote, WriteResult, template_env

PHASE = "draft"
COMPLEXITY = "medium"
MAX_QUOTES = 6
SPEND_KEYS = ("created", "tierflow_run", "tierflow_phase_models", "tierflow_tokens", "tierflow_cost_usd")
"""Front-matter that changes from run to run without the draft changing; ignored when comparing."""


class DraftQuote(BaseModel):
    source: str
    text: str


class DraftOut(BaseModel):
    summary: str
    discussion: str
    quotes: list[DraftQuote] = Field(default_factory=list)
    open_questions: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class RunShare:
    """What the run had spent before drafting, split across the drafts so Dataview sums equal the run."""

    run_id: str
    since: str
    until: str
    phase_models: tuple[str, ...]
    tokens_each: int
    cost_each: float | None


def quotes_verbatim(sources: list[SourceNote]) -> Check:
    """Every quotation is word for word in the source it names."""
    by_key = {s.citekey: s for s in sources}

    def problems(out: DraftOut) -> list[str]:
        found = []
        for q in out.quotes[:MAX_QUOTES]:
            source = by_key.get(q.source)
            if source is None:
                found.append(f"quotation {q.text[:60]!r} names unknown source {q.source!r}")
            elif not locate(q.text, source.body):
                found.append(f"quotation {q.text[:60]!r} is not word for word in {q.source}; quote it exactly")
        return found

    return Check("quotes_verbatim", problems)


def sections_present(out: DraftOut) -> list[str]:
    """The note's required sections have text."""
    return [f"the {name} is empty" for name in ("summary", "discussion") if not getattr(out, name).strip()]


def prompt(settings: RunSettings, concept: Concept, collations: list[Collation]) -> tuple[str, str]:
    config = caller_for(settings).config
    env = template_env(config.vault, config.settings.vault.templates_folder)
    refs = {(r.citekey, r.quote_id) for r in concept.quote_refs}
    data = {
        "concept": concept.model_dump(exclude={"quote_refs"}),
        "sources": [
            {
                "citekey": c.citekey,
                "title": c.title,
                "summary": c.summary,
                "claims": [cl.claim for cl in c.claims],
                # Quotes the synthesis picked come first; the model may quote only from these.
                "quotes": [q.text for q in sorted(c.quotes, key=lambda q: (c.citekey, q.id) not in refs)][:MAX_QUOTES],
            }
            for c in collations
        ],
    }
    system = env.get_template("prompts/draft/system.j2").render()
    user = env.get_template("prompts/draft/concept.j2").render(concept=concept, data=data, max_quotes=MAX_QUOTES)
    return system, user


@task(name=PHASE)
def draft_concept(
    settings: RunSettings,
    concept: Concept,
    collations: list[Collation],
    sources: list[SourceNote],
    share: RunShare,
) -> WriteResult:
    """Draft one concept note, check its quotations against the sources, and write it."""
    caller = caller_for(settings)
    system, user = prompt(settings, concept, collations)
    answer = caller.ask(
        phase=PHASE,
        complexity=COMPLEXITY,
        system=system,
        prompt=user,
        output=DraftOut,
        subject=concept.name,
        checks=[quotes_verbatim(sources), Check("sections_present", sections_present)],
    )
    out: DraftOut = answer.parsed
    by_key = {s.citekey: s for s in sources}
    quotes = []
    for q in out.quotes[:MAX_QUOTES]:
        source = by_key.get(q.source)
        page = None
        if source is not None:
            page = next((a.page for a in source.annotations if a.text and locate(q.text, a.text)), None)
        quotes.append(
            {
                "text": " ".join(q.text.split()),
                "link": source.link if source else q.source,
                "page": page,
                "verbatim": source is not None and locate(q.text, source.body),
            }
        )
    config = caller.config
    env = template_env(config.vault, config.settings.vault.templates_folder)
    body = env.get_template("notes/concept.md.j2").render(
        draft=out,
        quotes=quotes,
        sources=[by_key[c.citekey] for c in collations if c.citekey in by_key],
        created=clock.now().astimezone().date().isoformat(),
        since=share.since,
        until=share.until,
        run_id=share.run_id,
        offline=answer.route.provider_kind == "offline",
        checks_failed=answer.checks_failed,
        model=answer.route.model_ref,
    )
    tokens = share.tokens_each + answer.usage.total_tokens
    cost = None if share.cost_each is None or answer.cost_usd is None else round(share.cost_each + answer.cost_usd, 6)
    front_matter: dict[str, Any] = {
        "title": concept.name,
        "tags": ["concept", "tierflow/draft"],
        "status": "draft",
        "sources": [f"[[{by_key[c].link}]]" for c in concept.sources if c in by_key],
        "created": clock.now().astimezone().date().isoformat(),
        "tierflow_run": share.run_id,
        "tierflow_phase_models": [*share.phase_models, f"draft: {answer.route.model_ref}"],
        "tierflow_tokens": tokens,
        "tierflow_cost_usd": cost,
        "tierflow_unverified_quotes": sum(1 for q in quotes if not q["verbatim"]),
    }
    if answer.checks_failed:
        front_matter["tierflow_checks_failed"] = list(answer.checks_failed)
    writer = NoteWriter(Path(settings.vault or "."), config.settings.vault.output_folder)
    return writer.write(concept.name, front_matter, body, compare_keys=SPEND_KEYS)


def draft(
    settings: RunSettings,
    synthesis: Synthesis,
    collations: list[Collation],
    sources: list[SourceNote],
    *,
    since: str,
    until: str,
) -> PhaseOutcome[WriteResult]:
    """Draft every concept concurrently; the run's spend so far is shared across the drafts."""
    rows = caller_for(settings).ledger.rows(run_id=settings.run_id)
    n = max(1, len(synthesis.concepts))
    costs = [r["cost_usd"] for r in rows]
    models = {"collate": sorted({c.model for c in collations}), "synthesise": [synthesis.model]}
    share = RunShare(
        run_id=settings.run_id,
        since=since,
        until=until,
        phase_models=tuple(f"{phase}: {', '.join(m)}" for phase, m in models.items()),
        tokens_each=sum(row_tokens(r) for r in rows) // n,
        cost_each=None if None in costs else sum(costs) / n,
    )
    by_key = {c.citekey: c for c in collations}
    return fan_out(
        draft_concept,
        settings,
        synthesis.concepts,
        phase=PHASE,
        complexity=COMPLEXITY,
        subject=lambda c: c.name,
        args=lambda c: (
            settings,
            c,
            [by_key[k] for k in c.sources if k in by_key],
            [s for s in sources if s.citekey in c.sources],
            share,
        ),
    )
