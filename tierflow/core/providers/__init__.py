"""One provider protocol; one module per provider kind."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from tierflow.core.config import ProviderConfig
from tierflow.core.errors import ProviderAuthError
from tierflow.core.usage import Usage


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


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage
    model: str
    data: dict[str, Any] | None = None
    response_id: str | None = None
    stop_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchItemResult:
    """One request's outcome in a provider batch."""

    custom_id: str
    status: str
    """`succeeded`, `errored`, `expired` or `canceled`."""
    completion: Completion | None = None
    error: str = ""


class Provider(Protocol):
    """A model provider: one call in, text plus its provider-reported usage out."""

    name: str
    kind: str

    def complete(self, request: Request) -> Completion: ...

    def count_tokens(self, request: Request) -> int | None:
        """Prompt tokens by the provider's own counter, or None where it has none."""
        ...

    def submit_batch(self, requests: dict[str, Request]) -> str:
        """Submit requests (by custom id) to the provider's batch API; returns the batch id."""
        ...

    def batch_ended(self, batch_id: str) -> tuple[bool, str]:
        """Whether the batch has ended, and the provider's status word."""
        ...

    def batch_results(self, batch_id: str, requests: dict[str, Request]) -> list[BatchItemResult]:
        """Every item's outcome; items the provider lost are reported as expired."""
        ...


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
