"""What every `tierflow` command shares: its vault, config and profile options, and how it reports errors."""

from __future__ import annotations

import codecs
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


def parse_params(items: list[str] | None) -> dict[str, str]:
    """`--param NAME=VALUE` values as `{name: text}`; the flow's signature says what each text is (`read_params`)."""
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"--param {item!r}: write it as NAME=VALUE, for example --param mode=draft")
        if key.strip() in params:  # the later one silently replaced the first (`tag=a --param tag=b` gave "b")
            raise fail(
                f"--param {key.strip()} is given twice ({params[key.strip()]!r} and {raw!r}): give it once; a list is "
                f'one JSON value, for example --param \'{key.strip()}=["a", "b"]\''
            )
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
    return vault.resolve()


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
