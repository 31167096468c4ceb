"""The weekly reading-notes flow: the week's literature notes -> collate -> synthesise -> draft concept notes."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger

from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.phases import attribute, label_flow_run, run_span
from tierflow.core.registry import FlowSpec
from tierflow.flows.plans import plan_reading_notes
from tierflow.report.run_report import RunSummary, final_state, write_run_report
from tierflow.tasks.collate import collate
from tierflow.tasks.draft import draft
from tierflow.tasks.synthesise import synthesise_week
from tierflow.tasks.week import default_window, load_sources, scheduled_for, select_week

FLOW = "reading-notes"


@flow(name=FLOW, flow_run_name="reading-notes · {since} to {until}", log_prints=True)
def reading_notes(
    vault: str,
    since: date | None = None,
    until: date | None = None,
    profile: str | None = None,
    config: str | None = None,
    tier: dict[str, str] | None = None,
    run_id: str | None = None,
    project: str | None = None,
    retry_failed: bool = False,
) -> RunSummary:
    """Collate the week's reading, synthesise it, and draft concept notes into the vault."""
    settings = RunSettings.start(
        FLOW, vault=vault, config=config, profile=profile, tier=tier, run_id=run_id,
        parameters={"since": since, "until": until, "project": project}, retry_failed=retry_failed,
    )  # fmt: skip
    settings = attribute(settings, *caller_for(settings).config.settings.vault.reading_folders, project=project)
    if since is None or until is None:  # a deployment's run reads the week before the day it was due
        timezone = caller_for(settings).config.settings.vault.timezone
        since, until = default_window(timezone, since, until, scheduled=scheduled_for())
        # Kept with the run: `tierflow resume` days later reads this week, not the one before its own day.
        caller_for(settings).ledger.remember_run_parameters(settings.run_id, {"since": since, "until": until})
    with run_span(settings):
        week = select_week(settings, since, until)
        label_flow_run(settings, f"{FLOW} · {week.since} to {week.until}")
        sources, unreadable = load_sources(settings, week)
        run = RunSummary(settings.run_id, FLOW, skipped=[(s.path, s.reason) for s in week.skipped + unreadable])
        if not sources and run.skipped:  # notes were found: saying there were none sent people looking elsewhere
            found = len(week.notes) + len(week.skipped)
            which = "the one reading note" if found == 1 else f"none of the {found} reading notes"
            run.message = (
                f"{which} between {week.since} and {week.until} in {week.where} could {'not ' * (found == 1)}be "
                f"used: {'it is' if found == 1 else 'each is'} listed under Skipped, with why"
            )
        elif not sources:
            run.message = f"no reading notes between {week.since} and {week.until} in {week.where}"
            get_run_logger().info(run.message)

        collations = run.absorb(collate(settings, sources)) if sources else []
        synthesis = (
            run.absorb(synthesise_week(settings, collations, str(week.since), str(week.until)))
            if collations and not run.stopped
            else []
        )
        for weekly in synthesis:
            run.skipped += weekly.skipped
            run.written = run.absorb(
                draft(settings, weekly, collations, sources, since=str(week.since), until=str(week.until))
            )

        return final_state(
            write_run_report(settings, run, since=week.since, until=week.until, selected=len(week.notes))
        )


SPEC = FlowSpec(FLOW, reading_notes, deployment="weekly", plan=plan_reading_notes)
