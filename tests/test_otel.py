"""OpenTelemetry: a real OTLP/HTTP receiver on localhost gets one span per model call, under one span per flow run,
with the GenAI attribute values the ledger holds."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import anthropic_config, write_config
from responders import skilled

from tierflow.core.ledger import Ledger

pytestmark = pytest.mark.usefixtures("prefect_harness")


class Receiver:
    """An OTLP/HTTP trace receiver: decodes each ExportTraceServiceRequest and keeps its spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans: list[Any] = []
        self.resources: list[dict[str, Any]] = []
        received, resources = self.spans, self.resources

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    resources.append(attributes(resource_spans.resource.attributes))
                    for scope_spans in resource_spans.scope_spans:
                        received.extend(scope_spans.spans)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def attributes(values: Any) -> dict[str, Any]:
    """OTLP KeyValues as a dict of Python values."""
    out = {}
    for kv in values:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind)
    return out


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    r = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.url)
    yield r
    r.server.shutdown()


def test_each_call_is_a_span_under_its_flow_run_with_the_ledgers_values(
    feedback_vault: Path, double, receiver, monkeypatch
):
    from tierflow.flows.student_feedback import student_feedback

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    existing = (feedback_vault / ".tierflow" / "config.toml").read_text()
    write_config(feedback_vault / ".tierflow" / "config.toml", anthropic_config(double) + existing)
    double.responder = skilled()
    summary = student_feedback(vault=str(feedback_vault))
    rows = Ledger.for_vault(feedback_vault).rows(run_id=summary.run_id)
    assert rows and sum(r["cache_read_tokens"] for r in rows) > 0

    (flow_span,) = [s for s in receiver.spans if s.name == "flow student-feedback"]
    flow_attrs = attributes(flow_span.attributes)
    assert flow_attrs["tierflow.run_id"] == summary.run_id and flow_attrs["tierflow.project"] == "EDU7001"
    calls = [s for s in receiver.spans if s.name.startswith("chat ")]
    assert len(calls) == len(rows)
    assert all(s.trace_id == flow_span.trace_id and s.parent_span_id == flow_span.span_id for s in calls)
    assert {"service.name": "tierflow"}.items() <= receiver.resources[0].items()

    def from_span(span: Any) -> tuple:
        a = attributes(span.attributes)
        assert a["gen_ai.operation.name"] == "chat"
        return (
            a["prefect.task_run.id"],
            a["gen_ai.provider.name"],
            a["gen_ai.request.model"],
            a["gen_ai.usage.input_tokens"],
            a["gen_ai.usage.output_tokens"],
            a["gen_ai.usage.cache_read.input_tokens"],
            a["gen_ai.usage.cache_creation.input_tokens"],
            a["gen_ai.usage.reasoning.output_tokens"],
            a["tierflow.phase"],
            a["tierflow.tier"],
            round(a["tierflow.cost_usd"], 12),
            a["tierflow.outcome"],
            a["tierflow.run_id"],
            a["tierflow.project"],
        )

    def from_row(r: dict[str, Any]) -> tuple:
        return (
            r["task_run_id"],
            r["provider"],
            r["model"],
            # The convention's input tokens include cache reads and writes; Anthropic's (and the ledger's) do not.
            r["input_tokens"] + r["cache_read_tokens"] + r["cache_write_tokens"],
            r["output_tokens"] + r["reasoning_tokens"],
            r["cache_read_tokens"],
            r["cache_write_tokens"],
            r["reasoning_tokens"],
            r["phase"],
            r["tier"],
            round(r["cost_usd"], 12),
            "cached" if r["cached_result"] else "ok",
            summary.run_id,
            "EDU7001",
        )

    assert sorted(map(from_span, calls)) == sorted(map(from_row, rows))
    assert any(a[5] > 0 for a in map(from_span, calls)), "no span carried cache-read tokens"


def test_without_an_endpoint_nothing_is_exported_and_calls_go_on(tmp_path: Path, receiver, monkeypatch):
    from tierflow.core.calls import Caller, RunSettings

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    answer = Caller(RunSettings(vault=str(tmp_path), flow="ask", run_id="r")).ask(
        phase="ask", complexity="low", system="Be brief.", prompt="Summarise: feedback matters."
    )
    assert answer.text
    from tierflow.core import telemetry

    telemetry.flush()
    assert receiver.spans == []


def test_a_call_outside_a_flow_run_is_a_root_span_with_its_ledger_values(tmp_path: Path, receiver):
    from tierflow.core import telemetry
    from tierflow.core.calls import Caller, RunSettings

    caller = Caller(RunSettings(vault=str(tmp_path), flow="ask", run_id="r-ask", project="thesis"))
    caller.ask(phase="ask", complexity="high", system="Be brief.", prompt="Summarise: feedback matters.")
    telemetry.flush()
    (span,) = receiver.spans
    (row,) = caller.ledger.rows()
    a = attributes(span.attributes)
    assert span.name == "chat extractive-deep" and not span.parent_span_id
    assert (a["gen_ai.provider.name"], a["gen_ai.request.model"], a["tierflow.tier"]) == (
        "offline",
        row["model"],
        "deep",
    )
    assert a["gen_ai.usage.input_tokens"] == row["input_tokens"] and a["tierflow.project"] == "thesis"
    assert a["tierflow.outcome"] == "ok" and a["tierflow.cost_usd"] == row["cost_usd"] == 0.0


def test_a_failed_answer_exports_the_ledgers_outcome_and_unknown_usage_exports_no_token_counts(
    tmp_path: Path, receiver
):
    from conftest import call_record

    from tierflow.core import telemetry
    from tierflow.core.usage import UNKNOWN_USAGE
    from tierflow.report.spend import otel_record

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    calls = [
        call_record(phase="p1", outcome="truncated"),
        call_record(phase="p2", outcome="lost", usage=UNKNOWN_USAGE, cost_usd=None),
        call_record(phase="p3", usage=UNKNOWN_USAGE, cost_usd=None),
        call_record(phase="p4", downgraded_from="standard"),
        # A cached answer a check added since rejected (`not used:`): its verdict, not `cached`.
        call_record(phase="p5", cached_result=True, outcome="check_failed", cost_usd=0.0),
        call_record(phase="p6", cached_result=True, cost_usd=0.0),
    ]
    for call in calls:
        ledger.record(call)
        telemetry.record_call(call, provider_kind="anthropic")
    telemetry.flush()
    exported = [otel_record(row)["attributes"] for row in ledger.rows()]
    spans = sorted((attributes(s.attributes) for s in receiver.spans), key=lambda a: a["tierflow.phase"])
    for found in (sorted(exported, key=lambda a: a["tierflow.phase"]), spans):
        assert [a["tierflow.outcome"] for a in found] == [
            "truncated", "lost", "unknown-usage", "downgraded", "check_failed", "cached",
        ]  # fmt: skip
        assert found[0]["gen_ai.usage.input_tokens"] == 12 and found[0]["gen_ai.usage.output_tokens"] == 6
        for unknown in found[1:3]:  # unknown is not zero: the counts are left out
            assert [name for name in unknown if name.startswith("gen_ai.usage.")] == []
            assert unknown["tierflow.usage_known"] in (False, 0)
