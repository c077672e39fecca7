"""Model-step benchmark: forward + backward time and tokens/s per residual variant, on the CPU proxies.

Every variant is timed in the same process, interleaved round-robin so that machine noise (other processes,
frequency changes) hits all variants alike; the table reports the median step time and the ratio to
``residual``: the median over rounds of each round's own ratio (the variant's step over the residual step
timed next to it), which cancels load that changes from round to round on a shared machine, where a ratio
of two medians taken over different rounds does not. Rows are appended in long format to a CSV that analysis/
can read.

A step is what training does: forward, loss, backward. By default the loss is the model's fused head +
cross-entropy (``model(inputs, targets)``, `models.loss`); ``loss="logits"`` times the unfused
``F.cross_entropy(model(inputs), targets)`` instead, for comparison with trainers that still compute it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from models.benchlog import append_rows, record_context
from models.config import ModelConfig
from models.cpu_runtime import configure_cpu_runtime
from models.presets import get_preset
from models.transformer import build_model

__all__ = ["VARIANTS", "StepBenchmarkRow", "append_csv", "run_step_benchmark"]

# The four variants at the paper's expansion rate.
VARIANTS: dict[str, dict] = {
    "residual": {"variant": "residual", "n": 1},
    "hc": {"variant": "hc", "n": 4},
    "mhc": {"variant": "mhc", "n": 4},
    "mhc-lite": {"variant": "mhc-lite", "n": 4},
}


@dataclass(frozen=True, slots=True)
class StepBenchmarkRow:
    """One (preset, variant) measurement."""

    preset: str
    variant: str
    n: int
    threads: int
    batch_size: int
    seq_len: int
    median_ms: float
    tokens_per_s: float
    ratio_to_residual: float


def _time_step(model: torch.nn.Module, tokens_BS: torch.Tensor, loss: Literal["fused", "logits"]) -> float:
    start = time.perf_counter()
    inputs_BS, targets_BS = tokens_BS[:, :-1], tokens_BS[:, 1:]
    if loss == "fused":
        model(inputs_BS, targets_BS).backward()
    else:
        F.cross_entropy(model(inputs_BS).flatten(0, 1), targets_BS.flatten()).backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def run_step_benchmark(
    presets: list[str],
    variants: list[str],
    *,
    threads: int = 2,
    batch_size: int = 16,
    seq_len: int = 256,
    warmup: int = 2,
    repeats: int = 10,
    loss: Literal["fused", "logits"] = "fused",
) -> list[StepBenchmarkRow]:
    """Median forward+backward step time of each preset × variant; ratios against ``residual`` of the same preset."""
    configure_cpu_runtime(threads)
    rows: list[StepBenchmarkRow] = []
    for preset in presets:
        base: ModelConfig = get_preset(preset)
        configs = {name: base.with_residual(**VARIANTS[name]) for name in ["residual", *variants]}
        models = {name: build_model(cfg, seed=0) for name, cfg in configs.items()}
        generator = torch.Generator().manual_seed(0)
        tokens_BS = torch.randint(0, base.vocab_size, (batch_size, seq_len + 1), generator=generator)
        times: dict[str, list[float]] = {name: [] for name in models}
        for round_index in range(warmup + repeats):
            for name, model in models.items():
                elapsed = _time_step(model, tokens_BS, loss)
                if round_index >= warmup:
                    times[name].append(elapsed)
        for name in dict.fromkeys(["residual", *variants]):
            median = statistics.median(times[name])
            paired = statistics.median(t / base for t, base in zip(times[name], times["residual"], strict=True))
            rows.append(
                StepBenchmarkRow(
                    preset=preset,
                    variant=name,
                    n=configs[name].residual.n,
                    threads=threads,
                    batch_size=batch_size,
                    seq_len=seq_len,
                    median_ms=1e3 * median,
                    tokens_per_s=batch_size * seq_len / median,
                    ratio_to_residual=paired,
                )
            )
    return rows


def append_csv(rows: list[StepBenchmarkRow], path: Path) -> None:
    """Append rows with machine, torch version, git SHA and timestamp (long format)."""
    context = {**record_context(), "torch": torch.__version__}
    records = [{**context, **asdict(row)} for row in rows]
    append_rows(records, path)
