"""Draft feedback (complexity `medium`, configurable): one note per student, structured by criterion.

Drafts go to `feedback/` beside `submissions/`, named by student id only (`s2026005 feedback.md`: never the
submission's own name, which `[[s2026005]]` means), so nothing a model writes can choose a path. Pseudonyms
are mapped back to the student's own name only in their own draft.

Each draft records the version of the submission it was written for (`tierflow.lms.drafts.VERSION_KEY`), and the
checks its answer failed when no tier passed them (`CHECKS_KEY`). A run drafts only the students with no draft for
their submission as it is now (new, or resubmitted since), unless asked to draft them all again (`redraft_all`): a
lecturer's reviewed draft of an unchanged submission gets no dated copy beside it. A run that pays again for kept
answers (`--retry-failed`) also drafts again the students whose draft failed its checks, unless someone has edited
that draft since.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import task
from pydantic import BaseModel, Field, create_model

from tierflow.core.batch import BatchCall, run_batch
from tierflow.core.calls import Answer, RunSettings, caller_for
from tierflow.core.checks import Check, describe, run_checks
from tierflow.core.errors import ContextWindowExceeded, VaultError
from tierflow.core.phases import PhaseOutcome, fan_out, single
from tierflow.flowkit.checks import inline_quotes_verbatim, rubric_coverage
from tierflow.lms.drafts import CHECKS_KEY, VERSION_KEY, Draft, scan
from tierflow.report.spend import row_tokens
from tierflow.tasks.assignment import Assignment, Submission, too_long
from tierflow.tasks.cohort import Cohort, DraftTier
from tierflow.tasks.evidence import Evidence, batch_outcome, checks, choices, rubric_data, shared_prefix, with_prefix
from tierflow.vault.annotations import locate
from tierflow.vault.notes import RUN_AGAIN, NoteNotWritten, NoteWriter, WriteResult, template_env
from tierflow.vault.quotations import not_quoted
from tierflow.vault.rubric import Rubric
from tierflow.vault.text import escape_property_links

PHASE = "draft"
SPEND_KEYS = ("created", "tierflow_run", "tierflow_phase_models", "tierflow_tokens", "tierflow_cost_usd")


WORDS_PER_CRITERION = 80
"""The average comment length; each criterion's budget is its share of the whole (by weight) of this times n."""
MIN_WORDS = 30


class CriterionFeedback(BaseModel):
    criterion: str
    level: str = ""
    score: float | None = None
    comment: str
    quotes: list[str] = Field(default_factory=list)


class FeedbackOut(BaseModel):
    criteria: list[CriterionFeedback]
    next_steps: list[str] = Field(default_factory=list)
    overall: str = ""


@lru_cache(maxsize=16)
def feedback_output(rubric: Rubric) -> type[FeedbackOut]:
    """`FeedbackOut` whose criteria and levels are the rubric's own `Literal`s, for strict-schema providers."""
    criterion, level = choices(rubric)
    entry = create_model(
        "CriterionFeedback", __base__=CriterionFeedback, criterion=(criterion, ...), level=(level, ...)
    )
    return create_model("FeedbackOut", __base__=FeedbackOut, criteria=(list[entry], Field(..., min_length=1)))


def word_budgets(rubric: Rubric) -> dict[str, int]:
    """Words per criterion comment, in proportion to the criterion's weight (equal without weights)."""
    total = WORDS_PER_CRITERION * len(rubric.criteria)
    return {name: max(MIN_WORDS, round(total * share / 5) * 5) for name, share in rubric.shares().items()}


@dataclass(frozen=True)
class Share:
    run_id: str
    phase_models: tuple[str, ...]
    tokens_each: int
    cost_each: float | None


def _num(value: float) -> str:
    return f"{value:g}"


def complexity(settings: RunSettings) -> str:
    return caller_for(settings).config.settings.feedback.draft_complexity


def prompt(
    settings: RunSettings, assignment: Assignment, submission: Submission, evidence: Evidence | None, cohort: Cohort
) -> tuple[str, str, str]:
    config = caller_for(settings).config
    env = template_env(config.vault, config.settings.vault.templates_folder)
    pseudonyms = assignment.pseudonyms()
    label = pseudonyms.label.get(submission.student_id, submission.student_id)
    budgets = word_budgets(assignment.rubric)
    data = {
        "student": label,
        "submission": pseudonyms.hide(submission.text, student=submission.student_id),
        # Levels and reasons only: the quotes are already in the submission, sent once above.
        "evidence": [c.model_dump(exclude={"quotes"}) for c in evidence.criteria] if evidence else [],
        "criteria": [{**c, "words": budgets[c["criterion"]]} for c in rubric_data(assignment.rubric)],
    }
    return with_prefix(
        settings,
        env.get_template("prompts/feedback/system.j2").render(),
        shared_prefix(settings, assignment, cohort.text),
        env.get_template("prompts/feedback/student.j2").render(
            label=label,
            data=data,
            budgets=budgets,
            weighted=any(c.weight for c in assignment.rubric.criteria),
            ranged=any(lvl.score for c in assignment.rubric.criteria for lvl in c.levels),
        ),
    )


def prose(out: FeedbackOut) -> list[str]:
    """What of a draft the student reads as the model wrote it: comments, next steps, the overall remark."""
    return [*(c.comment for c in out.criteria), *out.next_steps, out.overall]


def quotable(assignment: Assignment) -> tuple[str, str]:
    """Besides the submission, what a comment may quote, as the prompt shows it: the rubric and the brief."""
    hide = assignment.pseudonyms().hide
    return assignment.rubric.as_markdown(hide), hide(assignment.brief)


def draft_checks(assignment: Assignment, submission: Submission) -> list[Check]:
    """The evidence's `checks`, and `inline_quotes_verbatim`: a quotation in the text the student reads is their
    own words (or the rubric's or the brief's), compared with the pseudonymised text the model was sent."""
    hidden = assignment.pseudonyms().hide(submission.text, student=submission.student_id)
    where = "the submission"
    return [*checks(assignment, submission), inline_quotes_verbatim(prose, hidden, *quotable(assignment), where=where)]


def _draft_spend(settings: RunSettings, subject: str, answer: Answer | None) -> tuple[int, float | None]:
    """Tokens and USD of every attempt at this student's draft (retries and escalations too), from the ledger;
    the answer's own when the ledger holds none under its subject (a batch item)."""
    if answer is None:
        return 0, 0.0
    rows = [
        r
        for r in caller_for(settings).ledger.rows(run_id=settings.run_id)
        if r["phase"] == PHASE and r["subject"] == subject
    ]
    if not rows:
        return answer.usage.total_tokens, answer.cost_usd
    costs = [r["cost_usd"] for r in rows]
    return sum(row_tokens(r) for r in rows), None if None in costs else sum(costs)


def draft_tiers(settings: RunSettings, assignment: Assignment) -> list[DraftTier]:
    """Per student with a current draft (this run's, or an earlier run's written for their submission as it is
    now), in submission order: the tier and model of the last billed attempt at that draft, from the ledger rows of
    phase `draft` of the run that wrote it (its `tierflow_run`) under the student's pseudonym; the model its
    front-matter records, tier `-`, when the ledger holds none. A draft written without a model call (an empty
    submission's) is not listed."""
    label = assignment.pseudonyms().label
    ledger = caller_for(settings).ledger
    by_run: dict[str, dict[str, dict[str, Any]]] = {}

    def last_rows(run_id: str) -> dict[str, dict[str, Any]]:
        if run_id not in by_run:
            last: dict[str, dict[str, Any]] = {}
            for r in ledger.rows(run_id=run_id) if run_id else []:
                if r["phase"] == PHASE and r["subject"]:
                    last[r["subject"]] = r
            by_run[run_id] = last
        return by_run[run_id]

    current = already_drafted(Path(settings.vault or "."), assignment)[0]
    out = []
    for s in assignment.submissions:
        subject = label.get(s.student_id, s.student_id)
        # This run's attempt first: `--redraft-all` may write a new draft beside an edited one, both current.
        row = last_rows(settings.run_id).get(subject)
        run_id = settings.run_id
        if row is None and s.student_id in current:
            run_id = str(current[s.student_id].metadata.get("tierflow_run") or "")
            row = last_rows(run_id).get(subject)
        if row is not None:
            tier, model = row["tier"] or "-", row["model"] or "-"
        elif s.student_id in current and (model := _draft_model(current[s.student_id])):
            tier = "-"
        else:
            continue
        out.append(DraftTier(student_id=s.student_id, tier=tier, model=model, this_run=run_id == settings.run_id))
    return out


def _draft_model(draft: Draft) -> str:
    """The model a draft's front-matter says answered it (`draft: anthropic:claude-sonnet-4-6` in
    `tierflow_phase_models`), as the ledger names it (without the provider); "" for none (an empty submission)."""
    for entry in draft.metadata.get("tierflow_phase_models") or []:
        ref = str(entry).removeprefix("draft: ") if str(entry).startswith("draft: ") else ""
        if ref and ref != "none":
            return ref.split(":", 1)[-1]
    return ""


def write_feedback(
    settings: RunSettings, assignment: Assignment, submission: Submission, answer: Answer | None, share: Share
) -> WriteResult:
    """Render and write one student's draft; an empty submission gets a short note without a model call."""
    config = caller_for(settings).config
    env = template_env(config.vault, config.settings.vault.templates_folder)
    pseudonyms = assignment.pseudonyms()
    own = pseudonyms.label.get(submission.student_id)
    hidden = pseudonyms.hidden(submission.text, student=submission.student_id)

    # The people this student's own text names (a classmate, one who handed nothing in), by label: what the
    # student wrote there. Only these labels and the student's own become names; a model cannot leak the name
    # of anyone the student did not write about.
    named = {label: name for label, name in hidden.written().items() if label != own}

    def reveal(text: str) -> str:
        if own:
            text = pseudonyms.restore_label(text, hidden, own, submission.name or submission.student_id)
        for label, name in named.items():
            text = pseudonyms.restore_label(text, hidden, label, name)
        return text

    def quoted(text: str) -> str:
        # A quotation as the student wrote it: the hidden text's labels may stand for a name, a word or an id.
        return pseudonyms.restore(text, hidden) or reveal(text)

    out: FeedbackOut | None = answer.parsed if answer else None
    also = quotable(assignment)

    def unverified(text: str) -> list[str]:
        # Against the text the model was sent (labels for names), as `draft_checks` judged it; shown as written.
        return [quoted(q) for q in not_quoted(text, hidden.text, *also)]

    criteria = []
    elsewhere: list[str] = []
    problems = ""
    if out is not None:
        # The rubric's criteria in its order, named as it names them, whatever order the answer took.
        given: dict[str, CriterionFeedback] = {}
        for c in out.criteria:
            given.setdefault(c.criterion, c)
        for rc in assignment.rubric.criteria:
            c = given.get(rc.name)
            level = rc.level(c.level) if c else None
            criteria.append(
                {
                    "criterion": rc.name,
                    "missing": c is None,
                    "level": c.level if c else "",
                    "range": str(level.score) if level and level.score else "",
                    "score": _num(c.score) if c and c.score is not None else "",
                    "comment": reveal(c.comment) if c else "",
                    "unverified": unverified(c.comment) if c else [],
                    "quotes": [{"text": quoted(q), "verbatim": locate(q, hidden.text)} for q in c.quotes] if c else [],
                }
            )
        # Batch answers never went through the call path's checks; direct ones may have kept a failure.
        problems = reveal(describe(run_checks([rubric_coverage(assignment.rubric)], out)))
        elsewhere = [q for text in [*out.next_steps, out.overall] for q in unverified(text)]
    body = env.get_template("notes/feedback.md.j2").render(
        student=submission,
        criteria=criteria,
        problems=problems,
        next_steps=[reveal(s) for s in out.next_steps] if out else [],
        overall=reveal(out.overall) if out else "",
        unverified=elsewhere,
        empty=submission.empty,
        flags=submission.flags,
        offline=bool(answer and answer.route.provider_kind == "offline"),
    )
    own_tokens, own_cost = _draft_spend(settings, own or submission.student_id, answer)
    tokens = share.tokens_each + own_tokens
    cost = None if share.cost_each is None or own_cost is None else round(share.cost_each + own_cost, 6)
    writer = NoteWriter(Path(settings.vault or "."), assignment.feedback_folder, today=config.today())
    title = assignment.feedback_title(submission.student_id)
    front_matter: dict[str, Any] = {
        # A name with `[[` (`Jane [[X]]`) as shown text: a link to no note, which the writer refuses (the export
        # reads it back, `Draft.name`).
        "title": f"Feedback: {escape_property_links(submission.name or submission.student_id)}",
        "student_id": submission.student_id,
        "tags": ["feedback", "tierflow/draft"],
        "status": "draft",
        "assignment": assignment.folder,
        "submission": writer.names.link(writer.names.link_for(submission.path)) if writer.names else submission.path,
        VERSION_KEY: submission.version,
        "created": config.today().isoformat(),
        "tierflow_run": share.run_id,
        "tierflow_phase_models": [*share.phase_models, f"draft: {answer.route.model_ref}" if answer else "draft: none"],
        "tierflow_tokens": tokens,
        "tierflow_cost_usd": cost,
        "tierflow_flags": list(submission.flags),
        "tierflow_unverified_quotes": sum(1 for c in criteria for q in c["quotes"] if not q["verbatim"])
        + sum(len(c["unverified"]) for c in criteria)
        + len(elsewhere),
        "tierflow_levels": [f"{c['criterion']}: {c['level'] or 'none'}" for c in criteria],
    }
    if answer and answer.checks_failed:  # kept although no tier passed: `--retry-failed` drafts it again
        front_matter[CHECKS_KEY] = list(answer.checks_failed)
    if submission.not_read:
        front_matter["tierflow_not_read"] = list(submission.not_read)
    try:
        # An earlier version named the draft after the student id alone, which shadows the submission: move it.
        writer.rename_own(submission.student_id, title)
        written = writer.write(title, front_matter, body, compare_keys=SPEND_KEYS)
    except VaultError as exc:  # a folder in the way, a full disk (`NoteNotWritten`), a link to no note
        raise not_written(writer, title, exc) from None
    if not submission.not_read:
        return written
    embedded = ", ".join(repr(e) for e in submission.not_read)
    told = f"drafted from the note's text alone: the embedded {embedded} was not read"
    return replace(written, message="; ".join(m for m in (written.message, told) if m))


def not_written(writer: NoteWriter, title: str, exc: VaultError) -> VaultError:
    """Why a student's draft was not written, naming the note, the cause and the fix: the student is skipped with
    it (`fan_out`, `batch_outcome`, `draft`) and the others' drafts are written. A note the file system refused is
    the writer's own `NoteNotWritten`, which says all that; another refusal of the writer gets the note's name."""
    if isinstance(exc, NoteNotWritten):
        return exc
    note = f"{writer.folder}/{writer.target(title).name}"
    why = str(exc).rstrip(".") if note in str(exc) else f"{note} was not written: {str(exc).rstrip('.')}"
    return VaultError(f"{why}. The student has no draft; fix what it names, {RUN_AGAIN}.")


def warms_cache(
    settings: RunSettings,
    assignment: Assignment,
    submission: Submission,
    evidence: dict[str, Evidence],
    cohort: Cohort,
) -> bool:
    """Whether the drafts share a prefix the model caches: then the first one goes alone, to write it."""
    system, prefix, user = prompt(settings, assignment, submission, evidence.get(submission.student_id), cohort)
    _, request = caller_for(settings).build(
        phase=PHASE, complexity=complexity(settings), system=system, prompt=user, cache_prefix=prefix,
        output=feedback_output(assignment.rubric),
    )  # fmt: skip
    return request.cacheable and caller_for(settings).config.settings.feedback.warm_up


@task(name=PHASE)
def draft_student(
    settings: RunSettings,
    assignment: Assignment,
    submission: Submission,
    evidence: Evidence | None,
    cohort: Cohort,
    share: Share,
) -> WriteResult:
    system, prefix, user = prompt(settings, assignment, submission, evidence, cohort)
    label = assignment.pseudonyms().label.get(submission.student_id, submission.student_id)
    try:
        answer = caller_for(settings).ask(
            phase=PHASE,
            complexity=complexity(settings),
            system=system,
            prompt=user,
            cache_prefix=prefix,
            output=feedback_output(assignment.rubric),
            subject=label,
            checks=draft_checks(assignment, submission),
        )
    except ContextWindowExceeded as exc:  # the draft's prompt holds the whole submission too
        raise too_long(Path(settings.vault or "."), submission, exc) from None
    return write_feedback(settings, assignment, submission, answer, share)


@task(name=f"{PHASE} batch")
def draft_batch(
    settings: RunSettings,
    assignment: Assignment,
    submissions: list[Submission],
    evidence: dict[str, Evidence],
    cohort: Cohort,
    wait: bool,
) -> Any:
    calls = []
    for s in submissions:
        system, prefix, user = prompt(settings, assignment, s, evidence.get(s.student_id), cohort)
        label = assignment.pseudonyms().label.get(s.student_id, s.student_id)
        calls.append(
            BatchCall(
                key=label,
                system=system,
                prompt=user,
                output=feedback_output(assignment.rubric),
                cache_prefix=prefix,
                subject=label,
                checks=tuple(draft_checks(assignment, s)),
            )
        )
    return run_batch(caller_for(settings), calls, phase=PHASE, complexity=complexity(settings), wait=wait)


def draft(
    settings: RunSettings,
    assignment: Assignment,
    evidence: list[Evidence],
    cohort: Cohort,
    *,
    mode: str,
    wait: bool = True,
    redraft_all: bool = False,
) -> PhaseOutcome[WriteResult]:
    """The draft of every student `drafting` names; empty submissions get theirs without a model call."""
    caller = caller_for(settings)
    rows = caller.ledger.rows(run_id=settings.run_id)
    by_student = {e.student_id: e for e in evidence}
    drafted, skipped = ({}, []) if redraft_all else current_drafts(settings, assignment)
    todo = [s for s in assignment.submissions if s.student_id not in drafted]
    submissions = [s for s in todo if not s.empty and s.student_id in by_student]
    costs = [r["cost_usd"] for r in rows]
    share = Share(
        run_id=settings.run_id,
        phase_models=(
            f"collate: {', '.join(sorted({e.model for e in evidence}))}",
            f"synthesise: {cohort.model}",
        ),
        # Tokens and USD alike from every row of the run so far (collate and synthesis, every attempt).
        tokens_each=sum(row_tokens(r) for r in rows) // max(1, len(submissions)),
        cost_each=None if None in costs else sum(costs) / max(1, len(submissions)),
    )
    empty: list[WriteResult] = []
    for s in todo:
        if not s.empty:
            continue
        try:
            empty.append(write_feedback(settings, assignment, s, None, Share(settings.run_id, (), 0, 0.0)))
        except VaultError as exc:  # as `fan_out` skips a draft that was not written: the others go on
            skipped.append((s.path, f"{PHASE} failed: {exc}"))
    if mode != "batch":
        outcome = fan_out(
            draft_student,
            settings,
            submissions,
            phase=PHASE,
            complexity=complexity(settings),
            subject=lambda s: assignment.pseudonyms().label.get(s.student_id, s.student_id),
            args=lambda s: (settings, assignment, s, by_student.get(s.student_id), cohort, share),
            path=lambda s: s.path,
            warm=bool(submissions) and warms_cache(settings, assignment, submissions[0], by_student, cohort),
        )
    else:
        batched = single(
            draft_batch,
            settings,
            settings,
            assignment,
            submissions,
            by_student,
            cohort,
            wait,
            phase=PHASE,
            complexity=complexity(settings),
            subject="batch",
        )
        outcome = batch_outcome(
            settings,
            PHASE,
            batched,
            assignment,
            submissions,
            lambda s, a: write_feedback(settings, assignment, s, a, share),
            wait=wait,
        )
    outcome.results = empty + outcome.results
    outcome.skipped += skipped
    return outcome


def drafting(settings: RunSettings, assignment: Assignment, *, redraft_all: bool = False) -> set[str]:
    """The ids of the students this run drafts: those with no draft for their submission as it is now, and, paying
    again for kept answers (`retry_failed`), those whose draft failed its checks and is as tierflow wrote it; every
    student with `redraft_all`. Their evidence alone is paid for again (`tierflow.tasks.evidence.collate`)."""
    drafted = {} if redraft_all else current_drafts(settings, assignment)[0]
    return {s.student_id for s in assignment.submissions if s.student_id not in drafted}


def current_drafts(settings: RunSettings, assignment: Assignment) -> tuple[dict[str, Draft], list[tuple[str, str]]]:
    """`already_drafted` for this run: with `retry_failed`, a draft kept although it failed its checks is not."""
    return already_drafted(Path(settings.vault or "."), assignment, retry_failed=settings.retry_failed)


def already_drafted(
    vault: Path, assignment: Assignment, *, retry_failed: bool = False
) -> tuple[dict[str, Draft], list[tuple[str, str]]]:
    """Each student's draft written for their submission as it is now (reviewed or not), and what the run report
    says of the students not drafted again. A draft that records no version (written before tierflow recorded
    one) counts as written for the current submission, and is said so once. A draft named as an earlier tierflow
    named it (`<student id>.md`, the submission's own name) is not counted: it is moved, or written beside.

    With `retry_failed` (`--retry-failed`) a draft whose answer failed its checks (`Draft.checks_failed`) is not
    counted either, so that it is drafted again, unless someone has edited it since tierflow wrote it: a person's
    edits are never drafted over, and the report says which were left."""
    current = {s.student_id: s.version for s in assignment.submissions}
    found: dict[str, Draft] = {}
    failed: dict[str, Draft] = {}
    for d in scan(vault, assignment.folder)[0]:
        if d.student_id not in current or Path(d.path).stem == d.student_id or not d.written_for(current[d.student_id]):
            continue
        if d.student_id not in found or (d.version and not found[d.student_id].version):
            found[d.student_id] = d  # one that records the version wins over one that records none
    if retry_failed:
        failed = {sid: d for sid, d in found.items() if d.checks_failed}
        found = {sid: d for sid, d in found.items() if sid not in failed or not d.as_written}
    if not found:
        return found, []
    folder = assignment.feedback_folder
    ids = sorted(found)
    shown = ", ".join(ids[:20]) + (", ..." if len(ids) > 20 else "")
    which = "new and changed submissions" + (", and drafts that failed their checks," if retry_failed else "")
    skipped = [
        (
            folder,
            f"{len(ids)} student(s) already have a draft for their submission as it is now, so they are not drafted "
            f"again: {shown}. Only {which} are drafted; run with --redraft-all to draft every student again.",
        )
    ]
    edited = sorted(d.path for sid, d in failed.items() if sid in found)
    legacy = sorted(d.path for d in found.values() if not d.version)
    for paths, why in (
        (
            edited,
            "failed their checks but were edited since tierflow wrote them, so --retry-failed leaves them as they "
            "are: {}. To have one drafted again, move it out of feedback/ and run again (--redraft-all writes every "
            "new draft beside an edited one).",
        ),
        (
            legacy,
            "record no submission version (written before tierflow recorded one), so they are taken as written for "
            "the submission as it is now: {}. If a student resubmitted since, run with --redraft-all, or move that "
            "draft out of feedback/ and run again.",
        ),
    ):
        if paths:
            listed = ", ".join(paths[:10]) + (", ..." if len(paths) > 10 else "")
            skipped.append((folder, f"{len(paths)} of these draft(s) {why.format(listed)}"))
    return found, skipped
