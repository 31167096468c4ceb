"""Progress of a run's phases, for whoever listens: the CLI's progress bars, Prefect's progress artifact."""

from __future__ import annotations

import contextvars
import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

Listener = Callable[[str, int, int, str], None]
"""Called with (phase, done, total, subject)."""

_listeners: list[Listener] = []
_lock = threading.Lock()


def listen(listener: Listener) -> Callable[[], None]:
    """Add a listener; returns the function that removes it."""
    with _lock:
        _listeners.append(listener)

    def remove() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return remove


def advance(phase: str, done: int, total: int, subject: str = "") -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(phase, done, total, subject)


def artifact_key(flow: str, what: str, vault: str | None = None) -> str:
    """`<flow>-<what>`, scoped to the vault (`-<folder>-<path hash>`) so two vaults' runs never share a key.

    Prefect artifact keys allow only lower-case letters, digits and dashes.
    """
    scope = ""
    if vault:
        path = Path(vault).resolve()
        scope = f"-{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:6]}"
    key = "".join(ch if ch.isascii() and (ch.isalnum() or ch == "-") else "-" for ch in f"{flow}-{what}{scope}".lower())
    return "-".join(part for part in key.split("-") if part)


PHASES = ("collate", "synthesise", "draft")

FLUSH_S = 30.0
"""How long a run's end waits for its progress artifact to reach the Prefect server (`flush_progress`)."""

log = logging.getLogger("tierflow")


class _ProgressSender:
    """Sends one flow run's progress to its Prefect artifact from a background thread, newest first.

    A fan-out used to send it from its own loop, between a finished task run and the next one submitted: one
    request to the server per finished item (a median of 32 ms on an idle machine), so a wave of answered calls
    waited for up to `workers` requests before their replacements started (`benchmarks/tier_throughput.py`).
    Only the newest progress matters, so an update that arrives while another is on its way replaces any
    waiting one, and the phase never waits on the server.
    """

    def __init__(self, context: contextvars.Context) -> None:
        self.context = context
        """The flow run's context (its Prefect settings and run), in which the artifact is created and updated."""
        self.artifact: object | None = None
        self.pending: tuple[float, str, str] | None = None
        """(percent, description, key) to send next."""
        self.sending = False
        self.thread: threading.Thread | None = None
        self.condition = threading.Condition()

    def put(self, percent: float, description: str, key: str) -> None:
        with self.condition:
            self.pending = (percent, description, key)
            self.condition.notify_all()
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self.context.copy().run, args=(self._send,), name="tierflow-progress", daemon=True
                )
                self.thread.start()

    def _send(self) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        while True:
            with self.condition:
                if self.pending is None:  # nothing left: the thread ends, the next `put` starts another
                    self.thread = None
                    self.condition.notify_all()
                    return
                (percent, description, key), self.pending = self.pending, None
                self.sending = True
            try:  # `_sync`: from this thread, whatever kind of flow the run is
                if self.artifact is None:
                    self.artifact = create_progress_artifact(percent, key=key, description=description, _sync=True)
                else:
                    update_progress_artifact(self.artifact, percent, description=description, _sync=True)
            except Exception:  # no server, or a busy one: the next update tries again
                log.warning("could not send the run's progress to Prefect", exc_info=True)
            finally:
                with self.condition:
                    self.sending = False
                    self.condition.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every update has been sent (or tried); False if `timeout` seconds passed first."""
        with self.condition:
            return self.condition.wait_for(lambda: self.pending is None and not self.sending, timeout)


_senders: dict[str, _ProgressSender] = {}


def prefect_progress(phase: str, done: int, total: int, subject: str = "", *, note: str = "") -> None:
    """Keep the flow run's progress artifact (Prefect UI, Artifacts tab) in step with its phases: `collate: 3/10
    (<subject>)`, and at the end of a phase that did not finish every item, `note` (`collate: 6/10, halted by
    budget`).

    It returns at once: the artifact is sent from a background thread (`_ProgressSender`), and the run's end
    waits for it (`flush_progress`)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None or phase not in PHASES:
        return
    share = (done / total) if total else 1.0
    percent = round(100 * (PHASES.index(phase) + share) / len(PHASES), 1)
    run_id = str(context.flow_run.id)
    description = f"{phase}: {done}/{total}" + (f" ({subject})" if subject else "") + (f", {note}" if note else "")
    with _lock:
        sender = _senders.get(run_id)
        if sender is None:
            sender = _senders[run_id] = _ProgressSender(contextvars.copy_context())
    vault = (context.parameters or {}).get("vault")
    sender.put(percent, description, artifact_key(context.flow.name, "progress", vault))


def flush_progress(timeout: float = FLUSH_S) -> None:
    """At the end of a flow run: wait until its progress artifact has reached the Prefect server, and let go of
    the run's sender (a long-lived worker runs many flows; each sender holds its run's whole context)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    with _lock:
        sender = _senders.pop(str(context.flow_run.id), None)
    if sender is not None and not sender.flush(timeout):
        log.warning("the run's progress did not reach Prefect within %.0f s", timeout)
