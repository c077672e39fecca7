"""Controlling a running submission from another process: who is submitting a sweep, and asking it to stop.

Each sweep has a control folder, ``<storage>/.sweeps/<name>-<hash>/``, on the storage its checkpoints use (a
cluster's runs share it already, so a login node sees the same files as the driver):

- ``submit.lock``: the submitting process holds an exclusive ``flock`` on it for the whole submission and
  writes a token (host, pid, random id) into it. The OS releases the lock when that process dies, so a
  SIGKILLed driver never leaves a stale "running" sweep, and a second concurrent ``ladder submit`` of the
  same sweep is refused (the scheduler raises `SweepBusyError`).
- ``CANCEL``: ``ladder cancel`` writes the token of the submission it targets. The submit loop checks for it
  once per poll interval and stops only on a marker naming its own token; any other marker is stale (left by a
  cancel that raced with the end of an earlier submission) and is removed when a submission starts.

A file, rather than a Ray named actor or an MLflow tag, because cancelling then needs neither a Ray connection
(seconds to start, and the cluster address) nor the tracking store, and checking costs one ``stat`` per poll.
It needs the storage to be shared with the driver: a job submitted to a remote cluster whose storage this
machine does not mount is stopped with ``ray job stop`` instead (its runs then resume on the next submit).

Nothing here imports torch, MLflow or Ray: ``ladder cancel`` is instant.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["DEFAULT_STORAGE", "SweepControl", "read_sweep_identity"]

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "runs"  # SweepSpec.storage's default (a test keeps the two equal)
CONTROL_DIR = ".sweeps"
LOCK_FILE = "submit.lock"
CANCEL_FILE = "CANCEL"


@dataclass(frozen=True, slots=True)
class SweepControl:
    """The control folder of one sweep (see the module doc). Build with `for_sweep`."""

    name: str
    directory: Path

    @classmethod
    def for_sweep(cls, name: str, storage: str | os.PathLike) -> SweepControl:
        """The control folder of sweep ``name`` whose checkpoints live under ``storage``."""
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]
        return cls(name, Path(storage).expanduser().absolute() / CONTROL_DIR / f"{safe}-{digest}")

    @property
    def lock_path(self) -> Path:
        return self.directory / LOCK_FILE

    @property
    def cancel_path(self) -> Path:
        return self.directory / CANCEL_FILE

    @contextlib.contextmanager
    def submitting(self) -> Iterator[str | None]:
        """Hold the sweep's submit lock for the block and yield this submission's token; yield None (holding
        nothing) when another live process holds the lock (`running_submission` says which)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(token)
                handle.flush()
                if self._marker() not in (None, token):
                    log.info("removing a stale cancel marker of sweep %s", self.name)
                    self.cancel_path.unlink(missing_ok=True)
                yield token
            finally:
                handle.seek(0)
                handle.truncate()
                handle.flush()
                fcntl.flock(handle, fcntl.LOCK_UN)

    def running_submission(self) -> str | None:
        """The token of the submission running now, or None when no live process holds the lock."""
        if not self.lock_path.exists():
            return None
        with self.lock_path.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                return handle.read().strip() or "unknown"
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None

    def request_cancel(self) -> str | None:
        """Ask the running submission to stop; returns its token, or None when none is running."""
        token = self.running_submission()
        if token is None:
            return None
        staging = self.cancel_path.with_name(f".{CANCEL_FILE}.{os.getpid()}")
        staging.write_text(token)
        os.replace(staging, self.cancel_path)  # atomic: the submit loop never reads half a token
        return token

    def cancel_requested(self, token: str) -> bool:
        """Whether a cancel marker names the submission ``token`` (one stat and, if present, one read)."""
        return self._marker() == token

    def clear_cancel(self, token: str) -> None:
        """Remove the marker once the submission ``token`` has acted on it."""
        if self._marker() == token:
            self.cancel_path.unlink(missing_ok=True)

    def wait_until_stopped(self, timeout_s: float, poll_s: float = 0.2) -> bool:
        """Wait for the running submission (if any) to end; True if none runs by the deadline."""
        deadline = time.monotonic() + timeout_s
        while self.running_submission() is not None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
        return True

    def _marker(self) -> str | None:
        try:
            return self.cancel_path.read_text().strip()
        except FileNotFoundError:
            return None


def read_sweep_identity(path: Path) -> tuple[str, str]:
    """A sweep file's ``name`` and ``storage``, read without validating the rest (no torch import).

    Enough to find a running submission of a sweep that was valid when it was submitted; raises ValueError
    when the file has no usable name.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not YAML ({error})") from None
    name = raw.get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path}: a sweep file needs a `name`")
    storage = raw.get("storage", DEFAULT_STORAGE)
    return name, str(storage)
