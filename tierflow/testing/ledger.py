"""Reading a ledger's rows in tests and benchmarks."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any


def most_at_once(rows: list[dict[str, Any]]) -> int:
    """The most calls in flight at one instant, from the ledger's start times and latencies."""
    events = []
    for r in rows:
        start = datetime.fromisoformat(r["started_at"])
        events += [(start, 1), (start + timedelta(milliseconds=r["latency_ms"]), -1)]
    level = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        level += step
        peak = max(peak, level)
    return peak
