"""The per-request router against RouteLLM, on RouteLLM's own public MMLU results (../shared/data/routing/).

Three modes:

    # fit from a history, score prompts: {"<id>": P(light suffices)}
    python benchmarks/routing_public.py --history H.csv --prompts P.csv --out scores.json
    # RouteLLM's metrics, as its evals/evaluate.py and evals/benchmarks.py compute them
    python benchmarks/routing_public.py --evaluate --scores scores.json --labels L.csv --format json
    # make the splits from mmlu_public.csv and run both steps, for the settings and a few seeds
    python benchmarks/routing_public.py --experiment new-subjects own-history --seeds 0 1 2 [--data CSV]
    # ... with the reliability of P(light suffices) on a history recorded as a cascade
    python benchmarks/routing_public.py --experiment own-history cascade --explore 0.3 --seeds 0 --format json
    # ... with the issue's plain baseline (LR on hashed n-grams predicting weak-correct) on the same splits
    python benchmarks/routing_public.py --experiment new-subjects own-history --seeds 0 1 2 --baseline

`--history` writes each row of H.csv (`subject, prompt, weak_correct, strong_correct`) into a fresh tierflow ledger
as two past first answers to one request (flow `mmlu`, phase = the subject, weak = tier `light`, strong = tier
`deep`, outcome `ok` or `check_failed`) through the ledger's own recording functions (`Ledger.record`,
`Ledger.remember_request`, `request_identity`) - the rows the call path writes - then fits the router from that
ledger with `tierflow.learn.request_router` exactly as `tierflow routing fit` does, and scores every row of P.csv
(`id, subject, prompt`). It reads nothing else. The score is the router's P(light suffices) = 1 - P(light fails
and deep passes): the probability that the light answer is as good as the deep one. With a history of both tiers
for every request the router estimates P(light fails and deep passes) as P(deep passes) - P(light passes), floored
smoothly at 0 (`RequestRouter.gain_probability`), so the scores order the prompts by that expected gain.

`--evaluate` follows RouteLLM: the strong model is called when the score says light will fail (RouteLLM's score is
"strong needed", so its score is 1 - ours); thresholds are the 11 edges of `pandas.qcut(strong_needed, 10,
retbins=True)`, at each prompts at or above it go strong (above it, for the last edge); CPT(x%) is
`numpy.interp(weak + x (strong - weak), accuracies, strong shares)` over the points sorted by strong share; APGR
is the trapezoid area of accuracy over strong share (0-1) less the weak model's, divided by (strong - weak).
`strong_share_at_95pct_quality` is the strong share at which accuracy reaches 95% of the strong model's (by the
same interpolation). Accuracies are in percent, as RouteLLM prints them.

Settings: `new-subjects` fits on two thirds of the subjects and scores the other third (subjects it never saw);
`own-history` fits on a random half of each subject's questions and scores the other half; `cascade` splits as
`own-history` but records the history as a cascade does (deep answers light's failures and `--explore` of its
passes). Each run also carries `reliability` (`reliability`): per target, the share sent to light and the
predicted against the actual loss, for the router's P(light suffices) and, under `raw`, for 1 - the raw gain it
compared with the target before its gains were calibrated. In both, and in
`--history`/`--prompts`, a history question whose text is also scored is dropped (`without_scored`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tierflow.core.calls import request_identity
from tierflow.core.evidence import wilson
from tierflow.core.ledger import CallRecord, Ledger
from tierflow.core.providers import Request
from tierflow.core.usage import Usage
from tierflow.learn import request_router

DATA_NAME = Path("shared") / "data" / "routing" / "mmlu_public.csv"
"""Beside the repository (../shared/...), looked for in each folder above it, so that a git worktree finds it too."""
DATA = next(
    (folder / DATA_NAME for folder in Path(__file__).resolve().parents[1:] if (folder / DATA_NAME).is_file()),
    Path(__file__).resolve().parents[2] / DATA_NAME,
)
FLOW = "mmlu"
TIERS = ("light", "standard", "deep")
ROUTELLM_BEST = {"cpt50": 35.40, "cpt80": 70.31, "apgr": 0.603}


class BenchmarkError(Exception):
    """Input the benchmark cannot use, said plainly (main prints it and exits 2)."""


def record_history(ledger: Ledger, history: pd.DataFrame, *, explore: float | None = None, seed: int = 0) -> None:
    """Each row as two first answers (light = weak, deep = strong) to one request, as the call path records them.

    `explore`: the history a cascade records instead: light answers every request, deep the ones light failed
    (escalations) and this share of light's passes (shadow calls), drawn with `seed`."""
    draw = np.random.default_rng(seed)
    with ledger.transaction() as conn:
        for row in history.itertuples(index=False):
            request = Request(model="", system="", prompt=row.prompt, max_output_tokens=0)
            request_id, text = request_identity(FLOW, row.subject, request)
            ledger.remember_request_text(request_id, text, flow=FLOW, phase=row.subject, conn=conn)
            answers = [("light", row.weak_correct), ("deep", row.strong_correct)]
            if explore is not None and int(row.weak_correct) and draw.random() >= explore:
                answers = answers[:1]
            for tier, correct in answers:
                ledger.record(
                    CallRecord(
                        run_id="history", flow=FLOW, phase=row.subject, complexity="medium", tier=tier,
                        provider="routellm", model=tier, usage=Usage(), cost_usd=None, latency_ms=0.0,
                        subject=row.subject, outcome="ok" if int(correct) else "check_failed",
                        request_id=request_id,
                    ),
                    conn=conn,
                )  # fmt: skip


def without_scored(history: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    """The history less every question whose text is also scored. MMLU repeats some questions word for word (27
    rows of the public file repeat an earlier row's text; 14-17 fall across each own-history split): fitted on a
    scored question's own labels, the router would be scored on what it was told."""
    scored = set(prompts["prompt"].astype(str))
    return history[~history["prompt"].astype(str).isin(scored)]


def fit_and_score(
    history: pd.DataFrame,
    prompts: pd.DataFrame,
    *,
    explore: float | None = None,
    seed: int = 0,
    raw: dict[str, float] | None = None,
) -> tuple[dict[str, float], float]:
    """A fresh ledger from `history` (less any scored question, `without_scored`; recorded as a cascade with
    `explore`, `record_history`), the router fitted from it, and P(light suffices) for each prompt. `raw`, if
    given, is filled with 1 - the raw gain (`RequestRouter.gain_score`): what the router compared with the target
    before its gains were calibrated."""
    kept = without_scored(history, prompts)
    if len(kept) < len(history):
        print(f"{len(history) - len(kept)} history rows dropped: their text is scored", file=sys.stderr)
    history = kept
    if history.empty:
        raise BenchmarkError("the history has no rows: there is nothing to fit the router on")
    with tempfile.TemporaryDirectory(prefix="tierflow-routing-public-") as tmp:
        ledger = Ledger(f"sqlite:///{Path(tmp) / 'ledger.sqlite'}")
        if explore is None:
            record_history(ledger, history)
        else:
            record_history(ledger, history, explore=explore, seed=seed)
        t0 = time.perf_counter()
        router = request_router.fit(request_router.observations(ledger), TIERS)
        fit_s = time.perf_counter() - t0
    # The history's answers are recorded as provider `routellm`, model = the tier (`record_history`).
    light, deep = (f"routellm:{t}" for t in ("light", "deep"))
    missing = [t for t, model in (("light", light), ("deep", deep)) if model not in router.models]
    if missing:
        raise BenchmarkError(f"the router learned nothing about {' and '.join(missing)} from the history")
    rows = [(FLOW, str(s), "medium", str(p)) for s, p in zip(prompts["subject"], prompts["prompt"], strict=True)]
    scores = request_router.scores(router, rows, light, deep)
    if raw is not None:
        gains = router.gain_score(light, deep, router._features()(rows))
        raw.update({str(i): 1 - float(g) for i, g in zip(prompts["id"], gains, strict=True)})
    return {str(i): s for i, s in zip(prompts["id"], scores, strict=True)}, fit_s


TARGETS = (0.8, 0.9, 0.95)
"""The quality targets the reliability report checks (`[routing] target`, or a request's raised one)."""


def reliability(scores: dict[str, float], labels: pd.DataFrame) -> list[dict[str, object]]:
    """What the router promises against what happened, per target t: among the prompts it sends to light
    (P(light suffices) >= t), the share of all prompts sent, the predicted loss (mean 1 - P(light suffices)), and
    the actual loss: the share of them light failed and deep passed (what P(suffices) is about), with its 95%
    interval, and the net loss of accuracy against always-deep on them. The promise holds where the actual loss is
    at most 1 - t, within the interval."""
    data = labels.assign(id=labels["id"].astype(str)).set_index("id")
    p = np.array([scores[i] for i in data.index])
    weak = data["weak_correct"].astype(int).to_numpy()
    strong = data["strong_correct"].astype(int).to_numpy()
    lost = (weak == 0) & (strong == 1)
    out = []
    for target in TARGETS:
        sent = p >= target
        n = int(sent.sum())
        low, high = (round(v, 4) for v in wilson(float(lost[sent].sum()), n)) if n else (None, None)
        out.append(
            {
                "target": target,
                "allowed_loss": round(1 - target, 4),
                "to_light": round(float(sent.mean()), 4),
                "predicted_loss": round(float((1 - p[sent]).mean()), 4) if n else None,
                "actual_loss": round(float(lost[sent].mean()), 4) if n else None,
                "actual_loss_95": [low, high],
                "net_loss": round(float((strong[sent] - weak[sent]).mean()), 4) if n else None,
                "holds": None if n == 0 else bool(low <= 1 - target),
            }
        )
    return out


def baseline_scores(history: pd.DataFrame, prompts: pd.DataFrame) -> dict[str, float]:
    """The issue's yardstick, outside tierflow: one logistic regression on hashed word (1-2) and character (3-5)
    n-grams of the prompt, predicting only whether the weak model is right; the score is P(weak right)."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import LogisticRegression

    words = HashingVectorizer(n_features=2**18, ngram_range=(1, 2), alternate_sign=False)
    chars = HashingVectorizer(n_features=2**18, analyzer="char_wb", ngram_range=(3, 5), alternate_sign=False)

    def matrix(texts: pd.Series) -> object:
        return hstack([words.transform(texts.astype(str)), chars.transform(texts.astype(str))]).tocsr()

    model = LogisticRegression(C=1.0, solver="liblinear", max_iter=300)
    model.fit(matrix(history["prompt"]), history["weak_correct"].astype(int).to_numpy())
    scores = model.predict_proba(matrix(prompts["prompt"]))[:, 1]
    return {str(i): float(s) for i, s in zip(prompts["id"], scores, strict=True)}


def evaluate(
    scores: dict[str, float], labels: pd.DataFrame, num_results: int = 10, *, source: str = "the scores"
) -> dict[str, float]:
    """RouteLLM's MMLU metrics for a router whose score is P(light suffices); `source` names the scores in errors."""
    data = labels.assign(id=labels["id"].astype(str)).set_index("id")
    missing = [i for i in data.index if i not in scores]
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        raise BenchmarkError(
            f"{source} has no score for {len(missing)} of the {len(data)} labelled prompts: {shown}. Score the "
            "labels' prompts (--prompts with the same ids), or give the labels of the prompts scored."
        )
    strong_needed = pd.Series([1 - scores[i] for i in data.index], index=data.index)
    weak = data["weak_correct"].astype(int).to_numpy()
    strong = data["strong_correct"].astype(int).to_numpy()
    try:
        _, thresholds = pd.qcut(strong_needed, num_results, retbins=True)
    except ValueError as exc:  # "Bin edges must be unique"
        distinct = strong_needed.nunique()
        raise BenchmarkError(
            f"the scores take {distinct} distinct value(s) over {len(strong_needed)} prompts, too few for "
            f"{num_results} quantile thresholds: they hardly order the prompts, so there is no curve to measure "
            "(a history in which every answer passed, or every answer failed, gives every prompt one score)"
        ) from exc
    points = []
    for i, threshold in enumerate(thresholds):
        selection = (strong_needed >= threshold if i != len(thresholds) - 1 else strong_needed > threshold).to_numpy()
        results = np.where(selection, strong, weak)
        points.append((selection.sum() / len(selection) * 100, results.sum() / len(results) * 100))
    curve = pd.DataFrame(points, columns=["strong_percentage", "accuracy"]).sort_values(by=["strong_percentage"])
    weak_acc, strong_acc = weak.mean() * 100, strong.mean() * 100

    def share_at(accuracy: float) -> float:
        return float(np.interp(accuracy, curve["accuracy"], curve["strong_percentage"]))

    x = curve["strong_percentage"] / 100
    auc = np.trapezoid(curve["accuracy"], x)
    weak_auc = np.trapezoid(np.full(len(curve), weak_acc), x)
    strong_auc = np.trapezoid(np.full(len(curve), strong_acc), x)
    oracle = np.where((weak == 0) & (strong == 1), strong, weak)
    gap = strong_acc != weak_acc
    metrics = {
        "cpt50": round(share_at(0.5 * (strong_acc - weak_acc) + weak_acc), 2) if gap else None,
        "cpt80": round(share_at(0.8 * (strong_acc - weak_acc) + weak_acc), 2) if gap else None,
        "apgr": round(float((auc - weak_auc) / (strong_auc - weak_auc)), 4) if gap else None,
        "strong_share_at_95pct_quality": round(share_at(0.95 * strong_acc), 2),
        "weak_accuracy": round(float(weak_acc), 2),
        "strong_accuracy": round(float(strong_acc), 2),
        "oracle_accuracy": round(float(oracle.mean() * 100), 2),
        "oracle_strong_share": round(float(((weak == 0) & (strong == 1)).mean() * 100), 2),
        "prompts": len(data),
    }
    if not gap:
        metrics["note"] = (
            f"cpt50, cpt80 and apgr are null: the weak and strong models are equally accurate on these labels "
            f"({weak_acc:.2f}%), so there is no gap for routing to recover"
        )
    return metrics


def mean(values: list[float | None]) -> float | None:
    """The mean of the values that are defined (None when none is)."""
    defined = [v for v in values if v is not None]
    return round(float(np.mean(defined)), 4) if defined else None


def split(data: pd.DataFrame, setting: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    if setting == "new-subjects":
        subjects = np.array(sorted(data["subject"].unique()))
        rng.shuffle(subjects)
        held = set(subjects[: len(subjects) // 3])
        test = data["subject"].isin(held).to_numpy()
    elif setting in ("own-history", "cascade"):
        test = np.zeros(len(data), dtype=bool)
        for _, index in data.groupby("subject").indices.items():
            chosen = rng.permutation(index)[: len(index) // 2]
            test[chosen] = True
    else:
        raise SystemExit(f"unknown setting {setting!r}: use new-subjects, own-history or cascade")
    return data[~test], data[test]


def experiment(
    data_path: Path,
    settings: list[str],
    seeds: list[int],
    workdir: Path,
    *,
    baseline: bool = False,
    explore: float = 0.05,
) -> dict[str, object]:
    """For each setting and seed: H/P/L files, then both steps through the files, as a user would run them; and
    the reliability report (`reliability`) of the router's P(light suffices), and of what it was before its gains
    were calibrated (`raw`). `cascade` splits as `own-history` and records the history as a cascade exploring
    `explore` of light's passes."""
    data = read_csv(data_path, "--data")
    data.insert(0, "id", [f"q{i}" for i in range(len(data))])
    out: dict[str, object] = {"data": str(data_path), "seeds": seeds, "routellm_best": ROUTELLM_BEST}
    for setting in settings:
        runs = []
        for seed in seeds:
            history, test = split(data, setting, seed)
            whole = len(history)
            history = without_scored(history, test)
            base = workdir / f"{setting}-{seed}"
            h, p, lab, s = (base.with_name(f"{base.name}-{n}") for n in ("H.csv", "P.csv", "L.csv", "scores.json"))
            history[["subject", "prompt", "weak_correct", "strong_correct"]].to_csv(h, index=False)
            test[["id", "subject", "prompt"]].to_csv(p, index=False)
            test[["id", "weak_correct", "strong_correct"]].to_csv(lab, index=False)
            raw: dict[str, float] = {}
            shared = explore if setting == "cascade" else None
            scores, fit_s = fit_and_score(pd.read_csv(h), pd.read_csv(p), explore=shared, seed=seed, raw=raw)
            s.write_text(json.dumps(scores))
            metrics = evaluate(json.loads(s.read_text()), pd.read_csv(lab))
            runs.append(
                {
                    "seed": seed,
                    "history": len(history),
                    "dropped_from_history": whole - len(history),
                    "scored": len(test),
                    "fit_s": round(fit_s, 1),
                    **({"explore": explore} if shared is not None else {}),
                    **metrics,
                    "reliability": reliability(scores, pd.read_csv(lab)),
                    "raw": {
                        **_ranking(evaluate(raw, pd.read_csv(lab))),
                        "reliability": reliability(raw, pd.read_csv(lab)),
                    },
                }
            )
            if baseline:
                runs[-1]["baseline"] = evaluate(baseline_scores(pd.read_csv(h), pd.read_csv(p)), pd.read_csv(lab))
            print(f"{setting} seed {seed}: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
        keys = ("cpt50", "cpt80", "apgr", "strong_share_at_95pct_quality")
        out[setting] = {"runs": runs, "mean": {k: mean([r[k] for r in runs]) for k in keys}}
        if baseline:
            means = {k: mean([r["baseline"][k] for r in runs]) for k in keys}
            out[setting]["baseline_mean"] = means
    return out


def _ranking(metrics: dict[str, object]) -> dict[str, object]:
    return {k: metrics[k] for k in ("cpt50", "cpt80", "apgr")}


def read_csv(path: Path, option: str) -> pd.DataFrame:
    if not path.is_file():
        hint = (
            " (the default: ../shared/data/routing/ beside the repository or a folder above it)"
            if (option == "--data" and path == DATA)
            else ""
        )
        raise BenchmarkError(f"{path}: no such file{hint}. Give the CSV with {option} PATH.")
    return pd.read_csv(path)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", type=Path)
    parser.add_argument("--prompts", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--evaluate", action="store_true")
    parser.add_argument("--scores", type=Path)
    parser.add_argument("--labels", type=Path)
    parser.add_argument("--format", choices=("json", "table"), default="table")
    parser.add_argument("--experiment", nargs="+", choices=("new-subjects", "own-history", "cascade"))
    parser.add_argument(
        "--explore", type=float, default=0.05, help="cascade: the share of light's passes deep also answered"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--seed", type=int, help="one seed (same as --seeds N)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--baseline", action="store_true", help="also score the issue's plain LR predicting weak-correct, same splits"
    )
    parser.add_argument("--workdir", type=Path, help="keep the split files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.experiment:
        seeds = [args.seed] if args.seed is not None else args.seeds
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            result = experiment(
                args.data, args.experiment, seeds, args.workdir, baseline=args.baseline, explore=args.explore
            )
        else:
            with tempfile.TemporaryDirectory(prefix="tierflow-routing-public-") as tmp:
                result = experiment(
                    args.data, args.experiment, seeds, Path(tmp), baseline=args.baseline, explore=args.explore
                )
        _show(result, args.format)
        return 0
    if args.evaluate:
        if not (args.scores and args.labels):
            parser.error("--evaluate needs --scores and --labels")
        if not args.scores.is_file():
            raise BenchmarkError(f"{args.scores}: no such file. Give the scores with --scores PATH.")
        scores = json.loads(args.scores.read_text())
        _show(evaluate(scores, read_csv(args.labels, "--labels"), source=str(args.scores)), args.format)
        return 0
    if not (args.history and args.prompts and args.out):
        parser.error("give --history, --prompts and --out; or --evaluate; or --experiment")
    scores, _ = fit_and_score(read_csv(args.history, "--history"), read_csv(args.prompts, "--prompts"))
    args.out.write_text(json.dumps(scores))
    print(f"{len(scores)} scores written to {args.out}", file=sys.stderr)
    if len(set(scores.values())) == 1:
        print(
            "warning: every prompt has the same score: the history does not tell the prompts apart (every answer "
            "passed, or every answer failed, on each tier), so --evaluate has no order to measure",
            file=sys.stderr,
        )
    return 0


def _show(result: dict[str, object], form: str) -> None:
    if form == "json":
        print(json.dumps(result, indent=2, allow_nan=False))  # NaN is not JSON: evaluate says null, and why
        return
    writer = csv.writer(sys.stdout, delimiter="\t")
    for key, value in result.items():
        writer.writerow([key, json.dumps(value) if isinstance(value, (dict, list)) else value])


if __name__ == "__main__":
    raise SystemExit(main())
