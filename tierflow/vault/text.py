"""Reading a note's text as Obsidian does: the one way tierflow opens a note, and what of it a model may see.

`read_note_text` decodes UTF-8 with or without a byte-order mark (Windows Notepad writes one), so the
front-matter is found either way. `split_front_matter` finds the front-matter by Obsidian's own rule, and
`parse_note` reads it: the one way tierflow tells a note's properties from its body. `hide_comments` removes
what Obsidian hides from the reader, `%%...%%` and `<!-- ... -->` comments, where people keep private remarks;
it is applied to every note body before it can reach a prompt.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import frontmatter
import yaml

from tierflow.vault.annotations import without_code

__all__ = [
    "COMMENT",
    "PropertyError",
    "escape_comments",
    "escape_links",
    "escape_property_links",
    "hide_comments",
    "load_note",
    "misplaced_front_matter",
    "note_text",
    "parse_note",
    "property_list",
    "property_text",
    "read_note_text",
    "split_front_matter",
    "text_version",
    "yaml_problem",
    "YAML_DUMPER",
    "YAML_LOADER",
    "unclosed_comment",
    "unescape_comments",
    "unescape_links",
]

# An unclosed comment runs to the end of the note, as it does in Obsidian (and HTML): better to send less
# than to send a private remark.
COMMENT = re.compile(r"%%.*?(?:%%|\Z)|<!--.*?(?:-->|\Z)", re.DOTALL)


def read_note_text(path: Path) -> str:
    """A note's text, decoded as UTF-8 with an optional byte-order mark dropped.

    Raises UnicodeDecodeError (not UTF-8) and OSError as `Path.read_text` does.
    """
    return path.read_bytes().decode("utf-8-sig")


def load_note(path: Path) -> frontmatter.Post:
    """A note's front-matter and body (`parse_note`), read by `read_note_text`."""
    return parse_note(read_note_text(path))


# Obsidian's getFrontMatterInfo (Obsidian 1.x): a `---` line as the note's very first line opens the properties, and
# the first later line that is exactly `---` (nothing after it but the line end, or the end of the file) closes them.
# No closing line: there are no properties, and the whole note is body (the opening `---` is a thematic break). A
# `---` after blank lines, `----`, `--- ` with a trailing space, or a YAML `...` opens or closes nothing.
_FRONT_MATTER_OPEN = re.compile(r"---\r?\n")
_FRONT_MATTER_CLOSE = re.compile(r"(?<=\n)---(?:\r?\n|\Z)")
_OPENS_WITH_RULE = re.compile(r"\ufeff?\s*---")  # a `---` line after nothing but blank lines (a BOM first)
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's when present: the same values, faster


class YAML_LOADER(_SAFE_LOADER):  # noqa: N801 (a constant to its users: the one loader of front-matter)
    """The safe YAML loader every note's front-matter is read with: its plain scalars as Obsidian reads them.

    Obsidian parses properties as YAML 1.2 (the `yaml` package's core schema), PyYAML as YAML 1.1: there `yes`,
    `no`, `on`, `off` (`language: no` for Norwegian) are booleans, `12:30` is the number 750 and `0123` is 83.
    Here, as in Obsidian, only `true`/`false` are booleans, and `12:30` and `1_000` are text. A number written with
    a leading zero (`student_id: 0123489`) is kept as the text written, where Obsidian shows 123489 and YAML 1.1
    read it as text or, digits 0-7 only, as octal: an id must not lose its zero. A number YAML 1.1 read as text
    (`1e3`, `0o17`, `+.5`) is text too: tierflow wrote such text bare before it quoted it (`YAML_DUMPER`), and a
    hash like `86e5014965866131` must not become the number inf. Dates (`2026-03-29`,
    `2026-03-29T00:30:00+02:00`) are still read as dates.
    """

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        """A mapping, refused when a key is written twice: Obsidian's parser refuses it (its properties are shown
        as invalid), where PyYAML kept the last value and the note was dated by its second `date:` unseen."""
        seen: set[str] = set()
        for key, _ in node.value if isinstance(node, yaml.MappingNode) else []:
            if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                if key.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"'{key.value}' is written twice",
                        key.start_mark,
                    )
                seen.add(key.value)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: Any) -> int:
        text = str(self.construct_scalar(node))
        return int(text, 0) if text[:2] in ("0o", "0x") else int(text, 10)


_YAML_1_1_ONLY = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
YAML_LOADER.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML_1_1_ONLY]
    for first, resolvers in _SAFE_LOADER.yaml_implicit_resolvers.items()
}
YAML_LOADER.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# The numbers YAML 1.2 and YAML 1.1 both read, as the same number: no text tierflow ever wrote bare is read otherwise.
YAML_LOADER.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
YAML_LOADER.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?|\.[0-9]+(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)
YAML_LOADER.add_constructor("tag:yaml.org,2002:int", YAML_LOADER.construct_yaml_int)


class YAML_DUMPER(yaml.SafeDumper):  # noqa: N801 (a constant to its users: the one writer of front-matter)
    """The safe YAML dumper tierflow writes front-matter with: a string that YAML 1.1 (PyYAML, `YAML_LOADER`'s
    base) or YAML 1.2 (Obsidian) would read as anything but text is quoted. PyYAML left `1e3`, `0o17` and
    `0123489` bare, which Obsidian reads as the numbers 1000, 15 and 123489 (another student's id)."""


# YAML 1.2's core schema numbers, as Obsidian reads them (a leading zero too).
_YAML_1_2_NUMBER = re.compile(
    r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+|[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?)$"
)
YAML_DUMPER.yaml_implicit_resolvers = {
    first: [
        *yaml.SafeDumper.yaml_implicit_resolvers.get(first, []),
        *YAML_LOADER.yaml_implicit_resolvers.get(first, []),
    ]
    for first in {*yaml.SafeDumper.yaml_implicit_resolvers, *YAML_LOADER.yaml_implicit_resolvers}
}
YAML_DUMPER.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_1_2_NUMBER, list("-+.0123456789"))


def split_front_matter(text: str) -> tuple[str | None, str]:
    """A note's front-matter YAML and its body, as Obsidian tells them apart; (None, text) when the note has none.

    The YAML is the text between the `---` lines, starting on the note's line 2 (`yaml_problem` counts from there).
    A byte-order mark before the first `---` is dropped, as `read_note_text` drops it.
    """
    text = text.removeprefix("\ufeff")
    opened = _FRONT_MATTER_OPEN.match(text)
    closed = _FRONT_MATTER_CLOSE.search(text, opened.end()) if opened else None
    if opened is None or closed is None:
        return None, text
    return text[opened.end() : closed.start()], text[closed.end() :]


def misplaced_front_matter(text: str) -> tuple[str, dict[str, Any]] | None:
    """Why a note whose top reads as properties has none for Obsidian (`split_front_matter`), with the fix, and the
    properties it meant; None when it has front-matter, or nothing that would be one. Its `---` lines are after
    blank lines, or have spaces beside them: Obsidian shows what lies between them as text."""
    # Most notes open with no `---` at all: told at once, without splitting a long note into lines.
    if not _OPENS_WITH_RULE.match(text) or split_front_matter(text)[0] is not None:
        return None
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None or lines[first].strip() != "---":
        return None
    last = next((i for i in range(first + 1, len(lines)) if lines[i].strip() == "---"), None)
    if last is None:
        return None
    try:
        meant = yaml.load("\n".join(lines[first + 1 : last]), Loader=YAML_LOADER)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError):
        return None
    if not isinstance(meant, dict) or not meant:
        return None
    fixes = [f"delete the blank line{'s' if first > 1 else ''} before line {first + 1}"] if first else []
    fixes += [f"delete the spaces on line {i + 1}" for i in (first, last) if lines[i] != "---"]
    why = (
        f"Obsidian shows its properties as text, not as properties: they must start at a `---` on the note's first "
        f"line and end at a line that is exactly `---`; {' and '.join(fixes)}"
    )
    return why, meant


def parse_note(text: str) -> frontmatter.Post:
    """A note's properties and body (stripped of surrounding blank lines), split by `split_front_matter`.

    Raises yaml.YAMLError when the front-matter is closed but its YAML does not parse, a value YAML cannot build
    (`date: 2024-13-45`) included; YAML that is no mapping (a lone word) gives no properties, as python-frontmatter
    did. A property named `content` or `handler` is a property like any other.
    """
    fm, body = split_front_matter(text)
    try:
        loaded = yaml.load(fm, Loader=YAML_LOADER) if fm else None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise yaml.YAMLError(f"invalid value ({exc})") from exc
    post = frontmatter.Post(body.strip())
    post.metadata = loaded if isinstance(loaded, dict) else {}
    return post


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a front-matter YAML error, with its line and column counted in the note it came from: the
    YAML starts on the note's line 2, after the opening `---` (`split_front_matter`)."""

    def where(mark: Any) -> str:
        return f"line {mark.line + 2}, column {mark.column + 1}"

    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem or mark is None:
        return " ".join(str(exc).split())
    detail = f"{problem} at {where(mark)}"
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        detail += f" ({context} started at {where(context_mark)})"
    return detail


def hide_comments(text: str) -> str:
    """`text` without Obsidian comments (`%%...%%`, inline or over lines) and HTML comments, outside code.

    Each comment's line breaks are kept, so line numbers in what remains are those of the note. `%%` or
    `<!--` written inside a code span or code block is an example, not a comment, and is kept.
    """
    if "%%" not in text and "<!--" not in text:
        return text
    return _outside_code(text, COMMENT, lambda m: "\n" * text.count("\n", m.start(), m.end()))


def _outside_code(text: str, pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str]) -> str:
    """`text` with each match of `pattern` outside code replaced by `replace(match)`: the pattern is matched in
    `without_code(text)`, of the same length, so a match's offsets are offsets in `text`."""
    masked = without_code(text)
    pieces: list[str] = []
    done = 0
    for m in pattern.finditer(masked):
        pieces += [text[done : m.start()], replace(m)]
        done = m.end()
    pieces.append(text[done:])
    return "".join(pieces)


# Someone else's text written into a note (a student's essay) with what would start a comment as HTML entities,
# which Obsidian shows as the characters: "40%%" stays "40%%" on screen and hides nothing after it.
_ESCAPES = {"%%": "%&#37;", "<!--": "&lt;!--"}
_OPENER = re.compile("|".join(map(re.escape, _ESCAPES)))
_ESCAPED = re.compile("|".join(map(re.escape, _ESCAPES.values())))
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}


def escape_comments(text: str) -> str:
    """`text` for a note, shown by Obsidian as written: every `%%` as `%&#37;` and every `<!--` as `&lt;!--`, so
    that no comment starts in it (code spans too: there Obsidian shows the entity, but none of it is hidden)."""
    return _OPENER.sub(lambda m: _ESCAPES[m.group()], text)


def unescape_comments(text: str) -> str:
    """`escape_comments` undone: the writer's own characters, for a prompt, once `hide_comments` has run."""
    return _ESCAPED.sub(lambda m: _UNESCAPES[m.group()], text)


# Likewise what would start a link: `[[` (a wikilink, `![[...]]` an embed) and `](` (a Markdown link) to anything but
# a web address. Obsidian shows `[&#91;` as `[[` and `]&#40;` as `](`, and links nothing; so does any CommonMark
# renderer (the HTML a platform is sent), which reads an entity as the character and never as a link's mark.
_LINK_ESCAPES = {"[[": "[&#91;", "](": "]&#40;"}
_LINK_OPENER = re.compile(r"\[\[|\]\((?![A-Za-z][A-Za-z0-9+.-]*:)")
_ANY_LINK_OPENER = re.compile(r"\[\[|\]\(")
_LINK_ESCAPED = re.compile("|".join(map(re.escape, _LINK_ESCAPES.values())))
_LINK_UNESCAPES = {v: k for k, v in _LINK_ESCAPES.items()}


def escape_links(text: str, *, web: bool = False) -> str:
    """`text` for a note, shown by Obsidian as written and linking nothing: every `[[` as `[&#91;` and every `](`
    not followed by a web address's scheme as `]&#40;`, outside code (where Obsidian makes no link and would show
    the entity itself). `web`: a `](` before a web address too, for text that must reach its reader as typed (a
    draft the student is sent), not as a link someone else wrote."""
    if "[[" not in text and "](" not in text:
        return text
    return _outside_code(text, _ANY_LINK_OPENER if web else _LINK_OPENER, lambda m: _LINK_ESCAPES[m.group()[:2]])


def escape_property_links(value: str) -> str:
    """A front-matter value from outside (a file's name, a document's author) as `escape_links` writes text, but
    everywhere in it: a property has no code, and Obsidian links a `[[...]]` in its value wherever it stands."""
    return _LINK_OPENER.sub(lambda m: _LINK_ESCAPES[m.group()[:2]], value)


def unescape_links(text: str) -> str:
    """`escape_links` undone: the writer's own characters, for a prompt or for the student."""
    return _LINK_ESCAPED.sub(lambda m: _LINK_UNESCAPES[m.group()], text)


def note_text(body: str) -> str:
    """A note's body as a run reads it: comments hidden, and the `%%`, `<!--`, `[[` and `](` an import escaped (a
    student's own) the characters again."""
    return unescape_links(unescape_comments(hide_comments(body)))


def text_version(text: str) -> str:
    """A short hash of a text as a reader takes it, whitespace runs counting as one space: what a feedback draft
    records of the submission it was written for, so that a new submission (or an edited note) is told from the
    one drafted, and an editor's line ends or trailing spaces are not."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()[:16]


def unclosed_comment(text: str) -> int | None:
    """Where a comment that is never closed starts in `text` (outside code), hiding the rest; None if none does."""
    if "%%" not in text and "<!--" not in text:
        return None
    last = next(reversed(list(COMMENT.finditer(without_code(text)))), None)
    if last is None or last.end() < len(text):
        return None
    found = last.group()
    closed = found[2:].endswith("%%") if found.startswith("%%") else found[4:].endswith("-->")
    return None if closed else last.start()


_WHOLE_WIKILINK = re.compile(r"\[\[([^\[\]|]+)(?:\|([^\[\]]+))?\]\]")


def _shown(value: str) -> str:
    """A property value that is one wikilink (`"[[Jane Doe]]"`, `"[[Doe2020|Jane Doe]]"`) as Obsidian shows it, the
    link's text; any other value as it is. Unquoted, YAML reads `[[Jane Doe]]` as a list in a list, read the same."""
    link = _WHOLE_WIKILINK.fullmatch(value)
    return value if link is None else (link.group(2) or link.group(1)).strip()


class PropertyError(ValueError):
    """A front-matter property whose value cannot mean what tierflow reads it for (a mapping for a name)."""


def property_list(meta: dict[str, Any], key: str) -> list[str]:
    """A list-valued front-matter property (`aliases`, `authors`, `tags`) as strings, read as Obsidian reads it.

    A single value (`aliases: 1989`, `authors: Jane Doe`) is a one-item list, nested lists (an unquoted
    `[[wikilink]]`) are flattened, a quoted `"[[wikilink]]"` is its text, and empty items dropped. A mapping
    among the values has no name to read: `PropertyError` says which property and how to write it.
    """
    out: list[str] = []
    stack: list[Any] = [meta.get(key)]
    while stack:
        value = stack.pop(0)
        if value is None or value == "":
            continue
        if isinstance(value, dict):
            raise PropertyError(f"property '{key}' holds a mapping; write it as a list of names ({key}: [A, B])")
        if isinstance(value, list | tuple | set):
            stack[:0] = list(value)
            continue
        out.append(_shown(str(value).strip()))
    return [v for v in out if v]


def property_text(meta: dict[str, Any], key: str) -> str:
    """A one-value front-matter property (`title`, `citekey`, `year`) as text, "" when missing.

    A number or date is its text; a one-item list (`title: [[Feedback]]` read by YAML) is that item.
    Anything else, a mapping or several values, is a `PropertyError` saying how to write it.
    """
    value = meta.get(key)
    if isinstance(value, list | tuple) and len(value) <= 1:
        items = property_list(meta, key)
        if len(items) <= 1:
            return items[0] if items else ""
    if isinstance(value, dict | list | tuple | set):
        raise PropertyError(f"property '{key}' holds {type(value).__name__} values; write one value ({key}: text)")
    return "" if value is None else _shown(str(value).strip())
