"""The rubric from the command line: a garbled one ends a run with its message alone; show and normalise."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import frontmatter
import pytest

ASSIGNMENT = "Teaching/EDU7001/essay-1"
GARBLED = "---\ntitle: rubric\n---\nMark it fairly, with care and attention to the argument.\n"


def test_a_garbled_rubric_ends_the_run_with_the_message_alone(feedback_vault: Path, tmp_path: Path):
    (feedback_vault / ASSIGNMENT / "rubric.md").write_text(GARBLED)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", "run", "student-feedback", "--vault", str(feedback_vault)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert f"error: {ASSIGNMENT}/rubric.md: no criteria found. Shapes tried:" in done.stderr
    assert done.stderr.count("no criteria found") == 1, done.stderr
    # ... while the Prefect log keeps the traceback, for whoever debugs it in the UI.
    with sqlite3.connect(tmp_path / "prefect-home" / "prefect.db") as db:
        logged = [m for (m,) in db.execute("SELECT message FROM log")]
    assert any("Traceback" in m and "RubricError" in m for m in logged), logged


def test_the_console_filter_drops_expected_errors_only():
    from tierflow.cli.runner import ExpectedErrorFilter
    from tierflow.vault.rubric import RubricError

    def record(name: str, message: str, exc: BaseException | None = None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc else None
        return logging.LogRecord(name, logging.ERROR, __file__, 1, message, None, info)

    keep = ExpectedErrorFilter().filter
    assert not keep(record("prefect.task_runs", "Task run failed", RubricError("bad rubric")))
    assert not keep(record("prefect.flow_runs", "Finished in state Failed('... RubricError: bad rubric')"))
    assert keep(record("prefect.task_runs", "Task run failed", ValueError("a bug")))
    assert keep(record("prefect.flow_runs", "Finished in state Failed('... ValueError: a bug')"))


NORMALISED_ANSWER = {
    "title": "Essay rubric",
    "criteria": [
        {
            "name": "Argument",
            "weight": "60%",
            "levels": [
                {"name": "Excellent", "score_range": "70+", "descriptor": "A clear case, weighed against others."},
                {"name": "Weak", "score_range": "<70", "descriptor": "Mostly description."},
            ],
        },
        {
            "name": "Sources",
            "weight": "40%",
            "levels": [
                {"name": "Excellent", "score_range": "70+", "descriptor": "Well chosen and accurately used."},
                {"name": "Weak", "score_range": "<70", "descriptor": "Few or misread."},
            ],
        },
    ],
    "notes": "",
}
PROSE_RUBRIC = (
    "---\ntitle: Essay rubric\n---\nWe mark the argument (60%) and the sources (40%). Excellent work (70 and "
    "above) makes a clear case and uses well-chosen sources accurately; weaker work describes.\n"
)


def invoke(*args: str):
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.mark.usefixtures("prefect_harness")
def test_normalise_writes_a_sibling_for_the_lecturer_and_the_run_waits_for_their_check(
    feedback_vault: Path, double, monkeypatch: pytest.MonkeyPatch
):
    from conftest import anthropic_config, write_config
    from responders import skilled

    from tierflow.core.ledger import Ledger
    from tierflow.flows.student_feedback import student_feedback
    from tierflow.vault.rubric import RubricError

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    config = feedback_vault / ".tierflow" / "config.toml"
    write_config(config, anthropic_config(double) + config.read_text())
    double.responder = skilled({"rubricout": NORMALISED_ANSWER})
    rubric = feedback_vault / ASSIGNMENT / "rubric.md"
    rubric.write_text(PROSE_RUBRIC)
    original = rubric.read_bytes()

    done = invoke("rubric", "normalise", "--vault", str(feedback_vault), "--assignment", ASSIGNMENT)
    assert done.exit_code == 0, done.output
    assert rubric.read_bytes() == original
    normalised = feedback_vault / ASSIGNMENT / "rubric.normalised.md"
    post = frontmatter.load(normalised)
    assert post.metadata["status"] == "unchecked"
    assert "## Argument (60%)" in post.content and "- Excellent (70+): A clear case" in post.content
    (call,) = double.model_calls()
    assert call.json["model"] == "claude-haiku-4-5"  # the light tier, through the one call path ...
    (row,) = Ledger.for_vault(feedback_vault).rows()
    assert row["phase"] == "normalise" and row["tier"] == "light" and row["cost_usd"] > 0  # ... priced and recorded

    with pytest.raises(RubricError, match="rubric.normalised.md is not checked yet"):
        student_feedback(vault=str(feedback_vault))
    assert len(double.model_calls()) == 1  # refused before any spend

    normalised.write_text(normalised.read_text().replace("status: unchecked", "status: checked"))
    shown = invoke("rubric", "show", "--vault", str(feedback_vault), "--assignment", ASSIGNMENT, "--format", "json")
    assert [c["name"] for c in json.loads(shown.output)["criteria"]] == ["Argument", "Sources"]
    summary = student_feedback(vault=str(feedback_vault))
    assert not summary.failed
    draft = (feedback_vault / ASSIGNMENT / "feedback" / "s2026001 feedback.md").read_text()
    assert draft.index("## Argument") < draft.index("## Sources")
    assert rubric.read_bytes() == original

    again = invoke("rubric", "normalise", "--vault", str(feedback_vault), "--assignment", ASSIGNMENT)
    assert again.exit_code == 2 and "already checked" in again.output


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("folder", "written"),
    [
        ("Teaching/C# 101/essay-1", "[rubric.md](Teaching/C%23%20101/essay-1/rubric.md)"),
        (
            "Teaching/Week ^2 | [[drafts]]/essay-1",
            "[rubric.md](Teaching/Week%20%5E2%20%7C%20%5B%5Bdrafts%5D%5D/essay-1/rubric.md)",
        ),
        (ASSIGNMENT, f"[[{ASSIGNMENT}/rubric|rubric.md]]"),
    ],
    ids=["hash", "caret-pipe-brackets", "plain"],
)
def test_normalise_links_the_original_rubric_from_any_assignment_folder(
    feedback_vault: Path, double, monkeypatch: pytest.MonkeyPatch, folder: str, written: str
):
    """An assignment folder `Teaching/C# 101/essay-1`: the rewrite's `[[Teaching/C# 101/essay-1/rubric|rubric.md]]`
    was read by Obsidian as a link to a heading of a note `Teaching/C`, which no file is, and tierflow's own check
    refused the note; a `^`, `|` or `[[` in the path broke it the same way."""
    from conftest import anthropic_config, write_config
    from responders import skilled

    from tierflow.vault.links import VaultNames, link_targets

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    if folder != ASSIGNMENT:
        (feedback_vault / folder).parent.mkdir(parents=True)
        (feedback_vault / ASSIGNMENT).rename(feedback_vault / folder)
    config = feedback_vault / ".tierflow" / "config.toml"
    write_config(config, anthropic_config(double) + config.read_text().replace(ASSIGNMENT, folder))
    double.responder = skilled({"rubricout": NORMALISED_ANSWER})
    (feedback_vault / folder / "rubric.md").write_text(PROSE_RUBRIC)

    done = invoke("rubric", "normalise", "--vault", str(feedback_vault), "--assignment", folder)
    assert done.exit_code == 0, done.output
    post = frontmatter.load(feedback_vault / folder / "rubric.normalised.md")
    names = VaultNames.scan(feedback_vault)
    for text in (post.content.split("\n", 1)[0], post.metadata["source"]):
        assert names.problems(text) == [], text
        assert [names.resolve(t) for t in link_targets(text)] == [[f"{folder}/rubric.md"]], text
    assert written in post.content


def test_a_changed_rubric_makes_the_checked_rewrite_stale(feedback_vault: Path):
    from tierflow.vault.rubric import RubricError, load_rubric, source_hash

    rubric = feedback_vault / ASSIGNMENT / "rubric.md"
    rubric.write_text(PROSE_RUBRIC)
    normalised = rubric.with_name("rubric.normalised.md")
    body = "## Argument\n- Good: clear.\n- Weak: unclear.\n"
    normalised.write_text(f"---\nstatus: checked\nsource_hash: {source_hash(rubric)}\n---\n{body}")
    assert [c.name for c in load_rubric(feedback_vault, f"{ASSIGNMENT}/rubric.md").criteria] == ["Argument"]
    rubric.write_text(PROSE_RUBRIC + "\nAlso spelling.\n")
    with pytest.raises(RubricError, match="has changed since"):
        load_rubric(feedback_vault, f"{ASSIGNMENT}/rubric.md")


def test_normalise_refuses_a_rubric_that_already_parses(feedback_vault: Path):
    done = invoke("rubric", "normalise", "--vault", str(feedback_vault), "--assignment", ASSIGNMENT, "-p", "offline")
    assert done.exit_code == 2 and "already parses (4 criteria" in done.output
    assert not (feedback_vault / ASSIGNMENT / "rubric.normalised.md").exists()


def test_show_prints_criteria_weights_levels_and_ranges(feedback_vault: Path):
    done = invoke("rubric", "show", "--vault", str(feedback_vault), "--assignment", ASSIGNMENT, "-f", "json")
    shown = json.loads(done.output)
    assert shown["shape"] == "table, criteria as rows"
    first = shown["criteria"][0]
    assert first["weight"] == "25%" and first["share"] == 0.25
    assert [(lvl["name"], lvl["range"]) for lvl in first["levels"]][:2] == [("Excellent", "70+"), ("Good", "60-69")]
    table = invoke("rubric", "show", "--vault", str(feedback_vault), "--assignment", ASSIGNMENT)
    assert "Use of literature" in table.output and "60-69" in table.output


def test_show_says_what_each_level_counts_as_without_a_score(feedback_vault: Path):
    """`Fail (<40)` counts as 20 (from 0); `Excellent (70+)` on a rubric that gives no top counts as nothing."""
    done = invoke("rubric", "show", "--vault", str(feedback_vault), "--assignment", ASSIGNMENT, "-f", "json")
    levels = {lvl["name"]: lvl for lvl in json.loads(done.output)["criteria"][0]["levels"]}
    assert levels["Fail"]["without_score"] == 20 and levels["Good"]["without_score"] == 64.5
    assert levels["Excellent"]["without_score"] is None
    table = invoke("rubric", "show", "--vault", str(feedback_vault), "--assignment", ASSIGNMENT)
    assert "without a score" in table.stdout and "no mark: give a score" in table.stdout
    assert "A level without a score counts as the middle of its range" in table.stdout


def test_show_warns_when_percentage_weights_miss_100_and_still_shows_the_scaled_shares(feedback_vault: Path):
    rubric = feedback_vault / ASSIGNMENT / "rubric.md"
    text = rubric.read_text()
    rubric.write_text(text.replace("| 25% |", "| 30% |", 2).replace("| 25% |", "| 20% |", 1))  # 30+30+20+25
    table = invoke("rubric", "show", "--vault", str(feedback_vault), "--assignment", ASSIGNMENT)
    assert table.exit_code == 0
    assert "weights add up to 105%, not 100%" in table.stderr and "scaled" in table.stderr
    assert "29% of the feedback" in table.stdout
    done = invoke("rubric", "show", "--vault", str(feedback_vault), "--assignment", ASSIGNMENT, "-f", "json")
    (warning,) = json.loads(done.stdout)["warnings"]
    assert "105%" in warning


@pytest.mark.usefixtures("prefect_harness")
def test_every_flow_ends_an_expected_error_with_the_message_alone(tmp_path: Path, capfd: pytest.CaptureFixture):
    """The reading-notes flow too: a vault that vanished before the run is a VaultError raised inside the flow."""
    import typer

    from tierflow.cli.runner import run_flow

    with pytest.raises(typer.Exit) as ended:
        run_flow("reading-notes", tmp_path / "gone", profile="offline")
    assert ended.value.exit_code == 2
    out, err = capfd.readouterr()
    assert f"error: vault {tmp_path / 'gone'} does not exist" in err
    assert "Traceback" not in out + err


def test_rubric_commands_refuse_an_assignment_outside_the_vault_as_run_does(
    feedback_vault: Path, double, tmp_path: Path
):
    outside = tmp_path / "outside"
    shutil.copytree(feedback_vault / "Teaching" / "EDU7001" / "essay-1", outside)
    (outside / "rubric.md").write_text("A rubric nobody can parse.\n", encoding="utf-8")  # normalise would call
    for given in ("../outside", str(outside)):
        for command in ("show", "normalise"):
            result = invoke(
                "rubric", command, "--vault", str(feedback_vault), "--assignment", given, "--profile", "offline"
            )
            message = " ".join(result.output.split())
            assert result.exit_code == 2, (command, given, result.output)
            assert f"assignment folder {given!r} resolves to {outside}, outside the vault" in message, message
    assert double.model_calls() == [] and not (outside / "rubric.normalised.md").exists()


def test_show_says_how_marks_are_worked_out_and_refuses_marks_read_two_ways(feedback_vault: Path):
    rubric = feedback_vault / ASSIGNMENT / "rubric.md"
    args = ("rubric", "show", "--vault", str(feedback_vault), "--assignment", ASSIGNMENT)
    assert "marks: the weighted mean of the criteria's scores (weights as shares), out of 100" in invoke(*args).stdout
    rubric.write_text(
        "- Argument (40 marks)\n- Literature (30 marks)\n- Structure (30 marks)\n\n"
        "Grade bands: First (70-100), Upper second (60-69), Lower second (50-59), Third (40-49), Fail (0-39)\n"
    )
    shown = invoke(*args)
    assert shown.exit_code == 0 and "Argument score/100 x 40" in shown.stdout and "out of 100" in shown.stdout
    marks = json.loads(invoke(*args, "-f", "json").stdout)["marks"]
    assert marks["out_of"] == 100 and "score/100 x 40" in marks["how"] and marks["problem"] == ""
    rubric.write_text("## Argument (20 marks)\n\n- Excellent (17+): x\n- Good (10-16): y\n")
    refused = invoke(*args)
    assert "no marks can be worked out" in refused.stderr and "17-20 for marks" in refused.stderr
    assert "17+" in json.loads(invoke(*args, "-f", "json").stdout)["marks"]["problem"]


def test_normalise_sends_the_rubric_with_the_students_it_names_hidden_and_writes_their_names_back(
    feedback_vault: Path, double, monkeypatch: pytest.MonkeyPatch
):
    from conftest import anthropic_config, write_config
    from responders import skilled

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    config = feedback_vault / ".tierflow" / "config.toml"
    write_config(config, anthropic_config(double) + config.read_text())
    answer = json.loads(json.dumps(NORMALISED_ANSWER))
    answer["criteria"][0]["levels"][0]["descriptor"] = "A clear case, as in Student-01's exemplar."
    double.responder = skilled({"rubricout": answer})
    rubric = feedback_vault / ASSIGNMENT / "rubric.md"
    rubric.write_text(PROSE_RUBRIC.replace("makes a clear case", "makes a clear case (see Amara Okafor's essay)"))

    done = invoke("rubric", "normalise", "--vault", str(feedback_vault), "--assignment", ASSIGNMENT)
    assert done.exit_code == 0, done.output
    (call,) = double.model_calls()
    sent = call.raw.decode() + json.dumps(call.json, ensure_ascii=False)
    assert "Amara" not in sent and "Okafor" not in sent and "(see Student-01's essay)" in sent
    normalised = (feedback_vault / ASSIGNMENT / "rubric.normalised.md").read_text()
    assert "A clear case, as in Amara Okafor's exemplar." in normalised
