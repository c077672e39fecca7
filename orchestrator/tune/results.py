"""A study's trials as a Polars frame (for ``ladder tune --report`` and the dashboards), and its Pareto front.

    from orchestrator.tune import load_tuning, trials_frame
    spec = load_tuning(Path("sweeps/sinkhorn_tuning.yaml"))
    frame = trials_frame(spec.storage_url, spec.study_name)
    complete = frame.filter(pl.col("state") == "COMPLETE")
    complete.select("sinkhorn_iters", "val_loss", "step_time_overhead", "ds_error", "pareto")

One row per trial, the schema fixed (`TRIALS_SCHEMA`) whatever the search: every knob has a column (null where
the study does not search it). ``pareto`` marks the study's front over its own objectives: the non-dominated
COMPLETE trials for several objectives, the best trial(s) for one. Duplicated proposals (told FAIL without
training) are rows with ``outcome == "duplicate"``; the retry of a trial failed by its heartbeat names it in
``retry_of``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from orchestrator.tracking.config import sqlite_db_path
from orchestrator.tune.spec import KNOBS, METRICS, OPTUNA_DB_NAME
from orchestrator.tune.study import OUTCOME, TuningError, masked_url, optuna_module, quiet_optuna

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

__all__ = ["TRIALS_SCHEMA", "default_storage_url", "frame_from_trials", "pareto_numbers", "trials_frame"]

TRIALS_SCHEMA: dict[str, pl.DataType] = {
    "number": pl.Int64,
    "state": pl.String,  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    # complete | pruned | diverged | error | duplicate; null while running, or when the heartbeat failed it
    "outcome": pl.String,
    "sinkhorn_iters": pl.Int64,
    "alpha_init": pl.Float64,
    "convention": pl.String,
    "n": pl.Int64,
    "lr": pl.Float64,
    "val_loss": pl.Float64,
    "step_time_overhead": pl.Float64,
    "ds_error": pl.Float64,
    "step_time_s": pl.Float64,
    "value": pl.Float64,  # the single objective Optuna was told (one metric or the weighted sum), else null
    "pareto": pl.Boolean,
    "steps": pl.Int64,
    "last_step": pl.Int64,  # the last step reported to Optuna (where a pruned trial stopped)
    "retry_of": pl.Int64,
    "run_key": pl.String,
    "run_id": pl.String,
    "worker": pl.String,
    "duration_s": pl.Float64,
}


def pareto_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the non-dominated COMPLETE trials (objectives minimised); for one objective, the best."""
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.values]
    front = set()
    for trial in complete:
        dominated = any(
            all(o <= v for o, v in zip(other.values, trial.values, strict=True))
            and any(o < v for o, v in zip(other.values, trial.values, strict=True))
            for other in complete
        )
        if not dominated:
            front.add(trial.number)
    return front


def _row(trial: FrozenTrial, front: set[int]) -> dict[str, Any]:
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    values = trial.values if trial.state.name == "COMPLETE" else None
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        "outcome": attrs.get(OUTCOME),
        **{knob: trial.params.get(knob) for knob in KNOBS},
        **{metric: attrs.get(metric) for metric in (*METRICS, "step_time_s")},
        "value": values[0] if values is not None and len(values) == 1 else None,
        "pareto": trial.number in front,
        "steps": attrs.get("steps"),
        "last_step": trial.last_step,
        "retry_of": trial.system_attrs.get("failed_trial"),
        "run_key": attrs.get("run_key"),
        "run_id": attrs.get("run_id"),
        "worker": attrs.get("worker"),
        "duration_s": duration,
    }
    return row


def frame_from_trials(trials: list[FrozenTrial]) -> pl.DataFrame:
    """The trials as a frame with `TRIALS_SCHEMA`, sorted by trial number."""
    front = pareto_numbers(trials)
    rows = [_row(trial, front) for trial in sorted(trials, key=lambda t: t.number)]
    return pl.DataFrame(rows, schema=TRIALS_SCHEMA)


def trials_frame(storage: str, study_name: str) -> pl.DataFrame:
    """Every trial of ``study_name`` in the RDB ``storage`` (read only; never creates a SQLite file)."""
    optuna = optuna_module()
    if storage.startswith("sqlite:///"):
        path = Path(storage[len("sqlite:///") :].split("?", 1)[0])
        if not path.exists():
            raise TuningError(f"no Optuna storage at {path}: run `ladder tune SPEC` first")
    with quiet_optuna():
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            raise TuningError(
                f"no study {study_name!r} in {masked_url(storage)}: run `ladder tune SPEC` first"
            ) from None
    return frame_from_trials(study.get_trials(deepcopy=False))


def default_storage_url(tracking_uri: str) -> str:
    """The storage of a tuning spec without ``study.storage`` (`TuningSpec.storage_url`): ``optuna.db`` beside
    the MLflow SQLite file, or in the working directory for other stores (``ladder dashboard`` looks there)."""
    db = sqlite_db_path(tracking_uri)
    folder = db.parent if db is not None else Path.cwd()
    return f"sqlite:///{(folder / OPTUNA_DB_NAME).absolute()}"
