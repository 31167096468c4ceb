"""Student feedback on a full disk: the drafts that fit are written, every student whose draft did not is named (on
the console and in the run report, or on the console alone when the report does not fit either), a cohort summary
whose tier table cannot be added is skipped like a draft rather than ending the run, and a rerun once there is room
writes the rest from the answers already paid for."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
from responders import skilled
from test_student_feedback import EMPTY, FEEDBACK, SUBMITTED, configure, drafts, keys  # noqa: F401 (a fixture)
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.flows.student_feedback import student_feedback

pytestmark = pytest.mark.usefixtures("prefect_harness", "keys")

SUBMISSIONS = "Teaching/EDU7001/essay-1/submissions"
SUMMARY = f"{FEEDBACK}/Cohort summary.md"
RUNS = "tierflow/Runs"
NO_SPACE = "No space left on device"
FITS = 5
"""Notes the full folders still take: the cohort summary and four drafts, as on the tester's 20 KB tmpfs."""


class FullDisk:
    """Folders of the vault on a disk that takes `room` more notes, then refuses each with ENOSPC where a full disk
    does: when the note writer's temporary file is flushed to it (`os.fsync`). The writer's own file operations run
    as they are; `room = None` is the space freed."""

    def __init__(self, vault: Path, folders: list[str], room: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.vault, self.folders, self.room = vault, folders, room
        self.refused = 0
        self._fsync = os.fsync
        self._lock = threading.Lock()  # the drafts are written at once, from the task runner's threads
        monkeypatch.setattr(os, "fsync", self.fsync)

    def _on_disk(self, fd: int) -> bool:
        """Whether `fd` is a note writer's temporary file in one of the full folders."""
        opened = os.fstat(fd)
        for folder in self.folders:
            for tmp in (self.vault / folder).glob(".tierflow-*.tmp"):
                try:
                    if os.path.samestat(opened, tmp.stat()):
                        return True
                except FileNotFoundError:  # another draft's, written meanwhile
                    continue
        return False

    def fsync(self, fd: int) -> None:
        if self.room is not None and self._on_disk(fd):
            with self._lock:
                if self.room == 0:
                    self.refused += 1
                    raise OSError(errno.ENOSPC, NO_SPACE)
                self.room -= 1
        self._fsync(fd)


def unwritten(vault: Path) -> set[str]:
    """The students with no draft in the feedback folder."""
    return {p.stem for p in (vault / SUBMISSIONS).glob("s*.md")} - set(drafts(vault))


def flat(text: str) -> str:
    return " ".join(text.split())  # the console and the report wrap long lines


def assert_each_named(text: str, missing: set[str], quote: str = "") -> None:
    """`text` names each student in `missing` (by their submission, in `quote`s), their draft's note and why it was
    not written."""
    for student_id in missing:
        said = f"{quote}{SUBMISSIONS}/{student_id}.md{quote}: draft failed: {FEEDBACK}/{student_id} feedback.md"
        assert f"{said} could not be written ({NO_SPACE})" in text, (student_id, text)


def test_a_full_feedback_folder_names_every_draft_not_written_and_the_rerun_writes_them_for_nothing(
    feedback_vault, double, monkeypatch
):
    configure(feedback_vault, double, "anthropic")
    double.responder = skilled()
    disk = FullDisk(feedback_vault, [FEEDBACK], FITS, monkeypatch)
    result = CliRunner().invoke(app, ["run", "student-feedback", "--vault", str(feedback_vault)])
    shown = flat(result.output)

    missing = unwritten(feedback_vault)
    assert len(drafts(feedback_vault)) == FITS - 1 and len(missing) == SUBMITTED - FITS + 1, disk.refused
    assert result.exit_code == 0, result.output  # as a run with skipped drafts ends: no phase failed
    assert_each_named(shown, missing)
    # The summary, written before the drafts, is kept; the tier table it could not be given is skipped like a draft.
    tiers = f"tier table not added: {SUMMARY} could not be written ({NO_SPACE})"
    assert f"cohort: {tiers}" in shown and "run again" in shown, result.output
    assert (feedback_vault / SUMMARY).is_file()
    reports = sorted((feedback_vault / RUNS).glob("*.md"))
    report = flat(next(p for p in reports if "student-feedback" in p.name).read_text())
    skipped = report.split("## Skipped", 1)[1]
    assert_each_named(skipped, missing, quote="`")
    assert f"`cohort`: {tiers}" in skipped

    disk.room = None  # space freed
    paid = len(double.model_calls(include_batch=True))
    again = CliRunner().invoke(app, ["run", "student-feedback", "--vault", str(feedback_vault)])
    assert again.exit_code == 0 and "could not be written" not in again.output, again.output
    assert len(drafts(feedback_vault)) == SUBMITTED
    assert double.model_calls(include_batch=True)[paid:] == []  # every answer came from the cache
    summary = (feedback_vault / SUMMARY).read_text()
    assert all(f"[[{sid}]]" in summary for sid in missing), summary  # the tier table now lists every draft


def test_when_the_run_report_does_not_fit_either_the_console_still_names_every_draft_not_written(
    feedback_vault, double, monkeypatch
):
    configure(feedback_vault, double, "anthropic")
    double.responder = skilled()
    FullDisk(feedback_vault, [FEEDBACK, RUNS], FITS, monkeypatch)
    result = CliRunner().invoke(app, ["run", "student-feedback", "--vault", str(feedback_vault)])
    shown = flat(result.output)

    missing = unwritten(feedback_vault)
    assert len(missing) == SUBMITTED - FITS + 1, result.output
    assert_each_named(shown, missing)
    assert f"cohort: tier table not added: {SUMMARY} could not be written ({NO_SPACE})" in shown, result.output
    assert not list((feedback_vault / RUNS).glob("*.md"))
    assert f"run report not written: {RUNS}/" in shown and f"could not be written ({NO_SPACE})" in shown, shown
    assert result.exit_code == 0, result.output


def test_a_tier_table_that_cannot_be_added_is_skipped_and_the_flow_returns_its_summary(
    feedback_vault, double, monkeypatch
):
    """From Python: the flow returns its summary, the report written, rather than raising the writer's error."""
    configure(feedback_vault, double, "anthropic")
    double.responder = skilled()
    FullDisk(feedback_vault, [FEEDBACK], 1 + SUBMITTED, monkeypatch)  # the summary and every draft fit, not the rewrite
    summary = student_feedback(vault=str(feedback_vault))
    assert not summary.failed and not summary.halted
    assert len(drafts(feedback_vault)) == SUBMITTED
    why = dict(summary.skipped)["cohort"]
    assert why.startswith(f"tier table not added: {SUMMARY} could not be written ({NO_SPACE})"), summary.skipped
    assert summary.report is not None and (feedback_vault / summary.report.path).is_file()
    assert any(w.path == SUMMARY for w in summary.written)  # written before the drafts, and kept
