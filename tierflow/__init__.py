"""tierflow's public API: what a phase-routed flow of your own needs, as `from tierflow import ...`.

`docs/your-own-flow.md` builds a whole flow from these names. Each is imported only when first used, so
`import tierflow` stays cheap (no Prefect, no SDKs). Prefect's `flow` and `task` and pydantic's `BaseModel`
and `Field` are here too, so that a flow file needs one import line.

Running a flow:   `flow`, `task`, `begin_run`, `RunSettings`, `FlowSpec`
Phases:           `Phase` (`.each`, `.once`, and `.ask` for its call), `PhaseOutcome`, `reduce_in_groups`,
                  `prompt_room`, `prompt_tokens`
The call:         `caller_for` (`caller_for(settings).ask(...)` returns an `Answer`), `BaseModel`, `Field`,
                  `Check`, `links_resolve`, `reading_as` (a rebuilt check reads the answer as your model)
The vault:        `read_folder` (`Folder` of `Note`s), `writer_for` (a safe `NoteWriter`, giving `WriteResult`s),
                  `VaultNames`, `templates`
The run report:   `RunSummary`, `write_run_report`, `final_state` (what the flow returns), `RunStopped`
Planning:         `Plan`
The offline model: `register_skill`
Errors:           `TierflowError`, `VaultError`
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE: dict[str, str] = {
    "flow": "prefect",
    "task": "prefect",
    "BaseModel": "pydantic",
    "Field": "pydantic",
    "RunSettings": "tierflow.core.calls",
    "caller_for": "tierflow.core.calls",
    "Answer": "tierflow.core.calls",
    "begin_run": "tierflow.core.phases",
    "Phase": "tierflow.core.phases",
    "PhaseOutcome": "tierflow.core.phases",
    "reduce_in_groups": "tierflow.core.hierarchy",
    "prompt_room": "tierflow.core.context",
    "prompt_tokens": "tierflow.core.hierarchy",
    "Check": "tierflow.core.checks",
    "reading_as": "tierflow.core.checks",
    "FlowSpec": "tierflow.core.registry",
    "TierflowError": "tierflow.core.errors",
    "VaultError": "tierflow.core.errors",
    "read_folder": "tierflow.flowkit.folder",
    "writer_for": "tierflow.flowkit.folder",
    "templates": "tierflow.flowkit.folder",
    "Folder": "tierflow.vault.folder",
    "Note": "tierflow.vault.folder",
    "NoteWriter": "tierflow.vault.notes",
    "WriteResult": "tierflow.vault.notes",
    "VaultNames": "tierflow.vault.links",
    "links_resolve": "tierflow.flowkit.checks",
    "RunSummary": "tierflow.report.run_report",
    "write_run_report": "tierflow.report.run_report",
    "final_state": "tierflow.report.run_report",
    "RunStopped": "tierflow.report.run_report",
    "Plan": "tierflow.report.plan",
    "register_skill": "tierflow.offline.skills",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tierflow' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
