"""`python -m tierflow.cli` runs the `tierflow` command."""

from tierflow.cli.app import main

main()
