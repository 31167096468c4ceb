"""How complex an untagged prompt is, for `tierflow ask` without `--complexity` or `--tier`: cheap and explainable.

No model is called. The decision, in this order:

1. **Your own tags.** Once the ledger holds at least `MIN_TAGGED` `tierflow ask` calls whose complexity you set
   (`--complexity`) and whose prompt leads with the same task verb as this one, and one complexity covers at
   least `MAJORITY` of them, that complexity is used.
2. **Task verbs.** Otherwise the most demanding task verb in the prompt decides: `HIGH_VERBS` (analyse, compare,
   critique, evaluate, ...) are `high`, `MEDIUM_VERBS` (draft, explain, summarise, ...) `medium`, `LOW_VERBS`
   (list, extract, define, translate, ...) `low`. A prompt with none of them is `low` when it is a short
   question (under `SHORT_WORDS` words), else `medium`.
3. **Length.** A prompt of `LONG_TOKENS` tokens or more is at least `medium`; of `VERY_LONG_TOKENS` or more, `high`.

The decision and its reason go into the ledger row's `route_rule`, starting with `classified`, for example
`classified high (task verb 'critique', 212 tokens); routing.high (default)`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from tierflow.core.ledger import Ledger
from tierflow.core.tokens import count_tokens

HIGH_VERBS = (
    *("analyse", "analyze", "appraise", "argue", "assess", "compare", "contrast", "critique", "criticise"),
    *("criticize", "derive", "design", "evaluate", "interrogate", "prove", "reconcile", "synthesise"),
    *("synthesize", "theorise", "theorize"),
)
MEDIUM_VERBS = (
    *("discuss", "draft", "edit", "explain", "describe", "improve", "outline", "paraphrase", "propose"),
    *("review", "rewrite", "suggest", "summarise", "summarize", "write"),
)
LOW_VERBS = (
    *("check", "convert", "correct", "count", "define", "extract", "find", "fix", "format", "list", "quote"),
    *("rename", "sort", "spell", "tag", "translate"),
)
LEVELS = {"low": 0, "medium": 1, "high": 2}
LONG_TOKENS = 1500
VERY_LONG_TOKENS = 6000
SHORT_WORDS = 30
MIN_TAGGED = 5
MAJORITY = 0.6
PREFIX = "classified"


def _pattern(verb: str) -> str:
    stem = verb[:-1] if verb.endswith("e") else verb
    return rf"{stem}(?:e|es|ed|ing)" if verb.endswith("e") else rf"{stem}(?:s|es|ed|ing)?"


_VERBS = {
    verb: level
    for level, verbs in (("high", HIGH_VERBS), ("medium", MEDIUM_VERBS), ("low", LOW_VERBS))
    for verb in verbs
}
_FINDER = re.compile(r"\b(?:" + "|".join(f"(?P<v{i}>{_pattern(v)})" for i, v in enumerate(_VERBS)) + r")\b", re.I)
_BY_GROUP = {f"v{i}": v for i, v in enumerate(_VERBS)}


@dataclass(frozen=True)
class Decision:
    complexity: str
    reason: str

    @property
    def rule(self) -> str:
        """What the ledger's `route_rule` starts with."""
        return f"{PREFIX} {self.complexity} ({self.reason})"


def task_verbs(prompt: str) -> list[str]:
    """The task verbs in a prompt, in order of appearance, as their base form."""
    return [_BY_GROUP[m.lastgroup] for m in _FINDER.finditer(prompt) if m.lastgroup]


def by_rules(prompt: str) -> Decision:
    """Rules 2 and 3: task verbs, then length."""
    tokens = count_tokens(prompt)
    verbs = task_verbs(prompt)
    if verbs:
        verb = max(verbs, key=lambda v: LEVELS[_VERBS[v]])
        level, why = _VERBS[verb], f"task verb {verb!r}"
    elif len(prompt.split()) < SHORT_WORDS:
        level, why = "low", "a short request with no task verb"
    else:
        level, why = "medium", "no task verb"
    base = level
    if tokens >= VERY_LONG_TOKENS:
        level = "high"
    elif tokens >= LONG_TOKENS and level == "low":
        level = "medium"
    return Decision(level, f"{why}, {'but ' if level != base else ''}{tokens} tokens")


def from_tagged(prompt: str, ledger: Ledger) -> Decision | None:
    """Rule 1: your own tags on past `tierflow ask` calls that lead with the same task verb, once there are enough."""
    verbs = task_verbs(prompt)
    if not verbs:
        return None
    lead = verbs[0]
    seen: Counter[str] = Counter()
    for row in ledger.rows(flow="ask"):
        rule = row["route_rule"] or ""
        if rule.startswith(PREFIX) or row["cached_result"] or row["attempt"] != 1 or not row["complexity"]:
            continue
        tagged = task_verbs(row["subject"] or "")
        if tagged and tagged[0] == lead:
            seen[row["complexity"]] += 1
    total = sum(seen.values())
    if total < MIN_TAGGED:
        return None
    complexity, count = seen.most_common(1)[0]
    if count / total < MAJORITY:
        return None
    return Decision(complexity, f"{count} of your {total} tagged {lead!r} asks were {complexity}")


def classify(prompt: str, ledger: Ledger | None = None) -> Decision:
    """The complexity of an untagged prompt, and why (see the module's docstring for the rules)."""
    learned = from_tagged(prompt, ledger) if ledger is not None else None
    return learned or by_rules(prompt)
