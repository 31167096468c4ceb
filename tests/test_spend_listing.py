"""`tierflow spend --format json|jsonl` lists calls as text the database writes: character for character what the
per-row encoding (`json.dumps` of each row's dict) wrote, for every kind of value a ledger column holds."""

from __future__ import annotations

import csv
import io
import json
import math
import random
from pathlib import Path

import pytest
from conftest import write_config
from typer.testing import CliRunner

from tierflow.cli.app import Format, _write_json, _write_json_text, app
from tierflow.core.ledger import Ledger, calls

STRINGS = [
    "plain",
    "",
    'a "quoted" word',
    "back\\slash\\",
    "C:\\new\\table \\u00e9",  # backslashes that read as valid JSON escapes
    "tab\there, newline\nthere, return\r, bell\x07, unit\x1f, start\x01",
    "delete\x7f",
    "café, 東京, emoji 😀",
    "percent %s %d %%",
    "'single' quotes; -- not SQL",
    None,
]
FLOATS = [
    0.1 + 0.2,
    1e-05,
    1.2345e-07,
    900.0,
    0.0,
    -0.0,
    -2.5,
    1e15,
    1e15 + 0.5,
    123456789012345.6,
    9999999999999998.0,
    1e16,
    1.5e300,
    5e-324,
    0.0001,
    0.00012345678901234,
    math.inf,
    -math.inf,
    None,
]


def fill(ledger: Ledger, n: int = 120) -> None:
    """`n` calls through the ledger's table: every column kind, with nulls, unicode, escapes and awkward floats."""
    rng = random.Random(23)
    rows = []
    for i in range(n):
        text = STRINGS[i % len(STRINGS)]
        rows.append(
            {
                "timestamp": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:00:00.000000+00:00",
                "run_id": f"run-{i % 5}",
                "flow": ("reading-notes", None, "ask")[i % 3],
                "flow_run_id": None if i % 2 else f"fr-{i}",
                "phase": text if i % 4 else "draft",
                "complexity": "medium",
                "tier": ("light", "standard", "deep")[i % 3],
                "provider": "anthropic",
                "model": "claude-haiku-4-5",
                "subject": STRINGS[(i * 7) % len(STRINGS)],
                "input_tokens": rng.randrange(0, 2**31 - 1),
                "output_tokens": i,
                "cache_read_tokens": 0,
                "cache_write_tokens": i % 3,
                "cache_write_1h_tokens": 0,
                "reasoning_tokens": 2**31 - 1 if i % 9 == 0 else 0,
                "cost_usd": FLOATS[i % len(FLOATS)] if i % 2 else rng.random() * 10 ** rng.randrange(-8, 4),
                "latency_ms": rng.random() * 5000 if i % 5 else FLOATS[(i * 3) % len(FLOATS)],
                "started_at": None if i % 6 == 0 else "2026-11-01T00:00:00+00:00",
                "batch": i % 4 == 0,
                "batch_id": None,
                "cached_result": i % 3 == 0,
                "usage_known": i % 7 != 0,
                "route_rule": "routing.medium",
                "outcome": "ok",
                "attempt": 1 + i % 2,
                "project": ("EDU7001", None, "thesis", "é")[i % 4],
                "deployment": STRINGS[(i * 3) % len(STRINGS)],
                "value": None if i % 3 else FLOATS[(i * 5) % len(FLOATS)],
            }
        )
    with ledger.transaction() as conn:
        conn.execute(calls.insert(), rows)


def per_row(ledger: Ledger, fmt: Format, capsys: pytest.CaptureFixture[str], **filters: str) -> str:
    """The listing as `tierflow spend` wrote it before: each row's dict through `json`."""
    capsys.readouterr()
    _write_json(ledger.stream_rows(**filters), fmt)
    return capsys.readouterr().out


def from_database(ledger: Ledger, fmt: Format, capsys: pytest.CaptureFixture[str], batch: int, **filters: str) -> str:
    capsys.readouterr()
    _write_json_text(ledger.stream_json(indent=fmt is Format.json, batch=batch, **filters), fmt)
    return capsys.readouterr().out


@pytest.mark.parametrize("fmt", [Format.json, Format.jsonl])
def test_the_database_writes_the_listing_as_the_per_row_encoding_did(
    ledger_url: str, fmt: Format, capsys: pytest.CaptureFixture[str]
):
    ledger = Ledger(ledger_url)
    fill(ledger)
    expected = per_row(ledger, fmt, capsys)
    assert expected.count("\n") >= 120  # the ledger is not empty
    # Pieces of 7 rows: some pieces all plain, some with a row the database cannot write as json does.
    for batch in (7, 1000):
        assert from_database(ledger, fmt, capsys, batch) == expected
    for filters in ({"since": "2026-11-20"}, {"project": "é"}, {"run_id": "run-3"}, {"project": "none such"}):
        assert from_database(ledger, fmt, capsys, 7, **filters) == per_row(ledger, fmt, capsys, **filters)


def test_json_listing_is_one_array_as_json_dump_with_indent_writes_it(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
):
    ledger = Ledger(ledger_url)
    fill(ledger, 40)
    rows = ledger.rows()
    assert from_database(ledger, Format.json, capsys, 7) == json.dumps(rows, indent=2) + "\n"
    assert from_database(ledger, Format.jsonl, capsys, 7) == "".join(json.dumps(r) + "\n" for r in rows)


def test_spend_format_json_lists_every_call_from_the_command_line(tmp_path: Path):
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", "")
    ledger = Ledger(f"sqlite:///{vault / '.tierflow' / 'ledger.sqlite'}")
    fill(ledger, 30)
    result = CliRunner().invoke(app, ["spend", "--vault", str(vault), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(json.dumps(ledger.rows()))
    empty = tmp_path / "empty"
    write_config(empty / ".tierflow" / "config.toml", "")
    for fmt, text in (("json", "[]\n"), ("jsonl", "")):
        result = CliRunner().invoke(app, ["spend", "--vault", str(empty), "--format", fmt])
        assert result.exit_code == 0 and result.stdout == text


def test_plain_rows_are_written_by_the_database_and_only_odd_ones_by_json(
    ledger_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    """A row of printable ASCII without quotes or backslashes is never read again for `json` to write it."""
    import tierflow.core.ledger as ledger_module

    ledger = Ledger(ledger_url)
    fill(ledger)
    reread: list[int] = []
    real = ledger_module._as_python_writes

    def counting(conn, texts, indent):  # noqa: ANN001, ANN202
        out = real(conn, texts, indent)
        reread.append(len(texts))
        return out

    monkeypatch.setattr(ledger_module, "_as_python_writes", counting)
    plain = {"since": "2026-11-01", "project": "EDU7001"}  # fill's rows with project EDU7001 hold odd strings too
    with ledger.transaction() as conn:
        conn.execute(
            calls.update().where(calls.c.project == "EDU7001").values(phase="draft", subject="note 1", deployment=None)
        )
    for fmt in (Format.json, Format.jsonl):
        reread.clear()
        assert from_database(ledger, fmt, capsys, 1, **plain) == per_row(ledger, fmt, capsys, **plain)
        assert reread == []
        assert from_database(ledger, fmt, capsys, 1) == per_row(ledger, fmt, capsys)
        assert len(reread) > 30  # the rows holding a quote, a backslash, a control character, DEL or non-ASCII


def test_spend_lists_the_newest_calls_in_a_table_and_says_how_many_matched(tmp_path: Path):
    """A year's ledger is not printed whole by a bare `tierflow spend`: the table lists the newest 50 calls and says
    how many there are; `--last N` chooses N for every format (0: every call), and cannot be mixed with `--by`."""
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", "")
    ledger = Ledger(f"sqlite:///{vault / '.tierflow' / 'ledger.sqlite'}")
    fill(ledger, 120)
    rows = ledger.rows()
    runner = CliRunner()

    def spend(*args: str) -> str:
        result = runner.invoke(app, ["spend", "--vault", str(vault), *args], env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        return result.stdout

    table = spend()
    assert "the newest 50 of 120 calls" in table and "--last N lists more" in table
    assert table.count("2026-11-") == 50 and "2026-11-08 23:00:00" in table  # the newest row is there
    assert spend("--last", "0").count("2026-11-") == 120 and "of 120" not in spend("--last", "0")
    assert spend("--last", "500").count("2026-11-") == 120
    assert [json.loads(line)["id"] for line in spend("--last", "3", "--format", "jsonl").splitlines()] == [
        r["id"] for r in rows[-3:]
    ]
    assert [r["id"] for r in json.loads(spend("--last", "2", "--format", "json"))] == [r["id"] for r in rows[-2:]]
    assert spend("--last", "2", "--format", "jsonl") == "".join(json.dumps(r) + "\n" for r in rows[-2:])
    assert spend("--last", "2", "--project", "thesis", "--format", "jsonl") == "".join(
        json.dumps(r) + "\n" for r in [r for r in rows if r["project"] == "thesis"][-2:]
    )
    listed = list(csv.DictReader(io.StringIO(spend("--last", "4", "--format", "csv"))))
    assert [int(r["id"]) for r in listed] == [r["id"] for r in rows[-4:]]
    assert len(spend("--format", "jsonl").splitlines()) == 120  # machine formats list every call by default
    mixed = runner.invoke(app, ["spend", "--vault", str(vault), "--last", "3", "--by", "tier"])
    assert mixed.exit_code != 0 and "--last lists calls; --by adds them up" in mixed.output


@pytest.mark.parametrize("since", ["2026-11-20", "20261120", "2026-W47-5"])
def test_spend_since_takes_any_iso_date_form_as_that_day(tmp_path: Path, since: str):
    """`--since` accepts what `date.fromisoformat` reads; a compact or week date means the same day."""
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", "")
    ledger = Ledger(f"sqlite:///{vault / '.tierflow' / 'ledger.sqlite'}")
    fill(ledger, 60)
    expected = json.loads(json.dumps(ledger.rows(since="2026-11-20")))
    assert expected  # fill's rows reach 2026-11-28
    result = CliRunner().invoke(app, ["spend", "--vault", str(vault), "--format", "json", "--since", since])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == expected
