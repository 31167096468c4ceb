"""Tests for tierflow.vault.annotations: the three note layouts, callouts, CRLF, garbage input, locate()."""

from __future__ import annotations

import random

import pytest

from tierflow.vault.annotations import Annotation, detect_source_format, locate, parse_annotations

ZOTERO = """\
# The Power of Feedback

Hattie, J., & Timperley, H. (2007). The power of feedback. *Review of Educational Research, 77*(1), 81–112.

## Annotations

> <mark class="hltr-yellow">"Feedback is one of the most powerful influences on learning and achievement"</mark> ([Hattie & Timperley, 2007, p. 81](zotero://open-pdf/library/items/HT7K2Q9M?page=81&annotation=XYZ98765)) ^h1a2b3

Comment: This is the claim everyone cites; check effect size source.

> <mark class="hltr-red">"the impact can be either positive or negative"</mark> ([Hattie & Timperley, 2007, pp. 81–82](zotero://open-pdf/library/items/HT7K2Q9M?page=81&annotation=QQ11))
> Comment: Links to [[Kluger1996]] on negative effects.

> "feedback can be accepted, modified, or rejected" (p. 82)

> — i.e. the effect depends on the receiver.

> <mark class="hltr-green">Feedback operates at four levels.</mark> ([Hattie](zotero://open-pdf/library/items/HT7K2Q9M?page=90&annotation=P0O9))

^h7e8f9
"""  # noqa: E501

ZOTERO_LINK = "zotero://open-pdf/library/items/HT7K2Q9M?page="


def test_zotero_integration_note() -> None:
    anns = parse_annotations(ZOTERO)
    assert detect_source_format(ZOTERO) == "zotero"
    assert anns == [
        Annotation(
            kind="highlight",
            text="Feedback is one of the most powerful influences on learning and achievement",
            comment="This is the claim everyone cites; check effect size source.",
            page="81",
            block_id="h1a2b3",
            link=ZOTERO_LINK + "81&annotation=XYZ98765",
            color="yellow",
            source_format="zotero",
            line=7,
        ),
        Annotation(
            kind="comment",
            text="This is the claim everyone cites; check effect size source.",
            page="81",
            link=ZOTERO_LINK + "81&annotation=XYZ98765",
            source_format="zotero",
            line=9,
        ),
        Annotation(
            kind="highlight",
            text="the impact can be either positive or negative",
            comment="Links to [[Kluger1996]] on negative effects.",
            page="81-82",
            link=ZOTERO_LINK + "81&annotation=QQ11",
            color="red",
            source_format="zotero",
            line=11,
        ),
        Annotation(
            kind="comment",
            text="Links to [[Kluger1996]] on negative effects.",
            page="81-82",
            link=ZOTERO_LINK + "81&annotation=QQ11",
            source_format="zotero",
            line=12,
        ),
        Annotation(
            kind="quote",
            text="feedback can be accepted, modified, or rejected",
            comment="i.e. the effect depends on the receiver.",
            page="82",
            source_format="zotero",
            line=14,
        ),
        Annotation(
            kind="comment",
            text="i.e. the effect depends on the receiver.",
            page="82",
            source_format="zotero",
            line=16,
        ),
        Annotation(
            kind="highlight",
            text="Feedback operates at four levels.",
            page="90",  # no page in the label: from the link's page= parameter
            block_id="h7e8f9",  # from the `^id` line after the quote
            link=ZOTERO_LINK + "90&annotation=P0O9",
            color="green",
            source_format="zotero",
            line=18,
        ),
    ]


def test_zotero_variants() -> None:
    body = (
        "> [!quote|yellow] Highlight\n"
        '> "Standards are best conveyed through exemplars."\n'
        "> ([Sadler, 1989, p. 128](zotero://open-pdf/library/items/SD89?page=128&annotation=V5))\n"
        "\n"
        '- "the transition from feedback to self-monitoring" ([p. 122](zotero://open-pdf/library/items/SD89?page=122))\n'
        "    - Comment: End state.\n"
        "\n"
        '<mark class="hltr-blue">A paragraph highlight</mark> '
        "[Page 3](zotero://open-pdf/library/items/SD89?page=3) ^p3\n"
    )
    anns = [a for a in parse_annotations(body) if a.kind != "comment"]
    assert [(a.kind, a.text, a.page, a.color, a.block_id) for a in anns] == [
        ("quote", "Standards are best conveyed through exemplars.", "128", "yellow", None),
        ("quote", "the transition from feedback to self-monitoring", "122", None, None),
        ("highlight", "A paragraph highlight", "3", "blue", "p3"),
    ]
    assert anns[1].comment == "End state."
    assert all(a.source_format == "zotero" and a.link and a.link.startswith("zotero://") for a in anns)


def test_zotero_comment_forms() -> None:
    body = (
        '> "feedback is information provided by an agent" (Hattie & Timperley, 2007, p. 86)\n'
        "> — key definition\n"
        "\n"
        '> <mark class="hltr-yellow">Second</mark> ([p. 90](zotero://open-pdf/library/items/A?page=90))\n'
        "> **Comment:** first line\n"
        "> second line\n"
        "> ^blk2\n"
    )
    assert [(a.kind, a.text, a.comment, a.page, a.block_id, a.line) for a in parse_annotations(body)] == [
        ("quote", "feedback is information provided by an agent", "key definition", "86", None, 1),
        ("comment", "key definition", None, "86", None, 2),
        ("highlight", "Second", "first line\nsecond line", "90", "blk2", 4),
        ("comment", "first line\nsecond line", None, "90", None, 5),
    ]


READWISE = """\
# Make It Stick

![rw-book-cover](https://readwise-assets.s3.amazonaws.com/static/images/article1.png)

## Metadata
- Author: [[Peter C. Brown]]
- Full Title: Make It Stick
- Category: #books

## Highlights
- Retrieval practice is a more effective learning strategy than rereading. ([View Highlight](https://read.readwise.io/read/01h8abc))
    - Note: Use this for the flashcard flow.
    - Tags: [[retrieval]] [[learning]]
- Interleaving feels slower but sticks. (Location 1234)
- Spaced practice beats massed practice. ([Page 12](https://readwise.io/to_kindle?action=open&asin=B00&location=1234))
    - Tags: [[spacing]]
- A two-paragraph highlight, first part. ^rw1
"""  # noqa: E501


def test_readwise_note() -> None:
    anns = parse_annotations(READWISE)
    assert detect_source_format(READWISE) == "readwise"
    assert anns == [
        Annotation(
            kind="highlight",
            text="Retrieval practice is a more effective learning strategy than rereading.",
            comment="Use this for the flashcard flow.",
            link="https://read.readwise.io/read/01h8abc",
            source_format="readwise",
            line=11,
        ),
        Annotation(
            kind="comment",
            text="Use this for the flashcard flow.",
            link="https://read.readwise.io/read/01h8abc",
            source_format="readwise",
            line=12,
        ),
        Annotation(
            kind="highlight",
            text="Interleaving feels slower but sticks.",
            page="loc. 1234",
            source_format="readwise",
            line=14,
        ),
        Annotation(
            kind="highlight",
            text="Spaced practice beats massed practice.",
            page="12",
            link="https://readwise.io/to_kindle?action=open&asin=B00&location=1234",
            source_format="readwise",
            line=15,
        ),
        Annotation(
            kind="highlight",
            text="A two-paragraph highlight, first part.",
            block_id="rw1",
            source_format="readwise",
            line=17,
        ),
    ]


OBSIDIAN = """\
# Assessment and Classroom Learning

## Metadata
- ==not an annotation== in metadata

## Reading

The headline is that ==formative assessment produces significant learning gains== overall.
Inline code `==not a highlight==` is left alone.

> [!quote] p. 17
> Self-assessment by pupils is not an interesting option or luxury;
> it is an essential part of [[formative assessment]].

> [!note]
> This is where [[Self-regulated learning]] comes in. ^n1

> [!quote] pp. 23–24
> The giving of marks is overemphasised. ^q2

> [!info] Info
> **Title**: metadata callouts are not annotations

> [!quote] p.
>

> A plain quote.

## My notes

- Formative vs summative is about *function*.
    - Not the instrument.
- Feedback to the teacher matters. ^b2

A paragraph of my own, with a ==key phrase==.

**My own notes:**

- Listed under a pseudo-heading.
"""


def test_obsidian_note() -> None:
    anns = parse_annotations(OBSIDIAN)
    assert detect_source_format(OBSIDIAN) == "obsidian"
    got = [(a.kind, a.text, a.page, a.block_id, a.line) for a in anns]
    assert got == [
        ("highlight", "formative assessment produces significant learning gains", None, None, 8),
        (
            "quote",
            "Self-assessment by pupils is not an interesting option or luxury;\n"
            "it is an essential part of [[formative assessment]].",
            "17",
            None,
            11,
        ),
        ("note", "This is where [[Self-regulated learning]] comes in.", None, "n1", 15),
        ("quote", "The giving of marks is overemphasised.", "23-24", "q2", 18),
        ("quote", "A plain quote.", None, None, 27),
        ("note", "Formative vs summative is about *function*.\nNot the instrument.", None, None, 31),
        ("note", "Feedback to the teacher matters.", None, "b2", 33),
        ("note", "A paragraph of my own, with a key phrase.", None, None, 35),
        ("highlight", "key phrase", None, None, 35),
        ("note", "Listed under a pseudo-heading.", None, None, 39),
    ]
    assert {a.source_format for a in anns} == {"obsidian"}


def test_nested_quotes_and_wikilinks() -> None:
    body = (
        "> Outer quote citing [[Sadler1989|Sadler]] and [[Black1998]].\n"
        "> > Inner quote with ==a mark== inside.\n"
        "> > > Innermost.\n"
    )
    anns = parse_annotations(body)
    assert [(a.kind, a.text, a.line) for a in anns] == [
        ("quote", "Outer quote citing [[Sadler1989|Sadler]] and [[Black1998]].", 1),
        ("quote", "Inner quote with a mark inside.", 2),
        ("highlight", "a mark", 2),
        ("quote", "Innermost.", 3),
    ]


@pytest.mark.parametrize("body", [ZOTERO, READWISE, OBSIDIAN])
def test_crlf_and_trailing_whitespace_parse_the_same(body: str) -> None:
    crlf = "\r\n".join(line + "   " for line in body.split("\n"))
    assert parse_annotations(crlf) == parse_annotations(body)


@pytest.mark.parametrize("body", [ZOTERO, READWISE, OBSIDIAN])
def test_source_text_is_located_verbatim(body: str) -> None:
    for ann in parse_annotations(body):
        if ann.kind in ("highlight", "quote"):
            assert locate(ann.text, body), ann


NASTY = [
    "",
    "\x00\x00",
    "> " * 500 + "deep",
    "- " * 500 + "deep",
    "[!quote]",
    "> [!quote]",
    "> [!]",
    "> [!quote] p. 12",
    "==" * 300,
    "==a" * 300,
    "<mark>" * 200 + "x",
    '<mark class="hltr-">"',
    "(" * 500 + "p. 1" + ")" * 3,
    "[" * 300 + "](zotero://" + ")" * 300,
    "^",
    "> x\n^",
    "Comment:",
    "> x\n\nComment:\n\n^a\n\n^b",
    "## Highlights\n- ([View Highlight](x))\n    - Note:\n    - Tags:",
    "- \n    - Note: orphan",
    "\ud800 lone surrogate ==\udfff==",
    "```\n==in code==\n",
    "\r\r\n\r> \r",
    "# \n## \n### Notes\n- ",
]

ALPHABET = list("abc xyz019 \n\n\r\t>>--==*_`#[]()!^|:\"'“”.,") + [
    "<mark>",
    "</mark>",
    '<mark class="hltr-red">',
    "[[",
    "]]",
    "[!quote]",
    "[!note]",
    "p. 12",
    "(p. 3)",
    "([View Highlight](https://read.readwise.io/read/x))",
    "(zotero://open-pdf/library/items/A?page=1)",
    "## Highlights\n",
    "## My notes\n",
    "## Metadata\n",
    "Comment: ",
    "- Note: ",
    "    ",
    " ^b1",
    "\x00",
    "é",
    "😀",
]


def test_garbage_never_raises() -> None:
    rng = random.Random(0)
    samples = list(NASTY)
    for _ in range(400):
        samples.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 120))))
    for _ in range(50):
        samples.append("".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 300))))
    for sample in samples:
        anns = parse_annotations(sample)
        assert all(isinstance(a, Annotation) and a.text for a in anns), repr(sample)
        locate(sample[:20], sample)


def test_locate_is_lenient_about_markup_and_line_breaks() -> None:
    body = (
        '> <mark class="hltr-yellow">"Feedback is one of the most\n'
        "> powerful influences on learning”</mark> (p. 81)\n"
        "\n"
        "They found that ==feedback given as marks\n"
        "tends to draw attention== to ranking, and “it’s” common.\r\n"
    )
    assert locate("Feedback is one of the most powerful influences on learning", body)
    assert locate('"Feedback is one of the most powerful influences on learning"', body)
    assert locate("“Feedback is one of the most powerful influences on learning”", body)
    assert locate("feedback given as marks tends to draw attention to ranking", body)
    assert locate("feedback given as marks\n\n   tends to draw attention", body)
    assert locate('"it\'s" common.', body)


def test_locate_is_strict_about_words() -> None:
    body = "Feedback is one of the most powerful influences on learning and achievement."
    assert not locate("Feedback is one of the most powerful influence on learning", body)  # changed word
    assert not locate("feedback is one of the most powerful", body)  # case
    assert not locate("Feedback is one of the very most powerful", body)  # inserted word
    assert not locate("Feedback is one of the most powerful influences on learning, and", body)  # punctuation
    assert not locate("eedback is one", body)  # starts mid-word
    assert not locate("on learning and achieve", body)  # ends mid-word
    assert not locate("", body)
    assert not locate("   ", body)
    assert locate("on learning and achievement.", body)


def test_locate_finds_quotes_in_scripts_written_without_spaces() -> None:
    assert locate("你的账户还没有达到存储限制", "这意味着==你的账户还没有达到存储限制==。")
    assert locate("フィードバックは学習に", "研究によると、フィードバックは学習に最も強い影響を与える。")
    assert locate("การให้ข้อมูลย้อนกลับ", "ครูควรเน้นการให้ข้อมูลย้อนกลับที่ชัดเจน")  # Thai
    assert locate("ຄູສອນ", "ນັກຮຽນແລະຄູສອນທຸກຄົນ")  # Lao
    assert locate("ការសិក្សា", "និស្សិតចូលចិត្តការសិក្សានេះ")  # Khmer
    assert locate("ကျောင်းသား", "ဆရာနှင့်ကျောင်းသားများ")  # Myanmar
    assert locate("Python", "我们用Python写程序")  # a spaced-script word beside Han letters
    assert not locate("你的账户还没有达到存储上限", "这意味着你的账户还没有达到存储限制。")  # a changed character


def test_locate_keeps_word_boundaries_in_scripts_with_spaces() -> None:
    assert not locate("cat", "Please concatenate the strings.")
    assert not locate("cat", "The category was wrong.")
    assert locate("cat", "The cat sat.")
    assert not locate("связь", "Обратнаясвязь важна")  # Cyrillic keeps its boundaries
    assert not locate("التغذية", "والتغذية الراجعة")  # so does Arabic
