"""The bookkeeping around one provider call, as one scope with one exit path.

A call takes several things before the provider is asked: this process's gate for the tier, a tier slot in
the ledger, a budget reservation (with its lease renewed while the call is in flight). Once the answer has
arrived it owes the ledger one row. `CallScope` holds each of these from the moment it is taken and gives
every one back when the scope exits, whatever ended it: a passing answer, a check or a parser that raised, a
Prefect timeout raised into the thread between the reservation and the call, a settle transaction that lost
its connection. On exit it

- writes the billed answer's row (whatever its outcome; `error` until a verdict replaces it), settles the
  reservation to it, caches a passing answer, gives the slot back, and records lost attempts, in one
  transaction; or, when no answer arrived, releases the reservation and the slot the same way;
- tries that transaction again when the database drops it or cannot be reached (a restart, a failover), without
  writing the row twice, for as long as the ledger's `Outage` waits (the config's `ledger_outage_s`): the answer
  waits in memory meanwhile;
- stops renewing the reservation's and the slot's leases, and opens the local gate.

Once the answer has arrived (`called`), the slot is handed to the next call of this process and the gate opens
before the verdict and the settlement; the exit then gives back only a slot that no call took.

A new check, a new outcome or a new signal added between taking and giving back cannot leave money
unrecorded or a slot held, because nothing between them gives anything back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from sqlalchemy.engine import Connection

from tierflow.core.budget import Budgets, Reservation
from tierflow.core.errors import LedgerUnreachable
from tierflow.core.ledger import CallRecord, Ledger, contended, lost_connection
from tierflow.core.routing import Route
from tierflow.core.slots import NO_SLOT, TierSlots

log = logging.getLogger("tierflow")

CONTENDED_TRIES = 4
"""How often the closing transaction is tried when the database rolls it back for another's sake (`contended`)."""


def closing_write(ledger: Ledger, step: Callable[[], None], landed: Callable[[], bool] | None) -> None:
    """A billed call's closing transaction (`step`: its row, its settlement, what goes with them), tried again when
    the database rolls it back for another's sake (`contended`: at once, `CONTENDED_TRIES` times in all), or drops
    it or cannot be reached (a restart, a failover: after the ledger's `Outage` wait, until it has waited
    `ledger_outage_s` since this write's first failure, when `Outage.wait`'s LedgerUnreachable is raised). After a
    dropped connection, the next try first asks `landed` whether the transaction committed all the same (a row it
    writes is there, say), so that its rows are never written twice. A statement the ledger refuses is raised at
    once: trying again would not mend it."""
    dropped = False
    contentions = 0
    with ledger.outage.trying():  # its patience runs from this write's first failure
        while True:
            try:
                if dropped and landed is not None and landed():
                    return  # it committed before the connection went: never write its rows twice
                step()
                return
            except Exception as error:
                if contended(error) and contentions < CONTENDED_TRIES - 1:
                    # Rolled back for another transaction's sake (a deadlock, a busy file): tried again at once.
                    contentions += 1
                    log.warning("the ledger rolled back a call's closing transaction (%s); trying again", error.orig)
                    ledger.outage.sleep(0.05 * contentions)
                    continue
                if not lost_connection(error):
                    raise
                dropped = True
                ledger.outage.wait(error)  # sleeps until the next try; raises once it has waited `ledger_outage_s`


@dataclass
class CallScope:
    """What one provider call holds, and the one exit path that records and gives it all back."""

    ledger: Ledger
    budgets: Budgets
    slots: TierSlots
    gate: threading.BoundedSemaphore | None = None
    """This process's gate for the call's tier, while it is passed."""
    slot: str | None = NO_SLOT
    """The ledger slot taken with the reservation: its holder token (`TierSlots.claim`)."""
    slot_tier: str = ""
    """The tier of `slot`."""
    reservation: Reservation | None = None
    row: CallRecord | None = None
    """The billed answer's row, once the answer has arrived; the verdict replaces it until the scope exits."""
    cache: Any = None
    """A passing answer's cache entry (`calls.CacheEntry`), written with the row."""
    request: Any = None
    """The request as the phase sent it, with this answer's outcome (`ledger.RequestRecord`), written with the row."""
    text: str | None = None
    """The request's text as the per-request router sees it, kept once under the row's `request_id`."""
    output_mode: tuple[str, str, str] | None = None
    """(provider, model, structured-output form) the answer's call learned the server accepts, written with the row:
    never a transaction of its own between the paid answer and its row, whose failure would lose the row."""
    lost: list[CallRecord] = field(default_factory=list)
    """Rows of attempts sent and never answered (the SDK's own retries), written on exit."""
    settled: bool = False

    def __enter__(self) -> CallScope:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.close(exc)
        finally:
            self.leave_gate()

    # --- taking -----------------------------------------------------------------------------------

    def pass_gate(self, gate: threading.BoundedSemaphore | None, *, blocking: bool = True) -> bool:
        """Pass this process's gate of a tier (None: an unlimited tier); False when it is shut and not `blocking`."""
        if gate is None:
            return True
        if not gate.acquire(blocking=blocking):
            return False
        self.gate = gate
        return True

    def leave_gate(self) -> None:
        """Open the local gate again (once)."""
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.release()

    def claim(self, conn: Connection, chosen: Route) -> bool:
        """Take a slot of the chosen route's tier in the reservation's transaction (`Budgets.reserve_in`'s `claim`)."""
        self.slot, self.slot_tier = self.slots.claim(conn, chosen.tier), chosen.tier
        return self.slot is not None

    def called(self) -> None:
        """The model call has answered: hand the slot to this process's next call and open the local gate now,
        not after the verdict and the settlement (`TierSlots.hand_over`); the exit gives the slot back if no call
        took it."""
        self.slots.hand_over(self.slot_tier, self.slot)
        self.leave_gate()

    def reserved(self, reservation: Reservation) -> None:
        """The reservation taken, noted inside its own transaction: from its commit on, the exit gives it back."""
        self.reservation = reservation

    def renew(self) -> None:
        """Renew the reservation's lease while the call is in flight (the exit stops it)."""
        if self.reservation is not None:
            self.budgets.keep_alive(self.reservation.id)

    # --- the answer -------------------------------------------------------------------------------

    def answered(self, row: CallRecord, *, cache: Any = None, request: Any = None, text: str | None = None) -> None:
        """The billed answer's row as it stands (a passing answer's cache entry, the request recorded with its
        outcome, the request's text for the per-request router): the exit writes them."""
        self.row, self.cache, self.request = row, cache, request
        if text is not None:
            self.text = text

    # --- giving back ------------------------------------------------------------------------------

    def close(self, exc: BaseException | None = None) -> None:
        """Record, settle or release, and give the slot back; idempotent."""
        reservation, slot = self.reservation, self.slot
        try:
            if reservation is not None and not self.settled:
                self._write(reservation)
                self.settled = True
        except Exception:
            if exc is None:
                raise
            # The call's own error says more; the ledger's is logged, and the leases lapse on their own.
            log.exception("could not record or settle a call after %s", type(exc).__name__)
        finally:
            if reservation is not None:
                self.budgets.stop_renewing(reservation.id)
            self.slots.forget(slot)

    def _write(self, reservation: Reservation) -> None:
        row, cache, lost, slot, request, text, mode = (
            self.row,
            self.cache,
            list(self.lost),
            self.slot,
            self.request,
            self.text,
            self.output_mode,
        )

        def also(conn: Connection) -> None:
            self.slots.release(conn, slot)
            for record in lost:
                self.ledger.record(record, conn=conn)
            if row is not None and request is not None:
                self.ledger.remember_request(request, conn=conn)
            if row is not None and row.request_id and text is not None:
                self.ledger.remember_request_text(row.request_id, text, flow=row.flow, phase=row.phase, conn=conn)
            if mode is not None:
                self.ledger.remember_output_mode(*mode, conn=conn)

        if row is None:
            step: Callable[[], None] = lambda: self.budgets.release(reservation.id, also=also)  # noqa: E731
        else:
            step = lambda: self.budgets.settle(reservation.id, row, cache=cache, also=also)  # noqa: E731
        # The answer's row, else the first lost attempt's: the transaction writes either with the rest.
        written = row if row is not None else next(iter(lost), None)
        try:
            closing_write(self.ledger, step, (lambda: self.ledger.landed(written)) if written is not None else None)
        except LedgerUnreachable as gone:
            if row is None:
                raise
            raise gone.saying(
                "Answers that arrived meanwhile were paid for and are not recorded: once the ledger is back, each "
                "counts as a lost call at its worst case (its reservation lapses)"
            ) from gone.__cause__
