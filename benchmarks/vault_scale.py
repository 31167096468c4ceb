"""How tierflow scales with vault size: note selection, and a whole reading-notes week.

Usage:
    python benchmarks/vault_scale.py [--sizes 2000 10000] [--skip-obsidiantools]
                                     [--obsidiantools-sizes 2000] [--keep DIR]
    python benchmarks/vault_scale.py --flow [--notes 3000] [--baseline-notes 300] [--workers 8]
                                     [--format table|json] [--keep DIR]

`--flow` builds a synthetic vault whose week holds `--notes` annotated reading notes (plus 10% other notes),
runs `reading-notes` on it on the offline model under Prefect's test harness, each size in its own
subprocess, and reports wall time, the run's peak memory (that process's ru_maxrss: the Prefect server runs
in a process of its own and is not counted), peak ledger connections checked out at once (SQLAlchemy pool
events) and the calls recorded, against a baseline week of `--baseline-notes` measured in the same run.

For each size a synthetic vault is generated in a temporary folder (90% of notes in assorted folders,
~15% in Reading/, front matter with dates spread over a year, tags, a few wikilinks, 1-4 KB bodies). The
selection is "this week's reading": folders=["Reading"] OR tags=["literature"], a 7-day window; a
folder-only selection is timed as well. Figures:

* cold: no index cache file (every note is read and parsed);
* warm: cache present, nothing changed (one stat per note, no reads);
* warm+1: cache present, one note touched (exactly one note re-read);
* baseline: `obsidiantools.api.Vault(path).connect().gather()` on the same vault.

The generated files sit in the OS page cache for all measurements alike; "cold" refers to tierflow's
index cache only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tierflow.vault.index import Selection, VaultIndex

TARGET_COLD_S = 1.5
TARGET_WARM_S = 0.3
TARGET_SIZE = 10_000
REFERENCE_DAY = dt.date(2026, 11, 20)  # fixed, so every run generates the same vault
WINDOW = (REFERENCE_DAY - dt.timedelta(days=6), REFERENCE_DAY)

FOLDERS = [
    "Daily",
    "Projects/Thesis",
    "Projects/Grant",
    "Projects/Book",
    "Concepts",
    "Teaching/EDU7001",
    "Teaching/EDU7002",
    "Meetings",
    "People",
    "Archive/2024",
    "Archive/2025",
]
TAGS = [
    "feedback",
    "assessment",
    "method",
    "idea",
    "todo",
    "project/thesis",
    "project/grant",
    "teaching",
    "meeting",
    "person",
    "draft",
    "review",
]
WORDS = [
    "feedback",
    "learning",
    "assessment",
    "students",
    "formative",
    "teacher",
    "evidence",
    "design",
    "curriculum",
    "practice",
    "standard",
    "judgement",
    "criteria",
    "exemplar",
    "module",
    "review",
    "evaluation",
    "cohort",
    "seminar",
    "essay",
    "draft",
    "revision",
    "process",
    "regulation",
    "internal",
    "external",
    "quality",
    "dialogue",
    "uptake",
    "literacy",
    "effect",
    "size",
    "variance",
    "meta",
    "analysis",
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "on",
    "with",
    "as",
    "by",
    "it",
    "are",
    "this",
    "be",
    "from",
    "or",
    "which",
    "an",
    "at",
    "not",
    "have",
]


# --- vault generation --------------------------------------------------------------------------------


def _paragraph(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n_words)]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def generate_vault(root: Path, n_notes: int, seed: int = 0) -> list[str]:
    """Write `n_notes` synthetic notes under `root`; returns their vault-relative paths."""
    rng = random.Random(seed)
    paths: list[str] = []
    for i in range(n_notes):
        r = rng.random()
        if r < 0.15:
            folder = "Reading"
        elif r < 0.90:
            folder = rng.choice(FOLDERS)
        else:
            folder = ""  # 10% at the vault root
        paths.append(f"{folder}/Note {i:05d}.md" if folder else f"Note {i:05d}.md")
    (root / ".obsidian").mkdir(parents=True, exist_ok=True)
    (root / ".obsidian" / "app.json").write_text("{}\n", encoding="utf-8")
    for folder in {p.rpartition("/")[0] for p in paths if "/" in p}:
        (root / folder).mkdir(parents=True, exist_ok=True)

    start_day = REFERENCE_DAY - dt.timedelta(days=364)
    for i, rel in enumerate(paths):
        reading = rel.startswith("Reading/")
        day = start_day + dt.timedelta(days=rng.randrange(365))
        tags = rng.sample(TAGS, rng.randint(1, 3))
        if reading:
            tags.insert(0, rng.choice(["literature", "literature/article", "literature/book"]))
        elif rng.random() < 0.03:
            tags.append("literature")  # a few literature notes live outside Reading/
        fm = [f"title: Synthetic note {i}", f"tags: [{', '.join(tags)}]"]
        date_style = rng.random()
        if date_style < 0.8:
            fm.append(f"date: {day.isoformat()}")
        elif date_style < 0.9:
            fm.append(f'created: "{day.isoformat()}T09:30"')
        # else: no date at all; selection falls back to the file's mtime
        if reading:
            fm.append(f"citekey: author{i}")
        target_bytes = rng.randint(1000, 4000)
        parts: list[str] = [f"# Synthetic note {i}"]
        size = 0
        while size < target_bytes:
            para = _paragraph(rng, rng.randint(25, 70))
            if rng.random() < 0.5:
                para += f" See [[Note {rng.randrange(n_notes):05d}]]."
            if rng.random() < 0.15:
                para += f" #{rng.choice(TAGS)}"
            parts.append(para)
            size += len(para) + 2
        body = "\n\n".join(parts)
        (root / rel).write_text("---\n" + "\n".join(fm) + "\n---\n\n" + body + "\n", encoding="utf-8")
        if date_style >= 0.9:
            ts = dt.datetime.combine(day, dt.time(12)).timestamp()
            os.utime(root / rel, (ts, ts))
    return paths


# --- measuring ---------------------------------------------------------------------------------------


@dataclass
class Result:
    """Timings for one vault size and one selection."""

    size: int
    query: str
    selected: int
    cold: float
    warm: float
    warm_touch: float
    baseline: float | None = None


def _median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times: list[float] = []
    out: object = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure_index(vault: Path, paths: Sequence[str], *, folders: Sequence[str], tags: Sequence[str]) -> Result:
    """Cold / warm / warm-after-one-touch selection times (medians), each with a fresh VaultIndex."""
    cache = vault / ".tierflow" / "index.json"

    def select() -> Selection:
        return VaultIndex(vault).select(folders=folders, tags=tags, since=WINDOW[0], until=WINDOW[1])

    def cold() -> Selection:
        cache.unlink(missing_ok=True)
        return select()

    cold_s, sel = _median_time(cold, 3)
    assert isinstance(sel, Selection)
    warm_s, warm_sel = _median_time(select, 5)
    assert isinstance(warm_sel, Selection) and warm_sel.stats.parsed == 0

    reading = [p for p in paths if p.startswith("Reading/")]
    touch_times: list[float] = []
    for k in range(3):
        note = vault / reading[k * 7 % len(reading)]
        st = note.stat()
        os.utime(note, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        t, touched = _median_time(select, 1)
        assert isinstance(touched, Selection) and touched.stats.parsed == 1, touched.stats
        touch_times.append(t)
    query = " OR ".join([f"folders={list(folders)}"] * bool(folders) + [f"tags={list(tags)}"] * bool(tags))
    return Result(len(paths), query, len(sel.notes), cold_s, warm_s, statistics.median(touch_times))


def measure_obsidiantools(vault: Path, n_notes: int) -> float:
    """Seconds for a full obsidiantools Vault(...).connect().gather(), with a heartbeat on stderr."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import obsidiantools.api as otools

    done = threading.Event()
    t0 = time.perf_counter()

    def heartbeat() -> None:
        while not done.wait(15):
            print(f"    ... obsidiantools still running, {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    print(f"  obsidiantools: Vault().connect().gather() on {n_notes} notes (slow) ...", file=sys.stderr)
    thread = threading.Thread(target=heartbeat, daemon=True)
    thread.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            otools.Vault(vault).connect().gather()
    finally:
        done.set()
        thread.join()
    seconds = time.perf_counter() - t0
    print(f"  obsidiantools: {seconds:.1f} s", file=sys.stderr)
    return seconds


# --- a whole reading-notes week ------------------------------------------------------------------------


def generate_reading_week(root: Path, n_selected: int, seed: int = 0) -> None:
    """A vault whose week (WINDOW) holds `n_selected` annotated literature notes, plus 10% other notes."""
    rng = random.Random(seed)
    (root / ".obsidian").mkdir(parents=True, exist_ok=True)
    (root / ".obsidian" / "app.json").write_text("{}\n", encoding="utf-8")
    (root / ".tierflow").mkdir(exist_ok=True)
    for folder in ("Reading", "Daily"):
        (root / folder).mkdir(exist_ok=True)
    days = (WINDOW[1] - WINDOW[0]).days + 1
    for i in range(n_selected):
        day = WINDOW[0] + dt.timedelta(days=i % days)
        quotes = []
        for q in range(rng.randint(2, 5)):
            quote = _paragraph(rng, rng.randint(12, 30)).rstrip(".")
            quotes.append(f'> "{quote}" (p. {rng.randint(1, 300)}) ^q{i}x{q}\n\nComment: {_paragraph(rng, 12)}\n')
        front = [
            f'title: "Synthetic reading {i}"',
            f"citekey: author{i:05d}",
            f"year: {2000 + i % 25}",
            "tags: [literature]",
            f"date: {day.isoformat()}",
        ]
        body = f"# Synthetic reading {i}\n\n{_paragraph(rng, 40)}\n\n## Annotations\n\n" + "\n".join(quotes)
        (root / "Reading" / f"Reading {i:05d}.md").write_text(
            "---\n" + "\n".join(front) + "\n---\n\n" + body, encoding="utf-8"
        )
    for i in range(n_selected // 10):
        day = WINDOW[0] - dt.timedelta(days=1 + i % 300)
        (root / "Daily" / f"{day.isoformat()} {i}.md").write_text(
            f"---\ndate: {day.isoformat()}\n---\n\n{_paragraph(rng, 50)}\n", encoding="utf-8"
        )
    (root / ".tierflow" / "config.toml").write_text(
        '[vault]\nreading_folders = ["Reading"]\nreading_tags = ["literature"]\n', encoding="utf-8"
    )


@dataclass
class FlowResult:
    """One reading-notes week, run in a subprocess of its own."""

    notes: int
    workers: int
    seconds: float
    peak_rss_mb: float
    peak_connections: int
    pool_size: int
    calls: int
    written: int
    failed: str | None


def run_week(vault: Path, workers: int) -> dict[str, object]:
    """Run reading-notes on `vault` in this process (the `--_run-week` child) and measure it."""
    import resource

    import sqlalchemy as sa

    from tierflow.cli import prefect_defaults

    prefect_defaults()
    from prefect.testing.utilities import prefect_test_harness

    from tierflow.core.config import load_config
    from tierflow.core.ledger import Ledger, pool_size
    from tierflow.flows.reading_notes import reading_notes

    config = vault / ".tierflow" / "config.toml"
    config.write_text(config.read_text(encoding="utf-8") + f"\n[run]\nworkers = {workers}\n", encoding="utf-8")
    url = load_config(vault).ledger_url
    out = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def checkout(*_: object) -> None:
        with lock:
            out["now"] += 1
            out["peak"] = max(out["peak"], out["now"])

    def checkin(*_: object) -> None:
        with lock:
            out["now"] -= 1

    engine = Ledger(url, workers=workers).engine  # the engine the run's tasks share
    sa.event.listen(engine, "checkout", checkout)
    sa.event.listen(engine, "checkin", checkin)
    with prefect_test_harness(server_startup_timeout=300):
        t0 = time.perf_counter()
        summary = reading_notes(vault=str(vault), since=WINDOW[0], until=WINDOW[1])
        seconds = time.perf_counter() - t0
    rows = Ledger(url, workers=workers).rows(run_id=summary.run_id)
    return {
        "notes": 0,
        "workers": workers,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_connections": out["peak"],
        "pool_size": pool_size(workers),
        "calls": len(rows),
        "written": len(summary.written),
        "failed": summary.failed or summary.halted,
    }


def measure_week(base: Path, notes: int, workers: int) -> FlowResult:
    import json
    import subprocess

    vault = base / f"week-{notes}"
    if vault.exists():
        shutil.rmtree(vault)
    print(f"generating a week of {notes:,} reading notes in {vault} ...", file=sys.stderr)
    generate_reading_week(vault, notes)
    print(f"  running reading-notes on {notes:,} notes, {workers} workers ...", file=sys.stderr)
    env = {**os.environ, "PREFECT_HOME": str(base / f"prefect-{notes}"), "PREFECT_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, __file__, "--_run-week", str(vault), "--workers", str(workers)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    data = json.loads(done.stdout.strip().splitlines()[-1])
    data["notes"] = notes
    result = FlowResult(**data)
    print(f"  {result.seconds:.1f} s, {result.peak_connections} connections at most", file=sys.stderr)
    return result


def report_weeks(results: list[FlowResult], fmt: str) -> None:
    import json
    from dataclasses import asdict

    base = results[0]
    if fmt == "json":
        print(json.dumps({"baseline": asdict(base), "weeks": [asdict(r) for r in results]}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"reading-notes on the offline model, week {WINDOW[0]}..{WINDOW[1]}")
    for h in ("notes", "workers", "wall", "x baseline", "per note", "peak memory", "peak connections", "pool"):
        table.add_column(h, justify="right")
    for h in ("calls", "drafts", "failed"):
        table.add_column(h, justify="right")
    for r in results:
        table.add_row(
            f"{r.notes:,}",
            str(r.workers),
            _fmt(r.seconds),
            f"{r.seconds / base.seconds:.1f}x",
            f"{r.seconds / r.notes * 1000:.0f} ms",
            f"{r.peak_rss_mb:,.0f} MB",
            str(r.peak_connections),
            str(r.pool_size),
            f"{r.calls:,}",
            str(r.written),
            r.failed or "-",
        )
    Console(width=200).print(table)


# --- reporting ---------------------------------------------------------------------------------------


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _ratio(baseline: float | None, value: float) -> str:
    return f"{baseline / value:,.0f}x" if baseline is not None and value > 0 else "-"


def _check(value: float, target: float, size: int) -> str:
    if size < TARGET_SIZE:
        return f"(<= {target:g} s at {TARGET_SIZE // 1000}k)"
    return f"{'OK' if value <= target else 'MISSED'} (<= {target:g} s)"


def report(results: list[Result]) -> None:
    headers = [
        "notes",
        "selection",
        "selected",
        "cold",
        "cold target",
        "warm",
        "warm target",
        "warm+1 touched",
        "obsidiantools",
        "baseline/cold",
        "baseline/warm",
    ]
    rows = [
        [
            f"{r.size:,}",
            r.query,
            str(r.selected),
            _fmt(r.cold),
            _check(r.cold, TARGET_COLD_S, r.size),
            _fmt(r.warm),
            _check(r.warm, TARGET_WARM_S, r.size),
            _fmt(r.warm_touch),
            _fmt(r.baseline),
            _ratio(r.baseline, r.cold),
            _ratio(r.baseline, r.warm),
        ]
        for r in results
    ]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        return
    table = Table(title=f"Selecting {WINDOW[0]}..{WINDOW[1]} (median times)")
    for h in headers:
        table.add_column(h, justify="left" if h == "selection" else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--skip-obsidiantools", action="store_true", help="do not run the slow baseline")
    parser.add_argument(
        "--obsidiantools-sizes",
        type=int,
        nargs="+",
        help="run the baseline only at these sizes (default: all)",
    )
    parser.add_argument("--keep", type=Path, help="generate vaults under DIR and keep them")
    parser.add_argument("--flow", action="store_true", help="run a whole reading-notes week instead")
    parser.add_argument("--notes", type=int, default=3000, help="with --flow: notes in the measured week")
    parser.add_argument("--baseline-notes", type=int, default=300, help="with --flow: notes in the baseline week")
    parser.add_argument("--workers", type=int, default=8, help="with --flow: [run] workers")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("--_run-week", dest="run_week", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run_week:
        import json

        print(json.dumps(run_week(args.run_week, args.workers)))
        return 0
    base = args.keep or Path(tempfile.mkdtemp(prefix="tierflow-vault-scale-"))
    if args.flow:
        try:
            weeks = [measure_week(base, n, args.workers) for n in (args.baseline_notes, args.notes)]
        finally:
            if args.keep is None:
                shutil.rmtree(base, ignore_errors=True)
        report_weeks(weeks, args.format)
        return 0
    results: list[Result] = []
    try:
        for size in args.sizes:
            vault = base / f"vault-{size}"
            if vault.exists():
                shutil.rmtree(vault)
            print(f"generating {size:,} notes in {vault} ...", file=sys.stderr)
            t0 = time.perf_counter()
            paths = generate_vault(vault, size)
            print(f"  generated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            week = measure_index(vault, paths, folders=["Reading"], tags=["literature"])
            folder_only = measure_index(vault, paths, folders=["Reading"], tags=[])
            print(
                f"  index: cold {_fmt(week.cold)}, warm {_fmt(week.warm)}, warm+1 {_fmt(week.warm_touch)}",
                file=sys.stderr,
            )
            run_baseline = not args.skip_obsidiantools and (
                args.obsidiantools_sizes is None or size in args.obsidiantools_sizes
            )
            if run_baseline:
                week.baseline = folder_only.baseline = measure_obsidiantools(vault, size)
            results += [week, folder_only]
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
