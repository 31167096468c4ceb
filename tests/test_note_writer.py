"""The safe writer, as a flow of your own uses it (`writer_for(settings, folder).write(name, front_matter, body)`):
no note of the run is replaced by another of the run, and no change a person makes to a note is lost."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import frontmatter
import pytest
import yaml

from tierflow import begin_run, flow, task, writer_for
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


def decisions(vault: Path) -> dict[str, tuple[str, str]]:
    """Each verdict note's path, by the abstract it is for: (path, decision)."""
    out = {}
    for path in sorted((vault / FOLDER).glob("*.md")):
        post = frontmatter.load(path)
        assert post["abstract"] not in out, f"two notes for {post['abstract']}"
        out[post["abstract"]] = (path.relative_to(vault).as_posix(), post["decision"])
    return out


def test_two_names_that_clean_up_to_one_file_name_get_a_note_each_and_a_rerun_updates_each_in_place(tmp_path: Path):
    vault = tmp_path / "vault"
    vault.mkdir()

    first = verdict(vault, "Peer review ^2", "accept")
    second = verdict(vault, "Peer review 2", "reject")

    assert (first.path, first.action) == (f"{FOLDER}/Peer review 2 verdict.md", "created")
    assert (second.path, second.action) == (f"{FOLDER}/Peer review 2 verdict (2).md", "created")
    assert "named apart from Programme/Verdicts/Peer review 2 verdict.md" in second.message
    assert decisions(vault) == {"Peer review ^2": (first.path, "accept"), "Peer review 2": (second.path, "reject")}

    # A rerun, in either order, finds each note again: no third note, each updated with its own decision.
    again = [verdict(vault, "Peer review 2", "reject, revised"), verdict(vault, "Peer review ^2", "accept, revised")]
    assert [(r.path, r.action) for r in again] == [(second.path, "updated"), (first.path, "updated")]
    assert decisions(vault) == {
        "Peer review ^2": (first.path, "accept, revised"),
        "Peer review 2": (second.path, "reject, revised"),
    }
    assert verdict(vault, "Peer review ^2", "accept, revised").action == "unchanged"


@task
def write_verdict(settings, abstract: str, decision: str):  # noqa: ANN001, ANN201
    """One task per abstract, calling `writer_for` itself."""
    return writer_for(settings, FOLDER).write(
        f"{abstract} verdict", {"abstract": abstract, "decision": decision}, f"{abstract}: {decision}."
    )


@flow(name="verdicts")
def verdicts_flow(vault: str, verdicts: dict[str, str]) -> list:
    with begin_run("verdicts", vault=vault, folders=[FOLDER]) as settings:
        futures = [write_verdict.submit(settings, a, d) for a, d in verdicts.items()]
        return [f.result() for f in futures]


@pytest.mark.usefixtures("prefect_harness")
def test_a_flows_tasks_writing_two_names_that_clean_up_to_one_file_name_keep_both_notes_run_after_run(tmp_path: Path):
    vault = tmp_path / "vault"
    vault.mkdir()

    written = verdicts_flow(str(vault), {"Peer review ^2": "accept", "Peer review 2": "reject"})

    assert sorted(r.action for r in written) == ["created", "created"]
    found = decisions(vault)
    assert sorted(p for p, _ in found.values()) == [
        f"{FOLDER}/Peer review 2 verdict (2).md",
        f"{FOLDER}/Peer review 2 verdict.md",
    ]
    assert {a: d for a, (_, d) in found.items()} == {"Peer review ^2": "accept", "Peer review 2": "reject"}

    rerun = verdicts_flow(str(vault), {"Peer review ^2": "reject", "Peer review 2": "accept"})

    assert sorted(r.action for r in rerun) == ["updated", "updated"]
    assert decisions(vault) == {
        "Peer review ^2": (found["Peer review ^2"][0], "reject"),
        "Peer review 2": (found["Peer review 2"][0], "accept"),
    }


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


def test_a_note_whose_front_matter_an_edit_broke_is_kept_and_the_message_says_it_does_not_parse(tmp_path: Path):
    vault = tmp_path / "vault"
    vault.mkdir()
    first = verdict(vault, "Peer review", "accept")
    note = vault / first.path
    broken = note.read_text(encoding="utf-8").replace("decision: accept", "decision: [accept")
    note.write_text(broken, encoding="utf-8")

    rerun = verdict(vault, "Peer review", "reject")

    assert note.read_text(encoding="utf-8") == broken
    assert rerun.action == "kept-user-edit" and rerun.path.endswith("(tierflow 2026-11-18).md")
    assert "tierflow did not write it" not in rerun.message
    assert rerun.message.startswith(f"{first.path} kept as it is: its front-matter does not parse (")
    assert "line 4" in rerun.message and "edited" in rerun.message


def test_a_note_an_earlier_version_wrote_for_one_of_two_names_is_updated_for_one_and_the_other_is_named_apart(
    tmp_path: Path,
):
    """An earlier version recorded no name, and left the note of whichever name it wrote last: the first name
    that updates it makes it its own, and the other name gets a note of its own, found again by the next run."""
    vault = tmp_path / "vault"
    note = vault / FOLDER / "Peer review 2 verdict.md"
    old_style_note(note, {"abstract": "Peer review 2", "decision": "reject"}, "Peer review 2: reject.")

    first = verdict(vault, "Peer review ^2", "accept")
    second = verdict(vault, "Peer review 2", "reject")

    assert (first.path, first.action) == (f"{FOLDER}/Peer review 2 verdict.md", "updated")
    assert (second.path, second.action) == (f"{FOLDER}/Peer review 2 verdict (2).md", "created")
    assert decisions(vault) == {"Peer review ^2": (first.path, "accept"), "Peer review 2": (second.path, "reject")}
    assert [verdict(vault, a, d).action for a, d in [("Peer review 2", "reject"), ("Peer review ^2", "accept")]] == [
        "unchanged",
        "unchanged",
    ]


def test_a_note_moved_to_its_new_name_is_found_there_by_the_next_write(tmp_path: Path):
    """`rename_own` (a feedback draft an earlier version named after the student id) keeps the note tierflow's for
    its new name: the next write updates it in place."""
    vault = tmp_path / "vault"
    vault.mkdir()
    writer(vault).write("s2026001", {"abstract": "s2026001", "decision": "accept"}, "s2026001: accept.")

    assert writer(vault).rename_own("s2026001", "s2026001 verdict")
    moved = verdict(vault, "s2026001", "reject")

    assert (moved.path, moved.action) == (f"{FOLDER}/s2026001 verdict.md", "updated")
    assert [p.name for p in (vault / FOLDER).iterdir()] == ["s2026001 verdict.md"]


def test_a_new_draft_beside_an_edited_note_is_dated_by_tierflows_clock_not_the_machines(tmp_path, monkeypatch):
    """A writer given no day dates the sibling by tierflow's clock (`TIERFLOW_CLOCK_START`), in UTC."""
    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2031-03-04T23:30:00+00:00")
    first = NoteWriter(tmp_path, FOLDER).write("Peer review verdict", {"decision": "accept"}, "Accept.")
    note = tmp_path / first.path
    note.write_text(note.read_text(encoding="utf-8").replace("Accept.", "Accept, I think."), encoding="utf-8")
    again = NoteWriter(tmp_path, FOLDER).write("Peer review verdict", {"decision": "reject"}, "Reject.")
    assert (again.path, again.action) == (f"{FOLDER}/Peer review verdict (tierflow 2031-03-04).md", "kept-user-edit")
