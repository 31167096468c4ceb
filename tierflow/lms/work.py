"""What a platform export holds, per student, before it becomes notes: the nouns both readers share."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tierflow.lms.source import Entry


@dataclass(frozen=True)
class PlatformFile:
    """One file a student handed in, as the export holds it."""

    entry: Entry
    filename: str
    """The student's own file name (`essay.docx`, `onlinetext.html`), without the platform's prefix."""
    kind: str = "file"
    """`file`, or `online text` / `text entry` for what was typed into the platform."""


@dataclass
class StudentWork:
    """Everything one student handed in, keyed by the platform's id for them."""

    student_id: str
    """Moodle's participant id (the number in the worksheet's `Participant <id>`), Canvas's user id, or
    `anon_<id>` under Canvas's anonymous grading."""
    name: str
    """As the platform wrote it into the file names (Moodle strips `& < > " ` | ' : \\ /`), or the roster's."""
    platform: str
    files: list[PlatformFile] = field(default_factory=list)
    late: bool = False
    layout: str = ""
    """How the export laid the files out (`folders`, `folders, before 4.1`, `flat`, `blind`, ...)."""

    def ordered(self) -> list[PlatformFile]:
        """Typed text first, then files by name: the same order on every import."""
        return sorted(self.files, key=lambda f: (f.kind == "file", f.filename.casefold(), f.entry.path))


@dataclass
class ReadExport:
    """A reader's result: the students found, and the entries it could not place, with why."""

    platform: str
    students: dict[str, StudentWork] = field(default_factory=dict)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    layouts: set[str] = field(default_factory=set)

    def student(self, student_id: str, name: str, platform: str, layout: str) -> StudentWork:
        work = self.students.get(student_id)
        if work is None:
            work = self.students[student_id] = StudentWork(student_id, name, platform, layout=layout)
        self.layouts.add(layout)
        return work


@dataclass(frozen=True)
class RosterEntry:
    """A student as the platform's grade file lists them: real name (apostrophes kept), late status, and the
    identifiers the file shows, which are hidden from every prompt like the name."""

    student_id: str
    name: str
    late: bool | None = None
    email: str = ""
    """Moodle's `Email address`."""
    sis_ids: tuple[str, ...] = ()
    """The institution's ids for the student: Moodle's `ID number`, Canvas's `SIS User ID` and `SIS Login ID`."""
    submitted: datetime | None = None
    """When the platform says the submission was last changed (Moodle's `Last modified (submission)`, in the time
    zone of whoever downloaded the worksheet); None when the file does not say (Canvas's gradebook, the kept
    roster)."""
