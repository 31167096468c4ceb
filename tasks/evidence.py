"""Collate for feedback (complexity `low`): per submission, evidence against each rubric criterion.

The shared marking material (rubric, brief, exemplars) goes first as a cacheable prefix, so every call
after the first reads it from the provider's prompt cache. Student identities are pseudonymised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import task
from pydantic import BaseModel, Field

from tierflow.core.batch import BatchCall, run_batch
from tierflow.core.calls import Answer, RunSettings, caller_for
from tierflow.core.phases import PhaseOutcome, fan_out, single
from tierflow.tasks.assignment import INJECTION, Assignment, Submission
from tierflow.vault.annotations import locate
from tierflow.vault.notes import template_env

PHASE = "collate"
COMPLEXITY = "low"


class CriterionEvidence(BaseModel):
    criterion: str
    quotes: list[str] = Field(default_factory=list)
    level: str = ""
    note: str = ""


class EvidenceOut(BaseModel):
    criteria: list[CriterionEvidence]


@dataclass(frozen=True)
class Evidence:
    """One submission's evidence, still pseudonymised: it feeds the cohort and the draft prompts."""

    student_id: str
    label: str
    criteria: tuple[CriterionEvidence, ...]
    model: str
    cost_usd: float | None
    tokens: int


def shared_prefix(settings: RunSettings, assignment: Assignment, cohort: str = "") -> str:
    config = caller_for(settings).config
    env = template_env(config.vault, config.settings.vault.templates_folder)
    pseudonyms = assignment.pseudonyms()
    return env.get_template("prompts/feedback/shared.j2").render(
        rubric=assignment.rubric.as_markdown(),
        brief=pseudonyms.hide(assignment.brief),
        exemplars=[pseudonyms.hide(e) for e in assignment.exemplars],
        cohort=cohort,
    )


def prompt(settings: RunSettings, assignment: Assignment, submission: Submission) -> tuple[str, str, str]:
    """System prompt, cacheable shared prefix, and the per-submission prompt."""
    config = caller_for(settings).config
    env = template_env(config.vault, config.settings.vault.templates_folder)
    pseudonyms = assignment.pseudonyms()
    label = (
        pseudonyms.label.get(submission.student_id, "the student") if assignment.pseudonymise else submission.student_id
    )
    data = {
        "student": label,
        "submission": pseudonyms.hide(submission.text),
        "criteria": [c.name for c in assignment.rubric.criteria],
        "levels": list(assignment.rubric.levels),
    }
    user = env.get_template("prompts/evidence/submission.j2").render(
        label=label,
        data=data,
        criteria=[c.name for c in assignment.rubric.criteria],
        levels=list(assignment.rubric.levels),
    )
    return with_prefix(
        settings, env.get_template("prompts/evidence/system.j2").render(), shared_prefix(settings, assignment), user
    )


def with_prefix(settings: RunSettings, system: str, prefix: str, user: str) -> tuple[str, str, str]:
    """The shared prefix as a cacheable block, or, with prompt caching off, at the head of the prompt."""
    if caller_for(settings).config.settings.feedback.prompt_caching:
        return system, prefix, user
    return system, "", f"{prefix}\n\n{user}"


def evidence_from(assignment: Assignment, submission: Submission, answer: Answer) -> Evidence:
    """Keep only quotes that are really in the submission and hold no text addressed to a model."""
    out: EvidenceOut = answer.parsed
    hidden = assignment.pseudonyms().hide(submission.text)
    known = {c.name for c in assignment.rubric.criteria}
    criteria = tuple(
        c.model_copy(
            update={
                "quotes": [q for q in c.quotes if locate(q, hidden) and not INJECTION.search(q)][:3],
                "level": c.level if c.level in assignment.rubric.levels else "unclear",
            }
        )
        for c in out.criteria
        if c.criterion in known
    )
    label = assignment.pseudonyms().label.get(submission.student_id, submission.student_id)
    return Evidence(
        student_id=submission.student_id,
        label=label,
        criteria=criteria,
        model=answer.route.model_ref,
        cost_usd=answer.cost_usd,
        tokens=answer.usage.total_tokens,
    )


@task(name=PHASE)
def collate_submission(settings: RunSettings, assignment: Assignment, submission: Submission) -> Evidence:
    system, prefix, user = prompt(settings, assignment, submission)
    answer = caller_for(settings).ask(
        phase=PHASE,
        complexity=COMPLEXITY,
        system=system,
        prompt=user,
        cache_prefix=prefix,
        output=EvidenceOut,
        subject=assignment.pseudonyms().label.get(submission.student_id, submission.student_id),
    )
    return evidence_from(assignment, submission, answer)


@task(name=f"{PHASE} batch")
def collate_batch(settings: RunSettings, assignment: Assignment, submissions: list[Submission], wait: bool) -> Any:
    """Every submission through the provider's batch API; a rerun collects a submitted batch."""
    calls = []
    for s in submissions:
        system, prefix, user = prompt(settings, assignment, s)
        label = assignment.pseudonyms().label.get(s.student_id, s.student_id)
        calls.append(
            BatchCall(key=label, system=system, prompt=user, output=EvidenceOut, cache_prefix=prefix, subject=label)
        )
    return run_batch(caller_for(settings), calls, phase=PHASE, complexity=COMPLEXITY, wait=wait)


def collate(settings: RunSettings, assignment: Assignment, *, mode: str, wait: bool = True) -> PhaseOutcome[Evidence]:
    """Evidence for every non-empty submission, one task run each, or one batch."""
    pending = [s for s in assignment.submissions if not s.empty]
    if mode != "batch":
        return fan_out(
            collate_submission,
            settings,
            pending,
            phase=PHASE,
            complexity=COMPLEXITY,
            subject=lambda s: assignment.pseudonyms().label.get(s.student_id, s.student_id),
            args=lambda s: (settings, assignment, s),
            path=lambda s: s.path,
        )
    batched = single(
        collate_batch,
        settings,
        settings,
        assignment,
        pending,
        wait,
        phase=PHASE,
        complexity=COMPLEXITY,
        subject="batch",
    )
    return batch_outcome(batched, assignment, pending, lambda s, a: evidence_from(assignment, s, a))


def batch_outcome(
    batched: PhaseOutcome[Any], assignment: Assignment, submissions: list[Submission], convert
) -> PhaseOutcome:  # noqa: ANN001
    """A batch's answers as a phase outcome; unanswered submissions are listed with the reason."""
    outcome: PhaseOutcome = PhaseOutcome(halted=batched.halted, failed=batched.failed)
    if not batched.results:
        return outcome
    result = batched.results[0]
    labels = assignment.pseudonyms().label
    for s in submissions:
        key = labels.get(s.student_id, s.student_id)
        if key in result.answers:
            outcome.results.append(convert(s, result.answers[key]))
        else:
            outcome.skipped.append((s.path, result.failed.get(key, "no answer in the batch")))
    outcome.batches = list(dict.fromkeys(result.submitted + result.pending))
    if result.pending:
        outcome.failed = outcome.failed or (
            f"batch {', '.join(result.pending)} still running; collect it later with `tierflow resume RUN`"
        )
    return outcome
