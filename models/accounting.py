"""Parameter and FLOP accounting from a config alone (no model is built).

Parameters: exact counts of every weight the built module holds (tests compare against the module). "Activated"
counts the weights one token computes with: everything except the routed experts it is not sent to and the input
embedding table (a lookup, not compute); this is the convention that reproduces the paper's Table 5 active counts
(612M / 1.66B / 4.14B), which are ≈ V·C too large if the table is included. "Vocab" is the input embedding plus
the untied output head (the paper's "Vocab params" = 2·V·C).

FLOPs per token (one multiply-add = 2 FLOPs; training = 3 × forward, i.e. forward + 2 × backward):
- ``six_n``: 6 · activated non-embedding parameters (Kaplan/Chinchilla's 6N).
- ``deepseek_m``: DeepSeek LLM's M (arXiv 2401.02954 §3.1), non-embedding and including attention:
  6 · (matmul weights touched per token) + 6 · L · l_seq · H · (d_qk + d_v), i.e. attention over the full
  sequence length, as DeepSeek counts it (not halved for causality). It generalises 72·n·d² + 12·n·d·l to MLA.
- ``lm_head``: 6 · C · V, the output projection.
- ``residual_extra``: 3 × the forward FLOPs of the residual variant's coefficient, Sinkhorn/Birkhoff and mixing
  ops over all 2L sublayers (0 for the plain residual), MHC_SPEC §1.2.
- ``total``: deepseek_m + lm_head + residual_extra, the architecture count a run's compute is charged with.
Compute budgets convert to tokens with the *baseline* (plain residual) total at that size (DESIGN.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from models.config import AttentionConfig, ModelConfig, ResidualConfig

__all__ = ["FlopsPerToken", "ParameterCounts", "count_parameters", "flops_per_token", "tokens_for_budget"]


@dataclass(frozen=True, slots=True)
class ParameterCounts:
    """Parameter counts of one model config."""

    total: int
    activated: int
    vocab: int
    residual: int

    @property
    def activated_non_embedding(self) -> int:
        """N for scaling laws: what one token computes with, without the output head."""
        return self.activated - self.vocab // 2


@dataclass(frozen=True, slots=True)
class FlopsPerToken:
    """Training FLOPs per token (forward + backward), by component."""

    six_n: float
    deepseek_m: float
    lm_head: float
    residual_extra: float

    @property
    def total(self) -> float:
        return self.deepseek_m + self.lm_head + self.residual_extra


def _attention_weights(dim: int, cfg: AttentionConfig) -> int:
    """Matmul weights of one MLA layer (every one is touched by every token)."""
    heads = cfg.num_heads
    if cfg.q_lora_rank:
        query = dim * cfg.q_lora_rank + cfg.q_lora_rank * heads * cfg.qk_head_dim
    else:
        query = dim * heads * cfg.qk_head_dim
    kv = dim * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank * heads * (
        cfg.qk_nope_head_dim + cfg.v_head_dim
    )
    return query + kv + heads * cfg.v_head_dim * dim


def _attention_norms(cfg: AttentionConfig) -> int:
    return cfg.kv_lora_rank + cfg.q_lora_rank


def _connection_parameters(dim: int, res: ResidualConfig) -> int:
    """Parameters of one residual connection (one sublayer)."""
    n = res.n
    match res.variant:
        case "residual":
            return 0
        case "hc":  # per-stream norm weight, θ (C × (n+2)), α (3), b_pre, b_post, b_res
            return dim + dim * (n + 2) + 3 + 2 * n + n * n
        case "mhc" | "mhc-lite":  # φ (nC × M), α (3), b (M)
            columns = 2 * n + (n * n if res.variant == "mhc" else res.num_permutations)
            return n * dim * columns + 3 + columns
    raise AssertionError(res.variant)


def _connection_forward_flops(dim: int, res: ResidualConfig) -> float:
    """Forward FLOPs per token of one residual connection beyond the plain residual's add."""
    n = res.n
    mixes = 2 * n * dim + (2 * n * n * dim + 2 * n * dim)  # pre-mix; post + residual mix
    match res.variant:
        case "residual":
            return 0.0
        case "hc":  # per-stream RMSNorm, dynamic projections θ (C × (n+2)) on n streams, tanh
            return 3 * n * dim + 2 * n * dim * (n + 2) + n * (n + 2) + mixes
        case "mhc":  # GEMM, flattened RMSNorm, sigmoid/scale/bias, Sinkhorn (sum + divide per entry per half)
            columns = n * n + 2 * n
            return 2 * n * dim * columns + 2 * n * dim + 4 * columns + 4 * n * n * res.sinkhorn_iters + mixes
        case "mhc-lite":  # GEMM, RMSNorm, softmax over n!, Birkhoff combination
            columns = 2 * n + res.num_permutations
            return 2 * n * dim * columns + 2 * n * dim + 4 * columns + 2 * res.num_permutations * n * n + mixes
    raise AssertionError(res.variant)


def count_parameters(config: ModelConfig) -> ParameterCounts:
    """Exact parameter counts of the model `models.build_model(config)` builds."""
    C, moe = config.dim, config.moe
    attention = _attention_weights(C, config.attention) + _attention_norms(config.attention)
    dense_ffn = 3 * C * config.dense_ffn_dim
    expert = 3 * C * moe.expert_dim
    router_and_shared = moe.num_routed_experts * C + moe.num_shared_experts * expert
    residual = config.num_sublayers * _connection_parameters(C, config.residual)
    per_block_common = 2 * C + attention  # two pre-norms + attention
    shared = config.num_layers * per_block_common + config.num_dense_layers * dense_ffn + residual + C
    table = config.vocab_size * C  # input embedding; the output head has the same size
    total = shared + 2 * table + config.num_moe_layers * (router_and_shared + moe.num_routed_experts * expert)
    activated = shared + table + config.num_moe_layers * (router_and_shared + moe.top_k * expert)
    return ParameterCounts(total=total, activated=activated, vocab=2 * table, residual=residual)


def flops_per_token(config: ModelConfig, seq_len: int) -> FlopsPerToken:
    """Training FLOPs per token at sequence length ``seq_len`` (see the module doc for each term)."""
    C, moe, att = config.dim, config.moe, config.attention
    expert = 3 * C * moe.expert_dim
    matmul_weights = (
        config.num_layers * _attention_weights(C, att)
        + config.num_dense_layers * 3 * C * config.dense_ffn_dim
        + config.num_moe_layers * (moe.num_routed_experts * C + (moe.num_shared_experts + moe.top_k) * expert)
    )
    attention_scores = config.num_layers * seq_len * att.num_heads * (att.qk_head_dim + att.v_head_dim)
    residual_forward = config.num_sublayers * _connection_forward_flops(C, config.residual)
    return FlopsPerToken(
        six_n=6.0 * count_parameters(config).activated_non_embedding,
        deepseek_m=6.0 * matmul_weights + 6.0 * attention_scores,
        lm_head=6.0 * C * config.vocab_size,
        residual_extra=3.0 * residual_forward,
    )


def tokens_for_budget(config: ModelConfig, budget_flops: float, seq_len: int) -> int:
    """Tokens a compute budget buys at this size, charged at the baseline (plain residual) architecture count."""
    baseline = config.with_residual(variant="residual", n=1)
    return math.floor(budget_flops / flops_per_token(baseline, seq_len).total)
