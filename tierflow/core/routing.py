"""The routing table: complexity -> tier -> `provider:model`, with overrides."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    value: float = 1.0
    """The request's value (0.5-5, `value_of`): its quality target, and its priority in shared budgets."""

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
    if tier_name is None:
        tier_name, rule = rules_tier(config, phase=phase, complexity=complexity)
    return route_to_tier(config, phase=phase, complexity=complexity, tier=tier_name, rule=rule)


def rules_tier(config: Config, *, phase: str, complexity: str) -> tuple[str, str]:
    """The tier the config's rules give a call, and the rule: the phase's `[routing.phases]` tier, else the
    routing table's tier for its complexity."""
    if phase in config.settings.routing.phases:
        source = config.sources.get(f"routing.phases.{phase}", "config")
        return config.settings.routing.phases[phase], f"routing.phases.{phase} ({source})"
    source = config.sources.get(f"routing.{complexity}") or config.sources.get("routing", "default")
    return config.settings.routing[complexity], f"routing.{complexity} ({source})"  # type: ignore[index]


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


def escalations(config: Config, tier: str) -> list[str]:
    """The dearer tiers an answer that fails its checks on `tier` escalates to, in order, up to `[routing] ceiling`
    (the `high` complexity's tier when unset); none when `tier` is at or above it."""
    order = list(config.tier_order)
    ceiling = config.settings.routing.ceiling or config.settings.routing["high"]
    if tier not in order or ceiling not in order or order.index(ceiling) <= order.index(tier):
        return []
    return order[order.index(tier) + 1 : order.index(ceiling) + 1]


def run_tiers(config: Config, overrides: Mapping[str, str] | None = None) -> list[str]:
    """The tiers the routing rules can send a run's calls to: `--tier` overrides, `[routing.phases]`, the routing
    table by complexity, and (with `escalate`) the tiers above them to the ceiling. A note's own pin
    (`tierflow_tier`) is not foreseen: it is read as the run reaches that note."""
    overrides = overrides or {}
    routing = config.settings.routing
    if "*" in overrides:
        starts = [overrides["*"], *overrides.values()]
    else:
        phases = [t for phase, t in routing.phases.items() if phase not in overrides]
        starts = [*overrides.values(), *phases, *(routing[c] for c in COMPLEXITIES if c in routing)]
    reached = list(dict.fromkeys(starts))
    if routing.escalate:
        reached += [t for start in list(reached) for t in escalations(config, start)]
    return list(dict.fromkeys(reached))


# Per-request routing and value (issue 22). The router itself lives in tierflow.learn.request_router, which
# installs itself here (`use_request_router`): the core never imports learn.

VALUE_KEY = "tierflow_value"
"""A note (or an assignment's brief) may set its value: `tierflow_value: 5`."""
VALUE_MIN, VALUE_MAX = 0.5, 5.0


def value_of(config: Config, *, flow: str, phase: str, front_matter: Mapping[str, Any] | None = None) -> float:
    """A request's value: the note's `tierflow_value`, else `[routing.value_by]` for `flow.phase`, the phase or
    the flow, else `[routing] value` (the project's, 1 by default); clamped to 0.5-5."""
    raw: Any = (front_matter or {}).get(VALUE_KEY)
    values = config.settings.routing.value_by
    if raw is None:
        raw = next((values[k] for k in (f"{flow}.{phase}", phase, flow) if k in values), None)
    try:
        value = float(raw) if raw is not None else config.settings.routing.value
    except (TypeError, ValueError):
        value = config.settings.routing.value
    return min(VALUE_MAX, max(VALUE_MIN, value))


def target_for(base: float, value: float) -> float:
    """The pass probability a request of this value must reach: the failure allowed shrinks by the value,
    `1 - (1 - base) / value` (base 0.9: value 0.5 -> 0.80, 1 -> 0.90, 2 -> 0.95, 5 -> 0.98)."""
    return 1 - (1 - base) / min(VALUE_MAX, max(VALUE_MIN, value))


RequestRouter = Callable[..., "tuple[str | None, str] | None"]
"""`(config, ledger, *, flow, phase, complexity, text, value, run_id) -> (tier, why)`: tier None (or no answer at
all) where it cannot tell, `why` then saying why not."""

COLD_START = "request: cold start"
"""Request mode's rule while no router is installed or fitted (`request: cold start, rules; routing.low ...`)."""

_request_router: list[RequestRouter] = []


def use_request_router(router: RequestRouter | None) -> None:
    """Install the per-request router that `[routing] mode = "request"` consults (None removes it)."""
    _request_router[:] = [router] if router is not None else []


REQUEST_ROUTER_MODULE = "tierflow.learn.request_router"
"""Imported by name when request mode needs a router and none is installed: it installs itself."""


def request_router() -> RequestRouter | None:
    if not _request_router:
        import importlib

        try:
            importlib.import_module(REQUEST_ROUTER_MODULE)
        except ImportError:  # scikit-learn missing: request mode falls back to phase evidence, then the rules
            return None
    return _request_router[0] if _request_router else None
