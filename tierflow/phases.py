"""How a flow submits a phase task: its route is resolved first, so the task run is created with its tags.

Prefect sets a task run's tags when it creates the run; afterwards only the run's name can change. So the
flow resolves `phase -> complexity -> tier -> model` before submitting, and the task run carries
`phase:`, `complexity:`, `tier:` and `model:` from its first state on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from prefect import Task

from tierflow.calls import RunSettings, caller_for
from tierflow.routing import Route

R = TypeVar("R")


def phase_route(
    settings: RunSettings,
    *,
    phase: str,
    complexity: str,
    front_matter: Mapping[str, Any] | None = None,
    note: str = "",
) -> Route:
    return caller_for(settings).route(phase, complexity, front_matter=front_matter, note=note)


def phase_task(
    task: Task[..., R],
    settings: RunSettings,
    *,
    phase: str,
    complexity: str,
    subject: str,
    front_matter: Mapping[str, Any] | None = None,
    note: str = "",
) -> Task[..., R]:
    """`task`, named `<phase> · <subject>` and tagged with its route, ready to call or `.submit()`."""
    routed = phase_route(settings, phase=phase, complexity=complexity, front_matter=front_matter, note=note)
    return task.with_options(
        name=f"{phase}",
        task_run_name=f"{phase} · {subject}"[:100],
        tags=sorted(routed.tags),
    )
