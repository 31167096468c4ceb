"""Student documents to text, with maintained libraries only: one `extract(path)` for every format a platform sends.

- `.docx`: python-docx, its XML read in document order: paragraphs and tables, content controls (where Word's
  Insert Citation and Bibliography put citations and the reference list), tracked insertions (never deletions),
  text boxes (after the paragraph they are anchored in, read once), then footnotes and endnotes under "Notes",
  numbered as the text refers to them, as Obsidian footnotes (`[^1]` in the text, `[^1]: ...` under "Notes").
  Hidden: runs with `w:vanish` (or web-hidden), white runs, runs under 3 pt.
  Names: core properties `author`, `last_modified_by`.
- `.pdf` with a text layer: pypdf. Names: document info `/Author`.
- `.odt`: odfpy, read in document order: tracked insertions (never deletions), frames and text boxes (after the
  paragraph they are anchored in), then notes under "Notes" as Obsidian footnotes; comments are left out. Hidden:
  `text:hidden-text`, `text:hidden-paragraph`, character and paragraph styles that are hidden
  (`text:display="none"`), white or under 3 pt. Names: `dc:creator`, `meta:initial-creator`.
- `.html`, `.htm`: beautifulsoup4. Hidden: `display:none`, `visibility:hidden`, `opacity:0`, font size 0-1 px,
  white text, the `hidden` attribute. Names: `<meta name="author">`.
- `.rtf`: striprtf. `.txt`, `.md`: UTF-8, else Windows-1252.

A file is read as the type its content is (a PDF header, a Word or OpenDocument package, an RTF header) when that
differs from its extension or it has none, with a note saying so (`Extracted.notes`, `Extracted.kind`).
A file that gives no text is never an error that stops an import: it comes back with `problem` set to a reason a
lecturer can act on (no text layer, empty, corrupt, password-protected, a type tierflow cannot read).
Hidden text is returned apart from the visible text, so the caller can flag it where the injection check sees it.
OCR of scanned PDFs is not done: a scanned PDF is reported, so the lecturer can ask for the original.
What a library logs or warns of while reading (pypdf's `EOF marker not found`) is kept from stderr, where it would
stand apart from the import's report; when the file then gives no text, it is part of the reason given.
"""

from __future__ import annotations

import io
import logging
import re
import textwrap
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tierflow.vault.pseudonyms import placeholder_author

READABLE = (".docx", ".pdf", ".odt", ".html", ".htm", ".txt", ".md", ".rtf")
"""File types turned into text; anything else is listed with a reason."""

_ADVICE = {
    ".doc": "an old Word .doc file: ask for .docx or PDF, or save it as .docx in Word",
    ".pages": "an Apple Pages file: ask for .docx or PDF, or export it from Pages",
    ".odp": "a presentation: ask for a PDF export",
    ".pptx": "a presentation: ask for a PDF export",
    ".zip": "an archive inside the submission: unpack it and import the files it holds",
}
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
"""A compound file: what Word writes for a password-protected .docx (and for an old .doc)."""
_KINDS = {
    ".pdf": "a PDF",
    ".docx": "a Word .docx",
    ".odt": "an OpenDocument .odt",
    ".rtf": "an RTF",
    ".pptx": "a PowerPoint .pptx",
    ".odp": "an OpenDocument .odp",
}
"""What `_sniff` can tell from a file's content, as a note names it."""
_PACKAGES = (
    ("word/document.xml", ".docx"),
    ("ppt/presentation.xml", ".pptx"),
)
_OPENDOCUMENT = {
    b"application/vnd.oasis.opendocument.text": ".odt",
    b"application/vnd.oasis.opendocument.presentation": ".odp",
}


@dataclass(frozen=True)
class Extracted:
    """What one file gave: its visible text, any hidden passages, and names from its metadata."""

    text: str = ""
    hidden: tuple[str, ...] = ()
    """Passages a reader does not see but a model would: white or 1-px HTML text, hidden Word runs."""
    authors: tuple[str, ...] = ()
    """Names in the document's metadata (docx author, PDF /Author): recorded locally, never in the text."""
    problem: str = ""
    """Why no text came out, in words a lecturer can act on; empty when the file was read."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Things worth knowing that did not stop the reading (a fallback encoding, a wrong extension)."""
    kind: str = ""
    """The type the file was read as (`.pdf`): its content's, where that differs from its extension."""

    @property
    def ok(self) -> bool:
        return not self.problem


def extract(path: Path) -> Extracted:
    """The text of one student file, read as the type its content is (whatever its extension says); never raises
    for a bad file (see `Extracted.problem`)."""
    suffix = path.suffix.lower()
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Extracted(problem=f"could not be opened ({exc.strerror or exc})")
    if not data.strip():
        return Extracted(problem="empty file (nothing was submitted in it)")
    sniffed = _sniff(data)
    if sniffed and sniffed != suffix:
        what = f"{_KINDS[sniffed]} file saved {f'as {suffix}' if suffix else 'without an extension'}"
        found = _read(path, data, sniffed)
        if not found.ok:
            return replace(found, problem=f"{what}: {found.problem}")
        note = f"{what}: read as {sniffed} (the file extension was {'wrong' if suffix else 'missing'})"
        return replace(found, notes=(note, *found.notes))
    return _read(path, data, suffix)


def _sniff(data: bytes) -> str:
    """The type `data` holds, from its content (`.pdf`, `.docx`, `.odt`, ...; see `_KINDS`), or "" when the content
    does not say (plain text, HTML, an old .doc or a password-protected .docx, a damaged file)."""
    if data.lstrip().startswith(b"%PDF-"):  # at the start: text that quotes a header is no PDF
        return ".pdf"
    if data.lstrip().startswith(b"{\\rtf"):
        return ".rtf"
    if not data.startswith(b"PK"):
        return ""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            names = set(package.namelist())
            mimetype = package.read("mimetype").strip() if "mimetype" in names else b""
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, NotImplementedError):
        return ""
    if "content.xml" in names and mimetype in _OPENDOCUMENT:
        return _OPENDOCUMENT[mimetype]
    return next((kind for member, kind in _PACKAGES if member in names), "")


def _read(path: Path, data: bytes, suffix: str) -> Extracted:
    """`data` read as a `suffix` file."""
    if suffix not in READABLE:
        why = _ADVICE.get(suffix, f"tierflow cannot read {suffix or 'files without an extension'}")
        return Extracted(problem=f"{why}; readable types are {', '.join(READABLE)}")
    reader = {
        ".docx": _docx,
        ".pdf": _pdf,
        ".odt": _odt,
        ".html": _html,
        ".htm": _html,
        ".rtf": _rtf,
        ".txt": _plain,
        ".md": _plain,
    }[suffix]
    with _library_said() as said:
        try:
            found = reader(path, data)
        except Exception as exc:  # noqa: BLE001 - any library failure on a student's file is a reason, not a crash
            found = Extracted(problem=f"{type(exc).__name__}: {_first_line(exc)}")
            failed = True
        else:
            failed = False
    if failed:
        told = "".join(f"; {line}" for line in list(dict.fromkeys(said))[:3])
        return Extracted(problem=f"corrupt or unreadable {suffix} file ({found.problem}{told})")
    if found.ok and not found.text.strip() and not found.hidden:
        return Extracted(authors=found.authors, problem="no text in the document (is it blank?)")
    return replace(found, kind=suffix)


_LIBRARY_LOGGERS = ("pypdf",)
"""The loggers of the readers that log what they repair or give up on (pypdf: `EOF marker not found`)."""


@contextmanager
def _library_said() -> Iterator[list[str]]:
    """What the readers log (`_LIBRARY_LOGGERS`) or warn of in the block, as `library: message` lines, kept from
    stderr: with no handler set, Python's logging prints a warning there, a line apart from the import's report.
    Only those loggers are quieted, and only for the block: tierflow's own messages are untouched."""
    said: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(f"{record.name.split('.')[0]}: {record.getMessage()}")

    handler = Keep()
    loggers = [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
    propagated = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield said
        said += [f"{Path(w.filename).parent.name or 'warning'}: {w.message}" for w in caught]
    finally:
        for logger, propagate in zip(loggers, propagated, strict=True):
            logger.removeHandler(handler)
            logger.propagate = propagate


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:160]


def _tidy(text: str) -> str:
    """Trailing spaces gone, runs of blank lines cut to one, no blank edges."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _names(*values: object) -> tuple[str, ...]:
    """The distinct names among a document's author fields, a placeholder such as "Microsoft Office User" left out."""
    names = (" ".join(str(v).split()) for v in values if v and str(v).strip())
    return tuple(dict.fromkeys(n for n in names if not placeholder_author(n)))


# --- Word ----------------------------------------------------------------------------------------------------


_MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"


def _mark(number: int) -> str:
    """A note's mark in the text: an Obsidian footnote, not the superscript digit a reader sees, which stood glued
    to the word before it ("Sharma¹") and made it another word."""
    return f"[^{number}]"


def _footnote(number: int, paragraphs: list[str]) -> list[str]:
    """A note's paragraphs as the definition of footnote `number`: the first after `[^number]: `, the others
    indented under it, as Obsidian reads a footnote of several paragraphs. None when the note has no text."""
    shown = [p.strip() for p in paragraphs if p.strip()]
    if not shown:
        return []
    return [f"{_mark(number)}: {shown[0]}", *(textwrap.indent(p, "    ") for p in shown[1:])]


def _chosen(alternate: Any) -> Any:
    """The branch of an `mc:AlternateContent` a reader shows: its first `mc:Choice`, else its `mc:Fallback` (each
    holds the same content, so reading both would read it twice)."""
    branch = alternate.find(f"{_MC}Choice")
    return branch if branch is not None else alternate.find(f"{_MC}Fallback")


def _docx(path: Path, data: bytes) -> Extracted:
    if data.startswith(_OLE_MAGIC):
        return Extracted(problem="password-protected (or an old .doc renamed .docx): ask for an unprotected copy")
    if not zipfile.is_zipfile(path):
        return Extracted(problem="corrupt .docx file (not a Word package): ask the student to upload it again")
    import docx
    from docx.opc.constants import RELATIONSHIP_TYPE
    from docx.oxml import parse_xml
    from docx.oxml.ns import qn
    from docx.shared import Pt, RGBColor
    from docx.text.paragraph import Paragraph
    from docx.text.run import Run

    document = docx.Document(str(path))
    visible: list[str] = []
    hidden: list[str] = []
    cited: dict[tuple[str, str], int] = {}  # (footnote or endnote, id) -> its number, in the order first referenced

    styles_hide: dict[tuple[str, str | None], bool] = {}  # looking a style up is slow: once per style id

    def style_hides(kind: str, style_id: str | None, style: object) -> bool:
        key = (kind, style_id)
        if key not in styles_hide:
            found = style() if callable(style) else style
            styles_hide[key] = bool(found is not None and found.font.hidden)
        return styles_hide[key]

    def is_hidden(run: Run, paragraph: Paragraph) -> bool:
        font = run.font
        if font.hidden or font.web_hidden or font.spec_vanish:
            return True
        if style_hides("run", run._r.style, lambda: run.style) or style_hides(
            "paragraph", paragraph._p.style, lambda: paragraph.style
        ):
            return True
        color = font.color
        if color is not None and color.type is not None and color.rgb == RGBColor(0xFF, 0xFF, 0xFF):
            return True
        return font.size is not None and font.size < Pt(3)

    # Elements whose children are read as if they stood in their place: tracked insertions and moves-to, content
    # controls (Word's citations and bibliography), custom XML and smart tags, links, simple fields' results.
    # Tracked deletions and moves-from (`w:del`, `w:moveFrom`), comments and field codes are not read.
    # A content control's properties (`w:sdtPr`) hold no run or paragraph, so only its `w:sdtContent` is read.
    see_through = {qn(t) for t in ("w:ins", "w:moveTo", "w:sdt", "w:sdtContent", "w:customXml", "w:smartTag")}
    see_through |= {qn(t) for t in ("w:hyperlink", "w:fldSimple", "w:dir", "w:bdo", "w:tbl", "w:tr", "w:tc")}
    note_refs = {qn("w:footnoteReference"): "footnote", qn("w:endnoteReference"): "endnote"}

    def text_boxes(node: Any) -> Iterator[Any]:
        """The outermost `w:txbxContent` under `node` (VML or DrawingML), one branch of each alternative."""
        for child in node:
            if child.tag == qn("w:txbxContent"):
                yield child
            elif child.tag == f"{_MC}AlternateContent":
                branch = _chosen(child)
                if branch is not None:
                    yield from text_boxes(branch)
            elif isinstance(child.tag, str):
                yield from text_boxes(child)

    def inline(node: Any, paragraph: Paragraph, shown: list[str], unseen: list[str], boxes: list[Any]) -> None:
        for child in node:
            tag = child.tag
            if tag == qn("w:r"):
                run = Run(child, paragraph)
                text = run.text
                for ref in child:
                    if ref.tag in note_refs:
                        number = cited.setdefault((note_refs[ref.tag], ref.get(qn("w:id"))), len(cited) + 1)
                        text += _mark(number)
                (unseen if is_hidden(run, paragraph) else shown).append(text)
                boxes.extend(text_boxes(child))
            elif tag == f"{_MC}AlternateContent":
                branch = _chosen(child)
                inline([] if branch is None else branch, paragraph, shown, unseen, boxes)
            elif tag in see_through:
                inline(child, paragraph, shown, unseen, boxes)

    def blocks(node: Any) -> None:
        """Paragraphs in document order; a text box's paragraphs come after the paragraph it is anchored in."""
        for child in node:
            tag = child.tag
            if tag == qn("w:p"):
                paragraph = Paragraph(child, document)
                shown: list[str] = []
                unseen: list[str] = []
                boxes: list[Any] = []
                inline(child, paragraph, shown, unseen, boxes)
                visible.append("".join(shown))
                if "".join(unseen).strip():
                    hidden.append(" ".join("".join(unseen).split()))
                for box in boxes:
                    blocks(box)
            elif tag == f"{_MC}AlternateContent":
                branch = _chosen(child)
                blocks([] if branch is None else branch)
            elif tag in see_through:  # a table's rows and cells, a content control around paragraphs or cells
                blocks(child)

    blocks(document.element.body)
    # Footnotes and endnotes, as a reader finds them after the text: in the order the text refers to them.
    parts = {
        kind: parse_xml(rel.target_part.blob)
        for rel in document.part.rels.values()
        if not rel.is_external
        for kind, reltype in (("footnote", RELATIONSHIP_TYPE.FOOTNOTES), ("endnote", RELATIONSHIP_TYPE.ENDNOTES))
        if rel.reltype == reltype
    }
    notes = {
        (kind, note.get(qn("w:id"))): note
        for kind, part in parts.items()
        for note in part.iterchildren(qn(f"w:{kind}"))
    }
    numbered = [(number, notes[key]) for key, number in list(cited.items()) if key in notes]
    if numbered:
        visible.append("Notes")
    for number, note in numbered:
        first = len(visible)
        blocks(note)
        visible[first:] = _footnote(number, visible[first:])
    props = document.core_properties
    return Extracted(
        text=_tidy("\n\n".join(visible)), hidden=tuple(hidden), authors=_names(props.author, props.last_modified_by)
    )


# --- PDF -----------------------------------------------------------------------------------------------------


def _pdf(path: Path, data: bytes) -> Extracted:
    if b"%PDF" not in data[:1024]:
        return Extracted(problem="corrupt .pdf file (no PDF header): ask the student to upload it again")
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError

    reader = PdfReader(str(path))
    if reader.is_encrypted:
        try:
            opened = reader.decrypt("")
        except DependencyError:
            return Extracted(problem="encrypted with AES (install `cryptography` to read PDFs without a password)")
        if not opened:
            return Extracted(problem="password-protected PDF: ask the student for a copy without a password")
    try:
        pages = [page.extract_text() or "" for page in reader.pages]
    except FileNotDecryptedError:
        return Extracted(problem="password-protected PDF: ask the student for a copy without a password")
    info = reader.metadata
    authors = _names(info.author) if info else ()
    text = _tidy("\n\n".join(pages))
    if not text:
        return Extracted(
            authors=authors,
            problem="no text layer (a scanned or image-only PDF): ask for the original document, or run OCR on it",
        )
    return Extracted(text=text, authors=authors)


# --- OpenDocument ----------------------------------------------------------------------------------------------


_ODT_TINY = re.compile(r"^(\d*\.?\d+)pt$")


def _odt_hiding_styles(document: Any) -> set[tuple[str, str]]:
    """(family, name) of the styles whose text a reader does not see: `text:display="none"` (LibreOffice's
    Hidden), white, or under 3 pt; a style inherits what its parent style sets."""
    from odf.namespaces import FONS, STYLENS, TEXTNS
    from odf.style import Style

    found: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
    for root in (document.styles, document.automaticstyles):
        for style in root.getElementsByType(Style):
            family, name = style.getAttrNS(STYLENS, "family") or "", style.getAttrNS(STYLENS, "name") or ""
            props: dict[str, str] = {}
            for child in style.childNodes:
                if child.qname == (STYLENS, "text-properties"):
                    for key, ns, local in (
                        ("display", TEXTNS, "display"),
                        ("color", FONS, "color"),
                        ("size", FONS, "font-size"),
                    ):
                        value = child.getAttrNS(ns, local)
                        if value:
                            props[key] = value.strip().lower()
            found[(family, name)] = (style.getAttrNS(STYLENS, "parent-style-name") or "", props)

    def resolved(key: tuple[str, str], seen: frozenset[tuple[str, str]] = frozenset()) -> dict[str, str]:
        if key not in found or key in seen:
            return {}
        parent, props = found[key]
        return {**(resolved((key[0], parent), seen | {key}) if parent else {}), **props}

    hiding = set()
    for key in found:
        props = resolved(key)
        tiny = _ODT_TINY.match(props.get("size", ""))
        if props.get("display") == "none" or props.get("color") in ("#ffffff", "#fff") or (tiny and float(tiny[1]) < 3):
            hiding.add(key)
    return hiding


def _odt(path: Path, data: bytes) -> Extracted:
    if not zipfile.is_zipfile(path):
        return Extracted(problem="corrupt .odt file (not an OpenDocument package): ask for it again")
    from odf import dc, meta, teletype
    from odf.element import Node
    from odf.namespaces import DRAWNS, OFFICENS, TEXTNS
    from odf.opendocument import load
    from odf.text import NoteBody

    document = load(str(path))
    visible: list[str] = []
    hidden: list[str] = []
    notes: list[Any] = []  # note bodies, in the order the text cites them
    hiding = _odt_hiding_styles(document)
    # Not the text: tracked deletions (kept apart in `text:tracked-changes`; insertions are in the flow), comments
    # (with their author's name), a note's own mark (numbered here instead).
    left_out = {
        (TEXTNS, "tracked-changes"),
        (OFFICENS, "annotation"),
        (OFFICENS, "annotation-end"),
        (TEXTNS, "note-citation"),
    }
    whitespace = {(TEXTNS, "line-break"): "\n", (TEXTNS, "tab"): "\t"}
    paragraph_kinds = ((TEXTNS, "p"), (TEXTNS, "h"))

    def styled(node: Any, family: str) -> bool:
        return (family, str(node.getAttrNS(TEXTNS, "style-name") or "")) in hiding

    def inline(node: Any, shown: list[str], unseen: list[str], boxes: list[Any]) -> bool:
        """Collect `node`'s text where it stands; True when it hides its whole paragraph (`text:hidden-paragraph`)."""
        hides_paragraph = False
        for child in node.childNodes:
            if child.nodeType == Node.TEXT_NODE:
                shown.append(child.data)
                continue
            qname = child.qname
            if qname in left_out:
                continue
            if qname in whitespace:
                shown.append(whitespace[qname])
            elif qname == (TEXTNS, "s"):
                shown.append(" " * int(child.getAttrNS(TEXTNS, "c") or 1))
            elif qname == (TEXTNS, "hidden-text"):
                unseen.append(str(child.getAttrNS(TEXTNS, "string-value") or teletype.extractText(child)))
            elif qname == (TEXTNS, "hidden-paragraph"):
                hides_paragraph = True
            elif qname == (TEXTNS, "note"):
                notes.extend(child.getElementsByType(NoteBody)[:1])
                shown.append(_mark(len(notes)))
            elif qname[0] == DRAWNS:
                boxes.append(child)  # a frame, text box or shape anchored here: read after the paragraph
            elif qname == (TEXTNS, "span") and styled(child, "text"):
                hides_paragraph |= inline(child, unseen, unseen, boxes)
            else:  # links, fields, ruby: their text where they stand
                hides_paragraph |= inline(child, shown, unseen, boxes)
        return hides_paragraph

    def blocks(node: Any) -> None:
        """Paragraphs and headings in document order; a frame's paragraphs after the paragraph it is anchored in."""
        for child in node.childNodes:
            qname = getattr(child, "qname", None)
            if qname in left_out:
                continue
            if qname in paragraph_kinds:
                shown: list[str] = []
                unseen: list[str] = []
                boxes: list[Any] = []
                if inline(child, shown, unseen, boxes) or styled(child, "paragraph"):
                    unseen, shown = shown + unseen, []
                visible.append("".join(shown))
                words = " ".join("".join(unseen).split())
                if words:
                    hidden.append(words)
                for box in boxes:
                    blocks(box)
            else:
                blocks(child)

    blocks(document.text)
    if notes:
        visible.append("Notes")
    for number, body in enumerate(notes, start=1):
        first = len(visible)
        blocks(body)
        visible[first:] = _footnote(number, visible[first:])
    creators = [
        teletype.extractText(n) for kind in (dc.Creator, meta.InitialCreator) for n in document.getElementsByType(kind)
    ]
    return Extracted(text=_tidy("\n\n".join(visible)), hidden=tuple(hidden), authors=_names(*creators))


# --- HTML ----------------------------------------------------------------------------------------------------

_WHITE = re.compile(r"^(?:#fff(?:fff)?|white|rgba?\(\s*255\s*,\s*255\s*,\s*255\s*(?:,\s*[\d.]+\s*)?\))$", re.I)
_TINY = re.compile(r"^(?:0|0?\.\d+|1)(?:px|pt)?$|^0(?:\.\d+)?(?:em|rem|%)$", re.I)
_BLOCKS = ("p", "div", "li", "tr", "br", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "section", "table")


def _style_hides(style: str) -> bool:
    decls = {}
    for decl in style.split(";"):
        if ":" in decl:
            key, value = decl.split(":", 1)
            decls[key.strip().lower()] = value.strip().lower().replace("!important", "").strip()
    return (
        decls.get("display") == "none"
        or decls.get("visibility") == "hidden"
        or decls.get("opacity") in ("0", "0.0")
        or bool(_TINY.match(decls.get("font-size", "x")))
        or bool(_WHITE.match(decls.get("color", "")))
    )


def _html(path: Path, data: bytes) -> Extracted:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    authors = _names(*(m.get("content") for m in soup.find_all("meta", attrs={"name": re.compile("^author$", re.I)})))
    if soup.head is not None:
        soup.head.decompose()
    hidden: list[str] = []
    for tag in soup.find_all(True):
        if tag.decomposed:
            continue
        font_colour = tag.name == "font" and bool(_WHITE.match(str(tag.get("color", ""))))
        if tag.has_attr("hidden") or _style_hides(str(tag.get("style", ""))) or font_colour:
            words = " ".join(tag.get_text(" ").split())
            if words:
                hidden.append(words)
            tag.decompose()
    for tag in soup.find_all(_BLOCKS):
        tag.insert_before("\n\n" if tag.name != "br" else "\n")
        tag.insert_after("\n\n" if tag.name != "br" else "")
    text = "\n".join(" ".join(line.split()) for line in soup.get_text("").split("\n"))
    return Extracted(text=_tidy(text), hidden=tuple(hidden), authors=authors)


# --- RTF and plain text ----------------------------------------------------------------------------------------


def _rtf(path: Path, data: bytes) -> Extracted:
    from striprtf.striprtf import rtf_to_text

    if not data.lstrip().startswith(b"{\\rtf"):
        return Extracted(problem="corrupt .rtf file (no RTF header): ask the student to upload it again")
    return Extracted(text=_tidy(rtf_to_text(data.decode("cp1252", errors="replace"), errors="ignore")))


def _plain(path: Path, data: bytes) -> Extracted:
    try:
        return Extracted(text=_tidy(data.decode("utf-8-sig")))
    except UnicodeDecodeError:
        return Extracted(
            text=_tidy(data.decode("cp1252", errors="replace")), notes=("not UTF-8: read as Windows-1252",)
        )
