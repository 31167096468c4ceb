"""What every `tierflow` command shares: its vault, config and profile options, and how it reports errors."""

from __future__ import annotations

import codecs
import inspect
import logging
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from tierflow.core.config import Config


def _home(path: Path | None) -> Path | None:
    """`--vault=~/Notes` and `--config=~/...`: a `~` the shell leaves as it is (after `=`, or quoted) is the home
    folder, as it is for every path tierflow is given (`user_path`)."""
    from tierflow.core.folders import user_path

    return user_path(path) if path is not None else None


VaultOpt = Annotated[
    Path | None,
    typer.Option("--vault", "-v", help="The Obsidian vault folder.", show_default=False, callback=_home),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (else $TIERFLOW_CONFIG, else <vault>/.tierflow/config.toml).",
        callback=_home,
    ),
]
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", "-p", help="Built-in profile: anthropic, openai, local or offline.")
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` to stderr (markup-safe: config keys like [tiers.x] stay visible)."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


class _CurrentStream:
    """Whichever stream `sys.stderr` (or `sys.stdout`) is at the moment it is written to."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(getattr(sys, self._name), attribute)


CURRENT_STDERR = _CurrentStream("stderr")
CURRENT_STDOUT = _CurrentStream("stdout")


def prefect_logs_follow_sys_streams() -> None:
    """Point Prefect's console log handlers at whatever `sys.stderr` (`sys.stdout`) is when each line is written.

    Prefect builds its handlers when it is first imported, on the `sys.stderr` of that moment, and a command imports
    it lazily: invoked in-process (a custom flow, a notebook, a test's CliRunner), that is the invocation's own
    stream, closed once it returns, and every later Prefect line (the next command's too) would go to a closed file.
    Called as each command ends; does nothing when Prefect's logging is not set up (most commands never import it).
    """
    configuration = sys.modules.get("prefect.logging.configuration")
    if configuration is None or not getattr(configuration, "PROCESS_LOGGING_CONFIG", None):
        return
    current = {id(sys.stdout): CURRENT_STDOUT, id(sys.stderr): CURRENT_STDERR}
    loggers = [logging.getLogger(), *list(logging.Logger.manager.loggerDict.values())]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):  # a placeholder (a dotted name's parent) has none
            if not isinstance(handler, logging.StreamHandler) or not type(handler).__module__.startswith("prefect."):
                continue
            follow = current.get(id(handler.stream))
            if follow is None:
                continue
            handler.setStream(follow)  # type: ignore[arg-type]
            console = getattr(handler, "console", None)  # PrefectConsoleHandler writes through a rich Console
            if console is not None:
                console.file = follow


class _Utf8Writer:
    """Text written to a binary stream as UTF-8, as it comes; the stream is never closed or taken over."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text.encode("utf-8"))
        return len(text)


def csv_stdout() -> Any:
    """Where a command writes CSV: stdout as UTF-8 whatever its encoding (a console's code page would stop at the
    first character it lacks), and with the rows' CRLF as the csv module wrote them (Windows' text mode would make
    them CR CR LF).

    Into a new file from a console whose code page is not UTF-8 (Windows' `> calls.csv`), the file starts with a
    UTF-8 BOM: Excel reads a CSV file without one in that code page, and pandas and Excel both read it with one.
    To a pipe, or where the output is UTF-8 already, there is none: a reader there expects plain UTF-8, and a BOM
    would become part of its first column's name (Python's `csv` with `utf-8`, `cut`, `awk`)."""
    out = sys.stdout
    binary = getattr(out, "buffer", None)
    if binary is None:  # a text-only stream (a test's StringIO): it takes the text as it is
        return out
    out.flush()  # anything already printed goes first
    if codecs.lookup(getattr(out, "encoding", None) or "utf-8").name != "utf-8" and _new_file(out):
        binary.write(codecs.BOM_UTF8)
    return _Utf8Writer(binary)


def _new_file(stream: Any) -> bool:
    """Whether `stream` writes to a regular file that is still empty (`>`; not `>>` onto an existing one)."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError and a ValueError
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == 0


def argument_text(value: str, option: str) -> str:
    """A command-line argument as text to send: bytes that are not UTF-8 (which Python reads from argv as lone
    surrogates, and no request can carry) become U+FFFD, with a warning naming the first one's byte offset."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    from rich.console import Console
    from rich.markup import escape

    try:
        raw = value.encode("utf-8", "surrogateescape")  # the argument's own bytes, as argv held them
    except UnicodeEncodeError:  # a surrogate argv never makes: each is one replaced character
        raw = value.encode("utf-8", "surrogatepass")
    try:
        return raw.decode("utf-8")  # escaped bytes that make UTF-8 after all
    except UnicodeDecodeError as exc:
        where = exc.start
    Console(stderr=True, soft_wrap=True).print(
        f"[bold yellow]warning:[/] {escape(option)} is not UTF-8 text (first at byte {where}); "
        "such bytes are sent as U+FFFD",
        highlight=False,
    )
    return raw.decode("utf-8", "replace")


def parse_params(items: list[str] | None, flow: str | None = None) -> dict[str, str]:
    """`--param NAME=VALUE` values as `{name: text}`; the flow's signature says what each text is (`read_params`).

    A name given twice is refused (the later one silently replaced the first: `tag=a --param tag=b` gave "b"), with
    what to give instead as the `flow`'s parameter takes it (`given_twice`): one JSON list, or one of the two."""
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"--param {item!r}: write it as NAME=VALUE, for example --param mode=draft")
        if key.strip() in params:
            from tierflow.cli.prefect_ops import given_twice

            raise fail(given_twice(flow, key.strip(), params[key.strip()], raw))
        params[key.strip()] = raw
    return params


def refuse_option_params(params: Mapping[str, object], options: Mapping[str, str]) -> None:
    """Exit 2 on a `--param` that names a parameter the command sets itself: the run's id, or one an option gives
    (`options`: the parameter's name to the option, such as `{"vault": "--vault"}`)."""
    for name in params:
        if name == "run_id":
            raise fail("--param run_id: a run's id is tierflow's to choose; `tierflow resume RUN` continues a run")
        if name in options:
            option = options[name]
            raise fail(f"--param {name}: {option} gives the flow's {name!r} parameter; use {option}, not --param")


def locale_problem(text: str, what: str) -> str | None:
    """Why `text` (an argument, a path) cannot be used under this locale, or None. Under a locale whose encoding is
    not UTF-8 (`LC_ALL=C` with `PYTHONUTF8=0`), Python reads each byte it cannot decode (an `é` of a path) as a lone
    surrogate: such a path opens files, but no note, ledger row or Prefect parameter can hold it as text."""
    if text.isascii() or sys.getfilesystemencoding().lower().replace("-", "") == "utf8":
        return None  # under UTF-8, bytes that are not UTF-8 are `argument_text`'s to replace
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    shown = os.fsencode(text).decode("ascii", "backslashreplace")
    return (
        f"{what} {shown} is not text in this locale's encoding ({sys.getfilesystemencoding()}), and tierflow keeps "
        "paths and arguments as text (in notes, the ledger and Prefect): run it under a UTF-8 locale "
        "(export LC_ALL=C.UTF-8) or with PYTHONUTF8=1"
    )


def vault_dir(vault: Path | None, *, required: str = "") -> Path | None:
    """The vault folder, resolved; a clear error when it is missing or a file, or absent but `required`."""
    if vault is None:
        if required:
            raise fail(f"give the vault: {required} --vault DIR")
        return None
    if not vault.exists():
        raise fail(f"vault {vault} does not exist. Give the folder that holds your notes (and .obsidian/).")
    if not vault.is_dir():
        raise fail(f"vault {vault} is a file, not a folder. Give the vault's folder.")
    resolved = vault.resolve()
    problem = locale_problem(str(resolved), "the vault's path")  # the current folder's name, for a relative one
    if problem:
        raise fail(problem)
    return resolved


def load(vault: Path | None, config: Path | None, profile: str | None) -> Config:
    from tierflow.core.config import load_config
    from tierflow.core.errors import ConfigError

    try:
        return load_config(vault, config_path=config, profile=profile)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def check_assignment(flow_name: str, cfg: Config, vault: Path, assignment: str | None) -> None:
    """student-feedback reads an assignment folder of the vault, from --assignment or the config: one unset, leading
    outside the vault or not there is refused (exit 2) before a run or a deployment, as the flow itself refuses it."""
    if flow_name != "student-feedback":
        return
    from tierflow.core.errors import VaultError
    from tierflow.tasks.assignment import existing_assignment

    try:
        existing_assignment(vault, assignment or cfg.settings.feedback.assignment_folder)
    except VaultError as exc:
        raise fail(str(exc)) from None


MISSING_MODULE = (
    "Give a module folder that is there with --module FOLDER (relative to the vault), or set [module] folder in "
    "the vault's .tierflow/config.toml."
)


def check_module(flow_name: str, cfg: Config, vault: Path, module: str | None) -> None:
    """module-review reads a module folder of the vault, from --module or the config: one unset, leading outside
    the vault or not there is refused (exit 2) before a run or a deployment, with the check the flow's read makes."""
    if flow_name != "module-review":
        return
    from tierflow.core.errors import VaultError
    from tierflow.tasks.module import module_path
    from tierflow.vault.folder import vault_folder

    try:
        vault_folder(vault, module_path(vault, module or cfg.settings.module.folder), fix=MISSING_MODULE)
    except VaultError as exc:
        raise fail(str(exc)) from None


FLOW_OPTIONS = (
    "vault", "since", "until", "assignment", "mode", "wait", "module", "profile", "config", "tier", "project",
    "retry_failed", "redraft_all",
)  # fmt: skip
"""The options of `tierflow run`, `plan` and `schedule` named as the flow parameter each gives (`--since`: since)."""


class FlowHelp:
    """Mixed into a command of one flow (`tierflow run FLOW`, `plan FLOW`, `schedule FLOW`): its `--help` ends with
    the flow's own parameters, each as `--param NAME=VALUE` with its type, default and what the flow's docstring
    says of it, and the options that give the others."""

    planned = False
    """Whether the command is `tierflow plan`, which passes a flow's planner the parameters it takes."""
    own_options = False
    """Whether a flow of another package takes its parameter named as an option made for tierflow's flows with
    --param as well as with that option (`own_parameter`): so `tierflow run` and `plan`, not `schedule`."""

    def help_flow(self, ctx: Any) -> str | None:
        """The flow whose parameters the help lists: the command's own by default."""
        return getattr(self, "name", None)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        super().format_help(ctx, formatter)  # type: ignore[misc]
        flow = self.help_flow(ctx)
        if flow:
            params = self.params  # type: ignore[attr-defined]
            write_flow_parameters(formatter, flow, params, own_options=self.own_options, planned=self.planned)


def write_flow_parameters(
    formatter: Any, flow: str, params: list[Any], *, own_options: bool, planned: bool = False
) -> None:
    """The section of a command's help that lists `flow`'s parameters (`FlowHelp`). `params` are the command's
    click parameters: a flow parameter one of them gives (`FLOW_OPTIONS`) is named with its option. With
    `own_options` a flow of another package takes its parameter named as an option made for tierflow's flows
    (`own_parameter`) with --param, or with that option. `planned` (`tierflow plan`): only the parameters its
    planner takes too, which `tierflow plan` passes it."""
    from tierflow.core.registry import flow_spec

    given = {}
    for p in params:
        if p.name in FLOW_OPTIONS and getattr(p, "opts", None):
            long = [o for o in p.opts if o.startswith("--")] or list(p.opts)
            given[p.name] = "/".join([long[0], *getattr(p, "secondary_opts", [])])
    try:
        spec = flow_spec(flow)
        from tierflow.cli.prefect_ops import describe_params

        described, any_name = describe_params(spec.flow)
    except Exception as exc:  # a flow whose module does not import: the help is still shown, saying why
        formatter.write_paragraph()
        formatter.write_text(f"The {flow} flow's parameters could not be read: {type(exc).__name__}: {exc}")
        return
    from tierflow.cli.runner import own_parameter

    if planned:
        if spec.plan is None:
            formatter.write_paragraph()
            formatter.write_text(f"The {flow} flow has no planner (its FlowSpec gives no plan=): nothing to estimate.")
            return
        accepted = inspect.signature(spec.plan).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
            # A --param its planner does not take is refused; an option tierflow reads itself (--profile) is not.
            own = {d.name for d in described if d.name not in given or (own_options and own_parameter(flow, d.name))}
            described = [d for d in described if d.name in accepted or d.name not in own]
    rows: list[tuple[str, str]] = []
    by_option: list[str] = []
    for d in described:
        option = given.get(d.name)
        if d.name == "run_id":
            continue  # tierflow's to choose (`refuse_option_params`)
        if option and not (own_options and own_parameter(flow, d.name)):
            by_option.append(option)
            continue
        how = d.value[:1].upper() + d.value[1:]
        parts = [_sentence(d.description), _sentence(how), f"Or {option}." if option else ""]
        mark = "[required]" if d.required else (f"[default: {d.default}]" if d.default is not None else "")
        term = f"--param {d.name}=<{d.type}>" if d.type else f"--param {d.name}=VALUE"
        rows.append((term, "  ".join(filter(None, [" ".join(filter(None, parts)), mark]))))
    description = (getattr(spec.flow, "description", None) or "").strip().split("\n\n")[0]
    took = ", ".join(by_option)
    with formatter.section(f"Parameters of the {flow} flow"):
        if description:
            formatter.write_text(" ".join(description.split()))
            formatter.write_paragraph()
        if rows:
            formatter.write_text("Its own, each given as --param NAME=VALUE (repeatable):")
            _write_rows(formatter, rows)
        else:
            formatter.write_text("It takes no parameter of its own: no --param.")
        if any_name:
            formatter.write_paragraph()
            formatter.write_text("It takes any other name too (**kwargs): read as JSON when it is JSON, else as text.")
        formatter.write_paragraph()
        formatter.write_text(f"Given by the options above: {took}." if took else "No option above gives it one.")
        if not planned:
            formatter.write_text(
                "Its run id is tierflow's to choose: `tierflow resume RUN` continues a run that stopped."
                if spec.takes("run_id")
                else "It takes no run_id, so `tierflow resume` cannot continue its runs."
            )


def _write_rows(formatter: Any, rows: list[tuple[str, str]]) -> None:
    """`formatter.write_dl`, but wrapping only at spaces: a date (YYYY-MM-DD) or an example value is never cut at a
    hyphen, so that it can be copied as it is shown."""
    import textwrap

    indent = " " * formatter.current_indent
    first = min(max(len(term) for term, _ in rows), 30) + 2
    width = max(formatter.width - formatter.current_indent - first, 20)
    for term, text in rows:
        lines = textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False) or [""]
        if len(term) + 2 > first:  # a long term has a line of its own, its text below it
            formatter.write(f"{indent}{term}\n")
        else:
            formatter.write(f"{indent}{term.ljust(first)}{lines.pop(0)}\n")
        for line in lines:
            formatter.write(f"{indent}{' ' * first}{line}\n")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text.endswith((".", "!", "?", ")")) else f"{text}."
