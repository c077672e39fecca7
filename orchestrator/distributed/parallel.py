"""`Parallel`: what the trainer needs to know and do about the other workers of its run.

The trainer has one code path for one process and for many: it asks a `Parallel` for its rows of each batch,
for the model to run forward on, and for the few collectives a data-parallel step needs. ``Parallel.single``
is a world of one (every collective is the identity, no process group exists); ``Parallel.join`` describes the
process group Ray Train started (`orchestrator.distributed.launch`).

Choices:
- Every sharding is data parallel over all workers (``ddp`` replicates, ``fsdp`` shards over all, ``hsdp``
  shards within ``workers / replicate`` and replicates across ``replicate``), so the global batch is split into
  ``workers`` equal slices of consecutive rows of the step's (seed, step) batch. Each rank's loss is the mean
  over its slice and the gradient reduction averages over ranks, which equals the one-process mean over the
  whole batch: the optimisation is the same, up to the fp32 reduction order.
- FSDP2 (`torch.distributed.fsdp.fully_shard`) per transformer block, then the root (embedding, final norm,
  head): a block is the unit that is all-gathered before its forward and resharded after it. On CUDA the
  parameters are all-gathered in bf16 and gradients reduced in fp32 (`MixedPrecisionPolicy`), with the fp32
  sharded master weights and optimizer state; on CPU everything stays fp32 (bf16 matmuls are not faster on
  CPUs without AMX, and fp32 keeps the one-process parity testable).
- DDP keeps ``broadcast_buffers=False``: the MoE balancing counters (``tokens_per_expert``) accumulate per rank
  during forward and are summed explicitly before the bias update (`sync_expert_load`); DDP's default would
  overwrite them with rank 0's at every forward. The router biases then get the same update on every rank.
- Gradient clipping uses the global norm: with FSDP the gradients are DTensor shards, whose norm
  `get_total_norm` reduces across the mesh (``full_tensor``).
- Activation recomputation (`models.recompute.apply_recompute`) is set before sharding, as FSDP2 requires.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from models.errors import ConfigError
from orchestrator.resources import Resources

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from models import MoETransformer
    from orchestrator.runspec import RunSpec

__all__ = ["Parallel", "check_parallel"]


def check_parallel(spec: RunSpec) -> None:
    """Raise `ConfigError` if ``spec``'s batch cannot be split evenly over its workers and micro-batches."""
    workers, training = spec.resources.workers, spec.training
    if training.batch_size % (workers * training.grad_accum):
        raise ConfigError(
            f"training.batch_size ({training.batch_size}) must be divisible by resources.workers ({workers}) "
            f"× training.grad_accum ({training.grad_accum}): each worker takes an equal slice of every batch"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Parallel:
    """This process's place in its run's worker group, and the data-parallel operations the trainer uses."""

    resources: Resources
    device: torch.device
    rank: int = 0
    world_size: int = 1
    mesh: DeviceMesh | None = None  # the FSDP/HSDP mesh; None for one process and for DDP

    @classmethod
    def single(cls, resources: Resources, device: torch.device) -> Parallel:
        """One process, no process group."""
        return cls(resources=resources, device=device)

    @classmethod
    def join(cls, resources: Resources, device: torch.device) -> Parallel:
        """The initialised default process group (one rank per worker), with the mesh its sharding needs."""
        world_size = dist.get_world_size()
        if world_size != resources.workers:
            raise ConfigError(f"resources.workers ({resources.workers}) != the process group's size ({world_size})")
        mesh = None
        if resources.sharding != "ddp":
            from torch.distributed.device_mesh import init_device_mesh

            if resources.sharding == "hsdp":
                shape, names = (resources.replicate, world_size // resources.replicate), ("replicate", "shard")
            else:
                shape, names = (world_size,), ("shard",)
            mesh = init_device_mesh(device.type, shape, mesh_dim_names=names)
        return cls(resources=resources, device=device, rank=dist.get_rank(), world_size=world_size, mesh=mesh)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and commits checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of ``batch_size`` (consecutive, equal slices)."""
        local = batch_size // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)

    def prepare(self, model: MoETransformer) -> nn.Module:
        """Apply recomputation and sharding to ``model`` in place; return the module to run training forward on.

        FSDP keeps ``model`` itself (its class gains the FSDP hooks), DDP returns a wrapper around it; either
        way ``model`` stays the module whose state, evaluation and MoE methods the trainer uses.
        """
        if self.resources.recompute != "none":
            from models.recompute import apply_recompute

            apply_recompute(model, self.resources.recompute)
        if not self.distributed:
            return model
        if self.mesh is None:  # ddp
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if self.device.type == "cuda"
            else MixedPrecisionPolicy()
        )
        for block in model.blocks:
            fully_shard(block, mesh=self.mesh, mp_policy=policy)
        fully_shard(model, mesh=self.mesh, mp_policy=policy)
        return model

    def gradient_sync(self, forward_model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Where a micro-batch's forward and backward run: under DDP, every micro-batch but the step's last skips
        the gradient all-reduce (the local sum is reduced once). FSDP reduce-scatters every micro-batch, which
        keeps the gradients sharded between micro-batches (memory over bandwidth)."""
        from torch.nn.parallel import DistributedDataParallel

        if isinstance(forward_model, DistributedDataParallel) and not last:
            return forward_model.no_sync()
        return contextlib.nullcontext()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (float64 all-reduce)."""
        if not self.distributed:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(total)
        return total.item() / self.world_size

    def gather(self, value: float) -> list[float]:
        """``value`` from every rank, in rank order."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a decision only rank 0 can make: the ledger, a pruner)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def clip_grad_norm(self, parameters: list[nn.Parameter], max_norm: float) -> float:
        """Scale the gradients to a global norm of at most ``max_norm``; return the norm before scaling."""
        grads = [p.grad for p in parameters if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads)
        if hasattr(total, "full_tensor"):  # a DTensor: the partial norms of the shards, reduced over the mesh
            total = total.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
        return total.item()

    def sync_expert_load(self, model: MoETransformer) -> None:
        """Sum every MoE layer's ``tokens_per_expert`` over the ranks (one all-reduce), before the bias update."""
        layers = model.moe_layers()
        if not self.distributed or not layers:
            return
        counts_LE = torch.stack([layer.tokens_per_expert for layer in layers])
        dist.all_reduce(counts_LE)
        for layer, counts_E in zip(layers, counts_LE, strict=True):
            layer.tokens_per_expert.copy_(counts_E)

    @property
    def _collective_device(self) -> torch.device:
        """NCCL reduces CUDA tensors only; gloo CPU ones."""
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")
