"""CSV files kept byte for byte: split into raw field text, so only the cells tierflow fills are rewritten.

Both platforms' importers read the whole file; the cells tierflow does not own (names, ids, dates, totals, other
assignments) must reach them exactly as downloaded, quoting and line ends included.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass


def fputcsv_field(value: str) -> str:
    """One field as PHP's `fputcsv($fp, $row, ',', '"', '')` writes it: quoted when it holds a comma, a quote,
    a space, a tab, CR or LF, with quotes doubled."""
    if any(ch in value for ch in ',"\n\r\t '):
        return '"' + value.replace('"', '""') + '"'
    return value


@dataclass
class RawRow:
    """A worksheet row as bytes-faithful text: each field exactly as it stands in the file, and the line end."""

    fields: list[str]
    end: str


def split_raw(text: str) -> list[RawRow]:
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
        elif ch == ",":
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


def raw_value(raw: str) -> str:
    return next(csv.reader([raw]))[0] if raw else ""
