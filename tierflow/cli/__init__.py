"""The `tierflow` command line: the typer app, the flow runner, and Prefect operations (deployments, limits)."""

from tierflow.cli.app import app, main, prefect_defaults

__all__ = ["app", "main", "prefect_defaults"]
