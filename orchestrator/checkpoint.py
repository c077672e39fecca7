"""Atomic, verified checkpoints: one directory per step, written beside the final name and renamed into place.

Layout: ``<run_dir>/step-00000123/{<files>, COMPLETE}``. The files are written into a staging directory
(`staging_dir`); `commit_checkpoint` then writes ``COMPLETE`` — one ``<sha256>  <name>`` line per file, the
format ``sha256sum -c COMPLETE`` checks — fsyncs, and renames the directory to its final name. So a directory
under its final name is complete, and one whose hashes do not match (a disk fault, a hand edit) is detected on
load. Loading takes the newest checkpoint that verifies and falls back to the previous one, with a warning,
when the newest is damaged.

Two writers use this: the trainer's sharded checkpoints (`orchestrator.distributed.state`: every rank writes its
shard of a `torch.distributed.checkpoint` directory, rank 0 commits) and `save_checkpoint`, a single
``state.pt`` written with `torch.save` and read with ``torch.load(weights_only=True)`` (a checkpoint cannot
execute code). A ``COMPLETE`` holding a bare hash (older checkpoints) is the hash of ``state.pt``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "commit_checkpoint",
    "is_locked",
    "latest_checkpoint",
    "latest_complete",
    "list_checkpoints",
    "run_lock",
    "save_checkpoint",
    "staging_dir",
]

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
MARKER_FILE = "COMPLETE"
PREFIX = "step-"
LOCK_FILE = "LOCK"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive, blocking lock on a run directory; the OS releases it when the holder dies (flock)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_locked(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock (i.e. is training it right now)."""
    lock = run_dir / LOCK_FILE
    if not lock.exists():
        return False
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def staging_dir(run_dir: Path, step: int) -> Path:
    """An empty directory to write the checkpoint of ``step`` into, beside its final name.

    The name is a function of the step alone, so every rank of a multi-worker run writes into the same one
    (the run lock keeps two runs of a key apart); a leftover from a writer killed mid-write is cleared.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = run_dir / f".staging-{step:08d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _files(directory: Path) -> list[Path]:
    """Every file under ``directory`` except the marker, in a fixed order."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MARKER_FILE)


def commit_checkpoint(run_dir: Path, step: int, staging: Path, keep: int = 2) -> Path:
    """Seal ``staging`` (hashes of its files in ``COMPLETE``), rename it to step ``step``'s final name and
    keep only the newest ``keep`` checkpoints."""
    files = _files(staging)
    manifest = "".join(f"{_sha256(path)}  {path.relative_to(staging).as_posix()}\n" for path in files)
    (staging / MARKER_FILE).write_text(manifest)
    for path in (*files, staging / MARKER_FILE, *{path.parent for path in files}, staging):
        _fsync(path)
    final = run_dir / f"{PREFIX}{step:08d}"
    if final.exists():  # re-saving a step (a resumed run reaching it again): replace it whole
        shutil.rmtree(final)
    os.replace(staging, final)
    _fsync(run_dir)
    for old in list_checkpoints(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` (one `torch.save` file) as the checkpoint of ``step``; keep the newest ``keep``."""
    import torch  # lazily: the ledger (is_locked) must not pay torch's import

    staging = staging_dir(run_dir, step)
    torch.save(state, staging / STATE_FILE)
    return commit_checkpoint(run_dir, step, staging, keep)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories under their final names, newest first."""
    if not run_dir.is_dir():
        return []
    return sorted((p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX)), reverse=True)


def _verify(directory: Path) -> None:
    """Raise ValueError unless every file ``COMPLETE`` lists is there with its hash."""
    marker = directory / MARKER_FILE
    if not marker.is_file():
        raise ValueError("incomplete (no COMPLETE marker)")
    lines = marker.read_text().split("\n")
    if len(lines) == 1 and " " not in lines[0].strip():  # an older marker: the bare hash of state.pt
        lines = [f"{lines[0].strip()}  {STATE_FILE}"]
    for line in filter(None, lines):
        digest, name = line.split("  ", 1)
        path = directory / name
        if not path.is_file():
            raise ValueError(f"{name} is missing")
        if _sha256(path) != digest:
            raise ValueError(f"{name} does not match the sha256 in COMPLETE")


def latest_complete(run_dir: Path) -> tuple[int, Path] | None:
    """(step, directory) of the newest checkpoint that verifies; None when there is none."""
    for directory in list_checkpoints(run_dir):
        try:
            _verify(directory)
        except Exception as error:  # any damage means: fall back to the previous checkpoint
            log.warning("checkpoint %s is unusable (%s); trying the previous one", directory, error)
            continue
        return int(directory.name.removeprefix(PREFIX)), directory
    return None


def latest_checkpoint(run_dir: Path) -> tuple[int, dict[str, Any]] | None:
    """(step, state) of the newest `save_checkpoint` checkpoint that verifies; None when there is none."""
    found = latest_complete(run_dir)
    if found is None:
        return None
    import torch

    step, directory = found
    return step, torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
