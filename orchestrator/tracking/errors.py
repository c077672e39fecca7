"""Errors the tracking layer raises on purpose, under the project's root `LadderError`."""

from __future__ import annotations

from models.errors import LadderError

__all__ = ["ParamConflictError", "RunFinishedError", "TrackingError"]


class TrackingError(LadderError):
    """The tracking store was unreachable or refused what was logged; the message says what was kept where."""


class RunFinishedError(TrackingError):
    """A run with this run_key already FINISHED: the caller should skip it, not train it again."""

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class ParamConflictError(TrackingError):
    """Reopening a run with params whose values differ from the logged ones (MLflow params are immutable)."""
