"""Synthesise (complexity `high`): one call across the week's collations finds patterns and concepts.

A week whose synthesis prompt does not fit the routed model's context window is synthesised hierarchically
(`tierflow.core.hierarchy`): the collations in groups (`synthesise · group 2/5`), then one merge of the groups'
syntheses (`synthesise · week`). Either way the result is one `Synthesis`, grounded in the week's sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from prefect import task
from pydantic import BaseModel, Field

from tierflow.core.calls import Answer, RunSettings, caller_for
from tierflow.core.checks import Check
from tierflow.core.context import prompt_room
from tierflow.core.hierarchy import prompt_tokens, reduce_in_groups
from tierflow.core.phases import PhaseOutcome
from tierflow.tasks.collate import Collation
from tierflow.tasks.week import not_reading
from tierflow.vault.annotations import locate
from tierflow.vault.concepts import ConceptNote, by_relevance, existing_concepts, matching, read_concept
from tierflow.vault.index import VaultIndex
from tierflow.vault.links import VaultNames
from tierflow.vault.notes import safe_note_name, template_env

PHASE = "synthesise"
COMPLEXITY = "high"
SKIPPED_CONCEPT = "concept "
"""How a skipped concept is labelled (`concept <name>`) in a synthesis's `skipped`."""


class QuoteRef(BaseModel):
    citekey: str
    quote_id: int


class Concept(BaseModel):
    name: str
    summary: str
    sources: list[str]
    quote_refs: list[QuoteRef] = Field(default_factory=list)
    tensions: list[str] = Field(default_factory=list)
    extends: str | None = None
    """The existing note this concept adds to (its name), or null for a new concept."""


class SynthesisOut(BaseModel):
    patterns: list[str]
    tensions: list[str]
    concepts: list[Concept]


class MergedSynthesisOut(SynthesisOut):
    """One synthesis made from several groups' syntheses: the same fields, its own schema name."""


class Synthesis(SynthesisOut):
    model: str
    cost_usd: float | None
    tokens: int
    skipped: list[tuple[str, str]] = Field(default_factory=list)
    """Concepts not drafted, with the reason: ungrounded, over the limit, or already cited by an existing note."""
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


@dataclass(frozen=True)
class VaultConcepts:
    """The vault's names and its existing concept notes, the most relevant to the week first."""

    names: VaultNames
    notes: list[ConceptNote]
    listed: list[ConceptNote]

    @classmethod
    def read(cls, settings: RunSettings, collations: list[Collation]) -> VaultConcepts:
        config = caller_for(settings).config
        cfg = config.settings.vault
        vault = Path(settings.vault or ".").resolve()
        names = VaultNames.scan(vault)
        index = VaultIndex(vault, max_note_bytes=cfg.max_note_bytes)
        notes = existing_concepts(
            vault, index, names, folders=cfg.concept_folders, tags=cfg.concept_tags, exclude=not_reading(cfg)
        )
        return cls(names, notes, []).ranked_for(settings, collations)

    def ranked_for(self, settings: RunSettings, collations: list[Collation]) -> VaultConcepts:
        """The same notes, listing the most relevant to `collations` (a group of the week) without a rescan."""
        terms = [k for c in collations for k in c.keywords]
        ranked = by_relevance(self.notes, terms, [c.path for c in collations])
        limit = caller_for(settings).config.settings.vault.max_listed_concepts
        return VaultConcepts(self.names, self.notes, ranked[:limit])

    def extended(self, settings: RunSettings, concept: Concept) -> ConceptNote | None:
        """The person's note this concept adds to: one it names or matches, or any note with its name."""
        found = matching(self.notes, concept.extends) or matching(self.notes, concept.name)
        if found is not None:
            return found
        vault = Path(settings.vault or ".").resolve()
        ours = tuple(f"{f.strip('/')}/" for f in not_reading(caller_for(settings).config.settings.vault))
        for path in self.names.taken(safe_note_name(concept.name)):
            note = None if path.startswith(ours) else read_concept(vault, path, self.names, tierflow_too=False)
            if note is not None:
                return note
        return None


def prompt(
    settings: RunSettings,
    collations: list[Collation],
    since: str,
    until: str,
    known: VaultConcepts | None = None,
) -> tuple[str, str]:
    config = caller_for(settings).config
    env = template_env(config.vault, config.settings.vault.templates_folder)
    known = known or VaultConcepts.read(settings, collations)
    keys = {c.path: c.citekey for c in collations}
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
        ],
        "existing_notes": [
            {
                "name": n.name,
                "aliases": list(n.aliases),
                "summary": n.summary,
                "cites": [keys[p] for p in sorted(n.cites) if p in keys],
            }
            for n in known.listed
        ],
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


def merge_prompt(
    settings: RunSettings, parts: list[Synthesis], collations: list[Collation], since: str, until: str
) -> tuple[str, str]:
    """The prompt that merges several groups' syntheses of one week into one."""
    config = caller_for(settings).config
    env = template_env(config.vault, config.settings.vault.templates_folder)
    cited = {s for part in parts for concept in part.concepts for s in concept.sources}
    data = {
        "groups": [
            {
                "patterns": part.patterns,
                "tensions": part.tensions,
                "concepts": [
                    c.model_dump(include={"name", "summary", "sources", "quote_refs", "tensions", "extends"})
                    for c in part.concepts
                ],
            }
            for part in parts
        ],
        "sources": [{"citekey": c.citekey, "title": c.title} for c in collations if c.citekey in cited],
    }
    system = env.get_template("prompts/synthesise/system.j2").render()
    user = env.get_template("prompts/synthesise/merge.j2").render(
        groups=parts, data=data, since=since, until=until, max_concepts=config.settings.vault.max_concepts
    )
    return system, user


@task(name=PHASE, task_run_name="synthesise · week")
def synthesise(
    settings: RunSettings, collations: list[Collation], since: str, until: str, subject: str = "week"
) -> Synthesis:
    """Find the week's (or a group's) patterns, tensions and candidate concepts; only sources and quotes that
    exist survive."""
    known = VaultConcepts.read(settings, collations)
    system, user = prompt(settings, collations, since, until, known)
    answer = caller_for(settings).ask(
        phase=PHASE,
        complexity=COMPLEXITY,
        system=system,
        prompt=user,
        output=SynthesisOut,
        subject=subject,
        checks=[grounded(collations)],
    )
    return _grounded_synthesis(settings, answer, collations, known)


@task(name=PHASE, task_run_name="synthesise · merge")
def merge(
    settings: RunSettings, parts: list[Synthesis], collations: list[Collation], since: str, until: str
) -> Synthesis:
    """One synthesis from several groups' syntheses, grounded in the sources and quotes of the whole week."""
    cited = {s for part in parts for concept in part.concepts for s in concept.sources}
    known = VaultConcepts.read(settings, [c for c in collations if c.citekey in cited] or collations)
    system, user = merge_prompt(settings, parts, collations, since, until)
    answer = caller_for(settings).ask(
        phase=PHASE,
        complexity=COMPLEXITY,
        system=system,
        prompt=user,
        output=MergedSynthesisOut,
        subject=f"merge of {len(parts)} groups",
        checks=[grounded(collations)],
    )
    merged = _grounded_synthesis(settings, answer, collations, known)
    # What the groups dropped is still the week's to report, once, unless the merge drafts it after all.
    earlier = not_drafted([item for part in parts for item in part.skipped], merged.concepts)
    return merged.model_copy(
        update={
            "skipped": list(dict.fromkeys([*earlier, *merged.skipped])),
            "checks_failed": sorted({*merged.checks_failed, *(c for p in parts for c in p.checks_failed)}),
        }
    )


def _grounded_synthesis(
    settings: RunSettings, answer: Answer, collations: list[Collation], known: VaultConcepts
) -> Synthesis:
    """The answer's concepts that cite this week's sources and quotes, as additions where a note exists."""
    out: SynthesisOut = answer.parsed
    quotes = {(c.citekey, q.id): q.text for c in collations for q in c.quotes}
    by_key = {c.citekey: c for c in collations}
    concepts: list[Concept] = []
    skipped: list[tuple[str, str]] = []
    # Whatever the tiers answered, only concepts grounded in this week's sources and quotes are drafted.
    limit = caller_for(settings).config.settings.vault.max_concepts
    for concept in same_named_as_one(out.concepts):
        name = concept.name.strip() or "(unnamed)"
        sources = [s for s in dict.fromkeys(concept.sources) if s in by_key]
        if not sources or not concept.name.strip():
            why = "; ".join(concept_problems(concept, set(by_key), set(quotes)))
            skipped.append((f"{SKIPPED_CONCEPT}{name}", f"dropped by the synthesis checks: {why}"))
            continue
        if len(concepts) >= limit:
            skipped.append((f"{SKIPPED_CONCEPT}{name}", f"more than [vault] max_concepts = {limit} concepts"))
            continue
        refs = [r for r in concept.quote_refs if (r.citekey, r.quote_id) in quotes]
        existing = known.extended(settings, concept)
        if existing is not None:
            # An addition proposes only what the note does not cite yet: new sources, new quotations.
            sources = [s for s in sources if by_key[s].path not in existing.cites]
            refs = [
                r for r in refs if r.citekey in sources and not locate(quotes[(r.citekey, r.quote_id)], existing.body)
            ]
            if not sources:
                reason = f"{known.names.link(existing.link)} already cites every source this week adds to it"
                skipped.append((f"{SKIPPED_CONCEPT}{concept.name}", reason))
                continue
        extends = existing.link if existing is not None else None
        concepts.append(concept.model_copy(update={"sources": sources, "quote_refs": refs, "extends": extends}))
    return Synthesis(
        checks_failed=list(answer.checks_failed),
        patterns=out.patterns,
        tensions=out.tensions,
        concepts=concepts,
        skipped=skipped,
        model=answer.route.model_ref,
        cost_usd=answer.cost_usd,
        tokens=answer.usage.total_tokens,
    )


def not_drafted(skipped: list[tuple[str, str]], concepts: list[Concept]) -> list[tuple[str, str]]:
    """The skipped items but those about one of `concepts` (by name, case and spacing aside): a group's synthesis
    may skip a concept (over `max_concepts`, say) that the merge of the groups drafts."""
    drafted = {_name_key(c.name) for c in concepts}
    return [
        (what, why)
        for what, why in skipped
        if not (what.startswith(SKIPPED_CONCEPT) and _name_key(what.removeprefix(SKIPPED_CONCEPT)) in drafted)
    ]


def _name_key(name: str) -> str:
    """A concept's name as `same_named_as_one` compares it: case and spacing aside."""
    return " ".join(name.split()).casefold()


def same_named_as_one(concepts: list[Concept]) -> list[Concept]:
    """One concept per name (case and spacing aside), in first-named order: a merge of groups' syntheses may name
    one concept twice, and two drafts of one note, or one drafted and one skipped, would contradict each other."""
    merged: dict[str, Concept] = {}
    for c in concepts:
        key = _name_key(c.name) or f"unnamed {len(merged)}"  # dropped later, each with its why
        first = merged.get(key)
        if first is None:
            merged[key] = c
            continue
        merged[key] = first.model_copy(
            update={
                "sources": list(dict.fromkeys([*first.sources, *c.sources])),
                "quote_refs": list({(r.citekey, r.quote_id): r for r in [*first.quote_refs, *c.quote_refs]}.values()),
                "tensions": list(dict.fromkeys([*first.tensions, *c.tensions])),
            }
        )
    return list(merged.values())


def synthesise_week(
    settings: RunSettings, collations: list[Collation], since: str, until: str
) -> PhaseOutcome[Synthesis]:
    """One tagged task run over all the week's collations, or, when its prompt does not fit the routed model's
    context window, one per group of collations and then a merge of the groups' syntheses."""
    caller = caller_for(settings)
    routed = caller.sizing_route(PHASE, COMPLEXITY)
    known = cache(lambda: VaultConcepts.read(settings, collations))  # read only if a window is to be checked

    def measure(group: list[Collation]) -> int:
        system, user = prompt(settings, group, since, until, known().ranked_for(settings, group))
        return prompt_tokens(settings, routed, system, user, SynthesisOut)

    def merge_measure(parts: list[Synthesis]) -> int:
        return prompt_tokens(
            settings, routed, *merge_prompt(settings, parts, collations, since, until), MergedSynthesisOut
        )

    def group_subject(group: list[Collation]) -> str:
        if len(group) == len(collations):
            return "week"
        return f"group of {len(group)}: {group[0].citekey} to {group[-1].citekey}"

    outcome = reduce_in_groups(
        settings,
        collations,
        phase=PHASE,
        complexity=COMPLEXITY,
        limit=prompt_room(caller.config, routed),
        synthesise=synthesise,
        synthesise_args=lambda group: (settings, group, since, until, group_subject(group)),
        measure=measure,
        merge=merge,
        merge_args=lambda parts: (settings, parts, collations, since, until),
        merge_measure=merge_measure,
        subject="week",
        label=lambda c: f"the collation of {c.path}",
        hint=(
            f"Route {PHASE} to a tier with a larger window (--tier {PHASE}=TIER), or shorten that note's highlights."
        ),
    )
    for synthesis in outcome.results:  # its skipped concepts reach the run through the flow
        if not synthesis.concepts:
            outcome.skipped.append(("synthesis", "no concept survived the checks, so nothing was drafted"))
    return outcome
