"""Run RunSpecs on a Ray Train worker group: `TorchTrainer` starts the workers, each runs the trainer's loop.

    results = train_on_workers([spec])            # spec.resources.workers > 1

The driver side (this function) checks the specs, asks Ray for the gang (``workers`` × {CPU: cpus, GPU: gpus},
whole GPUs only; Ray Train reserves it as one placement group, so a run starts with all its workers or waits),
and returns one `RunResult` per spec. The worker side (`_worker_loop`) joins the process group Ray Train set
up (gloo on CPU, NCCL on GPU), pins one GPU per worker, and calls `orchestrator.train.run_on_worker` for each
spec in turn. Several specs share one worker group because starting one costs tens of seconds on a small
machine (benchmarks and tests train several runs back to back); they must ask for the same resources.

Failures: with ``max_failures`` > 0 Ray Train restarts the whole group after a worker dies, and the restarted
workers resume every unfinished spec from its newest complete checkpoint (finished ones are skipped by the
ledger). The MLflow run is the same one, reopened by the new rank 0 (``attempt`` + 1). Past ``max_failures``
the error is raised as `WorkerGroupFailedError`; the run stays RUNNING in the ledger for the caller to record.

Rank 0's results come back through Ray Train's reporting: every rank reports once at the end (a Ray Train
rule), rank 0 with a small checkpoint directory, which is what attaches its metrics to the `Result`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.errors import ConfigError, LadderError
from orchestrator.distributed.parallel import check_parallel
from orchestrator.runspec import RunSpec

if TYPE_CHECKING:
    from orchestrator.train import RunResult, StepReport

__all__ = ["WorkerGroupFailedError", "check_cluster_fits", "train_on_workers"]

log = logging.getLogger(__name__)

RESULTS_KEY = "results"
# Where Ray Train keeps its own bookkeeping for a launch, under the runs' storage; removed after the launch.
RAY_TRAIN_DIR = ".ray-train"


class WorkerGroupFailedError(LadderError):
    """A worker died more often than ``max_failures`` allowed (or the group could not be started)."""


def check_cluster_fits(spec: RunSpec, cluster: dict[str, float]) -> None:
    """Raise `ConfigError` when ``spec``'s gang can never be placed on a cluster with ``cluster`` resources
    (`ray.cluster_resources()`): Ray would otherwise keep it pending forever."""
    resources = spec.resources
    for kind, per_worker, field in (("CPU", resources.cpus, "cpus"), ("GPU", resources.gpus, "gpus")):
        needed = per_worker * resources.workers
        if needed > cluster.get(kind, 0):
            raise ConfigError(
                f"resources.{field} ({per_worker:g}) × resources.workers ({resources.workers}) needs {needed:g} "
                f"{kind}s; the Ray cluster has {cluster.get(kind, 0):g}"
            )


def _group_resources(specs: list[RunSpec]) -> tuple[int, float, int]:
    first = specs[0].resources
    for spec in specs:
        resources = spec.resources
        if (resources.workers, resources.cpus, resources.gpus) != (first.workers, first.cpus, first.gpus):
            raise ConfigError(
                f"resources of {spec.run_key} (workers {resources.workers}, cpus {resources.cpus:g}, gpus "
                f"{resources.gpus}) differ from {specs[0].run_key}'s: one worker group runs specs of one shape"
            )
        check_parallel(spec)
    if first.workers < 2:
        raise ConfigError(f"resources.workers ({first.workers}) must be >= 2 for a worker group")
    return first.workers, first.cpus, first.gpus


def train_on_workers(
    specs: list[RunSpec],
    *,
    parent_run_id: str | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    on_eval: Callable[[int, float], bool] | None = None,
    max_failures: int = 0,
) -> list[RunResult]:
    """Train ``specs`` one after another on one Ray Train worker group; their `RunResult` s, in order.

    Connects to Ray first if this process is not connected (an embedded local Ray, as `ladder submit` starts,
    refusing a gang larger than this machine).
    The callbacks are pickled and run in the workers: ``on_step`` on every rank, ``on_eval`` on rank 0.
    """
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.train import RunResult

    workers, cpus, gpus = _group_resources(specs)
    if not ray.is_initialized():  # an embedded Ray: its resources are fixed, so a gang that cannot fit never will
        from orchestrator.scheduler import connect

        connect(None)
        for spec in specs:
            check_cluster_fits(spec, ray.cluster_resources())
    per_worker = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    storage = Path(specs[0].storage).expanduser().resolve() / RAY_TRAIN_DIR
    name = f"{specs[0].run_key}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "specs": [spec.model_dump(mode="json") for spec in specs],
            "parent_run_id": parent_run_id,
            "on_step": on_step,
            "on_eval": on_eval,
        },
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=name, storage_path=str(storage), failure_config=FailureConfig(max_failures=max_failures)
        ),
    )
    log.info("training %d run(s) on %d workers × %s", len(specs), workers, per_worker)
    try:
        result = trainer.fit()
    except TrainingFailedError as error:
        raise WorkerGroupFailedError(
            f"worker group of {specs[0].run_key} failed after {max_failures} restart(s): {error}"
        ) from error
    finally:
        shutil.rmtree(storage / name, ignore_errors=True)
    if result.metrics is None or RESULTS_KEY not in result.metrics:
        raise WorkerGroupFailedError(f"the worker group of {specs[0].run_key} ended without reporting its results")
    return [RunResult(**fields) for fields in json.loads(result.metrics[RESULTS_KEY])]


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: join the group, train every spec, report rank 0's results."""
    import os

    import ray.train
    import torch

    from orchestrator.distributed.parallel import Parallel
    from orchestrator.train import run_on_worker

    os.environ.pop("MLFLOW_RUN_ID", None)  # an inherited run id overrides parent_run_id (mlflow issue 15713)
    specs = [RunSpec(**data) for data in config["specs"]]
    device = torch.device("cpu")
    if specs[0].resources.gpus:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    results = [
        run_on_worker(
            spec,
            Parallel.join(spec.resources, device),  # each spec's own sharding and mesh
            parent_run_id=config["parent_run_id"],
            on_step=config["on_step"],
            on_eval=config["on_eval"],
        )
        for spec in specs
    ]
    is_main = ray.train.get_context().get_world_rank() == 0
    metrics = {RESULTS_KEY: json.dumps([asdict(result) for result in results])}
    if not is_main:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:  # a checkpoint is what attaches rank 0's metrics to the Result
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
