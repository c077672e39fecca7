"""A seconds-long CPU training smoke: proves a config builds, trains and learns before a real run is spent.

The data is synthetic and learnable: each row is an arithmetic progression modulo a 64-token alphabet with a
random start and one of a few strides, so after two tokens the rest of the row is determined. A working model
first learns the alphabet (loss → log 64) and then the progressions (loss well below log 64) within a few dozen
steps; a broken residual variant, router or attention does not. Real
training (corpus, schedules, tracking, checkpoints) lives in the trainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models import ModelConfig, build_model

__all__ = ["SmokeResult", "progression_batch", "run_smoke"]


@dataclass(frozen=True, slots=True)
class SmokeResult:
    """Losses of every step and the uniform-guess loss they should fall well below."""

    losses: list[float]
    uniform_loss: float
    alphabet_loss: float

    @property
    def learned(self) -> bool:
        """The final loss is below what knowing the alphabet alone gives: the model learned the progressions."""
        return self.losses[-1] < 0.8 * self.alphabet_loss


ALPHABET = 64


def progression_batch(generator: torch.Generator, alphabet: int, batch_size: int, seq_len: int) -> torch.Tensor:
    """(batch, seq_len + 1) rows of start + stride·t mod alphabet, strides from {1, 2, 3, 5}."""
    starts_B1 = torch.randint(0, alphabet, (batch_size, 1), generator=generator)
    strides_B1 = torch.tensor([1, 2, 3, 5])[torch.randint(0, 4, (batch_size, 1), generator=generator)]
    return (starts_B1 + strides_B1 * torch.arange(seq_len + 1)) % alphabet


def run_smoke(
    config: ModelConfig, *, steps: int = 40, batch_size: int = 8, seq_len: int = 32, lr: float = 1e-2, seed: int = 0
) -> SmokeResult:
    """Train ``steps`` AdamW steps on progression data; return the per-step training losses."""
    model = build_model(config, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed)
    alphabet = min(ALPHABET, config.vocab_size)
    losses = []
    for _ in range(steps):
        tokens_BS = progression_batch(generator, alphabet, batch_size, seq_len)
        logits_BSV = model(tokens_BS[:, :-1])
        loss = F.cross_entropy(logits_BSV.flatten(0, 1), tokens_BS[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_expert_biases()
        losses.append(loss.item())
    return SmokeResult(losses=losses, uniform_loss=math.log(config.vocab_size), alphabet_loss=math.log(alphabet))
