"""Atomic, verified checkpoints: one directory per step, written beside the final name and renamed into place.

Layout: ``<run_dir>/step-00000123/{state.pt, COMPLETE}``. ``COMPLETE`` holds the sha256 of ``state.pt`` and is
written last, inside the temporary directory, before the rename; so a directory under its final name is
complete, and a checkpoint whose hash does not match (a disk fault, a hand edit) is detected on load. Loading
takes the newest valid checkpoint and falls back to the previous one, with a warning, when the newest is
damaged. ``torch.load(weights_only=True)``: a checkpoint cannot execute code.
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

__all__ = ["is_locked", "latest_checkpoint", "list_checkpoints", "run_lock", "save_checkpoint"]

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


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as the checkpoint of ``step`` and keep only the newest ``keep`` checkpoints."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"{PREFIX}{step:08d}"
    staging = run_dir / f".staging-{step:08d}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    import torch  # lazily: the ledger (is_locked) must not pay torch's import

    torch.save(state, staging / STATE_FILE)
    (staging / MARKER_FILE).write_text(_sha256(staging / STATE_FILE))
    for path in (staging / STATE_FILE, staging / MARKER_FILE, staging):
        _fsync(path)
    if final.exists():  # re-saving a step (a resumed run reaching it again): replace it whole
        shutil.rmtree(final)
    os.replace(staging, final)
    _fsync(run_dir)
    for old in list_checkpoints(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories under their final names, newest first."""
    if not run_dir.is_dir():
        return []
    return sorted((p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX)), reverse=True)


def _load_verified(directory: Path) -> dict[str, Any]:
    marker, state = directory / MARKER_FILE, directory / STATE_FILE
    if not marker.is_file() or not state.is_file():
        raise ValueError("incomplete (state or COMPLETE marker missing)")
    if marker.read_text().strip() != _sha256(state):
        raise ValueError("state.pt does not match the sha256 in COMPLETE")
    import torch

    return torch.load(state, map_location="cpu", weights_only=True)


def latest_checkpoint(run_dir: Path) -> tuple[int, dict[str, Any]] | None:
    """(step, state) of the newest checkpoint that verifies; None when there is none."""
    for directory in list_checkpoints(run_dir):
        try:
            return int(directory.name.removeprefix(PREFIX)), _load_verified(directory)
        except Exception as error:  # any damage means: fall back to the previous checkpoint
            log.warning("checkpoint %s is unusable (%s); trying the previous one", directory, error)
    return None
