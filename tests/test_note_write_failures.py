"""A note the file system will not take (a folder of its name in the way, a read-only folder, a full disk) is a
`VaultError` naming the note by its vault path, the cause and the fix, in every flow: the item is skipped with it,
the other notes are written, and a rerun after the fix pays nothing more."""

from __future__ import annotations

import errno
import shutil
from datetime import date
from pathlib import Path

import pytest
from conftest import FIXTURES, anthropic_config, stopped, write_config
from responders import skilled

import tierflow.vault.notes as notes
from tierflow.core.errors import VaultError
from tierflow.flows.module_review import module_review
from tierflow.flows.reading_notes import reading_notes
from tierflow.testing.double import ProviderDouble
from tierflow.vault.notes import NoteWriter

SINCE, UNTIL = date(2026, 11, 16), date(2026, 11, 22)
FIX = "a folder of that name in the way, a folder you cannot write to, a full disk"
RUN_AGAIN = "then run again: the answer already paid for is reused"


def assert_names_note_cause_and_fix(message: str, vault: Path, note: str, cause: str) -> None:
    assert f"{note} could not be written ({cause})" in message, message
    assert FIX in message and RUN_AGAIN in message, message
    assert str(vault) not in message and "Errno" not in message, message  # the vault's path, not the machine's


@pytest.mark.parametrize(
    ("code", "cause"), [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")]
)
def test_a_write_the_file_system_refuses_is_a_vault_error_naming_the_note(tmp_path, monkeypatch, code, cause):
    vault = tmp_path / "vault"
    vault.mkdir()

    def refuse(path: Path, text: str | bytes, *, create: bool = False) -> None:
        raise OSError(code, cause, str(path))

    monkeypatch.setattr(notes, "write_atomically", refuse)
    with pytest.raises(VaultError) as raised:
        NoteWriter(vault, "Concepts/Drafts").write("Exemplars", {"title": "Exemplars"}, "Body.")
    assert_names_note_cause_and_fix(str(raised.value), vault, "Concepts/Drafts/Exemplars.md", cause)


def test_a_folder_in_the_way_of_a_note_is_a_vault_error_naming_the_note(tmp_path):
    vault = tmp_path / "vault"
    (vault / "Concepts" / "Drafts" / "Exemplars.md").mkdir(parents=True)
    with pytest.raises(VaultError) as raised:
        NoteWriter(vault, "Concepts/Drafts").write("Exemplars", {"title": "Exemplars"}, "Body.")
    assert_names_note_cause_and_fix(str(raised.value), vault, "Concepts/Drafts/Exemplars.md", "Is a directory")


@pytest.mark.usefixtures("prefect_harness")
def test_a_concept_draft_with_a_folder_in_its_way_is_skipped_and_the_rerun_pays_nothing_more(
    reading_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    config = reading_vault / ".tierflow" / "config.toml"
    write_config(config, anthropic_config(double) + config.read_text())
    double.responder = skilled()
    drafts = reading_vault / "Concepts" / "Drafts"
    in_the_way = drafts / "Exemplars.md"
    in_the_way.mkdir(parents=True)

    summary = reading_notes(vault=str(reading_vault), since=SINCE, until=UNTIL)
    assert not summary.failed and not summary.halted
    why = dict(summary.skipped).get("Exemplars", "")
    assert why.startswith("draft failed: "), summary.skipped
    assert_names_note_cause_and_fix(why, reading_vault, "Concepts/Drafts/Exemplars.md", "Is a directory")
    written = {w.path for w in summary.written}
    assert written and "Concepts/Drafts/Exemplars.md" not in written
    assert all((reading_vault / p).is_file() for p in written)  # the other drafts are written
    skipped = (reading_vault / summary.report.path).read_text().split("## Skipped", 1)[1]
    assert "Concepts/Drafts/Exemplars.md could not be written (Is a directory)" in " ".join(skipped.split())

    in_the_way.rmdir()
    paid = len(double.model_calls())
    rerun = reading_notes(vault=str(reading_vault), since=SINCE, until=UNTIL)
    assert not rerun.failed and not rerun.skipped, rerun.skipped
    assert (drafts / "Exemplars.md").is_file()
    assert double.model_calls()[paid:] == []  # every answer came from the cache


@pytest.mark.usefixtures("prefect_harness")
def test_a_module_proposal_with_a_folder_in_its_way_is_skipped_naming_the_note(tmp_path: Path):
    vault = tmp_path / "module-vault"
    shutil.copytree(FIXTURES / "module-review", vault)
    proposal = "Teaching/EDU7001/Review/EDU7001 revision proposal.md"
    (vault / proposal).mkdir(parents=True)

    summary = stopped(module_review, vault=str(vault))  # its one item not done: the run ends Failed, with why
    why = dict(summary.skipped).get("proposal", "")
    assert why.startswith("draft failed: "), summary.skipped
    assert_names_note_cause_and_fix(why, vault, proposal, "Is a directory")
    assert "unexpectedly" not in summary.failed
    assert_names_note_cause_and_fix(summary.failed, vault, proposal, "Is a directory")
    assert (vault / summary.report.path).is_file()  # the run still reports
