"""A folder of notes for a flow of your own: read them, optionally within a date window.

`read_notes` reads every note under a vault folder, dated by front-matter `date` (else the file's
modification time), with the wikilink that resolves to it alone. The run-aware forms a flow calls
(`read_folder(settings, ...)`, `writer_for`, `templates`) are in `tierflow.flowkit.folder`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from tierflow.core.errors import VaultError
from tierflow.vault.index import UNREADABLE_FIX, VaultIndex, property_day, unreadable_folder
from tierflow.vault.links import VaultNames
from tierflow.vault.notes import check_vault
from tierflow.vault.text import PropertyError, hide_comments, load_note, property_list


@dataclass(frozen=True)
class Note:
    """One note of a folder, parsed."""

    path: str
    """Vault-relative POSIX path."""
    title: str
    """Front-matter `title`, else the file name."""
    link: str
    """The link target that resolves to this note alone (`VaultNames.link_for`); `VaultNames.link` writes it
    as a wikilink, or a Markdown link when no wikilink can hold the name."""
    date: date
    """Front-matter `date` (or `created`), else the file's modification day."""
    front_matter: dict[str, Any]
    body: str
    by_tierflow: bool = False
    """Its front-matter says tierflow wrote it (`tierflow_hash` or `tierflow_run`)."""
    zone: tzinfo | None = None
    """The vault's time zone (`[vault] timezone`), in which `day_of` places a time with an offset; None: the
    machine's."""

    def day_of(self, key: str) -> date | None:
        """The day front-matter `key` (`created`) names, read as `date` is: a time with an offset on its day in the
        vault's time zone (`2024-03-03T23:30:00-05:00` is 4 March in a UTC vault), else the day as written; None
        when the property is missing or names no day."""
        return property_day(self.front_matter.get(key), self.zone)

    @property
    def tags(self) -> list[str]:
        try:
            tags = property_list(self.front_matter, "tags")
        except PropertyError:
            return []  # a mapping holds no tag
        return [t.lstrip("#") for t in tags]


@dataclass
class Folder:
    """The notes `read_folder` found, in path order, and those it could not read, with why."""

    folder: str
    notes: list[Note] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __iter__(self):  # noqa: ANN204
        return iter(self.notes)

    def __len__(self) -> int:
        return len(self.notes)


def vault_folder(vault: Path, folder: str, *, fix: str = "Create it or give another.") -> tuple[Path, str]:
    """`folder`'s path and its vault-relative name ("" for the vault itself); a VaultError if it leads out of the
    vault, or is not there: that one names the path looked for and the folders beside it, then says `fix`."""
    vault = vault.resolve()
    root = (vault / folder).resolve()
    if not root.is_relative_to(vault):
        raise VaultError(f"{folder!r} leads out of the vault {vault}; give a folder inside it")
    if not root.is_dir():
        beside = folders_beside(vault, root)
        raise VaultError(f"{folder!r} is not a folder of the vault {vault} (looked for {root}). {beside} {fix}")
    relative = root.relative_to(vault).as_posix()
    return root, "" if relative == "." else relative


def folders_beside(vault: Path, root: Path) -> str:
    """The folders in the nearest folder above `root` that exists, as a sentence: where a mistyped name is."""
    parent = root.parent
    while parent != vault and not parent.is_dir():
        parent = parent.parent
    names = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    where = "The vault" if parent == vault else parent.relative_to(vault).as_posix()
    shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    return f"{where} holds: {shown}." if names else f"{where} holds no folders."


def read_notes(
    vault: Path,
    folder: str,
    *,
    max_note_bytes: int,
    since: date | None = None,
    until: date | None = None,
    include_tierflow: bool = False,
    timezone: str | None = None,
) -> Folder:
    """Every note under `folder` of `vault` dated within [since, until] (either may be None).

    Notes tierflow wrote are left out unless `include_tierflow` (a flow that reviews tierflow's own run reports
    and drafts wants them). A folder that is missing, or lies outside the vault, is a `VaultError` naming it.
    An undated note is dated by its file's modification day in `timezone` (the vault's; None: the machine's).
    """
    vault = check_vault(vault)
    tz = ZoneInfo(timezone) if timezone else None
    _, relative = vault_folder(vault, folder)
    index = VaultIndex(vault, max_note_bytes=max_note_bytes)
    index.scan([relative] if relative else [])
    names = VaultNames.scan(vault)
    found = Folder(relative)
    for rel_dir, why in sorted(index.unreadable.items()):
        if rel_dir == relative:
            raise VaultError(f"{relative or vault}: the folder cannot be read ({why}); {UNREADABLE_FIX}")
        found.skipped.append((f"{rel_dir}/", unreadable_folder(why)))
    for meta in index.notes():
        if not meta.under(relative) or (meta.by_tierflow and not include_tierflow):
            continue
        day = meta.day_in(tz)
        if (since and day < since) or (until and day > until):
            continue
        if meta.error:
            found.skipped.append((meta.path, meta.error))
            continue
        try:
            post = load_note(vault / meta.path)
        except (UnicodeDecodeError, yaml.YAMLError, OSError) as exc:
            found.skipped.append((meta.path, f"unreadable: {' '.join(str(exc).split())[:120]}"))
            continue
        found.notes.append(
            Note(
                path=meta.path,
                title=meta.title,
                link=names.link_for(meta.path),
                date=day,
                front_matter=dict(post.metadata),
                body=hide_comments(post.content),  # Obsidian hides comments: never sent to a model
                by_tierflow=meta.by_tierflow,
                zone=tz,
            )
        )
    return found
