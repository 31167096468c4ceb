"""Context windows: a prompt is counted against the routed model's window before anything is sent or spent.

The window comes from `[tiers.<name>] context_window`, else from `KNOWN_WINDOWS` by model id prefix. A model
tierflow does not know, with no window in the config, is not checked (its server will say). A provider's refusal of
one request as too long (a batch item's error: `refused`) is the same error, so a flow explains both alike.
"""

from __future__ import annotations

from tierflow.core.config import Config
from tierflow.core.errors import ContextWindowExceeded
from tierflow.core.routing import Route

KNOWN_WINDOWS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4", 200_000),
    ("claude-sonnet-4", 200_000),
    ("claude-haiku-4", 200_000),
    ("claude-3", 200_000),
    ("gpt-5", 400_000),
    ("gpt-4.1", 1_047_576),
    ("gpt-4o", 128_000),
    ("o3", 200_000),
    ("o4-mini", 200_000),
    ("llama3.1", 131_072),
    ("llama3.2", 131_072),
    ("llama3.3", 131_072),
    ("qwen2.5", 32_768),
    ("extractive-", 32_768),  # the offline model: as a small cloud model's, so big weeks are grouped offline too
)
"""(model id prefix, tokens of prompt plus answer), longest prefix first where two overlap."""


def context_window(config: Config, routed: Route) -> int | None:
    """The routed model's window: the tier's `context_window`, else the default for its model, else None."""
    tier = config.settings.tiers.get(routed.tier)
    if tier is not None and tier.context_window:
        return tier.context_window
    model = routed.model.lower()
    known = [(prefix, size) for prefix, size in KNOWN_WINDOWS if model.startswith(prefix)]
    return max(known, key=lambda k: len(k[0]))[1] if known else None


def prompt_room(config: Config, routed: Route) -> int | None:
    """The tokens a prompt may take on the routed model: its window less the answer allowance; None if unknown."""
    window = context_window(config, routed)
    return None if window is None else window - routed.max_output_tokens


def overflow(config: Config, routed: Route, prompt_tokens: int) -> str | None:
    """Why `prompt_tokens` plus the tier's answer allowance do not fit the window, or None when they do."""
    window = context_window(config, routed)
    if window is None or prompt_tokens + routed.max_output_tokens <= window:
        return None
    return (
        f"the {routed.phase} prompt is about {prompt_tokens:,} tokens; with {routed.max_output_tokens:,} for the "
        f"answer it exceeds the {window:,}-token context window of {routed.model_ref} (tier {routed.tier})"
    )


def check_fits(config: Config, routed: Route, prompt_tokens: int) -> None:
    """Raise before any spend when the prompt does not fit the routed model's context window."""
    problem = overflow(config, routed, prompt_tokens)
    if problem is not None:
        raise _exceeded(
            routed,
            f"{problem}; nothing was sent",
            "Select fewer notes (--since/--until), route the phase to a tier with a larger window "
            f"(--tier {routed.phase}=TIER), or set [tiers.{routed.tier}] context_window if this model's "
            "window is larger.",
        )


def refused(routed: Route, detail: str) -> ContextWindowExceeded:
    """The provider's refusal of one request as too long for the model (`detail`, its own words), as the error
    `check_fits` raises: tierflow's count put the prompt inside the window, the provider's did not."""
    error = _exceeded(
        routed,
        f"the provider refused the {routed.phase} prompt as too long for the context window of {routed.model_ref} "
        f"(tier {routed.tier}), saying {detail.strip().rstrip('.')!r}; nothing was billed",
        f"Select fewer notes (--since/--until), or route the phase to a tier with a larger window "
        f"(--tier {routed.phase}=TIER).",
    )
    error.by_provider = True
    return error


def _exceeded(routed: Route, cause: str, hint: str) -> ContextWindowExceeded:
    error = ContextWindowExceeded(routed.provider, routed.model, cause, hint=hint)
    error.phase, error.tier = routed.phase, routed.tier
    return error
