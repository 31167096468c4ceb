"""Progress of a run's phases, for whoever listens: the CLI's progress bars, Prefect's progress artifact."""

from __future__ import annotations

import threading
from collections.abc import Callable

Listener = Callable[[str, int, int, str], None]
"""Called with (phase, done, total, subject)."""

_listeners: list[Listener] = []
_lock = threading.Lock()


def listen(listener: Listener) -> Callable[[], None]:
    """Add a listener; returns the function that removes it."""
    with _lock:
        _listeners.append(listener)

    def remove() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return remove


def advance(phase: str, done: int, total: int, subject: str = "") -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(phase, done, total, subject)
