"""Optuna tuning of mHC knobs (Sinkhorn iterations, α init, convention, n, learning rate) on Ray, resumable.

    ladder tune sweeps/sinkhorn_tuning.yaml             # run (again: continue) the study
    ladder tune sweeps/sinkhorn_tuning.yaml --dry-run   # the resolved study: space, objectives, runs, storage
    ladder tune sweeps/sinkhorn_tuning.yaml --report    # best trials and the Pareto front
    optuna-dashboard sqlite:///$PWD/optuna.db --host 127.0.0.1 --port 8080   # Optuna's own UI, same storage

A tuning spec (`TuningSpec`, `load_tuning`; see `spec.py`) names a base RunSpec, a search space, objectives
and a budget. `tune` runs the study: ask-and-tell against Optuna RDB storage (heartbeats: a dead worker's
trial is failed and retried with the same parameters), trials trained as RunSpecs by `orchestrator.train.run`
in Ray tasks, at most ``parallelism`` at once, each an MLflow child run of the study's parent run
(`runner.py`). `trials_frame` gives the trials as a Polars frame (`results.py`).

Objectives (all minimised): the final validation loss, the step-time overhead over the plain-residual baseline
(trained once per study, found through the ledger), the doubly-stochastic error of H_res. Several objectives
use NSGA-II and report a Pareto front; ``weights`` scalarise them into one objective for TPE. Only a single
objective can be pruned: Optuna's ``Trial.report``/``should_prune`` take one intermediate value per step and
raise for multi-objective studies (a pruner would need to rank trials on several partial curves at once), so
a pruner with several objectives is a spec error.

The default storage is ``sqlite:///<folder of the MLflow SQLite file>/optuna.db``; any SQLAlchemy URL works
(``postgresql://user@host/db`` for a cluster whose workers cannot share a file). ``optuna-dashboard <storage
URL> --host 127.0.0.1`` serves Optuna's dashboard over it (history, Pareto front, intermediate values,
parameter importances) while a study runs; ``ladder tune SPEC --dry-run`` prints the exact URL.
"""

from orchestrator.tune.measure import RunMeasurement, measure_run
from orchestrator.tune.results import TRIALS_SCHEMA, frame_from_trials, pareto_numbers, trials_frame
from orchestrator.tune.runner import TuneResult, tune
from orchestrator.tune.spec import KNOBS, METRICS, TuningSpec, load_tuning
from orchestrator.tune.study import TuningError

__all__ = [
    "KNOBS",
    "METRICS",
    "TRIALS_SCHEMA",
    "RunMeasurement",
    "TuneResult",
    "TuningError",
    "TuningSpec",
    "frame_from_trials",
    "load_tuning",
    "measure_run",
    "pareto_numbers",
    "trials_frame",
    "tune",
]
