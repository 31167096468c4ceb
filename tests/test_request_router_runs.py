"""One run, one router, however many processes route for it: the first process to route for a run pins the model
it used (by its checksum, beside the model), and every later process of that run routes with that same model,
though a refit saved a newer one in between. Old models are kept by checksum for the runs that may need them, up to
a bound. Through the real Anthropic SDK on the wire double, with a real SQLite ledger and real processes."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
from pathlib import Path

import pytest
from conftest import anthropic_config, write_config
from test_request_router import REQUEST_MODE, _observed, ask, easy, hard, light_fails_hard

from tierflow.core.calls import Caller, RunSettings
from tierflow.core.config import load_config
from tierflow.core.ledger import Ledger
from tierflow.learn import request_router
from tierflow.learn.request_router import fit


@pytest.fixture(autouse=True)
def _fresh_router():
    request_router.forget()
    yield
    request_router.forget()


def caller(vault: Path, config: Path, run_id: str) -> Caller:
    return Caller(RunSettings(vault=str(vault), config_path=str(config), run_id=run_id, flow="reading-notes"))


def _route_in_another_process(vault: str, config: str, run_ids: list[str], results) -> None:  # noqa: ANN001
    """A second process of the run (a batch resumed elsewhere, a worker): the rule each run's request is given."""
    try:
        rules = [caller(Path(vault), Path(config), r).route("collate", "low", prompt=hard(900)).rule for r in run_ids]
        results.put(rules)
    except BaseException as exc:  # the parent reads what went wrong
        results.put(repr(exc))


@pytest.mark.slow
def test_a_second_process_of_a_run_routes_with_the_model_the_first_one_used(tmp_path, monkeypatch, double):
    """A batch routed its first requests with the router fitted on 40 requests; a refit over 60 landed; the batch,
    resumed in another process, routed the rest with the new router: one cohort, two models."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = light_fails_hard
    vault = tmp_path / "vault"
    vault.mkdir()
    rules = write_config(vault / ".tierflow" / "rules.toml", anthropic_config(double, '[routing]\nmode = "rules"\n'))
    per_request = write_config(vault / ".tierflow" / "config.toml", anthropic_config(double, REQUEST_MODE))
    history = caller(vault, rules, "history")
    for i in range(20):
        ask(history, easy(i))
        ask(history, hard(i))
    request_router.refit(history.config, history.ledger)

    first = caller(vault, per_request, "batch-7")
    pinned = first.route("collate", "low", prompt=hard(900)).rule
    assert "over 40 requests" in pinned

    for i in range(20, 30):  # more answers, and a refit, while the batch waits
        ask(history, easy(i))
        ask(history, hard(i))
    request_router.refit(history.config, history.ledger)
    assert "over 40 requests" in first.route("collate", "low", prompt=hard(900)).rule  # this process: as before

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(
        target=_route_in_another_process, args=(str(vault), str(per_request), ["batch-7", "batch-8"], results)
    )
    child.start()
    found = results.get(timeout=300)
    child.join(timeout=60)
    assert isinstance(found, list), found
    resumed, fresh = found
    assert resumed == pinned  # the same model, so the same rule, word for word
    assert "over 60 requests" in fresh  # a run that starts now is given the newest


def test_independent_loaders_of_one_run_use_one_model_across_a_refit(tmp_path, monkeypatch):
    """Two loaders that share nothing but the vault (this process before and after `forget`, as two processes
    would): the run keeps the model it was first routed with, the cold start included, and a new run is given the
    newest."""
    vault = tmp_path / "vault"
    config = load_config(vault, config_path=write_config(vault / ".tierflow" / "config.toml", REQUEST_MODE))
    ledger = Ledger(config.ledger_url)
    path = request_router.model_path(config)
    monkeypatch.setattr(request_router, "CHECK_EVERY_S", 0.0)  # every call looks at the file
    assert request_router.current(config, ledger, run_id="cold") is None  # routed before any model was saved
    newer = fit(_observed(120), ["light", "deep"])
    older = dataclasses.replace(newer, answers=newer.answers - 1, fitted_at="2020-01-01T00:00:00+00:00")
    request_router.save(older, path)
    assert request_router.current(config, ledger, run_id="a").fitted_at == older.fitted_at
    request_router.save(newer, path)  # a refit lands
    request_router.forget()  # another process
    assert request_router.current(config, ledger, run_id="a").fitted_at == older.fitted_at
    assert request_router.current(config, ledger, run_id="cold") is None
    assert request_router.current(config, ledger, run_id="b").fitted_at == newer.fitted_at
    assert request_router.current(config, ledger).fitted_at == newer.fitted_at  # `routing explain`: the newest


def test_old_models_are_kept_for_their_runs_up_to_a_bound(tmp_path, monkeypatch, caplog):
    """Each refit's model stays on disk by its checksum while runs pinned to it are remembered, at most
    `MODELS_KEPT` models and `RUNS_PINNED` runs; a run whose model is gone is routed with the newest, and a
    warning says so."""
    vault = tmp_path / "vault"
    config = load_config(vault, config_path=write_config(vault / ".tierflow" / "config.toml", REQUEST_MODE))
    ledger = Ledger(config.ledger_url)
    path = request_router.model_path(config)
    monkeypatch.setattr(request_router, "CHECK_EVERY_S", 0.0)
    monkeypatch.setattr(request_router, "MODELS_KEPT", 3)
    monkeypatch.setattr(request_router, "RUNS_PINNED", 4)
    base = fit(_observed(120), ["light", "deep"])
    models = [dataclasses.replace(base, answers=base.answers + k, fitted_at=f"2020-01-0{k + 1}") for k in range(6)]
    for k, model in enumerate(models):  # each run's first process routes after the refit before it
        request_router.save(model, path)
        request_router.forget()
        assert request_router.current(config, ledger, run_id=f"run-{k}").fitted_at == model.fitted_at
    assert len(list(request_router.kept_models(path).iterdir())) == 3
    assert len(list(request_router.pinned_runs(path).iterdir())) == 4
    newest = request_router.kept_models(path) / f"{request_router.checksum(models[5])}.model"
    assert newest.stat().st_ino == path.stat().st_ino  # still the model file: kept as a link, not a second copy
    request_router.forget()  # another process resumes the runs
    assert request_router.current(config, ledger, run_id="run-3").fitted_at == models[3].fitted_at
    with caplog.at_level(logging.WARNING, logger=request_router.__name__):
        assert request_router.current(config, ledger, run_id="run-0").fitted_at == models[5].fitted_at
    assert not caplog.records  # run-0's pin itself is forgotten: it starts afresh, with the newest
    request_router.forget()
    (request_router.kept_models(path) / f"{request_router.checksum(models[4])}.model").unlink()
    with caplog.at_level(logging.WARNING, logger=request_router.__name__):
        assert request_router.current(config, ledger, run_id="run-4").fitted_at == models[5].fitted_at
    assert any("run-4" in r.getMessage() and "no longer kept" in r.getMessage() for r in caplog.records)
