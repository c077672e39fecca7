"""`python -m orchestrator` runs the `ladder` CLI."""

from orchestrator.cli import main

main()
