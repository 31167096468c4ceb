"""The per-request router's saved model (`.tierflow/router.model`): a file that cannot run code, written whole by
any number of processes at once, refused with a warning when damaged, and picked up by a running process once
another one saved a newer model."""

from __future__ import annotations

import ast
import dataclasses
import logging
import multiprocessing
import os
import pickle
import random
import shlex
from pathlib import Path

import numpy as np
import pytest
from conftest import write_config
from test_request_router import DEEP, LIGHT, REQUEST_MODE, _app, _observed, ask, caller, light_fails_hard
from typer.testing import CliRunner

from tierflow.core.calls import Caller
from tierflow.core.config import load_config
from tierflow.core.ledger import Ledger
from tierflow.learn import request_router
from tierflow.learn.request_router import RequestRouter, decide, fit

TEXTS = ["item 5 word5", "something else entirely", "word3 word3 word3 topic7", ""]


@pytest.fixture(autouse=True)
def _fresh_router():
    request_router.forget()
    yield
    request_router.forget()


@pytest.fixture(scope="module")
def fitted() -> RequestRouter:
    """A router fitted on a sampled history of light and deep (calibrated models, a `difference` gain); tests
    change copies of it only."""
    return fit(_observed(300), ["light", "deep"])


class _RunsCode:
    """A pickle that runs a shell command when it is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _probabilities(router: RequestRouter) -> list[list[float]]:
    X = router.rows("f", "p1", "low", TEXTS)
    found = [router.pass_probability(m, X).tolist() for m in router.models]
    found += [router.suffices(a, b, X).tolist() for a, b in router.gains]
    return found


def _request_mode_vault(tmp_path: Path, monkeypatch, double) -> tuple[Path, Caller]:  # noqa: ANN001
    """A vault in request mode on the double (light fails the dense annotations), with its model's folder made."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = light_fails_hard
    vault = tmp_path / "vault"
    vault.mkdir()
    c = caller(vault, double, REQUEST_MODE)
    request_router.model_path(c.config).parent.mkdir(parents=True, exist_ok=True)
    return vault, c


def test_a_pickle_in_the_vault_runs_nothing_on_a_call_or_on_explain(tmp_path, monkeypatch, double, caplog):
    """A vault shared with others held `router.pkl`, unpickled on the next call in request mode and by
    `tierflow routing explain`: whoever could write to the vault could run code as whoever routed a call."""
    vault, c = _request_mode_vault(tmp_path, monkeypatch, double)
    marker = tmp_path / "ran"
    model = request_router.model_path(c.config)
    for planted in (model.with_name("router.pkl"), model):
        planted.write_bytes(pickle.dumps(_RunsCode(marker)))
        request_router.forget()
        with caplog.at_level(logging.WARNING, logger=request_router.__name__):
            answer = ask(c, f"Highlight 1: light leaf water ({planted.name}).")
        assert not marker.exists(), f"loading {planted.name} ran code"
        assert answer.outcome == "ok" and answer.route.rule.startswith("request: cold start")
        assert any("tierflow routing fit" in r.getMessage() and planted.name in r.getMessage() for r in caplog.records)
        caplog.clear()
        model.unlink(missing_ok=True)
    model.write_bytes(pickle.dumps(_RunsCode(marker)))
    request_router.forget()
    explained = CliRunner().invoke(_app(), ["routing", "explain", answer.request_id[:16], "--vault", str(vault)])
    assert explained.exit_code == 0, explained.output
    assert not marker.exists()
    # The module that reads the file has no way to unpickle.
    source = Path(request_router.__file__).read_text(encoding="utf-8")
    imported = {a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names}
    assert "pickle" not in imported and "joblib" not in imported


def test_an_old_pickle_is_named_once_and_routing_fit_removes_it(tmp_path, monkeypatch, double, caplog):
    """A `router.pkl` from before `router.model` stayed in the vault for good, and with it the hazard (a synced
    vault carries it to every machine, where an older tierflow would unpickle it); every process that loaded the
    router warned again, and the warning told the person to delete it by hand. A process now says once what to
    do, and `tierflow routing fit` (as every refit) removes it and says so."""
    vault, c = _request_mode_vault(tmp_path, monkeypatch, double)
    marker = tmp_path / "ran"
    legacy = request_router.model_path(c.config).with_name("router.pkl")
    legacy.write_bytes(pickle.dumps(_RunsCode(marker)))
    with caplog.at_level(logging.WARNING, logger=request_router.__name__):
        for i in range(3):  # each load of the router, as each run of a long-lived worker would
            request_router.forget()
            assert ask(c, f"Highlight {i}: light leaf water.").route.rule.startswith("request: cold start")
    said = [r.getMessage() for r in caplog.records if "router.pkl" in r.getMessage()]
    assert len(said) == 1, said
    assert str(legacy) in said[0] and "tierflow routing fit" in said[0] and "removes it" in said[0]
    assert legacy.exists()  # a call only reads: it leaves the vault's files alone

    fitted = CliRunner().invoke(_app(), ["routing", "fit", "--vault", str(vault)])
    assert fitted.exit_code == 0, fitted.output
    assert not legacy.exists() and request_router.model_path(c.config).exists()
    assert f"Removed {legacy}" in fitted.stderr
    assert not marker.exists()
    again = CliRunner().invoke(_app(), ["routing", "fit", "--vault", str(vault)])
    assert again.exit_code == 0 and "Removed" not in again.stderr


@pytest.mark.parametrize("escalations_only", [False, True])
def test_a_saved_router_decides_exactly_as_before_saving(tmp_path, fitted, escalations_only):
    config = load_config(config_path=write_config(tmp_path / "c.toml", "[routing]\nmin_requests = 5\n"))
    router = fit(_observed(300, escalations_only=True), ["light", "deep"]) if escalations_only else fitted
    router = dataclasses.replace(router, labels={"judge": 3, "overturned": 1})
    path = tmp_path / request_router.MODEL_FILE
    request_router.save(router, path)
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle
    loaded = request_router.load(path)
    assert loaded is not None
    # Every field comes back (a field added to the model and not to the file fails here).
    for f in dataclasses.fields(RequestRouter):
        mine, theirs = getattr(router, f.name), getattr(loaded, f.name)
        if isinstance(mine, np.ndarray):
            assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs), f.name
        elif f.name not in ("models", "gains"):
            assert mine == theirs, f.name
    for name in ("models", "gains"):
        mine, theirs = getattr(router, name), getattr(loaded, name)
        assert list(mine) == list(theirs)
        for key, m in mine.items():
            t = theirs[key]
            for f in dataclasses.fields(m):
                if f.name == "members":
                    assert (m.members is None) == (t.members is None)
                    for a, b in zip(m.members or [], t.members or [], strict=True):
                        assert a[0].dtype == b[0].dtype and np.array_equal(a[0], b[0]) and a[1:] == b[1:]
                elif f.name != "fitted":
                    assert getattr(m, f.name) == getattr(t, f.name), (key, f.name)
    assert _probabilities(loaded) == _probabilities(router)  # exactly, not nearly
    for text in TEXTS:
        for value in (0.5, 1, 5):
            kw = {"flow": "f", "phase": "p1", "complexity": "low", "text": text, "value": value}
            assert decide(config, loaded, **kw) == decide(config, router, **kw)


def _save_and_load(seed: str, target: str, rounds: int, start, results) -> None:  # noqa: ANN001
    """One process of the race: save the model and read it back, `rounds` times."""
    problems: list[str] = []
    router = request_router.load(Path(seed))
    expected = _probabilities(router)
    start.wait()
    for _ in range(rounds):
        try:
            request_router.save(router, Path(target))
        except Exception as exc:
            problems.append(f"save: {exc!r}")
        try:
            found = request_router.load(Path(target))
            if found is None or _probabilities(found) != expected:
                problems.append("load: not the whole model")
        except Exception as exc:
            problems.append(f"load: {exc!r}")
    results.put(problems)


@pytest.mark.slow
def test_processes_saving_and_loading_at_once_always_read_a_whole_model(tmp_path, fitted):
    """`save` wrote every model through one `router.tmp`: three processes saving at once failed to rename a file
    another had already moved, or left one that did not load."""
    router = fitted
    seed = tmp_path / "seed" / request_router.MODEL_FILE
    request_router.save(router, seed)
    target = tmp_path / "vault" / ".tierflow" / request_router.MODEL_FILE
    request_router.save(router, target)
    context = multiprocessing.get_context("spawn")
    workers = 3
    start, results = context.Barrier(workers), context.Queue()
    processes = [
        context.Process(target=_save_and_load, args=(str(seed), str(target), 40, start, results))
        for _ in range(workers)
    ]
    for p in processes:
        p.start()
    found = [results.get(timeout=300) for _ in processes]
    for p in processes:
        p.join(timeout=60)
    assert found == [[]] * workers
    assert [p.exitcode for p in processes] == [0] * workers
    assert os.listdir(target.parent) == [target.name]  # no temporary file left behind


def test_a_damaged_model_file_loads_as_none_with_a_warning(tmp_path, fitted, caplog):
    """Byte flips in the saved model raised UnicodeDecodeError, ValueError or MemoryError out of `load`, or loaded
    a router whose `decide` raised IndexError."""
    config = load_config(config_path=write_config(tmp_path / "c.toml", "[routing]\nmin_requests = 5\n"))
    router = fitted
    path = tmp_path / request_router.MODEL_FILE
    request_router.save(router, path)
    good = path.read_bytes()
    rnd = random.Random(1)
    damaged = [
        good[:k] for k in sorted({0, 1, 10, 100, len(good) // 2, len(good) - 1} | set(rnd.sample(range(len(good)), 40)))
    ]
    damaged += [b"hello\n", b'{"a": 1}', b"<<<<<<< HEAD\n" + good[:100], b"\0" * 4096, good + b"\n"]
    for _ in range(400):
        flipped = bytearray(good)
        for _ in range(rnd.randint(1, 4)):
            at = rnd.randrange(len(flipped))
            flipped[at] = (flipped[at] + rnd.randrange(1, 256)) % 256
        damaged.append(bytes(flipped))
    for data in damaged:
        path.write_bytes(data)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=request_router.__name__):
            loaded = request_router.load(path)
        if loaded is not None:  # only a flip the checks cannot see may load, and it must still decide
            decide(config, loaded, flow="f", phase="p1", complexity="low", text="item 5 word5")
            continue
        messages = [r.getMessage() for r in caplog.records]
        assert any(str(path) in m and "tierflow routing fit" in m for m in messages), messages
    assert request_router.load(tmp_path / "absent") is None


def _tampered(router: RequestRouter, how: str) -> RequestRouter:
    """A well-formed file of a model that cannot be scored: what a bug or another program could write."""
    changed = dataclasses.replace(router, models=dict(router.models), gains=dict(router.gains))
    light = router.models[LIGHT]
    if how == "columns beyond the features":
        changed.support = router.support + np.int32(2**30)
    elif how == "columns out of order":
        changed.support = router.support[::-1].copy()
    elif how == "coefficients of another length":
        values, *rest = light.members[0]
        changed.models[LIGHT] = dataclasses.replace(light, members=[(values[:-1], *rest)])
    elif how == "a gain over an unknown model":
        changed.gains[(LIGHT, "nowhere")] = next(iter(router.gains.values()))
    elif how == "a model filed under another name":
        changed.models[DEEP] = light
    elif how == "a rate above 1":
        changed.models[LIGHT] = dataclasses.replace(light, pass_rate=1.5)
    elif how == "an intercept that is not a number":
        values, _, a, b = light.members[0]
        changed.models[LIGHT] = dataclasses.replace(light, members=[(values, float("nan"), a, b)])
    elif how == "another format":
        changed.format = router.format + 1
    return changed


@pytest.mark.parametrize(
    "how",
    [
        "columns beyond the features",
        "columns out of order",
        "coefficients of another length",
        "a gain over an unknown model",
        "a model filed under another name",
        "a rate above 1",
        "an intercept that is not a number",
        "another format",
    ],
)
def test_a_model_that_cannot_be_scored_is_refused_on_load(tmp_path, fitted, caplog, how):
    router = fitted
    path = tmp_path / request_router.MODEL_FILE
    request_router.save(_tampered(router, how), path)
    with caplog.at_level(logging.WARNING, logger=request_router.__name__):
        assert request_router.load(path) is None
    assert any(str(path) in r.getMessage() and "tierflow routing fit" in r.getMessage() for r in caplog.records)


def test_a_call_with_a_damaged_model_routes_by_the_rules(tmp_path, monkeypatch, double, fitted):
    """A loaded model whose columns lie beyond the features failed the call (IndexError in `decide`)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = light_fails_hard
    vault = tmp_path / "vault"
    vault.mkdir()
    c = caller(vault, double, REQUEST_MODE)
    request_router.save(_tampered(fitted, "columns beyond the features"), request_router.model_path(c.config))
    answer = ask(c, "Highlight 1: light leaf water.")
    assert answer.outcome == "ok" and answer.route.rule.startswith("request: cold start, rules")


def test_a_running_process_picks_up_a_model_saved_later(tmp_path, monkeypatch, fitted):
    """`current` loaded the model once per process: a `tierflow routing fit` run elsewhere was never seen."""
    vault = tmp_path / "vault"
    config = load_config(vault, config_path=write_config(vault / ".tierflow" / "config.toml", REQUEST_MODE))
    ledger = Ledger(config.ledger_url)
    path = request_router.model_path(config)
    monkeypatch.setattr(request_router, "CHECK_EVERY_S", 0.0)  # look at the file on every call
    older = dataclasses.replace(fitted, answers=fitted.answers - 1, fitted_at="2020-01-01T00:00:00+00:00")
    request_router.save(older, path)
    assert request_router.current(config, ledger).answers == older.answers
    newer = fitted
    request_router.save(newer, path)  # as another process would
    held = request_router.current(config, ledger)
    assert held.answers == newer.answers and _probabilities(held) == _probabilities(newer)
    assert request_router.current(config, ledger) is held  # unchanged file: not read again
