"""The one path every model call takes: route -> cache -> reserve -> call -> record -> settle."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from tierflow.core import clock
from tierflow.core.budget import Budgets, Estimate, estimate, padded
from tierflow.core.checks import Check, run_checks
from tierflow.core.config import Config, load_config
from tierflow.core.errors import BudgetExceeded, MalformedResponse, ProviderError
from tierflow.core.ledger import CallRecord, Ledger, now_iso
from tierflow.core.providers import Completion, Provider, Request, make_provider
from tierflow.core.routing import Route, route, route_to_tier
from tierflow.core.tokens import count_tokens
from tierflow.core.usage import Usage, price

log = logging.getLogger("tierflow")

T = TypeVar("T", bound=BaseModel)


class RunSettings(BaseModel, frozen=True):
    """Everything a task needs to rebuild the call path in its own process; plain, serialisable data."""

    vault: str | None = None
    config_path: str | None = None
    profile: str | None = None
    tier_overrides: dict[str, str] = {}
    run_id: str = ""
    flow: str = "adhoc"
    use_cache: bool = True

    def with_run(self, flow: str) -> RunSettings:
        return self.model_copy(update={"flow": flow, "run_id": self.run_id or new_run_id()})

    @classmethod
    def start(
        cls,
        flow: str,
        *,
        vault: str,
        config: str | None,
        profile: str | None,
        tier: dict[str, str] | None,
        run_id: str | None,
        parameters: dict[str, Any],
    ) -> RunSettings:
        """Settings for a new run of `flow` (or a resumed one, given its id), remembered for `tierflow resume`."""
        from prefect.context import FlowRunContext

        from tierflow.core.registry import check_same_install
        from tierflow.vault.notes import check_vault

        context = FlowRunContext.get()
        if context is not None and context.flow is not None:
            check_same_install(context.flow.fn, flow)
        settings = cls(
            vault=str(check_vault(vault)),
            config_path=config,
            profile=profile,
            tier_overrides=tier or {},
            run_id=run_id or "",
        ).with_run(flow)
        caller_for(settings).ledger.remember_run(
            settings.run_id, flow, {**parameters, "profile": profile, "config": config, "tier": tier or {}}
        )
        return settings


def new_run_id() -> str:
    return clock.now().astimezone().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class Answer:
    """A model's answer and what it cost."""

    text: str
    route: Route
    usage: Usage
    cost_usd: float | None
    cached: bool
    data: dict[str, Any] | None = None
    parsed: Any = None
    warnings: tuple[tuple[str, str], ...] = field(default=())
    checks_failed: tuple[str, ...] = ()
    """Names of the checks the answer still fails: no tier passed them, so the answer is kept with a warning."""


class Caller:
    """The call path for one run: config, providers, ledger and budgets, shared by its tasks."""

    def __init__(self, settings: RunSettings, config: Config | None = None) -> None:
        self.settings = settings
        self.config = config or load_config(
            Path(settings.vault) if settings.vault else None,
            config_path=Path(settings.config_path) if settings.config_path else None,
            profile=settings.profile,
        )
        self.ledger = Ledger(self.config.ledger_url)
        self.budgets = Budgets(self.config, self.ledger, run_id=settings.run_id, flow=settings.flow)
        self._providers: dict[str, Provider] = {}
        self._lock = threading.Lock()

    def provider(self, name: str) -> Provider:
        with self._lock:
            if name not in self._providers:
                self._providers[name] = make_provider(name, self.config.settings.providers[name])
            return self._providers[name]

    def route(
        self, phase: str, complexity: str, *, front_matter: Mapping[str, Any] | None = None, note: str = ""
    ) -> Route:
        return route(
            self.config,
            phase=phase,
            complexity=complexity,
            overrides=self.settings.tier_overrides,
            front_matter=front_matter,
            note=note,
        )

    def request(self, routed: Route, *, system: str, prompt: str, **kw: Any) -> Request:
        return Request(
            model=routed.model, system=system, prompt=prompt, max_output_tokens=routed.max_output_tokens, **kw
        )

    def estimate(
        self, routed: Route, request: Request, *, provider_count: bool = False, batch: bool = False
    ) -> Estimate:
        """Worst case of a request: every prompt token billed and every output token used.

        Prompt tokens come from the provider's own counter when asked for and available (Anthropic's
        count_tokens, with a key set), else from the offline o200k count with headroom. The call path
        uses the offline count: a counting round trip before every call would cost more than it saves.
        """
        exact = None
        provider_config = self.config.provider_for(routed.tier)[1]
        if provider_count and routed.provider_kind == "anthropic" and os.environ.get(provider_config.api_key_env or ""):
            try:
                exact = self.provider(routed.provider).count_tokens(request)
            except ProviderError:
                exact = None
        if exact is None:
            counted = (
                count_tokens(request.system)
                + count_tokens(request.cache_prefix)
                + count_tokens(request.prompt)
                + (count_tokens(json.dumps(request.schema)) if request.schema else 0)
            )
            prompt_tokens = padded(counted, exact=routed.provider_kind == "offline")
        else:
            prompt_tokens = exact
        prefix = padded(count_tokens(request.cache_prefix), exact=False) if request.cache_prefix else 0
        return estimate(self.config, routed, prompt_tokens, min(prefix, prompt_tokens), batch=batch)

    def downgrades(self, routed: Route, request: Request, *, batch: bool = False) -> list[tuple[Route, Estimate]]:
        """The routed call, then each cheaper tier down to the tightest `downgrade` floor."""
        candidates = [(routed, self.estimate(routed, request, batch=batch))]
        floors = [b.floor for _, b in self.budgets.applicable(routed.phase) if b.policy == "downgrade"]
        if not floors:
            return candidates
        order = list(self.config.tier_order)
        if routed.tier not in order:
            return candidates
        floor_index = max(order.index(f) for f in floors if f) if any(floors) else 0
        for tier in reversed(order[floor_index : order.index(routed.tier)]):
            cheaper = route_to_tier(
                self.config,
                phase=routed.phase,
                complexity=routed.complexity,
                tier=tier,
                rule=f"budget downgrade from {routed.tier}",
            )
            cheaper_request = Request(**{**request.__dict__, "model": cheaper.model})
            candidates.append((cheaper, self.estimate(cheaper, cheaper_request, batch=batch)))
        return candidates

    def build(
        self,
        *,
        phase: str,
        complexity: str,
        system: str,
        prompt: str,
        output: type[BaseModel] | None = None,
        cache_prefix: str = "",
        front_matter: Mapping[str, Any] | None = None,
        note: str = "",
        routed: Route | None = None,
    ) -> tuple[Route, Request]:
        """The route and the request a call would make; `plan` estimates these without calling."""
        routed = routed or self.route(phase, complexity, front_matter=front_matter, note=note)
        return routed, self.request(
            routed,
            system=system,
            prompt=prompt,
            cache_prefix=cache_prefix,
            schema=output.model_json_schema() if output is not None else None,
            schema_name=output.__name__.lower() if output is not None else "result",
            cache_key=f"tierflow-{self.settings.flow}-{phase}" if cache_prefix else None,
        )

    def ask(
        self,
        *,
        phase: str,
        complexity: str,
        system: str,
        prompt: str,
        output: type[T] | None = None,
        cache_prefix: str = "",
        subject: str = "",
        front_matter: Mapping[str, Any] | None = None,
        note: str = "",
        routed: Route | None = None,
        checks: Sequence[Check] = (),
    ) -> Answer:
        """Route and make one call; with `output`, validate the structure and run `checks` on it."""
        routed, request = self.build(
            phase=phase,
            complexity=complexity,
            system=system,
            prompt=prompt,
            output=output,
            cache_prefix=cache_prefix,
            front_matter=front_matter,
            note=note,
            routed=routed,
        )
        answer = self._call(routed, request, subject=subject)
        if output is None:
            return answer
        for attempt in (1, 2):
            try:
                parsed = output.model_validate(answer.data or {})
                failures = run_checks(checks, parsed)
                if not failures or attempt == 2:
                    return _replace(
                        answer, parsed=parsed, checks_failed=tuple(dict.fromkeys(f.check for f in failures))
                    )
                answer = self._call(routed, request, subject=subject, use_cache=False)
                continue
            except ValidationError as exc:
                problem = f"{exc.error_count()} field error(s), first: {exc.errors()[0]['msg']}"
                if attempt == 2:
                    raise MalformedResponse(
                        routed.provider,
                        routed.model,
                        f"returned a malformed {request.schema_name} twice ({problem})",
                    ) from None
                log.warning(
                    "%s returned a malformed %s (%s); retrying once",
                    routed.model_ref,
                    request.schema_name,
                    problem,
                )
                answer = self._call(routed, request, subject=subject, use_cache=False)
        raise AssertionError("unreachable")

    def reuse(self, routed: Route, key: str, subject: str) -> tuple[str, dict[str, Any] | None] | None:
        """A stored answer for this request, recorded in the ledger as a zero-token cached call; else None."""
        if not self.settings.use_cache:
            return None
        hit = self.ledger.cached_response(key)
        if hit is not None:
            self.ledger.record(self._record(routed, Usage(), 0.0, 0.0, subject, now_iso(), cached=True))
        return hit

    def _call(self, routed: Route, request: Request, *, subject: str, use_cache: bool = True) -> Answer:
        key = _cache_key(routed, request)
        hit = self.reuse(routed, key, subject) if use_cache else None
        if hit is not None:
            return Answer(text=hit[0], data=hit[1], route=routed, usage=Usage(), cost_usd=0.0, cached=True)
        try:
            reservation = self.budgets.reserve(self.downgrades(routed, request))
        except BudgetExceeded as exc:
            self._budget_event("tierflow.budget.exceeded", exc.budget, routed, subject, policy="halt", detail=str(exc))
            raise
        for budget, message in reservation.warnings:
            log.warning("budget: over %s", message)
            self._budget_event("tierflow.budget.exceeded", budget, routed, subject, policy="warn", detail=message)
        if reservation.route is not routed:
            log.warning(
                "budget: %s call on %s downgraded from tier %s to %s",
                routed.phase,
                subject,
                routed.tier,
                reservation.route.tier,
            )
            self._budget_event(
                "tierflow.budget.downgraded",
                reservation.budget or "",
                routed,
                subject,
                policy="downgrade",
                detail=f"{routed.tier} -> {reservation.route.tier}",
            )
            routed = reservation.route
            request = Request(**{**request.__dict__, "model": routed.model})
        started = now_iso()
        t0 = time.perf_counter()
        self.budgets.keep_alive(reservation.id)
        try:
            completion = self.provider(routed.provider).complete(request)
        except BaseException:
            self.budgets.release(reservation.id)
            raise
        self.budgets.stop_renewing(reservation.id)
        latency_ms = (time.perf_counter() - t0) * 1000
        cost = self._cost(routed, completion, batch=False)
        record = self._record(
            routed,
            completion.usage,
            cost,
            latency_ms,
            subject,
            started,
            downgraded_from=reservation.downgraded_from,
        )
        self.budgets.settle(reservation.id, record)
        if completion.data is not None or completion.text:
            self.ledger.cache_response(key, routed.model_ref, completion.text, completion.data)
        return Answer(
            text=completion.text,
            data=completion.data,
            route=routed,
            usage=completion.usage,
            cost_usd=cost,
            cached=False,
            warnings=reservation.warnings,
        )

    def _budget_event(self, event: str, budget: str, routed: Route, subject: str, *, policy: str, detail: str) -> None:
        """A Prefect event for automations (notify, pause a deployment); only inside a Prefect run."""
        flow_run_id, task_run_id = prefect_run_ids()
        if flow_run_id is None:
            return
        from prefect.events import emit_event

        emit_event(
            event=event,
            resource={
                "prefect.resource.id": f"tierflow.budget.{budget or 'unnamed'}",
                "prefect.resource.name": budget,
                "tierflow.policy": policy,
            },
            related=[
                {
                    "prefect.resource.id": f"tierflow.run.{self.settings.run_id}",
                    "prefect.resource.role": "tierflow-run",
                },
                {
                    "prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                    "prefect.resource.role": "flow-run",
                },
            ],
            payload={
                "flow": self.settings.flow,
                "phase": routed.phase,
                "tier": routed.tier,
                "model": routed.model_ref,
                "subject": subject,
                "detail": detail,
            },
        )

    def _cost(self, routed: Route, completion: Completion, *, batch: bool) -> float | None:
        if not completion.usage.known:
            log.warning(
                "%s returned no usage block: recorded as unknown usage (not zero) and its budget reservation "
                "stays charged at the worst case",
                routed.model_ref,
            )
            return None
        _, provider_config = self.config.provider_for(routed.tier)
        cost = price(
            completion.usage,
            routed.model,
            provider_kind=routed.provider_kind,
            override=self.config.tier(routed.tier).price,
            batch_discount=provider_config.batch_discount if batch else 1.0,
        )
        if cost is None:
            log.warning(
                "no price known for %s: its cost is recorded as unknown (null). Set [tiers.%s.price] in the "
                "config to price it.",
                routed.model_ref,
                routed.tier,
            )
            return None
        return float(cost)

    def _record(
        self,
        routed: Route,
        usage: Usage,
        cost: float | None,
        latency_ms: float,
        subject: str,
        started: str,
        *,
        cached: bool = False,
        batch_id: str | None = None,
        downgraded_from: str | None = None,
    ) -> CallRecord:
        flow_run_id, task_run_id = prefect_run_ids()
        return CallRecord(
            run_id=self.settings.run_id,
            flow=self.settings.flow,
            phase=routed.phase,
            complexity=routed.complexity,
            tier=routed.tier,
            provider=routed.provider,
            model=routed.model,
            usage=usage,
            cost_usd=cost,
            latency_ms=latency_ms,
            subject=subject[:256],
            started_at=started,
            batch=batch_id is not None,
            batch_id=batch_id,
            cached_result=cached,
            route_rule=routed.rule,
            downgraded_from=downgraded_from,
            flow_run_id=flow_run_id,
            task_run_id=task_run_id,
        )


def _replace(answer: Answer, **changes: Any) -> Answer:
    return Answer(**{**answer.__dict__, **changes})


def _cache_key(routed: Route, request: Request) -> str:
    payload = json.dumps(
        {"model": routed.model_ref, **request.__dict__}, sort_keys=True, ensure_ascii=False, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def prefect_run_ids() -> tuple[str | None, str | None]:
    """The current Prefect flow-run and task-run ids, or None outside a run. Never imports Prefect."""
    if "prefect.context" not in sys.modules:
        return None, None
    from prefect.context import FlowRunContext, TaskRunContext

    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        return str(task_ctx.task_run.flow_run_id or ""), str(task_ctx.task_run.id)
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return str(flow_ctx.flow_run.id), None
    return None, None


_callers: dict[str, Caller] = {}
_callers_lock = threading.Lock()


def caller_for(settings: RunSettings) -> Caller:
    """One Caller per run and process, so tasks share SDK clients and the ledger's engine."""
    key = settings.model_dump_json()
    with _callers_lock:
        if key not in _callers:
            _callers[key] = Caller(settings)
        return _callers[key]
