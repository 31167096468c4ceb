"""A week too big for the deep tier's context window is planned and synthesised in groups, then merged.

Real Anthropic SDK on the wire double, flows under Prefect's test harness. The deep tier's window is made
small (6,000 tokens) so that the fixture week's synthesis prompt does not fit it, while half the week does.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from conftest import anthropic_config, recorded_task_run, write_config
from responders import skilled

from tierflow.core.config import load_config
from tierflow.core.ledger import Ledger
from tierflow.flows.plans import plan_reading_notes
from tierflow.flows.reading_notes import reading_notes
from tierflow.offline import prompt_data
from tierflow.testing.double import ProviderDouble

pytestmark = pytest.mark.usefixtures("prefect_harness")

SINCE, UNTIL = date(2026, 11, 16), date(2026, 11, 22)
WINDOW = 6000
SYNTHESES = ("synthesisout", "mergedsynthesisout")


@pytest.fixture
def big_week(reading_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    config = (
        anthropic_config(double)
        .replace("max_output_tokens = 4096", f"max_output_tokens = 1000\ncontext_window = {WINDOW}")
        .replace("max_output_tokens = 1024", "max_output_tokens = 300")
    )
    path = reading_vault / ".tierflow" / "config.toml"
    write_config(path, config + path.read_text())
    double.responder = skilled()
    return reading_vault


def test_plan_shows_the_group_calls_and_the_merge_with_their_tokens_and_cost(big_week: Path):
    plan = plan_reading_notes(load_config(big_week), big_week, since=SINCE, until=UNTIL)
    synthesis = [
        (subject, row)
        for (phase, subject, _), row in zip(plan.prompts, plan.rows, strict=True)
        if phase == "synthesise"
    ]
    assert [subject for subject, _ in synthesis] == ["group 1/2", "group 2/2", "week"]
    assert [p for p, _, _ in plan.too_long if p == "synthesise"] == []  # one prompt over the week would not fit
    for _, row in synthesis:
        assert row["tier"] == "deep" and row["cost_usd"] > 0
        assert row["input_tokens"] + row["output_tokens"] <= WINDOW
    merge = synthesis[-1][1]
    assert merge["input_tokens"] > 2 * 1000  # both groups' answers, at the deep tier's full allowance
    (phase,) = [p for p in plan.phases if p.key == "synthesise"]
    assert phase.calls == 3 and phase.cost_usd == pytest.approx(sum(r["cost_usd"] for _, r in synthesis))
    assert any("planned in 2 groups and merged" in n for n in plan.notes)


def test_run_synthesises_in_groups_then_merges_with_a_ledger_row_per_call(big_week: Path, double: ProviderDouble):
    summary = reading_notes(vault=str(big_week), since=SINCE, until=UNTIL)
    assert summary.failed is None and summary.halted is None  # a single synthesis call is refused by the window
    calls = [c for c in double.model_calls() if c.forced_tool in SYNTHESES]
    assert sorted(c.forced_tool for c in calls) == ["mergedsynthesisout", "synthesisout", "synthesisout"]

    # The groups split the week: every collation in exactly one group prompt, none in the merge prompt.
    groups = [prompt_data(c.last_user_text)["collations"] for c in calls if c.forced_tool == "synthesisout"]
    citekeys = [c["citekey"] for group in groups for c in group]
    assert len(citekeys) == len(set(citekeys)) == 8
    (merge_call,) = [c for c in calls if c.forced_tool == "mergedsynthesisout"]
    merged = prompt_data(merge_call.last_user_text)
    assert len(merged["groups"]) == 2 and "collations" not in merged

    rows = [r for r in Ledger.for_vault(big_week).rows(run_id=summary.run_id) if r["phase"] == "synthesise"]
    assert len(rows) == len(calls) == 3
    assert all(r["outcome"] == "ok" and r["tier"] == "deep" and r["cost_usd"] > 0 for r in rows)
    assert all(r["input_tokens"] + 1000 <= WINDOW for r in rows)
    assert len({r["task_run_id"] for r in rows}) == 3
    assert sorted(r["subject"] for r in rows)[-1] == "merge of 2 groups"

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # the server records task runs, then their names, in the background
        names = {
            recorded_task_run(client, row["task_run_id"], until=lambda t: t.name.startswith("synthesise · ")).name
            for row in rows
        }
    assert names == {"synthesise · group 1/2", "synthesise · group 2/2", "synthesise · week"}

    # Drafts come from the merged synthesis, citing the week's literature notes.
    assert summary.written
    literature = {p.stem for p in (big_week / "Reading").glob("*.md")}
    for written in summary.written:
        text = (big_week / written.path).read_text()
        assert "[[" in text and any(f"[[{name}]]" in text for name in literature)

    # A rerun of the unchanged week reuses every answer: no call, no new synthesis row.
    before = len(double.model_calls())
    again = reading_notes(vault=str(big_week), since=SINCE, until=UNTIL)
    assert again.failed is None and len(double.model_calls()) == before


def test_a_concept_named_twice_by_a_merge_is_one_concept_with_both_groups_sources():
    """A 300-note week drafted `Judgement` and also skipped `Judgement` past max_concepts, losing its second
    group's 46 sources."""
    from tierflow.tasks.synthesise import Concept, QuoteRef, same_named_as_one

    def concept(name: str, sources: list[str], quote: int) -> Concept:
        return Concept(
            name=name, summary=name, sources=sources, quote_refs=[QuoteRef(citekey=sources[0], quote_id=quote)]
        )

    merged = same_named_as_one(
        [concept("Judgement", ["a", "b"], 1), concept("Dialogue", ["c"], 1), concept(" judgement ", ["b", "d"], 2)]
    )
    assert [c.name for c in merged] == ["Judgement", "Dialogue"]
    assert merged[0].sources == ["a", "b", "d"]
    assert [(r.citekey, r.quote_id) for r in merged[0].quote_refs] == [("a", 1), ("b", 2)]
    assert len(same_named_as_one([concept("", ["a"], 1), concept(" ", ["b"], 1)])) == 2  # each dropped with its why


def test_a_concept_one_group_skipped_for_max_concepts_and_the_merge_drafted_is_not_reported_as_skipped(
    tmp_path: Path,
):
    """A 300-note week's report listed `Rubrics` as skipped (more than max_concepts) beside its draft: the second
    group had reached its limit, the first group and the merge drafted it."""
    from tierflow.core.calls import RunSettings
    from tierflow.tasks.collate import Collation, Quote
    from tierflow.tasks.synthesise import Concept, QuoteRef, Synthesis, merge

    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", '[vault]\nreading_folders = ["Reading"]\n')
    settings = RunSettings(vault=str(vault), run_id="merge-skips", flow="reading-notes", profile="offline")
    collations = [
        Collation(
            path=f"Reading/{key}.md", link=key, citekey=key, title=key, quotes=[Quote(id=1, text=f"{key} says so.")],
            notes=[], summary=key, claims=[], keywords=[], model="offline:extractive-light", cost_usd=0, tokens=0,
        )
        for key in ("a", "b", "c")
    ]  # fmt: skip

    def concept(name: str, key: str) -> Concept:
        return Concept(name=name, summary=name, sources=[key], quote_refs=[QuoteRef(citekey=key, quote_id=1)])

    def part(concepts: list[Concept], skipped: list[tuple[str, str]]) -> Synthesis:
        return Synthesis(patterns=[], tensions=[], concepts=concepts, skipped=skipped, model="m", cost_usd=0, tokens=0)

    over = "more than [vault] max_concepts = 1 concepts"
    parts = [
        part([concept("Rubrics", "a")], []),
        part([concept("Grading", "b")], [("concept Rubrics", over), ("concept Timeliness", over)]),
    ]
    merged = merge.fn(settings, parts, collations, str(SINCE), str(UNTIL))
    assert {c.name for c in merged.concepts} == {"Rubrics", "Grading"}
    assert merged.skipped == [("concept Timeliness", over)]


def test_a_concept_a_group_skipped_but_the_merge_drafts_is_not_reported_as_skipped():
    """A 300-note week's report said `Rubrics` was skipped for max_concepts, and listed its draft as written."""
    from tierflow.tasks.synthesise import Concept, not_drafted

    skipped = [
        ("concept Rubrics", "more than [vault] max_concepts = 5 concepts"),
        ("concept  grading", "dropped by the synthesis checks: concept 'grading' cites none of this week's sources"),
        ("concept Timeliness", "more than [vault] max_concepts = 5 concepts"),
        ("Reading/Broken.md", "malformed YAML front-matter; skipped"),
    ]
    drafted = [Concept(name=n, summary=n, sources=["a"]) for n in ("rubrics", "Grading", "Dialogue")]
    assert not_drafted(skipped, drafted) == skipped[2:]
