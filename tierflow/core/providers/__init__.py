"""One provider protocol; one module per provider kind."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cache
from importlib.resources import files
from typing import Any, Protocol, TypeVar

from tierflow.core.config import ProviderConfig
from tierflow.core.errors import ProviderAuthError, ProviderError
from tierflow.core.usage import Usage

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    """What a phase asks of a model. The provider decides how to put it on the wire."""

    model: str
    system: str
    prompt: str
    max_output_tokens: int
    cache_prefix: str = ""
    """Shared text placed first and marked cacheable (Anthropic `cache_control`, OpenAI prefix caching)."""
    schema: dict[str, Any] | None = None
    """JSON schema for structured output (Anthropic forced tool use, OpenAI `json_schema`)."""
    schema_name: str = "result"
    cache_key: str | None = None
    """A hint that groups requests sharing a prefix (OpenAI `prompt_cache_key`)."""
    cacheable: bool = True
    """False when `cache_prefix` is shorter than the model caches: it is sent first, but not marked."""
    output_mode: str = ""
    """How structured output goes on the wire: "" for the provider's default, or one of `OUTPUT_MODES`."""
    mode_confirmed: bool = True
    """False while nobody knows whether this server accepts `output_mode`: a refusal of the mode is then reported
    at once (never retried), so the fallback costs one refused request; a timeout, a dropped connection or
    another failure is retried as configured (`max_retries`), as always."""


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage
    model: str
    data: dict[str, Any] | None = None
    response_id: str | None = None
    stop_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    finish: str = "stop"
    """`stop`, `truncated` (the provider stopped at the output limit) or `refused`."""
    problem: str = ""
    """Why a structured answer could not be read (invalid JSON, no tool call); empty when it could."""


class Attempts:
    """HTTP attempts an SDK client sent and answers it received whole, counted per thread (SDK event hooks).

    The SDKs retry a timed-out, reset or cut-off request on their own. A provider may have processed and billed
    the attempt whose answer was lost, so the call path records each lost attempt (`lost`) in the ledger. An
    answer counts once its last byte has arrived, not at its headers (when the `response` hook fires): one cut
    off mid-body was billed all the same.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def hooks(self) -> dict[str, list[Callable[[Any], None]]]:
        return {"request": [self._sent], "response": [self._receiving]}

    def _sent(self, request: Any) -> None:
        self._local.sent = getattr(self._local, "sent", 0) + 1
        self._local.cut = ""

    def _receiving(self, response: Any) -> None:
        whole = self._answered_ok if 200 <= response.status_code < 300 else self._answered
        response.stream = _whole_body_stream(type(response.stream))(response.stream, whole, self._cut)

    def _answered(self) -> None:
        self._local.answered = getattr(self._local, "answered", 0) + 1

    def _answered_ok(self) -> None:
        self._answered()
        self._local.ok = getattr(self._local, "ok", 0) + 1

    def ok_since(self, ok: int) -> int:
        """Success (2xx) answers received whole in this thread since it had `ok` of them."""
        return getattr(self._local, "ok", 0) - ok

    def _cut(self, error: Exception) -> None:
        self._local.cut = str(error)

    def mark(self) -> tuple[int, int]:
        return getattr(self._local, "sent", 0), getattr(self._local, "answered", 0)

    def answered_since(self, mark: tuple[int, int]) -> int:
        """Answers received whole since `mark` (in this thread)."""
        return self.mark()[1] - mark[1]

    def lost_since(self, mark: tuple[int, int]) -> int:
        """Attempts sent since `mark` (in this thread) whose answer never arrived whole."""
        sent, answered = self.mark()
        return max(0, (sent - mark[0]) - (answered - mark[1]))

    def cut_off(self) -> str:
        """Why the answer to this thread's latest attempt stopped mid-body; empty when it did not."""
        return getattr(self._local, "cut", "")

    def complete(
        self,
        send: Callable[[], Completion],
        *,
        provider: str,
        model: str,
        sdk_error: type[Exception],
        translate: Callable[[Any, str], ProviderError],
    ) -> Completion:
        """One call through an SDK (`send`: the request and the reading of its answer), with its attempts accounted
        for as the call path needs them, the same for every provider:

        - an SDK error becomes tierflow's (`translate`), noting the attempts sent and never answered whole, as
          does an error of tierflow's that `send` raises (`OutputModeRejected` after a timed-out attempt);
        - a 200 answer the SDK cannot read is an answer of unknown usage (`unreadable_reply`), not an error;
        - whatever else ends the call (Ctrl-C, a timeout, a bug) notes its lost attempts (`interrupted`), an
          answer that arrived whole and was still being read among them;
        - an answer notes the attempts before it that got none (`with_lost_attempts`)."""
        mark, ok = self.mark(), self.ok_since(0)
        try:
            completion = send()
        except ProviderError as error:
            error.lost_attempts = self.lost_since(mark)
            raise
        except sdk_error as exc:
            error = translate(exc, model)
            error.lost_attempts = self.lost_since(mark)
            raise error from exc
        except UNREADABLE_REPLY as exc:
            if not self.answered_since(mark):
                raise  # nothing came back: an error of tierflow's or the SDK's, not of the answer
            completion = unreadable_reply(provider, model, exc)
        except BaseException as exc:
            # An answer that arrived whole but was never returned (the interrupt came while it was read) was
            # billed as surely as one cut off: the SDK never retries a success, so there is at most one.
            interrupted(exc, self.lost_since(mark) + self.ok_since(ok))
            raise
        return with_lost_attempts(completion, self.lost_since(mark))


@cache
def _whole_body_stream(stream_type: type) -> type:
    """A response body that calls `whole()` once its last byte is read, or `cut(error)` if reading it fails.

    httpx insists that a body be one of its `SyncByteStream`s: the base is taken from the body it wraps, so it is
    whichever httpx the SDKs send with.
    """
    (base,) = [b for b in stream_type.__mro__ if b.__name__ == "SyncByteStream"]

    class WholeBody(base):  # type: ignore[misc, valid-type]
        def __init__(self, stream: Any, whole: Callable[[], None], cut: Callable[[Exception], None]) -> None:
            self.stream, self.whole, self.cut = stream, whole, cut

        def __iter__(self) -> Iterator[bytes]:
            try:
                yield from self.stream
            except Exception as exc:
                self.cut(exc)
                raise
            self.whole()

        def close(self) -> None:
            self.stream.close()

    return WholeBody


UNREADABLE_REPLY = (ValueError, TypeError, AttributeError, KeyError)
"""What an SDK raises reading a 200 answer that is not one (an empty body, `null`, `{}`): JSON and shape errors."""


def unreadable_reply(provider: str, model: str, exc: Exception) -> Completion:
    """A 200 answer the SDK could not read: the provider may have billed it, so it is an answer of unknown usage
    (recorded, and charged at its worst case) whose problem the closed loop retries, never an uncaught error."""
    log.warning("%s answered %s with a reply that cannot be read (%s: %s)", provider, model, type(exc).__name__, exc)
    return Completion(
        text="",
        usage=Usage(known=False),
        model=model,
        problem=f"the provider's reply could not be read ({type(exc).__name__}: {exc})",
    )


def interrupted(exc: BaseException, lost: int) -> None:
    """Note on whatever ended a call mid-flight (Ctrl-C, SystemExit, a Prefect timeout or cancellation, an
    asyncio cancellation, a bug) how many of its attempts were sent and never answered whole, as a provider's own
    errors carry it (`lost_attempts`): the call path records each as `lost`, since the provider did the work and
    may bill it. An attempt not yet sent is not counted: nothing was billed.

    Sent means that httpx's `request` event hook has fired (`Attempts`): the SDKs give no later hook, and that
    one fires just before the request is handed to the connection. So an attempt interrupted while it was still
    connecting or writing is counted too: an upper bound, as every lost answer is. Never raises: the interrupt
    is what the caller must see."""
    if getattr(exc, "lost_attempts", None) is None:
        with contextlib.suppress(Exception):
            exc.lost_attempts = lost  # type: ignore[attr-defined]


def with_lost_attempts(completion: Completion, lost: int) -> Completion:
    """The completion, noting how many earlier attempts at it got no answer (`Completion.extra`)."""
    return replace(completion, extra={**completion.extra, "lost_attempts": lost}) if lost else completion


def unanswered_hint(name: str, config: ProviderConfig) -> str:
    """What to do about a call whose answers never arrived (timed out, cut off) after the SDK's retries: the
    provider's keys that give it more time or more tries, or a rerun, which pays only for what is not done."""
    return (
        f"raise timeout_s ({config.timeout_s:g} s now) or max_retries ({config.max_retries} now) under "
        f"[providers.{name}] in the config, or rerun: finished answers are reused, not paid again"
    )


def answered_status(error: BaseException) -> int | None:
    """The HTTP status a failed request was answered with (by the provider, or by a gateway in front of it), read
    from the SDK's error that `error` was raised from; None when no answer came (a timeout, a reset)."""
    for exc in (error, error.__cause__):
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def backoff_s(attempt: int) -> float:
    """The pause before try `attempt + 2` of a request tierflow retries itself: 0.5 s, doubling, at most 8 s (the
    SDKs' own schedule, without their jitter)."""
    return min(0.5 * 2**attempt, 8.0)


def download(fetch: Callable[[], T], retries: int, *, dropped: type[Exception], what: str) -> T:
    """Read what an ended batch holds (its results, whole) with `fetch`: again, after a pause, when a try fails
    in a way the next may not (the connection dropped or the body was cut off mid-transfer, a timeout, HTTP 408,
    409, 429 or 5xx), up to `retries` more times; `dropped` is the SDK's connection error, timeouts included.

    `fetch` sends with the SDK's own retries off, so that these are the config's `max_retries`, counted once: the
    SDKs retry a request only until its response's headers arrive, and Anthropic's results are streamed after
    them, so a body cut off halfway would otherwise end the run. Reading is free and changes nothing at the
    provider, so a try may always be repeated."""
    for attempt in range(retries + 1):
        try:
            return fetch()
        except Exception as exc:
            if attempt == retries or not _transient(exc, dropped):
                raise
            pause = _retry_after_s(exc)
            pause = backoff_s(attempt) if pause is None else pause
            log.warning("downloading %s failed (%s); trying again in %.1f s", what, exc, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


def _transient(exc: Exception, dropped: type[Exception]) -> bool:
    """Whether a second try may get what this one did not: as the SDKs judge it for the requests they retry."""
    if isinstance(exc, dropped):
        return True
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if status is None or getattr(response, "headers", {}).get("x-should-retry") == "false":
        return False
    return status in (408, 409, 429) or status >= 500


def _retry_after_s(exc: Exception) -> float | None:
    """The pause the provider asked for (`retry-after-ms`, or `retry-after` in seconds), when it asked for one of
    at most a minute."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            pause = float(headers.get(name, "")) * scale
        except ValueError:
            continue
        if 0 <= pause <= 60:
            return pause
    return None


BATCH_CLOCK_SKEW_S = 600.0
"""How far a provider's clock and the ledger database's may differ when a batch is looked for by its time."""


@dataclass(frozen=True)
class BatchItemResult:
    """One request's outcome in a provider batch."""

    custom_id: str
    status: str
    """`succeeded`, `errored`, `expired` or `canceled`."""
    completion: Completion | None = None
    error: str = ""
    too_long: bool = False
    """The provider refused the request as longer than the model's context window (Anthropic's
    `invalid_request_error` "prompt is too long", OpenAI's `context_length_exceeded`): sent again, it is refused
    again."""


class Provider(Protocol):
    """A model provider: one call in, text plus its provider-reported usage out."""

    name: str
    kind: str

    def complete(self, request: Request) -> Completion: ...

    def count_tokens(self, request: Request) -> int | None:
        """Prompt tokens by the provider's own counter, or None where it has none."""
        ...

    def submit_batch(self, requests: dict[str, Request], *, key: str = "") -> str:
        """Submit requests (by custom id) to the provider's batch API, tagged with tierflow's batch `key`
        where the API takes metadata; returns the batch id. The creation is sent once, never retried here (nor by
        the SDK): after an error, the batch flow decides whether the batch exists and whether to send it again. An
        error raised before the creation was sent (what it needs first could not be had) is `unsent`."""
        ...

    def find_batch(self, key: str, custom_ids: list[str], since_s: float, known: set[str]) -> str | None:
        """The id of the batch tierflow submitted as `key` at about `since_s` (seconds since the epoch), found
        in the provider's batch list, or None if the provider never accepted it. Batch ids in `known` are
        already accounted for and never returned."""
        ...

    def batches_since(self, since_s: float) -> set[str]:
        """The ids of the batches in the provider's list made from about `since_s` on (seconds since the epoch),
        read just before tierflow sends one: none of them is that one, so a later `find_batch` for it is given them
        in `known`. Empty, without asking, where `find_batch` matches by tierflow's key, which no other batch has."""
        ...

    def batch_ended(self, batch_id: str) -> tuple[bool, str]:
        """Whether the batch has ended, and the provider's status word."""
        ...

    def batch_results(self, batch_id: str, requests: dict[str, Request]) -> list[BatchItemResult]:
        """Every item's outcome; items the provider lost are reported as expired."""
        ...


def served_models(provider: Provider) -> set[str] | None:
    """The model ids a provider serves now, asked once (the SDK's models list); None for the offline model,
    which answers any id it is given."""
    models = getattr(provider, "models", None)
    return models() if models is not None else None


OUTPUT_MODES = ("json_schema", "json_object", "prompted")
"""The structured-output forms an OpenAI-compatible server is tried in, best first: the provider's JSON-schema
mode, JSON mode with the schema attached (llama.cpp), then a prompt that asks for JSON, validated locally."""


def json_instruction(schema: dict[str, Any]) -> str:
    """The instruction that asks for JSON matching `schema`, for servers without a JSON-schema mode."""
    template = (files("tierflow._templates") / "prompts" / "call" / "json.j2").read_text(encoding="utf-8")
    return template.replace("{{ schema }}", json.dumps(schema, ensure_ascii=False))


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_json_object(text: str) -> tuple[dict[str, Any] | None, str]:
    """The JSON object in a model's text, or None and why not. A code fence around it is tolerated."""
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text.strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        start, end = body.find("{"), body.rfind("}")
        try:
            data = json.loads(body[start : end + 1]) if 0 <= start < end else None
        except json.JSONDecodeError:
            data = None
        if data is None:
            return None, f"invalid JSON ({exc.msg} at character {exc.pos})"
    if not isinstance(data, dict):
        return None, f"a JSON {type(data).__name__}, not an object"
    return data, ""


def strict_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """`schema` in the form OpenAI's `strict: true` accepts, or None where it cannot be made strict.

    Strict mode wants every property required and no others allowed; a field with a default is made required
    (the model must then write it, and validation still accepts it). Free-form maps cannot be strict.
    """
    strict = copy.deepcopy(schema)

    def walk(node: Any) -> bool:
        if isinstance(node, list):
            return all(walk(n) for n in node)
        if not isinstance(node, dict):
            return True
        node.pop("default", None)
        if node.get("type") == "object" or "properties" in node:
            if isinstance(node.get("additionalProperties"), dict) or "properties" not in node:
                return False
            node["required"] = list(node["properties"])
            node["additionalProperties"] = False
        named = [v for k in ("properties", "$defs", "definitions") for v in (node.get(k) or {}).values()]
        other = [v for k, v in node.items() if k not in ("properties", "$defs", "definitions", "required", "enum")]
        return all(walk(v) for v in named + other)

    return strict if walk(strict) else None


def api_key(name: str, config: ProviderConfig, model: str, *, required: bool = True) -> str | None:
    """The provider's key from its env var, else its Prefect Secret block. Never logged."""
    if config.api_key_env and os.environ.get(config.api_key_env):
        return os.environ[config.api_key_env]
    if config.api_key_secret:
        from prefect.blocks.system import Secret

        try:
            return Secret.load(config.api_key_secret).get()
        except ValueError as exc:
            raise ProviderAuthError(
                name, model, f"Prefect Secret block {config.api_key_secret!r} not found ({exc})"
            ) from None
    if not required:
        return None
    where = f"environment variable {config.api_key_env}" if config.api_key_env else "an api_key_env"
    raise ProviderAuthError(
        name,
        model,
        f"no API key: {where} is not set",
        hint=f"export {config.api_key_env or 'THE_KEY_VARIABLE'}=..., or use --profile offline (no keys)",
    )


def needs_key(config: ProviderConfig) -> bool:
    """Whether calls to this provider need an API key: a cloud kind's do; a local OpenAI-compatible server ignores
    it, and the offline provider has none."""
    return config.kind in ("anthropic", "openai")


def missing_key(config: ProviderConfig) -> str | None:
    """The environment variable this provider's key is missing from ("" when the config names none), or None when
    it has its key, needs none, or reads it from a Prefect Secret block (checked by its first call, which says when
    it is not found). Never reads the key's value beyond whether it is set."""
    if not needs_key(config) or config.api_key_secret or (config.api_key_env and os.environ.get(config.api_key_env)):
        return None
    return config.api_key_env or ""


def make_provider(name: str, config: ProviderConfig) -> Provider:
    """Build the adapter for a configured provider; SDKs are imported only here, lazily."""
    if config.kind == "anthropic":
        from tierflow.core.providers.anthropic import AnthropicProvider

        return AnthropicProvider(name, config)
    if config.kind in ("openai", "openai-compatible"):
        from tierflow.core.providers.openai import OpenAIProvider

        return OpenAIProvider(name, config)
    from tierflow.offline.provider import OfflineProvider

    return OfflineProvider(name, config)
