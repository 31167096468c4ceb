"""Feedback as a document a student opens without Obsidian: .docx (python-docx), .pdf (fpdf2), .odt (odfpy),
.html or plain text, from the reviewed draft's student text (Markdown headings, bullets, quotes and bold kept).

A PDF embeds its font, and the one used here (DejaVu Sans, or Helvetica where it is missing) has no Chinese,
Japanese or Korean glyphs: fpdf2 drops a character its font cannot draw. `render` refuses such a PDF (`Undrawable`,
naming the characters) rather than lose them; a .docx or .odt holds the text and the reader's fonts draw it.
Whitespace never makes a PDF undrawable: a tab is drawn as spaces up to the next tab stop, and a space the font lacks
(an ideographic space, a control character counted as whitespace) as a plain space.
"""

from __future__ import annotations

import html
import io
import re
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path

from tierflow.core.errors import PicklableError
from tierflow.vault.text import unescape_links

WRITABLE = (".docx", ".pdf", ".odt", ".html", ".htm", ".txt", ".md")
_FONTS = (Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"), Path("/usr/share/fonts/TTF/DejaVuSans.ttf"))
_SHOWN = 10
_TAB_STOP = 12.7  # mm: Word's and LibreOffice's default tab stops, every half inch from the margin
_REACH = 24  # characters of text shown either side of an unseen character in `Undrawable`'s message
_UNNAMED = {"Cc": "control character", "Co": "private-use character", "Cn": "unassigned", "Cs": "surrogate"}


class Undrawable(PicklableError, ValueError):
    """A PDF would lose `characters` (each once, in order of appearance): its font has no glyph for them. One
    nobody could see in the message is named by code point and name, with the words around it (`around`)."""

    def __init__(self, characters: str, font: str, around: Mapping[str, str] | None = None) -> None:
        self.characters = characters
        self.font = font
        self.around = dict(around or {})
        shown = ", ".join(_named(ch, self.around.get(ch)) for ch in characters[:_SHOWN]) + (
            f" and {len(characters) - _SHOWN} more" if len(characters) > _SHOWN else ""
        )
        super().__init__(f"the PDF font ({font}) cannot draw {shown}")


def _unseen(ch: str) -> bool:
    """A character a message cannot show a person: whitespace, control and format characters, a combining mark."""
    return not ch.isprintable() or ch.isspace() or unicodedata.category(ch).startswith("M")


def _code(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def _named(ch: str, around: str | None) -> str:
    """`ch` as a message shows it: itself, or one unseen as `U+0007 (control character) in "…essay.[U+0007]Well…"`."""
    if not _unseen(ch):
        return ch
    name = unicodedata.name(ch, "") or _UNNAMED.get(unicodedata.category(ch), "unnamed")
    return f"{_code(ch)} ({name})" + (f' in "{around}"' if around else "")


def _around(line: str, i: int) -> str:
    """The words of `line` around its character `i`, which is shown as `[U+XXXX]` as are those that do not print
    (a tab, a no-break space), `…` where cut."""
    start, end = max(0, i - _REACH), min(len(line), i + 1 + _REACH)
    if start > 0 and (space := line.find(" ", start, i)) != -1:
        start = space + 1  # whole words only
    if end < len(line) and (space := line.rfind(" ", i + 1, end)) != -1:
        end = space
    shown = "".join(
        f"[{_code(ch)}]" if at == i or not ch.isprintable() else ch for at, ch in enumerate(line[start:end], start)
    )
    return ("…" if start else "") + shown + ("…" if end < len(line) else "")


def _invisible(ch: str) -> bool:
    """A character nothing shows for (a zero-width space or joiner, a variation selector): not lost when dropped."""
    return unicodedata.category(ch) == "Cf" or 0xFE00 <= ord(ch) <= 0xFE0F or 0xE0100 <= ord(ch) <= 0xE01EF


def _blocks(markdown: str) -> list[tuple[str, str]]:
    """(kind, text) per line: `heading`, `bullet`, `quote`, `para`; bold and italic markers dropped."""
    out = []
    for line in markdown.splitlines():
        text = re.sub(r"(\*\*|__|\*|_)(\S(?:.*?\S)?)\1", r"\2", line).strip()
        if not text:
            continue
        if text.startswith("#"):
            out.append(("heading", text.lstrip("#").strip()))
        elif re.match(r"^[-*+]\s+", text):
            out.append(("bullet", re.sub(r"^[-*+]\s+", "", text)))
        elif text.startswith(">"):
            out.append(("quote", text.lstrip("> ").strip()))
        else:
            out.append(("para", text))
    return out


def render(suffix: str, title: str, markdown: str) -> bytes:
    """The feedback as a `suffix` file (one of WRITABLE), from a draft's `student_markdown`: the `[[` and `](` the
    student typed, still escaped there, are shown as typed (never a link in an HTML file)."""
    suffix = suffix.lower()
    if suffix in (".html", ".htm"):
        from markdown_it import MarkdownIt

        body = MarkdownIt("commonmark", {"html": False}).render(markdown)
        page = f'<!DOCTYPE html><html><head><meta charset="UTF-8"><title>{html.escape(title)}</title></head>'
        return f"{page}<body><h1>{html.escape(title)}</h1>{body}</body></html>".encode()
    markdown = unescape_links(markdown)  # text, not Markdown rendered: the characters as the student typed them
    if suffix == ".docx":
        return _docx(title, markdown)
    if suffix == ".pdf":
        return _pdf(title, markdown)
    if suffix == ".odt":
        return _odt(title, markdown)
    if suffix in (".txt", ".md"):
        return f"{title}\n\n{markdown}\n".encode()
    raise ValueError(f"cannot write feedback as {suffix}; writable: {', '.join(WRITABLE)}")


def _docx(title: str, markdown: str) -> bytes:
    import docx

    document = docx.Document()
    document.core_properties.title = title
    document.core_properties.author = "tierflow"
    document.add_heading(title, level=1)
    for kind, text in _blocks(markdown):
        if kind == "heading":
            document.add_heading(text, level=2)
        elif kind == "bullet":
            document.add_paragraph(text, style="List Bullet")
        elif kind == "quote":
            document.add_paragraph(text, style="Quote")
        else:
            document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def _pdf(title: str, markdown: str) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(title)
    pdf.set_author("tierflow")
    pdf.add_page()
    font = next((f for f in _FONTS if f.is_file()), None)
    title = unicodedata.normalize("NFC", title)  # a letter and its combining accent as the one glyph fonts have
    blocks = [(kind, unicodedata.normalize("NFC", text)) for kind, text in _blocks(markdown)]
    lines = [title, *(text for _, text in blocks)]
    if font is not None:
        pdf.add_font("Body", fname=str(font))
        family = "Body"
        cmap = pdf.fonts["body"].cmap

        def has(ch: str) -> bool:
            return ord(ch) in cmap

        def fit(text: str) -> str:
            return _spaced(text, has)

        # fpdf2 drops a character its font has no glyph for, with a logged warning only: refuse before that.
        _refuse(lines, has, "DejaVu Sans")
    else:  # the core fonts hold Latin-1 only: other letters lose their accents rather than the file failing
        family = "Helvetica"

        def has(ch: str) -> bool:
            return ord(ch) < 256 and ch.isprintable()

        def fit(text: str) -> str:
            text = _spaced(text, has)
            text = text.replace("—", "-").replace("–", "-").replace("’", "'").replace("“", '"').replace("”", '"')
            return "".join(
                ch if ord(ch) < 256 else unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
                for ch in text
            )

        _refuse(lines, lambda ch: ch.isprintable() and bool(fit(ch)), "Helvetica, Latin-1 only")

    pdf.set_font(family, size=16)
    pdf.multi_cell(0, 9, _tabbed(fit(title), pdf.get_string_width, 0))
    pdf.ln(2)
    for kind, text in blocks:
        pdf.set_font(family, size=13 if kind == "heading" else 11)
        prefix = "• " if kind == "bullet" and font is not None else ("- " if kind == "bullet" else "")
        indent = 8 if kind in ("bullet", "quote") else 0
        pdf.set_x(pdf.l_margin + indent)
        pdf.multi_cell(0, 6, _tabbed(fit(prefix + text), pdf.get_string_width, indent))
        pdf.ln(2)
    return bytes(pdf.output())


def _spaced(text: str, has: Callable[[str], bool]) -> str:
    """`text` with each whitespace character but a tab that the font lacks (`has`) as a plain space."""
    return "".join(" " if ch.isspace() and ch != "\t" and not has(ch) else ch for ch in text)


def _tabbed(text: str, width: Callable[[str], float], start: float) -> str:
    """`text`, drawn `start` mm from the margin, with each tab as the spaces that reach the next tab stop, as
    Word lays out pasted cells (a font has no tab glyph, and fpdf2 has no tab stops)."""
    space = width(" ")
    out = ""
    for i, cell in enumerate(text.split("\t")):
        if i:
            at = start + width(out)
            # The first stop at least a space away: a cell ending just short of a stop still leaves a gap, and
            # every cell ending between the same two stops lines up at the second.
            stop = ((at + space) // _TAB_STOP + 1) * _TAB_STOP
            out += " " * round((stop - at) / space)
        out += cell
    return out


def _refuse(lines: list[str], has: Callable[[str], bool], font: str) -> None:
    """An `Undrawable` for the characters of `lines` the font lacks (`has`), if any: whitespace is drawn as
    spaces, and a format character (a zero-width joiner, a variation selector) is not lost when dropped."""
    lost: dict[str, str] = {}
    for line in lines:
        for i, ch in enumerate(line):
            if ch not in lost and not ch.isspace() and not _invisible(ch) and not has(ch):
                lost[ch] = _around(line, i) if _unseen(ch) else ""
    if lost:
        raise Undrawable("".join(lost), font, {ch: where for ch, where in lost.items() if where})


def _odt(title: str, markdown: str) -> bytes:
    from odf import dc
    from odf.opendocument import OpenDocumentText
    from odf.text import H, List, ListItem, P

    document = OpenDocumentText()
    document.meta.addElement(dc.Title(text=title))
    document.text.addElement(H(outlinelevel=1, text=title))
    for kind, text in _blocks(markdown):
        if kind == "heading":
            document.text.addElement(H(outlinelevel=2, text=text))
        elif kind == "bullet":
            items = List()
            item = ListItem()
            item.addElement(P(text=text))
            items.addElement(item)
            document.text.addElement(items)
        else:
            document.text.addElement(P(text=text))
    out = io.BytesIO()
    document.write(out)
    return out.getvalue()
