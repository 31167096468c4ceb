"""One config: providers, tiers, routing, budgets and vault settings, with the source of every value.

Lookup order for the file: `--config PATH`, then `$TIERFLOW_CONFIG`, then `<vault>/.tierflow/config.toml`.
The file is laid over a built-in profile (`offline` unless the file or `--profile` names another).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tierflow.core import clock
from tierflow.core.errors import ConfigError
from tierflow.core.folders import user_path
from tierflow.core.urls import ledger_url_problem, masked_url

Complexity = Literal["low", "medium", "high"]
COMPLEXITIES: tuple[str, ...] = ("low", "medium", "high")
ProviderKind = Literal["anthropic", "openai", "openai-compatible", "offline"]
PROVIDER_KINDS: tuple[str, ...] = ("anthropic", "openai", "openai-compatible", "offline")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderConfig(_Model):
    kind: ProviderKind
    base_url: str | None = None
    api_key_env: str | None = None
    """Name of the environment variable that holds the key; never the key itself."""
    api_key_secret: str | None = None
    """Name of a Prefect Secret block to read the key from when the env var is unset."""
    timeout_s: float = 120.0
    max_retries: int = 4
    batch_discount: float = 0.5
    """Cost multiplier for the provider's batch API."""

    @property
    def leaves_machine(self) -> bool:
        """Whether calls to this provider leave this machine, which is what pseudonymisation goes by: a cloud kind
        always (its `base_url` may be a proxy); an OpenAI-compatible server unless its `base_url` is a loopback
        address. OpenRouter, Together or a university's vLLM speak the same protocol from another machine, and an
        unset `base_url` sends the SDK to `$OPENAI_BASE_URL` or api.openai.com."""
        if self.kind == "offline":
            return False
        if self.kind != "openai-compatible" or not self.base_url:
            return True
        return not _loopback(self.base_url)


class Price(_Model):
    """USD per million tokens, for models genai-prices does not know (or priced otherwise here).

    With `premium_above`, a call whose prompt (cached tokens included) is over that many tokens pays the
    premium rates on all its tokens, as long-context pricing does (Anthropic's 1M-token beta: 2x input,
    1.5x output above 200K). Cache reads and writes then cost their base rate times `premium_input / input`.
    """

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None
    premium_above: int | None = Field(default=None, gt=0)
    """Prompt tokens above which the premium rates apply to the whole call."""
    premium_input: float | None = None
    premium_output: float | None = None

    @model_validator(mode="after")
    def _premium_complete(self) -> Price:
        stated = [self.premium_input is not None, self.premium_output is not None]
        if self.premium_above is None and any(stated):
            raise ValueError("premium_input/premium_output need premium_above: the prompt tokens they start at")
        if self.premium_above is not None and not all(stated):
            raise ValueError("premium_above needs both premium_input and premium_output (USD per million tokens)")
        return self

    def premium(self, usage: Any) -> bool:
        """Whether this call is priced at the premium rates."""
        return self.premium_above is not None and usage.prompt_tokens > self.premium_above

    def cost(self, usage: Any) -> Decimal:
        per_token = Decimal(1) / Decimal(1_000_000)
        cache_read = self.cache_read if self.cache_read is not None else self.input
        cache_write = self.cache_write if self.cache_write is not None else self.input
        plain, out, scale = Decimal(str(self.input)), Decimal(str(self.output)), Decimal(1)
        if self.premium(usage):
            scale = Decimal(str(self.premium_input)) / plain if plain else Decimal(1)
            plain, out = Decimal(str(self.premium_input)), Decimal(str(self.premium_output))
        return per_token * (
            plain * usage.input_tokens
            + out * (usage.output_tokens + usage.reasoning_tokens)
            + Decimal(str(cache_read)) * scale * usage.cache_read_tokens
            + Decimal(str(cache_write)) * scale * usage.cache_write_tokens
        )


class TierConfig(_Model):
    model: str
    """`<provider>:<model-id>`; the model id may itself contain colons (`local:llama3.2:3b`)."""
    max_output_tokens: int = Field(default=2048, gt=0)
    price: Price | None = None
    concurrency: int | None = Field(default=None, ge=1)
    """At most this many calls of the tier in flight at once, across every process on the ledger (or, with
    `[limits] mechanism = "prefect"`, task runs under the Prefect tag limit `tier:<name>`); unset: unlimited."""
    min_cacheable_tokens: int | None = Field(default=None, ge=0)
    """The shortest prefix the provider caches; a shorter one is sent without `cache_control`. Unset: the
    default for known models (`tierflow.core.caching`)."""
    max_output_tokens_ceiling: int | None = Field(default=None, gt=0)
    """How far a cut-off answer's retry may raise the output limit; unset means twice `max_output_tokens`."""

    @property
    def output_ceiling(self) -> int:
        return max(self.max_output_tokens_ceiling or 2 * self.max_output_tokens, self.max_output_tokens)

    context_window: int | None = Field(default=None, gt=0)
    """The model's context window in tokens (prompt + answer); unset: tierflow's default for known models."""
    fallbacks: tuple[str, ...] = ()
    """Models tried in order when the provider no longer serves `model` (HTTP 404 `model_not_found`), each
    `<provider>:<model-id>` (another provider's too) and priced as itself: `price` is `model`'s alone."""

    def falling_back(self, model: str) -> TierConfig:
        """This tier with `model` (one of its fallbacks) in place of its retired model, and no settings that
        described the retired model only."""
        return self.model_copy(
            update={"model": model, "price": None, "context_window": None, "min_cacheable_tokens": None}
        )

    @property
    def provider(self) -> str:
        return self.model.split(":", 1)[0]

    @property
    def model_id(self) -> str:
        return self.model.split(":", 1)[1]


class VaultConfig(_Model):
    reading_folders: tuple[str, ...] = ("Reading",)
    reading_tags: tuple[str, ...] = ("literature",)
    timezone: str = "UTC"
    """An IANA time zone name: the vault's days and weeks (run windows, budget periods) are counted in it."""
    output_folder: str = "Concepts/Drafts"
    runs_folder: str = "tierflow/Runs"
    templates_folder: str = "Templates/tierflow"
    exclude_folders: tuple[str, ...] = ("Templates",)
    """Never selected as reading, whatever their tags (Obsidian templates carry placeholder tags)."""
    max_note_bytes: int = 1_000_000
    max_concepts: int = Field(default=5, ge=1, le=50)
    """At most this many concept drafts per run."""
    concept_folders: tuple[str, ...] = ("Concepts",)
    concept_tags: tuple[str, ...] = ("concept",)
    """Your existing concept notes: the synthesis sees them, and a concept that matches one becomes an addition."""
    max_listed_concepts: int = Field(default=40, ge=0)
    """At most this many existing concept notes in the synthesis prompt, the most relevant to the week first."""

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, name: str) -> str:
        if problem := timezone_problem(name):
            raise ValueError(problem)
        return name


_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})
"""Names the zone database holds that are no place's zone: the machine's own, a rules file, a placeholder."""


def timezone_problem(name: str) -> str | None:
    """Why `name` is not an IANA time zone name tierflow counts days in (with the name meant, if only its case is
    wrong), or None. `localtime` is refused: it is the machine's zone, which a vault's days must not depend on."""
    names = _timezone_names() - _NOT_ZONES
    if name in names:
        return None
    folded = {n.casefold(): n for n in names}
    hint = f" Did you mean {folded[name.casefold()]}?" if name.casefold() in folded else ""
    what = "the machine's zone, which may not be yours" if name == "localtime" else "not a time zone name"
    return f"{name!r} is {what}.{hint} Use an IANA name such as Europe/London, America/New_York, Asia/Kolkata or UTC"


@functools.cache
def _timezone_names() -> frozenset[str]:
    import zoneinfo

    return frozenset(zoneinfo.available_timezones())


class BudgetConfig(_Model):
    usd: float | None = Field(default=None, ge=0)
    tokens: int | None = Field(default=None, ge=0)
    period: Literal["run", "day", "week", "month"] = "run"
    flow: str | None = None
    """Only runs of this flow count; None means every flow."""
    phase: str | None = None
    """Only calls of this phase count; None means every phase."""
    project: str | None = None
    """Only calls charged to this project count; None means every project."""
    tier: str | None = None
    """Only calls made on this tier count (after any downgrade); None means every tier."""
    unpriced: Literal["refuse", "allow"] = "refuse"
    """A model with no known price under this budget's `usd` limit: refused, or allowed and counted at
    `fallback_usd_per_mtok` for every token (prompt and output alike)."""
    fallback_usd_per_mtok: float | None = Field(default=None, ge=0)
    policy: Literal["halt", "downgrade", "warn"] = "halt"
    min_output_tokens: int = Field(default=256, ge=1)
    """A call that does not fit at its tier's full output allowance is sent with what the budget affords,
    down to this; below it, the policy decides (refuse, downgrade or warn)."""
    clamp_output: bool = True
    """Lower a call's output allowance to fit the budget (to `min_output_tokens`) before refusing it."""
    floor: str | None = None
    """With `downgrade`: the cheapest tier to fall back to."""


class RoutingConfig(_Model):
    """Which tier each complexity goes to, and how the call path escalates when an answer fails its checks."""

    low: str | None = None
    medium: str | None = None
    high: str | None = None
    escalate: bool = True
    """After a failed answer and one informed retry, try the next tier up."""
    ceiling: str | None = None
    """The highest tier an escalation may reach; unset means the `high` complexity's tier."""
    phases: dict[str, str] = {}
    """Per-phase tiers that win over the complexity's (what `tierflow routing suggest --apply` writes)."""
    mode: Literal["rules", "adaptive", "request"] = "rules"
    """`adaptive`: route each phase by the ledger's evidence where it suffices, by the rules otherwise.
    `request`: route each request by its predicted pass probability per tier (tierflow.learn.request_router),
    falling back to the phase's evidence, then the rules, while the router has too little evidence."""
    value: float = Field(default=1.0, ge=0.5, le=5)
    """How much a good answer is worth (0.5 routine to 5 critical): raises the target, `target_for(value)`."""
    value_by: dict[str, float] = {}
    """Per flow, phase or `flow.phase`: its value (a note's `tierflow_value` front-matter wins over these)."""
    min_requests: int = Field(default=200, ge=1)
    """Request mode: first answers a tier needs in the ledger before the per-request router is used for it."""
    target: float = Field(default=0.9, gt=0, le=1)
    """The pass rate (its lower confidence bound) a tier must reach to be suggested or learned."""
    min_evidence: int = Field(default=20, ge=1)
    """Observations a tier needs before its pass rate is trusted."""
    explore: float = Field(default=0.05, ge=0, le=1)
    """Adaptive mode: the share of passing calls also sent, in shadow, to the next tier up (budgeted like any
    call, judged by the same checks, recorded, never written to the vault)."""

    def __getitem__(self, complexity: str) -> str:
        tier = getattr(self, complexity, None) if complexity in COMPLEXITIES else None
        if tier is None:
            raise KeyError(complexity)
        return tier

    def __contains__(self, complexity: object) -> bool:
        return complexity in COMPLEXITIES and getattr(self, str(complexity)) is not None

    def __len__(self) -> int:
        return len(self.items())

    def items(self) -> list[tuple[str, str]]:
        return [(c, getattr(self, c)) for c in COMPLEXITIES if getattr(self, c) is not None]

    def values(self) -> list[str]:
        return [tier for _, tier in self.items()]


class FeedbackConfig(_Model):
    assignment_folder: str = ""
    draft_complexity: Complexity = "medium"
    pseudonymise: bool | None = None
    """None: on whenever a cloud provider is in use."""
    prompt_caching: bool = True
    """Send the shared rubric, brief, exemplars and cohort summary as a cacheable prefix."""
    warm_up: bool = True
    """When the prefix is long enough to be cached, send a phase's first call alone and fan out once it has
    answered, so that the prefix is written to the provider's cache once, not by every call started at once."""


class ModuleConfig(_Model):
    """The module-review flow's input: `[module] folder`, unless `--module` says."""

    folder: str = ""
    """The module folder (vault-relative): its descriptor, run reports, concept drafts, cohort summaries."""
    output_folder: str = "Review"
    """Where the revision proposal goes, inside the module folder."""


class LimitsConfig(_Model):
    """How `[tiers.<name>] concurrency` is enforced."""

    mechanism: Literal["ledger", "prefect"] = "ledger"
    """`ledger`: leased slots in the ledger database, taken around the model call only, held across every
    process sharing the ledger. `prefect`: Prefect tag limits on `tier:<name>` (`tierflow limits apply`),
    which wrap the whole task run and suit a PostgreSQL-backed Prefect server."""
    lease_s: float = Field(default=30.0, gt=0)
    """How long a slot outlives a process that died holding it; live holders renew it every third of this."""


class RunConfig(_Model):
    """How a run uses this machine."""

    workers: int = Field(default=16, ge=1, le=256)
    """At most this many task runs of one phase unfinished at once (model calls are mostly waiting on the
    network, so more workers than cores is fine). The ledger's connection pool is sized to match. A phase
    keeps at least twice the largest tier `concurrency` (ledger mechanism) unfinished, up to 256, whatever
    this says: one call in flight per slot and the next one started and waiting for it, so a freed slot never
    waits for Prefect to finish a task run and start the next (`slots.started_task_runs`)."""


class ProjectConfig(_Model):
    """Which project a run's spend is charged to, unless `--project` says."""

    name: str | None = None
    """The vault's project, for runs that match no folder below and carry no course code."""
    folders: dict[str, str] = {}
    """Folder (vault-relative) -> project, for runs over that folder: `"Teaching/EDU7001" = "EDU7001"`."""


class Settings(_Model):
    profile: str = "offline"
    ledger_url: str | None = None
    reservation_lease_s: float = Field(default=60, gt=0)
    """How long a budget reservation stays held without renewal; the process making the call renews it."""
    ledger_outage_s: float = Field(default=60, ge=0)
    """How long a run waits for a ledger that went away mid-run (a database restart, a failover, the network)
    before it gives up: a paid answer's row waits in memory meanwhile, and so do the calls about to start. 0 gives up
    at once."""
    providers: dict[str, ProviderConfig]
    tiers: dict[str, TierConfig]
    routing: RoutingConfig
    tier_order: tuple[str, ...] = ()
    """Tiers from cheapest to dearest, for downgrades; derived from routing when empty."""
    vault: VaultConfig = VaultConfig()
    budgets: dict[str, BudgetConfig] = {}
    feedback: FeedbackConfig = FeedbackConfig()
    project: ProjectConfig = ProjectConfig()
    limits: LimitsConfig = LimitsConfig()
    module: ModuleConfig = ModuleConfig()
    run: RunConfig = RunConfig()


_COMMON_TIERS = {"light": 1024, "standard": 2048, "deep": 4096}
PROFILES: dict[str, dict[str, Any]] = {
    "anthropic": {
        "providers": {"anthropic": {"kind": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"}},
        "tiers": {
            "light": {"model": "anthropic:claude-haiku-4-5"},
            "standard": {"model": "anthropic:claude-sonnet-4-6"},
            "deep": {"model": "anthropic:claude-opus-4-6"},
        },
    },
    "openai": {
        "providers": {"openai": {"kind": "openai", "api_key_env": "OPENAI_API_KEY"}},
        "tiers": {
            "light": {"model": "openai:gpt-5-nano"},
            "standard": {"model": "openai:gpt-5-mini"},
            "deep": {"model": "openai:gpt-5.1"},
        },
    },
    "local": {
        "providers": {
            "local": {"kind": "openai-compatible", "base_url": "http://localhost:11434/v1", "timeout_s": 600}
        },
        "tiers": {
            "light": {"model": "local:llama3.2:3b"},
            "standard": {"model": "local:qwen2.5:14b"},
            "deep": {"model": "local:qwen2.5:32b"},
        },
    },
    "offline": {
        "providers": {"offline": {"kind": "offline"}},
        "tiers": {
            "light": {"model": "offline:extractive-light"},
            "standard": {"model": "offline:extractive-standard"},
            "deep": {"model": "offline:extractive-deep"},
        },
    },
}
for _profile in PROFILES.values():
    for _name, _tokens in _COMMON_TIERS.items():
        _profile["tiers"][_name]["max_output_tokens"] = _tokens
    _profile["routing"] = {"low": "light", "medium": "standard", "high": "deep"}
    _profile["tier_order"] = ["light", "standard", "deep"]

_KEY_PATTERN = re.compile(r"^(sk-|sk-ant-|sk-proj-|xai-|gsk_|AIza)[A-Za-z0-9_\-]{8,}")
_SECRET_KEY_NAMES = {"api_key", "key", "token", "secret", "password", "auth_token"}


@dataclass(frozen=True)
class Config:
    """The effective settings, where they came from, and where the vault is."""

    settings: Settings
    sources: dict[str, str] = field(default_factory=dict)
    """Dotted key -> where its value came from: `profile:<name>`, a file path, or `override`."""
    path: Path | None = None
    vault: Path | None = None

    @property
    def ledger_url(self) -> str:
        if self.settings.ledger_url:
            return self.settings.ledger_url
        if self.vault is None:
            raise ConfigError("no ledger: give --vault DIR, or set `ledger_url` in the config")
        return f"sqlite:///{(self.vault / '.tierflow' / 'ledger.sqlite').resolve()}"

    def project_for(self, *folders: str, explicit: str | None = None) -> str | None:
        """The project a run over `folders` is charged to.

        In order: `explicit` (`--project`); the `[project.folders]` entry for the deepest folder holding one
        of `folders`; a course code among the folders' path parts (`Teaching/EDU7001/essay-1` -> `EDU7001`);
        then `[project] name`.
        """
        if explicit:
            return explicit
        project = self.settings.project
        for folder in folders:
            parts = _folder_parts(folder)
            matches = [(len(_folder_parts(k)), v) for k, v in project.folders.items() if _under(parts, k)]
            if matches:
                return max(matches)[1]
        for folder in folders:
            for part in reversed(_folder_parts(folder)):
                if _COURSE_CODE.fullmatch(part):
                    return part
        return project.name

    def tier(self, name: str) -> TierConfig:
        try:
            return self.settings.tiers[name]
        except KeyError:
            known = ", ".join(sorted(self.settings.tiers))
            raise ConfigError(f"unknown tier {name!r}; the config defines: {known}") from None

    def provider_for(self, tier: str) -> tuple[str, ProviderConfig]:
        name = self.tier(tier).provider
        return name, self.settings.providers[name]

    def today(self) -> date:
        """Today in the vault's time zone (`[vault] timezone`), by tierflow's clock: the day a note is dated."""
        return clock.now().astimezone(ZoneInfo(self.settings.vault.timezone)).date()

    @property
    def tier_order(self) -> tuple[str, ...]:
        if self.settings.tier_order:
            return self.settings.tier_order
        ordered = [self.settings.routing[c] for c in COMPLEXITIES]
        return tuple(dict.fromkeys(ordered))

    @property
    def uses_cloud(self) -> bool:
        """Whether the routing table sends any complexity off this machine (`ProviderConfig.leaves_machine`)."""
        return any(self.provider_for(t)[1].leaves_machine for t in self.settings.routing.values())

    @property
    def may_reach_cloud(self) -> bool:
        """Whether any configured tier's calls leave this machine: a `--tier` override, a note's pin, an escalation
        or a learned route can only name a configured tier, so this is what privacy decisions must go by."""
        return bool(self.cloud_providers)

    @property
    def ledger_leaves_machine(self) -> bool:
        """Whether the ledger, which keeps the text of every request (prompts with the students' work), is on
        another machine: a PostgreSQL `ledger_url` any of whose hosts (`host=a,b` lists, which libpq tries in turn,
        and `hostaddr=`, where it connects) is neither a loopback address nor a Unix socket (no host, or a
        `host=/path`); what the URL leaves out, libpq takes from `PGHOST`, `PGHOSTADDR` and `PGSERVICE`. A service
        (`service=`) may name any host: taken as another machine. A SQLite ledger is a file in the vault."""
        url = self.settings.ledger_url or ""
        if not url or url.startswith("sqlite"):
            return False
        parts = urlsplit(url)
        given = {
            k: ",".join(v for key, v in parse_qsl(parts.query) if key == k) for k in ("host", "hostaddr", "service")
        }
        if given["service"] or os.environ.get("PGSERVICE"):
            return True
        host = ",".join(h for h in (parts.hostname, given["host"]) if h) or os.environ.get("PGHOST", "")
        hostaddr = given["hostaddr"] or os.environ.get("PGHOSTADDR", "")
        items = [h.strip() for h in f"{host},{hostaddr}".split(",") if h.strip()]
        return not all(h.startswith("/") or _loopback(h) for h in items)

    @property
    def cloud_providers(self) -> list[str]:
        """The providers, each once, of the configured tiers whose calls leave this machine (`may_reach_cloud`)."""
        return list(dict.fromkeys(name for name, p in map(self.provider_for, self.settings.tiers) if p.leaves_machine))

    def redacted(self) -> dict[str, tuple[Any, str]]:
        """Flat `key -> (value, source)` for display. Holds names of env vars, never their values, and URLs with
        their passwords masked (`ledger_url`, a `base_url` with credentials)."""
        flat: dict[str, Any] = {}
        _flatten(self.settings.model_dump(mode="json", exclude_none=True), "", flat)
        for key, value in flat.items():
            if isinstance(value, str) and (key == "ledger_url" or "://" in value):
                flat[key] = masked_url(value)
        return {k: (v, self.sources.get(k) or _source_of(k, self.sources)) for k, v in flat.items()}


def _loopback(url: str) -> bool:
    """Whether a URL's host is this machine: `localhost` or a loopback address (127.0.0.0/8, ::1)."""
    try:  # a bare IPv6 address (`::1`, as a `host=` parameter gives it)
        return ipaddress.ip_address(url).is_loopback
    except ValueError:
        pass
    host = (urlsplit(url if "//" in url else f"//{url}").hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_COURSE_CODE = re.compile(r"[A-Z]{2,6}\d{3,5}[A-Z]?")
"""A course code as universities write them: EDU7001, PSYC101, CS50 is too short to be sure of."""


def _folder_parts(folder: str) -> tuple[str, ...]:
    return tuple(p for p in folder.replace("\\", "/").split("/") if p and p != ".")


def _under(parts: tuple[str, ...], folder: str) -> bool:
    prefix = _folder_parts(folder)
    return parts[: len(prefix)] == prefix


def _source_of(key: str, sources: Mapping[str, str]) -> str:
    while "." in key:
        key = key.rsplit(".", 1)[0]
        if key in sources:
            return sources[key]
    return "default"


def _flatten(data: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(data, dict) and data:
        for key, value in data.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = data


def find_config_file(vault: Path | None, explicit: Path | None) -> Path | None:
    """The config file to load, by the documented lookup order (`~` is the home folder)."""
    explicit = user_path(explicit) if explicit is not None else None
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist")
        return explicit
    env = os.environ.get("TIERFLOW_CONFIG")
    if env:
        path = user_path(env)
        if not path.is_file():
            raise ConfigError(f"$TIERFLOW_CONFIG points to {path}, which does not exist")
        return path
    if vault is not None:
        candidate = vault / ".tierflow" / "config.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(
    vault: Path | None = None,
    *,
    config_path: Path | None = None,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load the effective config for a vault (or none)."""
    path = find_config_file(vault, config_path)
    data: dict[str, Any] = {}
    label = "built-in"
    if path is not None:
        label = str(path)
        text = ""
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            if text.startswith("\ufeff"):  # what Windows' Notepad writes first, invisible in an editor
                raise ConfigError(
                    f"{path}: not valid TOML: it starts with a byte-order mark (BOM), which TOML does not allow: "
                    "save it as UTF-8 without a BOM (in Notepad: Save as, Encoding: UTF-8) and run again."
                ) from exc
            raise ConfigError(f"{path}: not valid TOML: {exc}. Fix the syntax and run again.") from exc
        _reject_inline_secrets(data, path)
    chosen = profile or data.get("profile") or "offline"
    if chosen not in PROFILES:
        where = f"{path}: profile" if path and not profile else "--profile"
        raise ConfigError(
            f"{where}: unknown profile {chosen!r}. Choose one of: {', '.join(PROFILES)}.",
        )
    merged: dict[str, Any] = _deepcopy(PROFILES[chosen])
    sources: dict[str, str] = {}
    _record_sources(PROFILES[chosen], "", f"profile:{chosen}", sources)
    _merge(merged, data, "", sources, label)
    merged["profile"] = chosen
    sources["profile"] = "--profile" if profile else (label if "profile" in data else "default")
    if overrides:
        _merge(merged, dict(overrides), "", sources, "override")
    settings = _validate(merged, path)
    return Config(settings=settings, sources=sources, path=path, vault=vault)


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def _merge(base: dict[str, Any], top: Mapping[str, Any], prefix: str, sources: dict[str, str], label: str):
    """Lay `top` over `base` field by field, recording `label` as the source of every value it sets."""
    for key, value in top.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if (
            isinstance(value, Mapping)
            and isinstance(base.get(key), dict)
            and not _switches_kind(prefix, base[key], value)
        ):
            _merge(base[key], value, dotted, sources, label)
        else:
            for stale in [k for k in sources if k == dotted or k.startswith(f"{dotted}.")]:
                del sources[stale]
            base[key] = _deepcopy(dict(value) if isinstance(value, Mapping) else value)
            _record_sources(value, dotted, label, sources)


def _switches_kind(prefix: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """A provider whose kind the file changes starts afresh: it must not inherit a stale base_url or key name."""
    return prefix == "providers" and "kind" in new and new["kind"] != old.get("kind")


def _record_sources(data: Any, prefix: str, label: str, sources: dict[str, str]) -> None:
    """`label` as the source of each value in `data` (not of its tables, so defaults stay `default`)."""
    if isinstance(data, Mapping) and data:
        for key, value in data.items():
            _record_sources(value, f"{prefix}.{key}" if prefix else str(key), label, sources)
    else:
        sources[prefix] = label


def _reject_inline_secrets(data: Any, path: Path, prefix: str = "") -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if key in _SECRET_KEY_NAMES and isinstance(value, str):
                raise ConfigError(
                    f"{path}: `{dotted}` holds a secret inline. Keys never go in the config: remove it, "
                    f"export the key in an environment variable and set `{prefix or 'providers.<name>'}"
                    ".api_key_env` to that variable's name (or `api_key_secret` to a Prefect Secret block)."
                )
            _reject_inline_secrets(value, path, dotted)
    elif isinstance(data, list):
        for item in data:
            _reject_inline_secrets(item, path, prefix)
    elif isinstance(data, str) and _KEY_PATTERN.match(data):
        raise ConfigError(
            f"{path}: `{prefix}` looks like an API key value. Put the key in an environment variable and "
            f'name that variable instead (for example `api_key_env = "ANTHROPIC_API_KEY"`).'
        )


def _validate(merged: dict[str, Any], path: Path | None) -> Settings:
    where = str(path) if path else "built-in config"
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        fix = _fix_for(err, key)
        raise ConfigError(f"{where}: `{key}`: {err['msg']}. {fix}") from None
    for name, tier in settings.tiers.items():
        if ":" not in tier.model:
            raise ConfigError(
                f"{where}: `tiers.{name}.model` = {tier.model!r} names no provider. "
                f'Write it as "<provider>:<model-id>", for example "anthropic:claude-haiku-4-5".'
            )
        if tier.provider not in settings.providers:
            known = ", ".join(sorted(settings.providers)) or "none"
            raise ConfigError(
                f"{where}: `tiers.{name}.model` uses unknown provider {tier.provider!r}. "
                f"Add a [providers.{tier.provider}] table, or use one of: {known}."
            )
        for fallback in tier.fallbacks:
            if fallback.split(":", 1)[0] not in settings.providers or ":" not in fallback:
                raise ConfigError(
                    f"{where}: `tiers.{name}.fallbacks` names {fallback!r}, not a configured provider's model. "
                    f'Write "<provider>:<model-id>" with one of: {", ".join(sorted(settings.providers))}.'
                )
    for complexity, tier_name in settings.routing.items():
        if tier_name not in settings.tiers:
            raise ConfigError(
                f"{where}: `routing.{complexity}` names unknown tier {tier_name!r}. "
                f"Define [tiers.{tier_name}] or use one of: {', '.join(sorted(settings.tiers))}."
            )
    missing = [c for c in COMPLEXITIES if c not in settings.routing]
    if missing:
        raise ConfigError(f'{where}: `routing` has no tier for {", ".join(missing)}. Add `{missing[0]} = "<tier>"`.')
    for phase_name, tier_name in settings.routing.phases.items():
        if tier_name not in settings.tiers:
            raise ConfigError(f"{where}: `routing.phases.{phase_name}` names unknown tier {tier_name!r}.")
    if settings.routing.ceiling and settings.routing.ceiling not in settings.tiers:
        raise ConfigError(f"{where}: `routing.ceiling` names unknown tier {settings.routing.ceiling!r}.")
    for tier_name in settings.tier_order:
        if tier_name not in settings.tiers:
            raise ConfigError(f"{where}: `tier_order` names unknown tier {tier_name!r}.")
    for name, budget in settings.budgets.items():
        if budget.floor and budget.floor not in settings.tiers:
            raise ConfigError(f"{where}: `budgets.{name}.floor` names unknown tier {budget.floor!r}.")
        if budget.usd is None and budget.tokens is None:
            raise ConfigError(f"{where}: `budgets.{name}` sets neither `usd` nor `tokens`. Set one of them.")
        if budget.tier and budget.tier not in settings.tiers:
            raise ConfigError(
                f"{where}: `budgets.{name}.tier` names unknown tier {budget.tier!r}; "
                f"the config defines: {', '.join(sorted(settings.tiers))}."
            )
        if budget.unpriced == "allow" and budget.fallback_usd_per_mtok is None:
            raise ConfigError(
                f'{where}: `budgets.{name}.unpriced = "allow"` needs the price to count unpriced models at: '
                f"set `fallback_usd_per_mtok` (USD per million tokens) in [budgets.{name}]."
            )
    # Refused here, with the file it is in (exit 2), not on first use: an unknown driver was a long import traceback.
    problem = ledger_url_problem(settings.ledger_url) if settings.ledger_url else None
    if problem:
        raise ConfigError(f"{where}: `ledger_url` = {problem}")
    return settings


def _fix_for(err: Mapping[str, Any], key: str) -> str:
    if err["type"] == "extra_forbidden" and key.startswith("routing."):
        return (
            f"Routing keys are the complexities ({', '.join(COMPLEXITIES)}), `escalate`, `ceiling`, `phases`, "
            "`mode`, `target`, `min_evidence`, `explore`, `value`, `value_by` and `min_requests`."
        )
    if err["type"] == "extra_forbidden":
        return "Remove it or check its spelling against `tierflow config show`."
    if err["type"] == "literal_error" and key.endswith(".kind"):
        return f"A provider's kind is one of: {', '.join(PROVIDER_KINDS)}."
    if err["type"] == "missing":
        return "Add it."
    return "Correct the value."
