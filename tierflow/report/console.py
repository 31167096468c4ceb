"""Printing tables so that they are whole: in a terminal they fit its width, in a pipe or file they are never cut.

Rich assumes 80 columns when output is not a terminal, and then shortens cells to `synthe…`. A table printed
to a pipe is instead given the width its content needs, so identifiers (phases, `provider:model`) stay whole; in
a terminal, a table wraps its cells between words to fit, and is printed wider only when a word would be cut.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.measure import Measurement

UNBOUNDED = 100_000


def show(console: Console, renderable: Any) -> None:
    """Print `renderable`; outside a terminal, at the full width of its content; in a terminal too narrow for its
    longest words (run ids, states), at that width, which the terminal wraps, rather than cut them."""
    measured = Measurement.get(console, console.options.update_width(UNBOUNDED), renderable)
    if console.is_terminal and measured.minimum <= console.width:
        console.print(renderable)
        return
    needed = measured.minimum if console.is_terminal else measured.maximum
    width = console.width
    console.width = max(width, needed)
    try:
        console.print(renderable)
    finally:
        console.width = width
