"""Assignment I/O: the rubric, the submissions, exemplars and brief, and the students' pseudonyms."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from prefect import task

from tierflow.core.calls import RunSettings, caller_for
from tierflow.core.commands import tierflow_command
from tierflow.core.errors import ContextWindowExceeded, VaultError
from tierflow.lms.notices import split_notices
from tierflow.lms.roster import ROSTER_FILE, read_kept
from tierflow.vault.folder import folders_beside
from tierflow.vault.labels import keep_labels
from tierflow.vault.notes import check_vault
from tierflow.vault.pseudonyms import NoPseudonyms, Pseudonyms, Student
from tierflow.vault.rubric import Rubric, load_rubric
from tierflow.vault.text import (
    PropertyError,
    escape_comments,
    hide_comments,
    load_note,
    misplaced_front_matter,
    note_text,
    property_list,
    property_text,
    read_note_text,
    text_version,
    unclosed_comment,
    unescape_links,
)

log = logging.getLogger("tierflow")
STUDENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
INJECTION = re.compile(
    r"ignore (?:all |any )?(?:the )?(?:previous|prior|above|earlier) instructions"
    r"|disregard (?:all |the )?(?:previous |prior |above )?instructions"
    r"|you are now (?:in|a|an)\b|system prompt|award this (?:essay|work|submission)",
    re.IGNORECASE,
)
"""Text addressed to a model rather than a marker. Flagged for the lecturer, and kept out of cohort prompts."""


@dataclass(frozen=True)
class Submission:
    student_id: str
    name: str
    path: str
    text: str
    flags: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    """Other names of the student's, from their documents' metadata (`document_authors`, written by an LMS import)."""
    not_read: tuple[str, ...] = ()
    """Attachments the note embeds (`![[diagram.png]]`): only the note's text is read, and its draft says so."""
    also: tuple[str, ...] = ()
    """The student's email and institution ids (`email`, `sis_ids`, written by an LMS import with a roster)."""
    files: tuple[str, ...] = ()
    """The vault paths of the files the note's text was read from (`files`, written by an LMS import)."""
    note_version: str = ""
    """`text_version` of the note's whole text, the import's notices to the lecturer included (as the import and
    the export take it); empty: that of `text`."""

    @property
    def empty(self) -> bool:
        return not self.text.strip()

    @property
    def version(self) -> str:
        """Which version of the submission this is (`text_version` of the note's text): recorded in its draft."""
        return self.note_version or text_version(self.text)


@dataclass
class Assignment:
    folder: str
    rubric: Rubric
    brief: str
    exemplars: list[str]
    submissions: list[Submission]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    pseudonymise: bool = True
    roster: list[Student] = field(default_factory=list)
    """Everyone the kept roster (`roster.csv`, written by an import with `--roster`) names, submitters or not."""
    labels: dict[str, str] = field(default_factory=dict)
    """Every label the folder has given, by student id (`pseudonyms.csv`, `keep_labels`); empty: by sorted id."""

    @property
    def feedback_folder(self) -> str:
        return f"{self.folder}/feedback"

    @staticmethod
    def feedback_title(student_id: str) -> str:
        """The name of a student's feedback draft: never the submission's own (`s2026005`), which links mean."""
        return f"{student_id} feedback"

    def pseudonyms(self) -> Pseudonyms:
        """Labels for every submitter and everyone on the kept roster: an essay may name a classmate who handed
        nothing in. A student in both is one student, hidden under every name and id either gives."""
        if not self.pseudonymise:
            return NoPseudonyms()
        return cohort_pseudonyms(self.submissions, self.roster, self.labels)


def cohort_pseudonyms(
    submissions: list[Submission], roster: list[Student], labels: dict[str, str] | None = None
) -> Pseudonyms:
    """Labels for every submitter and everyone on the kept roster (`Assignment.pseudonyms`), `labels` kept."""
    students = {s.student_id: Student(s.student_id, s.name, s.aliases, s.also) for s in submissions}
    for kept in roster:
        students[kept.student_id] = _joined(students.get(kept.student_id), kept)
    return _pseudonyms(tuple(students.values()), tuple((labels or {}).items()))


def cohort_labels(
    root: Path, submissions: list[Submission], roster: list[Student], *, write: bool = True
) -> dict[str, str]:
    """The folder's kept labels, with one for each submitter and roster student who has none yet, kept before
    any prompt holds it (`keep_labels`): a label never moves to another student, whoever is imported later."""
    return keep_labels(root, [s.student_id for s in (*submissions, *roster)], write=write)


def folder_pseudonyms(vault: Path, folder: str, config: Any) -> Pseudonyms:
    """The pseudonyms a run of the assignment folder would use (its submission notes and kept roster), for a prompt
    sent outside a run (`tierflow rubric normalise`); none when `config` keeps names (`pseudonymise`)."""
    if not pseudonymise(config):
        return NoPseudonyms()
    root, folder = inside_vault(vault, folder)
    submissions = _submissions(vault, f"{folder}/submissions")[0] if (root / "submissions").is_dir() else []
    kept = read_kept(root, {s.student_id: (s.name, *s.aliases) for s in submissions})
    roster = kept.students if kept is not None else []
    return cohort_pseudonyms(submissions, roster, cohort_labels(root, submissions, roster))


def pseudonymise(config: Any) -> bool:
    """Whether names are hidden: by every tier a call could reach (overrides, escalation, adaptive routing), not the
    table alone, and by where the ledger is (it keeps every prompt: a PostgreSQL ledger on another machine would
    receive the names a local model was sent), unless `[feedback] pseudonymise` says otherwise."""
    choice = config.settings.feedback.pseudonymise
    return (config.may_reach_cloud or config.ledger_leaves_machine) if choice is None else choice


@lru_cache(maxsize=8)
def _pseudonyms(students: tuple[Student, ...], labels: tuple[tuple[str, str], ...]) -> Pseudonyms:
    """One `Pseudonyms` per cohort, not one per call: each task of each submission asks for them, and a
    300-student roster's matcher takes a tenth of a second to build."""
    return Pseudonyms(students, dict(labels))


def _joined(own: Student | None, kept: Student) -> Student:
    """A submitter as their note and the kept roster give them: the note's name (the lecturer may have corrected
    it), the roster's as another name where it differs, and every alias and id of both."""
    if own is None:
        return kept
    other = (kept.name,) if kept.name and kept.name != own.name else ()
    return Student(
        own.student_id,
        own.name or kept.name,
        aliases=tuple(dict.fromkeys((*own.aliases, *other, *kept.aliases))),
        also=tuple(dict.fromkeys((*own.also, *kept.also))),
    )


def too_long(vault: Path, submission: Submission, exc: ContextWindowExceeded) -> ContextWindowExceeded:
    """`exc` with advice for one student's submission too long for the model's window: the note, the files that
    make most of it (when an import recorded them), and what to do. Selecting fewer notes is no remedy here.
    Direct and batch runs alike: refused before sending (`context.check_fits`), or by the provider."""
    from tierflow.lms.documents import extract

    total = len(submission.text)
    sizes = []
    for rel in submission.files:
        path = vault / rel
        if path.is_file() and path.resolve().is_relative_to(vault.resolve()):
            text = extract(path).text
            if text and text[:200] in submission.text:  # still in the note: the lecturer may have cut it already
                sizes.append((len(text), path.name))
    sizes.sort(reverse=True)
    # The largest file, and any other that gives a quarter of the note.
    largest = [(size, name) for n, (size, name) in enumerate(sizes) if not n or size * 4 >= total]
    if largest:
        listed = ", ".join(f"{name} ({size:,} of its {total:,} characters)" for size, name in largest)
        source = f"; the largest file in it is {listed}" if len(largest) == 1 else f"; its largest files are {listed}"
        cut = f"cut {' and '.join(name for _, name in largest)} from its text, or whatever else need not be marked"
    else:
        source = f" ({total:,} characters)"
        cut = "cut from its text what need not be marked (an appendix, data, a copy of a source)"
    phase = exc.phase or "the"
    window = f", or set [tiers.{exc.tier or 'TIER'}] context_window if this model's window is larger"
    if exc.by_provider:  # the provider said what the model's window is: no setting makes it larger
        window = ""
    hint = (
        f"{submission.path} is one student's submission, too long for one prompt{source}. Trim the note: {cut}; "
        "the next run reads the note as you left it, and importing again keeps a note you edited. Or route the "
        f"{phase} phase to a tier with a larger context window (--tier {exc.phase or 'PHASE'}=TIER){window}."
    )
    error = ContextWindowExceeded(exc.provider, exc.model, exc.cause, hint=hint)
    error.phase, error.tier, error.by_provider = exc.phase, exc.tier, exc.by_provider
    return error


NO_ASSIGNMENT = "give the assignment folder: --assignment FOLDER (or set [feedback] assignment_folder in the config)"


def inside_vault(vault: Path, folder: str | None) -> tuple[Path, str]:
    """The assignment folder's path and its vault-relative name; a VaultError if it is unset or leads outside."""
    if not folder or not folder.strip():
        raise VaultError(NO_ASSIGNMENT)
    vault = vault.resolve()
    root = (vault / folder).resolve()
    if not root.is_relative_to(vault):
        raise VaultError(
            f"assignment folder {folder!r} resolves to {root}, outside the vault {vault}. Give it relative to "
            "the vault, as --assignment Teaching/EDU7001/essay-1 (or [feedback] assignment_folder): tierflow "
            "reads and writes nothing outside the vault, whether by `..`, an absolute path or a link."
        )
    return root, root.relative_to(vault).as_posix()


def existing_assignment(vault: Path, folder: str | None) -> tuple[Path, str]:
    """`inside_vault`, and a VaultError when the folder is not there: it names the path looked for, the folders
    beside it, and the import that fills it."""
    root, folder = inside_vault(vault, folder)
    if not root.is_dir():
        vault = vault.resolve()
        command = tierflow_command("import", "submissions", "EXPORT", "--assignment", folder, vault=vault)
        raise VaultError(
            f"assignment folder {folder} does not exist in {vault} (looked for {root}). {folders_beside(vault, root)}"
            f" Give an assignment folder that is there with --assignment, or import this one's submissions from a"
            f" Moodle or Canvas export: `{command}`."
        )
    return root, folder


@task(name="load assignment", task_run_name="load · {folder}")
def load_assignment(settings: RunSettings, folder: str | None, keep: bool = True) -> Assignment:
    """Read the assignment folder; a missing or unparsable rubric stops the run before any model call. The
    students' labels are kept in the folder (`keep_labels`) unless `keep` is false (a plan writes nothing)."""
    vault = check_vault(Path(settings.vault or "."))
    config = caller_for(settings).config
    root, folder = existing_assignment(vault, folder)
    rubric = load_rubric(vault, f"{folder}/rubric.md")
    brief = _body(root / "brief.md")
    exemplars = [_body(p) for p in sorted((root / "exemplars").glob("*.md"))] if (root / "exemplars").is_dir() else []
    submissions, skipped = _submissions(vault, f"{folder}/submissions")
    skipped += [(rubric.path, f"used, with a warning: {warning}") for warning in rubric.warnings]
    # One that cannot be read stops the run: the names in it would go unhidden.
    kept = read_kept(root, {s.student_id: (s.name, *s.aliases) for s in submissions})
    roster_path = f"{folder}/{ROSTER_FILE}"
    if kept is not None:
        skipped += [(roster_path, f"used, with a warning: {problem}") for problem in kept.problems]
        for problem in kept.problems:  # names it holds may go unhidden: said in the run's log too
            log.warning("%s: %s", roster_path, problem)
    elif any(s.also for s in submissions):
        # Emails and institution ids come into a note from a roster only: this folder was imported with one
        # before imports kept it, so classmates on it who handed nothing in are unknown here.
        skipped.append((roster_path, NOT_KEPT))
        log.warning("%s: %s", folder, NOT_KEPT)
    choice = config.settings.feedback.pseudonymise
    if choice is False and config.may_reach_cloud:
        log.warning(
            "%s: students' names, emails and ids are NOT hidden from the models: they go as written to %s, "
            "because `[feedback] pseudonymise = false` in the vault config. Remove that line to hide them.",
            folder, ", ".join(config.cloud_providers),
        )  # fmt: skip
    roster = kept.students if kept is not None else []
    hidden = pseudonymise(config)
    return Assignment(
        folder=folder,
        rubric=rubric,
        brief=brief,
        exemplars=exemplars,
        submissions=submissions,
        skipped=skipped,
        pseudonymise=hidden,
        roster=roster,
        # Names sent as written need no labels: none are given, and none kept until names are hidden.
        labels=cohort_labels(root, submissions, roster, write=keep) if hidden else {},
    )


def unhidden_note(settings: RunSettings, assignment: Assignment) -> str:
    """The run report's line when `[feedback] pseudonymise = false` let names reach a provider off this machine:
    which providers this run's calls went to (from its ledger rows), or could go to when none is recorded yet (a
    batch still running). Empty when names were hidden or every tier is local."""
    caller = caller_for(settings)
    config = caller.config
    if assignment.pseudonymise or not config.may_reach_cloud:
        return ""
    why = "because `[feedback] pseudonymise = false` in the vault config (remove it to hide them)"
    providers = config.settings.providers
    called = dict.fromkeys(r["provider"] for r in caller.ledger.rows(run_id=settings.run_id))
    sent = [p for p in called if p in providers and providers[p].leaves_machine]
    if sent:
        return f"**Student data**: names, emails and ids were sent unhidden to {', '.join(sent)}, {why}."
    return (
        f"**Student data**: names, emails and ids are not hidden, {why}; no call off this machine is recorded for "
        f"this run yet, and its tiers on {', '.join(config.cloud_providers)} would receive them."
    )


NOT_KEPT = (
    "not found, although the submissions were imported with a --roster (their notes hold emails or ids): "
    "classmates on that roster who submitted nothing are not hidden where an essay names them. Import the "
    "submissions again with --roster (tierflow import submissions EXPORT --roster FILE) to keep it here."
)


def _body(path: Path) -> str:
    if not path.is_file():
        return ""
    try:
        return hide_comments(load_note(path).content).strip()
    except (UnicodeDecodeError, yaml.YAMLError):
        return ""


def _cut_short(rel: str, body: str) -> list[tuple[str, str]]:
    """A warning when a comment never closed hides more than half of a submission: a `%%` or `<!--` the student
    typed, in a note an import wrote before it escaped them, takes the rest of the essay from every prompt."""
    start = unclosed_comment(body)
    if start is None or (len(body) - start) * 2 <= len(body.strip()):
        return []
    line = body.count("\n", 0, start) + 1
    opener = body[start : start + 2] if body.startswith("%%", start) else "<!--"
    why = (
        f"used, with a warning: `{opener}` on line {line} of its text is never closed, so Obsidian and tierflow "
        f"take the rest as a comment: {len(body) - start:,} of its {len(body):,} characters are not sent to the "
        f"model. If the student typed it, write it as `{escape_comments(opener)}` (Obsidian shows it as "
        f"`{opener}`), or import the submissions again"
    )
    log.warning("%s: %s", rel, why)
    return [(rel, why)]


def _submissions(vault: Path, folder: str) -> tuple[list[Submission], list[tuple[str, str]]]:
    root, folder = inside_vault(vault, folder)
    if not root.is_dir():
        raise VaultError(f"{folder}: no submissions folder; put one Markdown note per student there")
    found: dict[str, list[Submission]] = {}
    skipped: list[tuple[str, str]] = []
    for path in sorted(root.iterdir()):
        rel = path.relative_to(vault).as_posix()
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() != ".md":
            skipped.append((rel, "attachment ignored: only Markdown submissions are read"))
            continue
        try:
            post = load_note(path)
        except UnicodeDecodeError:
            skipped.append((rel, "not UTF-8 text; skipped"))
            continue
        except yaml.YAMLError as exc:
            skipped.append((rel, f"malformed YAML front-matter ({' '.join(str(exc).split())[:100]}); skipped"))
            continue
        meta = dict(post.metadata)
        try:
            sid = property_text(meta, "student_id")
            # The student's name, a file's name and a document's author as the import wrote them: link marks as
            # shown text (`Jane [&#91;X]]`), read back as written, so the name is hidden wherever it stands.
            name = unescape_links(property_text(meta, "name"))
            unreadable = [unescape_links(u) for u in property_list(meta, "tierflow_unreadable")]
            authors = [unescape_links(a) for a in property_list(meta, "document_authors")]
            also = [property_text(meta, "email"), *property_list(meta, "sis_ids")]
            files = property_list(meta, "files")
        except PropertyError as exc:
            skipped.append((rel, f"{exc}; skipped"))
            continue
        if not STUDENT_ID.match(sid):
            why = "no usable `student_id` in the front-matter (letters, digits, - and _ only)"
            if not sid and (misplaced := misplaced_front_matter(read_note_text(path))):
                why = f"no front-matter: {misplaced[0]}"
            skipped.append((rel, why))
            continue
        # Files an LMS import could not read (tierflow.lms): listed in the run report, never sent to a model.
        skipped += [(rel, f"not read: {why}") for why in unreadable]
        # Obsidian hides comments: never sent to a model. Then the `%%`, `<!--`, `[[` and `](` an import wrote as
        # entities (the student's own) are the characters again.
        # The import's notice of text hidden in a file is the lecturer's, and so is that text, which no reader of
        # the file sees: neither is sent, so a quotation is checked against what the model was sent. The injection
        # check reads the hidden text too, so the draft flags it.
        own, unseen = split_notices(post.content)
        shown = hide_comments(own)
        text = note_text(own)
        skipped += _cut_short(rel, post.content)
        # Drafted from its text: what was not read is told with the draft, not listed as skipped. An embed is one
        # Obsidian shows: not a `![[img.png]]` the student typed, which the import wrote as text.
        embeds = tuple(dict.fromkeys(re.findall(r"!\[\[([^\]]+)\]\]", shown)))
        flags = tuple(f"possible prompt injection: {m.group(0)!r}" for m in INJECTION.finditer(text)) + tuple(
            f"possible prompt injection in text hidden in the original (not sent to the model): {m.group(0)!r}"
            for m in INJECTION.finditer(note_text("\n".join(unseen)))
        )
        found.setdefault(sid, []).append(
            Submission(
                student_id=sid,
                name=name,
                path=rel,
                text=text,
                flags=flags,
                aliases=tuple(authors),
                not_read=embeds,
                also=tuple(v for v in also if v),
                files=tuple(files),
                note_version=text_version(note_text(post.content)),
            )
        )
    submissions = []
    for sid, subs in found.items():
        if len(subs) > 1:
            paths = ", ".join(s.path for s in subs)
            skipped += [(s.path, f"duplicate student id {sid} (in {paths}); neither was drafted") for s in subs]
            continue
        submissions.append(subs[0])
    return submissions, skipped
