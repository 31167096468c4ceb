"""Quality signals from the person: how much they edited each draft, and the rating they gave it.

Every draft tierflow writes is remembered in the ledger (`drafts`: the note, the call that produced it, and the
text as written). A scan compares each with the note as it is now and stores, per note, one `edit` signal (the
edit ratio, 0 untouched to 1 rewritten) and one `rating` signal (from the `tierflow_rating` property: `good` or
`bad`, or 1 to 5). Rescanning replaces a note's signals, so nothing is counted twice.

What passes: an edit ratio of at most `EDIT_PASS` (light copy-editing); a rating of `good`, 4 or 5. An edit
ratio above `EDIT_FAIL`, or a rating of `bad`, 1 or 2, fails. Between them, a signal is kept but counts neither
way.

Each signal names the request (`request_id`) and tier of the answer the draft was written from, as the draft was
remembered, so the per-request router learns from it (`tierflow.learn.labels`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tierflow.core.ledger import Ledger, drafts, now_iso, signals
from tierflow.vault.text import load_note

EDIT_PASS = 0.2
EDIT_FAIL = 0.5


@dataclass(frozen=True)
class Signal:
    kind: str
    note: str
    passed: bool | None
    value: float | None
    detail: str
    request_id: str | None = None
    """The request the draft's answer was to (None: a draft remembered before requests were linked)."""


def edit_ratio(written: str, now: str) -> float:
    """How much of the text changed: 1 minus difflib's similarity ratio of the two, by words."""
    return round(1 - difflib.SequenceMatcher(None, written.split(), now.split(), autojunk=False).ratio(), 4)


def rating_passed(rating: Any) -> bool | None:
    """`good`/`bad`, or 1 to 5: True for good, 4 and 5; False for bad, 1 and 2; None otherwise."""
    if isinstance(rating, str):
        word = rating.strip().lower()
        if word in ("good", "bad"):
            return word == "good"
        try:
            rating = int(word)
        except ValueError:
            return None
    if isinstance(rating, bool) or not isinstance(rating, int):
        return None
    return True if rating >= 4 else False if rating <= 2 else None


def scan(vault: Path, ledger: Ledger) -> list[Signal]:
    """Measure every remembered draft against the vault now; store and return the signals."""
    with ledger.reading() as conn:
        remembered = conn.execute(sa.select(drafts)).all()
    found: list[Signal] = []
    for row in remembered:
        path = vault / row.note
        try:
            post = load_note(path)
        except (OSError, UnicodeDecodeError, ValueError):
            continue  # moved, deleted or unreadable: nothing to measure
        ratio = edit_ratio(row.text, post.content)
        passed = True if ratio <= EDIT_PASS else False if ratio > EDIT_FAIL else None
        signals_for_note = [Signal("edit", row.note, passed, ratio, f"edit ratio {ratio:.2f}", row.request_id)]
        rating = post.metadata.get("tierflow_rating")
        if rating is not None:
            signals_for_note.append(
                Signal("rating", row.note, rating_passed(rating), None, f"tierflow_rating: {rating}", row.request_id)
            )
        _store(ledger, row, signals_for_note)
        found += signals_for_note
    return found


def _store(ledger: Ledger, row: Any, found: list[Signal]) -> None:
    with ledger.transaction() as conn:
        conn.execute(signals.delete().where(signals.c.note == row.note, signals.c.kind.in_([s.kind for s in found])))
        for s in found:
            conn.execute(
                signals.insert().values(
                    timestamp=now_iso(),
                    kind=s.kind,
                    flow=row.flow,
                    phase=row.phase,
                    tier=row.tier,
                    model=row.model,
                    run_id=row.run_id,
                    subject=row.subject,
                    passed=s.passed,
                    value=s.value,
                    detail=s.detail,
                    note=row.note,
                    request_id=s.request_id,
                )
            )
