"""analysis: scaling-law fits, bootstrap uncertainty and rollout extrapolation checks (numpy/scipy/Polars).

- `fits`: the Chinchilla surface L(N, D) and the compute law L(C), fitted Chinchilla's way (log-space Huber,
  L-BFGS-B from a grid of starts).
- `bootstrap`: percentile intervals and curve bands from resampling whole runs.
- `rollout`: fit on the smaller sizes/budgets, score the predictions of the larger ones.
- `runs`: runs and metric histories out of any MLflow store as Polars frames; results as parquet/JSON.
  `mlflow_read` reads the store (plain SQL on SQL stores, the MLflow API elsewhere).
- `compare`, `overhead`, `stability`: loss gaps and compute multipliers vs the baseline, step-time/memory
  overhead per hardware, spikes, divergences and Amax profiles; `report.analyze` runs them all.
- `benchmark` (``python -m analysis.benchmark``): loading, analysis and dashboard timings on a 1,000-run store
  built by `bench_store` (benchmarks/ANALYSIS.md).
"""

from analysis.bootstrap import Bootstrap, CurveBand, bootstrap_chinchilla, bootstrap_compute_law
from analysis.compare import LawFits, compute_multipliers, fit_laws, frontier, frontier_gaps, loss_gaps
from analysis.fits import (
    HUBER_DELTA,
    ChinchillaFit,
    ComputeLawFit,
    ScalingLawFit,
    chinchilla_grid,
    compute_law_grid,
    fit_chinchilla,
    fit_compute_law,
)
from analysis.overhead import overhead
from analysis.report import AnalysisConfig, Results, analyze, analyze_frames
from analysis.rollout import Rollout, rollout_chinchilla, rollout_compute_law
from analysis.runs import load_amax_profiles, load_experiment, load_history, load_runs, read_results, write_results
from analysis.stability import (
    GRAD_NORM_SPIKES,
    LOSS_SPIKES,
    SpikeRule,
    find_spikes,
    stability_by_arm,
    stability_by_run,
)

__all__ = [
    "GRAD_NORM_SPIKES",
    "HUBER_DELTA",
    "LOSS_SPIKES",
    "AnalysisConfig",
    "Bootstrap",
    "ChinchillaFit",
    "ComputeLawFit",
    "CurveBand",
    "LawFits",
    "Results",
    "Rollout",
    "ScalingLawFit",
    "SpikeRule",
    "analyze",
    "analyze_frames",
    "bootstrap_chinchilla",
    "bootstrap_compute_law",
    "chinchilla_grid",
    "compute_law_grid",
    "compute_multipliers",
    "find_spikes",
    "fit_chinchilla",
    "fit_compute_law",
    "fit_laws",
    "frontier",
    "frontier_gaps",
    "load_amax_profiles",
    "load_experiment",
    "load_history",
    "load_runs",
    "loss_gaps",
    "overhead",
    "read_results",
    "rollout_chinchilla",
    "rollout_compute_law",
    "stability_by_arm",
    "stability_by_run",
    "write_results",
]
