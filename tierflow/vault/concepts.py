"""The person's existing concept notes: what the synthesis must know so that it adds to them, never rivals them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from tierflow.vault.index import TIERFLOW_KEYS, VaultIndex
from tierflow.vault.links import WIKILINK, VaultNames, link_targets
from tierflow.vault.text import PropertyError, hide_comments, load_note, property_list

SUMMARY_CHARS = 200
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class ConceptNote:
    """One existing note, as the synthesis and the draft see it."""

    path: str
    name: str
    """Its file name without `.md`: what `[[links]]` and a draft's name are compared with."""
    link: str
    """The link target that resolves to this note alone."""
    aliases: tuple[str, ...]
    summary: str
    """One line from its first paragraph."""
    cites: frozenset[str]
    """Vault paths of the notes it links to: the sources it already cites."""
    body: str

    def names(self) -> set[str]:
        return {n.casefold() for n in (self.name, *self.aliases)}


def read_concept(vault: Path, path: str, names: VaultNames, *, tierflow_too: bool = True) -> ConceptNote | None:
    """The note at `path`, or None when it cannot be read (or, unless `tierflow_too`, when tierflow wrote it).

    A draft the person moved among their concept notes is theirs now, whatever its front-matter says.
    """
    try:
        post = load_note(vault / path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    meta = dict(post.metadata)
    body = hide_comments(post.content)  # Obsidian hides comments: private remarks never reach a prompt
    if not tierflow_too and any(key in meta for key in TIERFLOW_KEYS):
        return None
    key = "aliases" if meta.get("aliases") else "alias"
    if isinstance(meta.get(key), str):  # `aliases: Dialogue, Talk` is two aliases to Obsidian, `[Dialogue, Talk]` too
        meta[key] = meta[key].split(",")
    try:
        aliases = property_list(meta, key)
    except PropertyError:
        # A mapping is no name: the note is still the person's concept, known by its file name.
        aliases = []
    cites = frozenset(p for t in link_targets(body) for p in names.resolve(t)[:1] if p != path)
    return ConceptNote(
        path=path,
        name=Path(path).stem,
        link=names.link_for(path),
        aliases=tuple(aliases),
        summary=first_paragraph(body),
        cites=cites,
        body=body,
    )


def first_paragraph(body: str, limit: int = SUMMARY_CHARS) -> str:
    """The first paragraph that is prose (not a heading, list, quote, table or code), links as plain text."""
    for block in re.split(r"\n\s*\n", body):
        text = block.strip()
        if not text or text.startswith(("#", "-", "*", ">", "|", "```", "~~~", "![", "1.")):
            continue
        text = WIKILINK.sub(lambda m: _label(m.group(0)), " ".join(text.split()))
        text = re.sub(r"\*\*|__|==", "", text)
        return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"
    return ""


def _label(link: str) -> str:
    inner = link.lstrip("!")[2:-2]
    return inner.split("|", 1)[1] if "|" in inner else inner.split("#", 1)[0]


def existing_concepts(
    vault: Path,
    index: VaultIndex,
    names: VaultNames,
    *,
    folders: Sequence[str],
    tags: Sequence[str],
    exclude: Sequence[str],
) -> list[ConceptNote]:
    """Every concept note the person keeps: under `folders` or tagged with `tags`, outside `exclude` (where
    tierflow's own drafts and reports are)."""
    if not folders and not tags:
        return []
    index.scan(() if tags else folders)
    prefixes = tuple(f"{f.strip('/')}/" for f in exclude)
    found = []
    for meta in index.notes():
        if meta.error or meta.path.startswith(prefixes):
            continue
        if any(meta.under(f) for f in folders) or any(meta.has_tag(t) for t in tags):
            note = read_concept(vault, meta.path, names)
            if note is not None:
                found.append(note)
    return found


def by_relevance(notes: Iterable[ConceptNote], terms: Iterable[str], cited: Iterable[str]) -> list[ConceptNote]:
    """Most relevant first: a name or alias among the week's terms, then sources it cites, then shared words."""
    wanted = {t.casefold() for t in terms}
    words = {w for t in wanted for w in _WORD.findall(t)}
    sources = set(cited)

    def score(note: ConceptNote) -> tuple[int, int, int, str]:
        own = note.names()
        return (
            -len(own & wanted),
            -len(note.cites & sources),
            -len({w for n in own for w in _WORD.findall(n)} & words),
            note.name.casefold(),
        )

    return sorted(notes, key=score)


def matching(notes: Iterable[ConceptNote], name: str | None) -> ConceptNote | None:
    """The note whose name or an alias is `name` (case-insensitively)."""
    if not name:
        return None
    key = name.strip().removeprefix("[[").removesuffix("]]").casefold()
    return next((n for n in notes if key in n.names()), None)
