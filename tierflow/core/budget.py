"""Budgets: estimate a call's worst case, reserve it atomically, settle it to the actual cost.

A reservation is checked against every budget that applies to the call *inside the same ledger write
transaction* that records it, so parallel calls (threads or processes sharing a ledger) cannot all pass
the check before any spend is recorded. Settling records the call and closes the reservation in one
transaction. A call whose usage is unknown keeps its worst case charged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tierflow.core import clock
from tierflow.core.config import BudgetConfig, Config
from tierflow.core.errors import BudgetExceeded
from tierflow.core.ledger import CallRecord, Ledger, calls, now_iso, reservations
from tierflow.core.routing import Route
from tierflow.core.usage import TOKEN_KINDS, Usage, price_bound

ESTIMATE_MARGIN = 1.15
"""Headroom on offline token counts for providers whose tokenizer is not o200k."""
ESTIMATE_OVERHEAD = 32
"""Tokens the wire format adds around the text (roles, tool definitions)."""


@dataclass(frozen=True)
class Estimate:
    """The worst case of one call: every prompt token billed, every output token used."""

    prompt_tokens: int
    max_output_tokens: int
    usd: Decimal | None
    """None when the model's price is unknown."""

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.max_output_tokens


def estimate(
    config: Config, route: Route, prompt_tokens: int, cached_prefix_tokens: int = 0, *, batch: bool = False
) -> Estimate:
    """Price the worst case: cacheable prefix billed as a cache write (the dearest kind), full output."""
    tier = config.tier(route.tier)
    _, provider = config.provider_for(route.tier)
    usage = Usage(
        input_tokens=prompt_tokens - cached_prefix_tokens,
        cache_write_tokens=cached_prefix_tokens,
        output_tokens=route.max_output_tokens,
    )
    usd = price_bound(
        usage,
        route.model,
        provider_kind=provider.kind,
        override=tier.price,
        batch_discount=provider.batch_discount if batch else 1.0,
    )
    return Estimate(prompt_tokens=prompt_tokens, max_output_tokens=route.max_output_tokens, usd=usd)


def padded(tokens: int, *, exact: bool) -> int:
    """An offline count with headroom, or a provider's own count as is."""
    return tokens if exact else math.ceil(tokens * ESTIMATE_MARGIN) + ESTIMATE_OVERHEAD


@dataclass(frozen=True)
class BudgetState:
    name: str
    scope: str
    limit_usd: float | None
    limit_tokens: int | None
    spent_usd: float
    spent_tokens: int
    reserved_usd: float
    reserved_tokens: int
    policy: str

    @property
    def remaining_usd(self) -> float | None:
        if self.limit_usd is None:
            return None
        return self.limit_usd - self.spent_usd - self.reserved_usd

    @property
    def remaining_tokens(self) -> int | None:
        if self.limit_tokens is None:
            return None
        return self.limit_tokens - self.spent_tokens - self.reserved_tokens

    def fits(self, usd: float, tokens: int, *, settled: bool = False) -> bool:
        """Whether a call of this worst case fits; with `settled`, as if the calls in flight had cost nothing."""
        eps = 1e-12
        held_usd, held_tokens = (0.0, 0) if settled else (self.reserved_usd, self.reserved_tokens)
        if self.limit_usd is not None and self.spent_usd + held_usd + usd > self.limit_usd + eps:
            return False
        return not (self.limit_tokens is not None and self.spent_tokens + held_tokens + tokens > self.limit_tokens)

    def describe(self) -> str:
        parts = []
        if self.limit_usd is not None:
            parts.append(f"limit ${self.limit_usd:.4f}, spent ${self.spent_usd:.4f}, reserved ${self.reserved_usd:.4f}")
        if self.limit_tokens is not None:
            parts.append(
                f"limit {self.limit_tokens} tokens, spent {self.spent_tokens}, reserved {self.reserved_tokens}"
            )
        return f"budget {self.name!r} ({self.scope}): " + "; ".join(parts)


@dataclass(frozen=True)
class Reservation:
    id: int
    route: Route
    estimate: Estimate
    downgraded_from: str | None = None
    budget: str | None = None
    """The budget that forced a downgrade, if one did."""
    warnings: tuple[tuple[str, str], ...] = ()
    """(budget, description) for each `warn` budget this call goes over."""


class Budgets:
    """The budgets of one config, applied to one run."""

    def __init__(self, config: Config, ledger: Ledger, *, run_id: str, flow: str, max_wait_s: float = 600) -> None:
        self.config = config
        self.ledger = ledger
        self.run_id = run_id
        self.flow = flow
        self.tz = ZoneInfo(config.settings.vault.timezone)
        self.max_wait_s = max_wait_s

    def applicable(self, phase: str) -> list[tuple[str, BudgetConfig]]:
        return [
            (name, b)
            for name, b in self.config.settings.budgets.items()
            if (b.flow in (None, self.flow)) and (b.phase in (None, phase))
        ]

    def period_start(self, budget: BudgetConfig, now: datetime | None = None) -> str | None:
        """Start of the budget's calendar period in the vault's time zone, as a UTC ISO timestamp."""
        if budget.period == "run":
            return None
        local = (now or clock.now()).astimezone(self.tz)
        day = local.date()
        if budget.period == "week":
            day = day - timedelta(days=day.weekday())
        elif budget.period == "month":
            day = date(day.year, day.month, 1)
        start = datetime(day.year, day.month, day.day, tzinfo=self.tz)
        return start.astimezone(UTC).isoformat(timespec="microseconds")

    def scope(self, name: str, budget: BudgetConfig) -> str:
        parts = [f"per {budget.period}" if budget.period != "run" else "per run"]
        if budget.flow:
            parts.append(f"flow {budget.flow}")
        if budget.phase:
            parts.append(f"phase {budget.phase}")
        return ", ".join(parts)

    def state(self, conn: Connection, name: str, budget: BudgetConfig) -> BudgetState:
        spent_q = sa.select(
            sa.func.coalesce(sa.func.sum(calls.c.cost_usd), 0.0),
            sa.func.coalesce(
                sa.func.sum(sum((calls.c[kind] for kind in TOKEN_KINDS[1:]), calls.c[TOKEN_KINDS[0]])),
                0,
            ),
        )
        held_q = sa.select(
            sa.func.coalesce(sa.func.sum(reservations.c.usd), 0.0),
            sa.func.coalesce(sa.func.sum(reservations.c.tokens), 0),
        ).where(reservations.c.open.is_(True))
        kept_q = sa.select(
            sa.func.coalesce(sa.func.sum(reservations.c.usd), 0.0),
            sa.func.coalesce(sa.func.sum(reservations.c.tokens), 0),
        ).where(reservations.c.kept.is_(True))
        start = self.period_start(budget)
        if start is None:
            spent_q = spent_q.where(calls.c.run_id == self.run_id)
            held_q = held_q.where(reservations.c.run_id == self.run_id)
            kept_q = kept_q.where(reservations.c.run_id == self.run_id)
        else:
            spent_q = spent_q.where(calls.c.timestamp >= start)
            held_q = held_q.where(reservations.c.created >= start)
            kept_q = kept_q.where(reservations.c.created >= start)
        if budget.flow:
            spent_q = spent_q.where(calls.c.flow == budget.flow)
            held_q = held_q.where(reservations.c.flow == budget.flow)
            kept_q = kept_q.where(reservations.c.flow == budget.flow)
        if budget.phase:
            spent_q = spent_q.where(calls.c.phase == budget.phase)
            held_q = held_q.where(reservations.c.phase == budget.phase)
            kept_q = kept_q.where(reservations.c.phase == budget.phase)
        spent_usd, spent_tokens = conn.execute(spent_q).one()
        held_usd, held_tokens = conn.execute(held_q).one()
        kept_usd, kept_tokens = conn.execute(kept_q).one()
        # A call of unknown usage stays charged at its worst case: its reservation counts as spent.
        spent_usd, spent_tokens = spent_usd + kept_usd, spent_tokens + kept_tokens
        return BudgetState(
            name=name,
            scope=self.scope(name, budget),
            limit_usd=budget.usd,
            limit_tokens=budget.tokens,
            spent_usd=float(spent_usd),
            spent_tokens=int(spent_tokens),
            reserved_usd=float(held_usd),
            reserved_tokens=int(held_tokens),
            policy=budget.policy,
        )

    def states(self, phase: str | None = None) -> list[BudgetState]:
        """Every budget's state now (for reports)."""
        with self.ledger.transaction() as conn:
            return [
                self.state(conn, name, b)
                for name, b in self.config.settings.budgets.items()
                if phase is None or b.phase in (None, phase)
            ]

    def reserve(self, candidates: Sequence[tuple[Route, Estimate]], *, wait: bool = True) -> Reservation:
        """Reserve the first candidate that fits every applicable budget.

        `candidates` is the routed call followed by its cheaper downgrades. A candidate that would fit once
        the calls in flight settle waits for them (they usually settle far below their worst case). One
        that cannot fit even then moves on: budgets whose policy is `downgrade` let the next candidate be
        tried, `warn` lets the call through flagged, and `halt` stops with the budget named. Without `wait`
        (batch items, whose own reservations stay open until the batch ends) nothing waits.
        """
        deadline = time.monotonic() + self.max_wait_s
        delay = 0.01
        while True:
            with self.ledger.transaction() as conn:
                reservation = self.reserve_in(conn, candidates, wait=wait, expired=time.monotonic() >= deadline)
            if reservation is not None:
                return reservation
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def reserve_in(
        self,
        conn: Connection,
        candidates: Sequence[tuple[Route, Estimate]],
        *,
        wait: bool = True,
        expired: bool = False,
        claim: Callable[[Connection, Route], bool] | None = None,
    ) -> Reservation | None:
        """One try at `reserve`, inside the caller's write transaction: the reservation, or None to wait.

        None means the call would fit once the calls in flight settle (until `expired`), or that `claim` (which
        may take something else in the same transaction, such as a tier slot, for the chosen route) said no.
        """
        _lock(conn)
        states = [self.state(conn, name, b) for name, b in self.applicable(candidates[0][0].phase)]
        decision = _decide(candidates, states, wait=wait)
        if isinstance(decision, Reservation):
            if claim is not None and not claim(conn, decision.route):
                return None
            return self._insert(conn, decision)
        if decision is _WAIT and not expired:
            return None
        state, candidate, est = decision if decision is not _WAIT else _blocker(candidates, states)
        usd = float(est.usd) if est.usd is not None else 0.0
        raise BudgetExceeded(
            f"{state.describe()}; this {candidate.phase} call on tier {candidate.tier!r} needs "
            f"${usd:.4f} / {est.tokens} tokens at worst. Raise `budgets.{state.name}` in the "
            f'config, lower the tier\'s max_output_tokens, or set policy = "downgrade".',
            budget=state.name,
            scope=state.scope,
        )

    def _insert(self, conn: Connection, reservation: Reservation) -> Reservation:
        est = reservation.estimate
        reservation_id = conn.execute(
            reservations.insert().values(
                created=now_iso(),
                run_id=self.run_id,
                flow=self.flow,
                phase=reservation.route.phase,
                usd=float(est.usd) if est.usd is not None else 0.0,
                tokens=est.tokens,
                open=True,
            )
        ).inserted_primary_key[0]
        return replace(reservation, id=reservation_id)

    def settle(
        self,
        reservation_id: int,
        call: CallRecord,
        *,
        cache: Any = None,
        also: Callable[[Connection], None] | None = None,
    ) -> None:
        """Record the call, release its reservation and cache a passing answer, in one transaction (with
        `also`, such as giving back a tier slot)."""
        with self.ledger.transaction() as conn:
            if also is not None:
                also(conn)
            self.ledger.record(call, conn=conn)
            if cache is not None:
                self.ledger.cache_response(
                    cache.key,
                    cache.model,
                    cache.text,
                    cache.data,
                    request=cache.request.__dict__,
                    flow=call.flow,
                    phase=call.phase,
                    conn=conn,
                )
            conn.execute(
                reservations.update()
                .where(reservations.c.id == reservation_id)
                .values(open=False, kept=not call.usage.known)
            )

    def release(self, reservation_id: int, *, also: Callable[[Connection], None] | None = None) -> None:
        """Drop a reservation whose call failed before spending (with `also`, in the same transaction)."""
        with self.ledger.transaction() as conn:
            if also is not None:
                also(conn)
            conn.execute(reservations.update().where(reservations.c.id == reservation_id).values(open=False))


_WAIT = object()
"""Decision: the call would fit once the calls in flight settle."""


def _decide(
    candidates: Sequence[tuple[Route, Estimate]], states: list[BudgetState], *, wait: bool = True
) -> Reservation | object | tuple[BudgetState, Route, Estimate]:
    """Reserve a candidate, wait for calls in flight, or refuse (naming the budget)."""
    routed = candidates[0][0]
    forced_by: str | None = None
    for index, (candidate, est) in enumerate(candidates):
        usd = float(est.usd) if est.usd is not None else 0.0
        blocking = [s for s in states if not s.fits(usd, est.tokens)]
        hard = [s for s in blocking if s.policy != "warn"]
        if not hard:
            return Reservation(
                id=0,
                route=candidate,
                estimate=est,
                downgraded_from=routed.tier if index else None,
                budget=forced_by if index else None,
                warnings=tuple((s.name, s.describe()) for s in blocking),
            )
        if wait and all(s.fits(usd, est.tokens, settled=True) for s in hard):
            return _WAIT
        if all(s.policy == "downgrade" for s in hard) and index + 1 < len(candidates):
            forced_by = forced_by or hard[0].name
            continue
        return hard[0], candidate, est
    raise AssertionError("unreachable: candidates is never empty")


def _blocker(
    candidates: Sequence[tuple[Route, Estimate]], states: list[BudgetState]
) -> tuple[BudgetState, Route, Estimate]:
    """The budget a call waited on in vain."""
    candidate, est = candidates[0]
    usd = float(est.usd) if est.usd is not None else 0.0
    state = next(s for s in states if s.policy != "warn" and not s.fits(usd, est.tokens))
    return state, candidate, est


def _lock(conn: Connection) -> None:
    # SQLite already holds the write lock (BEGIN IMMEDIATE); PostgreSQL needs an explicit one.
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7263544501)")
