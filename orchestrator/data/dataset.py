"""`load_dataset`: a `DataConfig` -> train and validation token arrays (memory-mapped), cached on disk.

Text sources go through two cached stages: cleaned text (text.py, keyed by origin + cleaning + split) and
tokens, ``<cache_dir>/tokens/<key>/`` with ``tokenizer.json``, ``train.npy``, ``validation.npy`` and
``metadata.json``, keyed by the text key and the tokenizer (trained: vocab size, `TOKENIZER_VERSION` and the
`tokenizers` version; a file: its sha256). A warm load only computes the key (for user text: hashes the files)
and maps the arrays, so it takes milliseconds to seconds. Pre-tokenized arrays are mapped in place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from models.errors import ConfigError
from orchestrator.data.cache import atomic_directory, build_lock, file_sha256, fingerprint
from orchestrator.data.cleaning import Document
from orchestrator.data.config import BuiltinSource, DataConfig, TextSource, TokenSource
from orchestrator.data.corpus import BUILTIN_CORPORA, CorpusRecipe, recipe_documents, text_file_documents
from orchestrator.data.text import TextCorpus, prepare_text_corpus, text_key
from orchestrator.data.tokenizer import (
    END_OF_TEXT,
    TOKENIZER_VERSION,
    encode_segments,
    load_tokenizer,
    token_dtype,
    train_bpe,
    unigram_entropy,
)

__all__ = ["DatasetMetadata", "TokenDataset", "dataset_key", "load_dataset"]

logger = logging.getLogger(__name__)

# Field paths of errors found at load time are rooted like DataConfig's own (ConfigError.problems).
_ROOT = tuple(DataConfig.config_path.split("."))
# Bump when the layout of a tokens cache entry changes.
DATASET_FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class DatasetMetadata:
    """Facts about a token data set, stored beside its arrays and logged with every run."""

    key: str  # cache key (built sets) or a fingerprint of the arrays' paths, sizes and mtimes (pre-tokenized)
    source: str  # "pd-literary", "text" or "tokens"
    vocab_size: int
    dtype: str
    num_train_tokens: int
    num_validation_tokens: int
    unigram_entropy_nats: float  # of the validation tokens; a context-free model's best loss on them
    eot_token_id: int | None
    tokenizer: dict[str, Any] | None  # how text became ids; None for pre-tokenized arrays
    text: dict[str, Any] | None  # the cleaned-text manifest (sources, dedup, split statistics)
    tokens_sha256: dict[str, str] | None  # sha256 of each split's .npy file
    build_seconds: float

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenDataset:
    """Train and validation token ids (read-only memory maps) with their vocabulary and metadata."""

    train: np.ndarray
    validation: np.ndarray
    vocab_size: int
    metadata: DatasetMetadata
    from_cache: bool  # True when nothing was built: the arrays came from the cache or the user's files
    directory: Path | None  # the cache entry; None for pre-tokenized arrays

    @property
    def num_train_tokens(self) -> int:
        """Tokens in the train split."""
        return int(self.train.shape[0])

    @property
    def num_validation_tokens(self) -> int:
        """Tokens in the validation split."""
        return int(self.validation.shape[0])

    def tokenizer(self) -> tokenizers.Tokenizer | None:
        """The tokenizer that produced the ids (to decode samples); None for pre-tokenized arrays."""
        if self.directory is None:
            return None
        return load_tokenizer(self.directory / "tokenizer.json")

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickling (e.g. to a Ray worker) re-opens the memory maps instead of copying the arrays.
        paths = tuple(getattr(array, "filename", None) for array in (self.train, self.validation))
        if all(paths):
            return (_reopen, (self.metadata, self.directory, paths, self.from_cache))
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return (_from_fields, (fields,))


def load_dataset(
    config: DataConfig, *, recipes: Mapping[str, CorpusRecipe] = BUILTIN_CORPORA
) -> TokenDataset:
    """Train/validation token arrays for ``config``, building and caching them on first use.

    ``recipes`` maps built-in corpus names to their recipes; the default is the pinned table in corpus.py.
    """
    if isinstance(config.source, TokenSource):
        return _load_token_arrays(config, config.source)
    plan = _plan(config, recipes)
    cache_dir = config.cache_path
    final = cache_dir / "tokens" / plan.key
    if (cached := _open_entry(final)) is not None:
        return cached
    with build_lock(cache_dir, f"tokens-{plan.key}"):
        if (cached := _open_entry(final)) is not None:
            return cached
        _remove_damaged(final)
        started = time.perf_counter()
        text = prepare_text_corpus(
            plan.origin,
            plan.documents_fn,
            cache_dir,
            validation_fraction=config.validation_fraction,
            split_seed=config.split_seed,
            deduplicate=config.deduplicate,
        )
        with atomic_directory(final) as temp:
            _build_tokens(config, text, plan, temp, started)
        logger.info("built token data set %s in %.1f s", final, time.perf_counter() - started)
    dataset = _open_entry(final)
    assert dataset is not None  # just published
    return dataclasses.replace(dataset, from_cache=False)


def dataset_key(config: DataConfig, *, recipes: Mapping[str, CorpusRecipe] = BUILTIN_CORPORA) -> str:
    """The cache key `load_dataset` files ``config``'s tokens under (pre-tokenized: a fingerprint of the
    arrays' paths, sizes and mtimes). It does not depend on `cache_dir`."""
    if isinstance(config.source, TokenSource):
        return _token_arrays_key(config.source)
    return _plan(config, recipes).key


@dataclass(frozen=True, kw_only=True, slots=True)
class _Plan:
    """What a text-based build reads and what its cache key is."""

    key: str
    source_name: str
    origin: dict[str, Any]
    documents_fn: Callable[[], tuple[list[Document], dict[str, Any]]]
    tokenizer_spec: dict[str, Any]


def _plan(config: DataConfig, recipes: Mapping[str, CorpusRecipe]) -> _Plan:
    source = config.source
    if isinstance(source, BuiltinSource):
        recipe = recipes[source.name]
        origin = recipe.fingerprint_payload()
        source_name = source.name

        def documents_fn() -> tuple[list[Document], dict[str, Any]]:
            return recipe_documents(recipe, config.cache_path)

    else:
        assert isinstance(source, TextSource)
        files = source.files()
        origin = {"text_files_sha256": [file_sha256(path) for path in files]}
        source_name = "text"

        def documents_fn() -> tuple[list[Document], dict[str, Any]]:
            return text_file_documents(files, expected_sha256=origin["text_files_sha256"])

    tokenizer_spec = _tokenizer_spec(config)
    text = text_key(
        origin,
        validation_fraction=config.validation_fraction,
        split_seed=config.split_seed,
        deduplicate=config.deduplicate,
    )
    key = fingerprint(
        {
            "format": DATASET_FORMAT_VERSION,
            "text": text,
            "tokenizer": tokenizer_spec,
            "vocab_size": config.vocab_size,
        }
    )
    return _Plan(
        key=key,
        source_name=source_name,
        origin=origin,
        documents_fn=documents_fn,
        tokenizer_spec=tokenizer_spec,
    )


def _tokenizer_spec(config: DataConfig) -> dict[str, Any]:
    if config.tokenizer_file is not None:
        return {"kind": "file", "sha256": file_sha256(Path(config.tokenizer_file).expanduser())}
    return {
        "kind": "byte-level-bpe",
        "vocab_size": config.vocab_size,
        "version": TOKENIZER_VERSION,
        "tokenizers": tokenizers.__version__,
    }


def _build_tokens(config: DataConfig, text: TextCorpus, plan: _Plan, directory: Path, started: float) -> None:
    if config.tokenizer_file is not None:
        tokenizer = load_tokenizer(Path(config.tokenizer_file).expanduser())
        if tokenizer.get_vocab_size() > config.vocab_size:
            raise ConfigError.from_problems(
                [
                    (
                        (*_ROOT, "vocab_size"),
                        f"({config.vocab_size}) must be >= the vocabulary size of data.tokenizer_file "
                        f"{config.tokenizer_file!r} ({tokenizer.get_vocab_size()})",
                    )
                ]
            )
    else:
        tokenizer = train_bpe(text.train, config.vocab_size)
    tokenizer.save(str(directory / "tokenizer.json"))
    dtype = token_dtype(config.vocab_size)
    arrays = {}
    for split, segments in (("train", text.train), ("validation", text.validation)):
        arrays[split] = encode_segments(tokenizer, segments, dtype)
        np.save(directory / f"{split}.npy", arrays[split])
    metadata = DatasetMetadata(
        key=plan.key,
        source=plan.source_name,
        vocab_size=config.vocab_size,
        dtype=dtype.name,
        num_train_tokens=len(arrays["train"]),
        num_validation_tokens=len(arrays["validation"]),
        unigram_entropy_nats=unigram_entropy(arrays["validation"]),
        eot_token_id=tokenizer.token_to_id(END_OF_TEXT),
        tokenizer={**plan.tokenizer_spec, "tokenizer_vocab_size": tokenizer.get_vocab_size()},
        text=text.manifest,
        tokens_sha256={split: file_sha256(directory / f"{split}.npy") for split in arrays},
        build_seconds=round(time.perf_counter() - started, 3),
    )
    (directory / "metadata.json").write_text(json.dumps(metadata.as_dict(), indent=2, sort_keys=True) + "\n")


def _open_entry(directory: Path) -> TokenDataset | None:
    """The cached data set in ``directory``; None if there is none or it is damaged (it is then rebuilt)."""
    if not (directory / "metadata.json").is_file():
        return None
    try:
        metadata = DatasetMetadata(**json.loads((directory / "metadata.json").read_text()))
        train = np.load(directory / "train.npy", mmap_mode="r")
        validation = np.load(directory / "validation.npy", mmap_mode="r")
    except (OSError, ValueError, TypeError) as error:
        logger.warning("cache entry %s is unreadable (%s); rebuilding it", directory, error)
        return None
    if (len(train), len(validation)) != (metadata.num_train_tokens, metadata.num_validation_tokens):
        logger.warning("cache entry %s does not match its metadata; rebuilding it", directory)
        return None
    return TokenDataset(
        train=train,
        validation=validation,
        vocab_size=metadata.vocab_size,
        metadata=metadata,
        from_cache=True,
        directory=directory,
    )


def _remove_damaged(directory: Path) -> None:
    """Delete a cache entry that failed to open (call with its build lock held)."""
    if directory.exists():
        shutil.rmtree(directory)


def _open_token_array(path: Path, dtype: str) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r")
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")


def _load_token_arrays(config: DataConfig, source: TokenSource) -> TokenDataset:
    started = time.perf_counter()
    paths = {split: Path(getattr(source, split)).expanduser() for split in ("train", "validation")}
    arrays = {split: _open_token_array(path, source.dtype) for split, path in paths.items()}
    for split, array in arrays.items():
        largest = int(array.max())
        if largest >= config.vocab_size:
            raise ConfigError.from_problems(
                [
                    (
                        (*_ROOT, "vocab_size"),
                        f"({config.vocab_size}) must be > every token id, but data.source.{split} "
                        f"({str(paths[split])!r}) holds id {largest}",
                    )
                ]
            )
    metadata = DatasetMetadata(
        key=_token_arrays_key(source),
        source="tokens",
        vocab_size=config.vocab_size,
        dtype=source.dtype,
        num_train_tokens=len(arrays["train"]),
        num_validation_tokens=len(arrays["validation"]),
        unigram_entropy_nats=unigram_entropy(arrays["validation"]),
        eot_token_id=None,
        tokenizer=None,
        text=None,
        tokens_sha256=None,
        build_seconds=round(time.perf_counter() - started, 3),
    )
    return TokenDataset(
        train=arrays["train"],
        validation=arrays["validation"],
        vocab_size=config.vocab_size,
        metadata=metadata,
        from_cache=True,
        directory=None,
    )


def _token_arrays_key(source: TokenSource) -> str:
    paths = [Path(getattr(source, split)).expanduser() for split in ("train", "validation")]
    stats = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in paths]
    return fingerprint({"format": DATASET_FORMAT_VERSION, "tokens": stats, "dtype": source.dtype})


def _from_fields(fields: dict[str, Any]) -> TokenDataset:
    return TokenDataset(**fields)


def _reopen(
    metadata: DatasetMetadata, directory: Path | None, paths: tuple[str, ...], from_cache: bool
) -> TokenDataset:
    arrays = [_open_token_array(Path(path), metadata.dtype) for path in paths]
    return TokenDataset(
        train=arrays[0],
        validation=arrays[1],
        vocab_size=metadata.vocab_size,
        metadata=metadata,
        from_cache=from_cache,
        directory=directory,
    )
