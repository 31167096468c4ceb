"""Feedback as a document a student opens without Obsidian: .docx (python-docx), .pdf (fpdf2), .odt (odfpy),
.html or plain text, from the reviewed draft's student text (Markdown headings, bullets, quotes and bold kept).

A PDF embeds its font, and the one used here (DejaVu Sans, or Helvetica where it is missing) has no Chinese,
Japanese or Korean glyphs: fpdf2 drops a character its font cannot draw. `render` refuses such a PDF (`Undrawable`,
naming the characters) rather than lose them; a .docx or .odt holds the text and the reader's fonts draw it.
"""

from __future__ import annotations

import html
import io
import re
import unicodedata
from pathlib import Path

from tierflow.core.errors import PicklableError
from tierflow.vault.text import unescape_links

WRITABLE = (".docx", ".pdf", ".odt", ".html", ".htm", ".txt", ".md")
_FONTS = (Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"), Path("/usr/share/fonts/TTF/DejaVuSans.ttf"))
_SHOWN = 10


class Undrawable(PicklableError, ValueError):
    """A PDF would lose `characters` (each once, in order of appearance): its font has no glyph for them."""

    def __init__(self, characters: str, font: str) -> None:
        self.characters = characters
        self.font = font
        shown = ", ".join(characters[:_SHOWN]) + (
            f" and {len(characters) - _SHOWN} more" if len(characters) > _SHOWN else ""
        )
        super().__init__(f"the PDF font ({font}) cannot draw {shown}")


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
    shown = title + "".join(text for _, text in blocks)
    if font is not None:
        pdf.add_font("Body", fname=str(font))
        family = "Body"
        cmap = pdf.fonts["body"].cmap
        # fpdf2 drops a character its font has no glyph for, with a logged warning only: refuse before that.
        _refuse([ch for ch in shown if ord(ch) not in cmap], "DejaVu Sans")

        def fit(text: str) -> str:
            return text
    else:  # the core fonts hold Latin-1 only: other letters lose their accents rather than the file failing
        family = "Helvetica"

        def fit(text: str) -> str:
            text = text.replace("—", "-").replace("–", "-").replace("’", "'").replace("“", '"').replace("”", '"')
            return "".join(
                ch if ord(ch) < 256 else unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
                for ch in text
            )

        _refuse([ch for ch in shown if not fit(ch) and not ch.isspace()], "Helvetica, Latin-1 only")

    pdf.set_font(family, size=16)
    pdf.multi_cell(0, 9, fit(title))
    pdf.ln(2)
    for kind, text in blocks:
        pdf.set_font(family, size=13 if kind == "heading" else 11)
        prefix = "• " if kind == "bullet" and font is not None else ("- " if kind == "bullet" else "")
        indent = 8 if kind in ("bullet", "quote") else 0
        pdf.set_x(pdf.l_margin + indent)
        pdf.multi_cell(0, 6, fit(prefix + text))
        pdf.ln(2)
    return bytes(pdf.output())


def _refuse(lost: list[str], font: str) -> None:
    """An `Undrawable` for the visible characters of `lost`, if any."""
    shown = "".join(dict.fromkeys(ch for ch in lost if not _invisible(ch)))
    if shown:
        raise Undrawable(shown, font)


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
