"""The vault folder a run works in, checked: a foundation module (errors only), so that core and vault, which
never import each other, both use the one check."""

from __future__ import annotations

import os
from pathlib import Path

from tierflow.core.errors import VaultError


def user_path(path: Path | str) -> Path:
    """A path a person gave (a vault, a config file), with `~` as their home folder: a shell does not expand it in
    `--vault=~/Notes`, nor in Python's `vault="~/Notes"`."""
    return Path(path).expanduser()


def check_vault(path: Path | str) -> Path:
    """The vault folder, resolved (`~` is the home folder); a clear error when it is missing, not given, or a file."""
    if isinstance(path, str):
        if not path.strip():
            raise VaultError(
                "no vault given: pass --vault DIR (deployments: set TIERFLOW_VAULT when you run prefect deploy, "
                "or pass -p vault=DIR)"
            )
        path = Path(path.strip())
    path = user_path(path)
    if not path.exists():
        raise VaultError(f"vault {path} does not exist. Give the folder that holds your notes.")
    if not path.is_dir():
        raise VaultError(f"vault {path} is a file, not a folder. Give the vault's folder.")
    return path.resolve()


def unwritable(folder: Path) -> str | None:
    """Why this user cannot make files in `folder` (or make it, with the folders above it that are missing), or
    None when they can: a read-only file system (a read-only mount), or a folder without write permission.

    Asked of the file system, which answers for root too (root may write any folder of a writable file system)."""
    found = folder
    while not found.exists() and found != found.parent:
        found = found.parent
    if hasattr(os, "statvfs"):  # not on Windows
        try:
            if os.statvfs(found).f_flag & os.ST_RDONLY:
                return f"{found} is on a read-only file system"
        except OSError:
            pass
    if not os.access(found, os.W_OK | os.X_OK):
        return f"the folder {found} is read-only to you"
    return None
