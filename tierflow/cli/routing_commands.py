"""`tierflow routing suggest`, `scan`, `fit` and `explain`: which tier each phase (and each request) needs."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer

from tierflow.cli.common import ConfigOpt, ProfileOpt, VaultOpt, fail, load, vault_dir
from tierflow.core.commands import tierflow_command

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
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Per flow and phase: each tier's pass rate (with its 95% lower bound) and cost, and the suggested tier.

    A tier is suggested when it is the cheapest whose lower bound meets `[routing] target` (default 0.9) over at
    least `[routing] min_evidence` observations (default 20). Observations are every billed attempt's outcome,
    pairwise judge verdicts from trials, and the person's edits and ratings of drafts.
    """
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
        if not changes:
            done = "every phase is already on its suggested tier" if not refused else "no change could be written"
            typer.echo(f"Nothing applied: {done}.", err=True)
            return
        from tierflow.core.errors import ConfigError

        try:
            diff = routing.apply(target, changes)
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
    request: Annotated[str, typer.Argument(help="A request id (or a unique prefix) from the ledger's `request_id`.")],
    vault: VaultOpt = None,
    output: Annotated[Format, typer.Option("--format", help="table, or json.")] = Format.table,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Why a request went where it went: the rule each answer was given, and what the router predicts for it now."""
    vault = vault_dir(vault, required="tierflow routing explain")
    cfg = load(vault, config, profile)
    from tierflow.core.ledger import Ledger
    from tierflow.core.routing import value_of
    from tierflow.learn import request_router

    ledger = Ledger(cfg.ledger_url, reading=True)
    found = request_router.stored_request(ledger, request)
    if found is None:
        raise fail(f"no single request with id {request!r} in the ledger: give more of the id")
    value = value_of(cfg, flow=found["flow"] or "", phase=found["phase"] or "")
    decision = request_router.decide(
        cfg, request_router.current(cfg, ledger), flow=found["flow"] or "", phase=found["phase"] or "",
        complexity=found["complexity"] or "medium", text=found["text"], value=value,
    )  # fmt: skip
    result = {
        **{k: found[k] for k in ("request_id", "flow", "phase", "complexity", "answers", "signals")},
        "text": found["text"][:500],
        "now": {"tier": decision.tier, "rule": decision.rule, "target": round(decision.target, 4),
                "value": decision.value, "p_suffices": {t: round(p, 4) for t, p in decision.probabilities.items()}},
    }  # fmt: skip
    if output is Format.json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    typer.echo(f"{found['flow']} · {found['phase']} · request {found['request_id'][:12]}")
    for a in found["answers"]:
        answered = f"{a['provider']}:{a['model']}, attempt {a['attempt']}, {a['outcome']}"
        typer.echo(f"  answered on {a['tier']} ({answered}): {a['route_rule']}")
    for s in found["signals"]:
        verdict = {True: "pass", False: "fail", None: "neutral"}[s["passed"]]
        typer.echo(f"  {s['kind']} of the {s['tier']} answer: {verdict} ({s['detail']})")
    typer.echo(f"  now: {decision.tier or '(phase evidence or the rules)'}: {decision.rule}")


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
