"""`tierflow spend` adds up on the database: the same groups and totals as adding up the rows, without loading them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import call_record, write_config

from tierflow.core.ledger import GROUPS, Ledger
from tierflow.core.usage import Usage
from tierflow.report.spend import ledger_summary, summarise

REPO = Path(__file__).resolve().parents[1]


def fill(ledger: Ledger) -> None:
    """Calls over eight weeks across flows, phases, tiers, models and projects: cached, batch, unpriced, unknown."""
    tiers = [("light", "claude-haiku-4-5"), ("standard", "claude-sonnet-4-6"), ("deep", "claude-opus-4-6")]
    for n in range(120):
        tier, model = tiers[n % 3]
        ledger.record(
            call_record(
                timestamp=f"2026-{10 + n // 60:02d}-{1 + n % 28:02d}T{n % 24:02d}:30:00.000000+00:00",
                run_id=f"run-{n % 7}",
                flow=("reading-notes", "student-feedback", "ask")[n % 3],
                phase=("collate", "synthesise", "draft", "other")[n % 4],
                tier=tier,
                model=model,
                project=(None, "thesis", "EDU7001", "")[n % 4],
                deployment=("weekly" if n % 5 else None),
                usage=Usage(known=False)
                if n % 17 == 0
                else Usage(input_tokens=100 + n, output_tokens=n, cache_read_tokens=n % 5, cache_write_1h_tokens=n % 3),
                cost_usd=None if n % 13 == 0 else 0.001 * (n % 11) + 0.0001,
                cached_result=n % 9 == 0,
                batch=n % 6 == 0,
            )
        )


def same(a: list[dict], b: list[dict]) -> bool:
    money = ("cost_usd", "usd_per_value_weighted_call")
    assert [{k: v for k, v in r.items() if k not in money} for r in a] == [
        {k: v for k, v in r.items() if k not in money} for r in b
    ]
    for key in money:
        assert [r.get(key) for r in a] == pytest.approx([r.get(key) for r in b], abs=1e-12)
    return True


@pytest.mark.parametrize("by", [*GROUPS, "week"])
def test_every_grouping_adds_up_on_the_database_as_it_does_row_by_row(ledger_url: str, by: str):
    ledger = Ledger(ledger_url)
    fill(ledger)
    assert same(ledger_summary(ledger, by), summarise(ledger.rows(), by))
    for filters in ({"since": "2026-11-01"}, {"project": "thesis"}, {"run_id": "run-3"}):
        assert same(ledger_summary(ledger, by, **filters), summarise(ledger.rows(**filters), by))


def test_spend_by_phase_shows_billed_calls_and_cache_hits_apart(tmp_path: Path):
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", "")
    ledger = Ledger(f"sqlite:///{vault / '.tierflow' / 'ledger.sqlite'}")
    ledger.record(call_record(phase="draft"))
    ledger.record(call_record(phase="draft", usage=Usage(), cost_usd=0.0, cached_result=True))
    env = {**os.environ, "COLUMNS": "200"}
    run = [sys.executable, "-m", "tierflow.cli", "spend", "--vault", str(vault), "--by", "phase"]
    out = subprocess.run([*run, "--format", "json"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    (draft,) = json.loads(out.stdout)
    assert (draft["calls"], draft["cache_hits"]) == (1, 1)
    table = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    assert "cache hits" in table


def test_spend_by_value_shows_usd_and_usd_per_value_weighted_call_in_every_format(tmp_path: Path):
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", "")
    ledger = Ledger(f"sqlite:///{vault / '.tierflow' / 'ledger.sqlite'}")
    for value, cost, n in ((0.5, 0.01, 4), (1.0, 0.03, 2), (5.0, 0.2, 3)):
        for _ in range(n):
            ledger.record(call_record(value=value, cost_usd=cost))
    ledger.record(call_record(value=5.0, usage=Usage(), cost_usd=0.0, cached_result=True))  # not a billed call
    # Cost per value-weighted call: the class's USD over Σ value of its billed calls.
    expected = {"value 0.5": (0.04, 0.04 / 2), "value 1": (0.06, 0.06 / 2), "value 5": (0.6, 0.6 / 15)}
    env = {**os.environ, "COLUMNS": "250"}
    run = [sys.executable, "-m", "tierflow.cli", "spend", "--vault", str(vault), "--by", "value", "--format"]
    out = subprocess.run([*run, "json"], cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    got = {r["value"]: (r["cost_usd"], r["usd_per_value_weighted_call"]) for r in json.loads(out)}
    assert got == {k: pytest.approx(v) for k, v in expected.items()}
    table = subprocess.run([*run, "csv"], cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    import csv

    rows = {r["value"]: r for r in csv.DictReader(table.splitlines())}
    assert {k: float(r["usd_per_value_weighted_call"]) for k, r in rows.items()} == pytest.approx(
        {k: v[1] for k, v in expected.items()}
    )
    shown = subprocess.run(run[:-1], cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    assert "USD per value-weighted call" in shown
    for key, (usd, per) in expected.items():
        line = next(line for line in shown.splitlines() if key + " " in line)
        assert f"${usd:.4f}" in line and f"${per:.4f}" in line, line


def test_listed_rows_stream_in_the_layout_of_one_json_document(tmp_path: Path):
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", "")
    ledger = Ledger(f"sqlite:///{vault / '.tierflow' / 'ledger.sqlite'}")
    run = [sys.executable, "-m", "tierflow.cli", "spend", "--vault", str(vault), "--format"]
    empty = subprocess.run([*run, "json"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert empty == "[]\n"
    for n in range(3):
        ledger.record(call_record(subject=f"note {n} \u00e9\n"))
    out = subprocess.run([*run, "json"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()  # one array, a call on each line (a newline in a subject is escaped)
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 2 + 3
    assert json.loads(out) == [json.loads(line.rstrip(",")) for line in lines[1:-1]] == ledger.rows()
    lines = subprocess.run([*run, "jsonl"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert [json.loads(line) for line in lines.splitlines()] == ledger.rows()
    csv = subprocess.run([*run, "csv"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert csv.startswith("id,timestamp,") and len(csv.splitlines()) == 1 + 3 * 2  # each subject holds a newline


def test_the_all_deep_comparison_prices_batch_calls_at_the_configured_discount(tmp_path: Path):
    from types import SimpleNamespace

    from conftest import anthropic_config

    from tierflow.core.config import load_config
    from tierflow.core.usage import price
    from tierflow.report.spend import with_all_deep

    vault = tmp_path / "vault"
    text = anthropic_config(SimpleNamespace(anthropic_base_url="http://127.0.0.1:9"))
    write_config(vault / ".tierflow" / "config.toml", text.replace("max_retries = 2", "batch_discount = 0.25"))
    config = load_config(vault)
    usage = Usage(input_tokens=10_000, output_tokens=2_000)
    row = call_record(usage=usage, batch=True, tier="standard", model="claude-sonnet-4-6").row()
    (priced,) = with_all_deep(config, [row])
    full = float(price(usage, "claude-opus-4-6", provider_kind="anthropic"))
    assert priced["all_deep_usd"] == pytest.approx(full * 0.25)


def test_a_streamed_record_is_laid_out_as_json_dump_with_indent_lays_it_out():
    from tierflow.cli.app import _indented

    record = {
        "id": 10**20, "cost_usd": 0.1 + 0.2, "none": None, "yes": True, "no": False, "zero": -0.0,
        "inf": float("inf"), "nan": float("nan"), "text": 'é "quoted"\n\t\u2028 \U0001f600', "empty": "",
    }  # fmt: skip
    assert _indented(record) == json.dumps(record, indent=2).replace("\n", "\n  ")
    assert _indented({}) == json.dumps({}, indent=2)


@pytest.mark.parametrize("by", ["week", "day"])
def test_spend_by_week_reads_the_day_index_in_order_instead_of_sorting_every_call(tmp_path: Path, by: str):
    """On a year's ledger the sort of every call for the GROUP BY was half of `spend --by week`'s time."""
    from tierflow.report.spend import spend_query

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    fill(ledger)
    with ledger.reading() as conn:
        statement = spend_query(by).compile(dialect=conn.dialect)  # as it runs: with its bound parameters
        params = tuple(statement.params[name] for name in statement.positiontup or ())
        plan = " / ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params))
    assert "USING INDEX ix_calls_day_model" in plan and "TEMP B-TREE" not in plan, plan
