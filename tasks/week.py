"""Vault tasks: select the week's reading, load it, and write notes and the run report."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path, PurePosixPath
from zoneinfo import ZoneInfo

from prefect import task

from tierflow.core import clock
from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.config import VaultConfig
from tierflow.core.errors import VaultError
from tierflow.vault.index import VaultIndex
from tierflow.vault.links import VaultNames
from tierflow.vault.notes import SourceNote, check_vault, read_source, unique_citekeys

OWN_FOLDER = "tierflow"
"""The vault folder where tierflow keeps what it writes about itself (run reports, trials)."""


@dataclass(frozen=True)
class Skip:
    path: str
    reason: str


@dataclass
class Week:
    since: date
    until: date
    where: str
    notes: list[str] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    literature: set[str] = field(default_factory=set)
    """File names of every note in the reading folders: links to them are citations, not concepts."""


def not_reading(cfg: VaultConfig) -> tuple[str, ...]:
    """Folders never read as the person's notes: templates, excluded folders, and all of tierflow's own output."""
    return (*cfg.exclude_folders, cfg.templates_folder, cfg.output_folder, cfg.runs_folder, OWN_FOLDER)


def default_window(
    timezone: str, since: date | None, until: date | None, *, scheduled: datetime | None = None
) -> tuple[date, date]:
    """The last seven days up to today, in the vault's time zone, unless given. A deployment's run (`scheduled`, when
    it was due): the seven days before that day, so that Monday 07:00 runs read Monday to Sunday, each day once
    (a note of Monday 09:00 falls in the next run's week), however late a worker starts one."""
    zone = ZoneInfo(timezone)
    if scheduled is not None:
        until = until or scheduled.astimezone(zone).date() - timedelta(days=1)
    until = until or clock.now().astimezone(zone).date()
    return since or until - timedelta(days=6), until


def scheduled_for() -> datetime | None:
    """When this flow run of a deployment (a schedule's, or `prefect deployment run`) was due; None for a run started
    directly (`tierflow run`, a script)."""
    try:
        from prefect.runtime import deployment, flow_run

        if not deployment.id:
            return None
        when = flow_run.scheduled_start_time
    except Exception:  # no run context or API to ask: a direct run
        return None
    return when if isinstance(when, datetime) and when.tzinfo is not None else None


def _select_name() -> str:
    """`select · <since> to <until>` with the window resolved, also on a scheduled run that gives neither."""
    from prefect.runtime import task_run

    given = task_run.parameters
    timezone = caller_for(given["settings"]).config.settings.vault.timezone
    since, until = default_window(timezone, given.get("since"), given.get("until"))
    return f"select · {since} to {until}"


@task(name="select week", task_run_name=_select_name)
def select_week(settings: RunSettings, since: date | None, until: date | None) -> Week:
    """The literature notes in the configured folders or tags whose date falls in the window."""
    vault = check_vault(Path(settings.vault or "."))
    cfg = caller_for(settings).config.settings.vault
    since, until = default_window(cfg.timezone, since, until)
    if since > until:
        raise VaultError(f"--since {since} is after --until {until}")
    index = VaultIndex(vault, max_note_bytes=cfg.max_note_bytes, tz=ZoneInfo(cfg.timezone))
    selection = index.select(folders=cfg.reading_folders, tags=cfg.reading_tags, since=since, until=until)
    excluded = tuple(f"{f.strip('/')}/" for f in not_reading(cfg))
    literature = {PurePosixPath(n.path).stem for n in index.notes() if any(n.under(f) for f in cfg.reading_folders)}
    where = (
        " or ".join([f"{f}/" for f in cfg.reading_folders] + [f"#{t}" for t in cfg.reading_tags]) or "the whole vault"
    )
    return Week(
        since=since,
        until=until,
        where=where,
        notes=[n.path for n in selection.notes if not n.path.startswith(excluded)],
        skipped=[Skip(n.path, n.error or "unusable") for n in selection.skipped if not n.path.startswith(excluded)],
        literature=literature,
    )


@task(name="load sources", task_run_name="load · {week.since} to {week.until}")
def load_sources(settings: RunSettings, week: Week) -> tuple[list[SourceNote], list[Skip]]:
    """Parse the selected notes; a note that cannot be parsed is skipped with its reason."""
    vault = Path(settings.vault or ".").resolve()
    names = VaultNames.scan(vault)
    sources: list[SourceNote] = []
    skipped: list[Skip] = []
    for path in week.notes:
        try:
            source = read_source(vault, path)
        except VaultError as exc:
            skipped.append(Skip(path, str(exc).split(": ", 1)[-1]))
            continue
        source = replace(
            source,
            link=names.link_for(path),
            wikilinks=tuple(w for w in source.wikilinks if w not in week.literature),
        )
        if not source.annotations:
            skipped.append(Skip(path, "no highlights, quotes or notes found in it"))
            continue
        if why := names.unlinkable(path):
            skipped.append(Skip(path, f"read, and its name {why}"))
        sources.append(source)
    return unique_citekeys(sources), skipped
