"""Printing tables so that they are whole: in a terminal they fit its width, in a pipe or file they are never cut.

Rich assumes 80 columns when output is not a terminal, and then shortens cells to `synthe…`. A table printed
to a pipe is instead given the width its content needs, so identifiers (phases, `provider:model`) stay whole.

In a terminal, rich fits a table to the width by shrinking its widest columns below their longest word and
cutting that word (`$0.00…`, `anthropic:claud…`). `show` chooses the widths itself instead: a column may wrap
between words (or, when it folds, anywhere), never cut one. When even that is too wide, the columns the caller
names as optional are left out, first named first, and the caption says which; when that is not enough either,
each row is printed as a block of `column: value` lines.

Where the output's encoding cannot hold a character (a Windows code page, in a file or a pipe), a table's text
shows it as `?` before it is measured, so the table prints, lined up, instead of ending the command.
"""

from __future__ import annotations

import codecs
import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

UNBOUNDED = 100_000


def show(console: Console, renderable: Any, *, optional: Sequence[str] = ()) -> None:
    """Print `renderable`; outside a terminal, at the full width of its content; in a terminal, a table at the
    terminal's width with every word whole, leaving out the `optional` columns (by header, first named first)
    only as far as it must, else as one block per row."""
    if isinstance(renderable, Table) and codecs.lookup(console.encoding).name != "utf-8":
        renderable = _encodable(renderable, console.encoding)
    if not console.is_terminal:
        measured = Measurement.get(console, console.options.update_width(UNBOUNDED), renderable)
        width = console.width
        console.width = max(width, measured.maximum)
        try:
            console.print(renderable)
        finally:
            console.width = width
        return
    if not isinstance(renderable, Table):
        console.print(renderable)
        return
    table = renderable
    left_out: list[str] = []
    for name in [None, *optional]:
        if name is not None:
            kept = [c for c in table.columns if c.header != name]
            if len(kept) == len(table.columns):
                continue  # not a column of this table
            left_out.append(name)
            table = _with_columns(table, kept)
        fitted = _fitted(console, table)
        if fitted is not None:
            if left_out:
                note = f"not shown at this width: {', '.join(left_out)} (a wider terminal or a pipe shows them)"
                fitted.caption = f"{fitted.caption}\n{note}" if fitted.caption else note
            console.print(fitted)
            return
    _print_blocks(console, renderable)


def _encodable(table: Table, encoding: str) -> Table:
    """A copy of `table` whose title, caption, headers and cells hold only what `encoding` can write: any other
    character becomes `?` (one for one, so a `Text` keeps its styles), and the columns are measured as printed."""

    def held(value: Any) -> Any:
        if isinstance(value, str):
            return value.encode(encoding, "replace").decode(encoding)
        if isinstance(value, Text):
            text = value.copy()
            text.plain = held(value.plain)
            return text
        return value  # another renderable (a nested table, a progress bar): printed as it is

    encodable = copy.copy(table)
    encodable.title, encodable.caption = held(table.title), held(table.caption)
    encodable.columns = [
        replace(c, header=held(c.header), footer=held(c.footer), _cells=[held(cell) for cell in c._cells])
        for c in table.columns
    ]
    return encodable


def _with_columns(table: Table, columns: list[Column]) -> Table:
    """A copy of `table` with only `columns` (rows keep their cells and styles)."""
    narrower = copy.copy(table)
    narrower.columns = [replace(c, _index=i) for i, c in enumerate(columns)]
    return narrower


def _range(console: Console, column: Column) -> tuple[int, int]:
    """The narrowest and the widest a column's content may be printed: its longest word (for a column that
    folds, its header's; for one that never wraps, its longest line), and its longest line."""
    options = console.options.update_width(UNBOUNDED)
    header = Measurement.get(console, options, column.header)
    cells = [Measurement.get(console, options, cell) for cell in column.cells]
    widest = max([header.maximum, *(m.maximum for m in cells)])
    if column.no_wrap:
        return widest, widest
    if column.overflow == "fold":
        return max(header.minimum, 1), widest
    return max([header.minimum, *(m.minimum for m in cells)]), widest


def _fitted(console: Console, table: Table) -> Table | None:
    """`table` with the widths that fit the terminal, narrowing the widest columns first but none below its
    narrowest; None when the narrowest are too wide together."""
    ranges = [_range(console, c) for c in table.columns]
    widths = [widest for _, widest in ranges]
    # Borders and padding: what the table measures beyond its columns' content.
    frame = Measurement.get(console, console.options.update_width(UNBOUNDED), table).maximum - sum(widths)
    excess = sum(widths) + frame - console.width
    if excess <= 0:
        return table
    if sum(narrowest for narrowest, _ in ranges) + frame > console.width:
        return None
    while excess > 0:
        i = max((i for i in range(len(widths)) if widths[i] > ranges[i][0]), key=lambda i: widths[i])
        widths[i] -= 1
        excess -= 1
    fitted = copy.copy(table)
    fitted.columns = [replace(c, width=w) for c, w in zip(table.columns, widths, strict=True)]
    return fitted


def _print_blocks(console: Console, table: Table) -> None:
    """Each row as lines of `column: value`, a blank line between rows: for a terminal too narrow for the table."""
    if table.title:
        console.print(table.title, style=table.title_style or "table.title", highlight=False)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    cells = [list(c.cells) for c in table.columns]
    for n, row in enumerate(table.rows):
        if n:
            grid.add_row()
        for column, values in zip(table.columns, cells, strict=True):
            value = values[n]
            if value == "":
                continue  # a totals row's empty model column, say
            header = f"{column.header}:" if isinstance(column.header, str) else column.header
            grid.add_row(header, value, style=row.style)
    console.print(grid)
    if table.caption:
        console.print(table.caption, style=table.caption_style or "table.caption", highlight=False)
