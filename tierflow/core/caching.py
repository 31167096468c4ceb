"""Prompt caching: whether a shared prefix is long enough for the provider to cache at all.

A provider caches a prefix only from a model-dependent minimum length; below it, `cache_control` buys
nothing (Anthropic bills the prefix as plain input). The minimum comes from `[tiers.<name>]
min_cacheable_tokens`, else from `KNOWN_MINIMUMS` by model id prefix, else `DEFAULT_MINIMUM`.
"""

from __future__ import annotations

import json

from tierflow.core.config import Config
from tierflow.core.routing import Route
from tierflow.core.tokens import count_tokens

KNOWN_MINIMUMS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-5", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-opus-4", 1024),
    ("claude-sonnet-4", 1024),
    ("claude-3-7-sonnet", 1024),
    ("claude-3-5-haiku", 2048),
    ("claude-3-haiku", 2048),
    ("gpt-", 1024),
    ("o3", 1024),
    ("o4-mini", 1024),
)
"""(model id prefix, shortest cacheable prefix in tokens), from the providers' prompt-caching docs; the longest
matching prefix wins. Anthropic: 4,096 for Opus 4.6/4.5 and Haiku 4.5, 1,024 for Sonnet 4.x and Opus 4/4.1,
2,048 for Haiku 3.x. OpenAI caches prompts from 1,024 tokens."""
DEFAULT_MINIMUM = 1024


def min_cacheable_tokens(config: Config, routed: Route) -> int:
    """The shortest prefix `routed`'s model caches."""
    tier = config.settings.tiers.get(routed.tier)
    if tier is not None and tier.min_cacheable_tokens is not None:
        return tier.min_cacheable_tokens
    model = routed.model.lower()
    known = [(prefix, size) for prefix, size in KNOWN_MINIMUMS if model.startswith(prefix)]
    return max(known, key=lambda k: len(k[0]))[1] if known else DEFAULT_MINIMUM


def prefix_tokens(system: str, cache_prefix: str, schema: dict | None) -> int:
    """About how long the cached prefix is: Anthropic caches tools (the answer's schema), system and prefix."""
    return count_tokens(system) + count_tokens(cache_prefix) + (count_tokens(json.dumps(schema)) if schema else 0)


def worth_caching(config: Config, routed: Route, system: str, cache_prefix: str, schema: dict | None) -> bool:
    """Whether `cache_prefix` is long enough to be cached by `routed`'s model (free providers: never)."""
    if not cache_prefix or routed.provider_kind not in ("anthropic", "openai"):
        return False
    return prefix_tokens(system, cache_prefix, schema) >= min_cacheable_tokens(config, routed)
