"""Tier trials: replay a phase's recorded requests on several tiers, judged against the strongest tier's answer.

Every request a phase sends is recorded, passed or not, with the phase's check names and how to rebuild them
(`Ledger.recorded_requests`; older ledgers' passed answers in the answer cache count too). A trial takes a
deterministic sample of them (ordered by a hash of their content, so the same ledger always gives the same
sample), sends each to every candidate tier through the one call path (`Caller.resolve`: budgeted, recorded,
one informed retry, no escalation), and asks the judge tier to compare each answer with the strongest
candidate tier's, in both orders (`tierflow.learn.judge`).

An answer passes when it is valid against the recorded JSON schema and passes the phase's own checks (quotes
verbatim, links resolve, sections present...), rebuilt from the vault as it is now (`Check.rebuild`). A check
that cannot be rebuilt (no recipe, or its source notes are gone) is named in the result, not run.

Trial calls run under their own flow name, `trial:<flow>`, so their spend is apart from the flow's in the
ledger, and under a `halt` budget for the trial run when `--budget` is given. They never downgrade: a
`downgrade` budget halts a trial instead, since a cheaper tier's answer credited to the tier on trial would
be false evidence.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import statistics
from dataclasses import dataclass, field, replace
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, model_validator

from tierflow.core import clock
from tierflow.core.budget import Budgets, BudgetState, estimate, padded
from tierflow.core.calls import Answer, Caller, RunSettings, new_run_id
from tierflow.core.checks import Check
from tierflow.core.config import Config, load_config
from tierflow.core.errors import BudgetExceeded, TierflowError, VaultError
from tierflow.core.ledger import CallRecord, Ledger, evidence_totals, response_cache
from tierflow.core.providers import Request
from tierflow.core.routing import Route, route_to_tier
from tierflow.core.tokens import count_tokens
from tierflow.learn.judge import PHASE as JUDGE_PHASE
from tierflow.learn.judge import judge_pair, judge_prompt, store_verdict
from tierflow.vault.links import VaultNames
from tierflow.vault.notes import NoteWriter, WriteResult, template_env

TRIALS_FOLDER = "tierflow/Trials"
BUDGET_NAME = "trial"
RETRY_ATTEMPTS = 2
"""Attempts per request and tier in the worst case: the answer and its one informed retry (no escalation)."""


class TrialError(TierflowError):
    """A trial that cannot start: nothing recorded to replay, or an unknown tier."""


@dataclass(frozen=True)
class Sample:
    """One recorded request, as it was first sent (a retry's note on what went wrong removed)."""

    id: str
    request: Request
    origin: str = ""
    """The `provider:model` that answered it when it was recorded."""
    checks: tuple[tuple[str, tuple[str, str] | None], ...] = ()
    """The phase's checks when it was sent: (name, `Check.rebuild`)."""


@dataclass
class TierResult:
    tier: str
    model: str
    requests: int = 0
    """Sample requests sent to this tier."""
    passed: int = 0
    """Answers valid against the recorded schema that pass the phase's own checks."""
    checks_not_run: list[str] = field(default_factory=list)
    """Checks of the phase that could not be rebuilt, so were not run."""
    downgraded: int = 0
    """Answers a budget had a cheaper tier give: never credited to this tier."""
    unusable: int = 0
    """Requests for which no attempt gave a readable answer."""
    wins: int = 0
    ties: int = 0
    losses: int = 0
    unjudged: int = 0
    """Pairs the judge gave no readable verdict on (both attempts malformed): counted nowhere."""
    calls: int = 0
    """Billed attempts, from the ledger."""
    cost_usd: float = 0.0
    unpriced: int = 0
    latency_ms: list[float] = field(default_factory=list)

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.requests if self.requests else None

    @property
    def median_latency_ms(self) -> float | None:
        return statistics.median(self.latency_ms) if self.latency_ms else None


@dataclass
class Trial:
    flow: str
    phase: str
    complexity: str
    tiers: list[str]
    """Candidate tiers, cheapest first; the last is the reference."""
    judge: str
    run_id: str
    samples: list[Sample]
    budget_usd: float | None = None
    worst_usd: dict[str, Decimal | None] = field(default_factory=dict)
    """Worst case per candidate tier, and for the judge (key `judge`)."""
    results: dict[str, TierResult] = field(default_factory=dict)
    judge_result: TierResult | None = None
    halted: str = ""
    """Why the trial stopped before the end (the budget), or empty."""
    artifact: str = ""
    """What became of the Prefect artifact."""

    @property
    def reference(self) -> str:
        return self.tiers[-1]

    @property
    def worst_total_usd(self) -> Decimal | None:
        values = list(self.worst_usd.values())
        return None if any(v is None for v in values) else sum(values, Decimal(0))  # type: ignore[arg-type]

    @property
    def spent_usd(self) -> float:
        parts = [*self.results.values(), *([self.judge_result] if self.judge_result else [])]
        return sum(r.cost_usd for r in parts)

    def table(self) -> list[dict[str, Any]]:
        """One row per tier (and the judge): what the note, the artifact and `--format table|json` show."""
        rows = []
        for tier in self.tiers:
            r = self.results[tier]
            rows.append(
                {
                    "tier": tier,
                    "model": r.model,
                    "requests": r.requests,
                    "calls": r.calls,
                    "cost_usd": round(r.cost_usd, 6),
                    "unpriced_calls": r.unpriced,
                    "check_pass_rate": None if r.pass_rate is None else round(r.pass_rate, 4),
                    "checks_not_run": ", ".join(r.checks_not_run) or None,
                    "downgraded": r.downgraded,
                    "wins": None if tier == self.reference else r.wins,
                    "ties": None if tier == self.reference else r.ties,
                    "losses": None if tier == self.reference else r.losses,
                    "unjudged": None if tier == self.reference else r.unjudged,
                    "median_latency_ms": None if r.median_latency_ms is None else round(r.median_latency_ms, 1),
                }
            )
        if self.judge_result is not None:
            j = self.judge_result
            rows.append(
                {
                    "tier": f"judge ({self.judge})",
                    "model": j.model,
                    "requests": j.requests,
                    "calls": j.calls,
                    "cost_usd": round(j.cost_usd, 6),
                    "unpriced_calls": j.unpriced,
                    "check_pass_rate": None,
                    "checks_not_run": None,
                    "downgraded": 0,
                    "wins": None,
                    "ties": None,
                    "losses": None,
                    "unjudged": None,
                    "median_latency_ms": None if j.median_latency_ms is None else round(j.median_latency_ms, 1),
                }
            )
        return rows

    def as_json(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "phase": self.phase,
            "run_id": self.run_id,
            "trial_flow": trial_flow(self.flow),
            "reference": self.reference,
            "judge": self.judge,
            "samples": len(self.samples),
            "budget_usd": self.budget_usd,
            "worst_case_usd": None if self.worst_total_usd is None else float(self.worst_total_usd),
            "spent_usd": round(self.spent_usd, 6),
            "halted": self.halted or None,
            "tiers": self.table(),
        }


def trial_flow(flow: str) -> str:
    """The ledger's flow name for a trial of `flow`: its spend stays apart from the flow's own."""
    return f"trial:{flow}"


def trial_caller(
    vault: Path | None,
    flow: str,
    *,
    config_path: Path | None = None,
    profile: str | None = None,
    budget_usd: float | None = None,
) -> Caller:
    """The call path for one trial run: no answer cache, no escalation, and a `halt` budget for the run."""
    overrides: dict[str, Any] = {"routing": {"escalate": False}}
    # Trial calls never downgrade: a cheaper tier's answer would be credited to the tier on trial.
    configured = load_config(vault, config_path=config_path, profile=profile).settings.budgets
    overrides["budgets"] = {name: {"policy": "halt"} for name, b in configured.items() if b.policy == "downgrade"}
    if budget_usd is not None:
        overrides["budgets"][BUDGET_NAME] = {
            "usd": budget_usd,
            "tokens": None,
            "period": "run",
            "flow": trial_flow(flow),
            "phase": None,
            "policy": "halt",
            "floor": None,
        }
    config = load_config(vault, config_path=config_path, profile=profile, overrides=overrides)
    settings = RunSettings(
        vault=str(vault) if vault else None,
        config_path=str(config_path) if config_path else None,
        profile=profile,
        run_id=new_run_id(config.settings.vault.timezone),
        flow=trial_flow(flow),
        use_cache=False,  # every tier answers afresh, so cost and latency are measured, not replayed
    )
    caller = Caller(settings, config)
    caller.budgets = _TrialBudgets(config, caller.ledger, run_id=settings.run_id, flow=settings.flow)
    return caller


class _TrialBudgets(Budgets):
    """A trial's budgets: its answers stay out of the answer cache, and a refusal names what a trial can change.

    A trial sends the recorded request again, so its answer's cache key is often the recorded entry's own:
    caching it would re-file that entry under the trial's flow, and the next trial would not find it.
    """

    def settle(self, reservation_id: int, call: CallRecord, *, cache: Any = None, **kw: Any) -> None:
        super().settle(reservation_id, call, cache=None, **kw)

    def remedy(self, state: BudgetState, refused: Route) -> str:
        """The trial's own budget is its `--budget`; no budget downgrades a trial call, whatever its policy."""
        if state.name == BUDGET_NAME:
            return "Give a larger --budget, or a smaller --sample or fewer --tiers"
        return (
            f"Raise `budgets.{state.name}` in the config or lower the tier's max_output_tokens "
            "(a trial call never downgrades, whatever the budget's policy)"
        )


def recorded_samples(ledger: Ledger, flow: str, phase: str, n: int) -> list[Sample]:
    """A deterministic sample of `n` distinct recorded requests of a flow's phase (ordered by content hash).

    Every request the phase sent counts, whatever its answer's outcome; on a ledger older than that record,
    the answer cache's passed requests.
    """
    stored: list[tuple[str, str, tuple[tuple[str, tuple[str, str] | None], ...]]] = [
        (r.request_json, r.model or "", _checks_of(r.checks_json))
        for r in ledger.recorded_requests(flow=flow, phase=phase)
    ]
    query = sa.select(response_cache.c.request_json, response_cache.c.model).where(
        response_cache.c.flow == flow, response_cache.c.phase == phase, response_cache.c.request_json.is_not(None)
    )
    with ledger.reading() as conn:
        stored += [(row.request_json, row.model or "", ()) for row in conn.execute(query)]
    found: dict[str, Sample] = {}
    for text, origin, checks in stored:
        request = _request_from(json.loads(text))
        content = {k: getattr(request, k) for k in ("system", "cache_prefix", "prompt", "schema", "schema_name")}
        digest = hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        found.setdefault(digest, Sample(digest[:10], request, origin, checks))
    return [found[d] for d in sorted(found)][: max(n, 0)]


def _checks_of(text: str | None) -> tuple[tuple[str, tuple[str, str] | None], ...]:
    return tuple((c["name"], tuple(c["rebuild"]) if c.get("rebuild") else None) for c in json.loads(text or "[]"))


def recorded_phases(ledger: Ledger, flow: str) -> list[str]:
    found = {r.phase for r in ledger.recorded_requests(flow=flow) if r.phase}
    query = sa.select(response_cache.c.phase).where(
        response_cache.c.flow == flow, response_cache.c.request_json.is_not(None)
    )
    with ledger.reading() as conn:
        found |= {row.phase for row in conn.execute(query) if row.phase}
    return sorted(found)


def phase_checks(vault: Path | None, sample: Sample) -> tuple[list[Check], list[str]]:
    """The phase's checks for a sample, rebuilt from the vault as it is now; and the names of those that cannot be.

    Each recipe (`Check.rebuild`) is called once; of what it builds, the checks the phase ran are kept.
    """
    wanted = [name for name, _ in sample.checks]
    built: dict[str, Check] = {}
    for recipe in dict.fromkeys(r for _, r in sample.checks if r is not None):
        factory, arguments = recipe
        module, _, name = factory.partition(":")
        try:
            made = getattr(importlib.import_module(module), name)(vault, **json.loads(arguments))
        except (ImportError, AttributeError, VaultError, OSError):
            continue
        built.update({c.name: c for c in made if c.name in wanted and c.name not in built})
    return [built[n] for n in wanted if n in built], [n for n in wanted if n not in built]


def _request_from(stored: dict[str, Any]) -> Request:
    fields = {k: v for k, v in stored.items() if k in Request.__dataclass_fields__}
    request = Request(**{**fields, "output_mode": "", "mode_confirmed": True})
    note = _retry_note_head()
    if note in request.prompt:
        request = replace(request, prompt=request.prompt.rsplit(note, 1)[0])
    return request


def _retry_note_head() -> str:
    """How the note a retry appends to its prompt begins (templates/prompts/call/retry.j2, before the problems)."""
    template = (files("tierflow._templates") / "prompts" / "call" / "retry.j2").read_text(encoding="utf-8")
    return template.split("{{ problems }}", 1)[0]


def schema_model(schema: dict[str, Any], name: str) -> type[BaseModel]:
    """A pydantic model that validates exactly the recorded JSON schema, for `Caller.resolve`'s verdict."""
    validator = jsonschema.Draft202012Validator(schema)

    class Recorded(BaseModel):
        model_config = ConfigDict(extra="allow")

        @model_validator(mode="before")
        @classmethod
        def _matches_schema(cls, data: Any) -> Any:
            errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
            if errors:
                where = ".".join(str(p) for p in errors[0].absolute_path) or "the answer"
                raise ValueError(f"{len(errors)} schema error(s); first at {where}: {errors[0].message}")
            return data

    Recorded.__name__ = Recorded.__qualname__ = name
    return Recorded


def plan_trial(
    caller: Caller,
    flow: str,
    phase: str,
    tiers: list[str],
    *,
    sample: int,
    judge: str | None = None,
    budget_usd: float | None = None,
    send_local_data: bool = False,
) -> Trial:
    """What a trial would do and its worst-case cost, before anything is spent.

    Requests first answered on a local or offline model may hold text that never left the machine (student
    names are pseudonymised only when a cloud provider is in use): they go to a cloud tier only with
    `send_local_data`.
    """
    config = caller.config
    order = list(config.tier_order)
    for tier in [*tiers, *([judge] if judge else [])]:
        config.tier(tier)  # an unknown tier is a ConfigError naming the known ones
        if tier not in order:
            raise TrialError(f"tier {tier!r} is not in the config's tier_order ({', '.join(order)}); add it there")
    ordered = sorted(dict.fromkeys(tiers), key=order.index)
    if len(ordered) < 2:
        raise TrialError("give at least two tiers to compare, for example --tiers light,standard,deep")
    samples = recorded_samples(caller.ledger, flow, phase, sample)
    if not samples:
        known = recorded_phases(caller.ledger, flow)
        raise TrialError(
            f"no recorded requests of {flow} {phase} in the ledger ({caller.ledger.url}). A trial replays the "
            "requests earlier runs sent: run the flow first"
            + (f", or choose one of its recorded phases: {', '.join(known)}" if known else "")
        )
    cloud = [t for t in dict.fromkeys([*ordered, judge or order[-1]]) if config.provider_for(t)[1].leaves_machine]
    local = [s for s in samples if not _origin_left_machine(config, s.origin)]
    if cloud and local and not send_local_data:
        raise TrialError(
            f"{len(local)} of the {len(samples)} sampled requests were answered by a local or offline model "
            f"({', '.join(sorted({s.origin or 'unknown' for s in local}))}), so they may hold text that never left "
            f"this machine, unpseudonymised; tiers {', '.join(cloud)} are on a cloud provider. Trial local tiers "
            "only, or pass --send-local-data if these requests may go to the cloud."
        )
    trial = Trial(
        flow=flow,
        phase=phase,
        complexity=_complexity(caller.ledger, flow, phase),
        tiers=ordered,
        judge=judge or order[-1],
        run_id=caller.settings.run_id,
        samples=samples,
        budget_usd=budget_usd,
    )
    trial.results = {t: TierResult(t, _route(config, trial, t).model_ref) for t in ordered}
    trial.judge_result = TierResult(trial.judge, _judge_route(config, trial).model_ref)
    trial.worst_usd = _worst_case(caller, trial)
    return trial


def _origin_left_machine(config: Config, origin: str) -> bool:
    """Whether a recorded `provider:model` answer came from off this machine; False (so: treated as local text)
    when the config no longer has that provider."""
    provider = config.settings.providers.get(origin.partition(":")[0])
    return provider is not None and provider.leaves_machine


def _complexity(ledger: Ledger, flow: str, phase: str) -> str:
    """The complexity the phase was called at most often (from the evidence counts, not the calls)."""
    t = evidence_totals
    query = (
        sa.select(t.c.complexity)
        .where(t.c.flow == flow, t.c.phase == phase, t.c.complexity != "")
        .group_by(t.c.complexity)
        .order_by(sa.func.sum(t.c.n).desc(), t.c.complexity)
        .limit(1)
    )
    with ledger.reading() as conn:
        return conn.execute(query).scalar() or "medium"


def _route(config: Config, trial: Trial, tier: str) -> Route:
    return route_to_tier(config, phase=trial.phase, complexity=trial.complexity, tier=tier, rule=f"trial: {tier}")


def _judge_route(config: Config, trial: Trial) -> Route:
    return route_to_tier(
        config, phase=JUDGE_PHASE, complexity="high", tier=trial.judge, rule=f"trial judge: {trial.judge}"
    )


def _for_tier(request: Request, routed: Route) -> Request:
    return replace(request, model=routed.model, max_output_tokens=routed.max_output_tokens)


def _worst_case(caller: Caller, trial: Trial) -> dict[str, Decimal | None]:
    """Every attempt at its worst (full prompt, full output limit, one retry each), judge calls included.

    A judge prompt holds the request and two answers that do not exist yet: each answer is counted at its
    tier's full output limit.
    """
    config = caller.config
    worst: dict[str, Decimal | None] = {}
    for tier in trial.tiers:
        routed = _route(config, trial, tier)
        costs = [caller.estimate(routed, _for_tier(s.request, routed)).usd for s in trial.samples]
        worst[tier] = None if None in costs else sum(costs, Decimal(0)) * RETRY_ATTEMPTS  # type: ignore[arg-type]
    judge = _judge_route(config, trial)
    env = template_env(caller.config.vault, caller.config.settings.vault.templates_folder)
    system = env.get_template("prompts/judge/system.j2").render()
    reference = config.tier(trial.reference).max_output_tokens
    judge_costs: list[Decimal | None] = []
    for s in trial.samples:
        base = count_tokens(system) + count_tokens(judge_prompt(env, s.request, "", ""))
        for tier in trial.tiers[:-1]:
            prompt_tokens = padded(base, exact=False) + config.tier(tier).max_output_tokens + reference
            usd = estimate(config, judge, prompt_tokens).usd
            judge_costs.append(None if usd is None else usd * 2 * RETRY_ATTEMPTS)  # both orders
    worst["judge"] = None if None in judge_costs else sum(judge_costs, Decimal(0))  # type: ignore[arg-type]
    return worst


def run_trial(caller: Caller, trial: Trial) -> Trial:
    """Send every sample to every tier, judge each cheaper tier against the reference, store the verdicts.

    Stops at the first call the `halt` budget refuses; what was done until then is kept and reported.
    """
    config = caller.config
    env = template_env(config.vault, config.settings.vault.templates_folder)
    judge_route = _judge_route(config, trial)
    # The reference answers first: every cheaper tier is judged against it.
    order = [trial.reference, *trial.tiers[:-1]]
    try:
        for sample in trial.samples:
            answers: dict[str, Answer] = {}
            checks, not_run = phase_checks(config.vault, sample)
            for tier in order:
                missing = trial.results[tier].checks_not_run
                missing += [n for n in not_run if n not in missing]
                routed = _route(config, trial, tier)
                request = _for_tier(sample.request, routed)
                output = schema_model(request.schema, request.schema_name) if request.schema else None
                result = trial.results[tier]
                try:
                    answer = caller.resolve(
                        routed, request, output=output, checks=checks, subject=f"trial {sample.id} on {tier}"
                    )
                except BudgetExceeded:
                    raise
                except TierflowError:
                    result.requests += 1
                    result.unusable += 1
                    continue
                if answer.route.tier != tier:  # a budget downgraded it: not this tier's answer, counted nowhere
                    result.downgraded += 1
                    continue
                result.requests += 1
                result.passed += answer.outcome == "ok" and not answer.checks_failed
                answers[tier] = answer
            reference = answers.get(trial.reference)
            if reference is None:
                continue
            for tier in trial.tiers[:-1]:
                if tier not in answers:
                    continue
                result = trial.results[tier]
                try:
                    verdict = judge_pair(
                        caller,
                        judge_route,
                        env,
                        task=sample.request,
                        candidate=_shown(answers[tier]),
                        reference=_shown(reference),
                        subject=f"trial {sample.id}: {tier} vs {trial.reference}",
                    )
                except BudgetExceeded:
                    raise
                except TierflowError:
                    result.unjudged += 1
                    continue
                result.wins += verdict.outcome == "win"
                result.ties += verdict.outcome == "tie"
                result.losses += verdict.outcome == "loss"
                store_verdict(
                    caller.ledger,
                    verdict,
                    flow=trial.flow,
                    phase=trial.phase,
                    tier=tier,
                    model=answers[tier].route.model_ref,
                    run_id=trial.run_id,
                    subject=f"trial {sample.id} against {trial.reference}",
                    request_id=answers[tier].request_id,
                )
    except BudgetExceeded as exc:
        trial.halted = f"stopped at the budget: {exc}"
    _measure(caller.ledger, trial)
    return trial


def _shown(answer: Answer) -> str:
    """The answer as the judge reads it: the structured data as JSON, else the text."""
    if answer.data is not None:
        return json.dumps(answer.data, ensure_ascii=False, indent=1)
    return answer.text


def _measure(ledger: Ledger, trial: Trial) -> None:
    """Calls, cost and latency per tier and for the judge, from the trial run's ledger rows."""
    judge = trial.judge_result
    for row in ledger.rows(run_id=trial.run_id):
        if row["phase"] == trial.phase and row["tier"] in trial.results:
            target = trial.results[row["tier"]]
        elif row["phase"] == JUDGE_PHASE and judge is not None:
            target = judge
        else:
            continue
        target.calls += 1
        if row["cost_usd"] is None:
            target.unpriced += 1
        else:
            target.cost_usd += row["cost_usd"]
        if row["latency_ms"] is not None:
            target.latency_ms.append(row["latency_ms"])
    if judge is not None:
        judge.requests = judge.calls


def note_date(config: Config) -> str:
    return config.today().isoformat()


def write_report(trial: Trial, vault: Path, config: Config) -> WriteResult:
    """The trial report note in `tierflow/Trials/`, under a name no note in the vault has yet."""
    env = template_env(vault, config.settings.vault.templates_folder)
    day = note_date(config)
    body = env.get_template("notes/trial.md.j2").render(trial=trial, rows=trial.table(), day=day)
    names = VaultNames.scan(vault)
    writer = NoteWriter(vault, TRIALS_FOLDER, today=clock.now().date(), names=names)
    title = f"{day} {trial.flow} {trial.phase}"
    for n in range(2, 1000):
        if not writer.target(title).exists():
            break
        title = f"{day} {trial.flow} {trial.phase} ({n})"
    front_matter = {
        "title": title,
        "tags": ["tierflow/trial"],
        "tierflow_run": trial.run_id,
        "tierflow_flow": trial_flow(trial.flow),
        "tierflow_trial_of": f"{trial.flow} {trial.phase}",
        "tierflow_tiers": trial.tiers,
        "tierflow_judge": trial.judge,
        "tierflow_cost_usd": round(trial.spent_usd, 6),
    }
    return writer.write(title, front_matter, body)


def create_artifact(trial: Trial) -> str:
    """The same table as a Prefect table artifact, when a Prefect API is configured and answers; else why not.

    The artifact belongs to a one-step flow run, `tierflow-trial`, named after the trial: the calls themselves
    run outside Prefect, so a trial needs no server, and the UI still lists every trial's table.
    """
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        return "no Prefect API is configured (PREFECT_API_URL), so no artifact was made; the note has the table"
    from prefect import flow
    from prefect.artifacts import create_table_artifact
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        return f"the Prefect API did not answer ({problem}), so no artifact was made; the note has the table"
    key = "".join(ch if ch.isalnum() else "-" for ch in f"trial-{trial.flow}-{trial.phase}".lower())

    @flow(name="tierflow-trial", flow_run_name=f"trial · {trial.flow} {trial.phase} · {trial.run_id}")
    def publish() -> None:
        create_table_artifact(
            table=trial.table(),
            key=key,
            description=f"tierflow trial {trial.run_id}: {trial.flow} {trial.phase}, against {trial.reference}",
        )

    publish()
    return f"Prefect table artifact {key}"
