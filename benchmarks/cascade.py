"""What the closed loop buys: cost and final pass rate of static routing, the cascade, and all-deep.

A workload of collate calls goes through the real Anthropic SDK to the local wire-level double. The double's
light model fails the phase's check on a given share of the items (the "hard" ones, chosen deterministically);
the standard and deep models pass every item. In one run, per failure share, side by side:

- static: the rules table, answers trusted as they come (no checks, no escalation), as tierflow did before;
- cascade: light first, the check, one informed retry, then one tier up (tierflow's default);
- all-deep: every call on the deep tier, with the same check.

Costs are the ledger's, priced by genai-prices at list prices; the pass rate is the share of final answers that
pass the check. Ratios are against all-deep, measured in the same run.

    python benchmarks/cascade.py [--calls 60] [--shares 0 20 50] [--format table|json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tierflow-bench-prefect-"))
os.environ.setdefault("ANTHROPIC_API_KEY", "bench-key")

from pydantic import BaseModel  # noqa: E402

from tierflow.core.calls import Caller, RunSettings  # noqa: E402
from tierflow.core.checks import Check  # noqa: E402
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply  # noqa: E402

LIGHT = "claude-haiku-4-5"


class Labels(BaseModel):
    summary: str
    labels: list[str]


def grounded(out: Labels) -> list[str]:
    return [] if "grounded" in out.labels else ["no label is grounded in the note's quotes"]


CHECK = Check("labels_grounded", grounded)


def hard(index: int, share: int) -> bool:
    """A deterministic, evenly spread `share` percent of the items."""
    return (index * 37) % 100 < share


def config(double: ProviderDouble, routing: str) -> str:
    return f"""
profile = "anthropic"
[providers.anthropic]
kind = "anthropic"
base_url = "{double.anthropic_base_url}"
api_key_env = "ANTHROPIC_API_KEY"
max_retries = 0
[tiers.light]
model = "anthropic:{LIGHT}"
max_output_tokens = 512
[tiers.standard]
model = "anthropic:claude-sonnet-4-6"
max_output_tokens = 512
[tiers.deep]
model = "anthropic:claude-opus-4-6"
max_output_tokens = 512
{routing}
"""


STRATEGIES = {
    "static": ("[routing]\nescalate = false\n", False),
    "cascade": ("", True),
    "all-deep": ('[routing]\nlow = "deep"\nmedium = "deep"\nhigh = "deep"\n', True),
}


def run(strategy: str, share: int, calls: int, double: ProviderDouble, folder: Path) -> dict[str, float]:
    routing, checked = STRATEGIES[strategy]
    vault = folder / f"{strategy}-{share}"
    (vault / ".tierflow").mkdir(parents=True)
    (vault / ".tierflow" / "config.toml").write_text(config(double, routing))
    caller = Caller(RunSettings(vault=str(vault), run_id=f"{strategy}-{share}", flow="bench", use_cache=False))
    passed = 0
    for i in range(calls):
        answer = caller.ask(
            phase="collate",
            complexity="low",
            system="Label the note's claims.",
            prompt=f"Item {i} (share {share}): label the claims in this reading note about feedback literacy.",
            output=Labels,
            checks=[CHECK] if checked else [],
        )
        passed += not grounded(answer.parsed)
    rows = caller.ledger.rows()
    return {"cost_usd": sum(r["cost_usd"] or 0 for r in rows), "pass_rate": passed / calls, "calls": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=60, help="Items per strategy and share.")
    parser.add_argument("--shares", type=int, nargs="+", default=[0, 20, 50], help="Percent of items light fails.")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args()
    logging.getLogger("tierflow").setLevel(logging.ERROR)  # each retry logs a warning; the table says it all

    results: list[dict[str, object]] = []
    with ProviderDouble() as double, tempfile.TemporaryDirectory() as tmp:
        for share in args.shares:

            def respond(request: DoubleRequest, share: int = share) -> Reply:
                index = int(request.last_user_text.split()[1])
                fails = request.model == LIGHT and hard(index, share)
                return Reply(data={"summary": "A note.", "labels": ["vague"] if fails else ["grounded", "claim"]})

            double.responder = respond
            measured = {s: run(s, share, args.calls, double, Path(tmp)) for s in STRATEGIES}
            deep = measured["all-deep"]
            for name, m in measured.items():
                results.append(
                    {
                        "light_failure_share": share / 100,
                        "strategy": name,
                        "calls": m["calls"],
                        "cost_usd": round(m["cost_usd"], 6),
                        "pass_rate": round(m["pass_rate"], 4),
                        "cost_vs_all_deep": round(m["cost_usd"] / deep["cost_usd"], 4) if deep["cost_usd"] else None,
                        "pass_vs_all_deep": round(m["pass_rate"] / deep["pass_rate"], 4) if deep["pass_rate"] else None,
                    }
                )
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Cascade vs static vs all-deep, {args.calls} collate calls per cell (one run)")
    for column in ("light fails", "strategy", "ledger rows", "USD", "pass rate", "USD / all-deep", "pass / all-deep"):
        table.add_column(column, justify="left" if column in ("strategy",) else "right")
    for r in results:
        table.add_row(
            f"{r['light_failure_share']:.0%}",
            str(r["strategy"]),
            str(r["calls"]),
            f"${r['cost_usd']:.4f}",
            f"{r['pass_rate']:.0%}",
            f"{r['cost_vs_all_deep']:.2f}" if r["cost_vs_all_deep"] is not None else "-",
            f"{r['pass_vs_all_deep']:.2f}" if r["pass_vs_all_deep"] is not None else "-",
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
