"""analysis: scaling-law fits, bootstrap uncertainty and rollout extrapolation checks (numpy/scipy/Polars).

- `fits`: the Chinchilla surface L(N, D) and the compute law L(C), fitted Chinchilla's way (log-space Huber,
  L-BFGS-B from a grid of starts).
- `bootstrap`: percentile intervals and curve bands from resampling whole runs.
- `rollout`: fit on the smaller sizes/budgets, score the predictions of the larger ones.
"""

from analysis.bootstrap import Bootstrap, CurveBand, bootstrap_chinchilla, bootstrap_compute_law
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
from analysis.rollout import Rollout, rollout_chinchilla, rollout_compute_law

__all__ = [
    "HUBER_DELTA",
    "Bootstrap",
    "ChinchillaFit",
    "ComputeLawFit",
    "CurveBand",
    "Rollout",
    "ScalingLawFit",
    "bootstrap_chinchilla",
    "bootstrap_compute_law",
    "chinchilla_grid",
    "compute_law_grid",
    "fit_chinchilla",
    "fit_compute_law",
    "rollout_chinchilla",
    "rollout_compute_law",
]
