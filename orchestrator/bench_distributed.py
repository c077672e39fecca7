"""Multi-worker step-time benchmark: 2 data-parallel workers (FSDP, DDP) against one process, same global batch.

On CPU the workers talk over gloo on loopback, so the ratio to one process is the cost of the collectives
(FSDP: all-gather of each block's weights in forward and again in backward, reduce-scatter of its gradients;
DDP: one all-reduce of the gradients in buckets) against the compute saved by each worker doing half the batch.
Two baselines, both timed in the same invocation: one process with 1 thread (the same per-process compute) and
with as many threads as the workers together (the same cores).

Every configuration is a real `orchestrator.train` run on the corpus (data, forward, backward, clipping, AdamW,
expert-bias sync, tracking); step time is the trainer's own ``perf/step_time_s`` (rank 0's, which includes
waiting for the other rank in every collective), median over the steps after ``WARMUP_STEPS``. Peak memory is
the largest process's resident set (CPU). The 2-worker runs share one Ray Train worker group.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from models.benchlog import append_rows, record_context
from orchestrator.data import DataConfig
from orchestrator.runspec import RunSpec

__all__ = ["DistributedRow", "append_csv", "benchmark_specs", "run_distributed_benchmark"]

WARMUP_STEPS = 2  # the first steps pay allocator and thread-pool warm-up


@dataclass(frozen=True, slots=True)
class DistributedRow:
    """One configuration's step time; ratios are to the baselines timed in the same invocation."""

    config: str
    workers: int
    threads: int  # per process
    step_ms: float
    tokens_per_s: float
    peak_memory_mb: float
    ratio_same_threads: float  # step time / one process with 1 thread
    ratio_same_cores: float  # step time / one process with ``workers`` threads


def benchmark_specs(
    preset: str,
    residual: dict,
    *,
    data: DataConfig,
    root: Path,
    workers: int = 2,
    steps: int = 12,
    batch_size: int = 16,
    seq_len: int = 128,
) -> dict[str, RunSpec]:
    """The configurations, by label: one process (1 thread; ``workers`` threads), then FSDP and DDP workers."""

    def spec(label: str, threads: int, **resources: object) -> RunSpec:
        return RunSpec(
            model={"preset": preset, "residual": residual},
            training={
                "budget": {"steps": steps},
                "batch_size": batch_size,
                "seq_len": seq_len,
                "threads": threads,
                "eval_every": steps,
                "eval_windows": 8,
                "checkpoint_every": steps,
            },
            data=data.model_dump(),
            tracking={"uri": f"sqlite:///{root / 'bench.db'}", "experiment": label},
            storage=str(root / label),
            resources=resources,
        )

    return {
        "1 process, 1 thread": spec("one-1t", 1),
        f"1 process, {workers} threads": spec(f"one-{workers}t", workers, cpus=workers),
        f"{workers} workers, fsdp": spec("fsdp", 1, workers=workers, sharding="fsdp"),
        f"{workers} workers, ddp": spec("ddp", 1, workers=workers, sharding="ddp"),
    }


def _timings(spec: RunSpec, run_id: str) -> tuple[float, float]:
    """(median step seconds after warm-up, peak memory MB) as the trainer logged them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(spec.tracking.uri)
    history = sorted(client.get_metric_history(run_id, "perf/step_time_s"), key=lambda m: m.step)
    step_s = statistics.median(m.value for m in history[WARMUP_STEPS:])
    return step_s, client.get_run(run_id).data.metrics["final/peak_memory_mb"]


def run_distributed_benchmark(
    preset: str = "p1",
    residual: dict | None = None,
    *,
    data: DataConfig,
    workers: int = 2,
    steps: int = 12,
    batch_size: int = 16,
    seq_len: int = 128,
) -> list[DistributedRow]:
    """Time every configuration of `benchmark_specs` (one-process runs here, worker runs on Ray Train)."""
    from orchestrator.distributed import train_on_workers
    from orchestrator.train import run

    if steps <= WARMUP_STEPS:
        raise ValueError(f"steps ({steps}) must be > {WARMUP_STEPS} (the warm-up steps left out of the median)")
    residual = residual or {"variant": "mhc", "n": 4}
    with tempfile.TemporaryDirectory(prefix="ladder-bench-distributed-") as scratch:
        specs = benchmark_specs(
            preset,
            residual,
            data=data,
            root=Path(scratch),
            workers=workers,
            steps=steps,
            batch_size=batch_size,
            seq_len=seq_len,
        )
        single = {label: spec for label, spec in specs.items() if spec.resources.workers == 1}
        grouped = {label: spec for label, spec in specs.items() if spec.resources.workers > 1}
        run_ids = {label: run(spec).run_id for label, spec in single.items()}
        results = train_on_workers(list(grouped.values()))
        run_ids |= {label: result.run_id for label, result in zip(grouped, results, strict=True)}
        timings = {label: _timings(specs[label], run_ids[label]) for label in specs}
    one_thread, same_cores = (timings[label][0] for label in single)
    return [
        DistributedRow(
            config=label,
            workers=spec.resources.workers,
            threads=spec.training.threads,
            step_ms=1e3 * step_s,
            tokens_per_s=spec.training.tokens_per_step / step_s,
            peak_memory_mb=peak_mb,
            ratio_same_threads=step_s / one_thread,
            ratio_same_cores=step_s / same_cores,
        )
        for (label, spec), (step_s, peak_mb) in zip(specs.items(), timings.values(), strict=True)
    ]


def append_csv(rows: list[DistributedRow], path: Path, *, preset: str, residual: dict) -> None:
    """Append one row per configuration (long format) with machine, load, git SHA and timestamp."""
    context = {
        **record_context(),
        "load_1min": f"{os.getloadavg()[0]:.2f}",
        "preset": preset,
        "residual": f"{residual['variant']}-n{residual.get('n', 1)}",
    }
    records = [{**context, **asdict(row)} for row in rows]
    append_rows(records, path)
