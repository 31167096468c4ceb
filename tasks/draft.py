"""Draft (complexity `medium`): one concept note per concept, from a Jinja2 template, written safely."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from prefect import task
from pydantic import BaseModel, Field

from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.checks import Check, reading_as
from tierflow.core.phases import PhaseOutcome, fan_out
from tierflow.flowkit.checks import links_resolve
from tierflow.report.spend import row_tokens
from tierflow.tasks.collate import Collation
from tierflow.tasks.synthesise import Concept, Synthesis
from tierflow.tasks.week import not_reading
from tierflow.vault.annotations import locate
from tierflow.vault.index import TIERFLOW_KEYS
from tierflow.vault.links import VaultNames, same_path
from tierflow.vault.notes import NoteWriter, SourceNote, WriteResult, read_source, safe_note_name, template_env
from tierflow.vault.quotations import InlineQuotation, inline_quotations, problem, quoted_in
from tierflow.vault.text import load_note, read_note_text

PHASE = "draft"
COMPLEXITY = "medium"
MAX_QUOTES = 6
MAX_SOURCES = 8
"""Sources a draft's prompt carries (their claims and quotes): those the synthesis quoted from first. The note
still lists every source of its concept; the cap keeps a draft's prompt (and the plan's estimate of it) bounded
however many notes a week has."""
MAX_RELATED = 5
SPEND_KEYS = ("created", "tierflow_run", "tierflow_phase_models", "tierflow_tokens", "tierflow_cost_usd")
"""Front-matter that changes from run to run without the draft changing; ignored when comparing."""
_CALLOUT_WINDOW = re.compile(r"read between (\d{4}-\d{2}-\d{2}) and (\d{4}-\d{2}-\d{2})")
"""The window as the draft's info callout names it: all a draft written before `tierflow_since` says of it."""


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
            source = by_key.get(q.source)  # an unknown source is `links_resolve`'s to report
            if source is not None and not locate(q.text, source.body):
                found.append(f"quotation {q.text[:60]!r} is not word for word in {q.source}; quote it exactly")
        return found

    return Check("quotes_verbatim", problems)


PROSE = ("summary", "discussion", "open_questions")
"""The draft's fields written as prose into the note, where a quotation in quotation marks is checked too."""
_ATTRIBUTED = re.compile(
    r"\s*[.,;:]?\s*(?:\([^()\n]{0,160}\)|\[\[[^\]\n]{0,200}\]\]|@[\w:-]+|(?:[\u2014\u2015\u2013]|--)[^\n]{0,120})"
)
"""What right after a quotation says whose words they are: `(hattie2007)`, `[[Note]]`, `— Hattie (2007)`."""
_WIKILINK = re.compile(r"\[\[([^\]|#\n]+)")


@dataclass(frozen=True)
class Unverified:
    """A quotation in the draft's prose not found word for word where it says it is from."""

    field: str
    text: str
    source: SourceNote | None
    """The source it names; None when it names none (then it is in none of them)."""
    problem: str


def inline_quotes_verbatim(sources: list[SourceNote]) -> Check:
    """Every quotation written in the prose (in quotation marks, or a blockquote) is word for word in the source
    it names, or in one of the sources when it names none; a work's title may be in a source's title or metadata."""
    return Check("inline_quotes_verbatim", lambda out: [u.problem for u in unverified_inline(out, sources)])


def unverified_inline(out: DraftOut, sources: list[SourceNote]) -> list[Unverified]:
    """The quotations in the draft's prose (`PROSE`) not found word for word where they say they are from."""
    found = []
    known = ", ".join(s.citekey for s in sources)
    for field in PROSE:
        value = getattr(out, field)
        for text in value if isinstance(value, list) else [value]:
            for q in inline_quotations(text):
                source = _named(q, sources)
                if any(quoted_in(q.text, t) for s in ([source] if source else sources) for t in _source_texts(s)):
                    continue
                where = source.citekey if source else f"any of the sources ({known})"
                found.append(Unverified(field, q.text, source, problem(q.text, where)))
    return found


def _source_texts(source: SourceNote) -> list[str]:
    """Where a quotation from a source may be found: its text, and its title and metadata (a work's title)."""
    values: list[object] = [source.front_matter]
    flat = []
    while values:
        v = values.pop()
        if isinstance(v, dict):
            values += list(v.values())
        elif isinstance(v, list | tuple | set):
            values += list(v)
        elif v is not None:
            flat.append(str(v))
    return [source.body, source.title, *flat]


def _named(q: InlineQuotation, sources: list[SourceNote]) -> SourceNote | None:
    """The source a quotation names: in what follows it at once (`"..." (hattie2007)`), else the nearest one
    its sentence names before it (`Hattie and Timperley (hattie2007) write that "..."`); None if neither does."""
    after = _ATTRIBUTED.match(q.after)
    if after:
        hits = sorted((at, i) for i, s in enumerate(sources) for at in _mentions(after.group(), s))
        if hits:
            return sources[hits[0][1]]
    hits = sorted((at, i) for i, s in enumerate(sources) for at in _mentions(q.before, s))
    return sources[hits[-1][1]] if hits else None


def _mentions(text: str, source: SourceNote) -> list[int]:
    """Where `text` names `source`: its citekey, a wikilink to its note, or its first author's surname with its
    year (`Hattie & Timperley, 2007`)."""
    at = []
    if source.citekey:
        at += [m.start() for m in re.finditer(rf"(?<!\w){re.escape(source.citekey)}(?!\w)", text, re.IGNORECASE)]
    names = {n.casefold() for n in (source.link, Path(source.path).stem, source.title) if n}
    at += [m.start() for m in _WIKILINK.finditer(text) if m.group(1).strip().casefold() in names]
    if source.authors and source.year and source.year in text:
        first = source.authors[0]
        surname = first.split(",")[0].strip() if "," in first else (first.split() or [""])[-1]
        if surname:
            at += [m.start() for m in re.finditer(rf"(?<!\w){re.escape(surname)}(?!\w)", text)]
    return at


def sections_present(out: DraftOut) -> list[str]:
    """The note's required sections have text."""
    return [f"the {name} is empty" for name in ("summary", "discussion") if not getattr(out, name).strip()]


def prompt(settings: RunSettings, concept: Concept, collations: list[Collation], already: str = "") -> tuple[str, str]:
    """The draft prompt; `already` is the text of the note a concept adds to, whose quotations are left out."""
    config = caller_for(settings).config
    env = template_env(config.vault, config.settings.vault.templates_folder)
    refs = {(r.citekey, r.quote_id) for r in concept.quote_refs}
    collations = carried(concept, collations)
    data = {
        "concept": concept.model_dump(exclude={"quote_refs"}),
        "sources": [
            {
                "citekey": c.citekey,
                "title": c.title,
                "summary": c.summary,
                "claims": [cl.claim for cl in c.claims],
                # Quotes the synthesis picked come first; the model may quote only from these.
                "quotes": [
                    q.text
                    for q in sorted(c.quotes, key=lambda q: (c.citekey, q.id) not in refs)
                    if not (already and locate(q.text, already))
                ][:MAX_QUOTES],
            }
            for c in collations
        ],
    }
    system = env.get_template("prompts/draft/system.j2").render()
    user = env.get_template("prompts/draft/concept.j2").render(concept=concept, data=data, max_quotes=MAX_QUOTES)
    return system, user


def carried(concept: Concept, collations: list[Collation]) -> list[Collation]:
    """The sources a draft's prompt carries: the concept's, those the synthesis quoted first, `MAX_SOURCES` at most."""
    quoted = {r.citekey for r in concept.quote_refs}
    return sorted(collations, key=lambda c: c.citekey not in quoted)[:MAX_SOURCES]


def draft_check(names: VaultNames, citekeys: set[str]) -> Check:
    """`links_resolve` for a draft: its own links resolve to one note each, and every quotation is from a source."""
    links = links_resolve(names, lambda out: [out.summary, out.discussion, *out.open_questions])

    def problems(out: DraftOut) -> list[str]:
        strangers = sorted({q.source for q in out.quotes if q.source not in citekeys})
        known = ", ".join(sorted(citekeys))
        return links.problems(out) + [f"quotation source {s!r} is not one of the sources ({known})" for s in strangers]

    return Check(links.name, problems)


def trial_checks(vault: Path | None, sources: list[str]) -> list[Check]:
    """The draft's checks rebuilt from the vault as it is now, for a tier trial (`Check.rebuild`).

    They read the trial's answer as a `DraftOut`, as the draft phase gives it to them: its quotations are objects.
    """
    notes = [read_source(Path(vault or "."), path) for path in sources]
    return reading_as(DraftOut, draft_checks(VaultNames.scan(Path(vault or ".")), notes))


def draft_checks(names: VaultNames, sources: list[SourceNote]) -> list[Check]:
    """What a draft must pass, each able to be rebuilt from the vault for a trial."""
    recipe = (f"{__name__}:trial_checks", json.dumps({"sources": [s.path for s in sources]}))
    checks = [
        draft_check(names, {s.citekey for s in sources}),
        quotes_verbatim(sources),
        inline_quotes_verbatim(sources),
        Check("sections_present", sections_present),
    ]
    return [replace(c, rebuild=recipe) for c in checks]


def related_notes(
    names: VaultNames,
    sources: list[SourceNote],
    leave_out: set[str],
    folders: tuple[str, ...] = (),
    limit: int = MAX_RELATED,
) -> list[str]:
    """Links to the person's notes the concept's sources link to most, except `leave_out` and `folders`."""
    prefixes = tuple(f"{f.strip('/')}/" for f in folders)
    counts: Counter[str] = Counter()
    for source in sources:
        for target in source.wikilinks:
            found = names.resolve(target)
            if len(found) == 1 and found[0] not in leave_out and not found[0].startswith(prefixes):
                counts[found[0]] += 1
    ranked = sorted(counts, key=lambda p: (-counts[p], p.casefold()))
    return [names.link_for(p) for p in ranked[:limit]]


def draft_names(vault: Path, folder: str, concepts: list[Concept]) -> list[tuple[Concept, str]]:
    """Each concept (with the note it extends if its name is taken) and a draft name no note in the vault has.

    A name is free when no note anywhere in the vault has it (case-insensitively), except tierflow's own
    earlier draft at the same place, which the writer may update.
    """
    names = VaultNames.scan(vault)
    used: set[str] = set()
    out = []
    for concept in concepts:
        extends = concept.extends
        for n in range(1, 100):
            title = concept.name if n == 1 else f"{concept.name} (addition{'' if n == 2 else f' {n - 1}'})"
            stem = safe_note_name(title)
            here = f"{folder.strip('/')}/{stem}.md"
            others = [p for p in names.taken(stem) if not (same_path(p, here) and _by_tierflow(vault / p))]
            if stem.casefold() in used or others:
                extends = extends or (names.link_for(others[0]) if others else None)
                continue
            used.add(stem.casefold())
            out.append((concept.model_copy(update={"extends": extends}), title))
            break
    return out


def draft_window(front_matter: dict[str, Any], body: str) -> str | None:
    """The reading window a concept draft was written for (`tierflow_since` to `tierflow_until`), or None.

    A draft is another week's output, paid for and maybe not yet reviewed: only a rerun of its own window may
    replace it (`NoteWriter.write`'s `scope`). A draft from before the window was recorded is read by its callout.
    """
    since, until = front_matter.get("tierflow_since"), front_matter.get("tierflow_until")
    if since and until:
        return f"{since} to {until}"
    found = _CALLOUT_WINDOW.search(body)
    return f"{found[1]} to {found[2]}" if found else None


def _by_tierflow(path: Path) -> bool:
    try:
        return any(key in load_note(path).metadata for key in TIERFLOW_KEYS)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):  # not provably tierflow's, so not to be replaced
        return False


@task(name=PHASE)
def draft_concept(
    settings: RunSettings,
    concept: Concept,
    title: str,
    collations: list[Collation],
    sources: list[SourceNote],
    share: RunShare,
) -> WriteResult:
    """Draft one concept note, check its quotations and links against the vault, and write it."""
    caller = caller_for(settings)
    config = caller.config
    vault = Path(settings.vault or ".").resolve()
    names = VaultNames.scan(vault)
    extended = names.resolve(concept.extends)[0] if concept.extends and names.resolve(concept.extends) else None
    already = read_note_text(vault / extended) if extended else ""
    system, user = prompt(settings, concept, collations, already)
    by_key = {s.citekey: s for s in sources}
    answer = caller.ask(
        phase=PHASE,
        complexity=COMPLEXITY,
        system=system,
        prompt=user,
        output=DraftOut,
        subject=title,
        checks=draft_checks(names, sources),
    )
    out: DraftOut = answer.parsed
    # Read before links are unlinked: a `[[link]]` beside a quotation may be what names its source.
    inline = unverified_inline(out, sources)
    # Links that still do not resolve after the retry are left as plain text, never written as links.
    out = out.model_copy(
        update={
            "summary": names.unlink_unresolved(out.summary),
            "discussion": names.unlink_unresolved(out.discussion),
            "open_questions": [names.unlink_unresolved(q) for q in out.open_questions],
        }
    )
    quotes = []
    for q in out.quotes[:MAX_QUOTES]:
        if already and locate(q.text, already):
            continue  # the note it extends already quotes it
        source = by_key.get(q.source)
        page = None
        if source is not None:
            page = next((a.page for a in source.annotations if a.text and locate(q.text, a.text)), None)
        quotes.append(
            {
                "text": " ".join(q.text.split()),
                "link": source.link if source else None,
                "source": q.source,
                "page": page,
                "verbatim": source is not None and locate(q.text, source.body),
            }
        )
    today = config.today().isoformat()
    extends_link = names.link_for(extended) if extended else None
    leave_out = {s.path for s in sources} | ({extended} if extended else set())
    env = template_env(config.vault, config.settings.vault.templates_folder)
    body = env.get_template("notes/concept.md.j2").render(
        draft=out,
        quotes=quotes,
        unverified={
            field: [
                {"text": names.unlink_unresolved(" ".join(u.text.split())), "link": u.source.link if u.source else None}
                for u in inline
                if u.field == field
            ]
            for field in PROSE
        },
        sources=[by_key[c.citekey] for c in collations if c.citekey in by_key],
        created=today,
        since=share.since,
        until=share.until,
        run_id=share.run_id,
        offline=answer.route.provider_kind == "offline",
        checks_failed=answer.checks_failed,
        model=answer.route.model_ref,
        extends=extends_link,
        related=related_notes(names, sources, leave_out, not_reading(config.settings.vault)),
        link=names.link,
    )
    tokens = share.tokens_each + answer.usage.total_tokens
    cost = None if share.cost_each is None or answer.cost_usd is None else round(share.cost_each + answer.cost_usd, 6)
    front_matter: dict[str, Any] = {
        "title": title,
        "tags": ["concept", "tierflow/draft"],
        "status": "draft",
        **({"extends": names.link(extends_link)} if extends_link else {}),
        "sources": [names.link(by_key[c].link) for c in concept.sources if c in by_key],
        "created": today,
        "tierflow_run": share.run_id,
        "tierflow_since": share.since,
        "tierflow_until": share.until,
        "tierflow_phase_models": [*share.phase_models, f"draft: {answer.route.model_ref}"],
        "tierflow_tokens": tokens,
        "tierflow_cost_usd": cost,
        "tierflow_unverified_quotes": sum(1 for q in quotes if not q["verbatim"]) + len(inline),
    }
    if answer.checks_failed:
        front_matter["tierflow_checks_failed"] = list(answer.checks_failed)
    writer = NoteWriter(vault, config.settings.vault.output_folder, today=config.today(), names=names)
    # A draft of another window is kept; this one is written beside it, named for its window's first day.
    result = writer.write(
        title,
        front_matter,
        body,
        compare_keys=SPEND_KEYS,
        scope=draft_window,
        dated=date.fromisoformat(share.since),
    )
    if result.action != "unchanged":
        # What was written, and by which call: a later scan measures the person's edits against it.
        caller.ledger.remember_draft(
            result.path,
            load_note(Path(settings.vault or ".").joinpath(result.path)).content,
            run_id=share.run_id,
            flow=settings.flow,
            phase=PHASE,
            subject=title,
            tier=answer.route.tier,
            model=answer.route.model_ref,
            request_id=answer.request_id,
        )
    return result


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
    config = caller_for(settings).config
    concepts = draft_names(
        Path(settings.vault or ".").resolve(), config.settings.vault.output_folder, synthesis.concepts
    )
    return fan_out(
        draft_concept,
        settings,
        concepts,
        phase=PHASE,
        complexity=COMPLEXITY,
        subject=lambda named: named[1],
        args=lambda named: (
            settings,
            *named,
            [by_key[k] for k in named[0].sources if k in by_key],
            [s for s in sources if s.citekey in named[0].sources],
            share,
        ),
    )
