"""Batch student-feedback drafting: submissions + rubric -> collate evidence -> cohort summary -> draft feedback."""

from __future__ import annotations

from prefect import flow

from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.phases import attribute, label_flow_run, run_span
from tierflow.core.registry import FlowSpec
from tierflow.flows.plans import plan_student_feedback
from tierflow.report.run_report import RunSummary, write_run_report
from tierflow.tasks.assignment import load_assignment
from tierflow.tasks.cohort import synthesise
from tierflow.tasks.evidence import collate
from tierflow.tasks.feedback import draft

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
) -> RunSummary:
    """Draft one feedback note per submission, and a cohort summary, for the lecturer to review."""
    settings = RunSettings.start(
        FLOW, vault=vault, config=config, profile=profile, tier=tier, run_id=run_id,
        parameters={"assignment": assignment, "mode": mode, "project": project},
    )  # fmt: skip
    folder = assignment or caller_for(settings).config.settings.feedback.assignment_folder
    settings = attribute(settings, folder, project=project)
    with run_span(settings):
        label_flow_run(settings, f"{FLOW} · {folder}")
        work = load_assignment(settings, folder)
        run = RunSummary(settings.run_id, FLOW, skipped=list(work.skipped))

        evidence = run.absorb(collate(settings, work, mode=mode, wait=wait))
        cohort = (
            run.absorb(synthesise(settings, work, evidence, mode=mode, wait=wait))
            if evidence and not run.stopped
            else []
        )
        for summary in cohort:
            run.written = run.absorb(draft(settings, work, evidence, summary, mode=mode, wait=wait))

        return write_run_report(settings, run, since=None, until=None, selected=len(work.submissions))


SPEC = FlowSpec(FLOW, student_feedback, deployment="on-demand", plan=plan_student_feedback)
