"""The vault folder a run works in, checked: a foundation module (errors only), so that core and vault, which
never import each other, both use the one check."""

from __future__ import annotations

from pathlib import Path

from tierflow.core.errors import VaultError


def check_vault(path: Path | str) -> Path:
    """The vault folder, resolved; a clear error when it is missing, not given, or a file."""
    if isinstance(path, str):
        if not path.strip():
            raise VaultError(
                "no vault given: pass --vault DIR (deployments: set TIERFLOW_VAULT when you run prefect deploy, "
                "or pass -p vault=DIR)"
            )
        path = Path(path.strip())
    if not path.exists():
        raise VaultError(f"vault {path} does not exist. Give the folder that holds your notes.")
    if not path.is_dir():
        raise VaultError(f"vault {path} is a file, not a folder. Give the vault's folder.")
    return path.resolve()
