"""Progress of a run's phases, for whoever listens: the CLI's progress bars, Prefect's progress artifact."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

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


def artifact_key(flow: str, what: str, vault: str | None = None) -> str:
    """`<flow>-<what>`, scoped to the vault (`-<folder>-<path hash>`) so two vaults' runs never share a key.

    Prefect artifact keys allow only lower-case letters, digits and dashes.
    """
    scope = ""
    if vault:
        path = Path(vault).resolve()
        scope = f"-{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:6]}"
    key = "".join(ch if ch.isascii() and (ch.isalnum() or ch == "-") else "-" for ch in f"{flow}-{what}{scope}".lower())
    return "-".join(part for part in key.split("-") if part)


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
            vault = (context.parameters or {}).get("vault")
            _artifacts[run_id] = create_progress_artifact(
                percent, key=artifact_key(context.flow.name, "progress", vault), description=description
            )
            return
    update_progress_artifact(artifact, percent, description=description)
