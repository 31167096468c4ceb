"""`tierflow config check`: whether every configured model (and fallback) still exists and has a price."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import typer

from tierflow.cli.common import ConfigOpt, ProfileOpt, VaultOpt, fail, load, vault_dir

if TYPE_CHECKING:
    from tierflow.core.config import Config


@dataclass(frozen=True)
class ModelCheck:
    """One configured model: the tier naming it, whether it is the tier's model or a fallback, what is wrong."""

    tier: str
    role: str
    """`model`, or `fallback N`."""
    model: str
    problems: tuple[str, ...]


def check_models(config: Config) -> list[ModelCheck]:
    """Each configured model and fallback, checked against its provider's models list (asked once per
    provider) and against the prices tierflow knows (genai-prices, or the tier's `price` for its model)."""
    from tierflow.core.providers import make_provider, served_models
    from tierflow.core.usage import Usage, price

    named = [
        (tier_name, role, model)
        for tier_name, tier in config.settings.tiers.items()
        for role, model in [("model", tier.model)] + [(f"fallback {i}", f) for i, f in enumerate(tier.fallbacks, 1)]
    ]
    served: dict[str, set[str] | None] = {}
    for provider_name in dict.fromkeys(model.split(":", 1)[0] for _, _, model in named):
        served[provider_name] = served_models(make_provider(provider_name, config.settings.providers[provider_name]))
    checks = []
    for tier_name, role, model in named:
        provider_name, model_id = model.split(":", 1)
        kind = config.settings.providers[provider_name].kind
        override = config.tier(tier_name).price if role == "model" else None
        problems = []
        listed = served[provider_name]
        if listed is not None and model_id not in listed:
            problems.append(f"{provider_name} does not serve {model_id!r}")
        if price(Usage(input_tokens=1, output_tokens=1), model_id, provider_kind=kind, override=override) is None:
            fix = f"set [tiers.{tier_name}.price]" if role == "model" else "a fallback is priced by genai-prices only"
            problems.append(f"no price known ({fix})")
        checks.append(ModelCheck(tier_name, role, model, tuple(problems)))
    return checks


BUILT_IN_PHASES = ("collate", "synthesise", "draft", "ask")
"""The phases of tierflow's own flows and of `tierflow ask` (whose `--phase` may name others)."""


def budget_scope_warnings(config: Config) -> list[str]:
    """A line for each budget whose `flow` or `phase` is no flow or phase tierflow knows: a typo ("colate",
    "reading-note") makes a budget that never applies, silently. A user's own flow run from Python, or an ask's
    own `--phase`, may be meant: these are warnings, not errors."""
    import difflib

    from tierflow.core.registry import flow_names

    flows = [*flow_names(), "ask"]
    lines = []
    for name, budget in config.settings.budgets.items():
        for key, value, known in (("flow", budget.flow, flows), ("phase", budget.phase, BUILT_IN_PHASES)):
            if value is None or value in known:
                continue
            close = difflib.get_close_matches(value, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            lines.append(
                f"budgets.{name}: {key} {value!r} is none of tierflow's {key}s ({', '.join(known)}): {hint}"
                f"as written, the budget counts only calls whose {key} is exactly {value!r}."
            )
    return lines


def config_check(vault: VaultOpt = None, config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """Ask each configured provider once for the models it serves, and list every configured model or fallback
    that no longer exists or has no price. Exit code 1 when any does."""
    from rich.console import Console
    from rich.markup import escape

    from tierflow.core.errors import ProviderError

    cfg = load(vault_dir(vault), config, profile)
    try:
        checks = check_models(cfg)
    except ProviderError as exc:
        raise fail(f"could not list the models: {exc}") from None
    console = Console(soft_wrap=True, highlight=False)
    for line in budget_scope_warnings(cfg):
        console.print(f"[yellow]{escape(line)}[/]")
    bad = [c for c in checks if c.problems]
    for c in checks:
        verdict = "[red]" + escape("; ".join(c.problems)) + "[/]" if c.problems else "[green]ok[/]"
        console.print(f"tiers.{c.tier} {c.role}: {escape(c.model)}: {verdict}")
    if bad:
        console.print(
            f"{len(bad)} of {len(checks)} configured models need attention: set the tier's model to a current one, "
            "or name fallbacks = [...] for it."
        )
        raise typer.Exit(1)
    console.print(f"all {len(checks)} configured models exist and have a price.")
