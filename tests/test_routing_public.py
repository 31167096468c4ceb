"""benchmarks/routing_public.py: the router fitted from a history written into a fresh ledger, scored on prompts
it never saw, and RouteLLM's metrics over those scores."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pandas as pd
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "routing_public.py"
_spec = importlib.util.spec_from_file_location("routing_public", _PATH)
routing_public = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(routing_public)

# Three kinds of question: the weak model fails and the strong one passes (a strong call pays), both fail (a
# strong call is wasted), both pass.
KINDS = {
    "gain": (["integral", "derivative", "limit", "series", "matrix"], 0, 1),
    "hopeless": (["quaternion", "homology", "sheaf", "functor", "manifold"], 0, 0),
    "easy": (["capital", "river", "colour", "animal", "city"], 1, 1),
}


def _rows(n: int, seed: int, subject_of) -> pd.DataFrame:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        kind = list(KINDS)[i % 3]
        words, weak, strong = KINDS[kind]
        prompt = "Which of the following " + " ".join(rnd.choice(words) for _ in range(6)) + f" {i}?\nA. 1\nB. 2"
        rows.append({"id": f"q{i}", "kind": kind, "subject": subject_of(kind, i), "prompt": prompt,
                     "weak_correct": weak, "strong_correct": strong})  # fmt: skip
    return pd.DataFrame(rows)


def test_public_benchmark_sends_strong_calls_where_the_strong_model_adds_something():
    """Prompts where the weak model fails and the strong one passes score lowest P(light suffices); prompts both
    fail score no lower than those both pass (a strong call there adds nothing), though the weak model fails them."""
    history = _rows(240, 0, lambda kind, i: f"s{i % 4}")
    prompts = _rows(60, 1, lambda kind, i: "unseen")
    scores, _ = routing_public.fit_and_score(history, prompts[["id", "subject", "prompt"]])
    by_kind = prompts.assign(score=prompts["id"].map(scores)).groupby("kind")["score"]
    assert by_kind.max()["gain"] < by_kind.min()["hopeless"]
    assert by_kind.max()["gain"] < by_kind.min()["easy"]
    metrics = routing_public.evaluate(scores, prompts)
    # The oracle's order: the strong model's accuracy with a third of the calls, an APGR of 1 - 1/6 over deciles.
    assert metrics["apgr"] > 0.8 and metrics["cpt80"] < 34


def test_evaluate_gives_random_order_about_half_the_gap():
    """RouteLLM's APGR over scores that ignore the prompt is about 0.5, and CPT(50%) about 50%."""
    rnd = random.Random(3)
    labels = pd.DataFrame(
        [{"id": f"q{i}", "weak_correct": int(rnd.random() < 0.6), "strong_correct": int(rnd.random() < 0.8)}
         for i in range(4000)]
    )  # fmt: skip
    metrics = routing_public.evaluate({f"q{i}": rnd.random() for i in range(4000)}, labels)
    assert abs(metrics["apgr"] - 0.5) < 0.08 and abs(metrics["cpt50"] - 50) < 10


def test_the_default_data_is_found_above_a_worktree_and_a_missing_file_is_named_with_the_option(tmp_path, capsys):
    data = tmp_path / "shared" / "data" / "routing" / "mmlu_public.csv"
    data.parent.mkdir(parents=True)
    data.write_text("subject,prompt,weak_correct,strong_correct\n")
    copy = tmp_path / "wt" / "fix" / "benchmarks" / "routing_public.py"  # a worktree two folders below
    copy.parent.mkdir(parents=True)
    copy.write_text(_PATH.read_text())
    spec = importlib.util.spec_from_file_location("routing_public_in_a_worktree", copy)
    moved = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(moved)
    assert data == moved.DATA

    missing = tmp_path / "nowhere.csv"
    assert routing_public.main(["--experiment", "own-history", "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: no such file" in err and "--data PATH" in err


def test_an_empty_history_and_a_one_class_history_are_refused_with_a_reason(tmp_path):
    prompts = _rows(30, 1, lambda kind, i: "unseen")[["id", "subject", "prompt"]]
    empty = pd.DataFrame(columns=["subject", "prompt", "weak_correct", "strong_correct"])
    with pytest.raises(routing_public.BenchmarkError, match="no rows"):
        routing_public.fit_and_score(empty, prompts)
    # Every answer passed on both tiers: the router cannot tell the prompts apart, so there is no curve.
    passed = _rows(60, 0, lambda kind, i: f"s{i % 4}").assign(weak_correct=1, strong_correct=1)
    scores, _ = routing_public.fit_and_score(passed, prompts)
    assert len(set(scores.values())) == 1
    labels = _rows(30, 1, lambda kind, i: "unseen")
    with pytest.raises(routing_public.BenchmarkError, match="1 distinct value"):
        routing_public.evaluate(scores, labels)


def test_labels_without_a_gap_give_null_metrics_that_say_why_and_valid_json(tmp_path, capsys):
    rnd = random.Random(5)
    labels = pd.DataFrame([{"id": f"q{i}", "weak_correct": i % 2, "strong_correct": i % 2} for i in range(200)])
    (tmp_path / "L.csv").write_text(labels.to_csv(index=False))
    (tmp_path / "s.json").write_text(json.dumps({f"q{i}": rnd.random() for i in range(200)}))
    args = ["--evaluate", "--scores", str(tmp_path / "s.json"), "--labels", str(tmp_path / "L.csv"), "--format", "json"]
    assert routing_public.main(args) == 0

    def no_nan(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    metrics = json.loads(capsys.readouterr().out, parse_constant=no_nan)
    assert metrics["apgr"] is None and metrics["cpt50"] is None and "no gap" in metrics["note"]


def test_no_scored_question_is_in_the_history_the_router_is_fitted_on(tmp_path, monkeypatch):
    """MMLU repeats some questions word for word; a question whose text is scored is dropped from the history, so
    the router is never scored on a question it was fitted on (in the split files, and from a given history)."""
    rows = _rows(240, 0, lambda kind, i: f"s{i % 4}").drop(columns=["id", "kind"])
    data = pd.concat([rows, rows.iloc[:40]], ignore_index=True)  # 40 questions twice, as in the public file
    path = tmp_path / "data.csv"
    data.to_csv(path, index=False)
    result = routing_public.experiment(path, ["own-history"], [0], tmp_path)
    history, scored = (pd.read_csv(tmp_path / f"own-history-0-{n}.csv") for n in ("H", "P"))
    assert not set(history["prompt"]) & set(scored["prompt"])
    run = result["own-history"]["runs"][0]
    assert run["dropped_from_history"] > 0 and run["history"] == len(history) == 140 - run["dropped_from_history"]

    fitted_on = []
    real = routing_public.record_history
    monkeypatch.setattr(routing_public, "record_history", lambda ledger, h: (fitted_on.append(h), real(ledger, h)))
    prompts = rows.iloc[:10].assign(id=[f"p{i}" for i in range(10)])[["id", "subject", "prompt"]]
    routing_public.fit_and_score(rows, prompts)
    assert len(fitted_on[0]) == len(rows) - 10 and not set(fitted_on[0]["prompt"]) & set(prompts["prompt"])


def test_scores_missing_a_labelled_id_are_refused_naming_the_ids(tmp_path, capsys):
    labels = pd.DataFrame([{"id": f"q{i}", "weak_correct": i % 2, "strong_correct": 1} for i in range(210)])
    (tmp_path / "L.csv").write_text(labels.to_csv(index=False))
    scores = {f"q{i}": i / 210 for i in range(210) if i not in (201, 205)}
    (tmp_path / "s.json").write_text(json.dumps(scores))
    args = ["--evaluate", "--scores", str(tmp_path / "s.json"), "--labels", str(tmp_path / "L.csv")]
    assert routing_public.main(args) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert said.startswith(f"error: {tmp_path / 's.json'} has no score for 2 of the 210 labelled prompts: q201, q205")
