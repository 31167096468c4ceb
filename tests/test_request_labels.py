"""Judge verdicts, the lecturer's edits and ratings as outcome labels for the per-request router: each signal is
linked to the request and tier of the answer it judges when it is recorded (and, for rows an older tierflow stored,
where the ledger can tell), and the router learns from it. Through the real Anthropic SDK on the wire double, with
real SQLite and PostgreSQL ledgers."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import frontmatter
import pytest
import sqlalchemy as sa
from conftest import anthropic_config, call_record, run_reading_week_on_double, write_config
from test_request_router import CHECK, Out
from test_request_router import easy as plain
from test_request_router import hard as dense
from typer.testing import CliRunner

from tierflow.core.calls import Caller, RunSettings
from tierflow.core.ledger import MIGRATIONS, Ledger, calls, drafts, schema_version, signals
from tierflow.core.routing import route_to_tier
from tierflow.learn import request_router
from tierflow.learn.signals import scan
from tierflow.testing.double import Reply


@pytest.fixture(autouse=True)
def _fresh_router():
    request_router.forget()
    yield
    request_router.forget()


def answers(ledger: Ledger, **where: str) -> list:
    """The ledger's call rows, with their request ids (`Ledger.rows` leaves those out)."""
    query = sa.select(calls).where(*[calls.c[k] == v for k, v in where.items()]).order_by(calls.c.id)
    with ledger.reading() as conn:
        return conn.execute(query).all()


def _app():
    from tierflow.cli.app import app

    return app


def test_label_rule_a_human_edit_outranks_a_check_pass_and_a_good_rating_a_judges_loss():
    from tierflow.learn.labels import Label, Signal, label

    edit_fail, edit_pass = Signal("edit", False, "r", "t"), Signal("edit", True, "r", "t")
    good, bad = Signal("rating", True, "r", "t"), Signal("rating", False, "r", "t")
    win, loss = Signal("judge", True, "t", "t"), Signal("judge", False, "t", "t")
    assert label(True, []) == Label(True, "checks")
    assert label(True, [edit_fail]) == Label(False, "edit", 1)  # the lecturer's rewrite outranks the checks
    assert label(True, [win, edit_fail]) == Label(False, "edit", 2)  # ... and a judge's win
    assert label(True, [loss]) == Label(False, "judge", 1)  # a judge's loss outranks the checks
    assert label(True, [loss, good]) == Label(True, "rating", 2)  # a good rating outranks a judge's loss
    assert label(True, [loss, edit_pass]) == Label(False, "judge", 2)  # ... a note nobody changed does not
    assert label(True, [edit_pass]) == Label(True, "edit", 1)
    assert label(True, [edit_fail, good]).passed is False  # within a rank, a fail outweighs a pass
    assert label(True, [edit_pass, bad]).passed is False
    assert label(False, [edit_pass, good, win]) == Label(False, "checks", 3)  # a pass never overturns a failed check


def test_a_first_answer_that_passed_its_checks_is_learned_as_a_fail_once_the_lecturer_rewrote_its_note(
    tmp_path, monkeypatch, double, reading_vault, prefect_harness
):
    summary = run_reading_week_on_double(reading_vault, double, monkeypatch)
    rewritten_path, kept_path, *_ = sorted(w.path for w in summary.written)
    ledger = Ledger.for_vault(reading_vault)

    def draft_answer(note: str) -> tuple[str, str]:
        """The request id and tier of the draft call whose answer the note was written from, from the ledger."""
        title = frontmatter.load(reading_vault / note)["title"]
        (row,) = answers(ledger, phase="draft", subject=title, outcome="ok")
        return row.request_id, row.tier

    def learned(request_id: str, tier: str) -> list[bool]:
        return [o.passed for o in request_router.observations(ledger) if (o.request_id, o.tier) == (request_id, tier)]

    rewritten, kept = draft_answer(rewritten_path), draft_answer(kept_path)
    assert learned(*rewritten) == [True] and learned(*kept) == [True]  # both passed their checks
    note = frontmatter.load(reading_vault / rewritten_path)
    note.content = "My own view, entirely rewritten: feedback is a dialogue between teacher and student."
    (reading_vault / rewritten_path).write_text(frontmatter.dumps(note))

    scan(reading_vault, ledger)
    with ledger.reading() as conn:
        linked = {
            r.note: (r.request_id, r.tier, r.passed)
            for r in conn.execute(sa.select(signals).where(signals.c.kind == "edit"))
        }
    assert linked[rewritten_path] == (*rewritten, False)  # linked to the draft call's request and tier
    assert linked[kept_path] == (*kept, True)
    assert learned(*rewritten) == [False]  # the rewrite outranks the checks' pass
    assert learned(*kept) == [True]
    observed, by_source = request_router.labelled(ledger)
    assert by_source["edit"] == len(summary.written) and by_source["overturned"] == 1


def essays_history(tmp_path: Path, monkeypatch, double) -> Path:
    """A vault whose ledger holds 6 passed `essays draft` answers on standard (what a trial replays)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    vault = tmp_path / "vault"
    vault.mkdir()
    config = write_config(vault / ".tierflow" / "config.toml", anthropic_config(double))
    double.responder = lambda r: Reply(data={"ok": True})
    c = Caller(RunSettings(vault=str(vault), config_path=str(config), run_id="history", flow="essays"))
    for i in range(6):
        c.ask(phase="draft", complexity="medium", system="Draft.", prompt=plain(i), output=Out, subject=f"essay {i}")
    return vault


def test_a_judge_verdict_labels_the_answer_it_judged(tmp_path, monkeypatch, double):
    from responders import schema_name

    from tierflow.offline import prompt_data

    vault = essays_history(tmp_path, monkeypatch, double)

    def deep_wins(request):
        """Every tier's answer passes the checks; the judge prefers the deep model's answer in both orders."""
        if schema_name(request) != "judgeout":
            return Reply(data={"ok": True, "by": request.model})
        data = prompt_data(request.last_user_text)
        return Reply(data={"better": "A" if "opus" in data["answer_a"] else "B", "reason": "deep is better"})

    double.responder = deep_wins
    result = CliRunner().invoke(
        _app(), ["trial", "essays", "--phase", "draft", "--tiers", "light,deep", "--sample", "4", "--vault", str(vault)]
    )
    assert result.exit_code == 0, result.output
    ledger = Ledger.for_vault(vault)
    trial_answers = {(r.request_id, r.tier) for r in answers(ledger, flow="trial:essays", phase="draft")}
    with ledger.reading() as conn:
        verdicts = conn.execute(sa.select(signals).where(signals.c.kind == "judge")).all()
    assert len(verdicts) == 4 and all(v.passed is False and v.tier == "light" for v in verdicts)
    assert {(v.request_id, v.tier) for v in verdicts} <= trial_answers  # each names the answer it judged
    observed = [o for o in request_router.observations(ledger) if (o.flow, o.phase) == ("trial:essays", "draft")]
    assert sorted((o.tier, o.passed) for o in observed) == [("deep", True)] * 4 + [("light", False)] * 4
    assert all(r.outcome == "ok" for r in answers(ledger, flow="trial:essays", phase="draft"))


REQUEST_MODE = '[routing]\nmode = "request"\nmin_requests = 20\nmin_evidence = 1000\n'


def test_the_lecturers_rewrites_send_a_near_identical_request_to_the_deeper_tier(
    tmp_path, monkeypatch, double, ledger_url
):
    """Light's answers pass their checks on every request, so the router keeps all of them on light; the lecturer
    then rewrites every note written from a dense annotation, and the refitted router sends a new dense annotation
    to standard, saying how many answers signals labelled."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    double.responder = lambda r: Reply(data={"ok": True})
    vault = tmp_path / "vault"
    (vault / "Drafts").mkdir(parents=True)
    path = write_config(
        vault / ".tierflow" / "config.toml", f"ledger_url = {json.dumps(ledger_url)}\n" + anthropic_config(double)
    )
    history = Caller(RunSettings(vault=str(vault), config_path=str(path), run_id="history", flow="reading-notes"))
    standard = route_to_tier(history.config, phase="collate", complexity="low", tier="standard", rule="history")
    for i in range(30):
        for kind, text in (("plain", plain(i)), ("dense", dense(i))):
            answer = history.ask(
                phase="collate", complexity="low", system="Collate.", prompt=text, output=Out, checks=[CHECK]
            )
            assert answer.route.tier == "light" and answer.outcome == "ok"
            history.ask(
                phase="collate", complexity="low", system="Collate.", prompt=text, output=Out, checks=[CHECK],
                routed=standard,
            )  # fmt: skip
            note = f"Drafts/{kind} {i}.md"
            body = f"Collated from {text.splitlines()[0]}: the reading's highlights, in order."
            (vault / note).write_text(body + "\n")
            history.ledger.remember_draft(
                note, body, run_id="history", flow="reading-notes", phase="collate", subject=f"{kind} {i}",
                tier=answer.route.tier, model=answer.route.model_ref, request_id=answer.request_id,
            )  # fmt: skip

    def routed_now() -> tuple[str, str]:
        fitted = CliRunner().invoke(_app(), ["routing", "fit", "--vault", str(vault), "--format", "json"])
        assert fitted.exit_code == 0, fitted.output
        request_router.forget()
        return routed(vault, path, ledger_url, double, dense(500))

    scan(vault, history.ledger)  # every note as written: the signals say light's answers passed
    tier, rule = routed_now()
    assert tier == "light" and "60 answers labelled by judge, edit or rating signals (0 failed by them)" in rule

    for i in range(30):
        (vault / f"Drafts/dense {i}.md").write_text("Rewritten by the lecturer: the sources disagree, and why.\n")
    scan(vault, history.ledger)
    tier, rule = routed_now()
    assert tier == "standard" and "60 answers labelled by judge, edit or rating signals (30 failed by them)" in rule
    assert rule.startswith("request: P(standard)=")
    assert routed(vault, path, ledger_url, double, plain(500))[0] == "light"  # a plain highlight stays on light

    # `explain` shows the signals that judged a dense request's answers.
    write_config(path, f"ledger_url = {json.dumps(ledger_url)}\n" + anthropic_config(double, REQUEST_MODE))
    request_id = next(o.request_id for o in request_router.observations(history.ledger) if o.text == dense(3))
    explained = CliRunner().invoke(
        _app(), ["routing", "explain", request_id[:16], "--vault", str(vault), "--format", "json"]
    )
    assert explained.exit_code == 0, explained.output
    why = json.loads(explained.stdout)
    assert [(s["kind"], s["tier"], bool(s["passed"])) for s in why["signals"]] == [("edit", "light", False)]
    assert why["now"]["tier"] == "standard" and "30 failed by them" in why["now"]["rule"]


_RUNS = itertools.count()


def routed(vault: Path, path: Path, ledger_url: str, double, text: str) -> tuple[str, str]:
    """The tier and rule `[routing] mode = "request"` gives `text` now, in a run of its own (a run keeps the router
    of its first routed call); the config goes back to the rules after."""
    write_config(path, f"ledger_url = {json.dumps(ledger_url)}\n" + anthropic_config(double, REQUEST_MODE))
    try:
        run_id = f"warm-{next(_RUNS)}"
        c = Caller(RunSettings(vault=str(vault), config_path=str(path), run_id=run_id, flow="reading-notes"))
        chosen = c.route("collate", "low", prompt=text)
        return chosen.tier, chosen.rule
    finally:
        write_config(path, f"ledger_url = {json.dumps(ledger_url)}\n" + anthropic_config(double))


def test_links_of_signals_stored_before_version_16_are_recovered_where_the_ledger_can_tell(ledger_url):
    ledger = Ledger(ledger_url)
    ledger.record(call_record(run_id="w1", phase="draft", tier="standard", subject="Feedback", request_id="req-a"))
    ledger.record(call_record(run_id="w1", phase="draft", tier="standard", subject="Twice", request_id="req-b"))
    ledger.record(call_record(run_id="w1", phase="draft", tier="standard", subject="Twice", request_id="req-c"))
    ledger.record(call_record(run_id="w2", phase="draft", tier="standard", subject="Cached", cached_result=True))
    ledger.record(call_record(run_id="t1", phase="draft", tier="light", subject="trial 0a1b on light", request_id="q"))
    old = {"timestamp": "2026-11-20T10:00:00+00:00", "flow": "f", "phase": "draft", "model": "m"}
    notes = (("Feedback.md", "w1", "Feedback"), ("Twice.md", "w1", "Twice"), ("C.md", "w2", "Cached"))
    with ledger.transaction() as conn:
        for note, run, subject in notes:
            common = {**old, "note": note, "run_id": run, "subject": subject, "tier": "standard"}
            conn.execute(drafts.insert().values(**{k: v for k, v in common.items() if k != "timestamp"}, text="x"))
            for kind in ("edit", "rating"):
                conn.execute(signals.insert().values(**common, kind=kind, passed=False))
        judged = {"kind": "judge", "tier": "light", "run_id": "t1", "passed": False}
        conn.execute(signals.insert().values(**old, **judged, subject="trial 0a1b against deep"))
        conn.execute(signals.insert().values(**old, kind="shadow", tier="light", run_id="t1", passed=None))
        # As a ledger before version 16 holds them: nothing linked, migration 16 (and any after it) not yet run.
        conn.execute(signals.update().values(request_id=None))
        conn.execute(drafts.update().values(request_id=None))
        conn.execute(schema_version.delete().where(schema_version.c.version >= 16))

    migrated = Ledger(ledger_url)
    assert migrated.version == len(MIGRATIONS)
    with migrated.reading() as conn:
        linked = {(r.kind, r.note or r.subject): r.request_id for r in conn.execute(sa.select(signals))}
        drafted = {r.note: r.request_id for r in conn.execute(sa.select(drafts))}
        assert conn.execute(sa.select(sa.func.count()).select_from(calls)).scalar() == 5
    assert drafted == {"Feedback.md": "req-a", "Twice.md": None, "C.md": None}
    assert linked == {
        ("edit", "Feedback.md"): "req-a",
        ("rating", "Feedback.md"): "req-a",
        ("edit", "Twice.md"): None,  # two requests of that subject in the run: cannot tell which
        ("rating", "Twice.md"): None,
        ("edit", "C.md"): None,  # answered from the answer cache: the row carries no request id
        ("rating", "C.md"): None,
        ("judge", "trial 0a1b against deep"): "q",  # the candidate's call in the trial run
        ("shadow", None): None,
    }
