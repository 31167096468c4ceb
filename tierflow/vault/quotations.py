"""Quotations a model writes inside its prose: text in double quotation marks and Markdown blockquotes.

`inline_quotations` finds them, with the text around each that may say whose words they are; `quoted_in` says
whether one is someone's words in a text, through `locate`. Only a span long enough to claim someone's words is a
quotation: `MIN_WORDS` words, or `MIN_SPACELESS` letters of a script written without spaces. Scare quotes and
terms ("formative", "feedback literacy", 「形成的評価」) are left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tierflow.vault.annotations import CALLOUT_HEAD, locate, without_code

__all__ = ["MIN_SPACELESS", "MIN_WORDS", "InlineQuotation", "inline_quotations", "not_quoted", "problem", "quoted_in"]

MIN_WORDS = 4
"""Three words in quotation marks are nearly always a term or a scare quote ("assessment for learning"); a claim
that someone wrote something runs to a clause, which four words already make ("feedback always doubles learning")."""
MIN_SPACELESS = 8
"""Chinese, Japanese, Thai... have no spaces to count: a term in 「」 or “” is rarely longer than 6 or 7 characters
(形成的評価, フィードバック), a clause is longer."""

# Each pair of marks a quotation may stand in: straight, English curly, German and Polish low-high, guillemets,
# CJK corner brackets. Non-greedy, and never across a blank line (the text is split into paragraphs first).
_SPAN = re.compile(
    r'"(?P<straight>[^"]+?)"'
    r"|\u201c(?P<curly>[^\u201c\u201d]+?)\u201d"
    r"|\u201e(?P<low>[^\u201e\u201c\u201d]+?)[\u201c\u201d]"
    r"|\u00ab(?P<guillemets>[^\u00ab\u00bb]+?)\u00bb"
    r"|\u300c(?P<corner>[^\u300c\u300d]+?)\u300d"
    r"|\u300e(?P<white_corner>[^\u300e\u300f]+?)\u300f"
)
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_BLOCKQUOTE = re.compile(r"^ {0,3}>")
_QUOTE_PREFIX = re.compile(r"^ {0,3}(?:>[ \t]?)+")
_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f](?=\s|$)")
# What may follow a blockquote's words to say whose they are: `(hattie2007)`, `[[Note]]`, `— Hattie (2007)`.
_ATTRIBUTION = re.compile(
    r"(?:\s*(?:\((?:[^()\n]{0,160})\)|\[\[[^\]\n]{0,200}\]\]|@[\w:-]+))+\s*$"
    r"|\s*(?:[\u2014\u2015\u2013]|--)\s*(?:\S+\s*){1,12}$"
)
_ELISION = re.compile(r"\s*(?:\[\s*(?:\.\s*){3}\]|\[\u2026\]|\.\s*\.\s*\.|\u2026)\s*")
_SPACELESS = re.compile(
    "[\u3005\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
    "\U00020000-\U0003134f\u0e00-\u0eff\u1780-\u17ff\u1000-\u109f]"
)
_TRAILING = ".,;:!?\u3002\u3001\uff0c\uff1b\uff1a\uff01\uff1f"
_QUOTE_CALLOUTS = {"quote", "cite"}


@dataclass(frozen=True)
class InlineQuotation:
    """One quotation in a text: its words, and the text before and after it that may say whose they are."""

    text: str
    before: str = ""
    """The sentence up to the opening mark (a blockquote: the line before it)."""
    after: str = ""
    """What follows the closing mark on its paragraph (a blockquote: the attribution its last line ends with)."""


def long_enough(text: str) -> bool:
    """Whether a span in quotation marks is long enough to claim someone's words (`MIN_WORDS`, `MIN_SPACELESS`)."""
    return len(text.split()) >= MIN_WORDS or len(_SPACELESS.findall(text)) >= MIN_SPACELESS


def inline_quotations(text: str) -> list[InlineQuotation]:
    """The quotations in `text`, outside code: each span in double quotation marks (`long_enough`), and each
    blockquote with none inside it (a `> [!quote]` callout too, not another callout), its attribution apart."""
    masked = without_code(text)  # same length as `text`: offsets into it are offsets into `text`
    found: list[InlineQuotation] = []
    start = 0
    for para in [*_PARAGRAPH.finditer(masked), None]:
        end = para.start() if para else len(masked)
        found += _spans(text, masked, start, end)
        start = para.end() if para else end
    found += _blockquotes(text, masked)
    return found


def _spans(text: str, masked: str, start: int, end: int) -> list[InlineQuotation]:
    out = []
    done = start
    for m in _SPAN.finditer(masked, start, end):
        open_at, close_at = m.start(), m.end()
        words = text[open_at + 1 : close_at - 1]
        if long_enough(words):
            before = text[done:open_at]
            cut = list(_SENTENCE_END.finditer(before))
            out.append(
                InlineQuotation(words.strip(), before[cut[-1].end() :] if cut else before, text[close_at:end][:200])
            )
        done = close_at
    return out


def _blockquotes(text: str, masked: str) -> list[InlineQuotation]:
    lines, masked_lines = text.split("\n"), masked.split("\n")
    out = []
    i = 0
    while i < len(lines):
        if not _BLOCKQUOTE.match(masked_lines[i]):
            i += 1
            continue
        first = i
        while i < len(lines) and _BLOCKQUOTE.match(masked_lines[i]):
            i += 1
        block = [_QUOTE_PREFIX.sub("", line) for line in lines[first:i]]
        head = CALLOUT_HEAD.match(block[0].strip())
        if head:
            if head.group(1).casefold() not in _QUOTE_CALLOUTS:
                continue
            block = block[1:]
        # A separate last line that only says whose words they are: `— Hattie and Timperley (2007)`.
        attribution = ""
        if len(block) > 1 and re.match(r"\s*(?:[\u2014\u2015\u2013]|--)", block[-1]):
            attribution = block.pop()
        words = " ".join(line.strip() for line in block).strip()
        if not words or _SPAN.search(words):  # the spans inside it are the quotation, found as spans
            continue
        tail = _ATTRIBUTION.search(words)
        if tail and tail.start() > 0:
            attribution = f"{words[tail.start() :]} {attribution}".strip()
            words = words[: tail.start()].strip()
        if long_enough(words):
            before = next((line for line in reversed(lines[:first]) if line.strip()), "")
            out.append(InlineQuotation(words, before[-200:], attribution))
    return out


def quoted_in(quotation: str, body: str) -> bool:
    """Whether `quotation` is in `body` word for word, by `locate`, as a writer may quote: its parts around an
    elision (`...`, `…`, `[...]`) each found, a full stop or comma put inside the marks, and its first letter's
    case changed to fit the sentence quoting it."""
    parts = [p.strip() for p in _ELISION.split(quotation)]
    parts = [p for p in parts if p.strip(_TRAILING + " ")]
    return bool(parts) and all(_found(p, body) for p in parts)


def _found(part: str, body: str) -> bool:
    trimmed = part.rstrip(_TRAILING).rstrip()
    for candidate in dict.fromkeys((part, trimmed)):
        if not candidate:
            continue
        if locate(candidate, body) or locate(candidate[0].swapcase() + candidate[1:], body):
            return True
    return False


def not_quoted(prose: str, *texts: str) -> list[str]:
    """The quotations in `prose` (`inline_quotations`) found word for word in none of `texts`."""
    return [q.text for q in inline_quotations(prose) if not any(quoted_in(q.text, t) for t in texts)]


def problem(quotation: str, where: str) -> str:
    """What a check says of a quotation in the prose not found word for word in `where`."""
    return (
        f"quotation {quotation[:60]!r} is not word for word in {where}; "
        "quote it exactly or do not put it in quotation marks"
    )
