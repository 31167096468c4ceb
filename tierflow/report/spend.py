"""Spend, aggregated once: every per-phase, per-tier or per-model total that tierflow shows comes from `spend_by`.

The rows are ledger rows, or, for a plan, estimated rows of the same shape (worst-case usage and cost). The run
report, the Prefect artifacts, `tierflow spend` and `tierflow plan` all read the same `Spend` records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

import sqlalchemy as sa

from tierflow.core.calls import NOT_USED
from tierflow.core.config import Config
from tierflow.core.ledger import Ledger, calls, usage_of
from tierflow.core.routing import route
from tierflow.core.telemetry import attributes_of
from tierflow.core.usage import TOKEN_KINDS, Usage, price

PHASE_ORDER = ("collate", "synthesise", "draft")


@dataclass
class Spend:
    """The totals of a group of calls."""

    key: str
    tiers: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    calls: int = 0
    cached: int = 0
    """Rows of answers from tierflow's answer cache (no tokens billed), `unused` ones included."""
    unused: int = 0
    """Cached answers judged and not used (`route_rule` `not used: ...`): a check added since failed them, and the
    call was made afresh. Neither billed nor a cache hit."""
    batch: int = 0
    unknown_usage: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    """The priced calls' cost; `unpriced` counts the others, which are never taken as free."""
    unpriced: int = 0
    all_deep_usd: float | None = 0.0
    """What the group would cost on the `high` complexity's tier, where the rows carry it (plans do)."""
    value_units: float = 0.0
    """The billed calls, each weighted by its value (0.5-5; 1 for rows from before values were recorded)."""

    @property
    def usd_per_value_unit(self) -> float | None:
        """USD per value-weighted billed call: cost / Σ(value of each billed call); None if unpriced or empty."""
        return None if self.unpriced or not self.value_units else self.cost_usd / self.value_units

    @property
    def tokens(self) -> int:
        return self.usage.total_tokens

    @property
    def hits(self) -> int:
        """Calls answered from tierflow's cache: its answers that were used."""
        return self.cached - self.unused

    @property
    def billed(self) -> int:
        """Calls sent to a provider: every call but the answers from tierflow's cache."""
        return self.calls - self.cached

    @property
    def cost_or_none(self) -> float | None:
        """The cost, or None when any call in the group has no known price."""
        return None if self.unpriced else self.cost_usd

    def add(self, row: dict[str, Any]) -> None:
        if row["tier"] not in self.tiers:
            self.tiers.append(row["tier"])
        model = f"{row['provider']}:{row['model']}"
        if model not in self.models:
            self.models.append(model)
        self.calls += 1
        self.cached += bool(row.get("cached_result"))
        self.unused += _unused(row)
        self.value_units += 0.0 if row.get("cached_result") else float(row.get("value") or 1)
        self.batch += bool(row.get("batch"))
        self.unknown_usage += not row.get("usage_known", True)
        self.usage = self.usage + usage_of(row)
        if row["cost_usd"] is None:
            self.unpriced += 1
        else:
            self.cost_usd += row["cost_usd"]
        if "all_deep_usd" in row:
            deep = row["all_deep_usd"]
            self.all_deep_usd = None if deep is None or self.all_deep_usd is None else self.all_deep_usd + deep

    def add_part(self, part: Any) -> None:
        """Add a group of rows the database added up (`ledger_spend`): one tier and model, with their sums."""
        if part.tier not in self.tiers:
            self.tiers.append(part.tier)
        model = f"{part.provider}:{part.model}"
        if model not in self.models:
            self.models.append(model)
        self.calls += part.calls
        self.cached += part.cached_result or 0
        self.unused += part.unused or 0
        self.batch += part.batch or 0
        self.unknown_usage += part.unknown_usage or 0
        self.usage = self.usage + Usage(
            **{k: int(getattr(part, k) or 0) for k in (*TOKEN_KINDS, "cache_write_1h_tokens")},
            known=not part.unknown_usage,
        )
        self.unpriced += part.unpriced or 0
        self.cost_usd += float(part.cost_usd or 0.0)
        self.value_units += float(part.value_units or 0.0)

    def as_row(self, by: str) -> dict[str, Any]:
        """The group as a flat record, as `tierflow spend --by` prints it; by value, with the cost per unit."""
        row = {
            by: self.key,
            "calls": self.billed,
            "cache_hits": self.hits,
            **{k: getattr(self.usage, k) for k in TOKEN_KINDS},
            "cost_usd": self.cost_usd,
            "unpriced_calls": self.unpriced,
        }
        if by == "value":
            row["value_weighted_calls"] = self.value_units
            row[PER_VALUE] = self.usd_per_value_unit
        return row

    def table_row(self, key: str = "phase", *, compact: bool = False) -> dict[str, Any]:
        """One row of a spend table (run report, Prefect artifact, CLI summary): identifiers, then USD first.

        `calls` are the billed calls and `cache hits` the answers from tierflow's cache, as `tierflow spend` shows
        them (`as_row`); the cache hits come last, so a table that stops at `saved` still shows the money.
        `compact` (the Prefect artifact, whose table does not wrap): model names without their provider, tokens
        as `12.3k`, and no tier or model list on the totals row, so the money stays in view at 1,440 px.
        """
        cost = money(self.cost_usd) + (f" (+{self.unpriced} unpriced)" if self.unpriced else "")
        all_deep, saved = savings_text(self.cost_usd, self.all_deep_usd)
        models = [m.split(":", 1)[-1] for m in self.models] if compact else self.models
        listed = not (compact and self.key == "total")
        return {
            key: self.key,
            "tier": ", ".join(self.tiers) if listed else "",
            "model": ", ".join(models) if listed else "",
            "calls": self.billed,
            "tokens": compact_count(self.tokens) if compact else self.tokens,
            "USD": cost,
            "all-deep USD": all_deep,
            "saved": saved or "unknown",
            "cache hits": self.hits,
        }


def total(rows: Sequence[dict[str, Any]]) -> Spend:
    """All the rows as one group (the totals row), through the same aggregation as every other group."""
    return (spend_by(rows, TOTAL) or [Spend("total")])[0]


PER_VALUE = "usd_per_value_weighted_call"
"""The cost per unit of value: a group's USD over its billed calls each weighted by its value (Σ value)."""

TOTAL = "*"
"""`spend_by(rows, TOTAL)`: one group of every row, keyed `total`."""


PERIODS = ("day", "week", "month")
"""The groups that are calendar periods: days, ISO weeks (from Monday, as a budget's `week`) and months, each in the
time zone the caller gives (the vault's `[vault] timezone`), so they start where the budgets' periods do."""


def local_day(timestamp: str, tz: tzinfo | None) -> date:
    """The day a ledger timestamp (UTC ISO) falls on in `tz` (None: UTC)."""
    instant = datetime.fromisoformat(timestamp)
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(tz or UTC).date()


def period_name(by: str, day: date) -> str:
    """The name of the `day`, `week` or `month` holding `day`: `2026-03-29`, `2026-W13`, `2026-03`."""
    if by == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    return day.isoformat()[:7] if by == "month" else day.isoformat()


def _key(by: str, tz: tzinfo | None = None) -> Callable[[dict[str, Any]], str]:
    if by in PERIODS:
        return lambda row: period_name(by, local_day(row["timestamp"], tz))
    if by == TOTAL:
        return lambda row: "total"
    if by == "value":  # the value class; rows from before values were recorded count at the default, 1
        return lambda row: f"value {row.get('value') or 1:g}"
    return lambda row: str(row.get(by) or "")


def spend_by(rows: Sequence[dict[str, Any]], by: str, tz: tzinfo | None = None) -> list[Spend]:
    """Totals per value of `by` (a ledger column, or `day`, `week`, `month` in `tz`, None: UTC); phases come in
    workflow order, the rest sorted."""
    key = _key(by, tz)
    groups: dict[str, Spend] = {}
    for row in rows:
        k = key(row)
        groups.setdefault(k, Spend(k)).add(row)
    if by == "phase":
        order = {name: i for i, name in enumerate(PHASE_ORDER)}
        return sorted(groups.values(), key=lambda s: (order.get(s.key, 99), s.key))
    return [groups[k] for k in sorted(groups)]


def summarise(rows: Sequence[dict[str, Any]], by: str, tz: tzinfo | None = None) -> list[dict[str, Any]]:
    """`spend_by` as flat records, sorted by group."""
    return [s.as_row(by) for s in sorted(spend_by(rows, by, tz), key=lambda s: s.key)]


_SUMMED = ("cached_result", "batch", *TOKEN_KINDS, "cache_write_1h_tokens")


def ledger_spend(
    ledger: Ledger,
    by: str,
    *,
    since: str | None = None,
    run_id: str | None = None,
    project: str | None = None,
    flow: str | None = None,
    tz: tzinfo | None = None,
) -> list[Spend]:
    """`spend_by` over the ledger's rows, added up by the database (GROUP BY): the same groups and totals, in the
    same order, without loading the rows. Weeks and months are added up per day and the days put into them here;
    a day is the UTC day, moved by a day for the calls that fall on the next (or the previous) day in `tz`.
    """
    filters = {"since": since, "run_id": run_id, "project": project, "flow": flow}
    if by in PERIODS and tz is not None and tz is not UTC:
        stretches = ledger.read(lambda conn: _stretches(conn, tz, since))
        shifted = [(shift, where) for shift, where in _shifted(stretches) if where is not None]
        queries = [(shift, spend_query(by, **filters, where=where)) for shift, where in shifted]
    else:
        queries = [(0, spend_query(by, **filters))]
    found = [(shift, part) for shift, q in queries for part in ledger.read(lambda conn, q=q: conn.execute(q).all())]
    parts = sorted(found, key=lambda p: p[1].first)
    if by in PERIODS:
        name: Callable[[Any], str] = lambda k, by=by: period_name(by, date.fromisoformat(k))  # noqa: E731
    elif by == "value":  # the value class, as `_key` names it; rows from before values were recorded count as 1
        name = lambda k: f"value {k or 1:g}"  # noqa: E731
    else:
        name = lambda k: str(k or "")  # noqa: E731
    groups: dict[str, Spend] = {}
    for shift, part in parts:
        key = part.key if not shift else (date.fromisoformat(part.key) + timedelta(days=shift)).isoformat()
        k = name(key)
        groups.setdefault(k, Spend(k)).add_part(part)
    if by == "phase":
        order = {name: i for i, name in enumerate(PHASE_ORDER)}
        return sorted(groups.values(), key=lambda s: (order.get(s.key, 99), s.key))
    return [groups[k] for k in sorted(groups)]


def _stretches(conn: Any, tz: tzinfo, since: str | None) -> list[tuple[str | None, str | None, int]]:
    """The spans of the ledger's calls (from `since`) over which `tz` keeps one UTC offset: (first instant or None,
    next span's first instant or None, the offset in seconds), instants as the ledger writes them."""
    query = sa.select(sa.func.min(calls.c.timestamp), sa.func.max(calls.c.timestamp))
    if since:
        query = query.where(calls.c.timestamp >= since)
    first, last = conn.execute(query).one()
    if first is None:
        return []

    def offset(at: datetime) -> int:
        return int((at.astimezone(tz).utcoffset() or timedelta()).total_seconds())

    def instant(text: str) -> datetime:
        at = datetime.fromisoformat(text)
        return at if at.tzinfo else at.replace(tzinfo=UTC)

    at, end = instant(first).replace(hour=0, minute=0, second=0, microsecond=0), instant(last)
    spans: list[tuple[str | None, str | None, int]] = []
    begun: str | None = None
    current = offset(at)
    while at <= end:
        following = at + timedelta(days=1)
        if offset(following) != current:  # a change within this day: find its second
            low, high = at, following
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                low, high = (middle, high) if offset(middle) == current else (low, middle)
            changed = high.replace(microsecond=0).isoformat(timespec="microseconds")
            spans.append((begun, changed, current))
            begun, current = changed, offset(following)
        at = following
    spans.append((begun, None, current))
    return spans


def _shifted(stretches: Sequence[tuple[str | None, str | None, int]]) -> list[tuple[int, Any]]:
    """WHERE clauses picking the calls whose day in the zone is their UTC day, the next one (+1) and the previous one
    (-1), by the time of day the UTC day turns over in the zone in each stretch of one offset."""
    time = sa.func.substr(calls.c.timestamp, sa.literal_column("12"), sa.literal_column("8"))
    moved: dict[int, list[Any]] = {1: [], -1: []}
    for begun, ends, offset in stretches:
        if not offset:
            continue
        turn = (86400 - offset) if offset > 0 else -offset  # UTC time of day at which the zone's day turns
        clock = f"{turn // 3600:02d}:{turn % 3600 // 60:02d}:{turn % 60:02d}"
        bounds = [calls.c.timestamp >= begun] if begun else []
        bounds += [calls.c.timestamp < ends] if ends else []
        moved[1 if offset > 0 else -1].append(sa.and_(*bounds, time >= clock if offset > 0 else time < clock))
    later, earlier = (sa.or_(*moved[1]) if moved[1] else None), (sa.or_(*moved[-1]) if moved[-1] else None)
    either = [w for w in (later, earlier) if w is not None]
    return [(0, sa.not_(sa.or_(*either)) if either else sa.true()), (1, later), (-1, earlier)]


def ledger_total(ledger: Ledger, **filters: Any) -> Spend:
    """Every call matching `filters` (`ledger_spend`'s) as one group, added up by the database."""
    return (ledger_spend(ledger, TOTAL, **filters) or [Spend("total")])[0]


def spend_query(
    by: str,
    *,
    since: str | None = None,
    run_id: str | None = None,
    project: str | None = None,
    flow: str | None = None,
    where: Any = None,
) -> sa.Select:
    """`ledger_spend`'s GROUP BY statement. A day is `substr(timestamp, 1, 10)` with literal bounds, the expression
    of the ledger's `ix_calls_day_model` index, so that `--by day|week|month` reads the index in order instead of
    sorting. `where`: a further condition (the calls of one day shift in a time zone).
    """
    if by in PERIODS:
        key: Any = sa.func.substr(calls.c.timestamp, sa.literal_column("1"), sa.literal_column("10"))
    elif by == TOTAL:
        key = sa.literal("total")
    else:
        key = calls.c[by]
    unpriced = sa.case((calls.c.cost_usd.is_(None), 1), else_=0)
    unused = sa.case((sa.and_(calls.c.cached_result.is_(True), calls.c.route_rule.startswith(NOT_USED)), 1), else_=0)
    unknown = sa.case((calls.c.usage_known.is_(False), 1), else_=0)
    billed = sa.case((calls.c.cached_result.is_(True), 0.0), else_=sa.func.coalesce(calls.c.value, 1.0))
    query = sa.select(
        key.label("key"),
        calls.c.tier,
        calls.c.provider,
        calls.c.model,
        sa.func.min(calls.c.id).label("first"),
        sa.func.count().label("calls"),
        *[sa.func.sum(sa.cast(calls.c[c], sa.Integer)).label(c) for c in _SUMMED],
        sa.func.sum(unknown).label("unknown_usage"),
        sa.func.sum(unpriced).label("unpriced"),
        sa.func.sum(unused).label("unused"),
        sa.func.sum(calls.c.cost_usd).label("cost_usd"),
        sa.func.sum(billed).label("value_units"),
    ).group_by(key, calls.c.tier, calls.c.provider, calls.c.model)
    if where is not None:
        query = query.where(where)
    for column, value in (("timestamp", since), ("run_id", run_id), ("project", project), ("flow", flow)):
        if value:
            query = query.where(calls.c[column] >= value if column == "timestamp" else calls.c[column] == value)
    return query


def _local(timestamp: str, tz: tzinfo | None) -> str:
    """A ledger timestamp as `YYYY-MM-DD HH:MM:SS` in `tz` (None: as written, UTC)."""
    if tz is None:
        return timestamp[:19].replace("T", " ")
    instant = datetime.fromisoformat(timestamp)
    return (instant if instant.tzinfo else instant.replace(tzinfo=UTC)).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def _cached_mark(row: dict[str, Any]) -> str:
    """How the listing marks a row of a cached answer: `(cached)`, or `(cached, not used)` for one that a check
    added since failed (the call was made afresh)."""
    if not row["cached_result"]:
        return ""
    return " (cached, not used)" if _unused(row) else " (cached)"


def _unused(row: dict[str, Any]) -> bool:
    """A row of a cached answer judged and not used (`route_rule` `not used: ...`); `spend_query` counts the same."""
    return bool(row.get("cached_result")) and str(row.get("route_rule") or "").startswith(NOT_USED)


def ledger_summary(ledger: Ledger, by: str, **filters: Any) -> list[dict[str, Any]]:
    """`summarise` over the ledger, added up by the database (`tierflow spend --by`); `tz=` the zone of its days,
    weeks and months."""
    return [s.as_row(by) for s in sorted(ledger_spend(ledger, by, **filters), key=lambda s: s.key)]


def phase_spend(rows: Sequence[dict[str, Any]]) -> list[Spend]:
    """Per-phase totals of a run's ledger rows, in workflow order."""
    return spend_by(rows, "phase")


def row_tokens(row: dict[str, Any]) -> int:
    """All tokens of one ledger row."""
    return usage_of(row).total_tokens


def with_all_deep(config: Config, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows, each with `all_deep_usd`: its usage priced on the `high` complexity's tier (None: no price).

    Answers from tierflow's cache and calls of unknown usage count as nothing, as they do in the actual cost.
    """
    deep = route(config, phase="*", complexity="high")
    tier = config.tier(deep.tier)
    discount = config.provider_for(deep.tier)[1].batch_discount  # the deep tier's provider's, as configured
    priced = []
    for r in rows:
        if r["cached_result"] or not r["usage_known"]:
            cost: float | None = 0.0
        else:
            found = price(
                usage_of(r), deep.model, provider_kind=deep.provider_kind, override=tier.price,
                batch_discount=discount if r["batch"] else 1.0,
            )  # fmt: skip
            cost = None if found is None else float(found)
        priced.append({**r, "all_deep_usd": cost})
    return priced


def all_deep_cost(config: Config, rows: Sequence[dict[str, Any]]) -> float | None:
    """What the run's model calls would have cost had every one gone to the `high` complexity's tier."""
    return total(with_all_deep(config, rows)).all_deep_usd


def compact_count(n: int) -> str:
    """A count as a table shows it at a glance: `842`, `12.3k`, `4.56M`."""
    if n < 1000:
        return str(n)
    if n < 999_950:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.2f}M"


def money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"


def savings_text(actual: float, all_deep: float | None) -> tuple[str, str | None]:
    if all_deep is None:
        return "unknown", None
    if all_deep <= 0:
        return money(all_deep), "n/a (no priced calls)"
    return money(all_deep), f"{(1 - actual / all_deep) * 100:.0f}%"


BAR_WIDTH = 20


def bar(share: float, width: int = BAR_WIDTH) -> str:
    """A bar of block glyphs for a share between 0 and 1, in eighths: readable in Prefect and in Obsidian."""
    eighths = round(max(0.0, min(1.0, share)) * width * 8)
    full, part = divmod(eighths, 8)
    return "█" * full + ("" if not part else " ▏▎▍▌▋▊▉"[part])


def share_rows(groups: Sequence[Spend], key: str = "phase") -> list[dict[str, str]]:
    """Each group's share of the spend (of the tokens, when nothing was paid) as a bar, for a Markdown table."""
    paid = sum(g.cost_usd for g in groups) > 0
    values = [g.cost_usd if paid else float(g.tokens) for g in groups]
    whole = sum(values)
    return [
        {
            key: g.key,
            "bar": bar(v / whole) if whole else "",
            "share": f"{v / whole * 100:.0f}%" if whole else "0%",
            "amount": money(v) if paid else f"{int(v)} tokens",
        }
        for g, v in zip(groups, values, strict=True)
    ]


def otel_record(row: dict[str, Any]) -> dict[str, Any]:
    """One ledger row as a JSON Lines record, with the attribute names of tierflow's OpenTelemetry spans."""
    return {"timestamp": row["timestamp"], "name": f"chat {row['model']}", "attributes": attributes_of(row)}


SPEND_OPTIONAL = (
    *("reason", "cache r/w", "flow", "out", "in", "when"),  # the listing's
    *("reasoning", "cache write", "cache read", "cache hits", "output", "input", "calls"),  # the totals'
)
"""The columns of `spend_table` that a narrow terminal may leave out (`console.show`), first named first: the
identifiers (phase, tier, model, any group) and the money stay."""


def spend_table(
    rows: Sequence[dict[str, Any]],
    group: str | None,
    *,
    groups: Sequence[Spend] | None = None,
    of: int | None = None,
    tz: tzinfo | None = None,
) -> Any:
    """A rich Table of calls, or of totals per group (`groups`, if already added up, else from `rows`).

    `of`: how many calls matched, when `rows` are only the newest of them. `tz`: the zone the calls' times are
    shown in (the vault's, where `--since` and `--by day` count days; None: UTC)."""
    from rich.table import Table

    if group is None:
        zone = f" · times in {tz}" if tz is not None and str(tz) != "UTC" else ""
        if of is not None and of > len(rows):
            table = Table(
                title=f"Ledger: the newest {len(rows):,} of {of:,} calls{zone}",
                caption="--last N lists more (0: every call); --by day, phase, project ... totals them",
            )
        else:
            table = Table(title=f"Ledger: {len(rows)} calls{zone}")
        for col in ("when", "flow", "phase", "tier", "model", "in", "out", "cache r/w", "reason", "cost"):
            # Names and money on one line each, whatever the terminal's width (`console.show`).
            table.add_column(
                col,
                justify="right" if col in ("in", "out", "reason", "cost") else "left",
                no_wrap=col in ("phase", "tier", "model", "cost"),
            )
        for r in rows:
            table.add_row(
                _local(r["timestamp"], tz),
                r["flow"] or "",
                r["phase"] or "",
                r["tier"] or "",
                f"{r['provider']}:{r['model']}" + _cached_mark(r),
                str(r["input_tokens"]) if r["usage_known"] else "?",
                str(r["output_tokens"]) if r["usage_known"] else "?",
                f"{r['cache_read_tokens']}/{r['cache_write_tokens']}",
                str(r["reasoning_tokens"]),
                money(r["cost_usd"]) + (" batch" if r["batch"] else ""),
            )
        return table
    table = Table(title=f"Spend by {group}")
    table.add_column(group, no_wrap=True)
    table.add_column("calls", justify="right")
    table.add_column("cache hits", justify="right")
    for k in TOKEN_KINDS:
        table.add_column(k.replace("_tokens", "").replace("_", " "), justify="right")
    table.add_column("cost", justify="right", no_wrap=True)
    if group == "value":
        table.add_column("USD per value-weighted call", justify="right")
    for s in sorted(spend_by(rows, group) if groups is None else groups, key=lambda s: s.key):
        cost = money(s.cost_usd) + (f" (+{s.unpriced} unpriced)" if s.unpriced else "")
        per = [money(s.usd_per_value_unit)] if group == "value" else []
        table.add_row(s.key, str(s.billed), str(s.hits), *[str(getattr(s.usage, k)) for k in TOKEN_KINDS], cost, *per)
    return table
