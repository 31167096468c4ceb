"""Parse reader annotations out of a literature note's Markdown body.

Three layouts are understood:

* Zotero Integration: blockquotes (or paragraphs / bullets) holding ``<mark class="hltr-...">`` highlights
  and a citation link to ``zotero://``, optionally followed by a ``Comment:`` line.
* Readwise: bullets under ``## Highlights`` ending in ``([View Highlight](...))`` with ``- Note:``
  sub-bullets.
* Plain Obsidian: ``==highlights==``, ``> [!quote]`` / ``> [!note]`` callouts, plain blockquotes, and the
  bullets / paragraphs under a notes heading (``## My notes``, ``## Thoughts``...).

The block structure (blockquotes, nested lists, paragraphs) comes from markdown-it-py's syntax tree; only
inline details (locators, block ids, ``<mark>`` tags, ``==x==``) are picked out with small regexes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

__all__ = [
    "CALLOUT_HEAD",
    "Annotation",
    "detect_source_format",
    "locate",
    "mask_code_spans",
    "parse_annotations",
    "without_code",
    "word_pattern",
]

Kind = Literal["highlight", "quote", "comment", "note"]
SourceFormat = Literal["zotero", "readwise", "obsidian"]


@dataclass(frozen=True)
class Annotation:
    """One annotation found in a literature note.

    ``highlight``/``quote`` hold source text; ``comment`` is the reader's comment on the annotation just
    before it (the same comment is also on that annotation's ``comment`` field); ``note`` is the reader's
    own free-standing bullet, paragraph or callout.
    """

    kind: Kind
    text: str
    comment: str | None = None
    page: str | None = None  # "81", "12-13"; Kindle locations are given as "loc. 123"
    block_id: str | None = None  # without the caret
    link: str | None = None  # zotero://... or the Readwise "View Highlight" URL
    color: str | None = None  # "yellow" from class="hltr-yellow", or the CSS colour of a styled <mark>
    source_format: SourceFormat = "obsidian"
    line: int = 0  # 1-based line in the body where the annotation starts


# "commonmark" keeps raw inline HTML in the inline content, so <mark ...> tags survive for us to read.
_MD = MarkdownIt("commonmark")

# --- inline patterns ---------------------------------------------------------------------------------

# Repetition bounds ({0,300} etc.) keep every pattern linear on garbage such as "<mark <mark <mark ...":
# an unbounded [^>]* would rescan to the end of the text from each `<mark`.
_MARK_OPEN_RE = re.compile(r"<mark\b[^>]{0,300}>", re.IGNORECASE)
_MARK_TAG_RE = re.compile(r"</?mark\b[^>]{0,300}>", re.IGNORECASE)
_HLTR_CLASS_RE = re.compile(r"""class\s*=\s*["']?[^"'>]{0,200}?\bhltr-([\w-]+)""", re.IGNORECASE)
_MARK_STYLE_RE = re.compile(r"""<mark\b[^>]{0,200}?background(?:-color)?\s*:\s*([^;"'>]{1,40})""", re.IGNORECASE)
# ==x== with no space just inside the markers (Obsidian's rule). The content may hold a single `=` but
# never `==`, so a failed attempt stops at the next `==` instead of scanning the rest of the text.
_EQ_HL_RE = re.compile(r"(?<!=)==(?=[^\s=])((?:[^=]|=(?!=))+?)(?<=[^\s=])==(?!=)")
_BACKTICKS_RE = re.compile(r"`+")
_BLOCK_ID_RE = re.compile(r"(?:^|\s)\^([A-Za-z0-9][A-Za-z0-9-]*)\s*$")
_BLOCK_ID_ONLY_RE = re.compile(r"\^([A-Za-z0-9][A-Za-z0-9-]*)")
# Possessive `*+` and no leading `\s*`: a search that starts with `\s*` retries at every position of a long
# run of spaces, which made these quadratic. The _TRAILING_* patterns match text already right-stripped.
_MD_LINK_RE = re.compile(r"\[([^\[\]]*+)\]\(\s*+<?([^()\s<>]*+)>?\s*+\)")
_TRAILING_PAREN_LINK_RE = re.compile(r"\(\s*+\[([^\[\]]*+)\]\(\s*+<?([^()\s<>]*+)>?\s*+\)\s*+\)$")
_TRAILING_LINK_RE = re.compile(r"\[([^\[\]]*+)\]\(\s*+<?([^()\s<>]*+)>?\s*+\)$")
_TRAILING_PAREN_RE = re.compile(r"\(([^()]*+)\)$")
_PAGE_RE = re.compile(
    r"(?<![\w.])(?:pp?\.|pages?|pg\.?)\s*((?:\d+|[ivxlcdm]+)[a-z]?(?:\s*[-\u2013\u2014]\s*(?:\d+|[ivxlcdm]+)[a-z]?)?)\b",
    re.IGNORECASE,
)
_LOCATION_RE = re.compile(r"(?<![\w.])(?:location|loc\.?)\s*(\d+(?:\s*[-\u2013\u2014]\s*\d+)?)\b", re.IGNORECASE)
_BARE_PAGE_RE = re.compile(r"^\s*(\d+(?:\s*[-\u2013\u2014]\s*\d+)?)\s*$")
_AUTHOR_YEAR_RE = re.compile(r"\b(?:1[5-9]|20)\d\d[a-z]?\b")
_COMMENT_PREFIX_RE = re.compile(r"^(?:\*\*|__)?(?:comments?|notes?)(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*", re.IGNORECASE)
_DASH_COMMENT_RE = re.compile(r"^[\u2014\u2013]\s+")
_TAGS_PREFIX_RE = re.compile(r"^(?:\*\*|__)?tags?(?:\*\*|__)?\s*:", re.IGNORECASE)
CALLOUT_HEAD = re.compile(r"^\[!([^\]|\s]+)(?:\|([^\]]*))?\][+-]?[ \t]*(.*)$")
"""A callout's first line after its `>`: type, metadata (`[!quote|yellow]`), title (`[!tip]- Title`)."""
_TITLE_QUOTE_RE = re.compile(r"^\s*(?:[\"\u201c\u201e]|<mark\b|==)", re.IGNORECASE)
_HEADING_RE = re.compile(r"^ {0,3}#{1,6}[ \t]+highlights\b", re.IGNORECASE | re.MULTILINE)
_READWISE_LINK_RE = re.compile(r"\[view highlight\]\(|readwise\.io", re.IGNORECASE)
_ZOTERO_RE = re.compile(r"zotero://|\bhltr-", re.IGNORECASE)

# Straight/curly double quotes that may wrap a highlight, as (opening, closing) pairs.
_QUOTE_PAIRS = (('"', '"'), ("\u201c", "\u201d"), ("\u201e", "\u201c"), ("\u201e", "\u201d"))

# --- headings ----------------------------------------------------------------------------------------

_SKIP_HEADINGS = {
    "metadata",
    "meta",
    "properties",
    "front matter",
    "frontmatter",
    "info",
    "information",
    "bibliography",
    "references",
    "reference",
    "citation",
    "tags",
    "links",
    "related",
    "see also",
}
_NOTE_HEADINGS = {
    "notes",
    "note",
    "my notes",
    "my own notes",
    "own notes",
    "personal notes",
    "reading notes",
    "thoughts",
    "my thoughts",
    "comments",
    "my comments",
    "reflections",
    "reflection",
    "ideas",
    "takeaways",
    "key takeaways",
    "my summary",
    "key claims",
    "key points",
    "main points",
}
_HIGHLIGHT_HEADINGS = {"highlights", "annotations", "my highlights"}
_QUOTE_HEADINGS = {"quotes", "excerpts", "quotations", "key quotes"}

Section = Literal["skip", "notes", "highlights", "quotes", "other"]

# Callout types: the Zotero Integration template puts metadata in [!info] and the abstract in
# [!abstract], so only the types below count as annotations; the rest are ignored.
_CALLOUT_KINDS: dict[str, Kind] = {
    "quote": "quote",
    "cite": "quote",
    "highlight": "highlight",
    "note": "note",
    "comment": "note",
    "thought": "note",
    "thoughts": "note",
    "idea": "note",
    "question": "note",
    "summary": "note",
    "tip": "note",
    "important": "note",
}


def _classify_heading(text: str) -> Section | None:
    """Section kind for a heading, or None when it should inherit from the enclosing heading."""
    t = _MARK_TAG_RE.sub("", text).replace("==", "")
    t = re.sub(r"[*_`#]", "", t).strip().rstrip(":").strip().casefold()
    # Drop a leading emoji / symbol ("📝 Notes").
    t = re.sub(r"^[^\w]+", "", t)
    if t in _SKIP_HEADINGS:
        return "skip"
    if t in _NOTE_HEADINGS:
        return "notes"
    # Readwise writes "Highlights first synced by #Readwise [[2023-01-01]]".
    if t in _HIGHLIGHT_HEADINGS or t.startswith("highlights "):
        return "highlights"
    if t in _QUOTE_HEADINGS:
        return "quotes"
    return None


def detect_source_format(body: str) -> SourceFormat:
    """Which tool wrote the note: readwise, zotero, or plain obsidian."""
    if _HEADING_RE.search(body) and _READWISE_LINK_RE.search(body):
        return "readwise"
    if _ZOTERO_RE.search(body):
        return "zotero"
    return "obsidian"


# --- text helpers ------------------------------------------------------------------------------------


def _clean_lines(text: str) -> str:
    """Strip each line (trailing spaces are hard breaks, not text) and outer blank lines."""
    return "\n".join(line.strip() for line in text.split("\n")).strip()


def _strip_highlight_markup(text: str) -> str:
    text = _MARK_TAG_RE.sub("", text)
    # Loop because highlights can be nested inside <mark> or each other.
    for _ in range(3):
        new = _EQ_HL_RE.sub(r"\1", text)
        if new == text:
            break
        text = new
    return text


def _strip_surrounding_quotes(text: str) -> str:
    for opening, closing in _QUOTE_PAIRS:
        if len(text) >= 2 and text.startswith(opening) and text.endswith(closing):
            inner = text[len(opening) : -len(closing)]
            # `"A" and "B"` starts and ends with quotes that do not belong together: leave it.
            if opening == '"' and '"' in inner:
                continue
            if opening != '"' and (opening in inner or closing in inner):
                continue
            return inner.strip()
    return text


def _pop_block_id(text: str) -> tuple[str, str | None]:
    m = _BLOCK_ID_RE.search(text)
    if not m:
        return text, None
    return text[: m.start()].rstrip(), m.group(1)


def _normalise_range(value: str) -> str:
    return re.sub(r"\s*[-\u2013\u2014]\s*", "-", value.strip())


def _locator(text: str) -> str | None:
    """Page ("81", "81-82") or Kindle location ("loc. 123") named in a citation fragment."""
    m = _PAGE_RE.search(text)
    if m:
        return _normalise_range(m.group(1))
    m = _LOCATION_RE.search(text)
    if m:
        return "loc. " + _normalise_range(m.group(1))
    return None


def _page_from_url(url: str) -> str | None:
    try:
        query = parse_qs(urlsplit(url).query)
    except ValueError:
        return None
    pages = query.get("page")
    return pages[0] if pages and pages[0].strip() else None


def _is_source_link(label: str, url: str) -> bool:
    """A link that cites the source (Zotero / Readwise / a locator), as opposed to a link in the text."""
    u = url.casefold()
    if u.startswith("zotero://") or "readwise.io" in u:
        return True
    lab = label.casefold()
    return "view highlight" in lab or _locator(label) is not None


def _is_cited(text: str) -> bool:
    """True when a paragraph or bullet carries a Zotero/Readwise highlight marker or citation link."""
    if _MARK_OPEN_RE.search(text) or "zotero://" in text:
        return True
    return any(_is_source_link(label, url) for label, url in _MD_LINK_RE.findall(text))


@dataclass
class _Citation:
    text: str
    page: str | None = None
    link: str | None = None


def _split_citation(text: str) -> _Citation:
    """Remove trailing citation parts (links, "(p. 81)", "(Hattie, 2007)") and collect page and link."""
    cit = _Citation(text)
    url_page: str | None = None
    for _ in range(8):  # a handful of trailing groups at most; the bound keeps garbage input cheap
        t = cit.text = cit.text.rstrip()
        m = _TRAILING_PAREN_LINK_RE.search(t) or _TRAILING_LINK_RE.search(t)
        if m and _is_source_link(m.group(1), m.group(2)):
            label, url = m.group(1), m.group(2)
            cit.link = cit.link or url
            cit.page = cit.page or _locator(label)
            url_page = url_page or _page_from_url(url)
            cit.text = t[: m.start()]
            continue
        m = _TRAILING_PAREN_RE.search(t)
        if m:
            inner = m.group(1)
            loc = _locator(inner)
            # Only strip a parenthetical that looks like a citation, never "(see Table 1)".
            if loc or (_AUTHOR_YEAR_RE.search(inner) and "," in inner):
                cit.page = cit.page or loc
                cit.text = t[: m.start()]
                continue
        break
    if cit.page is None and cit.link is None:
        # A citation link in the middle of the text (e.g. before a trailing block id or comment).
        for label, url in _MD_LINK_RE.findall(text):
            if url.casefold().startswith("zotero://"):
                cit.link = url
                cit.page = _locator(label)
                url_page = _page_from_url(url)
                break
    # The printed page in the label wins over Zotero's `page=` (which is the PDF page index).
    cit.page = cit.page or url_page
    return cit


def _color(text: str) -> str | None:
    m = _HLTR_CLASS_RE.search(text)
    if m:
        return m.group(1).lower()
    m = _MARK_STYLE_RE.search(text)
    if m:
        return m.group(1).strip()
    return None


def mask_code_spans(text: str) -> str:
    """Blank out code spans (same length, newlines kept) so markup inside them is not read.

    A span runs from a backtick string to the next one of the same length (CommonMark). Done by pairing
    runs rather than with a backreference regex, which is cubic on a long run of backticks.
    """
    if "`" not in text:
        return text
    runs = [(m.start(), m.end()) for m in _BACKTICKS_RE.finditer(text)]
    next_same: list[int | None] = [None] * len(runs)
    last_of_length: dict[int, int] = {}
    for i in range(len(runs) - 1, -1, -1):
        length = runs[i][1] - runs[i][0]
        next_same[i] = last_of_length.get(length)
        last_of_length[length] = i
    pieces: list[str] = []
    done = i = 0
    while i < len(runs):
        j = next_same[i]
        if j is None:
            i += 1
            continue
        start, end = runs[i][0], runs[j][1]
        pieces += [text[done:start], re.sub(r"[^\n]", " ", text[start:end])]
        done, i = end, j + 1
    pieces.append(text[done:])
    return "".join(pieces)


_NEWLINE = re.compile(r"(\r\n?|\n)")


def without_code(text: str) -> str:
    """`text` with its code blanked out (same length, line breaks kept), so that `[[x]]` or `==x==` written
    as an example inside code is not read as a link or a highlight.

    Fenced and indented code blocks are found in markdown-it-py's syntax tree (in quotes and lists too); code
    spans inside each other block by CommonMark's backtick rule, since the tree keeps no inline offsets.
    """
    if "`" not in text and "~~~" not in text and "    " not in text and "\t" not in text:
        return text
    pieces = _NEWLINE.split(text)
    lines, breaks = pieces[0::2], pieces[1::2]
    for token in _MD.parse(text):
        if token.map is None:
            continue
        start, end = token.map
        if token.type in ("fence", "code_block"):
            for i in range(start, min(end, len(lines))):
                lines[i] = " " * len(lines[i])
        elif token.type == "inline" and "`" in token.content:
            block = "\n".join(lines[start:end])
            lines[start:end] = mask_code_spans(block).split("\n")
    return "".join(line + brk for line, brk in zip(lines, [*breaks, ""], strict=True))


def _inline_text(node: SyntaxTreeNode) -> str:
    """Raw inline Markdown of a paragraph/heading node (block markers such as `> ` already removed)."""
    for child in node.children:
        if child.type == "inline":
            return child.content
    return ""


def _start_line(node: SyntaxTreeNode) -> int:
    m = node.map
    return (m[0] + 1) if m else 0


def _descendant_lines(nodes: Iterable[SyntaxTreeNode]) -> list[tuple[int, str]]:
    """(line, text) for every paragraph below `nodes`, in document order, list markers dropped."""
    out: list[tuple[int, str]] = []
    for node in nodes:
        if node.type in ("paragraph", "heading"):
            start = _start_line(node)
            for i, line in enumerate(_inline_text(node).split("\n")):
                out.append((start + i, line))
        elif node.type in ("fence", "code_block", "html_block", "hr"):
            continue
        else:
            out.extend(_descendant_lines(node.children))
    return out


# --- the walker --------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, body: str) -> None:
        self.fmt: SourceFormat = detect_source_format(body)
        self.out: list[Annotation] = []
        self.headings: list[tuple[int, Section | None]] = []
        # Index in self.out of the source annotation that a following "Comment:" paragraph or a
        # stand-alone "^blockid" line may attach to; reset by any other block.
        self.attach_to: int | None = None

    # sections

    @property
    def section(self) -> Section:
        for _, kind in reversed(self.headings):
            if kind is not None:
                return kind
        return "other"

    def heading(self, node: SyntaxTreeNode) -> None:
        level = int(node.tag[1:]) if node.tag[1:].isdigit() else 1
        while self.headings and self.headings[-1][0] >= level:
            self.headings.pop()
        self.headings.append((level, _classify_heading(_inline_text(node))))

    # output

    def emit(self, ann: Annotation) -> int:
        self.out.append(ann)
        return len(self.out) - 1

    def emit_source(
        self, result: tuple[Annotation, int | None] | None, lines: list[tuple[int, str]], line: int
    ) -> None:
        """Emit a highlight/quote (its comment follows as a `comment` annotation) and remember it."""
        if result is None:
            self.attach_to = None
            return
        ann, comment_line = result
        ann = replace(ann, line=line)
        idx = self.emit(ann)
        if ann.comment:
            self.emit(self._comment_for(ann, ann.comment, comment_line or line))
        if ann.kind == "quote":
            # Partial `==x==` marks inside a longer quote are the reader's highlights within it.
            for n, s in lines:
                self.inline_highlights(s, n)
        self.attach_to = idx

    def _comment_for(self, parent: Annotation, comment: str, line: int) -> Annotation:
        return Annotation(
            kind="comment",
            text=comment,
            page=parent.page,
            link=parent.link,
            source_format=parent.source_format,
            line=line,
        )

    def attach_comment(self, comment: str, line: int) -> None:
        """Attach a `Comment:` paragraph that follows a quote to that quote."""
        assert self.attach_to is not None
        parent = self.out[self.attach_to]
        merged = f"{parent.comment}\n{comment}" if parent.comment else comment
        self.out[self.attach_to] = replace(parent, comment=merged)
        self.emit(self._comment_for(parent, comment, line))

    def inline_highlights(self, content: str, line: int) -> None:
        """`==x==` anywhere in reader text is a highlight of its own."""
        masked = mask_code_spans(content)
        pos = 0
        for m in _EQ_HL_RE.finditer(masked):
            line += masked.count("\n", pos, m.start())  # counted incrementally: linear in the paragraph
            pos = m.start()
            text = _clean_lines(_MARK_TAG_RE.sub("", content[m.start(1) : m.end(1)]))
            if text:
                self.emit(Annotation(kind="highlight", text=text, source_format=self.fmt, line=line))

    def emit_note(self, lines: list[tuple[int, str]], line: int, fallback: str = "") -> None:
        """One `note` from reader-written lines, plus any `==x==` highlights inside them."""
        body = _clean_lines("\n".join(s for _, s in lines)) or fallback.strip()
        text, block_id = _pop_block_id(body)
        text = _clean_lines(_strip_highlight_markup(text))
        if text:
            self.emit(Annotation(kind="note", text=text, block_id=block_id, source_format=self.fmt, line=line))
        for n, s in lines:
            self.inline_highlights(s, n)
        self.attach_to = None

    def source_annotation(
        self,
        lines: list[tuple[int, str]],
        *,
        kind: Kind,
        extra_comments: Sequence[str] = (),
        fallback_page: str | None = None,
    ) -> tuple[Annotation, int | None] | None:
        """Highlight/quote from raw lines: comment lines split off, citation and markup stripped.

        Returns the annotation and the line where an in-block comment starts (None if it has none).
        """
        quote: list[str] = []
        comment: list[str] = []
        comment_line: int | None = None
        have_quote = False  # a comment can only start once some quoted text came before it
        for number, raw in lines:
            line = raw.strip()
            if comment_line is None and have_quote:
                m = _COMMENT_PREFIX_RE.match(line) or _DASH_COMMENT_RE.match(line)
                if m:
                    comment_line = number
                    line = line[m.end() :]
            (comment if comment_line is not None else quote).append(line)
            have_quote = have_quote or bool(line)
        raw_text = _clean_lines("\n".join(quote))
        if not raw_text:
            return None
        comment_text = _clean_lines("\n".join(comment))
        # A block id ends the block: after the comment when there is one, else after the quote.
        comment_text, comment_block = _pop_block_id(comment_text)
        raw_text, block_id = _pop_block_id(raw_text)
        block_id = block_id or comment_block
        cit = _split_citation(raw_text)
        masked = mask_code_spans(raw_text)
        if kind != "note" and (
            _MARK_OPEN_RE.search(masked) or _EQ_HL_RE.fullmatch(_strip_surrounding_quotes(cit.text.strip()))
        ):
            kind = "highlight"
        text = _strip_surrounding_quotes(_clean_lines(_strip_highlight_markup(cit.text)))
        if not text:
            return None
        comments = [c for c in (comment_text, *extra_comments) if c]
        ann = Annotation(
            kind=kind,
            text=text,
            comment="\n".join(comments) if comments else None,
            page=cit.page or fallback_page,
            block_id=block_id,
            link=cit.link,
            color=_color(raw_text),
            source_format=self.fmt,
            line=lines[0][0],
        )
        return ann, (comment_line if comment_text else None)

    # blocks

    def block(self, node: SyntaxTreeNode) -> None:
        t = node.type
        if t == "heading":
            self.attach_to = None
            self.heading(node)
            return
        if t == "paragraph":
            self.paragraph(node)
            return
        if self.section == "skip":
            self.attach_to = None
            return
        if t == "blockquote":
            if not self.quote_comment(node):
                self.attach_to = None
                self.blockquote(node)
            return
        self.attach_to = None
        if t in ("bullet_list", "ordered_list"):
            for item in node.children:
                self.list_item(item)
        # Fences, code blocks, html blocks and rules carry no annotations.

    def paragraph(self, node: SyntaxTreeNode) -> None:
        content = _inline_text(node)
        line = _start_line(node)
        section = self.section
        if section == "skip":
            self.attach_to = None
            return
        stripped = content.strip()
        if self.attach_to is not None:
            m = _COMMENT_PREFIX_RE.match(stripped)
            if m:
                comment, _ = _pop_block_id(_clean_lines(stripped[m.end() :]))
                if comment:
                    self.attach_comment(comment, line)
                return
            m = _BLOCK_ID_ONLY_RE.fullmatch(stripped)
            if m:
                # `^id` on its own line after a blank line still names the quote above it.
                parent = self.out[self.attach_to]
                if parent.block_id is None:
                    self.out[self.attach_to] = replace(parent, block_id=m.group(1))
                self.attach_to = None
                return
        self.attach_to = None
        bare = stripped.strip("*_ ")  # "**My notes:**" too
        label = _classify_heading(bare[:-1]) if bare.endswith(":") and "\n" not in bare else None
        if label is not None:
            # "My own notes:" on a line of its own works as a heading until the next real heading.
            self.headings = [h for h in self.headings if h[0] <= 6] + [(7, label)]
            return
        lines = _lines_of(content, line)
        if _is_cited(mask_code_spans(content)):
            kind: Kind = "highlight" if section == "highlights" else "quote"
            self.emit_source(self.source_annotation(lines, kind=kind), lines, line)
        elif section == "notes":
            self.emit_note(lines, line)
        else:
            self.inline_highlights(content, line)

    def quote_comment(self, node: SyntaxTreeNode) -> bool:
        """Attach `> — comment` (a quote of its own right after a quote) to that quote; True if it did."""
        if self.attach_to is None:
            return False
        lines = _descendant_lines(node.children)
        text = _clean_lines("\n".join(s for _, s in lines))
        m = _DASH_COMMENT_RE.match(text) or _COMMENT_PREFIX_RE.match(text)
        if not m:
            return False
        comment, _ = _pop_block_id(_clean_lines(text[m.end() :]))
        if comment:
            self.attach_comment(comment, lines[0][0])
        return True

    def blockquote(self, node: SyntaxTreeNode) -> None:
        children = list(node.children)
        if children and children[0].type == "paragraph":
            head, _, rest = _inline_text(children[0]).partition("\n")
            m = CALLOUT_HEAD.match(head.strip())
            if m:
                self.callout(node, m.group(1).casefold(), m.group(2), m.group(3), rest)
                return
        line = _start_line(node)
        lines = _descendant_lines(c for c in children if c.type != "blockquote")
        self.emit_source(self.source_annotation(lines, kind="quote") if lines else None, lines, line)
        self.nested_quotes(children)

    def nested_quotes(self, children: list[SyntaxTreeNode]) -> None:
        """Nested quotes (`> > x`) are annotations of their own; a later `Comment:` goes to the outer one."""
        attach = self.attach_to
        for child in children:
            if child.type == "blockquote":
                self.blockquote(child)
        if attach is not None:
            self.attach_to = attach

    def callout(self, node: SyntaxTreeNode, ctype: str, meta: str | None, title: str, first_rest: str) -> None:
        kind = _CALLOUT_KINDS.get(ctype)
        children = list(node.children)
        start = _start_line(node)
        lines = [(start + 1 + i, s) for i, s in enumerate(first_rest.split("\n"))] if first_rest else []
        lines += _descendant_lines(c for c in children[1:] if c.type != "blockquote")
        if kind is None:
            self.attach_to = None
        elif kind == "note":
            self.emit_note(lines, start, fallback=title)
        else:
            title_cit = _split_citation(title)
            title_page = _locator(title) or title_cit.page
            if title_page is None:
                bare = _BARE_PAGE_RE.match(title)
                title_page = _normalise_range(bare.group(1)) if bare else None
            if not any(s.strip() for _, s in lines):
                # `> [!quote] "The text" (p. 12)` with no body: the title is the quote. A bare locator
                # title (an unfilled template's `> [!quote] p.`) is not.
                lines = [(start, title)] if _TITLE_QUOTE_RE.match(title) else []
            result = self.source_annotation(lines, kind=kind, fallback_page=title_page) if lines else None
            if result is not None:
                ann = result[0]
                if ann.link is None and title_cit.link:
                    ann = replace(ann, link=title_cit.link)
                if ann.color is None and meta and meta.strip():
                    # `> [!quote|yellow]` / `> [!quote|#ffd400]`: the callout metadata is the colour.
                    ann = replace(ann, color=meta.strip())
                result = (ann, result[1])
            self.emit_source(result, lines, start)
        self.nested_quotes(children)

    def list_item(self, item: SyntaxTreeNode) -> None:
        paragraphs = [c for c in item.children if c.type == "paragraph"]
        sublists = [c for c in item.children if c.type in ("bullet_list", "ordered_list")]
        line = _start_line(item)
        content = "\n\n".join(_inline_text(p) for p in paragraphs)
        section = self.section
        self.attach_to = None

        if _is_cited(mask_code_spans(content)) or section in ("highlights", "quotes"):
            # Readwise: `- Note: ...` sub-bullets are the reader's comment, `- Tags: ...` are dropped.
            comments: list[str] = []
            comment_line: int | None = None
            others: list[SyntaxTreeNode] = []
            for sub in (i for lst in sublists for i in lst.children):
                sub_text = _clean_lines("\n".join(_inline_text(p) for p in sub.children if p.type == "paragraph"))
                m = _COMMENT_PREFIX_RE.match(sub_text)
                if m:
                    comment, _ = _pop_block_id(_clean_lines(sub_text[m.end() :]))
                    if comment:
                        comments.append(comment)
                        comment_line = comment_line or _start_line(sub)
                elif not _TAGS_PREFIX_RE.match(sub_text):
                    others.append(sub)
            kind: Kind = "highlight" if section == "highlights" or self.fmt == "readwise" else "quote"
            lines = _descendant_lines(paragraphs)
            result = self.source_annotation(lines, kind=kind, extra_comments=comments) if lines else None
            if result is not None and result[1] is None and comment_line is not None:
                result = (result[0], comment_line)
            self.emit_source(result, lines, line)
            for sub in others:
                self.list_item(sub)
        elif section == "notes":
            # A top-level bullet and everything nested under it is one note.
            self.emit_note(_descendant_lines(c for c in item.children if c.type != "blockquote"), line)
        else:
            for p in paragraphs:
                self.inline_highlights(_inline_text(p), _start_line(p))
            for lst in sublists:
                for sub in lst.children:
                    self.list_item(sub)
        for child in item.children:
            if child.type == "blockquote":
                self.blockquote(child)
        self.attach_to = None


def _lines_of(content: str, start: int) -> list[tuple[int, str]]:
    return [(start + i, s) for i, s in enumerate(content.split("\n"))]


def parse_annotations(body: str) -> list[Annotation]:
    """Annotations in a note body (front matter already removed), in document order.

    Never raises on arbitrary text: unknown structures are skipped.
    """
    if not body:
        return []
    # markdown-it normalises line endings too, but doing it here keeps our own line arithmetic simple.
    body = body.replace("\r\n", "\n").replace("\r", "\n")
    parser = _Parser(body)
    tree = SyntaxTreeNode(_MD.parse(body))
    for node in tree.children:
        parser.block(node)
    return parser.out


# --- verbatim check ----------------------------------------------------------------------------------

_QUOTE_PREFIX_RE = re.compile(r"^[ \t]*(?:>[ \t]?)+", re.MULTILINE)
_QUOTE_TRANSLATION = str.maketrans(
    {
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u2033": '"',
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
    }
)


def _normalise_for_locate(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _QUOTE_PREFIX_RE.sub("", text)
    text = _MARK_TAG_RE.sub("", text)
    text = text.replace("==", "")
    text = text.translate(_QUOTE_TRANSLATION)
    return " ".join(text.split())


# Scripts written without spaces between words: a quotation from them may start or end anywhere in a run of
# letters, so no word boundary is asked for beside them. Han (with 々 and 〇), Hiragana, Katakana (full and
# half width), Thai, Lao, Khmer and Myanmar.
_NO_SPACE_SCRIPTS = (
    "\u3005\u3007\u3021-\u3029\u3038-\u303b\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f"
    "\u0e00-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u19e0-\u19ff\u1000-\u109f\ua9e0-\ua9ff\uaa60-\uaa7f"
)
_NO_SPACE_RE = re.compile(f"[{_NO_SPACE_SCRIPTS}]")


def _signs() -> str:
    """A character class body of the numeric signs (Unicode category No: superscript and subscript digits, circled
    numbers, fractions) and combining enclosing marks (Me): `\\w` takes the signs for letters, yet they end a word,
    as a footnote mark glued to a name does ("Sharma²"). All of them lie below U+20000, so only that is scanned."""
    found = [c for c in range(0x20000) if unicodedata.category(chr(c)) in ("No", "Me")]
    ranges: list[list[int]] = []
    for c in found:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return "".join(re.escape(chr(a)) + (f"-{re.escape(chr(b))}" if b > a else "") for a, b in ranges)


_SIGNS = _signs()
# A letter or digit of a script that separates words with spaces: only such a character makes a word boundary.
_SPACED_BEFORE = f"(?<![^\\W{_NO_SPACE_SCRIPTS}{_SIGNS}])"
_SPACED_AFTER = f"(?![^\\W{_NO_SPACE_SCRIPTS}{_SIGNS}])"
_SIGN_RE = re.compile(f"[{_SIGNS}]")


def _needs_boundary(ch: str) -> bool:
    return (ch.isalnum() or ch == "_") and not _NO_SPACE_RE.match(ch) and not _SIGN_RE.match(ch)


def word_pattern(literal: str) -> str:
    """A regex for `literal` as whole words: it may not start or end inside a word of a script that puts spaces
    between words; beside Han, Kana, Thai, Lao, Khmer or Myanmar letters, which have no spaces, it may. A numeric
    sign (a footnote mark "²", "₁", "①") is no part of a word."""
    if not literal:
        return re.escape(literal)
    return boundary_before(literal[0]) + re.escape(literal) + boundary_after(literal[-1])


def boundary_before(first: str) -> str:
    """The lookbehind a text starting with `first` needs not to start inside a word (`word_pattern`)."""
    return _SPACED_BEFORE if _needs_boundary(first) else ""


def boundary_after(last: str) -> str:
    """The lookahead a text ending with `last` needs not to end inside a word (`word_pattern`)."""
    return _SPACED_AFTER if _needs_boundary(last) else ""


def locate(text: str, body: str) -> bool:
    """True if `text` appears verbatim in `body`.

    Lenient only about line breaks and runs of whitespace, `> ` quote prefixes, `==` and `<mark ...>`
    markup, and curly vs straight quotes; strict about everything else: case, punctuation, and word
    boundaries in scripts that put spaces between words (a match may not start or end inside a word, so
    "cat" is not in "concatenate"). Chinese, Japanese, Thai, Lao, Khmer and Myanmar have no spaces
    between words: beside their letters a quotation may start or end anywhere.
    """
    needle = _normalise_for_locate(text)
    if not needle:
        return False
    return re.search(word_pattern(needle), _normalise_for_locate(body)) is not None
