"""The one clock tierflow reads: budget periods, ledger timestamps and default date windows.

`TIERFLOW_CLOCK_START` (an ISO 8601 instant) starts the clock at that instant; it then runs forward at
real speed, so ledger rows keep their order. Tests and reproducible demos set it so that nothing depends
on the day, the time zone or midnight; a process started with it set passes it on to its children.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

_ENV = "TIERFLOW_CLOCK_START"
_started = time.monotonic()


def now() -> datetime:
    """The current instant, timezone-aware in UTC."""
    start = os.environ.get(_ENV)
    if not start:
        return datetime.now(UTC)
    instant = datetime.fromisoformat(start)
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC) + timedelta(seconds=time.monotonic() - _started)


def now_iso() -> str:
    """`now()` as an ISO timestamp with microseconds, the ledger's format."""
    return now().isoformat(timespec="microseconds")
