"""The end-of-term module review: a module folder -> collate each week and assignment -> synthesise the semester
-> draft a revision proposal whose every claim links its evidence notes.

Built from the public API alone (`from tierflow import ...`), as docs/your-own-flow.md shows.
"""

from __future__ import annotations

from tierflow import FlowSpec, RunSummary, begin_run, flow, write_run_report
from tierflow.flows.plans import plan_module_review
from tierflow.report.run_report import final_state
from tierflow.tasks.module import COLLATE, DRAFT, collate_unit, draft_proposal, load_module, module_folder, synthesise

FLOW = "module-review"


@flow(name=FLOW, flow_run_name="module-review · {module}", log_prints=True)
def module_review(
    vault: str,
    module: str | None = None,
    profile: str | None = None,
    config: str | None = None,
    tier: dict[str, str] | None = None,
    run_id: str | None = None,
    project: str | None = None,
    retry_failed: bool = False,
) -> RunSummary:
    """Review a module's semester and draft its revision proposal into the module folder, for the team."""
    with begin_run(
        FLOW, vault=vault, parameters={"module": module}, folders=lambda s: [module_folder(s, module)],
        name=lambda s: f"{FLOW} · {module_folder(s, module)}", project=project, config=config, profile=profile,
        tier=tier, run_id=run_id, retry_failed=retry_failed,
    ) as settings:  # fmt: skip
        work = load_module(settings, module_folder(settings, module))
        run = RunSummary(settings.run_id, FLOW, skipped=list(work.skipped))
        if not work.units:
            run.message = (
                f"nothing to review in {work.folder}: no run reports, concept drafts, cohort summaries or evaluations"
            )

        parts = run.absorb(
            COLLATE.each(collate_unit, settings, work.units, subject=lambda u: u.label, args=lambda u: (settings, u))
        )
        semester = run.absorb(synthesise(settings, work, parts)) if parts and not run.stopped else []
        for whole in semester:
            run.written = run.absorb(DRAFT.once(draft_proposal, settings, settings, work, whole, subject="proposal"))

        return final_state(write_run_report(settings, run, since=None, until=None, selected=len(work.evidence) + 1))


SPEC = FlowSpec(FLOW, module_review, deployment="end-of-term", plan=plan_module_review)
