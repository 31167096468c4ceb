"""The routing table: complexity -> tier -> `provider:model`, with overrides."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tierflow.core.config import COMPLEXITIES, Config
from tierflow.core.errors import ConfigError

FRONT_MATTER_KEY = "tierflow_tier"
"""A note may pin its own tier: `tierflow_tier: deep`, or per phase `tierflow_tier: {synthesise: deep}`."""


@dataclass(frozen=True)
class Route:
    """Where one call goes, and which rule decided it."""

    phase: str
    complexity: str
    tier: str
    provider: str
    provider_kind: str
    model: str
    max_output_tokens: int
    rule: str
    """`override`, `front-matter:<note>`, or `routing.<complexity> (<config source>)`."""

    @property
    def model_ref(self) -> str:
        return f"{self.provider}:{self.model}"

    @property
    def tags(self) -> set[str]:
        return {
            f"phase:{self.phase}",
            f"complexity:{self.complexity}",
            f"tier:{self.tier}",
            f"model:{self.model_ref}",
        }


def parse_tier_overrides(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`["synthesise=standard"]` -> `{"synthesise": "standard"}`; a bare `standard` applies to every phase."""
    overrides: dict[str, str] = {}
    for item in items:
        phase, sep, tier = item.partition("=")
        if not sep:
            phase, tier = "*", item
        if not tier.strip():
            raise ConfigError(f"--tier {item!r}: write it as PHASE=TIER, for example synthesise=standard")
        overrides[phase.strip()] = tier.strip()
    return overrides


def route(
    config: Config,
    *,
    phase: str,
    complexity: str,
    overrides: Mapping[str, str] | None = None,
    front_matter: Mapping[str, Any] | None = None,
    note: str | None = None,
    learned: Mapping[tuple[str, str], tuple[str, str]] | None = None,
) -> Route:
    """Resolve a call: run/call override, then note front-matter, then learned routing (adaptive mode, where
    the evidence suffices), then the config's per-phase tier, then its routing table by complexity.

    `learned` maps (phase, complexity) to (tier, why): evidence about one complexity never routes another.
    A caller whose complexity the person chose (`tierflow ask --complexity`) passes no `learned` table.
    """
    if complexity not in COMPLEXITIES:
        raise ConfigError(f"unknown complexity {complexity!r}; use one of: {', '.join(COMPLEXITIES)}")
    overrides = overrides or {}
    tier_name: str | None = overrides.get(phase) or overrides.get("*")
    rule = "override"
    if tier_name is None and front_matter:
        pinned = front_matter.get(FRONT_MATTER_KEY)
        if isinstance(pinned, Mapping):
            pinned = pinned.get(phase)
        if isinstance(pinned, str) and pinned:
            tier_name = pinned
            rule = f"front-matter:{note or '?'}"
    if tier_name is None and learned and (phase, complexity) in learned:
        tier_name, rule = learned[(phase, complexity)]
    if tier_name is None and phase in config.settings.routing.phases:
        tier_name = config.settings.routing.phases[phase]
        rule = f"routing.phases.{phase} ({config.sources.get(f'routing.phases.{phase}', 'config')})"
    if tier_name is None:
        tier_name = config.settings.routing[complexity]  # type: ignore[index]
        source = config.sources.get(f"routing.{complexity}") or config.sources.get("routing", "default")
        rule = f"routing.{complexity} ({source})"
    return route_to_tier(config, phase=phase, complexity=complexity, tier=tier_name, rule=rule)


def route_to_tier(config: Config, *, phase: str, complexity: str, tier: str, rule: str) -> Route:
    """A Route for a named tier (used by overrides and by budget downgrades)."""
    tier_config = config.tier(tier)
    provider, provider_config = config.provider_for(tier)
    return Route(
        phase=phase,
        complexity=complexity,
        tier=tier,
        provider=provider,
        provider_kind=provider_config.kind,
        model=tier_config.model_id,
        max_output_tokens=tier_config.max_output_tokens,
        rule=rule,
    )
