"""Route each request, not each phase: per tier, the probability that its first answer to *this* request passes.

Fitted from the ledger: every first answer (odd attempt, not from the cache, not lost; shadow calls included) whose
request text the ledger kept (`calls.request_id` -> `request_texts`). The evidence is the model's that answered
(`provider:model`, as the ledger recorded it), not the tier's name: a tier is judged by the record of the model the
config puts it on now, and a tier repointed at another model is unknown until that model has answered. Features:
hashed word and character n-grams of the request, its size, script, structure (lines, list items, sources, digits
and symbols), and its flow, phase and complexity. Per model a logistic regression, calibrated (sigmoid,
cross-validated) once there is enough evidence; recent answers weigh more (half-life `HALF_LIFE_DAYS`), so a
drifting workload is followed. Where the same request has first answers from models on two neighbouring tiers, the
router estimates where the dearer one actually adds something, P(this one fails and the next passes): as P(next
passes) - P(this passes) when those pairs are a sample of the workload (shadow calls, trials, a recorded history
of both); as P(fails) x P(next passes | this one failed), a second model, when they come from escalations alone
(which all failed below). On RouteLLM's MMLU data, grouped cross-validation inside the history put the difference
well ahead of a model of the joint event itself (APGR 0.63 against 0.49 on subjects held out of the fold;
benchmarks/routing_public.py).

A request goes to the cheapest tier that *suffices* with probability >= its target: `suffices = 1 - P(tier fails
and the next passes)` where the pair model exists, else P(tier passes); the pair's raw gain (a ranking, the
difference being a lower bound) is calibrated on held-out answers into that probability, each pair weighted by how
it came to be sampled (`_held_out_calibration`), among the tiers whose model has
`min_requests` first answers of the request's flow and phase ("the next" is the next of those), never passing over
a tier it cannot judge on the way up from the rules' tier. The target is `target_for(base, value)`
(tierflow.core.routing). Requests of flows in `FAIR_FLOWS` (student feedback) are routed on their flow, phase and
complexity only, never on their text: every student of one assignment gets the same rule.

The model is kept beside the ledger (`router.model`: a JSON header and the coefficients as plain numbers, never
code), refitted by `tierflow routing fit` and, in the background, when `REFIT_SHARE` more first answers have
arrived since it was fitted; a process holding it reads it again once another has saved a newer one. A run is
decided by one router, the one its first routed call used in whichever process: that call pins the model's
checksum for the run beside the model, and keeps the model by its checksum for the run's other processes (`current`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from tierflow.core import clock
from tierflow.core.config import Config
from tierflow.core.evidence import wilson_high
from tierflow.core.ledger import Ledger, calls, request_texts, signals
from tierflow.core.routing import COLD_START, rules_tier, target_for, use_request_router
from tierflow.learn.labels import Answered, Label, labels

log = logging.getLogger(__name__)

FAIR_FLOWS = frozenset({"student-feedback"})
"""Flows whose requests are routed without their text (one rule for every student of an assignment)."""
HALF_LIFE_DAYS = 30.0
"""An answer this many days old weighs half as much as one from today."""
REFIT_SHARE = 0.2
"""Refit on its own once this share of new first answers (at least `REFIT_MIN`) has arrived."""
REFIT_MIN = 50
CHECK_EVERY_S = 60.0
"""How often a running process looks for new first answers (a count query), at most."""
CALIBRATE_MIN = 20
JOINT_SHARE = 0.2
"""When at least this share of the requests answered on two neighbouring tiers passed on the cheaper one, the
pairs are a sample of the workload, not escalations alone: the gain is the difference of the two pass models."""
"""Observations per class a tier needs before its probabilities are calibrated by cross-validation."""
REGULARISATION = 0.1
"""The logistic regressions' C. On RouteLLM's MMLU data, grouped 3-fold cross-validation by phase inside a history
(never the scored split) put C from 0.1 to 1 within 0.01 APGR of each other; 0.1 fits three times faster than 1."""
CALIBRATION_Z = 1.645
"""Standard errors a step of a gain's calibration is raised by (`_calibration`): its share's one-sided 95% bound."""
CALIBRATION_MIN_STEP = CALIBRATE_MIN
CALIBRATION_STEP = 0.02
"""The smallest share of the pairs one step of a gain's calibration stands on (at least `CALIBRATION_MIN_STEP`)."""
TIE_BREAK = 1e-6
"""Within a flat stretch of a gain's calibration, requests are still ordered by their raw gain, moved by at most
this much (`calibrated`)."""
GAIN_SMOOTHING = 0.01
"""Width of the smooth maximum that floors a `difference` gain at 0 (above max(d, 0) by at most half the width)."""
MODEL_FILE = "router.model"
FORMAT = 4
"""4: gains carry their calibration on held-out answers; 3 was keyed by the model that answered
(`provider:model`), as 4 is; 2 was keyed by the tier's name."""


@dataclass(frozen=True)
class Observation:
    """One first answer to a request, and whether it passed."""

    request_id: str
    flow: str
    phase: str
    complexity: str
    tier: str
    """The tier the answer was asked of (what it was routed as then)."""
    model: str
    """`provider:model` that answered: what the router's evidence is kept under."""
    text: str
    passed: bool
    timestamp: str


def observations(ledger: Ledger, *, flow: str | None = None) -> list[Observation]:
    """The router's training data: every first answer whose request text the ledger kept, oldest first.

    This is the one place that reads it, so that a richer record of requests can replace it here alone.
    First answers are the odd attempt numbers (each tier of an escalation gets two tries), as in
    `tierflow.core.evidence`; cached and lost answers are not evidence, nor is a row that names no model. Whether
    one passed is its label (`labelled`): the phase's checks, unless a judge verdict, an edit or a rating of that
    answer says otherwise. Each is the evidence of the model that answered (`provider:model`, as the ledger
    recorded it), whichever tier it was asked as.
    """
    return labelled(ledger, flow=flow)[0]


def labelled(ledger: Ledger, *, flow: str | None = None) -> tuple[list[Observation], dict[str, int]]:
    """`observations`, and how their labels were decided: per source (`judge`, `edit`, `rating`), the first
    answers it labelled, and under `overturned` those whose checks passed and a signal failed.

    The rule is `tierflow.learn.labels.label`: the person's edit or rating outranks a judge's verdict, which
    outranks a note left as written, which outranks the checks; within a rank a fail outweighs a pass; a pass never
    overturns a failed check.
    """
    query = (
        sa.select(
            calls.c.id,
            calls.c.run_id,
            calls.c.request_id,
            calls.c.flow,
            calls.c.phase,
            calls.c.complexity,
            calls.c.tier,
            calls.c.provider,
            calls.c.model,
            calls.c.outcome,
            calls.c.timestamp,
            request_texts.c.text,
        )
        .join(request_texts, request_texts.c.request_id == calls.c.request_id)
        .where(calls.c.cached_result.is_(False), calls.c.attempt % 2 == 1, calls.c.outcome.not_in(("lost", "error")))
        .order_by(calls.c.id)
    )
    if flow:
        query = query.where(calls.c.flow == flow)

    def read(conn: sa.Connection) -> tuple[list[sa.Row], dict[int, Label]]:
        rows = conn.execute(query).all()
        answered = [
            Answered(r.id, r.request_id, r.tier or "", r.run_id, r.timestamp or "", r.outcome == "ok") for r in rows
        ]
        return rows, labels(conn, answered)

    # `read`, not `reading`: `tierflow routing fit` may read a ledger its user may only read, as a writer writes it.
    rows, decided = ledger.read(read)
    counts: dict[str, int] = defaultdict(int)
    for found in decided.values():
        if found.source != "checks":
            counts[found.source] += 1
            counts["overturned"] += found.overturned
    observed = [
        Observation(
            r.request_id,
            r.flow or "",
            r.phase or "",
            r.complexity or "",
            r.tier or "",
            f"{r.provider or ''}:{r.model}",
            r.text or "",
            decided[r.id].passed,
            r.timestamp or "",
        )  # fmt: skip
        for r in rows
        if r.model
    ]
    return observed, dict(counts)


def first_answers(ledger: Ledger) -> int:
    """How many first answers with a kept request the ledger holds (what decides a refit)."""
    query = (
        sa.select(sa.func.count())
        .select_from(calls)
        .where(calls.c.request_id.is_not(None), calls.c.cached_result.is_(False), calls.c.attempt % 2 == 1)
    )
    with ledger.reading() as conn:
        return int(conn.execute(query).scalar() or 0)


# Features ------------------------------------------------------------------------------------------------------

_ITEM = re.compile(r"^\s*(?:[-*+•]|\d+[.)]|[A-Za-z][.)])\s+", re.M)
_SOURCE = re.compile(r"\[\[|https?://|\bdoi:|^#+ ", re.M | re.I)
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_MATH = re.compile(r"[=+*/^<>√∑∫π±×÷%$]|\\frac|\d+\s*[-+*/]\s*\d+")


def _shape(text: str) -> list[float]:
    """Size, script and structure: what hashed n-grams do not see directly."""
    n = max(len(text), 1)
    lines = text.count("\n") + 1
    split = text.split()
    words = len(split)
    return [
        math.log1p(len(text)),
        math.log1p(words),
        math.log1p(lines),
        math.log1p(len(_ITEM.findall(text))),
        math.log1p(len(_SOURCE.findall(text))),
        sum(map(str.isdigit, text)) / n,
        len(_MATH.findall(text)) / max(words, 1),
        len(_NON_ASCII.findall(text)) / n,
        sum(map(str.isupper, text)) / n,
        text.count("?") / max(lines, 1),
        (sum(map(len, split)) / max(words, 1)) / 10,
    ]


class Features:
    """Request -> sparse feature row. Stateless (hashing), so a fitted model scores any new request."""

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.words = HashingVectorizer(
            n_features=2**18, ngram_range=(1, 2), alternate_sign=False, norm="l2", lowercase=True
        )
        self.chars = HashingVectorizer(
            n_features=2**18, analyzer="char_wb", ngram_range=(3, 5), alternate_sign=False, norm="l2"
        )
        self.context = HashingVectorizer(
            n_features=2**12, analyzer=_tokens, alternate_sign=False, norm=None, lowercase=False
        )
        self.width = self.words.n_features + self.chars.n_features + self.context.n_features + len(_shape(""))
        """Columns of a feature row (what a stored model's columns must lie below)."""

    def __call__(self, rows: Sequence[tuple[str, str, str, str]]) -> Any:
        """`rows`: (flow, phase, complexity, text)."""
        from scipy.sparse import csr_matrix, hstack

        texts = [t for _, _, _, t in rows]
        shape = csr_matrix(np.array([_shape(t) for t in texts], dtype=float).reshape(len(rows), -1))
        return hstack(
            [self.words.transform(texts), self.chars.transform(texts), self.context.transform(rows), shape]
        ).tocsr()


def _tokens(row: tuple[str, str, str, str]) -> list[str]:
    flow, phase, complexity, _ = row
    return [f"flow={flow}", f"phase={phase}", f"fp={flow}/{phase}", f"complexity={complexity}"]


def _routed_text(flow: str, text: str) -> str:
    """What the router reads of a request: nothing of a fair flow's (every student alike)."""
    return "" if flow in FAIR_FLOWS else text


# The model -----------------------------------------------------------------------------------------------------


Member = tuple[np.ndarray, float, float | None, float | None]
"""One linear model as stored: coefficients over the router's `support` (float32), intercept, and the sigmoid
calibration's a and b (None: an uncalibrated logistic regression)."""


@dataclass
class PassModel:
    name: str
    """The model (`provider:model`) whose answers it learned, or `lower->upper` for a pair of models."""
    observations: int
    pass_rate: float
    members: list[Member] | None = None
    """The fitted linear models whose probabilities are averaged, or None: too little evidence of both kinds, use
    `pass_rate`."""
    calibrated: bool = False
    kind: str = "pass"
    """`pass`: P(passes); for a pair of models, `rescue`: P(the dearer passes | the cheaper failed) (a model of its
    own), or `difference`: the gain from the two models' pass models (no model of its own)."""
    calibration: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    """For a pair of models: knots (raw gain, P) of the monotone map from the raw gain (`gain_score`) to the
    probability that the cheaper model fails and the dearer one passes, fitted on out-of-fold scores of the pairs,
    each pair weighted by how it came to be sampled (`_calibration`); None: the raw gain is used as it is (a model
    saved before calibration)."""
    fitted: Any = field(default=None, repr=False, compare=False)
    """The scikit-learn estimator `members` came from, in the process that fitted it only (never saved)."""

    def __getstate__(self) -> dict[str, Any]:
        # `fitted` repeats `members` densely; `_dense` is a cache of `members` expanded for scoring.
        return {k: v for k, v in self.__dict__.items() if k not in ("fitted", "_dense")}


@dataclass
class RequestRouter:
    """Per-model pass models (and gain models for pairs of models on neighbouring tiers), fitted from a ledger at
    one moment. Everything is keyed by the model that answered (`provider:model`), never by a tier's name:
    `decide` maps each tier to its model through the config's routing table at the time of the decision."""

    fitted_at: str
    requests: int
    """Distinct requests seen."""
    answers: int
    """First answers used (what a refit compares against)."""
    models: dict[str, PassModel]
    """`provider:model` -> its pass model."""
    gains: dict[tuple[str, str], PassModel] = field(default_factory=dict)
    """(cheaper model, dearer model) -> how P(the cheaper fails and the dearer passes) is estimated
    (`PassModel.kind`)."""
    phases: dict[str, dict[str, tuple[int, float]]] = field(default_factory=dict)
    """`flow/phase` -> model -> (first answers, pass rate): what it learned per phase."""
    support: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    """The feature columns that occur in the requests it was fitted on, ascending: every other coefficient is 0,
    so the models store their coefficients over these columns only."""
    format: int = FORMAT
    labels: dict[str, int] = field(default_factory=dict)
    """First answers labelled by a signal rather than their checks, per source (`judge`, `edit`, `rating`), and
    `overturned`: those that passed their checks and a signal failed (`labelled`)."""

    def _features(self) -> Features:
        features = getattr(self, "_cached_features", None)
        if features is None:
            features = Features()
            self._cached_features = features
        return features

    def rows(self, flow: str, phase: str, complexity: str, texts: Sequence[str]) -> Any:
        return self._features()([(flow, phase, complexity, _routed_text(flow, t)) for t in texts])

    def pass_probability(self, model: str, X: Any) -> np.ndarray:
        m = self.models[model]
        if m.members is None:
            return np.full(X.shape[0], m.pass_rate)
        return self._positive(m, X)

    def gain_score(self, model: str, above: str, X: Any) -> np.ndarray | None:
        """The raw gain of the dearer model, `above`, over this one: what orders requests, not yet a probability.

        `difference` (both answered a sample of the workload): P(dearer passes) - P(this passes), a lower bound on
        P(this fails and the dearer passes) (exact only when the dearer model passes every request the cheaper one
        passes); floored at 0 by a smooth maximum (width `GAIN_SMOOTHING`), so that requests stay ordered by the
        expected gain where the dearer model is not expected to add anything. `rescue` (escalations alone):
        P(fails) x P(dearer passes | this one failed). None: no model of this pair."""
        m = self.gains.get((model, above))
        if m is None:
            return None
        if m.kind == "difference":
            return _raw_gain(m.kind, self.pass_probability(model, X), self.pass_probability(above, X))
        p = np.full(X.shape[0], m.pass_rate) if m.members is None else self._positive(m, X)
        return _raw_gain(m.kind, self.pass_probability(model, X), p)

    def gain_probability(self, model: str, above: str, X: Any) -> np.ndarray | None:
        """P(this model fails and the dearer one, `above`, passes): the raw gain (`gain_score`) through the pair's
        calibration (`PassModel.calibration`), fitted on held-out scores. None: no model of this pair."""
        raw = self.gain_score(model, above, X)
        if raw is None:
            return None
        m = self.gains[(model, above)]
        if m.calibration is None:
            return raw
        # The calibration was fitted on held-out scores of single fold models (`_held_out_calibration`), which
        # spread wider than their average: it maps each pair of single members' gain, and the mapped gains are
        # averaged, so that what it maps is distributed as what it was fitted on.
        cheaper = self._each(self.models[model], X)
        dearer = self._each(self.models[above] if m.kind == "difference" else m, X)
        mapped = [calibrated(m.calibration, _raw_gain(m.kind, c, d)) for c in cheaper for d in dearer]
        return np.mean(mapped, axis=0)

    def suffices(self, model: str, above: str | None, X: Any) -> np.ndarray:
        """P(this model's answer is as good as the dearer one's would be): 1 - P(it fails and the dearer passes)
        where the pair model exists, else P(it passes). Calibrated on held-out answers, so among the requests whose
        P(suffices) is at least t, the cheaper model falls short of the dearer one on at most about 1 - t."""
        gain = self.gain_probability(model, above, X) if above else None
        return 1 - gain if gain is not None else self.pass_probability(model, X)

    def _positive(self, m: PassModel, X: Any) -> np.ndarray:
        """P(class 1) as the fitted estimator's `predict_proba(X)[:, 1]` computes it (to float32 coefficients),
        without scikit-learn's per-call validation (most of a single request's scoring time)."""
        dense = getattr(m, "_dense", None)
        if dense is None:  # the stored coefficients spread over the full feature space once, for fast products
            dense = []
            for values, intercept, a, b in m.members or []:
                coef = np.zeros(X.shape[1])
                coef[self.support] = values
                dense.append((coef, intercept, a, b))
            m._dense = dense
        return np.mean([_member(*d, X) for d in dense], axis=0)

    def _each(self, m: PassModel, X: Any) -> list[np.ndarray]:
        """Each member's P(class 1), or the pass rate for a model without members."""
        if m.members is None:
            return [np.full(X.shape[0], m.pass_rate)]
        self._positive(m, X)  # spreads the members (`_dense`)
        return [_member(*d, X) for d in m._dense]


def _member(coef: np.ndarray, intercept: float, a: float | None, b: float | None, X: Any) -> np.ndarray:
    """One stored linear model's P(class 1): its logistic, or its sigmoid calibration of the decision value."""
    from scipy.special import expit

    f = np.asarray(X @ coef).ravel() + intercept
    return expit(f) if a is None else np.clip(expit(-(a * f + b)), 0.0, 1.0)


def _raw_gain(kind: str, cheaper: np.ndarray, dearer: np.ndarray) -> np.ndarray:
    """`RequestRouter.gain_score` from P(the cheaper passes) and, for `difference`, P(the dearer passes), for
    `rescue`, P(the dearer passes | the cheaper failed)."""
    if kind == "difference":
        d = dearer - cheaper
        return np.clip(0.5 * (d + np.sqrt(d * d + GAIN_SMOOTHING**2)), 0.0, 1.0)
    return (1 - cheaper) * dearer


def _held_out_calibration(
    gain: PassModel,
    cheaper: Sequence[Observation],
    both: Sequence[tuple[Observation, Observation, float]],
    held_out: Mapping[int, float],
    rescued: Mapping[int, float],
    models: Mapping[str, PassModel],
    support: np.ndarray,
    matrix: Any,
    row_of: Mapping[int, int],
    now: datetime,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The gain's calibration (`_calibration`) over the requests the cheaper model answered, scored as no model
    that scored them had seen them: out-of-fold pass probabilities (`held_out`, the pass models'; for `rescue`, the
    dearer side is `rescued`, the rescue model's out-of-fold probability on the failures it learned from), and the
    dearer model's prediction where it never answered.

    Where the cheaper model passed, the event (it fails, the dearer passes) did not happen, whether or not the
    dearer one answered; where it failed, the dearer one's answer decides, and each failure it answered stands for
    1 / P(a failure was answered by both) (`_sampling`). Requests without a held-out score are left out; with fewer
    than `CALIBRATE_MIN` of each outcome left, every request gets the weighted share."""
    partner = {a.request_id: (b, w) for a, b, w in both}
    requests = list({o.request_id: o for o in cheaper}.values())
    dearer_model = models[both[0][1].model] if both and gain.kind == "difference" else gain
    unseen = None  # the dearer (or rescue) model's prediction, for requests it never learned from
    if dearer_model.members is not None:
        scorer = RequestRouter("", 0, 0, {}, support=support)
        unseen = scorer._positive(dearer_model, matrix[[row_of[id(a)] for a in requests]])
    keep, raw, joint, weight = [], [], [], []
    for i, a in enumerate(requests):
        b, stands = partner.get(a.request_id, (None, 1.0))
        if b is None and not a.passed:
            continue  # a failure the dearer model never answered: the event is unknown
        if a.passed:
            stands = 1.0  # every pass is here, answered above or not
        lower = held_out.get(id(a))
        if dearer_model.members is None:
            upper = dearer_model.pass_rate
        elif b is not None and (gain.kind == "difference" or not a.passed):
            # It learned from this answer: its out-of-fold probability, if any (for `rescue`, the rescue model's,
            # never the dearer model's pass model's: that is not what the rescue model's gain maps at inference).
            upper = (held_out if gain.kind == "difference" else rescued).get(id(b))
        else:
            upper = float(unseen[i])
        keep.append(lower is not None and upper is not None)
        if keep[-1]:
            raw.append(float(_raw_gain(gain.kind, np.array([lower]), np.array([upper]))[0]))
        joint.append(float((not a.passed) and b is not None and b.passed))
        weight.append(stands * float(_weights([a.timestamp], now)[0]))
    kept = np.array(keep, dtype=bool)
    y, w = np.array(joint), np.array(weight)
    if not len(y) or min(int(y[kept].sum()), int(kept.sum() - y[kept].sum())) < CALIBRATE_MIN:
        share = float(np.dot(y, w) / w.sum()) if len(y) and w.sum() > 0 else gain.pass_rate
        return ((0.0,), (share,))
    return _calibration(np.asarray(raw), y[kept], w[kept]) or ((0.0,), (gain.pass_rate,))


def _stored(model: Any, support: np.ndarray) -> list[Member] | None:
    return None if model is None else _members(model, support)


def _members(model: Any, support: np.ndarray) -> list[Member]:
    """A fitted model as its linear members: a logistic regression, or the members of a sigmoid-calibrated
    ensemble (`_classifier`), each with its coefficients over `support` only."""
    found = getattr(model, "calibrated_classifiers_", None)
    pairs = [(model, None)] if found is None else [(c.estimator, c.calibrators[0]) for c in found]
    return [
        (
            np.asarray(est.coef_.ravel()[support], dtype=np.float32),
            float(est.intercept_[0]),
            None if cal is None else float(cal.a_),
            None if cal is None else float(cal.b_),
        )
        for est, cal in pairs
    ]


def _weights(timestamps: Sequence[str], now: datetime) -> np.ndarray:
    ages = []
    for ts in timestamps:
        try:
            ages.append(max((now - datetime.fromisoformat(ts)).total_seconds() / 86400, 0.0))
        except ValueError:
            ages.append(0.0)
    return np.power(0.5, np.asarray(ages, dtype=float) / HALF_LIFE_DAYS)


def _classifier(X: Any, y: np.ndarray, w: np.ndarray, *, seed: int = 0) -> tuple[Any, bool, np.ndarray | None]:
    """A logistic regression on the hashed features; sigmoid-calibrated by 3-fold cross-validation when each
    class has `CALIBRATE_MIN` examples: the three fold models, each calibrated on the fold it did not see, are
    averaged (three fits on two thirds, no refit on the whole: a third of the fitting time of a refit).

    Also each row's out-of-fold probability (the fold model that did not see it, through a sigmoid fitted on
    another fold's labels: none of its own), what the gains' calibration is fitted on; None when the model is not
    cross-validated (its own rows' probabilities would flatter it)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    base = LogisticRegression(C=REGULARISATION, max_iter=300, solver="liblinear", random_state=seed)
    if min(int(y.sum()), int(len(y) - y.sum())) >= CALIBRATE_MIN:
        # Shuffled folds: the ledger's order groups requests by run and phase, and unshuffled folds would fit the
        # calibration on phases the fold's model never saw (a sigmoid that can even invert the ranking).
        folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
        model = CalibratedClassifierCV(base, method="sigmoid", cv=folds, ensemble=True)
        model.fit(X, y, sample_weight=w)
        # The fitted pairs are in the order of the folds (the same split again: the folds are seeded). A fold's
        # own pair was calibrated on that fold's labels: its sigmoid can turn the fold model's ranking round to
        # agree with them (on features that say nothing, 57 folds of 60 then rank above chance), so a fold's rows
        # are scored by their fold model through the next fold's sigmoid, fitted on other labels; where that
        # sigmoid falls (sklearn's is 1 / (1 + exp(a·f + b)), a ≥ 0), it says the models rank nothing, and would
        # turn this fold's ranking round in turn: the fold model's own probability is taken instead.
        held_out = np.empty(len(y))
        pairs = model.calibrated_classifiers_
        for k, (_, test) in enumerate(folds.split(X, y)):
            fold, sigmoid = pairs[k].estimator, pairs[(k + 1) % len(pairs)].calibrators[0]
            if sigmoid.a_ < 0:
                held_out[test] = sigmoid.predict(fold.decision_function(X[test]))
            else:
                held_out[test] = fold.predict_proba(X[test])[:, 1]
        return model, True, held_out
    return base.fit(X, y, sample_weight=w), False, None


def _calibration(
    raw: np.ndarray, joint: np.ndarray, weights: np.ndarray
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Knots of the monotone map from held-out raw gains to the observed share of pairs in which the cheaper model
    failed and the dearer one passed (`joint`), each pair weighted as it stands for the workload: isotonic
    regression, its steps joined at their centres (so that requests keep their order between steps)."""
    from sklearn.isotonic import IsotonicRegression

    if not len(raw) or weights.sum() <= 0:
        return None
    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True).fit(raw, joint, sample_weight=weights)
    order = np.argsort(raw, kind="stable")
    x, w = raw[order], weights[order]
    steps = fitted.predict(x)
    # Each step is a run of one value over consecutive raw gains. A step of a few pairs says little (isotonic
    # regression's steps at either end are often a handful of pairs with none of the event): a step of fewer than
    # `CALIBRATION_STEP` of the pairs joins the neighbour nearest in value (two neighbouring steps of an
    # increasing map join into one between them: it stays increasing).
    starts = np.flatnonzero(np.r_[True, np.diff(steps) != 0])
    ends = np.r_[starts[1:], len(x)]
    y = np.asarray(joint, dtype=float)[order]
    blocks = [[float(np.dot(x[a:b], w[a:b])), float(np.dot(y[a:b], w[a:b])), float(w[a:b].sum()), b - a]
              for a, b in zip(starts, ends, strict=True)]  # fmt: skip
    least = max(CALIBRATION_MIN_STEP, CALIBRATION_STEP * len(x))
    while len(blocks) > 1:
        small = next((i for i, b in enumerate(blocks) if b[3] < least or b[2] <= 0), None)
        if small is None:
            break
        value = blocks[small][1] / max(blocks[small][2], 1e-12)
        near = [j for j in (small - 1, small + 1) if 0 <= j < len(blocks)]
        other = min(near, key=lambda j: abs(blocks[j][1] / max(blocks[j][2], 1e-12) - value))
        i, j = sorted((small, other))
        blocks[i : j + 1] = [[a + b for a, b in zip(blocks[i], blocks[j], strict=True)]]
    kept = [b for b in blocks if b[2] > 0]
    # The lowest step is the least of many running means, so it comes out low by chance: each step's share is
    # raised to the upper end of its Wilson interval at `CALIBRATION_Z` standard errors (a step of many pairs moves
    # little), and steps that then fall out of order are joined again.
    scale = len(x) / max(float(w.sum()), 1e-12)  # weights in pairs
    pooled: list[list[float]] = []
    for b in kept:
        n = b[2] * scale
        value = wilson_high(b[1] / b[2] * n, n, CALIBRATION_Z)
        pooled.append([b[0] * scale, value * n, n])
        while len(pooled) > 1 and pooled[-2][1] / pooled[-2][2] >= pooled[-1][1] / pooled[-1][2]:
            last = pooled.pop()
            pooled[-1] = [a + c for a, c in zip(pooled[-1], last, strict=True)]
    xs = tuple(p[0] / p[2] for p in pooled)
    ys = tuple(min(max(p[1] / p[2], 0.0), 1.0) for p in pooled)
    return (xs, ys) if xs else None


def calibrated(knots: tuple[Sequence[float], Sequence[float]], raw: np.ndarray) -> np.ndarray:
    """The calibrated P(the cheaper fails and the dearer passes) of raw gains (`PassModel.calibration`); within a
    flat stretch (below the first knot, above the last) the raw gain still orders requests, by `TIE_BREAK` at most."""
    xs, ys = (np.asarray(k, dtype=float) for k in knots)
    return np.clip(np.interp(raw, xs, ys) + TIE_BREAK * raw, 0.0, 1.0)


def _sampling(lower: Sequence[Observation], upper_requests: set[str]) -> dict[tuple[str, str, bool], float]:
    """How likely a request the cheaper model answered was also answered by the dearer one, per flow, phase and
    the cheaper answer's outcome: 1 where both answer everything; in a cascade, 1 for the cheaper model's failures
    (escalated) and the `explore` share for its passes (shadow calls). Measured, not read from the config: it
    holds for whatever mix of settings the history was recorded under."""
    answered: dict[tuple[str, str, bool], int] = defaultdict(int)
    paired: dict[tuple[str, str, bool], int] = defaultdict(int)
    for o in {o.request_id: o for o in lower}.values():
        key = (o.flow, o.phase, o.passed)
        answered[key] += 1
        paired[key] += o.request_id in upper_requests
    return {key: paired[key] / n for key, n in answered.items()}


def _key(o: Observation) -> tuple[str, str, str, str]:
    """What the features read of an observation: (flow, phase, complexity, routed text)."""
    return (o.flow, o.phase, o.complexity, _routed_text(o.flow, o.text))


def places(
    observed: Sequence[Observation], tier_order: Sequence[str], tiers: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Each answering model's place among the tiers, cheapest first: the tier it is on now (`tiers`: tier ->
    `provider:model`, the config's routing table; the cheaper of two), else the tier it last answered as. Tiers
    outside `tier_order` come after it, by name. The gains learned are those of models on neighbouring places."""
    names = list(tier_order) + sorted({o.tier for o in observed} - set(tier_order))
    place = {t: i for i, t in enumerate(names)}
    found: dict[str, int] = {}
    for o in observed:  # oldest first: the tier a model last answered as wins
        found[o.model] = place[o.tier]
    now: dict[str, int] = {}
    for tier, model in (tiers or {}).items():
        if tier in place:
            now[model] = min(now.get(model, place[tier]), place[tier])
    return {model: now.get(model, at) for model, at in found.items()}


def fit(
    observed: Sequence[Observation],
    tier_order: Sequence[str],
    *,
    tiers: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> RequestRouter:
    """Fit the router from first answers (see `observations`): a pass model per model that answered, and a gain
    model per pair of models on neighbouring tiers (`places`; `tiers`: tier -> its model now)."""
    now = now or clock.now()
    if now.tzinfo is None:
        now = now.replace(tzinfo=clock.now().tzinfo)
    features = Features()
    # Each distinct request is vectorised once; every model's and pair's fit takes its rows of one matrix.
    keys = [_key(o) for o in observed]
    index: dict[tuple[str, str, str, str], int] = {}
    for key in keys:
        index.setdefault(key, len(index))
    matrix = features(list(index)) if index else None
    row_of = {id(o): index[k] for o, k in zip(observed, keys, strict=True)}
    support = (
        np.flatnonzero(np.diff(matrix.tocsc().indptr)).astype(np.int32) if matrix is not None
        else np.zeros(0, dtype=np.int32)
    )  # fmt: skip
    by_model: dict[str, list[Observation]] = defaultdict(list)
    for o in observed:
        by_model[o.model].append(o)
    at = places(observed, tier_order, tiers)
    on: dict[int, list[str]] = defaultdict(list)
    for name in sorted(by_model):
        on[at[name]].append(name)
    filled = sorted(on)
    # A tier repointed at another model has two models on its place: each is paired with each model of the next.
    neighbours = [(a, b) for low, high in zip(filled, filled[1:], strict=False) for a in on[low] for b in on[high]]
    # Pairs are sampled by the cheaper answer's outcome (a cascade escalates every failure and shadows a share of
    # the passes): each pair stands for 1 / P(it was sampled) requests, in the dearer model's pass model as in the
    # gain's calibration, so that both describe the workload rather than the failures it escalated.
    paired: dict[tuple[str, str], list[tuple[Observation, Observation, float]]] = {}
    stands_for: dict[int, float] = {}
    for lower, upper in neighbours:
        low = {o.request_id: o for o in by_model[lower]}
        sampled = _sampling(by_model[lower], {o.request_id for o in by_model[upper]})
        both = []
        for o in by_model[upper]:
            if o.request_id in low:
                a = low[o.request_id]
                both.append((a, o, 1.0 / sampled[(a.flow, a.phase, a.passed)]))
                stands_for.setdefault(id(o), both[-1][2])
        paired[(lower, upper)] = both
    models: dict[str, PassModel] = {}
    held_out: dict[int, float] = {}
    """Observation -> its pass model's out-of-fold P(pass), where the model was cross-validated. A rescue model's
    out-of-fold scores are kept apart (`rescued`), per pair: a dearer model's answer is scored by both, and the next
    pair up calibrates on its pass model's (what `RequestRouter.gain_probability` maps)."""
    for name, seen in by_model.items():
        y = np.array([o.passed for o in seen], dtype=int)
        rate = float(y.mean())
        model, calibrated = None, False
        if 0 < y.sum() < len(y):
            X = matrix[[row_of[id(o)] for o in seen]]
            w = _weights([o.timestamp for o in seen], now) * [stands_for.get(id(o), 1.0) for o in seen]
            model, calibrated, oof = _classifier(X, y, w)
            if oof is not None:
                held_out.update(zip(map(id, seen), oof, strict=True))
        elif rate in (0.0, 1.0):  # one class only: a constant, as good held out as in the fit
            held_out.update((id(o), rate) for o in seen)
        models[name] = PassModel(name, len(seen), rate, _stored(model, support), calibrated, fitted=model)
    gains: dict[tuple[str, str], PassModel] = {}
    for (lower, upper), both in paired.items():
        rescued: dict[int, float] = {}  # the rescue model's out-of-fold P(the dearer passes), by the dearer answer
        joint = len(both) >= REFIT_MIN and sum(a.passed for a, _, _ in both) >= JOINT_SHARE * len(both)
        # The observed share of requests the cheaper model failed and the dearer one passed, each pair weighted by
        # how many requests it stands for.
        ys = np.array([(not a.passed) and b.passed for a, b, _ in both], dtype=float)
        ws = np.array([w for _, _, w in both]) * _weights([b.timestamp for _, b, _ in both], now)
        shown = float(np.dot(ys, ws) / ws.sum()) if len(both) else 0.0
        if joint:
            # Both models answered a sample of the workload: each pass model is unbiased (the dearer one weighted
            # by `stands_for`), and the gain is their difference (see `RequestRouter.gain_score`); no third model.
            gain = PassModel(f"{lower}->{upper}", len(both), shown, kind="difference")
        else:
            # Pairs from escalations alone all failed below: the dearer model's pass model saw only requests the
            # cheaper one failed, so learn the rescue rate given a failure.
            pairs = [(a, b) for a, b, _ in both if not a.passed]
            if not pairs:
                continue
            y = np.array([b.passed for _, b in pairs], dtype=int)
            model, calibrated, oof = None, False, None
            if 0 < y.sum() < len(y):
                X = matrix[[row_of[id(a)] for a, _ in pairs]]
                model, calibrated, oof = _classifier(X, y, _weights([b.timestamp for _, b in pairs], now))
            if oof is not None:
                rescued = {id(b): p for (_, b), p in zip(pairs, oof, strict=True)}
            gain = PassModel(
                f"{lower}->{upper}", len(pairs), float(y.mean()), _stored(model, support), calibrated, "rescue",
                fitted=model,
            )  # fmt: skip
        gains[(lower, upper)] = gain
        gain.calibration = _held_out_calibration(
            gain, by_model[lower], both, held_out, rescued, models, support, matrix, row_of, now
        )
    phases: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for o in observed:
        cell = phases[f"{o.flow}/{o.phase}"][o.model]
        cell[0] += 1
        cell[1] += o.passed
    router = RequestRouter(
        fitted_at=now.isoformat(timespec="seconds"),
        requests=len({o.request_id for o in observed}),
        answers=len(observed),
        models=models,
        gains=gains,
        phases={p: {m: (n, ok / n) for m, (n, ok) in cells.items()} for p, cells in phases.items()},
        support=support,
    )
    router._cached_features = features
    return router


# Persistence and refits ----------------------------------------------------------------------------------------


def model_path(config: Config) -> Path:
    """Beside the ledger: `<vault>/.tierflow/router.model`, or the SQLite ledger's folder."""
    url = config.ledger_url
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        return Path(url.removeprefix("sqlite:///")).parent / MODEL_FILE
    if config.vault is not None:
        return config.vault / ".tierflow" / MODEL_FILE
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "tierflow" / f"router-{digest}.model"


_MAGIC = b"tierflow request router\n"
"""A model file: this line; the SHA-256 of the rest, in hex, on a line; the header (JSON) on a line; then the
`support` (little-endian int32) and each member's coefficients over it (little-endian float32), models first, then
gains, in the header's order. Nothing in it is code: a file from anyone is at worst refused."""


class _Invalid(ValueError):
    """Not a whole router of this format: damaged, written by another version, or not a model at all."""


def save(router: RequestRouter, path: Path) -> None:
    """Write `router` to `path` through a temporary file beside it, renamed into place: a reader sees the old model
    or the new one whole, however many processes save at once."""
    from tierflow.vault.notes import write_atomically

    write_atomically(path, _encode(router))


def _encode(router: RequestRouter) -> bytes:
    arrays = [np.asarray(router.support, dtype="<i4").tobytes()]

    def entry(m: PassModel) -> dict[str, Any]:
        members = None
        if m.members is not None:
            members = []
            for values, intercept, a, b in m.members:
                arrays.append(np.asarray(values, dtype="<f4").tobytes())
                members.append([intercept, a, b])
        kept = {"name": m.name, "observations": m.observations, "pass_rate": m.pass_rate}
        calibration = None if m.calibration is None else [list(m.calibration[0]), list(m.calibration[1])]
        return {**kept, "members": members, "calibrated": m.calibrated, "kind": m.kind, "calibration": calibration}

    header = {
        "format": router.format,
        "fitted_at": router.fitted_at,
        "requests": router.requests,
        "answers": router.answers,
        "columns": len(router.support),
        "models": {name: entry(m) for name, m in router.models.items()},
        "gains": [[lower, upper, entry(m)] for (lower, upper), m in router.gains.items()],
        "phases": router.phases,
        "labels": router.labels,
    }
    body = json.dumps(header, ensure_ascii=False).encode() + b"\n" + b"".join(arrays)
    return _MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def _need(ok: bool, why: str) -> None:
    if not ok:
        raise _Invalid(why)


def _count(value: Any, what: str) -> int:
    _need(type(value) is int and value >= 0, f"{what} is not a count")
    return value


def _real(value: Any, what: str) -> float:
    _need(type(value) in (int, float) and math.isfinite(value), f"{what} is not a number")
    return float(value)


def _share(value: Any, what: str) -> float:
    _need(0 <= _real(value, what) <= 1, f"{what} is not between 0 and 1")
    return float(value)


def _decode(data: bytes, width: int) -> RequestRouter:
    """The router a model file holds, checked whole: its checksum, format, models, and every array's length and
    columns (below `width`, the features' columns), so that what loads can score any request."""
    _need(data.startswith(_MAGIC), "not a tierflow request router model")
    digest, _, body = data[len(_MAGIC) :].partition(b"\n")
    _need(digest == hashlib.sha256(body).hexdigest().encode(), "damaged (its checksum does not match)")
    text, _, payload = body.partition(b"\n")
    header = json.loads(text)
    _need(isinstance(header, dict), "no header")
    _need(header.get("format") == FORMAT, f"format {header.get('format')!r}, where this tierflow reads {FORMAT}")
    columns = _count(header.get("columns"), "columns")
    found_models, gains = header.get("models"), header.get("gains")
    _need(isinstance(found_models, dict) and isinstance(gains, list), "no models")
    stored = [(name, entry, ("pass",)) for name, entry in found_models.items()]
    pairs: list[tuple[str, str]] = []
    for gain in gains:
        _need(isinstance(gain, list) and len(gain) == 3, "a gain is not a pair of models")
        lower, upper, entry = gain
        _need(isinstance(lower, str) and isinstance(upper, str), "a gain is not a pair of models")
        _need(
            lower in found_models and upper in found_models and lower != upper,
            f"a gain over unknown models {lower}->{upper}",
        )
        pairs.append((lower, upper))
        stored.append((f"{lower}->{upper}", entry, ("rescue", "difference")))
    entries = [e if isinstance(e, dict) and isinstance(e.get("members"), list) else {} for _, e, _ in stored]
    _need(
        len(payload) == 4 * columns * (1 + sum(len(e["members"]) for e in entries if e)),
        "its coefficients are not as long as its header says",
    )
    support = np.frombuffer(payload, dtype="<i4", count=columns).astype(np.int32)
    _need(
        columns == 0 or (support[0] >= 0 and support[-1] < width and bool(np.all(np.diff(support) > 0))),
        f"its feature columns are not ascending below {width}",
    )
    offset = 4 * columns
    models: list[PassModel] = []
    for name, entry, kinds in stored:
        _need(bool(name) and isinstance(entry, dict) and entry.get("name") == name, f"{name!r} holds another model")
        _need(entry.get("kind") in kinds, f"{name}: kind {entry.get('kind')!r}")
        _need(type(entry.get("calibrated")) is bool, f"{name}: calibrated")
        members: list[Member] | None = None
        if entry.get("members") is not None:
            found = entry["members"]
            _need(isinstance(found, list) and bool(found) and entry["kind"] != "difference", f"{name}: members")
            members = []
            for member in found:
                _need(isinstance(member, list) and len(member) == 3, f"{name}: a member is not (intercept, a, b)")
                intercept, a, b = member
                _need((a is None) == (b is None), f"{name}: a calibration without both a and b")
                values = np.frombuffer(payload, dtype="<f4", count=columns, offset=offset).astype(np.float32)
                offset += 4 * columns
                _need(bool(np.all(np.isfinite(values))), f"{name}: coefficients that are not numbers")
                calibration = (None, None) if a is None else (_real(a, f"{name}: a"), _real(b, f"{name}: b"))
                members.append((values, _real(intercept, f"{name}: intercept"), *calibration))
        observations = _count(entry.get("observations"), f"{name}: observations")
        rate = _share(entry.get("pass_rate"), f"{name}: pass rate")
        models.append(
            PassModel(name, observations, rate, members, entry["calibrated"], entry["kind"], _knots(entry, name))
        )
    phases: dict[str, dict[str, tuple[int, float]]] = {}
    found_phases = header.get("phases")
    _need(isinstance(found_phases, dict), "no phases")
    for phase, cells in found_phases.items():
        _need(isinstance(cells, dict), f"phase {phase}")
        phases[phase] = {}
        for model, cell in cells.items():
            _need(isinstance(cell, list) and len(cell) == 2, f"phase {phase}, model {model}")
            phases[phase][model] = (_count(cell[0], f"{phase}: answers"), _share(cell[1], f"{phase}: pass rate"))
    labels_found = header.get("labels")
    _need(isinstance(labels_found, dict), "no labels")
    _need(isinstance(header.get("fitted_at"), str), "no fitting time")
    return RequestRouter(
        fitted_at=header["fitted_at"],
        requests=_count(header.get("requests"), "requests"),
        answers=_count(header.get("answers"), "answers"),
        models={m.name: m for m in models[: len(found_models)]},
        gains=dict(zip(pairs, models[len(found_models) :], strict=True)),
        phases=phases,
        support=support,
        format=FORMAT,
        labels={k: _count(v, f"labels: {k}") for k, v in labels_found.items()},
    )


def _knots(entry: dict[str, Any], name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """A stored calibration (`PassModel.calibration`): None, or two equally long, non-empty lists of numbers,
    the raw gains ascending and the probabilities between 0 and 1 (a pass model has none)."""
    found = entry.get("calibration")
    if found is None:
        return None
    _need(entry.get("kind") != "pass", f"{name}: a pass model with a gain's calibration")
    _need(isinstance(found, list) and len(found) == 2, f"{name}: calibration is not (gains, probabilities)")
    xs, ys = found
    _need(isinstance(xs, list) and isinstance(ys, list) and len(xs) == len(ys) > 0, f"{name}: calibration knots")
    knots = tuple(_real(x, f"{name}: calibration") for x in xs), tuple(_share(y, f"{name}: calibration") for y in ys)
    _need(all(b > a for a, b in zip(knots[0], knots[0][1:], strict=False)), f"{name}: calibration not ascending")
    return knots


def load(path: Path) -> RequestRouter | None:
    """The saved router, or None: absent, or not a whole model of this format (a warning names the file and
    `tierflow routing fit`; the call path then routes as at a cold start). A pickle an earlier tierflow saved
    (`router.pkl`) is never opened; while it is the only file there, the first load in a process says what to do
    with it (`tierflow routing fit`, and the router's own refits, remove it: `retire_pickle`)."""
    fix = "run `tierflow routing fit` to fit a new one (the router also refits itself as answers arrive)"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        legacy = legacy_path(path)
        if legacy != path and str(legacy) not in _told and legacy.exists():
            _told.add(str(legacy))
            log.warning(
                "ignored %s: a request router an earlier tierflow saved as a pickle is never loaded (a pickle can "
                "run code, and an earlier tierflow on a machine this vault is synced to would still load it); "
                "delete it, or run `tierflow routing fit`, which removes it (as does the router's next refit)",
                legacy,
            )
        return None
    except OSError as exc:
        log.warning("could not read the request router model %s (%s); %s", path, exc, fix)
        return None
    try:
        features = Features()
        router = _decode(data, features.width)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError, MemoryError) as exc:
        # Every way a file can be wrong ends here: whatever is in the vault, a call goes on.
        log.warning("ignored the request router model %s: %s; %s", path, exc, fix)
        return None
    router._cached_features = features
    return router


_told: set[str] = set()
"""The pickles this process has named (`load` says so once per process, not at every load)."""


def legacy_path(path: Path) -> Path:
    """Where tierflow kept the model at `path` before `router.model`: `router.pkl` beside it."""
    return path.with_suffix(".pkl")


def retire_pickle(path: Path) -> Path | None:
    """Remove the pickle an earlier tierflow saved beside the model at `path` (`legacy_path`): never loaded here,
    but a hazard in a synced or shared vault, where an earlier tierflow would unpickle it. The path removed, or
    None (there was none, or it could not be removed: a warning says so)."""
    legacy = legacy_path(path)
    if legacy == path:
        return None
    try:
        legacy.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("could not remove %s (%s): delete it, it is a request router saved as a pickle", legacy, exc)
        return None
    return legacy


def refit(config: Config, ledger: Ledger) -> RequestRouter:
    """Fit from the whole ledger and save beside it (`tierflow routing fit`); remove the pickle an earlier tierflow
    left there (`retire_pickle`)."""
    observed, by_source = labelled(ledger)
    tiers = {name: tier.model for name, tier in config.settings.tiers.items()}
    router = fit(observed, list(config.tier_order), tiers=tiers)
    router.labels = by_source
    path = model_path(config)
    save(router, path)
    removed = retire_pickle(path)
    if removed is not None:
        log.warning("removed %s: a request router an earlier tierflow saved as a pickle; %s replaces it", removed, path)
    return router


# One run, one router -------------------------------------------------------------------------------------------
# A run's first routed call pins the model it used, by checksum, in a small file beside the model (one per run,
# created only where none is: the first process wins); the model itself is kept under its checksum. A later
# process of the run (a batch resumed elsewhere, a worker of a run spread over several) loads that same model.

RUNS_HELD = 256
"""Runs whose router a process holds in memory (the oldest run is dropped first; routed again, it reads its pin)."""
RUNS_PINNED = 256
"""Runs whose model is remembered on disk: those pinned most recently (a run forgotten and routed again is pinned
afresh, to the newest model)."""
MODELS_KEPT = 8
"""Models kept by checksum for the runs pinned to them, at most: those of the runs pinned most recently. A refit
comes once a fifth more answers have arrived, so a run outlives its model only across many refits."""
_CHECKSUM = re.compile(r"[0-9a-f]{64}")


def checksum(router: RequestRouter) -> str:
    """The SHA-256 the router's model file carries (`save`): which model a run was routed with."""
    found = getattr(router, "_checksum", None)
    if found is None:
        found = _encode(router)[len(_MAGIC) :].partition(b"\n")[0].decode()
        router._checksum = found
    return found


def kept_models(path: Path) -> Path:
    """The folder beside the model at `path` where models are kept by checksum for the runs pinned to them."""
    return path.with_name(f"{path.stem}-models")


def pinned_runs(path: Path) -> Path:
    """The folder beside the model at `path` with one small file per run: the checksum of the model it is routed
    with (null: the cold start), and when it was pinned."""
    return path.with_name(f"{path.stem}-runs")


def _pin_file(path: Path, run_id: str) -> Path:
    return pinned_runs(path) / f"{hashlib.sha256(run_id.encode()).hexdigest()[:32]}.json"


def _read_pin(pin: Path) -> dict[str, Any] | None:
    """A run's pin, or None where it has none; ValueError where the file is not a pin."""
    try:
        text = pin.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    found = json.loads(text)
    model = found.get("model", "") if isinstance(found, dict) else ""
    if model is not None and not (isinstance(model, str) and _CHECKSUM.fullmatch(model)):
        raise ValueError(f"{pin} does not name a model by its checksum")
    return found


def _pinned(path: Path, run_id: str, newest: RequestRouter | None) -> RequestRouter | None:
    """The router run `run_id` is routed with: the one its first routed call used, in whichever process; where
    the run has none pinned yet, `newest`, pinned now. A pinned model no longer kept is replaced by `newest`, and
    a warning says so."""
    from tierflow.vault.notes import write_atomically

    pin = _pin_file(path, run_id)
    try:
        found = _read_pin(pin)
        if found is None:
            mine = None if newest is None else checksum(newest)
            try:
                kept = newest is not None and _keep(path, newest)
                pinned = {"run": run_id, "model": mine, "pinned": clock.now_iso()}
                write_atomically(pin, json.dumps(pinned, ensure_ascii=False), create=True)
            except FileExistsError:  # another process (or thread) pinned the run first: its model decides
                found = _read_pin(pin)
            else:
                _prune(path, models=kept)
                return newest
    except (OSError, ValueError) as exc:
        log.warning(
            "could not read or pin the request router of run %s in %s (%s): routing it with the newest model, "
            "which another process of the run may not use", run_id, pinned_runs(path), exc,
        )  # fmt: skip
        return newest
    if found is None:  # pruned in between: the run is pinned longest ago
        return newest
    want = found.get("model")
    if want is None:
        return None
    if newest is not None and checksum(newest) == want:
        return newest
    stored = kept_models(path) / f"{want}.model"
    router = load(stored) if stored.exists() else None
    if router is None or checksum(router) != want:
        log.warning(
            "run %s was first routed with the request router %s, which is no longer kept (%s): its remaining "
            "requests are routed with the newest model", run_id, want[:12], stored,
        )  # fmt: skip
        return newest
    return router


def _keep(path: Path, router: RequestRouter) -> bool:
    """Keep `router` by its checksum for the runs pinned to it; whether it was not kept already. While the model
    file at `path` is this model, the kept one is a hard link to it: no second copy on disk until a refit replaces
    the model file (a save renames a new file into place, so the kept link goes on holding this one)."""
    from tierflow.vault.notes import write_atomically

    digest = checksum(router)
    stored = kept_models(path) / f"{digest}.model"
    if stored.exists():
        return False
    stored.parent.mkdir(parents=True, exist_ok=True)
    linked = stored.with_name(f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        os.link(path, linked)
        if _file_checksum(linked) == digest:  # checked on the link: the model file may have been replaced since
            os.replace(linked, stored)
            return True
    except OSError:  # no model file, or no hard links here: a copy
        pass
    finally:
        linked.unlink(missing_ok=True)
    write_atomically(stored, _encode(router))
    return True


def _file_checksum(path: Path) -> str | None:
    """The checksum a model file carries (not checked against its contents: `load` does that)."""
    with open(path, "rb") as handle:
        head = handle.read(len(_MAGIC) + 65)
    return head[len(_MAGIC) : -1].decode("ascii", "replace") if head.startswith(_MAGIC) else None


def _prune(path: Path, *, models: bool) -> None:
    """Forget the runs pinned longest ago beyond `RUNS_PINNED`; and, after a model was newly kept (`models`), every
    kept model beyond `MODELS_KEPT` of those the remembered runs were pinned to, most recently pinned first."""
    names = list(pinned_runs(path).glob("*.json"))
    if len(names) <= RUNS_PINNED and not models:
        return
    pins: list[tuple[str, str, str | None, Path]] = []
    for pin in names:
        try:
            found = _read_pin(pin) or {}
        except (OSError, ValueError):
            found = {}  # not a pin: forgotten first
        pins.append((str(found.get("pinned", "")), pin.name, found.get("model"), pin))
    pins.sort(reverse=True)
    for *_, pin in pins[RUNS_PINNED:]:
        with contextlib.suppress(OSError):
            pin.unlink()
    if not models:
        return
    keep: list[str] = []
    for _, _, model, _ in pins[:RUNS_PINNED]:
        if model is not None and model not in keep and len(keep) < MODELS_KEPT:
            keep.append(model)
    for stored in kept_models(path).glob("*.model"):
        if stored.stem not in keep:
            with contextlib.suppress(OSError):
                stored.unlink()


@dataclass
class _Held:
    """One ledger's routers in this process."""

    router: RequestRouter | None
    """The newest: what a run routing its first request now is given, unless another process pinned it first."""
    checked: float
    """When (monotonic) this process last looked at the model file and the ledger's first answers."""
    stamp: tuple[int, int, int] | None = None
    """The model file as it was read (`_stamp`); None: there was none."""
    runs: OrderedDict[str, RequestRouter | None] = field(default_factory=OrderedDict)
    """Run id -> the router the run is routed with (`_pinned`), kept for the whole run."""
    fitting: threading.Thread | None = None
    """The background refit under way, if any (one at a time)."""


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """The model file's inode, modification time and size: each save renames a new file into place, so another
    process's save changes them."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_ino, found.st_mtime_ns, found.st_size)


_held: dict[str, _Held] = {}
_held_lock = threading.Lock()


def current(config: Config, ledger: Ledger, *, run_id: str | None = None) -> RequestRouter | None:
    """The router that decides for run `run_id`: the one the run's first routed request was decided by, in this
    process or another (`_pinned`), kept for the whole run, so that every request of a run (every student of a
    cohort) is decided by the same model. Without a run id, the newest one held (`tierflow routing explain`).

    The saved router is loaded once per process, and again once another process saved a newer one. Routing never
    fits: at most every `CHECK_EVERY_S`, a call looks at the model file and, in a run, counts the ledger's first
    answers; once `REFIT_SHARE` more have arrived (or enough with none saved), it starts a refit in a background
    thread, one at a time. A newer model, read or refitted, is given to the runs that start after it."""
    path = model_path(config)
    key = str(path)
    with _held_lock:
        held = _held.get(key)
        if held is None:
            stamp = _stamp(path)  # before reading: a save in between is seen as a change at the next look
            held = _held[key] = _Held(load(path), -math.inf, stamp)
        look = time.monotonic() - held.checked >= CHECK_EVERY_S
        if look:
            held.checked = time.monotonic()
            stamp = _stamp(path)
            if stamp != held.stamp:  # another process saved a model
                held.router, held.stamp = load(path), stamp
        router = newest = held.router
        first = bool(run_id) and run_id not in held.runs
        if run_id and not first:
            held.runs.move_to_end(run_id)
            router = held.runs[run_id]
        count = look and bool(run_id) and held.fitting is None
    if first and run_id:
        found = _pinned(path, run_id, newest)  # files: outside the lock, which every routed call takes
        with _held_lock:
            router = held.runs.setdefault(run_id, found)  # a thread of this process may have pinned it first
            held.runs.move_to_end(run_id)
            while len(held.runs) > RUNS_HELD:
                held.runs.popitem(last=False)
    if count:
        _refit_if_due(config, ledger, key, held)
    return router


def _refit_if_due(config: Config, ledger: Ledger, key: str, held: _Held) -> None:
    """Start a background refit when enough new first answers have arrived since the newest router's fit."""
    try:
        seen = first_answers(ledger)
    except Exception as exc:  # routing goes on with the router it has
        log.warning("could not count the request router's first answers: %s", exc)
        return
    with _held_lock:
        known = held.router.answers if held.router is not None else 0
        due = seen >= REFIT_MIN and seen - known >= max(REFIT_MIN, REFIT_SHARE * known)
        if not due or held.fitting is not None or _held.get(key) is not held:
            return
        held.fitting = threading.Thread(
            target=_refit_in_background, args=(config, ledger, held), name="tierflow-router-refit", daemon=True
        )
        held.fitting.start()


def _refit_in_background(config: Config, ledger: Ledger, held: _Held) -> None:
    router = None
    try:
        router = refit(config, ledger)
    except Exception as exc:  # routing goes on with the old model (or the cold start)
        log.warning("could not refit the request router: %s", exc)
    finally:
        stamp = _stamp(model_path(config))
        with _held_lock:
            if router is not None:
                held.router, held.stamp = router, stamp
            held.fitting = None


def settle() -> None:
    """Wait for this process's background refits to finish (tests; a process that wants its refit saved before
    it exits)."""
    with _held_lock:
        fitting = [h.fitting for h in _held.values() if h.fitting is not None]
    for thread in fitting:
        thread.join()


def forget() -> None:
    """Drop routers held by this process, after any refit under way has finished (tests; after `tierflow routing
    fit` in this process). Runs under way read their pin again at their next call (`_pinned`)."""
    settle()
    with _held_lock:
        _held.clear()


# Routing -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    tier: str | None
    """None: the router cannot tell (none fitted, no tier known for the request's flow and phase, or no known tier
    reaches the target, as `rule` says); the phase's evidence or the rules decide."""
    rule: str
    target: float
    value: float
    probabilities: dict[str, float]
    """tier -> P(suffices) for this request, cheapest first."""


def decide(
    config: Config,
    router: RequestRouter | None,
    *,
    flow: str,
    phase: str,
    complexity: str,
    text: str,
    value: float = 1.0,
) -> Decision:
    """The cheapest tier whose P(suffices) meets `target_for(routing.target, value)`, among the tiers known for this
    request: those whose model (`provider:model`, as the config has it now) has at least `[routing] min_requests`
    first answers of its flow and phase. A tier's P(suffices) compares it with the next tier known for the
    request. When none meets the target and every tier is known, the most likely one; else None, and `rule` says
    why. Nor does it pass over a tier it cannot judge on the way up from the rules' tier (a tier repointed at a
    model with no answers yet): then None, and the rules route, so that the model gathers its evidence."""
    routing = config.settings.routing
    target = target_for(routing.target, value)
    if router is None:
        return Decision(None, COLD_START, target, value, {})
    order = [t for t in config.tier_order if t in config.settings.tiers]
    # The evidence is the models': a tier is judged by the record of the model it is on now, whatever tier that
    # model answered as before, and a tier repointed at a model the router has not seen is unknown.
    model = {t: config.tier(t).model for t in order}
    basis = f"model of {router.fitted_at[:10]} over {router.requests} requests{_signal_basis(router)}"
    # Known per flow and phase: a model says nothing about a phase it never answered (light, having only ever
    # passed reading-notes collation, would be "certain" to pass every student's feedback).
    answered = router.phases.get(f"{flow}/{phase}", {})
    count = {t: answered.get(model[t], (0, 0.0))[0] if model[t] in router.models else 0 for t in order}
    known = [t for t in order if count[t] >= routing.min_requests]
    if not known:
        return Decision(
            None, f"request: no tier's model has {routing.min_requests} first answers for {flow}/{phase} ({basis})",
            target, value, {},
        )  # fmt: skip
    X = router.rows(flow, phase, complexity, [text])
    probabilities: dict[str, float] = {}
    chosen = None
    for i, tier in enumerate(known):  # cheapest first, and no further than needed: each tier's models cost time
        # Compared with the next tier the router knows here, not the next configured one: with light, standard
        # and deep configured and standard never answered, light is weighed against deep.
        above = model[known[i + 1]] if i + 1 < len(known) else None
        probabilities[tier] = float(router.suffices(model[tier], above, X)[0])
        if probabilities[tier] >= target:
            chosen = tier
            rule = f"request: P({tier})={probabilities[tier]:.2f} ≥ {target:.2f} (value {value:g}); {basis}"
            break
    shown = ", ".join(f"P({t})={p:.2f}" for t, p in probabilities.items())
    if chosen is None and known == order:
        chosen = max(known, key=lambda t: (probabilities[t], order.index(t)))
        rule = f"request: no tier reaches {target:.2f} (value {value:g}): {shown}; {chosen} likeliest; {basis}"
    if chosen is None:
        return Decision(
            None, f"request: no known tier reaches {target:.2f} (value {value:g}): {shown}; {basis}",
            target, value, probabilities,
        )  # fmt: skip
    rules, _ = rules_tier(config, phase=phase, complexity=complexity)
    if rules in order:
        unjudged = [t for t in order[order.index(rules) : order.index(chosen)] if t not in known]
        if unjudged:
            t = unjudged[0]
            return Decision(
                None,
                f"request: {t} is {model[t]}, with {count[t]} first answers for {flow}/{phase} (fewer than "
                f"{routing.min_requests}): a tier the router cannot judge is not passed over ({basis})",
                target, value, probabilities,
            )  # fmt: skip
    return Decision(chosen, rule, target, value, probabilities)


def _signal_basis(router: RequestRouter) -> str:
    """What the judge, edit and rating signals added to the model, for `route_rule`."""
    found = getattr(router, "labels", None) or {}  # a model saved before labels were counted has none
    n = sum(v for k, v in found.items() if k != "overturned")
    if not n:
        return ""
    return f", {n} answers labelled by judge, edit or rating signals ({found.get('overturned', 0)} failed by them)"


def request_route(
    config: Config,
    ledger: Ledger,
    *,
    flow: str,
    phase: str,
    complexity: str,
    text: str,
    value: float = 1.0,
    run_id: str = "",
) -> tuple[str | None, str]:
    """The hook `[routing] mode = "request"` calls (tierflow.core.routing.use_request_router): the tier, or None
    where the router cannot tell, and why."""
    router = current(config, ledger, run_id=run_id or None)
    decision = decide(config, router, flow=flow, phase=phase, complexity=complexity, text=text, value=value)
    return decision.tier, decision.rule


use_request_router(request_route)


# What it learned -----------------------------------------------------------------------------------------------


def _tiers_on(config: Config) -> dict[str, str]:
    """Tier -> the model (`provider:model`) it is on now, cheapest tier first."""
    return {t: config.tier(t).model for t in config.tier_order if t in config.settings.tiers}


def per_phase(router: RequestRouter, config: Config) -> list[dict[str, Any]]:
    """Per flow/phase and model: first answers and pass rate the router was fitted on, and the tiers on that model
    now."""
    on = _tiers_on(config)
    return [
        {
            "phase": phase,
            "model": model,
            "tiers": [t for t, m in on.items() if m == model],
            "first_answers": n,
            "pass_rate": round(rate, 4),
        }  # fmt: skip
        for phase, cells in sorted(router.phases.items())
        for model, (n, rate) in sorted(cells.items())
    ]


def describe(router: RequestRouter, config: Config) -> dict[str, Any]:
    """What the router learned, per model and per tier as the config maps tiers to models now (a tier on a model
    without answers: 0 first answers, no pass rate)."""
    on = _tiers_on(config)

    def learned(name: str) -> dict[str, Any]:
        m = router.models.get(name)
        if m is None:
            return {"first_answers": 0, "pass_rate": None, "calibrated": False}
        return {"first_answers": m.observations, "pass_rate": round(m.pass_rate, 4), "calibrated": m.calibrated}

    return {
        "fitted_at": router.fitted_at,
        "requests": router.requests,
        "first_answers": router.answers,
        "tiers": {t: {"model": model, **learned(model)} for t, model in on.items()},
        "models": {name: {"tiers": [t for t, m in on.items() if m == name], **learned(name)} for name in router.models},
        "gains": {
            f"{a}->{b}": {"kind": m.kind, "pairs": m.observations, "rate": round(m.pass_rate, 4)}
            for (a, b), m in router.gains.items()
        },
        "phases": per_phase(router, config),
        "signal_labels": dict(getattr(router, "labels", None) or {}),
    }


def stored_request(ledger: Ledger, request: str) -> dict[str, Any] | None:
    """A kept request by id (or a unique prefix of it), with the route rules its answers were given."""

    def read(conn: sa.Connection) -> tuple[sa.Row, list[sa.Row], list[sa.Row]] | None:
        found = conn.execute(
            sa.select(request_texts).where(request_texts.c.request_id.like(f"{request}%")).limit(2)
        ).all()
        if len(found) != 1:
            return None
        row = found[0]
        answers = conn.execute(
            sa.select(
                calls.c.tier,
                calls.c.provider,
                calls.c.model,
                calls.c.attempt,
                calls.c.outcome,
                calls.c.route_rule,
                calls.c.complexity,
            )
            .where(calls.c.request_id == row.request_id)
            .order_by(calls.c.id)
        ).all()
        judged = conn.execute(
            sa.select(signals.c.kind, signals.c.tier, signals.c.passed, signals.c.detail, signals.c.run_id)
            .where(signals.c.request_id == row.request_id)
            .order_by(signals.c.id)
        ).all()
        return row, list(answers), list(judged)

    # `read`, not `reading`: on a ledger its user may only read, read again should a writer write under it.
    read_back = ledger.read(read)
    if read_back is None:
        return None
    row, answers, judged = read_back
    return {
        "request_id": row.request_id,
        "flow": row.flow,
        "phase": row.phase,
        "text": row.text,
        "complexity": answers[0].complexity if answers else "",
        "answers": [dict(a._mapping) for a in answers],
        "signals": [dict(s._mapping) for s in judged],
    }


def scores(
    router: RequestRouter, rows: Iterable[tuple[str, str, str, str]], model: str, above: str | None
) -> list[float]:
    """P(`model` suffices, against the dearer model `above`) for many (flow, phase, complexity, text) rows at once
    (benchmarks)."""
    rows = list(rows)
    X = router._features()([(f, p, c, _routed_text(f, t)) for f, p, c, t in rows])
    return [float(v) for v in router.suffices(model, above, X)]
