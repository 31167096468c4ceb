"""How much of a budget's cap a run really gets to use, and whether it ever overshoots.

Each reservation assumes the tier's full `max_output_tokens`, but real answers are often a tenth of it. Without
clamping, a `halt` run stops as soon as one full worst case no longer fits; with clamping (the default), the last
calls are sent with the output allowance the budget still affords, down to `min_output_tokens`. Measured in one
run through the real Anthropic SDK against the local wire-level double, priced at list prices, for `halt` and
`downgrade` budgets, with and without clamping:

    python benchmarks/budget_utilisation.py [--caps 2] [--format table|json]

`--caps N` sets each cap to N times one call's worst case on the routed tier.
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

from tierflow.core.calls import Caller, RunSettings  # noqa: E402
from tierflow.core.errors import BudgetExceeded  # noqa: E402
from tierflow.testing.double import ProviderDouble, Reply  # noqa: E402

PROMPT = "Summarise the week's reading on feedback literacy for a first-year module team."


def config(double: ProviderDouble, budget: str) -> str:
    return f"""profile = "anthropic"
[providers.anthropic]
kind = "anthropic"
base_url = "{double.anthropic_base_url}"
api_key_env = "ANTHROPIC_API_KEY"
max_retries = 0
[tiers.light]
model = "anthropic:claude-haiku-4-5"
max_output_tokens = 1024
[tiers.standard]
model = "anthropic:claude-sonnet-4-6"
max_output_tokens = 2048
[tiers.deep]
model = "anthropic:claude-opus-4-6"
max_output_tokens = 4096
{budget}
"""


def measure(folder: Path, double: ProviderDouble, policy: str, clamp: bool, cap: float) -> dict[str, object]:
    name = f"{policy}-{'clamp' if clamp else 'full'}"
    vault = folder / name
    (vault / ".tierflow").mkdir(parents=True)
    floor = '\nfloor = "light"' if policy == "downgrade" else ""
    budget = f'[budgets.run]\nusd = {cap!r}\npolicy = "{policy}"{floor}\nclamp_output = {str(clamp).lower()}\n'
    (vault / ".tierflow" / "config.toml").write_text(config(double, budget))
    caller = Caller(RunSettings(vault=str(vault), run_id=name, flow="bench", use_cache=False))
    calls = 0
    try:
        for n in range(10_000):  # bounded; the budget stops it long before
            caller.ask(phase="synthesise", complexity="medium", system="Be concise.", prompt=f"{PROMPT} ({n})")
            calls += 1
    except BudgetExceeded:
        pass
    spent = sum(r["cost_usd"] or 0 for r in caller.ledger.rows(run_id=name))
    return {
        "policy": policy,
        "clamping": clamp,
        "calls": calls,
        "cap_usd": round(cap, 6),
        "spent_usd": round(spent, 6),
        "share_of_cap_used": round(spent / cap, 4),
        "overshoot_usd": round(max(0.0, spent - cap), 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--caps", type=float, default=2, help="The cap, in worst cases of one call.")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args()
    logging.getLogger("tierflow").setLevel(logging.ERROR)
    results = []
    with ProviderDouble() as double, tempfile.TemporaryDirectory() as tmp:
        # Answers of about a tenth of the standard tier's 2,048-token allowance.
        double.responder = lambda request: Reply(text="The readings agree that feedback is a dialogue. " * 25)
        probe_vault = Path(tmp) / "probe"
        (probe_vault / ".tierflow").mkdir(parents=True)
        (probe_vault / ".tierflow" / "config.toml").write_text(config(double, ""))
        probe = Caller(RunSettings(vault=str(probe_vault), run_id="probe", flow="bench"))
        routed, request = probe.build(phase="synthesise", complexity="medium", system="Be concise.", prompt=PROMPT)
        cap = args.caps * float(probe.estimate(routed, request).usd)
        for policy in ("halt", "downgrade"):
            for clamp in (False, True):
                results.append(measure(Path(tmp), double, policy, clamp, cap))
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Budget utilisation: cap = {args.caps:g} worst cases, answers about a tenth of the allowance")
    for column in ("policy", "clamping", "calls", "cap", "spent", "share of cap used", "overshoot"):
        table.add_column(column, justify="left" if column in ("policy", "clamping") else "right")
    for r in results:
        table.add_row(
            str(r["policy"]),
            "on" if r["clamping"] else "off",
            str(r["calls"]),
            f"${r['cap_usd']:.4f}",
            f"${r['spent_usd']:.4f}",
            f"{r['share_of_cap_used']:.1%}",
            f"${r['overshoot_usd']:.6f}",
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
