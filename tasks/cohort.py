"""Synthesise for feedback (complexity `high`): one call over the cohort's evidence, and the summary note."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from pydantic import BaseModel, Field

from tierflow.core.batch import BatchCall, run_batch
from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.errors import BatchPending, ProviderError, VaultError
from tierflow.core.phases import PhaseOutcome, single
from tierflow.tasks.assignment import Assignment
from tierflow.tasks.evidence import Evidence
from tierflow.vault.links import VaultNames
from tierflow.vault.notes import NoteWriter, WriteResult, template_env

PHASE = "synthesise"
COMPLEXITY = "high"
SUMMARY_TITLE = "Cohort summary"


class CohortOut(BaseModel):
    strengths: list[str] = Field(default_factory=list)
    misconceptions: list[str] = Field(default_factory=list)
    teaching_actions: list[str] = Field(default_factory=list)


class Cohort(CohortOut):
    text: str
    """The summary as the draft prompts see it (pseudonymised)."""
    note: str
    action: str = "created"
    """What writing the note did (`created`, `updated`, `unchanged`, ...), for the run's list of notes written."""
    model: str
    cost_usd: float | None
    tokens: int
    offline: bool = False


class DraftTier(BaseModel):
    """The tier and model one student's current feedback draft was answered on (its last billed attempt)."""

    student_id: str
    tier: str
    model: str
    this_run: bool = False
    """Whether this run wrote the draft (an earlier run wrote the drafts of students it did not draft again)."""


def level_distribution(assignment: Assignment, evidence: list[Evidence]) -> list[dict[str, Any]]:
    """Per rubric criterion, in the rubric's order: how many submissions sit at each of its levels."""
    rows = []
    for c in assignment.rubric.criteria:
        counts = dict.fromkeys((lvl.name for lvl in c.levels), 0)
        for e in evidence:
            level = next((x.level for x in e.criteria if x.criterion == c.name), "unclear")
            key = level if level in counts else "unclear"
            counts[key] = counts.get(key, 0) + 1
        rows.append({"criterion": c.name, "counts": counts})
    return rows


def prompt(settings: RunSettings, assignment: Assignment, evidence: list[Evidence]) -> tuple[str, str]:
    """The system prompt and the cohort prompt: every submission's levels and a few quotes, pseudonymised."""
    config = caller_for(settings).config
    env = template_env(config.vault, config.settings.vault.templates_folder)
    distribution = level_distribution(assignment, evidence)
    data = {
        "levels": list(assignment.rubric.levels),
        "distribution": distribution,
        "submissions": [
            {
                "student": e.label,
                "criteria": [{"criterion": c.criterion, "level": c.level, "quotes": c.quotes[:2]} for c in e.criteria],
            }
            for e in evidence
        ],
    }
    system = env.get_template("prompts/cohort/system.j2").render()
    return system, env.get_template("prompts/cohort/cohort.j2").render(data=data, count=len(evidence))


@task(name=PHASE, task_run_name="synthesise · cohort")
def synthesise_cohort(
    settings: RunSettings,
    assignment: Assignment,
    evidence: list[Evidence],
    mode: str = "direct",
    wait: bool = True,
    drafts: list[DraftTier] | None = None,
) -> Cohort:
    """Common strengths, misconceptions and teaching actions; written as a note for the lecturer.

    In batch mode the one cohort call goes through the batch API too: the run is asynchronous anyway. `drafts`, the
    students' current drafts before this run drafts any, keeps the tier table until `add_draft_tiers` rewrites it.
    """
    caller = caller_for(settings)
    system, user = prompt(settings, assignment, evidence)
    distribution = level_distribution(assignment, evidence)
    if mode == "batch":
        call = BatchCall(key="cohort", system=system, prompt=user, output=CohortOut, subject="cohort")
        result = run_batch(caller, [call], phase=PHASE, complexity=COMPLEXITY, wait=wait)
        if "cohort" not in result.answers and result.pending and not wait:
            raise BatchPending(
                f"batch {', '.join(result.pending)} still running; collect it later with `{settings.resume_command()}`"
            )
        if "cohort" not in result.answers:
            raise ProviderError(
                "batch", ", ".join(result.submitted + result.pending) or "-", result.failed.get("cohort", "no answer")
            )
        answer = result.answers["cohort"]
    else:
        answer = caller.ask(
            phase=PHASE, complexity=COMPLEXITY, system=system, prompt=user, output=CohortOut, subject="cohort"
        )
    out: CohortOut = answer.parsed
    text = "\n".join(
        [f"Strength: {s}" for s in out.strengths]
        + [f"Misconception: {m}" for m in out.misconceptions]
        + [f"Teaching action: {a}" for a in out.teaching_actions]
        + [
            f"Levels for {row['criterion']}: " + ", ".join(f"{level} {n}" for level, n in row["counts"].items())
            for row in distribution
        ]
    )
    offline = answer.route.provider_kind == "offline"
    written = write_summary(
        settings, assignment, evidence, out, model=answer.route.model_ref, tokens=answer.usage.total_tokens,
        cost_usd=answer.cost_usd, offline=offline, drafts=drafts,
    )  # fmt: skip
    return Cohort(
        **out.model_dump(),
        text=text,
        note=written.path,
        action=written.action,
        model=answer.route.model_ref,
        cost_usd=answer.cost_usd,
        tokens=answer.usage.total_tokens,
        offline=offline,
    )


def write_summary(
    settings: RunSettings,
    assignment: Assignment,
    evidence: list[Evidence],
    out: CohortOut,
    *,
    model: str,
    tokens: int,
    cost_usd: float | None,
    offline: bool,
    drafts: list[DraftTier] | None = None,
) -> WriteResult:
    """Render and write the summary note; `drafts` (known once the drafts are written) adds the tier table."""
    config = caller_for(settings).config
    env = template_env(config.vault, config.settings.vault.templates_folder)
    distribution = level_distribution(assignment, evidence)
    flagged = [s for s in assignment.submissions if s.flags]
    vault = Path(settings.vault or ".").resolve()
    names = VaultNames.scan(vault)
    writer = NoteWriter(vault, assignment.feedback_folder, today=config.today(), names=names)
    by_id = {s.student_id: s for s in assignment.submissions}
    body = env.get_template("notes/cohort.md.j2").render(
        link=names.link,
        cohort=out,
        distribution=distribution,
        levels=_columns(distribution),
        assignment=assignment.folder,
        submissions=len(assignment.submissions),
        drafted=len(evidence),
        # Each links its submission by the shortest name that resolves to it alone.
        flagged=[{"student_id": s.student_id, "link": names.link_for(s.path), "flags": s.flags} for s in flagged],
        drafts=[
            {
                "student_id": d.student_id,
                "link": names.link_for(by_id[d.student_id].path),
                "tier": d.tier,
                "model": d.model,
                "this_run": d.this_run,
            }
            for d in drafts or []
            if d.student_id in by_id
        ],  # fmt: skip
        offline=offline,
    )
    front_matter = {
        "title": f"{SUMMARY_TITLE}: {assignment.folder}",
        "tags": ["feedback/cohort", "tierflow/draft"],
        "status": "draft",
        "assignment": assignment.folder,
        "tierflow_run": settings.run_id,
        "tierflow_phase_models": [f"synthesise: {model}"],
        "tierflow_tokens": tokens,
        "tierflow_cost_usd": cost_usd,
    }
    return writer.write(
        SUMMARY_TITLE, front_matter, body, compare_keys=("tierflow_run", "tierflow_tokens", "tierflow_cost_usd")
    )


def add_draft_tiers(
    settings: RunSettings, assignment: Assignment, evidence: list[Evidence], cohort: Cohort, drafts: list[DraftTier]
) -> PhaseOutcome[Cohort]:
    """Rewrite the summary, written before the drafts, with the tier and model each current draft was answered on
    (`tierflow.tasks.feedback.draft_tiers`: this run's and the earlier runs' alike); its one result is the cohort.

    The run's list of notes keeps the first write's action (`created` stays `created`) unless that left it unchanged.
    A summary that cannot be rewritten (a full disk, `NoteNotWritten`) stays as first written, and the tier table is
    skipped with the note, the cause and the fix, as a draft that cannot be written is: the run goes on to its
    report, and a rerun, paying nothing more, adds the table.
    """
    outcome = PhaseOutcome(results=[cohort])
    if not drafts:
        return outcome
    out = CohortOut(**cohort.model_dump(include=set(CohortOut.model_fields)))
    try:
        written = write_summary(
            settings, assignment, evidence, out, model=cohort.model, tokens=cohort.tokens, cost_usd=cohort.cost_usd,
            offline=cohort.offline, drafts=drafts,
        )  # fmt: skip
    except VaultError as exc:
        # Under the subject the synthesise phase skips the summary with, when it cannot write it at all.
        outcome.skipped.append(("cohort", f"tier table not added: {exc}"))
        return outcome
    action = written.action if cohort.action == "unchanged" else cohort.action
    outcome.results = [cohort.model_copy(update={"note": written.path, "action": action})]
    return outcome


def _columns(distribution: list[dict[str, Any]]) -> list[str]:
    """Every level any criterion has, in the rubric's order (`unclear` last), as the table's columns."""
    return list(dict.fromkeys(level for row in distribution for level in row["counts"]))


def synthesise(
    settings: RunSettings,
    assignment: Assignment,
    evidence: list[Evidence],
    *,
    mode: str = "direct",
    wait: bool = True,
    drafts: list[DraftTier] | None = None,
) -> PhaseOutcome[Cohort]:
    return single(
        synthesise_cohort,
        settings,
        settings,
        assignment,
        evidence,
        mode,
        wait,
        drafts,
        phase=PHASE,
        complexity=COMPLEXITY,
        subject="cohort",
    )
