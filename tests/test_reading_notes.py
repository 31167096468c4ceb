"""The weekly reading-notes flow under Prefect's test harness, against the real Anthropic SDK on a wire double."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import frontmatter
import pytest
from conftest import anthropic_config, stopped, write_config
from responders import skilled

from tierflow.core.ledger import Ledger
from tierflow.flows.reading_notes import reading_notes
from tierflow.offline import SKILLS, prompt_data
from tierflow.report.spend import compact_count, row_tokens
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply

pytestmark = pytest.mark.usefixtures("prefect_harness")

SINCE, UNTIL = date(2026, 11, 16), date(2026, 11, 22)
SELECTED = 8  # literature notes read that week (a ninth, from October, must not be selected)


def snapshot(vault: Path) -> dict[str, str]:
    return {
        p.relative_to(vault).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in vault.rglob("*")
        if p.is_file() and ".tierflow" not in p.parts
    }


def run(vault: Path, **kw: Any):
    return reading_notes(vault=str(vault), since=SINCE, until=UNTIL, **kw)


@pytest.fixture
def anthropic_vault(reading_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    existing = (reading_vault / ".tierflow" / "config.toml").read_text()
    write_config(reading_vault / ".tierflow" / "config.toml", anthropic_config(double) + existing)
    double.responder = skilled()
    return reading_vault


def drafts(vault: Path) -> dict[str, frontmatter.Post]:
    folder = vault / "Concepts" / "Drafts"
    return {p.name: frontmatter.load(p) for p in sorted(folder.glob("*.md"))} if folder.exists() else {}


def test_phases_use_their_tiers_models_on_the_wire_and_in_the_ledger(anthropic_vault: Path, double):
    before = snapshot(anthropic_vault)
    summary = run(anthropic_vault)

    calls = double.model_calls()
    by_tool = {}
    for c in calls:
        by_tool.setdefault(c.forced_tool, set()).add(c.json["model"])
    assert by_tool == {
        "collationout": {"claude-haiku-4-5"},
        "synthesisout": {"claude-opus-4-6"},
        "draftout": {"claude-sonnet-4-6"},
    }
    rows = Ledger.for_vault(anthropic_vault).rows(run_id=summary.run_id)
    models = {(r["phase"], r["complexity"], r["tier"], r["model"]) for r in rows}
    assert models == {
        ("collate", "low", "light", "claude-haiku-4-5"),
        ("synthesise", "high", "deep", "claude-opus-4-6"),
        ("draft", "medium", "standard", "claude-sonnet-4-6"),
    }
    assert sum(r["phase"] == "collate" for r in rows) == SELECTED
    assert all(r["flow_run_id"] and r["task_run_id"] and r["cost_usd"] > 0 for r in rows)

    written = drafts(anthropic_vault)
    assert written and len(written) == len(summary.written)
    literature = {p.stem for p in (anthropic_vault / "Reading").glob("*.md")}
    for name, post in written.items():
        meta = post.metadata
        assert meta["status"] == "draft" and "concept" in meta["tags"]
        assert meta["sources"] and all(s.startswith("[[") and s[2:-2] in literature for s in meta["sources"])
        assert meta["tierflow_run"] == summary.run_id and meta["tierflow_cost_usd"] > 0
        assert any(m.startswith("draft: anthropic:claude-sonnet-4-6") for m in meta["tierflow_phase_models"])
        assert all(not isinstance(v, dict) for v in meta.values()), f"{name}: front-matter must be flat"
        assert "[!warning] Not found verbatim" not in post.content
    # Dataview sums of the drafts add up to the run's spend.
    total = sum(r["cost_usd"] for r in rows)
    assert sum(p.metadata["tierflow_cost_usd"] for p in written.values()) == pytest.approx(total, rel=1e-3)

    report = anthropic_vault / summary.report.path
    text = report.read_text()
    assert "| collate | light | anthropic:claude-haiku-4-5 |" in text
    assert "All-deep equivalent" in text and "Saved" in text and "```mermaid" not in text
    assert "**Providers**: anthropic" in text and "Profile" not in text
    assert "| **total** |" in text and "█" in text
    for w in summary.written:
        assert f"[[{Path(w.path).with_suffix('').as_posix()}]]" in text
    after = snapshot(anthropic_vault)
    changed = {p for p in before if before[p] != after.get(p)}
    assert changed == set(), "a pre-existing vault file changed"


def test_rerun_of_an_unchanged_week_spends_nothing_and_writes_no_new_notes(anthropic_vault: Path, double):
    first = run(anthropic_vault)
    notes_before = snapshot(anthropic_vault)
    calls_before = len(double.model_calls())
    second = run(anthropic_vault)
    assert len(double.model_calls()) == calls_before
    rows = Ledger.for_vault(anthropic_vault).rows(run_id=second.run_id)
    assert rows and all(r["cached_result"] for r in rows)
    assert [r for r in rows if r["input_tokens"] + r["output_tokens"] > 0] == []
    drafts_after = {p: h for p, h in snapshot(anthropic_vault).items() if p.startswith("Concepts/Drafts/")}
    assert drafts_after == {p: h for p, h in notes_before.items() if p.startswith("Concepts/Drafts/")}
    assert all(w.action == "unchanged" for w in second.written)
    assert first.run_id != second.run_id


def test_two_runs_on_one_day_leave_two_report_notes_and_a_day_index(anthropic_vault: Path, double):
    first = run(anthropic_vault)
    first_text = (anthropic_vault / first.report.path).read_text()
    second = run(anthropic_vault)  # answered from the cache: it must not replace the first run's report
    assert first.report.path != second.report.path
    assert (anthropic_vault / first.report.path).read_text() == first_text
    runs_folder = anthropic_vault / "tierflow" / "Runs"
    reports = {p.name: frontmatter.load(p) for p in runs_folder.glob("*.md") if "tierflow_run" in frontmatter.load(p)}
    assert {post["tierflow_run"] for post in reports.values()} == {first.run_id, second.run_id}
    for summary in (first, second):
        post = frontmatter.load(anthropic_vault / summary.report.path)
        day = post["tierflow_day"]
        assert Path(summary.report.path).name.startswith(f"{day} reading-notes ")
        assert summary.run_id.rsplit("-", 1)[-1] in summary.report.path
        table = [line for line in post.content.splitlines() if line.startswith("| collate | light |")]
        assert len(table) == 1 and "## Spend per phase" in post.content
    first_calls = int(next(x for x in first_text.splitlines() if x.startswith("| collate |")).split("|")[4])
    assert first_calls == SELECTED and first.cost_usd > 0 and second.cost_usd == 0
    (index,) = [p for p in runs_folder.glob("*.md") if "tierflow_day_index" in frontmatter.load(p)]
    listed = index.read_text()
    assert f"[[{Path(first.report.path).stem}]]" in listed and f"[[{Path(second.report.path).stem}]]" in listed
    assert f"[[{index.stem}]]" in (anthropic_vault / second.report.path).read_text()


def test_a_report_never_takes_the_name_of_a_note_a_person_wrote(anthropic_vault: Path, double):
    from tierflow.report.run_report import report_title
    from tierflow.vault.notes import NoteWriter

    writer = NoteWriter(anthropic_vault, "tierflow/Runs")
    now = datetime(2026, 11, 18, 9, 5, tzinfo=UTC)
    title = report_title(writer, "20261118-090500-abc123", "reading-notes", now)
    assert title == "2026-11-18 reading-notes 0905 abc123"
    writer.target(title).parent.mkdir(parents=True, exist_ok=True)
    writer.target(title).write_text("my own notes on that run\n")
    assert report_title(writer, "20261118-090500-abc123", "reading-notes", now) == f"{title} (2)"


def test_one_new_literature_note_recollates_only_that_note(anthropic_vault: Path, double):
    run(anthropic_vault)
    (anthropic_vault / "Reading" / "Shute2008 - Focus on formative feedback.md").write_text(
        "---\ntitle: Focus on formative feedback\ncitekey: shute2008\ndate: 2026-11-21\ntags: [literature]\n---\n"
        "## Notes\n\n> [!quote] p. 154\n"
        "> Formative feedback should be nonevaluative, supportive, timely, and specific.\n"
    )
    before = len(double.model_calls())
    run(anthropic_vault)
    new_collations = [c for c in double.model_calls()[before:] if c.forced_tool == "collationout"]
    assert len(new_collations) == 1 and "shute2008" in new_collations[0].text


def test_user_edited_draft_survives_a_rerun_byte_for_byte(anthropic_vault: Path, double):
    first = run(anthropic_vault)
    target = anthropic_vault / first.written[0].path
    edited = target.read_text() + "\nMy own thought, added on Monday.\n"
    target.write_text(edited)
    double.responder = skilled(
        {
            "draftout": lambda r: Reply(
                data={**SKILLS["draftout"](prompt_data(r.last_user_text)), "summary": "A new angle."}
            )
        }
    )
    second = run(anthropic_vault)
    assert target.read_text() == edited
    siblings = [w for w in second.written if w.action == "kept-user-edit"]
    assert siblings and "you edited it" in siblings[0].message
    assert all((anthropic_vault / w.path).parent == target.parent for w in second.written)


def test_hostile_title_from_the_model_stays_inside_the_output_folder(anthropic_vault: Path, double):
    def hostile(request: DoubleRequest) -> Reply:
        data = SKILLS["synthesisout"](prompt_data(request.last_user_text))
        data["concepts"][0]["name"] = "../../.obsidian/x"
        data["concepts"][1]["name"] = "/etc/passwd"
        data["concepts"][2]["name"] = "CON"
        return Reply(data=data)

    double.responder = skilled({"synthesisout": hostile})
    obsidian_before = snapshot(anthropic_vault / ".obsidian")
    summary = run(anthropic_vault)
    out = (anthropic_vault / "Concepts" / "Drafts").resolve()
    for w in summary.written:
        assert (anthropic_vault / w.path).resolve().parent == out
    assert snapshot(anthropic_vault / ".obsidian") == obsidian_before
    assert not (anthropic_vault / ".obsidian" / "x.md").exists()
    names = {Path(w.path).name for w in summary.written}
    assert ".. .. .obsidian x.md" in names or any("obsidian x" in n for n in names)


def test_fabricated_quotation_is_marked_in_the_draft(anthropic_vault: Path, double):
    def fabricate(request: DoubleRequest) -> Reply:
        data = SKILLS["draftout"](prompt_data(request.last_user_text))
        data["quotes"].append({"source": data["quotes"][0]["source"], "text": "Feedback always improves learning."})
        return Reply(data=data)

    double.responder = skilled({"draftout": fabricate})
    summary = run(anthropic_vault)
    post = frontmatter.load(anthropic_vault / summary.written[0].path)
    assert post.metadata["tierflow_unverified_quotes"] == 1
    assert "[!warning] Not found verbatim" in post.content


def test_malformed_synthesis_fails_the_phase_and_keeps_the_collations(anthropic_vault: Path, double):
    double.responder = skilled({"synthesisout": {"patterns": "not a list"}})
    failed = stopped(run, anthropic_vault)
    assert (
        failed.failed
        and "synthesise failed" in failed.failed
        and "no usable synthesisout on any attempt" in failed.failed
    )
    assert drafts(anthropic_vault) == {}
    assert "synthesise failed" in (anthropic_vault / failed.report.path).read_text()
    spent_collate = len([c for c in double.model_calls() if c.forced_tool == "collationout"])
    double.responder = skilled()
    fixed = run(anthropic_vault)
    assert not fixed.failed and fixed.written
    assert len([c for c in double.model_calls() if c.forced_tool == "collationout"]) == spent_collate


def test_bad_notes_are_skipped_with_their_reason_and_the_run_goes_on(anthropic_vault: Path, double):
    reading = anthropic_vault / "Reading"
    (reading / "broken yaml.md").write_text("---\ntitle: [unclosed\ndate: 2026-11-18\n---\nbody\n")
    (reading / "latin1.md").write_bytes("---\ndate: 2026-11-18\n---\ncaf\xe9 notes\n".encode("latin-1"))
    (reading / "binary.md").write_bytes(b"\x00\x01\x02 binary junk")
    (reading / "empty.md").write_text("")
    (reading / "huge.md").write_text("---\ndate: 2026-11-18\n---\n" + "x" * 3_000_000)
    # Notes whose date cannot be read are selected by their file time: pin it inside the week, never "now".
    in_week = datetime(2026, 11, 18, 12, 0, tzinfo=UTC).timestamp()
    for name in ("broken yaml.md", "latin1.md", "binary.md", "empty.md"):
        os.utime(reading / name, (in_week, in_week))
    # One too large to read is still dated by its `date` (18 November), not by its file, saved weeks before.
    saved_before = datetime(2026, 10, 1, 12, 0, tzinfo=UTC).timestamp()
    os.utime(reading / "huge.md", (saved_before, saved_before))
    summary = run(anthropic_vault)
    reasons = dict(summary.skipped)
    assert "malformed YAML" in reasons["Reading/broken yaml.md"]
    assert "UTF-8" in reasons["Reading/latin1.md"]
    assert "binary" in reasons["Reading/binary.md"]
    assert "empty" in reasons["Reading/empty.md"]
    assert "too large" in reasons["Reading/huge.md"]
    assert summary.written
    report = (anthropic_vault / summary.report.path).read_text()
    assert "Reading/broken yaml.md" in report and "## Skipped" in report


def test_empty_week_ends_cleanly_without_a_model_call(anthropic_vault: Path, double):
    summary = reading_notes(vault=str(anthropic_vault), since=date(2025, 1, 1), until=date(2025, 1, 7))
    assert summary.message == "no reading notes between 2025-01-01 and 2025-01-07 in Reading/ or #literature"
    assert double.model_calls() == []
    assert summary.written == []


def test_a_week_whose_only_note_cannot_be_used_says_it_was_found_not_that_there_was_none(anthropic_vault: Path, double):
    """A note was selected but holds nothing to collate: the run said "no reading notes between ..." just above
    the line that skipped that very note."""
    note = anthropic_vault / "Reading" / "Über Feedback.md"
    note.write_text("---\ndate: 2025-01-03\ntags: [literature]\n---\n\n> [!quote] A callout's title only\n")
    summary = reading_notes(vault=str(anthropic_vault), since=date(2025, 1, 1), until=date(2025, 1, 7))
    assert summary.message == (
        "the one reading note between 2025-01-01 and 2025-01-07 in Reading/ or #literature could not be used: "
        "it is listed under Skipped, with why"
    )
    assert dict(summary.skipped) == {"Reading/Über Feedback.md": "no highlights, quotes or notes found in it"}
    assert double.model_calls() == []


def test_missing_vault_is_a_clear_error(tmp_path: Path):
    from tierflow.core.errors import VaultError

    with pytest.raises(VaultError, match="does not exist"):
        reading_notes(vault=str(tmp_path / "nowhere"), since=SINCE, until=UNTIL)


def test_prefect_artifacts_tell_the_token_story(anthropic_vault: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from tierflow.core.progress import artifact_key

    summary = run(anthropic_vault)
    flow_run_id = Ledger.for_vault(anthropic_vault).rows(run_id=summary.run_id)[0]["flow_run_id"]
    spend_key, report_key, progress_key = (
        artifact_key("reading-notes", what, str(anthropic_vault)) for what in ("spend", "report", "progress")
    )
    assert spend_key.startswith("reading-notes-spend-vault-") and spend_key != artifact_key(
        "reading-notes", "spend", str(anthropic_vault.parent / "other" / "vault")
    )
    keys = [spend_key, report_key, progress_key]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
            sort=ArtifactSort.CREATED_DESC,
            limit=50,
        )
        flow_run = client.read_flow_run(flow_run_id)
    mine = {a.key: a for a in artifacts if str(a.flow_run_id) == flow_run_id}
    assert set(mine) == set(keys)
    table = mine[spend_key].data
    table = json.loads(table) if isinstance(table, str) else table
    assert [row["phase"] for row in table] == ["collate", "synthesise", "draft", "total"]
    assert list(table[0])[:8] == ["phase", "tier", "model", "calls", "tokens", "USD", "all-deep USD", "saved"]
    rows = Ledger.for_vault(anthropic_vault).rows(run_id=summary.run_id)
    assert table[-1]["USD"] == f"${sum(r['cost_usd'] for r in rows):.4f}" and table[-1]["calls"] == len(rows)
    assert all(row["USD"].startswith("$") for row in table)
    # Compact for the UI's table: tokens like `12.3k`, models without their provider, no lists on the totals row.
    assert table[-1]["tokens"] == compact_count(sum(row_tokens(r) for r in rows))
    assert re.fullmatch(r"\d+(\.\d)?k", table[-1]["tokens"])
    assert table[0]["model"] == "claude-haiku-4-5" and (table[-1]["tier"], table[-1]["model"]) == ("", "")
    saved = table[-1]["saved"]
    assert saved.endswith("%") and int(saved[:-1]) > 0
    assert mine[spend_key].description == f"{table[-1]['USD']} · all-deep {table[-1]['all-deep USD']} · saved {saved}"
    assert float(mine[progress_key].data) == 100.0
    assert "All-deep equivalent" in mine[report_key].data
    assert f"/v2/runs/flow-run/{flow_run_id})" in mine[report_key].data  # the current UI, not the V1 one
    assert {"vault:vault", "profile:anthropic", f"tierflow-run:{summary.run_id}"} <= set(flow_run.tags)
    assert flow_run.name == f"reading-notes · {SINCE} to {UNTIL}"


def test_a_run_without_a_window_is_named_with_the_resolved_one(anthropic_vault: Path):
    from prefect.client.orchestration import get_client

    summary = reading_notes(vault=str(anthropic_vault))
    runs = Ledger.for_vault(anthropic_vault).rows(run_id=summary.run_id)
    assert summary.message.startswith("no reading notes") or runs
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

        (flow_run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"tierflow-run:{summary.run_id}"]))
        )
    # The test clock starts on 2026-11-18: the default window is the seven days up to it.
    assert flow_run.name == "reading-notes · 2026-11-12 to 2026-11-18"


def test_an_empty_vault_parameter_is_refused_not_taken_as_the_working_directory(tmp_path: Path, monkeypatch):
    from tierflow.core.errors import VaultError

    monkeypatch.chdir(tmp_path)  # a deployment with TIERFLOW_VAULT unset passes vault=""
    with pytest.raises(VaultError, match="no vault given"):
        reading_notes(vault="  ", since=SINCE, until=UNTIL)
    assert list(tmp_path.iterdir()) == []


def test_the_api_key_reaches_no_note_ledger_log_or_artifact(reading_vault: Path, double, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import ArtifactSort, LogSort
    from prefect.logging.handlers import APILogHandler

    secret = "sk-ant-api03-THIS-IS-THE-SECRET-KEY-0123456789"
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    existing = (reading_vault / ".tierflow" / "config.toml").read_text()
    write_config(reading_vault / ".tierflow" / "config.toml", anthropic_config(double) + existing)
    double.responder = skilled()
    double.fail_next(401)  # an auth error on the way must not echo the key either
    summary = run(reading_vault)
    assert summary.written
    for path in reading_vault.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    flow_run_id = next(r["flow_run_id"] for r in Ledger.for_vault(reading_vault).rows(run_id=summary.run_id))
    APILogHandler().flush()  # run logs reach the API in the background
    with get_client(sync_client=True) as client:
        for _ in range(1200):  # up to 300 s: the server records logs in the background
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
                sort=LogSort.TIMESTAMP_ASC,
            )
            if any("key rejected" in log.message for log in logs):
                break
            time.sleep(0.25)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
            sort=ArtifactSort.CREATED_DESC,
            limit=50,
        )
        flow_run = client.read_flow_run(flow_run_id)
    assert artifacts and any("key rejected" in log.message for log in logs)
    assert all(secret not in log.message for log in logs)
    assert all(secret not in str(a.data) for a in artifacts)
    assert secret not in json.dumps(flow_run.parameters, default=str)


def test_a_prompt_template_that_fails_for_every_note_fails_the_run_and_says_why(reading_vault: Path):
    """A vault's own prompt template with a typo fails every collation: the run must not exit 0 as if the week had
    been read, nor go on to the later phases; the report says which variable is undefined."""
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    template = reading_vault / "Templates" / "tierflow" / "prompts" / "collate" / "note.j2"
    template.parent.mkdir(parents=True)
    template.write_text("x {{ dta }}\n", encoding="utf-8")
    result = CliRunner().invoke(
        app,
        ["run", "reading-notes", "--vault", str(reading_vault), "--since", str(SINCE), "--until", str(UNTIL)],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 3, result.output
    said = " ".join(result.output.split())
    first = f"(the first: the template {template}, line 1, does not render: 'dta' is undefined."
    assert f"collate failed: no item finished; all {SELECTED} failed {first}" in said
    (report,) = (reading_vault / "tierflow" / "Runs").glob("* reading-notes *.md")
    text = " ".join(report.read_text(encoding="utf-8").split())
    assert "Stopped early" in text and f"all {SELECTED} failed {first}" in text
    assert Ledger.for_vault(reading_vault).rows() == []  # no collation answered, so no later phase ran
    assert drafts(reading_vault) == {}


def test_a_run_report_another_run_writes_meanwhile_is_listed_in_the_day_index(tmp_path: Path):
    """Two runs ending together: one scans the vault's names, the other writes its report, then the first writes
    the day's index, which lists both reports (it linked one the scan had not seen: a "bug in tierflow" refusal)."""
    import frontmatter as fm

    from tierflow.report.run_report import write_day_index
    from tierflow.vault.notes import NoteWriter, template_env

    vault = tmp_path / "vault"
    runs = vault / "tierflow" / "Runs"
    runs.mkdir(parents=True)
    writer = NoteWriter(vault, "tierflow/Runs")  # its names scanned now, before the other run's report exists
    for run_id, started in (("20261118-060000-ab12cd", "06:00"), ("20261118-060001-ef34ab", "06:00")):
        post = fm.Post("body", tierflow_run=run_id, tierflow_day="2026-11-18", tierflow_flow="reading-notes")
        post["tierflow_started"] = f"2026-11-18 {started}"
        (runs / f"2026-11-18 reading-notes {started.replace(':', '')} {run_id[-6:]}.md").write_text(fm.dumps(post))
    written = write_day_index(writer, template_env(vault, "templates"), "2026-11-18")
    listed = (vault / written.path).read_text()
    assert "[[2026-11-18 reading-notes 0600 ab12cd]]" in listed and "[[2026-11-18 reading-notes 0600 ef34ab]]" in listed
