"""A router that learns from outcomes: evidence from the ledger, `routing suggest`, `--apply`, human-edit and rating
signals, adaptive routing that says why. All on the wire double through the real Anthropic SDK."""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import frontmatter
import pytest
from conftest import REPO, anthropic_config, run_reading_week_on_double, write_config
from pydantic import BaseModel

from tierflow.core.calls import Caller, RunSettings
from tierflow.core.checks import Check
from tierflow.core.config import load_config
from tierflow.core.errors import ConfigError
from tierflow.core.evidence import PhaseEvidence, Suggestion, TierEvidence, suggest, wilson_high, wilson_low
from tierflow.core.ledger import Ledger
from tierflow.core.routing import route
from tierflow.learn import routing
from tierflow.testing.double import DoubleRequest, ProviderDouble, Reply

FLOW = "reading-notes"


class Out(BaseModel):
    ok: bool


PASSES = Check("ok", lambda out: [] if out.ok else ["the answer says it is not ok"])


def hand_wilson(k: int, n: int) -> float:
    """Wilson's lower bound at z = 1.96, written out independently of tierflow's."""
    z, p = 1.96, k / n
    return (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def history(tmp_path: Path, double: ProviderDouble, monkeypatch: pytest.MonkeyPatch, extra: str = "") -> Path:
    """A ledger in which draft's light answers fail their check 60% of the time and collate's pass 98%."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    vault = tmp_path / "vault"
    config = write_config(vault / ".tierflow" / "config.toml", anthropic_config(double, extra))

    def respond(request: DoubleRequest) -> Reply:
        text = request.last_user_text
        n = int(text.split()[1])
        retry = "Your previous answer" in text
        if request.model == "claude-haiku-4-5" and "draft" in text:
            return Reply(data={"ok": n % 10 >= 6})  # 60% fail, retries too: those escalate
        if request.model == "claude-haiku-4-5" and "collate" in text:
            return Reply(data={"ok": retry or n % 50 != 0})  # 2% fail once, the retry passes
        return Reply(data={"ok": True})

    double.responder = respond
    caller = Caller(RunSettings(vault=str(vault), config_path=str(config), run_id="history", flow=FLOW))
    for n in range(120):
        for phase in ("collate", "draft"):
            caller.ask(
                phase=phase, complexity="low", system="s", prompt=f"item {n} {phase}", output=Out, checks=[PASSES]
            )
    return vault


def cli(*args: str, vault: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tierflow.cli", *args, "--vault", str(vault)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**__import__("os").environ, "ANTHROPIC_API_KEY": "k", "COLUMNS": "400"},
    )


def test_suggest_moves_the_failing_phase_up_and_keeps_the_good_one_on_light(tmp_path, monkeypatch, double):
    vault = history(tmp_path, double, monkeypatch)
    result = cli("routing", "suggest", "--format", "json", vault=vault)
    assert result.returncode == 0, result.stderr
    by_phase = {s["phase"]: s for s in json.loads(result.stdout)}
    assert set(by_phase["draft"]) == {
        "flow", "phase", "complexity", "current_tier", "suggested_tier", "reason", "evidence"
    }  # fmt: skip
    assert by_phase["draft"]["current_tier"] == "light" and by_phase["draft"]["suggested_tier"] == "standard"
    assert by_phase["collate"]["current_tier"] == "light" and by_phase["collate"]["suggested_tier"] == "light"
    # The evidence equals what the ledger says, computed here by hand.
    rows = Ledger.for_vault(vault).rows()
    for phase, suggestion in by_phase.items():
        for tier, e in suggestion["evidence"].items():
            mine = [
                r
                for r in rows
                if r["phase"] == phase and r["tier"] == tier and not r["cached_result"] and r["attempt"] % 2 == 1
            ]
            k = sum(r["outcome"] == "ok" for r in mine)
            assert e["calls"] == len(mine) and e["pass_rate"] == round(k / len(mine), 4)
            assert e["pass_rate_low"] == round(hand_wilson(k, len(mine)), 4)
            assert e["cost_per_call_usd"] == pytest.approx(sum(r["cost_usd"] for r in mine) / len(mine), abs=1e-6)
    assert by_phase["draft"]["evidence"]["light"]["pass_rate"] < 0.5
    assert by_phase["collate"]["evidence"]["light"]["pass_rate_low"] >= 0.9


def test_apply_writes_a_per_phase_tier_that_config_show_attributes_to_the_file(tmp_path, monkeypatch, double):
    vault = history(tmp_path, double, monkeypatch)
    applied = cli("routing", "suggest", "--apply", vault=vault)
    assert applied.returncode == 0, applied.stderr
    assert '+draft = "standard"' in applied.stderr  # the diff is shown
    text = (vault / ".tierflow" / "config.toml").read_text()
    assert "[routing.phases]" in text and "# tierflow routing suggest --apply, 2026-11-18: move to standard" in text
    # The check it prints runs as printed from any folder: it names the vault.
    (printed,) = re.findall(r"Check with: (.+)", applied.stderr)
    words = shlex.split(printed)
    assert words[:3] == ["tierflow", "config", "show"], printed
    shown = subprocess.run(
        [sys.executable, "-m", "tierflow.cli", *words[1:]],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**__import__("os").environ, "COLUMNS": "400"},
    )
    line = next(x for x in shown.stdout.splitlines() if "routing.phases.draft" in x)
    assert "standard" in line and "config.toml" in line
    # The next draft call goes to standard, and its ledger row says which rule sent it there.
    again = cli("routing", "suggest", "--format", "json", vault=vault)
    assert {s["phase"]: s["current_tier"] for s in json.loads(again.stdout)}["draft"] == "standard"


def test_apply_keeps_a_pin_you_wrote_and_your_comments_unless_told_to_replace_pins(tmp_path, monkeypatch, double):
    vault = history(tmp_path, double, monkeypatch)
    path = vault / ".tierflow" / "config.toml"
    mine = '[routing.phases]\n# my own choices\ndraft = "deep"   # I want deep here, always\ncollate = "light"\n'
    path.write_text(path.read_text() + mine)
    before = path.read_text()
    kept = cli("routing", "suggest", "--apply", vault=vault)
    assert kept.returncode == 0, kept.stderr
    assert path.read_text() == before
    said = " ".join(kept.stderr.split())
    assert f'draft is pinned to deep by your own line in {path} (draft = "deep" # I want deep here, always)' in said
    assert "--replace-pins" in said and "Nothing applied" in said

    replaced = cli("routing", "suggest", "--apply", "--replace-pins", vault=vault)
    assert replaced.returncode == 0, replaced.stderr
    text = path.read_text()
    assert load_config(config_path=path).settings.routing.phases == {"draft": "standard", "collate": "light"}
    # Everything else stays as you wrote it, your comment and your old line (as a comment) included.
    assert text.startswith(before.split("draft = ")[0])
    assert 'collate = "light"\n' in text and "# my own choices\n" in text
    assert '# draft = "deep"   # I want deep here, always' in text
    # A line tierflow wrote is its own: the next --apply replaces it without the flag.
    routing.apply(path, [change("draft", "standard", "light")])
    assert load_config(config_path=path).settings.routing.phases == {"draft": "light", "collate": "light"}


def test_apply_replaces_only_lines_an_earlier_apply_wrote_in_place_and_keeps_the_rest(tmp_path):
    earlier = (
        'profile = "offline"\n\n[routing.phases]  # tiers per phase\n'
        "# tierflow routing suggest --apply, 2026-01-02: move to standard: evidence\n"
        'draft = "standard"\n\n'  # what an earlier tierflow wrote, with no mark on the line
        'review = "deep"\n'
        "# tierflow routing suggest --apply, 2026-01-02: move to light: evidence\n"
        'collate = "deep"  # you changed the tier tierflow wrote: yours now\n\n[run]\nworkers = 2\n'
    )
    path = write_config(tmp_path / "config.toml", earlier)
    diff = routing.apply(path, [change("draft", "standard", "light")])
    assert '-draft = "standard"' in diff and "+draft = " in diff
    text = path.read_text()
    assert text.startswith('profile = "offline"\n\n[routing.phases]  # tiers per phase\n# tierflow routing suggest')
    assert text.count("2026-01-02") == 1 and text.endswith('review = "deep"\n' + earlier.split('review = "deep"\n')[1])
    assert load_config(config_path=path).settings.routing.phases == {
        "draft": "light", "review": "deep", "collate": "deep"
    }  # fmt: skip
    for yours in (change("review", "deep", "light"), change("collate", "deep", "light")):
        with pytest.raises(ConfigError, match="--replace-pins"):
            routing.apply(path, [yours])
    assert routing.own_pins(path, ["draft", "review", "collate", "other"]) == {
        "review": 'review = "deep"', "collate": 'collate = "deep"  # you changed the tier tierflow wrote: yours now'
    }  # fmt: skip
    # A phase not yet pinned goes at the end of the table, before the next one.
    routing.apply(path, [change("scan", "light", "standard")])
    assert path.read_text().index('scan = "standard"') < path.read_text().index("[run]")
    assert load_config(config_path=path).settings.run.workers == 2


def test_apply_keeps_the_line_ends_windows_wrote(tmp_path):
    """A config saved on Windows (CRLF) came back with every line's end changed: a change to each line of the file
    for the lecturer's editor and version control, where --apply changed one."""
    path = tmp_path / "config.toml"
    path.write_bytes(b'profile = "offline"\r\n\r\n[routing.phases]\r\n# mine\r\ncollate = "deep"  # pinned\r\n')
    routing.apply(path, [change("draft", "standard", "light")])
    data = path.read_bytes()
    assert data.count(b"\n") == data.count(b"\r\n") == 7, data
    assert data.startswith(b'profile = "offline"\r\n\r\n[routing.phases]\r\n# mine\r\ncollate = "deep"  # pinned\r\n')
    assert load_config(config_path=path).settings.routing.phases == {"collate": "deep", "draft": "light"}


def test_apply_to_a_config_that_is_a_link_writes_the_file_it_links_to(tmp_path):
    """A vault's `.tierflow/config.toml` linked to the lecturer's own copy (a dotfiles folder, a synced one) was
    replaced by a file: the linked config, theirs, no longer read, and their next edit of it lost on the vault."""
    own = write_config(tmp_path / "dotfiles" / "tierflow.toml", 'profile = "offline"\n# mine\n')
    link = tmp_path / "vault" / ".tierflow" / "config.toml"
    link.parent.mkdir(parents=True)
    link.symlink_to(own)
    routing.apply(link, [change("draft", "standard", "light")])
    assert link.is_symlink() and link.resolve() == own.resolve()
    assert load_config(config_path=own).settings.routing.phases == {"draft": "light"}
    assert "# mine" in own.read_text()


def test_apply_on_a_vault_shared_read_only_shows_the_suggestions_then_says_it_cannot_write_in_one_line(
    tmp_path, monkeypatch, double
):
    from conftest import as_reader

    from tierflow.core.ledger import dispose_engine

    vault = history(tmp_path, double, monkeypatch)
    dispose_engine(Ledger.for_vault(vault).url)
    folder = vault / ".tierflow"
    for path in folder.iterdir():
        path.chmod(0o444)
    folder.chmod(0o555)
    try:
        command = [sys.executable, "-m", "tierflow.cli", "routing", "suggest", "--apply", "--vault", str(vault)]
        applied = subprocess.run(
            [*as_reader(), *command], capture_output=True, text=True, cwd=REPO, timeout=120,
            env={**__import__("os").environ, "COLUMNS": "400"},
        )  # fmt: skip
    finally:
        folder.chmod(0o755)
    assert applied.returncode == 1 and "Traceback" not in applied.stderr, applied.stderr
    assert "draft" in applied.stdout and "standard" in applied.stdout  # the suggestions, read from the ledger
    error = " ".join(applied.stderr[applied.stderr.index("error:") :].split())
    assert error == (
        f"error: cannot write {folder / 'config.toml'} (Permission denied): run --apply with write access to it and "
        "its folder"
    )
    assert "[routing.phases]" not in (folder / "config.toml").read_text()


def test_adaptive_routing_routes_by_evidence_and_says_why(tmp_path, monkeypatch, double):
    vault = history(tmp_path, double, monkeypatch, '[routing]\nmode = "adaptive"\nexplore = 0.0\n')
    config = vault / ".tierflow" / "config.toml"
    caller = Caller(RunSettings(vault=str(vault), config_path=str(config), run_id="adaptive", flow=FLOW))
    answer = caller.ask(phase="draft", complexity="low", system="s", prompt="item 7 draft", output=Out)
    assert answer.route.tier == "standard"
    (row,) = caller.ledger.rows(run_id="adaptive")
    assert row["route_rule"].startswith("adaptive: draft on standard, pass 1.00 (low 0.9")
    assert "calls" in row["route_rule"]
    collate = caller.ask(phase="collate", complexity="low", system="s", prompt="item 8 collate", output=Out)
    assert collate.route.tier == "light"


def test_cold_start_uses_the_rules_table(tmp_path, monkeypatch, double):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    config = write_config(tmp_path / "c.toml", anthropic_config(double, '[routing]\nmode = "adaptive"\n'))
    double.responder = lambda r: Reply(data={"ok": True})
    caller = Caller(RunSettings(vault=str(tmp_path), config_path=str(config), run_id="cold", flow=FLOW))
    answer = caller.ask(phase="draft", complexity="medium", system="s", prompt="item 1 draft", output=Out)
    assert answer.route.tier == "standard" and answer.route.rule.startswith("routing.medium")


def test_adaptive_explores_the_next_tier_in_shadow(tmp_path, monkeypatch, double):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    config = write_config(
        tmp_path / "c.toml", anthropic_config(double, '[routing]\nmode = "adaptive"\nexplore = 1.0\n')
    )
    double.responder = lambda r: Reply(data={"ok": True})
    caller = Caller(RunSettings(vault=str(tmp_path), config_path=str(config), run_id="shadow", flow=FLOW))
    answer = caller.ask(phase="collate", complexity="low", system="s", prompt="item 1 collate", output=Out)
    assert answer.route.tier == "light"
    rows = caller.ledger.rows(run_id="shadow")
    rules = [(r["tier"], r["route_rule"]) for r in rows]
    assert rules == [("light", "routing.low (profile:anthropic)"), ("standard", "shadow: explore standard for collate")]


def test_an_edited_draft_and_a_bad_rating_become_failures_of_the_calls_that_wrote_it(
    tmp_path, monkeypatch, double, reading_vault, prefect_harness
):
    summary = run_reading_week_on_double(reading_vault, double, monkeypatch)
    first, second, *_ = sorted(w.path for w in summary.written)
    rewritten = frontmatter.load(reading_vault / first)
    rewritten.content = "My own view, entirely rewritten: feedback is a dialogue, not a transmission."
    (reading_vault / first).write_text(frontmatter.dumps(rewritten))
    rated = frontmatter.load(reading_vault / second)
    rated["tierflow_rating"] = "bad"
    (reading_vault / second).write_text(frontmatter.dumps(rated))

    result = cli("routing", "scan", vault=reading_vault)
    assert result.returncode == 0, result.stderr
    ledger = Ledger.for_vault(reading_vault)
    with ledger.engine.connect() as conn:
        found = {
            (r.note, r.kind): r
            for r in conn.exec_driver_sql("SELECT note, kind, passed, value, tier, model, phase FROM signals").all()
        }
    edit = found[(first, "edit")]
    assert edit.value > 0.5 and edit.passed in (0, False)
    assert (edit.phase, edit.tier, edit.model) == ("draft", "standard", "anthropic:claude-sonnet-4-6")
    assert found[(second, "rating")].passed in (0, False)
    assert found[(second, "edit")].value == 0 and found[(second, "edit")].passed in (1, True)
    # The signals count in the evidence for draft on standard.
    from tierflow.core.evidence import gather

    draft = next(p for p in gather(ledger, flow=FLOW) if p.phase == "draft")
    calls = [
        r
        for r in ledger.rows()
        if r["phase"] == "draft" and r["tier"] == "standard" and not r["cached_result"] and r["attempt"] % 2 == 1
    ]
    assert draft.tiers["standard"].calls == len(calls) + len(summary.written) + 1  # an edit each, and one rating


def test_wilson_lower_bound_matches_the_formula():
    assert wilson_low(0, 0) == 0.0
    for k, n in ((0, 10), (9, 10), (41, 41), (93, 100)):
        assert wilson_low(k, n) == pytest.approx(hand_wilson(k, n))


ADAPTIVE = '[routing]\nmode = "adaptive"\nexplore = 0.0\n'


def test_forty_low_asks_in_another_project_do_not_send_an_explicit_high_ask_to_light(tmp_path, monkeypatch, double):
    from typer.testing import CliRunner

    from tierflow.cli.app import app

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    vault = tmp_path / "vault"
    config = write_config(vault / ".tierflow" / "config.toml", anthropic_config(double, ADAPTIVE))
    double.responder = lambda r: Reply(text="An answer.")
    other = Caller(RunSettings(vault=str(vault), config_path=str(config), run_id="o", flow="ask", project="OTHER"))
    for n in range(40):
        other.ask(phase="ask", complexity="low", system="s", prompt=f"List item {n}.")
    runner = CliRunner()

    def ask(*args: str) -> dict:
        result = runner.invoke(app, ["ask", "--vault", str(vault), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return Ledger.for_vault(vault).rows()[-1]

    high = ask("--complexity", "high", "--project", "EDU7001", "Compare Sadler and Hattie on feedback.")
    assert (high["tier"], high["project"], high["complexity"]) == ("deep", "EDU7001", "high")
    assert high["route_rule"] == "routing.high (profile:anthropic)"
    # An explicit complexity is never overridden, even where the evidence is about that very complexity.
    low = ask("--complexity", "low", "--project", "OTHER", "List the authors.")
    assert low["tier"] == "light" and low["route_rule"] == "routing.low (profile:anthropic)"
    # Without --complexity the evidence of the classified complexity applies: 41 low asks passed on light.
    classified = ask("--project", "EDU7001", "List the authors cited here.")
    assert classified["complexity"] == "low" and "adaptive: ask on light" in classified["route_rule"]
    # ... and an explicit --tier beats it too.
    pinned = ask("--tier", "standard", "--project", "EDU7001", "List the drafts.")
    assert pinned["tier"] == "standard" and pinned["route_rule"].endswith("override")


def _observed(ledger: Ledger, project: str, tier: str, outcome: str, n: int, complexity: str = "low") -> None:
    from tierflow.core.ledger import CallRecord
    from tierflow.core.usage import Usage

    for _ in range(n):
        ledger.record(
            CallRecord(
                run_id="past", flow=FLOW, phase="draft", complexity=complexity, tier=tier, provider="anthropic",
                model="m", usage=Usage(input_tokens=10, output_tokens=10), cost_usd=0.001, latency_ms=1.0,
                outcome=outcome, project=project,
            )
        )  # fmt: skip


def test_a_project_with_enough_evidence_of_its_own_is_routed_by_it_and_others_by_the_pool(
    tmp_path, monkeypatch, double
):
    from tierflow.core.evidence import gather, learned_routes

    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    config = write_config(tmp_path / "c.toml", anthropic_config(double, ADAPTIVE))
    double.responder = lambda r: Reply(data={"ok": True})
    ledger = Ledger.for_vault(tmp_path)
    _observed(ledger, "EDU7001", "light", "ok", 40)  # this course's drafts pass on light
    _observed(ledger, "OTHER", "light", "check_failed", 60)  # another course's fail there
    _observed(ledger, "OTHER", "standard", "ok", 40)
    _observed(ledger, "OTHER", "light", "check_failed", 30, complexity="high")  # another complexity entirely
    settings = dict(config_path=str(config), flow=FLOW)

    def routed(project: str | None, complexity: str = "low") -> tuple[str, str]:
        caller = Caller(RunSettings(vault=str(tmp_path), run_id=f"r-{project}", project=project, **settings))
        r = caller.route("draft", complexity)
        return r.tier, r.rule

    tier, rule = routed("EDU7001")
    assert tier == "light" and rule.endswith("(low complexity, project EDU7001)")
    tier, rule = routed("NEW1001")  # no evidence of its own: every project's, pooled
    assert tier == "standard" and rule.endswith("(low complexity, all projects)")
    assert routed("EDU7001", "medium")[1].startswith("routing.medium")  # no evidence at medium: the rules
    assert routed("NEW1001", "high") == ("deep", "routing.high (profile:anthropic)")
    pooled = {(e.complexity, t): e.tiers[t].calls for e in gather(ledger, flow=FLOW) for t in e.tiers}
    assert pooled == {("low", "light"): 100, ("low", "standard"): 40, ("high", "light"): 30}
    config_now = Caller(RunSettings(vault=str(tmp_path), **settings)).config
    assert set(learned_routes(config_now, ledger, FLOW, project="EDU7001")) == {("draft", "low")}


def test_evidence_is_counted_by_the_database_as_calls_are_recorded_and_for_an_older_ledger_once(ledger_url):
    from conftest import call_record

    from tierflow.core.evidence import gather
    from tierflow.core.ledger import MIGRATIONS, _migration_14

    counts_version = MIGRATIONS.index(_migration_14) + 1  # the migration that counts evidence
    ledger = Ledger(ledger_url)
    records = [
        call_record(project="EDU7001"),
        call_record(project="EDU7001", outcome="check_failed", cost_usd=None),
        call_record(project=None, tier="standard"),
        call_record(project="EDU7001", attempt=2, outcome="ok"),  # an informed retry: not a first answer
        call_record(project="EDU7001", cached_result=True),  # replayed, not billed
        call_record(project="EDU7001", outcome="lost"),
        call_record(project="EDU7001", attempt=3, escalated_from="light", downgraded_from="standard"),
        call_record(project="EDU7001", complexity="high", attempt=3, escalated_from="light", tier="standard"),
    ]
    for record in records:
        ledger.record(record)

    def counted() -> dict:
        return {
            (e.complexity, e.project, t): (v.calls, v.passed, v.cost_per_call_usd)
            for by_project in (False, True)
            for e in gather(ledger, flow="f", by_project=by_project)
            for t, v in e.tiers.items()
        }

    expected = {
        ("low", None, "light"): (2, 1, pytest.approx(0.001)),
        ("low", None, "standard"): (1, 1, pytest.approx(0.001)),
        ("high", None, "standard"): (1, 1, pytest.approx(0.001)),
        ("low", "EDU7001", "light"): (2, 1, pytest.approx(0.001)),  # the unpriced answer counts, not in the mean
        ("high", "EDU7001", "standard"): (1, 1, pytest.approx(0.001)),
    }
    assert counted() == expected
    # A ledger written before the counts existed is counted once, from its calls, when it is next opened.
    with ledger.transaction() as conn:
        conn.exec_driver_sql(f"DELETE FROM schema_version WHERE version >= {counts_version}")
        conn.exec_driver_sql("DELETE FROM evidence_totals")
    assert counted() == {}
    assert Ledger(ledger_url).version == len(MIGRATIONS)
    assert counted() == expected
    ledger.record(call_record(project="EDU7001"))  # and counted on as calls are recorded
    assert counted()[("low", "EDU7001", "light")] == (3, 2, pytest.approx(0.001))


def change(phase: str, current: str, suggested: str, complexity: str = "low", flow: str = FLOW) -> Suggestion:
    return Suggestion(flow, phase, complexity, current, suggested, f"move to {suggested}: evidence", {})


def test_apply_quotes_a_phase_name_that_is_not_a_bare_toml_key(tmp_path):
    path = write_config(tmp_path / "config.toml", 'profile = "offline"\n')
    routing.apply(path, [change("lit review", "standard", "deep"), change('say "hi"\\', "light", "standard")])
    config = load_config(config_path=path)
    assert config.settings.routing.phases == {"lit review": "deep", 'say "hi"\\': "standard"}
    assert route(config, phase="lit review", complexity="medium").tier == "deep"
    # Applying again replaces the phase's line, whatever its quoting, and keeps the rest.
    routing.apply(path, [change("lit review", "deep", "light")])
    assert load_config(config_path=path).settings.routing.phases == {"lit review": "light", 'say "hi"\\': "standard"}
    assert path.read_text().count("lit review") == 1


def test_apply_leaves_the_file_alone_when_the_edit_would_not_be_valid(tmp_path):
    before = 'profile = "offline"\n[routing]\nphases = { draft = "deep" }\n'
    path = write_config(tmp_path / "config.toml", before)
    with pytest.raises(ConfigError, match="not changed"):
        routing.apply(path, [change("draft", "deep", "light")])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temporary file left behind


def test_plan_refuses_a_phase_whose_complexities_want_different_tiers_and_applies_one_that_agrees():
    found = [
        change("x", "deep", "light", complexity="high"),
        change("x", "light", "standard", complexity="low"),
        change("draft", "light", "standard", complexity="low"),
        change("draft", "standard", "standard", complexity="medium"),
        change("collate", "light", "light"),
    ]
    changes, refused = routing.plan(found)
    assert [(s.phase, s.complexity) for s in changes] == [("draft", "low")]
    assert [(r.suggestion.phase, r.suggestion.complexity) for r in refused] == [("x", "high"), ("x", "low")]
    assert "high: deep -> light" in refused[0].reason and "low: light -> standard" in refused[0].reason
    # A keep counts too: moving collate at low would also move it at high, where the evidence says keep deep.
    _, refused = routing.plan([change("collate", "light", "standard"), change("collate", "deep", "deep", "high")])
    assert "keep deep" in refused[0].reason


def test_apply_refuses_changes_that_disagree_on_one_phase(tmp_path):
    path = write_config(tmp_path / "config.toml", 'profile = "offline"\n')
    with pytest.raises(ConfigError, match="disagree"):
        routing.apply(path, [change("x", "deep", "light", "high"), change("x", "light", "standard", "low")])
    assert path.read_text() == 'profile = "offline"\n'


def evidence(tiers: dict[str, tuple[int, int]], complexity: str = "medium") -> PhaseEvidence:
    """One phase's evidence: tier -> (passed, calls)."""
    found = {t: TierEvidence(t, n, k, None) for t, (k, n) in tiers.items()}
    return PhaseEvidence(FLOW, "draft", complexity, found)


def test_suggest_keeps_a_tier_that_passed_every_call_and_says_how_many_more_calls_would_tell():
    config = load_config(profile="offline")  # medium -> standard; target 0.9 over at least 20
    s = suggest(config, evidence({"standard": (25, 25)}))
    assert s.suggested_tier == "standard"
    # 25 of 25 has the lower bound 0.87; n of n reaches 0.9 from n = 35 (n / (n + 1.96^2) >= 0.9).
    assert "not enough evidence yet" in s.reason and "about 10 more calls" in s.reason
    assert suggest(config, evidence({"standard": (35, 35)})).reason.startswith("keep standard: pass 1.00")


def test_suggest_moves_up_only_when_even_the_upper_bound_misses_the_target():
    config = load_config(profile="offline")
    assert suggest(config, evidence({"standard": (22, 25)})).suggested_tier == "standard"  # 0.88: high 0.96
    s = suggest(config, evidence({"standard": (15, 30)}))
    assert s.suggested_tier == "deep" and s.reason.startswith("move to deep: standard misses the target 0.90")
    assert wilson_high(15, 30) < 0.9 <= wilson_high(22, 25)
    # At the top there is nowhere to go: it is kept, saying so.
    top = suggest(config, evidence({"deep": (15, 30)}, complexity="high"))
    assert top.suggested_tier == "deep" and "no tier is above it" in top.reason


def test_a_bound_is_never_shown_on_the_other_side_of_the_target_than_it_is():
    config = load_config(profile="offline")  # target 0.9
    # 142 of 150 has the lower bound 0.898: shown as 0.90 it read as meeting the target it misses.
    assert 0.89 < wilson_low(142, 150) < 0.9
    s = suggest(config, evidence({"standard": (142, 150), "deep": (59, 59)}))
    assert s.suggested_tier == "deep" and "standard passes 0.95 (low 0.89)" in s.reason
    # 22 of 25: the upper bound is above the target, and is not shown below it.
    kept = suggest(config, evidence({"standard": (22, 25)}))
    assert f"high {math.ceil(wilson_high(22, 25) * 100) / 100:.2f}" in kept.reason


def test_wilson_upper_bound_mirrors_the_lower_one():
    assert wilson_high(0, 0) == 1.0
    for k, n in ((0, 10), (9, 10), (41, 41), (93, 100)):
        assert wilson_high(k, n) == pytest.approx(1 - hand_wilson(n - k, n))
