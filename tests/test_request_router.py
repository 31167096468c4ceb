"""Per-request routing (`[routing] mode = "request"`), request values and value priority in shared budgets, and
fairness in feedback routing: through the real Anthropic SDK on the wire double, with a real SQLite ledger."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
from conftest import anthropic_config, write_config
from pydantic import BaseModel
from typer.testing import CliRunner

from tierflow.core.calls import Caller, RunSettings
from tierflow.core.checks import Check
from tierflow.core.config import load_config
from tierflow.core.ledger import CallRecord, Ledger
from tierflow.core.routing import target_for, value_of
from tierflow.core.usage import Usage
from tierflow.learn import request_router
from tierflow.learn.request_router import Observation, decide, fit
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply

EASY_WORDS = ["photosynthesis", "light", "leaf", "water", "sugar", "plant", "energy", "green", "cell", "sun"]
HARD_WORDS = ["Verdichtung", "Annotation", "Quellenkritik", "Hermeneutik", "Diskursanalyse", "Epistemologie", "Kontext"]


class Out(BaseModel):
    ok: bool


CHECK = Check("grounded", lambda out: [] if out.ok else ["the answer is not grounded"])


def easy(i: int) -> str:
    rnd = random.Random(i)
    return f"Highlight {i}: " + " ".join(rnd.choice(EASY_WORDS) for _ in range(8)) + "."


def hard(i: int) -> str:
    rnd = random.Random(1000 + i)
    lines = [f"- Quelle {k}: " + " ".join(rnd.choice(HARD_WORDS) for _ in range(12)) for k in range(6)]
    return f"Annotation {i}, dicht und lang:\n" + "\n".join(lines)


def light_fails_hard(r: DoubleRequest) -> Reply:
    """The light model cannot ground the dense annotations; every dearer model can."""
    return Reply(data={"ok": not (r.model == "claude-haiku-4-5" and "Annotation" in r.text)})


def caller(vault: Path, double: ProviderDouble, routing: str, *, flow: str = "reading-notes") -> Caller:
    path = write_config(vault / ".tierflow" / "config.toml", anthropic_config(double, routing))
    return Caller(RunSettings(vault=str(vault), config_path=str(path), run_id=f"run-{routing[:20]}", flow=flow))


def ask(c: Caller, prompt: str, **kw):
    return c.ask(phase="collate", complexity="low", system="Collate.", prompt=prompt, output=Out, checks=[CHECK], **kw)


REQUEST_MODE = '[routing]\nmode = "request"\nmin_requests = 20\nmin_evidence = 1000\n'
OFFLINE = {t: f"offline:extractive-{t}" for t in ("light", "standard", "deep")}
"""The models the built-in (offline) profile puts each tier on: whose answers an observation records."""
ANTHROPIC = {
    "light": "anthropic:claude-haiku-4-5",
    "standard": "anthropic:claude-sonnet-4-6",
    "deep": "anthropic:claude-opus-4-6",
}
"""The models `anthropic_config` puts each tier on."""


@pytest.fixture(autouse=True)
def _fresh_router():
    request_router.forget()
    yield
    request_router.forget()


def test_two_requests_of_one_phase_go_to_different_tiers_once_there_is_evidence(tmp_path, monkeypatch, double):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = light_fails_hard
    vault = tmp_path / "vault"
    vault.mkdir()

    # No evidence: the rules decide (collate is `low` -> light), and the rule says so.
    cold = caller(vault, double, REQUEST_MODE)
    first = ask(cold, easy(-1))
    assert first.route.tier == "light"
    assert first.route.rule.startswith("request: cold start, rules; routing.low")
    assert cold.route("collate", "low", prompt=hard(-1)).tier == "light"  # the rules cannot tell them apart

    # History: the cascade on the rules' tier; hard requests fail on light and escalate to standard.
    history = caller(vault, double, '[routing]\nmode = "rules"\n')
    for i in range(40):
        ask(history, easy(i))
        ask(history, hard(i))
    rows = history.ledger.rows(run_id=history.settings.run_id)
    assert {(r["tier"], r["outcome"]) for r in rows} == {("light", "ok"), ("light", "check_failed"), ("standard", "ok")}

    fitted = CliRunner().invoke(_app(), ["routing", "fit", "--vault", str(vault), "--format", "json"])
    assert fitted.exit_code == 0, fitted.output
    learned = json.loads(fitted.stdout)
    assert learned["tiers"]["light"]["first_answers"] == 81 and learned["tiers"]["standard"]["first_answers"] == 40

    request_router.forget()
    warm = run_caller(vault, double, REQUEST_MODE, flow="reading-notes", run="warm")  # a new run: the newest model
    to_easy, to_hard = warm.route("collate", "low", prompt=easy(500)), warm.route("collate", "low", prompt=hard(500))
    assert (to_easy.tier, to_hard.tier) == ("light", "standard")
    assert to_easy.rule.startswith("request: P(light)=") and "≥ 0.90 (value 1)" in to_easy.rule
    assert to_hard.rule.startswith("request: P(standard)=") and "over 81 requests" in to_hard.rule
    answer = ask(warm, hard(501))
    assert answer.route.tier == "standard" and answer.outcome == "ok"  # no failed light attempt first

    # `explain` shows the rule its answer was given and what the router says now.
    with warm.ledger.reading() as conn:
        request_id = conn.exec_driver_sql("SELECT request_id FROM calls ORDER BY id DESC LIMIT 1").scalar()
    explained = CliRunner().invoke(
        _app(), ["routing", "explain", request_id[:16], "--vault", str(vault), "--format", "json"]
    )
    assert explained.exit_code == 0, explained.output
    why = json.loads(explained.stdout)
    assert why["now"]["tier"] == "standard" and why["answers"][0]["route_rule"].startswith("request: P(standard)=")


def test_every_attempt_records_its_request_once_under_one_id(tmp_path, monkeypatch, double):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = light_fails_hard
    vault = tmp_path / "vault"
    vault.mkdir()
    c = caller(vault, double, "")
    ask(c, hard(7))
    rows = c.ledger.rows()
    assert [(r["tier"], r["attempt"]) for r in rows] == [("light", 1), ("light", 2), ("standard", 3)]
    with c.ledger.reading() as conn:
        ids = [r[0] for r in conn.exec_driver_sql("SELECT request_id FROM calls ORDER BY id")]
        texts = [r[0] for r in conn.exec_driver_sql("SELECT text FROM request_texts")]
    assert len(set(ids)) == 1 and ids[0] and texts == [hard(7)]  # the retry's note is not part of the request
    observed = request_router.observations(c.ledger)
    assert [(o.tier, o.passed) for o in observed] == [("light", False), ("standard", True)]


def test_value_raises_the_quality_target(tmp_path):
    assert [round(target_for(0.9, v), 3) for v in (0.5, 1, 2, 5)] == [0.8, 0.9, 0.95, 0.98]
    path = write_config(
        tmp_path / "c.toml",
        '[routing]\nvalue = 2\n[routing.value_by]\ndraft = 5\n"reading-notes.collate" = 0.5\n',
    )
    config = load_config(config_path=path)
    assert value_of(config, flow="reading-notes", phase="synthesise") == 2  # the project's
    assert value_of(config, flow="reading-notes", phase="collate") == 0.5  # flow.phase
    assert value_of(config, flow="student-feedback", phase="draft") == 5  # the phase's
    assert value_of(config, flow="x", phase="draft", front_matter={"tierflow_value": 0.5}) == 0.5  # the note's
    assert value_of(config, flow="x", phase="y", front_matter={"tierflow_value": 50}) == 5  # clamped


def test_a_higher_value_sends_the_same_request_to_a_dearer_tier(tmp_path):
    config = load_config(config_path=write_config(tmp_path / "c.toml", "[routing]\nmin_requests = 5\n"))
    observed = [
        Observation(
            f"r{i}",
            "f",
            "p",
            "low",
            "light",
            OFFLINE["light"],
            f"note {i} " + ("alpha" if i % 4 else "beta"),
            bool(i % 4 and i % 10 != 3),
            "",
        )
        for i in range(200)
    ] + [
        Observation(f"r{i}", "f", "p", "low", "standard", OFFLINE["standard"], f"note {i}", True, "")
        for i in range(200)
    ]
    router = fit(observed, ["light", "standard", "deep"])
    low = decide(config, router, flow="f", phase="p", complexity="low", text="note 9 alpha", value=0.5)
    high = decide(config, router, flow="f", phase="p", complexity="low", text="note 9 alpha", value=5)
    assert 0.8 <= low.probabilities["light"] < 0.98
    assert (low.tier, high.tier) == ("light", "standard") and "(value 5)" in high.rule


def test_feedback_routing_never_depends_on_who_the_student_is(tmp_path):
    """Two submissions differing only in the student's name are routed alike in the feedback flow, even by a
    router whose history links a name to failures; in another flow the same history would tell them apart."""
    config = load_config(config_path=write_config(tmp_path / "c.toml", "[routing]\nmin_requests = 5\n"))
    texts = {name: f"Essay by {name}: the argument is clear and well sourced." for name in ("Aisha", "Bob")}

    def history(flow: str) -> list[Observation]:
        out = []
        for i in range(120):
            name = "Aisha" if i % 2 else "Bob"
            for tier, passed in (("light", name == "Bob"), ("standard", True)):
                out.append(
                    Observation(f"{flow}{i}", flow, "draft", "medium", tier, OFFLINE[tier], texts[name], passed, "")
                )
        return out

    for flow, alike in (("student-feedback", True), ("other", False)):
        router = fit(history(flow), ["light", "standard", "deep"])
        routed = [decide(config, router, flow=flow, phase="draft", complexity="medium", text=texts[n]) for n in texts]
        assert (routed[0].tier == routed[1].tier and routed[0].probabilities == routed[1].probabilities) is alike


def test_a_shared_budget_near_its_cap_downgrades_low_value_work_and_keeps_high_value_on_its_tier(
    tmp_path, monkeypatch, double
):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    vault = tmp_path / "vault"
    vault.mkdir()
    cap = 100_000
    pool = f'[budgets.deep-pool]\ntokens = {cap}\ntier = "deep"\nperiod = "month"\npolicy = "downgrade"\n'
    c = caller(vault, double, pool)
    # Earlier runs have used 82% of the shared deep pool.
    c.ledger.record(
        CallRecord(
            run_id="earlier", flow="reading-notes", phase="synthesise", complexity="high", tier="deep",
            provider="anthropic", model="claude-opus-4-6", usage=Usage(input_tokens=int(0.82 * cap)),
            cost_usd=0.0, latency_ms=1.0,
        )
    )  # fmt: skip

    def synthesise(value: float):
        return c.ask(
            phase="synthesise", complexity="high", system="Synthesise.", prompt="Weigh the week's sources.",
            front_matter={"tierflow_value": value}, note="Week 3",
        )  # fmt: skip

    routine = synthesise(0.5)
    assert routine.route.tier == "standard"  # above 80% of the cap, value-0.5 work yields first
    critical = [synthesise(5) for _ in range(4)]
    assert critical[0].route.tier == "deep"  # value-5 work keeps its tier in the reserved share
    deep_tokens = sum(r["input_tokens"] + r["output_tokens"] for r in c.ledger.rows() if r["tier"] == "deep")
    assert deep_tokens <= cap  # never overshoots
    rows = c.ledger.rows(run_id=c.settings.run_id)
    assert [r["downgraded_from"] for r in rows][0] == "deep"
    # `tierflow spend --by value`: spend per value class (the earlier row predates values: the default, 1).
    from tierflow.report.spend import spend_by

    assert {s.key: s.calls for s in spend_by(c.ledger.rows(), "value")} == {"value 0.5": 1, "value 1": 1, "value 5": 4}


def _app():
    from tierflow.cli.app import app

    return app


LIGHT, DEEP = OFFLINE["light"], OFFLINE["deep"]


def _observed(n: int, *, escalations_only: bool = False) -> list[Observation]:
    """First answers on light and deep to `n` requests: both tiers for every request, or deep only where light
    failed (escalations)."""
    rows = []
    for i in range(n):
        text = f"item {i} " + f"word{i % 17} " * (i % 5 + 1) + f"topic{i % 41} detail{i % 29}"
        light = i % 3 > 0
        rows.append(Observation(f"r{i}", "f", f"p{i % 3}", "low", "light", LIGHT, text, light, ""))
        if not (escalations_only and light):
            rows.append(Observation(f"r{i}", "f", f"p{i % 3}", "low", "deep", DEEP, text, i % 7 > 0, ""))
    return rows


def test_router_scores_as_its_fitted_models_predict(tmp_path):
    """The direct scoring path (stored coefficients and sigmoids) gives the fitted models' own probabilities,
    calibrated or not, and survives a save and load; with a sampled history of both tiers the raw gain is the
    difference of their pass probabilities, with escalations alone the rescue model's."""
    import numpy as np

    texts = ["item 5 word5", "something else", "word3 word3 word3"]
    for escalations_only in (False, True):
        router = fit(_observed(300, escalations_only=escalations_only), ["light", "deep"])
        path = tmp_path / request_router.MODEL_FILE
        request_router.save(router, path)
        loaded = request_router.load(path)
        X = router.rows("f", "p1", "low", texts)
        models = [*router.models.values(), *router.gains.values()]
        assert any(m.calibrated for m in models)
        gain = router.gains[(LIGHT, DEEP)]
        assert gain.kind == ("rescue" if escalations_only else "difference")
        for r in (router, loaded):
            for model in (LIGHT, DEEP):
                expected = router.models[model].fitted.predict_proba(X)[:, 1]
                assert np.allclose(r.pass_probability(model, X), expected, atol=1e-6)
            light, deep = (router.models[m].fitted.predict_proba(X)[:, 1] for m in (LIGHT, DEEP))
            if escalations_only:
                expected = (1 - light) * gain.fitted.predict_proba(X)[:, 1]
            else:
                expected = np.maximum(deep - light, 0)
            assert np.allclose(r.gain_score(LIGHT, DEEP, X), expected, atol=request_router.GAIN_SMOOTHING)
            # The probability is the raw gain through the pair's calibration on held-out answers.
            assert r.gains[(LIGHT, DEEP)].calibration is not None
            assert np.all((r.gain_probability(LIGHT, DEEP, X) >= 0) & (r.gain_probability(LIGHT, DEEP, X) <= 1))
            assert np.allclose(r.suffices(LIGHT, DEEP, X), 1 - r.gain_probability(LIGHT, DEEP, X))


def test_saved_router_stores_only_the_features_its_requests_have(tmp_path):
    """The saved model holds coefficients for the feature columns its requests use, not the whole hashed space:
    its size is bounded by those columns times the stored models, whatever the hash space."""
    router = fit(_observed(300), ["light", "deep"])
    path = tmp_path / request_router.MODEL_FILE
    request_router.save(router, path)
    members = sum(len(m.members or []) for m in [*router.models.values(), *router.gains.values()])
    used = len(router.support)
    width = router.rows("f", "p", "low", ["x"]).shape[1]
    assert members >= 2 and 0 < used < width / 20
    # 4 bytes per column index and per coefficient of each member (float32), and a little for the rest.
    assert path.stat().st_size <= 4 * used * (1 + members) + 20_000
    assert request_router.load(path).support.tolist() == router.support.tolist()


def feedback_light_fails(r: DoubleRequest) -> Reply:
    """Light fails 60% of feedback drafts (by the student's number); every other answer passes."""
    if "Feedback draft for student" in r.text and r.model == "claude-haiku-4-5":
        return Reply(data={"ok": int(r.text.split("student s")[1].split()[0]) % 5 < 2})
    return Reply(data={"ok": True})


def run_caller(vault: Path, double: ProviderDouble, routing: str, *, flow: str, run: str) -> Caller:
    path = write_config(vault / ".tierflow" / "config.toml", anthropic_config(double, routing))
    return Caller(RunSettings(vault=str(vault), config_path=str(path), run_id=run, flow=flow))


def test_one_feedback_run_routes_every_student_by_one_rule_though_a_refit_lands_midway(tmp_path, monkeypatch, double):
    """A router fitted on reading notes only knows no tier for student feedback: the rules route every student,
    and the rule says why. A refit due halfway through the cohort (checked at every call here) is fitted in the
    background and is taken up by the next run, never by the students still to come in this one."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setattr(request_router, "CHECK_EVERY_S", 0.0)
    double.responder = feedback_light_fails
    vault = tmp_path / "vault"
    vault.mkdir()
    history = run_caller(vault, double, '[routing]\nmode = "rules"\n', flow="reading-notes", run="history")
    for i in range(25):  # light answers (and passes) every collate request, standard every draft, deep synthesis
        for phase, complexity in (("collate", "low"), ("draft", "medium"), ("synthesise", "high")):
            history.ask(phase=phase, complexity=complexity, system="S.", prompt=easy(i), output=Out, checks=[CHECK])
    fitted = request_router.refit(history.config, history.ledger)
    request_router.forget()
    light = fitted.models[ANTHROPIC["light"]]
    assert light.observations == 25 and light.pass_rate == 1.0

    routing = '[routing]\nmode = "request"\nmin_requests = 20\n'
    feedback = run_caller(vault, double, routing, flow="student-feedback", run="fb-run")
    for n in range(120):
        text = f"Feedback draft for student s{n} on the essay. Rubric: argument, sources, structure."
        feedback.ask(
            phase="draft", complexity="medium", system="Feedback.", prompt=text, output=Out, checks=[CHECK],
            subject=f"s{n}",
        )  # fmt: skip
        if n == 60:  # the refit that came due at the 50th student has finished before the cohort has
            request_router.settle()
            newer = request_router.current(feedback.config, feedback.ledger)
            assert newer is not None and newer.answers > fitted.answers and "student-feedback/draft" in newer.phases
    first = {}
    for r in feedback.ledger.rows(run_id="fb-run"):
        first.setdefault(r["subject"], (r["tier"], r["route_rule"]))
    assert len(first) == 120
    assert len(set(first.values())) == 1, {v: sum(1 for x in first.values() if x == v) for v in set(first.values())}
    tier, rule = first["s0"]
    assert tier == "standard"  # routing.medium: light, which never answered a student, is not chosen
    assert rule.startswith("request: no tier's model has 20 first answers for student-feedback/draft")
    assert "over 75 requests" in rule and "; rules; routing.medium (" in rule

    # The next run is given the refitted router, which has seen this run's students on standard.
    request_router.settle()
    following = run_caller(vault, double, routing, flow="student-feedback", run="fb-run-2")
    routed = following.route("draft", "medium", prompt="Feedback draft for student s500 on the essay.")
    assert routed.tier == "standard" and routed.rule.startswith("request: P(standard)=")


def test_routing_decisions_never_wait_for_a_refit(tmp_path, monkeypatch, double):
    """With a refit due (a ledger with enough first answers and no router yet), the run's first decision starts
    the fit in the background; eight concurrent decisions all return while it is still fitting, and only one fit
    runs although every decision looked."""
    import threading

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setattr(request_router, "CHECK_EVERY_S", 0.0)
    double.responder = light_fails_hard
    vault = tmp_path / "vault"
    vault.mkdir()
    history = run_caller(vault, double, '[routing]\nmode = "rules"\n', flow="reading-notes", run="history")
    for i in range(request_router.REFIT_MIN + 10):
        ask(history, easy(i))

    started, release, finished, decided = (threading.Event() for _ in range(4))
    fits = []
    real_refit = request_router.refit

    def slow_refit(config, ledger):  # noqa: ANN001, ANN202
        fits.append(threading.current_thread().name)
        started.set()
        release.wait(300)  # a failsafe only: the test releases it
        try:
            return real_refit(config, ledger)
        finally:
            finished.set()

    monkeypatch.setattr(request_router, "refit", slow_refit)
    c = run_caller(vault, double, REQUEST_MODE, flow="reading-notes", run="r")
    routes = []
    lock = threading.Lock()

    def decide_one(i: int) -> None:
        routed = c.route("collate", "low", prompt=easy(1000 + i))
        with lock:
            routes.append(routed)
            if len(routes) == 9:
                decided.set()

    threads = [threading.Thread(target=decide_one, args=(i,)) for i in range(9)]
    try:
        threads[0].start()
        assert started.wait(60), "the first decision of the run did not start a fit"
        for t in threads[1:]:
            t.start()
        # A failsafe: on a routing path that waits for the fit, the decisions would wait here until released.
        assert decided.wait(60), "decisions waited for the fit"
        assert not finished.is_set()
        assert {r.rule for r in routes} == {"request: cold start, rules; routing.low (profile:anthropic)"}
    finally:
        release.set()
        for t in threads:
            t.join(60)
    request_router.settle()
    assert finished.is_set() and len(fits) == 1 and fits[0] != threading.current_thread().name

    # The run keeps the router it started with (none); the next run is given the fitted one.
    assert c.route("collate", "low", prompt=easy(2000)).rule.startswith("request: cold start")
    later = run_caller(vault, double, REQUEST_MODE, flow="reading-notes", run="r2")
    assert later.route("collate", "low", prompt=easy(2000)).rule.startswith("request: P(light)=")


def _light_and_deep(n: int, models: dict[str, str] = OFFLINE) -> list[Observation]:
    """Both tiers' first answers to `n` requests of reading-notes/collate: light fails every dense annotation,
    deep passes half of them; both pass every plain highlight. `models`: the model each tier is on."""
    rows = []
    for i in range(n):
        dense = i % 3 == 0
        text = hard(i) if dense else easy(i)
        for tier, passed in (("light", not dense), ("deep", not dense or i % 2 == 0)):
            rows.append(Observation(f"r{i}", "reading-notes", "collate", "low", tier, models[tier], text, passed, ""))
    return rows


def test_a_router_fitted_on_light_and_deep_compares_light_with_deep(tmp_path):
    """Tiers light, standard and deep; the router knows light and deep. Light suffices where deep would add
    nothing: decide uses the light->deep gain model (as the benchmark's scores do), not light's pass model alone."""
    config = load_config(config_path=write_config(tmp_path / "c.toml", "[routing]\nmin_requests = 20\n"))
    router = fit(_light_and_deep(300), ["light", "standard", "deep"])
    assert router.gains[(LIGHT, DEEP)].kind == "difference" and OFFLINE["standard"] not in router.models
    text = easy(900)
    decision = decide(config, router, flow="reading-notes", phase="collate", complexity="low", text=text)
    score = request_router.scores(router, [("reading-notes", "collate", "low", text)], LIGHT, DEEP)[0]
    X = router.rows("reading-notes", "collate", "low", [text])
    gain = float(router.gain_probability(LIGHT, DEEP, X)[0])
    assert decision.probabilities["light"] == pytest.approx(score) and score == pytest.approx(1 - gain)
    assert decision.tier == "light"


def test_when_no_known_tier_reaches_the_target_the_rule_says_so_not_cold_start(tmp_path, monkeypatch, double):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    vault = tmp_path / "vault"
    vault.mkdir()
    c = run_caller(vault, double, REQUEST_MODE, flow="reading-notes", run="r")
    router = fit(_light_and_deep(300, ANTHROPIC), list(c.config.tier_order))
    request_router.save(router, request_router.model_path(c.config))
    routed = c.route("collate", "low", prompt=hard(900))
    assert routed.tier == "light"  # the rules' tier for low
    assert routed.rule.startswith("request: no known tier reaches 0.90 (value 1): P(light)=")
    assert "model of" in routed.rule and "over 300 requests" in routed.rule
    assert "; rules; routing.low (" in routed.rule and "cold start" not in routed.rule
    decision = decide(
        c.config, request_router.current(c.config, c.ledger), flow="reading-notes", phase="collate",
        complexity="low", text=hard(900),
    )  # fmt: skip
    # what `tierflow routing explain` shows
    assert decision.tier is None and decision.rule == routed.rule.split("; rules; ")[0]


def test_a_model_another_process_saves_midrun_is_given_to_the_next_run(tmp_path, monkeypatch):
    """Another process's save is read for the runs that start after it; a run under way keeps its router."""
    vault = tmp_path / "vault"
    config = load_config(vault, config_path=write_config(vault / ".tierflow" / "config.toml", REQUEST_MODE))
    ledger = Ledger(config.ledger_url)
    path = request_router.model_path(config)
    monkeypatch.setattr(request_router, "CHECK_EVERY_S", 0.0)  # look at the file on every call
    newer = fit(_observed(120), ["light", "deep"])
    older = dataclasses.replace(newer, answers=newer.answers - 1, fitted_at="2020-01-01T00:00:00+00:00")
    request_router.save(older, path)
    assert request_router.current(config, ledger, run_id="a").fitted_at == older.fitted_at
    request_router.save(newer, path)  # as `tierflow routing fit` in another process would
    assert request_router.current(config, ledger, run_id="a").fitted_at == older.fitted_at  # run a keeps its own
    assert request_router.current(config, ledger, run_id="b").fitted_at == newer.fitted_at
    assert request_router.current(config, ledger).fitted_at == newer.fitted_at


def test_tierflow_ask_routes_each_prompt_on_its_own_text_as_explain_does(tmp_path, monkeypatch, double):
    """`tierflow ask` in request mode: each prompt is decided on its own text, so two prompts get different
    probabilities, and the rule the ledger records is the one `routing explain` computes for the same model."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda r: light_fails_hard(r) if r.body.get("tools") or "output_config" in r.body else (
        Reply(text="An answer.")
    )  # fmt: skip
    vault = tmp_path / "vault"
    vault.mkdir()
    history = run_caller(vault, double, '[routing]\nmode = "rules"\n', flow="ask", run="history")
    for i in range(40):
        for prompt in (easy(i), hard(i)):
            history.ask(phase="ask", complexity="low", system="S.", prompt=prompt, output=Out, checks=[CHECK])
    fitted = CliRunner().invoke(_app(), ["routing", "fit", "--vault", str(vault)])
    assert fitted.exit_code == 0, fitted.output
    write_config(vault / ".tierflow" / "config.toml", anthropic_config(double, REQUEST_MODE))
    request_router.forget()

    recorded, explained = [], []
    for prompt in (easy(500), hard(500)):
        asked = CliRunner().invoke(_app(), ["ask", "--vault", str(vault), prompt], catch_exceptions=False)
        assert asked.exit_code == 0, asked.output
        ledger = Ledger.for_vault(vault)
        with ledger.reading() as conn:
            rule, request_id = conn.exec_driver_sql("SELECT route_rule, request_id FROM calls ORDER BY id DESC").first()
        why = CliRunner().invoke(_app(), ["routing", "explain", request_id, "--vault", str(vault), "--format", "json"])
        assert why.exit_code == 0, why.output
        recorded.append(rule.split("; ", 1)[1])  # after the classifier's "classified low (...)"
        explained.append(json.loads(why.stdout)["now"])
    assert recorded == [now["rule"] for now in explained]
    assert all(rule.startswith("request: P(") for rule in recorded)
    assert explained[0]["p_suffices"] != explained[1]["p_suffices"]


def test_routing_fit_says_when_the_model_path_is_a_directory(tmp_path):
    vault = tmp_path / "vault"
    config = load_config(vault, config_path=write_config(vault / ".tierflow" / "config.toml", REQUEST_MODE))
    path = request_router.model_path(config)
    path.mkdir(parents=True)  # say, a sync tool's conflict folder
    Ledger(config.ledger_url)  # a ledger with no evidence yet (a vault with none at all says so: test_first_use)
    fitted = CliRunner().invoke(_app(), ["routing", "fit", "--vault", str(vault)])
    assert fitted.exit_code == 1, fitted.output
    said = " ".join(fitted.output.split())
    assert f"cannot save the request router to {path}: it is a directory" in said
    assert "write access" not in said and "move or remove that directory" in said


LIGHT_VERDICT = "request: P(light)=0.97 ≥ 0.90 (value 1)"
LONG_WEEK = "\n".join(easy(i) for i in range(600))
"""About 9k tokens: light's window (4k in `small_light_vault`) cannot take it; standard's can."""


def small_light_vault(tmp_path: Path, monkeypatch, double: ProviderDouble, verdict: str = LIGHT_VERDICT) -> Path:  # noqa: ANN001
    """A request-mode vault whose light tier has a 4k window (a local model's, say), with a router installed for
    the test alone that always chooses light, saying `verdict`; the real router comes back after the test."""
    from tierflow.core import routing

    monkeypatch.setattr(routing, "_request_router", list(routing._request_router))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda r: Reply(data={"ok": True})
    vault = tmp_path / "vault"
    vault.mkdir()
    small = anthropic_config(double, REQUEST_MODE).replace(
        "max_output_tokens = 1024\n", "max_output_tokens = 1024\ncontext_window = 4000\n", 1
    )
    write_config(vault / ".tierflow" / "config.toml", small)
    routing.use_request_router(lambda *a, **kw: ("light", verdict))
    return vault


def small_light_caller(vault: Path, run_id: str) -> Caller:
    path = vault / ".tierflow" / "config.toml"
    return Caller(RunSettings(vault=str(vault), config_path=str(path), run_id=run_id, flow="reading-notes"))


def test_a_request_too_long_for_the_window_of_the_routers_tier_goes_where_it_fits(tmp_path, monkeypatch, double):
    """A router that learned on short requests chooses light for a long one too; light's window (a local model's
    4k, say) cannot take it, so the request goes where the router's choice is left out: the rules' tier."""
    c = small_light_caller(small_light_vault(tmp_path, monkeypatch, double), "run-window")

    def synthesise(prompt: str):
        return c.ask(phase="synthesise", complexity="medium", system="Synthesise.", prompt=prompt, output=Out)

    short = synthesise(easy(1))
    assert short.route.tier == "light" and short.route.rule.startswith("request: P(light)=0.97")
    week = synthesise(LONG_WEEK)
    assert week.route.tier == "standard" and week.outcome == "ok"
    assert week.route.rule.startswith("request: light's context window cannot take this request (request: P(light)")
    assert "; rules; routing.medium" in week.route.rule
    rows = c.ledger.rows(run_id="run-window")
    assert [r["tier"] for r in rows] == ["light", "standard"]  # nothing sent to light and refused, nothing lost
    # The week is sized for the tier a too-long request goes to, not for the router's choice on no text.
    assert c.sizing_route("synthesise", "medium").tier == "standard"


def test_tierflow_ask_sends_a_prompt_too_long_for_the_routers_tier_where_it_fits(tmp_path, monkeypatch, double):
    """`tierflow ask` in request mode routes as a flow's call does: a prompt the router's tier's window cannot
    take goes where the router's choice is left out, rather than being refused as too long."""
    vault = small_light_vault(tmp_path, monkeypatch, double)
    double.responder = lambda r: Reply(text="An answer.")
    asked = CliRunner().invoke(_app(), ["ask", "--vault", str(vault), LONG_WEEK], catch_exceptions=False)
    assert asked.exit_code == 0, asked.output
    with Ledger.for_vault(vault).reading() as conn:
        tier, rule = conn.exec_driver_sql("SELECT tier, route_rule FROM calls ORDER BY id DESC").first()
    assert tier != "light"  # the rules' tier for the complexity the prompt was classified at
    assert "; request: light's context window cannot take this request (request: P(light)" in rule
    assert "; rules; routing." in rule


def test_the_rule_of_a_request_too_long_for_the_routers_tier_is_recorded_whole(tmp_path, monkeypatch, double):
    """The ledger's `route_rule` (256 characters) keeps where a request too long for the router's tier went and why:
    the router's verdict, not the whole basis of its model, which cut the phase evidence's reason short."""
    basis = "model of 2026-12-05 over 1234 requests, 56 answers labelled by judge, edit or rating signals"
    basis += " (3 failed by them)"
    c = small_light_caller(small_light_vault(tmp_path, monkeypatch, double, f"{LIGHT_VERDICT}; {basis}"), "run-rule")
    evidence = "adaptive: synthesise on standard, pass 0.95 (low 0.91) over 240 calls (medium complexity, all projects)"
    monkeypatch.setattr(c, "learned", lambda: {("synthesise", "medium"): ("standard", evidence)})
    week = c.ask(
        phase="synthesise", complexity="medium", system="Synthesise.", prompt=LONG_WEEK,
        output=Out,
    )  # fmt: skip
    assert week.route.tier == "standard"
    (recorded,) = [r["route_rule"] for r in c.ledger.rows(run_id="run-rule")]
    assert recorded.startswith("request: light's context window cannot take this request (request: P(light)=0.97")
    assert recorded.endswith(f"; phase evidence; {evidence}"), recorded


def test_a_request_too_long_for_the_tier_of_the_router_and_of_the_phase_evidence_says_both(
    tmp_path, monkeypatch, double
):
    c = small_light_caller(small_light_vault(tmp_path, monkeypatch, double), "run-both")
    monkeypatch.setattr(c, "learned", lambda: {("synthesise", "medium"): ("light", "adaptive: light passes 97%")})
    week = c.ask(phase="synthesise", complexity="medium", system="Synthesise.", prompt=LONG_WEEK)
    assert week.route.tier == "standard"
    assert "; phase evidence's light cannot take it either; rules; routing.medium" in week.route.rule, week.route.rule


def test_explain_says_a_request_too_long_for_the_routers_tier_goes_where_it_fits(tmp_path, monkeypatch, double):
    """`tierflow routing explain`'s "now:" is where the request would go: the router, fitted on short requests,
    chooses light for a long one, but light's window (4k) cannot take it, so it goes by the rules (deep for low
    here), as a call does."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda r: Reply(data={"ok": True})
    vault = tmp_path / "vault"
    vault.mkdir()
    small = anthropic_config(double, REQUEST_MODE + 'low = "deep"\n').replace(
        "max_output_tokens = 1024\n", "max_output_tokens = 1024\ncontext_window = 4000\n", 1
    )
    c = Caller(
        RunSettings(
            vault=str(vault), config_path=str(write_config(vault / ".tierflow" / "config.toml", small)),
            run_id="run-long", flow="reading-notes",
        )
    )  # fmt: skip
    router = fit(_light_and_deep(300, ANTHROPIC), list(c.config.tier_order))
    request_router.save(router, request_router.model_path(c.config))
    plain = " ".join(EASY_WORDS * 400)  # about 4.4k tokens of the words light always passed on
    week = c.ask(phase="collate", complexity="low", system="Collate.", prompt=plain, output=Out)
    assert week.route.tier == "deep" and "light's context window cannot take this request" in week.route.rule

    explained = CliRunner().invoke(_app(), ["routing", "explain", week.request_id[:16], "--vault", str(vault)])
    assert explained.exit_code == 0, explained.output
    now = explained.stdout.splitlines()[-1]
    assert now.startswith("  now: deep: request: light's context window cannot take this request"), now
    as_json = CliRunner().invoke(
        _app(), ["routing", "explain", week.request_id[:16], "--vault", str(vault), "--format", "json"]
    )
    assert json.loads(as_json.stdout)["now"]["tier"] == "deep"
    assert json.loads(as_json.stdout)["now"]["rule"] == week.route.rule


def test_explain_says_a_request_no_tier_can_take_is_refused(tmp_path, monkeypatch, double):
    """A request longer than the window of every tier it could go to is refused before anything is sent, and
    "now:" says so rather than naming a tier."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda r: Reply(data={"ok": True})
    vault = tmp_path / "vault"
    vault.mkdir()
    path = write_config(vault / ".tierflow" / "config.toml", anthropic_config(double))
    c = Caller(RunSettings(vault=str(vault), config_path=str(path), run_id="run-fits", flow="reading-notes"))
    week = c.ask(phase="collate", complexity="low", system="Collate.", prompt=LONG_WEEK, output=Out)
    assert week.route.tier == "light"
    write_config(path, anthropic_config(double).replace("[tiers.light]\n", "[tiers.light]\ncontext_window = 4000\n", 1))

    explained = CliRunner().invoke(_app(), ["routing", "explain", week.request_id[:16], "--vault", str(vault)])
    assert explained.exit_code == 0, explained.output
    now = explained.stdout.splitlines()[-1]
    assert now.startswith("  now: refused before sending, on light: the collate prompt is about"), now
    assert "exceeds the 4,000-token context window" in now
