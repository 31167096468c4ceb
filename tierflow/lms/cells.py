"""CSV files as the platforms wrote them or Excel saved them again, kept byte for byte: split into raw field text,
so only the cells tierflow fills are rewritten.

Both platforms' importers read the whole file; the cells tierflow does not own (names, ids, dates, totals, other
assignments) must reach them exactly as downloaded, quoting and line ends included.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from tierflow.core.errors import PicklableError

DELIMITERS = (",", ";", "\t")
"""The platforms write `,`; Excel saves `;` where the decimal separator is a comma, and tab as "Text (Tab
delimited)"."""


_OTHER_CODE_PAGE = re.compile(r"(?<![^\W\d_])[À-ÖØ-öø-ÿ]{3,}(?![^\W\d_])")
"""A word of three or more letters, every one of them accented (`Èâàí`): no language Windows-1252 writes has one,
but a Cyrillic, Greek, Hebrew or Arabic file Excel saved in its own Windows code page reads so as Windows-1252."""


class CsvEncodingError(PicklableError, ValueError):
    """The file is neither UTF-8 nor Windows-1252 text; the message follows the file's name."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f'is {what}: tierflow reads a CSV saved as UTF-8 or as Windows-1252 (Excel\'s "CSV UTF-8" and '
            '"CSV") and guesses no other encoding. Give the file as the platform downloaded it, or save it '
            'again as "CSV UTF-8".'
        )


@dataclass(frozen=True)
class Dialect:
    """How a CSV file was saved: its encoding, whether it starts with a UTF-8 BOM, and its delimiter."""

    encoding: str = "utf-8"
    bom: bool = False
    delimiter: str = ","

    def encode(self, text: str) -> bytes:
        """`text` as the file was saved. Windows-1252 lacks most of Unicode: what it cannot hold becomes an HTML
        character reference, which the feedback cells (HTML) show as the character itself."""
        if self.encoding == "utf-8":
            return (b"\xef\xbb\xbf" if self.bom else b"") + text.encode("utf-8")
        return text.encode(self.encoding, errors="xmlcharrefreplace")

    @property
    def described(self) -> str:
        """`Windows-1252, ;-separated`: what the lecturer picks in the platform's upload form."""
        encoding = "UTF-8" if self.encoding == "utf-8" else "Windows-1252"
        delimiter = "tab" if self.delimiter == "\t" else self.delimiter
        return f"{encoding}, {delimiter}-separated"


def read_csv(data: bytes) -> tuple[str, Dialect]:
    """The text of a CSV file as the platform wrote it or Excel saved it again, and how it was saved.

    UTF-8 (with or without a BOM) is tried first, then Windows-1252, which Excel's plain "CSV" is on Windows;
    nothing else is guessed (a NUL byte, as UTF-16 has, is refused, and so is a file that reads as Windows-1252
    with words no language it writes has: another code page's). The delimiter is whichever of `,` `;` and tab
    the header line holds most of outside quotes (`,` when none).
    """
    bom = data.startswith(b"\xef\xbb\xbf")
    if b"\x00" in data:
        raise CsvEncodingError("UTF-16 or binary (it holds NUL bytes)")
    try:
        text, encoding = data[3 if bom else 0 :].decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        try:
            text, encoding = data.decode("cp1252"), "cp1252"
        except UnicodeDecodeError:
            raise CsvEncodingError("neither UTF-8 nor Windows-1252") from None
        # Read as Windows-1252, such a file's names are garbled (Иван as Èâàí): they would match no essay, and a
        # student's name would reach the model unhidden. Refused, as a file in no encoding tierflow reads.
        if garbled := _OTHER_CODE_PAGE.search(text):
            raise CsvEncodingError(
                f"saved in another Windows code page than Windows-1252 (read as Windows-1252 it has {garbled.group()!r}"
                ': Excel\'s "CSV" on a Cyrillic, Greek, Hebrew or Arabic Windows)'
            ) from None
    header: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "\r\n":
            break
        elif not quoted:
            header.append(ch)
    counts = {d: header.count(d) for d in DELIMITERS}
    return text, Dialect(encoding, bom, max(DELIMITERS, key=lambda d: counts[d]))


def rows_of(data: bytes) -> list[list[str]]:
    """The file's rows of values (see `read_csv`), for a reader that only reads."""
    text, dialect = read_csv(data)
    return list(csv.reader(io.StringIO(text), delimiter=dialect.delimiter))


def found(header: list[str]) -> str:
    """A header as found, for an error naming what a file holds: the columns `Name`, `Mark` (the first dozen)."""
    if not any(h.strip() for h in header):
        return "no header"
    shown = ", ".join(f"`{h}`" for h in header[:12])
    return f"the columns {shown}" + (f" and {len(header) - 12} more" if len(header) > 12 else "")


def fputcsv_field(value: str, delimiter: str = ",") -> str:
    """One field as PHP's `fputcsv($fp, $row, $delimiter, '"', '')` writes it: quoted when it holds the
    delimiter, a quote, a space, a tab, CR or LF, with quotes doubled."""
    if any(ch in value for ch in f'{delimiter}"\n\r\t '):
        return '"' + value.replace('"', '""') + '"'
    return value


@dataclass
class RawRow:
    """A worksheet row as bytes-faithful text: each field exactly as it stands in the file, and the line end."""

    fields: list[str]
    end: str


def split_raw(text: str, delimiter: str = ",") -> list[RawRow]:
    """Split CSV text into rows of raw field text (quotes kept), so untouched cells are written back verbatim.

    Only field boundaries are found here; values are read with Python's `csv` module (`raw_value`).
    """
    rows: list[RawRow] = []
    fields: list[str] = []
    start = i = 0
    quoted = False
    n = len(text)
    while i < n:
        ch = text[i]
        if quoted:
            if ch == '"':
                if i + 1 < n and text[i + 1] == '"':
                    i += 2
                    continue
                quoted = False
        elif ch == '"' and i == start:
            quoted = True
        elif ch == delimiter:
            fields.append(text[start:i])
            start = i + 1
        elif ch in "\r\n":
            end = "\r\n" if text.startswith("\r\n", i) else ch
            fields.append(text[start:i])
            rows.append(RawRow(fields, end))
            fields = []
            i += len(end)
            start = i
            continue
        i += 1
    if start < n or fields:
        fields.append(text[start:n])
        rows.append(RawRow(fields, ""))
    return rows


def raw_value(raw: str, delimiter: str = ",") -> str:
    return next(csv.reader([raw], delimiter=delimiter))[0] if raw else ""


def render(rows: list[RawRow], dialect: Dialect) -> bytes:
    """The rows written back in the file's own encoding and delimiter."""
    return dialect.encode("".join(dialect.delimiter.join(r.fields) + r.end for r in rows))
