"""Run a sweep's grid points on Ray: each pending point once, skipping finished ones, resuming partial ones.

The tracking store is the ledger (DESIGN.md): before launching, `plan` asks it about every point's run_key:
FINISHED → skip; FAILED with an infrastructure reason (node died, killed, OOM, crashed) → retry while attempts
remain; FAILED ``diverged`` → never retried; anything else (never run, or interrupted while RUNNING) → run, and the
trainer resumes from the point's newest checkpoint. Ray holds no state we cannot lose: a killed driver or worker
costs at most the steps since a run's last checkpoint.

Each point is one Ray task with the CPUs/GPUs its size needs (``max_retries`` lets Ray rerun a task whose worker
or node died; the rerun resumes from the checkpoint). Points start smallest budget first, at most
``max_concurrent`` at a time. A parent MLflow run per sweep holds the sweep file and the summary; every point is
a child run of it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.checkpoint import is_locked
from orchestrator.sweep import GridPoint, SweepSpec
from orchestrator.tracking import RunInfo, RunTracker, TrackingConfig, find_run, find_runs

__all__ = ["PointState", "SweepResult", "connect", "plan", "submit"]

log = logging.getLogger(__name__)

# Environment every Ray worker gets: no usage stats, no inherited MLflow run (mlflow issue 15713).
WORKER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_RUN_ID": ""}


@dataclass(frozen=True, slots=True)
class PointState:
    """Where one grid point stands, per the tracking store (and, while submitting, the scheduler)."""

    point: GridPoint
    state: str  # pending | running | finished | failed | skipped
    reason: str | None = None
    step: int | None = None
    loss: float | None = None
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class SweepResult:
    """The final state of every grid point, and what this submission did."""

    states: list[PointState]
    launched: int
    parent_run_id: str | None

    @property
    def complete(self) -> bool:
        return all(s.state in ("finished", "skipped") for s in self.states)


def _state(sweep: SweepSpec, point: GridPoint, info: RunInfo | None) -> PointState:
    if info is None:
        return PointState(point, "pending")
    tokens = info.metrics.get("train/tokens")
    progress = {
        "run_id": info.run_id,
        "reason": info.failure_reason,
        "step": None if tokens is None else round(tokens / point.spec.training.tokens_per_step),
        "loss": info.metrics.get("final/val_loss", info.metrics.get("train/loss")),
    }
    if info.status == "FINISHED":
        return PointState(point, "finished", **progress)
    if info.status == "FAILED" and not _retryable(sweep, info.failure_reason, info.attempt):
        return PointState(point, "failed", **progress)
    # RUNNING with a live lock holder is running; otherwise it was interrupted and will resume.
    return PointState(point, "running" if is_locked(point.spec.run_dir) else "pending", **progress)


def plan(sweep: SweepSpec, points: list[GridPoint]) -> list[PointState]:
    """Each point's state from the tracking store: which must run and which are done (no Ray, no training)."""
    if not points:
        return []
    runs = find_runs(points[0].spec.tracking)
    return [_state(sweep, point, runs.get(point.spec.run_key)) for point in points]


def _retryable(sweep: SweepSpec, reason: str | None, attempt: int) -> bool:
    return reason in sweep.retry.retry_reasons and attempt <= sweep.retry.max_retries


def _parent_run(tracking: TrackingConfig, sweep: SweepSpec, sweep_file: Path | None) -> str:
    """The sweep's parent MLflow run (created on first submission; later submissions attach to it)."""
    key = f"sweep.{hashlib.sha256(sweep.name.encode()).hexdigest()[:16]}"
    existing = find_run(tracking, key)
    if existing is not None:
        return existing.run_id
    tracker = RunTracker.open(
        tracking, run_key=key, run_name=sweep.name, tags={"sweep_parent": "true", "sweep": sweep.name},
        params={},
    )
    with tracker:
        tracker.log_dict_artifact(sweep.model_dump(mode="json"), "sweep/resolved.json")
        if sweep_file is not None:
            tracker.log_artifact(sweep_file, "sweep")
        tracker.finish("FINISHED")
    return tracker.run_id


def connect(address: str | None) -> None:
    """Connect to ``address`` (a cluster, or "auto"), or start an embedded local Ray: all CPUs, no dashboard."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    runtime_env = {"env_vars": WORKER_ENV}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)


def _train_point(spec_data: dict[str, Any], parent_run_id: str | None) -> dict[str, Any]:
    """Ray task body: train one RunSpec in this worker process (threads = the CPUs it was granted)."""
    from orchestrator.runspec import RunSpec
    from orchestrator.train import run

    os.environ.pop("MLFLOW_RUN_ID", None)
    result = run(RunSpec(**spec_data), parent_run_id=parent_run_id)
    return {"status": result.status, "reason": result.failure_reason, "run_id": result.run_id}


def submit(
    sweep: SweepSpec,
    points: list[GridPoint],
    *,
    sweep_file: Path | None = None,
    address: str | None = None,
    on_update: Callable[[list[PointState]], None] | None = None,
    poll_s: float = 2.0,
) -> SweepResult:
    """Run every pending point on Ray and wait for all of them; returns the final state of every point."""
    import ray

    states = plan(sweep, points)
    todo = [s for s in states if s.state in ("pending", "running")]
    if not todo:
        return SweepResult(states, launched=0, parent_run_id=None)
    parent_run_id = _parent_run(points[0].spec.tracking, sweep, sweep_file)
    connect(address)
    remote = ray.remote(_train_point)
    in_flight: dict[Any, GridPoint] = {}
    queue = [s.point for s in todo]  # already smallest budget first
    limit = sweep.max_concurrent or len(queue)
    launched = 0
    last_update = 0.0
    while queue or in_flight:
        while queue and len(in_flight) < limit:
            point = queue.pop(0)
            spec = point.spec.model_copy(
                update={"training": point.spec.training.model_copy(update={"threads": max(1, int(point.resources.cpus))})}
            )
            task = remote.options(
                num_cpus=point.resources.cpus,
                num_gpus=point.resources.gpus,
                max_retries=sweep.retry.max_retries,
                retry_exceptions=False,
            ).remote(spec.model_dump(mode="json"), parent_run_id)
            in_flight[task] = point
            launched += 1
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=poll_s)
        for task in ready:
            point = in_flight.pop(task)
            try:
                ray.get(task)
            except Exception as error:  # the task died past its retries: the ledger records it as failed
                log.warning("grid point %s failed on Ray: %s", point.spec.run_key, error)
        if on_update is not None and time.monotonic() - last_update >= poll_s:
            on_update(plan(sweep, points))
            last_update = time.monotonic()
    final = plan(sweep, points)
    if on_update is not None:
        on_update(final)
    return SweepResult(final, launched=launched, parent_run_id=parent_run_id)
