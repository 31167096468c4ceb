"""Batch student-feedback drafting: submissions + rubric -> collate evidence -> cohort summary -> draft feedback."""

from __future__ import annotations

from prefect import flow

from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.phases import begin_run
from tierflow.core.registry import FlowSpec
from tierflow.flows.plans import plan_student_feedback
from tierflow.report.run_report import RunSummary, final_state, write_run_report
from tierflow.tasks.assignment import load_assignment, unhidden_note
from tierflow.tasks.cohort import add_draft_tiers, synthesise
from tierflow.tasks.evidence import collate
from tierflow.tasks.feedback import draft, draft_tiers, drafting
from tierflow.vault.notes import WriteResult

FLOW = "student-feedback"


@flow(name=FLOW, flow_run_name="student-feedback · {assignment}", log_prints=True)
def student_feedback(
    vault: str,
    assignment: str | None = None,
    mode: str = "direct",
    wait: bool = True,
    profile: str | None = None,
    config: str | None = None,
    tier: dict[str, str] | None = None,
    run_id: str | None = None,
    project: str | None = None,
    retry_failed: bool = False,
    redraft_all: bool = False,
) -> RunSummary:
    """Draft one feedback note per submission, and a cohort summary, for the lecturer to review. A student with a
    draft for their submission as it is now is not drafted again, unless `redraft_all`, or `retry_failed` and the
    draft failed its checks (and nobody has edited it since)."""

    def folder_of(settings: RunSettings) -> str:
        return assignment or caller_for(settings).config.settings.feedback.assignment_folder

    with begin_run(
        FLOW, vault=vault, parameters={"assignment": assignment, "mode": mode, "redraft_all": redraft_all},
        folders=lambda s: [folder_of(s)],
        name=lambda s: f"{FLOW} · {folder_of(s)}", project=project, config=config, profile=profile, tier=tier,
        run_id=run_id, retry_failed=retry_failed,
    ) as settings:  # fmt: skip
        folder = folder_of(settings)
        work = load_assignment(settings, folder)
        run = RunSummary(settings.run_id, FLOW, skipped=list(work.skipped))

        # `--retry-failed` pays again only for the evidence of the students the run drafts.
        todo = drafting(settings, work, redraft_all=redraft_all)
        evidence = run.absorb(collate(settings, work, mode=mode, wait=wait, drafting=todo))
        # The tier table lists every student's current draft, whichever run wrote it: a rerun drafts only some.
        cohort = (
            run.absorb(synthesise(settings, work, evidence, mode=mode, wait=wait, drafts=draft_tiers(settings, work)))
            if evidence and not run.stopped
            else []
        )
        for summary in cohort:
            run.written = run.absorb(
                draft(settings, work, evidence, summary, mode=mode, wait=wait, redraft_all=redraft_all)
            )
            # The summary is written before the drafts (they quote it): the tier each was written on comes after.
            # A rewrite the disk refuses is skipped like a draft, so the run still reports every draft it skipped.
            summary = run.absorb(add_draft_tiers(settings, work, evidence, summary, draft_tiers(settings, work)))[0]
            run.written.append(WriteResult(summary.note, summary.action))  # listed under "Notes written" too

        run.message = unhidden_note(settings, work)
        return final_state(write_run_report(settings, run, since=None, until=None, selected=len(work.submissions)))


SPEC = FlowSpec(FLOW, student_feedback, deployment="on-demand", plan=plan_student_feedback)
