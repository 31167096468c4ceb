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


PHASES = ("collate", "synthesise", "draft")
_artifacts: dict[str, object] = {}


def prefect_progress(phase: str, done: int, total: int, subject: str = "") -> None:
    """Keep the flow run's progress artifact (Prefect UI, Artifacts tab) in step with its phases."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None or phase not in PHASES:
        return
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    share = (done / total) if total else 1.0
    percent = round(100 * (PHASES.index(phase) + share) / len(PHASES), 1)
    run_id = str(context.flow_run.id)
    description = f"{phase}: {done}/{total}" + (f" ({subject})" if subject else "")
    with _lock:
        artifact = _artifacts.get(run_id)
        if artifact is None:
            _artifacts[run_id] = create_progress_artifact(
                percent, key=f"{context.flow.name}-progress", description=description
            )
            return
    update_progress_artifact(artifact, percent, description=description)
