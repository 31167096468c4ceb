"""The errors tierflow raises: each says what went wrong and what to do next."""

from __future__ import annotations

from typing import Any


def _rebuilt(cls: type[BaseException], args: tuple[Any, ...], fields: dict[str, Any]) -> BaseException:
    """An exception as `PicklableError` pickled it: its message and fields as they were, its `__init__` not run."""
    error = cls.__new__(cls, *args)
    error.args = args
    vars(error).update(fields)
    return error


class PicklableError:
    """Mixed into an exception whose `__init__` takes other parameters than its message: pickled, it keeps its
    message (`args`) and its fields (`hint`, `phase`, ...). Python's own pickling calls `cls(*args)` again, which
    such an `__init__` refuses, or, given the finished message as its one parameter, wraps a second time. Prefect
    pickles a task's exception to bring it back from a Dask worker or a process pool, and to persist it."""

    args: tuple[Any, ...]

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt, (type(self), self.args, vars(self))


class TierflowError(PicklableError, Exception):
    """Base of every error tierflow reports to a user."""

    run_id: str | None = None
    """The run this error ended, when it was raised inside one (`run_span` sets it): its calls are in the ledger."""


_RUN = "_tierflow_run_id"
"""The attribute `mark_run` gives an error that is not a TierflowError (a bug in a flow's own code)."""


def mark_run(error: BaseException, run_id: str) -> None:
    """Name the run `error` ended, unless it names one already (`run_of`): its calls are in the ledger."""
    if isinstance(error, TierflowError):
        error.run_id = error.run_id or run_id
        return
    try:  # any exception of a flow's own code; one that takes no attributes stays as it is
        if getattr(error, _RUN, None) is None:
            setattr(error, _RUN, run_id)
    except (AttributeError, TypeError):
        pass


def run_of(error: BaseException) -> str | None:
    """The run `error` ended, when it was raised inside one (`mark_run`)."""
    return error.run_id if isinstance(error, TierflowError) else getattr(error, _RUN, None)


class ConfigError(TierflowError):
    """The config is missing, malformed, or inconsistent."""


class VaultError(TierflowError):
    """The vault or a note in it cannot be used."""


class LedgerError(TierflowError):
    """The ledger's database cannot be opened or read; names the ledger (file, or URL without its password)."""


class NoLedger(LedgerError):
    """A report was asked of a SQLite ledger that does not exist yet: no call has been recorded there (or the vault
    or config named is not the one meant). Nothing is created for it."""


class LedgerUnreachable(LedgerError):
    """The ledger's database cannot be reached: it went away mid-transaction (a restart, a failover, the network),
    or stayed away longer than a run waits for it (`ledger_outage_s`), or was never there."""

    gave_up = False
    """The ledger has been away as long as the run waits for it (`Outage`): the calls after this one fail too."""

    def saying(self, more: str) -> LedgerUnreachable:
        """This error with `more` said after it (what it left unrecorded, and how to recover it); `gave_up` kept."""
        said = LedgerUnreachable(f"{self}. {more}")
        said.gave_up = self.gave_up
        return said


class ProviderError(TierflowError):
    """A model provider failed; names the provider, the model and the cause."""

    retryable = False
    lost_attempts = 0
    """HTTP attempts of this call whose answer never arrived (timeouts, resets): the provider may bill them."""
    unsent = False
    """Raised before the request itself was sent (an OpenAI batch's input file could not be uploaded, with the
    SDK's retries): nothing came of it, so a batch is neither looked for nor sent again (`batch._send`)."""

    def __init__(self, provider: str, model: str, cause: str, *, hint: str = "") -> None:
        self.provider = provider
        self.model = model
        self.cause = cause
        self.hint = hint
        message = f"{provider}:{model}: {cause}"
        super().__init__(f"{message}. {hint}" if hint else message)


class ProviderAuthError(ProviderError):
    """The key is missing or rejected."""


class ProviderRateLimited(ProviderError):
    retryable = True


class ProviderUnavailable(ProviderError):
    """5xx, 529 overloaded, timeouts and connection failures, after the SDK's own retries."""

    retryable = True


class BatchResultsUnavailable(ProviderUnavailable):
    """A batch has ended, but its results could not be downloaded, even when tried again: its answers are paid for
    and kept by the provider, and `tierflow resume RUN` collects them."""

    def __init__(self, provider: str, model: str, cause: str, *, hint: str = "", batch_id: str = "") -> None:
        self.batch_id = batch_id
        super().__init__(provider, model, cause, hint=hint)


class ModelNotFound(ProviderError):
    """The provider no longer serves the model (HTTP 404 `model_not_found`): it was retired or renamed."""


class ContextWindowExceeded(ProviderError):
    """A prompt and its answer would not fit the routed model's context window: by tierflow's count, and nothing was
    sent; or by the provider's, which refused the request (a batch item's error) and billed nothing."""

    phase = ""
    tier = ""
    """The phase and the tier it was routed to: a flow that knows why its prompt is long gives its own hint."""
    by_provider = False
    """The provider refused it: the model's window is what the provider says, whatever the config sets."""


class MalformedResponse(ProviderError):
    """The provider answered, but not in the shape asked for."""


class OutputLimitReached(MalformedResponse):
    """Every answer was cut off at its tier's output limit: a limit of the config, not a provider fault, so a rerun
    with the config unchanged is cut off the same way."""

    repeats = True
    """A rerun with the config unchanged would send the same requests and be cut off again (every attempt was cut
    off, and no budget sent one less than its limit or downgraded it):
    the request is remembered, and such a rerun fails it at once without paying again (`Caller.known_cut_off`)."""


class OutputModeRejected(ProviderError):
    """The server refused the structured-output form (`response_format`); the call path tries the next form."""


class BatchPending(TierflowError):
    """A provider batch is still running, as the run chose (`wait=False`, `--no-wait`): the phase is not failed,
    and `tierflow resume RUN` collects it."""


class BudgetExceeded(TierflowError):
    """A reservation did not fit a budget whose policy is `halt`."""

    def __init__(self, message: str, *, budget: str = "", scope: str = "") -> None:
        self.budget = budget
        self.scope = scope
        super().__init__(message)
