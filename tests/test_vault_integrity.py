"""Nothing lost, doubled or shadowed: names with apostrophes, scripts without spaces, code that is not links,
notes named apart from the students' submissions, every name part hidden, names capped in bytes, every
unreadable note listed."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import frontmatter
import pytest
from conftest import write_config

from tierflow.core.ledger import Ledger
from tierflow.vault.links import VaultNames, wikilink_targets

pytestmark = pytest.mark.usefixtures("prefect_harness")

SINCE, UNTIL = date(2026, 11, 16), date(2026, 11, 22)
OFFLINE_READING = '[vault]\nreading_folders = ["Reading"]\ntimezone = "Europe/London"\n'


def reading_vault_with(tmp_path: Path, notes: dict[str, str]) -> Path:
    """A small vault whose `Reading/` folder holds `notes` (name -> Markdown), dated in the week, offline model."""
    vault = tmp_path / "vault"
    for name, text in notes.items():
        path = vault / "Reading" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    write_config(vault / ".tierflow" / "config.toml", OFFLINE_READING)
    return vault


def literature(title: str, quote: str, concept: str = "Pedagogy") -> str:
    return (
        f'---\ntitle: "{title}"\ndate: 2026-11-18\ntags: [literature]\n---\n'
        f"Related: [[{concept}]]\n\n> [!quote] p. 3\n> {quote}\n"
    )


def test_a_source_named_with_an_apostrophe_is_drafted_and_reported(tmp_path: Path):
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    vault = reading_vault_with(
        tmp_path,
        {
            "Guide d'Obsidian.md": literature("Guide d'Obsidian", "Une note par idée rend la pédagogie visible."),
            "Freire's pedagogy.md": literature("Freire's pedagogy", "Education is the practice of freedom."),
        },
    )
    ran = CliRunner().invoke(
        app,
        ["run", "reading-notes", "--vault", str(vault), "--since", str(SINCE), "--until", str(UNTIL)],
        env={"COLUMNS": "300"},
    )
    assert ran.exit_code == 0, ran.output
    (draft,) = (vault / "Concepts" / "Drafts").glob("*.md")
    sources = frontmatter.load(draft).metadata["sources"]
    assert sorted(sources) == ["[[Freire's pedagogy]]", "[[Guide d'Obsidian]]"]
    (report,) = (vault / "tierflow" / "Runs").glob("* reading-notes *.md")
    assert draft.stem in report.read_text(encoding="utf-8")
    names = VaultNames.scan(vault)
    for target in (*(s[2:-2] for s in sources), *wikilink_targets(frontmatter.load(draft).content)):
        assert len(names.resolve(target)) == 1, target


def test_a_week_in_chinese_and_japanese_passes_quotes_verbatim_at_the_first_attempt(tmp_path: Path):
    from tierflow.flows.reading_notes import reading_notes

    def note(title: str, sentence: str) -> str:
        return f'---\ntitle: "{title}"\ndate: 2026-11-18\ntags: [literature]\n---\n相关：[[反馈]]\n\n{sentence}\n'

    vault = reading_vault_with(
        tmp_path,
        {
            "存储.md": note("存储限制", "这意味着==你的账户还没有达到存储限制==。"),
            "学习.md": note("学习反馈", "研究表明==反馈对学习有很大的影响==，尤其是及时的反馈。"),
            "学習.md": note("フィードバック", "研究によると、==フィードバックは学習に最も強い影響を与える==要因だ。"),
        },
    )
    summary = reading_notes(vault=str(vault), since=SINCE, until=UNTIL)
    assert summary.written
    rows = [r for r in Ledger.for_vault(vault).rows(run_id=summary.run_id) if r["phase"] == "draft"]
    assert rows and all(r["attempt"] == 1 and not r["checks_failed"] for r in rows), rows
    for w in summary.written:
        post = frontmatter.load(vault / w.path)
        assert post.metadata["tierflow_unverified_quotes"] == 0
        assert "Not found verbatim" not in post.content


def test_every_part_of_every_name_is_hidden_in_every_script():
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms(
        [
            Student("s1", "Li Wu"),
            Student("s2", "Do Van Anh"),
            Student("s3", "王小明"),
            Student("s4", "Jean-Luc O'Brien"),
            Student("s5", "J. Ng"),
            Student("s6", "Lê Thị Hương"),
            Student("s7", "สมชาย ใจดี"),
        ]
    )
    hidden = cohort.hide(
        "Li wrote this; WU agreed. Do the readings, said do. 我是王小明。Jean and Luc, O'Brien. ng. J. Ng is here. "
        "Le\u0302 Thi\u0323 Hương. 我是Li。สมชายเห็นด้วย. Lisa, Wuhan, Ngaio, Leo, Door, Anhui and Ann stay."
    )
    assert hidden == (
        "Student-01 wrote this; Student-01 agreed. Student-02 the readings, said Student-02. 我是Student-03。"
        "Student-04 and Student-04, Student-04. Student-05. Student-05 is here. Student-06. 我是Student-01。"
        "Student-07เห็นด้วย. Lisa, Wuhan, Ngaio, Leo, Door, Anhui and Ann stay."
    )
    assert cohort.reveal("Student-06 wrote well.") == "Lê Thị Hương wrote well."


def name_key(path: str) -> str:
    """What a link names a file by, folded as Obsidian folds it: a note without `.md`, any other file whole."""
    name = path.rpartition("/")[2]
    return (name[:-3] if name.lower().endswith(".md") else name).casefold()


def files_of(vault: Path) -> dict[str, bytes]:
    return {
        p.relative_to(vault).as_posix(): p.read_bytes()
        for p in vault.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(vault).parts)
    }


def test_three_flows_on_one_vault_take_no_name_and_write_only_links_that_resolve(tmp_path: Path):
    """reading-notes, student-feedback and module-review, twice, on one vault holding all three fixtures."""
    import shutil

    from conftest import FIXTURES

    from tierflow.flows.module_review import module_review
    from tierflow.flows.reading_notes import reading_notes
    from tierflow.flows.student_feedback import student_feedback

    vault = tmp_path / "vault"
    shutil.copytree(FIXTURES / "reading-week", vault)
    for fixture in ("feedback-batch", "module-review"):
        shutil.copytree(FIXTURES / fixture / "Teaching", vault / "Teaching", dirs_exist_ok=True)
    config = vault / ".tierflow" / "config.toml"
    config.write_text(
        config.read_text()
        + '\n[feedback]\nassignment_folder = "Teaching/EDU7001/essay-1"\n[module]\nfolder = "Teaching/EDU7001"\n'
    )
    before = files_of(vault)
    assert "Teaching/EDU7001/essay-1/submissions/s2026005.md" in before
    for _ in range(2):
        for summary in (
            reading_notes(vault=str(vault), since=SINCE, until=UNTIL),
            student_feedback(vault=str(vault)),
            module_review(vault=str(vault)),
        ):
            assert not summary.failed and summary.written, summary.flow
        # The module folder holds the assignment: the students' feedback drafts are left out of the review.
        left_out = {p for p, _ in summary.skipped}
        assert {p for p in files_of(vault) if "/feedback/s20" in p} <= left_out
    after = files_of(vault)
    assert {p: after[p] for p in before} == before, "a file the person had was changed"
    new = sorted(set(after) - set(before))
    assert any("/feedback/" in p for p in new) and any(p.startswith("Concepts/Drafts/") for p in new)
    by_key: dict[str, list[str]] = {}
    for path in after:
        by_key.setdefault(name_key(path), []).append(path)
    shadowing = {p: by_key[name_key(p)] for p in new if len(by_key[name_key(p)]) > 1}
    assert shadowing == {}, "a new note shares its name with another file"

    names = VaultNames.scan(vault)
    for path in new:
        if not path.endswith(".md"):
            continue
        post = frontmatter.load(vault / path)
        values = [v for v in post.metadata.values() for v in (v if isinstance(v, list) else [v])]
        text = "\n".join([*(v for v in values if isinstance(v, str)), post.content])
        bad = {t: names.resolve(t) for t in wikilink_targets(text) if len(names.resolve(t)) != 1}
        assert bad == {}, f"{path} links to no file or to several: {bad}"
    cohort = next(p for p in new if p.startswith("Teaching/EDU7001/essay-1/feedback/Cohort summary"))
    assert "[[s2026007]]" in (vault / cohort).read_text(encoding="utf-8")  # flagged: links the submission alone


SYNTAX_EXAMPLES = """How to link: write `[[Link]]`, or embed with ``![[Figure 1.png]]``.

```markdown
[[Three laws of motion]] and ==a highlight in a fence==
```

    [[Indented example]] ==indented==

> Quoted `[[Quoted code]]`, and a real [[Feedback literacy|link]].
> ~~~
> [[Quoted fence]]
> ~~~

- ==a real highlight== beside `==code, not a highlight==`
"""


def test_links_and_highlights_written_as_code_are_not_read():
    from tierflow.vault.annotations import parse_annotations
    from tierflow.vault.links import note_links

    assert wikilink_targets(SYNTAX_EXAMPLES) == ["Feedback literacy"]
    assert note_links(SYNTAX_EXAMPLES) == ["Feedback literacy"]
    names = VaultNames()
    assert names.problems(SYNTAX_EXAMPLES) == ["[[Feedback literacy]] links to no note in the vault"]
    unlinked = names.unlink_unresolved(SYNTAX_EXAMPLES)
    assert unlinked == SYNTAX_EXAMPLES.replace("[[Feedback literacy|link]]", "link")  # code left as written
    highlights = [a.text for a in parse_annotations(SYNTAX_EXAMPLES) if a.kind == "highlight"]
    assert highlights == ["a real highlight"]


def test_syntax_examples_in_code_become_no_concepts(tmp_path: Path):
    from tierflow.flows.reading_notes import reading_notes

    def note(title: str, quote: str) -> str:
        head = f'---\ntitle: "{title}"\ndate: 2026-11-18\ntags: [literature]\n---\n'
        return f"{head}{SYNTAX_EXAMPLES}\n> [!quote] p. 3\n> {quote}\n"

    vault = reading_vault_with(
        tmp_path,
        {
            "Guide one.md": note("Obsidian guide one", "Pedagogy shapes every lesson."),
            "Guide two.md": note("Obsidian guide two", "Pedagogy changes slowly."),
        },
    )
    summary = reading_notes(vault=str(vault), since=SINCE, until=UNTIL)
    drafted = {Path(w.path).stem.casefold() for w in summary.written}
    assert drafted, "the real shared link or word makes a concept"
    examples = {"link", "figure 1.png", "three laws of motion", "indented example", "quoted code", "quoted fence"}
    assert not drafted & examples, drafted


def test_a_long_title_in_any_script_gets_a_name_of_at_most_255_bytes_however_it_is_named_apart(tmp_path: Path):
    from tierflow.vault.notes import NoteWriter, safe_note_name

    vault = tmp_path / "vault"
    for title in ("学习反馈" * 25, "フィードバック" * 15, "é" * 150, "Ω" * 99 + "🙂" * 30):
        stem = safe_note_name(title)
        assert len(f"{stem}.md".encode()) <= 255 and stem.encode("utf-8").decode("utf-8") == stem
        # A note of that name elsewhere, and one the person edited where the draft goes: named apart, then dated.
        (vault / "Elsewhere").mkdir(parents=True, exist_ok=True)
        (vault / "Elsewhere" / f"{stem}.md").write_text("the person's\n", encoding="utf-8")
        first = NoteWriter(vault, "Drafts").write(title, {"title": title}, "first")
        assert first.action == "created" and first.path.endswith(" (2).md")
        edited = vault / first.path
        edited.write_text(edited.read_text(encoding="utf-8") + "\nmy edit\n", encoding="utf-8")
        second = NoteWriter(vault, "Drafts").write(title, {"title": title}, "second")
        assert second.action == "kept-user-edit" and "(tierflow " in second.path
        for path in (first.path, second.path):
            assert len(Path(path).name.encode()) <= 255 and (vault / path).is_file()
    addition = safe_note_name("学习反馈" * 25 + " (addition)")
    assert addition.endswith(" (addition)") and addition.startswith("学习反馈") and len(addition.encode()) <= 255 - 33


def test_bidirectional_controls_are_removed_from_names():
    from tierflow.vault.notes import safe_note_name

    assert safe_note_name("invoice\u202efdp.md") == "invoicefdp.md"
    assert safe_note_name("\u2066Report\u2069 \u200eof\u200f week\u061c") == "Report of week"


def test_a_note_that_cannot_be_read_is_listed_in_the_run_of_its_date_and_no_other(tmp_path: Path):
    import os
    from datetime import datetime

    from tierflow.flows.reading_notes import reading_notes

    vault = reading_vault_with(
        tmp_path,
        {
            "Freire one.md": literature("Freire one", "Education is the practice of freedom."),
            "Freire two.md": literature("Freire two", "Pedagogy is dialogue."),
        },
    )
    latin1 = vault / "Reading" / "Latin1 note.md"
    latin1.write_bytes("---\ndate: 2026-11-18\ntags: [literature]\n---\nCaf\xe9 cr\xe8me\n".encode("latin-1"))
    october = datetime(2026, 10, 7, 12, 0).timestamp()
    os.utime(latin1, (october, october))  # its file time lies in another week than its date
    week = reading_notes(vault=str(vault), since=SINCE, until=UNTIL)
    assert "not UTF-8" in dict(week.skipped)["Reading/Latin1 note.md"]
    assert "Reading/Latin1 note.md" in (vault / week.report.path).read_text(encoding="utf-8")
    other = reading_notes(vault=str(vault), since=date(2026, 10, 5), until=date(2026, 10, 11))
    assert "Reading/Latin1 note.md" not in dict(other.skipped)


def test_a_submission_with_an_embedded_attachment_is_drafted_and_listed_once_as_such(tmp_path: Path):
    import shutil

    from conftest import FIXTURES

    from tierflow.flows.student_feedback import student_feedback

    vault = tmp_path / "vault"
    shutil.copytree(FIXTURES / "feedback-batch", vault)
    summary = student_feedback(vault=str(vault), profile="offline")
    submission = "Teaching/EDU7001/essay-1/submissions/s2026010.md"
    assert submission not in dict(summary.skipped)
    (drafted,) = [w for w in summary.written if "s2026010" in w.path]
    assert "essay1-diagram.png" in drafted.message and "not read" in drafted.message
    assert frontmatter.load(vault / drafted.path).metadata["tierflow_not_read"] == ["essay1-diagram.png"]
    report = (vault / summary.report.path).read_text(encoding="utf-8")
    assert [line for line in report.splitlines() if "essay1-diagram.png" in line] == [
        line for line in report.splitlines() if "s2026010" in line
    ]
    assert len([line for line in report.splitlines() if "s2026010" in line]) == 1


def test_a_name_typed_without_its_accents_an_email_and_a_student_number_are_hidden_too():
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms(
        [
            Student("s1", "Siobhán Müller", also=("siobhan.mueller@example.ac.uk", "20231234")),
            Student("s2", "Zoë Łukasz"),
        ]
    )
    hidden = cohort.hide(
        "Essay by Siobhan Mueller (siobhan.mueller@example.ac.uk), student number 20231234. SIOBHAN and Muller "
        "agreed with Zoe Lukasz; Müllerei, 202312345 and Siobhanna stay."
    )
    assert hidden == (
        "Essay by Student-01 (Student-01), student number Student-01. Student-01 and Student-01 agreed with "
        "Student-02; Müllerei, 202312345 and Siobhanna stay."
    )


def test_a_short_numeric_id_is_not_taken_for_a_year_and_quotations_come_back_as_the_student_wrote_them():
    """A Moodle participant 2007 must not turn "Timperley (2007)" into a name; a student called Will Hope has
    "I will" hidden, and a draft quoting the hidden text gets the student's own words back, not their name."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms([Student("2007", "Alan Turing"), Student("72012", "Will Hope")])
    text = "Hattie and Timperley (2007) found it. In this essay I will discuss hope. Will Hope, 72012."
    hidden = cohort.hidden(text)
    assert hidden.text == (
        "Hattie and Timperley (2007) found it. In this essay I Student-02 discuss Student-02. Student-02, Student-02."
    )
    assert cohort.restore("I Student-02 discuss Student-02.", hidden) == "I will discuss hope."
    assert cohort.restore("Student-02, Student-02", hidden) == "Will Hope, 72012"
    assert cohort.restore("ssay I Stud", hidden) == "ssay I will"  # a label cut by an end is taken whole
    assert cohort.restore("I Student-02 argue", hidden) is None  # not in the text: the caller says so
    comment = 'You write "In this essay I Student-02 discuss", which sets out the aim. Well done, Student-02.'
    assert cohort.restore_label(comment, hidden, "Student-02", "Will Hope") == (
        'You write "In this essay I will discuss", which sets out the aim. Well done, Will Hope.'
    )


def test_a_written_note_has_the_mode_any_new_file_gets_and_a_rewrite_keeps_its_mode(tmp_path: Path):
    """Not mkstemp's 0600: a synced or shared vault, or a publishing tool running as another user, reads it."""
    import os
    import stat

    from tierflow.vault.notes import NoteWriter

    mask = os.umask(0o022)
    os.umask(mask)
    vault = tmp_path / "vault"
    written = NoteWriter(vault, "Drafts").write("Mode", {"title": "Mode"}, "first")
    path = vault / written.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    path.chmod(0o640)
    rewritten = NoteWriter(vault, "Drafts").write("Mode", {"title": "Mode"}, "second")
    assert rewritten.action == "updated" and stat.S_IMODE(path.stat().st_mode) == 0o640


ODD_NAMES = {
    "Note #1 on feedback.md": "Reading/Note #1 on feedback.md",
    "trailing space .md": "Reading/trailing space .md",
    "A|B feedback.md": "Reading/A|B feedback.md",
}
"""File names a wikilink cannot hold: `#`, `|`, `^` and brackets end its target, and an end space is trimmed."""
CLASHES = ("case note.md", "Case Note.md", "Caf\u00e9 th\u00e9orie.md", "Cafe\u0301 the\u0301orie.md")
"""Pairs that differ only in case or Unicode form (NFC, NFD): no link names either alone."""


def test_a_name_no_wikilink_can_hold_gets_a_markdown_link_that_resolves_to_it_alone():
    from tierflow.vault.links import link_targets

    names = VaultNames()
    odd = [*ODD_NAMES.values(), "Reading/Brackets [[x]] and ^block.md", "Concepts/Rubric use #3 (week 3).md"]
    for path in [*odd, "Reading/Plain.md"]:
        names.add(path)
    assert names.link_for("Reading/Plain.md") == "Plain"
    assert names.link("Plain") == "[[Plain]]"
    assert names.link(names.link_for("Reading/Note #1 on feedback.md")) == (
        "[Note #1 on feedback](Reading/Note%20%231%20on%20feedback.md)"
    )
    assert names.link(names.link_for("Reading/A|B feedback.md")) == r"[A\|B feedback](Reading/A%7CB%20feedback.md)"
    for path in odd:
        written = names.link(names.link_for(path))
        assert not written.startswith("[["), written
        assert [names.resolve(t) for t in link_targets(written)] == [[path]], written
        assert names.problems(written) == [] and names.unlinkable(path) == ""
    assert names.resolve("Reading/trailing space .md") == ["Reading/trailing space .md"]
    assert names.problems("[gone](Reading/Gone%20%231.md) and [web](https://example.org/a.md)") == [
        "[gone](Reading/Gone%20%231.md) links to no note in the vault"
    ]
    assert names.unlink_unresolved(r"see [gone \[1\]](Reading/Gone.md)") == "see gone [1]"


def test_names_that_differ_only_in_case_or_unicode_form_are_written_as_plain_text_with_the_fix():
    names = VaultNames()
    for name in CLASHES:
        names.add(f"Reading/{name}")
    for name in CLASHES:
        path = f"Reading/{name}"
        written = names.link(names.link_for(path))
        assert "[" not in written and names.problems(written) == [], written
        assert "rename one of them" in names.unlinkable(path)


def test_a_week_holding_names_no_wikilink_can_hold_is_drafted_and_reported_with_links_to_each_note_alone(
    tmp_path: Path,
):
    from tierflow.flows.reading_notes import reading_notes
    from tierflow.vault.links import link_targets

    quote = "Feedback literacy grows through peer review."
    vault = reading_vault_with(
        tmp_path,
        {
            **{name: literature(name.removesuffix(".md"), quote) for name in ODD_NAMES},
            **{name: literature(f"Clash {i}", quote) for i, name in enumerate(CLASHES)},
            "Plain.md": literature("Plain", quote),
        },
    )
    summary = reading_notes(vault=str(vault), since=SINCE, until=UNTIL)
    assert not summary.failed and summary.written and summary.report is not None
    report = (vault / summary.report.path).read_text(encoding="utf-8")
    for name in CLASHES:
        assert f"Reading/{name}" in report and "rename one of them" in dict(summary.skipped)[f"Reading/{name}"]
    names = VaultNames.scan(vault)
    linked: set[str] = set()
    for w in summary.written:
        post = frontmatter.load(vault / w.path)
        values = [v for v in post.metadata.values() for v in (v if isinstance(v, list) else [v])]
        text = "\n".join([*(v for v in values if isinstance(v, str)), post.content])
        found = {t: names.resolve(t) for t in link_targets(text)}
        assert all(len(paths) == 1 for paths in found.values()), found
        linked |= {paths[0] for paths in found.values()}
    assert set(ODD_NAMES.values()) | {"Reading/Plain.md"} <= linked
    assert not linked & {f"Reading/{name}" for name in CLASHES}


def test_the_cohort_summary_links_a_submission_whose_name_no_wikilink_can_hold(feedback_vault: Path):
    from tierflow.flows.student_feedback import student_feedback
    from tierflow.vault.links import link_targets

    submissions = feedback_vault / "Teaching" / "EDU7001" / "essay-1" / "submissions"
    (submissions / "s2026001.md").rename(submissions / "s2026001 #1 final.md")
    summary = student_feedback(vault=str(feedback_vault), profile="offline")
    assert not summary.failed, summary.failed
    names = VaultNames.scan(feedback_vault)
    (cohort,) = [w for w in summary.written if "cohort" in w.path.casefold()]
    text = (feedback_vault / cohort.path).read_text(encoding="utf-8")
    found = {t: names.resolve(t) for t in link_targets(text)}
    assert all(len(paths) == 1 for paths in found.values()), found
    assert "Teaching/EDU7001/essay-1/submissions/s2026001 #1 final.md" in {p for ps in found.values() for p in ps}
    # The student's draft links back to the submission too, and the run's report was written.
    draft = frontmatter.load(feedback_vault / "Teaching/EDU7001/essay-1/feedback/s2026001 feedback.md")
    assert [names.resolve(t) for t in link_targets(draft.metadata["submission"])] == [
        ["Teaching/EDU7001/essay-1/submissions/s2026001 #1 final.md"]
    ]
    assert summary.report is not None


def test_names_in_handles_addresses_and_numbers_without_their_prefix_are_hidden():
    """What a second look found on the wire: `_`-joined and run-together names, an apostrophe dropped as Moodle's
    file names drop it, a student number without its letter."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms(
        [
            Student("s1", "Zoë Müller", also=("Z20231234",)),
            Student("s2", "Anna van der Berg"),
            Student("s3", "Siobhán O’Brien"),
        ]
    )
    hidden = cohort.hide(
        "zoe_mueller@web.de, github.com/zoe_mueller, zoemueller.de, number 20231234; "
        "https://annavanderberg.nl and anna_vanderberg@gmail.com; Siobhan OBrien. Keep: muellerian, 2023."
    )
    for gone in ("zoe", "mueller", "20231234", "annavanderberg", "vanderberg", "OBrien", "Siobhan"):
        assert gone not in hidden.replace("muellerian", ""), (gone, hidden)
    assert "muellerian" in hidden and "2023." in hidden
    assert Pseudonyms([Student("s4", "Jana Straße")]).hide("Straße, Strasse, STRASSE, Straßenbahn") == (
        "Student-01, Student-01, Student-01, Straßenbahn"
    )


def test_a_german_possessive_is_hidden_and_a_word_processors_placeholder_author_hides_nothing():
    """A group essay's "Wie Annas Analyse zeigt" sent Anna's name; and an older import's `document_authors:
    [Microsoft Office User]` replaced every "office" and "user" the student wrote."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms(
        [Student("s1", "Anna Müller", aliases=("Microsoft Office User", "Windows User")), Student("s2", "Mark Hope")]
    )
    hidden = cohort.hide(
        "Wie Annas Analyse und Müllers (Muellers) Beitrag zeigen. Marks fall when the office user hopes for marks."
    )
    assert hidden == (
        "Wie Student-01 Analyse und Student-01 (Student-01) Beitrag zeigen. "
        "Student-02 fall when the office user hopes for marks."
    )
    assert Pseudonyms([Student("s3", "Hans Marx")]).hide("Hanss Marxs") == "Hanss Marxs"  # names that take none


def test_a_sentence_about_the_student_that_shares_a_word_with_the_essay_gets_their_name():
    """Mark Young's essay says "teachers mark work too late for young learners"; a draft's "Student-01 works hard"
    is about the student, not a quotation of "mark work"."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms([Student("s1", "Mark Young")])
    hidden = cohort.hidden("Too often teachers mark work too late for young learners to act on it.")
    assert (
        cohort.restore_label("Student-01 works hard.", hidden, "Student-01", "Mark Young") == "Mark Young works hard."
    )
    quoted = 'You write that "teachers Student-01 work too late", which is well argued.'
    assert cohort.restore_label(quoted, hidden, "Student-01", "Mark Young") == (
        'You write that "teachers mark work too late", which is well argued.'
    )


def test_a_title_written_as_text_never_becomes_a_link(tmp_path: Path):
    """A note titled `[[x]]`, listed under a concept's sources, must not link whatever note is called x."""
    from tierflow.vault.links import link_targets
    from tierflow.vault.notes import template_env

    env = template_env(tmp_path, "no templates here")
    line = env.from_string("- {{ link }}: {{ title | text }}").render(link="[[Plain]]", title="Brackets [[x]] ]]")
    assert link_targets(line) == ["Plain"] and "[[x]]" not in line and "x" in line


def dated_literature(name: str, day: str) -> str:
    return (
        f'---\ntitle: "Paper {name}"\ncitekey: paper{name}\ndate: {day}\ntags: [literature]\n---\n\n'
        f"Related: [[Moderation]]\n\n> ==Sentence {name} about zorbl{name} quixt{name}.== (p. 3)\n"
    )


def test_a_later_weeks_draft_of_the_same_concept_is_written_beside_the_earlier_weeks_which_is_kept(tmp_path: Path):
    from tierflow.flows.reading_notes import reading_notes

    days = {"A": "2026-11-18", "B": "2026-11-19", "C": "2026-11-25", "D": "2026-11-26"}
    vault = reading_vault_with(tmp_path, {f"Paper {n}.md": dated_literature(n, d) for n, d in days.items()})
    later = date(2026, 11, 23), date(2026, 11, 29)
    first = reading_notes(vault=str(vault), since=SINCE, until=UNTIL)
    earlier = vault / "Concepts" / "Drafts" / "Moderation.md"
    kept = earlier.read_bytes()

    second = reading_notes(vault=str(vault), since=later[0], until=later[1])
    assert earlier.read_bytes() == kept, "week 47's draft, unreviewed and paid for, was replaced"
    (written,) = [w for w in second.written if w.path.startswith("Concepts/Drafts/Moderation")]
    assert (written.path, written.action) == ("Concepts/Drafts/Moderation (tierflow 2026-11-23).md", "created")
    assert written.message.startswith("Concepts/Drafts/Moderation.md kept as it is")
    assert "2026-11-16 to 2026-11-22" in written.message
    post = frontmatter.load(vault / written.path)
    assert post["sources"] == ["[[Paper C]]", "[[Paper D]]"] and post["tierflow_run"] == second.run_id
    report = (vault / second.report.path).read_text(encoding="utf-8")
    assert f"[[Concepts/Drafts/Moderation (tierflow 2026-11-23)]] (created): {written.message}" in report
    assert frontmatter.load(earlier)["tierflow_run"] == first.run_id
    assert (frontmatter.load(earlier)["tierflow_since"], post["tierflow_since"]) == (str(SINCE), "2026-11-23")

    # A rerun of either window finds its own draft again: nothing is replaced, nothing is added.
    before = sorted(p.name for p in earlier.parent.glob("*.md"))
    again = reading_notes(vault=str(vault), since=later[0], until=later[1])
    assert {w.path: w.action for w in again.written}[written.path] == "unchanged"
    rerun = reading_notes(vault=str(vault), since=SINCE, until=UNTIL)
    assert {w.path: w.action for w in rerun.written}["Concepts/Drafts/Moderation.md"] == "unchanged"
    assert sorted(p.name for p in earlier.parent.glob("*.md")) == before and earlier.read_bytes() == kept


def test_a_draft_of_another_scope_is_kept_and_only_its_own_scope_replaces_it(tmp_path: Path):
    from tierflow.vault.notes import NoteWriter

    vault = tmp_path / "vault"
    vault.mkdir()

    def window(meta: dict, body: str) -> str | None:
        return meta.get("window")

    def write(scope: str, body: str, day: date):
        writer = NoteWriter(vault, "Drafts", today=date(2026, 12, 4))
        return writer.write("Moderation", {"title": "Moderation", "window": scope}, body, scope=window, dated=day)

    first = write("w47", "week 47", SINCE)
    week47 = (vault / first.path).read_bytes()
    second = write("w48", "week 48", date(2026, 11, 23))
    assert (vault / first.path).read_bytes() == week47
    assert (second.path, second.action) == ("Drafts/Moderation (tierflow 2026-11-23).md", "created")
    assert "tierflow wrote it for w47, not w48" in second.message
    assert write("w48", "week 48, revised", date(2026, 11, 23)).action == "updated"
    # An overlapping window starting the same day is a third scope: it takes the next free name.
    third = write("w48b", "days 23 to 25", date(2026, 11, 23))
    assert third.path == "Drafts/Moderation (tierflow 2026-11-23 2).md" and third.action == "created"
    assert "week 48, revised" in (vault / second.path).read_text(encoding="utf-8")
    rerun = write("w47", "week 47, rerun", SINCE)
    assert (rerun.path, rerun.action) == (first.path, "updated")


def test_a_note_created_meanwhile_by_another_run_or_a_person_is_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Two runs (or a run and a person) creating one name at once: the one that comes second writes beside it."""
    from tierflow.vault import notes
    from tierflow.vault.notes import NoteWriter

    vault = tmp_path / "vault"
    target = vault / "Drafts" / "Moderation.md"
    writer = NoteWriter(vault, "Drafts")
    write = notes.write_atomically

    def raced(path: Path, text: str, **kw: bool) -> None:
        if path == target and not path.exists():  # after the writer looked, before it wrote
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("written at the same moment by someone else\n", encoding="utf-8")
        write(path, text, **kw)

    monkeypatch.setattr(notes, "write_atomically", raced)
    result = writer.write("Moderation", {"title": "Moderation"}, "tierflow's draft")
    assert target.read_text(encoding="utf-8") == "written at the same moment by someone else\n"
    assert result.path != "Drafts/Moderation.md" and "tierflow's draft" in (vault / result.path).read_text()


def test_a_name_right_before_a_footnote_mark_or_other_numeric_sign_is_hidden():
    """Word's and LibreOffice's footnote marks, read as superscript digits, stood glued to the name before them
    ("Sharma²"): the mark counted as a letter of the word, so the name went to the model as written."""
    from tierflow.vault.annotations import locate
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms([Student("2004", "Priya Sharma")])
    assert cohort.hide("Sharma² and Priya³, Priya₁, ²Sharma, Priya①, Sharma½, Priya\u20dd.") == (
        "Student-01² and Student-01³, Student-01₁, ²Student-01, Student-01①, Student-01½, Student-01\u20dd."
    )
    assert cohort.hide("Priyanka, Sharmas2, Priya2") == "Priyanka, Sharmas2, Priya2"  # letters and digits still bind
    assert locate("feedback matters", "Feedback matters. Indeed feedback matters¹ most.")


def test_a_name_excel_broke_in_the_roster_is_hidden_as_the_essay_writes_it_accents_or_not():
    """A roster saved in Excel as Windows-1252 has `?` for the letters it lacks: "Şule Yılmaz" reached the model
    as written, and "Nguyễn Văn An" as "Nguyễn Văn Student-02". Each `?` is one letter, with its combining marks."""
    import unicodedata

    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms(
        [
            Student("1001", "?ule Y?lmaz"),
            Student("1002", "Nguy?n V?n An"),
            Student("1003", "Zeynep Ilg?n-?ahin"),  # a `?` right after a hyphen
            Student("1004", "Pawe? Nowak"),  # ... and right before a space
            Student("1005", "Tr??ng Th? Mai"),
        ]
    )
    nfd = unicodedata.normalize("NFD", "Nguyễn Văn An")
    assert nfd != "Nguyễn Văn An"
    hidden = cohort.hide(
        f"I worked with Şule Yılmaz; thanks to Nguyễn Văn An and {nfd}. Nguyen Van An, Sule Yilmaz, YILMAZ and "
        "Yilmaz² agreed with Zeynep Ilgın-Şahin (Ilgin-Sahin, Şahin), Paweł Nowak, Pawel, Trương Thị Mai, Truong "
        "Thi Mai and Trương; suleyilmaz@example.com, nguyen_van_an."
    )
    assert hidden == (
        "I worked with Student-01; thanks to Student-02 and Student-02. Student-02, Student-01, Student-01 and "
        "Student-01² agreed with Student-03 (Student-03, Student-03), Student-04, Student-04, Student-05, Student-05 "
        "and Student-05; Student-01@example.com, Student-02."
    )
    assert cohort.reveal("Student-01 wrote it.") == "?ule Y?lmaz wrote it."  # the roster's name, as it holds it


def test_a_name_excel_broke_hides_no_ordinary_word_the_lost_letters_could_make():
    """A `?` is never an ASCII letter Excel lost (every Windows code page holds ASCII): so `??` (Đỗ) and `H?` (Hồ)
    hide "Đỗ" and "Hồ", but no "of" or "he"; a short part stands for an ASCII letter nowhere (`?ule` would hide
    "rule", `Th?` "The"), a longer one, or a whole name capitalised, does; a lone `?` is left out, as "J." is."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms(
        [
            Student("1", "?"),
            Student("2", "?? ??"),
            Student("3", "H? Th?"),
            Student("4", "?ule Y?lmaz"),
            Student("5", "Tr??ng Th?"),
        ]
    )
    ordinary = (
        "I saw a cat: he is ok, so we go to it. The rule, They said, is in the mule. Trying the survey, we ran; "
        "à la carte, é, Ho, Hi, He, Sule."
    )
    assert cohort.hide(ordinary) == ordinary
    assert cohort.hide("Đỗ, Hồ Thị, Şule, Yilmaz, Sule Yilmaz, Trương Thị, Truong Thi.") == (
        "Student-02, Student-03, Student-04, Student-04, Student-04, Student-05, Student-05."
    )
    assert cohort.hide("Ho Thi, Ho thi") == "Ho Thi, Ho thi"  # `H? Th?` keeps too few letters to be more than Hồ Thị


TRANSLITERATED = [
    ("1", "Jürgen Müller"),
    ("2", "Gerhard Schröder"),
    ("3", "Anna Bäcker"),
    ("4", "Johann Strauß"),
    ("5", "Søren Kjær"),
    ("6", "Åsa Ågren"),
]
"""Names whose usual ASCII spelling writes one letter as two: ü ue, ö oe, ä ae, ß ss, ø oe, æ ae, å aa."""

AS_TYPED = (
    "Interview with Juergen Mueller. As Mueller argues, MUELLER and Mueller's data; Muellers Analyse. Schroeder, "
    "Gerhard Schroeder, Anna Baecker, Johann Strauss, Soeren Kjaer, Aasa Aagren, Aagren; and Jurgen Muller."
)


@pytest.mark.parametrize("broken", [False, True], ids=["whole", "broken"])
def test_a_name_typed_with_two_letters_for_one_is_hidden_whether_the_roster_is_whole_or_excel_broke_it(broken):
    """A keyboard without "ü" types "Müller" as "Mueller": hidden from a whole roster, the same text reached the
    model as written when Excel, saving in a code page without "ü", had written `J?rgen M?ller` in the roster."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    # Excel's "CSV (Comma delimited)" on a Windows whose code page is Cyrillic (Windows-1251): no ü, ß, ø, æ or å.
    roster = [
        (sid, name.encode("cp1251", errors="replace").decode() if broken else name) for sid, name in TRANSLITERATED
    ]
    assert not broken or roster[0][1] == "J?rgen M?ller" and roster[4][1] == "S?ren Kj?r"
    cohort = Pseudonyms([Student(sid, name) for sid, name in roster])
    assert cohort.hide(AS_TYPED) == (
        "Interview with Student-01. As Student-01 argues, Student-01 and Student-01's data; Student-01 Analyse. "
        "Student-02, Student-02, Student-03, Student-04, Student-05, Student-06, Student-06; and Student-01."
    )


def test_a_lost_letter_taken_for_two_hides_no_ordinary_word():
    """A `?` stands for "ue", "oe", "ae", "ss" or "aa" only where it may stand for an ASCII letter (a longer word, or
    a whole name): `D?` (Dư), `Th?`, `Gro?` (Groß), `Bu?` (Buß) and `?sa` (Åsa) hide no "due", "the", "gross", "buss"
    or "aasa", and no name takes a word that merely holds those letters ("issue", "aesthetics", "does")."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms(
        [
            Student("1", "J?rgen M?ller"),
            Student("2", "D? Th?"),
            Student("3", "Karl Gro?"),
            Student("4", "Lena Bu?"),
            Student("5", "?sa ?gren"),
            Student("6", "Tr??ng Th?"),
            Student("7", "?"),
        ]
    )
    ordinary = (
        "The essay is due; does the issue of aesthetics matter? Due, Does, Doe, Dues, Thee, Thoe, The, the gross "
        "margin, a Gross sum, Buss, the bus, Aasa, Asa, Aesa, Assa, Ss, Ue, Oe, Ae, Aa; a blue shoe goes; Trueing "
        "the, Trying the, Mueller-Lyer illusion, Muellerian; Soeren Kierkegaard."
    )
    assert cohort.hide(ordinary) == ordinary.replace("Mueller-Lyer", "Student-01-Lyer")
    assert cohort.hide("Dư Thị, Karl Gross, Lena Buss, Aasa Aagren, Truong Thi, Trương Thị.") == (
        "Student-02, Student-03, Student-04, Student-05, Student-06, Student-06."
    )


@pytest.mark.parametrize(
    "nicknamed",
    [
        'Robert "Bob" Smith',
        "Robert 'Bob' Smith",
        "Robert \u201cBob\u201d Smith",
        "Robert \u2018Bob\u2019 Smith",
        "Robert \u201eBob\u201c Smith",
        "Robert (Bob) Smith",
    ],
    ids=["straight-double", "straight-single", "curly-double", "curly-single", "low-double", "parentheses"],
)
def test_a_nickname_in_quotes_or_parentheses_on_the_roster_is_hidden_on_its_own(nicknamed: str):
    """A roster's `Robert "Bob" Smith`: an essay's "Bob" alone reached the model, the quoted part being kept whole
    (`"Bob"`); an apostrophe inside a name (O'Brien) still joins its parts as before."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms([Student("s1", nicknamed), Student("s2", "Liam O'Brien")])
    hidden = cohort.hide(
        f"Bob and I met Robert. BOB's notes; {nicknamed} agreed, as did O'Brien, Brien and Liam. "
        "Bobby, a bobsleigh, Robertson and Smithy stay."
    )
    assert hidden == (
        "Student-01 and I met Student-01. Student-01's notes; Student-01 agreed, as did Student-02, Student-02 and "
        "Student-02. Bobby, a bobsleigh, Robertson and Smithy stay."
    )
    assert cohort.reveal("Student-01 wrote well.") == f"{nicknamed} wrote well."


@pytest.mark.parametrize(
    ("annotated", "essay", "hidden"),
    [
        (
            "Anna Berg (Exchange)",
            "Peer exchange of feedback; an Exchange student. Anna Berg and Berg agreed.",
            "Peer exchange of feedback; an Exchange student. Student-01 and Student-01 agreed.",
        ),
        (
            "Tom Reed (withdrawn)",
            "The army withdrawn from the field, said Tom.",
            "The army withdrawn from the field, said Student-01.",
        ),
        ("Jane Doe [TA]", "The TA said ta-da. Jane agreed.", "The TA said ta-da. Student-01 agreed."),
        (
            "Mark O'Neil (Audit)",
            "An audit of accounts; the Audit Commission. O'Neil and Neil.",
            "An audit of accounts; the Audit Commission. Student-01 and Student-01.",
        ),
        (
            "Sam Lee (Part-time, Year 2)",
            "Part-time work in year 2 took part of the time; Sam Lee did.",
            "Part-time work in year 2 took part of the time; Student-01 did.",
        ),
        (
            "Chris Wu (Visiting Student)",
            "A visiting student; Visiting hours. Wu wrote.",
            "A visiting student; Visiting hours. Student-01 wrote.",
        ),
        ("Eva Nowak (ERASMUS+)", "The Erasmus programme; Eva.", "The Erasmus programme; Student-01."),
        ("Ola Berg [[Withdrawn]]", "Withdrawn, then back: Ola.", "Withdrawn, then back: Student-01."),
    ],
    ids=["exchange", "withdrawn", "ta", "audit", "part-time-year", "visiting-student", "erasmus", "link-marks"],
)
def test_a_roster_annotation_in_brackets_leaves_the_word_in_essays_alone(annotated: str, essay: str, hidden: str):
    """A roster's `Anna Berg (Exchange)` or `Jane Doe [TA]`: every essay's "exchange" or "TA" reached the model as a
    student's label ("Peer Student-04 of feedback"), the annotation taken for a nickname. It names nobody: the
    name around it is hidden (whole, "Anna Berg"), and the annotation only as the roster writes it, brackets and
    all."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms([Student("s1", annotated)])
    assert cohort.hide(essay) == hidden
    assert re.fullmatch(r"(Student-01 )+wrote this\.", cohort.hide(f"{annotated} wrote this."))
    note = annotated[annotated.index(" ", annotated.index(" ") + 1) + 1 :]  # "(Exchange)", "[TA]"
    assert cohort.hide(f"Listed as {note}.") == "Listed as Student-01."
    assert cohort.reveal("Student-01 wrote well.") == f"{annotated} wrote well."


@pytest.mark.parametrize(
    ("nicknamed", "essay", "hidden"),
    [
        ("Wei (David) Zhang", "David and I; david's notes.", "Student-01 and I; Student-01's notes."),
        ('Robert "Bob" Smith (Exchange)', "Bob's exchange; bob.", "Student-01's exchange; Student-01."),
        ("Jane [[Okafor]] [TA]", "Okafor, the TA.", "Student-01, the TA."),
        ("Zhang Wei (张伟)", "张伟说。", "Student-01说。"),
        ("Minh (Ta) Nguyen", "Ta and ta.", "Student-01 and Student-01."),
        ("robert (bob) smith", "Bob said.", "Student-01 said."),
        ("ANNA (ANNIE) BERG (EXCHANGE)", "Annie's exchange.", "Student-01's exchange."),
        ("Li Na (Mary-Kate)", "Mary-Kate, Kate and Mary.", "Student-01, Student-01 and Student-01."),
        ("Jo Kim (David, exchange)", "David, an exchange.", "Student-01, an exchange."),
        ("Jo Kim (Z20231234)", "Number 20231234 and Z20231234.", "Number Student-01 and Student-01."),
        ("Jane Smith (née Jones)", "Jones and née.", "Student-01 and née."),
        ("Jane Smith (née Guest)", "A guest, Ms Guest.", "A Student-01, Ms Student-01."),
        ("Robert Smith (aka Bob)", "Bob, aka.", "Student-01, aka."),
    ],
    ids=["parentheses", "quotes", "link-marks", "han", "title-case-ta", "lower-case-roster", "capitals",
         "hyphenated", "nickname-and-note", "student-number", "former-name", "former-name-a-note-word", "aka"],
)  # fmt: skip
def test_a_nickname_in_brackets_is_still_hidden_beside_an_annotation(nicknamed: str, essay: str, hidden: str):
    """What a bracket holds that is written as a name (letters, capitalised as the roster's names are, or in a
    script without capitals; "Ta", a name, where "TA" is a note) is another name of the student, hidden wherever
    it stands, whatever its case; so is a student number in brackets."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    assert Pseudonyms([Student("s1", nicknamed)]).hide(essay) == hidden


@pytest.mark.parametrize(
    ("name", "essay", "hidden"),
    [
        (
            "محمد الأحمد",
            "كتب محمد الأحمد. ولمحمد رأي، وبمحمد وفمحمد.",
            "كتب Student-01. ولStudent-01 رأي، وبStudent-01 وفStudent-01.",
        ),
        (
            "דוד כהן",
            "דוד כהן כתב. ולדוד רעיון, מכהן ושדוד.",
            "Student-01 כתב. ולStudent-01 רעיון, מStudent-01 ושStudent-01.",
        ),
    ],
    ids=["arabic", "hebrew"],
)  # fmt: skip
def test_a_name_in_a_script_that_joins_and_for_and_from_to_the_next_word_is_hidden_after_them(
    name: str, essay: str, hidden: str
):
    """Arabic and Hebrew write "and", "for", "with", "from" as a letter joined to the word after it ("ولمحمد", "and
    for Muhammad"; "ולדוד", "and to David"): the name after them reached the model, the letter before it taken for
    part of a longer word."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms([Student("s1", name)])
    assert cohort.hide(essay) == hidden
    # A longer word that merely ends in the name is no name of the student's: two joined letters at most.
    assert cohort.hide(f"ووولل{name.split()[0]}") == f"ووولل{name.split()[0]}"


@pytest.mark.parametrize(
    ("name", "essay", "hidden"),
    [
        ("محمد الأحمد", "كتب محمّد ومُحَمَّد ومحـمد.", "كتب Student-01 وStudent-01 وStudent-01."),
        ("محمّد الأحمد", "كتب محمد ومحمّد.", "كتب Student-01 وStudent-01."),
        ("דוד כהן", "דָּוִד כֹּהֵן כתב.", "Student-01 כתב."),
    ],
    ids=["arabic-marks-in-the-essay", "arabic-marks-in-the-roster", "hebrew-points"],
)  # fmt: skip
def test_a_name_written_with_or_without_arabic_vowel_marks_or_hebrew_points_is_hidden(
    name: str, essay: str, hidden: str
):
    """An Arabic name with its shadda or vowels written ("محمّد", "مُحَمَّد"), or stretched with a tatweel ("محـمد"), or a
    Hebrew one with its points ("דָּוִד"), reached the model: the marks, no part of the roster's spelling, stood
    between its letters."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    assert Pseudonyms([Student("s1", name)]).hide(essay) == hidden


def test_an_arabic_family_name_with_the_article_after_for_is_hidden_and_quoted_back_as_written():
    """Arabic drops the article's alif after "for, to" (ل + الأحمد = للأحمد, "to al-Ahmad"): the family name so
    written reached the model. A quotation of it comes back as the student wrote it."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms([Student("s1", "محمد الأحمد")])
    essay = "شكرا للأحمد على المساعدة، وللأحمد رأي آخر. قالت المعلمة للطلاب."
    hidden = cohort.hidden(essay)
    assert hidden.text == "شكرا Student-01 على المساعدة، وStudent-01 رأي آخر. قالت المعلمة للطلاب."
    assert cohort.restore("شكرا Student-01 على المساعدة", hidden) == "شكرا للأحمد على المساعدة"


@pytest.mark.parametrize(
    ("name", "essay", "hidden"),
    [
        ("רון כהן", "אֲרוֹן הַבְּרִית. וְרוֹן כתב.", "אֲרוֹן הַבְּרִית. וְStudent-01 כתב."),
        ("רון כהן", "כתב ְרון.", "כתב ְStudent-01."),  # a stray mark, after no letter
        ("حمد العلي", "قال مُحَمَّد، وَحَمَد كتب، وَلِحمد رأي.", "قال مُحَمَّد، وَStudent-01 كتب، وَلِStudent-01 رأي."),
    ],
    ids=["hebrew-points", "stray-mark", "arabic-vowels"],
)  # fmt: skip
def test_a_name_is_not_found_inside_a_pointed_or_vowelled_word(name: str, essay: str, hidden: str):
    """A vowel mark or point follows a letter of its word: a name right after one starts inside a word ("אֲרוֹן", the
    ark, holds no Ron; "مُحَمَّد", Muhammad, no Hamad), and hiding it there garbled the quotation the model read. After
    the letters joined to the next word, marked or not ("וְ", "وَلِ"), it is the student's name."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    assert Pseudonyms([Student("s1", name)]).hide(essay) == hidden


def test_a_label_glued_to_the_word_before_it_comes_back_as_the_word_not_the_whole_name():
    """Hebrew joins "from" and "in" to the next word: "מבחן" (an exam) ends in the name חן and is hidden as such,
    since "ולטל" (and to Tal) must be. Where the model writes that word back outside a quotation, the label glued
    to its letters comes back as the name's part there ("מבחן"), not as the whole name ("מבחן כהן"); a label on
    its own still names the student."""
    from tierflow.vault.pseudonyms import Pseudonyms, Student

    cohort = Pseudonyms([Student("s1", "חן כהן")])
    hidden = cohort.hidden("מבחן קשה מאוד לכולם. חן כהן כתבה היטב.")
    assert hidden.text == "מבStudent-01 קשה מאוד לכולם. Student-01 כתבה היטב."
    answer = "ה-מבStudent-01 היה קשה, Student-01."
    assert cohort.restore_label(answer, hidden, "Student-01", "חן כהן") == "ה-מבחן היה קשה, חן כהן."
