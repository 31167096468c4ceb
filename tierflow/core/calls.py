"""The one path every model call takes: route -> cache -> reserve -> call -> record -> settle."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Connection

from tierflow.core import clock, telemetry
from tierflow.core.budget import (
    Budgets,
    BudgetState,
    Estimate,
    Reservation,
    estimate,
    padded,
    release_dead_holders,
)
from tierflow.core.caching import worth_caching
from tierflow.core.checks import Check, Failure, describe, run_checks
from tierflow.core.config import Config, load_config
from tierflow.core.context import check_fits, overflow
from tierflow.core.errors import (
    BudgetExceeded,
    ConfigError,
    LedgerUnreachable,
    MalformedResponse,
    ModelNotFound,
    OutputLimitReached,
    OutputModeRejected,
    ProviderError,
)
from tierflow.core.ledger import CallRecord, Ledger, RequestRecord, lost_call, now_iso, signals
from tierflow.core.providers import (
    OUTPUT_MODES,
    Completion,
    Provider,
    Request,
    api_key,
    make_provider,
    with_lost_attempts,
)
from tierflow.core.routing import COLD_START, Route, escalations, request_router, route, route_to_tier, value_of
from tierflow.core.scope import CallScope
from tierflow.core.slots import NO_SLOT, POLL_S, TierSlots, started_task_runs
from tierflow.core.tokens import count_tokens
from tierflow.core.usage import UNKNOWN_USAGE, Usage, price

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
    retry_failed: bool = False
    """Pay again for requests whose answer an earlier run kept without passing (`tierflow run --retry-failed`);
    otherwise an unchanged rerun reuses the kept answer, with its warning."""
    project: str | None = None
    """The project the run's spend is attributed to (`--project`, the config's [project], a course code)."""
    deployment: str | None = None
    """The Prefect deployment that started the run, if one did."""

    def resume_command(self) -> str:
        """The `tierflow resume` command line that continues this run, runnable as printed."""
        from tierflow.core.commands import tierflow_command

        return tierflow_command("resume", self.run_id, vault=self.vault, config=self.config_path, profile=self.profile)

    def with_run(self, flow: str) -> RunSettings:
        """These settings for a run of `flow`: under their run id, or a new one (a run a deployment started)."""
        if self.run_id:
            return self.model_copy(update={"flow": flow})
        config = load_config(
            Path(self.vault) if self.vault else None,
            config_path=Path(self.config_path) if self.config_path else None,
            profile=self.profile,
        )
        return self.model_copy(update={"flow": flow, "run_id": new_run_id(config.settings.vault.timezone)})

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
        retry_failed: bool = False,
    ) -> RunSettings:
        """Settings for a new run of `flow` (or a resumed one, given its id), remembered for `tierflow resume`."""
        from prefect.context import FlowRunContext

        from tierflow.core.folders import check_vault
        from tierflow.core.registry import check_same_install

        context = FlowRunContext.get()
        if context is not None and context.flow is not None:
            check_same_install(context.flow.fn, flow, context.flow.name)
        settings = cls(
            vault=str(check_vault(vault)),
            config_path=config,
            profile=profile,
            tier_overrides=tier or {},
            run_id=run_id or "",
            retry_failed=retry_failed,
        ).with_run(flow)
        ledger = caller_for(settings).ledger
        ledger.remember_run(
            settings.run_id, flow, {**parameters, "profile": profile, "config": config, "tier": tier or {}}
        )
        # A killed run's calls in flight (this one's, being resumed, or another's) may be billed: counted now, under
        # their own run, before this run's calls and report, not at a reservation once their leases run out.
        lost = [r for r in release_dead_holders(ledger) if r.lost]
        if lost:
            runs = ", ".join(dict.fromkeys(r.run_id for r in lost))
            log.warning(
                "%d call(s) sent by a process on this host that stopped before their answers came back (run %s) "
                "recorded as lost at their worst case, $%.4f: the provider may have billed them",
                len(lost),
                runs,
                sum(r.usd for r in lost),
            )
        return settings


def new_run_id(timezone: str) -> str:
    """A new run's id, `YYYYMMDD-HHMMSS-` and six hex digits: now, on the wall clock of `timezone` (the vault's
    `[vault] timezone`, as its run report and `tierflow spend --by day` date the run), whatever the machine's zone."""
    from zoneinfo import ZoneInfo

    return clock.now().astimezone(ZoneInfo(timezone)).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _check_ask(output: object, checks: object) -> None:
    """Refuse, before any call is paid for, an `ask` whose `output` or `checks` a flow of your own got wrong (a
    function, a model instance, one Check, checks on a text answer): each failed only after the call, or never."""
    if output is not None and not (isinstance(output, type) and issubclass(output, BaseModel)):
        raise ConfigError(
            f"ask(output={output!r}): output takes a pydantic model class (class Verdict(BaseModel): ...; "
            "output=Verdict), or nothing for a text answer"
        )
    if isinstance(checks, Check) or not all(isinstance(c, Check) for c in checks):  # type: ignore[attr-defined]
        raise ConfigError(
            f"ask(checks={checks!r}): checks takes a list of Check(name, problems), for example "
            "checks=[Check('my_check', my_function)], where my_function(answer) returns a list of problems"
        )
    if checks and output is None:
        names = ", ".join(c.name for c in checks)  # type: ignore[attr-defined]
        raise ConfigError(
            f"ask(checks=[{names}]) without output=: checks judge a structured answer (.parsed), so a text answer "
            "would never be checked; give output= a pydantic model, or check the answer's .text yourself"
        )


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
    outcome: str = "ok"
    request_id: str | None = None
    """The request this answers (`calls.request_id`, the same on every tier): what a judge verdict, an edit or a
    rating of this answer is linked to (`signals.request_id`)."""


LEARNED_OUTPUT_MODE = "learned_output_mode"
"""`Completion.extra`'s key for the structured-output form the call found its server accepts (`Caller._complete`)."""

NOT_USED = "not used:"
"""What the `route_rule` of a cached answer's row starts with when the answer failed a check added since it was
cached and the call was made afresh: it was judged, never used, and is never an answer kept (`shadow:` rows, likewise,
never answer)."""

_RANK = {"error": 0, "refused": 0, "truncated": 1, "malformed": 1, "check_failed": 2, "ok": 3}


@dataclass(frozen=True)
class Attempt:
    """One billed attempt at an answer, and the verdict on it."""

    outcome: str
    """`ok`, `malformed`, `check_failed`, `truncated` or `refused`. (A ledger row may also say `error`: the
    answer arrived and handling it raised; or `lost`: sent and never answered.)"""
    answer: Answer
    route: Route
    request: Request
    failures: tuple[Failure, ...] = ()
    kept: bool = False
    """The answer an earlier run kept for this request, replayed from the cache (nothing billed)."""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def checks_failed(self) -> str | None:
        """The failed checks' names for the ledger row, comma-separated."""
        names = [f.check for f in self.failures] if self.outcome == "check_failed" else []
        return ",".join(dict.fromkeys(names)) or None

    @property
    def rank(self) -> tuple[int, int]:
        """Which failed attempt to keep: a readable answer with fewer failures beats the rest."""
        return _RANK[self.outcome], -len(self.failures)


@dataclass(frozen=True)
class CacheEntry:
    """An answer that passed, to store under the key of the request that produced it."""

    key: str
    model: str
    text: str
    data: dict[str, Any] | None
    request: Request


class Caller:
    """The call path for one run: config, providers, ledger and budgets, shared by its tasks."""

    def __init__(self, settings: RunSettings, config: Config | None = None, ledger: Ledger | None = None) -> None:
        """`ledger`: one the caller opened already (`tierflow routing explain` routes on a ledger opened read-only);
        by default the config's, opened to write."""
        self.settings = settings
        self.config = config or load_config(
            Path(settings.vault) if settings.vault else None,
            config_path=Path(settings.config_path) if settings.config_path else None,
            profile=settings.profile,
        )
        # Pooled for the task runs a phase keeps unfinished at once, which tier limits may raise above `workers`.
        self.ledger = ledger or Ledger(
            self.config.ledger_url,
            workers=started_task_runs(self.config),
            outage_s=self.config.settings.ledger_outage_s,
        )
        self.budgets = Budgets(
            self.config, self.ledger, run_id=settings.run_id, flow=settings.flow, project=settings.project
        )
        self.slots = TierSlots(self.config, self.ledger)
        self._providers: dict[str, Provider] = {}
        self._modes: dict[tuple[str, str], str] = {}
        self._mode_locks: dict[tuple[str, str], threading.Lock] = {}
        self._learned: dict[tuple[str, str], tuple[str, str]] | None = None
        self._retired: set[str] = set()
        """`provider:model` refs the provider said no longer exist (HTTP 404 `model_not_found`)."""
        self._lock = threading.Lock()

    def provider(self, name: str) -> Provider:
        with self._lock:
            if name not in self._providers:
                self._providers[name] = make_provider(name, self.config.settings.providers[name])
            return self._providers[name]

    def warm(self, routed: Route) -> None:
        """Do this process's one-off work for calls on `routed` ahead of them: load the tokenizer and the model's
        prices, and build the provider's SDK client (importing its HTTP stack).

        Left to the first calls, a phase's first wave did it in every thread at once, under one import lock,
        while Prefect started the phase's task runs: the first call was sent 0.8 s after its task run started
        in a fresh process, against 0.02 s once warm (`benchmarks/tier_throughput.py`). A failure here (no API
        key, no price) is the first call's to report."""
        try:
            count_tokens("warm")
            price(
                Usage(input_tokens=1, output_tokens=1),
                routed.model,
                provider_kind=routed.provider_kind,
                override=self.config.tier(routed.tier).price,
            )
            getattr(self.provider(routed.provider), "client", None)
        except Exception:
            return

    def route(
        self,
        phase: str,
        complexity: str,
        *,
        front_matter: Mapping[str, Any] | None = None,
        note: str = "",
        adaptive: bool = True,
        prompt: str = "",
        unfit: frozenset[str] = frozenset(),
    ) -> Route:
        """`adaptive=False`: the person chose the complexity, so learned routing (adaptive or per request) does not
        override it. `unfit`: in request mode, tiers whose context window cannot take this request; learned routing
        choosing one of them leaves the request to the next that can tell (phase evidence, then the rules)."""
        mode = self.config.settings.routing.mode
        value = value_of(self.config, flow=self.settings.flow, phase=phase, front_matter=front_matter)
        if mode == "request" and adaptive:
            routed = self._route_request(
                phase, complexity, front_matter=front_matter, note=note, prompt=prompt, unfit=unfit
            )
        else:
            routed = route(
                self.config,
                phase=phase,
                complexity=complexity,
                overrides=self.settings.tier_overrides,
                front_matter=front_matter,
                note=note,
                learned=self.learned() if adaptive and mode == "adaptive" else None,
            )
        return replace(routed, value=value)

    def _route_request(
        self,
        phase: str,
        complexity: str,
        *,
        front_matter: Mapping[str, Any] | None,
        note: str,
        prompt: str,
        unfit: frozenset[str] = frozenset(),
        consult_router: bool = True,
    ) -> Route:
        """`[routing] mode = "request"`: the installed per-request router's tier for this request; while it
        cannot tell (cold start, or no tier it knows for this flow and phase reaches the target), or its tier is
        `unfit` (its window cannot take the request), the phase's evidence as in adaptive mode, then the rules,
        and `rule` says which and why."""
        value = value_of(self.config, flow=self.settings.flow, phase=phase, front_matter=front_matter)
        router = request_router() if consult_router else None
        decided = None
        undecided = COLD_START  # why the router did not decide
        if router is not None:
            decided = router(
                self.config, self.ledger, flow=self.settings.flow, phase=phase, complexity=complexity,
                text=prompt, value=value, run_id=self.settings.run_id,
            )  # fmt: skip
            if decided is not None and decided[0] is None:
                undecided, decided = decided[1], None
            elif decided is not None and decided[0] in unfit:
                # Its verdict without its model's basis: the ledger's `route_rule` (256 characters) keeps what follows.
                verdict = decided[1].split("; ", 1)[0]
                undecided = f"request: {decided[0]}'s context window cannot take this request ({verdict})"
                decided = None
        joint = ", " if undecided == COLD_START else "; "
        evidence = self.learned().get((phase, complexity))
        if decided is None and evidence is not None and evidence[0] not in unfit:
            tier, why = evidence
            decided = (tier, f"{undecided}{joint}phase evidence; {why}")
        elif decided is None and evidence is not None:
            undecided = f"{undecided}{joint}phase evidence's {evidence[0]} cannot take it either"
            joint = "; "
        routed = route(
            self.config,
            phase=phase,
            complexity=complexity,
            overrides=self.settings.tier_overrides,
            front_matter=front_matter,
            note=note,
            learned={(phase, complexity): decided} if decided is not None else None,
        )
        if decided is None and routed.rule.startswith("routing."):
            routed = replace(routed, rule=f"{undecided}{joint}rules; {routed.rule}")
        return routed

    def sizing_route(self, phase: str, complexity: str) -> Route:
        """The route whose context window a flow sizes a phase's prompts for (the groups of a long week or term).
        `route`'s, except in request mode: there each request is routed on its own text, and one whose tier's
        window cannot take it goes where the router's choice is left out (`build`), the route returned here."""
        if self.config.settings.routing.mode != "request":
            return self.route(phase, complexity)
        routed = self._route_request(phase, complexity, front_matter=None, note="", prompt="", consult_router=False)
        return replace(routed, value=value_of(self.config, flow=self.settings.flow, phase=phase))

    def learned(self) -> dict[tuple[str, str], tuple[str, str]]:
        """Adaptive routing's table for this run's flow and project, read from the ledger once per run and process."""
        with self._lock:
            if self._learned is None:
                from tierflow.core.evidence import learned_routes

                self._learned = learned_routes(
                    self.config, self.ledger, self.settings.flow, project=self.settings.project
                )
            return self._learned

    def request(self, routed: Route, *, system: str, prompt: str, **kw: Any) -> Request:
        return Request(
            model=routed.model, system=system, prompt=prompt, max_output_tokens=routed.max_output_tokens, **kw
        )

    def estimate(
        self,
        routed: Route,
        request: Request,
        *,
        provider_count: bool = False,
        batch: bool = False,
        uncounted_bound: bool = True,
    ) -> Estimate:
        """Worst case of a request: every prompt token billed and every output token used.

        Prompt tokens come from the provider's own counter when asked for and available (Anthropic's
        count_tokens, with the key the call itself would use), else from the offline o200k count with headroom.
        The call path asks for the provider's count only when the offline count could decide wrongly whether a
        call fits under a budget cap (`_near_cap`): elsewhere a counting round trip before every call costs more
        than it saves. Asked for but unavailable (no key, the endpoint failing), the count is the prompt's
        byte-level bound (`_byte_bound`), since the padded o200k count is no upper bound for Claude's tokenizer
        and a budget checks against this; `uncounted_bound=False` (a plan's estimate) keeps the padded count.
        """
        exact = None
        counting = provider_count and routed.provider_kind == "anthropic"
        if counting:
            try:
                # The key the call would use: its env var, else its Prefect Secret block. Without one, no count.
                if api_key(routed.provider, self.config.provider_for(routed.tier)[1], routed.model, required=False):
                    exact = self.provider(routed.provider).count_tokens(request)
            except ProviderError:
                exact = None
        if exact is None and counting and uncounted_bound:
            prompt_tokens = _byte_bound(request)
        elif exact is None:
            counted = (
                count_tokens(request.system)
                + count_tokens(request.cache_prefix)
                + count_tokens(request.prompt)
                + (count_tokens(json.dumps(request.schema)) if request.schema else 0)
            )
            prompt_tokens = padded(counted, exact=routed.provider_kind == "offline")
        else:
            prompt_tokens = exact
        # Everything before the cache breakpoint is written to the cache at the write rate: the tools (the output
        # schema), the system prompt and the prefix, not the prefix alone.
        cached = (
            count_tokens(request.system)
            + count_tokens(request.cache_prefix)
            + (count_tokens(json.dumps(request.schema)) if request.schema else 0)
        )
        prefix = padded(cached, exact=False) if request.cache_prefix else 0
        # The request's own output limit: a retry of a cut-off answer may ask for more than the tier's default.
        sized = replace(routed, max_output_tokens=request.max_output_tokens)
        return estimate(self.config, sized, prompt_tokens, min(prefix, prompt_tokens), batch=batch)

    def downgrades(
        self, routed: Route, request: Request, *, batch: bool = False, count: bool | None = None
    ) -> list[tuple[Route, Estimate]]:
        """The routed call, then each cheaper tier down to the tightest `downgrade` floor.

        `count`: size prompts with the provider's counter (True), the offline count (False), or as `_near_cap`
        decides (None)."""
        # The routed call as it will be sent: a retry of a cut-off answer may carry more than the tier's default.
        routed = replace(routed, max_output_tokens=request.max_output_tokens)
        counted = self._near_cap(routed, request, batch=batch) if count is None else count
        candidates = [(routed, self.estimate(routed, request, batch=batch, provider_count=counted))]
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
            cheaper = replace(cheaper, value=routed.value)
            cheaper_request = replace(request, model=cheaper.model, max_output_tokens=cheaper.max_output_tokens)
            candidates.append((cheaper, self.estimate(cheaper, cheaper_request, batch=batch, provider_count=counted)))
        return candidates

    def _near_cap(
        self, routed: Route, request: Request, *, batch: bool, states: Sequence[BudgetState] | None = None
    ) -> bool:
        """Whether a capped budget's remainder could be overrun by a prompt that the offline o200k count (with
        its headroom) undercounts, so the provider's own counter must size the reservation.

        Only Anthropic qualifies: its tokenizer is not o200k (CJK and emoji can take several times as many
        tokens) and its counter is free; OpenAI's models count in o200k. The bound is the prompt's UTF-8 bytes
        plus `FRAMING_TOKENS` (no byte-level tokenizer spends more than a token per byte): when that worst case
        fits every capped budget that applies, the count cannot matter and no round trip is made. Without a
        capped budget this costs nothing; with one, a read of its state, unless `states` (those a reservation's
        transaction has just read, `Budgets.reserve_in`'s `claim`) are given.
        """
        if routed.provider_kind != "anthropic":
            return False
        capped = [(n, b) for n, b in self.budgets.applicable(routed.phase) if b.usd is not None or b.tokens is not None]
        if not capped:
            return False
        worst = estimate(self.config, routed, _byte_bound(request), batch=batch)
        if states is None:
            # A write transaction: the first budget check of a process may register the config's budget scopes.
            with self.ledger.transaction() as own:
                states = self.budgets.states_in(own, capped)
        else:
            names = {name for name, _ in capped}
            states = [s for s in states if s.name in names]
        return not all(s.fits(s.usd_of(worst) or 0.0, worst.tokens) for s in states if s.applies_to(routed))

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
        """The route and the request a call would make; `plan` estimates these without calling.

        In request mode, a request the routed tier's window cannot take (by the offline count) is routed again
        without that tier, so that a router trained on short requests never sends a long one where it cannot go;
        where no other tier takes it either, the call path refuses it as before (`check_fits`)."""
        schema = output.model_json_schema() if output is not None else None

        def request(routed: Route) -> Request:
            return self.request(
                routed,
                system=system,
                prompt=prompt,
                cache_prefix=cache_prefix,
                schema=schema,
                schema_name=output.__name__.lower() if output is not None else "result",
                cache_key=f"tierflow-{self.settings.flow}-{phase}" if cache_prefix else None,
                # A prefix shorter than the model caches is sent unmarked: marking it would buy nothing.
                cacheable=bool(cache_prefix) and worth_caching(self.config, routed, system, cache_prefix, schema),
            )

        if routed is not None:
            return routed, request(routed)
        routed = self.route(phase, complexity, front_matter=front_matter, note=note, prompt=prompt)
        built = request(routed)
        unfit: frozenset[str] = frozenset()
        while (
            self.config.settings.routing.mode == "request"
            and routed.rule.startswith("request:")
            and routed.tier not in unfit
            and overflow(self.config, routed, self.estimate(routed, built).prompt_tokens) is not None
        ):
            unfit |= {routed.tier}
            routed = self.route(phase, complexity, front_matter=front_matter, note=note, prompt=prompt, unfit=unfit)
            built = request(routed)
        return routed, built

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
        retry_failed: bool | None = None,
    ) -> Answer:
        """Route one call and close the loop on it (see `resolve`)."""
        _check_ask(output, checks)
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
        return self.resolve(routed, request, output=output, checks=checks, subject=subject, retry_failed=retry_failed)

    def resolve(
        self,
        routed: Route,
        request: Request,
        *,
        output: type[BaseModel] | None,
        checks: Sequence[Check] = (),
        subject: str = "",
        first: Attempt | None = None,
        retry_failed: bool | None = None,
    ) -> Answer:
        """Call until an answer passes: on failure one informed retry, then one tier up, to the ceiling.

        Each attempt is billed, recorded and budgeted on its own. When nothing passes, the best answer is
        kept and returned with `checks_failed` set, so the phase can write it with a warning: nothing paid
        for is lost. A kept answer is remembered for its request (as kept, never as validated): an unchanged
        rerun reuses it, warning and all, as a cached call, unless the run pays again on purpose
        (`retry_failed`). An answer that passed only on a retry or a dearer tier is remembered for the request
        the same way (with no failed checks): the passing answer is cached under the request that got it, which
        an unchanged rerun never sends first, so without this the rerun would pay for the first attempt again.
        `first` is an attempt already made elsewhere (a batch item), which the loop continues. `retry_failed`
        decides for this request alone (None: as the run's settings say): a flow pays again only for the kept
        answers of the work it redoes.
        """
        kept_key = _kept_key(routed, request)
        retry = self.settings.retry_failed if retry_failed is None else retry_failed
        reuse = first is None and self.settings.use_cache and not retry
        cut_key = self._cut_off_key(routed, request) if self.settings.use_cache else None
        try:
            answer, attempts = self._resolve(
                routed, request, output=output, checks=checks, subject=subject, first=first,
                kept_key=kept_key if reuse else None, cut_key=cut_key if reuse else None,
            )  # fmt: skip
        except MalformedResponse as exc:
            if cut_key is not None and isinstance(exc, OutputLimitReached) and exc.repeats:
                self.ledger.remember_cut_off(
                    cut_key, run_id=self.settings.run_id, cause=exc.cause,
                    model=routed.model_ref, tier=routed.tier, flow=self.settings.flow, phase=routed.phase,
                )  # fmt: skip
            elif cut_key is not None and retry:
                self.ledger.forget_kept(cut_key)  # sent again at these limits, and not cut off every time now
            raise
        answer = replace(answer, request_id=request_identity(self.settings.flow, routed.phase, request)[0])
        if answer.cached:
            return answer  # replayed: a passing answer, or the one an earlier run kept
        # A batch item (`first`) is remembered too, so that a rerun's pre-submit look-up (`replay_kept`) finds it.
        if answer.checks_failed or (attempts > 1 and self.settings.use_cache):
            self.ledger.remember_kept(
                kept_key, model=answer.route.model_ref, tier=answer.route.tier, text=answer.text, data=answer.data,
                checks_failed=",".join(answer.checks_failed), flow=self.settings.flow, phase=routed.phase,
            )  # fmt: skip
        elif retry:
            self.ledger.forget_kept(kept_key)  # resolved afresh: an earlier kept answer is stale now
        if retry and cut_key is not None:
            self.ledger.forget_kept(cut_key)  # nor is it cut off at these limits any more
        return answer

    def known_cut_off(
        self, routed: Route, request: Request, *, retry_failed: bool | None = None
    ) -> OutputLimitReached | None:
        """The error of a request an earlier run sent at the output limits the config sets now and whose answers
        were all cut off (`remember_cut_off`): sent again, it would be paid for and cut off the same way. None
        when there is none, when any limit it may be sent with has changed since, or when the run pays again on
        purpose (`retry_failed`, for this request or else the run's; no cache). A batch looks here before it
        submits, as `resolve` does before a call."""
        retry = self.settings.retry_failed if retry_failed is None else retry_failed
        if not self.settings.use_cache or retry:
            return None
        return self._known_cut_off(routed, self._cut_off_key(routed, request))

    def _known_cut_off(
        self, routed: Route, cut_key: str, *, conn: Connection | None = None
    ) -> OutputLimitReached | None:
        """`known_cut_off` under its key, read in the transaction `conn` when given (a call's first, `_before`)."""
        hit = self.ledger.cut_off_response(cut_key, conn=conn)
        if hit is None:
            return None
        error = OutputLimitReached(
            routed.provider,
            routed.model,
            f"not sent again, at no cost: run {hit['run_id'] or '(unknown)'} sent this request at the output limits "
            f"the config sets now, and its {hit['cause']}. Or shorten the note; `--retry-failed` pays to send it "
            "again as it is",
        )
        error.repeats = False  # nothing was sent: the earlier run's record stands
        return error

    def _cut_off_key(self, routed: Route, request: Request) -> str:
        """Where a request whose answers were all cut off is remembered: the request as first sent (its model and
        output limit, `_kept_key`) and the model and output limits (`max_output_tokens` and its ceiling) of every
        tier it may go to, so that raising any of them sends it again."""
        ladder = self.ladder(routed) if self.config.settings.routing.escalate else [routed]
        limits = [(r.tier, r.model_ref, r.max_output_tokens, self.config.tier(r.tier).output_ceiling) for r in ladder]
        return hashlib.sha256(f"cut-off:{_kept_key(routed, request)}:{json.dumps(limits)}".encode()).hexdigest()

    def replay_kept(
        self,
        routed: Route,
        request: Request,
        output: type[BaseModel] | None,
        subject: str,
        *,
        checks: Sequence[Check],
        retry_failed: bool | None = None,
    ) -> Answer | None:
        """An earlier run's kept answer for this request (one that passed only on a retry or a dearer tier, or
        failed on every tier), judged by `checks` and recorded as a cached call, as `resolve` replays it before a
        call; None when there is none, it fails a check it was not kept for, or the run pays again
        (`retry_failed`, for this request or else the run's; no cache). A batch looks here before it submits."""
        retry = self.settings.retry_failed if retry_failed is None else retry_failed
        if not self.settings.use_cache or retry:
            return None
        kept = self._kept_answer(routed, request, _kept_key(routed, request), output, checks, subject)
        if kept is None:
            return None
        attempt, record = kept
        telemetry.record_call(record, provider_kind=attempt.route.provider_kind)
        return replace(attempt.answer, request_id=request_identity(self.settings.flow, routed.phase, request)[0])

    def _kept_answer(
        self,
        routed: Route,
        request: Request,
        key: str,
        output: type[BaseModel] | None,
        checks: Sequence[Check],
        subject: str,
        *,
        conn: Connection | None = None,
    ) -> tuple[Attempt, CallRecord] | None:
        """An earlier run's kept answer under `key` (`_kept_key`) judged by this call's `checks`, and its row as a
        cached call with that verdict, recorded in the ledger. An answer that passes them now is replayed as
        passing (whatever it failed when it was kept); one that still fails checks it was kept although it failed
        is replayed as kept, with a warning. None (nothing recorded, the call is made afresh) if there is none, it
        no longer reads (the output model changed), it fails a check it was not kept for (one added since), or its
        tier now runs another model."""
        hit = self.ledger.kept_response(key, conn=conn)
        if hit is None or hit["tier"] not in self.config.settings.tiers:
            return None
        kept = routed if hit["tier"] == routed.tier else route_to_tier(
            self.config, phase=routed.phase, complexity=routed.complexity, tier=hit["tier"],
            rule=f"kept answer of {hit['tier']}",
        )  # fmt: skip
        if kept.model_ref != hit["model"]:
            return None
        attempt, record = self._judged(kept, request, hit["text"] or "", hit["data"], output, checks, subject)
        failed_then = {n for n in (hit["checks_failed"] or "").split(",") if n}
        if attempt.outcome not in ("ok", "check_failed") or not failed_then >= set(attempt.answer.checks_failed):
            return None
        if not attempt.ok:
            log.warning(
                "%s on %s: reusing the answer an earlier run kept although it failed %s (tierflow run "
                "--retry-failed pays again)",
                routed.phase, subject or "-", ", ".join(attempt.answer.checks_failed),
            )  # fmt: skip
        self.ledger.record(record, conn=conn)
        return replace(attempt, kept=True), record

    def _judged(
        self,
        routed: Route,
        request: Request,
        text: str,
        data: dict[str, Any] | None,
        output: type[BaseModel] | None,
        checks: Sequence[Check],
        subject: str,
    ) -> tuple[Attempt, CallRecord]:
        """A stored answer judged by this call's checks, and its row as a cached call (no tokens, no cost) that
        records that verdict: an answer cached before a check was added fails it like any other."""
        stored = Completion(text=text, data=data, usage=Usage(), model=routed.model)
        attempt = self.judge(routed, request, stored, output, checks, cost=0.0, cached=True)
        record = self._record(
            routed, Usage(), 0.0, 0.0, subject, now_iso(), cached=True, outcome=attempt.outcome,
            checks_failed=attempt.checks_failed,
        )  # fmt: skip
        return attempt, record

    def _resolve(
        self,
        routed: Route,
        request: Request,
        *,
        output: type[BaseModel] | None,
        checks: Sequence[Check],
        subject: str,
        first: Attempt | None,
        kept_key: str | None,
        cut_key: str | None = None,
    ) -> tuple[Answer, int]:
        """The answer, and how many attempts this call made for it (a replayed answer: 0)."""
        ladder = self.ladder(routed)
        best, last, number = first, first, 1 if first else 0
        tried: list[Attempt] = [first] if first is not None else []  # every billed attempt, for `_kept`'s error
        # Tiers that failed this request and were escalated from: a budget downgrade never sends it back there.
        failed: set[str] = set()
        answered: set[str] = {first.route.tier} if first is not None else set()
        for step, tier_route in enumerate(ladder):
            escalated_from = ladder[step - 1].tier if step else None
            failed |= answered
            for tries in range(2 - (1 if first is not None and step == 0 else 0)):
                if last is not None:
                    log.warning(
                        "%s on %s: %s answer from %s (%s); %s",
                        routed.phase,
                        subject or "-",
                        last.outcome,
                        last.route.model_ref,
                        "; ".join(f.problem for f in last.failures[:2]),
                        "retrying with the problem stated" if last.route.tier == tier_route.tier else "escalating",
                    )
                sent = self._next_request(tier_route, request, last)
                try:
                    attempt = self._answer(
                        tier_route, sent, output=output, checks=checks, subject=subject,
                        number=number + 1, escalated_from=escalated_from, avoid=frozenset(failed),
                        kept_key=kept_key if number == 0 else None, cut_key=cut_key if number == 0 else None,
                        # This tier's first answer: the request is recorded with its outcome.
                        original=request if tries == 0 and not (first is not None and step == 0) else None,
                    )  # fmt: skip
                except BudgetExceeded as exc:
                    if best is None:
                        raise
                    if not _readable(best, request):
                        # Nothing usable was paid for, and the budget is what stops a retry: say so, with its fix,
                        # rather than blame the answer (a clamped output limit may be why it was cut off).
                        raise BudgetExceeded(
                            f"{routed.phase} on {subject or '-'}: the only answer was {_unusable(best)}, and there "
                            f"is no budget left to retry: {exc}",
                            budget=exc.budget,
                            scope=exc.scope,
                        ) from exc
                    log.warning(
                        "%s on %s: no budget left to retry or escalate; keeping the best answer", routed.phase, subject
                    )
                    return _shown(routed, self._kept(best, request, tried), number), number
                if attempt.kept:
                    # An earlier run's answer to this unchanged request: kept although it fails today's checks, or
                    # passing them (on a retry or a dearer tier then, or since a check it failed was removed).
                    return attempt.answer, 0
                number += 1
                tried.append(attempt)
                answered.add(attempt.route.tier)
                if attempt.outcome == "ok":
                    if step + 1 < len(ladder) and self._explores(sent):
                        self._shadow(ladder[step + 1], request, output=output, checks=checks, subject=subject)
                    return _shown(routed, attempt.answer, number), number
                best = attempt if best is None or attempt.rank > best.rank else best
                last = attempt
            if not self.config.settings.routing.escalate:
                break
        assert best is not None
        return _shown(routed, self._kept(best, request, tried), number), number

    def _request_record(
        self, request: Request, attempt: Attempt, checks: Sequence[Check], subject: str
    ) -> RequestRecord:
        """The request and this tier's first answer's outcome, passed or not (`Ledger.recorded_requests`).

        The tier is the one that answered: after a budget downgrade, the cheaper one.
        """
        routed = attempt.route
        content = {k: getattr(request, k) for k in ("system", "cache_prefix", "prompt", "schema", "schema_name")}
        text = json.dumps([self.settings.flow, routed.phase, content], sort_keys=True, ensure_ascii=False)
        request_key = hashlib.sha256(text.encode()).hexdigest()
        return RequestRecord(
            key=hashlib.sha256(f"{request_key}:{routed.tier}".encode()).hexdigest(),
            tier=routed.tier,
            request_key=request_key,
            timestamp=now_iso(),
            run_id=self.settings.run_id,
            flow=self.settings.flow,
            phase=routed.phase,
            complexity=routed.complexity,
            project=self.settings.project,
            subject=subject[:256],
            model=routed.model_ref,
            outcome=attempt.outcome,
            checks_failed=attempt.checks_failed,
            request_json=json.dumps(request.__dict__, ensure_ascii=False, default=str),
            checks_json=json.dumps([{"name": c.name, "rebuild": c.rebuild} for c in checks]),
        )

    def _explores(self, request: Request) -> bool:
        """Adaptive mode's deterministic sample: this request's hash falls in the `explore` share."""
        routing = self.config.settings.routing
        if routing.mode != "adaptive" or routing.explore <= 0:
            return False
        return (
            int(_cache_key(Route("", "", "", "", "", "", 0, "explore"), request)[:8], 16) / 0xFFFFFFFF < routing.explore
        )

    def _shadow(
        self, routed: Route, request: Request, *, output: type[BaseModel] | None, checks: Sequence[Check], subject: str
    ) -> None:
        """The same request on the next tier up, for evidence only: recorded and judged, its answer discarded.

        A shadow call is never downgraded: on a cheaper tier it would pay again for what was just answered and
        credit that tier with a second first answer. One its tier cannot afford is skipped, logged, and kept as
        a `shadow` signal with `passed` unset (evidence counts it nowhere; spend is untouched).
        """
        shadow = replace(routed, rule=f"shadow: explore {routed.tier} for {routed.phase}")
        try:
            self._answer(
                shadow, self._next_request(shadow, request, None), output=output, checks=checks, subject=subject,
                number=1, escalated_from=None, shadow=True, original=request,
            )  # fmt: skip
        except (BudgetExceeded, ProviderError) as exc:
            log.info("shadow call on %s skipped: %s", routed.tier, exc)
            with self.ledger.transaction() as conn:
                conn.execute(
                    signals.insert().values(
                        timestamp=now_iso(), kind="shadow", flow=self.settings.flow, phase=routed.phase,
                        tier=routed.tier, model=routed.model_ref, run_id=self.settings.run_id, subject=subject[:256],
                        passed=None, detail=f"skipped ({type(exc).__name__}): {exc}"[:512],
                    )
                )  # fmt: skip

    def ladder(self, routed: Route) -> list[Route]:
        """The routed tier, then each dearer tier up to `[routing] ceiling` (escalation's path)."""
        return [routed] + [
            replace(
                route_to_tier(
                    self.config,
                    phase=routed.phase,
                    complexity=routed.complexity,
                    tier=tier,
                    rule=f"escalated from {routed.tier}",
                ),
                value=routed.value,
            )
            for tier in escalations(self.config, routed.tier)
        ]

    def _next_request(self, routed: Route, request: Request, last: Attempt | None) -> Request:
        """The request for the next attempt: this tier's model and output limit, and what went wrong last time."""
        limit = routed.max_output_tokens
        prompt = request.prompt
        if last is not None and last.route.tier == routed.tier and last.outcome == "truncated":
            limit = min(max(limit, last.request.max_output_tokens) * 2, self.config.tier(routed.tier).output_ceiling)
        if last is not None:
            prompt += _retry_note(last.failures)
        return replace(request, model=routed.model, max_output_tokens=limit, prompt=prompt)

    def _answer(self, routed: Route, request: Request, **kw: Any) -> Attempt:
        """`_attempt`, on the tier's next fallback model while the provider says a model no longer exists."""
        while True:
            if routed.model_ref in self._retired:
                routed, request = self._fall_back(routed, request, routed.model_ref)
            try:
                return self._attempt(routed, request, **kw)
            except ModelNotFound as exc:
                routed, request = self._fall_back(routed, request, f"{exc.provider}:{exc.model}", exc)

    def _fall_back(
        self, routed: Route, request: Request, retired: str, exc: ModelNotFound | None = None
    ) -> tuple[Route, Request]:
        """Put each tier whose model is `retired` on its next fallback, for the rest of this process (each call
        is then routed, reserved, priced, recorded and cached as that model); or stop, naming the fix."""
        with self._lock:
            again = retired in self._retired  # sent to a model already known gone: a downgrade's tier, stuck
            self._retired.add(retired)
            tiers, stuck = dict(self.config.settings.tiers), []
            for name, tier in tiers.items():
                live = [f for f in tier.fallbacks if f not in self._retired]
                if tier.model in self._retired and live:
                    log.warning("%s is no longer served: tier %s falls back to %s", tier.model, name, live[0])
                    tiers[name] = tier.falling_back(live[0])
                elif tier.model in self._retired:
                    stuck.append(name)
            self.config = replace(self.config, settings=self.config.settings.model_copy(update={"tiers": tiers}))
        if routed.tier in stuck or (again and stuck):
            name = routed.tier if routed.tier in stuck else stuck[0]
            fallbacks = self.config.tier(name).fallbacks
            raise ModelNotFound(
                *self.config.tier(name).model.split(":", 1),
                f"tier {name!r} uses {self.config.tier(name).model}, which the provider no longer serves"
                + (f" ({exc.cause})" if exc else "")
                + (f", nor any of its fallbacks ({', '.join(fallbacks)})" if fallbacks else ""),
                hint=f"Set [tiers.{name}] model to a current model, or name fallbacks = "
                '["<provider>:<model-id>", ...] there; `tierflow config check` lists the models that are gone',
            )
        if self.config.tier(routed.tier).model == routed.model_ref:
            return routed, request  # a downgrade's tier failed: the next reservation routes to its fallback
        rule = f"{routed.rule}; fallback: {routed.model_ref} is gone"
        fresh = route_to_tier(
            self.config, phase=routed.phase, complexity=routed.complexity, tier=routed.tier, rule=rule
        )
        return replace(fresh, max_output_tokens=routed.max_output_tokens), replace(request, model=fresh.model)

    def _attempt(
        self,
        routed: Route,
        request: Request,
        *,
        output: type[BaseModel] | None,
        checks: Sequence[Check],
        subject: str,
        number: int,
        escalated_from: str | None,
        avoid: frozenset[str] = frozenset(),
        shadow: bool = False,
        kept_key: str | None = None,
        cut_key: str | None = None,
        original: Request | None = None,
    ) -> Attempt:
        """One call: answer cache, reservation, the provider, the verdict, and its ledger row.

        A `downgrade` budget may move the call to a cheaper tier, never to one in `avoid`, and never a `shadow`
        call. `original`: the request as the phase sent it, recorded with this answer's outcome in the same
        transaction (a tier's first answer to it; `Ledger.recorded_requests`).

        The hot path of an uncached call is two ledger transactions: one before the provider call (cache
        lookup, budget reservation, tier slot) and one after (record, settle, cache write, slot back).
        """
        key = _cache_key(routed, request) if self.settings.use_cache else None
        with CallScope(self.ledger, self.budgets, self.slots) as scope:
            sending = self._before(
                routed, request, key, subject, scope, avoid=avoid, shadow=shadow, kept_key=kept_key, cut_key=cut_key,
                output=output,
                checks=checks,
            )  # fmt: skip
            if isinstance(sending, Attempt):  # an answer from the cache, judged by this call's checks and recorded
                if sending.ok or sending.kept:
                    return sending
                # Cached before a check it fails was added: its row says so, and the call is made afresh.
                sending = self._before(routed, request, None, subject, scope, avoid=avoid, shadow=shadow)
            assert not isinstance(sending, Attempt)  # no cache look-up: a reservation
            routed, request = sending
            reservation = scope.reservation
            assert reservation is not None
            started = now_iso()
            t0 = time.perf_counter()
            scope.renew()  # the lease is renewed while the call is in flight
            try:
                completion = self._complete(routed, request)
            except BaseException as exc:
                # A provider's error or an interrupt (Ctrl-C, a Prefect timeout or cancellation) alike: the attempts
                # it had sent and got no answer to (`providers.interrupted`) are `lost` rows, written on the scope's
                # exit as the reservation is released. One interrupted before it was sent leaves none.
                scope.lost = self._lost(routed, reservation, subject, started, number, getattr(exc, "lost_attempts", 0))
                raise
            latency_ms = (time.perf_counter() - t0) * 1000
            # From here the answer is billed: the scope writes this row on exit, `error` until the verdict is in. It
            # comes first, so that nothing raised meanwhile (a Prefect timeout) releases the reservation row-less.
            scope.answered(
                self._record(
                    routed, completion.usage, None, latency_ms, subject, started,
                    downgraded_from=reservation.downgraded_from, outcome="error", attempt=number,
                    escalated_from=escalated_from,
                )
            )  # fmt: skip
            if LEARNED_OUTPUT_MODE in completion.extra:
                scope.output_mode = (routed.provider, routed.model, completion.extra[LEARNED_OUTPUT_MODE])
            scope.called()  # the slot goes to the next call now, not after the verdict and the settlement
            scope.lost = self._lost(
                routed, reservation, subject, started, number, completion.extra.get("lost_attempts", 0)
            )
            cost = self._cost(routed, completion, batch=False)
            scope.answered(replace(scope.row, cost_usd=cost))  # type: ignore[arg-type]
            attempt = self.judge(routed, request, completion, output, checks, cost=cost, cached=False)
            # Only an answer that passed is cached, under the request actually sent: after a downgrade, that is
            # the cheaper tier's model and output limit, so the answer is never replayed for the tier asked for.
            cache = CacheEntry(_cache_key(routed, request), routed.model_ref, completion.text, completion.data, request)
            verdict = replace(scope.row, outcome=attempt.outcome, checks_failed=attempt.checks_failed)  # type: ignore[arg-type]
            sent_as = None if original is None else self._request_record(original, attempt, checks, subject)
            verdict.request_id, asked = request_identity(self.settings.flow, routed.phase, request)
            scope.answered(verdict, cache=cache if attempt.ok else None, request=sent_as, text=asked)
        record = scope.row
        assert record is not None
        telemetry.record_call(record, provider_kind=routed.provider_kind)
        log.info(
            "%s · %s · tier %s · %s · %d tokens · %s · %s",
            routed.phase,
            subject or "-",
            routed.tier,
            routed.model_ref,
            completion.usage.total_tokens,
            "unknown USD" if cost is None else f"${cost:.6f}",
            attempt.outcome,
        )
        return replace(attempt, answer=replace(attempt.answer, warnings=reservation.warnings))

    def _lost(
        self, routed: Route, reservation: Reservation, subject: str, started: str, number: int, count: int
    ) -> list[CallRecord]:
        """The rows of a call's lost attempts: sent, never answered (a timeout, a reset connection); each
        at the attempt's worst case (`lost_call`)."""
        usd = reservation.estimate.usd
        record = self._record(
            routed, UNKNOWN_USAGE, None, 0.0, subject, started, downgraded_from=reservation.downgraded_from,
            attempt=number,
        )  # fmt: skip
        tokens = reservation.estimate.tokens
        return [lost_call(record, None if usd is None else float(usd), tokens) for _ in range(count)]

    def _before(
        self,
        routed: Route,
        request: Request,
        key: str | None,
        subject: str,
        scope: CallScope,
        *,
        avoid: frozenset[str] = frozenset(),
        shadow: bool = False,
        kept_key: str | None = None,
        cut_key: str | None = None,
        output: type[BaseModel] | None = None,
        checks: Sequence[Check] = (),
    ) -> Attempt | tuple[Route, Request]:
        """The transaction before a call: a cached answer judged by `checks` (recorded as a cached call with
        that verdict; `kept` for an earlier run's kept answer), or the call's budget reservation and tier slot,
        taken together once both are free, into `scope`; then the route and request to send.

        A call first passes its tier's local gate (threads of this process). A call whose slot is held elsewhere
        tries again the moment this process gives a slot back, or at its next poll (`slots.POLL_S`) for one given
        back by another process; a call waiting on its budget backs off as `Budgets.reserve` does.
        """

        def allowed(candidates: list[tuple[Route, Estimate]]) -> list[tuple[Route, Estimate]]:
            # Never down to a tier that already failed this request, and a shadow call not at all.
            return [c for i, c in enumerate(candidates) if not i or (not shadow and c[0].tier not in avoid)]

        # Sized by the offline count; the reservation's own transaction says whether a cap is near (`claim`).
        candidates = allowed(self.downgrades(routed, request, count=False))
        # A prompt the model cannot take is refused before anything is reserved or sent.
        check_fits(self.config, routed, candidates[0][1].prompt_tokens)
        gate = self.slots.local(routed.tier)
        if not scope.pass_gate(gate, blocking=False):
            if key is not None:  # every local slot is busy: an answer in the cache needs none
                hit = self.reuse(routed, request, key, subject, output=output, checks=checks)
                if hit is not None:
                    return hit
            scope.pass_gate(gate)
        deadline = time.monotonic() + self.budgets.max_wait_s
        budget_delay, slot_delay = 0.01, POLL_S[0]
        recount = [False, False]  # asked for, done: near a cap, the provider's counter sizes the prompt

        def claim(conn: Connection, chosen: Route, states: Sequence[BudgetState]) -> bool:
            if not recount[1] and self._near_cap(chosen, request, batch=False, states=states):
                recount[0] = True
                return False
            return scope.claim(conn, chosen)

        # What the last try wrote in a transaction whose commit was not acknowledged (its connection went as it
        # committed): the cached call's row, or the reservation and the slot. The next try looks for it first, so
        # a commit that went through all the same is never made twice (two reservations, one never settled).
        unacknowledged: tuple[CallRecord | None, Attempt | None, Reservation | None, str | None] | None = None

        def wait_for_ledger(exc: LedgerUnreachable) -> float:
            try:
                return self.ledger.outage.wait(exc)
            except BaseException:
                # Given up: a slot taken in a commit not acknowledged is left to lapse with its lease, as the
                # reservation taken with it is, never renewed by this process for as long as it lives.
                if unacknowledged is not None:
                    self.slots.forget(unacknowledged[3])
                raise

        with self.ledger.outage.trying():  # its patience runs from this call's first failure
            while True:
                if unacknowledged is not None:
                    row, answer, held, slot = unacknowledged
                    try:
                        landed = self.ledger.landed(row) if row is not None else self.budgets.landed(held)
                    except LedgerUnreachable as exc:
                        deadline += wait_for_ledger(exc)  # waiting for the ledger is not waiting for budget
                        continue
                    unacknowledged = None
                    if landed and answer is not None:
                        scope.leave_gate()
                        return answer  # the cached (or kept) answer, its row recorded once
                    if landed and held is not None:
                        scope.slot = slot  # taken in the same transaction: held, and renewed
                        reservation = held
                        scope.reserved(reservation)
                        break
                    self.slots.forget(slot)  # rolled back: the slot was never taken
                scope.slot = NO_SLOT
                given_back = self.slots.given_back()  # before the try: a slot given back after it wakes the wait
                cached: CallRecord | None = None
                hit: Attempt | None = None
                reservation = None
                try:
                    # Urgent: ahead of the settlements of calls that have answered (`ledger.WriterGate`).
                    with self.ledger.transaction(urgent=True) as conn:
                        stored = None if key is None else self.ledger.cached_response(key, conn=conn)
                        if stored is not None:
                            # Judged before its row is written, so the row says whether it passes today's checks.
                            hit, cached = self._judged(routed, request, *stored, output, checks, subject)
                            if not hit.ok:  # not used: its row says so, or the report would take it for one kept
                                rule = f"{NOT_USED} fails a check added since it was cached; {routed.rule}"
                                cached = replace(cached, route_rule=rule[:256])
                        if kept_key is not None and (hit is None or not hit.ok):
                            # An earlier run kept an answer to this request: no call at all. (A cached answer that
                            # fails a check added since is then not used and leaves no row; with no kept answer,
                            # its `NOT_USED` row is written below and the call is made afresh.)
                            kept = self._kept_answer(routed, request, kept_key, output, checks, subject, conn=conn)
                            if kept is not None:
                                hit, cached = kept  # its row recorded
                        if hit is None and cut_key is not None:
                            # Cut off on every tier in an earlier run, at these limits: not paid for again.
                            known = self._known_cut_off(routed, cut_key, conn=conn)
                            if known is not None:
                                raise known
                        if hit is not None and not hit.kept:
                            self.ledger.record(cached, conn=conn)
                        if hit is None:
                            reservation = self.budgets.reserve_in(
                                conn, candidates, expired=time.monotonic() >= deadline, claim=claim
                            )
                except BudgetExceeded as exc:
                    if not shadow:  # a skipped shadow call halts nothing
                        self._budget_event(
                            "tierflow.budget.exceeded", exc.budget, routed, subject, policy="halt", detail=str(exc)
                        )
                    raise
                except BaseException as exc:
                    if not isinstance(exc, LedgerUnreachable):
                        self.slots.forget(scope.slot)  # rolled back: the slot was never taken
                        scope.slot = NO_SLOT
                        raise
                    # Its connection went away mid-transaction (a database restart): nothing was sent yet, so the
                    # call waits for the ledger as the answers in flight do, and tries again, once it has looked
                    # for what this try wrote; past `ledger_outage_s` it fails.
                    if cached is not None or reservation is not None:
                        unacknowledged = (cached, hit, reservation, scope.slot)
                    else:
                        self.slots.forget(scope.slot)
                    scope.slot = NO_SLOT
                    deadline += wait_for_ledger(exc)  # waiting for the ledger is not waiting for budget
                    continue
                if hit is not None:
                    scope.leave_gate()
                    return hit
                if reservation is not None:
                    scope.reserved(reservation)
                    break
                if recount[0] and not recount[1]:
                    candidates, recount[1] = allowed(self.downgrades(routed, request, count=True)), True
                    continue
                if scope.slot is None:  # the tier is full: woken by a slot this process gives back, or poll again
                    self.slots.wait(given_back, slot_delay)
                    deadline += slot_delay  # waiting for a slot is not waiting for budget
                    slot_delay = min(slot_delay * 1.5, POLL_S[1])
                else:
                    time.sleep(budget_delay)
                    budget_delay = min(budget_delay * 2, 0.25)
        if reservation.route.tier != routed.tier:
            # Downgraded: the ledger slot taken is the cheaper tier's. The gate of the tier asked for opens now and
            # the call passes the cheaper tier's gate if it is free: it never waits there while holding a slot,
            # since the ledger slot alone bounds that tier.
            scope.leave_gate()
            scope.pass_gate(self.slots.local(reservation.route.tier), blocking=False)
        return self._reserved(routed, request, subject, reservation)

    def reserve(
        self, routed: Route, request: Request, subject: str, *, batch: bool = False
    ) -> tuple[Reservation, Route, Request]:
        """Reserve a call's worst case; a `downgrade` budget may move it to a cheaper tier, with its output limit.

        Returns the reservation and the route and request to send. Emits the budget events automations watch.
        """
        candidates = self.downgrades(routed, request, batch=batch)
        # A prompt the model cannot take is refused before anything is reserved or sent.
        check_fits(self.config, routed, candidates[0][1].prompt_tokens)
        try:
            reservation = self.budgets.reserve(candidates, wait=not batch)
        except BudgetExceeded as exc:
            self._budget_event("tierflow.budget.exceeded", exc.budget, routed, subject, policy="halt", detail=str(exc))
            raise
        return (reservation, *self._reserved(routed, request, subject, reservation))

    def _reserved(
        self, routed: Route, request: Request, subject: str, reservation: Reservation
    ) -> tuple[Route, Request]:
        """What a reservation means for the call: warnings and events, and a downgrade's route and request."""
        for budget, message in reservation.warnings:
            log.warning("budget: over %s", message)
            self._budget_event("tierflow.budget.exceeded", budget, routed, subject, policy="warn", detail=message)
        if reservation.route.tier == routed.tier and reservation.route.max_output_tokens < request.max_output_tokens:
            log.info(
                "budget: %s call on %s sent with %d output tokens, what the budget affords (of %d)",
                routed.phase, subject, reservation.route.max_output_tokens, request.max_output_tokens,
            )  # fmt: skip
            request = replace(request, max_output_tokens=reservation.route.max_output_tokens)
            routed = reservation.route
        elif reservation.route.tier != routed.tier:
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
            # The reservation was sized for the cheaper tier's output limit: send that limit, never more.
            request = replace(request, model=routed.model, max_output_tokens=routed.max_output_tokens)
        return routed, request

    def judge(
        self,
        routed: Route,
        request: Request,
        completion: Completion,
        output: type[BaseModel] | None,
        checks: Sequence[Check],
        *,
        cost: float | None,
        cached: bool,
    ) -> Attempt:
        """The verdict on one completion: ok, or truncated, refused, malformed or check_failed, with why."""
        parsed: Any = None
        failures: list[Failure] = []
        cut = completion.finish == "truncated"
        if completion.finish == "refused":
            failures = [Failure("refused", f"the model refused: {completion.text[:200]!r}")]
        elif completion.problem and (output is not None or not completion.text):
            # A text request's answer fails too when nothing of it could be read (an empty or unreadable reply).
            failures = [Failure("schema", completion.problem)]
        elif output is not None:
            try:
                parsed = output.model_validate(completion.data or {})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "the answer"
                failures = [Failure("schema", f"{exc.error_count()} field error(s); first at {where}: {first['msg']}")]
            else:
                failures = run_checks(checks, parsed)
        elif cut:
            failures = [Failure("truncated", "the answer was cut off")]
        if completion.finish == "refused":
            outcome = "refused"
        elif cut and (parsed is None or output is None):
            outcome = "truncated"
            failures = [
                Failure(
                    "truncated",
                    f"the answer was cut off at the output limit of {request.max_output_tokens} tokens; "
                    "answer more briefly",
                )
            ]
        elif parsed is None and output is not None:
            outcome = "malformed"
        elif failures:
            outcome = "check_failed"
        else:
            outcome = "ok"
        answer = Answer(
            text=completion.text,
            data=completion.data,
            parsed=parsed,
            route=routed,
            usage=completion.usage,
            cost_usd=cost,
            cached=cached,
            checks_failed=tuple(dict.fromkeys(f.check for f in failures)) if outcome == "check_failed" else (),
            outcome=outcome,
        )
        return Attempt(outcome=outcome, answer=answer, route=routed, request=request, failures=tuple(failures))

    def _kept(self, best: Attempt, request: Request, tried: Sequence[Attempt] = ()) -> Answer:
        """The best failed answer, kept with its failures named; or, when none could be read, a clear error.

        `tried`: every attempt of the call, whose output limits a cut-off answer's error names."""
        if _readable(best, request):
            names = tuple(dict.fromkeys(f.check for f in best.failures))
            log.warning(
                "%s: no tier passed (%s); keeping the best answer, from %s, with a warning",
                best.route.phase,
                ", ".join(names),
                best.route.model_ref,
            )
            return replace(best.answer, checks_failed=names)
        if best.outcome == "truncated":
            cause, clamped = self._cut_off(tried or (best,))
            error = OutputLimitReached(best.route.provider, best.route.model, cause)
            # Remembered only when the limits alone were why: every attempt cut off, none sent less than asked.
            error.repeats = not clamped and all(a.outcome == "truncated" for a in tried or (best,))
            raise error
        raise MalformedResponse(
            best.route.provider,
            best.route.model,
            f"no usable {request.schema_name} on any attempt ({best.outcome}: "
            f"{'; '.join(f.problem for f in best.failures[:2])}). Every attempt is in the ledger",
        )

    def _cut_off(self, tried: Sequence[Attempt]) -> tuple[str, bool]:
        """Why a call's answers were all unusable when the best of them was cut off: the output limits each tier
        was sent with, and the config keys that set them; and whether a budget sent any tier less than its limit."""
        cut = [a for a in tried if a.outcome == "truncated"]
        limits: dict[str, list[int]] = {}
        for attempt in cut:
            limits.setdefault(attempt.route.tier, []).append(attempt.request.max_output_tokens)
        every = "every attempt" if len(cut) == len(tried) else f"{len(cut)} of {len(tried)} attempts"
        sent = "; ".join(f"{tier}: {', then '.join(map(str, sizes))} tokens" for tier, sizes in limits.items())
        keys = []
        for tier in limits:
            config = self.config.tier(tier)
            ceiling = config.max_output_tokens_ceiling
            keys.append(
                f"`tiers.{tier}.max_output_tokens` ({config.max_output_tokens}) and "
                f"`tiers.{tier}.max_output_tokens_ceiling` ({ceiling if ceiling else 'unset: twice that'})"
            )
        # Sent less than `_next_request` asked (a retry's doubled limit too), or downgraded to a cheaper tier.
        clamped: list[str] = []
        for last, attempt in zip([None, *tried], tried, strict=False):
            full = replace(attempt.route, max_output_tokens=self.config.tier(attempt.route.tier).max_output_tokens)
            asked = self._next_request(full, attempt.request, last).max_output_tokens
            if attempt.request.max_output_tokens < asked or attempt.route.rule.startswith("budget downgrade"):
                clamped.append(attempt.route.tier)
        clamped = list(dict.fromkeys(clamped))
        # A budget that clamps the output limit sends less than the config says: raising the key alone may not do.
        budget = (
            f"; a budget sent {', '.join(clamped)} less than its limit (what it could afford): raise that budget too"
            if clamped
            else ""
        )
        return (
            f"answers were cut off at the output limit on {every} ({sent}). It is the config's limit, not a provider "
            f"fault: raise {' or '.join(keys)} in the config{budget}; a rerun with the config unchanged is cut off "
            "the same way"
        ), bool(clamped)

    def _complete(self, routed: Route, request: Request) -> Completion:
        """The provider call, in the structured-output form this server accepts (learned once, remembered)."""
        provider = self.provider(routed.provider)
        if request.schema is None or routed.provider_kind not in ("openai", "openai-compatible"):
            return provider.complete(request)
        mode = self._output_mode(routed)
        if mode in OUTPUT_MODES:
            return self._complete_in(provider, routed, request, OUTPUT_MODES[OUTPUT_MODES.index(mode) :], True)
        # Unknown yet: the first call per model finds out, alone, so a server that rejects a form sees it once.
        with self._mode_locks.setdefault((routed.provider, routed.model), threading.Lock()):
            mode = self._output_mode(routed)
            if mode in OUTPUT_MODES:
                return self._complete_in(provider, routed, request, OUTPUT_MODES[OUTPUT_MODES.index(mode) :], True)
            return self._complete_in(provider, routed, request, OUTPUT_MODES, False)

    def _complete_in(
        self, provider: Provider, routed: Route, request: Request, modes: Sequence[str], confirmed: bool
    ) -> Completion:
        # Attempts at a refused form that got no answer (timed out before the refusal): the provider may have
        # billed them, so they go with whatever ends the call, to be recorded `lost` once.
        lost = 0
        for index, candidate in enumerate(modes):
            try:
                completion = provider.complete(
                    replace(request, output_mode=candidate, mode_confirmed=confirmed and index == 0)
                )
            except OutputModeRejected as exc:
                lost += exc.lost_attempts
                if index == len(modes) - 1:
                    exc.lost_attempts = lost
                    raise
                log.warning("%s; trying %s and remembering what works", exc, modes[index + 1])
                continue
            except BaseException as exc:
                if lost:
                    with contextlib.suppress(Exception):
                        exc.lost_attempts = (getattr(exc, "lost_attempts", 0) or 0) + lost  # type: ignore[union-attr]
                raise
            if not confirmed or index:
                # Used by this process's calls from now on; the ledger remembers it with the answer's row
                # (`CallScope.output_mode`), never in a transaction of its own that could lose the paid answer.
                with self._lock:
                    self._modes[(routed.provider, routed.model)] = candidate
                completion = replace(completion, extra={**completion.extra, LEARNED_OUTPUT_MODE: candidate})
            return with_lost_attempts(completion, completion.extra.get("lost_attempts", 0) + lost)
        raise AssertionError("unreachable")

    def _output_mode(self, routed: Route) -> str:
        key = (routed.provider, routed.model)
        with self._lock:
            if key not in self._modes:
                self._modes[key] = self.ledger.output_mode(*key) or ""
            return self._modes[key]

    def reuse(
        self,
        routed: Route,
        request: Request,
        key: str,
        subject: str,
        *,
        output: type[BaseModel] | None,
        checks: Sequence[Check],
    ) -> Attempt | None:
        """A stored answer for this request that passes `checks`, recorded in the ledger as a zero-token cached
        call; else None (one cached before a check it fails was added is not used, and leaves no row)."""
        if not self.settings.use_cache:
            return None
        stored = self.ledger.cached_response(key)
        if stored is None:
            return None
        attempt, record = self._judged(routed, request, *stored, output, checks, subject)
        if not attempt.ok:
            return None
        self.ledger.record(record)
        telemetry.record_call(record, provider_kind=routed.provider_kind)
        return attempt

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
                "%s returned no usable usage block: recorded as unknown usage (not zero) and its budget reservation "
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
        outcome: str = "ok",
        checks_failed: str | None = None,
        attempt: int = 1,
        escalated_from: str | None = None,
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
            outcome=outcome,
            checks_failed=checks_failed,
            attempt=attempt,
            escalated_from=escalated_from,
            flow_run_id=flow_run_id,
            task_run_id=task_run_id,
            project=self.settings.project,
            deployment=self.settings.deployment,
            value=routed.value,
        )


def _cache_key(routed: Route, request: Request) -> str:
    """The answer cache's key: the request's content and model, not the wire form it was sent in."""
    content = {k: v for k, v in request.__dict__.items() if k not in ("output_mode", "mode_confirmed")}
    payload = json.dumps({"model": routed.model_ref, **content}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _kept_key(routed: Route, request: Request) -> str:
    """Where a request's kept answer is remembered in the answer cache: apart from the key of any answer that passed."""
    return hashlib.sha256(f"kept:{_cache_key(routed, request)}".encode()).hexdigest()


def request_identity(flow: str, phase: str, request: Request) -> tuple[str, str]:
    """A request's id and text as the per-request router sees them: the prompt as the phase first sent it
    (a retry's note taken off), the same for every tier's answer to it."""
    text = request.prompt.split(_RETRY_MARK, 1)[0]
    payload = json.dumps([flow, phase, request.system, request.cache_prefix, text], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest(), text


_RETRY_MARK = "\n\nYour previous answer to this request could not be used:"
"""The start of templates/prompts/call/retry.j2, which a retry appends to the prompt."""


def _retry_note(failures: Sequence[Failure]) -> str:
    """What the retry request adds to the prompt: the problems, briefly (templates/prompts/call/retry.j2)."""
    from importlib.resources import files

    template = (files("tierflow._templates") / "prompts" / "call" / "retry.j2").read_text(encoding="utf-8")
    return template.replace("{{ problems }}", describe(failures))


def _readable(attempt: Attempt, request: Request) -> bool:
    """Whether a failed attempt still has an answer to keep: parsed output when a schema was asked for, else text."""
    return attempt.answer.parsed is not None if request.schema is not None else bool(attempt.answer.text)


def _unusable(attempt: Attempt) -> str:
    """What was wrong with an attempt that left nothing to keep, in a few words for an error message."""
    if attempt.outcome == "truncated":
        return f"cut off at its output limit of {attempt.request.max_output_tokens} tokens"
    return f"{attempt.outcome} ({'; '.join(f.problem for f in attempt.failures[:2])})"


def _shown(tagged: Route, answer: Answer, attempts: int) -> Answer:
    """Make the task run tell the truth when the answer did not come from the route it was tagged with.

    Prefect fixes a task run's tags when it creates it, so a call that escalated, was downgraded or kept a
    failing answer renames its task run, the marker first so that the UI's narrow task list still shows it
    (`[light>standard] collate · essay`; ASCII, as the classic UI draws `→` as nothing), and leaves a small
    artifact: the actual tier and model, the kept answer's tokens and USD beside the task's total over every
    attempt (its ledger rows), and the outcome. Nothing is sent when the tags already tell the truth.
    """
    changed = answer.route.tier != tagged.tier
    if not (changed or answer.checks_failed) or answer.cached:
        return answer
    flow_run_id, task_run_id = prefect_run_ids()
    if not task_run_id:
        return answer
    try:
        from prefect.artifacts import create_markdown_artifact
        from prefect.client.orchestration import get_client
        from prefect.context import TaskRunContext

        context = TaskRunContext.get()
        if changed and context is not None:
            name = f"{retier_marker(tagged.tier, answer.route.tier)} {context.task_run.name}"
            # The server takes task-run names from the engine's state events too: rename the run the engine
            # reports, and the server's copy now.
            context.task_run.name = name
            try:
                with get_client(sync_client=True) as client:
                    client.set_task_run_name(context.task_run.id, name)
            except Exception as exc:  # not recorded on the server yet (404): the engine's next state event names it
                log.debug("could not rename the task run on the server yet: %s", exc)
        spent = _task_spend(context, task_run_id)
        kept = "unknown" if answer.cost_usd is None else f"${answer.cost_usd:.6f}"
        total = "unknown" if spent is None else f"${spent[1]:.6f} ({spent[0]} calls)"
        outcome = "kept, failed " + ", ".join(answer.checks_failed) if answer.checks_failed else answer.outcome
        create_markdown_artifact(
            markdown=(
                "| tagged tier | actual tier | model | attempts | tokens (kept answer) | USD (kept answer) "
                "| USD (task, all attempts) | outcome |\n"
                "|---|---|---|---|---|---|---|---|\n"
                f"| {tagged.tier} | {answer.route.tier} | {answer.route.model_ref} | {attempts} | "
                f"{answer.usage.total_tokens} | {kept} | {total} | {outcome} |"
            ),
            # Short and without `provider:model`, which the artifact card cuts; the table has the model.
            description=(
                f"{tagged.phase}: kept a failing answer"
                if answer.checks_failed
                else f"{tagged.phase}: answered on {answer.route.tier}"
            ),
        )
    except Exception as exc:  # the answer matters more than its annotation in the UI
        log.debug("could not annotate the task run: %s", exc)
    return answer


def retier_marker(tagged: str, actual: str) -> str:
    """`[deep>standard]`: the tier a task run was tagged with, and the tier whose answer it kept."""
    return f"[{tagged}>{actual}]"


def _task_spend(context: Any, task_run_id: str) -> tuple[int, float] | None:
    """The calls this task run has billed so far and their USD, from the ledger rows that carry its id.

    The ledger is the run's (its `RunSettings` is the phase task's `settings` parameter); None if unknown.
    """
    settings = (context.parameters or {}).get("settings") if context is not None else None
    if not isinstance(settings, RunSettings):
        return None
    rows = [r for r in caller_for(settings).ledger.rows(run_id=settings.run_id) if r["task_run_id"] == task_run_id]
    return len(rows), sum(r["cost_usd"] or 0.0 for r in rows)


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


FRAMING_TOKENS = 512
"""Tokens a provider may add around a prompt's text: message markers, and the system prompt Anthropic adds for
tool use (up to 346 tokens)."""


def _byte_bound(request: Request) -> int:
    """Prompt tokens no tokenizer exceeds: the prompt's UTF-8 bytes (no byte-level tokenizer spends more than a
    token per byte) plus `FRAMING_TOKENS`."""
    schema = json.dumps(request.schema) if request.schema else ""
    text = request.system + request.cache_prefix + request.prompt + schema
    return len(text.encode()) + FRAMING_TOKENS


_callers: dict[str, Caller] = {}
_callers_lock = threading.Lock()


def caller_for(settings: RunSettings) -> Caller:
    """One Caller per run and process, so tasks share SDK clients and the ledger's engine."""
    key = settings.model_dump_json()
    with _callers_lock:
        if key not in _callers:
            _callers[key] = Caller(settings)
        return _callers[key]
