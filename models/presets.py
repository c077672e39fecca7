"""Model presets: the mHC paper's 3B/9B/27B (Table 5) and a CPU proxy ladder from one formula.

Paper presets (MHC_SPEC §4). Fields the paper omits, chosen here: q_lora_rank = 0 (full-rank queries),
dense_ffn_dim = 8 × expert_dim (the leading dense layer), qk_nope_head_dim = v_head_dim = 128 (the printed
head dim), route_scale = 1. With these the printed total/active parameter counts are reproduced within 1 %
(tests/models/test_accounting.py).

Proxy ladder: one dial, ``depth`` (blocks), sets everything else so the paper's shape ratios hold at CPU
scale: width C = 32·(depth − 2); 64 routed experts, 6 active, 2 shared; expert width ≈ 0.7·C (paper: 896/1280);
dense width 8 × expert width; heads ≈ 1.6·C / 32 with 32-wide heads and 16 rotary dims (paper: 16 × 128 = 1.6·C,
rotary = head/2); KV rank ≈ 0.4·C (paper: 512/1280). Depth 5/7/10/15 lands near 1/4/16/64 M activated
non-embedding parameters (P1 … P64); ``nano`` is a smaller shape for fast tests.
"""

from __future__ import annotations

from collections.abc import Callable

from models.config import AttentionConfig, ModelConfig, MoEConfig
from models.errors import ConfigError

__all__ = ["PRESETS", "get_preset", "paper_config", "proxy_config"]

PAPER_VOCAB = 129280
PROXY_VOCAB = 8192
PROXY_HEAD_DIM = 32
PROXY_ROPE_DIM = 16


def paper_config(name: str, *, dim: int, num_layers: int, experts: int, expert_dim: int, heads: int) -> ModelConfig:
    """One column of the paper's Table 5 (3B, 9B and 27B share everything else)."""
    return ModelConfig(
        name=name,
        vocab_size=PAPER_VOCAB,
        dim=dim,
        num_layers=num_layers,
        num_dense_layers=1,
        dense_ffn_dim=8 * expert_dim,
        max_seq_len=4096,
        attention=AttentionConfig(
            num_heads=heads, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, kv_lora_rank=512
        ),
        moe=MoEConfig(num_routed_experts=experts, top_k=6, num_shared_experts=2, expert_dim=expert_dim),
    )


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, multiple * round(value / multiple))


def proxy_config(depth: int, *, vocab_size: int = PROXY_VOCAB, name: str | None = None) -> ModelConfig:
    """The CPU proxy at ``depth`` blocks (see the module doc for the formula)."""
    if depth < 3:
        raise ConfigError(f"proxy.depth ({depth}) must be >= 3")
    dim = 32 * (depth - 2)
    expert_dim = _round_to(0.7 * dim, 16)
    return ModelConfig(
        name=name or f"proxy-d{depth}",
        vocab_size=vocab_size,
        dim=dim,
        num_layers=depth,
        num_dense_layers=1,
        dense_ffn_dim=8 * expert_dim,
        max_seq_len=2048,
        attention=AttentionConfig(
            num_heads=max(2, round(1.6 * dim / PROXY_HEAD_DIM)),
            qk_nope_head_dim=PROXY_HEAD_DIM,
            qk_rope_head_dim=PROXY_ROPE_DIM,
            v_head_dim=PROXY_HEAD_DIM,
            kv_lora_rank=_round_to(0.4 * dim, 8),
        ),
        moe=MoEConfig(num_routed_experts=64, top_k=6, num_shared_experts=2, expert_dim=expert_dim),
    )


def nano_config() -> ModelConfig:
    """A two-block model with 8 small experts: every code path, in milliseconds."""
    return ModelConfig(
        name="nano",
        vocab_size=512,
        dim=32,
        num_layers=2,
        num_dense_layers=1,
        dense_ffn_dim=64,
        max_seq_len=512,
        attention=AttentionConfig(
            num_heads=2, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, kv_lora_rank=16
        ),
        moe=MoEConfig(num_routed_experts=8, top_k=2, num_shared_experts=1, expert_dim=32),
    )


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "paper-3b": lambda: paper_config("paper-3b", dim=1280, num_layers=12, experts=64, expert_dim=896, heads=16),
    "paper-9b": lambda: paper_config("paper-9b", dim=1920, num_layers=18, experts=64, expert_dim=1280, heads=24),
    "paper-27b": lambda: paper_config("paper-27b", dim=2560, num_layers=30, experts=72, expert_dim=1536, heads=32),
    "p1": lambda: proxy_config(5, name="p1"),
    "p4": lambda: proxy_config(7, name="p4"),
    "p16": lambda: proxy_config(10, name="p16"),
    "p64": lambda: proxy_config(15, name="p64"),
    "nano": nano_config,
}


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name``; an unknown name lists the valid ones."""
    try:
        return PRESETS[name.lower()]()
    except KeyError:
        raise ConfigError(f"model.preset ({name!r}) must be one of {', '.join(PRESETS)}") from None
