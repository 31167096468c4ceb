"""Tier trials on the wire double: replayed requests, a judge that cannot be won over by position, a vault left
alone outside tierflow/Trials/, and a budget the trial never spends past."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import READING_WEEK, anthropic_config, write_config
from pydantic import BaseModel
from responders import schema_name
from typer.testing import CliRunner

from tierflow.cli.app import app
from tierflow.core.calls import Caller, RunSettings
from tierflow.core.ledger import Ledger, signals
from tierflow.offline import prompt_data
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply

FLOW, PHASE = "essays", "draft"
MODELS = {"light": "claude-haiku-4-5", "standard": "claude-sonnet-4-6", "deep": "claude-opus-4-6"}


class Essay(BaseModel):
    title: str
    body: str


def answer_by_model(request: DoubleRequest) -> Reply:
    """Each tier answers in its own words, so a judge that reads the answers can tell them apart."""
    return Reply(data={"title": "Feedback", "body": f"An essay written by {request.model}."})


def judging(prefer: str):
    """A responder whose judge prefers `first` (position bias), or the answer written by model `prefer`."""

    def responder(request: DoubleRequest) -> Reply:
        if schema_name(request) != "judgeout":
            return answer_by_model(request)
        if prefer == "first":
            return Reply(data={"better": "A", "reason": "the first answer is better"})
        data = prompt_data(request.last_user_text)
        better = "A" if prefer in data["answer_a"] else "B" if prefer in data["answer_b"] else "tie"
        return Reply(data={"better": better, "reason": f"prefers {prefer}"})

    return responder


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, double: ProviderDouble) -> Path:
    """A vault whose ledger holds 12 passed `essays draft` answers (one after a retry), on the standard tier."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-anthropic-key")
    vault = tmp_path / "vault"
    (vault / "Reading").mkdir(parents=True)
    (vault / "Reading" / "Sadler 1989.md").write_text("---\ntags: [literature]\n---\nFeedback closes a gap.\n")
    (vault / "Concepts").mkdir()
    (vault / "Concepts" / "Feedback.md").write_text("My own note on feedback.\n")
    config = write_config(vault / ".tierflow" / "config.toml", anthropic_config(double))
    failed_once: list[str] = []

    def first_answer_to_part_0_fails(request: DoubleRequest) -> Reply:
        if "part 0" in request.last_user_text and not failed_once:
            failed_once.append(request.last_user_text)
            return Reply(data={"title": "no body"})
        return answer_by_model(request)

    double.responder = first_answer_to_part_0_fails
    caller = Caller(RunSettings(vault=str(vault), config_path=str(config), run_id="history", flow=FLOW))
    for i in range(12):
        caller.ask(
            phase=PHASE,
            complexity="medium",
            system="You draft short essays.",
            prompt=f"<data>{json.dumps({'topic': f'feedback, part {i}'})}</data>",
            output=Essay,
            subject=f"topic {i}",
        )
    return vault


def trial(vault: Path, *args: str, phase: str = PHASE) -> tuple[int, str]:
    """Exit code and everything printed; with `--format json`, the standard output alone (the JSON)."""
    result = CliRunner().invoke(
        app, ["trial", FLOW, "--phase", phase, "--vault", str(vault), *args], catch_exceptions=False
    )
    return result.exit_code, result.stdout if "json" in args else result.output


def judge_signals(vault: Path) -> list[dict]:
    with Ledger.for_vault(vault).engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(signals).order_by(signals.c.id))]


def trial_rows(vault: Path) -> list[dict]:
    return Ledger.for_vault(vault).rows(flow=f"trial:{FLOW}")


@pytest.mark.parametrize(
    ("prefer", "light", "standard"),
    [
        ("first", "tie", "tie"),  # position bias: each order prefers its first answer, so the orders disagree
        (MODELS["light"], "win", "tie"),  # a judge that prefers light's answer in both orders
        (MODELS["deep"], "loss", "loss"),  # ... or the reference's
    ],
)
def test_a_judge_that_prefers_the_first_answer_shown_yields_ties_not_wins(history, double, prefer, light, standard):
    double.responder = judging(prefer)
    code, out = trial(history, "--sample", "4", "--format", "json")
    assert code == 0, out
    report = json.loads(out)
    by_tier = {row["tier"]: row for row in report["tiers"]}
    expected = {"light": light, "standard": standard}
    for tier, outcome in expected.items():
        counts = {k: by_tier[tier][k + ("es" if k == "loss" else "s")] for k in ("win", "tie", "loss")}
        assert counts == {k: 4 if k == outcome else 0 for k in counts}, (tier, counts)
    stored = judge_signals(history)
    assert len(stored) == 8 and {s["kind"] for s in stored} == {"judge"}
    assert all((s["flow"], s["phase"]) == (FLOW, PHASE) for s in stored)  # evidence for the judged flow's phase
    for s in stored:
        assert s["detail"].startswith(expected[s["tier"]]) and s["passed"] is (expected[s["tier"]] != "loss")
    judge_calls = [c for c in double.model_calls() if c.forced_tool == "judgeout"]
    assert len(judge_calls) == 16  # 4 requests x 2 cheaper tiers x both orders
    shown_first = [prompt_data(c.last_user_text)["answer_a"] for c in judge_calls]
    assert sum(MODELS["deep"] in a for a in shown_first) == 8  # the reference was shown first in half of them
    # The trial's answers did not take over the recorded requests' cache entries: a next trial finds all 12.
    code, out = trial(history, "--sample", "20", "--dry-run")
    assert code == 0 and "12 recorded requests" in out, out


def test_a_trial_replays_the_recorded_requests_on_each_tier_in_its_own_flow(history, double):
    history_calls = double.model_calls()
    recorded = {c.last_user_text for c in history_calls if "could not be used" not in c.last_user_text}
    assert len(history_calls) == 13 and len(recorded) == 12  # one answer needed a retry
    double.responder = judging("first")
    code, out = trial(history, "--sample", "12", "--tiers", "light,deep", "--format", "json")
    assert code == 0, out
    answers = [c for c in double.model_calls()[13:] if c.forced_tool == "essay"]
    assert len(answers) == 24 and {c.model for c in answers} == {MODELS["light"], MODELS["deep"]}
    # The recorded prompts, sent again as first sent: the retry's note on what went wrong is not replayed.
    assert {c.last_user_text for c in answers} == recorded
    rows = trial_rows(history)
    assert {r["run_id"] for r in rows} != {"history"} and len({r["run_id"] for r in rows}) == 1
    assert {(r["phase"], r["tier"]) for r in rows} == {(PHASE, "light"), (PHASE, "deep"), ("judge", "deep")}
    report = json.loads(out)
    by_tier = {row["tier"]: row for row in report["tiers"]}
    assert by_tier["light"]["calls"] == 12 and by_tier["light"]["check_pass_rate"] == 1.0
    assert by_tier["light"]["cost_usd"] == pytest.approx(
        sum(r["cost_usd"] for r in rows if r["tier"] == "light"), abs=1e-6
    )
    # A smaller sample is a fixed subset: the same ledger gives the same sample every time.
    samples = []
    for _ in range(2):
        before = len(double.model_calls())
        code, _ = trial(history, "--sample", "3", "--tiers", "light,deep")
        sent = double.model_calls()[before:]
        samples.append({c.last_user_text for c in sent if c.forced_tool == "essay" and c.model == MODELS["light"]})
    assert samples[0] == samples[1] and len(samples[0]) == 3


def test_an_answer_that_breaks_the_recorded_schema_fails_the_check(history, double):
    def light_breaks_it(request: DoubleRequest) -> Reply:
        if request.model == MODELS["light"] and schema_name(request) == "essay":
            return Reply(data={"title": "no body"})
        return judging("first")(request)

    double.responder = light_breaks_it
    code, out = trial(history, "--sample", "2", "--format", "json")
    assert code == 0, out
    by_tier = {row["tier"]: row for row in json.loads(out)["tiers"]}
    assert by_tier["light"]["check_pass_rate"] == 0.0 and by_tier["light"]["calls"] == 4  # answer + informed retry
    assert by_tier["standard"]["check_pass_rate"] == 1.0
    outcomes = {r["outcome"] for r in trial_rows(history) if r["tier"] == "light"}
    assert outcomes == {"malformed"}


def snapshot(vault: Path) -> dict[str, str]:
    """Every file in the vault but tierflow's own database folder, by content hash."""
    return {
        p.relative_to(vault).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in vault.rglob("*")
        if p.is_file() and ".tierflow" not in p.relative_to(vault).parts
    }


def test_a_trial_writes_only_its_report_in_tierflow_trials_and_takes_no_existing_name(history, double):
    double.responder = judging("first")
    trials = history / "tierflow" / "Trials"
    trials.mkdir(parents=True)
    mine = trials / f"2026-11-18 {FLOW} {PHASE}.md"
    mine.write_text("A note I wrote myself, with the name a trial report would take.\n")
    before = snapshot(history)
    code, out = trial(history, "--sample", "2")
    assert code == 0, out
    after = snapshot(history)
    changed = {p for p in before if after.get(p) != before[p]}
    added = set(after) - set(before)
    assert changed == set()  # nothing existing was modified, moved or removed
    assert added == {f"tierflow/Trials/2026-11-18 {FLOW} {PHASE} (2).md"}
    report = (history / next(iter(added))).read_text()
    assert "tierflow_flow: trial:essays" in report and "| light |" in report and "| judge (deep) |" in report
    # A second trial the same day does not overwrite the first report either.
    code, _ = trial(history, "--sample", "2")
    assert set(snapshot(history)) - set(after) == {f"tierflow/Trials/2026-11-18 {FLOW} {PHASE} (3).md"}
    assert snapshot(history)[next(iter(added))] == after[next(iter(added))]


def test_a_trial_never_spends_past_its_budget(history, double):
    double.responder = judging("first")
    budget = 0.12
    code, out = trial(history, "--sample", "12", "--budget", str(budget), "--format", "json")
    assert code == 3, out  # stopped early
    report = json.loads(out)
    assert report["worst_case_usd"] > budget  # more was needed than the budget allowed
    assert report["halted"] and "budget 'trial'" in report["halted"]
    # The trial's budget is its --budget flag, and a trial never downgrades: the message says so.
    assert "Give a larger --budget" in report["halted"]
    assert "budgets.trial" not in report["halted"] and "downgrade" not in report["halted"]
    spent = sum(r["cost_usd"] for r in trial_rows(history))
    assert 0 < spent <= budget
    assert report["spent_usd"] == pytest.approx(spent, abs=1e-6)
    assert sum(row["requests"] for row in report["tiers"] if row["tier"] == "deep") < 12  # not every request ran
    assert (history / "tierflow" / "Trials" / f"2026-11-18 {FLOW} {PHASE}.md").is_file()  # the partial report


def test_the_worst_case_is_shown_before_anything_is_spent(history, double):
    calls_before = len(double.model_calls())
    code, out = trial(history, "--sample", "5", "--dry-run")
    assert code == 0, out
    assert "worst case" in out and "judge (deep)" in out and "$" in out
    assert len(double.model_calls()) == calls_before and trial_rows(history) == []


def test_trial_tables_piped_keep_every_model_name_and_cost_whole(history, double):
    """Out of a terminal, rich's 80 columns cut the trial's tables to `claud…` and `0.00…`: printed as every other
    table of tierflow's is (`show`), a pipe gets them whole."""
    _, planned = trial(history, "--sample", "2", "--dry-run")
    double.responder = judging("first")
    code, out = trial(history, "--sample", "2")
    assert code == 0, out
    for printed in (planned, out):
        assert "…" not in printed, printed
        assert all(f"anthropic:{model}" in printed or model in printed for model in MODELS.values()), printed
    assert "judge (deep)" in planned and "check pass" in out


def test_a_phase_with_nothing_recorded_says_what_to_do(history):
    code, out = trial(history, phase="collate")
    assert code == 2
    assert "no recorded requests of essays collate" in out and "draft" in out


def test_the_report_is_also_a_prefect_table_artifact(history, double, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    double.responder = judging("first")
    code, out = trial(history, "--sample", "2", "--format", "json")
    assert code == 0, out
    report = json.loads(out)
    assert report["artifact"] == "Prefect table artifact trial-essays-draft"
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["trial-essays-draft"]))
        )
    (artifact,) = [a for a in found if report["run_id"] in (a.description or "")]  # other tests' trials share the key
    assert artifact.flow_run_id is not None  # it belongs to a `tierflow-trial` flow run, listed in the UI
    rows = json.loads(artifact.data)
    assert [r["tier"] for r in rows] == ["light", "standard", "deep", "judge (deep)"]
    assert rows[0]["ties"] == 2 and rows[0]["calls"] == 2


def test_requests_first_answered_on_this_machine_go_to_a_cloud_tier_only_when_asked(history, double, monkeypatch):
    from tierflow.offline import SKILLS

    monkeypatch.setitem(SKILLS, "essay", lambda data: {"title": "Offline", "body": f"On {data.get('topic')}."})
    offline = write_config(history / "offline.toml", 'profile = "offline"\n')
    local = Caller(RunSettings(vault=str(history), config_path=str(offline), run_id="local", flow=FLOW))
    for i in range(3):
        local.ask(
            phase=PHASE,
            complexity="medium",
            system="You draft short essays.",
            prompt=f"<data>{json.dumps({'topic': f'a student, Ada Lovelace, part {i}'})}</data>",
            output=Essay,
        )
    double.responder = judging("first")
    before = len(double.model_calls())
    code, out = trial(history, "--sample", "20")
    assert code == 2 and "answered by a local or offline model (offline:" in out and "--send-local-data" in out
    assert len(double.model_calls()) == before and trial_rows(history) == []  # nothing was sent
    code, out = trial(history, "--sample", "20", "--send-local-data", "--format", "json")
    assert code == 0, out
    assert any("Ada Lovelace" in c.last_user_text for c in double.model_calls()[before:])


def test_a_judge_without_a_readable_verdict_counts_nowhere_and_the_trial_goes_on(history, double):
    def judge_mumbles(request: DoubleRequest) -> Reply:
        return Reply(text="Both are fine.") if schema_name(request) == "judgeout" else answer_by_model(request)

    double.responder = judge_mumbles
    code, out = trial(history, "--sample", "2", "--format", "json")
    assert code == 0, out
    by_tier = {row["tier"]: row for row in json.loads(out)["tiers"]}
    assert [by_tier[t]["unjudged"] for t in ("light", "standard")] == [2, 2]
    assert all(by_tier[t][k] == 0 for t in ("light", "standard") for k in ("wins", "ties", "losses"))
    assert judge_signals(history) == []
    assert by_tier["judge (deep)"]["calls"] == 8  # each pair: the first order's answer and its retry, both billed
    note = next((history / "tierflow" / "Trials").glob("*.md")).read_text()
    assert "no readable verdict on 4 pairs" in note


def test_trial_verdicts_are_evidence_for_routing_suggest(history, double):
    double.responder = judging(MODELS["deep"])  # every cheaper answer loses to deep's
    code, out = trial(history, "--sample", "4")
    assert code == 0, out
    result = CliRunner().invoke(
        app, ["routing", "suggest", "--vault", str(history), "--flow", FLOW, "--format", "json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    (draft,) = [s for s in json.loads(result.stdout) if s["phase"] == PHASE]
    light = draft["evidence"]["light"]  # light never ran in the flow itself: its evidence is the 4 verdicts
    assert (light["calls"], light["pass_rate"]) == (4, 0.0)
    assert all(not s["flow"].startswith("trial") for s in json.loads(result.stdout))  # trial runs are apart


def essay_checks(vault: Path | None, source: str) -> list:
    """A phase check rebuilt from the vault at trial time: the essay must quote its source's first sentence."""
    from tierflow.core.checks import Check

    sentence = (Path(vault) / source).read_text().split("---\n")[-1].strip()
    recipe = (f"{__name__}:essay_checks", json.dumps({"source": source}))
    quoted = Check("quotes_source", lambda out: [] if sentence in out.body else [f"quote {sentence!r}"], recipe)
    return [quoted]


def quoting(request: DoubleRequest) -> Reply:
    """Deep quotes the source; every other tier does not."""
    if schema_name(request) == "judgeout":
        return Reply(data={"better": "tie", "reason": "equal"})
    body = "Feedback closes a gap." if request.model == MODELS["deep"] else "Feedback is nice."
    return Reply(data={"title": "Feedback", "body": body})


def test_a_phase_where_nothing_passed_can_be_trialled_with_its_own_checks(tmp_path, monkeypatch, double):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-anthropic-key")
    vault = tmp_path / "vault"
    (vault / "Reading").mkdir(parents=True)
    (vault / "Reading" / "Sadler 1989.md").write_text("---\ntags: [literature]\n---\nFeedback closes a gap.\n")
    config = write_config(
        vault / ".tierflow" / "config.toml", anthropic_config(double, "[routing]\nescalate = false\n")
    )
    double.responder = lambda request: Reply(data={"title": "Feedback", "body": "Feedback is nice."})
    caller = Caller(RunSettings(vault=str(vault), config_path=str(config), run_id="history", flow=FLOW))
    from tierflow.core.checks import Check

    checks = [*essay_checks(vault, "Reading/Sadler 1989.md"), Check("by_hand", lambda out: [])]  # no recipe
    for i in range(3):
        answer = caller.ask(
            phase=PHASE, complexity="medium", system="You draft short essays.", prompt=f"Essay {i} on Sadler.",
            output=Essay, subject=f"essay {i}", checks=checks,
        )  # fmt: skip
        assert answer.checks_failed == ("quotes_source",)  # kept without passing: nothing is in the answer cache
    recorded = caller.ledger.recorded_requests(flow=FLOW, phase=PHASE)
    assert [(r.tier, r.outcome, r.checks_failed) for r in recorded] == [
        ("standard", "check_failed", "quotes_source")
    ] * 3
    assert json.loads(recorded[0].checks_json)[0]["name"] == "quotes_source"
    double.responder = quoting
    code, out = trial(vault, "--sample", "3", "--tiers", "light,deep", "--format", "json")
    assert code == 0, out
    by_tier = {row["tier"]: row for row in json.loads(out)["tiers"]}
    # The phase's own check, rebuilt from the vault, fails light's answers and passes deep's.
    assert by_tier["light"]["check_pass_rate"] == 0.0 and by_tier["deep"]["check_pass_rate"] == 1.0
    assert by_tier["light"]["checks_not_run"] == "by_hand"  # named, not silently dropped
    failed = {r["checks_failed"] for r in trial_rows(vault) if r["tier"] == "light"}
    assert failed == {"quotes_source"}


def test_a_trial_under_a_downgrade_budget_credits_no_cheaper_answer_to_the_tier_on_trial(history, double):
    config = history / ".tierflow" / "config.toml"
    budget = (
        '[budgets.daily]\nusd = 0.02\nperiod = "day"\npolicy = "downgrade"\nfloor = "light"\nclamp_output = false\n'
    )
    config.write_text(config.read_text() + budget)
    double.responder = judging("first")
    code, out = trial(history, "--sample", "4", "--tiers", "light,deep", "--format", "json")
    report = json.loads(out)
    assert code == 3 and report["halted"] and "daily" in report["halted"], out  # stopped, clearly
    assert "a trial call never downgrades" in report["halted"] and 'set policy = "downgrade"' not in report["halted"]
    rows = trial_rows(history)
    assert all(r["downgraded_from"] is None for r in rows)  # no answer from a cheaper tier, paid or credited
    by_tier = {row["tier"]: row for row in report["tiers"]}
    assert by_tier["deep"]["requests"] == 0 and by_tier["deep"]["check_pass_rate"] is None


@pytest.mark.usefixtures("prefect_harness")
def test_the_draft_phase_of_reading_notes_is_trialled_with_its_own_checks(reading_vault: Path, caplog):
    """README's Trials example on the demo week: the draft checks read each answer's quotations, not raise."""
    from datetime import date

    from tierflow.flows.reading_notes import reading_notes

    since, until = (date.fromisoformat(d) for d in READING_WEEK)
    reading_notes(vault=str(reading_vault), since=since, until=until, profile="offline")

    def draft_trial() -> tuple[dict[str, dict], list[str]]:
        """Each candidate tier's row, and the draft calls' failed checks, of one trial."""
        result = CliRunner().invoke(
            app,
            ["trial", "reading-notes", "--phase", "draft", "--tiers", "light,standard,deep", "--sample", "10"]
            + ["--budget", "0.50", "--vault", str(reading_vault), "--profile", "offline", "--format", "json"],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        calls = Ledger.for_vault(reading_vault).rows(run_id=report["run_id"])
        failed = [r["checks_failed"] or "" for r in calls if r["phase"] == "draft"]
        return {row["tier"]: row for row in report["tiers"] if row["tier"] in MODELS}, failed

    caplog.set_level("WARNING", logger="tierflow")
    # The offline drafts passed every check in the run: they pass them in the trial too, each at the first call.
    tiers, failed = draft_trial()
    assert set(tiers) == set(MODELS)
    for tier, row in tiers.items():
        assert (row["requests"], row["calls"], row["check_pass_rate"]) == (4, 4, 1.0), (tier, row)
    assert failed == [""] * 12
    # Sadler's note rewritten since: the drafts drawn from it no longer quote it word for word, and the check says so.
    sadler = reading_vault / "Reading" / "@sadler1989.md"
    head, _, _ = sadler.read_text().partition("\n---\n")
    sadler.write_text(head + "\n---\nRewritten since the run.\n")
    recorded = Ledger.for_vault(reading_vault).recorded_requests(flow="reading-notes", phase="draft")
    drawn = [any("@sadler1989.md" in json.dumps(c["rebuild"]) for c in json.loads(r.checks_json)) for r in recorded]
    assert len(drawn) == 4 and 0 < sum(drawn) < 4
    tiers, failed = draft_trial()
    for tier, row in tiers.items():
        assert row["check_pass_rate"] == (4 - sum(drawn)) / 4, (tier, row)
    assert {f for f in failed if f} == {"quotes_verbatim"}  # named by the check, never `... raised`
    assert not [r.getMessage() for r in caplog.records if " raised " in r.getMessage()]
