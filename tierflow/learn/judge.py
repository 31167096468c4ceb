"""A pairwise LLM judge that controls for position bias.

The judge sees the candidate's answer and the reference answer twice, once in each order (A/B, then B/A).
A win or a loss needs both orders to agree; when they disagree the verdict is a tie, so a judge that always
prefers the first answer it is shown (position bias, arXiv 2406.07791) produces ties, never wins. Each
verdict is stored as a `judge` signal: a win or a tie passes, a loss fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel

from tierflow.core.calls import Caller
from tierflow.core.ledger import Ledger, now_iso, signals
from tierflow.core.providers import Request
from tierflow.core.routing import Route

PHASE = "judge"
"""The ledger phase of judge calls (in the trial's own run and flow)."""

Pick = Literal["candidate", "reference", "tie"]
Outcome = Literal["win", "tie", "loss"]


class JudgeOut(BaseModel):
    """What the judge answers: which of the two answers shown is better, and why."""

    better: Literal["A", "B", "tie"]
    reason: str = ""


@dataclass(frozen=True)
class Verdict:
    """The candidate against the reference, from both orders."""

    outcome: Outcome
    picks: tuple[Pick, Pick]
    """The judge's pick with the candidate shown first, then with the reference shown first."""
    reasons: tuple[str, str]

    @property
    def passed(self) -> bool:
        return self.outcome != "loss"

    @property
    def detail(self) -> str:
        return f"{self.outcome}: candidate first -> {self.picks[0]}; reference first -> {self.picks[1]}"


def combine(first: Pick, second: Pick) -> Outcome:
    """A win or loss only when both orders agree on it; any disagreement (or a tie in either) is a tie."""
    if first == second == "candidate":
        return "win"
    if first == second == "reference":
        return "loss"
    return "tie"


def judge_pair(
    caller: Caller,
    routed: Route,
    env: SandboxedEnvironment,
    *,
    task: Request,
    candidate: str,
    reference: str,
    subject: str = "",
) -> Verdict:
    """Ask the judge tier twice, once per order, through the call path (budgeted and recorded)."""
    picks: list[Pick] = []
    reasons: list[str] = []
    system = env.get_template("prompts/judge/system.j2").render()
    for candidate_first in (True, False):
        a, b = (candidate, reference) if candidate_first else (reference, candidate)
        answer = caller.ask(
            phase=PHASE,
            complexity=routed.complexity,
            system=system,
            prompt=judge_prompt(env, task, a, b),
            output=JudgeOut,
            routed=routed,
            subject=f"{subject} ({'candidate' if candidate_first else 'reference'} first)",
        )
        better = answer.parsed.better
        if better == "tie":
            picks.append("tie")
        else:
            picks.append("candidate" if (better == "A") == candidate_first else "reference")
        reasons.append(answer.parsed.reason)
    return Verdict(combine(picks[0], picks[1]), (picks[0], picks[1]), (reasons[0], reasons[1]))


def judge_prompt(env: SandboxedEnvironment, task: Request, answer_a: str, answer_b: str) -> str:
    data = {
        "request": {"system": task.system, "prompt": task.cache_prefix + task.prompt},
        "answer_a": answer_a,
        "answer_b": answer_b,
    }
    return env.get_template("prompts/judge/pair.j2").render(data=data)


def store_verdict(
    ledger: Ledger,
    verdict: Verdict,
    *,
    flow: str,
    phase: str,
    tier: str,
    model: str,
    run_id: str,
    subject: str,
    request_id: str | None = None,
) -> None:
    """One `judge` signal for the candidate tier on the judged flow and phase (what `routing suggest` reads), linked
    to the request the candidate's answer was to (`Answer.request_id`; what the per-request router reads)."""
    with ledger.transaction() as conn:
        conn.execute(
            signals.insert().values(
                timestamp=now_iso(),
                kind="judge",
                flow=flow,
                phase=phase,
                tier=tier,
                model=model,
                run_id=run_id,
                subject=subject[:256],
                passed=verdict.passed,
                value={"win": 1.0, "tie": 0.5, "loss": 0.0}[verdict.outcome],
                detail=verdict.detail[:512],
                request_id=request_id,
            )
        )
