"""Wikilinks as Obsidian resolves them: by note name or by path, case-insensitively.

`VaultNames` knows every file name in a vault. It answers the three questions tierflow asks before it
writes a link or a note: which files does `[[target]]` resolve to, what is the shortest link that resolves
to exactly this file, and is a note name already taken anywhere in the vault.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

WIKILINK = re.compile(r"!?\[\[([^\[\]|#^\n]*)(?:[#^][^\[\]|\n]*)?(?:\|[^\[\]\n]*)?\]\]")
"""`[[target]]`, `[[target#heading]]`, `[[target|alias]]`, and embeds `![[...]]`; group 1 is the target."""


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold()


def _key(path: str) -> str:
    """What a link names a file by: a note without `.md`, any other file with its extension."""
    return _fold(path[:-3] if path.lower().endswith(".md") else path)


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


@dataclass
class VaultNames:
    """Every file in a vault (dot-folders excluded, as in Obsidian), by the names links use."""

    paths: set[str] = field(default_factory=set)
    _by_name: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def scan(cls, vault: Path) -> VaultNames:
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
        """Every file `[[target]]` may mean: one is a good link, none is dangling, several are ambiguous."""
        wanted = _key(target.strip().lstrip("/"))
        if not wanted:
            return []
        name = wanted.rpartition("/")[2]
        candidates = self._by_name.get(name, set())
        if "/" in wanted:
            candidates = {p for p in candidates if _key(p) == wanted or _key(p).endswith("/" + wanted)}
        return sorted(candidates)

    def taken(self, name: str, *, besides: str | None = None) -> list[str]:
        """Notes anywhere in the vault that a note called `name` would share its name with."""
        return sorted(p for p in self._by_name.get(_key(name), set()) if p != besides)

    def link_for(self, path: str) -> str:
        """The shortest link target that resolves to `path` and nothing else: its name, else its path."""
        name = path.rpartition("/")[2]
        short = name[:-3] if name.lower().endswith(".md") else name
        if self.resolve(short) == [path]:
            return short
        return path[:-3] if path.lower().endswith(".md") else path

    def problems(self, text: str) -> list[str]:
        """Each wikilink in `text` that does not resolve to exactly one file, said plainly."""
        out = []
        for target in dict.fromkeys(wikilink_targets(text)):
            found = self.resolve(target)
            if not found:
                out.append(f"[[{target}]] links to no note in the vault")
            elif len(found) > 1:
                out.append(f"[[{target}]] is ambiguous: it matches {', '.join(found)}")
        return out

    def unlink_unresolved(self, text: str) -> str:
        """`text` with every link that does not resolve to exactly one file turned into its plain label (code is
        left as it is)."""

        def plain(m: re.Match[str]) -> str:
            if len(self.resolve(m.group(1))) == 1 or not m.group(1).strip():
                return text[m.start() : m.end()]
            inner = text[m.start() : m.end()].lstrip("!")[2:-2]
            return inner.split("|", 1)[1] if "|" in inner else inner

        from tierflow.vault.annotations import without_code

        code_free = without_code(text)
        out, done = [], 0
        for m in WIKILINK.finditer(code_free):
            out += [text[done : m.start()], plain(m)]
            done = m.end()
        return "".join([*out, text[done:]])

    def free_name(self, name: str, variants: Iterable[str]) -> str:
        """`name` if no note has it, else the first of `variants` that no note has."""
        for candidate in (name, *variants):
            if not self.taken(candidate):
                return candidate
        raise ValueError(f"no free note name for {name!r}")
