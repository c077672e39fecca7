"""Training batches as a pure function of (seed, step), and a fixed set of validation windows.

A train batch is ``batch_size`` random contiguous windows of ``seq_len + 1`` tokens; inputs are the first
``seq_len`` of each, targets the last ``seq_len`` (the next token at every position). The window starts come
from a numpy Generator seeded with ``[seed, step]`` and nothing else, so the sampler holds no state to
checkpoint: a run resumed at step k draws exactly the batches an uninterrupted run draws from step k on.
Windows may cross end-of-text tokens (as in GPT-2/nanoGPT training). Validation windows are evenly spaced over
the validation array, independent of any seed, so every evaluation of every run sees the same tokens.

Shape suffixes: B batch, S sequence length, W windows.
"""

from __future__ import annotations

import numpy as np
import torch

from orchestrator.data.dataset import TokenDataset
from orchestrator.data.errors import DataError

__all__ = ["BatchSampler"]


class BatchSampler:
    """Deterministic windows over a `TokenDataset`'s train and validation arrays."""

    def __init__(self, dataset: TokenDataset, *, seed: int) -> None:
        if seed < 0:
            raise ValueError(f"seed ({seed}) must be >= 0")
        self.seed = seed
        self.num_train_tokens = dataset.num_train_tokens
        # Plain ndarray views of the memory maps: fancy indexing then skips the memmap subclass machinery.
        self._train = np.asarray(dataset.train)
        self._validation = np.asarray(dataset.validation)

    def train_starts(self, step: int, batch_size: int, seq_len: int) -> np.ndarray:
        """Start offsets (B,) of the windows of ``step``'s batch in the train array."""
        if step < 0:
            raise ValueError(f"step ({step}) must be >= 0")
        high = _num_starts(len(self._train), seq_len, "train")
        return np.random.default_rng([self.seed, step]).integers(0, high, size=batch_size, dtype=np.int64)

    def train_batch(self, step: int, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs_BS, targets_BS), int64: ``step``'s random windows and the same windows shifted by one."""
        return _gather(self._train, self.train_starts(step, batch_size, seq_len), seq_len)

    def validation_starts(self, num_windows: int, seq_len: int) -> np.ndarray:
        """Start offsets (W,) of the fixed validation windows: evenly spaced from the first to the last."""
        if num_windows < 1:
            raise ValueError(f"num_windows ({num_windows}) must be >= 1")
        high = _num_starts(len(self._validation), seq_len, "validation")
        return np.linspace(0, high - 1, num_windows).round().astype(np.int64)

    def validation_batches(
        self, num_windows: int, seq_len: int, batch_size: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The validation windows as batches of at most ``batch_size``; the same on every call."""
        starts_W = self.validation_starts(num_windows, seq_len)
        return [
            _gather(self._validation, starts_W[index : index + batch_size], seq_len)
            for index in range(0, num_windows, batch_size)
        ]

    def epochs(self, tokens_seen: int) -> float:
        """Passes over the train split that ``tokens_seen`` training tokens amount to."""
        return tokens_seen / self.num_train_tokens


def _num_starts(num_tokens: int, seq_len: int, split: str) -> int:
    if seq_len < 1:
        raise ValueError(f"seq_len ({seq_len}) must be >= 1")
    if num_tokens < seq_len + 1:
        raise DataError(f"the {split} split has {num_tokens} tokens, fewer than one window of {seq_len + 1}")
    return num_tokens - seq_len


def _gather(tokens: np.ndarray, starts_B: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    windows_BS1 = tokens[starts_B[:, None] + np.arange(seq_len + 1)].astype(np.int64)
    inputs_BS = torch.from_numpy(np.ascontiguousarray(windows_BS1[:, :-1]))
    targets_BS = torch.from_numpy(np.ascontiguousarray(windows_BS1[:, 1:]))
    return inputs_BS, targets_BS
