"""Orchestrator: sweeps, data, the single-run trainer, tracking, Ray scheduling and the `ladder` CLI."""
