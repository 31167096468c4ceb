"""The module-review phases: read the module folder, collate each week and assignment (`low`), synthesise the
semester hierarchically (`high`), and draft the revision proposal (`medium`).

Written with the public API only (`from tierflow import ...`), like a flow of your own. Every claim carries
the links of the notes it rests on; the checks hold each answer to links that resolve to exactly one note of
its own input, and the proposal drops (and reports) a claim left without one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pydantic import field_validator

from tierflow import (
    BaseModel,
    Check,
    Field,
    Note,
    Phase,
    RunSettings,
    VaultError,
    VaultNames,
    WriteResult,
    caller_for,
    links_resolve,
    prompt_room,
    prompt_tokens,
    read_folder,
    reduce_in_groups,
    task,
    templates,
    writer_for,
)

COLLATE = Phase("collate", "low")
SYNTHESISE = Phase("synthesise", "high")
DRAFT = Phase("draft", "medium")
MAX_CLAIMS = 6
MAX_NOTE_CHARS = 6000
"""A note's text in a prompt is cut to this many characters; the cut is marked."""

_LINK = re.compile(r"^!?\[\[([^\]|#]*)(?:[#|][^\]]*)?\]\]$")


class Claim(BaseModel):
    claim: str
    evidence: list[str] = Field(default_factory=list)
    """The link of each note the claim rests on, as the prompt gives it."""

    @field_validator("evidence", mode="before")
    @classmethod
    def _targets(cls, value: Any) -> Any:
        """`[[link]]`, `[[link|alias]]` and `link` all mean the note `link`; a link that is a path with `.md`
        (a name no wikilink can hold, `#` or `|` and all) is taken whole."""
        if not isinstance(value, list):
            return value
        out = []
        for v in value:
            text = str(v).strip()
            inner = text.removeprefix("!")[2:-2] if text.removeprefix("!").startswith("[[") else ""
            match = _LINK.match(text)
            if text.endswith("]]") and inner.lower().endswith(".md"):
                out.append(inner)
            else:
                out.append(match.group(1).strip() if match else text)
        return list(dict.fromkeys(out))


class UnitFindings(BaseModel):
    summary: str = ""
    worked: list[Claim] = Field(default_factory=list)
    misconceptions: list[Claim] = Field(default_factory=list)
    suggestions: list[Claim] = Field(default_factory=list)

    def claims(self) -> list[Claim]:
        return [*self.worked, *self.misconceptions, *self.suggestions]


class SemesterFindings(UnitFindings):
    """The same shape, for the semester (or a group of its parts)."""


class ModuleProposal(BaseModel):
    summary: str = ""
    what_worked: list[Claim] = Field(default_factory=list)
    misconceptions: list[Claim] = Field(default_factory=list)
    readings: list[Claim] = Field(default_factory=list)
    assessment: list[Claim] = Field(default_factory=list)
    teaching_activities: list[Claim] = Field(default_factory=list)

    def claims(self) -> list[Claim]:
        return [
            *self.what_worked,
            *self.misconceptions,
            *self.readings,
            *self.assessment,
            *self.teaching_activities,
        ]


SECTIONS = (
    ("what_worked", "What worked"),
    ("misconceptions", "Recurring misconceptions"),
    ("readings", "Suggested changes to readings"),
    ("assessment", "Suggested changes to assessment"),
    ("teaching_activities", "Suggested changes to teaching activities"),
)


# --- the module folder -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """A note the review reads, as the prompts show it."""

    link: str
    kind: str
    """run-report, concept-draft, cohort-summary, evaluation or descriptor."""
    title: str
    text: str
    unit: str = ""

    def data(self) -> dict[str, str]:
        return {"link": self.link, "kind": self.kind, "title": self.title, "text": self.text}


@dataclass(frozen=True)
class Unit:
    """One collate call's worth of the semester: a week, an assignment, or the student evaluations."""

    label: str
    notes: tuple[Evidence, ...]


@dataclass
class Module:
    folder: str
    name: str
    descriptor: Evidence
    units: list[Unit]
    output_folder: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def evidence(self) -> list[Evidence]:
        return [n for u in self.units for n in u.notes]


def module_folder(settings: RunSettings, module: str | None) -> str:
    """`--module`, else `[module] folder`, relative to the vault (`module_path`)."""
    return module_path(Path(settings.vault or "."), module or caller_for(settings).config.settings.module.folder)


def module_path(vault: Path, folder: str) -> str:
    """The module folder `folder`, relative to `vault` (an absolute path inside the vault is taken relative to it;
    a leading `/` means the vault's root); an error that says how to set it when none is given."""
    folder = folder.strip()
    vault = vault.resolve()
    if folder.startswith("/") and Path(folder).resolve().is_relative_to(vault):
        folder = Path(folder).resolve().relative_to(vault).as_posix()
    folder = folder.strip("/")
    if not folder:
        raise VaultError(
            "no module folder: pass --module FOLDER (relative to the vault), or set [module] folder in the "
            "vault's .tierflow/config.toml"
        )
    return folder


def _kind(note: Note) -> str | None:
    tags = {t.lower() for t in note.tags}
    fm = note.front_matter
    if str(fm.get("type", "")).lower() == "module-descriptor" or "module/descriptor" in tags:
        return "descriptor"
    if "module/proposal" in tags:
        return "proposal"
    if "tierflow/run" in tags or fm.get("tierflow_flow"):
        return "run-report"
    if "feedback/cohort" in tags:
        return "cohort-summary"
    if "module/evaluation" in tags or str(fm.get("type", "")).lower() == "evaluation":
        return "evaluation"
    if fm.get("student_id") or "feedback" in tags:
        return None  # a student's feedback draft: it names the student, and no module review sends it anywhere
    if "concept" in tags or "tierflow/draft" in tags:
        return "concept-draft"
    return None


def _week(day: date) -> str:
    return f"week of {(day - timedelta(days=day.weekday())).isoformat()}"


def _day(value: Any, fallback: date) -> date:
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return fallback


def _text(note: Note) -> str:
    body = note.body.strip()
    return body if len(body) <= MAX_NOTE_CHARS else body[:MAX_NOTE_CHARS] + " [...]"


@task(name="load module", task_run_name="load · {folder}")
def load_module(settings: RunSettings, folder: str) -> Module:
    """The module folder's notes, sorted into one unit per week (run reports and the concept drafts of their
    runs), one per assignment (cohort summaries), and one for the student evaluations."""
    output = caller_for(settings).config.settings.module.output_folder.strip("/")
    found = read_folder(settings, folder, include_tierflow=True)
    own = f"{found.folder}/{output}/"
    descriptors: list[Note] = []
    weeks_of_runs: dict[str, str] = {}
    sorted_notes: list[tuple[Note, str]] = []
    skipped = list(found.skipped)
    for note in found.notes:
        kind = _kind(note)
        if note.path.startswith(own) or kind == "proposal":
            continue  # this flow's own output
        if kind is None:
            skipped.append((note.path, "not a run report, concept draft, cohort summary, evaluation or descriptor"))
            continue
        if kind == "descriptor":
            descriptors.append(note)
            continue
        run = str(note.front_matter.get("tierflow_run") or "")
        if kind == "run-report" and run:
            weeks_of_runs[run] = _week(_day(note.front_matter.get("tierflow_day"), note.date))
        sorted_notes.append((note, kind))
    if len(descriptors) != 1:
        what = "none" if not descriptors else ", ".join(n.path for n in descriptors)
        raise VaultError(
            f"{folder}: a module folder needs exactly one module descriptor note (front-matter "
            f"`type: module-descriptor` or the tag module/descriptor); found {what}"
        )
    names = VaultNames.scan(Path(settings.vault or "."))
    units: dict[str, list[Evidence]] = {}
    for note, kind in sorted_notes:
        if why := names.unlinkable(note.path):
            skipped.append((note.path, f"read, and its name {why}"))
        if kind == "run-report":
            label = _week(_day(note.front_matter.get("tierflow_day"), note.date))
        elif kind == "concept-draft":  # in the week of the run that wrote it
            run = str(note.front_matter.get("tierflow_run") or "")
            label = weeks_of_runs.get(run) or _week(note.day_of("created") or note.date)
        elif kind == "cohort-summary":
            label = f"assignment {note.front_matter.get('assignment') or note.path.rsplit('/', 1)[0]}"
        else:
            label = "student evaluations"
        units.setdefault(label, []).append(Evidence(note.link, kind, note.title, _text(note), label))
    (descriptor,) = descriptors
    order = sorted(units, key=lambda k: (not k.startswith("week"), k.startswith("student"), k))
    return Module(
        folder=found.folder,
        name=str(descriptor.front_matter.get("module") or descriptor.title),
        descriptor=Evidence(descriptor.link, "descriptor", descriptor.title, _text(descriptor)),
        units=[Unit(label, tuple(units[label])) for label in order],
        output_folder=f"{found.folder}/{output}",
        skipped=skipped,
    )


# --- checks ----------------------------------------------------------------------------------------


def evidence_checks(settings: RunSettings, allowed: set[str], claims: Any) -> list[Check]:
    """`links_resolve` on every claim's evidence, and `evidence_cited`: each claim cites at least one note,
    and only notes of its own input. A note of the input is checked as the proposal writes it: a link that
    resolves, or its name as plain text when no link can name it alone, never a problem for the model."""
    names = VaultNames.scan(Path(settings.vault or "."))

    def problems(parsed: Any) -> list[str]:
        out = []
        for c in claims(parsed):
            if not c.evidence:
                out.append(f"the claim {c.claim[:60]!r} cites no note")
            out += [f"{e!r} is not one of the notes given" for e in c.evidence if e not in allowed]
        return out

    def written(link: str) -> str:  # a link tierflow gave is written as `draft_proposal` writes it
        return names.link(link) if link in allowed else f"[[{link}]]"

    resolve = links_resolve(names, lambda parsed: [written(e) for c in claims(parsed) for e in c.evidence])
    return [resolve, Check("evidence_cited", problems)]


# --- collate ---------------------------------------------------------------------------------------


class Part(BaseModel):
    """A collated unit, or a synthesis of several: the findings and what they cost."""

    label: str
    findings: UnitFindings
    model: str = ""
    tokens: int = 0
    cost_usd: float | None = 0.0

    def links(self) -> set[str]:
        return {e for c in self.findings.claims() for e in c.evidence}


def collate_prompt(settings: RunSettings, unit: Unit) -> tuple[str, str]:
    env = templates(settings)
    data = {"part": unit.label, "notes": [n.data() for n in unit.notes]}
    prompt = env.get_template("prompts/module/collate.j2").render(label=unit.label, data=data, max_claims=MAX_CLAIMS)
    return env.get_template("prompts/module/system.j2").render(), prompt


@task(name="collate")
def collate_unit(settings: RunSettings, unit: Unit) -> Part:
    system, prompt = collate_prompt(settings, unit)
    answer = COLLATE.ask(
        settings, system=system, prompt=prompt, output=UnitFindings,
        subject=unit.label, checks=evidence_checks(settings, {n.link for n in unit.notes}, UnitFindings.claims),
    )  # fmt: skip
    return Part(
        label=unit.label,
        findings=answer.parsed,
        model=answer.route.model_ref,
        tokens=answer.usage.total_tokens,
        cost_usd=answer.cost_usd,
    )


# --- synthesise ------------------------------------------------------------------------------------


def synthesis_prompt(settings: RunSettings, module: str, parts: list[Part], merge: bool = False) -> tuple[str, str]:
    env = templates(settings)
    data = {"parts": [{"label": p.label, **p.findings.model_dump()} for p in parts]}
    prompt = env.get_template("prompts/module/synthesise.j2").render(
        module=module, count=len(parts), merge=merge, data=data, max_claims=MAX_CLAIMS
    )
    return env.get_template("prompts/module/system.j2").render(), prompt


def _subject(parts: list[Part], merge: bool, whole: int) -> str:
    if merge:
        return f"merge of {len(parts)} results"
    return "semester" if len(parts) == whole else f"group: {parts[0].label} to {parts[-1].label}"[:120]


def synthesis_tokens(settings: RunSettings, module: str, parts: list[Part], merge: bool = False) -> int:
    """The synthesis prompt's tokens as the call path counts them against the context window."""
    routed = caller_for(settings).sizing_route(SYNTHESISE.name, SYNTHESISE.complexity)
    return prompt_tokens(settings, routed, *synthesis_prompt(settings, module, parts, merge), SemesterFindings)


@task(name="synthesise")
def synthesise_parts(
    settings: RunSettings, module: str, parts: list[Part], merge: bool = False, whole: int = 0
) -> Part:
    """Findings across `parts`: the semester's `whole` collated parts at once, a group of them, or (`merge`) the
    results of several groups."""
    system, prompt = synthesis_prompt(settings, module, parts, merge)
    allowed = set().union(*(p.links() for p in parts)) if parts else set()
    answer = SYNTHESISE.ask(
        settings, system=system, prompt=prompt,
        output=SemesterFindings, subject=_subject(parts, merge, whole),
        checks=evidence_checks(settings, allowed, SemesterFindings.claims),
    )  # fmt: skip
    return Part(
        label=", ".join(p.label for p in parts),
        findings=answer.parsed,
        model=answer.route.model_ref,
        tokens=sum(p.tokens for p in parts) + answer.usage.total_tokens,
        cost_usd=None
        if answer.cost_usd is None or any(p.cost_usd is None for p in parts)
        else sum(p.cost_usd or 0 for p in parts) + answer.cost_usd,
    )


def synthesise(settings: RunSettings, module: Module, parts: list[Part]):  # noqa: ANN201
    """One synthesis over every part when it fits the `high` tier's context window, else in groups, then
    over the groups' results (`reduce_in_groups`)."""
    caller = caller_for(settings)
    room = prompt_room(caller.config, caller.sizing_route(SYNTHESISE.name, SYNTHESISE.complexity))

    def measure(group: list[Part], merge: bool = False) -> int:
        return synthesis_tokens(settings, module.name, list(group), merge)

    whole = len(parts)
    return reduce_in_groups(
        settings, parts, phase=SYNTHESISE.name, complexity=SYNTHESISE.complexity, limit=room,
        synthesise=synthesise_parts, synthesise_args=lambda group: (settings, module.name, group, False, whole),
        measure=measure, merge=synthesise_parts,
        merge_args=lambda results: (settings, module.name, results, True, whole),
        merge_measure=lambda results: measure(results, True), subject="semester", label=lambda p: p.label,
        hint="Route synthesise to a tier with a larger window, or split the module folder.",
    )  # fmt: skip


# --- draft -----------------------------------------------------------------------------------------


def proposal_prompt(settings: RunSettings, module: Module, semester: Part) -> tuple[str, str]:
    env = templates(settings)
    data = {"descriptor": module.descriptor.data(), "findings": semester.findings.model_dump()}
    prompt = env.get_template("prompts/module/propose.j2").render(module=module.name, data=data)
    return env.get_template("prompts/module/system.j2").render(), prompt


@task(name="draft")
def draft_proposal(settings: RunSettings, module: Module, semester: Part) -> WriteResult:
    """The revision proposal note, from the template: each claim with links to its evidence notes."""
    system, prompt = proposal_prompt(settings, module, semester)
    allowed = semester.links() | {module.descriptor.link}
    answer = DRAFT.ask(
        settings, system=system, prompt=prompt, output=ModuleProposal,
        subject="proposal", checks=evidence_checks(settings, allowed, ModuleProposal.claims),
    )  # fmt: skip
    proposal: ModuleProposal = answer.parsed
    names = VaultNames.scan(Path(settings.vault or "."))
    dropped: list[str] = []
    sections = []
    for key, heading in SECTIONS:
        items = []
        for c in getattr(proposal, key):
            links = [e for e in c.evidence if e in allowed]
            if not links:
                dropped.append(c.claim)
                continue
            items.append({"claim": names.unlink_unresolved(c.claim), "links": links})
        sections.append({"heading": heading, "items": items})
    cited = {link for s in sections for item in s["items"] for link in item["links"]}
    by_link = {n.link: n for n in [module.descriptor, *module.evidence]}
    body = (
        templates(settings)
        .get_template("notes/module-proposal.md.j2")
        .render(
            module=module.name,
            descriptor=module.descriptor.link,
            counts={
                "notes": len(module.evidence) + 1,
                "weeks": sum(u.label.startswith("week") for u in module.units),
                "assignments": sum(u.label.startswith("assignment") for u in module.units),
                "evaluations": sum(n.kind == "evaluation" for n in module.evidence),
            },
            offline=answer.route.provider_kind == "offline",
            checks_failed=[*answer.checks_failed, *(f"dropped, no evidence: {d}" for d in dropped)],
            summary=names.unlink_unresolved(proposal.summary),
            sections=sections,
            evidence=[
                {"link": link, "kind": by_link[link].kind, "unit": by_link[link].unit}
                for link in sorted(cited & set(by_link))
            ],
            link=names.link,
        )
    )
    front_matter = {
        "title": f"{module.name} revision proposal",
        "tags": ["module/proposal", "tierflow/draft"],
        "status": "draft",
        "module": module.name,
        "descriptor": names.link(module.descriptor.link),
        "evidence": [names.link(link) for link in sorted(cited)],
        "tierflow_run": settings.run_id,
        "tierflow_phase_models": [f"synthesise: {semester.model}", f"draft: {answer.route.model_ref}"],
        "tierflow_tokens": semester.tokens + answer.usage.total_tokens,
        "tierflow_cost_usd": None
        if semester.cost_usd is None or answer.cost_usd is None
        else round(semester.cost_usd + answer.cost_usd, 6),
    }
    return writer_for(settings, module.output_folder).write(
        front_matter["title"], front_matter, body, compare_keys=("tierflow_run", "tierflow_tokens", "tierflow_cost_usd")
    )
