"""The request router's P(light suffices) keeps its promise on requests it never saw: among the requests it sends to
the cheaper tier at target t, the cheaper model falls short of the dearer one on at most 1 - t. Small deterministic
synthetic workloads (no clock, no speed), fitted as `tierflow routing fit` fits and decided as a routed call is."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from conftest import write_config

from tierflow.core.config import load_config
from tierflow.learn import request_router
from tierflow.learn.request_router import Observation, decide, fit

LIGHT, DEEP = "offline:extractive-light", "offline:extractive-deep"
WORDS = {
    "mixed": ["sonnet", "metre", "rhyme", "stanza", "verse"],
    "easy": ["capital", "river", "city", "animal", "colour"],
    "hard": ["integral", "matrix", "limit", "series", "tensor"],
}
INDEPENDENT = [(1, 1), (1, 0), (0, 1), (0, 0)]
"""(light passes, deep passes) in turn: light and deep each pass half, and light falls short of deep on a quarter,
though P(deep passes) - P(light passes) is 0 (the difference the router used to take for that share)."""
NESTED = [(1, 1)] * 6 + [(0, 1), (0, 0)]
"""Deep passes whatever light passes, and one in eight light fails: the share light falls short on is 1/8."""


def _requests(n: int, seed: int, cycle: Sequence[str], mixed: Sequence[tuple[int, int]]) -> list[tuple]:
    """(id, kind, text, light passes, deep passes): `mixed` questions pass as `mixed` says in turn, easy ones on
    light always and on deep four in five, hard ones on deep only. The words tell the kinds apart, never the
    outcome within a kind."""
    rnd = random.Random(seed)
    seen = dict.fromkeys(WORDS, 0)
    out = []
    for i in range(n):
        kind = cycle[i % len(cycle)]
        j = seen[kind]
        seen[kind] += 1
        text = "Question: " + " ".join(rnd.choice(WORDS[kind]) for _ in range(6)) + "?"
        easy_or_hard = (1, int(j % 5 > 0)) if kind == "easy" else (0, 1)
        light, deep = mixed[j % len(mixed)] if kind == "mixed" else easy_or_hard
        out.append((f"s{seed}-{i}", kind, text, light, deep))
    return out


def _history(requests: list[tuple], *, explore: int | None) -> list[Observation]:
    """Both tiers' first answers to every request; or, with `explore`, what a cascade records: deep answers every
    request light failed (escalations) and every `explore`-th light passed (shadow calls)."""
    rows, passes = [], 0
    for rid, _, text, light, deep in requests:
        rows.append(Observation(rid, "f", "p", "low", "light", LIGHT, text, bool(light), ""))
        if light:
            passes += 1
        if explore is None or not light or passes % explore == 0:
            rows.append(Observation(rid, "f", "p", "low", "deep", DEEP, text, bool(deep), ""))
    return rows


@pytest.mark.parametrize(
    ("cycle", "mixed", "explore"),
    [
        (["mixed", "easy", "hard"], INDEPENDENT, None),  # a history of both tiers for every request
        (["mixed", "mixed", "mixed", "hard"], NESTED, 4),  # a cascade shadowing a quarter of light's passes
        (["mixed", "mixed", "mixed", "hard"], NESTED, 2),  # ... half of them
    ],
    ids=["own-history", "cascade-explore-quarter", "cascade-explore-half"],
)
def test_requests_sent_to_light_at_a_target_lose_at_most_one_minus_the_target(tmp_path, cycle, mixed, explore):
    """Held-out requests the router sends to light at target 0.9 (value 1) and 0.95 (value 2): light fails where
    deep passes on at most 1 - target of them. Before the gains were calibrated, the first workload sent every
    mixed question to light at 0.9 (light falls short on 1/4 of them: 0.126 of those sent), and the cascades sent
    mixed ones at 0.9 and 0.95 (deep's pass model learned from a sample heavy with light's failures)."""
    config = load_config(config_path=write_config(tmp_path / "c.toml", "[routing]\nmin_requests = 5\n"))
    router = fit(_history(_requests(600, 0, cycle, mixed), explore=explore), ["light", "deep"])
    assert router.gains[(LIGHT, DEEP)].kind == "difference"
    held_out = _requests(300, 1, cycle, mixed)
    kinds = {}
    for value, target in ((1, 0.9), (2, 0.95)):
        sent = [
            r for r in held_out
            if decide(config, router, flow="f", phase="p", complexity="low", text=r[2], value=value).tier == "light"
        ]  # fmt: skip
        short = sum((not light) and deep for _, _, _, light, deep in sent)
        assert short <= (1 - target) * len(sent), (target, len(sent), short)
        kinds[target] = {r[1] for r in sent}
    if "easy" in cycle:  # and it still sends what light answers as well as deep at 0.9: the easy questions
        assert "easy" in kinds[0.9]


def test_the_gain_calibration_survives_a_save_and_load(tmp_path):
    """A saved router decides as the fitted one: its gains' calibrations are stored with it."""
    router = fit(_history(_requests(600, 0, ["mixed", "easy", "hard"], INDEPENDENT), explore=None), ["light", "deep"])
    path = tmp_path / request_router.MODEL_FILE
    request_router.save(router, path)
    loaded = request_router.load(path)
    assert loaded is not None
    knots = zip(loaded.gains[(LIGHT, DEEP)].calibration, router.gains[(LIGHT, DEEP)].calibration, strict=True)
    for stored, fitted in knots:
        assert stored == pytest.approx(fitted)
    X = router.rows("f", "p", "low", [r[2] for r in _requests(30, 2, ["mixed", "easy", "hard"], INDEPENDENT)])
    assert loaded.suffices(LIGHT, DEEP, X) == pytest.approx(router.suffices(LIGHT, DEEP, X), abs=1e-6)


STANDARD = "offline:extractive-standard"


def _three_tiers(n: int, seed: int) -> list[Observation]:
    """A three-tier cascade: light answers four requests in five and standard answers only light's failures (a
    `rescue` pair, no shadow calls); the fifth request goes to standard directly. Deep answers every request
    standard answered, so standard -> deep is a `difference` pair. Easy questions pass everywhere, hard ones fail on
    light and pass on standard one in three, mixed ones pass on light one in two and fail on deep one in four."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        kind = ["mixed", "easy", "hard"][i % 3]
        j = i // 3
        text = "Question: " + " ".join(rnd.choice(WORDS[kind]) for _ in range(6)) + "?"
        light = kind == "easy" or (kind == "mixed" and j % 2 == 0)
        standard = kind != "hard" or j % 3 == 0
        deep = not (kind == "mixed" and j % 4 == 1)
        rid = f"t{seed}-{i}"
        if i % 5:  # light first; standard only where it failed
            rows.append(Observation(rid, "f", "p", "low", "light", LIGHT, text, light, ""))
            if light:
                continue
        rows.append(Observation(rid, "f", "p", "low", "standard", STANDARD, text, standard, ""))
        rows.append(Observation(rid, "f", "p", "low", "deep", DEEP, text, deep, ""))
    return rows


def test_a_rescue_pair_below_leaves_the_next_pairs_calibration_as_it_was():
    """Standard -> deep is calibrated on standard's pass model (what `gain_probability` maps at inference), so light's
    history, which only adds the light -> standard rescue model, leaves it as standard and deep alone fit it. The
    rescue model's held-out scores used to replace standard's own on the requests light failed, and the standard ->
    deep calibration was fitted on P(standard rescues light) instead."""
    history = _three_tiers(900, 0)
    order = ["light", "standard", "deep"]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    cascade = fit(history, order, now=now)
    alone = fit([o for o in history if o.tier != "light"], order, now=now)
    rescue = cascade.gains[(LIGHT, STANDARD)]
    assert rescue.kind == "rescue" and rescue.calibrated  # cross-validated: it has held-out scores of its own
    assert cascade.gains[(STANDARD, DEEP)].kind == "difference"
    X = cascade.rows("f", "p", "low", sorted({o.text for o in history}))
    same = alone.pass_probability(STANDARD, X)  # the same pass model either way
    assert cascade.pass_probability(STANDARD, X) == pytest.approx(same, abs=1e-9)
    assert cascade.gains[(STANDARD, DEEP)].calibration == alone.gains[(STANDARD, DEEP)].calibration


def test_held_out_pass_probabilities_read_no_fold_s_own_labels():
    """The out-of-fold P(pass) the gains' calibration is fitted on (`_classifier`) ranks by chance on features
    that say nothing of the label: a fold's own sigmoid, fitted on that fold's labels, turned its model's ranking
    round to agree with them (57 folds of 60 ranked above chance), and the calibration learned from scores
    flattered so. Where the features do tell, the held-out scores still rank by them."""
    import numpy as np
    import scipy.sparse as sp
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    from tierflow.learn.request_router import _classifier

    above = folds_seen = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        X = sp.csr_matrix(rng.normal(size=(150, 20)))
        y = rng.integers(0, 2, 150)
        _, calibrated, held_out = _classifier(X, y, np.ones(len(y)))
        assert calibrated
        for _, test in StratifiedKFold(n_splits=3, shuffle=True, random_state=0).split(X, y):  # as it splits
            folds_seen += 1
            above += roc_auc_score(y[test], held_out[test]) > 0.5
    assert folds_seen == 60 and above <= 36  # chance: 30 ± 4

    rng = np.random.default_rng(99)
    features = rng.normal(size=(300, 20))
    y = (features[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(int)
    _, _, held_out = _classifier(sp.csr_matrix(features), y, np.ones(len(y)))
    assert roc_auc_score(y, held_out) > 0.85
