"""Tokenization: train a byte-level BPE (HF `tokenizers`) offline or load a tokenizer file; encode segments
into one token array per split; the unigram entropy of a token array.

Encoding unit is the paragraph (with the blank line that follows it inside its segment), the same unit the BPE
is trained on, so `encode_batch` parallelises over many small inputs instead of a few multi-megabyte books.
Every segment ends with the end-of-text token, so the model sees where one run of text stops and another
starts; a user tokenizer without ``<|endoftext|>`` gets no separator.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from orchestrator.data.split import Segment

__all__ = [
    "END_OF_TEXT",
    "TOKENIZER_VERSION",
    "encode_segments",
    "load_tokenizer",
    "token_dtype",
    "train_bpe",
    "unigram_entropy",
]

END_OF_TEXT = "<|endoftext|>"
# Bump when the BPE options in `train_bpe` or the encoding units change: cached token arrays are then rebuilt.
TOKENIZER_VERSION = 1
# Paragraphs per `encode_batch` call: enough to keep the Rust threads busy, few enough to bound memory.
ENCODE_BATCH = 4096


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding ids below ``vocab_size``: uint16 up to 65536, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _units(segments: Iterable[Segment]) -> Iterator[tuple[str, bool]]:
    """(text, ends_segment) per paragraph; inside a segment a paragraph carries the blank line after it."""
    for segment in segments:
        last = len(segment.paragraphs) - 1
        for index, paragraph in enumerate(segment.paragraphs):
            yield (paragraph, True) if index == last else (paragraph + "\n\n", False)


def train_bpe(segments: Sequence[Segment], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` entries (fewer if the text has no more merges); id 0 = EOT."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((text for text, _ in _units(segments)), trainer=trainer)
    return tokenizer


def encode_segments(tokenizer: Tokenizer, segments: Sequence[Segment], dtype: np.dtype) -> np.ndarray:
    """All segments' ids, concatenated, each segment followed by end-of-text when the tokenizer has one."""
    eot = tokenizer.token_to_id(END_OF_TEXT)
    eot_ids = np.array([] if eot is None else [eot], dtype=dtype)
    pieces: list[np.ndarray] = []
    batch: list[tuple[str, bool]] = []
    for unit in _units(segments):
        batch.append(unit)
        if len(batch) == ENCODE_BATCH:
            _encode_into(pieces, tokenizer, batch, dtype, eot_ids)
            batch = []
    _encode_into(pieces, tokenizer, batch, dtype, eot_ids)
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def _encode_into(
    pieces: list[np.ndarray],
    tokenizer: Tokenizer,
    batch: list[tuple[str, bool]],
    dtype: np.dtype,
    eot_ids: np.ndarray,
) -> None:
    if not batch:
        return
    encodings = tokenizer.encode_batch_fast([text for text, _ in batch], add_special_tokens=False)
    for encoding, (_, ends_segment) in zip(encodings, batch, strict=True):
        pieces.append(np.asarray(encoding.ids, dtype=dtype))
        if ends_segment:
            pieces.append(eot_ids)


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy (nats/token) of the tokens' empirical unigram distribution: the loss of the best model that
    ignores context, measured on these same tokens."""
    counts = np.bincount(np.asarray(tokens)).astype(np.float64)
    total = counts.sum()
    if total == 0:
        return math.nan
    probabilities = counts[counts > 0] / total
    return float(-(probabilities * np.log(probabilities)).sum())


def load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizer saved with `Tokenizer.save` (a HF `tokenizers` JSON file)."""
    return Tokenizer.from_file(str(path))
