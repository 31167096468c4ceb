"""Feedback that follows the rubric: its criteria in order, its levels, scores in range, weighted comments."""

from __future__ import annotations

import re
from pathlib import Path

import frontmatter
import pytest
from conftest import anthropic_config, openai_config, write_config
from pydantic import ValidationError
from responders import skilled

from tierflow.core.checks import run_checks
from tierflow.flowkit.checks import quotes_verbatim, rubric_coverage
from tierflow.flows.student_feedback import student_feedback
from tierflow.tasks.evidence import evidence_output
from tierflow.tasks.feedback import feedback_output, word_budgets
from tierflow.vault.rubric import parse_rubric

ASSIGNMENT = "Teaching/EDU7001/essay-1"
# A rubric in another shape than the bundled table: bold criterion lines with points, levels listed worst first.
RUBRIC = """---
title: Essay 1, as the department publishes it
---
**Criterion A: Use of literature (40 points)**
* Developing (0–19): Few sources, mostly described.
* Proficient (20–31): Relevant sources, used accurately.
* Exemplary (32–40): Wide reading, synthesised and questioned.

**Criterion B: Argument (10 points)**
- **Developing (0-4)**: Mostly description.
- **Proficient (5-7)**: A coherent line of argument.
- **Exemplary (8-10)**: Sustained and original.

**Criterion C: Structure and clarity (10 points)**
- Developing (0-4) – Hard to follow.
- Proficient (5-7) – Clear, with lapses.
- Exemplary (8-10) – Fluent throughout.
"""
CRITERIA = ["Use of literature", "Argument", "Structure and clarity"]
SUBMISSION = "Feedback matters (Hattie, 2007). However, it depends on the student. This essay argues that."


def rubric():
    return parse_rubric(RUBRIC, f"{ASSIGNMENT}/rubric.md")


def answer(**changes):
    """A valid feedback answer for RUBRIC, with `changes` per criterion name."""
    entries = [
        {"criterion": "Use of literature", "level": "Proficient", "score": 25, "comment": "ok", "quotes": []},
        {"criterion": "Argument", "level": "Exemplary", "score": 9, "comment": "ok", "quotes": ["However, it depends"]},
        {"criterion": "Structure and clarity", "level": "Developing", "score": 3, "comment": "ok", "quotes": []},
    ]
    for entry in entries:
        entry.update(changes.get(entry["criterion"], {}))
    return feedback_output(rubric()).model_validate({"criteria": [e for e in entries if "drop" not in e]})


def problems(parsed) -> list[str]:
    return [f.problem for f in run_checks([rubric_coverage(rubric()), quotes_verbatim(SUBMISSION)], parsed)]


def test_a_complete_answer_passes_both_checks():
    assert problems(answer()) == []


def test_rubric_coverage_fails_a_missing_criterion():
    assert problems(answer(Argument={"drop": True})) == ["criterion 'Argument' is missing"]


def test_rubric_coverage_fails_a_repeated_criterion_a_foreign_level_and_a_score_out_of_range():
    parsed = answer(**{"Structure and clarity": {"criterion": "Argument"}})
    assert "criterion 'Argument' appears 2 times; give it once" in problems(parsed)
    assert "criterion 'Structure and clarity' is missing" in problems(parsed)
    assert problems(answer(Argument={"score": 12})) == ["'Argument': score 12 is outside level 'Exemplary' (8-10)"]
    assert problems(answer(Argument={"score": None})) == ["'Argument': no score; level 'Exemplary' spans 8-10"]


def test_quotes_verbatim_fails_an_invented_quotation():
    found = problems(answer(Argument={"quotes": ["However, it depends on the teacher"]}))
    assert found == ["'Argument': quotation not found verbatim in the submission: 'However, it depends on the teacher'"]


def test_the_output_models_admit_only_the_rubrics_criteria_and_levels():
    schema = feedback_output(rubric()).model_json_schema()
    entry = schema["$defs"]["CriterionFeedback"]["properties"]
    assert entry["criterion"]["enum"] == CRITERIA
    assert entry["level"]["enum"] == ["Developing", "Proficient", "Exemplary"]
    with pytest.raises(ValidationError):
        answer(Argument={"level": "Outstanding"})
    with pytest.raises(ValidationError):
        evidence_output(rubric()).model_validate({"criteria": [{"criterion": "Spelling", "level": "Proficient"}]})
    assert evidence_output(rubric()).__name__ == "EvidenceOut" and feedback_output(rubric()).__name__ == "FeedbackOut"


def test_word_budgets_follow_the_weights():
    budgets = word_budgets(rubric())
    assert budgets == {"Use of literature": 160, "Argument": 40, "Structure and clarity": 40}
    equal = word_budgets(parse_rubric("## A\n- Good: g\n- Weak: w\n## B\n- Good: g\n- Weak: w\n"))
    assert equal["A"] == equal["B"]


# --- whole runs ----------------------------------------------------------------------------------------------


def sections(path: Path) -> list[tuple[str, str, float | None, str]]:
    """Each draft section: its heading, suggested level, score, and the level's range as written."""
    out = []
    for block in re.split(r"^## ", frontmatter.load(path).content, flags=re.M)[1:]:
        heading = block.splitlines()[0].strip()
        if heading in ("Next steps", "Overall"):
            continue
        m = re.search(
            r"\*\*Suggested level:\*\* (\w+)(?: \(([^)]*)\))?(?: · \*\*suggested score:\*\* ([\d.]+))?", block
        )
        out.append((heading, m[1], float(m[3]) if m[3] else None, m[2] or ""))
    return out


def assert_drafts_follow(vault: Path) -> None:
    r = rubric()
    drafts = sorted((vault / ASSIGNMENT / "feedback").glob("s*.md"))
    assert len(drafts) == 14
    written = 0
    for path in drafts:
        if "No content submitted" in path.read_text():
            continue
        found = sections(path)
        assert [s[0] for s in found] == CRITERIA, path.name  # exactly the rubric's criteria, in its order
        for name, level, score, _ in found:
            spec = next(c for c in r.criteria if c.name == name).level(level)
            assert spec is not None, (path.name, name, level)  # a level of that criterion
            assert score is not None and spec.score.contains(score), (path.name, name, level, score)
        written += 1
    assert written == 13
    cohort = (vault / ASSIGNMENT / "feedback" / "Cohort summary.md").read_text()
    table = cohort.split("## Levels by criterion")[1].split("\n## ")[0]
    assert "| Criterion | Developing | Proficient | Exemplary |" in table
    rows = [
        line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| Criterion", "| ---"))
    ]
    assert [row.split("|")[1].strip() for row in rows] == CRITERIA
    for row in rows:
        assert sum(int(n) for n in row.split("|")[2:-1]) == 13  # every analysed submission, once per criterion


@pytest.fixture
def department_rubric(feedback_vault: Path) -> Path:
    (feedback_vault / ASSIGNMENT / "rubric.md").write_text(RUBRIC)
    return feedback_vault


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_on_percentage_weights_that_add_up_to_110_reports_how_they_were_scaled(feedback_vault: Path):
    rubric = feedback_vault / ASSIGNMENT / "rubric.md"
    rubric.write_text(rubric.read_text().replace("| 25% |", "| 30% |", 2))  # 30+30+25+25
    summary = student_feedback(vault=str(feedback_vault), profile="offline")
    assert not summary.failed
    (reason,) = [why for path, why in summary.skipped if path == f"{ASSIGNMENT}/rubric.md"]
    assert reason.startswith("used, with a warning:") and "add up to 110%, not 100%" in reason


@pytest.mark.usefixtures("prefect_harness")
def test_offline_drafts_carry_the_rubrics_criteria_levels_and_scores(department_rubric: Path):
    summary = student_feedback(vault=str(department_rubric), profile="offline")
    assert not summary.failed
    assert_drafts_follow(department_rubric)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_drafts_on_the_double_follow_the_rubric_and_the_schema_enforces_it(
    provider, department_rubric: Path, double, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    config = department_rubric / ".tierflow" / "config.toml"
    text = anthropic_config(double) if provider == "anthropic" else openai_config(double)
    write_config(config, text + config.read_text())
    double.responder = skilled()
    summary = student_feedback(vault=str(department_rubric))
    assert not summary.failed
    assert_drafts_follow(department_rubric)

    drafts = [c for c in double.model_calls() if "feedbackout" in (c.forced_tool or str(c.body))]
    assert drafts
    for call in drafts:
        entry = call.schema["$defs"]["CriterionFeedback"]["properties"]
        assert entry["criterion"]["enum"] == CRITERIA  # what a strict-schema provider enforces
        assert "Use of literature: about 160 words" in call.last_user_text
        assert "Argument: about 40 words" in call.last_user_text


@pytest.mark.usefixtures("prefect_harness")
def test_an_answer_that_skips_a_criterion_still_gives_every_section_and_says_what_is_missing(
    department_rubric: Path, double, monkeypatch: pytest.MonkeyPatch
):
    from tierflow.offline import SKILLS, prompt_data
    from tierflow.testing.double import Reply

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    config = department_rubric / ".tierflow" / "config.toml"
    write_config(config, anthropic_config(double) + config.read_text())

    def skip_argument(request):
        data = SKILLS["feedbackout"](prompt_data(request.last_user_text))
        data["criteria"] = [c for c in data["criteria"] if c["criterion"] != "Argument"][::-1]
        return Reply(data=data)

    double.responder = skilled({"feedbackout": skip_argument})
    summary = student_feedback(vault=str(department_rubric))
    assert not summary.failed
    draft = (department_rubric / ASSIGNMENT / "feedback" / "s2026001 feedback.md").read_text()
    headings = re.findall(r"^## (.+)$", draft, flags=re.M)
    assert headings[:3] == CRITERIA  # the rubric's order, though the answer reversed it
    assert "No feedback was drafted for this criterion" in draft
    assert "rubric_coverage: criterion 'Argument' is missing" in draft
