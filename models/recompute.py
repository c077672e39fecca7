"""Activation recomputation policies for a built `MoETransformer`: none, per block, or mHC-aware.

The trainer calls `apply_recompute(model, policy)` once after building the model and before sharding it. The
module tree is left unchanged (no wrapper modules, so parameter names and checkpoints stay the same); the policy
changes how `MoETransformer.forward` runs its blocks (`run_blocks`):

- ``none``: every activation autograd saves stays in memory.
- ``block``: each transformer block runs under `torch.utils.checkpoint.checkpoint(use_reentrant=False)`; only
  its input is kept and the whole block runs again in backward.
- ``mhc``: the paper's mHC-aware scheme (arXiv 2512.24880 §4.3.2, Eq. 20; MHC_SPEC §5). Blocks are grouped into
  regions of L_r sublayers; each region keeps only its input stream state x_{l0} (n·C per token) and the
  expensive outputs of its sublayers F: every matmul, the attention kernel and the routing (top-k, sort). In
  backward it recomputes the residual-connection work (coefficients, Sinkhorn, the pre/post/residual mixes, so
  x_l, H_pre·x_l and RMSNorm(H_pre·x_l)) and F's cheap pointwise ops from those cached outputs; no matmul runs
  twice. This is PyTorch's selective activation checkpointing: forward hooks on ``block.attn`` / ``block.ffn``
  mark when an op runs inside F, and the policy caches the listed ops there (`_SUBLAYER_SAVE_OPS`).
  Difference from the paper, where F keeps all its autograd tensors: caching everything F computes holds
  outputs autograd never needs (measured: more than no recomputation for the plain residual on nano), while
  recomputing F's pointwise ops holds less than the paper's scheme for a few elementwise passes.
Group size. The paper's cost of a region of L_r sublayers is n·C·⌈L/L_r⌉ resident (one stream state per
region) plus (n+2)·C·L_r transient (the recomputed x_l, H_pre·x_l and its norm, live while one region's backward
runs); L_r* ≈ √(nL/(n+2)). Regions here are whole transformer blocks (two sublayers each), so that a region never
cuts an FSDP unit in half; `mhc_group_size` minimises the same cost over whole blocks (27B, n = 4: 3 blocks,
L_r = 6, the spec's integer optimum). The paper synchronises regions with pipeline stages; there are none here.

FSDP2: apply the policy first and `fully_shard` each block afterwards. The checkpointed function calls the block
modules, so FSDP2's pre-forward hook all-gathers during recomputation too (it skips that when it already
unsharded for backward). Under ``mhc`` a region spanning several blocks all-gathers each earlier block once more
in backward; ``block`` regions coincide with FSDP units.

MoE state: the rerun forward skips the loss-free balancing counter update (`models.moe._recomputing`), so
every policy counts each token once. torch.compile of a ``mhc`` model is
untested: the policy reads a Python flag set by module hooks.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts
from torch.utils.hooks import RemovableHandle

from models.memory import RecomputePolicy, mhc_group_size

if TYPE_CHECKING:
    from models.transformer import MoETransformer

__all__ = ["RecomputePlan", "RecomputePolicy", "apply_recompute", "mhc_group_size", "run_blocks"]

POLICIES: tuple[RecomputePolicy, ...] = ("none", "block", "mhc")

Rope = tuple[Tensor, Tensor]


@dataclass(frozen=True, slots=True)
class RecomputePlan:
    """How `MoETransformer.forward` runs its blocks: the policy and the blocks per checkpointed region."""

    policy: RecomputePolicy = "none"
    group_size: int = 1


# Depth of sublayer (F) calls in progress on this thread: > 0 while an op belongs to attention or the FFN.
_sublayer_depth: contextvars.ContextVar[int] = contextvars.ContextVar("recompute_sublayer_depth", default=0)
_sublayer_tokens: list[contextvars.Token[int]] = []


def _enter_sublayer(module: nn.Module, args: Any) -> None:
    _sublayer_tokens.append(_sublayer_depth.set(_sublayer_depth.get() + 1))


def _leave_sublayer(module: nn.Module, args: Any, output: Any) -> None:
    _sublayer_depth.reset(_sublayer_tokens.pop())


# Inside F, the ops worth keeping: matmuls, attention and the routing decisions (expensive or data-dependent).
# F's pointwise ops and norms are recomputed from them, as is every residual-connection op.
_SUBLAYER_SAVE_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._grouped_mm.default,
    torch.ops.aten.topk.default,
    torch.ops.aten.sort.stable,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
}


def _save_sublayer_ops(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Cache F's matmuls, attention and routing; recompute everything else in the region."""
    if _sublayer_depth.get() and func in _SUBLAYER_SAVE_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_mhc_contexts = functools.partial(create_selective_checkpoint_contexts, _save_sublayer_ops)


def _run_sequential(blocks: Sequence[nn.Module], x_BSNC: Tensor, rope: Rope) -> Tensor:
    for block in blocks:
        x_BSNC = block(x_BSNC, rope)
    return x_BSNC


def run_blocks(blocks: Sequence[nn.Module], x_BSNC: Tensor, rope: Rope, plan: RecomputePlan) -> Tensor:
    """Run ``blocks`` in order under ``plan``; without grad (evaluation) nothing is checkpointed."""
    if plan.policy == "none" or not torch.is_grad_enabled():
        return _run_sequential(blocks, x_BSNC, rope)
    context_fn: dict[str, Callable[[], Any]] = {"context_fn": _mhc_contexts} if plan.policy == "mhc" else {}
    for start in range(0, len(blocks), plan.group_size):
        group = blocks[start : start + plan.group_size]
        x_BSNC = checkpoint(_run_sequential, group, x_BSNC, rope, use_reentrant=False, **context_fn)
    return x_BSNC


def apply_recompute(model: MoETransformer, policy: RecomputePolicy, *, group_size: int | None = None) -> RecomputePlan:
    """Set ``model``'s recomputation policy in place (call before FSDP sharding) and return the plan.

    ``group_size`` (blocks per region) defaults to 1 for ``block`` and to `mhc_group_size` for ``mhc``; calling
    again replaces the previous policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"recompute ({policy!r}) must be one of {', '.join(POLICIES)}")
    num_layers = len(model.blocks)
    if group_size is None:
        group_size = mhc_group_size(num_layers, model.config.residual.n) if policy == "mhc" else 1
    if not 1 <= group_size <= num_layers:
        raise ValueError(f"recompute group_size ({group_size}) must be in 1..{num_layers} (the model's blocks)")
    for handle in getattr(model, "_recompute_hooks", ()):
        handle.remove()
    hooks: list[RemovableHandle] = []
    if policy == "mhc":
        for block in model.blocks:
            for sublayer in (block.attn, block.ffn):
                hooks.append(sublayer.register_forward_pre_hook(_enter_sublayer))
                hooks.append(sublayer.register_forward_hook(_leave_sublayer, always_call=True))
    model._recompute_hooks = hooks
    model.recompute = RecomputePlan(policy, group_size)
    return model.recompute
