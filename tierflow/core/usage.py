"""The usage record of one model call, and its price."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from tierflow.core import clock

if TYPE_CHECKING:
    from tierflow.core.config import Price

log = logging.getLogger("tierflow")

TOKEN_KINDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
"""The disjoint token kinds a call is billed for: their sum is its total, wherever a total is computed."""


@dataclass(frozen=True)
class Usage:
    """Tokens of one call, in disjoint kinds: no token is counted in two fields.

    Read from the provider's own `usage` block. When a provider sends none, `known` is False and
    the counts are zero only as placeholders: reports show such calls as unknown, never as free.
    """

    input_tokens: int = 0
    """Prompt tokens that were neither read from nor written to a cache."""
    output_tokens: int = 0
    """Visible output tokens, excluding reasoning tokens."""
    cache_read_tokens: int = 0
    """Prompt tokens served from the provider's prompt cache."""
    cache_write_tokens: int = 0
    """Prompt tokens written to the provider's prompt cache (all TTLs)."""
    cache_write_1h_tokens: int = 0
    """Of `cache_write_tokens`, those written with a one-hour TTL (Anthropic); a breakdown, not extra."""
    reasoning_tokens: int = 0
    """Reasoning or thinking tokens, billed as output but not part of `output_tokens`."""
    known: bool = True
    """False when the provider returned no usage block, or one that cannot be right (`reported_usage`)."""

    @property
    def prompt_tokens(self) -> int:
        """All prompt tokens, cached or not."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        """Every token billed; the kinds are disjoint, so none is counted twice."""
        return sum(getattr(self, kind) for kind in TOKEN_KINDS)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self) if f.name != "known"},
            known=self.known and other.known,
        )

    def opentelemetry_attributes(self) -> dict[str, int]:
        """The OpenTelemetry GenAI semantic-convention names for these counts."""
        return {
            "gen_ai.usage.input_tokens": self.prompt_tokens,
            "gen_ai.usage.output_tokens": self.output_tokens + self.reasoning_tokens,
            "gen_ai.usage.cache_read.input_tokens": self.cache_read_tokens,
            "gen_ai.usage.cache_creation.input_tokens": self.cache_write_tokens,
            "gen_ai.usage.reasoning.output_tokens": self.reasoning_tokens,
        }


UNKNOWN_USAGE = Usage(known=False)


def reported_usage(provider: str, raw: Any, wire: Mapping[str, tuple[str, ...]]) -> Usage:
    """A provider's usage block as `Usage`, read as `wire` says: each kind is the first field named less the others
    (a dotted name reaches into a nested object); optional counts (cache, reasoning) missing or null are 0.

    Unknown usage when there is no block, or when it cannot be priced: the input or output count is missing, a
    count is not a non-negative integer, or a kind would fall below zero (more cached tokens than prompt tokens).
    Such a call is charged at its worst case, never at 0 or less, and a warning names the field.
    """
    if raw is None:
        return UNKNOWN_USAGE
    required = {wire["input_tokens"][0], wire["output_tokens"][0]}
    counts: dict[str, int] = {}
    for name in dict.fromkeys(name for names in wire.values() for name in names):
        value: Any = raw
        for part in name.split("."):
            value = getattr(value, part, None)
        if value is None and name not in required:
            value = 0
        if type(value) is not int or value < 0:
            return _unusable(provider, f"{name} is {'missing or null' if value is None else repr(value)}")
        counts[name] = value
    differences = [(whole, parts) for whole, *parts in wire.values()]
    if "cache_write_1h_tokens" in wire:  # a breakdown of the cache writes, so never more than all of them
        differences.append((wire["cache_write_tokens"][0], list(wire["cache_write_1h_tokens"])))
    for whole, parts in differences:
        subtracted = sum(counts[part] for part in parts)
        if subtracted > counts[whole]:
            return _unusable(provider, f"{' + '.join(parts)} ({subtracted}) is more than {whole} ({counts[whole]})")
    return Usage(
        **{kind: counts[whole] - sum(counts[part] for part in parts) for kind, (whole, *parts) in wire.items()}
    )


def _unusable(provider: str, why: str) -> Usage:
    log.warning(
        "%s: unusable usage block (%s): recorded as unknown usage (not zero), charged at its worst case", provider, why
    )
    return UNKNOWN_USAGE


PROVIDER_IDS = {"anthropic": "anthropic", "openai": "openai"}
"""Provider kinds whose models genai-prices knows; other kinds are free unless the config prices them."""


def price(
    usage: Usage,
    model: str,
    *,
    provider_kind: str,
    override: Price | None = None,
    batch_discount: float = 1.0,
) -> Decimal | None:
    """USD cost of `usage` on `model`, or None when no price is known.

    A tier's price override wins; otherwise genai-prices prices the models of the cloud providers,
    and models on local (`openai-compatible`) and `offline` providers cost 0.
    `batch_discount` multiplies the whole cost (0.5 for the providers' batch APIs).
    """
    if override is not None:
        cost = override.cost(usage)
    elif provider_kind in PROVIDER_IDS and _flat(model, PROVIDER_IDS[provider_kind], _today()):
        # A model priced per token, flat: its rates, looked up once, price the call exactly.
        cost = _by_rates(usage, _rates(model, PROVIDER_IDS[provider_kind], _today()))  # type: ignore[arg-type]
    elif provider_kind in PROVIDER_IDS:
        cost = _genai_price(usage, model, PROVIDER_IDS[provider_kind])
        if cost is None:
            return None
    else:
        return Decimal(0)
    return cost * Decimal(str(batch_discount))


def price_bound(
    usage: Usage,
    model: str,
    *,
    provider_kind: str,
    override: Price | None = None,
    batch_discount: float = 1.0,
) -> Decimal | None:
    """An upper bound on `price(usage, ...)` for the worst-case usage of a call not yet made (a budget estimate).

    A model priced flat per token is priced from its rates, looked up once per model: its worst case needs no
    second full price calculation. A model whose price has tiers (a long-context premium above a prompt size)
    is priced exactly, at the tier its worst-case prompt falls in: a price only grows with the tokens, so that
    is never below the call's exact price, and a small call is not estimated at the premium rate.
    """
    if override is not None or provider_kind not in PROVIDER_IDS:
        return price(usage, model, provider_kind=provider_kind, override=override, batch_discount=batch_discount)
    provider_id = PROVIDER_IDS[provider_kind]
    if not _flat(model, provider_id, _today()):
        return price(usage, model, provider_kind=provider_kind, batch_discount=batch_discount)
    rates = _rates(model, provider_id, _today())
    if rates is None:
        return None
    return _by_rates(usage, rates) * Decimal(str(batch_discount))


Rates = tuple[Decimal, Decimal, Decimal, Decimal, Decimal]
"""USD per token of cache read, cache write (5 m, 1 h), plain input and output."""


def _by_rates(usage: Usage, rates: Rates) -> Decimal:
    read, write_5m, write_1h, plain, out = rates
    return (
        plain * usage.input_tokens
        + out * (usage.output_tokens + usage.reasoning_tokens)
        + read * usage.cache_read_tokens
        + write_5m * (usage.cache_write_tokens - usage.cache_write_1h_tokens)
        + write_1h * usage.cache_write_1h_tokens
    )


def _today() -> date:
    """The day prices are looked up for: genai-prices dates its price changes; tierflow's clock says when."""
    return clock.now().date()


@lru_cache(maxsize=256)
def _flat(model: str, provider_id: str, day: date) -> bool:
    """Whether genai-prices prices `model` at the same rates for a small call as for a huge one (no tiers)."""
    return _knows(model, provider_id) and _rates(model, provider_id, day, 1_000) == _rates(model, provider_id, day)


@lru_cache(maxsize=512)
def _rates(model: str, provider_id: str, day: date, probe: int = 1_000_000) -> Rates | None:
    """The model's rates on `day` for calls of `probe` tokens of each kind (by default its dearest tier's)."""
    kinds = (
        Usage(cache_read_tokens=probe),
        Usage(cache_write_tokens=probe),
        Usage(cache_write_tokens=probe, cache_write_1h_tokens=probe),
        Usage(input_tokens=probe),
        Usage(input_tokens=probe, output_tokens=probe),  # output's rate when the prompt is in the dearest tier
    )
    prices = [_genai_price(kind, model, provider_id, day) for kind in kinds]
    if any(p is None for p in prices):
        return None
    read, write_5m, write_1h, plain, both = (p / probe for p in prices)  # type: ignore[operator]
    return read, write_5m, write_1h, plain, both - plain


def _genai_price(usage: Usage, model: str, provider_id: str, day: date | None = None) -> Decimal | None:
    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price

    # genai-prices counts cache reads and writes inside input_tokens, and reasoning inside output.
    kwargs = {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.output_tokens + usage.reasoning_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }
    if usage.cache_write_1h_tokens:
        kwargs["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
    if not _knows(model, provider_id):
        return None
    when = datetime.combine(day or _today(), time(12), tzinfo=UTC)
    return calc_price(GenaiUsage(**kwargs), model, provider_id=provider_id, genai_request_timestamp=when).total_price


@lru_cache(maxsize=256)
def _knows(model: str, provider_id: str) -> bool:
    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price

    try:
        calc_price(GenaiUsage(input_tokens=0, output_tokens=0), model, provider_id=provider_id)
    except LookupError:
        return False
    return True
