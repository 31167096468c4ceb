"""Worst-case estimates of each flow before it spends (`tierflow plan`, `run --dry-run`).

Each planner renders the prompts its flow's phases would send, using the phases' own prompt builders, and
adds them to a `Plan`. The flows' registry entries (`FlowSpec.plan`) point here.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.config import Config
from tierflow.core.context import prompt_room
from tierflow.core.hierarchy import GroupTooLarge, group_to_fit, prompt_tokens
from tierflow.core.routing import Route
from tierflow.core.tokens import count_tokens
from tierflow.report.plan import Plan
from tierflow.tasks import cohort, collate, draft, evidence, feedback, synthesise
from tierflow.tasks.assignment import load_assignment, too_long
from tierflow.tasks.week import load_sources, select_week


def plan_settings(config: Config, vault: Path, flow: str, tier: dict[str, str] | None) -> RunSettings:
    """The settings of a run that is only planned: same config and routing, run id `plan`."""
    return RunSettings(
        vault=str(vault),
        config_path=str(config.path) if config.path else None,
        profile=config.settings.profile,
        tier_overrides=tier or {},
        run_id="plan",
        flow=flow,
    )


def plan_reading_notes(
    config: Config, vault: Path, *, since: date | None, until: date | None, tier: dict[str, str] | None = None
) -> Plan:
    """Every call a reading-notes run over this window would make, priced at its worst case."""
    settings = plan_settings(config, vault, "reading-notes", tier)
    caller = caller_for(settings)
    week = select_week.fn(settings, since, until)
    sources, unreadable = load_sources.fn(settings, week)
    plan = Plan(
        flow="reading-notes",
        since=week.since,
        until=week.until,
        selected=len(week.notes),
        skipped=[(s.path, s.reason) for s in week.skipped + unreadable],
        phase_names=["collate", "synthesise", "draft"],
        notes=[
            "Drafts are counted at the configured maximum number of concepts, each carrying the week's "
            f"{draft.MAX_SOURCES} largest sources (a draft carries at most that many)."
        ],
    )
    if not sources:
        return plan

    outputs: dict[str, int] = {}
    for source in sources:
        system, prompt = collate.prompt(settings, source)
        routed = plan.add(
            caller,
            "collate",
            collate.COMPLEXITY,
            system,
            prompt,
            collate.CollationOut,
            subject=source.title,
            front_matter=source.front_matter,
            note=source.path,
        )
        outputs[source.path] = routed.max_output_tokens

    # Collations with their model-written parts empty; those parts are added at full output allowance.
    skeletons = [
        collate.Collation(
            path=s.path,
            link=s.link,
            citekey=s.citekey,
            title=s.title,
            quotes=sorted(collate.quotes_of(s)[0], key=lambda q: -len(q.text)),
            notes=collate.quotes_of(s)[1],
            summary="",
            claims=[],
            keywords=[],
            model="",
            cost_usd=0,
            tokens=0,
        )
        for s in sources
    ]
    deep = plan_synthesis(plan, settings, skeletons, outputs, str(week.since), str(week.until))

    # A draft carries its concept's sources, at most `draft.MAX_SOURCES`: each is sized with the largest that many.
    carried = draft_sources(settings, skeletons, outputs)
    concept = synthesise.Concept(name="", summary="", sources=[s.citekey for s in carried])
    system, prompt = draft.prompt(settings, concept, carried)
    for n in range(config.settings.vault.max_concepts):
        plan.add(
            caller,
            "draft",
            draft.COMPLEXITY,
            system,
            prompt,
            draft.DraftOut,
            subject=f"concept {n + 1}",
            extra_tokens=sum(outputs[c.path] for c in carried) + deep.max_output_tokens,
        )
    return plan


def draft_sources(
    settings: RunSettings, skeletons: list[collate.Collation], outputs: dict[str, int]
) -> list[collate.Collation]:
    """The `draft.MAX_SOURCES` collations that make the largest draft prompt: the most any one draft can carry.

    Each is measured in a draft prompt of its own, its model-written parts at their full output allowance.
    """

    def size(c: collate.Collation) -> int:
        alone = synthesise.Concept(name="", summary="", sources=[c.citekey])
        return count_tokens(draft.prompt(settings, alone, [c])[1]) + outputs[c.path]

    return sorted(skeletons, key=size, reverse=True)[: draft.MAX_SOURCES]


def plan_synthesis(
    plan: Plan,
    settings: RunSettings,
    skeletons: list[collate.Collation],
    outputs: dict[str, int],
    since: str,
    until: str,
) -> Route:
    """The week's synthesis as the run would make it: one call, or one per group of collations and the merges
    (`synthesise_week`). `outputs` is each collation's model-written part, counted at its full allowance, and
    each group's synthesis is counted in a merge at the deep tier's full allowance."""
    caller = caller_for(settings)
    routed = caller.sizing_route(synthesise.PHASE, synthesise.COMPLEXITY)
    known = synthesise.VaultConcepts.read(settings, skeletons)
    limit = prompt_room(caller.config, routed)

    def rendered(group: list[collate.Collation]) -> tuple[str, str]:
        return synthesise.prompt(settings, group, since, until, known.ranked_for(settings, group))

    def measure(group: list[collate.Collation]) -> int:
        extra = sum(outputs[c.path] for c in group)
        return prompt_tokens(settings, routed, *rendered(group), synthesise.SynthesisOut) + extra

    def add(group: list[collate.Collation], subject: str) -> Route:
        extra = sum(outputs[c.path] for c in group)
        return plan.add(
            caller, synthesise.PHASE, synthesise.COMPLEXITY, *rendered(group), synthesise.SynthesisOut,
            subject=subject, extra_tokens=extra,
        )  # fmt: skip

    groups = [skeletons]
    if limit is not None and measure(skeletons) > limit:
        try:
            groups = group_to_fit(skeletons, measure, limit, label=lambda c: f"the collation of {c.path}")
        except GroupTooLarge as exc:
            plan.notes.append(f"The synthesis cannot be split to fit: {exc}")
    if len(groups) == 1:
        return add(skeletons, "week")
    for n, group in enumerate(groups, start=1):
        add(group, f"group {n}/{len(groups)}")
    plan.notes.append(
        f"The week's synthesis does not fit one prompt of {limit:,} tokens on {routed.model_ref}: it is planned "
        f"in {len(groups)} groups and merged."
    )

    empty = synthesise.Synthesis(patterns=[], tensions=[], concepts=[], model="", cost_usd=0, tokens=0)

    def merge_rendered(parts: list[int]) -> tuple[str, str]:
        return synthesise.merge_prompt(settings, [empty] * len(parts), skeletons, since, until)

    def merge_measure(parts: list[int]) -> int:
        return prompt_tokens(settings, routed, *merge_rendered(parts), synthesise.MergedSynthesisOut) + sum(parts)

    def add_merge(parts: list[int], subject: str) -> Route:
        return plan.add(
            caller, synthesise.PHASE, synthesise.COMPLEXITY, *merge_rendered(parts), synthesise.MergedSynthesisOut,
            subject=subject, extra_tokens=sum(parts),
        )  # fmt: skip

    results = [routed.max_output_tokens] * len(groups)  # each group's synthesis at its full allowance
    while len(results) > 1 and merge_measure(results) > limit:
        try:
            merged = group_to_fit(results, merge_measure, limit, label=lambda _: "one group's synthesis")
        except GroupTooLarge:
            break  # the run fails here, saying so; the plan flags the final merge as too long
        if len(merged) == len(results):
            break  # the run fails here, saying so; the plan flags the final merge as too long
        for n, parts in enumerate(merged, start=1):
            if len(parts) > 1:
                add_merge(parts, f"merge {n}/{len(merged)}")
        results = [routed.max_output_tokens if len(parts) > 1 else parts[0] for parts in merged]
    return add_merge(results, "week")


def plan_student_feedback(
    config: Config,
    vault: Path,
    *,
    assignment: str | None = None,
    mode: str = "direct",
    tier: dict[str, str] | None = None,
    since: date | None = None,
    until: date | None = None,
    redraft_all: bool = False,
    retry_failed: bool = False,
) -> Plan:
    """Every call a student-feedback run on this assignment would make, priced at its worst case.

    Evidence prompts are rendered exactly. The cohort prompt is rendered from empty evidence plus every
    evidence answer at the light tier's full output, and each feedback prompt from an empty cohort summary
    plus the deep tier's full output. As the run does, every submission is collated, but only the students with
    no draft for their submission as it is now are drafted (all of them with `redraft_all`; with `retry_failed`,
    those whose draft failed its checks and is unedited too); the others are listed as skipped, in the run
    report's words. In batch mode a student whose evidence request the provider refused as too long in an earlier
    run is neither collated nor drafted, as a batch run does not send it again (`Plan.refused`), and is listed as
    skipped, in the run's words. `since` and `until` do not apply to an assignment.
    """
    settings = plan_settings(config, vault, "student-feedback", tier)
    caller = caller_for(settings)
    work = load_assignment.fn(settings, assignment or config.settings.feedback.assignment_folder, keep=False)
    current, unchanged = ({}, []) if redraft_all else feedback.already_drafted(vault, work, retry_failed=retry_failed)
    plan = Plan(
        flow="student-feedback",
        since=None,
        until=None,
        selected=len(work.submissions),
        skipped=[*work.skipped, *unchanged],
        phase_names=["collate", "synthesise", "draft"],
        notes=["Batch mode is priced at the batch discount."] if mode == "batch" else [],
    )
    # With --retry-failed: the drafts drafted again because they failed their checks (the others are `current`).
    again = len(feedback.already_drafted(vault, work)[0]) - len(current) if retry_failed and not redraft_all else 0
    drafted = [s for s in work.submissions if not s.empty]  # an empty submission gets its note without a call
    batch = mode == "batch"
    labels = work.pseudonyms().label
    outputs: dict[str, int] = {}
    refused: set[str] = set()
    for submission in drafted:
        system, prefix, prompt = evidence.prompt(settings, work, submission)
        label = labels.get(submission.student_id, submission.student_id)
        output = evidence.evidence_output(work.rubric)
        if batch and (
            error := plan.refused_before(
                caller, "collate", evidence.COMPLEXITY, system, prompt, output, subject=label, cache_prefix=prefix
            )
        ):
            # A batch run does not send it again, so the student is neither collated nor drafted: in its words.
            plan.skipped.append((submission.path, f"collate failed: {too_long(vault, submission, error)}"))
            refused.add(submission.student_id)
            continue
        routed = plan.add(
            caller, "collate", evidence.COMPLEXITY, system, prompt, output, subject=label, cache_prefix=prefix,
            batch=batch,
        )  # fmt: skip
        outputs[submission.student_id] = routed.max_output_tokens
    drafted = [s for s in drafted if s.student_id not in refused]
    if current or again or refused:
        todo = [s for s in work.submissions if s.student_id not in current and s.student_id not in refused]
        blank = sum(s.empty for s in todo)
        unchanged_note = (
            f"{len(current)} are unchanged since their draft and are not drafted again (--redraft-all drafts and "
            "prices every student)"
        )
        refused_note = (
            f"{len(refused)} whose request a batch run does not send again (see skipped) "
            f"{'is' if len(refused) == 1 else 'are'} not drafted"
        )
        plan.notes.append(
            f"Drafts are priced for {len(todo) - blank} of the {len(work.submissions)} students"
            + (f", {again} of them because their draft failed its checks (--retry-failed)" if again else "")
            + ": "
            + "; ".join([*([unchanged_note] if current else []), *([refused_note] if refused else [])])
            + (f"; {blank} with no text get theirs without a call." if blank else ".")
        )
    if not drafted:
        return plan

    empty = [evidence.Evidence(s.student_id, labels.get(s.student_id, s.student_id), (), "", 0, 0) for s in drafted]
    system, prompt = cohort.prompt(settings, work, empty)
    deep = plan.add(
        caller, "synthesise", cohort.COMPLEXITY, system, prompt, cohort.CohortOut,
        subject="cohort", extra_tokens=sum(outputs.values()), batch=batch,
    )  # fmt: skip

    summary = cohort.Cohort(text="", note="", model="", cost_usd=0, tokens=0)
    for submission, found in zip(drafted, empty, strict=True):
        if submission.student_id in current:
            continue  # its draft is for the submission as it is now: the run does not draft it again
        system, prefix, prompt = feedback.prompt(settings, work, submission, found, summary)
        plan.add(
            caller, "draft", feedback.complexity(settings), system, prompt, feedback.feedback_output(work.rubric),
            subject=found.label, cache_prefix=prefix, batch=batch,
            extra_tokens=outputs[submission.student_id] + deep.max_output_tokens,
        )  # fmt: skip
    return plan


def plan_module_review(
    config: Config, vault: Path, *, module: str | None = None, tier: dict[str, str] | None = None
) -> Plan:
    """Every call a module-review run on this module folder would make, priced at its worst case.

    Collate prompts are rendered exactly. The synthesis is rendered from empty findings plus every collate
    answer at the light tier's full output; when that does not fit the `high` tier's context window, it is
    planned as the run would make it: one call per group, then the merge. The proposal adds the deep tier's
    full output to an empty semester.
    """
    from tierflow.core.context import prompt_room
    from tierflow.core.hierarchy import GroupTooLarge, group_to_fit
    from tierflow.tasks import module as review

    settings = plan_settings(config, vault, "module-review", tier)
    caller = caller_for(settings)
    work = review.load_module.fn(settings, review.module_folder(settings, module))
    plan = Plan(
        flow="module-review",
        since=None,
        until=None,
        selected=len(work.evidence) + 1,
        skipped=list(work.skipped),
        phase_names=["collate", "synthesise", "draft"],
    )
    outputs: dict[str, int] = {}
    for unit in work.units:
        system, prompt = review.collate_prompt(settings, unit)
        routed = plan.add(
            caller, "collate", review.COLLATE.complexity, system, prompt, review.UnitFindings, subject=unit.label
        )
        outputs[unit.label] = routed.max_output_tokens
    if not work.units:
        return plan

    empty = [review.Part(label=u.label, findings=review.UnitFindings()) for u in work.units]

    def size(group: list[review.Part]) -> int:
        return review.synthesis_tokens(settings, work.name, group) + sum(outputs.get(p.label, 0) for p in group)

    room = prompt_room(caller.config, caller.sizing_route("synthesise", review.SYNTHESISE.complexity))
    try:
        groups = group_to_fit(empty, size, room, label=lambda p: p.label) if room is not None else [empty]
    except GroupTooLarge as exc:  # at the worst case; actual collations are usually far shorter
        groups = [[part] for part in empty]
        plan.notes.append(f"At its worst case, {exc}; planned as one synthesis per part.")
    deep_outputs = 0
    for n, group in enumerate(groups, start=1):
        system, prompt = review.synthesis_prompt(settings, work.name, group)
        routed = plan.add(
            caller, "synthesise", review.SYNTHESISE.complexity, system, prompt, review.SemesterFindings,
            subject="semester" if len(groups) == 1 else f"group {n}/{len(groups)}",
            extra_tokens=sum(outputs.get(p.label, 0) for p in group),
        )  # fmt: skip
        deep_outputs += routed.max_output_tokens
    if len(groups) > 1:
        merged = [review.Part(label=f"group {n}", findings=review.SemesterFindings()) for n in range(len(groups))]
        system, prompt = review.synthesis_prompt(settings, work.name, merged, merge=True)
        routed = plan.add(
            caller, "synthesise", review.SYNTHESISE.complexity, system, prompt, review.SemesterFindings,
            subject="semester", extra_tokens=deep_outputs,
        )  # fmt: skip
        plan.notes.append(f"The semester does not fit one synthesis prompt: {len(groups)} groups, then a merge.")
        deep_outputs = routed.max_output_tokens
    semester = review.Part(label="semester", findings=review.SemesterFindings())
    system, prompt = review.proposal_prompt(settings, work, semester)
    plan.add(
        caller, "draft", review.DRAFT.complexity, system, prompt, review.ModuleProposal,
        subject="proposal", extra_tokens=deep_outputs,
    )  # fmt: skip
    return plan
