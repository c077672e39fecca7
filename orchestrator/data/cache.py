"""On-disk cache primitives: content keys, atomic publication of a directory, and a per-key build lock.

A cache entry is a directory named by a key, the sha256 of the canonical JSON of everything the entry depends
on (sources with their checksums, the cleaning version, the tokenizer). It is built in a hidden temp directory
beside its final place and published with one `os.rename`, so a reader sees either no entry or a complete one;
a failed build removes its temp directory. A build of one key holds an exclusive `flock` so that several
workers starting at once (a sweep on one machine) build once and the others wait and then read the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_directory", "build_lock", "file_sha256", "fingerprint"]

logger = logging.getLogger(__name__)

_TEMP_MARK = ".tmp-"


def fingerprint(payload: Any) -> str:
    """sha256 hex digest of the canonical JSON of ``payload`` (sorted keys, no whitespace)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def build_lock(cache_dir: Path, key: str) -> Iterator[None]:
    """Hold an exclusive lock on ``key`` within ``cache_dir`` (blocks while another process builds it)."""
    lock_dir = cache_dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{key}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield an empty temp directory; on success rename it to ``final``, on any error delete it.

    Call it while holding `build_lock` for the entry: temp directories left by a killed build of the same
    entry are then known to be stale and are removed first. If ``final`` appeared meanwhile (a builder that
    did not take the lock), the existing entry wins and the new one is discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}{_TEMP_MARK}*"):
        logger.info("removing %s left by an interrupted build", stale)
        shutil.rmtree(stale, ignore_errors=True)
    temp = final.parent / f".{final.name}{_TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    temp.mkdir()
    try:
        yield temp
        try:
            os.rename(temp, final)
        except OSError:
            if not final.is_dir():
                raise
            logger.info("%s was published by another process; keeping that one", final)
            shutil.rmtree(temp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
