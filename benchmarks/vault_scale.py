"""How note selection scales with vault size: tierflow's VaultIndex against a full obsidiantools pass.

Usage:
    python benchmarks/vault_scale.py [--sizes 2000 10000] [--skip-obsidiantools]
                                     [--obsidiantools-sizes 2000] [--keep DIR]

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
    args = parser.parse_args(argv)

    base = args.keep or Path(tempfile.mkdtemp(prefix="tierflow-vault-scale-"))
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
