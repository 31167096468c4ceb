"""The safe writer, as a flow of your own uses it (`writer_for(settings, folder).write(name, front_matter, body)`):
no note of the run is replaced by another of the run, and no change a person makes to a note is lost."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import frontmatter
import yaml

from tierflow.vault.links import VaultNames
from tierflow.vault.notes import HASH_KEY, NoteWriter, body_hash

FOLDER = "Programme/Verdicts"
TODAY = date(2026, 11, 18)


def writer(vault: Path) -> NoteWriter:
    """A writer as `writer_for` makes one: each call its own, as each task or process of a run has."""
    return NoteWriter(vault, FOLDER, today=TODAY, names=VaultNames.scan(vault), unresolved="text")


def verdict(vault: Path, abstract: str, decision: str):  # noqa: ANN201
    return writer(vault).write(
        f"{abstract} verdict", {"abstract": abstract, "decision": decision}, f"{abstract}: {decision}."
    )


def old_style_note(path: Path, front_matter: dict, body: str) -> None:
    """A note as tierflow wrote it before it hashed the note's text: its hash is of the parsed front-matter."""
    meta = {**front_matter, HASH_KEY: body_hash(front_matter, body)}
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"---\n{head}---\n\n{body.strip()}\n", encoding="utf-8")


def test_a_comment_a_person_adds_to_the_front_matter_keeps_the_note_as_it_is(tmp_path: Path):
    vault = tmp_path / "vault"
    vault.mkdir()
    first = verdict(vault, "Peer review", "accept")
    note = vault / first.path
    text = note.read_text(encoding="utf-8")
    assert "\ndecision: accept\n" in text
    commented = text.replace("\ndecision: accept\n", "\ndecision: accept  # PERSON: double-check with co-chair\n")
    note.write_text(commented, encoding="utf-8")

    rerun = verdict(vault, "Peer review", "reject")

    assert note.read_text(encoding="utf-8") == commented
    assert (rerun.action, rerun.path) == ("kept-user-edit", f"{FOLDER}/Peer review verdict (tierflow 2026-11-18).md")
    assert "you edited it since tierflow wrote it" in rerun.message
    assert frontmatter.load(vault / rerun.path)["decision"] == "reject"


def test_a_note_an_earlier_version_wrote_unedited_is_still_updated_and_then_carries_the_new_hash(tmp_path: Path):
    vault = tmp_path / "vault"
    note = vault / FOLDER / "Peer review verdict.md"
    old_style_note(note, {"abstract": "Peer review", "decision": "accept"}, "Peer review: accept.")

    assert verdict(vault, "Peer review", "accept").action == "unchanged"
    updated = verdict(vault, "Peer review", "reject")

    assert (updated.path, updated.action) == (f"{FOLDER}/Peer review verdict.md", "updated")
    assert frontmatter.load(note)["decision"] == "reject"
    # Written anew, the note is hashed on its text: a comment added to it now keeps it.
    note.write_text(note.read_text(encoding="utf-8").replace("decision: reject", "decision: reject # sure?"))
    assert verdict(vault, "Peer review", "accept").action == "kept-user-edit"


def test_an_earlier_versions_note_a_person_edited_is_kept():
    """The old hash is accepted only where it matches: an edit of the body or of a property still shows."""
    meta = {"abstract": "Peer review", "decision": "accept"}
    from tierflow.vault.notes import as_written

    stamped = {**meta, HASH_KEY: body_hash(meta, "Peer review: accept.")}
    assert as_written(stamped, "Peer review: accept.")
    assert not as_written(stamped, "Peer review: accept. My note.")
    assert not as_written({**stamped, "decision": "reject"}, "Peer review: accept.")
