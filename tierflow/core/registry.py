"""The flows tierflow can run, by name, found through the `tierflow.flows` entry points.

The CLI, the planner and the deployment helpers look flows up here, so no core module imports a flow, and
a separate package can add its own flow by declaring an entry point:

    [project.entry-points."tierflow.flows"]
    grant-review = "my_package.grant_review:SPEC"
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tierflow.core.errors import ConfigError, TierflowError

GROUP = "tierflow.flows"


@dataclass(frozen=True)
class FlowSpec:
    """What tierflow needs to know about a flow to run, plan and schedule it."""

    name: str
    """The CLI name, which is also the Prefect flow name."""
    flow: Any
    """The Prefect flow object."""
    deployment: str = "on-demand"
    """The default deployment name for `tierflow schedule`; `on-demand` becomes `scheduled` with `--cron`."""
    plan: Callable[..., Any] | None = None
    """`plan(config, vault, *, tier, **parameters) -> Plan`, or None when the flow has no planner."""

    @property
    def entrypoint(self) -> str:
        """A module path (`package.module.function`), so workers need the package, not a checkout."""
        fn = self.flow.fn
        return f"{fn.__module__}.{fn.__name__}"

    def takes(self, parameter: str) -> bool:
        """Whether the flow's function takes `parameter` (any name, when it takes **kwargs)."""
        accepted = _parameters(self.flow.fn)
        return accepted is None or parameter in accepted

    def accepted(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """The `parameters` the flow's function takes: all of them when it takes **kwargs."""
        return {name: value for name, value in parameters.items() if self.takes(name)}

    def parameter_names(self) -> list[str]:
        """The names of the flow's parameters, as its signature lists them (without *args and **kwargs)."""
        return list(_parameters(self.flow.fn) or ())


def _parameters(fn: Callable[..., Any]) -> list[str] | None:
    """The keyword parameters `fn` takes, or None when it takes **kwargs (any keyword)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def flow_names() -> list[str]:
    """Names of every registered flow, without importing any of them."""
    return sorted({ep.name for ep in metadata.entry_points(group=GROUP)})


def flow_spec(name: str) -> FlowSpec:
    """The registered flow called `name`."""
    entry = _entry_point(name)
    spec = entry.load()
    if not isinstance(spec, FlowSpec):
        raise ConfigError(f"the entry point {entry.value!r} for flow {name!r} is not a tierflow FlowSpec")
    return spec


def _entry_point(name: str) -> metadata.EntryPoint:
    found = [ep for ep in metadata.entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise ConfigError(f"no flow named {name!r}; the flows are: {', '.join(flow_names()) or 'none'}")
    return found[0]


def check_same_install(flow_fn: Callable[..., Any], flow_name: str, running_name: str | None = None) -> None:
    """Refuse to run a flow file whose installed tierflow holds a different copy of it.

    A `prefect.yaml` deployment started from a checkout loads the flow from the checkout's file, but the
    flow's tasks and the core come from the installed package. If the two copies differ, the run would mix
    versions; this stops it at flow start with what to do.
    """
    try:
        running = Path(inspect.getfile(flow_fn)).resolve()
    except (TypeError, OSError):
        return
    try:
        spec = flow_spec(flow_name)
        registered = spec.flow
        installed = Path(inspect.getfile(registered.fn)).resolve()
    except (TierflowError, TypeError, OSError):
        return
    # Code with no file to compare (a flow Prefect pickled by value and runs from its bundle: `flow.serve()` pickles
    # the flow's local modules, its code then named `<dynamic-code>`; or a notebook cell, `python -c`, exec): its
    # function's code is compared instead, which a pickled copy keeps (file name aside) and an edited copy does not.
    fileless = not running.is_file()
    if running == installed or (
        getattr(flow_fn, "__code__", None) == registered.fn.__code__
        if fileless
        else _digest(running) == _digest(installed)
    ):
        return
    if running_name is not None and getattr(registered, "name", running_name) != running_name:
        # Not another copy of the same flow: begin_run was given the name of another registered flow (a flow
        # copied from one and renamed in its @flow and FlowSpec only).
        raise TierflowError(
            f"begin_run({flow_name!r}) in the {running_name} flow ({running}) gives the name of another registered "
            f"flow, the {registered.name} flow of {installed}: give begin_run this flow's own name, the one its "
            "FlowSpec registers it under"
        )
    # The package that registers the flow: tierflow for its own flows, yours for a flow of yours.
    dist = _entry_point(flow_name).dist
    package = f"{dist.name} {dist.version}" if dist is not None else "package"
    if fileless:
        raise TierflowError(
            f"the {flow_name} flow defined in {running.name} (code with no file: a notebook cell, python -c or exec) "
            f"differs from the one in the installed {package} ({installed}); runs recorded as the {flow_name} flow "
            f"are resumed with the installed one. Give your copy a name of its own, in @flow and begin_run, or run "
            f"the installed flow (entrypoint {spec.entrypoint})."
        )
    raise TierflowError(
        f"the flow file {running} differs from the one in the installed {package} ({installed}). "
        "What it imports (its tasks, tierflow's core) would come from the installed packages, so the run would mix "
        f"two versions. Install this checkout where the flow runs (pip install -e {_checkout(running)}), or run the "
        f"installed flow (entrypoint {spec.entrypoint})."
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _checkout(flow_file: Path) -> Path:
    for parent in flow_file.parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return flow_file.parent
