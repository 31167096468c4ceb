"""Vault I/O: read source notes, render templates, and write notes safely.

Safe means: every write is atomic (temp file + rename), confined to its output folder, never touches a
note tierflow did not write, and never overwrites a note a user has edited since tierflow wrote it.
tierflow marks what it owns with a hash of the note's text in the front-matter (`tierflow_hash`), which also records
a digest of the name the note was written for: two names that make one file name get a note each.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import (
    ChoiceLoader,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    Undefined,
)
from jinja2.sandbox import SandboxedEnvironment
from pathvalidate import sanitize_filename

from tierflow.core.clock import now
from tierflow.core.errors import VaultError
from tierflow.core.folders import check_vault as check_vault  # the one check, re-exported for tasks
from tierflow.vault.annotations import Annotation, parse_annotations
from tierflow.vault.links import NO_NOTE, VaultNames, note_links
from tierflow.vault.text import (
    YAML_DUMPER,
    PropertyError,
    escape_comments,
    escape_links,
    hide_comments,
    load_note,
    parse_note,
    property_list,
    property_text,
    read_note_text,
    yaml_problem,
)

HASH_KEY = "tierflow_hash"
_OBSIDIAN_FORBIDDEN = re.compile(r"[#|^:\[\]\\/<>\"*?%]+")
_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}


# --- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceNote:
    """A literature note, parsed: its metadata, its annotations with locators, and its links."""

    path: str
    title: str
    citekey: str
    link: str
    """The link target Obsidian resolves to this note alone (`VaultNames.link_for`), written by
    `VaultNames.link`: its file name without `.md`, its path when another file shares the name, or its path
    with `.md` (a Markdown link) when no wikilink can hold the name."""
    front_matter: dict[str, Any]
    body: str
    annotations: tuple[Annotation, ...]
    wikilinks: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    year: str = ""


def read_source(vault: Path, relpath: str) -> SourceNote:
    """Parse one literature note. Raises VaultError naming the file on anything unusable."""
    path = vault / relpath
    try:
        post = load_note(path)
    except UnicodeDecodeError:
        raise VaultError(f"{relpath}: not UTF-8 text; skipped") from None
    except yaml.YAMLError as exc:
        raise VaultError(f"{relpath}: malformed YAML front-matter ({_first_line(exc)}); skipped") from None
    meta = dict(post.metadata)
    body = hide_comments(post.content)  # Obsidian hides comments: private remarks never reach a prompt
    stem = Path(relpath).stem
    try:
        citekey = property_text(meta, "citekey") or _citekey_from(stem)
        authors = property_list(meta, "authors" if meta.get("authors") else "author")
        title = property_text(meta, "title") or stem
        year = property_text(meta, "year")
    except PropertyError as exc:
        raise VaultError(f"{relpath}: {exc}; skipped") from None
    return SourceNote(
        path=relpath,
        title=title,
        citekey=citekey,
        link=stem,
        front_matter=meta,
        body=body,
        annotations=tuple(parse_annotations(body)),
        wikilinks=tuple(note_links(_without_metadata(body))),
        authors=tuple(authors),
        year=year,
    )


_METADATA_SECTION = re.compile(r"^#{1,6}\s+Metadata\s*$.*?(?=^#{1,6}\s|\Z)", re.MULTILINE | re.DOTALL | re.IGNORECASE)


def _without_metadata(body: str) -> str:
    """The body without a Readwise-style `## Metadata` section, whose links are authors, not concepts."""
    return _METADATA_SECTION.sub("", body)


def _citekey_from(stem: str) -> str:
    """The stem's first part, letters and digits of any script kept (`@hattie2007`, `学习反馈 - 笔记`)."""
    head = unicodedata.normalize("NFC", stem.split(" - ")[0].lstrip("@"))
    return "".join(ch for ch in head if unicodedata.category(ch)[0] in "LMN") or "source"


def unique_citekeys(sources: list[SourceNote]) -> list[SourceNote]:
    """The sources, each with a citekey no other one shares (case-insensitively).

    Deterministic: in path order, the first note with a key keeps it, and later ones get the first free
    `-2`, `-3`, ... (never a key another note has of its own).
    """
    ordered = sorted(sources, key=lambda s: s.path)
    taken = {s.citekey.casefold() for s in ordered}
    owner: dict[str, str] = {}
    for s in ordered:
        owner.setdefault(s.citekey.casefold(), s.path)
    out: dict[str, SourceNote] = {}
    for source in ordered:
        if owner[source.citekey.casefold()] == source.path:
            out[source.path] = source
            continue
        n = 2
        while f"{source.citekey}-{n}".casefold() in taken:
            n += 1
        taken.add(f"{source.citekey}-{n}".casefold())
        out[source.path] = replace(source, citekey=f"{source.citekey}-{n}")
    return [out[s.path] for s in sources]


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:160]


# --- templates -----------------------------------------------------------------------------------


class LinkError(VaultError):
    """A note not written because a link in it does not resolve to exactly one file; `problems` says which."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


class TemplateMissing(VaultError, TemplateNotFound):
    """A template in neither the vault's override folder nor tierflow's bundled templates; still a TemplateNotFound,
    for code that catches Jinja2's own error."""

    def __init__(self, name: str, message: str) -> None:
        TemplateNotFound.__init__(self, name, message)


class TemplateFailed(VaultError, TemplateError):
    """A template that does not render (an undefined variable, a syntax error), naming its file and line; still a
    Jinja2 TemplateError, for code that catches Jinja2's own error."""

    def __init__(self, message: str) -> None:
        TemplateError.__init__(self, message)


_UNDEFINED = re.compile(r"^'([^']+)' is undefined$")


class _Template(Template):
    """A template whose failure to render is a `TemplateFailed` naming the template file, the line and the names
    it was given."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        try:
            return super().render(*args, **kwargs)
        except TemplateFailed:
            raise
        except TemplateError as exc:
            given = sorted(dict(*args, **kwargs))
            raise failed_template(exc, self.environment, self.filename or self.name, given) from exc


def failed_template(
    exc: TemplateError, env: Any, filename: str | None, given: list[str] | None = None
) -> TemplateFailed:
    """`exc` as a `TemplateFailed`: the template file and line where it happened (Jinja2 rewrites a render's
    traceback so that a template's frames carry its file name and line), why, and what to do."""
    where, line = filename or "<string>", getattr(exc, "lineno", None)
    if isinstance(exc, TemplateSyntaxError) and exc.filename:
        where = exc.filename
    tb = exc.__traceback__
    while tb is not None:  # the innermost template frame: an included template's, when the error is there
        if "__jinja_exception__" in tb.tb_frame.f_globals:
            where, line = tb.tb_frame.f_code.co_filename, tb.tb_lineno
        tb = tb.tb_next
    reason = exc.message or type(exc).__name__
    text = f"the template {where}" + (f", line {line}," if line else "") + f" does not render: {reason}."
    undefined = _UNDEFINED.match(reason)
    if undefined and given:
        close = difflib.get_close_matches(undefined.group(1), given, n=1)
        text += f" {'Did you mean ' + repr(close[0]) + '? ' if close else ''}It is given: {', '.join(given)}."
    override, bundled = getattr(env, "searched", (None, None))
    if override is not None and bundled is not None and Path(where).is_relative_to(override):
        name = Path(where).relative_to(override).as_posix()
        if (bundled / name).is_file():
            text += f" It overrides tierflow's own {name}: correct it, or delete it to use tierflow's."
        else:
            text += " It is in the vault's override folder: correct it there."
    return TemplateFailed(text)


def _json_default(value: Any) -> Any:
    """`tojson` of an undefined variable raises Jinja2's error naming it, not "StrictUndefined is not JSON
    serializable"; any other value JSON cannot hold is refused as `json.dumps` refuses it."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()  # documented Jinja2 API: raises the UndefinedError with its hint
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _tojson(value: Any) -> str:
    """Prompt data as compact JSON; only < and > are escaped, so no value can close its <data> fence."""
    text = json.dumps(value, ensure_ascii=False, default=_json_default)
    return text.replace("<", "\\u003c").replace(">", "\\u003e")


class _Templates(SandboxedEnvironment):
    """A template environment whose missing template is a `TemplateMissing` naming the folders searched, and whose
    template that does not compile or render is a `TemplateFailed` naming its file and line."""

    template_class = _Template
    searched: tuple[Path | None, Path]
    """The vault's override folder (whether or not it exists), and the bundled templates."""

    def get_template(self, name: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_template(name, *args, **kwargs)
        except TemplateNotFound as exc:
            if isinstance(exc, TemplateMissing) or not isinstance(name, str):
                raise
            raise self.missing(name) from None
        except TemplateSyntaxError as exc:
            raise failed_template(exc, self, exc.filename or str(name)) from exc

    def missing(self, name: str) -> TemplateMissing:
        override, bundled = self.searched
        known = self.list_templates()
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)  # a typo, not any template
        where = f"{override}/ (the vault's overrides, [vault] templates_folder) nor in " if override else ""
        return TemplateMissing(
            name,
            f"no template {name!r}: it is neither in {where}tierflow's bundled templates ({bundled}/). "
            + (f"Did you mean {close[0]!r}? " if close else "Check the name. ")
            + "To change a bundled template, copy it into the vault's override folder under the same name and edit "
            "the copy.",
        )


def template_env(vault: Path | None, override_folder: str) -> SandboxedEnvironment:
    """Jinja2 templates: the vault's override folder first, then tierflow's own `templates/`."""
    loaders = []
    if vault is not None and (vault / override_folder).is_dir():
        loaders.append(FileSystemLoader(str(vault / override_folder)))
    bundled = Path(str(files("tierflow._templates")))
    loaders.append(FileSystemLoader(str(bundled)))
    env = _Templates(
        loader=ChoiceLoader(loaders),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tojson"] = _tojson
    env.filters["yaml_str"] = lambda v: (
        yaml.dump(str(v), Dumper=YAML_DUMPER, allow_unicode=True).strip().removesuffix("...").strip()
    )
    # A note's title or name written as text stays text: `[[x]]` in it would link whatever note is called x.
    env.filters["text"] = lambda v: str(v).replace("[", "\\[").replace("]", "\\]")
    # A student's `%%` or `<!--`, quoted back by a model, shown as written: else it starts a comment that hides
    # the rest of the draft, in Obsidian and in what is exported to the student. Likewise `[[` and `](` (R's
    # `df[["age"]]`), else a link to no note, which the writer refuses; and a `](` before a web address, since a
    # student's `[site](https://...)` is their text, to reach them as typed, not a link in their feedback.
    env.filters["shown"] = lambda v: escape_links(escape_comments(str(v)), web=True)
    env.searched = (vault / override_folder if vault is not None else None, bundled)
    return env


def template_source(env: SandboxedEnvironment, name: str) -> str:
    """A template's text, for cache keys: an edited template must not reuse old results."""
    try:
        source, _, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
    except TemplateNotFound:
        if isinstance(env, _Templates):
            raise env.missing(name) from None
        raise
    return source


# --- writing -------------------------------------------------------------------------------------


NAME_BYTES = 255
"""The longest file name most file systems take, in UTF-8 bytes."""
_ROOM_BYTES = len(".md") + len(" (99)") + len(" (tierflow 2026-11-18 99)")
"""Room kept for what the writer may add to a name: a number that names it apart, a dated sibling, `.md`."""
_BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_TAIL = re.compile(r" \([^()]{1,40}\)$")
"""A trailing ` (addition)`, ` (2)` or ` (tierflow 2026-11-18)`: kept whole when a long name is cut."""


def _cut_bytes(text: str, limit: int) -> str:
    """The longest start of `text` of at most `limit` UTF-8 bytes, never cut inside a character."""
    return text.encode("utf-8")[: max(0, limit)].decode("utf-8", "ignore")


def safe_note_name(title: str, *, max_length: int = 120, max_bytes: int = NAME_BYTES - _ROOM_BYTES) -> str:
    """A file name (without `.md`) that Obsidian and every OS accept, and that cannot leave its folder.

    At most `max_length` characters and `max_bytes` UTF-8 bytes, so that with `.md` and the writer's own
    additions it stays within 255 bytes; a trailing ` (addition)` or ` (2)` is kept whole when the title
    is cut. Bidirectional control characters, which can make a name read as another, are removed.
    """
    name = _BIDI_CONTROLS.sub("", unicodedata.normalize("NFC", title))
    name = " ".join(_OBSIDIAN_FORBIDDEN.sub(" ", name.replace("%%", " ")).split())
    tail = _TAIL.search(name)
    keep = tail.group(0) if tail and tail.start() > 0 else ""
    if len(name) > max_length or len(name.encode("utf-8")) > max_bytes:
        head = name[: len(name) - len(keep)][: max_length - len(keep)]
        name = _cut_bytes(head, max_bytes - len(keep.encode("utf-8"))).rstrip(" .") + keep
    # Cut first: pathvalidate would cut at 255 bytes itself, tail and all.
    name = sanitize_filename(name, replacement_text=" ", platform="universal")
    name = " ".join(name.split()).strip(" .")
    if name.split(".")[0].upper() in _RESERVED:
        name = f"{name} note"
    return name or "Untitled"


def body_hash(front_matter: dict[str, Any], body: str) -> str:
    """The hash tierflow wrote before it hashed a note's text: of the parsed front-matter and the body, so blind to a
    YAML comment or any change of formatting. `as_written` still accepts it where it matches, so that a note an
    earlier version wrote, unedited, is still updated (and then carries a hash of its text)."""
    meta = {k: v for k, v in front_matter.items() if k != HASH_KEY}
    text = yaml.safe_dump(meta, sort_keys=True, allow_unicode=True, default_flow_style=False) + "\n" + body.strip()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_TEXT_HASH = "v2-"
"""How a hash of the note's whole text starts (`render_note`); an older `body_hash` is 16 hex digits alone."""
_STAMP = re.compile(rf"({_TEXT_HASH}[0-9a-f]{{16}})(?:-([0-9a-f]{{8}}))?")
"""tierflow's hash of the note's text, then the digest of the name the note was written for (`render_note`)."""
_HASH_LINE = re.compile(rf"{HASH_KEY}: ({_STAMP.pattern})\n")


def _name_digest(name: str) -> str:
    return hashlib.sha256(unicodedata.normalize("NFC", name).encode()).hexdigest()[:8]


def _text_hash(before: str, after: str) -> str:
    return _TEXT_HASH + hashlib.sha256((before + after).encode()).hexdigest()[:16]


def _hashed(before: str, after: str, name: str | None) -> str:
    """The note `before` + `after` with tierflow's hash line between them: the hash of that text, then the digest
    of `name`, when given."""
    stamp = _text_hash(before, after) + (f"-{_name_digest(name)}" if name is not None else "")
    return f"{before}{HASH_KEY}: {stamp}\n{after}"


def _split_hash(text: str) -> tuple[str, str, str] | None:
    """The note's text before its hash line, after it, and the hash that line holds; None when the front-matter does
    not end with a line of tierflow's text hash (`render_note` writes it last)."""
    text = text.replace("\r\n", "\n")  # a sync tool's line ends are no one's edit
    end = text.find("\n---\n", 3) if text.startswith("---\n") else -1
    if end < 0:
        return None
    start = text.rfind("\n", 0, end) + 1  # the front-matter's last line
    found = _HASH_LINE.fullmatch(text, start, end + 1) if start >= 4 else None
    if found is None:
        return None
    return text[:start], text[end + 1 :], found.group(1)


def as_written(front_matter: dict[str, Any], body: str, text: str | None = None) -> bool:
    """Whether a note read back is as tierflow wrote it: it carries tierflow's hash, and nobody has edited it since.

    `text` is the note's whole text as read (`read_note_text`): any change to it, a YAML comment or a property's
    formatting included, is an edit. A hash an earlier version wrote (`body_hash`, of the parsed front-matter and
    body) is checked against those; a note with a hash of its text, given no `text`, is taken as edited.
    """
    stored = front_matter.get(HASH_KEY)
    if not stored:
        return False
    if not str(stored).startswith(_TEXT_HASH):
        return stored == body_hash(front_matter, body)
    split = _split_hash(text) if text is not None else None
    if split is None or split[2] != stored:
        return False
    before, after, stamp = split
    return stamp.startswith(_text_hash(before, after))  # the name's digest, when there is one, follows


def render_note(front_matter: dict[str, Any], body: str, *, name: str | None = None) -> str:
    """Markdown with flat YAML front-matter that Obsidian's Properties view accepts, ending with tierflow's hash of
    the note's text (all of it but the hash's own line) and, given `name`, a digest of the name the note is
    written for (`NoteWriter.write`'s title, before it is made a file name)."""
    meta = {k: v for k, v in front_matter.items() if k != HASH_KEY}
    head = ""  # no `{}` line: the hash line alone is the front-matter
    if meta:
        head = yaml.dump(
            meta, Dumper=YAML_DUMPER, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000
        )
    return _hashed(f"---\n{head}", f"---\n\n{body.strip()}\n", name)


def _asked_for(path: Path) -> str | None:
    """The digest of the name tierflow wrote the note at `path` for; None when it records none (a person's note, one an
    earlier version wrote, one that cannot be read)."""
    try:
        text = read_note_text(path)
    except (OSError, UnicodeDecodeError):
        return None
    split = _split_hash(text)
    if split is not None:  # read from the text: even a note whose YAML a person broke still says it
        stamp: Any = split[2]
    else:
        try:
            stamp = parse_note(text).metadata.get(HASH_KEY)
        except yaml.YAMLError:
            return None
    found = _STAMP.fullmatch(str(stamp or ""))
    return found[2] if found else None


WriteAction = Literal["created", "updated", "unchanged", "kept-user-edit"]

Scope = Callable[[dict[str, Any], str], str | None]
"""What a note was written for, read from its front-matter and body (a concept draft's reading window), as text
the run report can show; None when a note does not say. tierflow replaces its own note only for the same scope."""

_RACES = 5
"""How often `NoteWriter.write` looks again when another run creates the file it was about to create."""

RUN_AGAIN = "then run again: the answer already paid for is reused"
"""How a note that was not written ends: its flow's answers are cached, so the rerun after the fix pays nothing."""


class NoteNotWritten(VaultError):
    """A note the file system would not take (a folder of its name in the way, a folder that cannot be written to,
    a full disk): names the note by its vault path, the cause and the fix, so that a flow skips that item with it."""

    def __init__(self, note: str, cause: str) -> None:
        self.note, self.cause = note, cause
        super().__init__(
            f"{note} could not be written ({cause}); check {note}: a folder of that name in the way, a folder you "
            f"cannot write to, a full disk; {RUN_AGAIN}."
        )


@dataclass(frozen=True)
class WriteResult:
    path: str
    """Vault-relative path actually written (or left unchanged)."""
    action: WriteAction
    message: str = ""


@dataclass
class NoteWriter:
    """Writes notes into one folder of the vault, and nowhere else."""

    vault: Path
    folder: str
    today: date = field(default_factory=lambda: now().date())
    """The day a dated sibling is named for; by default today by tierflow's clock, in UTC (callers with a config
    give `Config.today()`, the vault's time zone)."""
    names: VaultNames | None = None
    """The vault's file names (scanned when not given): a new note never takes a name another note has
    anywhere in the vault (Obsidian resolves links by name, case-insensitively), and every wikilink it holds
    must resolve to exactly one file."""
    unresolved: Literal["refuse", "text"] = "refuse"
    """A link that does not resolve to exactly one file: "refuse" the note (the final guard of tierflow's own
    flows, which write such links as text before they write), or write it as its "text", saying so in the
    `WriteResult`'s message (`writer_for`: a flow of your own writing a model's text)."""

    def __post_init__(self) -> None:
        self.vault = self.vault.resolve()
        self.root = (self.vault / self.folder).resolve()
        if not self.root.is_relative_to(self.vault):
            raise VaultError(f"output folder {self.folder!r} is outside the vault; choose a folder inside it")
        if self.names is None:
            self.names = VaultNames.scan(self.vault)

    def rename_own(self, old_title: str, new_title: str) -> bool:
        """Move the note tierflow wrote as `old_title`, unedited, to `new_title` in this folder (a name an
        earlier version chose that now shadows another note); False, and nothing moved, otherwise."""
        old, new = self.target(old_title), self.target(new_title)
        if old == new or not old.is_file() or new.exists() or ownership(old) != "owned":
            return False
        if _asked_for(old) not in (None, _name_digest(old_title), _name_digest(new_title)):
            return False  # tierflow's note for another name that makes the same file name
        try:
            split = _split_hash(read_note_text(old))
            if split is None:  # a hash an earlier version wrote, which records no name: moved as it is
                os.replace(old, new)
            else:  # its hash now records the name it is written for, else the next write would name it apart
                try:
                    write_atomically(new, _hashed(split[0], split[1], new_title), create=True)
                except FileExistsError:
                    return False
                old.unlink()
        except OSError as exc:
            raise self._refused(new, exc) from None
        if self.names is not None:
            self.names.discard(self._rel(old))
            self.names.add(self._rel(new))
        return True

    def target(self, title: str) -> Path:
        path = _as_on_disk((self.root / f"{safe_note_name(title)}.md").resolve())
        # Belt and braces: the sanitised name has no separators, but a symlinked folder could still escape.
        if not path.is_relative_to(self.root):
            raise VaultError(f"refusing to write {path}: outside {self.folder}")
        return path

    def write(
        self,
        title: str,
        front_matter: dict[str, Any],
        body: str,
        *,
        compare_keys: tuple[str, ...] = (),
        scope: Scope | None = None,
        dated: date | None = None,
    ) -> WriteResult:
        """Create or update the note for `title`.

        An existing note is replaced only if tierflow wrote it for the same `title`, nobody edited it since and,
        with `scope`, it was written for the same scope (a concept draft's reading window). Its content is
        compared ignoring `compare_keys` (run ids, spend), so an unchanged draft is left untouched. A user-edited
        note, or one of another scope, is kept byte for byte, and the new note goes to a sibling dated `dated`
        (default: today). A note tierflow wrote for another title that makes the same file name (`Peer review ^2`
        and `Peer review 2`), in this run or another, is kept, and this one is named apart from it, as from a
        note of that name elsewhere in the vault. A note is only ever created where no file is, so runs writing
        at once never replace each other's new notes.
        """
        asked = front_matter, body
        for _ in range(_RACES):
            path, apart = self._place(title)
            warning = ""
            front_matter, body = asked
            if self.unresolved == "text":
                front_matter, body, warning = self._unlink(path, front_matter, body)
            text = render_note(front_matter, body, name=title)
            self._check_links(path, front_matter, body)
            mine = scope(front_matter, body) if scope is not None else None
            try:
                result = self._write(path, apart, text, front_matter, body, compare_keys, scope, mine, dated, title)
            except FileExistsError as exc:
                if path.parent.is_dir():
                    continue  # another run created that file since we looked: look again
                raise self._refused(path, exc) from None  # a file in the way of the folder
            except OSError as exc:
                raise self._refused(path, exc) from None
            return replace(result, message="; ".join(m for m in (result.message, warning) if m))
        raise VaultError(f"{self._rel(self.target(title))}: other runs kept creating notes of that name; run again")

    def _write(
        self,
        path: Path,
        apart: str,
        text: str,
        front_matter: dict[str, Any],
        body: str,
        compare_keys: tuple[str, ...],
        scope: Scope | None,
        mine: str | None,
        dated: date | None,
        title: str,
    ) -> WriteResult:
        """One attempt of `write`; FileExistsError when a file it was about to create appeared meanwhile."""
        if not path.exists():
            write_atomically(path, text, create=True)
            return WriteResult(self._rel(path), "created", apart)
        if _asked_for(path) not in (None, _name_digest(title)):
            raise FileExistsError(path)  # another title's note since `_place` looked (it was an earlier version's)
        state = ownership(path)
        theirs = _scope_of(path, scope) if state == "owned" and scope is not None else mine
        if state == "owned" and theirs == mine:
            if _same_content(path, front_matter, body, compare_keys):
                return WriteResult(self._rel(path), "unchanged")
            write_atomically(path, text)
            return WriteResult(self._rel(path), "updated")
        sibling = self._sibling(path, scope, mine, dated or self.today, title)
        if sibling is None:
            return WriteResult(self._rel(path), "unchanged")
        if state == "owned":
            kept = f"kept as it is (tierflow wrote it for {theirs or 'another run'}, not {mine})"
        elif state == "unparsed":
            # Most often tierflow's own note, after an edit that broke its YAML: not said to be someone else's.
            kept = f"kept as it is: its front-matter does not parse ({_yaml_problem(path)}); you may have edited it"
        else:
            why = "you edited it since tierflow wrote it" if state == "edited" else "tierflow did not write it"
            kept = f"kept as it is ({why})"
        if sibling.exists() and _same_content(sibling, front_matter, body, compare_keys):
            return WriteResult(self._rel(sibling), "unchanged", f"{self._rel(path)} {kept}")
        message = f"{self._rel(path)} {kept}; the new draft is {self._rel(sibling)}"
        if state == "owned":
            # Nobody's edit is involved: the new note is created (or, on a rerun, updated) beside the other one.
            action: WriteAction = "updated" if sibling.exists() else "created"
            write_atomically(sibling, text, create=action == "created")
            return WriteResult(self._rel(sibling), action, message)
        write_atomically(sibling, text, create=not sibling.exists())
        return WriteResult(self._rel(sibling), "kept-user-edit", message)

    def _place(self, title: str) -> tuple[Path, str]:
        """Where the note for `title` goes, and why it was named apart ("" when it was not): its own name, or the
        first `<name> (2).md`, `(3)`... that no other note in the vault is named like, and where no note is that
        tierflow wrote for another title making the same file name."""
        path = self.target(title)
        others = self.names.taken(path.stem, besides=self._rel(path)) if self.names is not None else []
        mine = _name_digest(title)
        theirs = _asked_for(path) not in (None, mine)
        if not others and not theirs:
            return path, ""
        for n in range(2, 100):
            candidate = path.with_name(f"{path.stem} ({n}).md")
            if self.names is not None and self.names.taken(candidate.stem, besides=self._rel(candidate)):
                continue
            if _asked_for(candidate) in (None, mine):
                why = [f"{', '.join(others)}, which has the name {path.stem!r}"] if others else []
                if theirs:
                    why.append(f"{self._rel(path)}, which tierflow wrote for another name that makes that file name")
                return candidate, f"named apart from {' and from '.join(why)}"
        raise VaultError(f"no free name for {path.stem!r}: rename some of {', '.join(others) or self._rel(path)}")

    def _unlink(self, path: Path, front_matter: dict[str, Any], body: str) -> tuple[dict[str, Any], str, str]:
        """The front-matter and body with each link that does not resolve to exactly one file written as its
        text (code is left as it is), and a warning naming those links; "" when there were none."""
        if self.names is None:
            return front_matter, body, ""
        self.names.add(self._rel(path))  # a note may link to itself
        problems = self.names.problems("\n".join([*_strings(front_matter), body]))
        if not problems:
            return front_matter, body, ""
        unlinked = _map_strings(front_matter, self.names.unlink_unresolved)
        return (
            unlinked,
            self.names.unlink_unresolved(body),
            f"written as plain text, not as links: {'; '.join(problems)}",
        )

    def _check_links(self, path: Path, front_matter: dict[str, Any], body: str) -> None:
        """The final guard: a note whose links (wikilinks, and Markdown links to notes) do not each resolve to
        exactly one file is not written.

        Links are read from the front-matter's values as parsed, never from the YAML text, where quoting
        changes them (`[[Guide d'Obsidian]]` is written `'[[Guide d''Obsidian]]'`).
        """
        if self.names is None:
            return
        self.names.add(self._rel(path))
        problems = self.names.problems("\n".join([*_strings(front_matter), body]))
        if not problems:
            return
        fixes = []
        if any(p.endswith(NO_NOTE) for p in problems):
            fixes.append("for a link to no note, create that note, or write the name without [[ ]]")
        if any(not p.endswith(NO_NOTE) for p in problems):
            fixes.append("for an ambiguous link, rename the notes that share a name, or link one by its path")
        raise LinkError(
            f"{self._rel(path)} was not written: {'; '.join(problems)}. Every link in a note tierflow writes must "
            f"lead to exactly one note: {'; '.join(fixes)}. A flow of your own can have such links written as "
            "plain text instead (writer_for does). If one of tierflow's flows wrote the link, that is a bug in "
            "tierflow: please report it with the notes' names.",
            problems,
        )

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.vault).as_posix()

    def _refused(self, path: Path, exc: OSError) -> NoteNotWritten:
        """`exc`, from writing the note at `path`, as a `NoteNotWritten`: the note that failed (a dated sibling,
        when that was being written) by its vault path, never the machine's absolute one, and the cause."""
        failed = Path(exc.filename) if isinstance(exc.filename, str) else path
        note = failed if failed.suffix == ".md" and failed.is_relative_to(self.root) else path
        cause = exc.strerror or type(exc).__name__
        if failed != note and failed.is_relative_to(self.vault) and not failed.name.startswith(".tierflow-"):
            cause += f": {self._rel(failed)}"  # what is in the way: a file where the note's folder should be
        return NoteNotWritten(self._rel(note), cause)

    def _sibling(self, path: Path, scope: Scope | None, mine: str | None, day: date, title: str) -> Path | None:
        """A dated sibling that is free, or tierflow's own unedited one for `title` of the same scope; None when
        nothing is."""
        for n in range(1, 100):
            suffix = f" (tierflow {day.isoformat()})" if n == 1 else f" (tierflow {day.isoformat()} {n})"
            candidate = path.with_name(f"{path.stem}{suffix}.md")
            if self.names is not None and self.names.taken(candidate.stem, besides=self._rel(candidate)):
                continue
            if not candidate.exists():
                return candidate
            if (
                ownership(candidate) == "owned"
                and _asked_for(candidate) in (None, _name_digest(title))
                and (scope is None or _scope_of(candidate, scope) == mine)
            ):
                return candidate
        return None


Ownership = Literal["owned", "edited", "foreign", "unparsed"]


def ownership(path: Path) -> Ownership:
    """Whether tierflow wrote the note at `path` and nobody edited it since ("owned"), or they did ("edited"), or
    tierflow did not write it ("foreign"); "unparsed" when its front-matter does not parse, which cannot say."""
    try:
        text = read_note_text(path)
        post = parse_note(text)
    except UnicodeDecodeError:
        return "foreign"
    except yaml.YAMLError:
        return "unparsed"
    if not post.metadata.get(HASH_KEY):
        return "foreign"
    return "owned" if as_written(dict(post.metadata), post.content, text) else "edited"


def write_atomically(path: Path, text: str | bytes, *, create: bool = False) -> None:
    """Write `text` (UTF-8, `\\n` line ends; bytes as they are) to `path` through a temporary file beside it: a
    reader, or a crash halfway, sees the old file or the new one, never half of it. `create`: only where no file is
    (FileExistsError if one is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tierflow-", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; a note gets the mode any new file gets here (a synced or shared vault,
        # a publishing tool running as another user), or keeps the mode of the note it replaces.
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else _NEW_FILE_MODE)
        binary = isinstance(text, bytes)
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if create:
            _create(Path(tmp), path)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _as_on_disk(path: Path) -> Path:
    """`path`, or the file already in its folder whose name differs only in how its letters are composed (a Mac or
    a sync tool renamed `É` to its decomposed NFD form): tierflow's own note, to be found and updated, not doubled."""
    if path.name.isascii() or path.exists() or not path.parent.is_dir():
        return path  # only letters beyond ASCII have two forms
    wanted = unicodedata.normalize("NFC", path.name)
    for entry in os.scandir(path.parent):
        if entry.name != path.name and unicodedata.normalize("NFC", entry.name) == wanted:
            return path.with_name(entry.name)
    return path


def _create(tmp: Path, path: Path) -> None:
    """Move the written `tmp` to `path` only if no file is there: a hard link fails if one is, where `os.replace`
    would replace a note another run has just created. Where hard links are not supported, an empty file is
    claimed exclusively first (another run reads it as not tierflow's, and writes beside it)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _NEW_FILE_MODE))
        os.replace(tmp, path)
        return
    tmp.unlink()


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: done once, at import, before any thread writes
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_umask()


def _map_strings(value: Any, change: Callable[[str], str]) -> Any:
    """`value` with `change` applied to every string inside it (lists and mappings walked)."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, change) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_map_strings(v, change) for v in value)
    return value


def _strings(value: Any) -> list[str]:
    """Every string inside a front-matter value (lists and mappings walked), in order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _yaml_problem(path: Path) -> str:
    """Why the front-matter of the note at `path` does not parse, with the line and column (`yaml_problem`)."""
    try:
        text = read_note_text(path)
        parse_note(text)
    except yaml.YAMLError as exc:
        return yaml_problem(exc)
    except (OSError, UnicodeDecodeError) as exc:
        return _first_line(exc)
    return "it parses now"  # a person corrected it meanwhile


def _scope_of(path: Path, scope: Scope) -> str | None:
    try:
        post = load_note(path)
    except (UnicodeDecodeError, yaml.YAMLError, OSError):
        return None
    return scope(dict(post.metadata), post.content)


def _same_content(path: Path, front_matter: dict[str, Any], body: str, ignore: tuple[str, ...]) -> bool:
    try:
        post = load_note(path)
    except (UnicodeDecodeError, yaml.YAMLError, OSError):
        return False

    def strip(meta: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in meta.items() if k not in ignore and k != HASH_KEY}

    new = parse_note(render_note(front_matter, body))
    return strip(dict(post.metadata)) == strip(dict(new.metadata)) and post.content.strip() == new.content.strip()
