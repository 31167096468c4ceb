"""Adaptive routing's evidence read and `tierflow routing suggest` on a big ledger.

Builds a SQLite ledger of `--rows` calls spread over a year, across three flows, their phases, three tiers, three
complexities and five projects, through tierflow's own `Ledger` and table definitions (the database's trigger
counts them as they are inserted, as it does for every recorded call). Then measures, `--repeat` times each:

- `learned_routes(config, ledger, flow, project=...)`: adaptive routing's evidence at the first route of a run
  (the two grouped reads, pooled and per project, and the arithmetic), in ms;
- `tierflow routing suggest --format json` in a fresh process, in s (Python start-up included).

Prints the medians, `--format json` for one JSON object. `benchmarks/ledger_growth.py` can time the same read
by calling `evidence_read_ms(config, ledger, flow)`.

    python benchmarks/evidence_read.py [--rows 1000000] [--repeat 5] [--format table|json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from tierflow.core.config import Config, load_config
from tierflow.core.evidence import learned_routes
from tierflow.core.ledger import Ledger, calls

REPO = Path(__file__).resolve().parent.parent
FLOWS = {"reading-notes": ("collate", "synthesise", "draft"), "student-feedback": ("evidence", "feedback", "cohort")}
FLOWS["ask"] = ("ask",)
TIERS = ("light", "standard", "deep")
COMPLEXITIES = ("low", "medium", "high")
PROJECTS = ("EDU7001", "EDU7002", "thesis", "research", None)
NOW = "2026-11-30T23:00:00+00:00"
CONFIG = '[routing]\nmode = "adaptive"\n[vault]\nreading_folders = ["Reading"]\n'


def build(ledger: Ledger, rows: int, chunk: int = 20_000) -> float:
    """Insert `rows` calls, oldest first, in chunks; returns the seconds it took."""
    t0 = time.perf_counter()
    rng = random.Random(7)
    end = datetime.fromisoformat(NOW)
    year = 365 * 86400
    flows = list(FLOWS)
    for first in range(0, rows, chunk):
        batch = []
        for i in range(first, min(rows, first + chunk)):
            when = (end - timedelta(seconds=year * (1 - (i + 0.5) / rows))).isoformat(timespec="microseconds")
            flow = flows[i % 3]
            tier = TIERS[rng.randrange(3)]
            batch.append(
                {
                    "timestamp": when, "run_id": f"run-{i // 40}", "flow": flow, "phase": rng.choice(FLOWS[flow]),
                    "complexity": COMPLEXITIES[i % 3], "tier": tier, "provider": "anthropic", "model": f"m-{tier}",
                    "input_tokens": 1000, "output_tokens": 300, "cost_usd": 0.002, "latency_ms": 900.0,
                    "cached_result": i % 11 == 0, "outcome": "ok" if rng.random() < 0.9 else "check_failed",
                    "attempt": 1 + (i % 13 == 0), "project": PROJECTS[i % 5],
                }
            )  # fmt: skip
        with ledger.transaction() as conn:
            conn.execute(calls.insert(), batch)
    return time.perf_counter() - t0


def evidence_read_ms(config: Config, ledger: Ledger, flow: str, project: str | None = "EDU7001") -> float:
    """One read of adaptive routing's evidence for `flow` (what a run does at its first route), in ms."""
    t = time.perf_counter()
    learned_routes(config, ledger, flow, project=project)
    return (time.perf_counter() - t) * 1000


def suggest_s(vault: Path) -> float:
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "routing", "suggest", "--vault", str(vault), "--format", "json"],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
    )
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args()
    vault = Path(tempfile.mkdtemp(prefix="tierflow-evidence-")) / "vault"
    (vault / ".tierflow").mkdir(parents=True)
    (vault / ".tierflow" / "config.toml").write_text(CONFIG)
    config = load_config(vault)
    ledger = Ledger(config.ledger_url)
    built_s = build(ledger, args.rows)
    reads = [evidence_read_ms(config, ledger, "reading-notes") for _ in range(args.repeat)]
    suggests = [suggest_s(vault) for _ in range(args.repeat)]
    out = {
        "rows": args.rows,
        "build_s": round(built_s, 1),
        "evidence_read_ms": round(statistics.median(reads), 2),
        "evidence_read_ms_max": round(max(reads), 2),
        "routing_suggest_s": round(statistics.median(suggests), 2),
        "routing_suggest_s_max": round(max(suggests), 2),
    }
    if args.format == "json":
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
