"""OpenTelemetry export: one span per model call, children of one span per flow run, sent over OTLP/HTTP.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and the `otel` extra
is installed (`pip install 'tierflow[otel]'`). The exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables
(headers, timeout, compression), so any OTLP/HTTP receiver works: an OpenTelemetry Collector, Jaeger, Phoenix,
Langfuse.

A call span carries the GenAI semantic-convention attributes (`gen_ai.usage.input_tokens` counts cached tokens
too, as the convention says) and tierflow's own `tierflow.*` attributes: phase, tier, cost, outcome and run.
The convention has no stable cost attribute yet, so cost is `tierflow.cost_usd`.

A run's trace id is derived from its run id, and each flow run's span id from the run id and the flow run's id,
so calls made in other threads or processes (Dask workers) find their flow run's span without passing any
context around, and a resumed run joins the trace of the run it resumes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tierflow.core.ledger import CallRecord

log = logging.getLogger("tierflow")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SCOPE = "tierflow"
GENAI_PROVIDERS = {"anthropic": "anthropic", "openai": "openai"}
"""Provider kinds with a GenAI semantic-convention name; others are named by their config name."""

_forced_ids: ContextVar[tuple[int, int] | None] = ContextVar("tierflow_forced_ids", default=None)
_providers: dict[str, Any] = {}
_lock = threading.Lock()


def endpoint() -> str | None:
    """Where spans go, or None when export is off."""
    return next((os.environ[v] for v in ENDPOINT_VARIABLES if os.environ.get(v)), None)


def run_trace_id(run_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"tierflow-run:{run_id}".encode()).digest()[:16], "big") or 1


def run_span_id(run_id: str, flow_run_id: str | None) -> int:
    """The span id of one flow run of a tierflow run (a resumed run is a second flow run of the same trace)."""
    seed = f"tierflow-flow-span:{run_id}:{flow_run_id or ''}"
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") or 1


def _tracer() -> Any | None:
    """The tracer for the configured endpoint, or None when export is off or the extra is missing."""
    url = endpoint()
    if url is None:
        return None
    with _lock:
        if url in _providers:
            provider = _providers[url]
            return provider.get_tracer(SCOPE) if provider else None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        except ImportError:
            log.warning(
                "%s is set but the OpenTelemetry SDK is not installed: no spans are exported. "
                "Install it with: pip install 'tierflow[otel]'",
                next(v for v in ENDPOINT_VARIABLES if os.environ.get(v)),
            )
            _providers[url] = None
            return None

        class RunIds(RandomIdGenerator):
            """Random ids, except for a flow-run span, whose ids come from its run id."""

            def generate_trace_id(self) -> int:
                forced = _forced_ids.get()
                return forced[0] if forced else super().generate_trace_id()

            def generate_span_id(self) -> int:
                forced = _forced_ids.get()
                return forced[1] if forced else super().generate_span_id()

        provider = TracerProvider(resource=Resource.create({"service.name": "tierflow"}), id_generator=RunIds())
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        _providers[url] = provider
        return provider.get_tracer(SCOPE)


def flush() -> None:
    """Send the spans still buffered (at the end of a flow run; the SDK also flushes at exit)."""
    with _lock:
        providers = [p for p in _providers.values() if p is not None]
    for provider in providers:
        provider.force_flush()


def _parent(run_id: str, flow_run_id: str) -> Any:
    from opentelemetry import trace

    context = trace.SpanContext(
        trace_id=run_trace_id(run_id),
        span_id=run_span_id(run_id, flow_run_id),
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(context))


def _ns(timestamp: str) -> int | None:
    try:
        return int(datetime.fromisoformat(timestamp).timestamp() * 1_000_000_000)
    except (TypeError, ValueError):
        return None


@contextmanager
def flow_run_span(
    *, run_id: str, flow: str, project: str | None = None, flow_run_id: str | None = None
) -> Iterator[None]:
    """The span of one flow run; every call of the run is its child. A no-op when export is off."""
    tracer = _tracer()
    if tracer is None:
        yield
        return
    attributes = {"tierflow.run_id": run_id, "tierflow.flow": flow}
    if project:
        attributes["tierflow.project"] = project
    if flow_run_id:
        attributes["prefect.flow_run.id"] = flow_run_id
    token = _forced_ids.set((run_trace_id(run_id), run_span_id(run_id, flow_run_id)))
    try:
        span = tracer.start_span(f"flow {flow}", attributes=attributes)
    finally:
        _forced_ids.reset(token)
    try:
        yield
    except BaseException as exc:
        span.record_exception(exc)
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
        raise
    finally:
        span.end()
        flush()


def attributes_of(
    row: Mapping[str, Any], *, provider_kind: str | None = None, outcome: str | None = None
) -> dict[str, Any]:
    """A ledger row as OpenTelemetry attributes: the GenAI semantic conventions, then `tierflow.*` and
    `prefect.*`. The spans and `tierflow spend --format otel` both use these names.

    A call whose usage is unknown (a lost connection: billed, but never told how much) carries no
    `gen_ai.usage.*` attribute at all, not zeros: an absent count is unknown, a zero would be a claim."""
    from tierflow.core.ledger import usage_of

    usage = usage_of(dict(row))
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": GENAI_PROVIDERS.get(provider_kind or "", row["provider"]),
        "gen_ai.request.model": row["model"],
        **(usage.opentelemetry_attributes() if usage.known else {}),
        "tierflow.outcome": outcome or _outcome(row),
    }
    for column, name in ROW_ATTRIBUTES.items():
        if row.get(column) is not None:
            attributes[name] = row[column]
    return attributes


ROW_ATTRIBUTES = {
    "provider": "tierflow.provider",
    "phase": "tierflow.phase",
    "complexity": "tierflow.complexity",
    "tier": "tierflow.tier",
    "flow": "tierflow.flow",
    "run_id": "tierflow.run_id",
    "project": "tierflow.project",
    "deployment": "tierflow.deployment",
    "cost_usd": "tierflow.cost_usd",
    "latency_ms": "tierflow.latency_ms",
    "usage_known": "tierflow.usage_known",
    "cached_result": "tierflow.cached_result",
    "batch": "tierflow.batch",
    "batch_id": "tierflow.batch_id",
    "route_rule": "tierflow.route_rule",
    "downgraded_from": "tierflow.downgraded_from",
    "flow_run_id": "prefect.flow_run.id",
    "task_run_id": "prefect.task_run.id",
}
"""Ledger columns and the attribute names they are exported under (the convention has no cost attribute yet)."""


def _outcome(row: Mapping[str, Any]) -> str:
    """The ledger's outcome when the answer was not `ok` (`truncated`, `lost`, `malformed`, a cached answer a check
    added since failed: `check_failed`, ...); else `cached`, `unknown-usage`, `downgraded` or `ok`."""
    if row.get("outcome") not in (None, "", "ok"):
        return str(row["outcome"])
    if row.get("cached_result"):
        return "cached"
    if not row.get("usage_known", True):
        return "unknown-usage"
    return "downgraded" if row.get("downgraded_from") else "ok"


def record_call(call: CallRecord, *, provider_kind: str, outcome: str | None = None) -> None:
    """Export one recorded call as a span under its run's span. Never fails the call: export is best effort."""
    tracer = _tracer()
    if tracer is None:
        return
    try:
        span = tracer.start_span(
            f"chat {call.model}",
            # Inside a flow run, the call is a child of that run's span; outside one (`tierflow ask`), a root.
            context=_parent(call.run_id, call.flow_run_id) if call.run_id and call.flow_run_id else None,
            kind=_client_kind(),
            attributes=attributes_of(call.row(), provider_kind=provider_kind, outcome=outcome),
            start_time=_ns(call.started_at) or _ns(call.timestamp),
        )
        span.end(end_time=_ns(call.timestamp))
    except Exception as exc:  # a broken exporter must not cost the user a paid answer
        log.warning("OpenTelemetry: could not export the span of a %s call: %s", call.phase, exc)


def _client_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.CLIENT
