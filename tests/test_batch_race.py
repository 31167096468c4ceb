"""Two runs started together on one batch: exactly one sends it. Both look for the batch before either records it
(held there, each until the other has looked); one claims every item and sends one batch, the other is refused,
says what to do, and keeps no reservation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import anthropic_config
from responders import skilled
from test_batch_collect import calls, make_caller
from test_student_feedback import SUBMITTED, configure, drafts, keys, schema_of  # noqa: F401 (keys: a fixture)

from tierflow.core import batch
from tierflow.core.batch import run_batch
from tierflow.core.budget import open_reservations
from tierflow.core.ledger import Ledger
from tierflow.testing.double import ProviderDouble, Reply

REPO = Path(__file__).resolve().parents[1]

# `tierflow run student-feedback --mode batch`, held after it has looked for the batch and reserved its items (the
# race's span: `_submitted` said nobody is sending them) until the other process has done so too. The two write
# their run reports one after the other: two runs writing the day's index note at the same moment is another race.
RACING_RUN = """
import fcntl, sys, time
from pathlib import Path
import tierflow.core.batch as batch
import tierflow.report.run_report as run_report

mine, theirs, reporting = Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
reserve, report = batch._reserve, run_report.write_run_report

def one_at_a_time(*args, **kwargs):
    with reporting.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return report(*args, **kwargs)

run_report.write_run_report = one_at_a_time  # before the flow's module imports it

def held(*args, **kwargs):
    reserved = reserve(*args, **kwargs)
    mine.touch()
    deadline = time.monotonic() + 300
    while not theirs.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return reserved

batch._reserve = held
from tierflow.cli.app import main
sys.argv = ["tierflow", "run", "student-feedback", "--vault", sys.argv[1], "--mode", "batch"]
main()
"""

REFUSED = "another process is submitting it in a batch; run again to collect it"


@pytest.mark.usefixtures("prefect_harness", "keys")
def test_two_runs_started_together_send_one_batch_and_the_other_is_refused(
    feedback_vault: Path, double: ProviderDouble, ledger_url: str, tmp_path: Path
):
    from prefect.settings import PREFECT_API_URL

    configure(feedback_vault, double, "anthropic")
    config = feedback_vault / ".tierflow" / "config.toml"
    config.write_text(f"ledger_url = {json.dumps(ledger_url)}\n{config.read_text()}")
    double.responder = skilled()
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "400"}
    first, second = tmp_path / "first-reserved", tmp_path / "second-reserved"
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", RACING_RUN, str(feedback_vault), str(mine), str(theirs), str(tmp_path / "report")],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for mine, theirs in ((first, second), (second, first))
    ]
    ended = [(run.communicate(timeout=600)[0], run.returncode) for run in runs]

    codes = sorted(code for _, code in ended)
    assert codes == [0, 3], ended  # one drafted everything; the other was refused, not crashed
    refused = next(out for out, code in ended if code == 3)
    assert "unexpectedly" not in refused and "NoResultFound" not in refused, refused
    assert REFUSED in " ".join(refused.split()), refused  # says what to do

    creates = [q for q in double.requests if q.kind == "batch_create"]
    assert len(creates) == 3, [q.kind for q in double.requests]  # one collate batch, then cohort and drafts
    assert len([q for q in double.batch_items if schema_of(q) == "evidenceout"]) == SUBMITTED - 1
    assert len(drafts(feedback_vault)) == SUBMITTED

    ledger = Ledger(ledger_url)
    rows = [r for r in ledger.rows() if not r["cached_result"]]
    answered = [q for q in double.batch_items if q.status == 200] + [c for c in double.model_calls() if c.status == 200]
    assert len(rows) == len(answered)  # every billed item recorded, once
    collate = Counter(r["subject"] for r in rows if r["phase"] == "collate")
    assert len(collate) == SUBMITTED - 1 and set(collate.values()) == {1}
    assert not [r for r in rows if r["outcome"] == "lost"]
    assert open_reservations(ledger) == []  # the refused run released its reservations


def test_two_processes_sending_an_expired_batch_again_send_it_once(tmp_path, monkeypatch, ledger_url):
    """Each claims the rows the expired batch left, as it saw them: the second finds them claimed since."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    with ProviderDouble(lambda r: Reply(data={"label": "summative", "score": 2})) as double:
        text = f"ledger_url = {json.dumps(ledger_url)}\n{anthropic_config(double)}"
        double.expire_next_batch()
        expired = run_batch(make_caller(tmp_path / "v", text), calls(3), phase="collate", complexity="low")
        assert sorted(expired.failed) == ["s0", "s1", "s2"] and "expired" in expired.failed["s0"]

        together = threading.Barrier(2, timeout=120)
        reserve = batch._reserve

        def held(*args: Any, **kwargs: Any) -> Any:
            reserved = reserve(*args, **kwargs)
            together.wait()  # both have looked for the batch and reserved, neither has claimed it
            return reserved

        monkeypatch.setattr(batch, "_reserve", held)
        outcomes: list[Any] = [None, None]
        errors: list[BaseException] = []

        def resend(index: int) -> None:
            try:
                caller = make_caller(tmp_path / f"process-{index}", text)
                outcomes[index] = run_batch(caller, calls(3), phase="collate", complexity="low", poll_interval=0.01)
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)
                together.abort()

        threads = [threading.Thread(target=resend, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors

        sent, refused = sorted(outcomes, key=lambda o: len(o.failed))
        assert sorted(sent.answers) == ["s0", "s1", "s2"] and not sent.failed
        assert not refused.answers and set(refused.failed.values()) == {REFUSED}
        assert len([q for q in double.requests if q.kind == "batch_create"]) == 2  # the expired one, then one more
        rows = [r for r in Ledger(ledger_url).rows() if not r["cached_result"]]
        assert Counter(r["subject"] for r in rows) == {"s0": 1, "s1": 1, "s2": 1}
        assert open_reservations(Ledger(ledger_url)) == []
