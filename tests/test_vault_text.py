"""Reading notes as Obsidian shows them: comments never reach a prompt, and a byte-order mark hides nothing."""

from __future__ import annotations

import unicodedata
from datetime import date
from pathlib import Path

import pytest
import yaml

from tierflow.core.errors import VaultError
from tierflow.lms.drafts import VERSION_KEY, scan
from tierflow.tasks.assignment import _body, _submissions
from tierflow.tasks.collate import quotes_of
from tierflow.tasks.draft import _by_tierflow, draft_names
from tierflow.tasks.synthesise import Concept
from tierflow.vault.concepts import read_concept
from tierflow.vault.folder import read_notes
from tierflow.vault.links import VaultNames
from tierflow.vault.notes import NoteWriter, read_source
from tierflow.vault.rubric import read_rubric_text
from tierflow.vault.text import YAML_LOADER, hide_comments, parse_note, split_front_matter

BOM = "\ufeff"

LITERATURE = """---
title: Carless on dialogue
citekey: carless2013
date: 2026-11-18
tags: [literature]
---
> ==Dialogic feedback involves interactive exchanges.== (p. 90) %%PRIVATE in a quote%%

> ==Second highlight.== (p. 91)
> Comment: useful. <!-- PRIVATE html -->

## My notes

- Useful for week 4 seminar. %%PRIVATE: ask HoD about student 2201945%%
- See [[Dialogue]] %%and [[PRIVATE link]]%%

%%
PRIVATE-BLOCK: salary details 52,000
%%

`%%kept in code%%`
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def prompt_text(source: object) -> str:
    """Everything of a source note the collate prompt carries: quotes with their comments, the reader's notes,
    the linked concepts."""
    quotes, notes = quotes_of(source)  # type: ignore[arg-type]
    return repr([q.model_dump() for q in quotes]) + repr(notes) + repr(source.wikilinks)  # type: ignore[attr-defined]


def test_hide_comments_removes_inline_block_unclosed_and_html_comments_but_not_code() -> None:
    assert hide_comments("a %%x%% b") == "a  b"
    assert hide_comments("a\n%%\nx\ny\n%%\nb") == "a\n\n\n\n\nb"  # line breaks kept: line numbers hold
    assert hide_comments("a <!-- x --> b") == "a  b"
    assert hide_comments("a %% to the end\nof the note") == "a \n"
    assert hide_comments("`%%code%%` and\n```\n%%fence%%\n```\n") == "`%%code%%` and\n```\n%%fence%%\n```\n"
    assert hide_comments("no comment") == "no comment"


def test_a_literature_notes_comments_never_reach_the_collate_prompt(tmp_path: Path) -> None:
    write(tmp_path / "Reading/Carless2013.md", LITERATURE)
    source = read_source(tmp_path, "Reading/Carless2013.md")
    sent = prompt_text(source)
    assert "PRIVATE" not in sent
    assert "PRIVATE" not in source.body
    assert "Useful for week 4 seminar." in sent and "useful." in sent
    assert "%%kept in code%%" in source.body
    assert list(source.wikilinks) == ["Dialogue"]


def test_concept_folder_and_assignment_notes_are_read_without_comments(tmp_path: Path) -> None:
    write(tmp_path / "Concepts/Dialogue.md", "---\ntags: [concept]\n---\nDialogue is %%PRIVATE%% talk.\n")
    write(tmp_path / "Module/Week 1.md", "---\ndate: 2026-11-18\n---\nA run. %%PRIVATE%%\n")
    write(tmp_path / "A/brief.md", "Write an essay. <!-- PRIVATE -->\n")
    write(tmp_path / "A/submissions/s1.md", "---\nstudent_id: s1\n---\nMy essay. %%PRIVATE%%\n")
    write(tmp_path / "A/rubric.md", "| Criterion | Good |\n|---|---|\n| Argument %%PRIVATE%% | clear |\n")
    concept = read_concept(tmp_path, "Concepts/Dialogue.md", VaultNames.scan(tmp_path))
    assert concept is not None and "PRIVATE" not in concept.body + concept.summary
    (note,) = read_notes(tmp_path, "Module", max_note_bytes=100_000).notes
    assert "PRIVATE" not in note.body
    assert "PRIVATE" not in _body(tmp_path / "A/brief.md")
    (submission,), _ = _submissions(tmp_path, "A/submissions")
    assert "PRIVATE" not in submission.text
    assert "PRIVATE" not in read_rubric_text(tmp_path / "A/rubric.md", "A/rubric.md")


def test_a_byte_order_mark_hides_no_front_matter(tmp_path: Path) -> None:
    windows = LITERATURE.replace("\n", "\r\n").replace("citekey: carless2013", "citekey: winkey2020")
    write(tmp_path / "Reading/Windows note.md", BOM + windows)
    source = read_source(tmp_path, "Reading/Windows note.md")
    assert (source.citekey, source.title) == ("winkey2020", "Carless on dialogue")
    assert "citekey" not in source.body
    write(tmp_path / "Concepts/Dialogue.md", BOM + "---\naliases: [Talk]\n---\nDialogue is talk.\n")
    concept = read_concept(tmp_path, "Concepts/Dialogue.md", VaultNames.scan(tmp_path))
    assert concept is not None and concept.aliases == ("Talk",)
    write(tmp_path / "Module/Descriptor.md", BOM + "---\ntype: module-descriptor\n---\nEDU7001.\n")
    (note,) = read_notes(tmp_path, "Module", max_note_bytes=100_000).notes
    assert note.front_matter == {"type": "module-descriptor"}
    write(tmp_path / "A/submissions/s1.md", BOM + "---\nstudent_id: s1\n---\nMy essay.\n")
    (submission,), skipped = _submissions(tmp_path, "A/submissions")
    assert submission.student_id == "s1" and not skipped
    write(tmp_path / "Concepts/Drafted.md", BOM + "---\ntierflow_run: r1\n---\nA draft.\n")
    assert _by_tierflow(tmp_path / "Concepts/Drafted.md")  # tierflow's own draft, saved again in Notepad


@pytest.mark.parametrize(
    ("text", "front_matter", "body"),
    [
        ("---\ntitle: A\n---\nBody.\n", "title: A\n", "Body.\n"),
        ("---\r\ntitle: A\r\n---\r\nBody.\r\n", "title: A\r\n", "Body.\r\n"),  # CRLF: Obsidian's rule too
        (BOM + "---\ntitle: A\n---\nBody.", "title: A\n", "Body."),
        ("---\ntitle: A\n---", "title: A\n", ""),  # closed by the file's last line
        ("---\n---\nBody.", "", "Body."),
        ("---\nNote: a rule, then text.\n", None, "---\nNote: a rule, then text.\n"),
        ("\n---\ntitle: A\n---\nBody.", None, "\n---\ntitle: A\n---\nBody."),  # not the very first line
        ("--- \ntitle: A\n---\nBody.", None, "--- \ntitle: A\n---\nBody."),  # a space after the opener
        ("----\ntitle: A\n----\nBody.", None, "----\ntitle: A\n----\nBody."),
        ("---\ntitle: A\n...\nBody.", None, "---\ntitle: A\n...\nBody."),  # YAML's `...` closes nothing
        ("---\ntitle: A\n--- \nB\n---\nC", "title: A\n--- \nB\n", "C"),  # only an exact `---` closes
        ("---\ntitle: A\n----\nB\n---\nC", "title: A\n----\nB\n", "C"),
    ],
)
def test_front_matter_is_found_by_obsidians_rule(text: str, front_matter: str | None, body: str) -> None:
    """Obsidian (getFrontMatterInfo): properties only from a `---` first line to the next line that is exactly
    `---`; else the whole note is body. python-frontmatter also took `----`, `--- `, a `---` after blank lines, and
    a JSON `{` ... `}` block."""
    assert split_front_matter(text) == (front_matter, body)


def test_a_note_read_as_obsidian_shows_it(tmp_path: Path) -> None:
    write(tmp_path / "Reading/Rule.md", "---\nNote: this week is short.\n\n> ==Quoted.== (p. 2)\n")
    source = read_source(tmp_path, "Reading/Rule.md")
    assert source.title == "Rule" and source.body.startswith("---\nNote: this week is short.")
    write(tmp_path / "Reading/Json.md", '{\n"title": "Not properties"\n}\nText.\n')
    assert read_source(tmp_path, "Reading/Json.md").title == "Json"  # Obsidian has no JSON front-matter
    write(tmp_path / "Reading/Content.md", "---\ncontent: Week 3 slides\nhandler: me\n---\nText.\n")
    assert read_source(tmp_path, "Reading/Content.md").body == "Text."  # python-frontmatter raised TypeError here
    write(tmp_path / "Reading/Day.md", "---\ndate: 2026-13-45\n---\nText.\n")
    with pytest.raises(VaultError, match=r"Reading/Day.md: malformed YAML front-matter \(invalid value \(month"):
        read_source(tmp_path, "Reading/Day.md")  # it raised a bare ValueError
    with pytest.raises(yaml.YAMLError):
        parse_note("---\ntitle: [a, b\n---\nText.\n")


def test_front_matter_properties_of_unexpected_types_are_read_leniently_or_skip_the_note(tmp_path: Path) -> None:
    head = "---\ntitle: 1989\ncitekey: 2020\nauthors: 1989\nyear: 2020\ntags: literature\n---\n> ==Fine.== (p. 3)\n"
    write(tmp_path / "Reading/Odd.md", head)
    source = read_source(tmp_path, "Reading/Odd.md")
    assert (source.title, source.citekey, source.authors, source.year) == ("1989", "2020", ("1989",), "2020")
    write(tmp_path / "Reading/Wiki.md", "---\nauthors: [[Jane Doe]]\ntitle: [[Paper]]\n---\nx\n")
    source = read_source(tmp_path, "Reading/Wiki.md")
    assert (source.authors, source.title) == (("Jane Doe",), "Paper")
    write(
        tmp_path / "Reading/Quoted.md",
        '---\nauthors: ["[[Jane Doe]]", "[[Smith2020|John Smith]]"]\ntitle: "[[Paper]]"\n---\nx\n',
    )
    source = read_source(tmp_path, "Reading/Quoted.md")  # as Obsidian shows the links: they were "[[Jane Doe]]"
    assert (source.authors, source.title) == (("Jane Doe", "John Smith"), "Paper")
    write(tmp_path / "Reading/Null.md", "---\nauthors:\ntitle:\ncitekey:\n---\nx\n")
    assert read_source(tmp_path, "Reading/Null.md").authors == ()
    write(tmp_path / "Reading/Mapped.md", "---\nauthors:\n  - {given: Jane, family: Doe}\n---\nx\n")
    with pytest.raises(VaultError, match=r"Reading/Mapped.md: property 'authors' holds a mapping; write it as a list"):
        read_source(tmp_path, "Reading/Mapped.md")
    write(tmp_path / "Reading/Titles.md", "---\ntitle: [A, B]\n---\nx\n")
    with pytest.raises(VaultError, match=r"property 'title' holds list values; write one value"):
        read_source(tmp_path, "Reading/Titles.md")
    names = VaultNames.scan(tmp_path)
    for aliases, expected in (
        ("1989", ("1989",)),
        ("{a: 1}", ()),
        ("", ()),
        ("[x, 2, null]", ("x", "2")),
        ("Dialogue, Talk,", ("Dialogue", "Talk")),  # Obsidian splits an aliases text at its commas (one alias before)
        ('"[[Dialogue]], Talk"', ("Dialogue", "Talk")),
        ('["Doe, Jane"]', ("Doe, Jane",)),  # a list's item is one alias, commas and all
    ):
        write(tmp_path / "Concepts/Year.md", f"---\naliases: {aliases}\ntags: 7\n---\nThe year.\n")
        concept = read_concept(tmp_path, "Concepts/Year.md", names)
        assert concept is not None and concept.aliases == expected
    (note,) = read_notes(tmp_path, "Concepts", max_note_bytes=100_000).notes
    assert note.tags == ["7"]
    write(tmp_path / "A/submissions/s1.md", "---\nstudent_id: 2201945\nsis_ids: 42\ndocument_authors: 1\n---\nEssay.\n")
    write(tmp_path / "A/submissions/s2.md", "---\nstudent_id: s2\nname: {first: Jane}\n---\nEssay.\n")
    (submission,), skipped = _submissions(tmp_path, "A/submissions")
    assert (submission.student_id, submission.also, submission.aliases) == ("2201945", ("42",), ("1",))
    assert skipped == [
        ("A/submissions/s2.md", "property 'name' holds dict values; write one value (name: text); skipped")
    ]


def test_a_draft_renamed_to_decomposed_letters_is_still_tierflows_own(tmp_path: Path) -> None:
    """A Mac or a sync tool stores `Évaluation.md` as `E` + a combining accent (NFD); tierflow names it in NFC."""
    writer = NoteWriter(tmp_path, "Concepts/Drafts", today=date(2026, 11, 18))
    first = writer.write("Évaluation", {"status": "draft"}, "Body.")
    assert first.action == "created"
    drafts = tmp_path / "Concepts/Drafts"
    nfc = drafts / "Évaluation.md"
    nfd = drafts / unicodedata.normalize("NFD", "Évaluation.md")
    nfc.rename(nfd)
    names = VaultNames.scan(tmp_path)
    (on_disk,) = names.taken("Évaluation")
    assert names.taken("Évaluation", besides="Concepts/Drafts/Évaluation.md") == []
    concept = Concept(name="Évaluation", summary="s", sources=["a"])
    assert draft_names(tmp_path, "Concepts/Drafts", [concept]) == [(concept, "Évaluation")]
    again = NoteWriter(tmp_path, "Concepts/Drafts", today=date(2026, 11, 18))
    result = again.write("Évaluation", {"status": "draft"}, "Body, changed.")
    assert (result.action, result.path) == ("updated", on_disk)
    assert [p.name for p in drafts.iterdir()] == [nfd.name]


def test_properties_are_read_as_obsidians_yaml_reads_them(tmp_path: Path) -> None:
    """Obsidian reads properties as YAML 1.2; PyYAML's YAML 1.1 made `no` (Norwegian) False, `Yes` a title True,
    `12:30` the number 750 and `0123` the number 83 (a leading zero is kept as written: an id must keep it)."""
    write(tmp_path / "Reading/Yes.md", "---\ntitle: Yes\nauthors: [No, On]\nyear: 0123\ncitekey: 12:30\n---\nx\n")
    source = read_source(tmp_path, "Reading/Yes.md")
    assert (source.title, source.authors, source.year, source.citekey) == ("Yes", ("No", "On"), "0123", "12:30")
    post = parse_note("---\nlanguage: no\nreviewed: true\ndate: 2026-03-29\nsize: 1_000\nn: 0x1F\nid: 0123489\n---\n")
    assert post.metadata == {
        **{"language": "no", "reviewed": True, "date": date(2026, 3, 29), "size": "1_000", "n": 31},
        **{"id": "0123489"},  # YAML 1.2 reads 123489: an id that lost its zero would be another student's
    }


def test_text_tierflow_writes_into_front_matter_is_read_back_by_obsidian_as_text(tmp_path: Path) -> None:
    """PyYAML quoted what YAML 1.1 reads as a number, not `1e3` or `0o17`, which Obsidian's YAML 1.2 reads as the
    numbers 1000 and 15: a student id or title of that shape came back changed."""
    values = {"student_id": "1e3", "code": "0o17", "time": "12:30", "answer": "no", "name": "Øyvind"}
    NoteWriter(tmp_path, "Feedback").write("1e3 feedback", values, "Draft.")
    text = (tmp_path / "Feedback/1e3 feedback.md").read_text(encoding="utf-8")
    assert "student_id: '1e3'\ncode: '0o17'\n" in text
    obsidian = yaml.load(split_front_matter(text)[0] or "", Loader=YAML_LOADER)
    assert {k: obsidian[k] for k in values} == values


def test_a_draft_an_earlier_tierflow_wrote_keeps_its_submission_hash(tmp_path: Path) -> None:
    """Before tierflow quoted them, it wrote a 16-digit hex hash such as `86e5014965866131` bare (YAML 1.1 reads
    text); YAML 1.2 reads the number inf. About one draft in 1,300 was then taken as written for another version of
    the submission: redrafted, and left out of the export though reviewed. Text tierflow wrote bare stays text."""
    earlier = {"student_id": "1002", VERSION_KEY: "86e5014965866131", "code": "0o17", "scale": "+.5", "n": "1.5e3"}
    write(tmp_path / "A1/feedback/1002.md", "---\n" + yaml.safe_dump(earlier, sort_keys=False) + "---\nGood.\n")
    (draft,), _ = scan(tmp_path, "A1")
    assert draft.written_for("86e5014965866131")
    assert {k: draft.metadata[k] for k in earlier} == earlier


def test_an_id_with_a_leading_zero_is_written_as_text_obsidian_shows(tmp_path: Path) -> None:
    """Obsidian's YAML 1.2 reads a bare `student_id: 0123489` as the number 123489 (and writes that back when a
    property is edited there): another student's id. tierflow quotes every string of digits it writes."""
    values = {"student_id": "0123489", "sis_ids": ["0912345", "09"], "other": "-0189"}
    NoteWriter(tmp_path, "A1/submissions").write("Jane", values, "Essay.")
    text = (tmp_path / "A1/submissions/Jane.md").read_text(encoding="utf-8")
    assert "student_id: '0123489'\nsis_ids:\n- '0912345'\n- '09'\nother: '-0189'\n" in text
    assert parse_note(text).metadata["sis_ids"] == ["0912345", "09"]


SHOWN_AS_TEXT = (
    "Obsidian shows its properties as text, not as properties: they must start at a `---` on the note's first line "
    "and end at a line that is exactly `---`; "
)


def test_a_draft_or_submission_whose_properties_obsidian_shows_as_text_is_named_with_the_fix(tmp_path: Path) -> None:
    """A blank line before the first `---` (or a space after one) makes Obsidian show the properties as text, and
    tierflow reads them as Obsidian does; a feedback draft so edited was left out of the export as no student's."""
    from tierflow.lms.drafts import scan

    write(tmp_path / "A/feedback/s1 feedback.md", "\n---\nstudent_id: s1\nstatus: reviewed\n---\n\nWell argued.\n")
    write(tmp_path / "A/feedback/s2 feedback.md", "---\nstudent_id: s2\nstatus: reviewed\n--- \n\nClear.\n")
    write(tmp_path / "A/feedback/Notes.md", "\n---\n\nMy own notes on the cohort.\n")
    drafts, unreadable = scan(tmp_path, "A")
    assert drafts == [] and unreadable == [
        (
            "A/feedback/s1 feedback.md",
            f"no properties, so no student: {SHOWN_AS_TEXT}delete the blank line before line 2",
        ),
        ("A/feedback/s2 feedback.md", f"no properties, so no student: {SHOWN_AS_TEXT}delete the spaces on line 4"),
    ]
    write(tmp_path / "A/submissions/s3.md", "\n\n---\nstudent_id: s3\n---\nMy essay.\n")
    assert _submissions(tmp_path, "A/submissions") == (
        [],
        [("A/submissions/s3.md", f"no front-matter: {SHOWN_AS_TEXT}delete the blank lines before line 3")],
    )
