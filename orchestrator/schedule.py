"""Learning-rate schedules as a multiplier of the peak lr, a pure function of the step (so resuming is exact).

- ``step`` (mHC paper, DeepSeek LLM): linear warm-up, then ×1, ×0.316 from 80 % and ×0.1 from 90 % of the steps.
- ``cosine``: warm-up, then cosine decay to ``min_lr_ratio``.
- ``wsd`` (warmup-stable-decay): warm-up, constant, then a linear decay to ``min_lr_ratio`` over the last
  ``decay_fraction`` of the steps.
"""

from __future__ import annotations

import math

from orchestrator.runspec import TrainingConfig

__all__ = ["STEP_DECAY", "lr_multiplier", "warmup_steps"]

# (fraction of the steps, multiplier from there on): the mHC paper's Table 5 rates [0.316, 0.1] at [0.8, 0.9].
STEP_DECAY = ((0.8, 0.316), (0.9, 0.1))


def warmup_steps(training: TrainingConfig, total_steps: int) -> int:
    return math.ceil(training.warmup_fraction * total_steps)


def lr_multiplier(step: int, total_steps: int, training: TrainingConfig) -> float:
    """Multiplier of the peak lr at 0-based optimizer step ``step`` of ``total_steps``."""
    warmup = warmup_steps(training, total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if training.schedule == "step":
        multiplier = 1.0
        for fraction, value in STEP_DECAY:
            if step >= fraction * total_steps:
                multiplier = value
        return multiplier
    floor = training.min_lr_ratio
    if training.schedule == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_start = total_steps * (1 - training.decay_fraction)
    if step < decay_start:
        return 1.0
    return 1.0 - (1 - floor) * (step - decay_start) / max(1.0, total_steps - decay_start)
