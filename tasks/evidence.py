"""Collate for feedback (complexity `low`): per submission, evidence against each rubric criterion.

The shared marking material (rubric, brief, exemplars) goes first as a cacheable prefix, so every call
after the first reads it from the provider's prompt cache. Student identities are pseudonymised.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from prefect import task
from pydantic import BaseModel, Field, create_model

from tierflow.core.batch import BatchCall, run_batch
from tierflow.core.calls import Answer, RunSettings, caller_for
from tierflow.core.errors import ContextWindowExceeded, VaultError
from tierflow.core.phases import PhaseOutcome, fan_out, single
from tierflow.flowkit.checks import quotes_verbatim, rubric_coverage
from tierflow.tasks.assignment import INJECTION, Assignment, Submission, too_long
from tierflow.vault.annotations import locate
from tierflow.vault.notes import template_env
from tierflow.vault.rubric import Rubric

PHASE = "collate"
COMPLEXITY = "low"


class CriterionEvidence(BaseModel):
    """One criterion's evidence, as kept between phases (plain data: it crosses task and process boundaries)."""

    criterion: str
    quotes: list[str] = Field(default_factory=list)
    level: str = ""
    score: float | None = None
    note: str = ""


class EvidenceOut(BaseModel):
    criteria: list[CriterionEvidence]


def choices(rubric: Rubric) -> tuple[Any, Any]:
    """`Literal` types of the rubric's criterion names and level names, for output models a provider enforces."""
    return Literal[tuple(c.name for c in rubric.criteria)], Literal[tuple(rubric.levels)]


@lru_cache(maxsize=16)
def evidence_output(rubric: Rubric) -> type[EvidenceOut]:
    """`EvidenceOut` whose criteria and levels are the rubric's own: a strict-schema provider cannot invent one."""
    criterion, level = choices(rubric)
    entry = create_model(
        "CriterionEvidence",
        __base__=CriterionEvidence,
        criterion=(criterion, ...),
        level=(level, ...),
    )
    return create_model(
        "EvidenceOut",
        __base__=EvidenceOut,
        criteria=(list[entry], Field(..., min_length=1)),
    )


def rubric_data(rubric: Rubric) -> list[dict[str, Any]]:
    """The rubric's criteria, weights, levels and score ranges, compactly, for a prompt's <data>."""
    return [
        {
            "criterion": c.name,
            "weight": str(c.weight) if c.weight else None,
            "levels": [
                {
                    "level": lvl.name,
                    "range": str(lvl.score) if lvl.score else None,
                    "low": lvl.score.low if lvl.score else None,
                    "high": lvl.score.high if lvl.score else None,
                    "below": bool(lvl.score and lvl.score.high_exclusive),
                }
                for lvl in c.levels
            ],
        }
        for c in rubric.criteria
    ]


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
        # Lecturer's text names students too ("like Priya Sharma's exemplar"): hidden as the essays are, the same
        # for every student, so the prefix stays one cacheable block.
        rubric=assignment.rubric.as_markdown(pseudonyms.hide),
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
        "submission": pseudonyms.hide(submission.text, student=submission.student_id),
        "criteria": rubric_data(assignment.rubric),
    }
    user = env.get_template("prompts/evidence/submission.j2").render(
        label=label,
        data=data,
        criteria=[c.name for c in assignment.rubric.criteria],
        ranged=any(lvl.score for c in assignment.rubric.criteria for lvl in c.levels),
    )
    return with_prefix(
        settings, env.get_template("prompts/evidence/system.j2").render(), shared_prefix(settings, assignment), user
    )


def with_prefix(settings: RunSettings, system: str, prefix: str, user: str) -> tuple[str, str, str]:
    """The shared prefix as a cacheable block, or, with prompt caching off, at the head of the prompt."""
    if caller_for(settings).config.settings.feedback.prompt_caching:
        return system, prefix, user
    return system, "", f"{prefix}\n\n{user}"


def warms_cache(settings: RunSettings, assignment: Assignment, submission: Submission) -> bool:
    """Whether the collate calls share a prefix the model caches: then the first one goes alone, to write it."""
    system, prefix, user = prompt(settings, assignment, submission)
    _, request = caller_for(settings).build(
        phase=PHASE, complexity=COMPLEXITY, system=system, prompt=user, cache_prefix=prefix,
        output=evidence_output(assignment.rubric),
    )  # fmt: skip
    return request.cacheable and caller_for(settings).config.settings.feedback.warm_up


def checks(assignment: Assignment, submission: Submission) -> list:
    """`rubric_coverage` and `quotes_verbatim` against this submission, as the prompt shows it."""
    hidden = assignment.pseudonyms().hide(submission.text, student=submission.student_id)
    return [rubric_coverage(assignment.rubric), quotes_verbatim(hidden)]


def evidence_from(assignment: Assignment, submission: Submission, answer: Answer) -> Evidence:
    """One entry per criterion in the rubric's order; only quotes really in the submission and not addressed
    to a model; a level from the criterion's own levels (else `unclear`)."""
    out: EvidenceOut = answer.parsed
    hidden = assignment.pseudonyms().hide(submission.text, student=submission.student_id)
    given = {}
    for c in out.criteria:
        given.setdefault(c.criterion, c)
    criteria = []
    for rc in assignment.rubric.criteria:
        c = given.get(rc.name)
        if c is None:
            continue
        criteria.append(
            CriterionEvidence(
                criterion=rc.name,
                quotes=[q for q in c.quotes if locate(q, hidden) and not INJECTION.search(q)][:3],
                level=c.level if rc.level(c.level) else "unclear",
                score=c.score,
                note=c.note,
            )
        )
    criteria = tuple(criteria)
    label = assignment.pseudonyms().label.get(submission.student_id, submission.student_id)
    return Evidence(
        student_id=submission.student_id,
        label=label,
        criteria=criteria,
        model=answer.route.model_ref,
        cost_usd=answer.cost_usd,
        tokens=answer.usage.total_tokens,
    )


def retries(settings: RunSettings, submission: Submission, drafting: Collection[str] | None) -> bool | None:
    """Whether this submission's evidence is asked again when an earlier run kept it without passing: with
    `--retry-failed`, only for the students the run drafts (`drafting`), since nothing else reads a student's
    evidence again but the cohort summary, which the kept one serves as well; None: as the run's settings say."""
    if drafting is None or not settings.retry_failed:
        return None
    return submission.student_id in drafting


@task(name=PHASE)
def collate_submission(
    settings: RunSettings, assignment: Assignment, submission: Submission, retry_failed: bool | None = None
) -> Evidence:
    system, prefix, user = prompt(settings, assignment, submission)
    try:
        answer = caller_for(settings).ask(
            phase=PHASE,
            complexity=COMPLEXITY,
            system=system,
            prompt=user,
            cache_prefix=prefix,
            output=evidence_output(assignment.rubric),
            subject=assignment.pseudonyms().label.get(submission.student_id, submission.student_id),
            checks=checks(assignment, submission),
            retry_failed=retry_failed,
        )
    except ContextWindowExceeded as exc:
        raise too_long(Path(settings.vault or "."), submission, exc) from None
    return evidence_from(assignment, submission, answer)


@task(name=f"{PHASE} batch")
def collate_batch(
    settings: RunSettings,
    assignment: Assignment,
    submissions: list[Submission],
    wait: bool,
    drafting: Collection[str] | None = None,
) -> Any:
    """Every submission through the provider's batch API; a rerun collects a submitted batch."""
    calls = []
    for s in submissions:
        system, prefix, user = prompt(settings, assignment, s)
        label = assignment.pseudonyms().label.get(s.student_id, s.student_id)
        calls.append(
            BatchCall(
                key=label,
                system=system,
                prompt=user,
                output=evidence_output(assignment.rubric),
                cache_prefix=prefix,
                subject=label,
                checks=tuple(checks(assignment, s)),
                retry_failed=retries(settings, s, drafting),
            )
        )
    return run_batch(caller_for(settings), calls, phase=PHASE, complexity=COMPLEXITY, wait=wait)


def collate(
    settings: RunSettings,
    assignment: Assignment,
    *,
    mode: str,
    wait: bool = True,
    drafting: Collection[str] | None = None,
) -> PhaseOutcome[Evidence]:
    """Evidence for every non-empty submission, one task run each, or one batch. With `--retry-failed`, the kept
    evidence of the students the run drafts (`drafting`, `tierflow.tasks.feedback.drafting`) is asked again, and
    the others' reused; with `drafting` None, everyone's is asked again."""
    pending = [s for s in assignment.submissions if not s.empty]
    if mode != "batch":
        return fan_out(
            collate_submission,
            settings,
            pending,
            phase=PHASE,
            complexity=COMPLEXITY,
            subject=lambda s: assignment.pseudonyms().label.get(s.student_id, s.student_id),
            args=lambda s: (settings, assignment, s, retries(settings, s, drafting)),
            path=lambda s: s.path,
            warm=warms_cache(settings, assignment, pending[0]) if pending else False,
        )
    batched = single(
        collate_batch,
        settings,
        settings,
        assignment,
        pending,
        wait,
        drafting,
        phase=PHASE,
        complexity=COMPLEXITY,
        subject="batch",
    )
    return batch_outcome(
        settings, PHASE, batched, assignment, pending, lambda s, a: evidence_from(assignment, s, a), wait=wait
    )


def batch_outcome(
    settings: RunSettings,
    phase: str,
    batched: PhaseOutcome[Any],
    assignment: Assignment,
    submissions: list[Submission],
    convert,  # noqa: ANN001
    *,
    wait: bool,
) -> PhaseOutcome:
    """A batch's answers as a phase outcome; unanswered submissions are listed with the reason. One too long for
    the model is listed in a direct run's words (`too_long`, as `fan_out` lists a failed item). A batch still
    running is pending when the run chose not to `wait`, and fails the phase when it outlived the wait."""
    outcome: PhaseOutcome = PhaseOutcome(halted=batched.halted, failed=batched.failed)
    if not batched.results:
        return outcome
    result = batched.results[0]
    labels = assignment.pseudonyms().label
    for s in submissions:
        key = labels.get(s.student_id, s.student_id)
        if key in result.answers:
            try:
                outcome.results.append(convert(s, result.answers[key]))
            except VaultError as exc:  # its note was not written (`not_written`): the others' are
                outcome.skipped.append((s.path, f"{phase} failed: {exc}"))
        elif key in result.too_long:
            why = too_long(Path(settings.vault or "."), s, result.too_long[key])
            outcome.skipped.append((s.path, f"{phase} failed: {why}"))
        else:
            outcome.skipped.append((s.path, result.failed.get(key, "no answer in the batch")))
    outcome.batches = list(dict.fromkeys(result.submitted + result.pending))
    if result.pending:
        running = (
            f"batch {', '.join(result.pending)} still running; collect it later with `{settings.resume_command()}`"
        )
        if wait:
            outcome.failed = outcome.failed or f"{phase} failed: {running} (it outlived the wait)"
        else:
            outcome.pending = running
    elif submissions and not outcome.results and not outcome.halted:
        # As `fan_out` says it of a direct run: nothing to go on with, so the run fails (exit 3) and stops here.
        first = outcome.skipped[0][1].rstrip(".") if outcome.skipped else "no answer in the batch"
        outcome.failed = outcome.failed or (
            f"{phase} failed: no submission got an answer; all {len(submissions)} failed (the first: {first}). "
            "Each submission's reason is under Skipped. Fix the cause and rerun: answers already paid for are reused."
        )
    return outcome
