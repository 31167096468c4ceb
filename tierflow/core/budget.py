"""Budgets: estimate a call's worst case, reserve it atomically, settle it to the actual cost.

A reservation is checked against every budget that applies to the call *inside the same ledger write
transaction* that records it, so parallel calls (threads or processes sharing a ledger) cannot all pass
the check before any spend is recorded. Settling records the call and closes the reservation in one
transaction. A call whose usage is unknown keeps its worst case charged.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tierflow.core import clock
from tierflow.core.config import BudgetConfig, Config
from tierflow.core.errors import BudgetExceeded, LedgerError
from tierflow.core.ledger import (
    SUBMITTED,
    CallRecord,
    Ledger,
    Scope,
    Spent,
    batch_items,
    calls,
    count_spend,
    database_seconds,
    lock_budgets,
    lost_call,
    now_iso,
    period_end,
    period_start,
    reservations,
    spent_from_calls,
    spent_totals,
    track,
    tracked_scopes,
)
from tierflow.core.routing import Route
from tierflow.core.usage import UNKNOWN_USAGE, Usage, price_bound

log = logging.getLogger("tierflow")

HOST = socket.gethostname()
"""This machine's name, recorded as the holder of its processes' reservations."""

ESTIMATE_MARGIN = 1.15
"""Headroom on offline token counts for providers whose tokenizer is not o200k."""
ESTIMATE_OVERHEAD = 32
"""Tokens the wire format adds around the text (roles, tool definitions)."""
BATCH_LEASE_S = 25 * 3600.0
"""A batch request's reservation lease: the providers' 24-hour batch window and an hour's grace. Nobody
renews it (a `--no-wait` run exits); `tierflow resume` settles it, or it lapses after the window."""


@dataclass(frozen=True)
class Estimate:
    """The worst case of one call: every prompt token billed, every output token used."""

    prompt_tokens: int
    max_output_tokens: int
    usd: Decimal | None
    """None when the model's price is unknown."""
    batch: bool = False
    """A provider batch request: its reservation is held for the batch window (`BATCH_LEASE_S`)."""
    output_usd: Decimal | None = None
    """Of `usd`, what the full output allowance costs (so a smaller allowance can be priced)."""

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.max_output_tokens

    def clamped(self, output_tokens: int) -> Estimate:
        """The same call with a smaller output allowance."""
        if self.usd is None or self.output_usd is None or not self.max_output_tokens:
            return replace(self, max_output_tokens=output_tokens)
        saved = self.output_usd * (Decimal(self.max_output_tokens - output_tokens) / Decimal(self.max_output_tokens))
        return replace(self, max_output_tokens=output_tokens, usd=self.usd - saved, output_usd=self.output_usd - saved)


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
    discount = provider.batch_discount if batch else 1.0
    usd = price_bound(usage, route.model, provider_kind=provider.kind, override=tier.price, batch_discount=discount)
    prompt_usd = price_bound(
        replace(usage, output_tokens=0), route.model, provider_kind=provider.kind, override=tier.price,
        batch_discount=discount,
    )  # fmt: skip
    output_usd = None if usd is None or prompt_usd is None else usd - prompt_usd
    return Estimate(
        prompt_tokens=prompt_tokens, max_output_tokens=route.max_output_tokens, usd=usd, batch=batch,
        output_usd=output_usd,
    )  # fmt: skip


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
    tier: str | None = None
    """Only calls on this tier count, and only they are checked against it."""
    unpriced: str = "refuse"
    fallback_usd_per_mtok: float = 0.0
    min_output_tokens: int = 256
    clamp: bool = True

    def applies_to(self, route: Route) -> bool:
        return self.tier in (None, route.tier)

    def usd_of(self, est: Estimate) -> float | None:
        """What a call's worst case costs against this budget; None: an unpriced model it refuses."""
        if est.usd is not None:
            return float(est.usd)
        if self.limit_usd is None:
            return 0.0
        return est.tokens * self.fallback_usd_per_mtok / 1e6 if self.unpriced == "allow" else None

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

    def affordable_output(self, est: Estimate, *, settled: bool = False) -> int:
        """The most output tokens this budget can still pay for on top of the call's prompt; with `settled`, as if
        the calls in flight had cost nothing."""
        afford = est.max_output_tokens
        if self.limit_tokens is not None:
            remaining_tokens = self.limit_tokens - self.spent_tokens if settled else self.remaining_tokens or 0
            afford = min(afford, remaining_tokens - est.prompt_tokens)
        if self.limit_usd is not None and est.usd is not None and est.output_usd and est.max_output_tokens:
            per_token = float(est.output_usd) / est.max_output_tokens
            prompt_usd = float(est.usd - est.output_usd)
            remaining_usd = self.limit_usd - self.spent_usd if settled else self.remaining_usd or 0.0
            afford = min(afford, math.floor((remaining_usd - prompt_usd) / per_token * (1 - 1e-9)))
        return max(afford, 0)

    def fits(self, usd: float, tokens: int, *, settled: bool = False, value: float = 1.0) -> bool:
        """Whether a call of this worst case fits; with `settled`, as if the calls in flight had cost nothing.
        Work of `value` below 1 fits only below the share of the limit `value_allows` leaves it."""
        eps = 1e-12
        held_usd, held_tokens = (0.0, 0) if settled else (self.reserved_usd, self.reserved_tokens)
        if self.limit_usd is not None and self.spent_usd + held_usd + usd > self.limit_usd + eps:
            return False
        if self.limit_tokens is not None and self.spent_tokens + held_tokens + tokens > self.limit_tokens:
            return False
        if self.limit_usd is not None and not value_allows(value, self.spent_usd + held_usd + usd, self.limit_usd):
            return False
        return self.limit_tokens is None or value_allows(
            value, self.spent_tokens + held_tokens + tokens, self.limit_tokens
        )

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
    created: str = ""
    """When it was inserted (`now_iso`, with microseconds): with its id and holder, what identifies it (`landed`)."""


class Budgets:
    """The budgets of one config, applied to one run."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        *,
        run_id: str,
        flow: str,
        project: str | None = None,
        max_wait_s: float = 600,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.run_id = run_id
        self.flow = flow
        self.project = project
        self.tz = ZoneInfo(config.settings.vault.timezone)
        self.max_wait_s = max_wait_s
        self.lease_s = config.settings.reservation_lease_s
        self._held: set[int] = set()
        self._held_lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._tracked: dict[str, str | None] | None = None
        """Each budget scope's `tracked_from` on this ledger, once this object has made sure it is registered."""

    def applicable(self, phase: str) -> list[tuple[str, BudgetConfig]]:
        return [
            (name, b)
            for name, b in self.config.settings.budgets.items()
            if (b.flow in (None, self.flow)) and (b.phase in (None, phase)) and (b.project in (None, self.project))
        ]

    def period_start(self, budget: BudgetConfig, now: datetime | None = None) -> str | None:
        """Start of the budget's calendar period in the vault's time zone, as a UTC ISO timestamp."""
        return period_start(budget.period, self.tz, now or clock.now())

    def scope(self, name: str, budget: BudgetConfig) -> str:
        parts = [f"per {budget.period}" if budget.period != "run" else "per run"]
        if budget.flow:
            parts.append(f"flow {budget.flow}")
        if budget.phase:
            parts.append(f"phase {budget.phase}")
        if budget.project:
            parts.append(f"project {budget.project}")
        if budget.tier:
            parts.append(f"tier {budget.tier}")
        return ", ".join(parts)

    def period_end(self, budget: BudgetConfig, now: datetime | None = None) -> datetime | None:
        """End of the budget's current calendar period (the next period's start), in UTC; None for `run`."""
        start = self.period_start(budget, now)
        return None if start is None else period_end(budget.period, self.tz, start)

    def scope_of(self, budget: BudgetConfig) -> Scope:
        """What the budget counts, as the ledger's running totals key it."""
        return Scope(
            period=budget.period,
            tz=self.config.settings.vault.timezone,
            flow=budget.flow or "",
            phase=budget.phase or "",
            tier=budget.tier or "",
            project=budget.project or "",
        )

    def _track(self, conn: Connection, now: datetime | None = None) -> dict[str, str | None]:
        """Register this config's budget scopes on the ledger (once; a new one's totals are rebuilt from the calls)."""
        if self._tracked is not None:
            return self._tracked
        scopes = [self.scope_of(b) for b in self.config.settings.budgets.values()]
        if not scopes:
            self._tracked = {}
            return self._tracked
        if not self.ledger.writable:
            # A report on a ledger this user may only read registers nothing: the scopes other processes registered
            # are read from their running totals, the others are summed from the calls (`states_in`).
            return tracked_scopes(conn)
        known, registered = track(conn, scopes, now or clock.now())
        if not registered:  # already on the ledger before this transaction: safe to remember
            self._tracked = known
        return known

    def forecasts(self, now: datetime | None = None) -> list[Forecast]:
        """Each period budget's projected use at the end of its period, at the rate of the period so far."""
        now = now or clock.now()
        periodic = [(name, b) for name, b in self.config.settings.budgets.items() if b.period != "run"]
        # A write transaction: a scope new to the ledger is registered (`_track`), unless the ledger is read-only.
        if self.ledger.writable:
            with self.ledger.transaction() as conn:
                states = self.states_in(conn, periodic, now)
        else:
            states = self.ledger.read(lambda conn: self.states_in(conn, periodic, now))
        return [
            forecast(
                state,
                datetime.fromisoformat(self.period_start(budget, now) or ""),
                self.period_end(budget, now) or now,
                now,
            )
            for state, (_, budget) in zip(states, periodic, strict=True)
        ]

    def state(
        self,
        conn: Connection,
        name: str,
        budget: BudgetConfig,
        now: datetime | None = None,
        *,
        held: Sequence[Any] | None = None,
    ) -> BudgetState:
        """The budget's spent (the running totals: one row) and reserved (the reservations in flight) amounts.

        `held`: the open reservations (`_held(conn)`), read once for every budget of a check.
        """
        return self.states_in(conn, [(name, budget)], now, held=held)[0]

    def states_in(
        self,
        conn: Connection,
        budgets: Sequence[tuple[str, BudgetConfig]],
        now: datetime | None = None,
        *,
        held: Sequence[Any] | None = None,
    ) -> list[BudgetState]:
        """`state` of each of `budgets` inside `conn`'s transaction: the reservations in flight read once (unless
        given as `held`), and every budget's running total in one statement."""
        tracked = self._track(conn, now)
        held = _held(conn) if held is None else held
        # Each budget's spent amount: from the running totals (all read in one statement below), or summed from the
        # calls for a period before the totals began (a report on an earlier `now`), or none (a run budget, no run).
        wanted: list[tuple[Scope, str]] = []
        plans = []
        for name, budget in budgets:
            scope = self.scope_of(budget)
            start = self.period_start(budget, now)
            period = self.run_id if start is None else start
            fixed: tuple[float, int, int] | None = None
            if start is None and not self.run_id:
                fixed = (0.0, 0, 0)
            elif start is not None and not (tracked.get(scope.key) is not None and start >= (tracked[scope.key] or "")):
                end = period_end(budget.period, self.tz, start).isoformat(timespec="microseconds")
                fixed = spent_from_calls(conn, scope, start=start, end=end)
            else:
                wanted.append((scope, period or ""))
            plans.append((name, budget, scope, start, fixed))
        totals = iter(spent_totals(conn, wanted))
        out = []
        for name, budget, scope, start, fixed in plans:
            spent = next(totals) if fixed is None else fixed
            # USD per token for models of unknown price, where this budget allows them (else they count 0:
            # none runs under its USD limit, so such rows predate it or belong to other scopes).
            fallback = (budget.fallback_usd_per_mtok or 0.0) / 1e6 if budget.unpriced == "allow" else 0.0
            held_usd, held_tokens = 0.0, 0
            # A call in flight is recorded when it answers, in the period current then: one reserved in an earlier
            # period (a batch is held up to 25 h) counts in this one too, else the new period overshoots by it.
            until = (
                None if start is None else period_end(budget.period, self.tz, start).isoformat(timespec="microseconds")
            )
            for r in held:
                in_period = r.run_id == self.run_id if until is None else r.created < until
                if in_period and all(not getattr(scope, k) or getattr(scope, k) == getattr(r, k) for k in _FILTERS):
                    held_usd += float(r.usd or 0.0) + (0.0 if r.priced else fallback * (r.tokens or 0))
                    held_tokens += int(r.tokens or 0)
            out.append(
                BudgetState(
                    name=name,
                    scope=self.scope(name, budget),
                    limit_usd=budget.usd,
                    limit_tokens=budget.tokens,
                    spent_usd=spent[0] + fallback * spent[2],
                    spent_tokens=spent[1],
                    reserved_usd=held_usd,
                    reserved_tokens=held_tokens,
                    policy=budget.policy,
                    min_output_tokens=budget.min_output_tokens,
                    clamp=budget.clamp_output,
                    tier=budget.tier,
                    unpriced=budget.unpriced,
                    fallback_usd_per_mtok=budget.fallback_usd_per_mtok or 0.0,
                )
            )
        return out

    def states(self, phase: str | None = None, now: datetime | None = None) -> list[BudgetState]:
        """Every budget's state now (for reports)."""
        if self._tracked is None and self.config.settings.budgets and self.ledger.writable:
            with self.ledger.transaction() as conn:
                self._track(conn, now)
        budgets = [(n, b) for n, b in self.config.settings.budgets.items() if phase is None or b.phase in (None, phase)]
        return self.ledger.read(lambda conn: self.states_in(conn, budgets, now))

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
        claim: Callable[[Connection, Route, Sequence[BudgetState]], bool] | None = None,
    ) -> Reservation | None:
        """One try at `reserve`, inside the caller's write transaction: the reservation, or None to wait.

        None means the call would fit once the calls in flight settle (until `expired`), or that `claim` (which
        may take something else in the same transaction, such as a tier slot, for the chosen route, and is given
        the budget states this try read) said no.
        """
        self._track(conn)  # first: a scope new to the ledger takes the migration lock before the budget lock
        _lock(conn)
        db_now = database_seconds(conn)
        if lapsed := conn.execute(_RELEASE_EXPIRED, {"now": db_now}).scalars().all():
            _record_lost(self.ledger, conn, _open(conn, reservations.c.id.in_(lapsed)))
        applicable = self.applicable(candidates[0][0].phase)
        states = self.states_in(conn, applicable) if applicable else []
        decision = decide_reservation(candidates, states, wait=wait)
        if isinstance(decision, Reservation):
            if claim is not None and not claim(conn, decision.route, states):
                return None
            return self._insert(conn, decision, db_now)
        if decision is _WAIT and not expired:
            return None
        state, candidate, est = decision if decision is not _WAIT else _blocker(candidates, states)
        usd = state.usd_of(est)
        if usd is None:
            raise BudgetExceeded(
                f"{state.describe()}: tier {candidate.tier!r} runs {candidate.model_ref}, whose price is not "
                f"known, so this {candidate.phase} call cannot be counted against a USD budget. Price it with "
                f"`[tiers.{candidate.tier}.price]` (input and output USD per million tokens) in the config, "
                f'or set `unpriced = "allow"` and `fallback_usd_per_mtok` in [budgets.{state.name}].',
                budget=state.name,
                scope=state.scope,
            )
        raise BudgetExceeded(
            f"{state.describe()}; this {candidate.phase} call on tier {candidate.tier!r} needs "
            f"${usd:.4f} / {est.tokens} tokens at worst. {self.remedy(state, candidate)}.",
            budget=state.name,
            scope=state.scope,
        )

    def remedy(self, state: BudgetState, refused: Route) -> str:
        """What would let a call `state` refused through: a larger limit, a smaller output allowance, and a
        cheaper tier only where one is left to go to (a `downgrade` budget already went down to its floor)."""
        fixes = [f"Raise `budgets.{state.name}` in the config", "lower the tier's max_output_tokens"]
        order = list(self.config.tier_order)
        cheaper = refused.tier in order and order.index(refused.tier) > 0
        if cheaper and state.policy != "downgrade":
            fixes.append('set policy = "downgrade"')
        elif cheaper and refused.tier == getattr(self.config.settings.budgets.get(state.name), "floor", None):
            fixes.append(f"lower its floor (now {refused.tier!r})")
        return ", ".join(fixes[:-1]) + (", or " if len(fixes) > 2 else " or ") + fixes[-1]

    def _insert(self, conn: Connection, reservation: Reservation, now: float) -> Reservation:
        """Insert the reservation, its lease measured from `now` (`database_seconds`, read in this transaction)."""
        est = reservation.estimate
        created = now_iso()
        # One compiled statement with bound parameters, as `Ledger.record` does: cheaper than `.values(...)`.
        reservation_id = conn.execute(
            reservations.insert(),
            dict(
                created=created,
                run_id=self.run_id,
                flow=self.flow,
                project=self.project,
                phase=reservation.route.phase,
                usd=float(est.usd) if est.usd is not None else 0.0,
                tokens=est.tokens,
                tier=reservation.route.tier,
                provider=reservation.route.provider,
                model=reservation.route.model,
                complexity=reservation.route.complexity,
                batch=est.batch,
                priced=est.usd is not None,
                open=True,
                held_since=now,
                lease_expires=now + (BATCH_LEASE_S if est.batch else self.lease_s),
                holder_pid=os.getpid(),
                holder_host=HOST,
            ),
        ).inserted_primary_key[0]
        return replace(reservation, id=reservation_id, created=created)

    def landed(self, reservation: Reservation) -> bool:
        """Whether `reservation`, inserted by this process in a transaction that lost its connection as it committed,
        is in the ledger all the same (the commit went through, its acknowledgement lost): open, or released since as
        its lease lapsed (`settle` and `release` then undo its `lost` row). Its id alone is not enough: SQLite gives a
        rolled-back row's id to the next insert."""
        with self.ledger.reading() as conn:
            found = conn.execute(
                sa.select(reservations.c.id).where(
                    reservations.c.id == reservation.id,
                    reservations.c.created == reservation.created,
                    reservations.c.run_id == self.run_id,
                    reservations.c.holder_pid == os.getpid(),
                    reservations.c.holder_host == HOST,
                )
            ).first()
        return found is not None

    def keep_alive(self, reservation_id: int) -> None:
        """Renew this reservation's lease while its call is in flight, until it is settled or released.

        One thread per `Budgets` renews every reservation this process holds, every third of the lease.
        If the process dies, renewal stops and the lease lapses: the next reservation attempt releases it (a run
        starting on this host releases it at once, `release_dead_holders`).
        """
        with self._held_lock:
            self._held.add(reservation_id)
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._renew, name="tierflow-lease-renewer", daemon=True)
                self._renewer.start()

    def stop_renewing(self, reservation_id: int) -> None:
        """The call is over: its lease is no longer renewed (settling or releasing it also stops renewal)."""
        with self._held_lock:
            self._held.discard(reservation_id)

    def _renew(self) -> None:
        while True:
            time.sleep(self.lease_s / 3)
            with self._held_lock:
                held = sorted(self._held)
            if not held:
                with self._held_lock:
                    if not self._held:
                        self._renewer = None
                        return
                continue
            try:
                with self.ledger.transaction() as conn:
                    conn.execute(
                        reservations.update()
                        .where(reservations.c.id.in_(held), reservations.c.open.is_(True))
                        .values(lease_expires=database_seconds(conn) + self.lease_s)
                    )
            except (sa.exc.SQLAlchemyError, LedgerError) as exc:  # the ledger is unreachable: try again next tick
                log.warning("could not renew %d budget reservation lease(s): %s", len(held), exc)

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
        self.stop_renewing(reservation_id)
        with self.ledger.transaction() as conn:
            # Under the reservation lock: on PostgreSQL (READ COMMITTED) a reservation's separate spent and
            # held sums could otherwise fall either side of this commit and count the call nowhere.
            _lock(conn)
            if also is not None:
                also(conn)
            # Its reservation, read as it goes (usage known) or as it is kept (unknown): one statement either way.
            statement = _DELETE_RETURNING if call.usage.known else _KEPT
            held = conn.execute(statement, {"reservation": reservation_id}).first()
            _unrecord_lost(conn, held)
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
            if not call.usage.known:
                _keep(conn, held)

    def release(self, reservation_id: int, *, also: Callable[[Connection], None] | None = None) -> None:
        """Drop a reservation whose call ended without an answer (with `also`, such as recording its lost attempts,
        in the same transaction).

        The holder knows what was sent, so if its lease lapsed and its call was recorded lost meanwhile, that row
        goes (`_unrecord_lost`), as when an answer is settled: the holder's own lost attempts, or nothing when
        none was sent, count instead."""
        self.stop_renewing(reservation_id)
        with self.ledger.transaction() as conn:
            _lock(conn)
            if also is not None:
                also(conn)
            # Read as it goes (DELETE ... RETURNING): no extra round trip on the usual path, where it is open.
            _unrecord_lost(conn, conn.execute(_DELETE_RETURNING, {"reservation": reservation_id}).first())


@dataclass(frozen=True)
class Forecast:
    """A period budget's projection: its use so far, extended at the same rate to the end of the period."""

    state: BudgetState
    period_start: datetime
    period_end: datetime
    now: datetime
    projected_usd: float | None
    projected_tokens: int | None
    runs_out: datetime | None
    """When the limit would be reached at the current rate, if within this period."""

    @property
    def over(self) -> bool:
        """The projection crosses the limit before the period ends."""
        s = self.state
        return (self.projected_usd is not None and s.limit_usd is not None and self.projected_usd > s.limit_usd) or (
            self.projected_tokens is not None and s.limit_tokens is not None and self.projected_tokens > s.limit_tokens
        )


def forecast(state: BudgetState, start: datetime, end: datetime, now: datetime) -> Forecast:
    """Project `state` (spent plus reserved, so far) to `end` at the rate since `start`."""
    elapsed = max((now - start).total_seconds(), 1.0)
    left = max((end - now).total_seconds(), 0.0)
    scale = (elapsed + left) / elapsed
    runs_out: list[datetime] = []

    def project(used: float, limit: float | None) -> float:
        if limit is not None and used > 0:
            if used >= limit:
                runs_out.append(now)
            else:
                at = now + timedelta(seconds=(limit - used) / (used / elapsed))
                if at < end:
                    runs_out.append(at)
        return used * scale

    usd = project(state.spent_usd + state.reserved_usd, state.limit_usd) if state.limit_usd is not None else None
    tokens = (
        round(project(state.spent_tokens + state.reserved_tokens, state.limit_tokens))
        if state.limit_tokens is not None
        else None
    )
    return Forecast(state, start, end, now, usd, tokens, min(runs_out) if runs_out else None)


_FILTERS = ("flow", "phase", "tier", "project")

VALUE_RESERVE = 0.2
"""The share of every budget's limit kept for work of value 1 and above (`value_allows`)."""


def value_allows(value: float, used: float, cap: float) -> bool:
    """Whether work of this `value` may bring a budget's use (spent, held and this call's worst case) to `used`:
    value below 1 only up to `1 - VALUE_RESERVE` (80%) of the `cap`, so that it is downgraded or deferred first
    as the budget nears its cap; value 1 and above up to the cap itself (as without values)."""
    return used <= cap * (1.0 if value >= 1 else 1 - VALUE_RESERVE) + 1e-12


_WAIT = object()
"""Decision: the call would fit once the calls in flight settle."""


def decide_reservation(
    candidates: Sequence[tuple[Route, Estimate]], states: list[BudgetState], *, wait: bool = True
) -> Reservation | object | tuple[BudgetState, Route, Estimate]:
    """Reserve a candidate, wait for calls in flight, or refuse (naming the budget).

    The one place a reservation is decided from the budgets' states: every policy (halt, downgrade, warn, clamping
    the output) is applied here, on plain data, inside the reservation's transaction.
    """
    routed = candidates[0][0]
    forced_by: str | None = None
    for index, (candidate, est) in enumerate(candidates):
        applying = [s for s in states if s.applies_to(candidate)]
        # A model of unknown price cannot be checked against a USD limit that does not allow it.
        unpriced = [s for s in applying if s.usd_of(est) is None]
        blocking = unpriced or [s for s in applying if not s.fits(s.usd_of(est), est.tokens, value=candidate.value)]
        hard = [s for s in blocking if s.policy != "warn" or s in unpriced]
        if not hard:
            return Reservation(
                id=0,
                route=candidate,
                estimate=est,
                downgraded_from=routed.tier if index else None,
                budget=forced_by if index else None,
                warnings=tuple((s.name, s.describe()) for s in blocking),
            )
        if (
            wait
            and not unpriced
            and all(s.fits(s.usd_of(est), est.tokens, settled=True, value=candidate.value) for s in hard)
        ):
            return _WAIT
        # Not at the full output allowance, but with a smaller one: send what the budget affords, to a floor.
        # A `downgrade` budget first tries the cheaper tiers whole; the last of them may still be clamped.
        can_downgrade = all(s.policy == "downgrade" for s in hard) and index + 1 < len(candidates)
        floor = max((s.min_output_tokens for s in hard), default=0)
        if not can_downgrade and not unpriced and est.usd is not None and all(s.clamp for s in hard):
            afford = min(s.affordable_output(est) for s in hard)
            if floor <= afford < est.max_output_tokens:
                smaller = est.clamped(afford)
                if all(s.fits(s.usd_of(smaller) or 0.0, smaller.tokens, value=candidate.value) for s in hard):
                    return Reservation(
                        id=0,
                        route=replace(candidate, max_output_tokens=afford),
                        estimate=smaller,
                        downgraded_from=routed.tier if index else None,
                        budget=forced_by if index else None,
                        warnings=tuple((s.name, s.describe()) for s in blocking if s.policy == "warn"),
                    )
            # Not even clamped to the floor now, but once the calls in flight settle: wait for them, then send
            # what the budget affords then (refused only once nothing in flight could make room).
            later = min(s.affordable_output(est, settled=True) for s in hard)
            if wait and floor <= later:
                smaller = est.clamped(later)
                if all(
                    s.fits(s.usd_of(smaller) or 0.0, smaller.tokens, settled=True, value=candidate.value) for s in hard
                ):
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
    for candidate, est in candidates:
        for s in states:
            if not s.applies_to(candidate) or s.policy == "warn":
                continue
            usd = s.usd_of(est)
            if usd is None or not s.fits(usd, est.tokens):
                return s, candidate, est
    raise AssertionError("unreachable: a call that waited was blocked by a budget")


@dataclass(frozen=True)
class OpenReservation:
    """A reservation still holding budget, as `tierflow budget reservations` lists it."""

    id: int
    run_id: str
    flow: str
    phase: str
    usd: float
    tokens: int
    created: str
    age_s: float
    lease_left_s: float
    holder_pid: int | None
    holder_host: str | None
    project: str | None = None
    tier: str = ""
    provider: str = ""
    model: str = ""
    complexity: str = ""
    priced: bool = True
    batch: bool = False
    """A provider batch item's: never sent on its own, so never recorded as a lost call."""
    lost: bool = False
    """Released, and recorded as a lost call at its worst case (`release_stale`)."""
    batch_pending: bool = False
    """An item of a batch submitted to the provider (or on its way): held until the batch is collected
    (`tierflow resume RUN`, or a rerun) whether or not the process that submitted it lives on."""

    @property
    def expired(self) -> bool:
        return self.lease_left_s <= 0

    @property
    def holder_gone(self) -> bool:
        """Its holder was a process on this host that no longer exists."""
        return self.holder_host == HOST and self.holder_pid is not None and not _process_exists(self.holder_pid)

    @property
    def stale(self) -> bool:
        return not self.batch_pending and (self.expired or self.holder_gone)

    @property
    def state(self) -> str:
        if self.batch_pending:
            return "batch pending"
        return "expired" if self.expired else "holder gone" if self.holder_gone else "held"


def open_reservations(ledger: Ledger) -> list[OpenReservation]:
    """Every reservation still open, oldest first."""
    with ledger.reading() as conn:
        return _open(conn)


def release_stale(ledger: Ledger) -> list[OpenReservation]:
    """Release every reservation whose lease is over, or whose holder process on this host is gone.

    A call's reservation is recorded as a `lost` call at its worst case (`lost_call`) in the same transaction: its
    request may have reached the provider, which bills it, so its budgets keep counting it (`lost` set on it)."""
    return _release_open(ledger, lambda r: r.stale)


def release_dead_holders(ledger: Ledger) -> list[OpenReservation]:
    """Release every reservation whose holder was a process on this host that is gone (`holder gone`), whatever
    its run and however long its lease still runs; each call's is recorded `lost` at its worst case, under its own
    run id, as `release_stale` records it. Never a live holder's, another host's or a pending batch's.

    A run does this as it starts or resumes: a killed run's calls in flight were sent, and may be billed, so they
    are counted before the run (resumed, its report reads the run's calls) or anything else goes on; the lease
    would release them only at the next reservation after it ran out, once the resumed run's report was written.
    A holder whose pid is gone cannot wake to settle its call (`_unrecord_lost`), so it is counted once."""
    return _release_open(ledger, lambda r: not r.batch_pending and r.holder_gone)


def _release_open(ledger: Ledger, which: Callable[[OpenReservation], bool]) -> list[OpenReservation]:
    """Release the open reservations `which` picks, recording each call's as `lost` (`_record_lost`)."""
    with ledger.transaction() as conn:
        _lock(conn)
        released = [r for r in _open(conn) if which(r)]
        if not released:
            return []
        _release(conn, reservations.c.id.in_([r.id for r in released]))
        return _record_lost(ledger, conn, released)


def _record_lost(ledger: Ledger, conn: Connection, released: list[OpenReservation]) -> list[OpenReservation]:
    """Each released call's reservation as a `lost` call at its worst case, `lost` set on it; a batch's is not:
    one a batch item names lives on at the provider, and is recorded when it is collected; one no item names was
    never sent (an item is recorded, `batch._claim_items`, before it is sent, and its record is deleted only by a
    run that found its batch never reached the provider, which releases it then)."""
    released = [replace(r, lost=not r.batch) for r in released]
    for r in released:
        if r.lost:
            ledger.record(_lost_call(r), conn=conn)
    return released


def _lost_call(r: OpenReservation) -> CallRecord:
    """The call a released reservation stood for, sent when it was reserved and never answered."""
    call = CallRecord(
        run_id=r.run_id,
        flow=r.flow,
        phase=r.phase,
        complexity=r.complexity,
        tier=r.tier,
        provider=r.provider,
        model=r.model,
        usage=UNKNOWN_USAGE,
        cost_usd=None,
        latency_ms=0.0,
        started_at=r.created,
        project=r.project,
        timestamp=r.created,  # counted in the period it was reserved (and held) in
    )
    return lost_call(call, r.usd if r.priced else None, r.tokens)


def _unrecord_lost(conn: Connection, r: Any) -> None:
    """A call whose reservation `r` was released as `lost` (its lease lapsed, or `--release-stale` took it) while
    its holder lived on, paused (a suspended laptop, SIGSTOP): the holder has woken and ended the call after all
    (settled its answer, or released it with its own lost attempts, or none), so the lost row written in its
    place goes, and its worst case (USD and tokens, as `Ledger.record` counted them) leaves the totals. Else the
    call would be counted twice, or charged when nothing was sent."""
    if r is None or r.open or r.kept or r.batch:
        return  # still open (or kept, or a batch's): nothing was recorded in its place
    lost = conn.execute(
        sa.select(calls.c.id, calls.c.cost_usd, calls.c.worst_tokens)
        .where(
            calls.c.outcome == "lost",
            # `_lost_call` dates it, and its start, when the reservation was made: never one of the holder's own
            # lost attempts, written in the same transaction (sent, and dated, after the reservation).
            calls.c.timestamp == r.created,
            calls.c.started_at == r.created,
            calls.c.run_id == r.run_id,
            calls.c.phase == r.phase,
            calls.c.tier == r.tier,
        )
        .order_by(calls.c.id.desc())
        .limit(1)
    ).first()
    if lost is None:
        return
    conn.execute(calls.delete().where(calls.c.id == lost.id))
    # A row recorded before the ledger stored worst cases (version 19) was counted at its reservation's tokens.
    tokens = int(lost.worst_tokens if lost.worst_tokens is not None else r.tokens or 0)
    count_spend(conn, _spent(r, -(lost.cost_usd or 0.0), -tokens, -tokens if lost.cost_usd is None else 0))


def _open(conn: Connection, which: sa.ColumnElement[bool] | None = None) -> list[OpenReservation]:
    """The reservations still open (or those `which` picks), oldest first."""
    now = database_seconds(conn)
    which = reservations.c.open.is_(True) if which is None else which
    rows = conn.execute(sa.select(reservations).where(which).order_by(reservations.c.id)).all()
    # A reservation a batch item names is a batch's (also one made before reservations recorded `batch`).
    items = (
        conn.execute(
            sa.select(batch_items.c.reservation_id, batch_items.c.status).where(
                batch_items.c.reservation_id.in_([row.id for row in rows])
            )
        ).all()
        if rows
        else []
    )
    pending = {item.reservation_id for item in items if item.status in SUBMITTED}
    batched = {item.reservation_id for item in items}
    return [
        OpenReservation(
            id=row.id,
            run_id=row.run_id or "",
            flow=row.flow or "",
            phase=row.phase or "",
            usd=float(row.usd or 0.0),
            tokens=int(row.tokens or 0),
            created=row.created,
            age_s=max(0.0, now - row.held_since) if row.held_since is not None else 0.0,
            lease_left_s=(row.lease_expires or 0.0) - now,
            holder_pid=row.holder_pid,
            holder_host=row.holder_host,
            project=row.project,
            tier=row.tier or "",
            provider=row.provider or "",
            model=row.model or "",
            complexity=row.complexity or "",
            priced=bool(row.priced),
            batch=bool(row.batch) or row.id in batched,
            batch_pending=row.id in pending,
        )
        for row in rows
    ]


# The two statements on every call's path, built once with bound parameters (see `Budgets._insert`).
_RELEASE_EXPIRED = (
    reservations.update()
    .where(
        reservations.c.open.is_(True),
        reservations.c.lease_expires.is_not(None),
        reservations.c.lease_expires < sa.bindparam("now"),
    )
    .values(open=False)
    .returning(reservations.c.id)
)
"""A lease that lapsed is a call whose holder died (or froze) mid-call: released here, recorded as `lost`."""
_DELETE = reservations.delete().where(reservations.c.id == sa.bindparam("reservation"))
"""A settled or released reservation is gone: the table holds the calls in flight (and the kept ones)."""
_DELETE_RETURNING = _DELETE.returning(*reservations.c)
_HELD = sa.select(
    reservations.c.created,
    reservations.c.run_id,
    reservations.c.flow,
    reservations.c.phase,
    reservations.c.tier,
    reservations.c.project,
    reservations.c.usd,
    reservations.c.tokens,
    reservations.c.priced,
).where(reservations.c.open.is_(True))
_KEPT = sa.select(reservations).where(reservations.c.id == sa.bindparam("reservation"))
_MARK_KEPT = reservations.update().where(reservations.c.id == sa.bindparam("reservation")).values(open=False, kept=True)


def _held(conn: Connection) -> list[Any]:
    """The reservations in flight: what every budget check counts as reserved."""
    return conn.execute(_HELD).all()


def _keep(conn: Connection, row: Any) -> None:
    """A call of unknown usage stays charged at its worst case: its reservation `row` is kept, and counted as
    spent."""
    if row is None or row.kept:
        return
    conn.execute(_MARK_KEPT, {"reservation": row.id})
    tokens = int(row.tokens or 0)
    count_spend(conn, _spent(row, float(row.usd or 0.0), tokens, 0 if row.priced else tokens))


def _spent(r: Any, usd: float, tokens: int, unpriced_tokens: int) -> Spent:
    """An addition to the budget totals in a reservation row's scope (its run, flow, phase, tier, project),
    dated when it was reserved."""
    return Spent(
        when=r.created,
        run_id=r.run_id,
        flow=r.flow,
        phase=r.phase,
        tier=r.tier,
        project=r.project,
        usd=usd,
        tokens=tokens,
        unpriced_tokens=unpriced_tokens,
    )


def _release(conn: Connection, which: sa.ColumnElement[bool]) -> None:
    conn.execute(reservations.update().where(reservations.c.open.is_(True), which).values(open=False))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _lock(conn: Connection) -> None:
    # SQLite already holds the write lock (BEGIN IMMEDIATE); PostgreSQL needs an explicit one.
    lock_budgets(conn)
