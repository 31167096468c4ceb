"""Which request a person means, from what they have at hand (`tierflow routing explain`): a request id or a prefix
of it, the draft note written from its answer, or a run whose requests they pick from.

The ledger keeps each request under an id (`calls.request_id`, `request_texts`) that no listing of calls shows. A
concept draft is remembered with the request its answer was to (`drafts`). A feedback draft is not, but its
front-matter names the run that wrote it (`tierflow_run`) and its student, whose label (or id, when names are not
hidden) is the subject of that run's `draft` calls: the cohort summary's tier table finds a draft's calls the same
way (`tasks.feedback.draft_tiers`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tierflow.core.ledger import Ledger, calls, drafts, request_texts
from tierflow.vault.labels import LabelsFileError, read_labels
from tierflow.vault.links import WIKILINK, VaultNames
from tierflow.vault.text import load_note

SHORT = 12
"""How many characters of a request id a listing shows: unique in any ledger one person or team keeps (48 bits);
where two ids do share them, `explain` lists both by longer ones."""

LISTED = 20
"""At most this many candidates are listed when a prefix or a name means several requests."""

DRAFT_PHASE = "draft"
"""The phase that writes a draft note in every built-in flow: of a note's run's requests under its subject (a
feedback draft's student has a `collate` request too), the note was written from this one's answer."""

_HEX = re.compile(r"[0-9a-fA-F]+")


@dataclass(frozen=True)
class Request:
    """One request as a listing shows it: its calls' flow, phase and subject, every tier that answered it in
    order (a retry on the same tier counted once), the last answer's outcome, and the draft note written from it."""

    request_id: str
    flow: str
    phase: str
    subject: str
    tiers: tuple[str, ...]
    outcome: str
    calls: int
    note: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id, "flow": self.flow, "phase": self.phase, "subject": self.subject,
            "tiers": list(self.tiers), "outcome": self.outcome, "calls": self.calls, "note": self.note,
        }  # fmt: skip

    def line(self, width: int = SHORT) -> str:
        """The request as one tab-separated line: id (its first `width` characters), flow, phase, subject, tiers,
        outcome, note."""
        fields = (self.request_id[:width], self.flow, self.phase, self.subject, " → ".join(self.tiers),
                  self.outcome, self.note or "")  # fmt: skip
        return "\t".join(" ".join(f.split()) for f in fields)  # a subject's tab or newline would break the columns


@dataclass(frozen=True)
class Found:
    """What some words name: the requests they may mean (one: that one), and where they came from."""

    request_ids: tuple[str, ...] = ()
    matching: int = 0
    """How many request ids start with the words (more than `request_ids` holds when over `LISTED`)."""
    note: str | None = None
    """The vault note the words name (vault-relative), if they name one."""
    notes: tuple[str, ...] = ()
    """Every note the words name, when they name several (a name in two folders)."""
    run_id: str | None = None
    """The run that wrote `note`: its requests are the candidates."""
    unlinked: bool = False
    """`note` is a draft the ledger remembers without its request (an answer recorded before requests were kept)."""
    outside: bool = False
    """The words are the path of a file outside the vault."""
    written_by_tierflow: bool = True
    """False when `note` has no `tierflow_run`: no run wrote it."""


@dataclass
class _Summary:
    flow: str = ""
    phase: str = ""
    subject: str = ""
    tiers: list[str] = field(default_factory=list)
    outcome: str = ""
    calls: int = 0


def requests_of_run(ledger: Ledger, run_id: str) -> tuple[list[Request], int]:
    """The requests a run sent, in the order it first sent them, with the draft note written from each; and how
    many of its calls name no request (answers replayed from the answer cache or collected from a provider batch,
    attempts whose answer was lost, calls recorded before requests were kept)."""

    def read(conn: sa.Connection) -> tuple[dict[str, _Summary], int | None, dict[str, str]]:
        found = _summaries(conn, calls.c.run_id == run_id)
        unnamed = conn.execute(
            sa.select(sa.func.count()).select_from(calls).where(calls.c.run_id == run_id, calls.c.request_id.is_(None))
        ).scalar()
        return found, unnamed, _notes(conn, found, run_id)

    # `read`, not `reading`: on a ledger its user may only read, read again should a writer write under it.
    found, unnamed, notes = ledger.read(read)
    return [_request(r, s, notes.get(r)) for r, s in found.items()], int(unnamed or 0)


def describe(ledger: Ledger, request_ids: Iterable[str]) -> list[Request]:
    """These requests as a listing shows them (over all their calls, in every run), in the order first sent."""
    wanted = list(dict.fromkeys(request_ids))

    def read(conn: sa.Connection) -> tuple[dict[str, _Summary], dict[str, str]]:
        found = _summaries(conn, calls.c.request_id.in_(wanted))
        for row in conn.execute(sa.select(request_texts).where(request_texts.c.request_id.in_(wanted))):
            found.setdefault(row.request_id, _Summary(flow=row.flow or "", phase=row.phase or ""))  # no call left
        return found, _notes(conn, found, None)

    found, notes = ledger.read(read)
    return [_request(r, s, notes.get(r)) for r, s in found.items()]


def newest_run(ledger: Ledger) -> str | None:
    """The run that sent the request recorded last, if any request is recorded."""
    query = (
        sa.select(calls.c.run_id)
        .where(calls.c.request_id.is_not(None), calls.c.run_id.is_not(None))
        .order_by(calls.c.id.desc())
        .limit(1)
    )
    return ledger.read(lambda conn: conn.execute(query).scalar())


def has_run(ledger: Ledger, run_id: str) -> bool:
    """Whether the ledger holds a call of this run."""
    query = sa.select(calls.c.id).where(calls.c.run_id == run_id).limit(1)
    return ledger.read(lambda conn: conn.execute(query).first()) is not None


def find(ledger: Ledger, vault: Path, words: str, *, cwd: Path | None = None) -> Found:
    """The requests `words` may mean: those whose id starts with them, and the one the draft note they name (by
    path, relative to the vault or to `cwd`, or by name as a link names it: `Note`, `[[Note]]`) was written from.

    The vault is searched for the note only when the words are no remembered draft's and no request id's start."""
    words = words.strip()
    ids: list[str] = []
    matching = 0
    if _HEX.fullmatch(words):
        starts = request_texts.c.request_id.startswith(words.lower(), autoescape=True)

        def read(conn: sa.Connection) -> tuple[int, list[str]]:
            matching = int(conn.execute(sa.select(sa.func.count()).select_from(request_texts).where(starts)).scalar())
            query = sa.select(request_texts.c.request_id).where(starts).order_by(request_texts.c.request_id)
            return matching, list(conn.execute(query.limit(LISTED)).scalars())

        matching, ids = ledger.read(read)
    target, outside = _target(vault, words, cwd or Path.cwd())
    if outside:
        return Found(tuple(ids), matching, outside=True)
    named = _drafted(ledger, target)
    if named is None:
        named = Found() if ids else _from_vault(ledger, vault, target)
    return Found(
        tuple(dict.fromkeys([*ids, *named.request_ids])), matching, note=named.note, notes=named.notes,
        run_id=named.run_id, unlinked=named.unlinked, written_by_tierflow=named.written_by_tierflow,
    )  # fmt: skip


def _target(vault: Path, words: str, cwd: Path) -> tuple[str, bool]:
    """What the words name as a vault link target: a file's vault-relative path when they are the path of a file
    (absolute, or relative to `cwd`), a wikilink's target, else the words; and whether that file is outside."""
    link = WIKILINK.fullmatch(words)
    if link:
        return link.group(1).strip(), False
    path = Path(words).expanduser()
    path = path if path.is_absolute() else cwd / path
    if not path.is_file():
        return words, False
    path, root = path.resolve(), vault.resolve()
    if not path.is_relative_to(root):
        return words, True
    return path.relative_to(root).as_posix(), False


def _drafted(ledger: Ledger, target: str) -> Found | None:
    """The remembered drafts the target names (by path or name, as a link resolves): None when it names none."""
    query = sa.select(drafts.c.note, drafts.c.request_id, drafts.c.run_id)
    rows = {row.note: row for row in ledger.read(lambda conn: conn.execute(query).all())}
    names = VaultNames()
    for note in rows:
        names.add(note)
    named = names.resolve(target)
    if not named:
        return None
    if len(named) > 1:
        return Found(notes=tuple(named))
    row = rows[named[0]]
    return Found((row.request_id,) if row.request_id else (), note=row.note, run_id=row.run_id,
                 unlinked=not row.request_id)  # fmt: skip


def _from_vault(ledger: Ledger, vault: Path, target: str) -> Found:
    """A note in the vault that no draft remembers (a feedback draft): the `draft` request of its run
    (`tierflow_run`) whose subject is the note's title, or its student's label or id."""
    named = [n for n in VaultNames.scan(vault).resolve(target) if n.lower().endswith(".md")]
    if len(named) != 1:
        return Found(notes=tuple(named) if len(named) > 1 else ())
    note = named[0]
    try:
        meta = load_note(vault / note).metadata
    except (OSError, UnicodeDecodeError, ValueError):
        return Found(note=note, written_by_tierflow=False)
    run_id = str(meta.get("tierflow_run") or "")
    if not run_id:
        return Found(note=note, written_by_tierflow=False)
    subjects = {str(meta[k])[:256] for k in ("title", "student_id") if meta.get(k)}
    if meta.get("student_id") and meta.get("assignment"):
        subjects |= _label(vault, str(meta["assignment"]), str(meta["student_id"]))
    where = (calls.c.run_id == run_id, calls.c.phase == DRAFT_PHASE, calls.c.subject.in_(sorted(subjects)))
    found = ledger.read(lambda conn: _summaries(conn, *where))
    return Found(tuple(found), note=note, run_id=run_id)


def _label(vault: Path, folder: str, student_id: str) -> set[str]:
    """The label the assignment folder keeps for the student (`pseudonyms.csv`), if it keeps one."""
    root = (vault / folder).resolve()
    if not root.is_relative_to(vault.resolve()):
        return set()
    try:
        label = read_labels(root).get(student_id)
    except LabelsFileError:
        return set()
    return {label} if label else set()


def _summaries(conn: sa.Connection, *where: sa.ColumnElement[bool]) -> dict[str, _Summary]:
    """The calls that name a request, among those `where` selects, summed up per request, in the order sent."""
    query = (
        sa.select(calls.c.request_id, calls.c.flow, calls.c.phase, calls.c.subject, calls.c.tier, calls.c.outcome)
        .where(calls.c.request_id.is_not(None), *where)
        .order_by(calls.c.id)
    )
    found: dict[str, _Summary] = {}
    for row in conn.execute(query):
        s = found.setdefault(row.request_id, _Summary(row.flow or "", row.phase or "", row.subject or ""))
        if row.tier and (not s.tiers or s.tiers[-1] != row.tier):
            s.tiers.append(row.tier)
        s.outcome = row.outcome or ""
        s.calls += 1
    return found


def _notes(conn: sa.Connection, found: dict[str, _Summary], run_id: str | None) -> dict[str, str]:
    """The draft note written from each of these requests: by this run, when one is given."""
    if not found:
        return {}
    query = sa.select(drafts.c.request_id, drafts.c.note).order_by(drafts.c.note)
    # A run's drafts by its id: a run may have sent more requests than a query may name.
    query = (
        query.where(drafts.c.run_id == run_id)
        if run_id is not None
        else query.where(drafts.c.request_id.in_(list(found)))
    )
    return {row.request_id: row.note for row in conn.execute(query) if row.request_id in found}


def _request(request_id: str, s: _Summary, note: str | None) -> Request:
    return Request(request_id, s.flow, s.phase, s.subject, tuple(s.tiers), s.outcome, s.calls, note)
