"""The `tierflow` command lines that messages tell the user to run: each runnable as printed, from any folder.

Imports nothing of tierflow's, so that every layer (vault's rubric errors too) can print them."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path


def tierflow_command(
    *words: object,
    vault: Path | str | None,
    config: Path | str | None = None,
    profile: str | None = None,
    params: Mapping[str, object] | None = None,
) -> str:
    """`tierflow WORDS... --vault VAULT [--config C] [--profile P] [--param NAME=VALUE ...]`, every value
    shell-quoted; `vault` resolved to an absolute path, so the line works from another working directory.

    `words` are the command and its arguments and options (an option's value a word of its own); `params` are
    the `--param` values as the user gave them (text). None or "" leaves an option out.
    """
    parts = [str(word) for word in words]
    if vault:
        parts += ["--vault", str(Path(vault).resolve())]
    if config:
        parts += ["--config", str(Path(config).resolve())]
    if profile:
        parts += ["--profile", profile]
    for name, value in (params or {}).items():
        parts += ["--param", f"{name}={value}"]
    return "tierflow " + " ".join(shlex.quote(part) for part in parts)
