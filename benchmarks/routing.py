"""Where learned routing lands: cost and pass rate of all-deep, the static rules, suggested, adaptive and
per-request routing.

A synthetic workload with known per-tier pass rates goes through the real Anthropic SDK to the local wire-level
double, priced at list prices by genai-prices. Items within a phase differ in how hard they are: an easy item is a
few short English highlights; a hard one is long, draws on several sources and is not in English (German, French or
Greek). The double's pass rates depend on the item's kind and the tier (`PASS_RATES`): the light tier fails most
hard items and passes nearly every easy one. Each item also has a fixed draw; a tier passes the check on an item
when the draw is below its pass rate for the item's kind, so a stronger tier passes every item a weaker one does.
Phase routing (rules, suggested, adaptive) can only pick one tier per phase; request routing (`mode = "request"`,
its model fitted on the history, as `tierflow routing fit` does) picks one per item. In one run:

1. history: a training workload started on the light tier for every phase (what `tierflow trial`, or a cold start
   on light, gives), with the cascade on and `explore = 1.0` (every passing answer is also tried one tier up, in
   shadow), so every tier collects evidence;
2. evaluation, on fresh items, each strategy with escalation off (routing alone decides the quality), then with the
   cascade on: all-deep; the static rules; the rules with `tierflow routing suggest` applied; adaptive mode;
   request mode.

Ratios are to all-deep in the same run. RouteLLM's published anchor is 85% cheaper at 95% of the strong model's
quality (cost ratio 0.15, quality ratio 0.95).

    python benchmarks/routing.py [--train 150] [--eval 120] [--format table|json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tierflow-bench-prefect-"))
os.environ.setdefault("ANTHROPIC_API_KEY", "bench-key")

from pydantic import BaseModel  # noqa: E402

from tierflow.core.calls import Caller, RunSettings  # noqa: E402
from tierflow.core.checks import Check  # noqa: E402
from tierflow.core.config import load_config  # noqa: E402
from tierflow.core.ledger import Ledger  # noqa: E402
from tierflow.learn import request_router  # noqa: E402
from tierflow.learn.routing import apply, suggestions  # noqa: E402
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply  # noqa: E402

MODELS = {"claude-haiku-4-5": "light", "claude-sonnet-4-6": "standard", "claude-opus-4-6": "deep"}
PHASES = {"collate": "low", "synthesise": "high", "draft": "medium"}
PASS_RATES = {
    "easy": {"light": 0.97, "standard": 0.99, "deep": 1.0},
    "hard": {"light": 0.15, "standard": 0.85, "deep": 0.99},
}
"""The workload's truth: the share of items of each kind that each tier passes."""
HARD_SHARE = {"collate": 0.4, "synthesise": 0.6, "draft": 0.25}
"""The share of hard items per phase. Per phase, light then passes 64% of collate, 48% of synthesise and 77% of
draft items: no single tier per phase is both cheap and good, while per item the light tier suffices for the easy
ones. The rules table (low -> light, medium -> standard, high -> deep) fits none of the phases."""
FOREIGN = {
    "de": "Die Quelle beschreibt ausführlich, wie die Lehrkräfte die Rückmeldungen über mehrere Wochen auswerteten, "
    "und vergleicht die Ergebnisse mit zwei früheren Untersuchungen aus anderen Bundesländern.",
    "fr": "La source décrit en détail comment les enseignants ont analysé les retours pendant plusieurs semaines, "
    "et compare les résultats avec deux études antérieures menées dans d'autres académies.",
    "el": "Η πηγή περιγράφει αναλυτικά πώς οι εκπαιδευτικοί ανέλυσαν τις απαντήσεις επί αρκετές εβδομάδες "
    "και συγκρίνει τα αποτελέσματα με δύο προηγούμενες μελέτες από άλλες περιφέρειες.",
}


class Out(BaseModel):
    ok: bool


CHECK = Check("ok", lambda out: [] if out.ok else ["the answer is not grounded"])


def difficulty(phase: str, item: str) -> float:
    """The item's fixed draw in [0, 1]: a tier passes it when the draw is below its pass rate."""
    return _unit(f"{phase}:{item}")


def _unit(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def kind(phase: str, item: str) -> str:
    return "hard" if _unit(f"kind:{phase}:{item}") < HARD_SHARE[phase] else "easy"


def item_text(phase: str, item: str) -> str:
    """The request: a few short English highlights (easy), or several long sources in another language (hard)."""
    head = f"item {phase} {item} of the workload"
    if kind(phase, item) == "easy":
        count = 2 + int(_unit(f"n:{item}") * 3)
        return (
            head + "\n" + "\n".join(f"- Highlight {n}: the author states the main claim clearly." for n in range(count))
        )
    language = sorted(FOREIGN)[int(_unit(f"lang:{item}") * len(FOREIGN))]
    sources = 3 + int(_unit(f"n:{item}") * 4)
    return head + "\n" + "\n\n".join(f"Source {n + 1}:\n" + " ".join([FOREIGN[language]] * 3) for n in range(sources))


def respond(request: DoubleRequest) -> Reply:
    _, phase, item = request.last_user_text.split()[:3]
    rate = PASS_RATES[kind(phase, item)][MODELS[request.model]]
    return Reply(data={"ok": difficulty(phase, item) < rate})


def config_text(double: ProviderDouble, routing: str) -> str:
    tiers = "\n".join(
        f'[tiers.{tier}]\nmodel = "anthropic:{model}"\nmax_output_tokens = 512' for model, tier in MODELS.items()
    )
    return f"""profile = "anthropic"
[providers.anthropic]
kind = "anthropic"
base_url = "{double.anthropic_base_url}"
api_key_env = "ANTHROPIC_API_KEY"
max_retries = 0
{tiers}
{routing}
"""


def run(vault: Path, run_id: str, items: range, prefix: str) -> dict[str, Any]:
    caller = Caller(RunSettings(vault=str(vault), run_id=run_id, flow="bench", use_cache=False))
    passed = total = 0
    for n in items:
        for phase, complexity in PHASES.items():
            answer = caller.ask(
                phase=phase,
                complexity=complexity,
                system="Answer the item.",
                prompt=item_text(phase, f"{prefix}{n}"),
                subject=f"{phase} {prefix}{n}",
                output=Out,
                checks=[CHECK],
            )
            passed += answer.parsed.ok
            total += 1
    rows = caller.ledger.rows(run_id=run_id)
    first: dict[str, dict[str, int]] = {"easy": {}, "hard": {}}  # per item kind, the tier each item was routed to
    seen: set[str] = set()
    for r in rows:  # oldest first: an item's first row is its routed first answer
        if r["subject"] not in seen:
            seen.add(r["subject"])
            tiers = first[kind(*r["subject"].split())]
            tiers[r["tier"]] = tiers.get(r["tier"], 0) + 1
    return {
        "cost_usd": sum(r["cost_usd"] or 0 for r in rows),
        "pass_rate": passed / total,
        "calls": len(rows),
        "first_tier": first,
    }


def vault_with(folder: Path, name: str, text: str, history: Path | None = None) -> Path:
    vault = folder / name
    (vault / ".tierflow").mkdir(parents=True)
    (vault / ".tierflow" / "config.toml").write_text(text)
    if history is not None:  # adaptive routing, suggestions and the request router read the history's evidence
        copy_ledger(history / ".tierflow" / "ledger.sqlite", vault / ".tierflow" / "ledger.sqlite")
    return vault


def copy_ledger(source: Path, target: Path) -> None:
    """Copy a SQLite ledger with every call committed to it, through SQLite's backup.

    The newest calls are still in the ledger's write-ahead log, which a background thread checkpoints into the file
    every 64 write transactions: a copy of the file alone left out the last few items (how many depended on where
    the last checkpoint fell, and so on the schema and on thread timing), and every strategy learnt from less.
    """
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=150, help="History items per phase.")
    parser.add_argument("--eval", type=int, default=120, help="Evaluation items per phase and strategy.")
    parser.add_argument("--min-requests", type=int, default=40, help="`[routing] min_requests` for request mode.")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args()
    logging.getLogger("tierflow").setLevel(logging.ERROR)

    results = []
    learned: dict[str, str] = {}
    evidence: dict[str, int] = {}
    with ProviderDouble() as double, tempfile.TemporaryDirectory() as tmp:
        double.responder = respond
        folder = Path(tmp)
        # The history starts every phase on the cheap tier (as `tierflow trial` or a cold start on light would),
        # escalates what fails, and tries every passing answer one tier up in shadow.
        training = (
            '[routing]\nlow = "light"\nmedium = "light"\nhigh = "light"\nceiling = "deep"\n'
            'mode = "adaptive"\nexplore = 1.0\nmin_evidence = 100000\n'
        )
        history = vault_with(folder, "history", config_text(double, training))
        run(history, "history", range(args.train), "t")
        evaluate = range(args.eval)
        for cascade in (False, True):
            esc = "true" if cascade else "false"
            strategies = {
                "all-deep": f'[routing]\nlow = "deep"\nmedium = "deep"\nhigh = "deep"\nescalate = {esc}\n',
                "rules": f"[routing]\nescalate = {esc}\n",
                "suggested": f"[routing]\nescalate = {esc}\n",
                "adaptive": f'[routing]\nmode = "adaptive"\nexplore = 0.05\nescalate = {esc}\n',
                "request": f'[routing]\nmode = "request"\nmin_requests = {args.min_requests}\nescalate = {esc}\n',
            }
            measured = {}
            for name, routing in strategies.items():
                label = f"{name}-{'cascade' if cascade else 'alone'}"
                vault = vault_with(folder, label, config_text(double, routing), history if name != "rules" else None)
                if name == "suggested":
                    config = load_config(vault)
                    found = suggestions(config, Ledger(config.ledger_url), flow="bench")
                    learned = {s.phase: s.suggested_tier for s in found}
                    if os.environ.get("TIERFLOW_BENCH_DEBUG"):
                        print(json.dumps([s.as_json() for s in found], indent=1))
                    apply(vault / ".tierflow" / "config.toml", [s for s in found if s.suggested_tier != s.current_tier])
                if name == "request":  # fitted on the history, as `tierflow routing fit` does
                    config = load_config(vault)
                    fitted = request_router.refit(config, Ledger(config.ledger_url))
                    request_router.forget()
                    tiers = request_router.describe(fitted, config)["tiers"]
                    evidence = {t: found["first_answers"] for t, found in tiers.items() if found["first_answers"]}
                measured[name] = run(vault, label, evaluate, "e")
            deep = measured["all-deep"]
            for name, m in measured.items():
                results.append(
                    {
                        "escalation": "cascade" if cascade else "off",
                        "strategy": name,
                        "calls": m["calls"],
                        "cost_usd": round(m["cost_usd"], 6),
                        "pass_rate": round(m["pass_rate"], 4),
                        "cost_vs_all_deep": round(m["cost_usd"] / deep["cost_usd"], 4),
                        "quality_vs_all_deep": round(m["pass_rate"] / deep["pass_rate"], 4),
                        "first_tier": m["first_tier"],
                    }
                )
    if args.format == "json":
        print(json.dumps({"learned": learned, "request_evidence": evidence, "results": results}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Routing strategies on {args.eval} items x 3 phases (history: {args.train} items)")
    for column in (
        "escalation",
        "strategy",
        "ledger rows",
        "USD",
        "pass rate",
        "cost / all-deep",
        "quality / all-deep",
        "easy items: first tier",
        "hard items: first tier",
    ):
        table.add_column(column, justify="left" if column in ("escalation", "strategy") else "right")
    for r in results:
        table.add_row(
            r["escalation"],
            r["strategy"],
            str(r["calls"]),
            f"${r['cost_usd']:.4f}",
            f"{r['pass_rate']:.1%}",
            f"{r['cost_vs_all_deep']:.2f}",
            f"{r['quality_vs_all_deep']:.3f}",
            _tiers(r["first_tier"]["easy"]),
            _tiers(r["first_tier"]["hard"]),
        )
    console = Console(width=180)
    console.print(table)
    console.print(f"Learned from the history (routing suggest): {learned}.")
    console.print(f"Request router's first answers per tier (fitted on the history): {evidence}.")
    console.print("RouteLLM's anchor: 0.15 of the strong model's cost at 0.95 of its quality.")


def _tiers(counts: dict[str, int]) -> str:
    return " ".join(f"{t[0]}{counts[t]}" for t in ("light", "standard", "deep") if counts.get(t))


if __name__ == "__main__":
    main()
