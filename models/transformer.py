"""The DeepSeek-V3-style MoE decoder with a pluggable residual variant.

Shape legend: B batch, S sequence, N residual streams, C model width, V vocabulary.

    tokens → embedding → expand into n streams
           → blocks: [attention sublayer, FFN sublayer], each wrapped by its residual connection;
             the first `num_dense_layers` blocks use a dense SwiGLU, the rest DeepSeekMoE
           → collapse streams → RMSNorm → untied output head → logits

Each sublayer carries its own pre-norm (the paper's Table 3 lists RMSNorm(H_pre x) as an activation).
Weights start from N(0, init_std); the mHC/HC coefficient parameters keep their identity-like init
(`models.residual`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kernels import MHCOps, get_ops
from models.attention import MultiHeadLatentAttention, RotaryTables
from models.config import ModelConfig
from models.loss import linear_cross_entropy
from models.moe import MoE, SwiGLU
from models.norm import RMSNorm
from models.recompute import RecomputePlan, run_blocks
from models.residual import build_connection, collapse_streams, expand_streams

__all__ = ["Block", "MoETransformer", "build_model"]


class Block(nn.Module):
    """One transformer block: two sublayers, each inside a residual connection."""

    def __init__(self, config: ModelConfig, index: int, ops: MHCOps) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.attn = MultiHeadLatentAttention(config.dim, config.attention, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.ffn: nn.Module = (
            SwiGLU(config.dim, config.dense_ffn_dim)
            if index < config.num_dense_layers
            else MoE(config.dim, config.moe)
        )
        self.attn_connection = build_connection(config, 2 * index, ops)
        self.ffn_connection = build_connection(config, 2 * index + 1, ops)

    def forward(self, x_BSNC: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        x_BSNC = self.attn_connection(x_BSNC, lambda u_BSC: self.attn(self.attn_norm(u_BSC), rope))
        return self.ffn_connection(x_BSNC, lambda u_BSC: self.ffn(self.ffn_norm(u_BSC)))


class MoETransformer(nn.Module):
    """Decoder-only MoE language model; ``forward(tokens) → logits``, ``forward(tokens, targets) → loss``."""

    def __init__(self, config: ModelConfig, ops: MHCOps) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.dim)
        self.rope = RotaryTables(config.attention.qk_rope_head_dim, config.max_seq_len, config.attention.rope_theta)
        self.blocks = nn.ModuleList(Block(config, index, ops) for index in range(config.num_layers))
        self.final_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.recompute = RecomputePlan()  # activation recomputation: set by `models.recompute.apply_recompute`

    def forward(self, tokens_BS: Tensor, targets_BS: Tensor | None = None) -> Tensor:
        """Logits (B, S, V); given ``targets_BS``, the mean cross-entropy instead (fp32, ignore_index −100).

        The loss path fuses the head with the loss and never materialises the logits (`models.loss`): on the
        CPU proxies it is much faster than ``F.cross_entropy(model(tokens), targets)``, with equal results.
        """
        rope = self.rope(tokens_BS.shape[1])
        x_BSNC = expand_streams(self.embedding(tokens_BS), self.config.residual.n)
        x_BSNC = run_blocks(self.blocks, x_BSNC, rope, self.recompute)
        h_BSC = self.final_norm(collapse_streams(x_BSNC))
        if targets_BS is None:
            return self.head(h_BSC)
        return linear_cross_entropy(h_BSC.flatten(0, 1), self.head.weight, targets_BS.flatten())

    def moe_layers(self) -> list[MoE]:
        """The DeepSeekMoE layers, in depth order (for bias updates and load statistics)."""
        return [block.ffn for block in self.blocks if isinstance(block.ffn, MoE)]

    def balance_loss(self) -> Tensor | None:
        """Sum of the sequence-wise balance losses of the last forward pass; None when disabled."""
        losses = [layer.aux_loss for layer in self.moe_layers() if layer.aux_loss is not None]
        return torch.stack(losses).sum() if losses else None

    def update_expert_biases(self) -> None:
        """Loss-free balancing step; the trainer calls it after every optimizer step."""
        for layer in self.moe_layers():
            layer.update_expert_bias()

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_std) for every linear, embedding and expert weight; norms to 1; mixing params untouched."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, MoE):
                module.reset_parameters(std)


def build_model(config: ModelConfig, device: torch.device | str = "cpu", seed: int | None = 0) -> MoETransformer:
    """Build and initialise the model on ``device`` (``"meta"`` builds shapes only, for counting).

    The kernel backend is resolved for the device here, so the model code never branches on it.
    """
    device = torch.device(device)
    ops = get_ops(config.kernel_backend, device if device.type != "meta" else torch.device("cpu"))
    if seed is not None and device.type != "meta":
        torch.manual_seed(seed)
    with device:
        model = MoETransformer(config, ops)
    if device.type != "meta":
        model.init_weights()
    return model
