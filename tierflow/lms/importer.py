"""A platform export into the assignment folder the student-feedback flow reads: one note per student.

`A/submissions/<student id>.md` holds the student's text (each file a labelled part, typed text first, then files
by name) with front-matter the flow reads (`student_id`, `name`, and from a roster `email` and `sis_ids`, which it
hides like the name) and properties it never sends to a model (`late`, `files`, `document_authors`,
`tierflow_unreadable`, `tierflow_hidden_text`). The files as downloaded are kept
read-only in `A/submissions/<student id>/`. A `--roster` is kept whole in `A/roster.csv` (`tierflow.lms.roster`),
students who submitted nothing included, so that the flow hides them too where an essay names them. An import
without `--roster` names the students from that kept file, as the roster it kept them from would.

Re-importing a later export adds and updates by id and never duplicates: a note tierflow wrote and nobody edited
is replaced when the student's files changed; a note the lecturer edited is left as it is with its files (and said
so, with a warning when a new submission was not taken); drafts in `feedback/` are never touched, but a reviewed
one written for the submission this import replaced is named in a warning (the export will not send it). Only files
the note lists are ever replaced or deleted in `A/submissions/<student id>/`: anything else there is the lecturer's.

A student whose files differ from those imported before is named in a warning, whichever download is the newer:
nothing in an export says when it was downloaded. A zip's entries are dated, though, and a note records the latest
date of its student's files (`files_dated`, a zip's local time without a zone): files dated before it are an older
download's, and replace the note only when asked (`replace_newer`), so a download imported again by mistake never
puts an earlier submission back in place of a resubmission. Moodle dates each file by its own time, so a
resubmission the student removed a file from looks like an older download: the platform's own time of the
submission (the grading worksheet's `Last modified (submission)`, given with `--roster`, kept as `submitted`) tells
the two apart when there is one, and without it such a submission is not taken and the warning says the dates
cannot tell. Canvas dates every entry of its zip when the zip is made, so its dates are the download's.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import yaml
from pathvalidate import sanitize_filename

from tierflow.core.commands import tierflow_command
from tierflow.core.errors import VaultError
from tierflow.lms import canvas, moodle
from tierflow.lms import roster as kept_roster
from tierflow.lms.documents import Extracted, extract
from tierflow.lms.drafts import collect
from tierflow.lms.notices import HIDDEN_CALLOUT
from tierflow.lms.source import EntryError, Export, ExportError
from tierflow.lms.work import PlatformFile, ReadExport, RosterEntry, StudentWork
from tierflow.vault.links import wikilink_can_name
from tierflow.vault.notes import LinkError, NoteWriter, as_written, safe_note_name
from tierflow.vault.text import (
    escape_comments,
    escape_links,
    escape_property_links,
    load_note,
    note_text,
    parse_note,
    read_note_text,
    text_version,
)

PLATFORMS = ("moodle", "canvas")
DATED_KEY = "files_dated"
"""The note's property holding the latest date the export gave its student's files (`YYYY-MM-DD HH:MM:SS`)."""
SUBMITTED_KEY = "submitted"
"""The note's property holding when the platform says the submission was last changed (Moodle's worksheet
`Last modified (submission)`, given with `--roster`; `YYYY-MM-DD HH:MM:SS`)."""
LONG_SUBMISSION = 200_000
"""Characters of text above which one student's note is warned of: some 50,000 tokens, more than a small model's
whole context window and a quarter of a large one's, where an essay is a few thousand words."""


@dataclass
class StudentResult:
    """What the import did for one student."""

    student_id: str
    name: str
    action: str
    """`created`, `updated`, `unchanged`, `kept-edit` (the lecturer edited the note: left as it is), `kept-newer`
    (the export's files are older than those imported before: left as it is, `warning` says so), or `failed` (not
    imported: `error` says why)."""
    parts: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(file, reason) for every file that gave no text."""
    notes: list[tuple[str, str]] = field(default_factory=list)
    """(file, note) for what is worth knowing about a file that was read (a wrong extension, a fallback encoding)."""
    hidden: list[str] = field(default_factory=list)
    late: bool = False
    path: str = ""
    warning: str = ""
    """Set when a submission was not imported because the lecturer edited the note, or because its files are older
    than those imported before (`kept-newer`): what came, what to do."""
    changed: str = ""
    """Set when this import replaced a submission imported before with a different one: the warning saying so."""
    older: bool = False
    """The submission this import put in place is dated before the one it replaced (`--replace-newer`)."""
    resubmitted: str = ""
    """Why a submission whose files are dated before those imported before was taken: the platform's time says it
    is a resubmission (said in `changed`)."""
    undecided: bool = False
    """`kept-newer` on the zip's dates alone, which cannot tell this export's fewer files from an older download's
    (the warning says so, and what tells)."""
    characters: int = 0
    """The length of the note's text, as written."""
    sizes: list[tuple[str, int]] = field(default_factory=list)
    """(file, characters of text it gave) for every file read."""
    error: str = ""
    """Why the student was not imported (action `failed`), naming the file and what to do."""
    outdated: list[str] = field(default_factory=list)
    """The student's reviewed drafts written for the submission this import replaced (said in a warning)."""


@dataclass
class ImportReport:
    platform: str
    layouts: list[str]
    folder: str
    students: list[StudentResult] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    roster: str = ""
    """The kept roster's path in the vault, when a `--roster` was given."""
    roster_added: int = 0
    roster_rows: int = 0

    @property
    def unreadable(self) -> list[tuple[str, str, str]]:
        return [(s.student_id, f, why) for s in self.students for f, why in s.problems]

    @property
    def failed(self) -> list[StudentResult]:
        """The students not imported, each with its `error`."""
        return [s for s in self.students if s.action == "failed"]


def detect(export: Export) -> str:
    """`moodle` or `canvas`, from how the export names its files; ExportError when it is neither."""
    paths = [e.path for e in export.entries]
    scores = {"moodle": moodle.matches(paths), "canvas": canvas.matches(paths)}
    best = max(scores, key=lambda k: scores[k])
    if not scores[best]:
        sample = ", ".join(paths[:3]) or "no files"
        raise ExportError(
            f"{export.path} does not look like a Moodle or Canvas submissions export ({sample}). Give the zip "
            "as the platform downloaded it, or say which platform with --from moodle|canvas."
        )
    return best


def read(export: Export, platform: str) -> ReadExport:
    return moodle.read_export(export) if platform == "moodle" else canvas.read_export(export)


def import_submissions(
    vault: Path,
    folder: str,
    export_path: Path,
    *,
    platform: str | None = None,
    roster: Path | None = None,
    replace_newer: bool = False,
    on_student: Callable[[StudentResult, int, int], None] | None = None,
) -> ImportReport:
    """Fill `folder/submissions/` from the export at `export_path`; see the module docstring. `replace_newer`: take a
    student's files even when they are dated before those imported before."""
    vault = vault.resolve()
    root = (vault / folder).resolve()
    if not root.is_relative_to(vault):
        raise VaultError(f"assignment folder {folder!r} resolves to {root}, outside the vault {vault}")
    folder = root.relative_to(vault).as_posix()
    with Export.open(export_path) as export:
        platform = platform or detect(export)
        found = read(export, platform)
        report = ImportReport(platform, sorted(found.layouts), folder, ignored=list(found.ignored))
        names = _roster(roster, platform) if roster else {}
        # What an earlier `--roster` gave, kept in roster.csv: a re-import without one names its students from it,
        # so it records (and hides) the same names, emails and ids, and refuses the same team folders.
        kept = kept_roster.entries(root)
        if (
            platform == "canvas"
            and not roster
            and not kept
            and any(not s.student_id.startswith("anon_") for s in found.students.values())
        ):
            report.warnings.append(
                "Canvas writes only a squashed sortable name into file names (`osullivanliam`): give the gradebook "
                "CSV with --roster so each student's real name is recorded and hidden from every prompt."
            )
        if platform == "moodle" and (roster or kept):
            label = roster.name if roster else f"the kept {folder}/{kept_roster.ROSTER_FILE}"
            report.ignored += moodle.team_folders(found, names if roster else kept, label)
        if kept and not roster:
            report.warnings += _kept_gaps(f"{folder}/{kept_roster.ROSTER_FILE}", platform, kept, found)
        if roster:
            report.warnings += _roster_gaps(roster, platform, names, found.students.values(), kept)
            # Before any note: the whole roster, non-submitters too, is what the flow hides (an unreadable
            # roster.csv stops here, with nothing written).
            report.roster_added, report.roster_rows = kept_roster.keep(root, _to_keep(names, found, platform))
            report.roster = f"{folder}/{kept_roster.ROSTER_FILE}"
        total = len(found.students)
        for done, work in enumerate(sorted(found.students.values(), key=lambda w: w.student_id), start=1):
            entry = _entry(names.get(work.student_id), kept.get(work.student_id))
            if platform == "moodle" and work.student_id not in names:
                # Only the worksheet says who was late (roster.csv keeps no status): what it said stays.
                work.late = work.late or _was_late(root / "submissions" / f"{work.student_id}.md")
            if entry is not None:
                # A `?` is a letter Excel could not keep when it saved the roster as Windows-1252 (`?lker I??k`):
                # the export's own spelling, where it has one (Moodle's), is the student's name.
                lost = "?" in entry.name and work.platform == "moodle" and "?" not in work.name
                work.name = work.name if lost or not entry.name else entry.name
                work.late = work.late or bool(entry.late)
            try:
                result = _import_one(vault, folder, export, work, entry, replace_newer=replace_newer)
            except Exception as exc:  # one student's failure is that student's: the others are still imported
                result = _failed(vault, folder, work, exc)
            report.students.append(result)
            report.warnings += [w for w in (result.warning, result.changed) if w]
            if on_student is not None:
                on_student(result, done, total)
    report.warnings += _long(report.students)
    report.warnings += _outdated_drafts(vault, folder, report.students)
    return report


def _failed(vault: Path, folder: str, work: StudentWork, exc: Exception) -> StudentResult:
    """The result for a student whose import stopped at `exc`: what failed, on which file, and what to do."""
    note = f"{folder}/submissions/{work.student_id}.md"
    result = StudentResult(work.student_id, work.name, "failed", late=work.late, path=note)
    if isinstance(exc, OSError):
        where = Path(exc.filename) if exc.filename else vault / note
        shown = where.relative_to(vault).as_posix() if where.is_relative_to(vault) else str(where)
        why = f"{shown}: {exc.strerror or exc}"
        fix = f"check {shown} (a file in the way of the student's folder, its permissions, a full disk)"
    elif isinstance(exc, LinkError):
        # The text, the student's name, file names and document authors are written as shown text (`_body`,
        # `escape_property_links`): what is left is the student's email or ids, as the roster gives them.
        why = f"its properties would hold a link ({'; '.join(exc.problems)}), from the student's email or ids"
        fix = "correct that student's email or ids in the roster (--roster)"
    elif isinstance(exc, VaultError):
        why, fix = str(exc), "fix what it names"
    else:
        why = f"{type(exc).__name__}: {exc}"
        fix = "if it persists, that is a bug in tierflow: please report it with this message"
    result.error = (
        f"{note} was not imported: {why}. The other students were; {fix}, then import again (those imported "
        "are left as they are)."
    )
    return result


def _outdated_drafts(vault: Path, folder: str, students: list[StudentResult]) -> list[str]:
    """A warning for each reviewed draft written for a submission this import replaced: the export will not send
    it (or, drafted before tierflow recorded versions, cannot tell it is out of date), so the lecturer learns it now,
    not when the marks are due."""
    changed: dict[str, str] = {}
    for s in students:
        if s.action in ("created", "updated"):
            try:
                changed[s.student_id] = text_version(note_text(load_note(vault / s.path).content))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
    if not changed:
        return []
    drafts = collect(vault, folder, version_of=changed.get)
    by_id = {s.student_id: s for s in students}
    run = f"`{tierflow_command('run', 'student-feedback', '--assignment', folder, vault=vault)}`"
    out = []
    for d in drafts.outdated:
        student = by_id[d.student_id]
        student.outdated.append(d.path)
        came, was = ("a new submission", "the earlier one")
        if student.older:  # put back with --replace-newer: the draft was written for the resubmission
            came, was = ("an older submission", "the newer one")
        out.append(
            f"{d.student_id} ({student.name}): {came} was imported, and your reviewed draft {d.path} was written for "
            f"{was}, so it will not be exported (neither its mark nor its feedback). Run {run} (it drafts only new "
            "and changed submissions), review the new draft and set `status: reviewed` in it."
        )
    for d in drafts.unversioned:
        if by_id[d.student_id].action != "updated":
            continue  # a note created anew: whether the draft is of the same submission cannot be told
        by_id[d.student_id].outdated.append(d.path)
        out.append(
            f"{d.student_id} ({by_id[d.student_id].name}): a new submission was imported, and your reviewed draft "
            f"{d.path} was written before it. That draft records no version of the submission (drafted before "
            "tierflow recorded it), so the export cannot tell it is out of date and WOULD send it: move it out of "
            f"feedback/ (or set its `status:` to anything but reviewed), then run {run} and review the new draft."
        )
    return out


def _long(students: list[StudentResult]) -> list[str]:
    """A warning for each note whose text is over `LONG_SUBMISSION` characters, naming its largest file: found
    at import, not when the feedback run's prompt does not fit its model."""
    lengths = sorted(s.characters for s in students if s.characters)
    median = lengths[len(lengths) // 2] if lengths else 0
    out = []
    for s in students:
        if s.characters <= LONG_SUBMISSION:
            continue
        name, size = max(s.sizes, key=lambda f: f[1])
        rest = f"; the median of this import's notes is {median:,}" if len(lengths) > 2 else ""
        out.append(
            f"{s.path}: {s.characters:,} characters of text, {size:,} of them from {name}{rest}. It may not fit one "
            f"prompt of `tierflow run student-feedback`: trim the note (cut {name}'s part from it, or whatever else "
            "need not be marked) before you run it; importing again keeps a note you edited."
        )
    return out


def _roster_gaps(
    path: Path,
    platform: str,
    names: dict[str, RosterEntry],
    students: Iterable[StudentWork],
    kept: dict[str, RosterEntry],
) -> list[str]:
    """Warnings for what the roster cannot give: students neither it nor the `kept` roster lists, and names Excel
    broke."""
    out = []
    listed = names.keys() | kept.keys()
    missing = sorted(w.student_id for w in students if w.student_id not in listed and w.student_id[:5] != "anon_")
    if missing:
        out.append(
            f"--roster {path.name} does not list {len(missing)} student(s) of the export ({', '.join(missing[:20])}"
            f"{', ...' if len(missing) > 20 else ''}): their names are only what the platform wrote into file names"
            + (", squashed (`carterben`), so their first names may reach a model" if platform == "canvas" else "")
            + ". Download the roster again, for every student of the assignment."
        )
    broken = sorted(sid for sid, e in names.items() if "?" in e.name)
    if broken:
        out.append(
            f"--roster {path.name}: the names of {', '.join(broken[:20])} have `?` where Excel, saving as "
            "Windows-1252, dropped letters it could not hold"
            + (" (the export's spelling is used instead)" if platform == "moodle" else "")
            + ". Save the file as 'CSV UTF-8' and import again."
        )
    return out


def _entry(given: RosterEntry | None, kept: RosterEntry | None) -> RosterEntry | None:
    """The student as the `--roster` lists them, with what the kept roster has where it gives nothing (a roster
    without the student, or an empty email or ids): what a roster once gave is never dropped from a note."""
    if given is None or kept is None:
        return given or kept
    return replace(
        given, name=given.name or kept.name, email=given.email or kept.email, sis_ids=given.sis_ids or kept.sis_ids
    )


def _was_late(note: Path) -> bool:
    """Whether the student's note, as an earlier import wrote it, says `late: true`."""
    try:
        return load_note(note).metadata.get("late") is True
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


def _kept_gaps(path: str, platform: str, kept: dict[str, RosterEntry], found: ReadExport) -> list[str]:
    """A warning naming the students of the export the kept roster does not list, imported without `--roster`."""
    missing = sorted(sid for sid in found.students if sid not in kept and not sid.startswith("anon_"))
    if not missing:
        return []
    return [
        f"{path} does not list {len(missing)} student(s) of the export ({', '.join(missing[:20])}"
        f"{', ...' if len(missing) > 20 else ''}): their names are only what the platform wrote into file names"
        + (", squashed (`carterben`), so their first names may reach a model" if platform == "canvas" else "")
        + ". Download the roster again and import with --roster, for every student of the assignment."
    ]


def _to_keep(names: dict[str, RosterEntry], found: ReadExport, platform: str) -> list[RosterEntry]:
    """The roster's students as `roster.csv` keeps them, by id: a name Excel broke (`?lker I??k`) in the spelling
    of Moodle's file names when the student submitted; Canvas's Test Student (its Student View user) left out,
    since "Test" and "Student" would be hidden wherever an essay uses the words."""
    out = []
    for sid, entry in sorted(names.items()):
        if platform == "canvas" and entry.name == canvas.display_name(canvas.TEST_STUDENT):
            continue
        work = found.students.get(sid)
        if "?" in entry.name and work is not None and work.platform == "moodle" and work.name and "?" not in work.name:
            entry = replace(entry, name=work.name)
        out.append(entry)
    return out


def _roster(path: Path, platform: str) -> dict[str, RosterEntry]:
    """The roster's students; an ExportError (before any note is written) when it names none."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExportError(f"{path}: cannot be read ({exc.strerror}); give the worksheet or gradebook CSV") from None
    try:
        return moodle.read_roster(data, str(path)) if platform == "moodle" else canvas.read_roster(data, str(path))
    except (moodle.WorksheetError, canvas.GradebookError) as exc:
        # Without it, names (and emails, ids) the lecturer meant to hide would reach the model: stop, don't guess.
        raise ExportError(f"--roster {exc}") from None


def _import_one(
    vault: Path,
    folder: str,
    export: Export,
    work: StudentWork,
    entry: RosterEntry | None = None,
    *,
    replace_newer: bool = False,
) -> StudentResult:
    subs = vault / folder / "submissions"
    originals = subs / work.student_id
    result = StudentResult(work.student_id, work.name, "unchanged", late=work.late)
    note = subs / f"{work.student_id}.md"
    result.path = note.relative_to(vault).as_posix()
    # Every file is read from the export before anything of the student's is written.
    given: list[tuple[PlatformFile, bytes]] = []
    for f in work.ordered():
        try:
            given.append((f, export.read(f.entry)))
        except EntryError as exc:
            result.problems.append((f.filename, str(exc)))
    listed = _listed(vault, note, originals)
    placed = _place(given, originals, listed)
    if note.exists() and _edited(note):
        # The lecturer's note and the files it lists stay exactly as they are, even when the student resubmitted.
        result.action = "kept-edit"
        # A file that could not be read is reported as such; it is no sign of a new submission.
        changed = {t.name for _, _, t in placed} != listed or any(not _holds(t, data) for _, data, t in placed)
        if changed and not result.problems:
            result.warning = _resubmitted(vault, note, originals, [f.filename for f, _ in given], listed)
        return result
    if result.problems and note.exists():
        return result  # what an earlier export gave stays until the whole of this one can be read
    recorded, previous = _previous(note)
    dated = max((f.entry.modified for f, _ in given if f.entry.modified), default=None)
    before = _when(recorded.get(DATED_KEY))
    submitted = entry.submitted if entry is not None else None
    was = _when(recorded.get(SUBMITTED_KEY))
    # Other files than the note's: a different submission if they give other text too (a file saved again with the
    # same text is the same submission, and so is one a newer tierflow reads differently from the same bytes).
    refiled = note.exists() and (
        {t.name for _, _, t in placed} != listed or any(not _holds(t, data) for _, data, t in placed)
    )
    # Fewer files, the others as they were: a resubmission the student removed a file from, or a download from
    # before they added it. A zip dates each file by its own time, so only the platform's time of the submission
    # (Moodle's worksheet) tells the two apart.
    fewer = refiled and {t.name for _, _, t in placed} < listed and all(_holds(t, data) for _, data, t in placed)
    told = _told(submitted, was, before)
    by_dates = refiled and dated is not None and before is not None and dated < before
    # The platform's time decides where the dates cannot (fewer files); where the files themselves are older
    # versions, a worksheet downloaded later than the zip could say "newer" of an older download: not taken. Against
    # the files' dates alone (no time recorded before), it never overrides newer dates: a submission is last changed
    # after its files, so only the zones (the worksheet's is its reader's, the zip's the server's) make it earlier.
    by_platform = told is not None and told[0] < told[1] and (fewer or was is not None)
    older = refiled and (by_platform or (by_dates and not fewer)) if told is not None else by_dates
    if older and not replace_newer and _staged_body(placed).strip() != previous.strip():
        result.action = "kept-newer"  # decided before anything of the student's is written
        # Canvas dates every entry when it makes the zip (rubyzip's default time), so its dates are the download's.
        result.undecided = fewer and told is None and work.platform == "moodle"
        result.warning = _older(result.path, work, recorded, listed, before, placed, dated, told, result.undecided)
        return result
    result.resubmitted = (
        _platform_says(submitted, told) if told is not None and dated and before and dated < before else ""
    )
    kept: list[tuple[str, Path, str, Extracted]] = []  # (filename, path, kind, extracted)
    for f, data, target in placed:
        _write_readonly(target, data)
        kept.append((f.filename, target, f.kind, extract(target)))
    # Only files tierflow put there itself go: anything the lecturer added to the folder stays.
    for name in listed - {t.name for _, _, t in placed}:
        stale = originals / name
        if stale.is_file() and not stale.is_symlink():
            stale.chmod(stat.S_IWUSR | stat.S_IRUSR)
            stale.unlink()
    readable = [(fn, p, kind, ex) for fn, p, kind, ex in kept if ex.ok]
    result.notes = [(fn, note) for fn, _, _, ex in readable for note in ex.notes]
    for fn, _, kind, ex in kept:
        if not ex.ok:
            reason = "the online text is empty" if kind != "file" and "no text" in ex.problem else ex.problem
            result.problems.append((fn, reason))
    body = _body(readable)
    changed = refiled and body.strip() != previous.strip()
    result.older = changed and older
    if note.exists() and not changed and before is not None:
        dated = before  # the same submission: the date it was first imported with stays, whatever this zip says
    if note.exists() and not changed:
        # The same submission: the platform's time recorded with it stays (a note imported without one is not
        # rewritten for it: the same export imported again changes nothing).
        submitted = was
    # (A note imported with no date, by an older tierflow or from an unpacked folder, takes this zip's: an older
    # download imported after it is then refused as for any other.)
    authors = list(dict.fromkeys(a for _, _, _, ex in kept for a in ex.authors))
    if work.platform == "canvas" and work.name and " " not in work.name:
        name = canvas.name_from(work.name, [*authors, body]) or work.name
    elif entry is not None and entry.name and "?" not in entry.name:
        name = work.name  # the roster's spelling: the essay's (`İLKER IŞIK`) is not the name
    else:
        name = _restore_name(work.name, body)
    result.name = name
    result.parts = len(readable)
    result.characters = len(body)
    result.sizes = [(fn, len(ex.text)) for fn, _, _, ex in readable]
    result.hidden = [fn for fn, _, _, ex in readable if ex.hidden]
    front = {
        "student_id": work.student_id,
        # The student's name as the export or roster gives it (`Jane [[X]]`): as shown text, like the file names
        # below, read back with `unescape_links`.
        "name": escape_property_links(name),
        **({"email": entry.email} if entry and entry.email else {}),
        **({"sis_ids": list(entry.sis_ids)} if entry and entry.sis_ids else {}),
        "platform": work.platform,
        "late": work.late,
        "tags": ["submission", "tierflow/imported"],
        "files": [p.relative_to(vault).as_posix() for _, p, _, _ in kept],
        # What the student and the platform named (`essay [[draft]].pdf`, an author `Jane [[X]]`) as shown text, not
        # a link to no note, which Obsidian would show and the writer refuses; read back with `unescape_links`.
        "downloaded_as": [escape_property_links(f.entry.path) for f in work.ordered()],
        **({DATED_KEY: dated.isoformat(sep=" ")} if dated else {}),
        **({SUBMITTED_KEY: submitted.isoformat(sep=" ")} if submitted else {}),
        "document_authors": [escape_property_links(a) for a in authors],
        "tierflow_hidden_text": [escape_property_links(fn) for fn in result.hidden],
        "tierflow_unreadable": [escape_property_links(f"{fn}: {why}") for fn, why in result.problems],
    }
    written = NoteWriter(vault, f"{folder}/submissions").write(work.student_id, front, body)
    result.action = written.action
    if changed:
        result.changed = _changed(result, listed, before, placed, dated)
    return result


def _previous(note: Path) -> tuple[dict, str]:
    """The note's properties and text as an earlier import wrote them; none when there is no note or it cannot be
    read."""
    try:
        post = load_note(note) if note.exists() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        post = None
    return (dict(post.metadata), post.content) if post is not None else ({}, "")


def _staged_body(placed: list[tuple[PlatformFile, bytes, Path]]) -> str:
    """The note's text the export's files would give, read from copies in a temporary folder: the student's
    folder is left as it is until they are taken."""
    with tempfile.TemporaryDirectory(prefix="tierflow-import-") as tmp:
        readable = []
        for i, (f, data, target) in enumerate(placed):
            copy = Path(tmp) / str(i) / target.name
            copy.parent.mkdir()
            copy.write_bytes(data)
            ex = extract(copy)
            if ex.ok:
                readable.append((f.filename, copy, f.kind, ex))
        return _body(readable)


def _when(value: object) -> datetime | None:
    """A recorded `files_dated` (YAML may have read it as a datetime already); None when there is none."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    try:
        return datetime.fromisoformat(str(value)).replace(tzinfo=None) if value else None
    except ValueError:
        return None


def _told(
    submitted: datetime | None, was: datetime | None, before: datetime | None
) -> tuple[datetime, datetime, str] | None:
    """(this export's time, the earlier one's, what they are) when the platform's own time of the submission can
    tell which is the newer: Moodle's worksheet `Last modified (submission)` now, against the one recorded at the
    earlier import, or else against the latest date of the files imported then (a submission last changed before
    a file in it was uploaded is an older one). None when this export's roster gives no such time."""
    if submitted is None:
        return None
    if was is not None:
        return submitted, was, "the grading worksheet's `Last modified (submission)`, now and at the import before"
    if before is not None:
        return (
            submitted,
            before,
            (
                "the grading worksheet's `Last modified (submission)` against the latest date of the files imported "
                "before (the worksheet's time zone is yours, the zip's the server's)"
            ),
        )
    return None


def _platform_says(submitted: datetime | None, told: tuple[datetime, datetime, str]) -> str:
    """Said when the zip's dates would have made a resubmission look older, and the platform's time told: the
    student changed the submission (removing a file keeps the others' dates) after the one imported before."""
    return (
        f"a resubmission, though its files are dated before those imported before: Moodle says the submission was "
        f"last changed {told[0]:%Y-%m-%d %H:%M}, after {told[1]:%Y-%m-%d %H:%M} ({told[2]}); a student who removes a "
        "file leaves the others' dates as they were"
    )


def _files(names: Iterable[str], dated: datetime | None) -> str:
    """`essay.docx, dated 2026-03-09 16:30`, as a warning names a submission's files."""
    listed = ", ".join(sorted(names)) or "no files"
    return f"{listed}, dated {dated:%Y-%m-%d %H:%M}" if dated else f"{listed}, undated"


def _changed(
    result: StudentResult,
    listed: set[str],
    before: datetime | None,
    placed: list[tuple[PlatformFile, bytes, Path]],
    dated: datetime | None,
) -> str:
    """The warning for a submission this import replaced with a different one: a resubmission, or (when the zip's
    dates do not tell, or `--replace-newer` was given) an older download's submission put back."""
    then, now = _files(listed, before), _files((t.name for _, _, t in placed), dated)
    older = (
        "; this export's files are OLDER than those it replaced, and were taken because --replace-newer was given"
        if result.older
        else ""
    )
    why = f": {result.resubmitted}" if result.resubmitted else ""
    return (
        f"{result.student_id} ({result.name}): the submission differs from the one imported before (then {then}; "
        f"now {now}){older}{why}. {result.path} now holds this export's, and a draft written before this import is "
        "for the text it replaced. If this export is an older download than the one imported before, import the "
        "newer one again."
    )


def _older(
    path: str,
    work: StudentWork,
    recorded: dict,
    listed: set[str],
    before: datetime,
    placed: list[tuple[PlatformFile, bytes, Path]],
    dated: datetime | None,
    told: tuple[datetime, datetime, str] | None = None,
    undecided: bool = False,
) -> str:
    """The warning for a submission not taken because it is older than the one imported before: by the platform's
    time of the submission (`told`), or by its files' dates, which cannot tell fewer files from an older download
    (`undecided`)."""
    name = recorded.get("name") or work.name
    now, then = _files((t.name for _, _, t in placed), dated), _files(listed, before)
    kept = (
        f"NOT replaced: {path} and its files are kept as they are. If the older submission is the one to mark, import "
        "again with --replace-newer."
    )
    if told is not None and told[0] >= told[1]:
        return (
            f"{work.student_id} ({name}): this export's files ({now}) are dated before those imported before "
            f"({then}) and are not just fewer of them, though Moodle's worksheet says the submission was last changed "
            f"{told[0]:%Y-%m-%d %H:%M}, after {told[1]:%Y-%m-%d %H:%M} ({told[2]}): a worksheet downloaded later than "
            f"the zip says so of an older download too. {kept}"
        )
    if told is not None:
        return (
            f"{work.student_id} ({name}): this export's submission ({now}) is OLDER than the one imported before "
            f"({then}): Moodle says it was last changed {told[0]:%Y-%m-%d %H:%M}, before {told[1]:%Y-%m-%d %H:%M} "
            f"({told[2]}). Most likely an earlier download imported again, which would put the earlier submission "
            f"back in place of the resubmission. {kept}"
        )
    if undecided:
        return (
            f"{work.student_id} ({name}): this export has fewer files than the submission imported before (now "
            f"{now}; then {then}), the others unchanged: either the student removed a file when they resubmitted, or "
            "this is an earlier download, from before they added it. A zip dates each file by its own time, so its "
            "dates cannot tell the two apart; Moodle's grading worksheet can (its `Last modified (submission)`): "
            "import again with --roster and the worksheet downloaded with this export. " + kept
        )
    return (
        f"{work.student_id} ({name}): this export's submission ({now}) is OLDER than the one imported before "
        f"({then}): most likely an earlier download imported again, which would put the earlier submission back in "
        f"place of the resubmission. {kept}"
    )


def _listed(vault: Path, note: Path, originals: Path) -> set[str]:
    """The names of the files in `originals` that the student's note lists under `files:` (none when it has none
    or its front-matter cannot be read): what an earlier import put there."""
    try:
        files = load_note(note).metadata.get("files")
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return set()
    if not isinstance(files, list):
        return set()
    return {(vault / str(p)).name for p in files if (vault / str(p)).parent == originals}


def _place(
    given: list[tuple[PlatformFile, bytes]], originals: Path, listed: set[str]
) -> list[tuple[PlatformFile, bytes, Path]]:
    """Where each file of the export goes in `originals`: its own name made safe, unless a file there that tierflow
    did not list holds other bytes (the lecturer's, or one an earlier note still lists): then `name (2).ext`."""
    used: set[str] = set()
    placed = []
    for f, data in given:
        base = _safe_name(f.filename.replace("/", " - ")) or "file"
        # A name an earlier import kept (`Lab #3.docx`) stays, so an unchanged submission is not taken for a new one.
        base = base if base in listed else _linkable(base)
        name = _unique(base, used)
        while name not in listed and (originals / name).exists() and not _holds(originals / name, data):
            name = _unique(base, used)
        placed.append((f, data, originals / name))
    return placed


_NAME_BYTES = 255 - len(" (99)")
"""The bytes a file system gives a file's name (255), less room for the ` (2)` `_unique` may add."""


def _safe_name(filename: str) -> str:
    """`filename` made safe for a file name; one too long for a file system cut in its stem, so that it keeps its
    extension: cut at 255 bytes with its `.docx`, it was a file no program opens, read as one the student saved
    without an extension."""
    if len(filename.encode()) <= _NAME_BYTES:
        return sanitize_filename(filename, replacement_text="_")
    stem, dot, ext = filename.rpartition(".")
    if not (dot and stem and 0 < len(ext) <= 10):
        return sanitize_filename(filename, replacement_text="_", max_len=_NAME_BYTES)
    ext = sanitize_filename(ext, replacement_text="_")
    return sanitize_filename(stem, replacement_text="_", max_len=_NAME_BYTES - 1 - len(ext.encode())) + "." + ext


def _linkable(name: str) -> str:
    """`name`, or where a link could not hold it (`essay [[draft]].pdf`, `Lab #3.docx`: `[`, `]`, `#`, `^` and `|`
    end a wikilink's target) the name without those marks (`essay draft.pdf`), as tierflow names a note: so that the
    note's `files:` holds no link mark and the original can be linked like any file in the vault."""
    if wikilink_can_name(name):
        return name
    stem, dot, ext = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    ext = "".join(ch for ch in ext if ch not in "[]#^|")
    return f"{safe_note_name(stem)}{dot if ext else ''}{ext}"


def _holds(path: Path, data: bytes) -> bool:
    return path.is_file() and path.read_bytes() == data


def _resubmitted(vault: Path, note: Path, originals: Path, files: list[str], listed: set[str]) -> str:
    """The warning for a new submission not taken over an edited note: what came, what was kept, what to do."""
    kept = ", ".join(sorted(listed)) or "none"
    folder = originals.relative_to(vault).as_posix()
    return (
        f"{note.relative_to(vault).as_posix()}: a new submission arrived ({', '.join(files) or 'no files'}) and was "
        f"NOT imported, because you edited this note: it is kept as it is, with the files it lists in {folder}/ "
        f"({kept}), so feedback would still be drafted on the old submission. To take the new one, rename the note "
        "and move it out of submissions/ (your edits stay in it), then import again and copy your edits across."
    )


_FOOTNOTE = re.compile(r"\[\^(\d+)\]")
"""A footnote's label, as `tierflow.lms.documents` writes a note's mark and definition."""


def _body(readable: list[tuple[str, Path, str, Extracted]]) -> str:
    if not readable:
        return ""
    blocks = []
    many = len(readable) > 1
    for i, (_, path, kind, ex) in enumerate(readable, start=1):
        label = kind if kind != "file" else f"{ex.kind or path.suffix.lower()} file"  # what it was read as
        # A `%%` or `<!--` the student typed would start a comment, hiding the rest of the essay from reader and
        # model: written so that Obsidian shows it and the prompt gets it back (`unescape_comments`).
        text = escape_comments(ex.text)
        if many:
            # Footnotes are numbered per file: from the second part on, labelled by the part too (`[^2-1]`), since
            # Obsidian takes two `[^1]` in one note for one footnote.
            text = _FOOTNOTE.sub(rf"[^{i}-\1]", text) if i > 1 else text
            blocks.append(f"## Part {i} of {len(readable)} ({label})\n\n{text}")
        else:
            blocks.append(text)
        if ex.hidden:
            lines = "\n".join(f"> {escape_comments(' '.join(h.split()))}" for h in ex.hidden)
            where = f"part {i} ({label})" if many else label
            blocks.append(
                f"> [!warning] {HIDDEN_CALLOUT}, {where}: invisible to a reader (white, 1-px or hidden text), "
                f"visible to a model\n{lines}"
            )
    # Likewise a `[[` or `](` the student typed (R's `df[["age"]]`, `![[img.png]]` typed into Moodle, a Markdown
    # file's `[appendix](appendix.md)`) would be a link to no note, which Obsidian would create on a click and
    # the writer refuses: written as shown text, and the prompt gets it back (`unescape_links`).
    return escape_links("\n\n".join(blocks))


def _restore_name(name: str, text: str) -> str:
    """The platform's name with the characters Moodle strips put back, when the student's text has them:
    `Liam OSullivan` becomes `Liam O'Sullivan` if the essay says so (so the name is found and hidden there). The
    letters stay the platform's, in its case: an essay headed `LIAM O'SULLIVAN` gives `Liam O'Sullivan` too."""
    out = []
    for word in name.split():
        if len(word) < 3:
            out.append(word)
            continue
        pattern = "['’`]?".join(re.escape(ch) for ch in word)
        m = re.search(rf"(?<!\w){pattern}(?!\w)", text, re.IGNORECASE)
        if m and m.group(0).casefold() != word.casefold() and word[0] == m.group(0)[0]:
            letters = iter(word)  # the match is the word's letters, one for one, with apostrophes between
            out.append("".join(ch if ch in "'’`" else next(letters) for ch in m.group(0)))
        else:
            out.append(word)
    return " ".join(out)


def _edited(note: Path) -> bool:
    """True when the note is not tierflow's as written: the lecturer edited it (or wrote it)."""
    try:
        text = read_note_text(note)
        post = parse_note(text)
    except (UnicodeDecodeError, yaml.YAMLError):
        return True
    return not as_written(dict(post.metadata), post.content, text)


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 2
    while candidate.casefold() in {u.casefold() for u in used}:
        stem, dot, ext = name.rpartition(".")
        candidate = f"{stem} ({n}).{ext}" if dot else f"{name} ({n})"
        n += 1
    used.add(candidate)
    return candidate


def _write_readonly(path: Path, data: bytes) -> None:
    """Write the original as downloaded and make it read-only; unchanged bytes are left alone."""
    if path.exists():
        if _holds(path, data):
            return
        path.chmod(stat.S_IWUSR | stat.S_IRUSR)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
