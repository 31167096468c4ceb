"""The reading-notes flow respects the vault: it never reads its own output, and reads dates leniently."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from pathlib import Path

import frontmatter
import pytest
from conftest import anthropic_config, write_config
from responders import skilled

from tierflow.flows.reading_notes import reading_notes
from tierflow.offline import prompt_data
from tierflow.testing.double import ProviderDouble

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
