"""Full-training-step benchmark: what data loading and tracking add to the model step (target: ≤ 5 %).

For each residual variant, in one process and on one machine, three measurements:
- model-only step: forward + backward (the same fused head + loss the trainer calls) + clipping + AdamW +
  expert-bias update on one fixed batch, timed directly, once before and once after the full run; the
  baseline is the mean of the two medians, so drift during the variant (other processes, frequency) biases
  the ratio by half as much;
- full step: `orchestrator.train.run` on the real corpus with MLflow tracking, timed by the trainer itself
  (`perf/step_time_s` of non-evaluation steps: batch sampling, forward, backward, clipping, AdamW, expert-bias
  update and buffered logging);
- data + tracking alone: the same number of steps of batch sampling and the trainer's per-step metrics sent
  through a real `RunTracker` to the same SQLite store, ending with a flush, so the tracker's background
  thread's work is inside the wall time. On a machine whose cores all train, that thread's CPU time is taken
  from the model, so this serial figure is the cost the ≤ 5 % target is about.
The full/model ratio is the end-to-end cross-check; on a shared 2-core machine its noise (± 5-10 % between two
model builds) is larger than the effect, which is why the direct measurement exists.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from models import build_model
from models.benchlog import append_rows, record_context
from models.cpu_runtime import configure_cpu_runtime
from orchestrator.data import BatchSampler, DataConfig, TokenDataset, load_dataset
from orchestrator.runspec import RunSpec

__all__ = ["TrainStepRow", "append_csv", "run_train_step_benchmark"]

# The per-step metric names the trainer logs (`orchestrator.train`), with dummy values.
_STEP_METRICS = (
    "train/loss", "train/lr", "train/grad_norm", "train/tokens", "train/epochs", "train/flops", "train/flops_6n",
    "perf/step_time_s", "perf/tokens_per_s", "perf/flops_per_s",
)


@dataclass(frozen=True, slots=True)
class TrainStepRow:
    """One variant's model-only, full-step and data + tracking medians (ms per step)."""

    preset: str
    variant: str
    n: int
    threads: int
    tokens_per_step: int
    model_step_ms: float
    full_step_ms: float
    data_tracking_ms: float
    full_tokens_per_s: float

    @property
    def full_overhead(self) -> float:
        """(full − model-only) / model-only: end to end, noisy."""
        return self.full_step_ms / self.model_step_ms - 1

    @property
    def data_tracking_share(self) -> float:
        """Data + tracking time as a fraction of the model-only step: the measured cost."""
        return self.data_tracking_ms / self.model_step_ms


def _model_step_ms(spec: RunSpec, dataset: TokenDataset, steps: int) -> float:
    model = build_model(spec.model, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.training.lr)
    inputs_BS, targets_BS = BatchSampler(dataset, seed=0).train_batch(
        0, spec.training.batch_size, spec.training.seq_len
    )
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        model(inputs_BS, targets_BS).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.training.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_expert_biases()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times[2:])


def _data_tracking_ms(spec: RunSpec, dataset: TokenDataset, steps: int) -> float:
    """Wall time per step of sampling the step's batch and logging the trainer's metrics, flush included."""
    from orchestrator.tracking import RunTracker

    sampler = BatchSampler(dataset, seed=spec.training.seed)
    training = spec.training
    tracker = RunTracker.open(
        spec.tracking, run_key=f"{spec.run_key}-io", run_name="data + tracking only", tags={}, params={}
    )
    with tracker:
        started = time.perf_counter()
        for step in range(steps):
            sampler.train_batch(step, training.batch_size, training.seq_len)
            tracker.log_metrics({name: float(step) for name in _STEP_METRICS}, step + 1)
        tracker.flush()
        elapsed = time.perf_counter() - started
        tracker.finish("FINISHED")
    return 1e3 * elapsed / steps


def run_train_step_benchmark(
    preset: str, variants: list[dict], *, data: DataConfig, steps: int = 30, threads: int = 1,
    batch_size: int = 16, seq_len: int = 128,
) -> list[TrainStepRow]:
    """Model-only vs full trainer step vs data + tracking, for each variant (``variants``: ResidualConfig fields)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.train import run

    configure_cpu_runtime(threads)
    dataset = load_dataset(data)  # once: the baselines and the data + tracking loop share it
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
            model_before_ms = _model_step_ms(spec, dataset, steps)
            result = run(spec)
            model_ms = (model_before_ms + _model_step_ms(spec, dataset, steps)) / 2
            history = MlflowClient(spec.tracking.uri).get_metric_history(result.run_id, "perf/step_time_s")
            full = sorted((m.step, m.value) for m in history)
            full_ms = 1e3 * statistics.median(value for step, value in full[2:-1])  # skip warm-up and the eval step
            rows.append(
                TrainStepRow(
                    preset=preset, variant=spec.model.residual.variant, n=spec.model.residual.n, threads=threads,
                    tokens_per_step=batch_size * seq_len, model_step_ms=model_ms, full_step_ms=full_ms,
                    data_tracking_ms=_data_tracking_ms(spec, dataset, steps),
                    full_tokens_per_s=batch_size * seq_len / (full_ms / 1e3),
                )
            )
    return rows


def append_csv(rows: list[TrainStepRow], path: Path) -> None:
    """Append rows with machine, torch version, git SHA and timestamp (long format)."""
    context = {**record_context(), "torch": torch.__version__}
    records = [
        {**context, **asdict(row), "full_overhead": row.full_overhead, "data_tracking_share": row.data_tracking_share}
        for row in rows
    ]
    append_rows(records, path)
