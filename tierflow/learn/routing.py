"""`tierflow routing suggest`: per flow and phase, the cheapest tier the evidence supports; `--apply` writes it.

The evidence and the rule are `tierflow.core.evidence` (the same table adaptive routing uses). Applying writes a
per-phase tier into the vault's config under `[routing.phases]`, with a comment that gives the evidence and the
date, and returns the diff so the person sees it first.

`[routing.phases]` holds one tier per phase, for every flow and complexity, while a suggestion is made per flow,
phase and complexity. So a phase is written only when all of its suggestions agree on one tier (`plan`); where they
disagree, writing any one of them would route the others against their own evidence, and the change is refused.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tierflow.core import clock
from tierflow.core.config import Config
from tierflow.core.errors import ConfigError
from tierflow.core.evidence import Suggestion, gather, suggest
from tierflow.core.ledger import Ledger
from tierflow.vault.notes import write_atomically


def suggestions(config: Config, ledger: Ledger, *, flow: str | None = None) -> list[Suggestion]:
    """One suggestion per flow, phase and complexity the ledger has seen, every project pooled (trials excluded).

    The counts are read grouped from the database (`evidence.gather`), never row by row.
    """
    return [suggest(config, phase) for phase in gather(ledger, flow=flow) if not phase.flow.startswith("trial")]


@dataclass(frozen=True)
class Refusal:
    """A change `--apply` will not write, and why."""

    suggestion: Suggestion
    reason: str


def plan(found: list[Suggestion]) -> tuple[list[Suggestion], list[Refusal]]:
    """The changes among `found` that `[routing.phases]` can hold, and those refused.

    A phase's change is applied only when every suggestion for that phase (each flow and complexity, those that
    keep their tier included) names the same tier; otherwise each of its changes is refused, saying which disagree.
    """
    by_phase: dict[str, list[Suggestion]] = defaultdict(list)
    for s in found:
        by_phase[s.phase].append(s)
    changes: list[Suggestion] = []
    refused: list[Refusal] = []
    for phase, group in by_phase.items():
        wanted = [s for s in group if s.suggested_tier != s.current_tier]
        if not wanted:
            continue
        if len({s.suggested_tier for s in group}) == 1:
            changes.extend(wanted)
            continue
        each = "; ".join(
            f"{s.flow} {s.complexity or 'any'}: {s.current_tier} -> {s.suggested_tier}"
            if s.suggested_tier != s.current_tier
            else f"{s.flow} {s.complexity or 'any'}: keep {s.current_tier}"
            for s in group
        )
        why = (
            f"not applied: [routing.phases] holds one tier for phase {phase!r} in every flow and complexity, "
            f"and its suggestions disagree ({each})"
        )
        refused.extend(Refusal(s, why) for s in wanted)
    return changes, refused


def apply(path: Path, changes: list[Suggestion]) -> str:
    """Write each change as `[routing.phases] <phase> = "<tier>"`; returns the unified diff (empty: no change).

    Changes to one phase must agree on its tier (see `plan`). The new text is parsed, and checked to hold every
    change, before it replaces the file (atomically); a text that would not parse is never written.
    """
    tiers: dict[str, str] = {}
    reasons: dict[str, list[str]] = defaultdict(list)
    for s in changes:
        if tiers.setdefault(s.phase, s.suggested_tier) != s.suggested_tier:
            raise ConfigError(
                f"routing.phases.{s.phase}: the changes disagree ({tiers[s.phase]} and {s.suggested_tier}); "
                "[routing.phases] holds one tier per phase"
            )
        reasons[s.phase].append(s.reason)
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    text = before
    today = clock.now().date().isoformat()
    for phase, tier in tiers.items():
        comment = f"# tierflow routing suggest --apply, {today}: {' / '.join(reasons[phase])}"
        line = f"{toml_key(phase)} = {toml_string(tier)}"
        text = _set_phase(text, phase, _one_line(comment), line)
    if text == before:
        return ""
    _check(path, text, tiers)
    diff = "".join(
        difflib.unified_diff(before.splitlines(True), text.splitlines(True), str(path), f"{path} (suggested)")
    )
    write_atomically(path, text)
    return diff


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    """`key` as a TOML key: bare when only letters, digits, `_` and `-`, else a basic (quoted) string."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_string(value: str) -> str:
    """`value` as a TOML basic string: quotes, backslashes and control characters escaped."""
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for ch in value:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _one_line(comment: str) -> str:
    """A comment stays one line: TOML comments may hold no control character but tab."""
    return "".join(ch if ch == "\t" or (ord(ch) >= 0x20 and ord(ch) != 0x7F) else " " for ch in comment)


def _key_of(line: str) -> str | None:
    """The key a `key = value` line sets (any quoting), or None when the line is not one on its own."""
    if not line.strip() or line.lstrip().startswith(("#", "[")):
        return None
    try:
        parsed = tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return None
    if len(parsed) != 1:
        return None
    (key,) = parsed
    return key if not isinstance(parsed[key], dict) else None


def _set_phase(text: str, phase: str, comment: str, line: str) -> str:
    header = re.search(r"^\[routing\.phases\]\s*$", text, flags=re.M)
    if header is None:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return f"{text}{sep}[routing.phases]\n{comment}\n{line}\n"
    start = header.end() + 1
    following = re.search(r"^\[", text[start:], flags=re.M)
    end = start + following.start() if following else len(text)
    kept: list[str] = []
    for old in text[start:end].splitlines(True):
        if _key_of(old) == phase:
            if kept and kept[-1].startswith("# tierflow routing suggest"):
                kept.pop()
            continue
        kept.append(old)
    table = f"{comment}\n{line}\n" + "".join(kept)
    return text[:start] + table + text[end:]


def _check(path: Path, text: str, tiers: dict[str, str]) -> None:
    """The new text parses as TOML and sets each phase's tier, or nothing is written."""
    try:
        phases = tomllib.loads(text).get("routing", {}).get("phases", {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not changed, the edit would not be valid TOML ({exc})") from exc
    wrong = [phase for phase, tier in tiers.items() if not isinstance(phases, dict) or phases.get(phase) != tier]
    if wrong:
        raise ConfigError(
            f"{path}: not changed, the edit would not set routing.phases for {', '.join(map(repr, wrong))} "
            "(is `routing.phases` written in another form? Set it under a `[routing.phases]` table)"
        )
