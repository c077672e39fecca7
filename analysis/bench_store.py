"""A large SQLite MLflow store for the loading benchmark: a sweep of `BenchStore.num_runs` runs with
`BenchStore.num_steps` logged steps each, filled the way the trainer fills a store.

    store = build_store(BenchStore(num_runs=1000, num_steps=1000))   # minutes once, then cached under /tmp
    store.uri, store.experiment

Every run has the trainer's tags, ~40 flattened config params, the ten per-step metrics it logs at every step
(orchestrator/train.py: loss, lr, grad norm, tokens, epochs, FLOPs both ways, step time, tokens/s, FLOP/s),
nine ``eval/*`` metrics every `BenchStore.eval_every` steps, the ``final/*`` metrics and a
``diagnostics/step_*.json`` artifact per evaluation; the sweep parent run is there too. Final losses follow a
compute law per arm (mhc a fixed multiple of the baseline's compute) so the analysis has something to fit.

How it is written, and why: MLflow's `log_batch` costs ~0.19 s per 1,000 metric values on this store (10M
values: ~32 min), so run entities, tags, params, ``final/*`` metrics and the *last* step of every history go
through `MlflowClient.log_batch` (MLflow writes ``runs``, ``tags``, ``params``, ``latest_metrics`` and those
``metrics`` rows itself), and the earlier steps are inserted into MLflow's ``metrics`` table with
``executemany`` — the same columns and encoding MLflow writes (``is_nan`` false, finite values, a timestamp
per step), one run at a time, as a sweep's runs flush in turn. Diagnostics artifacts are written straight into
the runs' artifact folders (a local ``file://`` store; `log_artifacts` would copy the same files at ~25 ms a
run). The store is built once per configuration and reused (a ``done`` marker names it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["BenchStore", "StoreInfo", "build_store"]

logger = logging.getLogger(__name__)

EXPERIMENT = "analysis-bench"
STEP_METRICS = (
    "train/loss",
    "train/lr",
    "train/grad_norm",
    "train/tokens",
    "train/epochs",
    "train/flops",
    "train/flops_6n",
    "perf/step_time_s",
    "perf/tokens_per_s",
    "perf/flops_per_s",
)
"""What the trainer logs at every step (orchestrator/train.py)."""
EVAL_METRICS = (
    "eval/loss",
    "eval/amax_fwd_composite_max",
    "eval/amax_bwd_composite_max",
    "eval/amax_fwd_layer_max",
    "eval/amax_bwd_layer_max",
    "eval/ds_error_max",
    "eval/expert_max_violation",
    "eval/expert_cv",
    "eval/dead_experts",
)
"""What the trainer logs at every evaluation."""
_SEQ_LEN = 256
_E, _ALPHA, _MULTIPLIER = 2.0, 0.15, 1.5  # the planted law L(C) = E + A·C^(−α); mhc's compute multiplier
_T0_MS = 1_700_000_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchStore:
    """Size of the benchmark store."""

    num_runs: int = 1000
    """Runs in the sweep (arms × sizes × budgets × seeds, rounded up to whole seeds)."""
    num_steps: int = 1000
    """Logged steps per run (every step logs `STEP_METRICS`)."""
    eval_every: int = 50
    """Steps between evaluations (each logs `EVAL_METRICS` and writes a diagnostics artifact)."""
    num_sizes: int = 5
    num_budgets: int = 10
    root: Path = Path("/tmp/mhc-ladder-analysis-bench")
    """Where stores are cached, one folder per configuration."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_runs", "num_steps", "eval_every", "num_sizes", "num_budgets"):
            if getattr(self, name) < 1:
                raise ValueError(f"BenchStore.{name} ({getattr(self, name)}) must be >= 1")

    @property
    def folder(self) -> Path:
        return self.root / (  # v2: runs' FLOPs follow their budgets
            f"v2-r{self.num_runs}-s{self.num_steps}-e{self.eval_every}-z{self.num_sizes}-b{self.num_budgets}"
            f"-seed{self.seed}"
        )

    @property
    def num_seeds(self) -> int:
        return -(-self.num_runs // (2 * self.num_sizes * self.num_budgets))

    @property
    def num_values(self) -> int:
        """Metric values in the store's ``metrics`` table (per-step, eval and final)."""
        evals = self.num_steps // self.eval_every
        return self.num_runs * (self.num_steps * len(STEP_METRICS) + evals * len(EVAL_METRICS) + 5)


@dataclass(frozen=True, slots=True)
class StoreInfo:
    uri: str
    experiment: str
    path: Path
    build_s: float | None
    """Seconds this call spent building it (None: reused from the cache)."""


def build_store(config: BenchStore) -> StoreInfo:
    """The store of `config`, built now unless a finished one is cached in `config.folder`."""
    folder = config.folder
    db = folder / "mlflow.db"
    uri = f"sqlite:///{db}"
    marker = folder / "done"
    if marker.exists():
        return StoreInfo(uri, EXPERIMENT, db, None)
    shutil.rmtree(folder, ignore_errors=True)  # what a build that stopped part-way left
    folder.mkdir(parents=True)
    start = time.perf_counter()
    _fill(config, folder, uri)
    marker.write_text(json.dumps(dataclasses.asdict(config), default=str) + "\n")
    return StoreInfo(uri, EXPERIMENT, db, time.perf_counter() - start)


def _grid(config: BenchStore) -> list[tuple[str, int, int, int]]:
    """(arm, size index, budget index, seed) of every run, arms alternating as a sweep interleaves them."""
    points = [
        (arm, size, budget, seed)
        for seed in range(config.num_seeds)
        for budget in range(config.num_budgets)
        for size in range(config.num_sizes)
        for arm in ("residual", "mhc")
    ]
    return points[: config.num_runs]


def _fill(config: BenchStore, folder: Path, uri: str) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    artifacts = folder / "artifacts"
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
    parent = client.create_run(experiment_id, tags={"mlflow.runName": EXPERIMENT, "sweep_parent": "true"})
    rng = np.random.default_rng(config.seed)
    sizes = 1e6 * 4.0 ** np.arange(config.num_sizes)  # activated non-embedding parameters
    budgets = 1e13 * 10.0 ** (np.arange(config.num_budgets) * 4.0 / max(1, config.num_budgets - 1))
    steps = np.arange(1, config.num_steps + 1)
    evals = steps[config.eval_every - 1 :: config.eval_every]
    connection = sqlite3.connect(folder / "mlflow.db")
    grid = _grid(config)
    for index, (arm, size_index, budget_index, seed) in enumerate(grid):
        N, budget = float(sizes[size_index]), float(budgets[budget_index])
        effective = budget * (_MULTIPLIER if arm == "mhc" else 1.0)
        final = _E + 2.0 * 1e13**_ALPHA * effective**-_ALPHA + 0.05 * (size_index - budget_index / 2) ** 2
        final += rng.normal(0.0, 0.002)
        flops_per_token = 6.0 * N * (1.03 if arm == "mhc" else 1.0)
        key = f"{arm}-z{size_index}-b{budget_index}-s{seed}"
        tags = {
            "mlflow.parentRunId": parent.info.run_id,
            "mlflow.runName": key,
            "run_key": key,
            "size": f"z{size_index}",
            "variant": arm,
            "n": "4" if arm == "mhc" else "1",
            "sinkhorn_iters": "20",
            "seed": str(seed),
            "sweep": EXPERIMENT,
            "budget": repr(budget),
            "params_total": str(int(3 * N)),
            "params_activated": str(int(1.5 * N)),
            "params_activated_non_embedding": str(int(N)),
            "total_steps": str(config.num_steps),
            "device": "cpu",
            "hardware": "bench CPU",
            "unigram_entropy": "7.1",
            "attempt": "1",
        }
        t0 = _T0_MS + index * 10**6  # runs one after another, as a sweep's runs end at different times
        run_id = client.create_run(experiment_id, tags=tags, start_time=t0).info.run_id
        # Every run logs num_steps steps; its batch (tokens per step) is what spends its budget (6·N·D), so a
        # run's FLOPs follow its budget, as in a sweep with budgets in FLOPs.
        tokens_per_step = budget / (6.0 * N * config.num_steps)  # one batch per (size, budget) for all arms
        values = _history(rng, config.num_steps, final, N, flops_per_token, tokens_per_step, arm)
        rows = [
            (name, float(value), t0 + int(step) * 100, run_id, int(step), False)
            for name, column in values.items()
            for step, value in zip(steps[:-1], column[:-1], strict=True)
        ]
        eval_values = {
            "eval/loss": values["train/loss"][evals - 1] * 1.01,
            "eval/amax_fwd_composite_max": 1.0 + (0.4 if arm == "mhc" else 0.0) * evals / config.num_steps,
            "eval/amax_bwd_composite_max": 1.0 + (0.3 if arm == "mhc" else 0.0) * evals / config.num_steps,
            "eval/amax_fwd_layer_max": np.full(evals.size, 1.01),
            "eval/amax_bwd_layer_max": np.full(evals.size, 1.01),
            "eval/ds_error_max": np.full(evals.size, 1e-4 if arm == "mhc" else 0.0),
            "eval/expert_max_violation": np.full(evals.size, 0.2),
            "eval/expert_cv": np.full(evals.size, 0.1),
            "eval/dead_experts": np.zeros(evals.size),
        }
        if evals.size:
            eval_values["eval/loss"][-1] = final
        rows += [
            (name, float(value), t0 + int(step) * 100 + 50, run_id, int(step), False)
            for name, column in eval_values.items()
            for step, value in zip(evals[:-1], column[:-1], strict=True)
        ]
        connection.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?)", rows
        )
        connection.commit()
        last = int(steps[-1])
        metrics = [Metric(name, float(column[-1]), t0 + last * 100, last) for name, column in values.items()]
        metrics += [
            Metric(name, float(column[-1]), t0 + int(evals[-1]) * 100 + 50, int(evals[-1]))
            for name, column in eval_values.items()
            if evals.size
        ]
        total_tokens = config.num_steps * tokens_per_step
        metrics += [
            Metric(name, value, t0 + last * 100 + 99, last)
            for name, value in (
                ("final/val_loss", final),
                ("final/tokens", float(total_tokens)),
                ("final/flops", total_tokens * flops_per_token),
                ("final/wall_time_s", float(values["perf/step_time_s"].sum())),
                ("final/peak_memory_mb", 500.0 * (N / 1e6) ** 0.5 * (1.12 if arm == "mhc" else 1.0)),
            )
        ]
        client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(k, str(v)) for k, v in _params(arm, size_index, seed, budget, tokens_per_step).items()],
            tags=[RunTag("mlflow.source.name", "analysis/bench_store.py")],
        )
        _write_diagnostics(artifacts / run_id / "artifacts" / "diagnostics", evals, arm)
        client.set_terminated(run_id, "FINISHED", end_time=t0 + last * 100)
        if (index + 1) % 100 == 0:
            logger.info("benchmark store: %d of %d runs written", index + 1, len(grid))
    connection.close()
    client.set_terminated(parent.info.run_id, "FINISHED")


def _history(
    rng: np.random.Generator,
    num_steps: int,
    final: float,
    N: float,
    flops_per_token: float,
    tokens_per_step: float,
    arm: str,
) -> dict[str, np.ndarray]:
    """The per-step metrics of one run: a loss decaying to `final` with noise, a noisy step time."""
    steps = np.arange(1, num_steps + 1)
    progress = steps / num_steps
    loss = final * (1.0 + 0.6 * (1.0 - progress) ** 2) * np.exp(rng.normal(0.0, 0.01, num_steps))
    step_time = 0.05 * (N / 1e6) ** 0.8 * (1.07 if arm == "mhc" else 1.0) * np.exp(rng.normal(0, 0.03, num_steps))
    step_time[0] *= 10.0  # the first step compiles and grows the allocator
    tokens = steps * tokens_per_step
    return {
        "train/loss": loss,
        "train/lr": 3e-3 * np.minimum(1.0, 10 * progress),
        "train/grad_norm": np.exp(rng.normal(0.0, 0.15, num_steps)),
        "train/tokens": tokens,
        "train/epochs": tokens / 5e9,
        "train/flops": tokens * flops_per_token,
        "train/flops_6n": tokens * 6.0 * N,
        "perf/step_time_s": step_time,
        "perf/tokens_per_s": tokens_per_step / step_time,
        "perf/flops_per_s": tokens_per_step * flops_per_token / step_time,
    }


def _params(arm: str, size_index: int, seed: int, budget: float, tokens_per_step: float) -> dict[str, object]:
    """~40 flattened config params, as many as a resolved RunSpec logs."""
    depth = 4 + 2 * size_index
    params: dict[str, object] = {
        "model.name": f"z{size_index}",
        "model.dim": 64 * depth,
        "model.num_layers": depth,
        "model.num_heads": depth,
        "model.vocab_size": 8192,
        "model.residual.variant": arm,
        "model.residual.n": 4 if arm == "mhc" else 1,
        "model.residual.sinkhorn_iters": 20,
        "model.residual.convention": "row",
        "model.residual.alpha_init": 0.01,
        "model.norm": "rms",
        "model.mlp_ratio": 4.0,
        "model.moe": None,
        "training.lr": 3e-3,
        "training.min_lr_ratio": 0.1,
        "training.warmup_fraction": 0.1,
        "training.weight_decay": 0.1,
        "training.grad_clip": 1.0,
        "training.betas": "[0.9, 0.95]",
        "training.seq_len": _SEQ_LEN,
        "training.batch_size": tokens_per_step / _SEQ_LEN,
        "training.seed": seed,
        "training.budget.flops": budget,
        "training.compile": False,
        "training.device": "auto",
        "training.dtype": "float32",
        "training.eval_every": 50,
        "training.eval_batches": 8,
        "training.checkpoint_every": 200,
        "data.name": "pd-literary",
        "data.tokenizer": "bpe-8192",
        "data.cache": "~/.ladder-cache",
        "resources.workers": 1,
        "resources.cpus_per_worker": 1,
        "resources.gpus_per_worker": 0,
        "resources.sharding": "none",
        "resources.recompute": False,
        "tracking.experiment": EXPERIMENT,
        "tracking.log_every": 1,
        "sweep.name": EXPERIMENT,
    }
    return params


def _write_diagnostics(folder: Path, evals: np.ndarray, arm: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    depth = 8
    growth = 0.05 if arm == "mhc" else 0.0
    for step in evals:
        scale = float(step) / float(evals[-1])
        profile = {
            "layer_forward": [1.01] * depth,
            "layer_backward": [1.01] * depth,
            "composite_forward": [1.0 + growth * scale * layer for layer in range(depth)],
            "composite_backward": [1.0 + growth * scale * (depth - 1 - layer) for layer in range(depth)],
            "ds_error": [1e-4 if arm == "mhc" else 0.0] * depth,
        }
        (folder / f"step_{int(step):08d}.json").write_text(json.dumps(profile))
