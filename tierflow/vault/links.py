"""Links as Obsidian resolves them: by note name or by path, case-insensitively.

`VaultNames` knows every file name in a vault. It answers the questions tierflow asks before it writes a
link or a note: which files does `[[target]]` resolve to, what is the shortest link that resolves to
exactly this file, how to write it, and is a note name already taken anywhere in the vault.

A wikilink cannot hold every name: `#`, `^` and `|` end its target, `[` and `]` end the link, and a space at
either end is trimmed. Such a note is linked the other way Obsidian links notes, a Markdown link to its
percent-encoded vault path (`[Note #1](Reading/Note%20%231.md)`). Two files whose names differ only in case
or Unicode form cannot be told apart by any link, so their names are written as plain text.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

WIKILINK = re.compile(r"!?\[\[([^\[\]|#^\n]*)(?:[#^][^\[\]|\n]*)?(?:\|[^\[\]\n]*)?\]\]")
"""`[[target]]`, `[[target#heading]]`, `[[target|alias]]`, and embeds `![[...]]`; group 1 is the target."""

MARKDOWN_LINK = re.compile(r"!?\[((?:\\.|[^\[\]\\\n])*)\]\(([^()\s]+)\)")
"""`[label](Folder/Note%20name.md)`: group 1 is the label, group 2 the link's URL."""

NO_NOTE = "links to no note in the vault"
"""How `VaultNames.problems` ends the problem of a link whose target no file has."""
_NOT_IN_WIKILINK = re.compile(r"[#^|\[\]\n]")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold()


def same_path(a: str, b: str) -> bool:
    """Whether two vault paths name the same file however their letters are composed: a Mac or a sync tool
    stores `É` decomposed (NFD), tierflow composes it (NFC)."""
    return unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)


def _key(path: str) -> str:
    """What a link names a file by: a note without `.md`, any other file with its extension."""
    return _fold(path[:-3] if path.lower().endswith(".md") else path)


def wikilink_can_name(target: str) -> bool:
    """Whether `[[target]]` names `target` as written: no `#`, `^`, `|`, `[` or `]`, no space at either end
    (of the name, `.md` or not)."""
    name = target[:-3] if target.lower().endswith(".md") else target
    return bool(name) and name == name.strip() and not _NOT_IN_WIKILINK.search(target)


def markdown_link_target(url: str) -> str | None:
    """The vault path a Markdown link's URL names (percent-decoded, heading dropped), or None for a web
    address, a heading in the same note, or a link to anything but a note (`.md`)."""
    if _SCHEME.match(url) or url.startswith("#"):
        return None
    path = unquote(url.split("#", 1)[0])
    return path if path.lower().endswith(".md") else None


def markdown_link(path: str, label: str) -> str:
    """`[label](path)`, the path percent-encoded and the label's brackets, pipes and backslashes escaped."""
    shown = re.sub(r"([\\\[\]|])", r"\\\1", label)
    return f"[{shown}]({quote(path, safe='/')})"


def wikilink_targets(text: str) -> list[str]:
    """The target of every wikilink in `text`, in order, outside code (links to a heading in the same note are
    left out)."""
    from tierflow.vault.annotations import without_code  # here, not above: keeps the import block stable

    return [m.group(1).strip() for m in WIKILINK.finditer(without_code(text)) if m.group(1).strip()]


def note_links(text: str) -> list[str]:
    """Each note `text` links to, once, in order: wikilinks outside code, not embeds, without `.md`, an alias
    or a heading (`[[Note#Part|shown]]` -> `Note`)."""
    from tierflow.vault.annotations import without_code

    out = []
    for m in WIKILINK.finditer(without_code(text)):
        target = m.group(1).replace("\\", "").strip().removesuffix(".md")
        if target and not m.group(0).startswith("!") and not target.endswith(".canvas"):
            out.append(target)
    return list(dict.fromkeys(out))


def link_targets(text: str) -> list[str]:
    """The target of every link to a note or file in `text` outside code: wikilinks' and Markdown links'."""
    return [target for _, target in _links(text)]


def _links(text: str) -> list[tuple[str, str]]:
    """Each link in `text` outside code, as written and by its target, in order."""
    from tierflow.vault.annotations import without_code

    code_free = without_code(text)
    found = [(m.start(), f"[[{t}]]", t) for m in WIKILINK.finditer(code_free) if (t := m.group(1).strip())]
    for m in MARKDOWN_LINK.finditer(code_free):
        target = markdown_link_target(m.group(2))
        if target is not None:
            found.append((m.start(), m.group(0), target))
    return [(shown, target) for _, shown, target in sorted(found)]


@dataclass
class VaultNames:
    """Every file in a vault (dot-folders excluded, as in Obsidian), by the names links use."""

    paths: set[str] = field(default_factory=set)
    _by_name: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def scan(cls, vault: Path | str) -> VaultNames:
        names = cls()
        root = str(vault)
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = os.path.relpath(folder, root)
            for name in files:
                if not name.startswith("."):
                    names.add(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
        return names

    def add(self, path: str) -> None:
        """Count a file (vault-relative POSIX path) as present, e.g. a note about to be written."""
        self.paths.add(path)
        self._by_name[_key(path).rpartition("/")[2]].add(path)

    def discard(self, path: str) -> None:
        self.paths.discard(path)
        self._by_name[_key(path).rpartition("/")[2]].discard(path)

    def resolve(self, target: str) -> list[str]:
        """Every file `[[target]]` may mean: one is a good link, none is dangling, several are ambiguous.

        `target` is taken as given: a wikilink's is trimmed when it is read, a Markdown link's keeps the
        space a file name may end with."""
        wanted = _key(target.lstrip("/"))
        if not wanted:
            return []
        name = wanted.rpartition("/")[2]
        candidates = self._by_name.get(name, set())
        if "/" in wanted:
            candidates = {p for p in candidates if _key(p) == wanted or _key(p).endswith("/" + wanted)}
        return sorted(candidates)

    def taken(self, name: str, *, besides: str | None = None) -> list[str]:
        """Notes anywhere in the vault that a note called `name` would share its name with."""
        return sorted(p for p in self._by_name.get(_key(name), set()) if besides is None or not same_path(p, besides))

    def link_for(self, path: str) -> str:
        """The shortest link target that resolves to `path` and nothing else: its name, else its path, else
        (a name no wikilink can hold) the path with its extension, which `link` writes as a Markdown link.

        A file that shares its name but for case or Unicode form with another in its folder resolves to
        both whatever the target; `link` writes it as plain text and `unlinkable` says why."""
        name = path.rpartition("/")[2]
        short = name[:-3] if name.lower().endswith(".md") else name
        if wikilink_can_name(short) and self.resolve(short) == [path]:
            return short
        long = path[:-3] if path.lower().endswith(".md") else path
        return long if wikilink_can_name(long) else path

    def link(self, target: str, label: str | None = None) -> str:
        """The Markdown that links `target` (a `link_for` answer) and nothing else: `[[target]]`, a Markdown
        link to its path when a wikilink cannot hold it, or `label` (else its name) as plain text when no link
        can name it alone."""
        found = self.resolve(target)
        if len(found) != 1:
            return label or target.rpartition("/")[2].removesuffix(".md")
        if wikilink_can_name(target):
            return f"[[{target}]]" if label is None or label == target else f"[[{target}|{label}]]"
        return markdown_link(found[0], label or found[0].rpartition("/")[2].removesuffix(".md"))

    def unlinkable(self, path: str) -> str:
        """Why no link can name `path` alone, with the fix, or "" when one can."""
        others = [p for p in self.resolve(path) if p != path]
        if not others:
            return ""
        return (
            f"written as plain text, not a link: {', '.join(others)} has the same name but for case or Unicode "
            "form, and Obsidian cannot link either alone; rename one of them"
        )

    def problems(self, text: str) -> list[str]:
        """Each link in `text` (wikilinks, and Markdown links to notes) that does not resolve to exactly one
        file, said plainly."""
        out = []
        for shown, target in dict.fromkeys(_links(text)):
            found = self.resolve(target)
            if not found:
                out.append(f"{shown} {NO_NOTE}")
            elif len(found) > 1:
                out.append(f"{shown} is ambiguous: it matches {', '.join(found)}")
        return out

    def unlink_unresolved(self, text: str) -> str:
        """`text` with every link that does not resolve to exactly one file turned into its plain label (code is
        left as it is)."""

        def plain(m: re.Match[str]) -> str:
            if len(self.resolve(m.group(1).strip())) == 1 or not m.group(1).strip():
                return text[m.start() : m.end()]
            inner = text[m.start() : m.end()].lstrip("!")[2:-2]
            return inner.split("|", 1)[1] if "|" in inner else inner

        def plain_markdown(m: re.Match[str]) -> str:
            target = markdown_link_target(m.group(2))
            if target is None or len(self.resolve(target)) == 1:
                return text[m.start() : m.end()]
            return re.sub(r"\\(.)", r"\1", text[m.start() : m.end()].lstrip("!")[1:].partition("](")[0])

        from tierflow.vault.annotations import without_code

        code_free = without_code(text)
        spans = sorted(
            [(m.start(), m.end(), plain(m)) for m in WIKILINK.finditer(code_free)]
            + [(m.start(), m.end(), plain_markdown(m)) for m in MARKDOWN_LINK.finditer(code_free)]
        )
        out, done = [], 0
        for start, end, replacement in spans:
            if start >= done:
                out += [text[done:start], replacement]
                done = end
        return "".join([*out, text[done:]])

    def free_name(self, name: str, variants: Iterable[str]) -> str:
        """`name` if no note has it, else the first of `variants` that no note has."""
        for candidate in (name, *variants):
            if not self.taken(candidate):
                return candidate
        raise ValueError(f"no free note name for {name!r}")
