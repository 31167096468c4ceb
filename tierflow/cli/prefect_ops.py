"""Prefect operations: scheduled deployments, tier concurrency limits, and the choice of task runner.

Everything here talks to the Prefect API named by `PREFECT_API_URL`. Prefect is imported inside the
functions, so importing this module (and so `tierflow --help`) stays fast.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import logging
import shlex
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, get_type_hints

from tierflow.core.errors import TierflowError

if TYPE_CHECKING:
    import pydantic
    from prefect import Flow
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.task_runners import TaskRunner

    from tierflow.core.config import Config

DEFAULT_POOL = "tierflow"
"""The process work pool tierflow's deployments use unless told otherwise."""
DEFAULT_QUEUE = "default"
TAGS = ["tierflow"]
BANNED_LIMIT_CHARACTERS = ("/", "%", "&", ">", "<")
"""Characters Prefect refuses in concurrency-limit names (`prefect.types.names.BANNED_CHARACTERS`)."""
TIER_TAG_PREFIX = "tier:"

START_A_SERVER = (
    "Start one in another terminal with `prefect server start`, then point tierflow at it: "
    "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` (or export PREFECT_API_URL)."
)
NOT_CONFIGURED = "no Prefect server is configured (PREFECT_API_URL is not set)"
NO_SERVER = (
    f"{NOT_CONFIGURED}. Schedules and limits need a running "
    "server: without one, Prefect starts a temporary server for each run and stops it afterwards, so a "
    "schedule would never fire and a limit would hold for nothing. " + START_A_SERVER
)


class OpsError(TierflowError):
    """A Prefect operation cannot be done; says why and what to do, and nothing was changed."""


class OpsUsageError(OpsError):
    """The command's own input is wrong (a parameter, cron expression, time zone or name): a usage error."""


class NoServer(OpsError):
    """No Prefect server to talk to: none is configured (`url` None), or the configured one does not answer.

    `reason` says which in a clause of its own (`NOT_CONFIGURED`, or "the Prefect API at URL is not reachable
    (...)"), for a command that can do without a server."""

    def __init__(self, message: str, *, url: str | None, reason: str) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class FlowTarget:
    """A flow tierflow can schedule: its CLI name (also its Prefect flow name) and where its code is."""

    name: str
    entrypoint: str
    """A module path (`package.module.function`), so workers need the package, not a checkout."""
    deployment: str
    """The default deployment name."""
    scheduled_deployment: str | None = None
    """The default name of a deployment with a schedule; None: `deployment`, unless that is `on-demand`."""

    def default_name(self, scheduled: bool) -> str:
        """The deployment's name when `--name` is not given: one on a schedule is never called `on-demand`."""
        if not scheduled:
            return self.deployment
        if self.scheduled_deployment:
            return self.scheduled_deployment
        return SCHEDULED if self.deployment == ON_DEMAND else self.deployment


ON_DEMAND = "on-demand"
SCHEDULED = "scheduled"

FLOWS: dict[str, FlowTarget] = {
    "reading-notes": FlowTarget("reading-notes", "tierflow.flows.reading_notes.reading_notes", "weekly"),
    "student-feedback": FlowTarget("student-feedback", "tierflow.flows.student_feedback.student_feedback", ON_DEMAND),
    "module-review": FlowTarget(
        "module-review", "tierflow.flows.module_review.module_review", ON_DEMAND, scheduled_deployment="end-of-term"
    ),
}


def flow_target(name: str) -> FlowTarget:
    """The schedulable flow called `name`: a built-in one, or one a package registered (`tierflow.flows`)."""
    if name in FLOWS:
        return FLOWS[name]
    from tierflow.core.registry import flow_spec

    spec = flow_spec(name)
    return FlowTarget(spec.name, spec.entrypoint, spec.deployment)


# --- the Prefect API -----------------------------------------------------------------------------


def api_url() -> str | None:
    """The configured Prefect API URL, or None when Prefect would fall back to a temporary server."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


@contextmanager
def prefect_client() -> Iterator[SyncPrefectClient]:
    """A client for the configured, reachable Prefect API; OpsError, plainly worded, when there is none."""
    url = api_url()
    if not url:
        raise NoServer(NO_SERVER, url=None, reason=NOT_CONFIGURED)
    from prefect import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
        if problem is not None:
            reason = f"the Prefect API at {url} is not reachable ({_reason(problem)})"
            raise NoServer(
                f"{reason}. Is `prefect server start` running there? Nothing was changed. {START_A_SERVER}",
                url=url,
                reason=reason,
            )
        yield client


def every(read: Callable[..., list[Any]], **query: Any) -> list[Any]:
    """Everything a Prefect `read_*` listing matches, page by page: the server returns at most its
    PREFECT_SERVER_API_DEFAULT_LIMIT objects (200 unless set) per request, and drops the rest without a word.

    Pages are read until an empty one, so no page size is assumed. An object that moves between two pages (one
    created or deleted meanwhile) is counted once, by its id."""
    seen: dict[Any, Any] = {}
    offset = 0
    while page := read(offset=offset, **query):
        offset += len(page)
        for item in page:
            seen.setdefault(item.id, item)
    return list(seen.values())


def _flow_names(client: SyncPrefectClient, flow_ids: set[Any]) -> dict[Any, str]:
    """The names of the flows with these ids, read by id rather than from a listing of every flow."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterId

    ids = sorted(flow_ids, key=str)
    names: dict[Any, str] = {}
    for start in range(0, len(ids), 100):  # a bounded request body, however many flows there are
        chunk = FlowFilter(id=FlowFilterId(any_=ids[start : start + 100]))
        names.update((f.id, f.name) for f in every(client.read_flows, flow_filter=chunk))
    return names


def _deployments(client: SyncPrefectClient, name: str | None = None) -> list[tuple[str, Any]]:
    """`(flow/deployment, deployment)` for every deployment on the server, or every one called `name`."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import DeploymentSort

    only = DeploymentFilter(name=DeploymentFilterName(any_=[name])) if name is not None else None
    # Created order, not name order: many deployments share a name (`on-demand`), and rows that tie on the sort
    # key may come back in any order from page to page.
    found = every(client.read_deployments, deployment_filter=only, sort=DeploymentSort.CREATED_DESC)
    flows = _flow_names(client, {d.flow_id for d in found})
    return [(f"{flows.get(d.flow_id, '?')}/{d.name}", d) for d in found]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


# --- schedules -----------------------------------------------------------------------------------


def cron_schedule(cron: str, timezone: str) -> CronSchedule:
    """A validated cron schedule; OpsError with a plain explanation for a bad expression or time zone."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    check_timezone(timezone)
    try:
        return CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        detail = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise OpsUsageError(
            f"--cron {cron!r} is not a cron expression Prefect accepts ({detail}). Write five fields, "
            'minute hour day-of-month month day-of-week: "0 7 * * MON" is Mondays at 07:00.'
        ) from None


def check_timezone(timezone: str) -> str:
    """`timezone` if it is an IANA time zone name; else OpsError, suggesting the name meant."""
    from tierflow.core.config import timezone_problem

    if problem := timezone_problem(timezone):
        raise OpsUsageError(f"--timezone {problem}.")
    return timezone


def describe_schedule(cron: str, timezone: str) -> str:
    """`0 7 * * MON (Europe/London), next 2026-11-23 07:00 GMT`; the next time is left out if unknown."""
    text = f"{cron} ({timezone})"
    nxt = next_fire(cron, timezone)
    return f"{text}, next {nxt:%Y-%m-%d %H:%M %Z}" if nxt else text


def next_fire(cron: str, timezone: str) -> datetime | None:
    """When the schedule fires next, by the same cron rules Prefect uses; None if they are unavailable."""
    try:
        from prefect._vendor.croniter import croniter
    except ImportError:  # a private module: its absence must not break scheduling
        return None
    from tierflow.core import clock

    zone = zoneinfo.ZoneInfo(timezone)
    # On the zone's wall clock, as Prefect's scheduler counts it: croniter given an aware time steps in UTC, so
    # across a daylight-saving change a Monday 07:00 came out at 06:00 or 08:00 local.
    wall = croniter(cron, clock.now().astimezone(zone).replace(tzinfo=None)).get_next(datetime)
    return wall.replace(tzinfo=zone)


def load_flow(target: FlowTarget) -> Flow[..., Any]:
    """The flow object behind `target`; OpsError when this install does not have it."""
    from prefect import Flow

    from tierflow.core.registry import flow_names

    where = target.entrypoint
    try:
        if ":" in where:
            from prefect.flows import load_flow_from_entrypoint

            flow = load_flow_from_entrypoint(where, use_placeholder_flow=False)
        else:
            module, _, attribute = where.rpartition(".")
            flow = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, FileNotFoundError) as exc:
        raise OpsError(
            f"the {target.name} flow is not in this install of tierflow ({where}: {_reason(exc)}). "
            "Update tierflow, or check the flow's name: tierflow schedules "
            f"{', '.join(flow_names())}."
        ) from None
    if not isinstance(flow, Flow):
        raise OpsError(f"{where} is not a Prefect flow.")
    return flow


def check_parameters(flow: Flow[..., Any], parameters: Mapping[str, Any], *, all_required: bool = True) -> list[str]:
    """The parameters must be ones the flow takes, of the right types, with every required one given; or, unless
    `all_required`, left out for each run to give (an on-demand deployment): those left out are returned."""
    from prefect.exceptions import ParameterTypeError

    signature = inspect.signature(flow.fn)
    accepted = {
        name
        for name, p in signature.parameters.items()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
    any_name = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    unknown = [] if any_name else sorted(set(parameters) - accepted)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(accepted), n=1)
        raise OpsUsageError(
            f"the {flow.name} flow takes no parameter {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(sorted(accepted))}." + (f" Did you mean {close[0]!r}?" if close else "")
        )
    missing = [
        name
        for name, p in signature.parameters.items()
        if name in accepted and p.default is inspect.Parameter.empty and name not in parameters
    ]
    if missing and all_required:
        from prefect.utilities.callables import parameter_schema

        schema = parameter_schema(flow).model_dump(mode="json")
        examples = " ".join(_param_example(schema, name) for name in missing)
        raise OpsUsageError(
            f"the {flow.name} flow needs {', '.join(map(repr, missing))}: give "
            f"{'it' if len(missing) == 1 else 'each'} with --param NAME=VALUE, for example {examples} "
            f"(`--help` lists its parameters)."
        )
    quiet = logging.getLogger("prefect.flows")
    was_disabled, quiet.disabled = quiet.disabled, True  # Prefect logs the failure too; say it once
    try:
        flow.validate_parameters(dict(parameters))
    except ParameterTypeError as exc:
        # Prefect's message is a heading, then a line `- NAME: what the value should be` per bad parameter.
        lines = [line.strip().removeprefix("- ") for line in str(exc).splitlines()[1:] if line.strip()]
        # A parameter left for each run to give is "Field required" here, and no fault of the deployment.
        lines = [line for line in lines if line.partition(":")[0] not in missing]
        if lines or not missing:
            raise OpsUsageError(f"bad parameter for the {flow.name} flow: {'; '.join(lines) or _reason(exc)}") from None
    finally:
        quiet.disabled = was_disabled
    return missing


def read_params(flow: Flow[..., Any], texts: Mapping[str, str]) -> dict[str, Any]:
    """`--param NAME=VALUE` texts as the flow's signature types them: `folder=2024` is the text "2024" for a
    `folder: str` and the int 2024 for a `folder: int`.

    Each text is validated by pydantic against its parameter's type, as Prefect validates a flow's parameters: as
    typed first (a `str`, `Path` or `str | None` keeps it; "3" is 3 for an `int`, "2026-11-16" a date for a
    `date`, "false" False for a `bool`), then read as JSON (`["a"]` for a `list[str]`, `{"a": 1}` for a `dict`).
    A parameter with no type or `Any`, and a name the signature lacks (`check_parameters` refuses it), gets the
    JSON value when the text is JSON, else the text. A text its type refuses is an OpsUsageError naming the
    parameter, its type and an example.
    """
    import pydantic

    signature = inspect.signature(flow.fn)
    try:
        hints = get_type_hints(flow.fn, include_extras=True)
    except Exception:  # an annotation that cannot be resolved here: Prefect's own validation judges the value
        hints = {}
    named = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    values: dict[str, Any] = {}
    for name, text in texts.items():
        p = signature.parameters.get(name)
        annotation = hints.get(name, Any) if p is not None and p.kind not in named else Any
        if annotation is Any:
            values[name] = _json_or_text(text)
            continue
        # The parameter alone, validated as Prefect's model of the whole signature validates it.
        field = pydantic.create_model(
            "Param", __config__=pydantic.ConfigDict(arbitrary_types_allowed=True), value=(annotation, ...)
        )
        try:
            values[name] = field.model_validate({"value": text}).value
            continue
        except pydantic.ValidationError as exc:
            refused = exc
        try:
            values[name] = field.model_validate({"value": json.loads(text)}).value
            continue
        except json.JSONDecodeError:
            pass
        except pydantic.ValidationError as exc:
            refused = exc  # the text is JSON, so what is wrong with it as JSON is the reason to give
        raise OpsUsageError(_param_refused(flow, name, annotation, text, refused))
    return values


def given_twice(flow_name: str | None, name: str, first: str, second: str) -> str:
    """Why `--param NAME=...` given twice is refused, and what to give instead, by the type of the flow's parameter:
    one JSON list of both (a list, or a parameter with no type), else one of the two (a date, a text, a number)."""
    from prefect.utilities.callables import parameter_schema

    said = f"--param {name} is given twice ({first!r} and {second!r}): give it once"
    flow, param, schema = None, None, {}
    try:
        if flow_name is not None:
            flow = load_flow(flow_target(flow_name))
            param = next((p for p in describe_params(flow)[0] if p.name == name), None)
            schema = parameter_schema(flow).model_dump(mode="json")
    except Exception:  # a flow that is unknown or does not import: the command says so once it looks it up
        param = None
    if flow is None or param is None or not param.type:  # a name it does not take, or one with no type
        return f'{said}; a list is one JSON value, for example --param \'{name}=["a", "b"]\''
    prop = schema.get("properties", {}).get(name, {})
    if any(b.get("type") == "array" for b in prop.get("anyOf", [prop]) if isinstance(b, dict)):
        example = _param_example(schema, name, default=False)  # if the two are not items of its list
        for both in (json.dumps([_json_or_text(first), _json_or_text(second)]), json.dumps([first, second])):
            try:
                read_params(flow, {name: both})  # type: ignore[arg-type]
            except OpsError:
                continue
            example = f"--param {shlex.quote(f'{name}={both}')}"
            break
        return f"{said}: {name} takes a list ({param.type}), given as one JSON value: {example}"
    keep = " or ".join(f"--param {shlex.quote(f'{name}={v}')}" for v in (first, second))
    return f"{said}: {name} takes one value ({param.type}), so keep the one you mean: {keep}"


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _param_refused(flow: Flow[..., Any], name: str, annotation: Any, text: str, exc: pydantic.ValidationError) -> str:
    """Why a `--param` text is refused: the parameter, its type, pydantic's reason, and a value the type takes (the
    parameter's default, else an instance of Prefect's schema of it)."""
    from prefect.utilities.callables import parameter_schema

    reason = "; ".join(
        (".".join(map(str, e["loc"][1:])) + ": " if len(e["loc"]) > 1 else "") + e["msg"] for e in exc.errors()
    )
    schema = parameter_schema(flow).model_dump(mode="json")
    return (
        f"bad parameter for the {flow.name} flow: {name} takes {inspect.formatannotation(annotation)}, not "
        f"{text!r} ({reason}); for example {_param_example(schema, name)}"
    )


def _param_example(schema: Mapping[str, Any], name: str, *, default: bool = True, option: str = "--param") -> str:
    """`--param NAME=VALUE` with a value the parameter takes, quoted for a shell: its default (unless not
    `default`), else an instance of Prefect's schema of it (`parameter_schema`, as JSON).

    With `option="-p"`, as `prefect deployment run -p` reads it: a VALUE that is JSON is read as JSON there, so a
    text that would read as another value (`2024`, `true`) or as none (one with a `"`) is written as a JSON string.
    """
    from tierflow.testing.double import example_from_schema

    prop = schema.get("properties", {}).get(name, {})
    example = prop.get("default") if default else None
    if example is None:
        example = example_from_schema(prop, dict(schema))
    shown = example if isinstance(example, str) else json.dumps(example)
    if option == "-p" and isinstance(example, str) and ('"' in example or _json_or_text(example) != example):
        shown = json.dumps(example)
    return f"{option} {shlex.quote(f'{name}={shown}')}"


@dataclass(frozen=True)
class ParamHelp:
    """How a flow's parameter is given with `--param NAME=VALUE`, read as `read_params` reads it."""

    name: str
    type: str
    """The parameter's annotation without module names (`date | None`, `list[str]`); "" when it has none."""
    default: str | None
    """The default as a `--param` VALUE would give it (`Inbox`, `2`, `true`); None when it has none or None."""
    required: bool
    description: str
    """What the flow's docstring says of it (its `Args:` section, as Prefect reads it for the UI), else ""."""
    value: str
    """How VALUE is written for its type, with an example when it is not plain text or a number; else ""."""


def describe_params(flow: Flow[..., Any]) -> tuple[list[ParamHelp], bool]:
    """Each keyword parameter of the flow's function, in signature order, as `--param` gives it; and whether the
    flow takes any other name too (**kwargs)."""
    from prefect.utilities.callables import parameter_schema

    signature = inspect.signature(flow.fn)
    try:
        hints = get_type_hints(flow.fn, include_extras=True)
    except Exception:  # an annotation that cannot be resolved here: described as written
        hints = {}
    schema = parameter_schema(flow).model_dump(mode="json")
    described = []
    for name, p in signature.parameters.items():
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        annotation = hints.get(name, p.annotation)
        typed = annotation not in (inspect.Parameter.empty, Any)
        prop = schema.get("properties", {}).get(name, {})
        described.append(
            ParamHelp(
                name=name,
                type=_short_type(annotation) if typed else "",
                default=None if p.default in (inspect.Parameter.empty, None) else _param_text(p.default),
                required=p.default is inspect.Parameter.empty,
                description=" ".join(str(prop.get("description") or "").split()),
                value=_value_form(schema, name) if typed else "no type: read as JSON when it is JSON, else as text",
            )
        )
    return described, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())


def _short_type(annotation: Any) -> str:
    """`datetime.date | None` as `date | None`, `pathlib.Path` as `Path`: the type as a flow's author wrote it."""
    import re

    return re.sub(r"(?<![\w'\"])(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", inspect.formatannotation(annotation))


def _param_text(value: Any) -> str:
    """A default as `--param` VALUE would give it: text as it is (a date as its ISO date, a Path as its path, an
    Enum as its value), anything else as JSON (`true`, `null`, `["a"]`, a pydantic model's fields)."""
    from pydantic_core import to_jsonable_python

    value = to_jsonable_python(value, fallback=str)
    return value if isinstance(value, str) else json.dumps(value)


def _value_form(schema: Mapping[str, Any], name: str) -> str:
    """How a VALUE of the parameter's type is written, by Prefect's schema of it: JSON for a list, dict or model
    (with an example), a date as YYYY-MM-DD, a bool as true or false, a choice as one of its values; "" for text
    and numbers, taken as typed."""
    prop = schema.get("properties", {}).get(name, {})
    definitions = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    branches = [
        definitions.get(b["$ref"].rpartition("/")[2], {}) if "$ref" in b else b  # an Enum's values, a model's fields
        for b in prop.get("anyOf", [prop])
        if isinstance(b, dict) and b.get("type") != "null"
    ]
    kinds = {b.get("type") for b in branches}
    formats = {b.get("format") for b in branches}
    if any(b.get("type") in ("array", "object") for b in branches):
        return f"as JSON, for example {_param_example(schema, name, default=False)}"
    if any(b.get("enum") for b in branches):
        return "one of " + ", ".join(_param_text(v) for b in branches for v in b.get("enum", []))
    if "date" in formats:
        return "a date, YYYY-MM-DD"
    if "date-time" in formats:
        return "a date and time, ISO 8601 (2026-11-16T09:00:00+00:00)"
    if kinds == {"boolean"}:
        return "true or false"
    return ""


@dataclass(frozen=True)
class Registration:
    """What `register` did."""

    deployment: str
    """`<flow>/<deployment>`, as `prefect deployment run` and `tierflow schedule pause` take it."""
    deployment_id: str
    created: bool
    """False: an existing deployment of that name was updated."""
    pool: str
    pool_created: bool
    schedule: str | None
    """`describe_schedule` of the schedule, None when the deployment runs only on demand."""
    left_out: tuple[str, ...] = ()
    """Required parameters an on-demand deployment does not set: each run must give them."""
    run_command: str = ""
    """The `prefect deployment run` line that starts a run, with an example `-p NAME=VALUE` for each of `left_out`."""


def register(
    target: FlowTarget,
    *,
    parameters: Mapping[str, Any],
    params: Mapping[str, str] | None = None,
    name: str | None = None,
    cron: str | None = None,
    timezone: str = "UTC",
    pool: str = DEFAULT_POOL,
    description: str | None = None,
) -> Registration:
    """Create or update a deployment of `target` on a process work pool, with an optional cron schedule.

    `params` are `--param` texts, read as the flow's signature types them (`read_params`), beside `parameters`.
    Everything that can be checked is checked before anything is written: the schedule, the flow, its
    parameters, the API. If a write fails part-way, what this call created is removed again.
    """
    name = name or target.default_name(scheduled=bool(cron))
    if not name.strip() or any(ch in name for ch in BANNED_LIMIT_CHARACTERS):
        raise OpsUsageError(f"--name {name!r}: a deployment name needs at least one character and none of / % & > <.")
    schedule = cron_schedule(cron, timezone) if cron else None
    flow = load_flow(target)
    # A deployment keeps its parameters as JSON: a `--param` day=2026-11-16 read as a date is kept as its text.
    parameters = {**parameters, **flow.serialize_parameters(read_params(flow, params or {}))}
    # A scheduled run is given nothing, so it needs every required parameter; an on-demand one may be given the rest
    # (`prefect deployment run -p`), and the server refuses a run without them (the deployment enforces its schema).
    left_out = check_parameters(flow, parameters, all_required=bool(cron))
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.callables import parameter_schema

    described = parameter_schema(flow)
    schema, examples = described.model_dump(exclude_unset=True), described.model_dump(mode="json")
    run_command = " ".join(
        [f"prefect deployment run '{flow.name}/{name}'", *(_param_example(examples, n, option="-p") for n in left_out)]
    )
    with prefect_client() as client:
        pool_created = ensure_pool(client, pool)
        flow_id = None
        flow_created = False
        try:
            flow_id = _flow_id(client, flow.name)
            if flow_id is None:  # a server where the flow has never run nor been deployed
                flow_id = client.create_flow_from_name(flow.name)
                flow_created = True
            try:
                client.read_deployment_by_name(f"{flow.name}/{name}")
                existed = True
            except ObjectNotFound:
                existed = False
            deployment_id = client.create_deployment(
                flow_id=flow_id,
                name=name,
                entrypoint=target.entrypoint,
                parameters=dict(parameters),
                parameter_openapi_schema=schema,
                enforce_parameter_schema=True,
                schedules=[DeploymentScheduleCreate(schedule=schedule, active=True)] if schedule else [],
                work_pool_name=pool,
                work_queue_name=DEFAULT_QUEUE,
                description=description or flow.description,
                tags=TAGS,
                pull_steps=[],
            )
            if existed and not schedule:
                # An update keeps the old schedules unless told otherwise: on demand means none.
                for old in client.read_deployment_schedules(deployment_id):
                    client.delete_deployment_schedule(deployment_id, old.id)
        except Exception as exc:
            _undo(client, flow_id if flow_created else None, pool if pool_created else None)
            if isinstance(exc, TierflowError):
                raise
            raise OpsError(
                f"Prefect refused the deployment {flow.name}/{name}: {_reason(exc)}. Nothing was registered."
            ) from exc
    return Registration(
        deployment=f"{flow.name}/{name}",
        deployment_id=str(deployment_id),
        created=not existed,
        pool=pool,
        pool_created=pool_created,
        schedule=describe_schedule(cron, timezone) if cron else None,
        left_out=tuple(left_out),
        run_command=run_command,
    )


def _flow_id(client: SyncPrefectClient, name: str) -> Any:
    """The id of the flow called `name` on the server, or None when the server has no such flow."""
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    try:
        return client.read_flow_by_name(name).id
    except ObjectNotFound:
        return None
    except PrefectHTTPStatusError as exc:
        # Prefect 3's sync client raises its HTTP error on a 404 here, not ObjectNotFound as for deployments.
        if exc.response.status_code == 404:
            return None
        raise


def ensure_pool(client: SyncPrefectClient, pool: str) -> bool:
    """Create the `process` work pool `pool` unless it exists; True if it was created here."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        client.read_work_pool(pool)
        return False
    except ObjectNotFound:
        pass
    try:
        client.create_work_pool(
            WorkPoolCreate(name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template())
        )
    except ObjectAlreadyExists:  # created meanwhile by someone else: theirs, not ours to remove
        return False
    return True


def _undo(client: SyncPrefectClient, flow_id: Any, pool: str | None) -> None:
    """Remove what a failed `register` created; best effort, since the API may be what failed."""
    try:
        if flow_id is not None:
            client.delete_flow(flow_id)
        if pool is not None:
            client.delete_work_pool(pool)
    except Exception:  # the original failure is the one to report
        pass


@dataclass(frozen=True)
class DeploymentInfo:
    """One deployment, as `tierflow schedule list` shows it."""

    name: str
    schedules: list[str]
    paused: bool
    pool: str | None
    parameters: dict[str, Any]


def list_deployments() -> list[DeploymentInfo]:
    """Every deployment on the server, with its schedules and whether it is paused."""
    with prefect_client() as client:
        out = []
        for full, d in _deployments(client):
            schedules = [
                describe_schedule(s.schedule.cron, s.schedule.timezone or "UTC") + ("" if s.active else " [inactive]")
                if hasattr(s.schedule, "cron")
                else str(s.schedule) + ("" if s.active else " [inactive]")
                for s in client.read_deployment_schedules(d.id)
            ]
            out.append(
                DeploymentInfo(
                    name=full,
                    schedules=schedules,
                    paused=bool(d.paused),
                    pool=d.work_pool_name,
                    parameters=dict(d.parameters or {}),
                )
            )
    return sorted(out, key=lambda d: d.name)


def set_paused(name: str, paused: bool) -> str:
    """Pause or resume the deployment `name` (`flow/deployment`, or a deployment name that is unique)."""
    with prefect_client() as client:
        full, deployment_id = _find_deployment(client, name)
        if paused:
            client.pause_deployment(deployment_id)
        else:
            client.resume_deployment(deployment_id)
    return full


def _find_deployment(client: SyncPrefectClient, name: str) -> tuple[str, Any]:
    from prefect.exceptions import ObjectNotFound

    if "/" in name:
        try:
            return name, client.read_deployment_by_name(name).id
        except ObjectNotFound:
            pass
    # A deployment's own name, asked of the server: not looked for in a listing, which stops at one page.
    exact = [(full, d.id) for full, d in _deployments(client, name.split("/", 1)[-1]) if name in (full, d.name)]
    if len(exact) == 1:
        return exact[0]
    known = ", ".join(sorted(full for full, _ in _deployments(client))) or "none"
    if exact:
        raise OpsError(f"{name!r} names several deployments; give one as FLOW/NAME: {known}.")
    raise OpsError(f"no deployment {name!r} on the server. Deployments there: {known}. See `tierflow schedule list`.")


# --- tier concurrency limits ----------------------------------------------------------------------


def tier_tag(tier: str) -> str:
    """The task-run tag of a tier, as the flows tag their task runs (`tier:deep`)."""
    return f"{TIER_TAG_PREFIX}{tier}"


def check_tier_names(config: Config) -> None:
    """Every tier's tag must be usable as a Prefect limit name (`tag:tier:<name>`)."""
    bad = [t for t in config.settings.tiers if any(ch in t for ch in BANNED_LIMIT_CHARACTERS)]
    if bad:
        raise OpsError(
            f"tier name(s) {', '.join(map(repr, bad))} cannot be a Prefect concurrency limit: limit names may not "
            f"contain {' '.join(BANNED_LIMIT_CHARACTERS)}. Rename the tier in [tiers.<name>] (and in [routing])."
        )


@dataclass(frozen=True)
class LimitChange:
    """What `apply_limits` did for one tier."""

    tier: str
    tag: str
    limit: int | None
    """The limit now in force; None is unlimited."""
    before: int | None
    action: str
    """created | updated | unchanged | removed | unlimited | ledger (tierflow's slots hold it; no tag limit)"""

    @property
    def message(self) -> str:
        if self.action == "ledger":
            held = "unlimited" if self.limit is None else f"at most {self.limit} at once"
            removed = f"; removed the Prefect tag limit of {self.before}" if self.before is not None else ""
            return f"{self.tag}: {held}, held by tierflow's ledger slots{removed}"
        if self.action == "unlimited":
            return f"{self.tag}: unlimited (no concurrency set for [tiers.{self.tier}]; left without a limit)"
        if self.action == "removed":
            return (
                f"{self.tag}: unlimited (no concurrency set for [tiers.{self.tier}]; removed the old limit of "
                f"{self.before})"
            )
        if self.action == "updated":
            return f"{self.tag}: at most {self.limit} at once (was {self.before})"
        return f"{self.tag}: at most {self.limit} at once ({self.action})"


def apply_limits(config: Config) -> list[LimitChange]:
    """Make the server's `tier:<name>` task-run concurrency limits match the config's tier concurrency.

    A tier with `concurrency` gets a limit of that many task runs at once, across every flow and worker on
    the server. A tier without one is unlimited: a limit left from an earlier apply is removed. Under the ledger
    mechanism every `tier:` limit is removed (`ledger_limits` says what holds them without a server). NoServer
    when there is no server to reach, and nothing was changed.
    """
    ledger = config.settings.limits.mechanism == "ledger"
    if not ledger:
        check_tier_names(config)
    wanted = {name: tier.concurrency for name, tier in config.settings.tiers.items()}
    changes = []
    with prefect_client() as client:
        current = _tier_limits(client)
        for tier, limit in sorted(wanted.items()):
            tag = tier_tag(tier)
            before = current.get(tag)
            if ledger:
                # tierflow's ledger slots hold the limit: a Prefect tag limit as well would throttle whole task runs.
                if before is not None:
                    client.delete_concurrency_limit_by_tag(tag)
                changes.append(LimitChange(tier, tag, limit, before, "ledger"))
                continue
            if limit is None:
                if before is None:
                    changes.append(LimitChange(tier, tag, None, None, "unlimited"))
                else:
                    client.delete_concurrency_limit_by_tag(tag)
                    changes.append(LimitChange(tier, tag, None, before, "removed"))
                continue
            if before != limit:
                client.create_concurrency_limit(tag=tag, concurrency_limit=limit)
            action = "created" if before is None else "unchanged" if before == limit else "updated"
            changes.append(LimitChange(tier, tag, limit, before, action))
    return changes


def ledger_limits(config: Config) -> list[LimitChange]:
    """Each tier's limit as tierflow's ledger slots hold it (the ledger mechanism), with no Prefect server looked
    at for a `tier:` tag limit to remove."""
    return [
        LimitChange(name, tier_tag(name), tier.concurrency, None, "ledger")
        for name, tier in sorted(config.settings.tiers.items())
    ]


@dataclass(frozen=True)
class LimitInfo:
    """One `tier:` limit on the server, and the tier's concurrency in the config (if a config was given)."""

    tag: str
    limit: int | None
    active: int
    configured: int | None | str
    """The config's value; "not in config" when the tier is not there; "" when no config was given."""


def show_limits(config: Config | None = None) -> list[LimitInfo]:
    """The `tier:` concurrency limits on the server, beside the config's tiers when given."""
    with prefect_client() as client:
        limits = {lim.tag: lim for lim in _concurrency_limits(client) if lim.tag.startswith(TIER_TAG_PREFIX)}
    tiers = {tier_tag(n): t.concurrency for n, t in config.settings.tiers.items()} if config else {}
    rows = []
    for tag in sorted(set(limits) | set(tiers)):
        lim = limits.get(tag)
        configured: int | None | str = tiers.get(tag, "not in config") if config else ""
        rows.append(
            LimitInfo(
                tag=tag,
                limit=lim.concurrency_limit if lim else None,
                active=len(lim.active_slots) if lim else 0,
                configured=configured,
            )
        )
    return rows


LIMITS_PAGE = 100
"""Tag limits per request: Prefect's listing of them needs a page size, which may not exceed the server's
PREFECT_SERVER_API_DEFAULT_LIMIT (200 unless set)."""


def _concurrency_limits(client: SyncPrefectClient) -> list[Any]:
    """Every tag concurrency limit on the server: a server with more than a page of them lists the rest on the
    next pages (by tag, in order)."""
    return every(client.read_concurrency_limits, limit=LIMITS_PAGE)


def _tier_limits(client: SyncPrefectClient) -> dict[str, int]:
    return {
        lim.tag: lim.concurrency_limit for lim in _concurrency_limits(client) if lim.tag.startswith(TIER_TAG_PREFIX)
    }


# --- task runners ---------------------------------------------------------------------------------

TASK_RUNNERS = ("thread", "dask")


def task_runner_for(name: str, *, dashboard: bool = True) -> TaskRunner | None:
    """The task runner for `--task-runner NAME`; None means the flow's default (Prefect's thread pool).

    `thread`: Prefect's default. `dask`: a local Dask cluster of 2 worker processes; `dask:N` for N of
    them; `dask:tcp://HOST:PORT` for an existing Dask scheduler, whose workers need tierflow installed.
    """
    kind, _, arg = name.strip().partition(":")
    kind = kind.lower()
    if kind in ("", "thread", "threads", "default") and not arg:
        return None
    if kind != "dask":
        raise OpsError(f"--task-runner {name!r}: choose thread (the default) or dask (dask:N, dask:tcp://HOST:PORT).")
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise OpsError("--task-runner dask needs prefect-dask: pip install 'tierflow[dask]'") from None
    if arg.startswith("tcp://") or arg.startswith("tls://"):
        return DaskTaskRunner(address=arg)
    workers = 2
    if arg:
        if not arg.isdigit() or int(arg) < 1:
            raise OpsError(f"--task-runner {name!r}: dask:N needs a whole number of workers, such as dask:4.")
        workers = int(arg)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            # Loopback only; None turns the dashboard off.
            "dashboard_address": "127.0.0.1:8787" if dashboard else None,
        }
    )
