"""Training memory per GPU from a config alone: parameters, gradients, optimizer state, FSDP buffers, activations.

Pure arithmetic (no torch, no model build), so `ladder plan` sizes the 27B model on a laptop. Parameter counts
come from `models.accounting.count_parameters` (one source of truth); tests compare every figure with a built
model, its AdamW optimizer and a measured forward pass (`models.measure`).

State bytes per parameter (AdamW keeps two fp32 moments, m and v):

    precision    where                                param  grad  optimizer          total  activations
    fp32         CPU                                    4      4    8 (m, v)           16     fp32
    autocast     CUDA without FSDP (one GPU, DDP)       4      4    8 (m, v)           16     bf16
    bf16-mixed   CUDA + FSDP2 MixedPrecisionPolicy      4      4    8 (m, v)           16     bf16 (+ bf16 gathers)
    bf16         bf16 weights, fp32 master in optim.    2      2    12 (master, m, v)  16     bf16

``bf16-mixed`` is what `orchestrator.distributed` runs on CUDA: sharded fp32 parameters (they are the master
copy), bf16 all-gathered copies for compute and fp32 gradient reduction. FSDP shards parameters, gradients and
optimizer state over the shard degree; its buffers are the unsharded root (embedding, head: FSDP2 keeps the root
gathered from forward to backward), two unsharded blocks (the current one and the prefetched next) and one
block's unsharded gradient in the compute dtype plus its fp32 copy for the reduce-scatter.

Activations are counted per token from what this code base's autograd graph keeps (attention `models.attention`,
MoE `models.moe`, residual connections `models.residual` with the `kernels.reference` ops), in three dtypes:
activations (bf16 on GPU, fp32 on CPU), fp32 (router scores, softmax statistics, mHC coefficients and the
n-stream state, which the mixing ops accumulate in fp32) and int64 (routing indices). Recomputation policies
(`models.recompute`):
- ``none``: every block's saved tensors stay resident.
- ``block``: resident is each block's input; during backward one block's activations are live again.
- ``mhc``: resident is each region's input stream state plus F's cached matmul, attention and routing outputs;
  one region's recomputed activations are live during its backward.
Left out: the gradients of activations flowing through backward (a few tensors of one layer at a time), the
cross-entropy chunk buffer and allocator fragmentation, which the planner's headroom covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from models.accounting import count_parameters
from models.config import ModelConfig

__all__ = [
    "PRECISIONS",
    "ActivationMemory",
    "MemoryEstimate",
    "Precision",
    "RecomputePolicy",
    "StateBytesPerParameter",
    "activation_memory",
    "estimate_memory",
    "mhc_group_size",
    "region_cost",
    "unit_parameters",
]

Precision = Literal["fp32", "autocast", "bf16-mixed", "bf16"]
RecomputePolicy = Literal["none", "block", "mhc"]  # `models.recompute` implements them

FP32 = 4
INT64 = 8


@dataclass(frozen=True, slots=True)
class StateBytesPerParameter:
    """Bytes one parameter costs in each kind of training state, and the dtypes of the forward pass."""

    parameter: int
    gradient: int
    optimizer: int
    compute: int  # dtype of activations and of the gathered parameters the forward pass reads

    @property
    def total(self) -> int:
        return self.parameter + self.gradient + self.optimizer


PRECISIONS: dict[Precision, StateBytesPerParameter] = {
    "fp32": StateBytesPerParameter(parameter=4, gradient=4, optimizer=8, compute=4),
    "autocast": StateBytesPerParameter(parameter=4, gradient=4, optimizer=8, compute=2),
    "bf16-mixed": StateBytesPerParameter(parameter=4, gradient=4, optimizer=8, compute=2),
    "bf16": StateBytesPerParameter(parameter=2, gradient=2, optimizer=12, compute=2),
}


def region_cost(num_layers: int, n: int, group_size: int) -> int:
    """Paper Eq. 20 in units of C per token: resident n·⌈L/L_r⌉ plus transient (n+2)·L_r, L_r = 2·group_size."""
    return n * math.ceil(num_layers / group_size) + (n + 2) * 2 * group_size


def mhc_group_size(num_layers: int, n: int) -> int:
    """Blocks per ``mhc`` recomputation region: the whole-block L_r minimising `region_cost` (smallest on ties)."""
    return min(range(1, num_layers + 1), key=lambda g: (region_cost(num_layers, n, g), g))


@dataclass(frozen=True, slots=True)
class UnitParameters:
    """Parameters of each FSDP unit: the root (embedding, final norm, head) and one block of each kind."""

    root: int
    dense_block: int
    moe_block: int

    @property
    def largest_block(self) -> int:
        return max(self.dense_block, self.moe_block)


def unit_parameters(config: ModelConfig) -> UnitParameters:
    """Per-unit parameter counts, as differences of `count_parameters` between one- and two-block models."""

    def total(num_layers: int, num_dense_layers: int) -> int:
        fields = {"num_layers": num_layers, "num_dense_layers": num_dense_layers}
        return count_parameters(ModelConfig(**{**config.model_dump(), **fields})).total

    moe_block = total(2, 0) - total(1, 0)
    dense_block = total(2, 2) - total(1, 1)
    root = count_parameters(config).total - config.num_dense_layers * dense_block - config.num_moe_layers * moe_block
    return UnitParameters(root=root, dense_block=dense_block, moe_block=moe_block)


@dataclass(frozen=True, slots=True)
class _PerToken:
    """Bytes per token of one block kind: what autograd saves (``saved``) and what ``mhc`` caches (``cached``)."""

    saved: int
    cached: int


def _coefficient_floats(config: ModelConfig) -> int:
    """fp32 values per token one connection saves for its coefficients (`models.residual`)."""
    res, n = config.residual, config.residual.n
    match res.variant:
        case "residual":
            return 0
        case "hc":  # projection + norm statistics, tanh output, H_pre, H_post, H_res (+ its contiguous copy)
            return 3 * n * (n + 2) + 2 * n + 2 * n * n + n
        case "mhc":  # mixes and logits (M each), two sigmoids, H_pre, H_post, contiguous H_res, 1/r
            columns = n * n + 2 * n
            return 2 * columns + 4 * n + n * n + 1
        case "mhc-lite":  # the same with the n! permutation weights and their combination
            columns = 2 * n + res.num_permutations
            return 2 * columns + 4 * n + res.num_permutations + n * n + 1
    raise AssertionError(res.variant)


def _connection(config: ModelConfig, act: int) -> int:
    """Bytes per token one residual connection saves: the stream state x_l, the sublayer input and output."""
    C, n = config.dim, config.residual.n
    if config.residual.variant == "residual":
        return act * C  # x_l; the sublayer's pre-norm saves a view of it
    return FP32 * n * C + act * C + FP32 * C + FP32 * _coefficient_floats(config)  # x_l, u, f (fp32 mix)


def _attention(config: ModelConfig, act: int) -> _PerToken:
    """MLA: normed input, latent and its norm, q and k with rotary parts, v, the output before ``wo``."""
    att, C = config.attention, config.dim
    H, D, P, V, R, E = (
        att.num_heads,
        att.qk_nope_head_dim,
        att.qk_rope_head_dim,
        att.v_head_dim,
        att.kv_lora_rank,
        att.qk_head_dim,
    )
    saved = act * (C + 2 * R + P + 2 * H * E + H * (D + V) + 2 * H * V) + FP32 * H  # + softmax log-sum-exp
    cached = act * (H * E + R + P + H * (D + V) + H * V + C) + FP32 * H  # wq, wkv_a, wkv_b, SDPA, wo outputs
    return _PerToken(saved, cached)


def _dense_ffn(config: ModelConfig, act: int) -> _PerToken:
    C, F = config.dim, config.dense_ffn_dim
    return _PerToken(saved=act * (C + 4 * F), cached=act * (2 * F + C))  # w1, w3, silu, product; w1, w3, w2


def _moe(config: ModelConfig, act: int) -> _PerToken:
    """Router scores and choices, the K token copies through the experts, the shared experts."""
    C, moe = config.dim, config.moe
    K, F, Fs, E = moe.top_k, moe.expert_dim, moe.num_shared_experts * moe.expert_dim, moe.num_routed_experts
    router_copy = FP32 * C if act < FP32 else 0  # the router runs in fp32 on a copy of its input
    saved = act * (C + 2 * K * C + 4 * K * F + 4 * Fs) + FP32 * (E + 2 * K + 1) + INT64 * 3 * K + router_copy
    cached = act * (2 * K * F + K * C + 2 * Fs + C) + FP32 * (E + K) + INT64 * 3 * K  # matmuls, top-k, sort
    return _PerToken(saved, cached)


@dataclass(frozen=True, slots=True)
class ActivationMemory:
    """Activation bytes of one micro-batch under one recomputation policy."""

    resident: int  # kept from forward to backward
    transient: int  # a block's or region's recomputed activations, live during its backward
    residual: int  # the residual streams' share without recomputation: x_l (n·C), mixes and coefficients

    @property
    def peak(self) -> int:
        return self.resident + self.transient


def activation_memory(
    config: ModelConfig, tokens: int, *, recompute: RecomputePolicy = "none", act_bytes: int = FP32
) -> ActivationMemory:
    """Activation bytes of a forward pass over ``tokens`` tokens (one micro-batch) under ``recompute``."""
    C, n, act = config.dim, config.residual.n, act_bytes
    attention, connection = _attention(config, act), _connection(config, act)
    ffns = [
        (count, ffn)
        for count, ffn in (
            (config.num_dense_layers, _dense_ffn(config, act)),
            (config.num_moe_layers, _moe(config, act)),
        )
        if count
    ]
    # A block: its two sublayers and their two residual connections.
    blocks = [
        (count, attention.saved + ffn.saved + 2 * connection, attention.cached + ffn.cached) for count, ffn in ffns
    ]
    # Final norm input, the head's input gradient (computed in forward), and the head's weight gradient.
    tail = tokens * act * 2 * C + act * config.vocab_size * C
    residual = tokens * config.num_sublayers * connection
    if recompute == "none":
        resident = tokens * sum(count * saved for count, saved, _ in blocks) + tail
        return ActivationMemory(resident=resident, transient=0, residual=residual)
    group = 1 if recompute == "block" else mhc_group_size(config.num_layers, n)
    regions = math.ceil(config.num_layers / group)
    stream_state = act * C if config.residual.variant == "residual" else FP32 * n * C
    # Each region keeps its input; the first region's is the embedding output, before the streams are copied.
    inputs = tokens * (act * C + (regions - 1) * stream_state)
    cached = tokens * sum(count * cached for count, _, cached in blocks) if recompute == "mhc" else 0
    transient = tokens * group * max(saved for _, saved, _ in blocks)
    return ActivationMemory(resident=inputs + cached + tail, transient=transient, residual=residual)


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """Bytes per GPU of one training configuration."""

    parameters: int
    gradients: int
    optimizer: int
    buffers: int  # FSDP's unsharded parameters and gradients in flight
    activations: ActivationMemory  # under the configured recomputation policy
    activations_none: ActivationMemory  # without recomputation, for comparison

    @property
    def total(self) -> int:
        """Peak: all state plus the buffers and the activations at their peak."""
        return self.parameters + self.gradients + self.optimizer + self.buffers + self.activations.peak


def estimate_memory(
    config: ModelConfig,
    *,
    micro_batch_tokens: int,
    shard_degree: int = 1,
    recompute: RecomputePolicy = "none",
    precision: Precision = "fp32",
) -> MemoryEstimate:
    """Memory per GPU: state sharded over ``shard_degree`` ranks (1 = unsharded), activations of one micro-batch."""
    if shard_degree < 1 or micro_batch_tokens < 1:
        raise ValueError(f"shard_degree ({shard_degree}) and micro_batch_tokens ({micro_batch_tokens}) must be >= 1")
    per_param = PRECISIONS[precision]
    total = count_parameters(config).total
    shard = math.ceil(total / shard_degree)
    buffers = 0
    if shard_degree > 1:
        units = unit_parameters(config)
        compute, reduce = per_param.compute, FP32
        buffers = units.root * compute + units.largest_block * (2 * compute + compute + reduce)
    act = per_param.compute
    return MemoryEstimate(
        parameters=shard * per_param.parameter,
        gradients=shard * per_param.gradient,
        optimizer=shard * per_param.optimizer,
        buffers=buffers,
        activations=activation_memory(config, micro_batch_tokens, recompute=recompute, act_bytes=act),
        activations_none=activation_memory(config, micro_batch_tokens, recompute="none", act_bytes=act),
    )
