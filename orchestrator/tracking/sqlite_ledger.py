"""A read-only ledger query straight from an MLflow SQLite file, for the submit and status paths.

Asking the ledger through `MlflowClient` costs ≈ 2 s of MLflow import and ≈ 1–2 s of store start-up (SQLAlchemy
engine, schema checks) before the first row: a resubmission of a finished sweep would spend 5 s doing nothing.
This module reads the same four tables (``experiments``, ``runs``, ``tags``, ``latest_metrics``) with the
standard library in tens of milliseconds, opening the file read-only (``mode=ro``: it never creates a store or
takes a write lock). It answers only for SQLite stores whose schema it recognises; on anything unexpected it
returns None and the caller asks MLflow, which stays the authority (and the only writer).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.tracking.config import TrackingConfig, sqlite_db_path
from orchestrator.tracking.errors import TrackingError

__all__ = ["read_runs"]

T = TypeVar("T")


def read_runs(config: TrackingConfig, build: Callable[..., T]) -> list[T] | None:
    """Every active run of ``config.experiment`` as ``build(run_id=…, experiment_id=…, status=…,
    start_time_ms=…, end_time_ms=…, tags=…, metrics=…)``; [] when the store or experiment does not exist
    yet; None when this store cannot be read here (not SQLite, unknown schema, locked): ask MLflow then."""
    path = sqlite_db_path(config.uri)
    if path is None:
        return None
    if not Path(path).exists():
        return []
    try:
        with _open_read_only(Path(path)) as db:
            return _query(db, config, build)
    except sqlite3.Error:  # a schema this reader does not know, or a busy store: MLflow knows better
        return None


def _open_read_only(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    db.row_factory = sqlite3.Row
    return db


def _query(db: sqlite3.Connection, config: TrackingConfig, build: Callable[..., T]) -> list[T]:
    experiment = db.execute(
        "SELECT experiment_id, lifecycle_stage FROM experiments WHERE name = ?", (config.experiment,)
    ).fetchone()
    if experiment is None:
        return []
    if experiment["lifecycle_stage"] != "active":
        raise TrackingError(
            f"experiment {config.experiment!r} ({experiment['experiment_id']}) is deleted in {config.uri}: "
            "restore it (mlflow experiments restore) or choose another tracking.experiment"
        )
    exp_id = experiment["experiment_id"]
    runs = db.execute(
        "SELECT run_uuid, status, start_time, end_time FROM runs "
        "WHERE experiment_id = ? AND lifecycle_stage = 'active'",
        (exp_id,),
    ).fetchall()
    tags = _grouped(db, "SELECT t.run_uuid, t.key, t.value FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid "
                    "WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active'", exp_id)
    metrics = _grouped(db, "SELECT m.run_uuid, m.key, m.value FROM latest_metrics m JOIN runs r "
                       "ON r.run_uuid = m.run_uuid WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active'",
                       exp_id)
    return [
        build(
            run_id=run["run_uuid"],
            experiment_id=str(exp_id),
            status=run["status"],
            start_time_ms=run["start_time"],
            end_time_ms=run["end_time"],
            tags=tags.get(run["run_uuid"], {}),
            metrics=metrics.get(run["run_uuid"], {}),
        )
        for run in runs
    ]


def _grouped(db: sqlite3.Connection, sql: str, exp_id: Any) -> dict[str, dict[str, Any]]:
    grouped: dict[str, dict[str, Any]] = {}
    for run_uuid, key, value in db.execute(sql, (exp_id,)):
        grouped.setdefault(run_uuid, {})[key] = value
    return grouped
