"""Printing tables so that they are whole: in a terminal they fit its width, in a pipe or file they are never cut.

Rich assumes 80 columns when output is not a terminal, and then shortens cells to `synthe…`. A table printed
to a pipe is instead given the width its content needs, so identifiers (phases, `provider:model`) stay whole.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.measure import Measurement

UNBOUNDED = 100_000


def show(console: Console, renderable: Any) -> None:
    """Print `renderable`; outside a terminal, at the full width of its content."""
    if console.is_terminal:
        console.print(renderable)
        return
    needed = Measurement.get(console, console.options.update_width(UNBOUNDED), renderable).maximum
    width = console.width
    console.width = max(width, needed)
    try:
        console.print(renderable)
    finally:
        console.width = width
