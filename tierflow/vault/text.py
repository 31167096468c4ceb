"""Reading a note's text as Obsidian does: the one way tierflow opens a note, and what of it a model may see.

`read_note_text` decodes UTF-8 with or without a byte-order mark (Windows Notepad writes one), so the
front-matter is found either way. `hide_comments` removes what Obsidian hides from the reader, `%%...%%`
and `<!-- ... -->` comments, where people keep private remarks; it is applied to every note body before it
can reach a prompt.
"""

from __future__ import annotations

import re
from pathlib import Path

import frontmatter

from tierflow.vault.annotations import without_code

__all__ = ["hide_comments", "load_note", "read_note_text"]

# An unclosed comment runs to the end of the note, as it does in Obsidian (and HTML): better to send less
# than to send a private remark.
_COMMENT_RE = re.compile(r"%%.*?(?:%%|\Z)|<!--.*?(?:-->|\Z)", re.DOTALL)


def read_note_text(path: Path) -> str:
    """A note's text, decoded as UTF-8 with an optional byte-order mark dropped.

    Raises UnicodeDecodeError (not UTF-8) and OSError as `Path.read_text` does.
    """
    return path.read_bytes().decode("utf-8-sig")


def load_note(path: Path) -> frontmatter.Post:
    """A note's front-matter and body (python-frontmatter), read by `read_note_text`."""
    return frontmatter.loads(read_note_text(path))


def hide_comments(text: str) -> str:
    """`text` without Obsidian comments (`%%...%%`, inline or over lines) and HTML comments, outside code.

    Each comment's line breaks are kept, so line numbers in what remains are those of the note. `%%` or
    `<!--` written inside a code span or code block is an example, not a comment, and is kept.
    """
    if "%%" not in text and "<!--" not in text:
        return text
    masked = without_code(text)  # same length: offsets found in it are offsets in `text`
    pieces: list[str] = []
    done = 0
    for m in _COMMENT_RE.finditer(masked):
        pieces += [text[done : m.start()], "\n" * text.count("\n", m.start(), m.end())]
        done = m.end()
    pieces.append(text[done:])
    return "".join(pieces)
