"""Typed, validated data configuration: where the tokens come from and how text becomes tokens.

``data.source`` is one of three kinds, written in YAML as
- a built-in corpus name: ``source: pd-literary`` (built from pinned registry packages, see corpus.py);
- the user's text: ``source: [corpus/*.txt, more_text/]`` (files, directories, globs);
- pre-tokenized arrays: ``source: {train: train.bin, validation: val.bin, dtype: uint16}`` (``.npy`` files or
  raw little-endian arrays as nanoGPT's ``.bin``).
The long forms carry a ``kind`` (``builtin`` / ``text`` / ``tokens``), which `model_dump` writes, so a dumped
config parses back to the same one. Paths are checked when the config is built, so a missing file or a glob
matching nothing fails at submission with the field named, not minutes into a run.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from models.config import ConfigModel, rule_violation
from orchestrator.data.corpus import TEXT_FILE_SUFFIXES, expand_text_paths

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "BuiltinSource",
    "DataConfig",
    "DataSource",
    "TextSource",
    "TokenSource",
]

BuiltinCorpusName = Literal["pd-literary"]
TokenDtype = Literal["uint16", "uint32"]

DEFAULT_VOCAB_SIZE = 8192
# A byte-level BPE holds the 256 byte tokens plus the end-of-text token before any merge.
MIN_BPE_VOCAB_SIZE = 257
MAX_VOCAB_SIZE = {"uint16": 2**16, "uint32": 2**32}


class BuiltinSource(ConfigModel):
    """A corpus mhc-ladder builds itself from pinned registry packages (shared docs CORPUS.md)."""

    config_path: ClassVar[str] = "data.source"

    kind: Literal["builtin"] = Field(default="builtin", description="Discriminator: a built-in corpus.")
    name: BuiltinCorpusName = Field(default="pd-literary", description="Built-in corpus name.")


class TextSource(ConfigModel):
    """The user's own text, cleaned, deduplicated, split and tokenized like the built-in corpus."""

    config_path: ClassVar[str] = "data.source"

    kind: Literal["text"] = Field(default="text", description="Discriminator: text files.")
    paths: tuple[str, ...] = Field(
        min_length=1,
        description=f"Files, directories (their {'/'.join(TEXT_FILE_SUFFIXES)} files, recursively) or globs; "
        "read in this order, each file once.",
    )

    def files(self) -> list[Path]:
        """The files named by `paths`, in order, each file once (its first mention wins)."""
        seen: set[Path] = set()
        out = []
        for files in expand_text_paths(self.paths):
            for path in files:
                if (resolved := path.resolve()) not in seen:
                    seen.add(resolved)
                    out.append(path)
        return out


class TokenSource(ConfigModel):
    """Pre-tokenized token ids, used as they are (no tokenizer, no split)."""

    config_path: ClassVar[str] = "data.source"

    kind: Literal["tokens"] = Field(default="tokens", description="Discriminator: token arrays.")
    train: str = Field(description="Train token ids: a 1-D .npy file or a raw little-endian array file.")
    validation: str = Field(description="Validation token ids, same format as `train`.")
    dtype: TokenDtype = Field(description="Element type of both arrays: uint16 or uint32.")


def _source_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "kind" in value:
            return value["kind"]
        if "paths" in value:
            return "text"
        if value.keys() & {"train", "validation", "dtype"}:
            return "tokens"
        return "builtin"
    return getattr(value, "kind", None)


DataSource = Annotated[
    Annotated[BuiltinSource, Tag("builtin")]
    | Annotated[TextSource, Tag("text")]
    | Annotated[TokenSource, Tag("tokens")],
    Discriminator(
        _source_kind,
        custom_error_type="source_kind",
        custom_error_message="must be a built-in corpus name (pd-literary), a list of text paths, or "
        "{train, validation, dtype} for token arrays (long forms: kind = builtin | text | tokens)",
    ),
]


class DataConfig(ConfigModel):
    """Which tokens a run trains and validates on, and where the built data is cached."""

    config_path: ClassVar[str] = "data"

    source: DataSource = Field(
        default=BuiltinSource(), description="pd-literary | [text paths] | {train, validation, dtype}."
    )
    vocab_size: int = Field(
        default=DEFAULT_VOCAB_SIZE,
        ge=2,
        description="Model vocabulary: every token id is below it; the size a BPE is trained to.",
    )
    tokenizer_file: str | None = Field(
        default=None, description="A HF `tokenizers` JSON file to use instead of training a BPE on the text."
    )
    cache_dir: str = Field(
        default="./.ladder-cache",
        description="Cache of downloads, cleaned text and tokens (relative to cwd).",
    )
    validation_fraction: float = Field(
        default=0.05, gt=0, lt=1, description="Share of the text's characters held out for validation."
    )
    split_seed: int = Field(default=0, ge=0, description="Seed of the deterministic train/validation split.")
    deduplicate: bool = Field(default=True, description="Drop repeated paragraphs (first occurrence kept).")

    @field_validator("source", mode="before")
    @classmethod
    def _source_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"kind": "builtin", "name": value}
        if isinstance(value, list | tuple):
            return {"kind": "text", "paths": list(value)}
        return value

    @model_validator(mode="after")
    def _source_is_usable(self) -> DataConfig:
        if isinstance(self.source, TokenSource):
            self._check_token_source(self.source)
        else:
            if isinstance(self.source, TextSource):
                self._check_text_source(self.source)
            if self.tokenizer_file is None and self.vocab_size < MIN_BPE_VOCAB_SIZE:
                raise rule_violation(
                    "vocab_size",
                    self.vocab_size,
                    f"must be >= {MIN_BPE_VOCAB_SIZE} to train a byte-level BPE (256 bytes + end-of-text)",
                )
        if self.vocab_size > MAX_VOCAB_SIZE["uint32"]:
            raise rule_violation(
                "vocab_size", self.vocab_size, f"must be <= {MAX_VOCAB_SIZE['uint32']} (uint32 ids)"
            )
        if self.tokenizer_file is not None and not Path(self.tokenizer_file).expanduser().is_file():
            raise rule_violation("tokenizer_file", self.tokenizer_file, "is not an existing file")
        return self

    def _check_text_source(self, source: TextSource) -> None:
        for index, (pattern, files) in enumerate(
            zip(source.paths, expand_text_paths(source.paths), strict=True)
        ):
            if files:
                continue
            path = Path(pattern).expanduser()
            if glob.has_magic(pattern):
                rule = "matches no file"
            elif path.is_dir():
                rule = f"is a directory holding no {' or '.join(TEXT_FILE_SUFFIXES)} file"
            else:
                rule = "does not exist"
            raise rule_violation(f"source.paths.{index}", pattern, rule)

    def _check_token_source(self, source: TokenSource) -> None:
        if self.tokenizer_file is not None:
            raise rule_violation(
                "tokenizer_file",
                self.tokenizer_file,
                "must be unset for pre-tokenized arrays (data.source.kind=tokens)",
            )
        limit = MAX_VOCAB_SIZE[source.dtype]
        if self.vocab_size > limit:
            raise rule_violation(
                "vocab_size",
                self.vocab_size,
                f"must be <= {limit} for data.source.dtype {source.dtype}; store the ids as uint32 instead",
            )
        for name in ("train", "validation"):
            problem = token_file_problem(Path(getattr(source, name)).expanduser(), source.dtype)
            if problem:
                raise rule_violation(f"source.{name}", getattr(source, name), problem)

    @property
    def cache_path(self) -> Path:
        """`cache_dir` as an absolute path (``~`` expanded): the pip/npm downloads run in other folders."""
        return Path(self.cache_dir).expanduser().resolve()



def token_file_problem(path: Path, dtype: str) -> str | None:
    """Why ``path`` is not a usable token array of ``dtype``, or None when it is."""
    if not path.is_file():
        return "is not an existing file"
    itemsize = np.dtype(dtype).itemsize
    if path.suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r")  # reads the header only
        except ValueError as error:
            return f"is not a readable .npy file ({error})"
        if array.dtype != np.dtype(dtype):
            return f"holds {array.dtype} ids, but data.source.dtype is {dtype}"
        if array.ndim != 1:
            return f"must be a 1-D array of token ids, not shape {array.shape}"
        num_tokens = array.shape[0]
    else:
        size = path.stat().st_size
        if size % itemsize:
            return f"has {size} bytes, not a whole number of {dtype} ids ({itemsize} bytes each)"
        num_tokens = size // itemsize
    if num_tokens < 2:
        return f"holds {num_tokens} token(s); at least 2 are needed for one (input, target) pair"
    return None
