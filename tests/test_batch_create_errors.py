"""A batch creation answered with an error is sent again only when no batch came of it. A 429 is a refusal before
anything was done: sent again. A 5xx may come after the batch was made (a gateway in front of the API, or the API
itself on a slow create, answers 502 or 504 once the work is done): the batch is looked for first, and collected if
the provider has it; sent again only if it has not. Either way one batch is created, paid for and recorded."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from responders import skilled
from test_batch_download import assert_recorded_once
from test_student_feedback import SUBMITTED, configure, drafts, keys, schema_of  # noqa: F401 (keys: a fixture)

from tierflow.flows.student_feedback import student_feedback
from tierflow.testing.double import ProviderDouble

pytestmark = pytest.mark.usefixtures("prefect_harness", "keys")


def creations(double: ProviderDouble) -> list[tuple[str, int | None, bool]]:
    """Batch creations and batch list reads, in order: (kind, the API's own status, whether its answer arrived)."""
    return [(q.kind, q.status, q.delivered) for q in double.requests if q.kind in ("batch_create", "batch_list")]


def listed_first(provider: str) -> list[tuple[str, int | None, bool]]:
    """The batch list read before a batch is sent: Anthropic's, whose batches a look tells apart only by size and age
    (the ids listed are never taken for the batch sent after them); none for OpenAI's, which carry tierflow's key."""
    return [("batch_list", 200, True)] if provider == "anthropic" else []


def assert_one_batch_per_phase(vault: Path, double: ProviderDouble, run_id: str) -> None:
    """Collate, cohort and drafts made one batch each, each collected: every item answered once, none twice."""
    made = [q for q in double.requests if q.kind == "batch_create" and q.status == 200]
    assert len(made) == 3
    assert len([q for q in double.batch_items if schema_of(q) == "evidenceout"]) == SUBMITTED - 1
    assert len(drafts(vault)) == SUBMITTED
    assert_recorded_once(vault, double, run_id)


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_batch_created_though_its_creation_was_answered_502_is_found_and_paid_once(
    provider: str, feedback_vault: Path, double: ProviderDouble
):
    configure(feedback_vault, double, provider)
    double.responder = skilled()
    double.fail_next(502, kind="batch_create", processed=True)  # the batch is made; the client is told 502

    summary = student_feedback(vault=str(feedback_vault), mode="batch")

    assert not summary.failed, summary.failed
    assert_one_batch_per_phase(feedback_vault, double, summary.run_id)
    # The collate batch was made, answered 502, found in the list and collected; then cohort and drafts.
    listed = listed_first(provider)
    assert creations(double)[: len(listed) + 2] == [*listed, ("batch_create", 200, False), ("batch_list", 200, True)]
    assert [c for c in creations(double) if c[0] == "batch_create"][1:] == [("batch_create", 200, True)] * 2


@pytest.mark.parametrize("status", [502, 429])
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_batch_creation_refused_with_nothing_made_is_sent_again(
    provider: str, status: int, feedback_vault: Path, double: ProviderDouble
):
    """A 502 that made nothing: looked for, not found, sent again. A 429: sent again without looking."""
    configure(feedback_vault, double, provider)
    double.responder = skilled()
    double.fail_next(status, kind="batch_create")

    summary = student_feedback(vault=str(feedback_vault), mode="batch")

    assert not summary.failed, summary.failed
    looked = [("batch_list", 200, True)] if status >= 500 else []
    listed = listed_first(provider)
    assert creations(double)[: len(listed) + 2 + len(looked)] == [
        *listed,
        ("batch_create", status, True),
        *looked,
        ("batch_create", 200, True),
    ]
    assert_one_batch_per_phase(feedback_vault, double, summary.run_id)


@pytest.mark.parametrize("refusals", [1, 3])
def test_a_batch_creation_refused_is_not_looked_for_so_another_tools_running_batch_is_not_taken_for_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    double: ProviderDouble,
    refusals: int,
    caplog: pytest.LogCaptureFixture,
):
    """Anthropic's batches carry no metadata: a look matches a running batch by its size and age only, so another
    tool's batch of as many requests, made minutes before on the same key, is taken for this one. A creation refused
    before anything was made (529 overloaded, as a 429) is never looked for: sent again, or, refused on the last try
    (max_retries = 2: three refusals), given up with its reservations released. Before, each 529 was looked for and
    the other batch taken for this one: the run waited on it, then reported every item expired."""
    from conftest import anthropic_config
    from test_batch_collect import calls, make_caller

    from tierflow.core.batch import run_batch
    from tierflow.core.budget import open_reservations
    from tierflow.core.errors import ProviderError
    from tierflow.testing.double import Reply

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda r: Reply(data={"label": "summative", "score": 2})
    caller = make_caller(tmp_path / "v", anthropic_config(double))
    client = caller.provider("anthropic").client
    params = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi."}]}
    other = client.messages.batches.create(requests=[{"custom_id": f"x{i}", "params": params} for i in range(3)])
    double.fail_next(529, kind="batch_create", times=refusals)  # overloaded: nothing made

    if refusals == 3:
        with pytest.raises(ProviderError):
            run_batch(caller, calls(3), phase="collate", complexity="low", poll_interval=0.01)
        assert [q.status for q in double.requests if q.kind == "batch_create"] == [200, 529, 529, 529]
    else:
        outcome = run_batch(caller, calls(3), phase="collate", complexity="low", poll_interval=0.01)
        assert sorted(outcome.answers) == ["s0", "s1", "s2"] and outcome.failed == {}, outcome.failed
    # The one list read is before the first try (`batches_since`): no try is looked for.
    read = [q.kind for q in double.requests if q.kind in ("batch_create", "batch_list")]
    assert read[:2] == ["batch_create", "batch_list"] and "batch_list" not in read[2:], read
    # Each try's line says which try it was, not the final error's "after 2 retries" while still retrying.
    said = [r.getMessage() for r in caplog.records if "sending a batch" in r.getMessage()]
    assert said[0] == "sending a batch to anthropic was answered HTTP 529 (try 1 of 3); sending it again in 0.5 s"
    assert not [line for line in said if "retries" in line]
    with caller.ledger.reading() as conn:
        from tierflow.core.ledger import batch_items

        assert other.id not in {r.batch_id for r in conn.execute(batch_items.select()).all()}
    assert open_reservations(caller.ledger) == []


class _Killed(BaseException):
    """The process dies here (as kill -9 would): nothing after it runs, the claim is left `submitting`."""


@pytest.mark.parametrize("how", ["502", "killed"])
def test_another_batch_of_as_many_requests_listed_before_ours_was_sent_is_never_taken_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, double: ProviderDouble, how: str
):
    """Anthropic's batches carry no metadata: a look for ours (after a 5xx that made nothing, or for the claim of a
    submitter killed before it sent it) matches a running batch by its size and age only. Another tool's batch of as
    many requests, made just before ours on the same key, was taken for it: the run waited on it, then reported
    every item expired. The batches listed before ours was sent are recorded with its claim and never taken for it."""
    from conftest import anthropic_config
    from test_batch_collect import calls, make_caller

    from tierflow.core.batch import run_batch
    from tierflow.core.budget import open_reservations
    from tierflow.core.ledger import batch_items
    from tierflow.testing.double import Reply

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda r: Reply(data={"label": "summative", "score": 2})
    caller = make_caller(tmp_path / "v", anthropic_config(double))
    client = caller.provider("anthropic").client
    params = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi."}]}
    other = client.messages.batches.create(requests=[{"custom_id": f"x{i}", "params": params} for i in range(3)])

    if how == "502":
        double.fail_next(502, kind="batch_create")  # nothing made
    else:
        provider = caller.provider("anthropic")

        def killed(*args: object, **kwargs: object) -> str:
            raise _Killed

        monkeypatch.setattr(provider, "submit_batch", killed)
        with pytest.raises(_Killed):
            run_batch(caller, calls(3), phase="collate", complexity="low", poll_interval=0.01)
        monkeypatch.undo()  # the next run: the claim's submitter is gone, so its batch is looked for
        monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    outcome = run_batch(caller, calls(3), phase="collate", complexity="low", poll_interval=0.01)

    assert sorted(outcome.answers) == ["s0", "s1", "s2"] and outcome.failed == {}, outcome.failed
    made = [q for q in double.requests if q.kind == "batch_create" and q.status == 200]
    assert len(made) == 2  # the other batch, and ours, sent once
    with caller.ledger.reading() as conn:
        rows = conn.execute(batch_items.select()).all()
    assert {r.batch_id for r in rows} == {made[1].response["id"]} and other.id not in {r.batch_id for r in rows}
    assert open_reservations(caller.ledger) == []


@pytest.mark.parametrize("fault", ["502", "reset", "502 then 429"])
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_batch_made_though_its_last_try_failed_and_listed_only_later_is_collected_by_the_rerun_and_paid_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, double: ProviderDouble, provider: str, fault: str
):
    """A 5xx on every try (max_retries = 2: three), the first of which made the batch; or an answer lost (the
    connection reset) after the batch was made; or a 5xx that made it, then two 429s (nothing made, but the first
    try's batch is there all the same). The provider's list lags behind: no look of this run finds it. The
    claim used to be forgotten and its reservations released, so the rerun sent the requests again and a second
    batch was made and paid for, the first never collected. Now the claim stays, its reservations held, the error
    says a rerun looks for the batch first, and the rerun finds it, collects it and records each answer once."""
    from test_batch_collect import calls, config_for, make_caller

    from tierflow.core.batch import run_batch
    from tierflow.core.budget import open_reservations
    from tierflow.core.errors import ProviderError
    from tierflow.core.ledger import batch_items
    from tierflow.testing.double import Reply

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    double.responder = lambda r: Reply(data={"label": "summative", "score": 2})
    caller = make_caller(tmp_path / "v", config_for(provider, double))
    if fault == "502":
        double.fail_next(502, kind="batch_create", processed=True)  # made, and answered 502
        double.fail_next(502, kind="batch_create", times=2)  # nothing made
        double.lag_batch_list(3)  # the look after each of the three tries misses it
    elif fault == "reset":
        double.lose_next("batch_create", fault="reset")  # made; the connection closed before its answer
        double.lag_batch_list(1)
    else:
        double.fail_next(502, kind="batch_create", processed=True)
        double.fail_next(429, kind="batch_create", times=2)  # refused: neither made nor looked for
        double.lag_batch_list(1)

    with pytest.raises(ProviderError) as failed:
        run_batch(caller, calls(3), phase="collate", complexity="low", poll_interval=0.01)

    assert "run-1" in str(failed.value) and "looks for it" in str(failed.value), str(failed.value)
    assert len(open_reservations(caller.ledger)) == 3  # kept for the batch that may be at the provider
    outcome = run_batch(caller, calls(3), phase="collate", complexity="low", poll_interval=0.01)

    assert sorted(outcome.answers) == ["s0", "s1", "s2"] and outcome.failed == {}, outcome.failed
    made = [q for q in double.requests if q.kind == "batch_create" and q.status == 200]
    assert len(made) == 1, [(q.status, q.delivered) for q in double.requests if q.kind == "batch_create"]
    assert len(double.batch_items) == 3
    rows = [r for r in caller.ledger.rows(run_id="run-1") if not r["cached_result"]]
    assert len(rows) == 3 and {r["batch_id"] for r in rows} == {made[0].response["id"]}
    with caller.ledger.reading() as conn:
        assert {r.status for r in conn.execute(batch_items.select()).all()} == {"done"}
    assert open_reservations(caller.ledger) == []


@pytest.mark.parametrize("status", [429, 502])
def test_an_openai_batch_sent_again_reuses_its_uploaded_input_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, double: ProviderDouble, status: int
):
    """A batch creation answered 429 or 5xx (nothing made) is sent again; each try uploaded the input file anew,
    leaving a stray file at OpenAI per try. The file is uploaded once per batch and reused."""
    from conftest import openai_config
    from test_batch_collect import calls, make_caller

    from tierflow.core.batch import run_batch
    from tierflow.testing.double import Reply

    monkeypatch.setenv("OPENAI_API_KEY", "k")
    double.responder = lambda r: Reply(data={"label": "summative", "score": 2})
    caller = make_caller(tmp_path / "v", openai_config(double))
    double.fail_next(status, kind="batch_create", times=2)

    outcome = run_batch(caller, calls(3), phase="collate", complexity="low", poll_interval=0.01)

    assert sorted(outcome.answers) == ["s0", "s1", "s2"] and outcome.failed == {}, outcome.failed
    assert [q.status for q in double.requests if q.kind == "batch_create"] == [status, status, 200]
    uploads = [q for q in double.requests if q.kind == "file_upload"]
    assert len(uploads) == 1
    inputs = {q.json["input_file_id"] for q in double.requests if q.kind == "batch_create"}
    assert inputs == {uploads[0].response["id"]}


def test_an_openai_batch_whose_input_file_cannot_be_uploaded_is_not_sent_nor_tried_again_around_the_sdks_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, double: ProviderDouble
):
    """The upload is tried with the SDK's retries (max_retries = 2: three tries). Failing, no batch was made. It used
    to be tried again around them, a look between each (up to nine uploads where three were asked for); now nothing
    more is sent, and its claim is dropped and its reservations released at once, for a rerun to send."""
    from conftest import openai_config
    from test_batch_collect import calls, make_caller

    from tierflow.core.batch import run_batch
    from tierflow.core.budget import open_reservations
    from tierflow.core.errors import ProviderError
    from tierflow.core.ledger import batch_items
    from tierflow.testing.double import Reply

    monkeypatch.setenv("OPENAI_API_KEY", "k")
    double.responder = lambda r: Reply(data={"label": "summative", "score": 2})
    caller = make_caller(tmp_path / "v", openai_config(double))
    double.fail_next(502, kind="file_upload", times=3)

    with pytest.raises(ProviderError, match="HTTP 502"):
        run_batch(caller, calls(3), phase="collate", complexity="low", poll_interval=0.01)

    assert [q.kind for q in double.requests] == ["file_upload"] * 3
    assert open_reservations(caller.ledger) == []
    with caller.ledger.reading() as conn:
        assert conn.execute(batch_items.select()).all() == []
    outcome = run_batch(caller, calls(3), phase="collate", complexity="low", poll_interval=0.01)
    assert sorted(outcome.answers) == ["s0", "s1", "s2"] and outcome.failed == {}, outcome.failed


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_batch_kept_after_its_last_try_failed_is_found_by_a_rerun_whose_requests_changed_in_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, double: ProviderDouble, provider: str
):
    """A batch of three made though every try of its creation failed (the list lagging), its claim kept. The
    lecturer then edits one note and runs again: two of the three requests are the same. The look for the kept batch
    was given only those two, so Anthropic's (matched by its size) was not found, the claim was forgotten and the two
    sent again in a second batch, the first paid for and never collected. The look is for the batch as it was sent."""
    from test_batch_collect import calls, config_for, make_caller

    from tierflow.core.batch import BatchCall, run_batch
    from tierflow.core.budget import open_reservations
    from tierflow.core.errors import ProviderError
    from tierflow.testing.double import Reply

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    double.responder = lambda r: Reply(data={"label": "summative", "score": 2})
    caller = make_caller(tmp_path / "v", config_for(provider, double))
    double.fail_next(502, kind="batch_create", processed=True)  # made, and answered 502
    double.fail_next(502, kind="batch_create", times=2)  # nothing made
    double.lag_batch_list(3)
    with pytest.raises(ProviderError):
        run_batch(caller, calls(3), phase="collate", complexity="low", poll_interval=0.01)

    edited = [*calls(2), BatchCall(key="s2", subject="s2", system="You are terse.", prompt="Classify 2 again.",
                                   output=calls(1)[0].output)]  # fmt: skip
    outcome = run_batch(caller, edited, phase="collate", complexity="low", poll_interval=0.01)

    assert sorted(outcome.answers) == ["s0", "s1", "s2"] and outcome.failed == {}, outcome.failed
    # The kept batch (s0, s1 and the old s2), and one for the edited s2 alone: s0 and s1 are paid for once.
    sizes = sorted(len(b.items) for b in double._batches.values())
    assert sizes == [1, 3], sizes
    assert len(open_reservations(caller.ledger)) <= 1  # the old s2's, held for the batch that answers it


def test_a_kept_batch_found_by_one_run_is_not_forgotten_by_another_whose_look_missed_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    double: ProviderDouble,
    ledger_url: str,
    caplog: pytest.LogCaptureFixture,
):
    """A batch made though every try of its creation failed, its claim kept. Two runs then start together (a resume
    and a scheduled run): the first's look finds the batch and records it; the second's, a moment behind on the
    lagging list, does not. The second forgot the claim all the same, deleting the first's record of the batch and
    releasing its reservations, and sent the requests again: a second batch paid for, the first's answers never
    recorded. A claim is forgotten only while it is still unsettled; found by another run, it is collected."""
    from conftest import anthropic_config
    from test_batch_collect import calls, make_caller

    from tierflow.core.batch import run_batch
    from tierflow.core.budget import open_reservations
    from tierflow.core.errors import ProviderError
    from tierflow.testing.double import Reply

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda r: Reply(data={"label": "summative", "score": 2})
    config = f"ledger_url = {json.dumps(ledger_url)}\n{anthropic_config(double)}"
    first = make_caller(tmp_path / "v", config)
    double.fail_next(502, kind="batch_create", processed=True)  # made, and answered 502
    double.fail_next(502, kind="batch_create", times=2)  # nothing made
    double.lag_batch_list(3)
    with pytest.raises(ProviderError):
        run_batch(first, calls(3), phase="collate", complexity="low", poll_interval=0.01)

    resume, scheduled = make_caller(tmp_path / "v", config), make_caller(tmp_path / "v", config)
    late = scheduled.provider("anthropic")

    def behind(*args: object, **kwargs: object) -> None:
        # The resume's look, on time, finds the batch and records it; this one's list did not show it yet.
        double.batch_polls_until_done = 1000  # still running while both runs look
        found = run_batch(resume, calls(3), phase="collate", complexity="low", wait=False)
        double.batch_polls_until_done = 1
        assert found.pending and not found.submitted, found  # found, and recorded: nothing sent
        return None

    monkeypatch.setattr(late, "find_batch", behind)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="tierflow")
    outcome = run_batch(scheduled, calls(3), phase="collate", complexity="low", poll_interval=0.01)
    # Its log says what happened: not that the batch never reached the provider and is sent again.
    said = [r.getMessage() for r in caplog.records if "was recorded" in r.getMessage()]
    assert said and all("another run" in line and "sent again" not in line for line in said), said

    assert sorted(outcome.answers) == ["s0", "s1", "s2"] and outcome.failed == {}, outcome.failed
    sizes = sorted(len(b.items) for b in double._batches.values())
    assert sizes == [3], sizes  # the batch made once, collected; none sent again
    rows = [r for r in scheduled.ledger.rows(run_id="run-1") if not r["cached_result"]]
    assert len(rows) == 3
    assert open_reservations(scheduled.ledger) == []
