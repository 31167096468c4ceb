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
from collections.abc import Iterable
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


def apply(path: Path, changes: list[Suggestion], *, replace_pins: bool = False) -> str:
    """Write each change as `[routing.phases] <phase> = "<tier>"`; returns the unified diff (empty: no change).

    Changes to one phase must agree on its tier (see `plan`). A phase's line is replaced where it stands, and
    everything else in the file (comments, blank lines, order) is kept. A pin the person wrote (`own_pins`) is
    replaced only with `replace_pins`, and their line is then kept above it as a comment. The new text is parsed,
    and checked to hold every change, before it replaces the file (atomically); a text that would not parse is
    never written.
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
    if not replace_pins and (pins := own_pins(path, tiers)):
        raise ConfigError("; ".join(pinned_message(path, phase, line, tiers[phase]) for phase, line in pins.items()))
    text = before
    today = clock.now().date().isoformat()
    for phase, tier in tiers.items():
        comment = f"{APPLIED} {today}: {' / '.join(reasons[phase])}"
        line = f"{toml_key(phase)} = {toml_string(tier)}  {MARK} {tier}"
        text = _set_phase(text, phase, _one_line(comment), line)
    if text == before:
        return ""
    _check(path, text, tiers)
    diff = "".join(
        difflib.unified_diff(before.splitlines(True), text.splitlines(True), str(path), f"{path} (suggested)")
    )
    # The file's own line ends (Windows' CRLF), so that only the lines changed differ; a link to the person's own
    # copy stays a link: theirs is written.
    crlf = path.exists() and b"\r\n" in path.read_bytes()
    write_atomically(path.resolve(), text.replace("\n", "\r\n").encode("utf-8") if crlf else text)
    return diff


APPLIED = "# tierflow routing suggest --apply,"
"""The start of the comment `apply` writes above a phase's line: the evidence and the date follow."""
MARK = "# set by tierflow routing suggest --apply:"
"""The comment `apply` ends a phase's line with, naming the tier it wrote: a line without it (or naming another
tier than the line's) is the person's own."""


def own_pins(path: Path, phases: Iterable[str]) -> dict[str, str]:
    """Of `phases`, those `[routing.phases]` in `path` pins by a line the person wrote: phase -> the line.

    A line is tierflow's when it ends with `MARK` naming its tier, or (as tierflow wrote it before the mark) it
    has no comment and follows an `APPLIED` comment saying "move to" its tier. A line whose tier was edited since
    is the person's.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    table = _phases_table(text)
    if table is None:
        return {}
    lines = text[table[0] : table[1]].splitlines()
    wanted = set(phases)
    found: dict[str, str] = {}
    for i, line in enumerate(lines):
        setting = _setting(line)
        if setting is None or setting[0] not in wanted:
            continue
        if not _written_by_tierflow(setting, lines[i - 1] if i else ""):
            found[setting[0]] = line.strip()
    return found


def pinned_message(path: Path, phase: str, line: str, tier: str) -> str:
    """Why `--apply` leaves a person's pin alone, naming the pin and the flag that would replace it."""
    pinned = tomllib.loads(line)[phase] if _setting(line) else "?"
    return (
        f"not applied: {phase} is pinned to {pinned} by your own line in {path} ({line}), and the evidence "
        f"suggests {tier}: add --replace-pins to replace it (your line is kept above it, as a comment)"
    )


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


def _setting(line: str) -> tuple[str, object, str] | None:
    """A `key = value` line on its own: its key (any quoting), value and trailing comment (`""`: none); None for
    any other line."""
    if not line.strip() or line.lstrip().startswith(("#", "[")):
        return None
    try:
        parsed = tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return None
    if len(parsed) != 1:
        return None
    ((key, value),) = parsed.items()
    if isinstance(value, dict):
        return None
    # The comment starts at the first `#` before which the line still reads the same (a `#` in a string does not).
    for at in (i for i, ch in enumerate(line) if ch == "#"):
        try:
            if tomllib.loads(line[:at]) == parsed:
                return key, value, line[at:].strip()
        except tomllib.TOMLDecodeError:
            continue
    return key, value, ""


def _written_by_tierflow(setting: tuple[str, object, str], above: str) -> bool:
    """Whether `apply` wrote this line as it stands (see `own_pins`)."""
    _, value, comment = setting
    if comment:
        return comment == f"{MARK} {value}"
    return above.startswith(APPLIED) and re.search(rf":\s*move to {re.escape(str(value))}:", above) is not None


def _phases_table(text: str) -> tuple[int, int] | None:
    """Where the `[routing.phases]` table's lines are in `text` (after its header, up to the next table)."""
    header = re.search(r"^[ \t]*\[[ \t]*routing[ \t]*\.[ \t]*phases[ \t]*\][ \t]*(#.*)?$", text, flags=re.M)
    if header is None:
        return None
    start = min(header.end() + 1, len(text))
    following = re.search(r"^[ \t]*\[", text[start:], flags=re.M)
    return start, start + following.start() if following else len(text)


def _set_phase(text: str, phase: str, comment: str, line: str) -> str:
    """`text` with `phase` set by `line` under `comment`: in place of its line (and of the `APPLIED` comment above
    a line tierflow wrote; a person's line is kept as a comment), else at the end of the table."""
    table = _phases_table(text)
    if table is None:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return f"{text}{sep}[routing.phases]\n{comment}\n{line}\n"
    start, end = table
    if start == len(text) and not text.endswith("\n"):
        text, start, end = text + "\n", start + 1, end + 1
    lines = text[start:end].splitlines(True)
    for i, old in enumerate(lines):
        setting = _setting(old)
        if setting is None or setting[0] != phase:
            continue
        above = lines[i - 1] if i else ""
        if _written_by_tierflow(setting, above):
            first = i - 1 if above.startswith(APPLIED) else i
            new = [f"{comment}\n", f"{line}\n"]
        else:  # the person's pin, replaced as they asked: their line stays, as a comment
            first, new = i, [f"# {old.strip()}\n", f"{comment}\n", f"{line}\n"]
        lines[first : i + 1] = new
        return text[:start] + "".join(lines) + text[end:]
    # A new phase goes after the table's last line that is not blank.
    last = max((i for i, old in enumerate(lines) if old.strip()), default=-1) + 1
    if last and not lines[last - 1].endswith("\n"):
        lines[last - 1] += "\n"
    lines[last:last] = [f"{comment}\n", f"{line}\n"]
    return text[:start] + "".join(lines) + text[end:]


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
