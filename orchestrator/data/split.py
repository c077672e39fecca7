"""Deterministic train/validation split by blocks of whole paragraphs.

Each document is cut into consecutive blocks of about `SPLIT_BLOCK_CHARS` characters (never inside a
paragraph). Blocks are ranked by sha256(seed, document name, block index) and the first ones in that order go
to validation until it holds ``validation_fraction`` of the characters. Compared with assigning whole
documents, this keeps the validation share close to the target even though single documents are large (the
KJV Bible is ~14 % of pd-literary) and spreads validation over every source; the ranking depends only on the
seed and the documents' names and lengths, never on the order of processing. Consecutive blocks of one
document that land in the same split form one `Segment`; every segment ends with an end-of-text token later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.data.cleaning import Document
from orchestrator.data.errors import DataError

__all__ = ["SPLIT_BLOCK_CHARS", "Segment", "split_documents"]

# About 4k tokens: small enough that 5 % of pd-literary is ~100 blocks from all sources, large enough that
# validation text is mostly long runs of a book, not fragments. Small corpora use smaller blocks (below).
SPLIT_BLOCK_CHARS = 16_384
# A corpus is cut into at least this many blocks (when it has that many paragraphs) so small user corpora
# still split close to the requested fraction.
MIN_NUM_BLOCKS = 64


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of consecutive paragraphs of one document that all fall in the same split."""

    document: str
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        """The segment's text: paragraphs joined by blank lines."""
        return "\n\n".join(self.paragraphs)


def split_documents(
    documents: Sequence[Document], *, validation_fraction: float, seed: int
) -> tuple[list[Segment], list[Segment]]:
    """(train, validation) segments, each list in document order."""
    total_chars = sum(document.num_chars for document in documents)
    block_chars = max(1, min(SPLIT_BLOCK_CHARS, total_chars // MIN_NUM_BLOCKS))
    blocks = [(document, _blocks(document, block_chars)) for document in documents]
    ranked = sorted(
        (_rank(seed, document.name, index), size, document.name, index)
        for document, doc_blocks in blocks
        for index, (_, size) in enumerate(doc_blocks)
    )
    if len(ranked) < 2:
        raise DataError(f"cannot split a corpus of {len(ranked)} paragraph(s) into train and validation")
    target = validation_fraction * total_chars
    validation: set[tuple[str, int]] = set()
    num_chars = 0
    for _, size, name, index in ranked[:-1]:  # the last one always stays in train
        if num_chars >= target and validation:
            break
        validation.add((name, index))
        num_chars += size
    train_segments: list[Segment] = []
    validation_segments: list[Segment] = []
    for document, doc_blocks in blocks:
        run: list[str] = []
        run_is_validation = None
        for index, (paragraphs, _) in enumerate(doc_blocks):
            is_validation = (document.name, index) in validation
            if run and is_validation != run_is_validation:
                (validation_segments if run_is_validation else train_segments).append(
                    Segment(document.name, tuple(run))
                )
                run = []
            run.extend(paragraphs)
            run_is_validation = is_validation
        if run:
            (validation_segments if run_is_validation else train_segments).append(
                Segment(document.name, tuple(run))
            )
    return train_segments, validation_segments


def _blocks(document: Document, block_chars: int) -> list[tuple[list[str], int]]:
    """Consecutive paragraph groups of about ``block_chars`` characters, with their sizes."""
    out: list[tuple[list[str], int]] = []
    current: list[str] = []
    size = 0
    for paragraph in document.paragraphs:
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= block_chars:
            out.append((current, size))
            current, size = [], 0
    if current:
        out.append((current, size))
    return out


def _rank(seed: int, name: str, index: int) -> bytes:
    return hashlib.sha256(f"{seed}\x00{name}\x00{index}".encode()).digest()
