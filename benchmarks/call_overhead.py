"""How much latency tierflow's call path adds over a bare SDK call to the same local double.

Both are measured side by side in one run, interleaved, against one local wire-level double: the bare
`anthropic` client's `messages.create`, and `Caller.ask` (route, budget reservation, SDK call, pricing,
ledger row, settlement, answer cache write). Once outside Prefect, once inside a Prefect task.

    python benchmarks/call_overhead.py [-n 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tierflow-bench-prefect-"))

import anthropic  # noqa: E402

from tierflow.core.calls import Caller, RunSettings  # noqa: E402
from tierflow.testing.double import ProviderDouble  # noqa: E402

TARGET_MS = 15.0


def measure(n: int, double: ProviderDouble, vault: Path, run_id: str) -> tuple[list[float], list[float]]:
    """Median-ready samples (ms) of bare SDK calls and tierflow calls, interleaved."""
    client = anthropic.Anthropic(api_key="bench", base_url=double.anthropic_base_url, max_retries=0)
    config = vault / "config.toml"
    caller = Caller(
        RunSettings(vault=str(vault), config_path=str(config), run_id=run_id, flow="bench", use_cache=False)
    )
    system, prompt = (
        "You are terse.",
        "Summarise: feedback closes the gap between current and desired performance.",
    )
    for _ in range(10):  # warm both paths: connections, tokenizer, price tables, SQLite pages
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=256,
            system=system,
            messages=[{"role": "user", "content": prompt}],
        )
        caller.ask(phase="collate", complexity="low", system=system, prompt=prompt)
    bare, tierflow = [], []
    for i in range(n):
        text = f"{prompt} ({i})"
        t0 = time.perf_counter()
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=256,
            system=system,
            messages=[{"role": "user", "content": text}],
        )
        bare.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        caller.ask(phase="collate", complexity="low", system=system, prompt=text)
        tierflow.append((time.perf_counter() - t0) * 1000)
    return bare, tierflow


def report(label: str, bare: list[float], tierflow: list[float]) -> float:
    b, t = statistics.median(bare), statistics.median(tierflow)
    added = t - b
    verdict = "ok" if added <= TARGET_MS else "OVER TARGET"
    print(
        f"{label:<22} n={len(bare):<4} bare SDK median {b:7.2f} ms   tierflow median {t:7.2f} ms   "
        f"ratio {t / b:5.2f}x   added {added:6.2f} ms  (target <= {TARGET_MS:.0f} ms: {verdict})"
    )
    return added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=300, help="calls per path (at least 200)")
    args = parser.parse_args()
    n = max(200, args.n)
    os.environ["ANTHROPIC_API_KEY"] = "bench"
    with ProviderDouble() as double, tempfile.TemporaryDirectory() as tmp:
        vault = Path(tmp)
        (vault / "config.toml").write_text(
            f'profile = "anthropic"\n[providers.anthropic]\nkind = "anthropic"\n'
            f'base_url = "{double.anthropic_base_url}"\napi_key_env = "ANTHROPIC_API_KEY"\nmax_retries = 0\n'
            '[tiers.light]\nmodel = "anthropic:claude-haiku-4-5"\nmax_output_tokens = 256\n'
            '[tiers.standard]\nmodel = "anthropic:claude-sonnet-4-6"\n'
            '[tiers.deep]\nmodel = "anthropic:claude-opus-4-6"\n'
        )
        print("tierflow call overhead against a local Anthropic wire double (same process, interleaved)")
        report("outside Prefect", *measure(n, double, vault, "bench-plain"))

        from prefect import flow, task

        @task
        def inside_task() -> tuple[list[float], list[float]]:
            return measure(n, double, vault, "bench-prefect")

        @flow
        def bench_flow() -> tuple[list[float], list[float]]:
            return inside_task()

        report("inside a Prefect task", *bench_flow())


if __name__ == "__main__":
    main()
