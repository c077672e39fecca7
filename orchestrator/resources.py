"""Resources and parallelism of one run: how many workers, what each gets, how the model is sharded.

One schema serves the sweep's per-size ``resources`` section, the RunSpec (where it is a resource, left out of the
run key: the same run on 1 or 8 workers is the same run) and the memory planner (``ladder plan``).

    resources:
      default: {cpus: 1}
      paper-27b: {workers: 16, gpus: 1, cpus: 8, sharding: fsdp, recompute: mhc}

Sharding: ``ddp`` replicates the model on every worker; ``fsdp`` shards parameters, gradients and optimizer state
per transformer block (FSDP2 ``fully_shard``) across all workers; ``hsdp`` shards within groups of
``workers / replicate`` workers and replicates across ``replicate`` groups. Recompute: ``none`` keeps every
activation; ``block`` recomputes each transformer block in backward; ``mhc`` recomputes the mHC intermediates in
blocks of L_r ≈ √(nL/(n+2)) layers (MHC_SPEC §5) and keeps the rest. ``gpu_memory_gb`` and ``throughput_tflops``
only inform the planner (`orchestrator.planner`): the memory a point must fit in and its step-time estimate.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from models.config import ConfigModel, rule_violation

__all__ = ["Resources"]


class Resources(ConfigModel):
    """What one run of a size needs, and how it is spread over its workers."""

    config_path: ClassVar[str] = "sweep.resources"

    cpus: float = Field(default=1, gt=0, description="CPUs per worker (also the torch thread count, rounded).")
    gpus: int = Field(default=0, ge=0, description="GPUs per worker (whole GPUs only).")
    workers: int = Field(default=1, ge=1, description="Workers per run; > 1 runs under Ray Train.")
    sharding: Literal["ddp", "fsdp", "hsdp"] = Field(
        default="fsdp", description="ddp: replicate; fsdp: shard per block; hsdp: shard in groups, replicate across."
    )
    replicate: int = Field(default=1, ge=1, description="hsdp: replica groups (must divide workers).")
    recompute: Literal["none", "block", "mhc"] = Field(
        default="none", description="Activation recomputation: none, every block, or mHC-aware blocks of L_r."
    )
    gpu_memory_gb: float = Field(
        default=80, gt=0, description="Memory of one GPU in GB (1e9 bytes), the capacity `ladder plan` checks against."
    )
    throughput_tflops: float | None = Field(
        default=None,
        gt=0,
        description="Achieved training TFLOP/s per GPU (measured) for step-time estimates; default: the "
        "planner's stated MFU of an H100's bf16 peak on GPUs, no estimate on CPUs.",
    )

    @model_validator(mode="after")
    def _replicas_divide_workers(self) -> Resources:
        if self.workers % self.replicate:
            raise rule_violation("replicate", self.replicate, f"must divide workers ({self.workers})")
        if self.replicate > 1 and self.sharding != "hsdp":
            raise rule_violation("replicate", self.replicate, f"needs sharding: hsdp (got {self.sharding})")
        return self

    @property
    def threads(self) -> int:
        """torch intra-op threads per worker."""
        return max(1, int(self.cpus))
