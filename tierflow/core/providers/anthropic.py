"""Anthropic, through the official SDK's Messages API."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import anthropic

from tierflow.core.config import ProviderConfig
from tierflow.core.errors import (
    MalformedResponse,
    ModelNotFound,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from tierflow.core.providers import (
    BATCH_CLOCK_SKEW_S,
    Attempts,
    BatchItemResult,
    Completion,
    Request,
    api_key,
    download,
    unanswered_hint,
)
from tierflow.core.usage import reported_usage


class AnthropicProvider:
    kind = "anthropic"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        self.attempts = Attempts()

    _model = "*"
    """The model of the call that first needed the client, so a missing key's error names it."""

    @cached_property
    def client(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            api_key=api_key(self.name, self.config, self._model),
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=self.config.max_retries,
            http_client=anthropic.DefaultHttpxClient(event_hooks=self.attempts.hooks()),
        )

    def params(self, request: Request) -> dict[str, Any]:
        """The Messages API parameters for a request (also the body of a batch item)."""
        system: list[dict[str, Any]] = [{"type": "text", "text": request.system}]
        if request.cache_prefix:
            system.append({"type": "text", "text": request.cache_prefix})
            if request.cacheable:
                system[-1]["cache_control"] = {"type": "ephemeral"}
        params: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_output_tokens,
            "system": system,
            "messages": [{"role": "user", "content": request.prompt}],
        }
        if request.schema is not None:
            params["tools"] = [
                {
                    "name": request.schema_name,
                    "description": f"Record the {request.schema_name} exactly in this structure.",
                    "input_schema": request.schema,
                }
            ]
            params["tool_choice"] = {"type": "tool", "name": request.schema_name}
        return params

    def complete(self, request: Request) -> Completion:
        self._model = request.model
        return self.attempts.complete(
            lambda: self.completion(self.client.messages.create(**self.params(request)), request),
            provider=self.name,
            model=request.model,
            sdk_error=anthropic.AnthropicError,
            translate=self.translate,
        )

    def completion(self, message: Any, request: Request) -> Completion:
        """Text, structured data and usage from a Message; an unreadable answer is data, not an error."""
        text = "".join(block.text for block in message.content if block.type == "text")
        data, problem = None, ""
        if request.schema is not None:
            tool_inputs = [block.input for block in message.content if block.type == "tool_use"]
            if tool_inputs and isinstance(tool_inputs[0], dict):
                data = tool_inputs[0]
            else:
                problem = f"no {request.schema_name} tool call in the answer"
        return Completion(
            text=text,
            data=data,
            usage=reported_usage(self.name, getattr(message, "usage", None), USAGE_FIELDS),
            model=message.model,
            response_id=message.id,
            stop_reason=message.stop_reason,
            finish={"max_tokens": "truncated", "refusal": "refused"}.get(message.stop_reason or "", "stop"),
            problem=problem,
        )

    def submit_batch(self, requests: dict[str, Request], *, key: str = "") -> str:
        """`key` is not sent: Message Batches take no metadata (`find_batch` matches by time and custom ids)."""
        model = next(iter(requests.values())).model
        self._model = model
        try:
            # Sent once: the batch flow decides whether to send it again (`batch._send`).
            batch = self.client.with_options(max_retries=0).messages.batches.create(
                requests=[{"custom_id": cid, "params": self.params(r)} for cid, r in requests.items()]
            )
        except anthropic.AnthropicError as exc:
            raise self.translate(exc, model) from exc
        return batch.id

    def find_batch(self, key: str, custom_ids: list[str], since_s: float, known: set[str]) -> str | None:
        """Message Batches carry no metadata: the batch created from about `since_s` on with as many requests
        as `custom_ids`, and, once it has ended, exactly those custom ids; never one in `known`, which holds the
        batches listed before it was sent (`batches_since`). Two such batches still running cannot be told
        apart: that is reported, never guessed."""
        unverified = []
        try:
            for batch in self.client.messages.batches.list(limit=100):
                created = batch.created_at.timestamp()
                if created < since_s - BATCH_CLOCK_SKEW_S:
                    break
                counts = batch.request_counts
                total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
                if batch.id in known or total != len(custom_ids):
                    continue
                if batch.processing_status != "ended":
                    unverified.append(batch.id)
                elif {e.custom_id for e in self.client.messages.batches.results(batch.id)} == set(custom_ids):
                    return batch.id
        except anthropic.AnthropicError as exc:
            raise self.translate(exc, "batch") from exc
        if len(unverified) > 1:
            raise ProviderUnavailable(
                self.name,
                "batch",
                f"batches {', '.join(unverified)} may each be tierflow's batch {key}; rerun once they have ended "
                "to tell which",
            )
        return unverified[0] if unverified else None

    def batches_since(self, since_s: float) -> set[str]:
        """Newest first, back to `since_s` as `find_batch` looks: a batch of as many requests made by another
        process or tool on this key is never taken for tierflow's, which is made after this list is read."""
        seen = set()
        try:
            for batch in self.client.messages.batches.list(limit=100):
                if batch.created_at.timestamp() < since_s - BATCH_CLOCK_SKEW_S:
                    break
                seen.add(batch.id)
        except anthropic.AnthropicError as exc:
            raise self.translate(exc, "batch") from exc
        return seen

    def batch_ended(self, batch_id: str) -> tuple[bool, str]:
        try:
            batch = self.client.messages.batches.retrieve(batch_id)
        except anthropic.AnthropicError as exc:
            raise self.translate(exc, "batch") from exc
        return batch.processing_status == "ended", batch.processing_status

    def batch_results(self, batch_id: str, requests: dict[str, Request]) -> list[BatchItemResult]:
        fetch = self.client.with_options(max_retries=0).messages.batches.results
        try:
            entries = download(
                lambda: list(fetch(batch_id)),
                self.config.max_retries,
                dropped=anthropic.APIConnectionError,
                what=f"the results of batch {batch_id}",
            )
        except anthropic.AnthropicError as exc:
            raise self.translate(exc, "batch") from exc
        results = []
        for entry in entries:
            request = requests.get(entry.custom_id)
            kind = entry.result.type
            if kind == "succeeded" and request is not None:
                results.append(
                    BatchItemResult(entry.custom_id, "succeeded", self.completion(entry.result.message, request))
                )
            elif kind == "errored":
                detail = _detail(entry.result.error)
                error_type = getattr(getattr(entry.result.error, "error", None), "type", "")
                # Anthropic's refusal of a prompt longer than the model's window: "prompt is too long: N tokens > M".
                too_long = error_type == "invalid_request_error" and detail.startswith("prompt is too long")
                results.append(BatchItemResult(entry.custom_id, "errored", error=detail, too_long=too_long))
            else:
                results.append(BatchItemResult(entry.custom_id, kind))
        seen = {r.custom_id for r in results}
        return results + [BatchItemResult(cid, "expired") for cid in requests if cid not in seen]

    def count_tokens(self, request: Request) -> int | None:
        params = self.params(request)
        params.pop("max_tokens")
        try:
            return self.client.messages.count_tokens(**params).input_tokens
        except anthropic.AnthropicError as exc:
            raise self.translate(exc, request.model) from exc

    def models(self) -> set[str]:
        """The model ids the API serves now (`GET /v1/models`, every page)."""
        try:
            return {m.id for m in self.client.models.list(limit=1000)}
        except anthropic.AnthropicError as exc:
            raise self.translate(exc, "models") from exc

    def translate(self, exc: anthropic.AnthropicError, model: str) -> ProviderError:
        """An SDK error as a tierflow error naming provider, model and cause."""
        status = getattr(exc, "status_code", None)
        detail = _detail(exc)
        if isinstance(exc, anthropic.AuthenticationError | anthropic.PermissionDeniedError):
            env = self.config.api_key_env or "the key's environment variable"
            return ProviderAuthError(self.name, model, f"key rejected (HTTP {status}: {detail})", hint=f"check {env}")
        if isinstance(exc, anthropic.RateLimitError):
            return ProviderRateLimited(
                self.name,
                model,
                f"rate limited (HTTP 429) after {self.config.max_retries} retries",
                hint="lower the tier's concurrency or raise max_retries",
            )
        if isinstance(exc, anthropic.APITimeoutError):
            return ProviderUnavailable(
                self.name,
                model,
                f"timed out after {self.config.timeout_s:g} s",
                hint=unanswered_hint(self.name, self.config),
            )
        if isinstance(exc, anthropic.APIConnectionError) and (cut := self.attempts.cut_off()):
            return ProviderUnavailable(
                self.name,
                model,
                f"the answer was cut off mid-transfer ({cut})",
                hint=unanswered_hint(self.name, self.config),
            )
        if isinstance(exc, anthropic.APIConnectionError):
            return ProviderUnavailable(self.name, model, f"cannot connect ({exc})")
        if isinstance(exc, anthropic.APIResponseValidationError):
            return MalformedResponse(self.name, model, f"malformed response body ({detail})")
        if isinstance(exc, anthropic.InternalServerError):
            kind = "overloaded" if status == 529 else "server error"
            return ProviderUnavailable(
                self.name,
                model,
                f"{kind} (HTTP {status}: {detail}) after {self.config.max_retries} retries",
                hint="try again later",
            )
        if isinstance(exc, anthropic.NotFoundError) and detail.startswith("model:"):
            # Anthropic's answer for a retired or unknown model: not_found_error, "model: <id>".
            return ModelNotFound(self.name, model, f"no such model (HTTP 404: {detail})")
        if isinstance(exc, anthropic.NotFoundError):
            return ProviderError(self.name, model, f"not found (HTTP 404: {detail})", hint="check the model id")
        return ProviderError(self.name, model, f"request failed (HTTP {status}: {detail})")


def _detail(exc: Any) -> str:
    error = getattr(exc, "error", None)
    if error is not None and getattr(error, "message", None):
        return str(error.message)
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(getattr(exc, "message", "") or exc)


USAGE_FIELDS = {
    "input_tokens": ("input_tokens",),  # already excludes cache tokens
    "output_tokens": ("output_tokens", "output_tokens_details.thinking_tokens"),
    "cache_read_tokens": ("cache_read_input_tokens",),
    "cache_write_tokens": ("cache_creation_input_tokens",),
    "cache_write_1h_tokens": ("cache_creation.ephemeral_1h_input_tokens",),
    "reasoning_tokens": ("output_tokens_details.thinking_tokens",),
}
"""Anthropic's usage block as disjoint kinds (`reported_usage`): `output_tokens` includes thinking tokens."""
