"""Checks: named, mechanical tests of a parsed answer, run on every call with no extra model call.

A phase passes its checks to `Caller.ask(checks=...)`. A failed check is recorded on the ledger row
(`outcome = check_failed`, `checks_failed`), stated in one informed retry, and then escalated one tier up.
A check that raises has failed: it is named with its exception (`quotes_verbatim raised KeyError`), or with what it
returned when that is not a list of problems (`my_check returned NoneType`), so the
paid answer it was judging is still recorded, retried and, if nothing passes, kept with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel

log = logging.getLogger("tierflow")


@dataclass(frozen=True)
class Check:
    """A named test of a parsed answer."""

    name: str
    """Short and stable (`quotes_verbatim`): it appears in `checks_failed`, reports and retry requests."""
    problems: Callable[[Any], list[str]]
    """The problems found in a parsed answer, each a short sentence; empty when the answer passes."""
    rebuild: tuple[str, str] | None = None
    """How a tier trial builds this check again from the vault: a factory's `module:function` and its keyword
    arguments as JSON; `function(vault, **arguments)` returns the phase's checks. None: not rebuilt in trials.
    A trial's answer is validated against the recorded JSON schema only, so its nested objects are plain dicts:
    a factory whose checks read nested fields returns them through `reading_as` with the phase's output model."""


def reading_as(model: type[BaseModel], checks: Sequence[Check]) -> list[Check]:
    """The checks, each given the answer as `model` parses it, as the phase's own call gives it to them.

    A tier trial parses answers against the recorded JSON schema (`tierflow.learn.trial.schema_model`), with
    nested objects left as dicts; a check written for the phase's model reads them as attributes.
    """

    def reads(check: Check) -> Check:
        def problems(answer: Any) -> list[str]:
            if not isinstance(answer, model):
                answer = model.model_validate(answer.model_dump() if isinstance(answer, BaseModel) else answer)
            return check.problems(answer)

        return replace(check, problems=problems)

    return [reads(c) for c in checks]


@dataclass(frozen=True)
class Failure:
    check: str
    problem: str


def run_checks(checks: Sequence[Check], parsed: Any) -> list[Failure]:
    """Every problem every check finds, in check order; a check that raises fails, named with its exception."""
    failures: list[Failure] = []
    for check in checks:
        try:
            problems = check.problems(parsed)
        except Exception as exc:  # a check's bug must not lose the paid answer it judges
            log.warning("check %s raised %s: %s", check.name, type(exc).__name__, exc, exc_info=True)
            failures.append(
                Failure(f"{check.name} raised {type(exc).__name__}", f"the check could not read the answer ({exc!r})")
            )
            continue
        if isinstance(problems, str | bytes) or not isinstance(problems, Iterable):  # a bare verdict, not a list
            log.warning(
                "check %s returned %r, not a list of problems (each a str; [] when the answer passes): it fails",
                check.name, problems,
            )  # fmt: skip
            failures.append(
                Failure(
                    f"{check.name} returned {type(problems).__name__}",
                    f"the check must return a list of problems, not {problems!r}",
                )
            )
            continue
        failures += [Failure(check.name, p) for p in problems]
    return failures


def describe(failures: Sequence[Failure], limit: int = 5) -> str:
    """The failures in a few lines, for a retry request and a warning callout."""
    lines = [f"- {f.check}: {f.problem}" for f in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"- and {len(failures) - limit} more")
    return "\n".join(lines)
