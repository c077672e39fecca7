"""Measured memory of a real model on CPU, to hold the planner's arithmetic (`models.memory`) to account.

Two measurements of what one training forward pass leaves for backward:
- `saved_tensor_bytes`: the unique storages autograd saves, through `torch.autograd.graph.saved_tensors_hooks`
  (what the issue asks for). It is exact without recomputation, but inside a checkpointed region the checkpoint's
  own hooks take over, so it cannot see what a recomputation policy keeps.
- `held_activation_bytes`: bytes allocated during the forward pass and still allocated after it, from the
  profiler's CPU allocator events. It sees everything the graph keeps alive (saved tensors, checkpoint inputs,
  selective-checkpoint caches) and so measures every policy alike; without recomputation both agree (tests).
And `state_bytes`: the bytes of parameters, gradients and optimizer state a model and its optimizer hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

__all__ = ["StateBytes", "held_activation_bytes", "saved_tensor_bytes", "state_bytes"]


def _storage_key(t: Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def saved_tensor_bytes(forward: Callable[[], Tensor], exclude: tuple[Tensor, ...] = ()) -> tuple[Tensor, int]:
    """(output, bytes) of ``forward()``: unique storages autograd saved for backward, ``exclude`` left out.

    Pass the parameters as ``exclude``: autograd saves weights too, but they are not activations.
    """
    excluded = {_storage_key(t) for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        key = _storage_key(t)
        if key not in excluded and key[0]:
            seen[key[0]] = max(seen.get(key[0], 0), key[1])
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    return out, sum(seen.values())


def held_activation_bytes(forward: Callable[[], Tensor]) -> tuple[Tensor, int]:
    """(output, bytes) of ``forward()``: CPU memory allocated during it and still allocated after it."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = forward()
    return out, sum(event.self_cpu_memory_usage for event in prof.events())


@dataclass(frozen=True, slots=True)
class StateBytes:
    """Bytes of training state held by one process."""

    parameters: int
    gradients: int
    optimizer: int


def _local(t: Tensor) -> Tensor:
    """The shard a process holds of a DTensor (FSDP2), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> StateBytes:
    """Parameter, gradient and optimizer-state bytes (tensor state only: AdamW's m, v, and its step counters)."""
    params = [_local(p) for p in model.parameters()]
    grads = [_local(p.grad) for p in model.parameters() if p.grad is not None]
    state = [_local(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, Tensor)]
    return StateBytes(
        parameters=sum(t.numel() * t.element_size() for t in params),
        gradients=sum(t.numel() * t.element_size() for t in grads),
        optimizer=sum(t.numel() * t.element_size() for t in state),
    )
