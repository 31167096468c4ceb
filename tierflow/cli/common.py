"""What every `tierflow` command shares: its vault, config and profile options, and how it reports errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from tierflow.core.config import Config

VaultOpt = Annotated[Path | None, typer.Option("--vault", "-v", help="The Obsidian vault folder.", show_default=False)]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (else $TIERFLOW_CONFIG, else <vault>/.tierflow/config.toml)."),
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
