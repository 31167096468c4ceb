"""`tierflow rubric show` and `tierflow rubric normalise`: see what tierflow read, or have the light tier rewrite it.

Registered in `tierflow.cli.app` with `app.add_typer(rubric_app, name="rubric")`.
"""

from __future__ import annotations

import json
from enum import StrEnum
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

import typer

from tierflow.cli.common import ConfigOpt, ProfileOpt, VaultOpt, fail, load, vault_dir
from tierflow.core.commands import tierflow_command
from tierflow.vault.text import load_note, parse_note

rubric_app = typer.Typer(
    help="The assignment's rubric: what tierflow reads from it, and a light-tier rewrite when it cannot.",
    no_args_is_help=True,
)

AssignmentOpt = Annotated[
    str | None,
    typer.Option(
        "--assignment", "-a", help="The assignment folder (default: the config's feedback.assignment_folder)."
    ),
]
PHASE = "normalise"
COMPLEXITY = "low"


class ShowFormat(StrEnum):
    table = "table"
    json = "json"


def _folder(cfg, vault: Path, assignment: str | None) -> str:  # noqa: ANN001
    """The assignment folder relative to the vault, refused as `run` and `plan` refuse it: unset, or outside."""
    from tierflow.core.errors import VaultError
    from tierflow.tasks.assignment import inside_vault

    try:
        return inside_vault(vault, assignment or cfg.settings.feedback.assignment_folder)[1]
    except VaultError as exc:
        raise fail(str(exc)) from None


@rubric_app.command("show")
def show(
    assignment: AssignmentOpt = None,
    vault: VaultOpt = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    fmt: Annotated[ShowFormat, typer.Option("--format", "-f", help="table or json.")] = ShowFormat.table,
) -> None:
    """Print the parsed rubric (criteria, weights, levels, score ranges) before anything is spent."""
    from tierflow.lms.marks import WITHOUT_SCORE, counts_as, marking, without_score
    from tierflow.vault.rubric import RubricError, load_rubric

    vault = vault_dir(vault, required="tierflow rubric show --assignment FOLDER") or Path(".")
    cfg = load(vault, config, profile)
    folder = _folder(cfg, vault, assignment)
    try:
        rubric = load_rubric(vault, f"{folder}/rubric.md")
    except RubricError as exc:
        raise fail(str(exc)) from None
    shares = rubric.shares()
    marks = marking(rubric)
    if fmt is ShowFormat.json:
        typer.echo(
            json.dumps(
                {
                    "path": rubric.path,
                    "title": rubric.title,
                    "shape": rubric.shape,
                    "warnings": list(rubric.warnings),
                    "marks": {
                        "how": marks.how,
                        "out_of": float(marks.scale),
                        "warnings": list(marks.warnings),
                        "problem": marks.problem,
                    },
                    "criteria": [
                        {
                            "name": c.name,
                            "weight": str(c.weight) if c.weight else None,
                            "share": round(shares[c.name], 4),
                            "levels": [
                                {
                                    "name": lvl.name,
                                    "range": str(lvl.score) if lvl.score else None,
                                    "low": lvl.score.low if lvl.score else None,
                                    "high": lvl.score.high if lvl.score else None,
                                    "without_score": _float(counts_as(c, lvl, marks)),
                                    "descriptor": lvl.descriptor,
                                }
                                for lvl in c.levels
                            ],
                        }
                        for c in rubric.criteria
                    ],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{escape(rubric.title)}[/]: {rubric.path}, read as {rubric.shape}", highlight=False)
    for number, c in enumerate(rubric.criteria, start=1):
        weight = f"{c.weight}, " if c.weight else "no weight given, "
        table = Table(
            title=f"{number}. {escape(c.name)} ({weight}{shares[c.name]:.0%} of the feedback)",
            title_justify="left",
            expand=True,
        )
        table.add_column("level", no_wrap=True)
        table.add_column("range", no_wrap=True)
        table.add_column("without a score", no_wrap=True)
        table.add_column("descriptor", ratio=1)
        for lvl in c.levels:
            table.add_row(
                escape(lvl.name),
                str(lvl.score) if lvl.score else "-",
                without_score(c, lvl, marks),
                escape(lvl.descriptor),
            )
        console.print(table)
    typer.echo(WITHOUT_SCORE)
    typer.echo(f"marks: {marks.how}")  # one line, unwrapped: it is read whole
    for warning in (*rubric.warnings, *marks.warnings):
        typer.echo(f"warning: {warning}", err=True)
    if marks.problem:
        typer.echo(f"error: no marks can be worked out from this rubric (export refuses it): {marks.problem}", err=True)


def _float(value: Fraction | None) -> float | None:
    return None if value is None else float(value)


@rubric_app.command("normalise")
def normalise(
    assignment: AssignmentOpt = None,
    vault: VaultOpt = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Ask the tier `low` complexity routes to (light by default) to rewrite an unparseable rubric.md into
    rubric.normalised.md, for you to check."""
    from tierflow.core.errors import TierflowError

    vault = vault_dir(vault, required="tierflow rubric normalise --assignment FOLDER")
    cfg = load(vault, config, profile)
    folder = _folder(cfg, vault, assignment)
    try:
        written, answer = normalise_rubric(vault, folder, config=config, profile=profile)
    except TierflowError as exc:
        raise fail(str(exc)) from None
    cost = "unknown cost" if answer.cost_usd is None else f"${answer.cost_usd:.6f}"
    typer.echo(f"{written.action}: {vault / written.path}" + (f"\n  {written.message}" if written.message else ""))
    typer.echo(
        f"Check it against rubric.md, correct anything that is wrong, then set `status: checked` in its "
        f"front-matter; until then a feedback run refuses it. ({answer.route.model_ref}, {cost})"
    )


def normalise_rubric(vault: Path, folder: str, *, config: Path | None = None, profile: str | None = None):  # noqa: ANN201
    """The rewrite, through `Caller.ask` (routed, budgeted, recorded), written beside the rubric."""
    from tierflow.core.calls import Caller, RunSettings, new_run_id
    from tierflow.core.config import load_config
    from tierflow.flowkit.checks import rubric_rewrite
    from tierflow.tasks.assignment import folder_pseudonyms
    from tierflow.vault.links import VaultNames, wikilink_can_name
    from tierflow.vault.notes import NoteWriter, template_env
    from tierflow.vault.rubric import (
        NORMALISED,
        RubricError,
        RubricOut,
        parse_rubric,
        read_rubric_text,
        rubric_from_out,
        source_hash,
    )

    relpath = f"{folder}/rubric.md"
    path = vault / relpath
    if not path.is_file():
        raise RubricError(f"{relpath}: no rubric found; put the lecturer's rubric there first")
    text = read_rubric_text(path, relpath)
    try:
        parsed = parse_rubric(text, relpath)
    except RubricError:
        parsed = None
    if parsed is not None:
        show = tierflow_command("rubric", "show", "--assignment", folder, vault=vault, config=config, profile=profile)
        raise RubricError(
            f"{relpath} already parses ({len(parsed.criteria)} criteria, read as {parsed.shape}); nothing to "
            f"normalise. See what was read with `{show}`."
        )
    target = path.with_name(NORMALISED)
    if target.is_file():
        status = str(load_note(target).metadata.get("status") or "")
        if status.strip().lower() == "checked":
            raise RubricError(
                f"{folder}/{NORMALISED} is already checked; tierflow will not replace it. "
                "Delete it (or set `status: unchecked`) to normalise again."
            )
    loaded = load_config(vault, config_path=config, profile=profile)
    settings = RunSettings(
        vault=str(vault),
        config_path=str(config) if config else None,
        profile=profile,
        run_id=new_run_id(loaded.settings.vault.timezone),
        flow="rubric-normalise",
    )
    caller = Caller(settings, loaded)
    env = template_env(caller.config.vault, caller.config.settings.vault.templates_folder)
    # A rubric names students too ("like Priya Sharma's exemplar"): hidden as in a run, and given back in the file.
    pseudonyms = folder_pseudonyms(vault, folder, caller.config)
    body = pseudonyms.hide(parse_note(text).content)
    answer = caller.ask(
        phase=PHASE,
        complexity=COMPLEXITY,
        system=env.get_template("prompts/rubric/system.j2").render(),
        prompt=env.get_template("prompts/rubric/normalise.j2").render(path=relpath, data={"rubric": body}),
        output=RubricOut,
        subject=relpath,
        checks=[rubric_rewrite],
    )
    title = str(parse_note(text).metadata.get("title") or "Rubric")
    out = RubricOut.model_validate(_revealed(answer.parsed.model_dump(), pseudonyms))
    rubric = rubric_from_out(out, f"{folder}/{NORMALISED}", title)
    markdown = rubric.as_markdown()
    again = parse_rubric(markdown, rubric.path)  # the canonical shape always reads back; fail loudly if not
    if again.criteria != rubric.criteria:
        raise RubricError(f"{rubric.path}: the rewrite did not read back as written; nothing was written")
    writer = NoteWriter(vault, folder, today=caller.config.today())
    names = writer.names or VaultNames.scan(vault)
    # By its whole path, not its name alone: every assignment has a rubric.md. A path no wikilink can hold
    # (`Teaching/C# 101`: Obsidian reads `#` as a heading) becomes a Markdown link (`VaultNames.link`).
    original = Path(relpath).as_posix()
    original = original.removesuffix(".md") if wikilink_can_name(original) else original
    callout = (
        f"> [!warning] Written by tierflow's {answer.route.tier} tier ({answer.route.model_ref}) from "
        f"{names.link(original, 'rubric.md')}.\n"
        "> Check every criterion, weight, level and range against the original, then set `status: checked`.\n\n"
    )
    front_matter = {
        "title": f"{title} (normalised)",
        "status": "unchecked",
        "source": names.link(original),
        "source_hash": source_hash(path),
        "tierflow_run": settings.run_id,
        "tierflow_model": answer.route.model_ref,
        "tierflow_tokens": answer.usage.total_tokens,
        "tierflow_cost_usd": answer.cost_usd,
    }
    written = writer.write(Path(NORMALISED).stem, front_matter, callout + markdown)
    return written, answer


def _revealed(value: Any, pseudonyms: Any) -> Any:
    """`value` (a model's answer as plain data) with every pseudonym in its texts back to the student's name."""
    if isinstance(value, str):
        return pseudonyms.reveal(value)
    if isinstance(value, list):
        return [_revealed(v, pseudonyms) for v in value]
    if isinstance(value, dict):
        return {k: _revealed(v, pseudonyms) for k, v in value.items()}
    return value
