"""Tier slots: at most `[tiers.<name>] concurrency` model calls of a tier in flight, across every process
that shares the ledger.

A slot is a row in `tier_slots`. The call path takes it in the same ledger transaction as the call's budget
reservation and gives it back in the one that records the call, so a slot covers the model call only, not the
task around it. A process that dies holding a slot loses it when its lease lapses (`[limits] lease_s`); a live
process renews its leases from one background thread. Leases are measured by the database's clock (as budget
reservations' are), never a host's: a worker whose clock runs ahead cannot take a live slot. Each slot is taken
under a holder token of its own and given back by it, never by row id, which SQLite reuses.

A call whose answer has arrived hands its slot over at once: it opens its gate and leaves the slot's row,
still held under its token, for the next call of this process to take (`hand_over`). That call re-labels the row
with a token of its own in its reservation's transaction, so a freed slot does not wait for the answered call's
verdict and settlement (a transaction that queues behind other calls' writes). An answered call whose slot no
one took gives it back with its settlement, as before; nothing is ever in flight beyond the rows counted.

Threads of one process first pass a local semaphore of the same size, so only a call that could start now
asks the database. A call past the gate whose slot is held elsewhere waits for one of two things: a slot given
back by this process (announced the moment its transaction has committed, so the waiter tries at once), or its
next poll of the database, which is how it sees a slot given back by another process (every `POLL_S[0]`
seconds at first, backing off to `POLL_S[1]`).

With `[limits] mechanism = "prefect"` tierflow takes no slots: Prefect's tag limits on `tier:<name>` (applied
by `tierflow limits apply`) hold the task runs instead.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tierflow.core.config import Config
from tierflow.core.ledger import Ledger, database_seconds, now_iso, tier_slots

NO_SLOT = ""
"""The slot of a call on a tier without a limit (a held slot is its holder token)."""

POLL_S = (0.002, 0.02)
"""A call waiting for a slot held by another process polls the ledger after this long at first, then at most this
long (each wait 1.5 times the last)."""

_semaphores: dict[tuple[str, str, int], threading.BoundedSemaphore] = {}
_semaphores_lock = threading.Lock()


class _GivenBack:
    """Slots this process has given back on one ledger: a count that a waiting call reads before it tries to claim,
    and a condition that wakes it when the count moves, so a slot given back between its try and its wait is
    never missed."""

    def __init__(self) -> None:
        self.count = 0
        self.condition = threading.Condition()

    def announce(self) -> None:
        with self.condition:
            self.count += 1
            self.condition.notify_all()

    def wait(self, seen: int, timeout: float) -> bool:
        with self.condition:
            return self.condition.wait_for(lambda: self.count != seen, timeout)


_given_back: dict[str, _GivenBack] = {}
_spares: dict[tuple[str, str], list[str]] = {}
"""Per ledger and tier: the tokens of slots whose call has answered and that no other call has taken yet."""


def limits_of(config: Config) -> dict[str, int]:
    """The tiers tierflow limits itself, by the ledger mechanism: tier -> slots."""
    if config.settings.limits.mechanism != "ledger":
        return {}
    return {name: tier.concurrency for name, tier in config.settings.tiers.items() if tier.concurrency}


STARTED_CAP = 256
"""The most task runs of one phase `started_task_runs` keeps unfinished at once (the largest `[run] workers`)."""


def started_task_runs(config: Config) -> int:
    """How many task runs of one phase may be unfinished at once (`phases.fan_out`): `[run] workers`, and at
    least twice the largest tier `concurrency` enforced by ledger slots, up to `STARTED_CAP`.

    Twice: one call in flight per slot and the next one started and waiting for it, so a freed slot never waits
    for Prefect to finish a task run and start the next (with workers equal to the limit, every call did).
    """
    workers = config.settings.run.workers
    return max(workers, min(2 * max(limits_of(config).values(), default=0), STARTED_CAP))


class TierSlots:
    """The slots of one config's limited tiers, on one ledger, for one process."""

    def __init__(self, config: Config, ledger: Ledger) -> None:
        self.ledger = ledger
        self.limits = limits_of(config)
        self.lease_s = config.settings.limits.lease_s
        self.holder = f"{socket.gethostname()[:80]}:{os.getpid()}"
        self._held: set[str] = set()
        self._returned: set[str] = set()
        """Slots given back in a transaction that has not been announced yet (`forget` announces it)."""
        self._lock = threading.Lock()
        with _semaphores_lock:
            self._given_back = _given_back.setdefault(ledger.url, _GivenBack())
        self._renewer: threading.Thread | None = None

    def local(self, tier: str) -> threading.BoundedSemaphore | None:
        """This process's gate for `tier` (shared by every caller on the same ledger), or None if unlimited."""
        limit = self.limits.get(tier)
        if limit is None:
            return None
        key = (self.ledger.url, tier, limit)
        with _semaphores_lock:
            return _semaphores.setdefault(key, threading.BoundedSemaphore(limit))

    def claim(self, conn: Connection, tier: str) -> str | None:
        """Take a slot of `tier` inside the caller's (write) transaction: its holder token, NO_SLOT if the tier is
        unlimited, or None when every slot is held."""
        limit = self.limits.get(tier)
        if limit is None:
            return NO_SLOT
        now = database_seconds(conn)
        token = f"{self.holder}:{uuid.uuid4().hex}"
        values = {"acquired": now_iso(), "lease_until": now + self.lease_s}
        spare = self._take_spare(tier)
        # An answered call's slot, re-labelled as ours; none if it lapsed or its settlement gave it back first.
        taken = (
            spare is not None
            and (
                conn.execute(tier_slots.update().where(tier_slots.c.holder == spare).values(holder=token, **values))
            ).rowcount
            == 1
        )
        if not taken:
            conn.execute(tier_slots.delete().where(tier_slots.c.tier == tier, tier_slots.c.lease_until < now))
            held = conn.execute(sa.select(sa.func.count()).where(tier_slots.c.tier == tier)).scalar() or 0
            if held >= limit:
                return None
            conn.execute(tier_slots.insert(), {"tier": tier, "holder": token, **values})
        with self._lock:
            self._held.add(token)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew, name="tierflow-slot-leases", daemon=True)
                self._renewer.start()
        return token

    def hand_over(self, tier: str, slot: str | None) -> None:
        """The call holding `slot` has its answer: the next call of this process to claim a slot of `tier` takes
        this one (its row stays, held under `slot`, until that call re-labels it or `release` deletes it)."""
        if not slot or tier not in self.limits:
            return
        with _semaphores_lock:
            _spares.setdefault((self.ledger.url, tier), []).append(slot)
        self._given_back.announce()  # a call already past its gate may take it

    def _take_spare(self, tier: str) -> str | None:
        with _semaphores_lock:
            spares = _spares.get((self.ledger.url, tier))
            return spares.pop(0) if spares else None

    def _keep(self, slot: str) -> None:
        """No other call may take `slot` from now on (its holder gives it back, or has stopped using it)."""
        with _semaphores_lock:
            for spares in _spares.values():
                if slot in spares:
                    spares.remove(slot)

    def release(self, conn: Connection, slot: str | None) -> None:
        """Give a slot back inside the caller's transaction, by its holder token: a slot that lapsed and was
        taken by another holder since is theirs, and stays. Once the transaction has ended, `forget(slot)` wakes
        this process's calls waiting for a slot."""
        if not slot:
            return
        self._keep(slot)
        conn.execute(tier_slots.delete().where(tier_slots.c.holder == slot))  # nothing, if another call took it
        with self._lock:
            self._held.discard(slot)
            self._returned.add(slot)

    def forget(self, slot: str | None) -> None:
        """After the transaction that took or gave back `slot` has ended: stop renewing its lease, and if it was
        given back, wake this process's calls waiting for a slot on this ledger (a woken call whose give-back
        rolled back finds no slot and waits again)."""
        if not slot:
            return
        self._keep(slot)
        with self._lock:
            self._held.discard(slot)
            returned = slot in self._returned
            self._returned.discard(slot)
        if returned:
            self._given_back.announce()

    def given_back(self) -> int:
        """How many slots this process has given back on this ledger: read before a claim, for `wait`."""
        return self._given_back.count

    def wait(self, seen: int, timeout: float) -> bool:
        """Wait until this process gives a slot back on this ledger after `given_back()` read `seen`, or for
        `timeout` seconds (a slot given back by another process is seen only by polling); True when woken."""
        return self._given_back.wait(seen, timeout)

    def _renew(self) -> None:
        """Extend the leases of the slots this process holds, every third of a lease, for as long as it lives."""
        stop = threading.Event()
        while not stop.wait(self.lease_s / 3):
            with self._lock:
                held = sorted(self._held)
            if not held:
                continue
            try:
                with self.ledger.transaction() as conn:
                    conn.execute(
                        tier_slots.update()
                        .where(tier_slots.c.holder.in_(held))
                        .values(lease_until=database_seconds(conn) + self.lease_s)
                    )
            except Exception:  # a busy or vanished ledger: the next round tries again
                continue


def in_flight(ledger: Ledger) -> dict[str, int]:
    """Slots held now per tier (leases that have not lapsed), for `tierflow limits show`."""
    with ledger.reading() as conn:
        rows = conn.execute(
            sa.select(tier_slots.c.tier, sa.func.count())
            .where(tier_slots.c.lease_until >= database_seconds(conn))
            .group_by(tier_slots.c.tier)
        ).all()
    return {tier: int(count) for tier, count in rows}
