"""OpenAI, and any OpenAI-compatible server (Ollama, llama.cpp, vLLM), through the official SDK."""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

import openai

from tierflow.core.config import ProviderConfig
from tierflow.core.errors import (
    MalformedResponse,
    ModelNotFound,
    OutputModeRejected,
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
    json_instruction,
    parse_json_object,
    strict_schema,
    unanswered_hint,
)
from tierflow.core.usage import reported_usage


class OpenAIProvider:
    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        self.kind = config.kind
        self.attempts = Attempts()
        self._inputs: dict[str, str] = {}
        """tierflow's batch key -> the id of the input file uploaded for it, while its creation has not gone
        through: a batch sent again (`batch._send`, after a 429 or a 5xx) reuses the file, never uploads another."""

    _model = "*"
    """The model of the call that first needed the client, so a missing key's error names it."""

    @cached_property
    def client(self) -> openai.OpenAI:
        return self._sdk_client(openai.OpenAI)

    @cached_property
    def probing_client(self) -> openai.OpenAI:
        """The client for a request whose output mode this server has not accepted yet (`_ProbingOpenAI`)."""
        return self._sdk_client(_ProbingOpenAI)

    def _sdk_client(self, cls: type[openai.OpenAI]) -> openai.OpenAI:
        local = self.kind == "openai-compatible"
        # Local servers ignore the key, but the SDK insists on one.
        key = api_key(self.name, self.config, self._model, required=not local) or "not-needed"
        return cls(
            api_key=key,
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=self.config.max_retries,
            http_client=openai.DefaultHttpxClient(event_hooks=self.attempts.hooks()),
        )

    def params(self, request: Request) -> dict[str, Any]:
        """Chat Completions parameters for a request (also the body of a batch item)."""
        mode = request.output_mode or "json_schema"
        system = request.system
        if request.schema is not None and mode != "json_schema":
            # JSON mode needs the word JSON in the prompt, and a prompted server needs the schema spelled out.
            system += json_instruction(request.schema)
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        # The shared prefix goes first so the provider's automatic prefix cache can serve it.
        if request.cache_prefix:
            messages[0]["content"] = f"{system}\n\n{request.cache_prefix}"
        messages.append({"role": "user", "content": request.prompt})
        params: dict[str, Any] = {"model": request.model, "messages": messages}
        if self.kind == "openai":
            params["max_completion_tokens"] = request.max_output_tokens
            if request.cache_key:
                params["prompt_cache_key"] = request.cache_key
        else:
            params["max_tokens"] = request.max_output_tokens
        if request.schema is not None and mode == "json_schema":
            strict = strict_schema(request.schema)
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": request.schema_name,
                    "schema": strict or request.schema,
                    "strict": bool(strict),
                },
            }
        elif request.schema is not None and mode == "json_object":
            # llama.cpp's server constrains JSON mode to a schema given beside it; others ignore the extra key.
            params["response_format"] = {"type": "json_object", "schema": request.schema}
        return params

    def complete(self, request: Request) -> Completion:
        self._model = request.model
        params = self.params(request)
        # Both retry timeouts, dropped connections and 408/409/429/5xx as configured, with the SDK's backoff (as
        # Anthropic's does); the probing one never retries a refusal of the mode, which the next mode answers.
        client = self.client if request.mode_confirmed else self.probing_client

        def send() -> Completion:
            try:
                response = client.chat.completions.create(**params)
            except openai.APIStatusError as exc:
                if request.schema is not None and _rejects_output_mode(exc.status_code, _status_text(exc)):
                    raise OutputModeRejected(
                        self.name, request.model, f"rejected {request.output_mode or 'json_schema'}: {_detail(exc)}"
                    ) from exc
                raise
            return self.completion(response, request)

        return self.attempts.complete(
            send, provider=self.name, model=request.model, sdk_error=openai.OpenAIError, translate=self.translate
        )

    def completion(self, response: Any, request: Request) -> Completion:
        """Text, structured data and usage from a ChatCompletion; an unreadable answer is data, not an error."""
        usage = reported_usage(self.name, getattr(response, "usage", None), USAGE_FIELDS)
        if not response.choices:
            return Completion(text="", usage=usage, model=response.model, problem="the response has no choices")
        choice = response.choices[0]
        text = choice.message.content or ""
        refusal = getattr(choice.message, "refusal", None)
        finish = {"length": "truncated", "content_filter": "refused"}.get(choice.finish_reason or "", "stop")
        if refusal:
            finish = "refused"
        data, problem = None, ""
        if request.schema is not None:
            data, problem = parse_json_object(text) if text else (None, refusal or "an empty answer")
        return Completion(
            text=text or (refusal or ""),
            data=data,
            usage=usage,
            model=response.model,
            response_id=response.id,
            stop_reason=choice.finish_reason,
            finish=finish,
            problem=problem,
        )

    def count_tokens(self, request: Request) -> int | None:
        return None

    def models(self) -> set[str]:
        """The model ids the server serves now (`GET /v1/models`, every page)."""
        try:
            return {m.id for m in self.client.models.list()}
        except openai.OpenAIError as exc:
            raise self.translate(exc, "models") from exc

    def submit_batch(self, requests: dict[str, Request], *, key: str = "") -> str:
        """The input file is uploaded once per batch `key`: sent again, the batch reuses it."""
        model = next(iter(requests.values())).model
        self._model = model
        try:
            file_id = self._inputs.get(key) if key else None
            if file_id is None:
                file_id = self._upload(requests, model)
                if key:
                    self._inputs[key] = file_id
            # Sent once: the batch flow decides whether to send it again (`batch._send`).
            batch = self.client.with_options(max_retries=0).batches.create(
                input_file_id=file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"tierflow_batch": key} if key else None,
            )
        except openai.OpenAIError as exc:
            raise self.translate(exc, model) from exc
        self._inputs.pop(key, None)
        return batch.id

    def _upload(self, requests: dict[str, Request], model: str) -> str:
        """Upload a batch's requests as its input file (JSONL), with the SDK's retries; the file's id. Failing, no
        batch was made: the error is `unsent`, not to be tried again around those retries (`batch._send`)."""
        lines = [
            json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": self.params(r)})
            for cid, r in requests.items()
        ]
        try:
            upload = self.client.files.create(file=("tierflow-batch.jsonl", "\n".join(lines).encode()), purpose="batch")
        except openai.OpenAIError as exc:
            error = self.translate(exc, model)
            error.unsent = True
            raise error from exc
        return upload.id

    def find_batch(self, key: str, custom_ids: list[str], since_s: float, known: set[str]) -> str | None:
        """By the `tierflow_batch` metadata the batch was created with; newest first, back to `since_s`."""
        try:
            for batch in self.client.batches.list(limit=100):
                if batch.created_at < since_s - BATCH_CLOCK_SKEW_S:
                    return None
                if (batch.metadata or {}).get("tierflow_batch") == key and batch.id not in known:
                    return batch.id
        except openai.OpenAIError as exc:
            raise self.translate(exc, "batch") from exc
        return None

    def batches_since(self, since_s: float) -> set[str]:
        """OpenAI's batches carry tierflow's key in their metadata (`find_batch`): no other batch is taken for one."""
        return set()

    def batch_ended(self, batch_id: str) -> tuple[bool, str]:
        try:
            batch = self.client.batches.retrieve(batch_id)
        except openai.OpenAIError as exc:
            raise self.translate(exc, "batch") from exc
        return batch.status in ("completed", "failed", "expired", "cancelled"), batch.status

    def batch_results(self, batch_id: str, requests: dict[str, Request]) -> list[BatchItemResult]:
        client = self.client.with_options(max_retries=0)

        def read() -> list[str]:
            batch = client.batches.retrieve(batch_id)
            files = (batch.output_file_id, batch.error_file_id)
            return [line for file_id in files if file_id for line in client.files.content(file_id).text.splitlines()]

        try:
            lines = download(
                read,
                self.config.max_retries,
                dropped=openai.APIConnectionError,
                what=f"the results of batch {batch_id}",
            )
        except openai.OpenAIError as exc:
            raise self.translate(exc, "batch") from exc
        results = []
        for line in filter(None, (x.strip() for x in lines)):
            item = json.loads(line)
            cid, response, error = item.get("custom_id"), item.get("response"), item.get("error")
            request = requests.get(cid)
            if response and response.get("status_code") == 200 and request is not None:
                body = openai.types.chat.ChatCompletion.model_validate(response["body"])
                results.append(BatchItemResult(cid, "succeeded", self.completion(body, request)))
            elif error and error.get("code") in ("batch_expired", "batch_cancelled"):
                status = "expired" if error["code"] == "batch_expired" else "canceled"
                results.append(BatchItemResult(cid, status, error=error.get("message", "")))
            else:
                # A request the provider refused: its error file's line holds the response, whose body is the error
                # a direct call would have been answered with (code `context_length_exceeded`: too long).
                body = (response or {}).get("body")
                failure = body.get("error") if isinstance(body, dict) else None
                failure = failure if isinstance(failure, dict) else {}
                detail = (error or {}).get("message") or failure.get("message") or json.dumps(body or {})[:200]
                too_long = "context_length_exceeded" in ((error or {}).get("code"), failure.get("code"))
                results.append(BatchItemResult(cid, "errored", error=detail, too_long=too_long))
        seen = {r.custom_id for r in results}
        return results + [BatchItemResult(cid, "expired") for cid in requests if cid not in seen]

    def translate(self, exc: openai.OpenAIError, model: str) -> ProviderError:
        """An SDK error as a tierflow error naming provider, model and cause."""
        status = getattr(exc, "status_code", None)
        detail = _detail(exc)
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            env = self.config.api_key_env or "the key's environment variable"
            return ProviderAuthError(self.name, model, f"key rejected (HTTP {status}: {detail})", hint=f"check {env}")
        if isinstance(exc, openai.RateLimitError):
            return ProviderRateLimited(
                self.name,
                model,
                f"rate limited (HTTP 429: {detail}) after {self.config.max_retries} retries",
                hint="lower the tier's concurrency or raise max_retries",
            )
        if isinstance(exc, openai.APITimeoutError):
            return ProviderUnavailable(
                self.name,
                model,
                f"timed out after {self.config.timeout_s:g} s",
                hint=unanswered_hint(self.name, self.config),
            )
        if isinstance(exc, openai.APIConnectionError) and (cut := self.attempts.cut_off()):
            return ProviderUnavailable(
                self.name,
                model,
                f"the answer was cut off mid-transfer ({cut})",
                hint=unanswered_hint(self.name, self.config),
            )
        if isinstance(exc, openai.APIConnectionError):
            where = self.config.base_url or "api.openai.com"
            hint = "is the local server running?" if self.kind == "openai-compatible" else ""
            return ProviderUnavailable(self.name, model, f"cannot connect to {where}", hint=hint)
        if isinstance(exc, openai.APIResponseValidationError):
            return MalformedResponse(self.name, model, f"malformed response body ({detail})")
        if isinstance(exc, openai.InternalServerError):
            return ProviderUnavailable(
                self.name,
                model,
                f"server error (HTTP {status}: {detail}) after {self.config.max_retries} retries",
                hint="try again later",
            )
        if isinstance(exc, openai.NotFoundError) and _model_missing(exc):
            return ModelNotFound(self.name, model, f"no such model (HTTP 404: {detail})")
        if isinstance(exc, openai.NotFoundError):
            return ProviderError(self.name, model, f"not found (HTTP 404: {detail})", hint="check the model id")
        return ProviderError(self.name, model, f"request failed (HTTP {status}: {detail})")


def _model_missing(exc: openai.NotFoundError) -> bool:
    """OpenAI's answer for a retired or unknown model (code `model_not_found`); Ollama and vLLM answer 404 with
    a message naming the model."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    if isinstance(error, dict) and error.get("code") == "model_not_found":
        return True
    return "model" in _detail(exc).lower()


class _ProbingOpenAI(openai.OpenAI):
    """The SDK's client, retrying as configured, except a refusal of the structured-output form: llama-cpp-python
    answers one with HTTP 500, which the SDK would otherwise retry `max_retries` times before the next form."""

    def _should_retry(self, response: Any) -> bool:
        response.read()  # a no-op once read: the SDK reads an error's body before it gets here, or right after
        return not _rejects_output_mode(response.status_code, response.text) and super()._should_retry(response)


def _rejects_output_mode(status: int, answer: str) -> bool:
    """A server's refusal of the structured-output form, as opposed to a failure of the call: its HTTP `status`
    and what it `answer`ed (the body).

    llama-cpp-python answers HTTP 500 "Input should be 'text' or 'json_object'" for `json_schema`; other servers
    answer 400 or 422. A 5xx counts only when its body names the form, so a real outage is not mistaken for it.
    """
    answer = answer.lower()
    words = ("response_format", "json_schema", "json_object")
    if status in (400, 422):
        return any(w in answer for w in (*words, "format", "schema"))
    return status >= 500 and any(w in answer for w in words)


def _status_text(exc: openai.APIStatusError) -> str:
    return f"{_detail(exc)} {exc.body!r}"


def _detail(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if body.get("message"):
            return str(body["message"])
    return str(getattr(exc, "message", "") or exc)


USAGE_FIELDS = {
    "input_tokens": (
        "prompt_tokens",
        "prompt_tokens_details.cached_tokens",
        "prompt_tokens_details.cache_write_tokens",
    ),
    "output_tokens": ("completion_tokens", "completion_tokens_details.reasoning_tokens"),
    "cache_read_tokens": ("prompt_tokens_details.cached_tokens",),
    "cache_write_tokens": ("prompt_tokens_details.cache_write_tokens",),
    "reasoning_tokens": ("completion_tokens_details.reasoning_tokens",),
}
"""OpenAI's usage as disjoint kinds (`reported_usage`): prompt_tokens includes cached, completion includes reasoning."""
