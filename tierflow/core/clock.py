"""The one clock tierflow reads: budget periods, ledger timestamps and default date windows.

`TIERFLOW_CLOCK_START` (an ISO 8601 instant) starts the clock at that instant; it then runs forward at
real speed, so ledger rows keep their order. Tests and reproducible demos set it so that nothing depends
on the day, the time zone or midnight; a process started with it set passes it on to its children, with
`TIERFLOW_CLOCK_ANCHOR` (when the start was, in seconds since the epoch), so that processes sharing a ledger
read one clock and their rows' times compare.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

_ENV = "TIERFLOW_CLOCK_START"
_ANCHOR = "TIERFLOW_CLOCK_ANCHOR"
_anchors: dict[str, float] = {}


def now() -> datetime:
    """The current instant, timezone-aware in UTC."""
    start = os.environ.get(_ENV)
    if not start:
        return datetime.now(UTC)
    instant = datetime.fromisoformat(start)
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    anchor = os.environ.get(_ANCHOR, "")
    if anchor.split("@", 1)[-1] != start:
        # A start this process has not seen (or a test switched to): its own anchor, kept if it comes back.
        anchor = f"{_anchors.setdefault(start, time.time())!r}@{start}"
        os.environ[_ANCHOR] = anchor
    since = _anchors.setdefault(start, float(anchor.split("@", 1)[0]))
    return instant.astimezone(UTC) + timedelta(seconds=time.time() - since)


def epoch() -> float:
    """Seconds since the epoch, for leases that processes on one machine or database compare (tier slots);
    never written as a date."""
    return time.time()


def now_iso() -> str:
    """`now()` as an ISO timestamp with microseconds, the ledger's format."""
    return now().isoformat(timespec="microseconds")


if os.environ.get(_ENV):
    now()  # anchor the clock when the process starts, as children will inherit it
