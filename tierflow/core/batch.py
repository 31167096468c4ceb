"""Provider batch APIs (Anthropic Message Batches, OpenAI Batch): about half price, results within 24 h.

A batched phase submits every request that is neither answered (cached, or kept by an earlier run as a
direct call's would be: `Caller.replay_kept`) nor already in a submitted batch,
records each item against its request's cache key (before sending, as `submitting`, so that a crash between
the provider accepting a batch and tierflow recording its id cannot orphan it), and polls with backoff. That record
is the item's claim (`_claim_items`): written only if no other process recorded the item since this one looked, so
of two runs started together exactly one sends it, and the other says so (`ELSEWHERE`). A
rerun of the same requests, or `tierflow resume RUN`, finds the submitted batch by those keys and collects
it without resubmitting. An ended batch's results are read whole before any is recorded (a download cut off or
refused is tried again: `providers.download`); if they cannot be, the phase fails naming the batch and the
`tierflow resume RUN` that collects its answers, paid for and kept by the provider (`BatchResultsUnavailable`).
Every answer is judged like a direct call's (`Caller.judge`: schema and checks) and recorded with its
outcome; an item that errored or failed goes on through the ordinary call path (`Caller.resolve`: one
informed retry, then escalation), run directly. Expired or cancelled items are listed, and the next run
resubmits only those. Reservations go through `Caller.reserve`, so a `downgrade` budget downgrades
batch items as it does direct calls, and a prompt too long for its model is refused there as a direct call's is
(`context.check_fits`): that item alone is left out of the batch, with its error (`BatchOutcome.too_long`), and
the others are sent. An item the provider refuses as too long is not retried: it would be refused again. Nor is
it sent by a later run (`--retry-failed` too) while its request is the same, model and prompt: that run reports the
same refusal (`_refused_before`), until the prompt changes (the note is trimmed) or the phase goes to another tier.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from tierflow.core import telemetry
from tierflow.core.budget import HOST, _process_exists
from tierflow.core.calls import Answer, CacheEntry, Caller, _cache_key
from tierflow.core.checks import Check
from tierflow.core.context import refused
from tierflow.core.errors import (
    BatchResultsUnavailable,
    BudgetExceeded,
    ContextWindowExceeded,
    LedgerUnreachable,
    ProviderError,
    ProviderUnavailable,
    TierflowError,
)
from tierflow.core.ledger import SUBMITTED, batch_items, database_seconds, insert_if_absent, now_iso
from tierflow.core.providers import Completion, Request, answered_status, backoff_s
from tierflow.core.routing import Route, route_to_tier
from tierflow.core.scope import closing_write

log = logging.getLogger("tierflow")

ELSEWHERE = "another process is submitting it in a batch; run again to collect it"
"""Why a batch item has no answer when another process claimed it first: its run collects it, or a rerun will."""


@dataclass(frozen=True)
class BatchCall:
    """One request of a batched phase."""

    key: str
    """Caller's handle for the answer (a pseudonymous label: custom ids are sent to the provider)."""
    system: str
    prompt: str
    output: type[BaseModel]
    cache_prefix: str = ""
    subject: str = ""
    checks: tuple[Check, ...] = ()
    retry_failed: bool | None = None
    """Pay again for an answer an earlier run kept without passing, for this request alone (None: as the run's
    settings say; `Caller.resolve`)."""


@dataclass
class BatchOutcome:
    answers: dict[str, Answer] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    """key -> why it has no answer (expired, cancelled, failed even when retried alone)."""
    pending: list[str] = field(default_factory=list)
    """Batch ids still running when the caller chose not to wait."""
    submitted: list[str] = field(default_factory=list)
    """Batch ids this call submitted."""
    too_long: dict[str, ContextWindowExceeded] = field(default_factory=dict)
    """key -> why its prompt does not fit the model's context window: never sent (tierflow's count), or refused by
    the provider (its count). Each is in `failed` too; a flow that knows why the prompt is long explains it."""


def run_batch(
    caller: Caller,
    calls: list[BatchCall],
    *,
    phase: str,
    complexity: str,
    wait: bool = True,
    poll_interval: float = 2.0,
    max_interval: float = 60.0,
    timeout: float = 24 * 3600,
) -> BatchOutcome:
    """Answer `calls` through the provider's batch API; see the module docstring."""
    outcome = BatchOutcome()
    todo: dict[str, tuple[BatchCall, Route, Request, str]] = {}
    for call in calls:
        routed, request = caller.build(
            phase=phase,
            complexity=complexity,
            system=call.system,
            prompt=call.prompt,
            output=call.output,
            cache_prefix=call.cache_prefix,
        )
        cache_key = _cache_key(routed, request)
        # Judged by this call's checks: an answer cached before a check it fails was added is not reused.
        hit = caller.reuse(routed, request, cache_key, call.subject, output=call.output, checks=call.checks)
        if hit is not None:
            outcome.answers[call.key] = hit.answer
        elif (
            kept := caller.replay_kept(
                routed, request, call.output, call.subject, checks=call.checks, retry_failed=call.retry_failed
            )
        ) is not None:
            outcome.answers[call.key] = kept  # passed on a retry or a dearer tier, or kept failing, in an earlier run
        elif (cut := caller.known_cut_off(routed, request, retry_failed=call.retry_failed)) is not None:
            outcome.failed[call.key] = str(cut)  # cut off on every tier in an earlier run, at the same limits
        else:
            todo[cache_key] = (call, routed, request, cache_key)
    for cache_key, error in _refused_before(caller, todo).items():
        call = todo.pop(cache_key)[0]
        outcome.too_long[call.key], outcome.failed[call.key] = error, str(error)
    if not todo:
        return outcome

    submitted, elsewhere, ended = _submitted(caller, list(todo))
    for cache_key in elsewhere:
        outcome.failed[todo[cache_key][0].key] = ELSEWHERE
    fresh = _reserve(caller, [v for k, v in todo.items() if k not in submitted and k not in elsewhere], outcome)
    by_provider: dict[str, list[tuple[BatchCall, Route, Request, str, Any]]] = defaultdict(list)
    for item in fresh:
        by_provider[item[1].provider].append(item)
        todo[item[3]] = item[:4]  # a downgraded item is collected for the tier it went to
    for provider_name, items in by_provider.items():
        batch_id, sent = _submit(caller, provider_name, items, phase, ended)
        outcome.failed.update({item[0].key: ELSEWHERE for item in items if item[3] not in sent})
        if batch_id is None:
            continue
        outcome.submitted.append(batch_id)
        log.info("%s: submitted %s batch %s with %d requests", phase, provider_name, batch_id, len(sent))
        submitted.update(dict.fromkeys(sent, batch_id))

    batches: dict[str, list[str]] = defaultdict(list)
    for cache_key, batch_id in submitted.items():
        batches[batch_id].append(cache_key)
    for batch_id, keys in batches.items():
        with caller.ledger.reading() as conn:
            provider_name = conn.execute(
                sa.select(batch_items.c.provider).where(batch_items.c.batch_id == batch_id).limit(1)
            ).scalar_one()
        if not _await(caller, provider_name, batch_id, wait, poll_interval, max_interval, timeout):
            outcome.pending.append(batch_id)
            for k in keys:
                outcome.failed[todo[k][0].key] = f"waiting for batch {batch_id}"
            continue
        _collect(caller, provider_name, batch_id, {k: todo[k] for k in keys}, outcome)
    return outcome


def custom_id(call: BatchCall, index: int) -> str:
    """Providers accept `^[a-zA-Z0-9_-]{1,64}$`."""
    return f"{re.sub(r'[^A-Za-z0-9_-]+', '-', call.key)[:48]}-{index}"


def _refused_before(
    caller: Caller, todo: dict[str, tuple[BatchCall, Route, Request, str]]
) -> dict[str, ContextWindowExceeded]:
    """Cache key -> the provider's refusal, for the requests it refused as too long when an earlier run sent them on
    the tier they are routed to now (`remembered_refusals`): sent again, each would be refused again."""
    found = remembered_refusals(caller, {key: routed for key, (_, routed, _, _) in todo.items()})
    for key, error in found.items():
        call, routed, _, _ = todo[key]
        log.warning("%s: %s is not sent again, unchanged since refused: %s", routed.phase, call.key, error)
    return found


def remembered_refusals(caller: Caller, routes: dict[str, Route]) -> dict[str, ContextWindowExceeded]:
    """Cache key -> the provider's refusal, for each request (by its cache key, with the route it takes now) that
    the provider refused as too long when an earlier run sent it in a batch on that tier: a batch does not send it
    again (and a plan does not price it), since it would be refused again (and billed, by a provider that bills
    refusals). The key covers the model and the whole prompt, so a trimmed note, or another tier, is sent."""
    if not routes:
        return {}
    with caller.ledger.reading() as conn:
        rows = conn.execute(
            sa.select(batch_items.c.key, batch_items.c.tier, batch_items.c.error).where(
                batch_items.c.key.in_(list(routes)), batch_items.c.status == "refused", batch_items.c.error.is_not(None)
            )
        ).all()
    found: dict[str, ContextWindowExceeded] = {}
    for row in rows:
        routed = routes[row.key]
        if row.tier != routed.tier:
            continue  # refused on the tier a `downgrade` budget sent it to, which this run may not
        found[row.key] = refused(routed, row.error)
    return found


def refused_before(caller: Caller, routed: Route, request: Request) -> ContextWindowExceeded | None:
    """The provider's refusal of `request` as too long on the tier `routed` takes, remembered from an earlier run's
    batch (`remembered_refusals`); None when a batch would send it."""
    key = _cache_key(routed, request)
    return remembered_refusals(caller, {key: routed}).get(key)


def _submitted(caller: Caller, keys: list[str]) -> tuple[dict[str, str], set[str], dict[str, str]]:
    """Cache key -> batch id, for requests already in a submitted batch; the keys a live process is submitting
    right now; and cache key -> batch id, for requests an earlier batch ended without an answer (expired,
    canceled ...): the row a claim to send one again expects to find (`_claim_items`). A batch recorded as
    `submitting` by a process that is gone is looked for in the provider's batch list first: found, it counts
    as submitted; not found, its items are sent again."""
    # Each batch still `submitting` that holds one of these requests, whole, as it was sent: a look by its size
    # (Anthropic's) would miss it for the requests of this run alone (one of them edited since), and its claim,
    # forgotten, would leave it paid for and uncollected.
    claims = sa.select(batch_items.c.batch_key).where(batch_items.c.key.in_(keys), batch_items.c.status == "submitting")
    with caller.ledger.reading() as conn:
        rows = conn.execute(
            sa.select(batch_items).where(batch_items.c.batch_key.in_(claims), batch_items.c.status == "submitting")
        ).all()
        now_s = database_seconds(conn)
    elsewhere: set[str] = set()
    pending: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        pending[row.batch_key].append(row)
    for batch_key, group in pending.items():
        if _submitter_alive(group[0], now_s):
            elsewhere.update(r.key for r in group)
        else:
            _reconcile(caller, batch_key, group)
    with caller.ledger.reading() as conn:
        found = conn.execute(
            sa.select(batch_items.c.key, batch_items.c.batch_id, batch_items.c.status).where(
                batch_items.c.key.in_(keys)
            )
        ).all()
    found = [row for row in found if row.key not in elsewhere]
    submitted = {row.key: row.batch_id for row in found if row.status == "submitted"}
    # A `submitting` row seen now is one a process recorded since the look above: this process does not send it.
    elsewhere.update(row.key for row in found if row.status == "submitting")
    ended = {row.key: row.batch_id for row in found if row.status not in SUBMITTED}
    return submitted, elsewhere, ended


SUBMITTING_GRACE_S = 15 * 60.0
"""How long a batch recorded as `submitting` by a process on another host is taken to be still on its way."""


def _submitter_alive(row: Any, now_s: float) -> bool:
    """Whether the process that recorded a `submitting` batch may still be submitting it."""
    if row.holder_host == HOST and row.holder_pid == os.getpid():
        return row.batch_key in _SENDING
    if row.holder_host == HOST and row.holder_pid is not None:
        return _process_exists(row.holder_pid)
    return now_s - (row.submitted_s or 0.0) < SUBMITTING_GRACE_S


def _reconcile(caller: Caller, batch_key: str, rows: list[Any]) -> str | None:
    """Find an orphaned batch (recorded, then its submitter died) at the provider, and record its id; or, if
    the provider never accepted it, forget it and free its reservations so its items are sent again."""
    found = _look(caller, batch_key, rows)
    if found is None:
        if _forget(caller, batch_key):
            log.warning(
                "batch %s was recorded but never reached %s; its requests are sent again", batch_key, rows[0].provider
            )
        else:
            log.info("batch %s was recorded as found by another run, which collects it", batch_key)
    return found


def _look(caller: Caller, batch_key: str, rows: list[Any]) -> str | None:
    """Look for the batch recorded (`rows`, still `submitting`) as `batch_key` in its provider's batch list, as
    `find_batch` matches it, and record its id if found; None if the provider does not have it."""
    provider_name = rows[0].provider
    with caller.ledger.reading() as conn:
        known = {r.batch_id for r in conn.execute(sa.select(batch_items.c.batch_id).distinct()).all()}
    # The batches the provider listed before this one was sent are not it (`_listed`).
    known.update(batch_id for r in rows for batch_id in (r.seen or "").split())
    found = caller.provider(provider_name).find_batch(
        batch_key, [r.custom_id for r in rows], min(r.submitted_s or 0.0 for r in rows), known
    )
    if found is not None:
        log.warning("found batch %s (recorded as %s) at %s", found, batch_key, provider_name)
        _accepted(caller, batch_key, found)
    return found


def _forget(caller: Caller, batch_key: str) -> int:
    """Drop the claim of a batch the provider does not have, and release its items' reservations: only the items
    still `submitting`. Another run's look may have found the batch and recorded it since (`_accepted`), its own
    look missing it on a lagging list: those items are that batch's, to be collected, never sent again."""
    with caller.ledger.transaction() as conn:
        gone = conn.execute(
            batch_items.delete()
            .where(batch_items.c.batch_key == batch_key, batch_items.c.status == "submitting")
            .returning(batch_items.c.reservation_id)
        ).all()
    for (reservation_id,) in gone:
        if reservation_id is not None:
            caller.budgets.release(reservation_id)
    return len(gone)


def _accepted(caller: Caller, batch_key: str, batch_id: str) -> None:
    with caller.ledger.transaction() as conn:
        conn.execute(
            batch_items.update()
            .where(batch_items.c.batch_key == batch_key)
            .values(batch_id=batch_id, status="submitted")
        )


def _reserve(
    caller: Caller, items: list[tuple[BatchCall, Route, Request, str]], outcome: BatchOutcome
) -> list[tuple[BatchCall, Route, Request, str, Any]]:
    """Reserve every item's worst case at batch prices; all or nothing, but for an item whose prompt does not fit
    its model's window: that one is left out (in `outcome`), as a direct call is refused alone."""
    reserved: list[tuple[BatchCall, Route, Request, str, Any]] = []
    try:
        for call, routed, request, cache_key in items:
            try:
                reservation, routed, request = caller.reserve(routed, request, call.subject, batch=True)
            except ContextWindowExceeded as exc:
                log.warning("%s: %s is left out of the batch: %s", routed.phase, call.key, exc)
                outcome.too_long[call.key], outcome.failed[call.key] = exc, str(exc)
                continue
            reserved.append((call, routed, request, cache_key, reservation))
    except BaseException as exc:
        for item in reserved:
            caller.budgets.release(item[4].id)
        if isinstance(exc, BudgetExceeded):
            raise BudgetExceeded(_whole_batch(exc, items, reserved), budget=exc.budget, scope=exc.scope) from exc
        raise
    return reserved


def _whole_batch(
    exc: BudgetExceeded,
    items: list[tuple[BatchCall, Route, Request, str]],
    reserved: list[tuple[BatchCall, Route, Request, str, Any]],
) -> str:
    """`exc`'s message for a batch: a batch is sent whole, so its items are reserved together, and the budget's
    `reserved` counted the items of this batch that fitted before one did not (released again, nothing sent)."""
    held = sum((item[4].estimate.usd or Decimal(0) for item in reserved), Decimal(0))
    fitted = (
        f"{len(reserved)} fitted (${held:.4f} at worst, at batch prices: counted as `reserved` below, and released "
        "again) before the next did not"
        if reserved
        else "not even the first fitted"
    )
    return (
        f"the batch of {len(items)} {items[0][1].phase} requests is sent whole, so all are reserved at once, and "
        f"they do not fit: {fitted}; nothing was sent. {exc} Or run with `--mode direct`, which sends the "
        "requests one by one as the budget allows."
    )


def _submit(
    caller: Caller,
    provider_name: str,
    items: list[tuple[BatchCall, Route, Request, str, Any]],
    phase: str,
    ended: dict[str, str],
) -> tuple[str | None, set[str]]:
    """Claim the items (record them `submitting`, under a new batch key), send those claimed, then record the
    provider's id. Returns the batch id (None if another process claimed every item first) and the cache keys
    sent; an item another process claimed first is not sent, and its reservation is released.

    If the answer to the submission is lost (a timeout, a reset connection) or is a 5xx, the provider may still
    have accepted the batch: it is looked for before the submission is sent again or counts as failed (`_send`).
    If the process dies between sending and recording, the next run finds it the same way (`_submitted`).
    """
    ids = {item[3]: custom_id(item[0], i) for i, item in enumerate(items)}
    batch_key = uuid.uuid4().hex
    seen = _listed(caller, provider_name, items)
    _SENDING.add(batch_key)  # before the record exists, until its id is in: never an orphan to this process
    try:
        sent = _claim_items(caller, provider_name, items, phase, ids, batch_key, ended, seen)
        for call, _, _, _, reservation in (item for item in items if item[3] not in sent):
            log.info("%s: %s is being submitted by another process", phase, call.key)
            caller.budgets.release(reservation.id)
        if not sent:
            return None, sent
        requests = {ids[cache_key]: request for _, _, request, cache_key, _ in items if cache_key in sent}
        return _send(caller, provider_name, requests, batch_key), sent
    finally:
        _SENDING.discard(batch_key)


def _listed(caller: Caller, provider_name: str, items: list[tuple[BatchCall, Route, Request, str, Any]]) -> set[str]:
    """The batches the provider lists before this one is sent (`batches_since`, back as far as a look for it goes):
    recorded with its claim, so that a look for it (after a 5xx, or a crashed submitter's) never takes one of them,
    another batch of as many requests made on the same key minutes before, for it. Nothing is sent if the list
    cannot be read: the items' reservations are released and the error raised."""
    try:
        with caller.ledger.reading() as conn:
            now_s = database_seconds(conn)
        return caller.provider(provider_name).batches_since(now_s)
    except BaseException:
        for item in items:
            caller.budgets.release(item[4].id)
        raise


def _claim_items(
    caller: Caller,
    provider_name: str,
    items: list[tuple[BatchCall, Route, Request, str, Any]],
    phase: str,
    ids: dict[str, str],
    batch_key: str,
    ended: dict[str, str],
    seen: set[str],
) -> set[str]:
    """Record each item `submitting` if it is still as `_submitted` saw it: no row for its cache key, or the row
    of the batch that ended without answering it (`ended`). Returns the cache keys claimed. An item another process
    recorded since is left to that process, and its row left alone: each item is sent by one process only. Each
    row keeps the batches the provider listed before this one was sent (`seen`, `_listed`).

    One transaction, the items in cache-key order: on PostgreSQL a second claimer waits on the first's rows
    (never each on the other's) and, once they commit, finds them taken."""
    claimed: set[str] = set()
    with caller.ledger.transaction() as conn:
        submitted_s = database_seconds(conn)
        for call, routed, _, cache_key, reservation in sorted(items, key=lambda item: item[3]):
            values = {
                "custom_id": ids[cache_key],
                "batch_id": f"pending-{batch_key}",
                "provider": provider_name,
                "run_id": caller.settings.run_id,
                "phase": phase,
                "tier": routed.tier,
                "subject": call.subject,
                "reservation_id": reservation.id,
                "downgraded_from": reservation.downgraded_from,
                "status": "submitting",
                "created": now_iso(),
                "batch_key": batch_key,
                "holder_pid": os.getpid(),
                "holder_host": HOST,
                "submitted_s": submitted_s,
                "error": None,
                "seen": " ".join(sorted(seen)),
            }
            if cache_key in ended:  # sent again: the row of the batch that ended, unless claimed since
                again = batch_items.update().where(
                    batch_items.c.key == cache_key,
                    batch_items.c.batch_id == ended[cache_key],
                    batch_items.c.status.not_in(SUBMITTED),
                )
                won = conn.execute(again.values(values)).rowcount == 1
            else:
                won = insert_if_absent(conn, batch_items, {"key": cache_key, **values})
            if won:
                claimed.add(cache_key)
    return claimed


REFUSED_BEFORE_ACTING = (429, 529)
"""HTTP statuses of a request refused before the provider acted on it: too many requests, Anthropic's overloaded."""


def _send(caller: Caller, provider_name: str, requests: dict[str, Request], batch_key: str) -> str:
    """Send the claimed batch, then record the provider's id.

    A creation the provider refused (HTTP 429, or Anthropic's 529 overloaded: refused before acting) is sent
    again, after a pause, up to the provider's `max_retries` more times, and never looked for. One whose answer
    was lost (a timeout, a reset) or was a 5xx may have created the batch all the same (a gateway in front of the
    API, or the API itself on a slow create, answers 502 or 504 after the work is done): it is looked for first
    (`_look`, as a crashed submitter's is), and found, it is the batch. Not found after a 5xx, it is sent again,
    as after a 429. Not found after a lost answer, or after a 5xx on the last try, it may still have been made (a
    provider's list can lag behind its creations), so the claim stays `submitting`, its reservations held, and the
    error says that a rerun looks for the batch before sending it again (`_submitted`, `_reconcile`): forgotten,
    a batch made would be sent and paid for twice, its first answers never collected. So it stays, too, when the
    look itself fails, and when the last try is refused after an earlier one that may have made it. Refused (a 429
    or 529 on the last try, or another 4xx), or failed before it was sent (an `unsent` error: OpenAI's upload of
    its input file, tried with the SDK's retries already), with no earlier try that may have made it, the claim is
    forgotten, its reservations released, and the error raised."""
    retries = caller.config.settings.providers[provider_name].max_retries
    made = False  # whether a try may have made the batch, though no look found it
    for attempt in range(retries + 1):
        try:
            batch_id = caller.provider(provider_name).submit_batch(requests, key=batch_key)
        except Exception as exc:
            status = answered_status(exc)
            # 429, or Anthropic's 529 (overloaded): refused before anything was made, so never looked for. A look
            # matches Anthropic's batches by size and time only: another batch running would be taken for this one.
            refusal = status in REFUSED_BEFORE_ACTING
            # Failed before the creation was sent, with the SDK's retries: nothing to look for, nor to try again.
            unsent = isinstance(exc, ProviderError) and exc.unsent
            again = not unsent and attempt < retries and status is not None and (refusal or status >= 500)
            if again:
                pause = backoff_s(attempt)
                next_step = "sending it again" if refusal else "looking for it (sent again if not made)"
                # The status alone: the error's text says "after N retries", which this loop is still counting.
                log.warning(
                    "sending a batch to %s was answered HTTP %s (try %d of %d); %s in %.1f s",
                    provider_name, status, attempt + 1, retries + 1, next_step, pause,
                )  # fmt: skip
                time.sleep(pause)  # a 5xx's batch, if made, has time to show in the list
                if refusal:
                    continue
            with caller.ledger.reading() as conn:
                rows = conn.execute(sa.select(batch_items).where(batch_items.c.batch_key == batch_key)).all()
            try:
                found = None if refusal or unsent else _look(caller, batch_key, rows)
            except Exception:
                # Whether the provider has it is unknown: the record stays `submitting`, for a later run to settle.
                if isinstance(exc, ProviderError):
                    raise _unsettled(caller, provider_name, exc, len(requests)) from exc
                raise exc from None
            if found is not None:
                return found
            # A lost answer, or a 5xx: made or not, the list may not show it yet.
            made = made or (
                isinstance(exc, ProviderUnavailable) and not (refusal or unsent) and (status is None or status >= 500)
            )
            if again:
                continue
            if made:  # this try, or an earlier one: a rerun looks for it again before sending anything
                log.warning(
                    "batch %s may have reached %s unlisted; a rerun looks for it first", batch_key, provider_name
                )
                raise _unsettled(caller, provider_name, exc, len(requests)) from exc
            log.warning("batch %s never reached %s; a rerun sends its requests again", batch_key, provider_name)
            _forget(caller, batch_key)
            raise
        _accepted(caller, batch_key, batch_id)
        return batch_id
    raise AssertionError("unreachable")


def _unsettled(caller: Caller, provider_name: str, exc: ProviderError, count: int) -> ProviderUnavailable:
    """The error of a batch whose creation failed in a way that may have made it all the same (`_send`), its claim
    kept `submitting` and its reservations held: what a rerun does about it."""
    rerun = f"`{caller.settings.resume_command()}`" if caller.settings.run_id else "running the same requests again"
    return ProviderUnavailable(
        exc.provider,
        exc.model,
        exc.cause,
        hint=f"{provider_name} may have made the batch all the same, and not list it yet: its {count} requests stay "
        f"reserved, and {rerun} looks for it in {provider_name}'s batch list before sending them again (found, it is "
        "collected, and paid for once)",
    )


_SENDING: set[str] = set()
"""Batch keys this process is submitting now (its other threads must not take them for orphans)."""


def _await(
    caller: Caller, provider_name: str, batch_id: str, wait: bool, interval: float, max_interval: float, timeout: float
) -> bool:
    provider = caller.provider(provider_name)
    deadline = time.monotonic() + timeout
    while True:
        ended, status = provider.batch_ended(batch_id)
        if ended:
            return True
        if not wait or time.monotonic() >= deadline:
            log.info("batch %s is %s; collect it later with `tierflow resume`", batch_id, status)
            return False
        time.sleep(interval)
        interval = min(interval * 2, max_interval)


def _collect(
    caller: Caller,
    provider_name: str,
    batch_id: str,
    items: dict[str, tuple[BatchCall, Route, Request, str]],
    outcome: BatchOutcome,
) -> None:
    """Record every result of an ended batch, each claimed in its own settle transaction: two processes
    collecting one batch (a run waiting on it and `tierflow resume`) record each item once."""
    with caller.ledger.reading() as conn:
        rows = {
            r.custom_id: r
            for r in conn.execute(sa.select(batch_items).where(batch_items.c.batch_id == batch_id)).all()
            if r.key in items
        }
    requests = {cid: items[row.key][2] for cid, row in rows.items()}
    try:
        # Every result is read before any is recorded: a download cut off halfway (retried by the provider, then
        # by `tierflow resume`) has recorded nothing, so no item is recorded twice.
        results = list(caller.provider(provider_name).batch_results(batch_id, requests))
    except ProviderError as exc:
        raise _undownloaded(caller, provider_name, batch_id, exc) from exc
    for result in results:
        row = rows.get(result.custom_id)
        if row is None:
            continue
        call, routed, request, cache_key = item = _as_sent(caller, items[row.key], row)
        answered = result.status == "succeeded" and result.completion is not None
        too_long = result.status == "errored" and result.too_long
        status = "done" if answered else "refused" if too_long else result.status
        status = "retried" if status == "errored" else status
        # A refusal is kept in the provider's words (`_refused_before`): a rerun of this request reports it again.
        claim = _claim(cache_key, batch_id, status, error=result.error if too_long else None)
        try:
            if answered:
                _settle_item(caller, batch_id, row, item, result.completion, claim, outcome)
            elif too_long:
                # Refused unbilled, and sent alone it would be refused again: this item has no answer.
                _release(caller, row, claim, status)
                error = refused(routed, result.error)
                log.warning("batch item %s of %s has no answer: %s", call.key, batch_id, error)
                outcome.too_long[call.key], outcome.failed[call.key] = error, str(error)
            elif result.status == "errored":
                _release(caller, row, claim, status)
                outcome.answers[call.key] = _retry_alone(caller, call, routed, result.error)
            else:
                _release(caller, row, claim, status)
                outcome.failed[call.key] = f"batch {batch_id} {result.status}; run again to resubmit it"
        except _Taken:
            log.info("batch item %s of %s was collected by another process", call.key, batch_id)
            hit = caller.reuse(routed, request, cache_key, call.subject, output=call.output, checks=call.checks)
            if hit is not None:
                outcome.answers[call.key] = hit.answer
                continue
            outcome.failed[call.key] = f"batch {batch_id} was collected by another process; run again to use it"
        except TierflowError as exc:
            # This item alone: its retry or escalation found no usable answer, or no budget for one. The batch's
            # other answers are paid for already, so they are still recorded and returned.
            log.warning("batch item %s of %s has no answer: %s", call.key, batch_id, exc)
            outcome.failed[call.key] = str(exc)


def _undownloaded(caller: Caller, provider_name: str, batch_id: str, exc: ProviderError) -> BatchResultsUnavailable:
    """The error of an ended batch whose results could not be downloaded: its answers are paid for, and waiting
    at the provider for the resume that collects them."""
    tries = caller.config.settings.providers[provider_name].max_retries + 1
    tried = f" (tried {tries} times)" if exc.retryable and tries > 1 else ""
    return BatchResultsUnavailable(
        provider_name,
        "batch",
        f"batch {batch_id} has ended, but downloading its results failed{tried}: {exc.cause}",
        hint=f"Its answers are paid for, and {provider_name} keeps them: {_collects(caller)}, without sending them "
        "again",
        batch_id=batch_id,
    )


def _collects(caller: Caller) -> str:
    """What collects the answers of a batch that are paid for and not recorded: the run's resume, or a rerun."""
    if caller.settings.run_id:
        return f"`{caller.settings.resume_command()}` collects them"
    return "running the same requests again collects them"


def _release(caller: Caller, row: Any, claim: Any, status: str) -> None:
    """Release an unanswered item's reservation under its claim, waiting out a ledger restart (`closing_write`). A
    release whose commit went through unacknowledged is not tried again: its claim would find the item moved (by
    this process) and take it for another's."""
    release = lambda: caller.budgets.release(row.reservation_id, also=claim)  # noqa: E731
    closing_write(caller.ledger, release, lambda: _moved(caller, row, status))


def _moved(caller: Caller, row: Any, status: str) -> bool:
    """Whether this process's claim moved the item to `status` (`_claim`): the transaction that held the claim
    committed, though the connection went before its acknowledgement came."""
    with caller.ledger.reading() as conn:
        mine = conn.execute(
            sa.select(batch_items.c.key).where(
                batch_items.c.key == row.key,
                batch_items.c.batch_id == row.batch_id,
                batch_items.c.status == status,
                batch_items.c.holder_pid == os.getpid(),
                batch_items.c.holder_host == HOST,
            )
        ).first()
    return mine is not None


def _settle_item(
    caller: Caller,
    batch_id: str,
    row: Any,
    item: tuple[BatchCall, Route, Request, str],
    completion: Completion,
    claim: Any,
    outcome: BatchOutcome,
) -> None:
    """Judge, record, settle and cache one answered item (under its claim); a failed one goes on directly."""
    call, routed, request, _ = item
    cost = caller._cost(routed, completion, batch=True)
    verdict = caller.judge(routed, request, completion, call.output, call.checks, cost=cost, cached=False)
    record = caller._record(
        routed,
        completion.usage,
        cost,
        0.0,
        call.subject,
        row.created,
        batch_id=batch_id,
        downgraded_from=row.downgraded_from,
        outcome=verdict.outcome,
        checks_failed=verdict.checks_failed,
    )
    # Under the key of the request sent: after a downgrade, the cheaper tier's model and output limit.
    cache = CacheEntry(_cache_key(routed, request), routed.model_ref, completion.text, completion.data, request)

    def settle() -> None:
        caller.budgets.settle(row.reservation_id, record, cache=cache if verdict.ok else None, also=claim)

    try:
        # Waits out a ledger restart, as a direct call's answer does. Whether a commit whose acknowledgement was lost
        # went through is read from the item's claim: a row's times alone may match another item's (a coarse clock).
        closing_write(caller.ledger, settle, lambda: _moved(caller, row, "done"))
    except LedgerUnreachable as gone:
        raise gone.saying(
            f"The answers of batch {batch_id} not recorded are paid for, and {routed.provider} keeps them: once the "
            f"ledger is back, {_collects(caller)}, without sending them again"
        ) from gone.__cause__
    telemetry.record_call(record, provider_kind=routed.provider_kind)
    outcome.answers[call.key] = (
        verdict.answer
        if verdict.ok
        else caller.resolve(
            routed,
            request,
            output=call.output,
            checks=call.checks,
            subject=call.subject,
            first=verdict,
            retry_failed=call.retry_failed,
        )
    )


def _as_sent(
    caller: Caller, item: tuple[BatchCall, Route, Request, str], row: Any
) -> tuple[BatchCall, Route, Request, str]:
    """The item's route and request as they were sent: a process collecting a batch another submitted (`tierflow
    resume`) rebuilds the request of rows a `downgrade` budget moved to a cheaper tier."""
    call, routed, request, cache_key = item
    if row.tier == routed.tier or row.tier not in caller.config.settings.tiers:
        return item
    sent = route_to_tier(
        caller.config,
        phase=routed.phase,
        complexity=routed.complexity,
        tier=row.tier,
        rule=f"budget downgrade from {row.downgraded_from or routed.tier}",
    )
    return call, sent, replace(request, model=sent.model, max_output_tokens=sent.max_output_tokens), cache_key


class _Taken(Exception):
    """Another process claimed this batch item first: it records the item, this one must not."""


def _claim(cache_key: str, batch_id: str, status: str, *, error: str | None = None) -> Any:
    """What claims a collected item inside its settle transaction: it moves the item from `submitted` to
    `status` (with its `error`), marked as this process's, and aborts the transaction (raising `_Taken`) when
    another process moved it first."""

    def claim(conn: Any) -> None:
        moved = conn.execute(
            batch_items.update()
            .where(
                batch_items.c.key == cache_key,
                batch_items.c.batch_id == batch_id,
                batch_items.c.status == "submitted",
            )
            .values(status=status, error=error, holder_pid=os.getpid(), holder_host=HOST)
        )
        if moved.rowcount != 1:
            raise _Taken(cache_key)

    return claim


def _retry_alone(caller: Caller, call: BatchCall, routed: Route, why: str) -> Answer:
    log.warning("batch item %s failed (%s); retrying it on its own", call.key, why)
    return caller.ask(
        phase=routed.phase,
        complexity=routed.complexity,
        system=call.system,
        prompt=call.prompt,
        output=call.output,
        cache_prefix=call.cache_prefix,
        subject=call.subject,
        routed=routed,
        checks=call.checks,
    )
