"""Rubrics as lecturers write them: a Markdown table of criteria by level, or one heading per criterion."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import frontmatter
import yaml
from markdown_it import MarkdownIt

from tierflow.core.errors import VaultError


class RubricError(VaultError):
    """The rubric is missing or cannot be parsed; nothing has been spent."""


@dataclass(frozen=True)
class Criterion:
    name: str
    levels: dict[str, str]
    """Level name (e.g. `Excellent (70+)`) -> descriptor, best first."""
    weight: str = ""


@dataclass(frozen=True)
class Rubric:
    path: str
    title: str
    criteria: tuple[Criterion, ...]
    notes: str = ""
    levels: tuple[str, ...] = field(default=())

    def as_markdown(self) -> str:
        """The rubric, normalised, for prompts."""
        lines = [f"# {self.title}"]
        for c in self.criteria:
            lines.append(f"\n## {c.name}" + (f" ({c.weight})" if c.weight else ""))
            lines += [f"- {level}: {text}" for level, text in c.levels.items()]
        if self.notes:
            lines.append(f"\n{self.notes}")
        return "\n".join(lines)


def load_rubric(vault: Path, relpath: str) -> Rubric:
    """Parse `relpath`; a RubricError names the file and what is wrong with it."""
    path = vault / relpath
    if not path.is_file():
        raise RubricError(
            f"{relpath}: no rubric found. Put the marking rubric there (a Markdown table or headed sections)."
        )
    try:
        post = frontmatter.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RubricError(f"{relpath}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise RubricError(f"{relpath}: malformed YAML front-matter ({' '.join(str(exc).split())[:120]})") from None
    title = str(post.metadata.get("title") or path.stem)
    tokens = MarkdownIt("commonmark").enable("table").parse(post.content)
    criteria, levels = _from_table(tokens)
    if not criteria:
        criteria, levels = _from_headings(post.content)
    if not criteria:
        raise RubricError(
            f"{relpath}: no criteria found. Write a table whose first column is `Criterion` and whose other "
            "columns are levels, or one `## Criterion` heading per criterion with `- Level: descriptor` bullets."
        )
    empty = [c.name for c in criteria if not c.levels]
    if empty:
        raise RubricError(f"{relpath}: criterion {empty[0]!r} has no level descriptors")
    notes = "\n".join(
        line for line in post.content.splitlines() if line.strip() and not line.lstrip().startswith(("|", "#", "- "))
    )
    return Rubric(path=relpath, title=title, criteria=tuple(criteria), notes=notes.strip(), levels=tuple(levels))


def _from_table(tokens: list) -> tuple[list[Criterion], list[str]]:
    rows: list[list[str]] = []
    row: list[str] | None = None
    for i, tok in enumerate(tokens):
        if tok.type == "tr_open":
            row = []
        elif tok.type in ("th_open", "td_open") and row is not None:
            row.append(tokens[i + 1].content.strip() if tokens[i + 1].type == "inline" else "")
        elif tok.type == "tr_close" and row is not None:
            rows.append(row)
            row = None
    if len(rows) < 2 or not rows[0] or "criteri" not in rows[0][0].lower():
        return [], []
    header = rows[0]
    weight_col = next((i for i, h in enumerate(header) if h.lower() in ("weight", "weighting")), None)
    level_cols = [i for i in range(1, len(header)) if i != weight_col]
    criteria = [
        Criterion(
            name=r[0],
            weight=r[weight_col] if weight_col is not None and weight_col < len(r) else "",
            levels={header[i]: r[i] for i in level_cols if i < len(r) and r[i]},
        )
        for r in rows[1:]
        if r and r[0]
    ]
    return criteria, [header[i] for i in level_cols]


_HEADING = re.compile(r"^##\s+(.+?)\s*$")
_LEVEL = re.compile(r"^[-*]\s+\**([^:*]+?)\**\s*:\s*(.+)$")


def _from_headings(body: str) -> tuple[list[Criterion], list[str]]:
    criteria: list[Criterion] = []
    name, levels = None, {}
    for line in body.splitlines():
        heading = _HEADING.match(line)
        if heading:
            if name:
                criteria.append(Criterion(name=name, levels=levels))
            name, levels = heading.group(1), {}
            continue
        level = _LEVEL.match(line.strip())
        if name and level:
            levels[level.group(1).strip()] = level.group(2).strip()
    if name:
        criteria.append(Criterion(name=name, levels=levels))
    criteria = [c for c in criteria if c.levels]
    return criteria, list(dict.fromkeys(level for c in criteria for level in c.levels))
