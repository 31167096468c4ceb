"""A run's folders: read a vault folder's notes, write notes safely, render the run's templates.

`read_folder` reads every note under a vault folder, dated by front-matter `date` (else the file's
modification time), with the wikilink that resolves to it alone. `writer_for` is the run's `NoteWriter` for
an output folder: it never overwrites, renames or shadows a note a person wrote (see `vault.notes.NoteWriter`).
Each takes the run's settings and passes the vault and the config's values down to `tierflow.vault`.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from jinja2.sandbox import SandboxedEnvironment

from tierflow.core.calls import RunSettings, caller_for
from tierflow.vault.folder import Folder, read_notes
from tierflow.vault.links import VaultNames
from tierflow.vault.notes import NoteWriter, check_vault, template_env


def read_folder(
    settings: RunSettings,
    folder: str,
    *,
    since: date | None = None,
    until: date | None = None,
    include_tierflow: bool = False,
) -> Folder:
    """Every note under `folder` of the run's vault dated within [since, until] (either may be None).

    Notes tierflow wrote are left out unless `include_tierflow` (a flow that reviews tierflow's own run reports
    and drafts wants them). A folder that is missing, or lies outside the vault, is a `VaultError` naming it.
    """
    return read_notes(
        Path(settings.vault or "."),
        folder,
        max_note_bytes=caller_for(settings).config.settings.vault.max_note_bytes,
        since=since,
        until=until,
        include_tierflow=include_tierflow,
        timezone=caller_for(settings).config.settings.vault.timezone,
    )


def writer_for(settings: RunSettings, folder: str) -> NoteWriter:
    """The run's safe writer for `folder` of its vault.

    A new note never takes a name any note in the vault has; an existing note is replaced only if tierflow
    wrote it and nobody has edited it since, else the new one goes to a dated sibling; a link that does not
    resolve to exactly one file (a model's `[[link]]` to a note nobody wrote) is written as its text, and the
    `WriteResult`'s message, shown on the console and in the run report, names it.
    """
    vault = check_vault(Path(settings.vault or "."))
    today = caller_for(settings).config.today()
    # A model's text is the flow's to write: refusing the note would lose what the run paid for.
    return NoteWriter(vault, folder, today=today, names=VaultNames.scan(vault), unresolved="text")


def templates(settings: RunSettings) -> SandboxedEnvironment:
    """The Jinja2 templates a run renders prompts and notes from: the vault's override folder
    (`[vault] templates_folder`) first, then tierflow's own `templates/`."""
    config = caller_for(settings).config
    return template_env(config.vault, config.settings.vault.templates_folder)
