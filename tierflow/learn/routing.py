"""`tierflow routing suggest`: per flow and phase, the cheapest tier the evidence supports; `--apply` writes it.

The evidence and the rule are `tierflow.core.evidence` (the same table adaptive routing uses). Applying writes a
per-phase tier into the vault's config under `[routing.phases]`, with a comment that gives the evidence and the
date, and returns the diff so the person sees it first.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from tierflow.core import clock
from tierflow.core.config import Config
from tierflow.core.evidence import Suggestion, gather, suggest
from tierflow.core.ledger import Ledger


def suggestions(config: Config, ledger: Ledger, *, flow: str | None = None) -> list[Suggestion]:
    """One suggestion per flow, phase and complexity the ledger has seen, every project pooled (trials excluded).

    The counts are read grouped from the database (`evidence.gather`), never row by row.
    """
    return [suggest(config, phase) for phase in gather(ledger, flow=flow) if not phase.flow.startswith("trial")]


def apply(path: Path, changes: list[Suggestion]) -> str:
    """Write each change as `[routing.phases] <phase> = "<tier>"`; returns the unified diff (empty: no change)."""
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    text = before
    today = clock.now().date().isoformat()
    for s in changes:
        comment = f"# tierflow routing suggest --apply, {today}: {s.reason}"
        line = f'{s.phase} = "{s.suggested_tier}"'
        text = _set_phase(text, s.phase, comment, line)
    if text == before:
        return ""
    diff = "".join(
        difflib.unified_diff(before.splitlines(True), text.splitlines(True), str(path), f"{path} (suggested)")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return diff


def _set_phase(text: str, phase: str, comment: str, line: str) -> str:
    header = re.search(r"^\[routing\.phases\]\s*$", text, flags=re.M)
    if header is None:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return f"{text}{sep}[routing.phases]\n{comment}\n{line}\n"
    start = header.end() + 1
    following = re.search(r"^\[", text[start:], flags=re.M)
    end = start + following.start() if following else len(text)
    table = text[start:end]
    key = re.compile(rf"^(# tierflow routing suggest[^\n]*\n)?{re.escape(phase)}\s*=.*\n?", flags=re.M)
    table = key.sub("", table)
    table = f"{comment}\n{line}\n" + table
    return text[:start] + table + text[end:]
