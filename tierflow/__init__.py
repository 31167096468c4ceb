"""tierflow's public API: what a phase-routed flow of your own needs, as `from tierflow import ...`.

`docs/your-own-flow.md` builds a whole flow from these names. Each is imported only when first used, so
`import tierflow` stays cheap (no Prefect, no SDKs); type checkers and IDEs read the `TYPE_CHECKING` imports below,
which give each its real type. Prefect's `flow` and `task` and pydantic's `BaseModel` and `Field` are here too, so
that a flow file needs one import line.

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs read; `X as X` re-exports it (`_WHERE` imports it at run time)
    from prefect import flow as flow
    from prefect import task as task
    from pydantic import BaseModel as BaseModel
    from pydantic import Field as Field

    from tierflow.core.calls import Answer as Answer
    from tierflow.core.calls import RunSettings as RunSettings
    from tierflow.core.calls import caller_for as caller_for
    from tierflow.core.checks import Check as Check
    from tierflow.core.checks import reading_as as reading_as
    from tierflow.core.context import prompt_room as prompt_room
    from tierflow.core.errors import TierflowError as TierflowError
    from tierflow.core.errors import VaultError as VaultError
    from tierflow.core.hierarchy import prompt_tokens as prompt_tokens
    from tierflow.core.hierarchy import reduce_in_groups as reduce_in_groups
    from tierflow.core.phases import Phase as Phase
    from tierflow.core.phases import PhaseOutcome as PhaseOutcome
    from tierflow.core.phases import begin_run as begin_run
    from tierflow.core.registry import FlowSpec as FlowSpec
    from tierflow.flowkit.checks import links_resolve as links_resolve
    from tierflow.flowkit.folder import read_folder as read_folder
    from tierflow.flowkit.folder import templates as templates
    from tierflow.flowkit.folder import writer_for as writer_for
    from tierflow.offline.skills import register_skill as register_skill
    from tierflow.report.plan import Plan as Plan
    from tierflow.report.run_report import RunStopped as RunStopped
    from tierflow.report.run_report import RunSummary as RunSummary
    from tierflow.report.run_report import final_state as final_state
    from tierflow.report.run_report import write_run_report as write_run_report
    from tierflow.vault.folder import Folder as Folder
    from tierflow.vault.folder import Note as Note
    from tierflow.vault.links import VaultNames as VaultNames
    from tierflow.vault.notes import NoteWriter as NoteWriter
    from tierflow.vault.notes import WriteResult as WriteResult

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
