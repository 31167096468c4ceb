"""Tier concurrency under load: tierflow's ledger slots, Prefect tag limits, and no limit, on a real server.

Starts `prefect server start` (its default SQLite database) on a free loopback port, and a local Anthropic
wire double whose every call takes 1.0 s. Each scenario runs one Prefect flow that fans its calls out as
tagged task runs (`tier:light`) through `phases.fan_out`, as a tierflow phase does, and measures the phase's
wall time against the ideal (`ceil(calls / N)` seconds), the span from the first model call's start to the
last one's end (from the ledger) against the same ideal, and the most calls in flight at the double:

- `ledger slots`: `[tiers.light] concurrency = N`, tierflow's slots around each model call (the default),
  with the default `[run] workers` (16) task runs unfinished at once.
- `prefect tags`: the same limit as a Prefect tag limit on `tier:light` (`[limits] mechanism = "prefect"`,
  `tierflow limits apply`), which holds whole task runs.
- `no limit`: no tier limit; `[run] workers = N` (and a thread pool of N) is the only bound.
- `ledger, cold`: ledger slots without warming Prefect's tag-limit answer before the fan-out
  (`phases.warm_tag_limits`) or keeping it fresh while it runs (`phases.TagAnswers`), the baseline for those
  steps: every task run then asks the server in turn.

Each scenario starts after `--settle` idle seconds, so that none pays for the server's work on the last.

Under each scenario (`handoff` in `--format json`) it shows where the slots' idle time went, from wrapping
tierflow's own call path (`HandoffTrace`, which measures an older commit the same way): for each freed slot,
from the answer of the call that held it to the commit of the next call's claim, split into the time until
the slot was free, with no started task run waiting, at the local gate, queued for the ledger write, and in
the reservation transaction (median, 90th percentile, max); the time each call held its slot outside the
provider call; the ledger writes in between; claim tries per call; and the questions to the Prefect server
about tag limits.

    python benchmarks/tier_throughput.py [--format json] [--latency 1.0] [--only 40:4] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HOME = Path(tempfile.mkdtemp(prefix="tierflow-bench-throughput-"))
os.environ["PREFECT_HOME"] = str(HOME / "client")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["ANTHROPIC_API_KEY"] = "bench"

SCENARIOS = ((40, 4), (40, 8), (120, 8))
MECHANISMS = ("ledger slots", "prefect tags", "no limit", "ledger, cold")


class HandoffTrace:
    """When each slot was given back and when the next call took it, by wrapping tierflow's own call path.

    Per call (one thread runs one call at a time): when it asked for and passed this process's gate, how often it
    tried to claim a ledger slot (each try is one `CallScope.claim`: one poll), when the write transaction that
    took the slot was entered and committed, when the provider call ran (`Caller._complete`), and when the
    transaction that gave the slot back committed. Every ledger write transaction is timed too. The same wrapping
    works on any tierflow whose call path has these names, so a base commit is measured by the same script.
    """

    def __init__(self) -> None:
        self.calls: list[dict[str, float]] = []
        self.writes: list[float] = []
        self.tag_questions: list[float] = []
        """How long each question to the Prefect server about the task runs' tag limits took (the task engine's,
        and the fan-out's first); `tag_refreshes`: the fan-out's questions while it runs, where it asks them."""
        self.tag_refreshes: list[float] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def _call(self) -> dict[str, float]:
        call = getattr(self._local, "call", None)
        if call is None:
            call = self._local.call = {"polls": 0}
            with self._lock:
                self.calls.append(call)
        return call

    def install(self) -> None:
        from tierflow.core.calls import Caller
        from tierflow.core.ledger import Ledger
        from tierflow.core.scope import CallScope
        from tierflow.core.slots import TierSlots

        trace, clock = self, time.perf_counter
        pass_gate, leave_gate, claim = CallScope.pass_gate, CallScope.leave_gate, CallScope.claim
        release, transaction, complete = TierSlots.release, Ledger.transaction, Caller._complete

        def traced_pass_gate(scope, gate, *, blocking=True):  # noqa: ANN001, ANN202
            if gate is None or scope.gate is not None:
                return pass_gate(scope, gate, blocking=blocking)
            call = trace._call()
            call.setdefault("gate_asked", clock())
            passed = pass_gate(scope, gate, blocking=blocking)
            if passed:
                call["gate_passed"] = clock()
            return passed

        def traced_leave_gate(scope):  # noqa: ANN001, ANN202
            leave_gate(scope)
            call = getattr(trace._local, "call", None)
            if call is not None and "released" in call:
                trace._local.call = None  # this thread's next call is a new one

        def traced_claim(scope, conn, chosen):  # noqa: ANN001, ANN202
            call = trace._call()
            call["polls"] += 1
            call["tx_entered"] = trace._local.tx_entered
            taken = claim(scope, conn, chosen)
            if taken and scope.slot:
                trace._local.pending = "claimed"
            return taken

        def traced_release(slots, conn, slot):  # noqa: ANN001, ANN202
            release(slots, conn, slot)
            if slot:
                trace._local.pending = "released"

        @contextmanager
        def traced_transaction(ledger, **options):  # noqa: ANN001, ANN003, ANN202
            trace._local.pending = None
            asked = clock()
            with transaction(ledger, **options) as conn:
                trace._local.tx_entered = entered = clock()
                yield conn
            done = clock()
            with trace._lock:
                trace.writes.append(done)
            pending, trace._local.pending = getattr(trace._local, "pending", None), None
            if pending is not None:
                trace._call()[pending] = done
            if pending == "released":
                trace._call().update(release_asked=asked, release_entered=entered)

        def traced_complete(caller, routed, request):  # noqa: ANN001, ANN202
            call = trace._call()
            call["sent"] = clock()
            try:
                return complete(caller, routed, request)
            finally:
                call["answered"] = clock()

        from prefect.client.orchestration import PrefectClient, SyncPrefectClient

        ask = PrefectClient.increment_concurrency_slots_with_lease

        async def traced_ask(client, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            t0 = clock()
            try:
                return await ask(client, *args, **kwargs)
            finally:
                with trace._lock:
                    trace.tag_questions.append(clock() - t0)

        PrefectClient.increment_concurrency_slots_with_lease = traced_ask
        ask_sync = SyncPrefectClient.increment_concurrency_slots_with_lease

        def traced_ask_sync(client, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            t0 = clock()
            try:
                return ask_sync(client, *args, **kwargs)
            finally:
                with trace._lock:
                    trace.tag_refreshes.append(clock() - t0)

        SyncPrefectClient.increment_concurrency_slots_with_lease = traced_ask_sync
        CallScope.pass_gate, CallScope.leave_gate, CallScope.claim = traced_pass_gate, traced_leave_gate, traced_claim
        called = getattr(CallScope, "called", None)  # the hand-over at the answer, where the call path has one
        if called is not None:

            def traced_called(scope):  # noqa: ANN001, ANN202
                handed = scope.slot
                called(scope)
                if handed:
                    trace._call()["handed"] = clock()

            CallScope.called = traced_called
        TierSlots.release, Ledger.transaction, Caller._complete = traced_release, traced_transaction, traced_complete

    def reset(self) -> None:
        with self._lock:
            self.calls, self.writes, self.tag_questions, self.tag_refreshes = [], [], [], []

    def handoffs(self, limit: int, latency: float) -> dict[str, Any]:
        """Each freed slot's idle gap, from the answer of the call that held it to the commit of the next call's
        claim, split into where the time went; and what each call spent inside its slot around the provider call.

        A slot is free for the next call once its holder gives it back in the ledger (its settlement committed),
        or, where the call path hands an answered call's slot over (`CallScope.called`), from that moment.
        """
        done = [c for c in self.calls if "claimed" in c and "released" in c and "answered" in c]
        for c in done:
            c["free"] = min(c.get("handed", c["released"]), c["released"])
        claims = sorted(done, key=lambda c: c["claimed"])
        frees = sorted(done, key=lambda c: c["free"])
        writes = sorted(self.writes)
        names = ("idle", "until_free", "no_waiter", "gate", "write_queue", "reserve_tx")
        parts: dict[str, list[float]] = {k: [] for k in names}
        between: list[int] = []
        for k in range(limit, len(claims)):  # the k-th slot taken needs the (k - limit)-th freed
            taker, giver = claims[k], frees[k - limit]
            start, end = giver["answered"], taker["claimed"]
            freed = min(max(giver["free"], start), end)

            def at(key: str, start: float = freed, end: float = end, taker: dict = taker) -> float:
                return min(max(taker.get(key, start), start), end)

            asked, passed, entered = at("gate_asked"), at("gate_passed"), at("tx_entered")
            parts["idle"].append(end - start)
            parts["until_free"].append(freed - start)
            parts["no_waiter"].append(asked - freed)
            parts["gate"].append(passed - asked)
            parts["write_queue"].append(entered - passed)
            parts["reserve_tx"].append(end - entered)
            between.append(sum(1 for w in writes if start < w < end))
        inside_before = [c["sent"] - c["claimed"] for c in done if "sent" in c]
        answered = [c for c in done if "answered" in c and "release_asked" in c]
        inside_after = [c["released"] - c["answered"] for c in answered]
        before_settle = [c["release_asked"] - c["answered"] for c in answered]
        settle_queue = [c["release_entered"] - c["release_asked"] for c in answered]
        settle_tx = [c["released"] - c["release_entered"] for c in answered]
        beyond = [c["answered"] - c["sent"] - latency for c in claims[limit:] if "sent" in c and "answered" in c]
        first_wave = [c["answered"] - c["sent"] - latency for c in claims[:limit] if "sent" in c and "answered" in c]
        polls = [c["polls"] for c in done]

        def ms(values: list[float]) -> dict[str, float | None]:
            values = sorted(values)
            if not values:
                return {"median": None, "p90": None, "max": None}
            pick = lambda q: round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)  # noqa: E731
            return {"median": pick(0.5), "p90": pick(0.9), "max": round(values[-1] * 1000, 1)}

        return {
            "handoffs": len(parts["idle"]),
            "idle_s_total": round(sum(parts["idle"]), 2),
            **{f"{name}_ms": ms(values) for name, values in parts.items()},
            "writes_between": {
                "median": sorted(between)[len(between) // 2] if between else None,
                "max": max(between, default=None),
            },
            "polls_per_call": {
                "median": sorted(polls)[len(polls) // 2] if polls else None,
                "max": max(polls, default=None),
            },
            "in_slot_before_call_ms": ms(inside_before),
            "in_slot_after_call_ms": ms(inside_after),
            "verdict_and_row_ms": ms(before_settle),
            "settle_write_queue_ms": ms(settle_queue),
            "settle_tx_ms": ms(settle_tx),
            "provider_call_beyond_latency_ms": ms(beyond),
            "first_wave_beyond_latency_ms": ms(first_wave),
            "tag_limit_questions": len(self.tag_questions),
            "tag_limit_question_ms": ms(self.tag_questions),
            "tag_limit_refreshes": len(self.tag_refreshes),
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prefect_server(home: Path):
    """A real `prefect server start` on SQLite, as a user runs it; yields its API URL."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port))
    log = (home / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start; see {home / 'server.log'}")
            time.sleep(0.25)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        log.close()


def config_text(base_url: str, limit: int | None, mechanism: str, workers: int | None = None) -> str:
    concurrency = f"concurrency = {limit}\n" if limit else ""
    run = f"[run]\nworkers = {workers}\n" if workers else ""
    return (
        f'profile = "anthropic"\n[providers.anthropic]\nkind = "anthropic"\nbase_url = "{base_url}"\n'
        'api_key_env = "ANTHROPIC_API_KEY"\nmax_retries = 0\ntimeout_s = 60\n'
        f'[tiers.light]\nmodel = "anthropic:claude-haiku-4-5"\nmax_output_tokens = 256\n{concurrency}'
        '[tiers.standard]\nmodel = "anthropic:claude-sonnet-4-6"\n[tiers.deep]\nmodel = "anthropic:claude-opus-4-6"\n'
        f'[limits]\nmechanism = "{mechanism}"\n{run}'
    )


def run_scenario(
    double: Any,
    root: Path,
    calls: int,
    limit: int,
    mechanism: str,
    latency: float,
    trace: HandoffTrace,
    workers: int | None = None,
) -> dict[str, Any]:
    from prefect import flow, task
    from prefect.concurrency.services import _no_limits_cache
    from prefect.task_runners import ThreadPoolTaskRunner

    from tierflow.cli.prefect_ops import apply_limits
    from tierflow.core.calls import RunSettings, caller_for
    from tierflow.core.config import load_config
    from tierflow.core.ledger import Ledger
    from tierflow.core.phases import fan_out
    from tierflow.testing.ledger import most_at_once

    name = f"{mechanism.replace(', ', '-').replace(' ', '-')}-{calls}-{limit}"
    vault = root / name
    for again in range(2, 1000):  # a repeated scenario (`--repeat`) gets a fresh vault and ledger
        if not vault.exists():
            break
        vault = root / f"{name}-{again}"
    (vault / ".tierflow").mkdir(parents=True)
    kind = {"ledger slots": "ledger", "prefect tags": "prefect", "no limit": "ledger", "ledger, cold": "ledger"}[
        mechanism
    ]
    (vault / ".tierflow" / "config.toml").write_text(
        config_text(
            double.anthropic_base_url,
            None if mechanism == "no limit" else limit,
            kind,
            workers=limit if mechanism == "no limit" else workers,
        )
    )
    apply_limits(load_config(vault))  # creates, or removes, the Prefect tag limit on tier:light
    _no_limits_cache.clear()
    settings = RunSettings(vault=str(vault), run_id=f"bench-{vault.name}", flow="throughput", use_cache=False)
    caller_for(settings).provider("anthropic")  # the SDK client exists before the clock starts

    @task
    def collate_call(settings, index):  # noqa: ANN001, ANN202 (unannotated: Prefect resolves annotations)
        entered.append(datetime.now(UTC))
        return (
            caller_for(settings)
            .ask(phase="collate", complexity="low", system="Be brief.", prompt=f"Note {index}", subject=f"n{index}")
            .text
        )

    threads = limit if mechanism == "no limit" else calls

    @flow(name="tier-throughput", task_runner=ThreadPoolTaskRunner(max_workers=threads))
    def phase(settings):  # noqa: ANN001, ANN202
        started.append(datetime.now(UTC))
        t0 = time.perf_counter()
        outcome = fan_out(
            collate_call,
            settings,
            list(range(calls)),
            phase="collate",
            complexity="low",
            subject=lambda i: f"n{i}",
            args=lambda i: (settings, i),
        )
        assert len(outcome.results) == calls, outcome.skipped
        return time.perf_counter() - t0

    import tierflow.core.phases as phases

    warm, again = phases.warm_tag_limits, getattr(phases, "_ask_again", None)
    if mechanism == "ledger, cold":
        phases.warm_tag_limits = lambda task, settings: None
        phases._ask_again = lambda tags: None  # nor kept fresh while the phase runs
    double.reset()
    trace.reset()
    started: list[datetime] = []
    entered: list[datetime] = []
    try:
        wall = phase(settings)
    finally:
        phases.warm_tag_limits = warm
        if again is not None:
            phases._ask_again = again
    rows = Ledger.for_vault(vault).rows(run_id=settings.run_id)
    ideal = math.ceil(calls / limit) * latency
    starts = [datetime.fromisoformat(r["started_at"]) for r in rows]
    ends = [s + timedelta(milliseconds=r["latency_ms"]) for s, r in zip(starts, rows, strict=True)]
    span = (max(ends) - min(starts)).total_seconds()
    # A freed slot's next call: for each call after the first wave, the gap from the nearest earlier end.
    gaps = sorted(
        min((s - e).total_seconds() for e in ends if e <= s) * 1000 for s in starts if any(e <= s for e in ends)
    )
    return {
        "calls": calls,
        "limit": limit,
        "mechanism": mechanism,
        "wall_s": round(wall, 2),
        "ideal_s": ideal,
        "wall_to_ideal": round(wall / ideal, 2),
        "calls_span_s": round(span, 2),
        "calls_span_to_ideal": round(span / ideal, 2),
        "not_in_calls_s": round(wall - span, 2),
        "before_first_call_s": round((min(starts) - started[0]).total_seconds(), 2),
        "first_task_entered_s": round((min(entered) - started[0]).total_seconds(), 2),
        "handover_ms_median": round(gaps[len(gaps) // 2], 1) if gaps else None,
        "max_in_flight": double.max_in_flight,
        "max_in_flight_ledger": most_at_once(rows),
        "rows": len(rows),
        "handoff": trace.handoffs(limit, latency) if mechanism != "prefect tags" else None,
    }


def handoff_text(h: dict[str, Any]) -> str:
    """Where a freed slot's idle time went, as lines under a scenario's result."""

    def row(name: str, key: str) -> str:
        v = h[key]
        return f"      {name:<34}{v['median']!s:>9}{v['p90']!s:>9}{v['max']!s:>9}"

    return "\n".join(
        [
            f"      {h['handoffs']} hand-offs, slots idle {h['idle_s_total']} s in all;"
            f" ms{'median':>27}{'p90':>9}{'max':>9}",
            row("idle gap (answer -> next claim)", "idle_ms"),
            row("  until the slot is free", "until_free_ms"),
            row("  no call waiting yet", "no_waiter_ms"),
            row("  at the local gate", "gate_ms"),
            row("  queued for the ledger write", "write_queue_ms"),
            row("  the reservation transaction", "reserve_tx_ms"),
            row("in slot before the call", "in_slot_before_call_ms"),
            row("answer -> given back in the ledger", "in_slot_after_call_ms"),
            row("  verdict, row, telemetry", "verdict_and_row_ms"),
            row("  queued for the settle write", "settle_write_queue_ms"),
            row("  the settle transaction", "settle_tx_ms"),
            row("provider call beyond its latency", "provider_call_beyond_latency_ms"),
            row("  the same, first wave", "first_wave_beyond_latency_ms"),
            f"      questions to the Prefect server about tag limits: {h['tag_limit_questions']},"
            f" ms median {h['tag_limit_question_ms']['median']}, max {h['tag_limit_question_ms']['max']};"
            f" refreshed in the background {h.get('tag_limit_refreshes', 0)} times",
            f"      ledger writes between give-back and take: median {h['writes_between']['median']},"
            f" max {h['writes_between']['max']}; claim tries per call (polls): median"
            f" {h['polls_per_call']['median']}, max {h['polls_per_call']['max']}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds each model call takes")
    parser.add_argument("--settle", type=float, default=10.0, help="idle seconds before each scenario")
    parser.add_argument("--only", default="", help="CALLS:LIMIT (e.g. 40:8) to run one scenario")
    parser.add_argument("--mechanism", choices=MECHANISMS, action="append", help="run only these (repeatable)")
    parser.add_argument("--repeat", type=int, default=1, help="run every scenario this many times (each listed)")
    parser.add_argument(
        "--workers", type=int, default=None, help="`[run] workers` for the ledger scenarios (default: the config's)"
    )
    args = parser.parse_args()
    from tierflow.testing.double import ProviderDouble

    results = []
    trace = HandoffTrace()
    trace.install()
    with prefect_server(HOME / "server") as url, ProviderDouble(latency_s=args.latency) as double:
        os.environ["PREFECT_API_URL"] = url
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: url}):
            scenarios = [tuple(map(int, args.only.split(":")))] if args.only else SCENARIOS
            for calls, limit in [scenario for _ in range(max(1, args.repeat)) for scenario in scenarios]:
                for mechanism in args.mechanism or MECHANISMS:
                    time.sleep(args.settle)  # the server's services finish the previous scenario's events first
                    result = run_scenario(
                        double, HOME / "vaults", calls, limit, mechanism, args.latency, trace, args.workers
                    )
                    results.append(result)
                    if args.format == "table":
                        print(
                            f"  ... {calls} calls, limit {limit}, {mechanism}: {result['wall_to_ideal']}x"
                            f" (calls span {result['calls_span_to_ideal']}x)",
                            flush=True,
                        )
                        if result["handoff"]:
                            print(handoff_text(result["handoff"]), flush=True)
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return
    print(f"\ntier throughput on a real `prefect server start` (SQLite), calls of {args.latency:.1f} s")
    print(
        f"{'calls':>6}{'limit':>7}  {'mechanism':<14}{'wall s':>8}{'ideal s':>9}{'wall/ideal':>12}"
        f"{'calls span/ideal':>18}{'first call s':>14}{'max in flight':>15}"
    )
    for r in results:
        print(
            f"{r['calls']:>6}{r['limit']:>7}  {r['mechanism']:<14}{r['wall_s']:>8.2f}{r['ideal_s']:>9.1f}"
            f"{r['wall_to_ideal']:>11.2f}x{r['calls_span_to_ideal']:>17.2f}x{r['before_first_call_s']:>14.2f}"
            f"{r['max_in_flight']:>15}"
        )


if __name__ == "__main__":
    main()
