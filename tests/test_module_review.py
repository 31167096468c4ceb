"""The module-review flow, end to end on its fixture: on the offline model, and on the wire double (real SDK)."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import frontmatter
import pytest
from conftest import FIXTURES, anthropic_config, write_config
from responders import schema_name, skilled

from tierflow.core.config import load_config
from tierflow.core.ledger import Ledger
from tierflow.flows.module_review import module_review
from tierflow.flows.plans import plan_module_review
from tierflow.testing.double import ProviderDouble
from tierflow.vault.links import VaultNames, wikilink_targets

pytestmark = pytest.mark.usefixtures("prefect_harness")

MODULE = "Teaching/EDU7001"
PROPOSAL = f"{MODULE}/Review/EDU7001 revision proposal.md"
SECTIONS = (
    "What worked",
    "Recurring misconceptions",
    "Suggested changes to readings",
    "Suggested changes to assessment",
    "Suggested changes to teaching activities",
)
UNITS = 5
"""Three weeks, one assignment, the student evaluations."""


@pytest.fixture
def module_vault(tmp_path: Path) -> Path:
    target = tmp_path / "module-vault"
    shutil.copytree(FIXTURES / "module-review", target)
    return target


def fingerprints(vault: Path) -> dict[str, str]:
    return {
        p.relative_to(vault).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(vault.rglob("*.md"))
        if ".tierflow" not in p.parts
    }


def claims_by_section(text: str) -> dict[str, list[str]]:
    sections = {}
    for chunk in text.split("\n## ")[1:]:
        heading, _, body = chunk.partition("\n")
        sections[heading.strip()] = [line for line in body.splitlines() if line.startswith("- ")]
    return sections


def assert_every_claim_links_existing_evidence(vault: Path, proposal: Path) -> int:
    """Each claim has at least one wikilink, and each resolves to exactly one existing note of the module folder
    that is not the proposal itself. Returns how many claims there are."""
    names = VaultNames.scan(vault)
    sections = claims_by_section(proposal.read_text(encoding="utf-8"))
    assert set(SECTIONS) <= set(sections)
    count = 0
    for heading in SECTIONS:
        for line in sections[heading]:
            if line.startswith("- Nothing in this semester's notes"):
                continue
            links = wikilink_targets(line)
            assert links, f"{heading}: a claim without evidence: {line}"
            for target in links:
                found = names.resolve(target)
                assert len(found) == 1, f"[[{target}]] resolves to {found}"
                assert found[0].startswith(f"{MODULE}/") and "/Review/" not in found[0]
                assert (vault / found[0]).is_file()
            count += 1
    return count


def test_offline_run_drafts_a_proposal_whose_every_claim_links_its_evidence(module_vault: Path) -> None:
    before = fingerprints(module_vault)
    summary = module_review(vault=str(module_vault))
    assert not summary.failed and not summary.halted

    proposal = module_vault / PROPOSAL
    post = frontmatter.load(proposal)
    assert post.metadata["status"] == "draft" and post.metadata["descriptor"] == "[[Module descriptor]]"
    assert assert_every_claim_links_existing_evidence(module_vault, proposal) >= 10
    sections = claims_by_section(post.content)
    assert any("[[Module evaluation 2026]]" in c for c in sections["Suggested changes to readings"])
    assert any("[[Cohort summary]]" in c for c in sections["Recurring misconceptions"])
    assert any("[[Rubric use (week 3)]]" in c for c in sections["Suggested changes to assessment"])
    # Evidence from more than one note of the semester merges into one claim.
    assert any(len(wikilink_targets(c)) > 1 for s in sections.values() for c in s)
    assert "offline extractive model" in post.content

    after = fingerprints(module_vault)
    assert {p: h for p, h in after.items() if p in before} == before, "a note a person wrote was changed"
    assert set(after) - set(before) == {PROPOSAL, summary.report.path, *_day_index(after)}

    rows = Ledger.for_vault(module_vault).rows(run_id=summary.run_id)
    assert sorted((r["phase"], r["tier"]) for r in rows) == sorted(
        [("collate", "light")] * UNITS + [("synthesise", "deep"), ("draft", "standard")]
    )
    assert {r["subject"] for r in rows if r["phase"] == "collate"} == {
        "week of 2026-10-05",
        "week of 2026-10-12",
        "week of 2026-10-19",
        "assignment Teaching/EDU7001/Assignments/essay-1",
        "student evaluations",
    }
    # The proposal carries the whole run's tokens: its collations, synthesis and draft (offline: no cache, no
    # reasoning tokens).
    assert post.metadata["tierflow_tokens"] == sum(r["input_tokens"] + r["output_tokens"] for r in rows)

    # A second run over the same semester pays for nothing and leaves the proposal as it is.
    again = module_review(vault=str(module_vault))
    assert [w.action for w in again.written] == ["unchanged"]
    assert all(r["cached_result"] for r in Ledger.for_vault(module_vault).rows(run_id=again.run_id))


def _day_index(paths: dict[str, str]) -> list[str]:
    return [p for p in paths if p.endswith(" tierflow runs.md")]


def test_a_note_a_person_wrote_at_the_proposals_name_is_kept(module_vault: Path) -> None:
    mine = module_vault / PROPOSAL
    mine.parent.mkdir(parents=True)
    mine.write_text("# My own notes for next year\n\nKeep the role-play.\n", encoding="utf-8")
    summary = module_review(vault=str(module_vault), module=MODULE)
    assert mine.read_text(encoding="utf-8") == "# My own notes for next year\n\nKeep the role-play.\n"
    (written,) = summary.written
    assert written.action == "kept-user-edit" and written.path != PROPOSAL
    assert written.path.startswith(f"{MODULE}/Review/EDU7001 revision proposal (tierflow ")
    assert_every_claim_links_existing_evidence(module_vault, module_vault / written.path)


def test_a_module_folder_without_its_descriptor_is_refused_before_any_call(module_vault: Path) -> None:
    from tierflow.core.errors import VaultError

    (module_vault / MODULE / "Module descriptor.md").unlink()
    with pytest.raises(VaultError, match="exactly one module descriptor"):
        module_review(vault=str(module_vault))
    assert Ledger.for_vault(module_vault).rows() == []


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


PLAN_WINDOW = 4096 + 3500
"""A deep window whose 3,500 tokens of prompt (beyond the 4,096-token answer allowance) hold two parts' synthesis
prompts at their worst case (each collation at the light tier's full 1,024-token output), not three."""
RUN_WINDOW = 4096 + 1690
"""A deep window whose 1,690 tokens of prompt do not hold the semester's one synthesis prompt (about 1,760
tokens as the call path counts them for Claude, on the offline skills' answers), but do hold each of two groups
(about 1,100 and 1,190) and the merge of their results (about 1,580)."""


def configure(vault: Path, double: ProviderDouble, extra: str = "") -> None:
    existing = (vault / ".tierflow" / "config.toml").read_text()
    write_config(vault / ".tierflow" / "config.toml", anthropic_config(double, extra) + existing)


def test_on_the_double_the_semester_is_synthesised_in_groups_and_a_bad_citation_is_caught(
    module_vault: Path, double: ProviderDouble, keys: None
) -> None:
    original = (module_vault / ".tierflow" / "config.toml").read_text()
    configure(module_vault, double, f"context_window = {PLAN_WINDOW}")
    plan = plan_module_review(load_config(module_vault), module_vault)
    planned = [subject for phase, subject, _ in plan.prompts if phase == "synthesise"]
    assert planned == ["group 1/3", "group 2/3", "group 3/3", "semester"]
    assert [subject for phase, subject, _ in plan.prompts if phase == "collate"] == [
        "week of 2026-10-05", "week of 2026-10-12", "week of 2026-10-19",
        "assignment Teaching/EDU7001/Assignments/essay-1", "student evaluations",
    ]  # fmt: skip

    (module_vault / ".tierflow" / "config.toml").write_text(original)
    configure(module_vault, double, f"context_window = {RUN_WINDOW}")

    first = {"n": 0}
    skills = skilled()

    def proposal(request):  # the first proposal cites a note that does not exist; the retry is told so
        first["n"] += 1
        reply = skills(request)
        if first["n"] == 1:
            reply.data["what_worked"].append({"claim": "Everything went well.", "evidence": ["Invented note"]})
        return reply

    double.responder = skilled({"moduleproposal": proposal})
    summary = module_review(vault=str(module_vault))
    assert not summary.failed and not summary.halted

    calls = double.model_calls()
    synth = [c for c in calls if schema_name(c) == "semesterfindings"]
    assert len(synth) >= 3, "the semester should not fit one synthesis prompt"
    assert {c.json["model"] for c in synth} == {"claude-opus-4-6"}
    rows = Ledger.for_vault(module_vault).rows(run_id=summary.run_id)
    assert len(rows) == len(calls), "one ledger row per call"
    subjects = [r["subject"] for r in rows if r["phase"] == "synthesise"]
    assert subjects[-1] == "merge of 2 results" and all(s.startswith("group: week of") for s in subjects[:-1])
    drafts = [r for r in rows if r["phase"] == "draft"]
    assert [r["outcome"] for r in drafts] == ["check_failed", "ok"]
    assert "links_resolve" in drafts[0]["checks_failed"] and "evidence_cited" in drafts[0]["checks_failed"]
    retry = [c for c in calls if schema_name(c) == "moduleproposal"][1]
    assert "Invented note" in retry.last_user_text

    proposal_note = module_vault / PROPOSAL
    assert "Invented note" not in proposal_note.read_text(encoding="utf-8")
    assert assert_every_claim_links_existing_evidence(module_vault, proposal_note) >= 10
    report = (module_vault / summary.report.path).read_text(encoding="utf-8")
    assert re.search(r"\| synthesise \| deep \| .*claude-opus-4-6", report)


def test_tierflow_plan_and_run_module_review_keyless_from_the_command_line(module_vault: Path) -> None:
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    runner = CliRunner()
    planned = runner.invoke(app, ["plan", "module-review", "--vault", str(module_vault)], env={"COLUMNS": "300"})
    assert planned.exit_code == 0, planned.output
    assert re.search(r"collate .* light .* 5 ", planned.output) and "synthesise" in planned.output
    assert "Nothing was sent to a model." in planned.output

    (module_vault / ".tierflow" / "config.toml").write_text("# no [module] folder: --module says\n")
    missing = runner.invoke(app, ["run", "module-review", "--vault", str(module_vault)])
    assert missing.exit_code == 2 and "--module" in missing.output
    # An absolute path inside the vault, as a shell's completion gives it: taken relative to the vault.
    ran = runner.invoke(
        app, ["run", "module-review", "--vault", str(module_vault), "--module", str(module_vault / MODULE)]
    )
    assert ran.exit_code == 0, ran.output
    assert_every_claim_links_existing_evidence(module_vault, module_vault / PROPOSAL)


@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_module_folder_not_in_the_vault_is_refused_at_once_naming_the_folders_beside_it(
    module_vault: Path, command: str
) -> None:
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    missing = "Teaching/EDU7099"
    args = [command, "module-review", "--vault", str(module_vault), "--module", missing]
    refused = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert refused.exit_code == 2, refused.output
    assert "starting run" not in refused.output  # refused before any run (or Prefect server) started
    said = " ".join(refused.output.split())
    vault = module_vault.resolve()
    assert f"'{missing}' is not a folder of the vault {vault} (looked for {vault / missing})" in said
    assert "Teaching holds: EDU7001." in said  # the folder beside it, which was meant
    assert "Give a module folder that is there with --module FOLDER" in said
    assert Ledger.for_vault(module_vault).rows() == []


def test_a_module_with_nothing_to_review_says_so_and_lists_what_it_left_out(module_vault: Path) -> None:
    for folder in ("Runs", "Concepts", "Assignments", "Evaluations"):
        shutil.rmtree(module_vault / MODULE / folder)
    (module_vault / MODULE / "Ideas.md").write_text("# Ideas for next year\n\nMore seminars.\n", encoding="utf-8")
    summary = module_review(vault=str(module_vault))
    assert "nothing to review in Teaching/EDU7001" in summary.message
    assert (f"{MODULE}/Ideas.md", "not a run report, concept draft, cohort summary, evaluation or descriptor") in (
        summary.skipped
    )
    assert Ledger.for_vault(module_vault).rows(run_id=summary.run_id) == [] and summary.written == []
    assert not (module_vault / PROPOSAL).exists()


def test_a_concept_note_whose_front_matter_is_never_closed_is_read_as_obsidian_shows_it(module_vault: Path) -> None:
    """Obsidian reads a `---` with no `---` line closing it as a rule and the note as text, properties none: so does
    the review (it called the note malformed and skipped it). A closed block whose YAML breaks is skipped with its
    line and the fix."""
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    concepts = module_vault / MODULE / "Concepts"
    unclosed = "---\ntitle: Feedback timing\ntierflow_run: r-1\ntags: [concept]\n## Summary\n\nEarly is better.\n"
    (concepts / "Feedback timing.md").write_text(unclosed, encoding="utf-8")
    (concepts / "Aside.md").write_text("---\nNote: a thought, after a rule.\n", encoding="utf-8")
    broken = "---\ntitle: Peer review\ntags: [concept\n---\n## Summary\n\nPeers help.\n"
    (concepts / "Peer review.md").write_text(broken, encoding="utf-8")
    planned = CliRunner().invoke(app, ["plan", "module-review", "--vault", str(module_vault)], env={"COLUMNS": "300"})
    assert planned.exit_code == 0, planned.output
    said = " ".join(planned.output.split())
    assert f"skipped {MODULE}/Concepts/Feedback timing.md: not a run report" in said  # no properties: no draft
    assert f"skipped {MODULE}/Concepts/Aside.md: not a run report" in said
    assert "malformed YAML front-matter: the `---`" not in said
    assert f"skipped {MODULE}/Concepts/Peer review.md: malformed YAML front-matter: " in said
    assert "started at line 3, column 7); correct the YAML between the two `---` lines" in said


def test_a_week_folder_tierflow_may_not_read_is_named_with_the_fix_not_left_out_silently(
    module_vault: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A week's folder the lecturer cannot read (chmod 000, another user's share) was walked past in silence: its
    notes were missing from the review and nothing said so. (The suite may run as root, who reads any folder: the
    operating system's refusal is given by `os.scandir`, as it is for anyone else.)"""
    import os

    locked = module_vault / MODULE / "Week 7"
    locked.mkdir()
    (locked / "Peer review (week 7).md").write_text("---\ntierflow_run: r-7\n---\n\n## Summary\n\nX.\n")
    scandir = os.scandir

    def refusing(path):  # noqa: ANN001, ANN202
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    plan = plan_module_review(load_config(module_vault), module_vault)
    reasons = dict(plan.skipped)
    assert f"{MODULE}/Week 7/" in reasons, plan.skipped
    assert "Permission denied" in reasons[f"{MODULE}/Week 7/"] and "read access" in reasons[f"{MODULE}/Week 7/"]

    from tierflow.core.errors import VaultError

    locked = module_vault / MODULE  # the whole module folder: refused, naming it, the cause and the fix
    with pytest.raises(VaultError, match=r"Teaching/EDU7001.*Permission denied.*read access"):
        plan_module_review(load_config(module_vault), module_vault)


@pytest.mark.parametrize(
    ("zone", "week"),
    [("UTC", "week of 2024-03-04"), ("America/New_York", "week of 2024-02-26")],
    ids=["utc", "new-york"],
)
@pytest.mark.parametrize("written", ["2024-03-03T23:30:00-05:00", "'2024-03-03T23:30:00-05:00'"], ids=["yaml", "text"])
def test_a_concept_drafts_created_time_with_an_offset_falls_in_the_week_of_its_day_in_the_vaults_zone(
    module_vault: Path, zone: str, week: str, written: str
) -> None:
    """`created` with a time and an offset is placed in `[vault] timezone`, as a note's `date` and a file's time are:
    23:30 at -05:00 on Sunday 3 March is Monday 4 March in UTC (the week of 4 March), still 3 March in New York. The
    review took the day as typed, 3 March, in every zone."""
    from tierflow.flows.plans import plan_settings
    from tierflow.tasks import module as review

    config_file = module_vault / ".tierflow" / "config.toml"
    config_file.write_text(config_file.read_text() + f'\n[vault]\ntimezone = "{zone}"\n', encoding="utf-8")
    draft = "---\ntitle: Late feedback\ntags: [concept]\ncreated: " + written + "\n---\n\n## Summary\n\nLate.\n"
    (module_vault / MODULE / "Concepts" / "Late feedback.md").write_text(draft, encoding="utf-8")
    settings = plan_settings(load_config(module_vault), module_vault, "module-review", None)
    work = review.load_module.fn(settings, MODULE)
    (unit,) = [u for u in work.units if any(e.title == "Late feedback" for e in u.notes)]
    assert unit.label == week
