"""Full-training-step benchmark: what data loading, the optimizer and tracking add to the model step.

For each residual variant, in one process and on one machine:
- model-only step: forward + backward + AdamW on one fixed batch (the `ladder bench step` workload, plus the
  optimizer), timed directly;
- full step: `orchestrator.train.run` on the real corpus with MLflow tracking, timed by the trainer itself
  (`perf/step_time_s` of non-evaluation steps: batch sampling, forward, backward, clipping, AdamW, expert-bias
  update and buffered logging).
The ratio full / model-only is the cost of data and logging; the target is ≤ 1.05.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from models import build_model
from orchestrator.data import BatchSampler, DataConfig, load_dataset
from orchestrator.runspec import RunSpec

__all__ = ["TrainStepRow", "run_train_step_benchmark"]


@dataclass(frozen=True, slots=True)
class TrainStepRow:
    """One variant's model-only and full-step medians."""

    preset: str
    variant: str
    n: int
    model_step_ms: float
    full_step_ms: float
    full_tokens_per_s: float

    @property
    def overhead(self) -> float:
        """(full − model-only) / model-only."""
        return self.full_step_ms / self.model_step_ms - 1


def _model_step_ms(spec: RunSpec, data: DataConfig, steps: int) -> float:
    model = build_model(spec.model, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.training.lr)
    inputs_BS, targets_BS = BatchSampler(load_dataset(data), seed=0).train_batch(
        0, spec.training.batch_size, spec.training.seq_len
    )
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = F.cross_entropy(model(inputs_BS).flatten(0, 1), targets_BS.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.training.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_expert_biases()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times[2:])


def run_train_step_benchmark(
    preset: str, variants: list[dict], *, data: DataConfig, steps: int = 30, threads: int = 1,
    batch_size: int = 16, seq_len: int = 128,
) -> list[TrainStepRow]:
    """Model-only vs full trainer step for each variant (``variants``: ResidualConfig fields)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.train import run

    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for variant in variants:
            spec = RunSpec(
                model={"preset": preset, "residual": variant},
                training={
                    "budget": {"steps": steps}, "batch_size": batch_size, "seq_len": seq_len, "threads": threads,
                    "eval_every": steps, "checkpoint_every": steps,
                },
                data=data.model_dump(),
                tracking={"uri": f"sqlite:///{Path(scratch) / 'bench.db'}", "experiment": "bench-train-step"},
                storage=str(Path(scratch) / "runs"),
            )
            model_ms = _model_step_ms(spec, data, steps)
            result = run(spec)
            history = MlflowClient(spec.tracking.uri).get_metric_history(result.run_id, "perf/step_time_s")
            full = sorted((m.step, m.value) for m in history)
            full_ms = 1e3 * statistics.median(value for step, value in full[2:-1])  # skip warm-up and the eval step
            rows.append(
                TrainStepRow(
                    preset=preset, variant=spec.model.residual.variant, n=spec.model.residual.n,
                    model_step_ms=model_ms, full_step_ms=full_ms,
                    full_tokens_per_s=batch_size * seq_len / (full_ms / 1e3),
                )
            )
    return rows
