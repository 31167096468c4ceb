"""Batch student-feedback drafting under Prefect's harness, with both SDKs on wire-level doubles."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import frontmatter
import pytest
from conftest import anthropic_config, openai_config, stopped, write_config
from responders import schema_name, skilled

from tierflow.core.ledger import Ledger
from tierflow.flows.student_feedback import student_feedback
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply, Together

pytestmark = pytest.mark.usefixtures("prefect_harness")

ASSIGNMENT = "Teaching/EDU7001/essay-1"
FEEDBACK = f"{ASSIGNMENT}/feedback"
SUBMITTED = 14
EMPTY = "s2026008"
INJECTED = "s2026007"


def configure(vault: Path, double: ProviderDouble, provider: str, extra: str = "") -> None:
    existing = (vault / ".tierflow" / "config.toml").read_text()
    text = anthropic_config(double, extra) if provider == "anthropic" else openai_config(double, extra)
    write_config(vault / ".tierflow" / "config.toml", text + existing)


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def roster(vault: Path) -> dict[str, str]:
    out = {}
    for path in (vault / ASSIGNMENT / "submissions").glob("*.md"):
        meta = frontmatter.load(path).metadata
        out[str(meta["student_id"])] = str(meta["name"])
    return out


def drafts(vault: Path) -> dict[str, frontmatter.Post]:
    """Each student's feedback draft, by student id (`feedback/s2026001 feedback.md`)."""
    return {p.stem.removesuffix(" feedback"): frontmatter.load(p) for p in sorted((vault / FEEDBACK).glob("s*.md"))}


def schema_of(call: DoubleRequest) -> str | None:
    from responders import schema_name

    return schema_name(call)


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_direct_run_drafts_every_submission_with_cached_prefix(provider, feedback_vault, double, keys):
    configure(feedback_vault, double, provider)
    double.responder = skilled()
    summary = student_feedback(vault=str(feedback_vault))
    assert not summary.failed and not summary.halted

    notes = drafts(feedback_vault)
    assert set(notes) == set(roster(feedback_vault)) and len(notes) == SUBMITTED
    assert "No content submitted" in notes[EMPTY].content
    cohort = frontmatter.load(feedback_vault / FEEDBACK / "Cohort summary.md")
    assert "## Common misconceptions" in cohort.content and cohort.metadata["status"] == "draft"
    for sid, post in notes.items():
        assert post.metadata["status"] == "draft" and post.metadata["student_id"] == sid
        if sid != EMPTY:
            assert "## Next steps" in post.content and "tierflow_cost_usd" in post.metadata
            for criterion in ("Argument and critical evaluation", "Use of literature"):
                assert f"## {criterion}" in post.content

    calls = double.model_calls()
    by_schema: dict[str, set[str]] = {}
    for c in calls:
        by_schema.setdefault(schema_of(c), set()).add(c.json["model"])
    light, deep, standard = (
        ("claude-haiku-4-5", "claude-opus-4-6", "claude-sonnet-4-6")
        if provider == "anthropic"
        else ("gpt-5-nano", "gpt-5.1", "gpt-5-mini")
    )
    assert by_schema == {"evidenceout": {light}, "cohortout": {deep}, "feedbackout": {standard}}
    assert sum(schema_of(c) == "feedbackout" for c in calls) == SUBMITTED - 1  # the empty one costs nothing

    rows = Ledger.for_vault(feedback_vault).rows(run_id=summary.run_id)
    collate = [r for r in rows if r["phase"] == "collate"]
    assert len(collate) == SUBMITTED - 1
    assert sum(r["cache_read_tokens"] for r in rows) > 0, "the shared rubric prefix was never read from cache"
    if provider == "anthropic":
        # Haiku 4.5 caches a prefix only from 4,096 tokens: collate's shorter one goes unmarked and is never
        # billed as a cache write ...
        assert all(r["cache_write_tokens"] == 0 for r in collate)
        assert not any("cache_control" in json.dumps(c.json) for c in calls if schema_of(c) == "evidenceout")
        # ... while Sonnet caches the drafts' prefix (from 1,024 tokens): one call writes it, the rest read it.
        draft = [r for r in rows if r["phase"] == "draft"]
        assert sum(r["cache_write_tokens"] > 0 for r in draft) == 1
        assert sum(r["cache_read_tokens"] > 0 for r in draft) == len(draft) - 1
    report = (feedback_vault / summary.report.path).read_text()
    assert "| collate |" in report and "| synthesise |" in report and "| draft |" in report


def test_no_student_name_or_id_leaves_the_machine(feedback_vault, double, keys):
    configure(feedback_vault, double, "anthropic")
    double.responder = skilled()
    student_feedback(vault=str(feedback_vault))
    student_feedback(vault=str(feedback_vault), mode="batch")  # batch bodies too
    names = roster(feedback_vault)
    identities = set(names) | set(names.values()) | {p for n in names.values() for p in n.split() if len(p) > 2}
    assert double.requests
    for request in double.requests:
        # Raw bytes, and the parsed JSON with non-ASCII unescaped (the SDKs may send "Oc\u00e9ane").
        parsed = json.dumps(request.json, ensure_ascii=False) if request.json is not None else ""
        body = (request.raw.decode("utf-8", "replace") + parsed).casefold()
        leaked = [i for i in identities if i.casefold() in body]
        assert not leaked, f"{request.path} carried {leaked}"
    # Nor the ledger, which keeps every request's text, its answers and what it drafted (and may be a server).
    import sqlite3

    ledger = sqlite3.connect(feedback_vault / ".tierflow" / "ledger.sqlite")
    tables = [t for (t,) in ledger.execute("select name from sqlite_master where type = 'table'")]
    for table in tables:
        for row in ledger.execute(f"select * from {table}"):  # noqa: S608
            text = " ".join(str(v) for v in row if v is not None).casefold()
            leaked = [i for i in identities if i.casefold() in text]
            assert not leaked, f"ledger table {table} holds {leaked}"
    # ... and they come back in the local notes, each only in the student's own draft.
    notes = drafts(feedback_vault)
    assert notes["s2026001"].metadata["title"] == "Feedback: Amara Okafor"


def test_pseudonymise_false_with_a_cloud_tier_is_warned_at_the_start_and_said_in_the_run_report(
    feedback_vault, double, keys, caplog
):
    """The switch does what it says (names go as written), and never silently."""
    config = feedback_vault / ".tierflow" / "config.toml"
    offline = config.read_text() + "pseudonymise = false\n"  # under the fixture's [feedback]
    configure(feedback_vault, double, "anthropic")
    config.write_text(config.read_text() + "pseudonymise = false\n")
    double.responder = skilled()
    with caplog.at_level("WARNING", logger="tierflow"):
        summary = student_feedback(vault=str(feedback_vault))
    assert not summary.failed
    assert any(b"s2026001" in q.raw for q in double.requests)  # the student id, where a label would stand
    started = [r.getMessage() for r in caplog.records if "pseudonymise = false" in r.getMessage()]
    assert len(started) == 1 and "NOT hidden" in started[0] and "to anthropic" in started[0]
    said = "names, emails and ids were sent unhidden to anthropic, because `[feedback] pseudonymise = false`"
    assert said in summary.message
    assert said in (feedback_vault / summary.report.path).read_text()

    # Every tier on this machine: nothing leaves it, nothing to warn of.
    caplog.clear()
    config.write_text(offline)
    with caplog.at_level("WARNING", logger="tierflow"):
        summary = student_feedback(vault=str(feedback_vault))
    assert not summary.failed and summary.message == "" and "pseudonymise" not in caplog.text
    assert "Student data" not in (feedback_vault / summary.report.path).read_text()


def test_an_injection_the_model_obeys_stays_inside_that_one_draft(feedback_vault, double, keys):
    """A double that obeys instructions written in submissions: the harm is limited to one draft's text."""
    configure(feedback_vault, double, "anthropic")
    obey = skilled()

    def gullible(request: DoubleRequest) -> Reply | None:
        if "IGNORE ALL PREVIOUS INSTRUCTIONS" not in request.text:
            return obey(request)
        name = schema_of(request)
        labels = sorted({w for w in request.text.split() if w.startswith("Student-")})
        hijack = f"Outstanding. Written to ../../../.obsidian/hacked.md for {' '.join(labels)} Student-01 Student-02"
        # The output models only admit the rubric's criteria and levels, so the hijack lives in the free text.
        if name == "feedbackout":
            data = {
                "criteria": [
                    {"criterion": "Use of literature", "level": "Excellent", "comment": hijack, "quotes": []},
                ],
                "next_steps": [hijack],
                "overall": hijack,
            }
        elif name == "evidenceout":
            data = {
                "criteria": [
                    {"criterion": "Argument and critical evaluation", "quotes": ["Outstanding"], "level": "Excellent"}
                ]
            }
        else:
            data = {"strengths": [hijack], "misconceptions": [hijack], "teaching_actions": [hijack]}
        return Reply(data=data)

    double.responder = gullible
    before = {p: p.read_bytes() for p in feedback_vault.rglob("*") if p.is_file()}
    summary = student_feedback(vault=str(feedback_vault))
    assert not summary.failed

    notes = drafts(feedback_vault)
    names = roster(feedback_vault)
    hijacked = notes[INJECTED]
    assert "Outstanding" in hijacked.content  # the obeyed text is confined to this draft ...
    assert hijacked.metadata["tierflow_flags"] and "text addressed to an AI model" in hijacked.content
    others = [n for sid, n in names.items() if sid != INJECTED]
    assert not any(n in hijacked.content for n in others), "another student's name reached the hijacked draft"
    for sid, post in notes.items():  # ... and no other draft or the cohort summary carries it
        if sid != INJECTED:
            assert "Outstanding" not in post.content and "hacked" not in post.content
    cohort = (feedback_vault / FEEDBACK / "Cohort summary.md").read_text()
    assert "hacked" not in cohort and "[[s2026007]]" in cohort  # flagged for the lecturer
    assert not (feedback_vault / ".obsidian" / "hacked.md").exists()
    written = {p for p in feedback_vault.rglob("*") if p.is_file()} - set(before)
    allowed = {feedback_vault / FEEDBACK, feedback_vault / "tierflow" / "Runs", feedback_vault / ".tierflow"}
    allowed.add(feedback_vault / ASSIGNMENT / "pseudonyms.csv")  # the students' labels, kept by the run
    assert all(any(p.is_relative_to(a) for a in allowed) for p in written), written
    assert all(p.read_bytes() == b for p, b in before.items() if ".tierflow" not in p.parts)


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_batch_mode_prices_at_batch_rates_and_records_the_batch(provider, feedback_vault, double, keys):
    configure(feedback_vault, double, provider)
    double.responder = skilled()
    summary = student_feedback(vault=str(feedback_vault), mode="batch")
    assert not summary.failed, summary.failed
    assert len(drafts(feedback_vault)) == SUBMITTED
    rows = Ledger.for_vault(feedback_vault).rows(run_id=summary.run_id)
    batched = [r for r in rows if r["batch"]]
    assert {r["phase"] for r in batched} == {"collate", "synthesise", "draft"}
    assert all(r["batch_id"] for r in batched) and len(summary.batches) == 3
    assert {r["batch_id"] for r in batched} == set(summary.batches)
    report = (feedback_vault / summary.report.path).read_text()
    assert all(b in report for b in summary.batches)
    # Batch rows cost half of what the same usage costs without the batch API.
    from tierflow.core.config import load_config
    from tierflow.core.ledger import usage_of
    from tierflow.core.usage import price

    config = load_config(feedback_vault)
    for r in batched[:3]:
        full = price(usage_of(r), r["model"], provider_kind=provider, override=config.tier(r["tier"]).price)
        assert r["cost_usd"] == pytest.approx(float(full) * 0.5)
    creates = [q for q in double.requests if q.kind == "batch_create"]
    assert len(creates) == 3


def test_interrupted_batch_run_resumes_without_resubmitting(feedback_vault, keys):
    with ProviderDouble(skilled(), batch_polls_until_done=3) as double:
        configure(feedback_vault, double, "anthropic")
        first = student_feedback(vault=str(feedback_vault), mode="batch", wait=False)
        assert first.pending and "still running" in first.pending and len(first.batches) == 1 and not first.failed
        assert drafts(feedback_vault) == {}
        creates = [q for q in double.requests if q.kind == "batch_create"]
        assert len(creates) == 1

        resumed = student_feedback(vault=str(feedback_vault), mode="batch", run_id=first.run_id)
        assert not resumed.failed, resumed.failed
        creates = [q for q in double.requests if q.kind == "batch_create"]
        assert len(creates) == 3  # the collate batch was collected, not resubmitted; then cohort and drafts
        collate_items = [q for q in double.batch_items if schema_of(q) == "evidenceout"]
        assert len(collate_items) == SUBMITTED - 1
        assert len(drafts(feedback_vault)) == SUBMITTED


def test_a_no_wait_batch_run_is_pending_not_failed_in_prefect_and_at_the_command_line(feedback_vault, keys):
    """`--no-wait` submits and exits, as asked: a scheduled run of it shows Completed ("Batch pending") in the
    Prefect UI, not Failed; `tierflow run` exits 0 and says how to collect it; later phases start nothing."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    with ProviderDouble(skilled(), batch_polls_until_done=3) as double:
        configure(feedback_vault, double, "anthropic")
        args = ["run", "student-feedback", "--vault", str(feedback_vault), "--mode", "batch", "--no-wait"]
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "batch pending:" in result.output and "tierflow resume" in result.output
        assert "failed:" not in result.output
        pending = next(line for line in result.output.splitlines() if "batch pending:" in line)
        assert_runnable_resume(pending, feedback_vault)
        assert [q.kind for q in double.requests].count("batch_create") == 1  # the cohort waits for the collate batch

    # Found by the run's tag: an unfiltered listing stops at the server's page size (200 runs in a whole suite's
    # session) and is ordered by random UUIDs, so this run may not be on it.
    run_id = shlex.split(re.search(r"`(tierflow resume [^`]*)`", pending).group(1))[2]
    with get_client(sync_client=True) as client:  # the batch's calls are recorded when it is collected
        (flow_run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"tierflow-run:{run_id}"]))
        )
    state = flow_run.state
    assert state.is_completed() and state.name == "Batch pending" and "still running" in state.message
    (report,) = (feedback_vault / "tierflow" / "Runs").glob("*student-feedback*.md")
    assert "Batch pending" in report.read_text() and "Stopped early" not in report.read_text()
    assert_runnable_resume(report.read_text(), feedback_vault)


def assert_runnable_resume(text: str, vault: Path) -> None:
    """Every `tierflow resume` command quoted in `text` names a run and the vault, as it must be typed."""
    commands = re.findall(r"`(tierflow resume [^`]*)`", text)
    assert commands, text
    for command in commands:
        words = shlex.split(command)
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", words[2]), command  # a run id, not a placeholder
        assert Path(words[words.index("--vault") + 1]) == vault.resolve(), command


def test_expired_batch_lists_the_submissions_and_a_rerun_resubmits_only_those(feedback_vault, double, keys):
    configure(feedback_vault, double, "anthropic")
    double.responder = skilled()
    expire_once = {"Student-03", "Student-04"}

    def first_time(cid: str) -> bool:
        student = cid.rsplit("-", 1)[0]
        if student in expire_once:
            expire_once.discard(student)
            return True
        return False

    double.fail_in_batch(first_time, kind="expired")
    first = student_feedback(vault=str(feedback_vault), mode="batch")
    reasons = dict(first.skipped)
    expired = [p for p, r in reasons.items() if "expired" in r]
    assert len(expired) == 2, first.skipped
    items_before = len(double.batch_items)
    second = student_feedback(vault=str(feedback_vault), mode="batch")
    resubmitted = double.batch_items[items_before:]
    collate_again = [q for q in resubmitted if schema_of(q) == "evidenceout"]
    assert len(collate_again) == 2 and not second.failed
    assert len(drafts(feedback_vault)) == SUBMITTED


def test_a_batch_where_no_submission_got_an_answer_fails_the_run(feedback_vault, double, keys):
    """As in a direct run: every item of the phase lost (here the whole batch expired) fails the phase, so the run
    exits 3 and says why instead of ending as a success that wrote nothing; no cohort summary is paid for."""
    configure(feedback_vault, double, "anthropic")
    double.responder = skilled()
    double.expire_next_batch()
    summary = stopped(student_feedback, vault=str(feedback_vault), mode="batch")
    assert (
        summary.failed and f"collate failed: no submission got an answer; all {SUBMITTED - 1} failed" in summary.failed
    )
    assert "expired" in summary.failed
    creates = [q for q in double.requests if q.kind == "batch_create"]
    assert len(creates) == 1 and drafts(feedback_vault) == {}  # the collate batch only: no cohort, no drafts
    assert "no submission got an answer" in (feedback_vault / summary.report.path).read_text()


def test_a_failed_item_inside_a_batch_is_retried_on_its_own(feedback_vault, double, keys):
    configure(feedback_vault, double, "openai")
    double.responder = skilled()
    double.fail_in_batch({"Student-05-4"}, kind="errored")
    summary = student_feedback(vault=str(feedback_vault), mode="batch")
    assert not summary.failed and len(drafts(feedback_vault)) == SUBMITTED
    direct = [c for c in double.model_calls() if schema_of(c) == "evidenceout"]
    assert len(direct) == 1  # the one errored item, alone, outside the batch
    rows = Ledger.for_vault(feedback_vault).rows(run_id=summary.run_id)
    assert sum(1 for r in rows if r["phase"] == "collate" and not r["batch"]) == 1


def test_missing_or_broken_rubric_stops_before_any_model_call(feedback_vault, double, keys):
    from tierflow.vault.rubric import RubricError

    configure(feedback_vault, double, "anthropic")
    rubric = feedback_vault / ASSIGNMENT / "rubric.md"
    rubric.write_text("---\ntitle: rubric\n---\nJust some prose, no criteria.\n")
    with pytest.raises(RubricError, match=f"{ASSIGNMENT}/rubric.md: no criteria found"):
        student_feedback(vault=str(feedback_vault))
    rubric.unlink()
    with pytest.raises(RubricError, match="no rubric found"):
        student_feedback(vault=str(feedback_vault))
    assert double.model_calls() == []


def test_duplicate_student_ids_are_reported_and_neither_is_drafted(feedback_vault, double, keys):
    configure(feedback_vault, double, "anthropic")
    double.responder = skilled()
    source = feedback_vault / ASSIGNMENT / "submissions" / "s2026003.md"
    (source.parent / "s2026003-resubmitted.md").write_text(source.read_text())
    summary = student_feedback(vault=str(feedback_vault))
    reasons = [r for _, r in summary.skipped if "duplicate student id s2026003" in r]
    assert len(reasons) == 2
    assert "s2026003" not in drafts(feedback_vault)


@pytest.mark.parametrize("phase", ["collate", "draft"])
def test_a_cloud_tier_reached_only_by_an_override_still_gets_pseudonyms(feedback_vault, double, keys, phase):
    """M3: the routing table is all local, one phase goes to a cloud tier by `--tier`: no name may leave."""
    existing = (feedback_vault / ".tierflow" / "config.toml").read_text()
    (feedback_vault / ".tierflow" / "config.toml").write_text(
        f'profile = "offline"\n[providers.anthropic]\nkind = "anthropic"\nbase_url = "{double.anthropic_base_url}"\n'
        f'api_key_env = "ANTHROPIC_API_KEY"\nmax_retries = 2\n[tiers.cloud]\nmodel = "anthropic:claude-haiku-4-5"\n'
        + existing
    )
    double.responder = skilled()
    summary = student_feedback(vault=str(feedback_vault), tier={phase: "cloud"})
    assert not summary.failed and double.model_calls(), "the override did not reach the cloud tier"
    names = roster(feedback_vault)
    identities = set(names) | set(names.values()) | {p for n in names.values() for p in n.split() if len(p) > 2}
    for request in double.requests:
        parsed = json.dumps(request.json, ensure_ascii=False) if request.json is not None else ""
        body = (request.raw.decode("utf-8", "replace") + parsed).casefold()
        assert not [i for i in identities if i.casefold() in body], f"{request.path} carried a student's identity"


@pytest.mark.parametrize(
    ("base_url", "remote"),
    [
        ("https://api.together.xyz/v1", True),
        ("http://10.1.2.3:8000/v1", True),  # a university's vLLM: another machine on the network
        (None, True),  # the SDK then goes to $OPENAI_BASE_URL or api.openai.com
        ("http://localhost:11434/v1", False),
        ("http://127.0.0.1:8080/v1", False),
        ("http://[::1]:8000/v1", False),
    ],
)
def test_an_openai_compatible_server_off_this_machine_gets_pseudonyms(feedback_vault, base_url, remote):
    """OpenRouter, Together or a department's vLLM speak the local servers' protocol: only a loopback address
    keeps the text on the machine. The prompts `tierflow plan --show-prompts` renders carry no identity."""
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    url = "" if base_url is None else f'base_url = "{base_url}"\n'
    config = feedback_vault / ".tierflow" / "config.toml"
    config.write_text(
        config.read_text()
        + f'\n[providers.hosted]\nkind = "openai-compatible"\n{url}'
        + "".join(f'[tiers.{t}]\nmodel = "hosted:llama-3.3-70b"\n' for t in ("light", "standard", "deep"))
    )
    result = CliRunner().invoke(app, ["plan", "student-feedback", "--vault", str(feedback_vault), "--show-prompts"])
    assert result.exit_code == 0, result.output
    names = roster(feedback_vault)
    # The plan's own lines about skipped files name them: they stay on the screen, not in a prompt.
    prompts = "\n".join(line for line in result.output.splitlines() if not line.lstrip().startswith("skipped "))
    shown = [i for i in (*names, *names.values()) if i in prompts]
    assert (not shown) if remote else shown, shown


@pytest.mark.parametrize(
    ("ledger_url", "remote"),
    [
        ("postgresql://tierflow@db.example.ac.uk/tierflow", True),  # the department's server keeps every prompt
        ("postgresql://tierflow@10.1.2.3:5432/tierflow", True),
        ("postgresql:///tierflow?host=db.example.ac.uk", True),
        ("postgresql://tierflow@localhost/tierflow", False),
        ("postgresql://tierflow@127.0.0.1:5432/tierflow", False),
        ("postgresql:///tierflow", False),  # libpq's Unix socket
        ("postgresql:///tierflow?host=/var/run/postgresql", False),
        (None, False),  # SQLite in the vault
        # libpq tries each host of a list in turn: the socket or localhost may be down, and the next one answers
        ("postgresql:///tierflow?host=/var/run/postgresql,db.example.ac.uk", True),
        ("postgresql:///tierflow?host=localhost:5432,db.example.ac.uk:5432", True),
        ("postgresql:///tierflow?host=localhost&host=127.0.0.1&host=::1&host=/tmp", False),
        ("postgresql://tierflow@[::1]:5432/tierflow", False),
        ("postgresql://tierflow@localhost/tierflow?hostaddr=10.1.2.3", True),  # libpq connects to hostaddr
        ("postgresql://tierflow@localhost/tierflow?hostaddr=127.0.0.1", False),
        ("postgresql:///tierflow?service=teaching", True),  # pg_service.conf may name any host
        ("postgresql:///tierflow|PGHOST=db.example.ac.uk", True),  # what the URL leaves out, libpq takes from these
        ("postgresql:///tierflow|PGHOSTADDR=10.1.2.3", True),
        ("postgresql:///tierflow|PGSERVICE=teaching", True),
        ("postgresql:///tierflow|PGHOST=/var/run/postgresql", False),
    ],
)
def test_a_local_profile_hides_names_from_a_ledger_on_another_machine(ledger_url, remote, monkeypatch):
    """The ledger keeps every request's text: with a local or offline model, names would still leave the machine
    in the prompts a PostgreSQL ledger elsewhere records, so they are hidden as for a cloud tier."""
    from tierflow.core.config import load_config
    from tierflow.tasks.assignment import pseudonymise

    for name in ("PGHOST", "PGHOSTADDR", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    if ledger_url and "|" in ledger_url:
        ledger_url, variable = ledger_url.split("|")
        monkeypatch.setenv(*variable.split("=", 1))

    overrides = {"ledger_url": ledger_url} if ledger_url else None
    for profile in ("offline", "local"):
        config = load_config(profile=profile, overrides=overrides)
        assert config.may_reach_cloud is False
        assert pseudonymise(config) is remote, (profile, ledger_url)


def test_a_local_profile_keeps_everything_on_the_machine_without_pseudonyms(feedback_vault):
    from tierflow.core.config import load_config

    assert load_config(feedback_vault, profile="local").uses_cloud is False
    assert load_config(feedback_vault, profile="anthropic").uses_cloud is True


def test_offline_run_needs_no_keys(feedback_vault):
    summary = student_feedback(vault=str(feedback_vault), profile="offline")
    assert len(drafts(feedback_vault)) == SUBMITTED and not summary.failed
    assert json.dumps(summary.phases)


def test_a_draft_is_dated_by_the_vaults_time_zone_not_the_machines(feedback_vault, monkeypatch):
    """17:43 UTC on 18 November is already the 19th in Kiritimati (UTC+14), whatever zone the machine is in."""
    monkeypatch.setenv("TIERFLOW_CLOCK_START", "2026-11-18T17:43:00+00:00")
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    config = feedback_vault / ".tierflow" / "config.toml"
    config.write_text(config.read_text() + '\n[vault]\ntimezone = "Pacific/Kiritimati"\n')
    summary = student_feedback(vault=str(feedback_vault), profile="offline")
    assert not summary.failed
    assert {str(post.metadata["created"]) for post in drafts(feedback_vault).values()} == {"2026-11-19"}


def test_an_assignment_outside_the_vault_is_refused_before_anything_is_read(feedback_vault, double, keys, tmp_path):
    from tierflow.core.errors import VaultError

    configure(feedback_vault, double, "anthropic")
    outside = tmp_path / "elsewhere" / "essay-1"
    shutil.copytree(feedback_vault / ASSIGNMENT, outside)  # a complete assignment, but not in the vault
    (feedback_vault / "Teaching" / "linked").symlink_to(outside, target_is_directory=True)
    before = sorted(p.relative_to(tmp_path) for p in outside.rglob("*"))
    for given in ("../elsewhere/essay-1", str(outside), "Teaching/linked"):
        with pytest.raises(VaultError, match=f"resolves to {re.escape(str(outside))}, outside the vault"):
            student_feedback(vault=str(feedback_vault), assignment=given)
    assert double.model_calls() == []
    assert sorted(p.relative_to(tmp_path) for p in outside.rglob("*")) == before  # no feedback written there


def test_an_absolute_assignment_path_inside_the_vault_is_taken_as_its_vault_folder(feedback_vault):
    given = str(feedback_vault / ASSIGNMENT)
    summary = student_feedback(vault=str(feedback_vault), assignment=given, profile="offline")
    assert not summary.failed and len(drafts(feedback_vault)) == SUBMITTED


def test_warm_up_writes_each_shared_prefix_once_where_calls_started_together_each_pay(feedback_vault, keys):
    """On a double that bills cache writes as Anthropic does (every request that starts before the first write
    has landed misses and writes too), the drafts' shared prefix is written once with warm-up, by each call of
    the first wave without."""
    writes = {}
    for warm in (False, True):
        vault = feedback_vault.parent / f"warm-{warm}"
        shutil.copytree(feedback_vault, vault)
        # Without warm-up the first three drafts are answered together, as the thread pool's first wave is
        # when the model takes longer than the machine does to start them (on a busy machine, a fixed delay
        # was not always long enough). With it, one draft goes alone, and nothing is held: the delay is there so
        # that, were warm-up ignored, the drafts would overlap and write more than once.
        together = Together(3, match=lambda r: schema_name(r) == "feedbackout") if not warm else None
        with ProviderDouble(skilled(), realistic_cache=True, latency_s=0.3, hold=together) as double:
            configure(vault, double, "anthropic")
            config = vault / ".tierflow" / "config.toml"
            config.write_text(config.read_text() + f"warm_up = {str(warm).lower()}\n")  # under [feedback]
            summary = student_feedback(vault=str(vault))
        assert not summary.failed and not summary.halted
        rows = Ledger.for_vault(vault).rows(run_id=summary.run_id)
        draft = [r for r in rows if r["phase"] == "draft"]
        assert len(draft) == SUBMITTED - 1
        writes[warm] = sum(r["cache_write_tokens"] > 0 for r in draft)
        if warm:
            assert sum(r["cache_read_tokens"] > 0 for r in draft) == len(draft) - 1
    assert writes[True] == 1
    assert writes[False] >= 3, writes  # the first wave of the thread pool, all started before any write landed


SHORT_NAMES = {
    "s2026001": "Li Wu",
    "s2026002": "Ng Le",
    "s2026003": "Do Minh",
    "s2026004": "王小明",
    "s2026010": "สมชาย ใจดี",
}
"""A cohort whose names are short, or written in scripts without spaces between words."""


def test_short_names_and_names_in_every_script_never_reach_the_wire(feedback_vault, double, keys):
    submissions = feedback_vault / ASSIGNMENT / "submissions"
    for sid, name in SHORT_NAMES.items():
        path = submissions / f"{sid}.md"
        post = frontmatter.load(path)
        post.metadata["name"] = name
        post.content += f"\n\n{name}\n\nSigned: {name.split()[0].upper()}. Written by {name.split()[-1].lower()}.\n"
        path.write_text(frontmatter.dumps(post), encoding="utf-8")
    other = submissions / "s2026005.md"
    other.write_text(
        other.read_text(encoding="utf-8")
        + "\nI discussed this with Li, with NG and with le, and 我和王小明同学讨论过。สมชายเห็นด้วย (Minh too).\n",
        encoding="utf-8",
    )
    configure(feedback_vault, double, "anthropic")
    double.responder = skilled()
    summary = student_feedback(vault=str(feedback_vault))
    assert not summary.failed and double.model_calls()
    parts = {p for name in SHORT_NAMES.values() for p in name.split()} - {"Do"}  # "do" is in tierflow's prompts
    patterns = [
        re.compile(rf"(?<!\w){re.escape(p)}(?!\w)" if p.isascii() else re.escape(p), re.IGNORECASE) for p in parts
    ] + [re.compile(re.escape(sid)) for sid in SHORT_NAMES]
    for request in double.requests:
        parsed = json.dumps(request.json, ensure_ascii=False) if request.json is not None else ""
        body = request.raw.decode("utf-8", "replace") + parsed
        leaked = [p.pattern for p in patterns if p.search(body)]
        assert not leaked, f"{request.path} carried {leaked}"
    # The student's own draft names them again, locally.
    assert drafts(feedback_vault)["s2026001"].metadata["title"] == "Feedback: Li Wu"


def test_a_draft_an_earlier_version_named_after_the_student_id_is_moved_unless_edited(feedback_vault):
    student_feedback(vault=str(feedback_vault), profile="offline")
    folder = feedback_vault / FEEDBACK
    # As an earlier tierflow named them: `feedback/<student_id>.md`, shadowing the submission.
    for sid in ("s2026001", "s2026002"):
        (folder / f"{sid} feedback.md").rename(folder / f"{sid}.md")
    edited = folder / "s2026002.md"
    edited.write_text(edited.read_text(encoding="utf-8") + "\nMy own comment.\n", encoding="utf-8")
    student_feedback(vault=str(feedback_vault), profile="offline")
    assert not (folder / "s2026001.md").exists() and (folder / "s2026001 feedback.md").is_file()
    assert "My own comment." in edited.read_text(encoding="utf-8")  # the person's: kept where it is
    assert (folder / "s2026002 feedback.md").is_file()


def test_student_feedback_without_an_assignment_asks_for_one(feedback_vault, tmp_path):
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    config = write_config(tmp_path / "no-assignment.toml", 'profile = "offline"\n')
    for command in ("run", "plan"):
        args = [command, "student-feedback", "--vault", str(feedback_vault), "--config", str(config)]
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        message = " ".join(result.output.split())
        assert result.exit_code == 2 and "give the assignment folder: --assignment FOLDER" in message, message
        assert "no rubric found" not in message
    from tierflow.core.errors import VaultError

    with pytest.raises(VaultError, match="--assignment FOLDER"):  # a deployment's run without one says the same
        student_feedback(vault=str(feedback_vault), config=str(config))


def test_the_offline_cohort_summary_reads_as_prose_is_listed_and_next_steps_skip_top_criteria(feedback_vault):
    summary = student_feedback(vault=str(feedback_vault), profile="offline")
    assert not summary.failed
    cohort_path = f"{ASSIGNMENT}/feedback/Cohort summary.md"
    assert cohort_path in [w.path for w in summary.written]  # under "Notes written", with the drafts
    report = (feedback_vault / summary.report.path).read_text()
    assert f"[[{cohort_path.removesuffix('.md')}]]" in report
    cohort = (feedback_vault / cohort_path).read_text()
    assert "{'" not in cohort and "':" not in cohort  # no Python dict: "9 at Good, 2 at Satisfactory"
    assert re.search(r"\(\d+ at [A-Z][a-z]+(, \d+ at [A-Z][a-z]+)*\)", cohort), cohort
    assert cohort.count("the weakest criterion") <= 1
    for name, post in drafts(feedback_vault).items():
        if post.get("status") != "draft" or "## Next steps" not in post.content:
            continue
        levels = dict(re.findall(r"^## (.+)\n\n\*\*Suggested level:\*\* (\w+)", post.content, re.MULTILINE))
        steps = post.content.split("## Next steps", 1)[1].split("## Overall", 1)[0]
        for criterion, level in levels.items():
            if level == "Excellent":  # the rubric's top level
                assert f"'{criterion}'" not in steps, (name, criterion, steps)


def test_offline_next_steps_never_name_a_criterion_at_the_top_level():
    from tierflow.offline.skills import offline_feedback

    levels = [{"level": "Excellent"}, {"level": "Good"}, {"level": "Weak"}]
    data = {
        "criteria": [{"criterion": name, "levels": levels} for name in ("Argument", "Literature", "Structure")],
        "evidence": [
            {"criterion": "Argument", "level": "Excellent", "quotes": [], "score": None},
            {"criterion": "Literature", "level": "Good", "quotes": [], "score": None},
            {"criterion": "Structure", "level": "Weak", "quotes": [], "score": None},
        ],
        "submission": "An essay with no sentence about any criterion by name.",
    }
    steps = offline_feedback(data)["next_steps"]
    assert [s.split("'")[1] for s in steps] == ["Structure", "Literature"]  # the lowest first; never Argument
    data["evidence"] = [{**e, "level": "Excellent"} for e in data["evidence"]]
    steps = " ".join(offline_feedback(data)["next_steps"])
    assert steps and not any(name in steps for name in ("Argument", "Literature", "Structure")), steps


def test_the_cohort_summary_shows_the_tier_and_model_each_draft_was_written_on(feedback_vault):
    """The summary is written before the drafts; once they are written it lists each one's tier and model."""
    summary = student_feedback(vault=str(feedback_vault), profile="offline")
    assert not summary.failed
    cohort = (feedback_vault / FEEDBACK / "Cohort summary.md").read_text()
    assert "## Tier each draft was written on" in cohort
    rows = {sid: shown.removesuffix(", drafted in this run") for sid, shown in tier_rows(cohort).items()}
    assert all(shown.endswith(", drafted in this run") for shown in tier_rows(cohort).values())
    from tierflow.core.config import load_config

    ledger = Ledger(load_config(feedback_vault, profile="offline").ledger_url)
    answered = [r for r in ledger.rows(run_id=summary.run_id) if r["phase"] == "draft"]
    assert answered
    drafted = {sid for sid, post in drafts(feedback_vault).items() if sid != EMPTY}
    assert set(rows) == drafted  # every drafted student once; the empty submission had no call
    for sid, post in drafts(feedback_vault).items():
        if sid == EMPTY:
            continue
        model = next(m for m in post.metadata["tierflow_phase_models"] if m.startswith("draft: ")).removeprefix(
            "draft: "
        )
        tier, shown = rows[sid].removesuffix(")").split(" (", 1)
        assert model.endswith(shown), (sid, model, shown)
        assert tier in {r["tier"] for r in answered}
    # The summary is listed once under the notes written, as created in this run.
    listed = [w for w in summary.written if w.path.endswith("Cohort summary.md")]
    assert [w.action for w in listed] == ["created"]
    report = (feedback_vault / summary.report.path).read_text()
    assert "Spend per value class" not in report  # every call of this run had the default value


def tier_rows(cohort: str) -> dict[str, str]:
    """The rows of the cohort summary's "Tier each draft was written on", by student id (`{}` without it):
    `standard (extractive-standard)`, followed by `, drafted in this run` for this run's drafts."""
    if "## Tier each draft was written on" not in cohort:
        return {}
    table = cohort.split("## Tier each draft was written on", 1)[1]
    return dict(re.findall(r"^- \[\[[^\]]*?(s\d{7})\]\]: (\S+ \(.+\)(?:, drafted in this run)?)$", table, re.MULTILINE))


def test_a_rerun_keeps_every_students_tier_in_the_cohort_summary(feedback_vault):
    """A rerun drafts only the resubmitted student (here on another tier), and one with nobody to draft drafts
    nobody: the summary still lists every student with a draft, on the tier of the draft they have now, and marks
    those drafted in this run."""
    cohort_note = feedback_vault / FEEDBACK / "Cohort summary.md"

    def tiers() -> dict[str, str]:
        return {
            sid: row.removesuffix(", drafted in this run") for sid, row in tier_rows(cohort_note.read_text()).items()
        }

    def drafted_now() -> set[str]:
        return {sid for sid, row in tier_rows(cohort_note.read_text()).items() if row.endswith(", drafted in this run")}

    first = student_feedback(vault=str(feedback_vault), profile="offline")
    assert not first.failed
    everyone = {sid for sid in drafts(feedback_vault) if sid != EMPTY}
    assert tiers() == dict.fromkeys(everyone, "standard (extractive-standard)")
    marked = [drafted_now()]

    submission = feedback_vault / ASSIGNMENT / "submissions" / "s2026003.md"
    submission.write_text(submission.read_text() + "\n\nA paragraph added on resubmission, on assessment.\n")
    second = student_feedback(vault=str(feedback_vault), profile="offline", tier={"draft": "deep"})
    assert not second.failed
    assert [w.path for w in second.written if "Cohort summary" not in w.path] == [f"{FEEDBACK}/s2026003 feedback.md"]
    now = {**dict.fromkeys(everyone, "standard (extractive-standard)"), "s2026003": "deep (extractive-deep)"}
    assert tiers() == now  # the earlier run's students keep their rows
    marked.append(drafted_now())

    third = student_feedback(vault=str(feedback_vault), profile="offline")
    assert not third.failed
    assert not [w for w in third.written if "Cohort summary" not in w.path]  # nobody drafted
    assert tiers() == now  # and the section is still there
    assert [*marked, drafted_now()] == [everyone, {"s2026003"}, set()]  # the drafts each run wrote are marked


def test_the_run_report_shows_spend_per_value_class_when_values_differ(feedback_vault, double, keys):
    configure(feedback_vault, double, "anthropic", "[routing.value_by]\ndraft = 5\n")
    double.responder = skilled()
    summary = student_feedback(vault=str(feedback_vault))
    assert not summary.failed
    from tierflow.core.config import load_config

    rows = Ledger(load_config(feedback_vault).ledger_url).rows(run_id=summary.run_id)
    assert {r["value"] for r in rows} == {1.0, 5.0}
    report = (feedback_vault / summary.report.path).read_text()
    assert "### Spend per value class" in report
    section = report.split("### Spend per value class", 1)[1].split("\n## ", 1)[0]
    for value in (1.0, 5.0):
        billed = [r for r in rows if r["value"] == value and not r["cached_result"]]
        usd = sum(r["cost_usd"] for r in billed)
        assert usd > 0
        line = next(line for line in section.splitlines() if line.startswith(f"| value {value:g} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[4] == f"${usd:.4f}"
        assert cells[5] == f"{value * len(billed):g}"
        assert cells[6] == f"${usd / (value * len(billed)):.4f}"


@pytest.mark.parametrize(("phase", "tier"), [("collate", "light"), ("draft", "standard")])
def test_one_submission_too_long_for_the_window_names_its_note_and_largest_file_not_the_week(
    feedback_vault, phase, tier
):
    """An import's note whose appendix makes it too long: the advice is about that note, not selecting notes."""
    from lms_exports import docx_bytes

    if phase == "draft":  # collate's tier takes it; the draft's, which holds the submission too, does not
        config = feedback_vault / ".tierflow" / "config.toml"
        config.write_text(config.read_text() + "\n[tiers.light]\ncontext_window = 400000\n")

    submissions = feedback_vault / ASSIGNMENT / "submissions"
    post = frontmatter.load(submissions / "s2026001.md")
    folder = submissions / "s2026001"
    folder.mkdir()
    appendix = "".join(f"Survey response {n}: I read the comments once and then filed them.\n" for n in range(6000))
    (folder / "essay.docx").write_bytes(docx_bytes(post.content.split("\n\n")))
    (folder / "appendix.txt").write_text(appendix, encoding="utf-8")
    post.metadata["files"] = [f"{ASSIGNMENT}/submissions/s2026001/{name}" for name in ("appendix.txt", "essay.docx")]
    post.content = f"## Part 1 of 2 (.txt file)\n\n{appendix}\n\n## Part 2 of 2 (.docx file)\n\n{post.content}"
    (submissions / "s2026001.md").write_text(frontmatter.dumps(post), encoding="utf-8")

    summary = student_feedback(vault=str(feedback_vault), profile="offline")
    why = dict(summary.skipped)[f"{ASSIGNMENT}/submissions/s2026001.md"]
    assert why.startswith(f"{phase} failed: ") and f"(tier {tier})" in why
    assert "Select fewer notes" not in why and "--since" not in why
    assert f"{ASSIGNMENT}/submissions/s2026001.md is one student's submission, too long for one prompt" in why
    assert f"the largest file in it is appendix.txt ({len(appendix.strip()):,} of its " in why
    assert "Trim the note: cut appendix.txt from its text" in why and f"--tier {phase}=TIER" in why
    assert len(drafts(feedback_vault)) == SUBMITTED - 1  # the others are drafted


def slow_to_answer(vault: Path, double: ProviderDouble) -> None:
    """OpenAI on the double, each call timing out after 1 s, retried twice (max_retries = 2)."""
    existing = (vault / ".tierflow" / "config.toml").read_text()
    text = openai_config(double).replace("max_retries = 2", "max_retries = 2\ntimeout_s = 1", 1)
    write_config(vault / ".tierflow" / "config.toml", text + existing)


def failures(summary: object) -> list[tuple[str, str]]:
    """The submissions a run skipped because a phase failed on them (not the fixture's ignored attachment)."""
    return [(path, why) for path, why in summary.skipped if " failed" in why]  # type: ignore[attr-defined]


@pytest.mark.parametrize("fault", ["timeout", "cut"])
def test_openai_answers_lost_twice_are_retried_and_nobody_is_skipped(fault, feedback_vault, double, keys):
    """The first collate call's answer is lost twice (held past the timeout, or cut off mid-transfer), while the
    server's structured-output mode is still being learned: the SDK retries, every student is drafted, and the
    ledger has one `lost` row per answer the double billed and the client never read."""
    slow_to_answer(feedback_vault, double)
    double.responder = skilled()
    double.lose_next("chat", fault=fault, delay_s=2.5, times=2)
    summary = student_feedback(vault=str(feedback_vault))
    assert not failures(summary) and not summary.failed and len(drafts(feedback_vault)) == SUBMITTED
    calls = double.model_calls()
    rows = Ledger.for_vault(feedback_vault).rows(run_id=summary.run_id)
    lost = [c for c in calls if c.status == 200 and not c.delivered]
    assert len(lost) == 2 and all(c.fault == fault for c in lost)
    assert sum(r["outcome"] == "lost" for r in rows) == len(lost)
    assert sum(r["outcome"] != "lost" for r in rows) == sum(c.status == 200 and c.delivered for c in calls)


def test_a_student_whose_every_answer_timed_out_is_skipped_saying_what_to_raise_or_to_rerun(
    feedback_vault, double, keys
):
    """Retries exhausted on one student: the others are drafted, and the skip says which config keys to raise,
    or to rerun, which pays for that student alone."""
    slow_to_answer(feedback_vault, double)
    double.responder = skilled()
    double.lose_next("chat", delay_s=2.5, times=3)
    summary = student_feedback(vault=str(feedback_vault))
    assert not summary.failed and len(drafts(feedback_vault)) == SUBMITTED - 1
    ((_, why),) = failures(summary)
    assert why == (
        "collate failed: openai:gpt-5-nano: timed out after 1 s. raise timeout_s (1 s now) or max_retries (2 now) "
        "under [providers.openai] in the config, or rerun: finished answers are reused, not paid again"
    )
    rows = Ledger.for_vault(feedback_vault).rows(run_id=summary.run_id)
    assert sum(r["outcome"] == "lost" for r in rows) == 3
    double.reset()
    double.responder = skilled()
    again = student_feedback(vault=str(feedback_vault))
    assert not failures(again) and len(drafts(feedback_vault)) == SUBMITTED
    assert sum(schema_of(c) == "evidenceout" for c in double.model_calls()) == 1  # the skipped student's alone


def test_a_halt_budget_a_whole_batch_does_not_fit_says_what_the_batch_needs_and_that_nothing_was_sent(
    feedback_vault, double, keys
):
    """A batch is reserved whole: a `halt` budget that holds some of its requests but not all stops the phase
    before anything is sent, and says so (how many fitted, at what worst case, that the budget's `reserved` was
    the batch's own requests) with `--mode direct` as a way on; not only the last request's need."""
    configure(feedback_vault, double, "anthropic", '[budgets.run]\nusd = 0.02\npolicy = "halt"\n')
    double.responder = skilled()
    summary = stopped(student_feedback, vault=str(feedback_vault), mode="batch")
    assert summary.halted, summary
    said = " ".join(str(summary.halted).split())
    assert re.search(r"the batch of \d+ collate requests is sent whole", said), said
    assert re.search(r"\d+ fitted \(\$0\.\d{4} at worst, at batch prices", said) and "nothing was sent" in said, said
    assert "budget 'run'" in said and "--mode direct" in said, said
    assert [q.kind for q in double.requests].count("batch_create") == 0  # nothing sent, nothing to pay
    assert not Ledger.for_vault(feedback_vault).rows()
