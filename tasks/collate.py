"""Collate (complexity `low`): one call per source note turns its annotations into a consistent collation.

Parsing the annotations and their locators is done in code; the model only normalises them into claims,
a summary and keywords.
"""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel, Field

from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.checks import Check
from tierflow.core.phases import PhaseOutcome, fan_out
from tierflow.vault.notes import SourceNote, template_env

PHASE = "collate"
COMPLEXITY = "low"
MAX_CLAIMS = 8


class Claim(BaseModel):
    claim: str
    quote_ids: list[int] = Field(default_factory=list)


class CollationOut(BaseModel):
    """What the model returns for one source."""

    summary: str
    claims: list[Claim]
    keywords: list[str]


class Quote(BaseModel):
    id: int
    text: str
    page: str | None = None
    block_id: str | None = None
    link: str | None = None
    comment: str | None = None


class Collation(BaseModel):
    """One source, collated: the model's normalisation plus the quotes exactly as parsed."""

    path: str
    link: str
    citekey: str
    title: str
    quotes: list[Quote]
    notes: list[str]
    summary: str
    claims: list[Claim]
    keywords: list[str]
    model: str
    cost_usd: float | None
    tokens: int


def quotes_of(source: SourceNote) -> tuple[list[Quote], list[str]]:
    """Source quotes (highlights and quotations, with locators) and the reader's own notes."""
    quotes: list[Quote] = []
    notes: list[str] = []
    for a in source.annotations:
        if a.kind in ("highlight", "quote"):
            quotes.append(
                Quote(
                    id=len(quotes) + 1,
                    text=a.text,
                    page=a.page,
                    block_id=a.block_id,
                    link=a.link,
                    comment=a.comment,
                )
            )
        elif a.text:
            notes.append(a.text)
    return quotes, notes


def prompt(settings: RunSettings, source: SourceNote) -> tuple[str, str]:
    """The system prompt and the user prompt for one source."""
    config = caller_for(settings).config
    env = template_env(config.vault, config.settings.vault.templates_folder)
    quotes, notes = quotes_of(source)
    data = {
        "source": {
            "citekey": source.citekey,
            "title": source.title,
            "authors": list(source.authors),
            "year": source.year,
        },
        "quotes": [q.model_dump(exclude_none=True, exclude={"link", "block_id"}) for q in quotes],
        "reader_notes": notes,
        "linked_concepts": list(source.wikilinks),
    }
    system = env.get_template("prompts/collate/system.j2").render()
    user = env.get_template("prompts/collate/note.j2").render(source=source, data=data, max_claims=MAX_CLAIMS)
    return system, user


def quote_ids_exist(source: SourceNote) -> Check:
    """Every quote id a claim cites is one of the note's quotes."""
    known = {q.id for q in quotes_of(source)[0]}

    def problems(out: CollationOut) -> list[str]:
        unknown = sorted({i for c in out.claims for i in c.quote_ids if i not in known})
        return (
            [f"quote ids {unknown} are not in this note (its quotes are numbered 1 to {len(known)})"] if unknown else []
        )

    return Check("quote_ids_exist", problems)


@task(name=PHASE, retries=0)
def collate_note(settings: RunSettings, source: SourceNote) -> Collation:
    """Collate one source note."""
    system, user = prompt(settings, source)
    answer = caller_for(settings).ask(
        phase=PHASE,
        complexity=COMPLEXITY,
        system=system,
        prompt=user,
        output=CollationOut,
        subject=source.title,
        front_matter=source.front_matter,
        note=source.path,
        checks=[quote_ids_exist(source)],
    )
    out: CollationOut = answer.parsed
    quotes, notes = quotes_of(source)
    known = {q.id for q in quotes}
    claims = [Claim(claim=c.claim, quote_ids=[i for i in c.quote_ids if i in known]) for c in out.claims[:MAX_CLAIMS]]
    return Collation(
        path=source.path,
        link=source.link,
        citekey=source.citekey,
        title=source.title,
        quotes=quotes,
        notes=notes,
        summary=out.summary,
        claims=claims,
        keywords=[k.strip().lstrip("#").lower() for k in out.keywords if k.strip()][:6],
        model=answer.route.model_ref,
        cost_usd=answer.cost_usd,
        tokens=answer.usage.total_tokens,
    )


def collate(settings: RunSettings, sources: list[SourceNote]) -> PhaseOutcome[Collation]:
    """Collate every source concurrently, one tagged task run each."""
    return fan_out(
        collate_note,
        settings,
        sources,
        phase=PHASE,
        complexity=COMPLEXITY,
        subject=lambda s: s.title,
        args=lambda s: (settings, s),
        front_matter=lambda s: s.front_matter,
        path=lambda s: s.path,
    )
