"""Tier slots: at most `[tiers.<name>] concurrency` model calls of a tier in flight, across every process
that shares the ledger.

A slot is a row in `tier_slots`. The call path takes it in the same ledger transaction as the call's budget
reservation and gives it back in the one that records the call, so a slot covers the model call only, not the
task around it. A process that dies holding a slot loses it when its lease lapses (`[limits] lease_s`); a live
process renews its leases from one background thread. Threads of one process first pass a local semaphore of
the same size, so only a call that could start now asks the database, and a waiting call polls it every few
milliseconds: a freed slot is handed over within tens of milliseconds.

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

from tierflow.core import clock
from tierflow.core.config import Config
from tierflow.core.ledger import Ledger, now_iso, tier_slots

NO_SLOT = 0
"""The slot id of a call on a tier without a limit (row ids start at 1)."""

_semaphores: dict[tuple[str, str, int], threading.BoundedSemaphore] = {}
_semaphores_lock = threading.Lock()


def limits_of(config: Config) -> dict[str, int]:
    """The tiers tierflow limits itself, by the ledger mechanism: tier -> slots."""
    if config.settings.limits.mechanism != "ledger":
        return {}
    return {name: tier.concurrency for name, tier in config.settings.tiers.items() if tier.concurrency}


class TierSlots:
    """The slots of one config's limited tiers, on one ledger, for one process."""

    def __init__(self, config: Config, ledger: Ledger) -> None:
        self.ledger = ledger
        self.limits = limits_of(config)
        self.lease_s = config.settings.limits.lease_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    def local(self, tier: str) -> threading.BoundedSemaphore | None:
        """This process's gate for `tier` (shared by every caller on the same ledger), or None if unlimited."""
        limit = self.limits.get(tier)
        if limit is None:
            return None
        key = (self.ledger.url, tier, limit)
        with _semaphores_lock:
            return _semaphores.setdefault(key, threading.BoundedSemaphore(limit))

    def claim(self, conn: Connection, tier: str) -> int | None:
        """Take a slot of `tier` inside the caller's (write) transaction: its id, NO_SLOT if the tier is
        unlimited, or None when every slot is held."""
        limit = self.limits.get(tier)
        if limit is None:
            return NO_SLOT
        now = clock.epoch()
        conn.execute(tier_slots.delete().where(tier_slots.c.tier == tier, tier_slots.c.lease_until < now))
        held = conn.execute(sa.select(sa.func.count()).where(tier_slots.c.tier == tier)).scalar() or 0
        if held >= limit:
            return None
        values = {"tier": tier, "holder": self.holder, "acquired": now_iso(), "lease_until": now + self.lease_s}
        slot = conn.execute(tier_slots.insert(), values).inserted_primary_key[0]
        with self._lock:
            self._held.add(slot)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew, name="tierflow-slot-leases", daemon=True)
                self._renewer.start()
        return int(slot)

    def release(self, conn: Connection, slot: int) -> None:
        """Give a slot back inside the caller's transaction."""
        if slot == NO_SLOT:
            return
        conn.execute(tier_slots.delete().where(tier_slots.c.id == slot))
        self.forget(slot)

    def forget(self, slot: int | None) -> None:
        """Stop renewing a slot's lease (given back, or never taken because its transaction rolled back)."""
        if not slot:
            return
        with self._lock:
            self._held.discard(slot)

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
                        .where(tier_slots.c.id.in_(held))
                        .values(lease_until=clock.epoch() + self.lease_s)
                    )
            except Exception:  # a busy or vanished ledger: the next round tries again
                continue


def in_flight(ledger: Ledger) -> dict[str, int]:
    """Slots held now per tier (leases that have not lapsed), for `tierflow limits show`."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            sa.select(tier_slots.c.tier, sa.func.count())
            .where(tier_slots.c.lease_until >= clock.epoch())
            .group_by(tier_slots.c.tier)
        ).all()
    return {tier: int(count) for tier, count in rows}
