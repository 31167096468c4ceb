"""A call interrupted once its request is on the wire (a Prefect task timeout, Ctrl-C) leaves a `lost` row at its
worst case, as the SDK's own timeout does: the provider did the work and may bill it. One interrupted before its
request went out leaves no row. Real SDK clients against the wire double, whose answers a test holds back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import anthropic_config, call_record, openai_config, write_config

from tierflow.core.budget import open_reservations
from tierflow.core.calls import Caller, RunSettings, caller_for
from tierflow.core.ledger import Ledger
from tierflow.testing.double import DoubleRequest, ProviderDouble

REPO = Path(__file__).resolve().parents[1]
GUARD_S = 300
"""A guard against a hung test, never a measure of speed."""


def vault_on(tmp_path: Path, double: ProviderDouble, extra: str = "") -> Path:
    """A vault whose config sends every tier to Anthropic models on the double, with no escalation."""
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", anthropic_config(double, "[routing]\nescalate = false\n" + extra))
    return vault


def held(double: ProviderDouble, when_received=lambda request: None) -> threading.Event:  # noqa: ANN001
    """Hold every answer of the double until the returned event is set; `when_received` runs first."""
    release = threading.Event()

    def hold(request: DoubleRequest) -> None:
        when_received(request)
        release.wait(timeout=GUARD_S)

    double.hold = hold
    return release


def test_a_prefect_task_timed_out_mid_call_leaves_a_lost_row_and_nothing_reserved(
    tmp_path, monkeypatch, double, prefect_harness
):
    from prefect import flow, task
    from prefect.task_engine import TaskRunTimeoutError

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    settings = RunSettings(vault=str(vault_on(tmp_path, double)), run_id="timed-out", flow="test", use_cache=False)

    def time_out_now(request: DoubleRequest) -> None:
        # Prefect times out a task running in the main thread with SIGALRM (its AlarmCancelScope). Raised once the
        # request has arrived, the timeout falls mid-call however slow the machine, as a short one would hope to.
        if signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            os.kill(os.getpid(), signal.SIGALRM)

    release = held(double, time_out_now)

    @task(timeout_seconds=GUARD_S)
    def ask(settings: RunSettings) -> str:
        return caller_for(settings).ask(phase="collate", complexity="low", system="Be brief.", prompt="Hello.").text

    @flow
    def asking(settings: RunSettings) -> str:
        return ask(settings)

    try:
        with pytest.raises(TaskRunTimeoutError):
            asking(settings)
    finally:
        release.set()
    ledger = caller_for(settings).ledger
    assert len(double.model_calls()) == 1
    (row,) = ledger.rows()
    assert row["outcome"] == "lost" and not row["usage_known"] and row["cost_usd"] > 0, row
    assert row["task_run_id"], "recorded inside the task run"
    assert open_reservations(ledger) == []


def test_ctrl_c_on_ask_mid_call_says_so_exits_130_and_leaves_a_lost_row(tmp_path, double):
    vault = vault_on(tmp_path, double)
    release = held(double)
    env = {**os.environ, "ANTHROPIC_API_KEY": "test-key"}
    ask = subprocess.Popen(
        [sys.executable, "-m", "tierflow.cli", "ask", "Hello.", "--tier", "light", "--vault", str(vault)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + GUARD_S
        while not double.model_calls():  # the request is at the provider: the call is in flight
            assert ask.poll() is None, ask.communicate()
            assert time.monotonic() < deadline, "the request never arrived"
            time.sleep(0.05)
        ask.send_signal(signal.SIGINT)
        out, err = ask.communicate(timeout=GUARD_S)
    finally:
        release.set()
        if ask.poll() is None:
            ask.kill()
            ask.wait()
    assert ask.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "recorded as lost" in lines[0], err
    assert "Traceback" not in err and out == ""
    ledger = Ledger.for_vault(vault)
    (row,) = ledger.rows()
    assert row["outcome"] == "lost" and row["flow"] == "ask" and row["cost_usd"] > 0, row
    assert f"${row['cost_usd']:.6f}" in lines[0]
    assert open_reservations(ledger) == []


def test_the_ask_interrupt_line_says_whether_the_call_was_sent(tmp_path):
    from tierflow.cli.runner import interrupted_ask_message

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert "before the call was sent" in interrupted_ask_message(ledger, "r")
    assert "before the call was sent" in interrupted_ask_message(None, "r")
    ledger.record(call_record(run_id="r", outcome="lost", cost_usd=0.25, attempt=1))  # an earlier attempt's
    ledger.record(call_record(run_id="r", outcome="malformed", attempt=1))
    assert "before the call was sent" in interrupted_ask_message(ledger, "r")
    for _ in range(2):  # the attempt in flight, sent twice (the SDK retried a timeout)
        ledger.record(call_record(run_id="r", outcome="lost", cost_usd=0.5, attempt=2))
    said = interrupted_ask_message(ledger, "r")
    assert "recorded as lost (2 attempts), at its worst case of $1.000000" in said, said


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_ctrl_c_mid_call_leaves_a_lost_row_on_either_sdk(tmp_path, monkeypatch, double, provider):
    monkeypatch.setenv(f"{provider.upper()}_API_KEY", "test-key")
    config = (anthropic_config if provider == "anthropic" else openai_config)(double, "[routing]\nescalate = false\n")
    write_config(tmp_path / "vault" / ".tierflow" / "config.toml", config)
    caller = Caller(RunSettings(vault=str(tmp_path / "vault"), run_id="ctrl-c", flow="test", use_cache=False))
    release = held(double, lambda request: os.kill(os.getpid(), signal.SIGINT))  # Ctrl-C once the request is in
    try:
        with pytest.raises(KeyboardInterrupt):
            caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Hello.")
    finally:
        release.set()
    assert len(double.model_calls()) == 1
    (row,) = caller.ledger.rows()
    assert row["outcome"] == "lost" and row["provider"] == provider and row["cost_usd"] > 0, row
    assert open_reservations(caller.ledger) == []


def test_a_call_interrupted_while_it_waits_for_its_budget_leaves_no_row(tmp_path, monkeypatch, double):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    caller = Caller(RunSettings(vault=str(vault_on(tmp_path, double)), run_id="waiting", flow="test", use_cache=False))
    routed, request = caller.build(phase="collate", complexity="low", system="Be brief.", prompt="Hello.")
    (worst,) = [e for r, e in caller.downgrades(routed, request) if r.tier == routed.tier]
    # Room for one call's worst case: held by another call in flight, so this one waits for it to settle.
    write_config(
        Path(caller.settings.vault) / ".tierflow" / "config.toml",
        anthropic_config(double, f"[routing]\nescalate = false\n[budgets.run]\nusd = {float(worst.usd) * 1.5}\n"),
    )
    caller = Caller(caller.settings)
    other = caller.reserve(routed, request, "the other call")[0]
    reserve_in = caller.budgets.reserve_in

    def ctrl_c_once_waiting(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        reservation = reserve_in(*args, **kw)
        if reservation is None:
            raise KeyboardInterrupt  # Ctrl-C while the call waits for room in its budget
        return reservation

    monkeypatch.setattr(caller.budgets, "reserve_in", ctrl_c_once_waiting)
    with pytest.raises(KeyboardInterrupt):
        caller.resolve(routed, request, output=None)
    assert double.model_calls() == [] and caller.ledger.rows() == []
    assert [r.id for r in open_reservations(caller.ledger)] == [other.id]
    caller.budgets.release(other.id)


def test_a_call_interrupted_in_the_sdk_before_its_request_goes_out_leaves_no_row(tmp_path, monkeypatch, double):
    """Past the reservation and inside the SDK, but before the HTTP request is handed to the network: the
    provider never saw it, so nothing was billed."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    caller = Caller(RunSettings(vault=str(vault_on(tmp_path, double)), run_id="unsent", flow="test", use_cache=False))
    client = caller.provider("anthropic").client

    def ctrl_c(request) -> None:  # noqa: ANN001
        raise KeyboardInterrupt

    client._client.event_hooks["request"].insert(0, ctrl_c)  # ahead of the hook that counts a request sent
    with pytest.raises(KeyboardInterrupt):
        caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Hello.")
    assert double.model_calls() == [] and caller.ledger.rows() == []
    assert open_reservations(caller.ledger) == []


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_an_interrupt_once_the_answer_arrived_whole_leaves_a_lost_row_on_either_sdk(
    tmp_path, monkeypatch, double, provider
):
    """Ctrl-C (or a Prefect timeout) landing after the answer's last byte arrived, while the SDK and tierflow
    read it: the provider billed it, so its row is there (`lost`, at its worst case), as one cut off mid-body."""
    monkeypatch.setenv(f"{provider.upper()}_API_KEY", "test-key")
    config = (anthropic_config if provider == "anthropic" else openai_config)(double, "[routing]\nescalate = false\n")
    write_config(tmp_path / "vault" / ".tierflow" / "config.toml", config)
    caller = Caller(RunSettings(vault=str(tmp_path / "vault"), run_id="read", flow="test", use_cache=False))
    adapter = caller.provider(provider)

    def ctrl_c_while_reading(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(adapter, "completion", ctrl_c_while_reading)
    with pytest.raises(KeyboardInterrupt):
        caller.ask(phase="collate", complexity="low", system="Be brief.", prompt="Hello.")
    assert len(double.model_calls()) == 1
    (row,) = caller.ledger.rows()
    assert row["outcome"] == "lost" and row["provider"] == provider and row["cost_usd"] > 0, row
    assert open_reservations(caller.ledger) == []
