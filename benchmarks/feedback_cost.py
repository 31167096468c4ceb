"""What the cost levers save on a 60-submission feedback batch: plain vs prompt-cached (with and without
warm-up) vs batch + cached.

Each variant runs the student-feedback flow (under a temporary Prefect server) on its own copy of a
60-submission vault, against a fresh local Anthropic wire double that bills as the API does: o200k token
counts; prompt-cache writes and reads for the shared rubric prefix, where every request that starts before
the first write has been answered misses and pays the write too, and prefixes under the model's minimum
(4,096 tokens for Haiku 4.5, 1,024 for Sonnet 4.6) are not cached; calls that take `--latency` seconds; and
the batch API. Costs come from the ledger, priced by genai-prices at Claude's published rates (batch at 50%).

    python benchmarks/feedback_cost.py [--submissions 60] [--latency 0.5] [--format json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tierflow.cli import prefect_defaults

prefect_defaults()
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tierflow-bench-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import frontmatter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import anthropic_config  # noqa: E402
from responders import skilled  # noqa: E402

from tierflow.core.ledger import Ledger  # noqa: E402
from tierflow.testing.double import ProviderDouble  # noqa: E402

ASSIGNMENT = "Teaching/EDU7001/essay-1"
TARGET = 0.35
FIRST = ["Ada", "Bola", "Cian", "Dara", "Esme", "Femi", "Gwen", "Hugo", "Ines", "Joss", "Kemi", "Lior"]
LAST = ["Abara", "Brennan", "Castell", "Dunmore", "Eriksen", "Fairlie", "Gorman", "Hallam", "Ivers", "Jarvis"]


def make_vault(root: Path, n: int) -> Path:
    """The fixture assignment with `n` submissions, made from its real ones under new ids and names."""
    vault = root / "vault"
    shutil.copytree(REPO / "vault_fixtures" / "feedback-batch", vault)
    folder = vault / ASSIGNMENT / "submissions"
    originals = [frontmatter.load(p) for p in sorted(folder.glob("*.md"))]
    originals = [p for p in originals if p.content.strip()]
    for p in folder.iterdir():
        p.unlink()
    for i in range(n):
        source = originals[i % len(originals)]
        name = f"{FIRST[i % len(FIRST)]} {LAST[(i // len(FIRST)) % len(LAST)]}{i // 120 or ''}"
        old_name = str(source.metadata["name"])
        post = frontmatter.Post(
            source.content.replace(old_name.split()[0], name.split()[0]),
            student_id=f"b{i + 1:04d}",
            name=name,
            submitted=source.metadata.get("submitted"),
        )
        (folder / f"b{i + 1:04d}.md").write_text(frontmatter.dumps(post))
    return vault


def configure(vault: Path, double: ProviderDouble, *, caching: bool, warm: bool) -> None:
    extra = (
        f'[feedback]\nassignment_folder = "{ASSIGNMENT}"\nprompt_caching = {str(caching).lower()}\n'
        f"warm_up = {str(warm).lower()}\n"
    )
    (vault / ".tierflow" / "config.toml").write_text(anthropic_config(double, extra))


def run_variant(
    template: Path, label: str, *, caching: bool, mode: str, warm: bool = True, latency: float = 0.5
) -> dict[str, float]:
    from tierflow.flows.student_feedback import student_feedback

    with (
        tempfile.TemporaryDirectory() as tmp,
        ProviderDouble(skilled(), batch_polls_until_done=1, realistic_cache=True, latency_s=latency) as double,
    ):
        vault = Path(tmp) / "vault"
        shutil.copytree(template, vault)
        configure(vault, double, caching=caching, warm=warm)
        summary = student_feedback(vault=str(vault), mode=mode)
        rows = Ledger.for_vault(vault).rows(run_id=summary.run_id)
    submissions = len([r for r in rows if r["phase"] == "collate"])
    cost = sum(r["cost_usd"] for r in rows)
    return {
        "label": label,
        "submissions": submissions,
        "cost": cost,
        "per_submission": cost / max(1, submissions),
        "cache_read": sum(r["cache_read_tokens"] for r in rows),
        "cache_write": sum(r["cache_write_tokens"] for r in rows),
        "cache_writes": {
            phase: sum(r["cache_write_tokens"] > 0 for r in rows if r["phase"] == phase)
            for phase in ("collate", "synthesise", "draft")
        },
        "batch_rows": sum(bool(r["batch"]) for r in rows),
        "calls": len(rows),
        "phases": {
            phase: round(sum(r["cost_usd"] for r in rows if r["phase"] == phase), 4)
            for phase in ("collate", "synthesise", "draft")
        },
        "output_share": round(
            sum(r["output_tokens"] for r in rows) / max(1, sum(r["input_tokens"] + r["output_tokens"] for r in rows)), 3
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=60)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds each direct call takes")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args()
    os.environ["ANTHROPIC_API_KEY"] = "bench"
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        template = make_vault(Path(tmp), args.submissions)
        results = [
            run_variant(template, "plain", caching=False, mode="direct", latency=args.latency),
            run_variant(template, "cached, no warm-up", caching=True, mode="direct", warm=False, latency=args.latency),
            run_variant(template, "cached + warm-up", caching=True, mode="direct", latency=args.latency),
            run_variant(template, "batch + cached", caching=True, mode="batch", latency=args.latency),
        ]
    plain = results[0]["cost"]
    for r in results:
        r["vs_plain"] = round(r["cost"] / plain, 4)
    if args.format == "json":
        print(json.dumps({"submissions": args.submissions, "variants": results}, indent=2))
        return
    print(f"\nfeedback cost on {args.submissions} submissions (realistic Anthropic cache double, Claude list prices)")
    print(
        f"{'variant':<20}{'calls':>7}{'batch rows':>12}{'cache read':>12}{'cache write':>13}"
        f"{'USD total':>12}{'USD/submission':>16}{'vs plain':>10}   cache writes by phase"
    )
    for r in results:
        print(
            f"{r['label']:<20}{r['calls']:>7}{r['batch_rows']:>12}{r['cache_read']:>12}{r['cache_write']:>13}"
            f"{r['cost']:>12.4f}{r['per_submission']:>16.5f}{r['vs_plain']:>9.1%}   {r['cache_writes']}"
        )
    ratio = results[3]["cost"] / plain
    print(f"batch + cached is {ratio:.1%} of plain (target <= {TARGET:.0%}: {'ok' if ratio <= TARGET else 'MISSED'})")


if __name__ == "__main__":
    main()
