"""A student's feedback note that cannot be written (a folder in its way, a write the file system refuses, a
`VaultError` from the note writer) skips that student, naming the note, the cause and the fix; every other draft
is written, the run ends as one with skipped items does, and a rerun after the fix pays nothing more."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
from responders import skilled
from test_student_feedback import EMPTY, FEEDBACK, SUBMITTED, configure, drafts, keys  # noqa: F401 (a fixture)

import tierflow.vault.notes as notes
from tierflow.core.errors import VaultError
from tierflow.flows.student_feedback import student_feedback

pytestmark = pytest.mark.usefixtures("prefect_harness", "keys")

SUBMISSIONS = "Teaching/EDU7001/essay-1/submissions"
CAUSES = {
    "folder": "Is a directory",
    "oserror": "Read-only file system",
    "vaulterror": "the vault moved under the writer",
}


def break_note(vault: Path, student_id: str, how: str, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make the note `feedback/<student_id> feedback.md` unwritable, as `how` says; what mends it."""
    note = vault / FEEDBACK / f"{student_id} feedback.md"
    if how == "folder":
        note.mkdir(parents=True)
        return note.rmdir
    real = notes.write_atomically

    def refuse(path: Path, text: str | bytes, *, create: bool = False) -> None:
        if Path(path).name != note.name:
            return real(path, text, create=create)
        if how == "oserror":
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        raise VaultError("the vault moved under the writer")

    monkeypatch.setattr(notes, "write_atomically", refuse)
    return lambda: monkeypatch.setattr(notes, "write_atomically", real)


def written(vault: Path) -> set[str]:
    """The student ids with a draft file (`drafts`, but past a folder in the way)."""
    return {p.stem.removesuffix(" feedback") for p in (vault / FEEDBACK).glob("s*.md") if p.is_file()}


def assert_skipped_with_note_cause_and_fix(vault: Path, summary, student_id: str, how: str) -> None:  # noqa: ANN001
    note = f"{FEEDBACK}/{student_id} feedback.md"
    why = dict(summary.skipped).get(f"{SUBMISSIONS}/{student_id}.md", "")
    assert why.startswith("draft failed: ") and note in why, summary.skipped
    assert CAUSES[how] in why and "run again" in why
    assert str(vault) not in why  # the vault's own path, not the machine's
    report = (vault / summary.report.path).read_text()
    skipped = report.split("## Skipped", 1)[1]
    assert note in skipped and CAUSES[how] in skipped


@pytest.mark.parametrize("how", sorted(CAUSES))
def test_a_no_content_note_that_cannot_be_written_skips_that_student_and_the_others_are_drafted(
    feedback_vault, double, monkeypatch, how
):
    configure(feedback_vault, double, "anthropic")
    double.responder = skilled()
    break_note(feedback_vault, EMPTY, how, monkeypatch)
    summary = student_feedback(vault=str(feedback_vault))  # a summary, not a raised error or a failed run
    assert not summary.failed and not summary.halted
    assert_skipped_with_note_cause_and_fix(feedback_vault, summary, EMPTY, how)
    drafted = written(feedback_vault)
    assert len(drafted) == SUBMITTED - 1 and EMPTY not in drafted


@pytest.mark.parametrize("mode", ["direct", "batch"])
@pytest.mark.parametrize("how", sorted(CAUSES))
def test_a_draft_that_cannot_be_written_is_skipped_and_the_rerun_pays_nothing_more(
    feedback_vault, double, monkeypatch, how, mode
):
    configure(feedback_vault, double, "anthropic")
    double.responder = skilled()
    mend = break_note(feedback_vault, "s2026001", how, monkeypatch)
    summary = student_feedback(vault=str(feedback_vault), mode=mode)
    assert not summary.failed and not summary.halted
    assert_skipped_with_note_cause_and_fix(feedback_vault, summary, "s2026001", how)
    assert not any(r.path == f"{FEEDBACK}/s2026001 feedback.md" for r in summary.written)

    mend()
    paid = len(double.model_calls(include_batch=True))
    rerun = student_feedback(vault=str(feedback_vault), mode=mode)
    assert not rerun.failed and not any("draft failed" in why for _, why in rerun.skipped), rerun.skipped
    assert len(drafts(feedback_vault)) == SUBMITTED
    assert double.model_calls(include_batch=True)[paid:] == []  # every answer came from the cache


def test_the_console_names_a_draft_that_was_not_written(feedback_vault, double):
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    configure(feedback_vault, double, "anthropic")
    double.responder = skilled()
    (feedback_vault / FEEDBACK / "s2026001 feedback.md").mkdir(parents=True)
    result = CliRunner().invoke(app, ["run", "student-feedback", "--vault", str(feedback_vault)])
    assert result.exit_code == 0, result.output  # as a run with skipped items ends
    shown = " ".join(result.output.split())  # the console wraps long lines
    said = f"skipped {SUBMISSIONS}/s2026001.md: draft failed: {FEEDBACK}/s2026001 feedback.md could not be written"
    assert f"{said} (Is a directory)" in shown, result.output
