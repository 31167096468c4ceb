"""`tierflow routing suggest`, `scan`, `fit` and `explain`: which tier each phase (and each request) needs."""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from tierflow.cli.common import ConfigOpt, ProfileOpt, VaultOpt, fail, load, vault_dir
from tierflow.core.commands import tierflow_command

if TYPE_CHECKING:
    from tierflow.core.config import Config
    from tierflow.core.ledger import Ledger
    from tierflow.learn.lookup import Found, Request

routing_app = typer.Typer(
    help="Routing from evidence: pass rates per flow, phase and tier, and the cheapest tier that meets the target.",
    no_args_is_help=True,
)


class Format(StrEnum):
    table = "table"
    json = "json"


@routing_app.command("suggest")
def suggest_command(
    vault: VaultOpt = None,
    flow: Annotated[str | None, typer.Option(help="Only this flow (default: every flow in the ledger).")] = None,
    output: Annotated[Format, typer.Option("--format", help="table, or json (one array).")] = Format.table,
    apply: Annotated[
        bool, typer.Option("--apply", help="Write the changes into the vault's config as per-phase tiers.")
    ] = False,
    replace_pins: Annotated[
        bool,
        typer.Option(
            "--replace-pins",
            help="With --apply: also replace a phase's tier you wrote into [routing.phases] yourself (your line "
            "is kept as a comment). Without it, --apply replaces only the lines it wrote, and names your pins.",
        ),
    ] = False,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Per flow and phase: each tier's pass rate (with its 95% lower bound) and cost, and the suggested tier.

    A tier is suggested when it is the cheapest whose lower bound meets `[routing] target` (default 0.9) over at
    least `[routing] min_evidence` observations (default 20). Observations are every billed attempt's outcome,
    pairwise judge verdicts from trials, and the person's edits and ratings of drafts.
    """
    if replace_pins and not apply:
        raise fail("--replace-pins only changes what --apply writes: give both")
    vault = vault_dir(vault, required="tierflow routing suggest")
    cfg = load(vault, config, profile)
    from tierflow.core.ledger import Ledger
    from tierflow.learn import routing
    from tierflow.learn.signals import scan

    ledger = Ledger(cfg.ledger_url, reading=True)
    if vault is not None and ledger.writable:
        scan(vault, ledger)
    elif vault is not None:
        typer.echo(
            "The ledger is read-only here: drafts' edits and ratings count as of the last `tierflow routing scan` "
            "by someone who can write it.",
            err=True,
        )
    found = routing.suggestions(cfg, ledger, flow=flow)
    if output is Format.json:
        typer.echo(json.dumps([s.as_json() for s in found], indent=2))
    else:
        _table(found)
    if apply:
        changes, refused = routing.plan(found)
        target = cfg.path or (vault / ".tierflow" / "config.toml" if vault else None)
        if target is None:
            raise fail("--apply needs a config file: give --vault DIR or --config PATH")
        for reason in dict.fromkeys(r.reason for r in refused):  # one line per phase, not per suggestion
            typer.echo(reason, err=True)
        # A tier the person pinned themselves is theirs to change: left alone unless --replace-pins.
        pins = {} if replace_pins else routing.own_pins(target, {s.phase for s in changes})
        for phase, line in pins.items():
            tier = next(s.suggested_tier for s in changes if s.phase == phase)
            typer.echo(routing.pinned_message(target, phase, line, tier), err=True)
        changes = [s for s in changes if s.phase not in pins]
        if not changes:
            written = not refused and not pins
            done = "every phase is already on its suggested tier" if written else "no change could be written"
            typer.echo(f"Nothing applied: {done}.", err=True)
            return
        from tierflow.core.errors import ConfigError

        try:
            diff = routing.apply(target, changes, replace_pins=replace_pins)
        except ConfigError as exc:
            raise fail(str(exc)) from exc
        except OSError as exc:  # a vault shared read-only
            raise fail(
                f"cannot write {target} ({exc.strerror or exc}): run --apply with write access to it and its folder", 1
            ) from None
        typer.echo(diff, err=True)
        check = tierflow_command("config", "show", vault=vault, config=config, profile=profile)
        typer.echo(f"Applied {len(changes)} change(s) to {target}. Check with: {check}", err=True)


@routing_app.command("scan")
def scan_command(vault: VaultOpt = None, config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """Measure the person's edits and `tierflow_rating` of every draft tierflow wrote, as routing evidence."""
    vault = vault_dir(vault, required="tierflow routing scan")
    cfg = load(vault, config, profile)
    from tierflow.core.ledger import Ledger
    from tierflow.learn.signals import scan

    found = scan(vault, Ledger(cfg.ledger_url))  # type: ignore[arg-type]
    for s in found:
        verdict = {True: "pass", False: "fail", None: "neutral"}[s.passed]
        typer.echo(f"{s.note}\t{s.kind}\t{s.detail}\t{verdict}")
    typer.echo(f"{len(found)} signals from {len({s.note for s in found})} drafts.", err=True)
    linked = sum(s.request_id is not None and s.passed is not None for s in found)
    if linked:
        typer.echo(
            f"{linked} of them judge a known request's answer: the request router learns them at its next fit "
            "(tierflow routing fit).",
            err=True,
        )


@routing_app.command("fit")
def fit_command(
    vault: VaultOpt = None,
    output: Annotated[Format, typer.Option("--format", help="table, or json.")] = Format.table,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Fit the per-request router (`[routing] mode = "request"`) from the ledger's first answers, now.

    It also refits itself as outcomes arrive; this shows what it learned: per model (the tiers on it now), per tier
    and per phase, the first answers it was fitted on and their pass rate. It removes a `router.pkl` an earlier
    tierflow left beside the model, and says so.
    """
    vault = vault_dir(vault, required="tierflow routing fit")
    cfg = load(vault, config, profile)
    from tierflow.core.ledger import Ledger
    from tierflow.learn import request_router

    path = request_router.model_path(cfg)
    removed = request_router.retire_pickle(path)
    if removed is not None:
        typer.echo(
            f"Removed {removed}: a request router an earlier tierflow saved as a pickle (never loaded: a pickle can "
            f"run code); {path.name} replaces it.",
            err=True,
        )
    try:
        router = request_router.refit(cfg, Ledger(cfg.ledger_url, reading=True))
    except IsADirectoryError:  # not a matter of access: no write access would make it a file
        raise fail(
            f"cannot save the request router to {path}: it is a directory, and `tierflow routing fit` saves the "
            "model there as a file; move or remove that directory, then fit again",
            1,
        ) from None
    except OSError as exc:  # the model is saved beside the ledger: a folder shared read-only
        raise fail(
            f"cannot save the request router to {path} ({exc.strerror or exc}): `tierflow routing fit` saves it "
            f"beside the ledger; run it with write access to {path.parent}",
            1,
        ) from None
    request_router.forget()
    found = request_router.describe(router, cfg)
    if output is Format.json:
        typer.echo(json.dumps(found, indent=2))
    else:
        typer.echo(
            f"Fitted {found['fitted_at']} over {found['requests']} requests ({found['first_answers']} first answers)"
        )
        for tier, t in found["tiers"].items():
            learned = "no first answers yet" if t["pass_rate"] is None else _answers(t)
            typer.echo(f"  {tier} ({t['model']}): {learned}")
        for model, m in found["models"].items():
            if not m["tiers"]:
                typer.echo(f"  {model} (on no tier now): {_answers(m)}")
        for pair, g in found["gains"].items():
            typer.echo(f"  {pair}: {g['pairs']} requests answered by both ({g['kind']}), rate {g['rate']:.2f}")
        if found["signal_labels"]:
            typer.echo(f"  labelled by signals: {found['signal_labels']}")
        for row in found["phases"]:
            on = f" ({', '.join(row['tiers'])})" if row["tiers"] else ""
            typer.echo(f"  {row['phase']} · {row['model']}{on}: {_answers(row)}")
    typer.echo(f"Saved to {path}", err=True)


def _answers(found: dict) -> str:
    return f"{found['first_answers']} first answers, pass {found['pass_rate']:.2f}"


@routing_app.command("explain")
def explain_command(
    request: Annotated[
        str | None,
        typer.Argument(
            metavar="REQUEST|NOTE",
            help="A request id, or the start of one as --run lists it; or a draft note: its path (in the vault, or "
            "from here) or its name, as a link names it.",
            show_default=False,
        ),
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(
            "--run",
            help="List this run's requests, one a line, to pick one: id, flow, phase, subject, the tiers that "
            "answered it, the last answer's outcome, the draft note written from it. A note's run is its "
            "`tierflow_run`; `tierflow spend --by run` lists the runs.",
            show_default=False,
        ),
    ] = None,
    vault: VaultOpt = None,
    output: Annotated[Format, typer.Option("--format", help="table, or json.")] = Format.table,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Why a request went where it went: the rule each answer was given, and where it would go now.

    Name the request by the draft note written from its answer (a concept draft or a student's feedback draft:
    `Concepts/Drafts/Feedback.md`, or `Feedback` as a link names it), or by its id; `--run RUN` lists a run's
    requests with their ids.
    """
    vault = vault_dir(vault, required="tierflow routing explain")
    cfg = load(vault, config, profile)
    from tierflow.core.commands import tierflow_command
    from tierflow.core.ledger import Ledger
    from tierflow.learn import lookup, request_router

    def command(*words: str) -> str:
        return tierflow_command(*words, vault=vault, config=config, profile=profile)

    ledger = Ledger(cfg.ledger_url, reading=True)
    if run is not None and request is not None:
        raise fail("give a request (or a draft note), or --run RUN to list a run's requests: not both")
    if run is not None:
        _list_run(ledger, run, output, command)
        return
    if request is None:
        raise fail(f"give a draft note or a request id, or --run RUN: {_where_to_look(ledger, command)}")
    assert vault is not None  # required above
    found = lookup.find(ledger, vault, request)
    if len(found.request_ids) > 1:
        if found.matching > 1:
            said = f"{found.matching} requests have an id starting with {request!r}: give more of it"
        else:  # a note and an id, or a note whose run sent two requests under its subject
            said = f"{request!r} may mean {len(found.request_ids)} requests: give one's id"
        if found.matching > len(found.request_ids):
            said += f" (the first {len(found.request_ids)} are listed)"
        _listed_failure(
            f"{said}; each is listed by an id that tells it apart:", lookup.describe(ledger, found.request_ids)
        )
    if not found.request_ids:
        raise fail(_missed(request, found, vault, ledger, command))
    found_request = request_router.stored_request(ledger, found.request_ids[0])
    if found_request is None:  # a draft's request whose text the ledger does not keep (recorded before version 15)
        raise fail(
            f"the ledger keeps no text for request {found.request_ids[0][: lookup.SHORT]}, which {found.note} was "
            f"written from: {_where_to_look(ledger, command, found.run_id)}"
        )
    # Given an id, the draft written from it is named all the same (the concept drafts the ledger remembers).
    note = found.note or next((r.note for r in lookup.describe(ledger, found.request_ids)), None)
    _explain(cfg, ledger, found_request, note, output)


def _explain(cfg: Config, ledger: Ledger, found: dict, note: str | None, output: Format) -> None:
    """Print why the request went where it went, and where it would go now: routed by the call path itself
    (`Caller.build`), so that a request its tier's context window cannot take is shown where it would really go,
    or refused, as a run would route it."""
    from tierflow.core.calls import Caller, RunSettings
    from tierflow.core.context import overflow
    from tierflow.core.routing import value_of
    from tierflow.learn import request_router

    flow, phase, complexity = found["flow"] or "", found["phase"] or "", found["complexity"] or "medium"
    value = value_of(cfg, flow=flow, phase=phase)
    decision = request_router.decide(
        cfg, request_router.current(cfg, ledger), flow=flow, phase=phase, complexity=complexity,
        text=found["text"], value=value,
    )  # fmt: skip
    # The ledger keeps the request's prompt (not its system prompt or output schema): it is counted on that.
    caller = Caller(RunSettings(flow=flow, project=cfg.project_for()), cfg, ledger)
    routed, request = caller.build(phase=phase, complexity=complexity, system="", prompt=found["text"])
    refused = overflow(cfg, routed, caller.estimate(routed, request).prompt_tokens)
    result = {
        **{k: found[k] for k in ("request_id", "flow", "phase", "complexity")},
        "note": note,
        **{k: found[k] for k in ("answers", "signals")},
        "text": found["text"][:500],
        "now": {"tier": routed.tier, "rule": routed.rule, "refused": refused, "target": round(decision.target, 4),
                "value": decision.value, "p_suffices": {t: round(p, 4) for t, p in decision.probabilities.items()}},
    }  # fmt: skip
    if output is Format.json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    written = f" · {note}" if note else ""
    typer.echo(f"{found['flow']} · {found['phase']} · request {found['request_id'][:12]}{written}")
    for a in found["answers"]:
        answered = f"{a['provider']}:{a['model']}, attempt {a['attempt']}, {a['outcome']}"
        typer.echo(f"  answered on {a['tier']} ({answered}): {a['route_rule']}")
    for s in found["signals"]:
        verdict = {True: "pass", False: "fail", None: "neutral"}[s["passed"]]
        typer.echo(f"  {s['kind']} of the {s['tier']} answer: {verdict} ({s['detail']})")
    if refused:
        typer.echo(f"  now: refused before sending, on {routed.tier}: {refused} ({routed.rule})")
    else:
        typer.echo(f"  now: {routed.tier}: {routed.rule}")


def _list_run(ledger: Ledger, run: str, output: Format, command: Callable[..., str]) -> None:
    """`explain --run RUN`: the run's requests on stdout, one a line (or a JSON array); what they are on stderr."""
    from tierflow.learn import lookup

    found, unnamed = lookup.requests_of_run(ledger, run)
    unnamed_note = (
        f"{unnamed} of its calls name no request (answers replayed from the answer cache or collected from a "
        "provider batch, attempts whose answer was lost, calls recorded before requests were kept): there is "
        "nothing to explain for them"
    )
    if not found and unnamed:
        raise fail(f"run {run}: {unnamed_note}; {_where_to_look(ledger, command)}")
    if not found:
        raise fail(f"no call of run {run!r} is in the ledger: `{command('spend', '--by', 'run')}` lists the runs")
    if output is Format.json:
        typer.echo(json.dumps([r.as_json() for r in found], indent=2, ensure_ascii=False))
    else:
        for r in found:
            typer.echo(r.line())
    typer.echo(
        f"{len(found)} requests of run {run} (id, flow, phase, subject, tiers that answered, outcome, draft note); "
        f"`{command('routing', 'explain', found[0].request_id[: lookup.SHORT])}` explains the first.",
        err=True,
    )
    if unnamed:
        typer.echo(f"{unnamed_note[0].upper()}{unnamed_note[1:]}.", err=True)


def _listed_failure(message: str, found: list[Request]) -> NoReturn:
    """Fail with `message`, then the requests it means on stderr, each by the shortest id that tells it apart."""
    from tierflow.learn.lookup import SHORT

    width = SHORT
    while len({r.request_id[:width] for r in found}) < len(found):
        width += 1
    ended = fail(message)
    for r in found:
        typer.echo(r.line(width), err=True)
    raise ended


def _missed(words: str, found: Found, vault: Path, ledger: Ledger, command: Callable[..., str]) -> str:
    """What was looked for and not found, and the command that lists the requests to pick from."""
    if found.outside:
        return f"{words} is outside the vault {vault}: give a note in it, or a request id"
    if found.notes:
        shown = ", ".join(found.notes[:5]) + (", ..." if len(found.notes) > 5 else "")
        return f"{words!r} names {len(found.notes)} notes ({shown}): give the one you mean by its path in the vault"
    from tierflow.learn.lookup import has_run

    if found.note is None and has_run(ledger, words):
        return f"{words} is a run: `{command('routing', 'explain', '--run', words)}` lists its requests"
    if found.note is None:
        hexadecimal = all(c in "0123456789abcdefABCDEF" for c in words) and words
        what = (f"no request id starts with {words!r}, and " if hexadecimal else "") + (
            f"no draft note {words!r} is in the ledger or the vault"
        )
    elif found.unlinked:
        what = (
            f"the ledger remembers the draft {found.note} but not the request it was written from (an earlier "
            "tierflow's draft, whose request could not be recovered)"
        )
    elif not found.written_by_tierflow or found.run_id is None:
        what = f"{found.note} is not a draft a run wrote: its front-matter has no `tierflow_run`"
    else:
        what = (
            f"run {found.run_id} wrote {found.note}, but no `draft` request of that run is named after it (by its "
            "title, or its student): a run's report or summary comes from many requests, and an answer replayed "
            "from the answer cache or collected from a provider batch names none"
        )
    return f"{what}: {_where_to_look(ledger, command, found.run_id)}"


def _where_to_look(ledger: Ledger, command: Callable[..., str], run: str | None = None) -> str:
    """The commands that list the requests to pick from: the run's, else the newest run's and every run."""
    from tierflow.learn.lookup import newest_run

    if run:
        return f"`{command('routing', 'explain', '--run', run)}` lists that run's requests"
    newest = newest_run(ledger)
    if newest is None:
        return "the ledger holds no request yet (each request a run sends is kept from the ledger's version 15 on)"
    return (
        f"`{command('routing', 'explain', '--run', newest)}` lists the requests of the last run that sent any, and "
        f"`{command('spend', '--by', 'run')}` lists every run"
    )


def _table(found: list) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    from tierflow.core.evidence import shown_low

    table = Table(title="Routing suggestions (pass rate, 95% lower bound, observations, USD per call)")
    for column in ("flow", "phase", "complexity", "current", "suggested", "evidence", "reason"):
        table.add_column(column, overflow="fold")
    for s in found:
        evidence = "\n".join(
            f"{tier}: {e.pass_rate:.2f} (low {shown_low(e.pass_rate_low)}) n={e.calls}"
            + (f" ${e.cost_per_call_usd:.5f}" if e.cost_per_call_usd is not None else "")
            for tier, e in s.evidence.items()
        )
        table.add_row(s.flow, s.phase, s.complexity, s.current_tier, s.suggested_tier, evidence, s.reason)
    # Never truncate identifiers, piped or not.
    Console(width=max(160, Console().width)).print(table)
