"""`tierflow spend --format json|jsonl` lists calls as text the database writes, one compact JSON object a call: the
values of the ledger's rows for every kind of value a column holds, in order, in pieces written by two connections."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config
from typer.testing import CliRunner

from tierflow.cli.app import Format, _write_json_text, app
from tierflow.core.errors import LedgerError
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


def listed(ledger: Ledger, fmt: Format, capsys: pytest.CaptureFixture[str], **options: Any) -> str:
    capsys.readouterr()
    between = ",\n" if fmt is Format.json else "\n"
    _write_json_text(ledger.stream_json(between=between, **options), fmt)
    return capsys.readouterr().out


def as_listed(value: Any, dialect: str) -> Any:
    """A row's value as the listing reads back: SQLite writes a float with 15 significant digits."""
    if isinstance(value, float) and math.isfinite(value) and dialect == "sqlite":
        return float(f"{value:.15g}")
    return value


def expected(ledger: Ledger, **filters: Any) -> list[dict[str, Any]]:
    dialect = ledger.engine.dialect.name
    return [{k: as_listed(v, dialect) for k, v in row.items()} for row in ledger.rows(**filters)]


def calls_of(text: str, fmt: Format) -> list[dict[str, Any]]:
    """The calls of a listing, checking its shape: `jsonl` a call a line; `json` an array with a call a line."""
    lines = text.splitlines()
    if fmt is Format.json:
        assert text.endswith("\n") and lines[0] in ("[", "[]")
        assert json.loads(text) == [json.loads(line.rstrip(",")) for line in lines[1:-1]]
        return json.loads(text)
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("fmt", [Format.json, Format.jsonl])
def test_the_database_lists_every_call_with_its_values(
    ledger_url: str, fmt: Format, capsys: pytest.CaptureFixture[str]
):
    ledger = Ledger(ledger_url)
    fill(ledger)
    everything = expected(ledger)
    assert len(everything) == 120
    # Pieces of 1 and 7 ids (many pieces, in flight on two connections at once) and one piece of all.
    for batch in (1, 7, 1000):
        for processes in (1, 2, 3):
            assert calls_of(listed(ledger, fmt, capsys, batch=batch, processes=processes), fmt) == everything
    for filters in ({"since": "2026-11-20"}, {"project": "é"}, {"run_id": "run-3"}, {"project": "none such"}):
        assert calls_of(listed(ledger, fmt, capsys, batch=7, **filters), fmt) == expected(ledger, **filters)
    newest = calls_of(listed(ledger, fmt, capsys, batch=7, last=9, project="thesis"), fmt)
    assert newest == expected(ledger, project="thesis")[-9:]


def test_floats_booleans_infinities_and_text_read_back_as_the_ledger_holds_them(
    ledger_url: str, capsys: pytest.CaptureFixture[str]
):
    ledger = Ledger(ledger_url)
    fill(ledger, 60)
    rows = calls_of(listed(ledger, Format.jsonl, capsys), Format.jsonl)
    exact = ledger.engine.dialect.name == "postgresql"
    for got, row in zip(rows, ledger.rows(), strict=True):
        assert list(got) == list(row)  # every column, in the ledger's order
        for key, value in row.items():
            if isinstance(value, float) and math.isfinite(value):
                assert got[key] == value if exact else math.isclose(got[key], value, rel_tol=1e-14), (key, value)
            else:
                assert got[key] == value and type(got[key]) is type(value), (key, value)
    text = listed(ledger, Format.jsonl, capsys)
    assert "Infinity" not in text and "9e999" in text  # JSON's own numbers, which `json.loads` reads as inf


def test_non_ascii_text_is_escaped_when_the_output_cannot_take_it(
    ledger_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    ledger = Ledger(ledger_url)
    fill(ledger, 30)
    utf8 = listed(ledger, Format.jsonl, capsys)
    assert "東京" in utf8  # UTF-8, as JSON is exchanged
    out = io.TextIOWrapper(io.BytesIO(), encoding="latin-1", newline="")
    monkeypatch.setattr("sys.stdout", out)
    _write_json_text(ledger.stream_json(), Format.jsonl)
    out.flush()
    text = out.buffer.getvalue().decode("ascii")  # type: ignore[attr-defined]
    assert "\\u6771\\u4eac" in text and "\\ud83d\\ude00" in text
    assert calls_of(text, Format.jsonl) == calls_of(utf8, Format.jsonl)


def children() -> set[int]:
    """This process's child processes (Linux's /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.add(int(stat.parent.name))
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="listings are written by forked processes on Linux only")
def test_a_listing_stopped_early_leaves_no_process_behind(ledger_url: str):
    """`tierflow spend --format jsonl | head` closes the listing after its first piece: the processes writing
    pieces ahead see their reader go, end, and are waited for."""
    ledger = Ledger(ledger_url)
    fill(ledger, 120)
    before = children()
    pieces = ledger.stream_json(batch=2, processes=3)
    first = next(pieces)
    assert [json.loads(line)["id"] for line in first.splitlines()] == [1, 2]
    assert len(children() - before) == 3
    pieces.close()
    assert children() - before == set()


@pytest.mark.skipif(sys.platform != "linux", reason="listings are written by forked processes on Linux only")
def test_a_listing_that_fails_in_a_writer_process_says_why(ledger_url: str, monkeypatch: pytest.MonkeyPatch):
    import tierflow.core.ledger as ledger_module

    ledger = Ledger(ledger_url)
    fill(ledger, 20)
    monkeypatch.setattr(ledger_module, "_row_json", lambda dialect: "SELECT no_such_column FROM calls WHERE {where}")
    before = children()
    with pytest.raises(LedgerError, match="the listing could not be read from the ledger: .*no_such_column"):
        list(ledger.stream_json(batch=5, processes=2))
    assert children() - before == set()


def test_spend_format_json_lists_every_call_from_the_command_line(tmp_path: Path):
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", "")
    ledger = Ledger(f"sqlite:///{vault / '.tierflow' / 'ledger.sqlite'}")
    fill(ledger, 30)
    result = CliRunner().invoke(app, ["spend", "--vault", str(vault), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert calls_of(result.stdout, Format.json) == expected(ledger)
    empty = tmp_path / "empty"
    write_config(empty / ".tierflow" / "config.toml", "")
    Ledger.for_vault(empty)  # a ledger with no calls yet (a vault with no ledger at all says so: test_first_use)
    for fmt, text in (("json", "[]\n"), ("jsonl", "")):
        result = CliRunner().invoke(app, ["spend", "--vault", str(empty), "--format", fmt])
        assert result.exit_code == 0 and result.stdout == text


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
    assert calls_of(spend("--last", "2", "--format", "jsonl"), Format.jsonl) == expected(ledger)[-2:]
    assert (
        calls_of(spend("--last", "2", "--project", "thesis", "--format", "jsonl"), Format.jsonl)
        == expected(ledger, project="thesis")[-2:]
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
    assert expected(ledger, since="2026-11-20")  # fill's rows reach 2026-11-28
    result = CliRunner().invoke(app, ["spend", "--vault", str(vault), "--format", "json", "--since", since])
    assert result.exit_code == 0, result.output
    assert calls_of(result.stdout, Format.json) == expected(ledger, since="2026-11-20")
