"""Outcome labels for the per-request router: did a tier's first answer to a request pass, by the best evidence held.

The phase's checks judge every answer as it arrives (`calls.outcome`). Later evidence about the same answer is
stored as signals linked to its request and tier (`signals.request_id`, `signals.tier`): a pairwise judge's verdict
from a trial (`judge`), the lecturer's edit of the note written from it (`edit`) and their `tierflow_rating`
(`rating`). `label` says which of them decides; `linked` finds each answer's signals.

A signal judges the answer of its run: it labels that run's first answer on its tier to its request. When that
run has none (the note was written from an answer replayed from the answer cache), it labels the latest first
answer on that tier to that request recorded before the signal, the one the cache replayed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tierflow.core.ledger import signals

KINDS = ("edit", "rating", "judge")


@dataclass(frozen=True)
class Answered:
    """A tier's first answer to a request, as the router's training data holds it."""

    id: int
    """`calls.id`."""
    request_id: str
    tier: str
    run_id: str | None
    timestamp: str
    checks_passed: bool


@dataclass(frozen=True)
class Signal:
    kind: str
    passed: bool
    run_id: str | None
    timestamp: str
    detail: str = ""


@dataclass(frozen=True)
class Label:
    passed: bool
    source: str
    """What decided: `checks`, `judge`, `edit` or `rating`."""
    signals: int = 0
    """Signals with a verdict linked to this answer."""

    @property
    def overturned(self) -> bool:
        """A signal turned an answer that passed its checks into a fail."""
        return self.source != "checks" and not self.passed


def label(checks_passed: bool, found: Sequence[Signal]) -> Label:
    """Whether a tier's first answer to a request passed, from its checks and the signals that judge it.

    - The strongest evidence with a verdict decides (`rank`): the person's judgement (a substantial edit of the
      note, above `tierflow.learn.signals.EDIT_FAIL`, or a bad rating, says it did not pass; a good rating says it
      passed), then a judge's verdict (a loss to the reference tier's answer fails; a win or a tie passes), then a
      note left as written or lightly edited (at most `EDIT_PASS`: it passed), then the phase's checks. So a human
      edit outranks a check pass and a judge's win, a good rating outranks a judge's loss, and a note nobody
      changed outranks nothing but the checks' pass (it may simply be unread).
    - Within one rank a fail outweighs a pass: a rewritten note rated good did not pass (the rating rates the
      rewrite), and of two judge verdicts one loss is enough.
    - A pass never turns a failed check into a pass: the checks judged that first answer itself, while a signal
      judges the answer that was kept (after a failed check, a retry's or another tier's).
    - Neutral signals (an edit between the thresholds, a rating of 3, a skipped shadow call) count nowhere.
    """
    if not found or not checks_passed:
        return Label(checks_passed, "checks", len(found))
    top = max(rank(s) for s in found)
    strongest = [s for s in found if rank(s) == top]
    decider = next((s for s in strongest if not s.passed), strongest[0])
    return Label(decider.passed, decider.kind, len(found))


def rank(signal: Signal) -> int:
    """How strong a signal's verdict is (`label`): 3 the person's edit or rating, 2 a judge's, 1 an untouched note."""
    if signal.kind == "judge":
        return 2
    return 1 if signal.kind == "edit" and signal.passed else 3


def linked(conn: Connection, answers: Iterable[Answered]) -> dict[int, list[Signal]]:
    """`calls.id` -> the signals with a verdict that judge that answer (see the module's docstring)."""
    by_key: dict[tuple[str, str], list[Answered]] = defaultdict(list)
    for a in answers:
        by_key[(a.request_id, a.tier)].append(a)
    if not by_key:
        return {}
    query = sa.select(
        signals.c.request_id, signals.c.tier, signals.c.kind, signals.c.passed, signals.c.run_id,
        signals.c.timestamp, signals.c.detail,
    ).where(
        signals.c.request_id.is_not(None), signals.c.passed.is_not(None), signals.c.kind.in_(KINDS)
    )  # fmt: skip
    found: dict[int, list[Signal]] = defaultdict(list)
    for row in conn.execute(query):
        candidates = by_key.get((row.request_id, row.tier or ""))
        if not candidates:
            continue
        signal = Signal(row.kind, bool(row.passed), row.run_id, row.timestamp or "", row.detail or "")
        target = _judged(candidates, signal)
        if target is not None:
            found[target.id].append(signal)
    return found


def _judged(candidates: Sequence[Answered], signal: Signal) -> Answered | None:
    """The first answer a signal judges: its run's; else the latest before it (replayed from the cache)."""
    same_run = [a for a in candidates if signal.run_id and a.run_id == signal.run_id]
    if same_run:
        return same_run[0]
    before = [a for a in candidates if a.timestamp <= signal.timestamp] or list(candidates)
    return max(before, key=lambda a: (a.timestamp, a.id))


def labels(conn: Connection, answers: Sequence[Answered]) -> dict[int, Label]:
    """`calls.id` -> the label of every answer in `answers` (`label` over its linked signals)."""
    found = linked(conn, answers)
    return {a.id: label(a.checks_passed, found.get(a.id, ())) for a in answers}
