"""The launch plan of a sweep: memory per GPU, GPUs, tokens per step and time of every grid point.

`plan_point` applies the memory arithmetic of `models.memory` to one grid point's RunSpec and resources:
- Data parallelism: every worker takes ``batch_size / workers`` sequences of each step, in ``grad_accum``
  micro-batches (as `orchestrator.distributed.parallel` splits it), so one GPU holds one micro-batch of
  activations. The state is sharded over all workers (``fsdp``), over ``workers / replicate`` (``hsdp``) or not
  at all (``ddp``).
- Precision (`models.memory.PRECISIONS`): on GPUs, FSDP's ``bf16-mixed`` (bf16 compute, fp32 master state and
  reduction; the trainer's choice) when sharded, else fp32 state with bf16 ``autocast``; on CPUs fp32.
- Fit: a point fits when its peak estimate is at most `USABLE_FRACTION` of ``resources.gpu_memory_gb``; the rest
  is left to the CUDA context, NCCL's buffers, allocator fragmentation and the activation gradients the
  estimate leaves out. CPU points are not checked (host memory is not a sweep resource).
- Time: the step's architecture FLOPs (`RunSpec.flops_per_step`) plus what recomputation runs again (a second
  forward of every block for ``block``; of the residual-connection ops for ``mhc``), over the GPUs' achieved
  throughput: ``resources.throughput_tflops`` when measured, else `DEFAULT_MFU` of `H100_BF16_PEAK_TFLOPS`.

`check_fits` is the guard `ladder submit` runs before launching anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from models import ConfigError, flops_per_token
from models.memory import MemoryEstimate, Precision, estimate_memory
from orchestrator.resources import Resources
from orchestrator.sweep import GridPoint

__all__ = [
    "DEFAULT_MFU",
    "H100_BF16_PEAK_TFLOPS",
    "USABLE_FRACTION",
    "PointPlan",
    "check_fits",
    "plan_point",
    "plan_sweep",
]

# NVIDIA H100 SXM5 datasheet: 989 TFLOP/s dense BF16 (1979 is with 2:4 sparsity).
H100_BF16_PEAK_TFLOPS = 989.0
# Model FLOPs utilisation assumed when none is measured: fine-grained MoE training on H100s reports 20-40 %
# (DeepSeek-V3's report implies ≈ 23 % on H800s with FP8); 30 % is a middle, stated guess, not a measurement.
DEFAULT_MFU = 0.30
# Share of the GPU memory the estimate may use (see the module doc).
USABLE_FRACTION = 0.90
GB = 1e9


@dataclass(frozen=True, slots=True)
class PointPlan:
    """What one grid point needs and how long it runs, per GPU where it says so."""

    point: GridPoint
    shard_degree: int
    micro_batch_sequences: int
    precision: Precision
    memory: MemoryEstimate
    capacity_bytes: float | None  # usable bytes of one GPU; None on CPU (not checked)
    step_flops: float  # FLOPs of one optimizer step over all GPUs, recomputation included
    step_seconds: float | None  # None when no throughput is known (CPU without a measured one)

    @property
    def fits(self) -> bool:
        return self.capacity_bytes is None or self.memory.total <= self.capacity_bytes

    @property
    def num_gpus(self) -> int:
        return self.point.resources.workers * self.point.resources.gpus

    @property
    def tokens_per_step(self) -> int:
        return self.point.spec.training.tokens_per_step

    @property
    def run_seconds(self) -> float | None:
        return None if self.step_seconds is None else self.step_seconds * self.point.spec.total_steps()

    @property
    def label(self) -> str:
        """How errors and tables name the point: run key, size, variant."""
        spec = self.point.spec
        residual = spec.model.residual
        variant = residual.variant if residual.variant == "residual" else f"{residual.variant} n={residual.n}"
        return f"{spec.run_key} ({spec.model.name}, {variant})"


def shard_degree(resources: Resources) -> int:
    """Ranks one copy of the state is spread over."""
    match resources.sharding:
        case "fsdp":
            return resources.workers
        case "hsdp":
            return resources.workers // resources.replicate
        case "ddp":
            return 1
    raise AssertionError(resources.sharding)


def _precision(resources: Resources) -> Precision:
    """What the trainer runs: fp32 on CPU, FSDP's bf16 mixed precision when sharded, else bf16 autocast."""
    if resources.gpus == 0:
        return "fp32"
    return "bf16-mixed" if shard_degree(resources) > 1 else "autocast"


def _recompute_flops_per_token(point: GridPoint) -> float:
    """FLOPs per token that recomputation adds: forward (= a third of training) of what it runs again."""
    spec, policy = point.spec, point.resources.recompute
    flops = flops_per_token(spec.model, spec.training.seq_len)
    if policy == "block":
        return (flops.deepseek_m + flops.residual_extra) / 3
    if policy == "mhc":
        return flops.residual_extra / 3
    return 0.0


def plan_point(point: GridPoint) -> PointPlan:
    """The plan of one grid point; raises `ConfigError` when its batch cannot be split over its workers."""
    spec, resources = point.spec, point.resources
    training = spec.training
    slices = resources.workers * training.grad_accum
    if training.batch_size % slices:
        raise ConfigError(
            f"training.batch_size ({training.batch_size}) must be divisible by resources.workers "
            f"({resources.workers}) × training.grad_accum ({training.grad_accum}) [grid point {spec.run_key}]"
        )
    micro = training.batch_size // slices
    degree = shard_degree(resources)
    state = estimate_memory(
        spec.model,
        micro_batch_tokens=micro * training.seq_len,
        shard_degree=degree,
        recompute=resources.recompute,
        precision=_precision(resources),
    )
    step_flops = spec.flops_per_step() + _recompute_flops_per_token(point) * training.tokens_per_step
    throughput = resources.throughput_tflops
    if throughput is None and resources.gpus:
        throughput = DEFAULT_MFU * H100_BF16_PEAK_TFLOPS
    devices = resources.workers * max(resources.gpus, 1)
    return PointPlan(
        point=point,
        shard_degree=degree,
        micro_batch_sequences=micro,
        precision=_precision(resources),
        memory=state,
        capacity_bytes=USABLE_FRACTION * resources.gpu_memory_gb * GB if resources.gpus else None,
        step_flops=step_flops,
        step_seconds=None if throughput is None else step_flops / (devices * throughput * 1e12),
    )


def plan_sweep(points: Sequence[GridPoint]) -> list[PointPlan]:
    """Every grid point's plan, in the sweep's order; the `ConfigError` of each unsplittable batch, joined."""
    plans, problems = [], []
    for point in points:
        try:
            plans.append(plan_point(point))
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError("; ".join(problems))
    return plans


def check_fits(points: Sequence[GridPoint]) -> list[PointPlan]:
    """Raise `ConfigError` naming every GPU grid point whose plan does not fit its GPUs; else return the plans."""
    plans = plan_sweep(points)
    too_big = [plan for plan in plans if not plan.fits]
    if too_big:
        raise ConfigError(
            "these grid points do not fit their GPUs (see `ladder plan`): "
            + "; ".join(
                f"{plan.label} needs {plan.memory.total / GB:.1f} GB per GPU, usable "
                f"{plan.capacity_bytes / GB:.1f} GB of resources.gpu_memory_gb ({plan.point.resources.gpu_memory_gb:g})"
                for plan in too_big
            )
        )
    return plans
