"""How much latency tierflow's call path adds over a bare SDK call, beside LiteLLM, against one local double.

The paths run interleaved in one process against one local wire-level Anthropic double, so they share the
machine's load: the bare `anthropic` client's `messages.create`; `Caller.ask` (route, cache lookup, budget
reservation and tier slot in one ledger transaction, the SDK call, the price, then the ledger row, settlement
and answer cache in a second, durable under SQLite WAL); and, with `--vs litellm`, LiteLLM's `completion` plus
`completion_cost` (which records nothing durable). "Added" is each call's time minus the bare SDK call's
median time in the same run.

    python benchmarks/call_overhead.py [-n 1000] [--vs litellm] [--format json]
    python benchmarks/call_overhead.py --router [-n 1000]   # the per-request router's scoring, per call

LiteLLM is in the `bench` extra: `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tierflow-bench-prefect-"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM's bundled prices, not a download

import anthropic  # noqa: E402

from tierflow.core.calls import Caller, RunSettings  # noqa: E402
from tierflow.testing.double import ProviderDouble  # noqa: E402

MODEL = "claude-haiku-4-5"
SYSTEM = "You are terse."
PROMPT = "Summarise: feedback closes the gap between current and desired performance."


def paths(double: ProviderDouble, vault: Path, vs: str | None) -> dict[str, Callable[[str], object]]:
    client = anthropic.Anthropic(api_key="bench", base_url=double.anthropic_base_url, max_retries=0)
    caller = Caller(RunSettings(vault=str(vault), config_path=str(vault / "config.toml"), run_id="bench", flow="bench"))

    def bare(text: str) -> object:
        return client.messages.create(
            model=MODEL, max_tokens=256, system=SYSTEM, messages=[{"role": "user", "content": text}]
        )

    def tierflow(text: str) -> object:
        return caller.ask(phase="collate", complexity="low", system=SYSTEM, prompt=text)

    found: dict[str, Callable[[str], object]] = {"bare": bare, "tierflow": tierflow}
    if vs == "litellm":
        import litellm

        litellm.telemetry = False

        def with_litellm(text: str) -> object:
            response = litellm.completion(
                model=f"anthropic/{MODEL}",
                max_tokens=256,
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
                api_base=double.anthropic_base_url,
                api_key="bench",
                max_retries=0,
            )
            return litellm.completion_cost(completion_response=response)

        found["litellm"] = with_litellm
    return found


def measure(n: int, calls: dict[str, Callable[[str], object]]) -> dict[str, list[float]]:
    """Samples (ms) per path; each round calls every path once, in a rotating order, with a fresh prompt."""
    names = list(calls)
    for i in range(20):  # warm every path: connections, tokenizer, price tables, SQLite pages
        for name in names:
            calls[name](f"{PROMPT} (warm {i})")
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            t0 = time.perf_counter()
            calls[name](f"{PROMPT} ({i})")  # never cached: every call reaches the double
            samples[name].append((time.perf_counter() - t0) * 1000)
    return samples


def summarise(samples: dict[str, list[float]]) -> dict[str, float]:
    bare = statistics.median(samples["bare"])
    out: dict[str, float] = {"n": len(samples["bare"]), "bare_median_ms": round(bare, 3)}
    for name, values in samples.items():
        ordered = sorted(values)
        p90 = ordered[int(0.9 * (len(ordered) - 1))]
        out[f"{name}_median_ms"] = round(statistics.median(values), 3)
        out[f"{name}_p90_ms"] = round(p90, 3)
        if name != "bare":
            out[f"{name}_added_ms"] = round(statistics.median(values) - bare, 3)
            out[f"{name}_added_p90_ms"] = round(p90 - bare, 3)
    if "litellm_added_ms" in out:
        out["tierflow_to_litellm_added"] = round(out["tierflow_added_ms"] / out["litellm_added_ms"], 3)
    return out


def table(result: dict[str, float]) -> str:
    lines = [
        f"call overhead against a local Anthropic wire double, interleaved, n = {int(result['n'])}",
        f"{'path':<42}{'median ms':>11}{'p90 ms':>10}{'added ms':>10}{'added p90':>11}",
    ]
    labels = {
        "bare": "bare Anthropic SDK",
        "litellm": "LiteLLM completion + completion_cost",
        "tierflow": "tierflow Caller.ask (durable ledger)",
    }
    for name, label in labels.items():
        if f"{name}_median_ms" not in result:
            continue
        added = result.get(f"{name}_added_ms")
        added_p90 = result.get(f"{name}_added_p90_ms")
        lines.append(
            f"{label:<42}{result[f'{name}_median_ms']:>11.2f}{result[f'{name}_p90_ms']:>10.2f}"
            f"{'-' if added is None else f'{added:+.2f}':>10}{'-' if added_p90 is None else f'{added_p90:+.2f}':>11}"
        )
    if "tierflow_to_litellm_added" in result:
        ratio = result["tierflow_to_litellm_added"]
        verdict = "ok" if ratio <= 1 else "SLOWER THAN LITELLM"
        lines.append(f"tierflow's added time is {ratio:.2f}x LiteLLM's ({verdict})")
    return "\n".join(lines)


def router_scoring(n: int) -> dict[str, float]:
    """What `[routing] mode = "request"` adds to a call: the per-request router's decision (features, per-tier
    probabilities, the cheapest tier meeting the target), timed alone on a router fitted from 2,000 answers."""
    from tierflow.core.config import load_config
    from tierflow.learn.request_router import Observation, decide, fit

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text("[routing]\nmin_requests = 10\n")
        config = load_config(config_path=path)
    words = PROMPT.split()
    observed = [
        Observation(
            f"r{i}",
            "bench",
            "collate",
            "low",
            tier,
            f"offline:extractive-{tier}",  # the built-in profile's model for the tier, as `decide` maps it
            f"{i} " + " ".join(words[i % 7 :]),
            (i % 5 > 0) or tier != "light",
            "",
        )
        for i in range(1000)
        for tier in ("light", "standard")
    ]
    router = fit(observed, ["light", "standard", "deep"])
    samples = []
    for i in range(max(n, 200)):
        text = f"{PROMPT} item {i}"
        t0 = time.perf_counter()
        decide(config, router, flow="bench", phase="collate", complexity="low", text=text)
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {
        "request_router_score_ms_median": round(statistics.median(samples), 3),
        "request_router_score_ms_p95": round(samples[int(0.95 * len(samples))], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000, help="rounds (each calls every path once; at least 200)")
    parser.add_argument("--vs", choices=["litellm"], default=None, help="also measure LiteLLM")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("--router", action="store_true", help="only time the per-request router's decision")
    args = parser.parse_args()
    if args.router:
        print(json.dumps(router_scoring(args.n), indent=2))
        return
    os.environ["ANTHROPIC_API_KEY"] = "bench"
    with ProviderDouble() as double, tempfile.TemporaryDirectory() as tmp:
        vault = Path(tmp)
        (vault / "config.toml").write_text(
            f'profile = "anthropic"\n[providers.anthropic]\nkind = "anthropic"\n'
            f'base_url = "{double.anthropic_base_url}"\napi_key_env = "ANTHROPIC_API_KEY"\nmax_retries = 0\n'
            f'[tiers.light]\nmodel = "anthropic:{MODEL}"\nmax_output_tokens = 256\n'
            '[tiers.standard]\nmodel = "anthropic:claude-sonnet-4-6"\n'
            '[tiers.deep]\nmodel = "anthropic:claude-opus-4-6"\n'
        )
        result = summarise(measure(max(200, args.n), paths(double, vault, args.vs)))
    print(json.dumps(result, indent=2) if args.format == "json" else table(result))


if __name__ == "__main__":
    main()
