"""Every script, every name: a week of reading in Chinese, Japanese, Russian and Arabic, two notes named alike."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import frontmatter
import pytest
from conftest import anthropic_config, write_config
from responders import skilled

from tierflow.core.ledger import Ledger
from tierflow.flows.reading_notes import reading_notes
from tierflow.offline import prompt_data
from tierflow.testing.double import ProviderDouble
from tierflow.vault.annotations import locate
from tierflow.vault.links import VaultNames, wikilink_targets
from tierflow.vault.notes import SourceNote, _citekey_from, unique_citekeys

pytestmark = pytest.mark.usefixtures("prefect_harness")

SINCE, UNTIL = date(2026, 11, 16), date(2026, 11, 22)

NOTES = {
    "Reading/zh/学生反馈素养.md": ("学生的反馈素养", "Feedback", "反馈素养是学生理解并利用反馈信息的能力。"),
    "Reading/ja/フィードバック.md": (
        "フィードバックの力", "Feedback", "フィードバックは学習に最も強い影響を与える要因の一つである。"
    ),
    "Reading/ru/Обратная связь.md": (
        "Обратная связь в обучении", "Оценивание", "Обратная связь должна быть своевременной и конкретной."
    ),
    "Reading/ru/2025/Обратная связь.md": (
        "Обратная связь: обзор", "Оценивание", "Оценивание меняет то, как студенты учатся."
    ),
    "Reading/ar/التغذية الراجعة.md": (
        "التغذية الراجعة والتعلم", "Оценивание", "التغذية الراجعة الفعالة تركز على المهمة وليس على الشخص."
    ),
}  # fmt: skip


def write_notes(vault: Path) -> None:
    for rel, (title, concept, quote) in NOTES.items():
        path = vault / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f'---\ntitle: "{title}"\ndate: 2026-11-18\ntags: [literature]\n---\n'
            f"Related: [[{concept}]]\n\n> [!quote] p. 3\n> {quote}\n",
            encoding="utf-8",
        )


@pytest.fixture
def script_vault(tmp_path: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch) -> Path:
    vault = tmp_path / "vault"
    write_notes(vault)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    write_config(
        vault / ".tierflow" / "config.toml",
        anthropic_config(double) + '\n[vault]\nreading_folders = ["Reading"]\ntimezone = "Europe/London"\n',
    )
    double.responder = skilled()
    return vault


def test_citekeys_keep_every_script_and_duplicates_are_told_apart_in_path_order():
    assert _citekey_from("学生反馈素养") == "学生反馈素养"
    assert _citekey_from("@hattie2007") == "hattie2007"
    assert _citekey_from("Black1998 - Assessment and Classroom Learning") == "Black1998"
    assert _citekey_from("التغذية الراجعة") == "التغذيةالراجعة"
    assert _citekey_from("हिन्दी नोट") == "हिन्दीनोट"  # combining vowel signs are kept
    assert _citekey_from("!!!") == "source"

    def note(path: str, key: str) -> SourceNote:
        return SourceNote(path=path, title=path, citekey=key, link=path, front_matter={}, body="", annotations=())

    notes = [note("b/x.md", "Smith2020"), note("a/x.md", "smith2020"), note("c/y.md", "smith2020-2")]
    assert [s.citekey for s in unique_citekeys(notes)] == ["Smith2020-3", "smith2020", "smith2020-2"]
    assert [s.citekey for s in unique_citekeys(list(reversed(notes)))] == ["smith2020-2", "smith2020", "Smith2020-3"]


def test_links_resolve_by_name_or_path_case_insensitively():
    names = VaultNames()
    for p in ("Reading/ru/Обратная связь.md", "Reading/ru/2025/Обратная связь.md", "Concepts/Feedback literacy.md"):
        names.add(p)
    assert names.resolve("feedback LITERACY") == ["Concepts/Feedback literacy.md"]
    assert names.link_for("Concepts/Feedback literacy.md") == "Feedback literacy"
    assert names.link_for("Reading/ru/Обратная связь.md") == "Reading/ru/Обратная связь"
    assert names.resolve("Reading/ru/Обратная связь") == ["Reading/ru/Обратная связь.md"]
    assert len(names.resolve("Обратная связь")) == 2
    assert names.problems("see [[Обратная связь|it]] and [[Nowhere]] and [[Feedback literacy#Core]]") == [
        "[[Обратная связь]] is ambiguous: it matches Reading/ru/2025/Обратная связь.md, Reading/ru/Обратная связь.md",
        "[[Nowhere]] links to no note in the vault",
    ]
    assert names.taken("FEEDBACK literacy") == ["Concepts/Feedback literacy.md"]


def evidence(post: frontmatter.Post) -> list[tuple[str, str]]:
    """(quotation, link target) for each quotation in a draft's Evidence section."""
    section = post.content.split("## Evidence", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^> (?!\[!|— )(.+)\n> — \[\[([^\]|]+)\]\]", section, flags=re.MULTILINE)


def test_a_week_in_four_scripts_keeps_every_source_apart(script_vault: Path, double: ProviderDouble):
    summary = reading_notes(vault=str(script_vault), since=SINCE, until=UNTIL)

    collated = [prompt_data(c.last_user_text) for c in double.model_calls() if c.forced_tool == "collationout"]
    assert len(collated) == len(NOTES)
    synthesis = next(c for c in double.model_calls() if c.forced_tool == "synthesisout")
    keys = [c["citekey"] for c in prompt_data(synthesis.last_user_text)["collations"]]
    assert sorted(keys) == sorted(
        ["学生反馈素养", "フィードバック", "Обратнаясвязь", "Обратнаясвязь-2", "التغذيةالراجعة"]
    )

    # Progress labels and the ledger name each source by its title.
    rows = Ledger.for_vault(script_vault).rows(run_id=summary.run_id)
    assert {r["subject"] for r in rows if r["phase"] == "collate"} == {t for t, _, _ in NOTES.values()}

    names = VaultNames.scan(script_vault)
    drafts = {Path(w.path).stem: frontmatter.load(script_vault / w.path) for w in summary.written}
    assert set(drafts) == {"Feedback", "Оценивание"}
    quoted: dict[str, str] = {}
    for post in drafts.values():
        assert post.metadata["tierflow_unverified_quotes"] == 0
        for text, target in evidence(post):
            (path,) = names.resolve(target)  # exactly one file
            assert locate(text, (script_vault / path).read_text(encoding="utf-8")), (text, path)
            quoted[path] = text
    assert set(quoted) == set(NOTES)  # each source quoted once, from its own note: none merged
    assert sorted(drafts["Оценивание"].metadata["sources"]) == [
        "[[Reading/ru/2025/Обратная связь]]",
        "[[Reading/ru/Обратная связь]]",
        "[[التغذية الراجعة]]",
    ]

    report = (script_vault / summary.report.path).read_text(encoding="utf-8")
    for text in [report, *((script_vault / w.path).read_text(encoding="utf-8") for w in summary.written)]:
        assert wikilink_targets(text) and names.problems(text) == []
