"""A local HTTP double of the Anthropic and OpenAI APIs for tests driven through the real SDK clients.

``ProviderDouble`` runs a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 (ephemeral port, daemon thread)
and answers in each provider's wire format:

* Anthropic: ``POST /v1/messages``, ``POST /v1/messages/count_tokens``, Message Batches
  (``/v1/messages/batches`` create/get/list/cancel/delete/results), ``GET /v1/models``.
* OpenAI: ``POST /v1/chat/completions``, Files (``/v1/files`` upload/get/content/delete),
  Batches (``/v1/batches`` create/get/list/cancel), ``GET /v1/models``.

Replies come from an optional ``responder`` callable; without one (or when it returns ``None``) a
deterministic default is produced: a short text derived from the prompt, or, when structured output is
requested, a minimal instance of the requested JSON schema (``example_from_schema``).

Usage blocks are deterministic and realistic: tokens are counted with the o200k BPE (``bpe_openai``) and
prompt caching is simulated for both providers (see ``ProviderDouble`` for the exact rules).

The double is a plain HTTP server, so a subprocess can use it through ``url``; it can also be run on its
own with ``python -m tierflow.testing.double --port 8765``.

Example::

    with ProviderDouble(lambda req: Reply(text="ok") if req.contains("ping") else None) as double:
        client = anthropic.Anthropic(api_key="test", base_url=double.anthropic_base_url)
        double.fail_next(429)  # the SDK retries after the 5 ms retry-after-ms
        client.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=[...])
        assert [r.status for r in double.model_calls()] == [429, 200]
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import email.policy
import functools
import hashlib
import http
import itertools
import json
import math
import socket
import threading
import time
import warnings
from array import array
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from tierflow.core.errors import PicklableError

__all__ = [
    "NO_USAGE",
    "DoubleRequest",
    "NoUsage",
    "ProviderDouble",
    "Reply",
    "Responder",
    "Together",
    "count_tokens",
    "default_text",
    "example_from_schema",
]

Provider = Literal["anthropic", "openai"]
BatchFailKind = Literal["errored", "expired", "canceled"]


class NoUsage(Enum):
    """Sentinel type: ``Reply(usage=NO_USAGE)`` omits the usage block from the response."""

    NO_USAGE = "NO_USAGE"


NO_USAGE = NoUsage.NO_USAGE
"""Omit the usage block, as some OpenAI-compatible local servers do.

OpenAI's ``ChatCompletion.usage`` is optional, so the SDK yields ``completion.usage is None``.
Anthropic's ``Message.usage`` is required: a client built with ``_strict_response_validation=True``
raises ``anthropic.APIResponseValidationError``, while a default (lenient) client returns a ``Message``
whose ``usage`` is ``None`` despite its type. The double sends what it is told for both providers; only
the OpenAI case reflects real servers (the Anthropic API always sends usage).
"""


# --------------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------------

_ENCODE_CHUNK_CHARS = 100_000  # bpe_openai refuses a single encode of more than 200k tokens


@functools.cache
def _encoding() -> Any:
    with warnings.catch_warnings():  # bpe_openai loads its data with a deprecated importlib API
        warnings.simplefilter("ignore", DeprecationWarning)
        from bpe_openai import get_encoding

        encoding = get_encoding("o200k_base")
        encoding.encode_ordinary("warm up")
        return encoding


def _encode(text: str) -> list[int]:
    if not text:
        return []
    enc = _encoding()
    if len(text) <= _ENCODE_CHUNK_CHARS:
        return list(enc.encode_ordinary(text))
    out: list[int] = []
    for start in range(0, len(text), _ENCODE_CHUNK_CHARS):
        out.extend(enc.encode_ordinary(text[start : start + _ENCODE_CHUNK_CHARS]))
    return out


def count_tokens(text: str) -> int:
    """Number of o200k tokens in ``text`` (special-token strings are encoded as ordinary text)."""
    return len(_encode(text))


def _truncate_to_tokens(text: str, limit: int) -> str:
    return str(_encoding().decode(_encode(text)[: max(limit, 0)]))


# --------------------------------------------------------------------------------------------------
# JSON schema -> minimal instance
# --------------------------------------------------------------------------------------------------

_STRING_FORMATS: dict[str, str] = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com",
    "url": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "hostname": "example.com",
}


def _resolve_ref(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node if isinstance(node, dict) else {}


def _is_null_schema(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def example_from_schema(schema: dict[str, Any] | None, root: dict[str, Any] | None = None) -> Any:
    """A minimal, deterministic instance that validates against ``schema``.

    Objects carry their ``required`` properties, arrays ``max(1, minItems)`` items, strings ``"example"``
    (or a value for a known ``format``), numbers the smallest allowed value near 0, enums their first
    value. ``$ref`` into ``$defs``/``definitions``, ``allOf``, ``anyOf``/``oneOf`` (first non-null
    branch) and ``prefixItems`` are followed. ``pattern`` is not honoured.
    """
    return _example(schema or {}, root if root is not None else (schema or {}), 0, 0)


def _example(schema: Any, root: dict[str, Any], depth: int, variant: int) -> Any:
    if not isinstance(schema, dict) or depth > 40:
        return None
    if "$ref" in schema:
        merged = {
            **_resolve_ref(str(schema["$ref"]), root),
            **{k: v for k, v in schema.items() if k != "$ref"},
        }
        return _example(merged, root, depth + 1, variant)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if options:
            chosen = next((o for o in options if not _is_null_schema(o)), options[0])
            rest = {k: v for k, v in schema.items() if k != key}
            return _example({**rest, **chosen} if isinstance(chosen, dict) else rest, root, depth + 1, variant)
    if schema.get("allOf"):
        parts = [p for p in schema["allOf"] if isinstance(p, dict)]
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        values = [_example(p, root, depth + 1, variant) for p in parts]
        if rest:
            values.append(_example(rest, root, depth + 1, variant))
        if values and all(isinstance(v, dict) for v in values):
            merged_obj: dict[str, Any] = {}
            for v in values:
                merged_obj.update(v)
            return merged_obj
        return values[0] if values else None

    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        if "properties" in schema or "required" in schema:
            kind = "object"
        elif "items" in schema or "prefixItems" in schema:
            kind = "array"
        else:
            return "example"

    if kind == "object":
        props: dict[str, Any] = schema.get("properties") or {}
        return {name: _example(props.get(name, {}), root, depth + 1, 0) for name in schema.get("required") or []}
    if kind == "array":
        prefix = schema.get("prefixItems") or []
        count = max(1, int(schema.get("minItems", 0)), len(prefix))
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [_example(prefix[i] if i < len(prefix) else items, root, depth + 1, i) for i in range(count)]
    if kind == "string":
        text = _STRING_FORMATS.get(str(schema.get("format")), "example")
        if variant and text == "example":
            text = f"example{variant}"
        if len(text) < int(schema.get("minLength", 0)):
            text = text + "x" * (int(schema["minLength"]) - len(text))
        if "maxLength" in schema:
            text = text[: int(schema["maxLength"])]
        return text
    if kind in ("integer", "number"):
        return _example_number(schema, kind == "integer", variant)
    if kind == "boolean":
        return bool(variant % 2)
    return None


def _example_number(schema: dict[str, Any], integer: bool, variant: int) -> int | float:
    low: float | None = schema.get("minimum")
    if "exclusiveMinimum" in schema and isinstance(schema["exclusiveMinimum"], int | float):
        low = schema["exclusiveMinimum"] + (1 if integer else 0.5)
    high: float | None = schema.get("maximum")
    if "exclusiveMaximum" in schema and isinstance(schema["exclusiveMaximum"], int | float):
        high = schema["exclusiveMaximum"] - (1 if integer else 0.5)
    value: float = variant
    if low is not None and value < low:
        value = low
    if high is not None and value > high:
        value = high
    step = schema.get("multipleOf")
    if step:
        value = math.ceil(value / step) * step
    if integer:
        return int(math.ceil(value))
    return value


# --------------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    """Text of a message ``content`` (string, or list of blocks/parts, including tool results)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                if isinstance(block.get("text"), str):
                    parts.append(block["text"])
                elif block.get("type") == "tool_result":
                    parts.append(_content_text(block.get("content")))
        return "\n".join(p for p in parts if p)
    return ""


@dataclass
class DoubleRequest:
    """One request the double received (or one item of a batch, with ``in_batch=True``)."""

    provider: Provider
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    raw: bytes
    kind: str
    model: str | None = None
    text: str = ""
    """All prompt text: system, then every message's text content (tool results included), newline-joined."""
    query: dict[str, str] = field(default_factory=dict)
    in_batch: bool = False
    custom_id: str | None = None
    batch_id: str | None = None
    status: int | None = None
    """HTTP status the double answered with (for a batch item: 200, or the item's error status)."""
    response: Any = None
    """The JSON body the double answered with (None for binary bodies)."""
    fault: str | None = None
    """``timeout``, ``reset`` or ``cut``, when the responder's ``Reply`` asked for that fault (see ``Reply.fault``)."""
    delivered: bool = True
    """False for a ``timeout`` or a ``cut``: the answer was made and billed, but the client never read it whole."""
    fault_delay_s: float = 0.0

    @property
    def body(self) -> dict[str, Any]:
        """The parsed JSON body, or ``{}`` when it is not a JSON object."""
        return self.json if isinstance(self.json, dict) else {}

    @property
    def messages(self) -> list[dict[str, Any]]:
        msgs = self.body.get("messages")
        return [m for m in msgs if isinstance(m, dict)] if isinstance(msgs, list) else []

    @property
    def system(self) -> str:
        """System prompt text (Anthropic ``system``; OpenAI ``system``/``developer`` messages)."""
        if self.provider == "anthropic":
            return _content_text(self.body.get("system"))
        return "\n".join(
            _content_text(m.get("content")) for m in self.messages if m.get("role") in ("system", "developer")
        )

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""

    @property
    def tools(self) -> list[dict[str, Any]]:
        tools = self.body.get("tools")
        return [t for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []

    @property
    def forced_tool(self) -> str | None:
        """Name of the tool the request forces (``tool_choice`` naming a tool, or any/required)."""
        choice = self.body.get("tool_choice")
        names = [self._tool_name(t) for t in self.tools]
        if self.provider == "anthropic":
            if isinstance(choice, dict) and choice.get("type") == "tool":
                return str(choice.get("name"))
            if isinstance(choice, dict) and choice.get("type") == "any" and names:
                return names[0]
            return None
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            return str(choice["function"].get("name"))
        if choice == "required" and names:
            return names[0]
        return None

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema the output must follow (structured-output format or forced tool), if any."""
        fmt = self._output_format()
        if fmt is not None:
            return fmt
        forced = self.forced_tool
        return self.tool_schema(forced) if forced else None

    @property
    def max_tokens(self) -> int | None:
        for key in ("max_tokens", "max_completion_tokens"):
            value = self.body.get(key)
            if isinstance(value, int):
                return value
        return None

    @property
    def api_key(self) -> str | None:
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None

    @property
    def stream(self) -> bool:
        """Whether a streamed (server-sent events) answer was asked for; batch items never stream."""
        return self.body.get("stream") is True and not self.in_batch

    @property
    def thinking_enabled(self) -> bool:
        thinking = self.body.get("thinking")
        return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")

    def contains(self, needle: str, *, case_sensitive: bool = False) -> bool:
        """Whether the prompt text contains ``needle``."""
        if case_sensitive:
            return needle in self.text
        return needle.lower() in self.text.lower()

    def tool_schema(self, name: str) -> dict[str, Any] | None:
        """Input schema of the named tool."""
        for tool in self.tools:
            if self._tool_name(tool) == name:
                if self.provider == "anthropic":
                    return dict(tool.get("input_schema") or {})
                return dict((tool.get("function") or {}).get("parameters") or {})
        return None

    def _tool_name(self, tool: dict[str, Any]) -> str:
        if self.provider == "openai" and isinstance(tool.get("function"), dict):
            return str(tool["function"].get("name"))
        return str(tool.get("name"))

    def _output_format(self) -> dict[str, Any] | None:
        if self.provider == "anthropic":
            config = self.body.get("output_config")
            fmt = config.get("format") if isinstance(config, dict) else None
            if not isinstance(fmt, dict):
                fmt = self.body.get("output_format")  # older beta spelling
            if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
                return dict(fmt.get("schema") or {})
            return None
        fmt = self.body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            return dict((fmt.get("json_schema") or {}).get("schema") or {})
        if isinstance(fmt, dict) and fmt.get("type") == "json_object":
            return {"type": "object"}
        return None


Fault = Literal["timeout", "reset", "cut"]
"""The transport faults the double can inject (see ``Reply.fault``)."""


@dataclass
class Reply:
    """What the responder wants the "model" to answer. Unset fields get realistic defaults."""

    text: str | None = None
    data: dict[str, Any] | None = None
    """Structured output: Anthropic ``tool_use`` input (or JSON text for ``output_config.format``);
    OpenAI JSON content for ``response_format``, else a tool call when ``tools`` were given."""
    usage: dict[str, Any] | NoUsage | None = None
    """Provider-shaped usage block sent verbatim; ``NO_USAGE`` omits it; None computes it."""
    thinking_tokens: int = 0
    reasoning_tokens: int = 0
    """Hidden reasoning tokens; either field works for either provider (the larger one is used)."""
    status: int = 200
    """A status >= 400 answers with that provider-shaped error (message = ``text``)."""
    code: str | None = None
    """With a status >= 400, OpenAI's error ``code`` where the status alone does not give it
    (``context_length_exceeded`` for a 400); Anthropic's errors carry none."""
    stop_reason: str | None = None
    """Either provider's vocabulary (``end_turn``/``stop``, ``max_tokens``/``length``, ...)."""
    model: str | None = None
    fault: Fault | None = None
    """A transport fault instead of a clean answer. ``reset``: the connection is closed at once, without a
    response; the request is not processed and not billed (``status`` 0). ``timeout``: the answer is made and
    billed, as a provider bills work it has done, but held ``delay_s`` before it is sent, past the client's
    timeout, so the client never reads it (``delivered`` False). ``cut``: the answer is made and billed, and
    sent as 200 with its full Content-Length, but the connection is closed after half of its body (``delivered``
    False). A client that retries may pay twice."""
    delay_s: float = 5.0
    """How long a ``timeout`` holds its answer."""
    body: bytes | None = None
    """A 200 whose body is these bytes verbatim, not the provider's JSON (``b""``, ``b"null"``, ``b"{}"``): the
    request is processed and billed, as a broken gateway or proxy answers."""

    @property
    def hidden_tokens(self) -> int:
        return max(self.thinking_tokens, self.reasoning_tokens)


Responder = Callable[[DoubleRequest], Reply | str | dict[str, Any] | None]
"""Called for every generation request and batch item; may return a ``Reply``, a plain ``str``
(text reply), a ``dict`` (structured ``data``) or ``None`` (default reply)."""


class Together:
    """A ``ProviderDouble(hold=...)`` that answers the first ``n`` requests ``match`` accepts only once all ``n``
    have been answered: until then none of them is sent and none of their cache entries lands, so they overlap
    however slowly the client sends them. Later requests pass straight through.

    If ``n`` never arrive within ``timeout_s`` (the client runs fewer at once than the test assumes), the
    waiting requests fail with a message saying so, and the double re-raises it when the test leaves it."""

    def __init__(self, n: int, match: Callable[[DoubleRequest], bool] = lambda r: True, timeout_s: float = 120.0):
        self.n = n
        self.match = match
        self.timeout_s = timeout_s
        self.seen = 0
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(n, timeout=timeout_s)

    def __call__(self, request: DoubleRequest) -> None:
        with self._lock:
            if not self.match(request) or self.seen >= self.n:
                return
            self.seen += 1
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            raise AssertionError(
                f"Together: only {self.seen} of {self.n} requests arrived within {self.timeout_s:g} s, so they "
                "cannot overlap; the client runs fewer at once than the test assumes"
            ) from None


def default_text(request: DoubleRequest) -> str:
    """The default reply text: ``"Reply to "`` plus the first 8 words of the last user message."""
    words = request.last_user_text.split()[:8]
    return "Reply to " + (" ".join(words) if words else "(empty prompt)")


# --------------------------------------------------------------------------------------------------
# Internal state
# --------------------------------------------------------------------------------------------------

_ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ANTHROPIC_BATCH_ERROR_TYPES = set(_ANTHROPIC_ERROR_TYPES.values()) - {"request_too_large"}
_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", "conflict"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", None),
}
_DEFAULT_MESSAGES: dict[int, str] = {
    400: "Invalid request.",
    401: "Invalid API key.",
    403: "Permission denied.",
    404: "Not found.",
    429: "Rate limit exceeded; please retry after a short wait.",
    500: "Internal server error.",
    503: "Service unavailable.",
    529: "Overloaded.",
}
_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_OPENAI_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_MODEL_KINDS = ("message", "chat")
ANTHROPIC_MIN_CACHEABLE: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-5", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-3-5-haiku", 2048),
    ("claude-3-haiku", 2048),
)
"""Anthropic's shortest cacheable prefix per model (id prefix, tokens) where it is not 1,024."""
_SSE = "text/event-stream; charset=utf-8"
_JSON_KINDS = ("message", "chat", "count_tokens", "batch_create")
_DEFAULT_MODELS: dict[str, tuple[str, ...]] = {
    "anthropic": ("claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-7"),
    "openai": ("gpt-5.4-mini", "gpt-5.4", "gpt-4o-mini"),
}
# Token accounting constants (documented on ProviderDouble).
_A_BASE_OVERHEAD = 3
_A_MESSAGE_OVERHEAD = 4
_A_MEDIA_TOKENS = 1500
_A_CACHE_LOOKBACK_BLOCKS = 20
_O_MESSAGE_OVERHEAD = 3
_O_REPLY_PRIMING = 3
_O_CACHE_MIN = 1024
_O_CACHE_STEP = 128
_O_MARKER = 200_000  # a token id standing for the chat-format delimiters


@dataclass
class _FailRule:
    status: int
    times: int
    provider: str | None
    body: dict[str, Any] | None
    retry_after_ms: int | None
    kind: str | None
    processed: bool = False


@dataclass
class _BatchFailRule:
    match: Callable[[str], bool]
    kind: BatchFailKind
    used: set[str] = field(default_factory=set)


@dataclass
class _File:
    id: str
    data: bytes
    filename: str
    purpose: str
    created_at: int


@dataclass
class _Batch:
    provider: Provider
    id: str
    created_at: float
    items: list[tuple[str, Any]]
    headers: dict[str, str]
    expire: bool
    endpoint: str = ""
    input_file_id: str = ""
    metadata: Any = None
    state: str = "in_progress"  # in_progress | canceling | finishing | ended
    polls: int = 0
    ended_at: float | None = None
    cancel_at: float | None = None
    outcome: str = ""  # completed | expired | cancelled | failed
    counts: dict[str, int] = field(default_factory=dict)
    results: bytes = b""
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    unlisted: int = 0
    """Batch list answers still to leave this batch out of (`ProviderDouble.lag_batch_list`)."""


@dataclass
class _Answer:
    status: int
    body: Any = None
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    fault: str | None = None
    delay_s: float = 0.0


@dataclass
class _Segment:
    key: str
    tokens: int
    cache_ttl: str | None  # None: no cache_control on this block


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    double: ProviderDouble


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        raw = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = self.server.double._dispatch(self.command, self.path, headers, raw)
        if answer.fault == "reset":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if answer.fault == "timeout":
            self.close_connection = True
            time.sleep(answer.delay_s)  # the client has given up by now; what is written goes nowhere
        payload = answer.raw if answer.raw is not None else json.dumps(answer.body, separators=(",", ":")).encode()
        try:
            phrase = http.HTTPStatus(answer.status).phrase
        except ValueError:
            phrase = "Overloaded" if answer.status == 529 else "Error"
        lines = [
            f"HTTP/1.1 {answer.status} {phrase}",
            f"Content-Type: {answer.content_type}",
            f"Content-Length: {len(payload)}",
        ]
        lines.extend(f"{k}: {v}" for k, v in answer.headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        if answer.fault == "cut":
            payload = payload[: len(payload) // 2]  # after a Content-Length that promised all of it
        try:
            self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        except OSError:
            if answer.fault is None:
                raise
        if answer.fault == "cut":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _strip_cache_control(block: Any) -> Any:
    if isinstance(block, dict) and "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _cache_ttl(block: Any) -> str | None:
    if isinstance(block, dict) and isinstance(block.get("cache_control"), dict):
        return "1h" if block["cache_control"].get("ttl") == "1h" else "5m"
    return None


def _block_tokens(block: Any) -> int:
    if isinstance(block, str):
        return count_tokens(block)
    if not isinstance(block, dict):
        return 0
    kind = block.get("type")
    if kind == "text":
        return count_tokens(str(block.get("text", "")))
    if kind in ("image", "document"):
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text":
            return count_tokens(str(source.get("data", "")))
        return _A_MEDIA_TOKENS
    if kind == "tool_use":
        return count_tokens(str(block.get("name", ""))) + count_tokens(json.dumps(block.get("input", {})))
    if kind == "tool_result":
        return count_tokens(_content_text(block.get("content"))) + 3
    if kind in ("thinking", "redacted_thinking"):
        return 0  # earlier turns' thinking is stripped by the API
    return count_tokens(json.dumps(_strip_cache_control(block)))


def _anthropic_segments(body: dict[str, Any]) -> list[_Segment]:
    """Prompt blocks in Anthropic's cache order: tools, system, messages."""
    segments: list[_Segment] = []
    for tool in body.get("tools") or []:
        clean = _strip_cache_control(tool)
        segments.append(_Segment(json.dumps(clean, sort_keys=True), count_tokens(json.dumps(clean)), _cache_ttl(tool)))
    system = body.get("system")
    if isinstance(system, str) and system:
        segments.append(_Segment(json.dumps(["system", system]), count_tokens(system), None))
    elif isinstance(system, list):
        for block in system:
            segments.append(
                _Segment(
                    json.dumps(["system", _strip_cache_control(block)], sort_keys=True),
                    _block_tokens(block),
                    _cache_ttl(block),
                )
            )
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        role = str(message.get("role"))
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for i, block in enumerate(blocks):
            overhead = _A_MESSAGE_OVERHEAD if i == 0 else 0
            key = json.dumps([role, i, _strip_cache_control(block)], sort_keys=True)
            segments.append(_Segment(key, _block_tokens(block) + overhead, _cache_ttl(block)))
        if not blocks:
            segments.append(_Segment(json.dumps([role, 0, None]), _A_MESSAGE_OVERHEAD, None))
    top = body.get("cache_control")
    if isinstance(top, dict) and segments:
        segments[-1].cache_ttl = "1h" if top.get("ttl") == "1h" else "5m"
    return segments


def _openai_prompt_tokens(body: dict[str, Any]) -> list[int]:
    """Token list of an OpenAI chat prompt (tools and schema first, then messages with delimiters)."""
    tokens: list[int] = []
    if body.get("tools"):
        tokens.extend(_encode(json.dumps(body["tools"], sort_keys=True)))
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        tokens.extend(_encode(json.dumps(fmt.get("json_schema"), sort_keys=True)))
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        tokens.append(_O_MARKER)
        tokens.extend(_encode(str(message.get("role", ""))))
        tokens.append(_O_MARKER + 1)
        tokens.extend(_encode(_content_text(message.get("content"))))
        if message.get("tool_calls"):
            tokens.extend(_encode(json.dumps(message["tool_calls"], sort_keys=True)))
        tokens.append(_O_MARKER + 2)
    return tokens


def _parse_multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Fields of a multipart/form-data body: name -> (filename, bytes)."""
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    message = parser.parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True)
        fields[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


# --------------------------------------------------------------------------------------------------
# The double
# --------------------------------------------------------------------------------------------------


class ProviderDouble:
    """Local HTTP server speaking the Anthropic Messages and OpenAI Chat Completions wire formats.

    Token accounting (o200k BPE, deterministic):

    * Anthropic input = 3 + tools (their JSON) + system + for each message 4 + its blocks' tokens
      (images/documents count 1500, earlier thinking blocks 0). Output = reply text tokens (at least 1)
      + tool input JSON tokens + thinking tokens (``output_tokens`` includes thinking; the breakdown is in
      ``output_tokens_details.thinking_tokens``).
    * Anthropic caching: blocks carrying ``cache_control`` (or the last block, for top-level
      ``cache_control``) are breakpoints. A breakpoint's prefix (model + blocks, hashed) is written on
      first sight: its tokens go to ``cache_creation_input_tokens`` (5m or 1h bucket by ``ttl``). Later
      requests read the longest known prefix ending at a breakpoint or up to 20 blocks before one:
      ``cache_read_input_tokens``. ``input_tokens`` is the rest. Prefixes shorter than
      ``min_cacheable_tokens`` are never cached. Entries never expire. With ``realistic_cache``, as on the
      real API: an entry is readable only once the request that wrote it has been answered, so every
      request that starts before then misses and pays the write too (batch items run one after another,
      each reading what earlier items wrote: the API's best case); and the minimum is the model's own
      (``ANTHROPIC_MIN_CACHEABLE``: 4,096 tokens for Opus 4.5/4.6 and Haiku 4.5, 2,048 for Haiku 3.x,
      1,024 otherwise) unless ``min_cacheable_tokens`` is given.
    * OpenAI prompt = tools JSON + response schema JSON + for each message 3 + role + content, plus 3.
      ``cached_tokens`` is the longest prefix shared with an earlier request for the same model and
      ``prompt_cache_key``, if >= 1024 tokens, rounded down to a multiple of 128. ``prompt_tokens``
      includes cached tokens and ``completion_tokens`` includes reasoning tokens.
    * A reply longer than ``max_tokens`` (minus hidden tokens) is cut, with ``max_tokens``/``length``.

    Batches end after ``batch_polls_until_done`` status GETs; the responder runs for each item then.
    ``latency_s`` delays every generation answer, like a model thinking; ``in_flight`` and
    ``max_in_flight`` count generation requests being answered at once. ``hold`` is called with each
    generation request once it is answered, before the answer is sent and its cache entries land: a test
    makes requests overlap with it (see ``Together``) instead of hoping a delay is long enough.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        batch_polls_until_done: int = 1,
        min_cacheable_tokens: int | None = None,
        realistic_cache: bool = False,
        latency_s: float = 0.0,
        hold: Callable[[DoubleRequest], None] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.responder: Responder | None = responder
        self.batch_polls_until_done = batch_polls_until_done
        self.min_cacheable_tokens = min_cacheable_tokens
        self.realistic_cache = realistic_cache
        self.latency_s = latency_s
        self.hold = hold
        self.in_flight = 0
        self.max_in_flight = 0
        self._pending_cache: dict[int, list[bytes]] = {}
        """Cache entries written by requests still being answered (``realistic_cache``), by thread."""
        self._answering: set[int] = set()
        """Threads answering a generation request now (batch items are not among them)."""
        self.requests: list[DoubleRequest] = []
        self.batch_items: list[DoubleRequest] = []
        self.errors: list[BaseException] = []
        """Exceptions raised by the responder (or the double) while answering; re-raised by ``__exit__``."""
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._fail_rules: list[_FailRule] = []
        self._batch_fail_rules: list[_BatchFailRule] = []
        self._lose_rules: list[tuple[str, str, float]] = []
        self._expire_batches = 0
        self._list_lag = 0
        self._anthropic_cache: set[bytes] = set()
        self._openai_cache: dict[tuple[str, str], set[bytes]] = {}
        self._batches: dict[str, _Batch] = {}
        self._files: dict[str, _File] = {}
        self.retired: set[str] = set()
        """Model ids answered with HTTP 404 ``model_not_found`` (each API's own body), as for a retired model."""
        self.served: dict[str, list[str]] = {name: list(ids) for name, ids in _DEFAULT_MODELS.items()}
        """Model ids ``GET /v1/models`` lists, per provider (retired ones left out)."""
        self.wide_scripts = False
        """Count Anthropic prompts as a tokenizer that is not o200k may (Claude's is not): every character
        outside ASCII is one token per UTF-8 byte, so CJK and emoji cost several times their o200k count, in
        ``count_tokens`` and in the usage billed alike. (No byte-level tokenizer counts more than that.)"""

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> ProviderDouble:
        """Bind the port and serve in a daemon thread. Returns self."""
        if self._server is not None:
            return self
        _encoding()  # load the tokenizer before the first request is timed
        server = _Server((self._host, self._port), _Handler)
        server.double = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="provider-double", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ProviderDouble:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop()
        if exc_type is None and self.errors:
            raise RuntimeError("the provider double or its responder raised") from self.errors[0]

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("ProviderDouble is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    # -- scripting -----------------------------------------------------------------------------

    def model_calls(self, provider: str | None = None, *, include_batch: bool = False) -> list[DoubleRequest]:
        """Generation requests (Anthropic messages, OpenAI chat completions), failed attempts included.

        With ``include_batch``, batch items the double processed are appended after the HTTP calls.
        """
        with self._lock:
            calls = [r for r in self.requests if r.kind in _MODEL_KINDS]
            if include_batch:
                calls.extend(self.batch_items)
        return [r for r in calls if provider is None or r.provider == provider]

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        provider: str | None = None,
        body: dict[str, Any] | None = None,
        retry_after_ms: int | None = 5,
        kind: str | None = None,
        processed: bool = False,
    ) -> None:
        """Answer the next ``times`` matching requests with a provider-shaped error of ``status``.

        Matches generation requests by default; ``kind`` picks another request kind (or ``"*"`` for any).
        ``retry_after_ms`` adds a ``retry-after-ms`` header, which both SDKs obey before retrying.
        With ``processed``, each request is carried out first (a batch created, an answer made and billed) and
        its answer replaced by the error, as a gateway in front of the API (or the API itself) may answer 502
        or 504 after the work is done: the request's ``status`` and ``response`` are then the API's own, and
        ``delivered`` is False.
        """
        with self._lock:
            self._fail_rules.append(_FailRule(status, times, provider, body, retry_after_ms, kind, processed))

    def lose_next(self, kind: str, *, fault: Fault = "timeout", delay_s: float = 5.0, times: int = 1) -> None:
        """Process the next ``times`` requests of ``kind`` (``"batch_create"``, ``"message"``, ...) as usual,
        then lose the answer: held ``delay_s`` past the client's timeout, the connection closed without it,
        or closed halfway through it. The work is done (a batch is created, an answer billed); the client never
        hears of it."""
        with self._lock:
            self._lose_rules.extend([(kind, fault, delay_s)] * times)

    def fail_in_batch(
        self, custom_ids: Collection[str] | Callable[[str], bool], kind: BatchFailKind = "errored"
    ) -> None:
        """Fail matching items of the next batch(es), once per custom_id (a resubmission succeeds)."""
        if callable(custom_ids):
            match = custom_ids
        else:
            wanted = frozenset(custom_ids)
            match = wanted.__contains__
        with self._lock:
            self._batch_fail_rules.append(_BatchFailRule(match, kind))

    def lag_batch_list(self, lists: int) -> None:
        """Leave the next created batch out of the next ``lists`` batch list answers of its API, as a provider's
        list can lag behind its creations: it is made, and can be polled by its id, but not found by a look."""
        with self._lock:
            self._list_lag = lists

    def expire_next_batch(self) -> None:
        """Make the next created batch end as expired, every item unprocessed."""
        with self._lock:
            self._expire_batches += 1

    def reset(self) -> None:
        """Forget requests, scripted failures, caches, batches and files (the server keeps running)."""
        with self._lock:
            self.requests.clear()
            self.batch_items.clear()
            self.errors.clear()
            self._fail_rules.clear()
            self._batch_fail_rules.clear()
            self._lose_rules.clear()
            self._expire_batches = 0
            self._list_lag = 0
            self._anthropic_cache.clear()
            self._openai_cache.clear()
            self._pending_cache.clear()
            self.max_in_flight = 0
            self._batches.clear()
            self._files.clear()

    # -- dispatch ------------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):024d}"

    def _dispatch(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> _Answer:
        split = urlsplit(target)
        path = split.path.rstrip("/") or "/"
        if not path.startswith("/v1/"):
            path = "/v1" + path
        parts = path.split("/")[2:]
        provider = self._provider_for(parts, headers)
        kind, arg = self._route(provider, method, parts)
        parsed: Any = None
        if raw and "json" in headers.get("content-type", "json"):
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        request = DoubleRequest(
            provider=provider,
            method=method,
            path=path,
            headers=headers,
            json=parsed,
            raw=raw,
            kind=kind,
            model=parsed.get("model") if isinstance(parsed, dict) else None,
            query=dict(parse_qsl(split.query)),
        )
        if kind in _MODEL_KINDS:
            request.text = _prompt_text(request)
        with self._lock:
            self.requests.append(request)
            rule = self._take_fail_rule(provider, kind)
        if rule is not None and not rule.processed:
            answer = self._error(provider, rule.status, None, rule.body)
            if rule.retry_after_ms is not None:
                answer.headers["retry-after-ms"] = str(rule.retry_after_ms)
        else:
            try:
                answer = self._handle_timed(request, arg, counted=kind in _MODEL_KINDS)
            except _HttpError as err:
                answer = self._error(provider, err.status, err.message)
                if not err.retry:
                    answer.headers["x-should-retry"] = "false"
            except Exception as exc:  # a bug in the double: answer, and re-raise at __exit__
                with self._lock:
                    self.errors.append(exc)
                answer = self._error(provider, 500, f"provider double failed: {exc!r}")
                answer.headers["x-should-retry"] = "false"
        request.status = answer.status
        request.response = answer.body
        if rule is not None and rule.processed:  # done, and its answer replaced by the error on the way back
            request.delivered = False
            answer = self._error(provider, rule.status, None, rule.body)
            if rule.retry_after_ms is not None:
                answer.headers["retry-after-ms"] = str(rule.retry_after_ms)
        if request.fault == "reset":
            request.status, request.response = 0, None  # never processed, never billed
        if request.fault is not None:
            answer.fault, answer.delay_s = request.fault, request.fault_delay_s
        with self._lock:
            lose = next((r for r in self._lose_rules if r[0] == kind), None)
            if lose is not None:
                self._lose_rules.remove(lose)
        if lose is not None:
            request.fault, request.delivered = lose[1], False
            answer.fault, answer.delay_s = lose[1], lose[2]
        answer.headers["request-id" if provider == "anthropic" else "x-request-id"] = self._new_id("req_")
        return answer

    def _handle_timed(self, request: DoubleRequest, arg: str, *, counted: bool) -> _Answer:
        """Answer a request; a generation request is counted in flight and delayed by ``latency_s``. The
        cache entries the request wrote become readable when it is answered."""
        with self._lock:
            if counted:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                self._answering.add(threading.get_ident())
        try:
            answer = self._handle(request, arg)
            if counted and self.latency_s:
                time.sleep(self.latency_s)
            if counted and self.hold is not None:
                self.hold(request)
            return answer
        finally:
            with self._lock:
                if counted:
                    self.in_flight -= 1
                    self._answering.discard(threading.get_ident())
                self._anthropic_cache.update(self._pending_cache.pop(threading.get_ident(), []))

    @staticmethod
    def _provider_for(parts: list[str], headers: dict[str, str]) -> Provider:
        if parts and parts[0] == "messages":
            return "anthropic"
        if parts and parts[0] in ("chat", "files", "batches", "completions", "embeddings", "responses"):
            return "openai"
        if "anthropic-version" in headers or ("x-api-key" in headers and "authorization" not in headers):
            return "anthropic"
        return "openai"

    @staticmethod
    def _route(provider: Provider, method: str, parts: list[str]) -> tuple[str, str]:
        n = len(parts)
        head = parts[0] if parts else ""
        if provider == "anthropic" and head == "messages":
            if n == 1 and method == "POST":
                return "message", ""
            if n == 2 and parts[1] == "count_tokens" and method == "POST":
                return "count_tokens", ""
            if n >= 2 and parts[1] == "batches":
                if n == 2:
                    return ("batch_create" if method == "POST" else "batch_list"), ""
                if n == 3:
                    return ("batch_delete" if method == "DELETE" else "batch_get"), parts[2]
                if n == 4 and parts[3] == "results":
                    return "batch_results", parts[2]
                if n == 4 and parts[3] == "cancel":
                    return "batch_cancel", parts[2]
        if head == "models":
            return ("models" if n == 1 else "model_get"), "/".join(parts[1:])
        if provider == "openai":
            if parts == ["chat", "completions"] and method == "POST":
                return "chat", ""
            if head == "files":
                if n == 1:
                    return ("file_upload" if method == "POST" else "file_list"), ""
                if n == 2:
                    return ("file_delete" if method == "DELETE" else "file_get"), parts[1]
                if n == 3 and parts[2] == "content":
                    return "file_content", parts[1]
            if head == "batches":
                if n == 1:
                    return ("batch_create" if method == "POST" else "batch_list"), ""
                if n == 2:
                    return "batch_get", parts[1]
                if n == 3 and parts[2] == "cancel":
                    return "batch_cancel", parts[1]
        return "unknown", ""

    def _take_fail_rule(self, provider: Provider, kind: str) -> _FailRule | None:
        for rule in self._fail_rules:
            if rule.provider not in (None, provider):
                continue
            if rule.kind == "*" or (rule.kind is None and kind in _MODEL_KINDS) or rule.kind == kind:
                rule.times -= 1
                if rule.times <= 0:
                    self._fail_rules.remove(rule)
                return rule
        return None

    def _handle(self, request: DoubleRequest, arg: str) -> _Answer:
        kind = request.kind
        if kind == "unknown":
            raise _HttpError(404, f"No route for {request.method} {request.path}")
        if kind in _JSON_KINDS and not isinstance(request.json, dict):
            raise _HttpError(400, "Request body must be a JSON object.")
        handler = getattr(self, f"_{request.provider}_{kind}", None)
        if handler is None:
            raise _HttpError(404, f"No route for {request.method} {request.path}")
        answer: _Answer = handler(request, arg)
        return answer

    # -- errors --------------------------------------------------------------------------------

    def _error(
        self,
        provider: Provider,
        status: int,
        message: str | None,
        body: dict[str, Any] | None = None,
        code: str | None = None,
    ) -> _Answer:
        if body is None:
            body = _error_body(provider, status, message, code)
        return _Answer(status, body)

    # -- generation ----------------------------------------------------------------------------

    def _check_model(self, request: DoubleRequest) -> None:
        """A retired model's answer, as each API gives it (HTTP 404, not retried by the SDKs)."""
        model = request.model
        if model not in self.retired:
            return
        if request.provider == "anthropic":
            raise _HttpError(404, f"model: {model}", retry=False)
        raise _HttpError(404, f"The model `{model}` does not exist or you do not have access to it.", retry=False)

    def _respond(self, request: DoubleRequest) -> Reply:
        self._check_model(request)
        responder = self.responder
        if responder is None:
            return Reply()
        try:
            result = responder(request)
        except Exception as exc:
            with self._lock:
                self.errors.append(exc)
            raise _HttpError(500, f"responder raised {exc!r}", retry=False) from exc
        if result is None:
            return Reply()
        if isinstance(result, str):
            return Reply(text=result)
        if isinstance(result, dict):
            return Reply(data=result)
        request.fault, request.delivered = result.fault, result.fault not in ("timeout", "cut")
        request.fault_delay_s = result.delay_s
        return result

    def _anthropic_message(self, request: DoubleRequest, arg: str) -> _Answer:
        _require(request, "model", "messages", "max_tokens")
        reply = self._respond(request)
        if reply.status >= 400:
            return self._error("anthropic", reply.status, reply.text)
        message = self._anthropic_message_body(request, reply, "standard")
        if reply.body is not None:
            return _Answer(200, message, raw=reply.body)
        if request.stream:
            return _Answer(200, message, raw=_anthropic_sse(message), content_type=_SSE)
        return _Answer(200, message)

    def _anthropic_count_tokens(self, request: DoubleRequest, arg: str) -> _Answer:
        _require(request, "model", "messages")
        self._check_model(request)
        total = _A_BASE_OVERHEAD + sum(s.tokens for s in _anthropic_segments(request.body)) + self._wide(request)
        return _Answer(200, {"input_tokens": total})

    def _anthropic_message_body(self, request: DoubleRequest, reply: Reply, tier: str) -> dict[str, Any]:
        hidden = reply.hidden_tokens
        content: list[dict[str, Any]] = []
        stop_reason = "end_turn"
        if hidden and request.thinking_enabled:
            content.append(
                {
                    "type": "thinking",
                    "thinking": f"Thinking about: {default_text(request)}",
                    "signature": "c2ln",
                }
            )
        structured = request._output_format()
        target = request.forced_tool
        choice = request.body.get("tool_choice")
        tools_off = isinstance(choice, dict) and choice.get("type") == "none"
        tools_allowed = bool(request.tools) and not tools_off
        if target is None and reply.data is not None and tools_allowed and structured is None:
            target = request._tool_name(request.tools[0])
        want_structured = reply.data is not None or (reply.text is None and (structured or target))
        text = reply.text
        if text is None and not want_structured:
            text = default_text(request)
        visible = 0
        if want_structured and target is None:
            data = reply.data if reply.data is not None else example_from_schema(structured)
            text = json.dumps(data)
        if text is not None:
            budget = (request.max_tokens or 1 << 30) - hidden
            tokens = count_tokens(text)
            if tokens > budget:
                text, tokens, stop_reason = _truncate_to_tokens(text, budget), max(budget, 0), "max_tokens"
            content.append({"type": "text", "text": text})
            visible += tokens
        if want_structured and target is not None:
            data = reply.data if reply.data is not None else example_from_schema(request.tool_schema(target))
            tokens, budget = count_tokens(json.dumps(data)), (request.max_tokens or 1 << 30) - hidden - visible
            stop_reason = "tool_use"
            if tokens > budget:
                # As the API does when max_tokens falls inside a tool call: billed up to the limit, the input cut
                # short (here, to nothing), stop_reason max_tokens. Never more output than max_tokens.
                data, tokens, stop_reason = {}, max(budget, 0), "max_tokens"
            content.append({"type": "tool_use", "id": self._new_id("toolu_"), "name": target, "input": data})
            visible += tokens
        if reply.stop_reason:
            stop_reason = _ANTHROPIC_STOP.get(reply.stop_reason, reply.stop_reason)
        message: dict[str, Any] = {
            "id": self._new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": reply.model or request.model or "unknown",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
        }
        if isinstance(reply.usage, dict):
            message["usage"] = reply.usage
        elif reply.usage is None:
            message["usage"] = self._anthropic_usage(request, max(visible, 1) + hidden, hidden, tier)
        return message

    def _wide(self, request: DoubleRequest) -> int:
        """With ``wide_scripts``: the tokens a byte-per-token count of non-ASCII text adds to its o200k count."""
        if not self.wide_scripts:
            return 0
        wide = "".join(ch for ch in _prompt_text(request) if ord(ch) > 0x7F)
        return len(wide.encode()) - count_tokens(wide)

    def _anthropic_usage(self, request: DoubleRequest, output: int, hidden: int, tier: str) -> dict[str, Any]:
        segments = _anthropic_segments(request.body)
        total = _A_BASE_OVERHEAD + sum(s.tokens for s in segments) + self._wide(request)
        read, write_5m, write_1h = self._anthropic_cache_split(str(request.model), segments)
        usage: dict[str, Any] = {
            "input_tokens": total - read - write_5m - write_1h,
            "output_tokens": output,
            "cache_creation_input_tokens": write_5m + write_1h,
            "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h},
            "service_tier": tier,
        }
        if hidden:
            usage["output_tokens_details"] = {"thinking_tokens": hidden}
        return usage

    def _anthropic_cache_split(self, model: str, segments: list[_Segment]) -> tuple[int, int, int]:
        breakpoints = [i for i, s in enumerate(segments) if s.cache_ttl is not None]
        if not breakpoints:
            return 0, 0, 0
        digest = hashlib.sha256(model.encode())
        hashes: list[bytes] = []
        cumulative: list[int] = []
        running = 0
        for segment in segments[: breakpoints[-1] + 1]:
            digest.update(segment.key.encode())
            hashes.append(digest.copy().digest())
            running += segment.tokens
            cumulative.append(running)
        candidates = {j for bp in breakpoints for j in range(max(0, bp - _A_CACHE_LOOKBACK_BLOCKS), bp + 1)}
        write = {"5m": 0, "1h": 0}
        with self._lock:
            hit = max((j for j in candidates if hashes[j] in self._anthropic_cache), default=-1)
            read = cumulative[hit] if hit >= 0 else 0
            previous = read
            minimum = self._min_cacheable(model)
            for bp in breakpoints:
                if bp <= hit or cumulative[bp] < minimum:
                    continue
                write[segments[bp].cache_ttl or "5m"] += cumulative[bp] - previous
                previous = cumulative[bp]
                if self.realistic_cache and threading.get_ident() in self._answering:  # readable once answered
                    self._pending_cache.setdefault(threading.get_ident(), []).append(hashes[bp])
                else:
                    self._anthropic_cache.add(hashes[bp])
        return read, write["5m"], write["1h"]

    def _min_cacheable(self, model: str) -> int:
        if self.min_cacheable_tokens is not None:
            return self.min_cacheable_tokens
        if not self.realistic_cache:
            return 0
        known = [(p, n) for p, n in ANTHROPIC_MIN_CACHEABLE if model.startswith(p)]
        return max(known, key=lambda k: len(k[0]))[1] if known else 1024

    def _openai_chat(self, request: DoubleRequest, arg: str) -> _Answer:
        _require(request, "model", "messages")
        reply = self._respond(request)
        if reply.status >= 400:
            return self._error("openai", reply.status, reply.text, code=reply.code)
        completion = self._openai_completion_body(request, reply)
        if reply.body is not None:
            return _Answer(200, completion, raw=reply.body)
        if request.stream:
            options = request.body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return _Answer(200, completion, raw=_openai_sse(completion, include_usage), content_type=_SSE)
        return _Answer(200, completion)

    def _openai_completion_body(self, request: DoubleRequest, reply: Reply) -> dict[str, Any]:
        body = request.body
        hidden = reply.hidden_tokens
        structured = request._output_format()
        tool_choice = body.get("tool_choice")
        named = request.forced_tool if isinstance(tool_choice, dict) else None
        target = request.forced_tool
        if target is None and reply.data is not None and request.tools and structured is None and tool_choice != "none":
            target = request._tool_name(request.tools[0])
        want_structured = reply.data is not None or (reply.text is None and (structured or target))
        text = reply.text
        if text is None and not want_structured:
            text = default_text(request)
        finish = "stop"
        visible = 0
        tool_calls: list[dict[str, Any]] | None = None
        if want_structured and target is None:
            data = reply.data if reply.data is not None else example_from_schema(structured)
            text = json.dumps(data)
        if text is not None:
            budget = (request.max_tokens or 1 << 30) - hidden
            tokens = count_tokens(text)
            if tokens > budget:
                text, tokens, finish = _truncate_to_tokens(text, budget), max(budget, 0), "length"
            visible += tokens
        if want_structured and target is not None:
            data = reply.data if reply.data is not None else example_from_schema(request.tool_schema(target))
            arguments = json.dumps(data)
            tokens, budget = count_tokens(arguments), (request.max_tokens or 1 << 30) - hidden - visible
            cut = tokens > budget
            if cut:  # the arguments end where max tokens did, as the API cuts them, with finish_reason "length"
                arguments, tokens = _truncate_to_tokens(arguments, budget), max(budget, 0)
            tool_calls = [
                {
                    "id": self._new_id("call_"),
                    "type": "function",
                    "function": {"name": target, "arguments": arguments},
                }
            ]
            visible += tokens
            # OpenAI reports "stop" when tool_choice names a function, "tool_calls" otherwise.
            finish = "length" if cut else ("stop" if named else "tool_calls")
        if reply.stop_reason:
            finish = _OPENAI_FINISH.get(reply.stop_reason, reply.stop_reason)
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        if tool_calls:
            message["tool_calls"] = tool_calls
        count = body.get("n") if isinstance(body.get("n"), int) and body["n"] > 1 else 1
        completion: dict[str, Any] = {
            "id": self._new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or request.model or "unknown",
            "choices": [
                {"index": i, "message": message, "finish_reason": finish, "logprobs": None} for i in range(count)
            ],
            "service_tier": "default",
            "system_fingerprint": "fp_double",
        }
        if isinstance(reply.usage, dict):
            completion["usage"] = reply.usage
        elif reply.usage is None:
            completion["usage"] = self._openai_usage(request, (max(visible, 1) + hidden) * count, hidden * count)
        return completion

    def _openai_usage(self, request: DoubleRequest, completion: int, reasoning: int) -> dict[str, Any]:
        tokens = _openai_prompt_tokens(request.body)
        prompt = len(tokens) + _O_REPLY_PRIMING
        cached = 0
        if len(tokens) >= _O_CACHE_MIN:
            packed = array("I", tokens).tobytes()
            digest = hashlib.sha256()
            prefixes: list[tuple[int, bytes]] = []
            for end in range(_O_CACHE_STEP, len(tokens) + 1, _O_CACHE_STEP):
                digest.update(packed[(end - _O_CACHE_STEP) * 4 : end * 4])
                if end >= _O_CACHE_MIN:
                    prefixes.append((end, digest.copy().digest()))
            key = (str(request.model), str(request.body.get("prompt_cache_key") or ""))
            with self._lock:
                seen = self._openai_cache.setdefault(key, set())
                cached = max((end for end, h in prefixes if h in seen), default=0)
                seen.update(h for _, h in prefixes)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    # -- models --------------------------------------------------------------------------------

    def _listed(self, provider: Provider) -> list[str]:
        return [m for m in self.served.get(provider, []) if m not in self.retired]

    def _anthropic_models(self, request: DoubleRequest, arg: str) -> _Answer:
        data = [_anthropic_model(m) for m in self._listed("anthropic")]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return _Answer(200, {"data": data, "has_more": False, "first_id": first, "last_id": last})

    def _anthropic_model_get(self, request: DoubleRequest, arg: str) -> _Answer:
        request.model = arg
        self._check_model(request)
        return _Answer(200, _anthropic_model(arg))

    def _openai_models(self, request: DoubleRequest, arg: str) -> _Answer:
        return _Answer(200, {"object": "list", "data": [_openai_model(m) for m in self._listed("openai")]})

    def _openai_model_get(self, request: DoubleRequest, arg: str) -> _Answer:
        request.model = arg
        self._check_model(request)
        return _Answer(200, _openai_model(arg))

    # -- Anthropic Message Batches -------------------------------------------------------------

    def _anthropic_batch_create(self, request: DoubleRequest, arg: str) -> _Answer:
        items = request.body.get("requests")
        if not isinstance(items, list) or not items:
            raise _HttpError(400, "requests: must be a non-empty list")
        parsed: list[tuple[str, Any]] = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
                raise _HttpError(400, "requests: each item needs a custom_id and params")
            parsed.append((item["custom_id"], item.get("params")))
        if len({c for c, _ in parsed}) != len(parsed):
            raise _HttpError(400, "requests: custom_id values must be unique within a batch")
        batch = self._register_batch("anthropic", "msgbatch_", parsed, request.headers)
        self._maybe_finish(batch)
        return _Answer(200, self._anthropic_batch_view(batch))

    def _anthropic_batch_get(self, request: DoubleRequest, arg: str) -> _Answer:
        batch = self._poll(arg, "anthropic")
        return _Answer(200, self._anthropic_batch_view(batch))

    def _anthropic_batch_list(self, request: DoubleRequest, arg: str) -> _Answer:
        batches = self._listed_batches("anthropic")
        data = [self._anthropic_batch_view(b) for b in reversed(batches)]
        return _Answer(
            200,
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            },
        )

    def _anthropic_batch_cancel(self, request: DoubleRequest, arg: str) -> _Answer:
        batch = self._get_batch(arg, "anthropic")
        with self._lock:
            if batch.state == "in_progress":
                batch.state, batch.cancel_at = "canceling", time.time()
        return _Answer(200, self._anthropic_batch_view(batch))

    def _anthropic_batch_delete(self, request: DoubleRequest, arg: str) -> _Answer:
        batch = self._get_batch(arg, "anthropic")
        if batch.state != "ended":
            raise _HttpError(400, "Only ended batches can be deleted.")
        with self._lock:
            self._batches.pop(arg, None)
        return _Answer(200, {"id": arg, "type": "message_batch_deleted"})

    def _anthropic_batch_results(self, request: DoubleRequest, arg: str) -> _Answer:
        batch = self._get_batch(arg, "anthropic")
        if batch.state != "ended":
            raise _HttpError(400, f"Message Batch {arg} has not yet ended processing.")
        return _Answer(200, raw=batch.results, content_type="application/binary")

    def _anthropic_batch_view(self, batch: _Batch) -> dict[str, Any]:
        ended = batch.state == "ended"
        counts = batch.counts if ended else {"processing": len(batch.items)}
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else ("canceling" if batch.cancel_at else "in_progress"),
            "request_counts": {
                "processing": counts.get("processing", 0),
                "succeeded": counts.get("succeeded", 0),
                "errored": counts.get("errored", 0),
                "canceled": counts.get("canceled", 0),
                "expired": counts.get("expired", 0),
            },
            "created_at": _rfc3339(batch.created_at),
            "expires_at": _rfc3339(batch.created_at + 86400),
            "ended_at": _rfc3339(batch.ended_at) if batch.ended_at else None,
            "cancel_initiated_at": _rfc3339(batch.cancel_at) if batch.cancel_at else None,
            "archived_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch.id}/results" if ended else None,
        }

    def _anthropic_batch_item(self, batch: _Batch, custom_id: str, params: Any) -> tuple[str, dict[str, Any]]:
        item = self._batch_request(batch, "anthropic", "/v1/messages", "message", custom_id, params)
        try:
            _require(item, "model", "messages", "max_tokens")
            reply = self._respond(item)
        except _HttpError as err:
            return "errored", self._anthropic_errored(item, err.status, err.message)
        if reply.status >= 400:
            return "errored", self._anthropic_errored(item, reply.status, reply.text)
        message = self._anthropic_message_body(item, reply, "batch")
        item.status, item.response = 200, message
        return "succeeded", {"type": "succeeded", "message": message}

    @staticmethod
    def _anthropic_errored(item: DoubleRequest, status: int, message: str | None) -> dict[str, Any]:
        body = _error_body("anthropic", status, message)
        if body["error"]["type"] not in _ANTHROPIC_BATCH_ERROR_TYPES:
            body["error"]["type"] = "invalid_request_error" if status < 500 else "api_error"
        item.status, item.response = status, body
        return {"type": "errored", "error": body}

    # -- OpenAI Files and Batches --------------------------------------------------------------

    def _openai_file_upload(self, request: DoubleRequest, arg: str) -> _Answer:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise _HttpError(400, "Expected multipart/form-data.")
        fields = _parse_multipart(content_type, request.raw)
        if "file" not in fields:
            raise _HttpError(400, "Missing required parameter: 'file'.")
        purpose = fields.get("purpose", (None, b""))[1].decode() or "user_data"
        filename, data = fields["file"]
        record = self._store_file(data, filename or "upload.jsonl", purpose)
        return _Answer(200, _file_view(record))

    def _openai_file_list(self, request: DoubleRequest, arg: str) -> _Answer:
        with self._lock:
            files = list(self._files.values())
        return _Answer(200, {"object": "list", "data": [_file_view(f) for f in files], "has_more": False})

    def _openai_file_get(self, request: DoubleRequest, arg: str) -> _Answer:
        return _Answer(200, _file_view(self._get_file(arg)))

    def _openai_file_delete(self, request: DoubleRequest, arg: str) -> _Answer:
        self._get_file(arg)
        with self._lock:
            self._files.pop(arg, None)
        return _Answer(200, {"id": arg, "object": "file", "deleted": True})

    def _openai_file_content(self, request: DoubleRequest, arg: str) -> _Answer:
        return _Answer(200, raw=self._get_file(arg).data, content_type="application/octet-stream")

    def _store_file(self, data: bytes, filename: str, purpose: str) -> _File:
        record = _File(self._new_id("file-"), data, filename, purpose, int(time.time()))
        with self._lock:
            self._files[record.id] = record
        return record

    def _get_file(self, file_id: str) -> _File:
        with self._lock:
            record = self._files.get(file_id)
        if record is None:
            raise _HttpError(404, f"No such File object: {file_id}")
        return record

    def _openai_batch_create(self, request: DoubleRequest, arg: str) -> _Answer:
        _require(request, "input_file_id", "endpoint", "completion_window")
        endpoint = str(request.body["endpoint"])
        if endpoint != "/v1/chat/completions":
            raise _HttpError(400, f"The provider double only batches /v1/chat/completions, not {endpoint}.")
        source = self._get_file(str(request.body["input_file_id"]))
        items: list[tuple[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for number, line in enumerate(source.data.decode("utf-8", "replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                errors.append(_batch_line_error("invalid_json_line", "Line is not valid JSON.", number))
                continue
            if not isinstance(entry, dict) or not isinstance(entry.get("custom_id"), str):
                errors.append(_batch_line_error("missing_required_parameter", "custom_id is required.", number))
                continue
            if entry.get("url") != endpoint:
                errors.append(_batch_line_error("invalid_url", f"url must be {endpoint}.", number))
                continue
            items.append((entry["custom_id"], entry.get("body")))
        if len({c for c, _ in items}) != len(items):
            errors.append(_batch_line_error("duplicate_custom_id", "custom_id values must be unique.", None))
        batch = self._register_batch("openai", "batch_", items, request.headers)
        batch.endpoint, batch.input_file_id = endpoint, source.id
        batch.metadata = request.body.get("metadata")
        batch.errors = errors
        self._maybe_finish(batch)
        return _Answer(200, self._openai_batch_view(batch))

    def _openai_batch_get(self, request: DoubleRequest, arg: str) -> _Answer:
        return _Answer(200, self._openai_batch_view(self._poll(arg, "openai")))

    def _openai_batch_list(self, request: DoubleRequest, arg: str) -> _Answer:
        batches = self._listed_batches("openai")
        data = [self._openai_batch_view(b) for b in reversed(batches)]
        return _Answer(
            200,
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
            },
        )

    def _openai_batch_cancel(self, request: DoubleRequest, arg: str) -> _Answer:
        batch = self._get_batch(arg, "openai")
        with self._lock:
            if batch.state == "in_progress":
                batch.state, batch.cancel_at = "canceling", time.time()
        return _Answer(200, self._openai_batch_view(batch))

    def _openai_batch_view(self, batch: _Batch) -> dict[str, Any]:
        ended = batch.state == "ended"
        if ended:
            status = batch.outcome
        elif batch.cancel_at:
            status = "cancelling"
        else:
            status = "in_progress" if batch.polls else "validating"
        created = int(batch.created_at)
        ended_at = int(batch.ended_at) if batch.ended_at else None
        model = next((p.get("model") for _, p in batch.items if isinstance(p, dict)), None)
        total = len(batch.items)
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "model": model,
            "errors": {"object": "list", "data": batch.errors} if batch.outcome == "failed" else None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": created,
            "in_progress_at": created if batch.polls or ended else None,
            "expires_at": created + 86400,
            "finalizing_at": ended_at if batch.outcome == "completed" else None,
            "completed_at": ended_at if batch.outcome == "completed" else None,
            "failed_at": ended_at if batch.outcome == "failed" else None,
            "expired_at": ended_at if batch.outcome == "expired" else None,
            "cancelling_at": int(batch.cancel_at) if batch.cancel_at else None,
            "cancelled_at": ended_at if batch.outcome == "cancelled" else None,
            "request_counts": {
                "total": total if batch.outcome != "failed" else 0,
                "completed": batch.counts.get("completed", 0),
                "failed": batch.counts.get("failed", 0),
            },
            "usage": batch.usage,
            "metadata": batch.metadata,
        }

    def _openai_batch_item(self, batch: _Batch, custom_id: str, params: Any) -> tuple[bool, dict[str, Any]]:
        item = self._batch_request(batch, "openai", "/v1/chat/completions", "chat", custom_id, params)
        line_id = self._new_id("batch_req_")
        try:
            _require(item, "model", "messages")
            reply = self._respond(item)
            status, message = reply.status, reply.text
        except _HttpError as err:
            reply, status, message = Reply(), err.status, err.message
        if status >= 400:
            error = _error_body("openai", status, message, reply.code)
            item.status, item.response = status, error
            response = {"status_code": status, "request_id": self._new_id("req_"), "body": error}
            return False, {"id": line_id, "custom_id": custom_id, "response": response, "error": None}
        completion = self._openai_completion_body(item, reply)
        item.status, item.response = 200, completion
        response = {"status_code": 200, "request_id": self._new_id("req_"), "body": completion}
        return True, {"id": line_id, "custom_id": custom_id, "response": response, "error": None}

    # -- batch machinery -----------------------------------------------------------------------

    def _register_batch(
        self, provider: Provider, prefix: str, items: list[tuple[str, Any]], headers: dict[str, str]
    ) -> _Batch:
        with self._lock:
            expire = self._expire_batches > 0
            if expire:
                self._expire_batches -= 1
            batch = _Batch(provider, self._new_id(prefix), time.time(), items, headers, expire)
            batch.unlisted, self._list_lag = self._list_lag, 0
            self._batches[batch.id] = batch
        return batch

    def _listed_batches(self, provider: Provider) -> list[_Batch]:
        """The provider's batches, oldest first, that a list answer shows now (`lag_batch_list`)."""
        shown = []
        with self._lock:
            for batch in self._batches.values():
                if batch.provider != provider:
                    continue
                if batch.unlisted > 0:
                    batch.unlisted -= 1
                    continue
                shown.append(batch)
        return shown

    def _get_batch(self, batch_id: str, provider: Provider) -> _Batch:
        with self._lock:
            batch = self._batches.get(batch_id)
        if batch is None or batch.provider != provider:
            raise _HttpError(404, f"No batch with id {batch_id}")
        return batch

    def _poll(self, batch_id: str, provider: Provider) -> _Batch:
        batch = self._get_batch(batch_id, provider)
        with self._lock:
            batch.polls += 1
        self._maybe_finish(batch)
        return batch

    def _maybe_finish(self, batch: _Batch) -> None:
        with self._lock:
            due = batch.polls >= self.batch_polls_until_done or batch.state == "canceling"
            if batch.state not in ("in_progress", "canceling") or not due:
                return
            canceled = batch.state == "canceling"
            batch.state = "finishing"
        if batch.provider == "anthropic":
            self._finish_anthropic(batch, canceled)
        else:
            self._finish_openai(batch, canceled)
        with self._lock:
            batch.ended_at = time.time()
            batch.state = "ended"

    def _scripted_failure(self, custom_id: str) -> BatchFailKind | None:
        with self._lock:
            for rule in self._batch_fail_rules:
                if custom_id not in rule.used and rule.match(custom_id):
                    rule.used.add(custom_id)
                    return rule.kind
        return None

    def _batch_request(
        self, batch: _Batch, provider: Provider, path: str, kind: str, custom_id: str, params: Any
    ) -> DoubleRequest:
        item = DoubleRequest(
            provider=provider,
            method="POST",
            path=path,
            headers=dict(batch.headers),
            json=params,
            raw=json.dumps(params).encode(),
            kind=kind,
            model=params.get("model") if isinstance(params, dict) else None,
            in_batch=True,
            custom_id=custom_id,
            batch_id=batch.id,
        )
        item.text = _prompt_text(item)
        with self._lock:
            self.batch_items.append(item)
        return item

    def _finish_anthropic(self, batch: _Batch, canceled: bool) -> None:
        counts = {"succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        lines: list[bytes] = []
        for custom_id, params in batch.items:
            if canceled:
                outcome, result = "canceled", {"type": "canceled"}
            elif batch.expire:
                outcome, result = "expired", {"type": "expired"}
            else:
                scripted = self._scripted_failure(custom_id)
                if scripted == "errored":
                    body = _error_body("anthropic", 500, "Scripted batch item failure.")
                    outcome, result = "errored", {"type": "errored", "error": body}
                elif scripted is not None:
                    outcome, result = scripted, {"type": scripted}
                else:
                    outcome, result = self._anthropic_batch_item(batch, custom_id, params)
            counts[outcome] += 1
            lines.append(json.dumps({"custom_id": custom_id, "result": result}).encode())
        batch.counts = counts
        batch.results = b"\n".join(lines) + b"\n"

    def _finish_openai(self, batch: _Batch, canceled: bool) -> None:
        if batch.errors:
            batch.outcome = "failed"
            return
        outputs: list[bytes] = []
        errors: list[bytes] = []
        usage = {"input": 0, "cached": 0, "output": 0, "reasoning": 0}
        for custom_id, params in batch.items:
            scripted = None if canceled or batch.expire else self._scripted_failure(custom_id)
            if canceled or batch.expire or scripted in ("expired", "canceled"):
                code, text = (
                    ("batch_cancelled", "This request was cancelled before it was executed.")
                    if canceled or scripted == "canceled"
                    else (
                        "batch_expired",
                        "This request could not be executed before the completion window expired.",
                    )
                )
                line = {"id": self._new_id("batch_req_"), "custom_id": custom_id, "response": None}
                line["error"] = {"code": code, "message": text}
                errors.append(json.dumps(line).encode())
                continue
            if scripted == "errored":
                error = _error_body("openai", 500, "Scripted batch item failure.")
                response = {"status_code": 500, "request_id": self._new_id("req_"), "body": error}
                line = {
                    "id": self._new_id("batch_req_"),
                    "custom_id": custom_id,
                    "response": response,
                    "error": None,
                }
                errors.append(json.dumps(line).encode())
                continue
            ok, line = self._openai_batch_item(batch, custom_id, params)
            (outputs if ok else errors).append(json.dumps(line).encode())
            block = line["response"]["body"].get("usage") if ok else None
            if isinstance(block, dict):
                usage["input"] += int(block.get("prompt_tokens", 0))
                usage["output"] += int(block.get("completion_tokens", 0))
                usage["cached"] += int((block.get("prompt_tokens_details") or {}).get("cached_tokens", 0))
                usage["reasoning"] += int((block.get("completion_tokens_details") or {}).get("reasoning_tokens", 0))
        batch.outcome = "cancelled" if canceled else ("expired" if batch.expire else "completed")
        batch.counts = {"completed": len(outputs), "failed": len(errors)}
        if outputs:
            batch.output_file_id = self._store_file(
                b"\n".join(outputs) + b"\n", f"{batch.id}_output.jsonl", "batch_output"
            ).id
        if errors:
            batch.error_file_id = self._store_file(
                b"\n".join(errors) + b"\n", f"{batch.id}_error.jsonl", "batch_output"
            ).id
        batch.usage = {
            "input_tokens": usage["input"],
            "input_tokens_details": {"cached_tokens": usage["cached"]},
            "output_tokens": usage["output"],
            "output_tokens_details": {"reasoning_tokens": usage["reasoning"]},
            "total_tokens": usage["input"] + usage["output"],
        }


class _HttpError(PicklableError, Exception):
    def __init__(self, status: int, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry = retry


def _require(request: DoubleRequest, *names: str) -> None:
    missing = [n for n in names if request.body.get(n) in (None, "", [])]
    if missing:
        raise _HttpError(400, f"{missing[0]}: Field required")


def _prompt_text(request: DoubleRequest) -> str:
    parts = [_content_text(m.get("content")) for m in request.messages]
    if request.provider == "anthropic":
        parts.insert(0, _content_text(request.body.get("system")))
    return "\n".join(p for p in parts if p)


def _error_body(provider: Provider, status: int, message: str | None, code: str | None = None) -> dict[str, Any]:
    text = message or _DEFAULT_MESSAGES.get(status, f"Error {status}.")
    if provider == "anthropic":
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": text}}
    kind, default = _OPENAI_ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": text, "type": kind, "param": None, "code": code or default}}


def _pieces(text: str, count: int = 3) -> list[str]:
    size = max(1, math.ceil(len(text) / count))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _sse_event(name: str, payload: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n"


def _anthropic_sse(message: dict[str, Any]) -> bytes:
    """A finished Message replayed as Anthropic's streaming events."""
    usage = message.get("usage")
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    if isinstance(usage, dict):
        start["usage"] = {**usage, "output_tokens": 1}
        start["usage"].pop("output_tokens_details", None)
    events = [_sse_event("message_start", {"message": start})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"])]
            opening: dict[str, Any] = {"type": "text", "text": ""}
        elif kind == "thinking":
            deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"])]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
            opening = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in _pieces(json.dumps(block["input"]))]
            opening = {**block, "input": {}}
        events.append(_sse_event("content_block_start", {"index": index, "content_block": opening}))
        events.extend(_sse_event("content_block_delta", {"index": index, "delta": d}) for d in deltas)
        events.append(_sse_event("content_block_stop", {"index": index}))
    delta: dict[str, Any] = {"delta": {"stop_reason": message["stop_reason"], "stop_sequence": None}}
    if isinstance(usage, dict):
        keys = ("output_tokens", "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        delta["usage"] = {k: usage[k] for k in (*keys, "output_tokens_details") if k in usage}
    events.append(_sse_event("message_delta", delta))
    events.append(_sse_event("message_stop", {}))
    return "".join(events).encode()


def _openai_sse(completion: dict[str, Any], include_usage: bool) -> bytes:
    """A finished ChatCompletion replayed as ``chat.completion.chunk`` events."""
    base = {k: completion[k] for k in ("id", "created", "model", "service_tier", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    if include_usage:
        base["usage"] = None
    chunks: list[dict[str, Any]] = []

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> None:
        choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        chunks.append({**base, "choices": [choice]})

    for choice in completion["choices"]:
        index, message = choice["index"], choice["message"]
        chunk(index, {"role": "assistant", "content": "" if message["content"] is not None else None})
        for piece in _pieces(message["content"] or ""):
            chunk(index, {"content": piece})
        for position, call in enumerate(message.get("tool_calls") or []):
            opening = {
                **call,
                "index": position,
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            chunk(index, {"tool_calls": [opening]})
            for piece in _pieces(call["function"]["arguments"]):
                chunk(index, {"tool_calls": [{"index": position, "function": {"arguments": piece}}]})
        chunk(index, {}, choice["finish_reason"])
    if include_usage and "usage" in completion:
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    lines = [f"data: {json.dumps(c)}\n\n" for c in chunks]
    return ("".join(lines) + "data: [DONE]\n\n").encode()


def _batch_line_error(code: str, message: str, line: int | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def _file_view(record: _File) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": len(record.data),
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "expires_at": record.created_at + 30 * 86400 if record.purpose.startswith("batch") else None,
        "status_details": None,
    }


def _anthropic_model(model_id: str) -> dict[str, Any]:
    return {
        "id": model_id,
        "type": "model",
        "display_name": model_id.replace("-", " ").title(),
        "created_at": "2025-01-01T00:00:00Z",
        "lifecycle": "active",
    }


def _openai_model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 1_700_000_000, "owned_by": "provider-double"}


def main(argv: Iterable[str] | None = None) -> None:
    """Serve a ProviderDouble with default replies until interrupted; prints its URL first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--batch-polls", type=int, default=1)
    args = parser.parse_args(list(argv) if argv is not None else None)
    double = ProviderDouble(batch_polls_until_done=args.batch_polls, host=args.host, port=args.port).start()
    print(double.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        double.stop()


if __name__ == "__main__":
    main()
