"""The offline model as a user meets it: a context window, so big weeks are synthesised in groups offline too, and
drafts that pass their own checks at the first attempt on ordinary notes. Flows under Prefect's test harness."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from tierflow.core.config import load_config
from tierflow.core.context import context_window
from tierflow.core.ledger import Ledger
from tierflow.core.routing import route
from tierflow.flows.reading_notes import reading_notes

pytestmark = pytest.mark.usefixtures("prefect_harness")

SINCE, UNTIL = date(2026, 11, 16), date(2026, 11, 22)


def test_a_reading_notes_run_offline_drafts_every_concept_at_the_first_attempt(reading_vault: Path):
    summary = reading_notes(vault=str(reading_vault), since=SINCE, until=UNTIL)
    assert summary.failed is None and summary.written
    rows = Ledger.for_vault(reading_vault).rows(run_id=summary.run_id)
    drafts = [r for r in rows if r["phase"] == "draft"]
    assert drafts and [(r["attempt"], r["outcome"], r["checks_failed"]) for r in drafts] == [(1, "ok", None)] * len(
        drafts
    )
    assert all(r["attempt"] == 1 and r["outcome"] == "ok" for r in rows)  # no phase pays for a retry offline


ORDINARY = """---
title: {title}
tags: [literature]
date: 2026-11-18
citekey: {key}
---
# {title}

> [!note] What I take from it
> {title} shows that peer review scales where tutor comments cannot, if students learn to give
> [[Feedback literacy|useful comments]].

> [!question]
> Does {title} say peer review helps the reviewer more than the reviewed?

## My notes

Students in {title} valued giving comments more than receiving them, which links to [[Sustainable feedback]].
"""


@pytest.fixture
def ordinary_vault(reading_vault: Path) -> Path:
    """The fixture vault whose week holds only ordinary notes: callouts and the reader's own notes, no highlights."""
    for note in (reading_vault / "Reading").iterdir():
        note.unlink()
    for key, title in (("topping2009", "Topping 2009"), ("nicol2014", "Nicol 2014"), ("liu2006", "Liu 2006")):
        (reading_vault / "Reading" / f"{title}.md").write_text(ORDINARY.format(key=key, title=title))
    return reading_vault


def test_ordinary_notes_without_highlights_are_drafted_offline_at_the_first_attempt(ordinary_vault: Path):
    summary = reading_notes(vault=str(ordinary_vault), since=SINCE, until=UNTIL)
    assert summary.failed is None and summary.written
    rows = Ledger.for_vault(ordinary_vault).rows(run_id=summary.run_id)
    drafts = [r for r in rows if r["phase"] == "draft"]
    assert drafts and {(r["attempt"], r["outcome"]) for r in drafts} == {(1, "ok")}
    written = (ordinary_vault / summary.written[0].path).read_text()
    assert "shows that peer review scales" in written  # the discussion carries the reader's callouts


def test_the_offline_model_has_a_context_window(tmp_path: Path):
    config = load_config(tmp_path)
    routed = route(config, phase="synthesise", complexity="high")
    assert routed.provider_kind == "offline" and context_window(config, routed) == 32_768


BIG = """---
title: Study {n}
tags: [literature]
date: 2026-11-{day}
citekey: study{n}
---
# Study {n}

## Annotations

{highlights}

Read for [[{concept}]].
"""
CONCEPTS = ("Portfolio practice", "Rubric design", "Exemplar use", "Peer dialogue", "Screencast comments", "Moderation")
SUFFIXES = ("ance", "ation", "ency", "ering", "ivity", "ment", "ness", "ology", "ship", "ure", "ism", "itude")


def big_week(vault: Path, notes: int) -> Path:
    """`notes` literature notes in the week, six long highlights each, in six concepts of `notes / 6` notes.

    Each note's words are its own (made from its number), so only its concept's link is shared: a concept's draft
    carries its few sources, while the week's synthesis carries them all.
    """
    for note in (vault / "Reading").iterdir():
        note.unlink()
    for n in range(notes):
        stem = "".join("abcdefghij"[int(d)] for d in f"{n:03d}")
        words = [f"{stem}{suffix}" for suffix in SUFFIXES]
        highlights = "\n\n".join(
            f"> ==Finding {k}: " + " ".join(words[k:] + words[:k]) * 3 + ".==" for k in range(6)
        )  # fmt: skip
        concept = CONCEPTS[n % len(CONCEPTS)]
        text = BIG.format(n=n, day=16 + n % 7, highlights=highlights, concept=concept)
        (vault / "Reading" / f"Study {n}.md").write_text(text)
    return vault


def test_a_week_too_big_for_the_offline_window_is_synthesised_in_groups_offline(reading_vault: Path):
    vault = big_week(reading_vault, 30)
    summary = reading_notes(vault=str(vault), since=SINCE, until=UNTIL)
    assert summary.failed is None and summary.halted is None and summary.written
    rows = Ledger.for_vault(vault).rows(run_id=summary.run_id)
    synthesis = [r for r in rows if r["phase"] == "synthesise"]
    assert len(synthesis) == 3 and all(r["outcome"] == "ok" for r in synthesis)  # two groups, then their merge
    assert all(r["input_tokens"] + 4096 <= 32_768 for r in synthesis)
    drafts = [r for r in rows if r["phase"] == "draft"]
    assert drafts and {(r["attempt"], r["outcome"]) for r in drafts} == {(1, "ok")}


def test_the_plan_sizes_each_draft_by_the_sources_it_carries_not_the_whole_week(reading_vault: Path):
    from tierflow.flows.plans import plan_reading_notes

    vault = big_week(reading_vault, 60)
    plan = plan_reading_notes(load_config(vault), vault, since=SINCE, until=UNTIL)
    planned = [row for (phase, _, _), row in zip(plan.prompts, plan.rows, strict=True) if phase == "draft"]
    assert planned and [p for p, _, _ in plan.too_long if p == "draft"] == []  # no false "does not fit"
    summary = reading_notes(vault=str(vault), since=SINCE, until=UNTIL)
    actual = [r["input_tokens"] for r in Ledger.for_vault(vault).rows(run_id=summary.run_id) if r["phase"] == "draft"]
    assert actual and summary.failed is None
    estimate = max(row["input_tokens"] for row in planned)
    assert max(actual) <= estimate <= 4 * max(actual), (estimate, actual)
