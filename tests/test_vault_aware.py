"""The reading-notes flow respects the vault: it never reads its own output, and reads dates leniently."""

from __future__ import annotations

import os
import re
from datetime import UTC, date, datetime
from pathlib import Path

import frontmatter
import pytest
from conftest import anthropic_config, write_config
from responders import skilled

from tierflow.core.errors import VaultError
from tierflow.flows.reading_notes import reading_notes
from tierflow.offline import SKILLS, prompt_data
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply
from tierflow.vault.annotations import locate
from tierflow.vault.links import VaultNames
from tierflow.vault.notes import NoteWriter

pytestmark = pytest.mark.usefixtures("prefect_harness")

SINCE, UNTIL = date(2026, 11, 16), date(2026, 11, 22)
IN_WEEK = datetime(2026, 11, 18, 12, 0, tzinfo=UTC).timestamp()
OUTSIDE = datetime(2026, 10, 1, 12, 0, tzinfo=UTC).timestamp()


def run(vault: Path):
    return reading_notes(vault=str(vault), since=SINCE, until=UNTIL)


@pytest.fixture
def vault(reading_vault: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    existing = (reading_vault / ".tierflow" / "config.toml").read_text()
    write_config(reading_vault / ".tierflow" / "config.toml", anthropic_config(double) + existing)
    double.responder = skilled()
    return reading_vault


def collated_titles(double: ProviderDouble, since_call: int = 0) -> list[str]:
    calls = double.model_calls()[since_call:]
    return [prompt_data(c.last_user_text)["source"]["title"] for c in calls if c.forced_tool == "collationout"]


def test_a_second_run_selects_nothing_tierflow_wrote(vault: Path, double: ProviderDouble):
    first = run(vault)
    ours = [w.path for w in first.written] + [first.report.path]
    assert len(ours) >= 3
    # Make everything tierflow wrote look like this week's reading, wherever it lies, and copy a draft into
    # the reading folder: only its front-matter says tierflow wrote it.
    for rel in ours:
        path = vault / rel
        post = frontmatter.load(path)
        post.metadata["date"] = "2026-11-18"
        post.metadata["tags"] = [*post.metadata.get("tags", []), "literature"]
        path.write_text(frontmatter.dumps(post), encoding="utf-8")
    copied = vault / "Reading" / "A draft I moved here.md"
    copied.write_text((vault / first.written[0].path).read_text(encoding="utf-8"), encoding="utf-8")
    for path in [*(vault / rel for rel in ours), copied]:
        os.utime(path, (IN_WEEK, IN_WEEK))
    config = vault / ".tierflow" / "config.toml"
    config.write_text(config.read_text().replace('reading_folders = ["Reading"]', 'reading_folders = [""]'))

    before = len(double.model_calls())
    second = run(vault)
    own_titles = {frontmatter.load(vault / rel).metadata["title"] for rel in ours}
    assert not own_titles & set(collated_titles(double))
    assert not {p for p, _ in second.skipped} & {*ours, "Reading/A draft I moved here.md"}
    # The whole vault was the reading this time: a note of the person's from that week was read.
    assert "Daily/2026-11-18.md" in {p for p, _ in second.skipped}
    assert len(double.model_calls()) > before or second.written


def test_a_note_with_broken_front_matter_is_dated_by_its_date_line(vault: Path, double: ProviderDouble):
    reading = vault / "Reading"
    (reading / "broken yaml.md").write_text("---\ntitle: [unclosed\ndate: 2026-11-18\n---\n> [!quote]\n> body\n")
    (reading / "broken elsewhere.md").write_text("---\ntitle: [unclosed\ndate: 2026-10-01\n---\nbody\n")
    (reading / "bad value.md").write_text("---\ntitle: x\ndate: 2026-11-45\ncreated: 2026-11-19\n---\nbody\n")
    for name in ("broken yaml.md", "broken elsewhere.md", "bad value.md"):
        # The file times lie outside the week: only the lenient date can select a note.
        os.utime(reading / name, (OUTSIDE, OUTSIDE))
    summary = run(vault)
    reasons = dict(summary.skipped)
    assert "malformed YAML" in reasons["Reading/broken yaml.md"]
    assert "malformed YAML" in reasons["Reading/bad value.md"]  # its `date:` is no date; `created:` is
    assert "Reading/broken elsewhere.md" not in reasons
    assert "Reading/broken yaml.md" in (vault / summary.report.path).read_text()


def all_names(vault: Path) -> set[str]:
    return {p.stem.casefold() for p in vault.rglob("*.md") if ".tierflow" not in p.parts}


def test_no_draft_shares_a_name_with_an_existing_note_and_every_link_resolves(vault: Path, double: ProviderDouble):
    def colliding(request: DoubleRequest) -> Reply:
        data = SKILLS["synthesisout"](prompt_data(request.last_user_text))
        # Three concepts, each named after an existing note anywhere in the vault, in another case: a home page, a
        # template, a concept.
        data["concepts"] = data["concepts"][:3]
        for concept, name in zip(
            data["concepts"], ["home", "LITERATURE NOTE", "self-regulated LEARNING"], strict=False
        ):
            concept.update(name=name, extends=None)
        return Reply(data=data)

    before = all_names(vault)
    double.responder = skilled({"synthesisout": colliding})
    summary = run(vault)
    assert len(summary.written) >= 2
    names = VaultNames.scan(vault)
    for w in summary.written:
        post = frontmatter.load(vault / w.path)
        assert Path(w.path).stem.casefold() not in before, w.path
        assert names.taken(Path(w.path).stem, besides=w.path) == []
        (extended,) = names.resolve(post.metadata["extends"][2:-2])  # says which note it extends
        assert Path(extended).stem.casefold() in {"home", "literature note", "self-regulated learning"}
        assert post.metadata["extends"] in post.content
    for text in [(vault / w.path).read_text() for w in [*summary.written, summary.report]]:
        assert names.problems(text) == []


def test_the_demo_vault_gets_no_draft_named_like_an_existing_note(vault: Path, double: ProviderDouble):
    before = all_names(vault)
    summary = run(vault)
    assert summary.written
    assert not {Path(w.path).stem.casefold() for w in summary.written} & before


def test_feedback_literacy_becomes_an_addition_that_repeats_nothing_the_note_cites(vault: Path, double):
    existing = (vault / "Concepts" / "Feedback literacy.md").read_text()
    summary = run(vault)

    synthesis = next(c for c in double.model_calls() if c.forced_tool == "synthesisout")
    listed = {n["name"]: n for n in prompt_data(synthesis.last_user_text)["existing_notes"]}
    assert set(listed) == {
        "Feedback literacy",
        "Formative assessment",
        "Self-regulated learning",
        "Sustainable feedback",
    }
    assert listed["Feedback literacy"]["summary"].startswith("The understandings, capacities and dispositions")
    # This week's sources the note cites (Kluger 1996 was read in October, so it is not among them).
    assert sorted(listed["Feedback literacy"]["cites"]) == ["carless2018", "sadler1989", "winstone2017"]

    additions = [w for w in summary.written if frontmatter.load(vault / w.path).metadata.get("extends")]
    (addition,) = [w for w in additions if "Feedback literacy" in w.path]
    assert addition.path == "Concepts/Drafts/Feedback literacy (addition).md"
    post = frontmatter.load(vault / addition.path)
    assert post.metadata["extends"] == "[[Feedback literacy]]" and "Adds to [[Feedback literacy]]" in post.content
    cited = {"[[Carless2018 - The development of student feedback literacy]]",
             "[[Winstone2017 - Supporting learners agentic engagement with feedback]]"}  # fmt: skip
    assert post.metadata["sources"] and not cited & set(post.metadata["sources"])
    for quote in re.findall(r"^> (?!\[!|— )(.+)$", post.content.split("## Evidence", 1)[1], flags=re.MULTILINE):
        assert not locate(quote, existing), quote
    assert (vault / "Concepts" / "Feedback literacy.md").read_text() == existing


def test_a_concept_whose_sources_the_note_already_cites_is_not_drafted(vault: Path, double: ProviderDouble):
    def rival(request: DoubleRequest) -> Reply:
        data = prompt_data(request.last_user_text)
        keys = {c["citekey"] for c in data["collations"]}
        return Reply(
            data={
                "patterns": [],
                "tensions": [],
                "concepts": [
                    # Formative assessment.md cites all three already.
                    {"name": "Formative assessment", "summary": "x", "sources": ["black1998", "hattie2007"]},
                    {"name": "Praise", "summary": "y", "sources": sorted(keys)[:2]},
                ],
            }
        )

    double.responder = skilled({"synthesisout": rival})
    summary = run(vault)
    reasons = dict(summary.skipped)
    assert "already cites every source" in reasons["concept Formative assessment"]
    assert [Path(w.path).stem for w in summary.written] == ["Praise"]
    assert "concept Formative assessment" in (vault / summary.report.path).read_text()


def test_a_link_that_resolves_to_no_note_is_retried_then_written_as_plain_text(vault: Path, double: ProviderDouble):
    def dangling(request: DoubleRequest) -> Reply:
        data = SKILLS["draftout"](prompt_data(request.last_user_text))
        data["discussion"] += "\n\nSee [[A note nobody wrote]] and [[Sustainable feedback]]."
        return Reply(data=data)

    double.responder = skilled({"draftout": dangling})
    summary = run(vault)
    drafts = [c for c in double.model_calls() if c.forced_tool == "draftout"]
    assert len(drafts) >= 2 * len(summary.written)  # the check failed, and the retry said why
    retry = drafts[-1]
    assert "links_resolve" in retry.text or len(drafts) > len(summary.written)
    for w in summary.written:
        text = (vault / w.path).read_text()
        assert "[[A note nobody wrote]]" not in text and "A note nobody wrote" in text
        assert "[[Sustainable feedback]]" in text


def test_the_writer_refuses_a_dangling_link_and_never_takes_a_name(vault: Path):
    names = VaultNames.scan(vault)
    writer = NoteWriter(vault, "Concepts/Drafts", names=names)
    with pytest.raises(VaultError, match=r"\[\[Nowhere\]\] links to no note"):
        writer.write("Fine name", {"title": "Fine name"}, "See [[Nowhere]].")
    assert not (vault / "Concepts" / "Drafts" / "Fine name.md").exists()
    result = writer.write("HOME", {"title": "HOME"}, "See [[Home]].")
    assert result.path == "Concepts/Drafts/HOME (2).md" and "Home.md" in result.message


def test_existing_concept_notes_are_read_with_aliases_and_ranked_by_relevance(vault: Path):
    from tierflow.vault.concepts import by_relevance, existing_concepts, first_paragraph
    from tierflow.vault.index import VaultIndex

    srl = vault / "Concepts" / "Self-regulated learning.md"
    srl.write_text(srl.read_text().replace("tags: [concept]", "tags: [concept]\naliases: [SRL, Self-regulation]"))
    names = VaultNames.scan(vault)
    notes = existing_concepts(
        vault,
        VaultIndex(vault),
        names,
        folders=["Concepts"],
        tags=["concept"],
        exclude=["Templates", "Concepts/Drafts"],
    )
    by_name = {n.name: n for n in notes}
    assert set(by_name) == {
        "Feedback literacy",
        "Formative assessment",
        "Self-regulated learning",
        "Sustainable feedback",
    }
    assert by_name["Self-regulated learning"].aliases == ("SRL", "Self-regulation")
    assert by_name["Sustainable feedback"].summary.startswith("Feedback practices that build students' capacity")
    assert "Carless & Boud, 2018" in by_name["Feedback literacy"].summary  # a link's label, not its markup
    assert "Reading/@sadler1989.md" in by_name["Feedback literacy"].cites
    # A name or alias among the week's keywords ranks first, then the sources a note cites, then shared words.
    ranked = by_relevance(
        notes, ["self-regulation", "praise"], ["Reading/Boud2013 - Rethinking models of feedback for learning.md"]
    )
    assert [n.name for n in ranked[:2]] == ["Self-regulated learning", "Sustainable feedback"]
    assert first_paragraph("# Title\n\n- a list\n\n> a quote\n\n" + "word " * 100).endswith("…")


def test_a_concept_named_by_an_alias_becomes_an_addition_to_that_note(vault: Path, double: ProviderDouble):
    srl = vault / "Concepts" / "Self-regulated learning.md"
    srl.write_text(srl.read_text().replace("tags: [concept]", "tags: [concept]\naliases: [Self-regulation]"))
    summary = run(vault)
    extends = {Path(w.path).stem: frontmatter.load(vault / w.path).metadata.get("extends") for w in summary.written}
    assert "Self-regulation" not in extends  # no rival to the note it is an alias of
    assert "[[Self-regulated learning]]" in extends.values()


def test_a_draft_moved_among_the_concept_notes_is_the_persons_and_gets_no_rival(vault: Path, double: ProviderDouble):
    first = run(vault)
    (draft,) = [w.path for w in first.written if w.path.endswith("/Self-regulation.md")]
    promoted = vault / "Concepts" / "Self-regulation.md"
    promoted.write_text((vault / draft).read_text().replace("status: draft", "status: evergreen"))
    (vault / draft).unlink()
    second = run(vault)
    names = VaultNames.scan(vault)
    assert names.taken("Self-regulation") == ["Concepts/Self-regulation.md"]
    # It cites every source of that concept already: nothing to add, so no draft at all.
    assert [w.path for w in second.written if "Self-regulation" in w.path] == []
