"""The spend ledger: schema versions, one row per call, safe concurrent writes."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa
from conftest import call_record

from tierflow.core.ledger import COLUMNS, MIGRATIONS, CallRecord, Ledger
from tierflow.core.usage import Usage
from tierflow.report.spend import summarise


def record(n: int = 0, **kw) -> CallRecord:
    usage = Usage(input_tokens=10 + n, output_tokens=5, cache_read_tokens=2, reasoning_tokens=1)
    return call_record(**{"usage": usage, **kw})


def test_new_ledger_is_at_the_latest_schema_version(tmp_path: Path):
    ledger = Ledger.for_vault(tmp_path)
    assert ledger.version == len(MIGRATIONS)
    assert (tmp_path / ".tierflow" / "ledger.sqlite").exists()


def test_an_old_ledger_is_migrated_and_keeps_its_rows(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = sa.create_engine(url)
    from tierflow.core.ledger import schema_version

    with engine.begin() as conn:  # a version-1 ledger, as an earlier tierflow wrote it
        schema_version.create(conn)
        MIGRATIONS[0](conn)
        conn.execute(schema_version.insert().values(version=1))
        v1 = sa.Table("calls", sa.MetaData(), autoload_with=conn)
        conn.execute(v1.insert().values(**{k: v for k, v in record().row().items() if k in v1.c}))
    engine.dispose()
    ledger = Ledger(url)
    assert ledger.version == len(MIGRATIONS)
    assert len(ledger.rows()) == 1


def test_rows_have_the_stable_columns_and_group_totals(tmp_path: Path):
    ledger = Ledger.for_vault(tmp_path)
    ledger.record(record(0))
    ledger.record(record(1, phase="draft", cost_usd=None))
    rows = ledger.rows()
    assert tuple(rows[0]) == COLUMNS
    totals = {t["phase"]: t for t in summarise(rows, "phase")}
    assert totals["collate"]["input_tokens"] == 10 and totals["draft"]["unpriced_calls"] == 1


def test_threads_record_concurrently_without_losing_a_row(tmp_path: Path):
    ledger = Ledger.for_vault(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: ledger.record(record(n)), range(200)))
    rows = ledger.rows()
    assert len(rows) == 200 and sorted(r["input_tokens"] for r in rows) == list(range(10, 210))


def test_processes_record_concurrently_into_one_ledger(tmp_path: Path):
    script = (
        "import sys; sys.path.insert(0, 'tests'); from test_ledger import record; "
        "from tierflow.core.ledger import Ledger; "
        "l = Ledger(sys.argv[1]); [l.record(record(int(sys.argv[2]) * 1000 + i)) for i in range(50)]"
    )
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    Ledger(url)
    repo = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", script, url, str(p)], cwd=repo) for p in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert len(Ledger(url).rows()) == 200
