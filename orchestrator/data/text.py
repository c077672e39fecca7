"""The cleaned-text stage: documents -> deduplicated paragraphs -> train/validation segments, cached by key.

The entry ``<cache_dir>/text/<key>/`` holds ``train.jsonl`` and ``validation.jsonl`` (one segment per line:
``{"document": name, "paragraphs": [...]}``) and ``manifest.json`` (the key's inputs, statistics and the
sha256 of both JSONL files, which is what "the same cleaned text" means in tests and provenance, and what a
read checks before trusting the entry; a damaged entry is rebuilt). The key
covers the documents' origin (recipe with checksums, or the user files' content hashes), `CLEANING_VERSION`,
deduplication and the split, so changing any of them builds a new entry and never reuses a stale one.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.data.cache import atomic_directory, build_lock, file_sha256, fingerprint
from orchestrator.data.cleaning import CLEANING_VERSION, Document, deduplicate_paragraphs
from orchestrator.data.split import Segment, split_documents

__all__ = ["TextCorpus", "prepare_text_corpus", "text_key"]

logger = logging.getLogger(__name__)

DocumentsFn = Callable[[], tuple[list[Document], dict[str, Any]]]
_SPLITS = ("train", "validation")


@dataclass(frozen=True, kw_only=True, slots=True)
class TextCorpus:
    """Cleaned, split text: segments per split and the manifest describing how they were made."""

    key: str
    directory: Path
    train: list[Segment]
    validation: list[Segment]
    manifest: dict[str, Any]
    from_cache: bool


def text_key(
    origin: dict[str, Any], *, validation_fraction: float, split_seed: int, deduplicate: bool
) -> str:
    """The cache key of the cleaned text of ``origin`` (a recipe or file-hash payload) under these options."""
    return fingerprint(_key_payload(origin, validation_fraction, split_seed, deduplicate))


def _key_payload(origin: dict[str, Any], validation_fraction: float, split_seed: int, deduplicate: bool):
    return {
        "origin": origin,
        "cleaning_version": CLEANING_VERSION,
        "deduplicate": deduplicate,
        "split": {"validation_fraction": validation_fraction, "seed": split_seed},
    }


def prepare_text_corpus(
    origin: dict[str, Any],
    documents_fn: DocumentsFn,
    cache_dir: Path,
    *,
    validation_fraction: float,
    split_seed: int,
    deduplicate: bool,
) -> TextCorpus:
    """The cached cleaned text for ``origin``, building it with ``documents_fn`` when the cache lacks it."""
    payload = _key_payload(origin, validation_fraction, split_seed, deduplicate)
    key = fingerprint(payload)
    final = cache_dir / "text" / key
    if (cached := _read(final, key)) is not None:
        return cached
    with build_lock(cache_dir, f"text-{key}"):
        if (cached := _read(final, key)) is not None:
            return cached
        if final.exists():  # damaged: _read refused it
            shutil.rmtree(final)
        started = time.perf_counter()
        documents, source_stats = documents_fn()
        num_paragraphs = sum(len(document.paragraphs) for document in documents)
        dedup_stats = None
        if deduplicate:
            documents, dedup = deduplicate_paragraphs(documents)
            dedup_stats = asdict(dedup)
        train, validation = split_documents(
            documents, validation_fraction=validation_fraction, seed=split_seed
        )
        manifest: dict[str, Any] = {
            "key": key,
            "inputs": payload,
            "sources": source_stats,
            "num_documents": len(documents),
            "num_paragraphs_before_dedup": num_paragraphs,
            "num_paragraphs": sum(len(document.paragraphs) for document in documents),
            "dedup": dedup_stats,
        }
        with atomic_directory(final) as temp:
            for split, segments in zip(_SPLITS, (train, validation), strict=True):
                path = temp / f"{split}.jsonl"
                _write_segments(path, segments)
                manifest[split] = {
                    "num_segments": len(segments),
                    "num_documents": len({segment.document for segment in segments}),
                    "num_paragraphs": sum(len(segment.paragraphs) for segment in segments),
                    "num_chars": sum(len(segment.text) for segment in segments),
                    "num_bytes": sum(len(segment.text.encode("utf-8")) for segment in segments),
                    "jsonl_sha256": file_sha256(path),
                }
            manifest["build_seconds"] = round(time.perf_counter() - started, 3)
            (temp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        logger.info("built cleaned text %s in %.1f s", final, manifest["build_seconds"])
        return TextCorpus(
            key=key, directory=final, train=train, validation=validation, manifest=manifest, from_cache=False
        )


def _write_segments(path: Path, segments: list[Segment]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for segment in segments:
            line = {"document": segment.document, "paragraphs": list(segment.paragraphs)}
            handle.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")


def _read_segments(path: Path) -> list[Segment]:
    with open(path, encoding="utf-8") as handle:
        return [Segment(item["document"], tuple(item["paragraphs"])) for item in map(json.loads, handle)]


def _read(directory: Path, key: str) -> TextCorpus | None:
    """The cached text in ``directory``; None if there is none or its files do not match the manifest."""
    if not (directory / "manifest.json").is_file():
        return None
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        paths = {split: directory / f"{split}.jsonl" for split in _SPLITS}
        if any(file_sha256(paths[split]) != manifest[split]["jsonl_sha256"] for split in _SPLITS):
            raise ValueError("a split's sha256 differs from the manifest")
        splits = {split: _read_segments(path) for split, path in paths.items()}
    except (OSError, ValueError, KeyError) as error:
        logger.warning("cached text %s is damaged (%s); rebuilding it", directory, error)
        return None
    return TextCorpus(key=key, directory=directory, manifest=manifest, from_cache=True, **splits)
