"""The lecturer's reviewed drafts: found by their front-matter, never by file name; turned into what a student reads.

A draft is exported only when its front-matter says `status: reviewed` (the lecturer sets it). Drafts are the
notes under `<assignment>/feedback/` with a `student_id` in their front-matter, whatever they are called.

A draft records which version of the submission it was written for (`tierflow_submission_hash`, the
`text_version` of the submission note's text): one written for an earlier version (the student resubmitted, and a
later import replaced the note) is never sent. A draft written before tierflow recorded versions is taken as
written for the current one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from markdown_it import MarkdownIt

from tierflow.core.commands import tierflow_command
from tierflow.vault.annotations import CALLOUT_HEAD, without_code
from tierflow.vault.notes import as_written
from tierflow.vault.text import (
    COMMENT,
    misplaced_front_matter,
    parse_note,
    read_note_text,
    unescape_comments,
    unescape_links,
    yaml_problem,
)

REVIEWED = "reviewed"
VERSION_KEY = "tierflow_submission_hash"
"""The draft's front-matter key for the version of the submission it was written for."""
CHECKS_KEY = "tierflow_checks_failed"
"""The draft's front-matter key for the checks its answer failed on every tier (kept with a warning)."""
RUBRIC_NOTICE = "Check this draft against the rubric"
NO_CONTENT = "No content submitted"
TIERFLOW_NOTICES: tuple[tuple[str, str], ...] = (
    ("info", "Draft feedback by tierflow"),
    ("warning", NO_CONTENT),
    ("warning", "This submission contains text addressed to an AI model"),
    ("warning", RUBRIC_NOTICE),
    ("warning", "No feedback was drafted for this criterion"),
    ("warning", "Not found verbatim in the submission"),
)
"""The callouts `templates/notes/feedback.md.j2` writes for the lecturer: (type, how the title starts)."""
_GONE = "\0"
_OLD_NO_CONTENT = re.compile(
    r"^## No content submitted[ \t]*\n\s*The submission for [^\n]*? has no text, so no feedback was drafted and no "
    r"model was called\. Check whether the work was submitted elsewhere\.[ \t]*$",
    re.M,
)
"""What drafts of an empty submission said before it was a notice (a heading and a paragraph): the lecturer's."""


def is_notice(kind: str, title: str) -> bool:
    """Whether a callout is one of tierflow's notices to the lecturer (never the lecturer's own)."""
    return any(kind.casefold() == k and title.strip().startswith(t) for k, t in TIERFLOW_NOTICES)


def without_comments(text: str) -> str:
    """`text` without Obsidian comments (`%% ... %%`) and HTML comments (`<!-- ... -->`), inline or over several
    lines; `%%` and `<!--` inside code spans and code blocks are kept. A comment never closed hides the rest of
    the note, as in Obsidian's reading view. Unlike `hide_comments` (for prompts, which keeps the note's line
    numbers), a line that held only a comment goes whole, so that it splits no paragraph sent to a student."""
    if "%%" not in text and "<!--" not in text:
        return text
    chars = list(text)
    for m in COMMENT.finditer(without_code(text)):  # same length and lines as `text`, code blanked
        for i in range(*m.span()):
            if chars[i] != "\n":
                chars[i] = _GONE
    out = []
    for line in "".join(chars).split("\n"):
        if _GONE not in line:
            out.append(line)
            continue
        kept = line.replace(_GONE, "")
        if kept.strip():  # a line that held only a comment goes whole, so it splits no paragraph
            out.append(kept.rstrip() if line.rstrip().endswith(_GONE) else kept)
    return "\n".join(out)


def _readable_callouts(text: str) -> str:
    """tierflow's notices left out; every other callout as a quote under its title in bold, since no export target
    shows Obsidian's `[!type]` (a callout with no title is titled by its type, as Obsidian shows it)."""
    out: list[str] = []
    keep: bool | None = None  # inside a callout: keep its lines, or not; None outside one
    for line, masked in zip(text.split("\n"), without_code(text).split("\n"), strict=True):
        quoted = masked.lstrip().startswith(">")
        head = CALLOUT_HEAD.match(masked.lstrip()[1:].strip()) if quoted else None
        if head:
            kind, _, title = head.groups()
            keep = not is_notice(kind, title)
            if keep:
                out.append(f"> **{title.strip() or kind.capitalize()}**")
            continue
        if keep is not None and quoted:
            if keep:
                out.append(line)
            continue
        keep = None
        out.append(line)
    return "\n".join(out)


@dataclass(frozen=True)
class Draft:
    student_id: str
    path: str
    """Vault-relative."""
    metadata: dict[str, Any]
    body: str
    text: str | None = None
    """The note's whole text as read, which `as_written` checks (`None`: only a hash an earlier version wrote can
    say it is as written)."""

    @property
    def version(self) -> str:
        """The version of the submission it was written for; empty when it records none."""
        return str(self.metadata.get(VERSION_KEY) or "").strip()

    @property
    def reviewed(self) -> bool:
        return str(self.metadata.get("status") or "").strip().lower() == REVIEWED

    @property
    def as_written(self) -> bool:
        """Whether it is as tierflow wrote it: nobody has edited it since (setting `status: reviewed` is an edit)."""
        return as_written(self.metadata, self.body, self.text)

    @property
    def checks_failed(self) -> list[str]:
        """The checks the answer it was written from failed on every tier (it was kept with a warning); [] when the
        answer passed. A draft written before drafts recorded them (`CHECKS_KEY`) tells them by what it shows the
        lecturer: a quotation not found verbatim (`tierflow_unverified_quotes`), the rubric warning."""
        recorded = self.metadata.get(CHECKS_KEY)
        if recorded:
            return [str(c) for c in recorded] if isinstance(recorded, list) else [str(recorded)]
        shown = []
        try:
            if int(self.metadata.get("tierflow_unverified_quotes") or 0) > 0:
                shown.append("quotes_verbatim")
        except (TypeError, ValueError):
            pass
        for line in without_code(self.body).split("\n"):
            head = CALLOUT_HEAD.match(line.lstrip()[1:].strip()) if line.lstrip().startswith(">") else None
            if head and head.group(1).casefold() == "warning" and head.group(3).strip().startswith(RUBRIC_NOTICE):
                shown.append("rubric_coverage")
                break
        return shown

    def written_for(self, version: str | None) -> bool:
        """Whether it was written for this version of the submission; True when either is not known (a draft
        written before tierflow recorded versions, a submission note that cannot be read)."""
        return not version or not self.version or self.version == version

    @property
    def own_mark(self) -> bool:
        """Whether the front-matter holds a `mark:`, 0 included: a person's, since tierflow never writes one."""
        return self.metadata.get("mark") not in (None, "")

    @property
    def name(self) -> str:
        # Written as shown text where it holds a link mark (`Jane [&#91;X]]`): the name as written.
        title = unescape_links(str(self.metadata.get("title") or ""))
        return title.removeprefix("Feedback: ").strip() if title.startswith("Feedback: ") else ""

    @property
    def of_no_text(self) -> bool:
        """Whether it holds tierflow's "No content submitted" notice (or the heading it wrote before): drafted for a
        submission that gave no text, so it has no criteria to score."""
        if _OLD_NO_CONTENT.search(self.body):
            return True
        for line in without_code(self.body).split("\n"):
            head = CALLOUT_HEAD.match(line.lstrip()[1:].strip()) if line.lstrip().startswith(">") else None
            if head and is_notice(head.group(1), head.group(3)) and head.group(3).strip().startswith(NO_CONTENT):
                return True
        return False

    def student_markdown(self) -> str:
        """The body as the student should read it, as Markdown: as Obsidian shows it (comments hidden), without
        tierflow's notices to the lecturer, the lecturer's own callouts kept. The `[[` and `](` someone else typed
        (the student's, quoted back) stay escaped (`[&#91;`, `]&#40;`), which Markdown shows as typed and never
        makes a link of; `student_text` has them as the characters."""
        # The student's own `%%` and `<!--`, escaped in the note so that no comment starts, as they wrote them.
        body = _OLD_NO_CONTENT.sub("", self.body)
        text = unescape_comments(_readable_callouts(without_comments(body)))
        return re.sub(r"\n{3,}", "\n\n", text).strip()

    def student_text(self) -> str:
        """`student_markdown` as plain text: the student's own `[[` and `](` as they wrote them."""
        return unescape_links(self.student_markdown())

    def html(self) -> str:
        """The student text as HTML on one line (Moodle stores feedback comments as HTML). A link the student
        typed, quoted back, is their text as typed: not a link (`[method](method.md)` would be one Moodle resolves
        against its own page)."""
        rendered = MarkdownIt("commonmark", {"html": False}).render(self.student_markdown())
        return re.sub(r">\s*\n\s*<", "><", rendered.strip()).replace("\n", "<br>")


@dataclass
class Drafts:
    reviewed: dict[str, Draft] = field(default_factory=dict)
    left_out: list[tuple[str, str]] = field(default_factory=list)
    """(draft path, why) for every draft not exported."""
    students: set[str] = field(default_factory=set)
    """Every student with a draft, reviewed or not."""
    outdated: list[Draft] = field(default_factory=list)
    """Reviewed drafts written for an earlier version of the submission (also in `left_out`)."""
    unversioned: list[Draft] = field(default_factory=list)
    """Reviewed drafts in `reviewed` that record no version although the submission's is known."""

    def why_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, why in self.left_out:
            key = why.split(";")[0]
            counts[key] = counts.get(key, 0) + 1
        return counts


def scan(vault: Path, folder: str) -> tuple[list[Draft], list[tuple[str, str]]]:
    """Every draft under `folder/feedback/`, reviewed or not, by path; and (path, why) for the notes that cannot
    be read."""
    drafts: list[Draft] = []
    unreadable: list[tuple[str, str]] = []
    root = vault / folder / "feedback"
    for path in sorted(root.rglob("*.md")) if root.is_dir() else []:
        if not path.is_file():  # a folder named like a note (`s2026001 feedback.md/`) is no draft
            continue
        rel = path.relative_to(vault).as_posix()
        try:
            text = read_note_text(path)  # with or without a BOM, as Obsidian reads it
            post = parse_note(text)
        except UnicodeDecodeError:
            unreadable.append((rel, "not UTF-8 text; save it as UTF-8"))
            continue
        except yaml.YAMLError as exc:
            problem = yaml_problem(exc)
            unreadable.append((rel, f"unreadable front-matter ({problem}); fix the YAML between the --- lines"))
            continue
        sid = str(post.metadata.get("student_id") or "").strip()
        if not sid and (misplaced := misplaced_front_matter(text)) and misplaced[1].get("student_id"):
            # Not passed over in silence: the student's feedback would be missing from the export, unnamed.
            unreadable.append((rel, f"no properties, so no student: {misplaced[0]}"))
            continue
        if sid:  # else the cohort summary or another note: not a student's draft
            drafts.append(Draft(sid, rel, dict(post.metadata), post.content, text))
    return drafts, unreadable


def collect(vault: Path, folder: str, version_of: Callable[[str], str | None] | None = None) -> Drafts:
    """Every draft under `folder/feedback/`: the reviewed ones by student id, the others with the reason.

    `version_of(student id)` is the version of the student's submission now (None when not known): a reviewed
    draft written for another one is left out, so that the draft for the current one, once reviewed, is the one.
    """
    found, unreadable = scan(vault, folder)
    out = Drafts(left_out=unreadable)
    candidates: dict[str, list[Draft]] = {}
    for draft in found:
        out.students.add(draft.student_id)
        if not draft.reviewed:
            status = str(draft.metadata.get("status") or "").strip().lower()
            why = f"not reviewed (status: {status or 'none'}); set `status: reviewed` to send it"
            out.left_out.append((draft.path, why))
            continue
        current = version_of(draft.student_id) if version_of else None
        if not draft.written_for(current):
            out.outdated.append(draft)
            newer = [d.path for d in found if d.student_id == draft.student_id and d.version == current]
            out.left_out.append((draft.path, _outdated(vault, draft, folder, newer)))
            continue
        candidates.setdefault(draft.student_id, []).append(draft)
    for sid, drafts in candidates.items():
        if len(drafts) > 1:
            paths = ", ".join(d.path for d in drafts)
            out.left_out += [(d.path, f"two reviewed drafts for student {sid} ({paths}); keep one") for d in drafts]
            continue
        out.reviewed[sid] = drafts[0]
        if not drafts[0].version and version_of and version_of(sid):
            out.unversioned.append(drafts[0])
    return out


def who(draft: Draft) -> str:
    """`1002 (Chloé Dubois-Martin)`: the student id, and the name the draft's title gives."""
    return f"{draft.student_id} ({draft.name})" if draft.name else draft.student_id


def _outdated(vault: Path, draft: Draft, folder: str, newer: list[str]) -> str:
    """Why a reviewed draft written for an earlier version of the submission is not sent, and what to do."""
    note = f"{folder}/submissions/{draft.student_id}.md"
    if newer:
        todo = f"review the draft for the current one ({', '.join(newer)}) and set `status: reviewed` in it"
    else:
        run = tierflow_command("run", "student-feedback", "--assignment", folder, vault=vault)
        todo = (
            f"draft the current one (`{run}` drafts only new and changed submissions), review that draft and set "
            "`status: reviewed` in it"
        )
    return (
        f"written for an earlier version of the submission; {who(draft)}: {note} has changed since this draft was "
        f"written (a new submission was imported, or the note was edited), so neither its mark nor its feedback is "
        f"sent. {todo[0].upper()}{todo[1:]}; this draft is kept as it is (delete it once you no longer need it)."
    )
